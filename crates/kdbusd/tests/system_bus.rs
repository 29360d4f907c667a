//! The system bus path, as root (CI runs as root): `kdbusd` started from a system
//! bus configuration binds its socket, writes its pid file and then drops to the
//! configuration's `<user>` for good; a service is started as the `User=` of its
//! `.service` file, with a cleared environment, by the launcher that alone stays
//! root, with that user's groups; service files that name no user or an unknown one
//! fail with dbus-daemon's errors. Skipped without root or the `daemon` and `nobody` users.

#[path = "common/diff.rs"]
mod diff;
use diff::{request_name, zconn, KDBUSD};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use zbus::message::Type as MsgType;

const DAEMON_UID: u32 = 1;
const NOBODY_UID: u32 = 65534;

/// The service the launcher starts: owns `org.kdbus.Sys` and answers `Whoami` with
/// the ids it runs as, its bus type and whether the broker's environment reached it.
#[test]
fn system_service() {
    let (Ok(address), Ok(kind)) = (
        std::env::var("DBUS_STARTER_ADDRESS"),
        std::env::var("DBUS_STARTER_BUS_TYPE"),
    ) else {
        return;
    };
    if kind != "system" {
        return;
    }
    let c = zconn(&address);
    let it = zbus::blocking::MessageIterator::from(&c);
    request_name(&c, "org.kdbus.Sys");
    for m in it.flatten() {
        if m.message_type() == MsgType::MethodCall
            && m.header().member().is_some_and(|n| n.as_str() == "Whoami")
        {
            let mut groups: Vec<u32> = rustix::process::getgroups()
                .unwrap_or_default()
                .iter()
                .map(|g| g.as_raw())
                .collect();
            groups.sort_unstable();
            let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
            let groups = groups.join(",");
            let answer = format!(
                "uid={} gid={} groups={groups} bus={kind} leaked={}",
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
                std::env::var("KDBUS_TEST_SECRET").is_ok(),
            );
            let _ = c.reply(&m.header(), &answer);
        }
    }
}

