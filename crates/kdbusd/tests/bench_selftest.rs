//! Selftest 33 (benchmark) as a functional test: ping-pong with a payload between two
//! connections, checked round by round. No timing is asserted; the rounds per second
//! are printed for whoever runs it with `--nocapture`.

mod common;
use common::*;
use kdbus::{Connection, Message};
use std::time::{Duration, Instant};

/// The selftest's stress payload: 8 KiB of a byte counter.
fn stress_payload() -> Vec<u8> {
    (0..8192).map(|i| i as u8).collect()
}

fn report(what: &str, rounds: u64, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{what}: {rounds} rounds in {secs:.3}s");
}

// selftest 33: asynchronous ping-pong, each side echoing what it got
#[test]
fn benchmark_ping_pong() {
    let b = Broker::start();
    let conn_a = b.conn();
    let conn_b = b.conn();
    let payload = stress_payload();
    let rounds = 3000;
    let start = Instant::now();
    for round in 1..=rounds {
        ok(conn_b.send(&Message::to(conn_a.id()).cookie(round).payload(&payload)));
        let m = ok(conn_a.recv_timeout(Some(SOON)));
        assert_eq!((m.src_id(), m.cookie()), (conn_b.id(), round));
        let echo = m.payload_bytes();
        assert_eq!(echo, payload, "round {round}");
        drop(m);
        ok(conn_a.send(&Message::to(conn_b.id()).cookie(round).payload(&echo)));
        let r = ok(conn_b.recv_timeout(Some(SOON)));
        assert_eq!((r.src_id(), r.cookie()), (conn_a.id(), round));
        assert_eq!(r.payload_bytes(), payload, "round {round}");
    }
    report("ping-pong", rounds, start);
    // Nothing left over on either side, and both can leave cleanly.
    ok(conn_a.byebye());
    ok(conn_b.byebye());
}

// selftest 33 with synchronous calls: a server thread answers every call
#[test]
fn benchmark_sync_calls() {
    let b = Broker::start();
    let server = b.conn();
    let client = b.conn();
    let payload = stress_payload();
    let rounds = 2000u64;
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| serve(&server, rounds));
        for round in 1..=rounds {
            let r = ok(client.call(
                Message::to(server.id()).cookie(round).payload(&payload),
                Duration::from_secs(10),
            ));
            assert_eq!(r.cookie_reply(), round);
            let mut want = payload.clone();
            want.reverse();
            assert_eq!(r.payload_bytes(), want, "round {round}");
        }
    });
    report("sync calls", rounds, start);
    assert_eq!(errno(client.recv()), kdbus::Errno::EAGAIN);
}

/// Answer `rounds` calls with the payload reversed.
fn serve(server: &Connection, rounds: u64) {
    for _ in 0..rounds {
        let m = ok(server.recv_timeout(Some(SOON)));
        assert!(m.expects_reply());
        let mut data = m.payload_bytes();
        data.reverse();
        let (src, cookie) = (m.src_id(), m.cookie());
        drop(m);
        ok(server.send(&Message::to(src).reply_to(cookie).payload(&data)));
    }
}

// Many messages in flight: bursts of 100 before the receiver drains them, in order
#[test]
fn benchmark_bursts() {
    let b = Broker::start();
    let sender = b.conn();
    let receiver = b.conn();
    let payload = stress_payload();
    let start = Instant::now();
    let mut cookie = 0;
    for _ in 0..20 {
        let first = cookie + 1;
        for _ in 0..100 {
            cookie += 1;
            ok(sender.send(&Message::to(receiver.id()).cookie(cookie).payload(&payload)));
        }
        for want in first..=cookie {
            let m = ok(receiver.recv_timeout(Some(SOON)));
            assert_eq!(m.cookie(), want);
            assert_eq!(m.payload().concat(), payload);
        }
    }
    report("bursts", cookie, start);
}
