//! `ferrum bench fairness`: scripted closed-loop clients against the in-process engine on
//! the real model, once with the fairness policy and once with FCFS, side by side.

use std::sync::Arc;

use anyhow::{anyhow, Result};
use clap::Args;
use ferrum_engine::fair::scenario::{Scenario, Summary};
use ferrum_engine::fair::sim;
use ferrum_engine::{
    Engine, EngineConfig, FairConfig, FairPolicy, Fcfs, KvBudget, SchedulingPolicy,
};
use ferrum_model::llama::LlamaRunner;

use crate::load::ModelArgs;

/// Arguments of `ferrum bench fairness`.
#[derive(Args, Debug)]
pub struct FairnessArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// heavy-vs-light | weights | hierarchy | late-joiner
    #[arg(long, default_value = "heavy-vs-light")]
    scenario: String,
    /// Engine steps per run.
    #[arg(long, default_value_t = 240)]
    steps: u64,
    /// Most requests running at once.
    #[arg(long, default_value_t = 8)]
    max_running: usize,
    /// Token budget of one step.
    #[arg(long, default_value_t = 24)]
    max_batched_tokens: usize,
    /// Steps per time window of the per-window shares (default: the measured interval in
    /// about six windows).
    #[arg(long)]
    window_steps: Option<u64>,
    /// Print `{"fair": {...}, "fcfs": {...}}` instead of a table.
    #[arg(long)]
    json: bool,
}

const COSTS: (f64, f64) = (1.0, 2.0);

fn run_one(a: &FairnessArgs, s: Scenario, policy: Box<dyn SchedulingPolicy>) -> Result<Summary> {
    let loaded = a.model.load()?;
    let (base, _) = EngineConfig::for_model(
        &loaded.model.config,
        KvBudget::Tokens(8192),
        loaded.tokenizer.stop_ids(),
    )?;
    let cfg = EngineConfig {
        max_running: a.max_running,
        max_batched_tokens: a.max_batched_tokens,
        cache_salt_by_tenant: true,
        ..base
    };
    let runner = LlamaRunner::new(
        Arc::clone(&loaded.model),
        cfg.num_blocks,
        cfg.block_size,
        a.model.threads,
    )?;
    let mut engine = Engine::with_policy(runner, Arc::new(loaded.tokenizer), cfg, policy)?;
    let r = sim::run(
        &mut engine,
        &s.clients(a.steps),
        a.steps,
        COSTS,
        (300, 20_000),
    );
    let window = a
        .window_steps
        .unwrap_or_else(|| s.default_window_steps(a.steps));
    Ok(s.summarize_windows(&r, window))
}

fn print_table(s: Scenario, a: &FairnessArgs, fair: &Summary, fcfs: &Summary) {
    let (from, to) = s.window(a.steps);
    println!(
        "scenario {} — {} steps (shares over steps {from}..{to}), max_running {}, max_batched_tokens {}",
        s.name(),
        a.steps,
        a.max_running,
        a.max_batched_tokens
    );
    println!(
        "{:<10} | {:>7} {:>10} {:>10} | {:>7} {:>10} {:>10}",
        "client", "fair", "TTFT p50", "TTFT p99", "fcfs", "TTFT p50", "TTFT p99"
    );
    for (f, c) in fair.clients.iter().zip(&fcfs.clients) {
        println!(
            "{:<10} | {:>6.1}% {:>9.3}s {:>9.3}s | {:>6.1}% {:>9.3}s {:>9.3}s",
            f.name,
            100.0 * f.share,
            f.ttft_p50_s,
            f.ttft_p99_s,
            100.0 * c.share,
            c.ttft_p50_s,
            c.ttft_p99_s
        );
    }
    println!(
        "share by window of {} steps (fair share in brackets):",
        fair.window_steps
    );
    let pct = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{:5.1}", 100.0 * x))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (f, c) in fair.clients.iter().zip(&fcfs.clients) {
        println!(
            "{:<10} [{:5.1}%] | fair {} | fcfs {}",
            f.name,
            100.0 * f.fair_share,
            pct(&f.share_by_window),
            pct(&c.share_by_window)
        );
    }
    println!(
        "worst window deviation from the fair share: fair {:.1} points, fcfs {:.1} points",
        100.0 * fair.max_window_share_dev,
        100.0 * fcfs.max_window_share_dev
    );
    println!(
        "max service diff: fair {:.0}, fcfs {:.0} (bound {:.0}); Jain: fair {:.3}, fcfs {:.3}; output tok/s: fair {:.1}, fcfs {:.1}",
        fair.max_service_diff,
        fcfs.max_service_diff,
        s.service_diff_bound(a.max_running, COSTS),
        fair.jain,
        fcfs.jain,
        fair.output_tokens_per_s,
        fcfs.output_tokens_per_s
    );
}

/// Runs `ferrum bench fairness`.
pub fn run(a: FairnessArgs) -> Result<()> {
    let s = Scenario::parse(&a.scenario).ok_or_else(|| {
        anyhow!(
            "unknown scenario {:?}; one of heavy-vs-light, weights, hierarchy, late-joiner",
            a.scenario
        )
    })?;
    let policy = FairPolicy::new(FairConfig {
        tenants: s.tenants(),
        w_in: COSTS.0,
        w_out: COSTS.1,
    });
    let fair = run_one(&a, s, Box::new(policy))?;
    let fcfs = run_one(&a, s, Box::new(Fcfs))?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "scenario": s.name(), "fair": fair, "fcfs": fcfs })
        );
    } else {
        print_table(s, &a, &fair, &fcfs);
    }
    Ok(())
}
