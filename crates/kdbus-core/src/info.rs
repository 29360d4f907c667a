//! Views of the bus: CONN_INFO, BUS_CREATOR_INFO, LIST, and UPDATE of what a
//! connection sends and receives as metadata.
//!
//! Results are written into the caller's own pool as published slices, as kdbus did;
//! metadata is limited to what the target agreed to send, the caller asked for, and
//! the domain attaches at all.

use crate::conn::Conn;
use crate::deliver::conn_write_owner_slice;
use crate::domain::{bus_owned_names, Domain};
use crate::handle::Target;
use crate::ids::ConnKey;
use crate::message::{meta_len, meta_write, SenderMeta};
use crate::policy::policy_parse;
use kdbus_abi::{
    attach, hello_flags, item, list_flags, name_flags, CmdInfo, CmdList, Errno, Info, ItemWriter,
};
use std::sync::Arc;
use zerocopy::IntoBytes;

impl Domain {
    pub(crate) fn cmd_conn_info(
        &mut self,
        key: ConnKey,
        cmd: CmdInfo,
        target: Target<'_>,
    ) -> Result<CmdInfo, Errno> {
        let me = self.conns.get(&key).ok_or(Errno::ECONNRESET)?;
        let bus = self.buses.get(&me.bus).ok_or(Errno::ESHUTDOWN)?;
        // Through a custom endpoint, what it may not see does not exist.
        let asker = me.asker();
        let target_key = match target {
            Target::Name(name) if !bus.ep_sees_name(me.endpoint, &asker, name) => {
                return Err(Errno::ESRCH)
            }
            Target::Name(name) => bus.names.lookup(name).ok_or(Errno::ESRCH)?.owner,
            Target::Id(id) => {
                let k = *bus.conns.get(&id).ok_or(Errno::ENXIO)?;
                if !bus.ep_sees_conn(me.endpoint, &asker, k) {
                    return Err(Errno::ENXIO);
                }
                k
            }
        };
        // Facts a D-Bus client did not read at connect, if asked for (checked with
        // its pidfd, kept from now on where its user may hold one more).
        if let Some(t) = self.conns.get_mut(&target_key) {
            if t.peer.deferred && cmd.attach_flags & crate::meta::DEFERRED_ITEMS != 0 {
                let ledger = self.fd_ledger.as_ref();
                crate::meta::peer_pidfd(&*self.proc_facts, ledger, &mut t.peer);
                self.proc_facts.fill_deferred(&mut t.peer);
            }
        }
        let t = self.conns.get(&target_key).ok_or(Errno::ENXIO)?;
        let meta = SenderMeta {
            id: t.id,
            key: Some(target_key),
            creds: t.peer.creds,
            peer: t.peer.clone(),
            description: t.description.clone(),
            attach_send: t.attach_send,
            names: bus_owned_names(bus, target_key),
        };
        let (id, flags) = (t.id, t.flags);
        // What the target agreed to send, of what the caller asked (HEAD).
        let mask =
            attach::sanitize(cmd.attach_flags)? & t.attach_send & INFO_ATTACH & self.attach_mask;
        let (offset, info_size) = self.write_info(key, id, flags, mask, &meta, None)?;
        let mut wb = cmd;
        wb.offset = offset;
        wb.info_size = info_size;
        Ok(wb)
    }

    pub(crate) fn cmd_bus_creator_info(
        &mut self,
        key: ConnKey,
        cmd: CmdInfo,
    ) -> Result<CmdInfo, Errno> {
        let me = self.conns.get(&key).ok_or(Errno::ECONNRESET)?;
        let bus = self.buses.get(&me.bus).ok_or(Errno::ESHUTDOWN)?;
        let meta = SenderMeta {
            id: 0,
            key: None,
            creds: bus.creator.creds,
            peer: bus.creator.clone(),
            description: None,
            attach_send: attach::ALL,
            names: Vec::new(),
        };
        let (id, flags) = (bus.id, bus.flags);
        // What the creator agreed to show, of what the caller asked (HEAD).
        let mask = attach::sanitize(cmd.attach_flags)?
            & bus.attach_flags_owner
            & INFO_ATTACH
            & self.attach_mask;
        let name: Arc<str> = bus.name.as_str().into();
        let (offset, info_size) = self.write_info(key, id, flags, mask, &meta, Some(&name))?;
        let mut wb = cmd;
        wb.offset = offset;
        wb.info_size = info_size;
        Ok(wb)
    }

