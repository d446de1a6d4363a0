//! The offline benchmark: every request is queued at once and the synchronous engine is stepped
//! until all finish, so the number measures the engine's batching, not a client or network.
//!
//! Counters come from [`ferrum_engine::Engine::stats`] deltas over the timed run, so an engine
//! that already served requests (a warm-up) still reports only this run.

use std::time::Instant;

use ferrum_engine::{Engine, Event, FinishReason, ModelRunner, Request, RequestId};
use serde::Serialize;

use crate::{BenchError, BenchRequest, Result};

/// How requests are generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineOptions {
    /// Keep generating past EOS so every request produces exactly its `output_len` tokens
    /// (the usual throughput setting; without it outputs may end early).
    pub ignore_eos: bool,
    /// Run one tiny request first, untimed, so page faults and thread start-up are not
    /// counted.
    pub warmup: bool,
}

impl Default for OfflineOptions {
    fn default() -> Self {
        OfflineOptions {
            ignore_eos: true,
            warmup: true,
        }
    }
}

/// Results of one offline run (serialized for `--json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OfflineReport {
    /// Requests completed.
    pub requests: usize,
    /// Wall time of the run in seconds.
    pub elapsed_s: f64,
    /// Prompt tokens over all requests.
    pub input_tokens: u64,
    /// Generated tokens over all requests.
    pub output_tokens: u64,
    /// Requests per second.
    pub requests_per_s: f64,
    /// Prompt tokens per second (cached or not).
    pub input_tokens_per_s: f64,
    /// Generated tokens per second.
    pub output_tokens_per_s: f64,
    /// (Prompt + generated) tokens per second.
    pub total_tokens_per_s: f64,
    /// Prompt positions actually computed (re-computation after preemption included).
    pub prefill_tokens_computed: u64,
    /// Prompt tokens served from the prefix cache.
    pub cache_hit_tokens: u64,
    /// `cache_hit_tokens / input_tokens`.
    pub cache_hit_rate: f64,
    /// Preemptions during the run.
    pub preemptions: u64,
    /// Forward passes.
    pub steps: u64,
    /// Mean sequences per forward pass.
    pub mean_batch_seqs: f64,
    /// Speculative decoding: drafts verified.
    pub spec_verifications: u64,
    /// Speculative decoding: drafted tokens verified.
    pub spec_drafted: u64,
    /// Speculative decoding: drafted tokens accepted.
    pub spec_accepted: u64,
    /// Mean time from the run's start to each request's first token (queueing included).
    pub ttft_mean_s: f64,
    /// Tokens after each request's first over the time between its first and last token,
    /// summed over requests: the generation speed without prompt processing, as llama.cpp
    /// reports it (`predicted_per_second`, llama-bench `tg`). At `--max-running 1` it is the
    /// single-stream decode speed that speculative decoding changes.
    pub decode_tokens_per_s: f64,
}

/// First and last token times and token count of one request.
#[derive(Clone, Copy)]
struct TokenTimes {
    first: Instant,
    last: Instant,
    tokens: u64,
}

fn per_s(x: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        x / secs
    } else {
        0.0
    }
}

fn request(r: &BenchRequest, opts: &OfflineOptions) -> Request {
    let mut req = Request::new(r.prompt.clone(), r.output_len);
    req.ignore_eos = opts.ignore_eos;
    req
}

fn warm_up<R: ModelRunner>(engine: &mut Engine<R>, first: &BenchRequest) -> Result<()> {
    let prompt = first.prompt.iter().copied().take(1).collect();
    engine
        .submit(Request::new(prompt, 2))
        .map_err(|source| BenchError::Submit { index: 0, source })?;
    while engine.has_work() {
        engine.step();
    }
    engine.drain_events();
    Ok(())
}

