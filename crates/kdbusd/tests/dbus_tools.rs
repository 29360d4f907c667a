//! The D-Bus socket of kdbusd used by the stock tools, unmodified: dbus-send and
//! dbus-monitor (libdbus), busctl (sd-bus), gdbus (GDBus), and python3-dbus (skipped
//! when it is not installed). They talk to the bus driver and to a zbus service.
//!
//! Package hints when a tool is missing: dbus (dbus-send, dbus-monitor), systemd
//! (busctl), libglib2.0-bin (gdbus), python3-dbus.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use zbus::blocking::{connection::Builder, Connection as ZConn, MessageIterator};
use zbus::message::{Message as ZMsg, Type as MsgType};

const DRIVER: &str = "org.freedesktop.DBus";
const DRIVER_PATH: &str = "/org/freedesktop/DBus";
const SVC_NAME: &str = "org.example.Tools";
const SVC_PATH: &str = "/org/example/Obj";
const SVC_IFACE: &str = "org.example.Iface";
/// A bound on a tool run, so a broker that never answers fails instead of hanging.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

const SVC_XML: &str = r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="org.example.Iface">
    <method name="Echo"><arg direction="in" type="s"/><arg direction="out" type="s"/></method>
    <method name="Fail"><arg direction="in" type="s"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg direction="out" type="s"/></method>
  </interface>
</node>
"#;

// ------------------------------------------------------------------ helpers

fn zconn(b: &Broker) -> ZConn {
    Builder::address(b.dbus_address().as_str())
        .expect("address")
        .method_timeout(TOOL_TIMEOUT)
        .build()
        .expect("zbus connects and says Hello")
}

fn unique(c: &ZConn) -> String {
    c.unique_name().expect("unique name").to_string()
}

fn add_match(c: &ZConn, rule: &str) {
    c.call_method(Some(DRIVER), DRIVER_PATH, Some(DRIVER), "AddMatch", &rule)
        .unwrap_or_else(|e| panic!("AddMatch {rule}: {e}"));
}

fn member(m: &ZMsg) -> String {
    m.header()
        .member()
        .map(|x| x.to_string())
        .unwrap_or_default()
}

/// A zbus service owning `org.example.Tools`: `Echo(s)` → `"echo: <s>"`, `Fail(s)` →
/// error `org.example.Error.Custom`, `Introspect` → its XML. Returns its unique name.
fn spawn_service(b: &Broker) -> String {
    let c = zconn(b);
    let it = MessageIterator::from(&c);
    let r = c
        .call_method(
            Some(DRIVER),
            DRIVER_PATH,
            Some(DRIVER),
            "RequestName",
            &(SVC_NAME, 4u32),
        )
        .expect("RequestName");
    assert_eq!(r.body().deserialize::<u32>().unwrap(), 1);
    let me = unique(&c);
    std::thread::spawn(move || {
        for m in it.flatten() {
            if m.message_type() != MsgType::MethodCall {
                continue;
            }
            let h = m.header();
            let r = match member(&m).as_str() {
                "Echo" => {
                    let s: String = m.body().deserialize().unwrap_or_default();
                    c.reply(&h, &format!("echo: {s}"))
                }
                "Fail" => {
                    let s: String = m.body().deserialize().unwrap_or_default();
                    c.reply_error(&h, "org.example.Error.Custom", &s)
                }
                "Introspect" => c.reply(&h, &SVC_XML),
                other => c.reply_error(
                    &h,
                    "org.freedesktop.DBus.Error.UnknownMethod",
                    &format!("no method {other}"),
                ),
            };
            if r.is_err() {
                return;
            }
        }
    });
    me
}

struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

fn spawn_tool(cmd: &mut Command) -> Child {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    cmd.env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("DBUS_SYSTEM_BUS_ADDRESS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {prog}: {e} (packages: dbus, systemd, libglib2.0-bin)")
        })
}

