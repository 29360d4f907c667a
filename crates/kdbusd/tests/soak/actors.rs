//! The clients of the soak test, native (the `kdbus` crate) and D-Bus (zbus), used
//! alike by the test process and by the child processes that get killed.
//!
//! A client is a receiver, always running in a thread of its own (it answers calls
//! and writes down every soak message it gets), and a sender, [`send_loop`], that
//! picks what to do at random: calls, one-way messages, broadcasts, name requests.
//! The sender does one thing at a time, so a client's counter also orders its
//! messages, and a client killed mid-send can have at most one message it did not
//! get to write down.
#![allow(dead_code)]

use crate::common::Rng;
use crate::model::*;
use kdbus::abi::{self, attach, item, name_flags, read_struct, Timestamp};
use kdbus::bloom::{match_mask, signal_filter, Bloom, BloomParameter, MatchSpec, SignalSpec};
use kdbus::dbus::header::{Fields, MessageType};
use kdbus::{Connection, Errno, HelloOptions, MatchRule, Message};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;
use zbus::blocking::{connection::Builder, Connection as ZConn, MessageIterator};
use zbus::message::{Flags, Message as ZMsg, Type as MsgType};

/// Longer than the bus's own reply timeout (25 s): a call that times out on our side
/// means the bus lost track of it.
pub const CALL_WAIT: Duration = Duration::from_secs(40);
const DRIVER: &str = "org.freedesktop.DBus";
const DRIVER_PATH: &str = "/org/freedesktop/DBus";

/// Someone a sender may address by unique id.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub tag: Tag,
    pub kind: Kind,
    pub id: u64,
}

pub type Targets = Arc<RwLock<Vec<Target>>>;

/// Which broadcasts a client subscribes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub {
    Tick,
    Both,
    Tock,
}

impl Sub {
    pub const ALL: [Sub; 3] = [Sub::Tick, Sub::Both, Sub::Tock];

    fn member(self) -> Option<&'static str> {
        match self {
            Sub::Tick => Some(MEMBERS[0]),
            Sub::Both => None,
            Sub::Tock => Some(MEMBERS[1]),
        }
    }

    fn mask(self, p: BloomParameter) -> Bloom {
        let spec = MatchSpec {
            message_type: Some("signal"),
            interface: Some(SIG_IFACE),
            member: self.member(),
            ..Default::default()
        };
        match_mask(p, &spec).expect("a rule with an interface has a bloom mask")
    }

    /// What a native subscription takes: what its bloom mask lets through, which may
    /// be more than the member asked for (bloom filters have false positives).
    pub fn takes_native(self, p: BloomParameter) -> [bool; 2] {
        let mask = self.mask(p);
        [0, 1].map(|m| filter(p, m).covers(&mask))
    }

    /// What a D-Bus match rule takes: exactly what it says.
    pub fn takes_dbus(self) -> [bool; 2] {
        match self {
            Sub::Tick => [true, false],
            Sub::Both => [true, true],
            Sub::Tock => [false, true],
        }
    }

    pub fn takes(self, kind: Kind, p: BloomParameter) -> [bool; 2] {
        match kind {
            Kind::Native => self.takes_native(p),
            Kind::DBus => self.takes_dbus(),
        }
    }

    fn dbus_rule(self) -> String {
        let mut r = format!("type='signal',interface='{SIG_IFACE}'");
        if let Some(m) = self.member() {
            r.push_str(&format!(",member='{m}'"));
        }
        r
    }

    pub fn index(self) -> usize {
        Sub::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }
}

/// The bloom filter of broadcast `MEMBERS[m]`, as sd-bus (and the bus, for a D-Bus
/// sender's signal) computes it.
fn filter(p: BloomParameter, m: usize) -> Bloom {
    signal_filter(
        p,
        &SignalSpec {
            interface: Some(SIG_IFACE),
            member: Some(MEMBERS[m]),
            path: Some(PATH),
            args: &[],
        },
    )
}

#[derive(Clone, Copy, Debug, Default)]
pub struct NameFlags {
    pub replace: bool,
    pub allow: bool,
    pub queue: bool,
}

