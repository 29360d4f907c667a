//! A bus: a name in the domain, bloom parameters, and the connections on it.
//!
//! A bus lives as long as the handle that made it (kdbus's bus-owner fd); the broker
//! tells the domain when that handle goes away. Connection ids are handed out per bus,
//! from 1, and never reused.

use crate::ids::ConnKey;
use crate::matches::MatchDb;
use crate::meta::Peer;
use crate::names::NameRegistry;
use crate::policy::{Asker, PolicyDb, SEE, TALK};
use kdbus_abi::{item, items::ItemIter, make_flags, names, BloomParameter, CmdGeneric, Errno};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;

/// One bus of the domain, with everything that lives on it: its connections, names,
/// policy, endpoints and matches.
pub struct Bus {
    /// The bus's id in the domain (a counter, never reused), shown by BUS_CREATOR_INFO.
    pub id: u64,
    /// `<uid>-<name>`, unique in the domain; the bus's directory name.
    pub name: String,
    /// BUS_MAKE's flags, kept verbatim: HELLO returns them as `bus_flags`, and
    /// BUS_CREATOR_INFO as its `flags`.
    pub flags: u64,
    /// Bloom filter size in bytes and hash count, returned at HELLO; a signal whose
    /// filter has another size is refused (EDOM).
    pub bloom: BloomParameter,
    /// The bus's random UUID (v4), returned at HELLO.
    pub id128: [u8; 16],
    /// Metadata every connection must agree to send (BUS_MAKE's `ATTACH_FLAGS_RECV`).
    pub attach_flags_req: u64,
    /// Metadata of the creator that BUS_CREATOR_INFO may show (BUS_MAKE's
    /// `ATTACH_FLAGS_SEND`).
    pub attach_flags_owner: u64,
    /// Who made the bus, as seen then: its uid makes the bus's privileged user, and
    /// BUS_CREATOR_INFO shows this metadata.
    pub creator: Peer,
    /// Unique id -> connection.
    pub conns: BTreeMap<u64, ConnKey>,
    /// The unique id the next connection gets (from 1; ids are never reused).
    pub next_conn_id: u64,
    /// Well-known names: owners and queues.
    pub names: NameRegistry,
    /// Who may see, talk to and own which names: entries of policy holders and
    /// activators.
    pub policy: PolicyDb,
    /// Custom endpoints, by id: their connections see, talk to and own only what their
    /// own policy also allows.
    pub endpoints: HashMap<u64, Endpoint>,
    /// The id the next custom endpoint gets (from 1).
    pub next_endpoint: u64,
    /// Every match entry of every connection on the bus.
    pub matches: MatchDb,
    /// Monitors: they get a copy of every unicast.
    pub monitors: Vec<ConnKey>,
    /// D-Bus peers with eavesdropping rules: every unicast is offered to them.
    pub eavesdroppers: Vec<ConnKey>,
    /// The stream receivers (D-Bus clients) told of name and connection changes
    /// through their protocol: those that asked to be (`conn_set_listener`; a D-Bus
    /// client once it has a match rule or is a monitor). A change costs O(listeners),
    /// not O(connections): connecting is not quadratic in the clients that never
    /// listen.
    pub stream_listeners: std::collections::BTreeSet<ConnKey>,
    /// The configuration's message policy (`msgpolicy`), if it was given one.
    pub msg_policy: Option<crate::msgpolicy::MsgPolicy>,
    /// Per-connection and per-user bounds (kdbus's, or a configuration's).
    pub limits: BusLimits,
}

/// What one connection, one user or the whole bus may hold. kdbus's fixed limits by
/// default; a dbus-daemon configuration's `<limit>`s where one sets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusLimits {
    /// Names a connection may own (`max_names_per_connection`).
    pub names_per_conn: usize,
    /// Match rules a connection may have (`max_match_rules_per_connection`).
    pub matches_per_conn: usize,
    /// Calls a connection may wait for at once (`max_replies_per_connection`).
    pub replies_per_conn: usize,
    /// Connections one user may have in the domain (`max_connections_per_user`).
    pub conns_per_user: usize,
    /// Whether `conns_per_user` binds privileged users too: a configuration's limit
    /// does (dbus-daemon), kdbus's does not.
    pub conns_per_user_binds_all: bool,
    /// Connections on the bus (`max_completed_connections`).
    pub conns: usize,
}

