//! `kdbusctl bench --dbus ADDRESS` and `--dbus-compare`: the request/reply and
//! broadcast workloads through a D-Bus socket, with a minimal blocking D-Bus client so
//! that what is measured is the broker, not a client library.
//!
//! `--dbus-compare` starts kdbusd (as dbus-daemon), dbus-daemon and dbus-broker on
//! private sockets with the same configuration and measures all three in one run
//! (round trips interleaved in turns, so that drift of the machine's speed hits all
//! three alike),
//! plus the broker's memory per idle connection (resident-set growth over
//! [`MEM_CONNS`] connections, measured first, on a fresh broker).

use super::{stats, BenchResult, Stats};
use kdbus_dbus::header::{self, Fields, MessageType};
use kdbus_dbus::marshal::{Endian, Reader, Writer};
use rustix::fd::OwnedFd;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketType};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A blocking D-Bus connection.
pub struct Client {
    fd: OwnedFd,
    serial: u32,
    buf: Vec<u8>,
    pub unique: String,
}

fn connect_socket(address: &str) -> BenchResult<OwnedFd> {
    let first = address.split(';').next().unwrap_or("");
    let rest = first.strip_prefix("unix:").ok_or("only unix: addresses")?;
    let fd = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None)?;
    // Nothing in a benchmark may hang forever.
    let limit = Some(std::time::Duration::from_secs(10));
    rustix::net::sockopt::set_socket_timeout(&fd, rustix::net::sockopt::Timeout::Recv, limit)?;
    rustix::net::sockopt::set_socket_timeout(&fd, rustix::net::sockopt::Timeout::Send, limit)?;
    for kv in rest.split(',') {
        match kv.split_once('=') {
            Some(("path", p)) => {
                rustix::net::connect(&fd, &SocketAddrUnix::new(p)?)?;
                return Ok(fd);
            }
            Some(("abstract", n)) => {
                rustix::net::connect(&fd, &SocketAddrUnix::new_abstract_name(n.as_bytes())?)?;
                return Ok(fd);
            }
            _ => {}
        }
    }
    Err(format!("no path in {address}").into())
}

