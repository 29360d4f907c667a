//! A domain: buses, their connections, and the one sequence number that orders every
//! message in it.
//!
//! The broker hands the domain whole commands (a request body plus the credentials the
//! kernel attached) and gets back records to write to each connection. Everything a
//! command changes happens inside one call, so the order in which the broker feeds
//! commands is the order of the bus: no locks, and a total order for free.
//!
//! Output is buffered per connection (`Conn::out`) and the keys of connections with
//! output are collected in the [`Outbox`]; the broker flushes each dirty connection
//! once per loop iteration, which is where batching comes from.

use crate::bus::{bus_parse_make, Bus};
use crate::clock::{Clock, Now};
use crate::conn::{Conn, ConnState, Files, Queued};
use crate::files::{fd_check, memfd_check, FdInspector, NoInspector};
use crate::matches::{Broadcast, MatchDb, Notification};
use crate::memory::PoolMemory;
use crate::message::{
    message_layout, message_layout_kernel, message_memfds, message_parse_send, message_payload,
    meta_len, meta_write, SendRequest, SenderMeta,
};
use crate::meta::{Creds, Peer};
use crate::names::{NameEvent, NameRegistry};
use crate::pool::{PoolAllocator, PoolQuota};
use crate::queue::RecvQueue;
use crate::reply::{ReplyFailure, Tracker};
use crate::stream_quota::Charge;
use kdbus_abi::items::{ItemIter, ItemWriter};
use kdbus_abi::wire::{self, MsgEvent, RecHeader};
use kdbus_abi::{
    attach, cmd, hello_flags, item, limits, list_flags, match_flags, name_flags, read_cmd,
    recv_flags, CmdFree, CmdGeneric, CmdHello, CmdInfo, CmdList, CmdMatch, CmdRecv, CmdSend, Errno,
    Info, MsgInfo,
};
use kdbus_abi::{NotifyIdChange, DST_ID_BROADCAST};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use zerocopy::IntoBytes;

pub type ConnKey = u64;
pub type BusKey = u64;

/// Quota user id for messages the bus generates itself.
const KERNEL_USER: u32 = u32::MAX;
/// Largest receive pool a client may ask for. The memfd is sparse, so this bounds
/// address space, not memory; memory is bounded by the quota.
pub const POOL_MAX_SIZE: u64 = 1 << 30;

/// One command as the broker read it.
pub struct Request<'a> {
    pub cmd: u32,
    pub flags: u32,
    pub req_id: u64,
    pub body: &'a [u8],
    pub creds: Creds,
}

/// Result of a SEND.
#[derive(Debug)]
pub enum SendOutcome {
    /// Answered now, with this write-back.
    Done(CmdSend),
    /// A synchronous call: answered when the reply, a timeout or a death resolves it.
    Pending,
}

#[derive(Default)]
pub(crate) struct UserUsage {
    pub(crate) conns: usize,
    pub(crate) buses: usize,
}

pub struct Domain {
    pub(crate) clock: Box<dyn Clock>,
    /// What passed fds are (memfd payloads, sockets that may not travel).
    files: Box<dyn FdInspector>,
    /// Metadata the domain attaches at all (kdbus's `attach_flags_mask` module
    /// parameter): applied to messages, notifications and INFO results.
    attach_mask: u64,
    pub(crate) buses: HashMap<BusKey, Bus>,
    pub(crate) bus_names: HashMap<String, BusKey>,
    /// Boxed: the table then holds pointers, and growing it does not double the
    /// memory of every connection.
    pub(crate) conns: HashMap<ConnKey, Box<Conn>>,
    /// (deadline, replier, requester, cookie) of every tracker, earliest first.
    pub(crate) deadlines: BTreeSet<(u64, ConnKey, ConnKey, u64)>,
    pub(crate) users: HashMap<u32, UserUsage>,
    pub(crate) seq: u64,
    pub(crate) next_key: u64,
    pub(crate) next_bus_id: u64,
    pub(crate) outbox: Outbox,
    pub(crate) closed: Vec<ConnKey>,
    pub(crate) scratch: Vec<u8>,
    /// Reused for the SEND a D-Bus peer's message becomes.
    pub(crate) send_scratch: Vec<u8>,
    /// Reused per broadcast: receivers seen, receivers found, the filter as words,
    /// the sender's names.
    pub(crate) seen: HashSet<ConnKey>,
    pub(crate) targets: Vec<ConnKey>,
    pub(crate) bloom_words: Vec<u64>,
    pub(crate) bloom_generation: u64,
    pub(crate) sender_names: Vec<Arc<str>>,
    /// What `org.freedesktop.DBus.Peer.GetMachineId` answers.
    pub(crate) machine_id: String,
}

impl Domain {
    /// Set the metadata the domain attaches at all (kdbus's module parameter
    /// `attach_flags_mask`); takes effect with the next command.
    pub fn set_attach_mask(&mut self, mask: u64) {
        self.attach_mask = mask;
    }

    /// Let the broker say what passed fds are (without it, memfd payloads are refused).
    pub fn set_fd_inspector(&mut self, files: Box<dyn FdInspector>) {
        self.files = files;
    }

    pub fn new(clock: Box<dyn Clock>) -> Self {
        Domain {
            clock,
            files: Box::new(NoInspector),
            attach_mask: attach::ALL,
            buses: HashMap::new(),
            bus_names: HashMap::new(),
            conns: HashMap::new(),
            deadlines: BTreeSet::new(),
            users: HashMap::new(),
            seq: 0,
            next_key: 1,
            next_bus_id: 1,
            outbox: Outbox::default(),
            closed: Vec::new(),
            scratch: Vec::with_capacity(4096),
            send_scratch: Vec::new(),
            seen: HashSet::new(),
            targets: Vec::new(),
            bloom_words: Vec::new(),
            bloom_generation: 0,
            sender_names: Vec::new(),
            machine_id: String::new(),
        }
    }

    pub(crate) fn next_key(&mut self) -> u64 {
        let k = self.next_key;
        self.next_key += 1;
        k
    }

    // ---------------------------------------------------------------- buses

    /// BUS_MAKE from `peer`. `id128` is the bus's random UUID (randomness is the broker's).
    pub fn bus_make(&mut self, peer: &Peer, body: &[u8], id128: [u8; 16]) -> Result<BusKey, Errno> {
        let spec = bus_parse_make(body, peer.creds.uid)?;
        if self.bus_names.contains_key(&spec.name) {
            return Err(Errno::EEXIST);
        }
        let usage = self.users.entry(peer.creds.uid).or_default();
        if !peer.privileged && usage.buses >= limits::USER_MAX_BUSES {
            return Err(Errno::EMFILE);
        }
        usage.buses += 1;
        let key = self.next_key();
        let bus = Bus {
            id: self.next_bus_id,
            name: spec.name.clone(),
            flags: spec.flags,
            bloom: spec.bloom,
            id128,
            attach_flags_req: spec.attach_flags_req,
            attach_flags_owner: spec.attach_flags_owner,
            creator: peer.clone(),
            conns: Default::default(),
            next_conn_id: 1,
            names: NameRegistry::new(),
            policy_holders: HashMap::new(),
            matches: MatchDb::new(),
            monitors: Vec::new(),
            dbus_peers: Default::default(),
        };
        self.next_bus_id += 1;
        self.bus_names.insert(spec.name, key);
        self.buses.insert(key, bus);
        tracing::debug!(bus = %self.buses[&key].name, "bus created");
        Ok(key)
    }

    /// Set the machine id the D-Bus driver reports.
    pub fn set_machine_id(&mut self, id: &str) {
        self.machine_id = id.to_string();
    }

    pub fn bus(&self, key: BusKey) -> Option<&Bus> {
        self.buses.get(&key)
    }

    pub fn bus_by_name(&self, name: &str) -> Option<BusKey> {
        self.bus_names.get(name).copied()
    }

    /// The bus's owner went away: disconnect everyone on it. The broker finds the
    /// connections to hang up on in [`Domain::take_closed`].
    pub fn bus_destroy(&mut self, key: BusKey) {
        let Some(bus) = self.buses.get(&key) else {
            return;
        };
        let conns: Vec<ConnKey> = self
            .conns
            .values()
            .filter(|c| c.bus == key && c.is_active())
            .map(|c| c.key)
            .collect();
        let _ = bus;
        for c in conns {
            self.conn_disconnect(c);
            self.closed.push(c);
        }
        if let Some(bus) = self.buses.remove(&key) {
            self.bus_names.remove(&bus.name);
            if let Some(u) = self.users.get_mut(&bus.creator.creds.uid) {
                u.buses = u.buses.saturating_sub(1);
            }
        }
    }

    /// Connections the broker should close (their bus is gone).
    pub fn take_closed(&mut self) -> Vec<ConnKey> {
        std::mem::take(&mut self.closed)
    }

    // ---------------------------------------------------------------- hello

