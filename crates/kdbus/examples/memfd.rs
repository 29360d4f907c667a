//! A memfd transfer: 64 MiB handed to another connection without the bus copying a
//! byte. The sender fills a memfd and seals it; the receiver maps it read-only.
//!
//!     cargo run -p kdbus --example memfd -- [BUS]

use kdbus::{memfd_sealed, Connection, HelloOptions, Message};
use std::os::fd::AsFd;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = std::env::args()
        .nth(1)
        .map_or_else(kdbus::default_bus_path, Into::into);
    let tx = Connection::hello(&bus, &HelloOptions::new().description("example-memfd-tx"))?;
    let rx = Connection::hello(&bus, &HelloOptions::new().description("example-memfd-rx"))?;
    let data: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    // Sealed against writing, growing and shrinking: the bus refuses anything less.
    let fd = memfd_sealed(&data)?;
    tx.send(
        &Message::to(rx.id())
            .cookie(1)
            .memfd(fd.as_fd(), 0, data.len() as u64),
    )?;
    let m = rx.recv_timeout(Some(Duration::from_secs(5)))?;
    let views = m.memfds()?;
    let view = views.first().ok_or("no memfd in the message")?;
    let same = view[..] == data[..];
    println!("received {} bytes by memfd, equal: {same}", view.len());
    Ok(())
}
