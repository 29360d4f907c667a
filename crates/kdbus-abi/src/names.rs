//! Name syntax: "sysnames" (buses, endpoints, connection descriptions) and well-known
//! bus names.

use crate::limits::{NAME_MAX_LEN, SYSNAME_MAX_LEN};
use crate::Errno;

/// kdbus's sysname rule: 1..=63 characters of `[A-Za-z0-9_.-]`, where `-` and `.` may be
/// neither first nor last. Too long is ENAMETOOLONG, anything else wrong EINVAL.
pub fn validate_sysname(name: &str) -> Result<(), Errno> {
    if name.is_empty() {
        return Err(Errno::EINVAL);
    }
    if name.len() > SYSNAME_MAX_LEN {
        return Err(Errno::ENAMETOOLONG);
    }
    let bytes = name.as_bytes();
    for (i, &c) in bytes.iter().enumerate() {
        let edge = i == 0 || i == bytes.len() - 1;
        let ok = c.is_ascii_alphanumeric() || c == b'_' || (!edge && (c == b'-' || c == b'.'));
        if !ok {
            return Err(Errno::EINVAL);
        }
    }
    Ok(())
}

/// A bus or endpoint name must be a sysname starting with `"<uid>-"`, checked in full
/// (kdbus 64d871b compared only the first character).
pub fn validate_uid_prefixed(name: &str, uid: u32) -> Result<(), Errno> {
    validate_sysname(name)?;
    let prefix = format!("{uid}-");
    if !name.starts_with(&prefix) || name.len() == prefix.len() {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// A well-known name: ≤ 255 chars, ≥ 2 dot-separated non-empty elements of
/// `[A-Za-z0-9_-]`, no element starting with a digit. `allow_wildcard` accepts a trailing
/// `.*` (policy entries only).
pub fn validate_well_known_name(name: &str, allow_wildcard: bool) -> Result<(), Errno> {
    if name.is_empty() || name.len() > NAME_MAX_LEN {
        return Err(Errno::EINVAL);
    }
    let body = match name.strip_suffix(".*") {
        Some(b) if allow_wildcard => b,
        _ => name,
    };
    let mut elements = 0;
    for el in body.split('.') {
        let first = *el.as_bytes().first().ok_or(Errno::EINVAL)?;
        if first.is_ascii_digit() {
            return Err(Errno::EINVAL);
        }
        if !el
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            return Err(Errno::EINVAL);
        }
        elements += 1;
    }
    if elements < 2 && body.len() == name.len() {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysnames() {
        assert!(validate_sysname("0-blah-1").is_ok());
        assert_eq!(validate_sysname("0-blah@123"), Err(Errno::EINVAL));
        assert_eq!(validate_sysname("0-blah-"), Err(Errno::EINVAL));
        assert_eq!(validate_sysname(&"a".repeat(64)), Err(Errno::ENAMETOOLONG));
        assert!(validate_sysname(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn uid_prefix_checked_in_full() {
        assert!(validate_uid_prefixed("1000-x", 1000).is_ok());
        assert_eq!(validate_uid_prefixed("1001-x", 1000), Err(Errno::EINVAL));
        assert_eq!(validate_uid_prefixed("1-x", 1000), Err(Errno::EINVAL));
        assert_eq!(validate_uid_prefixed("foo", 0), Err(Errno::EINVAL));
    }

    #[test]
    fn well_known() {
        assert!(validate_well_known_name("foo.bar", false).is_ok());
        assert!(validate_well_known_name("foo.bar-baz._x", false).is_ok());
        assert!(validate_well_known_name(".bla.blaz", false).is_err());
        assert!(validate_well_known_name("foo", false).is_err());
        assert!(validate_well_known_name("foo.bla.bl.*", false).is_err());
        assert!(validate_well_known_name("foo.bla.bl.*", true).is_ok());
        assert!(validate_well_known_name("foo.1a", false).is_err());
        assert!(validate_well_known_name("foo..a", false).is_err());
    }
}
