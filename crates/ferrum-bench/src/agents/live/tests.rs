use super::*;

#[test]
fn metrics_text_parses_to_named_values() {
    let m = parse_metrics(
        "# HELP x y\nferrum_retention_pinned_block_seconds_total 2.5\nferrum_retention_returns_total{pinned=\"true\"} 3\nbad line x\n",
    );
    assert_eq!(m["ferrum_retention_pinned_block_seconds_total"], 2.5);
    assert_eq!(m["ferrum_retention_returns_total{pinned=\"true\"}"], 3.0);
    assert_eq!(m.len(), 2);
}

#[test]
fn summary_splits_reprefill_by_the_tool_mode_before_the_turn() {
    let turn = |reprefill, after_short, prompt, cached| LiveTurn {
        ttft_s: 0.5,
        prompt_tokens: prompt,
        cached_tokens: cached,
        reprefill_tokens: reprefill,
        after_short,
        ..LiveTurn::default()
    };
    let p = |jct_s, turns| LiveProgram {
        id: "a".into(),
        jct_s,
        turns,
        error: None,
    };
    let r = summarize(vec![
        p(
            2.0,
            vec![turn(0, None, 100, 0), turn(80, Some(true), 200, 100)],
        ),
        p(
            4.0,
            vec![turn(0, None, 100, 0), turn(150, Some(false), 200, 0)],
        ),
    ]);
    assert_eq!(r.mean_jct_s, 3.0);
    assert_eq!(r.reprefill_tokens, 230);
    assert_eq!(r.reprefill_tokens_short, 80);
    assert_eq!(r.reprefill_tokens_long, 150);
    assert!((r.hit_rate - 100.0 / 600.0).abs() < 1e-12);
    assert_eq!(r.to_json()["programs"][1]["reprefill_tokens"][1], 150);
}

#[test]
fn shadow_rate_is_hit_over_prompt_tokens_and_zero_without_turns() {
    assert_eq!(shadow_rate(300.0, 400.0), 0.75);
    assert_eq!(shadow_rate(0.0, 0.0), 0.0);
}
