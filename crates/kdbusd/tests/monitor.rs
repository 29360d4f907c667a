//! Monitors against a real kdbusd: selftest 8 (monitor) and spec A.12 (MON1-MON5),
//! with kdbus HEAD's invisibility (section C: no ID_ADD/ID_REMOVE for monitors, not in
//! LIST), CON13 (what a monitor may do) and CON14 (not addressable by id).
//!
//! kdbus HEAD: a monitor may not MATCH_ADD/MATCH_REMOVE (EOPNOTSUPP); it receives every
//! broadcast and every bus notification (ID_*/NAME_*) without matches, besides the
//! copies of unicasts. Tests that look for a particular copy skip those notifications
//! with [`next_non_notification`].
//!
//! The tests run as root, so HELLO with MONITOR is allowed (MON1); the unprivileged
//! EPERM case cannot be tested here.
//!
//! "Nothing arrives" is checked with a marker: after the message that must not reach
//! the monitor, the same sender sends a unicast to a third connection; the monitor
//! gets a copy of it, and since the bus handles one sender's requests in order and a
//! queue is in order, that copy must be the next message the monitor sees (bus
//! notifications aside).

mod common;
use common::*;
use kdbus::abi::{self, attach, hello_flags, item, list_flags, Errno};
use kdbus::bloom::Bloom;
use kdbus::{Connection, HelloOptions, MatchRule, Message, Received};
use std::time::Duration;

const MARK: u64 = 0x4d41_524b;

fn next(c: &Connection) -> Received<'_> {
    ok(c.recv_timeout(Some(SOON)))
}

/// A bus notification (ID_ADD, ID_REMOVE, NAME_ADD, NAME_REMOVE, NAME_CHANGE), which a
/// monitor receives without matches. REPLY_TIMEOUT / REPLY_DEAD are not: they are
/// copies of unicasts to a requester.
fn is_notification(m: &Received<'_>) -> bool {
    m.header().payload_type == abi::payload::KERNEL
        && matches!(
            m.kernel_item(),
            Some(
                item::ID_ADD
                    | item::ID_REMOVE
                    | item::NAME_ADD
                    | item::NAME_REMOVE
                    | item::NAME_CHANGE
            )
        )
}

/// The monitor's next message that is not a bus notification.
#[track_caller]
fn next_non_notification(mon: &Connection) -> Received<'_> {
    loop {
        let m = next(mon);
        if !is_notification(&m) {
            return m;
        }
    }
}

fn monitor(b: &Broker, attach_recv: u64) -> Connection {
    ok(Connection::hello(
        &b.bus,
        &HelloOptions::new().monitor().attach_recv(attach_recv),
    ))
}

/// `tx` sends a unicast marker to `rx`; `rx` gets it and the monitor's next message,
/// bus notifications aside, must be its copy.
#[track_caller]
fn marker(mon: &Connection, tx: &Connection, rx: &Connection, cookie: u64) {
    ok(tx.send(&Message::to(rx.id()).cookie(cookie)));
    let m = next(rx);
    assert_eq!((m.src_id(), m.cookie()), (tx.id(), cookie));
    drop(m);
    let m = next_non_notification(mon);
    assert_eq!(
        (m.src_id(), m.dst_id(), m.cookie()),
        (tx.id(), rx.id(), cookie),
        "expected the marker copy first; got kernel item {:?}",
        m.kernel_item()
    );
}

fn has_item(m: &Received<'_>, t: u64) -> bool {
    m.items().flatten().any(|i| i.type_ == t)
}

