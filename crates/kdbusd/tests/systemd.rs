//! kdbusd under systemd: started on a socket systemd listens on (`--address=systemd:`,
//! `LISTEN_FDS`), and telling systemd when it serves (`NOTIFY_SOCKET`, `READY=1`),
//! as a `Type=notify` unit with a `.socket` unit has it (see `packaging/systemd`).
//! Needs systemd-socket-activate and dbus-send (skipped without).

mod common;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KDBUSD: &str = env!("CARGO_BIN_EXE_kdbusd");

fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!("skipped: needs {tool}");
    }
    ok
}

/// A session configuration of our own (no service directories, any user).
fn session_conf(dir: &std::path::Path) -> std::path::PathBuf {
    let conf = dir.join("session.conf");
    std::fs::write(
        &conf,
        "<busconfig><type>session</type><listen>unix:tmpdir=/tmp</listen>\
         <auth>EXTERNAL</auth><policy context=\"default\">\
         <allow send_destination=\"*\" eavesdrop=\"true\"/><allow eavesdrop=\"true\"/>\
         <allow own=\"*\"/></policy></busconfig>",
    )
    .expect("a configuration");
    conf
}

/// The socket systemd listens on serves the bus once kdbusd takes it over.
#[test]
fn a_socket_systemd_passes_serves_the_bus() {
    if !have("systemd-socket-activate") || !have("dbus-send") {
        return;
    }
    let dir = tempfile::tempdir().expect("a directory");
    let sock = dir.path().join("bus");
    let mut activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&sock)
        .arg(KDBUSD)
        .arg(format!(
            "--config-file={}",
            session_conf(dir.path()).display()
        ))
        .args(["--address=systemd:", "--nofork", "--nopidfile"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate");
    assert!(
        common::wait_until(Duration::from_secs(10), || sock.exists()),
        "systemd-socket-activate did not listen"
    );
    // The first client makes systemd-socket-activate start kdbusd on the socket.
    let out = Command::new("dbus-send")
        .arg(format!("--bus=unix:path={}", sock.display()))
        .args([
            "--print-reply",
            "--reply-timeout=10000",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.GetId",
        ])
        .output()
        .expect("dbus-send");
    let _ = activator.kill();
    let _ = activator.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // systemd's socket is systemd's: kdbusd leaves it be.
    assert!(sock.exists());
}

/// kdbusd tells systemd READY=1 once it serves.
#[test]
fn kdbusd_tells_systemd_when_it_serves() {
    let dir = tempfile::tempdir().expect("a directory");
    let notify = dir.path().join("notify");
    let listen = UnixDatagram::bind(&notify).expect("a notify socket");
    listen
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a timeout");
    let addr = format!("unix:path={}", dir.path().join("bus").display());
    let t0 = Instant::now();
    let mut child = Command::new(KDBUSD)
        .arg(format!(
            "--config-file={}",
            session_conf(dir.path()).display()
        ))
        .arg(format!("--address={addr}"))
        .args(["--nofork", "--nopidfile"])
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kdbusd");
    let mut buf = [0u8; 256];
    let got = listen
        .recv(&mut buf)
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
    let serving = dir.path().join("bus").exists();
    let _ = child.kill();
    let _ = child.wait();
    let got = got.expect("kdbusd said nothing to systemd");
    assert!(got.lines().any(|l| l == "READY=1"), "{got:?}");
    assert!(serving, "READY=1 came before the bus listened");
    eprintln!("READY=1 after {:?}", t0.elapsed());
}
