//! A domain: buses, their connections, and the one sequence number that orders every
//! message in it.
//!
//! The broker hands the domain whole commands (a request body plus the credentials the
//! kernel attached) and gets back records to write to each connection. Everything a
//! command changes happens inside one call, so the order in which the broker feeds
//! commands is the order of the bus: no locks, and a total order for free.
//!
//! `Domain` holds the state: the bus and connection registries, reply deadlines,
//! per-user counts, the sequence counter, the outbox, and scratch buffers reused by
//! every command. The behaviour lives with what it acts on, as further `impl Domain`
//! blocks, each in its own module and each using only the modules below it:
//!
//! ```text
//! handle      decode a command, check who may issue it, run its handler, answer
//! lifecycle   HELLO, BYEBYE, disconnect, bus teardown, monitors
//! info        CONN_INFO, BUS_CREATOR_INFO, LIST, UPDATE
//! naming      NAME_ACQUIRE / RELEASE and what a registry change means
//! matching    MATCH_ADD / REMOVE
//! send        SEND: routing, replies, broadcasts
//! recv        RECV / CLAIM / FREE
//! replies     trackers, timeouts, REPLY_TIMEOUT / REPLY_DEAD
//! notify      ID_* / NAME_* notifications, stream peers' name events
//! deliver     one message into one receiver (pool slice or stream), monitors' copies
//! ```
//!
//! Output is buffered per connection (`Conn::output`) and the keys of connections with
//! output are collected in the [`Outbox`]; the broker flushes each dirty connection
//! once per loop iteration, which is where batching comes from.

use crate::bus::{bus_parse_make, Bus};
use crate::clock::{Clock, Now};
use crate::conn::Conn;
use crate::files::{FdInspector, FdLedger, NoInspector};
use crate::ids::{BusKey, ConnKey, Files, OutFiles};
use crate::matches::MatchDb;
use crate::message::Staged;
use crate::meta::{Creds, Peer};
use crate::names::NameRegistry;
use crate::outbox::Outbox;
use crate::pool::PoolBudget;
use crate::sink::{Echo, StreamOut, StreamPeer};
use kdbus_abi::wire;
use kdbus_abi::{attach, limits, CmdSend, Errno};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use zerocopy::IntoBytes;

/// Quota user id for messages the bus generates itself.
pub(crate) const KERNEL_USER: u32 = u32::MAX;

/// Largest receive pool a client may ask for. The memfd is sparse, so this bounds
/// address space, not memory; memory is bounded by the quota.
pub const POOL_MAX_SIZE: u64 = 1 << 30;

/// One command as the broker read it.
pub struct Request<'a> {
    /// The command: kdbus's ioctl number (`kdbus_abi::cmd`).
    pub cmd: u32,
    /// Request flags (`wire::REQ_*`), not the command's own flags.
    pub flags: u32,
    /// The id the client chose, repeated in the answer.
    pub req_id: u64,
    /// The command struct with its items; what kdbus pointed to by address follows, at
    /// offsets into the body.
    pub body: &'a [u8],
    /// The datagram's `SCM_CREDENTIALS`: who sends now, which may differ from who
    /// connected.
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

/// Match entries all of one user's connections may hold by default (dbus-broker's
/// 16 Ki).
pub const USER_MAX_MATCHES: usize = 16 * 1024;

/// What all the connections of one unprivileged user may hold together in a domain,
/// whatever their number (dbus-broker's per-user quotas, `src/util/user.c`). Each
/// connection has its own, smaller limits besides; privileged users have none of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserLimits {
    /// Receive-pool memory the user's pools may have touched (see `pool`).
    pub pool_bytes: u64,
    /// Match entries.
    pub matches: usize,
    /// Bytes of those entries' rules, as sent.
    pub match_bytes: usize,
}

impl Default for UserLimits {
    /// Generous for any real program (a burst of 160 MB passes), small enough that
    /// one user cannot take the machine: together well under 600 MB of the broker.
    fn default() -> Self {
        UserLimits {
            pool_bytes: 256 << 20,
            matches: USER_MAX_MATCHES,
            match_bytes: 64 << 20,
        }
    }
}

#[derive(Default)]
pub(crate) struct UserUsage {
    pub(crate) conns: usize,
    pub(crate) buses: usize,
    /// Match entries of all the user's connections in the domain, and their bytes.
    pub(crate) matches: usize,
    pub(crate) match_bytes: usize,
    /// The memory the user's pools have touched (made with the first connection).
    pub(crate) pool: Option<Rc<PoolBudget>>,
}

