//! What the soak test's clients exchange and what they write down about it.
//!
//! Every message is a D-Bus message (native clients carry it as a `KDBUS_PAYLOAD_DBUS`
//! payload) whose body is `(u32 sender tag, u64 counter)`, so one parser serves both
//! kinds of receiver and a D-Bus receiver can read what a native sender wrote. A
//! reply's body is `(u32 callee tag, u64 echoed counter)`.
//!
//! Each client keeps a [`ClientLog`] of events. Clients inside the test process log
//! into memory; clients in child processes (the ones that get killed) log one line per
//! event into a file with one `write` each, so a SIGKILL loses at most the event being
//! written, never a buffer of them.
#![allow(dead_code)]

use kdbus::dbus::header::{self, write_fields, Fields, Header, MessageType};
use kdbus::dbus::marshal::{Endian, Reader, Writer};
use std::io::Write;
use std::sync::Mutex;

/// A client of the run: index into the run's client table.
pub type Tag = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Native,
    DBus,
}

pub const PATH: &str = "/org/kdbus/Soak";
pub const IFACE: &str = "org.kdbus.Soak";
pub const SIG_IFACE: &str = "org.kdbus.Soak.Signal";
/// The two broadcast members; subscribers take one or both.
pub const MEMBERS: [&str; 2] = ["Tick", "Tock"];
/// The well-known names handed around.
pub const NAMES: [&str; 2] = ["org.kdbus.Soak.N0", "org.kdbus.Soak.N1"];
/// Method of calls (a reply is expected) and of one-way messages.
pub const CALL: &str = "Call";
pub const NOTE: &str = "Note";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dst {
    /// By unique id, to the client with this tag.
    Id(Tag),
    /// To `NAMES[k]`.
    Name(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    Call(Dst),
    Oneway(Dst),
    /// A broadcast of `MEMBERS[m]`.
    Signal(u8),
}

/// Why a send, a call, a reply or a name request did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fail {
    /// A native errno.
    Errno(i32),
    /// org.freedesktop.DBus.Error.NoReply
    NoReply,
    /// org.freedesktop.DBus.Error.LimitsExceeded
    Limits,
    /// ServiceUnknown / NameHasNoOwner
    Unknown,
    /// Any other failure (its text goes to the log as a stray).
    Other,
    /// The test gave up waiting.
    Timeout,
}

impl Fail {
    /// The bus refused to queue the message, so it cannot have arrived. (A call that
    /// failed because its callee died may well have arrived first.)
    pub fn not_queued(self) -> bool {
        match self {
            Fail::Errno(e) => e != libc::EPIPE && e != libc::ETIMEDOUT,
            Fail::Limits | Fail::Unknown => true,
            Fail::NoReply | Fail::Other | Fail::Timeout => false,
        }
    }

    pub fn from_dbus(name: &str) -> Fail {
        match name {
            "org.freedesktop.DBus.Error.NoReply" => Fail::NoReply,
            "org.freedesktop.DBus.Error.LimitsExceeded" => Fail::Limits,
            "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner" => Fail::Unknown,
            _ => Fail::Other,
        }
    }

    fn encode(self) -> String {
        match self {
            Fail::Errno(e) => format!("e{e}"),
            Fail::NoReply => "nr".into(),
            Fail::Limits => "le".into(),
            Fail::Unknown => "su".into(),
            Fail::Other => "ot".into(),
            Fail::Timeout => "to".into(),
        }
    }

    fn decode(s: &str) -> Option<Fail> {
        Some(match s {
            "nr" => Fail::NoReply,
            "le" => Fail::Limits,
            "su" => Fail::Unknown,
            "ot" => Fail::Other,
            "to" => Fail::Timeout,
            _ => Fail::Errno(s.strip_prefix('e')?.parse().ok()?),
        })
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Errno(e) => write!(f, "{}", kdbus::Errno(*e)),
            other => write!(f, "{other:?}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the bus (one-way messages and broadcasts).
    Ok,
    /// A call's reply.
    Reply {
        callee: Tag,
        echo: u32,
    },
    Fail(Fail),
}

/// How a message reached its receiver, as the receiver saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Id,
    Name(u8),
    Broadcast(u8),
}

/// A message sent, once its send (or call) has returned: `t0`..`t1` brackets it
/// (CLOCK_MONOTONIC, shared by all processes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    pub n: u32,
    pub what: What,
    pub t0: u64,
    pub t1: u64,
    pub out: Outcome,
}

/// A message received, in the order received. `seq` is the kdbus sequence number
/// (native receivers; 0 for D-Bus receivers, which do not see it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Got {
    pub from: Tag,
    pub n: u32,
    /// The unique id the bus says sent it.
    pub src: u32,
    pub via: Via,
    pub seq: u64,
}

