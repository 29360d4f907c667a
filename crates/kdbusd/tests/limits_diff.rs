//! The configuration's `<limit>`s, enforced: one case per limit, the same
//! configuration and client script against dbus-daemon and kdbusd (harness:
//! `common/diff.rs`), the answers equal. Skipped without root, dbus-daemon, dbus-send or
//! setpriv.

#[path = "common/diff.rs"]
mod diff;
use diff::*;

const LIMITS: &str = "org.freedesktop.DBus.Error.LimitsExceeded";

fn limit(name: &str, value: u64) -> String {
    format!("<limit name=\"{name}\">{value}</limit>")
}

#[test]
fn max_names_per_connection() {
    if !usable() {
        return;
    }
    // A unique name counts (dbus-daemon): the caller has its own and
    // org.test.Caller, one service three.
    case(
        &limit("max_names_per_connection", 3),
        &[
            Step::RootOwn("org.test.Two"),
            Step::Texts,
            Step::RootOwn("org.test.Three"),
        ],
        &["1", "ok", &format!("{LIMITS}: Connection \":1.N\" is not allowed to own more services (increase limits in configuration file if required; max_names_per_connection=3)")],
    );
}

#[test]
fn max_match_rules_per_connection() {
    if !usable() {
        return;
    }
    case(
        &limit("max_match_rules_per_connection", 2),
        &[
            Step::RootMatch("type='signal',member='A'"),
            Step::RootMatch("type='signal',member='B'"),
            Step::Texts,
            Step::RootMatch("type='signal',member='C'"),
        ],
        &["ok", "ok", "ok", &format!("{LIMITS}: Connection \":1.N\" is not allowed to add more match rules (increase limits in configuration file if required; max_match_rules_per_connection=2)")],
    );
}

#[test]
fn max_replies_per_connection() {
    if !usable() {
        return;
    }
    case(
        &limit("max_replies_per_connection", 1),
        &[
            Step::RootHold(None),
            Step::Texts,
            Step::RootCall("org.test.B", "org.x.I.M", 0),
        ],
        &[
            "ok",
            "ok",
            &format!(
                "{LIMITS}: The maximum number of pending replies per connection has been reached"
            ),
        ],
    );
}

#[test]
fn reply_timeout() {
    if !usable() {
        return;
    }
    case(
        &limit("reply_timeout", 300),
        &[Step::Texts, Step::RootHold(Some(5))],
        &["ok", "org.freedesktop.DBus.Error.NoReply: Message did not receive a reply (timeout by message bus)"],
    );
}

#[test]
fn max_connections_per_user() {
    if !usable() {
        return;
    }
    // root has three: two services and the caller.
    case(
        &limit("max_connections_per_user", 4),
        &[Step::RootConnect, Step::RootConnect],
        &["ok", "refused"],
    );
}

#[test]
fn max_completed_connections() {
    if !usable() {
        return;
    }
    case(
        &limit("max_completed_connections", 4),
        &[Step::RootConnect, Step::RootConnect],
        &["ok", "refused"],
    );
}

#[test]
fn max_message_size() {
    if !usable() {
        return;
    }
    case(
        &limit("max_message_size", 4096),
        &[Step::RootSend(1000, 0), Step::RootSend(8000, 0)],
        &["ok", "disconnected"],
    );
}

#[test]
fn max_message_unix_fds() {
    if !usable() {
        return;
    }
    case(
        &limit("max_message_unix_fds", 2),
        &[Step::RootSend(10, 2), Step::RootSend(10, 3)],
        &["ok", "disconnected"],
    );
}

#[test]
fn auth_timeout() {
    if !usable() {
        return;
    }
    case(
        &limit("auth_timeout", 300),
        &[Step::RawIdle(50), Step::RawIdle(1500)],
        &["open", "closed"],
    );
}

#[test]
fn max_incomplete_connections() {
    if !usable() {
        return;
    }
    case(
        &limit("max_incomplete_connections", 2),
        &[
            Step::RawIdle(50),
            Step::RawIdle(50),
            Step::RawIdle(200),
            // One too many waits, unanswered, until one of the others has said Hello
            // or gone (dbus-daemon stops accepting).
            Step::RawSasl(2),
            Step::RawSasl(0),
        ],
        &["open", "open", "open", "silent", "answered"],
    );
}

/// A receiver that does not read: what others send it piles up to
/// `max_outgoing_bytes`, then a call that does not fit is refused. (kdbusd shares the
/// bound out among sending users as dbus-broker does, a single one getting about half
/// of it, so a small call may still fit where dbus-daemon refuses everything: the call
/// here is larger than half.)
#[test]
fn max_outgoing_bytes() {
    if !usable() {
        return;
    }
    case(
        &limit("max_outgoing_bytes", 100_000),
        &[
            Step::RawReceiver,
            // Beyond what the kernel's socket buffers take in.
            Step::Flood(600, 10_000),
            Step::CallRaw(60_000),
        ],
        &["ok", "ok", LIMITS],
    );
}

/// A receiver that does not read: once its socket is full, the fds others send it
/// pile up to `max_outgoing_unix_fds`, then a call whose fds do not fit is refused.
#[test]
fn max_outgoing_unix_fds() {
    if !usable() {
        return;
    }
    case(
        &limit("max_outgoing_unix_fds", 16),
        &[
            Step::RawReceiver,
            // Beyond what the kernel's socket buffers take in.
            Step::Flood(600, 10_000),
            Step::FloodFds(20, 1),
            Step::CallRawFds(1),
        ],
        &["ok", "ok", "ok", LIMITS],
    );
}

/// `pending_fd_timeout`: a client that sent fds with the start of a message and
/// never the rest is disconnected once the timeout has passed, not before.
#[test]
fn pending_fd_timeout() {
    if !usable() {
        return;
    }
    case(
        &limit("pending_fd_timeout", 700),
        &[Step::FdsPending(100), Step::FdsPending(2000)],
        &["open", "closed"],
    );
}

/// The `max_container*` limits are about dbus-daemon's `Containers1` interface, which
/// distributions do not build: set to 0 they bind nothing, in either broker.
#[test]
fn container_limits_bind_nothing() {
    if !usable() {
        return;
    }
    let limits: String = [
        "max_containers",
        "max_containers_per_user",
        "max_container_metadata_bytes",
        "max_connections_per_container",
    ]
    .iter()
    .map(|l| limit(l, 0))
    .collect();
    case(
        &limits,
        &[
            Step::RootConnect,
            Step::RootSend(10, 1),
            Step::RootOwn("org.test.C"),
        ],
        &["ok", "ok", "1"],
    );
}

/// Messages are taken off a client's socket as they come and routed at once, so a
/// small `max_incoming_bytes` does not keep a larger message from going through (in
/// dbus-daemon neither).
#[test]
fn max_incoming_bytes() {
    if !usable() {
        return;
    }
    case(
        &format!(
            "{}{}",
            limit("max_incoming_bytes", 1000),
            limit("max_incoming_unix_fds", 1)
        ),
        &[Step::RootSend(8000, 0), Step::RootSend(10, 2)],
        &["ok", "ok"],
    );
}

/// A callee that leaves without answering: the caller hears it from the bus, in
/// dbus-daemon's words.
#[test]
fn a_callee_that_leaves_without_answering() {
    if !usable() {
        return;
    }
    case(
        "",
        &[Step::Texts, Step::RootCall("org.test.A", "org.x.I.Vanish", 0)],
        &[
            "ok",
            "org.freedesktop.DBus.Error.NoReply: Message recipient disconnected from message bus without replying",
        ],
    );
}
