//! What the driver says about itself: `org.freedesktop.DBus.Properties` (read-only
//! `Features` and `Interfaces` of `org.freedesktop.DBus`, with dbus-daemon's errors
//! for every other interface and property) and `Introspect`.

use crate::body::{err, Body, DErr, ErrName};
use crate::{Bridge, DRIVER, DRIVER_PATH};

pub(crate) const MONITORING: &str = "org.freedesktop.DBus.Monitoring";
pub(crate) const PEER: &str = "org.freedesktop.DBus.Peer";
pub(crate) const INTROSPECTABLE: &str = "org.freedesktop.DBus.Introspectable";
pub(crate) const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
pub(crate) const STATS: &str = "org.freedesktop.DBus.Debug.Stats";

/// Every interface the driver has.
const INTERFACES: &[&str] = &[DRIVER, MONITORING, PEER, INTROSPECTABLE, PROPERTIES, STATS];

/// The driver's properties: those of `iface` (an interface the driver has, or
/// UnknownInterface as dbus-daemon words it).
fn driver_properties(
    b: &Bridge,
    iface: &str,
) -> Result<Vec<(&'static str, Vec<&'static str>)>, DErr> {
    if !INTERFACES.contains(&iface) {
        return Err(err(
            ErrName::UnknownInterface,
            format!("Interface \"{iface}\" not found"),
        ));
    }
    if iface != DRIVER {
        return Ok(Vec::new());
    }
    // Unknown header fields are dropped when forwarding ("HeaderFiltering"); the bus
    // says when its activatable services change (dbus-daemon 1.14's order).
    let mut features = vec!["ActivatableServicesChanged", "HeaderFiltering"];
    if b.systemd_activation {
        features.push("SystemdActivation");
    }
    // What is worth listing: not the driver's own interface, Properties or Peer.
    let interfaces = vec![MONITORING, STATS];
    Ok(vec![("Features", features), ("Interfaces", interfaces)])
}

/// One property of the driver's `iface`.
fn driver_property(b: &Bridge, iface: &str, prop: &str) -> Result<Vec<&'static str>, DErr> {
    driver_properties(b, iface)?
        .into_iter()
        .find(|(name, _)| *name == prop)
        .map(|(_, v)| v)
        .ok_or_else(|| {
            err(
                ErrName::UnknownProperty,
                format!("Property \"{iface}.{prop}\" not found"),
            )
        })
}

/// A variant holding an `as`.
fn write_strings_variant(w: &mut kdbus_dbus::marshal::Writer<'_>, v: &[&str]) {
    w.signature("as");
    let a = w.array_begin(4);
    for s in v {
        w.string(s);
    }
    w.array_end(a);
}

/// `Get(i, p)`.
pub(crate) fn property_get(b: &Bridge, i: &str, p: &str) -> Result<Body, DErr> {
    let v = driver_property(b, i, p)?;
    let mut body = Body::new();
    body.sig.push('v');
    write_strings_variant(&mut body.w(), &v);
    Ok(body)
}

/// `GetAll(i)`.
pub(crate) fn property_get_all(b: &Bridge, i: &str) -> Result<Body, DErr> {
    let props = driver_properties(b, i)?;
    let mut body = Body::new();
    body.sig.push_str("a{sv}");
    let mut w = body.w();
    let a = w.array_begin(8);
    for (name, v) in props {
        w.align(8);
        w.string(name);
        write_strings_variant(&mut w, &v);
    }
    w.array_end(a);
    Ok(body)
}

/// `Set(i, p, _)`: every property of the driver is read-only.
pub(crate) fn property_set(b: &Bridge, i: &str, p: &str) -> Result<Body, DErr> {
    driver_property(b, i, p)?;
    Err(err(
        ErrName::PropertyReadOnly,
        format!("Property '{i}.{p}' cannot be set"),
    ))
}

