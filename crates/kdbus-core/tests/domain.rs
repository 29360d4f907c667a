//! The bus model driven directly: no sockets, a manual clock, heap-backed pools.

// Shared with the other test binaries, which use other builders of it.
#[allow(dead_code)]
mod encode;

use encode::{peer, HelloOptions, Message};
use kdbus_abi::wire::{self, Frames, MsgEvent, RecHeader};
use kdbus_abi::{
    attach, cmd, item, read_struct, recv_flags, send_flags, CmdFree, CmdRecv, CmdSend, Errno, Msg,
};
use kdbus_core::domain::Request;
use kdbus_core::{ConnKey, Creds, Domain, ManualClock, PoolMemory, VecPool};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use zerocopy::IntoBytes;

/// Pools stay readable by the test after the domain takes them.
#[derive(Clone)]
struct SharedPool(Rc<RefCell<VecPool>>);

impl PoolMemory for SharedPool {
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.borrow_mut().write(offset, data)
    }
    fn size(&self) -> u64 {
        self.0.borrow().size()
    }
    fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        self.0.borrow().read(offset, len)
    }
}

struct Bus {
    d: Domain,
    clock: ManualClock,
    bus: u64,
    pools: HashMap<ConnKey, SharedPool>,
    req: u64,
}

#[derive(Debug)]
struct Rec {
    kind: u16,
    error: i32,
    req_id: u64,
    body: Vec<u8>,
}

impl Bus {
    fn new() -> Bus {
        let clock = ManualClock::new(1_000_000_000);
        let mut d = Domain::new(Box::new(clock.clone()));
        let body = encode::bus_make_body();
        let bus = d.bus_make(&peer(0), &body, [7; 16]).unwrap();
        Bus {
            d,
            clock,
            bus,
            pools: HashMap::new(),
            req: 0,
        }
    }

    fn hello_with(&mut self, uid: u32, opts: &HelloOptions) -> Result<(ConnKey, u64), Errno> {
        let mut made = None;
        let mut mk = |size: u64| -> Result<Box<dyn PoolMemory>, Errno> {
            let p = SharedPool(Rc::new(RefCell::new(VecPool::new(size))));
            made = Some(p.clone());
            Ok(Box::new(p))
        };
        let (key, h) = self
            .d
            .hello(self.bus, &peer(uid), &opts.encode(), &mut mk)?;
        self.pools.insert(key, made.unwrap());
        Ok((key, h.id))
    }

    fn hello(&mut self) -> (ConnKey, u64) {
        self.hello_with(1000, &HelloOptions::new().attach_recv(attach::TIMESTAMP))
            .unwrap()
    }

    fn request(&mut self, key: ConnKey, c: u32, body: &[u8]) -> u64 {
        self.req += 1;
        let r = Request {
            cmd: c,
            flags: 0,
            req_id: self.req,
            body,
            creds: Creds {
                pid: 1,
                uid: 1000,
                gid: 1000,
            },
        };
        self.d.conn_request(key, &r, &mut Vec::new());
        self.req
    }

    fn send(&mut self, key: ConnKey, m: &Message<'_>, flags: u64) -> u64 {
        let mut body = Vec::new();
        m.encode_send(flags, &mut body);
        self.request(key, cmd::SEND, &body)
    }

    fn records(&mut self, key: ConnKey) -> Vec<Rec> {
        let (out, fds) = self.d.conn_output(key).unwrap();
        let recs = Frames::<RecHeader>::new(out)
            .flatten()
            .map(|(h, b)| Rec {
                kind: h.kind,
                error: h.error,
                req_id: h.req_id,
                body: b.to_vec(),
            })
            .collect();
        out.clear();
        fds.clear();
        recs
    }

    fn answer(&mut self, key: ConnKey, req: u64) -> Rec {
        self.records(key)
            .into_iter()
            .find(|r| r.kind == wire::REC_REPLY && r.req_id == req)
            .expect("answer")
    }

    fn pool_msg(&self, key: ConnKey, offset: u64) -> (Msg, Vec<u8>) {
        let p = &self.pools[&key];
        let hdr: Msg = read_struct(&p.read(offset, 64).unwrap()).unwrap();
        (hdr, p.read(offset, hdr.size as usize).unwrap())
    }
}

