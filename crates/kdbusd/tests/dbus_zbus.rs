//! The D-Bus socket of kdbusd against zbus, an independent D-Bus implementation:
//! Hello, the bus driver `org.freedesktop.DBus` (queries, credentials, name ownership
//! and its signals, match rules), and method calls, errors, signals and fd passing
//! between zbus peers. What dbus-daemon 1.14 answers is the reference.
//!
//! "Nothing arrives" is checked with a marker: after the message that must not arrive,
//! the same sender sends one that certainly arrives; a peer's messages are routed in
//! order, so the next one the receiver sees must be the marker.

mod common;
#[path = "common/zbus_peer.rs"]
mod zbus_peer;
use common::*;
use std::io::{Read, Write};
use zbus_peer::*;

use zbus::blocking::{Connection as ZConn, MessageIterator};
use zbus::export::serde::ser::Serialize;
use zbus::message::{Message as ZMsg, Type as MsgType};
use zbus::zvariant::{DynamicType, OwnedValue};

const SVC_PATH: &str = "/org/example/Obj";
const SVC_IFACE: &str = "org.example.Iface";
const CUSTOM_ERROR: &str = "org.example.Error.Custom";

// ------------------------------------------------------------------ helpers

/// The D-Bus error name of a failed call (or a description of a non-D-Bus failure).
fn err_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        zbus::Error::FDO(f) => fdo_name(f),
        other => format!("<not a D-Bus error: {other}>"),
    }
}

fn fdo_name(e: &zbus::fdo::Error) -> String {
    use zbus::DBusError;
    match e {
        zbus::fdo::Error::ZBus(z) => err_name(z),
        e => e.name().to_string(),
    }
}

/// The error name of a call that must fail.
#[track_caller]
fn call_err<T: std::fmt::Debug>(r: zbus::Result<T>) -> String {
    match r {
        Ok(v) => panic!("expected a D-Bus error, got {v:?}"),
        Err(e) => err_name(&e),
    }
}

#[track_caller]
fn fdo_err<T: std::fmt::Debug>(r: zbus::fdo::Result<T>) -> String {
    match r {
        Ok(v) => panic!("expected a D-Bus error, got {v:?}"),
        Err(e) => fdo_name(&e),
    }
}

/// A method call to the bus driver.
fn driver<B>(c: &ZConn, iface: &str, member: &str, body: &B) -> zbus::Result<ZMsg>
where
    B: Serialize + DynamicType,
{
    c.call_method(Some(DRIVER), DRIVER_PATH, Some(iface), member, body)
}

fn request_name(c: &ZConn, name: &str, flags: u32) -> u32 {
    let r = driver(c, DRIVER, "RequestName", &(name, flags)).expect("RequestName");
    r.body()
        .deserialize::<u32>()
        .expect("RequestName answers u")
}

fn release_name(c: &ZConn, name: &str) -> u32 {
    let r = driver(c, DRIVER, "ReleaseName", &name).expect("ReleaseName");
    r.body()
        .deserialize::<u32>()
        .expect("ReleaseName answers u")
}

/// A test service on its own zbus connection, answering in a thread:
/// `Echo(s)` → `"echo: <s>"`; `WhoCalls()` → the caller's unique name; `Fail(s)` →
/// the error `org.example.Error.Custom` with message `<s>`; `ReadFd(h)` → what can be
/// read from the fd; `Vanish()` → closes the connection without replying; anything else
/// → UnknownMethod. With `name`, it owns that name (DoNotQueue) before returning.
/// Returns its unique name.
fn spawn_service(b: &Broker, name: Option<&str>) -> String {
    let c = zconn(b);
    let it = MessageIterator::from(&c);
    if let Some(n) = name {
        assert_eq!(request_name(&c, n, 4), 1, "the service owns {n}");
    }
    let me = unique(&c);
    std::thread::spawn(move || serve(c, it));
    me
}

