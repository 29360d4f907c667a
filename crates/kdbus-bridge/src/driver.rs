//! The bus driver, `org.freedesktop.DBus`: a table of methods.
//!
//! Each method is a row of [`METHODS`]: interface, member, the signature its arguments
//! must have, and a function of 5 to 30 lines. Dispatch is the table's: an unknown
//! member of a known interface is UnknownMethod, an unknown interface
//! UnknownInterface, wrong arguments InvalidArgs, all worded as dbus-daemon words
//! them. Off `/org/freedesktop/DBus` only the compatibility interfaces answer (the
//! driver's own, Introspectable, Peer), and privileged rows (the bus's own user and
//! root only) not even there. Properties and Introspect live in `describe`, the
//! stats interface in `stats`. Methods act on the bus through the core's typed commands (`name_acquire`,
//! `match_add`, ...) and read it through its accessors; a method's result is the reply
//! body, or a [`DErr`] sent as an error, unless the caller asked for no reply.

use crate::body::{err, Body, DErr, ErrName};
use crate::describe::{self, INTROSPECTABLE, MONITORING, PEER, PROPERTIES, STATS};
use crate::owners::{conn_key_of, owner_of};
use crate::peer::peer_mut;
use crate::{Bridge, DRIVER, DRIVER_PATH};
use kdbus_abi::{item, name_flags, Errno, ItemWriter};
use kdbus_core::bus::Bus;
use kdbus_core::conn::Conn;
use kdbus_core::{BusKey, ConnKey, Creds, Domain, Files};
use kdbus_dbus::header::{Fields, Header, MessageType};
use kdbus_dbus::marshal::Reader;
use kdbus_dbus::names::UniqueName;
use kdbus_dbus::rules::Rule;
use zerocopy::IntoBytes;

/// A method call to the driver, as its function sees it.
struct Call<'a> {
    key: ConnKey,
    bus: BusKey,
    serial: u32,
    reply_expected: bool,
    /// The object path called.
    path: &'a str,
    /// The arguments, positioned at the first.
    r: Reader<'a>,
}

