//! kdbusd: the kdbus broker. See [`broker`] for the model.
//!
//! The crate does I/O only; bus semantics and errno decisions are `kdbus_core`'s and
//! D-Bus's are `kdbus_bridge`'s. Its modules use each other in one direction, loop
//! first, leaves last, so each can be read without the ones above it:
//!
//! - `broker`: the glue: the loop, accepting, what a native handle may do, flushing,
//!   closing;
//! - `listener`: listening sockets and bus directories; `dispatch`: epoll and tokens;
//! - `seqpacket` (native clients, datagrams) and `dbus_socket` (D-Bus clients, a
//!   stream with SASL), both writing through `backlog`;
//! - `pool_memfd`, `clock`, `peer`, `params`, `config`: facts from the system;
//! - `sys`: the only module with `unsafe`.

mod activation;
pub mod admission;
mod backlog;
pub mod broker;
mod clock;
pub mod config;
mod config_watch;
mod dbus_socket;
mod dispatch;
mod large_read;
mod launcher;
pub mod limits;
mod listener;
mod params;
mod peer;
mod pool_memfd;
mod seqpacket;
pub mod server;
mod service_file;
mod sys;
pub mod syslog;

pub use broker::{Broker, Config, Ready};
pub use launcher::launcher_serve;
pub use limits::Limits;
pub use server::Server;

/// Write to a file descriptor named on the command line.
pub fn sys_write_fd(fd: i32, bytes: &[u8]) -> std::io::Result<()> {
    sys::write_raw_fd(fd, bytes)
}

/// Close an fd from the command line once done with it (`--print-address=FD`).
pub fn sys_close_fd(fd: i32) {
    sys::close_raw_fd(fd)
}

/// The uid and primary gid of the user `name` (NSS).
pub fn sys_user_lookup(name: &str) -> Option<(u32, u32)> {
    sys::user_lookup(name)
}

/// Become `uid`/`gid` for good, without supplementary groups (`<user>`).
pub fn sys_drop_privileges(uid: u32, gid: u32) -> std::io::Result<()> {
    sys::drop_privileges(uid, gid)
}

/// Detach from the terminal's streams (after `--fork` and printing the address).
pub fn sys_detach_stdio() -> std::io::Result<()> {
    sys::detach_stdio()
}

/// Make `cmd`'s child start a session of its own and inherit fd `keep` (`--fork`).
pub fn sys_detach_child(cmd: &mut std::process::Command, keep: i32) {
    sys::detach_child(cmd, keep)
}

/// The runtime directory kdbusd uses when none is given (see
/// [`kdbus_abi::paths::default_runtime_dir`]).
pub fn default_runtime_dir() -> std::path::PathBuf {
    kdbus_abi::paths::default_runtime_dir(rustix::process::getuid().as_raw())
}
