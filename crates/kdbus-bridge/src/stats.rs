//! `org.freedesktop.DBus.Debug.Stats`: what the bus holds, for people debugging it.
//!
//! dbus-daemon's three methods with its keys, plus the numbers people chasing a
//! `LimitsExceeded` ask dbus-broker for: per connection its receive pool (size, bytes
//! in use, memory touched, queued and dropped messages) or its stream (what each
//! sending user holds in it, and its bounds), what its user holds in all, and how many
//! messages were refused to their senders for want of room in it.
//!
//! What differs from dbus-daemon, and why:
//! - `Incoming*` are 0: a message is routed as soon as it is read, so the bus never
//!   holds a queue of incoming messages (partial reads live in the broker's buffers).
//! - `OutgoingMessages` is left out: a stream counts bytes and fds, not messages.
//! - The peaks are the bridge's: updated by D-Bus `AddMatch` and `RequestName` and by
//!   each stats query, so what native connections did in between reaches them at the
//!   next query, at its value then.
//! - `GetAllMatchRules` lists D-Bus peers' rules; native connections' kdbus matches
//!   have no D-Bus text.

use crate::body::{err, Body, DErr, ErrName};
use crate::peer::peer_mut;
use crate::{Bridge, DRIVER};
use kdbus_core::{BusKey, ConnKey, Domain};
use kdbus_dbus::marshal::Writer;
use kdbus_dbus::names::UniqueName;
use std::collections::HashMap;

/// The peaks of one bus (see the module docs for when they move).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Peaks {
    match_rules: u64,
    match_rules_per_conn: u64,
    bus_names: u64,
    bus_names_per_conn: u64,
}

/// What the bridge keeps for the stats interface.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Counts stats queries (dbus-daemon's `Serial`).
    serial: u32,
    peaks: HashMap<BusKey, Peaks>,
    /// D-Bus clients connected but not yet past Hello (the broker keeps this).
    pub(crate) incomplete: usize,
}

/// Match rules of a connection: a D-Bus peer's rules, or a native one's entries.
fn conn_match_rules(dom: &mut Domain, bus: BusKey, key: ConnKey) -> u64 {
    let rules = dom.with_stream(key, |s, _| peer_mut(s).map(|p| p.rules.len()));
    match rules.flatten() {
        Some(n) => n as u64,
        None => dom.bus(bus).map_or(0, |b| b.matches.conn_count(key) as u64),
    }
}

/// Names a connection owns, its unique name included.
fn conn_bus_names(dom: &Domain, bus: BusKey, key: ConnKey) -> u64 {
    1 + dom
        .bus(bus)
        .map_or(0, |b| b.names.owned_by(key).count() as u64)
}

impl Stats {
    /// Take `bus`'s current totals into its peaks; returns (match rules, bus names).
    pub(crate) fn refresh(&mut self, dom: &mut Domain, bus: BusKey) -> (u64, u64) {
        let keys: Vec<ConnKey> = dom
            .bus(bus)
            .map(|b| b.conns.values().copied().collect())
            .unwrap_or_default();
        let p = self.peaks.entry(bus).or_default();
        let (mut rules, mut names) = (0, 0);
        for key in keys {
            let (r, n) = (
                conn_match_rules(dom, bus, key),
                conn_bus_names(dom, bus, key),
            );
            p.match_rules_per_conn = p.match_rules_per_conn.max(r);
            p.bus_names_per_conn = p.bus_names_per_conn.max(n);
            rules += r;
            names += n;
        }
        p.match_rules = p.match_rules.max(rules);
        p.bus_names = p.bus_names.max(names);
        (rules, names)
    }

    fn next_serial(&mut self) -> u32 {
        let s = self.serial;
        self.serial = self.serial.wrapping_add(1);
        s
    }
}

/// An `a{sv}` under construction.
struct Asv<'w> {
    w: Writer<'w>,
    at: (usize, usize),
}

impl<'w> Asv<'w> {
    fn new(b: &'w mut Body) -> Self {
        b.sig.push_str("a{sv}");
        let mut w = b.w();
        let at = w.array_begin(8);
        Asv { w, at }
    }
    fn key(&mut self, k: &str) -> &mut Writer<'w> {
        self.w.align(8);
        self.w.string(k);
        &mut self.w
    }
    fn u32(&mut self, k: &str, v: u64) {
        self.key(k)
            .variant_u32(u32::try_from(v).unwrap_or(u32::MAX));
    }
    fn u64(&mut self, k: &str, v: u64) {
        let w = self.key(k);
        w.signature("t");
        w.u64(v);
    }
    fn str(&mut self, k: &str, v: &str) {
        self.key(k).variant_str(b's', v);
    }
    fn end(mut self) {
        self.w.array_end(self.at);
    }
}

/// `GetStats`: the bus's totals and peaks.
pub(crate) fn get_stats(b: &mut Bridge, dom: &mut Domain, bus: BusKey) -> Result<Body, DErr> {
    let (rules, names) = b.stats.refresh(dom, bus);
    let peaks = b.stats.peaks.get(&bus).copied().unwrap_or_default();
    let conns = dom.bus(bus).map_or(0, |x| x.conns.len() as u64);
    let mut body = Body::new();
    let mut d = Asv::new(&mut body);
    d.u32("Serial", u64::from(b.stats.next_serial()));
    d.u32("ActiveConnections", conns);
    d.u32("IncompleteConnections", b.stats.incomplete as u64);
    d.u32("MatchRules", rules);
    d.u32("PeakMatchRules", peaks.match_rules);
    d.u32("PeakMatchRulesPerConnection", peaks.match_rules_per_conn);
    d.u32("BusNames", names);
    d.u32("PeakBusNames", peaks.bus_names);
    d.u32("PeakBusNamesPerConnection", peaks.bus_names_per_conn);
    d.end();
    Ok(body)
}

