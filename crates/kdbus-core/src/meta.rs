//! Who is on the other end of a socket: what the kernel told the broker.
//!
//! `Peer` is taken when a client connects (`SO_PEERCRED` plus `/proc`), `Creds` with every
//! datagram (`SCM_CREDENTIALS`). Neither is ever read from a field a client filled in.
//! What a process may change about itself while connected (its name, its program, its
//! arguments) is read again when a message is sent, for the receivers that ask for it,
//! through [`ProcFacts`], which the broker implements (`/proc`, checked with the
//! sender's pidfd) and the core's tests and fuzzers do without.

use std::sync::Arc;

/// Credentials of one datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Creds {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A connecting process, as seen at connect time.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    pub creds: Creds,
    /// Holds CAP_IPC_OWNER (or is root): may create special connections, skips user limits.
    pub privileged: bool,
    pub comm: Option<Arc<str>>,
    pub exe: Option<Arc<str>>,
    /// NUL-separated argv, as `/proc/PID/cmdline` has it.
    pub cmdline: Option<Arc<[u8]>>,
    /// A pidfd of the process that connected (`SO_PEERPIDFD`), where the kernel gives
    /// one: D-Bus `GetConnectionCredentials` hands out copies as `ProcessFD`.
    pub pidfd: Option<crate::ids::Files>,
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
}

/// The process behind a message, as it is when the message is sent.
pub trait ProcFacts {
    /// `peer` with the items of `want` (`PID_COMM`, `TID_COMM`, `EXE`, `CMDLINE`) as
    /// the sending process `pid` shows them now; `None`: keep what was taken when the
    /// connection was made (the reader has nothing newer, or could not be sure the
    /// process is still the one that sent).
    fn proc_now(&self, peer: &Peer, pid: u32, want: u64) -> Option<Peer>;
}

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
    | kdbus_abi::attach::CMDLINE;
