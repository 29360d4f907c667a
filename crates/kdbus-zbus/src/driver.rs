//! The D-Bus driver (`org.freedesktop.DBus`) a zbus connection calls, answered here
//! with kdbus commands, as sd-bus did on the kernel's kdbus.
//!
//! The table below is the driver's methods zbus and its users reach for. Each answer
//! (a reply, or the error dbus-daemon gives) is a D-Bus message the connection sends
//! itself through the bus, which keeps the order of what zbus reads, and wakes the
//! reader after the command's own traffic on the socket (see `socket`).
//!
//! Match rules: a rule that can take signals from peers becomes a kdbus match with
//! the rule's bloom mask and sender; zbus checks each message against its rules again,
//! so the mask only has to let through a superset. A rule about the driver's own
//! signals (`sender='org.freedesktop.DBus'`) subscribes, once, to every name and
//! connection change on the bus, which `inbound` turns into those signals.

use crate::shared::Shared;
use kdbus::dbus::header::{self, Fields, Header, MessageType};
use kdbus::dbus::marshal::{Endian, Reader, Writer};
use kdbus::dbus::names::UniqueName;
use kdbus::dbus::rules::Rule;
use kdbus::{Errno, MatchRule, ANY};

/// The driver's name, path and interface.
pub(crate) const DRIVER: &str = "org.freedesktop.DBus";
pub(crate) const DRIVER_PATH: &str = "/org/freedesktop/DBus";

/// The payload type of the message that only wakes our reader.
const WAKE: u64 = u64::from_le_bytes(*b"zbuswake");

/// A method's answer: (signature, body) or (error name, text).
type Answer = Result<(&'static str, Vec<u8>), (&'static str, String)>;

/// A method's handler: the call's body to read, the answer.
type Handler = fn(&Shared, &mut Reader<'_>) -> Answer;

/// The driver's methods: (interface, member, handler).
const METHODS: &[(&str, &str, Handler)] = &[
    (DRIVER, "Hello", hello),
    (DRIVER, "RequestName", request_name),
    (DRIVER, "ReleaseName", release_name),
    (DRIVER, "AddMatch", add_match),
    (DRIVER, "RemoveMatch", remove_match),
    (DRIVER, "GetNameOwner", get_name_owner),
    (DRIVER, "NameHasOwner", name_has_owner),
    (DRIVER, "ListNames", list_names),
    (DRIVER, "GetId", get_id),
    ("org.freedesktop.DBus.Peer", "Ping", ping),
];

/// Answer the driver call `h` (with `body`) through the bus, unless it wants none.
pub(crate) fn call(shared: &Shared, h: &Header<'_>, body: &[u8]) -> zbus::Result<()> {
    let member = h.member.unwrap_or_default();
    let handler = METHODS
        .iter()
        .find(|(iface, m, _)| *m == member && h.interface.is_none_or(|i| i == *iface))
        .map(|(_, _, f)| *f);
    let answer = match handler {
        Some(f) if h.msg_type == MessageType::MethodCall => {
            let mut r = Reader::new(body, h.endian);
            f(shared, &mut r)
        }
        Some(_) => return Ok(()),
        None => Err((
            "org.freedesktop.DBus.Error.NotSupported",
            format!("{member} is not available over kdbus's native transport"),
        )),
    };
    if h.no_reply_expected() {
        // Still wake the reader: the command may have filed messages for it (see
        // `socket`). A message of a payload type of our own, which it skips.
        let wake = kdbus::Message::to(shared.id()).payload_type(WAKE);
        shared.conn.post(&wake).map_err(crate::shared::io_error)?;
        return Ok(());
    }
    let msg = match answer {
        Ok((sig, b)) => {
            let f = Fields {
                reply_serial: Some(h.serial),
                destination: Some(&shared.unique),
                sender: Some(DRIVER),
                signature: sig,
                ..Default::default()
            };
            message(shared, MessageType::MethodReturn, &f, &b)
        }
        Err((name, text)) => error(shared, h.serial, name, &text),
    };
    shared.to_self(&msg)
}

/// A whole message of the driver's, with a serial of the socket's own.
pub(crate) fn message(shared: &Shared, t: MessageType, f: &Fields<'_>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    header::write_fields(
        &mut out,
        Endian::Little,
        t,
        header::FLAG_NO_REPLY_EXPECTED,
        body.len() as u32,
        shared.serial(),
        f,
    );
    out.extend_from_slice(body);
    out
}

