//! Bloom filters the way sd-bus computes them, so that native clients, the D-Bus front
//! and sd-bus agree bit for bit.
//!
//! The bus never hashes anything: a signal carries a filter, a match carries a mask, and
//! the bus delivers when every bit of the mask is set in the filter. What goes into them
//! is this convention (systemd `bus-bloom.c`): each element is a string `"key:value"`,
//! hashed with SipHash-2-4 under a fixed sequence of eight keys; the concatenated
//! little-endian output bytes are cut into `w`-byte big-endian bit indexes (`w` bytes
//! enough to index `m` bits), `k` of them per element.

pub use kdbus_abi::BloomParameter;
use siphasher::sip::SipHasher24;
use std::hash::Hasher;

/// sd-bus's hash keys, in the order they are used.
const HASH_KEYS: [[u8; 16]; 8] = [
    hex16("b9660bf0467047c18875c49c54b9bd15"),
    hex16("aaa154a2e0714b39bfe1dd2e9fc54a3b"),
    hex16("63fdaebecd824812a16e4126cbfaa0c8"),
    hex16("23be452932d2462d82035228fe3717f5"),
    hex16("563bbfee5a4f4339afaa9408dff0fc10"),
    hex16("3180c873c7ea46d3aa25750f9e4c0929"),
    hex16("7df7184b7ba444d5853c06e06553966d"),
    hex16("f277e96f93b54e719a0c34883925bf35"),
];

const fn hex16(s: &str) -> [u8; 16] {
    let b = s.as_bytes();
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => 0,
    }
}

/// SipHash-2-4 of `data` under a 128-bit key, as the reference implementation defines it.
pub fn siphash24(data: &[u8], key: &[u8; 16]) -> u64 {
    let mut h = SipHasher24::new_with_key(key);
    h.write(data);
    h.finish()
}

/// A bloom filter (for a signal) or mask (for a match), of the bus's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bloom {
    words: Vec<u64>,
    n_hash: u32,
}

impl Bloom {
    /// An empty filter for a bus with these parameters (size in bytes, hash count).
    pub fn new(p: BloomParameter) -> Bloom {
        Bloom {
            words: vec![0; (p.size / 8).max(1) as usize],
            n_hash: p.n_hash.max(1) as u32,
        }
    }

    /// The filter's bits as 64-bit words.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// The filter as bytes, native-endian words, as the bus wants them.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    /// Whether every bit of `mask` is set here (what the bus checks).
    pub fn covers(&self, mask: &Bloom) -> bool {
        self.words.len() == mask.words.len()
            && self.words.iter().zip(&mask.words).all(|(f, m)| f & m == *m)
    }

    /// Add one element (sd-bus `bloom_add_data`).
    pub fn add(&mut self, data: &[u8]) {
        let m = self.words.len() as u64 * 64;
        let w = (m.ilog2() as usize).div_ceil(8).max(1);
        let mut key = 0;
        let mut hash = [0u8; 8];
        let mut left = 0;
        for _ in 0..self.n_hash {
            let mut p: u64 = 0;
            for _ in 0..w {
                if left == 0 {
                    let Some(k) = HASH_KEYS.get(key) else { return };
                    hash = siphash24(data, k).to_le_bytes();
                    key += 1;
                    left = 8;
                }
                p = (p << 8) | hash[8 - left] as u64;
                left -= 1;
            }
            p &= m - 1;
            self.words[(p >> 6) as usize] |= 1 << (p & 63);
        }
    }

    /// Add `"key:value"`.
    pub fn add_pair(&mut self, key: &str, value: &str) {
        let mut s = String::with_capacity(key.len() + 1 + value.len());
        s.push_str(key);
        s.push(':');
        s.push_str(value);
        self.add(s.as_bytes());
    }

    /// Add `"key:p"` for every prefix `p` of `value` that ends just before or just after
    /// a `sep`, from the longest (sd-bus `bloom_add_prefixes`). The whole value is not
    /// added: callers add it with [`Bloom::add_pair`] where they want it.
    pub fn add_prefixes(&mut self, key: &str, value: &str, sep: char) {
        let mut rest = value;
        while let Some(i) = rest.rfind(sep) {
            self.add_capped(key, &rest[..i + sep.len_utf8()]);
            if i == 0 {
                break;
            }
            rest = &rest[..i];
            self.add_capped(key, rest);
        }
    }
}

