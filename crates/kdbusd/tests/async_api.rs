//! The client library's async API on both runtimes it supports: a service that awaits
//! its calls and a client that awaits the replies, on tokio and on async-io, neither
//! blocking a thread while it waits (each runs on one thread with the other).

mod common;
use common::*;
use kdbus::{AsyncConnection, AsyncIo, Message, Readiness, Tokio};
use std::future::Future;
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

/// A call future dropped before its reply came (a timeout around it, a `select!`
/// that went the other way) gives the reply's pool slice back when the reply comes: in
/// a 64 KiB pool, 40 abandoned calls with 16 KiB replies leave room for a real one.
#[test]
fn dropped_call_futures_leave_nothing_in_the_pool() {
    let b = Broker::start();
    async_io::block_on(async {
        let small = kdbus::Connection::hello(&b.bus, &test_hello().pool_size(64 << 10)).unwrap();
        let client = AsyncConnection::<AsyncIo>::new(small).unwrap();
        let service = AsyncConnection::<AsyncIo>::new(b.conn()).unwrap();
        let reply = vec![0x5a; 16 << 10];
        for i in 0..40u64 {
            let call = client.call(
                Message::to(service.id()).cookie(i + 1).payload(b"?"),
                Duration::from_secs(5),
            );
            // Polled once (the call is sent), then dropped before its reply.
            let mut call = Box::pin(call);
            let waker = std::task::Waker::noop();
            let pending = call
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker));
            assert!(pending.is_pending());
            drop(call);
            let m = service.recv().await.expect("the call");
            service
                .post(&Message::to(m.src_id()).reply_to(m.cookie()).payload(&reply))
                .expect("the reply");
        }
        // The frees of abandoned replies ride on the client's next datagram, once it
        // has read their answers: a command's round trip reads everything before its
        // own answer (the broker answers in order), and the flush sends the frees.
        client.get_ref().info(client.id(), 0).expect("a round trip");
        client.get_ref().flush().expect("the frees go out");
        // A real call: it fits only if every abandoned reply went back.
        let answer = join_call(&client, &service, &reply).await;
        assert_eq!(answer, reply.len());
    });
}

/// A call that the service answers with `reply`: the reply's length.
async fn join_call(
    client: &AsyncConnection<AsyncIo>,
    service: &AsyncConnection<AsyncIo>,
    reply: &[u8],
) -> usize {
    let mut got = 0;
    let call = async {
        let r = client
            .call(
                Message::to(service.id()).cookie(1000).payload(b"!"),
                Duration::from_secs(5),
            )
            .await
            .expect("the last call's reply");
        got = r.payload_bytes().len();
    };
    let serve = async {
        let m = service.recv().await.expect("the last call");
        service
            .post(&Message::to(m.src_id()).reply_to(m.cookie()).payload(reply))
            .expect("the last reply");
    };
    join(call, serve).await;
    got
}