/// Runs `reqs` through `engine` (all queued at once) and reports throughput. `progress` is
/// called after each step with (finished requests, generated tokens) so far. A request the
/// engine refuses or that fails in the model is an error naming its index.
pub fn run_offline<R: ModelRunner>(
    engine: &mut Engine<R>,
    reqs: &[BenchRequest],
    opts: &OfflineOptions,
    mut progress: impl FnMut(usize, u64),
) -> Result<OfflineReport> {
    if let (true, Some(first)) = (opts.warmup, reqs.first()) {
        warm_up(engine, first)?;
    }
    let before = engine.stats();
    let start = Instant::now();
    let mut index_of = std::collections::HashMap::<RequestId, usize>::with_capacity(reqs.len());
    for (index, r) in reqs.iter().enumerate() {
        let id = engine
            .submit(request(r, opts))
            .map_err(|source| BenchError::Submit { index, source })?;
        index_of.insert(id, index);
    }
    let (mut finished, mut output_tokens, mut seqs) = (0usize, 0u64, 0u64);
    let mut times = std::collections::HashMap::<RequestId, TokenTimes>::with_capacity(reqs.len());
    while engine.has_work() {
        seqs += engine.step().seqs as u64;
        let now = Instant::now();
        for (id, ev) in engine.drain_events() {
            match ev {
                Event::Token { .. } => {
                    output_tokens += 1;
                    let t = times.entry(id).or_insert(TokenTimes {
                        first: now,
                        last: now,
                        tokens: 0,
                    });
                    t.last = now;
                    t.tokens += 1;
                }
                Event::Finished {
                    reason: FinishReason::Error(msg),
                    ..
                } => {
                    let index = index_of.get(&id).copied().unwrap_or(usize::MAX);
                    return Err(BenchError::Failed { index, msg });
                }
                Event::Finished { .. } => finished += 1,
            }
        }
        progress(finished, output_tokens);
    }
    let secs = start.elapsed().as_secs_f64();
    let after = engine.stats();
    let input_tokens: u64 = reqs.iter().map(|r| r.prompt.len() as u64).sum();
    let cache_hit_tokens = after.cache_hit_tokens - before.cache_hit_tokens;
    let steps = after.steps - before.steps;
    let (sb, sa) = (before.spec.sum(), after.spec.sum());
    let ttft_sum: f64 = times
        .values()
        .map(|t| (t.first - start).as_secs_f64())
        .sum();
    let decode_tokens: u64 = times.values().map(|t| t.tokens - 1).sum();
    let decode_secs: f64 = times
        .values()
        .map(|t| (t.last - t.first).as_secs_f64())
        .sum();
    Ok(OfflineReport {
        requests: finished,
        elapsed_s: secs,
        input_tokens,
        output_tokens,
        requests_per_s: per_s(finished as f64, secs),
        input_tokens_per_s: per_s(input_tokens as f64, secs),
        output_tokens_per_s: per_s(output_tokens as f64, secs),
        total_tokens_per_s: per_s((input_tokens + output_tokens) as f64, secs),
        prefill_tokens_computed: after.prefill_tokens - before.prefill_tokens,
        cache_hit_tokens,
        cache_hit_rate: if input_tokens > 0 {
            cache_hit_tokens as f64 / input_tokens as f64
        } else {
            0.0
        },
        preemptions: after.preemptions - before.preemptions,
        steps,
        mean_batch_seqs: if steps > 0 {
            seqs as f64 / steps as f64
        } else {
            0.0
        },
        spec_verifications: sa.verifications - sb.verifications,
        spec_drafted: sa.drafted - sb.drafted,
        spec_accepted: sa.accepted - sb.accepted,
        ttft_mean_s: ttft_sum / times.len().max(1) as f64,
        decode_tokens_per_s: per_s(decode_tokens as f64, decode_secs),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ferrum_engine::testing::{FakeRunner, FakeText};
    use ferrum_engine::EngineConfig;

    use super::*;
    use crate::synthetic::{shared_prefix, SharedPrefixSpec};

    fn engine(prefix_cache: bool, max_running: usize) -> Engine<FakeRunner> {
        let cfg = EngineConfig {
            num_blocks: 256,
            max_running,
            enable_prefix_cache: prefix_cache,
            eos_token_ids: vec![1],
            ..EngineConfig::default()
        };
        let runner = FakeRunner::new(200, cfg.num_blocks, cfg.block_size);
        Engine::new(runner, Arc::new(FakeText::new(200)), cfg).unwrap()
    }

    fn workload() -> Vec<BenchRequest> {
        shared_prefix(&SharedPrefixSpec {
            groups: 2,
            prompts_per_group: 5,
            prefix_len: 64,
            suffix_len: 5,
            output_len: 7,
            vocab: 200,
            exclude: vec![1],
            seed: 3,
        })
        .unwrap()
    }

    #[test]
    fn counts_every_token_and_request_with_eos_ignored() {
        let reqs = workload();
        let mut calls = 0;
        let rep = run_offline(
            &mut engine(true, 4),
            &reqs,
            &OfflineOptions::default(),
            |_, _| calls += 1,
        )
        .unwrap();
        assert_eq!(rep.requests, 10);
        assert_eq!(rep.output_tokens, 70);
        assert_eq!(rep.input_tokens, 690);
        assert!(calls > 0);
        assert!(rep.steps > 0 && rep.mean_batch_seqs > 1.0, "{rep:?}");
        assert!(rep.output_tokens_per_s > 0.0);
    }

    #[test]
    fn decode_speed_leaves_out_each_first_token() {
        let reqs = workload();
        let rep = run_offline(
            &mut engine(true, 1),
            &reqs,
            &OfflineOptions::default(),
            |_, _| {},
        )
        .unwrap();
        // One request at a time: the 10 decode spans (6 tokens each after the first) do not
        // overlap and lie inside the run, and the run also holds the 10 prefills.
        assert_eq!(rep.output_tokens, 70);
        assert!(rep.decode_tokens_per_s >= 60.0 / rep.elapsed_s, "{rep:?}");
        assert!(
            rep.ttft_mean_s > 0.0 && rep.ttft_mean_s <= rep.elapsed_s,
            "{rep:?}"
        );
    }

    #[test]
    fn prefix_cache_cuts_prefill_and_counts_hits() {
        let reqs = workload();
        let opts = OfflineOptions {
            ignore_eos: true,
            warmup: false,
        };
        let on = run_offline(&mut engine(true, 1), &reqs, &opts, |_, _| {}).unwrap();
        let off = run_offline(&mut engine(false, 1), &reqs, &opts, |_, _| {}).unwrap();
        assert_eq!(off.cache_hit_tokens, 0);
        assert_eq!(off.prefill_tokens_computed, 690);
        // 4 of each group's 5 prompts reuse the 64-token (4-block) prefix.
        assert_eq!(on.cache_hit_tokens, 2 * 4 * 64);
        assert_eq!(on.prefill_tokens_computed, 690 - 2 * 4 * 64);
        assert!((on.cache_hit_rate - 512.0 / 690.0).abs() < 1e-9);
    }

    #[test]
    fn warmup_is_not_counted() {
        let reqs = workload();
        let rep = run_offline(
            &mut engine(true, 8),
            &reqs,
            &OfflineOptions::default(),
            |_, _| {},
        )
        .unwrap();
        assert_eq!(rep.output_tokens, 70);
        assert!(rep.prefill_tokens_computed <= 690);
    }

    #[test]
    fn refused_request_is_an_error_naming_it() {
        let mut reqs = workload();
        reqs[3].prompt.clear();
        let err = run_offline(
            &mut engine(true, 4),
            &reqs,
            &OfflineOptions::default(),
            |_, _| {},
        )
        .unwrap_err();
        assert!(matches!(err, BenchError::Submit { index: 3, .. }), "{err}");
    }

    #[test]
    fn model_failure_is_an_error() {
        let cfg = EngineConfig {
            num_blocks: 256,
            ..EngineConfig::default()
        };
        let mut runner = FakeRunner::new(200, cfg.num_blocks, cfg.block_size);
        runner.fail_next = true;
        let mut eng = Engine::new(runner, Arc::new(FakeText::new(200)), cfg).unwrap();
        let opts = OfflineOptions {
            ignore_eos: true,
            warmup: false,
        };
        let err = run_offline(&mut eng, &workload(), &opts, |_, _| {}).unwrap_err();
        assert!(matches!(err, BenchError::Failed { index: 0, .. }), "{err}");
    }
}
