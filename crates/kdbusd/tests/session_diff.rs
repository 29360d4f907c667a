//! D-Bus semantics real programs trip on, checked against the real thing: each case is
//! a client script (zbus, as root) run once against dbus-daemon and once against
//! kdbusd, both started from the same configuration (`common/diff.rs`), and the two
//! transcripts must be equal, and equal to what dbus-daemon is known to answer.
//! Skipped without root, dbus-daemon, dbus-send or setpriv.

mod common;
#[path = "common/dbus_raw.rs"]
mod dbus_raw;
#[path = "common/diff.rs"]
mod diff;
#[path = "common/script.rs"]
mod script;
#[path = "common/zbus_peer.rs"]
mod zbus_peer;
use diff::zconn;
use script::{both, both_with, driver, reply_text, same};
use zbus::blocking::Connection as ZConn;
use zbus::message::Type as MsgType;
use zbus_peer::{first_string, member, Inbox, DRIVER, DRIVER_PATH};

/// A signal matched by its own sender's rule reaches its sender too (GLib programs
/// wait for their own signals).
#[test]
fn a_broadcast_reaches_its_own_sender_when_it_matches() {
    both(
        |address| {
            let c = zconn(address);
            let inbox = Inbox::new(&c);
            let mut t = vec![reply_text(driver(
                &c,
                "AddMatch",
                &"type='signal',interface='org.kdbus.Own'",
            ))];
            c.emit_signal(None::<&str>, "/org/kdbus/Own", "org.kdbus.Own", "Ping", &())
                .expect("emit");
            let got =
                inbox.next_where(|m| m.message_type() == MsgType::Signal && member(m) == "Ping");
            t.push(format!("own signal: {}", got.is_some()));
            t
        },
        &["ok", "own signal: true"],
    );
}

/// `REPLACE_EXISTING` taking a name from an owner that allowed replacement (and did
/// not ask `DO_NOT_QUEUE`) puts the old owner at the head of the queue, ahead of
/// those already waiting; it gets the name back first.
#[test]
fn a_replaced_owner_waits_at_the_head_of_the_queue() {
    const ALLOW_REPLACEMENT: u32 = 1;
    const REPLACE_EXISTING: u32 = 2;
    const NAME: &str = "org.kdbus.Queue";
    both(
        |address| {
            let [a, b, c] = [zconn(address), zconn(address), zconn(address)];
            let label = |who: &str| {
                [(&a, "A"), (&b, "B"), (&c, "C")]
                    .iter()
                    .find(|(z, _)| z.unique_name().is_some_and(|u| u.as_str() == who))
                    .map_or(who.to_string(), |(_, l)| l.to_string())
            };
            let queue = |z: &ZConn| {
                let r = driver(z, "ListQueuedOwners", &NAME).map(|m| {
                    let v: Vec<String> = m.body().deserialize().unwrap_or_default();
                    v.iter().map(|u| label(u)).collect::<Vec<_>>().join(",")
                });
                r.unwrap_or_else(|e| format!("failed: {e}"))
            };
            let a_inbox = Inbox::new(&a);
            let mut t = vec![
                reply_text(driver(&a, "RequestName", &(NAME, ALLOW_REPLACEMENT))),
                reply_text(driver(&c, "RequestName", &(NAME, 0u32))),
                reply_text(driver(&b, "RequestName", &(NAME, REPLACE_EXISTING))),
            ];
            t.push(queue(&a));
            t.push(reply_text(driver(&b, "ReleaseName", &NAME)));
            t.push(queue(&a));
            // A was told it lost the name, and that it has it again.
            for _ in 0..3 {
                let m = a_inbox.next_where(|m| {
                    matches!(member(m).as_str(), "NameAcquired" | "NameLost")
                        && first_string(m).as_deref() == Some(NAME)
                });
                t.push(m.map_or("nothing".into(), |m| member(&m)));
            }
            t
        },
        &[
            "1",
            "2",
            "1",
            "B,A,C",
            "1",
            "A,C",
            "NameAcquired",
            "NameLost",
            "NameAcquired",
        ],
    );
}