fn serve(c: ZConn, it: MessageIterator) {
    for m in it {
        let Ok(m) = m else { continue };
        if m.message_type() != MsgType::MethodCall {
            continue;
        }
        let h = m.header();
        let r = match member(&m).as_str() {
            "Echo" => {
                let s: String = m.body().deserialize().unwrap_or_default();
                c.reply(&h, &format!("echo: {s}"))
            }
            "WhoCalls" => c.reply(&h, &sender(&m)),
            "Fail" => {
                let s: String = m.body().deserialize().unwrap_or_default();
                c.reply_error(&h, CUSTOM_ERROR, &s)
            }
            "ReadFd" => {
                let fd: zbus::zvariant::OwnedFd = m.body().deserialize().expect("an fd");
                let fd: std::os::fd::OwnedFd = fd.into();
                let mut s = String::new();
                std::fs::File::from(fd)
                    .read_to_string(&mut s)
                    .expect("read the passed fd");
                c.reply(&h, &s)
            }
            "Vanish" => {
                let _ = c.close();
                return;
            }
            other => c.reply_error(
                &h,
                "org.freedesktop.DBus.Error.UnknownMethod",
                &format!("no method {other}"),
            ),
        };
        if r.is_err() {
            return;
        }
    }
}

fn call_svc<B>(c: &ZConn, dest: &str, member: &str, body: &B) -> zbus::Result<ZMsg>
where
    B: Serialize + DynamicType,
{
    c.call_method(Some(dest), SVC_PATH, Some(SVC_IFACE), member, body)
}

fn reply_string(r: zbus::Result<ZMsg>) -> String {
    r.expect("call succeeds")
        .body()
        .deserialize::<String>()
        .expect("a string reply")
}

// ------------------------------------------------------------------ Hello, queries

#[test]
fn hello_gives_distinct_unique_names() {
    let b = Broker::start();
    let a = zconn(&b);
    let c = zconn(&b);
    let (na, nc) = (unique(&a), unique(&c));
    assert!(na.starts_with(":1."), "{na}");
    assert!(nc.starts_with(":1."), "{nc}");
    assert_ne!(na, nc);
    let p = proxy(&a);
    let names: Vec<String> = p
        .list_names()
        .expect("ListNames")
        .into_iter()
        .map(|n| n.to_string())
        .collect();
    for n in [DRIVER, &na, &nc] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    assert!(p.name_has_owner(nc.as_str().try_into().unwrap()).unwrap());
    assert_eq!(
        p.get_name_owner(nc.as_str().try_into().unwrap())
            .unwrap()
            .to_string(),
        nc
    );
    assert_eq!(
        p.get_name_owner(DRIVER.try_into().unwrap())
            .unwrap()
            .to_string(),
        DRIVER
    );
}

#[test]
fn unknown_names_have_no_owner() {
    let b = Broker::start();
    let a = zconn(&b);
    let p = proxy(&a);
    assert!(!p
        .name_has_owner("org.example.Nobody".try_into().unwrap())
        .unwrap());
    assert!(!p.name_has_owner(":1.9999".try_into().unwrap()).unwrap());
    assert_eq!(
        fdo_err(p.get_name_owner("org.example.Nobody".try_into().unwrap())),
        "org.freedesktop.DBus.Error.NameHasNoOwner"
    );
    assert_eq!(
        fdo_err(p.get_name_owner(":1.9999".try_into().unwrap())),
        "org.freedesktop.DBus.Error.NameHasNoOwner"
    );
    assert_eq!(
        fdo_err(p.list_queued_owners("org.example.Nobody".try_into().unwrap())),
        "org.freedesktop.DBus.Error.NameHasNoOwner"
    );
    assert_eq!(
        fdo_err(p.get_connection_unix_user("org.example.Nobody".try_into().unwrap())),
        "org.freedesktop.DBus.Error.NameHasNoOwner"
    );
}

#[test]
fn get_id_is_the_bus_id128() {
    let b = Broker::start();
    let a = zconn(&b);
    let r = driver(&a, DRIVER, "GetId", &()).expect("GetId");
    let id: String = r.body().deserialize().expect("GetId answers s");
    assert_eq!(id.len(), 32, "{id:?}");
    assert!(
        id.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{id:?}"
    );
    let native = b.conn();
    let want: String = native
        .bus_id128()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(id, want);
    // The same through zbus's own typed proxy (which parses it as a GUID).
    assert_eq!(proxy(&a).get_id().expect("GetId").to_string(), want);
}

