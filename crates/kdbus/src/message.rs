//! Building messages to send.
//!
//! A [`Message`] only borrows: the payload stays in the caller's buffers until the
//! connection hands it to `sendmsg` by reference, so a message is copied once, by the
//! kernel, on its way to the broker. What the message needs encoded (the SEND command,
//! the message header, its items) is small and written into a buffer the connection
//! keeps; the payload vectors address their bytes by offset behind it, so the encoder
//! also decides where each payload lands, and [`payload_padding`] is the one rule the
//! sender follows to put it there.

use crate::bloom::Bloom;
use kdbus_abi::{msg_flags, payload, Msg};
use std::os::fd::BorrowedFd;

/// How many payload vectors a message holds without allocating.
const INLINE_PAYLOADS: usize = 4;

/// The payload vectors of a [`Message`]: a list of borrowed slices that keeps the
/// first few inline, so building an ordinary message allocates nothing. Dereferences
/// to `[&[u8]]`.
#[derive(Clone, Default)]
pub struct Payloads<'a> {
    inline: [&'a [u8]; INLINE_PAYLOADS],
    len: usize,
    /// All of them, once there are more than fit inline.
    spilled: Vec<&'a [u8]>,
}

impl<'a> Payloads<'a> {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a slice; it stays borrowed, not copied.
    pub fn push(&mut self, data: &'a [u8]) {
        if self.spilled.is_empty() && self.len < INLINE_PAYLOADS {
            self.inline[self.len] = data;
            self.len += 1;
            return;
        }
        if self.spilled.is_empty() {
            self.spilled.extend_from_slice(&self.inline[..self.len]);
        }
        self.spilled.push(data);
    }
}

