//! The policy database: who may SEE, TALK to and OWN which names (kdbus HEAD's
//! `policy.c`).
//!
//! Entries come from connections that speak for a name: a policy holder (HELLO with
//! `POLICY_HOLDER`, replaced as a whole by CONN_UPDATE) and an activator (HELLO with
//! `ACTIVATOR`, for its one name). An entry is a name, or a wildcard `a.b.*` that
//! stands for every name with exactly one more element, and a list of rules: a user,
//! a group or the world, granted SEE, TALK or OWN (each level includes the lower
//! ones). A name is judged by its exact entry if there is one, else by the wildcard of
//! its parent; no entry grants nothing.
//!
//! Every name and wildcard has at most one entry, whoever owns it (EEXIST), so an
//! activator and a holder cannot both speak for a name. An owner's entries are replaced
//! all at once: an update that fails leaves the old ones in force.
//!
//! Lookups are by hash, so the cost of a check does not depend on how many unrelated
//! entries the bus has.

use crate::ids::ConnKey;
use kdbus_abi::items::ItemIter;
use kdbus_abi::{item, Errno, PolicyAccess};
use std::collections::HashMap;
use std::sync::Arc;

/// Access levels (kdbus `KDBUS_POLICY_*`): each includes the ones below it.
pub const SEE: u8 = 0;
/// May send to the name's owner (and see the name).
pub const TALK: u8 = 1;
/// May acquire the name (and talk to and see it).
pub const OWN: u8 = 2;

/// Rule kinds (kdbus `KDBUS_POLICY_ACCESS_*`).
const ACCESS_USER: u64 = 1;
const ACCESS_GROUP: u64 = 2;
const ACCESS_WORLD: u64 = 3;

/// The most policy data one owner may upload (KDBUS_POLICY_MAX_SIZE).
const POLICY_MAX_SIZE: usize = 32 * 1024;

/// Whom a rule grants its level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    /// The user with this uid.
    User(u32),
    /// Members of the group with this gid, primary or supplementary.
    Group(u32),
    /// Everyone.
    World,
}

/// One grant of an entry (a `POLICY_ACCESS` item).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Whom it applies to.
    pub who: Who,
    /// [`SEE`], [`TALK`] or [`OWN`].
    pub level: u8,
}

/// One name's (or wildcard's) rules, as uploaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntrySpec {
    /// The name; for a wildcard, without its `.*`.
    pub name: Arc<str>,
    /// `name.*`: stands for every name with exactly one more element than `name`.
    pub wildcard: bool,
    /// The grants; the highest level among those that apply to an asker wins.
    pub rules: Vec<Rule>,
}

/// Who asks: the credentials a check is made for.
#[derive(Clone, Copy, Debug)]
pub struct Asker<'a> {
    /// Matched against [`Who::User`].
    pub uid: u32,
    /// The primary group, matched against [`Who::Group`] along with `groups`.
    pub gid: u32,
    /// Supplementary groups as kdbus's `AUXGROUPS` payload: one u64 each.
    pub groups: &'a [u8],
}

impl Asker<'_> {
    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid
            || self
                .groups
                .chunks_exact(8)
                .filter_map(kdbus_abi::read_struct::<u64>)
                .any(|g| g == u64::from(gid))
    }
}

struct Entry {
    owner: ConnKey,
    rules: Vec<Rule>,
}

/// The policy database of a bus (or a custom endpoint).
#[derive(Default)]
pub struct PolicyDb {
    exact: HashMap<Arc<str>, Entry>,
    wildcard: HashMap<Arc<str>, Entry>,
    /// Each owner's entries: (name, wildcard).
    by_owner: HashMap<ConnKey, Vec<(Arc<str>, bool)>>,
}

impl PolicyDb {
    /// An empty database: it grants nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no entry exists at all (exact or wildcard).
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// Whether an entry for exactly this name (or wildcard) exists.
    pub fn has_entry(&self, name: &str, wildcard: bool) -> bool {
        self.table(wildcard).contains_key(name)
    }

    fn table(&self, wildcard: bool) -> &HashMap<Arc<str>, Entry> {
        if wildcard {
            &self.wildcard
        } else {
            &self.exact
        }
    }

    fn table_mut(&mut self, wildcard: bool) -> &mut HashMap<Arc<str>, Entry> {
        if wildcard {
            &mut self.wildcard
        } else {
            &mut self.exact
        }
    }

    /// Replace all of `owner`'s entries with `entries`; EEXIST (and nothing changed)
    /// if another owner, or `entries` twice, has one of them.
    pub fn set(&mut self, owner: ConnKey, entries: Vec<EntrySpec>) -> Result<(), Errno> {
        let mut seen = std::collections::HashSet::new();
        for e in &entries {
            if !seen.insert((e.name.clone(), e.wildcard)) {
                return Err(Errno::EEXIST);
            }
            if let Some(other) = self.table(e.wildcard).get(&e.name) {
                if other.owner != owner {
                    return Err(Errno::EEXIST);
                }
            }
        }
        self.remove_owner(owner);
        let mut mine = Vec::with_capacity(entries.len());
        for e in entries {
            mine.push((e.name.clone(), e.wildcard));
            let entry = Entry {
                owner,
                rules: e.rules,
            };
            self.table_mut(e.wildcard).insert(e.name, entry);
        }
        if !mine.is_empty() {
            self.by_owner.insert(owner, mine);
        }
        Ok(())
    }