#[test]
fn connection_credentials_are_ours() {
    let b = Broker::start();
    let a = zconn(&b);
    let c = zconn(&b);
    assert_eq!(request_name(&c, "org.example.Creds", 0), 1);
    let p = proxy(&a);
    let pid = std::process::id();
    for name in [unique(&c), "org.example.Creds".to_string(), unique(&a)] {
        let n = || name.as_str().try_into().unwrap();
        assert_eq!(p.get_connection_unix_user(n()).unwrap(), uid(), "{name}");
        assert_eq!(
            p.get_connection_unix_process_id(n()).unwrap(),
            pid,
            "{name}"
        );
        let cr = p.get_connection_credentials(n()).unwrap();
        assert_eq!(cr.unix_user_id(), Some(uid()), "{name}");
        assert_eq!(cr.process_id(), Some(pid), "{name}");
        // ProcessFD: a pidfd of our own process, where the kernel has SO_PEERPIDFD.
        if !kernel_has_peer_pidfd() {
            assert!(cr.process_fd().is_none());
            continue;
        }
        let fd = cr.process_fd().expect("ProcessFD");
        let info = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            std::os::fd::AsRawFd::as_raw_fd(fd)
        ))
        .unwrap();
        assert!(
            info.lines().any(|l| l == format!("Pid:\t{pid}")),
            "{name}: {info}"
        );
    }
}

#[test]
fn list_queued_owners_in_order() {
    let b = Broker::start();
    let (a, c, d) = (zconn(&b), zconn(&b), zconn(&b));
    let name = "org.example.Queue";
    assert_eq!(request_name(&a, name, 0), 1);
    assert_eq!(request_name(&c, name, 0), 2);
    assert_eq!(request_name(&d, name, 0), 2);
    let owners: Vec<String> = proxy(&a)
        .list_queued_owners(name.try_into().unwrap())
        .unwrap()
        .into_iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(owners, vec![unique(&a), unique(&c), unique(&d)]);
}

#[test]
fn start_service_by_name_of_an_unknown_name() {
    let b = Broker::start();
    let a = zconn(&b);
    assert_eq!(
        fdo_err(proxy(&a).start_service_by_name("org.example.NotThere".try_into().unwrap(), 0)),
        "org.freedesktop.DBus.Error.ServiceUnknown"
    );
}

/// As dbus-daemon 1.14: a name is startable only if something can activate it (here:
/// an activator connection, there: a .service file). An owned name without one is
/// ServiceUnknown; an activatable name already running is ALREADY_RUNNING (2).
#[test]
fn start_service_by_name_of_an_owned_name() {
    let b = Broker::start();
    let a = zconn(&b);
    let c = zconn(&b);
    assert_eq!(request_name(&c, "org.example.Running", 0), 1);
    assert_eq!(
        fdo_err(proxy(&a).start_service_by_name("org.example.Running".try_into().unwrap(), 0)),
        "org.freedesktop.DBus.Error.ServiceUnknown"
    );
    // With an activator behind it, the running service is ALREADY_RUNNING.
    let _act = kdbus::Connection::hello(
        &b.bus,
        &kdbus::HelloOptions::new().activator("org.example.Running"),
    )
    .unwrap();
    assert_eq!(
        proxy(&a)
            .start_service_by_name("org.example.Running".try_into().unwrap(), 0)
            .unwrap(),
        2
    );
}

#[test]
fn peer_introspect_and_properties() {
    let b = Broker::start();
    let a = zconn(&b);
    driver(&a, "org.freedesktop.DBus.Peer", "Ping", &()).expect("Ping");
    let xml: String = driver(&a, "org.freedesktop.DBus.Introspectable", "Introspect", &())
        .expect("Introspect")
        .body()
        .deserialize()
        .unwrap();
    assert!(
        xml.contains("<interface name=\"org.freedesktop.DBus\">"),
        "{xml}"
    );
    assert!(xml.contains("RequestName"), "{xml}");
    for prop in ["Features", "Interfaces"] {
        let r = driver(
            &a,
            "org.freedesktop.DBus.Properties",
            "Get",
            &(DRIVER, prop),
        )
        .unwrap_or_else(|e| panic!("Get {prop}: {e}"));
        assert_eq!(r.body().signature().to_string(), "v");
        let v: OwnedValue = r.body().deserialize().unwrap();
        let list: Vec<String> = v
            .try_into()
            .unwrap_or_else(|e| panic!("{prop} is not as: {e}"));
        if prop == "Interfaces" {
            assert!(
                list.iter().any(|i| i == "org.freedesktop.DBus.Monitoring"),
                "{list:?}"
            );
        }
    }
}

