//! D-Bus match rules (`AddMatch`): parsing, and matching against a message.
//!
//! A rule is `key='value'` pairs separated by commas; every key present must match.
//! Values are quoted with `'`; inside quotes nothing is special, outside them `\'` is a
//! literal quote. Keys and limits as the specification and dbus-daemon have them.

use crate::bloom::{match_mask, signal_filter, Bloom, BloomParameter, MatchSpec, SignalSpec};
use crate::header::{Header, MessageType};
use crate::marshal::{Endian, Reader};
use crate::names;
use thiserror::Error;

/// Longest rule dbus-daemon accepts.
pub const MAX_RULE_LEN: usize = 1024;
// No rule may name a value longer than a signal's filter holds (bloom::VALUE_MAX).
const _: () = assert!(MAX_RULE_LEN <= crate::bloom::VALUE_MAX);
/// Highest argument index a rule may test.
pub const MAX_ARG: usize = 63;

/// Why a rule does not parse, in dbus-daemon's words (clients show them).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct RuleError(pub String);

fn bad<T>(text: impl Into<String>) -> Result<T, RuleError> {
    Err(RuleError(text.into()))
}

/// What an `argN...` key tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgTest {
    /// `argN='v'`: the argument is the string `v`.
    Equals(String),
    /// `argNpath='v'`: equal, or one is a `/`-terminated prefix of the other.
    Path(String),
    /// `arg0namespace='v'`: the argument is `v` or starts with `v.`.
    Namespace(String),
}

/// A parsed match rule: each key that is set must match for a message to match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// `type=`: the message type.
    pub msg_type: Option<MessageType>,
    /// `sender=`: the sender's unique name, or a well-known name it owns.
    pub sender: Option<String>,
    /// `interface=`: the `INTERFACE` header field.
    pub interface: Option<String>,
    /// `member=`: the `MEMBER` header field.
    pub member: Option<String>,
    /// `path=`: the `PATH` header field, exactly.
    pub path: Option<String>,
    /// `path_namespace=`: the `PATH` is this path or below it.
    pub path_namespace: Option<String>,
    /// `destination=`: the `DESTINATION` header field.
    pub destination: Option<String>,
    /// (argument index, test), ordered by index.
    pub args: Vec<(u8, ArgTest)>,
    /// `eavesdrop='true'`: the rule also asks for messages addressed to other connections.
    pub eavesdrop: bool,
}

/// Split `key='value',...` into pairs, unescaping values.
fn pairs(s: &str) -> Result<Vec<(String, String)>, RuleError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        let mut eq = false;
        for c in chars.by_ref() {
            if c == '=' {
                eq = true;
                break;
            }
            key.push(c);
        }
        let key = key.trim().to_string();
        if key.is_empty() || !eq {
            return bad("Match rule has a key with no subsequent '=' character");
        }
        let mut value = String::new();
        let mut quoted = false;
        let mut ended = false;
        while let Some(c) = chars.next() {
            match (quoted, c) {
                (true, '\'') => quoted = false,
                (true, c) => value.push(c),
                (false, '\'') => quoted = true,
                (false, '\\') if chars.peek() == Some(&'\'') => {
                    chars.next();
                    value.push('\'');
                }
                (false, ',') => {
                    ended = true;
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        if quoted {
            return bad("Unbalanced quotation marks in match rule");
        }
        out.push((key, value));
        if !ended {
            break;
        }
    }
    Ok(out)
}

/// The rule in dbus-daemon's words (what `GetAllMatchRules` lists): its keys in
/// dbus-daemon's order, values quoted, a quote inside one written `'\''`.
impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        let mut pair = |f: &mut std::fmt::Formatter<'_>, key: &str, v: &str| {
            let sep = if first { "" } else { "," };
            first = false;
            write!(f, "{sep}{key}='{}'", v.replace('\'', "'\\''"))
        };
        if let Some(t) = self.msg_type {
            pair(f, "type", t.name())?;
        }
        let keyed = [
            ("interface", &self.interface),
            ("member", &self.member),
            ("path", &self.path),
            ("path_namespace", &self.path_namespace),
            ("sender", &self.sender),
            ("destination", &self.destination),
        ];
        for (key, v) in keyed {
            if let Some(v) = v {
                pair(f, key, v)?;
            }
        }
        if self.eavesdrop {
            pair(f, "eavesdrop", "true")?;
        }
        for (i, test) in &self.args {
            let (suffix, v) = match test {
                ArgTest::Equals(v) => ("", v),
                ArgTest::Path(v) => ("path", v),
                ArgTest::Namespace(v) => ("namespace", v),
            };
            pair(f, &format!("arg{i}{suffix}"), v)?;
        }
        Ok(())
    }
}