/// What a monitor saw, one line per message: type, member and destination (`-` for
/// none, unique names of the script's connections by label).
fn seen(inbox: &Inbox, labels: &[(String, &str)], until_member: &str) -> Vec<String> {
    let mut t = Vec::new();
    while let Some(m) = inbox.next_where(|_| true) {
        let h = m.header();
        let dest = h.destination().map_or("-".to_string(), |d| {
            let d = d.to_string();
            labels
                .iter()
                .find(|(u, _)| *u == d)
                .map_or(d.clone(), |(_, l)| l.to_string())
        });
        let mem = member(&m);
        // Traffic to and from the bus itself (Hello, RequestName, their replies, its
        // signals) is not what these scripts look at.
        let driver = |n: Option<&str>| n == Some(DRIVER);
        if driver(h.sender().map(|s| s.as_str())) || driver(h.destination().map(|d| d.as_str())) {
            continue;
        }
        t.push(format!("{:?} {mem} {dest}", m.message_type()));
        if mem == until_member {
            break;
        }
    }
    t
}

/// A bare socket to the bus at `address` (reads time out after 5 s).
fn raw_socket(address: &str) -> std::os::unix::net::UnixStream {
    let path = address
        .strip_prefix("unix:path=")
        .and_then(|p| p.split(',').next())
        .expect("a unix:path address");
    let s = std::os::unix::net::UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("a read timeout");
    s
}

/// Become a monitor with `rules`: the outcome, and the monitor's inbox.
fn monitor(address: &str, rules: &[&str]) -> (String, ZConn, Inbox) {
    let m = zconn(address);
    let inbox = Inbox::new(&m);
    let r = m.call_method(
        Some(DRIVER),
        DRIVER_PATH,
        Some("org.freedesktop.DBus.Monitoring"),
        "BecomeMonitor",
        &(rules, 0u32),
    );
    (reply_text(r), m, inbox)
}

/// A monitor's rules choose what it sees; without rules it sees everything, and its
/// copies keep their destination as sent (none for a broadcast, the well-known name
/// of a call to one).
#[test]
fn a_monitor_sees_what_its_rules_take_with_destinations_as_sent() {
    both(
        |address| {
            let (r1, _m1, picky) = monitor(address, &["type='signal',interface='org.kdbus.Mon'"]);
            let (r2, _m2, all) = monitor(address, &[]);
            let a = zconn(address);
            diff::serve(address, &["org.kdbus.MonB"]);
            let labels = vec![(a.unique_name().unwrap().to_string(), "A")];
            a.emit_signal(None::<&str>, "/m", "org.kdbus.Other", "Tock", &())
                .expect("emit");
            a.call_method(
                Some("org.kdbus.MonB"),
                "/m",
                Some("org.kdbus.Mon"),
                "Call",
                &(),
            )
            .expect("the call is answered");
            a.emit_signal(None::<&str>, "/m", "org.kdbus.Mon", "Tick", &())
                .expect("emit");
            let mut t = vec![r1, r2];
            t.extend(seen(&picky, &labels, "Tick"));
            t.push("--".into());
            t.extend(seen(&all, &labels, "Tick"));
            t
        },
        &[
            "ok",
            "ok",
            "Signal Tick -",
            "--",
            "Signal Tock -",
            "MethodCall Call org.kdbus.MonB",
            "MethodReturn  A",
            "Signal Tick -",
        ],
    );
}

/// An invalid rule is an error, and the connection stays what it was.
#[test]
fn becoming_a_monitor_with_an_invalid_rule_fails() {
    both(
        |address| {
            let (r, m, _) = monitor(address, &["type='bogus'"]);
            vec![r, reply_text(driver(&m, "GetId", &())).len().to_string()]
        },
        &["org.freedesktop.DBus.Error.MatchRuleInvalid", "32"],
    );
}

/// A monitor only watches: one that sends anything is disconnected.
#[test]
fn a_monitor_that_sends_is_disconnected() {
    both(
        |address| {
            let (r, m, _) = monitor(address, &[]);
            let sent = driver(&m, "GetId", &());
            vec![
                r,
                if sent.is_ok() {
                    "answered".into()
                } else {
                    "gone".into()
                },
            ]
        },
        &["ok", "gone"],
    );
}

