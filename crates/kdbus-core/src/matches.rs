//! Match rules: who wants which broadcasts and bus notifications.
//!
//! A connection installs *entries* (one per MATCH_ADD, named by a cookie); an entry is a
//! list of *rules* that must all hold; a message reaches a connection if any of its
//! entries holds. Rules on user broadcasts are a bloom mask ("every bit of the mask is
//! set in the message's filter"), a sender id, or a name the sender owns; rules on
//! notifications name the notification and its ids. An entry without rules takes
//! everything.
//!
//! The bus keeps every entry of every connection in one [`MatchDb`], indexed by what
//! narrows it most, so that a broadcast looks only at entries that might hold:
//!
//! - entries naming a sender id, under that id;
//! - entries naming a well-known name, under that name;
//! - entries with a one-generation bloom mask, under the mask's first set bit (the
//!   filter must have that bit for the entry to hold);
//! - everything else (no rules, ANY ids, multi-generation masks) on a short list that
//!   every broadcast checks;
//! - entries with notification rules, for notifications only.
//!
//! A broadcast from sender S with names N carrying filter F then costs the entries under
//! S, under each of N, under each bit set in F, and the short list: not every rule on the
//! bus. Bloom masks are compared a 64-bit word at a time.

use crate::ids::{ConnKey, KeyMap, KeySet};
use kdbus_abi::items::ItemIter;
use kdbus_abi::{item, names, read_struct, Errno, NotifyIdChange, MATCH_ID_ANY};
use std::collections::HashMap;
use std::sync::Arc;

/// An entry's id inside a [`MatchDb`], never reused; clients name entries by cookie
/// instead.
pub type EntryId = u64;

/// A bus notification, as the match rules see it.
#[derive(Clone, Copy, Debug)]
pub enum Notification<'a> {
    /// ID_ADD: a connection joined the bus.
    IdAdd {
        /// Its unique id.
        id: u64,
    },
    /// ID_REMOVE: a connection left the bus.
    IdRemove {
        /// Its unique id.
        id: u64,
    },
    /// NAME_ADD: a name came into existence.
    NameAdd {
        /// Always 0: nobody owned it.
        old: u64,
        /// The unique id of its first owner.
        new: u64,
        /// The well-known name.
        name: &'a str,
    },
    /// NAME_REMOVE: a name is gone.
    NameRemove {
        /// The unique id of its last owner.
        old: u64,
        /// Always 0: nobody owns it.
        new: u64,
        /// The well-known name.
        name: &'a str,
    },
    /// NAME_CHANGE: a name moved from one owner to another.
    NameChange {
        /// The unique id of the previous owner.
        old: u64,
        /// The unique id of the owner from now on.
        new: u64,
        /// The well-known name.
        name: &'a str,
    },
}

impl Notification<'_> {
    /// The kdbus item type of the notification (`ID_ADD`, ..., `NAME_CHANGE`), which a
    /// notification rule names.
    pub fn item_type(&self) -> u64 {
        match self {
            Notification::IdAdd { .. } => item::ID_ADD,
            Notification::IdRemove { .. } => item::ID_REMOVE,
            Notification::NameAdd { .. } => item::NAME_ADD,
            Notification::NameRemove { .. } => item::NAME_REMOVE,
            Notification::NameChange { .. } => item::NAME_CHANGE,
        }
    }
}

/// A user broadcast (or unicast signal), as the match rules see it.
pub struct Broadcast<'a> {
    /// The sender's unique id, for ID rules.
    pub sender_id: u64,
    /// Names the sender owns.
    pub sender_names: &'a [Arc<str>],
    /// The filter's generation: a rule with several masks uses mask number
    /// `min(generation, masks - 1)`.
    pub bloom_generation: u64,
    /// The filter, as 64-bit words.
    pub bloom: &'a [u64],
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    /// `generations` masks of `words` words each, concatenated.
    Bloom {
        masks: Box<[u64]>,
        words: usize,
    },
    Name(Arc<str>),
    Id(u64),
    /// A notification rule: item type, old id, new id (or ANY), optional name.
    Notify {
        type_: u64,
        old: u64,
        new: u64,
        name: Option<Arc<str>>,
    },
}

