//! `kdbusctl`: look at and talk to kdbus buses, busctl-style.
#![forbid(unsafe_code)]

mod bench;
mod busctl;
mod cli;
mod pcapng;
mod top;

use clap::Parser;
use cli::{Cli, Cmd};
use kdbus::{abi, Connection, Control, HelloOptions, Message};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    quiet_broken_pipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&*e) && stdout_closed() => {
            // Our reader went away: see quiet_broken_pipe. (A broken pipe to a bus is an
            // error like any other.)
            ExitCode::from(141)
        }
        Err(e) => {
            eprintln!("kdbusctl: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Whether nobody reads our stdout any more (a pipe whose reader closed it).
fn stdout_closed() -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let out = std::io::stdout();
    let mut fds = [PollFd::new(&out, PollFlags::OUT)];
    let now = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    poll(&mut fds, Some(&now)).is_ok() && fds[0].revents().contains(PollFlags::ERR)
}

/// A reader that goes away (`kdbusctl monitor | head`) ends us as SIGPIPE ends C tools
/// (status 141), not with a panic. Rust ignores SIGPIPE, so `println!` panics on the
/// closed pipe instead; restoring the signal would take unsafe code, which this crate
/// does without, so that one panic is turned into the exit.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.starts_with("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

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

/// The runtime directory: `--runtime-dir`, or the default one.
fn runtime_dir(cli: &Cli) -> PathBuf {
    cli.runtime_dir
        .clone()
        .unwrap_or_else(kdbus::default_runtime_dir)
}

/// Make flags for `--world` (everyone may connect) or not (only its maker).
fn access_flags(world: bool) -> u64 {
    if world {
        abi::make_flags::ACCESS_WORLD
    } else {
        0
    }
}

/// `name` with the caller's `<uid>-` in front, unless it has it.
fn uid_prefixed(name: &str) -> String {
    let prefix = format!("{}-", uid());
    if name.starts_with(&prefix) {
        name.to_string()
    } else {
        format!("{prefix}{name}")
    }
}

fn connect(cli: &Cli) -> Res<Connection> {
    let path = bus_path(cli);
    Connection::hello(&path, &HelloOptions::new().description("kdbusctl"))
        .map_err(|e| format!("{}: {e}", path.display()).into())
}

/// A D-Bus call through `address`'s D-Bus socket, or the native bus.
fn dbus_via(
    cli: &Cli,
    address: Option<&str>,
    call: &busctl::Call<'_>,
    timeout: Duration,
) -> Res<(String, Vec<u8>, kdbus::dbus::marshal::Endian)> {
    match address {
        Some(a) => busctl::call(busctl::Via::DBus(a), call, timeout),
        None => {
            let c = connect(cli)?;
            busctl::call(busctl::Via::Native(&c), call, timeout)
        }
    }
}

/// The D-Bus address a D-Bus command goes to: the one it names, else the session or
/// system bus's with `--user` / `--system`, else none (the native bus).
fn resolve_address(cli: &Cli, explicit: Option<&str>) -> Option<String> {
    if let Some(a) = explicit {
        return Some(a.to_string());
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if cli.user {
        return env("DBUS_SESSION_BUS_ADDRESS")
            .or_else(|| env("XDG_RUNTIME_DIR").map(|d| format!("unix:path={d}/bus")));
    }
    if cli.system {
        return Some(
            env("DBUS_SYSTEM_BUS_ADDRESS")
                .unwrap_or_else(|| "unix:path=/run/dbus/system_bus_socket".to_string()),
        );
    }
    None
}

/// The D-Bus socket beside the native bus (`<bus dir>/dbus`).
fn beside(cli: &Cli) -> String {
    let bus = bus_path(cli);
    let dir = bus.parent().map(|d| d.join("dbus")).unwrap_or_default();
    format!("unix:path={}", dir.display())
}

/// Run `f` with a way to the bus: the D-Bus socket at `address`, or the native bus.
fn with_via(cli: &Cli, address: Option<&str>, f: impl FnOnce(busctl::Via<'_>) -> Res) -> Res {
    match address {
        Some(a) => f(busctl::Via::DBus(a)),
        None => {
            let c = connect(cli)?;
            f(busctl::Via::Native(&c))
        }
    }
}

/// A D-Bus call, its reply printed as busctl prints it (nothing for an empty one).
fn dbus_call_print(
    cli: &Cli,
    address: Option<&str>,
    call: &busctl::Call<'_>,
    timeout: Duration,
) -> Res {
    let (sig, body, endian) = dbus_via(cli, address, call, timeout)?;
    if !sig.is_empty() {
        println!("{}", busctl::format_body(&sig, &body, endian)?);
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn run(cli: Cli) -> Res {
    match &cli.cmd {
        Cmd::Status {
            name: None, json, ..
        } => status(&cli, *json),
        Cmd::Status {
            name: Some(name),
            json,
            address,
        } => {
            let a = resolve_address(&cli, address.as_deref()).unwrap_or_else(|| beside(&cli));
            busctl::status(&a, name, *json)
        }
        Cmd::Wait {
            path,
            interface,
            signal,
            address,
            timeout_ms,
        } => {
            let a = resolve_address(&cli, address.as_deref()).unwrap_or_else(|| beside(&cli));
            let timeout = timeout_ms.map(Duration::from_millis);
            busctl::wait(&a, path, interface, signal, timeout)
        }
        Cmd::List { json } => list(&cli, *json),
        Cmd::MakeBus { name, world } => make_bus(&cli, name, *world),
        Cmd::MakeDomain { name, world } => make_domain(&cli, name, *world),
        Cmd::MakeEndpoint {
            name,
            world,
            see,
            talk,
            own,
        } => make_endpoint(&cli, name, *world, [see, talk, own]),
        Cmd::Serve => serve(&cli),
        Cmd::Names { json } => names(&cli, *json),
        Cmd::Acquire {
            name,
            queue,
            replace,
            allow_replacement,
        } => {
            let mut flags = 0;
            if *queue {
                flags |= abi::name_flags::QUEUE;
            }
            if *replace {
                flags |= abi::name_flags::REPLACE_EXISTING;
            }
            if *allow_replacement {
                flags |= abi::name_flags::ALLOW_REPLACEMENT;
            }
            acquire(&cli, name, flags)
        }
        Cmd::Activator { name } => activator(&cli, name),
        Cmd::Call {
            dest,
            path,
            interface,
            method,
            args,
            address,
            timeout_ms,
        } => {
            let (sig, body) = busctl::marshal_words(args)?;
            let call = busctl::Call {
                dest,
                path,
                iface: interface,
                method,
                sig,
                body,
            };
            let a = resolve_address(&cli, address.as_deref());
            dbus_call_print(
                &cli,
                a.as_deref(),
                &call,
                Duration::from_millis(*timeout_ms),
            )
        }
        Cmd::GetProperty {
            dest,
            path,
            interface,
            property,
            address,
        } => {
            let args = [interface.clone(), property.clone()];
            let call = busctl::Call {
                dest,
                path,
                iface: "org.freedesktop.DBus.Properties",
                method: "Get",
                sig: "ss",
                body: busctl::marshal("ss", &args)?,
            };
            let a = resolve_address(&cli, address.as_deref());
            let (sig, body, endian) = dbus_via(&cli, a.as_deref(), &call, Duration::from_secs(5))?;
            if sig != "v" {
                return Err(format!("Get answered '{sig}', not a variant").into());
            }
            // busctl prints the variant's contents: its signature, then its value.
            let printed = busctl::format_body("v", &body, endian)?;
            println!("{}", printed.strip_prefix("v ").unwrap_or(&printed));
            Ok(())
        }
        Cmd::Tree {
            dest,
            list,
            address,
        } => with_via(
            &cli,
            resolve_address(&cli, address.as_deref()).as_deref(),
            |via| {
                let paths = busctl::tree(&|p| busctl::introspect_xml(via, dest, p))?;
                if *list {
                    for (p, _) in &paths {
                        println!("{p}");
                    }
                } else {
                    println!("{}", busctl::tree_drawing(&paths));
                }
                Ok(())
            },
        ),
        Cmd::Introspect {
            dest,
            path,
            address,
        } => with_via(
            &cli,
            resolve_address(&cli, address.as_deref()).as_deref(),
            |via| {
                let xml = busctl::introspect_xml(via, dest, path)?;
                let get_all = |iface: &str| {
                    let c = busctl::Call {
                        dest,
                        path,
                        iface: "org.freedesktop.DBus.Properties",
                        method: "GetAll",
                        sig: "s",
                        body: busctl::marshal("s", &[iface.to_string()])?,
                    };
                    let (_, body, endian) = busctl::call(via, &c, Duration::from_secs(5))?;
                    Ok((body, endian))
                };
                println!("{}", busctl::introspect_table(&xml, &get_all)?);
                Ok(())
            },
        ),
        Cmd::CallRaw {
            dest,
            data,
            timeout_ms,
        } => {
            let c = connect(&cli)?;
            let msg = match dest.parse::<u64>() {
                Ok(id) => Message::to(id),
                Err(_) => Message::to_name(dest),
            };
            let r = c.call(
                msg.cookie(1).payload(data.as_bytes()),
                Duration::from_millis(*timeout_ms),
            )?;
            println!("{}", String::from_utf8_lossy(&r.payload_bytes()));
            Ok(())
        }
        Cmd::Emit {
            path,
            interface,
            member,
            args,
            address,
        } => {
            let (sig, body) = busctl::marshal_words(args)?;
            let f = kdbus::dbus::header::Fields {
                path: Some(path),
                interface: Some(interface),
                member: Some(member),
                signature: sig,
                ..Default::default()
            };
            let a = resolve_address(&cli, address.as_deref());
            with_via(&cli, a.as_deref(), |via| busctl::emit(via, &f, &body))
        }
        Cmd::SetProperty {
            dest,
            path,
            interface,
            property,
            value,
            address,
        } => {
            let mut args = vec![interface.clone(), property.clone()];
            args.extend(value.iter().cloned());
            let call = busctl::Call {
                dest,
                path,
                iface: "org.freedesktop.DBus.Properties",
                method: "Set",
                sig: "ssv",
                body: busctl::marshal("ssv", &args)?,
            };
            let a = resolve_address(&cli, address.as_deref());
            dbus_via(&cli, a.as_deref(), &call, Duration::from_secs(5))?;
            Ok(())
        }
        Cmd::Capture { address, matches } => {
            let address = resolve_address(&cli, address.as_deref()).unwrap_or_else(|| beside(&cli));
            let mut out = std::io::stdout().lock();
            let mut cap = pcapng::Writer::start(&mut out)?;
            busctl::monitor_each(&address, matches, |m| Ok(cap.packet(m)?))
        }
        Cmd::EmitRaw {
            interface,
            member,
            path,
            args,
            data,
        } => {
            let c = connect(&cli)?;
            let args: Vec<Option<&str>> = args.iter().map(|a| Some(a.as_str())).collect();
            let spec = kdbus::bloom::SignalSpec {
                interface: interface.as_deref(),
                member: member.as_deref(),
                path: path.as_deref(),
                args: &args,
            };
            let filter = kdbus::bloom::signal_filter(c.bloom(), &spec);
            c.send(
                &Message::broadcast(&filter)
                    .cookie(1)
                    .payload(data.as_bytes()),
            )?;
            Ok(())
        }
        Cmd::Monitor {
            json,
            matches,
            address,
        } => match resolve_address(&cli, address.as_deref()) {
            Some(a) => busctl::monitor_dbus(&a, matches, *json),
            None => monitor(&cli, *json, matches),
        },
        Cmd::Bench(args) => bench::run(&bus_path(&cli), args),
        Cmd::Top {
            address,
            once,
            json,
            interval_ms,
        } => {
            let address = resolve_address(&cli, address.as_deref()).unwrap_or_else(|| beside(&cli));
            top::run(&address, *once, *json, Duration::from_millis(*interval_ms))
        }
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

/// One well-known name as `names` shows it.
#[derive(Default)]
struct NameRow {
    owner: Option<u64>,
    flags: u64,
    queued: Vec<u64>,
    activator: Option<u64>,
}

fn names(cli: &Cli, as_json: bool) -> Res {
    let c = connect(cli)?;
    let flags = abi::list_flags::NAMES | abi::list_flags::QUEUED | abi::list_flags::ACTIVATORS;
    let list = c.list(flags)?;
    let activators: std::collections::HashSet<u64> = list
        .iter()
        .filter(|r| r.flags & abi::hello_flags::ACTIVATOR != 0)
        .map(|r| r.id)
        .collect();
    let mut rows: std::collections::BTreeMap<String, NameRow> = Default::default();
    // Records of activators standing behind a running service come besides the owner's.
    let mut behind = Vec::new();
    for rec in &list {
        for (name, nflags) in &rec.names {
            let row = rows.entry(name.clone()).or_default();
            if nflags & abi::name_flags::IN_QUEUE != 0 {
                row.queued.push(rec.id);
            } else if activators.contains(&rec.id) {
                behind.push((name.clone(), rec.id));
            } else {
                row.owner = Some(rec.id);
                row.flags = *nflags;
            }
        }
    }
    for (name, id) in behind {
        let row = rows.entry(name).or_default();
        row.activator = Some(id);
        if row.owner.is_none() {
            // Nobody else owns it: the activator holds it.
            row.owner = Some(id);
            row.flags = abi::name_flags::ACTIVATOR;
        }
    }
    if as_json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, r)| {
                json!({"name": n, "owner": r.owner, "queued": r.queued, "flags": r.flags,
                       "activator": r.activator})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        println!("{:<40} {:>6} {:>6}  QUEUED", "NAME", "OWNER", "FLAGS");
        for (n, r) in rows {
            let owner = r.owner.map_or("-".into(), |o| o.to_string());
            let queued: Vec<String> = r.queued.iter().map(|q| q.to_string()).collect();
            let act = r
                .activator
                .map_or(String::new(), |a| format!("  (activator {a})"));
            println!(
                "{n:<40} {owner:>6} {:>#6x}  {}{act}",
                r.flags,
                queued.join(",")
            );
        }
    }
    Ok(())
}

/// Own a name and answer calls to it like `serve`, until interrupted.
fn acquire(cli: &Cli, name: &str, flags: u64) -> Res {
    let c = connect(cli)?;
    let rf = c.acquire_name(name, flags)?;
    if rf & abi::name_flags::IN_QUEUE != 0 {
        println!("{name}: queued (id {})", c.id());
    } else {
        println!("{name}: owned by {}", c.id());
    }
    serve_loop(&c)
}

/// Hold a name as its activator and report the queue as it changes.
fn activator(cli: &Cli, name: &str) -> Res {
    let path = bus_path(cli);
    let opts = HelloOptions::new()
        .activator(name)
        .description("kdbusctl-activator");
    let c = Connection::hello(&path, &opts).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("{name}: activator {}", c.id());
    // An activator cannot receive: it learns of each message that queues for the name,
    // and of the service taking them.
    let mut seen = 0;
    loop {
        let n = c.queued();
        if n > seen {
            println!("{name}: {n} message(s) waiting for the service");
        } else if n < seen {
            println!("{name}: the service took the waiting messages ({n} left)");
        }
        seen = n;
        let fd = c.as_fd();
        let mut pfd = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let _ = rustix::event::poll(&mut pfd, None);
    }
}

/// What kind of message a monitor saw.
fn message_kind(m: &kdbus::Received<'_>) -> &'static str {
    use abi::item;
    match m.kernel_item() {
        Some(item::ID_ADD) => "id-add",
        Some(item::ID_REMOVE) => "id-remove",
        Some(item::NAME_ADD) => "name-add",
        Some(item::NAME_REMOVE) => "name-remove",
        Some(item::NAME_CHANGE) => "name-change",
        Some(item::REPLY_TIMEOUT) => "reply-timeout",
        Some(item::REPLY_DEAD) => "reply-dead",
        Some(_) => "bus",
        None if m.dst_id() == abi::DST_ID_BROADCAST => "broadcast",
        None if m.header().flags & abi::msg_flags::SIGNAL != 0 => "signal",
        None if m.expects_reply() => "call",
        None if m.cookie_reply() != 0 => "reply",
        None => "unicast",
    }
}

fn monitor(cli: &Cli, as_json: bool, rules: &[String]) -> Res {
    let rules: Vec<kdbus::dbus::rules::Rule> = rules
        .iter()
        .map(|r| kdbus::dbus::rules::Rule::parse(r).map_err(|e| format!("{r}: {e}")))
        .collect::<Result<_, _>>()?;
    let path = bus_path(cli);
    let opts = HelloOptions::new()
        .monitor()
        .attach_recv(abi::attach::TIMESTAMP)
        .description("kdbusctl-monitor");
    let c = Connection::hello(&path, &opts).map_err(|e| format!("{}: {e}", path.display()))?;
    // A monitor sees everything without matches (kdbus refuses it any: EOPNOTSUPP).
    let mut out = std::io::stdout().lock();
    loop {
        let m = c.recv_timeout(None)?;
        let seq = m
            .item(abi::item::TIMESTAMP)
            .and_then(abi::read_struct::<abi::Timestamp>)
            .map_or(0, |t| t.seqnum);
        let payload = m.payload_bytes();
        let kind = message_kind(&m);
        // A D-Bus message: decoded, and judged by the rules (which see only what the
        // message says: a rule on a sender's well-known name cannot match here).
        let dbus = (m.header().payload_type == abi::payload::DBUS)
            .then(|| kdbus::dbus::header::parse(&payload).ok())
            .flatten();
        if let Some(h) = &dbus {
            let body = payload.get(h.header_len..h.total_len()).unwrap_or(&[]);
            let sender = h.sender.unwrap_or("");
            if !rules.is_empty() && !rules.iter().any(|r| r.matches(h, sender, &|_| false, body)) {
                continue;
            }
            // A message that does not decode (its body not what its signature says)
            // is reported as such; the monitor goes on.
            let line = if as_json {
                busctl::message_json(&payload)
                    .map(|v| v.to_string())
                    .unwrap_or_else(|e| {
                        json!({ "seq": seq, "undecodable": e.to_string() }).to_string()
                    })
            } else {
                let text =
                    busctl::message_line(&payload).unwrap_or_else(|e| format!("undecodable: {e}"));
                format!("{seq:>8} {text}")
            };
            use std::io::Write;
            writeln!(out, "{line}")?;
            out.flush()?;
            continue;
        }
        if !rules.is_empty() {
            continue;
        }
        let line = if as_json {
            json!({"seq": seq, "kind": kind, "src": m.src_id(), "dst": m.dst_id(), "cookie": m.cookie(),
                   "cookie_reply": if m.expects_reply() { 0 } else { m.cookie_reply() },
                   "flags": m.header().flags, "payload_type": m.header().payload_type,
                   "size": payload.len(), "payload": String::from_utf8_lossy(&payload)})
            .to_string()
        } else {
            let dst = if m.dst_id() == abi::DST_ID_BROADCAST {
                "*".to_string()
            } else {
                m.dst_id().to_string()
            };
            format!(
                "{seq:>8} {kind:<13} {:>5} -> {dst:<5} cookie {:<6} {} bytes {:?}",
                m.src_id(),
                m.cookie(),
                payload.len(),
                String::from_utf8_lossy(&payload[..payload.len().min(40)])
            )
        };
        use std::io::Write;
        writeln!(out, "{line}")?;
        out.flush()?;
    }
}

fn make_domain(cli: &Cli, name: &str, world: bool) -> Res {
    let dir = runtime_dir(cli);
    let flags = access_flags(world);
    let owner = Control::open(&dir)?.make_domain(name, flags)?;
    println!("{}", owner.runtime_dir.display());
    // The domain lives as long as this handle: wait until we are told to go.
    wait_for_signal();
    drop(owner);
    Ok(())
}

fn make_bus(cli: &Cli, name: &str, world: bool) -> Res {
    let name = uid_prefixed(name);
    let dir = runtime_dir(cli);
    let flags = access_flags(world);
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

fn make_endpoint(cli: &Cli, name: &str, world: bool, grants: [&Vec<String>; 3]) -> Res {
    let name = uid_prefixed(name);
    let flags = access_flags(world);
    let grants: Vec<kdbus::Grant> = (0..)
        .zip(grants)
        .flat_map(|(level, names)| {
            names.iter().map(move |n| kdbus::Grant {
                name: n.clone(),
                level,
            })
        })
        .collect();
    let bus = bus_path(cli);
    let owner = kdbus::EndpointOwner::make(&bus, &name, flags, &grants)?;
    // Its native socket, then the address of its D-Bus socket beside it.
    println!("{}", owner.path.display());
    println!("unix:path={}.dbus", owner.path.display());
    // The endpoint lives as long as this handle: wait until we are told to go.
    wait_for_signal();
    drop(owner);
    Ok(())
}

fn serve(cli: &Cli) -> Res {
    let c = connect(cli)?;
    println!("{}", c.id());
    serve_loop(&c)
}

/// The echo service: every message that expects a reply gets its payload back,
/// posted (no answer from the broker; a reply whose caller went away is dropped, and
/// its failure record is kept by the library, at most 1024 of them).
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
        for p in m.payloads() {
            buf.extend_from_slice(p);
        }
        drop(m);
        if expects {
            if let Err(e) = c.post(&Message::to(src).reply_to(cookie).payload(&buf)) {
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
