//! kdbusctl against a real broker.

mod common;
use common::start_kdbusd;
use std::path::PathBuf;
use std::process::{Child, Command};

struct Broker {
    child: Child,
    dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let (child, line) = start_kdbusd(&[
            std::ffi::OsStr::new("--runtime-dir"),
            dir.path().as_os_str(),
        ]);
        assert!(line.starts_with("kdbusd ready:"));
        Broker { child, dir }
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_kdbusctl"))
            .arg("--runtime-dir")
            .arg(self.dir.path())
            .args(args)
            .output()
            .unwrap()
    }

    /// Start `kdbusctl ARGS` in the background and read its first line of output.
    fn spawn_ctl(&self, args: &[&str]) -> (Child, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kdbusctl"));
        cmd.arg("--runtime-dir").arg(self.dir.path()).args(args);
        let (child, line) = common::first_line(cmd);
        (child, line.trim().to_string())
    }

    fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {:?}", out.stdout))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reader that goes away ends kdbusctl as SIGPIPE ends C tools: status 141, nothing
/// on stderr, no panic.
#[test]
fn a_closed_pipe_ends_kdbusctl_quietly() {
    use std::io::{BufRead, BufReader};
    let b = Broker::start();
    let mut monitor = Command::new(env!("CARGO_BIN_EXE_kdbusctl"))
        .arg("--runtime-dir")
        .arg(b.dir.path())
        .arg("monitor")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(monitor.stdout.take().unwrap());
    // The first line (something joined), then the reader is gone.
    let _ = b.ctl(&["status"]);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    drop(out);
    for _ in 0..20 {
        let _ = b.ctl(&["emit", "/a", "org.x.Y", "Z", "s", "more"]);
        if monitor.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let done = monitor.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(141));
    assert_eq!(String::from_utf8_lossy(&done.stderr), "");
}

#[test]
fn status_json() {
    let b = Broker::start();
    let v = b.ctl_json(&["status", "--json"]);
    assert_eq!(v["bus_id"], 1);
    assert_eq!(v["bloom"]["size"], 64);
    assert_eq!(v["id128"].as_str().unwrap().len(), 32);
    assert_eq!(v["connections"], 1);
}

#[test]
fn list_shows_a_serving_connection_and_call_reaches_it() {
    let b = Broker::start();
    let (mut serve, id) = b.spawn_ctl(&["serve"]);
    let list = b.ctl_json(&["list", "--json"]);
    let rows = list.as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["id"].as_u64() == id.parse::<u64>().ok())
        .expect("serve is listed");
    assert_eq!(row["description"], "kdbusctl");
    assert_eq!(row["unique_name"], format!(":1.{id}"));
    assert!(row["pid"].as_u64().unwrap() > 0);

    let out = b.ctl(&["call-raw", &id, "hello there"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello there");

    let out = b.ctl(&["call-raw", "999", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ENXIO"));
    let _ = serve.kill();
    let _ = serve.wait();
}

#[test]
fn bench_json_has_the_promised_fields() {
    let b = Broker::start();
    let v = b.ctl_json(&["bench", "--rounds", "200", "--json"]);
    for k in [
        "native_round_trips_per_s",
        "socketpair_round_trips_per_s",
        "ratio",
        "p50_us",
        "p99_us",
    ] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k} in {v}");
    }
}

#[test]
fn make_bus_serves_until_interrupted() {
    let b = Broker::start();
    let (mut mk, path) = b.spawn_ctl(&["make-bus", "mine"]);
    let path = PathBuf::from(path);
    assert!(path.ends_with(format!("{}-mine/bus", rustix::process::getuid().as_raw())));
    assert!(path.exists());
    let v = b.ctl_json(&["--bus", path.to_str().unwrap(), "status", "--json"]);
    assert_eq!(v["bus_id"], 2);
    let _ = mk.kill();
    let _ = mk.wait();
    // The bus goes with its owner.
    for _ in 0..500 {
        if !path.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!path.exists());
}

/// A sandbox's endpoint: through it only the granted name exists; it goes with its
/// maker.
#[test]
fn make_endpoint_shows_only_the_granted_names() {
    let b = Broker::start();
    let (service, _) = b.spawn_ctl(&["acquire", "org.example.Granted"]);
    let (other, _) = b.spawn_ctl(&["acquire", "org.example.Hidden"]);
    let (mut mk, path) =
        b.spawn_ctl(&["make-endpoint", "sandbox", "--talk", "org.example.Granted"]);
    let path = PathBuf::from(path);
    assert!(path.ends_with(format!("{}-sandbox", rustix::process::getuid().as_raw())));
    let names = b.ctl_json(&["--bus", path.to_str().unwrap(), "names", "--json"]);
    let text = names.to_string();
    assert!(text.contains("org.example.Granted"), "{text}");
    assert!(!text.contains("org.example.Hidden"), "{text}");
    let _ = mk.kill();
    let _ = mk.wait();
    for _ in 0..500 {
        if !path.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!path.exists(), "the endpoint goes with its maker");
    for mut c in [service, other] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `make-domain` makes a domain for as long as it runs; only privileged users may
/// (EPERM for `nobody`).
#[test]
fn make_domain_as_root_and_as_nobody() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let b = Broker::start();
    let (mut child, line) = b.spawn_ctl(&["make-domain", "--world", "sub"]);
    let control = PathBuf::from(line.trim()).join("control");
    assert!(control.exists(), "{line}");
    let _ = child.kill();
    let _ = child.wait();
    let gone = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        !control.exists()
    });
    assert!(gone, "the domain goes with its maker");
    let Ok(out) = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_kdbusctl"))
        .arg("--runtime-dir")
        .arg(b.dir.path())
        .args(["make-domain", "nope"])
        .output()
    else {
        eprintln!("skipped: setpriv is missing");
        return;
    };
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("EPERM"), "{err}");
    assert!(!b.dir.path().join("domain/nope").exists());
}

