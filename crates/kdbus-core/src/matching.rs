//! Match commands: MATCH_ADD and MATCH_REMOVE on the bus's match database.
//!
//! Besides the per-connection bound (the bus's `matches_per_conn`), a user's
//! connections together may hold [`USER_MAX_MATCHES`] entries in the domain
//! (dbus-broker's per-user match quota), whatever their number; privileged users
//! are not bound.

use crate::domain::Domain;
use crate::ids::ConnKey;
use kdbus_abi::{match_flags, Errno};

/// Match entries all of one user's connections may hold (dbus-broker's 16 Ki).
pub const USER_MAX_MATCHES: usize = 16 * 1024;

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
        let usage = self.users.entry(uid).or_default();
        let replace = flags & match_flags::REPLACE != 0;
        if !privileged && !replace && usage.matches >= USER_MAX_MATCHES {
            return Err(Errno::EMFILE);
        }
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let before = bus.matches.conn_count(key);
        let r = bus.matches.add(key, cookie, replace, rules, bus.bloom.size);
        let after = bus.matches.conn_count(key);
        usage.matches = (usage.matches + after).saturating_sub(before);
        r
    }

    /// MATCH_REMOVE: drop `key`'s rules under `cookie`.
    pub fn match_remove(&mut self, key: ConnKey, cookie: u64) -> Result<(), Errno> {
        let conn = self.conns.get(&key).ok_or(Errno::ECONNRESET)?;
        let (bus_key, uid) = (conn.bus, conn.peer.creds.uid);
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let before = bus.matches.conn_count(key);
        let r = bus.matches.remove(key, cookie);
        let gone = before - bus.matches.conn_count(key);
        if let Some(u) = self.users.get_mut(&uid) {
            u.matches = u.matches.saturating_sub(gone);
        }
        r
    }
}
