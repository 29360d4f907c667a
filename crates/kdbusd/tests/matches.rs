//! Match rules and bus notifications against a real kdbusd: selftests 25-30
//! (match-id-add, match-id-remove, match-name-add, match-name-remove, match-name-change,
//! match-bloom), HEAD's match-replace, spec A.11 (MAT*), A.13 (NOT*), the broadcast
//! rules of A.6 (MSG17-MSG19) as kdbus HEAD has them (section C: broadcasts are
//! signals carrying a BLOOM_FILTER; only signals carry one; a unicast signal needs a
//! match of its receiver; MATCH_REMOVE of an unknown cookie is EBADSLT), and the
//! bloom rule of section D (`(filter & mask) == mask` per word, mask generation
//! `min(filter.generation, n_masks - 1)`).
//!
//! "Nothing arrives" is always checked with a marker: after the message that must not
//! arrive, the same sender sends a unicast (or a broadcast the receiver certainly
//! takes) to the receiver. The bus handles one sender's requests in order and a
//! receiver's queue is in order, so the next message the receiver gets must be the
//! marker; anything delivered wrongly would come first.

mod common;
use common::*;
use kdbus::abi::{self, hello_flags, item, msg_flags, name_flags, Errno, NotifyIdChange};
use kdbus::bloom::Bloom;
use kdbus::{Connection, HelloOptions, MatchRule, Message, Received, ANY};

/// Cookie of marker messages.
const MARK: u64 = 0x4d41_524b;

fn next(c: &Connection) -> Received<'_> {
    ok(c.recv_timeout(Some(SOON)))
}

/// The next message must be the marker `cookie` from `src`.
#[track_caller]
fn expect_marker(c: &Connection, src: u64, cookie: u64) {
    let m = next(c);
    assert_eq!(
        (m.src_id(), m.cookie()),
        (src, cookie),
        "expected the marker (nothing before it); got kernel item {:?}",
        m.kernel_item()
    );
}

/// The same sender sends a unicast marker to `rx`, which must be the next thing `rx`
/// receives.
#[track_caller]
fn marker(tx: &Connection, rx: &Connection, cookie: u64) {
    ok(tx.send(&Message::to(rx.id()).cookie(cookie)));
    expect_marker(rx, tx.id(), cookie);
}

/// Nothing is queued for `c` (after a marker: the queue is in order).
#[track_caller]
fn empty(c: &Connection) {
    assert_eq!(c.recv().err().map(|e| e.errno()), Some(Errno::EAGAIN));
}

/// A round trip on `c`: the broker has processed everything `c` sent before (claims
/// and frees ride ahead of the request in the same datagram).
fn settle(c: &Connection) {
    ok(c.update_attach(None, None));
}

/// Check the frame of a bus notification (NOT1/NOT2/NOT3: src_id 0, payload type
/// KERNEL, broadcast destination, exactly one item besides HEAD's timestamp) and return
/// its item.
#[track_caller]
fn notification<'a>(m: &Received<'a>) -> (u64, &'a [u8]) {
    assert_eq!(
        m.src_id(),
        abi::SRC_ID_KERNEL,
        "notifications come from the bus"
    );
    assert_eq!(m.header().payload_type, abi::payload::KERNEL);
    assert_eq!(
        m.dst_id(),
        abi::DST_ID_BROADCAST,
        "notifications are broadcast"
    );
    let its: Vec<(u64, &[u8])> = m
        .items()
        .map(|i| i.expect("well-formed item"))
        .filter(|i| i.type_ != item::TIMESTAMP)
        .map(|i| (i.type_, i.payload))
        .collect();
    assert_eq!(its.len(), 1, "a notification carries exactly one item");
    assert_eq!(
        m.kernel_item(),
        Some(its[0].0),
        "the notification item is first"
    );
    its[0]
}

/// An ID_ADD / ID_REMOVE notification: (type, id, flags).
#[track_caller]
fn id_change(m: &Received<'_>) -> (u64, u64, u64) {
    let (t, p) = notification(m);
    assert_eq!(p.len(), 16, "payload is kdbus_notify_id_change");
    let c: NotifyIdChange = abi::read_struct(p).expect("id change");
    (t, c.id, c.flags)
}

