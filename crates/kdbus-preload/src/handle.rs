//! One kdbus handle: what an fd opened on a kdbus node is, and the ioctls on it.
//!
//! An `open()` of a node becomes a `SOCK_SEQPACKET` socket connected to the broker;
//! the fd number the caller gets *is* that socket. Its role follows kdbus's handle
//! types: a fresh handle on `control` may make a bus, one on an endpoint may say HELLO
//! (becoming a connection, with a pool) or make an endpoint; a bus or endpoint owner
//! does nothing but keep its object alive.
//!
//! An ioctl is a request and its answer (`translate` builds the one and reads the
//! other). While waiting, everything else the broker says is filed here: message
//! announcements (with their fds), retractions, loss counts, answers to requests that
//! another thread made. Only one thread reads the socket at a time; the others wait on
//! the condition variable for the reader to file what they need.
//!
//! RECV is answered from the announcements, as the client library does: the message
//! kdbus's rules pick (oldest, or lowest priority value with `USE_PRIORITY`) is
//! claimed by offset. A claim without fds needs no answer and rides along with the
//! next datagram; a message with fds is claimed synchronously, the claim carrying the
//! numbers the fds got in this process so the broker writes them into the message's
//! `FDS` item before RECV returns, where kdbus put them. What RECV does not decide
//! alone (unknown flags, items, a handle that is not a live connection) goes to the
//! broker unchanged.
//!
//! Invariant: every announcement filed and not retracted is in the broker's queue for
//! this connection, minus the claims in `notices`; the local queue is never ahead of
//! the broker, because the broker writes an announcement before it answers anything
//! the message's sender asked.

use crate::os;
use crate::translate::{self, UserMem};
use kdbus::transport::{self, Announced, Answer};
use kdbus_abi::wire::{self, MsgEvent, Record, ReqHeader};
use kdbus_abi::{cmd, item, read_struct, recv_flags, CmdFree, CmdRecv, Errno, ItemWriter, MsgInfo};
use rustix::event::{PollFd, PollFlags};
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::{Condvar, Mutex, MutexGuard};
use zerocopy::IntoBytes;

/// Largest datagram the broker sends us (it coalesces records up to about this).
const MAX_IN_DATAGRAM: usize = 256 * 1024;

/// kdbus's handle types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Opened `control`: may BUS_MAKE.
    Control,
    /// Opened a bus endpoint: may HELLO or ENDPOINT_MAKE.
    Endpoint,
    /// Made a bus or endpoint; holds it.
    Owner,
    /// Said HELLO.
    Conn,
    /// A connection after BYEBYE, or one the bus dropped.
    Gone,
}

struct State {
    role: Role,
    pool: Option<OwnedFd>,
    pool_size: u64,
    next_req: u64,
    answers: HashMap<u64, Answer>,
    /// Requests whose caller stopped waiting (a cancelled synchronous SEND): their
    /// answer is cleaned up when it comes.
    abandoned: HashSet<u64>,
    queue: VecDeque<Announced>,
    /// Someone is reading the socket; others wait on the condvar.
    reading: bool,
    /// Requests that want no answer (claims, frees), sent with the next datagram.
    notices: Vec<u8>,
    /// The broker closed the socket.
    hup: bool,
    /// Messages lost so far (the broker's running total), and how many RECV reported.
    dropped_total: u64,
    dropped_reported: u64,
    /// Slices handed to the caller that it may FREE: freeing them cannot fail, so it
    /// needs no answer.
    handed: HashSet<u64>,
    /// The datagram buffer, lent to whoever reads.
    rbuf: Vec<u8>,
    /// An activator: another connection taking its name takes its queue along, so
    /// its claims go out at once rather than with the next datagram.
    activator: bool,
}

pub struct Handle {
    /// The socket, which is also the caller's fd number.
    sock: os::Socket,
    /// The fork generation when the handle was made: if the process forked since,
    /// another process may hold the socket too, and closing it here is not the end of
    /// the handle.
    fork_gen: u64,
    /// Held while a datagram is being sent (see `send_with_notices`).
    send_lock: Mutex<()>,
    st: Mutex<State>,
    cond: Condvar,
}

