//! Messages: validating what a sender hands us, and laying out what a receiver finds in
//! its pool.
//!
//! A SEND request body holds `kdbus_cmd_send`, the `kdbus_msg` at `msg_address`, and the
//! payload bytes that `PAYLOAD_VEC` items point to (by offset into the body). The
//! receiver gets, in one pool slice:
//!
//! ```text
//! kdbus_msg | items (VEC→PAYLOAD_OFF, FDS, DST_NAME, BLOOM_FILTER) | metadata items | payload
//! ```
//! `msg.size` covers the header and items; payload follows, each vector 8-aligned, and
//! `PAYLOAD_OFF.offset` is relative to the start of the message. Parsing does not
//! allocate; layout writes into a caller-provided scratch buffer.

use crate::clock::Now;
use crate::meta::{ns_keys, Creds, Namespaces, Peer, OVERFLOW_ID};
use kdbus_abi::items::{item_space, ItemIter, ItemWriter};
use kdbus_abi::{
    align8, attach, item, limits, msg_flags, payload, read_struct, send_flags, CmdSend, Errno,
    Memfd, Msg, Pids, Timestamp, Vec_,
};
use std::sync::Arc;
use zerocopy::IntoBytes;

/// Bytes of the fixed `kdbus_msg` header; its items start at this offset.
pub const MSG_HEADER_SIZE: usize = std::mem::size_of::<Msg>();

/// The FDS item as written to the pool: all -1, since fd numbers only exist in the
/// receiver, which gets the fds with the message event, in item order.
static NO_FDS: [u8; limits::MSG_MAX_FDS * 4] = [0xff; limits::MSG_MAX_FDS * 4];

/// A validated SEND.
#[derive(Debug)]
pub struct SendRequest<'a> {
    /// The send command (SYNC_REPLY among its flags); all defaults for a message a
    /// personality built.
    pub cmd: CmdSend,
    /// The message header, checked (`size` covers header and items only).
    pub msg: Msg,
    /// The message's items, verbatim.
    pub items: &'a [u8],
    /// The whole request body, where vector data lives.
    pub body: &'a [u8],
    /// Bytes the items take in the received message (before metadata).
    pub out_items_len: usize,
    /// Payload bytes in the received message (each vector padded to 8).
    pub payload_len: u64,
    /// Fds of the `FDS` item.
    pub n_fds: usize,
    /// `PAYLOAD_MEMFD` items; their fds follow the `FDS` item's in the request.
    pub n_memfds: usize,
    /// The `DST_NAME` item: the well-known name the message is sent to (validated).
    pub dst_name: Option<&'a str>,
    /// The `BLOOM_FILTER` payload (generation, then the filter's words); present exactly
    /// when the message is a signal.
    pub bloom: Option<&'a [u8]>,
    /// The D-Bus header facts, when the personality that built the message read them
    /// already (`None`: read them from the payload if the bus has a message policy).
    pub facts: Option<crate::msgpolicy::Facts<'a>>,
}

impl SendRequest<'_> {
    /// Sent with EXPECT_REPLY: the receiver owes an answer before the timeout.
    pub fn expects_reply(&self) -> bool {
        self.msg.flags & msg_flags::EXPECT_REPLY != 0
    }
    /// A synchronous call: the SEND is answered with the reply (SYNC_REPLY).
    pub fn is_sync(&self) -> bool {
        self.cmd.flags & send_flags::SYNC_REPLY != 0
    }
    /// `cookie_reply` if this message answers something.
    pub fn cookie_reply(&self) -> Option<u64> {
        (!self.expects_reply() && self.msg.timeout_or_cookie_reply != 0)
            .then_some(self.msg.timeout_or_cookie_reply)
    }
}

