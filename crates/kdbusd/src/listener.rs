//! The listening sockets: `control`, each bus's `bus` and `dbus` sockets, and extra
//! D-Bus addresses; their files and directories.
//!
//! Sockets play kdbus's device nodes, so the runtime directory looks like `/dev/kdbus`:
//! `control`, and a directory per bus holding its default endpoint (`bus`, datagrams)
//! and its D-Bus socket (`dbus`, a stream). A bus's sockets live exactly as long as the
//! bus. Socket files are the broker's to create and remove; one left by a broker that
//! crashed is replaced, one that a live broker still answers on is not (two brokers must
//! not share a runtime directory). What an accepted socket becomes is the loop's
//! business: this module only says which listener it came from.

use crate::clock::random_id128;
use crate::config::ListenAddr;
use crate::dispatch::{Dispatch, TOKEN_CONTROL};
use kdbus_core::BusKey;
use rustix::fd::OwnedFd;
use rustix::fs::Mode;
use rustix::io::Errno as SysErrno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What accepting on a listener gave.
pub(crate) enum Accept {
    Client(OwnedFd, Listener),
    /// Nobody is waiting (or the client left first).
    Empty,
    /// The process (or the system) is out of descriptors or memory.
    Exhausted,
}

/// What a listening socket serves.
#[derive(Clone, Copy)]
pub(crate) enum Listener {
    /// `control`: clients that make buses.
    Control,
    /// A bus's default endpoint: native kdbus clients.
    Bus(BusKey),
    /// A bus's D-Bus socket (or an extra D-Bus address of it), or (`Some`) a custom
    /// endpoint's: D-Bus clients.
    DBus(BusKey, Option<u64>),
    /// A custom endpoint of a bus: native kdbus clients.
    Endpoint(BusKey, u64),
}

/// The sockets of one bus, removed with it.
struct BusSockets {
    /// `<runtime dir>/<bus name>`, holding `bus` and `dbus`.
    dir: PathBuf,
    /// The token of the `bus` listener.
    listener_token: u64,
    /// The token of the `dbus` listener.
    dbus_token: u64,
}

/// Every listening socket of the broker.
pub(crate) struct Listeners {
    /// Where `control` and the bus directories are.
    runtime_dir: PathBuf,
    /// The listening sockets by dispatch token.
    by_token: HashMap<u64, (OwnedFd, Listener)>,
    /// Each bus's directory and listener tokens.
    bus_sockets: HashMap<BusKey, BusSockets>,
    /// Socket files of extra D-Bus listeners, removed at shutdown.
    extra_paths: Vec<PathBuf>,
    /// Custom endpoints' sockets: (bus, endpoint) -> the native and the D-Bus
    /// socket's (listener token, path).
    endpoints: HashMap<(BusKey, u64), [(u64, PathBuf); 2]>,
    /// The D-Bus listeners are out of the epoll set: new clients wait in the kernel's
    /// backlog until incomplete ones finish (dbus-daemon's `max_incomplete_connections`).
    dbus_paused: bool,
}

impl Listeners {
    pub(crate) fn new(runtime_dir: PathBuf) -> Listeners {
        Listeners {
            runtime_dir,
            by_token: HashMap::new(),
            bus_sockets: HashMap::new(),
            extra_paths: Vec::new(),
            endpoints: HashMap::new(),
            dbus_paused: false,
        }
    }

    /// Listen on `<runtime dir>/control`; returns its path.
    pub(crate) fn open_control(
        &mut self,
        dispatch: &Dispatch,
        mode: u32,
    ) -> std::io::Result<PathBuf> {
        let control = self.runtime_dir.join("control");
        let lfd = listen_unix(&control, mode)?;
        dispatch.add(&lfd, TOKEN_CONTROL)?;
        self.by_token
            .insert(TOKEN_CONTROL, (lfd, Listener::Control));
        Ok(control)
    }

