//! Receive pools as memfds, and what the fds clients pass are.
//!
//! A kdbus pool is memory the kernel writes and the receiver only reads. Here it is a
//! sealed memfd: the broker maps it writable before sealing, the client gets a
//! read-only reopen. The seals are what make the promise hold against a hostile
//! client, so the same seal reading tells the domain whether a memfd a client passes
//! is sealed (kdbus accepts only sealed memfds as payload).

use crate::sys::MappedPool;
use rustix::fd::OwnedFd;
use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};

/// Create a receive pool: a sealed memfd the broker maps writable, and a read-only fd
/// of it for the client. After the seals, no one can make a new writable mapping,
/// write(2) to it, or resize it; the client's fd is read-only besides.
pub(crate) fn pool_create(size: u64) -> std::io::Result<(MappedPool, OwnedFd)> {
    let fd = rustix::fs::memfd_create(
        "kdbus-pool",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&fd, size)?;
    let mem = MappedPool::map(&fd, size as usize)?;
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::FUTURE_WRITE | SealFlags::SEAL,
    )?;
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let ro = rustix::fs::open(
        path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok((mem, ro))
}

/// Tells the domain what a passed fd is, from its seals, type and socket family.
pub(crate) struct SystemFiles;

impl kdbus_core::FdInspector for SystemFiles {
    fn inspect(&self, fd: rustix::fd::BorrowedFd<'_>) -> kdbus_core::FdKind {
        use kdbus_core::FdKind;
        // Only shmem files (memfds) have seals.
        if let Ok(seals) = rustix::fs::fcntl_get_seals(fd) {
            let size = rustix::fs::fstat(fd).map_or(0, |st| st.st_size as u64);
            return FdKind::Memfd {
                seals: seals.bits(),
                size,
            };
        }
        let is_path =
            rustix::fs::fcntl_getfl(fd).is_ok_and(|f| f.contains(rustix::fs::OFlags::PATH));
        if !is_path
            && rustix::net::sockopt::socket_domain(fd)
                .is_ok_and(|d| d == rustix::net::AddressFamily::UNIX)
        {
            return FdKind::UnixSocket;
        }
        FdKind::Other
    }
}