/// Validate a SEND request; `fds` is how many fds came with it, `max_vec_total` the
/// most payload its vectors may carry.
pub fn message_parse_send(
    body: &[u8],
    fds: usize,
    sender_id: u64,
    max_vec_total: u64,
) -> Result<SendRequest<'_>, Errno> {
    let (cmd, size) = kdbus_abi::read_cmd::<CmdSend>(body)?;
    if cmd.flags & !send_flags::ALL != 0 {
        return Err(Errno::EINVAL);
    }
    // Items of the send command itself (HEAD: CANCEL_FD); framing only.
    kdbus_abi::items::validate_all(&body[std::mem::size_of::<CmdSend>()..size as usize])?;

    let at = usize::try_from(cmd.msg_address).map_err(|_| Errno::EFAULT)?;
    if at % 8 != 0 || at >= body.len() {
        return Err(Errno::EFAULT);
    }
    let mbuf = &body[at..];
    let msg: Msg = read_struct(mbuf).ok_or(Errno::EFAULT)?;
    if msg.size < MSG_HEADER_SIZE as u64 || msg.size > limits::MSG_MAX_SIZE {
        return Err(Errno::EMSGSIZE);
    }
    if msg.size > mbuf.len() as u64 {
        return Err(Errno::EFAULT);
    }
    let items = &mbuf[MSG_HEADER_SIZE..msg.size as usize];
    message_parse_msg(cmd, msg, items, body, fds, sender_id, max_vec_total)
}

/// Validate a message built by a personality rather than read from a client: header
/// `msg`, its `items`, and the `body` its vectors point into (by offset), with `fds`
/// files at hand. The same checks as for a client's SEND.
pub fn message_from_parts<'a>(
    msg: Msg,
    items: &'a [u8],
    body: &'a [u8],
    fds: usize,
    sender_id: u64,
    max_vec_total: u64,
) -> Result<SendRequest<'a>, Errno> {
    let cmd = CmdSend {
        size: std::mem::size_of::<CmdSend>() as u64,
        ..Default::default()
    };
    // The size a client's message would declare, judged as a client's is.
    let size = (MSG_HEADER_SIZE + items.len()) as u64;
    if size > limits::MSG_MAX_SIZE {
        return Err(Errno::EMSGSIZE);
    }
    let msg = Msg { size, ..msg };
    message_parse_msg(cmd, msg, items, body, fds, sender_id, max_vec_total)
}

/// The checks of a SEND after its command struct: header, items, vectors, fds.
fn message_parse_msg<'a>(
    cmd: CmdSend,
    msg: Msg,
    items: &'a [u8],
    body: &'a [u8],
    fds: usize,
    sender_id: u64,
    max_vec_total: u64,
) -> Result<SendRequest<'a>, Errno> {
    message_check_header(&msg, &cmd, sender_id)?;
    let mut req = SendRequest {
        cmd,
        msg,
        items,
        body,
        out_items_len: 0,
        payload_len: 0,
        n_fds: 0,
        n_memfds: 0,
        dst_name: None,
        bloom: None,
        facts: None,
    };
    let mut n_items = 0;
    let mut vec_total: u64 = 0;
    let mut seen_fds = false;
    for it in ItemIter::new(items) {
        let it = it?;
        it.check_payload()?;
        n_items += 1;
        if n_items > limits::MSG_MAX_ITEMS {
            return Err(Errno::E2BIG);
        }
        match it.type_ {
            item::PAYLOAD_VEC => {
                let v: Vec_ = read_struct(it.payload).ok_or(Errno::EINVAL)?;
                if v.size == 0 {
                    return Err(Errno::EINVAL);
                }
                vec_total = vec_total.saturating_add(v.size);
                if vec_total > max_vec_total {
                    return Err(Errno::EMSGSIZE);
                }
                if v.address_or_offset != 0 {
                    let end = v
                        .address_or_offset
                        .checked_add(v.size)
                        .ok_or(Errno::EFAULT)?;
                    if end > body.len() as u64 {
                        return Err(Errno::EFAULT);
                    }
                    req.payload_len += align8(v.size);
                }
                req.out_items_len += item_space(16);
            }
            item::FDS => {
                if seen_fds {
                    return Err(Errno::EEXIST);
                }
                seen_fds = true;
                req.n_fds = it.payload.len() / 4;
                if req.n_fds > limits::MSG_MAX_FDS {
                    return Err(Errno::EMFILE);
                }
                req.out_items_len += item_space(it.payload.len());
            }
            item::DST_NAME => {
                if req.dst_name.is_some() {
                    return Err(Errno::EEXIST);
                }
                let name = it.as_str()?;
                kdbus_abi::names::validate_well_known_name(name, false)?;
                req.dst_name = Some(name);
                req.out_items_len += item_space(it.payload.len());
            }
            item::BLOOM_FILTER => {
                if req.bloom.is_some() {
                    return Err(Errno::EEXIST);
                }
                req.bloom = Some(it.payload);
                req.out_items_len += item_space(it.payload.len());
            }
            item::PAYLOAD_MEMFD => {
                let m: Memfd = read_struct(it.payload).ok_or(Errno::EINVAL)?;
                if m.size == 0 {
                    return Err(Errno::EINVAL);
                }
                if m.fd < 0 {
                    return Err(Errno::EBADF);
                }
                if m.start.checked_add(m.size).is_none() {
                    return Err(Errno::EMSGSIZE);
                }
                req.n_memfds += 1;
                if req.n_memfds > limits::MSG_MAX_MEMFD_ITEMS {
                    return Err(Errno::E2BIG);
                }
                req.out_items_len += item_space(it.payload.len());
            }
            _ => return Err(Errno::EINVAL),
        }
    }
    if req.n_fds + req.n_memfds > fds {
        return Err(Errno::EBADF);
    }
    message_check_signal(&req)?;
    Ok(req)
}

