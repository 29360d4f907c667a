//! Connections: HELLO, commands, sending and taking messages.
//!
//! A [`Connection`] is the kdbus command set as methods. It keeps what HELLO told us
//! (id, bus flags, bloom parameters, the pool mapping) and leaves the socket and its
//! sharing between threads to [`Link`]; messages it hands out are [`Received`] views
//! into the pool. Every command is one request answered by one record, so a method is
//! "encode, exchange, decode the write-back", with the bus's errno surfacing as
//! [`Error::Bus`] exactly where the kernel's ioctl would have returned it.
//!
//! Receiving is local: the broker announces each message as it queues it, the
//! connection keeps the announcements in order and RECV picks from them here (FIFO,
//! priority, PEEK, DROP) without a round trip, telling the broker afterwards with a
//! claim notice. [`Connection::recv_broker`] is the round-trip version, for callers
//! that want the broker to choose.

use crate::error::{Error, Result};
use crate::info::{parse_info, parse_list, ConnInfo};
use crate::link::{claim_locked, Body, Link};
use crate::message::Message;
use crate::received::Received;
use crate::sys::PoolMap;
use crate::transport::Transport;
use kdbus_abi::items::ItemIter;
use kdbus_abi::{
    attach, cmd, hello_flags, item, read_struct, recv_flags, send_flags, BloomParameter, CmdFree,
    CmdGeneric, CmdHello, CmdInfo, CmdList, CmdMatch, CmdRecv, CmdSend, Errno, ItemWriter, Msg,
};
use rustix::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;
use zerocopy::IntoBytes;

/// Options of HELLO.
#[derive(Clone, Debug)]
pub struct HelloOptions {
    /// HELLO flags (`kdbus_abi::hello_flags`); by default only ACCEPT_FD, so the
    /// connection may receive fds.
    pub flags: u64,
    /// Metadata kinds (`kdbus_abi::attach` bits) the bus may attach to messages this
    /// connection sends; all kinds by default.
    pub attach_flags_send: u64,
    /// Metadata kinds (`kdbus_abi::attach` bits) this connection wants attached to the
    /// messages it receives; none by default.
    pub attach_flags_recv: u64,
    /// Size of the receive pool, in bytes; [`crate::DEFAULT_POOL_SIZE`] (16 MiB) by default.
    pub pool_size: u64,
    /// A free-form description of the connection that others see in CONN_INFO and LIST;
    /// `None` sends none.
    pub description: Option<String>,
    /// The name of an activator or policy holder.
    pub name: Option<String>,
    /// What everyone may do with that name (a policy holder's or an activator's
    /// policy): `policy::SEE`, `TALK` or `OWN` levels, as kdbus's `POLICY_ACCESS`.
    pub world_access: Option<u64>,
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
            world_access: None,
        }
    }
}

impl HelloOptions {
    /// The default options: fds accepted, all metadata offered to receivers, none
    /// requested, a 16 MiB pool.
    pub fn new() -> Self {
        Self::default()
    }
    /// Replace the HELLO flags with `f` (`kdbus_abi::hello_flags`).
    pub fn flags(mut self, f: u64) -> Self {
        self.flags = f;
        self
    }
    /// Set the metadata kinds (`kdbus_abi::attach` bits) wanted on received messages.
    pub fn attach_recv(mut self, f: u64) -> Self {
        self.attach_flags_recv = f;
        self
    }
    /// Set the metadata kinds (`kdbus_abi::attach` bits) the bus may attach to sent messages.
    pub fn attach_send(mut self, f: u64) -> Self {
        self.attach_flags_send = f;
        self
    }
    /// Set the receive pool size, in bytes.
    pub fn pool_size(mut self, s: u64) -> Self {
        self.pool_size = s;
        self
    }
    /// Set the connection's description.
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

    /// Let everyone see (0), talk to (1) or own (2) the activator's or policy holder's
    /// name.
    pub fn world_access(mut self, level: u64) -> Self {
        self.world_access = Some(level);
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
            if let Some(level) = self.world_access {
                let a = kdbus_abi::PolicyAccess {
                    type_: 3, // KDBUS_POLICY_ACCESS_WORLD
                    access: level,
                    id: 0,
                };
                w.push(item::POLICY_ACCESS, a.as_bytes());
            }
        }
        let size = out.len() as u64;
        out[..8].copy_from_slice(&size.to_ne_bytes());
        out
    }
}

