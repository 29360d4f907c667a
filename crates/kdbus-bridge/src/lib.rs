//! The D-Bus personality of a kdbus bus.
//!
//! kdbus kept D-Bus out of the kernel: the kernel moved kdbus messages whose payload
//! happened to be D-Bus, and `systemd-bus-proxyd` and sd-bus did the rest in
//! userspace. This crate is that rest, above `kdbus-core` and beside the broker's
//! D-Bus socket:
//!
//! - a D-Bus client becomes a connection of the bus whose receiving end is a
//!   [`DBusPeer`], a stream peer the core delivers to (`peer`);
//! - what a client sends is routed (`route`): to the driver, or into the bus as a
//!   kdbus message built directly from the D-Bus one (its header rewritten with the
//!   sender the bus vouches for, replies matched to the calls they answer, signals
//!   given the bloom filter the sd-bus convention computes) and handed to the core's
//!   one SEND path;
//! - the bus driver `org.freedesktop.DBus` answers what is addressed to the bus
//!   (`driver`), as a table of methods.
//!
//! Nothing here decides kdbus semantics: names, matches, replies and quotas are the
//! core's, and the driver reaches them through the core's typed commands. Nothing here
//! does I/O: the broker reads and writes the sockets.
#![forbid(unsafe_code)]

mod body;
mod describe;
mod driver;
mod owners;
mod peer;
mod policy;
mod route;
mod stats;
pub mod stream_quota;
mod systemd;

pub use peer::DBusPeer;
pub use policy::HeaderFacts;
pub use route::DBusFatal;
pub use systemd::{SystemdFailure, SYSTEMD};

/// The bus driver's name.
pub const DRIVER: &str = "org.freedesktop.DBus";
pub(crate) const DRIVER_PATH: &str = "/org/freedesktop/DBus";
/// How long the bus waits for a method reply before answering NoReply itself.
pub const REPLY_TIMEOUT_NS: u64 = 25 * 1_000_000_000;

/// The D-Bus personality's own state: what the driver reports about the machine, and
/// buffers reused for every message routed.
#[derive(Default)]
pub struct Bridge {
    /// What `org.freedesktop.DBus.Peer.GetMachineId` answers.
    machine_id: String,
    /// The message with its rewritten header, behind 8 bytes the payload vector's
    /// offset cannot be (offset 0 means "no data").
    send: Vec<u8>,
    /// The kdbus items of the message being routed.
    items: Vec<u8>,
    /// `ReloadConfig` calls waiting for the broker to reload: (caller, serial, wants
    /// an answer). The broker reads files; the bridge does no I/O.
    reloads: Vec<(kdbus_core::ConnKey, u32, bool)>,
    /// How long the bus waits for the reply to a D-Bus call (`reply_timeout`); 0: the
    /// default, [`REPLY_TIMEOUT_NS`].
    reply_timeout_ns: u64,
    /// What a new client's stream may hold from other peers.
    stream_limits: stream_quota::StreamLimits,
    /// What each user's streams hold from other users, together.
    user_books: stream_quota::SharedUserBooks,
    /// What `Debug.Stats` keeps between calls.
    stats: stats::Stats,
    /// Started with `--systemd-activation` (the `SystemdActivation` feature).
    systemd_activation: bool,
    /// Names `StartServiceByName` asked to start since the broker last looked.
    starts: Vec<String>,
    /// `StartServiceByName` calls waiting for their service: name, caller, serial,
    /// and whether it wants the answer (dbus-daemon answers once the name has an
    /// owner, or with the error that ended the start).
    start_waiters: Vec<(String, kdbus_core::ConnKey, u32, bool)>,
    /// Set by a driver method whose answer comes later.
    deferred: bool,
    /// `ActivationFailure`s from systemd the broker has not seen yet.
    systemd_failures: Vec<SystemdFailure>,
    /// What `UpdateActivationEnvironment` set, for the services the bus starts.
    activation_env: std::collections::BTreeMap<String, String>,
}

