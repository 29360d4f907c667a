//! The broker: one epoll loop, one thread, every client a socket.
//!
//! Sockets play kdbus's device nodes: `control` makes buses, `<bus>/bus` is a bus's
//! default endpoint. Each accepted socket is a *handle* that, like a kdbus file
//! descriptor, is transformed once: a control handle into a bus owner, an endpoint
//! handle into a connection (HELLO). All bus semantics are `kdbus_core::Domain`'s; this
//! file moves bytes, fds and credentials between sockets and the domain.
//!
//! The loop never blocks on a client: sockets are non-blocking, what a client does not
//! read in time waits in a bounded per-handle backlog, and a client that lets the
//! backlog overflow is disconnected. Output is flushed once per iteration, so every
//! record a connection got during one wakeup travels in one datagram.

use crate::dbus_front::DBusClient;
use crate::peer::{peer_from_creds, peer_from_socket, ProcStrings};
use crate::sys::{shutdown_signalfd, MappedPool};
use kdbus_abi::wire::{self, Frames, RecHeader, ReqHeader};
use kdbus_abi::{cmd, BloomParameter, Errno};
use kdbus_core::bus::bus_access_mode;
use kdbus_core::domain::Request;
use kdbus_core::Files;
use kdbus_core::{BusKey, Clock, ConnKey, Creds, Domain, Now, Peer, PoolMemory};
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};
use rustix::io::Errno as SysErrno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use std::collections::{HashMap, VecDeque};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use zerocopy::IntoBytes;

/// Largest datagram the broker writes; records beyond it go in the next one.
const MAX_OUT_DATAGRAM: usize = 64 * 1024;
/// Output a client may leave unread before we give up on it.
const MAX_BACKLOG: usize = 8 * 1024 * 1024;
/// The same for a D-Bus client: well above what other peers may queue for it
/// (`kdbus_bridge::stream_quota`; the bus's signals stop at that quota too), so only
/// the answers to its own calls, or a monitor's copies, can get it there.
const MAX_STREAM_BACKLOG: usize = 4 * kdbus_bridge::stream_quota::STREAM_QUOTA_BYTES as usize;
/// Datagrams read from one socket per wakeup, so that one busy client cannot starve
/// the others.
const READ_BUDGET: usize = 64;
/// Most fds in one datagram (the kernel's SCM_MAX_FD).
const MAX_FDS_PER_DATAGRAM: usize = 253;
const TOKEN_SIGNAL: u64 = 0;
const TOKEN_CONTROL: u64 = 1;
const TOKEN_PARAMS: u64 = 2;

/// Broker configuration, from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    pub runtime_dir: PathBuf,
    /// Buses that live as long as the broker (full names, `<uid>-` included).
    pub buses: Vec<String>,
    /// Extra D-Bus addresses the first bus listens on (dbus-daemon's `<listen>`).
    pub dbus_listen: Vec<crate::config::ListenAddr>,
}

/// Tells the domain what a passed fd is, from its seals, type and socket family.
struct SystemFiles;

impl kdbus_core::FdInspector for SystemFiles {
    fn inspect(&self, fd: rustix::fd::BorrowedFd<'_>) -> kdbus_core::FdKind {
        use kdbus_core::FdKind;
        // Only shmem files (memfds) have seals.
        if let Ok(seals) = rustix::fs::fcntl_get_seals(fd) {
            let size = rustix::fs::fstat(fd).map_or(0, |st| st.st_size as u64);
            return FdKind::Memfd {
                seals: seals.bits(),
                size,
            };
        }
        let is_path =
            rustix::fs::fcntl_getfl(fd).is_ok_and(|f| f.contains(rustix::fs::OFlags::PATH));
        if !is_path
            && rustix::net::sockopt::socket_domain(fd)
                .is_ok_and(|d| d == rustix::net::AddressFamily::UNIX)
        {
            return FdKind::UnixSocket;
        }
        FdKind::Other
    }
}

/// The system clock, read once per loop iteration and whenever the domain asks.
struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Now {
        let mono = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let real = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
        let ns = |t: rustix::time::Timespec| t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64;
        Now {
            monotonic_ns: ns(mono),
            realtime_ns: ns(real),
        }
    }
}

pub(crate) enum Role {
    /// Connected to `control`, nothing made yet.
    Control,
    /// Made this bus; the bus lives as long as the handle.
    BusOwner(BusKey),
    /// Connected to a bus endpoint, no HELLO yet.
    Endpoint(BusKey),
    Conn(ConnKey),
    /// A D-Bus client on a bus's D-Bus socket (authenticating, or a connection after
    /// Hello).
    DBus(Box<DBusClient>),
}

