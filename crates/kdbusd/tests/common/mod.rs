//! Test harness: a real kdbusd in a temporary runtime directory.
#![allow(dead_code)]

use kdbus::{abi, Connection, HelloOptions};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct Broker {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub control: PathBuf,
    pub bus: PathBuf,
}

impl Broker {
    pub fn start() -> Broker {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_kdbusd"))
            .arg("--runtime-dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn kdbusd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        assert!(
            line.starts_with("kdbusd ready:"),
            "unexpected first line: {line:?}"
        );
        let uid = rustix::process::getuid().as_raw();
        let bus = dir.path().join(format!("{uid}-user")).join("bus");
        let control = dir.path().join("control");
        Broker {
            child,
            dir,
            control,
            bus,
        }
    }

    /// An ordinary connection as the kdbus selftests make them: ACCEPT_FD, all
    /// metadata, 16 MiB pool, a description.
    pub fn conn(&self) -> Connection {
        Connection::hello(&self.bus, &test_hello()).expect("hello")
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

pub fn test_hello() -> HelloOptions {
    HelloOptions::new()
        .flags(abi::hello_flags::ACCEPT_FD)
        .attach_recv(abi::attach::ALL)
        .attach_send(abi::attach::ANY)
        .description("this-is-my-name")
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        let _ = self.child.wait();
    }
}

pub fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// Whether this test runs as root (CI does); says why it is skipped if not.
pub fn root_or_skip(why: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("skipped: needs root ({why})");
    }
    root
}

// ------------------------------------------------------------------ helpers for the
// error-path suites (bus_make, hello, message, reply, pool, byebye, bench_selftest)

use kdbus::abi::wire::{self, Frames, RecHeader, ReqHeader};
use kdbus::abi::{BloomParameter, CmdSend, Errno, ItemWriter, Msg};
use kdbus::{BusOwner, Control};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};
use zerocopy::{Immutable, IntoBytes};

/// A generous bound for anything that should happen "soon".
pub const SOON: Duration = Duration::from_secs(10);

/// The bloom parameters of the kdbus selftests.
pub const TEST_BLOOM: BloomParameter = BloomParameter {
    size: 64,
    n_hash: 1,
};

impl Broker {
    pub fn runtime_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Let other users reach the sockets (the temporary directory is private).
    pub fn open_to_other_users(&self) {
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(self.dir.path(), mode).expect("chmod the runtime dir");
    }

    /// A fresh handle on the control socket.
    pub fn control(&self) -> Control {
        Control::open(self.dir.path()).expect("open control")
    }

    /// Make bus `<uid>-<suffix>` with the selftest bloom parameters.
    pub fn make_bus(&self, suffix: &str, flags: u64) -> BusOwner {
        let name = format!("{}-{suffix}", uid());
        self.control()
            .make_bus(&name, flags, TEST_BLOOM)
            .expect("bus make")
    }

    /// Path of the default endpoint of bus `name`.
    pub fn endpoint_of(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("bus")
    }
}

/// The errno of a failed library call; panics on success or on a non-bus error (a
/// transport failure must not pass for the errno under test).
#[track_caller]
pub fn errno<T>(r: kdbus::Result<T>) -> Errno {
    match r {
        Err(kdbus::Error::Bus(e)) => e,
        Err(e) => panic!("expected a bus errno, got {e}"),
        Ok(_) => panic!("expected an error, got success"),
    }
}

/// Unwrap a library call with the error's name in the panic message.
#[track_caller]
pub fn ok<T>(r: kdbus::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("unexpected error: {e} ({:?})", e.errno()),
    }
}

/// Poll `f` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A command structure followed by `items`, with its leading `size` set to the total.
pub fn cmd_body<T: IntoBytes + Immutable>(cmd: &T, items: &[u8]) -> Vec<u8> {
    let mut out = cmd.as_bytes().to_vec();
    out.extend_from_slice(items);
    let size = out.len() as u64;
    out[..8].copy_from_slice(&size.to_ne_bytes());
    out
}

