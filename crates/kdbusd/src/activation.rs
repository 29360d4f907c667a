//! Service activation from dbus-daemon's `.service` files (without systemd).
//!
//! The model is kdbus's own: each activatable name is held by an *activator*, here a
//! connection of the broker's on the configured bus. A message to the name queues on
//! the activator like on any connection (native and D-Bus senders alike: one
//! mechanism), and the first one, or `StartServiceByName`, starts the service's
//! `Exec=` with dbus-daemon's environment (`DBUS_STARTER_ADDRESS`,
//! `DBUS_STARTER_BUS_TYPE`, what `UpdateActivationEnvironment` set). When the service
//! takes the name, the core moves the queue to it. If its process ends first, or
//! `service_start_timeout` passes, what waited fails with dbus-daemon's error and the
//! activator stays for the next try.
//!
//! With `--systemd-activation`, a service whose file names a `SystemdService=` is
//! systemd's to start: the bus sends systemd the `ActivationRequest` signal (once
//! systemd is on the bus) and waits for the name as for any other start; systemd's
//! `ActivationFailure` fails what waited with systemd's error (kdbus-bridge's
//! `systemd.rs`). On a system bus that dropped to its `<user>`, the launcher starts
//! services as their `User=` (`launcher.rs`).
//!
//! The broker's loop calls [`Activation::poll`] while something is starting (every
//! 50 ms) to notice exits, failures and timeouts, and reaps every child it started.

use crate::service_file::Service;
use kdbus_abi::{hello_flags, item, wire, CmdHello, ItemWriter};
use kdbus_bridge::ActivationError;
use kdbus_core::{BusKey, ConnKey, Domain, Peer, PoolMemory};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use zerocopy::IntoBytes;

/// dbus-daemon's default `service_start_timeout`.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(25);
/// dbus-daemon's default `max_pending_service_starts`.
const MAX_PENDING: usize = 512;
/// How often a starting service is looked at.
const POLL: Duration = Duration::from_millis(50);
/// Pool of an activator: sparse, so this bounds address space only.
const ACTIVATOR_POOL: u64 = 16 << 20;

/// A service being started: its process, unless the launcher or systemd runs it.
struct Starting {
    child: Option<Child>,
    /// The systemd unit asked to start it (`SystemdService=`).
    unit: Option<String>,
    deadline: Instant,
}

/// The activatable services of one bus, their activators and what is starting.
#[derive(Default)]
pub(crate) struct Activation {
    bus: Option<BusKey>,
    services: HashMap<String, Service>,
    /// Activator connection -> its name, and back.
    by_key: HashMap<ConnKey, String>,
    keys: HashMap<String, ConnKey>,
    starting: HashMap<String, Starting>,
    /// Children that came (or failed): reaped when they end.
    running: Vec<Child>,
    /// Services that could not start, for the next poll to fail what waits.
    failed: Vec<(String, ActivationError)>,
    /// What a service is told about the bus that started it.
    pub(crate) starter_address: String,
    pub(crate) bus_type: String,
    pub(crate) timeout: Option<Duration>,
    /// `max_pending_service_starts` (dbus-daemon's default: 512).
    pub(crate) max_pending: Option<usize>,
    /// On a system bus that dropped to its `<user>`: who starts services as theirs.
    pub(crate) launcher: Option<crate::launcher::Launcher>,
    /// `--systemd-activation`: services with `SystemdService=` are systemd's to start.
    pub(crate) systemd: bool,
    /// Units to ask systemd for, once it is on the bus.
    systemd_asks: Vec<String>,
}

impl Activation {
    /// Make `services` activatable on `bus`: an activator for each name that has none
    /// (a reload adds new ones; names whose file went keep theirs).
    pub(crate) fn install(
        &mut self,
        dom: &mut Domain,
        bus: BusKey,
        me: &Peer,
        services: Vec<Service>,
    ) {
        self.bus = Some(bus);
        for s in services {
            if !self.keys.contains_key(&s.name) {
                match activator_hello(dom, bus, me, &s.name) {
                    Ok(key) => {
                        self.by_key.insert(key, s.name.clone());
                        self.keys.insert(s.name.clone(), key);
                    }
                    Err(e) => tracing::warn!(name = %s.name, %e, "the name cannot be activated"),
                }
            }
            self.services.insert(s.name.clone(), s);
        }
    }

