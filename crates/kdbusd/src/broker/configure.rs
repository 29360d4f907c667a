//! What the broker takes from its configuration file, at start and on reload:
//! policy, admission, limits, and the activatable services; and the watch that
//! reloads it when its directories change (`config_watch.rs`).

use super::Broker;
use kdbus_core::BusKey;
use std::time::Duration;

impl Broker {
    /// Read the configuration file again and put its policy and admission rules in
    /// force at once. A file that does not load changes nothing: the error is logged
    /// and returned, and the old configuration stays.
    pub fn reload(&mut self) -> Result<(), String> {
        let (Some(path), Some(bus)) = (self.config_file.clone(), self.config_bus) else {
            return Ok(());
        };
        let result = match crate::config::BusConfig::load(&path) {
            Ok(c) => {
                self.domain.bus_set_msg_policy(bus, Some(c.msg_policy()));
                self.dbus.set_admission(Some(c.admission()));
                self.limits_apply(bus, &crate::limits::Limits::of(&c));
                self.activation_install(bus, &c);
                tracing::info!(file = %path.display(), "configuration reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(%e, "configuration not reloaded; the old one stays in force");
                Err(e.to_string())
            }
        };
        // After every reload, taken or not (dbus-daemon's order).
        self.bridge
            .activatable_services_changed(&mut self.domain, bus);
        result
    }

    /// Watch the directories of `c` (anew: they may have changed).
    fn config_watch_set(&mut self, c: &crate::config::BusConfig) {
        if let Some(old) = self.config_watch.take() {
            self.dispatch.remove(old.fd());
        }
        match crate::config_watch::ConfigWatch::config_watch_new(&c.watched_dirs()) {
            Ok(w) => match self
                .dispatch
                .add(w.fd(), crate::dispatch::TOKEN_CONFIG_WATCH)
            {
                Ok(()) => self.config_watch = Some(w),
                Err(e) => tracing::warn!(%e, "configuration directories not watched"),
            },
            Err(e) => tracing::warn!(%e, "configuration directories not watched"),
        }
    }

    /// Put a configuration's limits in force on `bus` and the D-Bus sockets.
    pub(super) fn limits_apply(&mut self, bus: BusKey, l: &crate::limits::Limits) {
        self.domain.bus_set_limits(bus, l.bus);
        self.dbus.set_limits(l.dbus);
        self.bridge
            .set_reply_timeout(l.reply_timeout_ns.unwrap_or(0));
        self.bridge.set_stream_limits(l.stream);
    }

    /// Make the configured bus's services activatable; `starter` is the address
    /// services are told to connect to.
    pub(super) fn activation_setup(&mut self, starter: String) {
        self.activation.starter_address = starter;
        self.activation.systemd = self.bridge.systemd_activation();
        let (Some(path), Some(bus)) = (self.config_file.clone(), self.config_bus) else {
            return;
        };
        // Read again: the broker is handed what it needs of the file, not the file.
        if let Ok(c) = crate::config::BusConfig::load(&path) {
            self.activation_install(bus, &c);
        }
    }

    /// Make the services of `c`'s service directories activatable on `bus`.
    fn activation_install(&mut self, bus: BusKey, c: &crate::config::BusConfig) {
        self.config_watch_set(c);
        self.activation.bus_type = c.bus_type.clone().unwrap_or_else(|| "session".into());
        let services = crate::service_file::services_load(c);
        self.activation.timeout = c.limit("service_start_timeout").map(Duration::from_millis);
        self.activation.max_pending = c
            .limit("max_pending_service_starts")
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let me = self.me.clone();
        self.activation
            .install(&mut self.domain, bus, &me, services);
    }

    /// What services start with besides the starter variables
    /// (`UpdateActivationEnvironment`).
    pub(super) fn activation_env(&self) -> Vec<(String, String)> {
        self.bridge
            .activation_env()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Start what `StartServiceByName` asked for, and look at what is starting.
    pub(super) fn activation_turn(&mut self) {
        let starts = self.bridge.take_starts();
        if !starts.is_empty() {
            let env = self.activation_env();
            for name in starts {
                if self.activation.serves(&name) {
                    self.activation.start(&name, &env);
                } else {
                    // An activator of a native client's: it starts its service when
                    // it sees a message; nothing to wait for here.
                    self.bridge.activation_came(&mut self.domain, &name);
                }
            }
        }
        if self.activation.next_check().is_some() {
            self.activation.poll(&mut self.domain, &mut self.bridge);
        }
    }
}
