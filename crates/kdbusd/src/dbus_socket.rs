//! The D-Bus socket of a bus: the stream transport, with authentication and message
//! framing for D-Bus clients.
//!
//! Every bus also listens on `<bus dir>/dbus`, a stream socket speaking the D-Bus
//! protocol. A client first authenticates (SASL EXTERNAL, against the uid the kernel
//! gives for the socket, within [`AUTH_TIMEOUT_NS`]); its first message must be
//! `Hello`, which makes it a connection on the bus; after that each complete message
//! goes to the domain (through the bridge), which routes it like any other. What the
//! domain has for the client is already D-Bus bytes: the flush writes them to the
//! stream, and tells the domain how much went, for the client's stream quota.
//!
//! [`DBusClients`] owns these clients outright (sockets, SASL state, partial input,
//! backlogs) and the per-user books that bound what clients that have not finished
//! (authenticating, or sending a message) may cost. It does not know the loop: the
//! loop hands it the domain, the bridge and the dispatcher, and it answers with an
//! [`Event`] saying what the loop must remember (a connection was made, a client and
//! its connection are gone). A stream's bytes arrive in arbitrary pieces, so unlike
//! the datagram transport this one keeps the start of a unit that has not fully
//! arrived, and the fds that came ahead of the message they belong to.

use crate::backlog::{send_bytes, Backlog, Broken};
use crate::config::Admission;
use crate::dispatch::Dispatch;
use crate::large_read::{large_len, Large, Spare};
use kdbus_bridge::Bridge;
use kdbus_core::{BusKey, ConnKey, Creds, Domain, Files, Peer};
use kdbus_dbus::header::{self, MessageType};
use kdbus_dbus::sasl::Sasl;
use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno as SysErrno;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::rc::Rc;

/// How long a client may take to authenticate and say Hello.
pub const AUTH_TIMEOUT_NS: u64 = 30 * 1_000_000_000;
/// How long a client may hold fds of a message it has not finished sending
/// (dbus-daemon's default `pending_fd_timeout`: 150 s).
pub const PENDING_FD_TIMEOUT_NS: u64 = 150 * 1_000_000_000;
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
/// Output a D-Bus client may leave unread before we give up on it: well above what
/// other peers may queue for it (`kdbus_bridge::stream_quota`; the bus's signals stop
/// at that quota too), so only the answers to its own calls, or a monitor's copies,
/// can get it there.
const MAX_STREAM_BACKLOG: usize = 4 * kdbus_bridge::stream_quota::STREAM_QUOTA_BYTES as usize;

/// What the loop must do after the D-Bus clients acted.
#[must_use]
pub(crate) enum Event {
    /// Nothing.
    Quiet,
    /// The client said Hello and is this connection now: flushes of the connection
    /// go to the client's token.
    Connected(ConnKey),
    /// The client is closed; its connection, if it had one, has left the bus and
    /// must be forgotten.
    Closed(Option<ConnKey>),
}

/// A client of a bus's D-Bus socket.
struct DBusClient {
    /// The accepted stream socket (shared weakly with its peer's metadata, which
    /// takes the pidfd from it when first needed: `Peer::socket`).
    fd: std::rc::Rc<OwnedFd>,
    /// Who connected it (credentials and `/proc` facts at connect).
    peer: Peer,
    /// The bus whose D-Bus socket it connected to.
    bus: BusKey,
    /// The custom endpoint whose D-Bus socket it connected to (`None`: the bus's own).
    endpoint: Option<u64>,
    /// The authentication conversation (done once the client sent BEGIN).
    sasl: Sasl,
    /// The start of a unit (SASL line, message) that has not fully arrived.
    partial: Vec<u8>,
    /// Or a large message arriving into a buffer of its own.
    large: Option<Large>,
    /// Fds received and not yet given to a message, in order.
    fds: VecDeque<OwnedFd>,
    /// The connection, once Hello made one. Bytes written to the client from then on
    /// are reported to its stream quota. (SASL replies still in the backlog at Hello
    /// would be reported too; the quota clamps what it is told to what it holds.)
    key: Option<ConnKey>,
    /// Until Hello: when it must have come, and whose incomplete connection it is.
    deadline: u64,
    /// While it holds fds of a message not complete yet: when it must have finished
    /// it (`pending_fd_timeout`).
    fds_deadline: Option<u64>,
    /// The socket's owner, for the per-user books.
    uid: u32,
    /// Writes the client has not taken yet; a stream's writes may be partial.
    backlog: Backlog,
}

