//! A D-Bus client as a stream peer of the bus: what it receives, and how.
//!
//! The core routes to a D-Bus client exactly as to a native one; at the last step,
//! where a native receiver's message would be laid out in its pool, the core hands the
//! validated message to this peer instead ([`StreamPeer::deliver`]). The peer's
//! payload is the D-Bus message itself: its header is rewritten with the sender the
//! bus vouches for (unless the bus already wrote that sender into it) and appended to
//! the client's stream. Broadcasts are checked against the client's own match rules
//! first, which removes the bus match database's bloom false positives.
//!
//! What the bus itself says (the driver's replies, NameAcquired, NameLost,
//! NameOwnerChanged, NoReply errors) is written here too, with the driver as sender
//! and the peer's serial counter. Every append is charged to the stream's quota
//! (`stream_quota`): messages the client asked for are counted, never refused.

use crate::body::{Body, ErrName};
use crate::stream_quota::{Charge, StreamLimits, StreamQuota};
use crate::{DRIVER, DRIVER_PATH};
use kdbus_abi::{item, payload, Errno, Msg, Vec_};
use kdbus_core::message::message_payload;
use kdbus_core::sink::{Delivery, StreamOut, StreamPeer};
use kdbus_core::Files;
use kdbus_dbus::header::{self, Fields, Header, MessageType, FLAG_NO_REPLY_EXPECTED};
use kdbus_dbus::marshal::Endian;
use kdbus_dbus::names::UniqueName;
use kdbus_dbus::rules::Rule;
use std::any::Any;

/// The D-Bus side of a connection.
#[derive(Debug, Default)]
pub struct DBusPeer {
    /// The client agreed to receive fds (SASL `NEGOTIATE_UNIX_FD`).
    pub fds_ok: bool,
    /// Installed match rules: (rule, its cookie in the bus's match database).
    pub rules: Vec<(Rule, Option<u64>)>,
    /// A monitor's rules (`BecomeMonitor`): it is shown what any of them takes, or
    /// everything if there are none.
    pub monitor_rules: Vec<Rule>,
    next_serial: u32,
    next_cookie: u64,
    /// What the stream holds unwritten, and whose it is.
    pub quota: StreamQuota,
}

/// May this peer see `h`, addressed to someone else? Its receive rules judge, with
/// dbus-daemon's eavesdropping rule: only allow rules that say `eavesdrop="true"`.
/// (The sender's send rules towards the eavesdropper, which dbus-daemon checks too,
/// are not consulted.)
fn may_eavesdrop(out: &StreamOut<'_>, h: &Header<'_>, d: &Delivery<'_>) -> bool {
    let (Some(rules), Some(from)) = (out.rules(), d.sender_party()) else {
        return true;
    };
    let facts = crate::policy::header_facts(h);
    rules
        .may_receive(&facts, &from, h.reply_serial.is_some(), true)
        .is_ok()
}

/// May the driver send this peer a message of type `t` with `fields` (to `dest`;
/// `None`: a broadcast)? The peer's receive rules judge it as dbus-daemon does: sent by
/// the bus itself, a reply always requested, monitors exempt.
fn driver_may_tell(
    out: &StreamOut<'_>,
    t: MessageType,
    fields: &Fields<'_>,
    dest: Option<&str>,
) -> bool {
    let Some(rules) = out.rules().filter(|_| !out.is_monitor()) else {
        return true;
    };
    let facts = kdbus_core::msgpolicy::Facts {
        known: true,
        msg_type: t as u8,
        path: fields.path,
        interface: fields.interface,
        member: fields.member,
        error: fields.error_name,
        destination: dest,
        is_reply: fields.reply_serial.is_some(),
        fds: 0,
    };
    let bus = kdbus_core::msgpolicy::Party::Named(Some(DRIVER));
    rules
        .may_receive(&facts, &bus, fields.reply_serial.is_some(), false)
        .is_ok()
}

/// The D-Bus peer behind a stream peer (every stream peer is one, today).
pub(crate) fn peer_mut(s: &mut dyn StreamPeer) -> Option<&mut DBusPeer> {
    s.as_any_mut().downcast_mut::<DBusPeer>()
}

impl DBusPeer {
    /// Whether this monitor is shown a message (header `h`, `body`) from `sender`.
    /// Rules match as eavesdropping rules do: unicasts between others included.
    fn monitor_takes(
        &self,
        h: &Header<'_>,
        sender: &str,
        owns: &dyn Fn(&str) -> bool,
        body: &[u8],
    ) -> bool {
        self.monitor_rules.is_empty()
            || self
                .monitor_rules
                .iter()
                .any(|r| r.matches(h, sender, owns, body))
    }

