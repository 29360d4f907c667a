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
    let Some((bus, dst)) = child_spec(CHILD_ENV) else {
        return;
    };
    let c = ok(Connection::hello(&bus, &test_hello()));
    ok(c.send(&Message::to(dst).cookie(1).payload(b"before")));
    // The process's name (its main thread's, which /proc/self/comm is): what
    // PR_SET_NAME on the main thread sets.
    std::fs::write("/proc/self/comm", "renamed-by-test").expect("rename");
    ok(c.send(&Message::to(dst).cookie(2).payload(b"after")));
}

/// In a sending child: the bus and receiver id the parent gave in `env` (`None`:
/// not run as a child; see [`run_sender`]).
fn child_spec(env: &str) -> Option<(String, u64)> {
    let spec = std::env::var(env).ok()?;
    let (bus, dst) = spec.split_once('|').expect("bus|id");
    Some((bus.to_string(), dst.parse().expect("an id")))
}

/// Run this test binary's `test` as a sending process of its own, told the bus and
/// the receiver's id through `env`; it must succeed.
fn run_sender(test: &str, env: &str, bus: &std::path::Path, dst: u64) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1"])
        .env(env, format!("{}|{dst}", bus.display()))
        .status()
        .expect("the child runs");
    assert!(status.success(), "{test}");
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
    run_sender("metadata_child", CHILD_ENV, &b.bus, rx.id());
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

const REUSE_ENV: &str = "KDBUS_PID_REUSE_CHILD";

/// The first process of `a_recycled_pid_never_lends_another_identity`: named
/// `first-process` before it connects, it sends one message when told (a line on
/// stdin) and then waits to be killed.
#[test]
fn pid_reuse_child() {
    let Some((bus, dst)) = child_spec(REUSE_ENV) else {
        return;
    };
    std::fs::write("/proc/self/comm", "first-process").expect("rename");
    let c = ok(Connection::hello(&bus, &test_hello()));
    println!("connected");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("told to send");
    let _ = c.send(&Message::to(dst).cookie(1).payload(b"from the first"));
    std::thread::sleep(std::time::Duration::from_secs(60));
}

