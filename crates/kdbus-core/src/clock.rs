//! Time, behind a trait so that tests decide when timeouts fire.

use std::cell::Cell;
use std::rc::Rc;

/// A point in time on both clocks kdbus reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// CLOCK_MONOTONIC in ns: reply deadlines are expressed on it.
    pub monotonic_ns: u64,
    /// CLOCK_REALTIME in ns, for TIMESTAMP items.
    pub realtime_ns: u64,
}

/// Where the domain reads the time: the system clocks in the broker, a [`ManualClock`]
/// in tests.
pub trait Clock {
    /// The current time. The monotonic side must not go backwards: reply deadlines are
    /// set and checked on it.
    fn now(&self) -> Now;
}

/// A clock that moves only when told to.
#[derive(Clone, Default)]
pub struct ManualClock(Rc<Cell<u64>>);

impl ManualClock {
    /// A clock at `start_ns`. Clones share the time: a test keeps one and hands one to
    /// the domain.
    pub fn new(start_ns: u64) -> Self {
        ManualClock(Rc::new(Cell::new(start_ns)))
    }
    /// Set the time to `ns` (absolute).
    pub fn set(&self, ns: u64) {
        self.0.set(ns)
    }
    /// The current time in ns; both clocks of [`Now`] read it.
    pub fn now_ns(&self) -> u64 {
        self.0.get()
    }
    /// Move forward by `ns`; timeouts fire only at the domain's next `tick`.
    pub fn advance(&self, ns: u64) {
        self.0.set(self.0.get() + ns)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Now {
        let t = self.0.get();
        Now {
            monotonic_ns: t,
            realtime_ns: t,
        }
    }
}
