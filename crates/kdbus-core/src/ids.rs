//! The names the core's objects know each other by.
//!
//! Registries (names, matches, replies, buses) refer to connections and buses by key,
//! never by reference: an object may go away while others still mention it, and a
//! lookup that fails is an answer the caller handles (the peer is gone), not a
//! dangling pointer. The keys live here, in a leaf, so that every registry can name a
//! connection without depending on the module that holds connections.

use std::os::fd::OwnedFd;
use std::sync::Arc;

/// A connection in the domain (not its bus-visible id, which is per bus).
pub type ConnKey = u64;
/// A bus in the domain.
pub type BusKey = u64;

/// File descriptors travelling with a message. Shared: the queue keeps them (a message
/// may still move to another connection) while the announcement carries them out.
pub type Files = Arc<[OwnedFd]>;

/// Fds waiting with a connection's output, each with the offset in the output where
/// the record or message they belong to starts.
pub type OutFiles = Vec<(usize, Files)>;
