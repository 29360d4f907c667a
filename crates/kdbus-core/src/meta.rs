//! Who is on the other end of a socket: what the kernel told the broker.
//!
//! `Peer` is taken when a client connects (`SO_PEERCRED` plus `/proc`), `Creds` with every
//! datagram (`SCM_CREDENTIALS`). Neither is ever read from a field a client filled in.

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
