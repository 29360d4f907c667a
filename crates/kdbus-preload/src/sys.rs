//! The unsafe shell: the libc symbols we interpose, the real ones behind them, the
//! caller's memory, and raw fds.
//!
//! Every exported function first asks the fd table whether the fd (or path) is one of
//! ours; if not, it calls the next definition of the symbol (`dlsym(RTLD_NEXT)`) with
//! the arguments untouched, so a process that never opens a kdbus node behaves exactly
//! as without us. Our own I/O goes through rustix's raw syscalls, never through the
//! symbols we interpose, so nothing here re-enters itself, except `close` of an fd
//! we own, which finds the table without it.
//!
//! `ioctl`, `open` and `openat` are variadic in C. We define them with the extra
//! argument as a plain parameter: on the Linux ABIs we build for (x86_64, aarch64,
//! and the other LP64 ones), a variadic integer or pointer argument is passed exactly
//! where a fixed one would be, and a callee that ignores it loses nothing.

use crate::handle::{Handle, Role};
use crate::table;
use crate::translate::{ioctl_command, UserMem};
use kdbus_abi::Errno;
use libc::{
    c_char, c_int, c_ulong, c_void, mode_t, nfds_t, off_t, pollfd, sigset_t, size_t, timespec,
};
use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- real symbols

/// The next definition of a symbol, looked up once.
struct Real {
    name: &'static CStr,
    addr: AtomicUsize,
}

impl Real {
    const fn new(name: &'static CStr) -> Self {
        Real {
            name,
            addr: AtomicUsize::new(0),
        }
    }

    fn get(&self) -> usize {
        let a = self.addr.load(Ordering::Relaxed);
        if a != 0 {
            return a;
        }
        // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT finds the definition
        // after ours (libc's), which stays loaded for the life of the process.
        let a = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) } as usize;
        if a == 0 {
            // Without libc's own definition nothing can work; fail loudly.
            std::process::abort();
        }
        self.addr.store(a, Ordering::Relaxed);
        a
    }
}

static REAL_OPEN: Real = Real::new(c"open");
static REAL_OPEN64: Real = Real::new(c"open64");
static REAL_OPENAT: Real = Real::new(c"openat");
static REAL_OPENAT64: Real = Real::new(c"openat64");
static REAL_IOCTL: Real = Real::new(c"ioctl");
static REAL_MMAP: Real = Real::new(c"mmap");
static REAL_MMAP64: Real = Real::new(c"mmap64");
static REAL_POLL: Real = Real::new(c"poll");
static REAL_PPOLL: Real = Real::new(c"ppoll");
static REAL_CLOSE: Real = Real::new(c"close");

// libc's open, openat and ioctl are variadic, and are called as such.
type OpenFn = unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int;
type OpenatFn = unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int;
type IoctlFn = unsafe extern "C" fn(c_int, c_ulong, ...) -> c_int;
type MmapFn = unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void;
type PollFn = unsafe extern "C" fn(*mut pollfd, nfds_t, c_int) -> c_int;
type PpollFn = unsafe extern "C" fn(*mut pollfd, nfds_t, *const timespec, *const sigset_t) -> c_int;
type CloseFn = unsafe extern "C" fn(c_int) -> c_int;

macro_rules! real {
    ($sym:ident as $t:ty) => {
        // SAFETY: the address is libc's definition of this very symbol, whose C type
        // is `$t`.
        unsafe { std::mem::transmute::<usize, $t>($sym.get()) }
    };
}

fn set_errno(e: Errno) {
    // SAFETY: errno is thread-local; writing it is what every libc function does.
    unsafe { *libc::__errno_location() = e.0 };
}

fn errno() -> i32 {
    // SAFETY: reading this thread's errno.
    unsafe { *libc::__errno_location() }
}

// ---------------------------------------------------------------- caller memory

/// This process's memory, reached with `process_vm_readv`/`writev` on ourselves: a
/// bad address is EFAULT, as it was for kdbus, instead of a crash.
pub struct OwnMemory;