/// An item list built with `ItemWriter`.
pub fn items(f: impl FnOnce(&mut ItemWriter<'_>)) -> Vec<u8> {
    let mut out = Vec::new();
    f(&mut ItemWriter::new(&mut out));
    out
}

/// A BUS_MAKE body: `kdbus_cmd` + MAKE_NAME + BLOOM_PARAMETER.
pub fn bus_make_body(name: &str, flags: u64, bloom: BloomParameter) -> Vec<u8> {
    let it = items(|w| {
        w.push_str(abi::item::MAKE_NAME, name);
        w.push(abi::item::BLOOM_PARAMETER, bloom.as_bytes());
    });
    let cmd = abi::CmdGeneric {
        flags,
        ..Default::default()
    };
    cmd_body(&cmd, &it)
}

/// A message header to `dst_id` with the D-Bus payload type, everything else zero.
pub fn msg_to(dst_id: u64) -> Msg {
    Msg {
        dst_id,
        payload_type: abi::payload::DBUS,
        ..Default::default()
    }
}

/// A hand-built SEND request: `kdbus_cmd_send`, then the message, then the bytes its
/// PAYLOAD_VEC items point to (by offset into the request, as on the wire).
pub struct RawSend {
    pub send_flags: u64,
    pub msg: Msg,
    /// Overrides `msg.size` (default: header + items).
    pub msg_size: Option<u64>,
    items: Vec<u8>,
    data: Vec<u8>,
    /// (position of a VEC's address field in `items`, offset of its data in `data`)
    fixups: Vec<(usize, usize)>,
}

impl RawSend {
    pub fn new(msg: Msg) -> Self {
        RawSend {
            send_flags: 0,
            msg,
            msg_size: None,
            items: Vec::new(),
            data: Vec::new(),
            fixups: Vec::new(),
        }
    }

    pub fn send_flags(mut self, f: u64) -> Self {
        self.send_flags = f;
        self
    }

    /// Any item, verbatim.
    pub fn item(mut self, type_: u64, payload: &[u8]) -> Self {
        ItemWriter::new(&mut self.items).push(type_, payload);
        self
    }

    /// A PAYLOAD_VEC carrying `data`.
    pub fn vec(mut self, data: &[u8]) -> Self {
        let at = self.data.len();
        self.data.extend_from_slice(data);
        let padded = abi::align8_usize(self.data.len());
        self.data.resize(padded, 0);
        self.vec_at(at, data.len() as u64)
    }

    /// A PAYLOAD_VEC of `size` bytes pointing at `data[at..]` (vectors may alias, which
    /// lets a small request describe a large payload).
    pub fn vec_at(mut self, at: usize, size: u64) -> Self {
        let v = abi::Vec_ {
            size,
            address_or_offset: 0,
        };
        self.fixups.push((self.items.len() + 16 + 8, at));
        ItemWriter::new(&mut self.items).push(abi::item::PAYLOAD_VEC, v.as_bytes());
        self
    }

    /// Append raw bytes to the data area without an item pointing at them.
    pub fn data(mut self, data: &[u8]) -> Self {
        self.data.extend_from_slice(data);
        let padded = abi::align8_usize(self.data.len());
        self.data.resize(padded, 0);
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let cmd_size = std::mem::size_of::<CmdSend>();
        let cmd = CmdSend {
            size: cmd_size as u64,
            flags: self.send_flags,
            msg_address: cmd_size as u64,
            ..Default::default()
        };
        let mut out = cmd.as_bytes().to_vec();
        let mut msg = self.msg;
        msg.size = self
            .msg_size
            .unwrap_or((std::mem::size_of::<Msg>() + self.items.len()) as u64);
        out.extend_from_slice(msg.as_bytes());
        let items_at = out.len();
        out.extend_from_slice(&self.items);
        let data_base = abi::align8_usize(out.len());
        for &(pos, at) in &self.fixups {
            let addr = (data_base + at) as u64;
            out[items_at + pos..items_at + pos + 8].copy_from_slice(&addr.to_ne_bytes());
        }
        out.resize(data_base, 0);
        out.extend_from_slice(&self.data);
        out
    }
}

/// One answer record read off a raw socket.
pub struct RawReply {
    pub error: i32,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// A bare socket to a broker (control or endpoint), speaking the request/record
/// framing by hand: for requests the client library would never produce.
pub struct RawSocket {
    pub fd: OwnedFd,
    next_req: u64,
}

/// A record the broker wrote: its header, body and the fds that came with it.
pub type Record = (RecHeader, Vec<u8>, Vec<OwnedFd>);

impl RawSocket {
    pub fn connect(path: &Path) -> RawSocket {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socket");
        rustix::net::connect(&fd, &SocketAddrUnix::new(path).expect("addr")).expect("connect");
        RawSocket { fd, next_req: 1 }
    }

    /// A fresh request id.
    pub fn next_id(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// One datagram, verbatim.
    pub fn send_bytes(&self, bytes: &[u8]) {
        self.send_with_fds(bytes, &[]);
    }

    pub fn send_with_fds(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(anc.push(SendAncillaryMessage::ScmRights(fds)));
        }
        rustix::net::sendmsg(
            &self.fd,
            &[std::io::IoSlice::new(bytes)],
            &mut anc,
            SendFlags::NOSIGNAL,
        )
        .expect("sendmsg");
    }

    /// A framed request: header + body + padding.
    pub fn frame(cmd: u32, flags: u32, req_id: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let h = ReqHeader {
            cmd,
            flags,
            req_id,
            body_len: body.len() as u64,
        };
        wire::push_frame(&mut out, &h, &[body]);
        out
    }

    /// Send one request and wait for its answer.
    pub fn request(&mut self, cmd: u32, body: &[u8]) -> RawReply {
        let id = self.next_id();
        self.send_bytes(&Self::frame(cmd, 0, id, body));
        self.reply(id)
            .unwrap_or_else(|| panic!("no answer to request {id}"))
    }

    /// Wait (up to [`SOON`]) for the answer to `req_id`, skipping message events.
    pub fn reply(&self, req_id: u64) -> Option<RawReply> {
        let end = Instant::now() + SOON;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            for (h, body, fds) in self.read_records(left)? {
                if h.kind == wire::REC_REPLY && h.req_id == req_id {
                    return Some(RawReply {
                        error: h.error,
                        body,
                        fds,
                    });
                }
            }
        }
    }

    /// Read one datagram (waiting up to `timeout`) and split it into records. `None` on
    /// timeout or hang-up.
    pub fn read_records(&self, timeout: Duration) -> Option<Vec<Record>> {
        let (buf, fds) = self.read_datagram(timeout)?;
        let mut fds = fds.into_iter();
        let mut out = Vec::new();
        for f in Frames::<RecHeader>::new(&buf) {
            let (h, body) = f.expect("broker sent a malformed record");
            let mine: Vec<OwnedFd> = fds.by_ref().take(h.n_fds as usize).collect();
            out.push((h, body.to_vec(), mine));
        }
        Some(out)
    }

    /// Read one datagram; `None` on timeout or hang-up (EOF).
    pub fn read_datagram(&self, timeout: Duration) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
        use rustix::event::{poll, PollFd, PollFlags};
        use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        let ts = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: timeout.subsec_nanos() as i64,
        };
        let mut pfd = [PollFd::new(&self.fd, PollFlags::IN)];
        if poll(&mut pfd, Some(&ts)).ok()? == 0 {
            return None;
        }
        let mut buf = vec![0u8; 256 * 1024];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let m = rustix::net::recvmsg(
            &self.fd,
            &mut [std::io::IoSliceMut::new(&mut buf)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        )
        .ok()?;
        if m.bytes == 0 {
            return None;
        }
        let mut fds = Vec::new();
        for c in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(it) = c {
                fds.extend(it);
            }
        }
        buf.truncate(m.bytes);
        Some((buf, fds))
    }

    /// True once the broker has hung up on this socket.
    pub fn is_hung_up(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            let mut buf = [0u8; 1];
            matches!(
                rustix::net::recv(&self.fd, &mut buf, rustix::net::RecvFlags::DONTWAIT),
                Ok((0, _)) | Err(rustix::io::Errno::CONNRESET)
            )
        })
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// HELLO body with the selftest options and `f` applied to the fixed part.
pub fn hello_body(f: impl FnOnce(&mut abi::CmdHello), items: &[u8]) -> Vec<u8> {
    let mut h = abi::CmdHello {
        flags: abi::hello_flags::ACCEPT_FD,
        attach_flags_send: abi::attach::ANY,
        attach_flags_recv: abi::attach::ALL,
        pool_size: kdbus::DEFAULT_POOL_SIZE,
        ..Default::default()
    };
    f(&mut h);
    let mut body = cmd_body(&h, items);
    // `f` may have set a deliberately wrong size; keep it.
    if h.size != 0 {
        body[..8].copy_from_slice(&h.size.to_ne_bytes());
    }
    body
}

