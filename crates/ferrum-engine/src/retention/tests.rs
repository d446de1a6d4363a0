//! Retention behaviour on the engine with the fake model and a manual clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::testing::{FakeRunner, FakeText};
use crate::{Engine, EngineConfig, Event, Request, RequestId, Usage};

const VOCAB: usize = 90;

fn cfg(num_blocks: usize, policy: KvRetention, cap: f64) -> EngineConfig {
    EngineConfig {
        block_size: 4,
        num_blocks,
        max_batched_tokens: 32,
        max_running: 4,
        max_model_len: 512,
        retention: RetentionConfig {
            policy,
            max_pinned_fraction: cap,
            shadow: false,
            predictor: PredictorConfig {
                prior_gaps_s: vec![1.0],
                slack: 1.0,
                ..PredictorConfig::default()
            },
        },
        ..EngineConfig::default()
    }
}

fn engine(cfg: EngineConfig) -> (Engine<FakeRunner>, Clock) {
    let runner = FakeRunner::new(VOCAB, cfg.num_blocks, cfg.block_size);
    let mut e = Engine::new(runner, Arc::new(FakeText::new(VOCAB)), cfg).expect("valid config");
    let clock = Clock::manual();
    e.set_clock(clock.clone());
    (e, clock)
}

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

fn turn(prompt: Vec<u32>, program: Option<&str>, max_tokens: usize) -> Request {
    Request {
        ignore_eos: true,
        program: program.map(str::to_string),
        tool: program.map(|_| "search".to_string()),
        ..Request::new(prompt, max_tokens)
    }
}

/// Runs requests to completion, checking invariants and `check` after every step; returns
/// each request's generated tokens and usage.
fn run_with(
    e: &mut Engine<FakeRunner>,
    reqs: Vec<Request>,
    mut check: impl FnMut(&Engine<FakeRunner>),
) -> Vec<(Vec<u32>, Usage)> {
    let ids: Vec<RequestId> = reqs.into_iter().map(|r| e.submit(r).unwrap()).collect();
    let mut out: HashMap<RequestId, (Vec<u32>, Usage)> = HashMap::new();
    let mut steps = 0;
    while e.has_work() {
        e.step();
        steps += 1;
        assert!(steps < 10_000, "engine made no progress");
        e.check_invariants().unwrap();
        check(e);
        for (id, ev) in e.drain_events() {
            let o = out.entry(id).or_default();
            match ev {
                Event::Token { id, .. } => o.0.push(id),
                Event::Finished { usage, .. } => o.1 = usage,
            }
        }
    }
    ids.iter().map(|id| out.remove(id).unwrap()).collect()
}

fn run(e: &mut Engine<FakeRunner>, reqs: Vec<Request>) -> Vec<(Vec<u32>, Usage)> {
    run_with(e, reqs, |_| {})
}

fn pinned(e: &Engine<FakeRunner>) -> usize {
    e.stats().pinned_blocks
}

#[test]
fn pinned_kv_stays_under_cap_and_expires_within_ttl_plus_one_step() {
    let (mut e, clock) = engine(cfg(64, KvRetention::Ttl, 0.25));
    let cap = 16;
    // Six programs that never return, 10+ blocks each: far more than the cap.
    let reqs = (0..6)
        .map(|i| turn(prompt(i, 41), Some(&format!("p{i}")), 4))
        .collect();
    run_with(&mut e, reqs, |e| assert!(pinned(e) <= cap, "{}", pinned(e)));
    let s = e.stats();
    assert!(s.pinned_blocks > 0 && s.pinned_blocks <= cap);
    assert!(s.retention.pins >= 1 && s.retention.displaced + s.retention.skipped >= 1);
    // The TTL is the prior's 1 s: still pinned just before, gone one step after.
    clock.advance(Duration::from_millis(999));
    e.step();
    assert!(pinned(&e) > 0);
    clock.advance(Duration::from_millis(1));
    e.step();
    assert_eq!(pinned(&e), 0);
    assert!(e.stats().retention.expired >= 1);
    e.check_invariants().unwrap();
    // Unpinned blocks are ordinary cache now: all evictable.
    let c = e.scheduler().cache();
    assert_eq!(c.evictable_blocks(), c.cached_blocks());
}

