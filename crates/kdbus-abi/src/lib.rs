//! The kdbus wire format, shared by the broker, the client library and the tools.
//!
//! kdbus (2014) talked to the kernel through ioctls on character devices. We keep its
//! command structures, item layout, item type numbers and flag values (HEAD revision of
//! `gregkh/kdbus`), and replace the ioctl with a datagram on a `SOCK_SEQPACKET` socket:
//! see [`wire`] for the framing and `docs/abi.md` for every deviation from kdbus.
//!
//! Nothing here does I/O, and parsing never allocates: the broker parses commands in
//! place, in the buffer it read them into.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod consts;
pub mod encode;
pub mod errno;
pub mod items;
pub mod names;
pub mod paths;
pub mod structs;
pub mod wire;

pub use consts::*;
pub use errno::Errno;
pub use items::{Item, ItemIter, ItemWriter};
pub use structs::*;

/// Round up to the next multiple of eight, the alignment of every kdbus structure.
pub const fn align8(n: u64) -> u64 {
    (n + 7) & !7
}

/// [`align8`] for `usize` lengths.
pub const fn align8_usize(n: usize) -> usize {
    (n + 7) & !7
}
