//! The message policy: dbus-daemon's `<allow>`/`<deny>` rules on sending, receiving and
//! owning names, as one bus enforces them for every connection, native or D-Bus.
//!
//! Where the kdbus policy database (`policy`) says which names a user may see, talk to
//! and own, a distribution's bus configuration says much more: which interfaces and
//! members a user may call on which destination, which messages a connection may
//! receive, which names it may own. A bus started from such a configuration gets a
//! [`MsgPolicy`]; without one, nothing here is consulted.
//!
//! **Model** (dbus-daemon's `bus/policy.c`, dbus-broker's compiled snapshots). A rule
//! allows or denies one kind of act: sending, receiving or owning. It names what it
//! applies to: a message type, path, interface, member, error name, the other party
//! (a destination for a send, a sender for a receive, by name or name prefix), whether a
//! reply was requested, whether the message is a broadcast, how many fds it carries.
//! The rules that apply to a connection are the bus's default rules, then those of each
//! of its groups, then those of its user, then the `at_console="false"` ones (nobody is
//! at a console here), then the mandatory ones, in file order within each. The **last**
//! rule that matches decides; no rule matching means denied. A connection gets its
//! list once, at HELLO ([`MsgPolicy::compile`]), shared with every connection of the
//! same user and groups.
//!
//! **Cost.** A list is indexed by the name a rule's party criterion names: a check
//! looks at the rules without one, at the rules of each name the other party holds,
//! and at the prefix rules, newest first in each, and keeps the newest that matches.
//! Rules about other names are never looked at, so a check does not get slower as
//! unrelated rules are added. Counting every matching rule (dbus-daemon reports the
//! count in its error text) walks the whole list, and is done for denials only.
//!
//! **What a rule can see.** The broker reads a message's D-Bus header into [`Facts`]
//! (the bridge does, through [`FactsReader`]). A native payload that is not a D-Bus
//! message has unknown facts: a rule that looks at an unknown field never allows
//! because of it, and always denies despite it, so a sender cannot get around a rule
//! by sending something the broker cannot read.

use crate::ids::ConnKey;
use crate::names::NameRegistry;
use std::collections::HashMap;
use std::sync::Arc;

/// D-Bus message types, as the header has them (0: any, or not known).
pub const METHOD_CALL: u8 = 1;
/// A reply to a method call.
pub const METHOD_RETURN: u8 = 2;
/// An error reply.
pub const ERROR: u8 = 3;
/// A signal; one without a destination is a broadcast.
pub const SIGNAL: u8 = 4;

/// The D-Bus header fields of one message, as far as the broker could read them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Facts<'a> {
    /// The header could be read. When not, every field below is unknown.
    pub known: bool,
    /// [`METHOD_CALL`], [`METHOD_RETURN`], [`ERROR`] or [`SIGNAL`].
    pub msg_type: u8,
    /// The PATH field, if the header has one.
    pub path: Option<&'a str>,
    /// The INTERFACE field; without it, only deny rules on an interface match.
    pub interface: Option<&'a str>,
    /// The MEMBER field, if the header has one.
    pub member: Option<&'a str>,
    /// The ERROR_NAME field, if the header has one.
    pub error: Option<&'a str>,
    /// The destination as sent (a unique or well-known name).
    pub destination: Option<&'a str>,
    /// The message answers another one (it has a reply serial).
    pub is_reply: bool,
    /// Fds the message carries (for a SEND, counted from its `FDS` item, whatever the
    /// header claims).
    pub fds: u32,
}

/// Reads the facts of a message from its first payload bytes (the bridge's D-Bus
/// header parser).
pub trait FactsReader: Send {
    /// The facts of the message whose payload starts with `payload`; `known: false` if
    /// it is not a readable D-Bus header.
    fn read<'a>(&self, payload: &'a [u8]) -> Facts<'a>;
}

/// The reader a domain has until the broker gives it one: every header unknown.
pub struct NoFacts;

impl FactsReader for NoFacts {
    fn read<'a>(&self, _: &'a [u8]) -> Facts<'a> {
        Facts::default()
    }
}

/// What a rule permits or forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// `send_*` rules: checked for the sender, against each receiver.
    Send,
    /// `receive_*` rules: checked for each receiver, against the sender.
    Receive,
    /// `own` and `own_prefix` rules: checked at NAME_ACQUIRE.
    Own,
}

