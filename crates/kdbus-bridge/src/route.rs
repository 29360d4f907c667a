//! From a D-Bus client into the bus: Hello, the driver, and everything else as a
//! kdbus message on the core's one SEND path.
//!
//! A message is parsed once, by the broker's framing; here its header is rewritten
//! once (the sender the bus vouches for), and the kdbus message around it is built
//! directly: a `kdbus_msg`, a few items (destination name, bloom filter, fd slots, one
//! payload vector pointing at the rewritten message), validated by the same checks a
//! native SEND gets, and sent. Method calls expect replies (cookie = serial), replies
//! answer them (cookie_reply = reply serial) and are dropped when nothing waits for
//! them, signals without destination are broadcasts. Errors of the SEND become the D-Bus
//! errors dbus-daemon would send.

use crate::body::{Body, ErrName};
use crate::peer::{peer_mut, DBusPeer};
use crate::policy::{header_facts, policy_denial_text, policy_driver_call};
use crate::{Bridge, DRIVER};
use kdbus_abi::{item, msg_flags, payload, Errno, ItemWriter, Msg, Vec_};
use kdbus_core::message::message_from_parts;
use kdbus_core::{ConnKey, Creds, Domain, FileSet, Peer};
use kdbus_dbus::header::{self, Fields, Header, HeaderError, MessageType};
use kdbus_dbus::names::UniqueName;
use std::os::fd::OwnedFd;
use zerocopy::IntoBytes;

