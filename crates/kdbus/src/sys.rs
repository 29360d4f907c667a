//! The client's unsafe shell: the read-only mapping of the receive pool.

use rustix::fd::AsFd;
use rustix::mm::{MapFlags, ProtFlags};

/// The pool, mapped read-only and shared. The broker writes a slice before announcing
/// it and never again until we free it, so a slice we were handed is stable for as long
/// as we hold it.
pub struct PoolMap {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only for this process and lives as long as the value;
// sharing `&PoolMap` across threads only ever produces shared reads.
unsafe impl Send for PoolMap {}
// SAFETY: see `Send`: no interior mutability on our side.
unsafe impl Sync for PoolMap {}

impl PoolMap {
    pub fn map(fd: impl AsFd, len: usize) -> std::io::Result<Self> {
        Self::map_with(fd, len, MapFlags::SHARED)
    }

    /// [`PoolMap::map`], with every page mapped at once (`MAP_POPULATE`): for data that
    /// will be read whole, one call instead of a fault per page.
    pub fn map_populated(fd: impl AsFd, len: usize) -> std::io::Result<Self> {
        Self::map_with(fd, len, MapFlags::SHARED | MapFlags::POPULATE)
    }

    fn map_with(fd: impl AsFd, len: usize, flags: MapFlags) -> std::io::Result<Self> {
        // SAFETY: a fresh mapping at a kernel-chosen address; nothing aliases it yet.
        let ptr =
            unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ, flags, fd, 0)? };
        Ok(PoolMap {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The bytes at `offset..offset+len`, if inside the pool.
    pub fn slice(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let off = usize::try_from(offset).ok()?;
        let len = usize::try_from(len).ok()?;
        if off.checked_add(len)? > self.len {
            return None;
        }
        // SAFETY: the range is inside our live mapping (checked above) and the returned
        // slice borrows `self`, so it cannot outlive the mapping. The broker does not
        // write to slices it handed over (see the type's comment).
        Some(unsafe { std::slice::from_raw_parts(self.ptr.add(off), len) })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Base address, for tests that poke at the mapping's protection.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
}

impl Drop for PoolMap {
    fn drop(&mut self) {
        // SAFETY: exactly the range mmap gave us; borrows of it end with `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr as *mut _, self.len) };
    }
}

/// Register `fd` with tokio's reactor for readability (the async API's `Tokio`).
#[cfg(feature = "tokio")]
pub(crate) fn tokio_register(
    fd: rustix::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<rustix::fd::OwnedFd>> {
    // SAFETY: an `OwnedFd` is a valid open descriptor, and the `AsyncFd` owns it from
    // here on: nobody else can close it or make its number name another file while
    // it is registered, and its `as_raw_fd` always returns that one number.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}