/// A sender that is gone before the broker reads its message, its pid already
/// another process's: the message carries what was taken when the sender connected,
/// never the other process's name. The broker is stopped while the first process
/// sends and dies and the second is made to get its pid (`ns_last_pid`). Needs root;
/// skipped where the next pid cannot be chosen.
#[test]
fn a_recycled_pid_never_lends_another_identity() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let b = Broker::start();
    let rx = ok(Connection::hello(
        &b.bus,
        &test_hello().attach_recv(attach::PID_COMM),
    ));
    let dir = tempfile::tempdir().unwrap();
    let second = dir.path().join("second-process");
    std::fs::copy("/bin/sleep", &second).expect("a copy of sleep");
    let mut first = Command::new(std::env::current_exe().unwrap())
        .args([
            "pid_reuse_child",
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(REUSE_ENV, format!("{}|{}", b.bus.display(), rx.id()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the first process");
    let first_pid = first.id();
    let mut out = BufReader::new(first.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("connected") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the first process died"
        );
    }
    // The broker stops; the first process sends, dies and is reaped.
    let broker = rustix::process::Pid::from_raw(b.child.id() as i32).unwrap();
    rustix::process::kill_process(broker, rustix::process::Signal::STOP).unwrap();
    first.stdin.take().unwrap().write_all(b"send\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = first.kill();
    let _ = first.wait();
    // The second process gets the first one's pid (if this machine lets us choose).
    let mut second_proc = None;
    for _ in 0..20 {
        if std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", first_pid - 1)).is_err() {
            break;
        }
        let c = Command::new(&second)
            .arg("30")
            .spawn()
            .expect("the second process");
        if c.id() == first_pid {
            second_proc = Some(c);
            break;
        }
        let mut c = c;
        let _ = c.kill();
        let _ = c.wait();
    }
    rustix::process::kill_process(broker, rustix::process::Signal::CONT).unwrap();
    let Some(mut second_proc) = second_proc else {
        eprintln!("skipped: the next pid cannot be chosen here");
        return;
    };
    let m = ok(rx.recv_timeout(Some(SOON)));
    let comm = comm_of(&m);
    drop(m);
    let _ = second_proc.kill();
    let _ = second_proc.wait();
    assert_eq!(comm, "first-process");
}

const NS_ENV: &str = "KDBUS_NS_RECEIVER";

/// The receiver of `ids_are_translated_for_a_receiver_in_other_namespaces`, run in a
/// user namespace mapping its uid and gid 1000 to root, and a pid namespace of its own:
/// prints its id, then what the metadata of the first message says.
#[test]
fn ns_receiver_child() {
    let Ok(bus) = std::env::var(NS_ENV) else {
        return;
    };
    let opts = test_hello().attach_recv(attach::CREDS | attach::PIDS | attach::CAPS);
    let c = ok(Connection::hello(&bus, &opts));
    println!("id={}", c.id());
    let m = ok(c.recv_timeout(Some(std::time::Duration::from_secs(10))));
    let creds: kdbus::abi::Creds = m
        .item(item::CREDS)
        .and_then(kdbus::abi::read_struct)
        .unwrap_or_default();
    let pids: kdbus::abi::Pids = m
        .item(item::PIDS)
        .and_then(kdbus::abi::read_struct)
        .unwrap_or_default();
    println!(
        "seen uid={} euid={} gid={} pid={} ppid={} caps={}",
        creds.uid,
        creds.euid,
        creds.gid,
        pids.pid,
        pids.ppid,
        m.item(item::CAPS).is_some()
    );
}

/// A receiver in another user and pid namespace gets the sender's ids as its user
/// namespace names them (root is its uid 1000) and no pids of a process outside its
/// pid namespace, and no capabilities from another user namespace. Needs root and
/// `unshare`; skipped where namespaces cannot be made.
#[test]
fn ids_are_translated_for_a_receiver_in_other_namespaces() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let b = Broker::start();
    let mut child = match Command::new("unshare")
        .args([
            "--user",
            "--pid",
            "--fork",
            "--map-user=1000",
            "--map-group=1000",
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "ns_receiver_child",
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(NS_ENV, &b.bus)
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipped: no unshare ({e})");
            return;
        }
    };
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    // (libtest's own "test ... " may start the line.)
    let Some(id) = lines.by_ref().find_map(|l| {
        l.split("id=")
            .nth(1)
            .and_then(|i| i.trim().parse::<u64>().ok())
    }) else {
        let _ = child.wait();
        eprintln!("skipped: no user and pid namespaces here");
        return;
    };
    let root = b.conn();
    ok(root.send(&Message::to(id).cookie(1).payload(b"from root")));
    let seen = lines
        .find_map(|l| l.find("seen ").map(|i| l[i..].to_string()))
        .unwrap_or_default();
    let _ = child.wait();
    assert_eq!(
        seen,
        "seen uid=1000 euid=1000 gid=1000 pid=0 ppid=0 caps=false"
    );
}

const IDS_ENV: &str = "KDBUS_IDS_CHILD";

/// The sender of `creds_carry_all_four_ids`: real and effective ids 1, saved ids 0.
#[test]
fn ids_child() {
    let Some((bus, dst)) = child_spec(IDS_ENV) else {
        return;
    };
    // SAFETY: plain system calls on integers; glibc applies them to every thread.
    let r = unsafe { (libc::setresgid(1, 1, 0), libc::setresuid(1, 1, 0)) };
    assert_eq!(r, (0, 0), "setresuid");
    let c = ok(Connection::hello(&bus, &test_hello()));
    ok(c.send(&Message::to(dst).cookie(1).payload(b"ids")));
}

/// `CREDS` carries the real, effective, saved and filesystem ids as the process had
/// them, not the real ones four times. Needs root.
#[test]
fn creds_carry_all_four_ids() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let b = Broker::start();
    b.open_to_other_users();
    let bus = b.make_bus("ids", kdbus::abi::make_flags::ACCESS_WORLD);
    // Everyone may talk to the receiver's name (kdbus's TALK policy).
    let holder = kdbus::HelloOptions::new()
        .policy_holder("org.example.Ids")
        .world_access(1);
    let _holder = ok(Connection::hello(&bus.endpoint, &holder));
    let rx = ok(Connection::hello(
        &bus.endpoint,
        &test_hello().attach_recv(attach::CREDS),
    ));
    ok(rx.acquire_name("org.example.Ids", 0));
    run_sender("ids_child", IDS_ENV, &bus.endpoint, rx.id());
    let m = ok(rx.recv_timeout(Some(SOON)));
    let c: kdbus::abi::Creds = m
        .item(item::CREDS)
        .and_then(kdbus::abi::read_struct)
        .expect("CREDS");
    assert_eq!(
        [c.uid, c.euid, c.suid, c.fsuid, c.gid, c.egid, c.sgid, c.fsgid],
        [1, 1, 0, 1, 1, 1, 0, 1]
    );
}