/// `--dbus-compare` measures every workload of the performance goals on kdbusd and
/// dbus-daemon (and dbus-broker where it is installed), and judges each against its
/// goal: with the bench's own client, and with sd-bus.
#[test]
fn dbus_compare_reports_every_goal() {
    dbus_compare_with("own");
}

#[test]
fn dbus_compare_reports_every_goal_with_sd_bus() {
    dbus_compare_with("sd-bus");
}

fn dbus_compare_with(client: &str) {
    let v = json_of(&[
        "bench",
        "--dbus-compare",
        "--client",
        client,
        "--rounds",
        "200",
        "--json",
    ]);
    let workloads = v["workloads"].as_array().expect("workloads");
    let names: Vec<&str> = workloads
        .iter()
        .filter_map(|w| w["workload"].as_str())
        .collect();
    for want in [
        "request/reply",
        "pipelined (64 in flight)",
        "broadcast",
        "1 MiB call",
        "connection setup",
        "memory per connection",
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    for w in workloads {
        for bus in ["kdbusd", "dbus-daemon"] {
            assert!(w[bus].as_f64().is_some_and(|x| x > 0.0), "{bus} in {w}");
        }
        if w.get("dbus-broker").is_some_and(|x| x.as_f64().is_some()) {
            assert!(w["met"].is_boolean(), "{w}");
        }
    }
}

/// `kdbusctl ARGS` (no broker of ours), which must succeed: its JSON output.
fn json_of(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kdbusctl"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `--zbus` runs the same zbus service and client over the native socket and over the
/// D-Bus socket.
#[test]
fn bench_zbus_measures_both_transports() {
    let v = json_of(&["bench", "--zbus", "--rounds", "200", "--json"]);
    let sides = v["zbus"].as_array().expect("zbus");
    assert_eq!(sides.len(), 2, "{v}");
    for s in sides {
        assert!(s["calls_per_s"].as_f64().is_some_and(|x| x > 0.0), "{s}");
    }
    assert!(v["native_over_dbus"].as_f64().is_some(), "{v}");
}

/// `--idle-connections` fills the bus with idle connections and names between two
/// measurements of the empty bus, and says how many it held.
#[test]
fn bench_idle_reports_the_loaded_and_the_empty_bus() {
    let b = Broker::start();
    let v = b.ctl_json(&[
        "bench",
        "--rounds",
        "200",
        "--idle-connections",
        "50",
        "--idle-names",
        "600",
        "--json",
    ]);
    assert_eq!(v["idle_connections"].as_u64(), Some(50), "{v}");
    assert_eq!(v["names"].as_u64(), Some(600), "{v}");
    for k in [
        "round_trips_per_s_empty",
        "round_trips_per_s_loaded",
        "ratio",
    ] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k} in {v}");
    }
    // Measured side by side with a private empty broker, turn by turn.
    let pairs = v["pair_ratios"].as_array().map_or(0, Vec::len);
    assert_eq!(pairs, 8, "{v}");
}

