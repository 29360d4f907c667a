//! The broker process itself: ready line, default and extra buses, clean shutdown,
//! one broker per runtime directory, sequence numbers across the bus.

mod common;
use common::*;
use kdbus::{abi, Message};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn term(child: &std::process::Child) {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}

#[test]
fn ready_line_names_the_paths_and_sigterm_removes_the_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kdbusd"))
        .arg("--runtime-dir")
        .arg(dir.path())
        .args(["--bus", "extra"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let extra = dir.path().join(format!("{}-extra", uid())).join("bus");
    let control = dir.path().join("control");
    assert!(
        line.contains(&format!("control={}", control.display())),
        "{line}"
    );
    assert!(line.contains(&extra.display().to_string()), "{line}");
    assert!(extra.exists() && control.exists());
    // With --bus, only the named buses are served.
    assert!(!dir.path().join(format!("{}-user", uid())).exists());
    let c = kdbus::Connection::hello(&extra, &test_hello()).unwrap();
    assert_eq!(c.id(), 1);
    drop(c);

    term(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!extra.exists() && !control.exists(), "sockets left behind");
    assert!(
        !extra.parent().unwrap().exists(),
        "bus directory left behind"
    );
}

#[test]
fn sigint_is_a_clean_shutdown_too() {
    let mut b = Broker::start();
    let pid = rustix::process::Pid::from_child(&b.child);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = b.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!b.bus.exists());
}

#[test]
fn a_second_broker_on_the_same_directory_refuses_to_start() {
    let b = Broker::start();
    let out = Command::new(env!("CARGO_BIN_EXE_kdbusd"))
        .arg("--runtime-dir")
        .arg(b.dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another broker"));
    // The first one is unharmed.
    let c = b.conn();
    assert!(c.id() >= 1);
}

#[test]
fn a_stale_socket_from_a_crash_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kdbusd"))
        .arg("--runtime-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap(); // SIGKILL: no cleanup
    child.wait().unwrap();
    assert!(dir.path().join("control").exists());
    let mut again = Command::new(env!("CARGO_BIN_EXE_kdbusd"))
        .arg("--runtime-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(again.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("kdbusd ready:"), "{line}");
    term(&again);
    assert!(again.wait().unwrap().success());
}

/// Every message carries the domain-wide sequence number, and a receiver sees its
/// messages in that order, whoever sent them.
#[test]
fn receivers_see_messages_in_sequence_order() {
    let b = Broker::start();
    let rx = b.conn();
    let senders: Vec<_> = (0..4).map(|_| b.conn()).collect();
    let rx_id = rx.id();
    std::thread::scope(|s| {
        for (i, tx) in senders.iter().enumerate() {
            s.spawn(move || {
                for n in 0..50u64 {
                    tx.send(&Message::to(rx_id).cookie(i as u64 * 1000 + n + 1))
                        .unwrap();
                }
            });
        }
    });
    let mut last = 0;
    let mut per_sender = std::collections::HashMap::new();
    for _ in 0..200 {
        let m = rx.recv_timeout(Some(Duration::from_secs(5))).unwrap();
        let ts = m.item(abi::item::TIMESTAMP).expect("TIMESTAMP item");
        let ts: abi::Timestamp = abi::read_struct(ts).unwrap();
        assert!(ts.seqnum > last, "seqnum {} after {last}", ts.seqnum);
        last = ts.seqnum;
        // And each sender's messages keep their order.
        let prev = per_sender.insert(m.src_id(), m.cookie());
        assert!(prev.is_none_or(|p| p < m.cookie()));
    }
}
