//! What a D-Bus peer's stream holds that the broker has not written yet, and whose it
//! is.
//!
//! A native receiver has a pool, and kdbus's per-user quota on it; a D-Bus receiver
//! has a byte stream the bus appends to, so it needs its own bound, and the bound
//! must not let one sender shut others out (or get the receiver disconnected for
//! being slow). Every message appended is recorded in order with the user it is
//! charged to; the broker reports how many bytes it wrote, and the records drain
//! from the front.
//!
//! The shares follow dbus-broker's dynamic quota: a user already holding `share`
//! bytes of a stream on which `n` users hold bytes (itself included) may add
//! `charge` bytes if
//!
//! ```text
//!     (share + charge) * (n + 1) - share <= remaining
//! ```
//!
//! which grants each user between 1/n² and 1/n of the stream. Messages the receiver
//! asked for (replies to its calls, the bus's own messages, a monitor's copies) are
//! counted but never refused, and a stream that holds nothing takes any one message:
//! the D-Bus framing already bounds it. Fds in flight are shared out the same way
//! (each one pins a descriptor of the broker until the receiver reads its message).
//!
//! Above the streams, the receiving *user* has books of its own ([`UserBooks`],
//! dbus-broker's per-user quota): everything its streams hold from senders together
//! may not pass [`USER_QUOTA_BYTES`], shared out among the sending users by the same
//! rule, so a burst to one receiver has room while one user's many never-reading
//! connections cannot make the broker hold more than that.

pub use kdbus_core::sink::Charge;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

/// Bytes a D-Bus receiver may have waiting from other peers. The share rule gives a
/// lone sending user half of it, 128 MiB: an ordinary burst to a receiver that keeps
/// reading (8,000 calls of 20 KB from four peers of one user) left 55 MB waiting on
/// an idle machine and over 64 MiB on a busy one, where half of 128 MiB refused some.
/// dbus-broker grants a lone sending user half of the receiving user's 512 MiB,
/// dbus-daemon's session bus 1 GB per connection.
pub const STREAM_QUOTA_BYTES: u64 = 256 * 1024 * 1024;
/// Bytes all the D-Bus streams of one user may have waiting from other peers
/// (dbus-broker's per-user byte quota).
pub const USER_QUOTA_BYTES: u64 = 512 * 1024 * 1024;

/// What the streams of each receiving user hold from each sending user.
#[derive(Debug, Default)]
pub struct UserBooks {
    /// By receiving user; entries are kept once made (there are only so many users).
    users: HashMap<u32, Held>,
}

/// One receiving user's total, and each sending user's part of it.
#[derive(Debug, Default)]
struct Held {
    bytes: u64,
    senders: Vec<(u32, u64)>,
}

/// The books, shared by every D-Bus peer of the bus (one thread).
pub type SharedUserBooks = Rc<RefCell<UserBooks>>;

impl UserBooks {
    /// May `sender` add `len` bytes to what `receiver`'s streams hold?
    fn admits(&self, receiver: u32, sender: u32, len: u64) -> bool {
        let Some(h) = self.users.get(&receiver) else {
            return len <= USER_QUOTA_BYTES;
        };
        let share = h.senders.iter().find(|s| s.0 == sender).map_or(0, |s| s.1);
        let n = h.senders.len() as u64 + u64::from(share == 0);
        share_admits(USER_QUOTA_BYTES.saturating_sub(h.bytes), n, share, len)
    }

    fn charge(&mut self, receiver: u32, sender: u32, len: u64) {
        let h = self.users.entry(receiver).or_default();
        h.bytes += len;
        match h.senders.iter_mut().find(|s| s.0 == sender) {
            Some(s) => s.1 += len,
            None => h.senders.push((sender, len)),
        }
    }

    fn release(&mut self, receiver: u32, sender: u32, len: u64) {
        let Some(h) = self.users.get_mut(&receiver) else {
            return;
        };
        h.bytes = h.bytes.saturating_sub(len);
        if let Some(i) = h.senders.iter().position(|s| s.0 == sender) {
            h.senders[i].1 = h.senders[i].1.saturating_sub(len);
            if h.senders[i].1 == 0 {
                h.senders.swap_remove(i);
            }
        }
        // The entry stays (one per user that ever received): a message in flight and
        // gone again must not cost an allocation.
    }

