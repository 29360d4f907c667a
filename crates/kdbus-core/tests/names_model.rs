//! The name registry (`kdbus_core::names::NameRegistry`) against a reference model of
//! kdbus HEAD's `names.c` (kdbus_name_acquire, kdbus_name_release,
//! kdbus_name_release_unlocked, kdbus_name_release_all), spec A.9 NAM3-NAM14 and
//! ACT1/ACT6-ACT8.
//!
//! The model is written from HEAD's code, with the two differences this project chose
//! on purpose (names.rs module comment):
//! - QUEUE while already queued updates that waiter's flags and returns IN_QUEUE (HEAD
//!   would queue the connection a second time);
//! - a connection that becomes owner (replacement, queue hand-over, activator
//!   take-over) leaves the queue of that name (HEAD would leave it queued).
//!
//! After every step the test compares: the errno and return flags of the call, the
//! emitted events (Add/Remove/Change/Move with all their fields), and for every name
//! its owner, owner flags, name_id, activator and queue (order and flags), and for
//! every connection what it owns, waits for and is the activator of.

use kdbus_abi::{limits, name_flags::*, Errno};
use kdbus_core::names::{NameEvent, NameRegistry, ACQUIRE_FLAGS};
use kdbus_core::ConnKey;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

const NAMES: [&str; 3] = ["org.a", "org.b", "org.c"];
/// Ordinary connections.
const ORDINARY: [ConnKey; 4] = [1, 2, 3, 4];
/// Connections that HELLO'd as activators (they only register and disconnect).
const ACTIVATORS: [ConnKey; 2] = [11, 12];

// ------------------------------------------------------------------ the model

#[derive(Clone, Debug)]
struct MEntry {
    name_id: u64,
    owner: ConnKey,
    flags: u64,
    activator: Option<ConnKey>,
    queue: Vec<(ConnKey, u64)>,
}

/// kdbus HEAD's registry: entries by name, plus per connection `names_list` (owned
/// names in the order the connection became their owner) and `activator_of`.
#[derive(Default, Debug)]
struct Model {
    names: BTreeMap<&'static str, MEntry>,
    /// `conn->names_list`: list_add_tail in kdbus_name_entry_set_owner.
    owned: HashMap<ConnKey, Vec<&'static str>>,
    activator_of: HashMap<ConnKey, &'static str>,
    /// `reg->name_seq_last`.
    name_seq_last: u64,
}

fn ev_name(n: &str) -> Arc<str> {
    Arc::from(n)
}

impl Model {
    fn owned_count(&self, conn: ConnKey) -> usize {
        self.owned.get(&conn).map_or(0, |v| v.len())
    }

    /// kdbus_name_entry_set_owner
    fn set_owner(&mut self, name: &'static str, conn: ConnKey, flags: u64) {
        let e = self.names.get_mut(name).unwrap();
        e.owner = conn;
        e.flags = flags;
        // Deliberate difference: the new owner leaves the queue of that name.
        e.queue.retain(|(c, _)| *c != conn);
        self.owned.entry(conn).or_default().push(name);
    }

    /// kdbus_name_entry_remove_owner
    fn remove_owner(&mut self, name: &'static str) {
        let owner = self.names[name].owner;
        if let Some(v) = self.owned.get_mut(&owner) {
            v.retain(|n| *n != name);
        }
    }

    /// kdbus_name_entry_replace_owner: NAME_CHANGE, then the owner changes.
    fn replace_owner(
        &mut self,
        name: &'static str,
        conn: ConnKey,
        flags: u64,
        ev: &mut Vec<NameEvent>,
    ) {
        let e = &self.names[name];
        assert_ne!(e.owner, conn, "HEAD WARN_ON(conn == e->conn)");
        ev.push(NameEvent::Change {
            name: ev_name(name),
            old: e.owner,
            old_flags: e.flags,
            new: conn,
            new_flags: flags,
        });
        self.remove_owner(name);
        self.set_owner(name, conn, flags);
    }

