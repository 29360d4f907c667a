//! Commands: one decoder for every command of a connection, then the handlers.
//!
//! A request (command number, flags, body, fds) is decoded once into a typed
//! [`Command`], as kdbus's `kdbus_args_parse` did for every ioctl: the fixed struct is
//! read and size-checked, its flags checked against what the command accepts,
//! NEGOTIATE answered, and the items the command takes parsed. Handlers (in the module
//! of what they act on) take typed values. What kind of connection may issue which
//! command (spec CON13) is decided here too.

use crate::domain::{Domain, Request, SendOutcome};
use crate::ids::{ConnKey, FileSet, Files};
use crate::message::{message_parse_send, SendRequest};
use kdbus_abi::items::ItemIter;
use kdbus_abi::wire;
use kdbus_abi::{
    cmd, hello_flags, item, limits, CmdFree, CmdGeneric, CmdInfo, CmdList, CmdMatch, CmdRecv,
    CmdSend, Errno,
};
use std::os::fd::OwnedFd;
use zerocopy::{FromBytes, IntoBytes};

/// A command of a connection, decoded and validated as far as it can be without
/// looking at the bus.
#[derive(Debug)]
// Decoded on the stack once per command and matched at once: boxing the SEND variant
// would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum Command<'a> {
    /// SEND: the message parsed and checked on its own (fds counted, `src_id` this
    /// connection's); routing is left to the bus.
    Send(SendRequest<'a>),
    /// RECV, with the items of a claim (the fd numbers of the receiver).
    Recv {
        /// The fixed struct: flags (PEEK, DROP, USE_PRIORITY, CLAIM) and the priority
        /// threshold.
        cmd: CmdRecv,
        /// The items after the fixed struct: at most an `FDS` item, for a CLAIM.
        claim: &'a [u8],
    },
    /// FREE of the pool slice at `offset`.
    Free(CmdFree),
    /// BYEBYE: leave the bus, if nothing is queued.
    Byebye(CmdGeneric),
    /// CONN_INFO about one connection, by id or by name.
    ConnInfo {
        /// The fixed struct: the metadata asked for (`attach_flags`) and `id` (0: by
        /// name).
        cmd: CmdInfo,
        /// Whom it asks about.
        target: Target<'a>,
    },
    /// BUS_CREATOR_INFO: the metadata of whoever made the bus.
    BusCreatorInfo(CmdInfo),
    /// UPDATE: new attach masks (not yet sanitized), if given; the items again if
    /// they carry policy (NAME, POLICY_ACCESS: a policy holder's new entries).
    Update {
        /// The fixed struct, written back as it came.
        cmd: CmdGeneric,
        /// `ATTACH_FLAGS_SEND`: what this connection agrees to send about itself.
        send: Option<u64>,
        /// `ATTACH_FLAGS_RECV`: what it wants attached to what it receives.
        recv: Option<u64>,
        /// All the items, when any of them is NAME or POLICY_ACCESS.
        policy: Option<&'a [u8]>,
    },
    /// LIST of the bus's connections and names (which ones: the command's flags).
    List(CmdList),
    /// MATCH_ADD: one match entry (its rules) under a cookie.
    MatchAdd {
        /// The fixed struct: the entry's cookie, and REPLACE among the flags.
        cmd: CmdMatch,
        /// The entry's items, unparsed (the match database parses them).
        rules: &'a [u8],
    },
    /// MATCH_REMOVE of every entry with the struct's cookie.
    MatchRemove(CmdMatch),
    /// NAME_ACQUIRE of a well-known name.
    NameAcquire {
        /// The fixed struct: its flags are the name flags (REPLACE_EXISTING,
        /// ALLOW_REPLACEMENT, QUEUE).
        cmd: CmdGeneric,
        /// The name, validated as a well-known name.
        name: &'a str,
    },
    /// NAME_RELEASE of a well-known name.
    NameRelease {
        /// The fixed struct, written back as it came.
        cmd: CmdGeneric,
        /// The name as given, not validated: an invalid one is simply owned by nobody
        /// (ESRCH).
        name: &'a str,
    },
}

/// Whom CONN_INFO asks about.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// A unique connection id.
    Id(u64),
    /// A well-known name (validated).
    Name(&'a str),
}

