//! Errors as kdbus reports them: a positive Linux errno.
//!
//! kdbus's contract with userspace is the errno of every failing command, so the whole
//! stack carries one: the core decides it, the broker sends it, the client library turns
//! it back into an error value. Keeping it a number (and not a Rust enum per command)
//! keeps the wire and the decision in one place; the name is there for humans.

use std::fmt;

/// A positive errno value as defined by Linux.
#[derive(Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($name:ident),* $(,)?) => {
        impl Errno {
            $(
                /// The Linux errno of this name.
                pub const $name: Errno = Errno(libc::$name);
            )*

            /// The symbolic name, e.g. `"EINVAL"`.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $(libc::$name => stringify!($name),)*
                    _ => "E?",
                }
            }
        }
    };
}

errnos!(
    EPERM,
    ENOENT,
    ESRCH,
    EINTR,
    EIO,
    ENXIO,
    E2BIG,
    EBADF,
    EAGAIN,
    ENOMEM,
    EACCES,
    EFAULT,
    EBUSY,
    EEXIST,
    ENODEV,
    EINVAL,
    ENFILE,
    EMFILE,
    ENOTTY,
    ETXTBSY,
    EFBIG,
    ENOSPC,
    EPIPE,
    EDOM,
    ENAMETOOLONG,
    ENOMSG,
    EBADMSG,
    EOVERFLOW,
    ENOTUNIQ,
    EBADFD,
    EREMCHG,
    ECOMM,
    EPROTO,
    EMLINK,
    EXFULL,
    EBADSLT,
    EDESTADDRREQ,
    EMSGSIZE,
    EOPNOTSUPP,
    EADDRINUSE,
    EADDRNOTAVAIL,
    ENOBUFS,
    ECONNRESET,
    ESHUTDOWN,
    ETIMEDOUT,
    ECONNREFUSED,
    EALREADY,
    ECANCELED,
    EMEDIUMTYPE,
    EREMOTEIO,
    ENOTCONN,
);

impl Errno {
    /// The errno as a number.
    pub fn raw(self) -> i32 {
        self.0
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// Result of a kdbus command.
pub type Result<T, E = Errno> = std::result::Result<T, E>;
