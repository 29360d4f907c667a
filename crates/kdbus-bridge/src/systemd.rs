//! Activation through systemd (`--systemd-activation`), the bridge's half.
//!
//! dbus-daemon hands a service whose `.service` file names a `SystemdService=` to
//! systemd: it sends the `org.freedesktop.systemd1.Activator.ActivationRequest`
//! signal, with the unit's name, from the bus to the owner of
//! `org.freedesktop.systemd1`, and the service comes when its unit takes the name.
//! If the unit cannot start, systemd answers with an `ActivationFailure` signal
//! (unit, error name, error text) addressed to the bus, and everything waiting for
//! that unit fails with systemd's own error. Only the primary owner of
//! `org.freedesktop.systemd1`, connected as root or the bus's own user, is believed;
//! anything else is ignored, as dbus-daemon ignores forged failures.
//!
//! The broker's activation decides when to ask (and waits for systemd to appear if it
//! is not there yet); this module writes the request and collects the failures.

use crate::body::Body;
use crate::peer::peer_mut;
use crate::{Bridge, DRIVER_PATH};
use kdbus_core::{BusKey, ConnKey, Domain};
use kdbus_dbus::header::{Fields, Header, MessageType};
use kdbus_dbus::marshal::Reader;

/// systemd's bus name.
pub const SYSTEMD: &str = "org.freedesktop.systemd1";
/// The interface of the request and of the answer.
const ACTIVATOR: &str = "org.freedesktop.systemd1.Activator";

/// An `ActivationFailure` systemd sent: unit, error name, error text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemdFailure {
    /// The unit that failed to start, as named in the `ActivationRequest`.
    pub unit: String,
    /// systemd's D-Bus error name, which the callers waiting for the unit get.
    pub error: String,
    /// systemd's error message, passed on with the error name.
    pub text: String,
}

impl Bridge {
    /// Ask systemd to start `unit` (the `ActivationRequest` signal). False if systemd
    /// is not on `bus` (yet): the caller asks again later.
    pub fn systemd_request(&mut self, dom: &mut Domain, bus: BusKey, unit: &str) -> bool {
        let Some(owner) = dom
            .bus(bus)
            .and_then(|b| b.names.lookup(SYSTEMD))
            .filter(|e| e.flags & kdbus_abi::name_flags::ACTIVATOR == 0)
            .map(|e| e.owner)
        else {
            return false;
        };
        let mut sent = false;
        dom.with_stream(owner, |s, out| {
            if let Some(p) = peer_mut(s) {
                let f = Fields {
                    path: Some(DRIVER_PATH),
                    interface: Some(ACTIVATOR),
                    member: Some("ActivationRequest"),
                    ..Default::default()
                };
                p.write_driver(out, MessageType::Signal, f, &Body::new().s(unit));
                sent = true;
            }
        });
        sent
    }

    /// A signal addressed to the bus: an `ActivationFailure` from systemd is kept for
    /// the broker's activation; every other one is nothing to the bus.
    pub(crate) fn systemd_signal(
        &mut self,
        dom: &Domain,
        key: ConnKey,
        h: &Header<'_>,
        body: &[u8],
    ) {
        if h.interface != Some(ACTIVATOR) || h.member != Some("ActivationFailure") {
            return;
        }
        let from_systemd = dom.conn(key).is_some_and(|c| {
            dom.bus(c.bus).is_some_and(|b| {
                b.is_privileged(&c.peer) && b.names.lookup(SYSTEMD).is_some_and(|e| e.owner == key)
            })
        });
        if !self.systemd_activation || !from_systemd {
            tracing::warn!(?key, "ignoring an ActivationFailure not from systemd");
            return;
        }
        let mut r = Reader::new(body, h.endian);
        let (Ok(unit), Ok(error), Ok(text)) = (r.string(), r.string(), r.string()) else {
            return;
        };
        tracing::info!(%unit, %error, "activation via systemd failed");
        self.systemd_failures.push(SystemdFailure {
            unit: unit.to_string(),
            error: error.to_string(),
            text: text.to_string(),
        });
    }

    /// The `ActivationFailure`s systemd sent since the last time.
    pub fn take_systemd_failures(&mut self) -> Vec<SystemdFailure> {
        std::mem::take(&mut self.systemd_failures)
    }

    /// Whether the bus hands `SystemdService=` services to systemd.
    pub fn systemd_activation(&self) -> bool {
        self.systemd_activation
    }
}
