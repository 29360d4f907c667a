//! A service: owns a well-known name and answers every call with its payload turned
//! to upper case.
//!
//!     cargo run -p kdbus --example service -- /run/user/1000/kdbus/1000-user/bus
//!
//! (the bus path is the one `kdbusd` printed; without it, the default bus). Calls come
//! from `--example client`.

use kdbus::{Connection, HelloOptions, Message};

/// The name the client calls.
pub const NAME: &str = "org.kdbus.Example";

fn main() -> kdbus::Result<()> {
    let bus = std::env::args()
        .nth(1)
        .map_or_else(kdbus::default_bus_path, Into::into);
    let c = Connection::hello(&bus, &HelloOptions::new().description("example-service"))?;
    c.acquire_name(NAME, 0)?;
    println!("{NAME} is connection {} on {}", c.id(), bus.display());
    loop {
        let m = c.recv_timeout(None)?;
        if !m.expects_reply() {
            continue;
        }
        let answer = m.payload_bytes().to_ascii_uppercase();
        // A reply waits for nothing: posted, it costs one sendmsg.
        c.post(
            &Message::to(m.src_id())
                .reply_to(m.cookie())
                .payload(&answer),
        )?;
    }
}
