//! Framing of commands and events on the `SOCK_SEQPACKET` transport.
//!
//! kdbus issued one ioctl per command and the kernel answered in the same call. Here a
//! client writes datagrams made of one or more *requests*, and the broker answers with
//! datagrams made of one or more *records*. Batching both ways is what keeps a message
//! at about one syscall per side: a client can put "I took message X", "free slice Y"
//! and "send Z" in one datagram, and the broker coalesces every record it has for a
//! connection during one loop iteration into one datagram.
//!
//! ```text
//! request  = ReqHeader body[body_len] pad-to-8
//! record   = RecHeader body[body_len] pad-to-8
//! ```
//! A request body is the kdbus command structure, followed by whatever the command
//! points to: kdbus's user-space addresses (`msg_address`, `kdbus_vec.address`) become
//! byte offsets into the request body. Records of kind [`REC_REPLY`] answer a request
//! (by `req_id`) with the command structure as the kernel would have written it back;
//! records of kind [`REC_MSG`] announce a message the broker queued into the pool.

use crate::structs::read_struct;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Request flag: do not answer this request. A SEND that fails is reported with a
/// [`REC_SEND_FAILED`] record carrying the request's id (clients put the message's
/// cookie there); other requests' failures are logged, not sent.
pub const REQ_NO_REPLY: u32 = 1 << 0;

/// Record kind: the answer to a request.
pub const REC_REPLY: u16 = 1;
/// Record kind: a message was queued (body: [`MsgEvent`]).
pub const REC_MSG: u16 = 2;
/// Record kind: a message announced earlier left the queue without being received
/// (it moved to another connection with a name); body: its `u64` offset.
pub const REC_RETRACT: u16 = 3;
/// Record kind: the connection lost messages for lack of room (broadcasts, bus
/// notifications); body: the `u64` running total. Sent once per flush when it changed,
/// so the client learns of a loss even if no message follows.
pub const REC_DROPPED: u16 = 4;

/// Record kind: a SEND sent with [`REQ_NO_REPLY`] failed; `req_id` is the request's
/// id, `error` the errno, no body. Success is not reported: a message that needs no
/// answer costs no datagram back.
pub const REC_SEND_FAILED: u16 = 5;

/// Largest datagram the broker accepts: a full command, a message with the largest
/// inline payload kdbus allows, and slack for framing.
pub const MAX_REQUEST_DATAGRAM: usize = 2 * 1024 * 1024 + 64 * 1024;

/// Header of a request a client sends to the broker.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct ReqHeader {
    /// The command: kdbus's ioctl number (see [`crate::cmd`]).
    pub cmd: u32,
    /// Request flags, e.g. [`REQ_NO_REPLY`].
    pub flags: u32,
    /// Id the client chose for this request, repeated in the answer.
    pub req_id: u64,
    /// Length of the body in bytes, padding excluded.
    pub body_len: u64,
}

/// Header of a record the broker sends to a client.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct RecHeader {
    /// The kind of record (`REC_*`).
    pub kind: u16,
    /// How many of the datagram's `SCM_RIGHTS` fds belong to this record (records take
    /// them in order).
    pub n_fds: u16,
    /// Positive errno, 0 on success.
    pub error: i32,
    /// Id of the request the record is about (for REC_REPLY and REC_SEND_FAILED).
    pub req_id: u64,
    /// Length of the body in bytes, padding excluded.
    pub body_len: u64,
}

/// A message now queued for the receiver, at `offset` in its pool.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct MsgEvent {
    /// Offset of the message in the receiver's pool, in bytes.
    pub offset: u64,
    /// Size of the message in bytes, header and items.
    pub msg_size: u64,
    /// Priority of the message; lower values are more urgent.
    pub priority: i64,
    /// Domain-wide sequence number of the message.
    pub seq: u64,
    /// Messages lost for this connection so far (broadcasts skipped for lack of space).
    pub dropped_msgs: u64,
}

/// Size of a [`ReqHeader`] in bytes.
pub const REQ_HEADER_SIZE: usize = std::mem::size_of::<ReqHeader>();
/// Size of a [`RecHeader`] in bytes.
pub const REC_HEADER_SIZE: usize = std::mem::size_of::<RecHeader>();

/// Split a datagram into `(header, body)` frames. Generic over the header type so the
/// same walk serves requests and records.
pub struct Frames<'a, H> {
    buf: &'a [u8],
    _h: std::marker::PhantomData<H>,
}

/// A frame header that says how long its body is.
pub trait FrameHeader: FromBytes + Copy {
    /// Length of the frame's body in bytes, padding excluded.
    fn body_len(&self) -> u64;
}
impl FrameHeader for ReqHeader {
    fn body_len(&self) -> u64 {
        self.body_len
    }
}
impl FrameHeader for RecHeader {
    fn body_len(&self) -> u64 {
        self.body_len
    }
}

