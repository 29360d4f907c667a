//! Selftests 12 (message-basic, with a unicast message), 13 (message-prio), 17
//! (message-free), and the SEND / RECV / FREE / pool rules of spec A.5-A.7.

mod common;
use common::*;
use kdbus::abi::{self, cmd, item, msg_flags, recv_flags, send_flags, wire, Errno};
use kdbus::{Connection, HelloOptions, Message};
use rustix::fd::{AsFd, BorrowedFd};
use zerocopy::IntoBytes;

/// SEND a hand-built request; the errno (0 on success).
fn send_raw(conn: &Connection, req: &RawSend) -> Errno {
    send_raw_fds(conn, req, &[])
}

fn send_raw_fds(conn: &Connection, req: &RawSend, fds: &[BorrowedFd<'_>]) -> Errno {
    match conn.send_raw(&req.encode(), fds) {
        Ok(_) => Errno(0),
        Err(e) => errno::<()>(Err(e)),
    }
}

fn far_deadline() -> u64 {
    kdbus::monotonic_ns() + 60_000_000_000
}

// selftest 12 (message-basic): a message with a cookie reaches its peer; its slice is
// FREEd once (RCV7, POOL4)
#[test]
fn message_basic() {
    let b = Broker::start();
    let env = b.conn();
    let conn = b.conn();
    let cookie = 0x1234abcd5678eeff;
    ok(env.send(&Message::to(conn.id()).cookie(cookie).payload(b"payload")));

    let m = ok(conn.recv_timeout(Some(SOON)));
    assert_eq!(m.cookie(), cookie);
    assert_eq!(m.src_id(), env.id());
    assert_eq!(m.dst_id(), conn.id());
    assert_eq!(m.header().payload_type, abi::payload::DBUS);
    assert_eq!(m.payload_bytes(), b"payload");
    let offset = m.keep();
    ok(conn.free(offset));
    assert_eq!(errno(conn.free(offset)), Errno::ENXIO, "second FREE");
    assert_eq!(errno(conn.recv()), Errno::EAGAIN, "RCV2: queue is empty");
}

// RCV9, MSG10: the received header and PAYLOAD_OFF items
#[test]
fn received_layout() {
    let b = Broker::start();
    let env = b.conn();
    let conn = b.conn();
    ok(conn.update_attach(None, Some(0)));
    ok(env.send(
        &Message::to(conn.id())
            .cookie(3)
            .priority(-7)
            .payload(b"abc")
            .payload(b"defghijkl"),
    ));
    let m = ok(conn.recv_timeout(Some(SOON)));
    let h = *m.header();
    assert_eq!(
        (h.src_id, h.dst_id, h.cookie, h.priority),
        (env.id(), conn.id(), 3, -7)
    );
    // Header and two PAYLOAD_OFF items, no metadata: the payload is not counted.
    assert_eq!(h.size, 64 + 2 * 32);
    let offs: Vec<abi::Vec_> = m
        .items()
        .flatten()
        .filter(|i| i.type_ == item::PAYLOAD_OFF)
        .map(|i| abi::read_struct(i.payload).unwrap())
        .collect();
    assert_eq!(offs.len(), 2);
    assert_eq!(offs[0].size, 3);
    assert_eq!(offs[1].size, 9);
    assert!(offs.iter().all(|v| v.address_or_offset % 8 == 0));
    assert!(offs[0].address_or_offset >= h.size);
    assert_eq!(m.payload(), vec![&b"abc"[..], &b"defghijkl"[..]]);
}

const PRIOS: [i64; 12] = [25, -600, 10, -35, -100, 20, -15, -800, -150, 10, -800, -10];

fn send_prio_queue(b: &Broker) -> (Connection, Connection) {
    let a = b.conn();
    let s = b.conn();
    for (i, &p) in PRIOS.iter().enumerate() {
        ok(s.send(&Message::to(a.id()).cookie(i as u64 + 1).priority(p)));
    }
    assert!(wait_until(SOON, || a.queued() == PRIOS.len()));
    (a, s)
}

// selftest 13 (message-prio) with the library's RECV; a priority miss is EAGAIN (HEAD)
#[test]
fn message_prio_local() {
    let b = Broker::start();
    let (a, _s) = send_prio_queue(&b);
    let recv = |prio: i64| {
        a.recv_with(recv_flags::USE_PRIORITY, prio)
            .map(|m| (m.priority(), m.cookie()))
    };
    // Oldest first among equal priorities: cookies 8 then 11 for -800.
    assert_eq!(ok(recv(-200)), (-800, 8));
    assert_eq!(ok(recv(-100)), (-800, 11));
    assert_eq!(ok(recv(-400)), (-600, 2));
    assert_eq!(errno(recv(-400)), Errno::EAGAIN);
    assert_eq!(ok(recv(10)), (-150, 9));
    assert_eq!(ok(recv(10)), (-100, 5));
    // RCV3: without USE_PRIORITY, arrival order.
    let rest: Vec<i64> = (0..7).map(|_| ok(a.recv()).priority()).collect();
    assert_eq!(rest, vec![25, 10, -35, 20, -15, 10, -10]);
    assert_eq!(errno(a.recv()), Errno::EAGAIN);
}

/// RECV run by the broker; the message's (priority, cookie), then FREE.
fn recv_broker(conn: &Connection, flags: u64, prio: i64) -> kdbus::Result<(i64, u64)> {
    let wb = conn.recv_broker(flags, prio)?;
    let bytes = conn
        .pool()
        .slice(wb.msg.offset, wb.msg.msg_size)
        .expect("message inside the pool");
    let m: abi::Msg = abi::read_struct(bytes).expect("message header");
    if flags & recv_flags::PEEK == 0 {
        ok(conn.free(wb.msg.offset));
    }
    Ok((m.priority, m.cookie))
}

// selftest 13 (message-prio) with RECV executed by the broker (RCV4 with HEAD's EAGAIN)
#[test]
fn message_prio_broker() {
    let b = Broker::start();
    let (a, _s) = send_prio_queue(&b);
    let prio = recv_flags::USE_PRIORITY;
    assert_eq!(ok(recv_broker(&a, prio, -200)), (-800, 8));
    assert_eq!(ok(recv_broker(&a, prio, -100)), (-800, 11));
    assert_eq!(ok(recv_broker(&a, prio, -400)), (-600, 2));
    assert_eq!(errno(recv_broker(&a, prio, -400)), Errno::EAGAIN);
    assert_eq!(ok(recv_broker(&a, prio, 10)), (-150, 9));
    assert_eq!(ok(recv_broker(&a, prio, 10)), (-100, 5));
    // RCV5: PEEK does not dequeue.
    assert_eq!(ok(recv_broker(&a, recv_flags::PEEK, 0)), (25, 1));
    assert_eq!(ok(recv_broker(&a, recv_flags::PEEK, 0)), (25, 1));
    let rest: Vec<i64> = (0..7).map(|_| ok(recv_broker(&a, 0, 0)).0).collect();
    assert_eq!(rest, vec![25, 10, -35, 20, -15, 10, -10]);
    assert_eq!(errno(recv_broker(&a, 0, 0)), Errno::EAGAIN);
    assert_eq!(errno(recv_broker(&a, prio, 0)), Errno::EAGAIN);
    // RCV1: unknown flags.
    assert_eq!(errno(a.recv_broker(1 << 20, 0)), Errno::EINVAL);
}

// selftest 17 (message-free), POOL4
#[test]
fn free_unknown_offsets() {
    let b = Broker::start();
    let conn = b.conn();
    assert_eq!(
        errno(conn.free(0)),
        Errno::ENXIO,
        "offset 0 of an empty pool"
    );
    assert_eq!(
        errno(conn.free(kdbus::DEFAULT_POOL_SIZE + 1)),
        Errno::ENXIO,
        "offset beyond the pool"
    );
    assert_eq!(errno(conn.free(8)), Errno::ENXIO);
    // FREE with unknown flags.
    let c = abi::CmdFree {
        size: 32,
        flags: 1,
        ..Default::default()
    };
    let (e, _, _) = ok(conn.request(cmd::FREE, c.as_bytes(), &[]));
    assert_eq!(Errno(e), Errno::EINVAL);
}

// POOL4, RCV5: a queued (not yet received) message's slice cannot be FREEd
#[test]
fn free_of_queued_message() {
    let b = Broker::start();
    let env = b.conn();
    let conn = b.conn();
    ok(env.send(&Message::to(conn.id()).cookie(9)));
    let peek = ok(conn.recv_broker(recv_flags::PEEK, 0));
    assert_eq!(errno(conn.free(peek.msg.offset)), Errno::EINVAL);
    // Still queued and intact.
    let m = ok(conn.recv_timeout(Some(SOON)));
    assert_eq!((m.offset(), m.cookie()), (peek.msg.offset, 9));
}

// MSG3-MSG7, MSG15, MSG18, RPL: header errors of SEND
#[test]
fn send_header_errors() {
    let b = Broker::start();
    let c = b.conn();
    let peer = b.conn();
    let to = || msg_to(peer.id());
    let cases: Vec<(&str, RawSend, Errno)> = vec![
        (
            "EXPECT_REPLY without timeout",
            RawSend::new(abi::Msg {
                flags: msg_flags::EXPECT_REPLY,
                cookie: 1,
                ..to()
            }),
            Errno::EINVAL,
        ),
        (
            "EXPECT_REPLY with cookie 0",
            RawSend::new(abi::Msg {
                flags: msg_flags::EXPECT_REPLY,
                timeout_or_cookie_reply: far_deadline(),
                ..to()
            }),
            Errno::EINVAL,
        ),
        (
            "SYNC without EXPECT_REPLY",
            RawSend::new(abi::Msg { cookie: 1, ..to() }).send_flags(send_flags::SYNC_REPLY),
            Errno::EINVAL,
        ),
        (
            "unknown SEND flags",
            RawSend::new(to()).send_flags(1 << 7),
            Errno::EINVAL,
        ),
        (
            "payload type 0",
            RawSend::new(abi::Msg {
                payload_type: abi::payload::KERNEL,
                ..to()
            }),
            Errno::EINVAL,
        ),
        (
            "foreign src_id",
            RawSend::new(abi::Msg {
                src_id: peer.id(),
                ..to()
            }),
            Errno::EINVAL,
        ),
        (
            "unknown message flags",
            RawSend::new(abi::Msg {
                flags: 1 << 10,
                ..to()
            }),
            Errno::EINVAL,
        ),
        (
            "EXPECT_REPLY to the broadcast id",
            RawSend::new(abi::Msg {
                flags: msg_flags::EXPECT_REPLY,
                cookie: 1,
                timeout_or_cookie_reply: far_deadline(),
                ..msg_to(abi::DST_ID_BROADCAST)
            }),
            Errno::ENOTUNIQ,
        ),
        (
            "unknown destination",
            RawSend::new(msg_to(4242)),
            Errno::ENXIO,
        ),
        (
            "dst 0 without DST_NAME",
            RawSend::new(msg_to(abi::DST_ID_NAME)),
            Errno::EDESTADDRREQ,
        ),
        (
            "invalid DST_NAME",
            RawSend::new(msg_to(abi::DST_ID_NAME)).item(item::DST_NAME, b"foo\0"),
            Errno::EINVAL,
        ),
        (
            "unknown DST_NAME",
            RawSend::new(msg_to(abi::DST_ID_NAME)).item(item::DST_NAME, b"foo.bar\0"),
            Errno::ESRCH,
        ),
        (
            "two DST_NAMEs",
            RawSend::new(msg_to(abi::DST_ID_NAME))
                .item(item::DST_NAME, b"foo.bar\0")
                .item(item::DST_NAME, b"foo.baz\0"),
            Errno::EEXIST,
        ),
        (
            "bloom filter on a unicast",
            RawSend::new(to()).item(item::BLOOM_FILTER, &[0; 8 + 64]),
            Errno::EBADMSG,
        ),
        (
            "empty PAYLOAD_VEC",
            RawSend::new(to()).data(b"x").vec_at(0, 0),
            Errno::EINVAL,
        ),
    ];
    for (what, req, want) in cases {
        assert_eq!(send_raw(&c, &req), want, "{what}");
    }
    assert_eq!(errno(peer.recv()), Errno::EAGAIN, "nothing was delivered");

    // The accepted forms: own src_id, any payload type but 0.
    let fine = RawSend::new(abi::Msg {
        src_id: c.id(),
        payload_type: 0x1234,
        cookie: 77,
        ..to()
    });
    assert_eq!(send_raw(&c, &fine), Errno(0));
    let m = ok(peer.recv_timeout(Some(SOON)));
    assert_eq!(
        (m.src_id(), m.cookie(), m.header().payload_type),
        (c.id(), 77, 0x1234)
    );
}

// MSG2, MSG8: message size and item count
#[test]
fn send_size_limits() {
    let b = Broker::start();
    let c = b.conn();
    let peer = b.conn();
    let to = msg_to(peer.id());

    let big = RawSend::new(to).item(item::BLOOM_FILTER, &[0; 8200]);
    assert_eq!(send_raw(&c, &big), Errno::EMSGSIZE, "message > 8 KiB");

    let mut small = RawSend::new(to);
    small.msg_size = Some(32);
    assert_eq!(send_raw(&c, &small), Errno::EMSGSIZE, "message < header");

    let items = |n: usize| (0..n).fold(RawSend::new(to).data(b"x"), |r, _| r.vec_at(0, 1));
    assert_eq!(send_raw(&c, &items(129)), Errno::E2BIG, "129 items");
    assert_eq!(send_raw(&c, &items(128)), Errno(0), "128 items");
    let m = ok(peer.recv_timeout(Some(SOON)));
    assert_eq!(m.payload_bytes(), vec![b'x'; 128]);
}

/// `n` vectors of `size` bytes over the same bytes: a large payload in a small request.
fn aliased(dst: u64, chunk: &[u8], n: usize, size: u64) -> RawSend {
    (0..n).fold(RawSend::new(msg_to(dst)).data(chunk), |r, _| {
        r.vec_at(0, size)
    })
}

// MSG9: at most 2 MiB of PAYLOAD_VEC data per message; exactly 2 MiB arrives intact
#[test]
fn send_vec_limit() {
    let b = Broker::start();
    let c = b.conn();
    // A pool large enough that the quota does not get in the way.
    let peer = ok(Connection::hello(
        &b.bus,
        &test_hello().pool_size(64 * 1024 * 1024),
    ));
    let chunk: Vec<u8> = (0..16 * 1024 + 8).map(|i| (i % 251) as u8).collect();
    let kib16 = 16 * 1024;

    let over = aliased(peer.id(), &chunk, 127, kib16).vec_at(0, kib16 + 8);
    assert_eq!(send_raw(&c, &over), Errno::EMSGSIZE, "2 MiB + 8");

    let exact = aliased(peer.id(), &chunk, 128, kib16);
    assert_eq!(send_raw(&c, &exact), Errno(0), "2 MiB of vectors");
    let m = ok(peer.recv_timeout(Some(SOON)));
    let got = m.payload_bytes();
    assert_eq!(got.len(), 2 * 1024 * 1024);
    assert!(got
        .chunks(kib16 as usize)
        .all(|c| c == &chunk[..kib16 as usize]));
}

// HEAD quota (spec C): half the pool is the owner's; of the other half, a sender may
// fill a third. With an empty 8 MiB pool that is 1398101 bytes for one message.
#[test]
fn quota_third_of_receive_half() {
    let b = Broker::start();
    let c = b.conn();
    let peer = ok(Connection::hello(
        &b.bus,
        &test_hello().pool_size(8 * 1024 * 1024).attach_recv(0),
    ));
    let chunk = vec![7u8; 64 * 1024];
    // 1.5 MiB is more than a third of 4 MiB.
    let too_big = aliased(peer.id(), &chunk, 24, 64 * 1024);
    assert_eq!(send_raw(&c, &too_big), Errno::ENOBUFS);
    // 1.3 MiB (plus header) is less.
    let fits = aliased(peer.id(), &chunk, 20, 64 * 1024).vec_at(0, 30 * 1024);
    assert_eq!(send_raw(&c, &fits), Errno(0));
    let m = ok(peer.recv_timeout(Some(SOON)));
    assert_eq!(m.payload_bytes().len(), 20 * 64 * 1024 + 30 * 1024);
}

// A large inline payload goes through the pool intact
#[test]
fn large_payload_roundtrip() {
    let b = Broker::start();
    let a = b.conn();
    let c = b.conn();
    let data: Vec<u8> = (0..128 * 1024 + 3).map(|i| (i * 7 % 256) as u8).collect();
    ok(a.send(&Message::to(c.id()).cookie(1).payload(&data)));
    let m = ok(c.recv_timeout(Some(SOON)));
    assert_eq!(m.payload_bytes(), data);
    let back = m.payload_bytes();
    drop(m);
    ok(c.send(
        &Message::to(a.id())
            .cookie(2)
            .payload(&back[..64 * 1024])
            .payload(&back),
    ));
    let r = ok(a.recv_timeout(Some(SOON)));
    assert_eq!(r.payload(), vec![&data[..64 * 1024], &data[..]]);
}

/// SEND a message carrying `fds` (FDS item + SCM_RIGHTS), built by hand.
fn send_fds(conn: &Connection, dst: u64, cookie: u64, fds: &[BorrowedFd<'_>]) -> Errno {
    let slots = vec![0xffu8; 4 * fds.len()];
    let req = RawSend::new(abi::Msg {
        cookie,
        ..msg_to(dst)
    })
    .item(item::FDS, &slots);
    send_raw_fds(conn, &req, fds)
}

// MSG13, MSG14: fds need an ACCEPT_FD receiver; they arrive and work
#[test]
fn fd_passing() {
    let b = Broker::start();
    let c = b.conn();
    let no_fds = ok(Connection::hello(&b.bus, &test_hello().flags(0)));
    let fds = b.conn();
    let (r, w) = rustix::pipe::pipe().unwrap();

    assert_eq!(send_fds(&c, no_fds.id(), 1, &[r.as_fd()]), Errno::ECOMM);
    assert_eq!(errno(no_fds.recv()), Errno::EAGAIN);

    assert_eq!(send_fds(&c, fds.id(), 2, &[r.as_fd()]), Errno(0));
    drop(r); // the receiver's copy does not depend on ours
    let mut m = ok(fds.recv_timeout(Some(SOON)));
    assert_eq!(m.cookie(), 2);
    assert_eq!(m.fds.len(), 1);
    let fds_item = m.item(item::FDS).expect("FDS item");
    assert_eq!(fds_item.len(), 4);
    let got = m.fds.pop().unwrap();
    rustix::io::write(&w, b"through the bus").unwrap();
    let mut buf = [0u8; 64];
    let n = rustix::io::read(&got, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"through the bus");
}

// MSG13 through the client library: `Message::fd` reaches the receiver
#[test]
fn fd_passing_library_send() {
    let b = Broker::start();
    let c = b.conn();
    let peer = b.conn();
    let (r, w) = rustix::pipe::pipe().unwrap();
    ok(c.send(&Message::to(peer.id()).cookie(1).fd(r.as_fd())));
    let mut m = ok(peer.recv_timeout(Some(SOON)));
    let got = m.fds.pop().expect("one fd");
    rustix::io::write(&w, b"x").unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(rustix::io::read(&got, &mut buf).unwrap(), 1);
}

// MSG13 and HEAD's fd quota: item count, fd count, per-user fd budget
#[test]
fn fd_limits() {
    let b = Broker::start();
    let c = b.conn();
    let peer = b.conn();
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let to = msg_to(peer.id());

    // More fd slots than fds came with the request.
    let claims_two = RawSend::new(to).item(item::FDS, &[0; 8]);
    assert_eq!(send_raw_fds(&c, &claims_two, &[r.as_fd()]), Errno::EBADF);
    // Two FDS items.
    let two_items = RawSend::new(to)
        .item(item::FDS, &[0; 4])
        .item(item::FDS, &[0; 4]);
    assert_eq!(
        send_raw_fds(&c, &two_items, &[r.as_fd(), r.as_fd()]),
        Errno::EEXIST
    );
    // 254 fds are more than a message may carry.
    let too_many = RawSend::new(to).item(item::FDS, &[0; 254 * 4]);
    assert_eq!(send_raw_fds(&c, &too_many, &[r.as_fd()]), Errno::EMFILE);

    // HEAD: at most 16 fds of one user queued on a receiver.
    let n = abi::limits::CONN_MAX_FDS_PER_USER as usize;
    let fds = vec![r.as_fd(); n + 1];
    assert_eq!(send_fds(&c, peer.id(), 1, &fds), Errno::EMFILE);
    assert_eq!(send_fds(&c, peer.id(), 2, &fds[..n]), Errno(0));
    assert_eq!(
        send_fds(&c, peer.id(), 3, &fds[..1]),
        Errno::EMFILE,
        "budget used up"
    );
    let m = ok(peer.recv_timeout(Some(SOON)));
    assert_eq!((m.cookie(), m.fds.len()), (2, n));
    drop(m);
    ok(peer.info(peer.id(), 0)); // the claim reaches the broker
    assert_eq!(
        send_fds(&c, peer.id(), 4, &fds[..1]),
        Errno(0),
        "budget back"
    );
    let m = ok(peer.recv_timeout(Some(SOON)));
    assert_eq!((m.cookie(), m.fds.len()), (4, 1));
}

// RPL1: at most 128 requests awaiting a reply per sender
#[test]
fn pending_requests_limit() {
    let b = Broker::start();
    let c = b.conn();
    let peer = b.conn();
    let max = abi::limits::CONN_MAX_REQUESTS_PENDING as u64;
    for cookie in 1..=max {
        ok(c.send(
            &Message::to(peer.id())
                .cookie(cookie)
                .expect_reply(far_deadline()),
        ));
    }
    let next = || {
        Message::to(peer.id())
            .cookie(max + 1)
            .expect_reply(far_deadline())
    };
    assert_eq!(errno(c.send(&next())), Errno::EMLINK);
    // Plain messages are not limited.
    ok(c.send(&Message::to(peer.id()).cookie(1000)));

    // Answering one frees a slot.
    let m = ok(peer.recv_timeout(Some(SOON)));
    assert_eq!(m.cookie(), 1);
    ok(peer.send(&Message::to(c.id()).reply_to(1)));
    ok(c.send(&next()));
    assert_eq!(
        errno(
            c.send(
                &Message::to(peer.id())
                    .cookie(max + 2)
                    .expect_reply(far_deadline())
            )
        ),
        Errno::EMLINK
    );
}

// POOL5, MSG23: a receiver that does not take its messages fills its (small) pool;
// senders then see EXFULL/ENOBUFS, and everything else keeps working
#[test]
fn pool_full() {
    let b = Broker::start();
    let small = ok(Connection::hello(
        &b.bus,
        &HelloOptions::new().pool_size(4 * 4096).attach_recv(0),
    ));
    let sender = b.conn();
    let payload = |i: u64| vec![i as u8; 1024];
    let mut sent = 0u64;
    let err = loop {
        assert!(sent < 64, "a 16 KiB pool took {sent} KiB of messages");
        match sender.send(
            &Message::to(small.id())
                .cookie(sent + 1)
                .payload(&payload(sent)),
        ) {
            Ok(()) => sent += 1,
            Err(e) => break errno::<()>(Err(e)),
        }
    };
    assert!(
        err == Errno::EXFULL || err == Errno::ENOBUFS,
        "pool full: {err:?}"
    );
    assert!(sent >= 1, "not even one message fit");

    // Others are served meanwhile.
    let x = b.conn();
    let y = b.conn();
    ok(x.send(&Message::to(y.id()).cookie(5).payload(&[1; 4096])));
    assert_eq!(ok(y.recv_timeout(Some(SOON))).cookie(), 5);

    // What was accepted is intact; once taken, there is room again.
    for i in 0..sent {
        let m = ok(small.recv_timeout(Some(SOON)));
        assert_eq!(m.cookie(), i + 1);
        assert_eq!(m.payload_bytes(), payload(i));
    }
    // The library tells the broker what it took with its next request; make it one.
    ok(small.info(small.id(), 0));
    ok(sender.send(&Message::to(small.id()).cookie(99).payload(&payload(99))));
    assert_eq!(ok(small.recv_timeout(Some(SOON))).cookie(), 99);
}

// HEAD quota: one user cannot fill the whole receive half of a pool, and a receiver
// that frees its slices can take messages forever
#[test]
fn pool_reuse() {
    let b = Broker::start();
    let small = ok(Connection::hello(
        &b.bus,
        &HelloOptions::new().pool_size(4 * 4096).attach_recv(0),
    ));
    let sender = b.conn();
    for i in 0..500u64 {
        let data = vec![i as u8; 1500];
        ok(sender.send(&Message::to(small.id()).cookie(i + 1).payload(&data)));
        let m = ok(small.recv_timeout(Some(SOON)));
        assert_eq!((m.cookie(), m.payload_bytes()), (i + 1, data));
        drop(m);
        // Claim and FREE ride on the receiver's next request: make one.
        ok(small.info(small.id(), 0));
    }
}

// ---------------------------------------------------------------- malformed requests

/// A raw socket that said HELLO; returns it with its id.
fn raw_conn(b: &Broker) -> (RawSocket, u64) {
    let mut raw = RawSocket::connect(&b.bus);
    let r = raw.request(cmd::HELLO, &test_hello().encode());
    assert_eq!(r.error, 0);
    let wb: abi::CmdHello = abi::read_struct(&r.body).unwrap();
    (raw, wb.id)
}

fn conn_info_body(id: u64) -> Vec<u8> {
    abi::CmdInfo {
        size: std::mem::size_of::<abi::CmdInfo>() as u64,
        id,
        ..Default::default()
    }
    .as_bytes()
    .to_vec()
}

/// The connection still answers, and the bus still carries messages.
fn assert_serving(b: &Broker, raw: &mut RawSocket, raw_id: u64) {
    let r = raw.request(cmd::CONN_INFO, &conn_info_body(raw_id));
    assert_eq!(r.error, 0, "connection no longer answers");
    let x = b.conn();
    let y = b.conn();
    ok(x.send(&Message::to(y.id()).cookie(42)));
    assert_eq!(ok(y.recv_timeout(Some(SOON))).cookie(), 42);
}

// Transport: cut and garbled frames are answered with an errno, and nobody else notices
#[test]
fn malformed_frames() {
    let mut b = Broker::start();
    let (mut raw, id) = raw_conn(&b);

    // Shorter than a request header: answered with req_id 0.
    raw.send_bytes(&[1, 2, 3]);
    let r = raw.reply(0).expect("answer to a cut header");
    assert_eq!(Errno(r.error), Errno::EINVAL);

    // A header promising more body than the datagram has.
    let mut cut = RawSocket::frame(cmd::CONN_INFO, 0, 7, &conn_info_body(id));
    cut.truncate(wire::REQ_HEADER_SIZE + 8);
    raw.send_bytes(&cut);
    assert_eq!(Errno(raw.reply(7).expect("answer").error), Errno::EINVAL);

    // Unknown command.
    let r = raw.request(0x4242, &conn_info_body(id));
    assert_eq!(Errno(r.error), Errno::ENOTTY);

    // A request that asked for no answer gets none, even when it fails.
    raw.send_bytes(&RawSocket::frame(
        cmd::FREE,
        wire::REQ_NO_REPLY,
        11,
        abi::CmdFree {
            size: 32,
            offset: 12345,
            ..Default::default()
        }
        .as_bytes(),
    ));
    let r = raw.request(cmd::CONN_INFO, &conn_info_body(id));
    assert_eq!(r.error, 0);

    assert_serving(&b, &mut raw, id);
    assert!(b.alive());
}

// Transport: a valid request followed by a cut one in the same datagram. The first is
// run and answered; the cut one, whose header is intact, is answered EINVAL.
#[test]
fn cut_frame_after_valid_one() {
    let b = Broker::start();
    let (raw, id) = raw_conn(&b);
    let mut two = RawSocket::frame(cmd::CONN_INFO, 0, 8, &conn_info_body(id));
    let mut tail = RawSocket::frame(cmd::CONN_INFO, 0, 9, &conn_info_body(id));
    tail.truncate(wire::REQ_HEADER_SIZE + 4);
    two.extend_from_slice(&tail);
    raw.send_bytes(&two);
    // Collect every answer until both requests have one.
    let mut answers = Vec::new();
    while answers.len() < 2 {
        let recs = raw.read_records(SOON).expect("answers");
        answers.extend(
            recs.into_iter()
                .filter(|(h, _, _)| h.kind == wire::REC_REPLY)
                .map(|(h, _, _)| (h.req_id, Errno(h.error))),
        );
    }
    answers.sort_by_key(|a| a.0);
    assert_eq!(answers, vec![(8, Errno(0)), (9, Errno::EINVAL)]);
}

// Command bodies: short, oversized, truncated items, bad message addresses
#[test]
fn malformed_bodies() {
    let b = Broker::start();
    let (mut raw, id) = raw_conn(&b);
    let peer = b.conn();

    // Shorter than the command structure, or a size field beyond the body.
    for c in [
        cmd::SEND,
        cmd::RECV,
        cmd::FREE,
        cmd::CONN_INFO,
        cmd::UPDATE,
        cmd::LIST,
    ] {
        let r = raw.request(c, &[]);
        assert_eq!(
            Errno(r.error),
            Errno::EINVAL,
            "{} with an empty body",
            cmd::name(c)
        );
        let r = raw.request(c, &16u64.to_ne_bytes());
        assert_eq!(
            Errno(r.error),
            Errno::EINVAL,
            "{} with size 16",
            cmd::name(c)
        );
        let r = raw.request(c, &[&200u64.to_ne_bytes()[..], &[0; 56]].concat());
        assert_eq!(Errno(r.error), Errno::EINVAL, "{} cut short", cmd::name(c));
    }

    let good = RawSend::new(abi::Msg {
        cookie: 1,
        ..msg_to(peer.id())
    })
    .vec(b"hello");
    let body = good.encode();
    let cmd_len = std::mem::size_of::<abi::CmdSend>();

    // Message address not 8-aligned, or outside the request.
    let mut unaligned = body.clone();
    unaligned[24..32].copy_from_slice(&(cmd_len as u64 + 4).to_ne_bytes());
    assert_eq!(
        Errno(raw.request(cmd::SEND, &unaligned).error),
        Errno::EFAULT
    );
    let mut outside = body.clone();
    outside[24..32].copy_from_slice(&(1u64 << 40).to_ne_bytes());
    assert_eq!(Errno(raw.request(cmd::SEND, &outside).error), Errno::EFAULT);

    // The message claims more bytes than the request has.
    let mut long = body.clone();
    long.truncate(cmd_len + 64 + 8);
    assert!(matches!(
        Errno(raw.request(cmd::SEND, &long).error),
        Errno::EFAULT | Errno::EINVAL
    ));

    // An item that runs past the end of the message.
    let mut overrun = body.clone();
    let item_at = cmd_len + 64;
    overrun[item_at..item_at + 8].copy_from_slice(&100u64.to_ne_bytes());
    assert_eq!(Errno(raw.request(cmd::SEND, &overrun).error), Errno::EINVAL);

    // A header-only item.
    let empty_item = RawSend::new(msg_to(peer.id())).encode();
    let mut empty_item = empty_item;
    empty_item.extend_from_slice(
        abi::ItemHeader {
            size: 16,
            type_: item::PAYLOAD_VEC,
        }
        .as_bytes(),
    );
    let msg_size = 64u64 + 16;
    empty_item[cmd_len..cmd_len + 8].copy_from_slice(&msg_size.to_ne_bytes());
    assert_eq!(
        Errno(raw.request(cmd::SEND, &empty_item).error),
        Errno::EINVAL
    );

    // A vector pointing outside the request.
    let mut vec_out = body.clone();
    let addr_at = item_at + 16 + 8;
    vec_out[addr_at..addr_at + 8].copy_from_slice(&(body.len() as u64).to_ne_bytes());
    assert_eq!(Errno(raw.request(cmd::SEND, &vec_out).error), Errno::EFAULT);

    // An unknown item type in a message.
    let unknown = RawSend::new(msg_to(peer.id())).item(0x7777, &[0; 8]);
    assert_eq!(
        Errno(raw.request(cmd::SEND, &unknown.encode()).error),
        Errno::EINVAL
    );

    assert_eq!(errno(peer.recv()), Errno::EAGAIN, "nothing got through");
    // The intact request still works on the same connection.
    assert_eq!(raw.request(cmd::SEND, &body).error, 0);
    let m = ok(peer.recv_timeout(Some(SOON)));
    assert_eq!((m.src_id(), m.payload_bytes()), (id, b"hello".to_vec()));
    drop(m);
    assert_serving(&b, &mut raw, id);
}

// Garbage of every length, as any command, on a connection, a fresh endpoint and the
// control socket: each gets an answer, the broker survives and serves everyone
#[test]
fn garbage_requests() {
    let mut b = Broker::start();
    let (mut raw, id) = raw_conn(&b);
    let mut fresh = RawSocket::connect(&b.bus);
    let mut control = RawSocket::connect(&b.control);
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let cmds = [
        cmd::BUS_MAKE,
        cmd::HELLO,
        cmd::UPDATE,
        cmd::FREE,
        cmd::CONN_INFO,
        cmd::BUS_CREATOR_INFO,
        cmd::LIST,
        cmd::SEND,
        cmd::RECV,
        cmd::MATCH_ADD,
        cmd::MATCH_REMOVE,
        cmd::NAME_ACQUIRE,
        cmd::NAME_RELEASE,
        0xdead,
    ];
    for round in 0..300 {
        let c = cmds[round % cmds.len()];
        let len = (rng.next_u64() % 300) as usize;
        let mut body = rng.bytes(len);
        if len >= 8 && round % 3 == 0 {
            // A plausible size field, so the parsers look further.
            let size = (len as u64).min(rng.next_u64() % 512);
            body[..8].copy_from_slice(&size.to_ne_bytes());
        }
        for sock in [&mut raw, &mut fresh, &mut control] {
            let req = sock.next_id();
            sock.send_bytes(&RawSocket::frame(c, 0, req, &body));
            assert!(
                sock.reply(req).is_some(),
                "round {round}: no answer to {} with {len} bytes",
                cmd::name(c)
            );
        }
        // Raw bytes without any framing.
        let junk_len = 1 + (rng.next_u64() % 40) as usize;
        let junk = rng.bytes(junk_len);
        raw.send_bytes(&junk);
    }
    assert!(b.alive(), "broker died");
    assert_serving(&b, &mut raw, id);
    // The fresh endpoint can still become a connection, the control socket make a bus.
    let r = fresh.request(cmd::HELLO, &test_hello().encode());
    assert_eq!(r.error, 0);
    let name = format!("{}-after-garbage", uid());
    let r = control.request(cmd::BUS_MAKE, &bus_make_body(&name, 0, TEST_BLOOM));
    assert_eq!(r.error, 0);
    assert!(b.endpoint_of(&name).exists());
}

// ---------------------------------------------------------------- addressing by name

// MSG15, MSG16, MSG20: DST_NAME reaches the owner, and must agree with a given dst_id
#[test]
fn send_to_names() {
    let b = Broker::start();
    let owner = b.conn();
    let other = b.conn();
    let c = b.conn();
    ok(owner.acquire_name("foo.bar.svc", 0));

    ok(c.send(
        &Message::to_name("foo.bar.svc")
            .cookie(1)
            .payload(b"by name"),
    ));
    let m = ok(owner.recv_timeout(Some(SOON)));
    assert_eq!((m.src_id(), m.cookie()), (c.id(), 1));
    assert_eq!(m.payload_bytes(), b"by name");
    // The receiver learns which name the message was addressed to.
    assert_eq!(m.item(item::DST_NAME), Some(&b"foo.bar.svc\0"[..]));
    drop(m);

    let named = |dst: u64| {
        RawSend::new(abi::Msg {
            cookie: 2,
            ..msg_to(dst)
        })
        .item(item::DST_NAME, b"foo.bar.svc\0")
    };
    assert_eq!(
        send_raw(&c, &named(owner.id())),
        Errno(0),
        "name and owner id"
    );
    assert_eq!(ok(owner.recv_timeout(Some(SOON))).cookie(), 2);
    assert_eq!(
        send_raw(&c, &named(other.id())),
        Errno::EREMCHG,
        "name of another"
    );
    assert_eq!(
        send_raw(&c, &named(4242)),
        Errno::EREMCHG,
        "name and unknown id"
    );

    // Requests by name are answered like any other.
    let deadline = kdbus::monotonic_ns() + 60_000_000_000;
    ok(c.send(
        &Message::to_name("foo.bar.svc")
            .cookie(3)
            .expect_reply(deadline),
    ));
    let req = ok(owner.recv_timeout(Some(SOON)));
    assert!(req.expects_reply());
    drop(req);
    ok(owner.send(&Message::to(c.id()).reply_to(3).payload(b"answer")));
    let r = ok(c.recv_timeout(Some(SOON)));
    assert_eq!((r.src_id(), r.cookie_reply()), (owner.id(), 3));

    // Once released, the name is unknown again.
    ok(owner.release_name("foo.bar.svc"));
    assert_eq!(
        errno(c.send(&Message::to_name("foo.bar.svc"))),
        Errno::ESRCH
    );
}

// ACT5: NO_AUTO_START to a name only an activator holds
#[test]
fn send_no_auto_start_to_activator() {
    let b = Broker::start();
    let _activator = ok(Connection::hello(
        &b.bus,
        &test_hello().activator("foo.bar.act"),
    ));
    let c = b.conn();
    assert_eq!(
        errno(c.send(&Message::to_name("foo.bar.act").flags(msg_flags::NO_AUTO_START))),
        Errno::EADDRNOTAVAIL
    );
    // Without the flag the message waits at the activator.
    ok(c.send(&Message::to_name("foo.bar.act").cookie(1)));
}

// A posted message (REQ_NO_REPLY) arrives like a sent one and costs no datagram back;
// one that cannot be delivered comes back as a REC_SEND_FAILED record named by the
// request id (the library puts the cookie there).
#[test]
fn posted_sends_answer_only_failures() {
    let b = Broker::start();
    let (raw, _) = raw_conn(&b);
    let dst = b.conn();
    let ok_msg = RawSend::new(abi::Msg {
        dst_id: dst.id(),
        cookie: 7,
        payload_type: abi::payload::DBUS,
        ..Default::default()
    })
    .vec(b"posted");
    raw.send_bytes(&RawSocket::frame(
        cmd::SEND,
        wire::REQ_NO_REPLY,
        7,
        &ok_msg.encode(),
    ));
    let m = ok(dst.recv_timeout(Some(SOON)));
    assert_eq!(m.payload_bytes(), b"posted");
    let bad = RawSend::new(abi::Msg {
        dst_id: 0x7fff_0000,
        cookie: 42,
        payload_type: abi::payload::DBUS,
        ..Default::default()
    })
    .vec(b"nowhere");
    raw.send_bytes(&RawSocket::frame(
        cmd::SEND,
        wire::REQ_NO_REPLY,
        42,
        &bad.encode(),
    ));
    // The first datagram back is the failure: nothing came for the delivered one.
    let recs = raw.read_records(SOON).expect("a record");
    let kinds: Vec<(u16, u64, i32)> = recs
        .iter()
        .map(|(h, _, _)| (h.kind, h.req_id, h.error))
        .collect();
    assert_eq!(kinds, vec![(wire::REC_SEND_FAILED, 42, Errno::ENXIO.0)]);
}

// The library's post: no waiting, and the failure named by the message's cookie.
#[test]
fn post_reports_failures_by_cookie() {
    let b = Broker::start();
    let env = b.conn();
    let dst = b.conn();
    ok(env.post(&Message::to(dst.id()).cookie(5).payload(b"a")));
    ok(env.post(&Message::to(0x7fff_0000).cookie(6).payload(b"b")));
    assert_eq!(ok(dst.recv_timeout(Some(SOON))).cookie(), 5);
    let deadline = std::time::Instant::now() + SOON;
    let failures = loop {
        let (f, lost) = ok(env.take_send_failures());
        assert_eq!(lost, 0);
        if !f.is_empty() || std::time::Instant::now() > deadline {
            break f;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert_eq!(failures, vec![(6, Errno::ENXIO)]);
}
