//! What the driver says: message bodies it builds, and the errors it answers with.
//!
//! A driver error is a D-Bus error name with a text, as dbus-daemon words them (some
//! programs match on the text). Errors are values of [`DErr`], made through one
//! constructor per name, so a typo in a name cannot compile.

use kdbus_core::Files;
use kdbus_dbus::marshal::{Endian, Writer};

/// A body under construction: D-Bus body writer plus signature.
pub(crate) struct Body {
    pub(crate) sig: String,
    pub(crate) bytes: Vec<u8>,
    /// Fds going with the message (its `h` values index them).
    pub(crate) files: Option<Files>,
}

impl Body {
    pub(crate) fn new() -> Self {
        Body {
            sig: String::new(),
            bytes: Vec::new(),
            files: None,
        }
    }
    /// A writer continuing the body: alignment counts from the body's start.
    pub(crate) fn w(&mut self) -> Writer<'_> {
        Writer::continuing(&mut self.bytes, Endian::Little, 0)
    }
    pub(crate) fn s(mut self, v: &str) -> Self {
        self.sig.push('s');
        self.w().string(v);
        self
    }
    pub(crate) fn u(mut self, v: u32) -> Self {
        self.sig.push('u');
        self.w().u32(v);
        self
    }
    pub(crate) fn b(mut self, v: bool) -> Self {
        self.sig.push('b');
        self.w().bool(v);
        self
    }
    pub(crate) fn strings<S: AsRef<str>>(mut self, v: &[S]) -> Self {
        self.sig.push_str("as");
        let mut w = self.w();
        let a = w.array_begin(4);
        for s in v {
            w.string(s.as_ref());
        }
        w.array_end(a);
        self
    }
}

/// The error names the driver answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrName {
    Failed,
    InvalidArgs,
    NameHasNoOwner,
    ServiceUnknown,
    UnknownMethod,
    UnknownInterface,
    MatchRuleInvalid,
    MatchRuleNotFound,
    AccessDenied,
    NoReply,
    LimitsExceeded,
    AdtAuditDataUnknown,
    SELinuxSecurityContextUnknown,
    UnknownProperty,
    PropertyReadOnly,
    SpawnChildExited,
    SpawnChildSignaled,
    SpawnExecFailed,
    SpawnFileInvalid,
    SpawnServiceNotFound,
    SpawnFailedToSetup,
    TimedOut,
}

impl ErrName {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrName::Failed => "org.freedesktop.DBus.Error.Failed",
            ErrName::InvalidArgs => "org.freedesktop.DBus.Error.InvalidArgs",
            ErrName::NameHasNoOwner => "org.freedesktop.DBus.Error.NameHasNoOwner",
            ErrName::ServiceUnknown => "org.freedesktop.DBus.Error.ServiceUnknown",
            ErrName::UnknownMethod => "org.freedesktop.DBus.Error.UnknownMethod",
            ErrName::UnknownInterface => "org.freedesktop.DBus.Error.UnknownInterface",
            ErrName::MatchRuleInvalid => "org.freedesktop.DBus.Error.MatchRuleInvalid",
            ErrName::MatchRuleNotFound => "org.freedesktop.DBus.Error.MatchRuleNotFound",
            ErrName::AccessDenied => "org.freedesktop.DBus.Error.AccessDenied",
            ErrName::NoReply => "org.freedesktop.DBus.Error.NoReply",
            ErrName::LimitsExceeded => "org.freedesktop.DBus.Error.LimitsExceeded",
            ErrName::AdtAuditDataUnknown => "org.freedesktop.DBus.Error.AdtAuditDataUnknown",
            ErrName::SELinuxSecurityContextUnknown => {
                "org.freedesktop.DBus.Error.SELinuxSecurityContextUnknown"
            }
            ErrName::UnknownProperty => "org.freedesktop.DBus.Error.UnknownProperty",
            ErrName::PropertyReadOnly => "org.freedesktop.DBus.Error.PropertyReadOnly",
            ErrName::SpawnChildExited => "org.freedesktop.DBus.Error.Spawn.ChildExited",
            ErrName::SpawnChildSignaled => "org.freedesktop.DBus.Error.Spawn.ChildSignaled",
            ErrName::SpawnExecFailed => "org.freedesktop.DBus.Error.Spawn.ExecFailed",
            ErrName::SpawnFileInvalid => "org.freedesktop.DBus.Error.Spawn.FileInvalid",
            ErrName::SpawnServiceNotFound => "org.freedesktop.DBus.Error.Spawn.ServiceNotFound",
            ErrName::SpawnFailedToSetup => "org.freedesktop.DBus.Error.Spawn.FailedToSetup",
            ErrName::TimedOut => "org.freedesktop.DBus.Error.TimedOut",
        }
    }
}

/// A driver error: its name and its text.
#[derive(Clone, Debug)]
pub(crate) struct DErr(pub(crate) ErrName, pub(crate) String);

pub(crate) fn err(name: ErrName, msg: impl Into<String>) -> DErr {
    DErr(name, msg.into())
}
