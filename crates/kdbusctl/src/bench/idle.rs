//! `kdbusctl bench --idle-connections N --idle-names M`: is a round trip's cost flat
//! in what does not take part?
//!
//! Native round trips on an empty bus, then with N idle connections and M names
//! (held by as few of those connections as the per-connection limit allows) on the
//! same bus, then on the empty bus again: A-B-A, so that the machine's drift over the
//! run lands on both sides of the comparison (the empty rate is the mean of the two A
//! phases). A broker whose per-message work touches a table of all connections or
//! names shows it here as a ratio below 1.

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

/// Round trips per second between a client and an echo service on `bus`.
fn round_trips(bus: &Path, rounds: usize) -> BenchResult<f64> {
    let server = Connection::hello(bus, &HelloOptions::new().description("bench-idle-echo"))?;
    let client = Connection::hello(bus, &HelloOptions::new().description("bench-idle-client"))?;
    let server_id = server.id();
    std::thread::spawn(move || {
        let _ = crate::serve_loop(&server);
    });
    let payload = [0x5au8; 64];
    let s = time_rounds(rounds, |i| {
        client.call(
            Message::to(server_id)
                .cookie(i as u64 + 1)
                .payload(&payload),
            Duration::from_secs(10),
        )?;
        Ok(())
    })?;
    client.byebye().ok();
    Ok(s.per_s)
}

pub fn run(
    bus: &Path,
    rounds: usize,
    conns: usize,
    names: usize,
    as_json: bool,
) -> BenchResult<()> {
    let half = (rounds / 2).max(100);
    let empty_before = round_trips(bus, half)?;
    let t0 = Instant::now();
    let l = load(bus, conns, names)?;
    let load_s = t0.elapsed().as_secs_f64();
    let loaded = round_trips(bus, rounds)?;
    let held = l.conns.len();
    drop(l);
    // Let the broker finish taking the idle connections down before measuring.
    std::thread::sleep(Duration::from_millis(500));
    let empty_after = round_trips(bus, half)?;
    let empty = (empty_before + empty_after) / 2.0;
    let ratio = loaded / empty;
    if as_json {
        println!(
            "{}",
            json!({
                "idle_connections": held,
                "names": names,
                "round_trips_per_s_empty": empty.round(),
                "round_trips_per_s_empty_before": empty_before.round(),
                "round_trips_per_s_empty_after": empty_after.round(),
                "round_trips_per_s_loaded": loaded.round(),
                "ratio": (ratio * 1000.0).round() / 1000.0,
                "load_seconds": (load_s * 10.0).round() / 10.0,
            })
        );
    } else {
        println!("native round trips of 64 bytes ({rounds} loaded, {half} before and after)");
        println!("empty bus:          {empty:>10.0} /s   ({empty_before:.0} before, {empty_after:.0} after)");
        println!("{held} idle connections, {names} names: {loaded:>10.0} /s");
        println!("ratio loaded/empty: {ratio:.3}   (loading took {load_s:.1} s)");
    }
    Ok(())
}
