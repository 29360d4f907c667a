//! Connections: HELLO, commands, and receiving out of the pool.

use crate::error::{Error, Result};
use crate::message::Message;
use crate::sys::PoolMap;
use crate::transport::{recv_datagram, send_datagram, Announced, Answer};
use kdbus_abi::items::ItemIter;
use kdbus_abi::wire::{self, Frames, RecHeader, Record, ReqHeader};
use kdbus_abi::{
    attach, cmd, hello_flags, item, read_struct, recv_flags, send_flags, BloomParameter, CmdFree,
    CmdGeneric, CmdHello, CmdInfo, CmdList, CmdMatch, CmdRecv, CmdSend, Errno, Info, ItemWriter,
    Msg, Vec_,
};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;
use zerocopy::IntoBytes;

/// Largest datagram the broker sends (plus slack).
const MAX_IN_DATAGRAM: usize = 128 * 1024;

/// A socket that speaks the request/record framing. Used directly for control and
/// bus-owner handles, and inside [`Connection`].
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

/// Options of HELLO.
#[derive(Clone, Debug)]
pub struct HelloOptions {
    pub flags: u64,
    pub attach_flags_send: u64,
    pub attach_flags_recv: u64,
    pub pool_size: u64,
    pub description: Option<String>,
    /// The name of an activator or policy holder.
    pub name: Option<String>,
}

impl Default for HelloOptions {
    fn default() -> Self {
        HelloOptions {
            flags: hello_flags::ACCEPT_FD,
            attach_flags_send: attach::ANY,
            attach_flags_recv: 0,
            pool_size: crate::DEFAULT_POOL_SIZE,
            description: None,
            name: None,
        }
    }
}

impl HelloOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn flags(mut self, f: u64) -> Self {
        self.flags = f;
        self
    }
    pub fn attach_recv(mut self, f: u64) -> Self {
        self.attach_flags_recv = f;
        self
    }
    pub fn attach_send(mut self, f: u64) -> Self {
        self.attach_flags_send = f;
        self
    }
    pub fn pool_size(mut self, s: u64) -> Self {
        self.pool_size = s;
        self
    }
    pub fn description(mut self, d: &str) -> Self {
        self.description = Some(d.to_owned());
        self
    }
    /// An activator for `name` (privileged): holds the name for a service not yet
    /// running; messages to the name queue here until the service takes it.
    pub fn activator(mut self, name: &str) -> Self {
        self.flags |= hello_flags::ACTIVATOR;
        self.name = Some(name.to_owned());
        self
    }
    /// A monitor (privileged): sees a copy of every unicast on the bus, and the
    /// broadcasts its matches take; invisible to everyone else.
    pub fn monitor(mut self) -> Self {
        self.flags |= hello_flags::MONITOR;
        self
    }
    /// A policy holder for `name` (privileged; `a.b.*` wildcards allowed).
    pub fn policy_holder(mut self, name: &str) -> Self {
        self.flags = (self.flags & !hello_flags::ACCEPT_FD) | hello_flags::POLICY_HOLDER;
        self.name = Some(name.to_owned());
        self
    }

    /// Encode HELLO.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let h = CmdHello {
            flags: self.flags,
            attach_flags_send: self.attach_flags_send,
            attach_flags_recv: self.attach_flags_recv,
            pool_size: self.pool_size,
            ..Default::default()
        };
        out.extend_from_slice(h.as_bytes());
        let mut w = ItemWriter::new(&mut out);
        if let Some(d) = &self.description {
            w.push_str(item::CONN_DESCRIPTION, d);
        }
        if let Some(n) = &self.name {
            w.push_str(item::NAME, n);
        }
        let size = out.len() as u64;
        out[..8].copy_from_slice(&size.to_ne_bytes());
        out
    }
}

/// What the broker told us about a connection (CONN_INFO, LIST).
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    pub id: u64,
    pub flags: u64,
    pub description: Option<String>,
    pub uid: Option<u64>,
    pub gid: Option<u64>,
    pub pid: Option<u64>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    /// Names owned (CONN_INFO with NAMES), or the one name of a LIST record, with flags.
    pub names: Vec<(String, u64)>,
    /// Raw items, for callers that want more.
    pub items: Vec<(u64, Vec<u8>)>,
}