    /// Bytes `receiver`'s streams hold from senders.
    pub fn held(&self, receiver: u32) -> u64 {
        self.users.get(&receiver).map_or(0, |h| h.bytes)
    }
}
/// Fds a D-Bus receiver may have waiting from other peers (one message may carry up
/// to 253, the kernel's SCM_MAX_FD).
pub const STREAM_QUOTA_FDS: u32 = 256;

/// A sender-charged message (or run of them) not yet fully written.
#[derive(Debug)]
struct Record {
    user: u32,
    /// Stream positions of its bytes.
    start: u64,
    end: u64,
    /// Fds that travel with its first byte.
    fds: u32,
}

/// What one sending user holds on a stream.
#[derive(Debug)]
struct Usage {
    user: u32,
    bytes: u64,
    fds: u32,
}

/// How much a stream may hold from other peers: bytes and fds (a configuration's
/// `max_outgoing_bytes` and `max_outgoing_unix_fds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// Bytes of other peers' messages the stream may hold unwritten
    /// (`max_outgoing_bytes`).
    pub bytes: u64,
    /// Sender-charged fds it may hold unwritten (`max_outgoing_unix_fds`).
    pub fds: u32,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            bytes: STREAM_QUOTA_BYTES,
            fds: STREAM_QUOTA_FDS,
        }
    }
}

/// The books of one D-Bus peer's stream: what it holds unwritten, charged to which
/// sending user, against its [`StreamLimits`] and its user's [`UserBooks`] (see the
/// module docs).
#[derive(Debug, Default)]
pub struct StreamQuota {
    /// Its bounds.
    pub limits: StreamLimits,
    /// The receiving user and its books, if the stream counts towards them.
    pub user: Option<(u32, SharedUserBooks)>,
    /// Stream positions: bytes appended, bytes written, since the stream began.
    appended: u64,
    written: u64,
    /// Sender-charged fds not yet written.
    fds: u32,
    /// Unwritten sender-charged messages in stream order. Requested bytes need no
    /// record, so a connection that only gets what it asked for (most of them) holds
    /// none.
    charged: VecDeque<Record>,
    /// Per sending user (few users talk to one peer: a vector).
    users: Vec<Usage>,
    /// The most bytes and sender-charged fds it ever held unwritten (for
    /// `GetConnectionStats`).
    peak_bytes: u64,
    peak_fds: u32,
}

/// dbus-broker's share rule: may a user holding `share` of a resource of which
/// `remaining` is left, with `n` users holding some (itself included), add `charge`?
fn share_admits(remaining: u64, n: u64, share: u64, charge: u64) -> bool {
    share
        .checked_add(charge)
        .and_then(|v| v.checked_mul(n + 1))
        .and_then(|v| v.checked_sub(share))
        .is_some_and(|need| need <= remaining)
}

impl StreamQuota {
    /// Bytes appended and not yet written.
    pub fn pending_bytes(&self) -> u64 {
        self.appended - self.written
    }

    /// Sender-charged fds not yet written.
    pub fn pending_fds(&self) -> u32 {
        self.fds
    }

    /// The most `pending_bytes` and `pending_fds` have been.
    pub fn peaks(&self) -> (u64, u32) {
        (self.peak_bytes, self.peak_fds)
    }

