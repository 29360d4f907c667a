//! Errors of the client library.

use kdbus_abi::Errno;

/// Why a library call failed: the bus refused, the socket failed, or the broker's
/// answer made no sense. [`Error::errno`] maps each to an errno.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bus refused the command; the errno says why (kdbus's contract).
    #[error("kdbus: {0}")]
    Bus(Errno),
    /// The socket failed.
    #[error("kdbus transport: {0}")]
    Io(#[from] std::io::Error),
    /// The broker sent something we cannot make sense of.
    #[error("kdbus protocol: {0}")]
    Protocol(&'static str),
    /// A typed D-Bus body could not be written or read (not D-Bus, another signature,
    /// malformed), or the call was answered with a D-Bus error (its name and text).
    #[error("D-Bus body: {0}")]
    Body(String),
}

impl Error {
    /// The errno of this error, whatever its kind.
    pub fn errno(&self) -> Errno {
        match self {
            Error::Bus(e) => *e,
            Error::Io(e) => Errno(e.raw_os_error().unwrap_or(libc::EIO)),
            Error::Protocol(_) => Errno::EPROTO,
            Error::Body(_) => Errno::EBADMSG,
        }
    }
}

impl From<Errno> for Error {
    fn from(e: Errno) -> Self {
        Error::Bus(e)
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Self {
        Error::Io(e.into())
    }
}

/// The library's result type; the error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
