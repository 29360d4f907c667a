//! Receive-pool slice allocator and per-sender quota.
//!
//! Every connection owns a shared-memory pool that the broker writes into and
//! the client reads from. Messages are never copied twice: the broker carves a
//! slice out of the receiver's pool, writes the message there, and hands the
//! client only an offset. This module manages those offsets; the bytes live
//! elsewhere.
//!
//! # Slices
//!
//! The pool is always tiled completely by slices: walking the slice map by
//! offset visits every byte exactly once. A slice is either free or busy.
//! Freeing a slice merges it with free neighbours immediately, so two free
//! slices are never adjacent and an idle pool is exactly one free slice.
//! Keeping that invariant is what lets best fit work without a separate
//! compaction pass.
//!
//! Two ordered indexes make every operation O(log n), whatever the number of
//! slices:
//!
//! * `slices`, keyed by offset, finds a slice from an offset handed back by
//!   the client and finds the neighbours to merge with;
//! * `free_by_len`, keyed by `(len, offset)`, answers "smallest free slice of
//!   at least `len` bytes, lowest offset on a tie" with one range query.
//!
//! # Ownership
//!
//! A busy slice starts out private to the broker. `publish` hands it to the
//! pool owner, who may then release it with the FREE command
//! (`free_public`). A client must never be able to free a slice the broker is
//! still writing, hence `NotPublic`. The broker itself can drop any busy
//! slice with `free` (undelivered messages, error paths).
//!
//! # Accounting
//!
//! kdbus splits a pool in two halves: one for the incoming queue, one for the
//! owner's own queries (CONN_INFO, LIST, ...). Slices of the incoming queue
//! are allocated *accounted*; owner replies are not. `accounted()` returns,
//! like `kdbus_pool_accounted()`, the pool size and the number of bytes in
//! accounted slices still held by the broker. In kdbus the kernel drops its
//! reference (and the accounting) when the message is handed over; here that
//! moment is `publish`. A received-but-not-yet-freed message therefore no
//! longer counts against the queue's half, exactly as in kdbus.
//!
//! # Touched memory, per user
//!
//! A pool is a sealed memfd: once the broker has written a page, the page stays
//! until the connection is gone (the seals that keep the client from writing also
//! forbid punching holes). What a pool costs the machine is therefore not what is
//! busy now but the highest offset ever written, its *high-water mark*, in pages.
//! Best fit keeps that mark low (the untouched tail is the largest free slice, so
//! it is taken only when nothing below fits), and [`PoolBudget`] caps the sum of
//! the marks of all pools of one user: an allocation that would raise a mark past
//! what the user has left fails with `UserLimit`, whatever the number of its
//! connections (issue 12: four 1 GiB pools had taken 680 MiB in 1.5 s).
//!
//! # Quota
//!
//! `PoolQuota` decides whether one more message from a given sending user may
//! enter the queue; see its documentation.

use kdbus_abi::Errno;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// Alignment of every slice offset and length.
const SLICE_ALIGN: u64 = 8;

/// Errors of the slice allocator.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum PoolError {
    /// No free slice is large enough (ENOBUFS).
    #[error("no free slice large enough")]
    NoSpace,
    /// One message would take more than half of the free space, while it would fit
    /// (EXFULL, kdbus's guard against a single message filling the pool).
    #[error("slice larger than half the free space")]
    TooLarge,
    /// No busy slice starts at that offset (ENXIO).
    #[error("no slice at that offset")]
    UnknownSlice,
    /// FREE of a slice the broker still owns, e.g. a PEEKed message (EINVAL).
    #[error("slice not yet handed to the owner")]
    NotPublic,
    /// The allocation would raise the pool's high-water mark past what its user's
    /// [`PoolBudget`] has left (ENOBUFS, like a full pool).
    #[error("the pool's user has touched all the pool memory it may")]
    UserLimit,
}

