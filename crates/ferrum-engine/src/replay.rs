//! A recorded agent-program trace simulated against the real KV-cache machinery: what
//! `ferrum replay` prints, and what shadow mode predicts `ttl` would deliver.
//!
//! The simulation runs the real [`Engine`] (scheduler, block pool, radix
//! cache, retention policy and gap predictor) on [`FakeRunner`], which computes no model,
//! under a manual [`Clock`]. Each engine step advances the clock by a cost model of the
//! measured CPU speeds ([`CostModel`]): prefill tokens at `prefill_tps`, plus, when the step
//! decodes, a fixed step time and a per-sequence time. So TTL expiry, pin reclaim under
//! pressure and program-FCFS admission behave as live, in simulated seconds.
//!
//! Programs are closed loops, as agents are: a program's first turn arrives at its recorded
//! time; each later turn arrives its recorded gap (the tool's duration) after the
//! *simulated* end of the turn before, so a policy that makes turns faster makes programs
//! finish sooner. Turn `k`'s prompt is turn `k - 1`'s prompt and generated tokens (the
//! history, as the agent resends it) padded with fresh tokens (the tool result) to the
//! recorded prompt length, so prefix-cache hits depend only on what the cache still holds.
//! A program the trace shows ended (`DELETE /v1/programs/{id}`) is released the same time
//! after its simulated last finish, so its pin does not outlive it as it did not live.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::rng::SplitMix64;
use crate::testing::{FakeRunner, FakeText};
use crate::{
    Clock, Engine, EngineConfig, Event, KvRetention, Request, RequestId, RetentionConfig,
    SubmitError,
};

pub mod trace;

use trace::TraceProgram;

/// Why a trace could not be read or simulated.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A trace line is not the documented JSON shape.
    #[error("malformed trace: {0}")]
    Trace(String),
    /// The trace or the settings cannot be simulated (a turn larger than the pool, ...).
    #[error("cannot replay: {0}")]
    Invalid(String),
    /// The engine refused a turn.
    #[error("turn of program {index} was refused: {source}")]
    Submit {
        /// Index of the program in the trace.
        index: usize,
        /// The engine's reason.
        source: SubmitError,
    },
}

/// Result of reading or simulating a trace.
pub type Result<T> = std::result::Result<T, ReplayError>;

/// Step time of the simulated CPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Prompt tokens computed per second.
    pub prefill_tps: f64,
    /// Seconds of a step that decodes (weights streamed once per step).
    pub decode_step_s: f64,
    /// Extra seconds per decoding sequence in a step.
    pub decode_seq_s: f64,
}

impl Default for CostModel {
    /// SmolLM2-135M Q4_1 on 2 EPYC threads (AVX2), idle box (docs/benchmarks.md: prompt
    /// processing 244 tok/s, decode 70 tok/s at batch 1).
    fn default() -> Self {
        CostModel {
            prefill_tps: 240.0,
            decode_step_s: 0.014,
            decode_seq_s: 0.002,
        }
    }
}

impl CostModel {
    /// This model with the prefill speed the trace itself shows, if it shows one: the live
    /// engine works whenever a turn is in the system, so the union of the turns' [arrival,
    /// finish] intervals is its busy time, and what the decode steps of the generated
    /// tokens (at most one step each) do not explain of it went to the tokens it prefilled
    /// (prompt minus cached). A trace from a loaded or slower machine thus replays at its
    /// own speed instead of the idle default.
    pub fn fitted_to(&self, programs: &[TraceProgram]) -> Option<CostModel> {
        let mut spans: Vec<(f64, f64)> = programs
            .iter()
            .flat_map(|p| &p.turns)
            .map(|t| (t.arrival_s, t.finish_s.max(t.arrival_s)))
            .collect();
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut busy = 0.0;
        let mut open: Option<(f64, f64)> = None;
        for (a, b) in spans {
            open = match open {
                Some((s, e)) if a <= e => Some((s, e.max(b))),
                Some((s, e)) => {
                    busy += e - s;
                    Some((a, b))
                }
                None => Some((a, b)),
            };
        }
        busy += open.map_or(0.0, |(s, e)| e - s);
        let turns = programs.iter().flat_map(|p| &p.turns);
        let prefilled: usize = turns
            .clone()
            .map(|t| t.prompt_tokens.saturating_sub(t.cached_tokens))
            .sum();
        let generated: usize = turns.map(|t| t.output_tokens).sum();
        let decode = generated as f64 * (self.decode_step_s + self.decode_seq_s);
        // Decode cannot explain more than 90% of the busy time, so a trace whose
        // decode estimate overshoots still gives a finite speed.
        let prefill_s = (busy - decode).max(0.1 * busy);
        (prefilled > 0 && prefill_s > 0.0).then(|| CostModel {
            prefill_tps: prefilled as f64 / prefill_s,
            ..*self
        })
    }

