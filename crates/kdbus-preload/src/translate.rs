//! kdbus command structures in the caller's memory ⇄ requests and records on the wire.
//!
//! kdbus's ioctls read a command structure from user memory, follow the pointers in it
//! (`msg_address`, `PAYLOAD_VEC` addresses), take the fds it names (`FDS` items), and
//! write some fields back. Over the socket, a request body holds the structure with
//! every pointed-to byte inline and every pointer replaced by its offset in the body
//! (`docs/abi.md`); the answer holds the structure as the kernel would have written it.
//!
//! This module does that translation and nothing else: no syscalls, no raw pointers.
//! The caller's memory is reached through [`UserMem`], which the shim implements over
//! the real address space and the tests over a map of regions.
//!
//! What the broker can judge, it judges: a size field that is too small or too large
//! still travels (truncated to what the broker reads), so the errno comes from the one
//! place that decides it. We only refuse what cannot be copied at all: an unaligned or
//! NULL argument (kdbus: `EFAULT`).

use kdbus_abi::items::ItemIter;
use kdbus_abi::{cmd, item, limits, read_struct, send_flags, CmdSend, Errno, Memfd, Msg, Vec_};
use std::os::fd::RawFd;
use zerocopy::IntoBytes;

/// kdbus's ioctl magic (`KDBUS_IOCTL_MAGIC`).
pub const IOCTL_MAGIC: u64 = 0x95;

/// The caller's address space, as the ioctl sees it.
pub trait UserMem {
    /// Append `len` bytes at `addr` to `out`.
    fn read_into(&self, addr: u64, len: usize, out: &mut Vec<u8>) -> Result<(), Errno>;
    /// Store `bytes` at `addr`.
    fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), Errno>;

    fn read_u64(&self, addr: u64) -> Result<u64, Errno> {
        let mut b = Vec::with_capacity(8);
        self.read_into(addr, 8, &mut b)?;
        read_struct(&b).ok_or(Errno::EFAULT)
    }
}

/// The kdbus command an ioctl request number stands for, if it is one of kdbus's.
pub fn ioctl_command(request: u64) -> Option<u32> {
    ((request >> 8) & 0xff == IOCTL_MAGIC).then_some((request & 0xff) as u32)
}

/// A command made ready for the wire.
#[derive(Debug, Default)]
pub struct Encoded {
    pub body: Vec<u8>,
    /// Fds the request carries: a SEND's `FDS` item's, then one per `PAYLOAD_MEMFD`.
    pub fds: Vec<RawFd>,
    /// A SEND's `CANCEL_FD`: the wait for a synchronous reply ends when it is readable.
    pub cancel_fd: Option<RawFd>,
    /// A synchronous SEND: the answer may take as long as the message's timeout.
    pub sync: bool,
}

/// Copy the command at `arg` (and, for SEND, what it points to) into a request body.
pub fn encode_command(c: u32, mem: &impl UserMem, arg: u64) -> Result<Encoded, Errno> {
    if arg == 0 || !arg.is_multiple_of(8) {
        return Err(Errno::EFAULT);
    }
    let size = mem.read_u64(arg)?;
    let mut e = Encoded::default();
    // A size the broker will refuse still travels, so the broker says why; only the
    // size field itself is copied then.
    let copy = if (8..=limits::CMD_MAX_SIZE).contains(&size) {
        size as usize
    } else {
        8
    };
    mem.read_into(arg, copy, &mut e.body)?;
    if c == cmd::SEND && copy >= std::mem::size_of::<CmdSend>() {
        encode_send(mem, &mut e)?;
    }
    Ok(e)
}