impl DBusClient {
    /// Bytes of unfinished input the client makes the broker hold.
    fn held(&self) -> usize {
        self.partial.len() + self.large.as_ref().map_or(0, Large::charge)
    }

    /// Send bytes (with fds, which start a write of their own), or park them behind
    /// what waits.
    fn send(
        &mut self,
        domain: &mut Domain,
        dispatch: &Dispatch,
        token: u64,
        bytes: Vec<u8>,
        fds: Vec<Files>,
    ) -> Result<(), Broken> {
        self.send_from(domain, dispatch, token, bytes, 0, fds)
    }

    /// [`DBusClient::send`] of `bytes[at..]`, the start having gone already.
    fn send_from(
        &mut self,
        domain: &mut Domain,
        dispatch: &Dispatch,
        token: u64,
        bytes: Vec<u8>,
        at: usize,
        fds: Vec<Files>,
    ) -> Result<(), Broken> {
        let key = self.key;
        let written = |n| {
            if let Some(key) = key {
                domain.stream_written(key, n);
            }
        };
        self.backlog
            .send_from(self.fd.as_fd(), dispatch, token, bytes, at, fds, written)
    }
}

/// What acting on a client's input needs besides the client.
struct Bus<'a> {
    /// Where messages and Hello go.
    domain: &'a mut Domain,
    /// The D-Bus personality that turns them into domain calls.
    bridge: &'a mut Bridge,
    /// For arming write interest when a SASL reply must wait.
    dispatch: &'a Dispatch,
    /// Who may connect, from a dbus-daemon configuration.
    admission: Option<Rc<Admission>>,
    limits: DBusLimits,
}

/// The per-user books of clients that have not finished something.
#[derive(Default)]
struct Books {
    /// Unauthenticated clients: (deadline, token), earliest first.
    auth_deadlines: BTreeSet<(u64, u64)>,
    /// Unauthenticated clients per uid.
    incomplete: HashMap<u32, u32>,
    /// Bytes of incomplete messages held per uid.
    partial_bytes: HashMap<u32, u64>,
    /// Clients holding fds of an incomplete message: (deadline, token), earliest first.
    fd_deadlines: BTreeSet<(u64, u64)>,
}