/// The `(start, size)` of each `PAYLOAD_MEMFD` item, in order (their fds are the
/// request's after the `FDS` item's).
pub fn message_memfds<'a>(req: &'a SendRequest<'a>) -> impl Iterator<Item = (u64, u64)> + 'a {
    ItemIter::new(req.items)
        .flatten()
        .filter(|it| it.type_ == item::PAYLOAD_MEMFD)
        .filter_map(|it| read_struct::<Memfd>(it.payload).map(|m| (m.start, m.size)))
}

/// kdbus HEAD: broadcasts are signals; signals, and only they, carry a bloom filter;
/// broadcasts carry no names and no fds.
fn message_check_signal(req: &SendRequest<'_>) -> Result<(), Errno> {
    let signal = req.msg.flags & msg_flags::SIGNAL != 0;
    if req.msg.dst_id == kdbus_abi::DST_ID_BROADCAST {
        if req.dst_name.is_some() || !signal {
            return Err(Errno::EBADMSG);
        }
        if req.n_fds > 0 {
            return Err(Errno::ENOTUNIQ);
        }
    }
    if signal != req.bloom.is_some() {
        return Err(Errno::EBADMSG);
    }
    Ok(())
}

/// Header rules of kdbus HEAD (spec A.6 with HEAD's reply and signal rules).
fn message_check_header(msg: &Msg, cmd: &CmdSend, sender_id: u64) -> Result<(), Errno> {
    if msg.flags & !msg_flags::ALL != 0 {
        return Err(Errno::EINVAL);
    }
    if msg.payload_type == payload::KERNEL {
        return Err(Errno::EINVAL);
    }
    if msg.src_id != 0 && msg.src_id != sender_id {
        return Err(Errno::EINVAL);
    }
    let expect = msg.flags & msg_flags::EXPECT_REPLY != 0;
    if expect && (msg.timeout_or_cookie_reply == 0 || msg.cookie == 0) {
        return Err(Errno::EINVAL);
    }
    // Signals neither expect replies nor are replies.
    if msg.flags & msg_flags::SIGNAL != 0 && msg.timeout_or_cookie_reply != 0 {
        return Err(if msg.dst_id == kdbus_abi::DST_ID_BROADCAST {
            Errno::ENOTUNIQ
        } else {
            Errno::EINVAL
        });
    }
    if cmd.flags & send_flags::SYNC_REPLY != 0 && !expect {
        return Err(Errno::EINVAL);
    }
    if msg.dst_id == kdbus_abi::DST_ID_BROADCAST && (expect || msg.timeout_or_cookie_reply != 0) {
        return Err(Errno::ENOTUNIQ);
    }
    Ok(())
}

