//! dbus-daemon's XML configuration (`busconfig`), so kdbusd can stand in for it.
//!
//! We read every element dbus-daemon 1.14 knows, follow `<include>` and `<includedir>`,
//! and keep what the broker uses (bus type, listen addresses, limits, policy rules,
//! service directories). Policy rules are checked as dbus-daemon checks them (which
//! attributes go together, which values they take) and become the bus's message policy
//! (`kdbus_core::msgpolicy`). Any error names the file and the line, and is reported
//! before anything is bound or started.

use kdbus_core::msgpolicy::{self, Act, Context, MsgPolicy, NameCrit, Rule};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {msg}")]
pub struct ConfigError {
    pub file: String,
    pub line: u32,
    pub msg: String,
}

/// Who may connect to a bus's D-Bus socket (dbus-daemon's `<allow user=…>`,
/// `<allow group=…>`, `<deny …>` rules): the bus's own user, then each rule that names
/// the client, in order, the last one deciding (default policies, then mandatory
/// ones).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    pub rules: Vec<(bool, Principal)>,
}

/// Whom an admission rule names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Principal {
    AnyUser,
    User(u32),
    AnyGroup,
    Group(u32),
}

impl Admission {
    /// May a client of `uid`, in groups `gids`, connect? `owner`: it is the bus's
    /// own user.
    pub fn admits(&self, uid: u32, gids: &[u32], owner: bool) -> bool {
        self.rules.iter().fold(owner, |allowed, (allow, who)| {
            let names = match who {
                Principal::AnyUser | Principal::AnyGroup => true,
                Principal::User(u) => *u == uid,
                Principal::Group(g) => gids.contains(g),
            };
            if names {
                *allow
            } else {
                allowed
            }
        })
    }
}

/// A user or group name (or number) to its id, from `/etc/passwd` or `/etc/group`.
fn id_of(name: &str, db: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let text = std::fs::read_to_string(db).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// One `<allow>`/`<deny>` rule of a `<policy>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    pub allow: bool,
    pub attrs: Vec<(String, String)>,
    /// What it says about sending, receiving or owning (`None`: a `user=`/`group=`
    /// rule, which is about connecting).
    pub rule: Option<Rule>,
}

/// A `<policy>` block: its context (`default`, `mandatory`, `user=`, `group=`, `at_console=`)
/// and rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub context: (String, String),
    pub rules: Vec<PolicyRule>,
}

#[derive(Clone, Debug, Default)]
pub struct BusConfig {
    pub bus_type: Option<String>,
    pub listen: Vec<String>,
    pub auth: Vec<String>,
    pub service_dirs: Vec<PathBuf>,
    /// Those of `service_dirs` whose files must be named `<Name>.service` (the
    /// transient directory, as dbus-daemon's strict naming).
    pub strict_service_dirs: Vec<PathBuf>,
    pub limits: Vec<(String, u64)>,
    pub policies: Vec<Policy>,
    pub fork: bool,
    pub pidfile: Option<PathBuf>,
    pub user: Option<String>,
    /// `<syslog/>`: log to the system log too.
    pub syslog: bool,
    /// `<keep_umask/>`: a forked bus keeps the umask it was started with.
    pub keep_umask: bool,
    /// Files read, in order (for diagnostics).
    pub files: Vec<PathBuf>,
    /// The `<includedir>`s, watched for changes with the service directories.
    pub include_dirs: Vec<PathBuf>,
}

const KNOWN_LIMITS: &[&str] = &[
    "max_incoming_bytes",
    "max_incoming_unix_fds",
    "max_outgoing_bytes",
    "max_outgoing_unix_fds",
    "max_message_size",
    "max_message_unix_fds",
    "service_start_timeout",
    "auth_timeout",
    "pending_fd_timeout",
    "max_completed_connections",
    "max_incomplete_connections",
    "max_connections_per_user",
    "max_pending_service_starts",
    "max_names_per_connection",
    "max_match_rules_per_connection",
    "max_replies_per_connection",
    "reply_timeout",
    "max_containers",
    "max_containers_per_user",
    "max_container_metadata_bytes",
    "max_connections_per_container",
];

