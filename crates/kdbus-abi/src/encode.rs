//! Encoders for commands that both the broker and clients build.

use crate::{item, BloomParameter, CmdGeneric, ItemWriter};
use zerocopy::IntoBytes;

/// A `kdbus_cmd` with `flags` and the items `items` writes (BUS_MAKE, DOMAIN_MAKE,
/// ENDPOINT_MAKE and their kin).
pub fn cmd_generic(flags: u64, items: impl FnOnce(&mut ItemWriter<'_>)) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(CmdGeneric::default().as_bytes());
    items(&mut ItemWriter::new(&mut out));
    let size = out.len() as u64;
    out[..8].copy_from_slice(&size.to_ne_bytes());
    out[8..16].copy_from_slice(&flags.to_ne_bytes());
    out
}

/// BUS_MAKE: `kdbus_cmd` with MAKE_NAME, BLOOM_PARAMETER and ATTACH_FLAGS_SEND items.
pub fn bus_make(name: &str, flags: u64, bloom: BloomParameter) -> Vec<u8> {
    cmd_generic(flags, |w| {
        w.push_str(item::MAKE_NAME, name);
        w.push(item::BLOOM_PARAMETER, bloom.as_bytes());
        // BUS_CREATOR_INFO may show all of the creator's metadata (kdbus shows none
        // unless the creator says so).
        w.push_u64(item::ATTACH_FLAGS_SEND, crate::attach::ALL);
    })
}

/// A DOMAIN_MAKE body: `kdbus_cmd` with `flags` and the name.
pub fn domain_make(name: &str, flags: u64) -> Vec<u8> {
    cmd_generic(flags, |w| w.push_str(item::MAKE_NAME, name))
}

/// The part of a SEND request body before its payload bytes: `kdbus_cmd_send`, the
/// message header `msg` (its `size` is filled in) and its items, into `out` (cleared
/// first). Its length is a multiple of 8. The payload vectors (of `payload_sizes`)
/// address their bytes by offset behind it, in order, each padded to 8 bytes: that is
/// where the sender must put them. `fds` are the fd numbers of the `FDS` item (they
/// travel beside the request; the broker reads only how many there are), `memfds` the
/// `PAYLOAD_MEMFD` items (their fds travel after those). The one SEND encoder, for the
/// client library and for tests that drive the core directly.
pub fn send_head(
    out: &mut Vec<u8>,
    send_flags: u64,
    msg: crate::Msg,
    (dst_name, bloom): (Option<&str>, Option<(u64, &[u64])>),
    payload_sizes: impl Iterator<Item = usize> + Clone,
    memfds: &[crate::Memfd],
    fds: impl ExactSizeIterator<Item = i32>,
) {
    use crate::items::item_space;
    out.clear();
    let cmd_size = std::mem::size_of::<crate::CmdSend>();
    let cmd = crate::CmdSend {
        size: cmd_size as u64,
        flags: send_flags,
        return_flags: 0,
        msg_address: cmd_size as u64,
        reply: Default::default(),
    };
    out.extend_from_slice(cmd.as_bytes());
    let msg_start = out.len();
    out.extend_from_slice(msg.as_bytes());
    // Vectors point behind the message; compute where each one will land.
    let n_fds = fds.len();
    let items_len: usize = payload_sizes.clone().count() * 32
        + memfds.len() * item_space(std::mem::size_of::<crate::Memfd>())
        + if n_fds == 0 { 0 } else { item_space(4 * n_fds) }
        + dst_name.map_or(0, |n| item_space(n.len() + 1))
        + bloom.map_or(0, |(_, w)| item_space(8 + 8 * w.len()));
    out.reserve(items_len);
    let mut data_at = crate::align8_usize(out.len() + items_len) as u64;
    {
        let mut w = ItemWriter::new(out);
        if let Some(n) = dst_name {
            w.push_str(item::DST_NAME, n);
        }
        if let Some((generation, words)) = bloom {
            w.push_parts(
                item::BLOOM_FILTER,
                &[&generation.to_ne_bytes(), words.as_bytes()],
            );
        }
        for size in payload_sizes {
            let v = crate::Vec_ {
                size: size as u64,
                address_or_offset: data_at,
            };
            w.push(item::PAYLOAD_VEC, v.as_bytes());
            data_at += crate::align8(size as u64);
        }
        // Memfds follow the vectors (their fds travel after the FDS item's).
        for m in memfds {
            w.push(item::PAYLOAD_MEMFD, m.as_bytes());
        }
    }
    if n_fds > 0 {
        // The FDS item, written in place (the fd numbers are its payload).
        let size = 16 + 4 * n_fds as u64;
        out.extend_from_slice(&size.to_ne_bytes());
        out.extend_from_slice(&item::FDS.to_ne_bytes());
        for fd in fds {
            out.extend_from_slice(&fd.to_ne_bytes());
        }
        out.resize(crate::align8_usize(out.len()), 0);
    }
    let msg_size = (out.len() - msg_start) as u64;
    out[msg_start..msg_start + 8].copy_from_slice(&msg_size.to_ne_bytes());
}
