//! The D-Bus socket of a bus: authentication and message framing for D-Bus clients.
//!
//! Every bus also listens on `<bus dir>/dbus`, a stream socket speaking the D-Bus
//! protocol. A client first authenticates (SASL EXTERNAL, against the uid the kernel
//! gives for the socket, within [`AUTH_TIMEOUT_NS`]); its first message must be
//! `Hello`, which makes it a connection on the bus; after that each complete message
//! goes to the domain, which routes it like any other. What the domain has for the
//! client is already D-Bus bytes: the broker's flush writes them to the stream.

use crate::broker::{Broker, Role};
use kdbus_core::{BusKey, ConnKey, Creds};
use kdbus_dbus::header::{self, MessageType};
use kdbus_dbus::sasl::Sasl;
use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno as SysErrno;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;

/// How long a client may take to authenticate and say Hello.
pub const AUTH_TIMEOUT_NS: u64 = 30 * 1_000_000_000;
/// Bytes read per wakeup before moving on to other clients.
const READ_BUDGET_BYTES: usize = 1 << 20;

/// A client of a bus's D-Bus socket.
pub(crate) struct DBusClient {
    bus: BusKey,
    sasl: Sasl,
    /// Bytes read and not yet consumed, from `inpos`.
    inbuf: Vec<u8>,
    inpos: usize,
    /// Fds received and not yet given to a message, in order.
    fds: VecDeque<OwnedFd>,
    /// The connection, once Hello made one.
    pub(crate) key: Option<ConnKey>,
}

impl DBusClient {
    /// A client of `bus` whose socket belongs to `uid`; `guid` is the server id SASL
    /// announces.
    pub(crate) fn new(bus: BusKey, uid: u32, guid: [u8; 16]) -> Self {
        DBusClient {
            bus,
            sasl: Sasl::new(uid, guid, true),
            inbuf: Vec::new(),
            inpos: 0,
            fds: VecDeque::new(),
            key: None,
        }
    }
}

impl Broker {
    /// A client connected: arm its authentication deadline.
    pub(crate) fn dbus_accepted(&mut self, token: u64) {
        let deadline = self.domain.now().monotonic_ns + AUTH_TIMEOUT_NS;
        self.auth_deadlines.insert((deadline, token));
    }

    /// Drop clients that did not finish authenticating (and say Hello) in time.
    pub(crate) fn dbus_expire_auth(&mut self) {
        let now = self.domain.now().monotonic_ns;
        while let Some(&(deadline, token)) = self.auth_deadlines.first() {
            if deadline > now {
                break;
            }
            self.auth_deadlines.pop_first();
            tracing::debug!(token, "D-Bus client did not authenticate in time");
            self.handle_close(token);
        }
    }

