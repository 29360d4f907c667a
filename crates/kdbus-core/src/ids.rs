//! The names the core's objects know each other by.
//!
//! Registries (names, matches, replies, buses) refer to connections and buses by key,
//! never by reference: an object may go away while others still mention it, and a
//! lookup that fails is an answer the caller handles (the peer is gone), not a
//! dangling pointer. The keys live here, in a leaf, so that every registry can name a
//! connection without depending on the module that holds connections.

use crate::files::FdSlip;
use std::os::fd::OwnedFd;
use std::rc::Rc;

/// A connection in the domain (not its bus-visible id, which is per bus).
pub type ConnKey = u64;

/// Hashes the keys the core hands out itself (connection keys, match entry ids) with
/// one multiplication instead of SipHash: a broadcast looks up every receiver and
/// every candidate match entry, and SipHash was a sixth of the broker's work on that
/// path. No client chooses these keys, so there is no flooding one bucket to fear;
/// anything keyed by what a client sends (names, rules) keeps the standard hasher.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for integer keys; kept correct for anything else.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: the product spreads consecutive keys over the high
        // bits, which hashbrown uses for its control bytes; the rotation brings
        // them down to the low bits that pick the bucket.
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(26);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A map keyed by [`ConnKey`] or another key the core hands out.
pub type KeyMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<KeyHasher>>;
/// A set of [`ConnKey`]s or other keys the core hands out.
pub type KeySet<K> = std::collections::HashSet<K, std::hash::BuildHasherDefault<KeyHasher>>;
/// A bus in the domain.
pub type BusKey = u64;

/// File descriptors travelling with a message. Shared: the queue keeps them (a message
/// may still move to another connection) while the announcement carries them out.
pub type Files = Rc<FileSet>;

/// The descriptors of one message, and the slip that keeps them charged to their
/// sender for as long as the broker holds any of them (see `files::FdLedger`).
pub struct FileSet {
    fds: Box<[OwnedFd]>,
    slip: Option<FdSlip>,
}

impl FileSet {
    /// `fds`, charged to nobody (yet).
    pub fn shared(fds: Vec<OwnedFd>) -> Files {
        Rc::new(FileSet {
            fds: fds.into_boxed_slice(),
            slip: None,
        })
    }

    /// Charge the set to a sender; only while it is not shared yet.
    pub(crate) fn charge(files: &mut Files, slip: FdSlip) -> bool {
        match Rc::get_mut(files) {
            Some(set) => {
                set.slip = Some(slip);
                true
            }
            None => false,
        }
    }

    /// Whether someone pays for these descriptors.
    pub fn is_charged(&self) -> bool {
        self.slip.is_some()
    }
}

impl std::ops::Deref for FileSet {
    type Target = [OwnedFd];
    fn deref(&self) -> &[OwnedFd] {
        &self.fds
    }
}

impl std::fmt::Debug for FileSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.fds.iter()).finish()
    }
}

/// Fds waiting with a connection's output, each with the offset in the output where
/// the record or message they belong to starts.
pub type OutFiles = Vec<(usize, Files)>;
