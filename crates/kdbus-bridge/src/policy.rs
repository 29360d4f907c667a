//! The message policy, as D-Bus sees it: the facts a rule judges come from the
//! D-Bus header, messages to the driver are judged like any other, and denials are
//! worded as dbus-daemon words them.
//!
//! The rules themselves and where they are checked are the core's (`msgpolicy`,
//! `msgcheck`): every message, from a D-Bus client or a native one, is judged once
//! per receiver on the one SEND path. What the bridge adds is the reading of headers
//! ([`HeaderFacts`], which the broker installs so native payloads are read too), the
//! check of calls to the driver (which never enter the SEND path), and the
//! `AccessDenied` texts.

use crate::DRIVER;
use kdbus_core::msgpolicy::{Act, Denial, Facts, FactsReader, Party};
use kdbus_core::{ConnKey, Domain};
use kdbus_dbus::header::{self, Header};

/// Reads the facts of a native message whose payload is a D-Bus message.
pub struct HeaderFacts;

impl FactsReader for HeaderFacts {
    fn read<'a>(&self, payload: &'a [u8]) -> Facts<'a> {
        header::parse(payload).map_or_else(|_| Facts::default(), |h| header_facts(&h))
    }
}

/// The facts of a parsed header.
pub(crate) fn header_facts<'a>(h: &Header<'a>) -> Facts<'a> {
    Facts {
        known: true,
        msg_type: h.msg_type as u8,
        path: h.path,
        interface: h.interface,
        member: h.member,
        error: h.error_name,
        destination: h.destination,
        is_reply: h.reply_serial.is_some(),
        fds: h.unix_fds,
    }
}

/// May `key` send `h` to the driver? The text of the AccessDenied error if not.
pub(crate) fn policy_driver_call(dom: &Domain, key: ConnKey, h: &Header<'_>) -> Result<(), String> {
    let Some(rules) = dom.conn(key).and_then(|c| c.rules.clone()) else {
        return Ok(());
    };
    let f = header_facts(h);
    rules
        .may_send(&f, &Party::Named(Some(DRIVER)), false)
        .map(|_| ())
        .map_err(|d| policy_denial_text(dom, &d, h, key, None))
}

/// dbus-daemon's complaint about a denied message `h` from `sender` to `receiver`
/// (`None`: the bus).
pub(crate) fn policy_denial_text(
    dom: &Domain,
    d: &Denial,
    h: &Header<'_>,
    sender: ConnKey,
    receiver: Option<ConnKey>,
) -> String {
    let what = match d.act {
        Act::Receive => "Rejected receive message",
        _ => "Rejected send message",
    };
    let unset = |v: Option<&str>| v.unwrap_or("(unset)").to_string();
    format!(
        "{what}, {} matched rules; type=\"{}\", sender=\"{}\" ({}) interface=\"{}\" member=\"{}\" error name=\"{}\" requested_reply=\"{}\" destination=\"{}\" ({})",
        d.matched,
        h.msg_type.name(),
        dom.conn(sender)
            .map(|c| kdbus_dbus::names::UniqueName::from_id(c.id).to_string())
            .unwrap_or_default(),
        policy_who(dom, Some(sender)),
        unset(h.interface),
        unset(h.member),
        unset(h.error_name),
        u8::from(d.requested_reply),
        unset(h.destination),
        policy_who(dom, receiver),
    )
}

/// `uid=… pid=… comm="…"` of a connection (`bus` for the bus itself), as dbus-daemon
/// describes one.
pub(crate) fn policy_who(dom: &Domain, key: Option<ConnKey>) -> String {
    let Some(c) = key.and_then(|k| dom.conn(k)) else {
        return "bus".into();
    };
    let cmdline = key.and_then(|k| dom.conn_cmdline(k));
    let cmdline = cmdline.as_deref().unwrap_or(&[]);
    let comm: String = String::from_utf8_lossy(cmdline)
        .replace('\0', " ")
        .trim_end()
        .chars()
        .take(50)
        .collect();
    format!(
        "uid={} pid={} comm=\"{comm}\"",
        c.peer.creds.uid, c.peer.creds.pid
    )
}
