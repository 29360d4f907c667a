//! A connection: one HELLO'd client on a bus, with its receive pool and queue.
//!
//! Messages for a connection are written into its pool when they are sent (so a full
//! pool is the sender's error, not a surprise later), then queued. The client learns of
//! each queued message through an event record and claims it; the queue here stays the
//! authority on what is pending (BYEBYE, REPLY_DEAD on disconnect, queue limits).

use crate::domain::{BusKey, ConnKey};
use crate::memory::PoolMemory;
use crate::meta::Peer;
use crate::pool::{PoolAllocator, PoolQuota};
use crate::queue::RecvQueue;
use crate::reply::{Tracker, TrackerKey};
use kdbus_abi::hello_flags;
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    Active,
    /// After BYEBYE or bus teardown: every command fails with ECONNRESET.
    Disconnected,
}

/// File descriptors travelling with a message. Shared: the queue keeps them (a message
/// may still move to another connection) while the announcement carries them out.
pub type Files = Arc<[OwnedFd]>;

/// Fds waiting with a connection's output, each with the offset in the output where
/// the record or message they belong to starts.
pub type OutFiles = Vec<(usize, Files)>;

/// A message sitting in a connection's queue.
#[derive(Clone, Debug)]
pub struct Queued {
    pub offset: u64,
    pub size: u64,
    /// Sender's connection (for REPLY_DEAD when dropped), `None` for bus messages.
    pub src: Option<ConnKey>,
    pub cookie: u64,
    pub expect_reply: bool,
    /// Quota charged to this user for this message.
    pub user: u32,
    pub files: Option<Files>,
    /// The registry id of the name the message was sent to (0: sent to an id).
    pub name_id: u64,
    pub priority: i64,
    /// Where each fd's number sits in the slice, for a claim that names the
    /// receiver's fd numbers.
    pub fd_slots: crate::message::FdSlots,
    /// Fds charged to `user`'s quota (the `FDS` item's; memfds are payload).
    pub charged_fds: u32,
}

impl Queued {
    pub fn n_fds(&self) -> u32 {
        self.files.as_ref().map_or(0, |f| f.len() as u32)
    }
}

pub struct Conn {
    pub key: ConnKey,
    pub id: u64,
    pub bus: BusKey,
    pub flags: u64,
    pub attach_send: u64,
    pub attach_recv: u64,
    pub peer: Peer,
    pub description: Option<Arc<str>>,
    pub state: ConnState,
    pub pool: PoolAllocator,
    pub quota: PoolQuota,
    pub mem: Box<dyn PoolMemory>,
    pub queue: RecvQueue<Queued>,
    /// Offset of a queued message's slice -> its sequence number (for CLAIM).
    pub queued_at: HashMap<u64, u64>,
    /// Answers this connection owes: (requester, cookie) -> tracker.
    pub owed: HashMap<TrackerKey, Tracker>,
    /// Answers this connection waits for: (replier, cookie).
    pub awaited: HashSet<(ConnKey, u64)>,
    pub dropped_msgs: u64,
    /// `dropped_msgs` as last told to the client (a `REC_DROPPED` record).
    pub dropped_told: u64,
    /// Records (D-Bus messages for D-Bus peers) waiting to be written to the client, and
    /// the fds going with them: one entry per record or message that has fds, in order,
    /// with the offset in `out` where it starts (a stream must send a message's fds
    /// with its first byte).
    pub out: Vec<u8>,
    pub out_fds: OutFiles,
    pub dirty: bool,
    /// Where the connection comes in the next flush (see `Outbox`).
    pub flush_stamp: u64,
    /// Name given at HELLO (activators, policy holders).
    pub special_name: Option<String>,
    /// Set for D-Bus clients: they get D-Bus messages on a stream, not a pool.
    pub dbus: Option<Box<crate::dbus::DBusPeer>>,
}

impl Conn {
    pub fn is_ordinary(&self) -> bool {
        self.flags & (hello_flags::ACTIVATOR | hello_flags::POLICY_HOLDER | hello_flags::MONITOR)
            == 0
    }

    pub fn is_active(&self) -> bool {
        self.state == ConnState::Active
    }
}
