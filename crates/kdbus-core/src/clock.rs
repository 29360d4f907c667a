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

pub trait Clock {
    fn now(&self) -> Now;
}

/// A clock that moves only when told to.
#[derive(Clone, Default)]
pub struct ManualClock(Rc<Cell<u64>>);

impl ManualClock {
    pub fn new(start_ns: u64) -> Self {
        ManualClock(Rc::new(Cell::new(start_ns)))
    }
    pub fn set(&self, ns: u64) {
        self.0.set(ns)
    }
    pub fn now_ns(&self) -> u64 {
        self.0.get()
    }
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