    /// `observe` for a monitor with rules: only the messages of `msgs` (whole D-Bus
    /// messages, each with the fds at its offset) that a rule takes.
    fn observe_chosen(&mut self, out: &mut StreamOut<'_>, msgs: &[u8], files: &[(usize, Files)]) {
        let mut at = 0;
        while let Some(rest) = msgs.get(at..).filter(|r| !r.is_empty()) {
            let Ok(h) = header::parse(rest) else {
                return;
            };
            let Some(msg) = rest.get(..h.total_len()) else {
                return;
            };
            let body = &msg[h.header_len..];
            let no = |_: &str| false;
            if self.monitor_takes(&h, h.sender.unwrap_or(""), &no, body) {
                let buf = out.buf();
                let start = buf.len();
                buf.extend_from_slice(msg);
                for (_, f) in files.iter().filter(|(off, _)| *off == at) {
                    out.attach_files(start, f.clone());
                }
                self.quota.charge(Charge::Requested, msg.len() as u64, 0);
            }
            at += msg.len();
        }
    }

    /// A peer whose stream may hold the default [`StreamLimits`] from other peers;
    /// `fds_ok`: the client negotiated fd passing.
    pub fn new(fds_ok: bool) -> Self {
        Self::with_limits(fds_ok, StreamLimits::default())
    }

    /// A peer whose stream may hold `limits` from other peers.
    pub fn with_limits(fds_ok: bool, limits: StreamLimits) -> Self {
        let mut p = DBusPeer {
            fds_ok,
            ..Default::default()
        };
        p.quota.limits = limits;
        p
    }

    fn serial(&mut self) -> u32 {
        self.next_serial = self.next_serial.wrapping_add(1).max(1);
        self.next_serial
    }

    /// A cookie for a rule in the bus's match database.
    pub(crate) fn next_cookie(&mut self) -> u64 {
        self.next_cookie += 1;
        self.next_cookie
    }

    /// Write a message from the driver (`fields` without sender and destination) to
    /// this peer, and show the bus's monitors a copy. A signal the peer has no room
    /// for is lost: signals of the bus are caused by others too, and a peer that does
    /// not keep up misses them rather than growing its stream without bound.
    pub(crate) fn write_driver(
        &mut self,
        out: &mut StreamOut<'_>,
        t: MessageType,
        fields: Fields<'_>,
        body: &Body,
    ) {
        if t == MessageType::Signal && self.quota.pending_bytes() > self.quota.limits.bytes {
            out.lose();
            return;
        }
        let dest = UniqueName::from_id(out.id());
        if !driver_may_tell(out, t, &fields, Some(&dest)) {
            return;
        }
        let serial = self.serial();
        let f = Fields {
            sender: Some(DRIVER),
            destination: Some(&dest),
            signature: &body.sig,
            unix_fds: body.files.as_ref().map_or(0, |f| f.len() as u32),
            ..fields
        };
        let flags = if t == MessageType::MethodCall {
            0
        } else {
            FLAG_NO_REPLY_EXPECTED
        };
        let buf = out.buf();
        let start = buf.len();
        let len = body.bytes.len() as u32;
        header::write_fields(buf, Endian::Little, t, flags, len, serial, &f);
        buf.extend_from_slice(&body.bytes);
        let n = (buf.len() - start) as u64;
        if let Some(files) = &body.files {
            out.attach_files(start, files.clone());
        }
        self.quota.charge(Charge::Requested, n, 0);
        out.echo_output(start, body.files.as_ref());
    }

    pub(crate) fn write_error(
        &mut self,
        out: &mut StreamOut<'_>,
        serial: u32,
        e: &str,
        text: &str,
    ) {
        let f = Fields {
            reply_serial: Some(serial),
            error_name: Some(e),
            ..Default::default()
        };
        self.write_driver(out, MessageType::Error, f, &Body::new().s(text));
    }

    pub(crate) fn write_signal(&mut self, out: &mut StreamOut<'_>, member: &str, body: &Body) {
        let f = Fields {
            path: Some(DRIVER_PATH),
            interface: Some(DRIVER),
            member: Some(member),
            ..Default::default()
        };
        self.write_driver(out, MessageType::Signal, f, body);
    }

