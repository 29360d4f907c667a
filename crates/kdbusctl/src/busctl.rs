//! busctl's argument and output syntax for D-Bus calls: `call DEST PATH IFACE METHOD
//! [SIGNATURE ARGS...]` and `get-property`, over the bus's D-Bus socket or its native
//! one.
//!
//! Arguments follow busctl: each complete type of the signature takes its value from
//! the words that follow; an array takes a count then that many elements, a dict a
//! count then key/value pairs, a variant a signature then its value, a struct its
//! fields in order; booleans are `true`/`false` (also `yes`/`no`, `1`/`0`). Replies
//! print as busctl prints them: the body's signature, then every value (strings
//! quoted, arrays as their count then elements, variants as their signature then
//! value, structs and dict entries flat).
//!
//! Marshalling is ours (`kdbus_dbus::marshal`), so the same message goes out either
//! way: through the D-Bus socket as a D-Bus message, or through the native socket as
//! the payload of a kdbus message (payload type DBus), which the bus routes to D-Bus
//! and native peers alike.

use crate::bench::dbus::Client;
use kdbus::dbus::header::{self, Fields, MessageType};
use kdbus::dbus::marshal::{Endian, Reader, Writer};
use kdbus::{Connection, Message};
use std::time::Duration;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The complete types of a signature, in order.
pub fn complete_types(sig: &str) -> Res<Vec<&str>> {
    let b = sig.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let end = type_end(b, i)?;
        out.push(&sig[i..end]);
        i = end;
    }
    Ok(out)
}

/// Where the complete type starting at `i` ends.
fn type_end(b: &[u8], i: usize) -> Res<usize> {
    match b.get(i) {
        Some(b'a') => type_end(b, i + 1),
        Some(&open @ (b'(' | b'{')) => {
            let close = if open == b'(' { b')' } else { b'}' };
            let mut j = i + 1;
            while b.get(j) != Some(&close) {
                if j >= b.len() {
                    return Err("unbalanced signature".into());
                }
                j = type_end(b, j)?;
            }
            Ok(j + 1)
        }
        Some(c) if b"ybnqiuxtdsogvh".contains(c) => Ok(i + 1),
        _ => Err(format!("bad signature at {i}").into()),
    }
}

/// A signature the protocol allows (at most 255 bytes, nesting bounded, no empty
/// structs, dict entries only in arrays): anything else is refused before use.
fn valid_signature(sig: &str) -> Res<()> {
    if sig.is_empty() || kdbus::dbus::names::is_signature(sig) {
        Ok(())
    } else {
        Err(format!("not a valid D-Bus signature: {sig}").into())
    }
}

fn align_of(t: u8) -> usize {
    match t {
        b'y' | b'g' | b'v' => 1,
        b'n' | b'q' => 2,
        b'x' | b't' | b'd' | b'(' | b'{' => 8,
        _ => 4,
    }
}

fn next<'a>(words: &mut impl Iterator<Item = &'a str>, what: &str) -> Res<&'a str> {
    words.next().ok_or_else(|| format!("missing {what}").into())
}

fn num<T: std::str::FromStr>(s: &str) -> Res<T> {
    s.parse()
        .map_err(|_| format!("not a number of the right kind: {s}").into())
}