    /// Seconds one step takes.
    pub fn step_s(&self, prefill_tokens: u64, decode_seqs: u64) -> f64 {
        let prefill = prefill_tokens as f64 / self.prefill_tps.max(1e-9);
        let decode = if decode_seqs > 0 {
            self.decode_step_s + decode_seqs as f64 * self.decode_seq_s
        } else {
            0.0
        };
        prefill + decode
    }
}

/// Simulation settings.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// Retention policy to simulate.
    pub policy: KvRetention,
    /// With `Lru`: run the predictor in shadow mode (the report's
    /// `retention.shadow_hit_tokens` is then the predicted `ttl` hits).
    pub shadow: bool,
    /// KV pool size in tokens.
    pub kv_cache_tokens: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Token budget per step.
    pub max_batched_tokens: usize,
    /// Most running sequences.
    pub max_running: usize,
    /// Pin cap (share of the pool).
    pub max_pinned_fraction: f64,
    /// Step times.
    pub cost: CostModel,
    /// Seed of the fresh tokens.
    pub seed: u64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            policy: KvRetention::Lru,
            shadow: false,
            kv_cache_tokens: 65_536,
            block_size: 16,
            max_batched_tokens: 512,
            max_running: 64,
            max_pinned_fraction: 0.5,
            cost: CostModel::default(),
            seed: 0,
        }
    }
}

impl ReplayConfig {
    /// The simulation of an engine configured as `cfg` (its retention policy, pool, step
    /// budget, running cap, pin cap): what shadow mode replays, per policy, on the server's
    /// own settings.
    pub fn for_engine(cfg: &EngineConfig) -> Self {
        ReplayConfig {
            policy: cfg.retention.policy,
            shadow: false,
            kv_cache_tokens: cfg.num_blocks * cfg.block_size,
            block_size: cfg.block_size,
            max_batched_tokens: cfg.max_batched_tokens,
            max_running: cfg.max_running,
            max_pinned_fraction: cfg.retention.max_pinned_fraction,
            ..ReplayConfig::default()
        }
    }
}

/// One simulated turn.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SimTurn {
    /// Arrival, simulated seconds.
    pub arrival_s: f64,
    /// Time to first token.
    pub ttft_s: f64,
    /// Finish, simulated seconds.
    pub finish_s: f64,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens served from the cache.
    pub cached_tokens: usize,
    /// History tokens (earlier prompt + output) recomputed because they were not cached.
    pub reprefill_tokens: usize,
}

/// What a replay measured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplayReport {
    /// Policy simulated.
    pub policy: String,
    /// Programs and turns.
    pub programs: usize,
    /// Turns simulated.
    pub turns: usize,
    /// Sum of prompt tokens.
    pub prompt_tokens: u64,
    /// Sum of cached prompt tokens.
    pub cached_tokens: u64,
    /// Cached share of prompt tokens.
    pub hit_rate: f64,
    /// History tokens recomputed.
    pub reprefill_tokens: u64,
    /// Re-prefilled tokens by the tool waited on before the turn (`""`: none named).
    pub reprefill_by_tool: Vec<(String, u64)>,
    /// Pinned KV over time, block-seconds.
    pub pinned_block_seconds: f64,
    /// Mean program completion time (first arrival to last finish), simulated seconds.
    pub mean_jct_s: f64,
    /// Mean time to first token over turns.
    pub mean_ttft_s: f64,
    /// The trace's own (live) hit rate, for comparison when the policy is the recorded one.
    pub trace_hit_rate: f64,
    /// The trace's own mean program completion time.
    pub trace_mean_jct_s: f64,
    /// The retention module's counters at the end (pins, expiries, reclaims, returns).
    pub retention: crate::RetentionCounters,
    /// Preemptions.
    pub preemptions: u64,
    /// Per program, its turns.
    pub per_program: Vec<(String, Vec<SimTurn>)>,
}

struct ProgState {
    next_turn: usize,
    next_arrival: Option<f64>,
    history: Vec<u32>,
    rng: SplitMix64,
    turns: Vec<SimTurn>,
    /// When to end the program (release its KV), once its last turn has finished.
    release_at: Option<f64>,
}