    /// HELLO on an endpoint of `bus`. `make_pool` creates the pool memory once the
    /// command is known to be valid.
    pub fn hello(
        &mut self,
        bus_key: BusKey,
        peer: &Peer,
        body: &[u8],
        make_pool: &mut dyn FnMut(u64) -> Result<Box<dyn PoolMemory>, Errno>,
    ) -> Result<(ConnKey, CmdHello), Errno> {
        let bus = self.buses.get(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let (cmd, size) = read_cmd::<CmdHello>(body)?;
        if cmd.flags & !hello_flags::ALL != 0 {
            return Err(Errno::EINVAL);
        }
        // HEAD: EINVAL (64d871b said EFAULT).
        if cmd.pool_size == 0 || cmd.pool_size % limits::PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        if cmd.pool_size > POOL_MAX_SIZE {
            return Err(Errno::EINVAL);
        }
        let kind = cmd.flags
            & (hello_flags::ACTIVATOR | hello_flags::POLICY_HOLDER | hello_flags::MONITOR);
        if kind.count_ones() > 1 {
            return Err(Errno::EINVAL);
        }
        if kind != 0 && !bus.is_privileged(peer) {
            return Err(Errno::EPERM);
        }
        let mut description = None;
        let mut name = None;
        let items = &body[std::mem::size_of::<CmdHello>()..size as usize];
        for it in ItemIter::new(items) {
            let it = it?;
            it.check_payload()?;
            match it.type_ {
                item::CONN_DESCRIPTION => {
                    let s = it.as_str()?;
                    kdbus_abi::names::validate_sysname(s)?;
                    if description.replace(s).is_some() {
                        return Err(Errno::EINVAL);
                    }
                }
                item::NAME => {
                    let s = it.as_str()?;
                    let wildcard = cmd.flags & hello_flags::POLICY_HOLDER != 0;
                    kdbus_abi::names::validate_well_known_name(s, wildcard)?;
                    if name.replace(s).is_some() {
                        return Err(Errno::EINVAL);
                    }
                }
                item::CREDS | item::PIDS | item::SECLABEL if !peer.privileged => {
                    return Err(Errno::EPERM)
                }
                _ => {}
            }
        }
        let needs_name = cmd.flags & (hello_flags::ACTIVATOR | hello_flags::POLICY_HOLDER) != 0;
        if needs_name != name.is_some() {
            return Err(Errno::EINVAL);
        }
        let attach_send = attach::sanitize(cmd.attach_flags_send)?;
        let attach_recv = attach::sanitize(cmd.attach_flags_recv)?;
        if bus.attach_flags_req & !attach_send != 0 {
            return Err(Errno::ECONNREFUSED);
        }
        if let Some(n) = name {
            // An activator and a policy holder both speak for a name's policy, so only
            // one of them may exist per name; and one activator per name.
            let held = bus.policy_holders.contains_key(n);
            let has_activator = bus.names.lookup(n).is_some_and(|e| e.activator.is_some());
            if held || has_activator {
                return Err(Errno::EEXIST);
            }
        }
        let usage = self.users.entry(peer.creds.uid).or_default();
        if !peer.privileged && usage.conns >= limits::USER_MAX_CONN {
            return Err(Errno::EMFILE);
        }
        let mem = make_pool(cmd.pool_size)?;
        usage.conns += 1;

        let key = self.next_key();
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let id = bus.next_conn_id;
        bus.next_conn_id += 1;
        bus.conns.insert(id, key);
        let bloom = bus.bloom;
        let mut conn = Conn {
            key,
            id,
            bus: bus_key,
            flags: cmd.flags,
            attach_send,
            attach_recv,
            peer: peer.clone(),
            description: description.map(Into::into),
            state: ConnState::Active,
            pool: PoolAllocator::new(cmd.pool_size),
            quota: PoolQuota::new(),
            mem,
            queue: RecvQueue::new(),
            queued_at: HashMap::new(),
            owed: HashMap::new(),
            awaited: HashSet::new(),
            dropped_msgs: 0,
            dropped_told: 0,
            flush_stamp: 0,
            out: Vec::new(),
            out_fds: Vec::new(),
            dirty: false,
            special_name: name.map(str::to_owned),
            dbus: None,
        };
        // HEAD hands the bloom parameters back as an item in the pool.
        self.scratch.clear();
        ItemWriter::new(&mut self.scratch).push(item::BLOOM_PARAMETER, bloom.as_bytes());
        let (offset, items_size) = conn_write_owner_slice(&mut conn, &self.scratch)?;
        let mut reply = cmd;
        reply.return_flags = 0;
        reply.bus_flags = bus.flags;
        reply.id = id;
        reply.offset = offset;
        reply.items_size = items_size;
        reply.id128 = bus.id128;
        tracing::debug!(bus = %bus.name, id, "hello");
        let special = conn.special_name.clone();
        let flags = conn.flags;
        self.conns.insert(key, Box::new(conn));
        if flags & hello_flags::MONITOR != 0 {
            // Monitors are invisible (kdbus HEAD): no ID_ADD, not listed.
            if let Some(bus) = self.buses.get_mut(&bus_key) {
                bus.monitors.push(key);
            }
        } else {
            let p = NotifyIdChange { id, flags };
            self.notify(
                bus_key,
                Notification::IdAdd { id },
                item::ID_ADD,
                p.as_bytes(),
            );
        }
        if let Some(n) = special {
            if flags & hello_flags::ACTIVATOR != 0 {
                let mut events = Vec::new();
                if let Some(bus) = self.buses.get_mut(&bus_key) {
                    let _ = bus.names.acquire(key, true, &n, 0, &mut events);
                }
                self.names_apply(bus_key, events);
            } else if let Some(bus) = self.buses.get_mut(&bus_key) {
                bus.policy_holders.insert(n.into(), key);
            }
        }
        Ok((key, reply))
    }

    pub fn conn(&self, key: ConnKey) -> Option<&Conn> {
        self.conns.get(&key).map(|c| &**c)
    }

    // ---------------------------------------------------------------- dispatch

    /// Run one command of a HELLO'd connection. The answer (unless the request asked for
    /// none) lands in the connection's output buffer. `fds` are the fds of the datagram
    /// not yet taken by earlier requests.
    pub fn conn_request(&mut self, key: ConnKey, req: &Request<'_>, fds: &mut Vec<OwnedFd>) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        if let Some(wb) = negotiate(req.cmd, req.body) {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn_push_record(
                    conn,
                    &mut self.outbox,
                    wire::REC_REPLY,
                    0,
                    0,
                    req.req_id,
                    &wb,
                );
            }
            return;
        }
        let result = if req.cmd == cmd::RELEASE {
            // Closing: leave the bus whatever is queued, as a closed kdbus handle did.
            self.conn_disconnect(key);
            Ok(Reply::Generic(CmdGeneric::default()))
        } else if !conn.is_active() {
            // HEAD: BYEBYE on a dead connection too (64d871b said EALREADY).
            Err(Errno::ECONNRESET)
        } else if !conn_may(conn, req.cmd) {
            Err(Errno::EOPNOTSUPP)
        } else {
            match req.cmd {
                cmd::SEND => match self.cmd_send(key, req, fds) {
                    Ok(SendOutcome::Pending) => return,
                    Ok(SendOutcome::Done(wb)) => Ok(Reply::Send(wb)),
                    Err(e) => Err(e),
                },
                cmd::RECV => self.cmd_recv(key, req.body).map(Reply::Recv),
                cmd::FREE => self.cmd_free(key, req.body).map(Reply::Free),
                cmd::BYEBYE => self.cmd_byebye(key, req.body).map(Reply::Generic),
                cmd::CONN_INFO => self.cmd_conn_info(key, req.body).map(Reply::Info),
                cmd::BUS_CREATOR_INFO => self.cmd_bus_creator_info(key, req.body).map(Reply::Info),
                cmd::UPDATE => self.cmd_update(key, req.body).map(Reply::Generic),
                cmd::LIST => self.cmd_list(key, req.body).map(Reply::List),
                cmd::MATCH_ADD => self.cmd_match_add(key, req.body).map(Reply::Match),
                cmd::MATCH_REMOVE => self.cmd_match_remove(key, req.body).map(Reply::Match),
                cmd::NAME_ACQUIRE => self.cmd_name_acquire(key, req.body).map(Reply::Generic),
                cmd::NAME_RELEASE => self.cmd_name_release(key, req.body).map(Reply::Generic),
                _ => Err(Errno::ENOTTY),
            }
        };
        if req.flags & wire::REQ_NO_REPLY != 0 {
            if let Err(e) = result {
                tracing::debug!(conn = key, cmd = cmd::name(req.cmd), %e, "unanswered request failed");
            }
            return;
        }
        let (errno, body): (i32, &[u8]) = match &result {
            Ok(r) => (0, r.as_bytes()),
            Err(e) => (e.0, &[]),
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            conn_push_record(
                conn,
                &mut self.outbox,
                wire::REC_REPLY,
                0,
                errno,
                req.req_id,
                body,
            );
        }
    }

    /// Answer a request the broker could not even frame, in order with the others.
    pub fn conn_reply_error(&mut self, key: ConnKey, req_id: u64, e: Errno) {
        if let Some(conn) = self.conns.get_mut(&key) {
            conn_push_record(conn, &mut self.outbox, wire::REC_REPLY, 0, e.0, req_id, &[]);
        }
    }

    // ---------------------------------------------------------------- send

    pub(crate) fn cmd_send(
        &mut self,
        src_key: ConnKey,
        r: &Request<'_>,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<SendOutcome, Errno> {
        let src = self.conns.get(&src_key).ok_or(Errno::ECONNRESET)?;
        // Native clients pass large payloads in memfds (kdbus's vector limit); a D-Bus
        // peer's message comes as one vector the broker built from a message the D-Bus
        // framing already bounded (plus the sender field the bus wrote into it).
        let max_vec_total = if src.dbus.is_some() {
            DBUS_MAX_PAYLOAD
        } else {
            limits::MSG_MAX_PAYLOAD_VEC_SIZE
        };
        let parsed = message_parse_send(r.body, fds.len(), src.id, max_vec_total);
        let req = match parsed {
            Ok(req) => req,
            Err(e) => {
                fds.clear();
                return Err(e);
            }
        };
        let n_files = req.n_fds + req.n_memfds;
        let files: Option<Files> = (n_files > 0).then(|| fds.drain(..n_files).collect());
        if let Some(f) = &files {
            // Native senders may not pass what can carry fds (kdbus); D-Bus allows it.
            if src.dbus.is_none() {
                for fd in &f[..req.n_fds] {
                    fd_check(self.files.inspect(fd.as_fd()))?;
                }
            }
            for (fd, (start, size)) in f[req.n_fds..].iter().zip(message_memfds(&req)) {
                memfd_check(self.files.inspect(fd.as_fd()), start, size)?;
            }
        }
        let bus_key = src.bus;
        let mut sender = SenderMeta {
            id: src.id,
            creds: r.creds,
            peer: src.peer.clone(),
            description: src.description.clone(),
            attach_send: src.attach_send & self.attach_mask,
            names: Vec::new(),
        };
        // Signals carry a bloom filter: load it (and the sender's names) for the matches.
        if req.bloom.is_some() && !self.bloom_view_load(src_key, &req)? {
            return Err(Errno::EDOM);
        }
        if req.msg.dst_id == DST_ID_BROADCAST {
            // A broadcast is copied to every D-Bus receiver: kdbus's vector limit keeps
            // one signal from costing receivers × 128 MiB.
            if req.payload_len > limits::MSG_MAX_PAYLOAD_VEC_SIZE {
                return Err(Errno::EMSGSIZE);
            }
            self.send_broadcast(src_key, &req, sender, files)?;
            return Ok(SendOutcome::Done(send_writeback(&req.cmd, None)));
        }
        let bus = self.buses.get(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let (dst_key, name_id) = bus_resolve_destination(bus, &self.conns, &req)?;
        let dst = self.conns.get(&dst_key).ok_or(Errno::ENXIO)?;
        if !dst.is_active() {
            return Err(Errno::ECONNRESET);
        }
        // Memfds are payload: they reach connections that take no fds too (kdbus).
        let fds_refused = req.n_fds > 0 && dst.flags & hello_flags::ACCEPT_FD == 0;
        if dst.attach_recv & sender.attach_send & attach::NAMES != 0 {
            sender.names = bus_owned_names(bus, src_key);
        }
        // A unicast signal reaches its destination only through a match (HEAD).
        if req.bloom.is_some() {
            let b = Broadcast {
                sender_id: sender.id,
                sender_names: &self.sender_names,
                bloom_generation: self.bloom_generation,
                bloom: &self.bloom_words,
            };
            if !bus.matches.conn_takes_broadcast(dst_key, &b) {
                // Not delivered, but monitors see what was sent (HEAD).
                self.seq += 1;
                let seq = self.seq;
                self.monitors_copy(dst_key, &req, &sender, name_id, seq);
                return Ok(SendOutcome::Done(send_writeback(&req.cmd, None)));
            }
        }

        // A reply: the sender owes the destination an answer for this cookie.
        if let Some(cookie) = req.cookie_reply() {
            let owed = self
                .conns
                .get(&src_key)
                .and_then(|s| s.owed.get(&(dst_key, cookie)).copied());
            // HEAD: a reply nobody waits for is refused (64d871b delivered it).
            let tracker = owed.ok_or(Errno::EPERM)?;
            if let Some(sync_req) = tracker.sync_req {
                // A synchronous caller waits for this very message: if it cannot be
                // delivered, the caller is told so instead of waiting for its timeout.
                let r = if fds_refused {
                    Err(Errno::ECOMM)
                } else {
                    self.deliver_sync_reply(src_key, dst_key, sync_req, &req, &sender, files)
                };
                if let Err(e) = r {
                    if let Some(t) = self.tracker_remove(src_key, dst_key, cookie) {
                        self.tracker_fail(dst_key, cookie, t, ReplyFailure::Undeliverable(e));
                    }
                    return Err(e);
                }
            } else if fds_refused {
                return Err(Errno::ECOMM);
            } else {
                // The answer its receiver waits for: never refused for quota.
                self.deliver(dst_key, &req, &sender, files, name_id, Charge::Requested)?;
                self.tracker_remove(src_key, dst_key, cookie);
            }
            return Ok(SendOutcome::Done(send_writeback(&req.cmd, None)));
        }

        if fds_refused {
            return Err(Errno::ECOMM);
        }
        let expect = req.expects_reply();
        let cookie = req.msg.cookie;
        if expect {
            let src = self.conns.get(&src_key).ok_or(Errno::ECONNRESET)?;
            if src.awaited.len() >= limits::CONN_MAX_REQUESTS_PENDING {
                return Err(Errno::EMLINK);
            }
            if src.awaited.contains(&(dst_key, cookie)) {
                return Err(Errno::EEXIST);
            }
        }
        let charge = Charge::Sender(sender.creds.uid);
        self.deliver(dst_key, &req, &sender, files, name_id, charge)?;
        if !expect {
            return Ok(SendOutcome::Done(send_writeback(&req.cmd, None)));
        }
        let sync_req = req.is_sync().then_some(r.req_id);
        let deadline = req.msg.timeout_or_cookie_reply;
        self.tracker_insert(dst_key, src_key, cookie, Tracker { deadline, sync_req });
        Ok(if sync_req.is_some() {
            SendOutcome::Pending
        } else {
            SendOutcome::Done(send_writeback(&req.cmd, None))
        })
    }

    /// Write a unicast into `dst`'s pool, queue it and announce it; monitors get a copy.
    fn deliver(
        &mut self,
        dst_key: ConnKey,
        req: &SendRequest<'_>,
        sender: &SenderMeta,
        files: Option<Files>,
        name_id: u64,
        charge: Charge,
    ) -> Result<(), Errno> {
        let seq = self.seq + 1;
        let route = Route {
            name_id,
            seq,
            charge,
        };
        self.deliver_at(dst_key, req, sender, files, route)?;
        self.seq = seq;
        self.monitors_copy(dst_key, req, sender, name_id, seq);
        Ok(())
    }

    /// Write a message into `dst`'s queue (a D-Bus receiver's stream), as `route` says.
    pub(crate) fn deliver_at(
        &mut self,
        dst_key: ConnKey,
        req: &SendRequest<'_>,
        sender: &SenderMeta,
        files: Option<Files>,
        route: Route,
    ) -> Result<(), Errno> {
        let Route {
            name_id,
            seq,
            charge,
        } = route;
        if self.conns.get(&dst_key).is_some_and(|c| c.dbus.is_some()) {
            return self.dbus_deliver(dst_key, req, sender.id, charge, files);
        }
        let now = self.clock.now();
        // Memfds are payload, not fds in flight (HEAD charges only the FDS item's).
        let n_fds = req.n_fds as u32;
        let src = self.conns_key_of(sender.id, dst_key);
        let dst = self.conns.get_mut(&dst_key).ok_or(Errno::ENXIO)?;
        let slot = Slot::Queue {
            user: sender.creds.uid,
            fds: n_fds,
        };
        let (offset, size, fd_slots) =
            conn_write_message(dst, &mut self.scratch, slot, req, sender, now, seq)?;
        let q = Queued {
            offset,
            size,
            src,
            cookie: req.msg.cookie,
            expect_reply: req.expects_reply(),
            user: sender.creds.uid,
            files,
            name_id,
            priority: req.msg.priority,
            fd_slots,
            charged_fds: n_fds,
        };
        conn_enqueue(dst, &mut self.outbox, seq, q);
        Ok(())
    }

    /// Copy a delivered unicast to the bus's monitors (without its fds); a monitor
    /// without room loses the copy.
    fn monitors_copy(
        &mut self,
        dst_key: ConnKey,
        req: &SendRequest<'_>,
        sender: &SenderMeta,
        name_id: u64,
        seq: u64,
    ) {
        let Some(bus) = self
            .conns
            .get(&dst_key)
            .and_then(|c| self.buses.get(&c.bus))
        else {
            return;
        };
        if bus.monitors.is_empty() {
            return;
        }
        for m in bus.monitors.clone() {
            let route = Route {
                name_id,
                seq,
                charge: Charge::Requested,
            };
            let copy = self.deliver_at(m, req, sender, None, route);
            if copy.is_err() {
                if let Some(c) = self.conns.get_mut(&m) {
                    conn_lose(c, &mut self.outbox);
                }
            }
        }
    }

    /// Load a message's bloom filter and its sender's names into the scratch buffers
    /// the match rules read. `false` if the filter does not have the bus's size.
    pub(crate) fn bloom_view_load(
        &mut self,
        src_key: ConnKey,
        req: &SendRequest<'_>,
    ) -> Result<bool, Errno> {
        let bloom = req.bloom.ok_or(Errno::EBADMSG)?;
        let bus_key = self.conns.get(&src_key).ok_or(Errno::ECONNRESET)?.bus;
        let bus = self.buses.get(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let (generation, data) = bloom.split_at(8);
        if data.len() as u64 != bus.bloom.size {
            return Ok(false);
        }
        self.bloom_generation = kdbus_abi::read_struct(generation).unwrap_or(0);
        self.bloom_words.clear();
        self.bloom_words.extend(
            data.chunks_exact(8)
                .filter_map(kdbus_abi::read_struct::<u64>),
        );
        self.sender_names.clear();
        self.sender_names
            .extend(bus.names.owned_by(src_key).cloned());
        Ok(true)
    }

    /// A broadcast: one sequence number, written to every connection whose matches
    /// take it; its memfds (the only fds a broadcast may carry) are shared by all. A
    /// receiver without room loses it (its dropped count goes up); neither the sender
    /// nor the other receivers notice.
    /// The filter must have been loaded with [`Domain::bloom_view_load`].
    pub(crate) fn send_broadcast(
        &mut self,
        src_key: ConnKey,
        req: &SendRequest<'_>,
        mut sender: SenderMeta,
        memfds: Option<Files>,
    ) -> Result<(), Errno> {
        let bus_key = self.conns.get(&src_key).ok_or(Errno::ECONNRESET)?.bus;
        let bus = self.buses.get(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let b = Broadcast {
            sender_id: sender.id,
            sender_names: &self.sender_names,
            bloom_generation: self.bloom_generation,
            bloom: &self.bloom_words,
        };
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        // Native monitors see every broadcast, matches or not (HEAD); the sender
        // never gets its own broadcast; activators get none at all.
        let conns = &self.conns;
        targets.extend(bus_native_monitors(bus, conns));
        bus.matches
            .for_each_broadcast_receiver(&b, &mut self.seen, |c| {
                if c != src_key
                    && conns.get(&c).is_some_and(|c| {
                        c.flags & hello_flags::ACTIVATOR == 0 && !conn_is_native_monitor(c)
                    })
                {
                    targets.push(c);
                }
            });
        let wants_names = targets
            .iter()
            .filter_map(|t| self.conns.get(t))
            .any(|c| c.attach_recv & sender.attach_send & attach::NAMES != 0);
        if wants_names {
            sender.names = bus_owned_names(bus, src_key);
        }
        self.seq += 1;
        let seq = self.seq;
        for &t in &targets {
            let charge = Charge::Sender(sender.creds.uid);
            if self
                .deliver_at(
                    t,
                    req,
                    &sender,
                    memfds.clone(),
                    Route {
                        name_id: 0,
                        seq,
                        charge,
                    },
                )
                .is_err()
            {
                if let Some(c) = self.conns.get_mut(&t) {
                    conn_lose(c, &mut self.outbox);
                }
            }
        }
        self.targets = targets;
        Ok(())
    }

    /// The connection key of unique id `id` on the bus of `peer_key`.
    fn conns_key_of(&self, id: u64, peer_key: ConnKey) -> Option<ConnKey> {
        let bus = self.conns.get(&peer_key)?.bus;
        self.buses.get(&bus)?.conns.get(&id).copied()
    }

    /// Hand a reply straight to a requester blocked in a synchronous SEND: it goes into
    /// the requester's pool as its own (published) slice, never into the queue, and
    /// answers the parked SEND request.
    fn deliver_sync_reply(
        &mut self,
        replier: ConnKey,
        requester: ConnKey,
        sync_req: u64,
        req: &SendRequest<'_>,
        sender: &SenderMeta,
        files: Option<Files>,
    ) -> Result<(), Errno> {
        let now = self.clock.now();
        let seq = self.seq + 1;
        let dst = self.conns.get_mut(&requester).ok_or(Errno::ENXIO)?;
        let (offset, msg_size, _) =
            conn_write_message(dst, &mut self.scratch, Slot::Owner, req, sender, now, seq)?;
        self.seq = seq;
        self.monitors_copy(requester, req, sender, 0, seq);
        self.tracker_remove(replier, requester, req.msg.timeout_or_cookie_reply);
        let wb = CmdSend {
            size: std::mem::size_of::<CmdSend>() as u64,
            flags: kdbus_abi::send_flags::SYNC_REPLY,
            return_flags: 0,
            msg_address: 0,
            reply: MsgInfo {
                offset,
                msg_size,
                return_flags: 0,
            },
        };
        let dst = self.conns.get_mut(&requester).ok_or(Errno::ENXIO)?;
        let n = files.as_ref().map_or(0, |f| f.len() as u16);
        let at = dst.out.len();
        dst.out_fds.extend(files.map(|f| (at, f)));
        conn_push_record(
            dst,
            &mut self.outbox,
            wire::REC_REPLY,
            n,
            0,
            sync_req,
            wb.as_bytes(),
        );
        Ok(())
    }

    /// Forget the tracker "replier owes requester an answer to cookie".
    pub(crate) fn tracker_remove(
        &mut self,
        replier: ConnKey,
        requester: ConnKey,
        cookie: u64,
    ) -> Option<Tracker> {
        let t = self
            .conns
            .get_mut(&replier)?
            .owed
            .remove(&(requester, cookie))?;
        self.deadlines
            .remove(&(t.deadline, replier, requester, cookie));
        if let Some(r) = self.conns.get_mut(&requester) {
            r.awaited.remove(&(replier, cookie));
        }
        Some(t)
    }

    /// A tracker ended without reply: wake a synchronous requester with an errno, or
    /// send an asynchronous one REPLY_TIMEOUT / REPLY_DEAD.
    pub(crate) fn tracker_fail(
        &mut self,
        requester: ConnKey,
        cookie: u64,
        t: Tracker,
        why: ReplyFailure,
    ) {
        let Some(conn) = self.conns.get_mut(&requester) else {
            return;
        };
        if !conn.is_active() {
            return;
        }
        if let Some(sync_req) = t.sync_req {
            let e = match why {
                ReplyFailure::Timeout => Errno::ETIMEDOUT,
                ReplyFailure::Dead => Errno::EPIPE,
                ReplyFailure::Undeliverable(Errno::ECOMM) => Errno::EREMOTEIO,
                ReplyFailure::Undeliverable(e) => e,
            };
            conn_push_record(
                conn,
                &mut self.outbox,
                wire::REC_REPLY,
                0,
                e.0,
                sync_req,
                &[],
            );
            return;
        }
        let item_type = match why {
            ReplyFailure::Timeout => item::REPLY_TIMEOUT,
            ReplyFailure::Dead => item::REPLY_DEAD,
            // An asynchronous caller still waits; its tracker is unchanged.
            ReplyFailure::Undeliverable(_) => return,
        };
        self.deliver_kernel(requester, cookie, item_type);
    }

    /// Queue a bus-generated message for one connection (REPLY_TIMEOUT, REPLY_DEAD).
    fn deliver_kernel(&mut self, dst_key: ConnKey, cookie_reply: u64, item_type: u64) {
        let Some(dst_id) = self.conns.get(&dst_key).map(|c| c.id) else {
            return;
        };
        self.seq += 1;
        let seq = self.seq;
        self.deliver_kernel_at(dst_key, dst_id, cookie_reply, item_type, &[], seq);
        let bus = self.conns.get(&dst_key).map(|c| c.bus);
        let monitors = bus
            .and_then(|b| self.buses.get(&b))
            .map(|b| b.monitors.clone())
            .unwrap_or_default();
        for m in monitors {
            self.deliver_kernel_at(m, dst_id, cookie_reply, item_type, &[], seq);
        }
    }

    /// Queue a bus-generated message with sequence number `seq`; if it does not fit,
    /// count it as dropped.
    fn deliver_kernel_at(
        &mut self,
        dst_key: ConnKey,
        dst_id: u64,
        cookie_reply: u64,
        item_type: u64,
        payload: &[u8],
        seq: u64,
    ) {
        if self.conns.get(&dst_key).is_some_and(|c| c.dbus.is_some()) {
            // D-Bus peers learn of replies that will not come as NoReply errors, and of
            // names through the driver's signals, not kdbus notifications.
            if matches!(item_type, item::REPLY_TIMEOUT | item::REPLY_DEAD)
                && dst_id != DST_ID_BROADCAST
            {
                self.dbus_no_reply(dst_key, cookie_reply, item_type == item::REPLY_DEAD);
            }
            return;
        }
        let now = self.clock.now();
        let Some(dst) = self.conns.get_mut(&dst_key) else {
            return;
        };
        if !dst.is_active() {
            return;
        }
        let size = message_layout_kernel(
            &mut self.scratch,
            dst_id,
            cookie_reply,
            item_type,
            payload,
            dst.attach_recv & self.attach_mask,
            now,
            seq,
        );
        if dst.quota.charge(&dst.pool, KERNEL_USER, size, 0).is_err() {
            conn_lose(dst, &mut self.outbox);
            return;
        }
        let Ok(offset) = dst.pool.alloc_for_delivery(size) else {
            dst.quota.uncharge(KERNEL_USER, size, 0);
            conn_lose(dst, &mut self.outbox);
            return;
        };
        dst.mem.write(offset, &self.scratch);
        let q = Queued {
            offset,
            size,
            src: None,
            cookie: 0,
            expect_reply: false,
            user: KERNEL_USER,
            files: None,
            name_id: 0,
            priority: 0,
            fd_slots: Box::default(),
            charged_fds: 0,
        };
        conn_enqueue(dst, &mut self.outbox, seq, q);
    }

    // ---------------------------------------------------------------- timeouts

    /// The earliest reply deadline (CLOCK_MONOTONIC ns), for the broker's poll timeout.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|d| d.0)
    }

    /// Expire every tracker whose deadline has passed.
    pub fn tick(&mut self) {
        let now = self.clock.now().monotonic_ns;
        while let Some(&(deadline, replier, requester, cookie)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            match self.tracker_remove(replier, requester, cookie) {
                Some(t) => self.tracker_fail(requester, cookie, t, ReplyFailure::Timeout),
                None => {
                    self.deadlines.pop_first();
                }
            }
        }
    }

    pub fn now(&self) -> Now {
        self.clock.now()
    }

    // ---------------------------------------------------------------- recv / free

    fn cmd_recv(&mut self, key: ConnKey, body: &[u8]) -> Result<CmdRecv, Errno> {
        let (cmd, size) = read_cmd::<CmdRecv>(body)?;
        if cmd.flags & !recv_flags::ALL != 0 {
            return Err(Errno::EINVAL);
        }
        let conn = self.conns.get_mut(&key).ok_or(Errno::ECONNRESET)?;
        let peek = cmd.flags & recv_flags::PEEK != 0;
        let prio = cmd.flags & recv_flags::USE_PRIORITY != 0;
        let seq = if cmd.flags & recv_flags::CLAIM != 0 {
            *conn.queued_at.get(&cmd.msg.offset).ok_or(Errno::ENXIO)?
        } else if conn.queue.is_empty() {
            return Err(Errno::EAGAIN);
        } else if prio {
            conn.queue
                .peek_priority(cmd.priority)
                .ok_or(Errno::EAGAIN)?
                .0
        } else {
            conn.queue.peek().ok_or(Errno::EAGAIN)?.0
        };
        let q = conn.queue.get(seq).ok_or(Errno::ENXIO)?.clone();
        let mut wb = cmd;
        wb.msg = MsgInfo {
            offset: q.offset,
            msg_size: q.size,
            return_flags: 0,
        };
        wb.dropped_msgs = conn.dropped_msgs;
        wb.return_flags = if conn.dropped_msgs > 0 {
            recv_flags::RETURN_DROPPED_MSGS
        } else {
            0
        };
        if peek {
            return Ok(wb);
        }
        if cmd.flags & recv_flags::CLAIM != 0 {
            let items = &body[std::mem::size_of::<CmdRecv>()..size as usize];
            conn_claim_fd_numbers(conn, &q, items)?;
        }
        conn.queue.remove(seq);
        conn.queued_at.remove(&q.offset);
        conn.quota.uncharge(q.user, q.size, q.charged_fds);
        if cmd.flags & recv_flags::DROP != 0 {
            let _ = conn.pool.free(q.offset);
            if let (true, Some(src)) = (q.expect_reply, q.src) {
                if let Some(t) = self.tracker_remove(key, src, q.cookie) {
                    self.tracker_fail(src, q.cookie, t, ReplyFailure::Dead);
                }
            }
        } else {
            let _ = conn.pool.publish(q.offset);
        }
        Ok(wb)
    }

    fn cmd_free(&mut self, key: ConnKey, body: &[u8]) -> Result<CmdFree, Errno> {
        let (cmd, _) = read_cmd::<CmdFree>(body)?;
        if cmd.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let conn = self.conns.get_mut(&key).ok_or(Errno::ECONNRESET)?;
        conn.pool
            .free_public(cmd.offset)
            .map_err(|e| Errno(e.errno()))?;
        Ok(cmd)
    }

    // ---------------------------------------------------------------- lifecycle

    fn cmd_byebye(&mut self, key: ConnKey, body: &[u8]) -> Result<CmdGeneric, Errno> {
        let (cmd, _) = read_cmd::<CmdGeneric>(body)?;
        if cmd.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let conn = self.conns.get(&key).ok_or(Errno::ECONNRESET)?;
        if !conn.queue.is_empty() {
            return Err(Errno::EBUSY);
        }
        self.conn_disconnect(key);
        Ok(cmd)
    }

    /// Take a connection off the bus: fail what it owed, forget what it waited for,
    /// drop its queue. Its pool stays readable until the broker releases it.
    pub(crate) fn conn_disconnect(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if !conn.is_active() {
            return;
        }
        conn.state = ConnState::Disconnected;
        let (bus, id, uid) = (conn.bus, conn.id, conn.peer.creds.uid);
        // Names go first: a name falling back to its activator takes the messages
        // addressed to it along, before the rest of the queue is dropped.
        let mut events = Vec::new();
        if let Some(b) = self.buses.get_mut(&bus) {
            b.names.release_all(key, &mut events);
            b.policy_holders.retain(|_, holder| *holder != key);
        }
        self.names_apply(bus, events);
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let owed: Vec<_> = conn.owed.keys().copied().collect();
        let awaited: Vec<_> = conn.awaited.iter().copied().collect();
        for q in conn.queue.drain().map(|(_, q)| q) {
            let _ = conn.pool.free(q.offset);
        }
        conn.queued_at.clear();
        conn.quota = PoolQuota::new();
        let flags = conn.flags;
        if let Some(b) = self.buses.get_mut(&bus) {
            b.conns.remove(&id);
            b.matches.remove_conn(key);
            b.monitors.retain(|m| *m != key);
            b.dbus_peers.remove(&key);
        }
        if let Some(u) = self.users.get_mut(&uid) {
            u.conns = u.conns.saturating_sub(1);
        }
        for (requester, cookie) in owed {
            if let Some(t) = self.tracker_remove(key, requester, cookie) {
                self.tracker_fail(requester, cookie, t, ReplyFailure::Dead);
            }
        }
        for (replier, cookie) in awaited {
            if let Some(t) = self.tracker_remove(replier, key, cookie) {
                if let (Some(sync_req), Some(conn)) = (t.sync_req, self.conns.get_mut(&key)) {
                    let e = Errno::ECONNRESET.0;
                    conn_push_record(conn, &mut self.outbox, wire::REC_REPLY, 0, e, sync_req, &[]);
                }
            }
        }
        if flags & hello_flags::MONITOR == 0 {
            self.dbus_conn_gone(bus, id);
            let p = NotifyIdChange { id, flags };
            self.notify(
                bus,
                Notification::IdRemove { id },
                item::ID_REMOVE,
                p.as_bytes(),
            );
        }
        tracing::debug!(conn = key, id, "disconnected");
    }

    /// The client's socket is gone: disconnect (if not yet) and forget the connection.
    pub fn conn_release(&mut self, key: ConnKey) {
        self.conn_disconnect(key);
        self.conns.remove(&key);
    }

    // ---------------------------------------------------------------- info

    fn cmd_conn_info(&mut self, key: ConnKey, body: &[u8]) -> Result<CmdInfo, Errno> {
        let (cmd, size) = read_cmd::<CmdInfo>(body)?;
        if cmd.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let items = &body[std::mem::size_of::<CmdInfo>()..size as usize];
        let me = self.conns.get(&key).ok_or(Errno::ECONNRESET)?;
        let bus = self.buses.get(&me.bus).ok_or(Errno::ESHUTDOWN)?;
        let target_key = if cmd.id == 0 {
            let name = items_name(items)?.ok_or(Errno::EINVAL)?;
            kdbus_abi::names::validate_well_known_name(name, false)?;
            bus.names.lookup(name).ok_or(Errno::ESRCH)?.owner
        } else {
            kdbus_abi::items::validate_all(items)?;
            *bus.conns.get(&cmd.id).ok_or(Errno::ENXIO)?
        };
        let t = self.conns.get(&target_key).ok_or(Errno::ENXIO)?;
        let meta = SenderMeta {
            id: t.id,
            creds: t.peer.creds,
            peer: t.peer.clone(),
            description: t.description.clone(),
            attach_send: t.attach_send,
            names: bus_owned_names(bus, target_key),
        };
        let (id, flags) = (t.id, t.flags);
        // What the target agreed to send, of what the caller asked (HEAD).
        let mask =
            attach::sanitize(cmd.attach_flags)? & t.attach_send & INFO_ATTACH & self.attach_mask;
        let (offset, info_size) = self.write_info(key, id, flags, mask, &meta, None)?;
        let mut wb = cmd;
        wb.offset = offset;
        wb.info_size = info_size;
        Ok(wb)
    }

    fn cmd_bus_creator_info(&mut self, key: ConnKey, body: &[u8]) -> Result<CmdInfo, Errno> {
        let (cmd, size) = read_cmd::<CmdInfo>(body)?;
        if cmd.flags != 0 {
            return Err(Errno::EINVAL);
        }
        kdbus_abi::items::validate_all(&body[std::mem::size_of::<CmdInfo>()..size as usize])?;
        let me = self.conns.get(&key).ok_or(Errno::ECONNRESET)?;
        let bus = self.buses.get(&me.bus).ok_or(Errno::ESHUTDOWN)?;
        let meta = SenderMeta {
            id: 0,
            creds: bus.creator.creds,
            peer: bus.creator.clone(),
            description: None,
            attach_send: attach::ALL,
            names: Vec::new(),
        };
        let (id, flags) = (bus.id, bus.flags);
        // What the creator agreed to show, of what the caller asked (HEAD).
        let mask = attach::sanitize(cmd.attach_flags)?
            & bus.attach_flags_owner
            & INFO_ATTACH
            & self.attach_mask;
        let name: Arc<str> = bus.name.as_str().into();
        let (offset, info_size) = self.write_info(key, id, flags, mask, &meta, Some(&name))?;
        let mut wb = cmd;
        wb.offset = offset;
        wb.info_size = info_size;
        Ok(wb)
    }

    /// Write `kdbus_info` (+ the bus's `MAKE_NAME` for BUS_CREATOR_INFO) + metadata
    /// into the caller's pool as a published slice.
    fn write_info(
        &mut self,
        key: ConnKey,
        id: u64,
        flags: u64,
        mask: u64,
        meta: &SenderMeta,
        make_name: Option<&str>,
    ) -> Result<(u64, u64), Errno> {
        let now = self.clock.now();
        let name_len = make_name.map_or(0, |n| kdbus_abi::items::item_space(n.len() + 1));
        let size =
            std::mem::size_of::<Info>() + name_len + meta_len(mask & !attach::TIMESTAMP, meta);
        self.scratch.clear();
        self.scratch.extend_from_slice(
            Info {
                size: size as u64,
                id,
                flags,
            }
            .as_bytes(),
        );
        if let Some(n) = make_name {
            ItemWriter::new(&mut self.scratch).push_str(item::MAKE_NAME, n);
        }
        meta_write(&mut self.scratch, mask & !attach::TIMESTAMP, meta, now, 0);
        let conn = self.conns.get_mut(&key).ok_or(Errno::ECONNRESET)?;
        conn_write_owner_slice(conn, &self.scratch)
    }

    fn cmd_update(&mut self, key: ConnKey, body: &[u8]) -> Result<CmdGeneric, Errno> {
        let (cmd, size) = read_cmd::<CmdGeneric>(body)?;
        if cmd.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let items = &body[std::mem::size_of::<CmdGeneric>()..size as usize];
        let (mut send, mut recv) = (None, None);
        for it in ItemIter::new(items) {
            let it = it?;
            it.check_payload()?;
            match it.type_ {
                item::ATTACH_FLAGS_SEND => send = Some(it.as_u64()?),
                item::ATTACH_FLAGS_RECV => recv = Some(it.as_u64()?),
                item::NAME | item::POLICY_ACCESS => return Err(Errno::EOPNOTSUPP),
                _ => {}
            }
        }
        // HEAD: only ordinary connections and monitors send metadata, activators
        // may choose what they receive too; a bus's required metadata stays required.
        let conn = self.conns.get(&key).ok_or(Errno::ECONNRESET)?;
        let monitor = conn.flags & hello_flags::MONITOR != 0;
        let activator = conn.flags & hello_flags::ACTIVATOR != 0;
        let send = match send {
            Some(_) if !conn.is_ordinary() && !monitor => return Err(Errno::EOPNOTSUPP),
            Some(s) => {
                let s = attach::sanitize(s)?;
                let req = self.buses.get(&conn.bus).map_or(0, |b| b.attach_flags_req);
                if req & !s != 0 {
                    return Err(Errno::EINVAL);
                }
                Some(s)
            }
            None => None,
        };
        let recv = match recv {
            Some(_) if !conn.is_ordinary() && !monitor && !activator => {
                return Err(Errno::EOPNOTSUPP)
            }
            Some(r) => Some(attach::sanitize(r)?),
            None => None,
        };
        let conn = self.conns.get_mut(&key).ok_or(Errno::ECONNRESET)?;
        if let Some(s) = send {
            conn.attach_send = s;
        }
        if let Some(r) = recv {
            conn.attach_recv = r;
        }
        Ok(cmd)
    }

    fn cmd_list(&mut self, key: ConnKey, body: &[u8]) -> Result<CmdList, Errno> {
        let (cmd, _) = read_cmd::<CmdList>(body)?;
        if cmd.flags & !list_flags::ALL != 0 {
            return Err(Errno::EINVAL);
        }
        let me = self.conns.get(&key).ok_or(Errno::ECONNRESET)?;
        let bus = self.buses.get(&me.bus).ok_or(Errno::ESHUTDOWN)?;
        self.scratch.clear();
        let f = cmd.flags;
        for ck in bus.conns.values() {
            let Some(c) = self.conns.get(ck) else {
                continue;
            };
            let activator = c.flags & hello_flags::ACTIVATOR != 0;
            if c.flags & (hello_flags::MONITOR | hello_flags::POLICY_HOLDER) != 0
                || (activator && f & list_flags::ACTIVATORS == 0)
            {
                continue;
            }
            let mut added = false;
            if f & (list_flags::NAMES | list_flags::ACTIVATORS) != 0 {
                for n in bus.names.owned_by(c.key) {
                    let Some(e) = bus.names.lookup(n) else {
                        continue;
                    };
                    if f & list_flags::ACTIVATORS != 0 {
                        if let Some(a) = e
                            .activator
                            .filter(|a| *a != c.key)
                            .and_then(|a| self.conns.get(&a))
                        {
                            list_write(&mut self.scratch, a, Some((n, name_flags::ACTIVATOR)));
                            added = true;
                        }
                    }
                    if f & list_flags::NAMES != 0 || activator {
                        list_write(&mut self.scratch, c, Some((n, e.flags)));
                        added = true;
                    }
                }
            }
            if f & list_flags::QUEUED != 0 {
                for n in bus.names.queued_by(c.key) {
                    let Some(e) = bus.names.lookup(n) else {
                        continue;
                    };
                    let flags = e.queue.iter().find(|(q, _)| *q == c.key).map_or(0, |q| q.1);
                    list_write(
                        &mut self.scratch,
                        c,
                        Some((n, flags | name_flags::IN_QUEUE)),
                    );
                    added = true;
                }
            }
            if !added && f & list_flags::UNIQUE != 0 {
                list_write(&mut self.scratch, c, None);
            }
        }
        let conn = self.conns.get_mut(&key).ok_or(Errno::ECONNRESET)?;
        let (offset, list_size) = conn_write_owner_slice(conn, &self.scratch)?;
        let mut wb = cmd;
        wb.offset = offset;
        wb.list_size = list_size;
        Ok(wb)
    }

    // ---------------------------------------------------------------- names

    fn cmd_name_acquire(&mut self, key: ConnKey, body: &[u8]) -> Result<CmdGeneric, Errno> {
        let (cmd, size) = read_cmd::<CmdGeneric>(body)?;
        if cmd.flags & !crate::names::ACQUIRE_FLAGS != 0 {
            return Err(Errno::EINVAL);
        }
        let items = &body[std::mem::size_of::<CmdGeneric>()..size as usize];
        let name = items_name(items)?.ok_or(Errno::EINVAL)?;
        kdbus_abi::names::validate_well_known_name(name, false)?;
        let conn = self.conns.get(&key).ok_or(Errno::ECONNRESET)?;
        let bus_key = conn.bus;
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        // Without policy entries only privileged bus users may own names (kdbus's
        // default); the policy database will add grants.
        if !bus.is_privileged(&conn.peer) {
            return Err(Errno::EPERM);
        }
        let mut events = Vec::new();
        let return_flags = bus
            .names
            .acquire(key, false, name, cmd.flags, &mut events)?;
        self.names_apply(bus_key, events);
        Ok(CmdGeneric {
            return_flags,
            ..cmd
        })
    }

    fn cmd_name_release(&mut self, key: ConnKey, body: &[u8]) -> Result<CmdGeneric, Errno> {
        let (cmd, size) = read_cmd::<CmdGeneric>(body)?;
        if cmd.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let items = &body[std::mem::size_of::<CmdGeneric>()..size as usize];
        // HEAD looks the name up without judging its form: an invalid name is just
        // one nobody owns (ESRCH).
        let name = items_name(items)?.ok_or(Errno::EINVAL)?;
        let bus_key = self.conns.get(&key).ok_or(Errno::ECONNRESET)?.bus;
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let mut events = Vec::new();
        bus.names.release(key, name, &mut events)?;
        self.names_apply(bus_key, events);
        Ok(cmd)
    }

    /// Carry out what a registry change means, in order: move messages, notify.
    pub(crate) fn names_apply(&mut self, bus: BusKey, events: Vec<NameEvent>) {
        for ev in events {
            match ev {
                NameEvent::Move { from, to, name_id } => self.conn_move_messages(from, to, name_id),
                other => self.notify_name_change(bus, &other),
            }
        }
    }

    /// NAME_ADD / NAME_REMOVE / NAME_CHANGE with the unique ids and flags of the old
    /// and new owners (0 for none).
    fn notify_name_change(&mut self, bus: BusKey, ev: &NameEvent) {
        self.dbus_name_event(bus, ev);
        let id = |k: ConnKey| self.conns.get(&k).map_or(0, |c| c.id);
        let (item_type, name, old, new) = match ev {
            NameEvent::Add { name, owner, flags } => {
                (item::NAME_ADD, name, (0, 0), (id(*owner), *flags))
            }
            NameEvent::Remove { name, owner, flags } => {
                (item::NAME_REMOVE, name, (id(*owner), *flags), (0, 0))
            }
            NameEvent::Change {
                name,
                old,
                old_flags,
                new,
                new_flags,
            } => (
                item::NAME_CHANGE,
                name,
                (id(*old), *old_flags),
                (id(*new), *new_flags),
            ),
            NameEvent::Move { .. } => return,
        };
        let mut payload = Vec::with_capacity(40 + name.len());
        payload.extend_from_slice(
            NotifyIdChange {
                id: old.0,
                flags: old.1,
            }
            .as_bytes(),
        );
        payload.extend_from_slice(
            NotifyIdChange {
                id: new.0,
                flags: new.1,
            }
            .as_bytes(),
        );
        payload.extend_from_slice(name.as_bytes());
        payload.push(0);
        let n = match item_type {
            item::NAME_ADD => Notification::NameAdd {
                old: old.0,
                new: new.0,
                name,
            },
            item::NAME_REMOVE => Notification::NameRemove {
                old: old.0,
                new: new.0,
                name,
            },
            _ => Notification::NameChange {
                old: old.0,
                new: new.0,
                name,
            },
        };
        self.notify(bus, n, item_type, &payload);
    }

    /// Move queued messages from `from` to `to` (all, or those sent to `name_id`),
    /// keeping their order and sequence numbers, with the answers owed for them. A
    /// message that does not fit into `to` is lost for it: counted as dropped, and its
    /// sender learns REPLY_DEAD if it waited for an answer.
    fn conn_move_messages(&mut self, from: ConnKey, to: ConnKey, name_id: Option<u64>) {
        let Some(src) = self.conns.get_mut(&from) else {
            return;
        };
        let seqs: Vec<u64> = src
            .queue
            .iter()
            .filter(|(_, q)| name_id.is_none_or(|id| q.name_id == id))
            .map(|(seq, _)| seq)
            .collect();
        let mut moved = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let Some(q) = src.queue.remove(seq) else {
                continue;
            };
            src.queued_at.remove(&q.offset);
            src.quota.uncharge(q.user, q.size, q.charged_fds);
            let bytes = src.mem.read(q.offset, q.size as usize);
            let _ = src.pool.free(q.offset);
            conn_push_record(
                src,
                &mut self.outbox,
                wire::REC_RETRACT,
                0,
                0,
                0,
                &q.offset.to_ne_bytes(),
            );
            moved.push((seq, q, bytes));
        }
        for (seq, q, bytes) in moved {
            let tracker = q
                .src
                .filter(|_| q.expect_reply)
                .and_then(|s| self.tracker_remove(from, s, q.cookie));
            if self.conns.get(&to).is_some_and(|c| c.dbus.is_some()) {
                let delivered = bytes.as_deref().is_some_and(|b| {
                    self.dbus_deliver_pool_message(to, b, q.files.clone())
                        .is_ok()
                });
                match (tracker, q.src) {
                    (Some(t), Some(requester)) if delivered => {
                        self.tracker_insert(to, requester, q.cookie, t)
                    }
                    (Some(t), Some(requester)) => {
                        self.tracker_fail(requester, q.cookie, t, ReplyFailure::Dead)
                    }
                    _ => {}
                }
                continue;
            }
            let Some(dst) = self.conns.get_mut(&to) else {
                continue;
            };
            // Charged on the pool as it is, then allocated (HEAD's order, as for a
            // delivery).
            let placed = bytes.and_then(|b| {
                dst.quota
                    .charge(&dst.pool, q.user, q.size, q.charged_fds)
                    .ok()?;
                let Ok(offset) = dst.pool.alloc_for_delivery(q.size) else {
                    dst.quota.uncharge(q.user, q.size, q.charged_fds);
                    return None;
                };
                dst.mem.write(offset, &b);
                Some(offset)
            });
            let Some(offset) = placed else {
                conn_lose(dst, &mut self.outbox);
                if let (Some(t), Some(requester)) = (tracker, q.src) {
                    self.tracker_fail(requester, q.cookie, t, ReplyFailure::Dead);
                }
                continue;
            };
            conn_enqueue(
                dst,
                &mut self.outbox,
                seq,
                Queued {
                    offset,
                    ..q.clone()
                },
            );
            if let (Some(t), Some(requester)) = (tracker, q.src) {
                self.tracker_insert(to, requester, q.cookie, t);
            }
        }
    }

    /// Record "replier owes requester an answer to cookie".
    pub(crate) fn tracker_insert(
        &mut self,
        replier: ConnKey,
        requester: ConnKey,
        cookie: u64,
        t: Tracker,
    ) {
        if let Some(r) = self.conns.get_mut(&replier) {
            r.owed.insert((requester, cookie), t);
        }
        if let Some(r) = self.conns.get_mut(&requester) {
            r.awaited.insert((replier, cookie));
        }
        self.deadlines
            .insert((t.deadline, replier, requester, cookie));
    }

    // ---------------------------------------------------------------- matches

    fn cmd_match_add(&mut self, key: ConnKey, body: &[u8]) -> Result<CmdMatch, Errno> {
        let (cmd, size) = read_cmd::<CmdMatch>(body)?;
        if cmd.flags & !match_flags::ALL != 0 {
            return Err(Errno::EINVAL);
        }
        let rules = &body[std::mem::size_of::<CmdMatch>()..size as usize];
        let bus_key = self.conns.get(&key).ok_or(Errno::ECONNRESET)?.bus;
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let replace = cmd.flags & match_flags::REPLACE != 0;
        bus.matches
            .add(key, cmd.cookie, replace, rules, bus.bloom.size)?;
        Ok(cmd)
    }

    fn cmd_match_remove(&mut self, key: ConnKey, body: &[u8]) -> Result<CmdMatch, Errno> {
        let (cmd, size) = read_cmd::<CmdMatch>(body)?;
        if cmd.flags != 0 {
            return Err(Errno::EINVAL);
        }
        kdbus_abi::items::validate_all(&body[std::mem::size_of::<CmdMatch>()..size as usize])?;
        let bus_key = self.conns.get(&key).ok_or(Errno::ECONNRESET)?.bus;
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        bus.matches.remove(key, cmd.cookie)?;
        Ok(cmd)
    }

    // ---------------------------------------------------------------- notifications

    /// Send a bus notification to every connection whose matches take it.
    pub(crate) fn notify(
        &mut self,
        bus_key: BusKey,
        n: Notification<'_>,
        item_type: u64,
        payload: &[u8],
    ) {
        let Some(bus) = self.buses.get(&bus_key) else {
            return;
        };
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        let conns = &self.conns;
        targets.extend(bus_native_monitors(bus, conns));
        bus.matches
            .for_each_notification_receiver(&n, &mut self.seen, |c| {
                if conns.get(&c).is_some_and(|c| !conn_is_native_monitor(c)) {
                    targets.push(c);
                }
            });
        if !targets.is_empty() {
            self.seq += 1;
            let seq = self.seq;
            for &c in &targets {
                self.deliver_kernel_at(c, DST_ID_BROADCAST, 0, item_type, payload, seq);
            }
        }
        self.targets = targets;
    }

    // ---------------------------------------------------------------- output

    /// Connections with records to write; the broker calls [`Domain::conn_output`] for each.
    pub fn take_dirty(&mut self, into: &mut Vec<ConnKey>) {
        // Losses are told once per flush, with the running total (kdbus woke the
        // connection on its first loss; RECV reports how many since the last RECV).
        for i in 0..self.outbox.dirty.len() {
            let key = self.outbox.dirty[i];
            if let Some(c) = self.conns.get_mut(&key) {
                if c.dbus.is_none() && c.dropped_msgs != c.dropped_told {
                    c.dropped_told = c.dropped_msgs;
                    let total = c.dropped_msgs;
                    conn_push_record(
                        c,
                        &mut self.outbox,
                        wire::REC_DROPPED,
                        0,
                        0,
                        0,
                        total.as_bytes(),
                    );
                }
            }
        }
        into.clear();
        std::mem::swap(into, &mut self.outbox.dirty);
        let conns = &self.conns;
        into.sort_by_key(|k| conns.get(k).map_or(0, |c| c.flush_stamp));
    }

    /// The pending output of a connection (records, fds); the broker drains what it wrote.
    pub fn conn_output(
        &mut self,
        key: ConnKey,
    ) -> Option<(&mut Vec<u8>, &mut crate::conn::OutFiles)> {
        let c = self.conns.get_mut(&key)?;
        c.dirty = false;
        Some((&mut c.out, &mut c.out_fds))
    }

    /// The broker is done with a connection's output: if it wrote all of it, the
    /// buffer goes back to the spares.
    pub fn conn_output_done(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            self.outbox.recycle(c);
        }
    }

    /// Mark a connection as having output again (after a partial write).
    pub fn conn_mark_dirty(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            conn_mark_dirty(c, &mut self.outbox);
        }
    }

    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }
}