/// Marshal the words for one complete type `t`.
fn write_value<'a>(
    w: &mut Writer<'_>,
    t: &str,
    words: &mut impl Iterator<Item = &'a str>,
) -> Res<()> {
    let b = t.as_bytes();
    match b[0] {
        b'y' => w.u8(num(next(words, "byte")?)?),
        b'b' => {
            let v = next(words, "boolean")?;
            w.bool(match v {
                "true" | "yes" | "1" | "on" => true,
                "false" | "no" | "0" | "off" => false,
                _ => return Err(format!("not a boolean: {v}").into()),
            })
        }
        b'n' | b'q' => {
            let word = next(words, "16-bit number")?;
            let v: u16 = if b[0] == b'n' {
                num::<i16>(word)? as u16
            } else {
                num::<u16>(word)?
            };
            w.align(2);
            // Two bytes, little endian (we write little-endian messages).
            for byte in v.to_le_bytes() {
                w.u8(byte);
            }
        }
        b'i' => w.u32(num::<i32>(next(words, "int32")?)? as u32),
        b'u' | b'h' => w.u32(num(next(words, "uint32")?)?),
        b'x' => w.u64(num::<i64>(next(words, "int64")?)? as u64),
        b't' => w.u64(num(next(words, "uint64")?)?),
        b'd' => w.u64(num::<f64>(next(words, "double")?)?.to_bits()),
        b's' | b'o' => w.string(next(words, "string")?),
        b'g' => {
            let g = next(words, "signature")?;
            valid_signature(g)?;
            w.signature(g)
        }
        b'v' => {
            let inner = next(words, "variant signature")?;
            valid_signature(inner)?;
            if complete_types(inner)?.len() != 1 {
                return Err(format!("a variant holds one complete type, not {inner}").into());
            }
            w.signature(inner);
            write_value(w, inner, words)?;
        }
        b'a' => {
            let elem = &t[1..];
            let n: usize = num(next(words, "array length")?)?;
            let a = w.array_begin(align_of(elem.as_bytes()[0]));
            for _ in 0..n {
                write_value(w, elem, words)?;
            }
            w.array_end(a);
        }
        b'(' | b'{' => {
            w.align(8);
            for f in complete_types(&t[1..t.len() - 1])? {
                write_value(w, f, words)?;
            }
        }
        _ => return Err(format!("cannot write {t}").into()),
    }
    Ok(())
}

/// busctl's trailing words, `[SIGNATURE ARGS...]`: the signature and the body.
pub fn marshal_words(words: &[String]) -> Res<(&str, Vec<u8>)> {
    match words.split_first() {
        Some((sig, rest)) => Ok((sig.as_str(), marshal(sig, rest)?)),
        None => Ok(("", Vec::new())),
    }
}

/// The body for `sig` from busctl-style `args`.
pub fn marshal(sig: &str, args: &[String]) -> Res<Vec<u8>> {
    valid_signature(sig)?;
    let mut body = Vec::new();
    let mut w = Writer::new(&mut body, Endian::Little);
    let mut words = args.iter().map(String::as_str);
    for t in complete_types(sig)? {
        write_value(&mut w, t, &mut words)?;
    }
    if let Some(extra) = words.next() {
        return Err(format!("more arguments than the signature takes: {extra}").into());
    }
    Ok(body)
}

/// A string as busctl quotes it.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Print one value of complete type `t`, busctl-style, into `out`.
fn read_value(r: &mut Reader<'_>, t: &str, out: &mut Vec<String>) -> Res<()> {
    let b = t.as_bytes();
    match b[0] {
        b'y' => out.push(r.u8()?.to_string()),
        b'b' => out.push(r.bool()?.to_string()),
        b'n' => out.push((r.u16()? as i16).to_string()),
        b'q' => out.push(r.u16()?.to_string()),
        b'i' => out.push((r.u32()? as i32).to_string()),
        b'u' | b'h' => out.push(r.u32()?.to_string()),
        b'x' => out.push((r.u64()? as i64).to_string()),
        b't' => out.push(r.u64()?.to_string()),
        b'd' => out.push(format!("{}", f64::from_bits(r.u64()?))),
        b's' => out.push(quoted(r.string()?)),
        b'o' => out.push(quoted(r.object_path()?)),
        b'g' => out.push(quoted(r.signature()?)),
        b'v' => {
            let inner = r.signature()?.to_string();
            out.push(inner.clone());
            read_value(r, &inner, out)?;
        }
        b'a' => {
            let elem = &t[1..];
            let end = r.array_begin(align_of(elem.as_bytes()[0]))?;
            let mut items = Vec::new();
            let mut n = 0;
            while r.pos() < end {
                read_value(r, elem, &mut items)?;
                n += 1;
            }
            out.push(n.to_string());
            out.extend(items);
        }
        b'(' | b'{' => {
            r.align(8)?;
            for f in complete_types(&t[1..t.len() - 1])? {
                read_value(r, f, out)?;
            }
        }
        _ => return Err(format!("cannot read {t}").into()),
    }
    Ok(())
}