/// A privileged connection may give the metadata its messages are to carry at HELLO
/// (kdbus's faked `CREDS`, `PIDS` and `SECLABEL`, for proxies): receivers get those,
/// not what the kernel says of the proxy. Needs root.
#[test]
fn a_privileged_proxy_speaks_with_the_metadata_it_gave_at_hello() {
    use kdbus::abi::{ItemWriter, Pids};
    use zerocopy::IntoBytes;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let b = Broker::start();
    let rx = ok(Connection::hello(
        &b.bus,
        &test_hello().attach_recv(attach::CREDS | attach::PIDS | attach::SECLABEL),
    ));
    let mut body = test_hello().encode();
    let creds = kdbus::abi::Creds {
        uid: 1000,
        euid: 1001,
        suid: 1002,
        fsuid: 1003,
        gid: 2000,
        egid: 2001,
        sgid: 2002,
        fsgid: 2003,
    };
    let pids = Pids {
        pid: 4242,
        tid: 4243,
        ppid: 1,
    };
    {
        let mut w = ItemWriter::new(&mut body);
        w.push(item::CREDS, creds.as_bytes());
        w.push(item::PIDS, pids.as_bytes());
        w.push_str(item::SECLABEL, "system_u:system_r:proxy_t");
    }
    let size = body.len() as u64;
    body[..8].copy_from_slice(&size.to_ne_bytes());
    let proxy = ok(Connection::hello_raw(&b.bus, &body));
    ok(proxy.send(&Message::to(rx.id()).cookie(1).payload(b"on behalf")));
    let m = ok(rx.recv_timeout(Some(SOON)));
    let got: kdbus::abi::Creds = m
        .item(item::CREDS)
        .and_then(kdbus::abi::read_struct)
        .expect("CREDS");
    assert_eq!(got, creds);
    let got: Pids = m
        .item(item::PIDS)
        .and_then(kdbus::abi::read_struct)
        .expect("PIDS");
    assert_eq!((got.pid, got.tid, got.ppid), (4242, 4243, 1));
    let label = m
        .item(item::SECLABEL)
        .map(|l| String::from_utf8_lossy(l).into_owned());
    assert_eq!(
        label.as_deref().map(|l| l.trim_end_matches('\0')),
        Some("system_u:system_r:proxy_t")
    );
}

const EXEC_ENV: &str = "KDBUS_EXEC_CHILD";
const EXEC_FD_ENV: &str = "KDBUS_EXEC_FD";

/// The sender of `a_process_that_execs_is_reported_with_its_new_program`: sends
/// "before", then execs the program `KDBUS_EXEC_CHILD` names (a copy of this test
/// binary elsewhere), keeping its connection's socket, whose new image sends "after"
/// ([`exec_target`]).
#[test]
fn exec_child() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let Ok(spec) = std::env::var(EXEC_ENV) else {
        return;
    };
    let mut parts = spec.split('|');
    let (bus, dst, target) = (
        parts.next().expect("bus"),
        parts.next().expect("id"),
        parts.next().expect("target"),
    );
    let dst: u64 = dst.parse().expect("an id");
    let c = ok(Connection::hello(bus, &test_hello()));
    ok(c.send(&Message::to(dst).cookie(1).payload(b"before")));
    rustix::io::fcntl_setfd(c.as_fd(), rustix::io::FdFlags::empty()).expect("keep the socket");
    let err = Command::new(target)
        .args(["exec_target", "--exact", "--test-threads=1"])
        .env_remove(EXEC_ENV)
        .env(EXEC_FD_ENV, format!("{}|{dst}", c.as_fd().as_raw_fd()))
        .exec();
    panic!("exec: {err}");
}

