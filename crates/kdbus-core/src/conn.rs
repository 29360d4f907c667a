//! A connection: one HELLO'd client on a bus, with its receive pool and queue.
//!
//! Messages for a connection are written into its pool when they are sent (so a full
//! pool is the sender's error, not a surprise later), then queued. The client learns of
//! each queued message through an event record and claims it; the queue here stays the
//! authority on what is pending (BYEBYE, REPLY_DEAD on disconnect, queue limits).

use crate::ids::{BusKey, ConnKey, Files};
use crate::memory::PoolMemory;
use crate::meta::Peer;
use crate::outbox::{Outbox, Output};
use crate::pool::{PoolAllocator, PoolQuota};
use crate::queue::RecvQueue;
use crate::reply::{Tracker, TrackerKey};
use crate::sink::{Echo, StreamOut, StreamPeer};
use kdbus_abi::hello_flags;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Whether a connection is still on its bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// HELLO'd and on the bus: it may send, receive and own names.
    Active,
    /// After BYEBYE or bus teardown: every command fails with ECONNRESET.
    Disconnected,
}

/// A message sitting in a connection's queue.
#[derive(Clone, Debug)]
pub struct Queued {
    /// Where the message's slice starts in the pool: what RECV hands out, and the key of
    /// `Conn::queued_at`.
    pub offset: u64,
    /// Bytes of the laid-out message (RECV's `msg_size`), as charged to `user`'s quota.
    pub size: u64,
    /// Sender's connection (for REPLY_DEAD when dropped), `None` for bus messages.
    pub src: Option<ConnKey>,
    /// The message's cookie: which tracker to resolve if it goes unanswered.
    pub cookie: u64,
    /// Sent with EXPECT_REPLY: dropping it unread owes the sender a REPLY_DEAD.
    pub expect_reply: bool,
    /// Quota charged to this user for this message.
    pub user: u32,
    /// The fds that go with the message (its `FDS` item's, then memfds).
    pub files: Option<Files>,
    /// The registry id of the name the message was sent to (0: sent to an id).
    pub name_id: u64,
    /// The sender's priority: lower is more urgent (see `RecvQueue`).
    pub priority: i64,
    /// Where each fd's number sits in the slice, for a claim that names the
    /// receiver's fd numbers.
    pub fd_slots: crate::message::FdSlots,
    /// Fds charged to `user`'s quota (the `FDS` item's; memfds are payload).
    pub charged_fds: u32,
}

impl Queued {
    /// Number of fds travelling with the message, memfds included.
    pub fn n_fds(&self) -> u32 {
        self.files.as_ref().map_or(0, |f| f.len() as u32)
    }
}

/// One connection. Its state is the core's; fields are public for reading by the
/// broker and the personalities, which change it only through `Domain`.
pub struct Conn {
    /// The connection's key in the domain.
    pub key: ConnKey,
    /// Its unique id on its bus (`:1.<id>` in D-Bus).
    pub id: u64,
    /// The bus it is on.
    pub bus: BusKey,
    /// HELLO flags (ACCEPT_FD, ACTIVATOR, POLICY_HOLDER, MONITOR).
    pub flags: u64,
    /// Metadata it agreed to send, and wants to receive.
    pub attach_send: u64,
    /// See `attach_send`: what it asked to be told about the senders of what it receives.
    pub attach_recv: u64,
    /// Who connected, as the kernel said when it did.
    pub peer: Peer,
    /// CONN_DESCRIPTION given at HELLO, a human-readable label shown in metadata.
    pub description: Option<Arc<str>>,
    /// Active until BYEBYE, close or bus teardown; never back.
    pub state: ConnState,
    /// The receive pool: slices, the per-user quota on them, the memory.
    pub pool: PoolAllocator,
    /// What each sending user has queued here, against its share of the pool.
    pub quota: PoolQuota,
    /// The pool's bytes, where messages and command results are written.
    pub mem: Box<dyn PoolMemory>,
    /// Messages in the pool not yet received, with their sequence numbers and priorities.
    pub queue: RecvQueue<Queued>,
    /// Offset of a queued message's slice -> its sequence number (for CLAIM).
    pub queued_at: HashMap<u64, u64>,
    /// Answers this connection owes: (requester, cookie) -> tracker.
    pub owed: HashMap<TrackerKey, Tracker>,
    /// Answers this connection waits for: (replier, cookie).
    pub awaited: HashSet<(ConnKey, u64)>,
    /// Messages lost for want of room since the connection was made (RECV's
    /// `dropped_msgs`).
    pub dropped_msgs: u64,
    /// Unicast messages refused to their senders for want of room here (its pool, or
    /// the sender's share of it or of its stream): what made them hear ENOBUFS.
    pub refused: u64,
    /// `dropped_msgs` as last told to the client (a `REC_DROPPED` record).
    pub dropped_told: u64,
    /// What the broker has to write to the client.
    pub output: Output,
    /// Name given at HELLO (activators, policy holders).
    pub special_name: Option<String>,
    /// The custom endpoint it connected through (`None`: the bus's default one).
    pub endpoint: Option<u64>,
    /// Set for receivers on a stream (D-Bus clients): they get their messages through
    /// it, not a pool.
    pub stream: Option<Box<dyn StreamPeer>>,
    /// Its bus's message policy, compiled for it (`None`: the bus has none).
    pub rules: Option<Arc<crate::msgpolicy::ConnRules>>,
}

