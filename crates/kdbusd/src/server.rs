//! The server: every domain in one loop, one thread.
//!
//! A domain is a tree of its own: a `control` socket, buses, ids, a sequence counter,
//! a name space and per-user accounting, all held by one [`Broker`] with its own epoll
//! set. Nothing is shared between them but this loop: the server's epoll set watches
//! each domain's (an epoll fd is readable when something in it is ready) and the
//! signalfd, and gives a domain a turn when it has something to do. The order of a
//! domain's messages is its own; no message, name or id crosses between domains.
//!
//! Domains come from the command line (one per `--runtime-dir`) and from DOMAIN_MAKE
//! (64d871b): a privileged client of a domain's `control` makes a child in
//! `<runtime dir>/domain/<name>/`, which lives as long as the client's handle. When it
//! goes, the child and everything below it go: their buses are removed, every client
//! is hung up on, and the directory disappears.

use crate::broker::{Broker, Config, Ready, Turn};
use crate::dispatch::{Dispatch, TOKEN_SIGNAL};
use kdbus_abi::{make_flags, Errno};
use rustix::event::epoll;
use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno as SysErrno;
use std::collections::BTreeMap;

/// One domain and where it hangs.
struct Hosted {
    broker: Broker,
    /// The domain it was made in (`None`: from the command line).
    parent: Option<u64>,
}

pub struct Server {
    dispatch: Dispatch,
    signals: OwnedFd,
    /// The process's descriptors, per user: every domain's clients draw on them.
    fds: crate::admission::SharedFdBooks,
    /// Domains by id; a domain's epoll fd is registered as token `id`.
    domains: BTreeMap<u64, Hosted>,
    /// When the heap was last given back to the system (an idle wakeup does it, at
    /// most every few seconds).
    trimmed: std::time::Instant,
    next_id: u64,
    /// `--busy-poll-us`, in ns, for the domains made later.
    busy_poll_ns: u64,
}

/// How often an idle server gives the heap's free memory back.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Ids of domains, as tokens in the server's set: above the fixed tokens.
const FIRST_DOMAIN: u64 = 16;

impl Server {
    /// A server with one domain per configuration (the first is the one a
    /// dbus-daemon configuration and extra D-Bus addresses apply to).
    pub fn new(configs: Vec<Config>) -> std::io::Result<(Server, Vec<Ready>)> {
        let signals = crate::sys::signals_fd()?;
        let fds = crate::admission::FdBooks::for_process();
        let busy_poll_ns = configs.first().map_or(0, |c| c.busy_poll_ns);
        let dispatch = Dispatch::new(busy_poll_ns)?;
        dispatch.add(&signals, TOKEN_SIGNAL)?;
        let mut s = Server {
            dispatch,
            signals,
            fds,
            domains: BTreeMap::new(),
            next_id: FIRST_DOMAIN,
            trimmed: std::time::Instant::now(),
            busy_poll_ns,
        };
        let mut ready = Vec::new();
        for cfg in configs {
            let (broker, r) = Broker::new(cfg, 0o666, s.fds.clone())?;
            s.host(broker, None)?;
            ready.push(r);
        }
        Ok((s, ready))
    }

    /// The first domain's broker: the one a dbus-daemon configuration applies to.
    pub fn first_broker(&mut self) -> Option<&mut Broker> {
        self.domains.values_mut().next().map(|d| &mut d.broker)
    }

