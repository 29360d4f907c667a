//! `libkdbus_preload.so`: programs written for the kdbus kernel ABI, run against
//! `kdbusd` with `LD_PRELOAD` and no other change.
//!
//! kdbus's users `open()` a node under the kdbus mount, `ioctl()` `KDBUS_CMD_*` on it,
//! `mmap()` the connection's pool and `poll()` it. Our broker serves the same node
//! layout as unix sockets and the same command structures as datagrams
//! (`docs/abi.md`). This library sits between the two:
//!
//! - [`sys`], the unsafe shell: the interposed libc symbols (`open`, `open64`,
//!   `openat`, `openat64` and their fortified forms, `ioctl`, `mmap`, `mmap64`, `poll`,
//!   `ppoll`, `close`), the real ones behind them, the caller's memory;
//! - [`os`], the other module with `unsafe`: the primitives the safe modules need
//!   (borrowing a caller's fd numbers, a socket we may give up without closing,
//!   signal dispositions, fork counting);
//! - [`table`]: which fds are ours;
//! - [`handle`]: one handle's role, transport and commands, RECV and poll semantics;
//! - [`translate`]: command structures in the caller's memory ⇄ requests and answers.
//!
//! An `open()` that fails with ENXIO (what the kernel says for a socket file) is the
//! cue: if the path is a unix socket (and under `$KDBUS_ROOT` when that is set), we
//! connect to it and hand back the socket's fd. Everything else goes straight to libc.

pub mod handle;
pub mod os;
pub mod sys;
pub mod table;
pub mod translate;
