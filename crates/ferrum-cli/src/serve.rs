//! `ferrum serve`: the engine on the default (or a given) model behind the OpenAI-compatible
//! HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use ferrum_engine::{
    parse_bytes, Engine, EngineConfig, EngineHandle, FairPolicy, Fcfs, KvBudget, SchedulingPolicy,
};
use ferrum_model::gguf::GgufFile;
use ferrum_model::llama::{LlamaModel, LlamaRunner};
use ferrum_server::shadow_sim::ShadowSim;
use ferrum_server::{BannerInfo, Model, ModelCodec, ServerConfig, Tenants};

use crate::load::ModelArgs;

/// Arguments of `ferrum serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1 routes.
    #[arg(long, env = "FERRUM_API_KEY")]
    api_key: Option<String>,
    /// Name the model is served under (default: the file's stem).
    #[arg(long)]
    served_model_name: Option<String>,
    /// KV cache size in tokens across all requests.
    #[arg(long, conflicts_with = "kv_cache_mem")]
    kv_cache_tokens: Option<usize>,
    /// KV cache size in bytes (e.g. 512MiB, 2GB).
    #[arg(long)]
    kv_cache_mem: Option<String>,
    /// Most tokens computed in one engine step (prefill chunks share it with decodes).
    #[arg(long, default_value_t = 512)]
    max_batched_tokens: usize,
    /// Most sequences running at once.
    #[arg(long, default_value_t = 64)]
    max_running: usize,
    /// Most requests waiting; beyond it requests get 503 with Retry-After.
    #[arg(long, default_value_t = 1024)]
    max_waiting: usize,
    /// Longest prompt + completion in tokens (default: the model's context).
    #[arg(long)]
    max_model_len: Option<usize>,
    /// Turn the radix-tree prefix cache off.
    #[arg(long)]
    no_prefix_cache: bool,
    /// What happens to an agent program's KV between turns: lru (plain prefix-cache LRU),
    /// ttl (pinned for a TTL predicted per tool), pin-all (pinned until it returns).
    #[arg(long, default_value = "lru")]
    kv_retention: ferrum_engine::KvRetention,
    /// Most of the KV pool (0..=1) agent programs may hold pinned.
    #[arg(long, default_value_t = 0.5)]
    max_pinned_fraction: f64,
    /// With --kv-retention lru, predict what ttl would deliver: virtual pins, and the served
    /// program turns replayed under ttl (`ferrum_retention_shadow_sim_*` on /metrics).
    #[arg(long)]
    kv_retention_shadow: bool,
    /// Tenants file (TOML): API keys per tenant, weights, limits, public prefixes; turns on
    /// the hierarchical fairness policy and per-tenant prefix-cache partitions.
    #[arg(long)]
    tenants: Option<std::path::PathBuf>,
    #[command(flatten)]
    spec: crate::spec_args::SpecArgs,
    /// Write one JSON line per finished agent-program turn to FILE (for `ferrum replay`;
    /// format in docs/agents.md).
    #[arg(long, value_name = "FILE")]
    trace_out: Option<std::path::PathBuf>,
    /// Seconds a shutdown waits for running requests.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let addr: SocketAddr = format!("{}:{}", a.host, a.port)
        .parse()
        .with_context(|| format!("invalid address {}:{}", a.host, a.port))?;
    // Fetch before binding, so a missing model is reported (with its progress bar) up front.
    let path = a.model.path()?;
    let budget = match (&a.kv_cache_mem, a.kv_cache_tokens) {
        (Some(m), _) => KvBudget::Bytes(parse_bytes(m)?),
        (None, Some(t)) => KvBudget::Tokens(t),
        (None, None) => KvBudget::Tokens(65_536),
    };
    let tenants = match &a.tenants {
        Some(p) => Some(Arc::new(Tenants::load(p).map_err(anyhow::Error::msg)?)),
        None => None,
    };
    let trace = match &a.trace_out {
        Some(p) => Some(
            ferrum_server::TraceSink::create(p)
                .with_context(|| format!("creating the trace file {}", p.display()))?,
        ),
        None => None,
    };
    let config = ServerConfig {
        addr,
        trace,
        api_key: a.api_key.clone(),
        tenants: tenants.clone(),
        drain_timeout: Duration::from_secs(a.drain_timeout),
        ..ServerConfig::default()
    };
    let threads = a.model.threads;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(ferrum_server::run(config, move || {
        load(&a, &path, budget, threads, tenants.as_deref())
    }))
    .context("serving")?;
    Ok(())
}