/// Selftest 8, CON13, NAM19: a monitor cannot own names, nor send (unicast or
/// broadcast), nor leave with BYEBYE, nor manage matches (kdbus HEAD: it sees
/// everything without them).
#[test]
fn monitor_cannot_own_or_send() {
    let b = Broker::start();
    let mon = monitor(&b, 0);
    let c = b.conn();
    assert_eq!(errno(mon.acquire_name("foo.bar.baz", 0)), Errno::EOPNOTSUPP);
    assert_eq!(
        errno(mon.send(&Message::to(c.id()).cookie(1))),
        Errno::EOPNOTSUPP
    );
    let f = Bloom::new(mon.bloom());
    assert_eq!(
        errno(mon.send(&Message::broadcast(&f).cookie(2))),
        Errno::EOPNOTSUPP
    );
    assert_eq!(errno(mon.byebye()), Errno::EOPNOTSUPP);
    assert_eq!(
        errno(mon.add_match(1, &MatchRule::new(), false)),
        Errno::EOPNOTSUPP
    );
    assert_eq!(errno(mon.match_remove(1)), Errno::EOPNOTSUPP);
    // Nothing of the above reached c.
    assert_eq!(c.recv().err().map(|e| e.errno()), Some(Errno::EAGAIN));
}

/// Selftest 8, MON2, MSG25: the monitor sees a copy of a unicast between two others,
/// with payload, source, destination and cookie; a failed send leaves no copy.
#[test]
fn monitor_sees_unicast() {
    let b = Broker::start();
    let mon = monitor(&b, 0);
    let a = b.conn();
    let c = b.conn();
    // Unknown destination: nothing delivered, nothing copied.
    assert_eq!(
        errno(a.send(&Message::to(c.id() + 100).cookie(1))),
        Errno::ENXIO
    );
    let cookie = 0xdeadbeef;
    ok(a.send(
        &Message::to(c.id())
            .cookie(cookie)
            .payload(b"hello ")
            .payload(b"monitor"),
    ));
    let m = next(&c);
    assert_eq!((m.src_id(), m.cookie()), (a.id(), cookie));
    assert_eq!(m.payload_bytes(), b"hello monitor");
    drop(m);
    let m = next_non_notification(&mon);
    assert_eq!(
        (m.src_id(), m.dst_id(), m.cookie()),
        (a.id(), c.id(), cookie)
    );
    assert_eq!(m.header().payload_type, abi::payload::DBUS);
    assert_eq!(m.payload_bytes(), b"hello monitor");
    drop(m);
    // To a well-known name: the copy keeps dst_id as sent (0, by name).
    ok(c.acquire_name("foo.bar.dest", 0));
    ok(a.send(
        &Message::to_name("foo.bar.dest")
            .cookie(cookie + 1)
            .payload(b"n"),
    ));
    assert_eq!(next(&c).cookie(), cookie + 1);
    let m = next_non_notification(&mon);
    assert_eq!((m.src_id(), m.cookie()), (a.id(), cookie + 1));
    assert_eq!(m.payload_bytes(), b"n");
    drop(m);
    // The other direction too.
    marker(&mon, &c, &a, MARK);
}

/// MON2: a synchronous call and its reply (which never enters the caller's queue) are
/// both copied to the monitor.
#[test]
fn monitor_sees_sync_call_and_reply() {
    let b = Broker::start();
    let mon = monitor(&b, 0);
    let a = b.conn();
    let c = b.conn();
    let cid = c.id();
    let t = std::thread::spawn(move || {
        let m = ok(c.recv_timeout(Some(SOON)));
        let (src, cookie) = (m.src_id(), m.cookie());
        assert!(m.expects_reply());
        drop(m);
        ok(c.send(
            &Message::to(src)
                .reply_to(cookie)
                .cookie(77)
                .payload(b"pong"),
        ));
        c
    });
    let r = ok(a.call(
        Message::to(cid).cookie(42).payload(b"ping"),
        Duration::from_secs(10),
    ));
    assert_eq!((r.src_id(), r.cookie_reply()), (cid, 42));
    assert_eq!(r.payload_bytes(), b"pong");
    drop(r);
    let c = t.join().expect("replier");
    let m = next_non_notification(&mon);
    assert_eq!((m.src_id(), m.dst_id(), m.cookie()), (a.id(), cid, 42));
    assert!(m.expects_reply());
    assert_eq!(m.payload_bytes(), b"ping");
    drop(m);
    let m = next_non_notification(&mon);
    assert_eq!((m.src_id(), m.dst_id(), m.cookie()), (cid, a.id(), 77));
    assert_eq!(m.cookie_reply(), 42);
    assert_eq!(m.payload_bytes(), b"pong");
    drop(m);
    marker(&mon, &a, &c, MARK);
}

