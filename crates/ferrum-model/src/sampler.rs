//! Token sampling: turns one row of logits into the next token id, per request.
//!
//! Order of operations (as in vLLM): penalties (repetition, then presence/frequency), then
//! temperature, top-k, top-p and min-p. A temperature of 0 is a plain argmax over the
//! penalised logits. The reported log-probabilities are the log-softmax of the *raw* logits,
//! which is what OpenAI-compatible clients expect and what lets outputs be compared with
//! llama.cpp.
//!
//! The vocabulary is ~49k entries, so the hot path avoids full sorts and per-token allocation:
//! scratch buffers live in the [`Sampler`] and are reused on every call.

use std::collections::{HashMap, HashSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

mod math;
mod truncate;
use math::{max_value, sum_exp};
use truncate::{argmax, candidates, desc, draw_untruncated, untruncated};

/// The most alternatives a caller may ask for per token (the OpenAI API's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How a request wants its tokens chosen. Missing fields deserialize to the greedy defaults,
/// so an API layer can accept partial JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax, lowest id on ties).
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 turns it off.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches this mass; 1.0 turns it off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0.0 turns it off.
    pub min_p: f32,
    /// Divides positive (multiplies negative) logits of tokens already in the prompt or
    /// output, llama.cpp/HF style; 1.0 turns it off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated (OpenAI style).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it has been generated (OpenAI style).
    pub frequency_penalty: f32,
    /// Fixes the random stream so a request can be replayed; `None` seeds from entropy.
    pub seed: Option<u64>,
    /// How many most likely alternatives to report per token (0..=20).
    pub top_logprobs: usize,
}

impl Default for SamplingParams {
    /// Greedy decoding with every filter and penalty off: deterministic, the safest default.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            top_logprobs: 0,
        }
    }
}

impl SamplingParams {
    /// Rejects parameters that would make sampling meaningless, with a message naming the
    /// field and its valid range, so an API layer can return it to the client verbatim.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid(msg));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be a finite number >= 0 (0 = greedy), got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!(
                "top_p must be in (0, 1] (1 = off), got {}",
                self.top_p
            ));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!(
                "min_p must be in [0, 1] (0 = off), got {}",
                self.min_p
            ));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty must be a finite number > 0 (1 = off), got {}",
                self.repetition_penalty
            ));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(format!("{name} must be in [-2, 2] (0 = off), got {v}"));
            }
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return bad(format!(
                "top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {}",
                self.top_logprobs
            ));
        }
        Ok(())
    }

    /// Whether sampling is a plain argmax. Temperatures below 1e-5 count as greedy (as in
    /// vLLM): they are numerically indistinguishable from it and would overflow `1/T`.
    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-5
    }
}

/// (token id, value) pairs: top log-probabilities, or logits saved before an in-place edit.
type TokenValues = Vec<(u32, f32)>;

/// One sampled token with the log-probabilities an API reports for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The chosen token id.
    pub token: u32,
    /// Log-probability of `token` under the raw (unpenalised, untempered) logits.
    pub logprob: f32,
    /// The `top_logprobs` most likely tokens under the raw logits, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Per-request sampling state: the parameters, the random stream and the token history the
/// penalties need. Create one per sequence; it is cheap.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Distinct tokens of prompt and output (repetition penalty); empty when that is off.
    seen: HashSet<u32>,
    /// Output token counts (presence/frequency penalties); empty when those are off.
    generated: HashMap<u32, u32>,
    /// Reused candidate buffer, so a token costs no allocation.
    cand: Vec<(u32, f32)>,
    /// Original values of logits the penalties changed, restored after sampling.
    saved: Vec<(u32, f32)>,
}

impl Sampler {
    /// Validates `params` and starts a sampler whose history is `prompt_tokens` (they count for
    /// the repetition penalty, not for presence/frequency, which are about generated text).
    pub fn new(params: SamplingParams, prompt_tokens: &[u32]) -> Result<Self> {
        params.validate()?;
        let rng = ChaCha8Rng::seed_from_u64(params.seed.unwrap_or_else(rand::random));
        let mut seen = HashSet::new();
        if params.repetition_penalty != 1.0 {
            seen.extend(prompt_tokens.iter().copied());
        }
        Ok(Sampler {
            params,
            rng,
            seen,
            generated: HashMap::new(),
            cand: Vec::new(),
            saved: Vec::new(),
        })
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Record a token appended to the sequence (prompt tokens are given at new()).
    pub fn accept(&mut self, token: u32) {
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(token);
        }
        if self.params.presence_penalty != 0.0 || self.params.frequency_penalty != 0.0 {
            *self.generated.entry(token).or_insert(0) += 1;
        }
    }

