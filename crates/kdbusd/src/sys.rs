//! The broker's unsafe shell: shared memory mappings, signal plumbing, the one socket
//! option rustix does not wrap, and the child setup of `--fork`.
//!
//! Everything else in the broker is safe Rust on top of rustix; what needs raw pointers
//! or process-wide signal state lives here, small enough to audit at a glance.

use kdbus_core::PoolMemory;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use rustix::mm::{MapFlags, ProtFlags};
use std::io;

/// A writable shared mapping of a connection's pool memfd. The broker is the only
/// writer: the memfd carries `F_SEAL_FUTURE_WRITE`, which lets this (earlier) mapping
/// write and denies every later writable mapping, including the client's.
pub struct MappedPool {
    /// Start of the mapping, as mmap returned it.
    ptr: *mut u8,
    /// Length of the mapping (the memfd's size).
    len: usize,
}

impl MappedPool {
    pub fn map(fd: impl AsFd, len: usize) -> io::Result<Self> {
        // SAFETY: we ask the kernel for a fresh mapping (null hint) of `len` bytes of a
        // file we just sized to `len`; no existing Rust object aliases the new range.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        Ok(MappedPool {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl PoolMemory for MappedPool {
    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(off) = usize::try_from(offset) else {
            return;
        };
        if off >= self.len {
            return;
        }
        let n = data.len().min(self.len - off);
        // SAFETY: `off + n <= len`, so the destination lies inside our live mapping;
        // `data` is a Rust slice and cannot overlap the mapping, which no Rust reference
        // points into. The client may read concurrently, which is fine for plain bytes.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off), n) };
    }

    fn size(&self) -> u64 {
        self.len as u64
    }

    fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let off = usize::try_from(offset).ok()?;
        if off.checked_add(len)? > self.len {
            return None;
        }
        let mut v = vec![0; len];
        // SAFETY: the source range is inside our mapping (checked above), `v` is a
        // distinct heap buffer of `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), v.as_mut_ptr(), len) };
        Some(v)
    }
}

impl Drop for MappedPool {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and nothing borrows the
        // mapping beyond this object's lifetime.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

/// Block SIGINT, SIGTERM and SIGHUP for the process and return a signalfd that reports
/// them, so shutdown and reloading are just other events in the loop. Call before
/// spawning threads.
pub fn signals_fd() -> io::Result<OwnedFd> {
    // SAFETY: plain libc calls on a zeroed, locally owned sigset_t; the returned fd is
    // checked and then owned exactly once.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(<OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd))
    }
}

/// Give the heap's free memory back to the system (after a flood has gone, the
/// allocator keeps what it had unless asked).
pub fn trim_heap() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no
    // preconditions and touches no memory of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Ignore SIGPIPE: a client that vanished shows up as EPIPE on write, handled there.
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_IGN has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Write all of `bytes` to a raw file descriptor this process was handed on its command
/// line (dbus-daemon's `--print-address=FD`).
pub fn write_raw_fd(fd: i32, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: the fd number comes from our caller, who was told it is open; we only
    // borrow it for the duration of the write and never close it.
    let fd = unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) };
    let mut done = 0;
    while done < bytes.len() {
        match rustix::io::write(fd, &bytes[done..]) {
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Close an fd number our caller was handed and is done with (`--print-address=FD`:
/// whoever reads the address waits for end-of-file, as from dbus-daemon).
pub fn close_raw_fd(fd: i32) {
    if fd > 2 {
        // SAFETY: the fd number comes from our command line, nothing in this process
        // owns it, and it is closed once (the caller passes each number once).
        drop(unsafe { <OwnedFd as FromRawFd>::from_raw_fd(fd) });
    }
}

/// Point stdin, stdout and stderr at /dev/null (a forked daemon, after it printed what
/// it had to print), so whoever started us sees end-of-file.
pub fn detach_stdio() -> io::Result<()> {
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    for target in 0..3 {
        // SAFETY: fds 0-2 are the process's standard streams; replacing them with
        // /dev/null (dup2 closes the old ones atomically) leaves no dangling owner, as
        // std only ever borrows them by number.
        let r = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), target) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd of the process that connected a unix socket.
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_PEERPIDFD: libc::c_int = 77;
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_PEERPIDFD: libc::c_int = 0x56;

/// A pidfd of the process at the other end of `sock`, as the kernel recorded it at
/// connect: `Ok(None)` where the kernel has no `SO_PEERPIDFD`, `Err(())` when that
/// process has been reaped already (its pid may be another's by now).
#[allow(clippy::result_unit_err)]
pub fn peer_pidfd(sock: BorrowedFd<'_>) -> Result<Option<OwnedFd>, ()> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the local `fd`, and `len`
    // is its size.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        // EINVAL: the peer's pid has no process any more; anything else (ENOPROTOOPT
        // before Linux 6.5): no pidfd to be had.
        let gone = io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL);
        return if gone { Err(()) } else { Ok(None) };
    }
    if fd < 0 || len as usize != std::mem::size_of::<libc::c_int>() {
        return Ok(None);
    }
    // SAFETY: on success the kernel installed a new descriptor (close-on-exec)
    // that nothing else owns.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Whether SIGINT or SIGTERM is pending (blocked, not yet read). A safety net for
/// environments where the signalfd's epoll wake-up does not arrive.
pub fn shutdown_pending() -> bool {
    // SAFETY: sigpending fills a zeroed, locally owned sigset_t; sigismember only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        if libc::sigpending(&mut set) != 0 {
            return false;
        }
        libc::sigismember(&set, libc::SIGTERM) == 1 || libc::sigismember(&set, libc::SIGINT) == 1
    }
}

