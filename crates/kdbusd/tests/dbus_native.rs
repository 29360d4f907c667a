//! D-Bus peers (zbus) and native kdbus peers on one bus: calls both ways, signals both
//! ways, shared unique names. A native message whose payload (type
//! `KDBUS_PAYLOAD_DBUS`) is a complete D-Bus message is what D-Bus peers see; a D-Bus
//! peer's message reaches a native peer as such a payload, its header carrying the
//! sender `:1.<id>` the bus vouches for. Native cookies are D-Bus serials.

mod common;
#[path = "common/zbus_peer.rs"]
mod zbus_peer;
use common::*;
use kdbus::bloom::{match_mask, signal_filter, MatchSpec, SignalSpec};
use kdbus::dbus::header::{self, write_fields, Fields, Header, MessageType};
use kdbus::dbus::marshal::{Endian, Reader, Writer};
use kdbus::{Connection, MatchRule, Message, Received};
use zbus_peer::*;

use zbus::blocking::{Connection as ZConn, MessageIterator};
use zbus::message::Type as MsgType;

const PATH: &str = "/org/example/Obj";
const IFACE: &str = "org.example.Iface";

// ------------------------------------------------------------------ zbus side

/// The native id behind a unique name `:1.N`.
fn id_of(unique: &str) -> u64 {
    unique
        .strip_prefix(":1.")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{unique} is not :1.<id>"))
}

fn request_name(c: &ZConn, name: &str) {
    let r = c
        .call_method(
            Some(DRIVER),
            DRIVER_PATH,
            Some(DRIVER),
            "RequestName",
            &(name, 4u32),
        )
        .expect("RequestName");
    assert_eq!(r.body().deserialize::<u32>().unwrap(), 1, "own {name}");
}

/// A zbus service answering in a thread: `Echo(s)` → `"echo: <s>"`, `WhoCalls()` →
/// the caller's unique name, `Fail(s)` → error `org.example.Error.Custom`. Returns its
/// unique name.
fn spawn_zbus_service(b: &Broker, name: Option<&str>) -> String {
    let c = zconn(b);
    let it = MessageIterator::from(&c);
    if let Some(n) = name {
        request_name(&c, n);
    }
    let me = unique(&c);
    std::thread::spawn(move || {
        for m in it.flatten() {
            if m.message_type() != MsgType::MethodCall {
                continue;
            }
            let h = m.header();
            let s: String = m.body().deserialize().unwrap_or_default();
            let r = match member(&m).as_str() {
                "Echo" => c.reply(&h, &format!("echo: {s}")),
                "WhoCalls" => c.reply(&h, &sender(&m)),
                "Fail" => c.reply_error(&h, "org.example.Error.Custom", &s),
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
    });
    me
}

// ------------------------------------------------------------------ native side

/// A complete D-Bus message (little endian) with a body of string arguments.
fn dbus_message(t: MessageType, serial: u32, f: Fields<'_>, args: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    {
        let mut w = Writer::new(&mut body, Endian::Little);
        for a in args {
            w.string(a);
        }
    }
    let sig = "s".repeat(args.len());
    let flags = if t == MessageType::MethodCall {
        0
    } else {
        header::FLAG_NO_REPLY_EXPECTED
    };
    let mut out = Vec::new();
    write_fields(
        &mut out,
        Endian::Little,
        t,
        flags,
        body.len() as u32,
        serial,
        &Fields {
            signature: &sig,
            ..f
        },
    );
    out.extend_from_slice(&body);
    out
}

/// The D-Bus message a native peer received, parsed, with its string arguments.
fn parse_payload(payload: &[u8]) -> (Header<'_>, Vec<String>) {
    let h = header::parse(payload).expect("the payload is a D-Bus message");
    assert!(h.total_len() <= payload.len(), "truncated D-Bus payload");
    let mut r = Reader::new(&payload[h.header_len..h.total_len()], h.endian);
    let mut args = Vec::new();
    for c in h.signature.chars() {
        assert_eq!(c, 's', "only string arguments expected here");
        args.push(r.string().expect("a string argument").to_string());
    }
    (h, args)
}

fn next(c: &Connection) -> Received<'_> {
    ok(c.recv_timeout(Some(SOON)))
}

