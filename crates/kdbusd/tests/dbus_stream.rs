//! The D-Bus socket's framing, driven through a raw stream: however the bytes are
//! split (one at a time, several units in one write, a message many reads long), the
//! broker sees the same SASL lines and messages; a malformed header costs only its
//! sender the connection.

mod common;
#[path = "common/dbus_raw.rs"]
mod dbus_raw;
use common::*;
use dbus_raw::*;
use kdbus_dbus::header::{self, Fields, MessageType, FLAG_NO_REPLY_EXPECTED};
use kdbus_dbus::marshal::{Endian, Writer};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn socket(b: &Broker) -> UnixStream {
    let s = UnixStream::connect(b.dbus_path()).expect("connect to the D-Bus socket");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Connect, authenticate and say Hello in one write: the unique name.
fn hello(b: &Broker) -> (UnixStream, Reading, String) {
    hello_at(&b.dbus_path())
}

#[test]
fn one_byte_at_a_time() {
    let b = Broker::start();
    let mut s = socket(&b);
    let mut bytes = auth();
    bytes.extend(call(1, DRIVER, "Hello", "", &[], 0));
    bytes.extend(call(2, DRIVER, "GetId", "", &[], 0));
    let mut r = Reading::new(s.try_clone().unwrap());
    for byte in &bytes {
        s.write_all(std::slice::from_ref(byte)).unwrap();
    }
    assert!(r.line().starts_with("OK "));
    let hello = r.reply();
    assert_eq!(reply_serial(&hello), Some(1));
    assert!(first_string(&hello).starts_with(":1."));
    let id = r.reply();
    assert_eq!(reply_serial(&id), Some(2));
    assert_eq!(first_string(&id).len(), 32);
}

#[test]
fn sasl_and_several_messages_in_one_write() {
    let b = Broker::start();
    let mut s = socket(&b);
    let mut bytes = auth();
    bytes.extend(call(1, DRIVER, "Hello", "", &[], 0));
    for serial in 2..12 {
        let mut body = Vec::new();
        Writer::new(&mut body, Endian::Little).string(DRIVER);
        bytes.extend(call(serial, DRIVER, "NameHasOwner", "s", &body, 0));
    }
    s.write_all(&bytes).unwrap();
    let mut r = Reading::new(s.try_clone().unwrap());
    assert!(r.line().starts_with("OK "));
    for serial in 1..12 {
        assert_eq!(reply_serial(&r.reply()), Some(serial));
    }
}

#[test]
fn a_message_many_reads_long_arrives_whole() {
    let b = Broker::start();
    let (mut sender, _sr, _) = hello(&b);
    let (_bs, mut br, b_name) = hello(&b);
    // 20 MiB of bytes (`ay`): more than the 2 MiB kdbus allows native payload vectors
    // and than the 8 MiB a client may leave unread; sent in uneven pieces while the
    // receiver reads.
    let data: Vec<u8> = (0..20u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    let mut body = Vec::new();
    {
        let mut w = Writer::new(&mut body, Endian::Little);
        let a = w.array_begin(1);
        body_bytes(&mut w, &data);
        w.array_end(a);
    }
    let msg = call(2, &b_name, "Big", "ay", &body, FLAG_NO_REPLY_EXPECTED);
    let writer = std::thread::spawn(move || {
        let mut off = 0;
        let mut step = 1;
        while off < msg.len() {
            let end = (off + step).min(msg.len());
            sender.write_all(&msg[off..end]).unwrap();
            off = end;
            step = step * 3 + 1;
        }
    });
    let got = loop {
        let m = br.message();
        if header::parse(&m).unwrap().sender != Some(DRIVER) {
            break m;
        }
    };
    writer.join().unwrap();
    let h = header::parse(&got).unwrap();
    assert_eq!(h.member, Some("Big"));
    let body = &got[h.header_len..h.total_len()];
    assert_eq!(&body[4..], &data[..]);
}

/// Messages of the sizes the broker reads into buffers of their own (64 KiB to 4 MiB,
/// and just outside), back to back with small ones in one stream cut into uneven
/// pieces: each arrives whole, in order, and what follows a large one is not lost
/// (a large read must stop where its message ends).
#[test]
fn large_messages_back_to_back_arrive_whole_and_in_order() {
    let b = Broker::start();
    let (mut sender, _sr, _) = hello(&b);
    let (_bs, mut br, b_name) = hello(&b);
    let sizes = [
        (64 << 10) - 100,
        (64 << 10) + 1,
        10,
        100 << 10,
        (3 << 20) + 7,
        3,
        1 << 20,
        (4 << 20) - 64,
        (4 << 20) + 64,
        5,
    ];
    let mut stream = Vec::new();
    let mut sent = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..n).map(|j| (j * 13 + i * 101) as u8).collect();
        let mut body = Vec::new();
        {
            let mut w = Writer::new(&mut body, Endian::Little);
            let a = w.array_begin(1);
            body_bytes(&mut w, &data);
            w.array_end(a);
        }
        let serial = i as u32 + 2;
        stream.extend(call(
            serial,
            &b_name,
            "Part",
            "ay",
            &body,
            FLAG_NO_REPLY_EXPECTED,
        ));
        sent.push((serial, data));
    }
    let writer = std::thread::spawn(move || {
        let (mut off, mut step) = (0, 7);
        while off < stream.len() {
            let end = (off + step).min(stream.len());
            sender.write_all(&stream[off..end]).unwrap();
            off = end;
            step = (step * 5 + 3) % 700_000 + 1;
        }
    });
    for (serial, data) in &sent {
        let got = loop {
            let m = br.message();
            if header::parse(&m).unwrap().sender != Some(DRIVER) {
                break m;
            }
        };
        let h = header::parse(&got).unwrap();
        assert_eq!(h.serial, *serial);
        assert_eq!(
            &got[h.header_len + 4..h.total_len()],
            &data[..],
            "serial {serial}"
        );
    }
    writer.join().unwrap();
}