    /// Write `kdbus_info` (+ the bus's `MAKE_NAME` for BUS_CREATOR_INFO) + metadata
    /// into the caller's pool as a published slice.
    pub(crate) fn write_info(
        &mut self,
        key: ConnKey,
        id: u64,
        flags: u64,
        mask: u64,
        meta: &SenderMeta,
        make_name: Option<&str>,
    ) -> Result<(u64, u64), Errno> {
        let now = self.clock.now();
        let name_len = make_name.map_or(0, |n| kdbus_abi::items::item_space(n.len() + 1));
        let size =
            std::mem::size_of::<Info>() + name_len + meta_len(mask & !attach::TIMESTAMP, meta);
        self.scratch.clear();
        self.scratch.extend_from_slice(
            Info {
                size: size as u64,
                id,
                flags,
            }
            .as_bytes(),
        );
        if let Some(n) = make_name {
            ItemWriter::new(&mut self.scratch).push_str(item::MAKE_NAME, n);
        }
        meta_write(
            &mut self.scratch,
            mask & !attach::TIMESTAMP,
            meta,
            now,
            0,
            None,
        );
        let conn = self.conns.get_mut(&key).ok_or(Errno::ECONNRESET)?;
        conn_write_owner_slice(conn, &self.scratch)
    }

    /// UPDATE: what the connection sends and receives as metadata from now on.
    pub(crate) fn cmd_update(
        &mut self,
        key: ConnKey,
        send: Option<u64>,
        recv: Option<u64>,
        policy: Option<&[u8]>,
    ) -> Result<(), Errno> {
        // HEAD: only ordinary connections and monitors send metadata, activators
        // may choose what they receive too; a bus's required metadata stays required.
        let conn = self.conns.get(&key).ok_or(Errno::ECONNRESET)?;
        let monitor = conn.flags & hello_flags::MONITOR != 0;
        let activator = conn.flags & hello_flags::ACTIVATOR != 0;
        let send = match send {
            Some(_) if !conn.is_ordinary() && !monitor => return Err(Errno::EOPNOTSUPP),
            Some(s) => {
                let s = attach::sanitize(s)?;
                let req = self.buses.get(&conn.bus).map_or(0, |b| b.attach_flags_req);
                if req & !s != 0 {
                    return Err(Errno::EINVAL);
                }
                Some(s)
            }
            None => None,
        };
        let recv = match recv {
            Some(_) if !conn.is_ordinary() && !monitor && !activator => {
                return Err(Errno::EOPNOTSUPP)
            }
            Some(r) => Some(attach::sanitize(r)?),
            None => None,
        };
        // Only a policy holder speaks for policy, one name per update (HEAD); its old
        // entries are replaced as a whole, or kept if the new ones are refused.
        if let Some(items) = policy {
            if conn.flags & hello_flags::POLICY_HOLDER == 0 {
                return Err(Errno::EOPNOTSUPP);
            }
            let entries = policy_parse(items, true)?;
            if entries.len() > 1 {
                return Err(Errno::E2BIG);
            }
            let bus = self.buses.get_mut(&conn.bus).ok_or(Errno::ESHUTDOWN)?;
            bus.policy.set(key, entries)?;
        }
        let conn = self.conns.get_mut(&key).ok_or(Errno::ECONNRESET)?;
        if let Some(s) = send {
            conn.attach_send = s;
        }
        if let Some(r) = recv {
            conn.attach_recv = r;
        }
        Ok(())
    }

