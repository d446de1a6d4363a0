//! Policy behaviour with the fake runner: shares, lifting, limits, preemption victims.

use std::sync::Arc;

use super::sim::{self, Client};
use super::*;
use crate::testing::{FakeRunner, FakeText};
use crate::{Engine, EngineConfig, Fcfs, Request};

const VOCAB: usize = 200;

fn cfg() -> EngineConfig {
    EngineConfig {
        block_size: 4,
        num_blocks: 1024,
        max_batched_tokens: 64,
        max_running: 16,
        enable_prefix_cache: false,
        max_model_len: 512,
        ..EngineConfig::default()
    }
}

fn engine(cfg: EngineConfig, policy: Box<dyn SchedulingPolicy>) -> Engine<FakeRunner> {
    let runner = FakeRunner::new(VOCAB, cfg.num_blocks, cfg.block_size);
    Engine::with_policy(runner, Arc::new(FakeText::new(VOCAB)), cfg, policy).expect("valid config")
}

fn fair(tenants: Vec<TenantSpec>) -> Box<dyn SchedulingPolicy> {
    Box::new(FairPolicy::new(FairConfig {
        tenants,
        ..FairConfig::default()
    }))
}

fn heavy_light() -> Vec<Client> {
    vec![
        Client::new("heavy", "heavy", 80, 24, 8),
        Client::new("light", "light", 8, 24, 8),
    ]
}

#[test]
fn light_client_gets_half_the_service_against_a_10x_heavy_one() {
    let mut e = engine(cfg(), fair(vec![]));
    let r = sim::run(&mut e, &heavy_light(), 300, (1.0, 2.0), (1, VOCAB as u32));
    let light = r.shares(50, 300)[1];
    assert!((light - 0.5).abs() <= 0.05, "light share {light}");
    let mut e = engine(cfg(), Box::new(Fcfs));
    let r = sim::run(&mut e, &heavy_light(), 300, (1.0, 2.0), (1, VOCAB as u32));
    let light_fcfs = r.shares(50, 300)[1];
    assert!(
        (light_fcfs - 0.5).abs() > 0.05,
        "FCFS light share {light_fcfs}"
    );
}

#[test]
fn weights_1_2_4_split_service_in_sevenths() {
    let tenants = vec![
        TenantSpec::new("a", 1.0),
        TenantSpec::new("b", 2.0),
        TenantSpec::new("c", 4.0),
    ];
    let clients: Vec<Client> = ["a", "b", "c"]
        .iter()
        .map(|t| Client::new(t, t, 40, 24, 8))
        .collect();
    let mut e = engine(cfg(), fair(tenants));
    let r = sim::run(&mut e, &clients, 300, (1.0, 2.0), (1, VOCAB as u32));
    let shares = r.shares(50, 300);
    for (s, want) in shares.iter().zip([1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0]) {
        assert!((s - want).abs() <= 0.03, "shares {shares:?}");
    }
}

#[test]
fn ten_users_of_one_tenant_share_half_with_a_single_user_tenant() {
    let mut clients: Vec<Client> = (0..10)
        .map(|i| Client {
            weight: 0.1,
            ..Client::new(&format!("a{i}"), "A", 8, 24, 8)
        })
        .collect();
    clients.push(Client::new("b", "B", 40, 24, 8));
    let mut e = engine(cfg(), fair(vec![]));
    let r = sim::run(&mut e, &clients, 300, (1.0, 2.0), (1, VOCAB as u32));
    let shares = r.shares(50, 300);
    let a: f64 = shares[..10].iter().sum();
    assert!((a - 0.5).abs() <= 0.05, "tenant A share {a}");
    let j = r.jain(&(0..10).collect::<Vec<_>>(), 50, 300);
    assert!(j >= 0.95, "Jain's index across A's users {j}");
}

