//! What we learn about a client when it connects: kernel credentials of the socket and
//! a few facts from `/proc`, read once (for a D-Bus client, when first wanted:
//! [`Peer::deferred`]); and, when a message
//! is sent to a receiver that asks, what the sending process may have changed since
//! (its name, its program, its arguments), read again ([`ProcNow`]).
//!
//! The strings from `/proc` (comm, exe, cmdline) are interned: a process with many
//! connections, or many processes of one program, share one copy instead of holding
//! one per connection.

use kdbus_core::{Creds, Peer};
use rustix::fd::AsFd;
use std::collections::HashSet;
use std::sync::Arc;

/// CAP_IPC_OWNER, kdbus's capability for privileged bus users.
const CAP_IPC_OWNER: u32 = 15;

/// Interned `/proc` strings of connected peers.
///
/// Entries nobody else holds any more are swept when the table has doubled since the
/// last sweep, so it stays within twice what live connections use.
#[derive(Default)]
pub struct ProcStrings {
    /// Interned text: comm, exe path, cgroup path.
    strs: HashSet<Arc<str>>,
    /// Interned byte strings: cmdline, supplementary groups, capability sets.
    bytes: HashSet<Arc<[u8]>>,
    /// Entries (both tables together) at which the next sweep runs.
    sweep_at: usize,
}

impl ProcStrings {
    fn str(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strs.get(s) {
            return a.clone();
        }
        self.sweep();
        let a: Arc<str> = Arc::from(s);
        self.strs.insert(a.clone());
        a
    }

    fn bytes(&mut self, b: &[u8]) -> Arc<[u8]> {
        if let Some(a) = self.bytes.get(b) {
            return a.clone();
        }
        self.sweep();
        let a: Arc<[u8]> = Arc::from(b);
        self.bytes.insert(a.clone());
        a
    }

    fn sweep(&mut self) {
        if self.strs.len() + self.bytes.len() < self.sweep_at {
            return;
        }
        self.strs.retain(|a| Arc::strong_count(a) > 1);
        self.bytes.retain(|a| Arc::strong_count(a) > 1);
        self.sweep_at = 2 * (self.strs.len() + self.bytes.len()) + 64;
    }
}

/// Who connected `fd`. `defer`: leave the facts only metadata shows and no one can
/// trust anyway (comm, cmdline, cgroup, audit ids: a process sets the first two
/// itself) to be read when first wanted ([`Peer::deferred`]; D-Bus clients, seldom
/// asked for them), which needs a pidfd to vouch for the late read; everything that
/// decides something or says who the process is (ids, capabilities, groups,
/// namespaces, program) is read now.
pub fn peer_from_socket(
    fd: impl AsFd,
    interned: &mut ProcStrings,
    defer: bool,
) -> std::io::Result<Peer> {
    let cred = rustix::net::sockopt::socket_peercred(fd.as_fd())?;
    let creds = Creds {
        pid: cred.pid.as_raw_nonzero().get() as u32,
        uid: cred.uid.as_raw(),
        gid: cred.gid.as_raw(),
    };
    // Taken first: while the process it names has not been reaped, its pid is
    // nobody else's, so what was read by pid below was read of the process that
    // connected if it is still there afterwards.
    let pidfd = crate::sys::peer_pidfd(fd.as_fd());
    let defer = defer && matches!(pidfd, Ok(Some(_)));
    let mut peer = peer_read(creds, interned, defer);
    let gone = match &pidfd {
        Ok(f) => f
            .as_ref()
            .is_some_and(|f| !crate::sys::pidfd_alive(f.as_fd())),
        Err(()) => true,
    };
    if gone {
        // Gone already: its pid may have gone to another process by the time we
        // looked, so nothing read by pid is kept, privilege least of all.
        tracing::debug!(pid = creds.pid, "a client gone before it was accepted");
        peer = Peer {
            creds,
            privileged: creds.uid == 0,
            ..Peer::default()
        };
    }
    // Not kept: an idle connection costs the broker its socket alone. The pidfd is
    // taken again from the socket when first needed (`ProcNow::pidfd`).
    drop(pidfd);
    Ok(peer)
}

