//! `kdbusctl bench --dbus-compare`: kdbusd's D-Bus front next to dbus-broker and
//! dbus-daemon on every workload of our performance goals (`docs/performance.md`),
//! in one run, with the same client for all three.
//!
//! The three brokers run at once, each on a private socket with the same permissive
//! configuration, idle while another is measured. The workloads take turns: each turn
//! runs a slice of every workload on every broker, starting with a different broker
//! each time, so that this machine's drift in speed (it moves by tens of percent over
//! seconds) hits all three alike instead of deciding the comparison. Each workload's
//! number is its total over all turns (rates) or the median of its turns (broadcast,
//! which is measured whole per turn).
//!
//! Workloads, all through a D-Bus socket with the bench's own minimal client:
//! - request/reply: one call at a time to an echo service, 64-byte (`--size`) body;
//!   also the broker's CPU time per call;
//! - pipelined: [`WINDOW`] calls in flight, a new one sent as each reply comes;
//! - broadcast: one emitter, `--subscribers` subscribers with a matching rule;
//! - 1 MiB call: request/reply with a 1 MiB string, MiB/s;
//! - connection setup: connect, authenticate, Hello and RequestName, connections/s;
//! - memory: the broker's resident growth per idle connection (measured first);
//! - and kdbusd's native path: a separate kdbusd on a private runtime directory, the
//!   same echo calls as kdbus messages, for its CPU time per round trip (the goal: less
//!   than half of dbus-broker's per D-Bus call).
//!
//! Each line says whether kdbusd meets its goal against dbus-broker in this run.

use super::dbus::{
    self, bus_pid, child_of, memory_per_conn, start_daemon_like, Client, RoundTrips, Started,
};
use super::{BenchResult, Stats};
use kdbus::{Connection, HelloOptions, Message};
use kdbus_dbus::header::MessageType;
use serde_json::json;
use std::time::{Duration, Instant};

/// Turns in which each workload is split.
const TURNS: usize = 20;
/// Turns of the broadcast workload (each one a whole fan-out).
const BROADCAST_TURNS: usize = 3;
/// Calls in flight in the pipelined workload.
pub(crate) const WINDOW: usize = 64;
/// The large call's size.
const LARGE: usize = 1 << 20;
/// Connections opened per turn of the setup workload.
const SETUP_PER_TURN: usize = 50;

/// Calls with up to [`WINDOW`] in flight, to an echo service.
struct Pipelined {
    client: Client,
    service: String,
    body: Vec<u8>,
    calls: usize,
    elapsed: Duration,
}

impl Pipelined {
    fn start(address: &str, payload: usize) -> BenchResult<Pipelined> {
        let echo = dbus::Echo::start(address, payload)?;
        Ok(Pipelined {
            client: echo.client,
            service: echo.service,
            body: echo.body,
            calls: 0,
            elapsed: Duration::ZERO,
        })
    }

    /// `n` calls, at most [`WINDOW`] unanswered at any time.
    fn run(&mut self, n: usize, timed: bool) -> BenchResult<()> {
        let f = dbus::echo_call(&self.service);
        let start = Instant::now();
        let (mut sent, mut answered) = (0, 0);
        while answered < n {
            while sent < n && sent - answered < WINDOW {
                self.client
                    .send(MessageType::MethodCall, &f, &self.body, 0)?;
                sent += 1;
            }
            let m = self.client.read()?;
            if kdbus_dbus::header::parse(&m)?.msg_type == MessageType::MethodReturn {
                answered += 1;
            }
        }
        if timed {
            self.calls += n;
            self.elapsed += start.elapsed();
        }
        Ok(())
    }

