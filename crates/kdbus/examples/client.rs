//! A client: calls `--example service` by its well-known name and prints the answer.
//!
//!     cargo run -p kdbus --example client -- [BUS] [TEXT]

use kdbus::{Connection, HelloOptions, Message};
use std::time::Duration;

fn main() -> kdbus::Result<()> {
    let mut args = std::env::args().skip(1);
    let bus = args.next().map_or_else(kdbus::default_bus_path, Into::into);
    let text = args.next().unwrap_or_else(|| "hello, kdbus".to_string());
    let c = Connection::hello(&bus, &HelloOptions::new().description("example-client"))?;
    // A synchronous call: the reply never enters the queue.
    let reply = c.call(
        Message::to_name("org.kdbus.Example")
            .cookie(1)
            .payload(text.as_bytes()),
        Duration::from_secs(5),
    )?;
    println!("{}", String::from_utf8_lossy(&reply.payload_bytes()));
    Ok(())
}
