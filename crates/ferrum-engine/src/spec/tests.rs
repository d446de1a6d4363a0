//! Speculation through the engine with the fake runner: outputs identical to plain decoding
//! (greedy), KV of rejected drafts rolled back, fallback, and exact sampling (chi-square).

use std::collections::HashMap;
use std::sync::Arc;

use ferrum_model::sampler::{Sampler, SamplingParams};
use ferrum_model::Batch;

use super::*;
use crate::testing::{FakeRunner, FakeText};
use crate::{Engine, EngineConfig, Event, FinishReason, ModelRunner, Request, TokenLogprob};

const VOCAB: usize = 90;

/// Proposes the fake model's most likely continuation, made wrong at every position whose
/// index is a multiple of `wrong_every` (0: never wrong).
struct Oracle {
    model: FakeRunner,
    wrong_every: usize,
}

impl Oracle {
    fn new(vocab: usize, wrong_every: usize) -> Self {
        Oracle {
            model: FakeRunner::new(vocab, 1, 1),
            wrong_every,
        }
    }
}

impl Drafter for Oracle {
    fn name(&self) -> &'static str {
        "oracle"
    }

    fn propose(&mut self, _: RequestId, context: &[u32], _: usize, max: usize, out: &mut Vec<u32>) {
        out.clear();
        let mut ctx = context.to_vec();
        for _ in 0..max {
            let mut t = self.model.best_token(&ctx);
            if self.wrong_every > 0 && ctx.len().is_multiple_of(self.wrong_every) {
                t = (t + 1) % self.model.vocab_size() as u32;
            }
            out.push(t);
            ctx.push(t);
        }
    }
}

fn cfg(method: SpecMethod) -> EngineConfig {
    EngineConfig {
        block_size: 4,
        num_blocks: 96,
        max_batched_tokens: 24,
        max_running: 8,
        max_model_len: 256,
        eos_token_ids: vec![7],
        speculative: SpecConfig {
            method,
            max_draft: 5,
            // The fake runner's step times are noise: these tests fix the drafting policy
            // (the cost model has its own tests).
            cost_aware: false,
            ..SpecConfig::default()
        },
        ..EngineConfig::default()
    }
}

fn engine(cfg: EngineConfig, vocab: usize, oracle: Option<Oracle>) -> Engine<FakeRunner> {
    let runner = FakeRunner::new(vocab, cfg.num_blocks, cfg.block_size);
    let mut e = Engine::new(runner, Arc::new(FakeText::new(vocab)), cfg).expect("valid config");
    if let Some(o) = oracle {
        e.set_external_drafter(Box::new(o));
    }
    e
}

#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    tokens: Vec<u32>,
    text: String,
    logprobs: Vec<Option<TokenLogprob>>,
    reason: FinishReason,
    completion: usize,
}

/// Runs `reqs` to completion, submitting at most 128 at a time (a long waiting queue makes
/// admission slow); outcomes in request order.
fn run(e: &mut Engine<FakeRunner>, reqs: Vec<Request>) -> Vec<Outcome> {
    let mut pending = reqs.into_iter();
    let mut ids: Vec<RequestId> = Vec::new();
    let mut outs: HashMap<RequestId, Outcome> = HashMap::new();
    let mut steps = 0;
    loop {
        while e.stats().waiting + e.stats().running < 128 {
            let Some(r) = pending.next() else { break };
            ids.push(e.submit(r).expect("request fits"));
        }
        if !e.has_work() {
            break;
        }
        e.step();
        e.check_invariants().expect("invariants hold every step");
        steps += 1;
        assert!(steps < 100_000, "no progress");
        for (id, ev) in e.drain_events() {
            let o = outs.entry(id).or_insert_with(|| Outcome {
                tokens: vec![],
                text: String::new(),
                logprobs: vec![],
                reason: FinishReason::Cancelled,
                completion: 0,
            });
            match ev {
                Event::Token { id, text, logprob } => {
                    o.tokens.push(id);
                    o.text += &text;
                    o.logprobs.push(logprob);
                }
                Event::Finished { reason, usage } => {
                    o.reason = reason;
                    o.completion = usage.completion_tokens;
                }
            }
        }
    }
    ids.iter()
        .map(|id| outs.remove(id).expect("finished"))
        .collect()
}

