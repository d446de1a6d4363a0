//! `ferrum replay TRACE.jsonl`: a recorded agent-program trace (`ferrum serve --trace-out`)
//! simulated under a KV retention policy, with no model forward (see
//! `ferrum_bench::agents::replay`), so policies are compared in seconds.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ferrum_bench::agents::replay::{replay, CostModel, ReplayConfig, ReplayReport};
use ferrum_bench::agents::trace::{parse_trace, programs};
use ferrum_engine::KvRetention;

/// Arguments of `ferrum replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The JSONL trace.
    trace: PathBuf,
    /// Policies to simulate (comma-separated): lru, ttl, pin-all, shadow (lru with the
    /// predictor in shadow mode: prints the hits ttl is predicted to deliver).
    #[arg(long, value_delimiter = ',', default_value = "lru,ttl")]
    policy: Vec<String>,
    /// Most sequences running at once (the server's --max-running).
    #[arg(long, default_value_t = 64)]
    max_running: usize,
    /// KV pool size in tokens (use the live server's to compare with it).
    #[arg(long, default_value_t = 65_536)]
    kv_cache_tokens: usize,
    /// Token budget of one step.
    #[arg(long, default_value_t = 512)]
    max_batched_tokens: usize,
    /// Most of the pool (0..=1) pinned at once.
    #[arg(long, default_value_t = 0.5)]
    max_pinned_fraction: f64,
    /// Cost model: prompt tokens computed per second (default: fitted to the trace, its
    /// prefilled tokens over the live server's busy time; else the idle 2-thread speed).
    #[arg(long)]
    prefill_tps: Option<f64>,
    /// Cost model: milliseconds of a decoding step.
    #[arg(long)]
    decode_step_ms: Option<f64>,
    /// Cost model: extra milliseconds per decoding sequence in a step.
    #[arg(long)]
    decode_seq_ms: Option<f64>,
    /// Print one JSON object keyed by policy.
    #[arg(long)]
    json: bool,
}

fn to_json(r: &ReplayReport) -> serde_json::Value {
    serde_json::json!({
        "programs": r.programs,
        "turns": r.turns,
        "prompt_tokens": r.prompt_tokens,
        "cached_tokens": r.cached_tokens,
        "hit_rate": r.hit_rate,
        "reprefill_tokens": r.reprefill_tokens,
        "reprefill_by_tool": r
            .reprefill_by_tool
            .iter()
            .map(|(t, n)| (t.clone(), serde_json::json!(n)))
            .collect::<serde_json::Map<_, _>>(),
        "pinned_block_seconds": r.pinned_block_seconds,
        "mean_jct_s": r.mean_jct_s,
        "mean_ttft_s": r.mean_ttft_s,
        "trace_hit_rate": r.trace_hit_rate,
        "trace_mean_jct_s": r.trace_mean_jct_s,
        "preemptions": r.preemptions,
        "pins": r.retention.pins,
        "reclaimed": r.retention.reclaimed,
        "shadow_hit_tokens": r.retention.shadow_hit_tokens,
        "shadow_predicted_hit_rate": r.retention.shadow_hit_tokens as f64
            / r.retention.shadow_prompt_tokens.max(1) as f64,
    })
}

/// Runs `ferrum replay`.
pub fn run(a: ReplayArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.trace)
        .with_context(|| format!("reading {}", a.trace.display()))?;
    let progs = programs(parse_trace(&text)?);
    let d = CostModel::default();
    let mut cost = CostModel {
        decode_step_s: a.decode_step_ms.map_or(d.decode_step_s, |m| m / 1e3),
        decode_seq_s: a.decode_seq_ms.map_or(d.decode_seq_s, |m| m / 1e3),
        ..d
    };
    let how = match a.prefill_tps {
        Some(tps) => {
            cost.prefill_tps = tps;
            "given"
        }
        None => match cost.fitted_to(&progs) {
            Some(fit) => {
                cost = fit;
                "fitted to the trace"
            }
            None => "default",
        },
    };
    eprintln!(
        "cost model: prefill {:.1} tok/s ({how}), decode step {:.1} ms + {:.1} ms per sequence",
        cost.prefill_tps,
        cost.decode_step_s * 1e3,
        cost.decode_seq_s * 1e3
    );
    let mut out = serde_json::Map::new();
    for name in &a.policy {
        let (policy, shadow) = match name.as_str() {
            "shadow" => (KvRetention::Lru, true),
            p => (p.parse::<KvRetention>().map_err(anyhow::Error::msg)?, false),
        };
        let cfg = ReplayConfig {
            policy,
            shadow,
            max_running: a.max_running,
            kv_cache_tokens: a.kv_cache_tokens,
            max_batched_tokens: a.max_batched_tokens,
            max_pinned_fraction: a.max_pinned_fraction,
            cost,
            ..ReplayConfig::default()
        };
        let r = replay(&progs, &cfg)?;
        if a.json {
            let mut j = to_json(&r);
            j["prefill_tps"] = serde_json::json!(cost.prefill_tps);
            out.insert(r.policy.clone(), j);
        } else {
            println!(
                "{:<8} hit rate {:5.1}% (trace {:5.1}%)  re-prefilled {:>8} tokens  pinned {:>9.1} block-s  mean JCT {:7.2} s (trace {:7.2} s)  mean TTFT {:.3} s",
                r.policy,
                100.0 * r.hit_rate,
                100.0 * r.trace_hit_rate,
                r.reprefill_tokens,
                r.pinned_block_seconds,
                r.mean_jct_s,
                r.trace_mean_jct_s,
                r.mean_ttft_s
            );
            let by: Vec<String> = r
                .reprefill_by_tool
                .iter()
                .map(|(t, n)| format!("{}={n}", if t.is_empty() { "-" } else { t }))
                .collect();
            println!("         re-prefilled after each tool: {}", by.join(" "));
            let c = &r.retention;
            println!(
                "         pins {} (skipped {}, expired {}, reclaimed {}, displaced {}), returns pinned {} / unpinned {}, preemptions {}",
                c.pins, c.skipped, c.expired, c.reclaimed, c.displaced, c.returns_pinned, c.returns_unpinned, r.preemptions
            );
            if shadow {
                println!(
                    "         shadow: predicted ttl hit tokens {} of {} (predicted hit rate {:.1}%), virtual pins {} (dropped {})",
                    c.shadow_hit_tokens,
                    c.shadow_prompt_tokens,
                    100.0 * c.shadow_hit_tokens as f64 / c.shadow_prompt_tokens.max(1) as f64,
                    c.shadow_pins,
                    c.shadow_dropped
                );
            }
        }
    }
    if a.json {
        println!("{}", serde_json::Value::Object(out));
    }
    Ok(())
}
