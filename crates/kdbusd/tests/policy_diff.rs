//! The configuration's `<policy>`, enforced: the same configuration file and the same
//! client script run against dbus-daemon and against kdbusd, and the answers must be
//! equal (and equal to what we expect, so that a case that proves nothing fails too).
//!
//! The base policy is Debian's system bus policy (deny owning and calling, allow
//! signals, requested replies and receiving, allow the driver); root may own and call
//! anything. Each case adds rules and runs calls as unprivileged users (`nobody`,
//! `daemon`, through `setpriv` and `dbus-send`) and as root (zbus, for what
//! `dbus-send` cannot do: fds, sending from a well-known name). Services run as root.
//!
//! Needs root (CI runs as root), dbus-daemon, dbus-send and setpriv; skipped otherwise.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use zbus::blocking::{connection::Builder, Connection as ZConn, MessageIterator};
use zbus::message::Type as MsgType;

const KDBUSD: &str = env!("CARGO_BIN_EXE_kdbusd");
const NOBODY: (u32, u32) = (65534, 65534);
const DAEMON: (u32, u32) = (1, 1);

const BASE: &str = r#"
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
  </policy>
  <policy user="root">
    <allow own="*"/>
    <allow send_destination="*"/>
  </policy>"#;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn usable() -> bool {
    let root = rustix::process::geteuid().is_root();
    let tools = ["dbus-daemon", "dbus-send", "setpriv"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if !(root && tools) {
        eprintln!("skipped: needs root, dbus-daemon, dbus-send and setpriv");
    }
    root && tools
}

/// How a bus is started: on a configuration of the base policy plus rules, or as
/// the system bus from the installed configuration.
#[derive(Clone, Copy)]
enum Config<'a> {
    Base(&'a str),
    System,
}

/// Write the configuration of `tag`'s bus in `dir`: the base policy plus `extra`
/// (`BROKEN`: a file that does not parse).
fn write_conf(dir: &Path, tag: &str, extra: &str) -> PathBuf {
    let conf = dir.join(format!("{tag}.conf"));
    let sock = dir.join(format!("{tag}.sock"));
    let text = if extra == BROKEN {
        "<busconfig><policy context=\"default\"><allow/></busconfig>".to_string()
    } else {
        format!(
            "<busconfig>\n  <type>system</type>\n  <listen>unix:path={}</listen>\n  <auth>EXTERNAL</auth>{BASE}\n{extra}\n</busconfig>\n",
            sock.display()
        )
    };
    std::fs::write(&conf, text).unwrap();
    conf
}

/// A configuration that does not load.
const BROKEN: &str = "broken";

/// Start `program` (dbus-daemon or kdbusd) listening in `dir`; returns it and its
/// address.
fn start(program: &str, dir: &Path, config: Config<'_>) -> (Daemon, String) {
    let tag = Path::new(program)
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("bus");
    let sock = dir.join(format!("{tag}.sock"));
    let args = match config {
        Config::Base(extra) => {
            vec![format!(
                "--config-file={}",
                write_conf(dir, tag, extra).display()
            )]
        }
        Config::System => vec![
            "--system".to_string(),
            format!("--address=unix:path={}", sock.display()),
            "--nopidfile".to_string(),
        ],
    };
    let mut child = Command::new(program)
        .args(&args)
        .args(["--nofork", "--print-address"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(!line.is_empty(), "{program} did not start");
    (Daemon(child), line.trim().to_string())
}

fn zconn(address: &str) -> ZConn {
    Builder::address(address)
        .expect("address")
        .method_timeout(Duration::from_secs(10))
        .build()
        .expect("root connects")
}

fn request_name(c: &ZConn, name: &str) {
    let r = c
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "RequestName",
            &(name, 4u32),
        )
        .expect("RequestName");
    assert_eq!(r.body().deserialize::<u32>().unwrap(), 1, "{name}");
}

/// A root service owning `names` that answers every call with "ok".
fn serve(address: &str, names: &[&str]) {
    let c = zconn(address);
    let it = MessageIterator::from(&c);
    for n in names {
        request_name(&c, n);
    }
    std::thread::spawn(move || {
        for m in it.flatten() {
            if m.message_type() == MsgType::MethodCall && c.reply(&m.header(), &"ok").is_err() {
                return;
            }
        }
    });
}

/// What happened: "ok", a RequestName code, or the D-Bus error name.
fn outcome(out: std::process::Output) -> String {
    if out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        return match text
            .split_whitespace()
            .skip_while(|w| *w != "uint32")
            .nth(1)
        {
            Some(code) => code.to_string(),
            None => "ok".to_string(),
        };
    }
    let err = String::from_utf8_lossy(&out.stderr);
    err.split_whitespace()
        .nth(1)
        .map(|e| e.trim_end_matches(':').to_string())
        .unwrap_or_else(|| format!("failed: {err}"))
}