#[test]
fn unknown_driver_method_and_interface() {
    let b = Broker::start();
    let a = zconn(&b);
    assert_eq!(
        call_err(driver(&a, DRIVER, "NoSuchMethod", &())),
        "org.freedesktop.DBus.Error.UnknownMethod"
    );
    assert_eq!(
        call_err(driver(&a, "org.example.NoSuchInterface", "ListNames", &())),
        "org.freedesktop.DBus.Error.UnknownInterface"
    );
    // The bus is still fine after the errors.
    driver(&a, "org.freedesktop.DBus.Peer", "Ping", &()).expect("Ping");
}

// ------------------------------------------------------------------ name ownership

#[test]
fn request_name_flags() {
    let b = Broker::start();
    let (a, c, d) = (zconn(&b), zconn(&b), zconn(&b));
    let name = "org.example.Owned";
    // 1 PRIMARY_OWNER, 2 IN_QUEUE, 3 EXISTS, 4 ALREADY_OWNER;
    // flags 1 ALLOW_REPLACEMENT, 2 REPLACE_EXISTING, 4 DO_NOT_QUEUE.
    assert_eq!(request_name(&a, name, 0), 1);
    assert_eq!(request_name(&a, name, 0), 4);
    assert_eq!(request_name(&c, name, 4), 3);
    assert_eq!(request_name(&c, name, 0), 2);
    // REPLACE_EXISTING does not take a name whose owner did not allow replacement.
    assert_eq!(request_name(&d, name, 2 | 4), 3);
    let p = proxy(&a);
    assert_eq!(
        p.get_name_owner(name.try_into().unwrap())
            .unwrap()
            .to_string(),
        unique(&a)
    );

    // An owner that allows replacement loses the name to REPLACE_EXISTING and waits in
    // the queue (it did not ask for DO_NOT_QUEUE).
    let name2 = "org.example.Replaceable";
    assert_eq!(request_name(&a, name2, 1), 1);
    assert_eq!(request_name(&c, name2, 2), 1);
    assert_eq!(
        p.get_name_owner(name2.try_into().unwrap())
            .unwrap()
            .to_string(),
        unique(&c)
    );
    let q: Vec<String> = p
        .list_queued_owners(name2.try_into().unwrap())
        .unwrap()
        .into_iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(q, vec![unique(&c), unique(&a)]);

    // With DO_NOT_QUEUE, the replaced owner loses the name altogether.
    let name3 = "org.example.Gone";
    assert_eq!(request_name(&a, name3, 1 | 4), 1);
    assert_eq!(request_name(&c, name3, 2), 1);
    let q: Vec<String> = p
        .list_queued_owners(name3.try_into().unwrap())
        .unwrap()
        .into_iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(q, vec![unique(&c)]);
}

#[test]
fn request_name_rejects_invalid_names() {
    let b = Broker::start();
    let a = zconn(&b);
    for bad in [":1.77", DRIVER, "no-dots"] {
        let r = driver(&a, DRIVER, "RequestName", &(bad, 0u32));
        assert_eq!(
            call_err(r),
            "org.freedesktop.DBus.Error.InvalidArgs",
            "RequestName {bad}"
        );
    }
}

#[test]
fn release_name_codes() {
    let b = Broker::start();
    let (a, c) = (zconn(&b), zconn(&b));
    let name = "org.example.Release";
    assert_eq!(request_name(&a, name, 0), 1);
    // 3 NOT_OWNER: someone else owns it.
    assert_eq!(release_name(&c, name), 3);
    // 1 RELEASED
    assert_eq!(release_name(&a, name), 1);
    // 2 NON_EXISTENT
    assert_eq!(release_name(&a, name), 2);
    assert!(!proxy(&a).name_has_owner(name.try_into().unwrap()).unwrap());
    // Releasing hands the name to the next in the queue.
    assert_eq!(request_name(&a, name, 0), 1);
    assert_eq!(request_name(&c, name, 0), 2);
    assert_eq!(release_name(&a, name), 1);
    assert_eq!(
        proxy(&a)
            .get_name_owner(name.try_into().unwrap())
            .unwrap()
            .to_string(),
        unique(&c)
    );
}

