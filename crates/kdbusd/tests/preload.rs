//! `libkdbus_preload.so` against a real kdbusd: programs written for the kdbus kernel
//! ABI (open a node, ioctl `KDBUS_CMD_*`, mmap the pool, poll, close) run unmodified.
//!
//! Each test starts a broker and re-executes this test binary as the "client program"
//! (`--exact child_entry`) with `LD_PRELOAD` set. In the child, [`child_entry`] runs the
//! scenario named by `KDBUS_PRELOAD_SCENARIO` using only raw libc calls on kdbus
//! structures, exactly as a C program would: real addresses in `msg_address` and in
//! `PAYLOAD_VEC` items, messages read from the mapped pool. A panic in the child fails
//! the parent's test, with the child's output in the message.
//!
//! The library is a dev-dependency of this crate, so cargo builds it (all its crate
//! types) before this test; as a dependency its cdylib lands in `target/<profile>/deps/`
//! without a hash in its name (cargo never hashes path packages' cdylibs), next to this
//! binary. It is never linked into this binary (nothing here names the crate).

mod common;
use common::{cmd_body, Broker};
use kdbus_abi::{
    attach, cmd, hello_flags, item, msg_flags, name_flags, payload, read_struct, recv_flags,
    send_flags, BloomParameter, CmdFree, CmdGeneric, CmdInfo, CmdMatch, CmdRecv, CmdSend, Info,
    ItemIter, ItemWriter, Memfd, Msg, NotifyIdChange, Vec_, DST_ID_BROADCAST, DST_ID_NAME,
    MATCH_ID_ANY,
};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use zerocopy::IntoBytes;

const CHILD: &str = "KDBUS_PRELOAD_CHILD";
const SCENARIO: &str = "KDBUS_PRELOAD_SCENARIO";
const BUS: &str = "KDBUS_PRELOAD_TEST_BUS";
/// Pool size of the scenarios' connections.
const POOL: usize = 1 << 20;

// ================================================================== parent side

/// `libkdbus_preload.so` as built for this test binary (`$KDBUS_PRELOAD_SO` overrides).
fn preload_so() -> PathBuf {
    if let Some(p) = std::env::var_os("KDBUS_PRELOAD_SO") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("the test binary's directory");
    // deps/ first: the copy built for this very build; `cargo build` also uplifts one.
    let candidates = [
        deps.join("libkdbus_preload.so"),
        deps.join("../libkdbus_preload.so"),
    ];
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| {
        panic!("libkdbus_preload.so not found at {candidates:?} (kdbus-preload is a dev-dependency of kdbusd, cargo should have built it)")
    })
}

/// Run `scenario` in a child process with the preload library, against a fresh broker.
fn run(scenario: &str) {
    let broker = Broker::start();
    let so = preload_so();
    let out = tempfile::NamedTempFile::new().expect("output file");
    // One open file for both streams, so that they share an offset.
    let log = out.reopen().expect("output file");
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env("LD_PRELOAD", &so)
        .env(CHILD, "1")
        .env(SCENARIO, scenario)
        .env(BUS, &broker.bus)
        .env("KDBUS_ROOT", broker.runtime_dir())
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("stdout"))
        .stderr(log)
        .spawn()
        .expect("spawn the client program");
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let output = std::fs::read_to_string(out.path()).unwrap_or_default();
    let done = format!("preload scenario {scenario} passed");
    match status {
        Some(s) if s.success() && output.contains(&done) => {}
        Some(s) => panic!(
            "scenario {scenario} failed ({s}) with {}:\n{output}",
            so.display()
        ),
        None => panic!("scenario {scenario} hung (killed after 60 s):\n{output}"),
    }
}

/// Each scenario is a `#[test]` that runs the child function of the same name.
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { run(stringify!($name)); })*
        const SCENARIOS: &[(&str, fn())] = &[$((stringify!($name), child::$name)),*];
    };
}
scenarios! {
    hello, send_recv, fd_passing, sync_call, well_known_name, bloom_broadcast, byebye,
    pool_read_only, poll_semantics, memfd_payload, close_is_synchronous, dropped_messages,
    attach_flags_mask, sync_call_and_signals,
}

/// The client program: does nothing unless started by [`run`].
#[test]
fn child_entry() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let name = std::env::var(SCENARIO).expect("KDBUS_PRELOAD_SCENARIO");
    let (_, f) = SCENARIOS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a known scenario");
    f();
    println!("preload scenario {name} passed");
}

// ================================================================== child helpers
// (the raw-libc ones: ioctl, open, mmap, poll, memfds... are in common/preload_util.rs)

#[path = "common/preload_util.rs"]
mod util;
use util::*;

/// Items read from a pool: `(type, payload)`.
type Items = Vec<(u64, Vec<u8>)>;

/// A message as found in a pool.
struct Got {
    hdr: Msg,
    items: Items,
    /// The PAYLOAD_OFF sizes, and their bytes concatenated.
    vec_sizes: Vec<u64>,
    payload: Vec<u8>,
}

impl Got {
    fn item(&self, t: u64) -> Option<&[u8]> {
        self.items.iter().find(|i| i.0 == t).map(|i| &i.1[..])
    }
    fn fds(&self) -> Vec<i32> {
        let b = self.item(item::FDS).unwrap_or(&[]);
        b.chunks_exact(4)
            .map(|c| i32::from_ne_bytes(c.try_into().unwrap()))
            .collect()
    }
}

/// One connection made the kdbus way.
struct Conn {
    fd: i32,
    id: u64,
    pool: usize,
    /// The pool's size (and the mapping's length).
    pool_len: usize,
    bloom: BloomParameter,
}

impl Conn {
    fn new() -> Conn {
        Self::with_flags(hello_flags::ACCEPT_FD)
    }

    fn with_flags(flags: u64) -> Conn {
        Self::with_pool(flags, POOL)
    }

