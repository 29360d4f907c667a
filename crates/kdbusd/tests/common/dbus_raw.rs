//! A D-Bus client on a raw stream, for tests that need control over every byte (what
//! is written when, what is never read): SASL, method calls, framing of the replies.

#![allow(dead_code)]

use kdbus_dbus::header::{self, Fields, MessageType};
use kdbus_dbus::marshal::{Endian, Reader};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub const DRIVER: &str = "org.freedesktop.DBus";
pub const DRIVER_PATH: &str = "/org/freedesktop/DBus";

fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

pub fn auth() -> Vec<u8> {
    auth_lines(false)
}

/// SASL EXTERNAL for our uid, optionally asking for fd passing, then BEGIN.
pub fn auth_lines(fds: bool) -> Vec<u8> {
    let hex: String = uid()
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    let negotiate = if fds { "NEGOTIATE_UNIX_FD\r\n" } else { "" };
    format!("\0AUTH EXTERNAL {hex}\r\n{negotiate}BEGIN\r\n").into_bytes()
}

/// A method call to `dest` (the driver unless told), body marshalled by `body`.
pub fn call(serial: u32, dest: &str, member: &str, sig: &str, body: &[u8], flags: u8) -> Vec<u8> {
    let f = Fields {
        path: Some(if dest == DRIVER {
            DRIVER_PATH
        } else {
            "/org/example/Obj"
        }),
        interface: Some(if dest == DRIVER {
            DRIVER
        } else {
            "org.example.Iface"
        }),
        member: Some(member),
        destination: Some(dest),
        signature: sig,
        ..Default::default()
    };
    let mut out = Vec::new();
    header::write_fields(
        &mut out,
        Endian::Little,
        MessageType::MethodCall,
        flags,
        body.len() as u32,
        serial,
        &f,
    );
    out.extend_from_slice(body);
    out
}

/// Reads what the broker writes: first the SASL `OK` line, then whole messages.
pub struct Reading {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Reading {
    pub fn new(s: UnixStream) -> Self {
        Reading { s, buf: Vec::new() }
    }

    pub fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    pub fn line(&mut self) -> String {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..p]).into_owned();
                self.buf.drain(..p + 2);
                return l;
            }
            assert!(self.fill(), "connection closed before a SASL line");
        }
    }

    pub fn message(&mut self) -> Vec<u8> {
        loop {
            if let Some(len) = header::message_len(&self.buf).expect("framing") {
                if self.buf.len() >= len {
                    return self.buf.drain(..len).collect();
                }
            }
            assert!(self.fill(), "connection closed before a whole message");
        }
    }

    /// The next message that is not a signal from the bus.
    pub fn reply(&mut self) -> Vec<u8> {
        loop {
            let m = self.message();
            let h = header::parse(&m).expect("valid header");
            if h.msg_type != MessageType::Signal {
                return m;
            }
        }
    }

    /// Whether the broker closes the connection (rather than the read timing out).
    pub fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        }
    }
}

pub fn first_string(m: &[u8]) -> String {
    let h = header::parse(m).unwrap();
    Reader::new(&m[h.header_len..h.total_len()], h.endian)
        .string()
        .unwrap()
        .to_string()
}

pub fn reply_serial(m: &[u8]) -> Option<u32> {
    header::parse(m).unwrap().reply_serial
}

/// Connect, authenticate and say Hello in one write: the unique name.
pub fn hello_at(path: &Path) -> (UnixStream, Reading, String) {
    let mut s = UnixStream::connect(path).expect("connect to the D-Bus socket");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    let mut bytes = auth();
    bytes.extend(call(1, DRIVER, "Hello", "", &[], 0));
    s.write_all(&bytes).unwrap();
    let mut r = Reading::new(s.try_clone().unwrap());
    assert!(r.line().starts_with("OK "));
    let name = first_string(&r.reply());
    (s, r, name)
}
