//! SEND: resolve the destination, classify the message (call, reply, signal), and
//! hand it to delivery.
//!
//! A unicast goes to a connection by id or to the owner of a well-known name; a reply
//! must answer a call its sender owes (HEAD: EPERM otherwise) and is never refused for
//! quota; a call that expects a reply leaves a tracker on its receiver (`replies`). A
//! synchronous call parks its request until the tracker resolves. A broadcast gets one
//! sequence number and goes to every connection whose matches take it, with the bloom
//! filter loaded once. Policy is judged once the destination is known and before
//! delivery: a custom endpoint's (TALK, SEE), then kdbus's TALK between native peers,
//! then, on a bus that has one, the configured message policy (`msgcheck`), for each
//! receiver of a broadcast.

use crate::bus::Bus;
use crate::conn::Conn;
use crate::deliver::{bus_native_monitors, conn_write_message, Route, Slot};
use crate::domain::{bus_owned_names, Domain, SendOutcome};
use crate::files::{fd_check, memfd_check, FdSlip};
use crate::ids::{ConnKey, FileSet, Files, KeyMap};
use crate::matches::Broadcast;
use crate::message::{message_memfds, SendRequest, SenderMeta};
use crate::meta::{Creds, PROC_NOW_ITEMS};
use crate::reply::{ReplyFailure, Tracker};
use crate::sink::Charge;
use kdbus_abi::wire;
use kdbus_abi::DST_ID_BROADCAST;
use kdbus_abi::{attach, hello_flags, limits, name_flags, CmdSend, Errno, MsgInfo};
use std::os::fd::AsFd;
use zerocopy::IntoBytes;

