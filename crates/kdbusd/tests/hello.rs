//! Selftests 2 (hello), 18 (connection-info), 19 (connection-update) and the HELLO,
//! CONN_INFO and UPDATE rules of spec A.4.

mod common;
use common::*;
use kdbus::abi::{self, attach, cmd, hello_flags, item, Errno};
use kdbus::{Connection, HelloOptions, Message};
use zerocopy::IntoBytes;

fn hello_errno(b: &Broker, body: &[u8]) -> Errno {
    errno(Connection::hello_raw(&b.bus, body))
}

/// A NAME item as HEAD has it in HELLO and CONN_INFO: a NUL-terminated string.
fn name_item(name: &str) -> Vec<u8> {
    items(|w| w.push_str(item::NAME, name))
}

// selftest 2: size, flags, pool size, and a valid HELLO (G2, CON2, CON3)
#[test]
fn hello_basic_errors() {
    let b = Broker::start();
    assert_eq!(
        hello_errno(&b, &hello_body(|h| h.size = 1, &[])),
        Errno::EINVAL
    );
    let short = std::mem::size_of::<abi::CmdHello>() as u64 - 8;
    assert_eq!(
        hello_errno(&b, &hello_body(|h| h.size = short, &[])),
        Errno::EINVAL
    );
    assert_eq!(
        hello_errno(&b, &hello_body(|h| h.flags = 1 << 32, &[])),
        Errno::EINVAL
    );
    assert_eq!(
        hello_errno(&b, &hello_body(|h| h.pool_size = 0, &[])),
        Errno::EINVAL
    );
    assert_eq!(
        hello_errno(&b, &hello_body(|h| h.pool_size = 4097, &[])),
        Errno::EINVAL
    );
    let c = ok(Connection::hello_raw(&b.bus, &hello_body(|_| {}, &[])));
    assert_eq!(c.id(), 1, "failed HELLOs must not use up ids");
}

// selftest 2, CON5, CON6: special connections and their names
#[test]
fn hello_special_connection_rules() {
    let b = Broker::start();
    let f = |flags| hello_body(move |h| h.flags = flags, &[]);
    let with_name = |flags| hello_body(move |h| h.flags = flags, &name_item("foo.bar"));

    assert_eq!(hello_errno(&b, &f(hello_flags::ACTIVATOR)), Errno::EINVAL);
    assert_eq!(
        hello_errno(&b, &f(hello_flags::POLICY_HOLDER)),
        Errno::EINVAL
    );
    for flags in [
        hello_flags::MONITOR | hello_flags::ACTIVATOR,
        hello_flags::MONITOR | hello_flags::POLICY_HOLDER,
        hello_flags::ACTIVATOR | hello_flags::POLICY_HOLDER,
    ] {
        assert_eq!(
            hello_errno(&b, &f(flags)),
            Errno::EINVAL,
            "flags {flags:#x}"
        );
        assert_eq!(
            hello_errno(&b, &with_name(flags)),
            Errno::EINVAL,
            "flags {flags:#x} with a name"
        );
    }
    // A NAME item is only for activators and policy holders.
    assert_eq!(hello_errno(&b, &with_name(0)), Errno::EINVAL);
    assert_eq!(
        hello_errno(&b, &with_name(hello_flags::MONITOR)),
        Errno::EINVAL
    );
    // Two names.
    let two = [name_item("foo.bar"), name_item("foo.baz")].concat();
    assert_eq!(
        hello_errno(&b, &hello_body(|h| h.flags = hello_flags::ACTIVATOR, &two)),
        Errno::EINVAL
    );
    // An activator name must be a valid well-known name.
    let bad = name_item("foo");
    assert_eq!(
        hello_errno(&b, &hello_body(|h| h.flags = hello_flags::ACTIVATOR, &bad)),
        Errno::EINVAL
    );

    // Root is a privileged bus user: these work.
    ok(Connection::hello_raw(
        &b.bus,
        &with_name(hello_flags::ACTIVATOR),
    ));
    ok(Connection::hello_raw(&b.bus, &f(hello_flags::MONITOR)));
}

// CON8, G6: the connection description is a sysname, given once
#[test]
fn hello_description() {
    let b = Broker::start();
    let desc = |s: &str| {
        let it = items(|w| w.push_str(item::CONN_DESCRIPTION, s));
        hello_body(|_| {}, &it)
    };
    assert_eq!(hello_errno(&b, &desc(&"a".repeat(64))), Errno::ENAMETOOLONG);
    assert_eq!(hello_errno(&b, &desc("bad name")), Errno::EINVAL);
    assert_eq!(hello_errno(&b, &desc("-bad")), Errno::EINVAL);
    let two = items(|w| {
        w.push_str(item::CONN_DESCRIPTION, "one");
        w.push_str(item::CONN_DESCRIPTION, "two");
    });
    assert_eq!(hello_errno(&b, &hello_body(|_| {}, &two)), Errno::EINVAL);

    let c = ok(Connection::hello_raw(&b.bus, &desc(&"a".repeat(63))));
    let info = ok(c.info(c.id(), attach::CONN_DESCRIPTION));
    assert_eq!(info.description.as_deref(), Some(&*"a".repeat(63)));
}