/// The new image of [`exec_child`]: sends "after" on the socket it inherited, as a
/// bare SEND request (its pool mapping did not survive the exec).
#[test]
fn exec_target() {
    use kdbus::abi::wire::ReqHeader;
    use std::os::fd::BorrowedFd;
    use zerocopy::IntoBytes;
    let Ok(spec) = std::env::var(EXEC_FD_ENV) else {
        return;
    };
    let (fd, dst) = spec.split_once('|').expect("fd|id");
    let (fd, dst): (i32, u64) = (fd.parse().unwrap(), dst.parse().unwrap());
    // SAFETY: the socket our previous image kept open across exec for us; borrowed
    // for the send only.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut body = Vec::new();
    Message::to(dst)
        .cookie(2)
        .payload(b"after")
        .encode_send(0, &mut body);
    let header = ReqHeader {
        cmd: kdbus::abi::cmd::SEND,
        flags: 0,
        req_id: 1,
        body_len: body.len() as u64,
    };
    let mut datagram = header.as_bytes().to_vec();
    datagram.extend_from_slice(&body);
    datagram.resize(datagram.len().next_multiple_of(8), 0);
    kdbus::transport::send_datagram(fd, &datagram, &[]).expect("send");
    // The broker reads the request while this image is still there.
    std::thread::sleep(std::time::Duration::from_millis(500));
}

/// A process that execs another program between two messages on one connection is
/// reported with the new program's `EXE` in the second.
#[test]
fn a_process_that_execs_is_reported_with_its_new_program() {
    let b = Broker::start();
    let rx = ok(Connection::hello(
        &b.bus,
        &test_hello().attach_recv(attach::EXE),
    ));
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("exec-target");
    std::fs::copy(std::env::current_exe().unwrap(), &target).expect("a copy");
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["exec_child", "--exact", "--test-threads=1"])
        .env(
            EXEC_ENV,
            format!("{}|{}|{}", b.bus.display(), rx.id(), target.display()),
        )
        .status()
        .expect("the child runs");
    assert!(status.success());
    let exe_of = |m: &kdbus::Received<'_>| {
        let raw = m.item(item::EXE).unwrap_or(&[]);
        String::from_utf8_lossy(raw)
            .trim_end_matches('\0')
            .to_string()
    };
    let first = ok(rx.recv_timeout(Some(SOON)));
    assert_eq!(first.payload_bytes(), b"before");
    let before = exe_of(&first);
    drop(first);
    let second = ok(rx.recv_timeout(Some(SOON)));
    assert_eq!(second.payload_bytes(), b"after");
    assert_eq!(
        before,
        std::env::current_exe().unwrap().display().to_string()
    );
    assert_eq!(exe_of(&second), target.display().to_string());
}

const GROUPS_ENV: &str = "KDBUS_GROUPS_CHILD";

/// The sender of `groups_changed_after_connecting_are_reported`: connects, takes the
/// supplementary group 4242 alone, then sends.
#[test]
fn groups_child() {
    let Some((bus, dst)) = child_spec(GROUPS_ENV) else {
        return;
    };
    let c = ok(Connection::hello(&bus, &test_hello()));
    let groups: [libc::gid_t; 1] = [4242];
    // SAFETY: setgroups reads one gid from a live local array; glibc applies it to
    // every thread.
    assert_eq!(
        unsafe { libc::setgroups(1, groups.as_ptr()) },
        0,
        "setgroups"
    );
    ok(c.send(&Message::to(dst).cookie(1).payload(b"groups")));
}

/// `AUXGROUPS` are the sender's groups when it sends, not when it connected. Needs
/// root (to change groups).
#[test]
fn groups_changed_after_connecting_are_reported() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let b = Broker::start();
    let rx = ok(Connection::hello(
        &b.bus,
        &test_hello().attach_recv(attach::AUXGROUPS),
    ));
    run_sender("groups_child", GROUPS_ENV, &b.bus, rx.id());
    let m = ok(rx.recv_timeout(Some(SOON)));
    let groups: Vec<u64> = m
        .item(item::AUXGROUPS)
        .unwrap_or(&[])
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(groups, [4242]);
}
