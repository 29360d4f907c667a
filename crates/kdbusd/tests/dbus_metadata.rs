//! A D-Bus client's process facts that only metadata shows (comm, exe, cmdline,
//! cgroup, audit ids, parent, capabilities, the four ids) are read when first wanted
//! rather than when it connects (`Peer::deferred`), yet a native peer sees them as
//! for a native sender: in CONN_INFO about the D-Bus client, and on each message it
//! sends.

mod common;
#[path = "common/dbus_raw.rs"]
mod dbus_raw;
#[path = "common/zbus_peer.rs"]
mod zbus_peer;
use common::*;
use kdbus::abi::{attach, item};
use zbus_peer::*;

const FACTS: u64 = attach::PID_COMM
    | attach::EXE
    | attach::CMDLINE
    | attach::CGROUP
    | attach::AUDIT
    | attach::PIDS
    | attach::CAPS
    | attach::CREDS;

/// What `/proc/self` says of this process, as kdbus items carry it: (item, payload).
fn own_facts() -> Vec<(u64, Vec<u8>)> {
    let text = |f: &str| std::fs::read_to_string(format!("/proc/self/{f}")).ok();
    let nul = |s: &str| [s.as_bytes(), &[0]].concat();
    let mut v = Vec::new();
    let comm = text("comm").expect("comm");
    v.push((item::PID_COMM, nul(comm.trim_end())));
    let exe = std::fs::read_link("/proc/self/exe").expect("exe");
    v.push((item::EXE, nul(exe.to_str().expect("a UTF-8 path"))));
    v.push((
        item::CMDLINE,
        std::fs::read("/proc/self/cmdline").expect("cmdline"),
    ));
    if let Some(path) = text("cgroup").and_then(|c| {
        c.lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
    }) {
        v.push((item::CGROUP, nul(&path)));
    }
    v
}

/// The payload of `t` among `items`, without the NUL padding after it (strings keep
/// their terminator as `own_facts` writes it).
fn payload(items: &[(u64, Vec<u8>)], t: u64) -> Option<Vec<u8>> {
    let p = &items.iter().find(|i| i.0 == t)?.1;
    let end = p.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    Some([&p[..end], &[0]].concat())
}

/// The items that are there whatever the process: its parent, its capabilities, its
/// ids.
fn check_process_items(items: &[(u64, Vec<u8>)]) {
    let pids: kdbus::abi::Pids = items
        .iter()
        .find(|i| i.0 == item::PIDS)
        .and_then(|i| kdbus::abi::read_struct(&i.1))
        .expect("a PIDS item");
    assert_eq!(pids.pid, u64::from(std::process::id()));
    assert_eq!(pids.ppid, u64::from(std::os::unix::process::parent_id()));
    for t in [item::CAPS, item::CREDS] {
        assert!(items.iter().any(|i| i.0 == t), "item {t:#x}");
    }
}

fn audit_readable() -> bool {
    ["sessionid", "loginuid"].iter().all(|f| {
        std::fs::read_to_string(format!("/proc/self/{f}"))
            .is_ok_and(|s| s.trim().parse::<u32>().is_ok())
    })
}

#[test]
fn conn_info_about_a_dbus_client_has_its_process_facts() {
    let b = Broker::start();
    let z = zconn(&b);
    let id = id_of(&unique(&z));
    let native = b.conn();
    let info = native.info(id, FACTS).expect("CONN_INFO");
    for (t, want) in own_facts() {
        assert_eq!(payload(&info.items, t), Some(want), "item {t:#x}");
    }
    check_process_items(&info.items);
    let audit = info.items.iter().any(|i| i.0 == item::AUDIT);
    assert_eq!(audit, audit_readable(), "AUDIT item");
    // Asked again, the same (now kept on the connection).
    let again = native.info(id, FACTS).expect("CONN_INFO");
    assert_eq!(again.items, info.items);
}

