//! Engine behaviour tests with the fake runner: one workload across configurations.

use super::*;
use crate::testing::{FakeRunner, FakeText};
use crate::EngineHandle;

const VOCAB: usize = 90;

fn cfg(num_blocks: usize, cache: bool) -> EngineConfig {
    EngineConfig {
        block_size: 4,
        num_blocks,
        max_batched_tokens: 24,
        max_running: 8,
        enable_prefix_cache: cache,
        max_model_len: 256,
        ..EngineConfig::default()
    }
}

fn engine(cfg: EngineConfig) -> Engine<FakeRunner> {
    let runner = FakeRunner::new(VOCAB, cfg.num_blocks, cfg.block_size);
    Engine::new(runner, Arc::new(FakeText::new(VOCAB)), cfg).expect("valid config")
}

/// Deterministic pseudo-random prompt.
fn prompt(seed: u64, len: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % VOCAB as u64) as u32
        })
        .collect()
}

fn req(prompt: Vec<u32>, max_tokens: usize) -> Request {
    Request {
        ignore_eos: true,
        ..Request::new(prompt, max_tokens)
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    tokens: Vec<u32>,
    text: String,
    reason: FinishReason,
    usage: Usage,
}

/// Submits all requests, steps to completion checking invariants, returns outcomes in order.
fn run(e: &mut Engine<FakeRunner>, reqs: Vec<Request>) -> Vec<Outcome> {
    let ids: Vec<RequestId> = reqs
        .into_iter()
        .map(|r| e.submit(r).expect("request fits"))
        .collect();
    let mut outs: HashMap<RequestId, Outcome> = HashMap::new();
    let mut steps = 0;
    while e.has_work() {
        e.step();
        e.check_invariants()
            .expect("invariants hold after every step");
        steps += 1;
        assert!(steps < 10_000, "engine made no progress");
        collect(e.drain_events(), &mut outs);
    }
    collect(e.drain_events(), &mut outs);
    ids.iter()
        .map(|id| outs.remove(id).expect("finished"))
        .collect()
}

fn collect(events: Vec<(RequestId, Event)>, outs: &mut HashMap<RequestId, Outcome>) {
    for (id, ev) in events {
        let o = outs.entry(id).or_insert_with(|| Outcome {
            tokens: vec![],
            text: String::new(),
            reason: FinishReason::Cancelled,
            usage: Usage::default(),
        });
        match ev {
            Event::Token { id, text, .. } => {
                o.tokens.push(id);
                o.text.push_str(&text);
            }
            Event::Finished { reason, usage } => {
                o.reason = reason;
                o.usage = usage;
            }
        }
    }
}

fn alone(c: &EngineConfig, r: &Request) -> Outcome {
    let mut e = engine(EngineConfig {
        enable_prefix_cache: false,
        ..c.clone()
    });
    run(&mut e, vec![r.clone()]).remove(0)
}

fn mixed_workload(n: usize) -> Vec<Request> {
    let system = prompt(999, 13);
    (0..n)
        .map(|i| {
            let mut p = if i % 2 == 0 { system.clone() } else { vec![] };
            p.extend(prompt(i as u64, 1 + (i * 7) % 40));
            req(p, 1 + (i * 5) % 17)
        })
        .collect()
}

#[test]
fn greedy_outputs_identical_with_prefix_cache_on_and_off() {
    let reqs = mixed_workload(12);
    let mut results = Vec::new();
    for cache in [false, true] {
        let mut e = engine(cfg(256, cache));
        // Two rounds, so the second round can hit what the first cached.
        let mut out = run(&mut e, reqs.clone());
        out.extend(run(&mut e, reqs.clone()));
        for o in &mut out {
            o.usage.cached_tokens = 0;
        }
        results.push((out, e.stats()));
    }
    assert!(results[1].1.cache_hit_tokens > 0, "the cached run must hit");
    assert_eq!(results[0].1.cache_hit_tokens, 0);
    assert!(results[1].1.prefill_tokens < results[0].1.prefill_tokens);
    assert_eq!(results[0].0, results[1].0);
}

#[test]
fn batch_of_32_mixed_requests_matches_each_alone() {
    let c = EngineConfig {
        max_running: 16,
        max_batched_tokens: 40,
        ..cfg(512, true)
    };
    let reqs = mixed_workload(32);
    let want: Vec<Outcome> = reqs.iter().map(|r| alone(&c, r)).collect();
    let mut e = engine(c);
    let got = run(&mut e, reqs);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            (&g.tokens, &g.text, &g.reason),
            (&w.tokens, &w.text, &w.reason)
        );
    }
    assert!(
        e.stats().cache_hit_tokens > 0,
        "shared system prompt is reused"
    );
}

