//! kdbusd: the kdbus broker. See [`broker`] for the model.

pub mod broker;
pub mod config;
mod dbus_front;
mod params;
mod peer;
mod sys;

pub use broker::{Broker, Config, Ready};

/// Write to a file descriptor named on the command line.
pub fn sys_write_fd(fd: i32, bytes: &[u8]) -> std::io::Result<()> {
    sys::write_raw_fd(fd, bytes)
}

/// Detach from the terminal's streams (after `--fork` and printing the address).
pub fn sys_detach_stdio() -> std::io::Result<()> {
    sys::detach_stdio()
}

/// The runtime directory kdbusd uses when none is given (see
/// [`kdbus_abi::paths::default_runtime_dir`]).
pub fn default_runtime_dir() -> std::path::PathBuf {
    kdbus_abi::paths::default_runtime_dir(rustix::process::getuid().as_raw())
}
