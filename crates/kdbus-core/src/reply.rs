//! Reply tracking.
//!
//! A message sent with EXPECT_REPLY leaves a tracker on its *receiver*: "you owe
//! (requester, cookie) an answer before `deadline`". The tracker is what makes a later
//! message with that `cookie_reply` a reply (delivered even where talking would not be
//! allowed), and what turns the receiver's silence into REPLY_TIMEOUT, or its death into
//! REPLY_DEAD. A synchronous sender also parks its SEND request on the tracker; the
//! broker answers that request only when the tracker resolves.

use crate::ids::ConnKey;

/// Key of a tracker inside its receiver: (requester connection, cookie).
pub type TrackerKey = (ConnKey, u64);

/// An answer a receiver owes, kept in its `owed` map under a [`TrackerKey`].
#[derive(Clone, Copy, Debug)]
pub struct Tracker {
    /// Absolute CLOCK_MONOTONIC deadline.
    pub deadline: u64,
    /// The requester's SEND request id, if it waits synchronously.
    pub sync_req: Option<u64>,
}

/// How a tracker ended without a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyFailure {
    /// The deadline passed: REPLY_TIMEOUT, or ETIMEDOUT for a synchronous sender.
    Timeout,
    /// The receiver went away or dropped the message unanswered: REPLY_DEAD, or EPIPE for
    /// a synchronous sender.
    Dead,
    /// The reply itself could not be delivered (a synchronous caller learns this
    /// errno; kdbus reported ECOMM as EREMOTEIO).
    Undeliverable(kdbus_abi::Errno),
}
