//! Benchmark workloads and the offline engine benchmark.
//!
//! - [`sharegpt`]: parses the ShareGPT V3 dump (which is cut off mid-record in its published
//!   form) record by record, and turns conversations into prompts with reference output
//!   lengths.
//! - [`synthetic`]: seeded random-length prompts and shared-prefix groups (a long common system
//!   prompt per group), for throughput and prefix-cache measurements.
//! - [`repetitive`]: prompts that ask to rewrite or continue a given code or text block, the
//!   workload where speculative decoding pays.
//! - [`offline`]: pushes a list of [`BenchRequest`]s through a synchronous
//!   [`ferrum_engine::Engine`] and reports throughput and cache counters.
//!
//! - [`serve`]: `ferrum bench serve`, a streaming load generator for any OpenAI-compatible
//!   server (TTFT, TPOT, ITL, end-to-end latency; Poisson or closed-loop arrivals; a PNG of
//!   the latency distributions).
//!
//! Workloads are token ids, not text: tokenization is passed in as a closure, so this crate
//! needs neither a model nor a tokenizer and its tests are hermetic.
#![deny(missing_docs)]

pub mod agents;
pub mod offline;
pub mod repetitive;
pub mod serve;
pub mod sharegpt;
pub mod synthetic;

/// One benchmark request: a tokenized prompt and how many tokens to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchRequest {
    /// Prompt token ids (non-empty).
    pub prompt: Vec<u32>,
    /// Tokens to generate (the reference answer's length, or a fixed length).
    pub output_len: usize,
}

/// Why a workload could not be built or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// Reading a dataset file failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The dataset is not the JSON shape expected.
    #[error("malformed dataset: {0}")]
    Dataset(String),
    /// Tokenizing a prompt failed.
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    /// A parameter is out of range.
    #[error("invalid benchmark parameter: {0}")]
    Invalid(String),
    /// The engine refused a request.
    #[error("request {index} was refused: {source}")]
    Submit {
        /// Index of the request in the workload.
        index: usize,
        /// The engine's reason.
        source: ferrum_engine::SubmitError,
    },
    /// The server under test could not be reached or answered unexpectedly.
    #[error("server: {0}")]
    Server(String),
    /// A trace could not be read or replayed.
    #[error(transparent)]
    Replay(#[from] ferrum_engine::replay::ReplayError),
    /// Drawing the latency chart failed.
    #[error("plot: {0}")]
    Plot(String),
    /// A request ended with a model error.
    #[error("request {index} failed: {msg}")]
    Failed {
        /// Index of the request in the workload.
        index: usize,
        /// The engine's message.
        msg: String,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, BenchError>;

pub use ferrum_engine::rng;
pub use offline::{run_offline, OfflineOptions, OfflineReport};
