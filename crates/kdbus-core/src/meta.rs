//! Who is on the other end of a socket: what the kernel told the broker.
//!
//! `Peer` is taken when a client connects (`SO_PEERCRED` plus `/proc`), `Creds` with every
//! datagram (`SCM_CREDENTIALS`). Neither is ever read from a field a client filled in.
//! What a process may change about itself while connected (its name, its program, its
//! arguments) is read again when a message is sent, for the receivers that ask for it,
//! through [`ProcFacts`], which the broker implements (`/proc`, checked with the
//! sender's pidfd) and the core's tests and fuzzers do without.
//!
//! A D-Bus client's facts from `/proc` that only metadata shows and that no one can
//! trust anyway (comm, cmdline, cgroup, audit ids; a process sets its comm and
//! cmdline itself) are not read when it connects: few D-Bus connections are ever
//! asked for them, and they were most of what reading a process cost per connection
//! set up. Such a `Peer` is marked [`Peer::deferred`], and the core has
//! [`ProcFacts::fill_deferred`] read them the first time a receiver or a CONN_INFO
//! wants one ([`DEFERRED_ITEMS`]), of the process that connected and checked with
//! its pidfd. Whatever decides something or says who the process is (ids,
//! capabilities, groups, namespaces, its program) is read at connect: an exec of a
//! setuid program later must not lend the connection its identity.

use std::sync::Arc;

/// Credentials of one datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Creds {
    /// The sending process, in the broker's pid namespace.
    pub pid: u32,
    /// Real uid, in the broker's user namespace: what policy and quotas go by.
    pub uid: u32,
    /// Real gid, in the broker's user namespace.
    pub gid: u32,
}

/// A connecting process, as seen at connect time.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    /// `SO_PEERCRED` at connect: whose connection it is (per-user counts, the bus's
    /// privileged user, CONN_INFO).
    pub creds: Creds,
    /// Holds CAP_IPC_OWNER (or is root): may create special connections, skips user limits.
    pub privileged: bool,
    /// `/proc/PID/comm`, sent as both PID_COMM and TID_COMM (the connecting thread is the
    /// only one known).
    pub comm: Option<Arc<str>>,
    /// Path of the executable (`/proc/PID/exe`), for EXE items.
    pub exe: Option<Arc<str>>,
    /// NUL-separated argv, as `/proc/PID/cmdline` has it.
    pub cmdline: Option<Arc<[u8]>>,
    /// A pidfd of the process that connected (`SO_PEERPIDFD`), where the kernel gives
    /// one: D-Bus `GetConnectionCredentials` hands out copies as `ProcessFD`, and a
    /// late look at `/proc` checks with it that the process is still the one that
    /// connected. Taken when first needed ([`ProcFacts::pidfd`], from `socket`) and
    /// charged to the connection's user: an idle connection costs the broker its
    /// socket alone.
    pub pidfd: Option<crate::ids::Files>,
    /// The broker's socket of the connection, to take its pidfd from when first
    /// needed. Weak: the broker's handle owns the socket, and a peer copied into a
    /// queued message must not keep it open.
    pub socket: Option<std::rc::Weak<std::os::fd::OwnedFd>>,
    /// The parent of the process that connected, as it was then (0: unknown).
    pub ppid: u32,
    /// Supplementary groups, as kdbus's `AUXGROUPS` payload (one u64 each).
    pub groups: Option<Arc<[u8]>>,
    /// The cgroup path.
    pub cgroup: Option<Arc<str>>,
    /// `struct kdbus_caps`: last_cap, then the inheritable, permitted, effective and
    /// bounding sets, two u32 words each.
    pub caps: Option<Arc<[u8]>>,
    /// Audit session id and login uid.
    pub audit: Option<(u32, u32)>,
    /// Its user and pid namespaces, where they are not the broker's (`None`: the
    /// broker's own; ids and pids need no translation).
    pub ns: Option<Arc<Namespaces>>,
    /// Real, effective, saved and filesystem uids, then gids, as `/proc` showed them
    /// when it connected (a datagram carries only the real ones); `None` when they
    /// are the real ones four times, as for almost every process (boxed: a
    /// connection's memory stays small).
    pub ids: Option<Box<[u32; 8]>>,
    /// What a privileged caller said at HELLO its messages are to show instead of
    /// its own (kdbus's faked metadata, for proxies that speak for others).
    pub faked: Option<Arc<Faked>>,
    /// comm, cmdline, cgroup and audit ids were not read at connect: they are read
    /// when first wanted (see the module docs). Never set for native connections.
    pub deferred: bool,
}

/// Metadata a privileged connection gave at HELLO (`CREDS`, `PIDS`, `SECLABEL` items):
/// its messages and its CONN_INFO carry these instead of what the kernel says.
/// Accounting and policy still go by who it really is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faked {
    /// uid, euid, suid, fsuid, gid, egid, sgid, fsgid.
    pub creds: Option<[u64; 8]>,
    /// pid, tid, ppid.
    pub pids: Option<[u64; 3]>,
    /// The security label for SECLABEL items; the only label the bus ever reports (LSM
    /// labels are not read).
    pub seclabel: Option<Arc<str>>,
}