/// Prompts with repeats (so n-gram and suffix drafting find matches) and mixed endings.
fn workload() -> Vec<Request> {
    let mut reqs = Vec::new();
    for i in 0..12u32 {
        let base: Vec<u32> = (0..5).map(|j| (i * 7 + j * 3) % 80 + 8).collect();
        let prompt = [base.clone(), vec![i % 5 + 8], base.clone(), base].concat();
        let mut r = Request::new(prompt, [1, 2, 5, 17, 30, 40][i as usize % 6]);
        r.ignore_eos = i % 3 != 0;
        if i % 4 == 1 {
            r.stop = vec!["q".into(), "zz".into()];
        }
        if i % 5 == 2 {
            r.stop_token_ids = vec![11, 12];
        }
        if i % 2 == 0 {
            r.logprobs = true;
            r.params.top_logprobs = 2;
        }
        reqs.push(r);
    }
    reqs
}

/// Second turns: each first turn's prompt and output, then a new question.
fn second_turns(first: &[Request], outs: &[Outcome]) -> Vec<Request> {
    first
        .iter()
        .zip(outs)
        .map(|(r, o)| {
            let prompt = [r.prompt.clone(), o.tokens.clone(), vec![40, 41]].concat();
            Request {
                prompt,
                ..r.clone()
            }
        })
        .collect()
}

#[test]
fn greedy_outputs_equal_plain_decoding_with_every_drafter() {
    let reqs = workload();
    let mut plain = engine(cfg(SpecMethod::Off), VOCAB, None);
    let want = run(&mut plain, reqs.clone());
    let want2 = run(&mut plain, second_turns(&reqs, &want));
    assert!(want.iter().any(|o| o.reason == FinishReason::Stop));
    assert!(want.iter().any(|o| o.reason == FinishReason::Length));
    let cases = [
        (SpecMethod::Ngram, None),
        (SpecMethod::Suffix, None),
        (SpecMethod::External, Some(Oracle::new(VOCAB, 0))),
        (SpecMethod::External, Some(Oracle::new(VOCAB, 3))),
    ];
    for (method, oracle) in cases {
        let perfect = oracle.as_ref().is_some_and(|o| o.wrong_every == 0);
        let mut e = engine(cfg(method), VOCAB, oracle);
        assert_eq!(run(&mut e, reqs.clone()), want, "{method:?}");
        // Second turns hit blocks the first turns published: a published rejected draft
        // would change what the fake model reads back.
        assert_eq!(run(&mut e, second_turns(&reqs, &want)), want2, "{method:?}");
        let st = e.stats();
        assert_eq!(
            st.blocks_used, st.cached_blocks,
            "only cached blocks remain"
        );
        let total = e
            .spec_stats()
            .iter()
            .fold(SpecCounters::default(), |a, (_, c)| SpecCounters {
                verifications: a.verifications + c.verifications,
                drafted: a.drafted + c.drafted,
                accepted: a.accepted + c.accepted,
            });
        assert!(total.drafted > 0, "{method:?} drafted nothing");
        if perfect {
            // Drafts past a stop are never verified, so count the rate without stops.
            assert!(total.accepted * 10 >= total.drafted * 9, "{total:?}");
            assert!(st.steps < plain.stats().steps, "speculation saves steps");
            let mut e = engine(cfg(method), VOCAB, Some(Oracle::new(VOCAB, 0)));
            let no_stops: Vec<Request> = reqs
                .iter()
                .map(|r| Request {
                    stop: vec![],
                    stop_token_ids: vec![],
                    ignore_eos: true,
                    ..r.clone()
                })
                .collect();
            run(&mut e, no_stops);
            let (_, c) = e.spec_stats()[0];
            assert_eq!(c.accepted, c.drafted, "a perfect drafter is always right");
        }
        if method == SpecMethod::External && !perfect {
            assert!(total.accepted > 0 && total.accepted < total.drafted);
        }
    }
}

#[test]
fn low_acceptance_and_large_batches_fall_back_to_plain_decoding() {
    // Always-wrong drafts: after a few verifications the request pauses drafting.
    let mut e = engine(
        cfg(SpecMethod::External),
        VOCAB,
        Some(Oracle::new(VOCAB, 1)),
    );
    let mut r = Request::new(vec![8, 9, 10], 60);
    r.ignore_eos = true;
    run(&mut e, vec![r.clone()]);
    let v: u64 = e.spec_stats().iter().map(|(_, c)| c.verifications).sum();
    assert!(v > 0 && v < 30, "{v} verifications over 59 decode steps");
    // Ten decoding requests exceed max_batch = 8: nobody drafts.
    let mut c = cfg(SpecMethod::External);
    c.max_running = 10;
    c.max_batched_tokens = 64;
    c.num_blocks = 256;
    let mut e = engine(c, VOCAB, Some(Oracle::new(VOCAB, 0)));
    let reqs: Vec<Request> = (0..10)
        .map(|i| Request {
            prompt: vec![8 + i, 9, 10],
            ..r.clone()
        })
        .collect();
    run(&mut e, reqs);
    assert!(e.spec_stats().is_empty(), "{:?}", e.spec_stats());
}

