//! The native hot path makes no allocation per message in the broker's steady state:
//! a unicast, a call and its reply, and a broadcast to ten receivers, each claimed and
//! freed by its receivers as the client library does, allocate nothing inside the
//! domain once its tables and reused buffers are warm.
//!
//! A counting global allocator (for this test binary only) counts allocations while
//! the domain runs a command or hands out its output; the "broker" side of the test
//! (encoding commands, reading records) runs with counting paused. The pool, queue,
//! reply-tracker and outbox structures are all on this path.

#[path = "support/counting.rs"]
mod counting;
use counting::{allocs, counted};

// Shared with the other test binaries, which use other builders of it.
#[allow(dead_code)]
mod encode;

use encode::{HelloOptions, Message};
use kdbus_abi::wire::{self, Frames, MsgEvent, RecHeader};
use kdbus_abi::{cmd, read_struct, recv_flags, CmdFree, CmdMatch, CmdRecv, MsgInfo};
use kdbus_core::domain::Request;
use kdbus_core::{ConnKey, Creds, Domain, ManualClock, Peer, PoolMemory, VecPool};
use std::sync::atomic::Ordering;
use zerocopy::IntoBytes;

const CREDS: Creds = Creds {
    pid: 1,
    uid: 1000,
    gid: 1000,
};

/// A bus in memory, with the broker's side of each connection.
struct Bus {
    d: Domain,
    bus: u64,
    req: u64,
    /// Reused by the "client": command bodies, and what a drain found.
    body: Vec<u8>,
    dirty: Vec<ConnKey>,
    events: Vec<(ConnKey, MsgEvent)>,
    answers: Vec<(ConnKey, u64, i32, CmdRecv)>,
}

impl Bus {
    fn new() -> Bus {
        let mut d = Domain::new(Box::new(ManualClock::new(1_000_000_000)));
        let make = encode::bus_make_body();
        let root = Peer {
            privileged: true,
            ..Default::default()
        };
        let bus = d.bus_make(&root, &make, [7; 16]).unwrap();
        Bus {
            d,
            bus,
            req: 0,
            body: Vec::with_capacity(4096),
            dirty: Vec::new(),
            events: Vec::with_capacity(64),
            answers: Vec::with_capacity(64),
        }
    }

    fn hello(&mut self) -> (ConnKey, u64) {
        let peer = Peer {
            creds: CREDS,
            ..Default::default()
        };
        let mut mk =
            |size: u64| -> Result<Box<dyn PoolMemory>, _> { Ok(Box::new(VecPool::new(size))) };
        // With timestamps: metadata is on the path too.
        let opts = HelloOptions::new()
            .attach_recv(kdbus_abi::attach::TIMESTAMP)
            .pool_size(1 << 20)
            .encode();
        let (key, h) = self.d.hello(self.bus, &peer, &opts, &mut mk).unwrap();
        (key, h.id)
    }

    /// Run the command in `self.body` for `key` (counted if `count`).
    fn run(&mut self, key: ConnKey, c: u32, count: bool) {
        self.req += 1;
        let r = Request {
            cmd: c,
            flags: 0,
            req_id: self.req,
            body: &self.body,
            creds: CREDS,
        };
        let d = &mut self.d;
        let mut fds = Vec::new();
        if count {
            counted(|| d.conn_request(key, &r, &mut fds));
        } else {
            d.conn_request(key, &r, &mut fds);
        }
    }

    fn send(&mut self, key: ConnKey, m: &Message<'_>, count: bool) {
        m.encode_send(0, &mut self.body);
        self.run(key, cmd::SEND, count);
    }

    /// Collect every connection's output: announcements and answers.
    fn drain(&mut self, count: bool) {
        let mut dirty = std::mem::take(&mut self.dirty);
        if count {
            counted(|| self.d.take_dirty(&mut dirty));
        } else {
            self.d.take_dirty(&mut dirty);
        }
        for &k in &dirty {
            let Some((out, fds)) = self.d.conn_output(k) else {
                continue;
            };
            for (h, body) in Frames::<RecHeader>::new(out).flatten() {
                match h.kind {
                    wire::REC_MSG => self.events.push((k, read_struct(body).unwrap())),
                    wire::REC_REPLY => {
                        let wb = read_struct(body).unwrap_or_default();
                        self.answers.push((k, h.req_id, h.error, wb));
                    }
                    _ => {}
                }
            }
            out.clear();
            fds.clear();
            if count {
                counted(|| self.d.conn_output_done(k));
            } else {
                self.d.conn_output_done(k);
            }
        }
        self.dirty = dirty;
    }

