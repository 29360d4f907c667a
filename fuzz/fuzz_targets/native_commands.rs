//! The kdbus bus model (kdbus-core `Domain`) driven by a sequence of native commands,
//! as kdbusd's broker drives it: every command a native client can send on any kind
//! of handle (control, endpoint, bus/endpoint owner, connection), RECV/FREE of what
//! was announced, handles closing, and the clock moving so reply timeouts fire.
//! A native client reaches all of these with arbitrary bytes, so this is the widest
//! attack surface of the broker.
//!
//! Setup (so the fuzzer starts deep): a bus `0-fuzz` made by root, with a message
//! policy (so native D-Bus payloads are read by the bridge's header parser) and
//! three connections (uid 1000, uid 1001, root); control and endpoint handles.
//!
//! Input: records `op:u8 sel:u8 len:u16le body[len]`.
//! - `op >= 0xf0`: a harness event (clock, close a handle, open a handle, ...).
//! - otherwise a request: `op & 0x1f` picks the command number from [`CMDS`],
//!   `op & 0x20` sets `REQ_NO_REPLY`, `op & 0x40` writes the body's length into its
//!   `size` field, `op & 0x80` patches a pool offset the bus announced into a RECV or
//!   FREE body. `sel & 0x1f` picks the handle, `sel >> 5` how many fds go along.
//!
//! Checks: no panic (the core's `bug!` invariants are fatal in debug-assertion builds,
//! which `cargo fuzz build -a` makes; `kdbus_core::BUGS` is checked as well), and
//! every output a connection gets is well-framed records.
#![no_main]

use kdbus_abi::wire::{self, Frames, MsgEvent, RecHeader};
use kdbus_abi::{cmd, read_struct, BloomParameter, CmdHello, Errno};
use kdbus_core::domain::Request;
use kdbus_core::handle::{handle_action, negotiate, HandleAction, HandleKind};
use kdbus_core::msgpolicy::{Act, Context, MsgPolicy, NameCrit, Rule};
use kdbus_core::{
    BusKey, ConnKey, Creds, Domain, FdInspector, FdKind, ManualClock, Peer, PoolMemory,
};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use zerocopy::IntoBytes;

/// Command numbers a request can carry: every kdbus command, and one nobody knows.
const CMDS: &[u32] = &[
    cmd::BUS_MAKE,
    cmd::DOMAIN_MAKE,
    cmd::ENDPOINT_MAKE,
    cmd::ENDPOINT_UPDATE,
    cmd::HELLO,
    cmd::UPDATE,
    cmd::BYEBYE,
    cmd::FREE,
    cmd::CONN_INFO,
    cmd::BUS_CREATOR_INFO,
    cmd::LIST,
    cmd::SEND,
    cmd::RECV,
    cmd::NAME_ACQUIRE,
    cmd::NAME_RELEASE,
    cmd::MATCH_ADD,
    cmd::MATCH_REMOVE,
    cmd::RELEASE,
    0x42,
];

const MAX_SLOTS: usize = 32;
const MAX_OFFSETS: usize = 16;

/// Pool memory with the size the client asked for (up to 1 GiB), backed sparsely by
/// 4 KiB pages that exist once written.
struct SparsePool {
    size: u64,
    pages: HashMap<u64, Box<[u8; 4096]>>,
}

impl PoolMemory for SparsePool {
    fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset.saturating_add(data.len() as u64).min(self.size);
        let mut at = offset;
        while at < end {
            let page = at / 4096;
            let in_page = (at % 4096) as usize;
            let n = ((end - at) as usize).min(4096 - in_page);
            let src = &data[(at - offset) as usize..][..n];
            let p = self
                .pages
                .entry(page)
                .or_insert_with(|| Box::new([0; 4096]));
            p[in_page..in_page + n].copy_from_slice(src);
            at += n as u64;
        }
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let end = offset.checked_add(len as u64)?;
        if end > self.size {
            return None;
        }
        let mut out = vec![0; len];
        let mut at = offset;
        while at < end {
            let page = at / 4096;
            let in_page = (at % 4096) as usize;
            let n = ((end - at) as usize).min(4096 - in_page);
            if let Some(p) = self.pages.get(&page) {
                out[(at - offset) as usize..][..n].copy_from_slice(&p[in_page..in_page + n]);
            }
            at += n as u64;
        }
        Some(out)
    }
}

/// Says what the fds are by their number, so memfd payloads and refused sockets are
/// reachable: a third of them sealed memfds of 64 KiB, a third unix sockets.
struct FakeFiles;

