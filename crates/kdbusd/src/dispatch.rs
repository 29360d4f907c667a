//! The dispatcher: one epoll set, tokens for what is in it, and the wait.
//!
//! Like dbus-broker's `util/dispatch.c`, this knows fds and numbers, nothing about
//! what a socket is for: the loop (`broker`) decides what a token means. Every fd is
//! registered level-triggered for input; write interest is added only while a socket
//! has a backlog, so an idle client costs no wakeups. Tokens are never reused in a
//! broker's lifetime, so an event for a socket closed earlier in the same wakeup finds
//! nothing instead of a newcomer.

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno as SysErrno;

/// The signalfd (in the server's set).
pub(crate) const TOKEN_SIGNAL: u64 = 0;
/// The control socket's listener.
pub(crate) const TOKEN_CONTROL: u64 = 1;
/// The module-parameter watch.
pub(crate) const TOKEN_PARAMS: u64 = 2;
/// The watch over the configuration's directories.
pub(crate) const TOKEN_CONFIG_WATCH: u64 = 3;
/// Tokens below this are reserved for the fixed fds above.
const FIRST_TOKEN: u64 = 16;

/// The epoll set and the token counter.
pub(crate) struct Dispatch {
    /// The epoll instance every socket of the broker is registered in.
    epoll: OwnedFd,
    /// The last token handed out.
    next_token: u64,
}

impl Dispatch {
    pub(crate) fn new() -> std::io::Result<Dispatch> {
        Ok(Dispatch {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            next_token: FIRST_TOKEN,
        })
    }

    /// The epoll instance itself: readable when something in it is ready, so one
    /// set can watch others (the server watches each domain's).
    pub(crate) fn fd(&self) -> rustix::fd::BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    /// A token no fd had before.
    pub(crate) fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Watch `fd` for input, reported as `token`.
    pub(crate) fn add(&self, fd: impl AsFd, token: u64) -> std::io::Result<()> {
        epoll::add(&self.epoll, fd, EventData::new_u64(token), EventFlags::IN)?;
        Ok(())
    }

    /// Watch `fd` for output too (`true`: it has a backlog) or no longer.
    pub(crate) fn want_write(&self, fd: impl AsFd, token: u64, write: bool) {
        let flags = if write {
            EventFlags::IN | EventFlags::OUT
        } else {
            EventFlags::IN
        };
        let _ = epoll::modify(&self.epoll, fd, EventData::new_u64(token), flags);
    }

    /// Stop watching `fd` (it is about to be closed).
    pub(crate) fn remove(&self, fd: impl AsFd) {
        let _ = epoll::delete(&self.epoll, fd);
    }

    /// Wait for events, at most `timeout_ns`; `events` is cleared first.
    pub(crate) fn wait(
        &self,
        events: &mut Vec<epoll::Event>,
        timeout_ns: u64,
    ) -> Result<(), SysErrno> {
        let timeout = rustix::time::Timespec {
            tv_sec: (timeout_ns / 1_000_000_000) as i64,
            tv_nsec: (timeout_ns % 1_000_000_000) as i64,
        };
        events.clear();
        epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(events),
            Some(&timeout),
        )?;
        Ok(())
    }
}
