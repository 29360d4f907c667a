//! Building match entries (MATCH_ADD): which broadcasts and notifications to receive.

use crate::bloom::Bloom;
use kdbus_abi::{item, ItemWriter, NotifyIdChange, MATCH_ID_ANY};
use zerocopy::IntoBytes;

/// One match entry: every rule must hold. No rules at all takes every broadcast and
/// every notification.
#[derive(Clone, Debug, Default)]
pub struct MatchRule {
    items: Vec<u8>,
}

/// Any id, for the id fields of rules.
pub const ANY: u64 = MATCH_ID_ANY;

impl MatchRule {
    /// An empty entry, which takes every broadcast and notification until rules are added.
    pub fn new() -> Self {
        Self::default()
    }

    /// The rule items, as MATCH_ADD carries them.
    pub fn items(&self) -> &[u8] {
        &self.items
    }

    /// Broadcasts whose filter has every bit of `mask` set.
    pub fn bloom(self, mask: &Bloom) -> Self {
        self.bloom_generations(&[mask.words()])
    }

    /// One mask per filter generation (a filter of generation g is checked against mask
    /// min(g, last)).
    pub fn bloom_generations(mut self, masks: &[&[u64]]) -> Self {
        let parts: Vec<&[u8]> = masks.iter().map(|m| m.as_bytes()).collect();
        ItemWriter::new(&mut self.items).push_parts(item::BLOOM_MASK, &parts);
        self
    }

    /// Broadcasts from unique id `id` (or [`ANY`]).
    pub fn sender(mut self, id: u64) -> Self {
        ItemWriter::new(&mut self.items).push_u64(item::ID, id);
        self
    }

    /// Broadcasts from the owner of `name`.
    pub fn sender_name(mut self, name: &str) -> Self {
        ItemWriter::new(&mut self.items).push_str(item::NAME, name);
        self
    }

    /// ID_ADD notifications for `id` (or [`ANY`]).
    pub fn id_add(self, id: u64) -> Self {
        self.id_change(item::ID_ADD, id)
    }

    /// ID_REMOVE notifications for `id` (or [`ANY`]).
    pub fn id_remove(self, id: u64) -> Self {
        self.id_change(item::ID_REMOVE, id)
    }

    fn id_change(mut self, t: u64, id: u64) -> Self {
        ItemWriter::new(&mut self.items).push(t, NotifyIdChange { id, flags: 0 }.as_bytes());
        self
    }

    /// NAME_ADD notifications (`new` owner id or [`ANY`], optional name).
    pub fn name_add(self, new: u64, name: Option<&str>) -> Self {
        self.name_change_rule(item::NAME_ADD, ANY, new, name)
    }

    /// NAME_REMOVE notifications (`old` owner id or [`ANY`], optional name).
    pub fn name_remove(self, old: u64, name: Option<&str>) -> Self {
        self.name_change_rule(item::NAME_REMOVE, old, ANY, name)
    }

    /// NAME_CHANGE notifications.
    pub fn name_change(self, old: u64, new: u64, name: Option<&str>) -> Self {
        self.name_change_rule(item::NAME_CHANGE, old, new, name)
    }

    fn name_change_rule(mut self, t: u64, old: u64, new: u64, name: Option<&str>) -> Self {
        let o = NotifyIdChange { id: old, flags: 0 };
        let n = NotifyIdChange { id: new, flags: 0 };
        let mut w = ItemWriter::new(&mut self.items);
        match name {
            Some(name) => w.push_parts(t, &[o.as_bytes(), n.as_bytes(), name.as_bytes(), &[0]]),
            None => w.push_parts(t, &[o.as_bytes(), n.as_bytes()]),
        }
        self
    }
}
