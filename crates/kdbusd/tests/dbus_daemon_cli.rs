//! kdbusd started the way programs start dbus-daemon: its command line, its XML
//! configuration, and GLib's GTestDBus.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const KDBUSD: &str = env!("CARGO_BIN_EXE_kdbusd");

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &Path, listen: &str) -> std::path::PathBuf {
    let p = dir.join("bus.conf");
    std::fs::write(
        &p,
        format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n \
             \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
             <busconfig>\n  <type>session</type>\n  <listen>{listen}</listen>\n  <auth>EXTERNAL</auth>\n\
             <policy context=\"default\">\n    <allow send_destination=\"*\" eavesdrop=\"true\"/>\n\
             <allow eavesdrop=\"true\"/>\n    <allow own=\"*\"/>\n  </policy>\n\
             <limit name=\"reply_timeout\">5000</limit>\n</busconfig>\n"
        ),
    )
    .unwrap();
    p
}

/// Start with `args` and read the first stdout line (the printed address).
fn start(args: &[&str]) -> (Daemon, String) {
    start_program(Command::new(KDBUSD).args(args))
}

/// Start `cmd` (kdbusd or dbus-daemon, told to print its address) and read the first
/// stdout line.
fn start_program(cmd: &mut Command) -> (Daemon, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Daemon(child), line.trim().to_string())
}

fn get_id(address: &str) -> String {
    let out = Command::new("dbus-send")
        .args([
            &format!("--bus={address}"),
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.GetId",
        ])
        .output()
        .expect("dbus-send is needed (package dbus-bin, installed by .ci/run)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn config_file_nofork_print_address() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_config(dir.path(), &format!("unix:tmpdir={}", dir.path().display()));
    let (_d, address) = start(&[
        &format!("--config-file={}", conf.display()),
        "--nofork",
        "--print-address",
    ]);
    assert!(
        address.starts_with(&format!("unix:path={}/dbus-", dir.path().display())),
        "{address}"
    );
    let guid = address.split(",guid=").nth(1).expect("guid in the address");
    assert_eq!(guid.len(), 32);
    // The bus id is the guid, as with dbus-daemon.
    assert!(get_id(&address).contains(guid));
}

#[test]
fn address_overrides_the_configuration_and_print_pid() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_config(dir.path(), "unix:tmpdir=/nonexistent-dir");
    let sock = dir.path().join("explicit");
    let mut child = Command::new(KDBUSD)
        .args([
            &format!("--config-file={}", conf.display()),
            &format!("--address=unix:path={}", sock.display()),
            "--print-address",
            "--print-pid",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut address, mut pid) = (String::new(), String::new());
    out.read_line(&mut address).unwrap();
    out.read_line(&mut pid).unwrap();
    let d = Daemon(child);
    assert!(
        address.starts_with(&format!("unix:path={}", sock.display())),
        "{address}"
    );
    assert_eq!(pid.trim().parse::<u32>().unwrap(), d.0.id());
    get_id(address.trim());
}

#[test]
fn session_flag_uses_the_standard_configuration() {
    if !Path::new("/usr/share/dbus-1/session.conf").exists() {
        eprintln!("skipped: /usr/share/dbus-1/session.conf is missing (package dbus)");
        return;
    }
    let (_d, address) = start(&["--session", "--print-address"]);
    assert!(address.starts_with("unix:"), "{address}");
    get_id(&address);
}

#[test]
fn a_bad_configuration_names_file_and_line_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.conf");
    let listen_dir = dir.path().join("sockets");
    std::fs::create_dir(&listen_dir).unwrap();
    std::fs::write(
        &conf,
        format!("<busconfig>\n<listen>unix:tmpdir={}</listen>\n<policy context=\"default\">\n<allow own=\"*\" frobnicate=\"yes\"/>\n</policy>\n</busconfig>\n", listen_dir.display()),
    )
    .unwrap();
    let out = Command::new(KDBUSD)
        .arg(format!("--config-file={}", conf.display()))
        .arg("--print-address")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:4:", conf.display())), "{err}");
    assert!(out.stdout.is_empty(), "no address printed");
    assert_eq!(
        std::fs::read_dir(&listen_dir).unwrap().count(),
        0,
        "nothing was bound"
    );

    let out = Command::new(KDBUSD)
        .arg("--config-file=/nonexistent/bus.conf")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/bus.conf"));
}

