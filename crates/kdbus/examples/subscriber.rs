//! A signal subscriber: matches broadcasts of one interface and member through the
//! bloom filter (as sd-bus builds filters and masks), and prints what comes; then, to
//! show both ends, emits one such signal itself from a second connection.
//!
//!     cargo run -p kdbus --example subscriber -- [BUS]

use kdbus::bloom::{match_mask, signal_filter, MatchSpec, SignalSpec};
use kdbus::{Connection, HelloOptions, MatchRule, Message};
use std::time::Duration;

fn main() -> kdbus::Result<()> {
    let bus = std::env::args()
        .nth(1)
        .map_or_else(kdbus::default_bus_path, Into::into);
    let sub = Connection::hello(&bus, &HelloOptions::new().description("example-subscriber"))?;
    let spec = MatchSpec {
        interface: Some("org.kdbus.Example"),
        member: Some("Changed"),
        ..Default::default()
    };
    let mut rule = MatchRule::new();
    if let Some(mask) = match_mask(sub.bloom(), &spec) {
        rule = rule.bloom(&mask);
    }
    sub.add_match(1, &rule, false)?;

    let emitter = Connection::hello(&bus, &HelloOptions::new().description("example-emitter"))?;
    let filter = signal_filter(
        emitter.bloom(),
        &SignalSpec {
            interface: Some("org.kdbus.Example"),
            member: Some("Changed"),
            path: Some("/org/kdbus/Example"),
            args: &[],
        },
    );
    emitter.send(
        &Message::broadcast(&filter)
            .cookie(1)
            .payload(b"something changed"),
    )?;

    let m = sub.recv_timeout(Some(Duration::from_secs(5)))?;
    println!(
        "signal from {}: {}",
        m.src_id(),
        String::from_utf8_lossy(&m.payload_bytes())
    );
    Ok(())
}