impl UserMem for OwnMemory {
    fn read_into(&self, addr: u64, len: usize, out: &mut Vec<u8>) -> Result<(), Errno> {
        if len == 0 {
            return Ok(());
        }
        let at = out.len();
        out.resize(at + len, 0);
        let local = libc::iovec {
            iov_base: out[at..].as_mut_ptr().cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: addr as usize as *mut c_void,
            iov_len: len,
        };
        // SAFETY: `local` is our own buffer of `len` bytes; the kernel checks
        // `remote` against our address space and fails with EFAULT if it is not
        // readable.
        let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        if n != len as isize {
            out.truncate(at);
            return Err(Errno::EFAULT);
        }
        Ok(())
    }

    fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), Errno> {
        let local = libc::iovec {
            iov_base: bytes.as_ptr() as *mut c_void,
            iov_len: bytes.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as usize as *mut c_void,
            iov_len: bytes.len(),
        };
        // SAFETY: the kernel only reads `local` and checks `remote` for writability.
        let n = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
        if n != bytes.len() as isize {
            return Err(Errno::EFAULT);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- open

/// After a real open failed with ENXIO (the cue for a socket node): connect to it if
/// it is a kdbus node.
fn open_node(dirfd: c_int, path: *const c_char, flags: c_int) -> Result<RawFd, Errno> {
    if path.is_null() {
        return Err(Errno::ENXIO);
    }
    // SAFETY: a NUL-terminated string the caller passed to open().
    let p = unsafe { CStr::from_ptr(path) };
    let bytes = p.to_bytes();
    if let Some(root) = std::env::var_os("KDBUS_ROOT") {
        use std::os::unix::ffi::OsStrExt;
        // Absolute paths only (a relative one is taken on the socket's word), and
        // whole components: /run/kdbus2 is not under /run/kdbus.
        let root = root
            .as_bytes()
            .strip_suffix(b"/")
            .unwrap_or(root.as_bytes());
        let under = bytes
            .strip_prefix(root)
            .is_some_and(|rest| rest.first() == Some(&b'/'));
        if bytes.first() == Some(&b'/') && !under {
            return Err(Errno::ENXIO);
        }
    }
    let role = if bytes.rsplit(|&b| b == b'/').next() == Some(&b"control"[..]) {
        Role::Control
    } else {
        Role::Endpoint
    };
    let openat: OpenatFn = real!(REAL_OPENAT as OpenatFn);
    // SAFETY: libc's openat with the caller's path; O_PATH opens without touching
    // the socket.
    let pfd = unsafe { openat(dirfd, path, libc::O_PATH | libc::O_CLOEXEC, 0) };
    if pfd < 0 {
        return Err(Errno(errno()));
    }
    // SAFETY: we just opened it and own it.
    let pfd = unsafe { OwnedFd::from_raw_fd(pfd) };
    let st = rustix::fs::fstat(&pfd).map_err(|e| Errno(e.raw_os_error()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
        return Err(Errno::ENXIO);
    }
    let sock = table::connect_node(&pfd, flags & libc::O_CLOEXEC != 0)?;
    let fd = sock.as_raw_fd();
    table::insert(fd, Arc::new(Handle::new(sock, role)));
    Ok(fd)
}

fn open_common(dirfd: c_int, path: *const c_char, flags: c_int, fd: c_int) -> c_int {
    if fd >= 0 {
        table::forget(fd);
        return fd;
    }
    let e = errno();
    if e != libc::ENXIO {
        return fd;
    }
    match open_node(dirfd, path, flags) {
        Ok(fd) => fd,
        Err(err) => {
            set_errno(
                if err.0 == libc::EPROTOTYPE || err.0 == libc::ECONNREFUSED {
                    Errno::ENXIO
                } else {
                    err
                },
            );
            -1
        }
    }
}

/// `open`/`open64` and `openat`/`openat64`: libc's, then ours if it said ENXIO.
macro_rules! open_symbols {
    ($($name:ident => $real:ident;)*) => {$(
        /// # Safety
        /// As open(2).
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
            let f: OpenFn = real!($real as OpenFn);
            // SAFETY: forwarding the caller's arguments to libc.
            let fd = unsafe { f(path, flags, mode) };
            open_common(libc::AT_FDCWD, path, flags, fd)
        }
    )*};
}

macro_rules! openat_symbols {
    ($($name:ident => $real:ident;)*) => {$(
        /// # Safety
        /// As openat(2).
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dirfd: c_int,
            path: *const c_char,
            flags: c_int,
            mode: mode_t,
        ) -> c_int {
            let f: OpenatFn = real!($real as OpenatFn);
            // SAFETY: forwarding the caller's arguments to libc.
            let fd = unsafe { f(dirfd, path, flags, mode) };
            open_common(dirfd, path, flags, fd)
        }
    )*};
}

open_symbols! {
    open => REAL_OPEN;
    open64 => REAL_OPEN64;
}

openat_symbols! {
    openat => REAL_OPENAT;
    openat64 => REAL_OPENAT64;
}

/// # Safety
/// As glibc's fortified openat (no mode).
#[no_mangle]
pub unsafe extern "C" fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: as openat without O_CREAT.
    unsafe { openat(dirfd, path, flags, 0) }
}

