//! The one error type every engine layer returns.
//!
//! An error is a stable machine-readable [`ErrorKind`] plus a human reason. The HTTP layer maps
//! kinds to statuses in exactly one place; the engine never thinks about HTTP.

use std::fmt;

/// Stable error kinds. Their `as_str` names are part of the wire protocol: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed: bad id, bad path, bad size, unknown op.
    Invalid,
    /// The thing named does not exist.
    NotFound,
    /// The caller's token does not reach it (another library's content, a read-only token…).
    Forbidden,
    /// The thing exists but its state forbids the operation (already finalized, wrong offset…).
    Conflict,
    /// A finished thing was asked to change again (a second finalize, data to a completed job).
    Gone,
    /// The file or job is not complete yet, so its bytes cannot be read or sealed.
    Incomplete,
    /// A file's bytes, as received, do not hash to the blake3 its add op declared (it changed
    /// while it was uploaded); S3's `BadDigest`.
    BadDigest,
    /// A condition the caller attached (`If-Match` on finalize…) does not hold; nothing changed.
    PreconditionFailed,
    /// More bytes, entries or nesting than allowed.
    TooLarge,
    /// Stored data failed its blake3 check or a record failed to decode. Never served.
    Corrupt,
    /// The store is out of space.
    NoSpace,
    /// Shared resources (memory budgets) stayed taken by other requests; retry shortly.
    Busy,
    /// Any other I/O or engine failure.
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Gone => "gone",
            ErrorKind::Incomplete => "incomplete",
            ErrorKind::BadDigest => "bad_digest",
            ErrorKind::PreconditionFailed => "precondition_failed",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::NoSpace => "no_space",
            ErrorKind::Busy => "busy",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An engine error: a kind, a human reason, and the underlying cause when there is one.
#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub reason: String,
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! ctor {
    ($($name:ident => $kind:ident),* $(,)?) => {$(
        pub fn $name(reason: impl Into<String>) -> Error {
            Error::new(ErrorKind::$kind, reason)
        }
    )*};
}

impl Error {
    pub fn new(kind: ErrorKind, reason: impl Into<String>) -> Error {
        Error {
            kind,
            reason: reason.into(),
            source: None,
        }
    }

    ctor! {
        invalid => Invalid,
        not_found => NotFound,
        forbidden => Forbidden,
        conflict => Conflict,
        gone => Gone,
        incomplete => Incomplete,
        bad_digest => BadDigest,
        precondition_failed => PreconditionFailed,
        too_large => TooLarge,
        corrupt => Corrupt,
        internal => Internal,
        busy => Busy,
    }

    /// An I/O failure with context; `ENOSPC` becomes [`ErrorKind::NoSpace`].
    pub fn io(context: impl Into<String>, err: std::io::Error) -> Error {
        let kind = if err.raw_os_error() == Some(28) {
            ErrorKind::NoSpace
        } else {
            ErrorKind::Internal
        };
        let reason = format!("{}: {err}", context.into());
        Error {
            kind,
            reason,
            source: Some(Box::new(err)),
        }
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Box::new(source));
        self
    }

    pub fn is(&self, kind: ErrorKind) -> bool {
        self.kind == kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.reason)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<crate::id::IdError> for Error {
    fn from(e: crate::id::IdError) -> Error {
        Error::invalid(e.to_string())
    }
}

impl From<crate::path::PathError> for Error {
    fn from(e: crate::path::PathError) -> Error {
        Error::invalid(e.to_string())
    }
}
