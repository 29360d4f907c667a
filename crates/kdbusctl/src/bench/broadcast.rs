//! `kdbusctl bench --broadcast`: one sender, N subscribers whose matches take its
//! signals and N whose matches do not, optionally R more rules that do not match.
//!
//! Reports broadcasts delivered per second (summed over matching subscribers), and
//! what the non-matching subscribers paid: how often their socket woke them and how
//! much CPU they used. Filtering happens in the broker, so that should be nothing.
//! With `--rules R` the same run is made first without the extra rules, as baseline.

use super::BenchResult;
use kdbus::bloom::{match_mask, signal_filter, MatchSpec, SignalSpec};
use kdbus::{Connection, HelloOptions, MatchRule, Message};
use rustix::event::{PollFd, PollFlags};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::cli::BroadcastArgs;

struct Outcome {
    delivered_per_s: f64,
    delivered: u64,
    nonmatching_wakeups: u64,
    nonmatching_cpu_ms: f64,
}

pub fn run(bus: &Path, a: &BroadcastArgs, as_json: bool) -> BenchResult<()> {
    let baseline = if a.rules > 0 {
        Some(run_once(bus, a, 0)?)
    } else {
        None
    };
    let r = run_once(bus, a, a.rules)?;
    let ratio = baseline
        .as_ref()
        .map(|b| r.delivered_per_s / b.delivered_per_s);
    if as_json {
        let v = json!({
            "delivered_per_s": r.delivered_per_s.round(),
            "delivered": r.delivered,
            "nonmatching_wakeups": r.nonmatching_wakeups,
            "nonmatching_cpu_ms": (r.nonmatching_cpu_ms * 1000.0).round() / 1000.0,
            "subscribers": a.subscribers,
            "rules": a.rules,
            "broadcasts": a.count,
            "baseline_delivered_per_s": baseline.as_ref().map(|b| b.delivered_per_s.round()),
            "ratio_to_baseline": ratio.map(|x| (x * 1000.0).round() / 1000.0),
        });
        println!("{v}");
    } else {
        println!(
            "{} broadcasts, {} matching + {} non-matching subscribers",
            a.count, a.subscribers, a.subscribers
        );
        if let Some(b) = &baseline {
            println!(
                "without extra rules:   {:>10.0} delivered/s",
                b.delivered_per_s
            );
        }
        println!(
            "with {:>6} rules:     {:>10.0} delivered/s",
            a.rules, r.delivered_per_s
        );
        if let Some(x) = ratio {
            println!("ratio:                 {x:.3}");
        }
        println!(
            "non-matching subscribers: {} wakeups, {:.3} ms CPU",
            r.nonmatching_wakeups, r.nonmatching_cpu_ms
        );
    }
    Ok(())
}

/// CPU time of the calling thread, in ms.
fn thread_cpu_ms() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

