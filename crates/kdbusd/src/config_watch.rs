//! Reloading when the configuration's directories change.
//!
//! dbus-daemon 1.14 watches the directories its configuration includes and its
//! service directories with inotify, reloads when a file in them is written, removed
//! or moved, and then broadcasts `ActivatableServicesChanged`. So a package that
//! installs a `.service` file (or a policy in `system.d`) takes effect without a
//! `ReloadConfig`. The watch is one inotify fd in the broker's epoll set; a wakeup
//! drains every event queued and reloads once, so a burst of changes costs one
//! reload. Directories that do not exist are not watched (as dbus-daemon), and the
//! watch is made anew on each reload, as the directories may have changed.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::inotify;
use std::path::PathBuf;

/// The inotify watch over a configuration's directories.
pub(crate) struct ConfigWatch {
    fd: OwnedFd,
}

impl ConfigWatch {
    /// Watch `dirs` (those that exist) for files written, removed or moved.
    pub(crate) fn config_watch_new(dirs: &[PathBuf]) -> std::io::Result<ConfigWatch> {
        let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)?;
        let flags = inotify::WatchFlags::CLOSE_WRITE
            | inotify::WatchFlags::DELETE
            | inotify::WatchFlags::MOVED_TO
            | inotify::WatchFlags::MOVED_FROM;
        for d in dirs {
            if let Err(e) = inotify::add_watch(&fd, d, flags) {
                tracing::debug!(dir = %d.display(), %e, "not watched");
            }
        }
        Ok(ConfigWatch { fd })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Read every event queued; whether there was any.
    pub(crate) fn config_watch_drain(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut any = false;
        while let Ok(n) = rustix::io::read(&self.fd, &mut buf) {
            if n == 0 {
                break;
            }
            any = true;
        }
        any
    }
}
