//! `kdbusctl bench --policy-rules N`: what a configured message policy costs. Two
//! kdbusd buses run side by side, one with the benchmark's allow-everything policy, one
//! with the same plus `N` rules about other names (sending to them, owning them,
//! receiving from them), and D-Bus round trips are measured on both, interleaved in
//! turns so that the machine's drift hits both alike.
//!
//! Every round trip passes the policy twice (the call and its reply, each judged for
//! sending and for receiving), so this is the price of the rules a message does not
//! concern: with rules indexed by the name they are about, it should be none.

use super::dbus::{bus_pid, start_configured, RoundTrips};
use super::BenchResult;
use serde_json::json;

/// Turns in which each bus's round trips are split.
const TURNS: usize = 20;

/// `n` rules about names no message of the benchmark involves.
fn unrelated_rules(n: usize) -> String {
    let mut s = String::from("<policy context=\"default\">");
    for i in 0..n {
        s.push_str(&match i % 3 {
            0 => format!("<deny send_destination=\"org.unrelated.N{i}\" send_interface=\"org.unrelated.I{i}\"/>"),
            1 => format!("<deny own=\"org.unrelated.N{i}\"/>"),
            _ => format!("<deny receive_sender=\"org.unrelated.N{i}\" receive_member=\"M\" receive_path=\"/\"/>"),
        });
    }
    s.push_str("</policy>");
    s
}

pub fn run(rules: usize, rounds: usize, payload: usize, as_json: bool) -> BenchResult<()> {
    let kdbusd = std::env::current_exe()?.with_file_name("kdbusd");
    let kdbusd = kdbusd.to_string_lossy().into_owned();
    let plain = start_configured("policy-0", &kdbusd, "")?;
    let ruled = start_configured("policy-n", &kdbusd, &unrelated_rules(rules))?;
    let mut rts = Vec::new();
    for s in [&plain, &ruled] {
        let mut rt = RoundTrips::start(&s.address, payload, bus_pid(&s.address))?;
        rt.run(rounds / 10 + 1, false)?;
        rts.push(rt);
    }
    let per_turn = rounds.div_ceil(TURNS);
    for turn in 0..TURNS {
        for i in 0..2 {
            rts[(turn + i) % 2].run(per_turn, true)?;
        }
    }
    let mut it = rts.into_iter().map(RoundTrips::finish);
    let ((base, base_cpu), (with, with_cpu)) = match (it.next(), it.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err("a bus was not measured".into()),
    };
    let ratio = with.per_s / base.per_s;
    if as_json {
        let v = json!({
            "rules": rules,
            "round_trips_per_s": base.per_s.round(),
            "round_trips_per_s_with_rules": with.per_s.round(),
            "ratio": (ratio * 1000.0).round() / 1000.0,
            "broker_cpu_us_per_rt": base_cpu.map(|c| (c * 10.0).round() / 10.0),
            "broker_cpu_us_per_rt_with_rules": with_cpu.map(|c| (c * 10.0).round() / 10.0),
            "rounds": rounds,
            "payload_bytes": payload,
        });
        println!("{v}");
    } else {
        println!("{rounds} D-Bus round trips of {payload} bytes, interleaved in {TURNS} turns");
        let cpu = |c: Option<f64>| c.map_or("-".to_string(), |c| format!("{c:.1}"));
        println!(
            "allow-all policy:       {:>10.0} round trips/s   p50 {:>7.1} us   broker CPU {} us/rt",
            base.per_s,
            base.p50_us,
            cpu(base_cpu)
        );
        println!(
            "plus {rules:>5} other rules: {:>10.0} round trips/s   p50 {:>7.1} us   broker CPU {} us/rt",
            with.per_s, with.p50_us, cpu(with_cpu)
        );
        println!("ratio:                  {ratio:.3}");
    }
    Ok(())
}
