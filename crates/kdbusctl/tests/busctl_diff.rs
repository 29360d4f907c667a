//! `kdbusctl call`, `get-property`, `tree`, `introspect` and `monitor --match` against
//! busctl (and `status`, `wait` and `--user` beside them), on a GLib service served by
//! kdbusd: the same words out for the same call, through the bus's D-Bus socket and
//! through its native one. Skipped without busctl or python3-gi (both installed by
//! `.ci/run`).

mod common;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVICE: &str = "org.kdbus.Glib";
const PATH: &str = "/org/kdbus/Glib";

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{args:?}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// `kdbusctl wait` for signal `org.x.Y.Sig` on `/a/b`, printing its body when it comes.
fn wait_for_sig(bus: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kdbusctl"))
        .args([
            "--bus",
            bus,
            "wait",
            "/a/b",
            "org.x.Y",
            "Sig",
            "--timeout-ms",
            "10000",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn kdbusctl(args: &[&str]) -> String {
    run(env!("CARGO_BIN_EXE_kdbusctl"), args)
}

/// kdbusd with the GLib service on it, up and named.
struct Glib {
    _service: Kill,
    _broker: Kill,
    _dir: tempfile::TempDir,
    /// The native endpoint and the D-Bus address of the bus.
    bus: String,
    address: String,
    service_pid: u32,
}

impl Glib {
    /// `None` (the test skips) without busctl or python3-gi.
    fn start() -> Option<Glib> {
        if !have("busctl", &["--version"]) || !have("/usr/bin/python3", &["-c", "import gi"]) {
            eprintln!("skipped: needs busctl and python3-gi");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (broker, line) = common::start_kdbusd(&[
            std::ffi::OsStr::new("--runtime-dir"),
            dir.path().as_os_str(),
        ]);
        let broker = Kill(broker);
        let word = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("{k} in {line}"))
                .to_string()
        };
        let (bus, address) = (word("bus="), word("dbus="));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/glib_service.py");
        let service = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(&address)
            .spawn()
            .unwrap();
        let service_pid = service.id();
        let service = Kill(service);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("busctl")
                .args([
                    &format!("--address={address}"),
                    "call",
                    "org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                ])
                .args(["org.freedesktop.DBus", "NameHasOwner", "s", SERVICE])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == "b true" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the GLib service did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Glib {
            _service: service,
            _broker: broker,
            _dir: dir,
            bus,
            address,
            service_pid,
        })
    }
}

#[test]
fn call_get_property_tree_and_introspect_say_what_busctl_says() {
    let Some(g) = Glib::start() else { return };
    let (bus, address, service_pid) = (g.bus.clone(), g.address.clone(), g.service_pid);
    let busctl_address = format!("--address={address}");
    let calls: &[&[&str]] = &[
        &["Echo", "s", "hello \"there\"\tand a tab"],
        &["Add", "ii", "2", "-40"],
        &["Tags"],
    ];
    for c in calls {
        // (After `--`, busctl takes "-40" for an argument, not an option.)
        let mut b = vec![
            busctl_address.as_str(),
            "--",
            "call",
            SERVICE,
            PATH,
            SERVICE,
        ];
        b.extend_from_slice(c);
        let want = run("busctl", &b);
        let mut d = vec!["call", "--address", &address, SERVICE, PATH, SERVICE];
        d.extend_from_slice(c);
        assert_eq!(kdbusctl(&d), want, "through the D-Bus socket: {c:?}");
        let mut n = vec!["--bus", &bus, "call", SERVICE, PATH, SERVICE];
        n.extend_from_slice(c);
        assert_eq!(kdbusctl(&n), want, "through the native socket: {c:?}");
    }
    let views: &[&[&str]] = &[
        &["tree", SERVICE],
        &["tree", "--list", SERVICE],
        &["introspect", SERVICE, PATH],
    ];
    for v in views {
        let mut b = vec![busctl_address.as_str()];
        b.extend_from_slice(v);
        let want = run("busctl", &b);
        // Ours takes its options after the verb.
        let (verb, rest) = v.split_first().unwrap();
        let mut d = vec![*verb, "--address", &address];
        d.extend_from_slice(rest);
        assert_eq!(kdbusctl(&d), want, "through the D-Bus socket: {v:?}");
        let mut n = vec!["--bus", &bus, *verb];
        n.extend_from_slice(rest);
        assert_eq!(kdbusctl(&n), want, "through the native socket: {v:?}");
    }
    for prop in ["Name", "Count", "Flags"] {
        let want = run(
            "busctl",
            &[
                &busctl_address,
                "get-property",
                SERVICE,
                PATH,
                SERVICE,
                prop,
            ],
        );
        let d = [
            "get-property",
            "--address",
            &address,
            SERVICE,
            PATH,
            SERVICE,
            prop,
        ];
        assert_eq!(kdbusctl(&d), want, "through the D-Bus socket: {prop}");
        let n = ["--bus", &bus, "get-property", SERVICE, PATH, SERVICE, prop];
        assert_eq!(kdbusctl(&n), want, "through the native socket: {prop}");
    }

    // Monitors with a match rule see the same messages, said the same way (busctl's
    // JSON, less its timestamps).
    let rule = format!("type='method_call',interface='{SERVICE}',member='Echo'");
    let watch = |program: &str, args: &[&str]| {
        Kill(
            Command::new(program)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let match_arg = format!("--match={rule}");
    let mut monitors = [
        watch(
            "busctl",
            &[&busctl_address, "monitor", "--json=short", &match_arg],
        ),
        watch(
            env!("CARGO_BIN_EXE_kdbusctl"),
            &["monitor", "--json", "--address", &address, "--match", &rule],
        ),
        watch(
            env!("CARGO_BIN_EXE_kdbusctl"),
            &["--bus", &bus, "monitor", "--json", "--match", &rule],
        ),
    ];
    std::thread::sleep(Duration::from_millis(1000));
    for (m, a) in [("Echo", "one"), ("Add", "-"), ("Echo", "two")] {
        let mut args = vec![
            busctl_address.as_str(),
            "--",
            "call",
            SERVICE,
            PATH,
            SERVICE,
            m,
        ];
        if m == "Echo" {
            args.extend(["s", a]);
        } else {
            args.extend(["ii", "1", "2"]);
        }
        run("busctl", &args);
    }
    std::thread::sleep(Duration::from_millis(500));
    let seen: Vec<Vec<serde_json::Value>> = monitors
        .iter_mut()
        .map(|k| {
            let _ = k.0.kill();
            let mut text = String::new();
            use std::io::Read;
            k.0.stdout
                .take()
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .map(|mut v| {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("timestamp-realtime");
                    }
                    v
                })
                .collect()
        })
        .collect();
    assert_eq!(seen[0].len(), 2, "busctl saw {:?}", seen[0]);
    assert_eq!(seen[1], seen[0], "through the D-Bus socket");
    assert_eq!(seen[2], seen[0], "through the native socket");

    // --user takes the session bus from the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_kdbusctl"))
        .env("DBUS_SESSION_BUS_ADDRESS", &address)
        .args([
            "--user", "call", SERVICE, PATH, SERVICE, "Add", "ii", "3", "4",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "i 7");
    // status: the owner and its credentials (the GLib service is our child).
    let v: serde_json::Value =
        serde_json::from_str(&kdbusctl(&["--bus", &bus, "status", SERVICE, "--json"])).unwrap();
    assert!(
        v["UniqueName"]
            .as_str()
            .is_some_and(|u| u.starts_with(":1.")),
        "{v}"
    );
    assert_eq!(v["PID"].as_u64(), Some(u64::from(service_pid)), "{v}");
    // wait: the first matching signal's body, as busctl prints bodies.
    let waiter = wait_for_sig(&bus);
    std::thread::sleep(Duration::from_millis(700));
    // A signal of another member first: wait takes only the one it names.
    for (member, args) in [("Other", &["s", "no"][..]), ("Sig", &["su", "hello", "5"])] {
        let mut emit = vec![busctl_address.as_str(), "emit", "/a/b", "org.x.Y", member];
        emit.extend_from_slice(args);
        run("busctl", &emit);
    }
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "su \"hello\" 5"
    );
    // A wait with nothing to wait for gives up when told.
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kdbusctl"))
        .args([
            "--bus",
            &bus,
            "wait",
            "/a/b",
            "org.x.Y",
            "Never",
            "--timeout-ms",
            "300",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out"));
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

/// `set-property` writes what busctl reads back, and the other way round; `emit`
/// sends what `busctl emit` sends (the same body seen by the same waiter), through
/// both sockets; `capture` records the same messages busctl's capture records, in
/// the same pcapng link type.
#[test]
fn set_property_emit_and_capture_say_what_busctl_says() {
    let Some(g) = Glib::start() else { return };
    let (bus, address) = (g.bus.as_str(), g.address.as_str());
    let busctl_address = format!("--address={address}");
    let get = || {
        run(
            "busctl",
            &[
                &busctl_address,
                "get-property",
                SERVICE,
                PATH,
                SERVICE,
                "Label",
            ],
        )
    };
    let set_d = [
        "set-property",
        "--address",
        address,
        SERVICE,
        PATH,
        SERVICE,
        "Label",
    ];
    kdbusctl(&[&set_d[..], &["s", "via the D-Bus socket"]].concat());
    assert_eq!(get(), "s \"via the D-Bus socket\"");
    let set_n = [
        "--bus",
        bus,
        "set-property",
        SERVICE,
        PATH,
        SERVICE,
        "Label",
    ];
    kdbusctl(&[&set_n[..], &["s", "via the native socket"]].concat());
    assert_eq!(get(), "s \"via the native socket\"");
    run(
        "busctl",
        &[
            &busctl_address,
            "set-property",
            SERVICE,
            PATH,
            SERVICE,
            "Label",
            "s",
            "by busctl",
        ],
    );
    let read = [
        "--bus",
        bus,
        "get-property",
        SERVICE,
        PATH,
        SERVICE,
        "Label",
    ];
    assert_eq!(kdbusctl(&read), "s \"by busctl\"");

    // Captures, by both tools, of everything below.
    let cap_dir = tempfile::tempdir().unwrap();
    let capture = |program: &str, args: &[&str], file: &str| {
        let out = std::fs::File::create(cap_dir.path().join(file)).unwrap();
        Kill(
            Command::new(program)
                .args(args)
                .stdout(out)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let captures = [
        capture("busctl", &[&busctl_address, "capture"], "busctl.pcapng"),
        capture(
            env!("CARGO_BIN_EXE_kdbusctl"),
            &["capture", "--address", address],
            "kdbusctl.pcapng",
        ),
    ];
    std::thread::sleep(Duration::from_millis(1000));

    // The same signal from three emitters, each seen by a waiter as busctl prints it.
    let args = ["su", "emitted \"here\"", "7"];
    let emitters: [Vec<&str>; 3] = [
        vec!["busctl", &busctl_address, "emit", "/a/b", "org.x.Y", "Sig"],
        vec![
            env!("CARGO_BIN_EXE_kdbusctl"),
            "emit",
            "--address",
            address,
            "/a/b",
            "org.x.Y",
            "Sig",
        ],
        vec![
            env!("CARGO_BIN_EXE_kdbusctl"),
            "--bus",
            bus,
            "emit",
            "/a/b",
            "org.x.Y",
            "Sig",
        ],
    ];
    for e in &emitters {
        let waiter = wait_for_sig(bus);
        std::thread::sleep(Duration::from_millis(500));
        run(e[0], &[&e[1..], &args[..]].concat());
        let out = waiter.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "su \"emitted \\\"here\\\"\" 7",
            "emitted by {e:?}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(captures);

    // What each capture holds: the signals and calls above, in order (the bus's own
    // traffic with the tools aside).
    let seen = |file: &str| -> Vec<String> {
        let bytes = std::fs::read(cap_dir.path().join(file)).unwrap();
        let (linktype, packets) = read_pcapng(&bytes);
        assert_eq!(linktype, 231, "{file}: link type D-Bus");
        packets
            .iter()
            .filter_map(|p| {
                let h = kdbus_dbus::header::parse(p).ok()?;
                let member = h.member?;
                (member == "Sig" || h.interface == Some(SERVICE))
                    .then(|| format!("{:?} {} {}", h.msg_type, h.path.unwrap_or(""), member))
            })
            .collect()
    };
    let (theirs, ours) = (seen("busctl.pcapng"), seen("kdbusctl.pcapng"));
    assert_eq!(
        theirs.iter().filter(|s| s.ends_with(" Sig")).count(),
        3,
        "{theirs:?}"
    );
    assert_eq!(ours, theirs);
}

/// The link type and packets of a pcapng file written on this machine.
fn read_pcapng(file: &[u8]) -> (u32, Vec<Vec<u8>>) {
    let word = |at: usize| u32::from_ne_bytes(file[at..at + 4].try_into().unwrap());
    assert_eq!(word(0), 0x0A0D_0D0A, "a section header first");
    let (mut linktype, mut packets, mut at) = (0, Vec::new(), 0);
    while at + 12 <= file.len() {
        let (kind, len) = (word(at), word(at + 4) as usize);
        match kind {
            1 => linktype = word(at + 8) & 0xffff,
            6 => packets.push(file[at + 28..at + 28 + word(at + 20) as usize].to_vec()),
            _ => {}
        }
        at += len;
    }
    (linktype, packets)
}
