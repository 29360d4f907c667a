//! A configuration's `<limit>`s, sorted by where they are enforced: the bus model's
//! (per connection, per user, in all), the D-Bus socket's (framing, authentication),
//! the bridge's (reply timeout, what a client's stream may hold).

use crate::config::BusConfig;
use crate::dbus_socket::DBusLimits;

/// A configuration's limits, by where they are enforced.
#[derive(Clone, Debug)]
pub struct Limits {
    pub bus: kdbus_core::bus::BusLimits,
    pub dbus: DBusLimits,
    pub reply_timeout_ns: Option<u64>,
    pub stream: kdbus_bridge::stream_quota::StreamLimits,
}

impl Limits {
    pub fn of(c: &BusConfig) -> Limits {
        Limits {
            bus: c.bus_limits(),
            dbus: dbus_limits(c),
            reply_timeout_ns: c.reply_timeout_ns(),
            stream: c.stream_limits(),
        }
    }
}

/// The D-Bus socket's limits, as `c` configures them.
fn dbus_limits(c: &BusConfig) -> DBusLimits {
    let mut l = DBusLimits::default();
    let n = |name| {
        c.limit(name)
            .map(|v| usize::try_from(v).unwrap_or(usize::MAX))
    };
    if let Some(ms) = c.limit("auth_timeout") {
        l.auth_timeout_ns = ms.saturating_mul(1_000_000);
    }
    if let Some(ms) = c.limit("pending_fd_timeout") {
        l.pending_fd_timeout_ns = ms.saturating_mul(1_000_000);
    }
    if let Some(v) = n("max_incomplete_connections") {
        l.incomplete = v;
    }
    if let Some(v) = n("max_message_size") {
        l.message_size = v;
    }
    if let Some(v) = n("max_message_unix_fds") {
        l.message_fds = v;
    }
    // Well above what other peers may queue for a client.
    let out = usize::try_from(c.stream_limits().bytes).unwrap_or(usize::MAX);
    l.backlog = l.backlog.max(out.saturating_mul(4));
    l
}
