//! Differential scripts with zbus: a client script run against dbus-daemon and
//! kdbusd started from the same configuration (`diff.rs`), the transcripts compared.
//! Test files include it beside `diff.rs` and `zbus_peer.rs`
//! (`#[path = "common/script.rs"] mod script;`).
#![allow(dead_code)]

use crate::diff::{start, start_env, usable, Config, KDBUSD};
use crate::zbus_peer::{DRIVER, DRIVER_PATH};
use zbus::blocking::Connection as ZConn;

/// Run `script` against dbus-daemon and kdbusd; both transcripts must equal `expected`.
pub fn both(script: impl Fn(&str) -> Vec<String>, expected: &[&str]) {
    both_with("", script, expected)
}

/// Run `script` against dbus-daemon and kdbusd: the transcripts must be equal.
pub fn same(script: impl Fn(&str) -> Vec<String>) {
    if !usable() {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut got = Vec::new();
    for program in ["dbus-daemon", KDBUSD] {
        let (_daemon, address) = start(program, dir.path(), Config::Base(""));
        got.push(script(&address));
    }
    assert_eq!(
        got[1], got[0],
        "kdbusd (left) and dbus-daemon (right) differ"
    );
}

/// `both`, on the configuration with `extra` added.
pub fn both_with(extra: &str, script: impl Fn(&str) -> Vec<String>, expected: &[&str]) {
    both_with_args(extra, &[], script, expected)
}

/// `both_with`, both brokers started with the command-line arguments `args` too.
pub fn both_with_args(
    extra: &str,
    args: &[&str],
    script: impl Fn(&str) -> Vec<String>,
    expected: &[&str],
) {
    both_with_env(extra, args, &[], script, expected)
}

/// `both_with_args`, both brokers started with `env` in their environment too.
pub fn both_with_env(
    extra: &str,
    args: &[&str],
    env: &[(&str, &str)],
    script: impl Fn(&str) -> Vec<String>,
    expected: &[&str],
) {
    if !usable() {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut got = Vec::new();
    for program in ["dbus-daemon", KDBUSD] {
        let (_daemon, address) = start_env(program, dir.path(), Config::Base(extra), args, env);
        got.push((program, script(&address)));
    }
    for (program, transcript) in &got {
        assert_eq!(transcript, expected, "{program}");
    }
}

pub fn driver<B>(c: &ZConn, method: &str, body: &B) -> zbus::Result<zbus::Message>
where
    B: zbus::export::serde::Serialize + zbus::zvariant::DynamicType,
{
    c.call_method(Some(DRIVER), DRIVER_PATH, Some(DRIVER), method, body)
}

/// The reply of a driver call as text: its body (if one `u` or `as`) or the error name.
pub fn reply_text(r: zbus::Result<zbus::Message>) -> String {
    match r {
        Ok(m) => {
            let b = m.body();
            if let Ok(n) = b.deserialize::<u32>() {
                n.to_string()
            } else if let Ok(v) = b.deserialize::<Vec<String>>() {
                v.join(",")
            } else if let Ok(s) = b.deserialize::<String>() {
                s
            } else {
                "ok".to_string()
            }
        }
        Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
        Err(e) => format!("failed: {e}"),
    }
}
