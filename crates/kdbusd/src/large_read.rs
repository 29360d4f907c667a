//! Large D-Bus messages read straight into a buffer of their own size.
//!
//! A stream delivers a message in pieces of the socket buffer's size (about 200 KiB),
//! so a 1 MiB message takes several reads. Read into the loop's shared buffer and
//! appended to the client's partial input, every piece would be copied once more and
//! the partial buffer would grow by doubling (copying its start again each time).
//! Once the fixed part of a message's header says how long it is, a message between
//! [`LARGE_MIN_BYTES`] and [`LARGE_MAX_BYTES`] gets a [`Large`] buffer of exactly that
//! size, and the reads that follow fill it in place, each asking for no more than the
//! message still lacks (what comes after it stays in the socket).
//!
//! The buffer is all initialized memory (safe code cannot read into anything else);
//! zeroing it for every message would cost nearly what the copy did, so the broker
//! keeps one [`Spare`] buffer, already initialized, and lends it to the next large
//! message. Only that one buffer is kept, at most [`LARGE_MAX_BYTES`]: a burst of
//! large messages leaves the broker no larger than one of them.
//!
//! Invariant: `filled <= len <= buf.len()`. The whole `len` is charged to the sender's
//! user from the start (the per-user books of unfinished input), since the memory is
//! held from the start.

/// A message at most this large is cheaper through the shared read buffer.
pub(crate) const LARGE_MIN_BYTES: usize = 64 * 1024;
/// Larger messages (rare: up to the protocol's 128 MiB) take the general path, so
/// that the broker never allocates for a message much before its bytes arrive.
pub(crate) const LARGE_MAX_BYTES: usize = 4 << 20;

/// The one buffer kept between large messages.
#[derive(Default)]
pub(crate) struct Spare(Vec<u8>);

/// A message being read into its own buffer.
pub(crate) struct Large {
    buf: Vec<u8>,
    len: usize,
    filled: usize,
}

impl Large {
    /// A buffer for a message of `len` bytes that starts with `start`.
    pub(crate) fn start(start: &[u8], len: usize, spare: &mut Spare) -> Large {
        let mut buf = std::mem::take(&mut spare.0);
        if buf.len() < len {
            if buf.capacity() < len {
                // Fresh zeroed memory: the allocator's pages come zeroed, untouched.
                buf = vec![0; len];
            } else {
                buf.resize(len, 0);
            }
        }
        let filled = start.len().min(len);
        buf[..filled].copy_from_slice(&start[..filled]);
        Large { buf, len, filled }
    }

    /// What the next read fills.
    pub(crate) fn rest_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.filled..self.len]
    }

    /// `n` more bytes arrived.
    pub(crate) fn filled(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.len);
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.filled == self.len
    }

    /// The message's bytes (all of them, once complete).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..self.filled]
    }

    /// What the buffer costs its sender's user.
    pub(crate) fn charge(&self) -> usize {
        self.len
    }

    /// Done with the message: its buffer becomes the spare, if larger than the one
    /// kept (and not over the bound).
    pub(crate) fn finish(self, spare: &mut Spare) {
        if self.buf.len() <= LARGE_MAX_BYTES && self.buf.len() > spare.0.len() {
            spare.0 = self.buf;
        }
    }
}

/// The length of the message `start` begins, if it should be read as a [`Large`]
/// one: known from its header's fixed part, within the bounds, and longer than what
/// arrived. (A length over the bus's limit is refused by the framing first.)
pub(crate) fn large_len(start: &[u8]) -> Option<usize> {
    match kdbus_dbus::header::message_len(start) {
        Ok(Some(len))
            if (LARGE_MIN_BYTES..=LARGE_MAX_BYTES).contains(&len) && len > start.len() =>
        {
            Some(len)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message's fixed header part claiming a body of `body` bytes.
    fn header(body: u32) -> Vec<u8> {
        let mut h = vec![b'l', 1, 0, 1];
        h.extend_from_slice(&body.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h
    }

    #[test]
    fn only_large_incomplete_messages_qualify() {
        assert_eq!(large_len(&header(16)), None);
        assert_eq!(large_len(&header(1 << 20)), Some(16 + (1 << 20)));
        assert_eq!(large_len(&header(64 << 20)), None);
        assert_eq!(large_len(&header(1 << 20)[..10]), None);
    }

    #[test]
    fn fills_in_place_and_lends_its_buffer_on() {
        let mut spare = Spare::default();
        let start = header(1 << 20);
        let mut l = Large::start(&start, 16 + (1 << 20), &mut spare);
        assert_eq!(l.bytes(), &start[..]);
        let n = l.rest_mut().len();
        l.rest_mut().fill(7);
        l.filled(n);
        assert!(l.is_complete());
        assert_eq!(l.bytes().len(), 16 + (1 << 20));
        l.finish(&mut spare);
        assert_eq!(spare.0.len(), 16 + (1 << 20));
        // The next, smaller message reuses it, and sees none of the old bytes.
        let start = header(100 << 10);
        let l = Large::start(&start, 16 + (100 << 10), &mut spare);
        assert_eq!(l.bytes(), &start[..]);
        assert_eq!(l.charge(), 16 + (100 << 10));
        assert_eq!(spare.0.len(), 0);
    }
}