fn parse_info(bytes: &[u8]) -> Option<(ConnInfo, usize)> {
    let info: Info = read_struct(bytes)?;
    let size = usize::try_from(info.size).ok()?;
    let items = bytes.get(24..size)?;
    let mut ci = ConnInfo {
        id: info.id,
        flags: info.flags,
        ..Default::default()
    };
    for it in ItemIter::received(items).flatten() {
        match it.type_ {
            item::CONN_DESCRIPTION => ci.description = it.as_str().ok().map(str::to_owned),
            item::CREDS => {
                let c: Option<kdbus_abi::Creds> = read_struct(it.payload);
                ci.uid = c.map(|c| c.uid);
                ci.gid = c.map(|c| c.gid);
            }
            item::PIDS => ci.pid = read_struct::<kdbus_abi::Pids>(it.payload).map(|p| p.pid),
            item::PID_COMM => ci.comm = it.as_str().ok().map(str::to_owned),
            item::EXE => ci.exe = it.as_str().ok().map(str::to_owned),
            item::OWNED_NAME => {
                let flags: u64 = read_struct(it.payload).unwrap_or_default();
                let name = it.payload.get(8..).map(|p| kdbus_abi::Item {
                    type_: it.type_,
                    payload: p,
                });
                if let Some(n) = name.and_then(|n| n.as_str().ok()) {
                    ci.names.push((n.to_owned(), flags));
                }
            }
            _ => {}
        }
        ci.items.push((it.type_, it.payload.to_vec()));
    }
    Some((ci, kdbus_abi::align8_usize(size)))
}

#[derive(Default)]
struct Inner {
    next_req: u64,
    answers: HashMap<u64, Answer>,
    queue: VecDeque<Announced>,
    /// Someone is blocked reading the socket; others wait on the condvar.
    reading: bool,
    /// Requests that want no answer (claims, frees), sent with the next datagram.
    notices: Vec<u8>,
    dead: Option<Errno>,
    dropped_msgs: u64,
    /// NAME_RELEASEs in flight. The broker may take back messages announced to us
    /// (those addressed to the name, when it falls back to its activator); until it
    /// has answered, we hand out nothing, so nothing is received twice.
    releasing: u32,
    /// The datagram buffer, lent to whoever reads.
    rbuf: Vec<u8>,
}

impl Inner {
    fn take_rbuf(&mut self) -> Vec<u8> {
        let mut b = std::mem::take(&mut self.rbuf);
        if b.len() < MAX_IN_DATAGRAM {
            b.resize(MAX_IN_DATAGRAM, 0);
        }
        b
    }
}

/// A connection to a bus.
pub struct Connection {
    fd: OwnedFd,
    pool: PoolMap,
    id: u64,
    bus_flags: u64,
    id128: [u8; 16],
    bloom: BloomParameter,
    inner: Mutex<Inner>,
    cond: Condvar,
}

impl Connection {
    /// Connect to a bus endpoint and say HELLO.
    pub fn hello(endpoint: impl AsRef<Path>, opts: &HelloOptions) -> Result<Connection> {
        Self::hello_raw(endpoint, &opts.encode())
    }

