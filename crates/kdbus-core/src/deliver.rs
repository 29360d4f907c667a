//! Delivery: one message into one receiver, a pool slice or a stream.
//!
//! Routing (`send`, `notify`, `replies`) decides who receives a message and who is
//! charged for it; this module puts it there. For a native receiver the message is
//! laid out (header, items, the metadata the receiver asked for), its slice is
//! charged to the sending user and allocated, the payload is copied in once from the
//! request, and an announcement record is queued for the client. A stream receiver's
//! peer gets the same validated request ([`Delivery`]) and writes its own protocol.
//! Monitors get a copy of what was delivered; a monitor without room loses it.
//!
//! Nothing here decides policy: a delivery either fits or fails with the errno the
//! sender (or, for broadcasts, the receiver's loss count) is given.

use crate::bus::Bus;
use crate::clock::Clock;
use crate::conn::{Conn, Queued};
use crate::domain::{Domain, KERNEL_USER};
use crate::ids::{ConnKey, Files, KeyMap};
use crate::message::{
    message_layout, message_layout_kernel, message_payload, FdSlots, SendRequest, SenderMeta,
    Staged,
};
use crate::outbox::Outbox;
use crate::sink::{Charge, Delivery};
use kdbus_abi::wire::{self, MsgEvent};
use kdbus_abi::{item, Errno, DST_ID_BROADCAST};
use zerocopy::IntoBytes;

impl Domain {
    /// Write a unicast into `dst`'s pool, queue it and announce it; monitors get a copy.
    pub(crate) fn deliver(
        &mut self,
        dst_key: ConnKey,
        req: &SendRequest<'_>,
        sender: &SenderMeta,
        files: Option<Files>,
        name_id: u64,
        charge: Charge,
    ) -> Result<(), Errno> {
        let seq = self.seq + 1;
        let route = Route {
            name_id,
            seq,
            charge,
            eavesdrop: false,
        };
        // Eavesdroppers get the fds too (dbus-daemon's); a shared set, not a copy.
        let shared = files.clone();
        let r = self.deliver_at(dst_key, req, sender, files, route);
        if r == Err(Errno::ENOBUFS) {
            // For `Debug.Stats` and `kdbusctl top`: why senders hear LimitsExceeded.
            if let Some(c) = self.conns.get_mut(&dst_key) {
                c.refused += 1;
            }
        }
        r?;
        self.seq = seq;
        self.monitors_copy(dst_key, req, sender, name_id, seq, shared.as_ref());
        Ok(())
    }

    /// Write a message into `dst`'s queue (a D-Bus receiver's stream), as `route` says.
    pub(crate) fn deliver_at(
        &mut self,
        dst_key: ConnKey,
        req: &SendRequest<'_>,
        sender: &SenderMeta,
        files: Option<Files>,
        route: Route,
    ) -> Result<(), Errno> {
        let Route {
            name_id,
            seq,
            charge,
            eavesdrop,
        } = route;
        if let Some(dst) = self.conns.get_mut(&dst_key).filter(|c| c.stream.is_some()) {
            let bus = self.buses.get(&dst.bus).ok_or(Errno::ESHUTDOWN)?;
            let d = Delivery {
                req,
                sender_id: sender.id,
                charge,
                files,
                names: &bus.names,
                sender_key: sender.key,
                eavesdrop,
            };
            let bus_key = dst.bus;
            let r = dst
                .with_stream(&mut self.outbox, &mut self.echo, |s, out| {
                    s.deliver(out, &d)
                })
                .unwrap_or(Err(Errno::ENXIO));
            if !self.echo.is_empty() {
                self.echo_to_monitors(bus_key, Some(dst_key));
            }
            return r;
        }
        // Memfds are payload, not fds in flight (HEAD charges only the FDS item's).
        let n_fds = req.n_fds as u32;
        let src = sender.key;
        let dst = self.conns.get_mut(&dst_key).ok_or(Errno::ENXIO)?;
        let slot = Slot::Queue {
            user: sender.creds.uid,
            fds: n_fds,
        };
        let at = (self.send_gen, seq);
        let clock = &*self.clock;
        let (offset, size, fd_slots) =
            conn_write_message(dst, &mut self.staged, at, clock, slot, req, sender)?;
        let q = Queued {
            offset,
            size,
            src,
            cookie: req.msg.cookie,
            expect_reply: req.expects_reply(),
            user: sender.creds.uid,
            files,
            name_id,
            priority: req.msg.priority,
            fd_slots,
            charged_fds: n_fds,
        };
        conn_enqueue(dst, &mut self.outbox, seq, q);
        Ok(())
    }