fn load(
    a: &ServeArgs,
    path: &std::path::Path,
    budget: KvBudget,
    threads: usize,
    tenants: Option<&Tenants>,
) -> Result<(Model, BannerInfo), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let file = Arc::new(GgufFile::open(path).map_err(|e| err(&e))?);
    let codec = Arc::new(ModelCodec::from_gguf(&file).map_err(|e| err(&e))?);
    let numerics = a.model.numerics.into();
    let model = Arc::new(LlamaModel::load_with(file, numerics).map_err(|e| err(&e))?);
    let (mut cfg, cap) = EngineConfig::for_model(&model.config, budget, codec.tokenizer.stop_ids())
        .map_err(|e| e.to_string())?;
    cfg.max_batched_tokens = a.max_batched_tokens;
    cfg.max_running = a.max_running;
    cfg.max_waiting = a.max_waiting;
    cfg.enable_prefix_cache = !a.no_prefix_cache;
    let draft = a.spec.apply(&mut cfg).map_err(|e| e.to_string())?;
    cfg.retention.policy = a.kv_retention;
    cfg.retention.max_pinned_fraction = a.max_pinned_fraction.clamp(0.0, 1.0);
    cfg.retention.shadow = a.kv_retention_shadow;
    if let Some(m) = a.max_model_len {
        cfg.max_model_len = m.min(model.config.context_length);
    }
    let runner = LlamaRunner::new(Arc::clone(&model), cap.num_blocks, cap.block_size, threads)
        .map_err(|e| e.to_string())?;
    let n_threads = runner.n_threads();
    let kernels = runner.kernels().name();
    let name = a.served_model_name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
    });
    let policy: Box<dyn SchedulingPolicy> = match tenants {
        Some(t) => {
            cfg.cache_salt_by_tenant = true;
            cfg.public_prefixes = t.public_prefixes(&*codec)?;
            Box::new(FairPolicy::new(t.fair_config()))
        }
        None => Box::new(Fcfs),
    };
    let mut engine = Engine::with_policy(runner, codec.clone(), cfg.clone(), policy)
        .map_err(|e| e.to_string())?;
    if let Some(path) = draft {
        let d = a
            .spec
            .drafter(&path, model.config.vocab_size, threads)
            .map_err(|e| format!("{e:#}"))?;
        engine.set_external_drafter(Box::new(d));
    }
    let numerics = model.numerics;
    tracing::info!(%cap, kernels, ?numerics, "engine ready");
    eprintln!("{cap}; {kernels} kernels, {numerics:?} numerics");
    let info = BannerInfo {
        model: name.clone(),
        source: path.display().to_string(),
        max_model_len: cfg.max_model_len,
        kv_blocks: cfg.num_blocks,
        block_size: cfg.block_size,
        addr: a.model_addr(),
        threads: n_threads,
        api_key: a.api_key.is_some(),
    };
    let model = Model {
        name,
        max_model_len: cfg.max_model_len,
        kv_capacity_tokens: cfg.num_blocks * cfg.block_size,
        shadow_sim: ShadowSim::for_engine(&cfg),
        codec,
        engine: EngineHandle::spawn(engine),
    };
    Ok((model, info))
}

impl ServeArgs {
    fn model_addr(&self) -> SocketAddr {
        format!("{}:{}", self.host, self.port)
            .parse()
            .unwrap_or_else(|_| ServerConfig::default().addr)
    }
}
