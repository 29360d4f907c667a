//! The bus driver, driven in memory: who may become a monitor, and the order in which
//! a monitor sees what the bus says (when a name changes owner, the owner's
//! NameAcquired, and the old owner's NameLost, come before the NameOwnerChanged everyone
//! gets, on every stream, monitors included, as dbus-daemon does).

use kdbus_bridge::Bridge;
use kdbus_core::{ConnKey, Creds, Domain, ManualClock, Peer};
use kdbus_dbus::header::{self, Fields, MessageType};
use kdbus_dbus::marshal::{Endian, Reader, Writer};

fn peer(pid: u32, privileged: bool) -> Peer {
    Peer {
        creds: Creds {
            pid,
            uid: if privileged { 0 } else { 1000 },
            gid: 1000,
        },
        privileged,
        ..Default::default()
    }
}

/// A method call to the driver with string (and u32) arguments.
fn driver_call(
    serial: u32,
    iface: &str,
    member: &str,
    sig: &str,
    args: &[&str],
    u: Option<u32>,
) -> Vec<u8> {
    let mut body = Vec::new();
    {
        let mut w = Writer::new(&mut body, Endian::Little);
        if sig.starts_with("as") {
            let a = w.array_begin(4);
            for s in args {
                w.string(s);
            }
            w.array_end(a);
        } else {
            for s in args {
                w.string(s);
            }
        }
        if let Some(v) = u {
            w.u32(v);
        }
    }
    let f = Fields {
        path: Some("/org/freedesktop/DBus"),
        interface: Some(iface),
        member: Some(member),
        destination: Some("org.freedesktop.DBus"),
        signature: sig,
        ..Default::default()
    };
    let mut out = Vec::new();
    header::write_fields(
        &mut out,
        Endian::Little,
        MessageType::MethodCall,
        0,
        body.len() as u32,
        serial,
        &f,
    );
    out.extend_from_slice(&body);
    out
}

/// Everything `key` has to read, as (member or "reply"/"error", first string argument).
fn read(d: &mut Domain, key: ConnKey) -> Vec<(String, String)> {
    let mut dirty = Vec::new();
    d.take_dirty(&mut dirty);
    let mut seen = Vec::new();
    for k in dirty {
        let Some((out, fds)) = d.conn_output(k) else {
            continue;
        };
        if k == key {
            let mut at = 0;
            while at < out.len() {
                let len = header::message_len(&out[at..]).unwrap().unwrap();
                let h = header::parse(&out[at..at + len]).unwrap();
                let body = &out[at + h.header_len..at + h.total_len()];
                let arg = if h.signature.starts_with('s') {
                    Reader::new(body, h.endian)
                        .string()
                        .unwrap_or("")
                        .to_string()
                } else {
                    String::new()
                };
                let what = match h.msg_type {
                    MessageType::MethodReturn => "reply".to_string(),
                    MessageType::Error => "error".to_string(),
                    _ => h.member.unwrap_or("").to_string(),
                };
                seen.push((what, arg));
                at += len;
            }
        }
        let n = out.len();
        out.clear();
        fds.clear();
        d.stream_written(k, n);
        d.conn_output_done(k);
    }
    seen
}

/// A bus owned by root, and the bridge.
fn bus() -> (Domain, u64, Bridge) {
    let mut d = Domain::new(Box::new(ManualClock::new(1_000_000_000)));
    let make = kdbus_abi::encode::bus_make(
        "0-test",
        0,
        kdbus_abi::BloomParameter {
            size: 64,
            n_hash: 1,
        },
    );
    let bus = d.bus_make(&peer(1, true), &make, [7; 16]).unwrap();
    (d, bus, Bridge::new("0123456789abcdef0123456789abcdef"))
}

/// Connection `key` (sending with `creds`) calls the driver's `iface.member`.
fn call(
    d: &mut Domain,
    bridge: &mut Bridge,
    key: ConnKey,
    creds: Creds,
    (iface, member, sig): (&str, &str, &str),
    args: &[&str],
    u: Option<u32>,
) {
    let m = driver_call(2, iface, member, sig, args, u);
    let h = header::parse(&m).unwrap();
    bridge.message(d, key, &h, &m, Vec::new(), creds).unwrap();
}

const BECOME_MONITOR: (&str, &str, &str) =
    ("org.freedesktop.DBus.Monitoring", "BecomeMonitor", "asu");