impl<'a, H: FrameHeader> Frames<'a, H> {
    /// Walk the frames of the datagram `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Frames {
            buf,
            _h: std::marker::PhantomData,
        }
    }
}

impl<'a, H: FrameHeader> Iterator for Frames<'a, H> {
    /// `Err(header)` on a truncated frame (`None` if even the header is cut);
    /// iteration stops after it.
    type Item = Result<(H, &'a [u8]), Option<H>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let hsize = std::mem::size_of::<H>();
        let Some(h) = read_struct::<H>(self.buf) else {
            self.buf = &[];
            return Some(Err(None));
        };
        let rest = &self.buf[hsize..];
        let len = h.body_len();
        if len > rest.len() as u64 {
            self.buf = &[];
            return Some(Err(Some(h)));
        }
        let len = len as usize;
        let body = &rest[..len];
        let skip = crate::align8_usize(len).min(rest.len());
        self.buf = &rest[skip..];
        Some(Ok((h, body)))
    }
}

/// A record, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// The answer to request `req_id`: positive errno (0: success) and the write-back.
    Reply {
        /// Id of the request answered.
        req_id: u64,
        /// Positive errno, 0 on success.
        error: i32,
        /// The command structure as the broker wrote it back.
        body: &'a [u8],
    },
    /// A message queued in the pool.
    Msg(MsgEvent),
    /// The message announced at this offset left the queue unreceived.
    Retract(u64),
    /// The running total of lost messages.
    Dropped(u64),
    /// A SEND that asked for no answer failed (request id, positive errno).
    SendFailed {
        /// Id of the failed request (clients use the message's cookie).
        req_id: u64,
        /// Positive errno the SEND failed with.
        error: i32,
    },
    /// A kind this side does not know (or a body too short for its kind): skipped.
    Unknown,
}

/// The records of a datagram, each with the number of the datagram's fds that are its
/// own (records take them in order). Stops at a truncated frame.
pub fn records(data: &[u8]) -> impl Iterator<Item = (Record<'_>, usize)> {
    Frames::<RecHeader>::new(data)
        .map_while(Result::ok)
        .map(|(h, body)| {
            let r = match h.kind {
                REC_REPLY => Record::Reply {
                    req_id: h.req_id,
                    error: h.error,
                    body,
                },
                REC_MSG => read_struct(body).map_or(Record::Unknown, Record::Msg),
                REC_RETRACT => read_struct(body).map_or(Record::Unknown, Record::Retract),
                REC_DROPPED => read_struct(body).map_or(Record::Unknown, Record::Dropped),
                REC_SEND_FAILED => Record::SendFailed {
                    req_id: h.req_id,
                    error: h.error,
                },
                _ => Record::Unknown,
            };
            (r, h.n_fds as usize)
        })
}

/// Append a request that wants no answer (a claim, a free) to `out`: clients collect
/// these and send them in front of their next request.
pub fn push_notice(out: &mut Vec<u8>, cmd: u32, body: &[u8]) {
    let h = ReqHeader {
        cmd,
        flags: REQ_NO_REPLY,
        req_id: 0,
        body_len: body.len() as u64,
    };
    push_frame(out, &h, &[body]);
}

/// Append a frame (header + body + padding) to `out`.
pub fn push_frame<H: IntoBytes + Immutable>(out: &mut Vec<u8>, header: &H, body_parts: &[&[u8]]) {
    out.extend_from_slice(header.as_bytes());
    for p in body_parts {
        out.extend_from_slice(p);
    }
    let padded = crate::align8_usize(out.len());
    out.resize(padded, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip() {
        let mut out = Vec::new();
        push_frame(
            &mut out,
            &ReqHeader {
                cmd: 1,
                flags: 0,
                req_id: 5,
                body_len: 3,
            },
            &[b"abc"],
        );
        push_frame(
            &mut out,
            &ReqHeader {
                cmd: 2,
                flags: 0,
                req_id: 6,
                body_len: 0,
            },
            &[],
        );
        let v: Vec<_> = Frames::<ReqHeader>::new(&out).collect();
        assert_eq!(v.len(), 2);
        let (h, b) = v[0].unwrap();
        assert_eq!((h.cmd, h.req_id, b), (1, 5, &b"abc"[..]));
        assert_eq!(v[1].unwrap().0.cmd, 2);
    }

    #[test]
    fn truncated_frame() {
        let mut out = Vec::new();
        push_frame(
            &mut out,
            &ReqHeader {
                cmd: 1,
                flags: 0,
                req_id: 5,
                body_len: 64,
            },
            &[b"abc"],
        );
        let v: Vec<_> = Frames::<ReqHeader>::new(&out).collect();
        assert!(matches!(v[..], [Err(Some(ReqHeader { req_id: 5, .. }))]));
    }
}
