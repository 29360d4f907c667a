//! The differential harness: a script of client steps run against dbus-daemon and
//! against kdbusd, both started from the same configuration, with root services on
//! them; the answers must be equal, and equal to what the test expects. Test files
//! include it with `#[path = "common/diff.rs"] mod diff;`.
//!
//! Configurations are Debian's system bus policy (deny owning and calling, allow
//! signals, requested replies and receiving, allow the driver; root may own and call
//! anything) plus what a case adds, or the installed system bus configuration itself.
//! Steps run as unprivileged users (`nobody`, `daemon`, through `setpriv` and
//! `dbus-send`) and as root (zbus, or raw sockets, for what `dbus-send` cannot do).
//! Needs root (CI runs as root), dbus-daemon, dbus-send and setpriv.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use zbus::blocking::{connection::Builder, Connection as ZConn, MessageIterator};
use zbus::message::Type as MsgType;

pub const KDBUSD: &str = env!("CARGO_BIN_EXE_kdbusd");
pub const NOBODY: (u32, u32) = (65534, 65534);
pub const DAEMON: (u32, u32) = (1, 1);

pub const BASE: &str = r#"
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
  </policy>
  <policy user="root">
    <allow own="*"/>
    <allow send_destination="*"/>
  </policy>"#;

pub struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn usable() -> bool {
    let root = rustix::process::geteuid().is_root();
    let tools = ["dbus-daemon", "dbus-send", "setpriv"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if !(root && tools) {
        eprintln!("skipped: needs root, dbus-daemon, dbus-send and setpriv");
    }
    root && tools
}

/// How a bus is started: on a configuration of the base policy plus rules, or as
/// the system bus from the installed configuration.
#[derive(Clone, Copy)]
pub enum Config<'a> {
    Base(&'a str),
    System,
}

/// Write the configuration of `tag`'s bus in `dir`: the base policy plus `extra`
/// (`BROKEN`: a file that does not parse).
pub fn write_conf(dir: &Path, tag: &str, extra: &str) -> PathBuf {
    let conf = dir.join(format!("{tag}.conf"));
    let sock = dir.join(format!("{tag}.sock"));
    let text = if extra == BROKEN {
        "<busconfig><policy context=\"default\"><allow/></busconfig>".to_string()
    } else {
        format!(
            "<busconfig>\n  <type>system</type>\n  <listen>unix:path={}</listen>\n  <auth>EXTERNAL</auth>{BASE}\n{extra}\n</busconfig>\n",
            sock.display()
        )
    };
    std::fs::write(&conf, text).unwrap();
    conf
}

/// A configuration that does not load.
pub const BROKEN: &str = "broken";

/// Start `program` (dbus-daemon or kdbusd) listening in `dir`; returns it and its
/// address.
pub fn start(program: &str, dir: &Path, config: Config<'_>) -> (Daemon, String) {
    start_with(program, dir, config, &[])
}

/// [`start`], with more command-line arguments (both brokers take dbus-daemon's).
pub fn start_with(
    program: &str,
    dir: &Path,
    config: Config<'_>,
    more: &[&str],
) -> (Daemon, String) {
    start_env(program, dir, config, more, &[])
}

/// [`start_with`], with more variables in the bus's environment.
pub fn start_env(
    program: &str,
    dir: &Path,
    config: Config<'_>,
    more: &[&str],
    env: &[(&str, &str)],
) -> (Daemon, String) {
    let tag = Path::new(program)
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("bus");
    let sock = dir.join(format!("{tag}.sock"));
    let args = match config {
        Config::Base(extra) => {
            vec![format!(
                "--config-file={}",
                write_conf(dir, tag, extra).display()
            )]
        }
        Config::System => vec![
            "--system".to_string(),
            format!("--address=unix:path={}", sock.display()),
            "--nopidfile".to_string(),
        ],
    };
    let mut child = Command::new(program)
        // What activated test services are (see session_diff.rs).
        .env("KDBUS_TEST_ACTIVATION", "1")
        .envs(env.iter().copied())
        .args(&args)
        .args(more)
        .args(["--nofork", "--print-address"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join(format!("{tag}.log"))).expect("a log file"))
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(!line.is_empty(), "{program} did not start");
    (Daemon(child), line.trim().to_string())
}

pub fn zconn(address: &str) -> ZConn {
    Builder::address(address)
        .expect("address")
        .method_timeout(Duration::from_secs(3))
        .build()
        .expect("root connects")
}

pub fn request_name(c: &ZConn, name: &str) {
    let r = c
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "RequestName",
            &(name, 4u32),
        )
        .expect("RequestName");
    assert_eq!(r.body().deserialize::<u32>().unwrap(), 1, "{name}");
}