/// A NAME_* notification: (type, (old id, old flags), (new id, new flags), name).
#[track_caller]
fn name_change(m: &Received<'_>) -> (u64, (u64, u64), (u64, u64), String) {
    let (t, p) = notification(m);
    assert!(p.len() > 32, "payload is old + new + name");
    let old: NotifyIdChange = abi::read_struct(&p[..16]).expect("old");
    let new: NotifyIdChange = abi::read_struct(&p[16..32]).expect("new");
    let name = &p[32..];
    assert_eq!(name.last(), Some(&0), "the name is NUL-terminated");
    let name = String::from_utf8(name[..name.len() - 1].to_vec()).expect("utf-8 name");
    (t, (old.id, old.flags), (new.id, new.flags), name)
}

fn words(c: &Connection) -> usize {
    (c.bloom().size / 8) as usize
}

/// An all-zero filter of the bus's size.
fn zero_filter(c: &Connection) -> Bloom {
    Bloom::new(c.bloom())
}

fn hello(b: &Broker, opts: &HelloOptions) -> Connection {
    ok(Connection::hello(&b.bus, opts))
}

// ------------------------------------------------------------------ selftests 25-29

/// Selftest 25 (match-id-add), NOT2, MAT10: an ID_ADD(ANY) entry gets an ID_ADD for
/// every new connection, with its id and its HELLO flags.
#[test]
fn match_id_add() {
    let b = Broker::start();
    let w = b.conn();
    ok(w.add_match(0xdeafbeefdeaddead, &MatchRule::new().id_add(ANY), false));
    let c1 = hello(&b, &test_hello().flags(0));
    let c2 = hello(&b, &test_hello().flags(hello_flags::ACCEPT_FD));
    assert_eq!(id_change(&next(&w)), (item::ID_ADD, c1.id(), 0));
    assert_eq!(
        id_change(&next(&w)),
        (item::ID_ADD, c2.id(), hello_flags::ACCEPT_FD)
    );
    // An ID_ADD rule for one id takes only that id (and never ID_REMOVE).
    let w2 = b.conn();
    ok(w2.add_match(1, &MatchRule::new().id_add(c2.id() + 2), false));
    let _c3 = b.conn(); // id c2 + 2 (w2 is c2 + 1)
    let c4 = b.conn();
    drop(c4);
    let m = next(&w2);
    assert_eq!(id_change(&m).0, item::ID_ADD);
    assert_eq!(id_change(&m).1, c2.id() + 2);
    drop(m);
    marker(&w, &w2, MARK);
}

/// HELLO is answered after its ID_ADD reached the watchers' sockets, as kdbus's ioctl
/// returned after notifying: a watcher that looks without waiting, right after another
/// connection's HELLO was answered, finds the notification (selftest match-id-add does
/// exactly this, and failed about one run in two before). Raw sockets, so that nothing
/// but the two syscalls lies between the answer and the look.
#[test]
fn hello_is_answered_after_its_id_add() {
    let b = Broker::start();
    // Many watchers: without the order, the last ones written would be the latest.
    let watchers: Vec<Connection> = (0..40).map(|_| b.conn()).collect();
    for w in &watchers {
        ok(w.add_match(1, &MatchRule::new().id_add(ANY), false));
    }
    let mut late = 0;
    for _ in 0..50 {
        let mut c = RawSocket::connect(&b.bus);
        let r = c.request(abi::cmd::HELLO, &test_hello().encode());
        assert_eq!(r.error, 0);
        for w in watchers.iter().rev() {
            if w.recv().is_err() {
                late += 1;
                let _ = next(w);
            }
        }
    }
    assert_eq!(
        late, 0,
        "{late} ID_ADDs were not out when their HELLO was answered"
    );
}

/// Selftest 26 (match-id-remove), NOT2, MAT10, BYE5: an ID_REMOVE(id) entry gets the
/// ID_REMOVE of that connection when it goes away, with its HELLO flags; another
/// connection's departure does not match.
#[test]
fn match_id_remove() {
    let b = Broker::start();
    let w = b.conn();
    let c = hello(&b, &test_hello().flags(hello_flags::ACCEPT_FD));
    let other = b.conn();
    let id = c.id();
    ok(w.add_match(0xdeafbeefdeaddead, &MatchRule::new().id_remove(id), false));
    // BYEBYE is synchronous: had `other`'s ID_REMOVE matched, it would be queued
    // before `c`'s.
    ok(other.byebye());
    drop(c);
    assert_eq!(
        id_change(&next(&w)),
        (item::ID_REMOVE, id, hello_flags::ACCEPT_FD)
    );
}