/// A body of signature `sig` as busctl prints it: the signature, then the values.
/// The body is checked against its signature first (nesting bounded, lengths within
/// the body), as it may come from anyone.
pub fn format_body(sig: &str, body: &[u8], endian: Endian) -> Res<String> {
    kdbus::dbus::marshal::body_validate(body, endian, sig, u32::MAX)?;
    let mut r = Reader::new(body, endian);
    let mut out = vec![sig.to_string()];
    for t in complete_types(sig)? {
        read_value(&mut r, t, &mut out)?;
    }
    Ok(out.join(" "))
}

/// Where a call goes: the D-Bus socket at an address, or the native bus.
#[derive(Clone, Copy)]
pub enum Via<'a> {
    DBus(&'a str),
    Native(&'a Connection),
}

/// A method call: the reply's (signature, body, endian), or the D-Bus error.
pub struct Call<'a> {
    pub dest: &'a str,
    pub path: &'a str,
    pub iface: &'a str,
    pub method: &'a str,
    pub sig: &'a str,
    pub body: Vec<u8>,
}

pub fn call(via: Via<'_>, c: &Call<'_>, timeout: Duration) -> Res<(String, Vec<u8>, Endian)> {
    let fields = Fields {
        path: Some(c.path),
        interface: (!c.iface.is_empty()).then_some(c.iface),
        member: Some(c.method),
        destination: Some(c.dest),
        signature: c.sig,
        ..Default::default()
    };
    let reply = match via {
        Via::DBus(address) => {
            let mut client = Client::connect(address)?;
            client.read_timeout(timeout)?;
            let serial = client.send(MessageType::MethodCall, &fields, &c.body, 0)?;
            client.wait_reply_or_error(serial)?
        }
        Via::Native(conn) => {
            let serial = 1u32;
            let mut msg = Vec::new();
            header::write_fields(
                &mut msg,
                Endian::Little,
                MessageType::MethodCall,
                0,
                c.body.len() as u32,
                serial,
                &fields,
            );
            msg.extend_from_slice(&c.body);
            let to = match c.dest.strip_prefix(":1.").and_then(|n| n.parse().ok()) {
                Some(id) => Message::to(id),
                None => Message::to_name(c.dest),
            };
            let r = conn.call(to.cookie(u64::from(serial)).payload(&msg), timeout)?;
            r.payload_bytes()
        }
    };
    let h = header::parse(&reply)?;
    let body = reply
        .get(h.header_len..h.total_len())
        .ok_or("a reply shorter than its header says")?
        .to_vec();
    if h.msg_type == MessageType::Error {
        let text = Reader::new(&body, h.endian)
            .string()
            .unwrap_or("")
            .to_string();
        return Err(format!("{}: {text}", h.error_name.unwrap_or("error")).into());
    }
    Ok((h.signature.to_string(), body, h.endian))
}

/// One object's introspection XML (org.freedesktop.DBus.Introspectable.Introspect).
pub fn introspect_xml(via: Via<'_>, dest: &str, path: &str) -> Res<String> {
    let c = Call {
        dest,
        path,
        iface: "org.freedesktop.DBus.Introspectable",
        method: "Introspect",
        sig: "",
        body: Vec::new(),
    };
    let (sig, body, endian) = call(via, &c, Duration::from_secs(5))?;
    if sig != "s" {
        return Err(format!("Introspect answered '{sig}'").into());
    }
    Ok(Reader::new(&body, endian).string()?.to_string())
}

/// Introspection XML, which starts with a DOCTYPE.
fn parse_xml(xml: &str) -> Res<roxmltree::Document<'_>> {
    let opt = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    Ok(roxmltree::Document::parse_with_options(xml, opt)?)
}

