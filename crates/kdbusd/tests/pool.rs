//! Selftest 20 (writable-pool) and spec A.5 POOL1: a connection can read its pool but
//! never write it, whichever way it gets hold of the memory.
//!
//! The pool fd is taken from a HELLO made by hand (the client library closes it after
//! mapping); the library's own mapping is checked through its address.

mod common;
use common::*;
use kdbus::abi::{self, cmd, wire};
use kdbus::Message;
use rustix::fd::{AsRawFd, OwnedFd};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::ptr;

const POOL_SIZE: usize = kdbus::DEFAULT_POOL_SIZE as usize;

/// A connection made by hand: its socket, id and pool fd as the broker handed it out.
fn raw_hello(b: &Broker) -> (RawSocket, u64, OwnedFd) {
    let mut raw = RawSocket::connect(&b.bus);
    let mut r = raw.request(cmd::HELLO, &test_hello().encode());
    assert_eq!(r.error, 0);
    let wb: abi::CmdHello = abi::read_struct(&r.body).unwrap();
    assert_eq!(r.fds.len(), 1, "HELLO carries one fd, the pool");
    (raw, wb.id, r.fds.pop().unwrap())
}

/// mmap; `Err(errno)` on failure. The mapping is unmapped on drop.
struct Map {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Map {
    fn new(fd: &OwnedFd, len: usize, prot: i32, flags: i32) -> Result<Map, i32> {
        // SAFETY: a fresh mapping at a kernel-chosen address; nothing aliases it.
        let p = unsafe { libc::mmap(ptr::null_mut(), len, prot, flags, fd.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            Err(last_errno())
        } else {
            Ok(Map { ptr: p, len })
        }
    }

    fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset + len <= self.len);
        // SAFETY: inside our live, readable mapping.
        unsafe { std::slice::from_raw_parts((self.ptr as *const u8).add(offset), len) }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: exactly what mmap returned.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

/// mprotect; `Err(errno)` on failure.
fn protect(ptr: *const u8, len: usize, prot: i32) -> Result<(), i32> {
    // SAFETY: only changes protections of a range we mapped; on success we restore it.
    match unsafe { libc::mprotect(ptr as *mut _, len, prot) } {
        0 => Ok(()),
        _ => Err(last_errno()),
    }
}

fn write_fd(fd: &OwnedFd, data: &[u8]) -> Result<usize, i32> {
    // SAFETY: plain write(2) from a valid buffer.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    usize::try_from(n).map_err(|_| last_errno())
}

fn truncate_fd(fd: &OwnedFd, len: usize) -> Result<(), i32> {
    // SAFETY: plain ftruncate(2).
    match unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } {
        0 => Ok(()),
        _ => Err(last_errno()),
    }
}

fn file_size(fd: &OwnedFd) -> u64 {
    rustix::fs::fstat(fd).unwrap().st_size as u64
}

/// Reopen a file we have an fd for through /proc, read-write if permitted.
fn reopen_rw(fd: &OwnedFd) -> Option<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()
}

// selftest 20 (writable-pool), POOL1: no writable shared mapping, read-only works,
// and a read-only mapping cannot be made writable
#[test]
fn writable_pool() {
    let b = Broker::start();
    let (_raw, _id, pool) = raw_hello(&b);
    let rw = libc::PROT_READ | libc::PROT_WRITE;

    let e = Map::new(&pool, POOL_SIZE, rw, libc::MAP_SHARED).err();
    assert!(e.is_some(), "the pool was mapped writable");

    let ro =
        Map::new(&pool, POOL_SIZE, libc::PROT_READ, libc::MAP_SHARED).expect("read-only mapping");
    assert!(protect(ro.ptr as *const u8, POOL_SIZE, rw).is_err());
    // Smaller mappings are fine too.
    Map::new(&pool, 4096, libc::PROT_READ, libc::MAP_SHARED).expect("one page");
}

// POOL1: the fd a client gets is read-only, and the pool cannot be written, resized
// or unsealed through it
#[test]
fn pool_fd_is_read_only() {
    let b = Broker::start();
    let (_raw, _id, pool) = raw_hello(&b);
    let mode = rustix::fs::fcntl_getfl(&pool).unwrap() & rustix::fs::OFlags::RWMODE;
    assert_eq!(mode, rustix::fs::OFlags::RDONLY);
    assert_eq!(file_size(&pool), POOL_SIZE as u64);

    assert!(write_fd(&pool, b"scribble").is_err());
    assert!(truncate_fd(&pool, 2 * POOL_SIZE).is_err());
    assert!(truncate_fd(&pool, 0).is_err());
    assert_eq!(file_size(&pool), POOL_SIZE as u64);

    let seals = rustix::fs::fcntl_get_seals(&pool).expect("a sealed memfd");
    use rustix::fs::SealFlags as S;
    for s in [S::SEAL, S::SHRINK, S::GROW, S::FUTURE_WRITE] {
        assert!(seals.contains(s), "missing seal {s:?} in {seals:?}");
    }
    assert!(rustix::fs::fcntl_add_seals(&pool, S::WRITE).is_err());
}

// POOL1: reopening the pool read-write (through /proc) does not make it writable: the
// seals hold for every file description
#[test]
fn reopened_pool_is_still_sealed() {
    let b = Broker::start();
    let (_raw, _id, pool) = raw_hello(&b);
    let Some(rw_fd) = reopen_rw(&pool) else {
        eprintln!("cannot reopen the pool read-write here; nothing to check");
        return;
    };
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    assert_eq!(
        Map::new(&rw_fd, POOL_SIZE, rw, libc::MAP_SHARED).err(),
        Some(libc::EPERM),
        "writable shared mapping"
    );
    assert_eq!(write_fd(&rw_fd, b"scribble").err(), Some(libc::EPERM));
    assert_eq!(truncate_fd(&rw_fd, 2 * POOL_SIZE).err(), Some(libc::EPERM));
    assert_eq!(truncate_fd(&rw_fd, 4096).err(), Some(libc::EPERM));
    let ro = Map::new(&rw_fd, POOL_SIZE, libc::PROT_READ, libc::MAP_SHARED).expect("ro map");
    assert!(protect(ro.ptr as *const u8, POOL_SIZE, rw).is_err());
}