/// MON2, RPL4, NOT4: the bus's REPLY_TIMEOUT to a requester is copied to the monitor
/// (src 0, dst = requester, cookie_reply = the request's cookie).
#[test]
fn monitor_sees_reply_timeout() {
    let b = Broker::start();
    let mon = monitor(&b, 0);
    let a = b.conn();
    let c = b.conn();
    let deadline = kdbus::monotonic_ns() + 100_000_000;
    ok(a.send(&Message::to(c.id()).cookie(9).expect_reply(deadline)));
    let m = next_non_notification(&mon);
    assert_eq!((m.src_id(), m.dst_id(), m.cookie()), (a.id(), c.id(), 9));
    drop(m);
    // c never answers.
    let m = next(&a);
    assert_eq!(m.kernel_item(), Some(item::REPLY_TIMEOUT));
    assert_eq!((m.src_id(), m.dst_id(), m.cookie_reply()), (0, a.id(), 9));
    drop(m);
    let m = next_non_notification(&mon);
    assert_eq!(m.kernel_item(), Some(item::REPLY_TIMEOUT));
    assert_eq!(m.header().payload_type, abi::payload::KERNEL);
    assert_eq!((m.src_id(), m.dst_id(), m.cookie_reply()), (0, a.id(), 9));
    drop(m);
    // REPLY_DEAD too: c leaves with a request queued.
    let deadline = kdbus::monotonic_ns() + 60_000_000_000;
    ok(a.send(&Message::to(c.id()).cookie(10).expect_reply(deadline)));
    assert_eq!(next_non_notification(&mon).cookie(), 10);
    drop(c);
    let m = next(&a);
    assert_eq!(m.kernel_item(), Some(item::REPLY_DEAD));
    assert_eq!(m.cookie_reply(), 10);
    drop(m);
    // (c's ID_REMOVE reaches the monitor too, before or after.)
    let m = next_non_notification(&mon);
    assert_eq!(m.kernel_item(), Some(item::REPLY_DEAD));
    assert_eq!((m.src_id(), m.dst_id(), m.cookie_reply()), (0, a.id(), 10));
}