type Method = fn(&mut Bridge, &mut Domain, &mut Call<'_>) -> Result<Body, DErr>;

/// One row of the driver: interface, member, argument signature (`None`: any), function,
/// and whether only the bus's own user and root may call it.
struct Row {
    iface: &'static str,
    member: &'static str,
    sig: Option<&'static str>,
    f: Method,
    privileged: bool,
}

/// Interfaces the driver answers on any path (for compatibility, as dbus-daemon);
/// the others only on `/org/freedesktop/DBus`.
fn iface_any_path(iface: &str) -> bool {
    matches!(iface, DRIVER | INTROSPECTABLE | PEER)
}

/// Methods of those interfaces that still want the bus's own path.
fn method_any_path(m: &Row) -> bool {
    iface_any_path(m.iface) && !m.privileged
}

/// dbus-daemon's refusal of a privileged method to anyone else.
fn not_privileged(dom: &Domain, key: ConnKey, m: &Row) -> DErr {
    let me = dom.conn(key);
    err(
        ErrName::AccessDenied,
        format!(
            "rejected attempt to call {} by connection {} ({}) with uid {}",
            m.member,
            UniqueName::from_id(me.map_or(0, |c| c.id)),
            crate::policy::policy_who(dom, Some(key)),
            me.map_or(0, |c| c.peer.creds.uid),
        ),
    )
}

/// The caller is the bus's own user or root (watching everyone's traffic, changing
/// what services start with), and not on a custom endpoint: a sandbox is never
/// privileged, whoever runs in it.
fn caller_is_privileged(dom: &Domain, key: ConnKey) -> bool {
    let Some(me) = dom.conn(key) else {
        return false;
    };
    me.endpoint.is_none() && dom.bus(me.bus).is_some_and(|b| b.is_privileged(&me.peer))
}

const fn row(
    iface: &'static str,
    member: &'static str,
    sig: Option<&'static str>,
    f: Method,
) -> Row {
    Row {
        iface,
        member,
        sig,
        f,
        privileged: false,
    }
}

/// A row only the bus's own user and root may call.
const fn privileged(r: Row) -> Row {
    Row {
        privileged: true,
        ..r
    }
}

static METHODS: &[Row] = &[
    row(DRIVER, "Hello", None, hello),
    row(DRIVER, "RequestName", Some("su"), request_name),
    row(DRIVER, "ReleaseName", Some("s"), release_name),
    row(DRIVER, "ListNames", Some(""), list_names),
    row(
        DRIVER,
        "ListActivatableNames",
        Some(""),
        list_activatable_names,
    ),
    row(DRIVER, "NameHasOwner", Some("s"), name_has_owner),
    row(DRIVER, "GetNameOwner", Some("s"), get_name_owner),
    row(DRIVER, "ListQueuedOwners", Some("s"), list_queued_owners),
    row(
        DRIVER,
        "StartServiceByName",
        Some("su"),
        start_service_by_name,
    ),
    privileged(row(
        DRIVER,
        "UpdateActivationEnvironment",
        Some("a{ss}"),
        update_activation_environment,
    )),
    row(
        DRIVER,
        "GetConnectionUnixUser",
        Some("s"),
        get_connection_unix_user,
    ),
    row(
        DRIVER,
        "GetConnectionUnixProcessID",
        Some("s"),
        get_connection_unix_process_id,
    ),
    row(
        DRIVER,
        "GetConnectionCredentials",
        Some("s"),
        get_connection_credentials,
    ),
    row(
        DRIVER,
        "GetAdtAuditSessionData",
        Some("s"),
        get_adt_audit_session_data,
    ),
    row(
        DRIVER,
        "GetConnectionSELinuxSecurityContext",
        Some("s"),
        get_selinux_context,
    ),
    row(DRIVER, "AddMatch", Some("s"), add_match),
    row(DRIVER, "RemoveMatch", Some("s"), remove_match),
    row(DRIVER, "GetId", Some(""), get_id),
    // Answered by the broker, which reads the files (see `driver_call`).
    row(DRIVER, "ReloadConfig", None, nothing),
    privileged(row(
        MONITORING,
        "BecomeMonitor",
        Some("asu"),
        become_monitor,
    )),
    row(PEER, "Ping", None, nothing),
    row(PEER, "GetMachineId", None, get_machine_id),
    row(INTROSPECTABLE, "Introspect", None, introspect),
    row(PROPERTIES, "Get", Some("ss"), properties_get),
    row(PROPERTIES, "GetAll", Some("s"), properties_get_all),
    row(PROPERTIES, "Set", Some("ssv"), properties_set),
    row(STATS, "GetStats", Some(""), get_stats),
    row(STATS, "GetConnectionStats", Some("s"), get_connection_stats),
    row(STATS, "GetAllMatchRules", Some(""), get_all_match_rules),
];

impl Bridge {
    /// A method call to the driver: run it, and answer unless no reply is expected.
    pub(crate) fn driver_call(
        &mut self,
        dom: &mut Domain,
        key: ConnKey,
        h: &Header<'_>,
        body: &[u8],
    ) {
        if h.member == Some("ReloadConfig") && h.interface.is_none_or(|i| i == DRIVER) {
            // Answered once the broker has read the files (or failed to).
            self.reloads.push((key, h.serial, !h.no_reply_expected()));
            return;
        }
        let reply = self.driver_dispatch(dom, key, h, body);
        if std::mem::take(&mut self.deferred) || h.no_reply_expected() {
            return;
        }
        driver_answer(dom, key, h.serial, reply);
    }
}

/// Answer call `serial` of `key`: its reply body, or an error.
pub(crate) fn driver_answer(
    dom: &mut Domain,
    key: ConnKey,
    serial: u32,
    reply: Result<Body, DErr>,
) {
    dom.with_stream(key, |s, out| {
        let Some(p) = peer_mut(s) else {
            return;
        };
        match reply {
            Ok(b) => {
                let f = Fields {
                    reply_serial: Some(serial),
                    ..Default::default()
                };
                p.write_driver(out, MessageType::MethodReturn, f, &b);
            }
            Err(DErr(name, text)) => p.write_error(out, serial, name.as_str(), &text),
        }
    });
}

impl Bridge {
    fn driver_dispatch(
        &mut self,
        dom: &mut Domain,
        key: ConnKey,
        h: &Header<'_>,
        body: &[u8],
    ) -> Result<Body, DErr> {
        let member = h.member.unwrap_or("");
        let bus = dom
            .conn(key)
            .map(|c| c.bus)
            .ok_or_else(|| err(ErrName::Failed, "gone"))?;
        // Off the bus's own path only its compatibility interfaces answer; without an
        // interface, the first that has the member does (dbus-daemon).
        let canonical = h.path == Some(DRIVER_PATH);
        let mut visible = METHODS.iter().filter(|m| {
            (canonical || iface_any_path(m.iface)) && h.interface.is_none_or(|i| i == m.iface)
        });
        let found_iface = visible.clone().next().is_some();
        let Some(m) = visible.find(|m| m.member == member) else {
            let name = if found_iface {
                ErrName::UnknownMethod
            } else {
                ErrName::UnknownInterface
            };
            return Err(err(
                name,
                format!("{DRIVER} does not understand message {member}"),
            ));
        };
        if m.privileged && !caller_is_privileged(dom, key) {
            return Err(not_privileged(dom, key, m));
        }
        if !canonical && !method_any_path(m) {
            return Err(err(
                ErrName::AccessDenied,
                format!("Method '{member}' is only available at the canonical object path '{DRIVER_PATH}'"),
            ));
        }
        if let Some(want) = m.sig {
            if h.signature != want {
                let sig = h.signature;
                return Err(err(
                    ErrName::InvalidArgs,
                    format!("Call to {member} has wrong args ({sig}, expected {want})\n"),
                ));
            }
        }
        let mut call = Call {
            key,
            bus,
            serial: h.serial,
            reply_expected: !h.no_reply_expected(),
            path: h.path.unwrap_or(DRIVER_PATH),
            r: Reader::new(body, h.endian),
        };
        (m.f)(self, dom, &mut call)
    }
}

fn bad_args(_: kdbus_dbus::marshal::MarshalError) -> DErr {
    err(ErrName::InvalidArgs, "Malformed arguments")
}

impl<'a> Call<'a> {
    fn s(&mut self) -> Result<&'a str, DErr> {
        self.r.string().map_err(bad_args)
    }
    fn u(&mut self) -> Result<u32, DErr> {
        self.r.u32().map_err(bad_args)
    }
    /// An `as` argument.
    fn strings(&mut self) -> Result<Vec<&'a str>, DErr> {
        let end = self.r.array_begin(4).map_err(bad_args)?;
        let mut v = Vec::new();
        while self.r.pos() < end {
            v.push(self.s()?);
        }
        Ok(v)
    }
}