    /// Sample the next token from raw logits (may modify the slice in place as scratch).
    ///
    /// The slice is returned to its original values before this function returns. Greedy
    /// sampling consumes no randomness; otherwise exactly one draw is taken per call, so a
    /// seeded stream replays identically.
    pub fn sample(&mut self, logits: &mut [f32]) -> Sampled {
        let (lse, top, saved) = self.prepare(logits);
        // Exactly one draw per non-greedy call, whichever path runs, so seeded streams replay.
        let u = if self.params.is_greedy() {
            0.0
        } else {
            self.rng.random::<f64>()
        };
        let token = if self.params.is_greedy() {
            argmax(logits)
        } else if let Some(token) = untruncated(&self.params)
            .then(|| draw_untruncated(logits, self.params.temperature, u))
            .flatten()
        {
            token
        } else {
            let mut cand = std::mem::take(&mut self.cand);
            let total = candidates(logits, &self.params, &mut cand);
            let token = draw(&cand, total, u);
            self.cand = cand;
            token
        };
        self.restore(logits, saved, token, lse, top)
    }

    /// Reads the raw logits' log-sum-exp and top log-probabilities, then applies the
    /// penalties in place, remembering the edited entries for [`Self::restore`].
    fn prepare(&mut self, logits: &mut [f32]) -> (f32, TokenValues, TokenValues) {
        let lse = log_sum_exp(logits);
        let top = top_n(logits, self.params.top_logprobs, lse);
        let mut saved = std::mem::take(&mut self.saved);
        saved.clear();
        apply_penalties(
            &self.params,
            &self.seen,
            &self.generated,
            logits,
            Some(&mut saved),
        );
        (lse, top, saved)
    }

    /// Undoes the penalties' in-place edits of `logits` (keeping the buffer for the next call)
    /// and reports `token` with its log-probability under the raw logits.
    fn restore(
        &mut self,
        logits: &mut [f32],
        saved: Vec<(u32, f32)>,
        token: u32,
        lse: f32,
        top: Vec<(u32, f32)>,
    ) -> Sampled {
        for &(id, v) in saved.iter().rev() {
            logits[id as usize] = v;
        }
        self.saved = saved;
        let logprob = logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&l| logprob_of(l, lse));
        Sampled {
            token,
            logprob,
            top,
        }
    }

    /// Samples the token after a drafted one (speculative decoding) so that the result has
    /// exactly the distribution [`Sampler::sample`] draws from: the draft comes from a
    /// deterministic drafter (a point mass), so it is accepted with probability p(draft), and
    /// on rejection the token is drawn from p with the draft removed, renormalized (Leviathan
    /// et al. 2023 / Chen et al. 2023 with q = δ(draft)). Greedy: the argmax, accepted when it
    /// equals the draft. Returns the token (with raw-logit log-probabilities, as `sample`) and
    /// whether it is the draft. Like `sample`, restores `logits` before returning.
    pub fn sample_after_draft(&mut self, logits: &mut [f32], draft: u32) -> (Sampled, bool) {
        if self.params.is_greedy() || logits.is_empty() {
            let s = self.sample(logits);
            let ok = s.token == draft;
            return (s, ok);
        }
        let (lse, top, saved) = self.prepare(logits);
        let mut cand = std::mem::take(&mut self.cand);
        let total = candidates(logits, &self.params, &mut cand);
        let w_draft = cand
            .iter()
            .find(|c| c.0 == draft)
            .map_or(0.0, |c| f64::from(c.1));
        let u = self.rng.random::<f64>();
        let (token, accepted) = if u * total < w_draft {
            (draft, true)
        } else {
            let rest: f64 = cand
                .iter()
                .filter(|c| c.0 != draft)
                .map(|c| f64::from(c.1))
                .sum();
            let v = self.rng.random::<f64>() * rest;
            let mut cum = 0f64;
            let mut pick = None;
            for &(id, w) in cand.iter().filter(|c| c.0 != draft && c.1 > 0.0) {
                cum += f64::from(w);
                pick = Some(id);
                if cum > v {
                    break;
                }
            }
            // No other token has mass (p(draft) rounded below 1): the draft is all there is.
            pick.map_or((draft, true), |id| (id, false))
        };
        self.cand = cand;
        (self.restore(logits, saved, token, lse, top), accepted)
    }

    /// Probability distribution after penalties/temperature/top-k/top-p/min-p, as sparse (id, prob) sorted by prob desc: needed later for exact speculative decoding (rejection sampling).
    ///
    /// It is exactly the distribution [`Sampler::sample`] draws from for the same logits and
    /// history (a single `(argmax, 1.0)` when greedy). Allocates; not meant for every token.
    pub fn distribution(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let mut work = logits.to_vec();
        apply_penalties(&self.params, &self.seen, &self.generated, &mut work, None);
        if work.is_empty() {
            return Vec::new();
        }
        if self.params.is_greedy() {
            return vec![(argmax(&work), 1.0)];
        }
        let mut cand = Vec::new();
        let total = candidates(&work, &self.params, &mut cand);
        let mut out: Vec<(u32, f32)> = cand
            .into_iter()
            .map(|(id, w)| (id, (f64::from(w) / total) as f32))
            .filter(|&(_, p)| p > 0.0)
            .collect();
        out.sort_unstable_by(desc);
        out
    }
}