impl Client {
    pub fn connect(address: &str) -> BenchResult<Client> {
        let fd = connect_socket(address)?;
        let uid = rustix::process::getuid().as_raw().to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        write_all(&fd, format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())?;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if rustix::io::read(&fd, &mut b)? == 0 {
                return Err("authentication: connection closed".into());
            }
            line.push(b[0]);
        }
        if !line.starts_with(b"OK ") {
            return Err(
                format!("authentication refused: {}", String::from_utf8_lossy(&line)).into(),
            );
        }
        write_all(&fd, b"BEGIN\r\n")?;
        let mut c = Client {
            fd,
            serial: 0,
            buf: Vec::new(),
            unique: String::new(),
        };
        let serial = c.call_driver("Hello", "", &[])?;
        let reply = c.wait_reply(serial)?;
        let h = header::parse(&reply)?;
        c.unique = Reader::new(&reply[h.header_len..], h.endian)
            .string()?
            .to_string();
        Ok(c)
    }

    fn next_serial(&mut self) -> u32 {
        self.serial += 1;
        self.serial
    }

    pub fn send(
        &mut self,
        t: MessageType,
        f: &Fields<'_>,
        body: &[u8],
        flags: u8,
    ) -> BenchResult<u32> {
        let serial = self.next_serial();
        let mut out = Vec::with_capacity(128 + body.len());
        header::write_fields(
            &mut out,
            Endian::Little,
            t,
            flags,
            body.len() as u32,
            serial,
            f,
        );
        out.extend_from_slice(body);
        write_all(&self.fd, &out)?;
        Ok(serial)
    }

    fn call_driver(&mut self, member: &str, sig: &str, body: &[u8]) -> BenchResult<u32> {
        let f = Fields {
            path: Some("/org/freedesktop/DBus"),
            interface: Some("org.freedesktop.DBus"),
            member: Some(member),
            destination: Some("org.freedesktop.DBus"),
            signature: sig,
            ..Default::default()
        };
        self.send(MessageType::MethodCall, &f, body, 0)
    }

    /// Wait for messages without a time limit (a service idle while other brokers
    /// take their turns).
    pub fn wait_forever(&self) -> BenchResult<()> {
        rustix::net::sockopt::set_socket_timeout(
            &self.fd,
            rustix::net::sockopt::Timeout::Recv,
            None,
        )?;
        Ok(())
    }

    /// Wait at most `t` for each read from now on.
    pub fn read_timeout(&self, t: Duration) -> BenchResult<()> {
        let t = Some(t.max(Duration::from_millis(1)));
        rustix::net::sockopt::set_socket_timeout(&self.fd, rustix::net::sockopt::Timeout::Recv, t)?;
        Ok(())
    }

    /// Call a driver method taking a string and a `u32` (`RequestName`).
    pub fn driver_su(&mut self, member: &str, arg: &str, n: u32) -> BenchResult<Vec<u8>> {
        let mut body = Vec::new();
        let mut w = Writer::new(&mut body, Endian::Little);
        w.string(arg);
        w.u32(n);
        let serial = self.call_driver(member, "su", &body)?;
        self.wait_reply(serial)
    }

    /// Call a driver method taking one string.
    pub fn driver_s(&mut self, member: &str, arg: &str) -> BenchResult<Vec<u8>> {
        let mut body = Vec::new();
        Writer::new(&mut body, Endian::Little).string(arg);
        let serial = self.call_driver(member, "s", &body)?;
        self.wait_reply(serial)
    }

    /// Read one whole message.
    pub fn read(&mut self) -> BenchResult<Vec<u8>> {
        loop {
            if let Some(len) = header::message_len(&self.buf)? {
                if self.buf.len() >= len {
                    let rest = self.buf.split_off(len);
                    return Ok(std::mem::replace(&mut self.buf, rest));
                }
            }
            let mut chunk = [0u8; 65536];
            let n = rustix::io::read(&self.fd, &mut chunk)?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Read until the reply or error to `serial` (other messages are dropped).
    pub fn wait_reply_or_error(&mut self, serial: u32) -> BenchResult<Vec<u8>> {
        loop {
            let m = self.read()?;
            if header::parse(&m)?.reply_serial == Some(serial) {
                return Ok(m);
            }
        }
    }

    /// Read until the reply to `serial` (other messages are dropped).
    pub fn wait_reply(&mut self, serial: u32) -> BenchResult<Vec<u8>> {
        loop {
            let m = self.read()?;
            let h = header::parse(&m)?;
            if h.reply_serial == Some(serial) {
                if h.msg_type == MessageType::Error {
                    return Err(format!("error reply {}", h.error_name.unwrap_or("?")).into());
                }
                return Ok(m);
            }
        }
    }
}

fn write_all(fd: &OwnedFd, mut b: &[u8]) -> BenchResult<()> {
    while !b.is_empty() {
        let n = rustix::io::write(fd, b)?;
        b = &b[n..];
    }
    Ok(())
}

/// The echo service: answers every call with its body.
fn echo_service(mut c: Client) {
    while let Ok(m) = c.read() {
        let Ok(h) = header::parse(&m) else { return };
        if h.msg_type != MessageType::MethodCall {
            continue;
        }
        let body = &m[h.header_len..h.total_len()];
        std::hint::black_box(super::checksum(body));
        let f = Fields {
            reply_serial: Some(h.serial),
            destination: h.sender,
            signature: h.signature,
            ..Default::default()
        };
        if c.send(
            MessageType::MethodReturn,
            &f,
            body,
            header::FLAG_NO_REPLY_EXPECTED,
        )
        .is_err()
        {
            return;
        }
    }
}

pub struct DBusOutcome {
    pub rtt: Stats,
    pub broadcast_per_s: f64,
    pub kib_per_conn: Option<f64>,
    /// The broker's CPU time (user + system) per round trip.
    pub cpu_us_per_rt: Option<f64>,
}

/// An echo service answering in a thread, and a client to call it with `body` (a
/// string of the workload's size): what the call workloads start from.
pub(crate) struct Echo {
    pub(crate) client: Client,
    pub(crate) service: String,
    pub(crate) body: Vec<u8>,
    pub(crate) thread: std::thread::JoinHandle<()>,
}

impl Echo {
    pub(crate) fn start(address: &str, payload: usize) -> BenchResult<Echo> {
        let svc = Client::connect(address)?;
        // The service waits while other brokers take their turns.
        svc.wait_forever()?;
        let service = svc.unique.clone();
        let thread = std::thread::spawn(move || echo_service(svc));
        let mut body = Vec::new();
        Writer::new(&mut body, Endian::Little).string(&"x".repeat(payload));
        Ok(Echo {
            client: Client::connect(address)?,
            service,
            body,
            thread,
        })
    }
}

/// The header of a call to the echo service `service`.
pub(crate) fn echo_call(service: &str) -> Fields<'_> {
    Fields {
        path: Some("/org/kdbus/Bench"),
        interface: Some("org.kdbus.Bench"),
        member: Some("Echo"),
        destination: Some(service),
        signature: "s",
        ..Default::default()
    }
}