    /// HELLO with a hand-made command body (tests of the error paths).
    pub fn hello_raw(endpoint: impl AsRef<Path>, body: &[u8]) -> Result<Connection> {
        let t = Transport::connect(endpoint.as_ref())?;
        let (e, answer, mut fds) = t.request(cmd::HELLO, body, &[])?;
        if e != 0 {
            return Err(Error::Bus(Errno(e)));
        }
        let h: CmdHello = read_struct(&answer).ok_or(Error::Protocol("short HELLO answer"))?;
        let pool_fd = fds.pop().ok_or(Error::Protocol("HELLO without pool"))?;
        let pool = PoolMap::map(&pool_fd, h.pool_size as usize)?;
        let mut bloom = BloomParameter::default();
        if let Some(items) = pool.slice(h.offset, h.items_size) {
            for it in ItemIter::received(items).flatten() {
                if it.type_ == item::BLOOM_PARAMETER {
                    bloom = read_struct(it.payload).unwrap_or_default();
                }
            }
        }
        let conn = Connection {
            fd: t.fd,
            pool,
            id: h.id,
            bus_flags: h.bus_flags,
            id128: h.id128,
            bloom,
            inner: Mutex::new(Inner {
                next_req: 1,
                ..Default::default()
            }),
            cond: Condvar::new(),
        };
        // HELLO's items slice (the bloom parameters) is ours to free.
        conn.free_later(h.offset);
        Ok(conn)
    }

    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn bus_flags(&self) -> u64 {
        self.bus_flags
    }
    pub fn bus_id128(&self) -> [u8; 16] {
        self.id128
    }
    pub fn bloom(&self) -> BloomParameter {
        self.bloom
    }
    /// The receive pool, as mapped (read-only).
    pub fn pool(&self) -> &PoolMap {
        &self.pool
    }
    /// Readable when the broker has something for us: poll it in an event loop, then
    /// call [`Connection::recv`] until it says EAGAIN.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue_notice(&self, c: u32, body: &[u8]) {
        wire::push_notice(&mut self.lock().notices, c, body);
    }

    /// Free a slice with the next datagram we write anyway.
    fn free_later(&self, offset: u64) {
        let c = CmdFree {
            size: std::mem::size_of::<CmdFree>() as u64,
            offset,
            ..Default::default()
        };
        self.queue_notice(cmd::FREE, c.as_bytes());
    }

    /// Send pending notices now (they otherwise ride along with the next datagram).
    pub fn flush(&self) -> Result<()> {
        let notices = std::mem::take(&mut self.lock().notices);
        if notices.is_empty() {
            return Ok(());
        }
        Ok(send_datagram(self.fd.as_fd(), &notices, &[])?)
    }

    /// Send a request; returns its id.
    fn submit(&self, c: u32, body_parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> Result<u64> {
        let mut out;
        let id;
        {
            let mut g = self.lock();
            if let Some(e) = g.dead {
                return Err(Error::Bus(e));
            }
            id = g.next_req;
            g.next_req += 1;
            out = std::mem::take(&mut g.notices);
        }
        let len: usize = body_parts.iter().map(|p| p.len()).sum();
        let h = ReqHeader {
            cmd: c,
            flags: 0,
            req_id: id,
            body_len: len as u64,
        };
        wire::push_frame(&mut out, &h, body_parts);
        send_datagram(self.fd.as_fd(), &out, fds)?;
        Ok(id)
    }

    /// Run a command and wait for its answer: `(errno, write-back body, fds)`.
    pub fn request(
        &self,
        c: u32,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(i32, Vec<u8>, Vec<OwnedFd>)> {
        let id = self.submit(c, &[body], fds)?;
        let a = self
            .wait(|g| g.answers.remove(&id), None)?
            .ok_or(Error::Bus(Errno::ETIMEDOUT))?;
        Ok((a.error, a.body, a.fds))
    }

    /// Run a command; errno to `Err`, write-back body to `Ok`.
    fn command(&self, c: u32, body: &[u8]) -> Result<Vec<u8>> {
        let (e, b, _) = self.request(c, body, &[])?;
        if e != 0 {
            return Err(Error::Bus(Errno(e)));
        }
        Ok(b)
    }

    /// Wait until `check` finds what we wait for, reading the socket ourselves when
    /// nobody else is. `None` after `timeout`.
    fn wait<T>(
        &self,
        mut check: impl FnMut(&mut Inner) -> Option<T>,
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
            let notices = std::mem::take(&mut g.notices);
            let mut buf = g.take_rbuf();
            drop(g);
            let r = self.read_some(&notices, left, &mut buf);
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
        notices: &[u8],
        left: Option<Duration>,
        buf: &mut [u8],
    ) -> Result<Option<(usize, Vec<OwnedFd>)>> {
        if !notices.is_empty() {
            send_datagram(self.fd.as_fd(), notices, &[])?;
        }
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
    fn poll_socket(&self) -> Result<()> {
        let mut g = self.lock();
        if g.reading {
            return Ok(());
        }
        g.reading = true;
        let notices = std::mem::take(&mut g.notices);
        let mut buf = g.take_rbuf();
        drop(g);
        let mut result = Ok(());
        if !notices.is_empty() {
            result = send_datagram(self.fd.as_fd(), &notices, &[]);
        }
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

    // ------------------------------------------------------------ messages

    /// Send a message (SEND); returns when the broker accepted it.
    pub fn send(&self, msg: &Message<'_>) -> Result<()> {
        let mut body = Vec::new();
        msg.encode_send(0, &mut body);
        let (e, _, _) = self.request(cmd::SEND, &body, &msg.fds)?;
        if e != 0 {
            return Err(Error::Bus(Errno(e)));
        }
        Ok(())
    }

    /// Send a SEND request with a hand-made body (tests of the error paths).
    pub fn send_raw(&self, body: &[u8], fds: &[BorrowedFd<'_>]) -> Result<Vec<u8>> {
        let (e, b, _) = self.request(cmd::SEND, body, fds)?;
        if e != 0 {
            return Err(Error::Bus(Errno(e)));
        }
        Ok(b)
    }

    /// A synchronous call: send `msg` expecting a reply within `timeout`, and wait for
    /// the reply (which never enters the queue).
    pub fn call(&self, msg: Message<'_>, timeout: Duration) -> Result<Received<'_>> {
        let msg = msg.expect_reply(crate::monotonic_ns() + timeout.as_nanos() as u64);
        let mut body = Vec::new();
        msg.encode_send(send_flags::SYNC_REPLY, &mut body);
        let (e, answer, fds) = self.request(cmd::SEND, &body, &msg.fds)?;
        if e != 0 {
            return Err(Error::Bus(Errno(e)));
        }
        let wb: CmdSend = read_struct(&answer).ok_or(Error::Protocol("short SEND answer"))?;
        self.received(wb.reply.offset, wb.reply.msg_size, fds, true)
    }

    fn received(
        &self,
        offset: u64,
        size: u64,
        fds: Vec<OwnedFd>,
        free_on_drop: bool,
    ) -> Result<Received<'_>> {
        let bytes = self
            .pool
            .slice(offset, size)
            .ok_or(Error::Protocol("slice outside pool"))?;
        let header: Msg = read_struct(bytes).ok_or(Error::Protocol("short message"))?;
        Ok(Received {
            conn: self,
            offset,
            bytes,
            header,
            fds,
            free_on_drop,
        })
    }

    /// Take the next message (FIFO), or EAGAIN.
    pub fn recv(&self) -> Result<Received<'_>> {
        self.recv_with(0, 0)
    }

    /// Wait up to `timeout` (forever if `None`) for the next message.
    pub fn recv_timeout(&self, timeout: Option<Duration>) -> Result<Received<'_>> {
        let a = self
            .wait(
                |g| {
                    if g.releasing > 0 || g.queue.is_empty() {
                        None
                    } else {
                        claim_locked(g, 0, false)
                    }
                },
                timeout,
            )?
            .ok_or(Error::Bus(Errno::EAGAIN))?;
        self.received(a.ev.offset, a.ev.msg_size, a.fds, true)
    }

    /// RECV with kdbus flags (PEEK, DROP, USE_PRIORITY) against the local queue.
    /// PEEK leaves the message queued; DROP discards it (its sender learns REPLY_DEAD if
    /// it waited for an answer) and returns a view holding only its header.
    pub fn recv_with(&self, flags: u64, priority: i64) -> Result<Received<'_>> {
        if flags & !(recv_flags::PEEK | recv_flags::DROP | recv_flags::USE_PRIORITY) != 0 {
            return Err(Error::Bus(Errno::EINVAL));
        }
        self.poll_socket()?;
        let mut g = self.lock();
        if g.queue.is_empty() || g.releasing > 0 {
            return Err(Error::Bus(Errno::EAGAIN));
        }
        let idx = if flags & recv_flags::USE_PRIORITY != 0 {
            let best = g
                .queue
                .iter()
                .enumerate()
                .min_by_key(|(i, a)| (a.ev.priority, *i))
                .map(|(i, _)| i);
            match best {
                Some(i) if g.queue[i].ev.priority <= priority => i,
                _ => return Err(Error::Bus(Errno::EAGAIN)),
            }
        } else {
            0
        };
        if flags & recv_flags::PEEK != 0 {
            let ev = g.queue[idx].ev;
            drop(g);
            return self.received(ev.offset, ev.msg_size, Vec::new(), false);
        }
        if flags & recv_flags::DROP != 0 {
            // The slice goes back to the broker once the claim is out: copy the header
            // first.
            let ev = g.queue[idx].ev;
            let header = self
                .pool
                .slice(ev.offset, ev.msg_size)
                .and_then(read_struct::<Msg>)
                .ok_or(Error::Protocol("short message"))?;
            claim_locked(&mut g, idx, true);
            return Ok(Received {
                conn: self,
                offset: ev.offset,
                bytes: &[],
                header,
                fds: Vec::new(),
                free_on_drop: false,
            });
        }
        let a = claim_locked(&mut g, idx, false).ok_or(Error::Bus(Errno::EAGAIN))?;
        drop(g);
        self.received(a.ev.offset, a.ev.msg_size, a.fds, true)
    }

    /// RECV executed by the broker (it picks the message); for callers that want
    /// kdbus's exact semantics over the wire. Returns the write-back.
    pub fn recv_broker(&self, flags: u64, priority: i64) -> Result<CmdRecv> {
        let c = CmdRecv {
            size: std::mem::size_of::<CmdRecv>() as u64,
            flags,
            priority,
            ..Default::default()
        };
        let b = self.command(cmd::RECV, c.as_bytes())?;
        let wb: CmdRecv = read_struct(&b).ok_or(Error::Protocol("short RECV answer"))?;
        if flags & recv_flags::PEEK == 0 {
            let mut g = self.lock();
            g.queue.retain(|a| a.ev.offset != wb.msg.offset);
        }
        Ok(wb)
    }

    /// Messages announced and not yet taken.
    pub fn queued(&self) -> usize {
        let _ = self.poll_socket();
        self.lock().queue.len()
    }

    /// Broadcasts lost for lack of pool space, as of the last message taken.
    pub fn dropped_msgs(&self) -> u64 {
        self.lock().dropped_msgs
    }

    /// FREE a pool slice and wait for the answer.
    pub fn free(&self, offset: u64) -> Result<()> {
        let c = CmdFree {
            size: 32,
            flags: 0,
            return_flags: 0,
            offset,
        };
        self.command(cmd::FREE, c.as_bytes()).map(|_| ())
    }

    // ------------------------------------------------------------ other commands

    /// BYEBYE: leave the bus (EBUSY while messages are queued).
    pub fn byebye(&self) -> Result<()> {
        let c = CmdGeneric {
            size: 24,
            flags: 0,
            return_flags: 0,
        };
        self.command(cmd::BYEBYE, c.as_bytes()).map(|_| ())
    }

    /// CONN_INFO for a unique id (`attach` selects metadata).
    pub fn info(&self, id: u64, attach: u64) -> Result<ConnInfo> {
        let c = CmdInfo {
            size: std::mem::size_of::<CmdInfo>() as u64,
            id,
            attach_flags: attach,
            ..Default::default()
        };
        self.info_cmd(cmd::CONN_INFO, c.as_bytes())
    }

    /// CONN_INFO / BUS_CREATOR_INFO with a hand-made body.
    pub fn info_cmd(&self, c: u32, body: &[u8]) -> Result<ConnInfo> {
        let b = self.command(c, body)?;
        let wb: CmdInfo = read_struct(&b).ok_or(Error::Protocol("short INFO answer"))?;
        let bytes = self
            .pool
            .slice(wb.offset, wb.info_size)
            .ok_or(Error::Protocol("info outside pool"))?;
        let ci = parse_info(bytes).map(|(c, _)| c);
        self.free_later(wb.offset);
        ci.ok_or(Error::Protocol("bad info record"))
    }

    /// BUS_CREATOR_INFO: `id` is the bus id, `flags` the bus flags.
    pub fn bus_creator_info(&self, attach: u64) -> Result<ConnInfo> {
        let c = CmdInfo {
            size: std::mem::size_of::<CmdInfo>() as u64,
            attach_flags: attach,
            ..Default::default()
        };
        self.info_cmd(cmd::BUS_CREATOR_INFO, c.as_bytes())
    }

    /// LIST with `flags` (kdbus_abi::list_flags).
    pub fn list(&self, flags: u64) -> Result<Vec<ConnInfo>> {
        let c = CmdList {
            size: std::mem::size_of::<CmdList>() as u64,
            flags,
            ..Default::default()
        };
        let b = self.command(cmd::LIST, c.as_bytes())?;
        let wb: CmdList = read_struct(&b).ok_or(Error::Protocol("short LIST answer"))?;
        let mut out = Vec::new();
        if let Some(mut bytes) = self.pool.slice(wb.offset, wb.list_size) {
            while let Some((ci, used)) = parse_info(bytes) {
                out.push(ci);
                bytes = bytes.get(used..).unwrap_or(&[]);
            }
        }
        self.free_later(wb.offset);
        Ok(out)
    }

    /// NAME_ACQUIRE with kdbus_abi::name_flags; returns the return flags (IN_QUEUE
    /// when queued behind the current owner).
    pub fn acquire_name(&self, name: &str, flags: u64) -> Result<u64> {
        let b = self.command(cmd::NAME_ACQUIRE, &name_cmd(name, flags))?;
        let wb: CmdGeneric = read_struct(&b).ok_or(Error::Protocol("short ACQUIRE answer"))?;
        Ok(wb.return_flags)
    }

    /// NAME_RELEASE. Messages addressed to the name that we were told about but had
    /// not taken may go back to the name's activator; this returns after the broker
    /// said so.
    pub fn release_name(&self, name: &str) -> Result<()> {
        self.lock().releasing += 1;
        let r = self.command(cmd::NAME_RELEASE, &name_cmd(name, 0));
        self.lock().releasing -= 1;
        self.cond.notify_all();
        r.map(|_| ())
    }

    /// CONN_INFO of the owner of a well-known name.
    pub fn info_by_name(&self, name: &str, attach: u64) -> Result<ConnInfo> {
        let c = CmdInfo {
            size: 0,
            attach_flags: attach,
            ..Default::default()
        };
        let mut body = c.as_bytes().to_vec();
        ItemWriter::new(&mut body).push_str(item::NAME, name);
        let size = body.len() as u64;
        body[..8].copy_from_slice(&size.to_ne_bytes());
        self.info_cmd(cmd::CONN_INFO, &body)
    }

    /// UPDATE the metadata this connection sends and wants to receive.
    pub fn update_attach(&self, send: Option<u64>, recv: Option<u64>) -> Result<()> {
        let mut body = CmdGeneric::default().as_bytes().to_vec();
        let mut w = ItemWriter::new(&mut body);
        if let Some(s) = send {
            w.push_u64(item::ATTACH_FLAGS_SEND, s);
        }
        if let Some(r) = recv {
            w.push_u64(item::ATTACH_FLAGS_RECV, r);
        }
        let size = body.len() as u64;
        body[..8].copy_from_slice(&size.to_ne_bytes());
        self.command(cmd::UPDATE, &body).map(|_| ())
    }

    /// MATCH_ADD with raw rule items.
    pub fn match_add(&self, cookie: u64, flags: u64, rules: &[u8]) -> Result<()> {
        let c = CmdMatch {
            size: (32 + rules.len()) as u64,
            flags,
            return_flags: 0,
            cookie,
        };
        let body = [c.as_bytes(), rules].concat();
        self.command(cmd::MATCH_ADD, &body).map(|_| ())
    }

    /// Install a match entry under `cookie` (REPLACE: instead of those with the cookie).
    pub fn add_match(&self, cookie: u64, rule: &crate::MatchRule, replace: bool) -> Result<()> {
        let flags = if replace {
            kdbus_abi::match_flags::REPLACE
        } else {
            0
        };
        self.match_add(cookie, flags, rule.items())
    }

    /// MATCH_REMOVE by cookie.
    pub fn match_remove(&self, cookie: u64) -> Result<()> {
        let c = CmdMatch {
            size: 32,
            flags: 0,
            return_flags: 0,
            cookie,
        };
        self.command(cmd::MATCH_REMOVE, c.as_bytes()).map(|_| ())
    }
}

/// A NAME_ACQUIRE / NAME_RELEASE body: `kdbus_cmd` with a NAME item.
pub fn name_cmd(name: &str, flags: u64) -> Vec<u8> {
    let mut body = CmdGeneric {
        size: 0,
        flags,
        return_flags: 0,
    }
    .as_bytes()
    .to_vec();
    ItemWriter::new(&mut body).push_str(item::NAME, name);
    let size = body.len() as u64;
    body[..8].copy_from_slice(&size.to_ne_bytes());
    body
}

/// Take announced message `idx` off the local queue and queue its claim in the same
/// critical section: a NAME_RELEASE sent by another thread then always follows the
/// claim, so the broker never moves a message we handed out.
fn claim_locked(g: &mut Inner, idx: usize, drop_it: bool) -> Option<Announced> {
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
fn dispatch(g: &mut Inner, data: &[u8], fds: Vec<OwnedFd>) {
    let mut fds = fds.into_iter();
    for (rec, n_fds) in wire::records(data) {
        let mine: Vec<OwnedFd> = fds.by_ref().take(n_fds).collect();
        match rec {
            Record::Reply {
                req_id,
                error,
                body,
            } => {
                g.answers.insert(req_id, Answer::new(error, body, mine));
            }
            Record::Msg(ev) => g.queue.push_back(Announced { ev, fds: mine }),
            Record::Retract(offset) => g.queue.retain(|a| a.ev.offset != offset),
            Record::Dropped(_) | Record::Unknown => {}
        }
    }
}

/// A message in the pool. The slice is freed (asynchronously) when this is dropped.
pub struct Received<'c> {
    conn: &'c Connection,
    offset: u64,
    bytes: &'c [u8],
    header: Msg,
    /// The fds that came with the message, in FDS-item order.
    pub fds: Vec<OwnedFd>,
    free_on_drop: bool,
}

impl<'c> Received<'c> {
    pub fn header(&self) -> &Msg {
        &self.header
    }
    pub fn offset(&self) -> u64 {
        self.offset
    }
    pub fn src_id(&self) -> u64 {
        self.header.src_id
    }
    pub fn dst_id(&self) -> u64 {
        self.header.dst_id
    }
    pub fn cookie(&self) -> u64 {
        self.header.cookie
    }
    pub fn cookie_reply(&self) -> u64 {
        self.header.timeout_or_cookie_reply
    }
    pub fn priority(&self) -> i64 {
        self.header.priority
    }
    pub fn expects_reply(&self) -> bool {
        self.header.flags & kdbus_abi::msg_flags::EXPECT_REPLY != 0
    }
    /// The whole slice (header, items, payload).
    pub fn bytes(&self) -> &'c [u8] {
        self.bytes
    }

    /// The items (header-only items allowed: bus messages use them).
    pub fn items(&self) -> ItemIter<'c> {
        let end = (self.header.size as usize).min(self.bytes.len());
        ItemIter::received(
            self.bytes
                .get(std::mem::size_of::<Msg>()..end)
                .unwrap_or(&[]),
        )
    }

    /// The type of the first item of a bus-generated message (e.g. REPLY_TIMEOUT).
    pub fn kernel_item(&self) -> Option<u64> {
        if self.header.payload_type != kdbus_abi::payload::KERNEL {
            return None;
        }
        self.items().flatten().next().map(|i| i.type_)
    }

    /// First metadata item of type `t`.
    pub fn item(&self, t: u64) -> Option<&'c [u8]> {
        self.items()
            .flatten()
            .find(|i| i.type_ == t)
            .map(|i| i.payload)
    }

    /// The payload vectors, in order.
    pub fn payload(&self) -> Vec<&'c [u8]> {
        let bytes = self.bytes;
        self.items()
            .flatten()
            .filter(|i| i.type_ == item::PAYLOAD_OFF)
            .filter_map(|i| {
                let v: Vec_ = read_struct(i.payload)?;
                let start = usize::try_from(v.address_or_offset).ok()?;
                bytes.get(start..start.checked_add(usize::try_from(v.size).ok()?)?)
            })
            .collect()
    }

    /// All payload vectors concatenated.
    pub fn payload_bytes(&self) -> Vec<u8> {
        self.payload().concat()
    }

    /// Keep the slice: the caller frees it with [`Connection::free`].
    pub fn keep(mut self) -> u64 {
        self.free_on_drop = false;
        self.offset
    }
}

impl Drop for Received<'_> {
    fn drop(&mut self) {
        if self.free_on_drop {
            self.conn.free_later(self.offset);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}