    /// Whether `name` is one of the bus's own activatable services.
    pub(crate) fn serves(&self, name: &str) -> bool {
        self.services.contains_key(name)
    }

    /// Whether `key` is one of our activators.
    pub(crate) fn owns(&self, key: ConnKey) -> bool {
        self.by_key.contains_key(&key)
    }

    /// An activator's output: a message queued on it starts its service.
    pub(crate) fn on_output(&mut self, key: ConnKey, out: &[u8], env: &[(String, String)]) {
        let queued = wire::Frames::<wire::RecHeader>::new(out)
            .flatten()
            .any(|(h, _)| h.kind == wire::REC_MSG);
        if let Some(name) = self.by_key.get(&key).cloned().filter(|_| queued) {
            self.start(&name, env);
        }
    }

    /// Start `name`'s service unless it is starting already. A program that cannot be
    /// run fails what waits at the next poll.
    pub(crate) fn start(&mut self, name: &str, env: &[(String, String)]) {
        if self.starting.contains_key(name) {
            return;
        }
        let Some(s) = self.services.get(name) else {
            return;
        };
        let max = self.max_pending.unwrap_or(MAX_PENDING);
        if self.starting.len() >= max {
            tracing::warn!(%name, "too many services starting");
            self.failed
                .push((name.to_string(), ActivationError::TooMany(max)));
            return;
        }
        let deadline = Instant::now() + self.timeout.unwrap_or(START_TIMEOUT);
        if let Some(unit) = s.systemd_service.clone().filter(|_| self.systemd) {
            // systemd starts it (dbus-daemon's systemd activation); the request goes
            // out at the next poll, or once systemd is there.
            tracing::info!(%name, %unit, "activating service through systemd");
            self.systemd_asks.push(unit.clone());
            let st = Starting {
                child: None,
                unit: Some(unit),
                deadline,
            };
            self.starting.insert(name.to_string(), st);
            return;
        }
        if let Some(l) = &self.launcher {
            match l.launcher_request(name, &self.starter_address, &self.bus_type) {
                Ok(()) => {
                    tracing::info!(%name, "activating service through the launcher");
                    let st = Starting {
                        child: None,
                        unit: None,
                        deadline,
                    };
                    self.starting.insert(name.to_string(), st);
                }
                Err(e) => {
                    let why = format!("Failed to execute program {}: {e}", s.exec[0]);
                    self.failed
                        .push((name.to_string(), ActivationError::ExecFailed(why)));
                }
            }
            return;
        }
        let mut cmd = Command::new(&s.exec[0]);
        cmd.args(&s.exec[1..])
            .env("DBUS_STARTER_ADDRESS", &self.starter_address)
            .env("DBUS_STARTER_BUS_TYPE", &self.bus_type)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        match cmd.spawn() {
            Ok(child) => {
                tracing::info!(%name, pid = child.id(), "activating service");
                let st = Starting {
                    child: Some(child),
                    unit: None,
                    deadline,
                };
                self.starting.insert(name.to_string(), st);
            }
            Err(e) => {
                let why = format!("Failed to execute program {}: {e}", s.exec[0]);
                tracing::warn!(%name, %why, "activation failed");
                self.failed
                    .push((name.to_string(), ActivationError::ExecFailed(why)));
            }
        }
    }

