//! Selftest 1 (bus-make) and the BUS_MAKE rules of spec A.0/A.2.

mod common;
use common::*;
use kdbus::abi::{self, cmd, item, make_flags, BloomParameter, Errno};
use kdbus::{Connection, Control};
use std::os::unix::fs::PermissionsExt;
use zerocopy::IntoBytes;

/// BUS_MAKE on a fresh control handle; returns the errno (0 on success) and the handle.
fn bus_make_raw(b: &Broker, body: &[u8]) -> (Errno, Control) {
    let ctl = b.control();
    let (e, _) = ok(ctl.raw_request(cmd::BUS_MAKE, body));
    (Errno(e), ctl)
}

fn bus_make_errno(b: &Broker, body: &[u8]) -> Errno {
    bus_make_raw(b, body).0
}

fn name(suffix: &str) -> String {
    format!("{}-{suffix}", uid())
}

// selftest 1: names without the uid prefix, with '@', with a trailing '-' (BUS3, BUS4)
#[test]
fn bus_name_syntax() {
    let b = Broker::start();
    for bad in [
        "foo".to_owned(),
        name("blah@123"),
        name("blah-"),
        // BUS3: the whole "<uid>-" prefix is checked, not just its first character.
        format!("{}1-blah", uid()),
        format!("{}-", uid()),
        format!("{}blah", uid()),
        "-foo".to_owned(),
    ] {
        let e = bus_make_errno(&b, &bus_make_body(&bad, 0, TEST_BLOOM));
        assert_eq!(e, Errno::EINVAL, "bus name {bad:?}");
    }
}

// G6/BUS4: a 64-character sysname is too long, 63 is fine
#[test]
fn bus_name_too_long() {
    let b = Broker::start();
    let prefix = format!("{}-", uid());
    let long = format!("{prefix}{}", "a".repeat(64 - prefix.len()));
    assert_eq!(long.len(), 64);
    let e = bus_make_errno(&b, &bus_make_body(&long, 0, TEST_BLOOM));
    assert_eq!(e, Errno::ENAMETOOLONG);

    let max = &long[..63];
    let (e, _owner) = bus_make_raw(&b, &bus_make_body(max, 0, TEST_BLOOM));
    assert_eq!(e, Errno(0));
    assert!(b.endpoint_of(max).exists());
}

// selftest 1: a valid name creates the endpoint, BUS_CREATOR_INFO works, the handle
// cannot make a second bus (BUS10, G7)
#[test]
fn bus_make_creates_endpoint() {
    let b = Broker::start();
    let bus = name("blah-1");
    let (e, ctl) = bus_make_raw(&b, &bus_make_body(&bus, 0, TEST_BLOOM));
    assert_eq!(e, Errno(0));
    let ep = b.endpoint_of(&bus);
    assert!(ep.exists(), "{} missing", ep.display());

    let conn = ok(Connection::hello(&ep, &test_hello()));
    assert_eq!(conn.id(), 1);
    ok(conn.bus_creator_info(0));

    // The control handle is now the bus owner.
    let (e, _) = ok(ctl.raw_request(cmd::BUS_MAKE, &bus_make_body(&bus, 0, TEST_BLOOM)));
    assert_eq!(Errno(e), Errno::EBADFD);
    let other = name("blah-2");
    let (e, _) = ok(ctl.raw_request(cmd::BUS_MAKE, &bus_make_body(&other, 0, TEST_BLOOM)));
    assert_eq!(Errno(e), Errno::EBADFD);
    assert!(!b.endpoint_of(&other).exists());
}

// BUS10 through the library's BusOwner: anything on the owner handle is EBADFD
#[test]
fn bus_owner_handle_rejects_everything() {
    let b = Broker::start();
    let owner = b.make_bus("owner", 0);
    for c in [cmd::BUS_MAKE, cmd::HELLO, cmd::SEND, cmd::BYEBYE] {
        let (e, _) = ok(owner.raw_request(c, &bus_make_body(&owner.name, 0, TEST_BLOOM)));
        assert_eq!(Errno(e), Errno::EBADFD, "command {}", cmd::name(c));
    }
}

