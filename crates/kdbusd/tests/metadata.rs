//! Metadata taken when a message is sent, not when its sender connected: a process
//! that renames itself between two messages is reported with its new `PID_COMM` in the
//! second; one that is gone is never reported with what another process's pid shows.

mod common;
use common::*;
use kdbus::abi::{attach, item};
use kdbus::{Connection, Message};
use std::process::Command;

const CHILD_ENV: &str = "KDBUS_METADATA_CHILD";

/// The sending side (a process of its own): connects, sends "before", renames itself,
/// sends "after".
#[test]
fn metadata_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (bus, dst) = spec.split_once('|').expect("bus|id");
    let c = ok(Connection::hello(bus, &test_hello()));
    let dst: u64 = dst.parse().expect("an id");
    ok(c.send(&Message::to(dst).cookie(1).payload(b"before")));
    // The process's name (its main thread's, which /proc/self/comm is): what
    // PR_SET_NAME on the main thread sets.
    std::fs::write("/proc/self/comm", "renamed-by-test").expect("rename");
    ok(c.send(&Message::to(dst).cookie(2).payload(b"after")));
}

fn comm_of(m: &kdbus::Received<'_>) -> String {
    let raw = m.item(item::PID_COMM).unwrap_or(&[]);
    String::from_utf8_lossy(raw)
        .trim_end_matches('\0')
        .to_string()
}

#[test]
fn a_process_that_renames_itself_is_reported_with_its_new_name() {
    let b = Broker::start();
    let rx = ok(Connection::hello(
        &b.bus,
        &test_hello().attach_recv(attach::PID_COMM | attach::TID_COMM | attach::CMDLINE),
    ));
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["metadata_child", "--exact", "--test-threads=1"])
        .env(CHILD_ENV, format!("{}|{}", b.bus.display(), rx.id()))
        .status()
        .expect("the child runs");
    assert!(status.success());
    let first = ok(rx.recv_timeout(Some(SOON)));
    assert_eq!(first.payload_bytes(), b"before");
    let before = comm_of(&first);
    drop(first);
    let second = ok(rx.recv_timeout(Some(SOON)));
    assert_eq!(second.payload_bytes(), b"after");
    let after = comm_of(&second);
    assert_ne!(before, "renamed-by-test");
    assert!(!before.is_empty(), "no PID_COMM at all");
    // The child has exited by now: what it was at send time, not what a pid shows
    // later (and never another process's name).
    assert_eq!(after, "renamed-by-test");
}