/// The object paths below `path` (its children's absolute paths), from its XML.
fn children(xml: &str, path: &str) -> Res<Vec<String>> {
    let doc = parse_xml(xml)?;
    let mut out: Vec<String> = doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("node"))
        .filter_map(|n| n.attribute("name"))
        .map(|name| match path {
            "/" => format!("/{name}"),
            p => format!("{p}/{name}"),
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Every object path of `dest`, from `/` down (busctl tree's), depth first, each with
/// the path whose introspection named it (a child may be several levels down, as the
/// bus driver's `/org/freedesktop/DBus` is below `/`).
pub fn tree(list: &dyn Fn(&str) -> Res<String>) -> Res<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![("/".to_string(), String::new())];
    while let Some((p, parent)) = stack.pop() {
        let xml = list(&p)?;
        let kids = children(&xml, &p)?;
        stack.extend(kids.into_iter().rev().map(|k| (k, p.clone())));
        out.push((p, parent));
        if out.len() > 100_000 {
            return Err("more than 100000 objects".into());
        }
    }
    Ok(out)
}

/// busctl tree's drawing of what [`tree`] found (`/` itself is not drawn).
pub fn tree_drawing(paths: &[(String, String)]) -> String {
    fn draw(node: &str, paths: &[(String, String)], prefix: &str, out: &mut Vec<String>) {
        let kids: Vec<&String> = paths
            .iter()
            .filter(|(_, parent)| parent == node)
            .map(|(p, _)| p)
            .collect();
        for (i, k) in kids.iter().enumerate() {
            let last = i + 1 == kids.len();
            out.push(format!("{prefix}{}{k}", if last { "└─" } else { "├─" }));
            let deeper = format!("{prefix}{}", if last { "  " } else { "│ " });
            draw(k, paths, &deeper, out);
        }
    }
    let mut out = Vec::new();
    draw("/", paths, "", &mut out);
    out.join("\n")
}

/// A property's value as busctl introspect shows it: the values without the signature.
fn value_text(r: &mut Reader<'_>) -> Res<(String, String)> {
    let sig = r.signature()?.to_string();
    let mut out = Vec::new();
    read_value(r, &sig, &mut out)?;
    Ok((sig, out.join(" ")))
}

/// `Properties.GetAll(interface)`: its body and byte order.
pub type GetAll<'a> = dyn Fn(&str) -> Res<(Vec<u8>, Endian)> + 'a;

/// busctl introspect's table for one object: interfaces, then their methods,
/// properties (with values from `GetAll`) and signals.
pub fn introspect_table(xml: &str, get_all: &GetAll<'_>) -> Res<String> {
    let doc = parse_xml(xml)?;
    let mut rows: Vec<[String; 5]> = Vec::new();
    let mut ifaces: Vec<roxmltree::Node<'_, '_>> = doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("interface"))
        .collect();
    ifaces.sort_by_key(|n| n.attribute("name").unwrap_or(""));
    let dash = || "-".to_string();
    for i in ifaces {
        let iname = i.attribute("name").unwrap_or("");
        rows.push([
            iname.to_string(),
            "interface".into(),
            dash(),
            dash(),
            dash(),
        ]);
        let values: std::collections::HashMap<String, String> =
            if i.children().any(|m| m.has_tag_name("property")) {
                let (body, endian) = get_all(iname)?;
                let mut r = Reader::new(&body, endian);
                let end = r.array_begin(8)?;
                let mut map = std::collections::HashMap::new();
                while r.pos() < end {
                    r.align(8)?;
                    let k = r.string()?.to_string();
                    let (_, v) = value_text(&mut r)?;
                    map.insert(k, v);
                }
                map
            } else {
                Default::default()
            };
        let mut members: Vec<[String; 5]> = Vec::new();
        for m in i.children().filter(|n| n.is_element()) {
            let name = format!(".{}", m.attribute("name").unwrap_or(""));
            let args = |dir: &str| -> String {
                m.children()
                    .filter(|a| a.has_tag_name("arg"))
                    .filter(|a| {
                        a.attribute("direction")
                            .unwrap_or(if m.has_tag_name("signal") {
                                "out"
                            } else {
                                "in"
                            })
                            == dir
                    })
                    .filter_map(|a| a.attribute("type"))
                    .collect()
            };
            let annotation = |k: &str| {
                m.children()
                    .filter(|a| a.has_tag_name("annotation"))
                    .find(|a| a.attribute("name") == Some(k))
                    .and_then(|a| a.attribute("value"))
            };
            let or_dash = |s: String| if s.is_empty() { dash() } else { s };
            match m.tag_name().name() {
                "method" => {
                    let mut flags = Vec::new();
                    if annotation("org.freedesktop.DBus.Deprecated") == Some("true") {
                        flags.push("deprecated");
                    }
                    if annotation("org.freedesktop.DBus.Method.NoReply") == Some("true") {
                        flags.push("no-reply");
                    }
                    let f = if flags.is_empty() {
                        dash()
                    } else {
                        flags.join(" ")
                    };
                    members.push([
                        name,
                        "method".into(),
                        or_dash(args("in")),
                        or_dash(args("out")),
                        f,
                    ]);
                }
                "signal" => {
                    members.push([name, "signal".into(), or_dash(args("out")), dash(), dash()])
                }
                "property" => {
                    let pname = m.attribute("name").unwrap_or("");
                    let mut flags = Vec::new();
                    match annotation("org.freedesktop.DBus.Property.EmitsChangedSignal") {
                        Some("const") => flags.push("const"),
                        Some("invalidates") => flags.push("emits-invalidation"),
                        Some("false") => {}
                        _ => flags.push("emits-change"),
                    }
                    if m.attribute("access").is_some_and(|a| a.contains("write")) {
                        flags.push("writable");
                    }
                    let value = values.get(pname).cloned().unwrap_or_else(dash);
                    let ty = m.attribute("type").unwrap_or("").to_string();
                    members.push([name, "property".into(), ty, value, flags.join(" ")]);
                }
                _ => {}
            }
        }
        members.sort_by(|a, b| (&a[1], &a[0]).cmp(&(&b[1], &b[0])));
        rows.extend(members);
    }
    let header = [
        "NAME".to_string(),
        "TYPE".into(),
        "SIGNATURE".into(),
        "RESULT/VALUE".into(),
        "FLAGS".into(),
    ];
    let all: Vec<&[String; 5]> = std::iter::once(&header).chain(rows.iter()).collect();
    let width = |c: usize| all.iter().map(|r| r[c].chars().count()).max().unwrap_or(0);
    let w = [width(0), width(1), width(2), width(3)];
    let lines: Vec<String> = all
        .iter()
        .map(|r| {
            format!(
                "{:<w0$} {:<w1$} {:<w2$} {:<w3$} {}",
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3]
            )
        })
        .collect();
    Ok(lines.join("\n"))
}

