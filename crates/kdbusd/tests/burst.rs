//! An ordinary burst is delivered whole: four D-Bus senders each send 2,000 no-reply
//! calls of 20 KB to one receiver that reads all the time, and two senders broadcast
//! 2,000 signals of 20 KB each to three subscribers. Every call and every signal
//! arrives (with an 8 MiB quota per receiver, 82-89% of the calls and 74-78% of the
//! signals were dropped, silently; dbus-daemon delivered all). The receiver's stream
//! peaks at about 55 MB on an idle machine, more on a busy one: a lone sending user's
//! share of a stream (half of 128 MiB until the bound was raised) refused some in CI.

mod common;
#[path = "common/zbus_peer.rs"]
mod zbus_peer;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zbus::blocking::MessageIterator;
use zbus::message::{Flags, Message as ZMsg};
use zbus_peer::*;

const CALLERS: usize = 4;
const EMITTERS: usize = 2;
const SUBSCRIBERS: usize = 3;
const EACH: usize = 2000;
const SIZE: usize = 20 * 1024;

/// Count the messages of `member` a connection gets, in a thread.
fn count(c: zbus::blocking::Connection, member: &'static str) -> Arc<AtomicUsize> {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let it = MessageIterator::from(&c);
    std::thread::spawn(move || {
        let _keep = c;
        for m in it.flatten() {
            if m.header().member().is_some_and(|x| x.as_str() == member) {
                n2.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    n
}

#[test]
fn an_ordinary_burst_is_delivered_whole() {
    let b = Broker::start();
    let receiver = zconn(&b);
    let dest = unique(&receiver);
    let calls = count(receiver, "Burst");
    let signals: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| {
            let s = zconn(&b);
            add_match(&s, "type='signal',interface='org.kdbus.Burst'");
            count(s, "Tick")
        })
        .collect();
    let body = "x".repeat(SIZE);
    std::thread::scope(|s| {
        for _ in 0..CALLERS {
            let (c, dest, body) = (zconn(&b), dest.clone(), &body);
            s.spawn(move || {
                for _ in 0..EACH {
                    let m = ZMsg::method_call("/org/kdbus/Burst", "Burst")
                        .and_then(|m| m.destination(dest.as_str()))
                        .and_then(|m| m.interface("org.kdbus.Burst"))
                        .map(|m| m.with_flags(Flags::NoReplyExpected))
                        .and_then(|m| m?.build(body))
                        .expect("a call");
                    c.send(&m).expect("send");
                }
            });
        }
        for _ in 0..EMITTERS {
            let (c, body) = (zconn(&b), &body);
            s.spawn(move || {
                for _ in 0..EACH {
                    c.emit_signal(
                        None::<&str>,
                        "/org/kdbus/Burst",
                        "org.kdbus.Burst",
                        "Tick",
                        body,
                    )
                    .expect("emit");
                }
            });
        }
    });
    let want_calls = CALLERS * EACH;
    let want_signals = EMITTERS * EACH;
    let t0 = Instant::now();
    let z = zconn(&b);
    let stat = |key: &str| receiver_stat(&z, &dest, key);
    // Until everything arrived, or what did not arrive was refused to its senders
    // (who heard LimitsExceeded): no need to wait out the deadline for messages
    // that will never come.
    let done = wait_until(Duration::from_secs(120), || {
        let calls = calls.load(Ordering::Relaxed);
        let signals_done = signals
            .iter()
            .all(|n| n.load(Ordering::Relaxed) == want_signals);
        signals_done
            && (calls == want_calls
                || (calls as u64 + stat("RefusedMessages").unwrap_or(0)) >= want_calls as u64)
    });
    let got: Vec<usize> = signals.iter().map(|n| n.load(Ordering::Relaxed)).collect();
    let calls = calls.load(Ordering::Relaxed);
    let (refused, peak) = (stat("RefusedMessages"), stat("PeakOutgoingBytes"));
    eprintln!(
        "after {:?}: calls {calls}, signals {got:?}; the receiver refused {refused:?}, \
         and its stream held at most {peak:?} bytes",
        t0.elapsed()
    );
    assert!(
        done && calls == want_calls,
        "calls {calls} of {want_calls}, signals {got:?} of {want_signals} each; \
         the receiver refused {refused:?}, its stream peaked at {peak:?} bytes"
    );
}

/// One number from the receiver's `GetConnectionStats`.
fn receiver_stat(z: &zbus::blocking::Connection, dest: &str, key: &str) -> Option<u64> {
    let m = z
        .call_method(
            Some(DRIVER),
            DRIVER_PATH,
            Some("org.freedesktop.DBus.Debug.Stats"),
            "GetConnectionStats",
            &(dest,),
        )
        .ok()?;
    let s: std::collections::HashMap<String, zbus::zvariant::OwnedValue> =
        m.body().deserialize().ok()?;
    let v = s.get(key)?;
    u64::try_from(v)
        .ok()
        .or_else(|| u32::try_from(v).ok().map(u64::from))
}
