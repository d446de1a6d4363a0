//! Ferrum's engine: continuous batching over a paged KV cache with radix-tree prefix caching.
//!
//! - [`block_pool`]: the fixed set of KV blocks, refcounts and free queue.
//! - [`radix`]: the prefix cache, a radix tree of block-aligned prefixes with LRU eviction.
//! - [`scheduler`] + [`policy`]: per-step token budget, chunked prefill, cache-aware
//!   admission and preemption; the policy decides order.
//! - [`retention`] + [`predictor`]: agent programs' KV pinned across tool calls for a TTL
//!   predicted per tool (`lru`, `ttl`, `pin-all`).
//! - [`fair`]: hierarchical weighted fairness (tenant -> user -> request) by virtual-token
//!   accounting, with per-tenant limits.
//! - [`engine`]: the synchronous core ([`Engine`]); [`handle`]: the loop thread
//!   ([`EngineHandle`]) servers use.
//! - [`spec`]: exact speculative decoding (drafters, verification, fallback).
//! - [`llama_runner`]: the real model behind [`ModelRunner`] and KV-pool sizing.
//! - [`replay`]: a recorded agent trace simulated on the real engine with a fake model and a
//!   cost model (`ferrum replay`, and shadow mode's prediction in the server).
//! - [`testing`]: a fake model whose outputs depend on the KV read back through block tables.
//!
//! The engine does no network IO and knows nothing of HTTP or JSON; the model runtime knows
//! nothing of requests. Example with the fake model:
//!
//! ```
//! use std::sync::Arc;
//! use ferrum_engine::{Engine, EngineConfig, Event, Request};
//! use ferrum_engine::testing::{FakeRunner, FakeText};
//!
//! let cfg = EngineConfig { num_blocks: 64, ..EngineConfig::default() };
//! let runner = FakeRunner::new(100, cfg.num_blocks, cfg.block_size);
//! let mut engine = Engine::new(runner, Arc::new(FakeText::new(100)), cfg).unwrap();
//! let id = engine.submit(Request::new(vec![1, 2, 3], 5)).unwrap();
//! let mut tokens = 0;
//! while engine.has_work() {
//!     engine.step();
//!     for (rid, ev) in engine.drain_events() {
//!         assert_eq!(rid, id);
//!         if let Event::Token { .. } = ev { tokens += 1 }
//!     }
//! }
//! assert_eq!(tokens, 5);
//! ```
#![deny(missing_docs)]

pub mod block_pool;
pub mod engine;
pub mod error;
pub mod fair;
pub mod handle;
pub mod llama_runner;
pub mod policy;
pub mod predictor;
pub mod radix;
pub mod replay;
pub mod request;
pub mod retention;
pub mod rng;
pub mod scheduler;
pub mod spec;
mod stream;
pub mod testing;

pub use engine::{Engine, EngineConfig, EngineStats, ModelRunner, StepStats, TokenText};
pub use error::EngineError;
pub use fair::{FairConfig, FairPolicy, TenantLimits, TenantSpec, TenantStats};
pub use handle::EngineHandle;
pub use llama_runner::{kv_capacity, parse_bytes, KvBudget, KvCapacity};
pub use policy::{Fcfs, RequestInfo, SchedulingPolicy};
pub use predictor::{GapPredictor, PredictorConfig};
pub use request::{Event, FinishReason, Request, RequestId, SubmitError, TokenLogprob, Usage};
pub use retention::{Clock, KvRetention, RetentionConfig, RetentionCounters};
pub use spec::{Drafter, SpecConfig, SpecCounters, SpecKey, SpecMethod, SpecStats};