/// The ids in a `/proc/PID/status` line (`Uid:`, `Gid:`, `Groups:`).
fn status_ids(pid: u32, key: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_system_bus_drops_to_its_user_and_starts_services_as_theirs() {
    let users = kdbusd_users_exist();
    if !rustix::process::geteuid().is_root() || !users {
        eprintln!("skipped: needs root and the users daemon and nobody");
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The service is this test binary; a copy every user can run (the build tree
    // may be private to root).
    let svc = d.join("svc");
    std::fs::copy(std::env::current_exe().unwrap(), &svc).expect("copy the test binary");
    std::fs::set_permissions(&svc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let services = d.join("services");
    std::fs::create_dir(&services).unwrap();
    let write = |file: &str, text: String| std::fs::write(services.join(file), text).unwrap();
    write(
        "sys.service",
        format!(
            // The bus's stdout may be a closed pipe: the test harness must not write to it.
            "[D-BUS Service]\nName=org.kdbus.Sys\nUser=nobody\nExec=/bin/sh -c '{} system_service --exact --test-threads=1 >/dev/null 2>&1'\n",
            svc.display()
        ),
    );
    write(
        "nouser.service",
        "[D-BUS Service]\nName=org.kdbus.NoUser\nExec=/bin/true\n".into(),
    );
    write(
        "ghost.service",
        "[D-BUS Service]\nName=org.kdbus.Ghost\nUser=kdbus-no-such-user\nExec=/bin/true\n".into(),
    );
    let (sock, pidfile, conf) = (d.join("sock"), d.join("pid"), d.join("system.conf"));
    std::fs::write(
        &conf,
        format!(
            r#"<busconfig>
  <type>system</type>
  <user>daemon</user>
  <listen>unix:path={}</listen>
  <pidfile>{}</pidfile>
  <auth>EXTERNAL</auth>
  <servicedir>{}</servicedir>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"#,
            sock.display(),
            pidfile.display(),
            services.display()
        ),
    )
    .unwrap();
    let (bus, address) = Bus::start(
        Command::new(KDBUSD)
            .arg(format!("--config-file={}", conf.display()))
            .env("KDBUS_TEST_SECRET", "1")
            .stderr(std::fs::File::create(d.join("kdbusd.log")).unwrap()),
    );
    let pid = bus.0.id();

    // The pid file, and the ids the broker serves with: the configured user's,
    // every one of them (no way back to root), no supplementary groups.
    let written = std::fs::read_to_string(&pidfile).expect("the pid file");
    assert_eq!(written.trim(), pid.to_string());
    assert_eq!(status_ids(pid, "Uid:"), [DAEMON_UID; 4]);
    assert_eq!(status_ids(pid, "Gid:"), [DAEMON_UID; 4]);
    assert_eq!(status_ids(pid, "Groups:"), Vec::<u32>::new());

    let c = zconn(&address);
    let call = |dest: &str| match c.call_method(Some(dest), "/", Some("org.kdbus.S"), "Whoami", &())
    {
        Ok(m) => m.body().deserialize::<String>().unwrap_or_default(),
        Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
        Err(e) => format!("failed: {e}"),
    };
    // The user's groups, as initgroups gives them (dbus-daemon's helper).
    let id = Command::new("id").args(["-G", "nobody"]).output().unwrap();
    let mut groups: Vec<u32> = String::from_utf8_lossy(&id.stdout)
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    groups.sort_unstable();
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    assert_eq!(
        call("org.kdbus.Sys"),
        format!(
            "uid={NOBODY_UID} gid={NOBODY_UID} groups={} bus=system leaked=false",
            groups.join(",")
        )
    );
    assert_eq!(
        call("org.kdbus.NoUser"),
        "org.freedesktop.DBus.Error.Spawn.FileInvalid"
    );
    assert_eq!(
        call("org.kdbus.Ghost"),
        "org.freedesktop.DBus.Error.Spawn.FailedToSetup"
    );

    // An unprivileged user reaches the bus too (the socket was bound by root).
    let listed = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "dbus-send",
        ])
        .arg(format!("--bus={address}"))
        .args([
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.ListNames",
        ])
        .output()
        .expect("setpriv dbus-send");
    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(out.contains("org.kdbus.Sys"), "nobody listed: {out}");
}

/// The bus, killed however the test ends.
struct Bus(std::process::Child);

impl Bus {
    /// Start `cmd` in the foreground, printing its address: the bus and the address.
    fn start(cmd: &mut Command) -> (Bus, String) {
        let mut bus = Bus(cmd
            .args(["--nofork", "--print-address"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("kdbusd"));
        let mut address = String::new();
        BufReader::new(bus.0.stdout.take().unwrap())
            .read_line(&mut address)
            .unwrap();
        let address = address.trim().to_string();
        assert!(!address.is_empty(), "kdbusd did not start");
        (bus, address)
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kdbusd_users_exist() -> bool {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    ["daemon:", "nobody:"]
        .iter()
        .all(|u| passwd.lines().any(|l| l.starts_with(u)))
}

/// The stand-in system log of `a_bus_configured_with_syslog_logs_there`: binds
/// `/dev/log` (in the test's own mount namespace) and writes what it receives, one
/// line per datagram, to the file `KDBUS_TEST_SYSLOG` names, for three seconds.
#[test]
fn syslog_listener() {
    record_datagrams("/dev/log", "KDBUS_TEST_SYSLOG");
}

/// Where the file `env` names exists: bind a datagram socket at `path` (in the
/// test's own mount namespace) and append what arrives there to that file, a
/// newline after each datagram, until three seconds pass without one.
fn record_datagrams(path: &str, env: &str) {
    let Ok(out) = std::env::var(env) else {
        return;
    };
    let sock = std::os::unix::net::UnixDatagram::bind(path).expect("bind the stand-in socket");
    sock.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = sock.recv(&mut buf) {
        got.extend_from_slice(&buf[..n]);
        got.push(b'\n');
        std::fs::write(&out, &got).unwrap();
    }
}

/// A bus configuration in `d` (`bus.conf`, listening on `d/sock`) with `more` in it.
fn bus_conf(d: &std::path::Path, more: &str) -> std::path::PathBuf {
    let conf = d.join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            "<busconfig>{more}<listen>unix:path={}</listen><auth>EXTERNAL</auth></busconfig>",
            d.join("sock").display()
        ),
    )
    .unwrap();
    conf
}

/// Run `script` with `sh` in a mount namespace of its own; false (and a note) where
/// none can be made or the script said so (exit 77). A broker stopped by `timeout`
/// (124) counts as run.
fn in_mount_namespace(script: &str) -> bool {
    let status = Command::new("unshare")
        .args(["-m", "sh", "-c", script])
        .status();
    match status.map(|s| s.code()) {
        Ok(Some(0)) | Ok(Some(124)) => true,
        other => {
            eprintln!("skipped: no mount namespace here ({other:?})");
            false
        }
    }
}

/// `<syslog/>` (the system bus configuration has it): the bus logs to the system
/// log. Run in a mount namespace of its own, with a `/dev` where this test binary is
/// the system log. Skipped without root or where namespaces cannot be made.
#[test]
fn a_bus_configured_with_syslog_logs_there() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path();
    let conf = bus_conf(d, "<type>system</type><syslog/>");
    let got = d.join("syslog");
    let script = format!(
        "mount -t tmpfs none /dev && mknod -m 666 /dev/null c 1 3 || exit 77\n\
         KDBUS_TEST_SYSLOG={got} {test} syslog_listener --exact --test-threads=1 >/dev/null 2>&1 &\n\
         sleep 0.5\n\
         timeout 1 {kdbusd} --config-file={conf} --nofork --print-address >/dev/null 2>&1\n\
         wait\n",
        got = got.display(),
        test = std::env::current_exe().unwrap().display(),
        kdbusd = KDBUSD,
        conf = conf.display(),
    );
    if !in_mount_namespace(&script) {
        return;
    }
    let log = String::from_utf8_lossy(&std::fs::read(&got).unwrap_or_default()).into_owned();
    assert!(
        log.lines()
            .any(|l| l.contains("kdbusd[") && l.contains("listening as dbus-daemon")),
        "the system log got: {log}"
    );
}

/// `kdbusd --system`, from the installed configuration: it serves as the user that
/// configuration names (Debian's `messagebus`), and an unprivileged client is refused
/// what that policy refuses (owning a name). Skipped without root, the installed
/// configuration or its user.
#[test]
fn kdbusd_system_runs_as_the_installed_configurations_user() {
    let conf = std::fs::read_to_string("/usr/share/dbus-1/system.conf").unwrap_or_default();
    let user = conf
        .split("<user>")
        .nth(1)
        .and_then(|r| r.split("</user>").next())
        .map(str::trim)
        .unwrap_or("");
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let uid: Option<u32> = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user)).then(|| f.get(2)?.parse().ok())?
    });
    let Some(uid) = uid.filter(|_| rustix::process::geteuid().is_root()) else {
        eprintln!("skipped: needs root and the installed system bus configuration");
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path().join("sock");
    let (bus, address) = Bus::start(
        Command::new(KDBUSD)
            .arg("--system")
            .arg(format!("--address=unix:path={}", sock.display()))
            .arg("--nopidfile")
            .stderr(Stdio::null()),
    );
    assert_eq!(status_ids(bus.0.id(), "Uid:"), [uid; 4]);
    let own = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "dbus-send",
        ])
        .arg(format!("--bus={}", address.trim()))
        .args([
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.RequestName",
            "string:org.kdbus.Mine",
            "uint32:0",
        ])
        .output()
        .expect("setpriv dbus-send");
    let err = String::from_utf8_lossy(&own.stderr);
    assert!(
        err.contains("org.freedesktop.DBus.Error.AccessDenied"),
        "nobody owning a name: {err}"
    );
}

