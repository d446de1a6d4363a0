//! `ferrum bench agents`: tool-using agents against a live server, per KV retention policy.
//!
//! The retention policy is a server flag, so comparing policies needs one server per policy.
//! With `--serve-args`, the benchmark starts `ferrum serve --kv-retention P ...` itself (this
//! binary, on `--port`) for each policy in turn, waits for `/health`, runs the agents, and
//! stops it, so every policy starts from an empty cache. Without it, the agents run once
//! against the server at `--url`, labelled with the single `--policy` given.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use ferrum_bench::agents::live::{healthy, run_live, LiveConfig, LiveReport};
use ferrum_bench::agents::workload::{plan, AgentSpec};

/// Arguments of `ferrum bench agents`.
#[derive(Args, Debug)]
pub struct AgentsArgs {
    /// Server URL (ignored with --serve-args, which starts its own on --port).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent agents.
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// Model turns per agent.
    #[arg(long, default_value_t = 8)]
    turns: usize,
    /// Multiplier on tool durations (short 0.2-2 s, long 10-60 s).
    #[arg(long, default_value_t = 0.1)]
    time_scale: f64,
    /// Probability that a tool call is short.
    #[arg(long, default_value_t = 0.7)]
    short_prob: f64,
    /// Words of each agent's task.
    #[arg(long, default_value_t = 300)]
    task_words: usize,
    /// Words of each tool result.
    #[arg(long, default_value_t = 100)]
    result_words: usize,
    /// Tokens generated per turn.
    #[arg(long, default_value_t = 32)]
    output_len: usize,
    /// Workload seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Policies to compare, in order: lru, ttl, pin-all, shadow (lru with the predictor in
    /// shadow mode).
    #[arg(long, value_delimiter = ',', default_value = "lru,ttl")]
    policy: Vec<String>,
    /// Start `ferrum serve` per policy with these extra arguments (e.g. "--kv-cache-tokens
    /// 8192 --threads 2").
    #[arg(long, allow_hyphen_values = true)]
    serve_args: Option<String>,
    /// Port of the servers --serve-args starts.
    #[arg(long, default_value_t = 8181)]
    port: u16,
    /// With --serve-args, write each server's program trace to DIR/trace-POLICY.jsonl.
    #[arg(long)]
    trace_dir: Option<PathBuf>,
    /// Repeat the policy list this many times (A B A B ...) and report medians.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Print one JSON object keyed by policy.
    #[arg(long)]
    json: bool,
}

fn retention_flags(policy: &str) -> Result<Vec<&'static str>> {
    Ok(match policy {
        "lru" => vec!["--kv-retention", "lru"],
        "ttl" => vec!["--kv-retention", "ttl"],
        "pin-all" => vec!["--kv-retention", "pin-all"],
        "shadow" => vec!["--kv-retention", "lru", "--kv-retention-shadow"],
        _ => bail!("unknown policy {policy:?} (lru, ttl, pin-all, shadow)"),
    })
}

