//! The client library's async API on both runtimes it supports: a service that awaits
//! its calls and a client that awaits the replies, on tokio and on async-io, neither
//! blocking a thread while it waits (each runs on one thread with the other).

mod common;
use common::*;
use kdbus::{AsyncConnection, AsyncIo, Message, Readiness, Tokio};
use std::time::Duration;

/// Serve `n` calls (echo, upper-cased) and answer a client's `n` calls, all on one
/// thread: only works if every wait is an await.
async fn echo_both_ways<R: Readiness>(b: &Broker, n: u64) {
    let service = AsyncConnection::<R>::new(b.conn()).expect("register the service");
    let client = AsyncConnection::<R>::new(b.conn()).expect("register the client");
    let service_id = service.id();
    let serve = async {
        for _ in 0..n {
            let m = service.recv().await.expect("a call");
            let up = m.payload_bytes().to_ascii_uppercase();
            service
                .post(&Message::to(m.src_id()).reply_to(m.cookie()).payload(&up))
                .expect("post the reply");
        }
    };
    let call = async {
        for i in 0..n {
            let text = format!("call {i}");
            let r = client
                .call(
                    Message::to(service_id)
                        .cookie(i + 1)
                        .payload(text.as_bytes()),
                    Duration::from_secs(5),
                )
                .await
                .expect("a reply");
            assert_eq!(r.payload_bytes(), text.to_uppercase().as_bytes());
        }
        // A send the broker refuses says so.
        let e = client.send(&Message::to(0x7fff_0000).cookie(99)).await;
        assert_eq!(errno(e), kdbus::Errno::ENXIO);
    };
    join(serve, call).await;
}

/// Poll two futures to completion on the current task (no runtime-specific join).
async fn join(a: impl std::future::Future<Output = ()>, b: impl std::future::Future<Output = ()>) {
    let (mut a, mut b) = (Box::pin(a), Box::pin(b));
    let (mut a_done, mut b_done) = (false, false);
    std::future::poll_fn(|cx| {
        if !a_done {
            a_done = a.as_mut().poll(cx).is_ready();
        }
        if !b_done {
            b_done = b.as_mut().poll(cx).is_ready();
        }
        if a_done && b_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

#[test]
fn tokio_awaits_calls_and_replies_on_one_thread() {
    let b = Broker::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(echo_both_ways::<Tokio>(&b, 50));
}

#[test]
fn async_io_awaits_calls_and_replies_on_one_thread() {
    let b = Broker::start();
    async_io::block_on(echo_both_ways::<AsyncIo>(&b, 50));
}