#[test]
fn a_dbus_clients_message_carries_its_process_facts() {
    let b = Broker::start();
    let native = b.conn();
    let dest = format!(":1.{}", native.id());
    let z = zconn(&b);
    let m = zbus::message::Message::method_call("/org/kdbus/Facts", "Show")
        .and_then(|m| m.destination(dest.as_str()))
        .map(|m| m.with_flags(zbus::message::Flags::NoReplyExpected))
        .and_then(|m| m?.build(&()))
        .expect("a call");
    z.send(&m).expect("send");
    let r = native.recv_timeout(Some(SOON)).expect("the call arrives");
    let items: Vec<(u64, Vec<u8>)> = r
        .items()
        .flatten()
        .map(|i| (i.type_, i.payload.to_vec()))
        .collect();
    for (t, want) in own_facts() {
        assert_eq!(payload(&items, t), Some(want), "item {t:#x}");
    }
    check_process_items(&items);
    let audit = items.iter().any(|i| i.0 == item::AUDIT);
    assert_eq!(audit, audit_readable(), "AUDIT item");
}

/// The connection's Hello comes from another process than the one that connected
/// (a child writing on its parent's socket): the late facts are still those of the
/// process that connected, never of the one whose credentials the Hello carried,
/// whose pid the connection's pidfd cannot vouch for.
#[test]
fn a_hello_from_another_process_does_not_lend_it_the_connections_facts() {
    let b = Broker::start();
    let s = std::os::unix::net::UnixStream::connect(b.dbus_path()).expect("connect");
    s.set_read_timeout(Some(SOON)).unwrap();
    let mut bytes = dbus_raw::auth();
    bytes.extend(dbus_raw::call(1, dbus_raw::DRIVER, "Hello", "", &[], 0));
    // A child writes the SASL lines and the Hello on our socket (its stdin), then
    // waits, alive, with a command line of its own.
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import os,sys,time; os.write(0, bytes.fromhex(sys.argv[1])); time.sleep(30)",
        ])
        .arg(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            s.try_clone().unwrap(),
        )))
        .spawn()
        .expect("python3");
    let mut r = dbus_raw::Reading::new(s.try_clone().unwrap());
    assert!(r.line().starts_with("OK "));
    let id = id_of(&dbus_raw::first_string(&r.reply()));
    let native = b.conn();
    let info = native.info(id, attach::CMDLINE).expect("CONN_INFO");
    let _ = child.kill();
    let _ = child.wait();
    let ours = std::fs::read("/proc/self/cmdline").unwrap();
    let seen = info
        .items
        .iter()
        .find(|i| i.0 == item::CMDLINE)
        .map(|i| &i.1);
    assert!(
        seen.is_none_or(|c| c.starts_with(&ours)),
        "{:?}",
        seen.map(|c| String::from_utf8_lossy(c).into_owned())
    );
}

/// A monitor asking for what the receiver does not gets it all the same: the late
/// facts are read for whoever takes a copy.
#[test]
fn a_monitor_gets_a_dbus_senders_late_facts() {
    let b = Broker::start();
    let native = kdbus::Connection::hello(&b.bus, &kdbus::HelloOptions::new().attach_recv(0))
        .expect("a receiver that wants no metadata");
    let monitor = kdbus::Connection::hello(
        &b.bus,
        &kdbus::HelloOptions::new()
            .monitor()
            .attach_recv(attach::PID_COMM | attach::CMDLINE),
    )
    .expect("a monitor");
    let z = zconn(&b);
    let m = zbus::message::Message::method_call("/org/kdbus/Facts", "Show")
        .and_then(|m| m.destination(format!(":1.{}", native.id())))
        .map(|m| m.with_flags(zbus::message::Flags::NoReplyExpected))
        .and_then(|m| m?.build(&()))
        .expect("a call");
    z.send(&m).expect("send");
    native.recv_timeout(Some(SOON)).expect("the call arrives");
    let ours = std::fs::read("/proc/self/cmdline").unwrap();
    let mut seen = None;
    wait_until(SOON, || {
        let Ok(copy) = monitor.recv_timeout(Some(SOON)) else {
            return true;
        };
        if copy.src_id() != id_of(&unique(&z)) {
            return false;
        }
        seen = copy.item(item::CMDLINE).map(<[u8]>::to_vec);
        true
    });
    let seen = seen.expect("the monitor's copy carries CMDLINE");
    assert!(seen.starts_with(&ours));
}

/// The native id behind a unique name `:1.N`.
fn id_of(unique: &str) -> u64 {
    unique
        .strip_prefix(":1.")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{unique} is not :1.<id>"))
}