fn no_bus() -> DErr {
    err(ErrName::Failed, "no bus")
}

fn bus_of<'d>(dom: &'d Domain, c: &Call<'_>) -> Result<&'d Bus, DErr> {
    dom.bus(c.bus).ok_or_else(no_bus)
}

fn nothing(_: &mut Bridge, _: &mut Domain, _: &mut Call<'_>) -> Result<Body, DErr> {
    Ok(Body::new())
}

fn hello(_: &mut Bridge, _: &mut Domain, _: &mut Call<'_>) -> Result<Body, DErr> {
    Err(err(ErrName::Failed, "Already handled an Hello message"))
}

fn request_name(_: &mut Bridge, dom: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    let (name, flags) = (c.s()?, c.u()?);
    check_well_known(name, "acquire", "Requested")?;
    if name == DRIVER {
        // dbus-daemon's words, its missing space included.
        let me = UniqueName::from_id(dom.conn(c.key).map_or(0, |k| k.id));
        return Err(err(
            ErrName::InvalidArgs,
            format!("Connection \"{me}\" is not allowed to own the service \"{DRIVER}\"because it is reserved for D-Bus' use only"),
        ));
    }
    let kflags = kdbus_dbus::names::request_name_flags(flags);
    let acquired = dom.name_acquire(c.key, name, kflags);
    let code = match acquired {
        Err(Errno::EPERM) if dom.take_denial().is_some() => {
            let who = UniqueName::from_id(dom.conn(c.key).map_or(0, |k| k.id));
            return Err(err(
                ErrName::AccessDenied,
                format!("Connection \"{who}\" is not allowed to own the service \"{name}\" due to security policies in the configuration file"),
            ));
        }
        Err(Errno::EPERM) => {
            return Err(err(
                ErrName::AccessDenied,
                format!("Connection is not allowed to own the service \"{name}\""),
            ))
        }
        Err(Errno::E2BIG) => {
            // dbus-daemon counts the unique name among the names, so its limit is one
            // more than the core's.
            let max = dom.bus(c.bus).map_or(0, |b| b.limits.names_per_conn + 1);
            let who = UniqueName::from_id(dom.conn(c.key).map_or(0, |k| k.id));
            return Err(err(
                ErrName::LimitsExceeded,
                format!("Connection \"{who}\" is not allowed to own more services (increase limits in configuration file if required; max_names_per_connection={max})"),
            ));
        }
        r => match kdbus_dbus::names::request_name_reply(r) {
            Some(code) => code,
            None => {
                let e = r.err().map(|e| e.to_string()).unwrap_or_default();
                return Err(err(ErrName::Failed, format!("Cannot acquire {name}: {e}")));
            }
        },
    };
    Ok(Body::new().u(code))
}

