//! D-Bus message headers: framing, validation, and the rewrite a bus does.
//!
//! A message is a 16-byte fixed part, an array of `(code, variant)` header fields,
//! padding to 8, and the body. The broker reads the header of every message (to route
//! it and to check it as the specification requires), never the body; when it forwards
//! a message it writes a fresh header (with the sender it vouches for, and without
//! fields it does not know, as dbus-daemon 1.14 does) in front of the untouched body.

use crate::marshal::{Endian, MarshalError, Reader, Writer};
use crate::names;
use thiserror::Error;

/// Largest message the specification allows.
pub const MAX_MESSAGE_SIZE: usize = 128 * 1024 * 1024;
/// Fixed part of the header.
pub const FIXED_SIZE: usize = 16;

/// Flag bit: the sender expects no reply (method calls).
pub const FLAG_NO_REPLY_EXPECTED: u8 = 0x1;
/// Flag bit: the bus must not start a service to receive this message.
pub const FLAG_NO_AUTO_START: u8 = 0x2;
/// Flag bit: the caller is prepared to wait for interactive authorization.
pub const FLAG_ALLOW_INTERACTIVE_AUTHORIZATION: u8 = 0x4;

/// Codes of the header fields, as they appear in the header's field array.
pub mod field {
    /// `PATH` (object path, `o`): the object a call is to or a signal is from.
    pub const PATH: u8 = 1;
    /// `INTERFACE` (string, `s`): the interface of the member.
    pub const INTERFACE: u8 = 2;
    /// `MEMBER` (string, `s`): the method or signal name.
    pub const MEMBER: u8 = 3;
    /// `ERROR_NAME` (string, `s`): the name of the error an error reply carries.
    pub const ERROR_NAME: u8 = 4;
    /// `REPLY_SERIAL` (`u`): the serial of the message this one replies to.
    pub const REPLY_SERIAL: u8 = 5;
    /// `DESTINATION` (string, `s`): the bus name the message is addressed to.
    pub const DESTINATION: u8 = 6;
    /// `SENDER` (string, `s`): the unique name of the sender, set by the bus.
    pub const SENDER: u8 = 7;
    /// `SIGNATURE` (signature, `g`): the type signature of the body.
    pub const SIGNATURE: u8 = 8;
    /// `UNIX_FDS` (`u`): how many unix fds accompany the message.
    pub const UNIX_FDS: u8 = 9;
}

/// The message type, the second byte of the fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// A method call (type 1).
    MethodCall = 1,
    /// A method's reply (type 2).
    MethodReturn = 2,
    /// An error reply (type 3).
    Error = 3,
    /// A signal (type 4).
    Signal = 4,
}

impl MessageType {
    /// The type's name as match rules write it (`method_call`, `signal`, ...).
    pub fn name(self) -> &'static str {
        match self {
            MessageType::MethodCall => "method_call",
            MessageType::MethodReturn => "method_return",
            MessageType::Error => "error",
            MessageType::Signal => "signal",
        }
    }
}

