//! What we learn about a client when it connects: kernel credentials of the socket and
//! a few facts from `/proc`, read once (connect is not a hot path).

use kdbus_core::{Creds, Peer};
use rustix::fd::AsFd;
use std::sync::Arc;

/// CAP_IPC_OWNER, kdbus's capability for privileged bus users.
const CAP_IPC_OWNER: u32 = 15;

pub fn peer_from_socket(fd: impl AsFd) -> std::io::Result<Peer> {
    let cred = rustix::net::sockopt::socket_peercred(fd)?;
    let creds = Creds {
        pid: cred.pid.as_raw_nonzero().get() as u32,
        uid: cred.uid.as_raw(),
        gid: cred.gid.as_raw(),
    };
    Ok(peer_from_creds(creds))
}

pub fn peer_from_creds(creds: Creds) -> Peer {
    let proc = format!("/proc/{}", creds.pid);
    let comm = std::fs::read_to_string(format!("{proc}/comm"))
        .ok()
        .map(|s| Arc::from(s.trim_end()));
    let exe = std::fs::read_link(format!("{proc}/exe"))
        .ok()
        .and_then(|p| p.to_str().map(Arc::from));
    let cmdline = std::fs::read(format!("{proc}/cmdline")).ok().map(|mut v| {
        v.truncate(4096);
        Arc::from(v)
    });
    let privileged = creds.uid == 0 || has_cap(&proc, CAP_IPC_OWNER);
    Peer {
        creds,
        privileged,
        comm,
        exe,
        cmdline,
    }
}

fn has_cap(proc: &str, cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("{proc}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

/// The credentials the kernel attached to a datagram, if it really did: a message
/// sent before the broker had turned on SO_PASSCRED for the new socket (between the
/// client's connect and our accept) carries the overflow ids instead. Then the
/// connect-time credentials (SO_PEERCRED) are the ones to use.
pub fn creds_from_scm(c: &rustix::net::UCred) -> Option<Creds> {
    const OVERFLOW_ID: u32 = 65534;
    let (uid, gid) = (c.uid.as_raw(), c.gid.as_raw());
    if uid == OVERFLOW_ID && gid == OVERFLOW_ID {
        return None;
    }
    Some(Creds {
        pid: c.pid.as_raw_nonzero().get() as u32,
        uid,
        gid,
    })
}
