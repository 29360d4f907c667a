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
    let mut bus = Bus(Command::new(KDBUSD)
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--print-address"])
        .env("KDBUS_TEST_SECRET", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.join("kdbusd.log")).unwrap())
        .spawn()
        .expect("kdbusd"));
    let mut address = String::new();
    BufReader::new(bus.0.stdout.take().unwrap())
        .read_line(&mut address)
        .unwrap();
    let address = address.trim().to_string();
    assert!(!address.is_empty(), "kdbusd did not start");
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