/// KDBUS_FLAG_NEGOTIATE (kdbus HEAD): a command with this flag does nothing and
/// gets its fixed part back with `flags` set to what the command accepts.
pub fn negotiate(c: u32, body: &[u8]) -> Option<Vec<u8>> {
    let flags: u64 = kdbus_abi::read_struct(body.get(8..)?)?;
    if flags & kdbus_abi::FLAG_NEGOTIATE == 0 {
        return None;
    }
    let allowed = kdbus_abi::cmd_allowed_flags(c);
    let size: u64 = kdbus_abi::read_struct(body)?;
    let len = usize::try_from(size).ok()?.min(body.len()).max(16);
    let mut wb = body.get(..len)?.to_vec();
    wb[8..16].copy_from_slice(&allowed.to_ne_bytes());
    Some(wb)
}

/// Where a SEND goes: (connection, registry id of the name it was sent to, or 0).
fn bus_resolve_destination(
    bus: &Bus,
    conns: &HashMap<ConnKey, Box<Conn>>,
    req: &SendRequest<'_>,
) -> Result<(ConnKey, u64), Errno> {
    let dst_id = req.msg.dst_id;
    let Some(name) = req.dst_name else {
        if dst_id == kdbus_abi::DST_ID_NAME {
            return Err(Errno::EDESTADDRREQ);
        }
        let key = *bus.conns.get(&dst_id).ok_or(Errno::ENXIO)?;
        // Activators, policy holders and monitors cannot be addressed by id.
        if !conns.get(&key).is_some_and(|c| c.is_ordinary()) {
            return Err(Errno::ENXIO);
        }
        return Ok((key, 0));
    };
    let e = bus.names.lookup(name).ok_or(Errno::ESRCH)?;
    let owner = conns.get(&e.owner).ok_or(Errno::ESRCH)?;
    if dst_id != kdbus_abi::DST_ID_NAME && owner.id != dst_id {
        return Err(Errno::EREMCHG);
    }
    if e.flags & name_flags::ACTIVATOR != 0
        && req.msg.flags & kdbus_abi::msg_flags::NO_AUTO_START != 0
    {
        return Err(Errno::EADDRNOTAVAIL);
    }
    Ok((e.owner, e.name_id))
}