fn events(recs: &[Rec]) -> Vec<MsgEvent> {
    recs.iter()
        .filter(|r| r.kind == wire::REC_MSG)
        .map(|r| read_struct(&r.body).unwrap())
        .collect()
}

#[test]
fn ids_count_from_one_and_are_never_reused() {
    let mut b = Bus::new();
    let (k1, id1) = b.hello();
    let (_, id2) = b.hello();
    assert_eq!((id1, id2), (1, 2));
    b.d.conn_release(k1);
    let (_, id3) = b.hello();
    assert_eq!(id3, 3);
}

#[test]
fn unicast_is_written_to_the_pool_announced_and_claimed() {
    let mut b = Bus::new();
    let (a, _) = b.hello();
    let (c, cid) = b.hello();
    b.records(c);
    let r = b.send(a, &Message::to(cid).cookie(5).payload(b"abc"), 0);
    assert_eq!(b.answer(a, r).error, 0);
    let ev = events(&b.records(c));
    assert_eq!(ev.len(), 1);
    let (hdr, bytes) = b.pool_msg(c, ev[0].offset);
    assert_eq!((hdr.src_id, hdr.cookie), (1, 5));
    // The slice is the header, padded, then the payload vector, padded.
    assert_eq!(ev[0].msg_size, kdbus_abi::align8(hdr.size) + 8);
    let off = kdbus_abi::ItemIter::received(&bytes[64..])
        .flatten()
        .find(|i| i.type_ == item::PAYLOAD_OFF)
        .unwrap();
    let v: kdbus_abi::Vec_ = read_struct(off.payload).unwrap();
    assert_eq!(v.size, 3);
    assert_eq!(
        b.pools[&c]
            .read(ev[0].offset + v.address_or_offset, 3)
            .unwrap(),
        b"abc"
    );
    // A TIMESTAMP item carries the message's sequence number.
    let ts = kdbus_abi::ItemIter::received(&bytes[64..])
        .flatten()
        .find(|i| i.type_ == item::TIMESTAMP)
        .unwrap();
    let ts: kdbus_abi::Timestamp = read_struct(ts.payload).unwrap();
    assert_eq!(ts.seqnum, ev[0].seq);
    // Not yet claimed: FREE is refused, BYEBYE is busy.
    let f = b.request(
        c,
        cmd::FREE,
        CmdFree {
            size: 32,
            offset: ev[0].offset,
            ..Default::default()
        }
        .as_bytes(),
    );
    assert_eq!(b.answer(c, f).error, Errno::EINVAL.0);
    let claim = CmdRecv {
        size: 64,
        flags: recv_flags::CLAIM,
        msg: kdbus_abi::MsgInfo {
            offset: ev[0].offset,
            ..Default::default()
        },
        ..Default::default()
    };
    let r = b.request(c, cmd::RECV, claim.as_bytes());
    assert_eq!(b.answer(c, r).error, 0);
    let f = b.request(
        c,
        cmd::FREE,
        CmdFree {
            size: 32,
            offset: ev[0].offset,
            ..Default::default()
        }
        .as_bytes(),
    );
    assert_eq!(b.answer(c, f).error, 0);
    let f = b.request(
        c,
        cmd::FREE,
        CmdFree {
            size: 32,
            offset: ev[0].offset,
            ..Default::default()
        }
        .as_bytes(),
    );
    assert_eq!(b.answer(c, f).error, Errno::ENXIO.0);
}

#[test]
fn unanswered_request_times_out_on_the_clock() {
    let mut b = Bus::new();
    let (a, _) = b.hello();
    let (_c, cid) = b.hello();
    let now = b.clock.now_ns();
    for (i, ms) in [300u64, 100, 200].iter().enumerate() {
        let m = Message::to(cid)
            .cookie(10 + i as u64)
            .expect_reply(now + ms * 1_000_000);
        let r = b.send(a, &m, 0);
        assert_eq!(b.answer(a, r).error, 0);
    }
    assert_eq!(b.d.next_deadline(), Some(now + 100_000_000));
    b.clock.advance(150_000_000);
    b.d.tick();
    let ev = events(&b.records(a));
    assert_eq!(ev.len(), 1, "only the 100 ms request expired");
    let (hdr, bytes) = b.pool_msg(a, ev[0].offset);
    assert_eq!((hdr.src_id, hdr.timeout_or_cookie_reply), (0, 11));
    let first = kdbus_abi::ItemIter::received(&bytes[64..])
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(first.type_, item::REPLY_TIMEOUT);
    b.clock.advance(1_000_000_000);
    b.d.tick();
    let cookies: Vec<u64> = events(&b.records(a))
        .iter()
        .map(|e| b.pool_msg(a, e.offset).0.timeout_or_cookie_reply)
        .collect();
    assert_eq!(cookies, vec![12, 10]);
    assert_eq!(b.d.next_deadline(), None);
}

