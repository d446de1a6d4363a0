//! Engine behaviour with the real default model (SmolLM2-135M-Instruct, fetched on first use):
//! greedy outputs must not depend on the prefix cache, on batching or on preemption, a second
//! chat turn must prefill only its new tokens, and cancelling must return every unshared block.
//!
//! Kept small for 2-core machines: short prompts, 8-20 generated tokens, one thread per runner.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use ferrum_engine::{
    Engine, EngineConfig, Event, FinishReason, KvBudget, Request, RequestId, Usage,
};
use ferrum_model::chat::{ChatMessage, ChatTemplate};
use ferrum_model::llama::{LlamaModel, LlamaRunner};
use ferrum_model::tokenizer::Tokenizer;

struct Fixture {
    model: Arc<LlamaModel>,
    tok: Arc<Tokenizer>,
    template: ChatTemplate,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let path = ferrum_model::fetch::default_model_path().expect("default model available");
        let model = Arc::new(LlamaModel::open(&path).expect("model loads"));
        let tok = Arc::new(Tokenizer::from_gguf(&model.file).expect("tokenizer loads"));
        let template = ChatTemplate::from_gguf(&model.file).expect("template loads");
        Fixture {
            model,
            tok,
            template,
        }
    })
}

const SYSTEM: &str =
    "You are a concise assistant for a small bakery. Answer in one short sentence, \
                      mention prices in euros, and never invent opening hours.";
const QUESTIONS: [&str; 8] = [
    "What is bread?",
    "Name a fruit.",
    "Why is the sky blue? Explain it simply for a child who is six years old.",
    "Write a haiku about autumn leaves.",
    "What is two plus two?",
    "Give me a short tip for baking sourdough bread at home in a cold kitchen.",
    "Hello!",
    "List three colours of the rainbow.",
];

fn chat(system: bool, user: &str) -> Vec<u32> {
    let f = fixture();
    let mut msgs = Vec::new();
    if system {
        msgs.push(ChatMessage::new("system", SYSTEM));
    }
    msgs.push(ChatMessage::new("user", user));
    let text = f.template.render(&msgs, true).expect("template renders");
    f.tok.encode(&text, true).expect("prompt encodes")
}

fn cfg(num_blocks: usize, cache: bool) -> EngineConfig {
    let f = fixture();
    let (base, _) = EngineConfig::for_model(
        &f.model.config,
        KvBudget::Tokens(num_blocks * 16),
        f.tok.stop_ids(),
    )
    .expect("valid budget");
    EngineConfig {
        max_batched_tokens: 96,
        max_running: 32,
        enable_prefix_cache: cache,
        ..base
    }
}

fn engine(cfg: EngineConfig) -> Engine<LlamaRunner> {
    let f = fixture();
    let runner =
        LlamaRunner::new(Arc::clone(&f.model), cfg.num_blocks, cfg.block_size, 1).expect("runner");
    Engine::new(runner, f.tok.clone(), cfg).expect("engine")
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
    reason: FinishReason,
    usage: Usage,
}

/// Submits all requests, steps to completion checking invariants; outcomes in order, and
/// whether any step left a request waiting while others ran.
fn run(e: &mut Engine<LlamaRunner>, reqs: Vec<Request>) -> (Vec<Outcome>, bool) {
    let ids: Vec<RequestId> = reqs
        .into_iter()
        .map(|r| e.submit(r).expect("request fits"))
        .collect();
    let mut outs: HashMap<RequestId, Outcome> = HashMap::new();
    let (mut steps, mut waited) = (0, false);
    while e.has_work() {
        e.step();
        e.check_invariants()
            .expect("invariants hold after every step");
        let s = e.stats();
        waited |= s.waiting > 0 && s.running > 0;
        steps += 1;
        assert!(steps < 5_000, "engine made no progress");
        for (id, ev) in e.drain_events() {
            let o = outs.entry(id).or_insert_with(|| Outcome {
                tokens: vec![],
                reason: FinishReason::Cancelled,
                usage: Usage::default(),
            });
            match ev {
                Event::Token { id, .. } => o.tokens.push(id),
                Event::Finished { reason, usage } => {
                    o.reason = reason;
                    o.usage = usage;
                }
            }
        }
    }
    (
        ids.iter()
            .map(|id| outs.remove(id).expect("finished"))
            .collect(),
        waited,
    )
}

fn alone(r: &Request) -> Outcome {
    let mut e = engine(cfg(64, false));
    run(&mut e, vec![r.clone()]).0.remove(0)
}

fn mixed_workload(n: usize) -> Vec<Request> {
    (0..n)
        .map(|i| {
            req(
                chat(i % 2 == 0, QUESTIONS[i % QUESTIONS.len()]),
                8 + (i * 5) % 13,
            )
        })
        .collect()
}

#[test]
fn greedy_outputs_identical_with_prefix_cache_on_and_off() {
    let reqs = mixed_workload(6);
    let mut results = Vec::new();
    for cache in [false, true] {
        let mut e = engine(cfg(128, cache));
        // Two rounds, so the second can hit what the first cached.
        let mut out = run(&mut e, reqs.clone()).0;
        out.extend(run(&mut e, reqs.clone()).0);
        for o in &mut out {
            assert_eq!(o.reason, FinishReason::Length);
            o.usage.cached_tokens = 0;
        }
        results.push((out, e.stats()));
    }
    assert_eq!(results[0].1.cache_hit_tokens, 0);
    assert!(results[1].1.cache_hit_tokens > 0, "the cached run must hit");
    assert!(results[1].1.prefill_tokens < results[0].1.prefill_tokens);
    assert_eq!(results[0].0, results[1].0);
}

