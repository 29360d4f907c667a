//! Client library for kdbus buses served by `kdbusd`.
//!
//! A [`Connection`] is one `SOCK_SEQPACKET` socket to a bus endpoint plus a read-only
//! mapping of the receive pool the broker writes into. Commands are request datagrams
//! answered by reply records; messages arrive as event records naming a pool slice.
//!
//! Receiving never waits for the broker: the library keeps the announced messages in a
//! local queue, hands one out on [`Connection::recv`], and tells the broker it took it
//! ("claim") and later that its slice is free, both without waiting for an answer and
//! batched into the next datagram it writes anyway. That is what keeps a delivered
//! message at one read syscall on the receiving side.
//!
//! A `Connection` may be shared between threads: one thread at a time reads the
//! socket and files what it reads (replies by request id, messages in the queue) for
//! whoever waits for it.
//!
//! Sending is one copy: a message's payload goes to `sendmsg` as the caller's own
//! slices, gathered behind a header encoded into a buffer the connection keeps. Once
//! warm, a call, its receipt and its reply allocate nothing in this library.
//!
//! The modules depend on each other one way: `conn` (the command set) builds on
//! `link` (the shared socket: sending, reading, waiting), `received` (messages in the
//! pool), `info` (connection records) and `message` (encoding); `transport` (the
//! datagram syscalls) sits below all of them.

#![warn(missing_docs)]

pub mod asynchronous;
mod conn;
mod control;
mod error;
mod info;
mod link;
mod matches;
mod memfd;
mod message;
mod received;
mod sys;
pub mod transport;
mod typed;

#[cfg(feature = "async-io")]
pub use asynchronous::AsyncIo;
#[cfg(feature = "tokio")]
pub use asynchronous::Tokio;
pub use asynchronous::{AsyncConnection, Readiness};
pub use conn::{Connection, HelloOptions};
pub use control::{BusOwner, Control, DomainOwner, EndpointOwner, Grant};
pub use error::{Error, Result};
pub use info::ConnInfo;
pub use kdbus_abi as abi;
pub use kdbus_abi::Errno;
pub use kdbus_dbus as dbus;
/// sd-bus's bloom filter convention (from `kdbus-dbus`), for signals and matches.
pub use kdbus_dbus::bloom;
pub use matches::{MatchRule, ANY};
pub use memfd::{memfd_sealed, MemfdView};
pub use message::{payload_padding, Message, Payloads};
pub use received::Received;
pub use typed::DBusMethod;
/// `zvariant`, whose `Type` and serde types make typed D-Bus bodies.
pub use zvariant;

/// Default pool size, as sd-bus and the kdbus selftests use.
pub const DEFAULT_POOL_SIZE: u64 = 16 * 1024 * 1024;

/// CLOCK_MONOTONIC now, in ns (reply deadlines are absolute on this clock).
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The runtime directory kdbusd uses by default for this user.
pub fn default_runtime_dir() -> std::path::PathBuf {
    kdbus_abi::paths::default_runtime_dir(rustix::process::getuid().as_raw())
}

/// The default bus endpoint: `<runtime>/<uid>-user/bus`, or `$KDBUS_BUS` if set.
pub fn default_bus_path() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("KDBUS_BUS") {
        return p.into();
    }
    let uid = rustix::process::getuid().as_raw();
    default_runtime_dir()
        .join(format!("{uid}-user"))
        .join("bus")
}
