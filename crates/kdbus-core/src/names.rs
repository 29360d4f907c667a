//! The name registry: who owns which well-known name, who waits for it, and which
//! activator stands in for it.
//!
//! Every name has at most one owner at any time; ownership moves only inside one call
//! here, so there is no instant with two owners or none by accident. A name's life:
//!
//! - the first ACQUIRE creates it (NAME_ADD);
//! - a busy name can be taken over (REPLACE_EXISTING, if the owner allowed it with
//!   ALLOW_REPLACEMENT; the old owner goes to the queue if it asked to with QUEUE),
//!   queued for (QUEUE), or refused (EEXIST);
//! - an activator holds a name for a service that is not running yet: the first
//!   ordinary acquirer takes it over without any flag, together with every message
//!   queued on the activator; when the service lets go and nobody waits, the name and
//!   the messages still addressed to it go back to the activator;
//! - releasing hands the name to the first waiter, else to the activator, else the name
//!   is gone (NAME_REMOVE).
//!
//! The registry knows connections only by key; what moving a name means for queues and
//! notifications comes back as [`NameEvent`]s for the domain to carry out, in order.
//! Lookups are hash-map lookups; per-connection bookkeeping keeps release-all linear in
//! what the connection holds, not in the size of the registry.

use crate::ids::ConnKey;
use kdbus_abi::{limits, name_flags, Errno};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

/// Flags an acquire may carry.
pub const ACQUIRE_FLAGS: u64 =
    name_flags::REPLACE_EXISTING | name_flags::ALLOW_REPLACEMENT | name_flags::QUEUE;

/// One well-known name that exists: it has an owner (an activator counts) and perhaps
/// waiters.
#[derive(Clone, Debug)]
pub struct NameEntry {
    /// The name itself (validated before it got here).
    pub name: Arc<str>,
    /// Unique per name's life, so messages addressed to "this name" can find their way
    /// back to the activator (kdbus's `name_id`).
    pub name_id: u64,
    /// Who owns it now: the service, or its activator while no service holds it.
    pub owner: ConnKey,
    /// The owner's acquire flags (ACTIVATOR when the activator holds it).
    pub flags: u64,
    /// The activator standing behind the name, whether or not it holds it now; the name
    /// falls back to it when the last owner leaves.
    pub activator: Option<ConnKey>,
    /// Waiters, first come first served: (connection, their acquire flags).
    pub queue: VecDeque<(ConnKey, u64)>,
}

/// What a registry change means for the rest of the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameEvent {
    /// NAME_ADD: a name came into existence.
    Add {
        /// The new name.
        name: Arc<str>,
        /// Its first owner.
        owner: ConnKey,
        /// The owner's acquire flags (ACTIVATOR for an activator).
        flags: u64,
    },
    /// NAME_REMOVE: a name is gone, nobody waited and no activator stands behind it.
    Remove {
        /// The name that is gone.
        name: Arc<str>,
        /// Its last owner.
        owner: ConnKey,
        /// The last owner's flags.
        flags: u64,
    },
    /// NAME_CHANGE: a name moved from one owner to another, with no instant between.
    Change {
        /// The name that changed owner.
        name: Arc<str>,
        /// The previous owner.
        old: ConnKey,
        /// The previous owner's flags.
        old_flags: u64,
        /// The owner from now on.
        new: ConnKey,
        /// The new owner's acquire flags (ACTIVATOR when the name goes back to its
        /// activator).
        new_flags: u64,
    },
    /// Move queued messages from `from` to `to`: all of them (`name_id` None, an
    /// activator's queue going to the service) or those sent to that name.
    Move {
        /// Whose queue the messages leave.
        from: ConnKey,
        /// Who gets them: the name's new owner.
        to: ConnKey,
        /// Only messages sent to this life of the name ([`NameEntry::name_id`]); `None`:
        /// all of them.
        name_id: Option<u64>,
    },
}

#[derive(Default, Debug)]
struct ConnNames {
    /// In the order they were acquired: a leaving connection releases them in it.
    owned: Vec<Arc<str>>,
    queued: BTreeSet<Arc<str>>,
    activator_of: Option<Arc<str>>,
}

impl ConnNames {
    fn is_empty(&self) -> bool {
        self.owned.is_empty() && self.queued.is_empty() && self.activator_of.is_none()
    }
}

/// Where a replaced owner that asked to queue waits (see `acquire_requeue`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// At the end of the queue (kdbus).
    Tail,
    /// At the front: next in line when the new owner lets go (dbus-daemon).
    Head,
}