/// Run a tool to completion (bounded by [`TOOL_TIMEOUT`]).
fn run(cmd: &mut Command) -> Out {
    let mut child = spawn_tool(cmd);
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let so = reader(Box::new(child.stdout.take().unwrap()));
    let se = reader(Box::new(child.stderr.take().unwrap()));
    let end = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {TOOL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Out {
        status,
        stdout: so.join().unwrap(),
        stderr: se.join().unwrap(),
    }
}

/// Run a tool that must succeed.
#[track_caller]
fn run_ok(cmd: &mut Command) -> Out {
    let desc = format!("{cmd:?}");
    let out = run(cmd);
    assert!(out.status.success(), "{desc} failed: {out:?}");
    out
}

fn dbus_send(b: &Broker) -> Command {
    let mut c = Command::new("dbus-send");
    c.arg(format!("--bus={}", b.dbus_address()));
    c
}

fn busctl(b: &Broker) -> Command {
    let mut c = Command::new("busctl");
    c.arg(format!("--address={}", b.dbus_address()))
        .arg("--no-pager")
        .arg("--timeout=30");
    c
}

fn gdbus(b: &Broker, sub: &str) -> Command {
    let mut c = Command::new("gdbus");
    c.arg(sub).arg("-a").arg(b.dbus_address());
    c
}

/// A running process whose stdout lines arrive on a channel; killed on drop.
struct LineReader {
    child: Child,
    rx: mpsc::Receiver<String>,
}

impl LineReader {
    fn spawn(cmd: &mut Command) -> LineReader {
        let mut child = spawn_tool(cmd);
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LineReader { child, rx }
    }
}

impl Drop for LineReader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ dbus-send

#[test]
fn dbus_send_list_names() {
    let b = Broker::start();
    let svc = spawn_service(&b);
    let out = run_ok(
        dbus_send(&b)
            .arg("--print-reply")
            .arg(format!("--dest={DRIVER}"))
            .arg(DRIVER_PATH)
            .arg("org.freedesktop.DBus.ListNames"),
    );
    for n in [DRIVER, SVC_NAME, svc.as_str()] {
        assert!(
            out.stdout.contains(&format!("string \"{n}\"")),
            "{n} missing: {out:?}"
        );
    }
}

#[test]
fn dbus_send_calls_a_zbus_service() {
    let b = Broker::start();
    spawn_service(&b);
    let out = run_ok(
        dbus_send(&b)
            .arg("--print-reply")
            .arg(format!("--dest={SVC_NAME}"))
            .arg(SVC_PATH)
            .arg(format!("{SVC_IFACE}.Echo"))
            .arg("string:hello"),
    );
    assert!(out.stdout.contains("string \"echo: hello\""), "{out:?}");
    // An error reply: dbus-send prints its name and fails.
    let out = run(dbus_send(&b)
        .arg("--print-reply")
        .arg(format!("--dest={SVC_NAME}"))
        .arg(SVC_PATH)
        .arg(format!("{SVC_IFACE}.Fail"))
        .arg("string:broken"));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("org.example.Error.Custom") && out.stderr.contains("broken"),
        "{out:?}"
    );
}

#[test]
fn dbus_send_signal_reaches_a_zbus_subscriber() {
    let b = Broker::start();
    let z = zconn(&b);
    let it = MessageIterator::from(&z);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for m in it.flatten() {
            if tx.send(m).is_err() {
                break;
            }
        }
    });
    add_match(&z, &format!("type='signal',interface='{SVC_IFACE}'"));
    run_ok(
        dbus_send(&b)
            .arg("--type=signal")
            .arg(SVC_PATH)
            .arg(format!("{SVC_IFACE}.Ping"))
            .arg("string:from dbus-send"),
    );
    let end = Instant::now() + SOON;
    let m = loop {
        let left = end
            .checked_duration_since(Instant::now())
            .expect("the signal arrives");
        let m = rx.recv_timeout(left).expect("the signal arrives");
        if m.message_type() == MsgType::Signal
            && m.header().interface().map(|i| i.as_str()) == Some(SVC_IFACE)
        {
            break m;
        }
    };
    assert_eq!(member(&m), "Ping");
    assert_eq!(
        m.header().path().map(|p| p.to_string()).as_deref(),
        Some(SVC_PATH)
    );
    assert!(m
        .header()
        .sender()
        .is_some_and(|s| s.as_str().starts_with(":1.")));
    assert_eq!(m.body().deserialize::<String>().unwrap(), "from dbus-send");
}

#[test]
fn dbus_send_to_an_unknown_name_is_service_unknown() {
    let b = Broker::start();
    let out = run(dbus_send(&b)
        .arg("--print-reply")
        .arg("--dest=org.example.Nobody")
        .arg(SVC_PATH)
        .arg(format!("{SVC_IFACE}.Echo"))
        .arg("string:x"));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr
            .contains("org.freedesktop.DBus.Error.ServiceUnknown"),
        "{out:?}"
    );
}

// ------------------------------------------------------------------ busctl

