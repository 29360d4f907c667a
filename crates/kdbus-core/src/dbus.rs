//! D-Bus peers on a kdbus bus, and the bus driver `org.freedesktop.DBus`.
//!
//! A D-Bus client is a connection like any other: it gets a unique id at `Hello` (its
//! unique name is `:1.<id>`), owns names in the same registry, sends and receives
//! through the same delivery code. What differs is the envelope:
//!
//! - what a D-Bus peer sends is turned into a kdbus SEND whose payload (type
//!   `KDBUS_PAYLOAD_DBUS`) is the D-Bus message itself, its header rewritten with the
//!   sender the bus vouches for; method calls expect replies (cookie = serial), replies
//!   answer them (cookie_reply = reply serial), signals without destination are
//!   broadcasts whose bloom filter the bus computes the sd-bus way;
//! - what a D-Bus peer receives is written to its stream as a D-Bus message instead of
//!   into a pool: the payload's header is rewritten (sender `:1.<src>`), bus messages
//!   become D-Bus errors and signals.
//!
//! D-Bus match rules (`AddMatch`) are kept per peer, and also installed in the bus's
//! match database (bloom mask, sender) so broadcasts find the peer; the full rule is
//! checked again before delivery, which removes bloom false positives. Name changes
//! become NameOwnerChanged for every peer whose rules take it, NameAcquired and
//! NameLost for the owners.

use crate::bus::Bus;
use crate::conn::{Conn, ConnState, Files};
use crate::domain::{BusKey, ConnKey, Domain, Request, SendOutcome};
use crate::message::SendRequest;
use crate::meta::{Creds, Peer};
use crate::names::NameEvent;
use crate::pool::{PoolAllocator, PoolQuota};
use crate::queue::RecvQueue;
use crate::stream_quota::{Charge, StreamQuota, STREAM_QUOTA_BYTES};
use kdbus_abi::{cmd, item, msg_flags, name_flags, payload, CmdSend, Errno, ItemWriter, Msg, Vec_};
use kdbus_dbus::bloom::{match_mask, signal_filter, MatchSpec, SignalSpec};
use kdbus_dbus::header::{self, Fields, Header, HeaderError, MessageType, FLAG_NO_REPLY_EXPECTED};
use kdbus_dbus::marshal::{Endian, Reader, Writer};
use kdbus_dbus::names::UniqueName;
use kdbus_dbus::rules::{ArgTest, Rule};
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use zerocopy::IntoBytes;

pub const DRIVER: &str = "org.freedesktop.DBus";
const DRIVER_PATH: &str = "/org/freedesktop/DBus";
/// How long the bus waits for a method reply before answering NoReply itself.
pub const REPLY_TIMEOUT_NS: u64 = 25 * 1_000_000_000;

/// The D-Bus side of a connection.
#[derive(Debug, Default)]
pub struct DBusPeer {
    pub fds_ok: bool,
    /// Installed match rules: (rule, its cookie in the bus's match database).
    pub rules: Vec<(Rule, Option<u64>)>,
    next_serial: u32,
    next_cookie: u64,
    /// What the stream holds unwritten, and whose it is.
    pub quota: StreamQuota,
}

impl DBusPeer {
    fn serial(&mut self) -> u32 {
        self.next_serial = self.next_serial.wrapping_add(1).max(1);
        self.next_serial
    }
}

/// Why a D-Bus client must be disconnected.
#[derive(Debug, thiserror::Error)]
pub enum DBusFatal {
    #[error("invalid message: {0}")]
    Header(#[from] HeaderError),
    #[error("first message was not Hello")]
    NoHello,
    #[error("unix fds do not match the header")]
    Fds,
}

/// Unique name of a connection id.
pub fn unique_name(id: u64) -> String {
    UniqueName::from_id(id).to_string()
}

fn parse_unique(name: &str) -> Option<u64> {
    UniqueName::parse(name)
}

/// A reply under construction: D-Bus body writer plus signature.
struct Body {
    sig: String,
    bytes: Vec<u8>,
    /// Fds going with the message (its `h` values index them).
    files: Option<Files>,
}

impl Body {
    fn new() -> Self {
        Body {
            sig: String::new(),
            bytes: Vec::new(),
            files: None,
        }
    }
    /// A writer continuing the body: alignment counts from the body's start.
    fn w(&mut self) -> Writer<'_> {
        Writer::continuing(&mut self.bytes, Endian::Little, 0)
    }
    fn s(mut self, v: &str) -> Self {
        self.sig.push('s');
        self.w().string(v);
        self
    }
    fn u(mut self, v: u32) -> Self {
        self.sig.push('u');
        self.w().u32(v);
        self
    }
    fn b(mut self, v: bool) -> Self {
        self.sig.push('b');
        self.w().bool(v);
        self
    }
    fn strings(mut self, v: &[String]) -> Self {
        self.sig.push_str("as");
        let mut w = self.w();
        let a = w.array_begin(4);
        for s in v {
            w.string(s);
        }
        w.array_end(a);
        self
    }
}