#[test]
fn second_turn_prefills_only_new_tokens() {
    let mut e = engine(cfg(128, true));
    let turn1 = prompt(1, 21);
    let out1 = run(&mut e, vec![req(turn1.clone(), 9)]).remove(0);
    let mut turn2 = turn1.clone();
    turn2.extend(&out1.tokens);
    turn2.extend(prompt(2, 6));
    let before = e.stats();
    let out2 = run(&mut e, vec![req(turn2.clone(), 5)]).remove(0);
    let after = e.stats();
    // Turn 1 computed every token but its last sampled one; full blocks of that are cached.
    let bs = e.config().block_size;
    let cached = (turn1.len() + out1.tokens.len() - 1) / bs * bs;
    assert_eq!(out2.usage.cached_tokens, cached);
    assert_eq!(
        after.cache_hit_tokens - before.cache_hit_tokens,
        cached as u64
    );
    assert_eq!(
        after.prefill_tokens - before.prefill_tokens,
        (turn2.len() - cached) as u64
    );
    assert_eq!(out2.tokens, alone(e.config(), &req(turn2, 5)).tokens);
}

#[test]
fn request_that_cannot_fit_alone_is_rejected_with_clear_error() {
    let mut e = engine(cfg(4, true)); // 4 blocks x 4 tokens = 16 KV positions
    let err = e.submit(req(prompt(1, 10), 8)).unwrap_err();
    assert_eq!(
        err,
        SubmitError::TooManyBlocks {
            needed: 5,
            available: 4
        }
    );
    assert!(err.to_string().contains("needs 5 KV blocks"));
    let err = e.submit(req(prompt(1, 200), 100)).unwrap_err();
    assert!(matches!(err, SubmitError::TooLong { .. }), "{err}");
    assert_eq!(e.submit(req(vec![], 3)), Err(SubmitError::EmptyPrompt));
    assert!(matches!(
        e.submit(req(vec![VOCAB as u32], 3)),
        Err(SubmitError::TokenOutOfRange { .. })
    ));
    // Exactly filling the pool is fine: 10 + 7 tokens, the last never computed.
    let out = run(&mut e, vec![req(prompt(1, 10), 7)]).remove(0);
    assert_eq!((out.tokens.len(), out.reason), (7, FinishReason::Length));
}

#[test]
fn tiny_pool_waits_and_preempts_and_outputs_match_alone() {
    for cache in [false, true] {
        let c = EngineConfig {
            max_batched_tokens: 64,
            ..cfg(12, cache)
        };
        let reqs: Vec<Request> = (0..8).map(|i| req(prompt(i, 9 + i as usize), 14)).collect();
        let want: Vec<Outcome> = reqs.iter().map(|r| alone(&c, r)).collect();
        let mut e = engine(c);
        let got = run(&mut e, reqs);
        assert!(
            e.stats().preemptions > 0,
            "the pool is too small to avoid preemption"
        );
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                (&g.tokens, &g.reason),
                (&w.tokens, &w.reason),
                "cache={cache}"
            );
        }
        let s = e.stats();
        assert_eq!(s.blocks_free, s.blocks_total - s.cached_blocks);
    }
}

#[test]
fn cancel_mid_stream_frees_all_unshared_blocks() {
    let mut e = engine(cfg(64, true));
    let start_free = e.stats().blocks_free;
    let id = e.submit(req(prompt(3, 30), 40)).unwrap();
    let other = e.submit(req(prompt(4, 7), 40)).unwrap();
    let mut tokens = 0;
    while tokens < 5 {
        e.step();
        tokens += e
            .drain_events()
            .iter()
            .filter(|(r, ev)| *r == id && matches!(ev, Event::Token { .. }))
            .count();
    }
    assert!(e.stats().blocks_free < start_free);
    assert!(e.cancel(id) && e.cancel(other));
    assert!(!e.cancel(id), "second cancel is a no-op");
    let evs = e.drain_events();
    assert!(evs.iter().any(|(r, ev)| *r == id
        && matches!(ev, Event::Finished { reason: FinishReason::Cancelled, usage } if usage.completion_tokens == 5)));
    let s = e.stats();
    assert_eq!((s.running, s.waiting), (0, 0));
    assert_eq!(s.blocks_free, start_free - s.cached_blocks);
    e.check_invariants().unwrap();
    assert!(!e.has_work());
}

