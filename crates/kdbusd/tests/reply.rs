//! Selftests 14 (timeout), 15 (sync-byebye), 16 (sync-reply), and the reply rules of
//! spec A.6 (RPL1-RPL6, BYE5, BYE6): REPLY_TIMEOUT / REPLY_DEAD, synchronous calls,
//! and peers that die in the middle of a call.

mod common;
use common::*;
use kdbus::abi::{self, item, recv_flags, Errno};
use kdbus::{Connection, Message, Received};
use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

fn deadline_in(d: Duration) -> u64 {
    kdbus::monotonic_ns() + d.as_nanos() as u64
}

/// Assert `m` is the bus telling `conn` that its request `cookie` ended with `what`.
#[track_caller]
fn assert_kernel_reply(m: &Received<'_>, conn: &Connection, cookie: u64, what: u64) {
    let h = m.header();
    assert_eq!(h.payload_type, abi::payload::KERNEL);
    assert_eq!(h.src_id, abi::SRC_ID_KERNEL);
    assert_eq!(h.dst_id, conn.id());
    assert_eq!(m.cookie_reply(), cookie);
    assert_eq!(m.kernel_item(), Some(what), "kernel item {:#x}", what);
}

// selftest 14 (timeout), RPL4, NOT4: unanswered requests time out, in deadline order
#[test]
fn reply_timeouts() {
    let b = Broker::start();
    let conn_a = b.conn();
    let conn_b = b.conn();
    for i in 0..4u64 {
        let deadline = deadline_in(Duration::from_millis(100 * (i + 1)));
        // HEAD: cookie 0 cannot expect a reply, so the cookies are 1..=4.
        ok(conn_b.send(
            &Message::to(conn_a.id())
                .cookie(i + 1)
                .expect_reply(deadline),
        ));
    }
    for i in 0..4u64 {
        let m = ok(conn_b.recv_timeout(Some(SOON)));
        assert_kernel_reply(&m, &conn_b, i + 1, item::REPLY_TIMEOUT);
    }
    // The requests themselves are still queued at the receiver.
    for i in 0..4u64 {
        let m = ok(conn_a.recv_timeout(Some(SOON)));
        assert_eq!(m.cookie(), i + 1);
        assert!(m.expects_reply());
    }
    assert_eq!(errno(conn_b.recv()), Errno::EAGAIN);
}

// RPL2: a reply consumes the tracker; no REPLY_TIMEOUT follows
#[test]
fn reply_is_delivered() {
    let b = Broker::start();
    let a = b.conn();
    let c = b.conn();
    let deadline = deadline_in(Duration::from_millis(300));
    ok(c.send(
        &Message::to(a.id())
            .cookie(77)
            .expect_reply(deadline)
            .payload(b"ping"),
    ));
    let req = ok(a.recv_timeout(Some(SOON)));
    assert!(req.expects_reply());
    assert_eq!(req.header().timeout_or_cookie_reply, deadline);
    drop(req);
    ok(a.send(&Message::to(c.id()).reply_to(77).payload(b"pong")));

    let r = ok(c.recv_timeout(Some(SOON)));
    assert_eq!((r.src_id(), r.cookie_reply()), (a.id(), 77));
    assert_eq!(r.payload_bytes(), b"pong");
    drop(r);
    // Well past the deadline: nothing else arrives.
    assert_eq!(
        errno(c.recv_timeout(Some(Duration::from_millis(1000)))),
        Errno::EAGAIN
    );
}

// selftest 16 (sync-reply): a synchronous call answered by another thread with a
// 128 KiB payload; the reply never enters the caller's queue (RPL6)
#[test]
fn sync_reply() {
    let b = Broker::start();
    let conn_a = b.conn();
    let conn_b = b.conn();
    let cookie = 0xdeadbeef;
    let big: Vec<u8> = (0..128 * 1024 + 3).map(|i| (i % 253) as u8).collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            let m = ok(conn_a.recv_timeout(Some(SOON)));
            assert_eq!(m.payload_bytes(), b"call");
            let (src, c) = (m.src_id(), m.cookie());
            drop(m);
            ok(conn_a.send(&Message::to(src).reply_to(c).payload(&big)));
        });
        let r = ok(conn_b.call(
            Message::to(conn_a.id()).cookie(cookie).payload(b"call"),
            Duration::from_secs(5),
        ));
        assert_eq!((r.src_id(), r.cookie_reply()), (conn_a.id(), cookie));
        assert_eq!(r.payload_bytes(), big);
    });
    assert_eq!(errno(conn_b.recv()), Errno::EAGAIN, "reply was also queued");
}

// RPL6: an unanswered synchronous call ends with ETIMEDOUT, not a REPLY_TIMEOUT message
#[test]
fn sync_call_times_out() {
    let b = Broker::start();
    let a = b.conn();
    let c = b.conn();
    let e = errno(c.call(Message::to(a.id()).cookie(3), Duration::from_millis(200)));
    assert_eq!(e, Errno::ETIMEDOUT);
    assert_eq!(
        errno(c.recv_timeout(Some(Duration::from_millis(500)))),
        Errno::EAGAIN
    );
    // The request itself was delivered.
    assert_eq!(ok(a.recv_timeout(Some(SOON))).cookie(), 3);
}