/// Everything `/proc` says about the process `creds.pid` that the broker keeps.
pub fn peer_from_creds(creds: Creds, interned: &mut ProcStrings) -> Peer {
    peer_read(creds, interned, false)
}

/// What `/proc` says about `creds.pid`; with `defer`, all but comm, cmdline, cgroup
/// and audit ids ([`Peer::deferred`]).
fn peer_read(creds: Creds, interned: &mut ProcStrings, defer: bool) -> Peer {
    let mut peer = Peer {
        creds,
        ..Peer::default()
    };
    let cap_eff = read_status_facts(&mut peer, interned);
    peer.privileged =
        creds.uid == 0 || cap_eff.is_some_and(|caps| caps & (1 << CAP_IPC_OWNER) != 0);
    read_exe(&mut peer, interned);
    match defer {
        true => peer.deferred = true,
        false => read_other_facts(&mut peer, creds.pid, interned),
    }
    peer
}

/// What `status` and the namespace links say: parent, groups, capabilities, the four
/// ids of each kind, namespaces. Returns the effective capabilities.
fn read_status_facts(peer: &mut Peer, interned: &mut ProcStrings) -> Option<u64> {
    let proc = format!("/proc/{}", peer.creds.pid);
    let status = proc_text(&format!("{proc}/status")).unwrap_or_default();
    // One pass over its fifty-odd lines, not one per field asked for.
    let fields: Vec<(&str, &str)> = status.lines().filter_map(|l| l.split_once(':')).collect();
    let field = |name: &str| {
        let key = name.strip_suffix(':').unwrap_or(name);
        fields.iter().find(|f| f.0 == key).map(|f| f.1.trim())
    };
    peer.ppid = field("PPid:").and_then(|v| v.parse().ok()).unwrap_or(0);
    peer.groups = field("Groups:").map(|g| interned.bytes(&groups_item(g)));
    peer.caps = proc_caps(&field).map(|c| interned.bytes(&c));
    peer.ns = namespaces_of(&proc, &field, peer.ppid);
    let four = |name: &str| -> Option<Vec<u32>> {
        let v: Vec<u32> = field(name)?
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (v.len() == 4).then_some(v)
    };
    peer.ids = four("Uid:").zip(four("Gid:")).and_then(|(u, g)| {
        let all: Vec<u32> = u.into_iter().chain(g).collect();
        let ids = <[u32; 8]>::try_from(all).ok()?;
        // Kept only when they say more than the real ids would.
        let plain = ids[..4].iter().all(|&x| x == ids[0]) && ids[4..].iter().all(|&x| x == ids[4]);
        (!plain).then(|| Box::new(ids))
    });
    field("CapEff:").and_then(|v| u64::from_str_radix(v, 16).ok())
}

/// The program (`exe`): read at connect, as an exec later would change it.
fn read_exe(peer: &mut Peer, interned: &mut ProcStrings) {
    peer.exe = std::fs::read_link(format!("/proc/{}/exe", peer.creds.pid))
        .ok()
        .and_then(|p| p.to_str().map(|s| interned.str(s)));
}

/// comm, cmdline, cgroup, audit ids of process `pid`: five files.
fn read_other_facts(peer: &mut Peer, pid: u32, interned: &mut ProcStrings) {
    let proc = format!("/proc/{pid}");
    peer.comm = proc_text(&format!("{proc}/comm")).map(|s| interned.str(s.trim_end()));
    peer.cmdline = proc_read(&format!("{proc}/cmdline"), CMDLINE_MAX).map(|v| interned.bytes(&v));
    peer.cgroup = proc_text(&format!("{proc}/cgroup"))
        .and_then(|c| proc_cgroup_path(&c).map(|p| interned.str(p)));
    peer.audit = (|| {
        let read = |f: &str| proc_text(&format!("{proc}/{f}"));
        let session: u32 = read("sessionid")?.trim().parse().ok()?;
        let login: u32 = read("loginuid")?.trim().parse().ok()?;
        Some((session, login))
    })();
}