/// The errno kdbus reports for each error.
impl From<PoolError> for Errno {
    fn from(e: PoolError) -> Errno {
        match e {
            PoolError::NoSpace => Errno::ENOBUFS,
            PoolError::TooLarge => Errno::EXFULL,
            PoolError::UnknownSlice => Errno::ENXIO,
            PoolError::NotPublic => Errno::EINVAL,
            PoolError::UserLimit => Errno::ENOBUFS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SliceState {
    Free,
    Busy {
        /// Still charged to the incoming queue (see module docs).
        accounted: bool,
        /// Handed to the pool owner, who may free it.
        public: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slice {
    len: u64,
    state: SliceState,
}

/// Pool memory one user's connections may touch together (see the module docs).
/// Shared by the allocators of that user's pools; single-threaded, like the domain.
#[derive(Debug)]
pub struct PoolBudget {
    /// Bytes the user's pools may have touched in all.
    cap: u64,
    /// Sum of their high-water marks.
    touched: Cell<u64>,
}

impl PoolBudget {
    /// A budget of `cap` bytes of touched pool memory, to share between one user's pools.
    pub fn new(cap: u64) -> Rc<PoolBudget> {
        Rc::new(PoolBudget {
            cap,
            touched: Cell::new(0),
        })
    }

    /// Bytes the user's pools have touched.
    pub fn touched(&self) -> u64 {
        self.touched.get()
    }

    fn take(&self, n: u64) -> Result<(), PoolError> {
        let t = self.touched.get().saturating_add(n);
        if t > self.cap {
            return Err(PoolError::UserLimit);
        }
        self.touched.set(t);
        Ok(())
    }

    fn give_back(&self, n: u64) {
        self.touched.set(self.touched.get().saturating_sub(n));
    }
}

/// Granularity of touched memory.
const PAGE: u64 = 4096;

/// Offset allocator of one connection's receive pool.
#[derive(Debug)]
pub struct PoolAllocator {
    size: u64,
    /// All slices, free and busy, tiling `0..size`.
    slices: BTreeMap<u64, Slice>,
    /// Free slices as `(len, offset)`, for best fit.
    free_by_len: BTreeSet<(u64, u64)>,
    free_bytes: u64,
    accounted_bytes: u64,
    /// End of the highest slice ever allocated, rounded up to a page (and at most
    /// `size`): the memory this pool has touched.
    high_water: u64,
    /// What the high-water mark is charged to (none: not bounded per user).
    budget: Option<Rc<PoolBudget>>,
}

impl Drop for PoolAllocator {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.give_back(self.high_water);
        }
    }
}

/// Round `len` up to the slice alignment; a zero length still occupies one
/// aligned unit. `None` if rounding overflows.
fn slice_len_for(len: u64) -> Option<u64> {
    let len = len.max(1);
    len.checked_add(SLICE_ALIGN - 1)
        .map(|l| l & !(SLICE_ALIGN - 1))
}

impl PoolAllocator {
    /// A pool of `size` bytes, entirely free.
    pub fn new(size: u64) -> Self {
        let mut pool = PoolAllocator {
            size,
            slices: BTreeMap::new(),
            free_by_len: BTreeSet::new(),
            free_bytes: 0,
            accounted_bytes: 0,
            high_water: 0,
            budget: None,
        };
        if size > 0 {
            pool.insert_free(0, size);
        }
        pool
    }

    /// A pool whose touched memory is charged to `budget`.
    pub fn with_budget(size: u64, budget: Option<Rc<PoolBudget>>) -> Self {
        let mut pool = PoolAllocator::new(size);
        pool.budget = budget;
        pool
    }

    /// Bytes of the pool ever written (its high-water mark, in whole pages).
    pub fn touched(&self) -> u64 {
        self.high_water
    }

    /// Total size of the pool in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes in free slices.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// Bytes in busy slices (public or not).
    pub fn used_bytes(&self) -> u64 {
        self.size - self.free_bytes
    }

    /// The offset kdbus hands out for an empty result (the pool size, never
    /// the start of a real slice). `free_public` accepts it as a no-op.
    pub fn empty_offset(&self) -> u64 {
        self.size
    }

    /// `(size, accounted)` as `kdbus_pool_accounted()`: the overall pool
    /// size and the bytes of accounted slices not yet handed to the owner.
    pub fn accounted(&self) -> (u64, u64) {
        (self.size, self.accounted_bytes)
    }

    /// Length of the busy slice starting at `offset`.
    pub fn slice_len(&self, offset: u64) -> Option<u64> {
        self.busy(offset).map(|s| s.len)
    }

    /// Whether the busy slice at `offset` has been published.
    pub fn is_public(&self, offset: u64) -> Option<bool> {
        match self.busy(offset)?.state {
            SliceState::Busy { public, .. } => Some(public),
            SliceState::Free => None,
        }
    }

    /// Allocate a private slice of at least `len` bytes (rounded up to a
    /// multiple of 8) by best fit: the smallest free slice that fits, the
    /// lowest offset among equals. `accounted` marks slices of the incoming
    /// queue.
    pub fn alloc(&mut self, len: u64, accounted: bool) -> Result<u64, PoolError> {
        let need = slice_len_for(len).ok_or(PoolError::NoSpace)?;
        let (found_len, offset) = self.best_fit(need).ok_or(PoolError::NoSpace)?;
        self.raise_high_water(offset + need)?;
        self.remove_free(offset, found_len);
        if found_len > need {
            self.insert_free(offset + need, found_len - need);
        }
        let state = SliceState::Busy {
            accounted,
            public: false,
        };
        self.slices.insert(offset, Slice { len: need, state });
        if accounted {
            self.accounted_bytes += need;
        }
        Ok(offset)
    }

    /// Allocate an accounted slice for a message being queued, refusing a
    /// single message that would take more than half of the free space.
    pub fn alloc_for_delivery(&mut self, len: u64) -> Result<u64, PoolError> {
        let need = slice_len_for(len).ok_or(PoolError::NoSpace)?;
        if need < self.free_bytes && need > self.free_bytes / 2 {
            return Err(PoolError::TooLarge);
        }
        self.alloc(len, true)
    }

    /// Hand the slice at `offset` to the pool owner. From now on the owner may
    /// free it, and it no longer counts against the incoming queue.
    /// Publishing twice is harmless.
    pub fn publish(&mut self, offset: u64) -> Result<(), PoolError> {
        let slice = self.busy_mut(offset).ok_or(PoolError::UnknownSlice)?;
        let SliceState::Busy { accounted, .. } = slice.state else {
            return Err(PoolError::UnknownSlice);
        };
        let len = slice.len;
        slice.state = SliceState::Busy {
            accounted: false,
            public: true,
        };
        if accounted {
            self.unaccount(len);
        }
        Ok(())
    }

    /// The owner's FREE command. Only published slices may be freed; the
    /// empty offset (`size`) is accepted and frees nothing, as in kdbus.
    pub fn free_public(&mut self, offset: u64) -> Result<u64, PoolError> {
        if offset == self.size {
            return Ok(0);
        }
        match self.is_public(offset) {
            None => Err(PoolError::UnknownSlice),
            Some(false) => Err(PoolError::NotPublic),
            Some(true) => self.free(offset),
        }
    }

    /// Broker-internal free of any busy slice, public or not. Returns the
    /// length of the freed slice.
    pub fn free(&mut self, offset: u64) -> Result<u64, PoolError> {
        let slice = self.busy(offset).copied().ok_or(PoolError::UnknownSlice)?;
        if let SliceState::Busy {
            accounted: true, ..
        } = slice.state
        {
            self.unaccount(slice.len);
        }
        self.slices.remove(&offset);
        self.release_range(offset, slice.len);
        Ok(slice.len)
    }

    /// Return `offset..offset+len` to the free set, merged with its free
    /// neighbours so that no two free slices touch.
    fn release_range(&mut self, offset: u64, len: u64) {
        let (mut start, mut len) = (offset, len);
        if let Some(next_len) = self.free_at(offset + len) {
            self.remove_free(offset + len, next_len);
            len += next_len;
        }
        if let Some((prev_off, prev_len)) = self.free_before(offset) {
            self.remove_free(prev_off, prev_len);
            start = prev_off;
            len += prev_len;
        }
        self.insert_free(start, len);
    }

    /// Make the high-water mark cover `end`, if the user's budget allows it.
    fn raise_high_water(&mut self, end: u64) -> Result<(), PoolError> {
        let mark = end.div_ceil(PAGE).saturating_mul(PAGE).min(self.size);
        if mark <= self.high_water {
            return Ok(());
        }
        if let Some(b) = &self.budget {
            b.take(mark - self.high_water)?;
        }
        self.high_water = mark;
        Ok(())
    }

    fn best_fit(&self, need: u64) -> Option<(u64, u64)> {
        self.free_by_len.range((need, 0)..).next().copied()
    }

    fn busy(&self, offset: u64) -> Option<&Slice> {
        self.slices
            .get(&offset)
            .filter(|s| s.state != SliceState::Free)
    }

    fn busy_mut(&mut self, offset: u64) -> Option<&mut Slice> {
        self.slices
            .get_mut(&offset)
            .filter(|s| s.state != SliceState::Free)
    }

    /// Length of the free slice starting exactly at `offset`.
    fn free_at(&self, offset: u64) -> Option<u64> {
        self.slices
            .get(&offset)
            .filter(|s| s.state == SliceState::Free)
            .map(|s| s.len)
    }

    /// The slice immediately left of `offset`, if it is free.
    fn free_before(&self, offset: u64) -> Option<(u64, u64)> {
        let (&off, slice) = self.slices.range(..offset).next_back()?;
        (slice.state == SliceState::Free).then_some((off, slice.len))
    }

    fn insert_free(&mut self, offset: u64, len: u64) {
        let state = SliceState::Free;
        self.slices.insert(offset, Slice { len, state });
        self.free_by_len.insert((len, offset));
        self.free_bytes += len;
    }

    fn remove_free(&mut self, offset: u64, len: u64) {
        self.slices.remove(&offset);
        self.free_by_len.remove(&(len, offset));
        self.free_bytes -= len;
    }

    fn unaccount(&mut self, len: u64) {
        self.accounted_bytes = self.accounted_bytes.saturating_sub(len);
    }

    #[cfg(test)]
    fn free_slices(&self) -> Vec<(u64, u64)> {
        self.slices
            .iter()
            .filter(|(_, s)| s.state == SliceState::Free)
            .map(|(&o, s)| (o, s.len))
            .collect()
    }
}

/// Maximum number of queued messages per sending user and receiver.
pub const CONN_MAX_MSGS: u32 = 256;
/// Maximum number of queued file descriptors per sending user and receiver.
pub const CONN_MAX_FDS_PER_USER: u32 = 16;

/// Errors of the per-user quota.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum QuotaError {
    /// Over the user's share of the queue half of the pool, or over [`CONN_MAX_MSGS`]
    /// (ENOBUFS).
    #[error("sender exceeded its share of the receiver's pool or queue")]
    NoBufs,
    /// Over [`CONN_MAX_FDS_PER_USER`] queued descriptors (EMFILE).
    #[error("sender exceeded its file-descriptor quota on the receiver")]
    TooManyFds,
}

/// The errno kdbus reports for each error.
impl From<QuotaError> for Errno {
    fn from(e: QuotaError) -> Errno {
        match e {
            QuotaError::NoBufs => Errno::ENOBUFS,
            QuotaError::TooManyFds => Errno::EMFILE,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Usage {
    memory: u64,
    msgs: u32,
    fds: u32,
}

impl Usage {
    fn is_zero(&self) -> bool {
        *self == Usage::default()
    }
}

/// Per-sending-user accounting of one receiver's pool (kdbus HEAD
/// `kdbus_conn_quota_inc/dec`).
///
/// A receiver cannot know how many users will talk to it, yet one chatty
/// user must not be able to lock everybody else out. kdbus solves this
/// without reserving anything per user:
///
/// * half of the pool always belongs to the owner, for its own queries; only
///   the other half may hold queued (accounted) messages, and when the owner's
///   replies have already eaten into it, nobody may queue anything;
/// * of what is left of the queue half, a user may take a third, where its
///   own queued bytes count as "left". The first user can thus fill a third,
///   the next a third of the rest, and so on: early users are favoured, but
///   some room always remains for newcomers, and since the queue drains in
///   FIFO order the shares even out as messages are received;
/// * independently, a user may have at most `CONN_MAX_MSGS` messages and
///   `CONN_MAX_FDS_PER_USER` file descriptors queued.
///
/// A charge is all or nothing, and every successful `charge` must be matched
/// by exactly one `uncharge` with the same amounts.
#[derive(Debug, Clone, Default)]
pub struct PoolQuota {
    users: BTreeMap<u32, Usage>,
}

impl PoolQuota {
    /// No user charged yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Charge one message of `memory` bytes carrying `fds` descriptors from
    /// `user` to the receiver whose pool is `pool`.
    pub fn charge(
        &mut self,
        pool: &PoolAllocator,
        user: u32,
        memory: u64,
        fds: u32,
    ) -> Result<(), QuotaError> {
        let usage = self.users.get(&user).copied().unwrap_or_default();
        check_memory(pool, usage.memory, memory)?;
        if usage.msgs >= CONN_MAX_MSGS {
            return Err(QuotaError::NoBufs);
        }
        let new_fds = usage
            .fds
            .checked_add(fds)
            .filter(|&n| n <= CONN_MAX_FDS_PER_USER)
            .ok_or(QuotaError::TooManyFds)?;
        self.users.insert(
            user,
            Usage {
                memory: usage.memory + memory,
                msgs: usage.msgs + 1,
                fds: new_fds,
            },
        );
        Ok(())
    }

    /// Undo one successful `charge`. Amounts larger than what is charged are
    /// clamped (and logged); the entry disappears once it is all zero.
    pub fn uncharge(&mut self, user: u32, memory: u64, fds: u32) {
        let Some(usage) = self.users.get_mut(&user) else {
            tracing::warn!(user, "quota uncharge for a user without charges");
            return;
        };
        if usage.msgs == 0 || usage.memory < memory || usage.fds < fds {
            tracing::warn!(user, memory, fds, "quota uncharge exceeds charges");
        }
        usage.msgs = usage.msgs.saturating_sub(1);
        usage.memory = usage.memory.saturating_sub(memory);
        usage.fds = usage.fds.saturating_sub(fds);
        if usage.is_zero() {
            self.users.remove(&user);
        }
    }

    /// `(memory, msgs, fds)` currently charged to `user`.
    pub fn usage(&self, user: u32) -> (u64, u32, u32) {
        let u = self.users.get(&user).copied().unwrap_or_default();
        (u.memory, u.msgs, u.fds)
    }

    /// Number of users with a non-zero charge.
    pub fn users(&self) -> usize {
        self.users.len()
    }
}

/// kdbus's memory rule: may a user that already holds `held` bytes of the
/// queue add `memory` more?
fn check_memory(pool: &PoolAllocator, held: u64, memory: u64) -> Result<(), QuotaError> {
    let (size, accounted) = pool.accounted();
    // Half the pool is always reserved for the owner.
    let queue_half = size / 2;
    // Owner slices may spill into the queue half; then nothing may queue.
    let unused = queue_half
        .checked_sub(accounted)
        .ok_or(QuotaError::NoBufs)?;
    // A third of what is unused, counting the user's own bytes as unused.
    let share = unused.saturating_add(held) / 3;
    let fits = share >= held && share - held >= memory;
    // kdbus keeps per-user memory in a u32.
    let representable = held
        .checked_add(memory)
        .is_some_and(|m| m <= u64::from(u32::MAX));
    if fits && representable {
        Ok(())
    } else {
        Err(QuotaError::NoBufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PAGE: u64 = 4096;

    #[test]
    fn fresh_pool_is_one_free_slice() {
        let pool = PoolAllocator::new(4 * PAGE);
        assert_eq!(pool.size(), 4 * PAGE);
        assert_eq!(pool.free_bytes(), 4 * PAGE);
        assert_eq!(pool.used_bytes(), 0);
        assert_eq!(pool.free_slices(), vec![(0, 4 * PAGE)]);
        assert_eq!(pool.accounted(), (4 * PAGE, 0));
    }

    #[test]
    fn alloc_rounds_to_eight_and_splits() {
        let mut pool = PoolAllocator::new(PAGE);
        assert_eq!(pool.alloc(0, false), Ok(0));
        assert_eq!(pool.slice_len(0), Some(8));
        assert_eq!(pool.alloc(1, false), Ok(8));
        assert_eq!(pool.slice_len(8), Some(8));
        assert_eq!(pool.alloc(9, false), Ok(16));
        assert_eq!(pool.slice_len(16), Some(16));
        assert_eq!(pool.used_bytes(), 32);
        assert_eq!(pool.free_slices(), vec![(32, PAGE - 32)]);
        assert_eq!(pool.alloc(u64::MAX, false), Err(PoolError::NoSpace));
        assert_eq!(pool.alloc(u64::MAX - 3, false), Err(PoolError::NoSpace));
    }

    #[test]
    fn best_fit_prefers_smallest_then_lowest_offset() {
        let mut pool = PoolAllocator::new(PAGE);
        // Layout: [a 64][b 16][c 64][d 32][e 64][f 16][g 64][rest]
        let sizes = [64, 16, 64, 32, 64, 16, 64];
        let offs: Vec<u64> = sizes
            .iter()
            .map(|&s| pool.alloc(s, false).unwrap())
            .collect();
        for i in [1, 3, 5] {
            pool.free(offs[i]).unwrap();
        }
        // Holes: 16 @ offs[1], 32 @ offs[3], 16 @ offs[5], large tail.
        assert_eq!(pool.alloc(9, false), Ok(offs[1]));
        assert_eq!(pool.alloc(16, false), Ok(offs[5]));
        assert_eq!(pool.alloc(24, false), Ok(offs[3]));
        // The 32-byte hole was split: an 8-byte remainder is left behind it.
        assert_eq!(pool.alloc(8, false), Ok(offs[3] + 24));
        // Nothing small left: next allocation comes from the tail.
        let tail = offs[6] + 64;
        assert_eq!(pool.alloc(8, false), Ok(tail));
    }

    #[test]
    fn exact_fit_does_not_split() {
        let mut pool = PoolAllocator::new(PAGE);
        assert_eq!(pool.alloc(PAGE, false), Ok(0));
        assert_eq!(pool.free_bytes(), 0);
        assert!(pool.free_slices().is_empty());
        assert_eq!(pool.alloc(0, false), Err(PoolError::NoSpace));
    }

    fn three_slices() -> (PoolAllocator, [u64; 3]) {
        let mut pool = PoolAllocator::new(PAGE);
        let a = pool.alloc(64, false).unwrap();
        let b = pool.alloc(64, false).unwrap();
        let c = pool.alloc(64, false).unwrap();
        (pool, [a, b, c])
    }

    #[test]
    fn coalesce_with_right_neighbour() {
        let (mut pool, [_, b, c]) = three_slices();
        pool.free(c).unwrap(); // merges into the tail
        assert_eq!(pool.free_slices(), vec![(c, PAGE - c)]);
        pool.free(b).unwrap();
        assert_eq!(pool.free_slices(), vec![(b, PAGE - b)]);
    }

    #[test]
    fn coalesce_with_left_neighbour() {
        let (mut pool, [a, b, c]) = three_slices();
        pool.free(a).unwrap();
        pool.free(b).unwrap();
        assert_eq!(pool.free_slices(), vec![(a, 128), (c + 64, PAGE - c - 64)]);
    }

    #[test]
    fn coalesce_with_both_neighbours() {
        let (mut pool, [a, b, c]) = three_slices();
        pool.free(a).unwrap();
        pool.free(c).unwrap();
        assert_eq!(pool.free_slices(), vec![(a, 64), (c, PAGE - c)]);
        assert_eq!(pool.free(b), Ok(64));
        assert_eq!(pool.free_slices(), vec![(0, PAGE)]);
        assert_eq!(pool.free_bytes(), PAGE);
    }

    #[test]
    fn delivery_rule_too_large_and_no_space() {
        let mut pool = PoolAllocator::new(PAGE);
        // More than half of the free space, but less than all of it.
        assert_eq!(
            pool.alloc_for_delivery(PAGE / 2 + 8),
            Err(PoolError::TooLarge)
        );
        assert_eq!(
            pool.alloc_for_delivery(PAGE / 2 + 1),
            Err(PoolError::TooLarge)
        );
        // Exactly half is fine.
        assert_eq!(pool.alloc_for_delivery(PAGE / 2), Ok(0));
        assert_eq!(pool.accounted(), (PAGE, PAGE / 2));
        // Larger than the whole free space: no slice fits.
        assert_eq!(pool.alloc_for_delivery(PAGE), Err(PoolError::NoSpace));
        // Exactly the free space is not "less than free", so it is allowed.
        assert_eq!(pool.alloc_for_delivery(PAGE / 2), Ok(PAGE / 2));
        assert_eq!(pool.alloc_for_delivery(0), Err(PoolError::NoSpace));
        assert_eq!(Errno::from(PoolError::TooLarge).0, 54);
        assert_eq!(Errno::from(PoolError::NoSpace).0, 105);
    }

    #[test]
    fn delivery_no_space_when_fragmented() {
        let mut pool = PoolAllocator::new(PAGE);
        let offs: Vec<u64> = (0..8).map(|_| pool.alloc(512, false).unwrap()).collect();
        for o in offs.iter().step_by(2) {
            pool.free(*o).unwrap();
        }
        // 2048 bytes free in four 512-byte holes; 1024 is exactly half.
        assert_eq!(pool.alloc_for_delivery(1024), Err(PoolError::NoSpace));
        assert_eq!(pool.alloc_for_delivery(512), Ok(0));
    }

    #[test]
    fn unknown_slices() {
        let mut pool = PoolAllocator::new(PAGE);
        assert_eq!(pool.free_public(0), Err(PoolError::UnknownSlice));
        assert_eq!(pool.free(0), Err(PoolError::UnknownSlice));
        assert_eq!(pool.publish(0), Err(PoolError::UnknownSlice));
        assert_eq!(pool.free_public(PAGE + 8), Err(PoolError::UnknownSlice));
        assert_eq!(pool.free_public(u64::MAX), Err(PoolError::UnknownSlice));
        assert_eq!(pool.slice_len(0), None);
        let a = pool.alloc(16, false).unwrap();
        // Inside a slice, but not its start.
        assert_eq!(pool.free(a + 8), Err(PoolError::UnknownSlice));
        // The free tail is not a busy slice either.
        assert_eq!(pool.free(16), Err(PoolError::UnknownSlice));
        assert_eq!(Errno::from(PoolError::UnknownSlice).0, 6);
    }

    #[test]
    fn empty_offset_is_a_no_op_free() {
        let mut pool = PoolAllocator::new(PAGE);
        assert_eq!(pool.empty_offset(), PAGE);
        assert_eq!(pool.free_public(PAGE), Ok(0));
        assert_eq!(pool.free(PAGE), Err(PoolError::UnknownSlice));
    }

    #[test]
    fn owner_frees_only_public_slices() {
        let mut pool = PoolAllocator::new(PAGE);
        let a = pool.alloc(100, false).unwrap();
        assert_eq!(pool.free_public(a), Err(PoolError::NotPublic));
        assert_eq!(Errno::from(PoolError::NotPublic).0, 22);
        assert_eq!(pool.is_public(a), Some(false));
        pool.publish(a).unwrap();
        pool.publish(a).unwrap();
        assert_eq!(pool.is_public(a), Some(true));
        assert_eq!(pool.free_public(a), Ok(104));
        assert_eq!(pool.free_public(a), Err(PoolError::UnknownSlice));
        assert_eq!(pool.free_slices(), vec![(0, PAGE)]);
    }

    #[test]
    fn broker_frees_private_slices() {
        let mut pool = PoolAllocator::new(PAGE);
        let a = pool.alloc(8, true).unwrap();
        assert_eq!(pool.accounted(), (PAGE, 8));
        assert_eq!(pool.free(a), Ok(8));
        assert_eq!(pool.accounted(), (PAGE, 0));
    }

    #[test]
    fn publishing_ends_accounting() {
        let mut pool = PoolAllocator::new(PAGE);
        let a = pool.alloc(64, true).unwrap();
        let b = pool.alloc(64, false).unwrap();
        assert_eq!(pool.accounted(), (PAGE, 64));
        pool.publish(a).unwrap();
        pool.publish(b).unwrap();
        assert_eq!(pool.accounted(), (PAGE, 0));
        assert_eq!(pool.used_bytes(), 128);
        pool.free_public(a).unwrap();
        assert_eq!(pool.accounted(), (PAGE, 0));
    }

    #[test]
    fn zero_sized_pool_never_panics() {
        let mut pool = PoolAllocator::new(0);
        assert_eq!(pool.alloc(0, true), Err(PoolError::NoSpace));
        assert_eq!(pool.alloc_for_delivery(8), Err(PoolError::NoSpace));
        assert_eq!(pool.free_public(0), Ok(0));
        assert_eq!(pool.free(0), Err(PoolError::UnknownSlice));
    }

    // ---- quota ----

    /// Charge and queue, in kdbus's order: quota first, then the slice.
    fn enqueue(
        quota: &mut PoolQuota,
        pool: &mut PoolAllocator,
        user: u32,
        memory: u64,
    ) -> Result<u64, QuotaError> {
        quota.charge(pool, user, memory, 0)?;
        Ok(pool
            .alloc(memory, true)
            .expect("quota admits only what fits"))
    }

    #[test]
    fn quota_one_user_gets_a_third_of_the_queue_half() {
        let mut pool = PoolAllocator::new(6 * PAGE); // queue half: 3 pages
        let mut quota = PoolQuota::new();
        assert_eq!(quota.charge(&pool, 1, PAGE + 1, 0), Err(QuotaError::NoBufs));
        assert_eq!(quota.usage(1), (0, 0, 0));
        assert_eq!(quota.users(), 0);
        enqueue(&mut quota, &mut pool, 1, PAGE / 2).unwrap();
        enqueue(&mut quota, &mut pool, 1, PAGE / 2).unwrap();
        assert_eq!(quota.usage(1), (PAGE, 2, 0));
        // (3p - 1p accounted + 1p own) / 3 = 1p: nothing more.
        assert_eq!(quota.charge(&pool, 1, 1, 0), Err(QuotaError::NoBufs));
        assert_eq!(Errno::from(QuotaError::NoBufs).0, 105);
    }

    #[test]
    fn quota_counts_accounted_pool_bytes() {
        let mut pool = PoolAllocator::new(6 * PAGE);
        let mut quota = PoolQuota::new();
        quota.charge(&pool, 1, PAGE, 0).unwrap();
        pool.alloc(PAGE, true).unwrap();
        // User 1's own bytes count as unused for it: (3p - 1p + 1p) / 3 = 1p.
        assert_eq!(quota.charge(&pool, 1, 8, 0), Err(QuotaError::NoBufs));
        // A second user gets a third of the remaining 2 pages.
        let share = 2 * PAGE / 3;
        assert_eq!(
            quota.charge(&pool, 2, share + 1, 0),
            Err(QuotaError::NoBufs)
        );
        assert_eq!(quota.charge(&pool, 2, share, 0), Ok(()));
        assert_eq!(quota.users(), 2);
    }

    #[test]
    fn quota_refuses_when_owner_slices_fill_the_queue_half() {
        let mut pool = PoolAllocator::new(4 * PAGE);
        let mut quota = PoolQuota::new();
        // Owner (unaccounted) slices may exceed half without blocking.
        pool.alloc(3 * PAGE, false).unwrap();
        assert_eq!(quota.charge(&pool, 1, 8, 0), Ok(()));
        // Accounted bytes beyond the queue half block everybody.
        let mut pool = PoolAllocator::new(4 * PAGE);
        pool.alloc(2 * PAGE + 8, true).unwrap();
        assert_eq!(quota.charge(&pool, 7, 0, 0), Err(QuotaError::NoBufs));
    }

    #[test]
    fn quota_message_limit() {
        let pool = PoolAllocator::new(64 * PAGE);
        let mut quota = PoolQuota::new();
        for _ in 0..CONN_MAX_MSGS {
            quota.charge(&pool, 3, 8, 0).unwrap();
        }
        assert_eq!(quota.charge(&pool, 3, 8, 0), Err(QuotaError::NoBufs));
        // Another user is not affected.
        assert_eq!(quota.charge(&pool, 4, 8, 0), Ok(()));
        quota.uncharge(3, 8, 0);
        assert_eq!(quota.charge(&pool, 3, 8, 0), Ok(()));
    }

    #[test]
    fn quota_fd_limit() {
        let pool = PoolAllocator::new(16 * PAGE);
        let mut quota = PoolQuota::new();
        assert_eq!(quota.charge(&pool, 1, 8, 17), Err(QuotaError::TooManyFds));
        assert_eq!(quota.charge(&pool, 1, 8, 10), Ok(()));
        assert_eq!(quota.charge(&pool, 1, 8, 7), Err(QuotaError::TooManyFds));
        assert_eq!(
            quota.charge(&pool, 1, 8, u32::MAX),
            Err(QuotaError::TooManyFds)
        );
        assert_eq!(quota.charge(&pool, 1, 8, 6), Ok(()));
        assert_eq!(quota.usage(1), (16, 2, 16));
        assert_eq!(Errno::from(QuotaError::TooManyFds).0, 24);
    }

    #[test]
    fn quota_uncharge_restores_and_forgets() {
        let mut pool = PoolAllocator::new(6 * PAGE);
        let mut quota = PoolQuota::new();
        let off = enqueue(&mut quota, &mut pool, 1, PAGE).unwrap();
        quota.charge(&pool, 1, 0, 2).unwrap();
        assert_eq!(quota.usage(1), (PAGE, 2, 2));
        assert_eq!(quota.charge(&pool, 1, 8, 0), Err(QuotaError::NoBufs));
        // Receiving the message: the slice goes to the owner, charges go away.
        pool.publish(off).unwrap();
        quota.uncharge(1, PAGE, 0);
        quota.uncharge(1, 0, 2);
        assert_eq!(quota.usage(1), (0, 0, 0));
        assert_eq!(quota.users(), 0);
        assert_eq!(quota.charge(&pool, 1, PAGE, 0), Ok(()));
        // Excess and unknown uncharges are clamped, never panic.
        quota.uncharge(1, u64::MAX, u32::MAX);
        quota.uncharge(1, 1, 1);
        quota.uncharge(99, 1, 1);
        assert_eq!(quota.users(), 0);
    }

    // ---- property test against a reference model ----

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u64, bool),
        Deliver(u64),
        Publish(usize),
        FreePublic(usize),
        Free(usize),
        FreeRaw(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..3000, any::<bool>()).prop_map(|(l, a)| Op::Alloc(l, a)),
            2 => (0u64..3000).prop_map(Op::Deliver),
            2 => any::<usize>().prop_map(Op::Publish),
            2 => any::<usize>().prop_map(Op::FreePublic),
            2 => any::<usize>().prop_map(Op::Free),
            1 => any::<u64>().prop_map(Op::FreeRaw),
        ]
    }

    /// Reference: the busy slices as `(offset, len, public, accounted)`.
    #[derive(Default)]
    struct Model {
        busy: Vec<(u64, u64, bool, bool)>,
    }

    impl Model {
        fn pick(&self, i: usize) -> Option<usize> {
            (!self.busy.is_empty()).then(|| i % self.busy.len())
        }
        fn find(&self, off: u64) -> Option<usize> {
            self.busy.iter().position(|s| s.0 == off)
        }
    }

    fn check_invariants(pool: &PoolAllocator, model: &Model) {
        let size = pool.size();
        let mut sorted = model.busy.clone();
        sorted.sort();
        for w in sorted.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap {:?}", w);
        }
        for &(off, len, _, _) in &sorted {
            assert!(off + len <= size);
            assert_eq!(off % 8, 0);
            assert_eq!(len % 8, 0);
            assert_eq!(pool.slice_len(off), Some(len));
        }
        let used: u64 = sorted.iter().map(|s| s.1).sum();
        assert_eq!(pool.used_bytes(), used);
        assert_eq!(pool.free_bytes() + pool.used_bytes(), size);
        let acc: u64 = sorted.iter().filter(|s| s.3).map(|s| s.1).sum();
        assert_eq!(pool.accounted(), (size, acc));
        // No two free slices are adjacent.
        let free = pool.free_slices();
        for w in free.windows(2) {
            assert!(w[0].0 + w[0].1 < w[1].0);
        }
    }

    fn apply(pool: &mut PoolAllocator, model: &mut Model, op: Op) {
        match op {
            Op::Alloc(len, accounted) => {
                if let Ok(off) = pool.alloc(len, accounted) {
                    let l = pool.slice_len(off).unwrap();
                    assert!(l >= len.max(1) && l < len.max(1) + 8);
                    model.busy.push((off, l, false, accounted));
                } else {
                    let need = slice_len_for(len).unwrap();
                    assert!(pool.free_slices().iter().all(|s| s.1 < need));
                }
            }
            Op::Deliver(len) => {
                let free = pool.free_bytes();
                match pool.alloc_for_delivery(len) {
                    Ok(off) => {
                        let l = pool.slice_len(off).unwrap();
                        assert!(l >= free || l <= free / 2);
                        model.busy.push((off, l, false, true));
                    }
                    Err(PoolError::TooLarge) => {
                        let need = slice_len_for(len).unwrap();
                        assert!(need < free && need > free / 2);
                    }
                    Err(e) => assert_eq!(e, PoolError::NoSpace),
                }
            }
            Op::Publish(i) => {
                if let Some(i) = model.pick(i) {
                    pool.publish(model.busy[i].0).unwrap();
                    model.busy[i].2 = true;
                    model.busy[i].3 = false;
                }
            }
            Op::FreePublic(i) => {
                if let Some(i) = model.pick(i) {
                    let (off, len, public, _) = model.busy[i];
                    if public {
                        assert_eq!(pool.free_public(off), Ok(len));
                        model.busy.swap_remove(i);
                    } else {
                        assert_eq!(pool.free_public(off), Err(PoolError::NotPublic));
                    }
                }
            }
            Op::Free(i) => {
                if let Some(i) = model.pick(i) {
                    let (off, len, _, _) = model.busy.swap_remove(i);
                    assert_eq!(pool.free(off), Ok(len));
                }
            }
            Op::FreeRaw(off) => match model.find(off) {
                Some(i) => {
                    let (_, len, _, _) = model.busy.swap_remove(i);
                    assert_eq!(pool.free(off), Ok(len));
                }
                None => assert_eq!(pool.free(off), Err(PoolError::UnknownSlice)),
            },
        }
    }

    proptest! {
        #[test]
        fn allocator_matches_model(
            pages in 1u64..8,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let size = pages * PAGE;
            let mut pool = PoolAllocator::new(size);
            let mut model = Model::default();
            for op in ops {
                apply(&mut pool, &mut model, op);
                check_invariants(&pool, &model);
            }
            for (off, len, _, _) in std::mem::take(&mut model.busy) {
                prop_assert_eq!(pool.free(off), Ok(len));
            }
            prop_assert_eq!(pool.free_slices(), vec![(0, size)]);
            prop_assert_eq!(pool.free_bytes(), size);
            prop_assert_eq!(pool.accounted(), (size, 0));
        }

        #[test]
        fn quota_never_overcommits(
            charges in proptest::collection::vec((0u32..4, 0u64..5000, 0u32..6), 0..100),
        ) {
            let queue_half = 4 * PAGE;
            let mut pool = PoolAllocator::new(2 * queue_half);
            let mut quota = PoolQuota::new();
            let mut total = 0u64;
            for (user, mem, fds) in charges {
                if quota.charge(&pool, user, mem, fds).is_ok() {
                    // As in kdbus: charge first, then take the queue slice.
                    prop_assert!(pool.alloc(mem, true).is_ok());
                    total += mem;
                }
                let (m, n, f) = quota.usage(user);
                prop_assert!(m <= queue_half / 3);
                prop_assert!(n <= CONN_MAX_MSGS);
                prop_assert!(f <= CONN_MAX_FDS_PER_USER);
            }
            prop_assert!(total <= queue_half);
        }
    }
}