impl Default for BusLimits {
    fn default() -> Self {
        use kdbus_abi::limits;
        BusLimits {
            names_per_conn: limits::CONN_MAX_NAMES,
            matches_per_conn: limits::MATCH_MAX,
            replies_per_conn: limits::CONN_MAX_REQUESTS_PENDING,
            conns_per_user: limits::USER_MAX_CONN,
            conns_per_user_binds_all: false,
            conns: usize::MAX,
        }
    }
}

impl Bus {
    /// kdbus's "privileged bus user": CAP_IPC_OWNER, or the bus's own uid.
    pub fn is_privileged(&self, peer: &Peer) -> bool {
        peer.privileged || peer.creds.uid == self.creator.creds.uid
    }

    /// kdbus's TALK check: may `peer` (sending now as `uid`/`gid`) talk to the
    /// connection `to` of user `to_uid`, which owns `to_names`? Privileged callers and
    /// the receiver's own user may; others need TALK on one of the receiver's names.
    pub fn may_talk<'n>(
        &self,
        peer: &Peer,
        uid: u32,
        gid: u32,
        to_uid: u32,
        mut to_names: impl Iterator<Item = &'n Arc<str>>,
    ) -> bool {
        // A bus with a configured message policy is judged by it alone.
        if self.is_privileged(peer) || uid == to_uid || self.msg_policy.is_some() {
            return true;
        }
        let asker = Asker {
            uid,
            gid,
            groups: peer.groups.as_deref().unwrap_or(&[]),
        };
        to_names.any(|n| self.policy.allows(&asker, n, TALK))
    }
}

/// A custom endpoint (ENDPOINT_MAKE): a socket of its own beside the bus's default one,
/// with a policy of its own applied on top of the bus's. Nothing is visible, talkable or
/// ownable through it unless its policy says so, whoever asks.
pub struct Endpoint {
    /// `<uid>-<name>`, the socket's name in the bus's directory.
    pub name: String,
    /// Its maker, who owns its socket.
    pub uid: u32,
    /// Access flags (`make_flags`): who may connect through it.
    pub flags: u64,
    /// Who may see, talk to and own which names through this endpoint; deny-all until
    /// ENDPOINT_MAKE or ENDPOINT_UPDATE uploads entries.
    pub policy: PolicyDb,
}

impl Bus {
    /// May a connection on endpoint `ep` (`None`: the default one), asking as `asker`,
    /// see `name`? Everything is visible on the default endpoint.
    pub fn ep_sees_name(&self, ep: Option<u64>, asker: &Asker<'_>, name: &str) -> bool {
        ep.is_none_or(|e| {
            self.endpoints
                .get(&e)
                .is_some_and(|ep| ep.policy.allows(asker, name, SEE))
        })
    }

    /// May it see connection `whom`: one of the names `whom` owns?
    pub fn ep_sees_conn(&self, ep: Option<u64>, asker: &Asker<'_>, whom: ConnKey) -> bool {
        ep.is_none()
            || self
                .names
                .owned_by(whom)
                .any(|n| self.ep_sees_name(ep, asker, n))
    }

    /// May it talk to `whom` as far as its endpoint is concerned (kdbus: TALK on one of
    /// `whom`'s names in the endpoint's policy, even for privileged callers)?
    pub fn ep_talks_to(&self, ep: Option<u64>, asker: &Asker<'_>, whom: ConnKey) -> bool {
        let Some(ep) = ep else {
            return true;
        };
        let Some(ep) = self.endpoints.get(&ep) else {
            return false;
        };
        self.names
            .owned_by(whom)
            .any(|n| ep.policy.allows(asker, n, TALK))
    }
}

/// What BUS_MAKE asked for, validated.
pub struct BusSpec {
    /// The bus's full name, `<uid>-<name>` (checked against the caller's uid).
    pub name: String,
    /// The make flags, access bits included (kept as [`Bus::flags`]).
    pub flags: u64,
    /// The `BLOOM_PARAMETER` item, validated by [`bus_validate_bloom`].
    pub bloom: BloomParameter,
    /// `ATTACH_FLAGS_RECV`: see [`Bus::attach_flags_req`] (0 without the item).
    pub attach_flags_req: u64,
    /// `ATTACH_FLAGS_SEND`: see [`Bus::attach_flags_owner`] (0 without the item).
    pub attach_flags_owner: u64,
}

