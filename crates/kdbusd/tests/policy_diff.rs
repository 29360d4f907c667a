//! The configuration's `<policy>`, enforced: the same configuration file and the same
//! client script run against dbus-daemon and against kdbusd (the harness is
//! `common/diff.rs`), and the answers must be equal, one case per attribute and
//! context. Skipped without root, dbus-daemon, dbus-send or setpriv.

#[path = "common/diff.rs"]
mod diff;
use diff::*;
use std::path::Path;

const DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";

#[test]
fn send_destination_is_judged_by_the_names_the_receiver_holds() {
    if !usable() {
        return;
    }
    case(
        r#"<policy context="default"><allow send_destination="org.test.B"/></policy>"#,
        &[
            Step::Call(NOBODY, "org.test.B", "/", "org.x.I.M"),
            // The same connection, by another of its names: still allowed.
            Step::Call(NOBODY, "org.other.C", "/", "org.x.I.M"),
            Step::Call(NOBODY, "org.test.A", "/", "org.x.I.M"),
        ],
        &["ok", "ok", DENIED],
    );
}

#[test]
fn send_destination_prefix() {
    if !usable() {
        return;
    }
    case(
        r#"<policy context="default"><allow send_destination_prefix="org.test.A"/>
           <allow send_destination_prefix="org.other"/></policy>"#,
        &[
            Step::Call(NOBODY, "org.test.A", "/", "org.x.I.M"),
            // org.test.B's owner also holds org.other.C: allowed, as by name.
            Step::Call(NOBODY, "org.test.B", "/", "org.x.I.M"),
        ],
        &["ok", "ok"],
    );
    case(
        r#"<policy context="default"><allow send_destination_prefix="org.test.A"/></policy>"#,
        &[
            Step::Call(NOBODY, "org.test.A", "/", "org.x.I.M"),
            Step::Call(NOBODY, "org.test.B", "/", "org.x.I.M"),
        ],
        &["ok", DENIED],
    );
}

#[test]
fn send_interface_member_and_path() {
    if !usable() {
        return;
    }
    case(
        r#"<policy context="default">
             <allow send_destination="org.test.A" send_interface="org.x.Open"/>
             <deny send_destination="org.test.A" send_interface="org.x.Open" send_member="Close"/>
             <allow send_destination="org.test.A" send_path="/open"/>
           </policy>"#,
        &[
            Step::Call(NOBODY, "org.test.A", "/", "org.x.Open.Read"),
            Step::Call(NOBODY, "org.test.A", "/", "org.x.Open.Close"),
            Step::Call(NOBODY, "org.test.A", "/", "org.x.Shut.Read"),
            Step::Call(NOBODY, "org.test.A", "/open", "org.x.Shut.Read"),
        ],
        &["ok", DENIED, DENIED, "ok"],
    );
}

#[test]
fn send_type() {
    if !usable() {
        return;
    }
    case(
        r#"<policy context="default"><allow send_type="method_call"/></policy>
           <policy context="default"><deny send_type="method_call" send_destination="org.test.B"/></policy>"#,
        &[
            Step::Call(NOBODY, "org.test.A", "/", "org.x.I.M"),
            Step::Call(NOBODY, "org.test.B", "/", "org.x.I.M"),
        ],
        &["ok", DENIED],
    );
}

#[test]
fn user_and_group_policies_and_mandatory_last() {
    if !usable() {
        return;
    }
    case(
        r#"<policy user="nobody"><allow send_destination="org.test.A"/></policy>
           <policy group="daemon"><allow send_destination="org.test.B"/></policy>
           <policy context="mandatory"><deny send_destination="org.test.A" send_interface="org.x.Never"/></policy>"#,
        &[
            Step::Call(NOBODY, "org.test.A", "/", "org.x.I.M"),
            Step::Call(DAEMON, "org.test.A", "/", "org.x.I.M"),
            Step::Call(DAEMON, "org.test.B", "/", "org.x.I.M"),
            Step::Call(NOBODY, "org.test.B", "/", "org.x.I.M"),
            Step::Call(NOBODY, "org.test.A", "/", "org.x.Never.M"),
        ],
        &["ok", DENIED, "ok", DENIED, DENIED],
    );
}

#[test]
fn at_console_rules_apply_to_nobody_at_a_console() {
    if !usable() {
        return;
    }
    case(
        r#"<policy at_console="true"><allow send_destination="org.test.A"/></policy>
           <policy at_console="false"><allow send_destination="org.test.B"/></policy>"#,
        &[
            Step::Call(NOBODY, "org.test.A", "/", "org.x.I.M"),
            Step::Call(NOBODY, "org.test.B", "/", "org.x.I.M"),
        ],
        &[DENIED, "ok"],
    );
}

#[test]
fn own_and_own_prefix() {
    if !usable() {
        return;
    }
    case(
        r#"<policy user="nobody"><allow own="org.test.Mine"/><allow own_prefix="org.pre"/></policy>"#,
        &[
            Step::Own(NOBODY, "org.test.Mine"),
            Step::Own(NOBODY, "org.test.Other"),
            Step::Own(NOBODY, "org.pre.a.b"),
            Step::Own(NOBODY, "org.prefix"),
            Step::Own(DAEMON, "org.test.Mine"),
        ],
        &["1", DENIED, "1", DENIED, DENIED],
    );
}

