//! A message handed out of the pool.
//!
//! The bytes stay where the broker wrote them: a [`Received`] borrows its slice of the
//! read-only pool mapping, so reading a message copies nothing, and the slice is only
//! given back (a FREE notice riding on the next datagram) when the value is dropped.
//! That ties the borrow to the connection's lifetime and makes freeing impossible to
//! forget, and impossible to do twice; [`Received::keep`] opts out for callers that
//! free by hand. Accessors walk the items on demand rather than parsing the message
//! up front, since most receivers look at a header field or two and the payload.

use crate::link::Link;
use kdbus_abi::items::ItemIter;
use kdbus_abi::{item, read_struct, Msg, Vec_};
use rustix::fd::OwnedFd;

/// A message in the pool. The slice is freed (asynchronously) when this is dropped.
pub struct Received<'c> {
    link: &'c Link,
    offset: u64,
    bytes: &'c [u8],
    header: Msg,
    /// The fds that came with the message, in FDS-item order.
    pub fds: Vec<OwnedFd>,
    free_on_drop: bool,
}

impl<'c> Received<'c> {
    /// The message at `offset` whose slice is `bytes`; dropping it frees the slice
    /// through `link` if `free_on_drop`.
    pub(crate) fn new(
        link: &'c Link,
        offset: u64,
        bytes: &'c [u8],
        header: Msg,
        fds: Vec<OwnedFd>,
        free_on_drop: bool,
    ) -> Self {
        Received {
            link,
            offset,
            bytes,
            header,
            fds,
            free_on_drop,
        }
    }

    /// The message header (`kdbus_msg`) as the broker wrote it.
    pub fn header(&self) -> &Msg {
        &self.header
    }
    /// Where the message's slice starts in the pool, in bytes; the value
    /// [`crate::Connection::free`] takes.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// The sender's unique id; 0 (`kdbus_abi::SRC_ID_KERNEL`) for messages the bus
    /// itself generates.
    pub fn src_id(&self) -> u64 {
        self.header.src_id
    }
    /// The destination id from the message header.
    pub fn dst_id(&self) -> u64 {
        self.header.dst_id
    }
    /// The sender's cookie for this message.
    pub fn cookie(&self) -> u64 {
        self.header.cookie
    }
    /// The cookie of the message this one replies to (the header's
    /// `timeout_or_cookie_reply`, so only meaningful for replies and bus notifications).
    pub fn cookie_reply(&self) -> u64 {
        self.header.timeout_or_cookie_reply
    }
    /// The message's priority (lower is more urgent).
    pub fn priority(&self) -> i64 {
        self.header.priority
    }
    /// Whether the sender waits for a reply (EXPECT_REPLY is set).
    pub fn expects_reply(&self) -> bool {
        self.header.flags & kdbus_abi::msg_flags::EXPECT_REPLY != 0
    }
    /// The whole slice (header, items, payload).
    pub fn bytes(&self) -> &'c [u8] {
        self.bytes
    }

    /// The items (header-only items allowed: bus messages use them).
    pub fn items(&self) -> ItemIter<'c> {
        let end = (self.header.size as usize).min(self.bytes.len());
        ItemIter::received(
            self.bytes
                .get(std::mem::size_of::<Msg>()..end)
                .unwrap_or(&[]),
        )
    }

    /// The type of the first item of a bus-generated message (e.g. REPLY_TIMEOUT).
    pub fn kernel_item(&self) -> Option<u64> {
        if self.header.payload_type != kdbus_abi::payload::KERNEL {
            return None;
        }
        self.items().flatten().next().map(|i| i.type_)
    }

    /// First metadata item of type `t`.
    pub fn item(&self, t: u64) -> Option<&'c [u8]> {
        self.items()
            .flatten()
            .find(|i| i.type_ == t)
            .map(|i| i.payload)
    }

    /// The payload vectors, in order, without collecting them.
    pub fn payloads(&self) -> impl Iterator<Item = &'c [u8]> + 'c {
        let bytes = self.bytes;
        self.items()
            .flatten()
            .filter(|i| i.type_ == item::PAYLOAD_OFF)
            .filter_map(move |i| {
                let v: Vec_ = read_struct(i.payload)?;
                let start = usize::try_from(v.address_or_offset).ok()?;
                bytes.get(start..start.checked_add(usize::try_from(v.size).ok()?)?)
            })
    }

    /// The payload vectors, in order.
    pub fn payload(&self) -> Vec<&'c [u8]> {
        self.payloads().collect()
    }

    /// The memfd payloads, in item order, each mapped read-only (the fds come after
    /// those of the `FDS` item).
    pub fn memfds(&self) -> std::io::Result<Vec<crate::MemfdView>> {
        let n_fds = self.item(item::FDS).map_or(0, |f| f.len() / 4);
        let mut out = Vec::new();
        let items = self
            .items()
            .flatten()
            .filter(|i| i.type_ == item::PAYLOAD_MEMFD);
        for (i, it) in items.enumerate() {
            let m: kdbus_abi::Memfd = kdbus_abi::read_struct(it.payload)
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
            let fd = self
                .fds
                .get(n_fds + i)
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
            out.push(crate::MemfdView::map(fd, m.start, m.size)?);
        }
        Ok(out)
    }

    /// All payload vectors concatenated into one new buffer.
    pub fn payload_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payloads().map(<[u8]>::len).sum());
        for p in self.payloads() {
            out.extend_from_slice(p);
        }
        out
    }

    /// Keep the slice: the caller frees it with [`crate::Connection::free`].
    pub fn keep(mut self) -> u64 {
        self.free_on_drop = false;
        self.offset
    }
}

impl Drop for Received<'_> {
    fn drop(&mut self) {
        if self.free_on_drop {
            self.link.free_later(self.offset);
        }
    }
}