/// What a D-Bus signal is, for its filter and for match masks.
#[derive(Clone, Debug, Default)]
pub struct SignalSpec<'a> {
    /// The signal's interface.
    pub interface: Option<&'a str>,
    /// The signal's member (name).
    pub member: Option<&'a str>,
    /// The path of the object that emits the signal.
    pub path: Option<&'a str>,
    /// The arguments by position: string-like ones (strings, object paths) with their
    /// value, others `None` (they keep their position but add nothing).
    pub args: &'a [Option<&'a str>],
}

/// The longest value worth a filter element. A D-Bus match rule is at most 1024
/// bytes (dbus-daemon's limit, and ours: `rules::MAX_RULE_LEN`, which checks that it
/// is no longer than this), so no rule can
/// ask for a longer path or argument, or a longer prefix of one: hashing it would only
/// cost (milliseconds for a 1 MiB argument, and quadratic time for one full of
/// separators, one hash per prefix) and fill the filter with bits nobody looks for.
/// Longer values contribute their prefixes up to this length. (A native client's
/// mask is its own computation: one that asks for a longer value than this misses
/// signals from D-Bus senders; `docs/abi.md` says so.)
pub const VALUE_MAX: usize = 1024;

/// The filter sd-bus attaches to a signal (with values capped at [`VALUE_MAX`]).
pub fn signal_filter(p: BloomParameter, s: &SignalSpec<'_>) -> Bloom {
    let mut b = Bloom::new(p);
    b.add_pair("message-type", "signal");
    if let Some(i) = s.interface {
        b.add_pair("interface", i);
    }
    if let Some(m) = s.member {
        b.add_pair("member", m);
    }
    if let Some(path) = s.path {
        b.add_capped("path", path);
        b.add_capped("path-slash-prefix", path);
        b.add_prefixes("path-slash-prefix", capped(path), '/');
    }
    for (i, a) in s.args.iter().enumerate().take(64) {
        let Some(a) = a else {
            continue;
        };
        let key = format!("arg{i}");
        b.add_capped(&key, a);
        // The whole value too (beyond sd-bus, which leaves it out): `argNnamespace='a.b'`
        // takes an argument of exactly `a.b`, `argNpath='/a/b'` one of exactly `/a/b`.
        for (suffix, sep) in [("-dot-prefix", '.'), ("-slash-prefix", '/')] {
            let k = format!("{key}{suffix}");
            b.add_capped(&k, a);
            b.add_prefixes(&k, capped(a), sep);
        }
    }
    b
}

/// `v` cut to where its prefixes of at most [`VALUE_MAX`] bytes end: its first
/// `VALUE_MAX + 1` bytes (a prefix may end just before a separator at `VALUE_MAX`),
/// at a character boundary.
fn capped(v: &str) -> &str {
    let mut end = v.len().min(VALUE_MAX + 1);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    &v[..end]
}

impl Bloom {
    /// [`Bloom::add_pair`] for a value no longer than [`VALUE_MAX`].
    fn add_capped(&mut self, key: &str, value: &str) {
        if value.len() <= VALUE_MAX {
            self.add_pair(key, value);
        }
    }
}

/// The parts of a D-Bus match rule that go into a bloom mask.
#[derive(Clone, Debug, Default)]
pub struct MatchSpec<'a> {
    /// `type=`: the message type's name (`signal`, ...).
    pub message_type: Option<&'a str>,
    /// `interface=`: the interface name.
    pub interface: Option<&'a str>,
    /// `member=`: the member name.
    pub member: Option<&'a str>,
    /// `path=`: the object path, exactly.
    pub path: Option<&'a str>,
    /// `path_namespace=`: the object path or a path below it.
    pub path_namespace: Option<&'a str>,
    /// `argN=value`.
    pub args: &'a [(u8, &'a str)],
    /// `argNpath=value`.
    pub arg_paths: &'a [(u8, &'a str)],
    /// `argNnamespace=value`.
    pub arg_namespaces: &'a [(u8, &'a str)],
}