impl Rule {
    fn matches_broadcast(&self, b: &Broadcast<'_>) -> bool {
        match self {
            Rule::Bloom { masks, words } => {
                let generations = masks.len() / words;
                let g = (b.bloom_generation as usize).min(generations.saturating_sub(1));
                let mask = &masks[g * words..(g + 1) * words];
                b.bloom.len() == *words && mask.iter().zip(b.bloom).all(|(m, f)| f & m == *m)
            }
            Rule::Name(n) => b.sender_names.iter().any(|s| s == n),
            Rule::Id(id) => *id == MATCH_ID_ANY || *id == b.sender_id,
            Rule::Notify { .. } => false,
        }
    }

    fn matches_notification(&self, n: &Notification<'_>) -> bool {
        let Rule::Notify {
            type_,
            old,
            new,
            name,
        } = self
        else {
            return false;
        };
        if *type_ != n.item_type() {
            return false;
        }
        let any_or = |rule: u64, v: u64| rule == MATCH_ID_ANY || rule == v;
        match *n {
            Notification::IdAdd { id } => any_or(*new, id),
            Notification::IdRemove { id } => any_or(*old, id),
            Notification::NameAdd {
                old: o,
                new: nw,
                name: nm,
            }
            | Notification::NameRemove {
                old: o,
                new: nw,
                name: nm,
            }
            | Notification::NameChange {
                old: o,
                new: nw,
                name: nm,
            } => any_or(*old, o) && any_or(*new, nw) && name.as_deref().is_none_or(|r| r == nm),
        }
    }
}

/// Where an entry is indexed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Slot {
    Id(u64),
    Name(Arc<str>),
    Bit(usize),
    Rest,
    Notify,
}

#[derive(Debug)]
struct Entry {
    conn: ConnKey,
    rules: Vec<Rule>,
    slot: Slot,
    /// What it is charged as (see `entry_bytes`).
    bytes: usize,
}

/// What an entry made of `items` is charged: the rules as sent (bloom masks, names,
/// are kept about that size) plus the indexes' share.
pub fn entry_bytes(items: &[u8]) -> usize {
    items.len() + 128
}

impl Entry {
    fn matches_broadcast(&self, b: &Broadcast<'_>) -> bool {
        self.rules.iter().all(|r| r.matches_broadcast(b))
    }
    fn matches_notification(&self, n: &Notification<'_>) -> bool {
        self.rules.iter().all(|r| r.matches_notification(n))
    }
}

/// Parse the rules of a MATCH_ADD (errnos of kdbus HEAD `match.c`). `bloom_size` is the
/// bus's filter size in bytes.
fn parse_rules(items: &[u8], bloom_size: u64) -> Result<Vec<Rule>, Errno> {
    let mut rules = Vec::new();
    for it in ItemIter::new(items) {
        let it = it?;
        it.check_payload()?;
        let rule = match it.type_ {
            item::BLOOM_MASK => {
                let n = it.payload.len() as u64;
                if n == 0 || !n.is_multiple_of(bloom_size) {
                    return Err(Errno::EDOM);
                }
                let masks: Box<[u64]> = it
                    .payload
                    .chunks_exact(8)
                    .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
                    .collect();
                Rule::Bloom {
                    masks,
                    words: (bloom_size / 8) as usize,
                }
            }
            item::NAME => {
                let n = it.as_str()?;
                names::validate_well_known_name(n, false)?;
                Rule::Name(n.into())
            }
            item::ID => Rule::Id(it.as_u64()?),
            item::NAME_ADD | item::NAME_REMOVE | item::NAME_CHANGE => {
                let old: NotifyIdChange = read_struct(it.payload).ok_or(Errno::EINVAL)?;
                let new: NotifyIdChange =
                    read_struct(it.payload.get(16..).unwrap_or(&[])).ok_or(Errno::EINVAL)?;
                let name = match it.payload.get(32..) {
                    None | Some([]) => None,
                    Some(rest) => Some(
                        kdbus_abi::Item {
                            type_: it.type_,
                            payload: rest,
                        }
                        .as_str()?
                        .into(),
                    ),
                };
                Rule::Notify {
                    type_: it.type_,
                    old: old.id,
                    new: new.id,
                    name,
                }
            }
            item::ID_ADD | item::ID_REMOVE => {
                let c: NotifyIdChange = read_struct(it.payload).ok_or(Errno::EINVAL)?;
                let (old, new) = if it.type_ == item::ID_ADD {
                    (MATCH_ID_ANY, c.id)
                } else {
                    (c.id, MATCH_ID_ANY)
                };
                Rule::Notify {
                    type_: it.type_,
                    old,
                    new,
                    name: None,
                }
            }
            _ => continue, // unknown rule types are ignored, as kdbus does
        };
        rules.push(rule);
    }
    Ok(rules)
}

