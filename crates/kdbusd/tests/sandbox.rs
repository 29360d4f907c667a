//! A sandbox's endpoint, from inside: an unprivileged client (`nobody`, a child
//! process of this test that `setpriv` dropped) on a custom endpoint whose policy
//! grants one name sees and calls only that name, and hears nothing of anything
//! else on the bus: no names, no connections coming and going, no broadcasts of
//! peers it may not see. The granted service's broadcast is the positive control.
//!
//! Needs root (to make the endpoint and drop to `nobody`) and setpriv.

mod common;
#[path = "common/diff.rs"]
mod diff;
use common::*;
use kdbus::abi::{self, list_flags, make_flags, name_flags};
use kdbus::bloom::Bloom;
use kdbus::{Connection, EndpointOwner, Grant, HelloOptions, MatchRule, Message};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const HELPER_ENV: &str = "KDBUS_SANDBOX_HELPER";
const GRANTED: &str = "org.example.Granted";
const HIDDEN: &str = "org.example.Hidden";

/// The sandboxed side, run as `nobody`: prints what it sees, one `SANDBOX` line each.
#[test]
fn sandbox_helper() {
    let Ok(endpoint) = std::env::var(HELPER_ENV) else {
        return;
    };
    let c = ok(Connection::hello(&endpoint, &test_hello()));
    let names: Vec<String> = ok(c.list(list_flags::NAMES))
        .into_iter()
        .flat_map(|i| i.names.into_iter().map(|(n, _)| n))
        .collect();
    println!("SANDBOX names={}", names.join(","));
    let granted = ok(c.info_by_name(GRANTED, 0)).id;
    let r = c.call(
        Message::to_name(GRANTED).cookie(1).payload(b"ping"),
        Duration::from_secs(10),
    );
    println!("SANDBOX call={}", if r.is_ok() { "ok" } else { "failed" });
    let hidden = c.send(&Message::to_name(HIDDEN).cookie(2).payload(b"ping"));
    println!("SANDBOX hidden={:?}", hidden.err().map(|e| e.to_string()));
    // Everything there is to hear: all broadcasts, all notifications.
    ok(c.add_match(1, &MatchRule::new(), false));
    println!("SANDBOX ready");
    let mut heard = Vec::new();
    loop {
        match c.recv_timeout(Some(Duration::from_secs(10))) {
            Ok(m) if m.src_id() == granted && m.payload_bytes() == b"granted" => break,
            Ok(m) => heard.push(format!("{}:{:?}", m.src_id(), m.kernel_item())),
            Err(e) => {
                heard.push(format!("error {e}"));
                break;
            }
        }
    }
    println!("SANDBOX heard={}", heard.join(","));
}

#[test]
fn a_sandboxed_user_sees_and_calls_only_the_granted_name() {
    if !root_or_skip("to drop to nobody") {
        return;
    }
    let b = Broker::start();
    b.open_to_other_users();
    let bus = b.make_bus("sandbox-bus", make_flags::ACCESS_WORLD);
    let conn = || ok(Connection::hello(&bus.endpoint, &test_hello()));
    // The bus's own policy lets everyone talk to the service (and to the hidden one:
    // only the endpoint hides it).
    let holder = |name: &str| {
        let opts = HelloOptions::new().policy_holder(name).world_access(1);
        ok(Connection::hello(&bus.endpoint, &opts))
    };
    let _holders = [holder(GRANTED), holder(HIDDEN)];
    let granted = conn();
    ok(granted.acquire_name(GRANTED, name_flags::ALLOW_REPLACEMENT));
    let hidden = conn();
    ok(hidden.acquire_name(HIDDEN, 0));
    let ep = granted_endpoint(&bus.endpoint, "app");
    let (mut child, mut lines) = as_nobody("sandbox_helper", HELPER_ENV, ep.path.as_os_str());
    // What it sees first; then answer its call, and wait until it listens.
    let mut said: Vec<String> = lines.by_ref().take(1).collect();
    assert_eq!(said.len(), 1, "the sandboxed client said nothing");
    let Ok(m) = granted.recv_timeout(Some(SOON)) else {
        said.extend(lines);
        panic!("no call from the sandbox: {said:?}");
    };
    ok(granted.send(
        &Message::to(m.src_id())
            .reply_to(m.cookie())
            .payload(b"pong"),
    ));
    drop(m);
    for l in lines.by_ref() {
        let ready = l == "ready";
        said.push(l);
        if ready {
            break;
        }
    }
    // What it must not hear: a hidden peer's broadcast, names and connections coming
    // and going.
    let filter = Bloom::new(bus_bloom(&granted));
    ok(hidden.send(&Message::broadcast(&filter).payload(b"hidden")));
    let other = conn();
    ok(other.acquire_name("org.example.Other", 0));
    ok(other.release_name("org.example.Other"));
    drop(other);
    ok(hidden.release_name(HIDDEN));
    // What it must hear, last: the granted service's broadcast.
    ok(granted.send(&Message::broadcast(&filter).payload(b"granted")));
    said.extend(lines);
    let _ = child.stdin.take().map(|mut s| s.write_all(b"\n"));
    let status = child.wait().unwrap();
    assert!(status.success(), "{said:?}");
    assert_eq!(
        said,
        [
            format!("names={GRANTED}"),
            "call=ok".to_string(),
            "hidden=Some(\"kdbus: ESRCH (3)\")".to_string(),
            "ready".to_string(),
            "heard=".to_string(),
        ]
    );
}

