//! D-Bus clients' message streams into the bus (kdbus-bridge): after SASL, whatever a
//! D-Bus client writes is framed and parsed (kdbus-dbus `header`), then routed by
//! `Bridge::message`: calls to the driver `org.freedesktop.DBus` have their bodies
//! unmarshalled (RequestName, AddMatch with its match rule, GetConnectionCredentials,
//! BecomeMonitor, Properties, ...), everything else becomes a kdbus message on the
//! core's SEND path (bloom filters from signal arguments, reply tracking, the message
//! policy). This is the D-Bus side's counterpart of `native_commands`.
//!
//! Setup: a bus with a message policy and the bridge, as kdbusd makes them; three
//! D-Bus clients (uid 1000 and root said Hello already, uid 1001 not yet, so its first
//! message must be Hello) and one native connection.
//!
//! Input: records `who:u8 len:u16le bytes[len]`: bytes client `who % 3` writes to its
//! socket (framed as kdbusd's `dbus_socket` frames them; a framing or protocol error
//! disconnects that client), or for `who >= 0xf0` a harness event (time passes so
//! calls time out, a client hangs up).
//! Checks: no panic, no `bug!` in the core, and everything the bus writes to a D-Bus
//! client is a stream of well-formed D-Bus messages.
#![no_main]

use kdbus_abi::{BloomParameter, CmdHello, Errno};
use kdbus_bridge::Bridge;
use kdbus_core::msgpolicy::{Act, Context, MsgPolicy, Rule};
use kdbus_core::{BusKey, ConnKey, Creds, Domain, ManualClock, Peer, PoolMemory, VecPool};
use kdbus_dbus::header::{self, HeaderError, MessageType};
use libfuzzer_sys::fuzz_target;
use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock};
use zerocopy::IntoBytes;

/// `KDBUS_FUZZ_TRACE=1`: print what every client gets (to see what an input does).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("KDBUS_FUZZ_TRACE").is_some())
}

/// Move the clock on (a deadline the input set may have put it near the end of time).
fn advance(clock: &ManualClock, ns: u64) {
    clock.set(clock.now_ns().saturating_add(ns));
}

fn devnull() -> &'static std::fs::File {
    static F: OnceLock<std::fs::File> = OnceLock::new();
    F.get_or_init(|| std::fs::File::open("/dev/null").expect("/dev/null"))
}

fn peer(uid: u32) -> Peer {
    Peer {
        creds: Creds {
            pid: 100 + uid,
            uid,
            gid: uid,
        },
        privileged: uid == 0,
        comm: Some(Arc::from("fuzz")),
        exe: Some(Arc::from("/usr/bin/fuzz")),
        ..Default::default()
    }
}

struct Client {
    peer: Peer,
    fds_ok: bool,
    /// Bytes read from the socket, not yet a whole message.
    buf: Vec<u8>,
    key: Option<ConnKey>,
    gone: bool,
}

struct World {
    d: Domain,
    clock: ManualClock,
    bridge: Bridge,
    bus: BusKey,
    clients: Vec<Client>,
    native: ConnKey,
    dirty: Vec<ConnKey>,
}

impl World {
    fn new() -> World {
        let clock = ManualClock::new(1_000_000_000);
        let mut d = Domain::new(Box::new(clock.clone()));
        d.set_facts_reader(Box::new(kdbus_bridge::HeaderFacts));
        let bloom = BloomParameter {
            size: 64,
            n_hash: 8,
        };
        let make = kdbus_abi::encode::bus_make("0-fuzz", 0, bloom);
        let bus = d.bus_make(&peer(0), &make, [7; 16]).expect("bus");
        let mut policy = MsgPolicy::new();
        for act in [Act::Send, Act::Receive, Act::Own] {
            policy.push(Context::Default, Rule::new(true, act));
        }
        let mut deny = Rule::new(false, Act::Send);
        deny.interface = Some(Arc::from("org.fuzz.Denied"));
        policy.push(Context::Default, deny);
        d.bus_set_msg_policy(bus, Some(policy));
        let mut bridge = Bridge::new("0123456789abcdef0123456789abcdef");
        let mut clients = Vec::new();
        for (uid, fds_ok, hello) in [(1000, true, true), (0, true, true), (1001, false, false)] {
            let p = peer(uid);
            let key = hello.then(|| bridge.hello(&mut d, bus, None, &p, fds_ok, 1).expect("hello"));
            clients.push(Client {
                peer: p,
                fds_ok,
                buf: Vec::new(),
                key,
                gone: false,
            });
        }
        let hello = CmdHello {
            size: std::mem::size_of::<CmdHello>() as u64,
            flags: kdbus_abi::hello_flags::ACCEPT_FD,
            attach_flags_send: kdbus_abi::attach::ANY,
            attach_flags_recv: kdbus_abi::attach::ANY,
            pool_size: 64 * 4096,
            ..Default::default()
        };
        let mut make_pool =
            |size: u64| -> Result<Box<dyn PoolMemory>, Errno> { Ok(Box::new(VecPool::new(size))) };
        let (native, _) = d
            .hello(bus, &peer(1000), hello.as_bytes(), &mut make_pool)
            .expect("native hello");
        let mut w = World {
            d,
            clock,
            bridge,
            bus,
            clients,
            native,
            dirty: Vec::new(),
        };
        w.drain();
        w
    }

