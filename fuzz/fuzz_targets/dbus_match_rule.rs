//! D-Bus match rules (kdbus-dbus `rules`): `AddMatch`/`RemoveMatch` strings come from
//! any D-Bus client, are parsed by `Rule::parse`, and every message a client may see
//! is judged by `Rule::matches` (which unmarshals the body's leading arguments).
//! Signals cross the bus as kdbus broadcasts gated by bloom filters, so the rule's
//! bloom mask and the signal's bloom filter (kdbus-dbus `bloom`, built here exactly
//! as kdbus-bridge builds them) must agree with `Rule::matches`.
//!
//! Input: `rule text` NUL `D-Bus message`.
//! Checks: no panic; the empty rule matches every message; a broadcast signal that a
//! rule matches has a bloom filter covering that rule's mask (else the bus would drop
//! a signal the client asked for).
#![no_main]

use kdbus_dbus::header::{self, MessageType};
use kdbus_dbus::rules::{signal_bloom, Rule};
use libfuzzer_sys::fuzz_target;

const BLOOM: kdbus_abi::BloomParameter = kdbus_abi::BloomParameter {
    size: 64,
    n_hash: 8,
};

fuzz_target!(|data: &[u8]| {
    let (text, msg) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(text);
    let rule = Rule::parse(&text);
    if let Ok(r) = &rule {
        assert!(r.args.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(r
            .args
            .iter()
            .all(|(i, _)| (*i as usize) <= kdbus_dbus::rules::MAX_ARG));
        let _ = r.is_eavesdropping();
        let _ = r.bloom_mask(BLOOM);
    }
    let Ok(h) = header::parse(msg) else {
        return;
    };
    let body = &msg[h.header_len.min(msg.len())..h.total_len().min(msg.len())];
    let sender = ":1.42";
    let owns = |n: &str| n.len() % 2 == 0;
    assert!(
        Rule::default().matches(&h, sender, &owns, body),
        "the empty rule refused a message"
    );
    let Ok(rule) = rule else {
        return;
    };
    let matched = rule.matches(&h, sender, &owns, body);
    if matched && h.msg_type == MessageType::Signal && h.destination.is_none() {
        // The signal's filter and the rule's mask, as the bus computes them.
        let filter = signal_bloom(BLOOM, &h, body);
        // (Two gaps this check found, an argument equal to a namespace and strings
        // behind other arguments, are closed: no case is skipped.)
        if let Some(mask) = rule.bloom_mask(BLOOM) {
            assert!(
                filter.covers(&mask),
                "rule {text:?} matches a broadcast signal whose bloom filter does not cover \
                 the rule's mask: the bus would not deliver it"
            );
        }
    }
});