#[test]
fn cost_aware_drafting_keeps_outputs_and_drops_drafts_that_never_pay() {
    let mut c = cfg(SpecMethod::External);
    c.speculative.cost_aware = true;
    // Whatever the measured step times, outputs stay those of plain decoding.
    let reqs = workload();
    let want = run(&mut engine(cfg(SpecMethod::Off), VOCAB, None), reqs.clone());
    let mut e = engine(c.clone(), VOCAB, Some(Oracle::new(VOCAB, 3)));
    assert_eq!(run(&mut e, reqs), want);
    // Always-wrong drafts: acceptance falls to zero, no draft length pays, and only spaced
    // out two-token probes are verified (16, 32, 64 then every 128 steps).
    let mut e = engine(c, VOCAB, Some(Oracle::new(VOCAB, 1)));
    let mut r = Request::new(vec![8, 9, 10], 200);
    r.ignore_eos = true;
    run(&mut e, vec![r]);
    let total = e.stats().spec.total(SpecMethod::External);
    assert!(total.verifications > 0, "it drafted at first");
    assert!(total.verifications <= 8, "{total:?} over 199 decode steps");
    assert_eq!(total.accepted, 0);
}

/// ln Γ(x) (Lanczos, g = 7), for the chi-square p-value.
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let t = x + 7.5;
    let s = C[1..]
        .iter()
        .enumerate()
        .fold(C[0], |s, (i, c)| s + c / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + s.ln()
}

/// Upper regularized incomplete gamma Q(a, x): series below a + 1, continued fraction above.
fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let front = (-x + a * x.ln() - ln_gamma(a)).exp();
    if x < a + 1.0 {
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term < sum * 1e-15 {
                break;
            }
        }
        1.0 - front * sum
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            d = if d.abs() < tiny { tiny } else { d };
            c = b + an / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-15 {
                break;
            }
        }
        front * h
    }
}

/// Chi-square goodness of fit of `counts` to probabilities `p`, cells with expectation
/// below 5 pooled; returns (statistic, degrees of freedom, p-value).
fn chi_square(counts: &[u64], p: &[f64]) -> (f64, usize, f64) {
    let n: u64 = counts.iter().sum();
    let (mut stat, mut cells) = (0.0, 0);
    let (mut pool_o, mut pool_e) = (0.0, 0.0);
    for (&o, &pi) in counts.iter().zip(p) {
        let e = pi * n as f64;
        if e < 5.0 {
            pool_o += o as f64;
            pool_e += e;
        } else {
            stat += (o as f64 - e).powi(2) / e;
            cells += 1;
        }
    }
    if pool_e > 0.0 {
        stat += (pool_o - pool_e).powi(2) / pool_e.max(1e-12);
        cells += 1;
    }
    let df = cells - 1;
    (stat, df, gamma_q(df as f64 / 2.0, stat / 2.0))
}

#[test]
fn chi_square_p_values_are_right_on_known_cases() {
    // Q(1, x) = e^-x; chi-square with 10 df at its 95th percentile 18.307.
    assert!((gamma_q(1.0, 2.0) - (-2f64).exp()).abs() < 1e-12);
    assert!((gamma_q(5.0, 18.307 / 2.0) - 0.05).abs() < 1e-4);
    assert!((gamma_q(0.5, 3.841 / 2.0) - 0.05).abs() < 1e-4);
}

const SV: usize = 6;
const PROMPT: [u32; 5] = [1, 2, 3, 4, 5];

fn sampling() -> SamplingParams {
    SamplingParams {
        temperature: 2.5,
        presence_penalty: 0.3,
        ..SamplingParams::default()
    }
}

/// Exact probability of each 3-token continuation of `PROMPT` under the fake model.
fn exact_distribution(params: &SamplingParams) -> Vec<f64> {
    let mut model = FakeRunner::new(SV, 4, 4);
    let mut logits_after = |ctx: &[u32]| -> Vec<f32> {
        let mut b = Batch::default();
        let row = b.push_seq(ctx, 0, &[0, 1, 2]);
        b.logits_rows.push(row);
        model.forward(&b).expect("fake forward").to_vec()
    };
    let prob = |sampler: &Sampler, logits: &[f32], t: u32| -> f64 {
        sampler
            .distribution(logits)
            .iter()
            .find(|e| e.0 == t)
            .map_or(0.0, |e| f64::from(e.1))
    };
    let mut p = vec![0.0; SV * SV * SV];
    for t1 in 0..SV as u32 {
        for t2 in 0..SV as u32 {
            for t3 in 0..SV as u32 {
                let mut s = Sampler::new(params.clone(), &PROMPT).expect("valid");
                let mut ctx = PROMPT.to_vec();
                let mut pr = 1.0;
                for t in [t1, t2, t3] {
                    pr *= prob(&s, &logits_after(&ctx), t);
                    s.accept(t);
                    ctx.push(t);
                }
                p[(t1 as usize * SV + t2 as usize) * SV + t3 as usize] = pr;
            }
        }
    }
    p
}

