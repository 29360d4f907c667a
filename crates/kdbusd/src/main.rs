//! `kdbusd`: serve kdbus buses on unix sockets.
//!
//! Two ways to start it:
//! - as itself: `kdbusd [--runtime-dir DIR] [--bus NAME]...` serves native kdbus buses
//!   (each also has a D-Bus socket) and prints one ready line;
//! - as dbus-daemon: `kdbusd --session | --system | --config-file=FILE [--address=A]
//!   [--print-address[=FD]] [--print-pid[=FD]] [--nofork|--fork] ...` reads dbus-daemon's
//!   configuration, listens where it says, and prints what dbus-daemon prints.

use clap::Parser;
use kdbusd::config::{parse_listen, BusConfig};
use kdbusd::{default_runtime_dir, Config, Server};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

mod cli;
use cli::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or(args.log.clone());
    // The configuration is read once: for where logs go, and for the bus.
    let config = config_path_of(&args).map(|p| BusConfig::load(&p).map(|c| (p, c)));
    let loaded = config
        .as_ref()
        .and_then(|r| r.as_ref().ok())
        .map(|(_, c)| c);
    logging_init(&args, filter, loaded);
    if let Some(config) = &args.activation_launcher {
        return match kdbusd::launcher_serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kdbusd activation launcher: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(args, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kdbusd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where logs go: standard error (coloured only on a terminal) unless
/// `--syslog-only`, and the system log too with `--syslog`, `--syslog-only` or the
/// configuration's `<syslog/>` (unless `--nosyslog`), as dbus-daemon decides. Under
/// systemd, whose `JOURNAL_STREAM` names our standard error, what would go there goes
/// to the journal instead, as structured entries with their levels.
fn logging_init(args: &Args, filter: String, config: Option<&BusConfig>) {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let conf_says = config.is_some_and(|c| c.syslog);
    let to_syslog = args.syslog || args.syslog_only || (conf_says && !args.nosyslog);
    let journal = (!args.syslog_only && stderr_is_journal())
        .then(|| tracing_journald::layer().ok())
        .flatten()
        .map(|l| l.with_syslog_identifier("kdbusd".into()));
    let stderr = (!args.syslog_only && journal.is_none()).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });
    let syslog = to_syslog.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(kdbusd::syslog::Syslog::open())
            .with_ansi(false)
            .without_time()
    });
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(filter))
        .with(stderr)
        .with(journal)
        .with(syslog)
        .init();
}

/// Whether standard error is the journal's stream: `JOURNAL_STREAM` (`DEV:INODE`, set
/// by systemd) names the very file our fd 2 is (a child that inherited the variable
/// but not the stream must not log to the journal behind its caller's back).
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(st) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// The dbus-daemon configuration file the command line names, if any.
fn config_path_of(args: &Args) -> Option<PathBuf> {
    match (&args.config_file, args.session, args.system) {
        (Some(p), _, _) => Some(p.clone()),
        (None, true, _) => Some(PathBuf::from("/usr/share/dbus-1/session.conf")),
        (None, _, true) => Some(PathBuf::from("/usr/share/dbus-1/system.conf")),
        _ => None,
    }
}

/// The per-user totals: the defaults, and what the command line changes.
fn user_limits(args: &Args) -> kdbus_core::UserLimits {
    let d = kdbus_core::UserLimits::default();
    kdbus_core::UserLimits {
        pool_bytes: args.user_pool_bytes.unwrap_or(d.pool_bytes),
        matches: args.user_matches.unwrap_or(d.matches),
        match_bytes: args.user_match_bytes.unwrap_or(d.match_bytes),
    }
}

/// Descriptors a privileged broker raises its limit to (dbus-daemon's figure as root):
/// a native connection costs three (socket, pidfd, pool), and a system bus of ten
/// thousand connections must not run out.
const PRIVILEGED_FD_LIMIT: u64 = 65536;

/// Every connection costs the broker a descriptor or two (its socket, the peer's
/// pidfd): take the hard limit, as dbus-daemon and dbus-broker do, rather than the
/// customary soft 1024; and where privileged, raise the hard limit to
/// [`PRIVILEGED_FD_LIMIT`] first, as dbus-daemon does as root.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let l = getrlimit(Resource::Nofile);
    let hard = l.maximum.unwrap_or(u64::MAX);
    if hard < PRIVILEGED_FD_LIMIT {
        let more = Rlimit {
            current: Some(PRIVILEGED_FD_LIMIT),
            maximum: Some(PRIVILEGED_FD_LIMIT),
        };
        if setrlimit(Resource::Nofile, more).is_ok() {
            return;
        }
    }
    if l.current < l.maximum {
        let l = Rlimit {
            current: l.maximum,
            ..l
        };
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::debug!(%e, "could not raise the descriptor limit");
        }
    }
}

