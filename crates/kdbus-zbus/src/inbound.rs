//! What the bus delivers, as the D-Bus messages zbus expects from a message bus.
//!
//! A kdbus message with a D-Bus payload is handed over as it is, but for its sender:
//! the bus says who sent it (the source id), so the `SENDER` field is made to say the
//! same (`:1.<id>`), whatever the sender wrote. Only our own driver's replies, which we
//! send ourselves, keep the driver's name.
//!
//! The bus's own messages become what dbus-daemon would have sent: a name or
//! connection change becomes `NameOwnerChanged` (and `NameAcquired` / `NameLost` when
//! the name is ours); a reply that will not come (`REPLY_TIMEOUT`, `REPLY_DEAD`) or a
//! posted call the bus could not deliver becomes the error reply the caller waits for.

use crate::driver::{self, DRIVER, DRIVER_PATH};
use crate::shared::Shared;
use kdbus::abi::item;
use kdbus::dbus::header::{self, MessageType};
use kdbus::dbus::marshal::{Endian, Writer};
use kdbus::dbus::names::UniqueName;
use kdbus::{Errno, Received};
use std::collections::VecDeque;
use std::os::fd::OwnedFd;

/// `mut r` as zbus reads it: `Some` a D-Bus message and its fds; `None` when it was
/// the bus's own and what it means (if anything) was queued on `local`.
pub(crate) fn translate(
    shared: &Shared,
    mut r: Received<'_>,
    local: &mut VecDeque<Vec<u8>>,
) -> std::io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    if r.header().payload_type == kdbus::abi::payload::KERNEL {
        notification(shared, &r, local);
        return Ok(None);
    }
    if r.header().payload_type != kdbus::abi::payload::DBUS {
        // A native peer's own protocol: nothing zbus could read.
        return Ok(None);
    }
    let bytes = r.payload_bytes();
    // Exactly one message: zbus frames by the header's lengths, so bytes past the body
    // would be read as a message of their own, with a sender nobody checked.
    let Some(h) = header::parse(&bytes)
        .ok()
        .filter(|h| h.total_len() == bytes.len())
    else {
        tracing::debug!(src = r.src_id(), "dropped a malformed D-Bus message");
        return Ok(None);
    };
    let src = r.src_id();
    if src == shared.id() {
        return Ok(Some((bytes, std::mem::take(&mut r.fds))));
    }
    if matches!(h.msg_type, MessageType::MethodReturn | MessageType::Error) {
        // A reply only as the bus delivered it, to the call it tracked: zbus matches
        // replies by serial alone, so an ordinary message shaped like one would pass.
        let Some(rs) = h
            .reply_serial
            .map(u64::from)
            .filter(|rs| *rs == r.cookie_reply())
        else {
            tracing::debug!(src, "dropped a reply the bus did not deliver as one");
            return Ok(None);
        };
        shared.state().calls.remove(&rs);
    }
    let fds = std::mem::take(&mut r.fds);
    let sender = UniqueName::from_id(src);
    if h.sender == Some(sender.as_str()) {
        return Ok(Some((bytes, fds)));
    }
    let mut out = Vec::with_capacity(bytes.len() + 32);
    header::write(&mut out, &h, Some(sender.as_str()));
    out.extend_from_slice(&bytes[h.header_len..]);
    Ok(Some((out, fds)))
}

