//! The SASL server on arbitrary input, fed whole and in two pieces: no panic, and the
//! same outcome either way.
#![no_main]

use kdbus_dbus::sasl::Sasl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut whole = Sasl::new(1000, [7; 16], true);
    let mut out_whole = Vec::new();
    let r_whole = whole.feed(data, &mut out_whole);

    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut parts = Sasl::new(1000, [7; 16], true);
    let mut out_parts = Vec::new();
    let first = parts.feed(&data[..split], &mut out_parts);
    if let Ok(p) = first {
        if !p.done {
            let rest = [&data[p.consumed..split], &data[split..]].concat();
            let second = parts.feed(&rest, &mut out_parts);
            if let (Ok(w), Ok(_)) = (&r_whole, &second) {
                assert_eq!(w.done, parts.is_done());
            }
        }
    }
});
