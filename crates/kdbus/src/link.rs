//! A connection's socket as its threads share it: requests out, records in, and who
//! waits for what.
//!
//! Two locks, taken in one order. The *send lock* ([`Outgoing`]) makes one thread at
//! a time the writer: it owns the buffers a request datagram is gathered from, so
//! they are reused from one request to the next, and it serializes sends, so pending
//! notices (claims, frees) reach the broker in the order they were queued, ahead of
//! any request queued after them (a NAME_RELEASE must follow the claims made before
//! it). The *state lock* ([`State`]) guards what the reader files and the waiters
//! look at; it is never held across a syscall. A thread may take the state lock while
//! holding the send lock, never the reverse.
//!
//! Reading works the other way round: whoever needs something the socket has not
//! delivered yet becomes the reader if nobody is (`reading`), reads one datagram
//! into the shared buffer and files every record in it: answers by request id,
//! announced messages in the queue. The others wait on the condvar and look again.
//!
//! Nothing on the message path allocates once warm: the notice buffer and the send
//! buffer swap places instead of being taken and dropped, SEND's command and message
//! header are encoded into a kept buffer while the payload goes to `sendmsg` as the
//! caller's own slices, and answer bodies come from (and return to) a small stock of
//! buffers.

use crate::error::{Error, Result};
use crate::message::{payload_padding, Message};
use crate::transport::{recv_datagram, send_datagram_vectored, Announced, Answer, MAX_IN_DATAGRAM};
use kdbus_abi::wire::{self, Record, ReqHeader};
use kdbus_abi::{cmd, read_struct, recv_flags, CmdFree, CmdRecv, CmdSend, Errno};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;
use zerocopy::IntoBytes;

/// The most pieces a request datagram is gathered from. A message with more payload
/// vectors than fit has its payload copied behind the header instead.
const MAX_PIECES: usize = 32;

/// Padding comes from here.
static ZEROS: [u8; 8] = [0; 8];

/// Failures of posted messages kept until the owner looks.
pub(crate) const MAX_SEND_FAILURES: usize = 1024;

/// Answer bodies kept for reuse (one per thread waiting at the same time is plenty).
const SPARE_BODIES: usize = 4;

/// What the reader files and the waiters look at (the state lock).
#[derive(Default)]
pub(crate) struct State {
    next_req: u64,
    pub(crate) answers: HashMap<u64, Answer>,
    /// Messages announced and not yet taken.
    pub(crate) queue: VecDeque<Announced>,
    /// Someone is blocked reading the socket; others wait on the condvar.
    reading: bool,
    /// Requests that want no answer (claims, frees), sent with the next datagram.
    notices: Vec<u8>,
    pub(crate) dead: Option<Errno>,
    /// Broadcasts lost for lack of pool space, as of the last message taken.
    pub(crate) dropped_msgs: u64,
    /// Posted messages the broker could not deliver: (cookie, errno), oldest first,
    /// at most [`MAX_SEND_FAILURES`] (older ones counted in `send_failures_lost`).
    pub(crate) send_failures: VecDeque<(u64, Errno)>,
    pub(crate) send_failures_lost: u64,
    /// NAME_RELEASEs in flight. The broker may take back messages announced to us
    /// (those addressed to the name, when it falls back to its activator); until it
    /// has answered, we hand out nothing, so nothing is received twice.
    pub(crate) releasing: u32,
    /// The datagram buffer, lent to whoever reads.
    rbuf: Vec<u8>,
    /// Answer-body buffers to reuse.
    spare_bodies: Vec<Vec<u8>>,
    /// Requests whose waiter went away (a dropped future): their answers are dropped
    /// when they come, and a call's reply slice freed (`true`: the request is a call).
    abandoned: HashMap<u64, bool>,
}