/// SEND: append the message at `msg_address` and its vectors, collect its fds.
fn encode_send(mem: &impl UserMem, e: &mut Encoded) -> Result<(), Errno> {
    let send: CmdSend = read_struct(&e.body).ok_or(Errno::EINVAL)?;
    e.sync = send.flags & send_flags::SYNC_REPLY != 0;
    for it in ItemIter::new(&e.body[std::mem::size_of::<CmdSend>()..]).flatten() {
        if it.type_ == item::CANCEL_FD {
            e.cancel_fd = read_struct::<i32>(it.payload);
        }
    }
    let addr = send.msg_address;
    if addr == 0 || !addr.is_multiple_of(8) {
        return Err(Errno::EFAULT);
    }
    let msg_size = mem.read_u64(addr)?;
    let at = kdbus_abi::align8_usize(e.body.len());
    e.body.resize(at, 0);
    // Too large a message travels as its header, for the broker's EMSGSIZE.
    let copy = if (8..=limits::MSG_MAX_SIZE).contains(&msg_size) {
        msg_size as usize
    } else {
        std::mem::size_of::<Msg>()
    };
    mem.read_into(addr, copy, &mut e.body)?;
    e.body[24..32].copy_from_slice(&(at as u64).to_ne_bytes());
    if copy < std::mem::size_of::<Msg>() {
        return Ok(());
    }
    // Walk the message's items: vectors get their data appended, fds get collected.
    // The items are the caller's, so anything malformed is left for the broker to
    // refuse; the walk just stops.
    let items_at = at + std::mem::size_of::<Msg>();
    let items_end = at + copy;
    let mut vec_total: u64 = 0;
    let mut memfds = Vec::new();
    let mut pos = items_at;
    while pos + 16 <= items_end {
        let size: u64 = read_struct(&e.body[pos..]).unwrap_or(0);
        let type_: u64 = read_struct(&e.body[pos + 8..]).unwrap_or(0);
        if size < 16 || pos as u64 + size > items_end as u64 {
            break;
        }
        let payload = pos + 16..pos + size as usize;
        match type_ {
            item::PAYLOAD_VEC if size >= 32 => {
                let v: Vec_ = read_struct(&e.body[payload.clone()]).unwrap_or_default();
                vec_total = vec_total.saturating_add(v.size);
                // Oversized vectors are not copied: the broker refuses them by size
                // before it looks at the data.
                if v.address_or_offset != 0 && vec_total <= limits::MSG_MAX_PAYLOAD_VEC_SIZE {
                    let data_at = kdbus_abi::align8_usize(e.body.len());
                    e.body.resize(data_at, 0);
                    mem.read_into(v.address_or_offset, v.size as usize, &mut e.body)?;
                    let patched = Vec_ {
                        size: v.size,
                        address_or_offset: data_at as u64,
                    };
                    e.body[payload.start..payload.start + 16].copy_from_slice(patched.as_bytes());
                }
            }
            item::FDS => {
                for chunk in e.body[payload].chunks_exact(4) {
                    let mut n = [0u8; 4];
                    n.copy_from_slice(chunk);
                    e.fds.push(i32::from_ne_bytes(n));
                }
            }
            item::PAYLOAD_MEMFD => {
                if let Some(m) = read_struct::<Memfd>(&e.body[payload]) {
                    memfds.push(m.fd);
                }
            }
            _ => {}
        }
        pos += kdbus_abi::align8_usize(size as usize);
    }
    // The broker takes the FDS item's fds first, then one per memfd item.
    e.fds.extend(memfds);
    Ok(())
}

/// The fields kdbus wrote back into the caller's structure, as `(offset, bytes)`
/// pairs taken from the broker's answer. `negotiate`: the caller asked
/// `FLAG_NEGOTIATE` (kdbus wrote the accepted flags into `flags`). `ok`: the command
/// succeeded (on failure kdbus wrote only `return_flags`).
pub fn writeback_fields(c: u32, answer: &[u8], negotiate: bool, ok: bool) -> Vec<(usize, &[u8])> {
    let mut out = Vec::new();
    let field = |off: usize, len: usize| answer.get(off..off + len);
    if negotiate {
        if let Some(f) = field(8, 8) {
            out.push((8, f));
        }
    }
    if let Some(f) = field(16, 8) {
        out.push((16, f));
    }
    if !ok {
        return out;
    }
    // (offset, length) of what each command returns beyond return_flags.
    let extra: &[(usize, usize)] = match c {
        // attach flags, bus_flags, id, pool_size, offset, items_size, id128
        cmd::HELLO => &[(24, 72)],
        // reply
        cmd::SEND => &[(32, 24)],
        // offset, info_size
        cmd::CONN_INFO | cmd::BUS_CREATOR_INFO => &[(40, 16)],
        // offset, list_size
        cmd::LIST => &[(24, 16)],
        // dropped_msgs, msg
        cmd::RECV => &[(32, 32)],
        _ => &[],
    };
    for &(off, len) in extra {
        if let Some(f) = field(off, len) {
            out.push((off, f));
        }
    }
    out
}