/// Selftest 27 (match-name-add), NAM4, NAM10, MAT9: NAME_ADD with old 0, new = the
/// acquirer with its acquire flags, and the name; a rule naming a name ignores others.
#[test]
fn match_name_add() {
    let b = Broker::start();
    let c = b.conn();
    let name = "foo.bla.blaz";
    ok(c.add_match(1, &MatchRule::new().name_add(ANY, Some(name)), false));
    // Another name: the rule's name does not match, so no notification.
    ok(c.acquire_name("foo.bla.other", 0));
    ok(c.acquire_name(name, name_flags::ALLOW_REPLACEMENT));
    let (t, old, new, n) = name_change(&next(&c));
    assert_eq!(t, item::NAME_ADD);
    assert_eq!(old, (0, 0));
    assert_eq!(new, (c.id(), name_flags::ALLOW_REPLACEMENT));
    assert_eq!(n, name);
}

/// Selftest 28 (match-name-remove), NAM14, MAT9: NAME_REMOVE with old = the releaser,
/// new 0.
#[test]
fn match_name_remove() {
    let b = Broker::start();
    let c = b.conn();
    let name = "foo.bla.blaz";
    ok(c.acquire_name(name, 0));
    ok(c.add_match(1, &MatchRule::new().name_remove(ANY, Some(name)), false));
    ok(c.release_name(name));
    let (t, old, new, n) = name_change(&next(&c));
    assert_eq!(t, item::NAME_REMOVE);
    assert_eq!(old, (c.id(), 0));
    assert_eq!(new, (0, 0));
    assert_eq!(n, name);
}

/// Selftest 29 (match-name-change), NAM8, NAM9, MAT9: a queued waiter takes over on
/// release; NAME_CHANGE old = the releaser, new = the waiter. Queueing itself is no
/// ownership change and notifies nothing.
#[test]
fn match_name_change() {
    let b = Broker::start();
    let c = b.conn();
    let name = "foo.bla.baz";
    ok(c.acquire_name(name, 0));
    ok(c.add_match(
        1,
        &MatchRule::new().name_change(ANY, ANY, Some(name)),
        false,
    ));
    let c2 = b.conn();
    let rf = ok(c2.acquire_name(name, name_flags::QUEUE));
    assert_ne!(rf & name_flags::IN_QUEUE, 0, "queued behind the owner");
    ok(c.release_name(name));
    let (t, old, new, n) = name_change(&next(&c));
    assert_eq!(t, item::NAME_CHANGE);
    assert_eq!(old, (c.id(), 0));
    assert_eq!(new.0, c2.id());
    assert_eq!(n, name);
}

// ------------------------------------------------------------------ selftest 30