/// Watching everyone's traffic is for the bus's own user (and root): another user is
/// refused, in dbus-daemon's words.
#[test]
fn only_the_bus_owner_may_monitor_or_change_the_activation_environment() {
    both_with(
        r#"<policy context="default"><allow send_destination="org.freedesktop.DBus"
             send_interface="org.freedesktop.DBus.Monitoring"/></policy>"#,
        |address| {
            let args = [
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.Monitoring.BecomeMonitor",
                "array:string:",
                "uint32:0",
            ];
            let env = [
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.UpdateActivationEnvironment",
                "dict:string:string:A,B",
            ];
            vec![
                diff::dbus_send_text(address, diff::NOBODY, &args),
                diff::dbus_send_text(address, diff::NOBODY, &env),
            ]
        },
        &[
            "Error org.freedesktop.DBus.Error.AccessDenied: rejected attempt to call \
             BecomeMonitor by connection :1.N (uid=65534 pid=N comm=\"N\") with uid 65534",
            "Error org.freedesktop.DBus.Error.AccessDenied: rejected attempt to call \
             UpdateActivationEnvironment by connection :1.N (uid=65534 pid=N comm=\"N\") \
             with uid 65534",
        ],
    );
}

/// A client whose first message is not Hello is disconnected; monitors see what it
/// sent first.
#[test]
fn a_message_before_hello_is_shown_to_monitors_and_its_sender_goes() {
    use std::io::Write;
    both(
        |address| {
            let (r, _m, all) = monitor(address, &[]);
            let mut s = raw_socket(address);
            let mut bytes = dbus_raw::auth_lines(false);
            bytes.extend(dbus_raw::call(1, "org.kdbus.Early", "Early", "", &[], 0));
            s.write_all(&bytes).expect("write");
            let mut reading = dbus_raw::Reading::new(s);
            let ok = reading.line();
            let mut t = vec![r];
            t.extend(seen(&all, &[], "Early"));
            t.push(format!("{} closed: {}", &ok[..2], reading.closed()));
            t
        },
        &["ok", "MethodCall Early org.kdbus.Early", "OK closed: true"],
    );
}

/// A call to the driver on any path and interface: the error name, or the reply's body
/// as zvariant shows it.
fn driver_at(c: &ZConn, path: &str, iface: &str, method: &str, body: &impl DriverArgs) -> String {
    let r = body.call(c, path, iface, method);
    match r {
        Ok(m) => {
            let b = m.body();
            match b.deserialize::<zbus::zvariant::Structure>() {
                Ok(s) => format!("{s}"),
                Err(_) => "()".to_string(),
            }
        }
        Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
        Err(e) => format!("failed: {e}"),
    }
}

/// Arguments of a driver call (a tuple zbus can marshal).
trait DriverArgs {
    fn call(&self, c: &ZConn, path: &str, iface: &str, method: &str)
        -> zbus::Result<zbus::Message>;
}

impl<T> DriverArgs for T
where
    T: zbus::export::serde::Serialize + zbus::zvariant::DynamicType,
{
    fn call(
        &self,
        c: &ZConn,
        path: &str,
        iface: &str,
        method: &str,
    ) -> zbus::Result<zbus::Message> {
        c.call_method(Some(DRIVER), path, Some(iface), method, self)
    }
}

const PROPS: &str = "org.freedesktop.DBus.Properties";

