//! The message policy on the bus's paths: compiled for a connection when it joins,
//! consulted once per receiver on the one SEND path and on NAME_ACQUIRE, swapped as
//! a whole when the configuration is reloaded.
//!
//! A bus without a message policy (every bus a native client makes) skips all of
//! this. A denial is EPERM to the sender; what was denied and how many rules matched
//! stay in [`Domain::take_denial`] for a personality that words its own errors.

use crate::domain::Domain;
use crate::ids::{BusKey, ConnKey};
use crate::message::{message_payload, SendRequest};
use crate::meta::Peer;
use crate::msgpolicy::{ConnRules, Denial, Facts, FactsReader, MsgPolicy, Party};
use kdbus_abi::{Errno, DST_ID_BROADCAST};
use std::sync::Arc;

impl Domain {
    /// Let the broker read message headers for the message policy.
    pub fn set_facts_reader(&mut self, reader: Box<dyn FactsReader>) {
        self.facts_reader = reader;
    }

    /// Give `bus` a message policy (`None`: none), replacing the one it had, and
    /// compile it for every connection already on it: from the next command on, the
    /// new one alone is in force.
    pub fn bus_set_msg_policy(&mut self, bus_key: BusKey, policy: Option<MsgPolicy>) {
        let Some(bus) = self.buses.get_mut(&bus_key) else {
            return;
        };
        bus.msg_policy = policy;
        for key in bus.conns.values() {
            if let Some(c) = self.conns.get_mut(key) {
                c.rules = bus.msg_policy.as_mut().map(|p| conn_compile(p, &c.peer));
            }
        }
    }

    /// The rules for a new connection of `peer` on `bus_key`.
    pub(crate) fn conn_rules(&mut self, bus_key: BusKey, peer: &Peer) -> Option<Arc<ConnRules>> {
        let p = self.buses.get_mut(&bus_key)?.msg_policy.as_mut()?;
        Some(conn_compile(p, peer))
    }

    /// What the last EPERM of a SEND or NAME_ACQUIRE was about, if the message policy
    /// refused it.
    pub fn take_denial(&mut self) -> Option<Denial> {
        self.denial.take()
    }

    /// The facts of `req` for the message policy: the ones its personality read, or
    /// its first payload vector's header.
    pub(crate) fn msg_facts<'a>(&self, req: &'a SendRequest<'a>) -> Facts<'a> {
        let mut f = match req.facts {
            Some(f) => f,
            None => message_payload(req)
                .next()
                .map(|p| self.facts_reader.read(p))
                .unwrap_or_default(),
        };
        f.fds = req.n_fds as u32;
        if req.msg.dst_id == DST_ID_BROADCAST {
            f.destination = None;
        }
        f
    }

    /// May `src` send `f` to `dst`, and `dst` receive it? `requested`: it is a reply
    /// `dst` waits for. Both must allow; a denial is remembered and is EPERM.
    pub(crate) fn msg_check(
        &mut self,
        src: ConnKey,
        dst: ConnKey,
        f: &Facts<'_>,
        requested: bool,
    ) -> Result<(), Errno> {
        match self.msg_judge(src, dst, f, requested) {
            Ok(()) => Ok(()),
            Err(d) => {
                self.denial = Some(d);
                Err(Errno::EPERM)
            }
        }
    }

    fn msg_judge(
        &self,
        src: ConnKey,
        dst: ConnKey,
        f: &Facts<'_>,
        requested: bool,
    ) -> Result<(), Denial> {
        let (Some(s), Some(d)) = (self.conns.get(&src), self.conns.get(&dst)) else {
            return Ok(());
        };
        let Some(names) = self.buses.get(&s.bus).map(|b| &b.names) else {
            return Ok(());
        };
        if let Some(rules) = &s.rules {
            let to = Party::Conn {
                key: dst,
                id: d.id,
                names,
            };
            if rules.may_send(f, &to, requested)? {
                tracing::warn!(
                    sender = s.id,
                    receiver = d.id,
                    interface = f.interface,
                    member = f.member,
                    "Would reject message (a rule with log=\"true\" let it through)"
                );
            }
        }
        if let Some(rules) = &d.rules {
            let from = Party::Conn {
                key: src,
                id: s.id,
                names,
            };
            rules.may_receive(f, &from, requested, false)?;
        }
        Ok(())
    }

    /// Whether a broadcast `f` of `src` may reach `dst` (both ways); a refusal is
    /// silent, as for any receiver a broadcast skips.
    pub(crate) fn msg_passes(&self, src: ConnKey, dst: ConnKey, f: &Facts<'_>) -> bool {
        self.msg_judge(src, dst, f, false).is_ok()
    }

    /// May `key` own `name` under its bus's message policy?
    pub(crate) fn msg_may_own(&mut self, key: ConnKey, name: &str) -> Result<(), Errno> {
        let Some(rules) = self.conns.get(&key).and_then(|c| c.rules.as_ref()) else {
            return Ok(());
        };
        if rules.may_own(name) {
            return Ok(());
        }
        self.denial = Some(Denial {
            act: crate::msgpolicy::Act::Own,
            matched: 0,
            requested_reply: false,
        });
        Err(Errno::EPERM)
    }
}

/// Compile `p` for `peer`: its uid, its primary and supplementary groups.
fn conn_compile(p: &mut MsgPolicy, peer: &Peer) -> Arc<ConnRules> {
    let mut gids = vec![peer.creds.gid];
    if let Some(g) = &peer.groups {
        gids.extend(
            g.chunks_exact(8)
                .filter_map(kdbus_abi::read_struct::<u64>)
                .filter_map(|g| u32::try_from(g).ok()),
        );
    }
    p.compile(peer.creds.uid, &gids)
}