/// The user a configuration's `<user>` names, if the broker is to become it: `None`
/// when there is none or it is the broker's user already; an error when it does not
/// exist or the broker, not root, cannot become it (dbus-daemon fails the same way).
fn run_as_of(c: Option<&BusConfig>) -> Result<Option<(u32, u32)>, String> {
    let Some(user) = c.and_then(|c| c.user.as_deref()) else {
        return Ok(None);
    };
    let (uid, gid) =
        kdbusd::sys_user_lookup(user).ok_or_else(|| format!("<user>: no user {user}"))?;
    let me = rustix::process::geteuid().as_raw();
    if uid == me {
        Ok(None)
    } else if me == 0 {
        Ok(Some((uid, gid)))
    } else {
        Err(format!("<user>: cannot become {user} without being root"))
    }
}

/// Hand what the broker made as root to the user it becomes, then become it: the
/// runtime directory (so that endpoints and domains can still be made) and no way
/// back to root.
fn become_user(runtime_dirs: &[PathBuf], uid: u32, gid: u32) -> std::io::Result<()> {
    let ids = (
        Some(rustix::process::Uid::from_raw(uid)),
        Some(rustix::process::Gid::from_raw(gid)),
    );
    let mut dirs = runtime_dirs.to_vec();
    while let Some(d) = dirs.pop() {
        rustix::fs::chown(&d, ids.0, ids.1)?;
        for e in std::fs::read_dir(&d)?.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
    }
    kdbusd::sys_drop_privileges(uid, gid)?;
    tracing::info!(uid, gid, "dropped privileges to the configured <user>");
    Ok(())
}

/// Serve as the command line says; `config` is the dbus-daemon configuration it
/// names, as it loaded (or why not).
fn run(
    args: Args,
    config: Option<Result<(PathBuf, BusConfig), kdbusd::config::ConfigError>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let daemon_mode = args.session || args.system || args.config_file.is_some();
    // Everything is checked before anything is bound.
    let (config_path, bus_config) = match config.transpose()? {
        Some((p, c)) => (Some(p), Some(c)),
        None => (None, None),
    };
    let run_as = run_as_of(bus_config.as_ref())?;
    // Bus names carry the uid of the user the broker serves as.
    let uid = run_as.map_or(rustix::process::getuid().as_raw(), |(u, _)| u);
    let prefix = format!("{uid}-");
    let listen = match (&args.address, &bus_config) {
        (Some(a), _) => parse_listen(a).map_err(|e| format!("--address: {e}"))?,
        (None, Some(c)) => {
            let all = c.listen.join(";");
            if all.is_empty() {
                return Err("the configuration has no <listen> address".into());
            }
            parse_listen(&all)?
        }
        (None, None) => Vec::new(),
    };
    let mut buses: Vec<String> = args
        .buses
        .iter()
        .map(|b| {
            if b.starts_with(&prefix) {
                b.clone()
            } else {
                format!("{prefix}{b}")
            }
        })
        .collect();
    let runtime_dir = match (args.runtime_dir.first(), daemon_mode) {
        (Some(d), _) => d.clone(),
        // As dbus-daemon, keep native sockets private to this instance, so that any
        // number of them (tests, GTestDBus) can run beside a real kdbusd.
        (None, true) => {
            let tmp = std::env::temp_dir();
            sweep_private_dirs(&tmp);
            tmp.join(format!("kdbusd-{}", std::process::id()))
        }
        (None, false) => default_runtime_dir(),
    };
    if buses.is_empty() {
        let kind = bus_config.as_ref().and_then(|c| c.bus_type.clone());
        buses.push(match kind {
            Some(t) if daemon_mode => format!("{prefix}{t}"),
            _ => kdbus_abi::paths::default_bus_name(uid),
        });
    }
    let fork = args.fork || (bus_config.as_ref().is_some_and(|c| c.fork) && !args.nofork);
    let cfg = Config {
        runtime_dir,
        buses,
        dbus_listen: listen,
        dbus_admission: bus_config.as_ref().map(BusConfig::admission),
        msg_policy: bus_config.as_ref().map(BusConfig::msg_policy),
        config_file: config_path.clone(),
        limits: bus_config.as_ref().map(kdbusd::Limits::of),
        user_limits: user_limits(&args),
        systemd_activation: args.systemd_activation,
        run_as,
        busy_poll_ns: args.busy_poll_us.saturating_mul(1000),
    };
    if daemon_mode && fork && args.ready_fd.is_none() {
        // Run a fresh copy of ourselves in a new session and wait until it serves. (A
        // forked copy would not do: signalfd wake-ups registered with epoll belong to
        // the process that registered them.)
        return background_copy();
    }
    if args.ready_fd.is_some() && !bus_config.as_ref().is_some_and(|c| c.keep_umask) {
        // The forked bus, as dbus-daemon's: a known umask unless <keep_umask/>.
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    }
    raise_fd_limit();
    let mut configs = vec![cfg.clone()];
    for dir in args.runtime_dir.iter().skip(1) {
        configs.push(Config {
            runtime_dir: dir.clone(),
            buses: cfg.buses.clone(),
            dbus_listen: Vec::new(),
            dbus_admission: None,
            msg_policy: None,
            config_file: None,
            limits: None,
            user_limits: cfg.user_limits,
            systemd_activation: false,
            run_as,
            busy_poll_ns: cfg.busy_poll_ns,
        });
    }
    let (mut server, readies) = Server::new(configs)?;
    let ready = readies.first().ok_or("no domain")?;

    if daemon_mode {
        let address = ready.dbus_listen.join(";");
        if let (Some(p), false) = (
            bus_config.as_ref().and_then(|c| c.pidfile.clone()),
            args.nopidfile,
        ) {
            std::fs::write(&p, format!("{}\n", std::process::id()))
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
        // Bound, pid file written: now the configured user (dbus-daemon's order),
        // leaving behind, as root, only the launcher of services' `User=`. The
        // address is printed after, so that whoever waits for it finds the bus as it
        // will stay.
        if let Some((uid, gid)) = run_as {
            if let Some(b) = server.first_broker() {
                b.activation_launcher_start()?;
            }
            let dirs = match args.runtime_dir.is_empty() {
                true => vec![cfg.runtime_dir.clone()],
                false => args.runtime_dir.clone(),
            };
            become_user(&dirs, uid, gid).map_err(|e| format!("<user>: {e}"))?;
        }
        if let Some(fd) = args.print_address {
            write_fd(fd, &format!("{address}\n"))?;
        }
        if let Some(fd) = args.print_pid {
            write_fd(fd, &format!("{}\n", std::process::id()))?;
        }
        // Readers of these fds wait for end-of-file (dbus-run-session does).
        let mut printed: Vec<i32> = [args.print_address, args.print_pid]
            .into_iter()
            .flatten()
            .collect();
        printed.sort_unstable();
        printed.dedup();
        printed.into_iter().for_each(kdbusd::sys_close_fd);
        if let Some(fd) = args.ready_fd {
            kdbusd::sys_detach_stdio()?;
            kdbusd::sys_write_fd(fd, b"1")?;
        }
        tracing::info!(%address, "listening as dbus-daemon");
    } else {
        // One line per domain, the first domain's first, in one write: a reader that
        // takes the first line and closes the pipe must not cost us the others (nor,
        // with EPIPE, the broker).
        let mut text = String::new();
        for ready in &readies {
            let buses: Vec<String> = ready
                .buses
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            text.push_str(&format!(
                "kdbusd ready: control={} bus={} dbus={}\n",
                ready.control.display(),
                buses.join(","),
                ready.dbus.join(";")
            ));
        }
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            tracing::debug!(%e, "the ready line was not read");
        }
    }
    // Serving: tell systemd (Type=notify), if it asked.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(%e, "could not tell systemd that the bus is ready");
    }
    server.run()?;
    Ok(())
}

