//! Where a receiver's messages go: the one place native and stream receivers differ.
//!
//! A native connection has a receive pool: the core lays each message out in it and
//! queues it (see `deliver`). Some receivers instead take messages on a byte stream
//! in a protocol of their own, today D-Bus clients on a bus's D-Bus socket. The core
//! does not know that protocol: such a connection carries a [`StreamPeer`], an object
//! the personality above the core (the `kdbus-bridge` crate for D-Bus) implements,
//! and the core hands it every event that concerns the receiver:
//!
//! - a message routed to it (unicast, a broadcast the bus's matches took, a
//!   monitor's copy), as the same validated SEND every native receiver gets;
//! - a message moving to it from an activator's pool;
//! - a reply it waited for that will not come;
//! - a name changing owner, a connection joining or leaving the bus.
//!
//! The peer writes whatever its protocol says into the connection's [`Output`]
//! through a [`StreamOut`]. What the bus itself says to a peer (D-Bus: the driver's
//! replies and signals) is also shown to the bus's stream monitors: the peer hands a
//! copy to [`StreamOut::echo_output`], and the core passes it to each monitor's
//! [`StreamPeer::observe`] when the call returns. Errors it returns mean what they mean for a pool: the
//! sender is told (ENOBUFS: over its share), or for a broadcast the receiver loses
//! the message. Who is charged for a message is the core's decision ([`Charge`]):
//! what a receiver asked for (replies to its calls, a monitor's copies) is never
//! refused.

use crate::ids::{ConnKey, Files};
use crate::message::SendRequest;
use crate::names::NameRegistry;
use crate::outbox::{Outbox, Output};
use kdbus_abi::Errno;
use std::any::Any;

/// Who a message on a stream is charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charge {
    /// A message a peer of this user sent on its own: refused beyond its share.
    Sender(u32),
    /// Something the receiver asked for: counted, never refused.
    Requested,
}

/// One message for one stream receiver.
pub struct Delivery<'a> {
    /// The message as the sender sent it, already validated.
    pub req: &'a SendRequest<'a>,
    /// The sender's unique id.
    pub sender_id: u64,
    /// Whose share the message counts against on this stream.
    pub charge: Charge,
    /// The fds the message carries, shared with any eavesdroppers' copies.
    pub files: Option<Files>,
    /// For rules on the sender's well-known names.
    pub(crate) names: &'a NameRegistry,
    pub(crate) sender_key: Option<ConnKey>,
    /// Not addressed to this receiver: offered because it eavesdrops (only its
    /// `eavesdrop='true'` rules, and a policy that allows eavesdropping, take it).
    pub eavesdrop: bool,
}

impl Delivery<'_> {
    /// Sent to everyone whose matches take it (a stream checks its own rules too).
    pub fn is_broadcast(&self) -> bool {
        self.req.msg.dst_id == kdbus_abi::DST_ID_BROADCAST
    }

    /// The sender, as the message policy names it.
    pub fn sender_party(&self) -> Option<crate::msgpolicy::Party<'_>> {
        self.sender_key.map(|key| crate::msgpolicy::Party::Conn {
            key,
            id: self.sender_id,
            names: self.names,
        })
    }

    /// Whether the sender owns the well-known name `name` now.
    pub fn sender_owns(&self, name: &str) -> bool {
        self.sender_key
            .is_some_and(|k| self.names.lookup(name).is_some_and(|e| e.owner == k))
    }
}

/// A stream receiver's side of the connection, for the peer to write to.
pub struct StreamOut<'a> {
    pub(crate) id: u64,
    pub(crate) flags: u64,
    pub(crate) output: &'a mut Output,
    pub(crate) outbox: &'a mut Outbox,
    pub(crate) dropped: &'a mut u64,
    pub(crate) echo: &'a mut Echo,
    /// The receiver's message policy, for what the personality itself sends it.
    pub(crate) rules: Option<&'a crate::msgpolicy::ConnRules>,
}