#[test]
fn late_joiner_is_lifted_so_incumbents_keep_their_share() {
    let mut clients = heavy_light();
    clients[1].start_step = 150;
    let mut e = engine(cfg(), fair(vec![]));
    let r = sim::run(&mut e, &clients, 300, (1.0, 2.0), (1, VOCAB as u32));
    // B_x = w_in * P + R * w_out * G with R = max_running.
    let bound = 2.0 * (24.0 + 16.0 * 2.0 * 8.0);
    let d = r.max_service_diff(&[0, 1], 150);
    assert!(d <= bound, "max service difference {d} > bound {bound}");
    // Without lifting the joiner (counter 0) would take everything for ~150 steps.
    let heavy_after = r.shares(150, 200)[0];
    assert!(
        heavy_after >= 0.3,
        "incumbent share after the join {heavy_after}"
    );
}

#[test]
fn one_tenant_admits_in_arrival_order_like_fcfs() {
    let reqs: Vec<Request> = (0..30)
        .map(|i| Request {
            ignore_eos: true,
            ..Request::new(sim::prompt(0, i, 20 + (i as usize % 7), 1, 199), 6)
        })
        .collect();
    let mut outs = Vec::new();
    for policy in [Box::new(Fcfs) as Box<dyn SchedulingPolicy>, fair(vec![])] {
        let mut e = engine(cfg(), policy);
        for r in &reqs {
            e.submit(r.clone()).expect("fits");
        }
        let mut log = Vec::new();
        while e.has_work() {
            e.step();
            e.check_invariants().expect("invariants");
            log.extend(e.drain_events());
        }
        outs.push(log);
    }
    assert_eq!(outs[0], outs[1]);
}

#[test]
fn tenant_limits_cap_running_and_queued_requests() {
    let mut spec = TenantSpec::new("capped", 1.0);
    spec.limits = TenantLimits {
        max_running: Some(2),
        max_kv_share: None,
        max_queued: Some(3),
    };
    let mut e = engine(cfg(), fair(vec![spec]));
    let req = |t: &str, i: u64| Request {
        tenant: Some(t.into()),
        ..Request::new(sim::prompt(1, i, 10, 1, 199), 4)
    };
    for i in 0..3 {
        e.submit(req("capped", i)).expect("within max_queued");
    }
    assert!(matches!(
        e.submit(req("capped", 9)),
        Err(crate::SubmitError::QueueFull(_))
    ));
    e.submit(req("other", 0))
        .expect("other tenants are not limited");
    e.step();
    let st = e.tenant_stats();
    let capped = st.iter().find(|t| t.name == "capped").expect("listed");
    assert_eq!((capped.running, capped.waiting), (2, 1));
    let other = st.iter().find(|t| t.name == "other").expect("listed");
    assert_eq!(other.running, 1, "work-conserving past the capped tenant");
}

#[test]
fn kv_share_limit_stops_admitting_a_tenant_holding_its_share() {
    let mut spec = TenantSpec::new("big", 1.0);
    spec.limits.max_kv_share = Some(0.1);
    let cfg = EngineConfig {
        num_blocks: 40,
        ..cfg()
    };
    let mut e = engine(cfg, fair(vec![spec]));
    for i in 0..6 {
        let r = Request {
            tenant: Some("big".into()),
            ..Request::new(sim::prompt(2, i, 12, 1, 199), 4)
        };
        e.submit(r).expect("fits");
    }
    e.step();
    e.step();
    // 3 blocks each: after the first admission (3 blocks < 4 = 10%) a second (6 >= 4) stops it.
    let st = e.tenant_stats();
    assert_eq!(st[0].running, 2, "{st:?}");
}

fn info<'a>(id: u64, tenant: &'a str, user: &'a str, blocks: usize) -> RequestInfo<'a> {
    RequestInfo {
        id: RequestId(id),
        tenant: Some(tenant),
        user: Some(user),
        program: None,
        arrival: id,
        arrived: std::time::Instant::now(),
        prompt_tokens: 10,
        total_tokens: 10,
        computed_tokens: 0,
        cache_hit_tokens: 0,
        preemptions: 0,
        blocks,
    }
}