impl Handle {
    pub fn new(sock: OwnedFd, role: Role) -> Handle {
        Handle {
            sock: os::Socket::new(sock),
            fork_gen: os::fork_generation(),
            send_lock: Mutex::new(()),
            st: Mutex::new(State {
                role,
                pool: None,
                pool_size: 0,
                next_req: 1,
                answers: HashMap::new(),
                abandoned: HashSet::new(),
                queue: VecDeque::new(),
                reading: false,
                notices: Vec::new(),
                hup: false,
                dropped_total: 0,
                dropped_reported: 0,
                handed: HashSet::new(),
                rbuf: Vec::new(),
                activator: false,
            }),
            cond: Condvar::new(),
        }
    }

    /// Give up the socket without closing it (its fd number now names something
    /// else: the caller closed it behind our back).
    pub fn disown(&self) {
        self.sock.disown();
    }

    /// The caller closes its fd. If nobody else can hold the socket, tell the broker
    /// and wait until it acted: closing a kdbus handle took effect before close(2)
    /// returned (the connection gone, its names released, the bus removed), and a
    /// program may look at the effects right after. A socket shared with a forked
    /// process just closes, as a shared kdbus file was only released by the last one.
    pub fn release(&self) {
        if self.fork_gen != os::fork_generation() {
            return;
        }
        {
            let g = self.lock();
            if g.hup || !matches!(g.role, Role::Conn | Role::Owner) {
                return;
            }
        }
        let body = kdbus_abi::CmdGeneric {
            size: 24,
            ..Default::default()
        };
        if let Ok(id) = self.submit(cmd::RELEASE, body.as_bytes(), &[]) {
            let _ = self.wait_answer(id, None, false);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn role(&self) -> Role {
        self.lock().role
    }

    // ------------------------------------------------------------ transport

    /// Send a request (after the queued notices); returns its id.
    fn submit(&self, c: u32, body: &[u8], fds: &[RawFd]) -> Result<u64, Errno> {
        let id = {
            let mut g = self.lock();
            g.next_req += 1;
            g.next_req - 1
        };
        let h = ReqHeader {
            cmd: c,
            flags: 0,
            req_id: id,
            body_len: body.len() as u64,
        };
        let mut frame = Vec::with_capacity(wire::REQ_HEADER_SIZE + body.len() + 8);
        wire::push_frame(&mut frame, &h, &[body]);
        self.send_with_notices(&frame, fds)?;
        Ok(id)
    }

    /// Send the queued notices (claims, frees) followed by `request` (a framed
    /// request, or nothing) in one datagram. One sender at a time, so notices reach
    /// the broker in the order they were queued (a FREE never before its CLAIM); if
    /// the send fails (a bad fd in the request, say), the notices are kept for the
    /// next one. ECONNRESET means the broker is gone.
    fn send_with_notices(&self, request: &[u8], fds: &[RawFd]) -> Result<(), Errno> {
        let _one = self.send_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = std::mem::take(&mut self.lock().notices);
        let n = out.len();
        if n == 0 && request.is_empty() {
            return Ok(());
        }
        out.extend_from_slice(request);
        let r = os::send_datagram(self.sock.as_fd(), &out, fds);
        if let Err(e) = r {
            let mut g = self.lock();
            if e == Errno::ECONNRESET {
                g.hup = true;
            } else if n > 0 {
                out.truncate(n);
                out.extend_from_slice(&g.notices);
                g.notices = out;
            }
        }
        r
    }

    fn notice(g: &mut State, c: u32, body: &[u8]) {
        wire::push_notice(&mut g.notices, c, body);
    }

    /// Wait for the answer to `id`. A `cancel` fd that becomes readable ends the wait
    /// with ECANCELED; with `interruptible` (a synchronous SEND), a signal whose
    /// handler does not ask for restarts ends it with EINTR, as in kdbus. Either way
    /// the answer, when it comes, is cleaned up.
    fn wait_answer(
        &self,
        id: u64,
        cancel: Option<RawFd>,
        interruptible: bool,
    ) -> Result<Answer, Errno> {
        let mut g = self.lock();
        loop {
            if let Some(a) = g.answers.remove(&id) {
                return Ok(a);
            }
            if g.hup {
                return Err(Errno::ECONNRESET);
            }
            if g.reading {
                // Another thread reads for us; a cancel fd of ours is looked at now
                // and then (kdbus watched it for the whole wait).
                if let Some(c) = cancel {
                    let mut p = [PollFd::from_borrowed_fd(os::borrow_fd(c), PollFlags::IN)];
                    if rustix::event::poll(&mut p, Some(&rustix::time::Timespec::default()))
                        .is_ok_and(|n| n > 0)
                    {
                        g.abandoned.insert(id);
                        return Err(Errno::ECANCELED);
                    }
                    g = self
                        .cond
                        .wait_timeout(g, std::time::Duration::from_millis(10))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                } else {
                    g = self.cond.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                continue;
            }
            g.reading = true;
            let mut buf = take_rbuf(&mut g);
            drop(g);
            let r = self.read_blocking(cancel, interruptible, &mut buf);
            g = self.lock();
            g.reading = false;
            self.cond.notify_all();
            let r = r.map(|got| got.map(|(n, fds)| dispatch(&mut g, &buf[..n], fds)));
            g.rbuf = buf;
            match r {
                Ok(_) => {}
                Err(e @ (Errno::ECANCELED | Errno::EINTR)) => {
                    g.abandoned.insert(id);
                    return Err(e);
                }
                Err(_) => g.hup = true,
            }
        }
    }

    /// Flush the notices, then wait for one datagram (or for `cancel`, or a signal).
    fn read_blocking(
        &self,
        cancel: Option<RawFd>,
        interruptible: bool,
        buf: &mut [u8],
    ) -> Result<Option<(usize, Vec<OwnedFd>)>, Errno> {
        if let Err(Errno::ECONNRESET) = self.send_with_notices(&[], &[]) {
            return Err(Errno::ECONNRESET);
        }
        loop {
            let cancel_fd = cancel.map(os::borrow_fd);
            let mut both = [
                PollFd::new(&self.sock, PollFlags::IN),
                PollFd::from_borrowed_fd(cancel_fd.unwrap_or(self.sock.as_fd()), PollFlags::IN),
            ];
            let pfds = &mut both[..1 + usize::from(cancel_fd.is_some())];
            match rustix::event::poll(pfds, None) {
                Ok(_) => {}
                // kdbus restarted the wait after a handler with SA_RESTART, and said
                // EINTR otherwise; we cannot tell which signal it was, so a handler
                // without SA_RESTART anywhere counts (docs/abi.md).
                Err(rustix::io::Errno::INTR) if interruptible && !os::signals_restart() => {
                    return Err(Errno::EINTR)
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(Errno(e.raw_os_error())),
            }
            if pfds.get(1).is_some_and(|p| !p.revents().is_empty()) {
                return Err(Errno::ECANCELED);
            }
            if pfds[0].revents().is_empty() {
                continue;
            }
            return transport::recv_datagram(self.sock.as_fd(), buf, false);
        }
    }

    /// File whatever the broker sent, without blocking. Nothing happens if another
    /// thread is reading: it files for us.
    fn drain(&self) {
        // Notices go out even while another thread reads (it may wait long).
        let mut dead = self.send_with_notices(&[], &[]) == Err(Errno::ECONNRESET);
        let mut g = self.lock();
        if g.reading || g.hup {
            return;
        }
        g.reading = true;
        let mut buf = take_rbuf(&mut g);
        drop(g);
        while !dead {
            match transport::recv_datagram(self.sock.as_fd(), &mut buf, false) {
                Ok(Some((n, fds))) => dispatch(&mut self.lock(), &buf[..n], fds),
                Ok(None) => break,
                Err(_) => dead = true,
            }
        }
        let mut g = self.lock();
        g.rbuf = buf;
        g.hup |= dead;
        g.reading = false;
        self.cond.notify_all();
    }

    // ------------------------------------------------------------ ioctl

    /// Run kdbus command `c` with its structure at `arg` in `mem`.
    pub fn ioctl(&self, c: u32, mem: &mut impl UserMem, arg: u64) -> Result<(), Errno> {
        if c == cmd::RECV {
            if let Some(r) = self.recv_local(mem, arg) {
                return r;
            }
        }
        let enc = translate::encode_command(c, mem, arg)?;
        if c == cmd::FREE && self.free_local(&enc.body) {
            return Ok(());
        }
        let cancel = enc.cancel_fd.filter(|_| enc.sync);
        // A cancel fd that is not open cannot be waited on (kdbus: EBADF).
        if let Some(fd) = cancel {
            rustix::io::fcntl_getfd(os::borrow_fd(fd)).map_err(|_| Errno::EBADF)?;
        }
        let id = self.submit(c, &enc.body, &enc.fds)?;
        let a = self.wait_answer(id, cancel, enc.sync)?;
        let flags: u64 = enc.body.get(8..).and_then(read_struct).unwrap_or(0);
        let ok = a.error == 0;
        {
            let mut g = self.lock();
            if ok {
                self.after_success(&mut g, c, &a, flags);
            } else if a.error == Errno::ECONNRESET.0 && g.role == Role::Conn {
                g.role = Role::Gone;
            }
        }
        for (off, bytes) in
            translate::writeback_fields(c, &a.body, flags & kdbus_abi::FLAG_NEGOTIATE != 0, ok)
        {
            mem.write(arg + off as u64, bytes)?;
        }
        if ok {
            Ok(())
        } else {
            Err(Errno(a.error))
        }
    }

    fn after_success(&self, g: &mut State, c: u32, a: &Answer, flags: u64) {
        if flags & kdbus_abi::FLAG_NEGOTIATE != 0 {
            return;
        }
        match c {
            cmd::HELLO => {
                g.role = Role::Conn;
                g.activator = flags & kdbus_abi::hello_flags::ACTIVATOR != 0;
                g.pool_size = a.body.get(56..).and_then(read_struct).unwrap_or(0);
                g.pool = a.fds.last().and_then(|f| f.try_clone().ok());
            }
            cmd::BUS_MAKE | cmd::ENDPOINT_MAKE => g.role = Role::Owner,
            cmd::BYEBYE => g.role = Role::Gone,
            cmd::RECV => {
                // The broker picked (a RECV we could not answer here): forget its
                // announcement. Its fds travelled with it; without a claim naming
                // them, the pool holds -1 for each, so they are closed.
                let wb: Option<CmdRecv> = read_struct(&a.body);
                if let Some(wb) = wb.filter(|_| flags & recv_flags::PEEK == 0) {
                    g.queue.retain(|m| m.ev.offset != wb.msg.offset);
                    if flags & recv_flags::DROP == 0 {
                        g.handed.insert(wb.msg.offset);
                    }
                }
            }
            _ => {}
        }
        if let Some(off) = translate::answer_slices(c, &a.body) {
            g.handed.insert(off);
        }
    }

    /// FREE of a slice we handed out cannot fail: send it with the next datagram.
    fn free_local(&self, body: &[u8]) -> bool {
        let Some(f) = read_struct::<CmdFree>(body) else {
            return false;
        };
        if f.size != std::mem::size_of::<CmdFree>() as u64 || f.flags != 0 {
            return false;
        }
        let mut g = self.lock();
        if g.role != Role::Conn || !g.handed.remove(&f.offset) {
            return false;
        }
        Self::notice(&mut g, cmd::FREE, body);
        true
    }

    /// RECV from the announcements; `None` when the broker has to decide.
    fn recv_local(&self, mem: &mut impl UserMem, arg: u64) -> Option<Result<(), Errno>> {
        if arg == 0 || !arg.is_multiple_of(8) {
            return Some(Err(Errno::EFAULT));
        }
        let mut b = Vec::with_capacity(64);
        let size = mem.read_u64(arg).ok()?;
        if size != std::mem::size_of::<CmdRecv>() as u64 {
            return None;
        }
        mem.read_into(arg, size as usize, &mut b).ok()?;
        let c: CmdRecv = read_struct(&b)?;
        let known = recv_flags::PEEK | recv_flags::DROP | recv_flags::USE_PRIORITY;
        let drop_prio = recv_flags::DROP | recv_flags::USE_PRIORITY;
        if c.flags & !known != 0 || c.flags & drop_prio == drop_prio {
            return None;
        }
        self.drain();
        loop {
            let mut g = self.lock();
            if g.role != Role::Conn || g.hup {
                return None;
            }
            let mut wb = c;
            wb.return_flags = 0;
            // Reported only when this RECV returns (a retry below keeps the count).
            let seen = g.dropped_total;
            wb.dropped_msgs = seen - g.dropped_reported;
            g.dropped_reported = seen;
            if wb.dropped_msgs > 0 {
                wb.return_flags |= recv_flags::RETURN_DROPPED_MSGS;
            }
            // kdbus's "no message" location: the end of the pool, empty.
            wb.msg = MsgInfo {
                offset: g.pool_size,
                msg_size: 0,
                return_flags: 0,
            };
            let Some(idx) = pick(&g.queue, c.flags, c.priority) else {
                drop(g);
                return Some(recv_writeback(mem, arg, &wb).and(Err(Errno::EAGAIN)));
            };
            let ev = g.queue[idx].ev;
            if c.flags & recv_flags::PEEK != 0 {
                wb.msg.offset = ev.offset;
                wb.msg.msg_size = ev.msg_size;
                drop(g);
                return Some(recv_writeback(mem, arg, &wb));
            }
            let Some(m) = g.queue.remove(idx) else {
                continue;
            };
            if c.flags & recv_flags::DROP != 0 {
                Self::notice(&mut g, cmd::RECV, &claim_body(&ev, recv_flags::DROP, &[]));
                self.flush_if_activator(g);
                drop(m.fds);
                return Some(recv_writeback(mem, arg, &wb));
            }
            if m.fds.is_empty() {
                Self::notice(&mut g, cmd::RECV, &claim_body(&ev, 0, &[]));
                g.handed.insert(ev.offset);
                self.flush_if_activator(g);
                wb.msg.offset = ev.offset;
                wb.msg.msg_size = ev.msg_size;
                return Some(recv_writeback(mem, arg, &wb));
            }
            // Fds: the broker writes their numbers in this process into the slice
            // before we return it.
            drop(g);
            let numbers: Vec<i32> = m.fds.iter().map(os::raw).collect();
            let body = claim_body(&ev, 0, &numbers);
            let answer = self
                .submit(cmd::RECV, &body, &[])
                .and_then(|id| self.wait_answer(id, None, false));
            match answer {
                Ok(a) if a.error == 0 => {
                    // The numbers are the caller's now (kdbus installed them).
                    for f in m.fds {
                        let _ = f.into_raw_fd();
                    }
                    self.lock().handed.insert(ev.offset);
                    wb.msg.offset = ev.offset;
                    wb.msg.msg_size = ev.msg_size;
                    return Some(recv_writeback(mem, arg, &wb));
                }
                // The message moved on (its name fell back to an activator): pick
                // again, still owing the losses.
                Ok(_) => {
                    let mut g = self.lock();
                    g.dropped_reported = g.dropped_reported.min(seen - wb.dropped_msgs);
                    continue;
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Send an activator's claims now (see `State::activator`).
    fn flush_if_activator(&self, g: MutexGuard<'_, State>) {
        if !g.activator || g.notices.is_empty() {
            return;
        }
        drop(g);
        let _ = self.send_with_notices(&[], &[]);
    }

    // ------------------------------------------------------------ poll and mmap

    /// Another thread is reading the socket: what it files does not show on the
    /// socket, so a poll must look again soon rather than sleep on the socket.
    pub fn busy(&self) -> bool {
        self.lock().reading
    }

    /// What kdbus's poll reported for this handle, after filing what the broker sent.
    pub fn revents(&self) -> i16 {
        self.drain();
        let g = self.lock();
        if g.role != Role::Conn || g.hup {
            return libc::POLLERR | libc::POLLHUP;
        }
        let mut m = libc::POLLOUT | libc::POLLWRNORM;
        if !g.queue.is_empty() || g.dropped_total > g.dropped_reported {
            m |= libc::POLLIN | libc::POLLRDNORM;
        }
        m
    }

    /// The fd to map instead of this handle: the pool, read-only, as kdbus allowed.
    pub fn mmap_target(&self, len: usize, prot: i32) -> Result<RawFd, Errno> {
        let g = self.lock();
        let pool = g.pool.as_ref().ok_or(Errno::EBADFD)?;
        if prot & libc::PROT_WRITE != 0 {
            return Err(Errno::EPERM);
        }
        if len as u64 > g.pool_size {
            return Err(Errno::EFAULT);
        }
        Ok(os::raw(pool))
    }

    pub fn socket(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// kdbus's choice: the oldest message, or with `USE_PRIORITY` the one with the
/// lowest priority value (oldest first among equals) if it is at most `priority`.
fn pick(queue: &VecDeque<Announced>, flags: u64, priority: i64) -> Option<usize> {
    if flags & recv_flags::USE_PRIORITY == 0 {
        return (!queue.is_empty()).then_some(0);
    }
    let (i, best) = queue
        .iter()
        .enumerate()
        .min_by_key(|(i, a)| (a.ev.priority, *i))?;
    (best.ev.priority <= priority).then_some(i)
}

/// A CLAIM of the message at `ev.offset`, with the receiver's fd numbers if any.
fn claim_body(ev: &MsgEvent, flags: u64, fd_numbers: &[i32]) -> Vec<u8> {
    let c = CmdRecv {
        size: 0,
        flags: recv_flags::CLAIM | flags,
        msg: MsgInfo {
            offset: ev.offset,
            msg_size: ev.msg_size,
            return_flags: 0,
        },
        ..Default::default()
    };
    let mut body = c.as_bytes().to_vec();
    if !fd_numbers.is_empty() {
        ItemWriter::new(&mut body).push(item::FDS, fd_numbers.as_bytes());
    }
    let size = body.len() as u64;
    body[..8].copy_from_slice(&size.to_ne_bytes());
    body
}

fn recv_writeback(mem: &mut impl UserMem, arg: u64, wb: &CmdRecv) -> Result<(), Errno> {
    // return_flags, then dropped_msgs and msg, as kdbus wrote them.
    let b = wb.as_bytes();
    mem.write(arg + 16, &b[16..24])?;
    mem.write(arg + 32, &b[32..64])
}

/// File what one datagram carried.
fn dispatch(g: &mut State, data: &[u8], fds: Vec<OwnedFd>) {
    let mut fds = fds.into_iter();
    for (rec, n_fds) in wire::records(data) {
        let mine: Vec<OwnedFd> = fds.by_ref().take(n_fds).collect();
        match rec {
            Record::Reply { req_id, body, .. } if g.abandoned.remove(&req_id) => {
                // A cancelled synchronous SEND: give back the reply's slice.
                if let Some(off) = translate::answer_slices(cmd::SEND, body) {
                    let f = CmdFree {
                        size: std::mem::size_of::<CmdFree>() as u64,
                        offset: off,
                        ..Default::default()
                    };
                    Handle::notice(g, cmd::FREE, f.as_bytes());
                }
            }
            Record::Reply {
                req_id,
                error,
                body,
            } => {
                g.answers.insert(req_id, Answer::new(error, body, mine));
            }
            Record::Msg(ev) => {
                g.dropped_total = g.dropped_total.max(ev.dropped_msgs);
                g.queue.push_back(Announced { ev, fds: mine });
            }
            Record::Retract(offset) => g.queue.retain(|a| a.ev.offset != offset),
            Record::Dropped(total) => g.dropped_total = g.dropped_total.max(total),
            // The shim's SENDs all wait for their answer (the ioctl returns it).
            Record::SendFailed { .. } | Record::Unknown => {}
        }
    }
}

fn take_rbuf(g: &mut State) -> Vec<u8> {
    let mut b = std::mem::take(&mut g.rbuf);
    if b.len() < MAX_IN_DATAGRAM {
        b.resize(MAX_IN_DATAGRAM, 0);
    }
    b
}