/// The driver's properties: read-only, on its own path and interface only, with
/// dbus-daemon's errors for the rest.
#[test]
fn the_drivers_properties_and_their_errors() {
    both(
        |address| {
            let c = zconn(address);
            let p = DRIVER_PATH;
            vec![
                driver_at(&c, p, PROPS, "Get", &(DRIVER, "Interfaces")),
                driver_at(&c, p, PROPS, "Get", &(DRIVER, "NoSuch")),
                driver_at(&c, p, PROPS, "Get", &("org.no.Such", "Features")),
                driver_at(&c, "/", PROPS, "Get", &(DRIVER, "Interfaces")),
                driver_at(&c, "/org/x", PROPS, "Get", &(DRIVER, "Interfaces")),
                driver_at(&c, p, PROPS, "GetAll", &("org.no.Such",)),
                driver_at(&c, "/org/x", PROPS, "GetAll", &(DRIVER,)),
                driver_at(
                    &c,
                    p,
                    PROPS,
                    "Set",
                    &(DRIVER, "Features", zbus::zvariant::Value::from(1u32)),
                ),
                driver_at(
                    &c,
                    p,
                    PROPS,
                    "Set",
                    &(DRIVER, "NoSuch", zbus::zvariant::Value::from(1u32)),
                ),
                driver_at(
                    &c,
                    p,
                    PROPS,
                    "Set",
                    &("org.no.Such", "X", zbus::zvariant::Value::from(1u32)),
                ),
                driver_at(
                    &c,
                    p,
                    PROPS,
                    "GetAll",
                    &("org.freedesktop.DBus.Monitoring",),
                ),
                driver_at(
                    &c,
                    "/",
                    "org.freedesktop.DBus.Monitoring",
                    "BecomeMonitor",
                    &(Vec::<String>::new(), 0u32),
                ),
                driver_at(&c, "/", "org.freedesktop.DBus.Debug.Stats", "GetStats", &()),
                driver_at(
                    &c,
                    "/",
                    DRIVER,
                    "UpdateActivationEnvironment",
                    &(std::collections::HashMap::<String, String>::new(),),
                ),
                driver_at(&c, "/", DRIVER, "NoSuchMethod", &()),
                driver_at(&c, p, "org.no.Such", "Method", &()),
            ]
        },
        &[
            r#"(<["org.freedesktop.DBus.Monitoring", "org.freedesktop.DBus.Debug.Stats"]>,)"#,
            "org.freedesktop.DBus.Error.UnknownProperty",
            "org.freedesktop.DBus.Error.UnknownInterface",
            "org.freedesktop.DBus.Error.UnknownInterface",
            "org.freedesktop.DBus.Error.UnknownInterface",
            "org.freedesktop.DBus.Error.UnknownInterface",
            "org.freedesktop.DBus.Error.UnknownInterface",
            "org.freedesktop.DBus.Error.PropertyReadOnly",
            "org.freedesktop.DBus.Error.UnknownProperty",
            "org.freedesktop.DBus.Error.UnknownInterface",
            "(@a{sv} {},)",
            "org.freedesktop.DBus.Error.UnknownInterface",
            "org.freedesktop.DBus.Error.UnknownInterface",
            "org.freedesktop.DBus.Error.AccessDenied",
            "org.freedesktop.DBus.Error.UnknownMethod",
            "org.freedesktop.DBus.Error.UnknownInterface",
        ],
    );
}

/// The driver's errors in dbus-daemon's words: on the wrong path, interface or
/// property, and for wrong arguments.
#[test]
fn the_drivers_error_texts_are_dbus_daemons() {
    same(|address| {
        let c = zconn(address);
        let p = DRIVER_PATH;
        let text = |r: zbus::Result<zbus::Message>| match r {
            Err(zbus::Error::MethodError(name, text, _)) => {
                format!("{name}: {}", text.unwrap_or_default())
            }
            Ok(_) => "ok".into(),
            Err(e) => format!("failed: {e}"),
        };
        let v = || zbus::zvariant::Value::from(1u32);
        vec![
            text(PropsCall(&c, p, "Get").with(&(DRIVER, "NoSuch"))),
            text(PropsCall(&c, p, "Get").with(&("org.no.Such", "X"))),
            text(PropsCall(&c, p, "GetAll").with(&("org.no.Such",))),
            text(PropsCall(&c, p, "Set").with(&(DRIVER, "Features", v()))),
            text(PropsCall(&c, p, "Set").with(&(DRIVER, "NoSuch", v()))),
            text(PropsCall(&c, "/", "Get").with(&(DRIVER, "Features"))),
            text(c.call_method(
                Some(DRIVER),
                "/",
                Some(DRIVER),
                "UpdateActivationEnvironment",
                &(std::collections::HashMap::<String, String>::new(),),
            )),
            text(c.call_method(Some(DRIVER), p, Some(DRIVER), "NoSuch", &())),
            text(c.call_method(Some(DRIVER), p, Some("org.no.Such"), "NoSuch", &())),
            text(c.call_method(
                Some(DRIVER),
                p,
                Some("org.freedesktop.DBus.Debug.Stats"),
                "GetConnectionStats",
                &(DRIVER,),
            )),
            text(c.call_method(
                Some(DRIVER),
                p,
                Some("org.freedesktop.DBus.Debug.Stats"),
                "GetConnectionStats",
                &("org.no.Such",),
            )),
        ]
    });
}

