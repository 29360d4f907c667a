//! Datagrams on a kdbusd socket: one request batch out, one record batch in, fds as
//! `SCM_RIGHTS`. Shared by this library and the kernel-ABI shim (`kdbus-preload`), so
//! both read and write the wire the same way; neither blocks on anything but the one
//! socket it was given.

use kdbus_abi::Errno;
use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;

/// The answer to a request, as filed for whoever waits for it.
pub struct Answer {
    /// Positive errno, 0 on success.
    pub error: i32,
    /// The command structure as the broker wrote it back.
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Answer {
    pub fn new(error: i32, body: &[u8], fds: Vec<OwnedFd>) -> Answer {
        Answer {
            error,
            body: body.to_vec(),
            fds,
        }
    }
}

/// A message announced in the pool, with the fds that travelled with it.
pub struct Announced {
    pub ev: kdbus_abi::wire::MsgEvent,
    pub fds: Vec<OwnedFd>,
}

/// The most fds one datagram carries (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

fn errno(e: rustix::io::Errno) -> Errno {
    match e {
        // The broker hung up: the bus is gone, or it dropped us.
        rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET => Errno::ECONNRESET,
        e => Errno(e.raw_os_error()),
    }
}

/// Send one datagram with `fds` attached (EINTR is retried).
pub fn send_datagram(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), Errno> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Errno::EMFILE);
    }
    loop {
        match rustix::net::sendmsg(fd, &[IoSlice::new(bytes)], &mut anc, SendFlags::NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(errno(e)),
        }
    }
}

/// Read one datagram into `buf`: its length and fds (close-on-exec), or `None` if not
/// blocking and nothing is there. End-of-file is ECONNRESET.
pub fn recv_datagram(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    block: bool,
) -> Result<Option<(usize, Vec<OwnedFd>)>, Errno> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let flags = RecvFlags::CMSG_CLOEXEC
        | if block {
            RecvFlags::empty()
        } else {
            RecvFlags::DONTWAIT
        };
    let msg = loop {
        match rustix::net::recvmsg(fd, &mut [IoSliceMut::new(buf)], &mut anc, flags) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(errno(e)),
            Ok(m) => break m,
        }
    };
    if msg.bytes == 0 {
        return Err(Errno::ECONNRESET);
    }
    let mut fds = Vec::new();
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    Ok(Some((msg.bytes, fds)))
}