/// Why a D-Bus client must be disconnected.
#[derive(Debug, thiserror::Error)]
pub enum DBusFatal {
    /// The message's header is not valid D-Bus.
    #[error("invalid message: {0}")]
    Header(#[from] HeaderError),
    /// The client's first message was not the driver's `Hello`.
    #[error("first message was not Hello")]
    NoHello,
    /// The fds that came with the message are not as many as its `UNIX_FDS` field says.
    #[error("unix fds do not match the header")]
    Fds,
    /// The body does not match its signature; checked once, so nobody downstream (a
    /// libdbus receiver, the driver) gets a malformed one.
    #[error("body does not match its signature: {0}")]
    Body(#[from] kdbus_dbus::marshal::MarshalError),
    /// A monitor sent a message: monitors only watch, and one that sends goes, as with
    /// dbus-daemon.
    #[error("a monitor sent a message")]
    MonitorSent,
}

/// The largest payload of a D-Bus peer's message: one of the protocol's maximum size
/// after the bus rewrote its header (a sender field of a unique name).
const DBUS_MAX_PAYLOAD: u64 = header::MAX_MESSAGE_SIZE as u64 + 1024;
/// The largest message buffer kept for reuse (one, for the whole bridge): enough for a
/// stream of messages of a few MiB to reuse warm memory; one for a larger message is
/// freed after it.
const SEND_KEEP_BYTES: usize = 4 << 20;
/// The FDS item as the bus writes it: the fds travel beside the message.
static NO_FDS: [u8; kdbus_abi::limits::MSG_MAX_FDS * 4] =
    [0xff; kdbus_abi::limits::MSG_MAX_FDS * 4];

impl Bridge {
    /// A D-Bus client said Hello (serial `serial`): make it a connection on `bus`,
    /// through `endpoint` (`None`: the default one). Its Hello reply and NameAcquired
    /// are in its output before the bus hears of it.
    pub fn hello(
        &mut self,
        dom: &mut Domain,
        bus: kdbus_core::BusKey,
        endpoint: Option<u64>,
        peer: &Peer,
        fds_ok: bool,
        serial: u32,
    ) -> Result<ConnKey, Errno> {
        let mut stream = DBusPeer::with_limits(fds_ok, self.stream_limits);
        stream.quota.user = Some((peer.creds.uid, self.user_books.clone()));
        let (key, id) = dom.hello_stream(bus, endpoint, peer, Box::new(stream))?;
        let name = UniqueName::from_id(id);
        let f = Fields {
            reply_serial: Some(serial),
            ..Default::default()
        };
        let reply = Body::new().s(&name);
        let acquired = Body::new().s(&name);
        dom.with_stream(key, |s, out| {
            if let Some(p) = peer_mut(s) {
                p.write_driver(out, MessageType::MethodReturn, f, &reply);
                p.write_signal(out, "NameAcquired", &acquired);
            }
        });
        dom.conn_announce(key);
        Ok(key)
    }

    /// The broker wrote `n` bytes of a D-Bus client's stream.
    pub fn written(&mut self, dom: &mut Domain, key: ConnKey, n: usize) {
        dom.stream_written(key, n);
    }

    /// One complete message `msg` (header `h`, parsed by the framing) from connection
    /// `key`, with its fds. An error means the client broke the protocol and must be
    /// disconnected.
    pub fn message(
        &mut self,
        dom: &mut Domain,
        key: ConnKey,
        h: &Header<'_>,
        msg: &[u8],
        fds: Vec<OwnedFd>,
        creds: Creds,
    ) -> Result<(), DBusFatal> {
        if h.unix_fds as usize != fds.len() {
            return Err(DBusFatal::Fds);
        }
        let Some(conn) = dom.conn(key) else {
            return Ok(());
        };
        if !conn.is_active() {
            return Ok(());
        }
        if conn.flags & kdbus_abi::hello_flags::MONITOR != 0 {
            // Monitors only watch: one that sends goes (dbus-daemon).
            return Err(DBusFatal::MonitorSent);
        }
        let body = &msg[h.header_len..h.total_len().min(msg.len())];
        // Checked once, here, so that nobody downstream (a libdbus receiver, the
        // driver) gets a body that is not what its signature says.
        kdbus_dbus::marshal::body_validate(body, h.endian, h.signature, h.unix_fds)?;
        if h.destination == Some(DRIVER) {
            let bus = conn.bus;
            let sender = UniqueName::from_id(conn.id);
            if dom.bus(bus).is_some_and(|b| !b.monitors.is_empty()) {
                let mut copy = Vec::with_capacity(msg.len() + 16);
                header::write(&mut copy, h, Some(&sender));
                copy.extend_from_slice(body);
                // Fds sent to the bus itself go nowhere else; monitors see them.
                let files = (!fds.is_empty()).then(|| FileSet::shared(fds));
                dom.monitors_observe(bus, None, &copy, files.as_ref());
            }
            if let Err(text) = policy_driver_call(dom, key, h) {
                if h.msg_type == MessageType::MethodCall && !h.no_reply_expected() {
                    error_to(dom, key, h.serial, ErrName::AccessDenied, &text);
                }
                return Ok(());
            }
            match h.msg_type {
                MessageType::MethodCall => self.driver_call(dom, key, h, body),
                MessageType::Signal => self.systemd_signal(dom, key, h, body),
                _ => {}
            }
            return Ok(());
        }
        self.route(dom, key, h, body, fds, creds);
        Ok(())
    }

    /// Send a D-Bus client's message on into the bus.
    fn route(
        &mut self,
        dom: &mut Domain,
        key: ConnKey,
        h: &Header<'_>,
        body: &[u8],
        fds: Vec<OwnedFd>,
        creds: Creds,
    ) {
        let Some((src_id, bus_key)) = dom.conn(key).map(|c| (c.id, c.bus)) else {
            return;
        };
        let sender = UniqueName::from_id(src_id);
        let expects = h.msg_type == MessageType::MethodCall && !h.no_reply_expected();
        // Destination.
        let (dst_id, dst_name) = match h.destination {
            None if h.msg_type == MessageType::Signal => (kdbus_abi::DST_ID_BROADCAST, None),
            None => return, // a call or reply to nobody: nothing to do (dbus-daemon drops it too)
            Some(d) => match UniqueName::parse(d) {
                // Unique ids start at 1: `:1.0` is nobody.
                Some(id) if d.starts_with(':') && id != 0 => (id, None),
                _ if d.starts_with(':') => {
                    if expects {
                        let text = format!("The name {d} was not provided by any .service files");
                        error_to(dom, key, h.serial, ErrName::ServiceUnknown, &text);
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
            let Some(dst_key) = dom.bus(bus_key).and_then(|b| b.conns.get(&dst_id).copied()) else {
                return;
            };
            let pending = dom
                .conn(key)
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
            timeout_or_reply = dom.now().monotonic_ns + self.reply_timeout();
        }
        if h.flags & header::FLAG_NO_AUTO_START != 0 {
            flags |= msg_flags::NO_AUTO_START;
        }
        let bloom = if dst_id == kdbus_abi::DST_ID_BROADCAST {
            flags |= msg_flags::SIGNAL;
            let params = dom.bus(bus_key).map(|b| b.bloom).unwrap_or_default();
            Some(kdbus_dbus::rules::signal_bloom(params, h, body))
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
        // The payload: the message with the sender the bus vouches for.
        self.send.clear();
        self.send.extend_from_slice(&[0; 8]);
        header::write(&mut self.send, h, Some(&sender));
        self.send.extend_from_slice(body);
        self.items.clear();
        {
            let mut w = ItemWriter::new(&mut self.items);
            if let Some(n) = dst_name {
                w.push_str(item::DST_NAME, n);
            }
            if let Some(b) = &bloom {
                w.push_parts(
                    item::BLOOM_FILTER,
                    &[&0u64.to_ne_bytes(), b.words().as_bytes()],
                );
            }
            if !fds.is_empty() {
                // More than a message may carry is refused below (EMFILE), as a
                // client's SEND with that many would be.
                w.push(item::FDS, NO_FDS.get(..fds.len() * 4).unwrap_or(&NO_FDS));
            }
            let v = Vec_ {
                size: (self.send.len() - 8) as u64,
                address_or_offset: 8,
            };
            w.push(item::PAYLOAD_VEC, v.as_bytes());
        }
        let sent = if fds.len() > kdbus_abi::limits::MSG_MAX_FDS {
            Err(Errno::EMFILE)
        } else {
            let (items, body, max) = (&self.items, &self.send, DBUS_MAX_PAYLOAD);
            message_from_parts(msg, items, body, fds.len(), src_id, max).and_then(|mut req| {
                req.facts = Some(header_facts(h));
                let files = (!fds.is_empty()).then(|| FileSet::shared(fds));
                dom.send(key, &req, files, creds, 0)
            })
        };
        if self.send.capacity() > SEND_KEEP_BYTES {
            self.send = Vec::new();
        }
        // A call the bus could not queue is answered even when no reply was asked for:
        // the protocol allows it, and nothing is lost without its sender hearing.
        let refused = h.msg_type == MessageType::MethodCall
            && matches!(sent, Err(Errno::ENOBUFS | Errno::EXFULL));
        match sent {
            Ok(_) => {}
            Err(e) if expects || refused => {
                let (name, text) = match e {
                    Errno::ESRCH | Errno::ENXIO | Errno::EADDRNOTAVAIL => (
                        ErrName::ServiceUnknown,
                        format!(
                            "The name {} was not provided by any .service files",
                            h.destination.unwrap_or("")
                        ),
                    ),
                    Errno::EMLINK => (
                        ErrName::LimitsExceeded,
                        "The maximum number of pending replies per connection has been reached"
                            .to_string(),
                    ),
                    Errno::ENOBUFS | Errno::EXFULL | Errno::EMFILE => {
                        (ErrName::LimitsExceeded, "Limits exceeded".to_string())
                    }
                    Errno::EPERM => (ErrName::AccessDenied, denied_text(dom, key, bus_key, h)),
                    e => (ErrName::Failed, format!("Cannot deliver the message: {e}")),
                };
                error_to(dom, key, h.serial, name, &text);
            }
            Err(e) => tracing::debug!(conn = key, %e, "D-Bus message not delivered"),
        }
    }
}

/// Why `key`'s message `h` was refused with EPERM: the message policy's complaint,
/// or kdbus's.
fn denied_text(dom: &mut Domain, key: ConnKey, bus: kdbus_core::BusKey, h: &Header<'_>) -> String {
    let Some(d) = dom.take_denial() else {
        return "Access denied".to_string();
    };
    let b = dom.bus(bus);
    let dst = h.destination.and_then(|d| match UniqueName::parse(d) {
        Some(id) if d.starts_with(':') => b.and_then(|b| b.conns.get(&id).copied()),
        _ => b.and_then(|b| b.names.lookup(d)).map(|e| e.owner),
    });
    policy_denial_text(dom, &d, h, key, dst)
}

/// Answer message `serial` of `key` with a driver error.
pub(crate) fn error_to(dom: &mut Domain, key: ConnKey, serial: u32, e: ErrName, text: &str) {
    error_named_to(dom, key, serial, e.as_str(), text)
}

/// [`error_to`] with an error name the bus did not make (systemd's).
pub(crate) fn error_named_to(dom: &mut Domain, key: ConnKey, serial: u32, e: &str, text: &str) {
    dom.with_stream(key, |s, out| {
        if let Some(p) = peer_mut(s) {
            p.write_error(out, serial, e, text);
        }
    });
}
