//! The server side of D-Bus authentication: SASL EXTERNAL over a line protocol.
//!
//! A client sends one NUL byte (which on a unix socket may carry credentials), then
//! lines ending in `\r\n`. We accept only EXTERNAL, checked against the uid the kernel
//! reported for the socket, and optionally agree to pass unix fds. After `BEGIN` the
//! stream carries D-Bus messages. Lines are bounded, and so are failed attempts: a
//! client that talks nonsense is told ERROR or REJECTED a few times and then dropped.

use thiserror::Error;

/// Longest line we read.
pub const MAX_LINE: usize = 8192;
/// Failed exchanges (ERROR, REJECTED) before we give up on a client.
pub const MAX_FAILURES: u32 = 8;

/// Why authentication ends with the client being dropped.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum SaslError {
    /// The first byte the client sent was not NUL.
    #[error("the client did not start with a NUL byte")]
    NoNulByte,
    /// A line is longer than [`MAX_LINE`] bytes.
    #[error("line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// The client failed more than [`MAX_FAILURES`] exchanges.
    #[error("too many failed authentication attempts")]
    TooManyFailures,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for the initial NUL byte.
    Nul,
    /// Waiting for AUTH.
    Auth,
    /// Sent DATA for EXTERNAL without initial response; waiting for the client's DATA.
    Data,
    /// Sent OK; waiting for BEGIN (or NEGOTIATE_UNIX_FD).
    Begin,
    Done,
}

/// One client's authentication.
#[derive(Debug)]
pub struct Sasl {
    state: State,
    uid: u32,
    guid: [u8; 16],
    allow_fds: bool,
    fds_agreed: bool,
    failures: u32,
}

/// What feeding bytes achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes used; the rest (after BEGIN) belongs to the message stream.
    pub consumed: usize,
    /// BEGIN was received: the client is authenticated.
    pub done: bool,
}

impl Sasl {
    /// `uid`: the peer's uid from the kernel; `guid`: the server's 128-bit id;
    /// `allow_fds`: whether the transport can pass fds.
    pub fn new(uid: u32, guid: [u8; 16], allow_fds: bool) -> Sasl {
        Sasl {
            state: State::Nul,
            uid,
            guid,
            allow_fds,
            fds_agreed: false,
            failures: 0,
        }
    }

    /// Whether the client and server agreed (`NEGOTIATE_UNIX_FD`) to pass unix fds.
    pub fn fds_agreed(&self) -> bool {
        self.fds_agreed
    }