/// The names `conn` owns, with their flags (for NAMES metadata).
pub(crate) fn bus_owned_names(bus: &Bus, conn: ConnKey) -> Vec<(Arc<str>, u64)> {
    bus.names
        .owned_by(conn)
        .filter_map(|n| Some((n.clone(), bus.names.lookup(n)?.flags)))
        .collect()
}

/// The NAME item of a command (a plain string, as in kdbus HEAD); EINVAL if malformed.
fn items_name(items: &[u8]) -> Result<Option<&str>, Errno> {
    let mut name = None;
    for it in ItemIter::new(items) {
        let it = it?;
        if it.type_ == item::NAME {
            if name.is_some() {
                return Err(Errno::EINVAL);
            }
            name = Some(it.as_str()?);
        }
    }
    Ok(name)
}

/// One LIST record: `kdbus_info` + an OWNED_NAME item + the description.
fn list_write(out: &mut Vec<u8>, c: &Conn, name: Option<(&Arc<str>, u64)>) {
    let name_len = name.map_or(0, |(n, _)| kdbus_abi::items::item_space(8 + n.len() + 1));
    let desc_len = c
        .description
        .as_ref()
        .map_or(0, |d| kdbus_abi::items::item_space(d.len() + 1));
    let info = Info {
        size: (24 + name_len + desc_len) as u64,
        id: c.id,
        flags: c.flags,
    };
    out.extend_from_slice(info.as_bytes());
    let mut w = ItemWriter::new(out);
    if let Some((n, flags)) = name {
        w.push_parts(
            item::OWNED_NAME,
            &[&flags.to_ne_bytes(), n.as_bytes(), &[0]],
        );
    }
    if let Some(d) = &c.description {
        w.push_str(item::CONN_DESCRIPTION, d);
    }
}