// ------------------------------------------------------------------ calls

/// zbus calls a native service, by unique and by well-known name; the native service
/// answers with a METHOD_RETURN payload (and once with an ERROR).
#[test]
fn zbus_calls_a_native_service() {
    let b = Broker::start();
    let native = b.conn();
    ok(native.acquire_name("org.example.Native", 0));
    let z = zconn(&b);
    let zname = unique(&z);
    let native_unique = format!(":1.{}", native.id());
    for (i, dest) in [native_unique.as_str(), "org.example.Native"]
        .into_iter()
        .enumerate()
    {
        let zc = z.clone();
        let d = dest.to_string();
        let call = std::thread::spawn(move || {
            zc.call_method(Some(d.as_str()), PATH, Some(IFACE), "Greet", &"from zbus")
        });
        let m = next(&native);
        assert_eq!(m.src_id(), id_of(&zname));
        assert!(m.expects_reply());
        let payload = m.payload_bytes();
        let (h, args) = parse_payload(&payload);
        assert_eq!(h.msg_type, MessageType::MethodCall);
        assert_eq!(h.member, Some("Greet"));
        assert_eq!(h.interface, Some(IFACE));
        assert_eq!(h.path, Some(PATH));
        assert_eq!(h.destination, Some(dest));
        assert_eq!(h.sender, Some(zname.as_str()));
        assert_eq!(m.cookie(), h.serial as u64, "cookie = D-Bus serial");
        assert_eq!(args, vec!["from zbus".to_string()]);
        // The answer: a D-Bus METHOD_RETURN as a kdbus reply.
        let reply_serial = 100 + i as u32;
        let reply = dbus_message(
            MessageType::MethodReturn,
            reply_serial,
            Fields {
                reply_serial: Some(h.serial),
                destination: Some(&zname),
                ..Default::default()
            },
            &["hello from native"],
        );
        ok(native.send(
            &Message::to(m.src_id())
                .cookie(reply_serial as u64)
                .reply_to(m.cookie())
                .payload(&reply),
        ));
        let r = call
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("call to {dest}: {e}"));
        assert_eq!(r.message_type(), MsgType::MethodReturn);
        assert_eq!(sender(&r), native_unique);
        assert_eq!(
            r.body().deserialize::<String>().unwrap(),
            "hello from native"
        );
    }

    // An ERROR payload arrives at zbus as that error.
    let zc = z.clone();
    let call = std::thread::spawn(move || {
        zc.call_method(Some("org.example.Native"), PATH, Some(IFACE), "Boom", &())
    });
    let m = next(&native);
    let payload = m.payload_bytes();
    let (h, _) = parse_payload(&payload);
    assert_eq!(h.member, Some("Boom"));
    let err = dbus_message(
        MessageType::Error,
        200,
        Fields {
            reply_serial: Some(h.serial),
            error_name: Some("org.example.Error.Native"),
            destination: Some(&zname),
            ..Default::default()
        },
        &["native says no"],
    );
    ok(native.send(
        &Message::to(m.src_id())
            .cookie(200)
            .reply_to(m.cookie())
            .payload(&err),
    ));
    match call.join().unwrap() {
        Err(zbus::Error::MethodError(name, text, _)) => {
            assert_eq!(name.as_str(), "org.example.Error.Native");
            assert_eq!(text.as_deref(), Some("native says no"));
        }
        other => panic!("expected org.example.Error.Native, got {other:?}"),
    }
}

