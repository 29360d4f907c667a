//! Connections coming and going: HELLO (native and stream), BYEBYE, disconnect,
//! release, bus teardown, and a stream client becoming a monitor.
//!
//! Disconnecting is the one place a connection's obligations are settled: names go
//! first (a name falling back to its activator takes the messages addressed to it
//! along), then the queue is dropped, answers it owed fail with REPLY_DEAD, and
//! synchronous calls it waited in are woken with ECONNRESET.

use crate::conn::{Conn, ConnSpec, ConnState};
use crate::deliver::conn_write_owner_slice;
use crate::domain::{Domain, POOL_MAX_SIZE};
use crate::ids::{BusKey, ConnKey};
use crate::matches::Notification;
use crate::matching::MatchCharge;
use crate::memory::{PoolMemory, VecPool};
use crate::meta::{Faked, Peer};
use crate::policy::policy_parse;
use crate::pool::PoolAllocator;
use crate::reply::ReplyFailure;
use crate::sink::StreamPeer;
use kdbus_abi::items::{ItemIter, ItemWriter};
use kdbus_abi::wire;
use kdbus_abi::NotifyIdChange;
use kdbus_abi::{attach, hello_flags, item, limits, read_cmd, CmdGeneric, CmdHello, Errno};
use std::sync::Arc;
use zerocopy::IntoBytes;

impl Domain {
    /// HELLO on the default endpoint of `bus`. `make_pool` creates the pool memory once
    /// the command is known to be valid.
    pub fn hello(
        &mut self,
        bus_key: BusKey,
        peer: &Peer,
        body: &[u8],
        make_pool: &mut dyn FnMut(u64) -> Result<Box<dyn PoolMemory>, Errno>,
    ) -> Result<(ConnKey, CmdHello), Errno> {
        self.hello_on(bus_key, None, peer, body, make_pool)
    }

