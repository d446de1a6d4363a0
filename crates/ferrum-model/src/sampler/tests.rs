use super::*;
use crate::ErrorKind;

fn sampler(params: SamplingParams, prompt: &[u32]) -> Sampler {
    Sampler::new(params, prompt).expect("valid params")
}

fn seeded(temperature: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

/// Softmax of `logits / t` in f64, computed independently of the sampler.
fn softmax(logits: &[f32], t: f64) -> Vec<f64> {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits.iter().map(|&l| ((l as f64 - m) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

fn histogram(s: &mut Sampler, logits: &[f32], draws: usize) -> Vec<usize> {
    let mut counts = vec![0usize; logits.len()];
    let mut row = logits.to_vec();
    for _ in 0..draws {
        counts[s.sample(&mut row).token as usize] += 1;
    }
    counts
}

fn chi_square(counts: &[usize], probs: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    counts
        .iter()
        .zip(probs)
        .filter(|(_, &p)| p > 0.0)
        .map(|(&c, &p)| {
            let e = p * n as f64;
            (c as f64 - e).powi(2) / e
        })
        .sum()
}

#[test]
fn greedy_is_argmax_with_lowest_id_on_ties() {
    let mut s = sampler(SamplingParams::default(), &[]);
    assert_eq!(s.sample(&mut [0.1, 2.0, -1.0, 0.3]).token, 1);
    assert_eq!(s.sample(&mut [5.0, 1.0, 5.0]).token, 0);
    assert_eq!(s.sample(&mut [f32::NAN, -3.0, -2.0]).token, 2);
    assert_eq!(s.distribution(&[0.0, 7.0, 7.0]), vec![(1, 1.0)]);
}

#[test]
fn same_seed_replays_the_same_stream_and_other_seeds_differ() {
    let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
    let run = |seed| {
        let mut s = sampler(seeded(1.0, seed), &[]);
        let mut row = logits.clone();
        (0..64)
            .map(|_| s.sample(&mut row).token)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn draw_frequencies_follow_the_tempered_softmax() {
    let logits = [1.0f32, 0.5, 0.0, -0.5, 2.0];
    let mut s = sampler(seeded(0.7, 42), &[]);
    let counts = histogram(&mut s, &logits, 20_000);
    // 4 degrees of freedom: 18.47 is the 0.1% critical value.
    let chi = chi_square(&counts, &softmax(&logits, 0.7));
    assert!(chi < 18.47, "chi-square {chi} counts {counts:?}");
    // The check has power: the same counts are far from the untempered softmax.
    let wrong = chi_square(&counts, &softmax(&logits, 1.0));
    assert!(wrong > 100.0, "chi-square vs T=1 only {wrong}");
}

#[test]
fn draws_follow_the_reported_distribution_under_truncation() {
    let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
    let params = SamplingParams {
        temperature: 1.3,
        top_k: 8,
        top_p: 0.9,
        min_p: 0.02,
        seed: Some(3),
        ..SamplingParams::default()
    };
    let mut s = sampler(params, &[]);
    let dist = s.distribution(&logits);
    let sum: f32 = dist.iter().map(|d| d.1).sum();
    assert!((sum - 1.0).abs() < 1e-5);
    assert!(dist.windows(2).all(|w| w[0].1 >= w[1].1));
    let mut probs = vec![0f64; logits.len()];
    for &(id, p) in &dist {
        probs[id as usize] = p as f64;
    }
    let counts = histogram(&mut s, &logits, 20_000);
    for (id, &c) in counts.iter().enumerate() {
        assert!(
            c == 0 || probs[id] > 0.0,
            "token {id} drawn outside support"
        );
    }
    // df = support - 1 <= 7: 24.32 is the 0.1% critical value for 7.
    let chi = chi_square(&counts, &probs);
    assert!(chi < 24.32, "chi-square {chi}");
}

#[test]
fn top_k_top_p_and_min_p_truncate_as_documented() {
    let probs = [0.5f32, 0.3, 0.15, 0.05];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let support = |top_k, top_p, min_p| {
        let p = SamplingParams {
            temperature: 1.0,
            top_k,
            top_p,
            min_p,
            ..SamplingParams::default()
        };
        let mut ids: Vec<u32> = sampler(p, &[])
            .distribution(&logits)
            .iter()
            .map(|d| d.0)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(support(0, 1.0, 0.0), vec![0, 1, 2, 3]);
    assert_eq!(support(2, 1.0, 0.0), vec![0, 1]);
    assert_eq!(support(0, 0.75, 0.0), vec![0, 1]);
    assert_eq!(support(0, 0.85, 0.0), vec![0, 1, 2]);
    assert_eq!(support(0, 0.4, 0.0), vec![0]);
    assert_eq!(support(0, 1.0, 0.2), vec![0, 1, 2]);
    assert_eq!(support(0, 1.0, 0.4), vec![0, 1]);
    assert_eq!(support(1, 0.99, 0.01), vec![0]);
    // Renormalised over the survivors.
    let p = SamplingParams {
        temperature: 1.0,
        top_k: 2,
        ..SamplingParams::default()
    };
    let d = sampler(p, &[]).distribution(&logits);
    assert!((d[0].1 - 0.625).abs() < 1e-6 && (d[1].1 - 0.375).abs() < 1e-6);
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() {
    let p = SamplingParams {
        repetition_penalty: 1.1,
        ..SamplingParams::default()
    };
    // 2.0 / 1.1 = 1.82 < 1.9: the prompt token loses its lead.
    let mut s = sampler(p.clone(), &[0]);
    assert_eq!(s.sample(&mut [2.0, 1.9]).token, 1);
    // -1.0 * 1.1 = -1.1 < -1.05.
    assert_eq!(s.sample(&mut [-1.0, -1.05]).token, 1);
    // Unseen tokens are untouched, and accepted output tokens count too.
    let mut s = sampler(p, &[]);
    assert_eq!(s.sample(&mut [2.0, 1.9]).token, 0);
    s.accept(0);
    assert_eq!(s.sample(&mut [2.0, 1.9]).token, 1);
}

#[test]
fn presence_and_frequency_penalties_count_generated_tokens_only() {
    let freq = SamplingParams {
        frequency_penalty: 0.1,
        ..SamplingParams::default()
    };
    let mut s = sampler(freq, &[0, 0, 0]);
    assert_eq!(s.sample(&mut [2.0, 1.85]).token, 0, "prompt must not count");
    s.accept(0);
    assert_eq!(
        s.sample(&mut [2.0, 1.85]).token,
        0,
        "1 x 0.1 keeps the lead"
    );
    s.accept(0);
    assert_eq!(s.sample(&mut [2.0, 1.85]).token, 1, "2 x 0.1 loses it");

    let presence = SamplingParams {
        presence_penalty: 0.5,
        ..SamplingParams::default()
    };
    let mut s = sampler(presence, &[]);
    s.accept(1);
    s.accept(1);
    s.accept(1);
    // Presence is flat: 3.0 - 0.5 = 2.5 still beats 2.4, however often token 1 appeared.
    assert_eq!(s.sample(&mut [2.4, 3.0]).token, 1);
    assert_eq!(s.sample(&mut [2.6, 3.0]).token, 0);
}

#[test]
fn sample_restores_logits_and_reports_raw_logprobs() {
    let p = SamplingParams {
        temperature: 0.5,
        repetition_penalty: 1.5,
        presence_penalty: 1.0,
        seed: Some(1),
        top_logprobs: 3,
        ..SamplingParams::default()
    };
    let raw = [1.0f32, 3.0, 2.0, -1.0, 0.5];
    let mut s = sampler(p, &[1]);
    s.accept(2);
    let mut row = raw;
    let out = s.sample(&mut row);
    assert_eq!(row, raw, "penalties must not leak into the caller's row");
    let lp = softmax(&raw, 1.0);
    let want = lp[out.token as usize].ln() as f32;
    assert!(
        (out.logprob - want).abs() < 1e-5,
        "{} vs {want}",
        out.logprob
    );
    assert_eq!(
        out.top.iter().map(|t| t.0).collect::<Vec<_>>(),
        vec![1, 2, 0]
    );
    for &(id, l) in &out.top {
        assert!((l - lp[id as usize].ln() as f32).abs() < 1e-5);
    }
}

#[test]
fn top_logprobs_are_sorted_normalised_log_softmax() {
    let logits: Vec<f32> = (0..1000)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
        .collect();
    let all = top_logprobs(&logits, logits.len());
    assert_eq!(all.len(), logits.len());
    let mass: f64 = all.iter().map(|&(_, l)| (l as f64).exp()).sum();
    assert!((mass - 1.0).abs() < 1e-4, "mass {mass}");
    assert!(all.windows(2).all(|w| w[0].1 >= w[1].1));
    let top = top_logprobs(&logits, 20);
    assert_eq!(top.len(), 20);
    assert_eq!(&top[..], &all[..20]);
    assert!(top.iter().all(|&(_, l)| l <= 0.0));
    // Ties are reported lowest id first.
    let ties = top_logprobs(&[1.0, 2.0, 2.0, 2.0], 2);
    let l = 2.0 - (1f64.exp() + 3.0 * 2f64.exp()).ln();
    assert_eq!(ties.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
    assert!(ties.iter().all(|t| (t.1 as f64 - l).abs() < 1e-6));
    assert!(top_logprobs(&[], 5).is_empty());
    assert!(top_logprobs(&logits, 0).is_empty());
}

#[test]
fn validate_names_the_offending_field() {
    let cases: Vec<(SamplingParams, &str)> = vec![
        (seeded(-0.1, 0), "temperature"),
        (seeded(f32::NAN, 0), "temperature"),
        (seeded(f32::INFINITY, 0), "temperature"),
        (
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingParams {
                top_p: 1.01,
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingParams {
                min_p: -0.01,
                ..Default::default()
            },
            "min_p",
        ),
        (
            SamplingParams {
                min_p: f32::NAN,
                ..Default::default()
            },
            "min_p",
        ),
        (
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            "repetition_penalty",
        ),
        (
            SamplingParams {
                presence_penalty: 2.5,
                ..Default::default()
            },
            "presence_penalty",
        ),
        (
            SamplingParams {
                frequency_penalty: -2.01,
                ..Default::default()
            },
            "frequency_penalty",
        ),
        (
            SamplingParams {
                top_logprobs: 21,
                ..Default::default()
            },
            "top_logprobs",
        ),
    ];
    for (p, field) in cases {
        let e = p.validate().expect_err(field);
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.msg.starts_with(field), "{field}: {}", e.msg);
        assert!(Sampler::new(p, &[]).is_err());
    }
    let ok = SamplingParams {
        temperature: 2.0,
        top_k: 40,
        top_p: 1.0,
        min_p: 1.0,
        repetition_penalty: 0.5,
        presence_penalty: -2.0,
        frequency_penalty: 2.0,
        seed: Some(0),
        top_logprobs: 20,
    };
    assert!(ok.validate().is_ok());
}

#[test]
fn partial_json_fills_greedy_defaults() {
    let p: SamplingParams =
        serde_json::from_str(r#"{"temperature":0.8,"seed":5}"#).expect("parses");
    assert_eq!(
        p,
        SamplingParams {
            temperature: 0.8,
            seed: Some(5),
            ..SamplingParams::default()
        }
    );
}

#[test]
fn degenerate_rows_do_not_panic() {
    let mut s = sampler(seeded(1.0, 0), &[]);
    let out = s.sample(&mut []);
    assert_eq!(out.token, 0);
    let out = s.sample(&mut [f32::NAN, f32::NEG_INFINITY]);
    assert!(out.token < 2);
    assert!(s.distribution(&[]).is_empty());
    // Penalised ids beyond the row are ignored.
    let p = SamplingParams {
        repetition_penalty: 1.3,
        ..seeded(1.0, 0)
    };
    let mut s = sampler(p, &[u32::MAX, 5]);
    s.accept(1_000_000);
    assert!(s.sample(&mut [0.0, 1.0]).token < 2);
}