/// All the state of one domain (see the module docs); the broker owns one and feeds it
/// every command, in order.
pub struct Domain {
    /// Where time comes from (the broker's clock, or a manual one in tests).
    pub(crate) clock: Box<dyn Clock>,
    /// What passed fds are (memfd payloads, sockets that may not travel).
    pub(crate) files: Box<dyn FdInspector>,
    /// What a sending process is now, for metadata taken at send time.
    pub(crate) proc_facts: Box<dyn crate::meta::ProcFacts>,
    /// Who pays for the fds messages carry (none: nobody is bound).
    pub(crate) fd_ledger: Option<Rc<dyn FdLedger>>,
    /// Metadata the domain attaches at all (kdbus's `attach_flags_mask` module
    /// parameter): applied to messages, notifications and INFO results.
    pub(crate) attach_mask: u64,
    pub(crate) buses: HashMap<BusKey, Bus>,
    pub(crate) bus_names: HashMap<String, BusKey>,
    /// Boxed: the table then holds pointers, and growing it does not double the
    /// memory of every connection.
    pub(crate) conns: crate::ids::KeyMap<ConnKey, Box<Conn>>,
    /// (deadline, replier, requester, cookie) of every tracker, earliest first.
    pub(crate) deadlines: BTreeSet<(u64, ConnKey, ConnKey, u64)>,
    /// Connections and buses per uid (the per-user limits).
    pub(crate) users: HashMap<u32, UserUsage>,
    pub(crate) user_limits: UserLimits,
    /// The last sequence number given to a message.
    pub(crate) seq: u64,
    pub(crate) next_key: u64,
    pub(crate) next_bus_id: u64,
    pub(crate) outbox: Outbox,
    /// Connections whose bus went away, for the broker to hang up on.
    pub(crate) closed: Vec<ConnKey>,
    /// Reused for laying out messages and results.
    pub(crate) scratch: Vec<u8>,
    /// Reused per broadcast: receivers seen, receivers found, the filter as words,
    /// the sender's names.
    pub(crate) seen: crate::ids::KeySet<ConnKey>,
    pub(crate) targets: Vec<ConnKey>,
    pub(crate) bloom_words: Vec<u64>,
    pub(crate) bloom_generation: u64,
    pub(crate) sender_names: Vec<Arc<str>>,
    /// The current send (layouts are shared within one), and the last layout.
    pub(crate) send_gen: u64,
    pub(crate) staged: Staged,
    /// Copies for stream monitors a stream call left (see `sink`).
    pub(crate) echo: Echo,
    /// Reused to visit a bus's stream peers.
    pub(crate) stream_keys: Vec<ConnKey>,
    /// Reads message headers for the message policy.
    pub(crate) facts_reader: Box<dyn crate::msgpolicy::FactsReader>,
    /// What the message policy last refused (see `msgcheck`).
    pub(crate) denial: Option<crate::msgpolicy::Denial>,
}

impl Domain {
    /// Set the metadata the domain attaches at all (kdbus's module parameter
    /// `attach_flags_mask`); takes effect with the next command.
    pub fn set_attach_mask(&mut self, mask: u64) {
        self.attach_mask = mask;
    }

    /// Let the broker read a sending process's name, program and arguments at each
    /// send (for receivers that ask for them).
    pub fn set_proc_facts(&mut self, p: Box<dyn crate::meta::ProcFacts>) {
        self.proc_facts = p;
    }

    /// The command line a connection's process had when it connected, or, if that was
    /// deferred ([`crate::Peer::deferred`]), has now: for log lines that name a peer.
    pub fn conn_cmdline(&self, key: ConnKey) -> Option<Arc<[u8]>> {
        let c = self.conns.get(&key)?;
        if !c.peer.deferred {
            return c.peer.cmdline.clone();
        }
        self.proc_facts
            .proc_now(&c.peer, c.peer.creds.pid, kdbus_abi::attach::CMDLINE)?
            .cmdline
    }

    /// The pidfd of a connection's process (D-Bus `ProcessFD`), taken from its socket
    /// when first asked for and kept, charged to its user; `None` if there is none,
    /// or the user may hold no more descriptors.
    pub fn conn_pidfd(&mut self, key: ConnKey) -> Option<Files> {
        let c = self.conns.get_mut(&key)?;
        crate::meta::peer_pidfd(&*self.proc_facts, self.fd_ledger.as_ref(), &mut c.peer)
    }

