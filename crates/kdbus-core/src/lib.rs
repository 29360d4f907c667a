//! The kdbus bus model, as pure logic.
//!
//! Everything kdbus decides (who may talk to whom, where a message goes, which errno a
//! command gets, when a reply times out) is decided here, once, without syscalls: the
//! broker feeds commands in and carries the results out. Time comes from a [`Clock`],
//! pool memory from [`PoolMemory`], so tests drive the whole bus in memory.
//!
//! The core knows kdbus only. Receivers that speak another protocol on a stream (D-Bus
//! clients) plug in through [`sink::StreamPeer`]; the D-Bus personality is the
//! `kdbus-bridge` crate above this one.
//!
//! Modules, from the leaves up: `ids`, `clock`, `memory`, `meta`, `files`, `pool`,
//! `queue`, `names`, `matches`, `reply`, `message`, `outbox`, `sink`, `bus`, `conn`;
//! then `domain` (the state) and the command modules that act on it (see `domain`).
#![forbid(unsafe_code)]

pub mod bus;
pub mod clock;
pub mod conn;
pub mod domain;
pub mod files;
pub mod handle;
pub mod ids;
pub mod matches;
pub mod memory;
pub mod message;
pub mod meta;
pub mod msgpolicy;
pub mod names;
pub mod outbox;
pub mod policy;
pub mod pool;
pub mod queue;
pub mod reply;
pub mod sink;

mod deliver;
mod endpoints;
mod info;
mod lifecycle;
mod matching;
mod msgcheck;
mod naming;
mod notify;
mod recv;
mod replies;
mod send;

pub use clock::{Clock, ManualClock, Now};
pub use domain::USER_MAX_MATCHES;
pub use domain::{Domain, SendOutcome, UserLimits};
pub use files::{FdInspector, FdKind, FdLedger, FdSlip};
pub use ids::{BusKey, ConnKey, FileSet, Files, OutFiles};
pub use kdbus_abi::Errno;
pub use memory::{PoolMemory, VecPool};
pub use meta::{Creds, Peer};

/// Internal invariant failures so far (see [`bug!`]): a broker can report them, and a
/// test can assert there were none.
pub static BUGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// An internal invariant failed: the core's own state disagrees with itself. Logged
/// with where it happened, counted in [`BUGS`], and fatal in debug builds; never
/// silently dropped. The command goes on as well as it can.
#[macro_export]
#[doc(hidden)]
macro_rules! bug {
    ($err:expr, $what:literal) => {{
        $crate::BUGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(error = ?$err, file = file!(), line = line!(), $what);
        debug_assert!(false, $what);
    }};
}