/// Why a service the bus was to start did not come (dbus-daemon's errors).
#[derive(Clone, Debug)]
pub enum ActivationError {
    /// Its process exited (with this status) before owning the name.
    Exited(i32),
    /// Its process was killed by this signal before owning the name.
    Signaled(i32),
    /// Its program could not be run.
    ExecFailed(String),
    /// It did not own the name within `service_start_timeout` (ms).
    TimedOut(u64),
    /// As many services as `max_pending_service_starts` (this) allows were starting.
    TooMany(usize),
    /// Its service file could not be used (a system bus's launcher: no `User=`).
    FileInvalid(String),
    /// Its service file was no longer found when it was to start.
    ServiceNotFound(String),
    /// Its `User=` does not exist (or could not be become).
    FailedToSetup(String),
    /// systemd could not start its unit: systemd's error name and text.
    Systemd {
        /// The D-Bus error name systemd gave, passed on to the caller as it is.
        error: String,
        /// systemd's error message.
        text: String,
    },
}

impl Bridge {
    /// A bridge whose driver reports `machine_id` (32 hex digits, as in
    /// `/etc/machine-id`) for `GetMachineId`; everything else starts at its default
    /// (reply timeout [`REPLY_TIMEOUT_NS`], default stream limits, no systemd activation).
    pub fn new(machine_id: &str) -> Bridge {
        Bridge {
            machine_id: machine_id.to_string(),
            ..Default::default()
        }
    }

    /// What the streams of clients that say Hello from now on may hold from other
    /// peers (`max_outgoing_bytes`, `max_outgoing_unix_fds`).
    pub fn set_stream_limits(&mut self, limits: stream_quota::StreamLimits) {
        self.stream_limits = limits;
    }

    /// Services `StartServiceByName` asked for since the last time.
    pub fn take_starts(&mut self) -> Vec<String> {
        std::mem::take(&mut self.starts)
    }

