//! kdbusd in place of dbus-daemon under `dbus-run-session`: a libdbus program
//! (dbus-send), a GLib one (gdbus) and an sd-bus one (busctl) each run against the
//! session bus it starts. Skipped where a tool is missing (.ci/run installs them).

use std::process::{Command, Stdio};

const KDBUSD: &str = env!("CARGO_BIN_EXE_kdbusd");

/// Run `program args` under `dbus-run-session --dbus-daemon=kdbusd`; its output.
fn in_session(program: &str, args: &[&str]) -> Option<std::process::Output> {
    for tool in ["dbus-run-session", program] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            eprintln!("skipped: needs {tool}");
            return None;
        }
    }
    let out = Command::new("dbus-run-session")
        .arg(format!("--dbus-daemon={KDBUSD}"))
        .arg("--")
        .arg(program)
        .args(args)
        .output()
        .expect("dbus-run-session");
    Some(out)
}

#[track_caller]
fn assert_ok(out: Option<std::process::Output>, want: &str) {
    let Some(out) = out else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(want),
        "status {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_libdbus_program_runs_on_kdbusd() {
    let out = in_session(
        "dbus-send",
        &[
            "--session",
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.ListNames",
        ],
    );
    assert_ok(out, "org.freedesktop.DBus");
}

#[test]
fn a_glib_program_runs_on_kdbusd() {
    let out = in_session(
        "gdbus",
        &[
            "call",
            "--session",
            "--dest",
            "org.freedesktop.DBus",
            "--object-path",
            "/org/freedesktop/DBus",
            "--method",
            "org.freedesktop.DBus.NameHasOwner",
            "org.freedesktop.DBus",
        ],
    );
    assert_ok(out, "(true,)");
}

#[test]
fn an_sd_bus_program_runs_on_kdbusd() {
    let out = in_session(
        "busctl",
        &[
            "--user",
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            "s",
            "org.freedesktop.DBus",
        ],
    );
    assert_ok(out, "b true");
}