/// A Properties call on the driver at `path`.
struct PropsCall<'a>(&'a ZConn, &'a str, &'a str);

impl PropsCall<'_> {
    fn with<B>(&self, body: &B) -> zbus::Result<zbus::Message>
    where
        B: zbus::export::serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.0
            .call_method(Some(DRIVER), self.1, Some(PROPS), self.2, body)
    }
}

/// `Debug.Stats`: dbus-daemon's keys (but its allocator's and `OutgoingMessages`, see
/// the bridge's `stats`), its counts, and the match rules in its words.
#[test]
fn debug_stats_answers_as_dbus_daemon() {
    use std::collections::HashMap;
    use zbus::zvariant::OwnedValue;
    const STATS: &str = "org.freedesktop.DBus.Debug.Stats";
    same(|address| {
        let c = zconn(address);
        let me = c.unique_name().expect("a unique name").to_string();
        for rule in [
            "type='signal',interface='org.x'",
            "member='M',arg0='it'\\''s'",
        ] {
            driver(&c, "AddMatch", &rule).expect("AddMatch");
        }
        diff::request_name(&c, "org.kdbus.Stats");
        let stats = |m: zbus::Result<zbus::Message>| -> HashMap<String, OwnedValue> {
            m.expect("stats").body().deserialize().expect("a{sv}")
        };
        let skip = [
            "ListMemPoolUsedBytes",
            "ListMemPoolCachedBytes",
            "ListMemPoolAllocatedBytes",
            "OutgoingMessages",
        ];
        let keys = |d: &HashMap<String, OwnedValue>| {
            let mut k: Vec<String> = d
                .keys()
                .filter(|k| !skip.contains(&k.as_str()))
                .cloned()
                .collect();
            k.sort();
            k
        };
        let bus = stats(c.call_method(Some(DRIVER), DRIVER_PATH, Some(STATS), "GetStats", &()));
        let mine = stats(c.call_method(
            Some(DRIVER),
            DRIVER_PATH,
            Some(STATS),
            "GetConnectionStats",
            &(me.as_str(),),
        ));
        let dbus_daemon_conn_keys = [
            "BusNames",
            "IncomingBytes",
            "IncomingFDs",
            "IncomingMessages",
            "MatchRules",
            "OutgoingBytes",
            "OutgoingFDs",
            "PeakBusNames",
            "PeakIncomingBytes",
            "PeakIncomingFDs",
            "PeakMatchRules",
            "PeakOutgoingBytes",
            "PeakOutgoingFDs",
            "Serial",
            "UniqueName",
        ];
        let rules = c
            .call_method(
                Some(DRIVER),
                DRIVER_PATH,
                Some(STATS),
                "GetAllMatchRules",
                &(),
            )
            .expect("GetAllMatchRules");
        let rules: HashMap<String, Vec<String>> = rules.body().deserialize().expect("a{sas}");
        let u = |d: &HashMap<String, OwnedValue>, k: &str| {
            d.get(k)
                .and_then(|v| u32::try_from(v).ok())
                .map_or("-".into(), |n| n.to_string())
        };
        vec![
            format!("{:?}", keys(&bus)),
            format!(
                "{:?}",
                dbus_daemon_conn_keys
                    .iter()
                    .filter(|k| !mine.contains_key(**k))
                    .collect::<Vec<_>>()
            ),
            format!(
                "rules {} names {}",
                u(&mine, "MatchRules"),
                u(&mine, "BusNames")
            ),
            format!("{:?}", rules.get(&me)),
        ]
    });
}

