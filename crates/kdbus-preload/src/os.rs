//! The primitives the safe modules need from the system, with the `unsafe` they take:
//! borrowing fd numbers a caller named, a socket we may have to give up without
//! closing, the signal dispositions, fork counting. The interposed symbols
//! themselves are in `sys`.

use kdbus_abi::Errno;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

// ---------------------------------------------------------------- fds

/// Borrow an fd number the caller handed us (an `FDS` item, a `CANCEL_FD`) for the
/// duration of one call.
pub fn borrow_fd(fd: RawFd) -> BorrowedFd<'static> {
    // A BorrowedFd may not hold -1; a negative number is as good as a closed one.
    let fd = if fd < 0 { i32::MAX } else { fd };
    // SAFETY: used only within the ioctl that named it, during which the caller
    // keeps it open (kdbus took its own reference likewise). A number that is not
    // open makes the syscall using it fail with EBADF, as kdbus did.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

pub fn raw(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}

/// A handle's socket, which we may have to give up without closing: when the caller
/// closed its number behind our back (`dup2` onto it, `close_range`), the number names
/// another file by the time the handle goes.
pub struct Socket {
    fd: std::mem::ManuallyDrop<OwnedFd>,
    disowned: AtomicBool,
}

impl Socket {
    pub fn new(fd: OwnedFd) -> Socket {
        Socket {
            fd: std::mem::ManuallyDrop::new(fd),
            disowned: AtomicBool::new(false),
        }
    }

    pub fn disown(&self) {
        self.disowned.store(true, Ordering::Relaxed);
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: `fd` is not used after this; ManuallyDrop only defers the choice
        // between closing it and forgetting it.
        let fd = unsafe { std::mem::ManuallyDrop::take(&mut self.fd) };
        if self.disowned.load(Ordering::Relaxed) {
            let _ = fd.into_raw_fd();
        }
    }
}

/// Send one datagram with the caller's fd numbers `fds` attached.
pub fn send_datagram(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> Result<(), Errno> {
    if fds.iter().any(|&f| f < 0) {
        return Err(Errno::EBADF);
    }
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|&f| borrow_fd(f)).collect();
    kdbus::transport::send_datagram(sock, bytes, &borrowed)
}

// ---------------------------------------------------------------- signals

/// Would the kernel have restarted a syscall that a signal just interrupted? Yes if
/// every signal that has a handler asks for restarts (`SA_RESTART`). Faults
/// (SIGSEGV, SIGBUS, SIGILL, SIGFPE) are delivered to the faulting instruction, never
/// to a blocked syscall, so their handlers do not count.
pub fn signals_restart() -> bool {
    let faults = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE];
    (1..=libc::SIGRTMAX())
        .filter(|s| !faults.contains(s))
        .all(|sig| {
            let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
            // SAFETY: reads the disposition of `sig` into our own zeroed struct.
            let r = unsafe { libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) };
            if r != 0 {
                return true;
            }
            // SAFETY: sigaction filled it in (or it stayed zeroed, a valid value).
            let old = unsafe { old.assume_init() };
            let handled = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
            !handled || old.sa_flags & libc::SA_RESTART != 0
        })
}

// ---------------------------------------------------------------- fork

/// How many times this process forked (or was forked into) since we watch.
static FORK_GEN: AtomicU64 = AtomicU64::new(0);

extern "C" fn after_fork() {
    FORK_GEN.fetch_add(1, Ordering::Relaxed);
}

pub fn fork_generation() -> u64 {
    FORK_GEN.load(Ordering::Relaxed)
}

/// From the first handle on, count forks (in parent and child): a handle older than
/// the last fork may be held by another process.
pub fn watch_forks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain function that only bumps an atomic (safe in a
        // fork handler); it lives as long as the library, never unloaded while the
        // process runs.
        unsafe {
            libc::pthread_atfork(None, Some(after_fork), Some(after_fork));
        }
    });
}