/// Selftest 30 (match-bloom), MAT5, section D: a two-generation mask; a zero filter
/// does not match, the exact and a broader filter do; generation 1 uses mask 1.
#[test]
fn match_bloom() {
    let b = Broker::start();
    let rx = b.conn();
    let tx = b.conn();
    let size = rx.bloom().size as usize;
    assert!(size >= 16, "bus bloom size {size}");
    let as_words = |bytes: &[u8]| -> Vec<u64> {
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect()
    };
    let mut gen0 = vec![0u8; size];
    gen0[0] = 0x55;
    gen0[size - 1] = 0x80;
    let mut gen1 = vec![0u8; size];
    gen1[1] = 0xaa;
    gen1[9] = 0x02;
    let rule = MatchRule::new().bloom_generations(&[&as_words(&gen0), &as_words(&gen1)]);
    ok(rx.add_match(1, &rule, false));

    let mut cookie = 0xf000f00f;
    let mut filter = vec![0u8; size];
    let send = |filter: &[u8], generation: u64, cookie: u64| {
        let w = as_words(filter);
        ok(tx.send(
            &Message::to(abi::DST_ID_BROADCAST)
                .bloom_raw(generation, &w)
                .cookie(cookie),
        ));
    };

    // A zeroed filter must not reach the peer.
    cookie += 1;
    send(&filter, 0, cookie);
    marker(&tx, &rx, MARK);

    // The filter equal to the mask matches.
    filter[0] = 0x55;
    filter[size - 1] = 0x80;
    cookie += 1;
    send(&filter, 0, cookie);
    assert_eq!(next(&rx).cookie(), cookie);

    // A broader filter matches too.
    filter[0] = 0xff;
    filter[8] = 0xff;
    filter[size - 1] = 0xff;
    cookie += 1;
    send(&filter, 0, cookie);
    assert_eq!(next(&rx).cookie(), cookie);

    // The same filter as generation 1 is checked against mask 1: no match.
    cookie += 1;
    send(&filter, 1, cookie);
    marker(&tx, &rx, MARK + 1);

    // With mask 1's bits it matches.
    filter[1] = 0xaa;
    filter[9] = 0x02;
    cookie += 1;
    send(&filter, 1, cookie);
    assert_eq!(next(&rx).cookie(), cookie);

    // Generations past the last mask use the last mask.
    cookie += 1;
    send(&filter, 7, cookie);
    assert_eq!(next(&rx).cookie(), cookie);
    let mut only_gen1 = vec![0u8; size];
    only_gen1[1] = 0xaa;
    only_gen1[9] = 0x02;
    cookie += 1;
    send(&only_gen1, 0, cookie); // generation 0 needs mask 0's bits
    cookie += 1;
    send(&only_gen1, 5, cookie); // generation 5 uses mask 1
    assert_eq!(next(&rx).cookie(), cookie);
    marker(&tx, &rx, MARK + 2);
}

// ------------------------------------------------------------------ add / remove

/// HEAD selftest match-replace, MAT11: REPLACE swaps the entries of a cookie: after
/// replacing ID_ADD(ANY) with ID_REMOVE(ANY), a new connection is not announced, its
/// departure is.
#[test]
fn match_replace() {
    let b = Broker::start();
    let w = b.conn();
    let cookie = 0xdeafbeefdeaddead;
    ok(w.add_match(cookie, &MatchRule::new().id_add(ANY), false));
    let c = b.conn();
    assert_eq!(
        id_change(&next(&w)),
        (item::ID_ADD, c.id(), hello_flags::ACCEPT_FD)
    );
    ok(w.add_match(cookie, &MatchRule::new().id_remove(ANY), true));
    let c2 = b.conn();
    let id = c2.id();
    drop(c2);
    // Had the ID_ADD entry survived, c2's ID_ADD would come first.
    assert_eq!(
        id_change(&next(&w)),
        (item::ID_REMOVE, id, hello_flags::ACCEPT_FD)
    );
    // REPLACE of a cookie nobody used simply adds.
    ok(w.add_match(7, &MatchRule::new().sender(c.id()), true));
    ok(c.send(&Message::broadcast(&zero_filter(&c)).cookie(70)));
    assert_eq!(next(&w).cookie(), 70);
}

/// MAT13 with HEAD's errno (section C): MATCH_REMOVE removes every entry of the cookie;
/// an unknown cookie is EBADSLT.
#[test]
fn match_remove() {
    let b = Broker::start();
    let rx = b.conn();
    let tx = b.conn();
    assert_eq!(
        errno(rx.match_remove(5)),
        Errno::EBADSLT,
        "no entries at all"
    );
    ok(rx.add_match(5, &MatchRule::new().sender(ANY), false));
    ok(rx.add_match(5, &MatchRule::new().sender(tx.id()), false));
    ok(rx.add_match(6, &MatchRule::new().id_add(ANY), false));
    assert_eq!(errno(rx.match_remove(9)), Errno::EBADSLT, "unknown cookie");
    let f = zero_filter(&tx);
    ok(tx.send(&Message::broadcast(&f).cookie(1)));
    assert_eq!(
        next(&rx).cookie(),
        1,
        "one copy although two entries take it"
    );
    marker(&tx, &rx, MARK);
    ok(rx.match_remove(5));
    ok(tx.send(&Message::broadcast(&f).cookie(2)));
    marker(&tx, &rx, MARK + 1);
    assert_eq!(errno(rx.match_remove(5)), Errno::EBADSLT, "already removed");
    // Cookie 6 is untouched.
    let c = b.conn();
    assert_eq!(
        id_change(&next(&rx)),
        (item::ID_ADD, c.id(), hello_flags::ACCEPT_FD)
    );
    ok(rx.match_remove(6));
}

