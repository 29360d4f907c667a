//! The policy database driven in memory (spec A.10, selftests policy and policy-priv):
//! connections of different users, a policy holder granting and taking back OWN and
//! TALK, and broadcasts filtered by whether the receiver may talk to the sender.

// Shared with the other test binaries, which use other builders of it.
#[allow(dead_code)]
mod encode;

use encode::{peer, policy_items, HelloOptions, Message};
use kdbus_abi::wire::{self, Frames, RecHeader};
use kdbus_abi::{cmd, item, CmdGeneric, CmdMatch, Errno, ItemWriter};
use kdbus_core::domain::Request;
use kdbus_core::{ConnKey, Creds, Domain, ManualClock, PoolMemory, VecPool};
use std::collections::HashMap;
use zerocopy::IntoBytes;

const ROOT: u32 = 0;
const ALICE: u32 = 1000;
const BOB: u32 = 2000;
const USER: u64 = 1;
const WORLD: u64 = 3;
const TALK: u64 = 1;
const OWN: u64 = 2;

struct Bus {
    d: Domain,
    bus: u64,
    uids: HashMap<ConnKey, u32>,
    req: u64,
}

impl Bus {
    fn new() -> Bus {
        let mut d = Domain::new(Box::new(ManualClock::new(1_000_000_000)));
        let make = encode::bus_make_body();
        let bus = d.bus_make(&peer(ROOT), &make, [7; 16]).unwrap();
        Bus {
            d,
            bus,
            uids: HashMap::new(),
            req: 0,
        }
    }

    fn hello_with(&mut self, uid: u32, opts: HelloOptions) -> Result<(ConnKey, u64), Errno> {
        self.hello_on(None, uid, opts)
    }

    /// HELLO through endpoint `ep` (`None`: the bus's own).
    fn hello_on(
        &mut self,
        ep: Option<u64>,
        uid: u32,
        opts: HelloOptions,
    ) -> Result<(ConnKey, u64), Errno> {
        let mut mk =
            |size: u64| -> Result<Box<dyn PoolMemory>, Errno> { Ok(Box::new(VecPool::new(size))) };
        let body = opts.encode();
        let (key, h) = self.d.hello_on(self.bus, ep, &peer(uid), &body, &mut mk)?;
        self.uids.insert(key, uid);
        Ok((key, h.id))
    }

    /// A custom endpoint `<uid>-<name>` made by `uid`, with `policy` items.
    fn endpoint(&mut self, uid: u32, name: &str, policy: &[u8]) -> Result<u64, Errno> {
        let mut body = CmdGeneric::default().as_bytes().to_vec();
        ItemWriter::new(&mut body).push_str(item::MAKE_NAME, &format!("{uid}-{name}"));
        body.extend_from_slice(policy);
        let size = body.len() as u64;
        body[..8].copy_from_slice(&size.to_ne_bytes());
        self.d
            .endpoint_make(self.bus, &peer(uid), &body)
            .map(|r| r.0)
    }

    fn info_by_id(&mut self, key: ConnKey, id: u64) -> i32 {
        let cmd = kdbus_abi::CmdInfo {
            size: std::mem::size_of::<kdbus_abi::CmdInfo>() as u64,
            id,
            ..Default::default()
        };
        self.run(key, cmd::CONN_INFO, cmd.as_bytes())
    }

    fn hello(&mut self, uid: u32) -> (ConnKey, u64) {
        self.hello_with(uid, HelloOptions::new()).unwrap()
    }

    /// Run a command of `key` (as its own user) and return the answer's errno.
    fn run(&mut self, key: ConnKey, c: u32, body: &[u8]) -> i32 {
        self.req += 1;
        let uid = self.uids[&key];
        let r = Request {
            cmd: c,
            flags: 0,
            req_id: self.req,
            body,
            creds: Creds {
                pid: 100 + uid,
                uid,
                gid: uid,
            },
        };
        self.d.conn_request(key, &r, &mut Vec::new());
        let req = self.req;
        self.records(key)
            .into_iter()
            .find(|(k, id, _)| *k == wire::REC_REPLY && *id == req)
            .map_or(-1, |(_, _, e)| e)
    }

