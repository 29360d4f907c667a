//! The activation launcher of a system bus: services run as the `User=` of their file.
//!
//! A system bus binds its sockets as root and then drops to the configuration's
//! `<user>` (dbus-daemon's order), so the broker itself can no longer start a service
//! as another user. dbus-daemon leaves that to a setuid helper that re-reads the
//! service file itself; ours is the same idea without setuid: before the drop, the
//! broker starts a copy of `kdbusd` in launcher mode that stays root, with one end of a
//! seqpacket socket as its stdin. It trusts the broker with no more than a service
//! *name*: for each request it loads the configuration file again, finds the name's
//! `.service` file in the configured directories, and runs its `Exec=` as its `User=`
//! (with that user's groups, and an environment of only `DBUS_STARTER_ADDRESS` and
//! `DBUS_STARTER_BUS_TYPE`, as dbus-daemon's helper leaves it). So a broker taken over by a client
//! can start configured services, as their owners meant them to run, and nothing else.
//!
//! Every datagram is a list of NUL-separated fields:
//! - broker to launcher: `start`, name, starter address, bus type;
//! - launcher to broker: `exited`, name, status | `signaled`, name, signal |
//!   `failed`, name, kind, text (the kinds are dbus-daemon's `Spawn.*` errors).
//!
//! The broker reads its end without blocking when its activation looks at what is
//! starting; the launcher ends when the broker's end closes.

use kdbus_bridge::ActivationError;
use rustix::fd::{AsFd, OwnedFd};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Largest datagram either side sends.
const MAX_DATAGRAM: usize = 8 << 10;

/// The broker's end of the launcher.
pub(crate) struct Launcher {
    sock: OwnedFd,
    child: Child,
}