/// A submitted turn: program index, arrival, first token time, prompt, generated tokens.
type InFlight = (usize, f64, Option<f64>, Vec<u32>, Vec<u32>);

/// Token ids drawn for fresh text (small vocab: the fake model's logits rows stay cheap).
const VOCAB: usize = 512;

/// Simulates `programs` under `cfg`; see the module docs.
pub fn replay(programs: &[TraceProgram], cfg: &ReplayConfig) -> Result<ReplayReport> {
    let bs = cfg.block_size.max(1);
    let num_blocks = (cfg.kv_cache_tokens / bs).max(1);
    let longest = programs
        .iter()
        .flat_map(|p| &p.turns)
        .map(|t| t.prompt_tokens + t.output_tokens.max(1))
        .max()
        .unwrap_or(1);
    if longest.div_ceil(bs) > num_blocks {
        return Err(ReplayError::Invalid(format!(
            "a turn needs {longest} tokens but the pool holds {}",
            num_blocks * bs
        )));
    }
    let ecfg = EngineConfig {
        block_size: bs,
        num_blocks,
        max_batched_tokens: cfg.max_batched_tokens.max(1),
        max_running: cfg.max_running.max(1),
        max_model_len: longest + 1,
        retention: RetentionConfig {
            policy: cfg.policy,
            max_pinned_fraction: cfg.max_pinned_fraction,
            shadow: cfg.shadow,
            ..RetentionConfig::default()
        },
        ..EngineConfig::default()
    };
    let runner = FakeRunner::new(VOCAB, num_blocks, bs);
    let mut engine = Engine::new(runner, Arc::new(FakeText::new(VOCAB)), ecfg)
        .map_err(|e| ReplayError::Invalid(e.to_string()))?;
    let clock = Clock::manual();
    engine.set_clock(clock.clone());

    let t0 = programs
        .iter()
        .filter_map(|p| p.turns.first())
        .map(|t| t.arrival_s)
        .fold(f64::INFINITY, f64::min);
    let mut states: Vec<ProgState> = programs
        .iter()
        .enumerate()
        .map(|(i, p)| ProgState {
            next_turn: 0,
            next_arrival: p.turns.first().map(|t| t.arrival_s - t0),
            history: Vec::new(),
            rng: SplitMix64::new(cfg.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            turns: Vec::new(),
            release_at: None,
        })
        .collect();
    let mut inflight: HashMap<RequestId, InFlight> = HashMap::new();
    let mut now = 0.0f64;
    let mut idle_steps = 0u32;
    loop {
        // End the programs due, as their agents did with DELETE.
        for (s, p) in states.iter_mut().zip(programs) {
            if s.release_at.is_some_and(|t| t <= now) {
                s.release_at = None;
                engine.release_program(&p.id);
            }
        }
        // Submit every turn due by now, oldest first.
        let mut due: Vec<(f64, usize)> = states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.next_arrival.filter(|a| *a <= now).map(|a| (a, i)))
            .collect();
        due.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (arrival, i) in due {
            let s = &mut states[i];
            s.next_arrival = None;
            let p = &programs[i];
            let t = &p.turns[s.next_turn];
            let shared = s.history.len().min(t.prompt_tokens);
            let mut prompt = s.history[..shared].to_vec();
            while prompt.len() < t.prompt_tokens.max(1) {
                prompt.push(s.rng.range_inclusive(1, VOCAB as u64 - 1) as u32);
            }
            let mut req = Request::new(prompt.clone(), t.output_tokens.max(1));
            req.ignore_eos = true;
            req.program = Some(p.id.clone());
            req.tool = t.tool.clone();
            let id = engine.submit(req).map_err(|e| ReplayError::Submit {
                index: i,
                source: e,
            })?;
            inflight.insert(id, (i, arrival, None, prompt, Vec::new()));
        }
        if !engine.has_work() {
            let next = states
                .iter()
                .flat_map(|s| [s.next_arrival, s.release_at])
                .flatten()
                .fold(f64::INFINITY, f64::min);
            if !next.is_finite() {
                break;
            }
            clock.advance(Duration::from_secs_f64((next - now).max(0.0)));
            now = now.max(next);
            continue;
        }
        let before = engine.stats();
        let step = engine.step();
        let after = engine.stats();
        let prefill = after.prefill_tokens - before.prefill_tokens;
        let decode_seqs = step.sampled as u64;
        let mut dt = cfg.cost.step_s(prefill, decode_seqs.min(step.seqs as u64));
        if step.tokens == 0 {
            idle_steps += 1;
            if idle_steps > 1_000_000 {
                return Err(ReplayError::Invalid(
                    "the simulation made no progress".into(),
                ));
            }
            dt = dt.max(0.001);
        } else {
            idle_steps = 0;
        }
        now += dt;
        clock.advance(Duration::from_secs_f64(dt));
        for (id, ev) in engine.drain_events() {
            let Some(f) = inflight.get_mut(&id) else {
                continue;
            };
            match ev {
                Event::Token { id: tok, .. } => {
                    f.2.get_or_insert(now);
                    f.4.push(tok);
                }
                Event::Finished { usage, .. } => {
                    let Some((i, arrival, first, prompt, generated)) = inflight.remove(&id) else {
                        continue;
                    };
                    let s = &mut states[i];
                    let p = &programs[i];
                    let reprefill = if s.next_turn == 0 {
                        0
                    } else {
                        s.history
                            .len()
                            .min(usage.prompt_tokens)
                            .saturating_sub(usage.cached_tokens)
                    };
                    s.turns.push(SimTurn {
                        arrival_s: arrival,
                        ttft_s: first.unwrap_or(now) - arrival,
                        finish_s: now,
                        prompt_tokens: usage.prompt_tokens,
                        cached_tokens: usage.cached_tokens,
                        reprefill_tokens: reprefill,
                    });
                    s.history = prompt;
                    s.history.extend_from_slice(&generated);
                    s.next_turn += 1;
                    if let Some(t) = p.turns.get(s.next_turn) {
                        let prev = &p.turns[s.next_turn - 1];
                        let gap = t.gap_s.unwrap_or(t.arrival_s - prev.finish_s).max(0.0);
                        s.next_arrival = Some(now + gap);
                    } else if let Some(after) = p.end_after_s {
                        s.release_at = Some(now + after);
                    }
                }
            }
        }
    }
    let stats = engine.stats();
    let mut r = report(
        programs,
        states,
        cfg.policy,
        stats.retention.pinned_block_us,
    );
    if cfg.shadow && cfg.policy == KvRetention::Lru {
        r.policy = "shadow".to_string();
    }
    r.retention = stats.retention;
    r.preemptions = stats.preemptions;
    Ok(r)
}

