//! Reply tracking: who owes whom an answer, until when.
//!
//! A tracker lives on the receiver of a call (`Conn::owed`), is mirrored on the caller
//! (`Conn::awaited`), and its deadline is in the domain's `deadlines` set, earliest
//! first. It ends with the reply (removed), a timeout (`tick`), the death of the
//! replier, or a reply that could not be delivered; the caller then learns it with
//! REPLY_TIMEOUT / REPLY_DEAD in its pool, or an errno for a synchronous call.

use crate::domain::Domain;
use crate::ids::ConnKey;
use crate::reply::{ReplyFailure, Tracker};
use kdbus_abi::{item, wire, Errno};

impl Domain {
    /// Record "replier owes requester an answer to cookie".
    pub(crate) fn tracker_insert(
        &mut self,
        replier: ConnKey,
        requester: ConnKey,
        cookie: u64,
        t: Tracker,
    ) {
        if let Some(r) = self.conns.get_mut(&replier) {
            r.owed.insert((requester, cookie), t);
        }
        if let Some(r) = self.conns.get_mut(&requester) {
            r.awaited.insert((replier, cookie));
        }
        self.deadlines
            .insert((t.deadline, replier, requester, cookie));
    }

    /// Forget the tracker "replier owes requester an answer to cookie".
    pub(crate) fn tracker_remove(
        &mut self,
        replier: ConnKey,
        requester: ConnKey,
        cookie: u64,
    ) -> Option<Tracker> {
        let t = self
            .conns
            .get_mut(&replier)?
            .owed
            .remove(&(requester, cookie))?;
        self.deadlines
            .remove(&(t.deadline, replier, requester, cookie));
        if let Some(r) = self.conns.get_mut(&requester) {
            r.awaited.remove(&(replier, cookie));
        }
        Some(t)
    }

    /// A tracker ended without reply: wake a synchronous requester with an errno, or
    /// send an asynchronous one REPLY_TIMEOUT / REPLY_DEAD.
    pub(crate) fn tracker_fail(
        &mut self,
        requester: ConnKey,
        cookie: u64,
        t: Tracker,
        why: ReplyFailure,
    ) {
        let Some(conn) = self.conns.get_mut(&requester) else {
            return;
        };
        if !conn.is_active() {
            return;
        }
        if let Some(sync_req) = t.sync_req {
            let e = match why {
                ReplyFailure::Timeout => Errno::ETIMEDOUT,
                ReplyFailure::Dead => Errno::EPIPE,
                ReplyFailure::Undeliverable(Errno::ECOMM) => Errno::EREMOTEIO,
                ReplyFailure::Undeliverable(e) => e,
            };
            self.outbox
                .push_record(&mut conn.output, wire::REC_REPLY, 0, e.0, sync_req, &[]);
            return;
        }
        let item_type = match why {
            ReplyFailure::Timeout => item::REPLY_TIMEOUT,
            ReplyFailure::Dead => item::REPLY_DEAD,
            // An asynchronous caller still waits; its tracker is unchanged.
            ReplyFailure::Undeliverable(_) => return,
        };
        self.deliver_kernel(requester, cookie, item_type);
    }

    /// Queue a bus-generated message for one connection (REPLY_TIMEOUT, REPLY_DEAD).
    fn deliver_kernel(&mut self, dst_key: ConnKey, cookie_reply: u64, item_type: u64) {
        let Some(dst_id) = self.conns.get(&dst_key).map(|c| c.id) else {
            return;
        };
        self.seq += 1;
        let seq = self.seq;
        self.deliver_kernel_at(dst_key, dst_id, cookie_reply, item_type, &[], seq);
        let bus = self.conns.get(&dst_key).map(|c| c.bus);
        let monitors = bus
            .and_then(|b| self.buses.get(&b))
            .map(|b| b.monitors.clone())
            .unwrap_or_default();
        for m in monitors {
            self.deliver_kernel_at(m, dst_id, cookie_reply, item_type, &[], seq);
        }
    }

    /// The earliest reply deadline (CLOCK_MONOTONIC ns), for the broker's poll timeout.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|d| d.0)
    }

    /// Expire every tracker whose deadline has passed.
    pub fn tick(&mut self) {
        let now = self.clock.now().monotonic_ns;
        while let Some(&(deadline, replier, requester, cookie)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            match self.tracker_remove(replier, requester, cookie) {
                Some(t) => self.tracker_fail(requester, cookie, t, ReplyFailure::Timeout),
                None => {
                    self.deadlines.pop_first();
                }
            }
        }
    }
}
