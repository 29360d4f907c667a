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

use kdbus_dbus::bloom::{match_mask, signal_filter, MatchSpec, SignalSpec};
use kdbus_dbus::header::{self, MessageType};
use kdbus_dbus::rules::{string_args, ArgTest, Rule};
use libfuzzer_sys::fuzz_target;

const BLOOM: kdbus_abi::BloomParameter = kdbus_abi::BloomParameter {
    size: 64,
    n_hash: 8,
};

/// The mask kdbus-bridge's driver uploads for `rule` (`kernel_rule_items`).
fn rule_mask(rule: &Rule) -> Option<kdbus_dbus::bloom::Bloom> {
    let pick = |want: fn(&ArgTest) -> Option<&str>| -> Vec<(u8, &str)> {
        rule.args
            .iter()
            .filter_map(|(i, t)| want(t).map(|v| (*i, v)))
            .collect()
    };
    let args = pick(|t| match t {
        ArgTest::Equals(v) => Some(v),
        _ => None,
    });
    let namespaces = pick(|t| match t {
        ArgTest::Namespace(v) => Some(v),
        _ => None,
    });
    let spec = MatchSpec {
        message_type: rule.msg_type.map(MessageType::name),
        interface: rule.interface.as_deref(),
        member: rule.member.as_deref(),
        path: rule.path.as_deref(),
        path_namespace: rule.path_namespace.as_deref(),
        args: &args,
        arg_paths: &[],
        arg_namespaces: &namespaces,
    };
    match_mask(BLOOM, &spec)
}

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
        let _ = rule_mask(r);
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
        // The signal's filter, as kdbus-bridge's router builds it.
        let args: Vec<Option<&str>> = string_args(body, h.endian, h.signature, 64)
            .into_iter()
            .map(|a| a.map(|(_, v)| v))
            .collect();
        let spec = SignalSpec {
            interface: h.interface,
            member: h.member,
            path: h.path,
            args: &args,
        };
        let filter = signal_filter(BLOOM, &spec);
        // (Two gaps this check found, an argument equal to a namespace and strings
        // behind other arguments, are closed: no case is skipped.)
        if let Some(mask) = rule_mask(&rule) {
            assert!(
                filter.covers(&mask),
                "rule {text:?} matches a broadcast signal whose bloom filter does not cover \
                 the rule's mask: the bus would not deliver it"
            );
        }
    }
});