/// Stands in for the journal when `KDBUS_TEST_JOURNAL` names a file: receives on
/// `/run/systemd/journal/socket` what is sent there, into that file.
#[test]
fn journal_listener() {
    record_datagrams("/run/systemd/journal/socket", "KDBUS_TEST_JOURNAL");
}

/// Under systemd (`JOURNAL_STREAM` names our standard error) logs go to the journal
/// as entries with a priority and our identifier, and nothing to standard error.
/// Run in a mount namespace with a stand-in journal. Skipped without root or where
/// namespaces cannot be made.
#[test]
fn logs_go_to_the_journal_when_stderr_is_its_stream() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let d = dir.path();
    let conf = bus_conf(d, "<type>session</type>");
    let (got, stderr) = (d.join("journal"), d.join("stderr"));
    let script = format!(
        "mount -t tmpfs none /run && mkdir -p /run/systemd/journal || exit 77\n\
         KDBUS_TEST_JOURNAL={got} {test} journal_listener --exact --test-threads=1 >/dev/null 2>&1 &\n\
         sleep 0.5\n\
         : > {stderr}\n\
         JOURNAL_STREAM=$(stat -c %d:%i {stderr}) timeout 1 {kdbusd} --config-file={conf} --nofork --print-address >/dev/null 2>>{stderr}\n\
         wait\n",
        got = got.display(),
        stderr = stderr.display(),
        test = std::env::current_exe().unwrap().display(),
        kdbusd = KDBUSD,
        conf = conf.display(),
    );
    if !in_mount_namespace(&script) {
        return;
    }
    let journal = String::from_utf8_lossy(&std::fs::read(&got).unwrap_or_default()).into_owned();
    // Fields are `NAME=value` or, binary-safe, `NAME\n<le64 length>value`.
    assert!(
        journal.contains("SYSLOG_IDENTIFIER")
            && journal.contains("kdbusd")
            && journal.contains("PRIORITY"),
        "the journal got: {journal}"
    );
    assert!(
        journal.contains("listening as dbus-daemon"),
        "the journal got: {journal}"
    );
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(err.is_empty(), "standard error got: {err}");
}