/// Free the reply slice a call's answer names, if it names one (the answer of a call
/// nobody waits for any more).
fn free_reply(notices: &mut Vec<u8>, a: &Answer) {
    let Some(wb) = (a.error == 0)
        .then(|| read_struct::<CmdSend>(&a.body))
        .flatten()
    else {
        return;
    };
    if wb.reply.msg_size > 0 {
        let c = CmdFree {
            size: std::mem::size_of::<CmdFree>() as u64,
            offset: wb.reply.offset,
            ..Default::default()
        };
        wire::push_notice(notices, cmd::FREE, c.as_bytes());
    }
}

impl State {
    fn take_rbuf(&mut self) -> Vec<u8> {
        let mut b = std::mem::take(&mut self.rbuf);
        if b.len() < MAX_IN_DATAGRAM {
            b.resize(MAX_IN_DATAGRAM, 0);
        }
        b
    }
}

/// The writer's buffers (the send lock).
#[derive(Default)]
struct Outgoing {
    /// The notices being sent: swapped with [`State::notices`], so both keep their
    /// capacity.
    notices: Vec<u8>,
    /// The encoded command (for SEND: command, message header and items).
    head: Vec<u8>,
}

/// A request body.
pub(crate) enum Body<'b, 'm> {
    /// A command structure and what follows it, in parts.
    Parts(&'b [&'b [u8]]),
    /// A SEND of the message with these send flags (`kdbus_abi::send_flags`).
    Send(&'b Message<'m>, u64),
}

/// The socket of a connection and everything its threads share about it.
pub(crate) struct Link {
    fd: OwnedFd,
    state: Mutex<State>,
    cond: Condvar,
    out: Mutex<Outgoing>,
}