/// What the sender loop needs of a client.
pub trait Peer: Send + Sync {
    /// Send message `n`; `dst_id` is the destination's unique id for `Dst::Id`.
    fn send(&self, n: u32, what: What, dst_id: u64) -> Outcome;
    fn name(&self, k: u8, acquire: bool, f: NameFlags) -> NameResult;
    fn sink(&self) -> &dyn Sink;
}

/// How a sender behaves.
pub struct Plan {
    pub tag: Tag,
    pub seed: u64,
    /// Mean pause between two actions.
    pub gap_ms: u64,
    /// The names it acquires and releases (a fallback owner leaves its own alone).
    pub juggles: [bool; 2],
    pub targets: Targets,
    pub stop: Arc<AtomicBool>,
}

pub fn below(rng: &mut Rng, n: u64) -> u64 {
    rng.next_u64() % n.max(1)
}

/// A seed for `Rng` (which must not be 0) from a run seed and a client.
pub fn rng_for(seed: u64, tag: Tag) -> Rng {
    let mut z = seed ^ (tag as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    Rng((z ^ (z >> 31)) | 1)
}

/// Send at random until `plan.stop`: 30 % calls by id, 20 % one-way by id, 25 %
/// broadcasts, 10 % calls to a name, 5 % one-way to a name, 10 % name requests.
pub fn send_loop(p: &dyn Peer, plan: &Plan) {
    let mut rng = rng_for(plan.seed, plan.tag);
    let mut n = 0u32;
    let mut held = [false; 2];
    while !plan.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(below(&mut rng, 2 * plan.gap_ms + 1)));
        let targets: Vec<Target> = plan
            .targets
            .read()
            .expect("targets lock")
            .iter()
            .filter(|t| t.tag != plan.tag)
            .copied()
            .collect();
        let roll = below(&mut rng, 100);
        let pick = |rng: &mut Rng| targets[below(rng, targets.len() as u64) as usize];
        let (what, dst_id) = match roll {
            0..=29 if !targets.is_empty() => {
                let t = pick(&mut rng);
                (What::Call(Dst::Id(t.tag)), t.id)
            }
            30..=49 if !targets.is_empty() => {
                let t = pick(&mut rng);
                (What::Oneway(Dst::Id(t.tag)), t.id)
            }
            0..=74 => (What::Signal(below(&mut rng, 2) as u8), 0),
            75..=84 => (What::Call(Dst::Name(below(&mut rng, 2) as u8)), 0),
            85..=89 => (What::Oneway(Dst::Name(below(&mut rng, 2) as u8)), 0),
            _ => {
                name_step(p, plan, &mut rng, &mut held);
                continue;
            }
        };
        n += 1;
        let t0 = now();
        let out = p.send(n, what, dst_id);
        let t1 = now();
        p.sink().ev(Ev::Sent(Sent {
            n,
            what,
            t0,
            t1,
            out,
        }));
    }
    p.sink().ev(Ev::Stopped);
}

/// Acquire a name it does not hold (with random flags), or release one it does.
fn name_step(p: &dyn Peer, plan: &Plan, rng: &mut Rng, held: &mut [bool; 2]) {
    let ks: Vec<u8> = (0..2u8).filter(|&k| plan.juggles[k as usize]).collect();
    if ks.is_empty() {
        return;
    }
    let k = ks[below(rng, ks.len() as u64) as usize];
    let acquire = !held[k as usize];
    let bits = below(rng, 8);
    let f = NameFlags {
        replace: bits & 1 != 0,
        allow: bits & 2 != 0,
        queue: bits & 4 != 0,
    };
    let t0 = now();
    let result = p.name(k, acquire, f);
    let t1 = now();
    held[k as usize] = match result {
        NameResult::Owner | NameResult::Queued => true,
        NameResult::NotDone(Fail::Errno(libc::EALREADY)) => true,
        NameResult::Released | NameResult::NotDone(_) => false,
    };
    p.sink().ev(Ev::Name(NameOp {
        k,
        acquire,
        t0,
        t1,
        result,
    }));
}

// ------------------------------------------------------------------ native

pub struct NativePeer {
    pub conn: Connection,
    tag: Tag,
    filters: [Bloom; 2],
    reply_serial: AtomicU32,
    /// Replies wait up to this long (victims: so that a kill finds calls pending).
    reply_delay_ms: AtomicU32,
    log: Arc<dyn Sink>,
}