impl Handle {
    /// The connection whose D-Bus stream this is, once it said Hello: bytes written
    /// to it are reported to its stream quota. (SASL replies still in the backlog at
    /// Hello would be reported too; the quota clamps what it is told to what it holds.)
    fn stream_conn(&self) -> Option<ConnKey> {
        match &self.role {
            Role::DBus(c) => c.key,
            _ => None,
        }
    }
}

pub(crate) struct Handle {
    pub(crate) fd: OwnedFd,
    pub(crate) peer: Peer,
    pub(crate) role: Role,
    /// A byte stream (D-Bus) rather than datagrams: writes may be partial.
    stream: bool,
    /// Datagrams the client has not taken yet (its socket buffer was full).
    backlog: VecDeque<(Vec<u8>, Vec<Files>)>,
    backlog_bytes: usize,
}

enum Listener {
    Control,
    Bus(BusKey),
    DBus(BusKey),
}

struct BusSockets {
    dir: PathBuf,
    listener_token: u64,
    dbus_token: u64,
}

pub struct Broker {
    cfg: Config,
    pub(crate) domain: Domain,
    /// The D-Bus personality of the buses (the driver, D-Bus clients as peers).
    pub(crate) bridge: kdbus_bridge::Bridge,
    pub(crate) epoll: OwnedFd,
    /// Registered in `epoll`; kept here so it stays open.
    _signal: OwnedFd,
    listeners: HashMap<u64, (OwnedFd, Listener)>,
    /// Boxed: the table's slots stay small, so its growth (all of whose pages a
    /// hash table touches) costs little per connection.
    pub(crate) handles: HashMap<u64, Box<Handle>>,
    pub(crate) conn_token: HashMap<ConnKey, u64>,
    /// Unauthenticated D-Bus clients: (deadline, token), earliest first.
    pub(crate) auth_deadlines: std::collections::BTreeSet<(u64, u64)>,
    /// Unauthenticated D-Bus clients per uid.
    pub(crate) incomplete: HashMap<u32, u32>,
    /// Bytes of incomplete D-Bus messages held per uid.
    pub(crate) partial_bytes: HashMap<u32, u64>,
    /// Socket files of extra D-Bus listeners, removed at shutdown.
    extra_paths: Vec<PathBuf>,
    bus_sockets: HashMap<BusKey, BusSockets>,
    next_token: u64,
    pub(crate) rbuf: Vec<u8>,
    dirty: Vec<ConnKey>,
    me: Peer,
    proc_strings: ProcStrings,
    /// kdbus's module parameters (`attach_flags_mask`), as files.
    params: Option<crate::params::Params>,
}

/// What `Broker::new` created, for the ready line.
pub struct Ready {
    pub control: PathBuf,
    pub buses: Vec<PathBuf>,
    /// D-Bus addresses of the buses (`unix:path=...`), in the same order.
    pub dbus: Vec<String>,
    /// The addresses of `Config::dbus_listen`, as dbus-daemon prints them (with guid).
    pub dbus_listen: Vec<String>,
}

