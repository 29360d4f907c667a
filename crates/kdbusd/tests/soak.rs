//! Soak test (issue 12, point 6): one broker, all kinds of traffic at once for
//! `KDBUS_SOAK_SECS` seconds (default 20; CI sets 600), clients killed at random, and
//! a checker that fails the test on any lost, duplicated or reordered message.
//!
//! # The model
//!
//! * Six **stable clients** live in this process for the whole run: three native
//!   (`kdbus` crate) and three D-Bus (zbus on the broker's D-Bus socket). Each has a
//!   receiver thread and a sender thread.
//! * Three **victims** at a time run in child processes (this test binary re-executed
//!   as `soak_child`, told its role by environment variables), one native, one D-Bus,
//!   one either. Each is SIGKILLed 0.3 to 3 s after it is ready, and replaced. A
//!   victim answers calls after a short random pause, and senders keep addressing it
//!   for a moment after the kill, so that kills find calls in flight and messages
//!   go to ids that are gone.
//! * Every sender, at random: calls by unique id (native→native, D-Bus→native,
//!   native→D-Bus, D-Bus→D-Bus, all against stable clients and victims), sends
//!   one-way messages by id, broadcasts `Tick` or `Tock`, calls and messages a
//!   well-known name, and acquires (replacing, queueing or neither) or releases one
//!   of the two names. Subscribers take `Tick`, `Tock` or both, with kdbus bloom
//!   matches (native) or D-Bus match rules. Each name has a stable **fallback**
//!   owner that allows replacement and queues, so the name always has an owner and a
//!   message to it always has somewhere to go.
//! * Every message carries `(sender tag, counter)`. Every client logs what it sent,
//!   with the outcome and the time around the send, and what it received, in order,
//!   with the kdbus sequence number (native receivers). Stable clients log in
//!   memory; victims log to a file, one `write` per event, so a kill loses nothing
//!   already written.
//! * The rate is moderate (a pause of 0 to 80 ms between actions, `KDBUS_SOAK_GAP_MS`
//!   sets the mean): the broker's quotas are not the subject here, and a refusal
//!   that does happen is accounted for (the message is not expected).
//!
//! At the end the senders stop, everything in flight is drained (the logs stand
//! still), and the broker must be healthy: alive, a fresh native and a fresh D-Bus
//! connection can call, and its connection list holds exactly the living clients
//! (after every kill too: a killed victim's connection is gone within a second).
//!
//! # The checker
//!
//! `soak/checker.rs` is a pure function from the logs (and the kill times) to the
//! violations; its rules are described there, and its unit test feeds it
//! handcrafted runs with a duplicate, a reorder, a loss and so on, to show that each
//! is caught. In short: exactly once per (message, receiver that lived through the
//! run and should get it), per-sender order, increasing sequence numbers, one
//! sequence number per broadcast, the same relative order at any two receivers, one
//! reply or an explained error per call. Whatever is excused (sent to or by a killed
//! client, refused by a quota) is counted in the summary line, never skipped.
//!
//! The run's seed is printed; `KDBUS_SOAK_SEED` repeats its random choices (not its
//! timing).

#[path = "soak/actors.rs"]
mod actors;
#[path = "soak/checker.rs"]
mod checker;
mod common;
#[path = "soak/model.rs"]
mod model;

use actors::*;
use common::{wait_until, Broker};
use kdbus::abi::{item, list_flags};
use kdbus::{Connection, HelloOptions, MatchRule, ANY};
use model::*;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