/// The bus's message `r`, as the driver's signal or error.
fn notification(shared: &Shared, r: &Received<'_>, local: &mut VecDeque<Vec<u8>>) {
    let Some(t) = r.kernel_item() else { return };
    let payload = r.item(t).unwrap_or(&[]);
    let u64_at = |at: usize| {
        payload
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_ne_bytes)
    };
    let me = shared.id();
    match t {
        item::REPLY_TIMEOUT | item::REPLY_DEAD => {
            let cookie = r.cookie_reply();
            // (The lock is let go first: the error takes a serial under it.)
            let call = shared.state().calls.remove(&cookie);
            if let Some(dest) = call {
                let errno = if t == item::REPLY_DEAD {
                    Errno::ECONNRESET
                } else {
                    Errno::ETIMEDOUT
                };
                local.push_back(send_error(shared, cookie as u32, &dest, errno));
            }
        }
        item::ID_ADD | item::ID_REMOVE => {
            let u = UniqueName::from_id(u64_at(0));
            let (old, new) = if t == item::ID_ADD {
                ("", u.as_str())
            } else {
                (u.as_str(), "")
            };
            local.push_back(driver_signal(
                shared,
                "NameOwnerChanged",
                None,
                &[u.as_str(), old, new],
            ));
        }
        item::NAME_ADD | item::NAME_REMOVE | item::NAME_CHANGE => {
            // Old owner (id, flags), new owner (id, flags), then the name.
            let (old, new) = (u64_at(0), u64_at(16));
            let name = payload.get(32..).unwrap_or(&[]);
            let name = name.split(|b| *b == 0).next().unwrap_or(&[]);
            let Ok(name) = std::str::from_utf8(name) else {
                return;
            };
            let unique = |id: u64| {
                if id == 0 {
                    String::new()
                } else {
                    UniqueName::from_id(id).as_str().to_string()
                }
            };
            let (o, n) = (unique(old), unique(new));
            // dbus-daemon's order: the loser hears first, then the winner, then all.
            if old == me {
                local.push_back(driver_signal(
                    shared,
                    "NameLost",
                    Some(&shared.unique),
                    &[name],
                ));
            }
            if new == me {
                local.push_back(driver_signal(
                    shared,
                    "NameAcquired",
                    Some(&shared.unique),
                    &[name],
                ));
            }
            local.push_back(driver_signal(
                shared,
                "NameOwnerChanged",
                None,
                &[name, &o, &n],
            ));
        }
        _ => {}
    }
}

/// A posted message with `cookie` could not be delivered: if it was one of our calls,
/// its caller gets the error instead of a reply.
pub(crate) fn send_failed(shared: &Shared, cookie: u64, e: Errno, local: &mut VecDeque<Vec<u8>>) {
    // (The lock is let go first: the error takes a serial under it.)
    let call = shared.state().calls.remove(&cookie);
    if let Some(dest) = call {
        local.push_back(send_error(shared, cookie as u32, &dest, e));
    }
}

/// The error a D-Bus bus answers a call to `dest` with when the bus says `e`.
pub(crate) fn send_error(shared: &Shared, serial: u32, dest: &str, e: Errno) -> Vec<u8> {
    let (name, text) = match e {
        Errno::ESRCH | Errno::ENXIO | Errno::EADDRNOTAVAIL => (
            "org.freedesktop.DBus.Error.ServiceUnknown",
            format!("The name {dest} was not provided by any .service files"),
        ),
        Errno::EPERM | Errno::EACCES => (
            "org.freedesktop.DBus.Error.AccessDenied",
            format!("The bus refused a message to {dest}"),
        ),
        Errno::ETIMEDOUT => (
            "org.freedesktop.DBus.Error.NoReply",
            "Message did not receive a reply (timeout by message bus)".to_string(),
        ),
        Errno::ECONNRESET => (
            "org.freedesktop.DBus.Error.NoReply",
            "Message recipient disconnected from message bus without replying".to_string(),
        ),
        Errno::ENOBUFS | Errno::EXFULL | Errno::EMSGSIZE | Errno::EMLINK => (
            "org.freedesktop.DBus.Error.LimitsExceeded",
            format!("The message to {dest} exceeds the bus's limits ({e})"),
        ),
        e => (
            "org.freedesktop.DBus.Error.Failed",
            format!("The bus could not deliver the message to {dest} ({e})"),
        ),
    };
    driver::error(shared, serial, name, &text)
}

/// A signal from the driver with string arguments, to `dest` or to everyone.
fn driver_signal(shared: &Shared, member: &str, dest: Option<&str>, args: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut w = Writer::new(&mut body, Endian::Little);
    for a in args {
        w.string(a);
    }
    let sig = "s".repeat(args.len());
    let f = header::Fields {
        path: Some(DRIVER_PATH),
        interface: Some(DRIVER),
        member: Some(member),
        destination: dest,
        sender: Some(DRIVER),
        signature: &sig,
        ..Default::default()
    };
    driver::message(shared, MessageType::Signal, &f, &body)
}