/// The name criterion of a rule: a destination (send), a sender (receive), or the name
/// to own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameCrit {
    /// A unique name (`:1.<id>`).
    Unique(u64),
    /// A well-known name, matched if the party owns it or waits for it.
    Name(Arc<str>),
    /// The name or any name below it (`a.b` covers `a.b` and `a.b.c`, not `a.bc`).
    Prefix(Arc<str>),
}

/// One `<allow>` or `<deny>` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `<allow>` (true) or `<deny>`.
    pub allow: bool,
    /// Which checks the rule takes part in.
    pub act: Act,
    /// 0: any type.
    pub msg_type: u8,
    /// The object path, exactly (`send_path`, `receive_path`).
    pub path: Option<Arc<str>>,
    /// The interface, exactly.
    pub interface: Option<Arc<str>>,
    /// The member, exactly.
    pub member: Option<Arc<str>>,
    /// The error name, exactly.
    pub error: Option<Arc<str>>,
    /// The other party (`send_destination`, `receive_sender`), or the name to own.
    pub name: Option<NameCrit>,
    /// For replies: an allow rule with it set applies to requested replies only; a
    /// deny rule without it applies to unrequested replies only.
    pub requested_reply: bool,
    /// `eavesdrop="true"`: an allow rule then also lets a connection receive messages
    /// addressed to others; a deny rule is then about those only.
    pub eavesdrop: bool,
    /// `Some(true)`: broadcasts only, `Some(false)`: everything but broadcasts.
    pub broadcast: Option<bool>,
    /// Fewest fds a message must carry for the rule to match.
    pub min_fds: u32,
    /// Most fds a message may carry for the rule to match (`u32::MAX`: no bound).
    pub max_fds: u32,
    /// A send rule whose messages are let through but logged as ones that would be
    /// refused (dbus-daemon's `log="true"`, for policies being tightened).
    pub log: bool,
}

impl Rule {
    /// A rule of `act` that names nothing: every message (or name) matches it. Set
    /// fields to narrow it.
    pub fn new(allow: bool, act: Act) -> Self {
        Rule {
            allow,
            act,
            msg_type: 0,
            path: None,
            interface: None,
            member: None,
            error: None,
            name: None,
            // dbus-daemon's defaults: allow rules are about requested replies,
            // deny rules about unrequested ones.
            requested_reply: allow,
            eavesdrop: false,
            broadcast: None,
            min_fds: 0,
            max_fds: u32::MAX,
            log: false,
        }
    }

    /// Nothing narrows it but (perhaps) reply, eavesdrop, broadcast and fd
    /// conditions: every rule of its act before it is overridden (dbus-daemon
    /// drops them).
    fn is_catch_all(&self) -> bool {
        match self.act {
            Act::Own => self.name.is_none(),
            _ => {
                self.msg_type == 0
                    && self.path.is_none()
                    && self.interface.is_none()
                    && self.member.is_none()
                    && self.error.is_none()
                    && self.name.is_none()
            }
        }
    }
}

/// Whose rules they are (the `<policy>` context).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Context {
    /// `context="default"`: applies to everyone, judged first (anything later
    /// overrides it).
    Default,
    /// `context="mandatory"`: applies to everyone, judged last, so it overrides all.
    Mandatory,
    /// `user="..."`: connections of this uid.
    User(u32),
    /// `group="..."`: connections whose primary or supplementary groups include this gid.
    Group(u32),
    /// `at_console="true"` (never applies) or `"false"` (always applies).
    Console(bool),
}

/// A bus's whole message policy, as configured.
#[derive(Clone, Debug, Default)]
pub struct MsgPolicy {
    default: Vec<Rule>,
    mandatory: Vec<Rule>,
    console_false: Vec<Rule>,
    by_uid: HashMap<u32, Vec<Rule>>,
    by_gid: HashMap<u32, Vec<Rule>>,
    /// Compiled lists by (uid, groups that have rules): connections of one user share.
    compiled: HashMap<(u32, Vec<u32>), Arc<ConnRules>>,
}

