//! D-Bus header parsing, framing and rewriting on arbitrary bytes: no panic, and what
//! parses must survive the bus's rewrite and parse again to the same fields.
#![no_main]

use kdbus_dbus::header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = header::message_len(data);
    if let Ok(h) = header::parse(data) {
        let mut out = Vec::new();
        header::write(&mut out, &h, Some(":1.42"));
        let again = header::parse(&out).expect("a rewritten header parses");
        assert_eq!(again.member, h.member);
        assert_eq!(again.path, h.path);
        assert_eq!(again.serial, h.serial);
        assert_eq!(again.sender, Some(":1.42"));
        let body = &data[h.header_len.min(data.len())..];
        let _ = kdbus_dbus::rules::string_args(body, h.endian, h.signature, 64);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = kdbus_dbus::rules::Rule::parse(s);
    }
});
