//! `kdbusd`'s command line, on its own so that the build script can render it as a
//! man page (`build.rs`, with clap_mangen): nothing here may use the rest of the crate.

use clap::Parser;
use std::path::PathBuf;

const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (speaks D-Bus like D-Bus Message Bus Daemon 1.14)"
);

#[derive(Parser, Debug)]
#[command(version = VERSION, about = "The kdbus broker: buses, connections and receive pools over unix sockets")]
pub struct Args {
    /// Directory for the control socket and the bus directories: one domain. Given
    /// more than once, one domain each, fully separate (the buses are made in each;
    /// a configuration's D-Bus addresses belong to the first).
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Vec<PathBuf>,
    /// Serve this bus for the broker's lifetime (`<uid>-` is prepended when missing).
    /// Without any --bus, the default bus `<uid>-user` is served.
    #[arg(long = "bus", value_name = "NAME")]
    pub buses: Vec<String>,
    /// Receive-pool memory all the pools of one unprivileged user may touch, in bytes,
    /// per domain.
    #[arg(long, value_name = "BYTES")]
    pub user_pool_bytes: Option<u64>,
    /// Match rules all the connections of one unprivileged user may hold, per domain.
    #[arg(long, value_name = "N")]
    pub user_matches: Option<usize>,
    /// Bytes of match rules all the connections of one unprivileged user may hold,
    /// per domain.
    #[arg(long, value_name = "BYTES")]
    pub user_match_bytes: Option<usize>,
    /// Before sleeping, keep looking for work for up to this many microseconds, as
    /// long as recent sleeps were that short (0: sleep at once). Spares the cost of
    /// waking a sleeping CPU on a busy bus, most of all in virtual machines.
    #[arg(long, value_name = "US", default_value_t = 100)]
    pub busy_poll_us: u64,
    /// Log level filter (also read from RUST_LOG).
    #[arg(long, default_value = "info")]
    pub log: String,

    // ---- dbus-daemon's command line
    /// Use the standard session bus configuration.
    #[arg(long)]
    pub session: bool,
    /// Use the standard system bus configuration.
    #[arg(long)]
    pub system: bool,
    /// Use this dbus-daemon configuration file.
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Listen on this D-Bus address instead of the configured ones.
    #[arg(long, value_name = "ADDR")]
    pub address: Option<String>,
    /// Stay in the foreground (the default).
    #[arg(long)]
    pub nofork: bool,
    /// Go to the background once listening.
    #[arg(long, conflicts_with = "nofork")]
    pub fork: bool,
    /// Print the address clients should use, to stdout or to FD.
    #[arg(long, value_name = "FD", num_args = 0..=1, default_missing_value = "1")]
    pub print_address: Option<i32>,
    /// Print the broker's pid, to stdout or to FD.
    #[arg(long, value_name = "FD", num_args = 0..=1, default_missing_value = "1")]
    pub print_pid: Option<i32>,
    /// Do not write the configured pid file.
    #[arg(long)]
    pub nopidfile: bool,
    /// Internal: run as a system bus's activation launcher for this configuration
    /// file, serving the broker on stdin (see launcher.rs).
    #[arg(long, hide = true, value_name = "FILE")]
    pub activation_launcher: Option<PathBuf>,
    /// Internal: the pipe to report readiness on (used by --fork).
    #[arg(long, hide = true, value_name = "FD")]
    pub ready_fd: Option<i32>,
    /// Activation through systemd: services with `SystemdService=` are started by
    /// asking systemd (the `ActivationRequest` signal).
    #[arg(long)]
    pub systemd_activation: bool,
    /// Log to the system log too.
    #[arg(long)]
    pub syslog: bool,
    /// Do not log to the system log, whatever the configuration says.
    #[arg(long, conflicts_with_all = ["syslog", "syslog_only"])]
    pub nosyslog: bool,
    /// Log to the system log only.
    #[arg(long)]
    pub syslog_only: bool,
}