/// The inode of `/proc/<who>/ns/<kind>` (`user:[N]` -> N).
fn ns_inode(who: &str, kind: &str) -> Option<u64> {
    let l = std::fs::read_link(format!("{who}/ns/{kind}")).ok()?;
    let s = l.to_str()?;
    s.split_once('[')?.1.strip_suffix(']')?.parse().ok()
}

/// A uid or gid map as `/proc` shows it to the broker.
fn id_map(path: &str) -> Vec<(u32, u32, u32)> {
    proc_text(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|x| x.parse::<u32>().ok());
            Some((f.next()??, f.next()??, f.next()??))
        })
        .collect()
}

/// The last pid of a `/proc/PID/status` `NSpid:` value: the pid in its own namespace.
fn own_ns_pid(nspid: &str) -> Option<u32> {
    nspid.split_whitespace().last()?.parse().ok()
}

/// The namespaces of the process at `proc` (`/proc/PID`) where they are not the
/// broker's: the inodes, its id maps, and its own pid and parent's pid in its pid
/// namespace.
fn namespaces_of<'a>(
    proc: &str,
    field: &impl Fn(&str) -> Option<&'a str>,
    ppid: u32,
) -> Option<Arc<kdbus_core::meta::Namespaces>> {
    // The broker's own, which do not change while it runs; and whether `/proc` is
    // of its pid namespace (its own NSpid has one entry).
    static HOME: std::sync::OnceLock<(Option<u64>, Option<u64>, bool)> = std::sync::OnceLock::new();
    let &(home_user, home_pid, proc_is_home) = HOME.get_or_init(|| {
        let nspid = proc_text("/proc/self/status")
            .and_then(|s| status_field(&s, "NSpid:").map(|v| v.split_whitespace().count()));
        (
            ns_inode("/proc/self", "user"),
            ns_inode("/proc/self", "pid"),
            nspid == Some(1),
        )
    });
    let user = ns_inode(proc, "user")?;
    // One NSpid entry: the process is in the pid namespace `/proc` shows, ours; no
    // need to look at its link (most clients: one readlink less per connection).
    let pid = match (proc_is_home, home_pid) {
        (true, Some(home))
            if field("NSpid:").is_some_and(|v| v.split_whitespace().count() == 1) =>
        {
            home
        }
        _ => ns_inode(proc, "pid")?,
    };
    let (user_home, pid_home) = (Some(user) == home_user, Some(pid) == home_pid);
    if user_home && pid_home {
        return None;
    }
    let own = field("NSpid:").and_then(own_ns_pid).unwrap_or(0);
    // Its parent, in the same namespace, is named there; an init process's parent
    // is outside it.
    let parent_ns = ns_inode(&format!("/proc/{ppid}"), "pid");
    let own_ppid = match parent_ns == Some(pid) {
        true => proc_text(&format!("/proc/{ppid}/status"))
            .and_then(|s| status_field(&s, "NSpid:").and_then(own_ns_pid))
            .unwrap_or(0),
        false => 0,
    };
    Some(Arc::new(kdbus_core::meta::Namespaces {
        user_ns: user,
        user_home,
        pid_ns: pid,
        pid_home,
        uid_map: id_map(&format!("{proc}/uid_map")),
        gid_map: id_map(&format!("{proc}/gid_map")),
        own_pids: (own, own_ppid),
    }))
}

/// Reads a sending process's `comm`, `exe`, `cmdline`, cgroup, groups and capabilities
/// from `/proc` when a message is sent (the core asks only for what a receiver wants). The pid comes with the message
/// (`SCM_CREDENTIALS`); between the send and this read the process may have exited and
/// its pid gone to another process. When the sender is the process that connected, its
/// pidfd settles it: read first, then check that process is still there (until it is
/// reaped its pid is nobody else's), else keep what was taken at connect. A forked
/// child sending on its parent's connection has no pidfd here; for it the race remains
/// (`docs/abi.md`).
#[derive(Default)]
pub struct ProcNow {
    strings: std::cell::RefCell<ProcStrings>,
}