/// selftest 15: `conn_b` calls `conn_a`; once `conn_a` has the request, the helper
/// thread says BYEBYE on the caller (`on_caller`) or on the callee. Returns the call's errno.
fn sync_byebye(b: &Broker, on_caller: bool) -> Errno {
    let conn_a = b.conn();
    let conn_b = b.conn();
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            let m = ok(conn_a.recv_timeout(Some(SOON)));
            drop(m);
            let target = if on_caller { &conn_b } else { &conn_a };
            target.byebye()
        });
        let r = conn_b.call(
            Message::to(conn_a.id()).cookie(0xdeadbeef),
            Duration::from_secs(5),
        );
        ok(t.join().unwrap());
        errno(r)
    })
}

// selftest 15 (sync-byebye), BYE6: the caller's own connection goes away
#[test]
fn sync_byebye_caller() {
    let b = Broker::start();
    assert_eq!(sync_byebye(&b, true), Errno::ECONNRESET);
}

// selftest 15 (sync-byebye), BYE5, BYE6: the callee goes away
#[test]
fn sync_byebye_callee() {
    let b = Broker::start();
    assert_eq!(sync_byebye(&b, false), Errno::EPIPE);
}

// RPL5, BYE5: a receiver that disconnects with the request still queued
#[test]
fn reply_dead_on_close_with_queued_request() {
    let b = Broker::start();
    let a = b.conn();
    let c = b.conn();
    ok(c.send(
        &Message::to(a.id())
            .cookie(5)
            .expect_reply(deadline_in(SOON * 6)),
    ));
    drop(a);
    let m = ok(c.recv_timeout(Some(SOON)));
    assert_kernel_reply(&m, &c, 5, item::REPLY_DEAD);
}

// RPL5, BYE5: a receiver that took the request and then leaves
#[test]
fn reply_dead_on_byebye_after_receive() {
    let b = Broker::start();
    let a = b.conn();
    let c = b.conn();
    ok(c.send(
        &Message::to(a.id())
            .cookie(6)
            .expect_reply(deadline_in(SOON * 6)),
    ));
    // A request that expects no reply leaves nothing behind.
    ok(c.send(&Message::to(a.id()).cookie(7)));
    assert_eq!(ok(a.recv_timeout(Some(SOON))).cookie(), 6);
    assert_eq!(ok(a.recv_timeout(Some(SOON))).cookie(), 7);
    ok(a.byebye());
    let m = ok(c.recv_timeout(Some(SOON)));
    assert_kernel_reply(&m, &c, 6, item::REPLY_DEAD);
    assert_eq!(
        errno(c.recv_timeout(Some(Duration::from_millis(300)))),
        Errno::EAGAIN
    );
}

// RCV6, RPL5: RECV with DROP through the library
#[test]
fn reply_dead_on_drop() {
    let b = Broker::start();
    let a = b.conn();
    let c = b.conn();
    ok(c.send(
        &Message::to(a.id())
            .cookie(8)
            .expect_reply(deadline_in(SOON * 6)),
    ));
    assert!(wait_until(SOON, || a.queued() == 1));
    ok(a.recv_with(recv_flags::DROP, 0));
    ok(a.flush());
    let m = ok(c.recv_timeout(Some(SOON)));
    assert_kernel_reply(&m, &c, 8, item::REPLY_DEAD);
    assert_eq!(
        errno(a.recv()),
        Errno::EAGAIN,
        "dropped message still queued"
    );
}

// RCV6, RPL5: RECV with DROP executed by the broker
#[test]
fn reply_dead_on_broker_drop() {
    let b = Broker::start();
    let a = b.conn();
    let c = b.conn();
    ok(c.send(
        &Message::to(a.id())
            .cookie(9)
            .expect_reply(deadline_in(SOON * 6)),
    ));
    ok(a.recv_broker(recv_flags::DROP, 0));
    let m = ok(c.recv_timeout(Some(SOON)));
    assert_kernel_reply(&m, &c, 9, item::REPLY_DEAD);
    assert_eq!(errno(a.recv_broker(0, 0)), Errno::EAGAIN);
}

// RPL6: a synchronous caller whose request is dropped gets EPIPE
#[test]
fn sync_call_dropped() {
    let b = Broker::start();
    let a = b.conn();
    let c = b.conn();
    std::thread::scope(|s| {
        s.spawn(|| {
            assert!(wait_until(SOON, || a.queued() == 1));
            ok(a.recv_broker(recv_flags::DROP, 0));
        });
        let e = errno(c.call(Message::to(a.id()).cookie(10), Duration::from_secs(30)));
        assert_eq!(e, Errno::EPIPE);
    });
}

// ---------------------------------------------------------------- killed processes

const HELPER_ENV: &str = "KDBUS_TEST_HELPER";
const BUS_ENV: &str = "KDBUS_TEST_BUS";
const PEER_ENV: &str = "KDBUS_TEST_PEER";