/// Why a message header was refused by [`parse`] or [`message_len`].
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum HeaderError {
    /// The first byte is neither `l` nor `B`.
    #[error("bad byte-order mark")]
    Endianness,
    /// The protocol version byte is not 1.
    #[error("unsupported protocol version")]
    Version,
    /// The message type byte is 0 (invalid).
    #[error("message type 0")]
    Type,
    /// A type this bus does not know: the specification says to ignore the message.
    #[error("unknown message type")]
    UnknownType,
    /// The serial is 0.
    #[error("serial 0")]
    Serial,
    /// The whole message (or its field array) is longer than the specification allows.
    #[error("message larger than 128 MiB")]
    TooLarge,
    /// A known header field (its code given) has the wrong type or an invalid value.
    #[error("header field {0} has the wrong type or an invalid value")]
    Field(u8),
    /// A header field (its code given) appears more than once.
    #[error("header field {0} appears twice")]
    Duplicate(u8),
    /// A header field (its code given) that this message type requires is absent, or a body
    /// comes without a non-empty signature.
    #[error("required header field {0} missing")]
    Missing(u8),
    /// The header could not be demarshalled.
    #[error("malformed header: {0}")]
    Marshal(#[from] MarshalError),
}

/// A parsed, validated header, borrowing from the message buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    /// Byte order of the message.
    pub endian: Endian,
    /// Message type.
    pub msg_type: MessageType,
    /// Flag bits (`FLAG_*`).
    pub flags: u8,
    /// Length of the body in bytes.
    pub body_len: u32,
    /// The sender's serial for this message (never 0).
    pub serial: u32,
    /// The `PATH` field.
    pub path: Option<&'a str>,
    /// The `INTERFACE` field.
    pub interface: Option<&'a str>,
    /// The `MEMBER` field.
    pub member: Option<&'a str>,
    /// The `ERROR_NAME` field.
    pub error_name: Option<&'a str>,
    /// The `REPLY_SERIAL` field.
    pub reply_serial: Option<u32>,
    /// The `DESTINATION` field.
    pub destination: Option<&'a str>,
    /// The `SENDER` field, as the message carried it.
    pub sender: Option<&'a str>,
    /// The `SIGNATURE` field; empty if absent.
    pub signature: &'a str,
    /// The `UNIX_FDS` field; 0 if absent.
    pub unix_fds: u32,
    /// Header length including the padding before the body.
    pub header_len: usize,
}

impl Header<'_> {
    /// Length of the whole message: header, padding and body.
    pub fn total_len(&self) -> usize {
        self.header_len + self.body_len as usize
    }
    /// Whether the [`FLAG_NO_REPLY_EXPECTED`] flag is set.
    pub fn no_reply_expected(&self) -> bool {
        self.flags & FLAG_NO_REPLY_EXPECTED != 0
    }
}

/// From the first 16 bytes of a stream, how long the whole message is. `Ok(None)` if
/// fewer than 16 bytes are there yet.
pub fn message_len(fixed: &[u8]) -> Result<Option<usize>, HeaderError> {
    if fixed.len() < FIXED_SIZE {
        return Ok(None);
    }
    let endian = Endian::from_byte(fixed[0]).ok_or(HeaderError::Endianness)?;
    let mut r = Reader::at(&fixed[..FIXED_SIZE], 4, endian);
    let body = r.u32()? as usize;
    let _serial = r.u32()?;
    let fields = r.u32()? as usize;
    let header = (FIXED_SIZE + fields).div_ceil(8) * 8;
    let total = header.checked_add(body).ok_or(HeaderError::TooLarge)?;
    if fields > crate::marshal::MAX_ARRAY_LEN as usize || total > MAX_MESSAGE_SIZE {
        return Err(HeaderError::TooLarge);
    }
    Ok(Some(total))
}

/// Parse and validate the header at the start of `msg` (which holds at least the whole
/// header; the body may follow).
pub fn parse<'a>(msg: &'a [u8]) -> Result<Header<'a>, HeaderError> {
    parse_with(msg, false)
}

/// Parse a header this process has validated already (with [`parse`], then written
/// with [`write()`]): the framing, the field types and UTF-8 are still checked, the
/// grammar of names, paths and signatures is not. The bus reads each message it
/// forwards once more per receiver; skipping what cannot have changed halves that.
/// On bytes nobody validated it is still memory-safe, but may pass a bad name.
pub fn parse_validated<'a>(msg: &'a [u8]) -> Result<Header<'a>, HeaderError> {
    parse_with(msg, true)
}