impl MsgPolicy {
    /// A policy without rules: every check it makes denies.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `rule` to the rules of `ctx`, after those already there.
    pub fn push(&mut self, ctx: Context, rule: Rule) {
        let list = match ctx {
            Context::Default => &mut self.default,
            Context::Mandatory => &mut self.mandatory,
            Context::Console(false) => &mut self.console_false,
            Context::Console(true) => return,
            Context::User(u) => self.by_uid.entry(u).or_default(),
            Context::Group(g) => self.by_gid.entry(g).or_default(),
        };
        list.push(rule);
        self.compiled.clear();
    }

    /// How many rules it has in all.
    pub fn len(&self) -> usize {
        let ids = self.by_uid.values().chain(self.by_gid.values());
        self.default.len()
            + self.mandatory.len()
            + self.console_false.len()
            + ids.map(Vec::len).sum::<usize>()
    }

    /// Whether it has no rules at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rules that apply to a connection of `uid` in groups `gids` (primary group
    /// included), in the order they are judged.
    pub fn compile(&mut self, uid: u32, gids: &[u32]) -> Arc<ConnRules> {
        let mut groups: Vec<u32> = gids
            .iter()
            .copied()
            .filter(|g| self.by_gid.contains_key(g))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        let key = (uid, groups);
        if let Some(c) = self.compiled.get(&key) {
            return c.clone();
        }
        let mut rules: Vec<&Rule> = self.default.iter().collect();
        // dbus-daemon takes a user's groups in the order the system lists them; the
        // order only matters between rules of two groups that contradict each other.
        for g in &key.1 {
            rules.extend(self.by_gid.get(g).into_iter().flatten());
        }
        rules.extend(self.by_uid.get(&uid).into_iter().flatten());
        rules.extend(&self.console_false);
        rules.extend(&self.mandatory);
        let c = Arc::new(ConnRules::new(rules));
        self.compiled.insert(key, c.clone());
        c
    }
}

/// One act's rules, indexed by their name criterion. Each rule keeps its position in
/// the connection's list: the highest matching position decides.
#[derive(Debug, Default)]
struct Index {
    rules: Vec<Rule>,
    /// Positions (into `rules`) of rules without a name criterion, ascending.
    any: Vec<u32>,
    by_name: HashMap<Arc<str>, Vec<u32>>,
    by_unique: HashMap<u64, Vec<u32>>,
    prefixed: Vec<u32>,
}

impl Index {
    fn new(rules: Vec<Rule>) -> Self {
        let mut ix = Index::default();
        for (i, r) in rules.iter().enumerate() {
            let i = i as u32;
            match &r.name {
                None => ix.any.push(i),
                Some(NameCrit::Name(n)) => ix.by_name.entry(n.clone()).or_default().push(i),
                Some(NameCrit::Unique(u)) => ix.by_unique.entry(*u).or_default().push(i),
                Some(NameCrit::Prefix(_)) => ix.prefixed.push(i),
            }
        }
        ix.rules = rules;
        ix
    }

    /// The newest rule that matches, judged by `m` for everything but the name, and
    /// by `party` for the name.
    fn decide(&self, party: &Party<'_>, m: &dyn Fn(&Rule) -> bool) -> Option<&Rule> {
        let newest = |list: &[u32]| {
            list.iter()
                .rev()
                .copied()
                .find(|&i| m(&self.rules[i as usize]))
        };
        let mut best = newest(&self.any);
        let mut consider = |i: Option<u32>| best = best.max(i);
        match party {
            Party::Conn { id, key, names } => {
                if let Some(l) = self.by_unique.get(id) {
                    consider(newest(l));
                }
                if !self.by_name.is_empty() {
                    for n in names.held_by(*key) {
                        if let Some(l) = self.by_name.get(n) {
                            consider(newest(l));
                        }
                    }
                }
            }
            Party::Named(n) => {
                if let Some(l) = n.and_then(|n| self.by_name.get(n)) {
                    consider(newest(l));
                }
            }
        }
        let prefix = self.prefixed.iter().rev().copied().find(|&i| {
            let r = &self.rules[i as usize];
            matches!(&r.name, Some(NameCrit::Prefix(p)) if party.holds_under(p)) && m(r)
        });
        consider(prefix);
        best.map(|i| &self.rules[i as usize])
    }