fn release_name(_: &mut Bridge, dom: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    let name = c.s()?;
    check_well_known(name, "release", "Given")?;
    if name == DRIVER {
        return Err(err(
            ErrName::InvalidArgs,
            "Cannot release the org.freedesktop.DBus service because it is owned by the bus",
        ));
    }
    let code = match dom.name_release(c.key, name) {
        Ok(()) => 1,
        Err(Errno::ESRCH) => 2,
        Err(_) => 3,
    };
    Ok(Body::new().u(code))
}

fn list_names(_: &mut Bridge, dom: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    let bus = bus_of(dom, c)?;
    let me = c.key;
    let mut names = vec![DRIVER.to_string()];
    names.extend(
        bus.conns
            .iter()
            .filter(|(_, k)| dom.conn(**k).is_some_and(|c| c.is_ordinary()))
            .filter(|(_, k)| dom.conn_sees_conn(me, **k))
            .map(|(id, _)| UniqueName::from_id(*id).to_string()),
    );
    names.extend(
        bus.names
            .entries()
            .filter(|e| e.flags & name_flags::ACTIVATOR == 0)
            .filter(|e| dom.conn_sees_name(me, &e.name))
            .map(|e| e.name.to_string()),
    );
    Ok(Body::new().strings(&names))
}

fn list_activatable_names(
    _: &mut Bridge,
    dom: &mut Domain,
    c: &mut Call<'_>,
) -> Result<Body, DErr> {
    let bus = bus_of(dom, c)?;
    let mut names = vec![DRIVER.to_string()];
    names.extend(
        bus.names
            .entries()
            .filter(|e| e.activator.is_some())
            .filter(|e| dom.conn_sees_name(c.key, &e.name))
            .map(|e| e.name.to_string()),
    );
    Ok(Body::new().strings(&names))
}

fn name_has_owner(_: &mut Bridge, dom: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    let name = c.s()?;
    Ok(Body::new().b(owner_of(dom, c.key, name).is_some()))
}

fn get_name_owner(_: &mut Bridge, dom: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    let name = c.s()?;
    match owner_of(dom, c.key, name) {
        Some(o) => Ok(Body::new().s(&o)),
        None => Err(err(
            ErrName::NameHasNoOwner,
            format!("Could not get owner of name '{name}': no such name"),
        )),
    }
}

fn list_queued_owners(_: &mut Bridge, dom: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    let name = c.s()?;
    let bus = bus_of(dom, c)?;
    let seen = dom.conn_sees_name(c.key, name);
    let owners: Vec<String> = match bus.names.lookup(name).filter(|_| seen) {
        Some(e) if e.flags & name_flags::ACTIVATOR == 0 => std::iter::once(e.owner)
            .chain(e.queue.iter().map(|(c, _)| *c))
            .filter_map(|k| dom.conn(k).map(|c| UniqueName::from_id(c.id).to_string()))
            .collect(),
        _ if name == DRIVER => vec![DRIVER.to_string()],
        _ if name.starts_with(':') && owner_of(dom, c.key, name).is_some() => {
            vec![name.to_string()]
        }
        _ => {
            return Err(err(
                ErrName::NameHasNoOwner,
                format!("Could not get owners of name '{name}': no such name"),
            ))
        }
    };
    Ok(Body::new().strings(&owners))
}

