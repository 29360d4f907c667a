//! `kdbusctl`'s command line, on its own so that the build script can render it as a
//! man page (`build.rs`, with clap_mangen): nothing here may use the rest of the crate.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(version, about = "Inspect and use kdbus buses served by kdbusd")]
pub struct Cli {
    /// Bus endpoint (default: $KDBUS_BUS or <runtime>/<uid>-user/bus).
    #[arg(long, global = true, value_name = "PATH")]
    pub bus: Option<PathBuf>,
    /// kdbusd runtime directory (default: /run/kdbus for root, else $XDG_RUNTIME_DIR/kdbus).
    #[arg(long, global = true, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// D-Bus commands go to the session bus ($DBUS_SESSION_BUS_ADDRESS, else
    /// $XDG_RUNTIME_DIR/bus) unless they name an --address.
    #[arg(long, global = true, conflicts_with = "system")]
    pub user: bool,
    /// D-Bus commands go to the system bus ($DBUS_SYSTEM_BUS_ADDRESS, else
    /// /run/dbus/system_bus_socket) unless they name an --address.
    #[arg(long, global = true)]
    pub system: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Connections on the bus.
    List {
        /// Print JSON.
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
    /// Make a domain below this one (root only): a separate tree with its own
    /// `control`, in `<runtime dir>/domain/NAME/`. Prints its directory; it lives until
    /// interrupted.
    MakeDomain {
        name: String,
        /// Let every user use its control socket (default: only root).
        #[arg(long)]
        world: bool,
    },
    /// Make a custom endpoint of the bus (`<uid>-` is prepended when missing): a socket
    /// through which only the granted names exist. Prints its path, then the D-Bus
    /// address of its D-Bus socket; it lives until interrupted.
    MakeEndpoint {
        name: String,
        /// Let every user connect (default: only you).
        #[arg(long)]
        world: bool,
        /// Names (or `a.b.*`) everyone on it may see.
        #[arg(long, value_name = "NAME")]
        see: Vec<String>,
        /// Names everyone on it may see and call.
        #[arg(long, value_name = "NAME")]
        talk: Vec<String>,
        /// Names everyone on it may see, call and own.
        #[arg(long, value_name = "NAME")]
        own: Vec<String>,
    },
    /// Answer every call with its own payload (an echo service); prints its id.
    Serve,
    /// Well-known names: owner, queue, activator.
    Names {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Own NAME and answer calls to it (an echo) until interrupted.
    Acquire {
        name: String,
        /// Wait in the queue if the name is taken.
        #[arg(long)]
        queue: bool,
        /// Take the name over if its owner allows replacement.
        #[arg(long)]
        replace: bool,
        /// Let others take the name over.
        #[arg(long)]
        allow_replacement: bool,
    },
    /// Hold NAME as an activator (privileged) and report what queues for it.
    Activator { name: String },
    /// Call a D-Bus method, busctl-style: `call DEST PATH IFACE METHOD [SIGNATURE
    /// [ARGS...]]` (arrays as a count then elements, variants as a signature then the
    /// value); prints the reply as busctl does. Through the native bus, or the D-Bus
    /// socket at --address.
    Call {
        dest: String,
        path: String,
        interface: String,
        method: String,
        /// The arguments' signature, then the arguments.
        #[arg(allow_hyphen_values = true)]
        args: Vec<String>,
        /// The D-Bus address to call through (default: the native bus).
        #[arg(long, value_name = "ADDRESS")]
        address: Option<String>,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Read a D-Bus property (org.freedesktop.DBus.Properties.Get), printed as busctl
    /// prints it.
    GetProperty {
        dest: String,
        path: String,
        interface: String,
        property: String,
        /// The D-Bus address to ask through (default: the native bus).
        #[arg(long, value_name = "ADDRESS")]
        address: Option<String>,
    },
    /// The objects of a D-Bus service, as busctl tree draws them (`--list`: one path a
    /// line).
    Tree {
        dest: String,
        #[arg(long)]
        list: bool,
        /// The D-Bus address to ask through (default: the native bus).
        #[arg(long, value_name = "ADDRESS")]
        address: Option<String>,
    },
    /// Wait for a signal (PATH INTERFACE MEMBER) and print its body as busctl does.
    Wait {
        path: String,
        interface: String,
        signal: String,
        /// The D-Bus address to listen on (default: the D-Bus socket beside --bus).
        #[arg(long, value_name = "ADDRESS")]
        address: Option<String>,
        /// Give up after this many milliseconds (default: wait forever).
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Who owns NAME: its unique name and the credentials the bus has for it.
    Status {
        /// A well-known or unique name; without one, the bus itself (its id, bloom
        /// parameters, creator, connection count).
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The D-Bus address to ask through (default: the D-Bus socket beside --bus).
        #[arg(long, value_name = "ADDRESS")]
        address: Option<String>,
    },
    /// An object's interfaces, methods, properties (with their values) and signals, as
    /// busctl introspect shows them.
    Introspect {
        dest: String,
        path: String,
        /// The D-Bus address to ask through (default: the native bus).
        #[arg(long, value_name = "ADDRESS")]
        address: Option<String>,
    },
    /// Call DEST (a unique id or a well-known name) with DATA as a raw kdbus payload
    /// and print the answer's payload (an echo service's, say).
    CallRaw {
        dest: String,
        data: String,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Broadcast a D-Bus signal, with busctl's syntax: `emit PATH INTERFACE MEMBER
    /// [SIGNATURE ARGS...]`. Through the native bus (its bloom filter built from the
    /// header and string arguments), or the D-Bus socket at --address.
    Emit {
        path: String,
        interface: String,
        member: String,
        /// The arguments' signature, then the arguments.
        #[arg(allow_hyphen_values = true)]
        args: Vec<String>,
        /// The D-Bus address to emit through (default: the native bus).
        #[arg(long, value_name = "ADDRESS")]
        address: Option<String>,
    },
    /// Broadcast a raw kdbus signal; its bloom filter is built from the interface,
    /// member, path and arguments the way sd-bus builds it.
    EmitRaw {
        #[arg(long)]
        interface: Option<String>,
        #[arg(long)]
        member: Option<String>,
        #[arg(long)]
        path: Option<String>,
        /// Leading string arguments (repeat for arg0, arg1, ...).
        #[arg(long = "arg")]
        args: Vec<String>,
        /// Payload bytes.
        #[arg(default_value = "")]
        data: String,
    },
    /// Write a D-Bus property (org.freedesktop.DBus.Properties.Set), with busctl's
    /// syntax: `set-property DEST PATH INTERFACE PROPERTY SIGNATURE ARGS...`.
    SetProperty {
        dest: String,
        path: String,
        interface: String,
        property: String,
        /// The value's signature, then the value.
        #[arg(allow_hyphen_values = true, required = true)]
        value: Vec<String>,
        /// The D-Bus address to write through (default: the native bus).
        #[arg(long, value_name = "ADDRESS")]
        address: Option<String>,
    },
    /// Record every message on the bus as pcapng (link type D-Bus, as `busctl capture`
    /// writes it) to stdout, for Wireshark; until interrupted.
    Capture {
        /// The D-Bus address to watch through (default: the D-Bus socket beside --bus).
        #[arg(long, value_name = "ADDRESS")]
        address: Option<String>,
        /// Only messages that match this rule (repeat for more: any of them).
        #[arg(long = "match", value_name = "RULE")]
        matches: Vec<String>,
    },
    /// Watch the bus as a monitor (privileged): every unicast, every broadcast and
    /// notification, one line each; D-Bus messages decoded (type, sender, destination,
    /// path, member, body as busctl prints it).
    Monitor {
        /// Print JSON: D-Bus messages as busctl monitor --json=short prints them.
        #[arg(long)]
        json: bool,
        /// Only D-Bus messages that match this rule (repeat for more: any of them).
        #[arg(long = "match", value_name = "RULE")]
        matches: Vec<String>,
        /// Watch through this D-Bus address (BecomeMonitor) instead of the native bus.
        #[arg(long, value_name = "ADDRESS")]
        address: Option<String>,
    },
    /// What the bus holds, per connection and per user, refreshed every second: receive
    /// pools (size, use, queue, losses) and D-Bus streams (bytes waiting, the quota,
    /// what each sending user holds in it), match rules and names. Read through the
    /// bus's `org.freedesktop.DBus.Debug.Stats`.
    Top {
        /// The D-Bus address to ask (default: the D-Bus socket beside --bus).
        #[arg(long, value_name = "ADDRESS")]
        address: Option<String>,
        /// Print once and exit.
        #[arg(long)]
        once: bool,
        /// Print JSON (one object per refresh).
        #[arg(long)]
        json: bool,
        /// Milliseconds between refreshes.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Round trips per second through the broker, next to a raw socketpair.
    Bench(BenchArgs),
}

/// Which client library runs the D-Bus workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientLib {
    /// The bench's own minimal client.
    Own,
    /// systemd's sd-bus (compiled at run time: needs cc and libsystemd-dev).
    SdBus,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Round trips to time (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 20000)]
    pub rounds: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Print JSON (one object) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Measure NAME_ACQUIRE + NAME_RELEASE with 10 and with `--names-max` names on the bus.
    #[arg(long)]
    pub names: bool,
    #[arg(long, default_value_t = 100_000)]
    pub names_max: usize,
    /// Measure broadcast fan-out instead (see --subscribers, --rules, --count).
    #[arg(long)]
    pub broadcast: bool,
    #[command(flatten)]
    pub bcast: BroadcastArgs,
    /// Measure round trips and broadcast fan-out through this D-Bus address instead.
    #[arg(long, value_name = "ADDRESS")]
    pub dbus: Option<String>,
    /// Start kdbusd, dbus-broker and dbus-daemon on private sockets and measure all three.
    #[arg(long)]
    pub dbus_compare: bool,
    /// Measure zbus calls over kdbusd's native socket (kdbus-zbus) against zbus over
    /// its D-Bus socket, in the same run.
    #[arg(long)]
    pub zbus: bool,
    /// With `--dbus-compare`: the D-Bus client library that runs the workloads.
    #[arg(long, value_enum, default_value = "own", requires = "dbus_compare")]
    pub client: ClientLib,
    /// Measure D-Bus round trips on two kdbusd buses, one with this many more policy
    /// rules (about other names) than the other.
    #[arg(long, value_name = "N")]
    pub policy_rules: Option<usize>,
    /// Measure calls of this many bytes (`1MiB`, `64KiB` or bytes) on the native path,
    /// next to dbus-broker's and kdbusd's D-Bus call of the same size in the same run.
    #[arg(long, value_name = "SIZE", value_parser = size_parse)]
    pub payload: Option<usize>,
    /// With `--payload`: also pass the bytes as sealed memfds (zero-copy).
    #[arg(long, requires = "payload")]
    pub memfd: bool,
    /// Measure what each metadata item costs per message (native round trips).
    #[arg(long)]
    pub metadata: bool,
    /// Measure native round trips with this many idle connections on the bus, next
    /// to the empty bus (with `--idle-names`).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub idle_connections: usize,
    /// With `--idle-connections`: this many names owned on the bus too.
    #[arg(long, value_name = "M", default_value_t = 0)]
    pub idle_names: usize,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BroadcastArgs {
    /// Matching subscribers (and as many non-matching ones).
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// Extra match rules that never match, spread over extra connections.
    #[arg(long, default_value_t = 0)]
    pub rules: usize,
    /// Broadcasts to send.
    #[arg(long, default_value_t = 20000)]
    pub count: usize,
}

/// Parse a size: bytes, or with `KiB`/`MiB`.
pub fn size_parse(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (n, mul) = if let Some(n) = s.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = s.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (s, 1)
    };
    n.trim()
        .parse::<usize>()
        .map(|n| n * mul)
        .map_err(|e| format!("{s}: {e}"))
}