// The body of the driver's NameOwnerChanged (sss) is mis-marshalled by kdbusd: in
// kdbus-core's dbus.rs each `Body::s()` starts a new `marshal::Writer`, whose alignment
// is relative to where that writer starts, so the 2nd and 3rd strings are not padded
// to 4 within the body. E.g. (":1.2", "", ":1.2") comes as 23 bytes with the strings
// at offsets 0, 9, 14 (must be 0, 12, 20: 29 bytes). zbus rejects the body ("invalid
// length 23, expected >= 262160", "PaddingNot0(4)"); dbus-daemon 1.14 pads correctly.
// The two tests that read the body are ignored until that is fixed;
// `name_owner_changed_is_delivered_by_rule` checks delivery without the body.

fn is_noc(m: &ZMsg) -> bool {
    let h = m.header();
    m.message_type() == MsgType::Signal
        && h.interface().map(|i| i.as_str()) == Some(DRIVER)
        && h.member().map(|i| i.as_str()) == Some("NameOwnerChanged")
}

/// Header only: a rule with arg0 brings exactly the NameOwnerChanged signals of its
/// name, from the driver, as broadcasts. (The body is checked in
/// `name_owner_changed_reaches_a_watcher`.)
#[test]
fn name_owner_changed_is_delivered_by_rule() {
    let b = Broker::start();
    let w = zconn(&b);
    let inbox = Inbox::new(&w);
    let name = "org.example.Watched";
    add_match(
        &w,
        &format!(
            "type='signal',sender='{DRIVER}',interface='{DRIVER}',member='NameOwnerChanged',arg0='{name}'"
        ),
    );
    let a = zconn(&b);
    let na = unique(&a);
    let next = || {
        let m = inbox.next_where(is_noc).expect("a NameOwnerChanged signal");
        assert_eq!(sender(&m), DRIVER);
        assert_eq!(
            m.header().path().map(|p| p.to_string()).as_deref(),
            Some(DRIVER_PATH)
        );
        assert!(m.header().destination().is_none());
        assert_eq!(m.body().signature().to_string(), "(sss)");
        m
    };
    // Not the watched name: no signal (the next one must be about the watched name).
    assert_eq!(request_name(&a, "org.example.Other", 0), 1);
    assert_eq!(request_name(&a, name, 0), 1);
    let m = next();
    assert!(mentions(&m, name) && mentions(&m, &na) && !mentions(&m, "Other"));
    assert_eq!(release_name(&a, name), 1);
    let m = next();
    assert!(mentions(&m, name) && mentions(&m, &na));
    // `a` leaving is not about the watched name either: the next signal is `c`
    // taking the name.
    a.close().expect("close");
    let c = zconn(&b);
    let nc = unique(&c);
    assert_eq!(request_name(&c, name, 0), 1);
    let m = next();
    assert!(mentions(&m, name) && mentions(&m, &nc) && !mentions(&m, &na));
}

/// The raw message contains `s` (header-independent while the body cannot be parsed).
fn mentions(m: &ZMsg, s: &str) -> bool {
    m.data().bytes().windows(s.len()).any(|w| w == s.as_bytes())
}

#[test]
fn name_owner_changed_reaches_a_watcher() {
    let b = Broker::start();
    let w = zconn(&b);
    let inbox = Inbox::new(&w);
    let name = "org.example.Watched";
    add_match(
        &w,
        &format!(
            "type='signal',sender='{DRIVER}',interface='{DRIVER}',member='NameOwnerChanged',arg0='{name}'"
        ),
    );
    let a = zconn(&b);
    let c = zconn(&b);
    let (na, nc) = (unique(&a), unique(&c));
    let noc = |m: &ZMsg| -> (String, String, String) {
        assert_eq!(sender(m), DRIVER);
        assert_eq!(
            m.header().path().map(|p| p.to_string()).as_deref(),
            Some(DRIVER_PATH)
        );
        m.body().deserialize().expect("NameOwnerChanged is sss")
    };
    assert_eq!(request_name(&a, name, 1), 1);
    let m = inbox.driver_signal("NameOwnerChanged", name);
    assert_eq!(noc(&m), (name.into(), String::new(), na.clone()));
    // Replaced: old and new owner in one signal.
    assert_eq!(request_name(&c, name, 2 | 4), 1);
    let m = inbox.driver_signal("NameOwnerChanged", name);
    assert_eq!(noc(&m), (name.into(), na.clone(), nc.clone()));
    // The owner disconnects: the queued old owner gets it back.
    c.close().expect("close");
    let m = inbox.driver_signal("NameOwnerChanged", name);
    assert_eq!(noc(&m), (name.into(), nc.clone(), na.clone()));
    assert_eq!(release_name(&a, name), 1);
    let m = inbox.driver_signal("NameOwnerChanged", name);
    assert_eq!(noc(&m), (name.into(), na.clone(), String::new()));
}

