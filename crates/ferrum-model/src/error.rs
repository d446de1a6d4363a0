//! The one error type of `ferrum-model`.
//!
//! Policy (see ARCHITECTURE.md): bad input (a corrupt file, an unknown tokenizer, an invalid
//! argument) is an [`Error`]; a broken internal invariant is a panic with a
//! "programming error" message. A shortage (for example, no free KV block) is an `Option`.

/// What went wrong, coarsely, so callers can map errors to user-facing statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Reading a file failed at the OS level.
    Io,
    /// A GGUF file is malformed, truncated or hostile.
    Gguf,
    /// The file is valid but uses something this runtime does not implement.
    Unsupported,
    /// Tokenizer metadata is missing or inconsistent.
    Tokenizer,
    /// The chat template failed to parse or render.
    Template,
    /// A caller passed an invalid argument (sampling parameters, sizes).
    InvalidArgument,
    /// Fetching the default model failed (no pip, no network, bad checksum).
    Fetch,
}

/// An error with its kind and a human-readable context message.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?} error: {msg}")]
pub struct Error {
    /// The coarse category.
    pub kind: ErrorKind,
    /// What happened, with enough context to act on it.
    pub msg: String,
}

impl Error {
    /// Builds an error of `kind` with message `msg`.
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Error {
            kind,
            msg: msg.into(),
        }
    }
    /// Shorthand for a GGUF format error.
    pub fn gguf(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Gguf, msg)
    }
    /// Shorthand for an unsupported-feature error.
    pub fn unsupported(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, msg)
    }
    /// Shorthand for an invalid-argument error.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, msg)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, e.to_string())
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
