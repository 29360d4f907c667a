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
//!
//! Before it sleeps, the loop may poll for a little while (`--busy-poll-us`). Waking
//! a sleeping CPU is what a message costs most in a virtual machine whose guest does
//! not poll before halting: on our 2-core test VM each halt and wakeup cost about
//! 25-40 us, and a D-Bus driver call between two cores halted 1.96 times per call
//! with us against 1.14 with dbus-broker, whose slower loop often found the next
//! message before it slept. So the loop looks again, without sleeping, for up to a
//! window that adapts the way the kernel's haltpoll governor does: it grows (doubling,
//! up to the maximum) when a sleep ended sooner than the maximum, which a longer poll
//! would have caught, and halves (to nothing below its start) when a sleep lasted
//! longer. A bus whose messages come further apart than the maximum therefore does
//! not poll at all after a few sleeps; a busy one trades a few microseconds of CPU
//! for a wakeup. The maximum is 100 us by default, half of haltpoll's: a Python
//! client's next call reaches us 40-60 us after our reply, wakeups included. Measured
//! with `kdbusctl bench --dbus-compare`, against no poll in the same session: request
//! and reply went from 0.92x dbus-broker's rate to 1.31-1.75x, with no more broker
//! CPU per call (a wakeup costs the woken more CPU than the poll does).
//!
//! The poll yields the CPU between looks: the kernel's poll runs only on an idle
//! CPU, ours must not take one from the clients it waits for. With sd-bus's client
//! and service both busy on two cores (64 calls in flight), a poll that spun took
//! 14.5-15.7 us of broker CPU per call against 8.2-9.9 us with the yield, and the
//! calls went 10-20% faster; with nothing else to run, the yield returns at once.

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
    /// How long to poll before the next sleep (ns; 0: sleep at once).
    poll: std::cell::Cell<u64>,
    /// The longest `poll` may grow (`--busy-poll-us`; 0: never poll).
    poll_max: u64,
}

/// Where the poll window starts when it grows from nothing (ns), at most `poll_max`.
const POLL_START_NS: u64 = 10_000;

impl Dispatch {
    /// A dispatcher that polls for at most `poll_max_ns` before sleeping.
    pub(crate) fn new(poll_max_ns: u64) -> std::io::Result<Dispatch> {
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
            poll: std::cell::Cell::new(0),
            poll_max: poll_max_ns,
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
        if timeout_ns == 0 {
            let zero = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(events),
                Some(&zero),
            )?;
            self.timer_take(events);
            return Ok(());
        }
        self.arm(timeout_ns)?;
        let start = std::time::Instant::now();
        if self.poll.get() > 0 {
            loop {
                self.wait(events, 0)?;
                // Work, or a deadline (the timer fired and was taken): either is a turn.
                if !events.is_empty() || self.armed.get().is_none() {
                    return Ok(());
                }
                if start.elapsed().as_nanos() as u64 >= self.poll.get() {
                    break;
                }
                rustix::thread::sched_yield();
            }
        }
        epoll::wait(&self.epoll, rustix::buffer::spare_capacity(events), None)?;
        self.poll_adapt(start.elapsed().as_nanos() as u64);
        self.timer_take(events);
        Ok(())
    }

    /// After a sleep, `idle_ns` after the loop ran out of work: grow the poll window
    /// when polling that long would have spared the sleep, shrink it otherwise.
    fn poll_adapt(&self, idle_ns: u64) {
        let poll = self.poll.get();
        let next = if idle_ns <= self.poll_max {
            poll.saturating_mul(2).max(POLL_START_NS).min(self.poll_max)
        } else if poll / 2 < POLL_START_NS.min(self.poll_max) {
            0
        } else {
            poll / 2
        };
        self.poll.set(next);
    }

    /// Take the timer's event out of `events`, reading its count so that it stops
    /// being readable.
    fn timer_take(&self, events: &mut Vec<epoll::Event>) {
        if let Some(i) = events.iter().position(|e| e.data.u64() == TOKEN_TIMER) {
            events.swap_remove(i);
            let mut n = [0u8; 8];
            let _ = rustix::io::read(&self.timer, &mut n);
            self.armed.set(None);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_window_grows_on_short_sleeps_and_goes_on_long_ones() {
        let d = Dispatch::new(100_000).unwrap();
        assert_eq!(d.poll.get(), 0);
        d.poll_adapt(30_000);
        assert_eq!(d.poll.get(), POLL_START_NS);
        for _ in 0..10 {
            d.poll_adapt(90_000);
        }
        assert_eq!(d.poll.get(), 100_000, "capped at the maximum");
        d.poll_adapt(5_000_000);
        assert_eq!(d.poll.get(), 50_000);
        for _ in 0..3 {
            d.poll_adapt(5_000_000);
        }
        assert_eq!(d.poll.get(), 0, "a quiet bus stops polling");
    }

    #[test]
    fn without_a_maximum_it_never_polls() {
        let d = Dispatch::new(0).unwrap();
        d.poll_adapt(1_000);
        assert_eq!(d.poll.get(), 0);
    }

    #[test]
    fn a_deadline_ends_the_poll() {
        let d = Dispatch::new(1_000_000_000).unwrap();
        d.poll.set(1_000_000_000);
        let mut events = Vec::with_capacity(8);
        let t = std::time::Instant::now();
        d.wait(&mut events, 2_000_000).unwrap();
        assert!(events.is_empty());
        assert!(
            t.elapsed() < std::time::Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
}