    /// What each sending user holds: (uid, bytes, fds).
    pub fn senders(&self) -> impl Iterator<Item = (u32, u64, u32)> + '_ {
        self.users.iter().map(|u| (u.user, u.bytes, u.fds))
    }

    /// Whether `len` more bytes and `fds` fds charged as `charge` fit.
    pub fn admits(&self, charge: Charge, len: u64, fds: u32) -> bool {
        let Charge::Sender(user) = charge else {
            return true;
        };
        let (share, share_fds) = self.share_of(user);
        let n = self.users.len() as u64 + u64::from(share == 0 && share_fds == 0);
        let total = self.pending_bytes();
        let bytes_ok =
            total == 0 || share_admits(self.limits.bytes.saturating_sub(total), n, share, len);
        let user_ok = self
            .user
            .as_ref()
            .is_none_or(|(me, books)| books.borrow().admits(*me, user, len));
        let fds_ok = fds == 0
            || self.fds == 0
            || share_admits(
                u64::from(self.limits.fds.saturating_sub(self.fds)),
                n,
                u64::from(share_fds),
                u64::from(fds),
            );
        bytes_ok && user_ok && fds_ok
    }

    /// Record `len` bytes (and `fds` fds going with their first byte) appended.
    pub fn charge(&mut self, charge: Charge, len: u64, fds: u32) {
        let start = self.appended;
        self.appended += len;
        self.peak_bytes = self.peak_bytes.max(self.pending_bytes());
        self.peak_fds = self.peak_fds.max(self.fds + fds);
        let Charge::Sender(user) = charge else {
            return;
        };
        if let Some((me, books)) = &self.user {
            books.borrow_mut().charge(*me, user, len);
        }
        match self.users.iter_mut().find(|u| u.user == user) {
            Some(u) => {
                u.bytes += len;
                u.fds += fds;
            }
            None => self.users.push(Usage {
                user,
                bytes: len,
                fds,
            }),
        }
        self.fds += fds;
        // Consecutive bytes of one user without fds share a record.
        match self.charged.back_mut() {
            Some(r) if r.user == user && r.end == start && fds == 0 => r.end = self.appended,
            _ => self.charged.push_back(Record {
                user,
                start,
                end: self.appended,
                fds,
            }),
        }
    }

    /// The broker wrote `n` more bytes of the stream.
    pub fn written(&mut self, n: u64) {
        let before = self.written;
        self.written = (self.written + n).min(self.appended);
        while let Some(r) = self.charged.front() {
            if r.start >= self.written {
                break;
            }
            let freed = r.end.min(self.written) - r.start.max(before);
            if let Some((me, books)) = &self.user {
                books.borrow_mut().release(*me, r.user, freed);
            }
            // Its fds went with its first byte.
            let fds = if r.start >= before { r.fds } else { 0 };
            let (user, done) = (r.user, r.end <= self.written);
            self.fds -= fds;
            if let Some(i) = self.users.iter().position(|u| u.user == user) {
                let u = &mut self.users[i];
                u.bytes -= freed;
                u.fds -= fds;
                if u.bytes == 0 && u.fds == 0 {
                    self.users.swap_remove(i);
                }
            }
            if !done {
                break;
            }
            self.charged.pop_front();
        }
    }

    /// Bytes and fds `user` holds on this stream.
    fn share_of(&self, user: u32) -> (u64, u32) {
        self.users
            .iter()
            .find(|u| u.user == user)
            .map_or((0, 0), |u| (u.bytes, u.fds))
    }
}