    /// Copy a delivered unicast to the bus's monitors (without its fds; a monitor
    /// without room loses the copy) and offer it, with its `files`, to its
    /// eavesdroppers (D-Bus peers with `eavesdrop='true'` rules, whose rules, policy
    /// and fd negotiation decide, silently).
    pub(crate) fn monitors_copy(
        &mut self,
        dst_key: ConnKey,
        req: &SendRequest<'_>,
        sender: &SenderMeta,
        name_id: u64,
        seq: u64,
        files: Option<&Files>,
    ) {
        let Some(bus_key) = self.conns.get(&dst_key).map(|c| c.bus) else {
            return;
        };
        let route = Route {
            name_id,
            seq,
            charge: Charge::Requested,
            eavesdrop: false,
        };
        // By index: delivering borrows the domain, and a copy of the list would cost
        // an allocation per message.
        for i in 0.. {
            let Some(m) = self
                .buses
                .get(&bus_key)
                .and_then(|b| b.monitors.get(i).copied())
            else {
                break;
            };
            let copy = self.deliver_at(m, req, sender, None, route);
            if copy.is_err() {
                if let Some(c) = self.conns.get_mut(&m) {
                    c.lose(&mut self.outbox);
                }
            }
        }
        for i in 0.. {
            let Some(e) = self
                .buses
                .get(&bus_key)
                .and_then(|b| b.eavesdroppers.get(i).copied())
            else {
                break;
            };
            if e != dst_key && Some(e) != sender.key {
                let route = Route {
                    eavesdrop: true,
                    ..route
                };
                // Not taken (its rules, its policy) is no loss: it never asked for it.
                self.deliver_at(e, req, sender, files.cloned(), route).ok();
            }
        }
    }

    /// Queue a bus-generated message with sequence number `seq`; if it does not fit,
    /// count it as dropped.
    pub(crate) fn deliver_kernel_at(
        &mut self,
        dst_key: ConnKey,
        dst_id: u64,
        cookie_reply: u64,
        item_type: u64,
        payload: &[u8],
        seq: u64,
    ) {
        if self.conns.get(&dst_key).is_some_and(|c| c.stream.is_some()) {
            // Stream peers learn of replies that will not come in their protocol, and of
            // names through `name_changed`, not kdbus notifications.
            if matches!(item_type, item::REPLY_TIMEOUT | item::REPLY_DEAD)
                && dst_id != DST_ID_BROADCAST
            {
                let dead = item_type == item::REPLY_DEAD;
                self.with_stream(dst_key, |s, out| s.no_reply(out, cookie_reply, dead));
            }
            return;
        }
        let now = self.clock.now();
        let Some(dst) = self.conns.get_mut(&dst_key) else {
            return;
        };
        if !dst.is_active() {
            return;
        }
        let size = message_layout_kernel(
            &mut self.scratch,
            dst_id,
            cookie_reply,
            item_type,
            payload,
            dst.attach_recv & self.attach_mask,
            now,
            seq,
        );
        if dst.quota.charge(&dst.pool, KERNEL_USER, size, 0).is_err() {
            dst.lose(&mut self.outbox);
            return;
        }
        let Ok(offset) = dst.pool.alloc_for_delivery(size) else {
            dst.quota.uncharge(KERNEL_USER, size, 0);
            dst.lose(&mut self.outbox);
            return;
        };
        dst.mem.write(offset, &self.scratch);
        let q = Queued {
            offset,
            size,
            src: None,
            cookie: 0,
            expect_reply: false,
            user: KERNEL_USER,
            files: None,
            name_id: 0,
            priority: 0,
            fd_slots: Box::default(),
            charged_fds: 0,
        };
        conn_enqueue(dst, &mut self.outbox, seq, q);
    }
}

/// How a message reaches one receiver: where it lands (its name, its number) and who
/// is charged for it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Route {
    /// The registry id of the name it was sent to (0: sent to an id).
    pub name_id: u64,
    /// Its sequence number in the domain.
    pub seq: u64,
    /// Whom a stream receiver's quota charges for it.
    pub charge: Charge,
    /// Offered to a receiver it is not addressed to (an eavesdropper).
    pub eavesdrop: bool,
}

