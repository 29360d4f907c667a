//! `kdbusctl bench --names`: the cost of NAME_ACQUIRE + NAME_RELEASE with few and with
//! many names on the bus.
//!
//! Measured twice: through the broker (what a client sees, a request/answer round trip
//! each) and on the registry itself in this process (what the broker spends, without
//! the socket hops that would hide it). Registry operations are hash lookups, so both
//! should stay flat as the bus fills up.

use super::{time_rounds, BenchResult, Stats};
use kdbus::{Connection, HelloOptions};
use kdbus_core::names::{NameEvent, NameRegistry};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

const PROBE: &str = "org.kdbus.bench.Probe";

pub fn run(bus: &Path, rounds: usize, many: usize, as_json: bool) -> BenchResult<()> {
    let rounds = rounds.clamp(100, 5000);
    let few = 10.min(many);
    let ipc_few = ipc(bus, few, rounds)?;
    let ipc_many = ipc(bus, many, rounds)?;
    let core_few = in_process(few);
    let core_many = in_process(many);
    let ipc_ratio = ipc_many.p50_us / ipc_few.p50_us;
    let core_ratio = core_many / core_few;
    if as_json {
        let v = json!({
            "names_few": few,
            "names_many": many,
            "ipc_acquire_release_us_few": round1(ipc_few.p50_us),
            "ipc_acquire_release_us_many": round1(ipc_many.p50_us),
            "ipc_ratio": round3(ipc_ratio),
            "core_acquire_release_ns_few": round1(core_few),
            "core_acquire_release_ns_many": round1(core_many),
            "core_ratio": round3(core_ratio),
        });
        println!("{v}");
    } else {
        println!("acquire + release of one name, median ({rounds} rounds through the broker)");
        println!("                     {few:>10} names   {many:>10} names   ratio");
        println!(
            "through the broker:  {:>10.1} us   {:>10.1} us   {ipc_ratio:.2}",
            ipc_few.p50_us, ipc_many.p50_us
        );
        println!(
            "registry alone:      {core_few:>10.1} ns   {core_many:>10.1} ns   {core_ratio:.2}"
        );
    }
    Ok(())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Fill the bus with `n - 1` names (held by as many connections as the per-connection
/// limit needs), then time acquire + release of one more.
fn ipc(bus: &Path, n: usize, rounds: usize) -> BenchResult<Stats> {
    let per_conn = kdbus::abi::limits::CONN_MAX_NAMES;
    let mut holders = Vec::new();
    let mut made = 0;
    while made + 1 < n {
        let c = Connection::hello(
            bus,
            &HelloOptions::new()
                .pool_size(4096)
                .description("bench-names"),
        )?;
        for _ in 0..per_conn.min(n - 1 - made) {
            c.acquire_name(&format!("org.kdbus.bench.n{made}"), 0)?;
            made += 1;
        }
        holders.push(c);
    }
    let c = Connection::hello(bus, &HelloOptions::new().description("bench-names-probe"))?;
    let stats = time_rounds(rounds, |_| {
        c.acquire_name(PROBE, 0)?;
        c.release_name(PROBE)?;
        Ok(())
    })?;
    drop(holders);
    Ok(stats)
}

/// The registry alone with `n - 1` other names: ns per acquire + release.
fn in_process(n: usize) -> f64 {
    let mut reg = NameRegistry::new();
    let mut events: Vec<NameEvent> = Vec::new();
    let per_conn = kdbus::abi::limits::CONN_MAX_NAMES;
    for i in 0..n.saturating_sub(1) {
        let _ = reg.acquire(
            (i / per_conn) as u64 + 1,
            false,
            &format!("org.kdbus.bench.n{i}"),
            0,
            &mut events,
        );
        events.clear();
    }
    let probe = u64::MAX;
    let iters = 200_000;
    let start = Instant::now();
    for _ in 0..iters {
        let _ = reg.acquire(probe, false, PROBE, 0, &mut events);
        let _ = reg.release(probe, PROBE, &mut events);
        events.clear();
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}