    /// HELLO on endpoint `endpoint` of `bus` (`None`: its default one).
    pub fn hello_on(
        &mut self,
        bus_key: BusKey,
        endpoint: Option<u64>,
        peer: &Peer,
        body: &[u8],
        make_pool: &mut dyn FnMut(u64) -> Result<Box<dyn PoolMemory>, Errno>,
    ) -> Result<(ConnKey, CmdHello), Errno> {
        let bus = self.buses.get(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        if endpoint.is_some_and(|e| !bus.endpoints.contains_key(&e)) {
            return Err(Errno::ESHUTDOWN);
        }
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
        // Monitors, activators and policy holders belong to the bus's own endpoint.
        if kind != 0 && endpoint.is_some() {
            return Err(Errno::EOPNOTSUPP);
        }
        if kind != 0 && !bus.is_privileged(peer) {
            return Err(Errno::EPERM);
        }
        let mut description = None;
        let mut name = None;
        let mut faked: Option<Faked> = None;
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
                item::CREDS => {
                    let c: kdbus_abi::Creds =
                        kdbus_abi::read_struct(it.payload).ok_or(Errno::EINVAL)?;
                    let ids = [
                        c.uid, c.euid, c.suid, c.fsuid, c.gid, c.egid, c.sgid, c.fsgid,
                    ];
                    faked.get_or_insert_with(Faked::default).creds = Some(ids);
                }
                item::PIDS => {
                    let p: kdbus_abi::Pids =
                        kdbus_abi::read_struct(it.payload).ok_or(Errno::EINVAL)?;
                    faked.get_or_insert_with(Faked::default).pids = Some([p.pid, p.tid, p.ppid]);
                }
                item::SECLABEL => {
                    let s = it.as_str()?;
                    faked.get_or_insert_with(Faked::default).seclabel = Some(s.into());
                }
                _ => {}
            }
        }
        let needs_name = cmd.flags & (hello_flags::ACTIVATOR | hello_flags::POLICY_HOLDER) != 0;
        if needs_name != name.is_some() {
            return Err(Errno::EINVAL);
        }
        // An activator's or policy holder's name comes with its policy (HEAD: the NAME
        // and its POLICY_ACCESS items; wildcards only for holders).
        let holder = cmd.flags & hello_flags::POLICY_HOLDER != 0;
        let policy = if needs_name {
            policy_parse(items, holder)?
        } else {
            Vec::new()
        };
        let attach_send = attach::sanitize(cmd.attach_flags_send)?;
        let attach_recv = attach::sanitize(cmd.attach_flags_recv)?;
        if bus.attach_flags_req & !attach_send != 0 {
            return Err(Errno::ECONNREFUSED);
        }
        if let Some(n) = name {
            // An activator and a policy holder both speak for a name's policy, so only
            // one of them may exist per name; and one activator per name.
            let held = policy
                .iter()
                .any(|e| bus.policy.has_entry(&e.name, e.wildcard));
            let has_activator = bus.names.lookup(n).is_some_and(|e| e.activator.is_some());
            if held || has_activator {
                return Err(Errno::EEXIST);
            }
        }
        self.user_conn_check(bus_key, peer)?;
        let mem = make_pool(cmd.pool_size)?;
        let (key, id) = self.conn_register(bus_key, peer.creds.uid)?;
        let rules = self.conn_rules(bus_key, peer);
        let budget = self.user_pool_budget(peer.creds.uid, peer.privileged);
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let bloom = bus.bloom;
        let spec = ConnSpec {
            key,
            id,
            bus: bus_key,
            flags: cmd.flags,
            attach_send,
            attach_recv,
            peer: Peer {
                faked: faked.map(Arc::new),
                ..peer.clone()
            },
            description: description.map(Into::into),
            special_name: name.map(str::to_owned),
            endpoint,
        };
        let mut conn = Conn::new(spec, mem, cmd.pool_size, None);
        conn.pool = PoolAllocator::with_budget(cmd.pool_size, budget);
        conn.rules = rules;
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
            self.notify(bus_key, Notification::IdAdd { id }, p.as_bytes());
        }
        if !policy.is_empty() {
            if let Some(bus) = self.buses.get_mut(&bus_key) {
                // Checked above: no entry of these names exists.
                if let Err(e) = bus.policy.set(key, policy) {
                    crate::bug!(e, "a checked policy was refused");
                }
            }
        }
        if let Some(n) = special {
            if flags & hello_flags::ACTIVATOR != 0 {
                let mut events = Vec::new();
                if let Some(bus) = self.buses.get_mut(&bus_key) {
                    // Checked above: nobody else holds the name's policy or activates it.
                    if let Err(e) = bus.names.acquire(key, true, &n, 0, &mut events) {
                        crate::bug!(e, "an activator could not take its name");
                    }
                }
                self.names_apply(bus_key, events);
            }
        }
        Ok((key, reply))
    }

    /// The bus's owner went away: disconnect everyone on it. The broker finds the
    /// connections to hang up on in [`Domain::take_closed`].
    pub fn bus_destroy(&mut self, key: BusKey) {
        let Some(bus) = self.buses.get(&key) else {
            return;
        };
        // Every active connection of the bus has an id on it.
        let conns: Vec<ConnKey> = bus.conns.values().copied().collect();
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

    pub(crate) fn cmd_byebye(
        &mut self,
        key: ConnKey,
        cmd: CmdGeneric,
    ) -> Result<CmdGeneric, Errno> {
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
            b.policy.remove_owner(key);
        }
        self.names_apply(bus, events);
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let owed: Vec<_> = conn.owed.keys().copied().collect();
        let awaited: Vec<_> = conn.awaited.iter().copied().collect();
        conn.queue_drop();
        let flags = conn.flags;
        let mut matches = MatchCharge::default();
        if let Some(b) = self.buses.get_mut(&bus) {
            b.conns.remove(&id);
            matches = MatchCharge::of(&b.matches, key);
            b.matches.remove_conn(key);
            b.monitors.retain(|m| *m != key);
            b.eavesdroppers.retain(|m| *m != key);
            b.stream_listeners.remove(&key);
        }
        if let Some(u) = self.users.get_mut(&uid) {
            u.conns = u.conns.saturating_sub(1);
            MatchCharge::default().settle(matches, u);
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
                    self.outbox
                        .push_record(&mut conn.output, wire::REC_REPLY, 0, e, sync_req, &[]);
                }
            }
        }
        if flags & hello_flags::MONITOR == 0 {
            self.streams_conn_changed(bus, id, false);
            let p = NotifyIdChange { id, flags };
            self.notify(bus, Notification::IdRemove { id }, p.as_bytes());
        }
        tracing::debug!(conn = key, id, "disconnected");
    }

    /// A client of a stream protocol (D-Bus) joins `bus` through `endpoint` (`None`:
    /// the default one): a connection without a pool, whose messages go to `stream`. Returns its key and unique id. Nobody is told
    /// yet: the personality first answers its client, then calls
    /// [`Domain::conn_announce`].
    pub fn hello_stream(
        &mut self,
        bus_key: BusKey,
        endpoint: Option<u64>,
        peer: &Peer,
        stream: Box<dyn StreamPeer>,
    ) -> Result<(ConnKey, u64), Errno> {
        let bus = self.buses.get(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        if endpoint.is_some_and(|e| !bus.endpoints.contains_key(&e)) {
            return Err(Errno::ESHUTDOWN);
        }
        self.user_conn_check(bus_key, peer)?;
        let (key, id) = self.conn_register(bus_key, peer.creds.uid)?;
        let spec = ConnSpec {
            key,
            id,
            bus: bus_key,
            flags: hello_flags::ACCEPT_FD,
            attach_send: attach::ANY,
            attach_recv: 0,
            peer: peer.clone(),
            description: None,
            special_name: None,
            endpoint,
        };
        let mut conn = Conn::new(spec, Box::new(VecPool::new(0)), 0, Some(stream));
        conn.rules = self.conn_rules(bus_key, peer);
        self.conns.insert(key, Box::new(conn));
        Ok((key, id))
    }

    /// Whether `peer` may have one more connection on `bus_key`: the bus's total, and
    /// the per-user limit (kdbus's spares privileged callers, a configuration's binds
    /// everyone).
    fn user_conn_check(&mut self, bus_key: BusKey, peer: &Peer) -> Result<(), Errno> {
        let bus = self.buses.get(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let l = bus.limits;
        if bus.conns.len() >= l.conns {
            return Err(Errno::EMFILE);
        }
        let usage = self.users.entry(peer.creds.uid).or_default();
        if (l.conns_per_user_binds_all || !peer.privileged) && usage.conns >= l.conns_per_user {
            return Err(Errno::EMFILE);
        }
        // A new pool touches its first page at once (the HELLO items).
        let touched = usage.pool.as_ref().map_or(0, |b| b.touched());
        if !peer.privileged && touched + limits::PAGE_SIZE > self.user_limits.pool_bytes {
            return Err(Errno::ENOBUFS);
        }
        Ok(())
    }

    /// A new connection of `uid` on `bus_key`: counted to its user, given a key and the
    /// bus's next unique id. Returns (key, id).
    fn conn_register(&mut self, bus_key: BusKey, uid: u32) -> Result<(ConnKey, u64), Errno> {
        let key = self.next_key();
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let id = bus.next_conn_id;
        bus.next_conn_id += 1;
        bus.conns.insert(id, key);
        self.users.entry(uid).or_default().conns += 1;
        Ok((key, id))
    }

    /// Tell the bus that a stream client joined: ID_ADD to native connections, and to
    /// stream peers in their protocol.
    pub fn conn_announce(&mut self, key: ConnKey) {
        let Some((bus, id, flags)) = self.conns.get(&key).map(|c| (c.bus, c.id, c.flags)) else {
            return;
        };
        let p = NotifyIdChange { id, flags };
        self.notify(bus, Notification::IdAdd { id }, p.as_bytes());
        self.streams_conn_changed(bus, id, true);
    }

    /// Whether a stream client eavesdrops (has a D-Bus rule with `eavesdrop='true'`):
    /// every unicast on its bus is then offered to it. Never one on a custom
    /// endpoint: a sandbox does not watch the traffic of others.
    pub fn conn_set_eavesdropper(&mut self, key: ConnKey, on: bool) {
        let Some(bus) = self
            .conns
            .get(&key)
            .filter(|c| c.endpoint.is_none())
            .and_then(|c| self.buses.get_mut(&c.bus))
        else {
            return;
        };
        let at = bus.eavesdroppers.iter().position(|e| *e == key);
        match (on, at) {
            (true, None) => bus.eavesdroppers.push(key),
            (false, Some(i)) => {
                bus.eavesdroppers.swap_remove(i);
            }
            _ => {}
        }
    }

    /// Tell stream connection `key` of name and connection changes (`true`) or no
    /// longer: its protocol decides whether it may want them.
    pub fn conn_set_listener(&mut self, key: ConnKey, on: bool) {
        let Some(bus) = self
            .conns
            .get(&key)
            .and_then(|c| self.buses.get_mut(&c.bus))
        else {
            return;
        };
        if on {
            bus.stream_listeners.insert(key);
        } else {
            bus.stream_listeners.remove(&key);
        }
    }

    /// A stream client becomes a monitor (D-Bus `BecomeMonitor`): it gives up its names
    /// and matches, gets a copy of everything on the bus, and sends nothing more.
    pub fn conn_become_monitor(&mut self, key: ConnKey) {
        let Some((bus_key, uid)) = self.conns.get(&key).map(|c| (c.bus, c.peer.creds.uid)) else {
            return;
        };
        let mut events = Vec::new();
        if let Some(bus) = self.buses.get_mut(&bus_key) {
            bus.names.release_all(key, &mut events);
            let had = MatchCharge::of(&bus.matches, key);
            bus.matches.remove_conn(key);
            // One rule without conditions: every broadcast.
            if let Err(e) = bus.matches.add(key, 1, false, &[], bus.bloom.size) {
                crate::bug!(e, "an empty match rule was refused");
            }
            if let Some(u) = self.users.get_mut(&uid) {
                MatchCharge::of(&bus.matches, key).settle(had, u);
            }
            bus.monitors.push(key);
        }
        self.names_apply(bus_key, events);
        if let Some(c) = self.conns.get_mut(&key) {
            c.flags |= hello_flags::MONITOR;
        }
    }

    /// The client's socket is gone: disconnect (if not yet) and forget the connection.
    pub fn conn_release(&mut self, key: ConnKey) {
        self.conn_disconnect(key);
        self.conns.remove(&key);
    }
}