/// A reply sent by a callee.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub from: Tag,
    pub n: u32,
    pub t: u64,
    pub fail: Option<Fail>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameResult {
    Owner,
    Queued,
    Released,
    NotDone(Fail),
}

/// An acquire or release of `NAMES[k]`, bracketed by `t0`..`t1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameOp {
    pub k: u8,
    pub acquire: bool,
    pub t0: u64,
    pub t1: u64,
    pub result: NameResult,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ev {
    /// Connected, matches installed, receiving: others may address it from now on.
    Ready {
        id: u64,
        t: u64,
    },
    Sent(Sent),
    /// The bus refused one-way message `n` after the send had returned (a D-Bus
    /// sender learns of it by an error reply).
    Refused {
        n: u32,
        fail: Fail,
    },
    Got(Got),
    Answered(Answer),
    Name(NameOp),
    /// The bus's running count of broadcasts this native receiver lost for lack of
    /// room.
    Dropped(u64),
    /// Something that should not happen, in words.
    Stray(String),
    /// Stopped sending (end of the run).
    Stopped,
}

/// Everything one client wrote down.
#[derive(Clone, Debug, Default)]
pub struct ClientLog {
    pub ready: Option<(u64, u64)>,
    pub sent: Vec<Sent>,
    pub refused: Vec<(u32, Fail)>,
    pub got: Vec<Got>,
    pub answered: Vec<Answer>,
    pub names: Vec<NameOp>,
    pub dropped: u64,
    pub strays: Vec<String>,
    pub stopped: bool,
}

impl ClientLog {
    pub fn push(&mut self, e: Ev) {
        match e {
            Ev::Ready { id, t } => self.ready = Some((id, t)),
            Ev::Sent(s) => self.sent.push(s),
            Ev::Refused { n, fail } => self.refused.push((n, fail)),
            Ev::Got(g) => self.got.push(g),
            Ev::Answered(a) => self.answered.push(a),
            Ev::Name(o) => self.names.push(o),
            Ev::Dropped(d) => self.dropped = self.dropped.max(d),
            Ev::Stray(s) => self.strays.push(s),
            Ev::Stopped => self.stopped = true,
        }
    }

    /// How many events: grows while anything happens (the end of the run waits for
    /// it to stand still).
    pub fn len(&self) -> usize {
        self.sent.len()
            + self.refused.len()
            + self.got.len()
            + self.answered.len()
            + self.names.len()
            + self.strays.len()
    }

    /// Read a log file; a line cut short by a SIGKILL is ignored, a malformed one
    /// becomes a stray.
    pub fn parse(text: &str) -> ClientLog {
        let mut log = ClientLog::default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..i],
            None => "",
        };
        for line in complete.lines() {
            match Ev::decode(line) {
                Some(e) => log.push(e),
                None => log.push(Ev::Stray(format!("malformed log line {line:?}"))),
            }
        }
        log
    }
}

fn dst_encode(d: Dst) -> String {
    match d {
        Dst::Id(t) => format!("i{t}"),
        Dst::Name(k) => format!("n{k}"),
    }
}

fn dst_decode(s: &str) -> Option<Dst> {
    if let Some(t) = s.strip_prefix('i') {
        return Some(Dst::Id(t.parse().ok()?));
    }
    Some(Dst::Name(s.strip_prefix('n')?.parse().ok()?))
}

impl Ev {
    /// One line, without its newline.
    pub fn encode(&self) -> String {
        match self {
            Ev::Ready { id, t } => format!("R {id} {t}"),
            Ev::Sent(s) => {
                let what = match s.what {
                    What::Call(d) => format!("c{}", dst_encode(d)),
                    What::Oneway(d) => format!("o{}", dst_encode(d)),
                    What::Signal(m) => format!("b{m}"),
                };
                let out = match s.out {
                    Outcome::Ok => "ok".to_string(),
                    Outcome::Reply { callee, echo } => format!("r{callee}.{echo}"),
                    Outcome::Fail(f) => format!("f{}", f.encode()),
                };
                format!("S {} {what} {} {} {out}", s.n, s.t0, s.t1)
            }
            Ev::Refused { n, fail } => format!("F {n} {}", fail.encode()),
            Ev::Got(g) => {
                let via = match g.via {
                    Via::Id => "i".to_string(),
                    Via::Name(k) => format!("n{k}"),
                    Via::Broadcast(m) => format!("b{m}"),
                };
                format!("G {} {} {} {via} {}", g.from, g.n, g.src, g.seq)
            }
            Ev::Answered(a) => {
                let f = a.fail.map_or("ok".to_string(), |f| f.encode());
                format!("A {} {} {} {f}", a.from, a.n, a.t)
            }
            Ev::Name(o) => {
                let r = match o.result {
                    NameResult::Owner => "o".to_string(),
                    NameResult::Queued => "q".to_string(),
                    NameResult::Released => "r".to_string(),
                    NameResult::NotDone(f) => format!("f{}", f.encode()),
                };
                let op = if o.acquire { "a" } else { "r" };
                format!("N {} {op} {} {} {r}", o.k, o.t0, o.t1)
            }
            Ev::Dropped(d) => format!("D {d}"),
            Ev::Stray(s) => format!("X {}", s.replace('\n', " ")),
            Ev::Stopped => "P".to_string(),
        }
    }

