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

use super::math::{exp_approx, max_value, sum_exp};
use super::SamplingParams;

/// Size of the first sorted prefix tried when looking for the top-p nucleus; real nuclei
/// are usually a few dozen tokens, so one or two rounds suffice.
const FIRST_NUCLEUS_CHUNK: usize = 64;

/// Logits are scanned in blocks of this size so whole blocks can be rejected on their maximum.
const SKIP_BLOCK: usize = 64;

/// Largest k served by the one-pass insertion top-k; beyond it a partial selection is cheaper.
const SMALL_K: usize = 64;

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
    let m = max_value(logits);
    logits.iter().position(|&v| v == m).unwrap_or(0) as u32
}

/// Fills `cand` with the tokens that survive temperature/top-k/top-p/min-p as
/// `(id, weight)`, weight being the unnormalised probability `exp((l - max) / T)`, and returns
/// the sum of the weights. Requires a non-greedy `p` (temperature > 0).
///
/// When the result has more than one entry its order is unspecified; callers that need an
/// order sort the survivors themselves.
pub(crate) fn candidates(logits: &[f32], p: &SamplingParams, cand: &mut Vec<(u32, f32)>) -> f64 {
    cand.clear();
    let m = max_value(logits);
    if m == f32::NEG_INFINITY {
        // Nothing has any mass (empty row, or all -inf/NaN): fall back to one token.
        if !logits.is_empty() {
            cand.push((argmax(logits), 1.0));
        }
        return cand.len() as f64;
    }
    if m == f32::INFINITY {
        // Infinitely likely tokens share all the mass.
        cand.extend(
            (0..logits.len() as u32)
                .filter(|&i| logits[i as usize] == m)
                .map(|i| (i, 1.0)),
        );
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
    let mut threshold = if top_p_on && top_k_on {
        f32::NEG_INFINITY
    } else {
        ln_min_p
    };
    // Top-p without top-k normalises over the whole vocabulary.
    let mut full_sum = 0f64;
    if top_p_on && !top_k_on {
        full_sum = sum_exp(logits, m, inv_t);
        // A token lighter than (1 - top_p) / n of the mass is never in the nucleus: all the
        // tokens at least as light weigh less than 1 - top_p together. Half the bound leaves
        // a margin for rounding.
        let floor = (1.0 - f64::from(p.top_p)) * full_sum / logits.len() as f64 * 0.5;
        threshold = threshold.max(floor.ln() as f32);
    }

    if top_k_on && p.top_k <= SMALL_K {
        fill_top_k_small(logits, m, inv_t, threshold, p.top_k, cand);
    } else {
        for (b, block) in logits.chunks(SKIP_BLOCK).enumerate() {
            // The block maximum is never NaN, so `<` really means "all below".
            if (max_value(block) - m) * inv_t < threshold {
                continue;
            }
            for (j, &l) in block.iter().enumerate() {
                let z = (l - m) * inv_t;
                if has_mass_above(z, threshold) {
                    cand.push(((b * SKIP_BLOCK + j) as u32, z));
                }
            }
        }
        if top_k_on && cand.len() > p.top_k {
            cand.select_nth_unstable_by(p.top_k - 1, desc);
            cand.truncate(p.top_k);
        }
    }

    if top_p_on {
        let total = if top_k_on {
            cand.iter().map(|&(_, z)| f64::from(exp_approx(z))).sum()
        } else {
            full_sum
        };
        let n = nucleus_len(cand, total * f64::from(p.top_p));
        cand.truncate(n);
    }

    if ln_min_p > threshold {
        cand.retain(|&(_, z)| z >= ln_min_p);
    }

    let mut sum = 0f64;
    for c in cand.iter_mut() {
        c.1 = exp_approx(c.1);
        sum += f64::from(c.1);
    }
    sum
}

/// Whether `p` keeps the whole vocabulary (no top-k/top-p/min-p): then [`draw_untruncated`]
/// can sample without building a candidate list.
pub(crate) fn untruncated(p: &SamplingParams) -> bool {
    p.top_k == 0 && p.top_p >= 1.0 && p.min_p <= 0.0
}

/// Samples from the full tempered softmax with uniform `u` in [0, 1): the same distribution
/// as [`candidates`] + a cumulative walk, but with two vectorised passes over the logits
/// (block sums locate the token, then a scalar walk inside one block) and no buffer.
pub(crate) fn draw_untruncated(logits: &[f32], temperature: f32, u: f64) -> Option<u32> {
    const BLOCK: usize = 256;
    let m = max_value(logits);
    if !m.is_finite() {
        return None;
    }
    let inv_t = 1.0 / temperature;
    let target = u * sum_exp(logits, m, inv_t);
    let mut cum = 0f64;
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        let s = sum_exp(block, m, inv_t);
        if cum + s <= target {
            cum += s;
            continue;
        }
        for (i, &l) in block.iter().enumerate() {
            cum += f64::from(exp_approx((l - m) * inv_t));
            if cum > target {
                return Some((b * BLOCK + i) as u32);
            }
        }
    }
    // Rounding left `target` a hair above the final sum: take the last token with mass.
    logits
        .iter()
        .rposition(|&l| exp_approx((l - m) * inv_t) > 0.0)
        .map(|i| i as u32)
}