/// MAT12 (KDBUS_MATCH_MAX = 256): the 257th entry is EMFILE; REPLACE of an existing
/// cookie makes room first (kdbus HEAD match.c); after a removal there is room again.
#[test]
fn match_limit() {
    let b = Broker::start();
    let c = b.conn();
    for cookie in 0..256 {
        ok(c.add_match(cookie, &MatchRule::new().sender(ANY), false));
    }
    assert_eq!(
        errno(c.add_match(1000, &MatchRule::new().sender(ANY), false)),
        Errno::EMFILE
    );
    assert_eq!(
        errno(c.add_match(1000, &MatchRule::new().sender(ANY), true)),
        Errno::EMFILE,
        "REPLACE of an unused cookie adds"
    );
    ok(c.add_match(17, &MatchRule::new().id_add(ANY), true));
    ok(c.match_remove(3));
    ok(c.add_match(1000, &MatchRule::new(), false));
    assert_eq!(
        errno(c.add_match(1001, &MatchRule::new(), false)),
        Errno::EMFILE
    );
    // The limit is per connection.
    let d = b.conn();
    ok(d.add_match(1, &MatchRule::new(), false));
}

/// MAT5: a BLOOM_MASK must be N >= 1 times the bus's bloom size, else EDOM.
#[test]
fn bloom_mask_size() {
    let b = Broker::start();
    let c = b.conn();
    let n = words(&c);
    for bad in [1, n - 1, n + 1, 2 * n + 1] {
        let mask = vec![0u64; bad];
        assert_eq!(
            errno(c.add_match(1, &MatchRule::new().bloom_generations(&[&mask]), false)),
            Errno::EDOM,
            "mask of {bad} words (bus: {n})"
        );
    }
    let one = vec![0u64; n];
    ok(c.add_match(1, &MatchRule::new().bloom_generations(&[&one]), false));
    ok(c.add_match(
        1,
        &MatchRule::new().bloom_generations(&[&one, &one, &one]),
        false,
    ));
}

// ------------------------------------------------------------------ send rules