/// Pick the index slot that narrows an entry most.
fn slot_for(rules: &[Rule]) -> Slot {
    if rules.iter().any(|r| matches!(r, Rule::Notify { .. })) {
        return Slot::Notify;
    }
    if let Some(id) = rules.iter().find_map(|r| match r {
        Rule::Id(id) if *id != MATCH_ID_ANY => Some(*id),
        _ => None,
    }) {
        return Slot::Id(id);
    }
    if let Some(n) = rules.iter().find_map(|r| match r {
        Rule::Name(n) => Some(n.clone()),
        _ => None,
    }) {
        return Slot::Name(n);
    }
    let bit = rules.iter().find_map(|r| match r {
        Rule::Bloom { masks, words } if masks.len() == *words => masks
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i * 64 + w.trailing_zeros() as usize),
        _ => None,
    });
    match bit {
        Some(b) => Slot::Bit(b),
        None => Slot::Rest,
    }
}

/// All match entries of one bus.
#[derive(Debug)]
pub struct MatchDb {
    entries: KeyMap<EntryId, Entry>,
    by_slot: HashMap<Slot, KeySet<EntryId>>,
    /// The bloom bits that have a `Slot::Bit` entry, one bit each: a signal sets
    /// dozens of bits and most have no entry, so they are skipped without a lookup.
    bits_used: Vec<u64>,
    /// Entries without rules: they take notifications as well as broadcasts.
    empty: KeySet<EntryId>,
    /// Entries per connection: (cookie, id), for removal and the per-connection limit.
    by_conn: KeyMap<ConnKey, Vec<(u64, EntryId)>>,
    /// Bytes of rules per connection (what the per-user byte quota counts).
    bytes_by_conn: KeyMap<ConnKey, usize>,
    next_id: EntryId,
    /// Entries one connection may have (EMFILE beyond).
    pub max_per_conn: usize,
}

impl Default for MatchDb {
    fn default() -> Self {
        MatchDb {
            entries: KeyMap::default(),
            by_slot: HashMap::new(),
            bits_used: Vec::new(),
            empty: KeySet::default(),
            by_conn: KeyMap::default(),
            bytes_by_conn: KeyMap::default(),
            next_id: EntryId::default(),
            max_per_conn: kdbus_abi::limits::MATCH_MAX,
        }
    }
}

impl MatchDb {
    /// No entries; kdbus's limit of entries per connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries `conn` has (the same count as [`MatchDb::conn_count`]).
    pub fn conn_entries(&self, conn: ConnKey) -> usize {
        self.by_conn.get(&conn).map_or(0, |v| v.len())
    }

    /// MATCH_ADD: install an entry for `conn`; with `replace`, entries with the same
    /// cookie go first (atomically: on error nothing changes).
    pub fn add(
        &mut self,
        conn: ConnKey,
        cookie: u64,
        replace: bool,
        items: &[u8],
        bloom_size: u64,
    ) -> Result<(), Errno> {
        let rules = parse_rules(items, bloom_size)?;
        let existing = self.by_conn.get(&conn).map_or(0, |v| {
            if replace {
                v.iter().filter(|(c, _)| *c != cookie).count()
            } else {
                v.len()
            }
        });
        if existing >= self.max_per_conn {
            return Err(Errno::EMFILE);
        }
        if replace {
            // Replacing what may not be there: nothing to remove is fine.
            self.remove(conn, cookie).ok();
        }
        self.next_id += 1;
        let id = self.next_id;
        let slot = slot_for(&rules);
        if rules.is_empty() {
            self.empty.insert(id);
        }
        if let Slot::Bit(b) = slot {
            if self.bits_used.len() <= b / 64 {
                self.bits_used.resize(b / 64 + 1, 0);
            }
            self.bits_used[b / 64] |= 1 << (b % 64);
        }
        self.by_slot.entry(slot.clone()).or_default().insert(id);
        self.by_conn.entry(conn).or_default().push((cookie, id));
        let bytes = entry_bytes(items);
        *self.bytes_by_conn.entry(conn).or_default() += bytes;
        let entry = Entry {
            conn,
            rules,
            slot,
            bytes,
        };
        self.entries.insert(id, entry);
        Ok(())
    }

