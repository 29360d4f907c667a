//! Writing to a client that may not be reading: the socket write and the bounded
//! backlog behind it, shared by both transports.
//!
//! The loop never blocks on a client. A write the socket does not take waits in the
//! client's backlog, in order, and the socket is watched for output until the backlog
//! is empty again; a client that lets its backlog grow past a bound is given up on.
//! Datagram and stream sockets differ only in that a stream may take part of a write
//! (the rest waits, its fds already gone with the first byte) and in their bounds, which
//! the transports pass in. What was written is reported back through a callback, for
//! the stream quota of D-Bus connections.

use crate::dispatch::Dispatch;
use kdbus_core::Files;
use rustix::fd::{AsFd, BorrowedFd};
use rustix::io::Errno as SysErrno;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use std::collections::VecDeque;
use std::io::IoSlice;
use std::mem::MaybeUninit;

/// Most fds in one write (the kernel's SCM_MAX_FD).
pub(crate) const MAX_FDS_PER_WRITE: usize = 253;

/// The client's socket is broken, or the client does not read it: close it.
#[derive(Debug)]
pub(crate) struct Broken;

/// Writes a client has not taken yet (its socket buffer was full).
pub(crate) struct Backlog {
    /// The writes, oldest first, each with how much of it was written already (a
    /// stream takes part of a write): the front one may be partly written. An offset
    /// rather than draining what went, which would move the rest of a large message
    /// once per partial write.
    queue: VecDeque<(Vec<u8>, usize, Vec<Files>)>,
    /// Bytes in `queue` not written yet.
    bytes: usize,
    /// What may wait behind the write in progress before the client is given up on.
    bound: usize,
}

impl Backlog {
    /// An empty backlog that gives up beyond `bound` bytes.
    pub(crate) fn new(bound: usize) -> Backlog {
        Backlog {
            queue: VecDeque::new(),
            bytes: 0,
            bound,
        }
    }

    /// Whether nothing waits (a new write may go straight to the socket).
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Send one datagram (or stream chunk) on `fd`, or park it behind what already
    /// waits; `written` is told the bytes the socket took.
    pub(crate) fn send(
        &mut self,
        fd: BorrowedFd<'_>,
        dispatch: &Dispatch,
        token: u64,
        bytes: Vec<u8>,
        fds: Vec<Files>,
        written: impl FnMut(usize),
    ) -> Result<(), Broken> {
        self.send_from(fd, dispatch, token, bytes, 0, fds, written)
    }

    /// [`Backlog::send`] of `bytes[at..]`: the start went already (and the fds, if
    /// any, with it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_from(
        &mut self,
        fd: BorrowedFd<'_>,
        dispatch: &Dispatch,
        token: u64,
        bytes: Vec<u8>,
        mut at: usize,
        mut fds: Vec<Files>,
        mut written: impl FnMut(usize),
    ) -> Result<(), Broken> {
        at = at.min(bytes.len());
        if self.queue.is_empty() && at < bytes.len() {
            match send_bytes(fd, &bytes[at..], fds.iter()) {
                Ok(n) if at + n >= bytes.len() => {
                    written(n);
                    return Ok(());
                }
                Ok(n) => {
                    written(n);
                    at += n;
                    fds.clear();
                }
                Err(SysErrno::AGAIN) => {}
                Err(e) => {
                    // Bytes lost from a stream corrupt it; a datagram socket that
                    // fails this way is broken too.
                    tracing::debug!(token, %e, "write failed, disconnecting");
                    return Err(Broken);
                }
            }
        }
        if at >= bytes.len() {
            return Ok(());
        }
        let left = bytes.len() - at;
        self.bytes += left;
        self.queue.push_back((bytes, at, fds));
        // What waits behind the chunk being written is bounded; the chunk itself may
        // be one large D-Bus message (up to the protocol's 128 MiB), no more. Other
        // peers cannot fill a D-Bus client's stream (their shares of it are bounded
        // in the core): what piles up beyond is the client's own doing.
        let front = self.queue.front().map_or(0, |(b, at, _)| b.len() - at);
        let behind = self.bytes - front.min(kdbus_dbus::header::MAX_MESSAGE_SIZE);
        if behind > self.bound {
            tracing::info!(token, "client does not read its socket, disconnecting");
            return Err(Broken);
        }
        if self.queue.len() == 1 {
            dispatch.want_write(fd, token, true);
        }
        Ok(())
    }

    /// The socket is writable: write what waits, as far as it goes; `written` is told
    /// the bytes the socket took. Returns the largest buffer written out in full, for
    /// the caller to reuse.
    pub(crate) fn write(
        &mut self,
        fd: BorrowedFd<'_>,
        dispatch: &Dispatch,
        token: u64,
        mut written: impl FnMut(usize),
    ) -> Result<Option<Vec<u8>>, Broken> {
        let mut spent: Option<Vec<u8>> = None;
        while let Some((bytes, at, fds)) = self.queue.front_mut() {
            let rest = bytes.get(*at..).unwrap_or_default();
            match send_bytes(fd, rest, fds.iter()) {
                Ok(n) if n < rest.len() => {
                    // A stream took part of it: keep the rest, its fds are gone.
                    *at += n;
                    fds.clear();
                    self.bytes -= n;
                    written(n);
                    return Ok(spent);
                }
                Ok(n) => {
                    self.bytes -= rest.len();
                    if let Some((b, _, _)) = self.queue.pop_front() {
                        if spent.as_ref().is_none_or(|s| s.capacity() < b.capacity()) {
                            spent = Some(b);
                        }
                    }
                    written(n);
                }
                Err(SysErrno::AGAIN) => return Ok(spent),
                Err(e) => {
                    tracing::debug!(token, %e, "write failed, disconnecting");
                    return Err(Broken);
                }
            }
        }
        dispatch.want_write(fd, token, false);
        Ok(spent)
    }
}

/// Send bytes with fds; returns how many bytes the socket took (all of them, for
/// datagrams).
pub(crate) fn send_bytes<'f>(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    files: impl Iterator<Item = &'f Files>,
) -> Result<usize, SysErrno> {
    // Collecting from no fds allocates nothing.
    let borrowed: Vec<BorrowedFd<'f>> = files.flat_map(|f| f.iter().map(|fd| fd.as_fd())).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_WRITE))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        // More fds than one write can carry: callers keep each write within
        // MAX_FDS_PER_WRITE, so this is a bug, not the client's doing.
        tracing::error!(n = borrowed.len(), "too many fds for one write");
        return Err(SysErrno::INVAL);
    }
    loop {
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        match rustix::net::sendmsg(fd, &[IoSlice::new(bytes)], &mut anc, flags) {
            Ok(n) => return Ok(n),
            Err(SysErrno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