/// A driver error: D-Bus error name and message.
struct DErr(&'static str, String);

fn err(name: &'static str, msg: impl Into<String>) -> DErr {
    DErr(name, msg.into())
}

const E_FAILED: &str = "org.freedesktop.DBus.Error.Failed";
const E_INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";
const E_NAME_HAS_NO_OWNER: &str = "org.freedesktop.DBus.Error.NameHasNoOwner";
const E_SERVICE_UNKNOWN: &str = "org.freedesktop.DBus.Error.ServiceUnknown";
const E_UNKNOWN_METHOD: &str = "org.freedesktop.DBus.Error.UnknownMethod";
const E_UNKNOWN_INTERFACE: &str = "org.freedesktop.DBus.Error.UnknownInterface";
const E_MATCH_RULE_INVALID: &str = "org.freedesktop.DBus.Error.MatchRuleInvalid";
const E_MATCH_RULE_NOT_FOUND: &str = "org.freedesktop.DBus.Error.MatchRuleNotFound";
const E_ACCESS_DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";
const E_NO_REPLY: &str = "org.freedesktop.DBus.Error.NoReply";
const E_LIMITS_EXCEEDED: &str = "org.freedesktop.DBus.Error.LimitsExceeded";
const E_ADT_UNKNOWN: &str = "org.freedesktop.DBus.Error.AdtAuditDataUnknown";
const E_SELINUX_UNKNOWN: &str = "org.freedesktop.DBus.Error.SELinuxSecurityContextUnknown";
const E_UNKNOWN_PROPERTY: &str = "org.freedesktop.DBus.Error.UnknownProperty";

const INTROSPECTION: &str = r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="org.freedesktop.DBus">
    <method name="Hello"><arg direction="out" type="s"/></method>
    <method name="RequestName"><arg direction="in" type="s"/><arg direction="in" type="u"/><arg direction="out" type="u"/></method>
    <method name="ReleaseName"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
    <method name="StartServiceByName"><arg direction="in" type="s"/><arg direction="in" type="u"/><arg direction="out" type="u"/></method>
    <method name="UpdateActivationEnvironment"><arg direction="in" type="a{ss}"/></method>
    <method name="NameHasOwner"><arg direction="in" type="s"/><arg direction="out" type="b"/></method>
    <method name="ListNames"><arg direction="out" type="as"/></method>
    <method name="ListActivatableNames"><arg direction="out" type="as"/></method>
    <method name="AddMatch"><arg direction="in" type="s"/></method>
    <method name="RemoveMatch"><arg direction="in" type="s"/></method>
    <method name="GetNameOwner"><arg direction="in" type="s"/><arg direction="out" type="s"/></method>
    <method name="ListQueuedOwners"><arg direction="in" type="s"/><arg direction="out" type="as"/></method>
    <method name="GetConnectionUnixUser"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
    <method name="GetConnectionUnixProcessID"><arg direction="in" type="s"/><arg direction="out" type="u"/></method>
    <method name="GetAdtAuditSessionData"><arg direction="in" type="s"/><arg direction="out" type="ay"/></method>
    <method name="GetConnectionSELinuxSecurityContext"><arg direction="in" type="s"/><arg direction="out" type="ay"/></method>
    <method name="GetConnectionCredentials"><arg direction="in" type="s"/><arg direction="out" type="a{sv}"/></method>
    <method name="ReloadConfig"/>
    <method name="GetId"><arg direction="out" type="s"/></method>
    <signal name="NameOwnerChanged"><arg type="s"/><arg type="s"/><arg type="s"/></signal>
    <signal name="NameLost"><arg type="s"/></signal>
    <signal name="NameAcquired"><arg type="s"/></signal>
    <property name="Features" type="as" access="read"/>
    <property name="Interfaces" type="as" access="read"/>
  </interface>
  <interface name="org.freedesktop.DBus.Monitoring">
    <method name="BecomeMonitor"><arg direction="in" type="as"/><arg direction="in" type="u"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg direction="out" type="s"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping"/>
    <method name="GetMachineId"><arg direction="out" type="s"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Properties">
    <method name="Get"><arg direction="in" type="s"/><arg direction="in" type="s"/><arg direction="out" type="v"/></method>
    <method name="GetAll"><arg direction="in" type="s"/><arg direction="out" type="a{sv}"/></method>
    <method name="Set"><arg direction="in" type="s"/><arg direction="in" type="s"/><arg direction="in" type="v"/></method>
  </interface>
</node>
"#;

impl Domain {
    /// A D-Bus client said Hello: make it a connection on `bus`. Returns its key; the
    /// Hello reply and NameAcquired are already in its output.
    pub fn dbus_hello(
        &mut self,
        bus_key: BusKey,
        peer: &Peer,
        fds_ok: bool,
        serial: u32,
    ) -> Result<ConnKey, Errno> {
        if !self.buses.contains_key(&bus_key) {
            return Err(Errno::ESHUTDOWN);
        }
        let usage = self.users.entry(peer.creds.uid).or_default();
        if !peer.privileged && usage.conns >= kdbus_abi::limits::USER_MAX_CONN {
            return Err(Errno::EMFILE);
        }
        usage.conns += 1;
        let key = self.next_key();
        let bus = self.buses.get_mut(&bus_key).ok_or(Errno::ESHUTDOWN)?;
        let id = bus.next_conn_id;
        bus.next_conn_id += 1;
        bus.conns.insert(id, key);
        bus.dbus_peers.insert(key);
        let conn = Conn {
            key,
            id,
            bus: bus_key,
            flags: kdbus_abi::hello_flags::ACCEPT_FD,
            attach_send: kdbus_abi::attach::ANY,
            attach_recv: 0,
            peer: peer.clone(),
            description: None,
            state: ConnState::Active,
            // D-Bus peers get D-Bus messages on their stream: no pool to manage.
            pool: PoolAllocator::new(0),
            quota: PoolQuota::new(),
            mem: Box::new(crate::memory::VecPool::new(0)),
            queue: RecvQueue::new(),
            queued_at: HashMap::new(),
            owed: HashMap::new(),
            awaited: HashSet::new(),
            dropped_msgs: 0,
            dropped_told: 0,
            flush_stamp: 0,
            out: Vec::new(),
            out_fds: Vec::new(),
            dirty: false,
            special_name: None,
            dbus: Some(Box::new(DBusPeer {
                fds_ok,
                ..Default::default()
            })),
        };
        self.conns.insert(key, Box::new(conn));
        let name = unique_name(id);
        self.dbus_reply(key, serial, Body::new().s(&name));
        self.dbus_driver_signal(key, "NameAcquired", Body::new().s(&name));
        let p = kdbus_abi::NotifyIdChange {
            id,
            flags: kdbus_abi::hello_flags::ACCEPT_FD,
        };
        let n = crate::matches::Notification::IdAdd { id };
        self.notify(bus_key, n, item::ID_ADD, p.as_bytes());
        self.dbus_name_owner_changed(bus_key, &name, "", &name);
        Ok(key)
    }

    /// One complete D-Bus message from connection `key` (after Hello). An error means
    /// the client broke the protocol and must be disconnected.
    pub fn dbus_message(
        &mut self,
        key: ConnKey,
        msg: &[u8],
        fds: Vec<OwnedFd>,
        creds: Creds,
    ) -> Result<(), DBusFatal> {
        let h = match header::parse(msg) {
            Ok(h) => h,
            Err(HeaderError::UnknownType) => return Ok(()), // the specification: ignore
            Err(e) => return Err(e.into()),
        };
        if h.unix_fds as usize != fds.len() {
            return Err(DBusFatal::Fds);
        }
        let Some(conn) = self.conns.get(&key) else {
            return Ok(());
        };
        if !conn.is_active() {
            return Ok(());
        }
        if conn.flags & kdbus_abi::hello_flags::MONITOR != 0 {
            // Monitors only watch (dbus-daemon disconnects them; we drop).
            return Ok(());
        }
        let body = &msg[h.header_len..h.total_len().min(msg.len())];
        if h.destination == Some(DRIVER) {
            let bus_key = conn.bus;
            let sender = UniqueName::from_id(conn.id);
            if self
                .buses
                .get(&bus_key)
                .is_some_and(|b| !b.monitors.is_empty())
            {
                let mut copy = Vec::with_capacity(msg.len() + 16);
                header::write(&mut copy, &h, Some(&sender));
                copy.extend_from_slice(body);
                // Fds sent to the bus itself go nowhere else; monitors see them.
                let files = (!fds.is_empty()).then(|| Files::from(fds));
                self.dbus_monitors_copy(bus_key, &copy, files.as_ref(), None);
            }
            if h.msg_type == MessageType::MethodCall {
                self.driver_call(key, &h, body);
            }
            return Ok(());
        }
        self.dbus_route(key, &h, body, fds, creds);
        Ok(())
    }

    /// Send a D-Bus peer's message on into the bus.
    fn dbus_route(
        &mut self,
        key: ConnKey,
        h: &Header<'_>,
        body: &[u8],
        fds: Vec<OwnedFd>,
        creds: Creds,
    ) {
        let Some(src_id) = self.conns.get(&key).map(|c| c.id) else {
            return;
        };
        let sender = UniqueName::from_id(src_id);
        let expects = h.msg_type == MessageType::MethodCall && !h.no_reply_expected();
        // Destination.
        let (dst_id, dst_name) = match h.destination {
            None if h.msg_type == MessageType::Signal => (kdbus_abi::DST_ID_BROADCAST, None),
            None => return, // a call or reply to nobody: nothing to do (dbus-daemon drops it too)
            Some(d) => match parse_unique(d) {
                Some(id) if d.starts_with(':') => (id, None),
                _ if d.starts_with(':') => {
                    if expects {
                        self.dbus_error(
                            key,
                            h.serial,
                            E_SERVICE_UNKNOWN,
                            &format!("The name {d} was not provided by any .service files"),
                        );
                    }
                    return;
                }
                _ => (kdbus_abi::DST_ID_NAME, Some(d)),
            },
        };
        // Replies must answer something pending, or they go nowhere.
        let mut cookie_reply = 0;
        if matches!(h.msg_type, MessageType::MethodReturn | MessageType::Error) {
            let Some(rs) = h.reply_serial else { return };
            let Some(dst_key) = self.dbus_conn_of(key, dst_id) else {
                return;
            };
            let pending = self
                .conns
                .get(&key)
                .is_some_and(|c| c.owed.contains_key(&(dst_key, rs as u64)));
            if !pending {
                tracing::debug!(conn = key, "dropping a reply nobody waits for");
                return;
            }
            cookie_reply = rs as u64;
        }
        let mut flags = 0;
        let mut timeout_or_reply = cookie_reply;
        if expects {
            flags |= msg_flags::EXPECT_REPLY;
            timeout_or_reply = self.clock.now().monotonic_ns + REPLY_TIMEOUT_NS;
        }
        if h.flags & header::FLAG_NO_AUTO_START != 0 {
            flags |= msg_flags::NO_AUTO_START;
        }
        let bloom = if dst_id == kdbus_abi::DST_ID_BROADCAST {
            flags |= msg_flags::SIGNAL;
            let bus = self.conns.get(&key).and_then(|c| self.buses.get(&c.bus));
            let params = bus.map(|b| b.bloom).unwrap_or_default();
            let args: Vec<&str> = kdbus_dbus::rules::string_args(body, h.endian, h.signature, 64)
                .into_iter()
                .map_while(|a| a.map(|(_, v)| v))
                .collect();
            let spec = SignalSpec {
                interface: h.interface,
                member: h.member,
                path: h.path,
                args: &args,
            };
            Some(signal_filter(params, &spec))
        } else {
            None
        };
        let msg = Msg {
            size: 0,
            flags,
            priority: 0,
            dst_id,
            src_id: 0,
            payload_type: payload::DBUS,
            cookie: h.serial as u64,
            timeout_or_cookie_reply: timeout_or_reply,
        };
        // The payload: the message with the sender the bus vouches for, written into
        // the SEND in the domain's reused buffer.
        let mut send = std::mem::take(&mut self.send_scratch);
        encode_send(
            &mut send,
            &msg,
            dst_name,
            bloom.as_ref().map(|b| b.words()),
            fds.len(),
            |out| {
                header::write(out, h, Some(&sender));
                out.extend_from_slice(body);
            },
        );
        let req = Request {
            cmd: cmd::SEND,
            flags: 0,
            req_id: 0,
            body: &send,
            creds,
        };
        let mut fds = fds;
        let sent = self.cmd_send(key, &req, &mut fds);
        if send.capacity() <= SEND_SCRATCH_KEEP_BYTES {
            self.send_scratch = send;
        }
        match sent {
            Ok(SendOutcome::Done(_)) | Ok(SendOutcome::Pending) => {}
            Err(e) if expects => {
                let (name, text) = match e {
                    Errno::ESRCH | Errno::ENXIO | Errno::EADDRNOTAVAIL => (
                        E_SERVICE_UNKNOWN,
                        format!(
                            "The name {} was not provided by any .service files",
                            h.destination.unwrap_or("")
                        ),
                    ),
                    Errno::ENOBUFS | Errno::EXFULL | Errno::EMLINK | Errno::EMFILE => {
                        (E_LIMITS_EXCEEDED, "Limits exceeded".to_string())
                    }
                    Errno::EPERM => (E_ACCESS_DENIED, "Access denied".to_string()),
                    e => (E_FAILED, format!("Cannot deliver the message: {e}")),
                };
                self.dbus_error(key, h.serial, name, &text);
            }
            Err(e) => tracing::debug!(conn = key, %e, "D-Bus message not delivered"),
        }
    }

    /// The connection key of unique id `id` on `key`'s bus.
    fn dbus_conn_of(&self, key: ConnKey, id: u64) -> Option<ConnKey> {
        let bus = self.conns.get(&key)?.bus;
        self.buses.get(&bus)?.conns.get(&id).copied()
    }

    /// Deliver a message to a D-Bus peer: rewrite its D-Bus payload's header with the
    /// sender's unique name and append it to the peer's stream. Broadcasts are checked
    /// against the peer's own rules first.
    pub(crate) fn dbus_deliver(
        &mut self,
        dst_key: ConnKey,
        req: &SendRequest<'_>,
        sender_id: u64,
        charge: Charge,
        files: Option<Files>,
    ) -> Result<(), Errno> {
        if req.msg.payload_type != payload::DBUS {
            return Err(Errno::EBADMSG);
        }
        // D-Bus has no memfd payloads: the message would arrive without its data.
        if req.n_memfds > 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        // Usually one vector (what D-Bus peers send): read it in place.
        let mut parts = crate::message::message_payload(req);
        let first = parts.next().unwrap_or(&[]);
        let joined: Vec<u8>;
        let payload: &[u8] = match parts.next() {
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
        let h = header::parse(payload).map_err(|_| Errno::EBADMSG)?;
        if h.total_len() > payload.len()
            || h.unix_fds as usize != files.as_ref().map_or(0, |f| f.len())
        {
            return Err(Errno::EBADMSG);
        }
        let sender = UniqueName::from_id(sender_id);
        let body = &payload[h.header_len..h.total_len()];
        let broadcast = req.msg.dst_id == kdbus_abi::DST_ID_BROADCAST;
        let bus_key = self.conns.get(&dst_key).ok_or(Errno::ENXIO)?.bus;
        if broadcast
            || self
                .conns
                .get(&dst_key)
                .is_some_and(|c| c.flags & kdbus_abi::hello_flags::MONITOR != 0)
        {
            let bus = self.buses.get(&bus_key).ok_or(Errno::ESHUTDOWN)?;
            let src_key = bus.conns.get(&sender_id).copied();
            let owns = |n: &str| {
                bus.names
                    .lookup(n)
                    .is_some_and(|e| Some(e.owner) == src_key)
            };
            let dst = self.conns.get(&dst_key).ok_or(Errno::ENXIO)?;
            let peer = dst.dbus.as_ref().ok_or(Errno::EBADMSG)?;
            let monitor = dst.flags & kdbus_abi::hello_flags::MONITOR != 0;
            if !monitor
                && !peer
                    .rules
                    .iter()
                    .any(|(r, _)| r.matches(&h, &sender, &owns, body))
            {
                return Ok(());
            }
        }
        // A monitor's copy is the monitor's own doing.
        let charge = if self
            .conns
            .get(&dst_key)
            .is_some_and(|c| c.flags & kdbus_abi::hello_flags::MONITOR != 0)
        {
            Charge::Requested
        } else {
            charge
        };
        self.dbus_append(dst_key, &h, payload, &sender, files, charge)
    }

    /// Append a D-Bus message (header `h` of `msg`) to a peer's stream with `sender`
    /// as its sender: as it is if the bus already wrote that sender into it, else with
    /// a rewritten header. Fds only go to peers that agreed to receive them.
    fn dbus_append(
        &mut self,
        dst_key: ConnKey,
        h: &Header<'_>,
        msg: &[u8],
        sender: &str,
        files: Option<Files>,
        charge: Charge,
    ) -> Result<(), Errno> {
        let dst = self.conns.get_mut(&dst_key).ok_or(Errno::ENXIO)?;
        let fds_ok = dst.dbus.as_ref().is_some_and(|p| p.fds_ok);
        if files.is_some() && !fds_ok {
            return Err(Errno::ECOMM);
        }
        let body = msg.get(h.header_len..h.total_len()).ok_or(Errno::EBADMSG)?;
        // Over the sender's share of this receiver: the sender hears of it, the
        // receiver does not. Checked before copying (up to 128 MiB): the rewritten
        // header is at most the sender field longer.
        let n_fds = files.as_ref().map_or(0, |f| f.len() as u32);
        let most = (h.total_len() + sender.len() + 16) as u64;
        if !dst
            .dbus
            .as_ref()
            .is_some_and(|p| p.quota.admits(charge, most, n_fds))
        {
            return Err(Errno::ENOBUFS);
        }
        let out = self.outbox.buf(dst);
        let at = out.len();
        if h.sender == Some(sender) {
            out.extend_from_slice(&msg[..h.total_len()]);
        } else {
            header::write(out, h, Some(sender));
            out.extend_from_slice(body);
        }
        let len = (out.len() - at) as u64;
        if let Some(p) = dst.dbus.as_mut() {
            p.quota.charge(charge, len, n_fds);
        }
        if let Some(f) = files {
            dst.out_fds.push((at, f));
        }
        Ok(())
    }

    /// The broker wrote `n` bytes of a D-Bus peer's stream.
    pub fn dbus_written(&mut self, key: ConnKey, n: usize) {
        if let Some(p) = self.conns.get_mut(&key).and_then(|c| c.dbus.as_mut()) {
            p.quota.written(n as u64);
        }
    }

    /// A message that sat in a native connection's pool (an activator's queue) moves
    /// to a D-Bus peer: take its D-Bus payload out of the kdbus layout.
    pub(crate) fn dbus_deliver_pool_message(
        &mut self,
        dst_key: ConnKey,
        bytes: &[u8],
        files: Option<Files>,
    ) -> Result<(), Errno> {
        let msg: Msg = kdbus_abi::read_struct(bytes).ok_or(Errno::EBADMSG)?;
        let items = bytes
            .get(std::mem::size_of::<Msg>()..msg.size as usize)
            .ok_or(Errno::EBADMSG)?;
        let mut payload = Vec::new();
        for it in kdbus_abi::ItemIter::received(items).flatten() {
            if it.type_ == item::PAYLOAD_OFF {
                let v: Vec_ = kdbus_abi::read_struct(it.payload).ok_or(Errno::EBADMSG)?;
                let start = usize::try_from(v.address_or_offset).map_err(|_| Errno::EBADMSG)?;
                let end = start.checked_add(v.size as usize).ok_or(Errno::EBADMSG)?;
                payload.extend_from_slice(bytes.get(start..end).ok_or(Errno::EBADMSG)?);
            }
        }
        if msg.payload_type != payload::DBUS {
            return Err(Errno::EBADMSG);
        }
        let h = header::parse(&payload).map_err(|_| Errno::EBADMSG)?;
        // Already accepted into the activator's queue: not refused now.
        self.dbus_append(
            dst_key,
            &h,
            &payload,
            &UniqueName::from_id(msg.src_id),
            files,
            Charge::Requested,
        )
    }

    /// REPLY_TIMEOUT / REPLY_DEAD for a D-Bus peer: the NoReply error.
    pub(crate) fn dbus_no_reply(&mut self, dst_key: ConnKey, cookie_reply: u64, dead: bool) {
        let text = if dead {
            "The peer went away before replying"
        } else {
            "Did not receive a reply. Possible causes include: the remote application did not send a reply, the message bus security policy blocked the reply, the reply timeout expired, or the network connection was broken."
        };
        self.dbus_error(dst_key, cookie_reply as u32, E_NO_REPLY, text);
    }

    // ------------------------------------------------------------ driver output

    fn dbus_write(&mut self, key: ConnKey, t: MessageType, fields: Fields<'_>, body: &Body) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let Some(peer) = conn.dbus.as_mut() else {
            return;
        };
        if t == MessageType::Signal && peer.quota.pending_bytes() > STREAM_QUOTA_BYTES {
            // Signals of the bus are caused by others too: a peer that does not keep
            // up misses them rather than growing its stream without bound.
            conn.dropped_msgs += 1;
            return;
        }
        let serial = peer.serial();
        let dest = unique_name(conn.id);
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
        let out = self.outbox.buf(conn);
        let start = out.len();
        header::write_fields(
            out,
            Endian::Little,
            t,
            flags,
            body.bytes.len() as u32,
            serial,
            &f,
        );
        out.extend_from_slice(&body.bytes);
        let len = (out.len() - start) as u64;
        if let Some(files) = &body.files {
            conn.out_fds.push((start, files.clone()));
        }
        if let Some(p) = conn.dbus.as_mut() {
            p.quota.charge(Charge::Requested, len, 0);
        }
        let bus_key = conn.bus;
        if self
            .buses
            .get(&bus_key)
            .is_some_and(|b| !b.monitors.is_empty())
        {
            let copy = self
                .conns
                .get(&key)
                .map(|c| c.out[start..].to_vec())
                .unwrap_or_default();
            self.dbus_monitors_copy(bus_key, &copy, body.files.as_ref(), Some(key));
        }
    }

    /// Give D-Bus monitors a copy of a message the driver sent or received (peers'
    /// messages reach monitors through the delivery code).
    /// Monitors that did not agree to receive fds get no messages that carry some (as
    /// in delivery).
    fn dbus_monitors_copy(
        &mut self,
        bus_key: BusKey,
        msg: &[u8],
        files: Option<&Files>,
        except: Option<ConnKey>,
    ) {
        let Some(bus) = self.buses.get(&bus_key) else {
            return;
        };
        for m in bus.monitors.clone() {
            if Some(m) == except {
                continue;
            }
            let Some(c) = self.conns.get_mut(&m) else {
                continue;
            };
            let Some(fds_ok) = c.dbus.as_ref().map(|p| p.fds_ok) else {
                continue;
            };
            if files.is_some() && !fds_ok {
                continue;
            }
            let out = self.outbox.buf(c);
            let at = out.len();
            out.extend_from_slice(msg);
            if let Some(f) = files {
                c.out_fds.push((at, f.clone()));
            }
            if let Some(p) = c.dbus.as_mut() {
                p.quota.charge(Charge::Requested, msg.len() as u64, 0);
            }
        }
    }

    fn dbus_reply(&mut self, key: ConnKey, reply_serial: u32, body: Body) {
        let f = Fields {
            reply_serial: Some(reply_serial),
            ..Default::default()
        };
        self.dbus_write(key, MessageType::MethodReturn, f, &body);
    }

    fn dbus_error(&mut self, key: ConnKey, reply_serial: u32, name: &str, text: &str) {
        let f = Fields {
            reply_serial: Some(reply_serial),
            error_name: Some(name),
            ..Default::default()
        };
        self.dbus_write(key, MessageType::Error, f, &Body::new().s(text));
    }

    fn dbus_driver_signal(&mut self, key: ConnKey, member: &str, body: Body) {
        let f = Fields {
            path: Some(DRIVER_PATH),
            interface: Some(DRIVER),
            member: Some(member),
            ..Default::default()
        };
        self.dbus_write(key, MessageType::Signal, f, &body);
    }

    /// NameOwnerChanged to every D-Bus peer on the bus whose rules take it.
    fn dbus_name_owner_changed(&mut self, bus_key: BusKey, name: &str, old: &str, new: &str) {
        let Some(bus) = self.buses.get(&bus_key) else {
            return;
        };
        if bus.dbus_peers.is_empty() {
            return;
        }
        let body = Body::new().s(name).s(old).s(new);
        // The signal as a rule sees it (sender and body as a broadcast would have them).
        let mut probe = Vec::new();
        let f = Fields {
            path: Some(DRIVER_PATH),
            interface: Some(DRIVER),
            member: Some("NameOwnerChanged"),
            sender: Some(DRIVER),
            signature: "sss",
            ..Default::default()
        };
        header::write_fields(
            &mut probe,
            Endian::Little,
            MessageType::Signal,
            FLAG_NO_REPLY_EXPECTED,
            body.bytes.len() as u32,
            1,
            &f,
        );
        let Ok(h) = header::parse(&probe) else { return };
        let no = |_: &str| false;
        let targets: Vec<ConnKey> = bus
            .dbus_peers
            .iter()
            .filter_map(|k| self.conns.get(k))
            .filter(|c| c.dbus.is_some())
            .filter(|c| {
                c.flags & kdbus_abi::hello_flags::MONITOR != 0
                    || c.dbus.as_ref().is_some_and(|p| {
                        p.rules
                            .iter()
                            .any(|(r, _)| r.matches(&h, DRIVER, &no, &body.bytes))
                    })
            })
            .map(|c| c.key)
            .collect();
        for t in targets {
            let Some(conn) = self.conns.get_mut(&t) else {
                continue;
            };
            let Some(peer) = conn.dbus.as_mut() else {
                continue;
            };
            if peer.quota.pending_bytes() > STREAM_QUOTA_BYTES {
                conn.dropped_msgs += 1; // as in dbus_write
                continue;
            }
            let serial = peer.serial();
            let out = self.outbox.buf(conn);
            let start = out.len();
            header::write_fields(
                out,
                Endian::Little,
                MessageType::Signal,
                FLAG_NO_REPLY_EXPECTED,
                body.bytes.len() as u32,
                serial,
                &f,
            );
            out.extend_from_slice(&body.bytes);
            let len = (out.len() - start) as u64;
            if let Some(p) = conn.dbus.as_mut() {
                p.quota.charge(Charge::Requested, len, 0);
            }
        }
    }

    /// What a registry change means for D-Bus peers: NameOwnerChanged, NameLost,
    /// NameAcquired.
    pub(crate) fn dbus_name_event(&mut self, bus_key: BusKey, ev: &NameEvent) {
        if self
            .buses
            .get(&bus_key)
            .is_none_or(|b| b.dbus_peers.is_empty())
        {
            return;
        }
        let name_of = |d: &Domain, k: ConnKey| {
            d.conns
                .get(&k)
                .map(|c| unique_name(c.id))
                .unwrap_or_default()
        };
        let (name, old, new) = match ev {
            NameEvent::Add { name, owner, .. } => (name, None, Some(*owner)),
            NameEvent::Remove { name, owner, .. } => (name, Some(*owner), None),
            NameEvent::Change { name, old, new, .. } => (name, Some(*old), Some(*new)),
            NameEvent::Move { .. } => return,
        };
        let old_n = old.map(|k| name_of(self, k)).unwrap_or_default();
        let new_n = new.map(|k| name_of(self, k)).unwrap_or_default();
        if let Some(o) = old {
            self.dbus_driver_signal(o, "NameLost", Body::new().s(name));
        }
        if let Some(n) = new {
            self.dbus_driver_signal(n, "NameAcquired", Body::new().s(name));
        }
        self.dbus_name_owner_changed(bus_key, name, &old_n, &new_n);
    }

    /// A connection left: its unique name goes away for D-Bus peers.
    pub(crate) fn dbus_conn_gone(&mut self, bus_key: BusKey, id: u64) {
        if self
            .buses
            .get(&bus_key)
            .is_none_or(|b| b.dbus_peers.is_empty())
        {
            return;
        }
        let n = unique_name(id);
        self.dbus_name_owner_changed(bus_key, &n, &n, "");
    }

    // ------------------------------------------------------------ the driver

    fn driver_call(&mut self, key: ConnKey, h: &Header<'_>, body: &[u8]) {
        let member = h.member.unwrap_or("");
        let iface = h.interface;
        let reply = self.driver_dispatch(key, iface, member, h, body);
        if h.no_reply_expected() {
            return;
        }
        match reply {
            Ok(Some(b)) => self.dbus_reply(key, h.serial, b),
            Ok(None) => {}
            Err(DErr(name, text)) => self.dbus_error(key, h.serial, name, &text),
        }
    }

    fn driver_dispatch(
        &mut self,
        key: ConnKey,
        iface: Option<&str>,
        member: &str,
        h: &Header<'_>,
        body: &[u8],
    ) -> Result<Option<Body>, DErr> {
        let mut r = Reader::new(body, h.endian);
        let sig = h.signature;
        let want = |s: &str| {
            if sig == s {
                Ok(())
            } else {
                Err(err(
                    E_INVALID_ARGS,
                    format!("Call to {member} has wrong args ({sig}, expected {s})"),
                ))
            }
        };
        let bus_key = self
            .conns
            .get(&key)
            .map(|c| c.bus)
            .ok_or_else(|| err(E_FAILED, "gone"))?;
        match (iface.unwrap_or(DRIVER), member) {
            (DRIVER, "Hello") => Err(err(E_FAILED, "Already handled an Hello message")),
            (DRIVER, "RequestName") => {
                want("su")?;
                let (name, flags) = (arg_s(&mut r)?, r.u32().map_err(bad_args)?);
                Ok(Some(
                    Body::new().u(self.driver_request_name(key, name, flags)?),
                ))
            }
            (DRIVER, "ReleaseName") => {
                want("s")?;
                let name = arg_s(&mut r)?;
                check_well_known(name, "release")?;
                if name == DRIVER {
                    return Err(err(E_INVALID_ARGS, "Cannot release the org.freedesktop.DBus service because it is owned by the bus"));
                }
                let mut events = Vec::new();
                let res = self
                    .buses
                    .get_mut(&bus_key)
                    .map(|b| b.names.release(key, name, &mut events));
                self.names_apply(bus_key, events);
                let code = match res {
                    Some(Ok(())) => 1,
                    Some(Err(Errno::ESRCH)) => 2,
                    _ => 3,
                };
                Ok(Some(Body::new().u(code)))
            }
            (DRIVER, "ListNames") => {
                want("")?;
                let bus = self.driver_bus(bus_key)?;
                let mut names = vec![DRIVER.to_string()];
                names.extend(
                    bus.conns
                        .iter()
                        .filter(|(_, k)| self.conns.get(k).is_some_and(|c| c.is_ordinary()))
                        .map(|(id, _)| unique_name(*id)),
                );
                names.extend(
                    bus.names
                        .entries()
                        .filter(|e| e.flags & name_flags::ACTIVATOR == 0)
                        .map(|e| e.name.to_string()),
                );
                Ok(Some(Body::new().strings(&names)))
            }
            (DRIVER, "ListActivatableNames") => {
                want("")?;
                let bus = self.driver_bus(bus_key)?;
                let mut names = vec![DRIVER.to_string()];
                names.extend(
                    bus.names
                        .entries()
                        .filter(|e| e.activator.is_some())
                        .map(|e| e.name.to_string()),
                );
                Ok(Some(Body::new().strings(&names)))
            }
            (DRIVER, "NameHasOwner") => {
                want("s")?;
                let name = arg_s(&mut r)?;
                Ok(Some(
                    Body::new().b(self.driver_owner(bus_key, name).is_some()),
                ))
            }
            (DRIVER, "GetNameOwner") => {
                want("s")?;
                let name = arg_s(&mut r)?;
                match self.driver_owner(bus_key, name) {
                    Some(o) => Ok(Some(Body::new().s(&o))),
                    None => Err(err(
                        E_NAME_HAS_NO_OWNER,
                        format!("Could not get owner of name '{name}': no such name"),
                    )),
                }
            }
            (DRIVER, "ListQueuedOwners") => {
                want("s")?;
                let name = arg_s(&mut r)?;
                let bus = self.driver_bus(bus_key)?;
                let owners: Vec<String> = match bus.names.lookup(name) {
                    Some(e) if e.flags & name_flags::ACTIVATOR == 0 => std::iter::once(e.owner)
                        .chain(e.queue.iter().map(|(c, _)| *c))
                        .filter_map(|k| self.conns.get(&k).map(|c| unique_name(c.id)))
                        .collect(),
                    _ if name == DRIVER => vec![DRIVER.to_string()],
                    _ if self.driver_owner(bus_key, name).is_some() && name.starts_with(':') => {
                        vec![name.to_string()]
                    }
                    _ => {
                        return Err(err(
                            E_NAME_HAS_NO_OWNER,
                            format!("Could not get owners of name '{name}': no such name"),
                        ))
                    }
                };
                Ok(Some(Body::new().strings(&owners)))
            }
            (DRIVER, "StartServiceByName") => {
                want("su")?;
                let name = arg_s(&mut r)?;
                // Only names with an activator can be started (dbus-daemon: with a
                // .service file): 1 if the activator holds the name (the service
                // starts when its activator sees the queue), 2 if it already runs.
                let bus = self.driver_bus(bus_key)?;
                match bus.names.lookup(name) {
                    Some(e) if e.activator.is_some() && e.flags & name_flags::ACTIVATOR != 0 => {
                        Ok(Some(Body::new().u(1)))
                    }
                    Some(e) if e.activator.is_some() => Ok(Some(Body::new().u(2))),
                    _ => Err(err(
                        E_SERVICE_UNKNOWN,
                        format!("The name {name} was not provided by any .service files"),
                    )),
                }
            }
            (DRIVER, "UpdateActivationEnvironment") => {
                want("a{ss}")?;
                Ok(Some(Body::new()))
            }
            (DRIVER, "GetConnectionUnixUser") | (DRIVER, "GetConnectionUnixProcessID") => {
                want("s")?;
                let name = arg_s(&mut r)?;
                let (c, _) = self.driver_creds(bus_key, name)?;
                let v = if member.ends_with("User") {
                    c.uid
                } else {
                    c.pid
                };
                Ok(Some(Body::new().u(v)))
            }
            (DRIVER, "GetConnectionCredentials") => {
                want("s")?;
                let name = arg_s(&mut r)?;
                let (c, pidfd) = self.driver_creds(bus_key, name)?;
                // ProcessFD only for callers that agreed to receive fds (dbus-daemon).
                let caller_takes_fds = self
                    .conns
                    .get(&key)
                    .and_then(|c| c.dbus.as_ref())
                    .is_some_and(|p| p.fds_ok);
                let pidfd = pidfd.filter(|f| caller_takes_fds && f.len() == 1);
                let mut b = Body::new();
                b.sig.push_str("a{sv}");
                let mut w = b.w();
                let a = w.array_begin(8);
                w.align(8);
                w.string("UnixUserID");
                w.variant_u32(c.uid);
                w.align(8);
                w.string("ProcessID");
                w.variant_u32(c.pid);
                w.align(8);
                w.string("UnixGroupIDs");
                w.signature("au");
                let g = w.array_begin(4);
                w.u32(c.gid);
                w.array_end(g);
                if pidfd.is_some() {
                    w.align(8);
                    w.string("ProcessFD");
                    w.variant_fd(0);
                }
                w.array_end(a);
                b.files = pidfd;
                Ok(Some(b))
            }
            (DRIVER, "GetAdtAuditSessionData") => {
                want("s")?;
                let name = arg_s(&mut r)?;
                self.driver_conn(bus_key, name)?;
                Err(err(E_ADT_UNKNOWN, "Could not determine audit session data"))
            }
            (DRIVER, "GetConnectionSELinuxSecurityContext") => {
                want("s")?;
                let name = arg_s(&mut r)?;
                self.driver_conn(bus_key, name)?;
                Err(err(
                    E_SELINUX_UNKNOWN,
                    "Could not determine security context",
                ))
            }
            (DRIVER, "AddMatch") => {
                want("s")?;
                let text = arg_s(&mut r)?;
                self.driver_add_match(key, text)?;
                Ok(Some(Body::new()))
            }
            (DRIVER, "RemoveMatch") => {
                want("s")?;
                let text = arg_s(&mut r)?;
                self.driver_remove_match(key, text)?;
                Ok(Some(Body::new()))
            }
            (DRIVER, "GetId") => {
                want("")?;
                let bus = self.driver_bus(bus_key)?;
                let id: String = bus.id128.iter().map(|b| format!("{b:02x}")).collect();
                Ok(Some(Body::new().s(&id)))
            }
            (DRIVER, "ReloadConfig") => Ok(Some(Body::new())),
            ("org.freedesktop.DBus.Monitoring", "BecomeMonitor") => {
                want("asu")?;
                self.driver_become_monitor(key, bus_key);
                Ok(Some(Body::new()))
            }
            ("org.freedesktop.DBus.Peer", "Ping") => Ok(Some(Body::new())),
            ("org.freedesktop.DBus.Peer", "GetMachineId") => {
                let id = self.machine_id.clone();
                Ok(Some(Body::new().s(&id)))
            }
            ("org.freedesktop.DBus.Introspectable", "Introspect") => {
                Ok(Some(Body::new().s(INTROSPECTION)))
            }
            ("org.freedesktop.DBus.Properties", "Get") => {
                want("ss")?;
                let (i, p) = (arg_s(&mut r)?, arg_s(&mut r)?);
                let v = driver_property(i, p)?;
                let mut b = Body::new();
                b.sig.push('v');
                let mut w = b.w();
                w.signature("as");
                let a = w.array_begin(4);
                for s in v {
                    w.string(s);
                }
                w.array_end(a);
                Ok(Some(b))
            }
            ("org.freedesktop.DBus.Properties", "GetAll") => {
                want("s")?;
                let i = arg_s(&mut r)?;
                let mut b = Body::new();
                b.sig.push_str("a{sv}");
                let mut w = b.w();
                let a = w.array_begin(8);
                if i == DRIVER {
                    for p in ["Features", "Interfaces"] {
                        w.align(8);
                        w.string(p);
                        w.signature("as");
                        let arr = w.array_begin(4);
                        for s in driver_property(i, p)? {
                            w.string(s);
                        }
                        w.array_end(arr);
                    }
                }
                w.array_end(a);
                Ok(Some(b))
            }
            ("org.freedesktop.DBus.Properties", "Set") => {
                Err(err(E_ACCESS_DENIED, "Properties of the bus are read-only"))
            }
            (
                DRIVER
                | "org.freedesktop.DBus.Monitoring"
                | "org.freedesktop.DBus.Peer"
                | "org.freedesktop.DBus.Introspectable"
                | "org.freedesktop.DBus.Properties",
                m,
            ) => Err(err(
                E_UNKNOWN_METHOD,
                format!("{DRIVER} does not understand message {m}"),
            )),
            (i, _) => Err(err(
                E_UNKNOWN_INTERFACE,
                format!("{DRIVER} does not understand interface {i}"),
            )),
        }
    }

    fn driver_request_name(&mut self, key: ConnKey, name: &str, flags: u32) -> Result<u32, DErr> {
        check_well_known(name, "acquire")?;
        if name == DRIVER {
            return Err(err(E_INVALID_ARGS, "Connection is not allowed to own the service \"org.freedesktop.DBus\" because it is reserved for D-Bus' use only"));
        }
        let conn = self.conns.get(&key).ok_or_else(|| err(E_FAILED, "gone"))?;
        let bus_key = conn.bus;
        let bus = self
            .buses
            .get_mut(&bus_key)
            .ok_or_else(|| err(E_FAILED, "no bus"))?;
        if !bus.is_privileged(&conn.peer) {
            return Err(err(
                E_ACCESS_DENIED,
                format!("Connection is not allowed to own the service \"{name}\""),
            ));
        }
        // D-Bus flags: 1 allow replacement, 2 replace existing, 4 do not queue.
        let mut kflags = 0;
        if flags & 1 != 0 {
            kflags |= name_flags::ALLOW_REPLACEMENT;
        }
        if flags & 2 != 0 {
            kflags |= name_flags::REPLACE_EXISTING;
        }
        if flags & 4 == 0 {
            kflags |= name_flags::QUEUE;
        }
        let mut events = Vec::new();
        let res = bus.names.acquire(key, false, name, kflags, &mut events);
        self.names_apply(bus_key, events);
        match res {
            Ok(rf) if rf & name_flags::IN_QUEUE != 0 => Ok(2),
            Ok(_) => Ok(1),
            Err(Errno::EALREADY) => Ok(4),
            Err(Errno::EEXIST) => Ok(3),
            Err(Errno::E2BIG) => Err(err(E_LIMITS_EXCEEDED, "Connection owns too many names")),
            Err(e) => Err(err(E_FAILED, format!("Cannot acquire {name}: {e}"))),
        }
    }

    /// The unique name owning `name` (a unique name owns itself; the driver owns its
    /// own name).
    fn driver_owner(&self, bus_key: BusKey, name: &str) -> Option<String> {
        if name == DRIVER {
            return Some(DRIVER.to_string());
        }
        let bus = self.buses.get(&bus_key)?;
        let key = if name.starts_with(':') {
            *bus.conns.get(&parse_unique(name)?)?
        } else {
            let e = bus.names.lookup(name)?;
            if e.flags & name_flags::ACTIVATOR != 0 {
                return None;
            }
            e.owner
        };
        let c = self.conns.get(&key).filter(|c| c.is_ordinary())?;
        Some(unique_name(c.id))
    }

    /// Credentials of `name`: a connection's, or for the bus itself its creator's.
    /// Credentials of the owner of `name`, and its pidfd if there is one.
    fn driver_creds(&self, bus_key: BusKey, name: &str) -> Result<(Creds, Option<Files>), DErr> {
        let peer = if name == DRIVER {
            &self.driver_bus(bus_key)?.creator
        } else {
            &self.driver_conn(bus_key, name)?.peer
        };
        Ok((peer.creds, peer.pidfd.clone()))
    }

    fn driver_bus(&self, bus_key: BusKey) -> Result<&Bus, DErr> {
        self.buses
            .get(&bus_key)
            .ok_or_else(|| err(E_FAILED, "no bus"))
    }

    fn driver_conn(&self, bus_key: BusKey, name: &str) -> Result<&Conn, DErr> {
        let none = || {
            err(
                E_NAME_HAS_NO_OWNER,
                format!("Could not get owner of name '{name}': no such name"),
            )
        };
        let owner = self.driver_owner(bus_key, name).ok_or_else(none)?;
        let id = parse_unique(&owner).ok_or_else(none)?;
        let key = self
            .buses
            .get(&bus_key)
            .and_then(|b| b.conns.get(&id))
            .ok_or_else(none)?;
        self.conns.get(key).map(|c| &**c).ok_or_else(none)
    }

    /// The D-Bus side of connection `key`, and its bus.
    fn driver_peer(&mut self, key: ConnKey) -> Result<(BusKey, &mut DBusPeer), DErr> {
        let conn = self
            .conns
            .get_mut(&key)
            .ok_or_else(|| err(E_FAILED, "gone"))?;
        let bus = conn.bus;
        let peer = conn
            .dbus
            .as_deref_mut()
            .ok_or_else(|| err(E_FAILED, "not a D-Bus peer"))?;
        Ok((bus, peer))
    }

    fn driver_add_match(&mut self, key: ConnKey, text: &str) -> Result<(), DErr> {
        let rule = Rule::parse(text).map_err(|e| err(E_MATCH_RULE_INVALID, e.to_string()))?;
        let (bus_key, peer) = self.driver_peer(key)?;
        if peer.rules.len() >= kdbus_abi::limits::MATCH_MAX {
            return Err(err(
                E_LIMITS_EXCEEDED,
                "Connection has too many match rules",
            ));
        }
        // Rules that can take broadcasts from peers go into the bus's match database.
        let takes_broadcasts = matches!(rule.msg_type, None | Some(MessageType::Signal))
            && rule.sender.as_deref() != Some(DRIVER);
        let cookie = takes_broadcasts.then(|| {
            peer.next_cookie += 1;
            peer.next_cookie
        });
        let bus = self
            .buses
            .get_mut(&bus_key)
            .ok_or_else(|| err(E_FAILED, "no bus"))?;
        if let Some(cookie) = cookie {
            let items = kernel_rule_items(&rule, bus.bloom);
            bus.matches
                .add(key, cookie, false, &items, bus.bloom.size)
                .map_err(|e| err(E_LIMITS_EXCEEDED, format!("Cannot add the match: {e}")))?;
        }
        if let Some(p) = self.conns.get_mut(&key).and_then(|c| c.dbus.as_mut()) {
            p.rules.push((rule, cookie));
        }
        Ok(())
    }

    fn driver_remove_match(&mut self, key: ConnKey, text: &str) -> Result<(), DErr> {
        let rule = Rule::parse(text).map_err(|e| err(E_MATCH_RULE_INVALID, e.to_string()))?;
        let (bus_key, peer) = self.driver_peer(key)?;
        let i = peer
            .rules
            .iter()
            .position(|(r, _)| *r == rule)
            .ok_or_else(|| {
                err(
                    E_MATCH_RULE_NOT_FOUND,
                    "The given match rule wasn't found and can't be removed",
                )
            })?;
        let (_, cookie) = peer.rules.remove(i);
        if let (Some(c), Some(bus)) = (cookie, self.buses.get_mut(&bus_key)) {
            let _ = bus.matches.remove(key, c);
        }
        Ok(())
    }

    /// BecomeMonitor: the connection gives up its names and matches, sees copies of
    /// everything, and sends nothing more.
    fn driver_become_monitor(&mut self, key: ConnKey, bus_key: BusKey) {
        if let Some(id) = self.conns.get(&key).map(|c| c.id) {
            self.dbus_driver_signal(key, "NameLost", Body::new().s(&unique_name(id)));
        }
        let mut events = Vec::new();
        if let Some(bus) = self.buses.get_mut(&bus_key) {
            bus.names.release_all(key, &mut events);
            bus.matches.remove_conn(key);
            let _ = bus.matches.add(key, 1, false, &[], bus.bloom.size);
            bus.monitors.push(key);
        }
        self.names_apply(bus_key, events);
        if let Some(c) = self.conns.get_mut(&key) {
            c.flags |= kdbus_abi::hello_flags::MONITOR;
            if let Some(p) = c.dbus.as_mut() {
                p.rules.clear();
            }
        }
    }
}

fn bad_args(_: kdbus_dbus::marshal::MarshalError) -> DErr {
    err(E_INVALID_ARGS, "Malformed arguments")
}

fn arg_s<'a>(r: &mut Reader<'a>) -> Result<&'a str, DErr> {
    r.string().map_err(bad_args)
}

