//! The client library's message path allocates nothing per message once warm: a call,
//! its receipt by the service, the reply and its receipt reuse the buffers the
//! connections already have.
//!
//! The client needs a broker to talk to, and the broker is a separate process here, so
//! a counting global allocator in this test binary counts the client library's
//! allocations (and the test's own, which the rounds below avoid) and nothing of the
//! broker's. Counting is switched on only around the rounds, after a warm-up in which
//! queues, maps and buffers reach their working size.

#[path = "../../kdbus-core/tests/support/counting.rs"]
mod counting;
use counting::{allocs, counted_all};

mod common;
use common::*;
use kdbus::{Connection, Message};
use std::sync::Mutex;
use std::time::Duration;

/// The tests of this binary run one at a time: the count is process-wide, so another
/// test warming up would be counted too.
static SERIAL: Mutex<()> = Mutex::new(());

const WARMUP: u64 = 200;
const ROUNDS: u64 = 1000;

/// Allocations made while `f` runs (by any thread of this process).
fn count(f: impl FnOnce()) -> usize {
    let before = allocs();
    counted_all(f);
    allocs() - before
}

/// The payload vectors of a message add up to `want` (without collecting them).
fn same_payload(m: &kdbus::Received<'_>, want: &[u8]) -> bool {
    let mut rest = want;
    for p in m.payloads() {
        match rest.strip_prefix(p) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

/// One round on one thread: an asynchronous call (EXPECT_REPLY), the service takes it
/// and replies, the caller takes the reply out of its queue.
fn async_round(client: &Connection, service: &Connection, cookie: u64, payload: &[u8]) {
    let deadline = kdbus::monotonic_ns() + 10_000_000_000;
    ok(client.send(
        &Message::to(service.id())
            .cookie(cookie)
            .expect_reply(deadline)
            .payload(&payload[..16])
            .payload(&payload[16..]),
    ));
    let m = ok(service.recv_timeout(Some(SOON)));
    assert_eq!((m.src_id(), m.cookie()), (client.id(), cookie));
    assert!(m.expects_reply());
    assert!(same_payload(&m, payload));
    let (src, cookie) = (m.src_id(), m.cookie());
    drop(m);
    ok(service.send(&Message::to(src).reply_to(cookie).payload(payload)));
    let r = ok(client.recv_timeout(Some(SOON)));
    assert_eq!((r.src_id(), r.cookie_reply()), (service.id(), cookie));
    assert!(same_payload(&r, payload));
}

#[test]
fn async_round_trips_allocate_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let b = Broker::start();
    let client = b.conn();
    let service = b.conn();
    // Odd length: the encoder pads between and after payload vectors.
    let payload: Vec<u8> = (0..61u8).collect();
    for cookie in 1..=WARMUP {
        async_round(&client, &service, cookie, &payload);
    }
    let allocs = count(|| {
        for cookie in WARMUP + 1..=WARMUP + ROUNDS {
            async_round(&client, &service, cookie, &payload);
        }
    });
    assert!(
        allocs == 0,
        "{allocs} allocations in {ROUNDS} round trips ({:.2} per round trip)",
        allocs as f64 / ROUNDS as f64
    );
}

#[test]
fn sync_calls_allocate_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let b = Broker::start();
    let client = b.conn();
    let service = b.conn();
    let payload: Vec<u8> = (0..64u8).collect();
    let total = WARMUP + ROUNDS;
    std::thread::scope(|s| {
        // The service answers every call with its payload, as `kdbusctl serve` does.
        s.spawn(|| {
            for _ in 0..total {
                let m = ok(service.recv_timeout(Some(SOON)));
                assert!(m.expects_reply() && same_payload(&m, &payload));
                let (src, cookie) = (m.src_id(), m.cookie());
                drop(m);
                ok(service.send(&Message::to(src).reply_to(cookie).payload(&payload)));
            }
        });
        let call = |cookie: u64| {
            let r = ok(client.call(
                Message::to(service.id()).cookie(cookie).payload(&payload),
                Duration::from_secs(10),
            ));
            assert_eq!(r.cookie_reply(), cookie);
            assert!(same_payload(&r, &payload));
        };
        for cookie in 1..=WARMUP {
            call(cookie);
        }
        let allocs = count(|| {
            for cookie in WARMUP + 1..=total {
                call(cookie);
            }
        });
        assert!(
            allocs == 0,
            "{allocs} allocations in {ROUNDS} calls ({:.2} per round trip)",
            allocs as f64 / ROUNDS as f64
        );
    });
}