    /// Look at what is starting: a service that owns its name now came; one whose
    /// process ended, or whose time is up, did not, and what waited for it fails.
    pub(crate) fn poll(&mut self, dom: &mut Domain, bridge: &mut kdbus_bridge::Bridge) {
        let now = Instant::now();
        let timeout = self.timeout.unwrap_or(START_TIMEOUT);
        // What the launcher saw end: a process that ended before its name came.
        let mut ended_early: HashMap<String, ActivationError> = HashMap::new();
        if let Some(l) = &mut self.launcher {
            let (events, gone) = l.launcher_events();
            ended_early.extend(events);
            if gone {
                tracing::error!("the activation launcher is gone; services cannot start");
                self.launcher = None;
                for name in self.starting.keys() {
                    let why = ActivationError::ExecFailed("The activation launcher is gone".into());
                    ended_early.entry(name.clone()).or_insert(why);
                }
            }
        }
        if let Some(bus) = self.bus {
            self.systemd_asks
                .retain(|unit| !bridge.systemd_request(dom, bus, unit));
        }
        for f in bridge.take_systemd_failures() {
            for (name, st) in &self.starting {
                if st.unit.as_deref() == Some(f.unit.as_str()) {
                    let why = ActivationError::Systemd {
                        error: f.error.clone(),
                        text: f.text.clone(),
                    };
                    ended_early.insert(name.clone(), why);
                }
            }
        }
        let names: Vec<String> = self.starting.keys().cloned().collect();
        for name in names {
            let waiting = self
                .keys
                .get(&name)
                .is_some_and(|k| activator_holds(dom, self.bus, &name, *k));
            let Some(st) = self.starting.get_mut(&name) else {
                continue;
            };
            let exit = match &mut st.child {
                Some(child) => child.try_wait().map(|s| s.map(exit_error)),
                None => Ok(ended_early.remove(&name)),
            };
            let ended = match exit {
                _ if !waiting => Some(None),
                Ok(Some(why)) => Some(Some(why)),
                Ok(None) if now >= st.deadline => {
                    Some(Some(ActivationError::TimedOut(timeout.as_millis() as u64)))
                }
                Ok(None) => None,
                Err(e) => Some(Some(ActivationError::ExecFailed(e.to_string()))),
            };
            let Some(failure) = ended else {
                continue;
            };
            if let Some(st) = self.starting.remove(&name) {
                self.running.extend(st.child);
            }
            match failure {
                Some(why) => {
                    tracing::warn!(%name, ?why, "activation failed");
                    self.failed.push((name, why));
                }
                None => bridge.activation_came(dom, &name),
            }
        }
        for (name, why) in std::mem::take(&mut self.failed) {
            bridge.activation_start_failed(dom, &name, &why);
            let Some(&key) = self.keys.get(&name) else {
                continue;
            };
            for (requester, cookie) in dom.activator_drop_queue(key) {
                bridge.activation_failed(dom, requester, cookie as u32, &name, &why);
            }
        }
        self.running
            .retain_mut(|c| matches!(c.try_wait(), Ok(None)));
    }

    /// When the loop should call [`Activation::poll`] again, if at all.
    pub(crate) fn next_check(&self) -> Option<Duration> {
        if !self.starting.is_empty() || !self.failed.is_empty() {
            Some(POLL)
        } else if !self.running.is_empty() {
            Some(Duration::from_secs(1))
        } else {
            None
        }
    }
}

/// Whether the activator `key` still holds `name` (its service has not come).
fn activator_holds(dom: &Domain, bus: Option<BusKey>, name: &str, key: ConnKey) -> bool {
    bus.and_then(|b| dom.bus(b))
        .and_then(|b| b.names.lookup(name))
        .is_some_and(|e| e.owner == key)
}

/// dbus-daemon's error for a service process that ended before owning its name.
fn exit_error(status: std::process::ExitStatus) -> ActivationError {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ActivationError::Exited(code),
        (None, Some(sig)) => ActivationError::Signaled(sig),
        _ => ActivationError::Exited(-1),
    }
}

/// HELLO of an activator for `name`, as the broker itself.
fn activator_hello(
    dom: &mut Domain,
    bus: BusKey,
    me: &Peer,
    name: &str,
) -> Result<ConnKey, kdbus_abi::Errno> {
    let mut body = Vec::new();
    let h = CmdHello {
        flags: hello_flags::ACTIVATOR,
        pool_size: ACTIVATOR_POOL,
        ..Default::default()
    };
    body.extend_from_slice(h.as_bytes());
    ItemWriter::new(&mut body).push_str(item::NAME, name);
    let size = body.len() as u64;
    body[..8].copy_from_slice(&size.to_ne_bytes());
    let mut make_pool = |size: u64| -> Result<Box<dyn PoolMemory>, kdbus_abi::Errno> {
        let (mem, _client_fd) =
            crate::pool_memfd::pool_create(size).map_err(|_| kdbus_abi::Errno::ENOMEM)?;
        Ok(Box::new(mem))
    };
    dom.hello(bus, me, &body, &mut make_pool)
        .map(|(key, _)| key)
}
