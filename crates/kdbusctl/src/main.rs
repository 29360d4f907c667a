//! `kdbusctl`: look at and talk to kdbus buses, busctl-style.

mod bench;

use clap::{Parser, Subcommand};
use kdbus::{abi, Connection, Control, HelloOptions, Message};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(version, about = "Inspect and use kdbus buses served by kdbusd")]
struct Cli {
    /// Bus endpoint (default: $KDBUS_BUS or <runtime>/<uid>-user/bus).
    #[arg(long, global = true, value_name = "PATH")]
    bus: Option<PathBuf>,
    /// kdbusd runtime directory (default: /run/kdbus for root, else $XDG_RUNTIME_DIR/kdbus).
    #[arg(long, global = true, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The bus: its id, bloom parameters, creator, connection count.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Connections on the bus.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Make a bus (`<uid>-` is prepended when missing); it lives until interrupted.
    MakeBus {
        name: String,
        /// Let every user connect (default: only you).
        #[arg(long)]
        world: bool,
    },
    /// Answer every call with its own payload (an echo service); prints its id.
    Serve,
    /// Call connection ID with DATA and print the answer.
    Call {
        id: u64,
        data: String,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Round trips per second through the broker, next to a raw socketpair.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kdbusctl: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn bus_path(cli: &Cli) -> PathBuf {
    if let Some(b) = &cli.bus {
        return b.clone();
    }
    match &cli.runtime_dir {
        Some(d) => d.join(format!("{}-user", uid())).join("bus"),
        None => kdbus::default_bus_path(),
    }
}

fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

fn connect(cli: &Cli) -> Res<Connection> {
    let path = bus_path(cli);
    Connection::hello(&path, &HelloOptions::new().description("kdbusctl"))
        .map_err(|e| format!("{}: {e}", path.display()).into())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn run(cli: Cli) -> Res {
    match &cli.cmd {
        Cmd::Status { json } => status(&cli, *json),
        Cmd::List { json } => list(&cli, *json),
        Cmd::MakeBus { name, world } => make_bus(&cli, name, *world),
        Cmd::Serve => serve(&cli),
        Cmd::Call {
            id,
            data,
            timeout_ms,
        } => {
            let c = connect(&cli)?;
            let r = c.call(
                Message::to(*id).cookie(1).payload(data.as_bytes()),
                Duration::from_millis(*timeout_ms),
            )?;
            println!("{}", String::from_utf8_lossy(&r.payload_bytes()));
            Ok(())
        }
        Cmd::Bench(args) => bench::run(&bus_path(&cli), args),
    }
}

fn status(cli: &Cli, as_json: bool) -> Res {
    let path = bus_path(cli);
    let c = connect(cli)?;
    let creator =
        c.bus_creator_info(abi::attach::CREDS | abi::attach::PIDS | abi::attach::PID_COMM)?;
    let conns = c.list(abi::list_flags::UNIQUE)?.len();
    let bloom = c.bloom();
    if as_json {
        let v = json!({
            "bus": path.display().to_string(),
            "bus_id": creator.id,
            "id128": hex(&c.bus_id128()),
            "bus_flags": c.bus_flags(),
            "bloom": {"size": bloom.size, "n_hash": bloom.n_hash},
            "creator": {"uid": creator.uid, "pid": creator.pid, "comm": creator.comm},
            "connections": conns,
            "my_id": c.id(),
        });
        println!("{v}");
    } else {
        println!("bus:         {}", path.display());
        println!("bus id:      {} ({})", creator.id, hex(&c.bus_id128()));
        println!("flags:       {:#x}", c.bus_flags());
        println!(
            "bloom:       {} bytes, {} hash functions",
            bloom.size, bloom.n_hash
        );
        println!(
            "creator:     uid {} pid {} ({})",
            creator.uid.map_or("?".into(), |u| u.to_string()),
            creator.pid.map_or("?".into(), |p| p.to_string()),
            creator.comm.as_deref().unwrap_or("?")
        );
        println!("connections: {conns} (including this one, id {})", c.id());
    }
    Ok(())
}

fn list(cli: &Cli, as_json: bool) -> Res {
    let c = connect(cli)?;
    let mut rows = Vec::new();
    for e in c.list(abi::list_flags::UNIQUE)? {
        let info = c
            .info(
                e.id,
                abi::attach::CREDS | abi::attach::PIDS | abi::attach::PID_COMM,
            )
            .unwrap_or(e.clone());
        rows.push((e, info));
    }
    if as_json {
        let v: Vec<_> = rows
            .iter()
            .map(|(e, i)| {
                json!({"id": e.id, "unique_name": format!(":1.{}", e.id), "flags": e.flags,
                       "description": e.description, "uid": i.uid, "pid": i.pid, "comm": i.comm})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        println!(
            "{:>6}  {:>7}  {:>6}  {:<16} DESCRIPTION",
            "ID", "PID", "UID", "COMM"
        );
        for (e, i) in rows {
            let opt = |v: Option<u64>| v.map_or("-".to_string(), |x| x.to_string());
            println!(
                "{:>6}  {:>7}  {:>6}  {:<16} {}",
                e.id,
                opt(i.pid),
                opt(i.uid),
                i.comm.as_deref().unwrap_or("-"),
                e.description.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

fn make_bus(cli: &Cli, name: &str, world: bool) -> Res {
    let prefix = format!("{}-", uid());
    let name = if name.starts_with(&prefix) {
        name.to_string()
    } else {
        format!("{prefix}{name}")
    };
    let dir = cli
        .runtime_dir
        .clone()
        .unwrap_or_else(kdbus::default_runtime_dir);
    let flags = if world {
        abi::make_flags::ACCESS_WORLD
    } else {
        0
    };
    let owner = Control::open(&dir)?.make_bus(
        &name,
        flags,
        abi::BloomParameter {
            size: 64,
            n_hash: 8,
        },
    )?;
    println!("{}", owner.endpoint.display());
    // The bus lives as long as this handle: wait until we are told to go.
    wait_for_signal();
    drop(owner);
    Ok(())
}

fn serve(cli: &Cli) -> Res {
    let c = connect(cli)?;
    println!("{}", c.id());
    serve_loop(&c)
}

/// The echo service: every message that expects a reply gets its payload back.
pub fn serve_loop(c: &Connection) -> Res {
    let mut buf = Vec::new();
    loop {
        let m = match c.recv_timeout(None) {
            Ok(m) => m,
            Err(e) if e.errno() == abi::Errno::ECONNRESET => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let (src, cookie, expects) = (m.src_id(), m.cookie(), m.expects_reply());
        buf.clear();
        for p in m.payload() {
            buf.extend_from_slice(p);
        }
        drop(m);
        if expects {
            if let Err(e) = c.send(&Message::to(src).reply_to(cookie).payload(&buf)) {
                eprintln!("kdbusctl serve: reply to {src}: {e}");
            }
        }
    }
}

/// Park until SIGINT/SIGTERM end the process: their default action is what we want
/// (the bus owner socket closes with us and the broker removes the bus).
fn wait_for_signal() {
    loop {
        std::thread::park();
    }
}
