//! Server configuration and the shared state every handler sees.
//!
//! The server can listen before the model is loaded (so `/health` can say 503 "loading"):
//! the [`Model`] is installed once, later, through [`Server::set_model`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrum_engine::EngineHandle;

use crate::codec::TextCodec;
use crate::metrics::Metrics;

/// HTTP-side settings (engine limits such as `--max-waiting` live in the engine config).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// When set, `/v1/*` requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Largest accepted request body; larger ones get 413 before parsing.
    pub max_body_bytes: usize,
    /// Interval of SSE keep-alive comments while a streamed request waits.
    pub keep_alive: Duration,
    /// How long a shutdown waits for running requests before cutting them off.
    pub drain_timeout: Duration,
    /// Tenants (`--tenants`): API keys map to tenants, `/v1/admin/*` needs an admin key.
    pub tenants: Option<Arc<crate::tenants::Tenants>>,
    /// Agent-program trace (`--trace-out`): one JSON line per finished program turn.
    pub trace: Option<crate::programs::TraceSink>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_key: None,
            max_body_bytes: 8 << 20,
            keep_alive: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            tenants: None,
            trace: None,
        }
    }
}

/// A loaded model: the engine that runs it and the codec that tokenizes for it.
#[derive(Clone)]
pub struct Model {
    /// Name clients pass as `model` (and `/v1/models` lists).
    pub name: String,
    /// The running engine.
    pub engine: EngineHandle,
    /// Tokenizer + chat template.
    pub codec: Arc<dyn TextCodec>,
    /// Context length: prompt + completion tokens may not exceed it.
    pub max_model_len: usize,
    /// KV-cache capacity in tokens, to keep default `max_tokens` within the pool.
    pub kv_capacity_tokens: usize,
    /// Shadow mode (`--kv-retention lru --kv-retention-shadow`): the simulator that predicts
    /// `ttl` on the program turns served, built for this engine's settings.
    pub shadow_sim: Option<Arc<crate::shadow_sim::ShadowSim>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("max_model_len", &self.max_model_len)
            .field("kv_capacity_tokens", &self.kv_capacity_tokens)
            .finish_non_exhaustive()
    }
}

/// Everything handlers share.
#[derive(Debug)]
pub struct AppState {
    /// HTTP settings.
    pub config: ServerConfig,
    model: OnceLock<Arc<Model>>,
    /// Metrics registry.
    pub metrics: Metrics,
    draining: AtomicBool,
    next_id: AtomicU64,
    /// Unix time the server started, reported as `created` in `/v1/models`.
    pub started: u64,
}

impl AppState {
    /// The model, once loaded.
    pub fn model(&self) -> Option<&Arc<Model>> {
        self.model.get()
    }

    /// Whether a shutdown has begun.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// A fresh response id with `prefix` (`chatcmpl`, `cmpl`).
    pub fn new_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:x}{n:06x}", self.started)
    }
}

/// Unix seconds now (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A server under construction or running; cheap to clone.
#[derive(Debug, Clone)]
pub struct Server {
    /// The shared state.
    pub state: Arc<AppState>,
}

impl Server {
    /// A server with no model yet (`/health` answers 503 until [`set_model`](Self::set_model)).
    pub fn new(config: ServerConfig) -> Self {
        let metrics = Metrics::default();
        metrics.programs.set_sink(config.trace.clone());
        Server {
            state: Arc::new(AppState {
                config,
                model: OnceLock::new(),
                metrics,
                draining: AtomicBool::new(false),
                next_id: AtomicU64::new(0),
                started: unix_now(),
            }),
        }
    }

    /// Installs the loaded model; returns `false` (and ignores `model`) if one already is.
    pub fn set_model(&self, model: Model) -> bool {
        let sim = model.shadow_sim.clone();
        let set = self.state.model.set(Arc::new(model)).is_ok();
        if let (true, Some(sim)) = (set, sim) {
            self.state.metrics.programs.set_shadow_sim(sim);
        }
        set
    }
}