#[test]
fn sync_call_is_answered_by_the_reply_and_bypasses_the_queue() {
    let mut b = Bus::new();
    let (a, aid) = b.hello();
    let (c, cid) = b.hello();
    let now = b.clock.now_ns();
    let call = b.send(
        a,
        &Message::to(cid).cookie(3).expect_reply(now + 1_000_000_000),
        send_flags::SYNC_REPLY,
    );
    assert!(b.records(a).is_empty(), "a sync call is answered later");
    b.records(c);
    let r = b.send(c, &Message::to(aid).reply_to(3).payload(b"pong"), 0);
    assert_eq!(b.answer(c, r).error, 0);
    let ans = b.answer(a, call);
    assert_eq!(ans.error, 0);
    let wb: CmdSend = read_struct(&ans.body).unwrap();
    let (hdr, _) = b.pool_msg(a, wb.reply.offset);
    assert_eq!((hdr.src_id, hdr.timeout_or_cookie_reply), (cid, 3));
    assert!(b.d.conn(a).unwrap().queue.is_empty());
    assert_eq!(b.d.next_deadline(), None, "the tracker is consumed");
}

#[test]
fn sync_caller_gets_epipe_when_the_callee_leaves_and_timeout_when_silent() {
    let mut b = Bus::new();
    let (a, _) = b.hello();
    let (c, cid) = b.hello();
    let now = b.clock.now_ns();
    let call = b.send(
        a,
        &Message::to(cid).cookie(1).expect_reply(now + 1_000_000_000),
        send_flags::SYNC_REPLY,
    );
    b.d.conn_release(c);
    assert_eq!(b.answer(a, call).error, Errno::EPIPE.0);

    let (_c2, cid2) = b.hello();
    let call = b.send(
        a,
        &Message::to(cid2).cookie(2).expect_reply(now + 1_000_000),
        send_flags::SYNC_REPLY,
    );
    b.clock.advance(2_000_000);
    b.d.tick();
    assert_eq!(b.answer(a, call).error, Errno::ETIMEDOUT.0);
}

#[test]
fn dropping_a_request_tells_the_requester_reply_dead() {
    let mut b = Bus::new();
    let (a, _) = b.hello();
    let (c, cid) = b.hello();
    let now = b.clock.now_ns();
    let r = b.send(
        a,
        &Message::to(cid).cookie(9).expect_reply(now + 1_000_000_000),
        0,
    );
    assert_eq!(b.answer(a, r).error, 0);
    let drop = CmdRecv {
        size: 64,
        flags: recv_flags::DROP,
        ..Default::default()
    };
    let r = b.request(c, cmd::RECV, drop.as_bytes());
    assert_eq!(b.answer(c, r).error, 0);
    let ev = events(&b.records(a));
    let (hdr, bytes) = b.pool_msg(a, ev[0].offset);
    assert_eq!(hdr.timeout_or_cookie_reply, 9);
    assert_eq!(
        kdbus_abi::ItemIter::received(&bytes[64..])
            .next()
            .unwrap()
            .unwrap()
            .type_,
        item::REPLY_DEAD
    );
}

#[test]
fn a_full_pool_is_the_senders_error() {
    let mut b = Bus::new();
    let (a, _) = b.hello();
    // The sender's own user (another one would need TALK in the policy).
    let (_c, cid) = b
        .hello_with(1000, &HelloOptions::new().pool_size(16384))
        .unwrap();
    let big = vec![0u8; 600];
    let mut errs = Vec::new();
    for i in 0..20 {
        let r = b.send(a, &Message::to(cid).cookie(i + 1).payload(&big), 0);
        errs.push(b.answer(a, r).error);
    }
    assert_eq!(errs[0], 0);
    let first_err = errs
        .iter()
        .copied()
        .find(|&e| e != 0)
        .expect("the pool fills up");
    assert!(
        first_err == Errno::ENOBUFS.0 || first_err == Errno::EXFULL.0,
        "{errs:?}"
    );
}

