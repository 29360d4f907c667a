//! Commands as a client encodes them, for driving the domain without the client
//! library (which the core must not depend on): HELLO and a SEND builder with the
//! same shape as `kdbus::Message`, and who the test clients are.

use kdbus_abi::{msg_flags, payload, CmdHello, Msg};
use zerocopy::IntoBytes;

/// A test client of user `uid` (pid `100 + uid`, group `uid`); root is privileged.
pub fn peer(uid: u32) -> kdbus_core::Peer {
    kdbus_core::Peer {
        creds: kdbus_core::Creds {
            pid: 100 + uid,
            uid,
            gid: uid,
        },
        privileged: uid == 0,
        ..Default::default()
    }
}

/// BUS_MAKE of the test bus `0-test` (bloom filters of 64 bytes, one hash).
pub fn bus_make_body() -> Vec<u8> {
    let bloom = kdbus_abi::BloomParameter {
        size: 64,
        n_hash: 1,
    };
    kdbus_abi::encode::bus_make("0-test", 0, bloom)
}

/// HELLO's options.
#[derive(Clone, Debug)]
pub struct HelloOptions {
    flags: u64,
    attach_recv: u64,
    pool_size: u64,
    /// Items after the fixed part (a policy holder's name and policy).
    items: Vec<u8>,
}

impl HelloOptions {
    pub fn new() -> Self {
        HelloOptions {
            flags: kdbus_abi::hello_flags::ACCEPT_FD,
            attach_recv: 0,
            pool_size: 16 * 1024 * 1024,
            items: Vec::new(),
        }
    }
    /// A policy holder for `name`, with `policy` items (see [`policy_items`]).
    pub fn policy_holder(mut self, policy: Vec<u8>) -> Self {
        self.flags = kdbus_abi::hello_flags::POLICY_HOLDER;
        self.items = policy;
        self
    }
    pub fn attach_recv(mut self, f: u64) -> Self {
        self.attach_recv = f;
        self
    }
    pub fn pool_size(mut self, s: u64) -> Self {
        self.pool_size = s;
        self
    }
    pub fn encode(&self) -> Vec<u8> {
        let h = CmdHello {
            size: (std::mem::size_of::<CmdHello>() + self.items.len()) as u64,
            flags: self.flags,
            attach_flags_send: kdbus_abi::attach::ANY,
            attach_flags_recv: self.attach_recv,
            pool_size: self.pool_size,
            ..Default::default()
        };
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(&self.items);
        out
    }
}

/// A message to send (unicast by id).
pub struct Message<'a> {
    dst_id: u64,
    flags: u64,
    cookie: u64,
    timeout_or_reply: u64,
    priority: i64,
    payload: Vec<&'a [u8]>,
    bloom: Option<&'a [u64]>,
    fds: usize,
}

impl<'a> Message<'a> {
    pub fn to(dst_id: u64) -> Self {
        Message {
            dst_id,
            flags: 0,
            cookie: 0,
            timeout_or_reply: 0,
            priority: 0,
            payload: Vec::new(),
            bloom: None,
            fds: 0,
        }
    }
    /// An FDS item for `n` descriptors (the request must carry them).
    pub fn fds(mut self, n: usize) -> Self {
        self.fds = n;
        self
    }
    /// A signal to everyone whose matches take its bloom filter `words`.
    pub fn broadcast(words: &'a [u64]) -> Self {
        let mut m = Message::to(kdbus_abi::DST_ID_BROADCAST);
        m.flags |= msg_flags::SIGNAL;
        m.bloom = Some(words);
        m
    }
    pub fn cookie(mut self, c: u64) -> Self {
        self.cookie = c;
        self
    }
    pub fn priority(mut self, p: i64) -> Self {
        self.priority = p;
        self
    }
    pub fn expect_reply(mut self, deadline_ns: u64) -> Self {
        self.flags |= msg_flags::EXPECT_REPLY;
        self.timeout_or_reply = deadline_ns;
        self
    }
    pub fn reply_to(mut self, cookie: u64) -> Self {
        self.timeout_or_reply = cookie;
        self
    }
    pub fn payload(mut self, data: &'a [u8]) -> Self {
        self.payload.push(data);
        self
    }

    /// `kdbus_cmd_send` + the message + its payload, vectors by offset into the body
    /// (the client library's encoding: `kdbus_abi::encode::send_head`).
    pub fn encode_send(&self, send_flags: u64, out: &mut Vec<u8>) {
        let header = Msg {
            size: 0,
            flags: self.flags,
            priority: self.priority,
            dst_id: self.dst_id,
            src_id: 0,
            payload_type: payload::DBUS,
            cookie: self.cookie,
            timeout_or_cookie_reply: self.timeout_or_reply,
        };
        let bloom = self.bloom.map(|w| (0, w));
        let sizes = self.payload.iter().map(|p| p.len());
        kdbus_abi::encode::send_head(
            out,
            send_flags,
            header,
            (None, bloom),
            sizes,
            &[],
            (0..self.fds).map(|i| i as i32),
        );
        for p in &self.payload {
            out.extend_from_slice(p);
            let padded = kdbus_abi::align8_usize(out.len());
            out.resize(padded, 0);
        }
    }
}

/// A NAME item and its POLICY_ACCESS items: (kind 1 user / 2 group / 3 world, id,
/// level 0 SEE / 1 TALK / 2 OWN).
pub fn policy_items(name: &str, access: &[(u64, u64, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = kdbus_abi::ItemWriter::new(&mut out);
    w.push_str(kdbus_abi::item::NAME, name);
    for &(type_, id, access) in access {
        let a = kdbus_abi::PolicyAccess { type_, access, id };
        w.push(kdbus_abi::item::POLICY_ACCESS, a.as_bytes());
    }
    out
}