    pub fn decode(line: &str) -> Option<Ev> {
        let mut it = line.split(' ');
        let kind = it.next()?;
        let mut num = || -> Option<u64> { it.next()?.parse().ok() };
        Some(match kind {
            "R" => Ev::Ready {
                id: num()?,
                t: num()?,
            },
            "D" => Ev::Dropped(num()?),
            "P" => Ev::Stopped,
            "X" => Ev::Stray(line.get(2..).unwrap_or("").to_string()),
            _ => {
                let f: Vec<&str> = line.split(' ').skip(1).collect();
                let u = |i: usize| -> Option<u64> { f.get(i)?.parse().ok() };
                match kind {
                    "S" => {
                        let w = *f.get(1)?;
                        let what = match w.as_bytes().first()? {
                            b'c' => What::Call(dst_decode(&w[1..])?),
                            b'o' => What::Oneway(dst_decode(&w[1..])?),
                            b'b' => What::Signal(w[1..].parse().ok()?),
                            _ => return None,
                        };
                        let o = *f.get(4)?;
                        let out = if o == "ok" {
                            Outcome::Ok
                        } else if let Some(r) = o.strip_prefix('r') {
                            let (c, e) = r.split_once('.')?;
                            Outcome::Reply {
                                callee: c.parse().ok()?,
                                echo: e.parse().ok()?,
                            }
                        } else {
                            Outcome::Fail(Fail::decode(o.strip_prefix('f')?)?)
                        };
                        Ev::Sent(Sent {
                            n: u(0)? as u32,
                            what,
                            t0: u(2)?,
                            t1: u(3)?,
                            out,
                        })
                    }
                    "F" => Ev::Refused {
                        n: u(0)? as u32,
                        fail: Fail::decode(f.get(1)?)?,
                    },
                    "G" => {
                        let v = *f.get(3)?;
                        let via = match v.as_bytes().first()? {
                            b'i' => Via::Id,
                            b'n' => Via::Name(v[1..].parse().ok()?),
                            b'b' => Via::Broadcast(v[1..].parse().ok()?),
                            _ => return None,
                        };
                        Ev::Got(Got {
                            from: u(0)? as Tag,
                            n: u(1)? as u32,
                            src: u(2)? as u32,
                            via,
                            seq: u(4)?,
                        })
                    }
                    "A" => Ev::Answered(Answer {
                        from: u(0)? as Tag,
                        n: u(1)? as u32,
                        t: u(2)?,
                        fail: match *f.get(3)? {
                            "ok" => None,
                            x => Some(Fail::decode(x)?),
                        },
                    }),
                    "N" => Ev::Name(NameOp {
                        k: u(0)? as u8,
                        acquire: match *f.get(1)? {
                            "a" => true,
                            "r" => false,
                            _ => return None,
                        },
                        t0: u(2)?,
                        t1: u(3)?,
                        result: match *f.get(4)? {
                            "o" => NameResult::Owner,
                            "q" => NameResult::Queued,
                            "r" => NameResult::Released,
                            x => NameResult::NotDone(Fail::decode(x.strip_prefix('f')?)?),
                        },
                    }),
                    _ => return None,
                }
            }
        })
    }
}

/// Where a client writes its events.
pub trait Sink: Send + Sync {
    fn ev(&self, e: Ev);
}

/// In memory (clients of the test process, which lives through the run).
#[derive(Default)]
pub struct MemSink(pub Mutex<ClientLog>);

impl Sink for MemSink {
    fn ev(&self, e: Ev) {
        self.0.lock().expect("log lock").push(e);
    }
}

impl MemSink {
    pub fn len(&self) -> usize {
        self.0.lock().expect("log lock").len()
    }
    pub fn take(&self) -> ClientLog {
        std::mem::take(&mut *self.0.lock().expect("log lock"))
    }
}

/// A file, one `write` per event (clients that may be killed at any moment).
pub struct FileSink(Mutex<std::fs::File>);

impl FileSink {
    pub fn create(path: &std::path::Path) -> FileSink {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open log {}: {e}", path.display()));
        FileSink(Mutex::new(f))
    }
}