impl Drop for StreamQuota {
    /// A stream that goes gives its user's books back what it still held.
    fn drop(&mut self) {
        let Some((me, books)) = &self.user else {
            return;
        };
        let mut books = books.borrow_mut();
        for r in &self.charged {
            books.release(*me, r.user, r.end - r.start.max(self.written));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn a_receiving_users_streams_share_its_quota() {
        let books = SharedUserBooks::default();
        let stream = || {
            let mut q = StreamQuota::default();
            q.user = Some((1, books.clone()));
            q.limits.bytes = u64::MAX;
            q
        };
        let (mut a, mut b) = (stream(), stream());
        a.charge(Charge::Sender(2), 300 * MIB, 0);
        assert_eq!(books.borrow().held(1), 300 * MIB);
        // The same sender, through the user's other stream: over its share.
        assert!(!b.admits(Charge::Sender(2), 300 * MIB, 0));
        // Another sender still has room.
        assert!(b.admits(Charge::Sender(3), 50 * MIB, 0));
        b.charge(Charge::Sender(3), 50 * MIB, 0);
        a.written(100 * MIB);
        assert_eq!(books.borrow().held(1), 250 * MIB);
        // A stream that goes gives back what it held.
        drop(a);
        assert_eq!(books.borrow().held(1), 50 * MIB);
        drop(b);
        assert_eq!(books.borrow().held(1), 0);
    }

    #[test]
    fn requested_bytes_keep_no_records() {
        let mut q = StreamQuota::default();
        q.charge(Charge::Requested, 100, 0);
        q.charge(Charge::Sender(1), 50, 0);
        q.charge(Charge::Requested, 100, 0);
        assert_eq!(q.charged.len(), 1);
        // Writing the first 120 bytes frees 20 of the sender's 50.
        q.written(120);
        assert_eq!(q.share_of(1).0, 30);
        q.written(180);
        assert_eq!(q.share_of(1).0, 0);
        assert!(q.charged.is_empty() && q.users.is_empty());
        assert_eq!(q.pending_bytes(), 0);
    }

    #[test]
    fn fds_are_shared_out_too() {
        let mut q = StreamQuota::default();
        // Any one message fits an empty stream.
        assert!(q.admits(Charge::Sender(1), 100, 253));
        let mut fds = 0;
        while q.admits(Charge::Sender(1), 100, 4) {
            q.charge(Charge::Sender(1), 100, 4);
            fds += 4;
        }
        assert!(fds <= STREAM_QUOTA_FDS / 2 + 4, "{fds}");
        assert!(q.admits(Charge::Sender(2), 100, 4));
        // Without fds the same user still gets bytes through.
        assert!(q.admits(Charge::Sender(1), 100, 0));
        // A message's fds go when its first byte is written.
        q.written(1);
        assert_eq!(q.share_of(1).1, fds - 4);
    }

    #[test]
    fn an_empty_stream_takes_any_message() {
        let q = StreamQuota::default();
        assert!(q.admits(Charge::Sender(1), 100 * MIB, 0));
    }

    #[test]
    fn one_sender_cannot_fill_the_stream() {
        let mut q = StreamQuota::default();
        let mut sent = 0;
        while q.admits(Charge::Sender(1), 4096, 0) {
            q.charge(Charge::Sender(1), 4096, 0);
            sent += 4096;
        }
        // Alone, a user gets about half of the stream...
        assert!((STREAM_QUOTA_BYTES / 3..=STREAM_QUOTA_BYTES / 2 + 4096).contains(&sent));
        // ...and another user still gets in.
        assert!(q.admits(Charge::Sender(2), 4096, 0));
        // Requested messages are never refused.
        assert!(q.admits(Charge::Requested, 64 * MIB, 0));
    }

    #[test]
    fn writing_frees_the_senders_share() {
        let mut q = StreamQuota::default();
        while q.admits(Charge::Sender(1), 4096, 0) {
            q.charge(Charge::Sender(1), 4096, 0);
        }
        q.charge(Charge::Requested, 100, 0);
        let total = q.pending_bytes();
        q.written(total);
        assert_eq!(q.pending_bytes(), 0);
        assert!(q.users.is_empty() && q.charged.is_empty());
        assert!(q.admits(Charge::Sender(1), 4096, 0));
    }

    #[test]
    fn many_users_each_get_a_share() {
        let mut q = StreamQuota::default();
        let mut got = [0u64; 4];
        // Users take turns until nobody can add anything.
        loop {
            let mut any = false;
            for (u, g) in got.iter_mut().enumerate() {
                if q.admits(Charge::Sender(u as u32), 4096, 0) {
                    q.charge(Charge::Sender(u as u32), 4096, 0);
                    *g += 4096;
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        assert!(q.pending_bytes() <= STREAM_QUOTA_BYTES);
        // Between 1/n² and 1/n of the stream each (n = 4), give or take a message.
        for g in got {
            assert!(g + 4096 >= STREAM_QUOTA_BYTES / 16, "{got:?}");
            assert!(g <= STREAM_QUOTA_BYTES / 4 + 4096, "{got:?}");
        }
    }

    proptest! {
        /// Whatever is charged and written, the books balance.
        #[test]
        fn accounting_balances(ops in proptest::collection::vec((0u8..4, 1u64..100_000), 1..200)) {
            let mut q = StreamQuota::default();
            let mut appended = 0u64;
            let mut written = 0u64;
            for (op, n) in ops {
                match op {
                    0 => { q.charge(Charge::Requested, n, 0); appended += n; }
                    1 | 2 => {
                        let c = Charge::Sender(u32::from(op));
                        let fds = (n % 5) as u32;
                        if q.admits(c, n, fds) { q.charge(c, n, fds); appended += n; }
                    }
                    _ => {
                        let w = n.min(appended - written);
                        q.written(w);
                        written += w;
                    }
                }
                prop_assert_eq!(q.pending_bytes(), appended - written);
                let by_user: u64 = q.users.iter().map(|u| u.bytes).sum();
                let in_records: u64 = q
                    .charged
                    .iter()
                    .map(|r| r.end - r.start.max(q.written))
                    .sum();
                prop_assert_eq!(by_user, in_records);
                prop_assert!(q.users.iter().all(|u| u.bytes > 0 || u.fds > 0));
                let fds_by_user: u32 = q.users.iter().map(|u| u.fds).sum();
                let fds_in_records: u32 = q
                    .charged
                    .iter()
                    .filter(|r| r.start >= q.written)
                    .map(|r| r.fds)
                    .sum();
                prop_assert_eq!(fds_by_user, fds_in_records);
                prop_assert_eq!(fds_by_user, q.fds);
            }
        }
    }
}
