//! What the fds a sender passes are, as far as the bus cares.
//!
//! kdbus looked at every file a message carried: a sealed memfd may be a payload
//! (zero copy: the receiver gets the same file), and a file that can itself carry fds
//! (a kdbus handle, a unix socket) may not travel at all, because a message holding
//! the socket it was queued on would keep that connection alive forever. The core
//! makes those decisions; what a file *is* takes a syscall, so the broker answers
//! through [`FdInspector`], and tests answer with whatever they like.

//!
//! Every descriptor a message carries is also one of the broker's, and the broker has
//! a fixed number of them: one user who made it hold them all (fds sent to receivers
//! that never read) would make it refuse everyone. So a message's descriptors are
//! charged to its sender through an [`FdLedger`] when the domain takes the message,
//! and the [`FdSlip`] that travels with them gives them back when the broker lets go
//! of the last reference (received, dropped, or the connection gone), whatever the
//! path.

use kdbus_abi::Errno;
use std::os::fd::BorrowedFd;
use std::rc::Rc;

/// Books of the descriptors users make the broker hold.
pub trait FdLedger {
    /// Charge `n` descriptors to `uid`; false if it may not hold that many more.
    fn charge(&self, uid: u32, privileged: bool, n: usize) -> bool;
    /// Give back what `charge` took.
    fn refund(&self, uid: u32, n: usize);
}

/// Descriptors charged to a user; refunded when dropped.
pub struct FdSlip {
    ledger: Rc<dyn FdLedger>,
    uid: u32,
    n: usize,
}

impl FdSlip {
    /// Charge `n` descriptors to `uid` in `ledger`, or `None` if refused.
    pub fn take(ledger: &Rc<dyn FdLedger>, uid: u32, privileged: bool, n: usize) -> Option<FdSlip> {
        ledger.charge(uid, privileged, n).then(|| FdSlip {
            ledger: ledger.clone(),
            uid,
            n,
        })
    }
}

impl Drop for FdSlip {
    fn drop(&mut self) {
        self.ledger.refund(self.uid, self.n);
    }
}

/// What an fd is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// A memfd (shmem file) with these `F_SEAL_*` seals and this size.
    Memfd {
        /// The `F_SEAL_*` bits set on it.
        seals: u32,
        /// The file's size in bytes, which a payload range must lie within.
        size: u64,
    },
    /// A unix domain socket (not an `O_PATH` fd of one): could carry fds itself.
    UnixSocket,
    /// Anything else: may travel in an `FDS` item, never as a payload.
    Other,
}

/// Tells the core what a passed fd is (`fcntl`/`fstat` in the broker).
pub trait FdInspector {
    /// What `fd` is (`Other` when it cannot tell).
    fn inspect(&self, fd: BorrowedFd<'_>) -> FdKind;
}

/// Knows nothing: every fd is `Other` (so memfd payloads are refused).
pub struct NoInspector;

impl FdInspector for NoInspector {
    fn inspect(&self, _: BorrowedFd<'_>) -> FdKind {
        FdKind::Other
    }
}

/// `F_SEAL_*` values (`fcntl.h`).
pub const SEAL_SEAL: u32 = 0x1;
/// The file may not shrink.
pub const SEAL_SHRINK: u32 = 0x2;
/// The file may not grow.
pub const SEAL_GROW: u32 = 0x4;
/// The file's contents may not change.
pub const SEAL_WRITE: u32 = 0x8;

/// May a file of `kind` carry `size` bytes from `start` as a payload? kdbus HEAD's
/// rules: only a memfd (EMEDIUMTYPE), sealed against every change (ETXTBSY), holding
/// the range (EBADF).
pub fn memfd_check(kind: FdKind, start: u64, size: u64) -> Result<(), Errno> {
    let FdKind::Memfd {
        seals,
        size: file_size,
    } = kind
    else {
        return Err(Errno::EMEDIUMTYPE);
    };
    let need = SEAL_SEAL | SEAL_SHRINK | SEAL_GROW | SEAL_WRITE;
    if seals & need != need {
        return Err(Errno::ETXTBSY);
    }
    if start.saturating_add(size) > file_size {
        return Err(Errno::EBADF);
    }
    Ok(())
}

/// May a file of `kind` travel in an `FDS` item? Not one that can carry fds itself
/// (EOPNOTSUPP).
pub fn fd_check(kind: FdKind) -> Result<(), Errno> {
    match kind {
        FdKind::UnixSocket => Err(Errno::EOPNOTSUPP),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_rules() {
        let sealed = SEAL_SEAL | SEAL_SHRINK | SEAL_GROW | SEAL_WRITE;
        let m = |seals, size| FdKind::Memfd { seals, size };
        assert_eq!(memfd_check(FdKind::Other, 0, 1), Err(Errno::EMEDIUMTYPE));
        assert_eq!(
            memfd_check(m(SEAL_SHRINK | SEAL_GROW, 8), 0, 1),
            Err(Errno::ETXTBSY)
        );
        assert_eq!(memfd_check(m(sealed, 8), 4, 8), Err(Errno::EBADF));
        assert_eq!(memfd_check(m(sealed, 8), 0, 8), Ok(()));
        assert_eq!(fd_check(FdKind::UnixSocket), Err(Errno::EOPNOTSUPP));
        assert_eq!(fd_check(m(0, 0)), Ok(()));
    }
}