#[test]
fn broker_side_recv_honours_priorities() {
    let mut b = Bus::new();
    let (a, _) = b.hello();
    let (c, cid) = b.hello();
    for (i, p) in [
        25i64, -600, 10, -35, -100, 20, -15, -800, -150, 10, -800, -10,
    ]
    .iter()
    .enumerate()
    {
        let r = b.send(a, &Message::to(cid).cookie(i as u64 + 1).priority(*p), 0);
        assert_eq!(b.answer(a, r).error, 0);
    }
    b.records(c);
    let mut got = Vec::new();
    for max in [-200i64, -100, -400, -400, 10, 10] {
        let cmd = CmdRecv {
            size: 64,
            flags: recv_flags::USE_PRIORITY,
            priority: max,
            ..Default::default()
        };
        let r = b.request(c, cmd::RECV, cmd.as_bytes());
        let ans = b.answer(c, r);
        if ans.error != 0 {
            got.push(Err(ans.error));
            continue;
        }
        let wb: CmdRecv = read_struct(&ans.body).unwrap();
        got.push(Ok(b.pool_msg(c, wb.msg.offset).0.priority));
    }
    let eagain = Err(Errno::EAGAIN.0);
    assert_eq!(
        got,
        vec![Ok(-800), Ok(-800), Ok(-600), eagain, Ok(-150), Ok(-100)]
    );
}

#[test]
fn a_broadcast_reaches_the_connections_whose_matches_take_it() {
    let mut b = Bus::new();
    let (a, _) = b.hello();
    let (with, _) = b.hello();
    let (without, _) = b.hello();
    let m = kdbus_abi::CmdMatch {
        size: std::mem::size_of::<kdbus_abi::CmdMatch>() as u64,
        cookie: 1,
        ..Default::default()
    };
    let r = b.request(with, cmd::MATCH_ADD, m.as_bytes());
    assert_eq!(b.answer(with, r).error, 0);
    b.records(a);
    b.records(without);
    let words = [!0u64; 8];
    let r = b.send(a, &Message::broadcast(&words).cookie(1).payload(b"x"), 0);
    assert_eq!(b.answer(a, r).error, 0);
    assert_eq!(events(&b.records(with)).len(), 1);
    assert!(events(&b.records(without)).is_empty());
}

#[test]
fn each_kind_of_handle_takes_its_own_commands() {
    use kdbus_core::handle::{handle_action, HandleAction as A, HandleKind as K};
    assert_eq!(handle_action(K::Control, cmd::BUS_MAKE), A::BusMake);
    assert_eq!(
        handle_action(K::Control, cmd::HELLO),
        A::Answer(Errno::ENOTTY)
    );
    let default_ep = K::Endpoint { custom: false };
    let custom_ep = K::Endpoint { custom: true };
    assert_eq!(handle_action(default_ep, cmd::HELLO), A::Hello);
    assert_eq!(handle_action(custom_ep, cmd::HELLO), A::Hello);
    assert_eq!(
        handle_action(default_ep, cmd::ENDPOINT_MAKE),
        A::EndpointMake
    );
    assert_eq!(
        handle_action(custom_ep, cmd::ENDPOINT_MAKE),
        A::Answer(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        handle_action(default_ep, cmd::SEND),
        A::Answer(Errno::ENOTTY)
    );
    assert_eq!(
        handle_action(K::EndpointOwner, cmd::ENDPOINT_UPDATE),
        A::EndpointUpdate
    );
    assert_eq!(
        handle_action(K::EndpointOwner, cmd::RELEASE),
        A::RemoveEndpoint
    );
    assert_eq!(
        handle_action(K::EndpointOwner, cmd::HELLO),
        A::Answer(Errno::EBADFD)
    );
    assert_eq!(
        handle_action(K::BusOwner, cmd::HELLO),
        A::Answer(Errno::EBADFD)
    );
    assert_eq!(handle_action(K::BusOwner, cmd::RELEASE), A::RemoveBus);
    assert_eq!(handle_action(K::Control, cmd::RELEASE), A::Answer(Errno(0)));
    assert_eq!(handle_action(K::Conn, cmd::SEND), A::Conn);
}

/// One user's connections together hold at most `USER_MAX_MATCHES` match entries,
/// however many connections it opens; entries that go make room again.
#[test]
fn a_users_matches_are_capped_across_its_connections() {
    use kdbus_core::USER_MAX_MATCHES;
    let mut b = Bus::new();
    let conns: Vec<ConnKey> = (0..70)
        .map(|_| b.hello_with(1000, &HelloOptions::new()).unwrap().0)
        .collect();
    let mut added = 0;
    let mut refused = None;
    'all: for &c in &conns {
        for cookie in 1..=256u64 {
            match b.d.match_add(c, cookie, 0, &[]) {
                Ok(()) => added += 1,
                Err(e) => {
                    refused = Some((c, e));
                    break 'all;
                }
            }
        }
    }
    assert_eq!(added, USER_MAX_MATCHES);
    let (last, e) = refused.expect("a refusal");
    assert_eq!(e, Errno::EMFILE);
    // Removing one makes room for one.
    b.d.match_remove(conns[0], 1).unwrap();
    b.d.match_add(last, 1000, 0, &[]).unwrap();
    assert_eq!(b.d.match_add(last, 1001, 0, &[]), Err(Errno::EMFILE));
    // A connection that goes takes its entries along.
    b.d.conn_release(conns[1]);
    for cookie in 2000..2100 {
        b.d.match_add(last, cookie, 0, &[])
            .unwrap_or_else(|e| panic!("{cookie}: {e}"));
    }
}

