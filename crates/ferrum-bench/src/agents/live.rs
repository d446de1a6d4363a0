//! `ferrum bench agents` against a live server: every agent of the [`super::workload`] runs
//! on its own thread, sending each turn as a streamed `/v1/completions` request whose prompt
//! is the whole history, naming its program (`X-Program-Id`) and the tool it calls next
//! (`X-Program-Tool`), then sleeping for the tool's duration. After its last turn an agent
//! ends its program (`DELETE /v1/programs/{id}`), as a well-behaved agent framework would.
//!
//! Measured per turn: TTFT, prompt and cached tokens (`usage.prompt_tokens_details`), and the
//! *re-prefilled* tokens: of the previous turn's context (prompt + output), what the server
//! did not serve from its cache. Per program: job completion time (first send to last
//! answer, tool time included). Retention counters come from `/metrics`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::workload::AgentPlan;
use crate::serve::sse::{SseDecoder, SseEvent, StreamRecorder};
use crate::{BenchError, Result};

/// Connection settings.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Server base URL (`http://127.0.0.1:8080`).
    pub url: String,
    /// Model name (`None`: the first of `/v1/models`).
    pub model: Option<String>,
    /// Tokens generated per turn.
    pub output_len: usize,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// One measured turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveTurn {
    /// Seconds from the run start to sending.
    pub sent_s: f64,
    /// Time to first token.
    pub ttft_s: f64,
    /// Send to last byte.
    pub e2e_s: f64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Cached prompt tokens.
    pub cached_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Previous context tokens recomputed (0 on a first turn).
    pub reprefill_tokens: u64,
    /// Whether the tool call before this turn was short (`None` on a first turn).
    pub after_short: Option<bool>,
}

/// One agent's run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveProgram {
    /// Program id.
    pub id: String,
    /// Job completion time: first send to last answer.
    pub jct_s: f64,
    /// Its turns.
    pub turns: Vec<LiveTurn>,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// A run's summary (one policy).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveReport {
    /// Mean job completion time.
    pub mean_jct_s: f64,
    /// Mean TTFT over turns.
    pub mean_ttft_s: f64,
    /// Re-prefilled tokens over all turns.
    pub reprefill_tokens: u64,
    /// Re-prefilled tokens of turns that followed a short tool call.
    pub reprefill_tokens_short: u64,
    /// Re-prefilled tokens of turns that followed a long tool call.
    pub reprefill_tokens_long: u64,
    /// Cached share of prompt tokens.
    pub hit_rate: f64,
    /// Prompt and cached tokens.
    pub prompt_tokens: u64,
    /// Cached prompt tokens.
    pub cached_tokens: u64,
    /// Pinned KV over the run, block-seconds (from `/metrics`).
    pub pinned_block_seconds: f64,
    /// Shadow mode: prompt tokens `ttl` is predicted to serve from the cache (from
    /// `/metrics`), to compare with `ttl`'s live `cached_tokens`.
    pub shadow_hit_tokens: f64,
    /// Shadow mode: the predicted hit rate (`shadow_hit_tokens` over the program prompt
    /// tokens the server counted), to compare with `ttl`'s live `hit_rate`.
    pub shadow_predicted_hit_rate: f64,
    /// Shadow mode: `ttl`'s cached prompt tokens with the server's recorded program turns
    /// replayed under `ttl` (`ferrum_retention_shadow_sim_cached_tokens`), the prediction to
    /// compare with `ttl`'s live `cached_tokens`.
    pub shadow_sim_hit_tokens: f64,
    /// Shadow mode: that replay's hit rate.
    pub shadow_sim_hit_rate: f64,
    /// Shadow mode: that replay's mean job completion time, to compare with `ttl`'s live one.
    pub shadow_sim_mean_jct_s: f64,
    /// Shadow mode: the same turns replayed under `lru`, to compare with this run's own
    /// `cached_tokens` (how far the simulation is from the live server).
    pub shadow_sim_lru_hit_tokens: f64,
    /// Every `ferrum_retention_*` and `ferrum_preemptions*` series of `/metrics`, as its
    /// change over the run (pins taken, expired, reclaimed; returns pinned or not).
    pub retention: Vec<(String, f64)>,
    /// Wall time of the run.
    pub wall_s: f64,
    /// Turns that failed.
    pub errors: usize,
    /// Per program.
    pub programs: Vec<LiveProgram>,
}