    /// Whether `BEGIN` was received and the client is authenticated.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consume complete lines from `input`, appending replies to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Progress, SaslError> {
        let mut used = 0;
        if self.state == State::Nul {
            match input.first() {
                None => {
                    return Ok(Progress {
                        consumed: 0,
                        done: false,
                    })
                }
                Some(0) => {
                    used = 1;
                    self.state = State::Auth;
                }
                Some(_) => return Err(SaslError::NoNulByte),
            }
        }
        while self.state != State::Done {
            let rest = &input[used..];
            let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") else {
                // A '\r' at the end may be the start of the line's CRLF, whose '\n' is in
                // the next read: it does not count against the line.
                let pending = rest.len() - usize::from(rest.ends_with(b"\r"));
                if pending > MAX_LINE {
                    return Err(SaslError::LineTooLong);
                }
                break;
            };
            if nl > MAX_LINE {
                return Err(SaslError::LineTooLong);
            }
            let line = &rest[..nl];
            used += nl + 2;
            self.line(line, out)?;
        }
        Ok(Progress {
            consumed: used,
            done: self.state == State::Done,
        })
    }

    fn fail(&mut self, out: &mut Vec<u8>, reply: &[u8]) -> Result<(), SaslError> {
        self.failures += 1;
        if self.failures > MAX_FAILURES {
            return Err(SaslError::TooManyFailures);
        }
        out.extend_from_slice(reply);
        Ok(())
    }

    fn reject(&mut self, out: &mut Vec<u8>) -> Result<(), SaslError> {
        self.state = State::Auth;
        self.fail(out, b"REJECTED EXTERNAL\r\n")
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), SaslError> {
        let text = std::str::from_utf8(line).unwrap_or("");
        let (cmd, arg) = match text.split_once(' ') {
            Some((c, a)) => (c, Some(a)),
            None => (text, None),
        };
        match (self.state, cmd) {
            (State::Auth, "AUTH") => {
                let mut words = arg.unwrap_or("").split(' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("EXTERNAL"), None, None) => {
                        self.state = State::Data;
                        out.extend_from_slice(b"DATA\r\n");
                        Ok(())
                    }
                    (Some("EXTERNAL"), Some(resp), None) => self.external(resp, out),
                    _ => self.reject(out),
                }
            }
            (State::Data, "DATA") => self.external(arg.unwrap_or(""), out),
            (State::Data | State::Begin, "CANCEL" | "ERROR") => self.reject(out),
            (State::Auth, "CANCEL" | "ERROR") => self.reject(out),
            (State::Begin, "BEGIN") => {
                self.state = State::Done;
                Ok(())
            }
            (State::Begin, "NEGOTIATE_UNIX_FD") => {
                if self.allow_fds {
                    self.fds_agreed = true;
                    out.extend_from_slice(b"AGREE_UNIX_FD\r\n");
                    Ok(())
                } else {
                    self.fail(
                        out,
                        b"ERROR \"fd passing not possible on this transport\"\r\n",
                    )
                }
            }
            (State::Auth, "BEGIN" | "DATA") => self.fail(out, b"ERROR \"authenticate first\"\r\n"),
            _ => self.fail(out, b"ERROR \"unknown command\"\r\n"),
        }
    }

    /// EXTERNAL's response: empty (use the socket's uid) or the hex-encoded decimal uid.
    fn external(&mut self, resp: &str, out: &mut Vec<u8>) -> Result<(), SaslError> {
        let ok = resp.is_empty() || hex_decode(resp).is_some_and(|s| s == self.uid.to_string());
        if !ok {
            return self.reject(out);
        }
        self.state = State::Begin;
        out.extend_from_slice(b"OK ");
        for b in self.guid {
            out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
        out.extend_from_slice(b"\r\n");
        Ok(())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_decode(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &mut Sasl, input: &[u8]) -> (Result<Progress, SaslError>, String) {
        let mut out = Vec::new();
        let r = s.feed(input, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn external_with_uid_and_fds() {
        let mut s = Sasl::new(1000, [0xab; 16], true);
        let (r, out) = run(
            &mut s,
            b"\0AUTH EXTERNAL 31303030\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\nlDATA",
        );
        assert_eq!(
            r,
            Ok(Progress {
                consumed: 51,
                done: true
            })
        );
        assert_eq!(out, format!("OK {}\r\nAGREE_UNIX_FD\r\n", "ab".repeat(16)));
        assert!(s.fds_agreed());
    }

    #[test]
    fn external_without_response_and_split_input() {
        let mut s = Sasl::new(0, [0; 16], false);
        let (r, out) = run(&mut s, b"\0AUTH EXTERN");
        assert_eq!(
            (r, out.as_str()),
            (
                Ok(Progress {
                    consumed: 1,
                    done: false
                }),
                ""
            )
        );
        let (r, out) = run(&mut s, b"AUTH EXTERNAL\r\nDATA\r\n");
        assert!(!r.unwrap().done);
        assert!(out.starts_with("DATA\r\nOK "));
        let (_, out) = run(&mut s, b"NEGOTIATE_UNIX_FD\r\n");
        assert!(out.starts_with("ERROR"));
        assert!(run(&mut s, b"BEGIN\r\n").0.unwrap().done);
    }

    #[test]
    fn wrong_uid_unknown_mechanism_and_garbage() {
        let mut s = Sasl::new(1000, [0; 16], true);
        let (_, out) = run(&mut s, b"\0AUTH EXTERNAL 30\r\n");
        assert_eq!(out, "REJECTED EXTERNAL\r\n");
        let (_, out) = run(&mut s, b"AUTH DBUS_COOKIE_SHA1 x\r\n");
        assert_eq!(out, "REJECTED EXTERNAL\r\n");
        let (_, out) = run(&mut s, b"HELLO\r\n");
        assert!(out.starts_with("ERROR"));
        let mut s = Sasl::new(1, [0; 16], true);
        assert_eq!(run(&mut s, b"AUTH").0, Err(SaslError::NoNulByte));
        let mut s = Sasl::new(1, [0; 16], true);
        assert_eq!(
            run(&mut s, &[&b"\0"[..], &vec![b'x'; MAX_LINE + 2]].concat()).0,
            Err(SaslError::LineTooLong)
        );
        let mut s = Sasl::new(1, [0; 16], true);
        let spam = b"\0"
            .iter()
            .chain(b"FOO\r\n".repeat(20).iter())
            .copied()
            .collect::<Vec<u8>>();
        assert_eq!(run(&mut s, &spam).0, Err(SaslError::TooManyFailures));
    }

    /// A line of the longest length is taken however the reads cut it, even between
    /// its '\r' and its '\n' (found by fuzz/sasl: that cut used to be LineTooLong).
    #[test]
    fn longest_line_split_inside_crlf() {
        let line = [&b"\0AUTH EXTERNAL "[..], &vec![b'3'; MAX_LINE - 14]].concat();
        let mut whole = Sasl::new(1, [0; 16], true);
        let (r, out) = run(&mut whole, &[&line[..], b"\r\n"].concat());
        assert!(r.is_ok());
        let mut split = Sasl::new(1, [0; 16], true);
        let first = [&line[..], b"\r"].concat();
        let p = split.feed(&first, &mut Vec::new()).unwrap();
        let (r2, out2) = run(&mut split, &[&first[p.consumed..], b"\n"].concat());
        assert!(r2.is_ok());
        assert_eq!(out, out2);
        assert_eq!(out, "REJECTED EXTERNAL\r\n");
        // One byte more is too long either way.
        let mut s = Sasl::new(1, [0; 16], true);
        let long = [&line[..], b"3\r"].concat();
        assert_eq!(run(&mut s, &long).0, Err(SaslError::LineTooLong));
    }

    proptest::proptest! {
        #[test]
        fn feed_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let mut s = Sasl::new(0, [0; 16], true);
            let mut out = Vec::new();
            let _ = s.feed(&data, &mut out);
        }
    }
}