    /// kdbus_name_acquire (+ the flag check of kdbus_cmd_name_acquire for ordinary
    /// connections and the E2BIG check around it). HELLO of an activator calls it with
    /// KDBUS_NAME_ACTIVATOR.
    fn acquire(
        &mut self,
        conn: ConnKey,
        is_activator: bool,
        name: &'static str,
        flags: u64,
        ev: &mut Vec<NameEvent>,
    ) -> Result<u64, Errno> {
        let flags = if is_activator {
            ACTIVATOR
        } else {
            if flags & !ACQUIRE_FLAGS != 0 {
                return Err(Errno::EINVAL);
            }
            flags
        };
        if self.owned_count(conn) + 1 > limits::CONN_MAX_NAMES {
            return Err(Errno::E2BIG);
        }
        let Some(e) = self.names.get(name) else {
            // claim new name
            if self.activator_of.contains_key(&conn) {
                return Err(Errno::EINVAL);
            }
            self.name_seq_last += 1;
            self.names.insert(
                name,
                MEntry {
                    name_id: self.name_seq_last,
                    owner: 0,
                    flags: 0,
                    activator: None,
                    queue: Vec::new(),
                },
            );
            if is_activator {
                self.names.get_mut(name).unwrap().activator = Some(conn);
                self.activator_of.insert(conn, name);
            }
            self.set_owner(name, conn, flags);
            ev.push(NameEvent::Add {
                name: ev_name(name),
                owner: conn,
                flags,
            });
            return Ok(0);
        };
        if e.owner == conn || self.activator_of.get(&conn) == Some(&name) {
            return Err(Errno::EALREADY);
        }
        if is_activator {
            // activator claims existing name
            if self.activator_of.contains_key(&conn) {
                return Err(Errno::EINVAL);
            }
            if e.activator.is_some() {
                return Err(Errno::EEXIST);
            }
            self.names.get_mut(name).unwrap().activator = Some(conn);
            self.activator_of.insert(conn, name);
            return Ok(0);
        }
        if e.flags & ACTIVATOR != 0 {
            // claim name of an activator: kdbus_conn_move_messages(conn, e->activator, 0)
            let from = e
                .activator
                .expect("ACTIVATOR-flagged entry without activator");
            ev.push(NameEvent::Move {
                from,
                to: conn,
                name_id: None,
            });
            self.replace_owner(name, conn, flags, ev);
            return Ok(0);
        }
        if flags & REPLACE_EXISTING != 0 && e.flags & ALLOW_REPLACEMENT != 0 {
            // claim name of a previous owner; it goes to the queue if it asked for it
            if e.flags & QUEUE != 0 {
                let (o, f) = (e.owner, e.flags);
                self.names.get_mut(name).unwrap().queue.push((o, f));
            }
            self.replace_owner(name, conn, flags, ev);
            return Ok(0);
        }
        if flags & QUEUE != 0 {
            let e = self.names.get_mut(name).unwrap();
            // Deliberate difference: a second QUEUE updates the waiter's flags.
            match e.queue.iter_mut().find(|(c, _)| *c == conn) {
                Some(w) => w.1 = flags,
                None => e.queue.push((conn, flags)),
            }
            return Ok(IN_QUEUE);
        }
        Err(Errno::EEXIST)
    }

    /// kdbus_name_release_unlocked
    fn release_unlocked(&mut self, name: &'static str, ev: &mut Vec<NameEvent>) {
        let e = self.names[name].clone();
        if let Some(&(next, flags)) = e.queue.first() {
            // give it to first active waiter in the queue
            self.names.get_mut(name).unwrap().queue.remove(0);
            self.replace_owner(name, next, flags, ev);
        } else if e.activator.is_some_and(|a| a != e.owner) {
            // hand it back to the activator, with the messages sent to this name
            let a = e.activator.unwrap();
            ev.push(NameEvent::Move {
                from: e.owner,
                to: a,
                name_id: Some(e.name_id),
            });
            self.replace_owner(name, a, ACTIVATOR, ev);
        } else {
            ev.push(NameEvent::Remove {
                name: ev_name(name),
                owner: e.owner,
                flags: e.flags,
            });
            self.remove_owner(name);
            self.names.remove(name);
        }
    }

    /// kdbus_name_release
    fn release(
        &mut self,
        conn: ConnKey,
        name: &'static str,
        ev: &mut Vec<NameEvent>,
    ) -> Result<(), Errno> {
        let Some(e) = self.names.get_mut(name) else {
            return Err(Errno::ESRCH);
        };
        if e.owner == conn {
            self.release_unlocked(name, ev);
            return Ok(());
        }
        match e.queue.iter().position(|(c, _)| *c == conn) {
            Some(i) => {
                e.queue.remove(i);
                Ok(())
            }
            None => Err(Errno::EADDRINUSE),
        }
    }

    /// kdbus_name_release_all: stop being an activator, leave every queue, then release
    /// the owned names in `names_list` order.
    fn release_all(&mut self, conn: ConnKey, ev: &mut Vec<NameEvent>) {
        if let Some(n) = self.activator_of.remove(&conn) {
            self.names.get_mut(n).unwrap().activator = None;
        }
        for e in self.names.values_mut() {
            e.queue.retain(|(c, _)| *c != conn);
        }
        while let Some(&n) = self.owned.get(&conn).and_then(|v| v.first()) {
            self.release_unlocked(n, ev);
        }
        self.owned.remove(&conn);
    }
}