/// Metadata CONN_INFO and BUS_CREATOR_INFO can report (what was captured at connect).
const INFO_ATTACH: u64 = attach::NAMES
    | attach::CREDS
    | attach::PIDS
    | attach::AUXGROUPS
    | attach::TID_COMM
    | attach::PID_COMM
    | attach::EXE
    | attach::CMDLINE
    | attach::CGROUP
    | attach::CAPS
    | attach::AUDIT
    | attach::CONN_DESCRIPTION;

/// Which commands each kind of connection may issue (spec CON13).
fn conn_may(conn: &Conn, c: u32) -> bool {
    let f = conn.flags;
    let any = matches!(c, cmd::LIST | cmd::CONN_INFO | cmd::BUS_CREATOR_INFO);
    if conn.is_ordinary() || any {
        return true;
    }
    // HEAD: monitors see everything without matches; activators may read what
    // waits for their name.
    if f & hello_flags::MONITOR != 0 {
        return matches!(c, cmd::RECV | cmd::FREE | cmd::UPDATE);
    }
    if f & hello_flags::ACTIVATOR != 0 {
        return matches!(c, cmd::RECV | cmd::FREE | cmd::UPDATE);
    }
    if f & hello_flags::POLICY_HOLDER != 0 {
        return c == cmd::UPDATE;
    }
    false
}