/// A connection to a bus.
pub struct Connection {
    link: Link,
    pool: PoolMap,
    id: u64,
    bus_flags: u64,
    id128: [u8; 16],
    bloom: BloomParameter,
    /// The last D-Bus serial this connection used (typed D-Bus messages).
    dbus_serial: std::sync::atomic::AtomicU32,
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
            link: Link::new(t.fd),
            pool,
            id: h.id,
            bus_flags: h.bus_flags,
            id128: h.id128,
            dbus_serial: std::sync::atomic::AtomicU32::new(0),
            bloom,
        };
        // HELLO's items slice (the bloom parameters) is ours to free.
        conn.link.free_later(h.offset);
        Ok(conn)
    }

    /// The unique id the bus gave this connection at HELLO.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The bus's flags, as HELLO reported them.
    pub fn bus_flags(&self) -> u64 {
        self.bus_flags
    }
    /// The bus's 128-bit id, as HELLO reported it.
    pub fn bus_id128(&self) -> [u8; 16] {
        self.id128
    }
    /// The bus's bloom filter parameters (size and hash count), which signal filters and
    /// match masks must follow; all zero if HELLO carried none.
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
        self.link.fd()
    }

    /// A D-Bus serial not used before on this connection (never 0).
    pub(crate) fn next_dbus_serial(&self) -> u32 {
        use std::sync::atomic::Ordering;
        loop {
            let s = self
                .dbus_serial
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            if s != 0 {
                return s;
            }
        }
    }

    /// Send pending notices now (they otherwise ride along with the next datagram).
    pub fn flush(&self) -> Result<()> {
        self.link.flush()
    }

    /// Run a command and wait for its answer: `(errno, write-back body, fds)`.
    pub fn request(
        &self,
        c: u32,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(i32, Vec<u8>, Vec<OwnedFd>)> {
        self.link.request(c, body, fds)
    }

    /// Run a command; errno to `Err`, write-back body to `Ok`.
    fn command(&self, c: u32, body: &[u8]) -> Result<Vec<u8>> {
        let (e, b, _) = self.request(c, body, &[])?;
        if e != 0 {
            return Err(Error::Bus(Errno(e)));
        }
        Ok(b)
    }

    // ------------------------------------------------------------ messages

    /// Send a message (SEND); returns when the broker accepted it.
    pub fn send(&self, msg: &Message<'_>) -> Result<()> {
        let e = self
            .link
            .exchange(cmd::SEND, Body::Send(msg, 0), &msg.all_fds(), |e, _, _| e)?;
        if e != 0 {
            return Err(Error::Bus(Errno(e)));
        }
        Ok(())
    }

    /// Send a message without waiting for the broker: one `sendmsg`, and no datagram
    /// back when it is delivered (the cheap way to emit a signal or answer a call). If
    /// the broker cannot deliver it, the failure comes later, filed under the message's
    /// cookie as the connection reads its socket: see
    /// [`Connection::take_send_failures`].
    pub fn post(&self, msg: &Message<'_>) -> Result<()> {
        self.link.submit_as(
            cmd::SEND,
            Body::Send(msg, 0),
            &msg.all_fds(),
            Some(msg.cookie),
        )?;
        Ok(())
    }

    /// Posted messages the broker could not deliver since the last call, oldest first:
    /// `(cookie, errno)`. Reads what the socket has first. At most 1024 are kept; older
    /// ones are dropped and counted in the second value.
    pub fn take_send_failures(&self) -> Result<(Vec<(u64, Errno)>, u64)> {
        self.link.poll_socket()?;
        Ok(self.take_filed_send_failures())
    }

    /// [`Connection::take_send_failures`] without reading the socket: only what earlier
    /// reads filed. For an event loop that has just read the socket dry (`recv` said
    /// `EAGAIN`) and will wait for it next: reading it again here could file a message
    /// that the wait would then sleep on.
    pub fn take_filed_send_failures(&self) -> (Vec<(u64, Errno)>, u64) {
        let mut g = self.link.lock();
        let lost = std::mem::take(&mut g.send_failures_lost);
        (g.send_failures.drain(..).collect(), lost)
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
        let body = Body::Send(&msg, send_flags::SYNC_REPLY);
        let (e, wb, fds) = self
            .link
            .exchange(cmd::SEND, body, &msg.all_fds(), |e, b, fds| {
                (e, read_struct::<CmdSend>(b), fds)
            })?;
        if e != 0 {
            return Err(Error::Bus(Errno(e)));
        }
        let wb = wb.ok_or(Error::Protocol("short SEND answer"))?;
        self.received(wb.reply.offset, wb.reply.msg_size, fds, true)
    }

    /// Start a synchronous call without waiting: the request id its answer will carry
    /// (for the async API, which awaits the socket between [`Connection::call_poll`]s).
    pub(crate) fn call_submit(&self, msg: &Message<'_>, timeout: Duration) -> Result<u64> {
        let deadline = crate::monotonic_ns() + timeout.as_nanos() as u64;
        let msg = msg.clone().expect_reply(deadline);
        let body = Body::Send(&msg, send_flags::SYNC_REPLY);
        self.link.submit(cmd::SEND, body, &msg.all_fds())
    }

    /// The waiter for request `id` went away (a dropped future, async API).
    pub(crate) fn abandon(&self, id: u64, call: bool) {
        self.link.abandon(id, call);
    }

    /// Start a SEND without waiting (async API): its request id.
    pub(crate) fn send_submit(&self, msg: &Message<'_>) -> Result<u64> {
        self.link
            .submit(cmd::SEND, Body::Send(msg, 0), &msg.all_fds())
    }

    /// Read what the socket has, without blocking; the answer to request `id` if it
    /// came.
    pub(crate) fn answer_poll(&self, id: u64) -> Result<Option<crate::transport::Answer>> {
        self.link.poll_socket()?;
        let mut g = self.link.lock();
        if let Some(e) = g.dead {
            return Err(Error::Bus(e));
        }
        Ok(g.answers.remove(&id))
    }

    /// The reply to the call of request `id`, if it came (see [`Connection::call_submit`]).
    pub(crate) fn call_poll(&self, id: u64) -> Result<Option<Received<'_>>> {
        let Some(a) = self.answer_poll(id)? else {
            return Ok(None);
        };
        if a.error != 0 {
            return Err(Error::Bus(Errno(a.error)));
        }
        let wb: CmdSend = read_struct(&a.body).ok_or(Error::Protocol("short SEND answer"))?;
        self.received(wb.reply.offset, wb.reply.msg_size, a.fds, true)
            .map(Some)
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
        Ok(Received::new(
            &self.link,
            offset,
            bytes,
            header,
            fds,
            free_on_drop,
        ))
    }

    /// Take the next message (FIFO), or EAGAIN.
    pub fn recv(&self) -> Result<Received<'_>> {
        self.recv_with(0, 0)
    }

    /// Wait up to `timeout` (forever if `None`) for the next message.
    pub fn recv_timeout(&self, timeout: Option<Duration>) -> Result<Received<'_>> {
        let a = self
            .link
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
        self.link.poll_socket()?;
        let mut g = self.link.lock();
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
            return Ok(Received::new(
                &self.link,
                ev.offset,
                &[],
                header,
                Vec::new(),
                false,
            ));
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
            let mut g = self.link.lock();
            g.queue.retain(|a| a.ev.offset != wb.msg.offset);
        }
        Ok(wb)
    }

    /// Messages announced and not yet taken.
    pub fn queued(&self) -> usize {
        let _ = self.link.poll_socket();
        self.link.lock().queue.len()
    }

    /// Broadcasts lost for lack of pool space, as of the last message taken.
    pub fn dropped_msgs(&self) -> u64 {
        self.link.lock().dropped_msgs
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
        self.link.free_later(wb.offset);
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
        let out = self
            .pool
            .slice(wb.offset, wb.list_size)
            .map(parse_list)
            .unwrap_or_default();
        self.link.free_later(wb.offset);
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
        self.link.lock().releasing += 1;
        let r = self.command(cmd::NAME_RELEASE, &name_cmd(name, 0));
        self.link.lock().releasing -= 1;
        self.link.notify();
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

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}