impl Domain {
    /// SEND of a validated message `req` by `src_key`, with the files it carries (the
    /// `FDS` item's, then the memfds), sent with `creds`; `req_id` is the request a
    /// synchronous call parks. The same path for every sender: a native client's
    /// decoded command, or a message a personality built.
    pub fn send(
        &mut self,
        src_key: ConnKey,
        req: &SendRequest<'_>,
        mut files: Option<Files>,
        creds: Creds,
        req_id: u64,
    ) -> Result<SendOutcome, Errno> {
        let src = self.conns.get(&src_key).ok_or(Errno::ECONNRESET)?;
        // Layouts are shared by the receivers of this send only.
        self.send_gen += 1;
        if files.as_ref().map_or(0, |f| f.len()) != req.n_fds + req.n_memfds {
            return Err(Errno::EBADF);
        }
        if let Some(f) = &files {
            // Native senders may not pass what can carry fds (kdbus); D-Bus allows it.
            if src.stream.is_none() {
                for fd in &f[..req.n_fds] {
                    fd_check(self.files.inspect(fd.as_fd()))?;
                }
            }
            for (fd, (start, size)) in f[req.n_fds..].iter().zip(message_memfds(req)) {
                memfd_check(self.files.inspect(fd.as_fd()), start, size)?;
            }
        }
        if let (Some(f), Some(ledger)) = (files.as_mut(), &self.fd_ledger) {
            let (uid, privileged) = (src.peer.creds.uid, src.peer.privileged);
            let slip = FdSlip::take(ledger, uid, privileged, f.len()).ok_or(Errno::EMFILE)?;
            if !FileSet::charge(f, slip) {
                crate::bug!(
                    Errno::EMFILE,
                    "a sender's fds were shared before they were charged"
                );
            }
        }
        let bus_key = src.bus;
        // The message policy reads the header once per send, if the bus has one.
        let policed = self
            .buses
            .get(&bus_key)
            .is_some_and(|b| b.msg_policy.is_some());
        let facts = policed.then(|| self.msg_facts(req));
        let mut sender = SenderMeta {
            id: src.id,
            key: Some(src_key),
            creds,
            peer: src.peer.clone(),
            description: src.description.clone(),
            attach_send: src.attach_send & self.attach_mask,
            names: Vec::new(),
        };
        // Signals carry a bloom filter: load it (and the sender's names) for the matches.
        if req.bloom.is_some() && !self.bloom_view_load(src_key, req)? {
            return Err(Errno::EDOM);
        }
        if req.msg.dst_id == DST_ID_BROADCAST {
            // A broadcast is copied to every D-Bus receiver: kdbus's vector limit keeps
            // one signal from costing receivers × 128 MiB.
            if req.payload_len > limits::MSG_MAX_PAYLOAD_VEC_SIZE {
                return Err(Errno::EMSGSIZE);
            }
            self.send_broadcast(src_key, req, sender, files, facts.as_ref())?;
            return Ok(SendOutcome::Done(send_writeback(&req.cmd, None)));
        }
        let bus = self.buses.get(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        // Through a custom endpoint, a name it may not see does not exist.
        if let (Some(name), Some(src)) = (req.dst_name, self.conns.get(&src_key)) {
            if !bus.ep_sees_name(src.endpoint, &src.asker(), name) {
                return Err(Errno::ESRCH);
            }
        }
        let (dst_key, name_id) = bus_resolve_destination(bus, &self.conns, req)?;
        let dst = self.conns.get(&dst_key).ok_or(Errno::ENXIO)?;
        if !dst.is_active() {
            return Err(Errno::ECONNRESET);
        }
        // Memfds are payload: they reach connections that take no fds too (kdbus).
        let fds_refused = req.n_fds > 0 && dst.flags & hello_flags::ACCEPT_FD == 0;
        if dst.attach_recv & sender.attach_send & attach::NAMES != 0 {
            sender.names = bus_owned_names(bus, src_key);
        }
        // Monitors get a copy with the same metadata: what they ask for is read too.
        let monitors_want = bus_native_monitors(bus, &self.conns)
            .filter_map(|m| self.conns.get(&m))
            .fold(0, |w, c| w | c.attach_recv);
        let want = (dst.attach_recv | monitors_want) & sender.attach_send;
        let (proc, ledger) = (&*self.proc_facts, self.fd_ledger.as_ref());
        sender_facts(proc, ledger, &mut self.conns, &mut sender, want);
        let dst = self.conns.get(&dst_key).ok_or(Errno::ENXIO)?;
        // A unicast signal reaches its destination only through a match (HEAD).
        if req.bloom.is_some() {
            let b = Broadcast {
                sender_id: sender.id,
                sender_names: &self.sender_names,
                bloom_generation: self.bloom_generation,
                bloom: &self.bloom_words,
            };
            // The receiver must be allowed to talk to the sender to get its signals.
            let takes = bus.matches.conn_takes_broadcast(dst_key, &b)
                && self
                    .conns
                    .get(&src_key)
                    .is_some_and(|s| bus_talks(bus, dst, s, src_key));
            let takes = takes
                && facts
                    .as_ref()
                    .is_none_or(|f| self.msg_passes(src_key, dst_key, f));
            if !takes {
                // Not delivered, but monitors see what was sent (HEAD).
                self.seq += 1;
                let seq = self.seq;
                self.monitors_copy(dst_key, req, &sender, name_id, seq, None);
                return Ok(SendOutcome::Done(send_writeback(&req.cmd, None)));
            }
        }

        // A reply: the sender owes the destination an answer for this cookie.
        if let Some(cookie) = req.cookie_reply() {
            let owed = self
                .conns
                .get(&src_key)
                .and_then(|s| s.owed.get(&(dst_key, cookie)).copied());
            // HEAD: a reply nobody waits for is refused (64d871b delivered it).
            let tracker = owed.ok_or(Errno::EPERM)?;
            if let Some(f) = &facts {
                self.msg_check(src_key, dst_key, f, true)?;
            }
            if let Some(sync_req) = tracker.sync_req {
                // A synchronous caller waits for this very message: if it cannot be
                // delivered, the caller is told so instead of waiting for its timeout.
                let r = if fds_refused {
                    Err(Errno::ECOMM)
                } else {
                    self.deliver_sync_reply(src_key, dst_key, sync_req, req, &sender, files)
                };
                if let Err(e) = r {
                    if let Some(t) = self.tracker_remove(src_key, dst_key, cookie) {
                        self.tracker_fail(dst_key, cookie, t, ReplyFailure::Undeliverable(e));
                    }
                    return Err(e);
                }
            } else if fds_refused {
                return Err(Errno::ECOMM);
            } else {
                // The answer its receiver waits for: never refused for quota.
                self.deliver(dst_key, req, &sender, files, name_id, Charge::Requested)?;
                self.tracker_remove(src_key, dst_key, cookie);
            }
            return Ok(SendOutcome::Done(send_writeback(&req.cmd, None)));
        }

        // TALK: the sender may talk to the receiver (replies, above, need not).
        let src = self.conns.get(&src_key).ok_or(Errno::ECONNRESET)?;
        let bus = self.buses.get(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        // Through a custom endpoint, its policy must grant TALK on one of the
        // receiver's names, privileged or not; refused as if nobody were there.
        if !bus.ep_talks_to(src.endpoint, &src.asker(), dst_key) {
            return Err(Errno::ENOENT);
        }
        if src.stream.is_none() && dst.stream.is_none() {
            let to = bus.names.owned_by(dst_key);
            let (uid, gid) = (creds.uid, creds.gid);
            if !bus.may_talk(&src.peer, uid, gid, dst.peer.creds.uid, to) {
                return Err(Errno::EPERM);
            }
        }
        if fds_refused {
            return Err(Errno::ECOMM);
        }
        if let Some(f) = &facts {
            self.msg_check(src_key, dst_key, f, false)?;
        }
        let expect = req.expects_reply();
        let cookie = req.msg.cookie;
        if expect {
            let src = self.conns.get(&src_key).ok_or(Errno::ECONNRESET)?;
            let max = self
                .buses
                .get(&bus_key)
                .map_or(0, |b| b.limits.replies_per_conn);
            if src.awaited.len() >= max {
                return Err(Errno::EMLINK);
            }
            if src.awaited.contains(&(dst_key, cookie)) {
                return Err(Errno::EEXIST);
            }
        }
        let charge = Charge::Sender(sender.creds.uid);
        self.deliver(dst_key, req, &sender, files, name_id, charge)?;
        if !expect {
            return Ok(SendOutcome::Done(send_writeback(&req.cmd, None)));
        }
        let sync_req = req.is_sync().then_some(req_id);
        let deadline = req.msg.timeout_or_cookie_reply;
        self.tracker_insert(dst_key, src_key, cookie, Tracker { deadline, sync_req });
        Ok(if sync_req.is_some() {
            SendOutcome::Pending
        } else {
            SendOutcome::Done(send_writeback(&req.cmd, None))
        })
    }

    /// Load a message's bloom filter and its sender's names into the scratch buffers
    /// the match rules read. `false` if the filter does not have the bus's size.
    pub(crate) fn bloom_view_load(
        &mut self,
        src_key: ConnKey,
        req: &SendRequest<'_>,
    ) -> Result<bool, Errno> {
        let bloom = req.bloom.ok_or(Errno::EBADMSG)?;
        let bus_key = self.conns.get(&src_key).ok_or(Errno::ECONNRESET)?.bus;
        let bus = self.buses.get(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let (generation, data) = bloom.split_at(8);
        if data.len() as u64 != bus.bloom.size {
            return Ok(false);
        }
        self.bloom_generation = kdbus_abi::read_struct(generation).unwrap_or(0);
        self.bloom_words.clear();
        self.bloom_words.extend(
            data.chunks_exact(8)
                .filter_map(kdbus_abi::read_struct::<u64>),
        );
        self.sender_names.clear();
        self.sender_names
            .extend(bus.names.owned_by(src_key).cloned());
        Ok(true)
    }

    /// A broadcast: one sequence number, written to every connection whose matches
    /// take it; its memfds (the only fds a broadcast may carry) are shared by all. A
    /// receiver without room loses it (its dropped count goes up); neither the sender
    /// nor the other receivers notice.
    /// The filter must have been loaded with [`Domain::bloom_view_load`].
    pub(crate) fn send_broadcast(
        &mut self,
        src_key: ConnKey,
        req: &SendRequest<'_>,
        mut sender: SenderMeta,
        memfds: Option<Files>,
        facts: Option<&crate::msgpolicy::Facts<'_>>,
    ) -> Result<(), Errno> {
        let bus_key = self.conns.get(&src_key).ok_or(Errno::ECONNRESET)?.bus;
        let bus = self.buses.get(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let b = Broadcast {
            sender_id: sender.id,
            sender_names: &self.sender_names,
            bloom_generation: self.bloom_generation,
            bloom: &self.bloom_words,
        };
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        // Native monitors see every broadcast, matches or not (HEAD); a native sender
        // never gets its own broadcast (HEAD), a D-Bus sender does when its own rules
        // take it (dbus-daemon); activators get none at all.
        let conns = &self.conns;
        let src = conns.get(&src_key).map(|c| &**c);
        let to_self = src.is_some_and(|s| s.stream.is_some());
        targets.extend(bus_native_monitors(bus, conns));
        bus.matches
            .for_each_broadcast_receiver(&b, &mut self.seen, |c| {
                if (c != src_key || to_self)
                    && conns.get(&c).is_some_and(|c| {
                        c.flags & hello_flags::ACTIVATOR == 0
                            && !c.is_native_monitor()
                            && src.is_some_and(|s| bus_talks(bus, c, s, src_key))
                    })
                {
                    targets.push(c);
                }
            });
        // The message policy drops receivers silently (monitors are exempt).
        if let Some(f) = facts {
            let conns = &self.conns;
            targets.retain(|&t| {
                conns.get(&t).is_some_and(|c| c.is_native_monitor())
                    || self.msg_passes(src_key, t, f)
            });
        }
        // What any receiver asks for, of what the sender shows: its names, and what
        // its process is now.
        let want = targets
            .iter()
            .filter_map(|t| self.conns.get(t))
            .fold(0, |w, c| w | c.attach_recv)
            & sender.attach_send;
        if want & attach::NAMES != 0 {
            sender.names = bus_owned_names(bus, src_key);
        }
        let (proc, ledger) = (&*self.proc_facts, self.fd_ledger.as_ref());
        sender_facts(proc, ledger, &mut self.conns, &mut sender, want);
        self.seq += 1;
        let seq = self.seq;
        let mut overwhelmed = Vec::new();
        for &t in &targets {
            let charge = Charge::Sender(sender.creds.uid);
            let r = self.deliver_at(
                t,
                req,
                &sender,
                memfds.clone(),
                Route {
                    name_id: 0,
                    seq,
                    charge,
                    eavesdrop: false,
                },
            );
            if let Err(e) = r {
                if let Some(c) = self.conns.get_mut(&t) {
                    c.lose(&mut self.outbox);
                    // A native receiver learns of it (`dropped_msgs`); a stream
                    // receiver has no way to, so it goes, as dbus-broker has it: it
                    // cannot keep up with what it subscribed to.
                    // (Only for want of room: a message it cannot take at all, say a
                    // native payload that is not D-Bus, is just not delivered.)
                    if c.stream.is_some() && e == Errno::ENOBUFS {
                        overwhelmed.push(t);
                    }
                }
            }
        }
        self.targets = targets;
        for t in overwhelmed {
            tracing::info!(
                conn = t,
                "a D-Bus peer that cannot keep up with the signals it subscribed to is disconnected"
            );
            self.conn_disconnect(t);
            self.closed.push(t);
        }
        Ok(())
    }

    /// Hand a reply straight to a requester blocked in a synchronous SEND: it goes into
    /// the requester's pool as its own (published) slice, never into the queue, and
    /// answers the parked SEND request.
    fn deliver_sync_reply(
        &mut self,
        replier: ConnKey,
        requester: ConnKey,
        sync_req: u64,
        req: &SendRequest<'_>,
        sender: &SenderMeta,
        files: Option<Files>,
    ) -> Result<(), Errno> {
        let seq = self.seq + 1;
        let dst = self.conns.get_mut(&requester).ok_or(Errno::ENXIO)?;
        let (at, clock, staged) = ((self.send_gen, seq), &*self.clock, &mut self.staged);
        let (offset, msg_size, _) =
            conn_write_message(dst, staged, at, clock, Slot::Owner, req, sender)?;
        self.seq = seq;
        self.monitors_copy(requester, req, sender, 0, seq, None);
        self.tracker_remove(replier, requester, req.msg.timeout_or_cookie_reply);
        let wb = CmdSend {
            size: std::mem::size_of::<CmdSend>() as u64,
            flags: kdbus_abi::send_flags::SYNC_REPLY,
            return_flags: 0,
            msg_address: 0,
            reply: MsgInfo {
                offset,
                msg_size,
                return_flags: 0,
            },
        };
        let dst = self.conns.get_mut(&requester).ok_or(Errno::ENXIO)?;
        let n = files.as_ref().map_or(0, |f| f.len() as u16);
        let at = dst.output.out.len();
        dst.output.files.extend(files.map(|f| (at, f)));
        self.outbox.push_record(
            &mut dst.output,
            wire::REC_REPLY,
            n,
            0,
            sync_req,
            wb.as_bytes(),
        );
        Ok(())
    }
}

/// kdbus's check for a signal: may its receiver `dst` talk to its sender `src`? Stream
/// peers (D-Bus) are judged by their own protocol's policy, not the kdbus database.
fn bus_talks(bus: &Bus, dst: &Conn, src: &Conn, src_key: ConnKey) -> bool {
    // A receiver on a custom endpoint hears only senders it may see.
    if !bus.ep_sees_conn(dst.endpoint, &dst.asker(), src_key) {
        return false;
    }
    if dst.stream.is_some() || src.stream.is_some() {
        return true;
    }
    let (uid, gid) = (dst.peer.creds.uid, dst.peer.creds.gid);
    let to = bus.names.owned_by(src_key);
    bus.may_talk(&dst.peer, uid, gid, src.peer.creds.uid, to)
}

/// Where a SEND goes: (connection, registry id of the name it was sent to, or 0).
fn bus_resolve_destination(
    bus: &Bus,
    conns: &KeyMap<ConnKey, Box<Conn>>,
    req: &SendRequest<'_>,
) -> Result<(ConnKey, u64), Errno> {
    let dst_id = req.msg.dst_id;
    let Some(name) = req.dst_name else {
        if dst_id == kdbus_abi::DST_ID_NAME {
            return Err(Errno::EDESTADDRREQ);
        }
        let key = *bus.conns.get(&dst_id).ok_or(Errno::ENXIO)?;
        // Activators, policy holders and monitors cannot be addressed by id.
        if !conns.get(&key).is_some_and(|c| c.is_ordinary()) {
            return Err(Errno::ENXIO);
        }
        return Ok((key, 0));
    };
    let e = bus.names.lookup(name).ok_or(Errno::ESRCH)?;
    let owner = conns.get(&e.owner).ok_or(Errno::ESRCH)?;
    if dst_id != kdbus_abi::DST_ID_NAME && owner.id != dst_id {
        return Err(Errno::EREMCHG);
    }
    if e.flags & name_flags::ACTIVATOR != 0
        && req.msg.flags & kdbus_abi::msg_flags::NO_AUTO_START != 0
    {
        return Err(Errno::EADDRNOTAVAIL);
    }
    Ok((e.owner, e.name_id))
}

fn send_writeback(cmd: &CmdSend, reply: Option<MsgInfo>) -> CmdSend {
    let mut wb = *cmd;
    wb.return_flags = 0;
    wb.reply = reply.unwrap_or_default();
    wb
}

/// What the sender's process shows, for receivers that `want` it: its pidfd is
/// taken first (the reads are checked with it; a user who may hold no more
/// descriptors does without a kept one, and each check takes one for the moment), a
/// sender whose connect-time facts were deferred (a D-Bus client) has them read, both
/// kept on its connection for the next message; then what it may have changed since
/// is read again.
fn sender_facts(
    facts: &dyn crate::meta::ProcFacts,
    ledger: Option<&std::rc::Rc<dyn crate::files::FdLedger>>,
    conns: &mut KeyMap<ConnKey, Box<Conn>>,
    sender: &mut SenderMeta,
    want: u64,
) {
    let reads = want & (PROC_NOW_ITEMS | crate::meta::DEFERRED_ITEMS) != 0;
    let settled = !sender.peer.deferred && sender.peer.pidfd.is_some();
    if let Some(c) = sender.key.and_then(|k| conns.get_mut(&k)) {
        if reads && !settled {
            crate::meta::peer_pidfd(facts, ledger, &mut c.peer);
            if c.peer.deferred && want & crate::meta::DEFERRED_ITEMS != 0 {
                facts.fill_deferred(&mut c.peer);
            }
            sender.peer = c.peer.clone();
        }
    }
    proc_refresh(facts, sender, want & PROC_NOW_ITEMS);
}

/// Read again what the sending process may have changed since it connected, if a
/// receiver asks for it (`want`): one look at the process per message, not per
/// receiver.
fn proc_refresh(facts: &dyn crate::meta::ProcFacts, sender: &mut SenderMeta, want: u64) {
    if want == 0 {
        return;
    }
    if let Some(p) = facts.proc_now(&sender.peer, sender.creds.pid, want) {
        sender.peer = p;
    }
}