/// A custom endpoint `<uid>-<suffix>` of the bus at `bus`, open to everyone, whose
/// policy grants TALK on `GRANTED` alone.
fn granted_endpoint(bus: &std::path::Path, suffix: &str) -> EndpointOwner {
    let grants = [Grant {
        name: GRANTED.into(),
        level: 1, // TALK
    }];
    ok(EndpointOwner::make(
        bus,
        &format!("{}-{suffix}", uid()),
        make_flags::ACCESS_WORLD,
        &grants,
    ))
}

/// Run this binary's `test` as `nobody` (through `setpriv`), told `value` in `env`:
/// the child, and what it says on its `SANDBOX` lines.
fn as_nobody(
    test: &str,
    env: &str,
    value: &std::ffi::OsStr,
) -> (std::process::Child, impl Iterator<Item = String>) {
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(env, value)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv");
    let lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.find("SANDBOX ").map(|i| l[i + 8..].to_owned()));
    (child, lines)
}

fn bus_bloom(c: &Connection) -> abi::BloomParameter {
    c.bloom()
}

const DBUS_HELPER_ENV: &str = "KDBUS_DBUS_SANDBOX_HELPER";

/// The sandboxed side speaking D-Bus, run as `nobody` on the endpoint's D-Bus socket:
/// prints what it sees, one `SANDBOX` line each.
#[test]
fn dbus_sandbox_helper() {
    use zbus::message::Type;
    let Ok(path) = std::env::var(DBUS_HELPER_ENV) else {
        return;
    };
    let c = zbus::blocking::connection::Builder::address(format!("unix:path={path}").as_str())
        .and_then(|b| b.method_timeout(Duration::from_secs(10)).build())
        .expect("the sandbox connects");
    let it = zbus::blocking::MessageIterator::from(&c);
    let me = c.unique_name().map(|u| u.to_string()).unwrap_or_default();
    let driver = |method: &str, arg: &str| {
        c.call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            method,
            &arg,
        )
    };
    let error = |e: zbus::Error| match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("failed: {other}"),
    };
    let names: Vec<String> = c
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "ListNames",
            &(),
        )
        .ok()
        .and_then(|m| m.body().deserialize().ok())
        .unwrap_or_default();
    let mut known: Vec<&String> = names.iter().filter(|n| !n.starts_with(':')).collect();
    known.sort();
    let others = names.iter().filter(|n| n.starts_with(':') && **n != me);
    println!(
        "SANDBOX names={} uniques={}",
        known
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(","),
        others.count()
    );
    let call = |dest: &str| {
        c.call_method(Some(dest), "/", Some("org.example.S"), "Ping", &())
            .map(|m| m.body().deserialize::<String>().unwrap_or_default())
            .unwrap_or_else(error)
    };
    println!("SANDBOX call={}", call(GRANTED));
    println!("SANDBOX hidden={}", call(HIDDEN));
    let owner = driver("GetNameOwner", HIDDEN).map_or_else(error, |_| "known".into());
    println!("SANDBOX owner={owner}");
    let matched: Vec<String> = ["type='signal'", "eavesdrop='true'"]
        .iter()
        .map(|r| driver("AddMatch", r).map_or_else(error, |_| "ok".into()))
        .collect();
    println!("SANDBOX match={}", matched.join(","));
    println!("SANDBOX ready");
    let mut heard = Vec::new();
    for m in it.flatten() {
        let h = m.header();
        let member = h.member().map(|m| m.to_string()).unwrap_or_default();
        let about_me = m.body().deserialize::<String>().is_ok_and(|a| a == me);
        if m.message_type() == Type::Signal && member == "Granted" {
            break;
        }
        // Its own: the answers to its calls, the bus's word about its unique name.
        let reply = matches!(m.message_type(), Type::MethodReturn | Type::Error);
        if reply || (matches!(member.as_str(), "NameAcquired" | "NameLost") && about_me) {
            continue;
        }
        heard.push(format!("{:?} {member}", m.message_type()));
    }
    println!("SANDBOX heard={}", heard.join(","));
}

