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
/// Clients of one user that may be connected without having said Hello yet (as
/// dbus-daemon's `max_incomplete_connections`): more are closed at once.
pub const MAX_INCOMPLETE_PER_USER: u32 = 64;
/// Bytes read per wakeup before moving on to other clients.
const READ_BUDGET_BYTES: usize = 1 << 20;
/// The kernel's SCM_MAX_FD.
const MAX_FDS_PER_MESSAGE: usize = 253;
/// Bytes of messages not fully arrived that one user's clients may make the broker
/// hold (dbus-broker's default per-user byte limit).
pub const MAX_PARTIAL_BYTES_PER_USER: u64 = 512 * 1024 * 1024;
/// A partial unit's buffer larger than this, and over twice what it holds, is
/// shrunk: one large message must not leave a client holding its size forever.
const PARTIAL_KEEP_BYTES: usize = 64 * 1024;

/// A client of a bus's D-Bus socket.
pub(crate) struct DBusClient {
    bus: BusKey,
    sasl: Sasl,
    /// The start of a unit (SASL line, message) that has not fully arrived.
    partial: Vec<u8>,
    /// Fds received and not yet given to a message, in order.
    fds: VecDeque<OwnedFd>,
    /// The connection, once Hello made one.
    pub(crate) key: Option<ConnKey>,
    /// Until Hello: when it must have come, and whose incomplete connection it is.
    deadline: u64,
    uid: u32,
}

impl DBusClient {
    /// A client of `bus` whose socket belongs to `uid`; `guid` is the server id SASL
    /// announces.
    pub(crate) fn new(bus: BusKey, uid: u32, guid: [u8; 16]) -> Self {
        DBusClient {
            bus,
            sasl: Sasl::new(uid, guid, true),
            partial: Vec::new(),
            fds: VecDeque::new(),
            key: None,
            deadline: 0,
            uid,
        }
    }
}

impl Broker {
    /// A client of `uid` now holds `after` bytes of an incomplete message instead of
    /// `before`; `false` if the user's clients together hold more than they may.
    pub(crate) fn dbus_partial_account(&mut self, uid: u32, before: usize, after: usize) -> bool {
        if before == after {
            return true;
        }
        let held = self.partial_bytes.entry(uid).or_default();
        *held = (*held + after as u64).saturating_sub(before as u64);
        let held = *held;
        if held == 0 {
            self.partial_bytes.remove(&uid);
        }
        if held > MAX_PARTIAL_BYTES_PER_USER {
            tracing::info!(uid, held, "a user's clients hold too much unfinished input");
            return false;
        }
        true
    }

    /// Whether one more incomplete connection of `uid` is allowed.
    pub(crate) fn dbus_may_accept(&self, uid: u32) -> bool {
        self.incomplete.get(&uid).copied().unwrap_or(0) < MAX_INCOMPLETE_PER_USER
    }

    /// A client connected: arm its authentication deadline and count it as incomplete.
    pub(crate) fn dbus_accepted(&mut self, token: u64) {
        let deadline = self.domain.now().monotonic_ns + AUTH_TIMEOUT_NS;
        let Some(Role::DBus(c)) = self.handles.get_mut(&token).map(|h| &mut h.role) else {
            return;
        };
        c.deadline = deadline;
        *self.incomplete.entry(c.uid).or_default() += 1;
        self.auth_deadlines.insert((deadline, token));
    }

    /// A client's socket was closed: off the books, and its connection leaves the bus.
    pub(crate) fn dbus_closed(&mut self, token: u64, c: &DBusClient) {
        self.dbus_complete(token, c.deadline, c.uid);
        self.dbus_partial_account(c.uid, c.partial.len(), 0);
        if let Some(key) = c.key {
            self.conn_token.remove(&key);
            self.domain.conn_release(key);
        }
    }