/// The error text of a failed `dbus-send`, with what differs between two runs (pids,
/// unique names, command lines) replaced by `N`.
fn error_text(out: std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let mut text = String::new();
    for (i, part) in err.trim().split("comm=\"").enumerate() {
        if i > 0 {
            text.push_str("comm=\"N");
        }
        text.push_str(if i > 0 {
            &part[part.find('"').unwrap_or(0)..]
        } else {
            part
        });
    }
    for marker in ["pid=", ":1."] {
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(marker) {
            out.push_str(&rest[..at + marker.len()]);
            rest = rest[at + marker.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
            out.push('N');
        }
        out.push_str(rest);
        text = out;
    }
    text
}

fn setpriv_dbus_send(address: &str, who: (u32, u32), args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={}", who.0),
            &format!("--regid={}", who.1),
            "--clear-groups",
            "dbus-send",
            &format!("--bus={address}"),
            "--print-reply",
            "--reply-timeout=5000",
        ])
        .args(args)
        .output()
        .expect("setpriv dbus-send")
}

/// `dbus-send` as `who`.
fn dbus_send(address: &str, who: (u32, u32), args: &[&str]) -> String {
    outcome(setpriv_dbus_send(address, who, args))
}

/// The error text `dbus-send` as `who` gets.
fn dbus_send_text(address: &str, who: (u32, u32), args: &[&str]) -> String {
    error_text(setpriv_dbus_send(address, who, args))
}

/// A step of a script, run on one bus.
enum Step {
    /// `who` calls `dest` at `path` `iface.member`.
    Call((u32, u32), &'static str, &'static str, &'static str),
    /// `who` asks for a name.
    Own((u32, u32), &'static str),
    /// Like `Call`, but the answer is the error's text (normalized by `error_text`).
    CallText((u32, u32), &'static str, &'static str, &'static str),
    /// The bus's configuration file is rewritten with the base policy plus this.
    Reconfigure(&'static str),
    /// root calls `ReloadConfig`.
    Reload,
    /// The bus gets SIGHUP (and a moment to act on it).
    Hangup,
    /// root, owning `org.test.Caller`, calls `dest` `iface.member` with `fds` fds.
    RootCall(&'static str, &'static str, usize),
}

/// The bus a script runs on.
struct Ctx<'a> {
    address: String,
    /// root's connection, owning `org.test.Caller` (on a base configuration).
    caller: ZConn,
    dir: &'a Path,
    /// The program's file name, which names its configuration file.
    tag: String,
    pid: u32,
}

/// Run `step` on the bus of `ctx`.
fn run_step(ctx: &Ctx<'_>, step: &Step) -> String {
    let (address, caller) = (ctx.address.as_str(), &ctx.caller);
    match step {
        Step::Reconfigure(extra) => {
            write_conf(ctx.dir, &ctx.tag, extra);
            "ok".into()
        }
        Step::Reload => dbus_send(
            address,
            (0, 0),
            &[
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.ReloadConfig",
            ],
        ),
        Step::Hangup => {
            let pid = rustix::process::Pid::from_raw(ctx.pid as i32).expect("a pid");
            rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP");
            std::thread::sleep(Duration::from_millis(500));
            "ok".into()
        }
        Step::Call(who, dest, path, method) => {
            dbus_send(address, *who, &[&format!("--dest={dest}"), path, method])
        }
        Step::CallText(who, dest, path, method) => {
            dbus_send_text(address, *who, &[&format!("--dest={dest}"), path, method])
        }
        Step::Own(who, name) => dbus_send(
            address,
            *who,
            &[
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.RequestName",
                &format!("string:{name}"),
                "uint32:4",
            ],
        ),
        Step::RootCall(dest, method, fds) => {
            let c = caller;
            let (iface, member) = method.rsplit_once('.').expect("iface.member");
            let r = if *fds > 0 {
                let (r, _w) = rustix::pipe::pipe().unwrap();
                let fd = zbus::zvariant::Fd::from(&r);
                c.call_method(Some(*dest), "/", Some(iface), member, &fd)
            } else {
                c.call_method(Some(*dest), "/", Some(iface), member, &())
            };
            match r {
                Ok(_) => "ok".to_string(),
                Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
                Err(e) => format!("failed: {e}"),
            }
        }
    }
}

/// Run `steps` with the base policy plus `extra` on dbus-daemon and on kdbusd (services
/// `org.test.A` and, on another connection, `org.test.B` and `org.other.C`); both must
/// give `expected`.
fn case(extra: &str, steps: &[Step], expected: &[&str]) {
    let services: &[&[&str]] = &[&["org.test.A"], &["org.test.B", "org.other.C"]];
    run_both(Config::Base(extra), services, steps, expected);
}

/// Run `steps` on dbus-daemon and on kdbusd started with `config`, each with root
/// services owning `services` (one connection per list); both must give `expected`.
fn run_both(config: Config<'_>, services: &[&[&str]], steps: &[Step], expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    // The unprivileged clients must reach the sockets.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut answers: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for program in ["dbus-daemon", KDBUSD] {
        let (d, address) = start(program, dir.path(), config);
        for names in services {
            serve(&address, names);
        }
        let caller = zconn(&address);
        if matches!(config, Config::Base(_)) {
            request_name(&caller, "org.test.Caller");
        }
        let ctx = Ctx {
            address,
            caller,
            dir: dir.path(),
            tag: Path::new(program)
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("bus")
                .to_string(),
            pid: d.0.id(),
        };
        let got = steps.iter().map(|s| run_step(&ctx, s)).collect();
        answers.push((program.into(), got));
    }
    let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(answers[0].1, expected, "dbus-daemon");
    assert_eq!(answers[1].1, expected, "kdbusd");
}

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