#[test]
fn receive_rules_of_the_receiver() {
    if !usable() {
        return;
    }
    // Root's services refuse to receive some calls; the caller hears of it.
    case(
        r#"<policy context="default"><allow send_destination="org.test.A"/></policy>
           <policy user="root">
             <deny receive_interface="org.x.Secret" receive_type="method_call"/>
             <deny receive_path="/hidden" receive_member="M"/>
             <deny receive_sender="org.test.Caller" receive_interface="org.x.NotFromCaller"/>
           </policy>"#,
        &[
            Step::Call(NOBODY, "org.test.A", "/", "org.x.Public.M"),
            Step::Call(NOBODY, "org.test.A", "/", "org.x.Secret.M"),
            Step::Call(NOBODY, "org.test.A", "/hidden", "org.x.Public.M"),
            Step::Call(NOBODY, "org.test.A", "/hidden", "org.x.Public.N"),
            Step::RootCall("org.test.A", "org.x.NotFromCaller.M", 0),
            Step::RootCall("org.test.A", "org.x.Public.M", 0),
        ],
        &["ok", DENIED, DENIED, "ok", DENIED, "ok"],
    );
}

#[test]
fn fd_counts() {
    if !usable() {
        return;
    }
    case(
        r#"<policy user="root">
             <deny send_destination="org.test.A" send_interface="org.x.Fds" min_fds="1"/>
             <deny receive_interface="org.x.NoFds" max_fds="0"/>
           </policy>"#,
        &[
            Step::RootCall("org.test.A", "org.x.Fds.M", 0),
            Step::RootCall("org.test.A", "org.x.Fds.M", 1),
            Step::RootCall("org.test.A", "org.x.NoFds.M", 1),
            Step::RootCall("org.test.A", "org.x.NoFds.M", 0),
        ],
        &["ok", DENIED, "ok", DENIED],
    );
}

/// The installed system bus configuration (Debian's `system.conf` and the packages'
/// `system.d/*.conf`), as a distribution starts it: an unprivileged user is refused
/// what dbus-daemon refuses it.
#[test]
fn the_installed_system_bus_policy() {
    if !usable() || !Path::new("/usr/share/dbus-1/system.d/org.freedesktop.login1.conf").exists() {
        eprintln!("skipped: needs the installed system bus configuration (systemd's login1)");
        return;
    }
    let services: &[&[&str]] = &[&["org.freedesktop.login1"], &["org.freedesktop.hostname1"]];
    run_both(
        Config::System,
        services,
        &[
            Step::Call(
                NOBODY,
                "org.freedesktop.login1",
                "/",
                "org.freedesktop.login1.Manager.ListSessions",
            ),
            Step::Call(
                NOBODY,
                "org.freedesktop.login1",
                "/",
                "org.freedesktop.login1.Manager.Frobnicate",
            ),
            Step::Call(
                NOBODY,
                "org.freedesktop.login1",
                "/",
                "org.freedesktop.DBus.Properties.Set",
            ),
            Step::Call(
                NOBODY,
                "org.freedesktop.hostname1",
                "/",
                "org.example.Any.Thing",
            ),
            Step::Own(NOBODY, "org.freedesktop.login1"),
            Step::Own(NOBODY, "org.example.Mine"),
            Step::Call(
                NOBODY,
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.Debug.Stats.GetStats",
            ),
            Step::Call(
                NOBODY,
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.GetId",
            ),
        ],
        &["ok", DENIED, DENIED, "ok", DENIED, DENIED, DENIED, "ok"],
    );
}

/// The texts of the refusals, as dbus-daemon words them.
#[test]
fn denials_are_worded_as_dbus_daemon_words_them() {
    if !usable() {
        return;
    }
    let driver = "org.freedesktop.DBus";
    let path = "/org/freedesktop/DBus";
    case(
        r#"<policy user="nobody"><allow send_destination="org.test.A" send_interface="org.x.Open"/></policy>"#,
        &[
            Step::CallText(NOBODY, driver, path, "org.freedesktop.DBus.Debug.Stats.GetStats"),
            Step::CallText(NOBODY, "org.test.A", "/", "org.x.Shut.M"),
        ],
        &[
            "Error org.freedesktop.DBus.Error.AccessDenied: Rejected send message, 1 matched rules; type=\"method_call\", sender=\":1.N\" (uid=65534 pid=N comm=\"N\") interface=\"org.freedesktop.DBus.Debug.Stats\" member=\"GetStats\" error name=\"(unset)\" requested_reply=\"0\" destination=\"org.freedesktop.DBus\" (bus)",
            "Error org.freedesktop.DBus.Error.AccessDenied: Rejected send message, 1 matched rules; type=\"method_call\", sender=\":1.N\" (uid=65534 pid=N comm=\"N\") interface=\"org.x.Shut\" member=\"M\" error name=\"(unset)\" requested_reply=\"0\" destination=\"org.test.A\" (uid=0 pid=N comm=\"N\")",
        ],
    );
}