#[test]
fn program_returning_after_its_ttl_completes_like_a_cold_request() {
    let (mut e, clock) = engine(cfg(64, KvRetention::Ttl, 0.5));
    let first = prompt(1, 30);
    let out = run(&mut e, vec![turn(first.clone(), Some("a"), 4)]);
    clock.advance(Duration::from_secs(5));
    e.step();
    assert_eq!(pinned(&e), 0);
    let second = [first, out[0].0.clone(), prompt(2, 9)].concat();
    let got = run(&mut e, vec![turn(second.clone(), Some("a"), 6)]);
    let mut cold_cfg = cfg(64, KvRetention::Lru, 0.5);
    cold_cfg.enable_prefix_cache = false;
    let (mut cold, _) = engine(cold_cfg);
    let want = run(&mut cold, vec![turn(second, None, 6)]);
    assert_eq!(got[0].0, want[0].0);
    assert_eq!(e.stats().retention.returns_unpinned, 1);
    assert_eq!(e.stats().retention.expired, 1);
}

#[test]
fn pins_are_reclaimed_under_pressure_and_running_requests_complete() {
    let (mut e, _clock) = engine(cfg(32, KvRetention::PinAll, 1.0));
    run(&mut e, vec![turn(prompt(3, 100), Some("a"), 4)]);
    assert_eq!(pinned(&e), 25);
    // A request needing almost the whole pool: the pin must go, nothing may stall.
    let big = turn(prompt(4, 110), None, 8);
    let got = run(&mut e, vec![big.clone()]);
    let (mut fresh, _) = engine(cfg(32, KvRetention::Lru, 1.0));
    let want = run(&mut fresh, vec![big]);
    assert_eq!(got[0].0, want[0].0);
    let s = e.stats();
    assert!(s.retention.reclaimed >= 1);
    assert_eq!(s.preemptions, 0, "pins go before any preemption");
    assert_eq!(s.pinned_blocks, 0);
}

/// Program `a` runs a turn, three unrelated requests fill the pool during its tool call,
/// then `a` returns within the TTL; returns the second turn's tokens and cached tokens.
fn returning_turn(policy: KvRetention) -> (Vec<u32>, usize) {
    let (mut e, clock) = engine(cfg(40, policy, 0.5));
    let first = prompt(10, 60);
    let out = run(&mut e, vec![turn(first.clone(), Some("a"), 4)]);
    for i in 0..3 {
        clock.advance(Duration::from_millis(100));
        run(&mut e, vec![turn(prompt(20 + i, 60), None, 4)]);
    }
    let second = [first, out[0].0.clone(), prompt(30, 8)].concat();
    let got = run(&mut e, vec![turn(second, Some("a"), 4)]);
    (got[0].0.clone(), got[0].1.cached_tokens)
}

#[test]
fn returning_turn_within_ttl_hits_under_pressure_where_lru_misses() {
    let (lru_tokens, lru_hit) = returning_turn(KvRetention::Lru);
    let (ttl_tokens, ttl_hit) = returning_turn(KvRetention::Ttl);
    assert_eq!(lru_tokens, ttl_tokens, "retention never changes outputs");
    assert!(ttl_hit >= 60, "ttl kept the first turn: {ttl_hit}");
    assert!(lru_hit < 16, "lru lost it: {lru_hit}");
}

#[test]
fn waiting_turn_of_a_pinned_program_is_admitted_first() {
    let mut c = cfg(64, KvRetention::PinAll, 0.5);
    c.max_running = 1;
    let (mut e, _clock) = engine(c);
    let first = prompt(5, 20);
    let out = run(&mut e, vec![turn(first.clone(), Some("a"), 2)]);
    let newcomer = e.submit(turn(prompt(6, 20), Some("b"), 2)).unwrap();
    let second = [first, out[0].0.clone(), prompt(7, 4)].concat();
    let back = e.submit(turn(second, Some("a"), 2)).unwrap();
    e.step();
    let evs = e.drain_events();
    assert!(evs.iter().any(|(id, _)| *id == back));
    assert!(evs.iter().all(|(id, _)| *id != newcomer));
    assert_eq!(e.stats().retention.returns_pinned, 1);
}

#[test]
fn releasing_a_program_unpins_its_kv() {
    let (mut e, _clock) = engine(cfg(64, KvRetention::PinAll, 0.5));
    run(&mut e, vec![turn(prompt(8, 30), Some("a"), 2)]);
    assert!(pinned(&e) > 0);
    assert!(e.release_program("a"));
    assert!(!e.release_program("a"));
    assert_eq!(pinned(&e), 0);
    e.check_invariants().unwrap();
}

#[test]
fn requests_without_a_program_pin_nothing() {
    let (mut e, _clock) = engine(cfg(64, KvRetention::PinAll, 1.0));
    run(&mut e, vec![turn(prompt(9, 30), None, 2)]);
    assert_eq!(pinned(&e), 0);
    assert_eq!(e.stats().retention, RetentionCounters::default());
}

