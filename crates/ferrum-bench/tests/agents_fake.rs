//! `ferrum bench agents` end to end on the fake model (hermetic, about a second): agents
//! name their program and tool, the server traces every turn, and the replay of that trace
//! under the live policy agrees with the live hit rate.

mod common;

use common::{start_fake_server, FakeServer};
use std::path::PathBuf;
use std::time::Duration;

use ferrum_bench::agents::live::{run_live, scrape_metrics, LiveConfig, LiveReport};
use ferrum_bench::agents::replay::{replay, ReplayConfig};
use ferrum_bench::agents::trace::{parse_trace, programs};
use ferrum_bench::agents::workload::{plan, AgentPlan, AgentSpec};
use ferrum_engine::{EngineConfig, KvRetention, RetentionConfig};
use ferrum_server::{ServerConfig, TraceSink};

/// A fake-model server with retention `policy` (and shadow mode if `shadow`) tracing to `trace`.
fn start(policy: KvRetention, shadow: bool, trace: TraceSink) -> FakeServer {
    let cfg = EngineConfig {
        num_blocks: 512,
        max_model_len: 4096,
        retention: RetentionConfig {
            policy,
            shadow,
            ..RetentionConfig::default()
        },
        ..EngineConfig::default()
    };
    start_fake_server(
        cfg,
        ServerConfig {
            trace: Some(trace),
            ..ServerConfig::default()
        },
    )
}

/// Runs 3 agents x 3 turns (tools scaled to milliseconds) against `url`.
fn run_agents(url: &str) -> (Vec<AgentPlan>, LiveReport) {
    let spec = AgentSpec {
        agents: 3,
        turns: 3,
        time_scale: 0.01,
        task_words: 30,
        result_words: 10,
        output_len: 8,
        ..AgentSpec::default()
    };
    let plans = plan(&spec).unwrap();
    let cfg = LiveConfig {
        url: url.to_string(),
        model: None,
        output_len: 8,
        timeout: Duration::from_secs(30),
    };
    let live = run_live(&cfg, &plans).unwrap();
    assert_eq!(live.errors, 0, "{:?}", live.programs);
    (plans, live)
}

#[test]
fn agents_are_traced_and_replay_agrees_with_the_live_hit_rate() {
    let path: PathBuf =
        std::env::temp_dir().join(format!("ferrum-agents-{}.jsonl", std::process::id()));
    let server = start(KvRetention::Ttl, false, TraceSink::create(&path).unwrap());
    let url = format!("http://{}", server.addr);
    let (plans, live) = run_agents(&url);
    assert_eq!(live.programs.len(), 3);
    assert!(live.programs.iter().all(|p| p.turns.len() == 3));
    // Later turns resend the history, which the server still holds.
    assert!(live.hit_rate > 0.5, "hit rate {}", live.hit_rate);
    let m = scrape_metrics(&url).unwrap();
    assert_eq!(m["ferrum_program_turns_total"], 9.0);
    assert_eq!(m["ferrum_program_returns_total"], 6.0);
    drop(server);

    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let trace = parse_trace(&text).unwrap();
    assert_eq!(trace.turns.len(), 9);
    // Each agent ended its program after its last turn, and the trace says so.
    assert_eq!(trace.ends.len(), 3);
    let progs = programs(trace);
    assert_eq!(progs.len(), 3);
    assert!(progs.iter().all(|p| p.end_after_s.is_some()));
    for p in &progs {
        let plan = plans.iter().find(|x| x.id == p.id).unwrap();
        assert_eq!(p.turns[0].tool.as_deref(), Some(plan.calls[0].tool));
        assert!(p.turns[1].gap_s.unwrap() >= plan.calls[0].duration_s * 0.9);
    }
    let r = replay(
        &progs,
        &ReplayConfig {
            policy: KvRetention::Ttl,
            kv_cache_tokens: 512 * 16,
            ..ReplayConfig::default()
        },
    )
    .unwrap();
    assert!((r.trace_hit_rate - live.hit_rate).abs() < 1e-9);
    assert!(
        (r.hit_rate - live.hit_rate).abs() < 0.1,
        "replay {} vs live {}",
        r.hit_rate,
        live.hit_rate
    );
}

#[test]
fn shadow_mode_replays_the_served_turns_under_ttl_and_lru() {
    let path: PathBuf =
        std::env::temp_dir().join(format!("ferrum-agents-shadow-{}.jsonl", std::process::id()));
    let server = start(KvRetention::Lru, true, TraceSink::create(&path).unwrap());
    let _ = std::fs::remove_file(&path);
    let url = format!("http://{}", server.addr);
    let before = scrape_metrics(&url).unwrap();
    assert!(
        !before.contains_key("ferrum_retention_shadow_sim_turns"),
        "no prediction before the first turn"
    );
    let (_, live) = run_agents(&url);
    let m = scrape_metrics(&url).unwrap();
    assert_eq!(m["ferrum_retention_shadow_sim_turns"], 9.0);
    assert_eq!(
        m["ferrum_retention_shadow_sim_live_cached_tokens"],
        live.cached_tokens as f64
    );
    // The pool holds every history: simulated lru serves what live lru served, and the
    // bench reads the ttl prediction (which pins can only add to).
    assert_eq!(live.shadow_sim_lru_hit_tokens, live.cached_tokens as f64);
    assert!(live.shadow_sim_hit_tokens >= live.shadow_sim_lru_hit_tokens);
    assert!(
        live.shadow_sim_hit_rate > 0.5,
        "{}",
        live.shadow_sim_hit_rate
    );
    assert!(live.shadow_sim_mean_jct_s > 0.0);
}