/// `ReloadConfig` and SIGHUP put a rewritten configuration in force at once; a file
/// that does not load is refused and the old configuration stays.
#[test]
fn reload_config_and_sighup() {
    if !usable() {
        return;
    }
    case(
        r#"<policy user="nobody"><allow own="org.test.Before"/></policy>"#,
        &[
            Step::Own(NOBODY, "org.test.After"),
            Step::Reconfigure(r#"<policy user="nobody"><allow own="org.test.After"/></policy>"#),
            Step::Reload,
            Step::Own(NOBODY, "org.test.After"),
            Step::Own(NOBODY, "org.test.Before"),
            Step::Reconfigure(BROKEN),
            Step::Reload,
            Step::Own(NOBODY, "org.test.After"),
            Step::Reconfigure(r#"<policy user="nobody"><allow own="org.test.Hup"/></policy>"#),
            Step::Hangup,
            Step::Own(NOBODY, "org.test.Hup"),
            Step::Own(NOBODY, "org.test.After"),
        ],
        &[
            DENIED,
            "ok",
            "ok",
            "1",
            DENIED,
            "ok",
            "org.freedesktop.DBus.Error.Failed",
            "1",
            "ok",
            "ok",
            "1",
            DENIED,
        ],
    );
}

/// Error replies, and what `requested_reply` means: a deny rule without it is about
/// unrequested replies only, so a requested error passes it; with it, the error is
/// refused and the caller hears only the bus's NoReply when the reply timeout ends.
/// (An error rule needs its type: a message without an error name matches any
/// `send_error`, so `<deny send_error=…/>` alone would deny every call, in
/// dbus-daemon as here.)
#[test]
fn send_error_receive_error_and_requested_reply() {
    if !usable() {
        return;
    }
    const ERR: &str = "org.x.Err";
    const NO_REPLY: &str = "no reply";
    let timeout = r#"<limit name="reply_timeout">500</limit>"#;
    let steps = || [Step::RootCall("org.test.A", "org.x.I.Fail", 0)];
    case(
        &format!(
            r#"{timeout}<policy user="root"><deny send_type="error" send_error="{ERR}"/></policy>"#
        ),
        &steps(),
        &[ERR],
    );
    case(
        &format!(
            r#"{timeout}<policy user="root"><deny send_type="error" send_error="{ERR}" send_requested_reply="true"/></policy>"#
        ),
        &steps(),
        &[NO_REPLY],
    );
    case(
        &format!(
            r#"{timeout}<policy user="root"><deny receive_type="error" receive_error="{ERR}"/></policy>"#
        ),
        &steps(),
        &[ERR],
    );
    case(
        &format!(
            r#"{timeout}<policy user="root"><deny receive_type="error" receive_error="{ERR}" receive_requested_reply="true"/></policy>"#
        ),
        &steps(),
        &[NO_REPLY],
    );
}

/// `send_broadcast`: a rule for broadcasts only leaves the same signal sent to one
/// receiver alone.
#[test]
fn send_broadcast() {
    if !usable() {
        return;
    }
    case(
        r#"<policy user="root"><deny send_broadcast="true" send_member="Quiet" send_interface="org.x.Sig"/></policy>"#,
        &[
            Step::Subscribe,
            Step::Emit("Quiet", false),
            Step::Emit("Quiet", true),
            Step::Emit("Loud", false),
            Step::Heard("Loud"),
        ],
        &["ok", "ok", "ok", "ok", "Quiet,Loud"],
    );
}

/// `log="true"`: a message its rule lets through is logged as one that would be
/// refused; messages other rules let through are not.
#[test]
fn log() {
    if !usable() {
        return;
    }
    case(
        r#"<policy user="root"><allow send_destination="org.test.A" send_interface="org.x.Logged" log="true"/></policy>"#,
        &[
            Step::RootCall("org.test.A", "org.x.Plain.M", 0),
            Step::Logged("Would reject message"),
            Step::RootCall("org.test.A", "org.x.Logged.M", 0),
            Step::Logged("Would reject message"),
        ],
        &["ok", "not logged", "ok", "logged"],
    );
}

/// What the bus itself sends a client passes the client's receive rules too: a
/// refused error from the driver never arrives, and its caller waits in vain.
#[test]
fn receive_rules_judge_the_bus_driver_too() {
    if !usable() {
        return;
    }
    let driver = "org.freedesktop.DBus";
    let path = "/org/freedesktop/DBus";
    case(
        r#"<policy user="nobody"><deny receive_sender="org.freedesktop.DBus" receive_type="error" receive_requested_reply="true"/></policy>"#,
        &[
            Step::Call(NOBODY, driver, path, "org.freedesktop.DBus.GetId"),
            Step::Call(NOBODY, driver, path, "org.freedesktop.DBus.NoSuchMethod"),
            Step::Call(DAEMON, driver, path, "org.freedesktop.DBus.NoSuchMethod"),
        ],
        &[
            "ok",
            "org.freedesktop.DBus.Error.NoReply",
            "org.freedesktop.DBus.Error.UnknownMethod",
        ],
    );
}
