//! pcapng, as `busctl capture` writes it: Wireshark's format for packet captures, here
//! with one D-Bus message per packet.
//!
//! A file is a section header, one interface description (link type 231, D-Bus,
//! whose packets are whole messages in their own byte order), then one enhanced packet
//! block per message, stamped in microseconds since the epoch (the format's default
//! resolution). Blocks are written whole and flushed as they come, so a capture cut
//! short by Ctrl-C is still a valid file up to its last message. All numbers are in
//! this machine's byte order, which the section header's magic tells readers.

use std::io::Write;

/// `LINKTYPE_DBUS`.
pub const LINKTYPE_DBUS: u16 = 231;
const SECTION_HEADER: u32 = 0x0A0D_0D0A;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
const INTERFACE_DESCRIPTION: u32 = 1;
const ENHANCED_PACKET: u32 = 6;

/// A capture being written to `out`.
pub struct Writer<W: Write> {
    out: W,
    block: Vec<u8>,
}

impl<W: Write> Writer<W> {
    /// Write the section header and the D-Bus interface.
    pub fn start(out: W) -> std::io::Result<Writer<W>> {
        let mut w = Writer {
            out,
            block: Vec::new(),
        };
        let mut shb = Vec::new();
        shb.extend_from_slice(&BYTE_ORDER_MAGIC.to_ne_bytes());
        shb.extend_from_slice(&1u16.to_ne_bytes());
        shb.extend_from_slice(&0u16.to_ne_bytes());
        // Section length not known in advance.
        shb.extend_from_slice(&u64::MAX.to_ne_bytes());
        w.write_block(SECTION_HEADER, &shb)?;
        let mut idb = Vec::new();
        idb.extend_from_slice(&LINKTYPE_DBUS.to_ne_bytes());
        idb.extend_from_slice(&0u16.to_ne_bytes());
        // Snap length 0: packets are never cut.
        idb.extend_from_slice(&0u32.to_ne_bytes());
        w.write_block(INTERFACE_DESCRIPTION, &idb)?;
        Ok(w)
    }

    /// One message, stamped now.
    pub fn packet(&mut self, msg: &[u8]) -> std::io::Result<()> {
        let us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let len = u32::try_from(msg.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let mut epb = Vec::with_capacity(20 + msg.len() + 3);
        epb.extend_from_slice(&0u32.to_ne_bytes());
        epb.extend_from_slice(&((us >> 32) as u32).to_ne_bytes());
        epb.extend_from_slice(&(us as u32).to_ne_bytes());
        epb.extend_from_slice(&len.to_ne_bytes());
        epb.extend_from_slice(&len.to_ne_bytes());
        epb.extend_from_slice(msg);
        self.write_block(ENHANCED_PACKET, &epb)
    }

    /// A block: type, total length, `body` padded to 4 bytes, total length again.
    fn write_block(&mut self, kind: u32, body: &[u8]) -> std::io::Result<()> {
        let padded = body.len().div_ceil(4) * 4;
        let total = u32::try_from(12 + padded).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        self.block.clear();
        self.block.extend_from_slice(&kind.to_ne_bytes());
        self.block.extend_from_slice(&total.to_ne_bytes());
        self.block.extend_from_slice(body);
        self.block.resize(8 + padded, 0);
        self.block.extend_from_slice(&total.to_ne_bytes());
        self.out.write_all(&self.block)?;
        self.out.flush()
    }
}

/// The link type and the packets of a capture written by [`Writer`].
#[cfg(test)]
fn packets(file: &[u8]) -> Result<(u16, Vec<Vec<u8>>), String> {
    let u32_at = |at: usize| -> Result<u32, String> {
        file.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
            .ok_or_else(|| format!("truncated at {at}"))
    };
    if u32_at(0)? != SECTION_HEADER || u32_at(8)? != BYTE_ORDER_MAGIC {
        return Err("not a pcapng file in this machine's byte order".into());
    }
    let (mut linktype, mut out, mut at) = (0, Vec::new(), 0);
    while at < file.len() {
        let (kind, total) = (u32_at(at)?, u32_at(at + 4)? as usize);
        if total < 12 || total % 4 != 0 || u32_at(at + total - 4)? as usize != total {
            return Err(format!("a bad block at {at}"));
        }
        match kind {
            INTERFACE_DESCRIPTION => {
                linktype = u32_at(at + 8)? as u16;
            }
            ENHANCED_PACKET => {
                let len = u32_at(at + 20)? as usize;
                let data = file
                    .get(at + 28..at + 28 + len)
                    .ok_or("a packet past its block")?;
                out.push(data.to_vec());
            }
            _ => {}
        }
        at += total;
    }
    Ok((linktype, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back() {
        let mut file = Vec::new();
        let mut w = Writer::start(&mut file).unwrap();
        w.packet(b"abcde").unwrap();
        w.packet(b"").unwrap();
        w.packet(&[7; 64]).unwrap();
        let (linktype, packets) = packets(&file).unwrap();
        assert_eq!(linktype, LINKTYPE_DBUS);
        assert_eq!(packets, vec![b"abcde".to_vec(), Vec::new(), vec![7; 64]]);
        assert_eq!(file.len() % 4, 0);
    }
}