#[test]
fn busctl_list() {
    let b = Broker::start();
    let svc = spawn_service(&b);
    let out = run_ok(busctl(&b).arg("list"));
    let lines: Vec<&str> = out.stdout.lines().collect();
    let row = |name: &str| {
        lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .copied()
    };
    // The service's row names its unique connection, our pid and our process.
    let r = row(SVC_NAME).unwrap_or_else(|| panic!("no {SVC_NAME} row: {out:?}"));
    let pid = std::process::id().to_string();
    assert!(r.split_whitespace().any(|f| f == svc), "{r}");
    assert!(r.split_whitespace().any(|f| f == pid), "{r}");
    assert!(row(&svc).is_some(), "no {svc} row: {out:?}");
    assert!(row(DRIVER).is_some(), "no {DRIVER} row: {out:?}");
}

#[test]
fn busctl_call() {
    let b = Broker::start();
    let svc = spawn_service(&b);
    let out = run_ok(
        busctl(&b)
            .arg("call")
            .arg(SVC_NAME)
            .arg(SVC_PATH)
            .arg(SVC_IFACE)
            .arg("Echo")
            .arg("s")
            .arg("hello"),
    );
    assert_eq!(out.stdout.trim(), "s \"echo: hello\"", "{out:?}");
    let out = run_ok(
        busctl(&b)
            .arg("call")
            .arg(DRIVER)
            .arg(DRIVER_PATH)
            .arg(DRIVER)
            .arg("GetNameOwner")
            .arg("s")
            .arg(SVC_NAME),
    );
    assert_eq!(out.stdout.trim(), format!("s \"{svc}\""), "{out:?}");
}

// ------------------------------------------------------------------ gdbus

#[test]
fn gdbus_call() {
    let b = Broker::start();
    let svc = spawn_service(&b);
    let out = run_ok(
        gdbus(&b, "call")
            .args(["-d", SVC_NAME, "-o", SVC_PATH, "-m"])
            .arg(format!("{SVC_IFACE}.Echo"))
            .arg("'hello'"),
    );
    assert_eq!(out.stdout.trim(), "('echo: hello',)", "{out:?}");
    let out = run_ok(
        gdbus(&b, "call")
            .args(["-d", DRIVER, "-o", DRIVER_PATH, "-m"])
            .arg("org.freedesktop.DBus.GetNameOwner")
            .arg(SVC_NAME),
    );
    assert_eq!(out.stdout.trim(), format!("('{svc}',)"), "{out:?}");
}

#[test]
fn gdbus_introspect_the_bus() {
    let b = Broker::start();
    let out = run_ok(gdbus(&b, "introspect").args(["-d", DRIVER, "-o", DRIVER_PATH]));
    for want in [
        "interface org.freedesktop.DBus {",
        "ListNames(",
        "RequestName(",
        "NameOwnerChanged(",
        "interface org.freedesktop.DBus.Introspectable {",
    ] {
        assert!(out.stdout.contains(want), "{want:?} missing: {out:?}");
    }
}

// ------------------------------------------------------------------ dbus-monitor

/// Wait until the monitor prints a message whose first line satisfies `head` and whose
/// next line satisfies `body`; returns both lines. Calls `poke(round)` every half
/// second meanwhile (the monitor may not be watching yet), for at most 30 s.
fn monitor_wait(
    mon: &LineReader,
    mut poke: impl FnMut(u32),
    head: impl Fn(&str) -> bool,
    body: impl Fn(&str) -> bool,
) -> Option<String> {
    let end = Instant::now() + Duration::from_secs(30);
    let mut want_body = None;
    let mut round = 0;
    while Instant::now() < end {
        poke(round);
        round += 1;
        let poll_end = Instant::now() + Duration::from_millis(500);
        while let Some(left) = poll_end.checked_duration_since(Instant::now()) {
            let Ok(line) = mon.rx.recv_timeout(left) else {
                break;
            };
            if let Some(h) = want_body.take() {
                if body(&line) {
                    return Some(format!("{h}\n{line}"));
                }
            }
            if head(&line) {
                want_body = Some(line);
            }
        }
    }
    None
}

