//! `kdbusctl bench --zbus`: the same zbus service and client over kdbusd's native
//! socket (`kdbus-zbus`) and over its D-Bus socket, side by side in one run.
//!
//! One kdbusd serves both sockets of one bus. On each transport a zbus service owns a
//! name and answers `Echo(s) -> s` (a `--size`-byte string), and a zbus client calls it
//! through a proxy, one call at a time; the transports take turns so that the
//! machine's drift lands on both. Reported per transport: calls/s and the broker's CPU
//! per call. What differs is only the socket under zbus: the broker copies each message
//! once into the receiver's pool on the native path, and frames, queues and writes it
//! to a stream on the D-Bus path.

use super::dbus::{cpu_ns, start_native};
use super::BenchResult;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// Turns the calls are split into.
const TURNS: usize = 10;

struct Echo;

#[zbus::interface(name = "org.kdbus.ZbusBench")]
impl Echo {
    fn echo(&self, text: String) -> String {
        text
    }
}

/// One transport's service and client, and what its timed turns added up to.
struct Side {
    name: &'static str,
    _service: zbus::Connection,
    client: zbus::Proxy<'static>,
    calls: usize,
    elapsed: Duration,
    cpu_ns: u64,
}

impl Side {
    async fn start(
        name: &'static str,
        builder: impl Fn() -> zbus::Result<zbus::connection::Builder<'static>>,
        bus_name: &'static str,
    ) -> BenchResult<Side> {
        let service = builder()?
            .serve_at("/org/kdbus/ZbusBench", Echo)?
            .name(bus_name)?
            .build()
            .await?;
        let conn = builder()?.build().await?;
        let client = zbus::Proxy::new_owned(
            conn,
            bus_name,
            "/org/kdbus/ZbusBench",
            "org.kdbus.ZbusBench",
        )
        .await?;
        Ok(Side {
            name,
            _service: service,
            client,
            calls: 0,
            elapsed: Duration::ZERO,
            cpu_ns: 0,
        })
    }

    async fn run(&mut self, n: usize, text: &str, broker: u32, timed: bool) -> BenchResult<()> {
        let cpu = cpu_ns(broker);
        let start = Instant::now();
        for _ in 0..n {
            let r: String = self.client.call("Echo", &(text,)).await?;
            std::hint::black_box(r);
        }
        if timed {
            self.elapsed += start.elapsed();
            self.calls += n;
            let after = cpu_ns(broker);
            self.cpu_ns += after.zip(cpu).map_or(0, |(a, b)| a.saturating_sub(b));
        }
        Ok(())
    }

    fn per_s(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn cpu_us(&self) -> f64 {
        self.cpu_ns as f64 / 1e3 / self.calls.max(1) as f64
    }
}

pub fn run(rounds: usize, payload: usize, as_json: bool) -> BenchResult<()> {
    let kdbusd = std::env::current_exe()?.with_file_name("kdbusd");
    let (started, bus) = start_native(&kdbusd.to_string_lossy(), "zbus")?;
    let broker = started.child.id();
    let dbus = format!("unix:path={}", bus.with_file_name("dbus").display());
    let text = "x".repeat(payload);
    let per_turn = rounds.div_ceil(TURNS).max(1);
    let bus_path: &Path = &bus;
    let mut sides = zbus::block_on(async {
        let native = Side::start(
            "native",
            || kdbus_zbus::builder(bus_path),
            "org.kdbus.ZbusBench.Native",
        );
        let native = native.await?;
        let over_dbus = Side::start(
            "D-Bus socket",
            || zbus::connection::Builder::address(dbus.as_str()),
            "org.kdbus.ZbusBench.DBus",
        )
        .await?;
        BenchResult::Ok([native, over_dbus])
    })?;
    zbus::block_on(async {
        for s in sides.iter_mut() {
            s.run(per_turn / 10 + 1, &text, broker, false).await?;
        }
        for turn in 0..TURNS {
            for i in 0..sides.len() {
                let s = &mut sides[(turn + i) % 2];
                s.run(per_turn, &text, broker, true).await?;
            }
        }
        BenchResult::Ok(())
    })?;
    let [native, over_dbus] = &sides;
    let ratio = native.per_s() / over_dbus.per_s().max(1e-9);
    if as_json {
        let side = |s: &Side| {
            json!({ "transport": s.name, "calls_per_s": (s.per_s() * 10.0).round() / 10.0,
                    "broker_cpu_us_per_call": (s.cpu_us() * 10.0).round() / 10.0 })
        };
        println!(
            "{}",
            json!({ "zbus": [side(native), side(over_dbus)],
                    "native_over_dbus": (ratio * 100.0).round() / 100.0,
                    "calls": native.calls, "payload_bytes": payload })
        );
        return Ok(());
    }
    println!(
        "zbus calls of {payload} bytes, {} per transport in {TURNS} turns, one kdbusd",
        native.calls
    );
    for s in &sides {
        println!(
            "zbus over {:<13} {:>9.1} calls/s   broker CPU {:>6.1} us/call",
            s.name,
            s.per_s(),
            s.cpu_us()
        );
    }
    println!("native / D-Bus socket: {ratio:.2}");
    Ok(())
}