impl FdInspector for FakeFiles {
    fn inspect(&self, fd: BorrowedFd<'_>) -> FdKind {
        match fd.as_raw_fd() % 3 {
            0 => FdKind::Memfd {
                seals: 0xf,
                size: 65536,
            },
            1 => FdKind::UnixSocket,
            _ => FdKind::Other,
        }
    }
}

/// `KDBUS_FUZZ_TRACE=1`: print every record the bus writes (to see what an input does).
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

/// What a handle is (kdbusd's `Role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Control,
    BusOwner(BusKey),
    Endpoint(BusKey, Option<u64>),
    EndpointOwner(BusKey, u64),
    DomainOwner,
    Conn(ConnKey),
    Closed,
}

impl Role {
    fn kind(self) -> Option<HandleKind> {
        Some(match self {
            Role::Control => HandleKind::Control,
            Role::BusOwner(_) => HandleKind::BusOwner,
            Role::Endpoint(_, ep) => HandleKind::Endpoint {
                custom: ep.is_some(),
            },
            Role::EndpointOwner(..) => HandleKind::EndpointOwner,
            Role::DomainOwner => HandleKind::DomainOwner,
            Role::Conn(_) => HandleKind::Conn,
            Role::Closed => return None,
        })
    }
}

struct Slot {
    role: Role,
    peer: usize,
}

struct World {
    d: Domain,
    clock: ManualClock,
    peers: Vec<Peer>,
    slots: Vec<Slot>,
    /// Pool offsets each connection was told of (announcements, write-backs).
    offsets: HashMap<ConnKey, Vec<u64>>,
    next_req: u64,
    dirty: Vec<ConnKey>,
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
        cmdline: Some(Arc::from(&b"fuzz\0-x\0"[..])),
        ppid: 1,
        groups: Some(Arc::from(&[1u8, 0, 0, 0, 0, 0, 0, 0][..])),
        cgroup: Some(Arc::from("/user.slice")),
        caps: Some(Arc::from(&[0u8; 36][..])),
        audit: Some((1, uid)),
        ..Default::default()
    }
}

/// The configured bus's message policy: everything allowed but one interface and, for
/// uid 1001, one name.
fn policy() -> MsgPolicy {
    let mut p = MsgPolicy::new();
    p.push(Context::Default, Rule::new(true, Act::Send));
    p.push(Context::Default, Rule::new(true, Act::Receive));
    p.push(Context::Default, Rule::new(true, Act::Own));
    let mut deny = Rule::new(false, Act::Send);
    deny.interface = Some(Arc::from("org.fuzz.Denied"));
    p.push(Context::Default, deny);
    let mut own = Rule::new(false, Act::Own);
    own.name = Some(NameCrit::Prefix(Arc::from("org.fuzz.Root")));
    p.push(Context::User(1001), own);
    p
}

fn make_pool(size: u64) -> Result<Box<dyn PoolMemory>, Errno> {
    Ok(Box::new(SparsePool {
        size,
        pages: HashMap::new(),
    }))
}

impl World {
    fn new() -> World {
        let clock = ManualClock::new(1_000_000_000);
        let mut d = Domain::new(Box::new(clock.clone()));
        d.set_fd_inspector(Box::new(FakeFiles));
        d.set_facts_reader(Box::new(kdbus_bridge::HeaderFacts));
        let peers = vec![peer(0), peer(1000), peer(1001)];
        let mut w = World {
            d,
            clock,
            peers,
            slots: Vec::new(),
            offsets: HashMap::new(),
            next_req: 0,
            dirty: Vec::new(),
        };
        let bloom = BloomParameter {
            size: 64,
            n_hash: 8,
        };
        let body = kdbus_abi::encode::bus_make("0-fuzz", 0, bloom);
        let bus = w.d.bus_make(&w.peers[0], &body, [7; 16]).expect("bus");
        w.d.bus_set_msg_policy(bus, Some(policy()));
        w.slots.push(Slot {
            role: Role::Control,
            peer: 0,
        });
        w.slots.push(Slot {
            role: Role::Control,
            peer: 1,
        });
        w.slots.push(Slot {
            role: Role::BusOwner(bus),
            peer: 0,
        });
        for p in [1, 2, 0] {
            let hello = CmdHello {
                size: std::mem::size_of::<CmdHello>() as u64,
                flags: kdbus_abi::hello_flags::ACCEPT_FD,
                attach_flags_send: kdbus_abi::attach::ANY,
                attach_flags_recv: kdbus_abi::attach::ANY,
                pool_size: 16 * 4096,
                ..Default::default()
            };
            let (key, h) =
                w.d.hello(bus, &w.peers[p], hello.as_bytes(), &mut make_pool)
                    .expect("hello");
            w.slots.push(Slot {
                role: Role::Conn(key),
                peer: p,
            });
            w.offsets.entry(key).or_default().push(h.offset);
        }
        w.slots.push(Slot {
            role: Role::Endpoint(bus, None),
            peer: 1,
        });
        w.slots.push(Slot {
            role: Role::Endpoint(bus, None),
            peer: 0,
        });
        w.drain();
        w
    }