fn check_well_known(name: &str, verb: &str) -> Result<(), DErr> {
    if name.starts_with(':') {
        return Err(err(
            E_INVALID_ARGS,
            format!("Cannot {verb} a service starting with ':' such as \"{name}\""),
        ));
    }
    if !kdbus_dbus::names::is_bus_name(name) {
        return Err(err(
            E_INVALID_ARGS,
            format!("Requested bus name \"{name}\" is not valid"),
        ));
    }
    Ok(())
}

fn driver_property(i: &str, p: &str) -> Result<&'static [&'static str], DErr> {
    match (i, p) {
        // Unknown header fields are dropped when forwarding ("HeaderFiltering").
        (DRIVER, "Features") => Ok(&["HeaderFiltering"]),
        (DRIVER, "Interfaces") => Ok(&["org.freedesktop.DBus.Monitoring"]),
        (DRIVER, _) => Err(err(
            E_UNKNOWN_PROPERTY,
            format!("Property {p} on interface {i} does not exist"),
        )),
        _ => Err(err(
            E_UNKNOWN_INTERFACE,
            format!("Interface {i} does not exist"),
        )),
    }
}

/// The bus match-database rules for a D-Bus rule: its bloom mask and its sender.
fn kernel_rule_items(rule: &Rule, bloom: kdbus_abi::BloomParameter) -> Vec<u8> {
    let mut items = Vec::new();
    let pick = |want: fn(&ArgTest) -> Option<&str>| -> Vec<(u8, &str)> {
        rule.args
            .iter()
            .filter_map(|(i, t)| want(t).map(|v| (*i, v)))
            .collect()
    };
    let args = pick(|t| match t {
        ArgTest::Equals(v) => Some(v),
        _ => None,
    });
    let namespaces = pick(|t| match t {
        ArgTest::Namespace(v) => Some(v),
        _ => None,
    });
    // argNpath also matches shorter values that end in '/', which the bloom prefix
    // convention does not cover: it stays out of the mask and is checked exactly later.
    let spec = MatchSpec {
        message_type: rule.msg_type.map(MessageType::name),
        interface: rule.interface.as_deref(),
        member: rule.member.as_deref(),
        path: rule.path.as_deref(),
        path_namespace: rule.path_namespace.as_deref(),
        args: &args,
        arg_paths: &[],
        arg_namespaces: &namespaces,
    };
    let mut w = ItemWriter::new(&mut items);
    if let Some(mask) = match_mask(bloom, &spec) {
        w.push(item::BLOOM_MASK, mask.words().as_bytes());
    }
    match rule.sender.as_deref() {
        Some(s) if s.starts_with(':') => {
            if let Some(id) = parse_unique(s) {
                w.push_u64(item::ID, id);
            }
        }
        Some(s) => w.push_str(item::NAME, s),
        None => {}
    }
    items
}