const SECS_ENV: &str = "KDBUS_SOAK_SECS";
const SEED_ENV: &str = "KDBUS_SOAK_SEED";
const GAP_ENV: &str = "KDBUS_SOAK_GAP_MS";
/// Set for a child: `native` or `dbus`. The other `KDBUS_SOAK_CHILD_*` variables
/// carry the rest of its instructions.
const ROLE_ENV: &str = "KDBUS_SOAK_CHILD_ROLE";
const TAG_ENV: &str = "KDBUS_SOAK_CHILD_TAG";
const BUS_ENV: &str = "KDBUS_SOAK_CHILD_BUS";
const DBUS_ENV: &str = "KDBUS_SOAK_CHILD_DBUS";
const LOG_ENV: &str = "KDBUS_SOAK_CHILD_LOG";
const SUB_ENV: &str = "KDBUS_SOAK_CHILD_SUB";
const TARGETS_ENV: &str = "KDBUS_SOAK_CHILD_TARGETS";

/// Victims alive at any moment; the first is native, the second D-Bus, the third
/// either.
const SLOTS: usize = 3;
/// A victim lives this long (ms) after it is ready.
const LIFETIME_MS: (u64, u64) = (300, 3000);
/// A victim takes up to this long to answer a call, so that kills find calls in
/// flight.
const VICTIM_REPLY_DELAY_MS: u32 = 40;
/// Senders still address a killed victim this long after the kill: messages to a
/// unique id that is gone.
const DEAD_TARGET_MS: u64 = 300;
/// The stable clients: kind, subscription, fallback owner of which name.
const STABLE: [(Kind, Sub, Option<u8>); 6] = [
    (Kind::Native, Sub::Tick, None),
    (Kind::Native, Sub::Both, Some(0)),
    (Kind::Native, Sub::Tock, None),
    (Kind::DBus, Sub::Tick, None),
    (Kind::DBus, Sub::Both, Some(1)),
    (Kind::DBus, Sub::Tock, None),
];

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
}