/// Every command a connection may issue, with the size of its fixed struct. Flags are
/// checked against `kdbus_abi::cmd_allowed_flags`, the table NEGOTIATE answers from, so
/// the two cannot disagree.
const FIXED: &[(u32, usize)] = &[
    (cmd::SEND, std::mem::size_of::<CmdSend>()),
    (cmd::RECV, std::mem::size_of::<CmdRecv>()),
    (cmd::FREE, std::mem::size_of::<CmdFree>()),
    (cmd::BYEBYE, std::mem::size_of::<CmdGeneric>()),
    (cmd::CONN_INFO, std::mem::size_of::<CmdInfo>()),
    (cmd::BUS_CREATOR_INFO, std::mem::size_of::<CmdInfo>()),
    (cmd::UPDATE, std::mem::size_of::<CmdGeneric>()),
    (cmd::LIST, std::mem::size_of::<CmdList>()),
    (cmd::MATCH_ADD, std::mem::size_of::<CmdMatch>()),
    (cmd::MATCH_REMOVE, std::mem::size_of::<CmdMatch>()),
    (cmd::NAME_ACQUIRE, std::mem::size_of::<CmdGeneric>()),
    (cmd::NAME_RELEASE, std::mem::size_of::<CmdGeneric>()),
];

/// The checks every command gets, from the table: its size (at least its fixed
/// struct, at most `CMD_MAX_SIZE`, EMSGSIZE beyond, within what arrived) and its flags.
/// Returns the command's size.
fn command_check(c: u32, body: &[u8]) -> Result<usize, Errno> {
    let fixed = FIXED.iter().find(|(k, _)| *k == c).ok_or(Errno::ENOTTY)?.1;
    let size: u64 = kdbus_abi::read_struct(body).ok_or(Errno::EINVAL)?;
    if size < fixed as u64 {
        return Err(Errno::EINVAL);
    }
    if size > limits::CMD_MAX_SIZE {
        return Err(Errno::EMSGSIZE);
    }
    if size > body.len() as u64 {
        return Err(Errno::EINVAL);
    }
    let flags: u64 = kdbus_abi::read_struct(&body[8..]).ok_or(Errno::EINVAL)?;
    if flags & !kdbus_abi::cmd_allowed_flags(c) != 0 {
        return Err(Errno::EINVAL);
    }
    Ok(size as usize)
}

/// A checked command's fixed struct, and its items.
fn decode_fixed<T: FromBytes>(body: &[u8], size: usize) -> Result<(T, &[u8]), Errno> {
    let t = kdbus_abi::read_struct(body).ok_or(Errno::EINVAL)?;
    Ok((t, &body[std::mem::size_of::<T>()..size]))
}

/// Decode one command of connection `id` (its unique id, which a SEND's `src_id` must
/// be if set) with `n_fds` fds at hand.
pub fn command_decode(c: u32, body: &[u8], id: u64, n_fds: usize) -> Result<Command<'_>, Errno> {
    let size = command_check(c, body)?;
    Ok(match c {
        cmd::SEND => {
            let max = limits::MSG_MAX_PAYLOAD_VEC_SIZE;
            Command::Send(message_parse_send(body, n_fds, id, max)?)
        }
        cmd::RECV => {
            let (cmd, claim) = decode_fixed::<CmdRecv>(body, size)?;
            Command::Recv { cmd, claim }
        }
        cmd::FREE => Command::Free(decode_fixed::<CmdFree>(body, size)?.0),
        cmd::BYEBYE => Command::Byebye(decode_fixed::<CmdGeneric>(body, size)?.0),
        cmd::CONN_INFO => {
            let (cmd, items) = decode_fixed::<CmdInfo>(body, size)?;
            let target = if cmd.id == 0 {
                let name = items_name(items)?.ok_or(Errno::EINVAL)?;
                kdbus_abi::names::validate_well_known_name(name, false)?;
                Target::Name(name)
            } else {
                kdbus_abi::items::validate_all(items)?;
                Target::Id(cmd.id)
            };
            Command::ConnInfo { cmd, target }
        }
        cmd::BUS_CREATOR_INFO => {
            let (cmd, items) = decode_fixed::<CmdInfo>(body, size)?;
            kdbus_abi::items::validate_all(items)?;
            Command::BusCreatorInfo(cmd)
        }
        cmd::UPDATE => {
            let (cmd, items) = decode_fixed::<CmdGeneric>(body, size)?;
            let (mut send, mut recv, mut policy) = (None, None, None);
            for it in ItemIter::new(items) {
                let it = it?;
                it.check_payload()?;
                match it.type_ {
                    item::ATTACH_FLAGS_SEND => send = Some(it.as_u64()?),
                    item::ATTACH_FLAGS_RECV => recv = Some(it.as_u64()?),
                    item::NAME | item::POLICY_ACCESS => policy = Some(items),
                    _ => {}
                }
            }
            Command::Update {
                cmd,
                send,
                recv,
                policy,
            }
        }
        cmd::LIST => Command::List(decode_fixed::<CmdList>(body, size)?.0),
        cmd::MATCH_ADD => {
            let (cmd, rules) = decode_fixed::<CmdMatch>(body, size)?;
            Command::MatchAdd { cmd, rules }
        }
        cmd::MATCH_REMOVE => {
            let (cmd, items) = decode_fixed::<CmdMatch>(body, size)?;
            kdbus_abi::items::validate_all(items)?;
            Command::MatchRemove(cmd)
        }
        cmd::NAME_ACQUIRE => {
            let (cmd, items) = decode_fixed::<CmdGeneric>(body, size)?;
            let name = items_name(items)?.ok_or(Errno::EINVAL)?;
            kdbus_abi::names::validate_well_known_name(name, false)?;
            Command::NameAcquire { cmd, name }
        }
        cmd::NAME_RELEASE => {
            // HEAD looks the name up without judging its form: an invalid name is just
            // one nobody owns (ESRCH).
            let (cmd, items) = decode_fixed::<CmdGeneric>(body, size)?;
            let name = items_name(items)?.ok_or(Errno::EINVAL)?;
            Command::NameRelease { cmd, name }
        }
        _ => return Err(Errno::ENOTTY),
    })
}

