//! The engine's error type for setup and model failures.
//!
//! Policy: a shortage of KV blocks is back-pressure (requests wait or are preempted), never
//! an error; a bad request is a [`crate::SubmitError`] at submit; a model failure ends the
//! requests of that step with `FinishReason::Error` and the engine keeps serving; a broken
//! internal invariant panics with a "programming error" message.

/// Why the engine could not be built or a forward pass failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// An [`crate::EngineConfig`] field is out of range.
    #[error("invalid engine config: {0}")]
    Config(String),
    /// The model runner failed; the message says why.
    #[error("model runner failed: {0}")]
    Runner(String),
    /// The model runtime returned an error.
    #[error(transparent)]
    Model(#[from] ferrum_model::Error),
}
