//! kdbusd's dbus-daemon configuration reader (kdbusd `config`): `BusConfig::load`
//! parses a `busconfig` XML file (with roxmltree, DTDs allowed), follows includes,
//! checks every policy rule as dbus-daemon does, and the broker derives admission
//! rules, the message policy, limits and listen addresses from it. Configuration files
//! are trusted more than clients, but a distribution's or an admin's file is still
//! input that must give an error, never a crash or a hang.
//!
//! `load` takes a path (no change to kdbusd was needed: `config` and `load` are
//! public), so each input is written to a file in a private directory on tmpfs;
//! includes are relative to that directory (an include of the file itself recurses
//! to the depth limit).
//!
//! Input: the file's text (any bytes; invalid UTF-8 is an error of `load`).
//! Checks: no panic, and what loads yields everything the broker derives from it.
#![no_main]

use kdbusd::config::{parse_listen, BusConfig};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn file() -> &'static PathBuf {
    static F: OnceLock<PathBuf> = OnceLock::new();
    F.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("kdbus-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz directory");
        dir.join("fuzz.conf")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = file();
    std::fs::write(path, data).expect("write the input");
    let Ok(c) = BusConfig::load(path) else {
        return;
    };
    assert!(!c.files.is_empty());
    for l in &c.listen {
        // `load` checked every address already.
        parse_listen(l).expect("a loaded listen address parses");
    }
    let a = c.admission();
    let _ = a.admits(1000, &[1000, 100], false);
    let mut p = c.msg_policy();
    let rules = p.compile(1000, &[1000, 100]);
    let _ = rules.may_own("org.example.Name");
    let _ = c.bus_limits();
    let _ = c.stream_limits();
    let _ = c.reply_timeout_ns();
});