/// # Safety
/// As glibc's fortified openat64 (no mode).
#[no_mangle]
pub unsafe extern "C" fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: as openat64 without O_CREAT.
    unsafe { openat64(dirfd, path, flags, 0) }
}

/// # Safety
/// As glibc's fortified open (no mode).
#[no_mangle]
pub unsafe extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: as open without O_CREAT.
    unsafe { open(path, flags, 0) }
}

/// # Safety
/// As glibc's fortified open64 (no mode).
#[no_mangle]
pub unsafe extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    // SAFETY: as open64 without O_CREAT.
    unsafe { open64(path, flags, 0) }
}

// ---------------------------------------------------------------- ioctl, mmap, close

/// # Safety
/// As ioctl(2).
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: *mut c_void) -> c_int {
    let real = || {
        let f: IoctlFn = real!(REAL_IOCTL as IoctlFn);
        // SAFETY: forwarding the caller's arguments to libc.
        unsafe { f(fd, request, arg) }
    };
    let Some(h) = table::get(fd) else {
        return real();
    };
    // What the kernel answered for any file (close-on-exec, non-blocking, async)
    // it answers for our socket alike.
    let generic = [libc::FIOCLEX, libc::FIONCLEX, libc::FIONBIO, libc::FIOASYNC];
    if generic.iter().any(|&g| g as c_ulong == request) {
        return real();
    }
    let Some(c) = ioctl_command(request) else {
        set_errno(Errno::ENOTTY);
        return -1;
    };
    match h.ioctl(c, &mut OwnMemory, arg as usize as u64) {
        Ok(()) => 0,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

fn mmap_common(
    f: MmapFn,
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    // The handle (and so its pool fd) stays alive until the mapping is made.
    let handle = table::get(fd);
    let fd = match &handle {
        None => fd,
        Some(h) => match h.mmap_target(len, prot) {
            Ok(pool) => pool,
            Err(e) => {
                set_errno(e);
                return libc::MAP_FAILED;
            }
        },
    };
    // SAFETY: the caller's mapping request, with our handle replaced by its pool
    // (kdbus did the same replacement in its mmap handler).
    unsafe { f(addr, len, prot, flags, fd, off) }
}

macro_rules! mmap_symbols {
    ($($name:ident => $real:ident;)*) => {$(
        /// # Safety
        /// As mmap(2).
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            addr: *mut c_void,
            len: size_t,
            prot: c_int,
            flags: c_int,
            fd: c_int,
            off: off_t,
        ) -> *mut c_void {
            mmap_common(real!($real as MmapFn), addr, len, prot, flags, fd, off)
        }
    )*};
}

mmap_symbols! {
    mmap => REAL_MMAP;
    mmap64 => REAL_MMAP64;
}

/// # Safety
/// As close(2).
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if let Some(h) = table::remove(fd) {
        h.release();
        // The socket closes when the last user of the handle lets go.
        drop(h);
        return 0;
    }
    let f: CloseFn = real!(REAL_CLOSE as CloseFn);
    // SAFETY: forwarding the caller's argument to libc.
    unsafe { f(fd) }
}

// ---------------------------------------------------------------- poll

