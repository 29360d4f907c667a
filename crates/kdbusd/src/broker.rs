//! The broker of one domain: its epoll set, every client a socket. The server
//! (`server`) runs any number of them in one loop, one thread.
//!
//! Sockets play kdbus's device nodes: `control` makes buses, `<bus>/bus` is a bus's
//! default endpoint, `<bus>/dbus` its D-Bus socket (module `listener`). Each accepted
//! native socket is a *handle* that, like a kdbus file descriptor, is transformed once:
//! a control handle into a bus owner, an endpoint handle into a connection (HELLO).
//! All bus semantics are `kdbus_core::Domain`'s (and, for D-Bus clients, the bridge's);
//! this module is the glue that moves requests from sockets to the domain and the
//! domain's output back, and keeps the map from connections to sockets.
//!
//! The parts it glues know nothing of each other: the dispatcher (`dispatch`) only
//! fds and tokens, the transports (`seqpacket` for native clients, `dbus_socket` for
//! D-Bus clients) only their sockets, and what the D-Bus side must tell the loop comes
//! back as an event rather than a call into it. Only this module owns the domain.
//!
//! The loop never blocks on a client: sockets are non-blocking, what a client does not
//! read in time waits in a bounded per-socket backlog, and a client that lets the
//! backlog overflow is disconnected. Output is flushed once per iteration, so every
//! record a connection got during one wakeup travels in one datagram.

use crate::clock::{machine_id, random_id128, SystemClock};
use crate::dbus_socket::{DBusClients, Event};
use crate::dispatch::{Dispatch, TOKEN_CONFIG_WATCH, TOKEN_PARAMS, TOKEN_SIGNAL};
use crate::listener::Listeners;
use crate::peer::{peer_from_creds, ProcStrings};
use crate::pool_memfd::{pool_create, SystemFiles};
use crate::seqpacket::{self, Handle, Read, Role, READ_BUDGET};
use kdbus_abi::wire;
use kdbus_abi::{BloomParameter, Errno};
use kdbus_core::bus::bus_access_mode;
use kdbus_core::domain::Request;
use kdbus_core::handle::{handle_action, HandleAction};
use kdbus_core::Files;
use kdbus_core::{BusKey, ConnKey, Creds, Domain, Peer, PoolMemory};
use rustix::event::epoll::{self, EventFlags};
use rustix::fd::OwnedFd;
use rustix::io::Errno as SysErrno;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

mod accept;
mod configure;
use zerocopy::IntoBytes;

/// Broker configuration, from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where `control` and the bus directories are created.
    pub runtime_dir: PathBuf,
    /// Buses that live as long as the broker (full names, `<uid>-` included).
    pub buses: Vec<String>,
    /// Extra D-Bus addresses the first bus listens on (dbus-daemon's `<listen>`).
    pub dbus_listen: Vec<crate::config::ListenAddr>,
    /// Who may connect to the D-Bus sockets, from a dbus-daemon configuration (`None`:
    /// kdbus's rule, the bus's access mode).
    pub dbus_admission: Option<crate::config::Admission>,
    /// The message policy of the first bus, from a dbus-daemon configuration (`None`:
    /// none, as on a bus a native client makes).
    pub msg_policy: Option<kdbus_core::msgpolicy::MsgPolicy>,
    /// The dbus-daemon configuration file, read again on `ReloadConfig` and SIGHUP.
    pub config_file: Option<PathBuf>,
    /// Its `<limit>`s, for the first bus and its D-Bus socket.
    pub limits: Option<crate::limits::Limits>,
    /// What one unprivileged user may hold in all in the domain.
    pub user_limits: kdbus_core::UserLimits,
    /// `--systemd-activation` was given (the driver lists `SystemdActivation`).
    pub systemd_activation: bool,
    /// The uid and gid the broker will serve as once its sockets are bound (a system
    /// bus's `<user>`): the buses' owner and its own peer are that user, not root.
    pub run_as: Option<(u32, u32)>,
    /// The longest the loop polls before it sleeps, in ns (`--busy-poll-us`).
    pub busy_poll_ns: u64,
}