const RULE_ATTRS: &[&str] = &[
    "send_destination_prefix",
    "send_interface",
    "send_member",
    "send_error",
    "send_destination",
    "send_path",
    "send_type",
    "send_requested_reply",
    "send_broadcast",
    "receive_interface",
    "receive_member",
    "receive_error",
    "receive_sender",
    "receive_path",
    "receive_type",
    "receive_requested_reply",
    "eavesdrop",
    "own",
    "own_prefix",
    "user",
    "group",
    "log",
    "max_fds",
    "min_fds",
];

/// Standard session service directories (XDG data dirs).
fn standard_session_dirs() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(h) = std::env::var_os("XDG_DATA_HOME") {
        v.push(Path::new(&h).join("dbus-1/services"));
    } else if let Some(h) = std::env::var_os("HOME") {
        v.push(Path::new(&h).join(".local/share/dbus-1/services"));
    }
    let dirs =
        std::env::var("XDG_DATA_DIRS").unwrap_or_else(|_| "/usr/local/share:/usr/share".into());
    v.extend(
        dirs.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join("dbus-1/services")),
    );
    v.push("/usr/share/dbus-1/services".into());
    v
}

fn standard_system_dirs() -> Vec<PathBuf> {
    [
        "/usr/local/share/dbus-1/system-services",
        "/usr/share/dbus-1/system-services",
        "/lib/dbus-1/system-services",
    ]
    .iter()
    .map(PathBuf::from)
    .collect()
}

impl BusConfig {
    /// Load `path` and everything it includes.
    pub fn load(path: &Path) -> Result<BusConfig, ConfigError> {
        let mut c = BusConfig::default();
        c.load_file(path, 0, false)?;
        Ok(c)
    }

    fn load_file(
        &mut self,
        path: &Path,
        depth: u32,
        ignore_missing: bool,
    ) -> Result<(), ConfigError> {
        let fail = |line: u32, msg: String| ConfigError {
            file: path.display().to_string(),
            line,
            msg,
        };
        if depth > 32 {
            return Err(fail(0, "includes nested too deeply (a loop?)".into()));
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if ignore_missing && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(fail(0, format!("cannot read: {e}"))),
        };
        self.files.push(path.to_path_buf());
        let opts = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        let doc = roxmltree::Document::parse_with_options(&text, opts)
            .map_err(|e| fail(e.pos().row, e.to_string()))?;
        let root = doc.root_element();
        let line = |n: roxmltree::Node<'_, '_>| doc.text_pos_at(n.range().start).row;
        if root.tag_name().name() != "busconfig" {
            return Err(fail(
                line(root),
                format!(
                    "root element is <{}>, not <busconfig>",
                    root.tag_name().name()
                ),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        for n in root.children().filter(|n| n.is_element()) {
            let l = line(n);
            let text = n.text().unwrap_or("").trim().to_string();
            let need_text = |what: &str| -> Result<String, ConfigError> {
                if text.is_empty() {
                    Err(fail(l, format!("<{what}> needs a value")))
                } else {
                    Ok(text.clone())
                }
            };
            match n.tag_name().name() {
                "type" => self.bus_type = Some(need_text("type")?),
                "listen" => {
                    let a = need_text("listen")?;
                    check_listen(&a).map_err(|m| fail(l, m))?;
                    self.listen.push(a);
                }
                "auth" => self.auth.push(need_text("auth")?),
                "include" => {
                    if n.attribute("if_selinux_enabled") == Some("yes") {
                        continue; // SELinux is not supported: dbus-daemon skips these without it
                    }
                    let ignore = n.attribute("ignore_missing") == Some("yes");
                    let p = base.join(need_text("include")?);
                    self.load_file(&p, depth + 1, ignore)?;
                }
                "includedir" => {
                    let dir = base.join(need_text("includedir")?);
                    self.include_dirs.push(dir.clone());
                    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
                        Ok(rd) => rd
                            .flatten()
                            .map(|e| e.path())
                            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
                            .collect(),
                        Err(_) => Vec::new(), // a missing directory is fine
                    };
                    files.sort();
                    for f in files {
                        self.load_file(&f, depth + 1, false)?;
                    }
                }
                "servicedir" => self.service_dirs.push(base.join(need_text("servicedir")?)),
                "standard_session_servicedirs" => {
                    // The transient directory first: it wins (dbus-daemon's order).
                    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
                        let t = Path::new(&d).join("dbus-1/services");
                        self.strict_service_dirs.push(t.clone());
                        self.service_dirs.push(t);
                    }
                    self.service_dirs.extend(standard_session_dirs())
                }
                "standard_system_servicedirs" => self.service_dirs.extend(standard_system_dirs()),
                "limit" => {
                    let name = n
                        .attribute("name")
                        .ok_or_else(|| fail(l, "<limit> needs a name".into()))?;
                    if !KNOWN_LIMITS.contains(&name) {
                        return Err(fail(l, format!("unknown limit \"{name}\"")));
                    }
                    let v = text.parse::<u64>().map_err(|_| {
                        fail(l, format!("limit \"{name}\" is not a number: \"{text}\""))
                    })?;
                    self.limits.push((name.to_string(), v));
                }
                "policy" => self
                    .policies
                    .push(parse_policy(n, &line).map_err(|(l, m)| fail(l, m))?),
                "fork" => self.fork = true,
                "pidfile" => self.pidfile = Some(PathBuf::from(need_text("pidfile")?)),
                "user" => self.user = Some(need_text("user")?),
                "syslog" => self.syslog = true,
                "keep_umask" => self.keep_umask = true,
                "allow_anonymous" | "servicehelper" | "selinux" | "apparmor" => {}
                other => return Err(fail(l, format!("unknown element <{other}>"))),
            }
        }
        Ok(())
    }

    /// Who may connect, from the `user=`/`group=` rules of the default and mandatory
    /// policies. Names that do not resolve name nobody.
    /// The directories whose changes reload the configuration: its `<includedir>`s
    /// and its service directories.
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        let mut v = self.include_dirs.clone();
        v.extend(self.service_dirs.iter().cloned());
        v.sort();
        v.dedup();
        v
    }