fn run_once(bus: &Path, a: &BroadcastArgs, rules: usize) -> BenchResult<Outcome> {
    let hello = HelloOptions::new().description("bench-broadcast");
    let sender = Connection::hello(bus, &hello)?;
    let p = sender.bloom();
    let filter = signal_filter(
        p,
        &SignalSpec {
            interface: Some("org.kdbus.Bench"),
            member: Some("Tick"),
            ..Default::default()
        },
    );
    let take = match_mask(
        p,
        &MatchSpec {
            member: Some("Tick"),
            ..Default::default()
        },
    )
    .ok_or("empty mask")?;
    // A member whose mask the filter does not cover (checked, not hoped for).
    let miss = (0..)
        .map(|i| {
            match_mask(
                p,
                &MatchSpec {
                    member: Some(&format!("Other{i}")),
                    ..Default::default()
                },
            )
        })
        .find_map(|m| m.filter(|m| !filter.covers(m)))
        .ok_or("no non-matching mask")?;

    let stop = Arc::new(AtomicBool::new(false));
    let (stop_r, stop_w) = rustix::pipe::pipe()?;
    let stop_r = Arc::new(stop_r);
    let mut matching = Vec::new();
    for _ in 0..a.subscribers {
        let c = Connection::hello(bus, &hello)?;
        c.add_match(1, &MatchRule::new().bloom(&take), false)?;
        let want = a.count as u64;
        matching.push(std::thread::spawn(
            move || -> Result<(u64, Instant), kdbus::Error> {
                let mut got = 0;
                while got < want {
                    match c.recv_timeout(Some(Duration::from_secs(10))) {
                        Ok(_) => got += 1,
                        Err(e) if e.errno() == kdbus::Errno::EAGAIN => break,
                        Err(e) => return Err(e),
                    }
                }
                Ok((got, Instant::now()))
            },
        ));
    }
    // Non-matching subscribers, and connections holding the extra rules: each waits on
    // its socket and counts how often it was woken.
    let holders = rules.div_ceil(kdbus::abi::limits::MATCH_MAX);
    let mut idle = Vec::new();
    let mut rule_no = 0u64;
    for i in 0..a.subscribers + holders {
        let c = Connection::hello(bus, &hello)?;
        if i < a.subscribers {
            c.add_match(1, &MatchRule::new().bloom(&miss), false)?;
        } else {
            // Rules for senders that do not exist (ids far beyond any handed out) and
            // for names nobody owns: what a busy bus looks like to this sender.
            for _ in 0..kdbus::abi::limits::MATCH_MAX.min(rules - rule_no as usize) {
                let r = if rule_no.is_multiple_of(2) {
                    MatchRule::new().sender(1 << 40 | rule_no).bloom(&take)
                } else {
                    MatchRule::new()
                        .sender_name(&format!("org.kdbus.bench.Nobody{rule_no}"))
                        .bloom(&take)
                };
                c.add_match(rule_no + 2, &r, false)?;
                rule_no += 1;
            }
        }
        let (stop, stop_r) = (stop.clone(), stop_r.clone());
        idle.push(std::thread::spawn(move || -> (u64, f64) {
            // Settle first (stack pages, first syscalls), so what we count is what the
            // bus made us do.
            let zero = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let _ = rustix::event::poll(&mut [PollFd::new(&*stop_r, PollFlags::IN)], Some(&zero));
            let _ = thread_cpu_ms();
            let cpu0 = thread_cpu_ms();
            let mut wakeups = 0;
            while !stop.load(Ordering::Relaxed) {
                let fd = c.as_fd();
                let mut pfd = [
                    PollFd::new(&fd, PollFlags::IN),
                    PollFd::new(&*stop_r, PollFlags::IN),
                ];
                if rustix::event::poll(&mut pfd, None).is_err() {
                    continue;
                }
                if pfd[0].revents().contains(PollFlags::IN) {
                    wakeups += 1;
                    while c.recv().is_ok() {}
                }
                if !pfd[1].revents().is_empty() {
                    break;
                }
            }
            (wakeups, thread_cpu_ms() - cpu0)
        }));
    }

    let start = Instant::now();
    for i in 0..a.count {
        sender.send(
            &Message::broadcast(&filter)
                .cookie(i as u64 + 1)
                .payload(b"tick"),
        )?;
    }
    let mut delivered = 0;
    let mut last = start;
    for t in matching {
        let (got, at) = t.join().map_err(|_| "subscriber panicked")??;
        delivered += got;
        last = last.max(at);
    }
    stop.store(true, Ordering::Relaxed);
    rustix::io::write(&stop_w, b"x")?;
    let (mut wakeups, mut cpu) = (0, 0.0);
    for t in idle {
        let (w, c) = t.join().map_err(|_| "idle subscriber panicked")?;
        wakeups += w;
        cpu += c;
    }
    let secs = (last - start).as_secs_f64().max(1e-9);
    Ok(Outcome {
        delivered_per_s: delivered as f64 / secs,
        delivered,
        nonmatching_wakeups: wakeups,
        nonmatching_cpu_ms: cpu,
    })
}
