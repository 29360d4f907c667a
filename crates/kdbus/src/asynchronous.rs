//! The async API: a [`Connection`] whose waits are awaits, for tokio (feature
//! `tokio`) and for async-io / smol (feature `async-io`).
//!
//! Nothing here blocks a thread: requests are written at once (a datagram), and what
//! would wait for the broker instead awaits the socket becoming readable, then reads
//! what it has without blocking and looks again. The socket is the connection's own,
//! registered with the runtime's reactor through a duplicate of its descriptor, so the
//! blocking API of the same connection stays usable beside it.
//!
//! [`AsyncConnection::recv`] waits for the next message, [`AsyncConnection::call`] for
//! a reply, [`AsyncConnection::send`] for the broker's acceptance;
//! [`Connection::post`] never waits and needs no async form.
//!
//! A `call` or `send` future may be dropped before its answer came (a timeout around
//! it, a `select!` that took another branch): the answer is dropped when it comes, and
//! a call's reply slice goes back to the pool.
//!
//! One limit, for now: whoever reads the socket files what it finds (answers, queued
//! messages) for the others without waking them; they wake at the next datagram. So
//! let one task at a time wait on a connection, and do not mix it with blocking calls
//! on other threads; or, after such a call, make sure a datagram follows (a message
//! to the connection itself does: `kdbus-zbus` sends one after each driver command).

use crate::{Connection, Errno, Error, Message, Received, Result};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::time::Duration;

/// A request whose answer an async caller awaits: if the caller goes away first, the
/// connection is told to drop the answer (and free a call's reply) when it comes.
struct Pending<'c> {
    conn: &'c Connection,
    id: u64,
    call: bool,
    done: bool,
}

impl<'c> Pending<'c> {
    fn new(conn: &'c Connection, id: u64, call: bool) -> Self {
        Pending {
            conn,
            id,
            call,
            done: false,
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.conn.abandon(self.id, self.call);
        }
    }
}

/// How to await the socket becoming readable: one implementation per runtime.
pub trait Readiness {
    /// Register the socket (a duplicate of the connection's descriptor).
    fn register(fd: OwnedFd) -> std::io::Result<Self>
    where
        Self: Sized;
    /// Resolves when the socket may have something to read.
    fn readable(&self) -> impl Future<Output = std::io::Result<()>>;
}

/// A connection with async waits; `R` is the runtime's [`Readiness`] (`Tokio` with
/// feature `tokio`, `AsyncIo` with feature `async-io`). Derefs to the [`Connection`]
/// for everything that does not wait.
pub struct AsyncConnection<R: Readiness> {
    conn: Connection,
    ready: R,
}

impl<R: Readiness> AsyncConnection<R> {
    /// Wrap `conn`, registering its socket with the runtime (call this inside it).
    pub fn new(conn: Connection) -> Result<Self> {
        let fd = conn.as_fd().try_clone_to_owned()?;
        Ok(AsyncConnection {
            ready: R::register(fd)?,
            conn,
        })
    }

    /// The next message from the queue, awaiting one if there is none.
    pub async fn recv(&self) -> Result<Received<'_>> {
        loop {
            match self.conn.recv() {
                Err(Error::Bus(Errno::EAGAIN)) => self.ready.readable().await?,
                r => return r,
            }
        }
    }

    /// A call: send `msg` expecting a reply within `timeout`, and await the reply.
    pub async fn call(&self, msg: Message<'_>, timeout: Duration) -> Result<Received<'_>> {
        let mut pending = Pending::new(&self.conn, self.conn.call_submit(&msg, timeout)?, true);
        loop {
            // (An error is an answer too: it came, nothing is left to drop.)
            let r = self
                .conn
                .call_poll(pending.id)
                .inspect_err(|_| pending.done = true)?;
            if let Some(r) = r {
                pending.done = true;
                return Ok(r);
            }
            self.ready.readable().await?;
        }
    }

    /// Send `msg` and await the broker's acceptance (its errno on refusal).
    pub async fn send(&self, msg: &Message<'_>) -> Result<()> {
        let mut pending = Pending::new(&self.conn, self.conn.send_submit(msg)?, false);
        loop {
            let a = self
                .conn
                .answer_poll(pending.id)
                .inspect_err(|_| pending.done = true)?;
            if let Some(a) = a {
                pending.done = true;
                return match a.error {
                    0 => Ok(()),
                    e => Err(Error::Bus(Errno(e))),
                };
            }
            self.ready.readable().await?;
        }
    }

    /// Await the socket becoming readable, for callers that poll the connection
    /// themselves (`recv`, [`Connection::take_send_failures`]) until `EAGAIN`.
    pub async fn readable(&self) -> Result<()> {
        Ok(self.ready.readable().await?)
    }

    /// The blocking connection underneath.
    pub fn get_ref(&self) -> &Connection {
        &self.conn
    }
}

impl<R: Readiness> std::ops::Deref for AsyncConnection<R> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

/// tokio's reactor (`AsyncFd`).
#[cfg(feature = "tokio")]
pub struct Tokio(tokio::io::unix::AsyncFd<OwnedFd>);

#[cfg(feature = "tokio")]
impl Readiness for Tokio {
    fn register(fd: OwnedFd) -> std::io::Result<Self> {
        crate::sys::tokio_register(fd).map(Tokio)
    }
    async fn readable(&self) -> std::io::Result<()> {
        // The caller reads with its own syscalls until EAGAIN: what was ready is
        // consumed, so the readiness is cleared for the next wait.
        let mut guard = self.0.readable().await?;
        guard.clear_ready();
        Ok(())
    }
}

/// async-io's reactor (smol, async-std, zbus's default).
#[cfg(feature = "async-io")]
pub struct AsyncIo(async_io::Async<OwnedFd>);

#[cfg(feature = "async-io")]
impl Readiness for AsyncIo {
    fn register(fd: OwnedFd) -> std::io::Result<Self> {
        // Not `Async::new`, which sets O_NONBLOCK on the file, and so on the blocking
        // connection that shares it: its sends would fail with EAGAIN on a full socket.
        // Every read of ours says MSG_DONTWAIT; only readiness comes from here.
        async_io::Async::new_nonblocking(fd).map(AsyncIo)
    }
    async fn readable(&self) -> std::io::Result<()> {
        self.0.readable().await
    }
}
