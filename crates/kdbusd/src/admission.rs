//! Who may make the broker hold descriptors, how many, and for how long before they
//! become a connection.
//!
//! Every client costs the broker descriptors: its socket, and a pidfd of the
//! process behind it once one is needed (charged then, through the core's
//! `FdLedger`; a pool memfd is handed to the client and not kept). The process has
//! a fixed number
//! (`RLIMIT_NOFILE`), and a user who takes them all makes the broker refuse
//! everyone, root included. So descriptors are books like any other resource
//! (dbus-broker's `util/user.c`):
//!
//! - a reserve (an eighth of the limit, at least 256) is kept for privileged
//!   callers (root, CAP_IPC_OWNER, the broker's own user): they are admitted while
//!   anything is left;
//! - the rest is shared out among the users holding some: a user holding `share`
//!   of it, with `n` users holding some (itself included), may take `charge` more
//!   if `(share + charge) * (n + 1) - share <= remaining`, which gives each user
//!   between 1/n² and 1/n of what is left;
//! - a native handle that has not become anything yet (a control or endpoint
//!   socket before BUS_MAKE, HELLO, ...) is *waiting*: a user may have
//!   [`MAX_WAITING_PER_USER`] of them, each for at most [`WAITING_TIMEOUT_NS`]. D-Bus
//!   clients that have not said Hello have the same bounds in `dbus_socket`.
//!
//! The fds messages carry are charged on the same books to their senders, for as
//! long as the broker holds them (`kdbus_core::FdLedger`): a user who sends fds to
//! receivers that never read uses up its own share, not the broker's.
//!
//! The books are the server's (one process, one limit): every domain's broker
//! shares them.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

/// Native handles of one user that may wait to become something.
pub const MAX_WAITING_PER_USER: usize = 64;
/// How long a native handle may wait to become something.
pub const WAITING_TIMEOUT_NS: u64 = 30 * 1_000_000_000;

/// Descriptors a client costs when it connects: its socket (its pidfd is charged
/// when first taken, the pool memfd goes to the client).
pub const COST_CONTROL: usize = 1;
pub const COST_ENDPOINT: usize = 1;
pub const COST_DBUS: usize = 1;

/// The process's descriptors, per user.
#[derive(Debug)]
pub struct FdBooks {
    /// Descriptors clients may hold in all (the limit less what the broker keeps
    /// for itself: listeners, epoll sets, files it opens).
    limit: usize,
    /// Of `limit`, what only privileged callers may take.
    reserve: usize,
    used: usize,
    per_user: HashMap<u32, usize>,
}

/// The books, shared by every domain of the process.
pub type SharedFdBooks = Rc<RefCell<FdBooks>>;

impl FdBooks {
    /// Books for a process that may open `nofile` descriptors.
    pub fn new(nofile: usize) -> FdBooks {
        // What the broker itself needs: listeners, epoll sets, signal and parameter
        // fds, memfds while they are being made.
        let own = 64.min(nofile / 4);
        let limit = nofile.saturating_sub(own);
        FdBooks {
            limit,
            reserve: (limit / 8).max(256).min(limit / 2),
            used: 0,
            per_user: HashMap::new(),
        }
    }

    /// Books for this process's descriptor limit.
    pub fn for_process() -> SharedFdBooks {
        let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let n = l
            .current
            .map_or(usize::MAX, |c| usize::try_from(c).unwrap_or(usize::MAX));
        Rc::new(RefCell::new(FdBooks::new(n)))
    }

    /// May `uid` (privileged or not) take `n` more descriptors? If so they are
    /// charged to it.
    pub fn admit(&mut self, uid: u32, privileged: bool, n: usize) -> bool {
        let ok = if privileged {
            self.used + n <= self.limit
        } else {
            let share = self.per_user.get(&uid).copied().unwrap_or(0);
            let users = self.per_user.len() + usize::from(share == 0);
            let shared = self.limit - self.reserve;
            let remaining = shared.saturating_sub(self.used);
            (share + n)
                .checked_mul(users + 1)
                .and_then(|v| v.checked_sub(share))
                .is_some_and(|need| need <= remaining)
        };
        if ok {
            self.used += n;
            *self.per_user.entry(uid).or_default() += n;
        }
        ok
    }