/// The request/reply workload on one bus: a client calling an echo service.
pub(crate) struct RoundTrips {
    client: Client,
    service: String,
    body: Vec<u8>,
    _echo: std::thread::JoinHandle<()>,
    pid: Option<u32>,
    samples: Vec<Duration>,
    elapsed: Duration,
    cpu_ns: u64,
}

impl RoundTrips {
    pub(crate) fn start(address: &str, payload: usize, pid: Option<u32>) -> BenchResult<Self> {
        let echo = Echo::start(address, payload)?;
        Ok(RoundTrips {
            client: echo.client,
            service: echo.service,
            body: echo.body,
            _echo: echo.thread,
            pid,
            samples: Vec::new(),
            elapsed: Duration::ZERO,
            cpu_ns: 0,
        })
    }

    /// `n` round trips; timed (and the broker's CPU counted) if `timed`.
    pub(crate) fn run(&mut self, n: usize, timed: bool) -> BenchResult<()> {
        let f = echo_call(&self.service);
        let cpu_before = self.pid.and_then(cpu_ns);
        let start = Instant::now();
        for _ in 0..n {
            let t0 = Instant::now();
            let serial = self
                .client
                .send(MessageType::MethodCall, &f, &self.body, 0)?;
            let reply = self.client.wait_reply(serial)?;
            std::hint::black_box(super::checksum(&reply));
            if timed {
                self.samples.push(t0.elapsed());
            }
        }
        if timed {
            self.elapsed += start.elapsed();
            let after = self.pid.and_then(cpu_ns);
            self.cpu_ns += after
                .zip(cpu_before)
                .map_or(0, |(a, b)| a.saturating_sub(b));
        }
        Ok(())
    }

    /// Round-trip statistics and the broker's CPU time per round trip.
    pub(crate) fn finish(self) -> (Stats, Option<f64>) {
        let n = self.samples.len().max(1) as f64;
        let cpu = self.pid.map(|_| self.cpu_ns as f64 / 1e3 / n);
        (stats(self.samples, self.elapsed), cpu)
    }
}