/// The well-known names of one bus.
#[derive(Debug)]
pub struct NameRegistry {
    /// Names one connection may own (E2BIG beyond).
    pub max_per_conn: usize,
    names: HashMap<Arc<str>, NameEntry>,
    conns: HashMap<ConnKey, ConnNames>,
    next_name_id: u64,
}

impl Default for NameRegistry {
    fn default() -> Self {
        NameRegistry {
            max_per_conn: limits::CONN_MAX_NAMES,
            names: HashMap::new(),
            conns: HashMap::new(),
            next_name_id: 0,
        }
    }
}

impl NameRegistry {
    /// An empty registry, with kdbus's limit of names per connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry of `name`, if the name exists.
    pub fn lookup(&self, name: &str) -> Option<&NameEntry> {
        self.names.get(name)
    }

    /// Number of names that exist.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name exists.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// All entries, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &NameEntry> {
        self.names.values()
    }

    /// Names `conn` owns (the activator's own name included when it holds it).
    pub fn owned_by(&self, conn: ConnKey) -> impl Iterator<Item = &Arc<str>> {
        self.conns
            .get(&conn)
            .into_iter()
            .flat_map(|c| c.owned.iter())
    }

    /// Names `conn` waits for.
    pub fn queued_by(&self, conn: ConnKey) -> impl Iterator<Item = &Arc<str>> {
        self.conns
            .get(&conn)
            .into_iter()
            .flat_map(|c| c.queued.iter())
    }

    /// Names `conn` owns or waits for: what dbus-daemon's policy counts as its names.
    pub fn held_by(&self, conn: ConnKey) -> impl Iterator<Item = &Arc<str>> {
        self.owned_by(conn).chain(self.queued_by(conn))
    }

    /// The name `conn` is the activator of.
    pub fn activator_of(&self, conn: ConnKey) -> Option<&Arc<str>> {
        self.conns.get(&conn)?.activator_of.as_ref()
    }

    fn owned_count(&self, conn: ConnKey) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.owned.len())
    }

    /// ACQUIRE `name` for `conn`. Returns the return flags (IN_QUEUE when queued).
    /// `activator` says `conn` is an activator connection (its only acquire is the one
    /// HELLO makes for it).
    pub fn acquire(
        &mut self,
        conn: ConnKey,
        activator: bool,
        name: &str,
        flags: u64,
        events: &mut Vec<NameEvent>,
    ) -> Result<u64, Errno> {
        self.acquire_requeue(conn, activator, name, flags, Requeue::Tail, events)
    }

    /// ACQUIRE, saying where an owner that is replaced and asked to queue goes: to the
    /// tail of the queue (kdbus) or its head (dbus-daemon, for D-Bus peers).
    pub fn acquire_requeue(
        &mut self,
        conn: ConnKey,
        activator: bool,
        name: &str,
        flags: u64,
        requeue: Requeue,
        events: &mut Vec<NameEvent>,
    ) -> Result<u64, Errno> {
        if flags & !ACQUIRE_FLAGS != 0 && !activator {
            return Err(Errno::EINVAL);
        }
        if self.owned_count(conn) >= self.max_per_conn {
            return Err(Errno::E2BIG);
        }
        let is_activator_of = self.activator_of(conn).is_some();
        let Some(e) = self.names.get_mut(name) else {
            if is_activator_of {
                return Err(Errno::EINVAL); // an activator has exactly one name
            }
            let name: Arc<str> = name.into();
            self.next_name_id += 1;
            let flags = if activator {
                name_flags::ACTIVATOR
            } else {
                flags
            };
            let entry = NameEntry {
                name: name.clone(),
                name_id: self.next_name_id,
                owner: conn,
                flags,
                activator: activator.then_some(conn),
                queue: VecDeque::new(),
            };
            self.names.insert(name.clone(), entry);
            let c = self.conns.entry(conn).or_default();
            c.owned.push(name.clone());
            if activator {
                c.activator_of = Some(name.clone());
            }
            events.push(NameEvent::Add {
                name,
                owner: conn,
                flags,
            });
            return Ok(0);
        };
        if e.owner == conn || e.activator == Some(conn) {
            return Err(Errno::EALREADY);
        }
        if activator {
            // An activator standing behind a name someone already owns.
            if is_activator_of {
                return Err(Errno::EINVAL);
            }
            if e.activator.is_some() {
                return Err(Errno::EEXIST);
            }
            e.activator = Some(conn);
            self.conns.entry(conn).or_default().activator_of = Some(e.name.clone());
            return Ok(0);
        }
        if e.flags & name_flags::ACTIVATOR != 0 {
            // The service arrives: it takes the name and what queued on the activator.
            let from = e.owner;
            events.push(NameEvent::Move {
                from,
                to: conn,
                name_id: None,
            });
            self.set_owner(name, conn, flags, events);
            return Ok(0);
        }
        if flags & name_flags::REPLACE_EXISTING != 0 && e.flags & name_flags::ALLOW_REPLACEMENT != 0
        {
            let (old, old_flags) = (e.owner, e.flags);
            if old_flags & name_flags::QUEUE != 0 {
                match requeue {
                    Requeue::Tail => e.queue.push_back((old, old_flags)),
                    Requeue::Head => e.queue.push_front((old, old_flags)),
                }
                let n = e.name.clone();
                self.conns.entry(old).or_default().queued.insert(n);
            }
            self.set_owner(name, conn, flags, events);
            return Ok(0);
        }
        if flags & name_flags::QUEUE != 0 {
            match e.queue.iter_mut().find(|(c, _)| *c == conn) {
                // Asking again while queued updates the flags of the request.
                Some(slot) => slot.1 = flags,
                None => {
                    e.queue.push_back((conn, flags));
                    let n = e.name.clone();
                    self.conns.entry(conn).or_default().queued.insert(n);
                }
            }
            return Ok(name_flags::IN_QUEUE);
        }
        Err(Errno::EEXIST)
    }

    /// Make `conn` the owner of an existing name (replacement, queue hand-over,
    /// activator take-over or hand-back), emitting NAME_CHANGE.
    fn set_owner(&mut self, name: &str, conn: ConnKey, flags: u64, events: &mut Vec<NameEvent>) {
        let Some(e) = self.names.get_mut(name) else {
            return;
        };
        let (old, old_flags) = (e.owner, e.flags);
        e.owner = conn;
        e.flags = flags;
        // The new owner no longer waits for it.
        let was_queued = e.queue.iter().position(|(c, _)| *c == conn);
        if let Some(i) = was_queued {
            e.queue.remove(i);
        }
        let n = e.name.clone();
        if let Some(c) = self.conns.get_mut(&old) {
            c.owned.retain(|o| &**o != name);
        }
        self.conn_cleanup(old);
        let c = self.conns.entry(conn).or_default();
        if was_queued.is_some() {
            c.queued.remove(name);
        }
        c.owned.push(n.clone());
        events.push(NameEvent::Change {
            name: n,
            old,
            old_flags,
            new: conn,
            new_flags: flags,
        });
    }

    fn conn_cleanup(&mut self, conn: ConnKey) {
        if self.conns.get(&conn).is_some_and(|c| c.is_empty()) {
            self.conns.remove(&conn);
        }
    }

    /// RELEASE `name` by `conn`: ESRCH if nobody has it, EADDRINUSE if someone else owns
    /// it and `conn` does not wait for it; a waiter just leaves the queue.
    pub fn release(
        &mut self,
        conn: ConnKey,
        name: &str,
        events: &mut Vec<NameEvent>,
    ) -> Result<(), Errno> {
        let e = self.names.get_mut(name).ok_or(Errno::ESRCH)?;
        if e.owner == conn {
            self.release_owned(name, events);
            return Ok(());
        }
        let i = e
            .queue
            .iter()
            .position(|(c, _)| *c == conn)
            .ok_or(Errno::EADDRINUSE)?;
        e.queue.remove(i);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.queued.remove(name);
        }
        self.conn_cleanup(conn);
        Ok(())
    }

    /// The owner lets go: first waiter, else the activator, else nobody.
    fn release_owned(&mut self, name: &str, events: &mut Vec<NameEvent>) {
        let Some(e) = self.names.get_mut(name) else {
            return;
        };
        if let Some((next, flags)) = e.queue.front().copied() {
            self.set_owner(name, next, flags, events);
            return;
        }
        let owner = e.owner;
        if let Some(act) = e.activator.filter(|a| *a != owner) {
            events.push(NameEvent::Move {
                from: owner,
                to: act,
                name_id: Some(e.name_id),
            });
            self.set_owner(name, act, name_flags::ACTIVATOR, events);
            return;
        }
        let flags = e.flags;
        let Some((n, _)) = self.names.remove_entry(name) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&owner) {
            c.owned.retain(|o| &**o != name);
            if c.activator_of.as_deref() == Some(name) {
                c.activator_of = None;
            }
        }
        self.conn_cleanup(owner);
        events.push(NameEvent::Remove {
            name: n,
            owner,
            flags,
        });
    }

    /// `conn` leaves the bus: it stops being an activator, leaves every queue, and
    /// releases every name it owns (hand-over rules as for RELEASE).
    pub fn release_all(&mut self, conn: ConnKey, events: &mut Vec<NameEvent>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let activator_of = c.activator_of.take();
        let queued = std::mem::take(&mut c.queued);
        let owned: Vec<Arc<str>> = c.owned.to_vec();
        if let Some(n) = activator_of {
            if let Some(e) = self.names.get_mut(&n) {
                e.activator = None;
            }
        }
        for n in queued {
            if let Some(e) = self.names.get_mut(&n) {
                e.queue.retain(|(q, _)| *q != conn);
            }
        }
        for n in owned {
            self.release_owned(&n, events);
        }
        self.conns.remove(&conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use name_flags::*;

    fn acq(
        r: &mut NameRegistry,
        c: ConnKey,
        n: &str,
        f: u64,
    ) -> (Result<u64, Errno>, Vec<NameEvent>) {
        let mut ev = Vec::new();
        (r.acquire(c, false, n, f, &mut ev), ev)
    }

    #[test]
    fn acquire_conflict_queue_release() {
        let mut r = NameRegistry::new();
        assert_eq!(acq(&mut r, 1, "a.b", 0).0, Ok(0));
        assert_eq!(acq(&mut r, 1, "a.b", 0).0, Err(Errno::EALREADY));
        assert_eq!(acq(&mut r, 2, "a.b", 0).0, Err(Errno::EEXIST));
        assert_eq!(acq(&mut r, 2, "a.b", QUEUE).0, Ok(IN_QUEUE));
        let mut ev = Vec::new();
        assert_eq!(r.release(3, "a.b", &mut ev), Err(Errno::EADDRINUSE));
        r.release(1, "a.b", &mut ev).unwrap();
        assert_eq!(r.lookup("a.b").unwrap().owner, 2);
        assert!(matches!(
            &ev[..],
            [NameEvent::Change { old: 1, new: 2, .. }]
        ));
        r.release(2, "a.b", &mut ev).unwrap();
        assert!(r.lookup("a.b").is_none());
        assert_eq!(r.release(2, "a.b", &mut ev), Err(Errno::ESRCH));
        assert!(r.conns.is_empty(), "no bookkeeping left behind");
    }

    #[test]
    fn replacement_needs_both_flags_and_requeues_the_old_owner_if_asked() {
        let mut r = NameRegistry::new();
        acq(&mut r, 1, "a.b", QUEUE).0.unwrap();
        assert_eq!(
            acq(&mut r, 2, "a.b", REPLACE_EXISTING).0,
            Err(Errno::EEXIST)
        );
        let mut r = NameRegistry::new();
        acq(&mut r, 1, "a.b", ALLOW_REPLACEMENT | QUEUE).0.unwrap();
        assert_eq!(acq(&mut r, 2, "a.b", REPLACE_EXISTING).0, Ok(0));
        let e = r.lookup("a.b").unwrap();
        assert_eq!(
            (e.owner, e.queue.front().copied()),
            (2, Some((1, ALLOW_REPLACEMENT | QUEUE)))
        );
    }

    #[test]
    fn activator_hands_over_and_takes_back() {
        let mut r = NameRegistry::new();
        let mut ev = Vec::new();
        r.acquire(9, true, "a.b", 0, &mut ev).unwrap();
        assert_eq!(r.lookup("a.b").unwrap().flags, ACTIVATOR);
        let (res, ev) = acq(&mut r, 1, "a.b", 0);
        assert_eq!(res, Ok(0));
        assert_eq!(
            ev[0],
            NameEvent::Move {
                from: 9,
                to: 1,
                name_id: None
            }
        );
        let mut ev = Vec::new();
        r.release(1, "a.b", &mut ev).unwrap();
        let id = r.lookup("a.b").unwrap().name_id;
        assert_eq!(
            ev[0],
            NameEvent::Move {
                from: 1,
                to: 9,
                name_id: Some(id)
            }
        );
        assert_eq!(r.lookup("a.b").unwrap().owner, 9);
        let mut ev = Vec::new();
        r.release_all(9, &mut ev);
        assert!(r.is_empty() && r.conns.is_empty());
    }
}
