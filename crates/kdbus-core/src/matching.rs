//! Match commands: MATCH_ADD and MATCH_REMOVE on the bus's match database.
//!
//! Besides the per-connection bound (the bus's `matches_per_conn`), a user's
//! connections together may hold `UserLimits::matches` entries and
//! `UserLimits::match_bytes` bytes of rules in the domain (dbus-broker's per-user
//! match quota), whatever their number; privileged users are not bound. The entries
//! are what costs the broker memory: 51,200 rules of 32 KB had taken it to 2.3 GB.

use crate::domain::{Domain, UserUsage};
use crate::ids::ConnKey;
use crate::matches::{entry_bytes, MatchDb};
use kdbus_abi::{match_flags, Errno};

impl Domain {
    /// MATCH_ADD: install the rules `rules` (items) under `cookie` for `key`.
    pub fn match_add(
        &mut self,
        key: ConnKey,
        cookie: u64,
        flags: u64,
        rules: &[u8],
    ) -> Result<(), Errno> {
        let conn = self.conns.get(&key).ok_or(Errno::ECONNRESET)?;
        let (bus_key, uid, privileged) = (conn.bus, conn.peer.creds.uid, conn.peer.privileged);
        let limits = self.user_limits;
        let usage = self.users.entry(uid).or_default();
        let replace = flags & match_flags::REPLACE != 0;
        // A replacement adds no entry, but may add bytes (judged as if nothing went).
        let over = (!replace && usage.matches >= limits.matches)
            || usage.match_bytes + entry_bytes(rules) > limits.match_bytes;
        if !privileged && over {
            return Err(Errno::EMFILE);
        }
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let before = MatchCharge::of(&bus.matches, key);
        let r = bus.matches.add(key, cookie, replace, rules, bus.bloom.size);
        MatchCharge::of(&bus.matches, key).settle(before, usage);
        r
    }

    /// MATCH_REMOVE: drop `key`'s rules under `cookie`.
    pub fn match_remove(&mut self, key: ConnKey, cookie: u64) -> Result<(), Errno> {
        let conn = self.conns.get(&key).ok_or(Errno::ECONNRESET)?;
        let (bus_key, uid) = (conn.bus, conn.peer.creds.uid);
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let before = MatchCharge::of(&bus.matches, key);
        let r = bus.matches.remove(key, cookie);
        if let Some(u) = self.users.get_mut(&uid) {
            MatchCharge::of(&bus.matches, key).settle(before, u);
        }
        r
    }
}

/// What one connection's match entries count against its user.
#[derive(Clone, Copy, Default)]
pub(crate) struct MatchCharge {
    entries: usize,
    bytes: usize,
}

impl MatchCharge {
    pub(crate) fn of(db: &MatchDb, key: ConnKey) -> MatchCharge {
        MatchCharge {
            entries: db.conn_count(key),
            bytes: db.conn_bytes(key),
        }
    }

    /// Move `usage` from `before` to `self`.
    pub(crate) fn settle(self, before: MatchCharge, usage: &mut UserUsage) {
        usage.matches = (usage.matches + self.entries).saturating_sub(before.entries);
        usage.match_bytes = (usage.match_bytes + self.bytes).saturating_sub(before.bytes);
    }
}
