//! The native transport: a kdbus handle is a SEQPACKET socket carrying framed requests
//! in and framed records out.
//!
//! A datagram holds whole frames, so a request never waits for more bytes: each read
//! is acted on at once, and a frame cut short is the client's error, answered in order
//! with the frames before it. Output is the other way round: the domain leaves a
//! connection's records in one buffer during a wakeup, and the flush sends them in as
//! few datagrams as the size and fd limits allow (usually one, straight from that
//! buffer), each record with its fds. What the socket does not take waits in the
//! handle's backlog. Which request a handle may make (its role) is the loop's
//! decision; this module only moves frames.

use crate::backlog::{Backlog, Broken, MAX_FDS_PER_WRITE};
use crate::dispatch::Dispatch;
use kdbus_abi::wire::{self, Frames, RecHeader, ReqHeader};
use kdbus_abi::Errno;
use kdbus_core::domain::Request;
use kdbus_core::{BusKey, ConnKey, Creds, FileSet, Files, OutFiles, Peer};
use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno as SysErrno;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use std::io::IoSliceMut;
use std::mem::MaybeUninit;

/// Largest datagram the broker writes; records beyond it go in the next one.
const MAX_OUT_DATAGRAM: usize = 64 * 1024;
/// Output a client may leave unread before we give up on it.
const MAX_BACKLOG: usize = 8 * 1024 * 1024;
/// Datagrams read from one socket per wakeup, so that one busy client cannot starve
/// the others.
pub(crate) const READ_BUDGET: usize = 64;

/// What a native handle is, like a kdbus file descriptor: transformed once, by the
/// first command that makes something of it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Role {
    /// Connected to `control`, nothing made yet.
    Control,
    /// Made this bus; the bus lives as long as the handle.
    BusOwner(BusKey),
    /// Connected to a bus endpoint (a custom one: its id), no HELLO yet.
    Endpoint(BusKey, Option<u64>),
    /// Made this custom endpoint; it lives as long as the handle.
    EndpointOwner(BusKey, u64),
    /// Made the domain with this id; it lives as long as the handle.
    DomainOwner(u64),
    /// A connection on a bus (after HELLO).
    Conn(ConnKey),
}

impl Role {
    /// The core's name for what this handle is (it decides what a command does).
    pub(crate) fn kind(self) -> kdbus_core::handle::HandleKind {
        use kdbus_core::handle::HandleKind;
        match self {
            Role::Control => HandleKind::Control,
            Role::BusOwner(_) => HandleKind::BusOwner,
            Role::Endpoint(_, ep) => HandleKind::Endpoint {
                custom: ep.is_some(),
            },
            Role::EndpointOwner(..) => HandleKind::EndpointOwner,
            Role::DomainOwner(_) => HandleKind::DomainOwner,
            Role::Conn(_) => HandleKind::Conn,
        }
    }
}

/// A native client's socket.
pub(crate) struct Handle {
    /// The accepted SEQPACKET socket (shared weakly with its peer's metadata, which
    /// takes the pidfd from it when first needed: `Peer::socket`).
    pub(crate) fd: std::rc::Rc<OwnedFd>,
    /// Who connected it (credentials and `/proc` facts at connect).
    pub(crate) peer: Peer,
    /// What the handle has become.
    pub(crate) role: Role,
    /// Descriptors it is charged to its user for (`admission`).
    pub(crate) cost: usize,
    /// Datagrams the client has not taken yet (its socket buffer was full).
    backlog: Backlog,
}

/// One read from a handle.
pub(crate) enum Read {
    /// A datagram: its first `len` bytes are in the read buffer.
    Datagram {
        /// Bytes read (at most the buffer's size).
        len: usize,
        /// The fds that came with it.
        fds: Vec<OwnedFd>,
        /// The sender's credentials, when the kernel attached them.
        creds: Option<Creds>,
        /// The datagram, or its fds, did not fit.
        truncated: bool,
    },
    /// Nothing to read.
    Again,
    /// A signal interrupted the read.
    Interrupted,
    /// The client hung up, or the socket failed.
    Closed,
}

impl Handle {
    pub(crate) fn new(fd: OwnedFd, mut peer: Peer, role: Role, cost: usize) -> Handle {
        let fd = std::rc::Rc::new(fd);
        peer.socket = Some(std::rc::Rc::downgrade(&fd));
        Handle {
            fd,
            peer,
            role,
            cost,
            backlog: Backlog::new(MAX_BACKLOG),
        }
    }

    /// Read one datagram into `rbuf`.
    pub(crate) fn read(&self, rbuf: &mut [u8]) -> Read {
        let cap = rbuf.len();
        let mut space = [MaybeUninit::uninit();
            rustix::cmsg_space!(ScmRights(MAX_FDS_PER_WRITE), ScmCredentials(1))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(rbuf)];
        let r = rustix::net::recvmsg(
            &self.fd,
            &mut iov,
            &mut anc,
            RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
        );
        let msg = match r {
            Ok(m) => m,
            Err(SysErrno::AGAIN) => return Read::Again,
            Err(SysErrno::INTR) => return Read::Interrupted,
            Err(_) => return Read::Closed,
        };
        if msg.bytes == 0 && !msg.flags.contains(ReturnFlags::TRUNC) {
            // Orderly shutdown by the client.
            return Read::Closed;
        }
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut creds = None;
        for m in anc.drain() {
            match m {
                RecvAncillaryMessage::ScmRights(it) => fds.extend(it),
                RecvAncillaryMessage::ScmCredentials(c) => creds = crate::peer::creds_from_scm(&c),
                _ => {}
            }
        }
        let truncated =
            msg.flags.contains(ReturnFlags::TRUNC) || msg.flags.contains(ReturnFlags::CTRUNC);
        Read::Datagram {
            len: msg.bytes.min(cap),
            fds,
            creds,
            truncated,
        }
    }