    /// A client is no longer incomplete: it said Hello, or it is gone.
    pub(crate) fn dbus_complete(&mut self, token: u64, deadline: u64, uid: u32) {
        if !self.auth_deadlines.remove(&(deadline, token)) {
            return;
        }
        if let Some(n) = self.incomplete.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.incomplete.remove(&uid);
            }
        }
    }

    /// Drop clients that did not finish authenticating (and say Hello) in time.
    pub(crate) fn dbus_expire_auth(&mut self) {
        let now = self.domain.now().monotonic_ns;
        while let Some(&(deadline, token)) = self.auth_deadlines.first() {
            if deadline > now {
                break;
            }
            tracing::debug!(token, "D-Bus client did not authenticate in time");
            // Closing it takes it off the books (dbus_complete); the removal below is
            // for a client that is somehow gone already.
            self.handle_close(token);
            self.auth_deadlines.remove(&(deadline, token));
        }
    }

    /// Read what a D-Bus client sent and act on every complete unit (SASL lines,
    /// messages).
    ///
    /// Bytes are read into the broker's buffer and acted on there; only the start of
    /// a unit that has not fully arrived is kept in the client's own buffer. So the
    /// common case copies nothing, and an idle client holds no buffer at all.
    pub(crate) fn dbus_read(&mut self, token: u64) {
        let mut total = 0;
        let mut rbuf = std::mem::take(&mut self.rbuf);
        while let Some(h) = self.handles.get(&token) {
            let mut creds = None;
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
            let Some(Role::DBus(c)) = self.handles.get_mut(&token).map(|h| &mut h.role) else {
                break;
            };
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
            let (uid, partial_before) = (c.uid, c.partial.len());
            let ok = if c.partial.is_empty() {
                let (ok, used) = self.dbus_process(token, &rbuf[..n], creds);
                if ok && used < n {
                    if let Some(Role::DBus(c)) = self.handles.get_mut(&token).map(|h| &mut h.role) {
                        c.partial.extend_from_slice(&rbuf[used..n]);
                    }
                }
                ok
            } else {
                c.partial.extend_from_slice(&rbuf[..n]);
                let mut partial = std::mem::take(&mut c.partial);
                let (ok, used) = self.dbus_process(token, &partial, creds);
                if ok && used < partial.len() {
                    partial.drain(..used);
                    if partial.capacity() > PARTIAL_KEEP_BYTES
                        && partial.capacity() > 2 * partial.len()
                    {
                        partial.shrink_to(2 * partial.len());
                    }
                    if let Some(Role::DBus(c)) = self.handles.get_mut(&token).map(|h| &mut h.role) {
                        c.partial = partial;
                    }
                }
                ok
            };
            // Fds left over belong to the one message not complete yet: more than a
            // message may carry is a client hoarding the broker's descriptors.
            let (hoarding, partial_after) = match self.handles.get(&token).map(|h| &h.role) {
                Some(Role::DBus(c)) => (c.fds.len() > MAX_FDS_PER_MESSAGE, c.partial.len()),
                _ => (false, 0),
            };
            let within = self.dbus_partial_account(uid, partial_before, partial_after);
            if !ok || hoarding || !within {
                self.handle_close(token);
                break;
            }
            // A short read emptied the socket (or stopped at fds): epoll is
            // level-triggered and reports what is left, so no read to see EAGAIN.
            if n < rbuf.len() || total >= READ_BUDGET_BYTES {
                break;
            }
        }
        self.rbuf = rbuf;
    }

    /// Act on the complete units at the start of `data`: `(keep the client, bytes
    /// used)`.
    fn dbus_process(&mut self, token: u64, data: &[u8], creds: Option<Creds>) -> (bool, usize) {
        let Some(h) = self.handles.get_mut(&token) else {
            return (false, 0);
        };
        let creds = creds.unwrap_or(h.peer.creds);
        let Role::DBus(c) = &mut h.role else {
            return (false, 0);
        };
        let mut used = 0;
        // Authentication.
        if !c.sasl.is_done() {
            let mut out = Vec::new();
            let Ok(p) = c.sasl.feed(data, &mut out) else {
                return (false, 0);
            };
            used = p.consumed;
            let done = c.sasl.is_done();
            if !out.is_empty() {
                self.handle_send(token, out, Vec::new());
            }
            if !done {
                return (true, used);
            }
        }
        // Messages.
        loop {
            let avail = &data[used..];
            let len = match header::message_len(avail) {
                Ok(Some(len)) if len <= avail.len() => len,
                Ok(_) => return (true, used),
                Err(e) => {
                    tracing::debug!(token, %e, "bad D-Bus message framing");
                    return (false, used);
                }
            };
            let msg = &avail[..len];
            used += len;
            if !self.dbus_message(token, msg, creds) {
                return (false, used);
            }
        }
    }

    /// One complete message from a client. `false`: disconnect it.
    fn dbus_message(&mut self, token: u64, msg: &[u8], creds: Creds) -> bool {
        let Some(h) = self.handles.get_mut(&token) else {
            return false;
        };
        let Role::DBus(c) = &mut h.role else {
            return false;
        };
        let hdr = match header::parse(msg) {
            Ok(hdr) => hdr,
            Err(header::HeaderError::UnknownType) => return true,
            Err(e) => {
                tracing::debug!(token, %e, "invalid D-Bus header");
                return false;
            }
        };
        let n = hdr.unix_fds as usize;
        // More fds than one write can carry could never be delivered.
        if n > c.fds.len() || n > MAX_FDS_PER_MESSAGE {
            return false;
        }
        let fds: Vec<OwnedFd> = if n == 0 {
            Vec::new()
        } else {
            c.fds.drain(..n).collect()
        };
        let fds_ok = c.sasl.fds_agreed();
        if !fds.is_empty() && !fds_ok {
            return false;
        }
        if let Some(key) = c.key {
            if let Err(e) = self
                .bridge
                .message(&mut self.domain, key, &hdr, msg, fds, creds)
            {
                tracing::debug!(token, %e, "D-Bus client broke the protocol");
                return false;
            }
            return true;
        }
        // The first message must be Hello to the bus.
        let hello = hdr.msg_type == MessageType::MethodCall
            && hdr.destination == Some(kdbus_bridge::DRIVER)
            && hdr.member == Some("Hello");
        if !hello {
            return false;
        }
        let bus = c.bus;
        let mut peer = h.peer.clone();
        peer.creds = creds;
        match self
            .bridge
            .hello(&mut self.domain, bus, &peer, fds_ok, hdr.serial)
        {
            Ok(key) => {
                self.conn_token.insert(key, token);
                let (deadline, uid) = (c.deadline, c.uid);
                self.dbus_complete(token, deadline, uid);
                if let Some(Role::DBus(c)) = self.handles.get_mut(&token).map(|h| &mut h.role) {
                    c.key = Some(key);
                }
                true
            }
            Err(e) => {
                tracing::debug!(token, %e, "Hello refused");
                false
            }
        }
    }
}