    fn remember(&mut self, key: ConnKey, offset: u64) {
        let v = self.offsets.entry(key).or_default();
        if v.len() >= MAX_OFFSETS {
            v.remove(0);
        }
        v.push(offset);
    }

    /// Collect every connection's output, as the broker's flush does; check it is
    /// well-framed and learn the pool offsets it names.
    fn drain(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        self.d.take_dirty(&mut dirty);
        for &key in &dirty {
            let mut learned = Vec::new();
            let Some((out, files)) = self.d.conn_output(key) else {
                continue;
            };
            for f in Frames::<RecHeader>::new(out) {
                let (h, body) = f.expect("the bus wrote a truncated record");
                if trace() && h.kind == wire::REC_REPLY {
                    let c = cmd::name((h.req_id & 0xff) as u32);
                    eprintln!("conn {key}: {c} -> errno {}", h.error);
                } else if trace() {
                    eprintln!("conn {key}: record of kind {}", h.kind);
                }
                match h.kind {
                    wire::REC_MSG => {
                        let ev: MsgEvent = read_struct(body).expect("short REC_MSG");
                        learned.push(ev.offset);
                    }
                    wire::REC_REPLY if h.error == 0 => {
                        // The request id says which command this answers.
                        let at = match (h.req_id & 0xff) as u32 {
                            cmd::RECV | cmd::CONN_INFO | cmd::BUS_CREATOR_INFO => Some(40),
                            cmd::LIST => Some(24),
                            cmd::SEND => Some(32),
                            _ => None,
                        };
                        if let Some(o) = at.and_then(|at| body.get(at..)).and_then(read_struct) {
                            learned.push(o);
                        }
                    }
                    _ => {}
                }
            }
            out.clear();
            files.clear();
            self.d.conn_output_done(key);
            for o in learned {
                self.remember(key, o);
            }
        }
        self.dirty = dirty;
    }

    /// Connections the domain disconnected: the broker hangs up on them.
    fn reap(&mut self) {
        for key in self.d.take_closed() {
            for s in self.slots.iter_mut().filter(|s| s.role == Role::Conn(key)) {
                self.d.conn_release(key);
                s.role = Role::Closed;
            }
        }
    }

    fn push_slot(&mut self, role: Role, peer: usize) {
        if self.slots.len() < MAX_SLOTS {
            self.slots.push(Slot { role, peer });
        }
    }

    fn close(&mut self, i: usize) {
        let role = std::mem::replace(&mut self.slots[i].role, Role::Closed);
        match role {
            Role::Conn(key) => self.d.conn_release(key),
            Role::BusOwner(bus) => self.d.bus_destroy(bus),
            Role::EndpointOwner(bus, ep) => self.d.endpoint_destroy(bus, ep),
            _ => {}
        }
    }

    fn event(&mut self, op: u8, sel: u8) {
        match op {
            // Time passes (up to ~13 s); expired calls time out.
            0xf0 => {
                advance(&self.clock, u64::from(sel) * 50_000_000);
                self.d.tick();
            }
            // Straight to the next deadline.
            0xf1 => {
                if let Some(t) = self.d.next_deadline() {
                    self.clock
                        .set(t.max(self.clock.now_ns()).saturating_add(u64::from(sel)));
                }
                self.d.tick();
            }
            0xf2 => {
                let i = sel as usize % self.slots.len();
                self.close(i);
            }
            // A new client of a bus's (or custom endpoint's) socket.
            0xf3 => {
                let buses: Vec<Role> = self
                    .slots
                    .iter()
                    .filter_map(|s| match s.role {
                        Role::BusOwner(b) => Some(Role::Endpoint(b, None)),
                        Role::EndpointOwner(b, ep) => Some(Role::Endpoint(b, Some(ep))),
                        _ => None,
                    })
                    .collect();
                if !buses.is_empty() {
                    let r = buses[(sel >> 2) as usize % buses.len()];
                    self.push_slot(r, sel as usize % 3);
                }
            }
            0xf4 => self.push_slot(Role::Control, sel as usize % 3),
            0xf5 => {
                let mask = if sel == 0 {
                    0
                } else {
                    kdbus_abi::attach::ALL >> (sel % 15)
                };
                self.d.set_attach_mask(mask);
            }
            _ => {}
        }
    }