/// The largest SEND buffer kept for reuse; one for a larger message is freed after it.
const SEND_SCRATCH_KEEP_BYTES: usize = 1 << 20;

/// A kdbus SEND body carrying a D-Bus message as payload, written into `out` (cleared
/// first); `payload` writes the message.
fn encode_send(
    out: &mut Vec<u8>,
    msg: &Msg,
    dst_name: Option<&str>,
    bloom: Option<&[u64]>,
    n_fds: usize,
    payload: impl FnOnce(&mut Vec<u8>),
) {
    out.clear();
    let cmd_size = std::mem::size_of::<CmdSend>();
    let cmd = CmdSend {
        size: cmd_size as u64,
        flags: 0,
        return_flags: 0,
        msg_address: cmd_size as u64,
        reply: Default::default(),
    };
    out.extend_from_slice(cmd.as_bytes());
    let msg_start = out.len();
    out.extend_from_slice(msg.as_bytes());
    {
        let mut w = ItemWriter::new(out);
        if let Some(n) = dst_name {
            w.push_str(item::DST_NAME, n);
        }
        if let Some(b) = bloom {
            w.push_parts(item::BLOOM_FILTER, &[&0u64.to_ne_bytes(), b.as_bytes()]);
        }
        if n_fds > 0 {
            // Placeholders: the fds themselves travel beside the request.
            w.push_parts(item::FDS, &vec![&[0xffu8; 4][..]; n_fds]);
        }
    }
    // The payload vector points just past its own item; its size is known once the
    // payload is written.
    let vec_at = out.len();
    let data_at = kdbus_abi::align8_usize(vec_at + 32);
    ItemWriter::new(out).push(
        item::PAYLOAD_VEC,
        Vec_ {
            size: 0,
            address_or_offset: data_at as u64,
        }
        .as_bytes(),
    );
    let msg_size = (out.len() - msg_start) as u64;
    out[msg_start..msg_start + 8].copy_from_slice(&msg_size.to_ne_bytes());
    debug_assert_eq!(out.len(), data_at);
    payload(out);
    let size = (out.len() - data_at) as u64;
    // Vec_::size is the first field of the vector item's payload (after the 16-byte
    // item header).
    out[vec_at + 16..vec_at + 24].copy_from_slice(&size.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names() {
        assert_eq!(unique_name(5), ":1.5");
        assert_eq!(parse_unique(":1.5"), Some(5));
        assert_eq!(parse_unique("org.x"), None);
    }
}