/// MSG17/MSG18 as in kdbus HEAD (section C): broadcasts are signals with exactly one
/// bloom filter of the bus's size, no fds, no DST_NAME, no reply semantics; signals,
/// and only signals, carry a filter. Rejected broadcasts reach nobody.
#[test]
fn broadcast_send_errors() {
    let b = Broker::start();
    let tx = b.conn();
    let rx = b.conn();
    ok(rx.add_match(1, &MatchRule::new().sender(ANY), false));
    let f = zero_filter(&tx);

    // Broadcast without the SIGNAL flag (with a filter): EBADMSG.
    let mut m = Message::broadcast(&f).cookie(1);
    m.flags &= !msg_flags::SIGNAL;
    assert_eq!(errno(tx.send(&m)), Errno::EBADMSG);
    // Broadcast without SIGNAL and without filter: EBADMSG.
    assert_eq!(
        errno(tx.send(&Message::to(abi::DST_ID_BROADCAST).cookie(1))),
        Errno::EBADMSG
    );
    // A signal without a filter, broadcast or unicast: EBADMSG.
    assert_eq!(
        errno(tx.send(&Message::to(abi::DST_ID_BROADCAST).flags(msg_flags::SIGNAL))),
        Errno::EBADMSG
    );
    assert_eq!(
        errno(tx.send(&Message::to(rx.id()).flags(msg_flags::SIGNAL))),
        Errno::EBADMSG
    );
    // A filter on a message that is not a signal: EBADMSG.
    let mut m = Message::to(rx.id()).signal(&f);
    m.flags &= !msg_flags::SIGNAL;
    assert_eq!(errno(tx.send(&m)), Errno::EBADMSG);
    // Filters of the wrong size: EDOM.
    let n = words(&tx);
    for bad in [1, n - 1, n + 1, 2 * n] {
        let w = vec![0u64; bad];
        assert_eq!(
            errno(tx.send(&Message::to(abi::DST_ID_BROADCAST).bloom_raw(0, &w))),
            Errno::EDOM,
            "filter of {bad} words (bus: {n})"
        );
        assert_eq!(
            errno(tx.send(&Message::to(rx.id()).bloom_raw(0, &w))),
            Errno::EDOM,
            "unicast signal, filter of {bad} words"
        );
    }
    // Fds in a broadcast: ENOTUNIQ.
    let file = std::fs::File::open("/dev/null").expect("/dev/null");
    assert_eq!(
        errno(tx.send(&Message::broadcast(&f).fd(std::os::fd::AsFd::as_fd(&file)))),
        Errno::ENOTUNIQ
    );
    // Expecting a reply: ENOTUNIQ; being a reply: ENOTUNIQ.
    let deadline = kdbus::monotonic_ns() + 10_000_000_000;
    assert_eq!(
        errno(tx.send(&Message::broadcast(&f).cookie(5).expect_reply(deadline))),
        Errno::ENOTUNIQ
    );
    assert_eq!(
        errno(tx.send(&Message::broadcast(&f).cookie(6).reply_to(5))),
        Errno::ENOTUNIQ
    );
    // A DST_NAME in a broadcast: EBADMSG (owned name or not).
    ok(rx.acquire_name("foo.bar.baz", 0));
    let mut m = Message::broadcast(&f).cookie(7);
    m.dst_name = Some("foo.bar.baz");
    assert_eq!(errno(tx.send(&m)), Errno::EBADMSG);
    m.dst_name = Some("foo.bar.none");
    assert_eq!(errno(tx.send(&m)), Errno::EBADMSG);
    // None of the rejected messages reached rx; a correct broadcast does.
    ok(tx.send(&Message::broadcast(&f).cookie(8)));
    assert_eq!(next(&rx).cookie(), 8);
    marker(&tx, &rx, MARK);
}

/// MAT14: the sender never receives its own broadcast, even with a match taking it.
#[test]
fn no_echo_to_sender() {
    let b = Broker::start();
    let tx = b.conn();
    let rx = b.conn();
    let other = b.conn();
    ok(tx.add_match(1, &MatchRule::new(), false));
    ok(tx.add_match(2, &MatchRule::new().sender(tx.id()), false));
    ok(rx.add_match(1, &MatchRule::new(), false));
    let f = zero_filter(&tx);
    ok(tx.send(&Message::broadcast(&f).cookie(1).payload(b"x")));
    let m = next(&rx);
    assert_eq!((m.src_id(), m.cookie()), (tx.id(), 1));
    drop(m);
    // `other` is processed after tx's broadcast; its marker must come first.
    marker(&other, &tx, MARK);
    empty(&tx);
}

/// MAT4, MAT8, MAT2: an entry without rules takes broadcasts and notifications; an
/// ID(ANY) or all-zero bloom entry takes every broadcast but no notification; a
/// notification entry takes no broadcast; several matching entries give one copy.
#[test]
fn rule_kinds() {
    let b = Broker::start();
    let tx = b.conn();
    let all = b.conn();
    let any_id = b.conn();
    let zero_mask = b.conn();
    let notes = b.conn();
    let multi = b.conn();
    ok(all.add_match(1, &MatchRule::new(), false));
    ok(any_id.add_match(1, &MatchRule::new().sender(ANY), false));
    let zeros = vec![0u64; words(&tx)];
    ok(zero_mask.add_match(1, &MatchRule::new().bloom_generations(&[&zeros]), false));
    ok(notes.add_match(1, &MatchRule::new().id_add(ANY).id_remove(ANY), false));
    ok(notes.add_match(2, &MatchRule::new().id_add(ANY), false));
    ok(multi.add_match(1, &MatchRule::new(), false));
    ok(multi.add_match(2, &MatchRule::new().sender(tx.id()), false));
    ok(multi.add_match(3, &MatchRule::new().bloom_generations(&[&zeros]), false));

    let f = zero_filter(&tx);
    ok(tx.send(&Message::broadcast(&f).cookie(1)));
    for c in [&all, &any_id, &zero_mask, &multi] {
        assert_eq!(next(c).cookie(), 1);
        marker(&tx, c, MARK);
    }
    // The notification entries took no broadcast.
    marker(&tx, &notes, MARK);

    // A new connection: ID_ADD for `all`, `multi` (once) and `notes`; not for the
    // broadcast-only entries.
    let n = b.conn();
    for c in [&all, &multi, &notes] {
        assert_eq!(
            id_change(&next(c)),
            (item::ID_ADD, n.id(), hello_flags::ACCEPT_FD)
        );
    }
    // A rule list must hold entirely: ID_ADD together with ID_REMOVE never holds, so
    // `notes` got its ID_ADD from entry 2 only, once.
    for c in [&all, &any_id, &zero_mask, &multi, &notes] {
        marker(&tx, c, MARK + 1);
    }
    // A broadcast from `n`: multi's entry naming tx does not take it, its other
    // entries do (one copy).
    ok(n.send(&Message::broadcast(&f).cookie(2)));
    for c in [&all, &any_id, &zero_mask, &multi] {
        assert_eq!(next(c).cookie(), 2);
    }
    for c in [&all, &any_id, &zero_mask, &multi, &notes] {
        marker(&n, c, MARK + 2);
    }
}

