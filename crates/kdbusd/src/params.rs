//! kdbus's module parameters, as files in the runtime directory.
//!
//! kdbus had one tunable, `/sys/module/kdbus/parameters/attach_flags_mask`: the
//! metadata the kernel attaches at all, whatever connections ask for. We keep it as
//! `<runtime>/parameters/attach_flags_mask`, a plain file holding the number (decimal,
//! or `0x` hex, or `0` octal, as the kernel parsed it), created with every flag set.
//! Writing it changes the mask for every command the broker reads after the write
//! was closed: an inotify watch on the directory is one of the loop's events, and a
//! wakeup handles it before any client's requests (see `Broker::run`).
//!
//! kdbus's selftests find it with `-m ../..<runtime>` (the module name is only used to
//! build that path).

use kdbus_abi::attach;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::inotify;
use std::path::{Path, PathBuf};

/// The parameter file and the watch on its directory.
pub struct Params {
    /// `<runtime>/parameters/attach_flags_mask`.
    file: PathBuf,
    /// An inotify fd watching the file's directory (registered in the loop).
    watch: OwnedFd,
}

impl Params {
    /// Create the directory and the file (if missing) and watch them; returns the
    /// mask the file holds.
    pub fn open(runtime_dir: &Path) -> std::io::Result<(Params, u64)> {
        let dir = runtime_dir.join("parameters");
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("attach_flags_mask");
        if !file.exists() {
            std::fs::write(&file, format!("{}\n", attach::ALL))?;
        }
        let watch = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)?;
        inotify::add_watch(
            &watch,
            &dir,
            inotify::WatchFlags::CLOSE_WRITE | inotify::WatchFlags::MOVED_TO,
        )?;
        let p = Params { file, watch };
        let mask = p.read().unwrap_or(attach::ALL);
        Ok((p, mask))
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.watch.as_fd()
    }

    /// After the watch fired: the mask now in the file, if it parses.
    pub fn changed(&mut self) -> Option<u64> {
        let mut buf = [0u8; 1024];
        while let Ok(n) = rustix::io::read(&self.watch, &mut buf) {
            if n == 0 {
                break;
            }
        }
        self.read()
    }

    fn read(&self) -> Option<u64> {
        parse_u64(&std::fs::read_to_string(&self.file).ok()?)
    }
}

/// A number as the kernel's `kstrtoull(s, 0)` reads it.
fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::parse_u64;

    #[test]
    fn numbers_as_the_kernel_reads_them() {
        assert_eq!(parse_u64("16383\n"), Some(16383));
        assert_eq!(parse_u64("0x3fff"), Some(0x3fff));
        assert_eq!(parse_u64("017"), Some(15));
        assert_eq!(parse_u64("0"), Some(0));
        assert_eq!(parse_u64(""), None);
        assert_eq!(parse_u64("x"), None);
    }
}