    /// How many rules match (dbus-daemon's "matched rules" in its denial text).
    fn count(&self, party: &Party<'_>, m: &dyn Fn(&Rule) -> bool) -> u32 {
        self.rules
            .iter()
            .filter(|r| party.fits(r.name.as_ref()) && m(r))
            .count() as u32
    }
}

/// The other party of a check: a connection (by the names it holds), or the bus
/// driver, known only by the name in the message.
pub enum Party<'a> {
    /// A connection, judged by its unique id and the names it owns or waits for.
    Conn {
        /// Its key, under which `names` knows what it holds.
        key: ConnKey,
        /// Its unique id, for [`NameCrit::Unique`] rules.
        id: u64,
        /// Its bus's name registry.
        names: &'a NameRegistry,
    },
    /// The bus itself: the destination (send) or sender (receive) as written.
    Named(Option<&'a str>),
}

impl Party<'_> {
    fn holds(&self, name: &str) -> bool {
        match self {
            Party::Conn { key, names, .. } => names.held_by(*key).any(|n| &**n == name),
            Party::Named(n) => *n == Some(name),
        }
    }

    fn holds_under(&self, prefix: &str) -> bool {
        let under = |n: &str| {
            n.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        match self {
            Party::Conn { key, names, .. } => names.held_by(*key).any(|n| under(n)),
            Party::Named(n) => n.is_some_and(under),
        }
    }

    fn fits(&self, crit: Option<&NameCrit>) -> bool {
        match crit {
            None => true,
            Some(NameCrit::Name(n)) => self.holds(n),
            Some(NameCrit::Prefix(p)) => self.holds_under(p),
            Some(NameCrit::Unique(u)) => matches!(self, Party::Conn { id, .. } if id == u),
        }
    }
}

/// A denial: which act, and how many rules matched (for the error text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denial {
    /// The act that was refused.
    pub act: Act,
    /// How many rules matched, allow and deny (dbus-daemon's "N matched rules").
    pub matched: u32,
    /// The message was a reply the receiver had asked for.
    pub requested_reply: bool,
}

/// The rules that apply to one connection, by act.
#[derive(Debug, Default)]
pub struct ConnRules {
    send: Index,
    receive: Index,
    own: Index,
}

impl ConnRules {
    fn new(rules: Vec<&Rule>) -> Self {
        let of = |act: Act| {
            let mine: Vec<&Rule> = rules.iter().copied().filter(|r| r.act == act).collect();
            // Rules before the last catch-all of their act can never decide.
            let from = mine.iter().rposition(|r| r.is_catch_all()).unwrap_or(0);
            Index::new(mine[from..].iter().map(|r| (*r).clone()).collect())
        };
        ConnRules {
            send: of(Act::Send),
            receive: of(Act::Receive),
            own: of(Act::Own),
        }
    }

    /// May this connection own `name`?
    pub fn may_own(&self, name: &str) -> bool {
        let party = Party::Named(Some(name));
        self.own.decide(&party, &|_| true).is_some_and(|r| r.allow)
    }

    /// May this connection send `m` to `to` (for a broadcast: to this receiver)?
    /// `Ok(true)`: yes, but the rule that decided asks for it to be logged.
    pub fn may_send(&self, m: &Facts<'_>, to: &Party<'_>, requested: bool) -> Result<bool, Denial> {
        let broadcast = m.known && m.msg_type == SIGNAL && m.destination.is_none();
        let fits = |r: &Rule| {
            let broadcast_ok = match r.broadcast {
                None => true,
                Some(_) if !m.known => !r.allow,
                Some(b) => b == broadcast,
            };
            broadcast_ok && message_fits(r, m, requested)
        };
        judge(&self.send, to, &fits, Act::Send, requested)
    }

    /// May this connection receive `m` from `from`? `eavesdrop`: it is not the
    /// message's addressee.
    pub fn may_receive(
        &self,
        m: &Facts<'_>,
        from: &Party<'_>,
        requested: bool,
        eavesdrop: bool,
    ) -> Result<(), Denial> {
        let fits = |r: &Rule| {
            // For allow rules, eavesdropping needs eavesdrop="true"; a deny rule with
            // eavesdrop="true" is about eavesdropping only.
            let eaves_ok = if r.allow {
                !eavesdrop || r.eavesdrop
            } else {
                eavesdrop || !r.eavesdrop
            };
            eaves_ok && message_fits(r, m, requested)
        };
        judge(&self.receive, from, &fits, Act::Receive, requested).map(|_| ())
    }
}