/// Index of the first token that does not occur earlier in `tokens`, from position 2 on.
fn fresh_token_index(tokens: &[u32]) -> usize {
    (2..tokens.len())
        .find(|&k| !tokens[..k].contains(&tokens[k]))
        .expect("some later token is new")
}

#[test]
fn stop_token_ends_request_without_showing_it() {
    let c = cfg(64, true);
    let base = alone(&c, &req(prompt(5, 11), 30));
    let k = fresh_token_index(&base.tokens);
    let r = Request {
        stop_token_ids: vec![base.tokens[k]],
        ..req(prompt(5, 11), 30)
    };
    let out = alone(&c, &r);
    assert_eq!(out.reason, FinishReason::Stop);
    assert_eq!(out.tokens, base.tokens[..=k]);
    let text = FakeText::new(VOCAB);
    let shown: Vec<u8> = base.tokens[..k]
        .iter()
        .flat_map(|&t| text.token_bytes(t).to_vec())
        .collect();
    assert_eq!(out.text, String::from_utf8_lossy(&shown));
}

#[test]
fn stop_string_cuts_text_and_finishes() {
    let c = cfg(64, true);
    let base = alone(&c, &req(prompt(6, 11), 30));
    let chars: Vec<char> = base.text.chars().collect();
    let stop: String = chars[4..7].iter().collect();
    let r = Request {
        stop: vec![stop.clone()],
        ..req(prompt(6, 11), 30)
    };
    let out = alone(&c, &r);
    assert_eq!(out.reason, FinishReason::Stop);
    let cut = base.text.find(&stop).expect("stop occurs in the base text");
    assert_eq!(out.text, base.text[..cut]);
    assert!(out.tokens.len() < base.tokens.len());
}

#[test]
fn max_tokens_finishes_with_length() {
    let out = alone(&cfg(64, true), &req(prompt(7, 5), 6));
    assert_eq!((out.tokens.len(), out.reason), (6, FinishReason::Length));
    assert_eq!(out.usage.completion_tokens, 6);
    assert_eq!(out.usage.prompt_tokens, 5);
}

#[test]
fn eos_stops_unless_ignore_eos() {
    let base = alone(&cfg(64, true), &req(prompt(8, 9), 20));
    let k = fresh_token_index(&base.tokens);
    let c = EngineConfig {
        eos_token_ids: vec![base.tokens[k]],
        ..cfg(64, true)
    };
    let stopped = alone(
        &c,
        &Request {
            ignore_eos: false,
            ..req(prompt(8, 9), 20)
        },
    );
    assert_eq!(stopped.reason, FinishReason::Stop);
    assert_eq!(stopped.tokens, base.tokens[..=k]);
    let ignored = alone(&c, &req(prompt(8, 9), 20));
    assert_eq!(
        (ignored.tokens, ignored.reason),
        (base.tokens, FinishReason::Length)
    );
}

#[test]
fn logprobs_are_attached_only_when_asked() {
    let mut e = engine(cfg(64, true));
    let mut r = req(prompt(9, 5), 2);
    r.logprobs = true;
    r.params.top_logprobs = 3;
    e.submit(r).unwrap();
    e.submit(req(prompt(9, 5), 2)).unwrap();
    let mut seen = (0, 0);
    while e.has_work() {
        e.step();
        for (id, ev) in e.drain_events() {
            if let Event::Token {
                logprob, id: tok, ..
            } = ev
            {
                match (id.0, logprob) {
                    (0, Some(lp)) => {
                        assert_eq!(lp.top.len(), 3);
                        assert_eq!(lp.top[0].0, tok, "greedy token is the most likely");
                        assert!(lp.logprob <= 0.0);
                        seen.0 += 1;
                    }
                    (1, None) => seen.1 += 1,
                    other => panic!("unexpected logprob presence: {other:?}"),
                }
            }
        }
    }
    assert_eq!(seen, (2, 2));
}