fn body_bytes(w: &mut Writer<'_>, data: &[u8]) {
    for &b in data {
        w.u8(b);
    }
}

#[test]
fn no_process_fd_for_a_client_that_takes_no_fds() {
    let b = Broker::start();
    // `hello` does not negotiate fd passing.
    let (mut s, mut r, name) = hello(&b);
    let mut body = Vec::new();
    Writer::new(&mut body, Endian::Little).string(&name);
    s.write_all(&call(2, DRIVER, "GetConnectionCredentials", "s", &body, 0))
        .unwrap();
    let m = r.reply();
    let h = header::parse(&m).unwrap();
    assert_eq!(h.reply_serial, Some(2));
    assert_eq!(h.signature, "a{sv}");
    assert_eq!(h.unix_fds, 0);
    let has = |k: &[u8]| m.windows(k.len()).any(|w| w == k);
    assert!(has(b"ProcessID") && has(b"UnixUserID"));
    assert!(!has(b"ProcessFD"));
}

/// Reads exactly one message per call the way sd-bus does (fixed header, then the
/// rest), keeping the fds that came with the reads of that message.
fn read_exact_with_fds(s: &UnixStream, n: usize, fds: &mut Vec<std::os::fd::OwnedFd>) -> Vec<u8> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let r = rustix::net::recvmsg(
            s,
            &mut [std::io::IoSliceMut::new(&mut buf[got..])],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        )
        .expect("recvmsg");
        assert!(r.bytes > 0, "connection closed");
        got += r.bytes;
        for m in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(it) = m {
                fds.extend(it);
            }
        }
    }
    buf
}