impl kdbus_core::meta::ProcFacts for ProcNow {
    fn proc_now(&self, peer: &Peer, pid: u32, want: u64) -> Option<Peer> {
        use kdbus_abi::attach;
        if pid == 0 {
            return None;
        }
        let proc = format!("/proc/{pid}");
        let mut strings = self.strings.borrow_mut();
        let mut p = peer.clone();
        if want & (attach::PID_COMM | attach::TID_COMM) != 0 {
            p.comm = proc_text(&format!("{proc}/comm")).map(|s| strings.str(s.trim_end()));
        }
        if want & attach::EXE != 0 {
            p.exe = std::fs::read_link(format!("{proc}/exe"))
                .ok()
                .and_then(|e| e.to_str().map(|s| strings.str(s)));
        }
        if want & attach::CMDLINE != 0 {
            p.cmdline =
                proc_read(&format!("{proc}/cmdline"), CMDLINE_MAX).map(|v| strings.bytes(&v));
        }
        if want & attach::CGROUP != 0 {
            p.cgroup = proc_text(&format!("{proc}/cgroup"))
                .and_then(|c| proc_cgroup_path(&c).map(|p| strings.str(p)));
        }
        if want & (attach::AUXGROUPS | attach::CAPS) != 0 {
            let status = proc_text(&format!("{proc}/status")).unwrap_or_default();
            let field = |name: &str| status_field(&status, name);
            if want & attach::AUXGROUPS != 0 {
                p.groups = field("Groups:").map(|g| strings.bytes(&groups_item(g)));
            }
            if want & attach::CAPS != 0 {
                p.caps = proc_caps(&field).map(|c| strings.bytes(&c));
            }
        }
        if pid == peer.creds.pid && !self.still_there(peer, pid) {
            return None;
        }
        Some(p)
    }

    /// From the connection's socket, where it is still open.
    fn pidfd(&self, peer: &Peer) -> Option<rustix::fd::OwnedFd> {
        let socket = peer.socket.as_ref()?.upgrade()?;
        crate::sys::peer_pidfd(socket.as_fd()).ok().flatten()
    }

    /// Read late, the facts must be those of the process that connected: read by
    /// the pid its socket names, and kept only if its pidfd says it is still there
    /// afterwards; if it is gone, or nothing can vouch, they stay absent.
    fn fill_deferred(&self, peer: &mut Peer) {
        peer.deferred = false;
        let Some(pid) = self.connector(peer) else {
            return;
        };
        let mut late = Peer::default();
        read_other_facts(&mut late, pid, &mut self.strings.borrow_mut());
        if self.still_there(peer, pid) {
            peer.comm = late.comm;
            peer.cmdline = late.cmdline;
            peer.cgroup = late.cgroup;
            peer.audit = late.audit;
        }
    }
}

impl ProcNow {
    /// The pid of the process that connected `peer`'s socket (the kernel's record;
    /// a client's Hello may come from another process), while the socket is open.
    fn connector(&self, peer: &Peer) -> Option<u32> {
        let socket = peer.socket.as_ref()?.upgrade()?;
        let cred = rustix::net::sockopt::socket_peercred(socket.as_fd()).ok()?;
        Some(cred.pid.as_raw_nonzero().get() as u32)
    }

    /// Whether what was just read of `pid` was read of the process that connected
    /// `peer`: its pidfd (taken from the socket, so of the connecting process) must
    /// name `pid` and still be there. A peer with no socket (the bus's creator) or a
    /// kernel without pidfds of socket peers cannot be checked: true, as before
    /// pidfds. A Hello from another process than the one that connected leaves
    /// the pidfd unable to vouch for it: true as well, like a forked child sending
    /// on its parent's connection (`docs/abi.md`).
    fn still_there(&self, peer: &Peer, pid: u32) -> bool {
        let Some(socket) = peer.socket.as_ref() else {
            return true;
        };
        let Some(socket) = socket.upgrade() else {
            return false;
        };
        let connector = rustix::net::sockopt::socket_peercred(socket.as_fd())
            .map(|c| c.pid.as_raw_nonzero().get() as u32);
        if connector.ok() != Some(pid) {
            return true;
        }
        if let Some(fd) = peer.pidfd.as_ref().and_then(|f| f.first()) {
            return crate::sys::pidfd_alive(fd.as_fd());
        }
        match crate::sys::peer_pidfd(socket.as_fd()) {
            Ok(Some(fd)) => crate::sys::pidfd_alive(fd.as_fd()),
            Ok(None) => true,
            Err(()) => false,
        }
    }
}