/// `eavesdrop='true'` shows a connection unicasts between others that its rule takes,
/// where the policy allows eavesdropping (here it does); a rule without it does not.
#[test]
fn eavesdropping_shows_unicasts_between_others_where_allowed() {
    let script = |address: &str| {
        let eaves = zconn(address);
        let plain = zconn(address);
        let (eaves_in, plain_in) = (Inbox::new(&eaves), Inbox::new(&plain));
        let mut t = vec![
            reply_text(driver(
                &eaves,
                "AddMatch",
                &"eavesdrop='true',type='method_call',interface='org.kdbus.E'",
            )),
            reply_text(driver(
                &plain,
                "AddMatch",
                &"type='method_call',interface='org.kdbus.E'",
            )),
        ];
        let a = zconn(address);
        diff::serve(address, &["org.kdbus.EB"]);
        a.call_method(Some("org.kdbus.EB"), "/e", Some("org.kdbus.E"), "Ping", &())
            .expect("the call is answered");
        // A broadcast afterwards: a receiver that got it has seen all before it.
        for (c, inbox) in [(&eaves, &eaves_in), (&plain, &plain_in)] {
            reply_text(driver(
                c,
                "AddMatch",
                &"type='signal',interface='org.kdbus.End'",
            ));
            let _ = inbox;
        }
        a.emit_signal(None::<&str>, "/e", "org.kdbus.End", "End", &())
            .expect("emit");
        for inbox in [&eaves_in, &plain_in] {
            let got = inbox.next_where(|m| matches!(member(m).as_str(), "Ping" | "End"));
            t.push(got.map_or("nothing".into(), |m| member(&m)));
        }
        t
    };
    both_with(
        r#"<policy context="default"><allow eavesdrop="true"/></policy>"#,
        script,
        &["ok", "ok", "Ping", "End"],
    );
    // Debian's system bus policy does not allow it.
    both(script, &["ok", "ok", "End", "End"]);
}

/// Signals reach subscribers whose argument rules take them, wherever the argument
/// is: an `arg0namespace` equal to the argument, a string behind an integer (both
/// were lost to the bloom filter).
#[test]
fn argument_rules_take_what_dbus_daemon_delivers() {
    both(
        |address| {
            let rules = [
                "type='signal',interface='org.kdbus.Args',arg0namespace='org.fuzz'",
                "type='signal',interface='org.kdbus.Args',arg1='x'",
                "type='signal',interface='org.kdbus.Args',arg0path='/a/b'",
            ];
            let subs: Vec<(ZConn, Inbox)> = rules
                .iter()
                .map(|r| {
                    let c = zconn(address);
                    let inbox = Inbox::new(&c);
                    driver(&c, "AddMatch", r).expect("AddMatch");
                    // The last signal, to know when to stop looking.
                    driver(&c, "AddMatch", &"type='signal',member='End'").expect("AddMatch");
                    (c, inbox)
                })
                .collect();
            let a = zconn(address);
            let emit = |member: &str, body: &dyn Fn(&ZConn, &str) -> zbus::Result<()>| {
                body(&a, member).expect("emit");
            };
            emit("NsEqual", &|c, m| {
                c.emit_signal(None::<&str>, "/", "org.kdbus.Args", m, &"org.fuzz")
            });
            emit("Behind", &|c, m| {
                c.emit_signal(None::<&str>, "/", "org.kdbus.Args", m, &(7u32, "x"))
            });
            emit("PathEqual", &|c, m| {
                let p = zbus::zvariant::ObjectPath::try_from("/a/b").expect("a path");
                c.emit_signal(None::<&str>, "/", "org.kdbus.Args", m, &p)
            });
            emit("End", &|c, m| {
                c.emit_signal(None::<&str>, "/", "org.kdbus.Args", m, &"end")
            });
            subs.iter()
                .map(|(_, inbox)| {
                    let mut got = Vec::new();
                    let ours = |m: &zbus::Message| {
                        m.header()
                            .interface()
                            .is_some_and(|i| i.as_str() == "org.kdbus.Args")
                    };
                    while let Some(m) = inbox.next_where(ours) {
                        let name = member(&m);
                        if name == "End" {
                            break;
                        }
                        got.push(name);
                    }
                    got.join(",")
                })
                .collect()
        },
        &["NsEqual", "Behind", "PathEqual"],
    );
}