/// A pause of up to `max_ms` before answering call `n` (0 when `max_ms` is 0).
fn reply_delay(max_ms: u32, n: u32) -> Duration {
    let spread = (n as u64).wrapping_mul(0x9e37_79b9) >> 7;
    Duration::from_millis(spread % (max_ms as u64 + 1))
}

impl NativePeer {
    pub fn set_reply_delay(&self, max_ms: u32) {
        self.reply_delay_ms.store(max_ms, Ordering::Relaxed);
    }

    /// HELLO (sequence numbers attached to what it receives) and the match of `sub`.
    pub fn connect(
        bus: &Path,
        tag: Tag,
        sub: Sub,
        log: Arc<dyn Sink>,
    ) -> kdbus::Result<Arc<NativePeer>> {
        let opts = HelloOptions::new()
            .attach_recv(attach::TIMESTAMP)
            .description(&format!("soak-{tag}"));
        let conn = Connection::hello(bus, &opts)?;
        conn.add_match(1, &MatchRule::new().bloom(&sub.mask(conn.bloom())), false)?;
        let filters = [0, 1].map(|m| filter(conn.bloom(), m));
        Ok(Arc::new(NativePeer {
            conn,
            tag,
            filters,
            // Away from the senders' counters, which are cookies too.
            reply_serial: AtomicU32::new(1 << 31),
            reply_delay_ms: AtomicU32::new(0),
            log,
        }))
    }

    /// The receiver thread, until `stop`.
    pub fn receive(self: &Arc<Self>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
        let me = self.clone();
        std::thread::spawn(move || me.receive_loop(&stop))
    }

    fn receive_loop(&self, stop: &AtomicBool) {
        let mut dropped = 0;
        while !stop.load(Ordering::SeqCst) {
            let m = match self.conn.recv_timeout(Some(Duration::from_millis(100))) {
                Ok(m) => m,
                Err(e) if e.errno() == Errno::EAGAIN => continue,
                Err(e) => {
                    if !stop.load(Ordering::SeqCst) {
                        self.log.ev(Ev::Stray(format!("receive failed: {e}")));
                    }
                    return;
                }
            };
            let d = self.conn.dropped_msgs();
            if d != dropped {
                dropped = d;
                self.log.ev(Ev::Dropped(d));
            }
            if m.header().payload_type == abi::payload::KERNEL {
                self.log.ev(Ev::Stray(format!(
                    "unexpected bus notification {:#x?} (cookie_reply {})",
                    m.kernel_item(),
                    m.cookie_reply()
                )));
                continue;
            }
            let seq = m
                .item(item::TIMESTAMP)
                .and_then(read_struct::<Timestamp>)
                .map_or(0, |t| t.seqnum);
            let payload = m.payload_bytes();
            let Some((h, from, n)) = parse(&payload) else {
                self.log.ev(Ev::Stray(format!(
                    "not a soak message from id {}",
                    m.src_id()
                )));
                continue;
            };
            // (A call's header field holds its deadline instead.)
            if !m.expects_reply() && m.cookie_reply() != 0 {
                // Replies to synchronous calls never enter the queue.
                self.log.ev(Ev::Stray(format!(
                    "a reply in the queue: to cookie {} from #{from} (id {})",
                    m.cookie_reply(),
                    m.src_id()
                )));
                continue;
            }
            let via = if m.dst_id() == abi::DST_ID_BROADCAST {
                match h.member.and_then(member_index) {
                    Some(k) => Via::Broadcast(k),
                    None => {
                        self.log
                            .ev(Ev::Stray(format!("broadcast of member {:?}", h.member)));
                        continue;
                    }
                }
            } else if let Some(name) = m.item(item::DST_NAME) {
                let name = std::str::from_utf8(name)
                    .unwrap_or("")
                    .trim_end_matches('\0');
                match name_index(name) {
                    Some(k) => Via::Name(k),
                    None => {
                        self.log.ev(Ev::Stray(format!("message to name {name:?}")));
                        continue;
                    }
                }
            } else {
                Via::Id
            };
            let n = n as u32;
            self.log.ev(Ev::Got(Got {
                from,
                n,
                src: m.src_id() as u32,
                via,
                seq,
            }));
            if m.expects_reply() {
                let (src, cookie) = (m.src_id(), m.cookie());
                drop(m);
                std::thread::sleep(reply_delay(self.reply_delay_ms.load(Ordering::Relaxed), n));
                let fail = self.reply(src, cookie, n).err();
                self.log.ev(Ev::Answered(Answer {
                    from,
                    n,
                    t: now(),
                    fail,
                }));
            }
        }
    }

