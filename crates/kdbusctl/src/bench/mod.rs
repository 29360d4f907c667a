//! `kdbusctl bench`: request/reply round trips through the broker, measured next to a
//! raw `socketpair(AF_UNIX, SOCK_SEQPACKET)` ping-pong in the same run.
//!
//! A brokered round trip is four socket hops (caller → broker → service → broker →
//! caller) against the socketpair's two.
//!
//! The other workloads live in submodules (`--names`: [`names`], `--broadcast`:
//! [`broadcast`], `--dbus`: [`dbus`], `--dbus-compare`: [`compare`], `--policy-rules`:
//! [`policy`], `--payload`: [`payload`], `--client sd-bus`: [`sdbus`], `--metadata`: [`metadata`],
//! `--idle-connections`: [`idle`], `--zbus`: [`zbus`]); this module holds what they
//! share (timing, statistics) and dispatches on the arguments, so they all depend on
//! it and never on each other.

mod broadcast;
mod compare;
pub(crate) mod dbus;
mod idle;
mod metadata;
mod names;
mod payload;
mod policy;
mod sdbus;
mod zbus;

pub use crate::cli::BenchArgs;
use kdbus::{Connection, HelloOptions, Message};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

pub(crate) struct Stats {
    pub per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

pub(crate) fn stats(mut samples: Vec<Duration>, total: Duration) -> Stats {
    samples.sort();
    let pct = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Stats {
        per_s: samples.len() as f64 / total.as_secs_f64(),
        p50_us: pct(0.5),
        p99_us: pct(0.99),
    }
}

/// A cheap read of every byte (what a receiver that looks at its data pays): words
/// summed, then the tail.
pub(crate) fn checksum(b: &[u8]) -> u64 {
    let words = b.chunks_exact(8);
    let tail = words
        .remainder()
        .iter()
        .fold(0u64, |s, x| s.wrapping_add(*x as u64));
    words.fold(tail, |s, w| {
        s.wrapping_add(u64::from_ne_bytes(w.try_into().unwrap_or([0; 8])))
    })
}

pub(crate) type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Run `round` a tenth of `rounds` times to warm up, then `rounds` times timed.
pub(crate) fn time_rounds(
    rounds: usize,
    mut round: impl FnMut(usize) -> BenchResult<()>,
) -> BenchResult<Stats> {
    let warmup = rounds / 10 + 1;
    for i in 0..warmup {
        round(i)?;
    }
    let mut samples = Vec::with_capacity(rounds);
    let start = Instant::now();
    for i in warmup..warmup + rounds {
        let t0 = Instant::now();
        round(i)?;
        samples.push(t0.elapsed());
    }
    Ok(stats(samples, start.elapsed()))
}

/// The benchmarks open many sockets (1100 for the memory measurement, tens of
/// thousands with `--idle-connections`): take the hard descriptor limit rather than a
/// customary soft 1024, raised first where we may (as root).
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    const WANT: u64 = 65536;
    let l = getrlimit(Resource::Nofile);
    if l.maximum.is_some_and(|m| m < WANT) {
        let more = Rlimit {
            current: Some(WANT),
            maximum: Some(WANT),
        };
        if setrlimit(Resource::Nofile, more).is_ok() {
            return;
        }
    }
    if l.current < l.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: l.maximum,
                ..l
            },
        );
    }
}

pub fn run(bus: &Path, args: &BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    raise_fd_limit();
    if let Some(address) = &args.dbus {
        return dbus::run_one(
            address,
            args.rounds,
            args.size,
            args.bcast.subscribers,
            args.json,
        );
    }
    if args.metadata {
        return metadata::run(bus, args.rounds, args.json);
    }
    if args.idle_connections > 0 || args.idle_names > 0 {
        let (conns, names) = (args.idle_connections, args.idle_names);
        return idle::run(bus, args.rounds, conns, names, args.json);
    }
    if let Some(size) = args.payload {
        return payload::run(bus, size, args.rounds, args.memfd, args.json);
    }
    if let Some(n) = args.policy_rules {
        return policy::run(n, args.rounds, args.size, args.json);
    }
    if args.zbus {
        return zbus::run(args.rounds, args.size, args.json);
    }
    if args.dbus_compare {
        return compare::run(
            args.rounds,
            args.size,
            args.bcast.subscribers,
            args.client,
            args.json,
        );
    }
    if args.broadcast {
        return broadcast::run(bus, &args.bcast, args.json);
    }
    if args.names {
        return names::run(bus, args.rounds, args.names_max, args.json);
    }
    let payload = vec![0x5au8; args.size];
    let native = bench_native(bus, args.rounds, &payload)?;
    let raw = bench_socketpair(args.rounds, &payload)?;
    let ratio = native.per_s / raw.per_s;
    if args.json {
        let v = json!({
            "native_round_trips_per_s": native.per_s.round(),
            "socketpair_round_trips_per_s": raw.per_s.round(),
            "ratio": (ratio * 1000.0).round() / 1000.0,
            "p50_us": (native.p50_us * 10.0).round() / 10.0,
            "p99_us": (native.p99_us * 10.0).round() / 10.0,
            "socketpair_p50_us": (raw.p50_us * 10.0).round() / 10.0,
            "rounds": args.rounds,
            "payload_bytes": args.size,
        });
        println!("{v}");
    } else {
        println!(
            "payload {} bytes, {} round trips each",
            args.size, args.rounds
        );
        println!(
            "native kdbus:       {:>10.0} round trips/s   p50 {:>7.1} us   p99 {:>7.1} us",
            native.per_s, native.p50_us, native.p99_us
        );
        println!(
            "socketpair:         {:>10.0} round trips/s   p50 {:>7.1} us   p99 {:>7.1} us",
            raw.per_s, raw.p50_us, raw.p99_us
        );
        println!("ratio native/raw:   {ratio:.3}");
    }
    Ok(())
}

fn bench_native(
    bus: &Path,
    rounds: usize,
    payload: &[u8],
) -> Result<Stats, Box<dyn std::error::Error>> {
    let server = Connection::hello(bus, &HelloOptions::new().description("bench-server"))?;
    let client = Connection::hello(bus, &HelloOptions::new().description("bench-client"))?;
    let server_id = server.id();
    let t = std::thread::spawn(move || {
        let _ = crate::serve_loop(&server);
    });
    let stats = time_rounds(rounds, |i| {
        let cookie = i as u64 + 1;
        let r = client.call(
            Message::to(server_id).cookie(cookie).payload(payload),
            Duration::from_secs(10),
        )?;
        if r.payloads().map(<[u8]>::len).sum::<usize>() != payload.len() {
            return Err("echo returned a different payload".into());
        }
        Ok(())
    })?;
    client.byebye().ok();
    drop(client);
    // The server ends when the broker hangs up; do not wait for it.
    drop(t);
    Ok(stats)
}

fn bench_socketpair(rounds: usize, payload: &[u8]) -> Result<Stats, Box<dyn std::error::Error>> {
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let size = payload.len();
    let t = std::thread::spawn(move || {
        let mut buf = vec![0u8; size.max(1) + 64];
        loop {
            match rustix::io::read(&b, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if rustix::io::write(&b, &buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut buf = vec![0u8; size.max(1) + 64];
    let stats = time_rounds(rounds, |_| {
        rustix::io::write(&a, payload)?;
        if rustix::io::read(&a, &mut buf)? != size {
            return Err("socketpair echo returned a different size".into());
        }
        Ok(())
    })?;
    drop(a);
    let _ = t.join();
    Ok(stats)
}
