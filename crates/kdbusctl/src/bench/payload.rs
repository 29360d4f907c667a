//! `kdbusctl bench --payload SIZE [--memfd]`: large messages.
//!
//! A client calls an echo service with SIZE bytes and gets them back, on the native
//! path with the bytes copied into the receivers' pools (payload vectors) and, with
//! `--memfd`, passed as sealed memfds (the bus copies nothing; the service maps the
//! file, reads it and answers with the same one): a new memfd per call, filled by the
//! client, and one filled once and sent with every call (data that already lives in
//! a file);
//! next to the same call through dbus-broker's and kdbusd's D-Bus sockets, started
//! for the run. Both sides read every byte they receive (a checksum), so the numbers
//! are for data that was looked at, not just moved. The workloads take turns, so
//! that the machine's drift spreads over all of them. MiB/s counts SIZE once per
//! call.

use super::dbus::{self, RoundTrips};
use super::{checksum, stats, BenchResult, Stats};
use kdbus::{memfd_sealed, Connection, HelloOptions, Message};
use serde_json::json;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// How the turns are split.
const TURNS: usize = 10;

/// The native echo service: reads what came (vectors or memfds) and answers with it.
fn serve(c: Connection) {
    loop {
        let m = match c.recv_timeout(None) {
            Ok(m) => m,
            Err(_) => return,
        };
        let (src, cookie) = (m.src_id(), m.cookie());
        let mut sum = 0u64;
        let reply = match m.memfds() {
            Ok(views) if !views.is_empty() => {
                for v in &views {
                    sum = sum.wrapping_add(checksum(v));
                }
                let fd = m.fds.last().map(|f| f.as_fd());
                let size = views.iter().map(|v| v.len() as u64).sum();
                fd.map(|fd| c.send(&Message::to(src).reply_to(cookie).memfd(fd, 0, size)))
            }
            _ => {
                let parts: Vec<&[u8]> = m.payloads().collect();
                for p in &parts {
                    sum = sum.wrapping_add(checksum(p));
                }
                let mut msg = Message::to(src).reply_to(cookie);
                for p in parts {
                    msg = msg.payload(p);
                }
                Some(c.send(&msg))
            }
        };
        std::hint::black_box(sum);
        if let Some(Err(e)) = reply {
            eprintln!("kdbusctl bench: echo: {e}");
            return;
        }
    }
}

/// How a native workload carries its bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Carry {
    /// Payload vectors, copied into the receivers' pools.
    Copied,
    /// A new sealed memfd per call, filled by the client.
    Memfd,
    /// One sealed memfd, filled once and sent with every call (data that already
    /// lives in a file, such as a blob handed to many).
    MemfdKept,
}

/// One native workload: the client and its service.
struct Native {
    client: Connection,
    server_id: u64,
    carry: Carry,
    kept: Option<rustix::fd::OwnedFd>,
    samples: Vec<Duration>,
    elapsed: Duration,
}

impl Native {
    fn start(bus: &Path, carry: Carry, data: &[u8]) -> BenchResult<Native> {
        let size = data.len();
        let pool = ((4 * size as u64) + (1 << 20)).next_power_of_two();
        let opts = HelloOptions::new().pool_size(pool);
        let server = Connection::hello(bus, &opts)?;
        let server_id = server.id();
        std::thread::spawn(move || serve(server));
        let kept = match carry {
            Carry::MemfdKept => Some(memfd_sealed(data)?),
            _ => None,
        };
        Ok(Native {
            client: Connection::hello(bus, &opts)?,
            server_id,
            carry,
            kept,
            samples: Vec::new(),
            elapsed: Duration::ZERO,
        })
    }