#[test]
fn fork_returns_once_listening() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_config(dir.path(), &format!("unix:tmpdir={}", dir.path().display()));
    let out = Command::new(KDBUSD)
        .args([
            &format!("--config-file={}", conf.display()),
            "--fork",
            "--print-address",
            "--print-pid",
        ])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let address = lines.next().expect("address").to_string();
    let pid: i32 = lines.next().expect("pid").trim().parse().unwrap();
    get_id(&address);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    // A zombie (no parent reaps it here) still answers kill(0): look at its state.
    let gone = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.is_empty() || stat.split(' ').nth(2) == Some("Z")
    });
    assert!(gone, "the background broker ignored SIGTERM");
}

/// GLib's GTestDBus starts "dbus-daemon --config-file=F --print-address=FD ..." and
/// reads the address; G_TEST_DBUS_DAEMON names the program to run instead.
#[test]
fn gtestdbus_runs_kdbusd_as_its_daemon() {
    let python = "/usr/bin/python3";
    let probe = Command::new(python)
        .args([
            "-c",
            "import gi; gi.require_version('Gio', '2.0'); from gi.repository import Gio",
        ])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: python3-gi is missing (installed by .ci/run)");
        return;
    }
    let script = r#"
import gi
gi.require_version('Gio', '2.0')
from gi.repository import Gio
bus = Gio.TestDBus.new(Gio.TestDBusFlags.NONE)
bus.up()
addr = bus.get_bus_address()
flags = Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
conn = Gio.DBusConnection.new_for_address_sync(addr, flags, None, None)
names = conn.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                       "ListNames", None, None, 0, -1, None).unpack()[0]
print("unique", conn.get_unique_name())
print("names", " ".join(names))
conn.close_sync(None)
bus.down()
"#;
    let out = Command::new(python)
        .args(["-c", script])
        .env("G_TEST_DBUS_DAEMON", KDBUSD)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unique = stdout
        .lines()
        .find_map(|l| l.strip_prefix("unique "))
        .expect("unique name")
        .to_string();
    assert!(unique.starts_with(":1."), "{unique}");
    let names = stdout
        .lines()
        .find_map(|l| l.strip_prefix("names "))
        .expect("names");
    assert!(
        names.split(' ').any(|n| n == "org.freedesktop.DBus"),
        "{names}"
    );
    assert!(names.split(' ').any(|n| n == unique), "{names}");
}

/// `--print-address=FD` writes the address to that descriptor (here a pipe on fd 3),
/// not to stdout.
#[test]
fn print_address_to_a_file_descriptor() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let conf = write_config(dir.path(), &format!("unix:tmpdir={}", dir.path().display()));
    let (r, w) = rustix::pipe::pipe().unwrap();
    let w_raw = std::os::fd::AsRawFd::as_raw_fd(&w);
    let mut cmd = Command::new(KDBUSD);
    cmd.args([
        &format!("--config-file={}", conf.display()),
        "--nofork",
        "--print-address=3",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(w_raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(w);
    let _d = Daemon(child);
    let mut line = String::new();
    BufReader::new(std::fs::File::from(r))
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("unix:path="), "{line:?}");
    get_id(line.trim());
}

/// Whether `dbus-send` run as uid/gid 65534 (nobody) can call the bus at `address`.
fn nobody_can_call(address: &str) -> bool {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "dbus-send",
        ])
        .args([
            &format!("--bus={address}"),
            "--print-reply",
            "--reply-timeout=3000",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.GetId",
        ])
        .output()
        .expect("setpriv and dbus-send")
        .status
        .success()
}