impl LiveReport {
    /// The JSON object `--json` prints per policy.
    pub fn to_json(&self) -> Value {
        json!({
            "mean_jct_s": self.mean_jct_s,
            "mean_ttft_s": self.mean_ttft_s,
            "reprefill_tokens": self.reprefill_tokens,
            "reprefill_tokens_short": self.reprefill_tokens_short,
            "reprefill_tokens_long": self.reprefill_tokens_long,
            "hit_rate": self.hit_rate,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "pinned_block_seconds": self.pinned_block_seconds,
            "shadow_hit_tokens": self.shadow_hit_tokens,
            "shadow_predicted_hit_rate": self.shadow_predicted_hit_rate,
            "shadow_sim_hit_tokens": self.shadow_sim_hit_tokens,
            "shadow_sim_hit_rate": self.shadow_sim_hit_rate,
            "shadow_sim_mean_jct_s": self.shadow_sim_mean_jct_s,
            "shadow_sim_lru_hit_tokens": self.shadow_sim_lru_hit_tokens,
            "wall_s": self.wall_s,
            "retention": self.retention.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "errors": self.errors,
            "programs": self.programs.iter().map(|p| json!({
                "id": p.id,
                "jct_s": p.jct_s,
                "ttft_s": p.turns.iter().map(|t| t.ttft_s).collect::<Vec<_>>(),
                "reprefill_tokens": p.turns.iter().map(|t| t.reprefill_tokens).collect::<Vec<_>>(),
                "error": p.error,
            })).collect::<Vec<_>>(),
        })
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

fn base(url: &str) -> String {
    let u = url.trim_end_matches('/');
    u.strip_suffix("/v1").unwrap_or(u).to_string()
}

/// `GET /metrics` as name (with labels) -> value.
pub fn scrape_metrics(url: &str) -> Result<HashMap<String, f64>> {
    let u = format!("{}/metrics", base(url));
    let mut resp = agent(Duration::from_secs(30))
        .get(&u)
        .call()
        .map_err(|e| BenchError::Server(format!("GET {u}: {e}")))?;
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| BenchError::Server(format!("GET {u}: {e}")))?;
    Ok(parse_metrics(&text))
}

/// Parses Prometheus text (comments skipped; unparsable values ignored).
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Whether the server answers `GET /health` with 200.
pub fn healthy(url: &str) -> bool {
    agent(Duration::from_secs(2))
        .get(format!("{}/health", base(url)))
        .call()
        .is_ok_and(|r| r.status().as_u16() == 200)
}

fn first_model(a: &ureq::Agent, base: &str) -> Result<String> {
    let u = format!("{base}/v1/models");
    let mut resp = a
        .get(&u)
        .call()
        .map_err(|e| BenchError::Server(format!("GET {u}: {e}")))?;
    let v: Value = resp
        .body_mut()
        .read_json()
        .map_err(|e| BenchError::Server(format!("GET {u}: {e}")))?;
    v["data"][0]["id"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| BenchError::Server(format!("{u} lists no model")))
}

struct Turn<'a> {
    program: &'a str,
    tool: Option<&'a str>,
    prompt: &'a str,
}