#[test]
fn name_owner_changed_for_unique_names() {
    let b = Broker::start();
    let w = zconn(&b);
    let inbox = Inbox::new(&w);
    add_match(
        &w,
        &format!("type='signal',sender='{DRIVER}',interface='{DRIVER}',member='NameOwnerChanged'"),
    );
    let a = zconn(&b);
    let na = unique(&a);
    let m = inbox.driver_signal("NameOwnerChanged", &na);
    let t: (String, String, String) = m.body().deserialize().unwrap();
    assert_eq!(t, (na.clone(), String::new(), na.clone()));
    a.close().expect("close");
    let m = inbox.driver_signal("NameOwnerChanged", &na);
    let t: (String, String, String) = m.body().deserialize().unwrap();
    assert_eq!(t, (na.clone(), na.clone(), String::new()));
}

#[test]
fn name_acquired_and_lost_go_to_the_owners() {
    let b = Broker::start();
    let a = zconn(&b);
    let c = zconn(&b);
    let (ia, ic) = (Inbox::new(&a), Inbox::new(&c));
    let name = "org.example.AcqLost";
    // No match rules: NameAcquired/NameLost are addressed to the owner.
    assert_eq!(request_name(&a, name, 1), 1);
    let m = ia.driver_signal("NameAcquired", name);
    assert_eq!(sender(&m), DRIVER);
    assert_eq!(
        m.header().destination().map(|d| d.to_string()),
        Some(unique(&a))
    );
    assert_eq!(request_name(&c, name, 2 | 4), 1);
    ia.driver_signal("NameLost", name);
    ic.driver_signal("NameAcquired", name);
    assert_eq!(release_name(&c, name), 1);
    ic.driver_signal("NameLost", name);
    // `a` was queued (no DO_NOT_QUEUE) and gets the name back.
    ia.driver_signal("NameAcquired", name);
}

// ------------------------------------------------------------------ method calls

#[test]
fn calls_between_zbus_peers() {
    let b = Broker::start();
    let svc = spawn_service(&b, Some("org.example.Service"));
    let c = zconn(&b);
    for dest in [svc.as_str(), "org.example.Service"] {
        assert_eq!(
            reply_string(call_svc(&c, dest, "Echo", &"hi")),
            "echo: hi",
            "{dest}"
        );
        // The bus vouches for the sender.
        assert_eq!(
            reply_string(call_svc(&c, dest, "WhoCalls", &())),
            unique(&c)
        );
        // The reply comes from the service's unique name.
        let r = call_svc(&c, dest, "Echo", &"x").unwrap();
        assert_eq!(sender(&r), svc);
    }
}

#[test]
fn error_replies_keep_their_name() {
    let b = Broker::start();
    let svc = spawn_service(&b, Some("org.example.Failing"));
    let c = zconn(&b);
    for dest in [svc.as_str(), "org.example.Failing"] {
        match call_svc(&c, dest, "Fail", &"it went wrong") {
            Err(zbus::Error::MethodError(name, msg, _)) => {
                assert_eq!(name.as_str(), CUSTOM_ERROR);
                assert_eq!(msg.as_deref(), Some("it went wrong"));
            }
            other => panic!("expected {CUSTOM_ERROR}, got {other:?}"),
        }
        assert_eq!(
            call_err(call_svc(&c, dest, "NoSuchMethod", &())),
            "org.freedesktop.DBus.Error.UnknownMethod"
        );
    }
    // The service still answers.
    assert_eq!(
        reply_string(call_svc(&c, "org.example.Failing", "Echo", &"ok")),
        "echo: ok"
    );
}

#[test]
fn call_to_unknown_name_is_service_unknown() {
    let b = Broker::start();
    let c = zconn(&b);
    assert_eq!(
        call_err(call_svc(&c, "org.example.Nobody", "Echo", &"x")),
        "org.freedesktop.DBus.Error.ServiceUnknown"
    );
    assert_eq!(
        call_err(call_svc(&c, ":1.9999", "Echo", &"x")),
        "org.freedesktop.DBus.Error.ServiceUnknown"
    );
}