/// The driver's error `name` with `text`, in reply to our call `serial`.
pub(crate) fn error(shared: &Shared, serial: u32, name: &str, text: &str) -> Vec<u8> {
    let f = Fields {
        error_name: Some(name),
        reply_serial: Some(serial),
        destination: Some(&shared.unique),
        sender: Some(DRIVER),
        signature: "s",
        ..Default::default()
    };
    message(shared, MessageType::Error, &f, &one(|w| w.string(text)))
}

/// A body written by `f`.
fn one(f: impl FnOnce(&mut Writer<'_>)) -> Vec<u8> {
    let mut body = Vec::new();
    f(&mut Writer::new(&mut body, Endian::Little));
    body
}

fn invalid_args(e: impl std::fmt::Display) -> (&'static str, String) {
    ("org.freedesktop.DBus.Error.InvalidArgs", e.to_string())
}

fn string<'a>(r: &mut Reader<'a>) -> Result<&'a str, (&'static str, String)> {
    r.string().map_err(invalid_args)
}

fn hello(shared: &Shared, _: &mut Reader<'_>) -> Answer {
    Ok(("s", one(|w| w.string(&shared.unique))))
}

fn request_name(shared: &Shared, r: &mut Reader<'_>) -> Answer {
    let name = string(r)?;
    let flags = r.u32().map_err(invalid_args)?;
    let kflags = kdbus::dbus::names::request_name_flags(flags);
    let acquired = shared
        .conn
        .acquire_name(name, kflags)
        .map_err(|e| e.errno());
    let code = match (kdbus::dbus::names::request_name_reply(acquired), acquired) {
        (Some(code), _) => code,
        (None, Err(Errno::EPERM | Errno::EACCES)) => {
            return Err((
                "org.freedesktop.DBus.Error.AccessDenied",
                format!(
                    "Connection \"{}\" is not allowed to own the service \"{name}\"",
                    shared.unique
                ),
            ))
        }
        (None, e) => return Err(invalid_args(format!("Cannot acquire \"{name}\": {e:?}"))),
    };
    Ok(("u", one(|w| w.u32(code))))
}

fn release_name(shared: &Shared, r: &mut Reader<'_>) -> Answer {
    let name = string(r)?;
    let code = match shared.conn.release_name(name) {
        Ok(()) => 1,
        Err(e) if e.errno() == Errno::ESRCH => 2,
        Err(_) => 3,
    };
    Ok(("u", one(|w| w.u32(code))))
}

fn add_match(shared: &Shared, r: &mut Reader<'_>) -> Answer {
    let text = string(r)?;
    let rule = Rule::parse(text)
        .map_err(|e| ("org.freedesktop.DBus.Error.MatchRuleInvalid", e.to_string()))?;
    let failed = |e: kdbus::Error| {
        (
            "org.freedesktop.DBus.Error.LimitsExceeded",
            format!("Cannot add the match: {e}"),
        )
    };
    let mut st = shared.state();
    if rule.sender.as_deref() == Some(DRIVER) {
        if st.notifications.is_none() {
            st.match_cookie += 1;
            let cookie = st.match_cookie;
            // One entry per kind of change, all under one cookie.
            let kinds = [
                MatchRule::new().name_add(ANY, None),
                MatchRule::new().name_remove(ANY, None),
                MatchRule::new().name_change(ANY, ANY, None),
                MatchRule::new().id_add(ANY),
                MatchRule::new().id_remove(ANY),
            ];
            for k in &kinds {
                shared.conn.add_match(cookie, k, false).map_err(failed)?;
            }
            st.notifications = Some(cookie);
        }
        st.rules.push((rule, 0));
        return Ok(("", Vec::new()));
    }
    let mut cookie = 0;
    if matches!(rule.msg_type, None | Some(MessageType::Signal)) {
        let mut m = MatchRule::new();
        let mask = rule.bloom_mask(shared.conn.bloom());
        if let Some(mask) = &mask {
            m = m.bloom(mask);
        }
        match rule.sender.as_deref() {
            Some(s) if s.starts_with(':') => {
                if let Some(id) = UniqueName::parse(s) {
                    m = m.sender(id);
                }
            }
            Some(s) => m = m.sender_name(s),
            None => {}
        }
        st.match_cookie += 1;
        cookie = st.match_cookie;
        shared.conn.add_match(cookie, &m, false).map_err(failed)?;
    }
    st.rules.push((rule, cookie));
    Ok(("", Vec::new()))
}

