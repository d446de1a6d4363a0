use super::trace::{TraceProgram, TraceTurn};
use super::*;

/// `agents` programs of `turns` turns: each turn adds `grow` prompt tokens to the history;
/// every third tool call (staggered by agent) is long (gap `long_s`), the others short
/// (gap `short_s`).
fn trace(agents: usize, turns: usize, grow: usize, short_s: f64, long_s: f64) -> Vec<TraceProgram> {
    let tool = |a: usize, k: usize| {
        if (a + k).is_multiple_of(3) {
            ("run_tests", long_s)
        } else {
            ("grep", short_s)
        }
    };
    (0..agents)
        .map(|a| {
            let mut prompt = 0;
            let turns = (0..turns)
                .map(|k| {
                    prompt += grow + if k > 0 { 8 } else { 0 };
                    let gap = k.checked_sub(1).map(|j| tool(a, j).1);
                    TraceTurn {
                        program: format!("agent-{a}"),
                        turn: k as u64,
                        tool: Some(tool(a, k).0.to_string()),
                        prev_tool: k.checked_sub(1).map(|j| tool(a, j).0.to_string()),
                        arrival_s: a as f64 * 0.01,
                        first_token_s: None,
                        finish_s: 0.0,
                        prompt_tokens: prompt,
                        cached_tokens: 0,
                        output_tokens: 8,
                        gap_s: gap,
                    }
                })
                .collect();
            TraceProgram {
                id: format!("agent-{a}"),
                turns,
                end_after_s: None,
            }
        })
        .collect()
}

fn cfg(policy: KvRetention, kv_cache_tokens: usize) -> ReplayConfig {
    ReplayConfig {
        policy,
        kv_cache_tokens,
        // Fixed here so the scenarios do not move with the default's calibration.
        cost: CostModel {
            prefill_tps: 1500.0,
            decode_step_s: 0.012,
            decode_seq_s: 0.002,
        },
        ..ReplayConfig::default()
    }
}

#[test]
fn with_room_for_everything_every_policy_hits_the_whole_history() {
    let t = trace(4, 4, 64, 0.5, 20.0);
    let lru = replay(&t, &cfg(KvRetention::Lru, 16_384)).unwrap();
    let ttl = replay(&t, &cfg(KvRetention::Ttl, 16_384)).unwrap();
    assert_eq!(lru.turns, 16);
    // Only the history's last partial block (and its last token) is recomputed.
    for (_, turns) in &lru.per_program {
        assert!(turns.iter().all(|t| t.reprefill_tokens < 32), "{turns:?}");
    }
    assert_eq!(lru.reprefill_tokens, ttl.reprefill_tokens);
    assert_eq!(lru.cached_tokens, ttl.cached_tokens);
    assert_eq!(lru.pinned_block_seconds, 0.0);
}

#[test]
fn under_pressure_ttl_keeps_short_tool_programs_and_finishes_sooner() {
    // 8 agents growing to ~800 tokens each (6,400 in all) in a 4,096-token pool.
    let t = trace(8, 8, 100, 0.3, 20.0);
    let lru = replay(&t, &cfg(KvRetention::Lru, 4096)).unwrap();
    let ttl = replay(&t, &cfg(KvRetention::Ttl, 4096)).unwrap();
    let short = |r: &ReplayReport| {
        r.reprefill_by_tool
            .iter()
            .find(|(k, _)| k == "grep")
            .map_or(0, |x| x.1)
    };
    assert!(
        short(&lru) > 0,
        "lru must thrash: {:?}",
        lru.reprefill_by_tool
    );
    assert!(
        short(&ttl) * 4 <= short(&lru) * 3,
        "ttl {} vs lru {}",
        short(&ttl),
        short(&lru)
    );
    assert!(ttl.hit_rate > lru.hit_rate);
    assert!(ttl.mean_jct_s < lru.mean_jct_s);
    assert!(ttl.pinned_block_seconds > 0.0);
}

#[test]
fn a_program_ended_in_the_trace_releases_its_pin_when_it_did_live() {
    // Last turns name a long tool, so ttl would pin them for seconds unless ended.
    let open = trace(4, 3, 64, 0.3, 20.0);
    let mut ended = open.clone();
    for p in &mut ended {
        p.end_after_s = Some(0.05);
    }
    let kept = replay(&open, &cfg(KvRetention::Ttl, 16_384)).unwrap();
    let released = replay(&ended, &cfg(KvRetention::Ttl, 16_384)).unwrap();
    assert_eq!(kept.retention.released, 0);
    assert_eq!(released.retention.released, 4, "{:?}", released.retention);
    assert!(
        released.pinned_block_seconds < kept.pinned_block_seconds,
        "{} vs {}",
        released.pinned_block_seconds,
        kept.pinned_block_seconds
    );
    // Ending programs changes no turn's cache hits here (nothing else wanted the room).
    assert_eq!(released.cached_tokens, kept.cached_tokens);
}