// G7: a control handle answers only BUS_MAKE
#[test]
fn control_handle_rejects_other_commands() {
    let b = Broker::start();
    let ctl = b.control();
    for c in [cmd::HELLO, cmd::SEND, cmd::BYEBYE, cmd::CONN_INFO, 0x77] {
        let body = abi::CmdGeneric {
            size: 24,
            ..Default::default()
        };
        let (e, _) = ok(ctl.raw_request(c, body.as_bytes()));
        assert_eq!(Errno(e), Errno::ENOTTY, "command {}", cmd::name(c));
    }
    // Still a control handle: it can make a bus afterwards.
    let (e, _) = ok(ctl.raw_request(cmd::BUS_MAKE, &bus_make_body(&name("x"), 0, TEST_BLOOM)));
    assert_eq!(Errno(e), Errno(0));
}

// BUS2: MAKE_NAME and BLOOM_PARAMETER are mandatory and unique
#[test]
fn mandatory_items() {
    let b = Broker::start();
    let bus = name("items");
    let cmd0 = abi::CmdGeneric::default();
    let name_item = |w: &mut abi::ItemWriter<'_>| w.push_str(item::MAKE_NAME, &bus);
    let bloom_item =
        |w: &mut abi::ItemWriter<'_>| w.push(item::BLOOM_PARAMETER, TEST_BLOOM.as_bytes());

    let only_name = cmd_body(&cmd0, &items(|w| name_item(w)));
    assert_eq!(bus_make_errno(&b, &only_name), Errno::EBADMSG);

    let only_bloom = cmd_body(&cmd0, &items(|w| bloom_item(w)));
    assert_eq!(bus_make_errno(&b, &only_bloom), Errno::EBADMSG);

    let nothing = cmd_body(&cmd0, &[]);
    assert_eq!(bus_make_errno(&b, &nothing), Errno::EBADMSG);

    let two_names = cmd_body(
        &cmd0,
        &items(|w| {
            name_item(w);
            w.push_str(item::MAKE_NAME, &format!("{bus}2"));
            bloom_item(w);
        }),
    );
    assert_eq!(bus_make_errno(&b, &two_names), Errno::EEXIST);

    let two_blooms = cmd_body(
        &cmd0,
        &items(|w| {
            name_item(w);
            bloom_item(w);
            bloom_item(w);
        }),
    );
    assert_eq!(bus_make_errno(&b, &two_blooms), Errno::EEXIST);

    // None of the failures created anything.
    assert!(!b.endpoint_of(&bus).exists());
}

// G10: unknown item types in BUS_MAKE are ignored
#[test]
fn unknown_items_are_ignored() {
    let b = Broker::start();
    let bus = name("unknown-items");
    let body = cmd_body(
        &abi::CmdGeneric::default(),
        &items(|w| {
            w.push_u64(0x7777, 42);
            w.push_str(item::MAKE_NAME, &bus);
            w.push(item::BLOOM_PARAMETER, TEST_BLOOM.as_bytes());
        }),
    );
    let (e, _owner) = bus_make_raw(&b, &body);
    assert_eq!(e, Errno(0));
    assert!(b.endpoint_of(&bus).exists());
}

// G2/G3/G4: size and flags of the command, item framing
#[test]
fn malformed_commands() {
    let b = Broker::start();
    let bus = name("malformed");
    let good = bus_make_body(&bus, 0, TEST_BLOOM);

    let mut short = good.clone();
    short[..8].copy_from_slice(&8u64.to_ne_bytes());
    assert_eq!(bus_make_errno(&b, &short), Errno::EINVAL, "size < header");

    let mut huge = good.clone();
    huge[..8].copy_from_slice(&(64 * 1024u64).to_ne_bytes());
    huge.resize(64 * 1024, 0);
    assert_eq!(bus_make_errno(&b, &huge), Errno::EMSGSIZE, "size > 32 KiB");

    let mut flags = good.clone();
    flags[8..16].copy_from_slice(&(1u64 << 20).to_ne_bytes());
    assert_eq!(bus_make_errno(&b, &flags), Errno::EINVAL, "unknown flag");

    // An item whose size runs past the end of the command.
    let mut overrun = good.clone();
    overrun[24..32].copy_from_slice(&4096u64.to_ne_bytes());
    assert_eq!(bus_make_errno(&b, &overrun), Errno::EINVAL, "item overrun");

    // A header-only item.
    let header_only = cmd_body(
        &abi::CmdGeneric::default(),
        &[
            abi::ItemHeader {
                size: 16,
                type_: item::MAKE_NAME,
            }
            .as_bytes(),
            &items(|w| w.push(item::BLOOM_PARAMETER, TEST_BLOOM.as_bytes())),
        ]
        .concat(),
    );
    assert_eq!(
        bus_make_errno(&b, &header_only),
        Errno::EINVAL,
        "empty item"
    );

    // A name that is not NUL-terminated.
    let unterminated = cmd_body(
        &abi::CmdGeneric::default(),
        &items(|w| {
            w.push(item::MAKE_NAME, bus.as_bytes());
            w.push(item::BLOOM_PARAMETER, TEST_BLOOM.as_bytes());
        }),
    );
    assert_eq!(bus_make_errno(&b, &unterminated), Errno::EINVAL, "no NUL");

    assert!(!b.endpoint_of(&bus).exists());
    // The broker still makes buses.
    let (e, _owner) = bus_make_raw(&b, &good);
    assert_eq!(e, Errno(0));
}