/// Run both workloads against `address` (and memory if we know the broker's pid).
pub fn measure(
    address: &str,
    rounds: usize,
    payload: usize,
    subscribers: usize,
    broker_pid: Option<u32>,
) -> BenchResult<DBusOutcome> {
    // Memory first, while the broker's heap holds nothing freed by earlier workloads
    // that new connections could reuse unseen.
    let kib_per_conn = broker_pid.and_then(|pid| memory_per_conn(address, pid));
    let mut rt = RoundTrips::start(address, payload, broker_pid)?;
    rt.run(rounds / 10 + 1, false)?;
    rt.run(rounds, true)?;
    let (rtt, cpu_us_per_rt) = rt.finish();
    let broadcast_per_s = broadcast(address, rounds, payload, subscribers)?;
    Ok(DBusOutcome {
        rtt,
        broadcast_per_s,
        kib_per_conn,
        cpu_us_per_rt,
    })
}

/// Broadcasts delivered per second: one emitter, `subscribers` matching receivers.
pub(crate) fn broadcast(
    address: &str,
    rounds: usize,
    payload: usize,
    subscribers: usize,
) -> BenchResult<f64> {
    let mut body = Vec::new();
    Writer::new(&mut body, Endian::Little).string(&"x".repeat(payload));
    // Broadcast fan-out.
    let count = (rounds / 4).max(100);
    let mut subs = Vec::new();
    for _ in 0..subscribers {
        let mut s = Client::connect(address)?;
        s.driver_s(
            "AddMatch",
            "type='signal',interface='org.kdbus.Bench',member='Tick'",
        )?;
        subs.push(std::thread::spawn(move || -> u64 {
            let mut got = 0;
            while got < count as u64 {
                let Ok(m) = s.read() else { break };
                if header::parse(&m).is_ok_and(|h| h.member == Some("Tick")) {
                    got += 1;
                }
            }
            got
        }));
    }
    let mut emitter = Client::connect(address)?;
    // A round trip to the bus so every AddMatch above is in effect before we start.
    emitter.driver_s("GetNameOwner", "org.freedesktop.DBus")?;
    let sig = Fields {
        path: Some("/org/kdbus/Bench"),
        interface: Some("org.kdbus.Bench"),
        member: Some("Tick"),
        signature: "s",
        ..Default::default()
    };
    let start = Instant::now();
    for _ in 0..count {
        emitter.send(
            MessageType::Signal,
            &sig,
            &body,
            header::FLAG_NO_REPLY_EXPECTED,
        )?;
    }
    let mut delivered = 0;
    for s in subs {
        delivered += s.join().map_err(|_| "subscriber panicked")?;
    }
    Ok(delivered as f64 / start.elapsed().as_secs_f64())
}

/// The broker's resident memory per idle (authenticated, Hello'd) connection: the
/// growth between `MEM_WARMUP` and `MEM_WARMUP + MEM_CONNS` open connections, so that
/// start-up allocations and the first table growths do not count.
const MEM_WARMUP: usize = 100;
const MEM_CONNS: usize = 1000;

pub(crate) fn memory_per_conn(address: &str, pid: u32) -> Option<f64> {
    let open = |n: usize| -> Vec<Client> {
        (0..n)
            .filter_map(|_| Client::connect(address).ok())
            .collect()
    };
    let _warm = open(MEM_WARMUP);
    let before = rss_kib(pid)?;
    let conns = open(MEM_CONNS);
    let after = rss_kib(pid)?;
    Some(after.saturating_sub(before) as f64 / conns.len().max(1) as f64)
}

/// CPU time a process has run, in nanoseconds: the sum over its threads of the
/// scheduler's account (`schedstat`; `stat` counts in 10 ms ticks).
pub(crate) fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let s = std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

/// The first child of `pid` (dbus-broker-launch runs the broker as its child).
pub(crate) fn child_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// The broker's pid, as the bus tells it.
pub(crate) fn bus_pid(address: &str) -> Option<u32> {
    let mut c = Client::connect(address).ok()?;
    let r = c
        .driver_s("GetConnectionUnixProcessID", "org.freedesktop.DBus")
        .ok()?;
    let h = header::parse(&r).ok()?;
    Reader::new(&r[h.header_len..], h.endian).u32().ok()
}