/// Who may connect: another user is turned away from a bus whose policy names nobody
/// else (a session bus: anyone who got in could talk to the user's services and watch
/// its traffic), differentially against dbus-daemon with the same configuration; and
/// admitted by `<allow user="*"/>` (a system bus). The policy allows receiving:
/// dbus-daemon (and kdbusd) judge even the bus's own replies by the receive rules, so
/// without that nobody would hear `Hello`'s answer.
#[test]
fn only_the_users_a_configuration_admits_may_connect() {
    if rustix::process::getuid().as_raw() != 0 {
        eprintln!("skipped: needs root to run a client as another user");
        return;
    }
    let cases: [(&str, bool, &[&str]); 2] = [
        ("", false, &[KDBUSD, "dbus-daemon"]),
        ("<allow user=\"*\"/>", true, &[KDBUSD, "dbus-daemon"]),
    ];
    for (extra, nobody_admitted, daemons) in cases {
        for &daemon in daemons {
            let dir = tempfile::tempdir().unwrap();
            let sock = dir.path().join("bus");
            let conf = dir.path().join("bus.conf");
            std::fs::write(
                &conf,
                format!(
                    "<busconfig>\n<type>session</type>\n<listen>unix:path={}</listen>\n\
                     <auth>EXTERNAL</auth>\n<policy context=\"default\">{extra}\
                     <allow send_destination=\"*\"/><allow receive_sender=\"*\"/>\
                     <allow own=\"*\"/></policy>\n</busconfig>\n",
                    sock.display()
                ),
            )
            .unwrap();
            // The socket's directory and file must not be what stops the client.
            let mode = std::os::unix::fs::PermissionsExt::from_mode(0o777);
            std::fs::set_permissions(dir.path(), mode).unwrap();
            let child = Command::new(daemon)
                .args([
                    &format!("--config-file={}", conf.display()),
                    "--nofork",
                    "--print-address",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut child = Daemon(child);
            let mut address = String::new();
            BufReader::new(child.0.stdout.take().unwrap())
                .read_line(&mut address)
                .unwrap();
            let mode = std::os::unix::fs::PermissionsExt::from_mode(0o777);
            std::fs::set_permissions(&sock, mode).unwrap();
            assert_eq!(
                nobody_can_call(address.trim()),
                nobody_admitted,
                "{daemon} with policy {extra:?}"
            );
        }
    }
}

/// The listen addresses dbus-daemon 1.14 takes (`unix:path=`, `unix:dir=`,
/// `unix:tmpdir=`, `unix:abstract=`, `unix:runtime=yes`): both brokers print the same
/// kind of address for each (random names aside) and answer on it.
#[test]
fn listen_addresses_as_dbus_daemon_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let abs = format!("kdbus-test-{}", std::process::id());
    let forms = [
        format!("unix:path={d}/p"),
        format!("unix:dir={d}"),
        format!("unix:tmpdir={d}"),
        format!("unix:abstract={abs}"),
        "unix:runtime=yes".to_string(),
    ];
    // The printed address without its guid and with random socket names as `X`.
    let shape = |a: &str| -> String {
        let a = a.split(",guid=").next().unwrap_or("");
        match a.rsplit_once("/dbus-") {
            Some((head, _)) => format!("{head}/dbus-X"),
            None => a.to_string(),
        }
    };
    for form in &forms {
        let mut got = Vec::new();
        for program in ["dbus-daemon", KDBUSD] {
            let _ = std::fs::remove_file(dir.path().join("p"));
            let (daemon, address) = start_program(
                Command::new(program)
                    .args(["--session", "--nofork", "--print-address"])
                    .arg(format!("--address={form}"))
                    .env("XDG_RUNTIME_DIR", &runtime),
            );
            assert!(!get_id(&address).is_empty(), "{program} on {form}");
            got.push(shape(&address));
            drop(daemon);
        }
        assert_eq!(got[1], got[0], "{form}: kdbusd (left), dbus-daemon (right)");
    }
}

/// A broker in dbus-daemon mode keeps its native sockets in a private `kdbusd-<pid>`
/// directory under the temporary directory; it removes those that brokers killed
/// outright left behind (their pid is gone), and nobody else's.
#[test]
fn stale_private_directories_are_swept() {
    let tmp = tempfile::tempdir().unwrap();
    let gone = {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let stale = tmp.path().join(format!("kdbusd-{gone}"));
    std::fs::create_dir_all(stale.join("0-session")).unwrap();
    let live = tmp.path().join(format!("kdbusd-{}", std::process::id()));
    std::fs::create_dir_all(&live).unwrap();
    let other = tmp.path().join("kdbusd-notapid");
    std::fs::create_dir_all(&other).unwrap();
    let conf = write_config(
        tmp.path(),
        &format!("unix:path={}/sock", tmp.path().display()),
    );
    let (_daemon, _address) = start_program(
        Command::new(env!("CARGO_BIN_EXE_kdbusd"))
            .env("TMPDIR", tmp.path())
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address"]),
    );
    assert!(!stale.exists(), "a dead broker's directory is swept");
    assert!(live.exists(), "a live process's directory is kept");
    assert!(other.exists(), "what is not ours by name is kept");
}
