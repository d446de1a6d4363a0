//! Fairness acceptance on the real default model (SmolLM2-135M-Instruct): the scenarios of
//! `ferrum bench fairness`, stepped directly through the engine with short outputs (EOS
//! ignored), measuring weighted service from the events. Time is counted in engine steps so
//! the figures do not depend on the machine's speed or load.
//!
//! Kept short for 2 cores: 8 running requests, 24 tokens per step, 16-token prompts,
//! 8-token outputs, 80 steps per run.

use std::sync::{Arc, OnceLock};

use ferrum_engine::fair::scenario::Scenario;
use ferrum_engine::fair::sim::{self, quantile, SimReport};
use ferrum_engine::{
    Engine, EngineConfig, FairConfig, FairPolicy, Fcfs, KvBudget, SchedulingPolicy,
};
use ferrum_model::llama::{LlamaModel, LlamaRunner};
use ferrum_model::tokenizer::Tokenizer;

const MAX_RUNNING: usize = 8;
const COSTS: (f64, f64) = (1.0, 2.0);

struct Fixture {
    model: Arc<LlamaModel>,
    tok: Arc<Tokenizer>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let path = ferrum_model::fetch::default_model_path().expect("default model available");
        let model = Arc::new(LlamaModel::open(&path).expect("model loads"));
        let tok = Arc::new(Tokenizer::from_gguf(&model.file).expect("tokenizer loads"));
        Fixture { model, tok }
    })
}

fn engine(policy: Box<dyn SchedulingPolicy>) -> Engine<LlamaRunner> {
    let f = fixture();
    let (base, _) =
        EngineConfig::for_model(&f.model.config, KvBudget::Tokens(4096), f.tok.stop_ids())
            .expect("valid budget");
    let cfg = EngineConfig {
        max_batched_tokens: 24,
        max_running: MAX_RUNNING,
        cache_salt_by_tenant: true,
        ..base
    };
    let runner =
        LlamaRunner::new(Arc::clone(&f.model), cfg.num_blocks, cfg.block_size, 1).expect("runner");
    Engine::with_policy(runner, f.tok.clone(), cfg, policy).expect("engine")
}

fn fair(s: Scenario) -> Box<dyn SchedulingPolicy> {
    Box::new(FairPolicy::new(FairConfig {
        tenants: s.tenants(),
        w_in: COSTS.0,
        w_out: COSTS.1,
    }))
}

fn run(s: Scenario, policy: Box<dyn SchedulingPolicy>, steps: u64) -> SimReport {
    let mut e = engine(policy);
    // Ordinary vocabulary ids (no special tokens).
    sim::run(&mut e, &s.clients(steps), steps, COSTS, (300, 20_000))
}

/// p99 TTFT in steps of requests submitted after the warm-up.
fn p99_steps(r: &SimReport, client: usize, from: u64) -> f64 {
    quantile(&r.clients[client].ttft_since(from).0, 0.99)
}

#[test]
fn acceptance_1_light_client_gets_half_and_keeps_its_ttft_fcfs_does_not() {
    let s = Scenario::HeavyVsLight;
    let steps = 80;
    let (from, to) = s.window(steps);
    let fair_r = run(s, fair(s), steps);
    let fcfs_r = run(s, Box::new(Fcfs), steps);
    let mut alone_clients = s.clients(steps);
    alone_clients.remove(0);
    let mut e = engine(fair(s));
    let alone = sim::run(&mut e, &alone_clients, steps, COSTS, (300, 20_000));
    let light = fair_r.shares(from, to)[1];
    let light_fcfs = fcfs_r.shares(from, to)[1];
    let (p99, p99_alone, p99_fcfs) = (
        p99_steps(&fair_r, 1, from),
        p99_steps(&alone, 0, from),
        p99_steps(&fcfs_r, 1, from),
    );
    eprintln!("light share fair {light:.3} fcfs {light_fcfs:.3}; p99 TTFT steps fair {p99} alone {p99_alone} fcfs {p99_fcfs}");
    assert!((light - 0.5).abs() <= 0.05, "light share {light}");
    assert!(
        p99 <= 2.0 * p99_alone,
        "light p99 TTFT {p99} steps vs {p99_alone} alone"
    );
    let fcfs_passes = (light_fcfs - 0.5).abs() <= 0.05 && p99_fcfs <= 2.0 * p99_alone;
    assert!(
        !fcfs_passes,
        "FCFS should fail: share {light_fcfs}, p99 {p99_fcfs}"
    );
}

#[test]
fn acceptance_2_weights_1_2_4_give_sevenths() {
    let s = Scenario::Weights;
    let steps = 80;
    let (from, to) = s.window(steps);
    let shares = run(s, fair(s), steps).shares(from, to);
    eprintln!("shares {shares:?}");
    for (got, want) in shares.iter().zip([1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0]) {
        assert!((got - want).abs() <= 0.03, "shares {shares:?}");
    }
}

#[test]
fn acceptance_3_tenant_with_ten_users_gets_half_split_evenly() {
    let s = Scenario::Hierarchy;
    let steps = 80;
    let (from, to) = s.window(steps);
    let r = run(s, fair(s), steps);
    let shares = r.shares(from, to);
    let a: f64 = shares[..10].iter().sum();
    let jain = r.jain(&(0..10).collect::<Vec<_>>(), from, to);
    eprintln!("tenant A share {a:.3}, Jain across A's users {jain:.3}");
    assert!((a - 0.5).abs() <= 0.05, "tenant A share {a}");
    assert!(jain >= 0.95, "Jain's index {jain}");
}

#[test]
fn acceptance_4_work_conserving_heavy_alone_matches_fcfs_throughput() {
    // The light client idle: only the heavy one. Throughput in generated tokens per step
    // (deterministic) and the engine's steps are the same work either way.
    let s = Scenario::HeavyVsLight;
    let steps = 40;
    let mut clients = s.clients(steps);
    clients.truncate(1);
    let mut fair_e = engine(fair(s));
    let f = sim::run(&mut fair_e, &clients, steps, COSTS, (300, 20_000));
    let mut fcfs_e = engine(Box::new(Fcfs));
    let c = sim::run(&mut fcfs_e, &clients, steps, COSTS, (300, 20_000));
    eprintln!(
        "heavy alone: {} tokens fair, {} fcfs in {steps} steps",
        f.output_tokens, c.output_tokens
    );
    assert!(f.output_tokens as f64 >= 0.95 * c.output_tokens as f64);
}

#[test]
fn acceptance_5_late_joiner_stays_within_the_service_difference_bound() {
    let s = Scenario::LateJoiner;
    let steps = 80;
    let bound = s.service_diff_bound(MAX_RUNNING, COSTS);
    let join = s.join_step(steps);
    let fair_r = run(s, fair(s), steps);
    let d = fair_r.max_service_diff(&[0, 1], join);
    let heavy_after = fair_r.shares(join, join + 15)[0];
    eprintln!("late joiner: max service diff {d:.0} (bound {bound:.0}); heavy share right after the join {heavy_after:.3}");
    assert!(
        d <= bound,
        "max service difference {d} exceeds the bound {bound}"
    );
    assert!(
        heavy_after >= 0.25,
        "incumbent starved after the join: {heavy_after}"
    );
}