#[test]
fn shadow_mode_counts_hits_ttl_would_have_had_without_pinning() {
    let mut c = cfg(64, KvRetention::Lru, 0.5);
    c.retention.shadow = true;
    let (mut e, clock) = engine(c);
    let first = prompt(11, 30);
    let out = run(&mut e, vec![turn(first.clone(), Some("a"), 2)]);
    assert_eq!(pinned(&e), 0);
    clock.advance(Duration::from_millis(500));
    let second = [first, out[0].0.clone(), prompt(12, 4)].concat();
    run(&mut e, vec![turn(second, Some("a"), 2)]);
    let r = e.stats().retention;
    assert_eq!((r.shadow_hits, r.pins), (1, 0));
    assert!(r.shadow_hit_tokens >= 28);
}

#[test]
fn kv_retention_parses_its_command_line_names() {
    for p in [KvRetention::Lru, KvRetention::Ttl, KvRetention::PinAll] {
        assert_eq!(p.name().parse::<KvRetention>(), Ok(p));
    }
    assert!("forever".parse::<KvRetention>().is_err());
}

#[test]
fn a_turn_that_arrives_within_its_ttl_keeps_the_pin_until_admitted() {
    let (mut e, clock) = engine(cfg(64, KvRetention::Ttl, 0.5));
    let first = prompt(13, 30);
    let out = run(&mut e, vec![turn(first.clone(), Some("a"), 2)]);
    clock.advance(Duration::from_millis(900)); // TTL is the prior's 1 s
    let second = [first, out[0].0.clone(), prompt(14, 4)].concat();
    let id = e.submit(turn(second, Some("a"), 2)).unwrap();
    // The step that admits it starts after the TTL (e.g. behind a long prefill).
    clock.advance(Duration::from_millis(500));
    let mut cached = None;
    while e.has_work() {
        e.step();
        e.check_invariants().unwrap();
        for (rid, ev) in e.drain_events() {
            if let (true, Event::Finished { usage, .. }) = (rid == id, ev) {
                cached = Some(usage.cached_tokens);
            }
        }
    }
    let r = e.stats().retention;
    assert_eq!((r.returns_pinned, r.expired), (1, 0));
    assert!(cached.unwrap() >= 28, "{cached:?}");
}

