//! The D-Bus wire protocol, as the broker's D-Bus front needs it: authentication
//! (SASL), message headers (parsed, validated, rewritten), a little marshalling for
//! the bus driver's own arguments, and match rules.
//!
//! Like dbus-broker's `src/dbus`, nothing here does I/O: the broker feeds bytes in and
//! writes what comes out. Payloads of messages between peers are never demarshalled;
//! only headers, calls to the bus itself and match-rule arguments are.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod bloom;
pub mod header;
pub mod marshal;
pub mod names;
pub mod rules;
pub mod sasl;

pub use header::{Header, HeaderError, MessageType};
