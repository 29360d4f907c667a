//! `kdbusctl top`: the quota view people ask dbus-broker for.
//!
//! Why did a sender get `LimitsExceeded`? Because some receiver's stream or pool holds
//! what that sender's user may hold in it. This shows, per connection, what it holds
//! and for whom: a native connection's receive pool (size, bytes in use, memory
//! touched, queued and lost messages), a D-Bus connection's stream (bytes and fds
//! waiting, its quota, and what each sending user holds in it), how many messages were
//! refused to their senders for want of room in it, its match rules and names, and per
//! user what its connections hold in all. Everything comes from the
//! bus's `org.freedesktop.DBus.Debug.Stats` (`GetStats`, and `GetConnectionStats` for
//! each unique name), so it works against any address that has it.

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use zbus::zvariant::OwnedValue;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const STATS: &str = "org.freedesktop.DBus.Debug.Stats";
const DRIVER: &str = "org.freedesktop.DBus";
const DRIVER_PATH: &str = "/org/freedesktop/DBus";

/// One connection's numbers, as the bus reported them.
struct Row {
    name: String,
    stats: HashMap<String, OwnedValue>,
}

fn num(stats: &HashMap<String, OwnedValue>, k: &str) -> Option<u64> {
    let v = stats.get(k)?;
    u64::try_from(v)
        .ok()
        .or_else(|| u32::try_from(v).ok().map(u64::from))
}

/// `OutgoingBySender`: sending uid -> (bytes, fds).
fn by_sender(stats: &HashMap<String, OwnedValue>) -> BTreeMap<u32, (u64, u32)> {
    stats
        .get("OutgoingBySender")
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| HashMap::<u32, (u64, u32)>::try_from(v).ok())
        .map(|m| m.into_iter().collect())
        .unwrap_or_default()
}

fn rows(conn: &zbus::blocking::Connection) -> Res<(HashMap<String, OwnedValue>, Vec<Row>)> {
    let call = |iface: &str, member: &str, arg: Option<&str>| match arg {
        Some(a) => conn.call_method(Some(DRIVER), DRIVER_PATH, Some(iface), member, &(a,)),
        None => conn.call_method(Some(DRIVER), DRIVER_PATH, Some(iface), member, &()),
    };
    let bus: HashMap<String, OwnedValue> = call(STATS, "GetStats", None)?.body().deserialize()?;
    let names: Vec<String> = call(DRIVER, "ListNames", None)?.body().deserialize()?;
    let me = conn.unique_name().map(|n| n.to_string());
    let mut out = Vec::new();
    for name in names.into_iter().filter(|n| n.starts_with(':')) {
        if Some(&name) == me.as_ref() {
            continue;
        }
        // A connection may leave between the list and the question.
        if let Ok(m) = call(STATS, "GetConnectionStats", Some(&name)) {
            if let Ok(stats) = m.body().deserialize() {
                out.push(Row { name, stats });
            }
        }
    }
    Ok((bus, out))
}

fn row_json(r: &Row) -> Value {
    let s = &r.stats;
    let senders: Vec<Value> = by_sender(s)
        .into_iter()
        .map(|(uid, (bytes, fds))| json!({ "uid": uid, "bytes": bytes, "fds": fds }))
        .collect();
    let mut o = json!({ "name": r.name, "kind": if s.contains_key("PoolSize") { "native" } else { "dbus" } });
    for k in [
        "PoolSize",
        "PoolUsedBytes",
        "PoolTouchedBytes",
        "QueuedMessages",
        "DroppedMessages",
        "UserPoolTouchedBytes",
        "OutgoingBytes",
        "OutgoingFDs",
        "PeakOutgoingBytes",
        "QuotaBytes",
        "QuotaFDs",
        "UserOutgoingBytes",
        "MatchRules",
        "BusNames",
        "RefusedMessages",
    ] {
        if let Some(v) = num(s, k) {
            o[k] = json!(v);
        }
    }
    if s.contains_key("OutgoingBySender") {
        o["OutgoingBySender"] = json!(senders);
    }
    o
}

fn kib(b: u64) -> String {
    if b >= 10 << 20 {
        format!("{}M", b >> 20)
    } else {
        format!("{}K", b.div_ceil(1024))
    }
}

fn print_table(bus: &HashMap<String, OwnedValue>, rows: &[Row]) {
    let g = |k| num(bus, k).unwrap_or(0);
    println!(
        "{} connections ({} authenticating), {} match rules, {} names",
        g("ActiveConnections"),
        g("IncompleteConnections"),
        g("MatchRules"),
        g("BusNames")
    );
    println!(
        "{:<10} {:<6} {:>15} {:>7} {:>7} {:>8} {:>7} {:>5}  BY SENDING USER",
        "NAME", "KIND", "HELD/BOUND", "QUEUED", "LOST", "REFUSED", "MATCHES", "NAMES"
    );
    for r in rows {
        let s = &r.stats;
        let n = |k| num(s, k).unwrap_or(0);
        let (kind, held, queued, lost) = if s.contains_key("PoolSize") {
            let held = format!("{}/{}", kib(n("PoolUsedBytes")), kib(n("PoolSize")));
            (
                "pool",
                held,
                n("QueuedMessages").to_string(),
                n("DroppedMessages").to_string(),
            )
        } else {
            let held = format!("{}/{}", kib(n("OutgoingBytes")), kib(n("QuotaBytes")));
            ("stream", held, "-".into(), "-".into())
        };
        let senders: Vec<String> = by_sender(s)
            .into_iter()
            .map(|(uid, (bytes, fds))| format!("uid {uid}: {} {fds} fds", kib(bytes)))
            .collect();
        println!(
            "{:<10} {:<6} {:>15} {:>7} {:>7} {:>8} {:>7} {:>5}  {}",
            r.name,
            kind,
            held,
            queued,
            lost,
            n("RefusedMessages"),
            n("MatchRules"),
            n("BusNames"),
            senders.join(", ")
        );
    }
}

/// Per user: what their connections' streams and pools hold in all.
fn users_json(rows: &[Row]) -> Value {
    let mut held: BTreeMap<u32, u64> = BTreeMap::new();
    for r in rows {
        for (uid, (bytes, _)) in by_sender(&r.stats) {
            *held.entry(uid).or_default() += bytes;
        }
    }
    json!(held
        .into_iter()
        .map(|(uid, bytes)| json!({ "uid": uid, "bytes_held_in_receivers": bytes }))
        .collect::<Vec<_>>())
}

pub fn run(address: &str, once: bool, as_json: bool, interval: Duration) -> Res<()> {
    let conn = zbus::blocking::connection::Builder::address(address)?.build()?;
    loop {
        let (bus, rows) = rows(&conn)?;
        if as_json {
            let conns: Vec<Value> = rows.iter().map(row_json).collect();
            let mut b = json!({});
            for k in [
                "ActiveConnections",
                "IncompleteConnections",
                "MatchRules",
                "BusNames",
            ] {
                b[k] = json!(num(&bus, k));
            }
            println!(
                "{}",
                json!({ "bus": b, "connections": conns, "senders": users_json(&rows) })
            );
        } else {
            if !once {
                // Clear the screen, as top does.
                print!("\x1b[H\x1b[2J");
            }
            print_table(&bus, &rows);
        }
        if once {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}
