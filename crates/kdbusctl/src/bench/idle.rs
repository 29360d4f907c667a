//! `kdbusctl bench --idle-connections N --idle-names M`: is a round trip's cost flat
//! in what does not take part?
//!
//! N idle connections and M names (held by as few of those connections as the
//! per-connection limit allows) are loaded onto the bus; the empty bus is a private
//! kdbusd of this build, started for the run. Round trips between a client and an
//! echo service then alternate between the two, [`PAIRS`] times (each pair in the
//! other order than the last), and the result is the median of the pairs' ratios:
//! on a machine whose speed drifts by tens of percent between seconds, only
//! measurements taken side by side compare. A broker whose per-message work touches a
//! table of all connections or names shows it as a ratio below 1.

use super::{time_rounds, BenchResult};
use kdbus::{Connection, HelloOptions, Message};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// The idle connections and names, held until dropped.
struct Load {
    conns: Vec<Connection>,
}

fn load(bus: &Path, conns: usize, names: usize) -> BenchResult<Load> {
    let per_conn = kdbus::abi::limits::CONN_MAX_NAMES;
    let mut held = Vec::with_capacity(conns);
    let opts = HelloOptions::new()
        .pool_size(4096)
        .description("bench-idle");
    let mut named = 0;
    while held.len() < conns || named < names {
        let c = Connection::hello(bus, &opts).map_err(|e| {
            format!(
                "connection {} refused ({e}): an idle connection costs the broker a \
                 descriptor (and this process one), so RLIMIT_NOFILE bounds how many may idle",
                held.len() + 1
            )
        })?;
        for _ in 0..per_conn.min(names - named) {
            c.acquire_name(&format!("org.kdbus.bench.idle.n{named}"), 0)?;
            named += 1;
        }
        held.push(c);
    }
    Ok(Load { conns: held })
}

/// Turns on each bus, alternating.
const PAIRS: usize = 8;

/// A client and an echo service on one bus, for the whole run.
struct Pair {
    client: Connection,
    server_id: u64,
    cookie: u64,
}

impl Pair {
    fn start(bus: &Path) -> BenchResult<Pair> {
        let server = Connection::hello(bus, &HelloOptions::new().description("bench-idle-echo"))?;
        let client = Connection::hello(bus, &HelloOptions::new().description("bench-idle-client"))?;
        let server_id = server.id();
        std::thread::spawn(move || {
            let _ = crate::serve_loop(&server);
        });
        Ok(Pair {
            client,
            server_id,
            cookie: 0,
        })
    }

    /// Round trips per second over `rounds` calls.
    fn rate(&mut self, rounds: usize) -> BenchResult<f64> {
        let payload = [0x5au8; 64];
        let (client, server_id, cookie) = (&self.client, self.server_id, &mut self.cookie);
        let s = time_rounds(rounds, |_| {
            *cookie += 1;
            client.call(
                Message::to(server_id).cookie(*cookie).payload(&payload),
                Duration::from_secs(10),
            )?;
            Ok(())
        })?;
        Ok(s.per_s)
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn run(
    bus: &Path,
    rounds: usize,
    conns: usize,
    names: usize,
    as_json: bool,
) -> BenchResult<()> {
    let kdbusd = std::env::current_exe()?.with_file_name("kdbusd");
    let kdbusd = kdbusd.to_str().ok_or("a kdbusd path that is not UTF-8")?;
    let (_empty_broker, empty_bus) = super::dbus::start_native(kdbusd, "kdbusd-empty")?;
    let mut empty = Pair::start(&empty_bus)?;
    let mut loaded = Pair::start(bus)?;
    let t0 = Instant::now();
    let l = load(bus, conns, names)?;
    let load_s = t0.elapsed().as_secs_f64();
    let turn = (rounds / PAIRS).max(50);
    let (mut e, mut f) = (Vec::new(), Vec::new());
    for i in 0..PAIRS {
        if i % 2 == 0 {
            e.push(empty.rate(turn)?);
            f.push(loaded.rate(turn)?);
        } else {
            f.push(loaded.rate(turn)?);
            e.push(empty.rate(turn)?);
        }
    }
    let held = l.conns.len();
    drop(l);
    let ratios: Vec<f64> = f.iter().zip(&e).map(|(l, e)| l / e.max(1e-9)).collect();
    let ratio = median(&ratios);
    let (empty_rate, loaded_rate) = (median(&e), median(&f));
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    if as_json {
        println!(
            "{}",
            json!({
                "idle_connections": held,
                "names": names,
                "round_trips_per_s_empty": empty_rate.round(),
                "round_trips_per_s_loaded": loaded_rate.round(),
                "ratio": round3(ratio),
                "pair_ratios": ratios.iter().map(|&r| round3(r)).collect::<Vec<_>>(),
                "load_seconds": (load_s * 10.0).round() / 10.0,
            })
        );
    } else {
        println!(
            "native round trips of 64 bytes, {PAIRS} turns of {turn} on each bus, alternating"
        );
        println!("empty bus (a private kdbusd): {empty_rate:>10.0} /s (median)");
        println!("{held} idle connections, {names} names: {loaded_rate:>10.0} /s (median)");
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "ratio loaded/empty: {ratio:.3} (median of {})   (loading took {load_s:.1} s)",
            each.join(" ")
        );
    }
    Ok(())
}