#[test]
fn batch_of_32_mixed_requests_matches_each_alone() {
    let reqs = mixed_workload(32);
    let mut e = engine(cfg(256, true));
    let (got, _) = run(&mut e, reqs.clone());
    let s = e.stats();
    assert!(s.cache_hit_tokens > 0, "shared system prompt is reused");
    assert!(s.steps < s.decode_tokens, "requests were batched: {s:?}");
    // Every one of the 32 against a solo run (identical requests share one solo run).
    let mut solo: Vec<(Request, Outcome)> = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let want = match solo
            .iter()
            .find(|(q, _)| q.prompt == r.prompt && q.max_tokens == r.max_tokens)
        {
            Some((_, o)) => o.clone(),
            None => {
                let o = alone(r);
                solo.push((r.clone(), o.clone()));
                o
            }
        };
        assert_eq!(
            (&got[i].tokens, &got[i].reason),
            (&want.tokens, &want.reason),
            "request {i}"
        );
        assert_eq!(got[i].tokens.len(), reqs[i].max_tokens);
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[test]
fn second_turn_prefills_only_new_tokens() {
    let f = fixture();
    let mut e = engine(cfg(128, true));
    let turn1 = chat(true, QUESTIONS[2]);
    let out1 = run(&mut e, vec![req(turn1.clone(), 12)]).0.remove(0);
    let answer = f.tok.decode(&out1.tokens, true).expect("decodes");
    let msgs = [
        ChatMessage::new("system", SYSTEM),
        ChatMessage::new("user", QUESTIONS[2]),
        ChatMessage::new("assistant", answer),
        ChatMessage::new("user", "And why is it red at sunset?"),
    ];
    let turn2 = f
        .tok
        .encode(&f.template.render(&msgs, true).expect("renders"), true)
        .expect("encodes");
    let before = e.stats();
    let out2 = run(&mut e, vec![req(turn2.clone(), 6)]).0.remove(0);
    let after = e.stats();
    // Turn 1 computed KV for its prompt and all but its last sampled token; full blocks of the
    // part turn 2 repeats are served from the cache.
    let mut seen = turn1.clone();
    seen.extend(&out1.tokens);
    let bs = e.config().block_size;
    let reusable = common_prefix(&seen, &turn2).min(seen.len() - 1);
    let cached = reusable / bs * bs;
    assert!(
        cached >= turn1.len() / bs * bs,
        "at least turn 1's prompt is reused ({cached})"
    );
    assert_eq!(out2.usage.cached_tokens, cached);
    assert_eq!(
        after.cache_hit_tokens - before.cache_hit_tokens,
        cached as u64
    );
    assert_eq!(
        after.prefill_tokens - before.prefill_tokens,
        (turn2.len() - cached) as u64
    );
    assert_eq!(out2.tokens, alone(&req(turn2, 6)).tokens);
}

#[test]
fn tiny_pool_waits_and_preempts_and_all_complete_matching_alone() {
    let reqs: Vec<Request> = (0..5).map(|i| req(chat(false, QUESTIONS[i]), 20)).collect();
    // Room for the largest request alone plus two blocks: far less than all five need.
    let blocks = |r: &Request| (r.prompt.len() + r.max_tokens - 1).div_ceil(16);
    let pool = reqs.iter().map(blocks).max().expect("non-empty") + 2;
    assert!(reqs.iter().map(blocks).sum::<usize>() > 2 * pool);
    let mut e = engine(cfg(pool, true));
    let (got, waited) = run(&mut e, reqs.clone());
    let s = e.stats();
    assert!(
        waited || s.preemptions > 0,
        "the pool is too small for all at once: {s:?}"
    );
    assert!(
        s.preemptions > 0,
        "decode growth must force preemption: {s:?}"
    );
    for (i, (g, r)) in got.iter().zip(&reqs).enumerate() {
        assert_eq!(g.reason, FinishReason::Length, "request {i}");
        assert_eq!(g.tokens, alone(r).tokens, "request {i}");
    }
    assert_eq!(s.blocks_free, s.blocks_total - s.cached_blocks);
}

#[test]
fn cancel_mid_stream_frees_all_unshared_blocks() {
    let mut e = engine(cfg(64, true));
    let start_free = e.stats().blocks_free;
    let id = e.submit(req(chat(true, QUESTIONS[5]), 40)).expect("fits");
    let other = e.submit(req(chat(false, QUESTIONS[3]), 40)).expect("fits");
    let mut tokens = 0;
    while tokens < 4 {
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
        && matches!(ev, Event::Finished { reason: FinishReason::Cancelled, usage } if usage.completion_tokens == 4)));
    let s = e.stats();
    assert_eq!((s.running, s.waiting), (0, 0));
    assert_eq!(s.blocks_free, start_free - s.cached_blocks);
    e.check_invariants().expect("invariants hold");
    assert!(!e.has_work());
}
