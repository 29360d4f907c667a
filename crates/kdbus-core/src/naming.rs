//! Name commands: NAME_ACQUIRE, NAME_RELEASE, and what a registry change means.
//!
//! The registry (`names`) decides owners and queues and returns events; this module
//! carries them out in order: messages move with a name to its new owner (activator
//! hand-over), then notifications go out.

use crate::conn::Queued;
use crate::deliver::conn_enqueue;
use crate::domain::Domain;
use crate::ids::{BusKey, ConnKey};
use crate::names::{NameEvent, Requeue};
use crate::policy::OWN;
use crate::reply::ReplyFailure;
use kdbus_abi::{wire, Errno};

impl Domain {
    /// NAME_ACQUIRE of the (valid) well-known `name` with `flags`: the return flags
    /// (IN_QUEUE when queued).
    pub fn name_acquire(&mut self, key: ConnKey, name: &str, flags: u64) -> Result<u64, Errno> {
        let conn = self.conns.get(&key).ok_or(Errno::ECONNRESET)?;
        let bus_key = conn.bus;
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        // Privileged bus users may own any name; others need OWN in the policy
        // (kdbus's default without entries: nobody).
        let asker = conn.asker();
        // Through a custom endpoint, its policy must grant OWN too, privileged or not.
        let ep_owns = conn.endpoint.is_none_or(|e| {
            bus.endpoints
                .get(&e)
                .is_some_and(|ep| ep.policy.allows(&asker, name, OWN))
        });
        if !ep_owns {
            return Err(Errno::EPERM);
        }
        // A bus with a configured message policy is judged by it alone (below).
        if bus.msg_policy.is_none()
            && !bus.is_privileged(&conn.peer)
            && !bus.policy.allows(&asker, name, OWN)
        {
            return Err(Errno::EPERM);
        }
        self.msg_may_own(key, name)?;
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        // A D-Bus owner that is replaced waits first in line (dbus-daemon); a native
        // one last (kdbus).
        let conns = &self.conns;
        let requeue = match bus.names.lookup(name).and_then(|e| conns.get(&e.owner)) {
            Some(c) if c.stream.is_some() => Requeue::Head,
            _ => Requeue::Tail,
        };
        let mut events = Vec::new();
        let return_flags =
            bus.names
                .acquire_requeue(key, false, name, flags, requeue, &mut events)?;
        self.names_apply(bus_key, events);
        Ok(return_flags)
    }

    /// NAME_RELEASE of `name` (ESRCH if nobody owns it, EADDRINUSE if another does).
    pub fn name_release(&mut self, key: ConnKey, name: &str) -> Result<(), Errno> {
        let bus_key = self.conns.get(&key).ok_or(Errno::ECONNRESET)?.bus;
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let mut events = Vec::new();
        bus.names.release(key, name, &mut events)?;
        self.names_apply(bus_key, events);
        Ok(())
    }

    /// Carry out what a registry change means, in order: move messages, notify.
    pub(crate) fn names_apply(&mut self, bus: BusKey, events: Vec<NameEvent>) {
        for ev in events {
            match ev {
                NameEvent::Move { from, to, name_id } => self.conn_move_messages(from, to, name_id),
                other => self.notify_name_change(bus, &other),
            }
        }
    }

    /// The service behind activator `key` did not start: drop what waits on it. The
    /// answers owed for those messages are taken off the books; native requesters are
    /// told REPLY_DEAD here, stream requesters are returned as (requester, cookie) for
    /// their protocol's words (dbus-daemon names the failure).
    pub fn activator_drop_queue(&mut self, key: ConnKey) -> Vec<(ConnKey, u64)> {
        let Some(conn) = self.conns.get_mut(&key) else {
            return Vec::new();
        };
        conn.queue_drop();
        let owed: Vec<_> = conn.owed.keys().copied().collect();
        let mut streams = Vec::new();
        for (requester, cookie) in owed {
            let Some(t) = self.tracker_remove(key, requester, cookie) else {
                continue;
            };
            if self
                .conns
                .get(&requester)
                .is_some_and(|c| c.stream.is_some())
            {
                streams.push((requester, cookie));
            } else {
                self.tracker_fail(requester, cookie, t, ReplyFailure::Dead);
            }
        }
        streams
    }

    /// Move queued messages from `from` to `to` (all, or those sent to `name_id`),
    /// keeping their order and sequence numbers, with the answers owed for them. A
    /// message that does not fit into `to` is lost for it: counted as dropped, and its
    /// sender learns REPLY_DEAD if it waited for an answer.
    fn conn_move_messages(&mut self, from: ConnKey, to: ConnKey, name_id: Option<u64>) {
        let Some(src) = self.conns.get_mut(&from) else {
            return;
        };
        let seqs: Vec<u64> = src
            .queue
            .iter()
            .filter(|(_, q)| name_id.is_none_or(|id| q.name_id == id))
            .map(|(seq, _)| seq)
            .collect();
        let mut moved = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let Some(q) = src.queue.remove(seq) else {
                continue;
            };
            src.queued_at.remove(&q.offset);
            src.quota.uncharge(q.user, q.size, q.charged_fds);
            let bytes = src.mem.read(q.offset, q.size as usize);
            if let Err(e) = src.pool.free(q.offset) {
                crate::bug!(e, "a queued slice could not be freed");
            }
            self.outbox.push_record(
                &mut src.output,
                wire::REC_RETRACT,
                0,
                0,
                0,
                &q.offset.to_ne_bytes(),
            );
            moved.push((seq, q, bytes));
        }
        for (seq, q, bytes) in moved {
            let tracker = q
                .src
                .filter(|_| q.expect_reply)
                .and_then(|s| self.tracker_remove(from, s, q.cookie));
            if self.conns.get(&to).is_some_and(|c| c.stream.is_some()) {
                let files = q.files.clone();
                let delivered = bytes.as_deref().is_some_and(|b| {
                    self.with_stream(to, |s, out| s.deliver_moved(out, b, files))
                        .is_some_and(|r| r.is_ok())
                });
                match (tracker, q.src) {
                    (Some(t), Some(requester)) if delivered => {
                        self.tracker_insert(to, requester, q.cookie, t)
                    }
                    (Some(t), Some(requester)) => {
                        self.tracker_fail(requester, q.cookie, t, ReplyFailure::Dead)
                    }
                    _ => {}
                }
                continue;
            }
            let Some(dst) = self.conns.get_mut(&to) else {
                continue;
            };
            // Charged on the pool as it is, then allocated (HEAD's order, as for a
            // delivery).
            let placed = bytes.and_then(|b| {
                dst.quota
                    .charge(&dst.pool, q.user, q.size, q.charged_fds)
                    .ok()?;
                let Ok(offset) = dst.pool.alloc_for_delivery(q.size) else {
                    dst.quota.uncharge(q.user, q.size, q.charged_fds);
                    return None;
                };
                dst.mem.write(offset, &b);
                Some(offset)
            });
            let Some(offset) = placed else {
                dst.lose(&mut self.outbox);
                if let (Some(t), Some(requester)) = (tracker, q.src) {
                    self.tracker_fail(requester, q.cookie, t, ReplyFailure::Dead);
                }
                continue;
            };
            conn_enqueue(
                dst,
                &mut self.outbox,
                seq,
                Queued {
                    offset,
                    ..q.clone()
                },
            );
            if let (Some(t), Some(requester)) = (tracker, q.src) {
                self.tracker_insert(to, requester, q.cookie, t);
            }
        }
    }
}
