//! kdbusd: the kdbus broker. See [`broker`] for the model.

pub mod broker;
mod peer;
mod sys;

pub use broker::{Broker, Config, Ready};

/// The runtime directory kdbusd uses when none is given: `/run/kdbus` for root,
/// `$XDG_RUNTIME_DIR/kdbus` otherwise (falling back to `/tmp/kdbus-<uid>`).
pub fn default_runtime_dir() -> std::path::PathBuf {
    let uid = rustix::process::getuid().as_raw();
    if uid == 0 {
        return "/run/kdbus".into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => std::path::Path::new(&d).join("kdbus"),
        _ => format!("/tmp/kdbus-{uid}").into(),
    }
}