impl Books {
    /// A client of `uid` now holds `after` bytes of an incomplete message instead of
    /// `before`; `false` if the user's clients together hold more than they may.
    fn partial_account(&mut self, uid: u32, before: usize, after: usize) -> bool {
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

    /// A client is no longer incomplete: it said Hello, or it is gone.
    fn complete(&mut self, token: u64, deadline: u64, uid: u32) {
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
}

/// The D-Bus clients of every bus, by dispatch token, and their books.
#[derive(Default)]
pub(crate) struct DBusClients {
    /// Boxed, like native handles: the table's slots stay small.
    clients: HashMap<u64, Box<DBusClient>>,
    /// What unfinished clients hold, per user.
    books: Books,
    /// Who may connect, from a dbus-daemon configuration (`None`: the bus's access
    /// mode decides, as for its native socket).
    admission: Option<Rc<Admission>>,
    limits: DBusLimits,
    /// The process's descriptor books: a client's are given back when it goes.
    fds: Option<crate::admission::SharedFdBooks>,
    /// The buffer lent to the next large message.
    spare: Spare,
}

/// The D-Bus socket's limits (dbus-daemon's `<limit>`s of the same names).
#[derive(Clone, Copy, Debug)]
pub struct DBusLimits {
    /// `auth_timeout`: to authenticate and say Hello.
    pub auth_timeout_ns: u64,
    /// `max_incomplete_connections`: clients that have not said Hello, in all.
    pub incomplete: usize,
    /// `max_message_size`: a larger message disconnects its sender.
    pub message_size: usize,
    /// `max_message_unix_fds`: more fds with one message disconnect its sender.
    pub message_fds: usize,
    /// `pending_fd_timeout`: fds of a message not finished within this disconnect
    /// their sender (a client must not hold the broker's descriptors at will).
    pub pending_fd_timeout_ns: u64,
    /// Output a client may leave unread before it is given up on: well above what
    /// other peers may queue for it (`max_outgoing_bytes`), so only the answers to its
    /// own calls, or a monitor's copies, can get it there.
    pub backlog: usize,
}

impl Default for DBusLimits {
    fn default() -> Self {
        DBusLimits {
            auth_timeout_ns: AUTH_TIMEOUT_NS,
            incomplete: usize::MAX,
            message_size: header::MAX_MESSAGE_SIZE,
            message_fds: MAX_FDS_PER_MESSAGE,
            pending_fd_timeout_ns: PENDING_FD_TIMEOUT_NS,
            backlog: MAX_STREAM_BACKLOG,
        }
    }
}

impl DBusClients {
    pub(crate) fn new(
        admission: Option<Admission>,
        fds: crate::admission::SharedFdBooks,
    ) -> DBusClients {
        DBusClients {
            admission: admission.map(Rc::new),
            fds: Some(fds),
            ..Default::default()
        }
    }

    /// Who may connect from now on (a reloaded configuration).
    pub(crate) fn set_admission(&mut self, admission: Option<Admission>) {
        self.admission = admission.map(Rc::new);
    }

    /// The limits from now on (a configuration's, or a reloaded one's).
    pub(crate) fn set_limits(&mut self, limits: DBusLimits) {
        self.limits = limits;
    }

    /// Whether one more incomplete connection of `uid` is allowed.
    pub(crate) fn may_accept(&self, uid: u32) -> bool {
        self.books.incomplete.get(&uid).copied().unwrap_or(0) < MAX_INCOMPLETE_PER_USER
    }

    /// Whether as many clients as the configuration allows have not said Hello yet
    /// (`max_incomplete_connections`): the next ones wait until one has.
    pub(crate) fn full(&self) -> bool {
        self.books.auth_deadlines.len() >= self.limits.incomplete
    }

    /// A client of `bus` connected on `fd` (registered in the dispatcher as `token`);
    /// `guid` is the server id SASL announces, `now` the monotonic time. Arms its
    /// authentication deadline and counts it as incomplete.
    pub(crate) fn accept(
        &mut self,
        token: u64,
        fd: OwnedFd,
        peer: Peer,
        (bus, endpoint): (BusKey, Option<u64>),
        guid: [u8; 16],
        now: u64,
    ) {
        let uid = peer.creds.uid;
        let deadline = now + self.limits.auth_timeout_ns;
        let fd = std::rc::Rc::new(fd);
        let mut peer = peer;
        peer.socket = Some(std::rc::Rc::downgrade(&fd));
        self.clients.insert(
            token,
            Box::new(DBusClient {
                fd,
                peer,
                bus,
                endpoint,
                sasl: Sasl::new(uid, guid, true),
                partial: Vec::new(),
                large: None,
                fds: VecDeque::new(),
                key: None,
                deadline,
                fds_deadline: None,
                uid,
                backlog: Backlog::new(self.limits.backlog),
            }),
        );
        *self.books.incomplete.entry(uid).or_default() += 1;
        self.books.auth_deadlines.insert((deadline, token));
    }

    /// The earliest deadline: to authenticate, or to finish a message with fds.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        let auth = self.books.auth_deadlines.first().map(|d| d.0);
        let fds = self.books.fd_deadlines.first().map(|d| d.0);
        auth.into_iter().chain(fds).min()
    }

    /// Close a client's socket: off the books, and its connection leaves the bus.
    pub(crate) fn close(&mut self, token: u64, domain: &mut Domain, dispatch: &Dispatch) -> Event {
        let Some(c) = self.clients.remove(&token) else {
            return Event::Quiet;
        };
        dispatch.remove(&c.fd);
        if let Some(f) = &self.fds {
            f.borrow_mut().release(c.uid, crate::admission::COST_DBUS);
        }
        self.books.complete(token, c.deadline, c.uid);
        self.books.partial_account(c.uid, c.held(), 0);
        if let Some(d) = c.fds_deadline {
            self.books.fd_deadlines.remove(&(d, token));
        }
        if let Some(key) = c.key {
            domain.conn_release(key);
        }
        Event::Closed(c.key)
    }

    /// Drop clients that did not finish authenticating (and say Hello) in time. They
    /// have no connection yet, so there is nothing for the loop to forget.
    pub(crate) fn expire_auth(&mut self, domain: &mut Domain, dispatch: &Dispatch) {
        let now = domain.now().monotonic_ns;
        while let Some(&(deadline, token)) = self.books.auth_deadlines.first() {
            if deadline > now {
                break;
            }
            tracing::debug!(token, "D-Bus client did not authenticate in time");
            // Closing it takes it off the books (`Books::complete`); the removal below
            // is for a client that is somehow gone already.
            let closed = self.close(token, domain, dispatch);
            debug_assert!(!matches!(closed, Event::Closed(Some(_))));
            self.books.auth_deadlines.remove(&(deadline, token));
        }
    }

    /// Disconnect clients that held fds of an unfinished message past
    /// `pending_fd_timeout` (dbus-daemon's rule); returns what the loop must forget.
    pub(crate) fn expire_pending_fds(
        &mut self,
        domain: &mut Domain,
        dispatch: &Dispatch,
    ) -> Vec<(u64, Event)> {
        let now = domain.now().monotonic_ns;
        let mut out = Vec::new();
        while let Some(&(deadline, token)) = self.books.fd_deadlines.first() {
            if deadline > now {
                break;
            }
            tracing::info!(
                token,
                "D-Bus client held fds of an unfinished message too long"
            );
            self.books.fd_deadlines.remove(&(deadline, token));
            out.push((token, self.close(token, domain, dispatch)));
        }
        out
    }

    /// The client's socket is writable again: write its backlog.
    pub(crate) fn writable(
        &mut self,
        token: u64,
        domain: &mut Domain,
        dispatch: &Dispatch,
    ) -> Event {
        let Some(c) = self.clients.get_mut(&token) else {
            return Event::Quiet;
        };
        let key = c.key;
        let r = c.backlog.write(c.fd.as_fd(), dispatch, token, |n| {
            if let Some(key) = key {
                domain.stream_written(key, n);
            }
        });
        // A large message's buffer, written out: the next one reuses it.
        let r = r.map(|spent| {
            if let Some(b) = spent {
                domain.output_give_back(b);
            }
        });
        match r {
            Ok(()) => Event::Quiet,
            Err(Broken) => self.close(token, domain, dispatch),
        }
    }

    /// Write connection `key`'s output (D-Bus bytes, with fds at the offsets of the
    /// messages they belong to) to client `token`, or what does not fit to its backlog.
    pub(crate) fn flush(
        &mut self,
        token: u64,
        key: ConnKey,
        domain: &mut Domain,
        dispatch: &Dispatch,
    ) -> Event {
        let Some(c) = self.clients.get_mut(&token) else {
            return Event::Quiet;
        };
        let Some((out, fds)) = domain.conn_output(key) else {
            return Event::Quiet;
        };
        if out.is_empty() {
            return Event::Quiet;
        }
        if fds.is_empty() {
            // The common case: no fds, one write, no copies.
            let sent = if c.backlog.is_empty() {
                send_bytes(c.fd.as_fd(), out, std::iter::empty()).ok()
            } else {
                None
            };
            let rest = match sent {
                Some(n) if n >= out.len() => {
                    out.clear();
                    None
                }
                // The rest waits with the offset it starts at: no bytes move.
                _ => Some((std::mem::take(out), sent.unwrap_or(0))),
            };
            if let (Some(n), Some(key)) = (sent, c.key) {
                domain.stream_written(key, n);
            }
            if let Some((rest, at)) = rest {
                if c.send_from(domain, dispatch, token, rest, at, Vec::new())
                    .is_err()
                {
                    return self.close(token, domain, dispatch);
                }
            }
            return Event::Quiet;
        }
        // The kernel gives a write's fds to the read that gets its first byte, and
        // D-Bus clients give the fds of a read to the message that read starts: so
        // each message with fds starts a write of its own.
        let out = std::mem::take(out);
        let fds = std::mem::take(fds);
        let mut start = 0;
        let mut files = Vec::new();
        for (at, f) in fds {
            let at = at.min(out.len());
            if at > start {
                let chunk = out[start..at].to_vec();
                if c.send(domain, dispatch, token, chunk, std::mem::take(&mut files))
                    .is_err()
                {
                    return self.close(token, domain, dispatch);
                }
                start = at;
            }
            files.push(f);
        }
        if c.send(domain, dispatch, token, out[start..].to_vec(), files)
            .is_err()
        {
            return self.close(token, domain, dispatch);
        }
        Event::Quiet
    }

    /// Read what a D-Bus client sent and act on every complete unit (SASL lines,
    /// messages).
    ///
    /// Bytes are read into the broker's buffer `rbuf` and acted on there; only the
    /// start of a unit that has not fully arrived is kept in the client's own buffer.
    /// So the common case copies nothing, and an idle client holds no buffer at all.
    pub(crate) fn readable(
        &mut self,
        token: u64,
        rbuf: &mut [u8],
        domain: &mut Domain,
        bridge: &mut Bridge,
        dispatch: &Dispatch,
    ) -> Event {
        let mut bus = Bus {
            domain,
            bridge,
            dispatch,
            admission: self.admission.clone(),
            limits: self.limits,
        };
        let mut total = 0;
        let mut event = Event::Quiet;
        while let Some(c) = self.clients.get_mut(&token) {
            let c: &mut DBusClient = c;
            let mut creds = None;
            let mut space = [MaybeUninit::uninit();
                rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE), ScmCredentials(1))];
            let mut anc = RecvAncillaryBuffer::new(&mut space);
            // A large message is read into its own buffer, the rest into the loop's.
            let into: &mut [u8] = match &mut c.large {
                Some(l) => l.rest_mut(),
                None => &mut rbuf[..],
            };
            let want = into.len();
            let r = rustix::net::recvmsg(
                c.fd.as_fd(),
                &mut [IoSliceMut::new(into)],
                &mut anc,
                RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            );
            let n = match r {
                Ok(m) => m.bytes,
                Err(SysErrno::AGAIN) => break,
                Err(SysErrno::INTR) => continue,
                Err(_) => 0,
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
                return self.close(token, bus.domain, bus.dispatch);
            }
            total += n;
            let (uid, held_before) = (c.uid, c.held());
            let hello_before = c.key;
            let ok = if let Some(mut l) = c.large.take() {
                l.filled(n);
                if l.is_complete() {
                    // Exactly one message: the framing takes all of it.
                    let (ok, _) = process(c, &mut self.books, &mut bus, token, l.bytes(), creds);
                    l.finish(&mut self.spare);
                    ok
                } else {
                    c.large = Some(l);
                    true
                }
            } else if c.partial.is_empty() {
                let (ok, used) = process(c, &mut self.books, &mut bus, token, &rbuf[..n], creds);
                if ok && used < n {
                    let rest = &rbuf[used..n];
                    match large_len(rest).filter(|_| c.sasl.is_done()) {
                        Some(len) => c.large = Some(Large::start(rest, len, &mut self.spare)),
                        None => c.partial.extend_from_slice(rest),
                    }
                }
                ok
            } else {
                c.partial.extend_from_slice(&rbuf[..n]);
                let mut partial = std::mem::take(&mut c.partial);
                let (ok, used) = process(c, &mut self.books, &mut bus, token, &partial, creds);
                if ok && used < partial.len() {
                    partial.drain(..used);
                    match large_len(&partial).filter(|_| c.sasl.is_done()) {
                        Some(len) => {
                            c.large = Some(Large::start(&partial, len, &mut self.spare));
                            partial = Vec::new();
                        }
                        None if partial.capacity() > PARTIAL_KEEP_BYTES
                            && partial.capacity() > 2 * partial.len() =>
                        {
                            partial.shrink_to(2 * partial.len())
                        }
                        None => {}
                    }
                    c.partial = partial;
                }
                ok
            };
            if let (None, Some(key)) = (hello_before, c.key) {
                event = Event::Connected(key);
            }
            // Fds left over belong to the one message not complete yet: more than a
            // message may carry is a client hoarding the broker's descriptors.
            let hoarding = c.fds.len() > MAX_FDS_PER_MESSAGE;
            match (c.fds.is_empty(), c.fds_deadline) {
                (false, None) => {
                    let d = bus.domain.now().monotonic_ns + self.limits.pending_fd_timeout_ns;
                    c.fds_deadline = Some(d);
                    self.books.fd_deadlines.insert((d, token));
                }
                (true, Some(d)) => {
                    c.fds_deadline = None;
                    self.books.fd_deadlines.remove(&(d, token));
                }
                _ => {}
            }
            let held_after = c.held();
            let within = self.books.partial_account(uid, held_before, held_after);
            if !ok || hoarding || !within {
                return self.close(token, bus.domain, bus.dispatch);
            }
            // A short read emptied the socket (or stopped at fds): epoll is
            // level-triggered and reports what is left, so no read to see EAGAIN.
            if n < want || total >= READ_BUDGET_BYTES {
                break;
            }
        }
        event
    }
}