#[test]
fn a_turn_larger_than_the_pool_is_an_error() {
    let t = trace(1, 2, 600, 0.5, 1.0);
    assert!(replay(&t, &cfg(KvRetention::Lru, 512)).is_err());
}

#[test]
fn programs_are_closed_loops_whose_turns_wait_for_the_tool() {
    let t = trace(1, 3, 32, 2.0, 2.0);
    let r = replay(&t, &cfg(KvRetention::Lru, 4096)).unwrap();
    let turns = &r.per_program[0].1;
    for w in turns.windows(2) {
        let gap = w[1].arrival_s - w[0].finish_s;
        assert!((gap - 2.0).abs() < 0.05, "gap {gap}");
    }
    assert!(r.mean_jct_s > 4.0);
}

#[test]
fn shadow_mode_predicts_ttl_hits_within_ten_percent_under_pressure() {
    // The pressure scenario above: lru thrashes, ttl keeps short-tool programs.
    shadow_predicts_ttl_within_ten_percent(&trace(8, 8, 100, 0.3, 20.0), 4096, 64);
}

fn shadow_predicts_ttl_within_ten_percent(t: &[TraceProgram], pool: usize, max_running: usize) {
    let cfg = |policy| ReplayConfig {
        max_running,
        ..cfg(policy, pool)
    };
    let ttl = replay(t, &cfg(KvRetention::Ttl)).unwrap();
    let shadow = replay(
        t,
        &ReplayConfig {
            shadow: true,
            ..cfg(KvRetention::Lru)
        },
    )
    .unwrap();
    let lru = replay(t, &cfg(KvRetention::Lru)).unwrap();
    assert_eq!(shadow.policy, "shadow");
    assert_eq!(
        shadow.cached_tokens, lru.cached_tokens,
        "shadow changes nothing"
    );
    let predicted = shadow.retention.shadow_hit_tokens as f64;
    let delivered = ttl.cached_tokens as f64;
    assert!(
        predicted > lru.cached_tokens as f64,
        "predicts a gain: {predicted} vs lru {}",
        lru.cached_tokens
    );
    assert!(
        (predicted - delivered).abs() <= 0.1 * delivered,
        "predicted {predicted}, ttl delivered {delivered}"
    );
    assert_eq!(shadow.retention.shadow_prompt_tokens, shadow.prompt_tokens);
}

#[test]
fn the_prefill_speed_fitted_to_a_trace_is_its_prefilled_tokens_over_busy_time() {
    let turn =
        |program: &str, arrival_s: f64, finish_s: f64, prompt: usize, cached: usize| TraceTurn {
            program: program.into(),
            turn: 0,
            tool: None,
            prev_tool: None,
            arrival_s,
            first_token_s: None,
            finish_s,
            prompt_tokens: prompt,
            cached_tokens: cached,
            output_tokens: 10,
            gap_s: None,
        };
    let prog = |id: &str, turns| TraceProgram {
        id: id.into(),
        turns,
        end_after_s: None,
    };
    // Busy [0, 3] (two overlapping turns) and [5, 6]: 4 s; an idle gap of 2 s between.
    let t = vec![
        prog(
            "a",
            vec![turn("a", 0.0, 2.0, 300, 100), turn("a", 5.0, 6.0, 400, 300)],
        ),
        prog("b", vec![turn("b", 1.0, 3.0, 200, 0)]),
    ];
    let base = CostModel {
        prefill_tps: 1.0,
        decode_step_s: 0.01,
        decode_seq_s: 0.0,
    };
    let fit = base.fitted_to(&t).unwrap();
    // 500 tokens prefilled in 4 s less 30 decode steps of 10 ms.
    assert!((fit.prefill_tps - 500.0 / 3.7).abs() < 1e-6, "{fit:?}");
    assert_eq!(fit.decode_step_s, base.decode_step_s);
    // Nothing prefilled: nothing to fit.
    let cached = vec![prog("c", vec![turn("c", 0.0, 1.0, 100, 100)])];
    assert_eq!(base.fitted_to(&cached), None);
}