    /// Append a D-Bus message (header `h` of `msg`) with `sender` as its sender: as it
    /// is if the bus already wrote that sender into it, else with a rewritten header.
    /// Fds only go to peers that agreed to receive them.
    fn append(
        &mut self,
        out: &mut StreamOut<'_>,
        h: &Header<'_>,
        msg: &[u8],
        sender: &str,
        files: Option<Files>,
        charge: Charge,
    ) -> Result<(), Errno> {
        if files.is_some() && !self.fds_ok {
            return Err(Errno::ECOMM);
        }
        let body = msg.get(h.header_len..h.total_len()).ok_or(Errno::EBADMSG)?;
        // Over the sender's share of this receiver: the sender hears of it, the
        // receiver does not. Checked before copying (up to 128 MiB): the rewritten
        // header is at most the sender field longer.
        let n_fds = files.as_ref().map_or(0, |f| f.len() as u32);
        let most = (h.total_len() + sender.len() + 16) as u64;
        if !self.quota.admits(charge, most, n_fds) {
            return Err(Errno::ENOBUFS);
        }
        // Room for all of it at once: growing by doubling would copy a large
        // message's start several times over, into fresh pages.
        let buf = out.buf_for(most as usize);
        let at = buf.len();
        if h.sender == Some(sender) {
            buf.extend_from_slice(&msg[..h.total_len()]);
        } else {
            header::write(buf, h, Some(sender));
            buf.extend_from_slice(body);
        }
        let len = (buf.len() - at) as u64;
        self.quota.charge(charge, len, n_fds);
        if let Some(f) = files {
            out.attach_files(at, f);
        }
        Ok(())
    }

    /// NameOwnerChanged, if this peer's rules take it (a monitor's, its own).
    fn name_owner_changed(&mut self, out: &mut StreamOut<'_>, name: &str, old: &str, new: &str) {
        let body = Body::new().s(name).s(old).s(new);
        self.driver_broadcast(out, "NameOwnerChanged", &body);
    }

    /// A signal the bus broadcasts (no destination), if this peer's rules take it (a
    /// monitor's, its own).
    pub(crate) fn driver_broadcast(&mut self, out: &mut StreamOut<'_>, member: &str, body: &Body) {
        let f = Fields {
            path: Some(DRIVER_PATH),
            interface: Some(DRIVER),
            member: Some(member),
            sender: Some(DRIVER),
            signature: &body.sig,
            ..Default::default()
        };
        let monitor = out.is_monitor();
        if !monitor
            && (self.rules.is_empty() || !driver_may_tell(out, MessageType::Signal, &f, None))
        {
            return;
        }
        if !monitor || !self.monitor_rules.is_empty() {
            // The signal as a rule sees it (sender and body as a broadcast has them).
            let mut probe = Vec::new();
            let len = body.bytes.len() as u32;
            let t = MessageType::Signal;
            header::write_fields(
                &mut probe,
                Endian::Little,
                t,
                FLAG_NO_REPLY_EXPECTED,
                len,
                1,
                &f,
            );
            let Ok(h) = header::parse(&probe) else {
                return;
            };
            let no = |_: &str| false;
            let taken = if monitor {
                self.monitor_takes(&h, DRIVER, &no, &body.bytes)
            } else {
                self.rules
                    .iter()
                    .any(|(r, _)| r.matches(&h, DRIVER, &no, &body.bytes))
            };
            if !taken {
                return;
            }
        }
        if self.quota.pending_bytes() > self.quota.limits.bytes {
            out.lose();
            return;
        }
        let serial = self.serial();
        let buf = out.buf();
        let start = buf.len();
        let len = body.bytes.len() as u32;
        let t = MessageType::Signal;
        header::write_fields(
            buf,
            Endian::Little,
            t,
            FLAG_NO_REPLY_EXPECTED,
            len,
            serial,
            &f,
        );
        buf.extend_from_slice(&body.bytes);
        let n = (buf.len() - start) as u64;
        self.quota.charge(Charge::Requested, n, 0);
    }
}

impl StreamPeer for DBusPeer {
    fn deliver(&mut self, out: &mut StreamOut<'_>, d: &Delivery<'_>) -> Result<(), Errno> {
        if d.req.msg.payload_type != payload::DBUS {
            return Err(Errno::EBADMSG);
        }
        // D-Bus has no memfd payloads: the message would arrive without its data.
        if d.req.n_memfds > 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        // Usually one vector (what D-Bus peers send): read it in place.
        let mut parts = message_payload(d.req);
        let first = parts.next().unwrap_or(&[]);
        let joined: Vec<u8>;
        let msg: &[u8] = match parts.next() {
            None => first,
            Some(second) => {
                joined = [first, second]
                    .into_iter()
                    .chain(parts)
                    .flatten()
                    .copied()
                    .collect();
                &joined
            }
        };
        // A D-Bus sender's message (it has facts) was validated when it was read and
        // written again by the bus: each receiver needs only its fields read.
        let h = match d.req.facts.is_some() {
            true => header::parse_validated(msg),
            false => header::parse(msg),
        }
        .map_err(|_| Errno::EBADMSG)?;
        if h.total_len() > msg.len()
            || h.unix_fds as usize != d.files.as_ref().map_or(0, |f| f.len())
        {
            return Err(Errno::EBADMSG);
        }
        let sender = UniqueName::from_id(d.sender_id);
        let monitor = out.is_monitor();
        let body = &msg[h.header_len..h.total_len()];
        // A D-Bus sender's body was checked when it was read (`route.rs`); a native
        // sender's is checked here, before a D-Bus peer (libdbus disconnects on a bad
        // body) sees it: the sender gets EBADMSG.
        if d.req.facts.is_none() {
            kdbus_dbus::marshal::body_validate(body, h.endian, h.signature, h.unix_fds)
                .map_err(|_| Errno::EBADMSG)?;
        }
        let owns = |n: &str| d.sender_owns(n);
        let shown = if monitor {
            self.monitor_takes(&h, &sender, &owns, body)
        } else if d.eavesdrop {
            self.rules
                .iter()
                .any(|(r, _)| r.eavesdrop && r.matches(&h, &sender, &owns, body))
                && may_eavesdrop(out, &h, d)
        } else {
            !d.is_broadcast()
                || self
                    .rules
                    .iter()
                    .any(|(r, _)| r.matches(&h, &sender, &owns, body))
        };
        if !shown {
            return Ok(());
        }
        // A monitor's copy is the monitor's own doing.
        let charge = if monitor { Charge::Requested } else { d.charge };
        self.append(out, &h, msg, &sender, d.files.clone(), charge)
    }