    fn per_s(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Connection setup: `n` clients connect, authenticate, say Hello and request a name;
/// the time until the last has its name. They disconnect afterwards, untimed.
fn setup(address: &str, n: usize, turn: usize, took: &mut Duration) -> BenchResult<()> {
    let start = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = Client::connect(address)?;
        c.driver_su("RequestName", &format!("org.kdbus.Bench.T{turn}.C{i}"), 4)?;
        clients.push(c);
    }
    *took += start.elapsed();
    drop(clients);
    Ok(())
}

/// kdbusd serving its native socket, for the native workload.
struct NativeBroker {
    /// The broker, killed and its directory removed on drop.
    _started: Started,
    client: Connection,
    server_id: u64,
    pid: u32,
    calls: usize,
    cpu_ns: u64,
}

impl NativeBroker {
    fn start(kdbusd: &str) -> BenchResult<NativeBroker> {
        use std::io::BufRead;
        let dir = dbus::private_dir("kdbusd-native")?;
        let mut child = std::process::Command::new(kdbusd)
            .arg("--runtime-dir")
            .arg(&dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut line = String::new();
        let out = child.stdout.take().ok_or("no stdout")?;
        std::io::BufReader::new(out).read_line(&mut line)?;
        let bus = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("bus="))
            .ok_or_else(|| format!("kdbusd said {line:?}"))?
            .to_string();
        let bus = std::path::Path::new(&bus);
        let server = Connection::hello(bus, &HelloOptions::new().description("bench-echo"))?;
        let server_id = server.id();
        std::thread::spawn(move || {
            let _ = crate::serve_loop(&server);
        });
        let pid = child.id();
        let client = Connection::hello(bus, &HelloOptions::new().description("bench-client"))?;
        let address = bus.display().to_string();
        Ok(NativeBroker {
            client,
            _started: Started::new(child, address, dir),
            server_id,
            pid,
            calls: 0,
            cpu_ns: 0,
        })
    }

    fn run(&mut self, n: usize, timed: bool) -> BenchResult<()> {
        let payload = [0x5au8; 64];
        let before = dbus::cpu_ns(self.pid);
        for i in 0..n {
            let m = Message::to(self.server_id)
                .cookie(i as u64 + 1)
                .payload(&payload);
            self.client.call(m, Duration::from_secs(10))?;
        }
        if timed {
            let after = dbus::cpu_ns(self.pid);
            self.cpu_ns += after.zip(before).map_or(0, |(a, b)| a.saturating_sub(b));
            self.calls += n;
        }
        Ok(())
    }

    fn cpu_us_per_call(&self) -> Option<f64> {
        (self.calls > 0 && self.cpu_ns > 0).then(|| self.cpu_ns as f64 / 1e3 / self.calls as f64)
    }
}

/// Everything measured on one broker.
struct Broker {
    name: &'static str,
    started: Started,
    kib_per_conn: Option<f64>,
    rr: RoundTrips,
    piped: Pipelined,
    large: RoundTrips,
    setup: Duration,
    setups: usize,
    broadcasts: Vec<f64>,
}

/// One line of the result: a workload's number on each broker, and its goal.
struct Line {
    name: &'static str,
    unit: &'static str,
    values: Vec<Option<f64>>,
    /// kdbusd over dbus-broker must be at least this (or, for `lower_is_better`,
    /// at most).
    goal: f64,
    lower_is_better: bool,
}

impl Line {
    fn ratio(&self, names: &[&str]) -> Option<f64> {
        let at = |n: &str| names.iter().position(|x| *x == n);
        let k = self.values.get(at("kdbusd")?).copied().flatten()?;
        let b = self.values.get(at("dbus-broker")?).copied().flatten()?;
        (b > 0.0).then(|| k / b)
    }