impl Launcher {
    /// Start the launcher (while still root) for the bus configured by `config`.
    pub(crate) fn launcher_start(config: &Path) -> std::io::Result<Launcher> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::fs::fcntl_setfl(&ours, rustix::fs::OFlags::NONBLOCK)?;
        let child = Command::new(std::env::current_exe()?)
            .arg("--activation-launcher")
            .arg(config)
            .stdin(Stdio::from(theirs))
            .spawn()?;
        Ok(Launcher { sock: ours, child })
    }

    /// Ask for `name`'s service to be started.
    pub(crate) fn launcher_request(
        &self,
        name: &str,
        address: &str,
        bus_type: &str,
    ) -> std::io::Result<()> {
        let msg = fields_join(&["start", name, address, bus_type]);
        rustix::net::send(&self.sock, msg.as_bytes(), SendFlags::DONTWAIT)?;
        Ok(())
    }

    /// What became of started services since the last time: each service whose
    /// process ended or could not be run, with dbus-daemon's error for it. A launcher
    /// that is gone fails everything (`gone` is set).
    pub(crate) fn launcher_events(&mut self) -> (Vec<(String, ActivationError)>, bool) {
        let mut out = Vec::new();
        let mut buf = [0u8; MAX_DATAGRAM];
        loop {
            match rustix::net::recv(&self.sock, &mut buf, RecvFlags::DONTWAIT) {
                Ok((0, _)) => return (out, true),
                Ok((n, _)) => {
                    let text = String::from_utf8_lossy(&buf[..n.min(buf.len())]);
                    let f: Vec<&str> = text.split('\0').collect();
                    if let Some(ev) = event_parse(&f) {
                        out.push(ev);
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return (out, false),
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return (out, true),
            }
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // Closing our end ends it; wait so it is not left a zombie.
        let _ = rustix::net::shutdown(&self.sock, rustix::net::Shutdown::Both);
        let _ = self.child.wait();
    }
}

fn fields_join(f: &[&str]) -> String {
    f.join("\0")
}

/// A launcher datagram as the broker reads it.
fn event_parse(f: &[&str]) -> Option<(String, ActivationError)> {
    let name = f.get(1)?.to_string();
    let why = match (f[0], f.get(2)) {
        ("exited", Some(n)) => ActivationError::Exited(n.parse().ok()?),
        ("signaled", Some(n)) => ActivationError::Signaled(n.parse().ok()?),
        ("failed", Some(kind)) => {
            let text = f.get(3).unwrap_or(&"").to_string();
            match *kind {
                "FileInvalid" => ActivationError::FileInvalid(text),
                "ServiceNotFound" => ActivationError::ServiceNotFound(text),
                "FailedToSetup" => ActivationError::FailedToSetup(text),
                _ => ActivationError::ExecFailed(text),
            }
        }
        _ => return None,
    };
    Some((name, why))
}

/// Why a request could not be started: a `Spawn.*` kind and dbus-daemon's text.
struct Refusal(&'static str, String);

/// The launcher's main loop (`kdbusd --activation-launcher CONFIG`, stdin the
/// broker's socket): serve requests and report how children end, until the broker
/// closes its end.
pub fn launcher_serve(config: &Path) -> std::io::Result<()> {
    // Stdin is the socket the broker gave us.
    let sock: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned()?;
    let mut children: HashMap<u32, (String, Child)> = HashMap::new();
    let mut buf = [0u8; MAX_DATAGRAM];
    loop {
        let mut fds = [rustix::event::PollFd::new(
            &sock,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        match rustix::net::recv(&sock, &mut buf, RecvFlags::DONTWAIT) {
            Ok((0, _)) => return Ok(()),
            Ok((n, _)) => {
                let text = String::from_utf8_lossy(&buf[..n.min(buf.len())]).into_owned();
                let f: Vec<&str> = text.split('\0').collect();
                if let ["start", name, address, bus_type] = f[..] {
                    match launcher_spawn(config, name, address, bus_type) {
                        Ok(child) => {
                            children.insert(child.id(), (name.to_string(), child));
                        }
                        Err(Refusal(kind, why)) => {
                            tracing::warn!(%name, %why, "the service was not started");
                            reply(&sock, &["failed", name, kind, &why]);
                        }
                    }
                }
            }
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        children.retain(|_, (name, child)| {
            use std::os::unix::process::ExitStatusExt;
            match child.try_wait() {
                Ok(None) => true,
                Ok(Some(st)) => {
                    match (st.code(), st.signal()) {
                        (Some(c), _) => reply(&sock, &["exited", name, &c.to_string()]),
                        (None, Some(s)) => reply(&sock, &["signaled", name, &s.to_string()]),
                        _ => reply(&sock, &["exited", name, "-1"]),
                    }
                    false
                }
                Err(_) => false,
            }
        });
    }
}

fn reply(sock: &OwnedFd, f: &[&str]) {
    let msg = fields_join(f);
    let bytes = &msg.as_bytes()[..msg.len().min(MAX_DATAGRAM)];
    if let Err(e) = rustix::net::send(sock, bytes, SendFlags::empty()) {
        tracing::warn!(%e, "the broker was not told about a service");
    }
}

/// Start `name`'s service as its `User=`, from the service files the configuration
/// names now.
fn launcher_spawn(
    config: &Path,
    name: &str,
    address: &str,
    bus_type: &str,
) -> Result<Child, Refusal> {
    let conf = crate::config::BusConfig::load(config).map_err(|e| {
        Refusal(
            "FileInvalid",
            format!("Failed to load the configuration: {e}"),
        )
    })?;
    let service = crate::service_file::services_load(&conf)
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            Refusal(
                "ServiceNotFound",
                "Bus name not found in system service directory".to_string(),
            )
        })?;
    let user = service.user.as_deref().ok_or_else(|| {
        Refusal(
            "FileInvalid",
            "Cannot do system-bus activation with no user\n".to_string(),
        )
    })?;
    let (uid, gid) = crate::sys::user_lookup(user).ok_or_else(|| {
        tracing::warn!(%name, %user, "cannot find the service's user");
        Refusal(
            "FailedToSetup",
            "Failed to setup environment correctly".to_string(),
        )
    })?;
    let mut cmd = Command::new(&service.exec[0]);
    cmd.args(&service.exec[1..])
        .env_clear()
        .env("DBUS_STARTER_ADDRESS", address)
        .env("DBUS_STARTER_BUS_TYPE", bus_type)
        .stdin(Stdio::null());
    crate::sys::command_as_user(&mut cmd, uid, gid, crate::sys::user_groups(user, gid));
    let child = cmd.spawn().map_err(|e| {
        Refusal(
            "ExecFailed",
            format!("Failed to execute program {}: {e}", service.exec[0]),
        )
    })?;
    tracing::info!(%name, %user, pid = child.id(), "activating service as its user");
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launcher_datagrams_read_back_as_the_errors_they_carry() {
        let ev = |s: &str| event_parse(&s.split(' ').collect::<Vec<_>>());
        assert!(matches!(
            ev("exited org.x 3"),
            Some((n, ActivationError::Exited(3))) if n == "org.x"
        ));
        assert!(matches!(
            ev("signaled org.x 9"),
            Some((_, ActivationError::Signaled(9)))
        ));
        assert!(matches!(
            ev("failed org.x FileInvalid no-User="),
            Some((_, ActivationError::FileInvalid(t))) if t == "no-User="
        ));
        assert!(ev("exited org.x nan").is_none());
        assert!(ev("bogus").is_none());
    }
}