/// Set up `cmd` so that its child (`--fork`'s background broker) starts a session of its
/// own, away from our terminal, and inherits fd `keep` (the pipe it reports readiness
/// on) across exec.
pub fn detach_child(cmd: &mut std::process::Command, keep: i32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec: setsid, and fcntl to
    // let the pipe's write end survive exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            let flags = libc::fcntl(keep, libc::F_GETFD);
            libc::fcntl(keep, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        });
    }
}

/// The listening sockets systemd passed this process (`LISTEN_FDS`, `LISTEN_PID`),
/// made non-blocking; none if it passed none.
pub(crate) fn systemd_listeners() -> std::io::Result<Vec<OwnedFd>> {
    let mut out = Vec::new();
    for raw in sd_notify::listen_fds()? {
        // SAFETY: systemd hands these descriptors to this process (LISTEN_PID is ours,
        // checked by `listen_fds`) and nothing else in it owns them: they are taken once,
        // here, at start-up.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        rustix::fs::fcntl_setfl(&fd, rustix::fs::OFlags::NONBLOCK)?;
        out.push(fd);
    }
    Ok(out)
}

/// A user's uid and primary gid, from the system's user database (NSS, as
/// dbus-daemon resolves `<user>` and a service's `User=`).
pub fn user_lookup(name: &str) -> Option<(u32, u32)> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 << 10];
    // SAFETY: a zeroed passwd is a valid "empty" value; getpwnam_r fills it with
    // pointers into `buf`, which outlives every read of them (only the two ids are
    // read, by value, before `buf` is dropped).
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let r = libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        );
        (r == 0 && !out.is_null()).then_some((pw.pw_uid, pw.pw_gid))
    }
}

/// Become `uid`/`gid` for good: no supplementary groups, and real, effective and saved
/// ids all changed, so that nothing can be taken back (dbus-daemon's `<user>`). Checked
/// afterwards: an error if root is still within reach.
pub fn drop_privileges(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: setgroups reads zero entries from a null list; setgid and setuid take
    // plain integers. glibc applies each to every thread of the process.
    let r = unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            -1
        } else {
            0
        }
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let (ruid, euid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::geteuid().as_raw(),
    );
    if ruid != uid || euid != uid || (uid != 0 && rustix::process::getgid().as_raw() != gid) {
        return Err(io::Error::other("the ids did not change"));
    }
    Ok(())
}

/// The groups `user` (primary group `gid`) belongs to, as `initgroups` would set them.
pub fn user_groups(user: &str, gid: u32) -> Vec<u32> {
    let Ok(cname) = std::ffi::CString::new(user) else {
        return vec![gid];
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let asked = n;
        // SAFETY: `groups` has room for `n` entries; getgrouplist writes at most that
        // many and sets `n` to the number it has (or needs).
        let r = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            groups.truncate(n.max(0) as usize);
            return groups;
        }
        if n <= asked {
            n = asked.saturating_mul(2);
        }
        if n > 65536 {
            return vec![gid];
        }
    }
}

/// Make `cmd`'s child become `uid`/`gid` with `groups` before it runs its program (a
/// system bus service's `User=`, started by the root launcher).
pub fn command_as_user(cmd: &mut std::process::Command, uid: u32, gid: u32, groups: Vec<u32>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only async-signal-safe system calls run (setgroups,
    // setgid, setuid), on memory the closure owns; an error stops the exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Open the system log as `kdbusd` (the C library's syslog, which finds `/dev/log`).
pub fn syslog_open() {
    static IDENT: &std::ffi::CStr = c"kdbusd";
    // SAFETY: IDENT is a static NUL-terminated string, which openlog keeps a pointer
    // to for the life of the process.
    unsafe {
        libc::openlog(
            IDENT.as_ptr(),
            libc::LOG_PID | libc::LOG_NDELAY,
            libc::LOG_DAEMON,
        )
    }
}

/// One line to the system log at `priority` (`LOG_ERR` ... `LOG_DEBUG`).
pub fn syslog_line(priority: libc::c_int, line: &[u8]) {
    let text: Vec<u8> = line.iter().copied().filter(|&b| b != 0).collect();
    let Ok(text) = std::ffi::CString::new(text) else {
        return;
    };
    // SAFETY: the format is a static "%s" and its one argument a NUL-terminated
    // string that lives across the call.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), text.as_ptr()) }
}

/// Whether the process behind `pidfd` has not been reaped (alive, or a zombie): while
/// it has not, its pid cannot belong to another process.
pub fn pidfd_alive(pidfd: BorrowedFd<'_>) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 only checks that the process exists and
    // may be signalled; it reads no memory of ours (a null info pointer is allowed).
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    // EPERM: it exists, we may just not signal it.
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
