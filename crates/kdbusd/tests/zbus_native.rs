//! zbus over the native transport (`kdbus-zbus`): a zbus service and a zbus client,
//! both on kdbus connections, talk as they would on a D-Bus socket; and each talks
//! with zbus peers on the broker's D-Bus socket. What the driver would have said (an
//! unknown name, a name appearing, the service's signals) reaches them too.

mod common;
use common::*;
use futures_util::StreamExt;
use std::time::Duration;
use zbus::{interface, object_server::SignalEmitter, proxy};

struct Echo;

#[interface(name = "org.kdbus.ZbusTest")]
impl Echo {
    fn echo(&self, text: String) -> String {
        text
    }

    async fn ring(
        &self,
        #[zbus(signal_emitter)] e: SignalEmitter<'_>,
        n: u32,
    ) -> zbus::fdo::Result<()> {
        Self::rang(&e, n).await?;
        Ok(())
    }

    #[zbus(signal)]
    async fn rang(e: &SignalEmitter<'_>, n: u32) -> zbus::Result<()>;
}

#[proxy(interface = "org.kdbus.ZbusTest", default_path = "/org/kdbus/ZbusTest")]
trait EchoClient {
    fn echo(&self, text: &str) -> zbus::Result<String>;
    fn ring(&self, n: u32) -> zbus::Result<()>;
    #[zbus(signal)]
    fn rang(&self, n: u32) -> zbus::Result<()>;
}

/// A proxy for the test interface of `dest` on `conn`.
async fn proxy<'c>(conn: &'c zbus::Connection, dest: &'c str) -> EchoClientProxy<'c> {
    EchoClientProxy::builder(conn)
        .destination(dest)
        .unwrap()
        .build()
        .await
        .unwrap()
}

async fn serve(conn: zbus::connection::Builder<'_>, name: &str) -> zbus::Connection {
    conn.serve_at("/org/kdbus/ZbusTest", Echo)
        .expect("serve_at")
        .name(name)
        .expect("name")
        .build()
        .await
        .expect("the service connects")
}

async fn dbus(b: &Broker) -> zbus::connection::Builder<'static> {
    zbus::connection::Builder::address(b.dbus_address().as_str()).expect("address")
}

/// With a deadline, so that a lost message fails the test instead of hanging it.
fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    zbus::block_on(async {
        let timeout = async {
            async_io::Timer::after(Duration::from_secs(20)).await;
            panic!("timed out");
        };
        futures_util::pin_mut!(f);
        futures_util::pin_mut!(timeout);
        match futures_util::future::select(f, timeout).await {
            futures_util::future::Either::Left((v, _)) => v,
            futures_util::future::Either::Right(_) => unreachable!(),
        }
    })
}

#[test]
fn a_zbus_service_answers_a_zbus_client_over_the_native_transport() {
    let b = Broker::start();
    run(async {
        let _svc = serve(
            kdbus_zbus::builder(&b.bus).expect("hello"),
            "org.kdbus.ZbusTest",
        )
        .await;
        let conn = kdbus_zbus::connect(&b.bus)
            .await
            .expect("the client connects");
        let me = conn.unique_name().map(|n| n.to_string());
        assert!(
            me.as_deref().is_some_and(|n| n.starts_with(":1.")),
            "{me:?}"
        );
        let p = proxy(&conn, "org.kdbus.ZbusTest").await;
        assert_eq!(p.echo("over kdbus").await.unwrap(), "over kdbus");
        // 64 KiB, in the receive pool both ways.
        let big = "x".repeat(64 << 10);
        assert_eq!(p.echo(&big).await.unwrap(), big);
        // The service's broadcast reaches a subscriber through its bloom match.
        let mut rang = p.receive_rang().await.unwrap();
        p.ring(7).await.unwrap();
        let s = rang.next().await.expect("the signal");
        assert_eq!(s.args().unwrap().n, 7);
        // Nobody owns this name: the error a D-Bus bus gives, not a hang.
        let nobody = proxy(&conn, "org.kdbus.Nobody").await;
        match nobody.echo("?").await {
            Err(zbus::Error::MethodError(name, _, _)) => {
                assert_eq!(name.as_str(), "org.freedesktop.DBus.Error.ServiceUnknown")
            }
            other => panic!("{other:?}"),
        }
    });
}

/// Many calls in a row, each a wait for the socket: a wakeup lost between reading the
/// socket and waiting on it would hang one of them (the bench found one in 60,000).
#[test]
fn a_thousand_native_zbus_calls_each_get_their_reply() {
    let b = Broker::start();
    run(async {
        let _svc = serve(
            kdbus_zbus::builder(&b.bus).expect("hello"),
            "org.kdbus.ZbusMany",
        )
        .await;
        let conn = kdbus_zbus::connect(&b.bus).await.expect("client");
        let p = proxy(&conn, "org.kdbus.ZbusMany").await;
        for i in 0..1000 {
            let text = format!("call {i}");
            assert_eq!(p.echo(&text).await.unwrap(), text);
        }
    });
}