    pub fn admission(&self) -> Admission {
        let mut rules = Vec::new();
        for context in ["default", "mandatory"] {
            let policies = self
                .policies
                .iter()
                .filter(|p| p.context.0 == "context" && p.context.1 == context);
            for r in policies.flat_map(|p| &p.rules) {
                for (k, v) in &r.attrs {
                    let who = match (k.as_str(), v.as_str()) {
                        ("user", "*") => Some(Principal::AnyUser),
                        ("user", name) => id_of(name, "/etc/passwd").map(Principal::User),
                        ("group", "*") => Some(Principal::AnyGroup),
                        ("group", name) => id_of(name, "/etc/group").map(Principal::Group),
                        _ => None,
                    };
                    rules.extend(who.map(|w| (r.allow, w)));
                }
            }
        }
        Admission { rules }
    }

    /// The message policy of the bus: every `<policy>`'s send, receive and own rules,
    /// under its context. Policies for users or groups that do not exist are ignored
    /// (dbus-daemon warns and ignores them too).
    pub fn msg_policy(&self) -> MsgPolicy {
        let mut p = MsgPolicy::new();
        for pol in &self.policies {
            let ctx = match (pol.context.0.as_str(), pol.context.1.as_str()) {
                ("context", "mandatory") => Some(Context::Mandatory),
                ("context", _) => Some(Context::Default),
                ("user", u) => id_of(u, "/etc/passwd").map(Context::User),
                ("group", g) => id_of(g, "/etc/group").map(Context::Group),
                (_, v) => Some(Context::Console(v == "true")),
            };
            let Some(ctx) = ctx else {
                tracing::warn!(who = %pol.context.1, "policy for an unknown user or group ignored");
                continue;
            };
            for r in pol.rules.iter().filter_map(|r| r.rule.clone()) {
                p.push(ctx, r);
            }
        }
        p
    }

    /// The bus's limits: kdbus's, with every one the configuration sets replaced.
    pub fn bus_limits(&self) -> kdbus_core::bus::BusLimits {
        let mut l = kdbus_core::bus::BusLimits::default();
        let n = |name| {
            self.limit(name)
                .map(|v| usize::try_from(v).unwrap_or(usize::MAX))
        };
        if let Some(v) = n("max_names_per_connection") {
            // dbus-daemon counts the unique name among a connection's names.
            l.names_per_conn = v.saturating_sub(1);
        }
        if let Some(v) = n("max_match_rules_per_connection") {
            l.matches_per_conn = v;
        }
        if let Some(v) = n("max_replies_per_connection") {
            l.replies_per_conn = v;
        }
        if let Some(v) = n("max_connections_per_user") {
            l.conns_per_user = v;
            l.conns_per_user_binds_all = true;
        }
        if let Some(v) = n("max_completed_connections") {
            l.conns = v;
        }
        l
    }