    fn with_pool(flags: u64, pool_len: usize) -> Conn {
        let fd = open_bus();
        let h = say_hello_pool(fd, flags, pool_len).unwrap_or_else(|e| panic!("HELLO: errno {e}"));
        assert_eq!(h.pool_size, pool_len as u64);
        let pool = map_pool(fd, pool_len, libc::PROT_READ).expect("mmap the pool");
        let mut bloom = zero();
        for it in ItemIter::received(pool_bytes(pool, h.offset, h.items_size)) {
            let it = it.expect("HELLO items well-formed");
            if it.type_ == item::BLOOM_PARAMETER {
                bloom = read_struct(it.payload).expect("BLOOM_PARAMETER");
            }
        }
        let c = Conn {
            fd,
            id: h.id,
            pool,
            pool_len,
            bloom,
        };
        c.free(h.offset).expect("FREE of the HELLO slice");
        c
    }

    fn recv(&self, flags: u64) -> Result<CmdRecv, i32> {
        kcmd(self.fd, cmd::RECV, CmdRecv { flags, ..zero() })
    }

    fn free(&self, offset: u64) -> Result<CmdFree, i32> {
        kcmd(self.fd, cmd::FREE, CmdFree { offset, ..zero() })
    }

    /// SEND `m` with `items`; the message lives in this process's memory.
    fn send(&self, m: &Msg, items: &[u8], flags: u64) -> Result<CmdSend, i32> {
        let body = words(&cmd_body(m, items));
        let mut c: CmdSend = zero();
        (c.flags, c.msg_address) = (flags, body.as_ptr() as u64);
        kcmd(self.fd, cmd::SEND, c)
    }

    fn send_to(&self, dst: u64, cookie: u64, text: &[u8]) -> Result<CmdSend, i32> {
        self.send(&msg(dst, cookie, 0), &vecs(&[text]), 0)
    }

    /// `len` bytes at `off` in this connection's pool.
    fn bytes(&self, off: u64, len: u64) -> &[u8] {
        assert!(
            off + len <= self.pool_len as u64,
            "{off}+{len} beyond the pool"
        );
        pool_bytes(self.pool, off, len)
    }

    /// The message at `off` in this connection's pool.
    fn read_msg(&self, off: u64) -> Got {
        let hdr: Msg = read_struct(self.bytes(off, 64)).expect("header");
        assert!(hdr.size >= 64, "message size {}", hdr.size);
        let (items, vec_sizes, payload) = (Vec::new(), Vec::new(), Vec::new());
        let mut g = Got {
            hdr,
            items,
            vec_sizes,
            payload,
        };
        for it in ItemIter::received(self.bytes(off + 64, hdr.size - 64)) {
            let it = it.expect("items in the pool well-formed");
            assert_ne!(it.type_, item::PAYLOAD_VEC, "vectors become PAYLOAD_OFF");
            if it.type_ == item::PAYLOAD_OFF {
                let v: Vec_ = read_struct(it.payload).expect("PAYLOAD_OFF");
                assert_eq!(v.address_or_offset % 8, 0, "payload vectors are 8-aligned");
                assert!(v.address_or_offset >= hdr.size, "payload after the items");
                let at = off + v.address_or_offset;
                g.payload.extend_from_slice(self.bytes(at, v.size));
                g.vec_sizes.push(v.size);
            }
            g.items.push((it.type_, it.payload.to_vec()));
        }
        g
    }

    /// RECV the next message, read it, FREE its slice.
    fn next(&self) -> Got {
        let r = self.recv(0).unwrap_or_else(|e| panic!("RECV: errno {e}"));
        assert!(r.msg.msg_size >= 64, "RECV's msg_size {}", r.msg.msg_size);
        let m = self.read_msg(r.msg.offset);
        self.free(r.msg.offset)
            .unwrap_or_else(|e| panic!("FREE: errno {e}"));
        m
    }

    /// poll(2) this connection alone; its revents.
    fn poll(&self, events: i16, timeout_ms: i32) -> i16 {
        let mut p = [pfd(self.fd, events)];
        poll_fds(&mut p, timeout_ms);
        p[0].revents
    }

    fn byebye(&self) -> Result<CmdGeneric, i32> {
        kcmd(self.fd, cmd::BYEBYE, zero::<CmdGeneric>())
    }

    /// RECV with the command as written back, also on failure: `(errno, command)`.
    fn recv_wb(&self, flags: u64) -> (i32, CmdRecv) {
        let mut c = CmdRecv {
            size: std::mem::size_of::<CmdRecv>() as u64,
            flags,
            ..zero()
        };
        let e = err(kioctl(self.fd, cmd::RECV, &mut c));
        (e, c)
    }

    /// MATCH_ADD with `cookie` and the rules in `items`.
    fn match_add(&self, cookie: u64, items: &[u8]) -> Result<CmdMatch, i32> {
        kcmd_items(
            self.fd,
            cmd::MATCH_ADD,
            CmdMatch { cookie, ..zero() },
            items,
        )
    }

    /// CONN_INFO on `id` asking for `attach_flags`: the `kdbus_info` and its items,
    /// read from the pool (the slice is freed).
    fn conn_info(&self, id: u64, attach_flags: u64) -> Result<(Info, Items), i32> {
        let c = CmdInfo {
            id,
            attach_flags,
            ..zero()
        };
        let wb = kcmd(self.fd, cmd::CONN_INFO, c)?;
        assert!(wb.info_size >= 24, "info_size {}", wb.info_size);
        let info: Info = read_struct(self.bytes(wb.offset, 24)).expect("kdbus_info");
        assert_eq!(info.size, wb.info_size, "info.size and info_size");
        let items = ItemIter::received(self.bytes(wb.offset + 24, info.size - 24))
            .map(|i| i.expect("info items well-formed"))
            .map(|i| (i.type_, i.payload.to_vec()))
            .collect();
        self.free(wb.offset).expect("FREE of the info slice");
        Ok((info, items))
    }