fn read_line_exact(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "connection closed");
        line.push(b[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Connect with fd passing negotiated and say Hello; read exactly, one message at a
/// time, from then on.
fn hello_fds(b: &Broker) -> (UnixStream, String) {
    let mut s = socket(b);
    let mut bytes = auth_lines(true);
    bytes.extend(call(1, DRIVER, "Hello", "", &[], 0));
    s.write_all(&bytes).unwrap();
    assert!(read_line_exact(&mut s).starts_with("OK "));
    assert_eq!(read_line_exact(&mut s), "AGREE_UNIX_FD\r\n");
    let (hello, _) = next_exact(&s);
    let name = first_string(&hello);
    (s, name)
}

/// The next message, read exactly, and how many fds came with its reads.
fn next_exact(s: &UnixStream) -> (Vec<u8>, usize) {
    let mut fds = Vec::new();
    let mut m = read_exact_with_fds(s, 16, &mut fds);
    let len = header::message_len(&m).unwrap().unwrap();
    m.extend(read_exact_with_fds(s, len - 16, &mut fds));
    (m, fds.len())
}

#[test]
fn fds_arrive_with_the_message_that_carries_them() {
    let b = Broker::start();
    let (mut s, name) = hello_fds(&b);
    let next = next_exact;
    // Several calls in one write, every other one answered with a pidfd: the replies
    // come in one flush, yet each fd must come with the read of its own message.
    let mut batch = Vec::new();
    let mut arg = Vec::new();
    Writer::new(&mut arg, Endian::Little).string(&name);
    for serial in 2..12 {
        if serial % 2 == 0 {
            batch.extend(call(
                serial,
                DRIVER,
                "GetConnectionCredentials",
                "s",
                &arg,
                0,
            ));
        } else {
            batch.extend(call(serial, DRIVER, "GetNameOwner", "s", &arg, 0));
        }
    }
    s.write_all(&batch).unwrap();
    let mut answered = 0;
    let mut with_fd = 0;
    while answered < 10 {
        let (m, n_fds) = next(&s);
        let h = header::parse(&m).unwrap();
        assert_eq!(n_fds, h.unix_fds as usize, "fds of {:?}", h.reply_serial);
        if h.reply_serial.is_some() {
            answered += 1;
            with_fd += n_fds;
        }
    }
    // Five pidfds where the kernel gives them.
    assert!(with_fd == 5 || with_fd == 0, "{with_fd}");
}

#[test]
fn monitors_get_the_fds_of_what_they_see() {
    let b = Broker::start();
    let (mut mon, _) = hello_fds(&b);
    // BecomeMonitor([], 0)
    let mut arg = Vec::new();
    {
        let mut w = Writer::new(&mut arg, Endian::Little);
        let a = w.array_begin(4);
        w.array_end(a);
        w.u32(0);
    }
    let become_monitor = {
        let f = Fields {
            path: Some(DRIVER_PATH),
            interface: Some("org.freedesktop.DBus.Monitoring"),
            member: Some("BecomeMonitor"),
            destination: Some(DRIVER),
            signature: "asu",
            ..Default::default()
        };
        let mut out = Vec::new();
        header::write_fields(
            &mut out,
            Endian::Little,
            MessageType::MethodCall,
            0,
            arg.len() as u32,
            2,
            &f,
        );
        out.extend_from_slice(&arg);
        out
    };
    mon.write_all(&become_monitor).unwrap();
    loop {
        let (m, _) = next_exact(&mon);
        if header::parse(&m).unwrap().reply_serial == Some(2) {
            break;
        }
    }
    // Another client asks for its own credentials: the monitor sees the call and the
    // reply, the reply's pidfd with it.
    let (mut c, name) = hello_fds(&b);
    let mut arg = Vec::new();
    Writer::new(&mut arg, Endian::Little).string(&name);
    c.write_all(&call(2, DRIVER, "GetConnectionCredentials", "s", &arg, 0))
        .unwrap();
    loop {
        let (m, n_fds) = next_exact(&mon);
        let h = header::parse(&m).unwrap();
        assert_eq!(n_fds, h.unix_fds as usize);
        if h.msg_type == MessageType::MethodReturn
            && h.reply_serial == Some(2)
            && h.destination == Some(name.as_str())
        {
            break;
        }
    }
}

/// A receiver that has not been reading calls the bus, then reads: how many `Fill`
/// messages were queued for it before the answer.
fn fills_before_own_call(s: &mut UnixStream, r: &mut Reading) -> u32 {
    s.write_all(&call(2, DRIVER, "GetId", "", &[], 0)).unwrap();
    let mut fills = 0;
    loop {
        let m = r.message();
        let h = header::parse(&m).unwrap();
        if h.member == Some("Fill") {
            fills += 1;
        }
        if h.reply_serial == Some(2) {
            return fills;
        }
    }
}

#[test]
fn a_flooding_sender_gets_errors_and_its_slow_receiver_stays() {
    flood_a_slow_receiver(0);
}

/// Calls that ask for no reply are not dropped silently either: the sender hears of
/// every one the bus refused.
#[test]
fn refused_no_reply_calls_are_answered_too() {
    flood_a_slow_receiver(header::FLAG_NO_REPLY_EXPECTED);
}

fn flood_a_slow_receiver(flags: u8) {
    let b = Broker::start();
    let (mut victim, mut victim_r, victim_name) = hello(&b);
    let (mut flood, mut flood_r, _) = hello(&b);
    // 640 calls of 256 KiB (160 MiB, more than one sending user's share of a stream's
    // 256 MiB) to a receiver that reads nothing meanwhile.
    let mut body = Vec::new();
    {
        let mut w = Writer::new(&mut body, Endian::Little);
        w.string(&"x".repeat(256 * 1024));
    }
    let n = 640;
    let writer = {
        let calls: Vec<u8> = (0..n)
            .flat_map(|i| call(10 + i, &victim_name, "Fill", "s", &body, flags))
            .collect();
        std::thread::spawn(move || flood.write_all(&calls).map(|_| flood))
    };
    // Every call the bus refused comes back as LimitsExceeded, at once (before the
    // answer to a call to the bus made after them all).
    let mut flood = writer.join().unwrap().unwrap();
    flood
        .write_all(&call(1000, DRIVER, "GetId", "", &[], 0))
        .unwrap();
    let mut refused = 0;
    loop {
        let m = flood_r.reply();
        let h = header::parse(&m).unwrap();
        if h.reply_serial == Some(1000) {
            break;
        }
        assert_eq!(h.msg_type, MessageType::Error);
        assert_eq!(
            h.error_name,
            Some("org.freedesktop.DBus.Error.LimitsExceeded")
        );
        refused += 1;
    }
    assert!(
        refused > 0 && (refused as u32) < n,
        "{refused} of {n} refused"
    );
    // The receiver was not disconnected: it still gets every call the bus took, then
    // the answer to its own call.
    let calls = fills_before_own_call(&mut victim, &mut victim_r);
    assert_eq!(calls + refused as u32, n);
}

#[test]
fn unauthenticated_connections_are_bounded_per_user() {
    let b = Broker::start();
    // 64 connections that never authenticate are kept (for their 30 s)...
    let mut idle: Vec<UnixStream> = (0..64).map(|_| socket(&b)).collect();
    // ...a 65th is closed at once,
    let mut extra = socket(&b);
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(extra.read(&mut buf).unwrap_or(0), 0, "closed");
    // while one of the first completes its Hello (the others stay): then there is
    // room again.
    let mut first = idle.pop().unwrap();
    let mut bytes = auth();
    bytes.extend(call(1, DRIVER, "Hello", "", &[], 0));
    first.write_all(&bytes).unwrap();
    let mut r = Reading::new(first.try_clone().unwrap());
    assert!(r.line().starts_with("OK "));
    assert!(first_string(&r.reply()).starts_with(":1."));
    let (_s, _r, name) = hello(&b);
    assert!(name.starts_with(":1."));
    assert_eq!(idle.len(), 63);
}

#[test]
fn a_client_hoarding_fds_is_disconnected() {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let b = Broker::start();
    let (s, _) = hello_fds(&b);
    let mut r = Reading::new(s.try_clone().unwrap());
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
    let fds: Vec<_> = (0..100)
        .map(|_| std::os::fd::AsFd::as_fd(&pipe_r))
        .collect();
    // The start of a message, a byte at a time, each byte with 100 fds: no message
    // is complete, so by the third the broker holds more fds than any message may
    // carry.
    let start = call(2, DRIVER, "GetId", "", &[], 0);
    for byte in &start[..3] {
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(100))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        assert!(anc.push(SendAncillaryMessage::ScmRights(&fds)));
        let sent = rustix::net::sendmsg(
            &s,
            &[std::io::IoSlice::new(std::slice::from_ref(byte))],
            &mut anc,
            SendFlags::NOSIGNAL,
        );
        if sent.is_err() {
            break; // already disconnected
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(r.closed());
}

#[test]
fn a_native_sender_cannot_flood_with_replies_nobody_asked_for() {
    let b = Broker::start();
    let (mut victim, mut victim_r, victim_name) = hello(&b);
    let victim_id: u64 = victim_name.trim_start_matches(":1.").parse().unwrap();
    let native = b.conn();
    // 1 MiB D-Bus signals dressed up as replies to calls the victim never made.
    let mut body = Vec::new();
    Writer::new(&mut body, Endian::Little).string(&"x".repeat(1 << 20));
    let f = Fields {
        path: Some("/org/example/Obj"),
        interface: Some("org.example.Iface"),
        member: Some("Fill"),
        destination: Some(&victim_name),
        signature: "s",
        ..Default::default()
    };
    let mut msg = Vec::new();
    header::write_fields(
        &mut msg,
        Endian::Little,
        MessageType::Signal,
        FLAG_NO_REPLY_EXPECTED,
        body.len() as u32,
        7,
        &f,
    );
    msg.extend_from_slice(&body);
    // A reply that answers no pending call is refused outright (EPERM, kdbus HEAD), so
    // not one of them gets through, however many are tried.
    for i in 0..32 {
        let m = kdbus::Message::to(victim_id)
            .payload_type(kdbus::abi::payload::DBUS)
            .reply_to(1000 + i)
            .payload(&msg);
        assert_eq!(errno(native.send(&m)), kdbus::Errno::EPERM, "reply {i}");
    }
    // The victim is still there and was given none of them.
    assert_eq!(fills_before_own_call(&mut victim, &mut victim_r), 0);
}

#[test]
fn a_bad_header_disconnects_only_its_sender() {
    let b = Broker::start();
    let (mut bad, mut bad_r, _) = hello(&b);
    let (mut good, mut good_r, _) = hello(&b);
    // A well-framed message whose PATH field claims to be a string, not an object
    // path: the specification makes that an invalid message.
    let mut m = call(2, DRIVER, "GetId", "", &[], 0);
    let at = m
        .windows(4)
        .position(|w| w == [1, 1, b'o', 0])
        .expect("path field");
    m[at + 2] = b's';
    bad.write_all(&m).unwrap();
    assert!(bad_r.closed());
    good.write_all(&call(3, DRIVER, "GetId", "", &[], 0))
        .unwrap();
    assert_eq!(reply_serial(&good_r.reply()), Some(3));
}

/// A subscriber that cannot keep up with the signals it asked for goes (dbus-broker's
/// rule: it has no other way to learn it missed some); the bus and the broadcaster go
/// on.
#[test]
fn a_subscriber_that_cannot_keep_up_is_disconnected() {
    let b = Broker::start();
    let (mut sub, mut sub_r, _) = hello(&b);
    let mut rule = Vec::new();
    Writer::new(&mut rule, Endian::Little).string("type='signal',interface='org.example.Flood'");
    sub.write_all(&call(2, DRIVER, "AddMatch", "s", &rule, 0))
        .unwrap();
    assert_eq!(reply_serial(&sub_r.reply()), Some(2));
    // 700 signals of 256 KiB (175 MiB, past the sender's share of the stream) to a
    // subscriber that reads nothing meanwhile.
    let (mut tx, mut tx_r, _) = hello(&b);
    let mut body = Vec::new();
    Writer::new(&mut body, Endian::Little).string(&"x".repeat(256 * 1024));
    let f = Fields {
        path: Some("/org/example/Obj"),
        interface: Some("org.example.Flood"),
        member: Some("Tick"),
        signature: "s",
        ..Default::default()
    };
    let writer = std::thread::spawn(move || {
        for serial in 10..710 {
            let mut m = Vec::new();
            header::write_fields(
                &mut m,
                Endian::Little,
                MessageType::Signal,
                0,
                body.len() as u32,
                serial,
                &f,
            );
            m.extend_from_slice(&body);
            tx.write_all(&m).unwrap();
        }
        tx
    });
    let mut tx = writer.join().unwrap();
    // The broadcaster is still served.
    tx.write_all(&call(1000, DRIVER, "GetId", "", &[], 0))
        .unwrap();
    assert_eq!(reply_serial(&tx_r.reply()), Some(1000));
    // The subscriber's stream ends: what was queued, then end-of-file.
    sub.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match std::io::Read::read(&mut sub, &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("the overwhelmed subscriber was not disconnected: {e}"),
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What a flood made the broker hold goes back to the system once the flood is over.
#[test]
fn memory_goes_back_after_a_flood() {
    let b = Broker::start();
    let pid = b.child.id();
    let (recv, recv_r, name) = hello(&b);
    let (mut tx, mut tx_r, _) = hello(&b);
    let start = rss_kib(pid);
    // 200 calls of 256 KiB (50 MiB) to a receiver that reads nothing.
    let mut body = Vec::new();
    Writer::new(&mut body, Endian::Little).string(&"x".repeat(256 * 1024));
    let no_reply = header::FLAG_NO_REPLY_EXPECTED;
    let calls: Vec<u8> = (0..200)
        .flat_map(|i| call(10 + i, &name, "Fill", "s", &body, no_reply))
        .collect();
    let writer = std::thread::spawn(move || {
        tx.write_all(&calls).unwrap();
        tx
    });
    let mut tx = writer.join().unwrap();
    tx.write_all(&call(1000, DRIVER, "GetId", "", &[], 0))
        .unwrap();
    while reply_serial(&tx_r.reply()) != Some(1000) {}
    let flooded = rss_kib(pid);
    assert!(
        flooded > start + 30 * 1024,
        "the broker held the flood: {start} -> {flooded} KiB"
    );
    drop((recv, recv_r));
    drop((tx, tx_r));
    let back = wait_until(Duration::from_secs(15), || rss_kib(pid) < start + 20 * 1024);
    let end = rss_kib(pid);
    eprintln!("RSS {start} KiB, {flooded} KiB flooded, {end} KiB after");
    assert!(back, "RSS stayed at {end} KiB (started at {start} KiB)");
}
