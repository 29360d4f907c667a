//! Syntax of D-Bus names, paths and signatures (D-Bus specification, "Valid Names").

/// Bus names: unique (`:1.42`) or well-known (`org.example.Foo`), ≤ 255 bytes.
pub fn is_bus_name(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    let (unique, body) = match s.strip_prefix(':') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let mut elements = 0;
    for el in body.split('.') {
        let Some(first) = el.bytes().next() else {
            return false;
        };
        if !unique && first.is_ascii_digit() {
            return false;
        }
        if !el
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            return false;
        }
        elements += 1;
    }
    elements >= 2
}

/// Unique names: a valid bus name starting with `:`.
pub fn is_unique_name(s: &str) -> bool {
    s.starts_with(':') && is_bus_name(s)
}

/// Interface and error names: ≥ 2 elements of `[A-Za-z0-9_]`, not starting with a digit.
pub fn is_interface(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    let mut elements = 0;
    for el in s.split('.') {
        if !is_element(el) {
            return false;
        }
        elements += 1;
    }
    elements >= 2
}

/// Error names: the same syntax as interface names.
pub fn is_error_name(s: &str) -> bool {
    is_interface(s)
}

/// Member names: one element of `[A-Za-z0-9_]`, not starting with a digit.
pub fn is_member(s: &str) -> bool {
    s.len() <= 255 && is_element(s)
}

fn is_element(el: &str) -> bool {
    match el.bytes().next() {
        None => false,
        Some(c) if c.is_ascii_digit() => false,
        Some(_) => el.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'),
    }
}

/// Object paths: `/`, or `/`-separated non-empty elements of `[A-Za-z0-9_]`.
pub fn is_object_path(s: &str) -> bool {
    if s == "/" {
        return true;
    }
    let Some(rest) = s.strip_prefix('/') else {
        return false;
    };
    rest.split('/')
        .all(|el| !el.is_empty() && el.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'))
}

/// Signatures: ≤ 255 bytes of complete types, arrays nested ≤ 32 and structs ≤ 32 deep.
pub fn is_signature(s: &str) -> bool {
    if s.len() > 255 {
        return false;
    }
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match complete_type(b, i, 0, 0) {
            Some(next) => i = next,
            None => return false,
        }
    }
    true
}

/// Parse one complete type at `i`; returns the index after it.
fn complete_type(b: &[u8], i: usize, arrays: u32, structs: u32) -> Option<usize> {
    match *b.get(i)? {
        b'y' | b'b' | b'n' | b'q' | b'i' | b'u' | b'x' | b't' | b'd' | b's' | b'o' | b'g'
        | b'h' | b'v' => Some(i + 1),
        b'a' => {
            if arrays >= 32 {
                return None;
            }
            if b.get(i + 1) == Some(&b'{') {
                // dict entry: basic key, one complete value, '}'
                let key = *b.get(i + 2)?;
                if !b"ybnqiuxtdsogh".contains(&key) {
                    return None;
                }
                let after = complete_type(b, i + 3, arrays + 1, structs + 1)?;
                (b.get(after) == Some(&b'}')).then_some(after + 1)
            } else {
                complete_type(b, i + 1, arrays + 1, structs)
            }
        }
        b'(' => {
            if structs >= 32 {
                return None;
            }
            let mut j = i + 1;
            if b.get(j) == Some(&b')') {
                return None; // empty struct
            }
            while b.get(j) != Some(&b')') {
                j = complete_type(b, j, arrays, structs + 1)?;
            }
            Some(j + 1)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_bus_name(":1.42") && is_bus_name("org.example.Foo") && is_bus_name("a-b.c_d"));
        assert!(
            !is_bus_name("org")
                && !is_bus_name("org.1x")
                && !is_bus_name("org..x")
                && !is_bus_name("")
        );
        assert!(is_unique_name(":1.42") && !is_unique_name("org.x"));
        assert!(is_interface("org.x.Y") && !is_interface("org.x-y") && !is_interface("Foo"));
        assert!(is_member("Ping") && !is_member("Pi.ng") && !is_member("1x"));
        assert!(
            is_object_path("/")
                && is_object_path("/a/b_c")
                && !is_object_path("/a/")
                && !is_object_path("a")
        );
    }

    #[test]
    fn signatures() {
        for ok in ["", "s", "a{sv}", "(ii)as", "aa{s(ib)}", "v"] {
            assert!(is_signature(ok), "{ok}");
        }
        for bad in ["a", "()", "a{vs}", "(i", "a{si", "z", "{ss}"] {
            assert!(!is_signature(bad), "{bad}");
        }
        assert!(!is_signature(&"a".repeat(33).chain_s()));
    }

    trait ChainS {
        fn chain_s(self) -> String;
    }
    impl ChainS for String {
        fn chain_s(mut self) -> String {
            self.push('s');
            self
        }
    }
}