/// Offsets of pool slices an answer hands to the caller (which the caller frees).
pub fn answer_slices(c: u32, answer: &[u8]) -> Option<u64> {
    let at = match c {
        cmd::HELLO => 64,
        cmd::SEND => 32,
        cmd::CONN_INFO | cmd::BUS_CREATOR_INFO => 40,
        cmd::LIST => 24,
        _ => return None,
    };
    let size_at = at + 8;
    let off: u64 = read_struct(answer.get(at..)?)?;
    let size: u64 = read_struct(answer.get(size_at..)?)?;
    (size > 0 || c == cmd::HELLO).then_some(off)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Regions of a pretend address space.
    #[derive(Default)]
    struct Mem(BTreeMap<u64, Vec<u8>>);

    impl Mem {
        fn region(&self, addr: u64, len: usize) -> Result<(&u64, &Vec<u8>), Errno> {
            let (base, r) = self.0.range(..=addr).next_back().ok_or(Errno::EFAULT)?;
            if addr - base + len as u64 > r.len() as u64 {
                return Err(Errno::EFAULT);
            }
            Ok((base, r))
        }
    }

    impl UserMem for Mem {
        fn read_into(&self, addr: u64, len: usize, out: &mut Vec<u8>) -> Result<(), Errno> {
            let (base, r) = self.region(addr, len)?;
            let s = (addr - base) as usize;
            out.extend_from_slice(&r[s..s + len]);
            Ok(())
        }
        fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), Errno> {
            let base = *self.region(addr, bytes.len())?.0;
            let r = self.0.get_mut(&base).ok_or(Errno::EFAULT)?;
            let s = (addr - base) as usize;
            r[s..s + bytes.len()].copy_from_slice(bytes);
            Ok(())
        }
    }

    fn item(type_: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        kdbus_abi::ItemWriter::new(&mut v).push(type_, payload);
        v
    }

    #[test]
    fn ioctl_numbers() {
        // _IOWR(0x95, 0x80, struct kdbus_cmd_hello), _IOW(0x95, 0x90, ...)
        assert_eq!(ioctl_command(0xc070_9580), Some(cmd::HELLO));
        assert_eq!(ioctl_command(0x4038_9590), Some(cmd::SEND));
        assert_eq!(ioctl_command(0x5401), None); // TCGETS
    }

    #[test]
    fn unaligned_or_null_is_efault() {
        let mut m = Mem::default();
        m.0.insert(0x1000, vec![0; 64]);
        assert_eq!(
            encode_command(cmd::HELLO, &m, 0).unwrap_err(),
            Errno::EFAULT
        );
        assert_eq!(
            encode_command(cmd::HELLO, &m, 0x1004).unwrap_err(),
            Errno::EFAULT
        );
    }

    #[test]
    fn oversized_command_travels_as_its_size_field() {
        let mut m = Mem::default();
        let mut c = vec![0u8; 64];
        c[..8].copy_from_slice(&(limits::CMD_MAX_SIZE + 8).to_ne_bytes());
        m.0.insert(0x1000, c);
        let e = encode_command(cmd::UPDATE, &m, 0x1000).unwrap();
        assert_eq!(e.body.len(), 8);
    }

    #[test]
    fn send_inlines_message_and_vectors() {
        let mut m = Mem::default();
        // Payload at 0x9000, message at 0x2000, command at 0x1000.
        m.0.insert(0x9000, b"hello world".to_vec());
        let mut msg = Msg {
            size: 0,
            dst_id: 7,
            cookie: 1,
            ..Default::default()
        }
        .as_bytes()
        .to_vec();
        msg.extend(item(
            item::PAYLOAD_VEC,
            Vec_ {
                size: 11,
                address_or_offset: 0x9000,
            }
            .as_bytes(),
        ));
        msg.extend(item(
            item::FDS,
            &[3i32.to_ne_bytes(), 9i32.to_ne_bytes()].concat(),
        ));
        let len = msg.len() as u64;
        msg[..8].copy_from_slice(&len.to_ne_bytes());
        m.0.insert(0x2000, msg.clone());
        let mut c = CmdSend {
            size: 0,
            flags: send_flags::SYNC_REPLY,
            msg_address: 0x2000,
            ..Default::default()
        }
        .as_bytes()
        .to_vec();
        c.extend(item(item::CANCEL_FD, &5i32.to_ne_bytes()));
        let clen = c.len() as u64;
        c[..8].copy_from_slice(&clen.to_ne_bytes());
        m.0.insert(0x1000, c.clone());

        let e = encode_command(cmd::SEND, &m, 0x1000).unwrap();
        assert!(e.sync);
        assert_eq!(e.cancel_fd, Some(5));
        assert_eq!(e.fds, vec![3, 9]);
        let send: CmdSend = read_struct(&e.body).unwrap();
        let at = send.msg_address as usize;
        assert_eq!(at, c.len());
        let sent: Msg = read_struct(&e.body[at..]).unwrap();
        assert_eq!(sent.dst_id, 7);
        let v: Vec_ = read_struct(&e.body[at + 64 + 16..]).unwrap();
        let off = v.address_or_offset as usize;
        assert_eq!(&e.body[off..off + 11], b"hello world");
        // The caller's memory is untouched.
        let mut again = Vec::new();
        m.read_into(0x2000, msg.len(), &mut again).unwrap();
        assert_eq!(again, msg);
    }

    #[test]
    fn send_with_bad_vector_address_faults() {
        let mut m = Mem::default();
        let mut msg = Msg::default().as_bytes().to_vec();
        msg.extend(item(
            item::PAYLOAD_VEC,
            Vec_ {
                size: 11,
                address_or_offset: 0xdead_0000,
            }
            .as_bytes(),
        ));
        let len = msg.len() as u64;
        msg[..8].copy_from_slice(&len.to_ne_bytes());
        m.0.insert(0x2000, msg);
        let c = CmdSend {
            size: 56,
            msg_address: 0x2000,
            ..Default::default()
        };
        m.0.insert(0x1000, c.as_bytes().to_vec());
        assert_eq!(
            encode_command(cmd::SEND, &m, 0x1000).unwrap_err(),
            Errno::EFAULT
        );
    }

    #[test]
    fn writeback_on_failure_is_return_flags_only() {
        let answer = [7u8; 96];
        let f = writeback_fields(cmd::HELLO, &answer, false, false);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].0, 16);
        let f = writeback_fields(cmd::HELLO, &answer, true, true);
        assert_eq!(f.iter().map(|x| x.0).collect::<Vec<_>>(), vec![8, 16, 24]);
        assert_eq!(f[2].1.len(), 72);
    }
}