/// One value of complete type `t` as busctl's JSON has it: numbers and strings as
/// such, arrays as arrays, dicts as objects, structs as arrays, variants as
/// `{"type": SIG, "data": VALUE}`.
fn json_value(r: &mut Reader<'_>, t: &str) -> Res<serde_json::Value> {
    use serde_json::json;
    let b = t.as_bytes();
    Ok(match b[0] {
        b'y' => json!(r.u8()?),
        b'b' => json!(r.bool()?),
        b'n' => json!(r.u16()? as i16),
        b'q' => json!(r.u16()?),
        b'i' => json!(r.u32()? as i32),
        b'u' | b'h' => json!(r.u32()?),
        b'x' => json!(r.u64()? as i64),
        b't' => json!(r.u64()?),
        b'd' => json!(f64::from_bits(r.u64()?)),
        b's' => json!(r.string()?),
        b'o' => json!(r.object_path()?),
        b'g' => json!(r.signature()?),
        b'v' => {
            let inner = r.signature()?.to_string();
            json!({ "type": inner, "data": json_value(r, &inner)? })
        }
        b'a' if b.get(1) == Some(&b'{') => {
            let entry = complete_types(&t[2..t.len() - 1])?;
            let end = r.array_begin(8)?;
            let mut m = serde_json::Map::new();
            while r.pos() < end {
                r.align(8)?;
                let k = match json_value(r, entry[0])? {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                m.insert(k, json_value(r, entry[1])?);
            }
            serde_json::Value::Object(m)
        }
        b'a' => {
            let elem = &t[1..];
            let end = r.array_begin(align_of(elem.as_bytes()[0]))?;
            let mut v = Vec::new();
            while r.pos() < end {
                v.push(json_value(r, elem)?);
            }
            serde_json::Value::Array(v)
        }
        b'(' => {
            r.align(8)?;
            let mut v = Vec::new();
            for f in complete_types(&t[1..t.len() - 1])? {
                v.push(json_value(r, f)?);
            }
            serde_json::Value::Array(v)
        }
        _ => return Err(format!("cannot read {t}").into()),
    })
}

/// A whole D-Bus message as busctl monitor's JSON has it (`--json=short`).
pub fn message_json(msg: &[u8]) -> Res<serde_json::Value> {
    let h = header::parse(msg)?;
    let kind = match h.msg_type {
        MessageType::MethodCall => "method_call",
        MessageType::MethodReturn => "method_return",
        MessageType::Error => "error",
        MessageType::Signal => "signal",
    };
    let mut o = serde_json::json!({
        "type": kind,
        "endian": if h.endian == Endian::Little { "l" } else { "B" },
        "flags": h.flags,
        "version": 1,
        "cookie": h.serial,
    });
    let fields = [
        ("reply_cookie", h.reply_serial.map(serde_json::Value::from)),
        ("sender", h.sender.map(serde_json::Value::from)),
        ("destination", h.destination.map(serde_json::Value::from)),
        ("path", h.path.map(serde_json::Value::from)),
        ("interface", h.interface.map(serde_json::Value::from)),
        ("member", h.member.map(serde_json::Value::from)),
        ("error_name", h.error_name.map(serde_json::Value::from)),
    ];
    for (k, v) in fields {
        if let Some(v) = v {
            o[k] = v;
        }
    }
    let body = msg.get(h.header_len..h.total_len()).unwrap_or(&[]);
    kdbus::dbus::marshal::body_validate(body, h.endian, h.signature, u32::MAX)?;
    let mut r = Reader::new(body, h.endian);
    let mut data = Vec::new();
    for t in complete_types(h.signature)? {
        data.push(json_value(&mut r, t)?);
    }
    o["payload"] = serde_json::json!({ "type": h.signature, "data": data });
    Ok(o)
}

/// A whole D-Bus message on one line: type, sender, destination, path, interface and
/// member, then the body as busctl prints bodies.
pub fn message_line(msg: &[u8]) -> Res<String> {
    let h = header::parse(msg)?;
    let body = msg.get(h.header_len..h.total_len()).unwrap_or(&[]);
    let kind = match h.msg_type {
        MessageType::MethodCall => "call",
        MessageType::MethodReturn => "return",
        MessageType::Error => "error",
        MessageType::Signal => "signal",
    };
    let member = match (h.interface, h.member) {
        (Some(i), Some(m)) => format!("{i}.{m}"),
        (None, Some(m)) => m.to_string(),
        _ => h.error_name.unwrap_or("").to_string(),
    };
    let reply = h
        .reply_serial
        .map_or(String::new(), |r| format!(" reply to {r}"));
    let values = if h.signature.is_empty() {
        String::new()
    } else {
        format!(" {}", format_body(h.signature, body, h.endian)?)
    };
    Ok(format!(
        "{kind:<6} #{} {} -> {} {} {member}{reply}{values}",
        h.serial,
        h.sender.unwrap_or("-"),
        h.destination.unwrap_or("*"),
        h.path.unwrap_or("-"),
    ))
}

/// Watch the bus through its D-Bus socket (BecomeMonitor with `rules`; none: all),
/// printing each message as a line or as busctl's JSON.
pub fn monitor_dbus(address: &str, rules: &[String], as_json: bool) -> Res<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    monitor_each(address, rules, |m| {
        let line = if as_json {
            message_json(m)
                .map(|v| v.to_string())
                .unwrap_or_else(|e| serde_json::json!({ "undecodable": e.to_string() }).to_string())
        } else {
            message_line(m).unwrap_or_else(|e| format!("undecodable: {e}"))
        };
        writeln!(out, "{line}")?;
        Ok(out.flush()?)
    })
}