    /// The environment `UpdateActivationEnvironment` gave the services the bus starts.
    pub fn activation_env(&self) -> impl Iterator<Item = (&str, &str)> {
        self.activation_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The bus's activatable services may have changed (a reload, or a service
    /// directory changed): `ActivatableServicesChanged` to every D-Bus peer of `bus`
    /// whose rules take it, as dbus-daemon sends it after every reload.
    pub fn activatable_services_changed(
        &mut self,
        dom: &mut kdbus_core::Domain,
        bus: kdbus_core::BusKey,
    ) {
        let keys: Vec<kdbus_core::ConnKey> = dom
            .bus(bus)
            .map(|b| b.conns.values().copied().collect())
            .unwrap_or_default();
        let body = body::Body::new();
        for key in keys {
            dom.with_stream(key, |s, out| {
                if let Some(p) = peer::peer_mut(s) {
                    p.driver_broadcast(out, "ActivatableServicesChanged", &body);
                }
            });
        }
    }

    /// The service `name` owns its name now: the `StartServiceByName` calls that
    /// waited for it get 1 (`DBUS_START_REPLY_SUCCESS`).
    pub fn activation_came(&mut self, dom: &mut kdbus_core::Domain, name: &str) {
        for (key, serial, answer) in self.start_waiters_take(name) {
            if answer {
                driver::driver_answer(dom, key, serial, Ok(body::Body::new().u(1)));
            }
        }
    }

    /// The service `name` did not come: its `StartServiceByName` calls fail with
    /// dbus-daemon's error (the messages that waited on its activator are the
    /// broker's to fail, one by one, with [`Bridge::activation_failed`]).
    pub fn activation_start_failed(
        &mut self,
        dom: &mut kdbus_core::Domain,
        name: &str,
        why: &ActivationError,
    ) {
        for (key, serial, answer) in self.start_waiters_take(name) {
            if answer {
                self.activation_failed(dom, key, serial, name, why);
            }
        }
    }

    fn start_waiters_take(&mut self, name: &str) -> Vec<(kdbus_core::ConnKey, u32, bool)> {
        let mut out = Vec::new();
        self.start_waiters.retain(|(n, key, serial, answer)| {
            let mine = n == name;
            if mine {
                out.push((*key, *serial, *answer));
            }
            !mine
        });
        out
    }

    /// The service `name` did not come: the D-Bus call `serial` of `key` that was
    /// waiting for it fails with dbus-daemon's error.
    pub fn activation_failed(
        &mut self,
        dom: &mut kdbus_core::Domain,
        key: kdbus_core::ConnKey,
        serial: u32,
        name: &str,
        why: &ActivationError,
    ) {
        use body::ErrName;
        let ours = |e: ErrName, text: String| (e.as_str(), text);
        let (e, text) = match why {
            ActivationError::Exited(n) => ours(
                ErrName::SpawnChildExited,
                format!("Process {name} exited with status {n}"),
            ),
            ActivationError::Signaled(n) => ours(
                ErrName::SpawnChildSignaled,
                format!("Process {name} received signal {n}"),
            ),
            ActivationError::ExecFailed(why) => ours(ErrName::SpawnExecFailed, why.clone()),
            ActivationError::FileInvalid(why) => ours(ErrName::SpawnFileInvalid, why.clone()),
            ActivationError::ServiceNotFound(why) => {
                ours(ErrName::SpawnServiceNotFound, why.clone())
            }
            ActivationError::FailedToSetup(why) => ours(ErrName::SpawnFailedToSetup, why.clone()),
            // systemd's own error, as it named it.
            ActivationError::Systemd { error, text } => (error.as_str(), text.clone()),
            ActivationError::TooMany(max) => ours(
                ErrName::LimitsExceeded,
                format!(
                    "The maximum number of pending activations has been reached, activation of {name} failed (max_pending_service_starts={max})"
                ),
            ),
            ActivationError::TimedOut(ms) => ours(
                ErrName::TimedOut,
                format!(
                    "Failed to activate service '{name}': timed out (service_start_timeout={ms}ms)"
                ),
            ),
        };
        route::error_named_to(dom, key, serial, e, &text);
    }

    /// Whether the bus was started with `--systemd-activation`.
    pub fn set_systemd_activation(&mut self, on: bool) {
        self.systemd_activation = on;
    }

    /// How many D-Bus clients are connected but have not said Hello (the broker
    /// keeps them; `GetStats` reports them).
    pub fn set_incomplete_connections(&mut self, n: usize) {
        self.stats.incomplete = n;
    }

    /// How long the bus waits for replies to calls of D-Bus clients from now on.
    pub fn set_reply_timeout(&mut self, ns: u64) {
        self.reply_timeout_ns = ns;
    }

    pub(crate) fn reply_timeout(&self) -> u64 {
        if self.reply_timeout_ns == 0 {
            REPLY_TIMEOUT_NS
        } else {
            self.reply_timeout_ns
        }
    }

    /// `ReloadConfig` calls since the last time: the broker reloads its configuration
    /// once for all of them and answers each with [`Bridge::reload_answer`].
    pub fn take_reloads(&mut self) -> Vec<(kdbus_core::ConnKey, u32, bool)> {
        std::mem::take(&mut self.reloads)
    }

    /// Answer a `ReloadConfig` call: done, or why the configuration was not taken
    /// (the old one stays in force).
    pub fn reload_answer(
        &mut self,
        dom: &mut kdbus_core::Domain,
        key: kdbus_core::ConnKey,
        serial: u32,
        result: Result<(), String>,
    ) {
        let reply = result
            .map(|()| body::Body::new())
            .map_err(|e| body::DErr(body::ErrName::Failed, e));
        driver::driver_answer(dom, key, serial, reply);
    }
}