/// A process's user and pid namespaces, seen from the broker's. Metadata a receiver
/// gets is translated into its namespaces (kdbus did it in the kernel): uids and gids
/// through its user namespace's maps (an id without a mapping is the overflow id,
/// 65534), pids into its pid namespace (a process it cannot see has pid 0), and
/// capabilities only between processes of one user namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespaces {
    /// The user namespace's inode, and whether it is the broker's.
    pub user_ns: u64,
    /// The user namespace is the broker's: uids and gids pass untranslated.
    pub user_home: bool,
    /// The pid namespace's inode, and whether it is the broker's.
    pub pid_ns: u64,
    /// The pid namespace is the broker's: pids pass untranslated.
    pub pid_home: bool,
    /// `/proc/PID/uid_map` and `gid_map` as the broker reads them: (first id inside,
    /// first id in the broker's namespace, count).
    pub uid_map: Vec<(u32, u32, u32)>,
    /// The same for gids.
    pub gid_map: Vec<(u32, u32, u32)>,
    /// Its pid and its parent's pid in its own pid namespace (0: the parent is not in
    /// it).
    pub own_pids: (u32, u32),
}

/// The id the overflow of a user namespace stands for (kdbus's `overflowuid`).
pub const OVERFLOW_ID: u32 = 65534;

impl Namespaces {
    /// `id` of the broker's namespace as this namespace names it.
    pub fn map_id(map: &[(u32, u32, u32)], id: u32) -> u32 {
        map.iter()
            .find(|(_, outside, count)| id >= *outside && id - outside < *count)
            .map_or(OVERFLOW_ID, |(inside, outside, _)| inside + (id - outside))
    }
}

/// Keys of a peer's user and pid namespaces (0: the broker's), which decide how
/// metadata is translated for it.
pub fn ns_keys(ns: Option<&Namespaces>) -> (u64, u64) {
    ns.map_or((0, 0), |n| {
        (
            if n.user_home { 0 } else { n.user_ns },
            if n.pid_home { 0 } else { n.pid_ns },
        )
    })
}

/// The process behind a message, as it is when the message is sent.
pub trait ProcFacts {
    /// `peer` with the items of `want` (those of [`PROC_NOW_ITEMS`]) as the sending
    /// process `pid` shows them now; `None`: keep what was taken when the
    /// connection was made (the reader has nothing newer, or could not be sure the
    /// process is still the one that sent).
    fn proc_now(&self, peer: &Peer, pid: u32, want: u64) -> Option<Peer>;

    /// Read the facts a [`Peer::deferred`] peer did not read at connect (those of
    /// [`DEFERRED_ITEMS`]) and clear the mark. A process that is gone leaves them
    /// absent. The default reads nothing.
    fn fill_deferred(&self, peer: &mut Peer) {
        peer.deferred = false;
    }

    /// A pidfd of the process that connected `peer`'s socket, as the kernel
    /// recorded it at connect; `None` if there is none to be had. The default has
    /// none.
    fn pidfd(&self, _peer: &Peer) -> Option<std::os::fd::OwnedFd> {
        None
    }
}

/// Make sure `peer` keeps its pidfd, if one is to be had: taken from its socket and
/// charged to its user in `ledger`. Returns it; `None` also when the user may hold no
/// more descriptors (a check then takes one from the socket for the moment:
/// [`ProcFacts`]).
pub(crate) fn peer_pidfd(
    facts: &dyn ProcFacts,
    ledger: Option<&std::rc::Rc<dyn crate::files::FdLedger>>,
    peer: &mut Peer,
) -> Option<crate::ids::Files> {
    if let Some(f) = &peer.pidfd {
        return Some(f.clone());
    }
    peer.socket.as_ref()?;
    let mut files = crate::ids::FileSet::shared(vec![facts.pidfd(peer)?]);
    let kept = match ledger {
        None => true,
        Some(l) => crate::files::FdSlip::take(l, peer.creds.uid, peer.privileged, 1)
            .is_some_and(|slip| crate::ids::FileSet::charge(&mut files, slip)),
    };
    kept.then(|| {
        peer.pidfd = Some(files.clone());
        files
    })
}

/// The items whose facts a D-Bus client's [`Peer`] may not have read at connect.
pub const DEFERRED_ITEMS: u64 = kdbus_abi::attach::PID_COMM
    | kdbus_abi::attach::TID_COMM
    | kdbus_abi::attach::CMDLINE
    | kdbus_abi::attach::CGROUP
    | kdbus_abi::attach::AUDIT;

/// Reads nothing: metadata stays as it was taken at connect.
pub struct NoProcFacts;

impl ProcFacts for NoProcFacts {
    fn proc_now(&self, _: &Peer, _: u32, _: u64) -> Option<Peer> {
        None
    }
}

/// The items [`ProcFacts`] reads again at each send.
pub const PROC_NOW_ITEMS: u64 = kdbus_abi::attach::PID_COMM
    | kdbus_abi::attach::TID_COMM
    | kdbus_abi::attach::EXE
    | kdbus_abi::attach::CMDLINE
    | kdbus_abi::attach::CGROUP
    | kdbus_abi::attach::AUXGROUPS
    | kdbus_abi::attach::CAPS;