// G4, G10: item framing in HELLO; unknown item types are ignored
#[test]
fn hello_items() {
    let b = Broker::start();
    let mut truncated = items(|w| w.push_str(item::CONN_DESCRIPTION, "abcdefghij"));
    truncated[..8].copy_from_slice(&200u64.to_ne_bytes());
    assert_eq!(
        hello_errno(&b, &hello_body(|_| {}, &truncated)),
        Errno::EINVAL
    );
    let header_only = abi::ItemHeader {
        size: 16,
        type_: item::CONN_DESCRIPTION,
    };
    assert_eq!(
        hello_errno(&b, &hello_body(|_| {}, header_only.as_bytes())),
        Errno::EINVAL
    );
    let unknown = items(|w| w.push_u64(0x7777, 1));
    ok(Connection::hello_raw(&b.bus, &hello_body(|_| {}, &unknown)));
}

// G7, G8: an endpoint handle accepts only HELLO, and only once
#[test]
fn hello_handle_states() {
    let b = Broker::start();
    let mut raw = RawSocket::connect(&b.bus);
    for c in [
        cmd::SEND,
        cmd::RECV,
        cmd::FREE,
        cmd::BYEBYE,
        cmd::CONN_INFO,
        cmd::UPDATE,
        cmd::LIST,
        cmd::BUS_MAKE,
        0x77,
    ] {
        let body = abi::CmdGeneric {
            size: 24,
            ..Default::default()
        };
        let r = raw.request(c, body.as_bytes());
        assert_eq!(
            Errno(r.error),
            Errno::ENOTTY,
            "{} before HELLO",
            cmd::name(c)
        );
    }
    // Still an endpoint handle: HELLO works, and hands out the pool.
    let r = raw.request(cmd::HELLO, &test_hello().encode());
    assert_eq!(r.error, 0);
    assert_eq!(r.fds.len(), 1, "HELLO carries the pool fd");
    let wb: abi::CmdHello = abi::read_struct(&r.body).expect("HELLO write-back");
    assert_eq!(wb.id, 1);
    assert_eq!(wb.pool_size, kdbus::DEFAULT_POOL_SIZE);

    // A second HELLO on the same handle.
    let r = raw.request(cmd::HELLO, &test_hello().encode());
    assert_eq!(Errno(r.error), Errno::ENOTTY);
    // Through the library too.
    let c = b.conn();
    let (e, _, _) = ok(c.request(cmd::HELLO, &test_hello().encode(), &[]));
    assert_eq!(Errno(e), Errno::ENOTTY);
    // An unknown command on a connection.
    let (e, _, _) = ok(c.request(0x77, &[0; 24], &[]));
    assert_eq!(Errno(e), Errno::ENOTTY);
}

// CON4, BUS12: ids count up from 1 per bus and are never reused
#[test]
fn hello_ids() {
    let b = Broker::start();
    let c1 = b.conn();
    let c2 = b.conn();
    assert_eq!((c1.id(), c2.id()), (1, 2));
    drop(c1);
    ok(c2.byebye());
    drop(c2);
    let c3 = b.conn();
    assert_eq!(c3.id(), 3);
    // Other buses count on their own.
    let owner = b.make_bus("other", 0);
    let o1 = ok(Connection::hello(&owner.endpoint, &test_hello()));
    assert_eq!(o1.id(), 1);
    let c4 = b.conn();
    assert_eq!(c4.id(), 4);
}

// CON4, BUS11: HELLO hands back the bus's bloom parameters, flags and 128-bit id
#[test]
fn hello_returns_bus_parameters() {
    let b = Broker::start();
    let bloom = abi::BloomParameter {
        size: 128,
        n_hash: 3,
    };
    let owner = ok(b.control().make_bus(
        &format!("{}-params", uid()),
        abi::make_flags::ACCESS_WORLD,
        bloom,
    ));
    let c = ok(Connection::hello(&owner.endpoint, &test_hello()));
    assert_eq!(c.bloom(), bloom);
    assert_eq!(c.bus_flags(), abi::make_flags::ACCESS_WORLD);
    assert_ne!(c.bus_id128(), [0; 16]);
    // The broker's default bus: sd-bus's parameters.
    let d = b.conn();
    assert_eq!(
        d.bloom(),
        abi::BloomParameter {
            size: 64,
            n_hash: 8
        }
    );
    assert_ne!(d.bus_id128(), c.bus_id128());
}