    fn request(&mut self, op: u8, sel: u8, body: &mut [u8]) {
        let c = CMDS[(op & 0x1f) as usize % CMDS.len()];
        let i = (sel & 0x1f) as usize % self.slots.len();
        let (role, p) = (self.slots[i].role, self.slots[i].peer);
        let Some(kind) = role.kind() else {
            return;
        };
        if op & 0x40 != 0 && body.len() >= 8 {
            let n = body.len() as u64;
            body[..8].copy_from_slice(&n.to_ne_bytes());
        }
        if op & 0x80 != 0 {
            let at = match c {
                cmd::FREE => Some(24),
                cmd::RECV => Some(40),
                _ => None,
            };
            if let (Some(at), Role::Conn(key)) = (at, role) {
                let known = self.offsets.get(&key).map(Vec::as_slice).unwrap_or(&[]);
                if let (Some(field), false) = (body.get_mut(at..at + 8), known.is_empty()) {
                    // The newest by default; older ones by the field's first byte.
                    let o = known[known.len() - 1 - field[0] as usize % known.len()];
                    field.copy_from_slice(&o.to_ne_bytes());
                }
            }
        }
        let mut fds: Vec<OwnedFd> = (0..sel >> 5)
            .filter_map(|_| devnull().try_clone().ok().map(OwnedFd::from))
            .collect();
        self.next_req += 1;
        let peer = self.peers[p].clone();
        let req = Request {
            cmd: c,
            flags: if op & 0x20 != 0 {
                wire::REQ_NO_REPLY
            } else {
                0
            },
            req_id: (self.next_req << 8) | u64::from(c & 0xff),
            body,
            creds: peer.creds,
        };
        if kind != HandleKind::Conn && negotiate(c, body).is_some() {
            return;
        }
        let action = handle_action(kind, c);
        if trace() && action != HandleAction::Conn {
            eprintln!("handle {i} ({role:?}): {} -> {action:?}", cmd::name(c));
        }
        match (action, role) {
            (HandleAction::Conn, Role::Conn(key)) => self.d.conn_request(key, &req, &mut fds),
            (HandleAction::RemoveBus, Role::BusOwner(_))
            | (HandleAction::RemoveEndpoint, Role::EndpointOwner(..)) => self.close(i),
            (HandleAction::BusMake, Role::Control) => {
                if let Ok(bus) = self.d.bus_make(&peer, body, [9; 16]) {
                    self.slots[i].role = Role::BusOwner(bus);
                    // Its maker connects at once, as clients do.
                    self.push_slot(Role::Endpoint(bus, None), p);
                }
            }
            (HandleAction::DomainMake, Role::Control) => {
                if kdbus_core::bus::domain_parse_make(body, &peer).is_ok() {
                    self.slots[i].role = Role::DomainOwner;
                }
            }
            (HandleAction::RemoveDomain, Role::DomainOwner) => self.slots[i].role = Role::Control,
            (HandleAction::Hello, Role::Endpoint(bus, ep)) => {
                if let Ok((key, h)) = self.d.hello_on(bus, ep, &peer, body, &mut make_pool) {
                    self.slots[i].role = Role::Conn(key);
                    self.remember(key, h.offset);
                }
            }
            (HandleAction::EndpointMake, Role::Endpoint(bus, None)) => {
                if let Ok((ep, _, _)) = self.d.endpoint_make(bus, &peer, body) {
                    self.slots[i].role = Role::EndpointOwner(bus, ep);
                    // A sandboxed client of the new endpoint.
                    self.push_slot(Role::Endpoint(bus, Some(ep)), 2);
                }
            }
            (HandleAction::EndpointUpdate, Role::EndpointOwner(bus, ep)) => {
                let _ = self.d.endpoint_update(bus, ep, body);
            }
            (HandleAction::Answer(_), _) => {}
            (action, role) => panic!("handle_action gave {action:?} to a handle of role {role:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let bugs = kdbus_core::BUGS.load(std::sync::atomic::Ordering::Relaxed);
    let mut w = World::new();
    let mut rest = data;
    let mut body = Vec::new();
    while rest.len() >= 4 {
        let (op, sel) = (rest[0], rest[1]);
        let len = (u16::from_le_bytes([rest[2], rest[3]]) as usize).min(rest.len() - 4);
        body.clear();
        body.extend_from_slice(&rest[4..4 + len]);
        rest = &rest[4 + len..];
        if op >= 0xf0 {
            w.event(op, sel);
        } else {
            w.request(op, sel, &mut body);
        }
        w.reap();
        w.drain();
    }
    // Whatever is still pending ends with the clock running out.
    advance(&w.clock, 3600 * 1_000_000_000);
    w.d.tick();
    w.drain();
    assert_eq!(
        kdbus_core::BUGS.load(std::sync::atomic::Ordering::Relaxed),
        bugs,
        "the core reported an internal invariant failure"
    );
});