/// Whether a scaled logit `z` has any probability mass and reaches `threshold`; NaN fails.
#[inline(always)]
fn has_mass_above(z: f32, threshold: f32) -> bool {
    z > f32::NEG_INFINITY && z >= threshold
}

/// Top-k for small k in one pass: `cand` is kept sorted (descending) at length <= k, and
/// almost every logit is rejected by a single compare against the current k-th value.
fn fill_top_k_small(
    logits: &[f32],
    m: f32,
    inv_t: f32,
    threshold: f32,
    k: usize,
    cand: &mut Vec<(u32, f32)>,
) {
    let mut kth = f32::NEG_INFINITY;
    for (b, block) in logits.chunks(SKIP_BLOCK).enumerate() {
        // One vectorised max rejects most blocks once `cand` is full.
        let zmax = (max_value(block) - m) * inv_t;
        if zmax < threshold || (cand.len() == k && zmax <= kth) {
            continue;
        }
        for (j, &l) in block.iter().enumerate() {
            let z = (l - m) * inv_t;
            if !has_mass_above(z, threshold) || (cand.len() == k && z <= kth) {
                continue;
            }
            // Equal values keep the lower id first: it was seen earlier.
            let pos = cand.partition_point(|c| c.1 >= z);
            if cand.len() == k {
                cand.pop();
            }
            cand.insert(pos, ((b * SKIP_BLOCK + j) as u32, z));
            if cand.len() == k {
                kth = cand[k - 1].1;
            }
        }
    }
}

/// Sorts a growing prefix of `cand` (descending) until its cumulative mass reaches `target`,
/// and returns the prefix length (at least 1 when `cand` is not empty). Each round selects
/// only within the unsorted tail, so the total cost stays linear plus the sort of the nucleus.
fn nucleus_len(cand: &mut [(u32, f32)], target: f64) -> usize {
    let mut sorted = 0usize;
    let mut cum = 0f64;
    let mut chunk = FIRST_NUCLEUS_CHUNK;
    let len = cand.len();
    while sorted < len {
        let end = (sorted + chunk).min(len);
        let tail = &mut cand[sorted..];
        if end < len {
            tail.select_nth_unstable_by(end - sorted - 1, desc);
        }
        tail[..end - sorted].sort_unstable_by(desc);
        for (i, &(_, z)) in cand[sorted..end].iter().enumerate() {
            cum += f64::from(exp_approx(z));
            if cum >= target {
                return sorted + i + 1;
            }
        }
        sorted = end;
        chunk *= 4;
    }
    len
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

    /// Straightforward full-sort implementation of the same semantics, as the oracle. It uses
    /// the same `exp` so that rounding cannot move a top-p boundary between the two.
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
        let total: f64 = all.iter().map(|&(_, z)| f64::from(exp_approx(z))).sum();
        let mut keep = all.len();
        let mut cum = 0.0;
        for (i, &(_, z)) in all.iter().enumerate() {
            cum += f64::from(exp_approx(z));
            if p.top_p < 1.0 && cum >= total * f64::from(p.top_p) {
                keep = i + 1;
                break;
            }
        }
        all.truncate(keep);
        let pmax = f64::from(exp_approx(all[0].1));
        all.retain(|&(_, z)| f64::from(exp_approx(z)) >= f64::from(p.min_p) * pmax - 1e-12);
        let s: f64 = all.iter().map(|&(_, z)| f64::from(exp_approx(z))).sum();
        all.iter()
            .map(|&(id, z)| (id, f64::from(exp_approx(z)) / s))
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