    pub(crate) fn cmd_list(&mut self, key: ConnKey, cmd: CmdList) -> Result<CmdList, Errno> {
        let me = self.conns.get(&key).ok_or(Errno::ECONNRESET)?;
        let bus = self.buses.get(&me.bus).ok_or(Errno::ESHUTDOWN)?;
        self.scratch.clear();
        let f = cmd.flags;
        // Through a custom endpoint: only the names, and connections, it may see.
        let (ep, asker) = (me.endpoint, me.asker());
        let sees = |n: &str| bus.ep_sees_name(ep, &asker, n);
        for ck in bus.conns.values() {
            let Some(c) = self.conns.get(ck) else {
                continue;
            };
            if !bus.ep_sees_conn(ep, &asker, c.key) {
                continue;
            }
            let activator = c.flags & hello_flags::ACTIVATOR != 0;
            if c.flags & (hello_flags::MONITOR | hello_flags::POLICY_HOLDER) != 0
                || (activator && f & list_flags::ACTIVATORS == 0)
            {
                continue;
            }
            let mut added = false;
            if f & (list_flags::NAMES | list_flags::ACTIVATORS) != 0 {
                for n in bus.names.owned_by(c.key).filter(|n| sees(n)) {
                    let Some(e) = bus.names.lookup(n) else {
                        continue;
                    };
                    if f & list_flags::ACTIVATORS != 0 {
                        if let Some(a) = e
                            .activator
                            .filter(|a| *a != c.key)
                            .and_then(|a| self.conns.get(&a))
                        {
                            list_write(&mut self.scratch, a, Some((n, name_flags::ACTIVATOR)));
                            added = true;
                        }
                    }
                    if f & list_flags::NAMES != 0 || activator {
                        list_write(&mut self.scratch, c, Some((n, e.flags)));
                        added = true;
                    }
                }
            }
            if f & list_flags::QUEUED != 0 {
                for n in bus.names.queued_by(c.key).filter(|n| sees(n)) {
                    let Some(e) = bus.names.lookup(n) else {
                        continue;
                    };
                    let flags = e.queue.iter().find(|(q, _)| *q == c.key).map_or(0, |q| q.1);
                    list_write(
                        &mut self.scratch,
                        c,
                        Some((n, flags | name_flags::IN_QUEUE)),
                    );
                    added = true;
                }
            }
            if !added && f & list_flags::UNIQUE != 0 {
                list_write(&mut self.scratch, c, None);
            }
        }
        let conn = self.conns.get_mut(&key).ok_or(Errno::ECONNRESET)?;
        let (offset, list_size) = conn_write_owner_slice(conn, &self.scratch)?;
        let mut wb = cmd;
        wb.offset = offset;
        wb.list_size = list_size;
        Ok(wb)
    }
}

/// One LIST record: `kdbus_info` + an OWNED_NAME item + the description.
fn list_write(out: &mut Vec<u8>, c: &Conn, name: Option<(&Arc<str>, u64)>) {
    let name_len = name.map_or(0, |(n, _)| kdbus_abi::items::item_space(8 + n.len() + 1));
    let desc_len = c
        .description
        .as_ref()
        .map_or(0, |d| kdbus_abi::items::item_space(d.len() + 1));
    let info = Info {
        size: (24 + name_len + desc_len) as u64,
        id: c.id,
        flags: c.flags,
    };
    out.extend_from_slice(info.as_bytes());
    let mut w = ItemWriter::new(out);
    if let Some((n, flags)) = name {
        w.push_parts(
            item::OWNED_NAME,
            &[&flags.to_ne_bytes(), n.as_bytes(), &[0]],
        );
    }
    if let Some(d) = &c.description {
        w.push_str(item::CONN_DESCRIPTION, d);
    }
}

/// Metadata CONN_INFO and BUS_CREATOR_INFO can report (what was captured at connect).
const INFO_ATTACH: u64 = attach::NAMES
    | attach::CREDS
    | attach::PIDS
    | attach::AUXGROUPS
    | attach::TID_COMM
    | attach::PID_COMM
    | attach::EXE
    | attach::CMDLINE
    | attach::CGROUP
    | attach::CAPS
    | attach::AUDIT
    | attach::CONN_DESCRIPTION;