    /// Let the broker say what passed fds are (without it, memfd payloads are refused).
    pub fn set_fd_inspector(&mut self, files: Box<dyn FdInspector>) {
        self.files = files;
    }

    /// Charge the fds messages carry to their senders in `ledger`.
    pub fn set_fd_ledger(&mut self, ledger: Rc<dyn FdLedger>) {
        self.fd_ledger = Some(ledger);
    }

    /// Set what one unprivileged user may hold in all. Applies to what comes next:
    /// pools keep the budget they were made with.
    pub fn set_user_limits(&mut self, l: UserLimits) {
        self.user_limits = l;
    }

    /// What one unprivileged user may hold in all, as last set.
    pub fn user_limits(&self) -> UserLimits {
        self.user_limits
    }

    /// The budget the pools of `uid` draw on (none for privileged callers).
    pub(crate) fn user_pool_budget(
        &mut self,
        uid: u32,
        privileged: bool,
    ) -> Option<Rc<PoolBudget>> {
        if privileged {
            return None;
        }
        let cap = self.user_limits.pool_bytes;
        let usage = self.users.entry(uid).or_default();
        Some(
            usage
                .pool
                .get_or_insert_with(|| PoolBudget::new(cap))
                .clone(),
        )
    }

    /// Pool memory the connections of `uid` have touched in all.
    pub fn user_pool_touched(&self, uid: u32) -> u64 {
        self.users
            .get(&uid)
            .and_then(|u| u.pool.as_ref())
            .map_or(0, |b| b.touched())
    }

    /// An empty domain reading time from `clock`. Until the broker sets them, fds are not
    /// inspected, nobody is charged for them, metadata is what was taken at connect, and
    /// everything is attached that a receiver asks for.
    pub fn new(clock: Box<dyn Clock>) -> Self {
        Domain {
            clock,
            files: Box::new(NoInspector),
            fd_ledger: None,
            attach_mask: attach::ALL,
            buses: HashMap::new(),
            bus_names: HashMap::new(),
            conns: Default::default(),
            deadlines: BTreeSet::new(),
            users: HashMap::new(),
            user_limits: UserLimits::default(),
            seq: 0,
            next_key: 1,
            next_bus_id: 1,
            outbox: Outbox::default(),
            closed: Vec::new(),
            scratch: Vec::with_capacity(4096),
            seen: Default::default(),
            targets: Vec::new(),
            bloom_words: Vec::new(),
            bloom_generation: 0,
            sender_names: Vec::new(),
            echo: Echo::default(),
            send_gen: 0,
            staged: Staged::default(),
            stream_keys: Vec::new(),
            facts_reader: Box::new(crate::msgpolicy::NoFacts),
            proc_facts: Box::new(crate::meta::NoProcFacts),
            denial: None,
        }
    }

