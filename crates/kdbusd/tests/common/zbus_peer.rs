//! The zbus side of the D-Bus tests: connections to kdbusd's D-Bus socket and a
//! thread-drained inbox of what they receive. Test files that talk zbus include it with
//! `#[path = "common/zbus_peer.rs"] mod zbus_peer;` (the others need not build it).
#![allow(dead_code)]

use crate::common::{Broker, SOON};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use zbus::blocking::{connection::Builder, fdo::DBusProxy, Connection as ZConn, MessageIterator};
use zbus::message::{Message as ZMsg, Type as MsgType};

pub const DRIVER: &str = "org.freedesktop.DBus";
pub const DRIVER_PATH: &str = "/org/freedesktop/DBus";
/// A bound on any single call, so that a broker that never answers fails the test
/// instead of hanging it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub fn zconn(b: &Broker) -> ZConn {
    Builder::address(b.dbus_address().as_str())
        .expect("address")
        .method_timeout(CALL_TIMEOUT)
        .build()
        .expect("zbus connects and says Hello")
}

pub fn unique(c: &ZConn) -> String {
    c.unique_name()
        .expect("a bus connection has a unique name")
        .to_string()
}

pub fn proxy(c: &ZConn) -> DBusProxy<'static> {
    DBusProxy::new(c).expect("DBusProxy")
}

pub fn add_match(c: &ZConn, rule: &str) {
    c.call_method(Some(DRIVER), DRIVER_PATH, Some(DRIVER), "AddMatch", &rule)
        .unwrap_or_else(|e| panic!("AddMatch {rule}: {e}"));
}

pub fn member(m: &ZMsg) -> String {
    m.header()
        .member()
        .map(|x| x.to_string())
        .unwrap_or_default()
}

pub fn sender(m: &ZMsg) -> String {
    m.header()
        .sender()
        .map(|x| x.to_string())
        .unwrap_or_default()
}

/// The first argument if it is a string (also of a NameOwnerChanged-shaped `sss`).
pub fn first_string(m: &ZMsg) -> Option<String> {
    let body = m.body();
    body.deserialize::<String>()
        .or_else(|_| body.deserialize::<(String, String, String)>().map(|t| t.0))
        .ok()
}

/// Everything a zbus connection receives, read by a thread (a zbus message stream must
/// be drained continuously).
pub struct Inbox {
    rx: mpsc::Receiver<ZMsg>,
}

impl Inbox {
    pub fn new(c: &ZConn) -> Inbox {
        let it = MessageIterator::from(c);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for m in it.flatten() {
                if tx.send(m).is_err() {
                    break;
                }
            }
        });
        Inbox { rx }
    }

    /// The next message for which `f` holds, skipping others; `None` after [`SOON`].
    pub fn next_where(&self, f: impl Fn(&ZMsg) -> bool) -> Option<ZMsg> {
        let end = Instant::now() + SOON;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok(m) if f(&m) => return Some(m),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The next signal of interface `iface` (any member).
    #[track_caller]
    pub fn signal(&self, iface: &str) -> ZMsg {
        self.next_where(|m| {
            m.message_type() == MsgType::Signal
                && m.header().interface().map(|i| i.as_str()) == Some(iface)
        })
        .unwrap_or_else(|| panic!("no {iface} signal arrived"))
    }

    /// The next driver signal `member` with first argument `arg0`.
    #[track_caller]
    pub fn driver_signal(&self, member: &str, arg0: &str) -> ZMsg {
        self.next_where(|m| {
            let h = m.header();
            m.message_type() == MsgType::Signal
                && h.interface().map(|i| i.as_str()) == Some(DRIVER)
                && h.member().map(|i| i.as_str()) == Some(member)
                && first_string(m).as_deref() == Some(arg0)
        })
        .unwrap_or_else(|| panic!("no {member}({arg0}) signal arrived"))
    }
}