/// `Introspect` at `path`: on the bus's own path every interface, in dbus-daemon's
/// order; elsewhere the interfaces that answer on any path and, on a path above the
/// bus's own, the node that leads to it (dbus-daemon 1.14's answers).
pub(crate) fn introspect(path: &str) -> Body {
    let mut x = String::with_capacity(8192);
    x.push_str(INTROSPECT_HEADER);
    x.push_str("<node>\n");
    if path == DRIVER_PATH {
        for i in [
            IFACE_DBUS,
            IFACE_PROPERTIES,
            IFACE_INTROSPECTABLE,
            IFACE_MONITORING,
            IFACE_STATS,
            IFACE_PEER,
        ] {
            x.push_str(i);
        }
    } else {
        for i in [IFACE_DBUS, IFACE_INTROSPECTABLE, IFACE_PEER] {
            x.push_str(i);
        }
        let below = if path == "/" {
            Some(&DRIVER_PATH[1..])
        } else {
            DRIVER_PATH
                .strip_prefix(path)
                .and_then(|rest| rest.strip_prefix('/'))
        };
        if let Some(child) = below {
            x.push_str(&format!("  <node name=\"{child}\"/>\n"));
        }
    }
    x.push_str("</node>\n");
    Body::new().s(&x)
}

const INTROSPECT_HEADER: &str = r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
"#;
const IFACE_DBUS: &str = r#"  <interface name="org.freedesktop.DBus">
    <method name="Hello"><arg direction="out" type="s"/></method>
    <method name="RequestName"><arg direction="in" type="s"/><arg direction="in" type="u"/><arg direction="out" type="u"/></method>
    <method name="ReleaseName"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
    <method name="StartServiceByName"><arg direction="in" type="s"/><arg direction="in" type="u"/><arg direction="out" type="u"/></method>
    <method name="UpdateActivationEnvironment"><arg direction="in" type="a{ss}"/></method>
    <method name="NameHasOwner"><arg direction="in" type="s"/><arg direction="out" type="b"/></method>
    <method name="ListNames"><arg direction="out" type="as"/></method>
    <method name="ListActivatableNames"><arg direction="out" type="as"/></method>
    <method name="AddMatch"><arg direction="in" type="s"/></method>
    <method name="RemoveMatch"><arg direction="in" type="s"/></method>
    <method name="GetNameOwner"><arg direction="in" type="s"/><arg direction="out" type="s"/></method>
    <method name="ListQueuedOwners"><arg direction="in" type="s"/><arg direction="out" type="as"/></method>
    <method name="GetConnectionUnixUser"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
    <method name="GetConnectionUnixProcessID"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
    <method name="GetAdtAuditSessionData"><arg direction="in" type="s"/><arg direction="out" type="ay"/></method>
    <method name="GetConnectionSELinuxSecurityContext"><arg direction="in" type="s"/><arg direction="out" type="ay"/></method>
    <method name="GetConnectionCredentials"><arg direction="in" type="s"/><arg direction="out" type="a{sv}"/></method>
    <method name="ReloadConfig"/>
    <method name="GetId"><arg direction="out" type="s"/></method>
    <signal name="NameOwnerChanged"><arg type="s"/><arg type="s"/><arg type="s"/></signal>
    <signal name="NameLost"><arg type="s"/></signal>
    <signal name="NameAcquired"><arg type="s"/></signal>
    <signal name="ActivatableServicesChanged"/>
    <property name="Features" type="as" access="read"/>
    <property name="Interfaces" type="as" access="read"/>
  </interface>
"#;
const IFACE_MONITORING: &str = r#"  <interface name="org.freedesktop.DBus.Monitoring">
    <method name="BecomeMonitor"><arg direction="in" type="as"/><arg direction="in" type="u"/></method>
  </interface>
"#;
const IFACE_STATS: &str = r#"  <interface name="org.freedesktop.DBus.Debug.Stats">
    <method name="GetStats"><arg direction="out" type="a{sv}"/></method>
    <method name="GetConnectionStats"><arg direction="in" type="s"/><arg direction="out" type="a{sv}"/></method>
    <method name="GetAllMatchRules"><arg direction="out" type="a{sas}"/></method>
  </interface>
"#;
const IFACE_INTROSPECTABLE: &str = r#"  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg direction="out" type="s"/></method>
  </interface>
"#;
const IFACE_PEER: &str = r#"  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping"/>
    <method name="GetMachineId"><arg direction="out" type="s"/></method>
  </interface>
"#;
const IFACE_PROPERTIES: &str = r#"  <interface name="org.freedesktop.DBus.Properties">
    <method name="Get"><arg direction="in" type="s"/><arg direction="in" type="s"/><arg direction="out" type="v"/></method>
    <method name="GetAll"><arg direction="in" type="s"/><arg direction="out" type="a{sv}"/></method>
    <method name="Set"><arg direction="in" type="s"/><arg direction="in" type="s"/><arg direction="in" type="v"/></method>
  </interface>
"#;
