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
    pub struct ItemHeader {
        /// Size of the item in bytes, header included, trailing padding excluded.
        pub size: u64,
        /// The item type (see [`crate::item`]).
        pub type_: u64,
    }
}

wire_struct! {
    /// The generic command (BUS_MAKE, ENDPOINT_*, UPDATE, BYEBYE, NAME_*).
    pub struct CmdGeneric {
        /// Size of the command in bytes, items included.
        pub size: u64,
        /// Flags of the command.
        pub flags: u64,
        /// Flags the bus writes back.
        pub return_flags: u64,
    }
}

wire_struct! {
    /// The HELLO command, which makes a handle a bus connection.
    pub struct CmdHello {
        /// Size of the command in bytes, items included.
        pub size: u64,
        /// Connection flags (see [`crate::hello_flags`]).
        pub flags: u64,
        /// Flags the bus writes back.
        pub return_flags: u64,
        /// Metadata the connection lets the bus attach to what it sends.
        pub attach_flags_send: u64,
        /// Metadata the connection wants attached to what it receives.
        pub attach_flags_recv: u64,
        /// Written back: the flags the bus was made with.
        pub bus_flags: u64,
        /// Written back: the connection's unique id.
        pub id: u64,
        /// Size of the receive pool to create, in bytes (a multiple of the page size).
        pub pool_size: u64,
        /// Written back: offset in the pool of the items describing the bus.
        pub offset: u64,
        /// Written back: size in bytes of those items.
        pub items_size: u64,
        /// Written back: the bus's 128-bit id.
        pub id128: [u8; 16],
    }
}

wire_struct! {
    /// Where a message (or a reply) sits in a pool.
    pub struct MsgInfo {
        /// Offset of the message in the pool, in bytes.
        pub offset: u64,
        /// Size of the message in bytes, header and items.
        pub msg_size: u64,
        /// Flags the bus writes back.
        pub return_flags: u64,
    }
}

wire_struct! {
    /// The SEND command.
    pub struct CmdSend {
        /// Size of the command in bytes, items included.
        pub size: u64,
        /// Flags of the send (see [`crate::send_flags`]).
        pub flags: u64,
        /// Flags the bus writes back.
        pub return_flags: u64,
        /// Offset of the `kdbus_msg` inside the request body (kdbus: a pointer).
        pub msg_address: u64,
        /// Written back for a synchronous send: where the reply sits in the pool.
        pub reply: MsgInfo,
    }
}

wire_struct! {
    /// The RECV command.
    pub struct CmdRecv {
        /// Size of the command in bytes, items included.
        pub size: u64,
        /// Flags of the receive (see [`crate::recv_flags`]).
        pub flags: u64,
        /// Flags the bus writes back.
        pub return_flags: u64,
        /// With USE_PRIORITY: the lowest priority (highest value) to accept.
        pub priority: i64,
        /// Written back: how many messages the connection lost.
        pub dropped_msgs: u64,
        /// Written back: where the received message sits in the pool.
        pub msg: MsgInfo,
    }
}

wire_struct! {
    /// The FREE command.
    pub struct CmdFree {
        /// Size of the command in bytes, items included.
        pub size: u64,
        /// Flags of the command (none defined).
        pub flags: u64,
        /// Flags the bus writes back.
        pub return_flags: u64,
        /// Offset in the pool of the slice to release.
        pub offset: u64,
    }
}

wire_struct! {
    /// The CONN_INFO and BUS_CREATOR_INFO commands.
    pub struct CmdInfo {
        /// Size of the command in bytes, items included.
        pub size: u64,
        /// Flags of the command.
        pub flags: u64,
        /// Flags the bus writes back.
        pub return_flags: u64,
        /// Id of the connection asked about (0: look up the NAME item).
        pub id: u64,
        /// Metadata to report (see [`crate::attach`]).
        pub attach_flags: u64,
        /// Written back: offset in the pool of the resulting [`Info`].
        pub offset: u64,
        /// Written back: size in bytes of the resulting [`Info`].
        pub info_size: u64,
    }
}

wire_struct! {
    /// The LIST command.
    pub struct CmdList {
        /// Size of the command in bytes, items included.
        pub size: u64,
        /// What to list (see [`crate::list_flags`]).
        pub flags: u64,
        /// Flags the bus writes back.
        pub return_flags: u64,
        /// Written back: offset in the pool of the list.
        pub offset: u64,
        /// Written back: size in bytes of the list.
        pub list_size: u64,
    }
}