/// A native client calls a zbus service: METHOD_CALL payload, cookie = serial,
/// `call()` waits for the reply, whose payload is the D-Bus METHOD_RETURN.
#[test]
fn native_calls_a_zbus_service() {
    let b = Broker::start();
    let svc = spawn_zbus_service(&b, Some("org.example.ZService"));
    let native = b.conn();
    let me = format!(":1.{}", native.id());
    let mut serial = 10u32;
    for dest in [svc.as_str(), "org.example.ZService"] {
        for (member, arg, want) in [
            ("Echo", "ping", "echo: ping".to_string()),
            ("WhoCalls", "", me.clone()),
        ] {
            serial += 1;
            let args: &[&str] = if arg.is_empty() { &[] } else { &[arg] };
            let call = dbus_message(
                MessageType::MethodCall,
                serial,
                Fields {
                    path: Some(PATH),
                    interface: Some(IFACE),
                    member: Some(member),
                    destination: Some(dest),
                    ..Default::default()
                },
                args,
            );
            let msg = if dest.starts_with(':') {
                Message::to(id_of(dest))
            } else {
                Message::to_name(dest)
            };
            let r = ok(native.call(msg.cookie(serial as u64).payload(&call), SOON));
            assert_eq!(r.src_id(), id_of(&svc));
            assert_eq!(r.cookie_reply(), serial as u64);
            let payload = r.payload_bytes();
            let (h, args) = parse_payload(&payload);
            assert_eq!(h.msg_type, MessageType::MethodReturn, "{dest} {member}");
            assert_eq!(h.reply_serial, Some(serial));
            assert_eq!(h.sender, Some(svc.as_str()));
            assert_eq!(args, vec![want]);
        }
    }

    // An error reply arrives as an ERROR payload.
    serial += 1;
    let call = dbus_message(
        MessageType::MethodCall,
        serial,
        Fields {
            path: Some(PATH),
            interface: Some(IFACE),
            member: Some("Fail"),
            destination: Some("org.example.ZService"),
            ..Default::default()
        },
        &["bad"],
    );
    let r = ok(native.call(
        Message::to_name("org.example.ZService")
            .cookie(serial as u64)
            .payload(&call),
        SOON,
    ));
    let payload = r.payload_bytes();
    let (h, args) = parse_payload(&payload);
    assert_eq!(h.msg_type, MessageType::Error);
    assert_eq!(h.error_name, Some("org.example.Error.Custom"));
    assert_eq!(h.reply_serial, Some(serial));
    assert_eq!(args, vec!["bad".to_string()]);
}

// ------------------------------------------------------------------ signals

/// A zbus broadcast reaches a native subscriber whose bloom mask asks for member `X`
/// (sd-bus's convention, computed by the bus from the D-Bus header).
#[test]
fn zbus_signal_reaches_a_native_subscriber() {
    let b = Broker::start();
    let native = b.conn();
    let mask = match_mask(
        native.bloom(),
        &MatchSpec {
            member: Some("X"),
            ..Default::default()
        },
    )
    .expect("a member rule has a mask");
    ok(native.add_match(1, &MatchRule::new().bloom(&mask), false));
    let z = zconn(&b);
    let zname = unique(&z);
    z.emit_signal(
        None::<&str>,
        "/org/example/S",
        "org.example.Sig",
        "Y",
        &"no",
    )
    .unwrap();
    z.emit_signal(
        None::<&str>,
        "/org/example/S",
        "org.example.Sig",
        "X",
        &"yes",
    )
    .unwrap();
    // Y does not pass the mask: X is the first thing the native peer sees.
    let m = next(&native);
    assert_eq!(m.src_id(), id_of(&zname));
    assert_eq!(m.dst_id(), kdbus::abi::DST_ID_BROADCAST);
    assert_eq!(m.header().payload_type, kdbus::abi::payload::DBUS);
    let payload = m.payload_bytes();
    let (h, args) = parse_payload(&payload);
    assert_eq!(h.msg_type, MessageType::Signal);
    assert_eq!(h.member, Some("X"));
    assert_eq!(h.interface, Some("org.example.Sig"));
    assert_eq!(h.path, Some("/org/example/S"));
    assert_eq!(h.sender, Some(zname.as_str()));
    assert_eq!(h.destination, None);
    assert_eq!(args, vec!["yes".to_string()]);
}

