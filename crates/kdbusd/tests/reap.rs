//! Connections die with their process. A native client may not send a socket (its own
//! bus socket above all) in an `FDS` item: a message holding the socket it was queued
//! on would keep that connection alive after its process is gone (kdbus refused its
//! own handles for the same loop). A process killed with `-9` leaves nothing behind.

mod common;
use common::*;
use kdbus::{Connection, Errno, Message};
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HELPER_ENV: &str = "KDBUS_REAP_HELPER";

#[test]
fn sockets_may_not_travel_natively() {
    let b = Broker::start();
    let c = b.conn();
    // Its own bus socket, to itself.
    let own = c.send(&Message::to(c.id()).fd(c.as_fd()));
    assert_eq!(errno(own), Errno::EOPNOTSUPP);
    // Any unix socket.
    let (x, _y) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    assert_eq!(
        errno(c.send(&Message::to(c.id()).fd(x.as_fd()))),
        Errno::EOPNOTSUPP
    );
    // Other files travel.
    let (r, _w) = rustix::pipe::pipe().unwrap();
    ok(c.send(&Message::to(c.id()).fd(r.as_fd())));
}

/// The process that gets killed: owns a name, tries to queue its own socket to
/// itself, then waits to be killed.
#[test]
fn reap_helper() {
    let Ok(bus) = std::env::var(HELPER_ENV) else {
        return;
    };
    let c = ok(Connection::hello(&bus, &test_hello()));
    ok(c.acquire_name("org.reap.Me", 0));
    let own = c.send(&Message::to(c.id()).fd(c.as_fd()));
    println!("REAP own={}", own.is_ok());
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_killed_process_leaves_nothing_behind() {
    let b = Broker::start();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["reap_helper", "--exact", "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, &b.bus)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let said = out
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.find("REAP ").map(|i| l[i + 5..].to_owned()));
    assert_eq!(
        said.as_deref(),
        Some("own=false"),
        "its own socket was refused"
    );
    let watcher = b.conn();
    assert!(watcher.info_by_name("org.reap.Me", 0).is_ok());
    let t0 = Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    let gone = wait_until(Duration::from_secs(1), || {
        watcher.info_by_name("org.reap.Me", 0).is_err()
    });
    assert!(gone, "the name outlived its process by a second");
    eprintln!("gone {:?} after the kill", t0.elapsed());
}
