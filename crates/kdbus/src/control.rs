//! The control socket: making buses.
//!
//! A control handle carries one command at a time and nothing else ever arrives on
//! it, so it is a bare [`Transport`] without the queueing and sharing machinery of a
//! connection. A bus made through it lives as long as the handle: the broker ties the
//! bus to the socket, so dropping the [`BusOwner`] is how a bus is removed, and a
//! crashed owner cannot leak one. A custom endpoint ([`EndpointOwner`]) is made and
//! owned the same way, through a fresh handle of the bus's default endpoint, and so is
//! a domain ([`DomainOwner`]), made below the one the control socket belongs to.

use crate::error::{Error, Result};
use crate::transport::Transport;
use kdbus_abi::{cmd, item, BloomParameter, ItemWriter, PolicyAccess};
use std::path::{Path, PathBuf};
use zerocopy::IntoBytes;

/// A connection to a broker's `control` socket.
pub struct Control {
    t: Transport,
    runtime_dir: PathBuf,
}

/// A bus we made; the bus lives as long as this value.
pub struct BusOwner {
    _t: Transport,
    /// The bus's name, as given to [`Control::make_bus`].
    pub name: String,
    /// Path of the bus's default endpoint.
    pub endpoint: PathBuf,
}

impl Control {
    /// Connect to `<runtime_dir>/control`.
    pub fn open(runtime_dir: impl AsRef<Path>) -> Result<Control> {
        let runtime_dir = runtime_dir.as_ref().to_path_buf();
        let t = Transport::connect(&runtime_dir.join("control"))?;
        Ok(Control { t, runtime_dir })
    }

    /// BUS_MAKE with raw flags and bloom parameters. On success this handle becomes
    /// the bus owner.
    pub fn make_bus(self, name: &str, flags: u64, bloom: BloomParameter) -> Result<BusOwner> {
        let body = kdbus_abi::encode::bus_make(name, flags, bloom);
        let (e, _, _) = self.t.request(cmd::BUS_MAKE, &body, &[])?;
        if e != 0 {
            return Err(Error::Bus(kdbus_abi::Errno(e)));
        }
        let endpoint = self.runtime_dir.join(name).join("bus");
        Ok(BusOwner {
            _t: self.t,
            name: name.to_owned(),
            endpoint,
        })
    }

    /// DOMAIN_MAKE (privileged callers only): a domain `name` below this one, with its
    /// own `control` in `<runtime dir>/domain/<name>/`, as long as the returned value
    /// lives. `flags`: who may use its control socket (`make_flags::ACCESS_*`).
    pub fn make_domain(self, name: &str, flags: u64) -> Result<DomainOwner> {
        let body = kdbus_abi::encode::domain_make(name, flags);
        let (e, _, _) = self.t.request(cmd::DOMAIN_MAKE, &body, &[])?;
        if e != 0 {
            return Err(Error::Bus(kdbus_abi::Errno(e)));
        }
        Ok(DomainOwner {
            t: self.t,
            runtime_dir: self.runtime_dir.join("domain").join(name),
        })
    }

    /// Send any command on the control socket (tests of error paths).
    pub fn raw_request(&self, cmd: u32, body: &[u8]) -> Result<(i32, Vec<u8>)> {
        let (e, b, _) = self.t.request(cmd, body, &[])?;
        Ok((e, b))
    }
}

/// A domain we made; it (with all its buses and connections) lives as long as this
/// value.
pub struct DomainOwner {
    t: Transport,
    /// Its root: where its `control` is.
    pub runtime_dir: PathBuf,
}

impl DomainOwner {
    /// Send any command on the domain-owner handle (it answers EBADFD to everything).
    pub fn raw_request(&self, cmd: u32, body: &[u8]) -> Result<(i32, Vec<u8>)> {
        let (e, b, _) = self.t.request(cmd, body, &[])?;
        Ok((e, b))
    }
}

/// A custom endpoint we made; it lives as long as this value.
pub struct EndpointOwner {
    t: Transport,
    /// Path of the endpoint's socket (`<bus dir>/<uid>-<name>`).
    pub path: PathBuf,
}

/// One rule of an endpoint's (or a policy holder's) policy: `name` (or `a.b.*`) may be
/// seen (0), talked to (1) or owned (2) by everyone.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The name the rule covers, or a prefix wildcard such as `a.b.*`.
    pub name: String,
    /// What everyone may do with the name: see (0), talk to (1) or own (2).
    pub level: u64,
}

/// `NAME` + `POLICY_ACCESS` items for `grants`, world-wide.
fn push_grants(w: &mut ItemWriter<'_>, grants: &[Grant]) {
    for g in grants {
        w.push_str(item::NAME, &g.name);
        let a = PolicyAccess {
            type_: 3, // KDBUS_POLICY_ACCESS_WORLD
            access: g.level,
            id: 0,
        };
        w.push(item::POLICY_ACCESS, a.as_bytes());
    }
}

impl EndpointOwner {
    /// ENDPOINT_MAKE `name` (`<uid>-<name>`, the caller's uid) on the bus whose default
    /// endpoint is `bus`, with access `flags` (`make_flags`) and `grants`.
    pub fn make(bus: &Path, name: &str, flags: u64, grants: &[Grant]) -> Result<EndpointOwner> {
        let t = Transport::connect(bus)?;
        let body = kdbus_abi::encode::cmd_generic(flags, |w| {
            w.push_str(item::MAKE_NAME, name);
            push_grants(w, grants);
        });
        let (e, _, _) = t.request(cmd::ENDPOINT_MAKE, &body, &[])?;
        if e != 0 {
            return Err(Error::Bus(kdbus_abi::Errno(e)));
        }
        let path = bus.with_file_name(name);
        Ok(EndpointOwner { t, path })
    }

    /// ENDPOINT_UPDATE: the endpoint's policy becomes `grants`.
    pub fn update(&self, grants: &[Grant]) -> Result<()> {
        let body = kdbus_abi::encode::cmd_generic(0, |w| push_grants(w, grants));
        let (e, _, _) = self.t.request(cmd::ENDPOINT_UPDATE, &body, &[])?;
        if e != 0 {
            return Err(Error::Bus(kdbus_abi::Errno(e)));
        }
        Ok(())
    }
}

impl BusOwner {
    /// Send any command on the bus-owner handle (it answers EBADFD to everything).
    pub fn raw_request(&self, cmd: u32, body: &[u8]) -> Result<(i32, Vec<u8>)> {
        let (e, b, _) = self._t.request(cmd, body, &[])?;
        Ok((e, b))
    }
}
