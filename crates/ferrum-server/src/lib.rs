//! Ferrum's OpenAI-compatible HTTP API (axum on tokio).
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions` (streaming and not),
//! `GET /v1/models`, `GET /health`, `GET /metrics`, `GET /openapi.json`.
//!
//! Wiring for `ferrum serve` (engine limits such as `--max-waiting` belong in
//! [`ferrum_engine::EngineConfig`]; a full queue answers 503 with `Retry-After`):
//!
//! ```no_run
//! # fn make_runner() -> ferrum_engine::testing::FakeRunner { unimplemented!() }
//! use std::sync::Arc;
//! use ferrum_engine::{Engine, EngineConfig, EngineHandle};
//! use ferrum_server::{run, BannerInfo, Model, ModelCodec, ServerConfig};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let config = ServerConfig { api_key: None, ..ServerConfig::default() }; // 127.0.0.1:8080
//! run(config, move || {
//!     // Runs on a blocking thread while /health answers 503.
//!     let gguf = ferrum_model::gguf::GgufFile::open("model.gguf").map_err(|e| e.to_string())?;
//!     let codec = Arc::new(ModelCodec::from_gguf(&gguf).map_err(|e| e.to_string())?);
//!     let cfg = EngineConfig { eos_token_ids: codec.tokenizer.stop_ids(), ..EngineConfig::default() };
//!     let info = BannerInfo {
//!         model: "SmolLM2-135M-Instruct".into(),
//!         source: "model.gguf".into(),
//!         max_model_len: cfg.max_model_len,
//!         kv_blocks: cfg.num_blocks,
//!         block_size: cfg.block_size,
//!         addr: ServerConfig::default().addr, // replaced by the bound address
//!         threads: 4,
//!         api_key: false,
//!     };
//!     let model = Model {
//!         name: info.model.clone(),
//!         max_model_len: cfg.max_model_len,
//!         kv_capacity_tokens: cfg.num_blocks * cfg.block_size,
//!         shadow_sim: None,
//!         codec: codec.clone(),
//!         engine: EngineHandle::spawn(
//!             Engine::new(make_runner(), codec, cfg).map_err(|e| e.to_string())?,
//!         ),
//!     };
//!     Ok((model, info))
//! })
//! .await
//! # }
//! ```
//!
//! For finer control use [`Server::new`], [`Server::set_model`] and [`serve`] directly.
#![deny(missing_docs)]

mod api;
pub mod codec;
pub mod error;
mod format;
mod generate;
pub mod metrics;
pub mod openapi;
mod params;
pub mod programs;
pub mod routes;
pub mod shadow_sim;
mod sse;
pub mod state;
pub mod tenants;

use std::future::Future;
use std::net::SocketAddr;

pub use codec::{AsciiCodec, ChatTurn, CodecError, ModelCodec, TextCodec, ASCII_VOCAB};
pub use error::ApiError;
pub use programs::{ProgramTelemetry, TraceSink};
pub use routes::router;
pub use state::{AppState, Model, Server, ServerConfig};
pub use tenants::{Identity, Tenants};

/// Serves `server` on `listener` until `shutdown` resolves, then drains: stops accepting,
/// lets running requests finish for up to `drain_timeout`, cuts off the rest (which cancels
/// them in the engine), and shuts the engine down. Returns `Ok` after a clean drain.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = server.state.clone();
    let app = router(state.clone());
    let (drain_tx, mut drain_rx) = tokio::sync::watch::channel(false);
    let signal_state = state.clone();
    let signal = async move {
        shutdown.await;
        signal_state.start_draining();
        tracing::info!("shutdown requested; draining running requests");
        let _ = drain_tx.send(true);
    };
    let mut task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
    });
    let result = tokio::select! {
        r = &mut task => Some(r),
        _ = drain_rx.wait_for(|d| *d) => None,
    };
    let result = match result {
        Some(r) => r,
        None => match tokio::time::timeout(state.config.drain_timeout, &mut task).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(
                    "requests still running after {:?}; cutting them off",
                    state.config.drain_timeout
                );
                task.abort();
                Ok(Ok(()))
            }
        },
    };
    if let Some(model) = state.model().cloned() {
        let engine = model.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    }
    match result {
        Ok(r) => r,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(std::io::Error::other(e)),
    }
}

/// The whole `ferrum serve` lifecycle after flag parsing: binds `config.addr` (so `/health`
/// answers 503 "loading" at once), runs `load` on a blocking thread, prints the [`banner`],
/// installs the model, and serves until Ctrl-C / SIGTERM, then drains. A failed load stops
/// the server and is returned as an error.
pub async fn run<F>(config: ServerConfig, load: F) -> std::io::Result<()>
where
    F: FnOnce() -> Result<(Model, BannerInfo), String> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    let addr = listener.local_addr()?;
    let server = Server::new(config);
    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => {},
            _ = fail_rx => {},
        }
    };
    let serving = tokio::spawn(serve(listener, server.clone(), stop));
    tracing::info!("listening on http://{addr}; loading the model");
    let loaded = tokio::task::spawn_blocking(load)
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r.map_err(std::io::Error::other));
    match loaded {
        Ok((model, mut info)) => {
            info.addr = addr;
            info.api_key = server.state.config.api_key.is_some();
            println!("{}", banner(&info));
            server.set_model(model);
        }
        Err(e) => {
            let _ = fail_tx.send(());
            let _ = serving.await;
            return Err(e);
        }
    }
    serving.await.map_err(std::io::Error::other)?
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM, to pass to [`serve`].
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// What the startup banner shows.
#[derive(Debug, Clone)]
pub struct BannerInfo {
    /// Served model name.
    pub model: String,
    /// Model file path or source.
    pub source: String,
    /// Context length in tokens.
    pub max_model_len: usize,
    /// KV blocks in the pool.
    pub kv_blocks: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Listening address.
    pub addr: SocketAddr,
    /// Compute threads.
    pub threads: usize,
    /// Whether an API key is required.
    pub api_key: bool,
}

/// The multi-line startup banner printed by `ferrum serve`, so an operator sees at a glance
/// what is served, with which limits, and where.
pub fn banner(b: &BannerInfo) -> String {
    let kv_tokens = b.kv_blocks * b.block_size;
    format!(
        "ferrum {version} — OpenAI-compatible server\n\
         \x20 model      {model} ({source})\n\
         \x20 context    {ctx} tokens\n\
         \x20 KV cache   {blocks} blocks x {bs} tokens = {kv_tokens} tokens\n\
         \x20 threads    {threads}\n\
         \x20 auth       {auth}\n\
         \x20 listening  http://{addr}  (POST /v1/chat/completions, /v1/completions; GET /v1/models, /health, /metrics, /openapi.json)\n",
        version = env!("CARGO_PKG_VERSION"),
        model = b.model,
        source = b.source,
        ctx = b.max_model_len,
        blocks = b.kv_blocks,
        bs = b.block_size,
        threads = b.threads,
        auth = if b.api_key { "API key required" } else { "none" },
        addr = b.addr,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_shows_model_capacity_and_address() {
        let s = banner(&BannerInfo {
            model: "smol".into(),
            source: "/m.gguf".into(),
            max_model_len: 8192,
            kv_blocks: 100,
            block_size: 16,
            addr: ServerConfig::default().addr,
            threads: 4,
            api_key: false,
        });
        assert!(s.contains("smol"));
        assert!(s.contains("1600 tokens"));
        assert!(s.contains("http://127.0.0.1:8080"));
        assert!(s.contains("threads    4"));
    }
}