impl Domain {
    /// Run one command of a HELLO'd connection. The answer (unless the request asked for
    /// none) lands in the connection's output buffer. `fds` are the fds of the datagram
    /// not yet taken by earlier requests.
    pub fn conn_request(&mut self, key: ConnKey, req: &Request<'_>, fds: &mut Vec<OwnedFd>) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        if let Some(wb) = negotiate(req.cmd, req.body) {
            if let Some(conn) = self.conns.get_mut(&key) {
                let o = &mut conn.output;
                self.outbox
                    .push_record(o, wire::REC_REPLY, 0, 0, req.req_id, &wb);
            }
            return;
        }
        let result = if req.cmd == cmd::RELEASE {
            // Closing: leave the bus whatever is queued, as a closed kdbus handle did.
            self.conn_disconnect(key);
            Ok(Reply::Generic(CmdGeneric::default()))
        } else if !conn.is_active() {
            // HEAD: BYEBYE on a dead connection too (64d871b said EALREADY).
            Err(Errno::ECONNRESET)
        } else if !conn_may(conn.flags, conn.is_ordinary(), req.cmd) {
            Err(Errno::EOPNOTSUPP)
        } else {
            match command_decode(req.cmd, req.body, conn.id, fds.len()) {
                Ok(command) => match self.conn_run(key, command, req, fds) {
                    Some(r) => r,
                    None => return, // a synchronous call: answered when it resolves
                },
                Err(e) => {
                    if req.cmd == cmd::SEND {
                        fds.clear();
                    }
                    Err(e)
                }
            }
        };
        if req.flags & wire::REQ_NO_REPLY != 0 {
            if let Err(e) = result {
                tracing::debug!(conn = key, cmd = cmd::name(req.cmd), %e, "unanswered request failed");
                // A message that went nowhere is not lost silently: its sender hears.
                if req.cmd == cmd::SEND {
                    if let Some(conn) = self.conns.get_mut(&key) {
                        let o = &mut conn.output;
                        self.outbox
                            .push_record(o, wire::REC_SEND_FAILED, 0, e.0, req.req_id, &[]);
                    }
                }
            }
            return;
        }
        let (errno, body): (i32, &[u8]) = match &result {
            Ok(r) => (0, r.as_bytes()),
            Err(e) => (e.0, &[]),
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            let o = &mut conn.output;
            self.outbox
                .push_record(o, wire::REC_REPLY, 0, errno, req.req_id, body);
        }
    }

    /// Run a decoded command; `None` if its answer comes later.
    fn conn_run(
        &mut self,
        key: ConnKey,
        command: Command<'_>,
        req: &Request<'_>,
        fds: &mut Vec<OwnedFd>,
    ) -> Option<Result<Reply, Errno>> {
        Some(match command {
            Command::Send(send) => {
                let n = send.n_fds + send.n_memfds;
                let files: Option<Files> =
                    (n > 0).then(|| FileSet::shared(fds.drain(..n).collect()));
                match self.send(key, &send, files, req.creds, req.req_id) {
                    Ok(SendOutcome::Pending) => return None,
                    Ok(SendOutcome::Done(wb)) => Ok(Reply::Send(wb)),
                    Err(e) => Err(e),
                }
            }
            Command::Recv { cmd, claim } => self.cmd_recv(key, cmd, claim).map(Reply::Recv),
            Command::Free(cmd) => self.cmd_free(key, cmd).map(Reply::Free),
            Command::Byebye(cmd) => self.cmd_byebye(key, cmd).map(Reply::Generic),
            Command::ConnInfo { cmd, target } => {
                self.cmd_conn_info(key, cmd, target).map(Reply::Info)
            }
            Command::BusCreatorInfo(cmd) => self.cmd_bus_creator_info(key, cmd).map(Reply::Info),
            Command::Update {
                cmd,
                send,
                recv,
                policy,
            } => self
                .cmd_update(key, send, recv, policy)
                .map(|()| Reply::Generic(cmd)),
            Command::List(cmd) => self.cmd_list(key, cmd).map(Reply::List),
            Command::MatchAdd { cmd, rules } => self
                .match_add(key, cmd.cookie, cmd.flags, rules)
                .map(|()| Reply::Match(cmd)),
            Command::MatchRemove(cmd) => self
                .match_remove(key, cmd.cookie)
                .map(|()| Reply::Match(cmd)),
            Command::NameAcquire { cmd, name } => {
                self.name_acquire(key, name, cmd.flags).map(|return_flags| {
                    Reply::Generic(CmdGeneric {
                        return_flags,
                        ..cmd
                    })
                })
            }
            Command::NameRelease { cmd, name } => {
                self.name_release(key, name).map(|()| Reply::Generic(cmd))
            }
        })
    }

    /// Answer a request the broker could not even frame, in order with the others.
    pub fn conn_reply_error(&mut self, key: ConnKey, req_id: u64, e: Errno) {
        if let Some(conn) = self.conns.get_mut(&key) {
            let o = &mut conn.output;
            self.outbox
                .push_record(o, wire::REC_REPLY, 0, e.0, req_id, &[]);
        }
    }
}

