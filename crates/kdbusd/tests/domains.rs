//! Domains: separate trees in one broker, each with its own `control`, buses, ids,
//! sequence numbers and names; made at run time with DOMAIN_MAKE (64d871b's
//! `domain-make` selftest, ported) or given as further `--runtime-dir`s. Nothing
//! crosses between them, and a domain goes with its owner's handle.

mod common;
use common::*;
use kdbus::abi::{self, cmd, item, Errno, Timestamp};
use kdbus::bloom::Bloom;
use kdbus::{Connection, MatchRule, Message};
use std::path::Path;
use std::time::Duration;

fn root() -> bool {
    root_or_skip("DOMAIN_MAKE needs a privileged caller")
}

/// 64d871b's test-domain.c, step by step.
#[test]
fn domain_make() {
    if !root() {
        return;
    }
    let b = Broker::start();
    let control = b.runtime_dir().join("domain/blah/control");
    let owner = ok(b.control().make_domain("blah", 0));
    assert!(control.exists(), "{} exists", control.display());
    // The same handle cannot make a second one.
    let again = abi::encode::domain_make("blah2", 0);
    let (e, _) = ok(owner.raw_request(cmd::DOMAIN_MAKE, &again));
    assert_eq!(Errno(e), Errno::EBADFD);
    // Nor can the same name be made twice.
    assert_eq!(errno(b.control().make_domain("blah", 0)), Errno::EEXIST);
    // A name is required, once.
    let head = std::mem::size_of::<abi::CmdGeneric>();
    let mut nameless = abi::encode::domain_make("x", 0);
    nameless.truncate(head);
    nameless[..8].copy_from_slice(&(head as u64).to_ne_bytes());
    let (e, _) = ok(b.control().raw_request(cmd::DOMAIN_MAKE, &nameless));
    assert_eq!(Errno(e), Errno::EBADMSG);
    let mut twice = abi::encode::domain_make("x", 0);
    let item_part = twice[head..].to_vec();
    twice.extend_from_slice(&item_part);
    let size = twice.len() as u64;
    twice[..8].copy_from_slice(&size.to_ne_bytes());
    let (e, _) = ok(b.control().raw_request(cmd::DOMAIN_MAKE, &twice));
    assert_eq!(Errno(e), Errno::EEXIST);
    // Closing the owner removes the domain.
    drop(owner);
    assert!(
        wait_until(SOON, || !control.exists()),
        "the domain's control socket is gone with its owner"
    );
}

/// Everything of one domain, and what its first connection sees.
struct Side {
    bus: kdbus::BusOwner,
    conn: Connection,
}

fn side(runtime_dir: &Path) -> Side {
    let name = format!("{}-iso", uid());
    let bus = ok(kdbus::Control::open(runtime_dir))
        .make_bus(&name, abi::make_flags::ACCESS_WORLD, TEST_BLOOM)
        .expect("the same bus name in each domain");
    let conn = ok(Connection::hello(&bus.endpoint, &test_hello()));
    Side { bus, conn }
}

/// The sequence number of a received message.
fn seqnum(c: &Connection) -> u64 {
    let m = ok(c.recv_timeout(Some(SOON)));
    let ts: Timestamp = m
        .item(item::TIMESTAMP)
        .and_then(abi::read_struct)
        .expect("a timestamp");
    ts.seqnum
}

#[test]
fn nothing_crosses_between_domains() {
    if !root() {
        return;
    }
    let b = Broker::start();
    let owner = ok(b
        .control()
        .make_domain("inner", abi::make_flags::ACCESS_WORLD));
    let outer = side(b.runtime_dir());
    let inner = side(&owner.runtime_dir);
    // Ids and names are per domain.
    assert_eq!(outer.conn.id(), inner.conn.id());
    ok(outer.conn.acquire_name("org.iso.Name", 0));
    ok(inner.conn.acquire_name("org.iso.Name", 0));
    assert_eq!(ok(outer.conn.list(abi::list_flags::UNIQUE)).len(), 1);
    assert_eq!(ok(inner.conn.list(abi::list_flags::UNIQUE)).len(), 1);
    // Broadcasts stay in their domain; sequence numbers are counted per domain.
    let outer2 = ok(Connection::hello(&outer.bus.endpoint, &test_hello()));
    let inner2 = ok(Connection::hello(&inner.bus.endpoint, &test_hello()));
    ok(inner2.add_match(1, &MatchRule::new(), false));
    ok(outer2.add_match(1, &MatchRule::new(), false));
    let filter = Bloom::new(TEST_BLOOM);
    for _ in 0..20 {
        ok(outer
            .conn
            .send(&Message::broadcast(&filter).payload(b"outer")));
    }
    let mut last_outer = 0;
    for _ in 0..20 {
        last_outer = seqnum(&outer2);
    }
    assert_eq!(
        errno(inner2.recv_timeout(Some(Duration::from_millis(200)))),
        Errno::EAGAIN,
        "nothing of the outer domain reaches the inner one"
    );
    ok(inner
        .conn
        .send(&Message::broadcast(&filter).payload(b"inner")));
    let first_inner = seqnum(&inner2);
    assert!(
        first_inner < last_outer,
        "the inner domain counts its own messages ({first_inner} after the outer's {last_outer})"
    );
    // Its owner gone, the domain takes its buses and connections along.
    drop(owner);
    assert!(wait_until(SOON, || inner
        .conn
        .recv_timeout(Some(Duration::from_millis(50)))
        .is_err()
        && !b.runtime_dir().join("domain/inner").exists()));
    let e = inner.conn.send(&Message::to(1).payload(b"x"));
    assert!(e.is_err(), "the inner domain's connections are gone");
    // The outer domain goes on.
    ok(outer
        .conn
        .send(&Message::to(outer2.id()).payload(b"still here")));
    assert_eq!(
        ok(outer2.recv_timeout(Some(SOON))).payload_bytes(),
        b"still here"
    );
}

/// A second `--runtime-dir` is a domain of its own, with the same buses.
#[test]
fn every_runtime_dir_is_a_domain() {
    let second = tempfile::tempdir().unwrap();
    let b = Broker::start_with(&["--runtime-dir", second.path().to_str().unwrap()]);
    let bus2 = second.path().join(format!("{}-user", uid())).join("bus");
    assert!(wait_until(SOON, || bus2.exists()));
    let a = b.conn();
    let z = ok(Connection::hello(&bus2, &test_hello()));
    assert_eq!(a.id(), z.id(), "each domain's bus counts its own ids");
    ok(a.acquire_name("org.iso.Both", 0));
    ok(z.acquire_name("org.iso.Both", 0));
    // Each owns it in its own domain.
    assert_eq!(ok(a.info_by_name("org.iso.Both", 0)).id, a.id());
    assert_eq!(ok(z.info_by_name("org.iso.Both", 0)).id, z.id());
}