/// Copies for the bus's stream monitors of what the bus said to one peer.
#[derive(Default)]
pub struct Echo {
    pub(crate) bytes: Vec<u8>,
    /// Fds going with the byte at each offset of `bytes`.
    pub(crate) files: Vec<(usize, Files)>,
}

impl Echo {
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.files.clear();
    }
}

impl StreamOut<'_> {
    /// The receiver's unique id on its bus.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The receiver's compiled message policy, if its bus has one: messages the
    /// personality writes itself (a D-Bus driver's) are judged by it too.
    pub fn rules(&self) -> Option<&crate::msgpolicy::ConnRules> {
        self.rules
    }

    /// Whether the receiver is a monitor: it sees copies of everything, asks for nothing.
    pub fn is_monitor(&self) -> bool {
        self.flags & kdbus_abi::hello_flags::MONITOR != 0
    }

    /// The output to append to (marked for the next flush).
    pub fn buf(&mut self) -> &mut Vec<u8> {
        self.outbox.buf(self.output)
    }

    /// The output to append `want` bytes to, with room for them (a large message
    /// takes the outbox's warm large buffer rather than growing one).
    pub fn buf_for(&mut self, want: usize) -> &mut Vec<u8> {
        self.outbox.buf_for(self.output, want)
    }

    /// `files` go out with the byte at `at` of the output.
    pub fn attach_files(&mut self, at: usize, files: Files) {
        self.output.files.push((at, files));
    }

    /// The receiver lost a message it would have got (counted, as for a pool).
    pub fn lose(&mut self) {
        *self.dropped += 1;
    }

    /// Show the bus's stream monitors a copy of what was appended to the output since
    /// `start`, with its fds.
    pub fn echo_output(&mut self, start: usize, files: Option<&Files>) {
        if let Some(f) = files {
            self.echo.files.push((self.echo.bytes.len(), f.clone()));
        }
        let appended = self.output.out.get(start..).unwrap_or(&[]);
        self.echo.bytes.extend_from_slice(appended);
    }
}

/// A receiver that takes its messages on a stream, in a protocol above the core.
pub trait StreamPeer: Any {
    /// A message routed to this receiver.
    fn deliver(&mut self, to: &mut StreamOut<'_>, d: &Delivery<'_>) -> Result<(), Errno>;
    /// A message that waited in an activator's pool (laid out as kdbus does) moves to
    /// this receiver, which now owns the name it was sent to. Already accepted: not
    /// refused for quota.
    fn deliver_moved(
        &mut self,
        to: &mut StreamOut<'_>,
        msg: &[u8],
        files: Option<Files>,
    ) -> Result<(), Errno>;
    /// The answer to this receiver's message `cookie` will not come.
    fn no_reply(&mut self, to: &mut StreamOut<'_>, cookie: u64, dead: bool);
    /// This receiver lost the name `name` (told before everyone hears of the change).
    fn name_lost(&mut self, to: &mut StreamOut<'_>, name: &str);
    /// This receiver now owns `name` (told before everyone hears of the change).
    fn name_acquired(&mut self, to: &mut StreamOut<'_>, name: &str);
    /// `name` changed owner on the bus (unique ids; 0 for none).
    fn name_changed(&mut self, to: &mut StreamOut<'_>, name: &str, old: u64, new: u64);
    /// Connection `id` joined (`true`) or left the bus.
    fn conn_changed(&mut self, to: &mut StreamOut<'_>, id: u64, joined: bool);
    /// A monitor sees a copy of what the bus said to another peer (whole messages, in
    /// the protocol's framing; `files` go with the byte at each offset).
    fn observe(&mut self, to: &mut StreamOut<'_>, msgs: &[u8], files: &[(usize, Files)]);
    /// The broker wrote `n` bytes of the stream.
    fn written(&mut self, n: usize);
    /// For the personality to get its own peer type back (downcast).
    fn as_any_mut(&mut self) -> &mut dyn Any;
}