pub fn run_one(
    address: &str,
    rounds: usize,
    payload: usize,
    subscribers: usize,
    as_json: bool,
) -> BenchResult<()> {
    let o = measure(address, rounds, payload, subscribers, bus_pid(address))?;
    if as_json {
        println!("{}", outcome_json(address, &o));
    } else {
        print_row("bus", &o);
    }
    Ok(())
}

fn outcome_json(name: &str, o: &DBusOutcome) -> serde_json::Value {
    json!({
        "bus": name,
        "round_trips_per_s": o.rtt.per_s.round(),
        "p50_us": (o.rtt.p50_us * 10.0).round() / 10.0,
        "p99_us": (o.rtt.p99_us * 10.0).round() / 10.0,
        "broadcast_delivered_per_s": o.broadcast_per_s.round(),
        "kib_per_connection": o.kib_per_conn.map(|k| (k * 10.0).round() / 10.0),
        "broker_cpu_us_per_round_trip": o.cpu_us_per_rt.map(|c| (c * 10.0).round() / 10.0),
    })
}

fn print_row(name: &str, o: &DBusOutcome) {
    println!(
        "{name:<12} {:>8.0} rt/s  p50 {:>6.1} us  p99 {:>6.1} us  cpu {:>5} us/rt  {:>8.0} broadcasts/s  {:>5} KiB/conn",
        o.rtt.per_s,
        o.rtt.p50_us,
        o.rtt.p99_us,
        o.cpu_us_per_rt.map_or("?".into(), |c| format!("{c:.1}")),
        o.broadcast_per_s,
        o.kib_per_conn.map_or("?".into(), |k| format!("{k:.1}"))
    );
}

/// A broker started for the comparison; killed on drop, with what it needs.
pub(crate) struct Started {
    pub(crate) child: Child,
    pub(crate) address: String,
    _dir: PathBuf,
    /// Kept alive as long as the broker: its launcher's bus, a journal socket.
    _keep: Vec<Box<dyn std::any::Any>>,
}