/// A scripted scenario step: advance the manual clock (then one engine step, so expiry
/// runs), or run turns concurrently to completion.
enum Op {
    Wait(u64),
    /// (program or `None` for an unrelated request, seed, fresh tokens): a program's turn
    /// is its history (earlier prompt and output) plus the fresh tokens.
    Turns(Vec<(Option<&'static str>, u64, usize)>),
}

/// Plays `ops` under `policy` (with `shadow`); returns the cached prompt tokens of program
/// turns and the retention counters.
fn play(
    policy: KvRetention,
    shadow: bool,
    num_blocks: usize,
    cap: f64,
    ops: &[Op],
) -> (u64, RetentionCounters) {
    let mut c = cfg(num_blocks, policy, cap);
    c.retention.shadow = shadow;
    let (mut e, clock) = engine(c);
    let mut hist: HashMap<&str, Vec<u32>> = HashMap::new();
    let mut cached = 0u64;
    for op in ops {
        match op {
            Op::Wait(ms) => {
                clock.advance(Duration::from_millis(*ms));
                e.step();
            }
            Op::Turns(ts) => {
                let prompts: Vec<Vec<u32>> = ts
                    .iter()
                    .map(|(p, seed, n)| {
                        let h = p.and_then(|p| hist.get(p)).cloned().unwrap_or_default();
                        [h, prompt(*seed, *n)].concat()
                    })
                    .collect();
                let reqs = ts
                    .iter()
                    .zip(&prompts)
                    .map(|((p, _, _), pr)| turn(pr.clone(), *p, 4))
                    .collect();
                let out = run(&mut e, reqs);
                for (((p, _, _), pr), (toks, usage)) in ts.iter().zip(prompts).zip(out) {
                    if let Some(p) = p {
                        cached += usage.cached_tokens as u64;
                        hist.insert(*p, [pr, toks].concat());
                    }
                }
            }
        }
    }
    (cached, e.stats().retention)
}

/// Live `ttl` program hits, and the shadow prediction of them under `lru`.
fn ttl_and_shadow(num_blocks: usize, cap: f64, ops: &[Op]) -> (u64, RetentionCounters) {
    let (ttl_cached, ttl) = play(KvRetention::Ttl, false, num_blocks, cap, ops);
    let (_, shadow) = play(KvRetention::Lru, true, num_blocks, cap, ops);
    assert_eq!(ttl.shadow_hit_tokens, 0, "no shadow counts under ttl");
    assert_eq!(shadow.pins, 0, "shadow mode pins nothing");
    (ttl_cached, shadow)
}

fn fillers(seed: u64) -> Vec<Op> {
    (0..3)
        .flat_map(|i| [Op::Wait(100), Op::Turns(vec![(None, seed + i, 60)])])
        .collect()
}

#[test]
fn shadow_predicts_the_pinned_hit_that_lru_loses_under_pressure() {
    let mut ops = vec![Op::Turns(vec![(Some("a"), 1, 60)])];
    ops.extend(fillers(10));
    ops.push(Op::Turns(vec![(Some("a"), 2, 8)]));
    let (ttl_cached, shadow) = ttl_and_shadow(40, 0.5, &ops);
    let (lru_cached, _) = play(KvRetention::Lru, false, 40, 0.5, &ops);
    assert!(
        ttl_cached >= 60 && lru_cached < 16,
        "{ttl_cached} {lru_cached}"
    );
    assert_eq!(shadow.shadow_hit_tokens, ttl_cached);
    assert_eq!(shadow.shadow_hits, 1);
    assert_eq!(shadow.shadow_prompt_tokens, 60 + 60 + 4 + 8);
}

#[test]
fn shadow_applies_the_pin_cap_dropping_the_soonest_to_expire() {
    // Both programs' KV (15 blocks each) cannot be pinned under the cap (20 of 40 blocks):
    // b's pin displaces a's, which expires sooner; fillers then evict a's KV.
    let mut ops = vec![
        Op::Turns(vec![(Some("a"), 1, 60)]),
        Op::Wait(100),
        Op::Turns(vec![(Some("b"), 2, 60)]),
    ];
    ops.extend(fillers(10));
    ops.push(Op::Turns(vec![(Some("a"), 3, 8), (Some("b"), 4, 8)]));
    let (ttl_cached, shadow) = ttl_and_shadow(40, 0.5, &ops);
    assert!((60..120).contains(&ttl_cached), "only b kept: {ttl_cached}");
    assert_eq!(shadow.shadow_hit_tokens, ttl_cached);
    // b displaced a; after the returns the second finisher displaces the first again.
    assert_eq!((shadow.shadow_pins, shadow.shadow_dropped), (4, 2));
}

#[test]
fn shadow_drops_virtual_pins_that_running_work_would_reclaim() {
    // a's 25 pinned blocks and a 30-block request cannot share a 32-block pool.
    let ops = [
        Op::Turns(vec![(Some("a"), 1, 100)]),
        Op::Turns(vec![(None, 2, 110)]),
        Op::Turns(vec![(Some("a"), 3, 8)]),
    ];
    let (ttl_cached, shadow) = ttl_and_shadow(32, 1.0, &ops);
    assert!(ttl_cached < 100, "ttl lost the pin: {ttl_cached}");
    assert_eq!(shadow.shadow_hit_tokens, ttl_cached);
    assert_eq!((shadow.shadow_dropped, shadow.shadow_hits), (1, 0));
}

#[test]
fn shadow_counts_no_pinned_hit_after_the_ttl() {
    let mut ops = vec![Op::Turns(vec![(Some("a"), 1, 60)]), Op::Wait(1_500)];
    ops.extend(fillers(10));
    ops.push(Op::Turns(vec![(Some("a"), 2, 8)]));
    let (ttl_cached, shadow) = ttl_and_shadow(40, 0.5, &ops);
    assert!(ttl_cached < 16, "{ttl_cached}");
    assert_eq!(shadow.shadow_hit_tokens, ttl_cached);
    assert_eq!(shadow.shadow_hits, 0);
}

#[test]
fn a_pin_taken_at_low_pressure_is_cut_when_pressure_makes_its_ttl_zero() {
    let mut c = cfg(64, KvRetention::Ttl, 0.5);
    // Gaps of 10 s: worth pinning on an idle pool (TTL 10 s), not at pressure above 0.5.
    c.retention.predictor.prior_gaps_s = vec![10.0];
    let (mut e, clock) = engine(c);
    run(&mut e, vec![turn(prompt(15, 30), Some("a"), 2)]);
    assert_eq!(pinned(&e), 7);
    clock.advance(Duration::from_secs(1));
    e.step();
    assert_eq!(pinned(&e), 7, "still worth it on an idle pool");
    // A 40-block request arrives: running work and the pin now need most of the pool.
    let big = turn(prompt(16, 160), None, 4);
    run(&mut e, vec![big]);
    let r = e.stats().retention;
    assert_eq!(
        (r.expired, r.reclaimed),
        (1, 0),
        "cut at its TTL, not reclaimed"
    );
    assert_eq!(pinned(&e), 0);
}