const REQUEST_NAME: (&str, &str, &str) = ("org.freedesktop.DBus", "RequestName", "su");

/// Only the bus's own user (and root) may watch everyone's traffic.
#[test]
fn another_user_may_not_become_a_monitor() {
    let (mut d, bus, mut bridge) = bus();
    let other = peer(2, false);
    let key = bridge.hello(&mut d, bus, None, &other, true, 1).unwrap();
    read(&mut d, key);
    call(
        &mut d,
        &mut bridge,
        key,
        other.creds,
        BECOME_MONITOR,
        &[],
        Some(0),
    );
    let seen = read(&mut d, key);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "error");
    assert!(
        seen[0]
            .1
            .starts_with("rejected attempt to call BecomeMonitor by connection :1."),
        "{seen:?}"
    );
    assert!(d.bus(bus).unwrap().monitors.is_empty());
}

#[test]
fn a_monitor_sees_name_acquired_before_name_owner_changed() {
    let (mut d, bus, mut bridge) = bus();
    let root = peer(1, true);
    let creds = root.creds;
    // The monitor comes first (its key is lower than the owner's).
    let monitor = bridge.hello(&mut d, bus, None, &root, true, 1).unwrap();
    call(
        &mut d,
        &mut bridge,
        monitor,
        creds,
        BECOME_MONITOR,
        &[],
        Some(0),
    );
    let owner = bridge
        .hello(&mut d, bus, None, &peer(2, true), true, 1)
        .unwrap();
    read(&mut d, monitor);
    call(
        &mut d,
        &mut bridge,
        owner,
        creds,
        REQUEST_NAME,
        &["org.example.Name"],
        Some(0),
    );
    let seen = read(&mut d, monitor);
    let acquired = seen
        .iter()
        .position(|(w, a)| w == "NameAcquired" && a == "org.example.Name");
    let changed = seen
        .iter()
        .position(|(w, a)| w == "NameOwnerChanged" && a == "org.example.Name");
    assert!(
        acquired.is_some() && changed.is_some() && acquired < changed,
        "monitor saw {seen:?}"
    );
}

const ADD_MATCH: (&str, &str, &str) = ("org.freedesktop.DBus", "AddMatch", "s");
const REMOVE_MATCH: (&str, &str, &str) = ("org.freedesktop.DBus", "RemoveMatch", "s");

/// Only peers with a match rule (and monitors) are told of name changes: the core
/// visits them alone, so a connect costs nothing per peer that never listens. The
/// set follows the rules: the last one removed takes the peer out, a new one puts it
/// back.
#[test]
fn name_changes_visit_only_the_peers_with_rules() {
    let (mut d, bus, mut bridge) = bus();
    let root = peer(1, true);
    let creds = root.creds;
    let quiet = bridge.hello(&mut d, bus, None, &root, true, 1).unwrap();
    let listener = bridge.hello(&mut d, bus, None, &root, true, 1).unwrap();
    let rule = "type='signal',member='NameOwnerChanged'";
    let rule_call = |d: &mut Domain, bridge: &mut Bridge, method| {
        call(d, bridge, listener, creds, method, &[rule], None);
    };
    rule_call(&mut d, &mut bridge, ADD_MATCH);
    read(&mut d, listener);
    let listeners = |d: &Domain| d.bus(bus).unwrap().stream_listeners.clone();
    assert_eq!(
        listeners(&d).into_iter().collect::<Vec<_>>(),
        vec![listener]
    );
    let heard = |d: &mut Domain, bridge: &mut Bridge, name: &str| {
        let owner = bridge.hello(d, bus, None, &root, true, 1).unwrap();
        call(d, bridge, owner, creds, REQUEST_NAME, &[name], Some(0));
        read(d, listener)
            .iter()
            .any(|(w, a)| w == "NameOwnerChanged" && a == name)
    };
    assert!(heard(&mut d, &mut bridge, "org.example.A"));
    rule_call(&mut d, &mut bridge, REMOVE_MATCH);
    assert!(listeners(&d).is_empty());
    assert!(!heard(&mut d, &mut bridge, "org.example.B"));
    rule_call(&mut d, &mut bridge, ADD_MATCH);
    assert!(heard(&mut d, &mut bridge, "org.example.C"));
    assert!(!listeners(&d).contains(&quiet));
}
