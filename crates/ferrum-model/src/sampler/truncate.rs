//! The candidate pipeline shared by [`super::Sampler::sample`] and
//! [`super::Sampler::distribution`]: temperature, then top-k, then top-p, then min-p.
//!
//! Sharing one function is what makes speculative decoding exact later: the distribution the
//! verifier reasons about is, bit for bit, the one the sampler draws from.
//!
//! Cost per token is one pass over the vocabulary plus work proportional to the survivors:
//! top-k is a partial selection, top-p sorts a prefix that grows geometrically until it holds
//! the nucleus, and min-p is a threshold on the logit (no sort at all).

use std::cmp::Ordering;

use super::SamplingParams;

/// Size of the first sorted prefix tried when looking for the top-p nucleus; real nuclei
/// are usually a few dozen tokens, so one or two rounds suffice.
const FIRST_NUCLEUS_CHUNK: usize = 64;

/// Orders `(id, value)` pairs by value descending, then id ascending, so ties break the same
/// way everywhere (lowest id first) whatever the selection algorithm does internally.
pub(crate) fn desc(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.partial_cmp(&a.1)
        .unwrap_or(Ordering::Equal)
        .then(a.0.cmp(&b.0))
}

/// Index of the largest logit, lowest id on ties, NaN ignored; 0 when there is none, so a
/// broken logits row degrades to a valid token instead of a panic.
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    let mut found = false;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v || (!found && v == best_v) {
            best = i;
            best_v = v;
            found = true;
        }
    }
    best as u32
}