/// The mask sd-bus uploads for a match rule; `None` if the rule has no bloom part (then
/// the entry carries no BLOOM_MASK and takes every filter).
pub fn match_mask(p: BloomParameter, m: &MatchSpec<'_>) -> Option<Bloom> {
    let mut b = Bloom::new(p);
    let mut any = false;
    let mut add = |b: &mut Bloom, k: &str, v: &str| {
        b.add_pair(k, v);
        any = true;
    };
    if let Some(t) = m.message_type {
        add(&mut b, "message-type", t);
    }
    if let Some(i) = m.interface {
        add(&mut b, "interface", i);
    }
    if let Some(x) = m.member {
        add(&mut b, "member", x);
    }
    if let Some(x) = m.path {
        add(&mut b, "path", x);
    }
    if let Some(ns) = m.path_namespace.filter(|ns| *ns != "/") {
        add(&mut b, "path-slash-prefix", ns);
    }
    for (i, v) in m.args {
        add(&mut b, &format!("arg{i}"), v);
    }
    for (i, v) in m.arg_paths {
        add(&mut b, &format!("arg{i}-slash-prefix"), v);
    }
    for (i, v) in m.arg_namespaces {
        add(&mut b, &format!("arg{i}-dot-prefix"), v);
    }
    any.then_some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference vector of the SipHash paper (appendix A): key 00..0f, message
    /// 00..0e.
    #[test]
    fn siphash_reference_vector() {
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(&msg, &key), 0xa129ca6149be45e5);
    }

    /// A long argument full of separators (each a prefix) adds nothing past the
    /// longest value a rule can name: its filter is the one of its first
    /// `VALUE_MAX + 1` bytes, and a rule on a short prefix of it still passes.
    #[test]
    fn long_arguments_stop_at_what_a_rule_can_name() {
        // Large enough not to saturate: the tail's extra prefixes would show.
        let p = BloomParameter {
            size: 4096,
            n_hash: 1,
        };
        let long = "a.".repeat(4096);
        let filter = |arg: &str| {
            let args = [Some(arg)];
            let spec = SignalSpec {
                member: Some("M"),
                args: &args,
                ..Default::default()
            };
            signal_filter(p, &spec)
        };
        let of_long = filter(&long);
        assert_eq!(of_long, filter(&long[..VALUE_MAX + 1]));
        assert_ne!(of_long, filter(&long[..VALUE_MAX - 1]));
        let rule = MatchSpec {
            member: Some("M"),
            arg_namespaces: &[(0, "a.a.a")],
            ..Default::default()
        };
        let mask = match_mask(p, &rule).expect("a mask");
        assert!(of_long.covers(&mask));
    }

    #[test]
    fn prefixes_of_a_path() {
        let p = BloomParameter {
            size: 64,
            n_hash: 8,
        };
        let mut got = Bloom::new(p);
        got.add_prefixes("k", "/a/b", '/');
        let mut want = Bloom::new(p);
        for s in ["k:/a/", "k:/a", "k:/"] {
            want.add(s.as_bytes());
        }
        assert_eq!(got, want);
    }

    #[test]
    fn a_signal_covers_the_masks_of_its_matches() {
        let p = BloomParameter {
            size: 64,
            n_hash: 8,
        };
        let f = signal_filter(
            p,
            &SignalSpec {
                interface: Some("org.x.I"),
                member: Some("Ping"),
                path: Some("/org/x/obj"),
                args: &[Some("a.b.c"), Some("/p/q")],
            },
        );
        let yes = [
            MatchSpec {
                interface: Some("org.x.I"),
                ..Default::default()
            },
            MatchSpec {
                message_type: Some("signal"),
                member: Some("Ping"),
                ..Default::default()
            },
            MatchSpec {
                path_namespace: Some("/org/x"),
                ..Default::default()
            },
            MatchSpec {
                args: &[(0, "a.b.c")],
                ..Default::default()
            },
            MatchSpec {
                arg_namespaces: &[(0, "a.b")],
                ..Default::default()
            },
            MatchSpec {
                arg_paths: &[(1, "/p/")],
                ..Default::default()
            },
        ];
        for m in &yes {
            assert!(f.covers(&match_mask(p, m).unwrap()), "{m:?}");
        }
        let no = MatchSpec {
            member: Some("Pong"),
            ..Default::default()
        };
        assert!(!f.covers(&match_mask(p, &no).unwrap()));
        assert!(match_mask(p, &MatchSpec::default()).is_none());
    }
}
