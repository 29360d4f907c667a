//! Encoders for commands that both the broker and clients build.

use crate::{item, BloomParameter, CmdGeneric, ItemWriter};
use zerocopy::IntoBytes;

/// BUS_MAKE: `kdbus_cmd` with MAKE_NAME, BLOOM_PARAMETER and ATTACH_FLAGS_SEND items.
pub fn bus_make(name: &str, flags: u64, bloom: BloomParameter) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(CmdGeneric::default().as_bytes());
    let mut w = ItemWriter::new(&mut out);
    w.push_str(item::MAKE_NAME, name);
    w.push(item::BLOOM_PARAMETER, bloom.as_bytes());
    // BUS_CREATOR_INFO may show all of the creator's metadata (kdbus shows none
    // unless the creator says so).
    w.push_u64(item::ATTACH_FLAGS_SEND, crate::attach::ALL);
    let size = out.len() as u64;
    out[..8].copy_from_slice(&size.to_ne_bytes());
    out[8..16].copy_from_slice(&flags.to_ne_bytes());
    out
}