impl Started {
    /// A broker started here, at `address`, with its private `dir`.
    pub(crate) fn new(child: Child, address: String, dir: PathBuf) -> Started {
        Started {
            child,
            address,
            _dir: dir,
            _keep: Vec::new(),
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// The benchmarks' configuration: everything allowed, limits out of the way, plus
/// `extra` (more `<policy>` blocks).
fn config(dir: &Path, listen: &str, extra: &str) -> BenchResult<PathBuf> {
    let p = dir.join("bench.conf");
    std::fs::write(
        &p,
        format!(
            "<busconfig><type>session</type><listen>{listen}</listen><auth>EXTERNAL</auth>\
             <policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/>\
             <allow eavesdrop=\"true\"/><allow own=\"*\"/></policy>\
             <limit name=\"max_incoming_bytes\">1000000000</limit>\
             <limit name=\"max_outgoing_bytes\">1000000000</limit>\
             <limit name=\"max_completed_connections\">100000</limit>\
             <limit name=\"max_connections_per_user\">100000</limit>\
             <limit name=\"max_match_rules_per_connection\">50000</limit>{extra}</busconfig>"
        ),
    )?;
    Ok(p)
}

pub(crate) fn private_dir(name: &str) -> BenchResult<PathBuf> {
    let d = std::env::temp_dir().join(format!("kdbusctl-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// kdbusd on a private runtime directory (`name` tells it apart): the broker, and the
/// path of its default bus's native endpoint (its D-Bus socket, `dbus`, is beside it).
pub(crate) fn start_native(kdbusd: &str, name: &str) -> BenchResult<(Started, PathBuf)> {
    let dir = private_dir(name)?;
    let mut child = Command::new(kdbusd)
        .arg("--runtime-dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let bus = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bus="))
        .ok_or_else(|| format!("kdbusd said {line:?}"))?
        .to_string();
    Ok((Started::new(child, bus.clone(), dir), PathBuf::from(bus)))
}

/// Start a dbus-daemon-compatible program (`--config-file --nofork --print-address`).
pub(crate) fn start_daemon_like(name: &str, program: &str) -> BenchResult<Started> {
    start_configured(name, program, "")
}

/// Start it with `extra` in its configuration.
pub(crate) fn start_configured(name: &str, program: &str, extra: &str) -> BenchResult<Started> {
    let dir = private_dir(name)?;
    let conf = config(
        &dir,
        &format!("unix:path={}", dir.join("socket").display()),
        extra,
    )?;
    let mut child = Command::new(program)
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--print-address"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    Ok(Started {
        child,
        address: line.trim().to_string(),
        _dir: dir,
        _keep: Vec::new(),
    })
}

/// A process to kill when this is dropped.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self
            .0
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// The journal socket dbus-broker's launcher logs to; created (and removed on drop)
/// only where there is none, as in a container without systemd.
struct JournalSocket(Option<(std::os::unix::net::UnixDatagram, PathBuf)>);

impl Drop for JournalSocket {
    fn drop(&mut self) {
        if let Some((_, p)) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn journal_socket() -> JournalSocket {
    let p = PathBuf::from("/run/systemd/journal/socket");
    if p.exists() {
        // One nobody listens on (left by a killed run) makes the launcher fail.
        let probe = std::os::unix::net::UnixDatagram::unbound();
        let stale = probe.is_ok_and(|s| {
            s.connect(&p).err().map(|e| e.kind()) == Some(std::io::ErrorKind::ConnectionRefused)
        });
        if !stale {
            return JournalSocket(None);
        }
        let _ = std::fs::remove_file(&p);
    }
    let made = std::fs::create_dir_all("/run/systemd/journal")
        .ok()
        .and_then(|_| std::os::unix::net::UnixDatagram::bind(&p).ok());
    JournalSocket(made.map(|s| (s, p)))
}

/// dbus-broker runs under its launcher, which takes the listening socket the way
/// systemd passes it (LISTEN_FDS=1 on fd 3, LISTEN_PID = its own pid: a shell sets
/// that and execs the launcher, keeping its pid). The launcher also wants the journal
/// and a bus to reach systemd on: where there is no systemd we give it a journal
/// socket nobody reads and a private kdbusd as that bus (it only watches it).
pub(crate) fn start_dbus_broker(kdbusd: &str) -> BenchResult<Started> {
    let dir = private_dir("dbus-broker")?;
    let sock = dir.join("socket");
    let conf = config(&dir, &format!("unix:path={}", sock.display()), "")?;
    let journal = journal_socket();
    let parent = start_daemon_like("dbus-broker-parent", kdbusd)?;
    let lfd = std::os::unix::net::UnixListener::bind(&sock)?;
    let fd: OwnedFd = lfd.into();
    // The listener comes in as stdin and becomes fd 3 (`LISTEN_FDS`): a shell
    // redirects only single-digit fds, and ours may be past 9.
    let script = format!(
        "exec 3<&0 0</dev/null && LISTEN_FDS=1 LISTEN_PID=$$ exec dbus-broker-launch --scope user --config-file {}",
        conf.display()
    );
    let child = Command::new("/bin/sh")
        .args(["-c", &script])
        .env("DBUS_SESSION_BUS_ADDRESS", &parent.address)
        .stdin(Stdio::from(fd))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("dbus-broker-launch: {e}"))?;
    let address = format!("unix:path={}", sock.display());
    for _ in 0..60 {
        if Client::connect(&address).is_ok() {
            // Killing the launcher does not always take the broker with it: it is
            // killed on its own.
            let broker = KillOnDrop(child_of(child.id()));
            let keep: Vec<Box<dyn std::any::Any>> =
                vec![Box::new(parent), Box::new(journal), Box::new(broker)];
            return Ok(Started {
                child,
                address,
                _dir: dir,
                _keep: keep,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err("dbus-broker did not answer".into())
}