/// The broker: the domain, and the sockets through which clients reach it.
pub struct Broker {
    /// Every bus, connection, name and message in flight.
    domain: Domain,
    /// The D-Bus personality of the buses (the driver, D-Bus clients as peers).
    bridge: kdbus_bridge::Bridge,
    /// The epoll set and its tokens.
    dispatch: Dispatch,
    /// The listening sockets and the bus directories.
    listeners: Listeners,
    /// Native handles by token. Boxed: the table's slots stay small, so its growth
    /// (all of whose pages a hash table touches) costs little per connection.
    handles: HashMap<u64, Box<Handle>>,
    /// D-Bus clients (by token) and their books.
    dbus: DBusClients,
    /// The socket of each connection, native or D-Bus.
    conn_token: HashMap<ConnKey, u64>,
    /// The read buffer, shared by every socket (one read at a time).
    rbuf: Vec<u8>,
    /// Connections with output, reused between flushes.
    dirty: Vec<ConnKey>,
    /// The broker itself as a peer: the owner of the buses it makes.
    me: Peer,
    /// Interned `/proc` strings of connected peers.
    proc_strings: ProcStrings,
    /// kdbus's module parameters (`attach_flags_mask`), as files.
    params: Option<crate::params::Params>,
    /// The configuration file and the bus it configures (the first one).
    config_file: Option<PathBuf>,
    config_bus: Option<BusKey>,
    /// Where `control` and the bus directories are.
    runtime_dir: PathBuf,
    /// DOMAIN_MAKE requests for the server: (handle, request, name, access flags).
    domain_makes: Vec<(u64, u64, String, u64)>,
    /// Domains whose owner's handle is gone, for the server to remove.
    domains_gone: Vec<u64>,
    /// Reused by `turn`.
    events: Vec<epoll::Event>,
    /// The process's descriptors, per user (shared with the other domains).
    fds: crate::admission::SharedFdBooks,
    /// Native handles not yet transformed, per user and by deadline.
    waiting: crate::admission::Waiting,
    /// Accepting is paused until then (the process ran out of descriptors).
    accept_paused_until: Option<u64>,
    /// The configured bus's activatable services (see `activation`).
    activation: crate::activation::Activation,
    /// The watch over the configuration's directories (a dbus-daemon configuration).
    config_watch: Option<crate::config_watch::ConfigWatch>,
    /// When running out of descriptors was last logged.
    exhausted_logged: u64,
}

/// What one turn of a domain's loop saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Turn {
    /// The signalfd is readable.
    pub signalled: bool,
    /// Nothing was ready: the wait ended by its timeout.
    pub idle: bool,
}

/// What `Broker::new` created, for the ready line.
pub struct Ready {
    /// The control socket.
    pub control: PathBuf,
    /// The default endpoints of the buses (`<dir>/bus`), in the order configured.
    pub buses: Vec<PathBuf>,
    /// D-Bus addresses of the buses (`unix:path=...`), in the same order.
    pub dbus: Vec<String>,
    /// The addresses of `Config::dbus_listen`, as dbus-daemon prints them (with guid).
    pub dbus_listen: Vec<String>,
}