/// Applies the repetition, presence and frequency penalties in place. When `saved` is given,
/// each logit's value is pushed before it is changed, so replaying `saved` in reverse restores
/// the row exactly.
fn apply_penalties(
    p: &SamplingParams,
    seen: &HashSet<u32>,
    generated: &HashMap<u32, u32>,
    logits: &mut [f32],
    mut saved: Option<&mut Vec<(u32, f32)>>,
) {
    let rep = p.repetition_penalty;
    for &id in seen {
        if let Some(l) = logits.get_mut(id as usize) {
            if let Some(s) = saved.as_deref_mut() {
                s.push((id, *l));
            }
            *l = if *l > 0.0 { *l / rep } else { *l * rep };
        }
    }
    for (&id, &count) in generated {
        if let Some(l) = logits.get_mut(id as usize) {
            if let Some(s) = saved.as_deref_mut() {
                s.push((id, *l));
            }
            *l -= p.presence_penalty + p.frequency_penalty * count as f32;
        }
    }
}

/// Picks the candidate where the cumulative weight first exceeds `u * total` (`u` in [0, 1)).
fn draw(cand: &[(u32, f32)], total: f64, u: f64) -> u32 {
    let target = u * total;
    let mut cum = 0f64;
    for &(id, w) in cand {
        cum += f64::from(w);
        if cum > target {
            return id;
        }
    }
    // Rounding can leave `target` a hair above the final sum: take the last token with mass.
    cand.iter()
        .rev()
        .find(|c| c.1 > 0.0)
        .or(cand.last())
        .map_or(0, |c| c.0)
}

/// `log(sum(exp(logits)))`, stable, NaN ignored; the max itself when it is not finite.
fn log_sum_exp(logits: &[f32]) -> f32 {
    let m = max_value(logits);
    if !m.is_finite() {
        return m;
    }
    m + sum_exp(logits, m, 1.0).ln() as f32
}

/// `l - lse`, defined as 0 when both are the same infinity (a degenerate all-masked row).
fn logprob_of(l: f32, lse: f32) -> f32 {
    if l == lse {
        0.0
    } else {
        l - lse
    }
}

/// The `n` largest logits as log-probabilities, given their log-sum-exp. Keeps a small
/// sorted array instead of sorting the vocabulary: almost every logit fails the first compare.
fn top_n(logits: &[f32], n: usize, lse: f32) -> Vec<(u32, f32)> {
    let mut out: Vec<(u32, f32)> = Vec::with_capacity(n.min(logits.len()));
    if n == 0 {
        return out;
    }
    // Until `out` is full every non-NaN value is taken; after that only values above the
    // current n-th, kept in a local. Whole blocks are skipped on their (vectorised) maximum.
    const BLOCK: usize = 64;
    let mut floor = f32::NEG_INFINITY;
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        if out.len() == n && max_value(block) <= floor {
            continue;
        }
        for (j, &v) in block.iter().enumerate() {
            if v.is_nan() || (out.len() == n && v <= floor) {
                continue;
            }
            let pos = out.partition_point(|&(_, w)| w >= v);
            if out.len() == n {
                out.pop();
            }
            out.insert(pos, ((b * BLOCK + j) as u32, v));
            if out.len() == n {
                floor = out[n - 1].1;
            }
        }
    }
    for e in &mut out {
        e.1 = logprob_of(e.1, lse);
    }
    out
}

/// log-softmax top-n of raw logits (used by tests and the CLI --json).
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    top_n(logits, n, log_sum_exp(logits))
}

#[cfg(test)]
mod tests;
