//! Which fds are kdbus handles.
//!
//! A process-wide map from fd number to handle. Every interposed call on an fd asks it
//! first, so the common cases cost an atomic load or two: a process with no kdbus
//! handle open, and an fd that is not one (a bit per fd number says "may be ours"; no
//! lock is taken for the others, which also keeps close() usable in signal handlers).
//!
//! Handles are shared (`Arc`): a thread blocked in an ioctl keeps its handle alive
//! while another closes the fd, as the kernel kept a file alive for a syscall in
//! progress.

use crate::handle::Handle;
use kdbus_abi::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

static TABLE: Mutex<Option<HashMap<RawFd, Arc<Handle>>>> = Mutex::new(None);
static COUNT: AtomicUsize = AtomicUsize::new(0);

fn lock() -> MutexGuard<'static, Option<HashMap<RawFd, Arc<Handle>>>> {
    TABLE.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn is_empty() -> bool {
    COUNT.load(Ordering::Acquire) == 0
}

/// Fds below this have a bit saying "may be ours", so that calls on other fds (every
/// close(), poll() and ioctl() of the process) neither lock nor look up anything.
const QUICK: usize = 4096;
static MAYBE: [AtomicU64; QUICK / 64] = [const { AtomicU64::new(0) }; QUICK / 64];

fn maybe_set(fd: RawFd, on: bool) {
    if let Some(w) = MAYBE.get(fd as usize / 64) {
        let bit = 1u64 << (fd as usize % 64);
        if on {
            w.fetch_or(bit, Ordering::AcqRel);
        } else {
            w.fetch_and(!bit, Ordering::AcqRel);
        }
    }
}

/// False only if `fd` is certainly not ours.
fn maybe_ours(fd: RawFd) -> bool {
    if fd < 0 || is_empty() {
        return false;
    }
    MAYBE
        .get(fd as usize / 64)
        .is_none_or(|w| w.load(Ordering::Acquire) & (1u64 << (fd as usize % 64)) != 0)
}

pub fn get(fd: RawFd) -> Option<Arc<Handle>> {
    if !maybe_ours(fd) {
        return None;
    }
    lock().as_ref()?.get(&fd).cloned()
}

pub fn insert(fd: RawFd, h: Arc<Handle>) {
    crate::os::watch_forks();
    maybe_set(fd, true);
    let old = {
        let mut t = lock();
        let old = t.get_or_insert_with(HashMap::new).insert(fd, h);
        COUNT.store(t.as_ref().map_or(0, HashMap::len), Ordering::Release);
        old
    };
    // A stale entry for a reused number: its socket is long gone.
    if let Some(old) = old {
        old.disown();
    }
}

/// Take `fd` out of the table (the caller closes it).
pub fn remove(fd: RawFd) -> Option<Arc<Handle>> {
    if !maybe_ours(fd) {
        return None;
    }
    let mut t = lock();
    let h = t.as_mut()?.remove(&fd);
    if h.is_some() {
        maybe_set(fd, false);
    }
    COUNT.store(t.as_ref().map_or(0, HashMap::len), Ordering::Release);
    h
}

/// `fd` was just returned by something else (a plain open): if we still had it, the
/// caller closed our socket in a way we did not see; forget it without closing.
pub fn forget(fd: RawFd) {
    if let Some(h) = remove(fd) {
        h.disown();
    }
}

/// Connect a `SOCK_SEQPACKET` socket to the node open as `O_PATH` in `node`.
pub fn connect_node(node: &OwnedFd, cloexec: bool) -> Result<OwnedFd, Errno> {
    let err = |e: rustix::io::Errno| Errno(e.raw_os_error());
    let flags = if cloexec {
        SocketFlags::CLOEXEC
    } else {
        SocketFlags::empty()
    };
    let sock = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, flags, None)
        .map_err(err)?;
    // The O_PATH fd's magic link reaches the socket whatever the path's length.
    let path = format!("/proc/self/fd/{}", node.as_raw_fd());
    rustix::net::connect(&sock, &SocketAddrUnix::new(path.as_str()).map_err(err)?).map_err(err)?;
    // Room for the largest inline payload kdbus allows in one datagram.
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(
        &sock,
        kdbus_abi::wire::MAX_REQUEST_DATAGRAM + 4096,
    );
    Ok(sock)
}