fn parse_with<'a>(msg: &'a [u8], validated: bool) -> Result<Header<'a>, HeaderError> {
    let endian = Endian::from_byte(*msg.first().ok_or(MarshalError::Truncated)?)
        .ok_or(HeaderError::Endianness)?;
    let mut r = Reader::at(msg, 1, endian);
    let t = r.u8()?;
    let flags = r.u8()?;
    if r.u8()? != 1 {
        return Err(HeaderError::Version);
    }
    let body_len = r.u32()?;
    let serial = r.u32()?;
    let msg_type = match t {
        0 => return Err(HeaderError::Type),
        1 => MessageType::MethodCall,
        2 => MessageType::MethodReturn,
        3 => MessageType::Error,
        4 => MessageType::Signal,
        _ => return Err(HeaderError::UnknownType),
    };
    if serial == 0 {
        return Err(HeaderError::Serial);
    }
    let mut h = Header {
        endian,
        msg_type,
        flags,
        body_len,
        serial,
        path: None,
        interface: None,
        member: None,
        error_name: None,
        reply_serial: None,
        destination: None,
        sender: None,
        signature: "",
        unix_fds: 0,
        header_len: 0,
    };
    let end = r.array_begin(8)?;
    let mut seen = 0u32;
    while r.pos() < end {
        r.align(8)?;
        let code = r.u8()?;
        let sig = match validated {
            true => r.signature_text()?,
            false => r.signature()?,
        };
        if (1..=9).contains(&code) {
            if seen & (1 << code) != 0 {
                return Err(HeaderError::Duplicate(code));
            }
            seen |= 1 << code;
        }
        let bad = HeaderError::Field(code);
        let string = |r: &mut Reader<'a>, want: &str| field_string(r, sig, want, bad, validated);
        match code {
            field::PATH => {
                let p = string(&mut r, "o")?;
                if p == "/org/freedesktop/DBus/Local" {
                    return Err(bad);
                }
                h.path = Some(p);
            }
            field::INTERFACE => {
                let s = string(&mut r, "s")?;
                if !(validated || names::is_interface(s)) || s == "org.freedesktop.DBus.Local" {
                    return Err(bad);
                }
                h.interface = Some(s);
            }
            field::MEMBER => {
                let s = string(&mut r, "s")?;
                if !(validated || names::is_member(s)) {
                    return Err(bad);
                }
                h.member = Some(s);
            }
            field::ERROR_NAME => {
                let s = string(&mut r, "s")?;
                if !(validated || names::is_error_name(s)) {
                    return Err(bad);
                }
                h.error_name = Some(s);
            }
            field::DESTINATION | field::SENDER => {
                let s = string(&mut r, "s")?;
                if !(validated || names::is_bus_name(s)) {
                    return Err(bad);
                }
                if code == field::DESTINATION {
                    h.destination = Some(s);
                } else {
                    h.sender = Some(s);
                }
            }
            field::SIGNATURE => {
                h.signature = string(&mut r, "g")?;
            }
            field::REPLY_SERIAL | field::UNIX_FDS => {
                if sig != "u" {
                    return Err(bad);
                }
                let v = r.u32()?;
                if code == field::REPLY_SERIAL {
                    if v == 0 {
                        return Err(bad);
                    }
                    h.reply_serial = Some(v);
                } else {
                    h.unix_fds = v;
                }
            }
            _ => {
                // Unknown fields are skipped here and dropped when forwarding.
                let left = r.skip(sig.as_bytes(), 0)?;
                if !left.is_empty() {
                    return Err(bad);
                }
            }
        }
    }
    if r.pos() != end {
        return Err(MarshalError::BadArray.into());
    }
    r.align(8)?;
    h.header_len = r.pos();
    if h.total_len() > MAX_MESSAGE_SIZE {
        return Err(HeaderError::TooLarge);
    }
    // An empty SIGNATURE field says what an absent one does: the body is empty (the
    // bus's rewrite drops an empty one, so it must not carry a body either).
    if body_len > 0 && h.signature.is_empty() {
        return Err(HeaderError::Missing(field::SIGNATURE));
    }
    let need: &[u8] = match msg_type {
        MessageType::MethodCall => &[field::PATH, field::MEMBER],
        MessageType::Signal => &[field::PATH, field::INTERFACE, field::MEMBER],
        MessageType::Error => &[field::ERROR_NAME, field::REPLY_SERIAL],
        MessageType::MethodReturn => &[field::REPLY_SERIAL],
    };
    if let Some(&f) = need.iter().find(|&&f| seen & (1 << f) == 0) {
        return Err(HeaderError::Missing(f));
    }
    Ok(h)
}

/// A string-like header field value of the expected type `want` (its grammar
/// unchecked if `validated` before).
fn field_string<'a>(
    r: &mut Reader<'a>,
    sig: &str,
    want: &str,
    bad: HeaderError,
    validated: bool,
) -> Result<&'a str, HeaderError> {
    if sig != want {
        return Err(bad);
    }
    Ok(match (want, validated) {
        ("o", false) => r.object_path().map_err(|_| bad)?,
        ("g", false) => r.signature().map_err(|_| bad)?,
        ("g", true) => r.signature_text().map_err(|_| bad)?,
        _ => r.string()?,
    })
}