    /// Read what a D-Bus client sent and act on every complete unit (SASL lines,
    /// messages).
    pub(crate) fn dbus_read(&mut self, token: u64) {
        let mut total = 0;
        let mut creds = None;
        // Read into the broker's buffer and keep only what arrived: a client's own
        // buffer then never holds more than its unprocessed bytes.
        let mut rbuf = std::mem::take(&mut self.rbuf);
        loop {
            let Some(h) = self.handles.get_mut(&token) else {
                break;
            };
            let Role::DBus(c) = &mut h.role else { break };
            let mut space =
                [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253), ScmCredentials(1))];
            let mut anc = RecvAncillaryBuffer::new(&mut space);
            let r = rustix::net::recvmsg(
                h.fd.as_fd(),
                &mut [IoSliceMut::new(&mut rbuf[..])],
                &mut anc,
                RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            );
            let n = match r {
                Ok(m) => m.bytes,
                Err(SysErrno::AGAIN) => break,
                Err(SysErrno::INTR) => continue,
                Err(_) => 0,
            };
            if c.inpos > 0 && c.inpos == c.inbuf.len() {
                c.inbuf.clear();
                c.inpos = 0;
            } else if c.inpos * 2 >= c.inbuf.len() && c.inpos > 0 {
                c.inbuf.drain(..c.inpos);
                c.inpos = 0;
            }
            c.inbuf.extend_from_slice(&rbuf[..n]);
            for m in anc.drain() {
                match m {
                    RecvAncillaryMessage::ScmRights(it) => c.fds.extend(it),
                    RecvAncillaryMessage::ScmCredentials(u) => {
                        creds = crate::peer::creds_from_scm(&u)
                    }
                    _ => {}
                }
            }
            if n == 0 {
                self.handle_close(token);
                break;
            }
            total += n;
            if !self.dbus_process(token, creds) {
                self.handle_close(token);
                break;
            }
            if total >= READ_BUDGET_BYTES {
                break; // level-triggered: we come back
            }
        }
        self.rbuf = rbuf;
    }

    /// Consume complete units from the client's buffer. `false`: disconnect it.
    fn dbus_process(&mut self, token: u64, creds: Option<Creds>) -> bool {
        let Some(h) = self.handles.get_mut(&token) else {
            return false;
        };
        let peer = h.peer.clone();
        let creds = creds.unwrap_or(peer.creds);
        let Role::DBus(c) = &mut h.role else {
            return false;
        };
        // Authentication.
        if !c.sasl.is_done() {
            let mut out = Vec::new();
            let progress = c.sasl.feed(&c.inbuf[c.inpos..], &mut out);
            let Ok(p) = progress else { return false };
            c.inpos += p.consumed;
            if !out.is_empty() {
                self.handle_send(token, out, Vec::new());
            }
            let Some(h) = self.handles.get_mut(&token) else {
                return false;
            };
            let Role::DBus(c) = &mut h.role else {
                return false;
            };
            if !c.sasl.is_done() {
                return true;
            }
        }
        // Messages.
        loop {
            let Some(h) = self.handles.get_mut(&token) else {
                return false;
            };
            let Role::DBus(c) = &mut h.role else {
                return false;
            };
            let avail = &c.inbuf[c.inpos..];
            let len = match header::message_len(avail) {
                Ok(Some(len)) => len,
                Ok(None) => return true,
                Err(e) => {
                    tracing::debug!(token, %e, "bad D-Bus message framing");
                    return false;
                }
            };
            if avail.len() < len {
                c.inbuf.reserve(len - avail.len());
                return true;
            }
            let msg = avail[..len].to_vec();
            c.inpos += len;
            let hdr = match header::parse(&msg) {
                Ok(hdr) => hdr,
                Err(header::HeaderError::UnknownType) => continue,
                Err(e) => {
                    tracing::debug!(token, %e, "invalid D-Bus header");
                    return false;
                }
            };
            let n = hdr.unix_fds as usize;
            if n > c.fds.len() {
                return false;
            }
            let fds: Vec<OwnedFd> = c.fds.drain(..n).collect();
            let fds_ok = c.sasl.fds_agreed();
            if !fds.is_empty() && !fds_ok {
                return false;
            }
            match c.key {
                Some(key) => {
                    if let Err(e) = self.domain.dbus_message(key, &msg, fds, creds) {
                        tracing::debug!(token, %e, "D-Bus client broke the protocol");
                        return false;
                    }
                }
                None => {
                    // The first message must be Hello to the bus.
                    let hello = hdr.msg_type == MessageType::MethodCall
                        && hdr.destination == Some(kdbus_core::dbus::DRIVER)
                        && hdr.member == Some("Hello");
                    if !hello {
                        return false;
                    }
                    let bus = c.bus;
                    let serial = hdr.serial;
                    let mut peer = peer.clone();
                    peer.creds = creds;
                    match self.domain.dbus_hello(bus, &peer, fds_ok, serial) {
                        Ok(key) => {
                            self.conn_token.insert(key, token);
                            self.auth_deadlines.retain(|(_, t)| *t != token);
                            if let Some(Role::DBus(c)) =
                                self.handles.get_mut(&token).map(|h| &mut h.role)
                            {
                                c.key = Some(key);
                            }
                        }
                        Err(e) => {
                            tracing::debug!(token, %e, "Hello refused");
                            return false;
                        }
                    }
                }
            }
        }
    }
}
