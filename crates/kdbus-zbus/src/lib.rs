//! zbus over kdbus's native transport: an existing zbus service or client runs on a
//! kdbus bus's native socket, and gets what native clients get (a receive pool the
//! broker writes into, one copy per message, no byte stream to parse).
//!
//! ```no_run
//! # async fn f() -> zbus::Result<()> {
//! let conn = kdbus_zbus::connect("/run/kdbus/0-user/bus").await?;
//! let reply = conn
//!     .call_method(Some("org.example.Echo"), "/org/example/Echo", None::<&str>, "Echo", &("hi",))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! ## The model
//! On a kdbus bus a D-Bus message travels whole as the payload of a kdbus message
//! (payload type `DBusDBus`, `docs/abi.md`), with its D-Bus serial as the kdbus cookie:
//! that is how the broker's D-Bus peers and native clients already talk. zbus speaks
//! D-Bus to a socket it believes is a message bus; [`KdbusSocket`] is that socket. Going
//! out, each message zbus writes becomes one kdbus message: a unicast to the unique id
//! or well-known name of its destination, or a broadcast carrying the bloom filter of
//! its header and arguments. Coming in, each kdbus message with a D-Bus payload is the
//! D-Bus message zbus reads, its sender set to the unique name the broker vouches for.
//!
//! What kdbus has no messages for, the socket does itself, as sd-bus did for the
//! kernel's kdbus (`driver`): there is no `org.freedesktop.DBus` to talk to on the native
//! transport, so `Hello`, `RequestName`, `AddMatch` and the other driver calls zbus
//! makes become kdbus commands (the connection's id, `NAME_ACQUIRE`, `MATCH_ADD` with a
//! bloom mask), and the bus's notifications (names and connections coming and going,
//! replies that will not come) become the driver's signals and errors (`inbound`).
//!
//! ## Limits
//! - The runtime is async-io's reactor (zbus's default); zbus built for tokio alone is
//!   not served.
//! - A driver call is answered by a message the connection sends itself, one broker
//!   round trip more than on a D-Bus socket; only set-up calls go to the driver.
//! - Rules with `sender='org.freedesktop.DBus'` subscribe to every name and connection
//!   change on the bus (zbus filters them further); the D-Bus driver's other methods
//!   answer `org.freedesktop.DBus.Error.NotSupported`.

mod driver;
mod inbound;
mod shared;
mod socket;

pub use socket::KdbusSocket;

use std::path::Path;

/// A zbus connection builder for the kdbus bus whose endpoint is `bus` (e.g.
/// `/run/kdbus/0-user/bus`): add `serve_at`, `name` and the rest, then `build`.
pub fn builder(bus: impl AsRef<Path>) -> zbus::Result<zbus::connection::Builder<'static>> {
    Ok(zbus::connection::Builder::socket(KdbusSocket::hello(
        bus.as_ref(),
    )?))
}

/// A zbus connection to the kdbus bus whose endpoint is `bus`.
pub async fn connect(bus: impl AsRef<Path>) -> zbus::Result<zbus::Connection> {
    builder(bus)?.build().await
}
