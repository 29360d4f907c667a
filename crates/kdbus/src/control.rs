//! The control socket: making buses.
//!
//! A control handle carries one command at a time and nothing else ever arrives on
//! it, so it is a bare [`Transport`] without the queueing and sharing machinery of a
//! connection. A bus made through it lives as long as the handle: the broker ties the
//! bus to the socket, so dropping the [`BusOwner`] is how a bus is removed, and a
//! crashed owner cannot leak one.

use crate::error::{Error, Result};
use crate::transport::Transport;
use kdbus_abi::{cmd, BloomParameter};
use std::path::{Path, PathBuf};

/// A connection to a broker's `control` socket.
pub struct Control {
    t: Transport,
    runtime_dir: PathBuf,
}

/// A bus we made; the bus lives as long as this value.
pub struct BusOwner {
    _t: Transport,
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

    /// Send any command on the control socket (tests of error paths).
    pub fn raw_request(&self, cmd: u32, body: &[u8]) -> Result<(i32, Vec<u8>)> {
        let (e, b, _) = self.t.request(cmd, body, &[])?;
        Ok((e, b))
    }
}

impl BusOwner {
    /// Send any command on the bus-owner handle (it answers EBADFD to everything).
    pub fn raw_request(&self, cmd: u32, body: &[u8]) -> Result<(i32, Vec<u8>)> {
        let (e, b, _) = self._t.request(cmd, body, &[])?;
        Ok((e, b))
    }
}