    /// NAME_ACQUIRE, NAME_RELEASE: a `kdbus_cmd` with one NAME item.
    fn name_cmd(&self, nr: u32, name: &str) -> Result<CmdGeneric, i32> {
        let mut it = Vec::new();
        ItemWriter::new(&mut it).push_str(item::NAME, name);
        kcmd_items(self.fd, nr, zero::<CmdGeneric>(), &it)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: our own mapping and fd.
        unsafe {
            libc::munmap(self.pool as *mut libc::c_void, self.pool_len);
            libc::close(self.fd);
        }
    }
}

const POLLIN: i16 = libc::POLLIN;

// ================================================================== scenarios

mod child {
    use super::*;

    /// HELLO on the bus node, the pool mapped read-only, the HELLO slice's items, FREE.
    pub fn hello() {
        let fd = open_bus();
        let h = say_hello(fd, hello_flags::ACCEPT_FD).expect("HELLO");
        assert!(h.id > 0, "connection id {}", h.id);
        assert_eq!(h.pool_size, POOL as u64, "pool_size written back");
        assert_ne!(h.id128, [0u8; 16], "the bus id is written back");
        assert!(h.items_size >= 32 && h.offset + h.items_size <= POOL as u64);
        let pool = map_pool(fd, POOL, libc::PROT_READ).expect("mmap the pool read-only");
        let bloom = ItemIter::received(pool_bytes(pool, h.offset, h.items_size))
            .map(|i| i.expect("HELLO items well-formed"))
            .find(|i| i.type_ == item::BLOOM_PARAMETER)
            .expect("a BLOOM_PARAMETER item");
        let bloom: BloomParameter = read_struct(bloom.payload).expect("bloom parameter");
        // The default bus uses sd-bus's bloom parameters: 512 bits, 8 hash functions.
        assert_eq!((bloom.size, bloom.n_hash), (64, 8));
        let free = |offset| kcmd(fd, cmd::FREE, CmdFree { offset, ..zero() });
        assert_eq!(err(free(h.offset)), 0, "FREE of the HELLO slice");
        assert_eq!(err(free(h.offset)), libc::ENXIO, "FREE again");
        // Another connection gets another id.
        let other = Conn::new();
        assert!(other.id > 0 && other.id != h.id);
        unmap(pool);
        close(fd);
    }

    /// A message with two vectors: header, PAYLOAD_OFF items and payload in the pool.
    pub fn send_recv() {
        let (a, b) = (Conn::new(), Conn::new());
        let (p1, p2) = (b"hello, ".to_vec(), b"kdbus world".to_vec());
        a.send(&msg(b.id, 0x1234, 0), &vecs(&[&p1, &p2]), 0)
            .expect("SEND");
        let r = b.recv(0).expect("RECV right after the SEND returned");
        assert!(r.msg.offset + r.msg.msg_size <= POOL as u64, "{r:?}");
        let m = b.read_msg(r.msg.offset);
        assert!(r.msg.msg_size >= m.hdr.size);
        let h = m.hdr;
        assert_eq!((h.src_id, h.dst_id, h.cookie), (a.id, b.id, 0x1234));
        assert_eq!(h.payload_type, payload::DBUS);
        assert_eq!(m.vec_sizes, vec![7, 11], "two PAYLOAD_OFF items");
        assert_eq!(m.payload, b"hello, kdbus world");
        assert_eq!(err(b.free(r.msg.offset)), 0);
        assert_eq!(err(b.free(r.msg.offset)), libc::ENXIO, "double FREE");
        assert_eq!(err(b.recv(0)), libc::EAGAIN, "the queue is empty");
    }

    /// SEND to `dst` with `fd` in an FDS item.
    fn send_fd(from: &Conn, dst: u64, fd: i32) -> Result<CmdSend, i32> {
        let mut items = vecs(&[b"fd"]);
        ItemWriter::new(&mut items).push(item::FDS, [fd].as_bytes());
        from.send(&msg(dst, 1, 0), &items, 0)
    }

    /// A pipe's write end travels in an FDS item; the receiver's pool holds its number.
    pub fn fd_passing() {
        let (a, b) = (Conn::new(), Conn::new());
        let (r, w) = pipe();
        send_fd(&a, b.id, w).expect("SEND with an fd");
        let rv = b.recv(0).expect("RECV");
        let m = b.read_msg(rv.msg.offset);
        assert_eq!(m.payload, b"fd");
        let fds = m.fds();
        assert_eq!(fds.len(), 1, "one fd in the FDS item");
        let n = fds[0];
        assert!(n >= 0, "the FDS item holds {n}");
        assert!(![r, w, a.fd, b.fd].contains(&n), "fd {n} is a new fd");
        // SAFETY: fcntl on an fd number.
        let fl = unsafe { libc::fcntl(n, libc::F_GETFD) };
        assert!(fl >= 0, "fd {n} is not open: errno {}", errno());
        assert_ne!(fl & libc::FD_CLOEXEC, 0, "kdbus installs fds O_CLOEXEC");
        assert_eq!(file_id(n), file_id(w), "the received fd is the pipe");
        assert_eq!(write_fd(n, b"through kdbus"), 13);
        assert_eq!(read_fd(r), b"through kdbus");
        assert_eq!(err(b.free(rv.msg.offset)), 0);
        // Nobody else keeps the write end alive: closing ours gives EOF.
        close(n);
        close(w);
        let mut p = [pfd(r, POLLIN)];
        assert_eq!(poll_fds(&mut p, 5000), 1, "no EOF: a copy lives");
        assert_eq!(read_fd(r), b"");
        close(r);
        // A receiver that did not say ACCEPT_FD gets none.
        let c = Conn::with_flags(0);
        let (r, w) = pipe();
        assert_eq!(err(send_fd(&a, c.id, w)), libc::ECOMM, "no ACCEPT_FD");
        close(r);
        close(w);
    }

