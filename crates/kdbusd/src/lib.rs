//! kdbusd: the kdbus broker. See [`broker`] for the model.

pub mod broker;
mod dbus_front;
mod peer;
mod sys;

pub use broker::{Broker, Config, Ready};

/// The runtime directory kdbusd uses when none is given (see
/// [`kdbus_abi::paths::default_runtime_dir`]).
pub fn default_runtime_dir() -> std::path::PathBuf {
    kdbus_abi::paths::default_runtime_dir(rustix::process::getuid().as_raw())
}