/// A server this benchmark started; stopped (killed and reaped) when dropped.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(a: &AgentsArgs, policy: &str, extra: &str, run: usize) -> Result<Spawned> {
    let exe = std::env::current_exe().context("locating the ferrum binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .args(["--port", &a.port.to_string()])
        .args(retention_flags(policy)?)
        .args(extra.split_whitespace());
    if let Some(dir) = &a.trace_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        cmd.arg("--trace-out")
            .arg(dir.join(format!("trace-{policy}-{run}.jsonl")));
    }
    let mut child = Spawned(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ferrum serve")?,
    );
    let url = format!("http://127.0.0.1:{}", a.port);
    let start = Instant::now();
    while !healthy(&url) {
        if let Some(status) = child.0.try_wait()? {
            bail!("ferrum serve exited ({status}) before it was healthy");
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("ferrum serve was not healthy after 600 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(child)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// Runs `ferrum bench agents`.
pub fn run(a: AgentsArgs) -> Result<()> {
    if a.serve_args.is_none() && a.policy.len() != 1 {
        bail!("without --serve-args the server's policy is fixed: give one --policy");
    }
    for p in &a.policy {
        retention_flags(p)?;
    }
    let spec = AgentSpec {
        agents: a.agents,
        turns: a.turns,
        time_scale: a.time_scale,
        short_prob: a.short_prob,
        task_words: a.task_words,
        result_words: a.result_words,
        output_len: a.output_len,
        seed: a.seed,
    };
    let plans = plan(&spec)?;
    let mut results: Vec<(String, Vec<LiveReport>)> =
        a.policy.iter().map(|p| (p.clone(), Vec::new())).collect();
    for run in 0..a.repeat.max(1) {
        for (policy, reports) in results.iter_mut() {
            let (_server, url) = match &a.serve_args {
                Some(extra) => (
                    Some(spawn(&a, policy, extra, run)?),
                    format!("http://127.0.0.1:{}", a.port),
                ),
                None => (None, a.url.clone()),
            };
            let cfg = LiveConfig {
                url,
                model: None,
                output_len: a.output_len,
                timeout: Duration::from_secs(600),
            };
            let r = run_live(&cfg, &plans)?;
            // With --json every run's report still goes to stderr, so runs can be recorded.
            let text = report_text(policy, &r);
            if a.json {
                eprint!("{text}");
            } else {
                print!("{text}");
            }
            reports.push(r);
        }
    }
    if a.json {
        let mut out = serde_json::Map::new();
        for (policy, reports) in &results {
            let med = |f: fn(&LiveReport) -> f64| median(reports.iter().map(f).collect());
            // The run with the median JCT, with every field medianed across runs.
            let mut v = reports
                .iter()
                .min_by(|x, y| {
                    let m = med(|r| r.mean_jct_s);
                    (x.mean_jct_s - m)
                        .abs()
                        .total_cmp(&(y.mean_jct_s - m).abs())
                })
                .map(LiveReport::to_json)
                .unwrap_or_default();
            v["mean_jct_s"] = med(|r| r.mean_jct_s).into();
            v["mean_ttft_s"] = med(|r| r.mean_ttft_s).into();
            v["reprefill_tokens"] = med(|r| r.reprefill_tokens as f64).into();
            v["reprefill_tokens_short"] = med(|r| r.reprefill_tokens_short as f64).into();
            v["reprefill_tokens_long"] = med(|r| r.reprefill_tokens_long as f64).into();
            v["hit_rate"] = med(|r| r.hit_rate).into();
            v["pinned_block_seconds"] = med(|r| r.pinned_block_seconds).into();
            v["shadow_hit_tokens"] = med(|r| r.shadow_hit_tokens).into();
            v["shadow_predicted_hit_rate"] = med(|r| r.shadow_predicted_hit_rate).into();
            v["shadow_sim_hit_tokens"] = med(|r| r.shadow_sim_hit_tokens).into();
            v["shadow_sim_hit_rate"] = med(|r| r.shadow_sim_hit_rate).into();
            v["shadow_sim_mean_jct_s"] = med(|r| r.shadow_sim_mean_jct_s).into();
            v["shadow_sim_lru_hit_tokens"] = med(|r| r.shadow_sim_lru_hit_tokens).into();
            v["cached_tokens"] = med(|r| r.cached_tokens as f64).into();
            v["runs"] = reports.len().into();
            v["runs_mean_jct_s"] = reports
                .iter()
                .map(|r| r.mean_jct_s)
                .collect::<Vec<_>>()
                .into();
            out.insert(policy.clone(), v);
        }
        println!("{}", serde_json::Value::Object(out));
    }
    Ok(())
}

fn report_text(policy: &str, r: &LiveReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "== {policy}: mean JCT {:.2} s, mean TTFT {:.3} s, hit rate {:.1}% ({} cached tokens), re-prefilled {} tokens ({} after short tools, {} after long), pinned {:.1} block-s, shadow: {} hit tokens, predicted hit rate {:.1}%, simulated ttl {} hit tokens ({:.1}%, JCT {:.2} s; lru {}), {} errors, wall {:.1} s",
        r.mean_jct_s,
        r.mean_ttft_s,
        100.0 * r.hit_rate,
        r.cached_tokens,
        r.reprefill_tokens,
        r.reprefill_tokens_short,
        r.reprefill_tokens_long,
        r.pinned_block_seconds,
        r.shadow_hit_tokens,
        100.0 * r.shadow_predicted_hit_rate,
        r.shadow_sim_hit_tokens,
        100.0 * r.shadow_sim_hit_rate,
        r.shadow_sim_mean_jct_s,
        r.shadow_sim_lru_hit_tokens,
        r.errors,
        r.wall_s
    );
    let counters: Vec<String> = r
        .retention
        .iter()
        .filter(|(_, v)| *v != 0.0)
        .map(|(k, v)| format!("{}={v}", k.trim_start_matches("ferrum_")))
        .collect();
    let _ = writeln!(out, "  counters: {}", counters.join(" "));
    for p in &r.programs {
        let ttft: Vec<String> = p.turns.iter().map(|t| format!("{:.2}", t.ttft_s)).collect();
        let re: Vec<String> = p
            .turns
            .iter()
            .map(|t| t.reprefill_tokens.to_string())
            .collect();
        let _ = writeln!(
            out,
            "  {:<14} JCT {:>7.2} s  TTFT/turn [{}]  re-prefill/turn [{}]{}",
            p.id,
            p.jct_s,
            ttft.join(" "),
            re.join(" "),
            p.error
                .as_deref()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
    }
    out
}