    /// A synchronous call: the reply is at `reply.offset` when SEND returns.
    pub fn sync_call() {
        let (a, b) = (Conn::new(), Conn::new());
        std::thread::scope(|s| {
            let server = s.spawn(|| {
                assert_ne!(b.poll(POLLIN, 5000) & POLLIN, 0, "the call never arrived");
                let call = b.next();
                assert_eq!((call.hdr.src_id, &call.payload[..]), (a.id, &b"ping"[..]));
                assert_ne!(call.hdr.flags & msg_flags::EXPECT_REPLY, 0);
                let mut reply = msg(call.hdr.src_id, 0x2222, 0);
                reply.timeout_or_cookie_reply = call.hdr.cookie;
                b.send(&reply, &vecs(&[b"pong"]), 0).expect("reply SEND");
            });
            let mut call = msg(b.id, 0x1111, msg_flags::EXPECT_REPLY);
            call.timeout_or_cookie_reply = monotonic_ns() + 5_000_000_000;
            let c = a.send(&call, &vecs(&[b"ping"]), send_flags::SYNC_REPLY);
            server.join().expect("server thread");
            let c = c.unwrap_or_else(|e| panic!("synchronous SEND: errno {e}"));
            assert!(c.reply.msg_size >= 64, "reply location {:?}", c.reply);
            let r = a.read_msg(c.reply.offset);
            assert_eq!(
                (r.hdr.src_id, r.hdr.dst_id, r.hdr.cookie),
                (b.id, a.id, 0x2222)
            );
            assert_eq!(r.hdr.timeout_or_cookie_reply, 0x1111, "cookie_reply");
            assert_eq!(r.payload, b"pong");
            assert_eq!(err(a.free(c.reply.offset)), 0);
            // The reply went to the ioctl, not to the queue.
            assert_eq!(a.poll(POLLIN, 0), 0);
            assert_eq!(err(a.recv(0)), libc::EAGAIN);
        });
    }