// POOL1, POOL2: a private writable mapping is a copy: what a client scribbles there
// never reaches the pool the broker writes (kdbus refused such mappings outright)
#[test]
fn private_mapping_does_not_reach_the_pool() {
    let b = Broker::start();
    let (raw, id, pool) = raw_hello(&b);
    let c = b.conn();
    let shared = Map::new(&pool, POOL_SIZE, libc::PROT_READ, libc::MAP_SHARED).unwrap();
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    if let Ok(private) = Map::new(&pool, POOL_SIZE, rw, libc::MAP_PRIVATE) {
        // SAFETY: writing into our own private, writable mapping.
        unsafe { ptr::write_bytes(private.ptr as *mut u8, 0xaa, POOL_SIZE) };
    }
    ok(c.send(&Message::to(id).cookie(0x5eed).payload(b"pool bytes")));
    let ev = next_msg_event(&raw);
    let msg: abi::Msg = abi::read_struct(shared.bytes(ev.offset as usize, 64)).unwrap();
    assert_eq!((msg.src_id, msg.cookie), (c.id(), 0x5eed));
    let all = shared.bytes(ev.offset as usize, ev.msg_size as usize);
    assert!(all.windows(10).any(|w| w == b"pool bytes"));
}

/// The next message event on a raw connection.
fn next_msg_event(raw: &RawSocket) -> wire::MsgEvent {
    loop {
        let recs = raw.read_records(SOON).expect("message event");
        for (h, body, _) in recs {
            if h.kind == wire::REC_MSG {
                return abi::read_struct(&body).unwrap();
            }
        }
    }
}

// POOL1 for the library's mapping: read-only, shared, and stuck that way
#[test]
fn library_mapping_is_read_only() {
    let b = Broker::start();
    let conn = b.conn();
    let peer = b.conn();
    let base = conn.pool().as_ptr();
    let len = conn.pool().len();
    assert_eq!(len, POOL_SIZE);
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    assert!(protect(base, len, rw).is_err(), "mprotect to writable");
    assert!(protect(base, 4096, rw).is_err(), "mprotect of one page");

    // /proc/self/maps: one read-only shared mapping of the pool memfd.
    let start = format!("{:x}-", base as usize);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|l| l.starts_with(&start))
        .expect("pool mapping in /proc/self/maps");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[1], "r--s", "{line}");
    assert!(line.contains("memfd:kdbus-pool"), "{line}");

    // Reopened through map_files (root only), it is still not writable.
    let range = fields[0];
    let path = format!("/proc/self/map_files/{range}");
    if let Ok(fd) = rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        assert!(Map::new(&fd, len, rw, libc::MAP_SHARED).is_err());
        assert!(write_fd(&fd, b"x").is_err());
    } else {
        eprintln!("{path} not accessible; skipped that part");
    }

    // And the mapping still works for reading.
    ok(peer.send(&Message::to(conn.id()).cookie(3).payload(b"readable")));
    let m = ok(conn.recv_timeout(Some(SOON)));
    assert_eq!(m.payload_bytes(), b"readable");
}

const HELPER_ENV: &str = "KDBUS_TEST_HELPER";
const BUS_ENV: &str = "KDBUS_TEST_BUS";

/// Not a test: the helper process for `mapping_beyond_the_pool`. Without
/// `KDBUS_TEST_HELPER` it does nothing.
#[test]
fn helper_process() {
    if std::env::var(HELPER_ENV).as_deref() != Ok("beyond") {
        return;
    }
    let bus = std::env::var(BUS_ENV).unwrap();
    let mut raw = RawSocket::connect(std::path::Path::new(&bus));
    let mut r = raw.request(cmd::HELLO, &test_hello().encode());
    assert_eq!(r.error, 0);
    let pool = r.fds.pop().unwrap();
    let len = POOL_SIZE + 4096;
    match Map::new(&pool, len, libc::PROT_READ, libc::MAP_SHARED) {
        Err(e) => println!("HELPER mapped=0 errno={e}"),
        Ok(m) => {
            println!("HELPER mapped=1");
            // SAFETY: inside the mapping; past the end of the file, which must fault.
            let v = unsafe { ptr::read_volatile((m.ptr as *const u8).add(POOL_SIZE)) };
            println!("HELPER read={v}");
        }
    }
}

// POOL1: memory beyond the pool cannot be had: mapping it fails or touching it faults
#[test]
fn mapping_beyond_the_pool() {
    let b = Broker::start();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "helper_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "beyond")
        .env(BUS_ENV, &b.bus)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn helper");
    let out = BufReader::new(child.stdout.take().unwrap());
    // libtest may print "test helper_process ... " in front of the first line.
    let said: Vec<String> = out
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.find("HELPER ").map(|i| l[i..].to_owned()))
        .collect();
    let status = child.wait().unwrap();
    assert!(
        !said.iter().any(|l| l.starts_with("HELPER read=")),
        "read past the pool: {said:?}"
    );
    if said.iter().any(|l| l == "HELPER mapped=1") {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGBUS), "{status}");
    } else {
        assert!(
            said.iter().any(|l| l.starts_with("HELPER mapped=0")),
            "helper said {said:?}, {status}"
        );
    }
    // The broker did not mind.
    let x = b.conn();
    ok(x.info(x.id(), 0));
}