/// Largest logit ignoring NaN (`-inf` when there is none).
pub(crate) fn max_logit(logits: &[f32]) -> f32 {
    logits
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Fills `cand` with the tokens that survive temperature/top-k/top-p/min-p as
/// `(id, weight)`, weight being the unnormalised probability `exp((l - max) / T)`, and returns
/// the sum of the weights. Requires a non-greedy `p` (temperature > 0).
///
/// When the result has more than one entry its order is unspecified unless top-p ran (then it is
/// sorted descending); callers that need an order sort the survivors themselves.
pub(crate) fn candidates(logits: &[f32], p: &SamplingParams, cand: &mut Vec<(u32, f32)>) -> f64 {
    cand.clear();
    let m = max_logit(logits);
    if m == f32::NEG_INFINITY {
        // Nothing has any mass (empty row, or all -inf/NaN): fall back to one token.
        if !logits.is_empty() {
            cand.push((argmax(logits), 1.0));
        }
        return cand.len() as f64;
    }
    let inv_t = 1.0 / p.temperature;
    let top_p_on = p.top_p < 1.0;
    let top_k_on = p.top_k > 0 && p.top_k < logits.len();
    let ln_min_p = if p.min_p > 0.0 {
        p.min_p.ln()
    } else {
        f32::NEG_INFINITY
    };
    // Min-p is a threshold relative to the max, so it can prune during the fill, except when
    // top-p must normalise over a top-k set that includes tokens min-p would drop.
    let prefilter = if top_p_on && top_k_on {
        f32::NEG_INFINITY
    } else {
        ln_min_p
    };
    // Top-p without top-k normalises over the whole vocabulary: sum it during the fill.
    let need_full_sum = top_p_on && !top_k_on;
    let mut full_sum = 0f64;
    for (i, &l) in logits.iter().enumerate() {
        // `l == m` guards inf - inf; NaN fails both comparisons below and is dropped.
        let z = if l == m { 0.0 } else { (l - m) * inv_t };
        if z > f32::NEG_INFINITY {
            if need_full_sum {
                full_sum += f64::from(z.exp());
            }
            if z >= prefilter {
                cand.push((i as u32, z));
            }
        }
    }

    if top_k_on && cand.len() > p.top_k {
        cand.select_nth_unstable_by(p.top_k - 1, desc);
        cand.truncate(p.top_k);
    }

    if top_p_on {
        let total = if need_full_sum {
            full_sum
        } else {
            cand.iter().map(|&(_, z)| f64::from(z.exp())).sum()
        };
        let n = nucleus_len(cand, total * f64::from(p.top_p));
        cand.truncate(n);
    }

    if ln_min_p > prefilter {
        cand.retain(|&(_, z)| z >= ln_min_p);
    }

    let mut sum = 0f64;
    for c in cand.iter_mut() {
        c.1 = c.1.exp();
        sum += f64::from(c.1);
    }
    sum
}

/// Sorts a growing prefix of `cand` (descending) until its cumulative mass reaches `target`,
/// and returns the prefix length (at least 1 when `cand` is not empty). Each round selects
/// only within the unsorted tail, so the total cost stays linear plus the sort of the nucleus.
fn nucleus_len(cand: &mut [(u32, f32)], target: f64) -> usize {
    let mut sorted = 0usize;
    let mut cum = 0f64;
    let mut chunk = FIRST_NUCLEUS_CHUNK;
    while sorted < cand.len() {
        let end = (sorted + chunk).min(cand.len());
        let tail = &mut cand[sorted..];
        if end < cand.len() {
            tail.select_nth_unstable_by(end - sorted - 1, desc);
        }
        tail[..end - sorted].sort_unstable_by(desc);
        for (i, &(_, z)) in cand[sorted..end].iter().enumerate() {
            cum += f64::from(z.exp());
            if cum >= target {
                return sorted + i + 1;
            }
        }
        sorted = end;
        chunk *= 4;
    }
    cand.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(t: f32, k: usize, top_p: f32, min_p: f32) -> SamplingParams {
        SamplingParams {
            temperature: t,
            top_k: k,
            top_p,
            min_p,
            ..SamplingParams::default()
        }
    }

    /// Straightforward full-sort implementation of the same semantics, as the oracle.
    fn reference(logits: &[f32], p: &SamplingParams) -> Vec<(u32, f64)> {
        let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut all: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, (l - m) / p.temperature))
            .collect();
        all.sort_by(desc);
        if p.top_k > 0 {
            all.truncate(p.top_k);
        }
        let total: f64 = all.iter().map(|&(_, z)| f64::from(z.exp())).sum();
        let mut keep = all.len();
        let mut cum = 0.0;
        for (i, &(_, z)) in all.iter().enumerate() {
            cum += f64::from(z.exp());
            if p.top_p < 1.0 && cum >= total * f64::from(p.top_p) {
                keep = i + 1;
                break;
            }
        }
        all.truncate(keep);
        let pmax = f64::from(all[0].1.exp());
        all.retain(|&(_, z)| f64::from(z.exp()) >= f64::from(p.min_p) * pmax - 1e-12);
        let s: f64 = all.iter().map(|&(_, z)| f64::from(z.exp())).sum();
        all.iter()
            .map(|&(id, z)| (id, f64::from(z.exp()) / s))
            .collect()
    }

    fn normalised_sorted(logits: &[f32], p: &SamplingParams) -> Vec<(u32, f64)> {
        let mut cand = Vec::new();
        let sum = candidates(logits, p, &mut cand);
        cand.sort_by(desc);
        cand.iter()
            .map(|&(id, w)| (id, f64::from(w) / sum))
            .collect()
    }

    #[test]
    fn argmax_prefers_lowest_id_on_ties_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, f32::NAN, 0.7]), 3);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn nucleus_grows_past_the_first_chunk() {
        // 1000 nearly uniform logits: a 0.9 nucleus needs ~900 tokens, i.e. three rounds.
        let logits: Vec<f32> = (0..1000).map(|i| (i % 7) as f32 * 0.01).collect();
        let p = params(1.0, 0, 0.9, 0.0);
        let got = normalised_sorted(&logits, &p);
        let want = reference(&logits, &p);
        assert!(got.len() > 4 * FIRST_NUCLEUS_CHUNK, "nucleus {}", got.len());
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.0, w.0);
            assert!((g.1 - w.1).abs() < 1e-6);
        }
    }

    #[test]
    fn infinite_and_nan_logits_do_not_poison_the_candidates() {
        let p = params(0.8, 0, 0.9, 0.05);
        let mut cand = Vec::new();
        let sum = candidates(&[f32::NAN, f32::NEG_INFINITY, 1.0, 0.5], &p, &mut cand);
        assert!(sum.is_finite() && sum > 0.0);
        assert!(cand.iter().all(|&(id, _)| id == 2 || id == 3));
        let sum = candidates(&[f32::INFINITY, 1.0, f32::INFINITY], &p, &mut cand);
        assert!(sum.is_finite());
        cand.sort_by(desc);
        assert_eq!(cand.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(candidates(&[f32::NAN; 3], &p, &mut cand), 1.0);
        assert_eq!(cand, vec![(0, 1.0)]);
        assert_eq!(candidates(&[], &p, &mut cand), 0.0);
        assert!(cand.is_empty());
    }

    proptest! {
        #[test]
        fn pipeline_matches_full_sort_reference(
            logits in proptest::collection::vec(-20.0f32..20.0, 1..400),
            t in 0.05f32..3.0,
            k in 0usize..50,
            top_p in 0.05f32..=1.0,
            min_p in prop_oneof![Just(0.0f32), 0.0f32..0.5],
        ) {
            let p = params(t, k, top_p, min_p);
            let got = normalised_sorted(&logits, &p);
            let want = reference(&logits, &p);
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                prop_assert_eq!(g.0, w.0);
                prop_assert!((g.1 - w.1).abs() < 1e-5, "{} vs {}", g.1, w.1);
            }
        }
    }
}