/// Write a header for `h` (its fields, with `sender` replacing the original one), in
/// `h`'s byte order, ready to be followed by the body. Unknown fields are not copied.
pub fn write(out: &mut Vec<u8>, h: &Header<'_>, sender: Option<&str>) {
    write_fields(
        out,
        h.endian,
        h.msg_type,
        h.flags,
        h.body_len,
        h.serial,
        &Fields {
            path: h.path,
            interface: h.interface,
            member: h.member,
            error_name: h.error_name,
            reply_serial: h.reply_serial,
            destination: h.destination,
            sender: sender.or(h.sender),
            signature: h.signature,
            unix_fds: h.unix_fds,
        },
    );
}

/// Header fields of a message to write.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fields<'a> {
    /// The `PATH` field.
    pub path: Option<&'a str>,
    /// The `INTERFACE` field.
    pub interface: Option<&'a str>,
    /// The `MEMBER` field.
    pub member: Option<&'a str>,
    /// The `ERROR_NAME` field.
    pub error_name: Option<&'a str>,
    /// The `REPLY_SERIAL` field.
    pub reply_serial: Option<u32>,
    /// The `DESTINATION` field.
    pub destination: Option<&'a str>,
    /// The `SENDER` field.
    pub sender: Option<&'a str>,
    /// The `SIGNATURE` field; left out when empty.
    pub signature: &'a str,
    /// The `UNIX_FDS` field; left out when 0.
    pub unix_fds: u32,
}