// selftest 18 (connection-info), INF1-INF3
#[test]
fn conn_info() {
    let b = Broker::start();
    let c = b.conn();
    let plain = ok(Connection::hello(&b.bus, &HelloOptions::new().flags(0)));

    let me = ok(c.info(c.id(), attach::CONN_DESCRIPTION | attach::CREDS));
    assert_eq!(me.id, c.id());
    assert_eq!(
        me.flags,
        hello_flags::ACCEPT_FD,
        "flags are the HELLO flags"
    );
    assert_eq!(me.description.as_deref(), Some("this-is-my-name"));
    assert_eq!(me.uid, Some(uid() as u64));

    let other = ok(c.info(plain.id(), 0));
    assert_eq!((other.id, other.flags), (plain.id(), 0));
    assert!(other.items.is_empty(), "no metadata asked for");

    assert_eq!(errno(c.info(12345, 0)), Errno::ENXIO);
}

// selftest 18: a NAME item cut short (G4, INF1)
#[test]
fn conn_info_truncated_name() {
    let b = Broker::start();
    let c = b.conn();
    let info = abi::CmdInfo::default();

    // The item claims one byte of payload: the list does not end on its boundary.
    let mut body = cmd_body(&info, &name_item("foo.bar.bla"));
    let truncated = std::mem::size_of::<abi::CmdInfo>() as u64 + 16 + 1;
    let item_at = std::mem::size_of::<abi::CmdInfo>();
    body[item_at..item_at + 8].copy_from_slice(&17u64.to_ne_bytes());
    body[..8].copy_from_slice(&truncated.to_ne_bytes());
    assert_eq!(
        errno(c.info_cmd(cmd::CONN_INFO, &body)),
        Errno::EINVAL,
        "truncated name item"
    );

    // Unknown flags.
    let mut flagged = abi::CmdInfo {
        flags: 1,
        id: c.id(),
        ..Default::default()
    };
    flagged.size = std::mem::size_of::<abi::CmdInfo>() as u64;
    assert_eq!(
        errno(c.info_cmd(cmd::CONN_INFO, flagged.as_bytes())),
        Errno::EINVAL
    );
}

// INF2: id 0 looks up the NAME item (HEAD: a plain string item)
#[test]
fn conn_info_by_name_lookup() {
    let b = Broker::start();
    let c = b.conn();
    let info = abi::CmdInfo::default();
    // id 0 without a name, with an invalid name, with an unknown name.
    assert_eq!(
        errno(c.info_cmd(cmd::CONN_INFO, &cmd_body(&info, &[]))),
        Errno::EINVAL
    );
    assert_eq!(
        errno(c.info_cmd(cmd::CONN_INFO, &cmd_body(&info, &name_item("foo")))),
        Errno::EINVAL
    );
    assert_eq!(
        errno(c.info_cmd(cmd::CONN_INFO, &cmd_body(&info, &name_item("foo.bar")))),
        Errno::ESRCH
    );
}

/// Send a message from `from` to `to` and report whether it carried a TIMESTAMP and
/// whether it carried any metadata at all.
fn received_metadata(from: &Connection, to: &Connection) -> (bool, bool) {
    ok(from.send(&Message::to(to.id()).cookie(0x12345678)));
    let m = ok(to.recv_timeout(Some(SOON)));
    assert_eq!(m.cookie(), 0x12345678);
    let ts = m.item(item::TIMESTAMP).is_some();
    let any = m
        .items()
        .flatten()
        .any(|i| (item::ATTACH_BASE..item::POLICY_ACCESS).contains(&i.type_));
    (ts, any)
}

// selftest 19 (connection-update), UPD2: the receiver's attach mask
#[test]
fn conn_update_attach_recv() {
    let b = Broker::start();
    let sender = b.conn();
    let conn = b.conn();

    assert_eq!(received_metadata(&sender, &conn), (true, true));
    ok(conn.update_attach(None, Some(attach::ALL & !attach::TIMESTAMP)));
    assert_eq!(received_metadata(&sender, &conn), (false, true));
    ok(conn.update_attach(None, Some(0)));
    assert_eq!(received_metadata(&sender, &conn), (false, false));
    ok(conn.update_attach(None, Some(attach::TIMESTAMP)));
    assert_eq!(received_metadata(&sender, &conn), (true, true));
}

// HEAD metadata: the sender's attach mask limits what receivers get
#[test]
fn conn_update_attach_send() {
    let b = Broker::start();
    let sender = b.conn();
    let conn = b.conn();
    ok(sender.update_attach(Some(attach::ALL & !attach::TIMESTAMP), None));
    assert_eq!(received_metadata(&sender, &conn), (false, true));
    ok(sender.update_attach(Some(0), None));
    assert_eq!(received_metadata(&sender, &conn), (false, false));
}

