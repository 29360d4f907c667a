//! Logging to the system log (`<syslog/>`, `--syslog`, `--syslog-only`).
//!
//! dbus-daemon logs to the system log when its configuration says `<syslog/>` (the
//! system bus's does), besides standard error unless `--syslog-only`. Ours is a
//! `tracing` writer: each event's formatted line goes to the C library's `syslog()`
//! at the event's level, without colour or timestamp (the log adds its own).

use std::io::Write;
use tracing_subscriber::fmt::MakeWriter;

/// Makes one [`SyslogLine`] per event.
pub struct Syslog;

impl Syslog {
    /// Open the system log; the writer to give `tracing_subscriber::fmt`.
    pub fn open() -> Syslog {
        crate::sys::syslog_open();
        Syslog
    }
}

/// One event's line, sent to the log when the formatter is done with it.
pub struct SyslogLine {
    priority: libc::c_int,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let line = self.buf.trim_ascii_end();
        if !line.is_empty() {
            crate::sys::syslog_line(self.priority, line);
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine {
            priority: libc::LOG_INFO,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        let priority = match *meta.level() {
            tracing::Level::ERROR => libc::LOG_ERR,
            tracing::Level::WARN => libc::LOG_WARNING,
            tracing::Level::INFO => libc::LOG_INFO,
            _ => libc::LOG_DEBUG,
        };
        SyslogLine {
            priority,
            buf: Vec::new(),
        }
    }
}
