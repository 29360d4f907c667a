//! What the socket's two halves and the driver share: the kdbus connection, the
//! authentication exchange, and the bookkeeping of matches and calls. It depends on no
//! other module of the crate; `driver`, `inbound` and `socket` build on it.

use kdbus::{AsyncConnection, AsyncIo, Message};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// What both halves share: the connection and the driver's bookkeeping.
pub(crate) struct Shared {
    pub(crate) conn: AsyncConnection<AsyncIo>,
    /// `:1.<id>`.
    pub(crate) unique: String,
    pub(crate) state: Mutex<State>,
    pub(crate) sasl: Mutex<Sasl>,
}

/// The authentication exchange zbus goes through before its first message.
#[derive(Default)]
pub(crate) struct Sasl {
    /// What zbus wrote since the last complete line.
    pub(crate) input: Vec<u8>,
    /// Our answers it has not read yet.
    pub(crate) output: Vec<u8>,
    /// The bus's id, as the server GUID.
    pub(crate) guid: String,
    /// `BEGIN` came: what follows is messages (zbus sends its `Hello` right after).
    pub(crate) began: bool,
}

impl Sasl {
    /// Take the lines zbus wrote in `bytes` and answer each.
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
        while let Some(end) = self.input.windows(2).position(|w| w == b"\r\n") {
            if self.began {
                break;
            }
            let line: Vec<u8> = self.input.drain(..end + 2).collect();
            // The credentials byte comes first, alone or with the first line.
            let line = String::from_utf8_lossy(&line[..end]);
            let line = line.trim_start_matches('\0');
            let answer = match line.split(' ').next().unwrap_or_default() {
                "AUTH" | "DATA" => format!("OK {}\r\n", self.guid),
                "NEGOTIATE_UNIX_FD" => "AGREE_UNIX_FD\r\n".to_string(),
                "BEGIN" => {
                    self.began = true;
                    String::new()
                }
                "" => String::new(),
                "CANCEL" => "REJECTED EXTERNAL\r\n".to_string(),
                _ => "ERROR \"Unknown command\"\r\n".to_string(),
            };
            self.output.extend_from_slice(answer.as_bytes());
        }
    }
}

/// The driver's and the calls' bookkeeping.
#[derive(Default)]
pub(crate) struct State {
    /// Rules added by `AddMatch`, with the cookie of their kdbus match (0: none).
    pub(crate) rules: Vec<(kdbus::dbus::rules::Rule, u64)>,
    /// The last match cookie handed out.
    pub(crate) match_cookie: u64,
    /// The match that brings the bus's name and connection changes, while some rule
    /// wants the driver's signals.
    pub(crate) notifications: Option<u64>,
    /// Our calls still waiting for a reply, by serial: their destination, for the
    /// error that may stand in for the reply.
    pub(crate) calls: HashMap<u64, String>,
    /// The serial of the last message the socket wrote itself.
    pub(crate) serial: u32,
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves bookkeeping, not memory, in doubt.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn sasl(&self) -> MutexGuard<'_, Sasl> {
        self.sasl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bus's id for this connection.
    pub(crate) fn id(&self) -> u64 {
        self.conn.id()
    }

    /// A serial for a message of the socket's own (driver replies, signals).
    pub(crate) fn serial(&self) -> u32 {
        let mut st = self.state();
        st.serial = st.serial.checked_add(1).unwrap_or(1);
        st.serial
    }

    /// Hand `msg` (whole D-Bus bytes) to our own reader, through the bus.
    pub(crate) fn to_self(&self, msg: &[u8]) -> zbus::Result<()> {
        let m = Message::to(self.id()).payload(msg);
        self.conn.post(&m).map_err(io_error)?;
        Ok(())
    }
}

/// A kdbus error as the I/O error zbus reports.
pub(crate) fn io_error(e: kdbus::Error) -> std::io::Error {
    match e {
        kdbus::Error::Io(e) => e,
        e => std::io::Error::from_raw_os_error(e.errno().0),
    }
}
