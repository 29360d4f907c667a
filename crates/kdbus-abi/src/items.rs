//! Item lists: `{u64 size; u64 type; payload}` records, each starting at an 8-byte
//! boundary, ending exactly at the aligned end of their container.
//!
//! The iterator validates the framing (kdbus `item.c`): every item must be larger than its
//! header, lie inside the container, and the list must end exactly at the container's end.
//! Per-type payload checks live in [`Item::check_payload`], so commands can choose which
//! types they accept.

use crate::structs::{read_struct, ItemHeader, ITEM_HEADER_SIZE};
use crate::{align8_usize, Errno};
use zerocopy::IntoBytes;

/// One item, borrowed from the buffer it arrived in.
#[derive(Clone, Copy, Debug)]
pub struct Item<'a> {
    /// The item type (see [`crate::item`]).
    pub type_: u64,
    /// The payload, without the header and without trailing padding.
    pub payload: &'a [u8],
}

impl<'a> Item<'a> {
    /// Payload read as a u64 (ID, ATTACH_FLAGS_*).
    pub fn as_u64(&self) -> Result<u64, Errno> {
        if self.payload.len() != 8 {
            return Err(Errno::EINVAL);
        }
        read_struct(self.payload).ok_or(Errno::EINVAL)
    }

    /// Payload read as a NUL-terminated string without interior NULs.
    pub fn as_str(&self) -> Result<&'a str, Errno> {
        let (last, body) = self.payload.split_last().ok_or(Errno::EINVAL)?;
        if *last != 0 || body.contains(&0) {
            return Err(Errno::EINVAL);
        }
        std::str::from_utf8(body).map_err(|_| Errno::EINVAL)
    }

    /// Fixed-size payload checks of kdbus `kdbus_item_validate` for the types we know.
    pub fn check_payload(&self) -> Result<(), Errno> {
        use crate::item as t;
        let n = self.payload.len();
        let ok = match self.type_ {
            t::PAYLOAD_VEC | t::PAYLOAD_OFF => n == 16,
            t::PAYLOAD_MEMFD => n == 24,
            t::FDS => n.is_multiple_of(4),
            t::BLOOM_PARAMETER => n == 16,
            t::ID | t::ATTACH_FLAGS_SEND | t::ATTACH_FLAGS_RECV => n == 8,
            t::CREDS => n == 64,
            t::PIDS => n == 24,
            t::AUXGROUPS => n.is_multiple_of(8),
            t::TIMESTAMP => n == 24,
            t::POLICY_ACCESS => n == 24,
            t::BLOOM_FILTER => n >= 8 && n.is_multiple_of(8),
            t::BLOOM_MASK => n.is_multiple_of(8),
            t::MAKE_NAME | t::DST_NAME | t::CONN_DESCRIPTION => return self.as_str().map(|_| ()),
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(Errno::EINVAL)
        }
    }
}

/// Iterates over the items of `buf` (the bytes after a command's fixed part, up to
/// `ALIGN8(size)`). Yields `Err(EINVAL)` once on a framing error and then stops.
pub struct ItemIter<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
    allow_empty: bool,
}

impl<'a> ItemIter<'a> {
    /// Strict framing, for what clients send.
    pub fn new(buf: &'a [u8]) -> Self {
        ItemIter {
            buf,
            pos: 0,
            failed: false,
            allow_empty: false,
        }
    }

    /// Also accepts header-only items, which the bus itself writes (REPLY_TIMEOUT,
    /// REPLY_DEAD): for reading messages out of a pool.
    pub fn received(buf: &'a [u8]) -> Self {
        ItemIter {
            buf,
            pos: 0,
            failed: false,
            allow_empty: true,
        }
    }
}

