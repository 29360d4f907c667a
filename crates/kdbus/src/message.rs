//! Building messages to send.

use crate::bloom::Bloom;
use kdbus_abi::{item, msg_flags, payload, CmdSend, ItemWriter, Msg, Vec_};
use std::os::fd::BorrowedFd;
use zerocopy::IntoBytes;

/// A message to send; build with [`Message::to`] and the setters.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    pub dst_id: u64,
    pub dst_name: Option<&'a str>,
    pub flags: u64,
    pub priority: i64,
    pub cookie: u64,
    /// Absolute CLOCK_MONOTONIC deadline (with EXPECT_REPLY).
    pub timeout_ns: u64,
    pub cookie_reply: u64,
    pub payload_type: u64,
    pub payload: Vec<&'a [u8]>,
    pub fds: Vec<BorrowedFd<'a>>,
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
            payload: Vec::new(),
            fds: Vec::new(),
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

    pub fn cookie(mut self, cookie: u64) -> Self {
        self.cookie = cookie;
        self
    }

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

    pub fn flags(mut self, flags: u64) -> Self {
        self.flags |= flags;
        self
    }

    /// Append a payload vector (copied into the receiver's pool).
    pub fn payload(mut self, data: &'a [u8]) -> Self {
        self.payload.push(data);
        self
    }

    pub fn fd(mut self, fd: BorrowedFd<'a>) -> Self {
        self.fds.push(fd);
        self
    }

    pub fn payload_type(mut self, t: u64) -> Self {
        self.payload_type = t;
        self
    }

    /// Encode a SEND request body (`send_flags` from `kdbus_abi::send_flags`): `kdbus_cmd_send`, the message, then payload bytes
    /// that the vectors address by offset (see `kdbus_abi::wire`).
    pub fn encode_send(&self, send_flags: u64, out: &mut Vec<u8>) {
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
        out.extend_from_slice(header.as_bytes());
        // Vectors point behind the message; compute where each one will land.
        let items_len: usize = self.payload.len() * 32
            + if self.fds.is_empty() {
                0
            } else {
                kdbus_abi::items::item_space(4 * self.fds.len())
            }
            + self
                .dst_name
                .map_or(0, |n| kdbus_abi::items::item_space(n.len() + 1))
            + self
                .bloom
                .map_or(0, |(_, w)| kdbus_abi::items::item_space(8 + 8 * w.len()));
        let mut data_at = kdbus_abi::align8_usize(out.len() + items_len) as u64;
        {
            let mut w = ItemWriter::new(out);
            if let Some(n) = self.dst_name {
                w.push_str(item::DST_NAME, n);
            }
            if let Some((generation, words)) = self.bloom {
                w.push_parts(
                    item::BLOOM_FILTER,
                    &[&generation.to_ne_bytes(), words.as_bytes()],
                );
            }
            for p in &self.payload {
                let v = Vec_ {
                    size: p.len() as u64,
                    address_or_offset: data_at,
                };
                w.push(item::PAYLOAD_VEC, v.as_bytes());
                data_at += kdbus_abi::align8(p.len() as u64);
            }
            if !self.fds.is_empty() {
                let raw: Vec<u8> = self
                    .fds
                    .iter()
                    .flat_map(|f| std::os::fd::AsRawFd::as_raw_fd(f).to_ne_bytes())
                    .collect();
                w.push(item::FDS, &raw);
            }
        }
        let msg_size = (out.len() - msg_start) as u64;
        out[msg_start..msg_start + 8].copy_from_slice(&msg_size.to_ne_bytes());
        for p in &self.payload {
            out.extend_from_slice(p);
            let padded = kdbus_abi::align8_usize(out.len());
            out.resize(padded, 0);
        }
    }
}
