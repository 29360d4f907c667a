//! Who owns a name, as the driver answers it: a unique name owns itself, the driver
//! owns its own name, an activator owns nothing (its name is not running yet), and
//! only ordinary connections count.

use crate::DRIVER;
use kdbus_abi::name_flags;
use kdbus_core::{BusKey, ConnKey, Domain};
use kdbus_dbus::names::UniqueName;

/// The unique name owning `name` (a unique name owns itself; the driver owns its own
/// name).
pub(crate) fn owner_of(dom: &Domain, bus: BusKey, name: &str) -> Option<String> {
    if name == DRIVER {
        return Some(DRIVER.to_string());
    }
    let b = dom.bus(bus)?;
    let key = if name.starts_with(':') {
        *b.conns.get(&UniqueName::parse(name)?)?
    } else {
        let e = b.names.lookup(name)?;
        if e.flags & name_flags::ACTIVATOR != 0 {
            return None;
        }
        e.owner
    };
    let c = dom.conn(key).filter(|c| c.is_ordinary())?;
    Some(UniqueName::from_id(c.id).to_string())
}

/// The key of the connection owning `name`, if any.
pub(crate) fn conn_key_of(dom: &Domain, bus: BusKey, name: &str) -> Option<ConnKey> {
    let owner = owner_of(dom, bus, name)?;
    let id = UniqueName::parse(&owner)?;
    dom.bus(bus).and_then(|b| b.conns.get(&id)).copied()
}