    fn run(&mut self, n: usize, data: &[u8], timed: bool) -> BenchResult<()> {
        let start = Instant::now();
        for i in 0..n {
            let t0 = Instant::now();
            let msg = Message::to(self.server_id).cookie(i as u64 + 1);
            let got = if self.carry != Carry::Copied {
                let fresh;
                let fd = match &self.kept {
                    Some(fd) => fd.as_fd(),
                    None => {
                        fresh = memfd_sealed(data)?;
                        fresh.as_fd()
                    }
                };
                let r = self
                    .client
                    .call(msg.memfd(fd, 0, data.len() as u64), Duration::from_secs(10))?;
                let views = r.memfds()?;
                views
                    .iter()
                    .map(|v| {
                        std::hint::black_box(checksum(v));
                        v.len()
                    })
                    .sum::<usize>()
            } else {
                let r = self
                    .client
                    .call(msg.payload(data), Duration::from_secs(10))?;
                r.payloads()
                    .map(|p| {
                        std::hint::black_box(checksum(p));
                        p.len()
                    })
                    .sum::<usize>()
            };
            if got != data.len() {
                return Err(format!("the echo had {got} bytes, not {}", data.len()).into());
            }
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

/// A workload that takes turns.
enum Workload {
    Native(Native),
    DBus(RoundTrips, dbus::Started),
}

pub fn run(bus: &Path, size: usize, rounds: usize, memfd: bool, as_json: bool) -> BenchResult<()> {
    // Enough calls to move 256 MiB (at least 100), unless fewer were asked for.
    let rounds = rounds.min(((256usize << 20) / size.max(1)).max(100));
    let data: Vec<u8> = (0..size).map(|i| (i * 131 % 251) as u8).collect();
    let kdbusd = std::env::current_exe()?.with_file_name("kdbusd");
    let kdbusd = kdbusd.to_string_lossy().into_owned();
    let mut loads: Vec<(String, Workload)> = vec![(
        "native, copied".into(),
        Workload::Native(Native::start(bus, Carry::Copied, &data)?),
    )];
    if memfd {
        for (name, carry) in [
            ("native, memfd per call", Carry::Memfd),
            ("native, memfd kept", Carry::MemfdKept),
        ] {
            loads.push((
                name.into(),
                Workload::Native(Native::start(bus, carry, &data)?),
            ));
        }
    }
    for (name, start) in [
        (
            "dbus-broker (D-Bus)",
            &(|| dbus::start_dbus_broker(&kdbusd)) as &dyn Fn() -> _,
        ),
        ("kdbusd (D-Bus)", &|| {
            dbus::start_daemon_like("kdbusd", &kdbusd)
        }),
    ] {
        match start().and_then(|s| Ok((RoundTrips::start(&s.address, size, None)?, s))) {
            Ok((rt, s)) => loads.push((name.into(), Workload::DBus(rt, s))),
            Err(e) => eprintln!("{name}: not measured ({e})"),
        }
    }
    let per_turn = (rounds / TURNS).max(1);
    for (_, w) in loads.iter_mut() {
        match w {
            Workload::Native(n) => n.run(per_turn.min(10), &data, false)?,
            Workload::DBus(rt, _) => rt.run(per_turn.min(10), false)?,
        }
    }
    for _ in 0..TURNS {
        for (_, w) in loads.iter_mut() {
            match w {
                Workload::Native(n) => n.run(per_turn, &data, true)?,
                Workload::DBus(rt, _) => rt.run(per_turn, true)?,
            }
        }
    }
    let results: Vec<(String, Stats)> = loads
        .into_iter()
        .map(|(name, w)| {
            let s = match w {
                Workload::Native(n) => stats(n.samples, n.elapsed),
                Workload::DBus(rt, mut started) => {
                    let s = rt.finish().0;
                    let _ = started.child.kill();
                    let _ = started.child.wait();
                    s
                }
            };
            (name, s)
        })
        .collect();
    let mib = |s: &Stats| s.per_s * size as f64 / (1 << 20) as f64;
    if as_json {
        let rows: Vec<_> = results
            .iter()
            .map(|(name, s)| {
                json!({
                    "workload": name,
                    "calls_per_s": s.per_s.round(),
                    "mib_per_s": mib(s).round(),
                    "p50_us": (s.p50_us * 10.0).round() / 10.0,
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "payload_bytes": size, "rounds": rounds, "results": rows })
        );
    } else {
        println!("calls of {size} bytes echoed, {rounds} each, in {TURNS} turns");
        for (name, s) in &results {
            println!(
                "{name:<22} {:>9.0} MiB/s  {:>8.0} calls/s  p50 {:>8.1} us",
                mib(s),
                s.per_s,
                s.p50_us
            );
        }
    }
    Ok(())
}