/// What a receiver may learn about a sender, gathered once per send.
#[derive(Clone, Debug, Default)]
pub struct SenderMeta {
    /// The sender's unique id, the message's `src_id` (0 for a bus's creator).
    pub id: u64,
    /// The sender's connection (`None`: the bus itself, or a bus's creator).
    pub key: Option<crate::ids::ConnKey>,
    /// Credentials of the sending datagram: who sends now.
    pub creds: Creds,
    /// What was learnt when the sender connected, refreshed where the broker reads the
    /// process again ([`crate::meta::ProcFacts`]).
    pub peer: Peer,
    /// The sender's CONN_DESCRIPTION, if it gave one at HELLO.
    pub description: Option<Arc<str>>,
    /// Metadata the sender agreed to send (its `ATTACH_FLAGS_SEND`, within the domain's
    /// mask): a receiver gets what it asked for of this, no more.
    pub attach_send: u64,
    /// Names the sender owns, with their flags; filled only when a receiver asks.
    pub names: Vec<(Arc<str>, u64)>,
}

/// Metadata items attached for a receiver that asked for `mask`.
pub fn meta_len(mask: u64, m: &SenderMeta) -> usize {
    let mut n = 0;
    if mask & attach::TIMESTAMP != 0 {
        n += item_space(24);
    }
    if mask & attach::CREDS != 0 {
        n += item_space(64);
    }
    if mask & attach::PIDS != 0 {
        n += item_space(24);
    }
    if mask & attach::NAMES != 0 {
        n += m
            .names
            .iter()
            .map(|(name, _)| item_space(8 + name.len() + 1))
            .sum::<usize>();
    }
    if mask & attach::AUXGROUPS != 0 {
        n += m.peer.groups.as_ref().map_or(0, |g| item_space(g.len()));
    }
    if mask & attach::TID_COMM != 0 {
        n += m.peer.comm.as_ref().map_or(0, |s| item_space(s.len() + 1));
    }
    if mask & attach::PID_COMM != 0 {
        n += m.peer.comm.as_ref().map_or(0, |s| item_space(s.len() + 1));
    }
    if mask & attach::EXE != 0 {
        n += m.peer.exe.as_ref().map_or(0, |s| item_space(s.len() + 1));
    }
    if mask & attach::CMDLINE != 0 {
        n += m.peer.cmdline.as_ref().map_or(0, |s| item_space(s.len()));
    }
    if mask & attach::CGROUP != 0 {
        n += m
            .peer
            .cgroup
            .as_ref()
            .map_or(0, |s| item_space(s.len() + 1));
    }
    if mask & attach::CAPS != 0 {
        n += m.peer.caps.as_ref().map_or(0, |c| item_space(c.len()));
    }
    if mask & attach::SECLABEL != 0 {
        let label = m.peer.faked.as_ref().and_then(|f| f.seclabel.as_ref());
        n += label.map_or(0, |s| item_space(s.len() + 1));
    }
    if mask & attach::AUDIT != 0 && m.peer.audit.is_some() {
        n += item_space(8);
    }
    if mask & attach::CONN_DESCRIPTION != 0 {
        n += m
            .description
            .as_ref()
            .map_or(0, |s| item_space(s.len() + 1));
    }
    n
}

/// The metadata `mask` selects that a receiver in namespaces `view` (`None`: the
/// broker's) may have: capabilities only within one user namespace.
pub fn meta_mask_for(mask: u64, m: &SenderMeta, view: Option<&Namespaces>) -> u64 {
    let (sender_user, _) = ns_keys(m.peer.ns.as_deref());
    let (receiver_user, _) = ns_keys(view);
    if sender_user != receiver_user {
        mask & !attach::CAPS
    } else {
        mask
    }
}