#[test]
fn service_vanishing_without_reply_is_no_reply() {
    let b = Broker::start();
    let svc = spawn_service(&b, Some("org.example.Vanishing"));
    let c = zconn(&b);
    assert_eq!(
        call_err(call_svc(&c, "org.example.Vanishing", "Vanish", &())),
        "org.freedesktop.DBus.Error.NoReply"
    );
    let p = proxy(&c);
    assert!(wait_until(SOON, || !p
        .name_has_owner(svc.as_str().try_into().unwrap())
        .unwrap()));
    assert!(!p
        .name_has_owner("org.example.Vanishing".try_into().unwrap())
        .unwrap());
}

#[test]
fn fd_passing_in_a_method_call() {
    let b = Broker::start();
    spawn_service(&b, Some("org.example.Fds"));
    let c = zconn(&b);
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    let mut w = std::fs::File::from(w);
    w.write_all(b"through the pipe").unwrap();
    drop(w);
    let fd = zbus::zvariant::Fd::from(&r);
    let reply = call_svc(&c, "org.example.Fds", "ReadFd", &fd);
    assert_eq!(reply_string(reply), "through the pipe");
}

// ------------------------------------------------------------------ match rules, signals

fn emit(c: &ZConn, path: &str, iface: &str, member: &str, arg: &str) {
    c.emit_signal(None::<&str>, path, iface, member, &arg)
        .expect("emit");
}

#[test]
fn broadcast_signals_reach_subscribers_only() {
    let b = Broker::start();
    let tx = zconn(&b);
    let (r1, r2, r3) = (zconn(&b), zconn(&b), zconn(&b));
    let (i1, i2, i3) = (Inbox::new(&r1), Inbox::new(&r2), Inbox::new(&r3));
    add_match(&r1, "type='signal',interface='org.example.Sig',member='Ev'");
    add_match(&r2, "type='signal',interface='org.example.Sig'");
    // r3 only takes the marker.
    add_match(
        &r3,
        "type='signal',interface='org.example.Sig',member='Mark'",
    );
    emit(&tx, "/org/example/S", "org.example.Sig", "Ev", "one");
    emit(&tx, "/org/example/S", "org.example.Sig", "Mark", "m");
    for (i, inbox) in [&i1, &i2].into_iter().enumerate() {
        let m = inbox.signal("org.example.Sig");
        assert_eq!(member(&m), "Ev", "subscriber {i}");
        assert_eq!(sender(&m), unique(&tx));
        assert_eq!(m.body().deserialize::<String>().unwrap(), "one");
        assert!(m.header().destination().is_none());
    }
    assert_eq!(member(&i2.signal("org.example.Sig")), "Mark");
    assert_eq!(member(&i3.signal("org.example.Sig")), "Mark");
}

#[test]
fn match_rule_with_arg0() {
    let b = Broker::start();
    let tx = zconn(&b);
    let rx = zconn(&b);
    let inbox = Inbox::new(&rx);
    add_match(&rx, "type='signal',interface='org.example.Sig',arg0='x'");
    emit(&tx, "/org/example/S", "org.example.Sig", "Ev", "y");
    emit(&tx, "/org/example/S", "org.example.Sig", "Ev", "xx");
    emit(&tx, "/org/example/S", "org.example.Sig", "Ev", "x");
    let m = inbox.signal("org.example.Sig");
    assert_eq!(m.body().deserialize::<String>().unwrap(), "x");
}

#[test]
fn match_rule_with_path_namespace() {
    let b = Broker::start();
    let tx = zconn(&b);
    let rx = zconn(&b);
    let inbox = Inbox::new(&rx);
    add_match(
        &rx,
        "type='signal',interface='org.example.Sig',path_namespace='/org/example/ns'",
    );
    emit(&tx, "/org/example/other", "org.example.Sig", "Ev", "1");
    emit(&tx, "/org/example/nsx", "org.example.Sig", "Ev", "2");
    emit(
        &tx,
        "/org/example/ns/child/deep",
        "org.example.Sig",
        "Ev",
        "3",
    );
    emit(&tx, "/org/example", "org.example.Sig", "Ev", "4");
    emit(&tx, "/org/example/ns", "org.example.Sig", "Ev", "5");
    let a = inbox.signal("org.example.Sig");
    assert_eq!(a.body().deserialize::<String>().unwrap(), "3");
    let c = inbox.signal("org.example.Sig");
    assert_eq!(c.body().deserialize::<String>().unwrap(), "5");
}

