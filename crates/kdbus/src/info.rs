//! What the broker says about connections (CONN_INFO, BUS_CREATOR_INFO, LIST).
//!
//! The broker writes these answers into the pool as kdbus `kdbus_info` records, the
//! same layout kdbus's ioctls produced, so that programs on the kernel ABI read them
//! unchanged. The library turns them into owned [`ConnInfo`] values at once, because
//! the pool slice is given back right after: an info is a snapshot the caller keeps,
//! not a view into memory the broker will reuse. Items this side does not interpret
//! are kept raw rather than dropped.

use kdbus_abi::items::ItemIter;
use kdbus_abi::{item, read_struct, Info};

/// What the broker told us about a connection (CONN_INFO, LIST).
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    /// The connection's unique id (the bus id, for BUS_CREATOR_INFO).
    pub id: u64,
    /// The connection's HELLO flags (the bus flags, for BUS_CREATOR_INFO).
    pub flags: u64,
    /// The connection's description; `None` if it has none or it was not asked for.
    pub description: Option<String>,
    /// The real user id from the CREDS metadata; `None` if that was not asked for or
    /// not supplied.
    pub uid: Option<u64>,
    /// The real group id from the CREDS metadata; `None` if that was not asked for or
    /// not supplied.
    pub gid: Option<u64>,
    /// The process id from the PIDS metadata; `None` if that was not asked for or not
    /// supplied.
    pub pid: Option<u64>,
    /// The process's command name (PID_COMM metadata); `None` if not asked for or not
    /// supplied.
    pub comm: Option<String>,
    /// Path of the process's executable (EXE metadata); `None` if not asked for or not
    /// supplied.
    pub exe: Option<String>,
    /// Names owned (CONN_INFO with NAMES), or the one name of a LIST record, with flags.
    pub names: Vec<(String, u64)>,
    /// Raw items, for callers that want more.
    pub items: Vec<(u64, Vec<u8>)>,
}

/// One `kdbus_info` record at the start of `bytes`: the info and the (aligned) bytes
/// it took, so a LIST can walk on to the next. `None` if it is malformed.
pub(crate) fn parse_info(bytes: &[u8]) -> Option<(ConnInfo, usize)> {
    let info: Info = read_struct(bytes)?;
    let size = usize::try_from(info.size).ok()?;
    let items = bytes.get(24..size)?;
    let mut ci = ConnInfo {
        id: info.id,
        flags: info.flags,
        ..Default::default()
    };
    for it in ItemIter::received(items).flatten() {
        match it.type_ {
            item::CONN_DESCRIPTION => ci.description = it.as_str().ok().map(str::to_owned),
            item::CREDS => {
                let c: Option<kdbus_abi::Creds> = read_struct(it.payload);
                ci.uid = c.map(|c| c.uid);
                ci.gid = c.map(|c| c.gid);
            }
            item::PIDS => ci.pid = read_struct::<kdbus_abi::Pids>(it.payload).map(|p| p.pid),
            item::PID_COMM => ci.comm = it.as_str().ok().map(str::to_owned),
            item::EXE => ci.exe = it.as_str().ok().map(str::to_owned),
            item::OWNED_NAME => {
                let flags: u64 = read_struct(it.payload).unwrap_or_default();
                let name = it.payload.get(8..).map(|p| kdbus_abi::Item {
                    type_: it.type_,
                    payload: p,
                });
                if let Some(n) = name.and_then(|n| n.as_str().ok()) {
                    ci.names.push((n.to_owned(), flags));
                }
            }
            _ => {}
        }
        ci.items.push((it.type_, it.payload.to_vec()));
    }
    Some((ci, kdbus_abi::align8_usize(size)))
}

/// Walk the records of a LIST answer (stops at the first malformed one).
pub(crate) fn parse_list(mut bytes: &[u8]) -> Vec<ConnInfo> {
    let mut out = Vec::new();
    while let Some((ci, used)) = parse_info(bytes) {
        out.push(ci);
        bytes = bytes.get(used..).unwrap_or(&[]);
    }
    out
}