/// Selftest 8, MON3 (kdbus HEAD): without any match the monitor sees every broadcast,
/// also one no ordinary connection subscribed to, and every bus notification (ID_ADD,
/// NAME_ADD, NAME_REMOVE, ID_REMOVE), each exactly once.
#[test]
fn monitor_sees_broadcasts_and_notifications_without_matches() {
    let b = Broker::start();
    let mon = monitor(&b, 0);
    let a = b.conn();
    let c = b.conn();

    #[track_caller]
    fn id_notification(m: &Received<'_>, t: u64, id: u64) {
        assert_eq!(m.kernel_item(), Some(t), "expected {t:#x}");
        assert_eq!(m.header().payload_type, abi::payload::KERNEL);
        assert_eq!((m.src_id(), m.dst_id()), (0, abi::DST_ID_BROADCAST));
        let p: abi::NotifyIdChange =
            abi::read_struct(m.item(t).expect("ID item")).expect("payload");
        assert_eq!(p.id, id);
    }
    // HELLO is synchronous: the ID_ADDs are queued in order.
    id_notification(&next(&mon), item::ID_ADD, a.id());
    id_notification(&next(&mon), item::ID_ADD, c.id());

    // A broadcast an ordinary receiver subscribed to: both get it.
    ok(c.add_match(1, &MatchRule::new(), false));
    let f = Bloom::new(a.bloom());
    ok(a.send(&Message::broadcast(&f).cookie(1).payload(b"bc")));
    assert_eq!(
        next(&c).cookie(),
        1,
        "an ordinary receiver with a match gets it"
    );
    let m = next(&mon);
    assert_eq!(
        (m.src_id(), m.dst_id(), m.cookie()),
        (a.id(), abi::DST_ID_BROADCAST, 1)
    );
    assert_eq!(m.payload_bytes(), b"bc");
    drop(m);

    // One nobody subscribed to: only the monitor gets it.
    ok(c.match_remove(1));
    ok(a.send(&Message::broadcast(&f).cookie(2).payload(b"unwanted")));
    let m = next(&mon);
    assert_eq!(
        (m.src_id(), m.dst_id(), m.cookie()),
        (a.id(), abi::DST_ID_BROADCAST, 2)
    );
    assert_eq!(m.payload_bytes(), b"unwanted");
    drop(m);

    // Notifications, nobody having asked for them.
    let n = b.conn();
    let nid = n.id();
    id_notification(&next(&mon), item::ID_ADD, nid);
    let name = "foo.bar.monitored";
    ok(n.acquire_name(name, 0));
    let m = next(&mon);
    assert_eq!(m.kernel_item(), Some(item::NAME_ADD));
    assert_eq!(m.src_id(), 0);
    assert!(
        m.item(item::NAME_ADD)
            .expect("NAME_ADD item")
            .windows(name.len())
            .any(|w| w == name.as_bytes()),
        "NAME_ADD names {name}"
    );
    drop(m);
    ok(n.release_name(name));
    let m = next(&mon);
    assert_eq!(m.kernel_item(), Some(item::NAME_REMOVE));
    assert_eq!(m.src_id(), 0);
    drop(m);
    ok(n.byebye());
    id_notification(&next(&mon), item::ID_REMOVE, nid);

    // Exactly one copy of each: the next message is the marker's copy, strictly.
    ok(a.send(&Message::to(c.id()).cookie(MARK)));
    assert_eq!(next(&c).cookie(), MARK);
    let m = next(&mon);
    assert_eq!(
        (m.src_id(), m.dst_id(), m.cookie()),
        (a.id(), c.id(), MARK),
        "expected the marker copy; got kernel item {:?}",
        m.kernel_item()
    );
    drop(m);
    // c, without a match since broadcast 1, got neither broadcast 2 nor a notification.
    assert_eq!(c.recv().err().map(|e| e.errno()), Some(Errno::EAGAIN));
}

/// Selftest 8, MON4, MD4, UPD2: the monitor's own attach flags apply: with 0 no
/// TIMESTAMP; after UPDATE to TIMESTAMP|CREDS those are present and PID_COMM is not
/// (an ordinary receiver asking for everything does get PID_COMM). The same holds for
/// unicast copies.
#[test]
fn monitor_attach_flags() {
    let b = Broker::start();
    let mon = monitor(&b, 0);
    let a = b.conn();
    let c = b.conn(); // attach_recv ALL

    // No match: a monitor sees broadcasts without one (kdbus HEAD).
    let f = Bloom::new(a.bloom());

    ok(a.send(&Message::broadcast(&f).cookie(1)));
    let m = next_non_notification(&mon);
    assert_eq!(m.cookie(), 1);
    assert!(!has_item(&m, item::TIMESTAMP), "no TIMESTAMP with attach 0");
    drop(m);

    ok(mon.update_attach(None, Some(attach::TIMESTAMP | attach::CREDS)));
    ok(a.send(&Message::broadcast(&f).cookie(2)));
    let m = next_non_notification(&mon);
    assert_eq!(m.cookie(), 2);
    assert!(has_item(&m, item::TIMESTAMP));
    assert!(has_item(&m, item::CREDS));
    assert!(!has_item(&m, item::PID_COMM), "PID_COMM was not requested");
    drop(m);

    ok(a.send(&Message::to(c.id()).cookie(3)));
    let m = next(&c);
    assert!(
        has_item(&m, item::PID_COMM),
        "the receiver asked for all metadata"
    );
    assert!(has_item(&m, item::TIMESTAMP));
    drop(m);
    let m = next_non_notification(&mon);
    assert_eq!((m.cookie(), m.dst_id()), (3, c.id()));
    assert!(has_item(&m, item::TIMESTAMP));
    assert!(has_item(&m, item::CREDS));
    assert!(
        !has_item(&m, item::PID_COMM),
        "the copy follows the monitor's flags"
    );
    drop(m);

    // Back to 0.
    ok(mon.update_attach(None, Some(0)));
    ok(a.send(&Message::to(c.id()).cookie(4)));
    assert_eq!(next(&c).cookie(), 4);
    let m = next_non_notification(&mon);
    assert_eq!(m.cookie(), 4);
    assert!(!has_item(&m, item::TIMESTAMP));
    assert!(!has_item(&m, item::CREDS));

    // A monitor made with TIMESTAMP at HELLO gets it from the start.
    let mon2 = monitor(&b, attach::TIMESTAMP);
    ok(a.send(&Message::to(c.id()).cookie(5)));
    assert_eq!(next(&c).cookie(), 5);
    let m = next_non_notification(&mon2);
    assert_eq!(m.cookie(), 5);
    assert!(has_item(&m, item::TIMESTAMP));
    assert!(!has_item(&m, item::CREDS));
}