/// `GetConnectionStats(name)`: one connection's numbers.
pub(crate) fn get_connection_stats(
    b: &mut Bridge,
    dom: &mut Domain,
    viewer: ConnKey,
    bus: BusKey,
    name: &str,
) -> Result<Body, DErr> {
    if name == DRIVER {
        return Err(err(
            ErrName::InvalidArgs,
            format!("GetConnectionStats is not meaningful for the message bus \"{DRIVER}\" itself"),
        ));
    }
    let none = || {
        err(
            ErrName::NameHasNoOwner,
            format!("Could not get statistics of name '{name}': no such name"),
        )
    };
    let key = crate::owners::conn_key_of(dom, viewer, name).ok_or_else(none)?;
    b.stats.refresh(dom, bus);
    let peaks = b.stats.peaks.get(&bus).copied().unwrap_or_default();
    let rules = conn_match_rules(dom, bus, key);
    let names = conn_bus_names(dom, bus, key);
    let (id, uid, refused) = dom
        .conn(key)
        .map(|c| (c.id, c.peer.creds.uid, c.refused))
        .ok_or_else(none)?;
    let mut body = Body::new();
    let mut d = Asv::new(&mut body);
    d.u32("Serial", u64::from(b.stats.next_serial()));
    d.u32("MatchRules", rules);
    d.u32("PeakMatchRules", peaks.match_rules_per_conn.max(rules));
    d.u32("BusNames", names);
    d.u32("PeakBusNames", peaks.bus_names_per_conn.max(names));
    d.str("UniqueName", &UniqueName::from_id(id).to_string());
    for k in ["IncomingMessages", "IncomingBytes", "IncomingFDs"] {
        d.u32(k, 0);
    }
    for k in ["PeakIncomingBytes", "PeakIncomingFDs"] {
        d.u32(k, 0);
    }
    // Ours: messages refused to their senders for want of room in this connection.
    d.u64("RefusedMessages", refused);
    let stream = dom
        .with_stream(key, |s, _| {
            peer_mut(s).map(|p| {
                let q = &p.quota;
                let (pb, pf) = q.peaks();
                let user = q
                    .user
                    .as_ref()
                    .map_or(0, |(me, books)| books.borrow().held(*me));
                let senders: Vec<_> = q.senders().collect();
                (
                    q.pending_bytes(),
                    q.pending_fds(),
                    pb,
                    pf,
                    q.limits,
                    user,
                    senders,
                )
            })
        })
        .flatten();
    match stream {
        Some((bytes, fds, peak_bytes, peak_fds, limits, user, senders)) => {
            d.u32("OutgoingBytes", bytes);
            d.u32("OutgoingFDs", u64::from(fds));
            d.u32("PeakOutgoingBytes", peak_bytes);
            d.u32("PeakOutgoingFDs", u64::from(peak_fds));
            // Ours: the stream's bounds, what each sending user holds in it, and
            // what the streams of its user hold in all.
            d.u64("QuotaBytes", limits.bytes);
            d.u32("QuotaFDs", u64::from(limits.fds));
            d.u64("UserOutgoingBytes", user);
            let w = d.key("OutgoingBySender");
            w.signature("a{u(tu)}");
            let a = w.array_begin(8);
            for (sender, bytes, fds) in senders {
                w.align(8);
                w.u32(sender);
                w.align(8);
                w.u64(bytes);
                w.u32(fds);
            }
            w.array_end(a);
        }
        None => {
            let Some(c) = dom.conn(key) else {
                return Err(none());
            };
            // Ours: a native connection's pool and queue, and its user's pools.
            d.u64("PoolSize", c.pool.size());
            d.u64("PoolUsedBytes", c.pool.used_bytes());
            d.u64("PoolTouchedBytes", c.pool.touched());
            d.u32("QueuedMessages", c.queue.len() as u64);
            d.u64("DroppedMessages", c.dropped_msgs);
            d.u64("UserPoolTouchedBytes", dom.user_pool_touched(uid));
        }
    }
    d.end();
    Ok(body)
}

/// `GetAllMatchRules`: every D-Bus peer's rules, in dbus-daemon's words.
pub(crate) fn get_all_match_rules(
    dom: &mut Domain,
    viewer: ConnKey,
    bus: BusKey,
) -> Result<Body, DErr> {
    // Through a custom endpoint: only the connections the caller may see.
    let conns: Vec<(u64, ConnKey)> = dom
        .bus(bus)
        .map(|b| b.conns.iter().map(|(id, k)| (*id, *k)).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, k)| dom.conn_sees_conn(viewer, *k))
        .collect();
    let mut body = Body::new();
    body.sig.push_str("a{sas}");
    let mut all = Vec::new();
    for (id, key) in conns {
        let rules = dom.with_stream(key, |s, _| {
            // Newest first, as dbus-daemon lists them.
            peer_mut(s).map(|p| {
                p.rules
                    .iter()
                    .rev()
                    .map(|(r, _)| r.to_string())
                    .collect::<Vec<_>>()
            })
        });
        if let Some(Some(rules)) = rules {
            all.push((UniqueName::from_id(id).to_string(), rules));
        }
    }
    let mut w = body.w();
    let a = w.array_begin(8);
    for (name, rules) in &all {
        w.align(8);
        w.string(name);
        let r = w.array_begin(4);
        for rule in rules {
            w.string(rule);
        }
        w.array_end(r);
    }
    w.array_end(a);
    Ok(body)
}
