//! A hostile user cannot starve the broker: `nobody` opens as many sockets as it can
//! to the control socket, a bus's native socket and its D-Bus socket, and never says
//! anything on them. The broker keeps only what the user's share allows (a few dozen
//! waiting handles and unauthenticated clients), root still connects and its call is
//! answered at once, and the broker's CPU stays idle.
//!
//! Needs root (to drop to `nobody`) and setpriv.

mod common;
use common::*;
use kdbus::abi::make_flags;
use kdbus::Connection;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const HELPER_ENV: &str = "KDBUS_STARVE_HELPER";
/// Sockets the hostile user opens to the control, native and D-Bus listeners: with
/// the pidfds of native ones, more than a broker with CI's descriptor limit (20,000)
/// could hold.
const FLOOD: [usize; 3] = [2000, 9000, 6400];

/// Open `n` sockets of `kind` to `path` and keep them; returns how many connected.
fn flood(path: &Path, kind: SocketType, n: usize, keep: &mut Vec<rustix::fd::OwnedFd>) -> usize {
    let addr = SocketAddrUnix::new(path).expect("a socket path");
    let mut ok = 0;
    for _ in 0..n {
        let Ok(s) =
            rustix::net::socket_with(AddressFamily::UNIX, kind, SocketFlags::NONBLOCK, None)
        else {
            break;
        };
        // A full listen backlog (the broker has not taken the last ones yet): wait.
        for _ in 0..2000 {
            match rustix::net::connect(&s, &addr) {
                Ok(()) => {
                    ok += 1;
                    break;
                }
                Err(rustix::io::Errno::AGAIN) => std::thread::sleep(Duration::from_millis(1)),
                Err(_) => break,
            }
        }
        keep.push(s);
    }
    ok
}

/// The hostile side, run as `nobody`: floods, says how many connected, then holds
/// everything until its stdin closes.
#[test]
fn starve_helper() {
    let Ok(dirs) = std::env::var(HELPER_ENV) else {
        return;
    };
    let mut parts = dirs.split('\n');
    let (control, bus, dbus) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let mut keep = Vec::new();
    let a = flood(
        Path::new(control),
        SocketType::SEQPACKET,
        FLOOD[0],
        &mut keep,
    );
    let b = flood(Path::new(bus), SocketType::SEQPACKET, FLOOD[1], &mut keep);
    let c = flood(Path::new(dbus), SocketType::STREAM, FLOOD[2], &mut keep);
    println!("STARVE connected={a},{b},{c}");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(keep);
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // utime and stime: fields 14 and 15 of the whole line, 12 and 13 after ")".
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn nobody_cannot_make_the_broker_refuse_root() {
    if !root_or_skip("to drop to nobody") {
        return;
    }
    let b = Broker::start();
    b.open_to_other_users();
    let bus = b.make_bus("open", make_flags::ACCESS_WORLD);
    let dbus = bus.endpoint.with_file_name("dbus");
    let service = ok(Connection::hello(&bus.endpoint, &test_hello()));
    let dirs = format!(
        "{}\n{}\n{}",
        b.control.display(),
        bus.endpoint.display(),
        dbus.display()
    );
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "starve_helper",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, &dirs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let said: Vec<String> = out
        .by_ref()
        .map_while(Result::ok)
        .filter_map(|l| l.find("STARVE ").map(|i| l[i + 7..].to_owned()))
        .take(1)
        .collect();
    assert_eq!(said.len(), 1, "the hostile helper did not report");
    eprintln!("nobody {}", said[0]);
    // Let the broker take in (and turn away) what it was sent.
    std::thread::sleep(Duration::from_millis(500));
    let pid = b.child.id();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let idle = cpu_ticks(pid) - before;
    // Root connects and calls, as always.
    let took = connect_and_call(&service, &bus.endpoint);
    eprintln!(
        "root's connect and call took {took:?}; broker CPU while flooded: {idle} ticks in 1 s"
    );
    drop(child.stdin.take());
    out.for_each(drop);
    let _ = child.wait();
    assert!(took < Duration::from_millis(500), "root waited {took:?}");
    assert!(
        idle <= 5,
        "the broker was busy while idle: {idle} ticks in 1 s"
    );
}
