//! The dispatcher: one epoll set, tokens for what is in it, and the wait.
//!
//! Like dbus-broker's `util/dispatch.c`, this knows fds and numbers, nothing about
//! what a socket is for: the loop (`broker`) decides what a token means. Every fd is
//! registered level-triggered for input; write interest is added only while a socket
//! has a backlog, so an idle client costs no wakeups. Tokens are never reused in a
//! broker's lifetime, so an event for a socket closed earlier in the same wakeup finds
//! nothing instead of a newcomer.
//!
//! Deadlines wake the loop through a timerfd in the set, not through the wait's
//! timeout: a timeout arms a kernel timer on every sleep and cancels it on every
//! wakeup, which in a virtual machine costs exits to the hypervisor twice per message
//! (we measured the D-Bus driver round trip 20-50 us slower than dbus-broker's, whose
//! loop sleeps without a timeout). The timerfd is set only when a deadline comes
//! earlier than the one it holds, so a busy bus sets it about once a second. A wakeup
//! by the timer reports no event: to the loop it is an idle turn.

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
/// The deadline timer.
const TOKEN_TIMER: u64 = 4;
/// Tokens below this are reserved for the fixed fds above.
const FIRST_TOKEN: u64 = 16;

/// The epoll set and the token counter.
pub(crate) struct Dispatch {
    /// The epoll instance every socket of the broker is registered in.
    epoll: OwnedFd,
    /// The last token handed out.
    next_token: u64,
    /// The timerfd that wakes the loop at its next deadline.
    timer: OwnedFd,
    /// When `timer` fires (`CLOCK_MONOTONIC` ns), if it is set.
    armed: std::cell::Cell<Option<u64>>,
}

impl Dispatch {
    pub(crate) fn new() -> std::io::Result<Dispatch> {
        use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )?;
        let d = Dispatch {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            next_token: FIRST_TOKEN,
            timer,
            armed: std::cell::Cell::new(None),
        };
        d.add(&d.timer, TOKEN_TIMER)?;
        Ok(d)
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

    /// Wait for events, at most `timeout_ns` (0: only look); `events` is cleared first
    /// and holds no event of the timer's.
    pub(crate) fn wait(
        &self,
        events: &mut Vec<epoll::Event>,
        timeout_ns: u64,
    ) -> Result<(), SysErrno> {
        events.clear();
        let timeout = if timeout_ns == 0 {
            Some(rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            })
        } else {
            self.arm(timeout_ns)?;
            None
        };
        epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(events),
            timeout.as_ref(),
        )?;
        if let Some(i) = events.iter().position(|e| e.data.u64() == TOKEN_TIMER) {
            events.swap_remove(i);
            // Fired: read its count so it stops being readable.
            let mut n = [0u8; 8];
            let _ = rustix::io::read(&self.timer, &mut n);
            self.armed.set(None);
        }
        Ok(())
    }

    /// Make sure the timer fires no later than `timeout_ns` from now.
    fn arm(&self, timeout_ns: u64) -> Result<(), SysErrno> {
        use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let now = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
        let at = now.saturating_add(timeout_ns);
        if self.armed.get().is_some_and(|armed| armed <= at) {
            return Ok(());
        }
        let ts = |ns: u64| Timespec {
            tv_sec: (ns / 1_000_000_000) as i64,
            tv_nsec: (ns % 1_000_000_000) as i64,
        };
        let spec = Itimerspec {
            it_interval: ts(0),
            it_value: ts(at),
        };
        timerfd_settime(&self.timer, TimerfdTimerFlags::ABSTIME, &spec)?;
        self.armed.set(Some(at));
        Ok(())
    }
}
