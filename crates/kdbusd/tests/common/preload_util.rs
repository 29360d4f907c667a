//! The preload scenarios' raw-libc helpers (`tests/preload.rs`): kdbus's ioctls on
//! command structures in this process's memory, as a C program calls them, and the
//! plain syscalls the scenarios use around them. Included by `preload.rs` alone.

use super::common::cmd_body;
use super::{BUS, POOL};
use kdbus_abi::{attach, cmd, item, payload, read_struct, CmdHello, ItemWriter, Memfd, Msg, Vec_};
use std::ffi::CString;
use std::path::PathBuf;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The errno of a failed call, 0 for success.
pub fn err<T>(r: Result<T, i32>) -> i32 {
    r.err().unwrap_or(0)
}

pub fn zero<T: FromZeros>() -> T {
    T::new_zeroed()
}

/// `ioctl(fd, _IOWR(0x95, nr, T), arg)`: the command structure at `arg`, as kdbus
/// programs call it. `Err(errno)` on failure.
pub fn kioctl<T>(fd: i32, nr: u32, arg: *mut T) -> Result<(), i32> {
    let size = std::mem::size_of::<T>() as u64;
    let req = (3u64 << 30) | (size << 16) | (0x95 << 8) | nr as u64;
    // SAFETY: `arg` points to a live, 8-aligned command of the size its `size` says.
    match unsafe { libc::ioctl(fd, req as _, arg) } {
        0 => Ok(()),
        -1 => Err(errno()),
        r => panic!("ioctl returned {r}"),
    }
}

/// ioctl with the fixed-size command `c` (its `size` set); the command as written back.
pub fn kcmd<T: IntoBytes + FromBytes>(fd: i32, nr: u32, mut c: T) -> Result<T, i32> {
    let size = std::mem::size_of::<T>() as u64;
    c.as_mut_bytes()[..8].copy_from_slice(&size.to_ne_bytes());
    kioctl(fd, nr, &mut c).map(|()| c)
}

/// ioctl with command `c` followed by `items`, in 8-aligned memory; `c` as written back.
pub fn kcmd_items<T: IntoBytes + FromBytes + Immutable>(
    fd: i32,
    nr: u32,
    c: T,
    items: &[u8],
) -> Result<T, i32> {
    let mut w = words(&cmd_body(&c, items));
    kioctl::<T>(fd, nr, w.as_mut_ptr().cast())?;
    Ok(read_struct(w.as_bytes()).expect("written back"))
}

/// `bytes` in 8-aligned memory (kdbus wants aligned commands and messages).
pub fn words(bytes: &[u8]) -> Vec<u64> {
    let mut w = vec![0u64; bytes.len().div_ceil(8)];
    w.as_mut_bytes()[..bytes.len()].copy_from_slice(bytes);
    w
}

pub fn open_bus() -> i32 {
    let path = CString::new(std::env::var(BUS).expect("bus path")).expect("path");
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(fd >= 0, "open({path:?}): errno {}", errno());
    fd
}

pub fn say_hello(fd: i32, flags: u64) -> Result<CmdHello, i32> {
    say_hello_pool(fd, flags, POOL)
}

pub fn say_hello_pool(fd: i32, flags: u64, pool: usize) -> Result<CmdHello, i32> {
    let mut h: CmdHello = zero();
    (h.flags, h.attach_flags_send, h.pool_size) = (flags, attach::ANY, pool as u64);
    kcmd(fd, cmd::HELLO, h)
}

pub fn map_pool(fd: i32, len: usize, prot: i32) -> Result<usize, i32> {
    // SAFETY: a fresh mapping chosen by the kernel.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
    if p == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(p as usize)
    }
}

pub fn unmap(p: usize) {
    // SAFETY: a mapping of POOL bytes this scenario made.
    assert_eq!(unsafe { libc::munmap(p as *mut libc::c_void, POOL) }, 0);
}

/// `len` bytes at `off` in the pool mapped at `base`.
pub fn pool_bytes<'a>(base: usize, off: u64, len: u64) -> &'a [u8] {
    assert!(off + len <= POOL as u64, "{off}+{len} beyond the pool");
    // SAFETY: inside a live read-only mapping of POOL bytes.
    unsafe { std::slice::from_raw_parts((base + off as usize) as *const u8, len as usize) }
}