#[test]
fn model_failure_finishes_batch_with_error_and_engine_recovers() {
    let mut e = engine(cfg(64, true));
    e.runner.fail_next = true;
    let out = run(&mut e, vec![req(prompt(10, 6), 3)]).remove(0);
    assert!(matches!(out.reason, FinishReason::Error(ref m) if m.contains("injected")));
    let s = e.stats();
    assert_eq!(s.blocks_free, s.blocks_total - s.cached_blocks);
    let out = run(&mut e, vec![req(prompt(10, 6), 3)]).remove(0);
    assert_eq!(out.reason, FinishReason::Length);
}

fn recv_all(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> Outcome {
    let mut outs = HashMap::new();
    let id = RequestId(0);
    while let Some(ev) = rx.blocking_recv() {
        collect(vec![(id, ev)], &mut outs);
    }
    outs.remove(&id).expect("events arrived")
}

#[test]
fn threaded_handle_serves_concurrent_clients_end_to_end() {
    let c = cfg(128, true);
    let reqs = mixed_workload(10);
    let want: Vec<Outcome> = reqs.iter().map(|r| alone(&c, r)).collect();
    let handle = EngineHandle::spawn(engine(c));
    let threads: Vec<_> = reqs
        .into_iter()
        .map(|r| {
            let h = handle.clone();
            std::thread::spawn(move || {
                let (_, rx) = h.submit(r).expect("accepted");
                recv_all(rx)
            })
        })
        .collect();
    for (t, w) in threads.into_iter().zip(&want) {
        let got = t.join().expect("client thread");
        assert_eq!(
            (&got.tokens, &got.text, &got.reason),
            (&w.tokens, &w.text, &w.reason)
        );
    }
    let err = handle.submit(req(vec![], 1)).unwrap_err();
    assert_eq!(err, SubmitError::EmptyPrompt);
    let s = handle.stats().expect("engine alive");
    assert_eq!((s.running, s.waiting), (0, 0));
    handle.shutdown();
    assert_eq!(
        handle.submit(req(vec![1], 1)).unwrap_err(),
        SubmitError::ShutDown
    );
    assert!(handle.stats().is_none());
}

/// A fake runner that waits for a permit (or 200 ms) before each forward pass, so a test
/// can act between steps without racing the loop thread.
struct Gated {
    inner: FakeRunner,
    permits: std::sync::mpsc::Receiver<()>,
}

impl ModelRunner for Gated {
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn forward(&mut self, batch: &Batch) -> Result<&[f32], EngineError> {
        let _ = self
            .permits
            .recv_timeout(std::time::Duration::from_millis(200));
        self.inner.forward(batch)
    }
}

#[test]
fn dropped_receiver_cancels_request() {
    let c = cfg(64, false);
    let (permit, permits) = std::sync::mpsc::channel();
    let inner = FakeRunner::new(VOCAB, c.num_blocks, c.block_size);
    let text = Arc::new(FakeText::new(VOCAB));
    let e = Engine::new(Gated { inner, permits }, text, c).unwrap();
    let handle = EngineHandle::spawn(e);
    let (_, rx) = handle.submit(req(prompt(11, 10), 240)).unwrap();
    drop(rx);
    for _ in 0..3 {
        permit.send(()).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let s = loop {
        let s = handle.stats().expect("engine alive");
        if s.running + s.waiting == 0 {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dropped request still running"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(s.decode_tokens < 20, "cancelled long before max_tokens");
    assert_eq!(s.blocks_free, s.blocks_total);

    // An explicit cancel through the handle ends the stream with Cancelled.
    let (id, mut rx) = handle.submit(req(prompt(12, 10), 240)).unwrap();
    permit.send(()).unwrap();
    assert!(matches!(rx.blocking_recv(), Some(Event::Token { .. })));
    handle.cancel(id);
    let last = std::iter::from_fn(|| rx.blocking_recv()).last();
    assert!(matches!(
        last,
        Some(Event::Finished {
            reason: FinishReason::Cancelled,
            ..
        })
    ));
    let s = handle.stats().unwrap();
    assert_eq!(
        (s.running, s.waiting, s.blocks_free),
        (0, 0, s.blocks_total)
    );
    handle.shutdown();
}

/// `n` requests sharing a `prefix`-token system prompt, each with its own 16-token suffix.
fn shared_prefix_burst(n: usize, prefix: usize) -> Vec<Request> {
    let system = prompt(4242, prefix);
    (0..n)
        .map(|i| {
            let mut p = system.clone();
            p.extend(prompt(100 + i as u64, 16));
            req(p, 4)
        })
        .collect()
}

fn burst_cfg(cache: bool, defer: bool, max_batched_tokens: usize) -> EngineConfig {
    EngineConfig {
        block_size: 16,
        num_blocks: 512,
        max_batched_tokens,
        max_running: 64,
        enable_prefix_cache: cache,
        defer_shared_prefix: defer,
        max_model_len: 1024,
        ..EngineConfig::default()
    }
}

fn tokens_only(out: &[Outcome]) -> Vec<(&Vec<u32>, &String, &FinishReason)> {
    out.iter()
        .map(|o| (&o.tokens, &o.text, &o.reason))
        .collect()
}

#[test]
fn burst_sharing_a_256_token_prefix_computes_it_once() {
    let n = 16;
    let reqs = shared_prefix_burst(n, 256);
    let mut off = engine(burst_cfg(false, true, 512));
    let want = run(&mut off, reqs.clone());
    let mut on = engine(burst_cfg(true, true, 512));
    let got = run(&mut on, reqs);
    assert_eq!(tokens_only(&got), tokens_only(&want));
    let (s_on, s_off) = (on.stats(), off.stats());
    assert_eq!(s_off.prefill_tokens, (n * 272) as u64);
    // The prefix once, then each prompt's own 16 tokens.
    assert_eq!(s_on.prefill_tokens, (256 + n * 16) as u64);
    assert_eq!(s_on.cache_hit_tokens, ((n - 1) * 256) as u64);
    assert!(s_on.prefill_tokens * 5 <= s_off.prefill_tokens);
    assert!(got[1..].iter().all(|o| o.usage.cached_tokens == 256));
    assert_eq!(s_on.blocks_free, s_on.blocks_total - s_on.cached_blocks);
}

#[test]
fn without_deferral_a_burst_admitted_together_recomputes_the_prefix() {
    // A budget big enough to admit the whole burst in one step: only holding back the
    // followers lets them share the leader's blocks.
    let n = 8;
    let reqs = shared_prefix_burst(n, 256);
    let mut eager = engine(burst_cfg(true, false, 4096));
    let a = run(&mut eager, reqs.clone());
    let mut deferring = engine(burst_cfg(true, true, 4096));
    let b = run(&mut deferring, reqs);
    assert_eq!(tokens_only(&a), tokens_only(&b));
    assert_eq!(eager.stats().prefill_tokens, (n * 272) as u64);
    assert_eq!(deferring.stats().prefill_tokens, (256 + n * 16) as u64);
    assert_eq!(deferring.stats().deferrals, (n - 1) as u64);
    // Duplicate prefix blocks computed in the same step are cached once; the duplicates
    // were freed with their requests.
    let s = eager.stats();
    assert_eq!(s.cached_blocks, 16 + n);
    assert_eq!(s.blocks_free, s.blocks_total - s.cached_blocks);
}

#[test]
fn running_requests_publish_full_blocks_and_keep_them_pinned() {
    let mut e = engine(burst_cfg(true, true, 64));
    let id = e.submit(req(prompt(7, 200), 3)).unwrap();
    e.step();
    e.step();
    e.check_invariants().unwrap();
    // 128 prompt tokens computed: 8 full blocks cached while the request still runs, all
    // locked by it, so none can be evicted.
    let cache = e.sched.cache();
    assert_eq!(cache.cached_blocks(), 8);
    assert_eq!(cache.evictable_blocks(), 0);
    assert_eq!(e.sched.seq(id).map(|s| s.computed), Some(128));
    while e.has_work() {
        e.step();
        e.check_invariants().unwrap();
    }
    let cache = e.sched.cache();
    assert_eq!(cache.cached_blocks(), (200 + 2) / 16);
    assert_eq!(cache.evictable_blocks(), cache.cached_blocks());
}

#[test]
fn zero_max_defer_steps_admits_like_without_deferral() {
    let n = 4;
    let reqs = shared_prefix_burst(n, 256);
    let mut e = engine(EngineConfig {
        max_defer_steps: 0,
        ..burst_cfg(true, true, 4096)
    });
    run(&mut e, reqs);
    let s = e.stats();
    assert_eq!((s.deferrals, s.prefill_tokens), (0, (n * 272) as u64));
}