/// The same sandbox for a D-Bus program: through the endpoint's D-Bus socket
/// (`<endpoint>.dbus`), `nobody` sees and calls only the granted name, owns and
/// watches nothing else, and hears no signal, name change or call of anyone it may
/// not see; the granted service's signal is the positive control.
#[test]
fn a_sandboxed_dbus_program_sees_and_calls_only_the_granted_name() {
    use zbus::blocking::MessageIterator;
    if !root_or_skip("to drop to nobody") {
        return;
    }
    let b = Broker::start();
    b.open_to_other_users();
    let bus = b.make_bus("dbus-sandbox", make_flags::ACCESS_WORLD);
    let dbus = format!(
        "unix:path={}",
        bus.endpoint.with_file_name("dbus").display()
    );
    let zconn = || diff::zconn(&dbus);
    // The granted service answers Ping; the hidden one is only there.
    let granted = zconn();
    let it = MessageIterator::from(&granted);
    diff::request_name(&granted, GRANTED);
    let g = granted.clone();
    std::thread::spawn(move || {
        for m in it.flatten() {
            let member = m.header().member().map(|m| m.to_string());
            if m.message_type() == zbus::message::Type::MethodCall
                && member.as_deref() == Some("Ping")
            {
                let _ = g.reply(&m.header(), &"pong");
            }
        }
    });
    let hidden = zconn();
    diff::request_name(&hidden, HIDDEN);
    let ep = granted_endpoint(&bus.endpoint, "dbusapp");
    let dbus_socket = format!("{}.dbus", ep.path.display());
    let (mut child, mut lines) =
        as_nobody("dbus_sandbox_helper", DBUS_HELPER_ENV, dbus_socket.as_ref());
    let mut said = Vec::new();
    for l in lines.by_ref() {
        let ready = l == "ready";
        said.push(l);
        if ready {
            break;
        }
    }
    // What it must not hear: the hidden peer's signal and its call to the granted
    // service, names and connections coming and going.
    hidden
        .emit_signal(None::<&str>, "/", "org.example.S", "Hidden", &())
        .expect("emit");
    let _ = hidden.call_method(Some(GRANTED), "/", Some("org.example.S"), "Ping", &());
    let other = zconn();
    diff::request_name(&other, "org.example.Other");
    drop(other);
    hidden
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "ReleaseName",
            &HIDDEN,
        )
        .expect("ReleaseName");
    // What it must hear, last.
    granted
        .emit_signal(None::<&str>, "/", "org.example.S", "Granted", &())
        .expect("emit");
    said.extend(lines);
    let status = child.wait().unwrap();
    assert!(status.success(), "{said:?}");
    assert_eq!(
        said,
        [
            format!("names={GRANTED},org.freedesktop.DBus uniques=1"),
            "call=pong".to_string(),
            "hidden=org.freedesktop.DBus.Error.ServiceUnknown".to_string(),
            "owner=org.freedesktop.DBus.Error.NameHasNoOwner".to_string(),
            "match=ok,ok".to_string(),
            "ready".to_string(),
            "heard=".to_string(),
        ]
    );
}
