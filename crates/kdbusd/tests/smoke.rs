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