/// May the (authenticated) client connect to its bus? With a dbus-daemon
/// configuration: the bus's own user, unless its `user=`/`group=` rules say otherwise
/// (dbus-daemon's rule; root is no exception). Without one: what the bus's access mode
/// grants its native socket (kdbus's rule: the owner, its group or everyone), and
/// privileged users. Through a custom endpoint's D-Bus socket: the configuration's
/// rules too, and the endpoint's own access (its maker, or everyone if it is open to
/// the world), as for its native socket.
fn admits(c: &DBusClient, bus: &Bus<'_>) -> bool {
    let Some(b) = bus.domain.bus(c.bus) else {
        return false;
    };
    let owner = c.uid == b.creator.creds.uid;
    let mut gids = vec![c.peer.creds.gid];
    if let Some(g) = &c.peer.groups {
        gids.extend(g.chunks_exact(8).filter_map(|w| {
            let id: u64 = kdbus_abi::read_struct(w)?;
            u32::try_from(id).ok()
        }));
    }
    if let Some(ep) = c.endpoint {
        let Some(e) = b.endpoints.get(&ep) else {
            return false;
        };
        let mode = kdbus_core::bus::bus_access_mode(e.flags);
        let by_endpoint = c.uid == e.uid || c.peer.privileged || mode & 0o006 != 0;
        let by_config = bus
            .admission
            .as_ref()
            .is_none_or(|a| a.admits(c.uid, &gids, owner));
        return by_endpoint && by_config;
    }
    match &bus.admission {
        Some(a) => a.admits(c.uid, &gids, owner),
        None => {
            let mode = kdbus_core::bus::bus_access_mode(b.flags);
            owner
                || c.peer.privileged
                || mode & 0o006 != 0
                || (mode & 0o060 != 0 && gids.contains(&b.creator.creds.gid))
        }
    }
}