pub fn pipe() -> (i32, i32) {
    let mut p = [0i32; 2];
    // SAFETY: room for two fds.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    (p[0], p[1])
}

pub fn write_fd(fd: i32, b: &[u8]) -> isize {
    // SAFETY: reading `b`.
    unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) }
}

pub fn read_fd(fd: i32) -> Vec<u8> {
    let mut b = [0u8; 256];
    // SAFETY: writing into `b`.
    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) };
    assert!(n >= 0, "read: errno {}", errno());
    b[..n as usize].to_vec()
}

pub fn close(fd: i32) {
    // SAFETY: an fd this scenario owns.
    let r = unsafe { libc::close(fd) };
    assert_eq!(r, 0, "close({fd}): errno {}", errno());
}

pub fn pfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// poll(2); checks that the count matches the revents.
pub fn poll_fds(p: &mut [libc::pollfd], timeout_ms: i32) -> usize {
    // SAFETY: the caller's array.
    let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as _, timeout_ms) };
    assert!(n >= 0, "poll: errno {}", errno());
    let ready = p.iter().filter(|p| p.revents != 0).count();
    assert_eq!(n as usize, ready, "poll's count");
    ready
}

pub fn monotonic_ns() -> u64 {
    // SAFETY: writing a zeroed timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `(st_dev, st_ino)` of an open fd: which file it is.
pub fn file_id(fd: i32) -> (u64, u64) {
    // SAFETY: a zeroed stat filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::fstat(fd, &mut st) },
        0,
        "fstat({fd}): errno {}",
        errno()
    );
    (st.st_dev, st.st_ino)
}

/// A memfd holding `data`, with the `F_SEAL_*` `seals` added (none if 0).
pub fn memfd(data: &[u8], seals: i32) -> i32 {
    let name = CString::new("kdbus-preload-test").expect("name");
    let flags = libc::MFD_ALLOW_SEALING | libc::MFD_CLOEXEC;
    // SAFETY: a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    assert!(fd >= 0, "memfd_create: errno {}", errno());
    assert_eq!(write_fd(fd, data), data.len() as isize, "write the memfd");
    if seals != 0 {
        // SAFETY: fcntl on our memfd.
        let r = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) };
        assert_eq!(r, 0, "F_ADD_SEALS: errno {}", errno());
    }
    fd
}

/// The seals kdbus wants on a memfd payload.
pub const SEALED: i32 =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// A `PAYLOAD_MEMFD` item: `size` bytes from `start` of `fd`.
pub fn memfd_item(fd: i32, start: u64, size: u64) -> Vec<u8> {
    let m = Memfd {
        start,
        size,
        fd,
        pad: 0,
    };
    let mut out = Vec::new();
    ItemWriter::new(&mut out).push(item::PAYLOAD_MEMFD, m.as_bytes());
    out
}

/// The runtime directory the broker serves (`$KDBUS_ROOT`).
pub fn kdbus_root() -> PathBuf {
    std::env::var_os("KDBUS_ROOT").expect("KDBUS_ROOT").into()
}

pub fn open_path(path: &std::path::Path) -> Result<i32, i32> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(fd)
    }
}

/// A D-Bus-typed message header to `dst`.
pub fn msg(dst: u64, cookie: u64, flags: u64) -> Msg {
    let mut m: Msg = zero();
    (m.dst_id, m.cookie, m.flags, m.payload_type) = (dst, cookie, flags, payload::DBUS);
    m
}

/// `PAYLOAD_VEC` items pointing at `parts` (which must outlive the SEND).
pub fn vecs(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        let v = Vec_ {
            size: p.len() as u64,
            address_or_offset: p.as_ptr() as u64,
        };
        ItemWriter::new(&mut out).push(item::PAYLOAD_VEC, v.as_bytes());
    }
    out
}

/// A BLOOM_FILTER item: generation 0, then the filter words.
pub fn bloom_filter(filter: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    let parts: [&[u8]; 2] = [&0u64.to_ne_bytes(), filter.as_bytes()];
    ItemWriter::new(&mut out).push_parts(item::BLOOM_FILTER, &parts);
    out
}