fn start_service_by_name(b: &mut Bridge, dom: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    let name = c.s()?;
    // Only names with an activator can be started (dbus-daemon: with a .service
    // file): 2 at once if it already runs; else 1 once the service owns the name, or
    // the error that ended its start (the broker tells, see `activation_came`).
    let bus = bus_of(dom, c)?;
    let seen = dom.conn_sees_name(c.key, name);
    match bus.names.lookup(name).filter(|_| seen) {
        Some(e) if e.activator.is_some() && e.flags & name_flags::ACTIVATOR != 0 => {
            b.starts.push(name.to_string());
            b.start_waiters
                .push((name.to_string(), c.key, c.serial, c.reply_expected));
            b.deferred = true;
            Ok(Body::new())
        }
        Some(e) if e.activator.is_some() => Ok(Body::new().u(2)),
        _ => Err(err(
            ErrName::ServiceUnknown,
            format!("The name {name} was not provided by any .service files"),
        )),
    }
}

/// Variables for the services the bus starts from now on (added or replaced).
fn update_activation_environment(
    b: &mut Bridge,
    _: &mut Domain,
    c: &mut Call<'_>,
) -> Result<Body, DErr> {
    let end = c.r.array_begin(8).map_err(bad_args)?;
    let mut vars = Vec::new();
    while c.r.pos() < end {
        c.r.align(8).map_err(bad_args)?;
        vars.push((c.s()?.to_string(), c.s()?.to_string()));
    }
    b.activation_env.extend(vars);
    Ok(Body::new())
}

fn get_connection_unix_user(
    _: &mut Bridge,
    dom: &mut Domain,
    c: &mut Call<'_>,
) -> Result<Body, DErr> {
    let name = c.s()?;
    let (creds, _) = creds_of(dom, c.key, name, "UID")?;
    Ok(Body::new().u(creds.uid))
}

fn get_connection_unix_process_id(
    _: &mut Bridge,
    dom: &mut Domain,
    c: &mut Call<'_>,
) -> Result<Body, DErr> {
    let name = c.s()?;
    let (creds, _) = creds_of(dom, c.key, name, "PID")?;
    Ok(Body::new().u(creds.pid))
}

fn get_connection_credentials(
    _: &mut Bridge,
    dom: &mut Domain,
    c: &mut Call<'_>,
) -> Result<Body, DErr> {
    let name = c.s()?;
    let (creds, pidfd) = creds_of(dom, c.key, name, "credentials")?;
    // ProcessFD only for callers that agreed to receive fds (dbus-daemon). A
    // connection's pidfd is taken from its socket when first asked for.
    let caller_takes_fds = dom
        .with_stream(c.key, |s, _| peer_mut(s).is_some_and(|p| p.fds_ok))
        .unwrap_or(false);
    let pidfd = match (caller_takes_fds, name) {
        (false, _) => None,
        (true, DRIVER) => pidfd,
        (true, _) => crate::owners::conn_key_of(dom, c.key, name).and_then(|k| dom.conn_pidfd(k)),
    };
    let pidfd = pidfd.filter(|f| f.len() == 1);
    let mut b = Body::new();
    b.sig.push_str("a{sv}");
    let mut w = b.w();
    let a = w.array_begin(8);
    w.align(8);
    w.string("UnixUserID");
    w.variant_u32(creds.uid);
    w.align(8);
    w.string("ProcessID");
    w.variant_u32(creds.pid);
    w.align(8);
    w.string("UnixGroupIDs");
    w.signature("au");
    let g = w.array_begin(4);
    w.u32(creds.gid);
    w.array_end(g);
    if pidfd.is_some() {
        w.align(8);
        w.string("ProcessFD");
        w.variant_fd(0);
    }
    w.array_end(a);
    b.files = pidfd;
    Ok(b)
}

fn get_adt_audit_session_data(
    _: &mut Bridge,
    dom: &mut Domain,
    c: &mut Call<'_>,
) -> Result<Body, DErr> {
    let name = c.s()?;
    conn_of(dom, c.key, name)?;
    Err(err(
        ErrName::AdtAuditDataUnknown,
        format!("Could not determine audit session data for '{name}'"),
    ))
}

fn get_selinux_context(_: &mut Bridge, dom: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    let name = c.s()?;
    conn_of(dom, c.key, name)?;
    Err(err(
        ErrName::SELinuxSecurityContextUnknown,
        format!("Could not determine security context for '{name}'"),
    ))
}