/// Parse and validate a BUS_MAKE command (`kdbus_cmd` + items) from a caller with `uid`.
pub fn bus_parse_make(body: &[u8], uid: u32) -> Result<BusSpec, Errno> {
    let (cmd, size) = kdbus_abi::read_cmd::<CmdGeneric>(body)?;
    if cmd.flags & !make_flags::ALL != 0 {
        return Err(Errno::EINVAL);
    }
    let items = &body[std::mem::size_of::<CmdGeneric>()..size as usize];
    let mut name = None;
    let mut bloom = None;
    let (mut req, mut owner) = (0, 0);
    for it in ItemIter::new(items) {
        let it = it?;
        it.check_payload()?;
        match it.type_ {
            item::MAKE_NAME if name.replace(it.as_str()?).is_some() => {
                return Err(Errno::EEXIST);
            }
            item::BLOOM_PARAMETER => {
                let p: BloomParameter = kdbus_abi::read_struct(it.payload).ok_or(Errno::EINVAL)?;
                if bloom.replace(p).is_some() {
                    return Err(Errno::EEXIST);
                }
            }
            item::ATTACH_FLAGS_RECV => req = kdbus_abi::attach::sanitize(it.as_u64()?)?,
            item::ATTACH_FLAGS_SEND => owner = kdbus_abi::attach::sanitize(it.as_u64()?)?,
            _ => {} // unknown items are ignored, as kdbus does
        }
    }
    let name = name.ok_or(Errno::EBADMSG)?;
    let bloom = bloom.ok_or(Errno::EBADMSG)?;
    names::validate_uid_prefixed(name, uid)?;
    bus_validate_bloom(&bloom)?;
    Ok(BusSpec {
        name: name.to_owned(),
        flags: cmd.flags,
        bloom,
        attach_flags_req: req,
        attach_flags_owner: owner,
    })
}

/// What DOMAIN_MAKE asked for: the new domain's name and access flags. Only a
/// privileged caller may make one (EPERM); the name is a plain sysname, given once
/// (EBADMSG without, EEXIST twice). Whether the parent has one of that name already is
/// for whoever keeps the domains to say.
pub fn domain_parse_make(body: &[u8], peer: &Peer) -> Result<(String, u64), Errno> {
    let access = make_flags::ACCESS_GROUP | make_flags::ACCESS_WORLD;
    let (cmd, name, _) = make_parse_named(body, access)?;
    if !peer.privileged {
        return Err(Errno::EPERM);
    }
    let name = name.ok_or(Errno::EBADMSG)?;
    names::validate_sysname(name)?;
    Ok((name.to_owned(), cmd.flags))
}

/// A `kdbus_cmd` that makes something named (DOMAIN_MAKE, ENDPOINT_MAKE): its header
/// with no flags beyond `allowed` (EINVAL), its items (each checked), and the one
/// `MAKE_NAME` among them if there is one (EEXIST for two).
pub(crate) fn make_parse_named(
    body: &[u8],
    allowed: u64,
) -> Result<(CmdGeneric, Option<&str>, &[u8]), Errno> {
    let (cmd, size) = kdbus_abi::read_cmd::<CmdGeneric>(body)?;
    if cmd.flags & !allowed != 0 {
        return Err(Errno::EINVAL);
    }
    let items = &body[std::mem::size_of::<CmdGeneric>()..size as usize];
    let mut name = None;
    for it in ItemIter::new(items) {
        let it = it?;
        it.check_payload()?;
        if it.type_ == item::MAKE_NAME && name.replace(it.as_str()?).is_some() {
            return Err(Errno::EEXIST);
        }
    }
    Ok((cmd, name, items))
}

/// 8 ≤ size ≤ 4096, a multiple of 8, at least one hash function.
pub fn bus_validate_bloom(b: &BloomParameter) -> Result<(), Errno> {
    let max = kdbus_abi::limits::BUS_BLOOM_MAX_SIZE;
    if b.size < 8 || b.size > max || !b.size.is_multiple_of(8) || b.n_hash < 1 {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// Unix permission bits of a bus's sockets, from its access flags.
pub fn bus_access_mode(flags: u64) -> u32 {
    if flags & make_flags::ACCESS_WORLD != 0 {
        0o666
    } else if flags & make_flags::ACCESS_GROUP != 0 {
        0o660
    } else {
        0o600
    }
}
