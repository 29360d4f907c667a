//! kdbus's command and message structures, byte for byte (`kdbus.h`, HEAD).
//!
//! All are `repr(C)`, 8-byte aligned in size, and read with zerocopy from whatever buffer
//! they arrive in; a structure is always read as a copy so an unaligned buffer is fine.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

macro_rules! wire_struct {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
    };
}

wire_struct! {
    /// Header of every item.
    pub struct ItemHeader { pub size: u64, pub type_: u64 }
}

wire_struct! {
    /// The generic command (BUS_MAKE, ENDPOINT_*, UPDATE, BYEBYE, NAME_*).
    pub struct CmdGeneric { pub size: u64, pub flags: u64, pub return_flags: u64 }
}

wire_struct! {
    pub struct CmdHello {
        pub size: u64,
        pub flags: u64,
        pub return_flags: u64,
        pub attach_flags_send: u64,
        pub attach_flags_recv: u64,
        pub bus_flags: u64,
        pub id: u64,
        pub pool_size: u64,
        pub offset: u64,
        pub items_size: u64,
        pub id128: [u8; 16],
    }
}

wire_struct! {
    /// Where a message (or a reply) sits in a pool.
    pub struct MsgInfo { pub offset: u64, pub msg_size: u64, pub return_flags: u64 }
}

wire_struct! {
    pub struct CmdSend {
        pub size: u64,
        pub flags: u64,
        pub return_flags: u64,
        /// Offset of the `kdbus_msg` inside the request body (kdbus: a pointer).
        pub msg_address: u64,
        pub reply: MsgInfo,
    }
}

wire_struct! {
    pub struct CmdRecv {
        pub size: u64,
        pub flags: u64,
        pub return_flags: u64,
        pub priority: i64,
        pub dropped_msgs: u64,
        pub msg: MsgInfo,
    }
}

wire_struct! {
    pub struct CmdFree { pub size: u64, pub flags: u64, pub return_flags: u64, pub offset: u64 }
}

wire_struct! {
    pub struct CmdInfo {
        pub size: u64,
        pub flags: u64,
        pub return_flags: u64,
        pub id: u64,
        pub attach_flags: u64,
        pub offset: u64,
        pub info_size: u64,
    }
}

wire_struct! {
    pub struct CmdList {
        pub size: u64,
        pub flags: u64,
        pub return_flags: u64,
        pub offset: u64,
        pub list_size: u64,
    }
}

wire_struct! {
    pub struct CmdMatch { pub size: u64, pub flags: u64, pub return_flags: u64, pub cookie: u64 }
}

wire_struct! {
    /// A message header; items follow.
    pub struct Msg {
        pub size: u64,
        pub flags: u64,
        pub priority: i64,
        pub dst_id: u64,
        pub src_id: u64,
        pub payload_type: u64,
        pub cookie: u64,
        /// `timeout_ns` when sent with EXPECT_REPLY, else `cookie_reply`.
        pub timeout_or_cookie_reply: u64,
    }
}

wire_struct! {
    /// What CONN_INFO, BUS_CREATOR_INFO and LIST write into the pool; items follow.
    pub struct Info { pub size: u64, pub id: u64, pub flags: u64 }
}

wire_struct! {
    pub struct Vec_ { pub size: u64, pub address_or_offset: u64 }
}

wire_struct! {
    pub struct BloomParameter { pub size: u64, pub n_hash: u64 }
}

wire_struct! {
    pub struct Memfd { pub start: u64, pub size: u64, pub fd: i32, pub pad: u32 }
}

wire_struct! {
    pub struct Timestamp { pub seqnum: u64, pub monotonic_ns: u64, pub realtime_ns: u64 }
}

wire_struct! {
    pub struct Creds {
        pub uid: u64, pub euid: u64, pub suid: u64, pub fsuid: u64,
        pub gid: u64, pub egid: u64, pub sgid: u64, pub fsgid: u64,
    }
}

wire_struct! {
    pub struct Pids { pub pid: u64, pub tid: u64, pub ppid: u64 }
}

wire_struct! {
    pub struct NotifyIdChange { pub id: u64, pub flags: u64 }
}

wire_struct! {
    pub struct PolicyAccess { pub type_: u64, pub access: u64, pub id: u64 }
}

pub const ITEM_HEADER_SIZE: u64 = 16;

/// Read a structure from the start of `buf`; `None` if `buf` is too short.
pub fn read_struct<T: FromBytes>(buf: &[u8]) -> Option<T> {
    T::read_from_prefix(buf).ok().map(|(t, _)| t)
}

/// Read a command struct whose first field is `size`, accepting a shorter `size` than
/// `T` only as an error: returns `(struct, declared size)`.
pub fn read_cmd<T: FromBytes + IntoBytes>(buf: &[u8]) -> Result<(T, u64), crate::Errno> {
    let size: u64 = read_struct(buf).ok_or(crate::Errno::EINVAL)?;
    if size < std::mem::size_of::<T>() as u64 {
        return Err(crate::Errno::EINVAL);
    }
    if size > crate::limits::CMD_MAX_SIZE {
        return Err(crate::Errno::EMSGSIZE);
    }
    if size > buf.len() as u64 {
        return Err(crate::Errno::EINVAL);
    }
    let t = read_struct(buf).ok_or(crate::Errno::EINVAL)?;
    Ok((t, size))
}
