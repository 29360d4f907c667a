//! RECV and FREE: the receiver's side of its queue and pool.
//!
//! The client learns of queued messages from announcements and claims them; RECV
//! (PEEK, DROP, priorities) and CLAIM both end with the slice published to the owner,
//! who may then FREE it. A claim may carry the numbers the receiver's fds got in its
//! process, written into the message's `FDS` item.

use crate::conn::{Conn, Queued};
use crate::domain::Domain;
use crate::ids::ConnKey;
use crate::reply::ReplyFailure;
use kdbus_abi::items::ItemIter;
use kdbus_abi::{item, recv_flags, CmdFree, CmdRecv, Errno, MsgInfo};

impl Domain {
    pub(crate) fn cmd_recv(
        &mut self,
        key: ConnKey,
        cmd: CmdRecv,
        claim: &[u8],
    ) -> Result<CmdRecv, Errno> {
        let conn = self.conns.get_mut(&key).ok_or(Errno::ECONNRESET)?;
        let peek = cmd.flags & recv_flags::PEEK != 0;
        let prio = cmd.flags & recv_flags::USE_PRIORITY != 0;
        let seq = if cmd.flags & recv_flags::CLAIM != 0 {
            *conn.queued_at.get(&cmd.msg.offset).ok_or(Errno::ENXIO)?
        } else if conn.queue.is_empty() {
            return Err(Errno::EAGAIN);
        } else if prio {
            conn.queue
                .peek_priority(cmd.priority)
                .ok_or(Errno::EAGAIN)?
                .0
        } else {
            conn.queue.peek().ok_or(Errno::EAGAIN)?.0
        };
        let q = conn.queue.get(seq).ok_or(Errno::ENXIO)?.clone();
        let mut wb = cmd;
        wb.msg = MsgInfo {
            offset: q.offset,
            msg_size: q.size,
            return_flags: 0,
        };
        wb.dropped_msgs = conn.dropped_msgs;
        wb.return_flags = if conn.dropped_msgs > 0 {
            recv_flags::RETURN_DROPPED_MSGS
        } else {
            0
        };
        if peek {
            return Ok(wb);
        }
        if cmd.flags & recv_flags::CLAIM != 0 {
            conn_claim_fd_numbers(conn, &q, claim)?;
        }
        conn.queue.remove(seq);
        conn.queued_at.remove(&q.offset);
        conn.quota.uncharge(q.user, q.size, q.charged_fds);
        if cmd.flags & recv_flags::DROP != 0 {
            if let Err(e) = conn.pool.free(q.offset) {
                crate::bug!(e, "a queued slice could not be freed");
            }
            if let (true, Some(src)) = (q.expect_reply, q.src) {
                if let Some(t) = self.tracker_remove(key, src, q.cookie) {
                    self.tracker_fail(src, q.cookie, t, ReplyFailure::Dead);
                }
            }
        } else {
            if let Err(e) = conn.pool.publish(q.offset) {
                crate::bug!(e, "a queued slice could not be published");
            }
        }
        Ok(wb)
    }

    pub(crate) fn cmd_free(&mut self, key: ConnKey, cmd: CmdFree) -> Result<CmdFree, Errno> {
        let conn = self.conns.get_mut(&key).ok_or(Errno::ECONNRESET)?;
        conn.pool.free_public(cmd.offset)?;
        Ok(cmd)
    }
}

/// A claim may carry an `FDS` item with the numbers the receiver's fds got in its
/// process (they travelled with the announcement): written into the message's `FDS`
/// item, so the receiver finds them where kdbus put them. Nothing else in the slice
/// can be touched this way, and only with as many numbers as the message has fds.
fn conn_claim_fd_numbers(conn: &mut Conn, q: &Queued, items: &[u8]) -> Result<(), Errno> {
    for it in ItemIter::new(items) {
        let it = it?;
        if it.type_ != item::FDS {
            return Err(Errno::EINVAL);
        }
        if it.payload.len() != q.fd_slots.len() * 4 || q.fd_slots.len() != q.n_fds() as usize {
            return Err(Errno::EINVAL);
        }
        for (slot, number) in q.fd_slots.iter().zip(it.payload.chunks_exact(4)) {
            conn.mem.write(q.offset + u64::from(*slot), number);
        }
    }
    Ok(())
}