/// Where a message goes in a pool.
#[derive(Clone, Copy)]
pub(crate) enum Slot {
    /// The incoming queue: kdbus's delivery rule and the sending user's quota apply.
    Queue { user: u32, fds: u32 },
    /// Handed to the owner at once (a synchronous reply): published, not accounted.
    Owner,
}

/// The bus's native monitors (they see every broadcast and notification).
pub(crate) fn bus_native_monitors<'a>(
    bus: &'a Bus,
    conns: &'a KeyMap<ConnKey, Box<Conn>>,
) -> impl Iterator<Item = ConnKey> + 'a {
    bus.monitors
        .iter()
        .copied()
        .filter(|m| conns.get(m).is_some_and(|c| c.is_native_monitor()))
}

/// Queue a message already written into `conn`'s pool, and announce it.
pub(crate) fn conn_enqueue(conn: &mut Conn, outbox: &mut Outbox, seq: u64, q: Queued) {
    let ev = MsgEvent {
        offset: q.offset,
        msg_size: q.size,
        priority: q.priority,
        seq,
        dropped_msgs: conn.dropped_msgs,
    };
    let n = q.n_fds() as u16;
    let at = conn.output.out.len();
    conn.output.files.extend(q.files.clone().map(|f| (at, f)));
    conn.queued_at.insert(q.offset, seq);
    conn.queue.push(seq, q.priority, q);
    outbox.push_record(&mut conn.output, wire::REC_MSG, n, 0, 0, ev.as_bytes());
}

/// Lay out `req` for `dst` (or take the layout `staged` has for the same send `at` =
/// (send generation, sequence number) and mask), allocate its slice and write it.
/// Returns (offset, size, where its fds' numbers go).
pub(crate) fn conn_write_message(
    dst: &mut Conn,
    staged: &mut Staged,
    at: (u64, u64),
    clock: &dyn Clock,
    slot: Slot,
    req: &SendRequest<'_>,
    sender: &SenderMeta,
) -> Result<(u64, u64, FdSlots), Errno> {
    let mask = dst.attach_recv & sender.attach_send;
    // The layout is shared by receivers that get the same items in the same
    // namespaces.
    let view = dst.peer.ns.as_deref();
    let key = (at.0, at.1, mask, crate::meta::ns_keys(view));
    if staged.key != Some(key) {
        if staged.now_gen != at.0 {
            staged.now_gen = at.0;
            staged.now = clock.now();
        }
        let (gen_seq, now) = (at.1, staged.now);
        let (off, slots) = message_layout(&mut staged.bytes, req, mask, sender, now, gen_seq, view);
        staged.key = Some(key);
        staged.data_off = off;
        staged.slots = slots;
    }
    let data_off = staged.data_off;
    let fd_slots = staged.slots.clone();
    let total = data_off + req.payload_len;
    let offset = match slot {
        Slot::Queue { user, fds } => {
            // The quota is judged on the pool as it is, before this message is in it
            // (kdbus HEAD charges, then allocates).
            dst.quota.charge(&dst.pool, user, total, fds)?;
            match dst.pool.alloc_for_delivery(total) {
                Ok(offset) => offset,
                Err(e) => {
                    dst.quota.uncharge(user, total, fds);
                    return Err(e.into());
                }
            }
        }
        Slot::Owner => {
            let offset = dst.pool.alloc(total, false)?;
            dst.pool.publish(offset)?;
            offset
        }
    };
    dst.mem.write(offset, &staged.bytes);
    let mut at = offset + data_off;
    for data in message_payload(req) {
        dst.mem.write(at, data);
        at += kdbus_abi::align8(data.len() as u64);
    }
    Ok((offset, total, fd_slots))
}

/// Write a result the owner asked for (info, list, hello items) into its pool: an
/// unaccounted, published slice. Returns (offset, size).
pub(crate) fn conn_write_owner_slice(conn: &mut Conn, data: &[u8]) -> Result<(u64, u64), Errno> {
    let len = data.len() as u64;
    let offset = conn.pool.alloc(len, false)?;
    conn.pool.publish(offset)?;
    conn.mem.write(offset, data);
    Ok((offset, len))
}