/// A reply body, by command.
enum Reply {
    Send(CmdSend),
    Recv(CmdRecv),
    Free(CmdFree),
    Generic(CmdGeneric),
    Info(CmdInfo),
    List(CmdList),
    Match(CmdMatch),
}

impl Reply {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Reply::Send(c) => c.as_bytes(),
            Reply::Recv(c) => c.as_bytes(),
            Reply::Free(c) => c.as_bytes(),
            Reply::Generic(c) => c.as_bytes(),
            Reply::Info(c) => c.as_bytes(),
            Reply::List(c) => c.as_bytes(),
            Reply::Match(c) => c.as_bytes(),
        }
    }
}

fn send_writeback(cmd: &CmdSend, reply: Option<MsgInfo>) -> CmdSend {
    let mut wb = *cmd;
    wb.return_flags = 0;
    wb.reply = reply.unwrap_or_default();
    wb
}

pub(crate) fn conn_push_record(
    conn: &mut Conn,
    outbox: &mut Outbox,
    kind: u16,
    n_fds: u16,
    error: i32,
    req_id: u64,
    body: &[u8],
) {
    let h = RecHeader {
        kind,
        n_fds,
        error,
        req_id,
        body_len: body.len() as u64,
    };
    wire::push_frame(outbox.buf(conn), &h, &[body]);
    if kind == wire::REC_REPLY {
        // An answer goes out after whatever its command did to other connections, so
        // a client that sees the answer finds the effects already in their sockets
        // (kdbus: all of it had happened when the ioctl returned).
        outbox.stamp += 1;
        conn.flush_stamp = outbox.stamp;
    }
}