    /// Send one datagram, or park it in the backlog if the client is behind.
    pub(crate) fn send(
        &mut self,
        dispatch: &Dispatch,
        token: u64,
        bytes: Vec<u8>,
        fds: Vec<Files>,
    ) -> Result<(), Broken> {
        self.backlog
            .send(self.fd.as_fd(), dispatch, token, bytes, fds, |_| {})
    }

    /// The socket is writable again: write the backlog.
    pub(crate) fn writable(&mut self, dispatch: &Dispatch, token: u64) -> Result<(), Broken> {
        // Datagrams are built per write: no buffer here worth keeping.
        self.backlog
            .write(self.fd.as_fd(), dispatch, token, |_| {})
            .map(drop)
    }

    /// Write a connection's records (`out`, with `fds` at their records' offsets) to the
    /// socket, or what does not fit to the backlog; both are left empty.
    pub(crate) fn flush(
        &mut self,
        dispatch: &Dispatch,
        token: u64,
        out: &mut Vec<u8>,
        fds: &mut OutFiles,
    ) -> Result<(), Broken> {
        if self.backlog.is_empty()
            && out.len() <= MAX_OUT_DATAGRAM
            && fds.iter().map(|(_, f)| f.len()).sum::<usize>() <= MAX_FDS_PER_WRITE
        {
            // The common case: one datagram, no copies.
            match crate::backlog::send_bytes(self.fd.as_fd(), out, fds.iter().map(|(_, f)| f)) {
                Ok(_) => {
                    out.clear();
                    fds.clear();
                    return Ok(());
                }
                Err(SysErrno::AGAIN) => {}
                Err(_) => {
                    out.clear();
                    fds.clear();
                    return Ok(()); // the read side will see the hang-up
                }
            }
        }
        let chunks = split_records(out, fds);
        out.clear();
        for (bytes, fds) in chunks {
            self.send(dispatch, token, bytes, fds)?;
        }
        Ok(())
    }
}

/// The requests in a datagram, in order: `Err((req_id, errno))` for a frame cut short
/// (`req_id` 0 if even its header is), after which the rest of the datagram is dropped.
pub(crate) fn requests(
    data: &[u8],
    creds: Creds,
    truncated: bool,
) -> impl Iterator<Item = Result<Request<'_>, (u64, Errno)>> {
    Frames::<ReqHeader>::new(data).map(move |frame| match frame {
        Ok((hdr, body)) => Ok(Request {
            cmd: hdr.cmd,
            flags: hdr.flags,
            req_id: hdr.req_id,
            body,
            creds,
        }),
        Err(hdr) => {
            let req_id = hdr.map_or(0, |h| h.req_id);
            let e = if truncated {
                Errno::EMSGSIZE
            } else {
                Errno::EINVAL
            };
            Err((req_id, e))
        }
    })
}

/// A reply record for a handle that is not (yet) a connection: errno `e`, `body`, and
/// an fd if there is one.
pub(crate) fn reply_record(
    req_id: u64,
    e: Errno,
    body: &[u8],
    fd: Option<OwnedFd>,
) -> (Vec<u8>, Vec<Files>) {
    let n_fds = u16::from(fd.is_some());
    let h = RecHeader {
        kind: wire::REC_REPLY,
        n_fds,
        error: e.0,
        req_id,
        body_len: body.len() as u64,
    };
    let mut out = Vec::with_capacity(64 + body.len());
    wire::push_frame(&mut out, &h, &[body]);
    let files: Vec<Files> = fd.map(|fd| FileSet::shared(vec![fd])).into_iter().collect();
    (out, files)
}

/// Cut a record stream into datagrams that respect the size and fd limits, keeping
/// each record's fds with it.
fn split_records(out: &[u8], files: &mut OutFiles) -> Vec<(Vec<u8>, Vec<Files>)> {
    let mut chunks = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut cur_files: Vec<Files> = Vec::new();
    let mut cur_fds = 0;
    let mut next_files = files.drain(..);
    for (hdr, body) in Frames::<RecHeader>::new(out).flatten() {
        let n = hdr.n_fds as usize;
        let len = wire::REC_HEADER_SIZE + kdbus_abi::align8_usize(body.len());
        if !cur.is_empty()
            && (cur.len() + len > MAX_OUT_DATAGRAM || cur_fds + n > MAX_FDS_PER_WRITE)
        {
            chunks.push((std::mem::take(&mut cur), std::mem::take(&mut cur_files)));
            cur_fds = 0;
        }
        wire::push_frame(&mut cur, &hdr, &[body]);
        if n > 0 {
            cur_files.extend(next_files.next().map(|(_, f)| f));
            cur_fds += n;
        }
    }
    if !cur.is_empty() {
        chunks.push((cur, cur_files));
    }
    chunks
}
