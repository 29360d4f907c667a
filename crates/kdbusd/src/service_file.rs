//! dbus-daemon's `.service` files: what they say (`Name=`, `Exec=`, `User=`,
//! `SystemdService=`) and where they are found (a configuration's service
//! directories, the first directory winning for a name; in the transient directory a
//! file counts only if it is named after its service). Read by the bus's activation
//! and, on a system bus, by the launcher that starts services as their `User=`, each
//! on its own: the launcher trusts the broker with nothing but a name.

use std::collections::HashMap;
use std::path::PathBuf;

/// One `.service` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) exec: Vec<String>,
    /// Whom it runs as on a system bus (`User=`).
    pub(crate) user: Option<String>,
    /// The systemd unit that provides it (`SystemdService=`).
    pub(crate) systemd_service: Option<String>,
}

/// Parse a `.service` file: `[D-BUS Service]` with `Name=`, `Exec=`, `User=` and
/// `SystemdService=` (other keys are ignored, as dbus-daemon ignores them).
pub(crate) fn service_parse(text: &str) -> Result<Service, String> {
    let mut in_section = false;
    let (mut name, mut exec, mut user, mut systemd_service) = (None, None, None, None);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            in_section = line == "[D-BUS Service]";
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("a line without '=': {line}"));
        };
        match (in_section, k.trim()) {
            (true, "Name") => name = Some(v.trim().to_string()),
            (true, "Exec") => exec = Some(exec_split(v.trim())?),
            (true, "User") => user = Some(v.trim().to_string()),
            (true, "SystemdService") => systemd_service = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let name = name.ok_or("no Name=")?;
    if !kdbus_dbus::names::is_bus_name(&name) || kdbus_dbus::names::is_unique_name(&name) {
        return Err(format!("\"{name}\" is not a well-known name"));
    }
    let exec = exec.filter(|e| !e.is_empty()).ok_or("no Exec=")?;
    Ok(Service {
        name,
        exec,
        user,
        systemd_service,
    })
}

/// Split an `Exec=` line as a shell would split words (quotes and backslashes), which
/// is how dbus-daemon reads it; nothing is expanded.
fn exec_split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                words.extend(cur.take());
            }
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated ' in Exec=".into()),
                    }
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("unterminated \" in Exec=".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("unterminated \" in Exec=".into()),
                    }
                }
            }
            '\\' => {
                let w = cur.get_or_insert_with(String::new);
                w.extend(chars.next());
            }
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    Ok(words)
}

/// The services of a configuration's directories, the first directory winning for a
/// name (dbus-daemon's order); files that do not parse (or, in the transient
/// directory, are not named after their service) are logged and skipped.
pub(crate) fn services_load(c: &crate::config::BusConfig) -> Vec<Service> {
    let mut by_name: HashMap<String, Service> = HashMap::new();
    for dir in &c.service_dirs {
        let strict = c.strict_service_dirs.contains(dir);
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "service"))
            .collect();
        files.sort();
        for f in files {
            match std::fs::read_to_string(&f)
                .map_err(|e| e.to_string())
                .and_then(|t| service_parse(&t))
                .and_then(|s| match strict && !file_names(&f, &s.name) {
                    true => Err(format!("its file is not named {}.service", s.name)),
                    false => Ok(s),
                }) {
                Ok(s) => {
                    by_name.entry(s.name.clone()).or_insert(s);
                }
                Err(e) => tracing::warn!(file = %f.display(), %e, "a service file was skipped"),
            }
        }
    }
    let mut v: Vec<Service> = by_name.into_values().collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Whether the file `f` is named `<name>.service`.
fn file_names(f: &std::path::Path, name: &str) -> bool {
    f.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".service"))
        == Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_files_and_exec_lines_read_as_dbus_daemon_reads_them() {
        let s = service_parse(
            "# c\n[D-BUS Service]\nName=org.x.Y\nExec=/bin/run -a 'b c' \"d \\\"e\\\"\" f\\ g\nUser=nobody\n",
        )
        .unwrap();
        assert_eq!(s.name, "org.x.Y");
        assert_eq!(s.exec, ["/bin/run", "-a", "b c", "d \"e\"", "f g"]);
        assert!(service_parse("[D-BUS Service]\nExec=/bin/x\n").is_err());
        assert!(service_parse("[D-BUS Service]\nName=:1.2\nExec=/bin/x\n").is_err());
        assert!(service_parse("[Other]\nName=org.x.Y\nExec=/bin/x\n").is_err());
        assert!(exec_split("a 'b").is_err());
    }
}
