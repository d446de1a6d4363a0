//! `ferrum bench serve`: a load generator for any OpenAI-compatible server, so ferrum and
//! llama.cpp's `llama-server` are measured by the same client.
//!
//! A workload is a list of [`ServeItem`]s: single completions (text or token-id prompts, for
//! the random and shared-prefix datasets) or chats (one turn for ShareGPT, several for
//! multi-turn, where each turn's history includes the answers the server gave). [`run_serve`]
//! sends them from `concurrency` worker threads, either as fast as the workers free up
//! (closed loop) or at Poisson-distributed times (`request_rate`), streams every response,
//! and reports TTFT, TPOT, ITL and end-to-end latency ([`stats`]). [`plot`] draws the latency
//! distributions.
//!
//! - [`sse`]: server-sent-event decoding and per-request timing (pure, unit-tested).
//! - [`client`]: the blocking HTTP client.
//! - [`arrivals`]: Poisson send times.
//! - [`workload`]: datasets as [`ServeItem`]s.

pub mod arrivals;
pub mod client;
pub mod plot;
pub mod sse;
pub mod stats;
pub mod workload;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use client::{Client, ClientConfig};
pub use stats::{RequestRecord, ServeReport, Summary};

use crate::{BenchError, Result};

/// A prompt for `/v1/completions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptInput {
    /// Text, tokenized by the server.
    Text(String),
    /// Token ids (exact lengths; every server under test must share the vocabulary).
    Ids(Vec<u32>),
}

/// One unit of work: a completion, or a chat of one or more user turns sent in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeItem {
    /// A `/v1/completions` request.
    Completion {
        /// The prompt.
        prompt: PromptInput,
        /// `max_tokens`.
        output_len: usize,
    },
    /// `/v1/chat/completions` requests, one per user turn; turn `k` sends the system
    /// message, turns `0..k` with the answers the server gave, and turn `k`.
    Chat {
        /// Optional system message.
        system: Option<String>,
        /// User messages, in order (non-empty).
        turns: Vec<String>,
        /// `max_tokens` of every turn.
        output_len: usize,
    },
}

impl ServeItem {
    /// HTTP requests this item makes.
    pub fn num_requests(&self) -> usize {
        match self {
            ServeItem::Completion { .. } => 1,
            ServeItem::Chat { turns, .. } => turns.len(),
        }
    }
}

/// How a run sends its items.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Connection and request settings.
    pub client: ClientConfig,
    /// Worker threads = most requests in flight.
    pub concurrency: usize,
    /// Poisson arrival rate in items per second; `None` sends as fast as workers allow.
    pub request_rate: Option<f64>,
    /// Seed of the arrival times.
    pub seed: u64,
    /// Send one tiny untimed request first (connection set-up, lazy model loading).
    pub warmup: bool,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct ServeRun {
    /// Aggregate figures.
    pub report: ServeReport,
    /// Every request, in completion order.
    pub records: Vec<RequestRecord>,
    /// The model name that was sent.
    pub model: String,
}

fn run_item(client: &Client, item: &ServeItem, start: Instant, out: &mut dyn FnMut(RequestRecord)) {
    match item {
        ServeItem::Completion { prompt, output_len } => {
            out(client.completion(prompt, *output_len, start).record);
        }
        ServeItem::Chat {
            system,
            turns,
            output_len,
        } => {
            let mut history: Vec<(&str, String)> = Vec::with_capacity(2 * turns.len() + 1);
            if let Some(s) = system {
                history.push(("system", s.clone()));
            }
            for turn in turns {
                history.push(("user", turn.clone()));
                let msgs: Vec<(&str, &str)> =
                    history.iter().map(|(r, c)| (*r, c.as_str())).collect();
                let s = client.chat(&msgs, *output_len, start);
                let failed = s.record.error.is_some();
                out(s.record);
                if failed {
                    return; // later turns would need this answer
                }
                history.push(("assistant", s.text));
            }
        }
    }
}

/// Runs `items` against the server and reports. `progress(done, failed)` is called after
/// every request (from worker threads). Fails only when the server cannot be reached or
/// the options are invalid; failed requests are counted in the report.
pub fn run_serve(
    items: &[ServeItem],
    opts: &ServeOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<ServeRun> {
    if opts.concurrency == 0 {
        return Err(BenchError::Invalid("concurrency must be at least 1".into()));
    }
    if let Some(r) = opts.request_rate {
        if r.is_nan() || r <= 0.0 {
            return Err(BenchError::Invalid(format!("request rate {r} must be > 0")));
        }
    }
    let client = Client::connect(ClientConfig {
        max_connections: opts.concurrency,
        ..opts.client.clone()
    })?;
    if opts.warmup {
        let w = client.completion(&PromptInput::Text("Hello".into()), 2, Instant::now());
        if let Some(e) = w.record.error {
            return Err(BenchError::Server(format!("warm-up request failed: {e}")));
        }
    }
    let due = arrivals::arrival_times(items.len(), opts.request_rate, opts.seed);
    let next = AtomicUsize::new(0);
    let (done, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let records = Mutex::new(Vec::with_capacity(
        items.iter().map(ServeItem::num_requests).sum(),
    ));
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..opts.concurrency.min(items.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let at = start + Duration::from_secs_f64(due[i]);
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                run_item(&client, item, start, &mut |rec| {
                    let bad = rec.error.is_some();
                    if let Ok(mut v) = records.lock() {
                        v.push(rec);
                    }
                    let f =
                        failed.fetch_add(usize::from(bad), Ordering::Relaxed) + usize::from(bad);
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, f);
                });
            });
        }
    });
    let records = records.into_inner().unwrap_or_else(|p| p.into_inner());
    let duration_s = records
        .iter()
        .map(|r| r.sent_s + r.e2e_s)
        .fold(0.0, f64::max);
    Ok(ServeRun {
        report: ServeReport::from_records(&records, duration_s),
        records,
        model: client.model().to_string(),
    })
}