/// Become a monitor on the D-Bus socket at `address` (BecomeMonitor with `rules`;
/// none: all) and hand `f` every message the bus shows it, until `f` or the socket
/// fails.
pub fn monitor_each(
    address: &str,
    rules: &[String],
    mut f: impl FnMut(&[u8]) -> Res<()>,
) -> Res<()> {
    let mut c = Client::connect(address)?;
    c.wait_forever()?;
    let mut body = Vec::new();
    {
        let mut w = Writer::new(&mut body, Endian::Little);
        let a = w.array_begin(4);
        for r in rules {
            w.string(r);
        }
        w.array_end(a);
        w.u32(0);
    }
    let fields = Fields {
        path: Some("/org/freedesktop/DBus"),
        interface: Some("org.freedesktop.DBus.Monitoring"),
        member: Some("BecomeMonitor"),
        destination: Some("org.freedesktop.DBus"),
        signature: "asu",
        ..Default::default()
    };
    let serial = c.send(MessageType::MethodCall, &fields, &body, 0)?;
    let answer = c.wait_reply_or_error(serial)?;
    if header::parse(&answer)?.msg_type == MessageType::Error {
        return Err("the bus refused BecomeMonitor".into());
    }
    loop {
        let m = c.read()?;
        // What the bus says to the monitor itself (NameLost of its unique name).
        if header::parse(&m)?.destination == Some(c.unique.as_str()) {
            continue;
        }
        f(&m)?;
    }
}