/// Write to a file descriptor we were told about (dbus-daemon's `--print-*=FD`).
fn write_fd(fd: i32, text: &str) -> std::io::Result<()> {
    if fd == 1 {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        return out.flush();
    }
    kdbusd::sys_write_fd(fd, text.as_bytes())
}

/// `--fork`: start `kdbusd <same arguments> --ready-fd=N` detached, wait for its "ready"
/// byte (it prints the address and pid itself), and exit 0; exit 1 if it died first.
fn background_copy() -> Result<(), Box<dyn std::error::Error>> {
    let (r, w) = rustix::pipe::pipe()?;
    let w_raw = std::os::fd::AsRawFd::as_raw_fd(&w);
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--fork").collect();
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(&args)
        .arg("--nofork")
        .arg(format!("--ready-fd={w_raw}"));
    kdbusd::sys_detach_child(&mut cmd, w_raw);
    let child = cmd.spawn()?;
    drop(w);
    let mut b = [0u8; 1];
    let ok = matches!(rustix::io::read(&r, &mut b), Ok(1));
    drop(child);
    if ok {
        Ok(())
    } else {
        Err("the background broker did not start".into())
    }
}

/// Remove the private runtime directories (`kdbusd-<pid>` in `tmp`) that brokers of
/// ours left behind: those of processes that are gone, owned by us. A broker killed
/// outright (tests do that) cannot remove its own; without this they pile up in /tmp
/// by hundreds per test run. A live pid, even reused by another program, keeps its
/// directory.
fn sweep_private_dirs(tmp: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    let me = rustix::process::geteuid().as_raw();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("kdbusd-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = e.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me);
        if ours && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