#[test]
fn remove_match_stops_delivery() {
    let b = Broker::start();
    let tx = zconn(&b);
    let rx = zconn(&b);
    let inbox = Inbox::new(&rx);
    let rule = "type='signal',interface='org.example.Sig',member='Ev'";
    add_match(&rx, rule);
    add_match(
        &rx,
        "type='signal',interface='org.example.Sig',member='Mark'",
    );
    emit(&tx, "/org/example/S", "org.example.Sig", "Ev", "before");
    assert_eq!(member(&inbox.signal("org.example.Sig")), "Ev");
    driver(&rx, DRIVER, "RemoveMatch", &rule).expect("RemoveMatch");
    emit(&tx, "/org/example/S", "org.example.Sig", "Ev", "after");
    emit(&tx, "/org/example/S", "org.example.Sig", "Mark", "m");
    assert_eq!(member(&inbox.signal("org.example.Sig")), "Mark");
    // Removing it again: not found.
    assert_eq!(
        call_err(driver(&rx, DRIVER, "RemoveMatch", &rule)),
        "org.freedesktop.DBus.Error.MatchRuleNotFound"
    );
}

#[test]
fn remove_match_of_an_unknown_rule() {
    let b = Broker::start();
    let rx = zconn(&b);
    assert_eq!(
        call_err(driver(
            &rx,
            DRIVER,
            "RemoveMatch",
            &"type='signal',member='NeverAdded'"
        )),
        "org.freedesktop.DBus.Error.MatchRuleNotFound"
    );
}

#[test]
fn garbage_match_rules_are_invalid() {
    let b = Broker::start();
    let rx = zconn(&b);
    for bad in [
        "this is not a match rule",
        "type='nonsense'",
        "member='unterminated",
        "arg64='x'",
    ] {
        assert_eq!(
            call_err(driver(&rx, DRIVER, "AddMatch", &bad)),
            "org.freedesktop.DBus.Error.MatchRuleInvalid",
            "AddMatch {bad:?}"
        );
    }
    // Still connected and well.
    driver(&rx, "org.freedesktop.DBus.Peer", "Ping", &()).expect("Ping");
}

#[test]
fn unicast_signal_reaches_its_destination() {
    let b = Broker::start();
    let tx = zconn(&b);
    let rx = zconn(&b);
    let inbox = Inbox::new(&rx);
    // No match rule needed for a signal addressed to us.
    tx.emit_signal(
        Some(unique(&rx).as_str()),
        "/org/example/S",
        "org.example.Sig",
        "Direct",
        &"to you",
    )
    .expect("emit");
    let m = inbox.signal("org.example.Sig");
    assert_eq!(member(&m), "Direct");
    assert_eq!(
        m.header().destination().map(|d| d.to_string()),
        Some(unique(&rx))
    );
    assert_eq!(m.body().deserialize::<String>().unwrap(), "to you");
}

// ------------------------------------------------------------------ where kdbusd and
// dbus-daemon 1.14 differ

#[test]
fn properties_get_of_an_unknown_property() {
    let b = Broker::start();
    let a = zconn(&b);
    assert_eq!(
        call_err(driver(
            &a,
            "org.freedesktop.DBus.Properties",
            "Get",
            &(DRIVER, "Nope")
        )),
        "org.freedesktop.DBus.Error.UnknownProperty"
    );
}

#[test]
fn credentials_of_the_bus_itself() {
    let b = Broker::start();
    let a = zconn(&b);
    let p = proxy(&a);
    let n = || DRIVER.try_into().unwrap();
    let broker_pid = b.child.id();
    assert_eq!(p.get_connection_unix_user(n()).unwrap(), uid());
    assert_eq!(p.get_connection_unix_process_id(n()).unwrap(), broker_pid);
    let cr = p.get_connection_credentials(n()).unwrap();
    assert_eq!(cr.unix_user_id(), Some(uid()));
    assert_eq!(cr.process_id(), Some(broker_pid));
}

#[test]
fn release_name_of_the_bus_name() {
    let b = Broker::start();
    let a = zconn(&b);
    assert_eq!(
        call_err(driver(&a, DRIVER, "ReleaseName", &DRIVER)),
        "org.freedesktop.DBus.Error.InvalidArgs"
    );
}