fn env_str(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

enum Stable {
    Native(Arc<NativePeer>),
    DBus(Arc<DBusPeer>),
}

impl Stable {
    fn peer(&self) -> &dyn Peer {
        match self {
            Stable::Native(p) => &**p,
            Stable::DBus(p) => &**p,
        }
    }
    fn id(&self) -> u64 {
        match self {
            Stable::Native(p) => p.conn.id(),
            Stable::DBus(p) => p.id(),
        }
    }
}

/// A child process playing one client.
struct Victim {
    tag: Tag,
    child: Child,
    /// Closing it tells the child to stop sending.
    stdin: Option<ChildStdin>,
    log: PathBuf,
    spawned: Instant,
    /// Its unique id, once it said it is ready.
    id: u64,
    dies_at: Instant,
}

/// Should the conductor panic, its victims must not live on (they would stop
/// sending at the closed stdin, and leave only after two minutes).
impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the conductor knows about every client, by tag.
struct Entry {
    kind: Kind,
    takes: [bool; 2],
    id: u64,
    ready_at: u64,
    killed_at: Option<u64>,
    log: ClientLog,
}

/// Everything a victim needs to be started.
struct Spawner {
    exe: PathBuf,
    bus: PathBuf,
    dbus: String,
    logs: PathBuf,
    seed: u64,
    gap_ms: u64,
    targets: String,
}

impl Spawner {
    fn spawn(&self, tag: Tag, kind: Kind, sub: Sub) -> Victim {
        let log = self.logs.join(format!("victim-{tag}.log"));
        let role = match kind {
            Kind::Native => "native",
            Kind::DBus => "dbus",
        };
        let mut child = Command::new(&self.exe)
            .args(["soak_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, role)
            .env(TAG_ENV, tag.to_string())
            .env(SEED_ENV, self.seed.to_string())
            .env(GAP_ENV, self.gap_ms.to_string())
            .env(BUS_ENV, &self.bus)
            .env(DBUS_ENV, &self.dbus)
            .env(LOG_ENV, &log)
            .env(SUB_ENV, sub.index().to_string())
            .env(TARGETS_ENV, &self.targets)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a victim (this test binary)");
        let stdin = child.stdin.take();
        Victim {
            tag,
            child,
            stdin,
            log,
            spawned: Instant::now(),
            id: 0,
            dies_at: Instant::now(),
        }
    }
}

fn read_log(path: &Path) -> ClientLog {
    match std::fs::read_to_string(path) {
        Ok(text) => ClientLog::parse(&text),
        // Killed before it opened its log.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ClientLog::default(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

fn listed(watcher: &Connection) -> BTreeSet<u64> {
    watcher
        .list(list_flags::UNIQUE)
        .expect("LIST the bus's connections")
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// Counts of the name notifications the watcher saw.
#[derive(Default)]
struct NameEvents {
    add: AtomicU64,
    change: AtomicU64,
    remove: AtomicU64,
}

#[test]
fn soak() {
    let secs = env_u64(SECS_ENV).unwrap_or(20);
    let gap_ms = env_u64(GAP_ENV).unwrap_or(40);
    let seed = env_u64(SEED_ENV).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("soak: {secs} s, seed {seed:#x} (set {SEED_ENV} to repeat), gap {gap_ms} ms");
    let t_begin = Instant::now();
    let mut b = Broker::start();
    let logs = tempfile::tempdir().expect("a directory for the victims' logs");

    // The watcher counts hand-overs of the names and answers LIST.
    let watcher = Arc::new(
        Connection::hello(&b.bus, &HelloOptions::new().description("soak-watcher"))
            .expect("watcher hello"),
    );
    for (i, name) in NAMES.iter().enumerate() {
        let c = i as u64 * 3;
        let rules = [
            MatchRule::new().name_add(ANY, Some(name)),
            MatchRule::new().name_change(ANY, ANY, Some(name)),
            MatchRule::new().name_remove(ANY, Some(name)),
        ];
        for (j, r) in rules.iter().enumerate() {
            watcher
                .add_match(c + j as u64 + 1, r, false)
                .expect("watcher match");
        }
    }
    let stop_recv = Arc::new(AtomicBool::new(false));
    let name_events = Arc::new(NameEvents::default());
    let watcher_thread = {
        let (w, stop, ev) = (watcher.clone(), stop_recv.clone(), name_events.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let m = match w.recv_timeout(Some(Duration::from_millis(100))) {
                    Ok(m) => m,
                    Err(e) if e.errno() == kdbus::Errno::EAGAIN => continue,
                    // The broker is gone: the end of the run will say so.
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let n = match m.kernel_item() {
                    Some(item::NAME_ADD) => &ev.add,
                    Some(item::NAME_CHANGE) => &ev.change,
                    Some(item::NAME_REMOVE) => &ev.remove,
                    _ => continue,
                };
                n.fetch_add(1, Ordering::Relaxed);
            }
            w.dropped_msgs()
        })
    };
    let bloom = watcher.bloom();

    // The stable clients, ready before anyone sends.
    let mut table: Vec<Entry> = Vec::new();
    let mut stable: Vec<(Stable, Arc<MemSink>)> = Vec::new();
    let mut receivers = Vec::new();
    for (tag, &(kind, sub, _)) in STABLE.iter().enumerate() {
        let tag = tag as Tag;
        let sink = Arc::new(MemSink::default());
        let s = match kind {
            Kind::Native => {
                let p = NativePeer::connect(&b.bus, tag, sub, sink.clone())
                    .expect("a stable native client");
                receivers.push(p.receive(stop_recv.clone()));
                Stable::Native(p)
            }
            Kind::DBus => Stable::DBus(
                DBusPeer::connect(&b.dbus_address(), tag, sub, sink.clone())
                    .expect("a stable D-Bus client"),
            ),
        };
        let ready_at = now();
        sink.ev(Ev::Ready {
            id: s.id(),
            t: ready_at,
        });
        table.push(Entry {
            kind,
            takes: sub.takes(kind, bloom),
            id: s.id(),
            ready_at,
            killed_at: None,
            log: ClientLog::default(),
        });
        stable.push((s, sink));
    }
    // The fallback owners: allow replacement and queue, so they never let go.
    for (tag, &(_, _, fallback)) in STABLE.iter().enumerate() {
        let Some(k) = fallback else { continue };
        let (s, sink) = &stable[tag];
        let t0 = now();
        let f = NameFlags {
            replace: false,
            allow: true,
            queue: true,
        };
        let result = s.peer().name(k, true, f);
        assert_eq!(
            result,
            NameResult::Owner,
            "fallback #{tag} acquires {}",
            NAMES[k as usize]
        );
        sink.ev(Ev::Name(NameOp {
            k,
            acquire: true,
            t0,
            t1: now(),
            result,
        }));
    }
    let targets: Targets = Arc::new(RwLock::new(
        stable
            .iter()
            .enumerate()
            .map(|(tag, (s, _))| Target {
                tag: tag as Tag,
                kind: STABLE[tag].0,
                id: s.id(),
            })
            .collect(),
    ));
    let spawner = Spawner {
        exe: std::env::current_exe().expect("the test binary's path"),
        bus: b.bus.clone(),
        dbus: b.dbus_address(),
        logs: logs.path().to_owned(),
        seed,
        gap_ms,
        targets: targets
            .read()
            .expect("targets lock")
            .iter()
            .map(|t| format!("{}:{}:{}", t.tag, (t.kind == Kind::DBus) as u8, t.id))
            .collect::<Vec<_>>()
            .join(","),
    };

    let stop_send = Arc::new(AtomicBool::new(false));
    let stable = Arc::new(stable);
    let senders: Vec<_> = (0..stable.len())
        .map(|tag| {
            let (stable, targets, stop) = (stable.clone(), targets.clone(), stop_send.clone());
            std::thread::spawn(move || {
                let fallback = STABLE[tag].2;
                let plan = Plan {
                    tag: tag as Tag,
                    seed,
                    gap_ms,
                    juggles: [fallback != Some(0), fallback != Some(1)],
                    targets,
                    stop,
                };
                send_loop(stable[tag].0.peer(), &plan);
            })
        })
        .collect();

    // ---------------------------------------------------------------- the run
    let mut problems: Vec<String> = Vec::new();
    let mut rng = rng_for(seed, u32::MAX);
    let mut slots: Vec<Option<Victim>> = (0..SLOTS).map(|_| None).collect();
    let (mut spawned, mut kills, mut reap_max) = (0u64, 0u64, Duration::ZERO);
    // Killed victims still addressed, until when.
    let mut forget: Vec<(Instant, Tag)> = Vec::new();
    let t_run = Instant::now();
    let end = t_run + Duration::from_secs(secs);
    while Instant::now() < end {
        for (s, slot) in slots.iter_mut().enumerate() {
            let Some(v) = slot else {
                let tag = table.len() as Tag;
                let kind = match s {
                    0 => Kind::Native,
                    1 => Kind::DBus,
                    _ if below(&mut rng, 2) == 0 => Kind::Native,
                    _ => Kind::DBus,
                };
                let sub = Sub::ALL[below(&mut rng, 3) as usize];
                table.push(Entry {
                    kind,
                    takes: sub.takes(kind, bloom),
                    id: 0,
                    ready_at: 0,
                    killed_at: None,
                    log: ClientLog::default(),
                });
                *slot = Some(spawner.spawn(tag, kind, sub));
                spawned += 1;
                continue;
            };
            let e = &mut table[v.tag as usize];
            if let Ok(Some(status)) = v.child.try_wait() {
                // It died by itself: a panic in the child (its stderr says why).
                problems.push(format!("victim #{} exited by itself: {status}", v.tag));
                e.killed_at = Some(now());
                e.log = read_log(&v.log);
                targets
                    .write()
                    .expect("targets lock")
                    .retain(|t| t.tag != v.tag);
                *slot = None;
                continue;
            }
            if v.id == 0 {
                if let Some((id, t)) = read_log(&v.log).ready {
                    v.id = id;
                    e.id = id;
                    e.ready_at = t;
                    let life = LIFETIME_MS.0 + below(&mut rng, LIFETIME_MS.1 - LIFETIME_MS.0);
                    v.dies_at = Instant::now() + Duration::from_millis(life);
                    targets.write().expect("targets lock").push(Target {
                        tag: v.tag,
                        kind: e.kind,
                        id,
                    });
                } else {
                    assert!(
                        v.spawned.elapsed() < Duration::from_secs(30),
                        "victim #{} not ready after 30 s",
                        v.tag
                    );
                }
                continue;
            }
            if Instant::now() < v.dies_at {
                continue;
            }
            // Senders go on addressing it for a while: calls in flight and messages
            // to a dead id are part of the test (the kill time excuses them).
            let t_kill = now();
            let at = Instant::now();
            v.child.kill().expect("SIGKILL a victim");
            v.child.wait().expect("reap a victim");
            e.killed_at = Some(t_kill);
            kills += 1;
            let gone = wait_until(Duration::from_secs(1), || !listed(&watcher).contains(&v.id));
            if gone {
                reap_max = reap_max.max(at.elapsed());
            } else {
                problems.push(format!(
                    "the connection of killed victim #{} (id {}) is still listed 1 s after \
                     SIGKILL",
                    v.tag, v.id
                ));
            }
            forget.push((
                Instant::now() + Duration::from_millis(DEAD_TARGET_MS),
                v.tag,
            ));
            e.log = read_log(&v.log);
            *slot = None;
        }
        forget.retain(|&(when, tag)| {
            if Instant::now() < when {
                return true;
            }
            targets
                .write()
                .expect("targets lock")
                .retain(|t| t.tag != tag);
            false
        });
        assert!(b.alive(), "the broker died during the run");
        std::thread::sleep(Duration::from_millis(20));
    }

    // ---------------------------------------------------------------- the end
    stop_send.store(true, Ordering::SeqCst);
    for v in slots.iter_mut().flatten() {
        v.stdin.take();
    }
    for s in senders {
        s.join().expect("a stable sender thread");
    }
    // A victim not ready yet never took part: it goes as a kill.
    for slot in slots.iter_mut() {
        if let Some(v) = slot.as_mut().filter(|v| v.id == 0) {
            table[v.tag as usize].killed_at = Some(now());
            let _ = v.child.kill();
            let _ = v.child.wait();
            table[v.tag as usize].log = read_log(&v.log);
            *slot = None;
        }
    }
    let living: Vec<&mut Victim> = slots.iter_mut().flatten().collect();
    let all_stopped = wait_until(Duration::from_secs(60), || {
        living.iter().all(|v| read_log(&v.log).stopped)
    });
    assert!(all_stopped, "victims did not stop sending within 60 s");
    // Drain: everything in flight arrives (or is refused) while the logs still grow.
    let progress = || -> u64 {
        let mem: usize = stable.iter().map(|(_, s)| s.len()).sum();
        let files: u64 = living
            .iter()
            .map(|v| std::fs::metadata(&v.log).map_or(0, |m| m.len()))
            .sum();
        mem as u64 + files
    };
    let t_drain = Instant::now();
    let mut last = (progress(), Instant::now());
    while last.1.elapsed() < Duration::from_millis(1500)
        && t_drain.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(100));
        let p = progress();
        if p != last.0 {
            last = (p, Instant::now());
        }
    }
    let drain = t_drain.elapsed();
    for (tag, (_, sink)) in stable.iter().enumerate() {
        table[tag].log = sink.take();
    }
    let ended = living.len();
    let mut ended_ids = Vec::new();
    for v in living {
        table[v.tag as usize].log = read_log(&v.log);
        let _ = v.child.kill();
        v.child.wait().expect("reap a victim");
        ended_ids.push(v.id);
    }

    // Health: the connection list holds exactly the living clients (after a second),
    // the broker lives, fresh connections of both kinds can call.
    let mut expect: BTreeSet<u64> = stable.iter().map(|(s, _)| s.id()).collect();
    expect.insert(watcher.id());
    let mut seen = BTreeSet::new();
    let exact = wait_until(Duration::from_secs(1), || {
        seen = listed(&watcher);
        seen == expect
    });
    if !exact {
        problems.push(format!(
            "1 s after the end the bus lists {:?} beyond the living clients and misses {:?} \
             (victims stopped at the end: {ended_ids:?})",
            seen.difference(&expect).collect::<Vec<_>>(),
            expect.difference(&seen).collect::<Vec<_>>()
        ));
    }
    assert!(b.alive(), "the broker died");
    let throwaway: Arc<dyn Sink> = Arc::new(MemSink::default());
    let fresh_native = NativePeer::connect(&b.bus, u32::MAX, Sub::Tick, throwaway.clone())
        .expect("a fresh native connection after the run");
    let fresh_dbus = DBusPeer::connect(&b.dbus_address(), u32::MAX, Sub::Tick, throwaway)
        .expect("a fresh D-Bus connection after the run");
    for (fresh, name) in [
        (&*fresh_native as &dyn Peer, "native"),
        (&*fresh_dbus as &dyn Peer, "D-Bus"),
    ] {
        for callee in [0, 3] {
            let out = fresh.send(
                1,
                What::Call(Dst::Id(callee)),
                stable[callee as usize].0.id(),
            );
            if out != (Outcome::Reply { callee, echo: 1 }) {
                problems.push(format!(
                    "a fresh {name} connection called #{callee} after the run: {out:?}"
                ));
            }
        }
    }

    stop_recv.store(true, Ordering::SeqCst);
    for r in receivers {
        r.join().expect("a native receiver thread");
    }
    let watcher_dropped = watcher_thread.join().expect("the watcher thread");
    let ev = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (adds, changes, removes) = (
        ev(&name_events.add),
        ev(&name_events.change),
        ev(&name_events.remove),
    );
    if adds != NAMES.len() as u64 || removes != 0 || watcher_dropped != 0 {
        problems.push(format!(
            "the names should have had owners all along: {adds} NAME_ADD (want {}), {removes} \
             NAME_REMOVE (want 0), watcher dropped {watcher_dropped}",
            NAMES.len()
        ));
    }

    // ---------------------------------------------------------------- the check
    let run = checker::Run {
        clients: table
            .into_iter()
            .enumerate()
            .map(|(tag, e)| checker::Client {
                tag: tag as Tag,
                kind: e.kind,
                id: e.id,
                ready_at: e.ready_at,
                killed_at: e.killed_at,
                takes: e.takes,
                log: e.log,
            })
            .collect(),
    };
    let t_check = Instant::now();
    let report = checker::check(&run);
    let c = &report.counts;
    eprintln!(
        "soak summary: {secs} s run ({:.1} s in all, drain {:.1} s, check {:.1} s), seed \
         {seed:#x} | sent calls/one-way/broadcasts: native {}/{}/{}, D-Bus {}/{}/{} | \
         received by id {}, by name {}, broadcasts {} ({} required deliveries checked) | \
         replies {} (native→native {}, D-Bus→native {}, native→D-Bus {}, D-Bus→D-Bus {}) | \
         victims {spawned} spawned, {kills} killed (connection gone within {} ms), \
         {ended} stopped at the end | name hand-overs {changes} (acquired {}, queued {}, \
         released {}, refused {}) | excused: quota refusals {}, to a killed peer {}, callee \
         killed {}, to killed receivers {} arrived + {} lost, lost with a killed name owner \
         {}, unlogged at kill {}, dropped broadcasts {}, replies to killed callers {}, \
         receipts at killed receivers {} | receiver pairs compared {} | violations {}",
        t_begin.elapsed().as_secs_f64(),
        drain.as_secs_f64(),
        t_check.elapsed().as_secs_f64(),
        c.sent[0][0],
        c.sent[0][1],
        c.sent[0][2],
        c.sent[1][0],
        c.sent[1][1],
        c.sent[1][2],
        c.got[0],
        c.got[1],
        c.got[2],
        c.broadcasts_checked,
        c.replies,
        c.replies_by_kind[0][0],
        c.replies_by_kind[1][0],
        c.replies_by_kind[0][1],
        c.replies_by_kind[1][1],
        reap_max.as_millis(),
        c.name_owner,
        c.name_queued,
        c.name_released,
        c.name_refused,
        c.refused,
        c.to_gone,
        c.callee_died,
        c.to_killed_arrived,
        c.to_killed_lost,
        c.lost_with_killed_owner,
        c.unlogged_at_kill,
        c.dropped_allowed,
        c.answers_to_killed,
        c.at_killed_receivers,
        c.pairs_compared,
        report.n_violations + problems.len(),
    );
    assert!(
        problems.is_empty() && report.n_violations == 0,
        "soak (seed {seed:#x}): {} checker violations{}:\n  {}\nother problems:\n  {}",
        report.n_violations,
        if report.n_violations > report.violations.len() {
            format!(" (the first {})", report.violations.len())
        } else {
            String::new()
        },
        report.violations.join("\n  "),
        if problems.is_empty() {
            "none".to_string()
        } else {
            problems.join("\n  ")
        }
    );
    // Enough happened for the check to mean something.
    let every_direction = c.replies_by_kind.iter().flatten().all(|&n| n > 0);
    assert!(
        every_direction && c.got[1] > 0 && c.broadcasts_checked > 0 && kills > 0 && changes > 0,
        "the run exercised too little: {c:?}, {kills} kills, {changes} hand-overs"
    );
    drop(fresh_native);
    drop(fresh_dbus);
    assert!(b.alive(), "the broker died");
}

/// A victim: runs only when the soak test starts this binary with its role set (in
/// an ordinary test run it passes at once).
#[test]
fn soak_child() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let tag: Tag = env_str(TAG_ENV).parse().expect("tag");
    let seed = env_u64(SEED_ENV).expect("seed");
    let gap_ms = env_u64(GAP_ENV).expect("gap");
    let sub = Sub::ALL[env_str(SUB_ENV).parse::<usize>().expect("subscription") % 3];
    let log: Arc<dyn Sink> = Arc::new(FileSink::create(Path::new(&env_str(LOG_ENV))));
    let targets: Vec<Target> = env_str(TARGETS_ENV)
        .split(',')
        .map(|t| {
            let f: Vec<u64> = t
                .split(':')
                .map(|x| x.parse().expect("a target field"))
                .collect();
            Target {
                tag: f[0] as Tag,
                kind: if f[1] == 1 { Kind::DBus } else { Kind::Native },
                id: f[2],
            }
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    {
        // The conductor closes our stdin when the run ends: stop sending, keep
        // receiving until it kills us. Should it die instead, leave after a while.
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            stop.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_secs(120));
            std::process::exit(0);
        });
    }
    let plan = Plan {
        tag,
        seed,
        gap_ms,
        juggles: [true, true],
        targets: Arc::new(RwLock::new(targets)),
        stop,
    };
    let never = Arc::new(AtomicBool::new(false));
    match role.as_str() {
        "native" => {
            let p = NativePeer::connect(Path::new(&env_str(BUS_ENV)), tag, sub, log.clone())
                .expect("victim hello");
            p.set_reply_delay(VICTIM_REPLY_DELAY_MS);
            let _receiver = p.receive(never);
            log.ev(Ev::Ready {
                id: p.conn.id(),
                t: now(),
            });
            send_loop(&*p, &plan);
        }
        "dbus" => {
            let p = DBusPeer::connect(&env_str(DBUS_ENV), tag, sub, log.clone())
                .expect("victim D-Bus connection");
            p.set_reply_delay(VICTIM_REPLY_DELAY_MS);
            log.ev(Ev::Ready {
                id: p.id(),
                t: now(),
            });
            send_loop(&*p, &plan);
        }
        other => panic!("unknown role {other}"),
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}
