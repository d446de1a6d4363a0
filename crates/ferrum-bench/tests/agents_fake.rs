//! `ferrum bench agents` end to end on the fake model (hermetic, about a second): agents
//! name their program and tool, the server traces every turn, and the replay of that trace
//! under the live policy agrees with the live hit rate.

mod common;

use common::{start_fake_server, FakeServer};
use std::path::PathBuf;
use std::time::Duration;

use ferrum_bench::agents::live::{run_live, scrape_metrics, LiveConfig};
use ferrum_bench::agents::replay::{replay, ReplayConfig};
use ferrum_bench::agents::trace::{parse_trace, programs};
use ferrum_bench::agents::workload::{plan, AgentSpec};
use ferrum_engine::{EngineConfig, KvRetention, RetentionConfig};
use ferrum_server::{ServerConfig, TraceSink};

fn start(policy: KvRetention, trace: TraceSink) -> FakeServer {
    let cfg = EngineConfig {
        num_blocks: 512,
        max_model_len: 4096,
        retention: RetentionConfig {
            policy,
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

#[test]
fn agents_are_traced_and_replay_agrees_with_the_live_hit_rate() {
    let path: PathBuf =
        std::env::temp_dir().join(format!("ferrum-agents-{}.jsonl", std::process::id()));
    let server = start(KvRetention::Ttl, TraceSink::create(&path).unwrap());
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
        url: format!("http://{}", server.addr),
        model: None,
        output_len: 8,
        timeout: Duration::from_secs(30),
    };
    let live = run_live(&cfg, &plans).unwrap();
    assert_eq!(live.errors, 0, "{:?}", live.programs);
    assert_eq!(live.programs.len(), 3);
    assert!(live.programs.iter().all(|p| p.turns.len() == 3));
    // Later turns resend the history, which the server still holds.
    assert!(live.hit_rate > 0.5, "hit rate {}", live.hit_rate);
    let m = scrape_metrics(&cfg.url).unwrap();
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
