//! Token sampling from logits (placeholder: greedy only).
//!
//! This is a stand-in with the agreed API so the engine compiles while the real sampler is
//! written on another branch; every request samples the arg-max token whatever its parameters.

use crate::{Error, Result};

/// How to pick the next token; `Default` is greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Nucleus sampling mass (1.0 = off).
    pub top_p: f32,
    /// Drop tokens below `min_p` times the best probability (0 = off).
    pub min_p: f32,
    /// Multiplicative penalty on already-seen tokens (1.0 = off).
    pub repetition_penalty: f32,
    /// Additive penalty on tokens seen at least once (0 = off).
    pub presence_penalty: f32,
    /// Additive penalty per occurrence of a token (0 = off).
    pub frequency_penalty: f32,
    /// Seed for reproducible sampling; `None` draws one.
    pub seed: Option<u64>,
    /// How many top alternatives to report with each token's logprob.
    pub top_logprobs: usize,
}

impl Default for SamplingParams {
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
    /// Rejects parameters outside their meaningful ranges.
    pub fn validate(&self) -> Result<()> {
        let temperature_ok = self.temperature.is_finite() && self.temperature >= 0.0;
        if !temperature_ok {
            return Err(Error::invalid("temperature must be a finite number >= 0"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid("top_p must be in (0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(Error::invalid("min_p must be in [0, 1]"));
        }
        let penalty_ok = self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0;
        if !penalty_ok {
            return Err(Error::invalid("repetition_penalty must be > 0"));
        }
        if !self.presence_penalty.is_finite() || !self.frequency_penalty.is_finite() {
            return Err(Error::invalid("penalties must be finite"));
        }
        if self.top_logprobs > 20 {
            return Err(Error::invalid("top_logprobs must be at most 20"));
        }
        Ok(())
    }
}

/// One sampled token with its log-probability and the top alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The chosen token id.
    pub token: u32,
    /// Log-probability of the chosen token under the unmodified softmax.
    pub logprob: f32,
    /// The `top_logprobs` most likely tokens with their log-probabilities.
    pub top: Vec<(u32, f32)>,
}

/// Per-request sampling state (penalty history, RNG).
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
}

impl Sampler {
    /// Builds a sampler for one request after validating its parameters.
    pub fn new(params: SamplingParams, _prompt_tokens: &[u32]) -> Result<Sampler> {
        params.validate()?;
        Ok(Sampler { params })
    }

    /// Records a generated token (for penalties).
    pub fn accept(&mut self, _token: u32) {}

    /// Picks the next token from `logits` (may be modified in place).
    pub fn sample(&mut self, logits: &mut [f32]) -> Sampled {
        let mut best = 0usize;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        let max = logits.get(best).copied().unwrap_or(0.0);
        let lse = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let top = order
            .iter()
            .take(self.params.top_logprobs)
            .map(|&i| (i as u32, logits[i] - lse))
            .collect();
        Sampled {
            token: best as u32,
            logprob: max - lse,
            top,
        }
    }
}