    /// What a D-Bus client's stream may hold from other peers
    /// (`max_outgoing_bytes`, `max_outgoing_unix_fds`).
    pub fn stream_limits(&self) -> kdbus_bridge::stream_quota::StreamLimits {
        let mut l = kdbus_bridge::stream_quota::StreamLimits::default();
        if let Some(v) = self.limit("max_outgoing_bytes") {
            l.bytes = v;
        }
        if let Some(v) = self.limit("max_outgoing_unix_fds") {
            l.fds = u32::try_from(v).unwrap_or(u32::MAX);
        }
        l
    }

    /// How long the bus waits for a reply (ns), if the configuration says.
    pub fn reply_timeout_ns(&self) -> Option<u64> {
        self.limit("reply_timeout")
            .map(|ms| ms.saturating_mul(1_000_000))
    }

    pub fn limit(&self, name: &str) -> Option<u64> {
        self.limits
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

fn parse_policy(
    n: roxmltree::Node<'_, '_>,
    line: &dyn Fn(roxmltree::Node<'_, '_>) -> u32,
) -> Result<Policy, (u32, String)> {
    let l = line(n);
    let attrs: Vec<(String, String)> = n
        .attributes()
        .map(|a| (a.name().to_string(), a.value().to_string()))
        .collect();
    let context = match attrs.as_slice() {
        [(k, v)] if k == "context" && (v == "default" || v == "mandatory") => (k.clone(), v.clone()),
        [(k, v)] if k == "user" || k == "group" || k == "at_console" => (k.clone(), v.clone()),
        _ => return Err((l, "<policy> needs exactly one of context=\"default|mandatory\", user=, group=, at_console=".into())),
    };
    let mut rules = Vec::new();
    for r in n.children().filter(|c| c.is_element()) {
        let rl = line(r);
        let allow = match r.tag_name().name() {
            "allow" => true,
            "deny" => false,
            other => return Err((rl, format!("unknown element <{other}> in <policy>"))),
        };
        let mut ra = Vec::new();
        for a in r.attributes() {
            if !RULE_ATTRS.contains(&a.name()) {
                return Err((
                    rl,
                    format!(
                        "unknown attribute {}= on <{}>",
                        a.name(),
                        r.tag_name().name()
                    ),
                ));
            }
            ra.push((a.name().to_string(), a.value().to_string()));
        }
        if ra.is_empty() {
            return Err((rl, format!("<{}> without attributes", r.tag_name().name())));
        }
        let rule = rule_from_attrs(allow, &ra).map_err(|m| (rl, m))?;
        rules.push(PolicyRule {
            allow,
            attrs: ra,
            rule,
        });
    }
    Ok(Policy { context, rules })
}

/// The message rule an `<allow>`/`<deny>` element says, checked as dbus-daemon checks
/// it: send attributes do not mix with receive ones, `own`, `user` and `group` stand
/// alone, a member needs an interface or a path, `*` means any.
fn rule_from_attrs(allow: bool, attrs: &[(String, String)]) -> Result<Option<Rule>, String> {
    let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let has = |prefix: &str| attrs.iter().any(|(n, _)| n.starts_with(prefix));
    let alone = ["own", "own_prefix", "user", "group"];
    let standalone = attrs
        .iter()
        .filter(|(n, _)| alone.contains(&n.as_str()))
        .count();
    let sends = has("send_");
    let receives = has("receive_");
    let invalid = || "Invalid combination of attributes".to_string();
    if (sends && receives)
        || (standalone > 0 && attrs.len() > standalone + usize::from(get("log").is_some()))
        || standalone > 1
    {
        return Err(invalid());
    }
    for side in ["send", "receive"] {
        let m = |k: &str| get(&format!("{side}_{k}"));
        if m("member").is_some() && m("interface").is_none() && m("path").is_none() {
            return Err("if you specify a member you must specify an interface or a path".into());
        }
        if m("error").is_some() && (m("interface").is_some() || m("member").is_some()) {
            return Err(invalid());
        }
    }
    let any = |v: Option<&str>| v.filter(|v| *v != "*").map(Arc::<str>::from);
    let boolean = |k: &str| -> Result<Option<bool>, String> {
        match get(k) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(v) => Err(format!(
                "Bad value \"{v}\" for {k} attribute, must be true or false"
            )),
        }
    };
    let number = |k: &str| -> Result<Option<u32>, String> {
        get(k)
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("Bad value \"{v}\" for {k} attribute"))
            })
            .transpose()
    };
    let name = |exact: Option<&str>, prefix: Option<&str>| match (any(exact), prefix) {
        (_, Some(p)) => Some(NameCrit::Prefix(p.into())),
        (Some(n), None) => Some(match n.strip_prefix(":1.").and_then(|i| i.parse().ok()) {
            Some(id) => NameCrit::Unique(id),
            None => NameCrit::Name(n),
        }),
        (None, None) => None,
    };
    if let Some(own) = get("own") {
        let mut r = Rule::new(allow, Act::Own);
        r.name = any(Some(own)).map(NameCrit::Name);
        return Ok(Some(r));
    }
    if let Some(p) = get("own_prefix") {
        let mut r = Rule::new(allow, Act::Own);
        r.name = Some(NameCrit::Prefix(p.into()));
        return Ok(Some(r));
    }
    if get("user").is_some() || get("group").is_some() {
        return Ok(None);
    }
    let side = if sends { "send" } else { "receive" };
    let mut r = Rule::new(allow, if sends { Act::Send } else { Act::Receive });
    let f = |k: &str| get(&format!("{side}_{k}"));
    r.msg_type = match any(f("type")).as_deref() {
        None => 0,
        Some("method_call") => msgpolicy::METHOD_CALL,
        Some("method_return") => msgpolicy::METHOD_RETURN,
        Some("error") => msgpolicy::ERROR,
        Some("signal") => msgpolicy::SIGNAL,
        Some(t) => return Err(format!("Bad message type \"{t}\"")),
    };
    r.path = any(f("path"));
    r.interface = any(f("interface"));
    r.member = any(f("member"));
    r.error = any(f("error"));
    r.name = if sends {
        name(f("destination"), f("destination_prefix"))
    } else {
        name(f("sender"), None)
    };
    if let Some(v) = boolean(&format!("{side}_requested_reply"))? {
        r.requested_reply = v;
    }
    if let Some(v) = boolean("eavesdrop")? {
        r.eavesdrop = v;
    }
    r.broadcast = boolean("send_broadcast")?;
    r.log = sends && get("log") == Some("true");
    r.min_fds = number("min_fds")?.unwrap_or(0);
    r.max_fds = number("max_fds")?.unwrap_or(u32::MAX);
    Ok(Some(r))
}