    fn met(&self, names: &[&str]) -> Option<bool> {
        let r = self.ratio(names)?;
        Some(if self.lower_is_better {
            r <= self.goal
        } else {
            r >= self.goal
        })
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

pub fn run(rounds: usize, payload: usize, subscribers: usize, as_json: bool) -> BenchResult<()> {
    let kdbusd = std::env::current_exe()?.with_file_name("kdbusd");
    let kdbusd = kdbusd.to_string_lossy().into_owned();
    let starters: [(&'static str, &dyn Fn() -> BenchResult<Started>); 3] = [
        ("kdbusd", &|| start_daemon_like("kdbusd", &kdbusd)),
        ("dbus-broker", &|| dbus::start_dbus_broker(&kdbusd)),
        ("dbus-daemon", &|| {
            start_daemon_like("dbus-daemon", "dbus-daemon")
        }),
    ];
    let per_turn = rounds.div_ceil(TURNS).max(1);
    let large_per_turn = (per_turn / 100).max(2);
    let mut brokers = Vec::new();
    for (name, start) in starters {
        let started = match start() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{name}: not measured ({e})");
                continue;
            }
        };
        // The process that holds the connections: the bus's own pid, or for
        // dbus-broker (whose launcher answers) the launcher's child.
        let pid = if name == "dbus-broker" {
            child_of(started.child.id())
        } else {
            bus_pid(&started.address)
        }
        .or(Some(started.child.id()));
        // Memory first, on a fresh broker.
        let kib_per_conn = pid.and_then(|pid| memory_per_conn(&started.address, pid));
        let at = |e: Box<dyn std::error::Error>| format!("{name}: {e}");
        let mut rr = RoundTrips::start(&started.address, payload, pid).map_err(at)?;
        let mut piped = Pipelined::start(&started.address, payload).map_err(at)?;
        let mut large = RoundTrips::start(&started.address, LARGE, None).map_err(at)?;
        rr.run(per_turn / 10 + 1, false)?;
        piped.run(per_turn, false)?;
        large.run(2, false)?;
        brokers.push(Broker {
            name,
            started,
            kib_per_conn,
            rr,
            piped,
            large,
            setup: Duration::ZERO,
            setups: 0,
            broadcasts: Vec::new(),
        });
    }
    let mut native = match NativeBroker::start(&kdbusd) {
        Ok(mut nb) => {
            nb.run(per_turn / 10 + 1, false)?;
            Some(nb)
        }
        Err(e) => {
            eprintln!("kdbusd (native): not measured ({e})");
            None
        }
    };
    let n = brokers.len();
    for turn in 0..TURNS {
        for i in 0..n {
            let b = &mut brokers[(turn + i) % n];
            b.rr.run(per_turn, true)?;
            b.piped.run(per_turn, true)?;
            b.large.run(large_per_turn, true)?;
            setup(&b.started.address, SETUP_PER_TURN, turn, &mut b.setup)?;
            b.setups += SETUP_PER_TURN;
        }
        if let Some(nb) = native.as_mut() {
            nb.run(per_turn, true)?;
        }
    }
    let native_cpu = native.as_ref().and_then(NativeBroker::cpu_us_per_call);
    drop(native);
    for turn in 0..BROADCAST_TURNS {
        for i in 0..n {
            let b = &mut brokers[(turn + i) % n];
            let r = dbus::broadcast(&b.started.address, rounds, payload, subscribers)?;
            b.broadcasts.push(r);
        }
    }
    let names: Vec<&str> = brokers.iter().map(|b| b.name).collect();
    let mut rr_stats: Vec<(Stats, Option<f64>)> = Vec::new();
    let mut lines = vec![
        Line {
            name: "request/reply",
            unit: "calls/s",
            values: Vec::new(),
            goal: 1.3,
            lower_is_better: false,
        },
        Line {
            name: "pipelined (64 in flight)",
            unit: "calls/s",
            values: Vec::new(),
            goal: 1.5,
            lower_is_better: false,
        },
        Line {
            name: "broadcast",
            unit: "signals/s",
            values: Vec::new(),
            goal: 1.5,
            lower_is_better: false,
        },
        Line {
            name: "1 MiB call",
            unit: "MiB/s",
            values: Vec::new(),
            goal: 1.0,
            lower_is_better: false,
        },
        Line {
            name: "connection setup",
            unit: "conns/s",
            values: Vec::new(),
            goal: 1.0,
            lower_is_better: false,
        },
        Line {
            name: "memory per connection",
            unit: "KiB",
            values: Vec::new(),
            goal: 1.0,
            lower_is_better: true,
        },
    ];
    for b in brokers {
        let (rr, cpu) = b.rr.finish();
        let (large, _) = b.large.finish();
        let values = [
            Some(rr.per_s),
            Some(b.piped.per_s()),
            median(b.broadcasts),
            Some(large.per_s * LARGE as f64 / (1 << 20) as f64),
            Some(b.setups as f64 / b.setup.as_secs_f64().max(1e-9)),
            b.kib_per_conn,
        ];
        for (l, v) in lines.iter_mut().zip(values) {
            l.values.push(v);
        }
        rr_stats.push((rr, cpu));
    }
    // kdbusd's native round trip against dbus-broker's D-Bus call: broker CPU each.
    let broker_cpu = names
        .iter()
        .position(|n| *n == "dbus-broker")
        .and_then(|i| rr_stats.get(i))
        .and_then(|(_, c)| *c);
    let native_ratio = native_cpu.zip(broker_cpu).map(|(k, b)| k / b);
    let native_met = native_ratio.map(|r| r < 0.5);
    if as_json {
        let workloads: Vec<_> = lines
            .iter()
            .map(|l| {
                let mut o = json!({
                    "workload": l.name,
                    "unit": l.unit,
                    "goal_vs_dbus_broker": l.goal,
                    "lower_is_better": l.lower_is_better,
                    "ratio_vs_dbus_broker": l.ratio(&names).map(|r| (r * 100.0).round() / 100.0),
                    "met": l.met(&names),
                });
                for (n, v) in names.iter().zip(&l.values) {
                    o[*n] = json!(v.map(|v| (v * 10.0).round() / 10.0));
                }
                o
            })
            .collect();
        let latency: Vec<_> = names
            .iter()
            .zip(&rr_stats)
            .map(|(n, (s, cpu))| {
                json!({
                    "bus": n,
                    "p50_us": (s.p50_us * 10.0).round() / 10.0,
                    "p99_us": (s.p99_us * 10.0).round() / 10.0,
                    "broker_cpu_us_per_call": cpu.map(|c| (c * 10.0).round() / 10.0),
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "workloads": workloads, "request_reply": latency,
                    "native_broker_cpu_us_per_round_trip": native_cpu.map(|c| (c * 10.0).round() / 10.0),
                    "native_cpu_ratio_vs_dbus_broker": native_ratio.map(|r| (r * 100.0).round() / 100.0),
                    "native_cpu_goal_met": native_met,
                    "rounds": rounds, "payload_bytes": payload, "subscribers": subscribers })
        );
        return Ok(());
    }
    println!(
        "{rounds} calls of {payload} bytes per broker in {TURNS} turns (pipelined: {WINDOW} in \
         flight), {subscribers} subscribers, 1 MiB calls, {} connections set up",
        TURNS * SETUP_PER_TURN
    );
    print!("{:<36}", "workload");
    for n in &names {
        print!(" {n:>12}");
    }
    println!(" {:>14}  goal", "kdbusd/broker");
    for l in &lines {
        print!("{:<36}", format!("{} ({})", l.name, l.unit));
        for v in &l.values {
            match v {
                Some(v) => print!(" {v:>12.1}"),
                None => print!(" {:>12}", "?"),
            }
        }
        let ratio = l.ratio(&names).map_or("?".into(), |r| format!("{r:.2}"));
        let goal = format!(
            "{}{:.2} {}",
            if l.lower_is_better { "<=" } else { ">=" },
            l.goal,
            match l.met(&names) {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "?",
            }
        );
        println!(" {ratio:>14}  {goal}");
    }
    println!(
        "{:<36} {:>12} {:>12} {:>12} {:>14}  <0.50 {}",
        "native round trip, broker CPU (us)",
        native_cpu.map_or("?".into(), |c| format!("{c:.1}")),
        broker_cpu.map_or("?".into(), |c| format!("({c:.1})")),
        "",
        native_ratio.map_or("?".into(), |r| format!("{r:.2}")),
        match native_met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "?",
        }
    );
    for (n, (s, cpu)) in names.iter().zip(&rr_stats) {
        println!(
            "{n:<12} request/reply p50 {:>7.1} us  p99 {:>7.1} us  broker CPU {} us/call",
            s.p50_us,
            s.p99_us,
            cpu.map_or("?".into(), |c| format!("{c:.1}"))
        );
    }
    Ok(())
}