    pub(crate) fn next_key(&mut self) -> u64 {
        let k = self.next_key;
        self.next_key += 1;
        k
    }

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
            policy: Default::default(),
            endpoints: HashMap::new(),
            next_endpoint: 1,
            matches: MatchDb::new(),
            monitors: Vec::new(),
            eavesdroppers: Vec::new(),
            stream_listeners: Default::default(),
            msg_policy: None,
            limits: Default::default(),
        };
        self.next_bus_id += 1;
        self.bus_names.insert(spec.name, key);
        self.buses.insert(key, bus);
        tracing::debug!(bus = %self.buses[&key].name, "bus created");
        Ok(key)
    }

    /// Set what connections, users and the whole of `bus` may hold (a configuration's
    /// limits); what is held already stays, only what comes next is refused.
    pub fn bus_set_limits(&mut self, key: BusKey, limits: crate::bus::BusLimits) {
        if let Some(b) = self.buses.get_mut(&key) {
            b.limits = limits;
            b.names.max_per_conn = limits.names_per_conn;
            b.matches.max_per_conn = limits.matches_per_conn;
        }
    }

    /// The bus behind `key`, if it still exists.
    pub fn bus(&self, key: BusKey) -> Option<&Bus> {
        self.buses.get(&key)
    }

    /// The bus named `name` (`<uid>-<name>`) in this domain.
    pub fn bus_by_name(&self, name: &str) -> Option<BusKey> {
        self.bus_names.get(name).copied()
    }

    /// Connections the broker should close (their bus is gone).
    pub fn take_closed(&mut self) -> Vec<ConnKey> {
        std::mem::take(&mut self.closed)
    }

    /// The connection behind `key`, if it is still in the domain.
    pub fn conn(&self, key: ConnKey) -> Option<&Conn> {
        self.conns.get(&key).map(|c| &**c)
    }

    /// The domain's clock, read now.
    pub fn now(&self) -> Now {
        self.clock.now()
    }

    /// Connections with records to write; the broker calls [`Domain::conn_output`] for each.
    pub fn take_dirty(&mut self, into: &mut Vec<ConnKey>) {
        // Losses are told once per flush, with the running total (kdbus woke the
        // connection on its first loss; RECV reports how many since the last RECV).
        for i in 0..self.outbox.dirty.len() {
            let key = self.outbox.dirty[i];
            if let Some(c) = self.conns.get_mut(&key) {
                if c.stream.is_none() && c.dropped_msgs != c.dropped_told {
                    c.dropped_told = c.dropped_msgs;
                    let total = c.dropped_msgs;
                    self.outbox.push_record(
                        &mut c.output,
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
        into.sort_by_key(|k| conns.get(k).map_or(0, |c| c.output.flush_stamp));
    }

    /// The pending output of a connection (records, fds); the broker drains what it wrote.
    pub fn conn_output(&mut self, key: ConnKey) -> Option<(&mut Vec<u8>, &mut OutFiles)> {
        let c = self.conns.get_mut(&key)?;
        c.output.dirty = false;
        Some((&mut c.output.out, &mut c.output.files))
    }

    /// The broker is done with a connection's output: if it wrote all of it, the
    /// buffer goes back to the spares.
    pub fn conn_output_done(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            self.outbox.recycle(&mut c.output);
        }
    }

    /// A connection's output buffer that left it (to wait in the broker's backlog)
    /// and is now written out: back to the outbox's spares.
    pub fn output_give_back(&mut self, buf: Vec<u8>) {
        self.outbox.give_back(buf);
    }

    /// Run `f` on stream connection `key`'s peer with its output (`None` if it is not
    /// a stream receiver); copies it leaves for monitors reach them afterwards. The
    /// one way into a stream peer, for the core and for personalities alike.
    pub fn with_stream<R>(
        &mut self,
        key: ConnKey,
        f: impl FnOnce(&mut dyn StreamPeer, &mut StreamOut<'_>) -> R,
    ) -> Option<R> {
        let c = self.conns.get_mut(&key)?;
        let bus = c.bus;
        let r = c.with_stream(&mut self.outbox, &mut self.echo, f);
        if !self.echo.is_empty() {
            self.echo_to_monitors(bus, Some(key));
        }
        r
    }

    /// Show the bus's stream monitors (other than `except`) a copy of `msg`, something
    /// the bus itself received or sent (in the monitors' protocol), with its fds.
    pub fn monitors_observe(
        &mut self,
        bus_key: BusKey,
        except: Option<ConnKey>,
        msg: &[u8],
        files: Option<&Files>,
    ) {
        self.echo.clear();
        if let Some(f) = files {
            self.echo.files.push((0, f.clone()));
        }
        self.echo.bytes.extend_from_slice(msg);
        self.echo_to_monitors(bus_key, except);
    }

    /// The broker wrote `n` bytes of stream connection `key`'s output.
    pub fn stream_written(&mut self, key: ConnKey, n: usize) {
        self.with_stream(key, |s, _| s.written(n));
    }

    /// Hand what a stream call echoed to the bus's stream monitors other than `except`.
    pub(crate) fn echo_to_monitors(&mut self, bus_key: BusKey, except: Option<ConnKey>) {
        let echo = std::mem::take(&mut self.echo);
        if let Some(bus) = self.buses.get(&bus_key) {
            for m in &bus.monitors {
                if Some(*m) == except {
                    continue;
                }
                let Some(c) = self.conns.get_mut(m) else {
                    continue;
                };
                let mut unused = Echo::default();
                c.with_stream(&mut self.outbox, &mut unused, |s, out| {
                    s.observe(out, &echo.bytes, &echo.files)
                });
            }
        }
        self.echo = echo;
        self.echo.clear();
    }
}

/// The names `conn` owns, with their flags (for NAMES metadata).
pub(crate) fn bus_owned_names(bus: &Bus, conn: ConnKey) -> Vec<(Arc<str>, u64)> {
    bus.names
        .owned_by(conn)
        .filter_map(|n| Some((n.clone(), bus.names.lookup(n)?.flags)))
        .collect()
}
