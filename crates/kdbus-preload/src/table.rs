//! Which fds are kdbus handles.
//!
//! A process-wide map from fd number to handle. Every interposed call on an fd asks it
//! first, so the common case, a process with no kdbus handle open, costs one atomic
//! load. Handles are shared (`Arc`): a thread blocked in an ioctl keeps its handle
//! alive while another closes the fd, as the kernel kept a file alive for a syscall
//! in progress.

use crate::handle::Handle;
use kdbus_abi::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

static TABLE: Mutex<Option<HashMap<RawFd, Arc<Handle>>>> = Mutex::new(None);
static COUNT: AtomicUsize = AtomicUsize::new(0);

fn lock() -> MutexGuard<'static, Option<HashMap<RawFd, Arc<Handle>>>> {
    TABLE.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn is_empty() -> bool {
    COUNT.load(Ordering::Acquire) == 0
}

pub fn get(fd: RawFd) -> Option<Arc<Handle>> {
    if is_empty() || fd < 0 {
        return None;
    }
    lock().as_ref()?.get(&fd).cloned()
}

/// Every handle open now may also be held by another process (after fork()).
pub fn mark_all_shared() {
    // A fork handler must not wait: if another thread held the table, leave it.
    if let Ok(t) = TABLE.try_lock() {
        for h in t.iter().flat_map(|m| m.values()) {
            h.mark_shared();
        }
    }
}

pub fn insert(fd: RawFd, h: Arc<Handle>) {
    crate::sys::watch_forks();
    let old = {
        let mut t = lock();
        let old = t.get_or_insert_with(HashMap::new).insert(fd, h);
        COUNT.store(t.as_ref().map_or(0, HashMap::len), Ordering::Release);
        old
    };
    // A stale entry for a reused number: its socket is long gone.
    if let Some(old) = old.and_then(|o| Arc::try_unwrap(o).ok()) {
        old.disown();
    }
}

/// Take `fd` out of the table (the caller closes it).
pub fn remove(fd: RawFd) -> Option<Arc<Handle>> {
    if is_empty() {
        return None;
    }
    let mut t = lock();
    let h = t.as_mut()?.remove(&fd);
    COUNT.store(t.as_ref().map_or(0, HashMap::len), Ordering::Release);
    h
}

/// `fd` was just returned by something else (a plain open): if we still had it, the
/// caller closed our socket in a way we did not see; forget it without closing.
pub fn forget(fd: RawFd) {
    if let Some(h) = remove(fd) {
        if let Ok(h) = Arc::try_unwrap(h) {
            h.disown();
        }
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