    fn reply(&self, src: u64, cookie: u64, n: u32) -> Result<(), Fail> {
        let rs = self.reply_serial.fetch_add(1, Ordering::Relaxed);
        let dest = format!(":1.{src}");
        let bytes = dbus_message(
            MessageType::MethodReturn,
            rs,
            Fields {
                reply_serial: Some(cookie as u32),
                destination: Some(&dest),
                ..Default::default()
            },
            self.tag,
            n as u64,
        );
        self.conn
            .send(
                &Message::to(src)
                    .cookie(rs as u64)
                    .reply_to(cookie)
                    .payload(&bytes),
            )
            .map_err(|e| Fail::Errno(e.errno().0))
    }

    /// The outcome of a call from its reply's payload.
    fn reply_outcome(&self, payload: &[u8]) -> Outcome {
        match parse(payload) {
            Some((h, callee, echo)) if h.msg_type == MessageType::MethodReturn => Outcome::Reply {
                callee,
                echo: echo as u32,
            },
            _ => match kdbus::dbus::header::parse(payload) {
                Ok(h) if h.msg_type == MessageType::Error => {
                    let name = h.error_name.unwrap_or("");
                    let f = Fail::from_dbus(name);
                    if f == Fail::Other {
                        self.log.ev(Ev::Stray(format!("a call failed with {name}")));
                    }
                    Outcome::Fail(f)
                }
                _ => {
                    self.log.ev(Ev::Stray("an unreadable reply".to_string()));
                    Outcome::Fail(Fail::Other)
                }
            },
        }
    }
}

impl Peer for NativePeer {
    fn send(&self, n: u32, what: What, dst_id: u64) -> Outcome {
        let unique;
        let (msg, dest) = match what {
            What::Call(d) | What::Oneway(d) => match d {
                Dst::Id(_) => {
                    unique = format!(":1.{dst_id}");
                    (Message::to(dst_id), Some(unique.as_str()))
                }
                Dst::Name(k) => (Message::to_name(NAMES[k as usize]), Some(NAMES[k as usize])),
            },
            What::Signal(m) => (Message::broadcast(&self.filters[m as usize]), None),
        };
        let (t, iface, member) = match what {
            What::Call(_) => (MessageType::MethodCall, IFACE, CALL),
            What::Oneway(_) => (MessageType::MethodCall, IFACE, NOTE),
            What::Signal(m) => (MessageType::Signal, SIG_IFACE, MEMBERS[m as usize]),
        };
        let bytes = dbus_message(
            t,
            n,
            Fields {
                path: Some(PATH),
                interface: Some(iface),
                member: Some(member),
                destination: dest,
                ..Default::default()
            },
            self.tag,
            n as u64,
        );
        let msg = msg.cookie(n as u64).payload(&bytes);
        if let What::Call(_) = what {
            return match self.conn.call(msg, CALL_WAIT) {
                Ok(r) => self.reply_outcome(&r.payload_bytes()),
                Err(e) => Outcome::Fail(Fail::Errno(e.errno().0)),
            };
        }
        match self.conn.send(&msg) {
            Ok(()) => Outcome::Ok,
            Err(e) => Outcome::Fail(Fail::Errno(e.errno().0)),
        }
    }

    fn name(&self, k: u8, acquire: bool, f: NameFlags) -> NameResult {
        let name = NAMES[k as usize];
        if !acquire {
            return match self.conn.release_name(name) {
                Ok(()) => NameResult::Released,
                Err(e) => NameResult::NotDone(Fail::Errno(e.errno().0)),
            };
        }
        let mut flags = 0;
        if f.replace {
            flags |= name_flags::REPLACE_EXISTING;
        }
        if f.allow {
            flags |= name_flags::ALLOW_REPLACEMENT;
        }
        if f.queue {
            flags |= name_flags::QUEUE;
        }
        match self.conn.acquire_name(name, flags) {
            Ok(rf) if rf & name_flags::IN_QUEUE != 0 => NameResult::Queued,
            Ok(_) => NameResult::Owner,
            Err(e) => NameResult::NotDone(Fail::Errno(e.errno().0)),
        }
    }