impl Broker {
    pub fn new(cfg: Config) -> std::io::Result<(Broker, Ready)> {
        let signal = shutdown_signalfd()?;
        crate::sys::ignore_sigpipe();
        std::fs::create_dir_all(&cfg.runtime_dir)?;
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &epoll,
            &signal,
            EventData::new_u64(TOKEN_SIGNAL),
            EventFlags::IN,
        )?;
        let me_creds = Creds {
            pid: std::process::id(),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        };
        let mut proc_strings = ProcStrings::default();
        let me = peer_from_creds(me_creds, &mut proc_strings);
        let mut domain = Domain::new(Box::new(SystemClock));
        domain.set_fd_inspector(Box::new(SystemFiles));
        let mut b = Broker {
            cfg: cfg.clone(),
            domain,
            bridge: kdbus_bridge::Bridge::new(&machine_id()),
            epoll,
            _signal: signal,
            listeners: HashMap::new(),
            handles: HashMap::new(),
            conn_token: HashMap::new(),
            auth_deadlines: Default::default(),
            incomplete: HashMap::new(),
            partial_bytes: HashMap::new(),
            extra_paths: Vec::new(),
            bus_sockets: HashMap::new(),
            next_token: 16,
            rbuf: vec![0; wire::MAX_REQUEST_DATAGRAM],
            dirty: Vec::new(),
            me,
            proc_strings,
            params: None,
        };
        let control = cfg.runtime_dir.join("control");
        let lfd = listen_unix(&control, 0o666)?;
        epoll::add(
            &b.epoll,
            &lfd,
            EventData::new_u64(TOKEN_CONTROL),
            EventFlags::IN,
        )?;
        b.listeners.insert(TOKEN_CONTROL, (lfd, Listener::Control));
        let (params, mask) = crate::params::Params::open(&cfg.runtime_dir)?;
        epoll::add(
            &b.epoll,
            params.fd(),
            EventData::new_u64(TOKEN_PARAMS),
            EventFlags::IN,
        )?;
        b.domain.set_attach_mask(mask);
        b.params = Some(params);
        let mut buses = Vec::new();
        let mut dbus = Vec::new();
        let mut dbus_listen = Vec::new();
        for (i, name) in cfg.buses.iter().enumerate() {
            let key = b.make_static_bus(name)?;
            let dir = &b.bus_sockets[&key].dir;
            buses.push(dir.join("bus"));
            dbus.push(format!("unix:path={}", dir.join("dbus").display()));
            if i == 0 {
                for addr in &cfg.dbus_listen {
                    dbus_listen.push(b.dbus_listen_extra(key, addr)?);
                }
            }
        }
        Ok((
            b,
            Ready {
                control,
                buses,
                dbus,
                dbus_listen,
            },
        ))
    }

    /// Listen for D-Bus clients of `bus` at a dbus-daemon address; returns the address
    /// as dbus-daemon prints it.
    fn dbus_listen_extra(
        &mut self,
        bus: BusKey,
        addr: &crate::config::ListenAddr,
    ) -> std::io::Result<String> {
        use crate::config::ListenAddr;
        let guid: String = self
            .domain
            .bus(bus)
            .map(|b| b.id128.iter().map(|x| format!("{x:02x}")).collect())
            .unwrap_or_default();
        let (fd, printed) = match addr {
            ListenAddr::Path(p) => (
                listen_unix_stream(p, 0o666)?,
                format!("unix:path={}", p.display()),
            ),
            ListenAddr::Dir(d) => {
                let name: String = random_id128()[..8]
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect();
                let p = d.join(format!("dbus-{name}"));
                (
                    listen_unix_stream(&p, 0o666)?,
                    format!("unix:path={}", p.display()),
                )
            }
            ListenAddr::Abstract(n) => {
                let fd = rustix::net::socket_with(
                    AddressFamily::UNIX,
                    SocketType::STREAM,
                    SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                    None,
                )?;
                rustix::net::bind(&fd, &SocketAddrUnix::new_abstract_name(n.as_bytes())?)?;
                rustix::net::listen(&fd, 1024)?;
                (fd, format!("unix:abstract={n}"))
            }
        };
        if let Some(path) = printed.strip_prefix("unix:path=") {
            self.extra_paths.push(PathBuf::from(path));
        }
        let token = self.token();
        epoll::add(&self.epoll, &fd, EventData::new_u64(token), EventFlags::IN)?;
        self.listeners.insert(token, (fd, Listener::DBus(bus)));
        Ok(format!("{printed},guid={guid}"))
    }

    /// A bus owned by the broker itself (the default bus, `--bus`).
    fn make_static_bus(&mut self, name: &str) -> std::io::Result<BusKey> {
        // sd-bus's default bloom parameters: 512 bits, 8 hash functions.
        let bloom = BloomParameter {
            size: 64,
            n_hash: 8,
        };
        let body = kdbus_abi::encode::bus_make(name, 0, bloom);
        let me = self.me.clone();
        let key = self
            .domain
            .bus_make(&me, &body, random_id128())
            .map_err(|e| std::io::Error::other(format!("bus {name}: {e}")))?;
        self.bus_open_sockets(key)?;
        Ok(key)
    }

    fn bus_open_sockets(&mut self, key: BusKey) -> std::io::Result<()> {
        let bus = self
            .domain
            .bus(key)
            .ok_or_else(|| std::io::Error::other("bus vanished"))?;
        let dir = self.cfg.runtime_dir.join(&bus.name);
        let mode = bus_access_mode(bus.flags);
        std::fs::create_dir_all(&dir)?;
        rustix::fs::chmod(&dir, Mode::from_raw_mode(0o755))?;
        let lfd = listen_unix(&dir.join("bus"), mode)?;
        let token = self.token();
        epoll::add(&self.epoll, &lfd, EventData::new_u64(token), EventFlags::IN)?;
        self.listeners.insert(token, (lfd, Listener::Bus(key)));
        let dfd = listen_unix_stream(&dir.join("dbus"), mode)?;
        let dbus_token = self.token();
        epoll::add(
            &self.epoll,
            &dfd,
            EventData::new_u64(dbus_token),
            EventFlags::IN,
        )?;
        self.listeners
            .insert(dbus_token, (dfd, Listener::DBus(key)));
        self.bus_sockets.insert(
            key,
            BusSockets {
                dir,
                listener_token: token,
                dbus_token,
            },
        );
        Ok(())
    }

    pub(crate) fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Run until SIGINT/SIGTERM; removes every socket it created on the way out.
    pub fn run(&mut self) -> std::io::Result<()> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        loop {
            let timeout = self.poll_timeout();
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(_) if events.is_empty() && crate::sys::shutdown_pending() => {
                    tracing::info!("shutting down");
                    self.shutdown();
                    return Ok(());
                }
                Ok(_) => {}
                Err(SysErrno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            // A parameter written before a client's request applies to it: the
            // watch goes first.
            if events.iter().any(|ev| ev.data.u64() == TOKEN_PARAMS) {
                if let Some(mask) = self.params.as_mut().and_then(|p| p.changed()) {
                    self.domain.set_attach_mask(mask);
                }
            }
            for ev in &events {
                let token = ev.data.u64();
                let flags = ev.flags;
                match token {
                    TOKEN_PARAMS => {}
                    TOKEN_SIGNAL => {
                        tracing::info!("shutting down");
                        self.shutdown();
                        return Ok(());
                    }
                    t if self.listeners.contains_key(&t) => self.accept_all(t),
                    t => self.handle_event(t, flags),
                }
            }
            self.domain.tick();
            self.dbus_expire_auth();
            for key in self.domain.take_closed() {
                if let Some(token) = self.conn_token.get(&key).copied() {
                    self.handle_close(token);
                }
            }
            self.flush();
        }
    }

    fn poll_timeout(&self) -> Option<rustix::time::Timespec> {
        let auth = self.auth_deadlines.first().map(|d| d.0);
        let now = self.domain.now().monotonic_ns;
        // Wake at least once a second to look for a shutdown signal (see
        // `sys::shutdown_pending`).
        let tick = now + 1_000_000_000;
        let deadline = [self.domain.next_deadline(), auth, Some(tick)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(tick);
        let d = deadline.saturating_sub(now);
        Some(rustix::time::Timespec {
            tv_sec: (d / 1_000_000_000) as i64,
            tv_nsec: (d % 1_000_000_000) as i64,
        })
    }

    fn accept_all(&mut self, ltoken: u64) {
        loop {
            let Some((lfd, which)) = self.listeners.get(&ltoken) else {
                return;
            };
            let fd =
                match rustix::net::accept_with(lfd, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
                    Ok(fd) => fd,
                    Err(SysErrno::AGAIN) => return,
                    Err(e) => {
                        tracing::warn!(%e, "accept failed");
                        return;
                    }
                };
            // Connections (not control sockets) get a pidfd, for ProcessFD.
            let pidfd = !matches!(which, Listener::Control);
            let peer = match peer_from_socket(&fd, &mut self.proc_strings, pidfd) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(%e, "no peer credentials, dropping");
                    continue;
                }
            };
            let (role, stream) = match which {
                Listener::Control => (Role::Control, false),
                Listener::Bus(b) => (Role::Endpoint(*b), false),
                Listener::DBus(b) => {
                    if !self.dbus_may_accept(peer.creds.uid) {
                        tracing::debug!(
                            uid = peer.creds.uid,
                            "too many unauthenticated D-Bus connections, closing"
                        );
                        continue;
                    }
                    // The server guid is the bus id: addresses carry it as `guid=`, and
                    // clients check that the server they reach is the one they meant.
                    let guid = self.domain.bus(*b).map_or([0; 16], |bus| bus.id128);
                    let client = DBusClient::new(*b, peer.creds.uid, guid);
                    (Role::DBus(Box::new(client)), true)
                }
            };
            let _ = rustix::net::sockopt::set_socket_passcred(&fd, true);
            let _ = rustix::net::sockopt::set_socket_send_buffer_size(&fd, 1 << 20);
            let token = self.token();
            if epoll::add(&self.epoll, &fd, EventData::new_u64(token), EventFlags::IN).is_err() {
                continue;
            }
            self.handles.insert(
                token,
                Box::new(Handle {
                    fd,
                    peer,
                    role,
                    stream,
                    backlog: VecDeque::new(),
                    backlog_bytes: 0,
                }),
            );
            if stream {
                self.dbus_accepted(token);
            }
        }
    }

    fn handle_event(&mut self, token: u64, flags: EventFlags) {
        if flags.contains(EventFlags::OUT) {
            self.backlog_write(token);
        }
        if flags.intersects(EventFlags::IN | EventFlags::HUP | EventFlags::ERR) {
            if self.handles.get(&token).is_some_and(|h| h.stream) {
                self.dbus_read(token);
            } else {
                self.handle_read(token);
            }
        }
    }

    /// Read and run up to READ_BUDGET datagrams from one handle.
    fn handle_read(&mut self, token: u64) {
        let mut rbuf = std::mem::take(&mut self.rbuf);
        for _ in 0..READ_BUDGET {
            let Some(h) = self.handles.get(&token) else {
                break;
            };
            let mut space = [MaybeUninit::uninit();
                rustix::cmsg_space!(ScmRights(MAX_FDS_PER_DATAGRAM), ScmCredentials(1))];
            let mut anc = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [IoSliceMut::new(&mut rbuf)];
            let r = rustix::net::recvmsg(
                &h.fd,
                &mut iov,
                &mut anc,
                RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            );
            let msg = match r {
                Ok(m) => m,
                Err(SysErrno::AGAIN) => break,
                Err(SysErrno::INTR) => continue,
                Err(_) => {
                    self.handle_close(token);
                    break;
                }
            };
            if msg.bytes == 0 && !msg.flags.contains(ReturnFlags::TRUNC) {
                // Orderly shutdown by the client.
                self.handle_close(token);
                break;
            }
            let mut fds: Vec<OwnedFd> = Vec::new();
            let mut creds = None;
            for m in anc.drain() {
                match m {
                    RecvAncillaryMessage::ScmRights(it) => fds.extend(it),
                    RecvAncillaryMessage::ScmCredentials(c) => {
                        creds = crate::peer::creds_from_scm(&c)
                    }
                    _ => {}
                }
            }
            let truncated =
                msg.flags.contains(ReturnFlags::TRUNC) || msg.flags.contains(ReturnFlags::CTRUNC);
            let len = msg.bytes.min(rbuf.len());
            self.handle_datagram(token, &rbuf[..len], fds, creds, truncated);
        }
        self.rbuf = rbuf;
    }

    fn handle_datagram(
        &mut self,
        token: u64,
        data: &[u8],
        mut fds: Vec<OwnedFd>,
        creds: Option<Creds>,
        truncated: bool,
    ) {
        let Some(h) = self.handles.get(&token) else {
            return;
        };
        let creds = creds.unwrap_or(h.peer.creds);
        for frame in Frames::<ReqHeader>::new(data) {
            let (hdr, body) = match frame {
                Ok(f) => f,
                Err(hdr) => {
                    // A frame cut short: answer it (if we can tell which it was) in
                    // order with the others, and drop the rest of the datagram.
                    let req_id = hdr.map_or(0, |h| h.req_id);
                    let e = if truncated {
                        Errno::EMSGSIZE
                    } else {
                        Errno::EINVAL
                    };
                    match self.handles.get(&token).map(|h| &h.role) {
                        Some(Role::Conn(key)) => self.domain.conn_reply_error(*key, req_id, e),
                        _ => self.reply_direct(token, req_id, e, &[], None),
                    }
                    return;
                }
            };
            let req = Request {
                cmd: hdr.cmd,
                flags: hdr.flags,
                req_id: hdr.req_id,
                body,
                creds,
            };
            self.handle_request(token, &req, &mut fds);
        }
    }

    fn handle_request(&mut self, token: u64, req: &Request<'_>, fds: &mut Vec<OwnedFd>) {
        let Some(h) = self.handles.get(&token) else {
            return;
        };
        if !matches!(h.role, Role::Conn(_)) {
            if let Some(wb) = kdbus_core::handle::negotiate(req.cmd, req.body) {
                self.reply_direct(token, req.req_id, Errno(0), &wb, None);
                return;
            }
        }
        match h.role {
            Role::Conn(key) => self.domain.conn_request(key, req, fds),
            Role::BusOwner(bus) if req.cmd == cmd::RELEASE => {
                // Closing the owner: the bus goes now, not when the socket's EOF is seen.
                self.bus_remove(bus);
                self.reply_direct(token, req.req_id, Errno(0), &[], None);
            }
            Role::BusOwner(_) => self.reply_direct(token, req.req_id, Errno::EBADFD, &[], None),
            Role::Control | Role::Endpoint(_) if req.cmd == cmd::RELEASE => {
                self.reply_direct(token, req.req_id, Errno(0), &[], None)
            }
            Role::Control if req.cmd == cmd::BUS_MAKE => self.control_bus_make(token, req),
            Role::Control => self.reply_direct(token, req.req_id, Errno::ENOTTY, &[], None),
            Role::Endpoint(bus) if req.cmd == cmd::HELLO => self.endpoint_hello(token, bus, req),
            Role::Endpoint(_) if req.cmd == cmd::ENDPOINT_MAKE => {
                self.reply_direct(token, req.req_id, Errno::EOPNOTSUPP, &[], None)
            }
            Role::Endpoint(_) => self.reply_direct(token, req.req_id, Errno::ENOTTY, &[], None),
            Role::DBus(_) => {} // D-Bus clients are read by dbus_read, never here
        }
    }

    fn control_bus_make(&mut self, token: u64, req: &Request<'_>) {
        let Some(h) = self.handles.get(&token) else {
            return;
        };
        let mut peer = h.peer.clone();
        peer.creds.uid = req.creds.uid;
        peer.creds.gid = req.creds.gid;
        let result = self.domain.bus_make(&peer, req.body, random_id128());
        match result {
            Ok(key) => {
                if let Err(e) = self.bus_open_sockets(key) {
                    tracing::warn!(%e, "cannot create bus sockets");
                    self.domain.bus_destroy(key);
                    self.reply_direct(token, req.req_id, Errno::EIO, &[], None);
                    return;
                }
                if let Some(h) = self.handles.get_mut(&token) {
                    h.role = Role::BusOwner(key);
                }
                let body =
                    kdbus_abi::read_struct::<kdbus_abi::CmdGeneric>(req.body).unwrap_or_default();
                self.reply_direct(token, req.req_id, Errno(0), body.as_bytes(), None);
            }
            Err(e) => self.reply_direct(token, req.req_id, e, &[], None),
        }
    }

    fn endpoint_hello(&mut self, token: u64, bus: BusKey, req: &Request<'_>) {
        let Some(h) = self.handles.get(&token) else {
            return;
        };
        let mut peer = h.peer.clone();
        peer.creds = req.creds;
        let mut ro_fd = None;
        let mut make_pool = |size: u64| -> Result<Box<dyn PoolMemory>, Errno> {
            let (mem, fd) = pool_create(size).map_err(|e| {
                tracing::warn!(%e, "cannot create pool");
                Errno::ENOMEM
            })?;
            ro_fd = Some(fd);
            Ok(Box::new(mem))
        };
        match self.domain.hello(bus, &peer, req.body, &mut make_pool) {
            Ok((key, reply)) => {
                if let Some(h) = self.handles.get_mut(&token) {
                    h.role = Role::Conn(key);
                }
                self.conn_token.insert(key, token);
                self.reply_direct(token, req.req_id, Errno(0), reply.as_bytes(), ro_fd);
            }
            Err(e) => self.reply_direct(token, req.req_id, e, &[], None),
        }
    }

    /// Answer a request of a handle that is not (yet) a connection, right away.
    fn reply_direct(
        &mut self,
        token: u64,
        req_id: u64,
        e: Errno,
        body: &[u8],
        fd: Option<OwnedFd>,
    ) {
        let n_fds = u16::from(fd.is_some());
        let h = RecHeader {
            kind: wire::REC_REPLY,
            n_fds,
            error: e.0,
            req_id,
            body_len: body.len() as u64,
        };
        let mut out = Vec::with_capacity(64 + body.len());
        wire::push_frame(&mut out, &h, &[body]);
        let files: Vec<Files> = fd.map(|fd| Files::from(vec![fd])).into_iter().collect();
        self.handle_send(token, out, files);
    }

    /// Write every dirty connection's records, one datagram per connection if it fits.
    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        self.domain.take_dirty(&mut dirty);
        for &key in &dirty {
            self.flush_conn(key);
            self.domain.conn_output_done(key);
        }
        self.dirty = dirty;
    }

    /// Write a connection's output to its socket, or what does not fit to its backlog.
    fn flush_conn(&mut self, key: ConnKey) {
        let Some(&token) = self.conn_token.get(&key) else {
            if let Some((out, fds)) = self.domain.conn_output(key) {
                out.clear();
                fds.clear();
            }
            return;
        };
        let Some(h) = self.handles.get(&token) else {
            return;
        };
        let Some((out, fds)) = self.domain.conn_output(key) else {
            return;
        };
        if out.is_empty() {
            return;
        }
        if h.stream {
            if fds.is_empty() {
                // The common case: no fds, one write, no copies.
                let sent = if h.backlog.is_empty() {
                    send_bytes(h.fd.as_fd(), out, std::iter::empty()).ok()
                } else {
                    None
                };
                let rest = match sent {
                    Some(n) if n >= out.len() => {
                        out.clear();
                        None
                    }
                    _ => {
                        out.drain(..sent.unwrap_or(0));
                        Some(std::mem::take(out))
                    }
                };
                if let (Some(n), Some(key)) = (sent, h.stream_conn()) {
                    self.domain.stream_written(key, n);
                }
                if let Some(rest) = rest {
                    self.handle_send(token, rest, Vec::new());
                }
                return;
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
                    self.handle_send(token, chunk, std::mem::take(&mut files));
                    start = at;
                }
                files.push(f);
            }
            self.handle_send(token, out[start..].to_vec(), files);
            return;
        }
        if h.backlog.is_empty()
            && out.len() <= MAX_OUT_DATAGRAM
            && fds.iter().map(|(_, f)| f.len()).sum::<usize>() <= MAX_FDS_PER_DATAGRAM
        {
            // The common case: one datagram, no copies.
            match send_bytes(h.fd.as_fd(), out, fds.iter().map(|(_, f)| f)) {
                Ok(_) => {
                    out.clear();
                    fds.clear();
                    return;
                }
                Err(SysErrno::AGAIN) => {}
                Err(_) => {
                    out.clear();
                    fds.clear();
                    return; // the read side will see the hang-up
                }
            }
        }
        let chunks = split_records(out, fds);
        out.clear();
        for (bytes, fds) in chunks {
            self.handle_send(token, bytes, fds);
        }
    }

    /// Send one datagram (or stream chunk), or park it in the backlog if the client is
    /// behind.
    pub(crate) fn handle_send(&mut self, token: u64, mut bytes: Vec<u8>, mut fds: Vec<Files>) {
        let Some(h) = self.handles.get_mut(&token) else {
            return;
        };
        let stream_of = h.stream_conn();
        if h.backlog.is_empty() {
            match send_bytes(h.fd.as_fd(), &bytes, fds.iter()) {
                Ok(n) if n >= bytes.len() => {
                    if let Some(key) = stream_of {
                        self.domain.stream_written(key, n);
                    }
                    return;
                }
                Ok(n) => {
                    if let Some(key) = stream_of {
                        self.domain.stream_written(key, n);
                    }
                    bytes.drain(..n);
                    fds.clear();
                }
                Err(SysErrno::AGAIN) => {}
                Err(e) => {
                    // Bytes lost from a stream corrupt it; a datagram socket that
                    // fails this way is broken too.
                    tracing::debug!(token, %e, "write failed, disconnecting");
                    self.handle_close(token);
                    return;
                }
            }
        }
        h.backlog_bytes += bytes.len();
        h.backlog.push_back((bytes, fds));
        // What waits behind the chunk being written is bounded; the chunk itself may
        // be one large D-Bus message (up to the protocol's 128 MiB), no more. Other
        // peers cannot fill a D-Bus client's stream (their shares of it are bounded
        // in the core): what piles up beyond is the client's own doing.
        let front = h.backlog.front().map_or(0, |(b, _)| b.len());
        let behind = h.backlog_bytes - front.min(kdbus_dbus::header::MAX_MESSAGE_SIZE);
        let bound = if h.stream {
            MAX_STREAM_BACKLOG
        } else {
            MAX_BACKLOG
        };
        if behind > bound {
            tracing::info!(token, "client does not read its socket, disconnecting");
            self.handle_close(token);
            return;
        }
        if h.backlog.len() == 1 {
            let _ = epoll::modify(
                &self.epoll,
                &h.fd,
                EventData::new_u64(token),
                EventFlags::IN | EventFlags::OUT,
            );
        }
    }

    fn backlog_write(&mut self, token: u64) {
        let Some(h) = self.handles.get_mut(&token) else {
            return;
        };
        let stream_of = h.stream_conn();
        while let Some((bytes, fds)) = h.backlog.front_mut() {
            match send_bytes(h.fd.as_fd(), bytes, fds.iter()) {
                Ok(n) if n < bytes.len() => {
                    // A stream took part of it: keep the rest, its fds are gone.
                    bytes.drain(..n);
                    fds.clear();
                    h.backlog_bytes -= n;
                    if let Some(key) = stream_of {
                        self.domain.stream_written(key, n);
                    }
                    return;
                }
                Ok(n) => {
                    h.backlog_bytes -= bytes.len();
                    h.backlog.pop_front();
                    if let Some(key) = stream_of {
                        self.domain.stream_written(key, n);
                    }
                }
                Err(SysErrno::AGAIN) => return,
                Err(e) => {
                    tracing::debug!(token, %e, "write failed, disconnecting");
                    self.handle_close(token);
                    return;
                }
            }
        }
        let _ = epoll::modify(
            &self.epoll,
            &h.fd,
            EventData::new_u64(token),
            EventFlags::IN,
        );
    }

    pub(crate) fn handle_close(&mut self, token: u64) {
        let Some(h) = self.handles.remove(&token) else {
            return;
        };
        let _ = epoll::delete(&self.epoll, &h.fd);
        match h.role {
            Role::Conn(key) => {
                self.conn_token.remove(&key);
                self.domain.conn_release(key);
            }
            Role::BusOwner(bus) => self.bus_remove(bus),
            Role::DBus(c) => self.dbus_closed(token, &c),
            Role::Control | Role::Endpoint(_) => {}
        }
    }

    fn bus_remove(&mut self, bus: BusKey) {
        self.domain.bus_destroy(bus);
        if let Some(s) = self.bus_sockets.remove(&bus) {
            for t in [s.listener_token, s.dbus_token] {
                if let Some((lfd, _)) = self.listeners.remove(&t) {
                    let _ = epoll::delete(&self.epoll, &lfd);
                }
            }
            let _ = std::fs::remove_file(s.dir.join("bus"));
            let _ = std::fs::remove_file(s.dir.join("dbus"));
            let _ = std::fs::remove_dir(&s.dir);
        }
        // The domain disconnected everyone on the bus: hang up on them.
        for key in self.domain.take_closed() {
            if let Some(token) = self.conn_token.get(&key).copied() {
                self.handle_close(token);
            }
        }
    }

    fn shutdown(&mut self) {
        let buses: Vec<BusKey> = self.bus_sockets.keys().copied().collect();
        for b in buses {
            self.bus_remove(b);
        }
        let _ = std::fs::remove_file(self.cfg.runtime_dir.join("control"));
        for p in &self.extra_paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Send bytes with fds; returns how many bytes the socket took (all of them, for
/// datagrams).
pub(crate) fn send_bytes<'f>(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    files: impl Iterator<Item = &'f Files>,
) -> Result<usize, SysErrno> {
    // Collecting from no fds allocates nothing.
    let borrowed: Vec<BorrowedFd<'f>> = files.flat_map(|f| f.iter().map(|fd| fd.as_fd())).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_DATAGRAM))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        // More fds than one write can carry: callers keep each write within
        // MAX_FDS_PER_DATAGRAM, so this is a bug, not the client's doing.
        tracing::error!(n = borrowed.len(), "too many fds for one write");
        return Err(SysErrno::INVAL);
    }
    loop {
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        match rustix::net::sendmsg(fd, &[IoSlice::new(bytes)], &mut anc, flags) {
            Ok(n) => return Ok(n),
            Err(SysErrno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Cut a record stream into datagrams that respect the size and fd limits, keeping
/// each record's fds with it.
fn split_records(out: &[u8], files: &mut Vec<(usize, Files)>) -> Vec<(Vec<u8>, Vec<Files>)> {
    let mut chunks = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut cur_files: Vec<Files> = Vec::new();
    let mut cur_fds = 0;
    let mut next_files = files.drain(..);
    for (hdr, body) in Frames::<RecHeader>::new(out).flatten() {
        let n = hdr.n_fds as usize;
        let len = wire::REC_HEADER_SIZE + kdbus_abi::align8_usize(body.len());
        if !cur.is_empty()
            && (cur.len() + len > MAX_OUT_DATAGRAM || cur_fds + n > MAX_FDS_PER_DATAGRAM)
        {
            chunks.push((std::mem::take(&mut cur), std::mem::take(&mut cur_files)));
            cur_fds = 0;
        }
        wire::push_frame(&mut cur, &hdr, &[body]);
        if n > 0 {
            cur_files.extend(next_files.next().map(|(_, f)| f));
            cur_fds += n;
        }
    }
    if !cur.is_empty() {
        chunks.push((cur, cur_files));
    }
    chunks
}

/// Create a bound, listening SEQPACKET socket at `path` with permissions `mode`.
fn listen_unix(path: &Path, mode: u32) -> std::io::Result<OwnedFd> {
    listen_unix_type(path, mode, SocketType::SEQPACKET)
}

/// The same for a D-Bus socket (a byte stream).
fn listen_unix_stream(path: &Path, mode: u32) -> std::io::Result<OwnedFd> {
    listen_unix_type(path, mode, SocketType::STREAM)
}

fn listen_unix_type(path: &Path, mode: u32, kind: SocketType) -> std::io::Result<OwnedFd> {
    if path.exists() {
        // A live broker answers; a stale socket from a crash does not.
        let probe = rustix::net::socket(AddressFamily::UNIX, kind, None)?;
        if rustix::net::connect(&probe, &SocketAddrUnix::new(path)?).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is served by another broker", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        kind,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
    // Accepted sockets inherit it: fewer early datagrams arrive without credentials.
    let _ = rustix::net::sockopt::set_socket_passcred(&fd, true);
    rustix::fs::chmod(path, Mode::from_raw_mode(mode))?;
    rustix::net::listen(&fd, 1024)?;
    Ok(fd)
}

/// Create a receive pool: a sealed memfd the broker maps writable, and a read-only fd
/// of it for the client. After the seals, no one can make a new writable mapping,
/// write(2) to it, or resize it; the client's fd is read-only besides.
fn pool_create(size: u64) -> std::io::Result<(MappedPool, OwnedFd)> {
    let fd = rustix::fs::memfd_create(
        "kdbus-pool",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&fd, size)?;
    let mem = MappedPool::map(&fd, size as usize)?;
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::FUTURE_WRITE | SealFlags::SEAL,
    )?;
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let ro = rustix::fs::open(
        path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok((mem, ro))
}

/// This machine's id (`/etc/machine-id`), for Peer.GetMachineId; random if there is none.
fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| s.len() == 32)
        .unwrap_or_else(|| random_id128().iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn random_id128() -> [u8; 16] {
    let mut b = [0u8; 16];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    // UUID v4, DCE variant, as kdbus made them.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}