/// The bloom filter a broadcast signal (header `h`, `body`) carries on the bus: its
/// interface, member, path and every string-like argument at its position.
pub fn signal_bloom(p: BloomParameter, h: &Header<'_>, body: &[u8]) -> Bloom {
    let args: Vec<Option<&str>> = string_args(body, h.endian, h.signature, 64)
        .into_iter()
        .map(|a| a.map(|(_, v)| v))
        .collect();
    let spec = SignalSpec {
        interface: h.interface,
        member: h.member,
        path: h.path,
        args: &args,
    };
    signal_filter(p, &spec)
}

impl Rule {
    /// The bloom mask a broadcast must cover to be worth this rule's full check (none:
    /// the rule has no bloom part). `argNpath` also matches shorter values ending in
    /// '/', which the prefix convention does not cover: it stays out of the mask.
    pub fn bloom_mask(&self, p: BloomParameter) -> Option<Bloom> {
        let pick = |want: fn(&ArgTest) -> Option<&str>| -> Vec<(u8, &str)> {
            self.args
                .iter()
                .filter_map(|(i, t)| want(t).map(|v| (*i, v)))
                .collect()
        };
        let args = pick(|t| match t {
            ArgTest::Equals(v) => Some(v),
            _ => None,
        });
        let namespaces = pick(|t| match t {
            ArgTest::Namespace(v) => Some(v),
            _ => None,
        });
        let spec = MatchSpec {
            message_type: self.msg_type.map(MessageType::name),
            interface: self.interface.as_deref(),
            member: self.member.as_deref(),
            path: self.path.as_deref(),
            path_namespace: self.path_namespace.as_deref(),
            args: &args,
            arg_paths: &[],
            arg_namespaces: &namespaces,
        };
        match_mask(p, &spec)
    }

    /// Parse a rule string.
    pub fn parse(s: &str) -> Result<Rule, RuleError> {
        if s.len() > MAX_RULE_LEN {
            return bad(format!(
                "Match rule text is {} bytes, maximum is {MAX_RULE_LEN}",
                s.len()
            ));
        }
        let mut r = Rule::default();
        let mut seen = std::collections::HashSet::new();
        for (k, v) in pairs(s)? {
            let path_key = k == "path" || k == "path_namespace";
            if path_key && (r.path.is_some() || r.path_namespace.is_some()) {
                return bad("path or path_namespace specified twice in match rule\n");
            }
            if !seen.insert(k.clone()) && k != "eavesdrop" {
                return bad(if k.starts_with("arg") {
                    format!("Argument {k} matched more than once in match rule\n")
                } else {
                    format!("Key {k} specified twice in match rule\n")
                });
            }
            match k.as_str() {
                "type" => {
                    r.msg_type = Some(match v.as_str() {
                        "signal" => MessageType::Signal,
                        "method_call" => MessageType::MethodCall,
                        "method_return" => MessageType::MethodReturn,
                        "error" => MessageType::Error,
                        _ => return bad(format!("Invalid message type ({v}) in match rule\n")),
                    })
                }
                "sender" => {
                    if !names::is_bus_name(&v) && v != "org.freedesktop.DBus" {
                        return bad(format!("Sender name '{v}' is invalid\n"));
                    }
                    r.sender = Some(v);
                }
                "interface" => {
                    if !names::is_interface(&v) {
                        return bad(format!("Interface name '{v}' is invalid\n"));
                    }
                    r.interface = Some(v);
                }
                "member" => {
                    if !names::is_member(&v) {
                        return bad(format!("Member name '{v}' is invalid\n"));
                    }
                    r.member = Some(v);
                }
                "path" | "path_namespace" => {
                    if !names::is_object_path(&v) {
                        return bad(format!("Path '{v}' is invalid\n"));
                    }
                    if k == "path" {
                        r.path = Some(v);
                    } else {
                        r.path_namespace = Some(v);
                    }
                }
                "destination" => {
                    if !names::is_bus_name(&v) {
                        return bad(format!("Destination name '{v}' is invalid\n"));
                    }
                    r.destination = Some(v);
                }
                "eavesdrop" => {
                    r.eavesdrop = match v.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return bad(format!(
                                "eavesdrop='{v}' is invalid, it should be 'true' or 'false'\n"
                            ))
                        }
                    }
                }
                _ => {
                    let (i, test) = parse_arg_key(&k, v)?;
                    if r.args.iter().any(|(j, _)| *j == i) {
                        return bad(format!(
                            "Argument {k} matched more than once in match rule\n"
                        ));
                    }
                    r.args.push((i, test));
                }
            }
        }
        r.args.sort_by_key(|(i, _)| *i);
        Ok(r)
    }

    /// Whether the message with header `h` (sent by `sender`, whose names `owns` tells)
    /// and `body` matches. `owns(name)` answers whether the sender owns a well-known
    /// name.
    pub fn matches(
        &self,
        h: &Header<'_>,
        sender: &str,
        owns: &dyn Fn(&str) -> bool,
        body: &[u8],
    ) -> bool {
        if self.msg_type.is_some_and(|t| t != h.msg_type) {
            return false;
        }
        if let Some(s) = &self.sender {
            let ok = if s.starts_with(':') || s == "org.freedesktop.DBus" {
                s == sender
            } else {
                s == sender || owns(s)
            };
            if !ok {
                return false;
            }
        }
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == have)
        };
        if !eq(&self.interface, h.interface)
            || !eq(&self.member, h.member)
            || !eq(&self.path, h.path)
        {
            return false;
        }
        if !eq(&self.destination, h.destination) {
            return false;
        }
        if let Some(ns) = &self.path_namespace {
            let Some(p) = h.path else { return false };
            let inside = ns == "/"
                || p == ns
                || p.strip_prefix(ns.as_str())
                    .is_some_and(|r| r.starts_with('/'));
            if !inside {
                return false;
            }
        }
        if self.args.is_empty() {
            return true;
        }
        let max = self.args.last().map_or(0, |a| a.0 as usize);
        let args = string_args(body, h.endian, h.signature, max + 1);
        self.args.iter().all(|(i, t)| {
            let Some(Some((kind, v))) = args.get(*i as usize) else {
                return false;
            };
            match t {
                ArgTest::Equals(w) => *kind == b's' && v == w,
                ArgTest::Path(w) => {
                    (*kind == b's' || *kind == b'o')
                        && (v == w
                            || (w.ends_with('/') && v.starts_with(w.as_str()))
                            || (v.ends_with('/') && w.starts_with(*v)))
                }
                ArgTest::Namespace(w) => {
                    *kind == b's'
                        && (v == w
                            || v.strip_prefix(w.as_str())
                                .is_some_and(|r| r.starts_with('.')))
                }
            }
        })
    }

    /// Whether this rule could ever match a message not addressed to its owner: rules
    /// without `eavesdrop` only see broadcasts and what is sent to the owner.
    pub fn is_eavesdropping(&self) -> bool {
        self.eavesdrop
    }
}