/// The most of a command line kept (the rest is cut off).
const CMDLINE_MAX: usize = 4096;
/// The most read of any other `/proc` file (a status is about 1.5 KiB).
const PROC_FILE_MAX: usize = 64 * 1024;

/// A `/proc` file's contents, up to `max` bytes: usually one `read` (a short read is
/// the end: `/proc` fills what it is asked for), where `std::fs::read` stats the file
/// (which says 0 bytes) and reads in growing steps. Every connection costs a few of
/// these.
fn proc_read(path: &str, max: usize) -> Option<Vec<u8>> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < max {
        let want = (max - out.len()).min(buf.len());
        let n = match rustix::io::read(&fd, &mut buf[..want]) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return None,
        };
        out.extend_from_slice(&buf[..n]);
        if n < want {
            break;
        }
    }
    Some(out)
}

/// [`proc_read`] of a text file.
fn proc_text(path: &str) -> Option<String> {
    String::from_utf8(proc_read(path, PROC_FILE_MAX)?).ok()
}

/// The value of a `/proc/PID/status` line `name` (`"Groups:"`, `"CapEff:"`, ...).
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

/// The `AUXGROUPS` payload (one u64 each) of a `/proc/PID/status` `Groups:` line.
fn groups_item(line: &str) -> Vec<u8> {
    line.split_whitespace()
        .filter_map(|x| x.parse::<u64>().ok())
        .flat_map(u64::to_ne_bytes)
        .collect()
}

/// The unified hierarchy's path (`0::PATH`), else the first hierarchy's.
fn proc_cgroup_path(c: &str) -> Option<&str> {
    c.lines()
        .find(|l| l.starts_with("0::"))
        .or_else(|| c.lines().next())
        .and_then(|l| l.splitn(3, ':').nth(2))
}

/// `struct kdbus_caps` from the four capability sets of `/proc/PID/status`.
fn proc_caps<'a>(field: &impl Fn(&str) -> Option<&'a str>) -> Option<Vec<u8>> {
    // The kernel's, which does not change while it runs.
    static LAST_CAP: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    let last_cap = (*LAST_CAP.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()?
            .trim()
            .parse()
            .ok()
    }))?;
    let valid = if last_cap >= 63 {
        !0u64
    } else {
        (1u64 << (last_cap + 1)) - 1
    };
    let mut out = last_cap.to_ne_bytes().to_vec();
    for name in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:"] {
        let set = u64::from_str_radix(field(name)?, 16).ok()? & valid;
        out.extend_from_slice(&(set as u32).to_ne_bytes());
        out.extend_from_slice(&((set >> 32) as u32).to_ne_bytes());
    }
    Some(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_strings_are_shared_and_swept() {
        let mut t = ProcStrings::default();
        let a = t.str("kdbusctl");
        let b = t.str("kdbusctl");
        assert!(Arc::ptr_eq(&a, &b));
        let c = t.bytes(b"x\0y");
        assert!(Arc::ptr_eq(&c, &t.bytes(b"x\0y")));
        drop((a, b, c));
        // Unused entries go at the next sweep; used ones stay.
        let keep = t.str("keep");
        for i in 0..1000 {
            drop(t.str(&format!("s{i}")));
        }
        assert!(t.strs.len() + t.bytes.len() < 200, "{}", t.strs.len());
        assert!(Arc::ptr_eq(&keep, &t.str("keep")));
    }
}
