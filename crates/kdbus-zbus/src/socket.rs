//! The socket zbus reads and writes: a kdbus connection behind zbus's `Socket` halves.
//!
//! First zbus authenticates, as on any bus socket: the lines it writes (`sendmsg`)
//! are answered here, as a D-Bus server would (`OK <guid>`, `AGREE_UNIX_FD`), since
//! the kdbus connection is made and vouched for already. Then zbus says `Hello`, and
//! learns its unique name from the driver's reply, the way it does on every bus.
//!
//! Writing, zbus hands over whole messages (`send_message`): one becomes one posted
//! kdbus message (one `sendmsg`, no answer awaited), or a driver call (`driver`).
//! Reading, zbus asks for bytes (`recvmsg`) and frames them itself; the reader serves
//! them from the D-Bus message it is handing over, fetching the next one (`inbound`)
//! when that is done, and awaiting the socket only when the connection has nothing.
//!
//! Nothing but the reader waits on the socket. The writer's driver commands do read
//! it (a command's answer comes as a datagram, and whatever arrived before it is filed
//! in the connection), so every driver call ends with a message the connection sends
//! itself: its datagram wakes the reader, which then finds what the command filed.
//! Failures of posted messages come back as records; the reader turns those of calls
//! into the error replies zbus waits for.

use crate::shared::{io_error, Sasl, Shared, State};
use crate::{driver, inbound};
use kdbus::dbus::header::{self, MessageType};
use kdbus::dbus::names::UniqueName;
use kdbus::{AsyncConnection, Connection, Errno, HelloOptions, Message};
use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zbus::connection::socket::{ReadHalf, Socket, Split, WriteHalf};

/// How long a call may wait for its reply (dbus-daemon's default), enforced by the bus.
const CALL_TIMEOUT: Duration = Duration::from_secs(25);

/// A kdbus connection zbus can use as its socket ([`zbus::connection::Builder::authenticated_socket`]).
pub struct KdbusSocket {
    shared: Arc<Shared>,
}

impl KdbusSocket {
    /// Connect to the bus whose endpoint is `bus`.
    pub fn hello(bus: &Path) -> zbus::Result<KdbusSocket> {
        let conn =
            Connection::hello(bus, &HelloOptions::new().description("zbus")).map_err(io_error)?;
        let unique = UniqueName::from_id(conn.id()).as_str().to_string();
        let guid = conn
            .bus_id128()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let conn = AsyncConnection::new(conn).map_err(io_error)?;
        Ok(KdbusSocket {
            shared: Arc::new(Shared {
                conn,
                unique,
                state: Mutex::new(State::default()),
                sasl: Mutex::new(Sasl {
                    guid,
                    ..Sasl::default()
                }),
            }),
        })
    }

    /// Our unique name on the bus (`:1.<id>`).
    pub fn unique_name(&self) -> &str {
        &self.shared.unique
    }
}

impl std::fmt::Debug for KdbusSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KdbusSocket({})", self.shared.unique)
    }
}

impl Socket for KdbusSocket {
    type ReadHalf = Reader;
    type WriteHalf = Writer;

    fn split(self) -> Split<Reader, Writer> {
        Split::new(
            Reader {
                shared: self.shared.clone(),
                msg: Vec::new(),
                at: 0,
                fds: Vec::new(),
                local: VecDeque::new(),
            },
            Writer {
                shared: self.shared,
            },
        )
    }
}

/// zbus's read half: the D-Bus message being handed over, and the next ones.
pub struct Reader {
    shared: Arc<Shared>,
    /// The message being read, and how far.
    msg: Vec<u8>,
    at: usize,
    /// Its fds, handed over with its first bytes.
    fds: Vec<OwnedFd>,
    /// Messages made here (error replies, the driver's signals), served first.
    local: VecDeque<Vec<u8>>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reader({})", self.shared.unique)
    }
}

impl Reader {
    /// Turn the filed failures of our posted calls into their error replies.
    fn failures(&mut self) {
        let (failed, lost) = self.shared.conn.take_filed_send_failures();
        for (cookie, errno) in failed {
            inbound::send_failed(&self.shared, cookie, errno, &mut self.local);
        }
        if lost > 0 {
            // Their calls wait until the bus's reply timeout says NoReply.
            tracing::warn!(lost, "failures of posted messages were dropped unread");
        }
    }

    /// The next D-Bus message for zbus, and its fds.
    async fn next(&mut self) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        loop {
            if let Some(m) = self.local.pop_front() {
                return Ok((m, Vec::new()));
            }
            self.failures();
            if !self.local.is_empty() {
                continue;
            }
            let dry = match self.shared.conn.get_ref().recv() {
                Ok(r) => {
                    if let Some(m) = inbound::translate(&self.shared, r, &mut self.local)? {
                        return Ok(m);
                    }
                    false
                }
                Err(kdbus::Error::Bus(Errno::EAGAIN)) => true,
                Err(e) => return Err(io_error(e)),
            };
            if dry {
                // `recv` just read the socket dry: what it filed, without reading
                // again (that could file a message the wait below would sleep on).
                self.failures();
                if self.local.is_empty() {
                    self.shared.conn.readable().await.map_err(io_error)?;
                }
            }
        }
    }
}