    /// MATCH_REMOVE: every entry of `conn` with `cookie`; EBADSLT if there is none.
    pub fn remove(&mut self, conn: ConnKey, cookie: u64) -> Result<(), Errno> {
        let Some(list) = self.by_conn.get_mut(&conn) else {
            return Err(Errno::EBADSLT);
        };
        let ids: Vec<EntryId> = list
            .iter()
            .filter(|(c, _)| *c == cookie)
            .map(|(_, id)| *id)
            .collect();
        if ids.is_empty() {
            return Err(Errno::EBADSLT);
        }
        list.retain(|(c, _)| *c != cookie);
        if list.is_empty() {
            self.by_conn.remove(&conn);
        }
        for id in ids {
            self.entry_drop(id);
        }
        Ok(())
    }

    /// Entries `conn` has.
    pub fn conn_count(&self, conn: ConnKey) -> usize {
        self.by_conn.get(&conn).map_or(0, Vec::len)
    }

    /// Bytes of rules `conn` has (see `entry_bytes`).
    pub fn conn_bytes(&self, conn: ConnKey) -> usize {
        self.bytes_by_conn.get(&conn).copied().unwrap_or(0)
    }

    /// Forget every entry of a connection that leaves.
    pub fn remove_conn(&mut self, conn: ConnKey) {
        for (_, id) in self.by_conn.remove(&conn).unwrap_or_default() {
            self.entry_drop(id);
        }
    }

    fn entry_drop(&mut self, id: EntryId) {
        let Some(e) = self.entries.remove(&id) else {
            return;
        };
        if let Some(b) = self.bytes_by_conn.get_mut(&e.conn) {
            *b = b.saturating_sub(e.bytes);
            if *b == 0 {
                self.bytes_by_conn.remove(&e.conn);
            }
        }
        self.empty.remove(&id);
        if let Some(set) = self.by_slot.get_mut(&e.slot) {
            set.remove(&id);
            if set.is_empty() {
                self.by_slot.remove(&e.slot);
                if let Slot::Bit(b) = e.slot {
                    if let Some(w) = self.bits_used.get_mut(b / 64) {
                        *w &= !(1 << (b % 64));
                    }
                }
            }
        }
    }