    /// Create bus `key`'s directory `name` with its `bus` and `dbus` sockets, with
    /// permissions `mode`.
    pub(crate) fn open_bus(
        &mut self,
        dispatch: &mut Dispatch,
        key: BusKey,
        name: &str,
        mode: u32,
    ) -> std::io::Result<()> {
        let dir = self.runtime_dir.join(name);
        std::fs::create_dir_all(&dir)?;
        rustix::fs::chmod(&dir, Mode::from_raw_mode(0o755))?;
        let lfd = listen_unix(&dir.join("bus"), mode)?;
        let token = dispatch.token();
        dispatch.add(&lfd, token)?;
        self.by_token.insert(token, (lfd, Listener::Bus(key)));
        let dfd = listen_unix_stream(&dir.join("dbus"), mode)?;
        let dbus_token = dispatch.token();
        dispatch.add(&dfd, dbus_token)?;
        self.by_token
            .insert(dbus_token, (dfd, Listener::DBus(key, None)));
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

    /// Listen on custom endpoint `ep` of bus `bus`: `<bus dir>/<name>` for native
    /// clients and `<bus dir>/<name>.dbus` for D-Bus ones, owned by `uid`, with
    /// permissions `mode`.
    pub(crate) fn open_endpoint(
        &mut self,
        dispatch: &mut Dispatch,
        bus: BusKey,
        ep: u64,
        name: &str,
        mode: u32,
        uid: u32,
    ) -> std::io::Result<()> {
        let dir = self
            .bus_dir(bus)
            .ok_or_else(|| std::io::Error::other("the bus has no directory"))?;
        let (path, dpath) = (dir.join(name), dir.join(format!("{name}.dbus")));
        let owner = Some(rustix::process::Uid::from_raw(uid));
        let lfd = listen_unix(&path, mode)?;
        rustix::fs::chown(&path, owner, None)?;
        let dfd = listen_unix_stream(&dpath, mode)?;
        rustix::fs::chown(&dpath, owner, None)?;
        let (token, dtoken) = (dispatch.token(), dispatch.token());
        dispatch.add(&lfd, token)?;
        dispatch.add(&dfd, dtoken)?;
        self.by_token
            .insert(token, (lfd, Listener::Endpoint(bus, ep)));
        self.by_token
            .insert(dtoken, (dfd, Listener::DBus(bus, Some(ep))));
        self.endpoints
            .insert((bus, ep), [(token, path), (dtoken, dpath)]);
        Ok(())
    }

    /// Custom endpoint `ep` of `bus` is gone: stop listening and remove its sockets.
    pub(crate) fn close_endpoint(&mut self, dispatch: &Dispatch, bus: BusKey, ep: u64) {
        for (token, path) in self.endpoints.remove(&(bus, ep)).into_iter().flatten() {
            if let Some((lfd, _)) = self.by_token.remove(&token) {
                dispatch.remove(&lfd);
            }
            let _ = std::fs::remove_file(path);
        }
    }

    /// The directory of bus `key`'s sockets.
    pub(crate) fn bus_dir(&self, key: BusKey) -> Option<&Path> {
        self.bus_sockets.get(&key).map(|s| s.dir.as_path())
    }

    /// Listen for D-Bus clients of `bus` at a dbus-daemon address; returns the address
    /// as dbus-daemon prints it (with `guid`, the bus id in hex).
    pub(crate) fn listen_extra(
        &mut self,
        dispatch: &mut Dispatch,
        bus: BusKey,
        addr: &ListenAddr,
        guid: &str,
    ) -> std::io::Result<String> {
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
            ListenAddr::Systemd => {
                let mut fds = crate::sys::systemd_listeners()?.into_iter();
                let first = fds.next().ok_or_else(|| {
                    std::io::Error::other("systemd: given, but systemd passed no socket")
                })?;
                // Every socket serves the bus; the first one's name is the address.
                for fd in fds {
                    let token = dispatch.token();
                    dispatch.add(&fd, token)?;
                    self.by_token.insert(token, (fd, Listener::DBus(bus, None)));
                }
                let printed = socket_address(&first);
                (first, printed)
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
        // Files we made go with us; systemd's sockets stay systemd's.
        if let (Some(path), false) = (
            printed.strip_prefix("unix:path="),
            matches!(addr, ListenAddr::Systemd),
        ) {
            self.extra_paths.push(PathBuf::from(path));
        }
        let token = dispatch.token();
        dispatch.add(&fd, token)?;
        self.by_token.insert(token, (fd, Listener::DBus(bus, None)));
        Ok(format!("{printed},guid={guid}"))
    }

    /// Bus `key` is gone: stop listening for it and remove its files.
    pub(crate) fn close_bus(&mut self, dispatch: &Dispatch, key: BusKey) {
        let eps: Vec<u64> = self
            .endpoints
            .keys()
            .filter(|(b, _)| *b == key)
            .map(|(_, e)| *e)
            .collect();
        for ep in eps {
            self.close_endpoint(dispatch, key, ep);
        }
        if let Some(s) = self.bus_sockets.remove(&key) {
            for t in [s.listener_token, s.dbus_token] {
                if let Some((lfd, _)) = self.by_token.remove(&t) {
                    dispatch.remove(&lfd);
                }
            }
            let _ = std::fs::remove_file(s.dir.join("bus"));
            let _ = std::fs::remove_file(s.dir.join("dbus"));
            let _ = std::fs::remove_dir(&s.dir);
        }
    }

    /// The buses that have sockets.
    pub(crate) fn buses(&self) -> Vec<BusKey> {
        self.bus_sockets.keys().copied().collect()
    }

    /// Remove the files of `control` and the extra D-Bus listeners (at shutdown, after
    /// every bus closed its own).
    pub(crate) fn remove_files(&self) {
        let _ = std::fs::remove_file(self.runtime_dir.join("control"));
        for p in &self.extra_paths {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Whether `token` is a D-Bus listener's.
    pub(crate) fn is_dbus(&self, token: u64) -> bool {
        matches!(self.by_token.get(&token), Some((_, Listener::DBus(..))))
    }

    /// Stop (`true`) or resume watching the D-Bus listeners for new clients.
    pub(crate) fn dbus_pause(&mut self, dispatch: &Dispatch, pause: bool) {
        if self.dbus_paused == pause {
            return;
        }
        self.dbus_paused = pause;
        for (token, (fd, which)) in &self.by_token {
            if let Listener::DBus(..) = which {
                if pause {
                    dispatch.remove(fd);
                } else if let Err(e) = dispatch.add(fd, *token) {
                    tracing::warn!(%e, "cannot watch a D-Bus listener again");
                }
            }
        }
    }

    pub(crate) fn dbus_paused(&self) -> bool {
        self.dbus_paused
    }

    /// Whether `token` is a listener's.
    pub(crate) fn contains(&self, token: u64) -> bool {
        self.by_token.contains_key(&token)
    }

    /// Accept one client on listener `token`.
    pub(crate) fn accept(&self, token: u64) -> Accept {
        let Some((lfd, which)) = self.by_token.get(&token) else {
            return Accept::Empty;
        };
        match rustix::net::accept_with(lfd, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
            Ok(fd) => Accept::Client(fd, *which),
            Err(SysErrno::MFILE | SysErrno::NFILE | SysErrno::NOBUFS | SysErrno::NOMEM) => {
                Accept::Exhausted
            }
            Err(e) => {
                // The client went away before we took it (ECONNABORTED) and the like.
                tracing::debug!(%e, "accept failed");
                Accept::Empty
            }
        }
    }

    /// Stop (`true`) or resume watching every listener (the process is out of
    /// descriptors). Resuming leaves the D-Bus listeners alone while those are paused
    /// for incomplete connections.
    pub(crate) fn pause_all(&mut self, dispatch: &Dispatch, pause: bool) {
        for (token, (fd, which)) in &self.by_token {
            if matches!(which, Listener::DBus(..)) && self.dbus_paused && !pause {
                continue;
            }
            if pause {
                dispatch.remove(fd);
            } else if let Err(e) = dispatch.add(fd, *token) {
                tracing::warn!(%e, "cannot watch a listener again");
            }
        }
    }
}

/// Create a bound, listening SEQPACKET socket at `path` with permissions `mode`.
fn listen_unix(path: &Path, mode: u32) -> std::io::Result<OwnedFd> {
    listen_unix_type(path, mode, SocketType::SEQPACKET)
}

/// The same for a D-Bus socket (a byte stream).
/// A bound unix socket's address as D-Bus writes it.
fn socket_address(fd: &OwnedFd) -> String {
    let name = rustix::net::getsockname(fd)
        .ok()
        .and_then(|a| SocketAddrUnix::try_from(a).ok());
    match name {
        Some(u) if u.path().is_some() => {
            let p = u.path().map(|p| p.to_string_lossy().into_owned());
            format!("unix:path={}", p.unwrap_or_default())
        }
        Some(u) => {
            let n = u.abstract_name().map(String::from_utf8_lossy);
            format!("unix:abstract={}", n.unwrap_or_default())
        }
        None => "systemd:".into(),
    }
}

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