/// Append the metadata items for `mask` (see [`meta_len`]), translated for a receiver
/// in namespaces `view` (`None`: the broker's).
pub fn meta_write(
    out: &mut Vec<u8>,
    mask: u64,
    m: &SenderMeta,
    now: Now,
    seq: u64,
    view: Option<&Namespaces>,
) {
    let (user_key, pid_key) = ns_keys(view);
    let mut w = ItemWriter::new(out);
    if mask & attach::TIMESTAMP != 0 {
        let ts = Timestamp {
            seqnum: seq,
            monotonic_ns: now.monotonic_ns,
            realtime_ns: now.realtime_ns,
        };
        w.push(item::TIMESTAMP, ts.as_bytes());
    }
    if mask & attach::CREDS != 0 {
        // The four of each as the process had them at connect, while the datagram's
        // real ids are still those (a process that changed its real ids is reported
        // with them in all four).
        let same = m.creds == m.peer.creds;
        let (u, g) = (m.creds.uid, m.creds.gid);
        let mut ids = m
            .peer
            .ids
            .as_deref()
            .copied()
            .filter(|_| same)
            .unwrap_or([u, u, u, u, g, g, g, g]);
        // A privileged proxy's word, as it gave it at HELLO (kdbus did not map it).
        let faked = m.peer.faked.as_ref().and_then(|f| f.creds);
        if let Some(f) = faked {
            for (id, v) in ids.iter_mut().zip(f) {
                *id = u32::try_from(v).unwrap_or(OVERFLOW_ID);
            }
        }
        if let (Some(v), true, None) = (view, user_key != 0, faked) {
            for (i, id) in ids.iter_mut().enumerate() {
                let map = if i < 4 { &v.uid_map } else { &v.gid_map };
                *id = Namespaces::map_id(map, *id);
            }
        }
        let c = kdbus_abi::Creds {
            uid: ids[0] as u64,
            euid: ids[1] as u64,
            suid: ids[2] as u64,
            fsuid: ids[3] as u64,
            gid: ids[4] as u64,
            egid: ids[5] as u64,
            sgid: ids[6] as u64,
            fsgid: ids[7] as u64,
        };
        w.push(item::CREDS, c.as_bytes());
    }
    if mask & attach::PIDS != 0 {
        let mut p = Pids {
            pid: m.creds.pid as u64,
            tid: m.creds.pid as u64,
            // Known for the process that connected (a forked child sending on the
            // same socket has another parent, unknown here).
            ppid: if m.creds.pid == m.peer.creds.pid {
                m.peer.ppid as u64
            } else {
                0
            },
        };
        if let Some([pid, tid, ppid]) = m.peer.faked.as_ref().and_then(|f| f.pids) {
            p = Pids { pid, tid, ppid };
        } else if pid_key != 0 {
            // A receiver in another pid namespace sees the sender only if it is in
            // that namespace too (as its own pids there), else pid 0.
            let sender = m.peer.ns.as_deref();
            let (_, sender_pid_key) = ns_keys(sender);
            p = match sender.filter(|_| sender_pid_key == pid_key) {
                Some(s) if m.creds.pid == m.peer.creds.pid => Pids {
                    pid: s.own_pids.0 as u64,
                    tid: s.own_pids.0 as u64,
                    ppid: s.own_pids.1 as u64,
                },
                _ => Pids::default(),
            };
        }
        w.push(item::PIDS, p.as_bytes());
    }
    if mask & attach::NAMES != 0 {
        for (name, flags) in &m.names {
            w.push_parts(
                item::OWNED_NAME,
                &[&flags.to_ne_bytes(), name.as_bytes(), &[0]],
            );
        }
    }
    if mask & attach::AUXGROUPS != 0 {
        if let Some(g) = &m.peer.groups {
            match view.filter(|_| user_key != 0) {
                None => w.push(item::AUXGROUPS, g),
                Some(v) => {
                    let mapped: Vec<u8> = g
                        .chunks_exact(8)
                        .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
                        .flat_map(|id| {
                            let id = u32::try_from(id).unwrap_or(OVERFLOW_ID);
                            (Namespaces::map_id(&v.gid_map, id) as u64).to_ne_bytes()
                        })
                        .collect();
                    w.push(item::AUXGROUPS, &mapped);
                }
            }
        }
    }
    // Taken when the connection was made, from its only thread as far as we know.
    if mask & attach::TID_COMM != 0 {
        if let Some(s) = &m.peer.comm {
            w.push_str(item::TID_COMM, s);
        }
    }
    if mask & attach::PID_COMM != 0 {
        if let Some(s) = &m.peer.comm {
            w.push_str(item::PID_COMM, s);
        }
    }
    if mask & attach::EXE != 0 {
        if let Some(s) = &m.peer.exe {
            w.push_str(item::EXE, s);
        }
    }
    if mask & attach::CMDLINE != 0 {
        if let Some(s) = &m.peer.cmdline {
            w.push(item::CMDLINE, s);
        }
    }
    if mask & attach::CGROUP != 0 {
        if let Some(s) = &m.peer.cgroup {
            w.push_str(item::CGROUP, s);
        }
    }
    if mask & attach::CAPS != 0 {
        if let Some(c) = &m.peer.caps {
            w.push(item::CAPS, c);
        }
    }
    // Only a label a privileged proxy gave (LSM labels are not read).
    if mask & attach::SECLABEL != 0 {
        if let Some(s) = m.peer.faked.as_ref().and_then(|f| f.seclabel.as_ref()) {
            w.push_str(item::SECLABEL, s);
        }
    }
    if mask & attach::AUDIT != 0 {
        if let Some((session, login)) = m.peer.audit {
            w.push_parts(item::AUDIT, &[&session.to_ne_bytes(), &login.to_ne_bytes()]);
        }
    }
    if mask & attach::CONN_DESCRIPTION != 0 {
        if let Some(s) = &m.description {
            w.push_str(item::CONN_DESCRIPTION, s);
        }
    }
}