    /// (kind, req_id, error) of everything `key` has to read.
    fn records(&mut self, key: ConnKey) -> Vec<(u16, u64, i32)> {
        let Some((out, fds)) = self.d.conn_output(key) else {
            return Vec::new();
        };
        let recs = Frames::<RecHeader>::new(out)
            .flatten()
            .map(|(h, _)| (h.kind, h.req_id, h.error))
            .collect();
        out.clear();
        fds.clear();
        recs
    }

    fn messages(&mut self, key: ConnKey) -> usize {
        self.records(key)
            .iter()
            .filter(|r| r.0 == wire::REC_MSG)
            .count()
    }

    fn acquire(&mut self, key: ConnKey, name: &str) -> i32 {
        let mut body = CmdGeneric::default().as_bytes().to_vec();
        ItemWriter::new(&mut body).push_str(item::NAME, name);
        let size = body.len() as u64;
        body[..8].copy_from_slice(&size.to_ne_bytes());
        self.run(key, cmd::NAME_ACQUIRE, &body)
    }

    fn update_policy(&mut self, key: ConnKey, items: &[u8]) -> i32 {
        let mut body = CmdGeneric::default().as_bytes().to_vec();
        body.extend_from_slice(items);
        let size = body.len() as u64;
        body[..8].copy_from_slice(&size.to_ne_bytes());
        self.run(key, cmd::UPDATE, &body)
    }

    fn send(&mut self, key: ConnKey, m: &Message<'_>) -> i32 {
        let mut body = Vec::new();
        m.encode_send(0, &mut body);
        self.run(key, cmd::SEND, &body)
    }

    fn match_all(&mut self, key: ConnKey) {
        let m = CmdMatch {
            size: std::mem::size_of::<CmdMatch>() as u64,
            cookie: 1,
            ..Default::default()
        };
        assert_eq!(self.run(key, cmd::MATCH_ADD, m.as_bytes()), 0);
    }
}

/// POL9, POL10, POL8, UPD3: without entries only privileged users own names; a policy
/// holder's OWN grant lets a user own, its update takes the grant back, its
/// disconnect removes its entries.
#[test]
fn own_needs_a_grant_that_lasts_as_long_as_its_holder() {
    let mut b = Bus::new();
    let (alice, _) = b.hello(ALICE);
    assert_eq!(b.acquire(alice, "com.example.a"), Errno::EPERM.0);
    let grant = policy_items("com.example.*", &[(USER, ALICE as u64, OWN)]);
    let (holder, _) = b
        .hello_with(ROOT, HelloOptions::new().policy_holder(grant))
        .unwrap();
    assert_eq!(b.acquire(alice, "com.example.a"), 0);
    // One more element only.
    assert_eq!(b.acquire(alice, "com.example.a.b"), Errno::EPERM.0);
    // An update replaces the holder's entries: TALK does not grant OWN.
    let talk_only = policy_items("com.example.*", &[(USER, ALICE as u64, TALK)]);
    assert_eq!(b.update_policy(holder, &talk_only), 0);
    assert_eq!(b.acquire(alice, "com.example.b"), Errno::EPERM.0);
    let own = policy_items("com.example.*", &[(WORLD, 0, OWN)]);
    assert_eq!(b.update_policy(holder, &own), 0);
    assert_eq!(b.acquire(alice, "com.example.c"), 0);
    b.d.conn_release(holder);
    assert_eq!(b.acquire(alice, "com.example.d"), Errno::EPERM.0);
    // Only policy holders update policy.
    assert_eq!(b.update_policy(alice, &own), Errno::EOPNOTSUPP.0);
}

