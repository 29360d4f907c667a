//! Who owns a name, as the driver answers it: a unique name owns itself, the driver
//! owns its own name, an activator owns nothing (its name is not running yet), only
//! ordinary connections count, and a caller on a custom endpoint learns only of what
//! its endpoint lets it see.

use crate::DRIVER;
use kdbus_abi::name_flags;
use kdbus_core::{BusKey, ConnKey, Domain};
use kdbus_dbus::names::UniqueName;

/// The unique name owning `name` (a unique name owns itself; the driver owns its own
/// name), as `viewer` may know it: through a custom endpoint, what it may not see
/// has no owner.
pub(crate) fn owner_of(dom: &Domain, viewer: ConnKey, name: &str) -> Option<String> {
    if name == DRIVER {
        return Some(DRIVER.to_string());
    }
    let key = conn_key_of(dom, viewer, name)?;
    dom.conn(key).map(|c| UniqueName::from_id(c.id).to_string())
}

/// The key of the connection owning `name` on `viewer`'s bus, if `viewer` may see it
/// (`None` for the driver's own name).
pub(crate) fn conn_key_of(dom: &Domain, viewer: ConnKey, name: &str) -> Option<ConnKey> {
    let bus: BusKey = dom.conn(viewer)?.bus;
    let b = dom.bus(bus)?;
    let key = if name.starts_with(':') {
        let key = *b.conns.get(&UniqueName::parse(name)?)?;
        dom.conn_sees_conn(viewer, key).then_some(key)?
    } else {
        let e = b.names.lookup(name)?;
        if e.flags & name_flags::ACTIVATOR != 0 || !dom.conn_sees_name(viewer, name) {
            return None;
        }
        e.owner
    };
    dom.conn(key).filter(|c| c.is_ordinary()).map(|_| key)
}
