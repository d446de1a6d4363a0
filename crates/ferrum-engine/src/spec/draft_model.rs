//! Draft-model drafting: a (smaller) GGUF model with the target's vocabulary proposes tokens
//! greedily, optionally choosing only among a pruned vocabulary (after FR-Spec 2025).
//!
//! The drafter keeps its own small KV pool and per-request block tables. Each proposal
//! rolls its sequence back to the longest prefix it shares with the request's context
//! (rejected drafts are forgotten), computes the missing context tokens with the same
//! arithmetic the target uses (prompt arithmetic for prompt tokens, decode arithmetic for
//! generated ones), then decodes greedily one token at a time. With the target model as its
//! own drafter it therefore reproduces the target's greedy choices exactly (100% acceptance
//! when no penalties apply), which is how the mechanics are tested.
//!
//! Simplification: the draft's KV lives in its own pool, not in the engine's paged pool, so
//! it does not share the engine's prefix cache; a request whose blocks do not fit is simply
//! not drafted for.

use std::collections::HashMap;
use std::sync::Arc;

use ferrum_model::llama::{LlamaModel, LlamaRunner};
use ferrum_model::Batch;

use super::Drafter;
use crate::error::EngineError;
use crate::request::RequestId;

/// See the module docs.
pub struct ModelDrafter {
    runner: LlamaRunner,
    block_size: usize,
    free: Vec<u32>,
    seqs: HashMap<RequestId, DraftSeq>,
    batch: Batch,
    /// When set, drafts choose only tokens with `allowed[id]` (a pruned vocabulary).
    allowed: Option<Vec<bool>>,
}

#[derive(Default)]
struct DraftSeq {
    /// Tokens whose KV is in `blocks`.
    tokens: Vec<u32>,
    blocks: Vec<u32>,
}

impl ModelDrafter {
    /// A drafter running `model` with a private KV pool of `kv_tokens` tokens on `threads`
    /// threads (0 = one per core).
    pub fn new(
        model: Arc<LlamaModel>,
        kv_tokens: usize,
        threads: usize,
    ) -> Result<Self, EngineError> {
        let block_size = 16;
        let num_blocks = kv_tokens.div_ceil(block_size).max(1);
        let runner = LlamaRunner::new(model, num_blocks, block_size, threads)
            .map_err(|e| EngineError::Config(e.to_string()))?;
        Ok(ModelDrafter {
            runner,
            block_size,
            free: (0..num_blocks as u32).rev().collect(),
            seqs: HashMap::new(),
            batch: Batch::default(),
            allowed: None,
        })
    }

    /// Restricts drafting to the token ids `keep` (vocabulary pruning); ids outside the
    /// vocabulary are ignored. An empty list turns pruning off.
    pub fn prune_vocab(&mut self, keep: &[u32]) {
        let vocab = self.runner.model().config.vocab_size;
        if keep.is_empty() {
            self.allowed = None;
            return;
        }
        let mut allowed = vec![false; vocab];
        for &t in keep {
            if let Some(a) = allowed.get_mut(t as usize) {
                *a = true;
            }
        }
        self.allowed = Some(allowed);
    }

    /// Best token of a logits row (lowest id on ties, like the greedy sampler).
    fn pick(&self, row: &[f32]) -> u32 {
        let mut best = (0usize, f32::NEG_INFINITY);
        for (i, &v) in row.iter().enumerate() {
            let ok = self.allowed.as_ref().is_none_or(|a| a[i]);
            if ok && v > best.1 {
                best = (i, v);
            }
        }
        best.0 as u32
    }

    /// Runs `toks` at positions `start..` of `seq` (decode arithmetic if `decode`); returns
    /// the last row's logits.
    fn run(
        &mut self,
        blocks: &[u32],
        start: usize,
        toks: &[u32],
        decode: bool,
    ) -> Option<Vec<f32>> {
        self.batch.clear();
        let row = self.batch.push_seq(toks, start, blocks);
        self.batch.seqs[0].decode = decode;
        self.batch.logits_rows.push(row);
        self.runner.forward(&self.batch).ok().map(<[f32]>::to_vec)
    }
}

impl Drafter for ModelDrafter {
    fn name(&self) -> &'static str {
        "draft"
    }

    fn propose(
        &mut self,
        id: RequestId,
        context: &[u32],
        prompt_len: usize,
        max_len: usize,
        out: &mut Vec<u32>,
    ) {
        out.clear();
        if context.is_empty() || max_len == 0 {
            return;
        }
        let mut seq = self.seqs.remove(&id).unwrap_or_default();
        // Keep the shared prefix (but always feed the last context token for its logits).
        let common = seq
            .tokens
            .iter()
            .zip(context)
            .take_while(|(a, b)| a == b)
            .count()
            .min(context.len() - 1);
        seq.tokens.truncate(common);
        let need = (context.len() + max_len).div_ceil(self.block_size);
        if need > seq.blocks.len() {
            let more = need - seq.blocks.len();
            if more > self.free.len() {
                self.seqs.insert(id, seq);
                return;
            }
            let at = self.free.len() - more;
            seq.blocks.extend(self.free.drain(at..));
        }
        let blocks = seq.blocks.clone();
        // Catch up: prompt tokens with prompt arithmetic, generated ones with decode.
        let mut logits = None;
        let mut pos = common;
        for (end, decode) in [
            (prompt_len.min(context.len()), false),
            (context.len(), true),
        ] {
            if pos < end {
                logits = self.run(&blocks, pos, &context[pos..end], decode);
                if logits.is_none() {
                    self.seqs.insert(id, seq);
                    return;
                }
                pos = end;
            }
        }
        seq.tokens.extend_from_slice(&context[common..]);
        let Some(mut row) = logits else {
            self.seqs.insert(id, seq);
            return;
        };
        loop {
            let t = self.pick(&row);
            out.push(t);
            if out.len() == max_len {
                break;
            }
            match self.run(&blocks, seq.tokens.len(), &[t], true) {
                Some(r) => {
                    seq.tokens.push(t);
                    row = r;
                }
                None => break,
            }
        }
        self.seqs.insert(id, seq);
    }

    fn finished(&mut self, id: RequestId, _tokens: &[u32], _prompt_len: usize) {
        if let Some(s) = self.seqs.remove(&id) {
            self.free.extend(s.blocks);
        }
    }
}
