//! Typed D-Bus bodies in the client library (`Connection::dbus_call`, `dbus_reply`,
//! `Received::dbus_body`): a native service and a native client, a zbus service called
//! by a native client over the bus, a body of the wrong type, and an error reply.

mod common;
#[path = "common/zbus_peer.rs"]
mod zbus_peer;
use common::*;
use kdbus::{DBusMethod, Error};
use std::collections::HashMap;
use std::time::Duration;
use zbus_peer::*;

const ADD: DBusMethod<'static> = DBusMethod {
    path: "/org/kdbus/Typed",
    interface: Some("org.kdbus.Typed"),
    member: "Add",
};

/// A native service owning `org.kdbus.Typed`: `Add(ii) -> i`, `Count(as) -> a{su}`.
fn native_service(b: &Broker) {
    let c = b.conn();
    ok(c.acquire_name("org.kdbus.Typed", 0));
    std::thread::spawn(move || loop {
        let Ok(m) = c.recv_timeout(None) else { return };
        let member = m.dbus_member().ok().flatten().unwrap_or_default();
        let r = match member.as_str() {
            "Add" => match m.dbus_body::<(i32, i32)>() {
                Ok((a, b)) => c.dbus_reply(&m, &(a + b,)),
                Err(_) => c.dbus_reply(&m, &("bad arguments",)),
            },
            "Count" => {
                let words: (Vec<String>,) = m.dbus_body().unwrap_or_default();
                let mut n: HashMap<String, u32> = HashMap::new();
                for w in words.0 {
                    *n.entry(w).or_default() += 1;
                }
                c.dbus_reply(&m, &(n,))
            }
            _ => Ok(()),
        };
        if r.is_err() {
            return;
        }
    });
}

#[test]
fn a_native_client_calls_a_native_service_with_typed_bodies() {
    let b = Broker::start();
    native_service(&b);
    let c = b.conn();
    let t = Duration::from_secs(5);
    let (sum,): (i32,) = ok(c.dbus_call("org.kdbus.Typed", ADD, &(2, 40), t));
    assert_eq!(sum, 42);
    let count = DBusMethod {
        member: "Count",
        ..ADD
    };
    let words = vec!["a".to_string(), "b".into(), "a".into()];
    let (n,): (HashMap<String, u32>,) = ok(c.dbus_call("org.kdbus.Typed", count, &(words,), t));
    assert_eq!(n.get("a"), Some(&2));
    assert_eq!(n.get("b"), Some(&1));
    // A reply of another type than asked for is refused, not misread.
    let wrong: kdbus::Result<(String,)> = c.dbus_call("org.kdbus.Typed", ADD, &(1, 1), t);
    assert!(
        matches!(wrong, Err(Error::Body(ref e)) if e.contains("'i'")),
        "{wrong:?}"
    );
}

/// The same calls reach a D-Bus peer (zbus, on the bus's D-Bus socket), and its error
/// replies come back as errors with their names.
#[test]
fn a_native_client_calls_a_zbus_service_with_typed_bodies() {
    let b = Broker::start();
    let z = zconn(&b);
    let r = z
        .call_method(
            Some(DRIVER),
            DRIVER_PATH,
            Some(DRIVER),
            "RequestName",
            &("org.kdbus.Z", 4u32),
        )
        .expect("RequestName");
    assert_eq!(r.body().deserialize::<u32>().unwrap(), 1);
    let it = zbus::blocking::MessageIterator::from(&z);
    std::thread::spawn(move || {
        for m in it.flatten() {
            if m.message_type() != zbus::message::Type::MethodCall {
                continue;
            }
            let h = m.header();
            let r = match h.member().map(|x| x.as_str()) {
                Some("Add") => {
                    let (a, b): (i32, i32) = m.body().deserialize().unwrap_or((0, 0));
                    z.reply(&h, &(a + b))
                }
                _ => z.reply_error(&h, "org.kdbus.Error.Nope", &"no such thing"),
            };
            if r.is_err() {
                return;
            }
        }
    });
    let c = b.conn();
    let t = Duration::from_secs(5);
    let (sum,): (i32,) = ok(c.dbus_call("org.kdbus.Z", ADD, &(20, 22), t));
    assert_eq!(sum, 42);
    let other = DBusMethod {
        member: "Other",
        ..ADD
    };
    let e = c.dbus_call::<(), (i32,)>("org.kdbus.Z", other, &(), t);
    assert!(
        matches!(e, Err(Error::Body(ref s)) if s.contains("org.kdbus.Error.Nope") && s.contains("no such thing")),
        "{e:?}"
    );
}