/// What a new connection is.
pub struct ConnSpec {
    /// The connection's key in the domain.
    pub key: ConnKey,
    /// Its unique id on the bus.
    pub id: u64,
    /// The bus it joins.
    pub bus: BusKey,
    /// HELLO flags, checked.
    pub flags: u64,
    /// Metadata it agrees to send (sanitized; covers what the bus requires).
    pub attach_send: u64,
    /// Metadata it wants with what it receives (sanitized).
    pub attach_recv: u64,
    /// Who connected, with any metadata a privileged caller faked at HELLO.
    pub peer: Peer,
    /// CONN_DESCRIPTION, if given.
    pub description: Option<Arc<str>>,
    /// The name an activator or policy holder speaks for.
    pub special_name: Option<String>,
    /// The custom endpoint it comes through (`None`: the bus's default one).
    pub endpoint: Option<u64>,
}

impl Conn {
    /// A connection with a pool of `mem` (empty for a stream receiver), or a stream.
    pub fn new(
        spec: ConnSpec,
        mem: Box<dyn PoolMemory>,
        pool_size: u64,
        stream: Option<Box<dyn StreamPeer>>,
    ) -> Conn {
        Conn {
            key: spec.key,
            id: spec.id,
            bus: spec.bus,
            flags: spec.flags,
            attach_send: spec.attach_send,
            attach_recv: spec.attach_recv,
            peer: spec.peer,
            description: spec.description,
            state: ConnState::Active,
            pool: PoolAllocator::new(pool_size),
            quota: PoolQuota::new(),
            mem,
            queue: RecvQueue::new(),
            queued_at: HashMap::new(),
            owed: HashMap::new(),
            awaited: HashSet::new(),
            dropped_msgs: 0,
            refused: 0,
            dropped_told: 0,
            output: Output::new(spec.key),
            special_name: spec.special_name,
            endpoint: spec.endpoint,
            stream,
            rules: None,
        }
    }

    /// Neither activator, policy holder nor monitor: may send, own names and BYEBYE
    /// (spec CON13), and be addressed by its id.
    pub fn is_ordinary(&self) -> bool {
        self.flags & (hello_flags::ACTIVATOR | hello_flags::POLICY_HOLDER | hello_flags::MONITOR)
            == 0
    }

    /// Still on its bus ([`ConnState::Active`]).
    pub fn is_active(&self) -> bool {
        self.state == ConnState::Active
    }

    /// The connection's credentials as a policy check sees them.
    pub fn asker(&self) -> crate::policy::Asker<'_> {
        crate::policy::Asker {
            uid: self.peer.creds.uid,
            gid: self.peer.creds.gid,
            groups: self.peer.groups.as_deref().unwrap_or(&[]),
        }
    }

    /// A native monitor (HELLO with `MONITOR`): sees every message on its bus without
    /// matches. Stream monitors go by their protocol's rules.
    pub fn is_native_monitor(&self) -> bool {
        self.flags & hello_flags::MONITOR != 0 && self.stream.is_none()
    }

    /// Run `f` on the connection's stream peer with its output; `None` for a pool.
    /// Copies for monitors land in `echo`.
    pub(crate) fn with_stream<R>(
        &mut self,
        outbox: &mut Outbox,
        echo: &mut Echo,
        f: impl FnOnce(&mut dyn StreamPeer, &mut StreamOut<'_>) -> R,
    ) -> Option<R> {
        let stream = self.stream.as_deref_mut()?;
        let mut to = StreamOut {
            id: self.id,
            flags: self.flags,
            output: &mut self.output,
            outbox,
            dropped: &mut self.dropped_msgs,
            echo,
            rules: self.rules.as_deref(),
        };
        Some(f(stream, &mut to))
    }

    /// Drop every queued message: their slices go back to the pool, their charges
    /// with them.
    pub(crate) fn queue_drop(&mut self) {
        for q in self.queue.drain().map(|(_, q)| q) {
            if let Err(e) = self.pool.free(q.offset) {
                crate::bug!(e, "a queued slice could not be freed");
            }
        }
        self.queued_at.clear();
        self.quota = PoolQuota::new();
    }

    /// A message for this connection was lost for lack of room; its client hears of it
    /// with the next flush.
    pub(crate) fn lose(&mut self, outbox: &mut Outbox) {
        self.dropped_msgs += 1;
        if self.stream.is_none() {
            outbox.mark_dirty(&mut self.output);
        }
    }
}