    fn host(&mut self, broker: Broker, parent: Option<u64>) -> std::io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        self.dispatch.add(broker.epoll_fd(), id)?;
        broker.watch_signals(self.signals.as_fd())?;
        self.domains.insert(id, Hosted { broker, parent });
        Ok(id)
    }

    /// Run until SIGINT/SIGTERM; every domain removes what it created on the way out.
    pub fn run(&mut self) -> std::io::Result<()> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(64);
        loop {
            let timeout = self
                .domains
                .values()
                .map(|d| d.broker.poll_timeout())
                .min()
                .unwrap_or(1_000_000_000);
            let turn = if self.domains.len() == 1 {
                // The common case costs nothing: wait in the one domain's set (which
                // watches the signalfd too).
                let mut turn = Turn::default();
                for d in self.domains.values_mut() {
                    turn = d.broker.turn(timeout)?;
                }
                turn
            } else {
                self.turn_all(&mut events, timeout)?
            };
            // (A signal that reached a process only through `sigpending` is looked
            // for when nothing else woke us.)
            let stop = (turn.signalled && self.signals_take())
                || (turn.idle && crate::sys::shutdown_pending());
            if stop {
                self.shutdown();
                return Ok(());
            }
            // Nothing to do for a while: memory a flood left behind goes back.
            if turn.idle && self.trimmed.elapsed() >= TRIM_EVERY {
                self.trimmed = std::time::Instant::now();
                crate::sys::trim_heap();
            }
            self.domains_settle();
        }
    }

    /// Wait in the server's set, then give each domain with something to do a turn
    /// (every domain when a deadline woke us).
    fn turn_all(&mut self, events: &mut Vec<epoll::Event>, timeout: u64) -> std::io::Result<Turn> {
        match self.dispatch.wait(events, timeout) {
            Ok(()) | Err(SysErrno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let mut signalled = false;
        let mut turned = false;
        for ev in events.iter() {
            match ev.data.u64() {
                TOKEN_SIGNAL => signalled = true,
                id => {
                    if let Some(d) = self.domains.get_mut(&id) {
                        signalled |= d.broker.turn(0)?.signalled;
                        turned = true;
                    }
                }
            }
        }
        if !turned {
            for d in self.domains.values_mut() {
                signalled |= d.broker.turn(0)?.signalled;
            }
        }
        Ok(Turn {
            signalled,
            idle: events.is_empty(),
        })
    }

    /// Make the domains asked for, remove those whose owners are gone.
    fn domains_settle(&mut self) {
        let ids: Vec<u64> = self.domains.keys().copied().collect();
        for id in ids {
            let Some(d) = self.domains.get_mut(&id) else {
                continue;
            };
            let makes = d.broker.take_domain_makes();
            let gone = d.broker.take_domains_gone();
            for (token, req_id, name, flags) in makes {
                let made = self.domain_make(id, &name, flags);
                if let Some(d) = self.domains.get_mut(&id) {
                    d.broker.domain_made(token, req_id, made);
                }
            }
            for child in gone {
                self.domain_remove(child);
            }
        }
    }

    /// DOMAIN_MAKE in domain `parent`: `<its runtime dir>/domain/<name>/control`.
    fn domain_make(&mut self, parent: u64, name: &str, flags: u64) -> Result<u64, Errno> {
        let parent_broker = &self.domains.get(&parent).ok_or(Errno::ESHUTDOWN)?.broker;
        let user_limits = parent_broker.user_limits();
        let dir = parent_broker.runtime_dir().join("domain").join(name);
        if self.domains.values().any(|d| d.broker.runtime_dir() == dir) {
            return Err(Errno::EEXIST);
        }
        let cfg = Config {
            runtime_dir: dir,
            buses: Vec::new(),
            dbus_listen: Vec::new(),
            dbus_admission: None,
            msg_policy: None,
            config_file: None,
            limits: None,
            user_limits,
            systemd_activation: false,
            run_as: None,
            busy_poll_ns: self.busy_poll_ns,
        };
        let mode = if flags & make_flags::ACCESS_WORLD != 0 {
            0o666
        } else if flags & make_flags::ACCESS_GROUP != 0 {
            0o660
        } else {
            0o600
        };
        let (broker, ready) = Broker::new(cfg, mode, self.fds.clone()).map_err(|e| {
            tracing::warn!(%e, "cannot make a domain");
            Errno::EIO
        })?;
        let id = self.host(broker, Some(parent)).map_err(|_| Errno::EIO)?;
        tracing::info!(control = %ready.control.display(), "domain made");
        Ok(id)
    }

    /// Remove domain `id` and every domain made in it: their buses go, their clients
    /// are hung up on, their directories disappear.
    fn domain_remove(&mut self, id: u64) {
        for c in self.children(id) {
            self.domain_remove(c);
        }
        if let Some(mut d) = self.domains.remove(&id) {
            self.dispatch.remove(d.broker.epoll_fd());
            d.broker.shutdown();
            let dir = d.broker.runtime_dir().to_path_buf();
            drop(d);
            // Made by DOMAIN_MAKE: the whole directory is ours.
            let _ = std::fs::remove_dir_all(&dir);
            tracing::info!(dir = %dir.display(), "domain removed");
        }
    }

    /// Read the pending signals: SIGHUP reloads every domain's configuration; `true`
    /// if one asks to shut down.
    fn signals_take(&mut self) -> bool {
        // struct signalfd_siginfo: 128 bytes, the signal number first.
        let mut info = [0u8; 128];
        let mut stop = false;
        while let Ok(128) = rustix::io::read(&self.signals, &mut info) {
            let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
            if signo == libc::SIGHUP as u32 {
                for d in self.domains.values_mut() {
                    let _ = d.broker.reload();
                }
            } else {
                stop = true;
            }
        }
        stop
    }

    /// The domains made in `parent` (`None`: those of the command line).
    fn children(&self, parent: impl Into<Option<u64>>) -> Vec<u64> {
        let parent = parent.into();
        self.domains
            .iter()
            .filter(|(_, d)| d.parent == parent)
            .map(|(k, _)| *k)
            .collect()
    }

    fn shutdown(&mut self) {
        tracing::info!("shutting down");
        for id in self.children(None) {
            // Children first (their directories are inside), then the domain's own
            // sockets; its runtime directory was given to us and stays.
            for c in self.children(id) {
                self.domain_remove(c);
            }
            if let Some(d) = self.domains.get_mut(&id) {
                d.broker.shutdown();
            }
        }
    }
}