    fn sink(&self) -> &dyn Sink {
        &*self.log
    }
}

// ------------------------------------------------------------------ D-Bus

/// A zbus connection whose every incoming message goes through one thread of ours:
/// it answers calls, logs receipts, and hands replies to the waiting caller by
/// serial. (zbus's own `call_method` is not used once that thread runs: its reply
/// would reach our thread too and look like a stray.)
pub struct DBusPeer {
    pub conn: ZConn,
    tag: Tag,
    pending: Mutex<HashMap<u32, mpsc::Sender<ZMsg>>>,
    /// Serials of one-way messages, to recognise the bus's refusal of one.
    oneways: Mutex<BTreeMap<u32, u32>>,
    reply_delay_ms: AtomicU32,
    log: Arc<dyn Sink>,
}

impl DBusPeer {
    pub fn set_reply_delay(&self, max_ms: u32) {
        self.reply_delay_ms.store(max_ms, Ordering::Relaxed);
    }

    pub fn connect(
        address: &str,
        tag: Tag,
        sub: Sub,
        log: Arc<dyn Sink>,
    ) -> zbus::Result<Arc<DBusPeer>> {
        let conn = Builder::address(address)?
            .method_timeout(CALL_WAIT)
            .build()?;
        let it = MessageIterator::from(&conn);
        let p = Arc::new(DBusPeer {
            conn,
            tag,
            pending: Mutex::new(HashMap::new()),
            oneways: Mutex::new(BTreeMap::new()),
            reply_delay_ms: AtomicU32::new(0),
            log,
        });
        let me = p.clone();
        std::thread::spawn(move || me.inbox(it));
        // Through our own inbox: the reply of a zbus `call_method` made before the
        // iterator existed could still reach it.
        p.driver("AddMatch", &sub.dbus_rule())
            .map_err(|f| zbus::Error::Failure(format!("AddMatch: {f}")))?;
        Ok(p)
    }

    pub fn id(&self) -> u64 {
        self.conn
            .unique_name()
            .and_then(|u| id_of_unique(u.as_str()))
            .expect("a bus connection has a unique name :1.<id>")
    }