/// Small deterministic PRNG (xorshift) for garbage inputs.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

// ------------------------------------------------------------------ the D-Bus socket
// (suites dbus_zbus, dbus_native, dbus_tools)

impl Broker {
    /// The D-Bus socket of the default bus: `<runtime>/<uid>-user/dbus`.
    pub fn dbus_path(&self) -> PathBuf {
        self.dir.path().join(format!("{}-user", uid())).join("dbus")
    }

    /// The D-Bus address of the default bus, `unix:path=...` (escaped as the D-Bus
    /// specification wants), for D-Bus clients.
    pub fn dbus_address(&self) -> String {
        let path = self.dbus_path();
        assert!(path.exists(), "no D-Bus socket at {}", path.display());
        let mut out = String::from("unix:path=");
        for &b in path.as_os_str().as_encoded_bytes() {
            if b.is_ascii_alphanumeric() || b"-_/.*".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02x}"));
            }
        }
        out
    }
}

/// A new connection to `endpoint` calls `service` (which this answers with "pong"):
/// how long the connect and the call took.
pub fn connect_and_call(service: &Connection, endpoint: &Path) -> Duration {
    use kdbus::Message;
    let t0 = std::time::Instant::now();
    let caller = ok(Connection::hello(endpoint, &test_hello()));
    let reply = std::thread::scope(|s| {
        s.spawn(|| {
            let m = ok(service.recv_timeout(Some(SOON)));
            ok(service.send(
                &Message::to(m.src_id())
                    .reply_to(m.cookie())
                    .payload(b"pong"),
            ));
        });
        caller.call(Message::to(service.id()).cookie(1).payload(b"ping"), SOON)
    });
    let took = t0.elapsed();
    assert_eq!(ok(reply).payload_bytes(), b"pong");
    took
}

/// Whether this kernel gives pidfds of socket peers (`SO_PEERPIDFD`, Linux 6.5).
pub fn kernel_has_peer_pidfd() -> bool {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the local `fd`.
    let r = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&a),
            libc::SOL_SOCKET,
            77, // SO_PEERPIDFD
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 && fd >= 0 {
        // SAFETY: the kernel just gave us this descriptor.
        unsafe { libc::close(fd) };
    }
    r == 0
}