    /// Forget `owner`'s entries (it disconnected).
    pub fn remove_owner(&mut self, owner: ConnKey) {
        for (name, wildcard) in self.by_owner.remove(&owner).unwrap_or_default() {
            self.table_mut(wildcard).remove(&name);
        }
    }

    /// The highest level `who` has on `name`, if any: its exact entry decides if there
    /// is one, else the wildcard of its parent (`a.b.*` for `a.b.c`).
    pub fn level(&self, who: &Asker<'_>, name: &str) -> Option<u8> {
        let entry = match self.exact.get(name) {
            Some(e) => e,
            None => {
                let (parent, _) = name.rsplit_once('.')?;
                self.wildcard.get(parent)?
            }
        };
        entry
            .rules
            .iter()
            .filter(|r| match r.who {
                Who::User(uid) => uid == who.uid,
                Who::Group(gid) => who.in_group(gid),
                Who::World => true,
            })
            .map(|r| r.level)
            .max()
    }

    /// Whether `who` has at least `level` on `name`.
    pub fn allows(&self, who: &Asker<'_>, name: &str, level: u8) -> bool {
        self.level(who, name).is_some_and(|l| l >= level)
    }
}

/// Parse policy items: `NAME` (a well-known name, or `a.b.*` if `wildcards`) followed
/// by its `POLICY_ACCESS` items. Other item types are skipped. An access before any
/// name, or an invalid one, is EINVAL; more than [`POLICY_MAX_SIZE`] bytes of them is
/// E2BIG.
pub fn policy_parse(items: &[u8], wildcards: bool) -> Result<Vec<EntrySpec>, Errno> {
    let mut out: Vec<EntrySpec> = Vec::new();
    let mut size = 0;
    for it in ItemIter::new(items) {
        let it = it?;
        match it.type_ {
            item::NAME => {
                let name = it.as_str()?;
                kdbus_abi::names::validate_well_known_name(name, wildcards)?;
                let (name, wildcard) = match name.strip_suffix(".*") {
                    Some(prefix) => (prefix, true),
                    None => (name, false),
                };
                size += it.payload.len();
                out.push(EntrySpec {
                    name: name.into(),
                    wildcard,
                    rules: Vec::new(),
                });
            }
            item::POLICY_ACCESS => {
                let a: PolicyAccess = kdbus_abi::read_struct(it.payload).ok_or(Errno::EINVAL)?;
                let entry = out.last_mut().ok_or(Errno::EINVAL)?;
                let level = u8::try_from(a.access)
                    .ok()
                    .filter(|l| *l <= OWN)
                    .ok_or(Errno::EINVAL)?;
                let id = u32::try_from(a.id).map_err(|_| Errno::EINVAL);
                let who = match a.type_ {
                    ACCESS_USER => Who::User(id?),
                    ACCESS_GROUP => Who::Group(id?),
                    ACCESS_WORLD => Who::World,
                    _ => return Err(Errno::EINVAL),
                };
                size += it.payload.len();
                entry.rules.push(Rule { who, level });
            }
            _ => {}
        }
        if size > POLICY_MAX_SIZE {
            return Err(Errno::E2BIG);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, rules: &[Rule]) -> EntrySpec {
        let (name, wildcard) = match name.strip_suffix(".*") {
            Some(p) => (p, true),
            None => (name, false),
        };
        EntrySpec {
            name: name.into(),
            wildcard,
            rules: rules.to_vec(),
        }
    }

    const ME: Asker<'static> = Asker {
        uid: 1000,
        gid: 100,
        groups: &[],
    };

    #[test]
    fn exact_entries_decide_before_wildcards() {
        let mut db = PolicyDb::new();
        let talk = Rule {
            who: Who::User(1000),
            level: TALK,
        };
        let own = Rule {
            who: Who::World,
            level: OWN,
        };
        db.set(1, vec![entry("a.b.*", &[own])]).unwrap();
        db.set(2, vec![entry("a.b.c", &[talk])]).unwrap();
        assert_eq!(db.level(&ME, "a.b.c"), Some(TALK));
        assert_eq!(db.level(&ME, "a.b.d"), Some(OWN));
        // One more element only.
        assert_eq!(db.level(&ME, "a.b.c.d"), None);
        assert_eq!(db.level(&ME, "x.y"), None);
    }

    #[test]
    fn entries_are_unique_and_updates_atomic() {
        let mut db = PolicyDb::new();
        let see = Rule {
            who: Who::Group(100),
            level: SEE,
        };
        db.set(1, vec![entry("a.b", &[see])]).unwrap();
        assert_eq!(db.set(2, vec![entry("a.b", &[])]), Err(Errno::EEXIST));
        assert_eq!(
            db.set(1, vec![entry("x.y", &[]), entry("x.y", &[])]),
            Err(Errno::EEXIST)
        );
        // The failed update left the old entry.
        assert_eq!(db.level(&ME, "a.b"), Some(SEE));
        db.set(1, vec![entry("a.*", &[])]).unwrap();
        assert!(!db.has_entry("a.b", false));
        db.set(2, vec![entry("a.b", &[])]).unwrap();
        db.remove_owner(2);
        assert!(!db.has_entry("a.b", false) && db.has_entry("a", true));
    }
}