fn add_match(_: &mut Bridge, dom: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    let text = c.s()?;
    let rule = Rule::parse(text).map_err(|e| err(ErrName::MatchRuleInvalid, e.to_string()))?;
    let key = c.key;
    let bus = bus_of(dom, c)?;
    let (bloom, max) = (bus.bloom, bus.limits.matches_per_conn);
    let too_many = || {
        let who = UniqueName::from_id(dom.conn(key).map_or(0, |k| k.id));
        err(
            ErrName::LimitsExceeded,
            format!("Connection \"{who}\" is not allowed to add more match rules (increase limits in configuration file if required; max_match_rules_per_connection={max})"),
        )
    };
    let too_many = too_many();
    // Rules that can take broadcasts from peers go into the bus's match database.
    let takes_broadcasts = matches!(rule.msg_type, None | Some(MessageType::Signal))
        && rule.sender.as_deref() != Some(DRIVER);
    let cookie = dom
        .with_stream(key, |s, _| {
            let p = peer_mut(s).ok_or_else(|| err(ErrName::Failed, "not a D-Bus peer"))?;
            if p.rules.len() >= max {
                return Err(too_many.clone());
            }
            Ok(takes_broadcasts.then(|| p.next_cookie()))
        })
        .ok_or_else(|| err(ErrName::Failed, "gone"))??;
    if let Some(cookie) = cookie {
        let items = kernel_rule_items(&rule, bloom);
        dom.match_add(key, cookie, 0, &items).map_err(|e| match e {
            Errno::EMFILE => too_many,
            e => err(ErrName::Failed, format!("Cannot add the match: {e}")),
        })?;
    }
    let eavesdrop = rule.eavesdrop;
    dom.with_stream(key, |s, _| {
        if let Some(p) = peer_mut(s) {
            p.rules.push((rule, cookie));
        }
    });
    // Any rule may take the driver's NameOwnerChanged: the core tells this peer of
    // name changes from now on (and skips the peers without rules).
    dom.conn_set_listener(key, true);
    if eavesdrop {
        dom.conn_set_eavesdropper(key, true);
    }
    Ok(Body::new())
}

fn remove_match(_: &mut Bridge, dom: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    let text = c.s()?;
    let rule = Rule::parse(text).map_err(|e| err(ErrName::MatchRuleInvalid, e.to_string()))?;
    let key = c.key;
    let removed = dom
        .with_stream(key, |s, _| {
            let p = peer_mut(s).ok_or_else(|| err(ErrName::Failed, "not a D-Bus peer"))?;
            let i = p
                .rules
                .iter()
                .position(|(r, _)| *r == rule)
                .ok_or_else(|| {
                    err(
                        ErrName::MatchRuleNotFound,
                        "The given match rule wasn't found and can't be removed",
                    )
                })?;
            let cookie = p.rules.remove(i).1;
            let eavesdrops = p.rules.iter().any(|(r, _)| r.eavesdrop);
            Ok((cookie, eavesdrops, !p.rules.is_empty()))
        })
        .ok_or_else(|| err(ErrName::Failed, "gone"))??;
    let (removed, still_eavesdrops, still_listens) = removed;
    dom.conn_set_listener(key, still_listens);
    if rule.eavesdrop && !still_eavesdrops {
        dom.conn_set_eavesdropper(key, false);
    }
    if let Some(cookie) = removed {
        if let Err(e) = dom.match_remove(key, cookie) {
            tracing::error!(%e, "a D-Bus rule's match entry was missing");
        }
    }
    Ok(Body::new())
}

fn get_id(_: &mut Bridge, dom: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    let bus = bus_of(dom, c)?;
    let id: String = bus.id128.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Body::new().s(&id))
}

/// BecomeMonitor: the connection gives up its names and matches, sees copies of
/// everything, and sends nothing more.
fn become_monitor(_: &mut Bridge, dom: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    let key = c.key;
    // Which messages it is shown (none: all); a rule that does not parse is the
    // caller's error, and nothing changes.
    let rules = c
        .strings()?
        .into_iter()
        .map(|t| Rule::parse(t).map_err(|e| err(ErrName::MatchRuleInvalid, e.to_string())))
        .collect::<Result<Vec<Rule>, DErr>>()?;
    dom.with_stream(key, |s, out| {
        if let Some(p) = peer_mut(s) {
            let me = UniqueName::from_id(out.id());
            p.write_signal(out, "NameLost", &Body::new().s(&me));
        }
    });
    dom.conn_become_monitor(key);
    dom.conn_set_eavesdropper(key, false);
    dom.conn_set_listener(key, true);
    dom.with_stream(key, |s, _| {
        if let Some(p) = peer_mut(s) {
            p.rules.clear();
            p.monitor_rules = rules;
        }
    });
    Ok(Body::new())
}