/// Lay out a received message in `out` (header and items only) and return where its
/// payload starts (the header length, 8-aligned; the slice is that plus
/// `req.payload_len`) and where each fd's number sits (the `FDS` item's, then each
/// `PAYLOAD_MEMFD`'s), both relative to the message. `meta_mask` selects metadata
/// of sender `m` (whose id is the message's source), translated for a receiver in
/// namespaces `view`; `seq` is the message's number.
pub fn message_layout(
    out: &mut Vec<u8>,
    req: &SendRequest<'_>,
    meta_mask: u64,
    m: &SenderMeta,
    now: Now,
    seq: u64,
    view: Option<&Namespaces>,
) -> (u64, FdSlots) {
    out.clear();
    let meta_mask = meta_mask_for(meta_mask, m, view);
    let header_len = MSG_HEADER_SIZE + req.out_items_len + meta_len(meta_mask, m);
    let mut hdr = req.msg;
    hdr.src_id = m.id;
    hdr.size = header_len as u64;
    out.extend_from_slice(hdr.as_bytes());
    let data_start = align8(header_len as u64);
    let mut data_off = data_start;
    let mut fds_at = None;
    let mut memfds_at: Vec<u32> = Vec::new();
    let mut w = ItemWriter::new(out);
    for it in ItemIter::new(req.items).flatten() {
        match it.type_ {
            item::PAYLOAD_VEC => {
                let v: Vec_ = read_struct(it.payload).unwrap_or_default();
                let off = if v.address_or_offset == 0 {
                    !0
                } else {
                    let o = data_off;
                    data_off += align8(v.size);
                    o
                };
                w.push(
                    item::PAYLOAD_OFF,
                    Vec_ {
                        size: v.size,
                        address_or_offset: off,
                    }
                    .as_bytes(),
                );
            }
            item::FDS => {
                // Numbers are only meaningful in the receiver; it gets the fds with the
                // message event, in this order, and may have its numbers written here
                // when it claims the message.
                fds_at = Some((w.buf.len() + kdbus_abi::ITEM_HEADER_SIZE as usize) as u32);
                w.push(item::FDS, &NO_FDS[..it.payload.len().min(NO_FDS.len())]);
            }
            item::PAYLOAD_MEMFD => {
                // The receiver's fd number goes into `fd` when it claims the message.
                let mut m: Memfd = read_struct(it.payload).unwrap_or_default();
                m.fd = -1;
                m.pad = 0;
                memfds_at.push((w.buf.len() + kdbus_abi::ITEM_HEADER_SIZE as usize + 16) as u32);
                w.push(item::PAYLOAD_MEMFD, m.as_bytes());
            }
            _ => w.push(it.type_, it.payload),
        }
    }
    meta_write(out, meta_mask, m, now, seq, view);
    debug_assert_eq!(out.len(), header_len);
    let mut slots = Vec::new();
    if let Some(at) = fds_at {
        slots.extend((0..req.n_fds as u32).map(|i| at + 4 * i));
    }
    slots.extend(memfds_at);
    (data_start, slots.into_boxed_slice())
}

