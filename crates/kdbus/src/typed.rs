//! Typed D-Bus bodies: calls, replies and signals whose bodies are Rust values,
//! marshalled by `zvariant` (serde) instead of built by hand.
//!
//! On a kdbus bus a D-Bus message travels whole as the payload of a kdbus message of
//! payload type `DBusDBus` (`docs/abi.md`): header and body, the kdbus cookie equal to
//! the D-Bus serial so that the reply (`cookie_reply`, `REPLY_SERIAL`) finds its call.
//! That is what D-Bus peers on the bus's D-Bus socket send and receive, so a native
//! client that speaks this way talks to them and to other native clients alike.
//!
//! The kdbus cookie of a typed call is its D-Bus serial, counted per connection from 1:
//! on a connection that also makes untyped calls, give those cookies that cannot
//! collide (replies are matched by cookie).
//!
//! A body type is any `Serialize + Type` value: a tuple for several arguments (the
//! body's signature is the tuple's without its parentheses, as the protocol has it),
//! `()` for none. Received bodies are checked against the type asked for: a body whose
//! signature differs is an [`Error::Body`], never a misread value.

use crate::{Connection, Error, Message, Received, Result};
use kdbus_dbus::header::{self, Fields, MessageType};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use zvariant::serialized::{Context, Data};
use zvariant::Type;

/// Where a D-Bus method call goes: the header fields besides the destination.
#[derive(Clone, Copy, Debug)]
pub struct DBusMethod<'a> {
    /// The object path (`/org/example/Thing`).
    pub path: &'a str,
    /// The interface, if the call names one.
    pub interface: Option<&'a str>,
    /// The method.
    pub member: &'a str,
}

fn body_error(e: impl std::fmt::Display) -> Error {
    Error::Body(e.to_string())
}

/// The body bytes (little-endian) and signature of `body`.
fn marshal<B: Serialize + Type>(body: &B) -> Result<(Vec<u8>, String)> {
    let data = zvariant::to_bytes(Context::new_dbus(zvariant::LE, 0), body).map_err(body_error)?;
    Ok((data.bytes().to_vec(), B::SIGNATURE.to_string_no_parens()))
}

/// A whole D-Bus message: the header for `t` with `fields`, then `body`.
fn message(t: MessageType, serial: u32, fields: &Fields<'_>, body: &[u8], flags: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    header::write_fields(
        &mut out,
        kdbus_dbus::marshal::Endian::Little,
        t,
        flags,
        body.len() as u32,
        serial,
        fields,
    );
    out.extend_from_slice(body);
    out
}

impl Received<'_> {
    /// Run `f` on the D-Bus message this kdbus message carries: in place in the pool
    /// when it is one payload vector (what every sender writes), else joined.
    fn with_dbus<T>(&self, f: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
        if self.header().payload_type != kdbus_abi::payload::DBUS {
            return Err(Error::Body("not a D-Bus message".into()));
        }
        let mut parts = self.payloads();
        match (parts.next(), parts.next()) {
            (Some(only), None) => f(only),
            _ => f(&self.payload_bytes()),
        }
    }

    /// The D-Bus member (method or signal name) of the message, if it has one.
    pub fn dbus_member(&self) -> Result<Option<String>> {
        self.with_dbus(|bytes| {
            let h = header::parse(bytes).map_err(body_error)?;
            Ok(h.member.map(str::to_string))
        })
    }

    /// The message's D-Bus body as a `T`, checked against `T`'s signature (a tuple
    /// for several arguments).
    pub fn dbus_body<T: DeserializeOwned + Type>(&self) -> Result<T> {
        self.with_dbus(|bytes| {
            let h = header::parse(bytes).map_err(body_error)?;
            let want = T::SIGNATURE.to_string_no_parens();
            if h.signature != want {
                return Err(Error::Body(format!(
                    "the body is '{}', not '{want}'",
                    h.signature
                )));
            }
            let body = bytes
                .get(h.header_len..h.total_len())
                .ok_or_else(|| Error::Body("a body shorter than its header says".into()))?;
            let endian = match h.endian {
                kdbus_dbus::marshal::Endian::Little => zvariant::LE,
                kdbus_dbus::marshal::Endian::Big => zvariant::BE,
            };
            let data = Data::new(body, Context::new_dbus(endian, 0));
            let (value, _) = data.deserialize::<T>().map_err(body_error)?;
            Ok(value)
        })
    }

    /// The D-Bus serial of the message (what a reply names).
    pub fn dbus_serial(&self) -> Result<u32> {
        self.with_dbus(|bytes| Ok(header::parse(bytes).map_err(body_error)?.serial))
    }
}

impl Connection {
    /// Call a D-Bus method of `destination` (a well-known name, or a unique name
    /// `:1.N`) with `body` and wait up to `timeout` for the reply's body, as an `R`.
    /// An error reply comes back as [`Error::Body`] with the error's name.
    pub fn dbus_call<B, R>(
        &self,
        destination: &str,
        method: DBusMethod<'_>,
        body: &B,
        timeout: Duration,
    ) -> Result<R>
    where
        B: Serialize + Type,
        R: DeserializeOwned + Type,
    {
        let (body, signature) = marshal(body)?;
        let serial = self.next_dbus_serial();
        let fields = Fields {
            path: Some(method.path),
            interface: method.interface,
            member: Some(method.member),
            destination: Some(destination),
            signature: &signature,
            ..Default::default()
        };
        let bytes = message(MessageType::MethodCall, serial, &fields, &body, 0);
        let to = match unique_id(destination) {
            Some(id) => Message::to(id),
            None => Message::to_name(destination),
        };
        let reply = self.call(to.cookie(u64::from(serial)).payload(&bytes), timeout)?;
        let error_name = reply.with_dbus(|b| {
            let h = header::parse(b).map_err(body_error)?;
            Ok((h.msg_type == MessageType::Error)
                .then(|| h.error_name.unwrap_or("error").to_string()))
        })?;
        if let Some(name) = error_name {
            let text = reply
                .dbus_body::<(String,)>()
                .map(|t| t.0)
                .unwrap_or_default();
            return Err(Error::Body(format!("{name}: {text}")));
        }
        reply.dbus_body()
    }

    /// Answer the D-Bus call `call` with `body` (posted: the reply waits for nothing).
    pub fn dbus_reply<B: Serialize + Type>(&self, call: &Received<'_>, body: &B) -> Result<()> {
        let (body, signature) = marshal(body)?;
        let call_serial = call.dbus_serial()?;
        let serial = self.next_dbus_serial();
        let fields = Fields {
            reply_serial: Some(call_serial),
            signature: &signature,
            ..Default::default()
        };
        let bytes = message(
            MessageType::MethodReturn,
            serial,
            &fields,
            &body,
            header::FLAG_NO_REPLY_EXPECTED,
        );
        self.post(
            &Message::to(call.src_id())
                .reply_to(call.cookie())
                .cookie(u64::from(serial))
                .payload(&bytes),
        )
    }
}

/// The id of a unique name `:1.N`.
fn unique_id(name: &str) -> Option<u64> {
    name.strip_prefix(":1.")?.parse().ok()
}