/// The unique name of bus connection `id`, `:1.<id>`, held inline: the bus writes one
/// into every message it routes, so making one must not allocate.
#[derive(Clone, Copy)]
pub struct UniqueName {
    /// `:1.` and up to 20 digits.
    buf: [u8; 23],
    len: u8,
}

impl UniqueName {
    /// The unique name `:1.<id>` for connection `id`.
    pub fn from_id(id: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut n = 0;
        let mut v = id;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let mut buf = [0u8; 23];
        buf[..3].copy_from_slice(b":1.");
        for (i, d) in digits[..n].iter().rev().enumerate() {
            buf[3 + i] = *d;
        }
        UniqueName {
            buf,
            len: (3 + n) as u8,
        }
    }

    /// The id in a unique name this bus gives out (`:1.<decimal>`, no leading zeros).
    pub fn parse(name: &str) -> Option<u64> {
        let digits = name.strip_prefix(":1.")?;
        if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
            return None;
        }
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into `buf`.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::ops::Deref for UniqueName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for UniqueName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for UniqueName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UniqueName({})", self.as_str())
    }
}

#[cfg(test)]
mod unique_name_tests {
    use super::UniqueName;
    use proptest::prelude::*;

    #[test]
    fn formats_and_parses() {
        assert_eq!(UniqueName::from_id(0).as_str(), ":1.0");
        assert_eq!(UniqueName::from_id(42).as_str(), ":1.42");
        assert_eq!(
            UniqueName::from_id(u64::MAX).as_str(),
            format!(":1.{}", u64::MAX)
        );
        assert_eq!(UniqueName::parse(":1.42"), Some(42));
        for bad in [
            ":1.",
            ":1.042",
            ":1.4a",
            ":2.4",
            "org.x",
            ":1.99999999999999999999",
        ] {
            assert_eq!(UniqueName::parse(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(id: u64) {
            let n = UniqueName::from_id(id);
            prop_assert_eq!(n.as_str(), format!(":1.{id}"));
            prop_assert_eq!(UniqueName::parse(&n), Some(id));
        }
    }
}

/// The kdbus NAME_ACQUIRE flags for D-Bus `RequestName` flags (1 allow replacement, 2
/// replace existing, 4 do not queue: kdbus queues only when asked).
pub fn request_name_flags(dbus_flags: u32) -> u64 {
    use kdbus_abi::name_flags;
    let mut k = 0;
    if dbus_flags & 1 != 0 {
        k |= name_flags::ALLOW_REPLACEMENT;
    }
    if dbus_flags & 2 != 0 {
        k |= name_flags::REPLACE_EXISTING;
    }
    if dbus_flags & 4 == 0 {
        k |= name_flags::QUEUE;
    }
    k
}

/// `RequestName`'s reply code for NAME_ACQUIRE's outcome (1 primary owner, 2 in queue,
/// 3 exists, 4 already owner); `None` for an error that is no reply code.
pub fn request_name_reply(r: Result<u64, kdbus_abi::Errno>) -> Option<u32> {
    match r {
        Ok(f) if f & kdbus_abi::name_flags::IN_QUEUE != 0 => Some(2),
        Ok(_) => Some(1),
        Err(kdbus_abi::Errno::EEXIST) => Some(3),
        Err(kdbus_abi::Errno::EALREADY) => Some(4),
        Err(_) => None,
    }
}