#[test]
fn preemption_victim_comes_from_the_tenant_most_over_its_share() {
    let mut p = FairPolicy::new(FairConfig {
        tenants: vec![TenantSpec::new("a", 3.0), TenantSpec::new("b", 1.0)],
        ..FairConfig::default()
    });
    // a holds 6 of 10 blocks with 3/4 of the weight; b holds 4 with 1/4: b is over.
    let running = [
        info(0, "a", "u", 3),
        info(1, "a", "u", 3),
        info(2, "b", "v", 2),
        info(3, "b", "v", 2),
    ];
    assert_eq!(p.pick_preempt(&running), 3, "b's latest request");
}

#[test]
fn returning_tenant_is_lifted_to_the_smallest_active_counter() {
    let mut p = FairPolicy::new(FairConfig::default());
    let a = info(0, "a", "u", 0);
    p.on_arrive(&a);
    p.on_admit(&a);
    p.on_compute(&a, 0, 50);
    p.on_finish(&a);
    let b = info(1, "b", "v", 0);
    p.on_arrive(&b);
    p.on_admit(&b);
    p.on_compute(&b, 0, 500);
    // b arrived when nobody was active: lifted to where a left (110), then charged 1010.
    // a comes back while b is active: a starts at b's counter, not at its own 110.
    let a2 = info(2, "a", "u", 0);
    p.on_arrive(&a2);
    let st = p.tenant_stats();
    assert_eq!(st[0].virtual_counter, st[1].virtual_counter, "{st:?}");
    assert_eq!(st[1].virtual_counter, 110.0 + 10.0 + 1000.0);
}

/// Runs one request to completion; returns the prompt tokens it got from the cache.
fn cached_tokens(e: &mut Engine<FakeRunner>, tenant: &str, prompt: Vec<u32>) -> usize {
    let r = Request {
        tenant: Some(tenant.into()),
        ..Request::new(prompt, 2)
    };
    let id = e.submit(r).expect("fits");
    let mut cached = None;
    while e.has_work() {
        e.step();
        e.check_invariants().expect("invariants");
        for (rid, ev) in e.drain_events() {
            if let (true, crate::Event::Finished { usage, .. }) = (rid == id, ev) {
                cached = Some(usage.cached_tokens);
            }
        }
    }
    cached.expect("finished")
}

fn salted_engine(public: &[(&str, Vec<u32>)]) -> Engine<FakeRunner> {
    let mut c = EngineConfig {
        enable_prefix_cache: true,
        cache_salt_by_tenant: true,
        ..cfg()
    };
    for (t, p) in public {
        c.public_prefixes
            .entry(t.to_string())
            .or_default()
            .push(p.clone());
    }
    engine(c, fair(vec![]))
}

#[test]
fn identical_prompt_hits_only_its_own_tenants_cache() {
    let mut e = salted_engine(&[]);
    let p = sim::prompt(3, 0, 33, 1, 199);
    assert_eq!(cached_tokens(&mut e, "a", p.clone()), 0);
    assert_eq!(
        cached_tokens(&mut e, "b", p.clone()),
        0,
        "no hit across tenants"
    );
    assert_eq!(cached_tokens(&mut e, "a", p.clone()), 32, "own tenant hits");
}

#[test]
fn declared_public_prefix_is_shared_but_the_private_rest_is_not() {
    let public = sim::prompt(4, 0, 18, 1, 199);
    let mut e = salted_engine(&[("a", public.clone()), ("b", public.clone())]);
    let with = |seed| [public.clone(), sim::prompt(5, seed, 15, 1, 199)].concat();
    assert_eq!(cached_tokens(&mut e, "a", with(0)), 0);
    // b shares the prefix's full blocks (16 of 18 tokens), nothing of a's suffix.
    assert_eq!(cached_tokens(&mut e, "b", with(0)), 16);
    // c did not declare the prefix: its own partition.
    assert_eq!(cached_tokens(&mut e, "c", with(0)), 0);
}