    fn inbox(&self, it: MessageIterator) {
        for m in it {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    self.log.ev(Ev::Stray(format!("D-Bus receive error: {e}")));
                    continue;
                }
            };
            match m.message_type() {
                MsgType::MethodReturn | MsgType::Error => self.route_reply(m),
                MsgType::MethodCall => self.take_call(&m),
                MsgType::Signal => self.take_signal(&m),
            }
        }
    }

    fn route_reply(&self, m: ZMsg) {
        let h = m.header();
        let Some(rs) = h.reply_serial().map(|s| s.get()) else {
            self.log
                .ev(Ev::Stray("a reply without reply serial".into()));
            return;
        };
        let waiter = self.pending.lock().expect("pending lock").remove(&rs);
        if let Some(tx) = waiter {
            let _ = tx.send(m.clone());
            return;
        }
        let err = h.error_name().map(|e| e.to_string());
        let oneway = self.oneways.lock().expect("oneways lock").remove(&rs);
        match (oneway, err) {
            (Some(n), Some(e)) => {
                let fail = Fail::from_dbus(&e);
                if fail == Fail::Other {
                    self.log
                        .ev(Ev::Stray(format!("one-way {n} refused with {e}")));
                }
                self.log.ev(Ev::Refused { n, fail });
            }
            (_, err) => self.log.ev(Ev::Stray(format!(
                "a reply nobody waits for: reply serial {rs}, error {err:?}, from {:?}",
                h.sender().map(|s| s.to_string())
            ))),
        }
    }

    /// Sender tag, counter and unique id of a soak message.
    fn soak_body(&self, m: &ZMsg) -> Option<(Tag, u32, u32)> {
        let (from, n) = match m.body().deserialize::<(u32, u64)>() {
            Ok(x) => x,
            Err(e) => {
                self.log
                    .ev(Ev::Stray(format!("an unreadable soak message: {e}")));
                return None;
            }
        };
        let src = m
            .header()
            .sender()
            .and_then(|s| id_of_unique(s.as_str()))
            .unwrap_or(0);
        Some((from, n as u32, src as u32))
    }

    fn take_call(&self, m: &ZMsg) {
        let h = m.header();
        if h.interface().map(|i| i.as_str()) != Some(IFACE) {
            self.log.ev(Ev::Stray(format!(
                "a call of {:?}.{:?}",
                h.interface().map(|i| i.to_string()),
                h.member().map(|i| i.to_string())
            )));
            return;
        }
        let Some((from, n, src)) = self.soak_body(m) else {
            return;
        };
        let via = match h.destination().map(|d| d.to_string()) {
            Some(d) if d.starts_with(':') => Via::Id,
            Some(d) => match name_index(&d) {
                Some(k) => Via::Name(k),
                None => {
                    self.log.ev(Ev::Stray(format!("a call to {d}")));
                    return;
                }
            },
            None => {
                self.log.ev(Ev::Stray("a call without destination".into()));
                return;
            }
        };
        self.log.ev(Ev::Got(Got {
            from,
            n,
            src,
            via,
            seq: 0,
        }));
        let wants_reply = !m.primary_header().flags().contains(Flags::NoReplyExpected);
        if wants_reply {
            std::thread::sleep(reply_delay(self.reply_delay_ms.load(Ordering::Relaxed), n));
            let r = self.conn.reply(&h, &(self.tag, n as u64));
            if let Err(e) = &r {
                self.log.ev(Ev::Stray(format!("reply failed: {e}")));
            }
            self.log.ev(Ev::Answered(Answer {
                from,
                n,
                t: now(),
                fail: r.err().map(|_| Fail::Other),
            }));
        }
    }

    fn take_signal(&self, m: &ZMsg) {
        let h = m.header();
        if h.interface().map(|i| i.as_str()) != Some(SIG_IFACE) {
            // The driver's NameAcquired and NameLost.
            return;
        }
        let Some(k) = h.member().and_then(|x| member_index(x.as_str())) else {
            self.log.ev(Ev::Stray(format!("a signal {:?}", h.member())));
            return;
        };
        if h.destination().is_some() {
            self.log
                .ev(Ev::Stray("a soak signal with a destination".into()));
        }
        let Some((from, n, src)) = self.soak_body(m) else {
            return;
        };
        self.log.ev(Ev::Got(Got {
            from,
            n,
            src,
            via: Via::Broadcast(k),
            seq: 0,
        }));
    }

    /// Send a method call and wait for its reply (or error) through the inbox.
    fn call(&self, m: ZMsg) -> Result<ZMsg, Fail> {
        let serial = m.primary_header().serial_num().get();
        let (tx, rx) = mpsc::channel();
        self.pending
            .lock()
            .expect("pending lock")
            .insert(serial, tx);
        if let Err(e) = self.conn.send(&m) {
            self.pending.lock().expect("pending lock").remove(&serial);
            self.log
                .ev(Ev::Stray(format!("sending a call failed: {e}")));
            return Err(Fail::Other);
        }
        match rx.recv_timeout(CALL_WAIT) {
            Ok(r) => Ok(r),
            Err(_) => {
                self.pending.lock().expect("pending lock").remove(&serial);
                Err(Fail::Timeout)
            }
        }
    }

    fn fail_of(&self, r: &ZMsg, what: &str) -> Fail {
        let name = r
            .header()
            .error_name()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let f = Fail::from_dbus(&name);
        if f == Fail::Other {
            self.log
                .ev(Ev::Stray(format!("{what} failed with {name:?}")));
        }
        f
    }

    fn build(&self, what: What, n: u32, dst_id: u64) -> zbus::Result<ZMsg> {
        let body = (self.tag, n as u64);
        let dest = |d: Dst| match d {
            Dst::Id(_) => format!(":1.{dst_id}"),
            Dst::Name(k) => NAMES[k as usize].to_string(),
        };
        match what {
            What::Call(d) => {
                let dest = dest(d);
                ZMsg::method_call(PATH, CALL)?
                    .destination(dest.as_str())?
                    .interface(IFACE)?
                    .build(&body)
            }
            What::Oneway(d) => {
                let dest = dest(d);
                ZMsg::method_call(PATH, NOTE)?
                    .destination(dest.as_str())?
                    .interface(IFACE)?
                    .with_flags(Flags::NoReplyExpected)?
                    .build(&body)
            }
            What::Signal(m) => ZMsg::signal(PATH, SIG_IFACE, MEMBERS[m as usize])?.build(&body),
        }
    }

    /// Call the bus driver; its reply, or why there is none.
    fn driver<B>(&self, member: &str, body: &B) -> Result<ZMsg, Fail>
    where
        B: zbus::export::serde::Serialize + zbus::zvariant::DynamicType,
    {
        let m = ZMsg::method_call(DRIVER_PATH, member)
            .and_then(|b| b.destination(DRIVER))
            .and_then(|b| b.interface(DRIVER))
            .and_then(|b| b.build(body))
            .map_err(|e| {
                self.log.ev(Ev::Stray(format!("building {member}: {e}")));
                Fail::Other
            })?;
        let r = self.call(m)?;
        if r.message_type() == MsgType::Error {
            return Err(self.fail_of(&r, member));
        }
        Ok(r)
    }

    fn driver_call(&self, member: &str, name: &str, flags: Option<u32>) -> Result<u32, Fail> {
        let r = match flags {
            Some(f) => self.driver(member, &(name, f))?,
            None => self.driver(member, &name)?,
        };
        r.body().deserialize::<u32>().map_err(|e| {
            self.log.ev(Ev::Stray(format!("{member} answered {e}")));
            Fail::Other
        })
    }
}