/// Histogram of 3-token continuations over `n` seeded requests.
fn sample_counts(method: SpecMethod, n: u64) -> (Vec<u64>, SpecCounters) {
    let mut c = cfg(method);
    c.eos_token_ids.clear();
    c.max_running = 64;
    c.max_batched_tokens = 512;
    c.num_blocks = 256;
    c.speculative.max_batch = 64;
    c.speculative.min_acceptance = 0.0;
    let mut e = engine(c, SV, Some(Oracle::new(SV, 0)));
    let reqs: Vec<Request> = (0..n)
        .map(|i| {
            let mut r = Request::new(PROMPT.to_vec(), 4);
            r.ignore_eos = true;
            r.params = SamplingParams {
                seed: Some(1000 + i),
                ..sampling()
            };
            r
        })
        .collect();
    let mut counts = vec![0u64; SV * SV * SV];
    for o in run(&mut e, reqs) {
        let t = &o.tokens;
        counts[(t[0] as usize * SV + t[1] as usize) * SV + t[2] as usize] += 1;
    }
    let c = e
        .spec_stats()
        .iter()
        .fold(SpecCounters::default(), |a, (_, c)| SpecCounters {
            verifications: a.verifications + c.verifications,
            drafted: a.drafted + c.drafted,
            accepted: a.accepted + c.accepted,
        });
    (counts, c)
}

#[test]
fn sampled_outputs_keep_the_target_distribution() {
    const N: u64 = 10_000;
    let exact = exact_distribution(&sampling());
    assert!((exact.iter().sum::<f64>() - 1.0).abs() < 1e-4);
    let (spec, st) = sample_counts(SpecMethod::External, N);
    let (plain, _) = sample_counts(SpecMethod::Off, N);
    // Speculation really ran: every request verified drafts, some accepted, some not.
    assert!(st.verifications >= N);
    assert!(st.accepted > N / 4 && st.accepted < st.drafted, "{st:?}");
    let (x_spec, df_spec, p_spec) = chi_square(&spec, &exact);
    let (x_plain, df_plain, p_plain) = chi_square(&plain, &exact);
    eprintln!("with speculation: chi2 = {x_spec:.1}, df = {df_spec}, p = {p_spec:.3}");
    eprintln!("plain:            chi2 = {x_plain:.1}, df = {df_plain}, p = {p_plain:.3}");
    assert!(
        p_spec > 0.001,
        "speculative sampling is off the target distribution"
    );
    assert!(
        p_plain > 0.001,
        "plain sampling is off the target distribution"
    );
    // The test has power: a slightly different temperature is rejected outright.
    let other = exact_distribution(&SamplingParams {
        temperature: 2.0,
        ..sampling()
    });
    let (_, _, p_wrong) = chi_square(&spec, &other);
    assert!(p_wrong < 1e-6, "p = {p_wrong}");
}

#[test]
fn a_drafter_that_cannot_pay_even_when_always_right_is_never_probed() {
    let cfg = SpecConfig::default();
    assert!(cfg.cost_aware);
    let mut sp = Speculator::new(0.33);
    for _ in 0..20 {
        sp.cost.observe(1, 0.010);
        sp.cost.observe(4, 0.020);
    }
    // A draft model as costly as the target: 12 ms per drafted token vs a 10 ms step.
    sp.record_draft_time(SpecMethod::External, 4, 0.048);
    // A lookup drafter: microseconds.
    sp.record_draft_time(SpecMethod::Suffix, 4, 0.0002);
    let probes = |sp: &Speculator, m: SpecMethod| {
        let mut r = ReqSpec::new(m);
        for _ in 0..50 {
            r.acc.record_recent(4, 0); // drafts keep failing: plain decoding is chosen
        }
        (0..600)
            .filter(|_| {
                let mut step = cost::StepPlan::new(1);
                sp.plan(&cfg, &mut r, &mut step, 8) > 0
            })
            .count()
    };
    assert_eq!(probes(&sp, SpecMethod::External), 0);
    assert!(probes(&sp, SpecMethod::Suffix) > 0);
}