// BUS5: 8 <= bloom size <= 4096, multiple of 8, n_hash >= 1
#[test]
fn bloom_parameters() {
    let b = Broker::start();
    let bad = [(0, 1), (4, 1), (12, 1), (4104, 1), (8192, 1), (64, 0)];
    for (i, (size, n_hash)) in bad.into_iter().enumerate() {
        let body = bus_make_body(
            &name(&format!("bad{i}")),
            0,
            BloomParameter { size, n_hash },
        );
        assert_eq!(
            bus_make_errno(&b, &body),
            Errno::EINVAL,
            "bloom size {size} n_hash {n_hash}"
        );
    }
    let mut owners = Vec::new();
    for (i, (size, n_hash)) in [(8, 1), (4096, 64)].into_iter().enumerate() {
        let bus = name(&format!("good{i}"));
        let bloom = BloomParameter { size, n_hash };
        let owner = ok(b.control().make_bus(&bus, 0, bloom));
        let conn = ok(Connection::hello(&owner.endpoint, &test_hello()));
        assert_eq!(conn.bloom(), bloom, "bloom handed back at HELLO");
        owners.push(owner);
    }
}

// BUS8: bus names are unique in the domain
#[test]
fn duplicate_bus_name() {
    let b = Broker::start();
    let bus = name("dup");
    let (e, _owner) = bus_make_raw(&b, &bus_make_body(&bus, 0, TEST_BLOOM));
    assert_eq!(e, Errno(0));
    assert_eq!(
        bus_make_errno(&b, &bus_make_body(&bus, 0, TEST_BLOOM)),
        Errno::EEXIST
    );
    // The broker's own default bus is taken as well.
    assert_eq!(
        bus_make_errno(&b, &bus_make_body(&name("user"), 0, TEST_BLOOM)),
        Errno::EEXIST
    );
}

// BUS10: closing the owner handle removes the bus, its endpoint and its connections;
// the name becomes free again
#[test]
fn bus_dies_with_owner() {
    let b = Broker::start();
    let owner = b.make_bus("ephemeral", 0);
    let ep = owner.endpoint.clone();
    let bus = owner.name.clone();
    let conn = ok(Connection::hello(&ep, &test_hello()));
    let peer = ok(Connection::hello(&ep, &test_hello()));
    // G9/CON10: an endpoint handle opened before the bus went away.
    let mut early = RawSocket::connect(&ep);

    drop(owner);
    assert!(wait_until(SOON, || !ep.exists()), "endpoint still there");

    // The connections were hung up on.
    assert_eq!(
        errno(conn.recv_timeout(Some(SOON))),
        Errno::ECONNRESET,
        "connection not hung up"
    );
    assert_eq!(errno(peer.info(peer.id(), 0)), Errno::ECONNRESET);
    assert!(Connection::hello(&ep, &test_hello()).is_err());

    let r = early.request(cmd::HELLO, &test_hello().encode());
    assert_eq!(Errno(r.error), Errno::ESHUTDOWN, "HELLO on a dead bus");

    // The name can be reused, and the new bus is a different bus.
    let again = ok(b.control().make_bus(&bus, 0, TEST_BLOOM));
    let c2 = ok(Connection::hello(&again.endpoint, &test_hello()));
    assert_eq!(c2.id(), 1, "ids restart on the new bus");

    // Other buses were not affected.
    let x = b.conn();
    let y = b.conn();
    ok(x.send(&kdbus::Message::to(y.id()).payload(b"still here")));
    let m = ok(y.recv_timeout(Some(SOON)));
    assert_eq!(m.payload_bytes(), b"still here");
}