impl Sink for FileSink {
    fn ev(&self, e: Ev) {
        let mut line = e.encode();
        line.push('\n');
        self.0
            .lock()
            .expect("log lock")
            .write_all(line.as_bytes())
            .expect("write the event log");
    }
}

/// CLOCK_MONOTONIC in ns: one clock for every process of the run.
pub fn now() -> u64 {
    kdbus::monotonic_ns()
}

// ------------------------------------------------------------------ the wire

/// The body `(u32, u64)`, little endian.
pub fn body(tag: Tag, n: u64) -> Vec<u8> {
    let mut b = Vec::new();
    let mut w = Writer::new(&mut b, Endian::Little);
    w.u32(tag);
    w.u64(n);
    b
}

/// A complete D-Bus message with body `(tag, n)`.
pub fn dbus_message(t: MessageType, serial: u32, f: Fields<'_>, tag: Tag, n: u64) -> Vec<u8> {
    let b = body(tag, n);
    let flags = if t == MessageType::MethodCall && f.member == Some(CALL) {
        0
    } else {
        header::FLAG_NO_REPLY_EXPECTED
    };
    let mut out = Vec::new();
    write_fields(
        &mut out,
        Endian::Little,
        t,
        flags,
        b.len() as u32,
        serial,
        &Fields {
            signature: "ut",
            ..f
        },
    );
    out.extend_from_slice(&b);
    out
}

/// A soak message's header and body `(tag, n)`; `None` if it is not one.
pub fn parse(payload: &[u8]) -> Option<(Header<'_>, Tag, u64)> {
    let h = header::parse(payload).ok()?;
    if h.signature != "ut" || h.total_len() > payload.len() {
        return None;
    }
    let mut r = Reader::new(payload.get(h.header_len..h.total_len())?, h.endian);
    let tag = r.u32().ok()?;
    let n = r.u64().ok()?;
    Some((h, tag, n))
}

/// The index of a well-known name of the run.
pub fn name_index(name: &str) -> Option<u8> {
    NAMES.iter().position(|n| *n == name).map(|k| k as u8)
}

pub fn member_index(member: &str) -> Option<u8> {
    MEMBERS.iter().position(|m| *m == member).map(|k| k as u8)
}

/// `:1.<id>` to the id.
pub fn id_of_unique(unique: &str) -> Option<u64> {
    unique.strip_prefix(":1.")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_the_log_file() {
        let evs = [
            Ev::Ready { id: 7, t: 99 },
            Ev::Sent(Sent {
                n: 3,
                what: What::Call(Dst::Name(1)),
                t0: 1,
                t1: 2,
                out: Outcome::Reply { callee: 4, echo: 3 },
            }),
            Ev::Sent(Sent {
                n: 4,
                what: What::Oneway(Dst::Id(9)),
                t0: 1,
                t1: 2,
                out: Outcome::Fail(Fail::Errno(105)),
            }),
            Ev::Sent(Sent {
                n: 5,
                what: What::Signal(1),
                t0: 1,
                t1: 2,
                out: Outcome::Ok,
            }),
            Ev::Refused {
                n: 4,
                fail: Fail::Limits,
            },
            Ev::Got(Got {
                from: 2,
                n: 8,
                src: 12,
                via: Via::Broadcast(0),
                seq: 77,
            }),
            Ev::Answered(Answer {
                from: 2,
                n: 8,
                t: 5,
                fail: Some(Fail::NoReply),
            }),
            Ev::Name(NameOp {
                k: 1,
                acquire: true,
                t0: 3,
                t1: 4,
                result: NameResult::NotDone(Fail::Errno(17)),
            }),
            Ev::Dropped(3),
            Ev::Stray("odd thing".into()),
            Ev::Stopped,
        ];
        for e in evs {
            assert_eq!(Ev::decode(&e.encode()), Some(e.clone()), "{}", e.encode());
        }
        let log = ClientLog::parse("R 1 2\nG 1 2 3 i 0\nG 1 3 3 i");
        assert_eq!(log.got.len(), 1, "the cut-off last line is ignored");
        assert_eq!(log.ready, Some((1, 2)));
    }

    #[test]
    fn bodies_round_trip() {
        let m = dbus_message(
            MessageType::MethodCall,
            5,
            Fields {
                path: Some(PATH),
                interface: Some(IFACE),
                member: Some(CALL),
                destination: Some(":1.4"),
                ..Default::default()
            },
            9,
            1 << 40,
        );
        let (h, tag, n) = parse(&m).expect("parses");
        assert_eq!((tag, n), (9, 1 << 40));
        assert_eq!(h.member, Some(CALL));
        assert!(!h.no_reply_expected());
    }
}