// ------------------------------------------------------------------ operations

#[derive(Clone, Debug)]
enum Op {
    Acquire {
        conn: ConnKey,
        name: usize,
        flags: u64,
    },
    Release {
        conn: ConnKey,
        name: usize,
    },
    /// Disconnect (close or BYEBYE); the key then stands for a fresh connection.
    ReleaseAll {
        conn: ConnKey,
    },
    /// An activator connection registering for a name (HELLO does this once; doing it
    /// again exercises kdbus_name_acquire's activator branches).
    Activate {
        conn: ConnKey,
        name: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let ordinary = prop::sample::select(ORDINARY.to_vec());
    let activator = prop::sample::select(ACTIVATORS.to_vec());
    let any_conn = prop::sample::select([&ORDINARY[..], &ACTIVATORS[..]].concat());
    let name = 0..NAMES.len();
    // Mostly valid flag combinations; now and then an unknown bit or IN_QUEUE.
    let flags = prop_oneof![
        12 => 0u64..8,
        1 => (0u64..8).prop_map(|f| f | IN_QUEUE),
        1 => (0u64..8).prop_map(|f| f | (1 << 5)),
    ];
    prop_oneof![
        8 => (ordinary.clone(), name.clone(), flags)
            .prop_map(|(conn, name, flags)| Op::Acquire { conn, name, flags }),
        4 => (ordinary, name.clone()).prop_map(|(conn, name)| Op::Release { conn, name }),
        2 => any_conn.prop_map(|conn| Op::ReleaseAll { conn }),
        2 => (activator, name).prop_map(|(conn, name)| Op::Activate { conn, name }),
    ]
}

// ------------------------------------------------------------------ comparison

/// Group events by name (Move events belong to the name whose Change follows them),
/// keeping the order inside a name. kdbus_name_release_all releases names one after
/// the other; which name goes first only orders the notifications of different names.
fn by_name(events: &[NameEvent]) -> BTreeMap<Arc<str>, Vec<NameEvent>> {
    let mut out: BTreeMap<Arc<str>, Vec<NameEvent>> = BTreeMap::new();
    let mut pending = Vec::new();
    for e in events {
        match e {
            NameEvent::Move { .. } => pending.push(e.clone()),
            NameEvent::Add { name, .. }
            | NameEvent::Remove { name, .. }
            | NameEvent::Change { name, .. } => {
                let v = out.entry(name.clone()).or_default();
                v.append(&mut pending);
                v.push(e.clone());
            }
        }
    }
    assert!(
        pending.is_empty(),
        "a Move without the change it belongs to: {events:?}"
    );
    out
}

fn compare_state(m: &Model, r: &NameRegistry, step: usize, op: &Op) -> Result<(), TestCaseError> {
    let reg_names: BTreeSet<&str> = r.entries().map(|e| &*e.name).collect();
    let model_names: BTreeSet<&str> = m.names.keys().copied().collect();
    prop_assert_eq!(&reg_names, &model_names, "step {} {:?}: names", step, op);
    prop_assert_eq!(r.len(), m.names.len());
    for (name, me) in &m.names {
        let re = r.lookup(name).unwrap();
        prop_assert_eq!(&*re.name, *name);
        prop_assert_eq!(
            re.owner,
            me.owner,
            "step {} {:?}: owner of {}",
            step,
            op,
            name
        );
        prop_assert_eq!(
            re.flags,
            me.flags,
            "step {} {:?}: flags of {}",
            step,
            op,
            name
        );
        prop_assert_eq!(
            re.name_id,
            me.name_id,
            "step {} {:?}: name_id of {}",
            step,
            op,
            name
        );
        prop_assert_eq!(
            re.activator,
            me.activator,
            "step {} {:?}: activator of {}",
            step,
            op,
            name
        );
        let rq: Vec<(ConnKey, u64)> = re.queue.iter().copied().collect();
        prop_assert_eq!(&rq, &me.queue, "step {} {:?}: queue of {}", step, op, name);
        // Invariants: nobody waits twice, the owner does not wait.
        let waiters: BTreeSet<ConnKey> = rq.iter().map(|q| q.0).collect();
        prop_assert_eq!(waiters.len(), rq.len());
        prop_assert!(!waiters.contains(&re.owner));
    }
    for &c in ORDINARY.iter().chain(ACTIVATORS.iter()) {
        let owned: BTreeSet<&str> = r.owned_by(c).map(|n| &**n).collect();
        let m_owned: BTreeSet<&str> = m
            .owned
            .get(&c)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default();
        prop_assert_eq!(&owned, &m_owned, "step {} {:?}: owned_by({})", step, op, c);
        let queued: BTreeSet<&str> = r.queued_by(c).map(|n| &**n).collect();
        let m_queued: BTreeSet<&str> = m
            .names
            .iter()
            .filter(|(_, e)| e.queue.iter().any(|q| q.0 == c))
            .map(|(n, _)| *n)
            .collect();
        prop_assert_eq!(
            &queued,
            &m_queued,
            "step {} {:?}: queued_by({})",
            step,
            op,
            c
        );
        prop_assert_eq!(
            r.activator_of(c).map(|n| &**n),
            m.activator_of.get(&c).copied(),
            "step {} {:?}: activator_of({})",
            step,
            op,
            c
        );
    }
    Ok(())
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut m = Model::default();
    let mut r = NameRegistry::new();
    for (step, op) in ops.iter().enumerate() {
        let (mut mev, mut rev) = (Vec::new(), Vec::new());
        let mut strict_order = true;
        match *op {
            Op::Acquire { conn, name, flags } => {
                let n = NAMES[name];
                let want = m.acquire(conn, false, n, flags, &mut mev);
                let got = r.acquire(conn, false, n, flags, &mut rev);
                prop_assert_eq!(got, want, "step {} {:?}: errno / return flags", step, op);
            }
            Op::Activate { conn, name } => {
                let n = NAMES[name];
                let want = m.acquire(conn, true, n, 0, &mut mev);
                let got = r.acquire(conn, true, n, 0, &mut rev);
                prop_assert_eq!(got, want, "step {} {:?}: errno", step, op);
            }
            Op::Release { conn, name } => {
                let n = NAMES[name];
                let want = m.release(conn, n, &mut mev);
                let got = r.release(conn, n, &mut rev);
                prop_assert_eq!(got, want, "step {} {:?}: errno", step, op);
            }
            Op::ReleaseAll { conn } => {
                m.release_all(conn, &mut mev);
                r.release_all(conn, &mut rev);
                strict_order = false;
            }
        }
        if strict_order {
            prop_assert_eq!(&rev, &mev, "step {} {:?}: events", step, op);
        } else {
            prop_assert_eq!(
                by_name(&rev),
                by_name(&mev),
                "step {} {:?}: events (per name)",
                step,
                op
            );
        }
        compare_state(&m, &r, step, op)?;
    }
    // Everybody leaves: nothing may remain.
    for &c in ORDINARY.iter().chain(ACTIVATORS.iter()) {
        let (mut mev, mut rev) = (Vec::new(), Vec::new());
        m.release_all(c, &mut mev);
        r.release_all(c, &mut rev);
        prop_assert_eq!(by_name(&rev), by_name(&mev), "final release_all({})", c);
    }
    prop_assert!(r.is_empty(), "names left after everybody left");
    for &c in ORDINARY.iter().chain(ACTIVATORS.iter()) {
        prop_assert_eq!(r.owned_by(c).count() + r.queued_by(c).count(), 0);
        prop_assert!(r.activator_of(c).is_none());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    // NAM3-NAM14, ACT1, ACT6-ACT8: random acquire/release/disconnect/activator sequences.
    #[test]
    fn registry_follows_kdbus_head(ops in prop::collection::vec(op(), 1..80)) {
        run(&ops)?;
    }
}

// ------------------------------------------------------------------ fixed sequences

fn acq(r: &mut NameRegistry, c: ConnKey, n: &str, f: u64) -> (Result<u64, Errno>, Vec<NameEvent>) {
    let mut ev = Vec::new();
    (r.acquire(c, false, n, f, &mut ev), ev)
}

// The model itself, on the selftest scenarios (9-11, 31), so a wrong model cannot hide
// behind an equally wrong registry.
#[test]
fn model_and_registry_on_selftest_scenarios() {
    use Op::*;
    let ops = vec![
        // selftest 10: owner again → EALREADY, other → EEXIST
        Acquire {
            conn: 1,
            name: 0,
            flags: 0,
        },
        Acquire {
            conn: 1,
            name: 0,
            flags: 0,
        },
        Acquire {
            conn: 2,
            name: 0,
            flags: 0,
        },
        // selftest 11: QUEUE → IN_QUEUE; release hands over
        Acquire {
            conn: 2,
            name: 0,
            flags: QUEUE,
        },
        Release { conn: 1, name: 0 },
        // selftest 31: activator, service takes over and lets go
        Activate { conn: 11, name: 1 },
        Acquire {
            conn: 3,
            name: 1,
            flags: 0,
        },
        Release { conn: 3, name: 1 },
        ReleaseAll { conn: 11 },
    ];
    run(&ops).unwrap();

    let mut m = Model::default();
    let mut ev = Vec::new();
    assert_eq!(m.acquire(1, false, "org.a", 0, &mut ev), Ok(0));
    assert_eq!(
        m.acquire(1, false, "org.a", 0, &mut ev),
        Err(Errno::EALREADY)
    );
    assert_eq!(m.acquire(2, false, "org.a", 0, &mut ev), Err(Errno::EEXIST));
    assert_eq!(m.acquire(2, false, "org.a", QUEUE, &mut ev), Ok(IN_QUEUE));
    assert_eq!(m.release(3, "org.a", &mut ev), Err(Errno::EADDRINUSE));
    ev.clear();
    assert_eq!(m.release(1, "org.a", &mut ev), Ok(()));
    assert_eq!(
        ev,
        vec![NameEvent::Change {
            name: ev_name("org.a"),
            old: 1,
            old_flags: 0,
            new: 2,
            new_flags: QUEUE
        }]
    );
    assert_eq!(m.release(1, "org.a", &mut ev), Err(Errno::EADDRINUSE));
    assert_eq!(m.release(2, "org.a", &mut ev), Ok(()));
    assert_eq!(m.release(2, "org.a", &mut ev), Err(Errno::ESRCH));
}

// The two deliberate differences from HEAD (names.rs module comment).
#[test]
fn queue_again_updates_flags_and_owner_leaves_queue() {
    let mut r = NameRegistry::new();
    acq(&mut r, 1, "org.a", ALLOW_REPLACEMENT).0.unwrap();
    assert_eq!(acq(&mut r, 2, "org.a", QUEUE).0, Ok(IN_QUEUE));
    assert_eq!(
        acq(&mut r, 2, "org.a", QUEUE | ALLOW_REPLACEMENT).0,
        Ok(IN_QUEUE)
    );
    let e = r.lookup("org.a").unwrap();
    assert_eq!(
        e.queue.iter().copied().collect::<Vec<_>>(),
        vec![(2, QUEUE | ALLOW_REPLACEMENT)],
        "queued once, with the new flags"
    );
    // The waiter replaces the owner: it leaves the queue.
    assert_eq!(acq(&mut r, 2, "org.a", REPLACE_EXISTING).0, Ok(0));
    let e = r.lookup("org.a").unwrap();
    assert_eq!((e.owner, e.queue.len()), (2, 0));
    assert_eq!(r.queued_by(2).count(), 0);
}

// NAM11 (HEAD: 256 names per connection): the check comes before anything else, so
// even a QUEUE request is refused once the connection owns 256 names.
#[test]
fn e2big_after_256_names() {
    let mut r = NameRegistry::new();
    for i in 0..limits::CONN_MAX_NAMES {
        assert_eq!(acq(&mut r, 1, &format!("org.n{i}"), 0).0, Ok(0));
    }
    assert_eq!(acq(&mut r, 1, "org.more", 0).0, Err(Errno::E2BIG));
    acq(&mut r, 2, "org.other", 0).0.unwrap();
    assert_eq!(acq(&mut r, 1, "org.other", QUEUE).0, Err(Errno::E2BIG));
    let mut ev = Vec::new();
    r.release(1, "org.n0", &mut ev).unwrap();
    assert_eq!(acq(&mut r, 1, "org.more", 0).0, Ok(0));
}

// kdbus_name_release_all walks `conn->names_list`, the names in the order the
// connection came to own them, so NAME_REMOVE/NAME_CHANGE notifications of a
// disconnect come in that order. The registry keeps owned names in a BTreeSet and
// releases them in name order.
#[test]
fn release_all_event_order_follows_head() {
    let mut r = NameRegistry::new();
    let mut m = Model::default();
    let mut ev = Vec::new();
    for n in ["org.c", "org.a", "org.b"] {
        r.acquire(1, false, n, 0, &mut ev).unwrap();
        m.acquire(1, false, n, 0, &mut ev).unwrap();
    }
    let (mut rev, mut mev) = (Vec::new(), Vec::new());
    r.release_all(1, &mut rev);
    m.release_all(1, &mut mev);
    let order = |v: &[NameEvent]| -> Vec<String> {
        v.iter()
            .map(|e| match e {
                NameEvent::Remove { name, .. } => name.to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(order(&mev), ["org.c", "org.a", "org.b"], "model = HEAD");
    assert_eq!(order(&rev), order(&mev));
}
