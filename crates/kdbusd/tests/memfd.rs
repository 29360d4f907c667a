//! Memfd payloads through the Rust library: a sealed memfd reaches the receiver as
//! the same file, mapped read-only, its bytes intact; the receiver cannot write to it;
//! an unsealed memfd and a file that is not a memfd are refused with kdbus's errnos.

mod common;
use common::*;
use kdbus::abi::Errno;
use kdbus::{memfd_sealed, Message};
use std::os::fd::AsFd;

#[test]
fn a_sealed_memfd_arrives_whole_and_read_only() {
    let b = Broker::start();
    let (tx, rx) = (b.conn(), b.conn());
    let data: Vec<u8> = (0..(1 << 20) + 17).map(|i| (i * 31 % 251) as u8).collect();
    let fd = memfd_sealed(&data).expect("a sealed memfd");
    ok(tx.send(
        &Message::to(rx.id())
            .cookie(1)
            .memfd(fd.as_fd(), 16, data.len() as u64 - 16),
    ));
    let m = ok(rx.recv_timeout(Some(SOON)));
    let views = m.memfds().expect("mapped");
    assert_eq!(views.len(), 1);
    assert_eq!(&views[0][..], &data[16..]);
    // The seals hold for the receiver too.
    let received = m.fds.last().expect("the memfd");
    let w = rustix::io::pwrite(received, b"x", 0);
    assert!(w.is_err(), "a received memfd took a write");
}

#[test]
fn unsealed_memfds_and_other_files_are_refused() {
    let b = Broker::start();
    let (tx, rx) = (b.conn(), b.conn());
    let unsealed =
        rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::ALLOW_SEALING).expect("memfd");
    rustix::io::write(&unsealed, b"hello").unwrap();
    let r = tx.send(&Message::to(rx.id()).cookie(1).memfd(unsealed.as_fd(), 0, 5));
    assert_eq!(r.err().map(|e| e.errno()), Some(Errno::ETXTBSY));
    let mut file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut file, b"hello").unwrap();
    let r = tx.send(&Message::to(rx.id()).cookie(2).memfd(file.as_fd(), 0, 5));
    assert_eq!(r.err().map(|e| e.errno()), Some(Errno::EMEDIUMTYPE));
}
