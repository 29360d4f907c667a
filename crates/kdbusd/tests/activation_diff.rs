//! Service activation, checked against dbus-daemon: the same `.service` files and
//! client script against both brokers (`common/diff.rs`, `common/script.rs`), the
//! answers compared. A call or `StartServiceByName` starts a service, which answers;
//! failures, limits and systemd activation give dbus-daemon's errors. Skipped without
//! root, dbus-daemon, dbus-send or setpriv.

mod common;
#[path = "common/diff.rs"]
mod diff;
#[path = "common/script.rs"]
mod script;
#[path = "common/zbus_peer.rs"]
mod zbus_peer;
use diff::{usable, zconn};
use script::{both_with, both_with_args, both_with_env, driver, reply_text};
use zbus::message::Type as MsgType;
use zbus_peer::member;

/// The service `activation` starts: owns `org.kdbus.Activated` (or the name
/// `KDBUS_TEST_SERVICE_NAME` says) on the bus that started it and answers `Ping` with "pong" until the bus goes (a test only when a
/// bus starts it).
#[test]
fn activated_service() {
    let Ok(address) = std::env::var("DBUS_STARTER_ADDRESS") else {
        return;
    };
    if std::env::var("KDBUS_TEST_ACTIVATION").is_err() {
        return;
    }
    let name = std::env::var("KDBUS_TEST_SERVICE_NAME");
    pong_service(&address, name.as_deref().unwrap_or("org.kdbus.Activated"));
}

/// Call `Ping` on `dest`: the answer's string, or the error's name and text.
fn ping(c: &zbus::blocking::Connection, dest: &str) -> String {
    match c.call_method(Some(dest), "/", Some("org.kdbus.A"), "Ping", &()) {
        Ok(m) => m.body().deserialize::<String>().unwrap_or_default(),
        Err(zbus::Error::MethodError(name, text, _)) => {
            format!("{name}: {}", text.unwrap_or_default())
        }
        Err(e) => format!("failed: {e}"),
    }
}

/// The activatable names of the tests (`org.kdbus.*`), sorted.
fn kdbus_activatable(c: &zbus::blocking::Connection) -> Vec<String> {
    let mut names: Vec<String> = driver(c, "ListActivatableNames", &())
        .ok()
        .and_then(|m| m.body().deserialize::<Vec<String>>().ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with("org.kdbus."))
        .collect();
    names.sort();
    names
}

/// A service that owns `name` on the bus at `address` and answers `Ping` with "pong"
/// until the bus goes.
fn pong_service(address: &str, name: &str) {
    let c = zconn(address);
    let it = zbus::blocking::MessageIterator::from(&c);
    diff::request_name(&c, name);
    for m in it.flatten() {
        if m.message_type() == MsgType::MethodCall && member(&m) == "Ping" {
            let _ = c.reply(&m.header(), &"pong");
        }
    }
}

/// A service directory with `org.kdbus.Activated` (this test binary as
/// `activated_service`) and `org.kdbus.Fails` (exits 3), and the configuration line
/// that names it. The harness starts buses with KDBUS_TEST_ACTIVATION set, which
/// services inherit: it tells the test binary to be the service.
fn test_services() -> (tempfile::TempDir, String) {
    let services = tempfile::tempdir().expect("a service directory");
    let exe = std::env::current_exe().expect("the test binary");
    std::fs::write(
        services.path().join("org.kdbus.Activated.service"),
        format!(
            // The bus's stdout may be a closed pipe: the test harness must not write to it.
            "[D-BUS Service]\nName=org.kdbus.Activated\nExec=/bin/sh -c '{} activated_service --exact --test-threads=1 >/dev/null 2>&1'\n",
            exe.display()
        ),
    )
    .expect("a service file");
    std::fs::write(
        services.path().join("org.kdbus.Fails.service"),
        "[D-BUS Service]\nName=org.kdbus.Fails\nExec=/bin/sh -c 'exit 3'\n",
    )
    .expect("a service file");
    let extra = format!("<servicedir>{}</servicedir>", services.path().display());
    (services, extra)
}

