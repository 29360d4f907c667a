//! The SASL server (kdbus-dbus `sasl`): the first thing an unauthenticated D-Bus
//! client talks to, with any bytes it likes, in reads of any size.
//!
//! Input: byte 0 picks the server's options (the peer's uid, whether fds may pass),
//! byte 1 seeds how the rest is cut into reads; the rest is what the client sends.
//! Checks: no panic; fed all at once or read by read (the broker keeps what `feed` did
//! not consume and feeds it again with the next read), the server answers the same
//! bytes, ends in the same state and hands the same bytes on to the message stream.
#![no_main]

use kdbus_dbus::sasl::{Sasl, SaslError};
use libfuzzer_sys::fuzz_target;

struct Outcome {
    result: Result<(), SaslError>,
    out: Vec<u8>,
    done: bool,
    fds: bool,
    /// Input bytes the SASL server took (the rest is the message stream's).
    consumed: usize,
}

fn new_server(opts: u8) -> Sasl {
    let uid = [0, 1000, 1001, u32::MAX][(opts & 3) as usize];
    Sasl::new(uid, [0xab; 16], opts & 4 != 0)
}

fn whole(opts: u8, data: &[u8]) -> Outcome {
    let mut s = new_server(opts);
    let mut out = Vec::new();
    let r = s.feed(data, &mut out);
    if let Ok(p) = r {
        assert!(p.consumed <= data.len());
        assert_eq!(p.done, s.is_done());
    }
    Outcome {
        consumed: r.map_or(0, |p| p.consumed),
        result: r.map(|_| ()),
        out,
        done: s.is_done(),
        fds: s.fds_agreed(),
    }
}

/// As the broker reads a socket: reads of varying sizes appended to a buffer, which
/// loses what the server consumed.
fn in_reads(opts: u8, seed: u8, data: &[u8]) -> Outcome {
    let mut s = new_server(opts);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut consumed = 0;
    let mut at = 0;
    let mut step = seed as usize;
    let mut result = Ok(());
    while at < data.len() && !s.is_done() {
        step = step.wrapping_mul(31).wrapping_add(7);
        let n = (step % 17 + 1).min(data.len() - at);
        buf.extend_from_slice(&data[at..at + n]);
        at += n;
        match s.feed(&buf, &mut out) {
            Ok(p) => {
                assert!(p.consumed <= buf.len());
                buf.drain(..p.consumed);
                consumed += p.consumed;
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    Outcome {
        result,
        out,
        done: s.is_done(),
        fds: s.fds_agreed(),
        consumed,
    }
}

fuzz_target!(|data: &[u8]| {
    let [opts, seed, rest @ ..] = data else {
        return;
    };
    let a = whole(*opts, rest);
    let b = in_reads(*opts, *seed, rest);
    assert_eq!(a.result, b.result, "read boundaries changed the outcome");
    assert_eq!(a.out, b.out, "read boundaries changed the answers");
    assert_eq!((a.done, a.fds), (b.done, b.fds));
    if a.done {
        assert_eq!(
            a.consumed, b.consumed,
            "read boundaries moved the stream's start"
        );
    }
});