#[test]
fn native_and_dbus_socket_zbus_peers_talk_both_ways() {
    let b = Broker::start();
    run(async {
        let _native_svc = serve(
            kdbus_zbus::builder(&b.bus).expect("hello"),
            "org.kdbus.ZbusNative",
        )
        .await;
        let _dbus_svc = serve(dbus(&b).await, "org.kdbus.ZbusDBus").await;
        let native = kdbus_zbus::connect(&b.bus).await.expect("native client");
        let dbus_client = dbus(&b).await.build().await.expect("D-Bus client");
        for (conn, dest) in [
            (&native, "org.kdbus.ZbusDBus"),
            (&dbus_client, "org.kdbus.ZbusNative"),
        ] {
            let p = proxy(conn, dest).await;
            assert_eq!(p.echo(dest).await.unwrap(), dest, "calling {dest}");
        }
    });
}

#[test]
fn a_native_zbus_client_hears_a_name_appear() {
    let b = Broker::start();
    run(async {
        let conn = kdbus_zbus::connect(&b.bus).await.expect("client");
        let driver = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
        let mut changes = driver.receive_name_owner_changed().await.unwrap();
        assert!(!driver
            .name_has_owner("org.kdbus.ZbusLate".try_into().unwrap())
            .await
            .unwrap());
        let _svc = serve(dbus(&b).await, "org.kdbus.ZbusLate").await;
        loop {
            let c = changes.next().await.expect("NameOwnerChanged");
            let a = c.args().unwrap();
            if a.name().as_str() == "org.kdbus.ZbusLate" {
                assert!(a.new_owner().is_some());
                break;
            }
        }
        let owner = driver
            .get_name_owner("org.kdbus.ZbusLate".try_into().unwrap())
            .await
            .unwrap();
        assert!(owner.as_str().starts_with(":1."));
    });
}

/// What a native peer sends a zbus connection is checked as a D-Bus bus would: a
/// payload with bytes past its message is dropped whole (zbus would read them as a
/// message of their own, with a sender nobody checked), and a reply the bus did not
/// deliver as one is dropped; a signal with a destination arrives without any rule.
#[test]
fn a_native_peer_can_neither_smuggle_nor_forge_and_unicast_signals_arrive() {
    use kdbus::dbus::header::{self, Fields, MessageType};
    use kdbus::dbus::marshal::Endian;
    let b = Broker::start();
    run(async {
        let conn = kdbus_zbus::connect(&b.bus).await.expect("client");
        let me = conn.unique_name().unwrap().to_string();
        let id = kdbus::dbus::names::UniqueName::parse(&me).unwrap();
        let mut seen = zbus::MessageStream::from(&conn);
        let raw = b.conn();
        let msg = |t: MessageType, f: &Fields<'_>, serial: u32| {
            let mut out = Vec::new();
            header::write_fields(&mut out, Endian::Little, t, 1, 0, serial, f);
            out
        };
        let signal = |member| Fields {
            path: Some("/x"),
            interface: Some("org.x.Y"),
            member: Some(member),
            destination: Some(&me),
            ..Default::default()
        };
        // A signal with a forged reply behind it, in one payload.
        let forged = Fields {
            reply_serial: Some(2),
            destination: Some(&me),
            sender: Some(":1.1"),
            ..Default::default()
        };
        let mut smuggled = msg(MessageType::Signal, &signal("Smuggler"), 1);
        smuggled.extend(msg(MessageType::MethodReturn, &forged, 2));
        // A reply on its own, which no call of ours is waiting for from this peer.
        let lone = msg(MessageType::MethodReturn, &forged, 3);
        let marker = msg(MessageType::Signal, &signal("Marker"), 4);
        // And from a zbus peer, a signal to us alone: we hold no rule that takes it.
        let peer = kdbus_zbus::connect(&b.bus).await.expect("peer");
        peer.emit_signal(Some(me.as_str()), "/x", "org.x.Y", "Direct", &())
            .await
            .expect("emit");
        for (cookie, payload) in [(1, &smuggled), (2, &lone), (3, &marker)] {
            raw.send(&kdbus::Message::to(id).cookie(cookie).payload(payload))
                .expect("send to the zbus client");
        }
        let mut direct = false;
        loop {
            let m = seen
                .next()
                .await
                .expect("a message")
                .expect("a valid message");
            let h = m.header();
            let member = h.member().map(|m| m.to_string());
            assert_ne!(
                member.as_deref(),
                Some("Smuggler"),
                "a smuggling payload got through"
            );
            assert_ne!(
                h.message_type(),
                zbus::message::Type::MethodReturn,
                "a forged reply got through"
            );
            if member.as_deref() == Some("Direct") {
                direct = true;
            }
            if member.as_deref() == Some("Marker") {
                assert!(direct, "the unicast signal came first, and came");
                // The bus's word on who sent it, not the payload's.
                assert_eq!(
                    h.sender().map(|s| s.to_string()),
                    Some(format!(":1.{}", raw.id()))
                );
                break;
            }
        }
    });
}
