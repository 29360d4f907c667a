//! D-Bus messages as a D-Bus client's stream delivers them (kdbus-dbus `header`,
//! `marshal`, `rules::string_args`, `bloom`): the broker frames the stream with
//! `message_len`, parses every header (`parse`), rewrites it with the sender it vouches
//! for (`write`), reads string arguments for match rules and signal bloom filters, and
//! the driver unmarshals bodies with `Reader`. All of it sees bytes an unauthenticated
//! peer chose (after SASL), and native SENDs' payloads are parsed too when a bus has
//! a message policy.
//!
//! Input: a byte stream, framed as kdbusd frames a D-Bus socket; the whole input is
//! also parsed as one message.
//! Checks: no panic; framing and parsing agree on the length; a parsed header
//! rewritten by the bus parses again to the same fields; body walks stay inside.
#![no_main]

use kdbus_dbus::bloom::{signal_filter, SignalSpec};
use kdbus_dbus::header::{self, MessageType};
use kdbus_dbus::marshal::Reader;
use libfuzzer_sys::fuzz_target;

fn check_message(msg: &[u8]) {
    let framed = header::message_len(msg);
    let Ok(h) = header::parse(msg) else {
        return;
    };
    assert_eq!(h.header_len % 8, 0);
    assert!(h.header_len <= msg.len());
    assert_eq!(
        framed.ok().flatten(),
        Some(h.total_len()),
        "message_len and parse disagree on the length"
    );

    // The bus's rewrite parses again to the same fields, with the bus's sender.
    let mut out = Vec::new();
    header::write(&mut out, &h, Some(":1.42"));
    assert_eq!(out.len() % 8, 0);
    let again = header::parse(&out).expect("a rewritten header parses");
    assert_eq!(again.header_len, out.len());
    assert_eq!(
        (again.msg_type, again.flags, again.serial, again.body_len),
        (h.msg_type, h.flags, h.serial, h.body_len)
    );
    assert_eq!(
        (again.path, again.interface, again.member, again.error_name),
        (h.path, h.interface, h.member, h.error_name)
    );
    assert_eq!(
        (
            again.reply_serial,
            again.destination,
            again.signature,
            again.unix_fds
        ),
        (h.reply_serial, h.destination, h.signature, h.unix_fds)
    );
    assert_eq!(again.sender, Some(":1.42"));
    assert_eq!(
        header::message_len(&out).ok().flatten(),
        Some(again.total_len())
    );

    // The body, as far as it arrived: walk it by its signature.
    let start = h.header_len.min(msg.len());
    let body = &msg[start..h.total_len().min(msg.len())];
    let mut r = Reader::new(body, h.endian);
    let mut sig = h.signature.as_bytes();
    while !sig.is_empty() {
        match r.skip(sig, 0) {
            Ok(rest) => {
                assert!(rest.len() < sig.len(), "skip made no progress");
                sig = rest;
            }
            Err(_) => break,
        }
        assert!(r.pos() <= body.len());
    }
    let args = kdbus_dbus::rules::string_args(body, h.endian, h.signature, 64);
    assert!(args.len() <= 64);
    // The driver's argument readers on the body.
    let mut r = Reader::new(body, h.endian);
    let _ = r.string().and_then(|_| r.u32());
    let mut r = Reader::new(body, h.endian);
    if let Ok(end) = r.array_begin(4) {
        while r.pos() < end {
            if r.string().is_err() {
                break;
            }
        }
    }
    // A signal's bloom filter, from its header and leading string arguments.
    if h.msg_type == MessageType::Signal {
        let strs: Vec<Option<&str>> = args.iter().map(|a| a.map(|(_, s)| s)).collect();
        let spec = SignalSpec {
            interface: h.interface,
            member: h.member,
            path: h.path,
            args: &strs,
        };
        let p = kdbus_abi::BloomParameter {
            size: 64,
            n_hash: 8,
        };
        let f = signal_filter(p, &spec);
        assert_eq!(f.words().len(), 8);
    }
}

fuzz_target!(|data: &[u8]| {
    // Framing, as kdbusd reads a D-Bus socket.
    let mut at = 0;
    while at < data.len() {
        let avail = &data[at..];
        let len = match header::message_len(avail) {
            Ok(Some(len)) if len <= avail.len() => len,
            _ => break,
        };
        assert!(len >= header::FIXED_SIZE);
        check_message(&avail[..len]);
        at += len;
    }
    // One message, however long its body claims to be.
    check_message(data);
});