fn report(
    programs: &[TraceProgram],
    states: Vec<ProgState>,
    policy: KvRetention,
    pinned_block_us: u64,
) -> ReplayReport {
    let mut r = ReplayReport {
        policy: policy.name().to_string(),
        programs: programs.len(),
        pinned_block_seconds: pinned_block_us as f64 / 1e6,
        ..ReplayReport::default()
    };
    let mut by_tool: HashMap<String, u64> = HashMap::new();
    let (mut jct, mut ttft, mut trace_jct) = (0.0, 0.0, 0.0);
    let (mut trace_prompt, mut trace_cached) = (0u64, 0u64);
    for (p, s) in programs.iter().zip(states) {
        for (k, t) in s.turns.iter().enumerate() {
            r.turns += 1;
            r.prompt_tokens += t.prompt_tokens as u64;
            r.cached_tokens += t.cached_tokens as u64;
            r.reprefill_tokens += t.reprefill_tokens as u64;
            ttft += t.ttft_s;
            if k > 0 {
                let tool = p.turns[k - 1].tool.clone().unwrap_or_default();
                *by_tool.entry(tool).or_default() += t.reprefill_tokens as u64;
            }
        }
        if let (Some(a), Some(b)) = (s.turns.first(), s.turns.last()) {
            jct += b.finish_s - a.arrival_s;
        }
        if let (Some(a), Some(b)) = (p.turns.first(), p.turns.last()) {
            trace_jct += b.finish_s - a.arrival_s;
        }
        for t in &p.turns {
            trace_prompt += t.prompt_tokens as u64;
            trace_cached += t.cached_tokens as u64;
        }
        r.per_program.push((p.id.clone(), s.turns));
    }
    let n = programs.len().max(1) as f64;
    r.mean_jct_s = jct / n;
    r.trace_mean_jct_s = trace_jct / n;
    r.mean_ttft_s = ttft / r.turns.max(1) as f64;
    r.hit_rate = r.cached_tokens as f64 / r.prompt_tokens.max(1) as f64;
    r.trace_hit_rate = trace_cached as f64 / trace_prompt.max(1) as f64;
    let mut tools: Vec<(String, u64)> = by_tool.into_iter().collect();
    tools.sort();
    r.reprefill_by_tool = tools;
    r
}

#[cfg(test)]
mod tests;