/// The build renders the man pages from the command line's definition.
#[test]
fn the_build_renders_man_pages() {
    let page = std::fs::read_to_string(concat!(env!("OUT_DIR"), "/kdbusctl.1")).unwrap();
    assert!(page.contains(".TH kdbusctl 1"), "{page}");
    let bench = std::fs::read_to_string(concat!(env!("OUT_DIR"), "/kdbusctl-bench.1")).unwrap();
    assert!(bench.contains("dbus\\-compare"), "{bench}");
}

// The raw D-Bus client of kdbusd's tests: SASL, Hello, calls on a bare stream.
#[path = "../../kdbusd/tests/common/dbus_raw.rs"]
mod dbus_raw;

mod top {
    //! `kdbusctl top` against a bus where a sender floods a receiver that does not read.

    use super::dbus_raw::{self, call, hello_at};
    use kdbus_dbus::header::FLAG_NO_REPLY_EXPECTED;
    use kdbus_dbus::marshal::{Endian, Writer};
    use std::io::{Read, Write};
    use std::process::Command;

    /// The stream quota set to 1 MiB; a sender that floods a receiver which never
    /// reads fills its share, and `top` shows that share in the receiver's row (and
    /// the sending user's total), next to the quota.
    #[test]
    fn top_shows_a_flooding_senders_share_of_a_slow_receiver() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                "<busconfig><type>session</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>\
                 <policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/>\
                 <allow eavesdrop=\"true\"/><allow own=\"*\"/></policy>\
                 <limit name=\"max_outgoing_bytes\">1048576</limit></busconfig>",
                sock.display()
            ),
        )
        .unwrap();
        let config = format!("--config-file={}", conf.display());
        let (mut broker, address) =
            super::common::start_kdbusd(&[config.as_str(), "--nofork", "--print-address"]);
        let (_slow, _slow_reading, slow_name) = hello_at(&sock);
        let (mut flooder, _, _) = hello_at(&sock);
        // The flooder reads what comes back (errors once the share is full) so that
        // only the receiver is slow.
        let mut reader = flooder.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut b = vec![0u8; 65536];
            while reader.read(&mut b).is_ok_and(|n| n > 0) {}
        });
        let mut body = Vec::new();
        Writer::new(&mut body, Endian::Little).string(&"x".repeat(60_000));
        // More than the receiver's socket buffer takes (the broker sets 1 MiB, which
        // the kernel doubles), then more than the quota.
        for serial in 2..120u32 {
            flooder
                .write_all(&call(
                    serial,
                    &slow_name,
                    "Fill",
                    "s",
                    &body,
                    FLAG_NO_REPLY_EXPECTED,
                ))
                .unwrap();
        }
        // A driver call after them: when it is answered, they have all been routed.
        flooder
            .write_all(&call(99, dbus_raw::DRIVER, "GetId", "", &[], 0))
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let out = Command::new(env!("CARGO_BIN_EXE_kdbusctl"))
            .args(["top", "--once", "--json", "--address", address.trim()])
            .output()
            .unwrap();
        let _ = broker.kill();
        let _ = broker.wait();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = v["connections"].as_array().expect("connections");
        let slow = rows
            .iter()
            .find(|r| r["name"] == slow_name.as_str())
            .unwrap_or_else(|| panic!("{slow_name} in {v}"));
        assert_eq!(slow["QuotaBytes"].as_u64(), Some(1 << 20), "{slow}");
        let me = u64::from(rustix::process::getuid().as_raw());
        let share = slow["OutgoingBySender"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["uid"].as_u64() == Some(me)))
            .and_then(|s| s["bytes"].as_u64())
            .unwrap_or(0);
        // Alone, a user may fill about half of a receiver's stream: it is full.
        assert!(
            ((1 << 20) / 3..=(1 << 20) / 2 + 65536).contains(&share),
            "share {share} of {slow}"
        );
        assert_eq!(slow["OutgoingBytes"].as_u64(), Some(share), "{slow}");
        // What did not fit was refused, and counted.
        assert!(slow["RefusedMessages"].as_u64() > Some(0), "{slow}");
        let users = v["senders"].as_array().expect("senders");
        assert!(
            users.iter().any(|u| u["uid"].as_u64() == Some(me)
                && u["bytes_held_in_receivers"].as_u64() >= Some(share)),
            "{v}"
        );
    }
}
