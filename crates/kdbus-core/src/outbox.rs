//! What the broker must write: each connection's pending output, and the order in
//! which connections are flushed.
//!
//! A connection's output ([`Output`]) is a byte buffer of records (native clients) or
//! D-Bus messages (stream clients), plus the fds that go with them. Everything the
//! core decides for a client ends up here, appended in the order it happened; the
//! broker drains it once per loop iteration, which is where batching comes from.
//!
//! A connection holds a buffer only between the moment something is queued for it
//! and the moment the broker has written it all: then the buffer goes back to the
//! spares in the [`Outbox`], and the next connection with output takes it. Busy
//! connections so reuse a few warm buffers without allocating, and an idle connection
//! (most of them, on a desktop bus) holds none, instead of the capacity of its largest
//! burst.
//!
//! Flush order: an answer to a command goes out after whatever the command did to
//! other connections, so a client that sees the answer finds the effects already in
//! their sockets (kdbus: all of it had happened when the ioctl returned). Each
//! connection carries a stamp of when it last got output that matters; the broker
//! writes connections in stamp order.

use crate::ids::{ConnKey, OutFiles};
use kdbus_abi::wire::{self, RecHeader};

/// One connection's pending output.
#[derive(Debug, Default)]
pub struct Output {
    /// The connection this is the output of.
    pub key: ConnKey,
    /// Records (D-Bus messages for stream clients) not yet written.
    pub out: Vec<u8>,
    /// The fds going with them: one entry per record or message that has fds, in
    /// order, with the offset in `out` where it starts (a stream must send a message's
    /// fds with its first byte).
    pub files: OutFiles,
    /// In the outbox's dirty list.
    pub dirty: bool,
    /// Where the connection comes in the next flush.
    pub flush_stamp: u64,
}

impl Output {
    /// An empty output for connection `key`, holding no buffer yet.
    pub fn new(key: ConnKey) -> Output {
        Output {
            key,
            ..Default::default()
        }
    }
}

/// Connections with output for the broker, and spare output buffers.
#[derive(Default)]
pub struct Outbox {
    pub(crate) dirty: Vec<ConnKey>,
    /// Orders the flush: connections are written in the order of their stamps.
    stamp: u64,
    spare: Vec<Vec<u8>>,
    /// One buffer for a large message (over [`OUTBOX_SPARE_MAX_BYTES`]): a connection
    /// about to get one takes it instead of growing a buffer page by page, and the
    /// broker gives it back when its socket has taken it all.
    large: Vec<u8>,
}

/// Spare buffers kept: enough for every connection a loop iteration typically writes
/// to; more are freed.
const OUTBOX_SPARES: usize = 64;
/// Buffers larger than this (after a burst) are freed rather than kept.
const OUTBOX_SPARE_MAX_BYTES: usize = 64 * 1024;
/// The largest buffer kept as the large spare: what one large message (up to a few
/// MiB) needs, so that a stream of them reuses warm memory; larger ones are freed.
const OUTBOX_LARGE_MAX_BYTES: usize = 4 << 20;

impl Outbox {
    /// `o`'s output buffer, for appending (a spare if it has none), with `o` marked as
    /// having output.
    pub fn buf<'c>(&mut self, o: &'c mut Output) -> &'c mut Vec<u8> {
        if o.out.capacity() == 0 {
            if let Some(b) = self.spare.pop() {
                o.out = b;
            }
        }
        self.mark_dirty(o);
        &mut o.out
    }

    /// [`Outbox::buf`] for appending `want` bytes: with room for them, from the large
    /// spare if `o` holds nothing and `want` is large.
    pub fn buf_for<'c>(&mut self, o: &'c mut Output, want: usize) -> &'c mut Vec<u8> {
        if o.out.is_empty()
            && want > OUTBOX_SPARE_MAX_BYTES
            && o.out.capacity() < want
            && self.large.capacity() >= want
        {
            let small = std::mem::replace(&mut o.out, std::mem::take(&mut self.large));
            self.give_back(small);
        }
        let b = self.buf(o);
        b.reserve(want);
        b
    }

    /// A buffer the broker is done with (written out after it left the connection's
    /// output): kept as a spare if it is worth keeping.
    pub fn give_back(&mut self, mut b: Vec<u8>) {
        b.clear();
        let cap = b.capacity();
        if cap > OUTBOX_SPARE_MAX_BYTES {
            if cap <= OUTBOX_LARGE_MAX_BYTES && cap > self.large.capacity() {
                self.large = b;
            }
        } else if cap > 0 && self.spare.len() < OUTBOX_SPARES {
            self.spare.push(b);
        }
    }

    /// Note that `o` has output for the broker to flush (once per loop iteration).
    pub fn mark_dirty(&mut self, o: &mut Output) {
        if !o.dirty {
            o.dirty = true;
            self.dirty.push(o.key);
            self.stamp += 1;
            o.flush_stamp = self.stamp;
        }
    }

    /// Take back `o`'s buffer if it is empty.
    pub(crate) fn recycle(&mut self, o: &mut Output) {
        if !o.out.is_empty() || o.out.capacity() == 0 {
            return;
        }
        let b = std::mem::take(&mut o.out);
        self.give_back(b);
    }

    /// Append one record to `o`.
    pub(crate) fn push_record(
        &mut self,
        o: &mut Output,
        kind: u16,
        n_fds: u16,
        error: i32,
        req_id: u64,
        body: &[u8],
    ) {
        let h = RecHeader {
            kind,
            n_fds,
            error,
            req_id,
            body_len: body.len() as u64,
        };
        wire::push_frame(self.buf(o), &h, &[body]);
        if kind == wire::REC_REPLY {
            // An answer goes out after whatever its command did (module docs).
            self.stamp += 1;
            o.flush_stamp = self.stamp;
        }
    }
}