/// A D-Bus server address we can listen on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Path(PathBuf),
    /// A fresh socket in this directory (`unix:dir=`, `unix:tmpdir=`).
    Dir(PathBuf),
    Abstract(String),
    /// The sockets systemd passed (`systemd:`; `LISTEN_FDS`).
    Systemd,
}

/// Check a `<listen>` / `--address` value: one or more `;`-separated unix addresses.
fn check_listen(a: &str) -> Result<(), String> {
    parse_listen(a).map(|_| ())
}

/// Parse `unix:path=`, `unix:dir=`, `unix:tmpdir=`, `unix:runtime=yes`, `unix:abstract=`,
/// `systemd:`.
pub fn parse_listen(a: &str) -> Result<Vec<ListenAddr>, String> {
    let mut out = Vec::new();
    for one in a.split(';').filter(|s| !s.is_empty()) {
        if one == "systemd:" {
            out.push(ListenAddr::Systemd);
            continue;
        }
        let Some(rest) = one.strip_prefix("unix:") else {
            return Err(format!(
                "unsupported address \"{one}\" (only unix: transports)"
            ));
        };
        let mut addr = None;
        for kv in rest.split(',') {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("malformed address \"{one}\""))?;
            let v = unescape(v);
            addr = Some(match k {
                "path" => ListenAddr::Path(v.into()),
                "dir" | "tmpdir" => ListenAddr::Dir(v.into()),
                "abstract" => ListenAddr::Abstract(v),
                "runtime" if v == "yes" => {
                    let d = std::env::var_os("XDG_RUNTIME_DIR")
                        .ok_or("unix:runtime=yes without XDG_RUNTIME_DIR")?;
                    ListenAddr::Path(Path::new(&d).join("bus"))
                }
                "guid" => continue,
                _ => return Err(format!("unknown key \"{k}\" in \"{one}\"")),
            });
        }
        out.push(addr.ok_or_else(|| format!("address \"{one}\" says nowhere to listen"))?);
    }
    if out.is_empty() {
        return Err("empty address".into());
    }
    Ok(out)
}