/// `StartServiceByName` answers once the service owns its name (1), at once when it
/// runs already (2), and with the error that ended a start or `ServiceUnknown`.
#[test]
fn start_service_by_name_answers_when_the_service_has_come() {
    if !usable() {
        return;
    }
    let (_services, extra) = test_services();
    let script = |address: &str| {
        let c = zconn(address);
        let start = |name: &str| {
            let r = driver(&c, "StartServiceByName", &(name, 0u32));
            match r {
                Err(zbus::Error::MethodError(name, text, _)) => {
                    format!("{name}: {}", text.unwrap_or_default())
                }
                r => reply_text(r),
            }
        };
        vec![
            start("org.kdbus.Activated"),
            driver(&c, "NameHasOwner", &"org.kdbus.Activated")
                .ok()
                .and_then(|m| m.body().deserialize::<bool>().ok())
                .map_or("failed".into(), |b| b.to_string()),
            start("org.kdbus.Activated"),
            start("org.kdbus.Fails"),
            start("org.kdbus.Nobody"),
        ]
    };
    both_with(
        &extra,
        script,
        &[
            "1",
            "true",
            "2",
            "org.freedesktop.DBus.Error.Spawn.ChildExited: Process org.kdbus.Fails exited with status 3",
            "org.freedesktop.DBus.Error.ServiceUnknown: The name org.kdbus.Nobody was not provided by any .service files",
        ],
    );
}

/// Activation from `.service` files: a call to an activatable name starts its
/// service, which answers that very call; a service whose program fails gives
/// dbus-daemon's error; both are listed as activatable.
#[test]
fn a_call_to_an_activatable_name_starts_its_service() {
    if !usable() {
        return;
    }
    let (_services, extra) = test_services();
    let script = |address: &str| {
        let c = zconn(address);
        let names = kdbus_activatable(&c);
        let call = |dest: &str| ping(&c, dest);
        vec![
            names.join(","),
            call("org.kdbus.Activated"),
            call("org.kdbus.Activated"),
            call("org.kdbus.Fails"),
            driver(&c, "NameHasOwner", &"org.kdbus.Activated")
                .ok()
                .and_then(|m| m.body().deserialize::<bool>().ok())
                .map_or("failed".into(), |b| b.to_string()),
        ]
    };
    both_with(
        &extra,
        script,
        &[
            "org.kdbus.Activated,org.kdbus.Fails",
            "pong",
            "pong",
            "org.freedesktop.DBus.Error.Spawn.ChildExited: Process org.kdbus.Fails exited with status 3",
            "true",
        ],
    );
}

/// `max_pending_service_starts`: a service more than may be starting at once is
/// refused in dbus-daemon's words.
#[test]
fn too_many_services_starting_is_limits_exceeded() {
    if !usable() {
        return;
    }
    let services = tempfile::tempdir().expect("a service directory");
    for name in ["org.kdbus.Slow1", "org.kdbus.Slow2"] {
        std::fs::write(
            services.path().join(format!("{name}.service")),
            format!("[D-BUS Service]\nName={name}\nExec=/bin/sleep 2\n"),
        )
        .expect("a service file");
    }
    let extra = format!(
        "<servicedir>{}</servicedir><limit name=\"max_pending_service_starts\">1</limit>",
        services.path().display()
    );
    let call = |address: &str, dest: &str| ping(&zconn(address), dest);
    both_with(
        &extra,
        |address| {
            let a = address.to_string();
            // The first service is starting (and stays so for two seconds)...
            std::thread::spawn(move || call(&a, "org.kdbus.Slow1"));
            std::thread::sleep(std::time::Duration::from_millis(300));
            // ...so the second may not.
            vec![call(address, "org.kdbus.Slow2")]
        },
        &[
            "org.freedesktop.DBus.Error.LimitsExceeded: The maximum number of pending \
           activations has been reached, activation of org.kdbus.Slow2 failed \
           (max_pending_service_starts=1)",
        ],
    );
}

/// A stand-in for systemd on the bus at `address`: owns `org.freedesktop.systemd1`
/// and answers each `ActivationRequest` for `kdbus-unit.service` by starting a
/// service that owns `org.kdbus.Unit` (and answers `Ping`), and any other with an
/// `ActivationFailure`. Returns what it was asked, one line per request.
fn stand_in_systemd(address: &str) -> std::sync::mpsc::Receiver<String> {
    let c = zconn(address);
    let it = zbus::blocking::MessageIterator::from(&c);
    diff::request_name(&c, "org.freedesktop.systemd1");
    let (tx, rx) = std::sync::mpsc::channel();
    let address = address.to_string();
    std::thread::spawn(move || {
        for m in it.flatten() {
            let h = m.header();
            if m.message_type() != MsgType::Signal || member(&m) != "ActivationRequest" {
                continue;
            }
            let unit: String = m.body().deserialize().unwrap_or_default();
            let _ = tx.send(format!(
                "request {unit} from {} at {} on {}",
                h.sender().map_or("-".into(), |s| s.to_string()),
                h.path().map_or("-".into(), |p| p.to_string()),
                h.interface().map_or("-".into(), |i| i.to_string()),
            ));
            if unit == "kdbus-unit.service" {
                let address = address.clone();
                std::thread::spawn(move || pong_service(&address, "org.kdbus.Unit"));
            } else {
                let _ = c.emit_signal(
                    Some("org.freedesktop.DBus"),
                    "/org/freedesktop/systemd1",
                    "org.freedesktop.systemd1.Activator",
                    "ActivationFailure",
                    &(
                        unit.as_str(),
                        "org.freedesktop.systemd1.NoSuchUnit",
                        format!("Unit {unit} not found."),
                    ),
                );
            }
        }
    });
    rx
}