    /// `uid` gives `n` descriptors back.
    pub fn release(&mut self, uid: u32, n: usize) {
        self.used = self.used.saturating_sub(n);
        if let Some(h) = self.per_user.get_mut(&uid) {
            *h = h.saturating_sub(n);
            if *h == 0 {
                self.per_user.remove(&uid);
            }
        }
    }

    /// Descriptors `uid` holds.
    pub fn held(&self, uid: u32) -> usize {
        self.per_user.get(&uid).copied().unwrap_or(0)
    }
}

/// The fds messages carry are the broker's descriptors too: charged to their sender
/// on the same books, from the moment the domain takes a message until the broker
/// lets go of them.
pub struct FdLedgerOf(pub SharedFdBooks);

impl kdbus_core::FdLedger for FdLedgerOf {
    fn charge(&self, uid: u32, privileged: bool, n: usize) -> bool {
        self.0.borrow_mut().admit(uid, privileged, n)
    }
    fn refund(&self, uid: u32, n: usize) {
        self.0.borrow_mut().release(uid, n);
    }
}

/// Native handles waiting to become something, per user and by deadline.
#[derive(Debug, Default)]
pub struct Waiting {
    per_user: HashMap<u32, usize>,
    /// (deadline, token), earliest first.
    deadlines: BTreeSet<(u64, u64)>,
    /// token -> (deadline, uid), to take a handle off the books.
    by_token: HashMap<u64, (u64, u32)>,
}

impl Waiting {
    /// A handle `token` of `uid` starts waiting at `now`; `false` (and nothing
    /// recorded) if the user has as many waiting as it may. Privileged users (root
    /// starting many services at once) have no such bound, only the deadline.
    pub fn start(&mut self, token: u64, uid: u32, privileged: bool, now: u64) -> bool {
        let n = self.per_user.entry(uid).or_default();
        if *n >= MAX_WAITING_PER_USER && !privileged {
            return false;
        }
        *n += 1;
        let deadline = now + WAITING_TIMEOUT_NS;
        self.deadlines.insert((deadline, token));
        self.by_token.insert(token, (deadline, uid));
        true
    }

    /// Handle `token` became something, or is gone.
    pub fn end(&mut self, token: u64) {
        let Some((deadline, uid)) = self.by_token.remove(&token) else {
            return;
        };
        self.deadlines.remove(&(deadline, token));
        if let Some(n) = self.per_user.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&uid);
            }
        }
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|d| d.0)
    }

    /// Handles whose time is up at `now` (the caller closes them, which ends them).
    pub fn expired(&self, now: u64) -> Vec<u64> {
        self.deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .map(|(_, t)| *t)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_cannot_take_the_reserve_or_everything_shared() {
        let mut b = FdBooks::new(20_000);
        let mut n = 0;
        while b.admit(65534, false, 1) {
            n += 1;
        }
        // About half of what is shared, never the reserve.
        assert!(n > 7_000 && n < 9_000, "{n}");
        // Another user still gets a share, and root gets in.
        assert!(b.admit(1, false, 100));
        assert!(b.admit(0, true, 1000));
        b.release(65534, n);
        assert_eq!(b.held(65534), 0);
        assert!(b.admit(65534, false, 1));
    }

    #[test]
    fn waiting_handles_are_bounded_per_user_and_expire() {
        let mut w = Waiting::default();
        for t in 0..MAX_WAITING_PER_USER as u64 {
            assert!(w.start(t, 7, false, 0));
        }
        assert!(!w.start(999, 7, false, 0));
        assert!(w.start(998, 7, true, 0));
        w.end(998);
        assert!(w.start(1000, 8, false, 5));
        w.end(3);
        assert!(w.start(1001, 7, false, 10));
        assert_eq!(w.next_deadline(), Some(WAITING_TIMEOUT_NS));
        assert_eq!(
            w.expired(WAITING_TIMEOUT_NS).len(),
            MAX_WAITING_PER_USER - 1
        );
        assert!(w.expired(WAITING_TIMEOUT_NS - 1).is_empty());
    }
}