/// Broadcast the signal `f` with `body`: through the D-Bus socket, or on the native
/// bus as a kdbus broadcast carrying the D-Bus message and its bloom filter.
pub fn emit(via: Via<'_>, f: &Fields<'_>, body: &[u8]) -> Res<()> {
    match via {
        Via::DBus(address) => {
            let mut client = Client::connect(address)?;
            client.send(MessageType::Signal, f, body, header::FLAG_NO_REPLY_EXPECTED)?;
            // A round trip to the bus, so that the signal is out before we close.
            client.driver_s("GetNameOwner", "org.freedesktop.DBus")?;
        }
        Via::Native(conn) => {
            let mut msg = Vec::new();
            header::write_fields(
                &mut msg,
                Endian::Little,
                MessageType::Signal,
                header::FLAG_NO_REPLY_EXPECTED,
                body.len() as u32,
                1,
                f,
            );
            msg.extend_from_slice(body);
            let h = header::parse(&msg)?;
            let filter = kdbus::dbus::rules::signal_bloom(conn.bloom(), &h, body);
            conn.send(&Message::broadcast(&filter).cookie(1).payload(&msg))?;
        }
    }
    Ok(())
}

/// Wait on the D-Bus socket at `address` for the signal `interface.member` from
/// `path`, and print its body as busctl prints bodies.
pub fn wait(
    address: &str,
    path: &str,
    interface: &str,
    member: &str,
    timeout: Option<Duration>,
) -> Res<()> {
    let mut c = Client::connect(address)?;
    let rule = format!("type='signal',path='{path}',interface='{interface}',member='{member}'");
    c.driver_s("AddMatch", &rule)?;
    if timeout.is_none() {
        c.wait_forever()?;
    }
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        if let Some(d) = deadline {
            // Each read waits no longer than what is left.
            match d.checked_duration_since(std::time::Instant::now()) {
                Some(left) if !left.is_zero() => c.read_timeout(left)?,
                _ => return Err("timed out".into()),
            }
        }
        let m = c.read().map_err(|e| -> Box<dyn std::error::Error> {
            match e.downcast_ref::<rustix::io::Errno>() {
                Some(&rustix::io::Errno::AGAIN) => "timed out".into(),
                _ => e,
            }
        })?;
        let h = header::parse(&m)?;
        if h.msg_type == MessageType::Signal
            && h.path == Some(path)
            && h.interface == Some(interface)
            && h.member == Some(member)
        {
            let body = &m[h.header_len..h.total_len()];
            println!("{}", format_body(h.signature, body, h.endian)?);
            return Ok(());
        }
    }
}