/// Act on the complete units at the start of `data`: `(keep the client, bytes
/// used)`.
fn process(
    c: &mut DBusClient,
    books: &mut Books,
    bus: &mut Bus<'_>,
    token: u64,
    data: &[u8],
    creds: Option<Creds>,
) -> (bool, usize) {
    let creds = creds.unwrap_or(c.peer.creds);
    let mut used = 0;
    // Authentication.
    if !c.sasl.is_done() {
        let mut out = Vec::new();
        let Ok(p) = c.sasl.feed(data, &mut out) else {
            return (false, 0);
        };
        used = p.consumed;
        let done = c.sasl.is_done();
        if !out.is_empty()
            && c.send(bus.domain, bus.dispatch, token, out, Vec::new())
                .is_err()
        {
            // The client is gone: nothing more of what it sent is acted on.
            return (false, used);
        }
        if !done {
            return (true, used);
        }
        if !admits(c, bus) {
            tracing::info!(uid = c.uid, "a user the bus does not admit was turned away");
            return (false, used);
        }
    }
    // Messages.
    loop {
        let avail = &data[used..];
        let len = match header::message_len(avail) {
            Ok(Some(len)) if len > bus.limits.message_size => {
                tracing::debug!(token, len, "message over the configured size");
                return (false, used);
            }
            Ok(Some(len)) if len <= avail.len() => len,
            Ok(_) => return (true, used),
            Err(e) => {
                tracing::debug!(token, %e, "bad D-Bus message framing");
                return (false, used);
            }
        };
        let msg = &avail[..len];
        used += len;
        if !message(c, books, bus, token, msg, creds) {
            return (false, used);
        }
    }
}

/// One complete message from a client. `false`: disconnect it.
fn message(
    c: &mut DBusClient,
    books: &mut Books,
    bus: &mut Bus<'_>,
    token: u64,
    msg: &[u8],
    creds: Creds,
) -> bool {
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
    if n > c.fds.len() || n > bus.limits.message_fds {
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
        // What `GetStats` reports as incomplete connections.
        bus.bridge
            .set_incomplete_connections(books.auth_deadlines.len());
        if let Err(e) = bus.bridge.message(bus.domain, key, &hdr, msg, fds, creds) {
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
        // Monitors see what it tried (as dbus-daemon shows it), then it goes.
        bus.domain.monitors_observe(c.bus, None, msg, None);
        return false;
    }
    let mut peer = c.peer.clone();
    peer.creds = creds;
    match bus
        .bridge
        .hello(bus.domain, c.bus, c.endpoint, &peer, fds_ok, hdr.serial)
    {
        Ok(key) => {
            books.complete(token, c.deadline, c.uid);
            c.key = Some(key);
            true
        }
        Err(e) => {
            tracing::debug!(token, %e, "Hello refused");
            false
        }
    }
}