/// What a handle (a socket of the broker, kdbus's file descriptor) is: each is
/// transformed once, a control handle into a bus owner by BUS_MAKE, an endpoint handle
/// into a connection by HELLO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandleKind {
    /// A domain's control socket, before BUS_MAKE or DOMAIN_MAKE.
    Control,
    /// Made a bus; the bus lives as long as the handle.
    BusOwner,
    /// An endpoint's socket before HELLO (`custom`: a custom endpoint's).
    Endpoint {
        /// A custom endpoint's socket rather than the bus's default one.
        custom: bool,
    },
    /// Made a custom endpoint; the endpoint lives as long as the handle.
    EndpointOwner,
    /// Made a domain; the domain lives as long as the handle.
    DomainOwner,
    /// A connection: its commands go to [`Domain::conn_request`].
    Conn,
}

/// What a command on a handle comes to (kdbus's `handle.c` ioctl switch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandleAction {
    /// A connection's command, for [`Domain::conn_request`].
    Conn,
    /// BUS_MAKE on a control handle ([`Domain::bus_make`]).
    BusMake,
    /// DOMAIN_MAKE on a control handle: a child domain (see `bus::domain_parse_make`).
    DomainMake,
    /// HELLO on an endpoint handle: it becomes a connection.
    Hello,
    /// ENDPOINT_MAKE on the bus's default endpoint: a custom endpoint.
    EndpointMake,
    /// ENDPOINT_UPDATE by the endpoint's owner: its policy is replaced.
    EndpointUpdate,
    /// The owner closes its handle: the bus goes now.
    RemoveBus,
    /// The endpoint's owner closes its handle: the endpoint goes now.
    RemoveEndpoint,
    /// The domain's owner closes its handle: the domain and all in it go now.
    RemoveDomain,
    /// Answered with this errno (0: success), nothing else happens.
    Answer(Errno),
}