    /// Every announced message is claimed and freed by its receiver, as the client
    /// library does.
    fn receive_all(&mut self, count: bool) -> usize {
        self.drain(count);
        let events = std::mem::take(&mut self.events);
        for &(k, ev) in &events {
            let claim = CmdRecv {
                size: std::mem::size_of::<CmdRecv>() as u64,
                flags: recv_flags::CLAIM,
                msg: MsgInfo {
                    offset: ev.offset,
                    ..Default::default()
                },
                ..Default::default()
            };
            self.body.clear();
            self.body.extend_from_slice(claim.as_bytes());
            self.run(k, cmd::RECV, count);
            let free = CmdFree {
                size: std::mem::size_of::<CmdFree>() as u64,
                flags: 0,
                return_flags: 0,
                offset: ev.offset,
            };
            self.body.clear();
            self.body.extend_from_slice(free.as_bytes());
            self.run(k, cmd::FREE, count);
        }
        let n = events.len();
        self.events = events;
        self.events.clear();
        self.drain(count);
        for a in &self.answers {
            assert_eq!(a.2, 0, "command {} of {} failed", a.1, a.0);
        }
        self.answers.clear();
        n
    }
}

/// Run `round` warm, then 1000 times counted; the allocations of the counted rounds.
fn allocations(b: &mut Bus, mut round: impl FnMut(&mut Bus, u64, bool)) -> usize {
    for i in 1..200 {
        round(b, i, false);
    }
    let before = allocs();
    for i in 200..1200 {
        round(b, i, true);
    }
    allocs() - before
}

// One test function: the allocator's count is process-wide, so the scenarios must not
// run at the same time.
#[test]
fn native_messages_allocate_nothing() {
    // Unicast.
    let mut b = Bus::new();
    let (a, _) = b.hello();
    let (_, cid) = b.hello();
    b.receive_all(false);
    let payload = [7u8; 64];
    let n = allocations(&mut b, |b, i, count| {
        let m = Message::to(cid).cookie(i).priority(i as i64 % 3);
        b.send(a, &m.payload(&payload), count);
        assert_eq!(b.receive_all(count), 1);
    });
    assert_eq!(n, 0, "{n} allocations in 1000 unicasts");

    // A call and its reply.
    let mut b = Bus::new();
    let (a, aid) = b.hello();
    let (c, cid) = b.hello();
    b.receive_all(false);
    let n = allocations(&mut b, |b, i, count| {
        let call = Message::to(cid).cookie(i).expect_reply(u64::MAX / 2);
        b.send(a, &call.payload(&payload), count);
        assert_eq!(b.receive_all(count), 1);
        b.send(c, &Message::to(aid).reply_to(i).payload(&payload), count);
        assert_eq!(b.receive_all(count), 1);
    });
    assert_eq!(n, 0, "{n} allocations in 1000 calls with replies");

    // A broadcast to ten receivers.
    let mut b = Bus::new();
    let (a, _) = b.hello();
    for _ in 0..10 {
        let (k, _) = b.hello();
        let m = CmdMatch {
            size: std::mem::size_of::<CmdMatch>() as u64,
            cookie: 1,
            ..Default::default()
        };
        b.body.clear();
        b.body.extend_from_slice(m.as_bytes());
        b.run(k, cmd::MATCH_ADD, false);
    }
    b.receive_all(false);
    let words = [!0u64; 8];
    let n = allocations(&mut b, |b, i, count| {
        b.send(
            a,
            &Message::broadcast(&words).cookie(i).payload(&payload),
            count,
        );
        assert_eq!(b.receive_all(count), 10);
    });
    assert_eq!(n, 0, "{n} allocations in 1000 broadcasts to ten receivers");
    assert_eq!(kdbus_core::BUGS.load(Ordering::Relaxed), 0);
}