/// `NAME`'s owner and what the bus knows of it (GetNameOwner and
/// GetConnectionCredentials), as `Key=value` lines or JSON.
pub fn status(address: &str, name: &str, as_json: bool) -> Res<()> {
    let mut c = Client::connect(address)?;
    let reply = c.driver_s("GetNameOwner", name)?;
    let h = header::parse(&reply)?;
    let owner = Reader::new(&reply[h.header_len..], h.endian)
        .string()?
        .to_string();
    let reply = c.driver_s("GetConnectionCredentials", name)?;
    let h = header::parse(&reply)?;
    let mut r = Reader::new(&reply[h.header_len..h.total_len()], h.endian);
    let creds = json_value(&mut r, "a{sv}")?;
    let data = |k: &str| creds.get(k).and_then(|v| v.get("data")).cloned();
    let mut o = serde_json::json!({ "Name": name, "UniqueName": owner });
    for (ours, theirs) in [
        ("PID", "ProcessID"),
        ("UID", "UnixUserID"),
        ("GIDs", "UnixGroupIDs"),
        ("SecurityLabel", "LinuxSecurityLabel"),
    ] {
        if let Some(v) = data(theirs) {
            o[ours] = v;
        }
    }
    if as_json {
        println!("{o}");
        return Ok(());
    }
    for k in ["Name", "UniqueName", "PID", "UID", "GIDs"] {
        if let Some(v) = o.get(k) {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                other => other.to_string(),
            };
            println!("{k}={text}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(sig: &str, args: &[&str]) -> String {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let body = marshal(sig, &args).expect("marshal");
        format_body(sig, &body, Endian::Little).expect("format")
    }

    /// What goes in in busctl's words comes out in busctl's words.
    #[test]
    fn arguments_come_back_as_busctl_prints_them() {
        assert_eq!(roundtrip("s", &["a \"b\""]), r#"s "a \"b\"""#);
        assert_eq!(
            roundtrip(
                "ybnqiuxtd",
                &["1", "yes", "-2", "3", "-4", "5", "-6", "7", "0.5"]
            ),
            "ybnqiuxtd 1 true -2 3 -4 5 -6 7 0.5"
        );
        assert_eq!(roundtrip("as", &["2", "x", "y"]), r#"as 2 "x" "y""#);
        assert_eq!(
            roundtrip("a{sv}", &["1", "k", "u", "7"]),
            r#"a{sv} 1 "k" u 7"#
        );
        assert_eq!(roundtrip("(so)", &["a", "/b"]), r#"(so) "a" "/b""#);
        assert_eq!(roundtrip("aas", &["2", "1", "a", "0"]), r#"aas 2 1 "a" 0"#);
    }

    #[test]
    fn bad_arguments_are_refused() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(marshal("u", &a(&["x"])).is_err());
        assert!(marshal("b", &a(&["maybe"])).is_err());
        assert!(marshal("s", &a(&[])).is_err());
        assert!(marshal("s", &a(&["a", "b"])).is_err());
        assert!(marshal("a{s", &a(&["0"])).is_err());
        assert!(marshal("v", &a(&["ss", "a", "b"])).is_err());
        assert!(marshal("()", &a(&[])).is_err());
        assert!(marshal(&"a".repeat(300), &a(&["0"])).is_err());
        assert!(marshal("q", &a(&["70000"])).is_err());
        assert!(marshal("n", &a(&["-40000"])).is_err());
        assert!(marshal("g", &a(&["(("])).is_err());
    }
}