#[test]
fn heavy_vs_light_scenario_keeps_light_ttft_within_twice_alone() {
    use super::scenario::Scenario;
    let c = EngineConfig {
        max_batched_tokens: 24,
        max_running: 8,
        ..cfg()
    };
    let s = Scenario::HeavyVsLight;
    let steps = 80;
    let (from, _) = s.window(steps);
    let p99 = |r: &sim::SimReport, i: usize| sim::quantile(&r.clients[i].ttft_since(from).0, 0.99);
    let mut e = engine(c.clone(), fair(vec![]));
    let shared = sim::run(
        &mut e,
        &s.clients(steps),
        steps,
        (1.0, 2.0),
        (1, VOCAB as u32),
    );
    let mut e = engine(c.clone(), fair(vec![]));
    let alone = sim::run(
        &mut e,
        &s.clients(steps)[1..],
        steps,
        (1.0, 2.0),
        (1, VOCAB as u32),
    );
    let mut e = engine(c, Box::new(Fcfs));
    let fcfs = sim::run(
        &mut e,
        &s.clients(steps),
        steps,
        (1.0, 2.0),
        (1, VOCAB as u32),
    );
    assert!(p99(&shared, 1) <= 2.0 * p99(&alone, 0));
    // Under FCFS the light requests queue behind the heavy backlog.
    assert!(p99(&fcfs, 1) > 2.0 * p99(&alone, 0));
}

#[test]
fn windows_tile_the_interval_with_a_shorter_last_one() {
    assert_eq!(sim::windows(10, 35, 10), vec![(10, 20), (20, 30), (30, 35)]);
    assert_eq!(sim::windows(0, 4, 0), vec![(0, 1), (1, 2), (2, 3), (3, 4)]);
    assert!(sim::windows(5, 5, 3).is_empty());
}

#[test]
fn window_shares_follow_the_service_of_each_window() {
    // Client a is served 3 per step for 10 steps then 1 per step; b 1 per step throughout.
    let cum = |f: &dyn Fn(u64) -> f64| (1..=20).map(|s| (0..s).map(f).sum()).collect();
    let mk = |name: &str, service| sim::ClientReport {
        name: name.into(),
        weight: 1.0,
        service,
        ..Default::default()
    };
    let r = sim::SimReport {
        clients: vec![
            mk("a", cum(&|s| if s < 10 { 3.0 } else { 1.0 })),
            mk("b", cum(&|_| 1.0)),
        ],
        steps: 20,
        ..Default::default()
    };
    let w = r.window_shares(0, 20, 10);
    assert_eq!(w, vec![vec![0.75, 0.5], vec![0.25, 0.5]]);
    assert_eq!(r.fair_shares(), vec![0.5, 0.5]);
    let dev = sim::max_window_deviation(&w, &r.fair_shares());
    assert!((dev - 0.25).abs() < 1e-12, "deviation {dev}");
    // A window in which nobody was served does not count as a deviation.
    assert_eq!(
        sim::max_window_deviation(&[vec![0.0, 0.5], vec![0.0, 0.5]], &[0.5, 0.5]),
        0.0
    );
}

#[test]
fn fair_policy_keeps_every_window_near_the_fair_share_and_fcfs_does_not() {
    let s = scenario::Scenario::HeavyVsLight;
    let summary = |policy| {
        let mut e = engine(cfg(), policy);
        let r = sim::run(&mut e, &heavy_light(), 300, (1.0, 2.0), (1, VOCAB as u32));
        s.summarize_windows(&r, 25)
    };
    let f = summary(fair(vec![]));
    // Steps 50..300 in windows of 25: ten windows per client, each window's shares sum to 1.
    for c in &f.clients {
        assert_eq!(c.share_by_window.len(), 10, "{}", c.name);
    }
    for w in 0..10 {
        let sum: f64 = f.clients.iter().map(|c| c.share_by_window[w]).sum();
        assert!((sum - 1.0).abs() < 1e-9, "window {w} sums to {sum}");
    }
    assert!(
        f.max_window_share_dev <= 0.1,
        "fair dev {}",
        f.max_window_share_dev
    );
    let c = summary(Box::new(Fcfs));
    assert!(
        c.max_window_share_dev > 0.1,
        "fcfs dev {}",
        c.max_window_share_dev
    );
}