/// POL6 (selftest policy): one entry per name across holders; exact and wildcard
/// entries of one prefix coexist.
#[test]
fn a_name_has_one_entry() {
    let mut b = Bus::new();
    let (h1, _) = b
        .hello_with(
            ROOT,
            HelloOptions::new().policy_holder(policy_items("com.example.a", &[])),
        )
        .unwrap();
    let (h2, _) = b
        .hello_with(
            ROOT,
            HelloOptions::new().policy_holder(policy_items("com.example.b", &[])),
        )
        .unwrap();
    let see = [(USER, 0, 0)];
    assert_eq!(
        b.update_policy(h2, &policy_items("com.example.a", &see)),
        Errno::EEXIST.0
    );
    assert_eq!(
        b.update_policy(h2, &policy_items("com.example.a.*", &see)),
        0
    );
    assert_eq!(
        b.update_policy(h1, &policy_items("com.example.a.*", &see)),
        Errno::EEXIST.0
    );
    assert_eq!(
        b.update_policy(h1, &policy_items("example", &see)),
        Errno::EINVAL.0
    );
    // A second holder for a name already spoken for is refused at HELLO (h2's
    // update replaced its `com.example.b` by `com.example.a.*`).
    let again = HelloOptions::new().policy_holder(policy_items("com.example.a.*", &[]));
    assert_eq!(b.hello_with(ROOT, again).err(), Some(Errno::EEXIST));
}

/// POL11, POL12: another user may talk to a connection only if that connection owns a
/// name with TALK for it; the receiver's answers need no grant.
#[test]
fn talk_to_another_user_needs_a_grant_on_a_name_it_owns() {
    let mut b = Bus::new();
    let (alice, aid) = b.hello(ALICE);
    let (bob, bid) = b.hello(BOB);
    assert_eq!(b.send(alice, &Message::to(bid).cookie(1)), Errno::EPERM.0);
    // Bob owns a name Alice may talk to.
    let policy = policy_items(
        "com.example.bob",
        &[(USER, BOB as u64, OWN), (USER, ALICE as u64, TALK)],
    );
    b.hello_with(ROOT, HelloOptions::new().policy_holder(policy))
        .unwrap();
    assert_eq!(b.acquire(bob, "com.example.bob"), 0);
    b.records(bob);
    let call = Message::to(bid).cookie(2).expect_reply(u64::MAX / 2);
    assert_eq!(b.send(alice, &call), 0);
    assert_eq!(b.messages(bob), 1);
    // Bob may not talk to Alice, but may answer her.
    assert_eq!(b.send(bob, &Message::to(aid).cookie(3)), Errno::EPERM.0);
    assert_eq!(b.send(bob, &Message::to(aid).reply_to(2)), 0);
    // The same user always may.
    let (alice2, _) = b.hello(ALICE);
    assert_eq!(b.send(alice2, &Message::to(aid).cookie(4)), 0);
}

/// POL13 (HEAD): a broadcast reaches a receiver only if the receiver may talk to the
/// sender.
#[test]
fn a_broadcast_reaches_only_receivers_that_may_talk_to_the_sender() {
    let mut b = Bus::new();
    let (alice, _) = b.hello(ALICE);
    let (bob, _) = b.hello(BOB);
    let (alice2, _) = b.hello(ALICE);
    b.match_all(bob);
    b.match_all(alice2);
    let words = [!0u64; 8];
    assert_eq!(b.send(alice, &Message::broadcast(&words).cookie(1)), 0);
    assert_eq!(b.messages(alice2), 1);
    assert_eq!(b.messages(bob), 0);
    // Once Alice owns a name Bob may talk to, Bob gets her broadcasts.
    let policy = policy_items(
        "com.example.alice",
        &[(USER, ALICE as u64, OWN), (WORLD, 0, TALK)],
    );
    b.hello_with(ROOT, HelloOptions::new().policy_holder(policy))
        .unwrap();
    assert_eq!(b.acquire(alice, "com.example.alice"), 0);
    b.records(bob);
    assert_eq!(b.send(alice, &Message::broadcast(&words).cookie(2)), 0);
    assert_eq!(b.messages(bob), 1);
}

