//! What an idle connection costs the broker in descriptors: its socket, nothing more.
//! The pidfd of its process is taken from the socket when first needed (ProcessFD,
//! or metadata read from `/proc`), and kept from then on; so 10,000 idle connections
//! fit a broker whose `RLIMIT_NOFILE` is 20,000, where two descriptors each did not.

mod common;
#[path = "common/zbus_peer.rs"]
mod zbus_peer;
use common::*;
use zbus_peer::*;

/// Descriptors the broker process holds.
fn broker_fds(b: &Broker) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", b.child.id()))
        .expect("the broker's fds")
        .count()
}

/// Wait until the broker holds `want` descriptors (it accepts on its own time).
fn settles_at(b: &Broker, want: usize) -> usize {
    let mut now = broker_fds(b);
    wait_until(SOON, || {
        now = broker_fds(b);
        now == want
    });
    now
}

#[test]
fn an_idle_connection_costs_the_broker_its_socket() {
    let b = Broker::start();
    // One of each first: the broker's own first-use allocations settle.
    let _warm = (b.conn(), zconn(&b));
    let before = settles_at(&b, broker_fds(&b));
    let native: Vec<_> = (0..40).map(|_| b.conn()).collect();
    let dbus: Vec<_> = (0..40).map(|_| zconn(&b)).collect();
    assert_eq!(settles_at(&b, before + 80), before + 80, "80 connections");

    // ProcessFD asked of one D-Bus peer: its pidfd is taken, once.
    let asker = zconn(&b);
    let after_asker = settles_at(&b, before + 81);
    assert_eq!(after_asker, before + 81);
    let proxy = zbus::blocking::fdo::DBusProxy::new(&asker).expect("driver proxy");
    let name = unique(&dbus[0]);
    let bus_name = zbus::names::BusName::try_from(name.as_str()).expect("a bus name");
    for _ in 0..3 {
        let cr = proxy
            .get_connection_credentials(bus_name.clone())
            .expect("credentials");
        if kernel_has_peer_pidfd() {
            assert!(cr.process_fd().is_some(), "ProcessFD");
        }
    }
    let want = before + 81 + usize::from(kernel_has_peer_pidfd());
    assert_eq!(settles_at(&b, want), want, "one pidfd, kept");
    drop((native, dbus));
}
