//! A single sequence over a [`LlamaRunner`]: the batch of one, for the CLI and tests.
//!
//! The session owns a contiguous block table over the whole KV pool and remembers the tokens
//! whose K/V are in it, so a follow-up that starts with the same tokens (the next chat turn)
//! only computes the new ones. Multi-sequence serving with shared blocks is the engine's job.

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::llama::LlamaRunner;

/// One sequence's state in a runner's KV pool.
#[derive(Debug)]
pub struct Session {
    runner: LlamaRunner,
    tokens: Vec<u32>,
    block_table: Vec<u32>,
    batch: Batch,
    /// Largest number of tokens computed in one forward call (bounds scratch memory).
    pub chunk: usize,
}

impl Session {
    /// A session using every block of `runner`'s pool.
    pub fn new(runner: LlamaRunner) -> Self {
        let n = runner.kv().num_blocks() as u32;
        Session {
            runner,
            tokens: Vec::new(),
            block_table: (0..n).collect(),
            batch: Batch::default(),
            chunk: 512,
        }
    }

    /// Tokens whose K/V are cached.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Most tokens this session can hold.
    pub fn capacity(&self) -> usize {
        self.runner.kv().num_blocks() * self.runner.kv().block_size()
    }

    /// The runner (model, kernels, threads).
    pub fn runner(&self) -> &LlamaRunner {
        &self.runner
    }

    /// Forgets the cached tokens.
    pub fn reset(&mut self) {
        self.tokens.clear();
    }

    /// Keeps the cached tokens that `ids` starts with and drops the rest; returns how many
    /// were kept. At least one token of `ids` is always left to compute, so logits exist.
    pub fn reuse_prefix(&mut self, ids: &[u32]) -> usize {
        let common = self
            .tokens
            .iter()
            .zip(ids)
            .take_while(|(a, b)| a == b)
            .count();
        let keep = common.min(ids.len().saturating_sub(1));
        self.tokens.truncate(keep);
        keep
    }

    /// Appends `ids` to the sequence, computing them in chunks; returns the logits after the
    /// last one (vocab floats). `all_logits` collects the logits after every token when given.
    pub fn extend(
        &mut self,
        ids: &[u32],
        mut all_logits: Option<&mut Vec<f32>>,
    ) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::invalid("nothing to evaluate"));
        }
        if self.tokens.len() + ids.len() > self.capacity() {
            return Err(Error::invalid(format!(
                "sequence of {} tokens exceeds the KV capacity of {} tokens",
                self.tokens.len() + ids.len(),
                self.capacity()
            )));
        }
        let mut last = Vec::new();
        for chunk in ids.chunks(self.chunk.max(1)) {
            self.batch.clear();
            let nblocks = (self.tokens.len() + chunk.len()).div_ceil(self.runner.kv().block_size());
            self.batch
                .push_seq(chunk, self.tokens.len(), &self.block_table[..nblocks]);
            if all_logits.is_some() {
                self.batch.logits_rows.extend(0..chunk.len());
            } else {
                self.batch.logits_rows.push(chunk.len() - 1);
            }
            let logits = self.runner.forward(&self.batch)?;
            let vocab = logits.len() / self.batch.logits_rows.len();
            if let Some(all) = all_logits.as_deref_mut() {
                all.extend_from_slice(logits);
            }
            last = logits[logits.len() - vocab..].to_vec();
            self.tokens.extend_from_slice(chunk);
        }
        Ok(last)
    }

    /// Perplexity's unit of work: evaluates `window` from an empty cache and returns the
    /// summed negative log-likelihood of each token given the ones before it (every token but
    /// the first is scored) and how many were scored.
    pub fn window_nll(&mut self, window: &[u32]) -> Result<(f64, usize)> {
        self.reset();
        let mut all = Vec::new();
        self.extend(window, Some(&mut all))?;
        let vocab = all.len() / window.len().max(1);
        let mut nll = 0f64;
        for (i, &next) in window.iter().enumerate().skip(1) {
            let row = &all[(i - 1) * vocab..i * vocab];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = row
                .iter()
                .map(|&x| ((x - max) as f64).exp())
                .sum::<f64>()
                .ln()
                + max as f64;
            nll += lse - row[next as usize] as f64;
        }
        Ok((nll, window.len().saturating_sub(1)))
    }
}