/// A message whose body is not what its signature says costs its sender the
/// connection, as in dbus-daemon, and reaches nobody.
#[test]
fn a_body_that_is_not_its_signature_disconnects_its_sender() {
    use std::io::Write;
    both(
        |address| {
            let mut s = raw_socket(address);
            let mut bytes = dbus_raw::auth_lines(false);
            bytes.extend(dbus_raw::call(1, DRIVER, "Hello", "", &[], 0));
            s.write_all(&bytes).expect("write");
            let mut r = dbus_raw::Reading::new(s.try_clone().expect("a clone"));
            let ok = r.line();
            r.reply();
            // A string of 3 bytes without its terminating NUL.
            let bad = [3, 0, 0, 0, b'a', b'b', b'c', b'X'];
            s.write_all(&dbus_raw::call(2, DRIVER, "GetNameOwner", "s", &bad, 0))
                .expect("write");
            vec![format!("{} closed: {}", &ok[..2], r.closed())]
        },
        &["OK closed: true"],
    );
}

/// Every method of `org.freedesktop.DBus` (and `Peer`, `Introspectable`) with its
/// error cases: the same answers and texts as dbus-daemon, unique names and the
/// machine's ids aside.
#[test]
fn each_driver_method_answers_as_dbus_daemon() {
    same(|address| {
        let c = zconn(address);
        let other = zconn(address);
        let me = c.unique_name().expect("a name").to_string();
        let them = other.unique_name().expect("a name").to_string();
        let norm = |s: String| s.replace(&me, ":ME").replace(&them, ":THEM");
        let text = |r: zbus::Result<zbus::Message>| -> String {
            match r {
                Ok(m) => {
                    let b = m.body();
                    let shown = b
                        .deserialize::<zbus::zvariant::Structure>()
                        .map(|s| format!("{s}"))
                        .unwrap_or_else(|_| "()".into());
                    norm(shown)
                }
                Err(zbus::Error::MethodError(name, t, _)) => {
                    norm(format!("{name}: {}", t.unwrap_or_default()))
                }
                Err(e) => format!("failed: {e}"),
            }
        };
        let d =
            |method: &str, body: &dyn DriverArgs| text(body.call(&c, DRIVER_PATH, DRIVER, method));
        let mut t = vec![
            d("RequestName", &("org.kdbus.M", 0u32)),
            d("RequestName", &("org.kdbus.M", 0u32)),
            d("RequestName", &(":1.5", 0u32)),
            d("RequestName", &("org.freedesktop.DBus", 0u32)),
            d("RequestName", &("not a name", 0u32)),
            d("RequestName", &("org.kdbus.F", 64u32)),
            text(other.call_method(
                Some(DRIVER),
                DRIVER_PATH,
                Some(DRIVER),
                "RequestName",
                &("org.kdbus.M", 4u32),
            )),
            d("ReleaseName", &("org.kdbus.Nobody",)),
            d("ReleaseName", &(":1.5",)),
            d("ReleaseName", &("not a name",)),
            d("NameHasOwner", &("org.kdbus.M",)),
            d("NameHasOwner", &("org.kdbus.Nobody",)),
            d("NameHasOwner", &(DRIVER,)),
            d("GetNameOwner", &("org.kdbus.M",)),
            d("GetNameOwner", &("org.kdbus.Nobody",)),
            d("GetNameOwner", &(DRIVER,)),
            d("GetNameOwner", &("not a name",)),
            d("ListQueuedOwners", &("org.kdbus.M",)),
            d("ListQueuedOwners", &("org.kdbus.Nobody",)),
            d("ListQueuedOwners", &(DRIVER,)),
            d("StartServiceByName", &("org.kdbus.Nobody", 0u32)),
            d("StartServiceByName", &("org.kdbus.M", 0u32)),
            d("GetConnectionUnixUser", &("org.kdbus.Nobody",)),
            d("GetConnectionUnixUser", &(them.as_str(),)),
            d("GetConnectionUnixProcessID", &(":1.999",)),
            d("GetAdtAuditSessionData", &(them.as_str(),)),
            d("GetConnectionSELinuxSecurityContext", &(them.as_str(),)),
            d("AddMatch", &("type='nonsense'",)),
            d("AddMatch", &("type='signal'",)),
            d("RemoveMatch", &("type='method_call'",)),
            d("RemoveMatch", &("type='signal'",)),
            d("RemoveMatch", &("bogus",)),
            d("Hello", &()),
            d("GetId", &(1u32,)),
            d("ReleaseName", &("org.kdbus.M",)),
            d("ReleaseName", &("org.kdbus.M",)),
            text(c.call_method(
                Some(DRIVER),
                "/",
                Some("org.freedesktop.DBus.Peer"),
                "Ping",
                &(),
            )),
        ];
        // Lists hold more than this script made (other tests' clients do not share the
        // bus, but the bus itself is listed): only what the script made is compared.
        let names = driver(&c, "ListNames", &())
            .ok()
            .and_then(|m| m.body().deserialize::<Vec<String>>().ok())
            .unwrap_or_default();
        t.push(format!(
            "ListNames has the bus {}, me {}, org.kdbus.M {}",
            names.iter().any(|n| n == DRIVER),
            names.contains(&me),
            names.iter().any(|n| n == "org.kdbus.M")
        ));
        t
    });
}