/// A user's pools together may touch `UserLimits::pool_bytes` of memory, however many
/// connections share it: past that a message to any of them is the sender's ENOBUFS,
/// and a new connection is refused; a pool that goes gives its memory back.
/// Privileged users are not bound.
#[test]
fn a_users_pools_together_touch_at_most_their_budget() {
    const CAP: u64 = 128 << 10;
    let mut b = Bus::new();
    b.d.set_user_limits(kdbus_core::UserLimits {
        pool_bytes: CAP,
        ..Default::default()
    });
    let (a, _) = b.hello();
    let receivers: Vec<(ConnKey, u64)> = (0..8)
        .map(|_| {
            b.hello_with(1000, &HelloOptions::new().pool_size(1 << 20))
                .unwrap()
        })
        .collect();
    let big = vec![0u8; 4000];
    let mut delivered = 0;
    let mut refused = None;
    'flood: for round in 0..16u64 {
        for &(_, id) in &receivers {
            let r = b.send(a, &Message::to(id).cookie(round + 1).payload(&big), 0);
            match b.answer(a, r).error {
                0 => delivered += 1,
                e => {
                    refused = Some(e);
                    break 'flood;
                }
            }
        }
    }
    // Each receiver alone had room for far more (a third of half of 1 MiB).
    assert_eq!(
        refused,
        Some(Errno::ENOBUFS.0),
        "after {delivered} messages"
    );
    let touched = b.d.user_pool_touched(1000);
    assert!(touched <= CAP, "{touched}");
    assert!(delivered >= 8, "{delivered}");
    assert_eq!(
        b.hello_with(1000, &HelloOptions::new()).err(),
        Some(Errno::ENOBUFS)
    );
    // Root's pools draw on nothing.
    let (root, _) = b.hello_with(0, &HelloOptions::new()).unwrap();
    let (_, root_id) = b
        .hello_with(0, &HelloOptions::new().pool_size(1 << 20))
        .unwrap();
    for cookie in 100..120 {
        let r = b.send(root, &Message::to(root_id).cookie(cookie).payload(&big), 0);
        assert_eq!(b.answer(root, r).error, 0);
    }
    // A pool that goes gives back all it touched.
    b.d.conn_release(receivers[0].0);
    assert!(b.d.user_pool_touched(1000) < touched);
    let r = b.send(a, &Message::to(receivers[1].1).cookie(999).payload(&big), 0);
    assert_eq!(b.answer(a, r).error, 0);
    for &(k, _) in &receivers[1..] {
        b.d.conn_release(k);
    }
    b.d.conn_release(a);
    assert_eq!(b.d.user_pool_touched(1000), 0);
}