/// Not a test: the body of a helper process (this test binary, run again with a filter
/// and `KDBUS_TEST_HELPER` set). Without the variable it does nothing.
#[test]
fn helper_process() {
    let Ok(role) = std::env::var(HELPER_ENV) else {
        return;
    };
    let bus = std::env::var(BUS_ENV).expect("bus path");
    let conn = ok(Connection::hello(&bus, &test_hello()));
    println!("HELPER id={}", conn.id());
    match role.as_str() {
        // Call the peer synchronously and wait (to be killed).
        "caller" => {
            let peer: u64 = std::env::var(PEER_ENV).unwrap().parse().unwrap();
            let r = conn.call(Message::to(peer).cookie(0xc0ffee), Duration::from_secs(60));
            println!("HELPER call returned {:?}", r.err().map(|e| e.errno()));
        }
        // Take one request, report it, and never answer.
        "callee" => {
            let m = ok(conn.recv_timeout(Some(Duration::from_secs(60))));
            println!("HELPER got={}", m.cookie());
            drop(m);
            ok(conn.flush());
            std::thread::sleep(Duration::from_secs(60));
        }
        r => panic!("unknown helper role {r}"),
    }
}

struct Helper {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Helper {
    fn spawn(b: &Broker, role: &str, peer: Option<u64>) -> Helper {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "helper_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, role)
        .env(BUS_ENV, &b.bus)
        .stdout(Stdio::piped());
        if let Some(p) = peer {
            cmd.env(PEER_ENV, p.to_string());
        }
        let mut child = cmd.spawn().expect("spawn helper");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Helper { child, lines }
    }

    /// The value of the helper's next `HELPER <key>=<value>` line.
    fn expect(&mut self, key: &str) -> u64 {
        for line in self.lines.by_ref() {
            let line = line.expect("helper output");
            // libtest may print "test helper_process ... " in front of the first line.
            let Some(said) = line.find("HELPER ").map(|i| &line[i..]) else {
                continue;
            };
            match said.strip_prefix(&format!("HELPER {key}=")) {
                Some(v) => return v.trim().parse().expect("number"),
                None => panic!("helper said {said:?}"),
            }
        }
        panic!("helper exited before saying {key}");
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL helper");
        let status = self.child.wait().unwrap();
        assert!(!status.success(), "helper was not killed: {status}");
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// A process killed while blocked in a synchronous call: its callee just finds the
// caller gone (ENXIO), owes nothing, and the broker serves on
#[test]
fn caller_killed_mid_call() {
    let b = Broker::start();
    let a = b.conn();
    let mut helper = Helper::spawn(&b, "caller", Some(a.id()));
    let helper_id = helper.expect("id");
    let req = ok(a.recv_timeout(Some(SOON)));
    assert_eq!((req.src_id(), req.cookie()), (helper_id, 0xc0ffee));
    assert!(req.expects_reply());
    drop(req);

    helper.kill();
    assert!(
        wait_until(SOON, || a.info(helper_id, 0).is_err()),
        "the broker did not notice the death"
    );
    assert_eq!(errno(a.info(helper_id, 0)), Errno::ENXIO);
    let e = errno(a.send(&Message::to(helper_id).reply_to(0xc0ffee)));
    assert!(
        e == Errno::ENXIO || e == Errno::ECONNRESET,
        "reply to a dead caller: {e:?}"
    );
    // Nothing for the callee: no REPLY_* message, and it may leave (nothing queued).
    assert_eq!(
        errno(a.recv_timeout(Some(Duration::from_millis(300)))),
        Errno::EAGAIN
    );
    let c = b.conn();
    ok(c.send(&Message::to(a.id()).cookie(1)));
    assert_eq!(ok(a.recv_timeout(Some(SOON))).cookie(), 1);
    ok(a.byebye());
}

// A process killed while it holds a synchronous call and an asynchronous request:
// the synchronous caller gets EPIPE, the asynchronous one REPLY_DEAD
#[test]
fn callee_killed_mid_call() {
    let b = Broker::start();
    let caller = b.conn();
    let asker = b.conn();
    let mut helper = Helper::spawn(&b, "callee", None);
    let helper_id = helper.expect("id");
    std::thread::scope(|s| {
        let call = s.spawn(|| {
            caller
                .call(
                    Message::to(helper_id).cookie(0xfeed),
                    Duration::from_secs(60),
                )
                .map(|_| ())
        });
        assert_eq!(helper.expect("got"), 0xfeed);
        // A second request, queued and never taken.
        ok(asker.send(
            &Message::to(helper_id)
                .cookie(12)
                .expect_reply(deadline_in(Duration::from_secs(60))),
        ));
        helper.kill();
        assert_eq!(errno(call.join().unwrap()), Errno::EPIPE);
    });
    let m = ok(asker.recv_timeout(Some(SOON)));
    assert_kernel_reply(&m, &asker, 12, item::REPLY_DEAD);
    drop(m);
    // The broker serves on.
    let c = b.conn();
    ok(c.send(&Message::to(caller.id()).cookie(2)));
    assert_eq!(ok(caller.recv_timeout(Some(SOON))).cookie(), 2);
}