fn judge(
    ix: &Index,
    party: &Party<'_>,
    fits: &dyn Fn(&Rule) -> bool,
    act: Act,
    requested_reply: bool,
) -> Result<bool, Denial> {
    if let Some(r) = ix.decide(party, fits).filter(|r| r.allow) {
        return Ok(r.log);
    }
    Err(Denial {
        act,
        matched: ix.count(party, fits),
        requested_reply,
    })
}

/// Does the message part of rule `r` (everything but the party) match `m`? Fields the
/// broker could not read count against the sender: they never let an allow rule
/// match, and never keep a deny rule from matching.
fn message_fits(r: &Rule, m: &Facts<'_>, requested: bool) -> bool {
    let unknown_ok = !r.allow;
    if r.msg_type != 0
        && !(if m.known {
            m.msg_type == r.msg_type
        } else {
            unknown_ok
        })
    {
        return false;
    }
    if m.is_reply {
        // An allow rule with requested_reply applies to requested replies only
        // (unless it allows eavesdropping); a deny rule without it, to unrequested
        // ones only.
        if !requested && r.allow && r.requested_reply && !r.eavesdrop {
            return false;
        }
        if requested && !r.allow && !r.requested_reply {
            return false;
        }
    }
    // A message without the field matches path, member and error criteria (as in
    // dbus-daemon); one without an interface matches only deny rules.
    let field = |crit: &Option<Arc<str>>, have: Option<&str>| match crit {
        None => true,
        Some(_) if !m.known => unknown_ok,
        Some(c) => have.is_none_or(|h| h == &**c),
    };
    let interface_ok = match &r.interface {
        None => true,
        Some(_) if !m.known => unknown_ok,
        Some(c) => m.interface.map_or(!r.allow, |i| i == &**c),
    };
    if !(field(&r.path, m.path)
        && interface_ok
        && field(&r.member, m.member)
        && field(&r.error, m.error))
    {
        return false;
    }
    if r.min_fds > 0 || r.max_fds != u32::MAX {
        return m.fds >= r.min_fds && m.fds <= r.max_fds;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(dest: Option<&'a str>, iface: &'a str, member: &'a str) -> Facts<'a> {
        Facts {
            known: true,
            msg_type: METHOD_CALL,
            path: Some("/"),
            interface: Some(iface),
            member: Some(member),
            destination: dest,
            ..Default::default()
        }
    }

    fn to(name: &str) -> Party<'_> {
        Party::Named(Some(name))
    }

    fn send_rule(allow: bool, dest: Option<&str>, iface: Option<&str>) -> Rule {
        let mut r = Rule::new(allow, Act::Send);
        r.name = dest.map(|d| NameCrit::Name(d.into()));
        r.interface = iface.map(Into::into);
        r
    }

    #[test]
    fn the_last_matching_rule_decides_and_none_denies() {
        let mut p = MsgPolicy::new();
        p.push(Context::Default, send_rule(true, None, None));
        p.push(Context::Default, send_rule(false, Some("a.b"), None));
        p.push(
            Context::Default,
            send_rule(true, Some("a.b"), Some("a.b.Open")),
        );
        let c = p.compile(1000, &[1000]);
        let m = call(Some("a.b"), "a.b.Open", "X");
        assert!(c.may_send(&m, &to("a.b"), false).is_ok());
        let m2 = call(Some("a.b"), "a.b.Secret", "X");
        let d = c.may_send(&m2, &to("a.b"), false).unwrap_err();
        assert_eq!(d.matched, 2);
        assert!(c.may_send(&m2, &to("c.d"), false).is_ok());
        assert!(MsgPolicy::new()
            .compile(0, &[])
            .may_send(&m, &to("a.b"), false)
            .is_err());
    }

    #[test]
    fn user_rules_come_after_group_rules_and_mandatory_after_all() {
        let mut p = MsgPolicy::new();
        let own = |allow, name: &str| {
            let mut r = Rule::new(allow, Act::Own);
            r.name = Some(NameCrit::Name(name.into()));
            r
        };
        p.push(Context::User(5), own(true, "x.y"));
        p.push(Context::Group(7), own(false, "x.y"));
        p.push(Context::Mandatory, own(false, "x.z"));
        p.push(Context::User(5), own(true, "x.z"));
        p.push(Context::Console(true), own(true, "x.w"));
        assert!(p.compile(5, &[7]).may_own("x.y"));
        assert!(!p.compile(6, &[7]).may_own("x.y"));
        assert!(!p.compile(5, &[]).may_own("x.z"));
        assert!(!p.compile(5, &[]).may_own("x.w"));
        let mut pre = Rule::new(true, Act::Own);
        pre.name = Some(NameCrit::Prefix("org.pre".into()));
        p.push(Context::Default, pre);
        let c = p.compile(9, &[]);
        assert!(c.may_own("org.pre") && c.may_own("org.pre.a.b"));
        assert!(!c.may_own("org.prefix"));
    }

    #[test]
    fn replies_follow_requested_reply() {
        let mut p = MsgPolicy::new();
        let mut r = Rule::new(true, Act::Send);
        r.msg_type = METHOD_RETURN;
        p.push(Context::Default, r);
        let c = p.compile(1, &[]);
        let reply = Facts {
            known: true,
            msg_type: METHOD_RETURN,
            is_reply: true,
            ..Default::default()
        };
        assert!(c.may_send(&reply, &to("x"), true).is_ok());
        assert!(c.may_send(&reply, &to("x"), false).is_err());
    }

    #[test]
    fn unknown_facts_never_allow_by_a_field_and_never_escape_a_deny() {
        let mut p = MsgPolicy::new();
        p.push(Context::Default, send_rule(true, None, Some("a.Allowed")));
        let c = p.compile(1, &[]);
        let opaque = Facts::default();
        assert!(c.may_send(&opaque, &to("x"), false).is_err());
        let mut p = MsgPolicy::new();
        p.push(Context::Default, send_rule(true, None, None));
        p.push(Context::Default, send_rule(false, None, Some("a.Denied")));
        let c = p.compile(1, &[]);
        assert!(c.may_send(&opaque, &to("x"), false).is_err());
        assert!(c
            .may_send(&call(None, "a.Other", "M"), &to("x"), false)
            .is_ok());
    }

    #[test]
    fn a_deny_on_an_interface_catches_messages_without_one() {
        let mut p = MsgPolicy::new();
        p.push(Context::Default, send_rule(true, None, None));
        p.push(Context::Default, send_rule(false, None, Some("a.I")));
        let c = p.compile(1, &[]);
        let mut m = call(None, "a.I", "M");
        m.interface = None;
        assert!(c.may_send(&m, &to("x"), false).is_err());
    }

    /// Against a plain walk over the whole list (dbus-daemon's algorithm), on many
    /// rule sets: the index gives the same answer.
    #[test]
    fn the_index_agrees_with_a_walk() {
        let names = ["a", "a.b", "a.b.c", "d"];
        let ifaces = [None, Some("i.X"), Some("i.Y")];
        let mut seed = 12345u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for _ in 0..300 {
            let mut rules = Vec::new();
            for _ in 0..next(12) {
                let mut r = Rule::new(next(2) == 0, Act::Send);
                r.interface = ifaces[next(3)].map(Into::into);
                r.name = match next(4) {
                    0 => None,
                    1 => Some(NameCrit::Prefix(names[next(4)].into())),
                    _ => Some(NameCrit::Name(names[next(4)].into())),
                };
                rules.push(r);
            }
            let mut p = MsgPolicy::new();
            for r in &rules {
                p.push(Context::Default, r.clone());
            }
            let c = p.compile(1, &[]);
            for dest in names {
                for iface in ["i.X", "i.Y", "i.Z"] {
                    let m = call(Some(dest), iface, "M");
                    let party = to(dest);
                    let walk = rules
                        .iter()
                        .rev()
                        .find(|r| party.fits(r.name.as_ref()) && message_fits(r, &m, false))
                        .is_some_and(|r| r.allow);
                    assert_eq!(
                        c.may_send(&m, &party, false).is_ok(),
                        walk,
                        "{rules:?} {dest} {iface}"
                    );
                }
            }
        }
    }
}
