//! Datagrams on a kdbusd socket: one request batch out, one record batch in, fds as
//! `SCM_RIGHTS`. Shared by this library and the kernel-ABI shim (`kdbus-preload`), so
//! both read and write the wire the same way; neither blocks on anything but the one
//! socket it was given.
//!
//! A datagram goes out gathered from several buffers ([`send_datagram_vectored`]):
//! whoever sends assembles it from what already exists (pending notices, a frame
//! header, a command encoded into a reused buffer, the caller's payload) instead of
//! copying it into one buffer first. `SOCK_SEQPACKET` keeps the gathered pieces one
//! record, so the broker sees exactly the bytes a single buffer would have held.
//!
//! `Transport` is the plain use of that: a socket on which one request is answered
//! before the next is sent (control handles, bus owners, the HELLO handshake).

use crate::error::{Error, Result};
use kdbus_abi::wire::{self, Frames, RecHeader, ReqHeader};
use kdbus_abi::Errno;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::path::Path;

/// Largest datagram the broker sends (plus slack).
pub(crate) const MAX_IN_DATAGRAM: usize = 128 * 1024;

/// The answer to a request, as filed for whoever waits for it.
pub struct Answer {
    /// Positive errno, 0 on success.
    pub error: i32,
    /// The command structure as the broker wrote it back.
    pub body: Vec<u8>,
    /// The fds that came with the answer (HELLO's pool memfd, for one).
    pub fds: Vec<OwnedFd>,
}

impl Answer {
    /// An answer with errno `error` (0 for success), a copy of `body`, and `fds`.
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
    /// The announcement: where the message sits in the pool, its size and priority.
    pub ev: kdbus_abi::wire::MsgEvent,
    /// The fds that travelled with the message.
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
    send_datagram_vectored(fd, &[IoSlice::new(bytes)], fds)
}

/// Send one datagram made of `parts`, in order, with `fds` attached (EINTR is
/// retried). The record is atomic: it arrives whole or not at all.
pub fn send_datagram_vectored(
    fd: BorrowedFd<'_>,
    parts: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> Result<(), Errno> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Errno::EMFILE);
    }
    loop {
        match rustix::net::sendmsg(fd, parts, &mut anc, SendFlags::NOSIGNAL) {
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

/// A socket that speaks the request/record framing, one request at a time. Used
/// directly for control and bus-owner handles, and for a connection's HELLO.
pub(crate) struct Transport {
    pub(crate) fd: OwnedFd,
}

impl Transport {
    pub(crate) fn connect(path: &Path) -> Result<Transport> {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::net::connect(&fd, &SocketAddrUnix::new(path)?)?;
        // Room for the largest inline payload kdbus allows in one datagram.
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(
            &fd,
            wire::MAX_REQUEST_DATAGRAM + 4096,
        );
        Ok(Transport { fd })
    }

    /// One request, one answer, nothing else expected on the socket (control handles,
    /// the HELLO handshake).
    pub(crate) fn request(
        &self,
        c: u32,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(i32, Vec<u8>, Vec<OwnedFd>)> {
        let mut out = Vec::new();
        let h = ReqHeader {
            cmd: c,
            flags: 0,
            req_id: 1,
            body_len: body.len() as u64,
        };
        wire::push_frame(&mut out, &h, &[body]);
        send_datagram(self.fd.as_fd(), &out, fds)?;
        let mut buf = vec![0u8; MAX_IN_DATAGRAM];
        let (n, fds) =
            recv_datagram(self.fd.as_fd(), &mut buf, true)?.ok_or(Error::Protocol("no answer"))?;
        let (rec, body) = Frames::<RecHeader>::new(&buf[..n])
            .next()
            .and_then(|f| f.ok())
            .ok_or(Error::Protocol("bad answer"))?;
        Ok((rec.error, body.to_vec(), fds))
    }
}