#[zbus::export::async_trait::async_trait]
impl ReadHalf for Reader {
    async fn recvmsg(&mut self, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
        {
            let mut sasl = self.shared.sasl();
            if !sasl.output.is_empty() {
                let n = buf.len().min(sasl.output.len());
                buf[..n].copy_from_slice(&sasl.output[..n]);
                sasl.output.drain(..n);
                return Ok((n, Vec::new()));
            }
        }
        if self.at >= self.msg.len() {
            let (msg, fds) = self.next().await?;
            self.msg = msg;
            self.at = 0;
            self.fds = fds;
        }
        let n = buf.len().min(self.msg.len() - self.at);
        buf[..n].copy_from_slice(&self.msg[self.at..self.at + n]);
        self.at += n;
        Ok((n, std::mem::take(&mut self.fds)))
    }

    fn can_pass_unix_fd(&self) -> bool {
        true
    }
}

/// zbus's write half.
pub struct Writer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Writer({})", self.shared.unique)
    }
}

#[zbus::export::async_trait::async_trait]
impl WriteHalf for Writer {
    async fn send_message(&mut self, msg: &zbus::Message) -> zbus::Result<()> {
        let data = msg.data();
        let bytes: &[u8] = data;
        let h = header::parse(bytes)
            .map_err(|e| zbus::Error::Failure(format!("a message zbus wrote: {e}")))?;
        if h.destination == Some(driver::DRIVER) {
            return driver::call(&self.shared, &h, &bytes[h.header_len..]);
        }
        let fds: Vec<BorrowedFd<'_>> = data.fds().iter().map(|f| f.as_fd()).collect();
        outbound(&self.shared, &h, bytes, &fds)
    }

    /// Only the authentication lines come this way, and the `Hello` zbus sends in the
    /// same write as `BEGIN` (messages come whole, through `send_message`).
    async fn sendmsg(&mut self, buf: &[u8], _fds: &[BorrowedFd<'_>]) -> std::io::Result<usize> {
        let messages = {
            let mut sasl = self.shared.sasl();
            sasl.write(buf);
            if sasl.began {
                std::mem::take(&mut sasl.input)
            } else {
                Vec::new()
            }
        };
        let mut at = 0;
        while let Ok(Some(len)) = header::message_len(&messages[at..]) {
            let Some(m) = messages.get(at..at + len) else {
                break;
            };
            let h = header::parse(m)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
            let sent = if h.destination == Some(driver::DRIVER) {
                driver::call(&self.shared, &h, &m[h.header_len..])
            } else {
                outbound(&self.shared, &h, m, &[])
            };
            sent.map_err(|e| std::io::Error::other(e.to_string()))?;
            at += len;
        }
        Ok(buf.len())
    }

    async fn close(&mut self) -> std::io::Result<()> {
        self.shared.conn.byebye().map_err(io_error)
    }

    fn can_pass_unix_fd(&self) -> bool {
        true
    }
}

/// One D-Bus message out, as one posted kdbus message.
fn outbound(
    shared: &Shared,
    h: &header::Header<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> zbus::Result<()> {
    let serial = u64::from(h.serial);
    let bloom;
    let mut m = match h.destination {
        Some(d) if d.starts_with(':') => match UniqueName::parse(d) {
            Some(id) => Message::to(id),
            // Not a name this bus hands out: nobody has it.
            None => return no_destination(shared, h, d, Errno::ENXIO),
        },
        Some(d) => Message::to_name(d),
        None if h.msg_type == MessageType::Signal => Message::to(kdbus::abi::DST_ID_BROADCAST),
        // Only the driver is called without a destination, and it is not here.
        None => return driver::call(shared, h, &bytes[h.header_len..]),
    };
    // A broadcast carries its bloom filter; a signal with a destination is a plain
    // unicast (kdbus would hand a unicast signal only to a matching receiver, D-Bus
    // always delivers it).
    if h.msg_type == MessageType::Signal && h.destination.is_none() {
        bloom = kdbus::dbus::rules::signal_bloom(shared.conn.bloom(), h, &bytes[h.header_len..]);
        m = m.signal(&bloom);
    }
    m = m.cookie(serial).payload(bytes);
    for fd in fds {
        m = m.fd(*fd);
    }
    let call = h.msg_type == MessageType::MethodCall && !h.no_reply_expected();
    match h.msg_type {
        _ if call => {
            m = m.expect_reply(kdbus::monotonic_ns() + CALL_TIMEOUT.as_nanos() as u64);
            let dest = h.destination.unwrap_or_default().to_string();
            shared.state().calls.insert(serial, dest);
        }
        MessageType::MethodReturn | MessageType::Error => {
            m = m.reply_to(h.reply_serial.map_or(0, u64::from));
        }
        _ => {}
    }
    match shared.conn.post(&m) {
        Ok(()) => Ok(()),
        Err(kdbus::Error::Bus(e)) if call => {
            shared.state().calls.remove(&serial);
            no_destination(shared, h, h.destination.unwrap_or_default(), e)
        }
        // A reply or signal nobody can take is dropped, as a D-Bus bus drops it.
        Err(kdbus::Error::Bus(_)) => Ok(()),
        Err(e) => Err(io_error(e).into()),
    }
}

/// A call that cannot be delivered: its caller gets the error a D-Bus bus would give.
fn no_destination(
    shared: &Shared,
    h: &header::Header<'_>,
    dest: &str,
    e: Errno,
) -> zbus::Result<()> {
    if h.msg_type != MessageType::MethodCall || h.no_reply_expected() {
        return Ok(());
    }
    let err = inbound::send_error(shared, h.serial, dest, e);
    shared.to_self(&err)
}