/// Write a header from parts.
pub fn write_fields(
    out: &mut Vec<u8>,
    endian: Endian,
    t: MessageType,
    flags: u8,
    body_len: u32,
    serial: u32,
    f: &Fields<'_>,
) {
    let mut w = Writer::new(out, endian);
    w.u8(endian.byte());
    w.u8(t as u8);
    w.u8(flags);
    w.u8(1);
    w.u32(body_len);
    w.u32(serial);
    let arr = w.array_begin(8);
    let field_str = |w: &mut Writer<'_>, code: u8, t: u8, v: Option<&str>| {
        if let Some(v) = v {
            w.align(8);
            w.u8(code);
            w.variant_str(t, v);
        }
    };
    field_str(&mut w, field::PATH, b'o', f.path);
    field_str(&mut w, field::INTERFACE, b's', f.interface);
    field_str(&mut w, field::MEMBER, b's', f.member);
    field_str(&mut w, field::ERROR_NAME, b's', f.error_name);
    if let Some(rs) = f.reply_serial {
        w.align(8);
        w.u8(field::REPLY_SERIAL);
        w.variant_u32(rs);
    }
    field_str(&mut w, field::DESTINATION, b's', f.destination);
    field_str(&mut w, field::SENDER, b's', f.sender);
    if !f.signature.is_empty() {
        field_str(&mut w, field::SIGNATURE, b'g', Some(f.signature));
    }
    if f.unix_fds > 0 {
        w.align(8);
        w.u8(field::UNIX_FDS);
        w.variant_u32(f.unix_fds);
    }
    w.array_end(arr);
    w.align(8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(endian: Endian) -> Vec<u8> {
        let mut out = Vec::new();
        let f = Fields {
            path: Some("/org/x"),
            interface: Some("org.x.I"),
            member: Some("Ping"),
            destination: Some("org.x"),
            signature: "s",
            ..Default::default()
        };
        write_fields(&mut out, endian, MessageType::MethodCall, 0, 8, 7, &f);
        out.extend_from_slice(&[3, 0, 0, 0, b'a', b'b', b'c', 0]);
        out
    }

    #[test]
    fn roundtrip_both_endians() {
        for e in [Endian::Little, Endian::Big] {
            let m = call(e);
            let h = parse(&m).unwrap();
            assert_eq!(
                (h.path, h.member, h.destination, h.signature),
                (Some("/org/x"), Some("Ping"), Some("org.x"), "s")
            );
            assert_eq!(message_len(&m[..16]).unwrap(), Some(m.len()));
            assert_eq!(h.total_len(), m.len());
            let mut again = Vec::new();
            write(&mut again, &h, Some(":1.5"));
            let h2 = parse(&again).unwrap();
            assert_eq!(h2.sender, Some(":1.5"));
            assert_eq!(h2.member, Some("Ping"));
        }
    }

    #[test]
    fn required_fields_and_bad_values() {
        let mut out = Vec::new();
        write_fields(
            &mut out,
            Endian::Little,
            MessageType::Signal,
            0,
            0,
            1,
            &Fields {
                path: Some("/a"),
                member: Some("M"),
                ..Default::default()
            },
        );
        assert_eq!(parse(&out), Err(HeaderError::Missing(field::INTERFACE)));
        let mut out = Vec::new();
        write_fields(
            &mut out,
            Endian::Little,
            MessageType::MethodCall,
            0,
            0,
            0,
            &Fields {
                path: Some("/a"),
                member: Some("M"),
                ..Default::default()
            },
        );
        assert_eq!(parse(&out), Err(HeaderError::Serial));
        let mut out = Vec::new();
        write_fields(
            &mut out,
            Endian::Little,
            MessageType::MethodCall,
            0,
            0,
            1,
            &Fields {
                path: Some("/a"),
                member: Some("M.x"),
                ..Default::default()
            },
        );
        assert_eq!(parse(&out), Err(HeaderError::Field(field::MEMBER)));
        let mut out = Vec::new();
        write_fields(
            &mut out,
            Endian::Little,
            MessageType::MethodCall,
            0,
            4,
            1,
            &Fields {
                path: Some("/a"),
                member: Some("M"),
                ..Default::default()
            },
        );
        assert_eq!(parse(&out), Err(HeaderError::Missing(field::SIGNATURE)));
    }

    /// A body with an empty SIGNATURE field is as invalid as one without (found by
    /// fuzz/dbus_message: the rewrite dropped the empty field and the bus's own parser
    /// refused the message it forwarded).
    #[test]
    fn a_body_needs_a_non_empty_signature() {
        let mut out = Vec::new();
        write_fields(
            &mut out,
            Endian::Little,
            MessageType::MethodReturn,
            0,
            8,
            1,
            &Fields {
                reply_serial: Some(2),
                ..Default::default()
            },
        );
        // Append an empty SIGNATURE field (write_fields leaves an empty one out).
        let fields_len = u32::from_le_bytes(out[12..16].try_into().unwrap()) as usize;
        out.truncate(16 + fields_len);
        out.resize(16 + fields_len.div_ceil(8) * 8, 0);
        out.extend_from_slice(&[field::SIGNATURE, 1, b'g', 0, 0, 0]);
        let fields_len = (out.len() - 16) as u32;
        out[12..16].copy_from_slice(&fields_len.to_le_bytes());
        out.resize(out.len().div_ceil(8) * 8, 0);
        assert_eq!(parse(&out), Err(HeaderError::Missing(field::SIGNATURE)));
        // Without a body it is fine.
        out[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert!(parse(&out).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse(&data);
            let _ = message_len(&data);
        }

        #[test]
        fn parse_never_panics_on_mutated_messages(pos in 0usize..64, byte in proptest::num::u8::ANY) {
            let mut m = call(Endian::Little);
            let i = pos % m.len();
            m[i] = byte;
            let _ = parse(&m);
        }

        /// What `parse` accepts, `parse_validated` reads the same, also once the bus
        /// has written it again with a sender; it never panics on anything else.
        #[test]
        fn parse_validated_agrees_with_parse(
            pos in 0usize..64,
            byte in proptest::num::u8::ANY,
            big in proptest::bool::ANY,
        ) {
            let mut m = call(if big { Endian::Big } else { Endian::Little });
            let i = pos % m.len();
            m[i] = byte;
            let checked = parse(&m);
            let quick = parse_validated(&m);
            if let Ok(h) = checked {
                proptest::prop_assert_eq!(quick, Ok(h.clone()));
                let mut again = Vec::new();
                write(&mut again, &h, Some(":1.7"));
                proptest::prop_assert_eq!(parse_validated(&again), parse(&again));
            }
        }
    }
}
