//! Where brokers put their sockets, shared by the broker and its clients.

use std::path::{Path, PathBuf};

/// The runtime directory for a user: `/run/kdbus` for root, `$XDG_RUNTIME_DIR/kdbus`
/// otherwise (falling back to `/tmp/kdbus-<uid>` without one).
pub fn default_runtime_dir(uid: u32) -> PathBuf {
    if uid == 0 {
        return "/run/kdbus".into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => Path::new(&d).join("kdbus"),
        _ => format!("/tmp/kdbus-{uid}").into(),
    }
}

/// A user's default bus: `<uid>-user`.
pub fn default_bus_name(uid: u32) -> String {
    format!("{uid}-user")
}