/// `Introspect` of the bus on its own path and elsewhere: which interfaces each path
/// lists and the node that leads down to the bus's own path (dbus-daemon 1.14 lists
/// only the interfaces that answer on any path off it).
#[test]
fn introspection_depends_on_the_path() {
    same(|address| {
        let c = zconn(address);
        let mut t = Vec::new();
        for path in [
            "/",
            "/org",
            "/org/freedesktop",
            "/org/freedesktop/DBus",
            "/org/x",
        ] {
            let xml = c
                .call_method(
                    Some(DRIVER),
                    path,
                    Some("org.freedesktop.DBus.Introspectable"),
                    "Introspect",
                    &(),
                )
                .ok()
                .and_then(|m| m.body().deserialize::<String>().ok())
                .unwrap_or_default();
            // What the document declares, without its layout.
            let names: Vec<&str> = xml
                .split('<')
                .filter(|e| e.starts_with("interface ") || e.starts_with("node name"))
                .map(|e| e.trim_end_matches(['>', '/', '\n', ' ']))
                .collect();
            t.push(format!("{path}: {}", names.join(" | ")));
        }
        t
    });
}

/// An eavesdropper that negotiated fd passing sees a call between others that
/// carries an fd, with the fd (it was never offered such calls before).
#[test]
fn eavesdroppers_see_calls_that_carry_fds() {
    let script = |address: &str| {
        let eaves = zconn(address);
        let inbox = Inbox::new(&eaves);
        let mut t = vec![reply_text(driver(
            &eaves,
            "AddMatch",
            &"eavesdrop='true',type='method_call',interface='org.kdbus.E'",
        ))];
        let a = zconn(address);
        diff::serve(address, &["org.kdbus.EB"]);
        let (r, _w) = rustix::pipe::pipe().expect("pipe");
        let fd = zbus::zvariant::Fd::from(&r);
        a.call_method(Some("org.kdbus.EB"), "/e", Some("org.kdbus.E"), "Take", &fd)
            .expect("the call is answered");
        let got = inbox.next_where(|m| member(m) == "Take");
        t.push(got.map_or("nothing".into(), |m| {
            let fd: Option<zbus::zvariant::OwnedFd> = m.body().deserialize().ok();
            format!(
                "{} with {} fd(s), readable: {}",
                member(&m),
                m.header().unix_fds().unwrap_or(0),
                fd.is_some()
            )
        }));
        t
    };
    both_with(
        r#"<policy context="default"><allow eavesdrop="true"/></policy>"#,
        script,
        &["ok", "Take with 1 fd(s), readable: true"],
    );
}