/// A claim may carry an `FDS` item with the numbers the receiver's fds got in its
/// process (they travelled with the announcement): written into the message's `FDS`
/// item, so the receiver finds them where kdbus put them. Nothing else in the slice
/// can be touched this way, and only with as many numbers as the message has fds.
fn conn_claim_fd_numbers(conn: &mut Conn, q: &Queued, items: &[u8]) -> Result<(), Errno> {
    for it in ItemIter::new(items) {
        let it = it?;
        if it.type_ != item::FDS {
            return Err(Errno::EINVAL);
        }
        if it.payload.len() != q.fd_slots.len() * 4 || q.fd_slots.len() != q.n_fds() as usize {
            return Err(Errno::EINVAL);
        }
        for (slot, number) in q.fd_slots.iter().zip(it.payload.chunks_exact(4)) {
            conn.mem.write(q.offset + u64::from(*slot), number);
        }
    }
    Ok(())
}

/// A native monitor (HELLO with `MONITOR`): sees every message on its bus without
/// matches. D-Bus monitors go by their own rules.
fn conn_is_native_monitor(c: &Conn) -> bool {
    c.flags & hello_flags::MONITOR != 0 && c.dbus.is_none()
}

fn bus_native_monitors<'a>(
    bus: &'a Bus,
    conns: &'a HashMap<ConnKey, Box<Conn>>,
) -> impl Iterator<Item = ConnKey> + 'a {
    bus.monitors
        .iter()
        .copied()
        .filter(|m| conns.get(m).is_some_and(|c| conn_is_native_monitor(c)))
}