fn get_machine_id(b: &mut Bridge, _: &mut Domain, _: &mut Call<'_>) -> Result<Body, DErr> {
    Ok(Body::new().s(&b.machine_id))
}

fn introspect(_: &mut Bridge, _: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    Ok(describe::introspect(c.path))
}

fn properties_get(b: &mut Bridge, _: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    let (i, p) = (c.s()?, c.s()?);
    describe::property_get(b, i, p)
}

fn properties_get_all(b: &mut Bridge, _: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    describe::property_get_all(b, c.s()?)
}

fn properties_set(b: &mut Bridge, _: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    let (i, p) = (c.s()?, c.s()?);
    describe::property_set(b, i, p)
}

fn get_stats(b: &mut Bridge, dom: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    crate::stats::get_stats(b, dom, c.bus)
}

fn get_connection_stats(b: &mut Bridge, dom: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    let name = c.s()?;
    crate::stats::get_connection_stats(b, dom, c.key, c.bus, name)
}

fn get_all_match_rules(_: &mut Bridge, dom: &mut Domain, c: &mut Call<'_>) -> Result<Body, DErr> {
    crate::stats::get_all_match_rules(dom, c.key, c.bus)
}

/// The connection owning `name`.
fn conn_of<'d>(dom: &'d Domain, viewer: ConnKey, name: &str) -> Result<&'d Conn, DErr> {
    let none = || {
        err(
            ErrName::NameHasNoOwner,
            format!("Could not get owner of name '{name}': no such name"),
        )
    };
    let key = conn_key_of(dom, viewer, name).ok_or_else(none)?;
    dom.conn(key).ok_or_else(none)
}

/// Credentials of the owner of `name` (for the bus itself, its creator's), and its
/// pidfd if there is one.
/// `what` names what was asked for in the error ("UID", "PID", "credentials").
fn creds_of(
    dom: &Domain,
    viewer: ConnKey,
    name: &str,
    what: &str,
) -> Result<(Creds, Option<Files>), DErr> {
    let bus = dom.conn(viewer).ok_or_else(no_bus)?.bus;
    let peer = if name == DRIVER {
        &dom.bus(bus).ok_or_else(no_bus)?.creator
    } else {
        &conn_of(dom, viewer, name)
            .map_err(|_| {
                err(
                    ErrName::NameHasNoOwner,
                    format!("Could not get {what} of name '{name}': no such name"),
                )
            })?
            .peer
    };
    Ok((peer.creds, peer.pidfd.clone()))
}

/// A well-known name to `verb` (`what` the name is called in the error: "Requested",
/// "Given", as dbus-daemon varies it).
fn check_well_known(name: &str, verb: &str, what: &str) -> Result<(), DErr> {
    if name.starts_with(':') {
        return Err(err(
            ErrName::InvalidArgs,
            format!("Cannot {verb} a service starting with ':' such as \"{name}\""),
        ));
    }
    if !kdbus_dbus::names::is_bus_name(name) {
        return Err(err(
            ErrName::InvalidArgs,
            format!("{what} bus name \"{name}\" is not valid"),
        ));
    }
    Ok(())
}

/// The bus match-database rules for a D-Bus rule: its bloom mask and its sender.
fn kernel_rule_items(rule: &Rule, bloom: kdbus_abi::BloomParameter) -> Vec<u8> {
    let mut items = Vec::new();
    let mut w = ItemWriter::new(&mut items);
    if let Some(mask) = rule.bloom_mask(bloom) {
        w.push(item::BLOOM_MASK, mask.words().as_bytes());
    }
    match rule.sender.as_deref() {
        Some(s) if s.starts_with(':') => {
            if let Some(id) = UniqueName::parse(s) {
                w.push_u64(item::ID, id);
            }
        }
        Some(s) => w.push_str(item::NAME, s),
        None => {}
    }
    items
}