fn remove_match(shared: &Shared, r: &mut Reader<'_>) -> Answer {
    let text = string(r)?;
    let rule = Rule::parse(text)
        .map_err(|e| ("org.freedesktop.DBus.Error.MatchRuleInvalid", e.to_string()))?;
    let mut st = shared.state();
    let Some(at) = st.rules.iter().position(|(r, _)| *r == rule) else {
        return Err((
            "org.freedesktop.DBus.Error.MatchRuleNotFound",
            "The given match rule wasn't found and can't be removed".into(),
        ));
    };
    let (_, cookie) = st.rules.remove(at);
    if cookie != 0 {
        if let Err(e) = shared.conn.match_remove(cookie) {
            tracing::warn!(%e, "a rule's kdbus match was missing");
        }
    }
    Ok(("", Vec::new()))
}

/// The unique name owning `name`, if any.
fn owner(shared: &Shared, name: &str) -> Option<String> {
    if name == DRIVER {
        return Some(DRIVER.to_string());
    }
    let id = match UniqueName::parse(name) {
        Some(id) => shared.conn.info(id, 0).ok()?.id,
        None => shared.conn.info_by_name(name, 0).ok()?.id,
    };
    Some(UniqueName::from_id(id).as_str().to_string())
}

fn get_name_owner(shared: &Shared, r: &mut Reader<'_>) -> Answer {
    let name = string(r)?;
    match owner(shared, name) {
        Some(o) => Ok(("s", one(|w| w.string(&o)))),
        None => Err((
            "org.freedesktop.DBus.Error.NameHasNoOwner",
            format!("Could not get owner of name '{name}': no such name"),
        )),
    }
}

fn name_has_owner(shared: &Shared, r: &mut Reader<'_>) -> Answer {
    let name = string(r)?;
    let has = owner(shared, name).is_some();
    Ok(("b", one(|w| w.bool(has))))
}

fn list_names(shared: &Shared, _: &mut Reader<'_>) -> Answer {
    use kdbus::abi::list_flags;
    let conns = shared
        .conn
        .list(list_flags::UNIQUE | list_flags::NAMES)
        .map_err(|e| ("org.freedesktop.DBus.Error.Failed", e.to_string()))?;
    let mut names = vec![DRIVER.to_string()];
    for c in &conns {
        names.push(UniqueName::from_id(c.id).as_str().to_string());
        names.extend(c.names.iter().map(|(n, _)| n.clone()));
    }
    names.sort();
    names.dedup();
    Ok((
        "as",
        one(|w| {
            let a = w.array_begin(4);
            for n in &names {
                w.string(n);
            }
            w.array_end(a);
        }),
    ))
}

fn get_id(shared: &Shared, _: &mut Reader<'_>) -> Answer {
    let id: String = shared
        .conn
        .bus_id128()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(("s", one(|w| w.string(&id))))
}

fn ping(_: &Shared, _: &mut Reader<'_>) -> Answer {
    Ok(("", Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_each_method_once() {
        for (i, (iface, m, _)) in METHODS.iter().enumerate() {
            assert!(
                METHODS[i + 1..]
                    .iter()
                    .all(|(j, n, _)| (j, n) != (iface, m)),
                "{iface}.{m}"
            );
        }
    }
}