fn parse_arg_key(k: &str, v: String) -> Result<(u8, ArgTest), RuleError> {
    let Some(rest) = k.strip_prefix("arg") else {
        return bad(format!("Unknown key \"{k}\" in match rule"));
    };
    let example = "Should be 'arg0' or 'arg7' for example.\n";
    if rest.is_empty() {
        return bad(format!(
            "Key '{k}' in match rule starts with 'arg' but lacks an arg number. {example}"
        ));
    }
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let Ok(n) = digits.parse::<usize>() else {
        return bad(format!(
            "Key '{k}' in match rule starts with 'arg' but could not parse arg number. {example}"
        ));
    };
    if n > MAX_ARG {
        return bad(format!(
            "Key '{k}' in match rule has arg number {n} but the maximum is {MAX_ARG}.\n"
        ));
    }
    let test = match &rest[digits.len()..] {
        "" => ArgTest::Equals(v),
        "path" => ArgTest::Path(v),
        "namespace" if n == 0 => {
            if !names::is_bus_name(&v) && !names::is_interface(&v) && !is_namespace_prefix(&v) {
                return bad(format!(
                    "arg0namespace='{v}' is not a valid prefix of a bus name"
                ));
            }
            ArgTest::Namespace(v)
        }
        _ => {
            return bad(format!(
                "Key '{k}' in match rule contains junk after argument number ({n}). Only 'arg{n}path' (for example) or 'arg0namespace' are valid"
            ))
        }
    };
    Ok((n as u8, test))
}

/// A single-element namespace such as `org` is allowed for arg0namespace.
fn is_namespace_prefix(v: &str) -> bool {
    !v.is_empty()
        && v.split('.').all(|e| {
            !e.is_empty()
                && e.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        })
}