/// D-Bus address values escape bytes as `%xx`.
fn unescape(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            // By bytes: what follows '%' need not be ASCII (found by fuzz/config_xml).
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(x) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn loads_the_system_session_conf_if_present() {
        let p = Path::new("/usr/share/dbus-1/session.conf");
        if p.exists() {
            let c = BusConfig::load(p).unwrap();
            assert_eq!(c.bus_type.as_deref(), Some("session"));
            assert!(!c.listen.is_empty());
            assert!(c.limit("max_incoming_bytes").is_some());
        }
    }

    #[test]
    fn includes_and_errors_name_file_and_line() {
        let d = std::env::temp_dir().join(format!("kdbusd-config-test-{}", std::process::id()));
        std::fs::create_dir_all(d.join("conf.d")).unwrap();
        write(
            &d,
            "conf.d/a.conf",
            "<busconfig><limit name=\"reply_timeout\">5</limit></busconfig>",
        );
        let main = write(&d, "main.conf", "<busconfig>\n<type>session</type>\n<listen>unix:tmpdir=/tmp</listen>\n<includedir>conf.d</includedir>\n<include ignore_missing=\"yes\">nope.conf</include>\n<policy context=\"default\"><allow own=\"*\"/></policy>\n</busconfig>");
        let c = BusConfig::load(&main).unwrap();
        assert_eq!(c.limit("reply_timeout"), Some(5));
        assert_eq!(c.policies.len(), 1);
        let bad = write(
            &d,
            "bad.conf",
            "<busconfig>\n<type>session</type>\n<bogus/>\n</busconfig>",
        );
        let e = BusConfig::load(&bad).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(
            e.to_string()
                .contains("bad.conf:3: unknown element <bogus>"),
            "{e}"
        );
        let bad = write(&d, "bad2.conf", "<busconfig>\n<policy context=\"default\">\n<allow sned_destination=\"x\"/>\n</policy>\n</busconfig>");
        assert_eq!(BusConfig::load(&bad).unwrap_err().line, 3);
        let bad = write(
            &d,
            "bad3.conf",
            "<busconfig>\n<listen>tcp:host=x</listen>\n</busconfig>",
        );
        assert_eq!(BusConfig::load(&bad).unwrap_err().line, 2);
        let bad = write(
            &d,
            "bad4.conf",
            "<busconfig>\n<type>session</type\n</busconfig>",
        );
        assert!(BusConfig::load(&bad).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// An escape followed by a character of more than one byte is not one (it used to
    /// cut that character in two and panic).
    #[test]
    fn a_percent_before_a_multibyte_character_is_kept() {
        assert_eq!(
            parse_listen("unix:path=/run/x%2\u{246}y").unwrap(),
            vec![ListenAddr::Path("/run/x%2\u{246}y".into())]
        );
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("unix:path=/a%20b").unwrap(),
            vec![ListenAddr::Path("/a b".into())]
        );
        assert_eq!(
            parse_listen("unix:tmpdir=/tmp;unix:abstract=x")
                .unwrap()
                .len(),
            2
        );
        assert!(parse_listen("tcp:host=localhost").is_err());
        assert!(parse_listen("unix:foo=1").is_err());
    }

    #[test]
    fn the_last_rule_naming_a_client_decides_admission() {
        let a = Admission {
            rules: vec![
                (true, Principal::AnyUser),
                (false, Principal::Group(100)),
                (true, Principal::User(7)),
            ],
        };
        assert!(a.admits(5, &[5], false));
        assert!(!a.admits(5, &[5, 100], false));
        assert!(a.admits(7, &[100], false));
        assert!(Admission::default().admits(1, &[], true));
        assert!(!Admission::default().admits(1, &[], false));
    }
}
