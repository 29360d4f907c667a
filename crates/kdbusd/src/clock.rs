//! Time and identity from the host: the clock the domain reads, random 128-bit ids,
//! and the machine id.
//!
//! The core never reads the system itself (it is tested with a manual clock); these are
//! the real sources the broker hands it. They are kept apart from the loop because they
//! are facts about the machine, not about sockets.

use kdbus_core::{Clock, Now};

/// The system clock, read once per loop iteration and whenever the domain asks.
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Now {
        let mono = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let real = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
        let ns = |t: rustix::time::Timespec| t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64;
        Now {
            monotonic_ns: ns(mono),
            realtime_ns: ns(real),
        }
    }
}

/// This machine's id (`/etc/machine-id`), for Peer.GetMachineId; random if there is none.
pub(crate) fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| s.len() == 32)
        .unwrap_or_else(|| random_id128().iter().map(|b| format!("{b:02x}")).collect())
}

/// A random 128-bit id (bus ids, names of sockets in listen directories).
pub(crate) fn random_id128() -> [u8; 16] {
    let mut b = [0u8; 16];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    // UUID v4, DCE variant, as kdbus made them.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}