/// A root service owning `names` that answers every call with "ok", but those to a
/// member `Hold`, which it never answers, to `Fail`, which get the error
/// `org.x.Err`, and to `Vanish`, on which it leaves the bus without answering.
pub fn serve(address: &str, names: &[&str]) {
    let c = zconn(address);
    let it = MessageIterator::from(&c);
    for n in names {
        request_name(&c, n);
    }
    std::thread::spawn(move || {
        for m in it.flatten() {
            let h = m.header();
            if m.message_type() != MsgType::MethodCall
                || h.member().is_some_and(|n| n.as_str() == "Hold")
            {
                continue;
            }
            if h.member().is_some_and(|n| n.as_str() == "Vanish") {
                let _ = c.close();
                return;
            }
            let r = if h.member().is_some_and(|n| n.as_str() == "Fail") {
                c.reply_error(&h, "org.x.Err", &"failed")
            } else {
                c.reply(&h, &"ok")
            };
            if r.is_err() {
                return;
            }
        }
    });
}

/// A D-Bus client on a bare socket at `address`: authenticates as root, says Hello,
/// and returns its socket (never read again) and unique name.
fn raw_hello(address: &str) -> (std::os::unix::net::UnixStream, String) {
    use kdbus::dbus::header::{self, Fields, MessageType};
    use kdbus::dbus::marshal::{Endian, Reader};
    use std::io::{Read, Write};
    let path = address
        .strip_prefix("unix:path=")
        .and_then(|p| p.split(',').next())
        .expect("a unix:path address");
    let mut s = std::os::unix::net::UnixStream::connect(path).expect("connect");
    let line_of = |s: &mut std::os::unix::net::UnixStream| {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            s.read_exact(&mut b).unwrap();
            line.push(b[0]);
        }
        line
    };
    s.write_all(b"\0AUTH EXTERNAL 30\r\n").unwrap();
    let line = line_of(&mut s);
    assert!(
        line.starts_with(b"OK "),
        "{}",
        String::from_utf8_lossy(&line)
    );
    // It takes fds (and never reads them: `max_outgoing_unix_fds`).
    s.write_all(b"NEGOTIATE_UNIX_FD\r\n").unwrap();
    assert!(line_of(&mut s).starts_with(b"AGREE_UNIX_FD"));
    s.write_all(b"BEGIN\r\n").unwrap();
    let mut hello = Vec::new();
    let f = Fields {
        path: Some("/org/freedesktop/DBus"),
        interface: Some("org.freedesktop.DBus"),
        member: Some("Hello"),
        destination: Some("org.freedesktop.DBus"),
        ..Default::default()
    };
    header::write_fields(
        &mut hello,
        Endian::Little,
        MessageType::MethodCall,
        0,
        0,
        1,
        &f,
    );
    s.write_all(&hello).unwrap();
    let mut fixed = [0u8; 16];
    s.read_exact(&mut fixed).unwrap();
    let len = header::message_len(&fixed).unwrap().expect("a length");
    let mut msg = fixed.to_vec();
    msg.resize(len, 0);
    s.read_exact(&mut msg[16..]).unwrap();
    let h = header::parse(&msg).expect("the Hello reply");
    let mut r = Reader::new(&msg[h.header_len..], h.endian);
    let name = r.string().expect("a unique name").to_string();
    (s, name)
}

