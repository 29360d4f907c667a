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
//! Workloads, all through a D-Bus socket, with the bench's own minimal client or (with
//! `--client sd-bus`) with systemd's sd-bus (`sdbus`), behind one [`Workloads`] trait:
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
use super::{sdbus, BenchResult};
use crate::cli::ClientLib;
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
        let (started, bus) = dbus::start_native(kdbusd, "kdbusd-native")?;
        let bus = bus.as_path();
        let server = Connection::hello(bus, &HelloOptions::new().description("bench-echo"))?;
        let server_id = server.id();
        std::thread::spawn(move || {
            let _ = crate::serve_loop(&server);
        });
        let pid = started.child.id();
        let client = Connection::hello(bus, &HelloOptions::new().description("bench-client"))?;
        Ok(NativeBroker {
            client,
            _started: started,
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
    /// The broker, killed when the run ends.
    _started: Started,
    kib_per_conn: Option<f64>,
    work: Box<dyn Workloads>,
    broadcasts: Vec<f64>,
}

/// One client library's workloads on one broker, with their running totals: the
/// untimed calls warm up, the timed ones count.
trait Workloads {
    /// Calls one at a time (timed: with the broker's CPU time).
    fn request_reply(&mut self, n: usize, timed: bool) -> BenchResult<()>;
    /// Calls with [`WINDOW`] in flight.
    fn pipelined(&mut self, n: usize, timed: bool) -> BenchResult<()>;
    /// Calls of [`LARGE`] bytes, one at a time.
    fn large(&mut self, n: usize, timed: bool) -> BenchResult<()>;
    /// `n` connections set up (turn `turn` names them apart).
    fn setup(&mut self, n: usize, turn: usize) -> BenchResult<()>;
    /// One fan-out to `subscribers`: signals delivered per second.
    fn broadcast(&mut self, rounds: usize, subscribers: usize) -> BenchResult<f64>;
    fn totals(self: Box<Self>) -> Totals;
}

/// What a broker's timed turns added up to.
struct Totals {
    rr_per_s: f64,
    /// A call's p50 and p99 in us, where the client times each call.
    rr_latency: Option<(f64, f64)>,
    cpu_us_per_call: Option<f64>,
    piped_per_s: f64,
    large_per_s: f64,
    setup_per_s: f64,
}

/// Signals each broadcast turn emits, from `--rounds`.
fn broadcast_count(rounds: usize) -> usize {
    (rounds / 4).max(100)
}

/// The bench's own client (`dbus::Client`): one blocking connection per role.
struct OwnClient {
    address: String,
    payload: usize,
    rr: RoundTrips,
    piped: Pipelined,
    large: RoundTrips,
    setup: Duration,
    setups: usize,
}

impl OwnClient {
    fn start(address: &str, payload: usize, pid: Option<u32>) -> BenchResult<OwnClient> {
        Ok(OwnClient {
            address: address.to_string(),
            payload,
            rr: RoundTrips::start(address, payload, pid)?,
            piped: Pipelined::start(address, payload)?,
            large: RoundTrips::start(address, LARGE, None)?,
            setup: Duration::ZERO,
            setups: 0,
        })
    }
}

impl Workloads for OwnClient {
    fn request_reply(&mut self, n: usize, timed: bool) -> BenchResult<()> {
        self.rr.run(n, timed)
    }
    fn pipelined(&mut self, n: usize, timed: bool) -> BenchResult<()> {
        self.piped.run(n, timed)
    }
    fn large(&mut self, n: usize, timed: bool) -> BenchResult<()> {
        self.large.run(n, timed)
    }
    fn setup(&mut self, n: usize, turn: usize) -> BenchResult<()> {
        self.setups += n;
        setup(&self.address, n, turn, &mut self.setup)
    }
    fn broadcast(&mut self, rounds: usize, subscribers: usize) -> BenchResult<f64> {
        debug_assert_eq!(broadcast_count(rounds), (rounds / 4).max(100));
        dbus::broadcast(&self.address, rounds, self.payload, subscribers)
    }
    fn totals(self: Box<Self>) -> Totals {
        let me = *self;
        let (rr, cpu) = me.rr.finish();
        let (large, _) = me.large.finish();
        Totals {
            rr_per_s: rr.per_s,
            rr_latency: Some((rr.p50_us, rr.p99_us)),
            cpu_us_per_call: cpu,
            piped_per_s: me.piped.per_s(),
            large_per_s: large.per_s,
            setup_per_s: me.setups as f64 / me.setup.as_secs_f64().max(1e-9),
        }
    }
}

/// sd-bus, through its C client process: each command's time and count, summed.
struct SdBusClient {
    sd: sdbus::SdBus,
    pid: Option<u32>,
    cpu_ns: u64,
    /// Time and count of request/reply, pipelined, large, setup.
    sums: [(Duration, u64); 4],
}

impl SdBusClient {
    fn run(&mut self, which: usize, cmd: String, timed: bool) -> BenchResult<()> {
        let before = self.pid.and_then(dbus::cpu_ns);
        let (took, n) = self.sd.command(&cmd)?;
        if timed {
            self.sums[which].0 += took;
            self.sums[which].1 += n;
            if which == 0 {
                let after = self.pid.and_then(dbus::cpu_ns);
                self.cpu_ns += after.zip(before).map_or(0, |(a, b)| a.saturating_sub(b));
            }
        }
        Ok(())
    }

    fn per_s(&self, which: usize) -> f64 {
        let (took, n) = self.sums[which];
        n as f64 / took.as_secs_f64().max(1e-9)
    }
}

impl Workloads for SdBusClient {
    fn request_reply(&mut self, n: usize, timed: bool) -> BenchResult<()> {
        self.run(0, format!("rr {n}"), timed)
    }
    fn pipelined(&mut self, n: usize, timed: bool) -> BenchResult<()> {
        self.run(1, format!("pipe {n}"), timed)
    }
    fn large(&mut self, n: usize, timed: bool) -> BenchResult<()> {
        self.run(2, format!("large {n}"), timed)
    }
    fn setup(&mut self, n: usize, turn: usize) -> BenchResult<()> {
        self.run(3, format!("setup {n} {turn}"), true)
    }
    fn broadcast(&mut self, rounds: usize, subscribers: usize) -> BenchResult<f64> {
        let cmd = format!("broadcast {} {subscribers}", broadcast_count(rounds));
        let (took, delivered) = self.sd.command(&cmd)?;
        Ok(delivered as f64 / took.as_secs_f64().max(1e-9))
    }
    fn totals(self: Box<Self>) -> Totals {
        let calls = self.sums[0].1;
        Totals {
            rr_per_s: self.per_s(0),
            rr_latency: None,
            cpu_us_per_call: (self.pid.is_some() && calls > 0)
                .then(|| self.cpu_ns as f64 / 1e3 / calls as f64),
            piped_per_s: self.per_s(1),
            large_per_s: self.per_s(2),
            setup_per_s: self.per_s(3),
        }
    }
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

pub fn run(
    rounds: usize,
    payload: usize,
    subscribers: usize,
    client: ClientLib,
    as_json: bool,
) -> BenchResult<()> {
    let kdbusd = std::env::current_exe()?.with_file_name("kdbusd");
    let kdbusd = kdbusd.to_string_lossy().into_owned();
    let starters: [(&'static str, &dyn Fn() -> BenchResult<Started>); 3] = [
        ("kdbusd", &|| start_daemon_like("kdbusd", &kdbusd)),
        ("dbus-broker", &|| dbus::start_dbus_broker(&kdbusd)),
        ("dbus-daemon", &|| {
            start_daemon_like("dbus-daemon", "dbus-daemon")
        }),
    ];
    let sd_bin = match client {
        ClientLib::Own => None,
        ClientLib::SdBus => Some(sdbus::build(&dbus::private_dir("sdbus")?)?),
    };
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
        let mut work: Box<dyn Workloads> = match &sd_bin {
            None => Box::new(OwnClient::start(&started.address, payload, pid).map_err(at)?),
            Some(bin) => Box::new(SdBusClient {
                sd: sdbus::SdBus::start(bin, &started.address, payload).map_err(at)?,
                pid,
                cpu_ns: 0,
                sums: [(Duration::ZERO, 0); 4],
            }),
        };
        work.request_reply(per_turn / 10 + 1, false)?;
        work.pipelined(per_turn, false)?;
        work.large(2, false)?;
        brokers.push(Broker {
            name,
            _started: started,
            kib_per_conn,
            work,
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
            b.work.request_reply(per_turn, true)?;
            b.work.pipelined(per_turn, true)?;
            b.work.large(large_per_turn, true)?;
            b.work.setup(SETUP_PER_TURN, turn)?;
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
            let r = b.work.broadcast(rounds, subscribers)?;
            b.broadcasts.push(r);
        }
    }
    let names: Vec<&str> = brokers.iter().map(|b| b.name).collect();
    // Per broker: request/reply's (p50, p99) if the client timed each call, and the
    // broker's CPU per call.
    type RrStats = (Option<(f64, f64)>, Option<f64>);
    let mut rr_stats: Vec<RrStats> = Vec::new();
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
        let t = b.work.totals();
        let values = [
            Some(t.rr_per_s),
            Some(t.piped_per_s),
            median(b.broadcasts),
            Some(t.large_per_s * LARGE as f64 / (1 << 20) as f64),
            Some(t.setup_per_s),
            b.kib_per_conn,
        ];
        for (l, v) in lines.iter_mut().zip(values) {
            l.values.push(v);
        }
        rr_stats.push((t.rr_latency, t.cpu_us_per_call));
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
            .map(|(n, (lat, cpu))| {
                json!({
                    "bus": n,
                    "p50_us": lat.map(|l| (l.0 * 10.0).round() / 10.0),
                    "p99_us": lat.map(|l| (l.1 * 10.0).round() / 10.0),
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
                    "client": format!("{client:?}"),
                    "rounds": rounds, "payload_bytes": payload, "subscribers": subscribers })
        );
        return Ok(());
    }
    println!(
        "{rounds} calls of {payload} bytes per broker in {TURNS} turns (pipelined: {WINDOW} in \
         flight), {subscribers} subscribers, 1 MiB calls, {} connections set up; client: {}",
        TURNS * SETUP_PER_TURN,
        match client {
            ClientLib::Own => "the bench's own",
            ClientLib::SdBus => "sd-bus",
        }
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
    for (n, (lat, cpu)) in names.iter().zip(&rr_stats) {
        let lat = lat.map_or("p50       ? us  p99       ? us".into(), |(p50, p99)| {
            format!("p50 {p50:>7.1} us  p99 {p99:>7.1} us")
        });
        println!(
            "{n:<12} request/reply {lat}  broker CPU {} us/call",
            cpu.map_or("?".into(), |c| format!("{c:.1}"))
        );
    }
    Ok(())
}