/// `--systemd-activation`: a service with `SystemdService=` is systemd's to start.
/// The bus sends systemd `ActivationRequest` (once systemd is on the bus: the first
/// call here comes before it), the call waits for the unit's service and is answered
/// by it; a unit systemd cannot start fails the call with systemd's error; a forged
/// `ActivationFailure` from someone else changes nothing.
#[test]
fn systemd_activation_asks_systemd_and_takes_its_failures() {
    if !usable() {
        return;
    }
    let services = tempfile::tempdir().expect("a service directory");
    for (name, unit) in [
        ("org.kdbus.Unit", "kdbus-unit.service"),
        ("org.kdbus.BadUnit", "kdbus-bad.service"),
    ] {
        std::fs::write(
            services.path().join(format!("{name}.service")),
            format!("[D-BUS Service]\nName={name}\nExec=/bin/false\nSystemdService={unit}\n"),
        )
        .expect("a service file");
    }
    let extra = format!("<servicedir>{}</servicedir>", services.path().display());
    let call = |address: &str, dest: &str| ping(&zconn(address), dest);
    let script = |address: &str| {
        let a = address.to_string();
        let first = std::thread::spawn(move || call(&a, "org.kdbus.Unit"));
        std::thread::sleep(std::time::Duration::from_millis(300));
        // A root client that is not systemd claims the unit failed: ignored.
        let forger = zconn(address);
        let _ = forger.emit_signal(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Activator",
            "ActivationFailure",
            &("kdbus-unit.service", "org.x.Forged", "forged"),
        );
        let asked = stand_in_systemd(address);
        let mut t = vec![first.join().unwrap_or_default()];
        t.push(call(address, "org.kdbus.BadUnit"));
        t.extend(asked.try_iter());
        t
    };
    both_with_args(
        &extra,
        &["--systemd-activation"],
        script,
        &[
            "pong",
            "org.freedesktop.systemd1.NoSuchUnit: Unit kdbus-bad.service not found.",
            "request kdbus-unit.service from org.freedesktop.DBus at /org/freedesktop/DBus on org.freedesktop.systemd1.Activator",
            "request kdbus-bad.service from org.freedesktop.DBus at /org/freedesktop/DBus on org.freedesktop.systemd1.Activator",
        ],
    );
}

/// `ActivatableServicesChanged` after `ReloadConfig`, and after a `.service` file
/// appears in a service directory (both brokers watch them and reload on their own),
/// with the new name activatable then.
#[test]
fn activatable_services_changed_after_a_reload_and_a_new_service_file() {
    if !usable() {
        return;
    }
    let (services, extra) = test_services();
    let script = |address: &str| {
        let c = zconn(address);
        let inbox = zbus_peer::Inbox::new(&c);
        driver(
            &c,
            "AddMatch",
            &"type='signal',member='ActivatableServicesChanged'",
        )
        .expect("AddMatch");
        let changed = || {
            let m = inbox.next_where(|m| member(m) == "ActivatableServicesChanged");
            m.map_or("no signal".to_string(), |m| {
                let h = m.header();
                format!(
                    "{} from {} at {}",
                    member(&m),
                    h.sender().map_or("-".into(), |s| s.to_string()),
                    h.path().map_or("-".into(), |p| p.to_string())
                )
            })
        };
        let activatable = || kdbus_activatable(&c).iter().any(|n| n == "org.kdbus.New");
        let mut t = vec![reply_text(driver(&c, "ReloadConfig", &()))];
        t.push(changed());
        t.push(format!("new activatable before: {}", activatable()));
        let file = services.path().join("org.kdbus.New.service");
        std::fs::write(
            &file,
            "[D-BUS Service]\nName=org.kdbus.New\nExec=/bin/false\n",
        )
        .expect("a service file");
        t.push(changed());
        t.push(format!("new activatable after: {}", activatable()));
        let _ = std::fs::remove_file(&file);
        t.push(changed());
        t
    };
    let line = "ActivatableServicesChanged from org.freedesktop.DBus at /org/freedesktop/DBus";
    both_with(
        &extra,
        script,
        &[
            "ok",
            line,
            "new activatable before: false",
            line,
            "new activatable after: true",
            line,
        ],
    );
}