// BUS6: access flags decide the endpoint's permissions
#[test]
fn endpoint_access_mode() {
    let b = Broker::start();
    for (suffix, flags, mode) in [
        ("private", 0, 0o600),
        ("group", make_flags::ACCESS_GROUP, 0o660),
        ("world", make_flags::ACCESS_WORLD, 0o666),
    ] {
        let owner = b.make_bus(suffix, flags);
        let m = std::fs::metadata(&owner.endpoint).expect("stat endpoint");
        assert_eq!(m.permissions().mode() & 0o777, mode, "bus {suffix}");
    }
}

// BUS7, BUS11, BUS12, BUS14: what HELLO and BUS_CREATOR_INFO report about the bus
#[test]
fn bus_creator_info() {
    let b = Broker::start();
    let flags = make_flags::ACCESS_WORLD;
    let bus1 = b.make_bus("creator-1", flags);
    let bus2 = b.make_bus("creator-2", 0);
    let c1 = ok(Connection::hello(&bus1.endpoint, &test_hello()));
    let c1b = ok(Connection::hello(&bus1.endpoint, &test_hello()));
    let c2 = ok(Connection::hello(&bus2.endpoint, &test_hello()));

    assert_eq!(c1.bus_flags(), flags);
    assert_eq!(c2.bus_flags(), 0);

    // A random v4 UUID per bus, the same for every connection of the bus.
    let id128 = c1.bus_id128();
    assert_eq!(id128[6] >> 4, 4, "UUID version");
    assert_eq!(id128[8] & 0xc0, 0x80, "UUID variant");
    assert_eq!(c1b.bus_id128(), id128);
    assert_ne!(c2.bus_id128(), id128);

    let all = abi::attach::CREDS | abi::attach::PIDS | abi::attach::EXE;
    let i1 = ok(c1.bus_creator_info(all));
    let i2 = ok(c2.bus_creator_info(all));
    assert_eq!(i1.flags, flags);
    assert_eq!(i2.flags, 0);
    assert!(i1.id >= 1 && i2.id > i1.id, "bus ids {} {}", i1.id, i2.id);
    // We made both buses: the creator is this process.
    assert_eq!(i1.uid, Some(uid() as u64));
    assert_eq!(i1.pid, Some(std::process::id() as u64));
    let exe = std::env::current_exe().unwrap();
    assert_eq!(i1.exe.as_deref(), exe.to_str());
    // The bus name comes first, before the metadata.
    assert_eq!(i2.items.first().map(|i| i.0), Some(item::MAKE_NAME));

    // Without attach flags, no metadata items: only the MAKE_NAME item that kdbus HEAD
    // puts first, holding the bus name (NUL-terminated).
    let bare = ok(c1.bus_creator_info(0));
    let mut make_name = bus1.name.clone().into_bytes();
    make_name.push(0);
    assert_eq!(
        bare.items,
        vec![(item::MAKE_NAME, make_name)],
        "items {:?}",
        bare.items
    );
    assert_eq!(bus1.name, format!("{}-creator-1", uid()));
}

// BUS14: the BUS_CREATOR_INFO result is a pool slice the caller must FREE
#[test]
fn bus_creator_info_slice_is_freed_once() {
    let b = Broker::start();
    let conn = b.conn();
    let c = abi::CmdInfo {
        size: std::mem::size_of::<abi::CmdInfo>() as u64,
        ..Default::default()
    };
    let (e, wb, _) = ok(conn.request(cmd::BUS_CREATOR_INFO, c.as_bytes(), &[]));
    assert_eq!(e, 0);
    let wb: abi::CmdInfo = abi::read_struct(&wb).expect("write-back");
    assert!(wb.info_size >= std::mem::size_of::<abi::Info>() as u64);
    let info: abi::Info = abi::read_struct(
        conn.pool()
            .slice(wb.offset, wb.info_size)
            .expect("slice in pool"),
    )
    .unwrap();
    assert_eq!(info.size, wb.info_size);
    ok(conn.free(wb.offset));
    assert_eq!(errno(conn.free(wb.offset)), Errno::ENXIO);

    let mut bad = c;
    bad.flags = 1;
    let (e, _, _) = ok(conn.request(cmd::BUS_CREATOR_INFO, bad.as_bytes(), &[]));
    assert_eq!(Errno(e), Errno::EINVAL, "unknown flags");
}