/// A message laid out for a receiver, kept for the next receiver of the same SEND that
/// takes the same metadata: a broadcast's receivers mostly do, so a broadcast is laid
/// out once per distinct mask, not once per receiver (kdbus built its `kdbus_kmsg`
/// once per SEND). The clock is read once per send, so every copy of one message
/// carries the same timestamp.
#[derive(Default)]
pub(crate) struct Staged {
    /// (send, sequence number, metadata mask, receiver namespaces) the layout is for.
    pub(crate) key: Option<(u64, u64, u64, (u64, u64))>,
    pub(crate) bytes: Vec<u8>,
    /// Where the payload starts, relative to the message.
    pub(crate) data_off: u64,
    pub(crate) slots: FdSlots,
    /// The send the clock was read for, and the reading.
    pub(crate) now_gen: u64,
    pub(crate) now: Now,
}

/// Where a delivered message's fd numbers go, relative to the message, in the order
/// its fds travel: one `u32` slot each.
pub type FdSlots = Box<[u32]>;

/// The data of each payload vector of a request that has data (NULL vectors, padding
/// only, are left out).
pub fn message_payload<'a>(req: &'a SendRequest<'a>) -> impl Iterator<Item = &'a [u8]> + 'a {
    ItemIter::new(req.items)
        .flatten()
        .filter(|it| it.type_ == item::PAYLOAD_VEC)
        .filter_map(|it| {
            let v: Vec_ = read_struct(it.payload)?;
            if v.address_or_offset == 0 {
                return None;
            }
            let start = usize::try_from(v.address_or_offset).ok()?;
            req.body
                .get(start..start.checked_add(usize::try_from(v.size).ok()?)?)
        })
}

/// Lay out a message generated by the bus: one item of `item_type` carrying `payload`
/// (empty for REPLY_TIMEOUT / REPLY_DEAD), plus a timestamp if the receiver wants one.
#[allow(clippy::too_many_arguments)]
pub fn message_layout_kernel(
    out: &mut Vec<u8>,
    dst_id: u64,
    cookie_reply: u64,
    item_type: u64,
    payload: &[u8],
    attach_recv: u64,
    now: Now,
    seq: u64,
) -> u64 {
    out.clear();
    let ts = attach_recv & attach::TIMESTAMP != 0;
    let size = MSG_HEADER_SIZE + item_space(payload.len()) + if ts { item_space(24) } else { 0 };
    let hdr = Msg {
        size: size as u64,
        flags: 0,
        priority: 0,
        dst_id,
        src_id: kdbus_abi::SRC_ID_KERNEL,
        payload_type: payload::KERNEL,
        cookie: 0,
        timeout_or_cookie_reply: cookie_reply,
    };
    out.extend_from_slice(hdr.as_bytes());
    // Written by hand: a header-only item (size 16) is legal here, unlike from clients.
    let h = kdbus_abi::ItemHeader {
        size: 16 + payload.len() as u64,
        type_: item_type,
    };
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(payload);
    let padded = kdbus_abi::align8_usize(out.len());
    out.resize(padded, 0);
    if ts {
        let ts = Timestamp {
            seqnum: seq,
            monotonic_ns: now.monotonic_ns,
            realtime_ns: now.realtime_ns,
        };
        ItemWriter::new(out).push(item::TIMESTAMP, ts.as_bytes());
    }
    size as u64
}