/// What command `c` does on a handle of kind `kind`. NEGOTIATE is answered before
/// (see [`negotiate`]).
pub fn handle_action(kind: HandleKind, c: u32) -> HandleAction {
    match kind {
        HandleKind::Conn => HandleAction::Conn,
        HandleKind::BusOwner if c == cmd::RELEASE => HandleAction::RemoveBus,
        // A bus owner's handle is for holding the bus, nothing else (HEAD).
        HandleKind::BusOwner => HandleAction::Answer(Errno::EBADFD),
        HandleKind::EndpointOwner if c == cmd::RELEASE => HandleAction::RemoveEndpoint,
        HandleKind::EndpointOwner if c == cmd::ENDPOINT_UPDATE => HandleAction::EndpointUpdate,
        HandleKind::EndpointOwner => HandleAction::Answer(Errno::EBADFD),
        HandleKind::DomainOwner if c == cmd::RELEASE => HandleAction::RemoveDomain,
        // Like a bus owner's, a domain owner's handle only holds the domain.
        HandleKind::DomainOwner => HandleAction::Answer(Errno::EBADFD),
        HandleKind::Control | HandleKind::Endpoint { .. } if c == cmd::RELEASE => {
            HandleAction::Answer(Errno(0))
        }
        HandleKind::Control if c == cmd::BUS_MAKE => HandleAction::BusMake,
        HandleKind::Control if c == cmd::DOMAIN_MAKE => HandleAction::DomainMake,
        HandleKind::Endpoint { .. } if c == cmd::HELLO => HandleAction::Hello,
        // Endpoints are made through the bus's own endpoint.
        HandleKind::Endpoint { custom: false } if c == cmd::ENDPOINT_MAKE => {
            HandleAction::EndpointMake
        }
        HandleKind::Endpoint { custom: true } if c == cmd::ENDPOINT_MAKE => {
            HandleAction::Answer(Errno::EOPNOTSUPP)
        }
        HandleKind::Control | HandleKind::Endpoint { .. } => HandleAction::Answer(Errno::ENOTTY),
    }
}

/// KDBUS_FLAG_NEGOTIATE (kdbus HEAD): a command with this flag does nothing and
/// gets its fixed part back with `flags` set to what the command accepts.
pub fn negotiate(c: u32, body: &[u8]) -> Option<Vec<u8>> {
    let flags: u64 = kdbus_abi::read_struct(body.get(8..)?)?;
    if flags & kdbus_abi::FLAG_NEGOTIATE == 0 {
        return None;
    }
    let allowed = kdbus_abi::cmd_allowed_flags(c);
    let size: u64 = kdbus_abi::read_struct(body)?;
    let len = usize::try_from(size).ok()?.min(body.len()).max(16);
    let mut wb = body.get(..len)?.to_vec();
    wb[8..16].copy_from_slice(&allowed.to_ne_bytes());
    Some(wb)
}

/// Which commands each kind of connection may issue (spec CON13).
fn conn_may(f: u64, ordinary: bool, c: u32) -> bool {
    let any = matches!(c, cmd::LIST | cmd::CONN_INFO | cmd::BUS_CREATOR_INFO);
    if ordinary || any {
        return true;
    }
    // HEAD: monitors see everything without matches; activators may read what
    // waits for their name.
    if f & hello_flags::MONITOR != 0 {
        return matches!(c, cmd::RECV | cmd::FREE | cmd::UPDATE);
    }
    if f & hello_flags::ACTIVATOR != 0 {
        return matches!(c, cmd::RECV | cmd::FREE | cmd::UPDATE);
    }
    if f & hello_flags::POLICY_HOLDER != 0 {
        return c == cmd::UPDATE;
    }
    false
}

/// A reply body, by command.
pub(crate) enum Reply {
    Send(CmdSend),
    Recv(CmdRecv),
    Free(CmdFree),
    Generic(CmdGeneric),
    Info(CmdInfo),
    List(CmdList),
    Match(CmdMatch),
}

impl Reply {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Reply::Send(c) => c.as_bytes(),
            Reply::Recv(c) => c.as_bytes(),
            Reply::Free(c) => c.as_bytes(),
            Reply::Generic(c) => c.as_bytes(),
            Reply::Info(c) => c.as_bytes(),
            Reply::List(c) => c.as_bytes(),
            Reply::Match(c) => c.as_bytes(),
        }
    }
}

/// The NAME item of a command (a plain string, as in kdbus HEAD); EINVAL if malformed.
fn items_name(items: &[u8]) -> Result<Option<&str>, Errno> {
    let mut name = None;
    for it in ItemIter::new(items) {
        let it = it?;
        if it.type_ == item::NAME {
            if name.is_some() {
                return Err(Errno::EINVAL);
            }
            name = Some(it.as_str()?);
        }
    }
    Ok(name)
}
