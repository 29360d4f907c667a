//! kdbus item lists and request framing (kdbus-abi `items`, `wire`, `read_cmd`), and
//! the core's pure decoders built on them (`command_decode`, `policy_parse`,
//! `bus_parse_make`, ...). Every native command body a client sends is cut into
//! frames and its items walked by these before any handler runs, so they see hostile
//! bytes first; fuzzed here without a bus, for speed.
//!
//! Input: byte 0 picks the decoder/command, the rest is the item list / body.
//! Checks: no panic; the strict and the lenient iterators agree with `validate_all`;
//! every item lies inside the buffer; items that parse re-encode (ItemWriter) to a
//! list that parses to the same items.
#![no_main]

use kdbus_abi::items::{validate_all, ItemIter, ItemWriter};
use kdbus_abi::wire::{self, Frames, RecHeader, ReqHeader};
use kdbus_abi::{cmd, read_cmd, CmdFree, CmdGeneric, CmdHello, CmdInfo, CmdList, CmdMatch};
use kdbus_abi::{CmdRecv, CmdSend};
use libfuzzer_sys::fuzz_target;

/// Commands `command_decode` knows (and one it does not).
const CMDS: &[u32] = &[
    cmd::SEND,
    cmd::RECV,
    cmd::FREE,
    cmd::BYEBYE,
    cmd::CONN_INFO,
    cmd::BUS_CREATOR_INFO,
    cmd::UPDATE,
    cmd::LIST,
    cmd::MATCH_ADD,
    cmd::MATCH_REMOVE,
    cmd::NAME_ACQUIRE,
    cmd::NAME_RELEASE,
    cmd::HELLO,
];

fn check_items(data: &[u8]) {
    let base = data.as_ptr() as usize;
    let in_buf = |p: &[u8]| {
        let s = p.as_ptr() as usize;
        p.is_empty() || (s >= base && s + p.len() <= base + data.len())
    };
    // Strict iteration (what clients send).
    let mut items = Vec::new();
    let mut framing_ok = true;
    for it in ItemIter::new(data) {
        match it {
            Ok(i) => {
                assert!(in_buf(i.payload), "item payload outside its buffer");
                assert!(
                    !i.payload.is_empty(),
                    "strict iterator yielded a header-only item"
                );
                let _ = i.as_u64();
                if let Ok(s) = i.as_str() {
                    let _ = kdbus_abi::names::validate_well_known_name(s, false);
                    let _ = kdbus_abi::names::validate_well_known_name(s, true);
                    let _ = kdbus_abi::names::validate_sysname(s);
                    let _ = kdbus_abi::names::validate_uid_prefixed(s, 1000);
                }
                items.push((i.type_, i.payload, i.check_payload().is_ok()));
            }
            Err(_) => {
                framing_ok = false;
                break;
            }
        }
    }
    match validate_all(data) {
        Ok(n) => {
            assert!(
                framing_ok,
                "validate_all accepted what the iterator refused"
            );
            assert_eq!(n, items.len());
            assert!(
                items.iter().all(|i| i.2),
                "validate_all skipped a payload check"
            );
        }
        Err(_) => assert!(!framing_ok || items.iter().any(|i| !i.2)),
    }
    // Lenient iteration (messages read back from a pool): accepts at least as much.
    let mut lenient = 0;
    let mut lenient_ok = true;
    for it in ItemIter::received(data) {
        match it {
            Ok(i) => {
                assert!(in_buf(i.payload));
                lenient += 1;
            }
            Err(_) => {
                lenient_ok = false;
                break;
            }
        }
    }
    if framing_ok {
        assert!(
            lenient_ok,
            "the lenient iterator refused a strictly valid list"
        );
        assert_eq!(lenient, items.len());
    }
    // What parsed re-encodes to a list that parses to the same items.
    if framing_ok {
        let mut out = Vec::new();
        let mut w = ItemWriter::new(&mut out);
        for (t, p, _) in &items {
            w.push(*t, p);
        }
        let again: Vec<_> = ItemIter::new(&out)
            .map(|i| i.map(|i| (i.type_, i.payload)))
            .collect::<Result<_, _>>()
            .expect("re-encoded items parse");
        let orig: Vec<_> = items.iter().map(|(t, p, _)| (*t, *p)).collect();
        assert_eq!(again, orig);
    }
}

fn check_frames(data: &[u8]) {
    for f in Frames::<ReqHeader>::new(data) {
        if let Ok((h, body)) = f {
            assert_eq!(h.body_len, body.len() as u64);
        }
    }
    for f in Frames::<RecHeader>::new(data) {
        if let Ok((h, body)) = f {
            assert_eq!(h.body_len, body.len() as u64);
        }
    }
    for _ in wire::records(data) {}
}

fn check_cmds(data: &[u8]) {
    let _ = read_cmd::<CmdGeneric>(data);
    let _ = read_cmd::<CmdHello>(data);
    let _ = read_cmd::<CmdSend>(data);
    let _ = read_cmd::<CmdRecv>(data);
    let _ = read_cmd::<CmdFree>(data);
    let _ = read_cmd::<CmdInfo>(data);
    let _ = read_cmd::<CmdList>(data);
    let _ = read_cmd::<CmdMatch>(data);
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    check_items(rest);
    check_frames(rest);
    check_cmds(rest);
    // The core's decoders of item lists, one per input (chosen by the first byte).
    let peer = kdbus_core::Peer {
        creds: kdbus_core::Creds {
            pid: 1,
            uid: 1000,
            gid: 1000,
        },
        privileged: sel & 0x80 != 0,
        ..Default::default()
    };
    match sel & 0x7f {
        n if (n as usize) < CMDS.len() => {
            let c = CMDS[n as usize];
            let _ = kdbus_core::handle::command_decode(c, rest, 1, (sel >> 4) as usize & 7);
            let _ = kdbus_core::handle::negotiate(c, rest);
        }
        0x20 => {
            let _ = kdbus_core::bus::bus_parse_make(rest, 1000);
        }
        0x21 => {
            let _ = kdbus_core::bus::domain_parse_make(rest, &peer);
        }
        0x22 => {
            let _ = kdbus_core::policy::policy_parse(rest, false);
        }
        0x23 => {
            let _ = kdbus_core::policy::policy_parse(rest, true);
        }
        0x24 => {
            let _ = kdbus_core::message::message_parse_send(rest, 4, 1, 1 << 21);
        }
        0x25 => {
            let mut db = kdbus_core::matches::MatchDb::new();
            let _ = db.add(1, 1, false, rest, 64);
            let _ = db.add(1, 1, true, rest, 8);
        }
        _ => {}
    }
});