// UPD1, UPD3, G4: UPDATE errors
#[test]
fn conn_update_errors() {
    let b = Broker::start();
    let c = b.conn();
    let upd = |flags: u64, items: &[u8]| {
        let cmd = abi::CmdGeneric {
            flags,
            ..Default::default()
        };
        let (e, _, _) = ok(c.request(cmd::UPDATE, &cmd_body(&cmd, items), &[]));
        Errno(e)
    };
    assert_eq!(upd(1, &[]), Errno::EINVAL, "unknown flags");
    let bad_size = items(|w| w.push(item::ATTACH_FLAGS_RECV, &[0; 4]));
    assert_eq!(upd(0, &bad_size), Errno::EINVAL, "short ATTACH_FLAGS");
    // Policy items are for policy holders.
    assert_eq!(upd(0, &name_item("foo.bar")), Errno::EOPNOTSUPP);
    assert_eq!(upd(0, &[]), Errno(0));
}

// CON13, CON14, BYE3: what special connections may do, and that they cannot be
// addressed by id
#[test]
fn special_connections() {
    let b = Broker::start();
    let c = b.conn();
    let monitor = ok(Connection::hello(
        &b.bus,
        &test_hello().flags(hello_flags::MONITOR),
    ));
    let activator = ok(Connection::hello(
        &b.bus,
        &test_hello().activator("foo.activator"),
    ));

    for special in [&monitor, &activator] {
        assert_eq!(
            errno(c.send(&Message::to(special.id()))),
            Errno::ENXIO,
            "SEND to a special connection"
        );
        assert_eq!(errno(special.send(&Message::to(c.id()))), Errno::EOPNOTSUPP);
        assert_eq!(errno(special.byebye()), Errno::EOPNOTSUPP);
        // Queries are open to every kind of connection.
        let me = ok(special.info(special.id(), 0));
        assert_eq!(me.id, special.id());
        ok(special.bus_creator_info(0));
        ok(special.list(abi::list_flags::UNIQUE));
    }
    // Both may change what they receive (kdbus HEAD lets activators UPDATE their
    // receive flags); only a monitor may change what it sends.
    ok(monitor.update_attach(None, Some(0)));
    ok(activator.update_attach(None, Some(0)));
    ok(monitor.update_attach(Some(0), None));
    assert_eq!(
        errno(activator.update_attach(Some(0), None)),
        Errno::EOPNOTSUPP
    );
    // Both may RECV and FREE (kdbus HEAD lets activators too). The monitor has the
    // activator's ID_ADD queued (monitors see notifications without matches); the
    // activator has nothing: EAGAIN, and an offset holding no message is ENXIO, not
    // EOPNOTSUPP.
    let wb = ok(monitor.recv_broker(0, 0));
    assert_ne!(wb.msg.msg_size, 0);
    ok(monitor.free(wb.msg.offset));
    assert_eq!(errno(activator.recv_broker(0, 0)), Errno::EAGAIN);
    assert_eq!(errno(activator.free(8)), Errno::ENXIO);
    // Neither may manage matches (a monitor sees everything without them).
    for special in [&monitor, &activator] {
        assert_eq!(errno(special.match_add(1, 0, &[])), Errno::EOPNOTSUPP);
        assert_eq!(errno(special.match_remove(1)), Errno::EOPNOTSUPP);
    }
    // An ordinary connection may do all of it.
    ok(c.update_attach(Some(0), Some(0)));
    ok(c.match_add(1, 0, &[]));
    ok(c.match_remove(1));
}

// Spec C (HEAD): KDBUS_FLAG_NEGOTIATE makes HELLO report the valid flags and do
// nothing else; the handle can say HELLO for real afterwards
#[test]
fn hello_negotiate() {
    let b = Broker::start();
    let mut raw = RawSocket::connect(&b.bus);
    let body = hello_body(
        |h| h.flags = abi::FLAG_NEGOTIATE | hello_flags::ACCEPT_FD,
        &[],
    );
    let r = raw.request(cmd::HELLO, &body);
    assert_eq!(Errno(r.error), Errno(0));
    let wb: abi::CmdHello = abi::read_struct(&r.body).expect("write-back");
    assert_eq!(wb.flags, hello_flags::ALL);
    assert!(r.fds.is_empty(), "no pool for a negotiation");
    let r = raw.request(cmd::HELLO, &test_hello().encode());
    assert_eq!(r.error, 0);
    let wb: abi::CmdHello = abi::read_struct(&r.body).unwrap();
    assert_eq!(wb.id, 1, "the negotiation did not connect");
}
