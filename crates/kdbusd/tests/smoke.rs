mod common;
use common::*;
use kdbus::Message;
use std::time::Duration;

#[test]
fn unicast_and_call() {
    let b = Broker::start();
    let a = b.conn();
    let c = b.conn();
    a.send(&Message::to(c.id()).cookie(7).payload(b"hello"))
        .unwrap();
    let m = c.recv_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(m.src_id(), a.id());
    assert_eq!(m.cookie(), 7);
    assert_eq!(m.payload_bytes(), b"hello");
    drop(m);
    let cid = c.id();
    let t = std::thread::spawn(move || {
        let m = c.recv_timeout(Some(Duration::from_secs(5))).unwrap();
        let data = m.payload_bytes();
        let (src, cookie) = (m.src_id(), m.cookie());
        drop(m);
        c.send(&Message::to(src).reply_to(cookie).payload(&data))
            .unwrap();
        c
    });
    let r = a
        .call(
            Message::to(cid).cookie(9).payload(b"ping"),
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(r.payload_bytes(), b"ping");
    assert_eq!(r.src_id(), cid);
    t.join().unwrap();
}

#[test]
fn broadcast_reaches_matching_peers_only() {
    use kdbus::bloom::{signal_filter, SignalSpec};
    use kdbus::MatchRule;
    let b = Broker::start();
    let tx = b.conn();
    let yes = b.conn();
    let no = b.conn();
    yes.add_match(1, &MatchRule::new(), false).unwrap();
    tx.add_match(1, &MatchRule::new(), false).unwrap();
    let f = signal_filter(
        tx.bloom(),
        &SignalSpec {
            member: Some("Ping"),
            ..Default::default()
        },
    );
    tx.send(&Message::broadcast(&f).cookie(3).payload(b"all"))
        .unwrap();
    let m = yes.recv_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        (m.src_id(), m.cookie(), m.payload_bytes()),
        (tx.id(), 3, b"all".to_vec())
    );
    drop(m);
    assert_eq!(
        no.recv().err().map(|e| e.errno()),
        Some(kdbus::Errno::EAGAIN)
    );
    assert_eq!(
        tx.recv().err().map(|e| e.errno()),
        Some(kdbus::Errno::EAGAIN),
        "no echo to the sender"
    );
}
