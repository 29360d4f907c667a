//! Accepting clients: who connected (credentials, a pidfd), whether its user may hold
//! one more of the broker's descriptors, and what the socket becomes (a native handle
//! that waits to become a connection or a bus, or a D-Bus client); and the pause when
//! the process itself runs out of descriptors.

use super::Broker;
use crate::admission;
use crate::listener::{Accept, Listener};
use crate::peer::peer_from_socket;
use crate::seqpacket::{Handle, Role};

impl Broker {
    /// The process is out of descriptors: stop accepting for a moment instead of
    /// spinning on a listener that stays readable, and say so at most once a second.
    pub(super) fn accept_pause(&mut self) {
        let now = self.domain.now().monotonic_ns;
        self.accept_paused_until = Some(now + 100_000_000);
        self.listeners.pause_all(&self.dispatch, true);
        if now.saturating_sub(self.exhausted_logged) >= 1_000_000_000 {
            self.exhausted_logged = now;
            tracing::warn!("out of file descriptors: not accepting for 100 ms");
        }
    }

    /// Accept every client waiting on listener `ltoken`: its peer credentials, its
    /// user's share of descriptors, and what it becomes (a handle waiting to become
    /// something, or a D-Bus client).
    pub(super) fn accept_all(&mut self, ltoken: u64) {
        let dbus = self.listeners.is_dbus(ltoken);
        loop {
            if dbus && self.dbus.full() {
                self.listeners.dbus_pause(&self.dispatch, true);
                return;
            }
            let (fd, which) = match self.listeners.accept(ltoken) {
                Accept::Client(fd, which) => (fd, which),
                Accept::Empty => return,
                Accept::Exhausted => return self.accept_pause(),
            };
            // A D-Bus client's metadata-only facts are read when first wanted.
            let defer = matches!(which, Listener::DBus(..));
            let peer = match peer_from_socket(&fd, &mut self.proc_strings, defer) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(%e, "no peer credentials, dropping");
                    continue;
                }
            };
            let uid = peer.creds.uid;
            let cost = match which {
                Listener::Control => admission::COST_CONTROL,
                Listener::DBus(..) => admission::COST_DBUS,
                Listener::Bus(_) | Listener::Endpoint(..) => admission::COST_ENDPOINT,
            };
            // Privileged callers (and the broker's own user) keep a reserve.
            let privileged = peer.privileged || uid == self.me.creds.uid;
            if !self.fds.borrow_mut().admit(uid, privileged, cost) {
                tracing::debug!(uid, "a user holds its share of descriptors, closing");
                continue;
            }
            if let Listener::DBus(..) = which {
                if !self.dbus.may_accept(uid) {
                    tracing::debug!(uid, "too many unauthenticated D-Bus connections, closing");
                    self.fds.borrow_mut().release(uid, cost);
                    continue;
                }
            }
            let _ = rustix::net::sockopt::set_socket_passcred(&fd, true);
            let _ = rustix::net::sockopt::set_socket_send_buffer_size(&fd, 1 << 20);
            let token = self.dispatch.token();
            let now = self.domain.now().monotonic_ns;
            let waits = !matches!(which, Listener::DBus(..));
            if waits && !self.waiting.start(token, uid, privileged, now) {
                tracing::debug!(uid, "too many handles waiting to become something, closing");
                self.fds.borrow_mut().release(uid, cost);
                continue;
            }
            if self.dispatch.add(&fd, token).is_err() {
                self.waiting.end(token);
                self.fds.borrow_mut().release(uid, cost);
                continue;
            }
            let role = match which {
                Listener::Control => Role::Control,
                Listener::Bus(b) => Role::Endpoint(b, None),
                Listener::Endpoint(b, ep) => Role::Endpoint(b, Some(ep)),
                Listener::DBus(b, ep) => {
                    // The server guid is the bus id: addresses carry it as `guid=`, and
                    // clients check that the server they reach is the one they meant.
                    let guid = self.domain.bus(b).map_or([0; 16], |bus| bus.id128);
                    let now = self.domain.now().monotonic_ns;
                    self.dbus.accept(token, fd, peer, (b, ep), guid, now);
                    continue;
                }
            };
            self.handles
                .insert(token, Box::new(Handle::new(fd, peer, role, cost)));
        }
    }
}