#[test]
fn dbus_monitor_sees_a_call_between_two_peers() {
    let b = Broker::start();
    let svc = spawn_service(&b);
    let client = zconn(&b);
    let me = unique(&client);
    let mon = LineReader::spawn(
        Command::new("dbus-monitor")
            .arg("--address")
            .arg(b.dbus_address()),
    );
    // The monitor needs a moment to connect and call BecomeMonitor: keep calling until
    // it shows a call.
    let seen = monitor_wait(
        &mon,
        |i| {
            let r = client
                .call_method(
                    Some(SVC_NAME),
                    SVC_PATH,
                    Some(SVC_IFACE),
                    "Echo",
                    &format!("token-{i}"),
                )
                .expect("Echo");
            assert_eq!(
                r.body().deserialize::<String>().unwrap(),
                format!("echo: token-{i}")
            );
        },
        |l| {
            l.starts_with("method call ")
                && l.contains(&format!("sender={me} "))
                && l.contains(&format!("destination={SVC_NAME} "))
                && l.contains(&format!("interface={SVC_IFACE};"))
                && l.contains("member=Echo")
        },
        |l| l.trim().starts_with("string \"token-"),
    );
    assert!(
        seen.is_some(),
        "dbus-monitor never showed the call from {me} to {svc}"
    );
    // And the reply, from the service's unique name to the caller.
    let reply = monitor_wait(
        &mon,
        |i| {
            client
                .call_method(
                    Some(SVC_NAME),
                    SVC_PATH,
                    Some(SVC_IFACE),
                    "Echo",
                    &format!("again-{i}"),
                )
                .expect("Echo");
        },
        |l| {
            l.starts_with("method return ")
                && l.contains(&format!("sender={svc} "))
                && l.contains(&format!("destination={me} "))
        },
        |l| l.trim().starts_with("string \"echo: again-"),
    );
    assert!(
        reply.is_some(),
        "dbus-monitor never showed the reply from {svc} to {me}"
    );
}

#[test]
fn dbus_monitor_sees_calls_to_the_driver() {
    let b = Broker::start();
    let client = zconn(&b);
    let me = unique(&client);
    let mon = LineReader::spawn(
        Command::new("dbus-monitor")
            .arg("--address")
            .arg(b.dbus_address()),
    );
    let seen = monitor_wait(
        &mon,
        |i| {
            client
                .call_method(
                    Some(DRIVER),
                    DRIVER_PATH,
                    Some(DRIVER),
                    "NameHasOwner",
                    &format!("org.example.T{i}"),
                )
                .expect("NameHasOwner");
        },
        |l| {
            l.starts_with("method call ")
                && l.contains(&format!("sender={me} "))
                && l.contains(&format!("destination={DRIVER} "))
                && l.contains("member=NameHasOwner")
        },
        |l| l.trim().starts_with("string \"org.example.T"),
    );
    assert!(
        seen.is_some(),
        "dbus-monitor never showed NameHasOwner from {me}"
    );
}

// ------------------------------------------------------------------ python3-dbus

/// A python3 that has the `dbus` module, if any.
fn python_with_dbus() -> Option<String> {
    for py in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(py)
            .args(["-c", "import dbus, dbus.bus"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(py.to_string());
        }
    }
    None
}

const PY_CLIENT: &str = r#"
import sys
import dbus, dbus.bus, dbus.exceptions
bus = dbus.bus.BusConnection(sys.argv[1])
print("UNIQUE", bus.get_unique_name())
drv = dbus.Interface(bus.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus",
                                    introspect=False), "org.freedesktop.DBus")
print("NAMES", " ".join(str(n) for n in drv.ListNames()))
obj = bus.get_object("org.example.Tools", "/org/example/Obj", introspect=False)
print("ECHO", str(obj.Echo("from python", dbus_interface="org.example.Iface")))
try:
    obj.Fail("x", dbus_interface="org.example.Iface")
    print("FAIL none")
except dbus.exceptions.DBusException as e:
    print("FAIL", e.get_dbus_name())
"#;

#[test]
fn python_dbus_client() {
    let Some(py) = python_with_dbus() else {
        eprintln!(
            "SKIPPED python_dbus_client: no python3 with the dbus module \
             (`python3 -c 'import dbus'` fails for python3 and /usr/bin/python3; \
             install python3-dbus)"
        );
        return;
    };
    let b = Broker::start();
    let svc = spawn_service(&b);
    let out = run_ok(
        Command::new(py)
            .arg("-c")
            .arg(PY_CLIENT)
            .arg(b.dbus_address()),
    );
    let field = |k: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k} ")))
            .unwrap_or_else(|| panic!("no {k} line: {out:?}"))
            .to_string()
    };
    assert!(field("UNIQUE").starts_with(":1."), "{out:?}");
    let names = field("NAMES");
    let names: Vec<&str> = names.split_whitespace().collect();
    for n in [DRIVER, SVC_NAME, svc.as_str()] {
        assert!(names.contains(&n), "{n} missing: {out:?}");
    }
    assert_eq!(field("ECHO"), "echo: from python");
    assert_eq!(field("FAIL"), "org.example.Error.Custom");
}