    /// Write out what every connection has to read: a D-Bus client's output must be
    /// whole, well-formed D-Bus messages.
    fn drain(&mut self) {
        for (key, serial, wants) in self.bridge.take_reloads() {
            if wants {
                self.bridge.reload_answer(&mut self.d, key, serial, Ok(()));
            }
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        self.d.take_dirty(&mut dirty);
        for &k in &dirty {
            let stream = k != self.native;
            let Some((out, files)) = self.d.conn_output(k) else {
                continue;
            };
            if stream {
                let mut at = 0;
                while at < out.len() {
                    let len = header::message_len(&out[at..])
                        .expect("the bus wrote a bad message length")
                        .expect("the bus wrote a cut message");
                    assert!(at + len <= out.len(), "the bus wrote a cut message");
                    let h = header::parse(&out[at..at + len]).expect("the bus wrote a bad header");
                    assert_eq!(h.total_len(), len);
                    if trace() {
                        let what = h.member.or(h.error_name).unwrap_or(h.msg_type.name());
                        let body = &out[at + h.header_len..at + len];
                        let arg = kdbus_dbus::rules::string_args(body, h.endian, h.signature, 1);
                        eprintln!("conn {k} gets {what} {:?}", arg.first().copied().flatten());
                    }
                    at += len;
                }
            }
            let n = out.len();
            out.clear();
            files.clear();
            if stream {
                self.d.stream_written(k, n);
            }
            self.d.conn_output_done(k);
        }
        self.dirty = dirty;
    }

    fn hang_up(&mut self, i: usize) {
        let c = &mut self.clients[i];
        c.gone = true;
        c.buf.clear();
        if let Some(key) = c.key.take() {
            self.d.conn_release(key);
        }
    }

    /// Bytes client `i` wrote, framed as kdbusd frames a D-Bus socket.
    fn read(&mut self, i: usize, bytes: &[u8]) {
        if self.clients[i].gone {
            return;
        }
        self.clients[i].buf.extend_from_slice(bytes);
        let buf = std::mem::take(&mut self.clients[i].buf);
        let mut used = 0;
        let ok = loop {
            let avail = &buf[used..];
            let len = match header::message_len(avail) {
                Ok(Some(len)) if len <= avail.len() => len,
                Ok(_) => break true,
                Err(_) => break false,
            };
            used += len;
            if !self.message(i, &avail[..len]) {
                break false;
            }
            self.drain();
        };
        if ok {
            self.clients[i].buf = buf[used..].to_vec();
        } else {
            self.hang_up(i);
        }
    }

    /// One whole message of client `i`; false: disconnect it.
    fn message(&mut self, i: usize, msg: &[u8]) -> bool {
        let h = match header::parse(msg) {
            Ok(h) => h,
            Err(HeaderError::UnknownType) => return true,
            Err(e) => {
                if trace() {
                    eprintln!("client {i}: bad header {e}");
                }
                return false;
            }
        };
        let c = &self.clients[i];
        let n = h.unix_fds as usize;
        if n > 8 || (n > 0 && !c.fds_ok) {
            return false;
        }
        let fds: Vec<OwnedFd> = (0..n)
            .filter_map(|_| devnull().try_clone().ok().map(OwnedFd::from))
            .collect();
        let creds = c.peer.creds;
        if let Some(key) = c.key {
            return self
                .bridge
                .message(&mut self.d, key, &h, msg, fds, creds)
                .is_ok();
        }
        let hello = h.msg_type == MessageType::MethodCall
            && h.destination == Some(kdbus_bridge::DRIVER)
            && h.member == Some("Hello");
        if !hello {
            return false;
        }
        let (p, fds_ok) = (c.peer.clone(), c.fds_ok);
        match self
            .bridge
            .hello(&mut self.d, self.bus, None, &p, fds_ok, h.serial)
        {
            Ok(key) => {
                self.clients[i].key = Some(key);
                true
            }
            Err(_) => false,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let bugs = kdbus_core::BUGS.load(std::sync::atomic::Ordering::Relaxed);
    let mut w = World::new();
    let mut rest = data;
    while rest.len() >= 3 {
        let who = rest[0];
        let len = (u16::from_le_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
        let bytes = &rest[3..3 + len];
        rest = &rest[3 + len..];
        match who {
            // Time passes (up to ~64 s): calls nobody answered time out.
            0xf0..=0xf7 => {
                advance(
                    &w.clock,
                    u64::from(bytes.first().copied().unwrap_or(1)) * 250_000_000,
                );
                w.d.tick();
            }
            0xf8..=0xff => w.hang_up(who as usize % 3),
            _ => w.read(who as usize % 3, bytes),
        }
        w.drain();
    }
    advance(&w.clock, 3600 * 1_000_000_000);
    w.d.tick();
    w.drain();
    assert_eq!(
        kdbus_core::BUGS.load(std::sync::atomic::Ordering::Relaxed),
        bugs,
        "the core reported an internal invariant failure"
    );
});
