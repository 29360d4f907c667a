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
//! the D-Bus framing already bounds it.

use std::collections::VecDeque;

/// Bytes a D-Bus receiver may have waiting from other peers.
pub const STREAM_QUOTA_BYTES: u64 = 8 * 1024 * 1024;

/// Who a message on a stream is charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charge {
    /// A message a peer of this user sent on its own: refused beyond its share.
    Sender(u32),
    /// Something the receiver asked for: counted, never refused.
    Requested,
}

#[derive(Debug, Default)]
pub struct StreamQuota {
    /// Stream positions: bytes appended, bytes written, since the stream began.
    appended: u64,
    written: u64,
    /// Unwritten messages charged to a sender, in stream order: (user, start, end).
    /// Requested bytes need no record, so a connection that only gets what it asked
    /// for (most of them) holds none.
    charged: VecDeque<(u32, u64, u64)>,
    /// Bytes pending per sending user (few users talk to one peer: a vector).
    users: Vec<(u32, u64)>,
}

impl StreamQuota {
    /// Bytes appended and not yet written.
    pub fn pending_bytes(&self) -> u64 {
        self.appended - self.written
    }

    /// Whether `len` more bytes charged as `charge` fit.
    pub fn admits(&self, charge: Charge, len: u64) -> bool {
        let Charge::Sender(user) = charge else {
            return true;
        };
        let total = self.pending_bytes();
        if total == 0 {
            return true;
        }
        let remaining = STREAM_QUOTA_BYTES.saturating_sub(total);
        let share = self.share_of(user);
        let n = self.users.len() as u64 + u64::from(share == 0);
        share
            .checked_add(len)
            .and_then(|v| v.checked_mul(n + 1))
            .and_then(|v| v.checked_sub(share))
            .is_some_and(|need| need <= remaining)
    }

    /// Record `len` bytes appended to the stream.
    pub fn charge(&mut self, charge: Charge, len: u64) {
        let start = self.appended;
        self.appended += len;
        let Charge::Sender(u) = charge else {
            return;
        };
        match self.users.iter_mut().find(|(x, _)| *x == u) {
            Some((_, b)) => *b += len,
            None => self.users.push((u, len)),
        }
        // Consecutive bytes of one user share a record.
        match self.charged.back_mut() {
            Some((who, _, end)) if *who == u && *end == start => *end = self.appended,
            _ => self.charged.push_back((u, start, self.appended)),
        }
    }

    /// The broker wrote `n` more bytes of the stream.
    pub fn written(&mut self, n: u64) {
        let before = self.written;
        self.written = (self.written + n).min(self.appended);
        while let Some(&(u, start, end)) = self.charged.front() {
            if start >= self.written {
                break;
            }
            let freed = end.min(self.written) - start.max(before);
            if let Some(i) = self.users.iter().position(|(x, _)| *x == u) {
                self.users[i].1 -= freed;
                if self.users[i].1 == 0 {
                    self.users.swap_remove(i);
                }
            }
            if end > self.written {
                break;
            }
            self.charged.pop_front();
        }
    }

    fn share_of(&self, user: u32) -> u64 {
        self.users
            .iter()
            .find(|(u, _)| *u == user)
            .map_or(0, |(_, b)| *b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn requested_bytes_keep_no_records() {
        let mut q = StreamQuota::default();
        q.charge(Charge::Requested, 100);
        q.charge(Charge::Sender(1), 50);
        q.charge(Charge::Requested, 100);
        assert_eq!(q.charged.len(), 1);
        // Writing the first 120 bytes frees 20 of the sender's 50.
        q.written(120);
        assert_eq!(q.share_of(1), 30);
        q.written(180);
        assert_eq!(q.share_of(1), 0);
        assert!(q.charged.is_empty() && q.users.is_empty());
        assert_eq!(q.pending_bytes(), 0);
    }

    #[test]
    fn an_empty_stream_takes_any_message() {
        let q = StreamQuota::default();
        assert!(q.admits(Charge::Sender(1), 100 * MIB));
    }

    #[test]
    fn one_sender_cannot_fill_the_stream() {
        let mut q = StreamQuota::default();
        let mut sent = 0;
        while q.admits(Charge::Sender(1), 4096) {
            q.charge(Charge::Sender(1), 4096);
            sent += 4096;
        }
        // Alone, a user gets about half of the stream...
        assert!((STREAM_QUOTA_BYTES / 3..=STREAM_QUOTA_BYTES / 2 + 4096).contains(&sent));
        // ...and another user still gets in.
        assert!(q.admits(Charge::Sender(2), 4096));
        // Requested messages are never refused.
        assert!(q.admits(Charge::Requested, 64 * MIB));
    }

    #[test]
    fn writing_frees_the_senders_share() {
        let mut q = StreamQuota::default();
        while q.admits(Charge::Sender(1), 4096) {
            q.charge(Charge::Sender(1), 4096);
        }
        q.charge(Charge::Requested, 100);
        let total = q.pending_bytes();
        q.written(total);
        assert_eq!(q.pending_bytes(), 0);
        assert!(q.users.is_empty() && q.charged.is_empty());
        assert!(q.admits(Charge::Sender(1), 4096));
    }

    #[test]
    fn many_users_each_get_a_share() {
        let mut q = StreamQuota::default();
        let mut got = [0u64; 4];
        // Users take turns until nobody can add anything.
        loop {
            let mut any = false;
            for (u, g) in got.iter_mut().enumerate() {
                if q.admits(Charge::Sender(u as u32), 4096) {
                    q.charge(Charge::Sender(u as u32), 4096);
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
                    0 => { q.charge(Charge::Requested, n); appended += n; }
                    1 | 2 => {
                        let c = Charge::Sender(u32::from(op));
                        if q.admits(c, n) { q.charge(c, n); appended += n; }
                    }
                    _ => {
                        let w = n.min(appended - written);
                        q.written(w);
                        written += w;
                    }
                }
                prop_assert_eq!(q.pending_bytes(), appended - written);
                let by_user: u64 = q.users.iter().map(|(_, b)| b).sum();
                let in_records: u64 = q
                    .charged
                    .iter()
                    .map(|&(_, start, end)| end - start.max(q.written))
                    .sum();
                prop_assert_eq!(by_user, in_records);
                prop_assert!(q.users.iter().all(|(_, b)| *b > 0));
            }
        }
    }
}