/// MAT7: an entry naming a sender id takes only that sender's broadcasts.
#[test]
fn sender_id_rule() {
    let b = Broker::start();
    let a = b.conn();
    let o = b.conn();
    let rx = b.conn();
    ok(rx.add_match(1, &MatchRule::new().sender(a.id()), false));
    let f = zero_filter(&a);
    ok(o.send(&Message::broadcast(&f).cookie(1)));
    marker(&o, &rx, MARK);
    ok(a.send(&Message::broadcast(&f).cookie(2)));
    let m = next(&rx);
    assert_eq!((m.src_id(), m.cookie()), (a.id(), 2));
    drop(m);
    // Sender id and bloom rules in one entry must both hold.
    let mut mask = Bloom::new(a.bloom());
    mask.add(b"x");
    ok(rx.match_remove(1));
    ok(rx.add_match(2, &MatchRule::new().sender(a.id()).bloom(&mask), false));
    ok(a.send(&Message::broadcast(&f).cookie(3))); // filter lacks the mask's bits
    ok(o.send(&Message::broadcast(&mask).cookie(4))); // wrong sender
    ok(a.send(&Message::broadcast(&mask).cookie(5)));
    let m = next(&rx);
    assert_eq!((m.src_id(), m.cookie()), (a.id(), 5));
    drop(m);
    marker(&o, &rx, MARK + 1);
}

/// MAT6: an entry naming a well-known name takes broadcasts of its owner at send time;
/// after the sender releases the name, no more.
#[test]
fn sender_name_rule() {
    let b = Broker::start();
    let a = b.conn();
    let o = b.conn();
    let rx = b.conn();
    let name = "foo.bar.sender";
    ok(rx.add_match(1, &MatchRule::new().sender_name(name), false));
    ok(a.acquire_name(name, 0));
    let f = zero_filter(&a);
    ok(o.send(&Message::broadcast(&f).cookie(1)));
    marker(&o, &rx, MARK);
    ok(a.send(&Message::broadcast(&f).cookie(2)));
    let m = next(&rx);
    assert_eq!((m.src_id(), m.cookie()), (a.id(), 2));
    drop(m);
    ok(a.release_name(name));
    ok(a.send(&Message::broadcast(&f).cookie(3)));
    marker(&a, &rx, MARK + 1);
    // The name moves on: now o's broadcasts match.
    ok(o.acquire_name(name, 0));
    ok(a.send(&Message::broadcast(&f).cookie(4)));
    ok(o.send(&Message::broadcast(&f).cookie(5)));
    let m = next(&rx);
    assert_eq!((m.src_id(), m.cookie()), (o.id(), 5));
    drop(m);
    marker(&a, &rx, MARK + 2);
}

