//! `kdbusd`: serve kdbus buses on unix sockets.

use clap::Parser;
use kdbusd::{default_runtime_dir, Broker, Config};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "The kdbus broker: buses, connections and receive pools over unix sockets"
)]
struct Args {
    /// Directory for the control socket and the bus directories.
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
    /// Serve this bus for the broker's lifetime (`<uid>-` is prepended when missing).
    /// Without any --bus, the default bus `<uid>-user` is served.
    #[arg(long = "bus", value_name = "NAME")]
    buses: Vec<String>,
    /// Log level filter (also read from RUST_LOG).
    #[arg(long, default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or(args.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let uid = rustix::process::getuid().as_raw();
    let prefix = format!("{uid}-");
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
    if buses.is_empty() {
        buses.push(kdbus_abi::paths::default_bus_name(uid));
    }
    let cfg = Config {
        runtime_dir: args.runtime_dir.unwrap_or_else(default_runtime_dir),
        buses,
    };
    let (mut broker, ready) = match Broker::new(cfg) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("kdbusd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let buses: Vec<String> = ready
        .buses
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "kdbusd ready: control={} bus={} dbus={}",
        ready.control.display(),
        buses.join(","),
        ready.dbus.join(";")
    );
    let _ = out.flush();
    drop(out);
    match broker.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kdbusd: {e}");
            ExitCode::FAILURE
        }
    }
}