    /// Call `f` once for every connection with an entry that takes `b`.
    /// `seen` is scratch space (cleared here), kept by the caller to avoid allocating.
    pub fn for_each_broadcast_receiver(
        &self,
        b: &Broadcast<'_>,
        seen: &mut KeySet<ConnKey>,
        mut f: impl FnMut(ConnKey),
    ) {
        seen.clear();
        let mut visit = |ids: Option<&KeySet<EntryId>>| {
            for id in ids.into_iter().flatten() {
                let Some(e) = self.entries.get(id) else {
                    continue;
                };
                if !seen.contains(&e.conn) && e.matches_broadcast(b) {
                    seen.insert(e.conn);
                    f(e.conn);
                }
            }
        };
        visit(self.by_slot.get(&Slot::Id(b.sender_id)));
        for n in b.sender_names {
            visit(self.by_slot.get(&Slot::Name(n.clone())));
        }
        for (w, word) in b.bloom.iter().enumerate() {
            let mut bits = *word & self.bits_used.get(w).copied().unwrap_or(0);
            while bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                visit(self.by_slot.get(&Slot::Bit(w * 64 + bit)));
            }
        }
        visit(self.by_slot.get(&Slot::Rest));
    }

    /// Whether `conn` has an entry that takes `b` (unicast signals).
    pub fn conn_takes_broadcast(&self, conn: ConnKey, b: &Broadcast<'_>) -> bool {
        self.by_conn
            .get(&conn)
            .into_iter()
            .flatten()
            .filter_map(|(_, id)| self.entries.get(id))
            .any(|e| e.matches_broadcast(b))
    }

    /// Call `f` once for every connection with an entry that takes `n`.
    pub fn for_each_notification_receiver(
        &self,
        n: &Notification<'_>,
        seen: &mut KeySet<ConnKey>,
        mut f: impl FnMut(ConnKey),
    ) {
        seen.clear();
        let ids = self
            .by_slot
            .get(&Slot::Notify)
            .into_iter()
            .flatten()
            .chain(self.empty.iter());
        for id in ids {
            let Some(e) = self.entries.get(id) else {
                continue;
            };
            if !seen.contains(&e.conn) && e.matches_notification(n) {
                seen.insert(e.conn);
                f(e.conn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdbus_abi::ItemWriter;
    use zerocopy::IntoBytes;

    fn mask_item(words: &[u64]) -> Vec<u8> {
        let mut b = Vec::new();
        ItemWriter::new(&mut b).push(item::BLOOM_MASK, words.as_bytes());
        b
    }

    #[test]
    fn bloom_rule_is_filter_covers_mask() {
        let mut db = MatchDb::new();
        db.add(1, 1, false, &mask_item(&[0b101]), 8).unwrap();
        let mut seen = KeySet::default();
        let mut got = Vec::new();
        for f in [0b101u64, 0b111, 0b100, 0] {
            let b = Broadcast {
                sender_id: 9,
                sender_names: &[],
                bloom_generation: 0,
                bloom: &[f],
            };
            db.for_each_broadcast_receiver(&b, &mut seen, |c| got.push((f, c)));
        }
        assert_eq!(got, vec![(0b101, 1), (0b111, 1)]);
    }

    #[test]
    fn generations_pick_the_mask() {
        let mut db = MatchDb::new();
        db.add(1, 1, false, &mask_item(&[0b1, 0b10]), 8).unwrap();
        let mut seen = KeySet::default();
        let hit = |db: &MatchDb, g: u64, f: u64, seen: &mut KeySet<ConnKey>| {
            let mut n = 0;
            let b = Broadcast {
                sender_id: 9,
                sender_names: &[],
                bloom_generation: g,
                bloom: &[f],
            };
            db.for_each_broadcast_receiver(&b, seen, |_| n += 1);
            n
        };
        assert_eq!(hit(&db, 0, 0b1, &mut seen), 1);
        assert_eq!(hit(&db, 1, 0b1, &mut seen), 0);
        assert_eq!(hit(&db, 1, 0b10, &mut seen), 1);
        assert_eq!(
            hit(&db, 7, 0b10, &mut seen),
            1,
            "newer generations use the last mask"
        );
    }

    #[test]
    fn remove_replace_and_limits() {
        let mut db = MatchDb::new();
        assert_eq!(db.remove(1, 5), Err(Errno::EBADSLT));
        db.add(1, 5, false, &[], 8).unwrap();
        db.add(1, 5, false, &[], 8).unwrap();
        db.add(1, 5, true, &[], 8).unwrap();
        assert_eq!(db.conn_entries(1), 1);
        db.remove(1, 5).unwrap();
        assert_eq!(db.conn_entries(1), 0);
        for i in 0..256 {
            db.add(2, i, false, &[], 8).unwrap();
        }
        assert_eq!(db.add(2, 999, false, &[], 8), Err(Errno::EMFILE));
        assert_eq!(
            db.add(3, 1, false, &mask_item(&[1, 2, 3]), 16),
            Err(Errno::EDOM)
        );
        db.remove_conn(2);
        assert!(db.entries.is_empty() && db.by_slot.is_empty() && db.empty.is_empty());
    }

    proptest::proptest! {
        /// The index (slots, the used-bits map) finds exactly the connections a look
        /// at every entry finds, while entries come and go.
        #[test]
        fn the_index_finds_what_a_full_scan_finds(
            ops in proptest::collection::vec(
                (0u64..6, 0u64..4, proptest::bool::ANY, 0u64..128, 0u64..128), 1..60),
            signals in proptest::collection::vec((0u64..128, 0u64..128), 1..8),
        ) {
            let mut db = MatchDb::new();
            // A mask of one or two bits over two words; removal half the time.
            for (conn, cookie, remove, a, b) in ops {
                if remove {
                    let _ = db.remove(conn, cookie);
                    continue;
                }
                let mut words = [0u64; 2];
                for bit in [a, b] {
                    words[(bit / 64) as usize] |= 1 << (bit % 64);
                }
                let _ = db.add(conn, cookie, false, &mask_item(&words), 16);
            }
            let mut seen = KeySet::default();
            for (a, b) in signals {
                let mut words = [0u64; 2];
                for bit in [a, b, (a * 7 + 3) % 128] {
                    words[(bit / 64) as usize] |= 1 << (bit % 64);
                }
                let bc = Broadcast {
                    sender_id: 9,
                    sender_names: &[],
                    bloom_generation: 0,
                    bloom: &words,
                };
                let mut got = Vec::new();
                db.for_each_broadcast_receiver(&bc, &mut seen, |c| got.push(c));
                got.sort_unstable();
                let mut want: Vec<ConnKey> = db
                    .entries
                    .values()
                    .filter(|e| e.matches_broadcast(&bc))
                    .map(|e| e.conn)
                    .collect();
                want.sort_unstable();
                want.dedup();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }
}