/// Section C (HEAD): a unicast signal reaches its destination only if one of its
/// entries takes it; the sender gets success either way.
#[test]
fn unicast_signal_needs_match() {
    let b = Broker::start();
    let tx = b.conn();
    let rx = b.conn();
    let mut mask = Bloom::new(tx.bloom());
    mask.add(b"member:Ping");
    let mut other = Bloom::new(tx.bloom());
    other.add(b"member:Pong");
    let zero = zero_filter(&tx);
    // No entry at all.
    ok(tx.send(&Message::to(rx.id()).signal(&mask).cookie(1)));
    marker(&tx, &rx, MARK);
    // An entry whose mask the filter does not cover.
    ok(rx.add_match(1, &MatchRule::new().bloom(&mask), false));
    ok(tx.send(&Message::to(rx.id()).signal(&zero).cookie(2)));
    if !other.covers(&mask) {
        ok(tx.send(&Message::to(rx.id()).signal(&other).cookie(3)));
    }
    marker(&tx, &rx, MARK + 1);
    // A covering filter: delivered, as a unicast.
    ok(tx.send(&Message::to(rx.id()).signal(&mask).cookie(4).payload(b"sig")));
    let m = next(&rx);
    assert_eq!((m.src_id(), m.cookie()), (tx.id(), 4));
    assert_eq!(m.dst_id(), rx.id());
    assert_eq!(m.payload_bytes(), b"sig");
    assert_ne!(m.header().flags & msg_flags::SIGNAL, 0);
    drop(m);
    // A sender rule for someone else does not take it; an empty entry does.
    ok(rx.match_remove(1));
    ok(rx.add_match(2, &MatchRule::new().sender(rx.id()), false));
    ok(tx.send(&Message::to(rx.id()).signal(&mask).cookie(5)));
    marker(&tx, &rx, MARK + 2);
    ok(rx.add_match(3, &MatchRule::new(), false));
    ok(tx.send(&Message::to(rx.id()).signal(&zero).cookie(6)));
    assert_eq!(next(&rx).cookie(), 6);
    // A unicast signal to an unknown id still fails as a unicast does.
    assert_eq!(
        errno(tx.send(&Message::to(rx.id() + 100).signal(&zero))),
        Errno::ENXIO
    );
}

/// MSG19, POOL5, RCV8 (HEAD dropped_msgs): a receiver whose pool is full is skipped;
/// the sender gets success, the other receivers get everything, and the skipped
/// receiver's dropped-message count goes up by the number it lost.
#[test]
fn full_pool_receiver_is_skipped() {
    const K: u64 = 16;
    let b = Broker::start();
    let tx = b.conn();
    let big = b.conn();
    let tiny = hello(&b, &test_hello().attach_recv(0).pool_size(8192));
    ok(big.add_match(1, &MatchRule::new().sender(ANY), false));
    ok(tiny.add_match(1, &MatchRule::new().sender(ANY), false));
    let f = zero_filter(&tx);
    let payload = [0x5au8; 1024];
    for cookie in 1..=K {
        ok(tx.send(&Message::broadcast(&f).cookie(cookie).payload(&payload)));
    }
    for cookie in 1..=K {
        let m = next(&big);
        assert_eq!(
            (m.cookie(), m.payload_bytes().len()),
            (cookie, payload.len())
        );
    }
    assert_eq!(big.dropped_msgs(), 0);
    // After a round trip on tiny every announcement sent before has arrived.
    settle(&tiny);
    let n = tiny.queued() as u64;
    assert!(
        (1..K).contains(&n),
        "an 8 KiB pool holds some but not all of {K} 1 KiB messages; got {n}"
    );
    for cookie in 1..=n {
        let m = next(&tiny);
        assert_eq!(m.cookie(), cookie, "the first ones fit, in order");
    }
    assert_eq!(tiny.dropped_msgs(), 0, "nothing was lost before these");
    empty(&tiny);
    // Free the pool (the frees ride ahead of the round trip), then one more.
    settle(&tiny);
    ok(tx.send(&Message::broadcast(&f).cookie(K + 1).payload(b"late")));
    let m = next(&tiny);
    assert_eq!(m.cookie(), K + 1);
    drop(m);
    assert_eq!(tiny.dropped_msgs(), K - n, "lost broadcasts are counted");
    let m = next(&big);
    assert_eq!(m.cookie(), K + 1);
    drop(m);
    assert_eq!(big.dropped_msgs(), 0);
}
