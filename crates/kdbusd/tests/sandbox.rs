//! A sandbox's endpoint, from inside: an unprivileged client (`nobody`, a child
//! process of this test that `setpriv` dropped) on a custom endpoint whose policy
//! grants one name sees and calls only that name, and hears nothing of anything
//! else on the bus: no names, no connections coming and going, no broadcasts of
//! peers it may not see. The granted service's broadcast is the positive control.
//!
//! Needs root (to make the endpoint and drop to `nobody`) and setpriv.

mod common;
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
    let grants = [Grant {
        name: GRANTED.into(),
        level: 1, // TALK
    }];
    let ep = ok(EndpointOwner::make(
        &bus.endpoint,
        &format!("{}-app", uid()),
        make_flags::ACCESS_WORLD,
        &grants,
    ));
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "sandbox_helper",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, &ep.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv");
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.find("SANDBOX ").map(|i| l[i + 8..].to_owned()));
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

fn bus_bloom(c: &Connection) -> abi::BloomParameter {
    c.bloom()
}