    fn deliver_moved(
        &mut self,
        out: &mut StreamOut<'_>,
        bytes: &[u8],
        files: Option<Files>,
    ) -> Result<(), Errno> {
        let msg: Msg = kdbus_abi::read_struct(bytes).ok_or(Errno::EBADMSG)?;
        let items = bytes
            .get(std::mem::size_of::<Msg>()..msg.size as usize)
            .ok_or(Errno::EBADMSG)?;
        let mut data = Vec::new();
        for it in kdbus_abi::ItemIter::received(items).flatten() {
            if it.type_ == item::PAYLOAD_OFF {
                let v: Vec_ = kdbus_abi::read_struct(it.payload).ok_or(Errno::EBADMSG)?;
                let start = usize::try_from(v.address_or_offset).map_err(|_| Errno::EBADMSG)?;
                let end = start.checked_add(v.size as usize).ok_or(Errno::EBADMSG)?;
                data.extend_from_slice(bytes.get(start..end).ok_or(Errno::EBADMSG)?);
            }
        }
        if msg.payload_type != payload::DBUS {
            return Err(Errno::EBADMSG);
        }
        let h = header::parse(&data).map_err(|_| Errno::EBADMSG)?;
        let sender = UniqueName::from_id(msg.src_id);
        // Already accepted into the activator's queue: not refused now.
        self.append(out, &h, &data, &sender, files, Charge::Requested)
    }

    fn no_reply(&mut self, out: &mut StreamOut<'_>, cookie: u64, dead: bool) {
        // dbus-daemon's words.
        let text = if dead {
            "Message recipient disconnected from message bus without replying"
        } else {
            "Message did not receive a reply (timeout by message bus)"
        };
        self.write_error(out, cookie as u32, ErrName::NoReply.as_str(), text);
    }

    fn name_lost(&mut self, out: &mut StreamOut<'_>, name: &str) {
        self.write_signal(out, "NameLost", &Body::new().s(name));
    }

    fn name_acquired(&mut self, out: &mut StreamOut<'_>, name: &str) {
        self.write_signal(out, "NameAcquired", &Body::new().s(name));
    }

    fn name_changed(&mut self, out: &mut StreamOut<'_>, name: &str, old: u64, new: u64) {
        // Unique names; "" for none (id 0).
        let (o, n) = (UniqueName::from_id(old), UniqueName::from_id(new));
        let o = if old == 0 { "" } else { o.as_str() };
        let n = if new == 0 { "" } else { n.as_str() };
        self.name_owner_changed(out, name, o, n);
    }

    fn conn_changed(&mut self, out: &mut StreamOut<'_>, id: u64, joined: bool) {
        let u = UniqueName::from_id(id);
        if joined {
            self.name_owner_changed(out, &u, "", &u);
        } else {
            self.name_owner_changed(out, &u, &u, "");
        }
    }

    fn observe(&mut self, out: &mut StreamOut<'_>, msgs: &[u8], files: &[(usize, Files)]) {
        // Monitors that did not agree to receive fds get no messages that carry some
        // (as in delivery).
        if !files.is_empty() && !self.fds_ok {
            return;
        }
        if !self.monitor_rules.is_empty() {
            return self.observe_chosen(out, msgs, files);
        }
        let buf = out.buf();
        let at = buf.len();
        buf.extend_from_slice(msgs);
        for (off, f) in files {
            out.attach_files(at + off, f.clone());
        }
        self.quota.charge(Charge::Requested, msgs.len() as u64, 0);
    }

    fn written(&mut self, n: usize) {
        self.quota.written(n as u64);
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