    /// A synchronous SEND and signals, as kdbus had it: a handler with SA_RESTART
    /// restarts the wait (the call ends at its timeout), one without ends it with EINTR.
    pub fn sync_call_and_signals() {
        extern "C" fn nop(_: i32) {}
        let set_handler = |flags: i32| {
            let mut sa: libc::sigaction = zero_sigaction();
            sa.sa_sigaction = nop as extern "C" fn(i32) as usize;
            sa.sa_flags = flags;
            // SAFETY: installs a handler that does nothing.
            let r = unsafe { libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) };
            assert_eq!(r, 0, "sigaction");
        };
        let (a, b) = (Conn::new(), Conn::new());
        for (restart, cookie) in [(true, 0x51), (false, 0x52)] {
            set_handler(if restart { libc::SA_RESTART } else { 0 });
            // SAFETY: our own thread's handle, to aim the signal at the blocked call.
            let me = unsafe { libc::pthread_self() };
            let start = monotonic_ns();
            let mut call = msg(b.id, cookie, msg_flags::EXPECT_REPLY);
            call.timeout_or_cookie_reply = start + 600_000_000;
            let r = std::thread::scope(|s| {
                s.spawn(|| {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    // SAFETY: `me` is blocked in the SEND below, inside this scope.
                    unsafe { libc::pthread_kill(me, libc::SIGUSR1) };
                });
                a.send(&call, &vecs(&[b"wait"]), send_flags::SYNC_REPLY)
            });
            let took_ms = (monotonic_ns() - start) / 1_000_000;
            if restart {
                assert_eq!(
                    err(r),
                    libc::ETIMEDOUT,
                    "restarted wait ends at the timeout"
                );
                assert!(took_ms >= 550, "returned after {took_ms} ms");
            } else {
                assert_eq!(err(r), libc::EINTR, "interrupted wait");
                assert!(took_ms < 550, "returned after {took_ms} ms");
            }
            // The callee got the call either way; nothing else is left for the caller.
            assert_eq!(b.next().hdr.cookie, cookie);
        }
        // The interrupted call's reply tracker ran out: the caller's queue stays empty
        // and the connection keeps working.
        std::thread::sleep(std::time::Duration::from_millis(700));
        assert_eq!(err(a.recv(0)), libc::EAGAIN);
        b.send_to(a.id, 0x53, b"still here")
            .expect("SEND after the signals");
        assert_eq!(a.next().hdr.cookie, 0x53);
    }

    fn zero_sigaction() -> libc::sigaction {
        // SAFETY: all-zero is a valid sigaction (no handler, no flags, empty mask).
        unsafe { std::mem::zeroed() }
    }

    /// NAME_ACQUIRE, then a message addressed by name.
    pub fn well_known_name() {
        let (a, b) = (Conn::new(), Conn::new());
        let name = "org.kdbus.PreloadTest";
        let wb = b.name_cmd(cmd::NAME_ACQUIRE, name).expect("NAME_ACQUIRE");
        assert_eq!(wb.return_flags & name_flags::IN_QUEUE, 0, "queued");
        assert_eq!(err(a.name_cmd(cmd::NAME_ACQUIRE, name)), libc::EEXIST);
        let to_name = |n: &str, cookie: u64| {
            let mut items = vecs(&[b"by name"]);
            ItemWriter::new(&mut items).push_str(item::DST_NAME, n);
            err(a.send(&msg(DST_ID_NAME, cookie, 0), &items, 0))
        };
        assert_eq!(to_name(name, 7), 0, "SEND to {name}");
        let m = b.next();
        assert_eq!((m.hdr.src_id, m.hdr.cookie), (a.id, 7));
        assert_eq!(m.payload, b"by name");
        assert_eq!(m.item(item::DST_NAME), Some(format!("{name}\0").as_bytes()));
        assert_eq!(to_name("org.kdbus.Nobody", 8), libc::ESRCH, "unowned name");
        // Released, the name finds nobody.
        b.name_cmd(cmd::NAME_RELEASE, name).expect("NAME_RELEASE");
        assert_eq!(to_name(name, 9), libc::ESRCH);
        assert_eq!(err(b.recv(0)), libc::EAGAIN);
    }

    /// A broadcast signal reaches a connection whose bloom mask its filter covers.
    pub fn bloom_broadcast() {
        let (a, b) = (Conn::new(), Conn::new());
        let size = b.bloom.size;
        assert!(size > 0 && size % 8 == 0, "bloom size {size}");
        let mut mask = vec![0u64; size as usize / 8];
        mask[0] = 0b1010;
        *mask.last_mut().unwrap() |= 1 << 63;
        let mut it = Vec::new();
        ItemWriter::new(&mut it).push(item::BLOOM_MASK, mask.as_bytes());
        let add = CmdMatch {
            cookie: 0xb1,
            ..zero()
        };
        kcmd_items(b.fd, cmd::MATCH_ADD, add, &it).expect("MATCH_ADD");

        let signal = |cookie: u64, filter: &[u64]| {
            let mut items = vecs(&[b"signal"]);
            items.extend(bloom_filter(filter));
            let h = msg(DST_ID_BROADCAST, cookie, msg_flags::SIGNAL);
            a.send(&h, &items, 0)
                .unwrap_or_else(|e| panic!("broadcast: errno {e}"));
        };
        // A unicast from the same sender must be the next thing b receives.
        let marker = |cookie: u64| {
            a.send_to(b.id, cookie, b"marker").expect("marker SEND");
            let m = b.next();
            assert_eq!(
                (m.hdr.src_id, m.hdr.cookie),
                (a.id, cookie),
                "marker expected"
            );
        };
        let mut hit = mask.clone();
        hit[0] |= 0b0101;
        signal(1, &hit);
        let m = b.next();
        let h = m.hdr;
        assert_eq!((h.src_id, h.dst_id, h.cookie), (a.id, DST_ID_BROADCAST, 1));
        assert_ne!(h.flags & msg_flags::SIGNAL, 0);
        assert_eq!(m.payload, b"signal");
        assert_eq!(m.item(item::BLOOM_FILTER), Some(&bloom_filter(&hit)[16..]));
        // A filter that misses one bit of the mask is not delivered.
        let mut miss = hit.clone();
        miss[0] &= !0b1000;
        signal(2, &miss);
        marker(100);
        // Once the match is gone, nothing arrives.
        let rm = CmdMatch {
            cookie: 0xb1,
            ..zero()
        };
        kcmd(b.fd, cmd::MATCH_REMOVE, rm).expect("MATCH_REMOVE");
        signal(3, &hit);
        marker(101);
        assert_eq!(err(b.recv(0)), libc::EAGAIN);
    }

    /// BYEBYE: EBUSY with a queued message; after it, ECONNRESET and POLLERR|POLLHUP.
    pub fn byebye() {
        let (a, b) = (Conn::new(), Conn::new());
        a.send_to(b.id, 1, b"queued").expect("SEND");
        assert_eq!(err(b.byebye()), libc::EBUSY, "BYEBYE with a message queued");
        assert_eq!(b.poll(POLLIN, 0), POLLIN, "still a live connection");
        assert_eq!(b.next().hdr.cookie, 1);
        assert_eq!(err(b.byebye()), 0, "BYEBYE with an empty queue");
        assert_eq!(err(b.recv(0)), libc::ECONNRESET, "RECV after BYEBYE");
        assert_eq!(err(b.send_to(a.id, 2, b"x")), libc::ECONNRESET, "SEND");
        assert_eq!(err(b.byebye()), libc::ECONNRESET, "a second BYEBYE (HEAD)");
        let hup = libc::POLLERR | libc::POLLHUP;
        let t = Instant::now();
        assert_eq!(b.poll(POLLIN, 2000) & hup, hup, "poll after BYEBYE");
        assert!(t.elapsed() < Duration::from_secs(1), "poll waited");
        assert_eq!(err(a.send_to(b.id, 3, b"x")), libc::ENXIO, "gone id");
    }

    /// The pool can only be mapped read-only, within its size, and stays read-only.
    pub fn pool_read_only() {
        let fd = open_bus();
        let ro = libc::PROT_READ;
        assert_eq!(err(map_pool(fd, 4096, ro)), libc::EBADFD, "before HELLO");
        close(fd);
        let (a, b) = (Conn::new(), Conn::new());
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        assert_eq!(err(map_pool(b.fd, POOL, rw)), libc::EPERM, "writable");
        assert_eq!(err(map_pool(b.fd, 4096, libc::PROT_WRITE)), libc::EPERM);
        assert_eq!(err(map_pool(b.fd, POOL + 4096, ro)), libc::EFAULT, "long");
        let p = map_pool(b.fd, POOL, ro).expect("a second read-only mapping");
        // SAFETY: our own mapping.
        let r = unsafe { libc::mprotect(p as *mut libc::c_void, POOL, rw) };
        let e = if r == 0 { 0 } else { errno() };
        assert_eq!((r, e), (-1, libc::EACCES), "mprotect to writable");
        a.send_to(b.id, 5, b"seen twice").expect("SEND");
        let r = b.recv(0).expect("RECV");
        assert_eq!(b.read_msg(r.msg.offset).payload, b"seen twice");
        let (off, len) = (r.msg.offset, r.msg.msg_size);
        assert_eq!(pool_bytes(p, off, len), pool_bytes(b.pool, off, len));
        b.free(r.msg.offset).expect("FREE");
        unmap(p);
    }

    /// POLLIN exactly while a message waits; PEEK leaves it; poll over kdbus fd + pipe.
    pub fn poll_semantics() {
        let (a, b) = (Conn::new(), Conn::new());
        assert_eq!(b.poll(POLLIN, 0), 0, "empty queue, timeout 0");
        let t = Instant::now();
        assert_eq!(b.poll(POLLIN, 50), 0, "empty queue, 50 ms");
        assert!(
            t.elapsed() >= Duration::from_millis(45),
            "returned after {:?}",
            t.elapsed()
        );
        assert_eq!(b.poll(libc::POLLOUT, 0), libc::POLLOUT, "POLLOUT always");

        a.send_to(b.id, 1, b"one").expect("SEND");
        a.send_to(b.id, 2, b"two").expect("SEND");
        assert_eq!(b.poll(POLLIN, 1000), POLLIN, "a message waits");
        let peek = b.recv(recv_flags::PEEK).expect("RECV PEEK");
        assert_eq!(b.read_msg(peek.msg.offset).hdr.cookie, 1);
        assert_eq!(b.poll(POLLIN, 0), POLLIN, "PEEK leaves the message queued");
        let r = b.recv(0).expect("RECV");
        assert_eq!(r.msg.offset, peek.msg.offset, "the peeked one");
        assert_eq!(b.read_msg(r.msg.offset).hdr.cookie, 1);
        b.free(r.msg.offset).expect("FREE");
        assert_eq!(b.poll(POLLIN, 0), POLLIN, "a second message waits");
        assert_eq!(b.next().hdr.cookie, 2);
        assert_eq!(b.poll(POLLIN, 0), 0, "all received");

        // A kdbus fd and a pipe in one poll.
        let (r, w) = pipe();
        assert_eq!(write_fd(w, b"x"), 1);
        let mut p = [pfd(b.fd, POLLIN), pfd(r, POLLIN)];
        assert_eq!(poll_fds(&mut p, 0), 1);
        assert_eq!((p[0].revents, p[1].revents), (0, POLLIN));
        a.send_to(b.id, 3, b"three").expect("SEND");
        assert_eq!(poll_fds(&mut p, 1000), 2);
        assert_eq!((p[0].revents, p[1].revents), (POLLIN, POLLIN));
        assert_eq!(read_fd(r), b"x");
        assert_eq!(b.next().hdr.cookie, 3);
        // A message that arrives while poll sleeps wakes it.
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                a.send_to(b.id, 4, b"four").expect("SEND");
            });
            let t = Instant::now();
            assert_eq!(poll_fds(&mut p, 5000), 1, "woken by the message");
            assert_eq!((p[0].revents, p[1].revents), (POLLIN, 0));
            assert!(
                t.elapsed() >= Duration::from_millis(80),
                "woke after {:?}",
                t.elapsed()
            );
        });
        assert_eq!(b.next().hdr.cookie, 4);
        assert_eq!(poll_fds(&mut p, 0), 0);
        close(r);
        close(w);
    }

    /// A sealed memfd travels as a PAYLOAD_MEMFD item: the receiver finds the same
    /// file under a new fd number in the pool and maps it. What may be a memfd payload
    /// (kdbus HEAD's rules), and a unix socket in an FDS item.
    pub fn memfd_payload() {
        let (a, b) = (Conn::new(), Conn::new());
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let m = memfd(&data, SEALED);
        let send_memfd = |to: u64, cookie: u64, fd: i32, start: u64, size: u64| {
            let mut items = vecs(&[b"head"]);
            items.extend(memfd_item(fd, start, size));
            err(a.send(&msg(to, cookie, 0), &items, 0))
        };
        // RECV on `c` (checking the message) and FREE: its PAYLOAD_MEMFD item.
        let recv_memfd = |c: &Conn, cookie: u64| {
            let r = c.recv(0).unwrap_or_else(|e| panic!("RECV: errno {e}"));
            let got = c.read_msg(r.msg.offset);
            assert_eq!((got.hdr.src_id, got.hdr.cookie), (a.id, cookie));
            assert_eq!(got.payload, b"head", "the vector beside the memfd");
            assert_eq!(got.item(item::FDS), None, "memfds are not FDS");
            let it = got.item(item::PAYLOAD_MEMFD).expect("a PAYLOAD_MEMFD item");
            let mi: Memfd = read_struct(it).expect("kdbus_memfd");
            c.free(r.msg.offset).expect("FREE");
            mi
        };
        let len = data.len() as u64;
        assert_eq!(send_memfd(b.id, 1, m, 0, len), 0, "SEND of a sealed memfd");
        let mi = recv_memfd(&b, 1);
        assert_eq!((mi.start, mi.size), (0, len));
        let n = mi.fd;
        assert!(n >= 0, "the PAYLOAD_MEMFD item holds fd {n}");
        assert!(![m, a.fd, b.fd].contains(&n), "fd {n} is a new fd");
        // SAFETY: fcntl on an fd number.
        let fl = unsafe { libc::fcntl(n, libc::F_GETFD) };
        assert!(fl >= 0, "fd {n} is not open: errno {}", errno());
        assert_ne!(fl & libc::FD_CLOEXEC, 0, "kdbus installs memfds O_CLOEXEC");
        assert_eq!(file_id(n), file_id(m), "the same file, not a copy");
        // The sender's copy is not needed for the receiver's.
        close(m);
        // SAFETY: a fresh read-only mapping of the received memfd.
        let p = unsafe {
            let prot = libc::PROT_READ;
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                prot,
                libc::MAP_SHARED,
                n,
                0,
            )
        };
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap of the received memfd: errno {}",
            errno()
        );
        // SAFETY: inside that mapping.
        let seen = unsafe { std::slice::from_raw_parts(p as *const u8, len as usize) };
        assert!(seen == &data[..], "the memfd's bytes");
        // SAFETY: our mapping.
        assert_eq!(unsafe { libc::munmap(p, len as usize) }, 0);
        close(n);

        // Only a memfd sealed against every change, holding the range.
        let unsealed = memfd(b"unsealed", 0);
        assert_eq!(
            send_memfd(b.id, 2, unsealed, 0, 8),
            libc::ETXTBSY,
            "unsealed"
        );
        let writable = memfd(b"writable", SEALED & !libc::F_SEAL_WRITE);
        assert_eq!(
            send_memfd(b.id, 3, writable, 0, 8),
            libc::ETXTBSY,
            "no F_SEAL_WRITE"
        );
        let (pr, pw) = pipe();
        assert_eq!(send_memfd(b.id, 4, pr, 0, 1), libc::EMEDIUMTYPE, "a pipe");
        let short = memfd(b"8 bytes!", SEALED);
        assert_eq!(
            send_memfd(b.id, 5, short, 1, 8),
            libc::EBADF,
            "start+size > 8"
        );
        assert_eq!(send_memfd(b.id, 6, short, 0, 9), libc::EBADF, "size > 8");
        assert_eq!(err(b.recv(0)), libc::EAGAIN, "refused SENDs queued nothing");

        // Memfds are payload: a receiver without ACCEPT_FD gets them.
        let c = Conn::with_flags(0);
        assert_eq!(
            send_memfd(c.id, 7, short, 0, 8),
            0,
            "memfd to a no-ACCEPT_FD conn"
        );
        let mi = recv_memfd(&c, 7);
        assert!(mi.fd >= 0, "the PAYLOAD_MEMFD item holds fd {}", mi.fd);
        assert_eq!(file_id(mi.fd), file_id(short), "the same file");
        close(mi.fd);

        // A unix socket cannot travel in an FDS item (it could carry fds itself).
        let mut sp = [0i32; 2];
        // SAFETY: room for two fds.
        let r = unsafe {
            let ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
            libc::socketpair(libc::AF_UNIX, ty, 0, sp.as_mut_ptr())
        };
        assert_eq!(r, 0, "socketpair: errno {}", errno());
        assert_eq!(
            err(send_fd(&a, b.id, sp[0])),
            libc::EOPNOTSUPP,
            "a unix socket"
        );
        assert_eq!(err(b.recv(0)), libc::EAGAIN);
        for fd in [unsealed, writable, pr, pw, short, sp[0], sp[1]] {
            close(fd);
        }
    }

    /// close(2) of a connection or of a bus owner has taken effect when it returns: the
    /// connection's ID_REMOVE is already queued for its watchers, the bus node gone.
    pub fn close_is_synchronous() {
        let a = Conn::new();
        let mut rule = Vec::new();
        let any = NotifyIdChange {
            id: MATCH_ID_ANY,
            flags: 0,
        };
        ItemWriter::new(&mut rule).push(item::ID_REMOVE, any.as_bytes());
        a.match_add(0x1d, &rule).expect("MATCH_ADD of ID_REMOVE");
        for round in 0..3 {
            let fd = open_bus();
            let h = say_hello(fd, hello_flags::ACCEPT_FD).expect("HELLO");
            assert_eq!(
                err(a.recv(0)),
                libc::EAGAIN,
                "round {round}: ID_ADD not matched"
            );
            close(fd);
            // No poll, no sleep: the notification is there.
            let r = a.recv(0).unwrap_or_else(|e| {
                panic!("round {round}: RECV right after close(): errno {e}, no ID_REMOVE")
            });
            let m = a.read_msg(r.msg.offset);
            let (src, dst) = (m.hdr.src_id, m.hdr.dst_id);
            assert_eq!((src, dst), (0, DST_ID_BROADCAST), "a kernel notification");
            assert_eq!(m.hdr.payload_type, payload::KERNEL);
            let n = m.item(item::ID_REMOVE).expect("an ID_REMOVE item");
            let n: NotifyIdChange = read_struct(n).expect("kdbus_notify_id_change");
            assert_eq!(
                (n.id, n.flags),
                (h.id, hello_flags::ACCEPT_FD),
                "round {round}"
            );
            a.free(r.msg.offset).expect("FREE");
            assert_eq!(
                err(a.send_to(h.id, 1, b"x")),
                libc::ENXIO,
                "round {round}: id gone"
            );
        }

        // A bus lives as long as its owner's fd.
        let root = kdbus_root();
        let name = format!("{}-closetest", common::uid());
        let node = root.join(&name).join("bus");
        let make_bus = || {
            let ctl = open_path(&root.join("control")).expect("open control");
            let mut body = words(&common::bus_make_body(&name, 0, common::TEST_BLOOM));
            let r = kioctl::<CmdGeneric>(ctl, cmd::BUS_MAKE, body.as_mut_ptr().cast());
            (ctl, err(r))
        };
        let (owner, e) = make_bus();
        assert_eq!(e, 0, "BUS_MAKE {name}");
        assert!(node.exists(), "{} after BUS_MAKE", node.display());
        let c = open_path(&node).expect("open the new bus");
        say_hello(c, hello_flags::ACCEPT_FD).expect("HELLO on the new bus");
        close(owner);
        assert!(
            !node.exists(),
            "{} exists after close() returned",
            node.display()
        );
        assert_eq!(err(open_path(&node)), libc::ENOENT, "open the removed bus");
        // Its connections went with it.
        let hup = libc::POLLERR | libc::POLLHUP;
        let mut p = [pfd(c, POLLIN)];
        poll_fds(&mut p, 0);
        assert_eq!(p[0].revents & hup, hup, "a connection of the removed bus");
        close(c);
        // The name is free again at once.
        let (again, e) = make_bus();
        assert_eq!(e, 0, "BUS_MAKE {name} again");
        close(again);
        assert!(
            !node.exists(),
            "{} exists after the second close",
            node.display()
        );
    }

    /// Broadcasts that find no room in a receiver's pool are lost: poll wakes it, and
    /// RECV reports the count once (kdbus counted losses since the last RECV).
    pub fn dropped_messages() {
        let a = Conn::new();
        let b = Conn::with_pool(hello_flags::ACCEPT_FD, 4 * 4096);
        let mut rule = Vec::new();
        let zeros = vec![0u64; b.bloom.size as usize / 8];
        ItemWriter::new(&mut rule).push(item::BLOOM_MASK, zeros.as_bytes());
        b.match_add(0xd0, &rule)
            .expect("MATCH_ADD with an empty mask");
        let filter = vec![0u64; a.bloom.size as usize / 8];
        let signal = |cookie: u64, p: &[u8]| {
            let mut items = vecs(&[p]);
            items.extend(bloom_filter(&filter));
            let h = msg(DST_ID_BROADCAST, cookie, msg_flags::SIGNAL);
            a.send(&h, &items, 0)
                .unwrap_or_else(|e| panic!("broadcast {cookie}: errno {e}"));
        };
        let dropped = recv_flags::RETURN_DROPPED_MSGS;
        let payload = vec![0x5a; 600];
        const SENT: u64 = 12;
        for cookie in 1..=SENT {
            signal(cookie, &payload);
        }
        assert_eq!(b.poll(POLLIN, 0), POLLIN, "messages and losses wait");
        let (e, r) = b.recv_wb(0);
        assert_eq!(e, 0, "RECV");
        assert_ne!(r.return_flags & dropped, 0, "RETURN_DROPPED_MSGS: {r:?}");
        let lost = r.dropped_msgs;
        assert!(lost > 0 && lost < SENT, "{lost} of {SENT} lost");
        let first = b.read_msg(r.msg.offset);
        assert_eq!((first.hdr.cookie, &first.payload), (1, &payload));
        b.free(r.msg.offset).expect("FREE");
        // The rest that fitted, in order, each RECV reporting no new loss.
        let mut cookies = vec![1];
        loop {
            let (e, r) = b.recv_wb(0);
            assert_eq!(
                (r.dropped_msgs, r.return_flags & dropped),
                (0, 0),
                "reported again"
            );
            if e == libc::EAGAIN {
                break;
            }
            assert_eq!(e, 0, "RECV");
            cookies.push(b.read_msg(r.msg.offset).hdr.cookie);
            b.free(r.msg.offset).expect("FREE");
        }
        assert_eq!(
            cookies.len() as u64 + lost,
            SENT,
            "received {cookies:?}, lost {lost}"
        );
        assert_eq!(cookies, (1..=cookies.len() as u64).collect::<Vec<_>>());
        assert_eq!(b.poll(POLLIN, 0), 0, "nothing waits");

        // A loss alone makes the receiver readable: a signal larger than its share.
        signal(100, &vec![0xa5; 3 * 4096]);
        assert_eq!(b.poll(POLLIN, 0), POLLIN, "the loss wakes the receiver");
        let (e, r) = b.recv_wb(0);
        assert_eq!(e, libc::EAGAIN, "no message came");
        assert_eq!(
            (r.dropped_msgs, r.return_flags & dropped),
            (1, dropped),
            "{r:?}"
        );
        assert_eq!(b.poll(POLLIN, 0), 0, "the loss was reported");
        let (e, r) = b.recv_wb(0);
        assert_eq!((e, r.dropped_msgs, r.return_flags), (libc::EAGAIN, 0, 0));
        // The FREEs above ride with b's next request: one with an answer makes sure
        // the broker has them, so the pool has room again.
        b.conn_info(b.id, 0).expect("CONN_INFO");
        signal(101, &payload);
        let (e, r) = b.recv_wb(0);
        assert_eq!(
            (e, r.dropped_msgs, r.return_flags & dropped),
            (0, 0, 0),
            "{r:?}"
        );
        assert_eq!(b.read_msg(r.msg.offset).hdr.cookie, 101);
        b.free(r.msg.offset).expect("FREE");
    }

    /// `<runtime>/parameters/attach_flags_mask`, kdbus's module parameter: 0 means no
    /// metadata at all, also in CONN_INFO.
    pub fn attach_flags_mask() {
        let path = kdbus_root().join("parameters").join("attach_flags_mask");
        let orig = std::fs::read_to_string(&path).expect("read attach_flags_mask");
        let a = Conn::new();
        let types = |items: &[(u64, Vec<u8>)]| items.iter().map(|i| i.0).collect::<Vec<_>>();
        let creds_uid = |items: &[(u64, Vec<u8>)]| {
            let c = items.iter().find(|i| i.0 == item::CREDS);
            let c = c.unwrap_or_else(|| panic!("no CREDS in {:x?}", types(items)));
            read_struct::<kdbus_abi::Creds>(&c.1)
                .expect("kdbus_creds")
                .uid
        };
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() } as u64;
        let (info, items) = a.conn_info(a.id, attach::ALL).expect("CONN_INFO");
        assert_eq!(info.id, a.id);
        assert_eq!(creds_uid(&items), uid, "CREDS with the default mask");

        std::fs::write(&path, "0\n").expect("write 0");
        let (info, items) = a.conn_info(a.id, attach::ALL).expect("CONN_INFO, mask 0");
        assert_eq!(info.id, a.id);
        assert!(items.is_empty(), "items with mask 0: {:x?}", types(&items));
        assert_eq!(info.size, std::mem::size_of::<Info>() as u64);

        std::fs::write(&path, &orig).expect("restore attach_flags_mask");
        let (info, items) = a.conn_info(a.id, attach::ALL).expect("CONN_INFO, restored");
        assert_eq!(info.id, a.id);
        assert_eq!(creds_uid(&items), uid, "CREDS with the mask restored");
    }
}