impl<'a> std::ops::Deref for Payloads<'a> {
    type Target = [&'a [u8]];
    fn deref(&self) -> &[&'a [u8]] {
        if self.spilled.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }
}

impl std::fmt::Debug for Payloads<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Zero bytes a payload vector of `len` bytes is followed by in a SEND request, so the
/// next one starts 8-aligned (as the offsets the encoder writes say).
pub fn payload_padding(len: usize) -> usize {
    kdbus_abi::align8_usize(len) - len
}

/// A message to send. It borrows its payload, fds and bloom filter from the caller;
/// start with [`Message::to`], [`Message::to_name`] or [`Message::broadcast`] and
/// add to it with the builder methods.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    /// Destination: a unique connection id, `kdbus_abi::DST_ID_NAME` (with `dst_name`) or
    /// `kdbus_abi::DST_ID_BROADCAST`.
    pub dst_id: u64,
    /// The well-known name the message goes to when `dst_id` is `DST_ID_NAME`; `None`
    /// otherwise.
    pub dst_name: Option<&'a str>,
    /// Message flags (`kdbus_abi::msg_flags`), such as EXPECT_REPLY or SIGNAL.
    pub flags: u64,
    /// Queue priority: lower values are more urgent; 0 by default.
    pub priority: i64,
    /// The sender's number for this message, which replies and send-failure reports
    /// refer to; must be non-zero when a reply is expected.
    pub cookie: u64,
    /// Absolute CLOCK_MONOTONIC deadline (with EXPECT_REPLY).
    pub timeout_ns: u64,
    /// The cookie of the message this one answers; 0 if it is not a reply.
    pub cookie_reply: u64,
    /// Payload type (`kdbus_abi::payload`); D-Bus marshalling by default.
    pub payload_type: u64,
    /// The payload vectors, copied into the receiver's pool in order.
    pub payload: Payloads<'a>,
    /// File descriptors passed with the message (its FDS item).
    pub fds: Vec<BorrowedFd<'a>>,
    /// Sealed memfds carrying payload (never copied by the bus): (fd, start, size).
    pub memfds: Vec<(BorrowedFd<'a>, u64, u64)>,
    /// A signal's bloom filter: (generation, words).
    pub bloom: Option<(u64, &'a [u64])>,
}

impl<'a> Message<'a> {
    /// A message to unique id `dst_id`.
    pub fn to(dst_id: u64) -> Self {
        Message {
            dst_id,
            dst_name: None,
            flags: 0,
            priority: 0,
            cookie: 0,
            timeout_ns: 0,
            cookie_reply: 0,
            payload_type: payload::DBUS,
            payload: Payloads::new(),
            fds: Vec::new(),
            memfds: Vec::new(),
            bloom: None,
        }
    }

    /// A broadcast signal; it reaches the connections whose matches take `filter`.
    pub fn broadcast(filter: &'a Bloom) -> Self {
        Message::to(kdbus_abi::DST_ID_BROADCAST).signal(filter)
    }

    /// Make this a signal carrying `filter` (generation 0). A unicast signal reaches its
    /// destination only if one of its matches takes it.
    pub fn signal(mut self, filter: &'a Bloom) -> Self {
        self.flags |= msg_flags::SIGNAL;
        self.bloom = Some((0, filter.words()));
        self
    }

    /// A raw filter with a generation (tests, hand-made masks).
    pub fn bloom_raw(mut self, generation: u64, words: &'a [u64]) -> Self {
        self.flags |= msg_flags::SIGNAL;
        self.bloom = Some((generation, words));
        self
    }

    /// A message to a well-known name.
    pub fn to_name(name: &'a str) -> Self {
        let mut m = Message::to(kdbus_abi::DST_ID_NAME);
        m.dst_name = Some(name);
        m
    }

    /// Set the message's cookie.
    pub fn cookie(mut self, cookie: u64) -> Self {
        self.cookie = cookie;
        self
    }

    /// Set the queue priority (lower is more urgent).
    pub fn priority(mut self, p: i64) -> Self {
        self.priority = p;
        self
    }

    /// Ask for a reply before `deadline_ns` (absolute CLOCK_MONOTONIC).
    pub fn expect_reply(mut self, deadline_ns: u64) -> Self {
        self.flags |= msg_flags::EXPECT_REPLY;
        self.timeout_ns = deadline_ns;
        self
    }

    /// Mark this as the reply to `cookie`.
    pub fn reply_to(mut self, cookie: u64) -> Self {
        self.cookie_reply = cookie;
        self
    }

    /// Add `flags` (`kdbus_abi::msg_flags`) to those already set.
    pub fn flags(mut self, flags: u64) -> Self {
        self.flags |= flags;
        self
    }

    /// Append a payload vector (copied into the receiver's pool).
    pub fn payload(mut self, data: &'a [u8]) -> Self {
        self.payload.push(data);
        self
    }

    /// Append `size` bytes of the sealed memfd `fd` from `start` as payload: the bus
    /// passes the file, the receiver maps it ([`crate::Received::memfds`]). The memfd
    /// must be sealed against writing, growing and shrinking ([`crate::memfd_sealed`]
    /// makes one).
    pub fn memfd(mut self, fd: BorrowedFd<'a>, start: u64, size: u64) -> Self {
        self.memfds.push((fd, start, size));
        self
    }

    /// The fds the request carries: the `FDS` item's, then one per memfd.
    pub fn all_fds(&self) -> std::borrow::Cow<'_, [BorrowedFd<'a>]> {
        if self.memfds.is_empty() {
            return std::borrow::Cow::Borrowed(&self.fds);
        }
        let all = self
            .fds
            .iter()
            .copied()
            .chain(self.memfds.iter().map(|m| m.0));
        std::borrow::Cow::Owned(all.collect())
    }

    /// Pass the file descriptor `fd` with the message.
    pub fn fd(mut self, fd: BorrowedFd<'a>) -> Self {
        self.fds.push(fd);
        self
    }

    /// Set the payload type (`kdbus_abi::payload`).
    pub fn payload_type(mut self, t: u64) -> Self {
        self.payload_type = t;
        self
    }

    /// Encode a SEND request body (`send_flags` from `kdbus_abi::send_flags`):
    /// `kdbus_cmd_send`, the message, then payload bytes that the vectors address by
    /// offset (see `kdbus_abi::wire`).
    pub fn encode_send(&self, send_flags: u64, out: &mut Vec<u8>) {
        self.encode_send_head(send_flags, out);
        for p in self.payload.iter() {
            out.extend_from_slice(p);
            out.resize(out.len() + payload_padding(p.len()), 0);
        }
    }

    /// The part of a SEND request body before the payload bytes: `kdbus_cmd_send`, the
    /// message header and its items, into `out` (cleared first). Its length is a
    /// multiple of 8; the payload vectors follow it, each padded by
    /// [`payload_padding`], which is where their offsets point.
    pub fn encode_send_head(&self, send_flags: u64, out: &mut Vec<u8>) {
        let header = Msg {
            size: 0,
            flags: self.flags,
            priority: self.priority,
            dst_id: self.dst_id,
            src_id: 0,
            payload_type: self.payload_type,
            cookie: self.cookie,
            timeout_or_cookie_reply: if self.flags & msg_flags::EXPECT_REPLY != 0 {
                self.timeout_ns
            } else {
                self.cookie_reply
            },
        };
        kdbus_abi::encode::send_head(
            out,
            send_flags,
            header,
            (self.dst_name, self.bloom),
            self.payload.iter().map(|p| p.len()),
            &self
                .memfds
                .iter()
                .map(|(fd, start, size)| kdbus_abi::Memfd {
                    start: *start,
                    size: *size,
                    fd: std::os::fd::AsRawFd::as_raw_fd(fd),
                    pad: 0,
                })
                .collect::<Vec<_>>(),
            self.fds.iter().map(std::os::fd::AsRawFd::as_raw_fd),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdbus_abi::{item, CmdSend, ItemWriter, Vec_};
    use std::os::fd::AsFd;
    use zerocopy::IntoBytes;

    /// The encoder as it was when it copied the payload into the request (kept here
    /// as the reference for the bytes on the wire).
    fn encode_send_copied(m: &Message<'_>, send_flags: u64, out: &mut Vec<u8>) {
        out.clear();
        let cmd_size = std::mem::size_of::<CmdSend>();
        let cmd = CmdSend {
            size: cmd_size as u64,
            flags: send_flags,
            return_flags: 0,
            msg_address: cmd_size as u64,
            reply: Default::default(),
        };
        out.extend_from_slice(cmd.as_bytes());
        let msg_start = out.len();
        let header = Msg {
            size: 0,
            flags: m.flags,
            priority: m.priority,
            dst_id: m.dst_id,
            src_id: 0,
            payload_type: m.payload_type,
            cookie: m.cookie,
            timeout_or_cookie_reply: if m.flags & msg_flags::EXPECT_REPLY != 0 {
                m.timeout_ns
            } else {
                m.cookie_reply
            },
        };
        out.extend_from_slice(header.as_bytes());
        // Vectors point behind the message; compute where each one will land.
        let items_len: usize = m.payload.len() * 32
            + if m.fds.is_empty() {
                0
            } else {
                kdbus_abi::items::item_space(4 * m.fds.len())
            }
            + m.dst_name
                .map_or(0, |n| kdbus_abi::items::item_space(n.len() + 1))
            + m.bloom
                .map_or(0, |(_, w)| kdbus_abi::items::item_space(8 + 8 * w.len()));
        let mut data_at = kdbus_abi::align8_usize(out.len() + items_len) as u64;
        {
            let mut w = ItemWriter::new(out);
            if let Some(n) = m.dst_name {
                w.push_str(item::DST_NAME, n);
            }
            if let Some((generation, words)) = m.bloom {
                w.push_parts(
                    item::BLOOM_FILTER,
                    &[&generation.to_ne_bytes(), words.as_bytes()],
                );
            }
            for p in m.payload.iter() {
                let v = Vec_ {
                    size: p.len() as u64,
                    address_or_offset: data_at,
                };
                w.push(item::PAYLOAD_VEC, v.as_bytes());
                data_at += kdbus_abi::align8(p.len() as u64);
            }
            if !m.fds.is_empty() {
                let raw: Vec<u8> = m
                    .fds
                    .iter()
                    .flat_map(|f| std::os::fd::AsRawFd::as_raw_fd(f).to_ne_bytes())
                    .collect();
                w.push(item::FDS, &raw);
            }
        }
        let msg_size = (out.len() - msg_start) as u64;
        out[msg_start..msg_start + 8].copy_from_slice(&msg_size.to_ne_bytes());
        for p in m.payload.iter() {
            out.extend_from_slice(p);
            let padded = kdbus_abi::align8_usize(out.len());
            out.resize(padded, 0);
        }
    }

    #[test]
    fn encoding_is_unchanged() {
        let words = [1u64, 2, 3, 4];
        let data: Vec<u8> = (0..100u8).collect();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let cases = [
            Message::to(5),
            Message::to(5).cookie(1).payload(&data[..1]),
            Message::to(5)
                .payload(&data[..3])
                .payload(&[])
                .payload(&data[..16])
                .payload(&data[..17])
                .payload(&data[..99])
                .payload(&data[..8]),
            Message::to_name("a.b.C").expect_reply(99).payload(&data),
            Message::to(7).reply_to(3).priority(-4).flags(8),
            Message::to(kdbus_abi::DST_ID_BROADCAST)
                .bloom_raw(2, &words)
                .payload(&data[..5])
                .fd(devnull.as_fd())
                .fd(devnull.as_fd())
                .fd(devnull.as_fd()),
        ];
        for (i, m) in cases.iter().enumerate() {
            for flags in [0, kdbus_abi::send_flags::SYNC_REPLY] {
                let (mut want, mut got) = (Vec::new(), vec![1, 2, 3]);
                encode_send_copied(m, flags, &mut want);
                m.encode_send(flags, &mut got);
                assert_eq!(got, want, "case {i}");
            }
        }
    }

    #[test]
    fn payloads_spill_in_order() {
        let data = [7u8; 10];
        let mut p = Payloads::new();
        for i in 0..10 {
            p.push(&data[..i]);
            assert_eq!(p.len(), i + 1);
            assert!(p.iter().enumerate().all(|(j, s)| s.len() == j));
        }
        assert_eq!(format!("{:?}", Payloads::new()), "[]");
    }
}
