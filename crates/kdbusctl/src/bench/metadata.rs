//! `kdbusctl bench --metadata`: what each metadata item costs per message.
//!
//! One native round trip per item: a client (attaching everything) calls a service
//! whose connection asks for just that item (`attach_flags_recv`), and the service
//! answers a client that asks for it too; so each round trip carries the item twice.
//! The workloads take turns; the cost of an item is its round trip's time less the
//! time of the round trip with no metadata, halved (per message).

use super::{stats, BenchResult, Stats};
use kdbus::abi::attach;
use kdbus::{Connection, HelloOptions, Message};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const TURNS: usize = 10;

const ITEMS: &[(&str, u64)] = &[
    ("none", 0),
    ("TIMESTAMP", attach::TIMESTAMP),
    ("CREDS", attach::CREDS),
    ("PIDS", attach::PIDS),
    ("AUXGROUPS", attach::AUXGROUPS),
    ("NAMES", attach::NAMES),
    ("TID_COMM", attach::TID_COMM),
    ("PID_COMM", attach::PID_COMM),
    ("EXE", attach::EXE),
    ("CMDLINE", attach::CMDLINE),
    ("CGROUP", attach::CGROUP),
    ("CAPS", attach::CAPS),
    ("AUDIT", attach::AUDIT),
    ("CONN_DESCRIPTION", attach::CONN_DESCRIPTION),
    ("all", attach::ALL),
];

struct Pair {
    client: Connection,
    server_id: u64,
    samples: Vec<Duration>,
    elapsed: Duration,
}

fn pair(bus: &Path, item: u64) -> BenchResult<Pair> {
    let opts = HelloOptions::new()
        .attach_send(attach::ANY)
        .attach_recv(item)
        .description("bench-metadata");
    let server = Connection::hello(bus, &opts)?;
    let server_id = server.id();
    std::thread::spawn(move || {
        let _ = crate::serve_loop(&server);
    });
    Ok(Pair {
        client: Connection::hello(bus, &opts)?,
        server_id,
        samples: Vec::new(),
        elapsed: Duration::ZERO,
    })
}

impl Pair {
    fn run(&mut self, n: usize, timed: bool) -> BenchResult<()> {
        let start = Instant::now();
        for i in 0..n {
            let t0 = Instant::now();
            let msg = Message::to(self.server_id)
                .cookie(i as u64 + 1)
                .payload(b"64 bytes of payload, more or less, as the plain bench sends.....");
            self.client.call(msg, Duration::from_secs(10))?;
            if timed {
                self.samples.push(t0.elapsed());
            }
        }
        if timed {
            self.elapsed += start.elapsed();
        }
        Ok(())
    }
}

pub fn run(bus: &Path, rounds: usize, as_json: bool) -> BenchResult<()> {
    let mut pairs = Vec::new();
    for (name, item) in ITEMS {
        pairs.push((*name, pair(bus, *item)?));
    }
    let per_turn = (rounds / TURNS).max(1);
    for (_, p) in pairs.iter_mut() {
        p.run(per_turn / 10 + 1, false)?;
    }
    for _ in 0..TURNS {
        for (_, p) in pairs.iter_mut() {
            p.run(per_turn, true)?;
        }
    }
    let results: Vec<(&str, Stats)> = pairs
        .into_iter()
        .map(|(name, p)| (name, stats(p.samples, p.elapsed)))
        .collect();
    let base_us = 1e6 / results[0].1.per_s;
    let cost = |s: &Stats| (1e6 / s.per_s - base_us) / 2.0;
    if as_json {
        let rows: Vec<_> = results
            .iter()
            .map(|(name, s)| {
                json!({
                    "item": name,
                    "round_trips_per_s": s.per_s.round(),
                    "us_per_message": (cost(s) * 100.0).round() / 100.0,
                })
            })
            .collect();
        println!("{}", json!({ "rounds": rounds, "items": rows }));
    } else {
        println!("{rounds} round trips per item, in {TURNS} turns; cost per message over none");
        for (name, s) in &results {
            println!(
                "{name:<18} {:>9.0} round trips/s   {:>+7.2} us/message",
                s.per_s,
                cost(s)
            );
        }
    }
    Ok(())
}