fn send(
    a: &ureq::Agent,
    base: &str,
    model: &str,
    max_tokens: usize,
    t: &Turn<'_>,
) -> std::result::Result<(StreamRecorder, f64), String> {
    let body = json!({
        "model": model,
        "prompt": t.prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let mut req = a
        .post(format!("{base}/v1/completions"))
        .header("X-Program-Id", t.program);
    if let Some(tool) = t.tool {
        req = req.header("X-Program-Tool", tool);
    }
    let sent = Instant::now();
    let mut resp = req.send_json(&body).map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    if status != 200 {
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        return Err(format!(
            "HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    let mut reader = BufReader::new(resp.into_body().into_reader());
    let (mut dec, mut rec, mut line) = (SseDecoder::new(), StreamRecorder::new(), String::new());
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let ev = if n == 0 {
            dec.finish()
        } else {
            dec.push_line(line.trim_end_matches('\n'))
        };
        if let Some(ev) = ev {
            rec.record(&ev, sent.elapsed().as_secs_f64())?;
            if ev == SseEvent::Done {
                break;
            }
        }
        if n == 0 {
            break;
        }
    }
    Ok((rec, sent.elapsed().as_secs_f64()))
}

fn run_agent(
    a: &ureq::Agent,
    base: &str,
    model: &str,
    cfg: &LiveConfig,
    plan: &AgentPlan,
    start: Instant,
) -> LiveProgram {
    let mut prog = LiveProgram {
        id: plan.id.clone(),
        ..LiveProgram::default()
    };
    let mut history = plan.task.clone();
    let first = Instant::now();
    let mut prev_ctx = 0u64;
    for k in 0..=plan.calls.len() {
        let call = plan.calls.get(k);
        let turn = Turn {
            program: &plan.id,
            tool: call.map(|c| c.tool),
            prompt: &history,
        };
        let sent_s = start.elapsed().as_secs_f64();
        let (rec, e2e_s) = match send(a, base, model, cfg.output_len, &turn) {
            Ok(r) => r,
            Err(e) => {
                prog.error = Some(format!("turn {k}: {e}"));
                break;
            }
        };
        let prompt = rec.usage_prompt_tokens.unwrap_or(0);
        let cached = rec.usage_cached_tokens.unwrap_or(0);
        let output = rec.output_tokens();
        prog.turns.push(LiveTurn {
            sent_s,
            ttft_s: rec.first_token_s.unwrap_or(e2e_s),
            e2e_s,
            prompt_tokens: prompt,
            cached_tokens: cached,
            output_tokens: output,
            reprefill_tokens: if k == 0 {
                0
            } else {
                prev_ctx.min(prompt).saturating_sub(cached)
            },
            after_short: k.checked_sub(1).map(|j| plan.calls[j].short),
        });
        prev_ctx = prompt + output;
        history.push_str(&rec.text);
        let Some(call) = call else { break };
        std::thread::sleep(Duration::from_secs_f64(call.duration_s));
        history.push_str(&format!("\n[{} result]\n{}\n", call.tool, call.result));
    }
    prog.jct_s = first.elapsed().as_secs_f64();
    let _ = a.delete(format!("{base}/v1/programs/{}", plan.id)).call();
    prog
}

/// Longest wait, after a run, for shadow mode's simulation to cover the run's turns.
const SHADOW_SIM_WAIT: Duration = Duration::from_secs(300);

/// Runs every agent of `plans` concurrently against `cfg.url`; retention counters are the
/// `/metrics` deltas over the run.
pub fn run_live(cfg: &LiveConfig, plans: &[AgentPlan]) -> Result<LiveReport> {
    let base = base(&cfg.url);
    let a = agent(cfg.timeout);
    let model = match &cfg.model {
        Some(m) => m.clone(),
        None => first_model(&a, &base)?,
    };
    let before = scrape_metrics(&base)?;
    let start = Instant::now();
    let programs: Vec<LiveProgram> = std::thread::scope(|s| {
        let handles: Vec<_> = plans
            .iter()
            .map(|p| {
                let (a, base, model) = (&a, &base, &model);
                s.spawn(move || run_agent(a, base, model, cfg, p, start))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let wall_s = start.elapsed().as_secs_f64();
    let mut after = scrape_metrics(&base)?;
    // Shadow mode simulates the served turns in the background: wait until it covers them all.
    let waiting = Instant::now();
    while after.get("ferrum_retention_shadow_sim_pending") == Some(&1.0)
        && waiting.elapsed() < SHADOW_SIM_WAIT
    {
        std::thread::sleep(Duration::from_millis(200));
        after = scrape_metrics(&base)?;
    }
    let delta =
        |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let mut r = summarize(programs);
    r.wall_s = wall_s;
    r.pinned_block_seconds = delta("ferrum_retention_pinned_block_seconds_total");
    r.shadow_hit_tokens = delta("ferrum_retention_shadow_hit_tokens_total");
    r.shadow_predicted_hit_rate = shadow_rate(
        r.shadow_hit_tokens,
        delta("ferrum_retention_shadow_prompt_tokens_total"),
    );
    // Gauges over the server's recorded turns (absent unless the server is in shadow mode).
    let sim = |policy: &str, k: &str| {
        let key = format!("ferrum_retention_shadow_sim_{k}{{policy=\"{policy}\"}}");
        after.get(&key).copied().unwrap_or(0.0)
    };
    r.shadow_sim_hit_tokens = sim("ttl", "cached_tokens");
    r.shadow_sim_hit_rate = sim("ttl", "hit_rate");
    r.shadow_sim_mean_jct_s = sim("ttl", "mean_jct_seconds");
    r.shadow_sim_lru_hit_tokens = sim("lru", "cached_tokens");
    let mut keys: Vec<&String> = after
        .keys()
        .filter(|k| k.starts_with("ferrum_retention_") || k.starts_with("ferrum_preemptions"))
        .collect();
    keys.sort();
    r.retention = keys.into_iter().map(|k| (k.clone(), delta(k))).collect();
    Ok(r)
}

/// Predicted hit rate from the shadow counters' deltas (0 when shadow mode saw no turn).
pub fn shadow_rate(hit_tokens: f64, prompt_tokens: f64) -> f64 {
    if prompt_tokens > 0.0 {
        hit_tokens / prompt_tokens
    } else {
        0.0
    }
}

/// Aggregates per-program results.
pub fn summarize(programs: Vec<LiveProgram>) -> LiveReport {
    let mut r = LiveReport::default();
    let (mut ttft, mut turns) = (0.0, 0usize);
    for p in &programs {
        r.errors += usize::from(p.error.is_some());
        r.mean_jct_s += p.jct_s;
        for t in &p.turns {
            turns += 1;
            ttft += t.ttft_s;
            r.prompt_tokens += t.prompt_tokens;
            r.cached_tokens += t.cached_tokens;
            r.reprefill_tokens += t.reprefill_tokens;
            match t.after_short {
                Some(true) => r.reprefill_tokens_short += t.reprefill_tokens,
                Some(false) => r.reprefill_tokens_long += t.reprefill_tokens,
                None => {}
            }
        }
    }
    r.mean_jct_s /= programs.len().max(1) as f64;
    r.mean_ttft_s = ttft / turns.max(1) as f64;
    r.hit_rate = r.cached_tokens as f64 / r.prompt_tokens.max(1) as f64;
    r.programs = programs;
    r
}

#[cfg(test)]
mod tests;