wire_struct! {
    /// The MATCH_ADD and MATCH_REMOVE commands.
    pub struct CmdMatch {
        /// Size of the command in bytes, items included.
        pub size: u64,
        /// Flags of the command (see [`crate::match_flags`]).
        pub flags: u64,
        /// Flags the bus writes back.
        pub return_flags: u64,
        /// The caller's tag for the match entry, used to remove it.
        pub cookie: u64,
    }
}

wire_struct! {
    /// A message header; items follow.
    pub struct Msg {
        /// Size of the message in bytes, header and items.
        pub size: u64,
        /// Message flags (see [`crate::msg_flags`]).
        pub flags: u64,
        /// Priority of the message; lower values are more urgent.
        pub priority: i64,
        /// Id of the receiving connection, [`crate::DST_ID_NAME`] or [`crate::DST_ID_BROADCAST`].
        pub dst_id: u64,
        /// Id of the sending connection (0 for the bus itself).
        pub src_id: u64,
        /// Format of the payload (see [`crate::payload`]).
        pub payload_type: u64,
        /// The sender's tag for the message, which a reply names.
        pub cookie: u64,
        /// `timeout_ns` when sent with EXPECT_REPLY, else `cookie_reply`.
        pub timeout_or_cookie_reply: u64,
    }
}

wire_struct! {
    /// What CONN_INFO, BUS_CREATOR_INFO and LIST write into the pool; items follow.
    pub struct Info {
        /// Size of the record in bytes, items included.
        pub size: u64,
        /// Id of the connection (or of the bus).
        pub id: u64,
        /// Flags of the connection (or of the bus).
        pub flags: u64,
    }
}

wire_struct! {
    /// Payload of a PAYLOAD_VEC or PAYLOAD_OFF item.
    pub struct Vec_ {
        /// Size of the payload data, in bytes.
        pub size: u64,
        /// Offset of the data: in the request body (VEC) or from the message start (OFF).
        pub address_or_offset: u64,
    }
}

wire_struct! {
    /// Payload of a BLOOM_PARAMETER item.
    pub struct BloomParameter {
        /// Size of a bloom filter, in bytes.
        pub size: u64,
        /// Number of hash functions setting bits per value.
        pub n_hash: u64,
    }
}

wire_struct! {
    /// Payload of a PAYLOAD_MEMFD item.
    pub struct Memfd {
        /// Offset in the memfd where the payload starts, in bytes.
        pub start: u64,
        /// Size of the payload in the memfd, in bytes.
        pub size: u64,
        /// The memfd's file descriptor.
        pub fd: i32,
        /// Padding, zero.
        pub pad: u32,
    }
}

wire_struct! {
    /// Payload of a TIMESTAMP item.
    pub struct Timestamp {
        /// Sequence number of the message.
        pub seqnum: u64,
        /// `CLOCK_MONOTONIC` time of the send, in nanoseconds.
        pub monotonic_ns: u64,
        /// `CLOCK_REALTIME` time of the send, in nanoseconds.
        pub realtime_ns: u64,
    }
}

wire_struct! {
    /// Payload of a CREDS item.
    pub struct Creds {
        /// Real user id.
        pub uid: u64,
        /// Effective user id.
        pub euid: u64,
        /// Saved user id.
        pub suid: u64,
        /// Filesystem user id.
        pub fsuid: u64,
        /// Real group id.
        pub gid: u64,
        /// Effective group id.
        pub egid: u64,
        /// Saved group id.
        pub sgid: u64,
        /// Filesystem group id.
        pub fsgid: u64,
    }
}

wire_struct! {
    /// Payload of a PIDS item.
    pub struct Pids {
        /// Process id.
        pub pid: u64,
        /// Thread id.
        pub tid: u64,
        /// Parent process id.
        pub ppid: u64,
    }
}

wire_struct! {
    /// Payload of ID_ADD and ID_REMOVE notifications, and each half of a NAME_* one.
    pub struct NotifyIdChange {
        /// Id of the connection (0: none).
        pub id: u64,
        /// Its connection flags (ID_*) or name flags (NAME_*).
        pub flags: u64,
    }
}

wire_struct! {
    /// Payload of a POLICY_ACCESS item.
    pub struct PolicyAccess {
        /// Whom the rule is about: a user, a group or everyone.
        pub type_: u64,
        /// What it grants: to see, talk to or own the name.
        pub access: u64,
        /// The user or group id (ignored for everyone).
        pub id: u64,
    }
}

/// Size of an [`ItemHeader`] in bytes.
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
