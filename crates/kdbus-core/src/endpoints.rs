//! Custom endpoints: ENDPOINT_MAKE and ENDPOINT_UPDATE through a handle of the bus's
//! default endpoint, and their end when that handle closes.
//!
//! A custom endpoint is the bus seen through a filter, for a sandbox: its connections
//! see, talk to and own only what the endpoint's policy grants (SEE, TALK, OWN rules
//! like the bus's), on top of what the bus's own policy grants. The broker gives it a
//! socket `<uid>-<name>` beside `bus`; the endpoint lives as long as the handle that
//! made it, and its connections are disconnected with it.

use crate::bus::{make_parse_named, Endpoint};
use crate::domain::Domain;
use crate::ids::{BusKey, ConnKey};
use crate::meta::Peer;
use crate::policy::{policy_parse, PolicyDb};
use kdbus_abi::{make_flags, read_cmd, CmdGeneric, Errno};

/// Items of ENDPOINT_MAKE: its name, and optionally its first policy.
fn endpoint_parse_make(body: &[u8], uid: u32) -> Result<(CmdGeneric, String, &[u8]), Errno> {
    let (cmd, name, items) = make_parse_named(body, make_flags::ALL)?;
    let name = name.ok_or(Errno::EINVAL)?;
    // A sysname (ENAMETOOLONG beyond 63), prefixed with the maker's uid.
    kdbus_abi::names::validate_uid_prefixed(name, uid)?;
    Ok((cmd, name.to_owned(), items))
}

impl Domain {
    /// ENDPOINT_MAKE on `bus_key` by `peer`: returns the endpoint's id, its name and
    /// its access flags, for the broker's socket.
    pub fn endpoint_make(
        &mut self,
        bus_key: BusKey,
        peer: &Peer,
        body: &[u8],
    ) -> Result<(u64, String, u64), Errno> {
        let (cmd, name, items) = endpoint_parse_make(body, peer.creds.uid)?;
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        if !bus.is_privileged(peer) {
            return Err(Errno::EPERM);
        }
        if name == "bus" || bus.endpoints.values().any(|e| e.name == name) {
            return Err(Errno::EEXIST);
        }
        let mut policy = PolicyDb::new();
        policy.set(0, policy_parse(items, true)?)?;
        let id = bus.next_endpoint;
        bus.next_endpoint += 1;
        let ep = Endpoint {
            name: name.clone(),
            uid: peer.creds.uid,
            flags: cmd.flags,
            policy,
        };
        bus.endpoints.insert(id, ep);
        tracing::debug!(bus = %bus.name, endpoint = %name, "endpoint made");
        Ok((id, name, cmd.flags))
    }

    /// ENDPOINT_UPDATE: the endpoint's policy is replaced by the command's.
    pub fn endpoint_update(&mut self, bus_key: BusKey, ep: u64, body: &[u8]) -> Result<(), Errno> {
        let (cmd, size) = read_cmd::<CmdGeneric>(body)?;
        if cmd.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let items = &body[std::mem::size_of::<CmdGeneric>()..size as usize];
        let entries = policy_parse(items, true)?;
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let ep = bus.endpoints.get_mut(&ep).ok_or(Errno::ESHUTDOWN)?;
        ep.policy.set(0, entries)
    }

    /// The custom endpoint connection `key` came through (`None`: the default one).
    pub fn conn_endpoint(&self, key: ConnKey) -> Option<u64> {
        self.conns.get(&key).and_then(|c| c.endpoint)
    }

    /// Whether connection `key` may see the well-known `name`: always through the
    /// default endpoint; through a custom one, if its policy grants SEE.
    pub fn conn_sees_name(&self, key: ConnKey, name: &str) -> bool {
        let Some(c) = self.conns.get(&key) else {
            return false;
        };
        c.endpoint.is_none()
            || self
                .buses
                .get(&c.bus)
                .is_some_and(|b| b.ep_sees_name(c.endpoint, &c.asker(), name))
    }

    /// Whether connection `key` may see connection `whom` (through a custom endpoint:
    /// one of `whom`'s names, or `whom` is itself).
    pub fn conn_sees_conn(&self, key: ConnKey, whom: ConnKey) -> bool {
        let Some(c) = self.conns.get(&key) else {
            return false;
        };
        key == whom
            || c.endpoint.is_none()
            || self
                .buses
                .get(&c.bus)
                .is_some_and(|b| b.ep_sees_conn(c.endpoint, &c.asker(), whom))
    }

    /// The endpoint's maker went away: its connections are disconnected (the broker
    /// finds them in [`Domain::take_closed`]) and it is gone.
    pub fn endpoint_destroy(&mut self, bus_key: BusKey, ep: u64) {
        let Some(bus) = self.buses.get_mut(&bus_key) else {
            return;
        };
        bus.endpoints.remove(&ep);
        let conns: Vec<ConnKey> = bus
            .conns
            .values()
            .copied()
            .filter(|k| self.conns.get(k).is_some_and(|c| c.endpoint == Some(ep)))
            .collect();
        for c in conns {
            self.conn_disconnect(c);
            self.closed.push(c);
        }
    }
}
