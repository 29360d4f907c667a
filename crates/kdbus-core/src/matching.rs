//! Match commands: MATCH_ADD and MATCH_REMOVE on the bus's match database.

use crate::domain::Domain;
use crate::ids::ConnKey;
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
        let bus_key = self.conns.get(&key).ok_or(Errno::ECONNRESET)?.bus;
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let replace = flags & match_flags::REPLACE != 0;
        bus.matches.add(key, cookie, replace, rules, bus.bloom.size)
    }

    /// MATCH_REMOVE: drop `key`'s rules under `cookie`.
    pub fn match_remove(&mut self, key: ConnKey, cookie: u64) -> Result<(), Errno> {
        let bus_key = self.conns.get(&key).ok_or(Errno::ECONNRESET)?.bus;
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        bus.matches.remove(key, cookie)
    }
}