/// The first call that names an activatable service, from `dbus-send --print-reply`
/// (libdbus) and from `gdbus call` (GLib's auto-start), starts it and is answered by
/// it; a service that fails gives dbus-daemon's error to `dbus-send`.
#[test]
fn first_calls_from_dbus_send_and_gdbus_start_their_services() {
    if !usable() {
        return;
    }
    let services = tempfile::tempdir().expect("a service directory");
    let exe = std::env::current_exe().expect("the test binary");
    for name in ["org.kdbus.ViaSend", "org.kdbus.ViaGio"] {
        std::fs::write(
            services.path().join(format!("{name}.service")),
            format!(
                "[D-BUS Service]\nName={name}\nExec=/bin/sh -c 'KDBUS_TEST_SERVICE_NAME={name} {} activated_service --exact --test-threads=1 >/dev/null 2>&1'\n",
                exe.display()
            ),
        )
        .expect("a service file");
    }
    std::fs::write(
        services.path().join("org.kdbus.Fails.service"),
        "[D-BUS Service]\nName=org.kdbus.Fails\nExec=/bin/sh -c 'exit 3'\n",
    )
    .expect("a service file");
    let extra = format!("<servicedir>{}</servicedir>", services.path().display());
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().expect("the tool runs");
        let text = if out.status.success() {
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        // dbus-send's reply line carries times and serials; its body line does not.
        text.lines()
            .filter(|l| !l.starts_with("method return"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let script = |address: &str| {
        let send = |dest: &str| {
            run(std::process::Command::new("dbus-send")
                .arg(format!("--bus={address}"))
                .args([
                    "--print-reply",
                    &format!("--dest={dest}"),
                    "/",
                    "org.kdbus.A.Ping",
                ]))
        };
        vec![
            send("org.kdbus.ViaSend"),
            run(std::process::Command::new("gdbus").args([
                "call",
                "--address",
                address,
                "--dest",
                "org.kdbus.ViaGio",
                "--object-path",
                "/",
                "--method",
                "org.kdbus.A.Ping",
            ])),
            send("org.kdbus.Fails"),
        ]
    };
    both_with(
        &extra,
        script,
        &[
            "string \"pong\"",
            "('pong',)",
            "Error org.freedesktop.DBus.Error.Spawn.ChildExited: Process org.kdbus.Fails exited with status 3",
        ],
    );
}

/// `<standard_session_servicedirs/>` includes the transient directory
/// `$XDG_RUNTIME_DIR/dbus-1/services` (searched first), where a file counts only if
/// it is named after its service.
#[test]
fn the_transient_service_directory_is_a_standard_one() {
    if !usable() {
        return;
    }
    let runtime = tempfile::tempdir().expect("a runtime directory");
    let transient = runtime.path().join("dbus-1/services");
    std::fs::create_dir_all(&transient).unwrap();
    for (file, name) in [
        ("org.kdbus.Transient.service", "org.kdbus.Transient"),
        ("misnamed.service", "org.kdbus.Misnamed"),
    ] {
        std::fs::write(
            transient.join(file),
            format!("[D-BUS Service]\nName={name}\nExec=/bin/false\n"),
        )
        .unwrap();
    }
    let script = |address: &str| {
        let c = zconn(address);
        vec![kdbus_activatable(&c).join(",")]
    };
    let runtime = runtime.path().to_str().unwrap();
    both_with_env(
        "<standard_session_servicedirs/>",
        &[],
        &[("XDG_RUNTIME_DIR", runtime)],
        script,
        &["org.kdbus.Transient"],
    );
}

/// `service_start_timeout`: a service that does not take its name in time fails
/// what waited for it with dbus-daemon's `TimedOut` and its words.
#[test]
fn service_start_timeout_fails_what_waits() {
    if !usable() {
        return;
    }
    let services = tempfile::tempdir().expect("a service directory");
    std::fs::write(
        services.path().join("org.kdbus.Sleepy.service"),
        "[D-BUS Service]\nName=org.kdbus.Sleepy\nExec=/bin/sleep 3\n",
    )
    .expect("a service file");
    let extra = format!(
        "<servicedir>{}</servicedir><limit name=\"service_start_timeout\">400</limit>",
        services.path().display()
    );
    let script = |address: &str| vec![ping(&zconn(address), "org.kdbus.Sleepy")];
    both_with(
        &extra,
        script,
        &["org.freedesktop.DBus.Error.TimedOut: Failed to activate service 'org.kdbus.Sleepy': timed out (service_start_timeout=400ms)"],
    );
}