/// Section C / MON5 (HEAD): monitors are invisible: no ID_ADD / ID_REMOVE when they
/// come and go, not in LIST, not addressable by id (CON14: ENXIO).
#[test]
fn monitor_is_invisible() {
    let b = Broker::start();
    let watcher = b.conn();
    ok(watcher.add_match(1, &MatchRule::new(), false));
    let mon = monitor(&b, 0);
    let mon_id = mon.id();
    // HELLO is synchronous: a monitor ID_ADD would be queued before p's.
    let p = b.conn();
    let m = next(&watcher);
    assert_eq!(m.kernel_item(), Some(item::ID_ADD));
    let n: abi::NotifyIdChange =
        abi::read_struct(m.item(item::ID_ADD).expect("ID_ADD")).expect("payload");
    assert_eq!(
        n.id,
        p.id(),
        "the first ID_ADD is p's, none for the monitor"
    );
    assert_eq!(n.flags, hello_flags::ACCEPT_FD);
    drop(m);

    // Not in LIST (UNIQUE or everything); the ordinary connections are.
    for flags in [list_flags::UNIQUE, list_flags::ALL] {
        let ids: Vec<u64> = ok(watcher.list(flags)).iter().map(|i| i.id).collect();
        assert!(!ids.contains(&mon_id), "monitor {mon_id} listed: {ids:?}");
        assert!(
            ids.contains(&p.id()) && ids.contains(&watcher.id()),
            "{ids:?}"
        );
    }
    // Not addressable by id.
    assert_eq!(errno(p.send(&Message::to(mon_id).cookie(1))), Errno::ENXIO);
    let f = Bloom::new(p.bloom());
    assert_eq!(
        errno(p.send(&Message::to(mon_id).signal(&f).cookie(2))),
        Errno::ENXIO
    );

    // Leaving: the monitor's socket closes; give the broker ample time to notice, then
    // let p leave. Whatever arrives up to p's ID_REMOVE (and shortly after) must not
    // mention the monitor. The wait only makes a wrong ID_REMOVE likely to show up
    // before the marker; a correct broker never sends one, however long we wait.
    drop(mon);
    std::thread::sleep(Duration::from_millis(300));
    let pid = p.id();
    ok(p.byebye());
    let m = next(&watcher);
    let n: abi::NotifyIdChange = abi::read_struct(
        m.item(item::ID_REMOVE)
            .unwrap_or_else(|| panic!("expected ID_REMOVE, got {:?}", m.kernel_item())),
    )
    .expect("payload");
    assert_eq!(
        n.id, pid,
        "the first ID_REMOVE is p's, none for the monitor"
    );
    drop(m);
    match watcher.recv_timeout(Some(Duration::from_millis(300))) {
        Err(e) => assert_eq!(e.errno(), Errno::EAGAIN),
        Ok(m) => panic!(
            "unexpected message after p's ID_REMOVE: kernel item {:?}",
            m.kernel_item()
        ),
    };
}