/// `conn` lost a message for lack of room; its client hears of it with the next flush.
fn conn_lose(conn: &mut Conn, outbox: &mut Outbox) {
    conn.dropped_msgs += 1;
    if conn.dbus.is_none() {
        conn_mark_dirty(conn, outbox);
    }
}

/// Note that `conn` has output for the broker to flush (once per loop iteration).
pub(crate) fn conn_mark_dirty(conn: &mut Conn, outbox: &mut Outbox) {
    if !conn.dirty {
        conn.dirty = true;
        outbox.dirty.push(conn.key);
        outbox.stamp += 1;
        conn.flush_stamp = outbox.stamp;
    }
}

/// Connections with output for the broker, and spare output buffers.
///
/// A connection holds an output buffer only between the moment something is queued
/// for it and the moment the broker has written it all: then the buffer goes back to
/// the spares, and the next connection with output takes it. Busy connections so
/// reuse a few warm buffers without allocating, and an idle connection (most of
/// them, on a desktop bus) holds none, instead of the capacity of its largest burst.
#[derive(Default)]
pub struct Outbox {
    pub(crate) dirty: Vec<ConnKey>,
    /// Orders the flush: connections are written in the order of their stamps.
    stamp: u64,
    spare: Vec<Vec<u8>>,
}

/// The largest payload of a D-Bus peer's SEND: a D-Bus message of the protocol's
/// maximum size after the bus rewrote its header (a sender field of a unique name).
const DBUS_MAX_PAYLOAD: u64 = kdbus_dbus::header::MAX_MESSAGE_SIZE as u64 + 1024;

/// How a message reaches one receiver.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Route {
    /// The registry id of the name it was sent to (0: sent to an id).
    pub name_id: u64,
    /// Its sequence number in the domain.
    pub seq: u64,
    /// Whom a D-Bus receiver's stream quota charges for it.
    pub charge: Charge,
}

/// Spare buffers kept: enough for every connection a loop iteration typically writes
/// to; more are freed.
const OUTBOX_SPARES: usize = 64;
/// Buffers larger than this (after a burst) are freed rather than kept.
const OUTBOX_SPARE_MAX_BYTES: usize = 64 * 1024;

impl Outbox {
    /// `conn`'s output buffer, for appending (a spare if it has none), with `conn`
    /// marked as having output.
    pub(crate) fn buf<'c>(&mut self, conn: &'c mut Conn) -> &'c mut Vec<u8> {
        if conn.out.capacity() == 0 {
            if let Some(b) = self.spare.pop() {
                conn.out = b;
            }
        }
        conn_mark_dirty(conn, self);
        &mut conn.out
    }

    /// Take back `conn`'s buffer if it is empty.
    fn recycle(&mut self, conn: &mut Conn) {
        if !conn.out.is_empty() || conn.out.capacity() == 0 {
            return;
        }
        let b = std::mem::take(&mut conn.out);
        if self.spare.len() < OUTBOX_SPARES && b.capacity() <= OUTBOX_SPARE_MAX_BYTES {
            self.spare.push(b);
        }
    }
}

fn conn_enqueue(conn: &mut Conn, outbox: &mut Outbox, seq: u64, q: Queued) {
    let ev = MsgEvent {
        offset: q.offset,
        msg_size: q.size,
        priority: q.priority,
        seq,
        dropped_msgs: conn.dropped_msgs,
    };
    let n = q.n_fds() as u16;
    let at = conn.out.len();
    conn.out_fds.extend(q.files.clone().map(|f| (at, f)));
    conn.queued_at.insert(q.offset, seq);
    conn.queue.push(seq, q.priority, q);
    conn_push_record(conn, outbox, wire::REC_MSG, n, 0, 0, ev.as_bytes());
}

/// Where a message goes in a pool.
#[derive(Clone, Copy)]
enum Slot {
    /// The incoming queue: kdbus's delivery rule and the sending user's quota apply.
    Queue { user: u32, fds: u32 },
    /// Handed to the owner at once (a synchronous reply): published, not accounted.
    Owner,
}

/// Lay out `req` for `dst`, allocate its slice and write it. Returns (offset, size,
/// where its fds' numbers go).
fn conn_write_message(
    dst: &mut Conn,
    scratch: &mut Vec<u8>,
    slot: Slot,
    req: &SendRequest<'_>,
    sender: &SenderMeta,
    now: Now,
    seq: u64,
) -> Result<(u64, u64, crate::message::FdSlots), Errno> {
    let mask = dst.attach_recv & sender.attach_send;
    let (data_off, fd_slots) = message_layout(scratch, req, sender.id, mask, sender, now, seq);
    let total = data_off + req.payload_len;
    let pool_err = |e: crate::pool::PoolError| Errno(e.errno());
    let offset = match slot {
        Slot::Queue { user, fds } => {
            // The quota is judged on the pool as it is, before this message is in it
            // (kdbus HEAD charges, then allocates).
            dst.quota
                .charge(&dst.pool, user, total, fds)
                .map_err(|e| Errno(e.errno()))?;
            match dst.pool.alloc_for_delivery(total) {
                Ok(offset) => offset,
                Err(e) => {
                    dst.quota.uncharge(user, total, fds);
                    return Err(pool_err(e));
                }
            }
        }
        Slot::Owner => {
            let offset = dst.pool.alloc(total, false).map_err(pool_err)?;
            dst.pool.publish(offset).map_err(pool_err)?;
            offset
        }
    };
    dst.mem.write(offset, scratch);
    let mut at = offset + data_off;
    for data in message_payload(req) {
        dst.mem.write(at, data);
        at += kdbus_abi::align8(data.len() as u64);
    }
    Ok((offset, total, fd_slots))
}

/// Write a result the owner asked for (info, list, hello items) into its pool: an
/// unaccounted, published slice. Returns (offset, size).
fn conn_write_owner_slice(conn: &mut Conn, data: &[u8]) -> Result<(u64, u64), Errno> {
    let len = data.len() as u64;
    let offset = conn.pool.alloc(len, false).map_err(|e| Errno(e.errno()))?;
    let _ = conn.pool.publish(offset);
    conn.mem.write(offset, data);
    Ok((offset, len))
}