/// The bus's filter of a D-Bus signal carries the arguments too (arg0 in the mask).
#[test]
fn zbus_signal_arg0_reaches_a_native_subscriber() {
    let b = Broker::start();
    let native = b.conn();
    let mask = match_mask(
        native.bloom(),
        &MatchSpec {
            interface: Some("org.example.Sig"),
            args: &[(0, "wanted")],
            ..Default::default()
        },
    )
    .unwrap();
    ok(native.add_match(1, &MatchRule::new().bloom(&mask), false));
    let z = zconn(&b);
    for a in ["other", "wanted"] {
        z.emit_signal(None::<&str>, "/org/example/S", "org.example.Sig", "Ev", &a)
            .unwrap();
    }
    let m = next(&native);
    let payload = m.payload_bytes();
    let (_, args) = parse_payload(&payload);
    assert_eq!(args, vec!["wanted".to_string()]);
}

/// A native broadcast (bloom filter by sd-bus's convention, D-Bus SIGNAL payload)
/// reaches a zbus peer whose AddMatch rule takes it, and only then.
#[test]
fn native_broadcast_reaches_a_zbus_subscriber() {
    let b = Broker::start();
    let z = zconn(&b);
    let inbox = Inbox::new(&z);
    add_match(
        &z,
        "type='signal',interface='org.example.Native',member='Tick'",
    );
    add_match(
        &z,
        "type='signal',interface='org.example.Native',member='Arg',arg0='x'",
    );
    let native = b.conn();
    let me = format!(":1.{}", native.id());
    let mut serial = 0;
    let mut broadcast = |member: &str, arg: &str| {
        serial += 1;
        let path = "/org/example/N";
        let sig = dbus_message(
            MessageType::Signal,
            serial,
            Fields {
                path: Some(path),
                interface: Some("org.example.Native"),
                member: Some(member),
                ..Default::default()
            },
            &[arg],
        );
        let filter = signal_filter(
            native.bloom(),
            &SignalSpec {
                interface: Some("org.example.Native"),
                member: Some(member),
                path: Some(path),
                args: &[Some(arg)],
            },
        );
        ok(native.send(
            &Message::broadcast(&filter)
                .cookie(serial as u64)
                .payload(&sig),
        ));
    };
    broadcast("Tack", "no");
    broadcast("Arg", "y");
    broadcast("Tick", "tock");
    broadcast("Arg", "x");
    let m = inbox.signal("org.example.Native");
    assert_eq!(member(&m), "Tick");
    assert_eq!(sender(&m), me);
    assert!(m.header().destination().is_none());
    assert_eq!(
        m.header().path().map(|p| p.to_string()).as_deref(),
        Some("/org/example/N")
    );
    assert_eq!(m.body().deserialize::<String>().unwrap(), "tock");
    let m = inbox.signal("org.example.Native");
    assert_eq!(member(&m), "Arg");
    assert_eq!(m.body().deserialize::<String>().unwrap(), "x");
}

// ------------------------------------------------------------------ names

#[test]
fn unique_names_are_shared() {
    let b = Broker::start();
    let native = b.conn();
    let n = format!(":1.{}", native.id());
    let z = zconn(&b);
    let zname = unique(&z);
    let p = proxy(&z);

    // The native peer in the D-Bus view.
    let names: Vec<String> = p
        .list_names()
        .unwrap()
        .into_iter()
        .map(|x| x.to_string())
        .collect();
    assert!(names.contains(&n), "{n} missing from {names:?}");
    assert!(names.contains(&zname), "{zname} missing from {names:?}");
    assert!(p.name_has_owner(n.as_str().try_into().unwrap()).unwrap());
    assert_eq!(
        p.get_connection_unix_process_id(n.as_str().try_into().unwrap())
            .unwrap(),
        std::process::id()
    );
    assert_eq!(
        p.get_connection_unix_user(n.as_str().try_into().unwrap())
            .unwrap(),
        uid()
    );

    // Names a native peer owns are D-Bus names.
    ok(native.acquire_name("org.example.NativeName", 0));
    assert_eq!(
        p.get_name_owner("org.example.NativeName".try_into().unwrap())
            .unwrap()
            .to_string(),
        n
    );
    let names: Vec<String> = p
        .list_names()
        .unwrap()
        .into_iter()
        .map(|x| x.to_string())
        .collect();
    assert!(names.iter().any(|x| x == "org.example.NativeName"));

    // The D-Bus peer in the native view: its id, its names.
    let zid = id_of(&zname);
    assert_eq!(ok(native.info(zid, 0)).id, zid);
    request_name(&z, "org.example.ZName");
    assert_eq!(ok(native.info_by_name("org.example.ZName", 0)).id, zid);
    let listed: Vec<u64> = ok(native.list(kdbus::abi::list_flags::UNIQUE))
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert!(listed.contains(&zid), "{zid} missing from {listed:?}");

    // One queue for both kinds: a D-Bus peer queues behind the native owner.
    let z2 = zconn(&b);
    let r = z2
        .call_method(
            Some(DRIVER),
            DRIVER_PATH,
            Some(DRIVER),
            "RequestName",
            &("org.example.NativeName", 0u32),
        )
        .unwrap();
    assert_eq!(r.body().deserialize::<u32>().unwrap(), 2, "IN_QUEUE");
    let q: Vec<String> = p
        .list_queued_owners("org.example.NativeName".try_into().unwrap())
        .unwrap()
        .into_iter()
        .map(|x| x.to_string())
        .collect();
    assert_eq!(q, vec![n.clone(), unique(&z2)]);

    // The native peer leaves: its unique name goes, its name passes on.
    drop(native);
    assert!(wait_until(SOON, || !p
        .name_has_owner(n.as_str().try_into().unwrap())
        .unwrap()));
    assert_eq!(
        p.get_name_owner("org.example.NativeName".try_into().unwrap())
            .unwrap()
            .to_string(),
        unique(&z2)
    );
}