impl Broker {
    /// The broker of a domain rooted at `cfg.runtime_dir`, with `control_mode` for
    /// its control socket.
    pub fn new(
        cfg: Config,
        control_mode: u32,
        fds: crate::admission::SharedFdBooks,
    ) -> std::io::Result<(Broker, Ready)> {
        crate::sys::ignore_sigpipe();
        std::fs::create_dir_all(&cfg.runtime_dir)?;
        let dispatch = Dispatch::new(cfg.busy_poll_ns)?;
        let (uid, gid) = cfg.run_as.unwrap_or((
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        ));
        let me_creds = Creds {
            pid: std::process::id(),
            uid,
            gid,
        };
        let mut proc_strings = ProcStrings::default();
        let me = peer_from_creds(me_creds, &mut proc_strings);
        let mut domain = Domain::new(Box::new(SystemClock));
        domain.set_fd_inspector(Box::new(SystemFiles));
        domain.set_proc_facts(Box::new(crate::peer::ProcNow::default()));
        domain.set_facts_reader(Box::new(kdbus_bridge::HeaderFacts));
        domain.set_fd_ledger(Rc::new(crate::admission::FdLedgerOf(fds.clone())));
        domain.set_user_limits(cfg.user_limits);
        let mut b = Broker {
            domain,
            bridge: {
                let mut bridge = kdbus_bridge::Bridge::new(&machine_id());
                bridge.set_systemd_activation(cfg.systemd_activation);
                bridge
            },
            dispatch,
            listeners: Listeners::new(cfg.runtime_dir.clone()),
            handles: HashMap::new(),
            dbus: DBusClients::new(cfg.dbus_admission.clone(), fds.clone()),
            conn_token: HashMap::new(),
            rbuf: vec![0; wire::MAX_REQUEST_DATAGRAM],
            dirty: Vec::new(),
            me,
            proc_strings,
            params: None,
            config_file: cfg.config_file.clone(),
            config_bus: None,
            runtime_dir: cfg.runtime_dir.clone(),
            domain_makes: Vec::new(),
            domains_gone: Vec::new(),
            events: Vec::with_capacity(256),
            fds,
            waiting: Default::default(),
            accept_paused_until: None,
            exhausted_logged: 0,
            activation: Default::default(),
            config_watch: None,
        };
        let control = b.listeners.open_control(&b.dispatch, control_mode)?;
        let (params, mask) = crate::params::Params::open(&cfg.runtime_dir)?;
        b.dispatch.add(params.fd(), TOKEN_PARAMS)?;
        b.domain.set_attach_mask(mask);
        b.params = Some(params);
        let mut buses = Vec::new();
        let mut dbus = Vec::new();
        let mut dbus_listen = Vec::new();
        for (i, name) in cfg.buses.iter().enumerate() {
            let key = b.make_static_bus(name)?;
            let dir = b
                .listeners
                .bus_dir(key)
                .ok_or_else(|| std::io::Error::other("bus has no sockets"))?;
            buses.push(dir.join("bus"));
            dbus.push(format!("unix:path={}", dir.join("dbus").display()));
            if i == 0 {
                b.domain.bus_set_msg_policy(key, cfg.msg_policy.clone());
                b.config_bus = Some(key);
                if let Some(l) = &cfg.limits {
                    b.limits_apply(key, l);
                }
                for addr in &cfg.dbus_listen {
                    dbus_listen.push(b.dbus_listen_extra(key, addr)?);
                }
                let starter = dbus_listen.first().or(dbus.last()).cloned();
                b.activation_setup(starter.unwrap_or_default());
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
        let guid: String = self
            .domain
            .bus(bus)
            .map(|b| b.id128.iter().map(|x| format!("{x:02x}")).collect())
            .unwrap_or_default();
        self.listeners
            .listen_extra(&mut self.dispatch, bus, addr, &guid)
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
        let mode = bus_access_mode(bus.flags);
        self.listeners
            .open_bus(&mut self.dispatch, key, &bus.name, mode)
    }

    /// The epoll set of this domain, for the server to watch.
    pub fn epoll_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dispatch.fd()
    }

    /// Where this domain's `control` and buses are.
    /// Start the launcher that runs this bus's services as their `User=` (a system
    /// bus, while the broker is still root; see `launcher.rs`).
    pub fn activation_launcher_start(&mut self) -> std::io::Result<()> {
        if let Some(path) = &self.config_file {
            self.activation.launcher = Some(crate::launcher::Launcher::launcher_start(path)?);
        }
        Ok(())
    }

    pub fn runtime_dir(&self) -> &std::path::Path {
        &self.runtime_dir
    }

    /// What one unprivileged user may hold in all in this domain.
    pub fn user_limits(&self) -> kdbus_core::UserLimits {
        self.domain.user_limits()
    }

    /// Watch the server's signalfd too (as [`TOKEN_SIGNAL`]): a server with one
    /// domain then waits in the domain's own set, one `epoll_wait` per wakeup.
    pub fn watch_signals(&self, fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
        self.dispatch.add(fd, TOKEN_SIGNAL)
    }

    /// One turn of the loop: wait for something to do, at most `timeout_ns` (0: act
    /// only on what is ready now), act on it, let deadlines pass, answer reloads and
    /// flush. Says whether the signalfd is readable (the server reads it) and whether
    /// anything happened at all.
    pub fn turn(&mut self, timeout_ns: u64) -> std::io::Result<Turn> {
        let mut events = std::mem::take(&mut self.events);
        let r = self.turn_with(&mut events, timeout_ns);
        self.events = events;
        r
    }

    fn turn_with(
        &mut self,
        events: &mut Vec<epoll::Event>,
        timeout_ns: u64,
    ) -> std::io::Result<Turn> {
        match self.dispatch.wait(events, timeout_ns) {
            Ok(()) | Err(SysErrno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let signalled = events.iter().any(|ev| ev.data.u64() == TOKEN_SIGNAL);
        // A parameter written before a client's request applies to it: the
        // watch goes first.
        if events.iter().any(|ev| ev.data.u64() == TOKEN_PARAMS) {
            if let Some(mask) = self.params.as_mut().and_then(|p| p.changed()) {
                self.domain.set_attach_mask(mask);
            }
        }
        for ev in events.iter() {
            let token = ev.data.u64();
            let flags = ev.flags;
            match token {
                TOKEN_PARAMS | TOKEN_SIGNAL | TOKEN_CONFIG_WATCH => {}
                t if self.listeners.contains(t) => self.accept_all(t),
                t => self.socket_event(t, flags),
            }
        }
        self.activation_turn();
        let changed = events.iter().any(|ev| ev.data.u64() == TOKEN_CONFIG_WATCH)
            && self
                .config_watch
                .as_ref()
                .is_some_and(|w| w.config_watch_drain());
        let reloads = self.bridge.take_reloads();
        if changed && reloads.is_empty() {
            tracing::info!("a configuration or service directory changed: reloading");
            let _ = self.reload();
        }
        if !reloads.is_empty() {
            let result = self.reload();
            for (key, serial, wants) in reloads {
                if wants {
                    let r = result.clone();
                    self.bridge.reload_answer(&mut self.domain, key, serial, r);
                }
            }
        }
        self.domain.tick();
        self.dbus.expire_auth(&mut self.domain, &self.dispatch);
        for (token, ev) in self
            .dbus
            .expire_pending_fds(&mut self.domain, &self.dispatch)
        {
            self.dbus_event(token, ev);
        }
        self.waiting_expire();
        if self.listeners.dbus_paused() && !self.dbus.full() {
            self.listeners.dbus_pause(&self.dispatch, false);
        }
        for key in self.domain.take_closed() {
            if let Some(token) = self.conn_token.get(&key).copied() {
                self.close(token);
            }
        }
        self.flush();
        Ok(Turn {
            signalled,
            idle: events.is_empty(),
        })
    }

    /// DOMAIN_MAKE requests since the last time: (handle, request id, name, flags).
    /// The server makes the domain and answers with [`Broker::domain_made`].
    pub fn take_domain_makes(&mut self) -> Vec<(u64, u64, String, u64)> {
        std::mem::take(&mut self.domain_makes)
    }

    /// The answer to a DOMAIN_MAKE: the handle owns domain `Ok(id)` from now on.
    pub fn domain_made(&mut self, token: u64, req_id: u64, result: Result<u64, Errno>) {
        match result {
            Ok(id) => {
                if let Some(h) = self.handles.get_mut(&token) {
                    h.role = Role::DomainOwner(id);
                    self.waiting.end(token);
                }
                self.reply_direct(token, req_id, Errno(0), &[], None);
            }
            Err(e) => self.reply_direct(token, req_id, e, &[], None),
        }
        self.flush();
    }

    /// Domains whose owner handle is gone since the last time.
    pub fn take_domains_gone(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.domains_gone)
    }

    /// Close native handles that did not become anything in time.
    fn waiting_expire(&mut self) {
        let now = self.domain.now().monotonic_ns;
        if self.waiting.next_deadline().is_some_and(|d| d <= now) {
            for token in self.waiting.expired(now) {
                tracing::debug!(token, "a handle did not become anything in time");
                self.close(token);
            }
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            self.listeners.pause_all(&self.dispatch, false);
        }
    }

    /// How long the loop may sleep (ns): until the next reply or authentication
    /// deadline, and at least once a second.
    pub fn poll_timeout(&self) -> u64 {
        let auth = self.dbus.next_deadline();
        let now = self.domain.now().monotonic_ns;
        // Wake at least once a second to look for a shutdown signal (see
        // `sys::shutdown_pending`).
        let tick = now + 1_000_000_000;
        let waiting = self.waiting.next_deadline();
        let activation = self
            .activation
            .next_check()
            .map(|d| now + d.as_nanos() as u64);
        let deadline = [
            self.domain.next_deadline(),
            activation,
            auth,
            waiting,
            self.accept_paused_until,
            Some(tick),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(tick);
        deadline.saturating_sub(now)
    }

    /// A client socket (native or D-Bus) is ready.
    fn socket_event(&mut self, token: u64, flags: EventFlags) {
        let readable = flags.intersects(EventFlags::IN | EventFlags::HUP | EventFlags::ERR);
        if self.handles.contains_key(&token) {
            if flags.contains(EventFlags::OUT) {
                self.handle_writable(token);
            }
            if readable {
                self.handle_read(token);
            }
            return;
        }
        if flags.contains(EventFlags::OUT) {
            let ev = self.dbus.writable(token, &mut self.domain, &self.dispatch);
            self.dbus_event(token, ev);
        }
        if readable {
            let ev = self.dbus.readable(
                token,
                &mut self.rbuf,
                &mut self.domain,
                &mut self.bridge,
                &self.dispatch,
            );
            self.dbus_event(token, ev);
        }
    }

    /// Remember what the D-Bus side reports about client `token`.
    fn dbus_event(&mut self, token: u64, ev: Event) {
        match ev {
            Event::Quiet | Event::Closed(None) => {}
            Event::Connected(key) => {
                self.conn_token.insert(key, token);
            }
            Event::Closed(Some(key)) => {
                self.conn_token.remove(&key);
            }
        }
    }

    /// A native handle's socket is writable again.
    fn handle_writable(&mut self, token: u64) {
        let Some(h) = self.handles.get_mut(&token) else {
            return;
        };
        if h.writable(&self.dispatch, token).is_err() {
            self.close(token);
        }
    }

    /// Read and run up to READ_BUDGET datagrams from one handle.
    fn handle_read(&mut self, token: u64) {
        let mut rbuf = std::mem::take(&mut self.rbuf);
        for _ in 0..READ_BUDGET {
            let Some(h) = self.handles.get(&token) else {
                break;
            };
            match h.read(&mut rbuf) {
                Read::Datagram {
                    len,
                    fds,
                    creds,
                    truncated,
                } => self.handle_datagram(token, &rbuf[..len], fds, creds, truncated),
                Read::Again => break,
                Read::Interrupted => continue,
                Read::Closed => {
                    self.close(token);
                    break;
                }
            }
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
        for req in seqpacket::requests(data, creds, truncated) {
            match req {
                Ok(req) => self.handle_request(token, &req, &mut fds),
                Err((req_id, e)) => {
                    // A frame cut short: answer it (if we can tell which it was) in
                    // order with the others, and drop the rest of the datagram.
                    match self.handles.get(&token).map(|h| &h.role) {
                        Some(Role::Conn(key)) => self.domain.conn_reply_error(*key, req_id, e),
                        _ => self.reply_direct(token, req_id, e, &[], None),
                    }
                    return;
                }
            }
        }
    }

    /// Run one request according to what the handle is (kdbus's `handle.c`).
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
        let role = h.role;
        match (handle_action(role.kind(), req.cmd), role) {
            (HandleAction::Conn, Role::Conn(key)) => self.domain.conn_request(key, req, fds),
            (HandleAction::RemoveBus, Role::BusOwner(bus)) => {
                // Closing the owner: the bus goes now, not when the socket's EOF is seen.
                self.bus_remove(bus);
                self.reply_direct(token, req.req_id, Errno(0), &[], None);
            }
            (HandleAction::BusMake, Role::Control) => self.control_bus_make(token, req),
            (HandleAction::DomainMake, Role::Control) => {
                let mut peer = h.peer.clone();
                peer.creds = req.creds;
                match kdbus_core::bus::domain_parse_make(req.body, &peer) {
                    Ok((name, flags)) => self.domain_makes.push((token, req.req_id, name, flags)),
                    Err(e) => self.reply_direct(token, req.req_id, e, &[], None),
                }
            }
            (HandleAction::RemoveDomain, Role::DomainOwner(id)) => {
                self.domains_gone.push(id);
                if let Some(h) = self.handles.get_mut(&token) {
                    h.role = Role::Control;
                }
                self.reply_direct(token, req.req_id, Errno(0), &[], None);
            }
            (HandleAction::Hello, Role::Endpoint(bus, ep)) => {
                self.endpoint_hello(token, bus, ep, req)
            }
            (HandleAction::EndpointMake, Role::Endpoint(bus, None)) => {
                self.endpoint_make(token, bus, req)
            }
            (HandleAction::EndpointUpdate, Role::EndpointOwner(bus, ep)) => {
                let r = self.domain.endpoint_update(bus, ep, req.body);
                let e = r.err().unwrap_or(Errno(0));
                self.reply_direct(token, req.req_id, e, &[], None);
            }
            (HandleAction::RemoveEndpoint, Role::EndpointOwner(bus, ep)) => {
                self.endpoint_remove(bus, ep);
                self.reply_direct(token, req.req_id, Errno(0), &[], None);
            }
            (HandleAction::Answer(e), _) => self.reply_direct(token, req.req_id, e, &[], None),
            (action, role) => {
                // The core gives each kind only actions its role can carry out.
                tracing::error!(?action, ?role, "a handle action for another role");
                self.reply_direct(token, req.req_id, Errno::EINVAL, &[], None);
            }
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
                    self.waiting.end(token);
                }
                let body =
                    kdbus_abi::read_struct::<kdbus_abi::CmdGeneric>(req.body).unwrap_or_default();
                self.reply_direct(token, req.req_id, Errno(0), body.as_bytes(), None);
            }
            Err(e) => self.reply_direct(token, req.req_id, e, &[], None),
        }
    }

    /// ENDPOINT_MAKE: the endpoint, then its socket beside the bus's; the handle owns
    /// it from now on.
    fn endpoint_make(&mut self, token: u64, bus: BusKey, req: &Request<'_>) {
        let Some(h) = self.handles.get(&token) else {
            return;
        };
        let mut peer = h.peer.clone();
        peer.creds = req.creds;
        let (ep, name, flags) = match self.domain.endpoint_make(bus, &peer, req.body) {
            Ok(made) => made,
            Err(e) => return self.reply_direct(token, req.req_id, e, &[], None),
        };
        let mode = bus_access_mode(flags);
        let uid = peer.creds.uid;
        let opened = self
            .listeners
            .open_endpoint(&mut self.dispatch, bus, ep, &name, mode, uid);
        if let Err(e) = opened {
            tracing::warn!(%e, "cannot create an endpoint's socket");
            self.domain.endpoint_destroy(bus, ep);
            return self.reply_direct(token, req.req_id, Errno::EIO, &[], None);
        }
        if let Some(h) = self.handles.get_mut(&token) {
            h.role = Role::EndpointOwner(bus, ep);
            self.waiting.end(token);
        }
        self.reply_direct(token, req.req_id, Errno(0), &[], None);
    }

    /// A custom endpoint's owner is gone: so are the endpoint and its connections.
    fn endpoint_remove(&mut self, bus: BusKey, ep: u64) {
        self.domain.endpoint_destroy(bus, ep);
        self.listeners.close_endpoint(&self.dispatch, bus, ep);
        for key in self.domain.take_closed() {
            if let Some(token) = self.conn_token.get(&key).copied() {
                self.close(token);
            }
        }
    }

    fn endpoint_hello(&mut self, token: u64, bus: BusKey, ep: Option<u64>, req: &Request<'_>) {
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
        match self
            .domain
            .hello_on(bus, ep, &peer, req.body, &mut make_pool)
        {
            Ok((key, reply)) => {
                if let Some(h) = self.handles.get_mut(&token) {
                    h.role = Role::Conn(key);
                    self.waiting.end(token);
                }
                self.conn_token.insert(key, token);
                // The answer goes out after what HELLO did to others (ID_ADD to their
                // matches), as for every other command: flush those first.
                self.flush();
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
        let (out, files) = seqpacket::reply_record(req_id, e, body, fd);
        self.handle_send(token, out, files);
    }

    /// Send one datagram to a native handle, or park it in its backlog.
    fn handle_send(&mut self, token: u64, bytes: Vec<u8>, fds: Vec<Files>) {
        let Some(h) = self.handles.get_mut(&token) else {
            return;
        };
        if h.send(&self.dispatch, token, bytes, fds).is_err() {
            self.close(token);
        }
    }

    /// Write every dirty connection's output, one datagram per connection if it fits.
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
            // A service's activator: what queued on it starts the service.
            let env = self.activation.owns(key).then(|| self.activation_env());
            if let Some((out, fds)) = self.domain.conn_output(key) {
                if let Some(env) = env {
                    self.activation.on_output(key, out, &env);
                }
                out.clear();
                fds.clear();
            }
            return;
        };
        let Some(h) = self.handles.get_mut(&token) else {
            let ev = self
                .dbus
                .flush(token, key, &mut self.domain, &self.dispatch);
            self.dbus_event(token, ev);
            return;
        };
        let Some((out, fds)) = self.domain.conn_output(key) else {
            return;
        };
        if out.is_empty() {
            return;
        }
        if h.flush(&self.dispatch, token, out, fds).is_err() {
            self.close(token);
        }
    }

    /// Close a client socket (native or D-Bus) and let go of what it held.
    fn close(&mut self, token: u64) {
        let Some(h) = self.handles.remove(&token) else {
            let ev = self.dbus.close(token, &mut self.domain, &self.dispatch);
            self.dbus_event(token, ev);
            return;
        };
        self.dispatch.remove(&h.fd);
        self.waiting.end(token);
        self.fds.borrow_mut().release(h.peer.creds.uid, h.cost);
        match h.role {
            Role::Conn(key) => {
                self.conn_token.remove(&key);
                self.domain.conn_release(key);
            }
            Role::BusOwner(bus) => self.bus_remove(bus),
            Role::EndpointOwner(bus, ep) => self.endpoint_remove(bus, ep),
            Role::DomainOwner(id) => self.domains_gone.push(id),
            Role::Control | Role::Endpoint(..) => {}
        }
    }

    fn bus_remove(&mut self, bus: BusKey) {
        self.domain.bus_destroy(bus);
        self.listeners.close_bus(&self.dispatch, bus);
        // The domain disconnected everyone on the bus: hang up on them.
        for key in self.domain.take_closed() {
            if let Some(token) = self.conn_token.get(&key).copied() {
                self.close(token);
            }
        }
    }

    /// Remove every bus (disconnecting everyone on them) and every socket file.
    pub fn shutdown(&mut self) {
        for b in self.listeners.buses() {
            self.bus_remove(b);
        }
        self.listeners.remove_files();
    }
}
