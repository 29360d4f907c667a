//! The kdbus bus model, as pure logic.
//!
//! Everything kdbus decides (who may talk to whom, where a message goes, which errno a
//! command gets, when a reply times out) is decided here, once, without syscalls: the
//! broker feeds commands in and carries the results out. Time comes from a [`Clock`],
//! pool memory from [`PoolMemory`], so tests drive the whole bus in memory.

pub mod bus;
pub mod clock;
pub mod conn;
pub mod dbus;
pub mod domain;
pub mod files;
pub mod matches;
pub mod memory;
pub mod message;
pub mod meta;
pub mod names;
pub mod pool;
pub mod queue;
pub mod reply;
pub mod stream_quota;

pub use clock::{Clock, ManualClock, Now};
pub use domain::{BusKey, ConnKey, Domain, SendOutcome};
pub use files::{FdInspector, FdKind};
pub use kdbus_abi::Errno;
pub use memory::{PoolMemory, VecPool};
pub use meta::{Creds, Peer};
