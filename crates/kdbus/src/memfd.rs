//! Memfd payloads: data the bus passes as a file, never copying it.
//!
//! A sender puts its data in a memfd and seals it against writing, growing and
//! shrinking ([`memfd_sealed`]); the message carries the file ([`Message::memfd`]),
//! however large, and the receiver maps it read-only ([`Received::memfds`]). The
//! seals are what make that safe: no one, the sender included, can change the bytes
//! after the receiver has looked at them.
//!
//! [`Message::memfd`]: crate::Message::memfd
//! [`Received::memfds`]: crate::Received::memfds

use crate::sys::PoolMap;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::SealFlags;

/// A memfd holding `data`, sealed as the bus requires (`SEAL`, `SHRINK`, `GROW`,
/// `WRITE`).
pub fn memfd_sealed(data: &[u8]) -> std::io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(
        "kdbus-payload",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )?;
    let mut done = 0;
    while done < data.len() {
        done += rustix::io::write(&fd, &data[done..])?;
    }
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )?;
    Ok(fd)
}

/// A received memfd payload, mapped read-only: its bytes are the slice.
pub struct MemfdView {
    map: PoolMap,
    start: usize,
    size: usize,
}

impl MemfdView {
    /// Map `size` bytes of `fd` from `start`.
    pub fn map(fd: impl AsFd, start: u64, size: u64) -> std::io::Result<MemfdView> {
        let bad = || std::io::Error::from(std::io::ErrorKind::InvalidData);
        let start = usize::try_from(start).map_err(|_| bad())?;
        let size = usize::try_from(size).map_err(|_| bad())?;
        let end = start.checked_add(size).ok_or_else(bad)?;
        // An empty mapping is not a mapping: map a page and show nothing of it. The
        // pages are mapped at once: a payload is there to be read.
        let map = PoolMap::map_populated(fd, end.max(1))?;
        Ok(MemfdView { map, start, size })
    }
}

impl std::ops::Deref for MemfdView {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map
            .slice(self.start as u64, self.size as u64)
            .unwrap_or(&[])
    }
}