thread_local! {
    /// Whether root's steps report error texts (`Step::Texts`), for this test's thread.
    static TEXTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The D-Bus error name of a failed zbus call, or what else went wrong.
fn zbus_error(e: &zbus::Error) -> String {
    match e {
        // A caller that gets no answer: the bus's NoReply (kdbusd keeps a call whose
        // reply the policy refused pending until its timeout) or its own timeout
        // (dbus-daemon forgets such a call) are the same to it.
        zbus::Error::MethodError(name, _, _)
            if name.as_str() == "org.freedesktop.DBus.Error.NoReply"
                && !TEXTS.with(|t| t.get()) =>
        {
            "no reply".to_string()
        }
        zbus::Error::InputOutput(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            "no reply".to_string()
        }
        zbus::Error::MethodError(name, Some(text), _) if TEXTS.with(|t| t.get()) => {
            format!("{name}: {}", normalize(text))
        }
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        zbus::Error::FDO(f) => zbus::DBusError::name(&**f).to_string(),
        other => format!("failed: {other}"),
    }
}

fn zbus_outcome<T>(r: zbus::Result<T>) -> String {
    r.map(|_| "ok".to_string())
        .unwrap_or_else(|e| zbus_error(&e))
}

/// What happened: "ok", a RequestName code, or the D-Bus error name.
pub fn outcome(out: std::process::Output) -> String {
    if out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        return match text
            .split_whitespace()
            .skip_while(|w| *w != "uint32")
            .nth(1)
        {
            Some(code) => code.to_string(),
            None => "ok".to_string(),
        };
    }
    let err = String::from_utf8_lossy(&out.stderr);
    err.split_whitespace()
        .nth(1)
        .map(|e| e.trim_end_matches(':').to_string())
        .unwrap_or_else(|| format!("failed: {err}"))
}

/// The error text of a failed `dbus-send`, with what differs between two runs (pids,
/// unique names, command lines) replaced by `N`.
pub fn error_text(out: std::process::Output) -> String {
    normalize(&String::from_utf8_lossy(&out.stderr))
}

/// An error text with what differs between two runs (pids, unique names, command
/// lines) replaced by `N`.
pub fn normalize(err: &str) -> String {
    let mut text = String::new();
    for (i, part) in err.trim().split("comm=\"").enumerate() {
        if i > 0 {
            text.push_str("comm=\"N");
        }
        text.push_str(if i > 0 {
            &part[part.find('"').unwrap_or(0)..]
        } else {
            part
        });
    }
    for marker in ["pid=", ":1."] {
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(marker) {
            out.push_str(&rest[..at + marker.len()]);
            rest = rest[at + marker.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
            out.push('N');
        }
        out.push_str(rest);
        text = out;
    }
    text
}

pub fn setpriv_dbus_send(address: &str, who: (u32, u32), args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={}", who.0),
            &format!("--regid={}", who.1),
            "--clear-groups",
            "dbus-send",
            &format!("--bus={address}"),
            "--print-reply",
            "--reply-timeout=5000",
        ])
        .args(args)
        .output()
        .expect("setpriv dbus-send")
}

/// `dbus-send` as `who`.
pub fn dbus_send(address: &str, who: (u32, u32), args: &[&str]) -> String {
    outcome(setpriv_dbus_send(address, who, args))
}

/// The error text `dbus-send` as `who` gets.
pub fn dbus_send_text(address: &str, who: (u32, u32), args: &[&str]) -> String {
    error_text(setpriv_dbus_send(address, who, args))
}

