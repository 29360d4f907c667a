//! Bus notifications: ID_ADD / ID_REMOVE / NAME_* to native connections whose
//! matches take them, and the same events to stream peers in their own protocol.

use crate::bus::Bus;
use crate::conn::Conn;
use crate::deliver::bus_native_monitors;
use crate::domain::Domain;
use crate::ids::{BusKey, ConnKey};
use crate::matches::Notification;
use crate::names::NameEvent;
use crate::sink::{StreamOut, StreamPeer};
use kdbus_abi::{item, NotifyIdChange, DST_ID_BROADCAST};
use zerocopy::IntoBytes;

impl Domain {
    /// NAME_ADD / NAME_REMOVE / NAME_CHANGE with the unique ids and flags of the old
    /// and new owners (0 for none).
    pub(crate) fn notify_name_change(&mut self, bus: BusKey, ev: &NameEvent) {
        let id = |k: ConnKey| self.conns.get(&k).map_or(0, |c| c.id);
        let (old_key, new_key) = match ev {
            NameEvent::Add { owner, .. } => (None, Some(*owner)),
            NameEvent::Remove { owner, .. } => (Some(*owner), None),
            NameEvent::Change { old, new, .. } => (Some(*old), Some(*new)),
            NameEvent::Move { .. } => return,
        };
        let (item_type, name, old, new) = match ev {
            NameEvent::Add { name, owner, flags } => {
                (item::NAME_ADD, name, (0, 0), (id(*owner), *flags))
            }
            NameEvent::Remove { name, owner, flags } => {
                (item::NAME_REMOVE, name, (id(*owner), *flags), (0, 0))
            }
            NameEvent::Change {
                name,
                old,
                old_flags,
                new,
                new_flags,
            } => (
                item::NAME_CHANGE,
                name,
                (id(*old), *old_flags),
                (id(*new), *new_flags),
            ),
            NameEvent::Move { .. } => return,
        };
        // Stream peers: the old owner hears it lost the name, the new one that it has
        // it, then everyone whose rules take it that the owner changed.
        if let Some(k) = old_key {
            self.with_stream(k, |s, out| s.name_lost(out, name));
        }
        if let Some(k) = new_key {
            self.with_stream(k, |s, out| s.name_acquired(out, name));
        }
        self.streams_name_changed(bus, name, old.0, new.0);
        let mut payload = Vec::with_capacity(40 + name.len());
        payload.extend_from_slice(
            NotifyIdChange {
                id: old.0,
                flags: old.1,
            }
            .as_bytes(),
        );
        payload.extend_from_slice(
            NotifyIdChange {
                id: new.0,
                flags: new.1,
            }
            .as_bytes(),
        );
        payload.extend_from_slice(name.as_bytes());
        payload.push(0);
        let n = match item_type {
            item::NAME_ADD => Notification::NameAdd {
                old: old.0,
                new: new.0,
                name,
            },
            item::NAME_REMOVE => Notification::NameRemove {
                old: old.0,
                new: new.0,
                name,
            },
            _ => Notification::NameChange {
                old: old.0,
                new: new.0,
                name,
            },
        };
        self.notify(bus, n, &payload);
    }

    /// Tell the bus's stream peers that `name` changed owner (unique ids, 0: none);
    /// through a custom endpoint, only those that may see the name.
    fn streams_name_changed(&mut self, bus_key: BusKey, name: &str, old: u64, new: u64) {
        let sees = |bus: &Bus, c: &Conn| bus.ep_sees_name(c.endpoint, &c.asker(), name);
        self.streams_each(bus_key, sees, |s, out| s.name_changed(out, name, old, new));
    }

    /// Tell the bus's stream peers that connection `id` joined or left; through a
    /// custom endpoint, only those that may see it.
    pub(crate) fn streams_conn_changed(&mut self, bus_key: BusKey, id: u64, joined: bool) {
        let sees = |bus: &Bus, c: &Conn| {
            c.endpoint.is_none()
                || bus
                    .conns
                    .get(&id)
                    .is_some_and(|k| bus.ep_sees_conn(c.endpoint, &c.asker(), *k))
        };
        self.streams_each(bus_key, sees, |s, out| s.conn_changed(out, id, joined));
    }

    /// Run `f` on every stream listener of the bus that `visible` admits, in key order.
    fn streams_each(
        &mut self,
        bus_key: BusKey,
        visible: impl Fn(&Bus, &Conn) -> bool,
        mut f: impl FnMut(&mut dyn StreamPeer, &mut StreamOut<'_>),
    ) {
        let Some(bus) = self.buses.get(&bus_key) else {
            return;
        };
        if bus.stream_listeners.is_empty() {
            return;
        }
        let mut keys = std::mem::take(&mut self.stream_keys);
        keys.clear();
        let conns = &self.conns;
        keys.extend(
            bus.stream_listeners
                .iter()
                .copied()
                .filter(|k| conns.get(k).is_some_and(|c| visible(bus, c))),
        );
        for &k in &keys {
            self.with_stream(k, &mut f);
        }
        self.stream_keys = keys;
    }

    /// Send a bus notification to every connection whose matches take it.
    pub(crate) fn notify(&mut self, bus_key: BusKey, n: Notification<'_>, payload: &[u8]) {
        let item_type = n.item_type();
        let Some(bus) = self.buses.get(&bus_key) else {
            return;
        };
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        let conns = &self.conns;
        targets.extend(bus_native_monitors(bus, conns));
        bus.matches
            .for_each_notification_receiver(&n, &mut self.seen, |c| {
                if conns
                    .get(&c)
                    .is_some_and(|c| !c.is_native_monitor() && notification_visible(bus, c, &n))
                {
                    targets.push(c);
                }
            });
        if !targets.is_empty() {
            self.seq += 1;
            let seq = self.seq;
            for &c in &targets {
                self.deliver_kernel_at(c, DST_ID_BROADCAST, 0, item_type, payload, seq);
            }
        }
        self.targets = targets;
    }
}

/// Through a custom endpoint, a notification is seen only if what it is about is: the
/// name, or (for ID_*) one of the connection's names.
fn notification_visible(bus: &Bus, c: &Conn, n: &Notification<'_>) -> bool {
    if c.endpoint.is_none() {
        return true;
    }
    let asker = c.asker();
    match *n {
        Notification::IdAdd { id } | Notification::IdRemove { id } => bus
            .conns
            .get(&id)
            .is_some_and(|k| bus.ep_sees_conn(c.endpoint, &asker, *k)),
        Notification::NameAdd { name, .. }
        | Notification::NameRemove { name, .. }
        | Notification::NameChange { name, .. } => bus.ep_sees_name(c.endpoint, &asker, name),
    }
}