/// poll/ppoll over a mix of our handles and other fds. Our handles report what kdbus
/// reported (POLLIN while a message or a loss waits, POLLOUT always, POLLERR|POLLHUP
/// when not a live connection); their sockets are polled for news from the broker.
fn poll_common(
    fds: &mut [pollfd],
    timeout: Option<Duration>,
    mut real: impl FnMut(&mut [pollfd], Option<Duration>) -> c_int,
) -> c_int {
    let ours: Vec<(usize, Arc<Handle>)> = fds
        .iter()
        .enumerate()
        .filter_map(|(i, p)| table::get(p.fd).map(|h| (i, h)))
        .collect();
    if ours.is_empty() {
        return real(fds, timeout);
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let wanted: Vec<i16> = ours.iter().map(|(i, _)| fds[*i].events).collect();
    loop {
        let synth: Vec<i16> = ours
            .iter()
            .zip(&wanted)
            .map(|((_, h), w)| h.revents() & (w | libc::POLLERR | libc::POLLHUP))
            .collect();
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let wait = if synth.iter().any(|&r| r != 0) {
            Some(Duration::ZERO)
        } else if ours.iter().any(|(_, h)| h.busy()) {
            // Another thread reads one of our sockets and files what it reads where
            // the socket does not show it: look again soon.
            let tick = Duration::from_millis(10);
            Some(left.map_or(tick, |l| l.min(tick)))
        } else {
            left
        };
        for (i, _) in &ours {
            fds[*i].events = libc::POLLIN;
        }
        let n = real(fds, wait);
        if n < 0 {
            // EINTR and friends go to the caller as they are.
            let e = errno();
            for ((i, _), w) in ours.iter().zip(&wanted) {
                fds[*i].events = *w;
            }
            set_errno(Errno(e));
            return n;
        }
        for (((i, h), w), before) in ours.iter().zip(&wanted).zip(&synth) {
            // The socket stirred: file what came, then say what kdbus would.
            let news = fds[*i].revents != 0;
            fds[*i].events = *w;
            fds[*i].revents = if news {
                h.revents() & (w | libc::POLLERR | libc::POLLHUP)
            } else {
                *before
            };
        }
        let ready = fds.iter().filter(|p| p.revents != 0).count() as c_int;
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        if ready > 0 || left.is_some_and(|l| l.is_zero()) || expired {
            return ready;
        }
    }
}

fn to_slice<'a>(fds: *mut pollfd, n: nfds_t) -> &'a mut [pollfd] {
    if fds.is_null() || n == 0 {
        return &mut [];
    }
    // SAFETY: the caller's array of `n` pollfds, as poll(2) requires; we use it only
    // for the duration of the call.
    unsafe { std::slice::from_raw_parts_mut(fds, n as usize) }
}

/// # Safety
/// As poll(2).
#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut pollfd, n: nfds_t, timeout_ms: c_int) -> c_int {
    let f: PollFn = real!(REAL_POLL as PollFn);
    if table::is_empty() {
        // SAFETY: forwarding the caller's arguments to libc.
        return unsafe { f(fds, n, timeout_ms) };
    }
    let timeout = (timeout_ms >= 0).then(|| Duration::from_millis(timeout_ms as u64));
    poll_common(to_slice(fds, n), timeout, |s, t| {
        let ms = t.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as c_int);
        let ms = if t.is_some_and(|t| !t.is_zero() && ms == 0) {
            1
        } else {
            ms
        };
        // SAFETY: the caller's array, with our entries' events adjusted.
        unsafe { f(s.as_mut_ptr(), s.len() as nfds_t, ms) }
    })
}

/// # Safety
/// As ppoll(2).
#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut pollfd,
    n: nfds_t,
    tmo: *const timespec,
    sigmask: *const sigset_t,
) -> c_int {
    let f: PpollFn = real!(REAL_PPOLL as PpollFn);
    if table::is_empty() {
        // SAFETY: forwarding the caller's arguments to libc.
        return unsafe { f(fds, n, tmo, sigmask) };
    }
    let timeout = if tmo.is_null() {
        None
    } else {
        // SAFETY: a timespec the caller passed.
        let t = unsafe { *tmo };
        Some(Duration::new(
            t.tv_sec.max(0) as u64,
            t.tv_nsec.clamp(0, 999_999_999) as u32,
        ))
    };
    poll_common(to_slice(fds, n), timeout, |s, t| {
        let ts = t.map(|t| timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let tp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const timespec);
        // SAFETY: the caller's array and signal mask, our own timespec.
        unsafe { f(s.as_mut_ptr(), s.len() as nfds_t, tp, sigmask) }
    })
}