/// A step of a script, run on one bus.
pub enum Step {
    /// `who` calls `dest` at `path` `iface.member`.
    Call((u32, u32), &'static str, &'static str, &'static str),
    /// `who` asks for a name.
    Own((u32, u32), &'static str),
    /// Like `Call`, but the answer is the error's text (normalized by `error_text`).
    CallText((u32, u32), &'static str, &'static str, &'static str),
    /// The bus's configuration file is rewritten with the base policy plus this.
    Reconfigure(&'static str),
    /// root calls `ReloadConfig`.
    Reload,
    /// The bus gets SIGHUP (and a moment to act on it).
    Hangup,
    /// root, owning `org.test.Caller`, calls `dest` `iface.member` with `fds` fds.
    RootCall(&'static str, &'static str, usize),
    /// root's caller asks for a name (DoNotQueue): the code, or the error.
    RootOwn(&'static str),
    /// From now on, errors of root's steps come with their (normalized) text.
    Texts,
    /// root's caller adds a match rule.
    RootMatch(&'static str),
    /// root's caller starts a call to `org.test.A` that is never answered and keeps
    /// waiting for it ("ok"), or waits for it for `Some` seconds (the error).
    RootHold(Option<u64>),
    /// root opens one more connection and keeps it: "ok" or "refused".
    RootConnect,
    /// A new root connection calls `org.test.A` with a string of this many bytes and
    /// this many fds: "ok", an error name, or "disconnected".
    RootSend(usize, usize),
    /// A socket connects and says nothing; kept open. After this many ms: "closed" if
    /// the bus hung up, else "open".
    RawIdle(u64),
    /// The socket `RawIdle` kept `i`-th starts authenticating: "answered" if the bus
    /// answers within 300 ms, else "silent".
    RawSasl(usize),
    /// Whether the bus has logged a line containing this (within 300 ms): "logged" or
    /// "not logged".
    Logged(&'static str),
    /// A root client on a bare socket says Hello and then reads nothing more (a
    /// receiver that does not keep up); kept as the raw receiver.
    RawReceiver,
    /// root's caller sends this many calls (no reply expected) of this many bytes to
    /// the raw receiver.
    Flood(usize, usize),
    /// root's caller calls the raw receiver (which never answers) with a string of
    /// this many bytes: the error.
    CallRaw(usize),
    /// root's caller sends this many calls (no reply expected), each with this many
    /// fds, to the raw receiver.
    FloodFds(usize, usize),
    /// root's caller calls the raw receiver with this many fds: the error.
    CallRawFds(usize),
    /// A root client on a bare socket says Hello, then sends the first bytes of a
    /// message with an fd and nothing more; after this many ms: "closed" if the bus
    /// hung up, else "open" (kept).
    FdsPending(u64),
    /// A root subscriber to all signals is kept.
    Subscribe,
    /// root's caller emits signal `iface.member`, as a broadcast or (`true`) to the
    /// subscriber.
    Emit(&'static str, bool),
    /// The subscriber's signals until one of this member: their members, in order.
    Heard(&'static str),
}

/// The bus a script runs on.
pub struct Ctx<'a> {
    /// Connections and sockets steps keep open.
    kept: std::cell::RefCell<Vec<ZConn>>,
    /// The raw receiver: its socket and unique name.
    raw_receiver: std::cell::RefCell<Option<(std::os::unix::net::UnixStream, String)>>,
    /// The subscriber: its unique name, and the members of the signals it got.
    subscriber: std::cell::RefCell<Option<(String, std::sync::mpsc::Receiver<String>)>>,
    raw: std::cell::RefCell<Vec<std::os::unix::net::UnixStream>>,
    address: String,
    /// root's connection, owning `org.test.Caller` (on a base configuration).
    caller: ZConn,
    dir: &'a Path,
    /// The program's file name, which names its configuration file.
    tag: String,
    pid: u32,
}

impl Ctx<'_> {
    /// The unique name of the raw receiver (`Step::RawReceiver`).
    fn raw_name(&self) -> String {
        let r = self.raw_receiver.borrow();
        r.as_ref().expect("a raw receiver").1.clone()
    }
}

/// Run `step` on the bus of `ctx`.
pub fn run_step(ctx: &Ctx<'_>, step: &Step) -> String {
    let (address, caller) = (ctx.address.as_str(), &ctx.caller);
    match step {
        Step::RootOwn(name) => {
            let r = caller.call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "RequestName",
                &(*name, 4u32),
            );
            r.map(|m| m.body().deserialize::<u32>().unwrap_or(0).to_string())
                .unwrap_or_else(|e| zbus_error(&e))
        }
        Step::RootMatch(rule) => zbus_outcome(caller.call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "AddMatch",
            rule,
        )),
        Step::RootHold(wait) => {
            let c = caller.clone();
            let call = move || c.call_method(Some("org.test.A"), "/", Some("org.x.I"), "Hold", &());
            match wait {
                Some(_) => zbus_outcome(call()),
                None => {
                    std::thread::spawn(call);
                    std::thread::sleep(Duration::from_millis(300));
                    "ok".into()
                }
            }
        }
        Step::RootConnect => match Builder::address(address).and_then(|b| b.build()) {
            Ok(c) => {
                ctx.kept.borrow_mut().push(c);
                "ok".into()
            }
            Err(_) => "refused".into(),
        },
        Step::RootSend(bytes, fds) => {
            let c = zconn(address);
            let s = "x".repeat(*bytes);
            let pipes: Vec<_> = (0..*fds).map(|_| rustix::pipe::pipe().unwrap().0).collect();
            let fds: Vec<zbus::zvariant::Fd> = pipes.iter().map(zbus::zvariant::Fd::from).collect();
            match c.call_method(Some("org.test.A"), "/", Some("org.x.I"), "M", &(s, fds)) {
                Ok(_) => "ok".into(),
                Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
                Err(_) => "disconnected".into(),
            }
        }
        Step::RawIdle(ms) => {
            let path = address
                .strip_prefix("unix:path=")
                .and_then(|p| p.split(',').next())
                .expect("a unix:path address");
            let s = std::os::unix::net::UnixStream::connect(path).expect("connect");
            std::thread::sleep(Duration::from_millis(*ms));
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            let closed = matches!(std::io::Read::read(&mut &s, &mut b), Ok(0));
            ctx.raw.borrow_mut().push(s);
            if closed { "closed" } else { "open" }.into()
        }
        Step::FdsPending(ms) => {
            use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
            let (s, _) = raw_hello(address);
            let (r, _w) = rustix::pipe::pipe().expect("a pipe");
            let fds = [std::os::fd::AsFd::as_fd(&r)];
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut anc = SendAncillaryBuffer::new(&mut space);
            assert!(anc.push(SendAncillaryMessage::ScmRights(&fds)));
            // A message's first bytes only: its fds are pending until the rest comes.
            let start = [b'l', 1, 0, 1, 8, 0, 0, 0];
            sendmsg(
                &s,
                &[std::io::IoSlice::new(&start)],
                &mut anc,
                SendFlags::empty(),
            )
            .expect("sendmsg");
            std::thread::sleep(Duration::from_millis(*ms));
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 4096];
            let closed = loop {
                match std::io::Read::read(&mut &s, &mut b) {
                    Ok(0) => break true,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            };
            ctx.raw.borrow_mut().push(s);
            if closed { "closed" } else { "open" }.into()
        }
        Step::RawSasl(i) => {
            let raw = ctx.raw.borrow();
            let mut s = &raw[*i];
            std::io::Write::write_all(&mut s, b"\0AUTH\r\n").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 64];
            let answered = matches!(std::io::Read::read(&mut s, &mut b), Ok(n) if n > 0);
            if answered { "answered" } else { "silent" }.into()
        }
        Step::RawReceiver => {
            *ctx.raw_receiver.borrow_mut() = Some(raw_hello(address));
            "ok".into()
        }
        Step::Flood(count, size) => {
            let dest = ctx.raw_name();
            let s = "x".repeat(*size);
            for _ in 0..*count {
                let m = zbus::message::Message::method_call("/", "M")
                    .and_then(|b| b.destination(dest.as_str()))
                    .and_then(|b| b.interface("org.x.I"))
                    .map(|b| b.with_flags(zbus::message::Flags::NoReplyExpected))
                    .and_then(|b| b?.build(&s))
                    .expect("a message");
                caller.send(&m).expect("send");
            }
            "ok".into()
        }
        Step::FloodFds(count, nfds) => {
            let dest = ctx.raw_name();
            let (r, _w) = rustix::pipe::pipe().expect("a pipe");
            for _ in 0..*count {
                let fds: Vec<zbus::zvariant::Fd> =
                    (0..*nfds).map(|_| zbus::zvariant::Fd::from(&r)).collect();
                let m = zbus::message::Message::method_call("/", "M")
                    .and_then(|b| b.destination(dest.as_str()))
                    .and_then(|b| b.interface("org.x.I"))
                    .map(|b| b.with_flags(zbus::message::Flags::NoReplyExpected))
                    .and_then(|b| b?.build(&fds))
                    .expect("a message");
                caller.send(&m).expect("send");
            }
            "ok".into()
        }
        Step::CallRawFds(nfds) => {
            let dest = ctx.raw_name();
            let (r, _w) = rustix::pipe::pipe().expect("a pipe");
            let fds: Vec<zbus::zvariant::Fd> =
                (0..*nfds).map(|_| zbus::zvariant::Fd::from(&r)).collect();
            zbus_outcome(caller.call_method(Some(dest.as_str()), "/", Some("org.x.I"), "M", &fds))
        }
        Step::CallRaw(size) => {
            let dest = ctx.raw_name();
            let s = "x".repeat(*size);
            zbus_outcome(caller.call_method(Some(dest.as_str()), "/", Some("org.x.I"), "M", &s))
        }
        Step::Subscribe => {
            let c = zconn(address);
            let rule = "type='signal',interface='org.x.Sig'";
            c.call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "AddMatch",
                &rule,
            )
            .expect("AddMatch");
            let name = c.unique_name().expect("a unique name").to_string();
            let (tx, rx) = std::sync::mpsc::channel();
            let it = MessageIterator::from(&c);
            std::thread::spawn(move || {
                let _keep = c;
                for m in it.flatten() {
                    let h = m.header();
                    if m.message_type() == MsgType::Signal
                        && h.interface().is_some_and(|i| i.as_str() == "org.x.Sig")
                    {
                        let member = h.member().map(|n| n.to_string()).unwrap_or_default();
                        if tx.send(member).is_err() {
                            return;
                        }
                    }
                }
            });
            *ctx.subscriber.borrow_mut() = Some((name, rx));
            "ok".into()
        }
        Step::Emit(member, unicast) => {
            let to = ctx
                .subscriber
                .borrow()
                .as_ref()
                .expect("a subscriber")
                .0
                .clone();
            let dest = unicast.then_some(to.as_str());
            zbus_outcome(caller.emit_signal(dest, "/", "org.x.Sig", *member, &()))
        }
        Step::Heard(last) => {
            let sub = ctx.subscriber.borrow();
            let rx = &sub.as_ref().expect("a subscriber").1;
            let mut got = Vec::new();
            while let Ok(m) = rx.recv_timeout(Duration::from_secs(3)) {
                let done = m == *last;
                got.push(m);
                if done {
                    break;
                }
            }
            got.join(",")
        }
        Step::Logged(text) => {
            let log = ctx.dir.join(format!("{}.log", ctx.tag));
            let seen = (0..6).any(|_| {
                std::thread::sleep(Duration::from_millis(50));
                std::fs::read_to_string(&log).is_ok_and(|l| l.contains(text))
            });
            if seen { "logged" } else { "not logged" }.into()
        }
        Step::Texts => {
            TEXTS.with(|t| t.set(true));
            "ok".into()
        }
        Step::Reconfigure(extra) => {
            write_conf(ctx.dir, &ctx.tag, extra);
            "ok".into()
        }
        Step::Reload => dbus_send(
            address,
            (0, 0),
            &[
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.ReloadConfig",
            ],
        ),
        Step::Hangup => {
            let pid = rustix::process::Pid::from_raw(ctx.pid as i32).expect("a pid");
            rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP");
            std::thread::sleep(Duration::from_millis(500));
            "ok".into()
        }
        Step::Call(who, dest, path, method) => {
            dbus_send(address, *who, &[&format!("--dest={dest}"), path, method])
        }
        Step::CallText(who, dest, path, method) => {
            dbus_send_text(address, *who, &[&format!("--dest={dest}"), path, method])
        }
        Step::Own(who, name) => dbus_send(
            address,
            *who,
            &[
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.RequestName",
                &format!("string:{name}"),
                "uint32:4",
            ],
        ),
        Step::RootCall(dest, method, fds) => {
            let c = caller;
            let (iface, member) = method.rsplit_once('.').expect("iface.member");
            let r = if *fds > 0 {
                let (r, _w) = rustix::pipe::pipe().unwrap();
                let fd = zbus::zvariant::Fd::from(&r);
                c.call_method(Some(*dest), "/", Some(iface), member, &fd)
            } else {
                c.call_method(Some(*dest), "/", Some(iface), member, &())
            };
            match r {
                Ok(_) => "ok".to_string(),
                Err(e) => zbus_error(&e),
            }
        }
    }
}

/// Run `steps` with the base policy plus `extra` on dbus-daemon and on kdbusd (services
/// `org.test.A` and, on another connection, `org.test.B` and `org.other.C`); both must
/// give `expected`.
pub fn case(extra: &str, steps: &[Step], expected: &[&str]) {
    let services: &[&[&str]] = &[&["org.test.A"], &["org.test.B", "org.other.C"]];
    run_both(Config::Base(extra), services, steps, expected);
}

/// Run `steps` on dbus-daemon and on kdbusd started with `config`, each with root
/// services owning `services` (one connection per list); both must give `expected`.
pub fn run_both(config: Config<'_>, services: &[&[&str]], steps: &[Step], expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    // The unprivileged clients must reach the sockets.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut answers: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for program in ["dbus-daemon", KDBUSD] {
        TEXTS.with(|t| t.set(false));
        let (d, address) = start(program, dir.path(), config);
        for names in services {
            serve(&address, names);
        }
        let caller = zconn(&address);
        if matches!(config, Config::Base(_)) {
            request_name(&caller, "org.test.Caller");
        }
        let ctx = Ctx {
            kept: Default::default(),
            raw: Default::default(),
            raw_receiver: Default::default(),
            subscriber: Default::default(),
            address,
            caller,
            dir: dir.path(),
            tag: Path::new(program)
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("bus")
                .to_string(),
            pid: d.0.id(),
        };
        let got = steps.iter().map(|s| run_step(&ctx, s)).collect();
        answers.push((program.into(), got));
    }
    let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(answers[0].1, expected, "dbus-daemon");
    assert_eq!(answers[1].1, expected, "kdbusd");
}