/// The first `n` top-level arguments of a body: `Some((type, value))` for strings and
/// object paths, `None` for other types; stops at the first malformed value.
pub fn string_args<'a>(
    body: &'a [u8],
    endian: Endian,
    signature: &str,
    n: usize,
) -> Vec<Option<(u8, &'a str)>> {
    let mut out = Vec::new();
    let mut r = Reader::new(body, endian);
    let mut sig = signature.as_bytes();
    while out.len() < n && !sig.is_empty() {
        match sig[0] {
            t @ (b's' | b'o') => {
                let v = if t == b's' {
                    r.string()
                } else {
                    r.object_path()
                };
                match v {
                    Ok(v) => out.push(Some((t, v))),
                    Err(_) => break,
                }
                sig = &sig[1..];
            }
            _ => match r.skip(sig, 0) {
                Ok(rest) => {
                    out.push(None);
                    sig = rest;
                }
                Err(_) => break,
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {

    /// A rule prints as dbus-daemon lists it: its keys in dbus-daemon's order, quotes
    /// escaped its way, and it parses back to itself.
    #[test]
    fn a_rule_prints_in_dbus_daemons_words() {
        let text = "arg1path='/a/',member='M',eavesdrop='true',sender='org.x',\
                    type='signal',arg0='it'\\''s',interface='org.I'";
        let r = Rule::parse(text).unwrap();
        let shown = r.to_string();
        assert_eq!(
            shown,
            "type='signal',interface='org.I',member='M',sender='org.x',eavesdrop='true',\
             arg0='it'\\''s',arg1path='/a/'"
        );
        assert_eq!(Rule::parse(&shown).unwrap(), r);
        assert_eq!(Rule::parse("").unwrap().to_string(), "");
    }

    use super::*;
    use crate::header::{parse, write_fields, Fields};
    use crate::marshal::Writer;

    #[test]
    fn parse_rules() {
        let r = Rule::parse("type='signal',sender='org.x',interface='org.x.I',member='M',path_namespace='/a',arg0='x',arg2path='/p/',arg0namespace='org'")
            .unwrap_err();
        assert_eq!(
            r,
            RuleError("Argument arg0namespace matched more than once in match rule\n".into())
        );
        let r = Rule::parse("type='signal', interface='org.x.I',arg1='it''s',eavesdrop='true'")
            .unwrap();
        assert_eq!(r.args, vec![(1, ArgTest::Equals("its".into()))]);
        assert!(r.eavesdrop);
        let r = Rule::parse(r"arg0=don\'t").unwrap();
        assert_eq!(r.args, vec![(0, ArgTest::Equals("don't".into()))]);
        for bad in [
            "foo='x'",
            "type='x'",
            "path='a'",
            "path='/a',path_namespace='/a'",
            "arg64='x'",
            "arg1namespace='a'",
            "type='signal',type='signal'",
            "member='a'b",
        ] {
            let r = Rule::parse(bad);
            if bad == "member='a'b" {
                assert!(r.is_ok(), "adjacent text continues the value");
                continue;
            }
            assert!(r.is_err(), "{bad}");
        }
        assert!(Rule::parse(&"a".repeat(1025)).is_err());
        assert_eq!(Rule::parse("").unwrap(), Rule::default());
    }

    fn signal(path: &str, args: &[&str]) -> Vec<u8> {
        let mut body = Vec::new();
        let mut w = Writer::new(&mut body, Endian::Little);
        for a in args {
            w.string(a);
        }
        let sig = "s".repeat(args.len());
        let mut out = Vec::new();
        let f = Fields {
            path: Some(path),
            interface: Some("org.x.I"),
            member: Some("M"),
            signature: &sig,
            ..Default::default()
        };
        write_fields(
            &mut out,
            Endian::Little,
            MessageType::Signal,
            0,
            body.len() as u32,
            1,
            &f,
        );
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn matching() {
        let m = signal("/a/b", &["org.x.Y", "/p/q"]);
        let h = parse(&m).unwrap();
        let body = &m[h.header_len..];
        let no = |_: &str| false;
        let t = |rule: &str| Rule::parse(rule).unwrap().matches(&h, ":1.5", &no, body);
        assert!(t("type='signal',interface='org.x.I',member='M'"));
        assert!(
            t("path_namespace='/a'")
                && t("path_namespace='/'")
                && !t("path_namespace='/a/b/c'")
                && !t("path_namespace='/a/bb'")
        );
        assert!(t("arg0='org.x.Y'") && !t("arg0='org.x'"));
        assert!(
            t("arg0namespace='org.x'") && t("arg0namespace='org'") && !t("arg0namespace='org.xx'")
        );
        assert!(t("arg1path='/p/'") && t("arg1path='/p/q'") && !t("arg1path='/p'"));
        assert!(t("sender=':1.5'") && !t("sender=':1.6'") && !t("sender='org.x'"));
        assert!(!t("arg2='x'"));
        let owns = |n: &str| n == "org.x";
        assert!(Rule::parse("sender='org.x'")
            .unwrap()
            .matches(&h, ":1.5", &owns, body));
    }
}