impl Link {
    pub(crate) fn new(fd: OwnedFd) -> Link {
        Link {
            fd,
            state: Mutex::new(State {
                next_req: 1,
                ..Default::default()
            }),
            cond: Condvar::new(),
            out: Mutex::new(Outgoing::default()),
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_out(&self) -> MutexGuard<'_, Outgoing> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wake the waiters (after changing what they wait on).
    pub(crate) fn notify(&self) {
        self.cond.notify_all();
    }

    fn queue_notice(&self, c: u32, body: &[u8]) {
        wire::push_notice(&mut self.lock().notices, c, body);
    }

    /// Free a slice with the next datagram we write anyway.
    /// Nobody waits for the answer to request `id` any more (`call`: it is a call,
    /// whose reply slice must go back to the pool): drop it when it comes, or now.
    pub(crate) fn abandon(&self, id: u64, call: bool) {
        let mut g = self.lock();
        match g.answers.remove(&id) {
            Some(a) => {
                if call {
                    free_reply(&mut g.notices, &a);
                }
            }
            None => {
                g.abandoned.insert(id, call);
            }
        }
    }

    pub(crate) fn free_later(&self, offset: u64) {
        let c = CmdFree {
            size: std::mem::size_of::<CmdFree>() as u64,
            offset,
            ..Default::default()
        };
        self.queue_notice(cmd::FREE, c.as_bytes());
    }

    /// Send pending notices now (they otherwise ride along with the next datagram).
    pub(crate) fn flush(&self) -> Result<()> {
        Ok(self.flush_notices()?)
    }

    fn flush_notices(&self) -> Result<(), Errno> {
        // Nothing to send: do not queue up behind a writer (a reader must not wait for
        // a send that may itself wait for the broker to be read from).
        if self.lock().notices.is_empty() {
            return Ok(());
        }
        let mut o = self.lock_out();
        std::mem::swap(&mut self.lock().notices, &mut o.notices);
        if o.notices.is_empty() {
            return Ok(());
        }
        let r = send_datagram_vectored(self.fd.as_fd(), &[IoSlice::new(&o.notices)], &[]);
        o.notices.clear();
        r
    }

    /// Send a request, the pending notices in front of it; returns its id.
    pub(crate) fn submit(&self, c: u32, body: Body<'_, '_>, fds: &[BorrowedFd<'_>]) -> Result<u64> {
        self.submit_as(c, body, fds, None)
    }

    /// [`Link::submit`]; with `posted`, as a request the broker does not answer, with
    /// that id (a SEND's cookie: what its failure record names).
    pub(crate) fn submit_as(
        &self,
        c: u32,
        body: Body<'_, '_>,
        fds: &[BorrowedFd<'_>],
        posted: Option<u64>,
    ) -> Result<u64> {
        let mut guard = self.lock_out();
        let o = &mut *guard;
        // Encode what is not the caller's payload into the kept buffer.
        let (tail, padded): (&[&[u8]], bool) = match body {
            Body::Parts(parts) => {
                o.head.clear();
                (parts, false)
            }
            Body::Send(m, send_flags) => {
                m.encode_send_head(send_flags, &mut o.head);
                (&m.payload, true)
            }
        };
        let tail = if pieces(tail.len(), padded) > MAX_PIECES {
            // Too many pieces to gather: copy them behind the head instead.
            for p in tail {
                o.head.extend_from_slice(p);
                if padded {
                    o.head.extend_from_slice(&ZEROS[..payload_padding(p.len())]);
                }
            }
            &[]
        } else {
            tail
        };
        let id = {
            let mut g = self.lock();
            if let Some(e) = g.dead {
                return Err(Error::Bus(e));
            }
            let id = match posted {
                Some(cookie) => cookie,
                None => {
                    g.next_req += 1;
                    g.next_req - 1
                }
            };
            std::mem::swap(&mut g.notices, &mut o.notices);
            id
        };
        let header = ReqHeader {
            cmd: c,
            flags: if posted.is_some() {
                wire::REQ_NO_REPLY
            } else {
                0
            },
            req_id: id,
            body_len: body_len(&o.head, tail, padded) as u64,
        };
        let mut g = Gather::new();
        gather_request(&mut g, &o.notices, &header, &o.head, tail, padded);
        let r = send_datagram_vectored(self.fd.as_fd(), g.pieces(), fds);
        o.notices.clear();
        r?;
        Ok(id)
    }

    /// Run a command and wait for its answer: `(errno, write-back body, fds)`.
    pub(crate) fn request(
        &self,
        c: u32,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(i32, Vec<u8>, Vec<OwnedFd>)> {
        let a = self.answer(c, Body::Parts(&[body]), fds)?;
        Ok((a.error, a.body, a.fds))
    }

    /// Run a command and hand its answer to `f` (errno, write-back, fds); the
    /// write-back's buffer is kept for the next answer.
    pub(crate) fn exchange<T>(
        &self,
        c: u32,
        body: Body<'_, '_>,
        fds: &[BorrowedFd<'_>],
        f: impl FnOnce(i32, &[u8], Vec<OwnedFd>) -> T,
    ) -> Result<T> {
        let a = self.answer(c, body, fds)?;
        let r = f(a.error, &a.body, a.fds);
        let mut g = self.lock();
        if g.spare_bodies.len() < SPARE_BODIES {
            g.spare_bodies.push(a.body);
        }
        Ok(r)
    }

    fn answer(&self, c: u32, body: Body<'_, '_>, fds: &[BorrowedFd<'_>]) -> Result<Answer> {
        let id = self.submit(c, body, fds)?;
        self.wait(|g| g.answers.remove(&id), None)?
            .ok_or(Error::Bus(Errno::ETIMEDOUT))
    }

    /// Wait until `check` finds what we wait for, reading the socket ourselves when
    /// nobody else is. `None` after `timeout`.
    pub(crate) fn wait<T>(
        &self,
        mut check: impl FnMut(&mut State) -> Option<T>,
        timeout: Option<Duration>,
    ) -> Result<Option<T>> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut g = self.lock();
        loop {
            if let Some(t) = check(&mut g) {
                return Ok(Some(t));
            }
            if let Some(e) = g.dead {
                return Err(Error::Bus(e));
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(std::time::Instant::now()) {
                    Some(l) if !l.is_zero() => Some(l),
                    _ => return Ok(None),
                },
                None => None,
            };
            if g.reading {
                g = match left {
                    Some(l) => {
                        self.cond
                            .wait_timeout(g, l)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                    None => self.cond.wait(g).unwrap_or_else(|p| p.into_inner()),
                };
                continue;
            }
            g.reading = true;
            let mut buf = g.take_rbuf();
            drop(g);
            let r = self.read_some(left, &mut buf);
            g = self.lock();
            g.reading = false;
            let r = r.map(|got| got.map(|(n, fds)| dispatch(&mut g, &buf[..n], fds)));
            g.rbuf = buf;
            self.cond.notify_all();
            if let Err(e) = r {
                g.dead = Some(e.errno());
                return Err(e);
            }
        }
    }

    /// Flush notices, then block (up to `left`) for one datagram.
    fn read_some(
        &self,
        left: Option<Duration>,
        buf: &mut [u8],
    ) -> Result<Option<(usize, Vec<OwnedFd>)>> {
        self.flush_notices()?;
        if let Some(l) = left {
            let ms = l.as_millis().clamp(1, i32::MAX as u128) as i32;
            let mut pfd = [rustix::event::PollFd::new(
                &self.fd,
                rustix::event::PollFlags::IN,
            )];
            let ts = rustix::time::Timespec {
                tv_sec: (ms / 1000) as i64,
                tv_nsec: (ms % 1000) as i64 * 1_000_000,
            };
            match rustix::event::poll(&mut pfd, Some(&ts)) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(recv_datagram(self.fd.as_fd(), buf, left.is_none())?)
    }

    /// Pull in whatever the broker sent, without blocking.
    pub(crate) fn poll_socket(&self) -> Result<()> {
        let mut g = self.lock();
        if g.reading {
            return Ok(());
        }
        g.reading = true;
        let mut buf = g.take_rbuf();
        drop(g);
        let mut result = self.flush_notices();
        while result.is_ok() {
            match recv_datagram(self.fd.as_fd(), &mut buf, false) {
                Ok(Some((n, fds))) => {
                    let mut g = self.lock();
                    dispatch(&mut g, &buf[..n], fds);
                }
                Ok(None) => break,
                Err(e) => result = Err(e),
            }
        }
        let mut g = self.lock();
        g.reading = false;
        g.rbuf = buf;
        if let Err(e) = result {
            g.dead = Some(e);
        }
        self.cond.notify_all();
        Ok(result?)
    }
}

/// Take announced message `idx` off the local queue and queue its claim in the same
/// critical section: a NAME_RELEASE sent by another thread then always follows the
/// claim, so the broker never moves a message we handed out.
pub(crate) fn claim_locked(g: &mut State, idx: usize, drop_it: bool) -> Option<Announced> {
    let a = g.queue.remove(idx)?;
    let flags = recv_flags::CLAIM | if drop_it { recv_flags::DROP } else { 0 };
    let c = CmdRecv {
        size: std::mem::size_of::<CmdRecv>() as u64,
        flags,
        msg: kdbus_abi::MsgInfo {
            offset: a.ev.offset,
            msg_size: a.ev.msg_size,
            return_flags: 0,
        },
        ..Default::default()
    };
    wire::push_notice(&mut g.notices, cmd::RECV, c.as_bytes());
    g.dropped_msgs = a.ev.dropped_msgs;
    Some(a)
}

/// File what one datagram carried.
fn dispatch(g: &mut State, data: &[u8], fds: Vec<OwnedFd>) {
    let mut fds = fds.into_iter();
    for (rec, n_fds) in wire::records(data) {
        let mine: Vec<OwnedFd> = fds.by_ref().take(n_fds).collect();
        match rec {
            Record::Reply {
                req_id,
                error,
                body,
            } => {
                let mut kept = g.spare_bodies.pop().unwrap_or_default();
                kept.clear();
                kept.extend_from_slice(body);
                let a = Answer {
                    error,
                    body: kept,
                    fds: mine,
                };
                match g.abandoned.remove(&req_id) {
                    Some(call) => {
                        if call {
                            free_reply(&mut g.notices, &a);
                        }
                        g.spare_bodies.push(a.body);
                    }
                    None => {
                        g.answers.insert(req_id, a);
                    }
                }
            }
            Record::Msg(ev) => g.queue.push_back(Announced { ev, fds: mine }),
            Record::Retract(offset) => g.queue.retain(|a| a.ev.offset != offset),
            Record::SendFailed { req_id, error } => {
                if g.send_failures.len() >= MAX_SEND_FAILURES {
                    g.send_failures.pop_front();
                    g.send_failures_lost += 1;
                }
                g.send_failures.push_back((req_id, Errno(error)));
            }
            Record::Dropped(_) | Record::Unknown => {}
        }
    }
}

/// The pieces of one datagram, in a fixed array (no allocation per send).
struct Gather<'a> {
    pieces: [IoSlice<'a>; MAX_PIECES],
    len: usize,
}

impl<'a> Gather<'a> {
    fn new() -> Self {
        Gather {
            pieces: [IoSlice::new(&[]); MAX_PIECES],
            len: 0,
        }
    }

    /// Append `b` (empty pieces are left out). The caller made sure it fits.
    fn push(&mut self, b: &'a [u8]) {
        if !b.is_empty() {
            self.pieces[self.len] = IoSlice::new(b);
            self.len += 1;
        }
    }

    fn pieces(&self) -> &[IoSlice<'a>] {
        &self.pieces[..self.len]
    }
}

/// Most pieces [`gather_request`] uses for a tail of `n` parts.
fn pieces(n: usize, padded: bool) -> usize {
    4 + if padded { 2 * n } else { n }
}

/// Length of a request body made of `head` and `tail` (each part of the tail padded to
/// 8 bytes if `padded`).
fn body_len(head: &[u8], tail: &[&[u8]], padded: bool) -> usize {
    head.len()
        + tail
            .iter()
            .map(|p| {
                if padded {
                    kdbus_abi::align8_usize(p.len())
                } else {
                    p.len()
                }
            })
            .sum::<usize>()
}

/// The pieces of a datagram holding `notices` and then one request framed as
/// `wire::push_frame` frames it: `header`, the body (`head`, then the `tail` parts,
/// each padded if `padded`), padding to 8.
fn gather_request<'a>(
    g: &mut Gather<'a>,
    notices: &'a [u8],
    header: &'a ReqHeader,
    head: &'a [u8],
    tail: &[&'a [u8]],
    padded: bool,
) {
    g.push(notices);
    g.push(header.as_bytes());
    g.push(head);
    for p in tail {
        g.push(p);
        if padded {
            g.push(&ZEROS[..payload_padding(p.len())]);
        }
    }
    g.push(&ZEROS[..payload_padding(body_len(head, tail, padded))]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// The datagram a SEND goes out as, the way the client framed it before it
    /// gathered: one buffer with the notices, then `push_frame` of `encode_send`.
    fn framed_by_copy(notices: &[u8], m: &Message<'_>, send_flags: u64, id: u64) -> Vec<u8> {
        let mut body = Vec::new();
        m.encode_send(send_flags, &mut body);
        let mut out = notices.to_vec();
        let h = ReqHeader {
            cmd: cmd::SEND,
            flags: 0,
            req_id: id,
            body_len: body.len() as u64,
        };
        wire::push_frame(&mut out, &h, &[&body]);
        out
    }

    fn gathered(notices: &[u8], m: &Message<'_>, send_flags: u64, id: u64) -> Vec<u8> {
        let mut head = Vec::new();
        m.encode_send_head(send_flags, &mut head);
        let header = ReqHeader {
            cmd: cmd::SEND,
            flags: 0,
            req_id: id,
            body_len: body_len(&head, &m.payload, true) as u64,
        };
        let mut g = Gather::new();
        gather_request(&mut g, notices, &header, &head, &m.payload, true);
        g.pieces().iter().flat_map(|p| p.iter().copied()).collect()
    }

    #[test]
    fn gathered_send_is_the_copied_datagram() {
        let mut notices = Vec::new();
        wire::push_notice(&mut notices, cmd::FREE, &[7; 32]);
        let words = [1u64, 2, 3, 4, 5, 6, 7, 8];
        let data: Vec<u8> = (0..200u8).collect();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let cases: Vec<Message<'_>> = vec![
            Message::to(5),
            Message::to(5).cookie(1).payload(b"x"),
            Message::to(5)
                .cookie(2)
                .payload(&data[..3])
                .payload(&[])
                .payload(&data[..8])
                .payload(&data[..13])
                .payload(&data[..61]),
            Message::to_name("org.example.Name")
                .cookie(3)
                .expect_reply(12345)
                .payload(&data),
            Message::to(kdbus_abi::DST_ID_BROADCAST)
                .bloom_raw(1, &words)
                .payload(&data[..5])
                .fd(devnull.as_fd()),
        ];
        for (i, m) in cases.iter().enumerate() {
            for n in [&[][..], &notices[..]] {
                let want = framed_by_copy(n, m, kdbus_abi::send_flags::SYNC_REPLY, 9 + i as u64);
                let got = gathered(n, m, kdbus_abi::send_flags::SYNC_REPLY, 9 + i as u64);
                assert_eq!(got, want, "case {i}, {} notice bytes", n.len());
            }
        }
    }

    #[test]
    fn gathered_command_is_the_copied_datagram() {
        for body in [&b""[..], b"abc", b"12345678", b"123456789"] {
            let mut want = Vec::new();
            let h = ReqHeader {
                cmd: cmd::FREE,
                flags: 0,
                req_id: 4,
                body_len: body.len() as u64,
            };
            wire::push_frame(&mut want, &h, &[body]);
            let mut g = Gather::new();
            gather_request(&mut g, &[], &h, &[], &[body], false);
            let got: Vec<u8> = g.pieces().iter().flat_map(|p| p.iter().copied()).collect();
            assert_eq!(got, want);
        }
    }

    /// What `submit` writes to the socket, against the copied datagram: a message that
    /// is gathered, and one with more payload vectors than pieces (copied instead).
    #[test]
    fn submit_writes_the_copied_datagram() {
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let link = Link::new(a);
        let data: Vec<u8> = (0..100u8).collect();
        let few = Message::to(3).cookie(1).payload(&data[..7]).payload(&data);
        let mut many = Message::to(3).cookie(2);
        for i in 0..40 {
            many = many.payload(&data[..i]);
        }
        assert!(pieces(many.payload.len(), true) > MAX_PIECES);
        let mut buf = vec![0u8; 64 * 1024];
        for (i, m) in [few, many].iter().enumerate() {
            link.free_later(64 * i as u64);
            let mut notices = Vec::new();
            std::mem::swap(&mut notices, &mut link.lock().notices);
            let want = framed_by_copy(&notices, m, 0, link.lock().next_req);
            std::mem::swap(&mut notices, &mut link.lock().notices);
            link.submit(cmd::SEND, Body::Send(m, 0), &[]).unwrap();
            let (n, _) = recv_datagram(b.as_fd(), &mut buf, true).unwrap().unwrap();
            assert_eq!(&buf[..n], &want[..], "message {i}");
        }
    }

    #[test]
    fn many_payloads_do_not_fit_in_pieces() {
        let n = (MAX_PIECES - 4) / 2;
        assert!(pieces(n, true) <= MAX_PIECES);
        assert!(pieces(n + 1, true) > MAX_PIECES);
    }
}