impl<'a> Iterator for ItemIter<'a> {
    type Item = Result<Item<'a>, Errno>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        let hdr: Option<ItemHeader> = read_struct(rest);
        let min = if self.allow_empty {
            ITEM_HEADER_SIZE
        } else {
            ITEM_HEADER_SIZE + 1
        };
        let Some(hdr) = hdr.filter(|h| h.size >= min && h.size <= rest.len() as u64) else {
            self.failed = true;
            return Some(Err(Errno::EINVAL));
        };
        let size = hdr.size as usize;
        let payload = &rest[ITEM_HEADER_SIZE as usize..size];
        let next = self.pos + align8_usize(size);
        // The last item's padding may lie beyond an unaligned container (kdbus
        // checked items against ALIGN8 of the container's size).
        if next > align8_usize(self.buf.len()) {
            self.failed = true;
            return Some(Err(Errno::EINVAL));
        }
        self.pos = next.min(self.buf.len());
        Some(Ok(Item {
            type_: hdr.type_,
            payload,
        }))
    }
}

/// Validate an item list entirely (framing and the payload checks).
pub fn validate_all(buf: &[u8]) -> Result<usize, Errno> {
    let mut n = 0;
    for item in ItemIter::new(buf) {
        item?.check_payload()?;
        n += 1;
    }
    Ok(n)
}

/// Appends items to a byte buffer. Used to build commands (client) and pool records (broker).
pub struct ItemWriter<'a> {
    /// The buffer items are appended to.
    pub buf: &'a mut Vec<u8>,
}

impl<'a> ItemWriter<'a> {
    /// A writer appending to `buf`.
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        ItemWriter { buf }
    }

    /// Append an item made of several payload parts.
    pub fn push_parts(&mut self, type_: u64, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let hdr = ItemHeader {
            size: ITEM_HEADER_SIZE + len as u64,
            type_,
        };
        self.buf.extend_from_slice(hdr.as_bytes());
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        let padded = align8_usize(self.buf.len());
        self.buf.resize(padded, 0);
    }

    /// Append an item with the payload `payload`.
    pub fn push(&mut self, type_: u64, payload: &[u8]) {
        self.push_parts(type_, &[payload]);
    }

    /// Append an item whose payload is the `u64` `v`.
    pub fn push_u64(&mut self, type_: u64, v: u64) {
        self.push(type_, &v.to_ne_bytes());
    }

    /// Append an item whose payload is `s` with a terminating NUL.
    pub fn push_str(&mut self, type_: u64, s: &str) {
        self.push_parts(type_, &[s.as_bytes(), &[0]]);
    }
}

/// Size an item with `payload_len` bytes of payload takes, padding included.
pub const fn item_space(payload_len: usize) -> usize {
    align8_usize(ITEM_HEADER_SIZE as usize + payload_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut b = Vec::new();
        let mut w = ItemWriter::new(&mut b);
        w.push_str(crate::item::MAKE_NAME, "0-foo");
        w.push_u64(crate::item::ID, 7);
        let items: Vec<_> = ItemIter::new(&b).collect::<Result<_, _>>().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].as_str().unwrap(), "0-foo");
        assert_eq!(items[1].as_u64().unwrap(), 7);
        assert_eq!(validate_all(&b), Ok(2));
    }

    #[test]
    fn header_only_item_is_invalid() {
        let hdr = ItemHeader { size: 16, type_: 1 };
        assert!(matches!(
            ItemIter::new(hdr.as_bytes()).next(),
            Some(Err(Errno::EINVAL))
        ));
    }

    #[test]
    fn truncated_item_is_invalid() {
        let mut b = Vec::new();
        ItemWriter::new(&mut b).push_str(crate::item::NAME, "a.b");
        b.truncate(b.len() - 8);
        assert_eq!(validate_all(&b), Err(Errno::EINVAL));
    }

    #[test]
    fn string_must_be_terminated() {
        let it = Item {
            type_: crate::item::MAKE_NAME,
            payload: b"abc",
        };
        assert_eq!(it.check_payload(), Err(Errno::EINVAL));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = validate_all(&data);
        }
    }
}