impl Peer for DBusPeer {
    fn send(&self, n: u32, what: What, dst_id: u64) -> Outcome {
        let m = match self.build(what, n, dst_id) {
            Ok(m) => m,
            Err(e) => {
                self.log.ev(Ev::Stray(format!("building {what:?}: {e}")));
                return Outcome::Fail(Fail::Other);
            }
        };
        match what {
            What::Call(_) => match self.call(m) {
                Ok(r) if r.message_type() == MsgType::MethodReturn => {
                    match r.body().deserialize::<(u32, u64)>() {
                        Ok((callee, echo)) => Outcome::Reply {
                            callee,
                            echo: echo as u32,
                        },
                        Err(e) => {
                            self.log.ev(Ev::Stray(format!("an unreadable reply: {e}")));
                            Outcome::Fail(Fail::Other)
                        }
                    }
                }
                Ok(r) => Outcome::Fail(self.fail_of(&r, "a call")),
                Err(f) => Outcome::Fail(f),
            },
            What::Oneway(_) | What::Signal(_) => {
                let serial = m.primary_header().serial_num().get();
                if let What::Oneway(_) = what {
                    let mut o = self.oneways.lock().expect("oneways lock");
                    o.insert(serial, n);
                    // A refusal comes within moments; keep the map small.
                    while o.len() > 4096 {
                        o.pop_first();
                    }
                }
                match self.conn.send(&m) {
                    Ok(()) => Outcome::Ok,
                    Err(e) => {
                        self.log
                            .ev(Ev::Stray(format!("sending {what:?} failed: {e}")));
                        Outcome::Fail(Fail::Other)
                    }
                }
            }
        }
    }

    fn name(&self, k: u8, acquire: bool, f: NameFlags) -> NameResult {
        let name = NAMES[k as usize];
        if acquire {
            // D-Bus: 1 allow replacement, 2 replace existing, 4 do not queue.
            let flags = (f.allow as u32) | (f.replace as u32) << 1 | (!f.queue as u32) << 2;
            match self.driver_call("RequestName", name, Some(flags)) {
                Ok(1) => NameResult::Owner,
                Ok(2) => NameResult::Queued,
                Ok(3) => NameResult::NotDone(Fail::Errno(libc::EEXIST)),
                Ok(4) => NameResult::NotDone(Fail::Errno(libc::EALREADY)),
                Ok(_) => NameResult::NotDone(Fail::Other),
                Err(f) => NameResult::NotDone(f),
            }
        } else {
            match self.driver_call("ReleaseName", name, None) {
                Ok(1) => NameResult::Released,
                Ok(2) => NameResult::NotDone(Fail::Errno(libc::ESRCH)),
                Ok(3) => NameResult::NotDone(Fail::Errno(libc::EADDRINUSE)),
                Ok(_) => NameResult::NotDone(Fail::Other),
                Err(f) => NameResult::NotDone(f),
            }
        }
    }

    fn sink(&self) -> &dyn Sink {
        &*self.log
    }
}