/// A native peer leaving is seen by D-Bus peers as NameOwnerChanged of its unique name.
/// Only the header is checked here (the driver's NameOwnerChanged body is covered in
/// dbus_zbus).
#[test]
fn native_peer_leaving_is_name_owner_changed() {
    let b = Broker::start();
    let z = zconn(&b);
    let inbox = Inbox::new(&z);
    let native = b.conn();
    let n = format!(":1.{}", native.id());
    add_match(
        &z,
        &format!("type='signal',sender='{DRIVER}',member='NameOwnerChanged',arg0='{n}'"),
    );
    drop(native);
    let m = inbox
        .next_where(|m| m.message_type() == MsgType::Signal && member(m) == "NameOwnerChanged")
        .expect("NameOwnerChanged for the native peer");
    assert_eq!(sender(&m), DRIVER);
    let bytes = m.data().bytes();
    assert!(
        bytes.windows(n.len()).any(|w| w == n.as_bytes()),
        "the signal is about {n}"
    );
}

// ------------------------------------------------------------------ one policy

/// A bus started from a configuration judges native peers by its `<policy>` too: a
/// native client cannot call what a D-Bus client may not, and a payload the bus
/// cannot read as D-Bus does not slip past a rule about interfaces.
#[test]
fn the_configured_policy_binds_native_peers_too() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            "<busconfig><type>session</type><listen>unix:path={}/dbus-sock</listen>\
             <policy context=\"default\"><allow send_destination=\"*\"/>\
             <allow receive_type=\"*\"/><allow own=\"*\"/>\
             <deny send_destination=\"org.example.ZService\" send_interface=\"org.example.Secret\"/>\
             </policy></busconfig>",
            dir.path().display()
        ),
    )
    .unwrap();
    let rt = dir.path().join("rt");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kdbusd"))
        .arg(format!("--config-file={}", conf.display()))
        .arg("--runtime-dir")
        .arg(&rt)
        .args(["--nofork", "--print-address"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut address = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut address,
    )
    .unwrap();
    let _kill = KillOnDrop(child);
    let svc = zbus::blocking::connection::Builder::address(address.trim())
        .unwrap()
        .build()
        .unwrap();
    request_name(&svc, "org.example.ZService");
    let it = MessageIterator::from(&svc);
    std::thread::spawn(move || {
        for m in it.flatten() {
            if m.message_type() == MsgType::MethodCall && svc.reply(&m.header(), &"ok").is_err() {
                return;
            }
        }
    });
    let bus = rt.join(format!("{}-session", uid())).join("bus");
    let native = ok(Connection::hello(&bus, &test_hello()));
    let call = |serial: u32, iface: &str| {
        let m = dbus_message(
            MessageType::MethodCall,
            serial,
            Fields {
                path: Some(PATH),
                interface: Some(iface),
                member: Some("M"),
                destination: Some("org.example.ZService"),
                ..Default::default()
            },
            &[],
        );
        native
            .call(
                Message::to_name("org.example.ZService")
                    .cookie(serial as u64)
                    .payload(&m),
                SOON,
            )
            .map(|r| r.cookie_reply())
    };
    assert_eq!(ok(call(1, "org.example.Public")), 1);
    assert_eq!(errno(call(2, "org.example.Secret")), kdbus::Errno::EPERM);
    // Not a D-Bus message: a rule about interfaces cannot be judged, so it denies.
    let opaque = native.call(
        Message::to_name("org.example.ZService")
            .cookie(3)
            .payload(b"not a D-Bus message at all"),
        SOON,
    );
    assert_eq!(errno(opaque), kdbus::Errno::EPERM);
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `Debug.Stats` shows, beside dbus-daemon's numbers, what people chasing a
/// `LimitsExceeded` need: a native connection's pool, a D-Bus peer's stream quota.
#[test]
fn connection_stats_show_pools_and_stream_quotas() {
    use std::collections::HashMap;
    use zbus::zvariant::OwnedValue;
    let b = Broker::start();
    let native = b.conn();
    let z = zconn(&b);
    let stats = |name: &str| -> HashMap<String, OwnedValue> {
        z.call_method(
            Some(DRIVER),
            DRIVER_PATH,
            Some("org.freedesktop.DBus.Debug.Stats"),
            "GetConnectionStats",
            &(name,),
        )
        .expect("GetConnectionStats")
        .body()
        .deserialize()
        .expect("a{sv}")
    };
    let n = stats(&format!(":1.{}", native.id()));
    let num = |d: &HashMap<String, OwnedValue>, k: &str| -> u64 {
        let v = d.get(k).unwrap_or_else(|| panic!("no {k} in {d:?}"));
        u64::try_from(v)
            .or_else(|_| u32::try_from(v).map(u64::from))
            .unwrap_or_else(|_| panic!("{k} is not a number"))
    };
    assert_eq!(num(&n, "PoolSize"), native.pool().len() as u64);
    assert!(num(&n, "PoolTouchedBytes") >= 4096);
    assert_eq!(num(&n, "QueuedMessages"), 0);
    let me = unique(&z);
    let d = stats(&me);
    assert_eq!(num(&d, "QuotaBytes"), 256 << 20);
    assert_eq!(num(&d, "QuotaFDs"), 256);
    assert!(d.contains_key("OutgoingBySender"));
}

/// A native sender's D-Bus payload whose body breaks its signature (a string without
/// its terminating NUL) is refused with EBADMSG before a D-Bus peer sees it; the peer
/// stays connected and answers the next, valid call.
#[test]
fn a_native_payload_that_breaks_its_signature_is_refused() {
    let b = Broker::start();
    let svc = spawn_zbus_service(&b, Some("org.example.ZCheck"));
    let native = b.conn();
    let call = |serial: u32| {
        dbus_message(
            MessageType::MethodCall,
            serial,
            Fields {
                path: Some(PATH),
                interface: Some(IFACE),
                member: Some("Echo"),
                destination: Some("org.example.ZCheck"),
                ..Default::default()
            },
            &["ping"],
        )
    };
    let mut bad = call(1);
    let last = bad.len() - 1;
    bad[last] = b'x';
    let r = native.call(
        Message::to_name("org.example.ZCheck")
            .cookie(1)
            .payload(&bad),
        SOON,
    );
    assert_eq!(r.err().map(|e| e.errno()), Some(kdbus::abi::Errno::EBADMSG));
    let r = ok(native.call(
        Message::to_name("org.example.ZCheck")
            .cookie(2)
            .payload(&call(2)),
        SOON,
    ));
    assert_eq!(r.src_id(), id_of(&svc));
    let payload = r.payload_bytes();
    assert_eq!(parse_payload(&payload).1, vec!["echo: ping".to_string()]);
}