/// Besides their number, the bytes of a user's match rules are capped across its
/// connections; what goes makes room.
#[test]
fn a_users_match_bytes_are_capped_across_its_connections() {
    let mut b = Bus::new();
    b.d.set_user_limits(kdbus_core::UserLimits {
        match_bytes: 16 << 10,
        ..Default::default()
    });
    // A bloom mask of 16 generations of the bus's 64-byte filter: about 1 KiB a rule.
    let mut rule = Vec::new();
    kdbus_abi::items::ItemWriter::new(&mut rule).push(item::BLOOM_MASK, &[0xffu8; 1024]);
    let conns: Vec<ConnKey> = (0..4)
        .map(|_| b.hello_with(1000, &HelloOptions::new()).unwrap().0)
        .collect();
    let mut added = 0;
    let mut refused = None;
    'all: for &c in &conns {
        for cookie in 1..=8u64 {
            match b.d.match_add(c, cookie, 0, &rule) {
                Ok(()) => added += 1,
                Err(e) => {
                    refused = Some((c, e));
                    break 'all;
                }
            }
        }
    }
    let (last, e) = refused.expect("a refusal");
    assert_eq!(e, Errno::EMFILE);
    assert!((10..16).contains(&added), "{added}");
    // Small rules still fit where big ones do not... until they too fill it.
    b.d.conn_release(conns[0]);
    b.d.match_add(last, 100, 0, &rule).unwrap();
    // Privileged users are not bound.
    let (root, _) = b.hello_with(0, &HelloOptions::new()).unwrap();
    for cookie in 1..40 {
        b.d.match_add(root, cookie, 0, &rule).unwrap();
    }
}

/// The fds a message carries are charged to its sender's user in the domain's ledger
/// from the send until the broker lets go of them, whatever the path: received,
/// dropped with their receiver, or refused.
#[test]
fn fds_in_flight_are_charged_to_their_sender_until_let_go() {
    use kdbus_core::FdLedger;
    #[derive(Default)]
    struct Ledger(RefCell<HashMap<u32, usize>>);
    impl FdLedger for Ledger {
        fn charge(&self, uid: u32, _: bool, n: usize) -> bool {
            let mut m = self.0.borrow_mut();
            let held = m.entry(uid).or_default();
            if *held + n > 3 {
                return false;
            }
            *held += n;
            true
        }
        fn refund(&self, uid: u32, n: usize) {
            *self.0.borrow_mut().entry(uid).or_default() -= n;
        }
    }
    let ledger = Rc::new(Ledger::default());
    let mut b = Bus::new();
    b.d.set_fd_ledger(ledger.clone());
    let held = |l: &Ledger| l.0.borrow().get(&1000).copied().unwrap_or(0);
    let (a, _) = b.hello();
    let (r1, id1) = b.hello();
    let (_r2, id2) = b.hello();
    let devnull = || std::fs::File::open("/dev/null").unwrap().into();
    let send_fds = |b: &mut Bus, to: u64, cookie: u64, n: usize| {
        let mut body = Vec::new();
        Message::to(to)
            .cookie(cookie)
            .fds(n)
            .encode_send(0, &mut body);
        b.req += 1;
        let r = Request {
            cmd: cmd::SEND,
            flags: 0,
            req_id: b.req,
            body: &body,
            creds: Creds {
                pid: 1,
                uid: 1000,
                gid: 1000,
            },
        };
        let mut fds: Vec<std::os::fd::OwnedFd> = (0..n).map(|_| devnull()).collect();
        b.d.conn_request(a, &r, &mut fds);
        let req = b.req;
        b.answer(a, req).error
    };
    assert_eq!(send_fds(&mut b, id1, 1, 2), 0);
    assert_eq!(held(&ledger), 2);
    // Over the user's share: refused, and nothing stays charged for it.
    assert_eq!(send_fds(&mut b, id2, 2, 2), Errno::EMFILE.0);
    assert_eq!(held(&ledger), 2);
    assert_eq!(send_fds(&mut b, id2, 3, 1), 0);
    assert_eq!(held(&ledger), 3);
    // Receiving hands them over: once the output carrying them is written, they are
    // the receiver's, not the broker's.
    b.records(r1);
    let recv = CmdRecv {
        size: std::mem::size_of::<CmdRecv>() as u64,
        ..Default::default()
    };
    b.request(r1, cmd::RECV, recv.as_bytes());
    b.records(r1);
    assert_eq!(held(&ledger), 1);
    // A receiver that goes drops what was queued for it.
    b.d.conn_release(_r2);
    assert_eq!(held(&ledger), 0);
}