/// EP1-EP12 (selftest endpoint): a custom endpoint is made only by a privileged bus
/// user under its own uid; through it, only what its policy grants exists: a name and
/// its owner become visible, talkable and ownable by its SEE, TALK and OWN rules, and
/// notifications about anything else do not arrive.
#[test]
fn a_custom_endpoint_shows_only_what_its_policy_grants() {
    let mut b = Bus::new();
    assert_eq!(b.endpoint(ALICE, "sandbox", &[]), Err(Errno::EPERM));
    assert_eq!(
        b.endpoint(ROOT, &"X".repeat(70), &[]),
        Err(Errno::ENAMETOOLONG)
    );
    let ep = b.endpoint(ROOT, "sandbox", &[]).unwrap();
    assert_eq!(b.endpoint(ROOT, "sandbox", &[]), Err(Errno::EEXIST));
    let monitor = HelloOptions::new().policy_holder(policy_items("a.b", &[]));
    assert_eq!(
        b.hello_on(Some(ep), ROOT, monitor).err(),
        Some(Errno::EOPNOTSUPP)
    );
    // A service on the bus, and a sandboxed client (the same user: the bus's own
    // policy lets it talk; only the endpoint stands between them).
    let (service, sid) = b.hello(ROOT);
    assert_eq!(b.acquire(service, "org.example.Service"), 0);
    let (sandboxed, _) = b.hello_on(Some(ep), ROOT, HelloOptions::new()).unwrap();
    let any_name_add = {
        let mut items = Vec::new();
        let chg = [!0u64, 0, !0u64, 0];
        ItemWriter::new(&mut items).push(item::NAME_ADD, chg.as_bytes());
        items
    };
    let mut m = CmdMatch {
        size: (std::mem::size_of::<CmdMatch>() + any_name_add.len()) as u64,
        cookie: 1,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    m.extend_from_slice(&any_name_add);
    assert_eq!(b.run(sandboxed, cmd::MATCH_ADD, &m), 0);
    // Nothing is visible yet.
    assert_eq!(b.info_by_id(sandboxed, sid), Errno::ENXIO.0);
    assert_eq!(
        b.send(sandboxed, &Message::to(sid).cookie(1)),
        Errno::ENOENT.0
    );
    assert_eq!(b.acquire(sandboxed, "org.example.Mine"), Errno::EPERM.0);
    let (other, _) = b.hello(ROOT);
    assert_eq!(b.acquire(other, "org.example.Other"), 0);
    assert_eq!(
        b.messages(sandboxed),
        0,
        "no notification about names it may not see"
    );
    // The endpoint's policy grants TALK on the service's name (SEE included).
    let policy = policy_items("org.example.Service", &[(WORLD, 0, TALK)]);
    let mut body = CmdGeneric::default().as_bytes().to_vec();
    body.extend_from_slice(&policy);
    let size = body.len() as u64;
    body[..8].copy_from_slice(&size.to_ne_bytes());
    b.d.endpoint_update(b.bus, ep, &body).unwrap();
    assert_eq!(b.info_by_id(sandboxed, sid), 0);
    assert_eq!(b.send(sandboxed, &Message::to(sid).cookie(2)), 0);
    assert_eq!(b.messages(service), 1);
    // Still nothing else: a name it may not see appears silently.
    assert_eq!(b.acquire(other, "org.example.Another"), 0);
    assert_eq!(b.messages(sandboxed), 0);
    // The endpoint's maker goes: so do its connections.
    b.d.endpoint_destroy(b.bus, ep);
    assert_eq!(b.d.take_closed(), vec![sandboxed]);
}
