//! A fake model and tokenizer for hermetic tests and offline benchmarks (not for serving).
//!
//! [`FakeRunner`] keeps its own "KV cache": the token id written at each (block, slot). Each
//! forward pass writes every new token into the slot its sequence's block table names, then
//! derives each requested logits row from a hash of the whole context *read back through the
//! block table*. A wrong block table, a stale or wrongly shared cached block, or a missing
//! write changes the context the fake sees, so it changes the greedy outputs.

use crate::engine::{ModelRunner, TokenText};
use crate::error::EngineError;
use ferrum_model::Batch;

/// Deterministic stand-in for the model runtime; see the module docs.
#[derive(Debug, Clone)]
pub struct FakeRunner {
    vocab: usize,
    num_blocks: usize,
    block_size: usize,
    kv: Vec<Option<u32>>,
    logits: Vec<f32>,
    /// Forward passes run.
    pub forward_calls: u64,
    /// Token positions computed (written into the fake KV).
    pub tokens_computed: u64,
    /// Make the next forward pass fail (to test error handling); reset after use.
    pub fail_next: bool,
}

impl FakeRunner {
    /// A fake model with `vocab` tokens over a pool of `num_blocks` x `block_size` slots.
    pub fn new(vocab: usize, num_blocks: usize, block_size: usize) -> Self {
        FakeRunner {
            vocab,
            num_blocks,
            block_size,
            kv: vec![None; num_blocks * block_size],
            logits: Vec::new(),
            forward_calls: 0,
            tokens_computed: 0,
            fail_next: false,
        }
    }

    /// The token this fake model makes most likely after `context` (a perfect drafter for
    /// tests of speculative decoding).
    pub fn best_token(&self, context: &[u32]) -> u32 {
        (context_hash(context.iter().map(|&t| Some(t))) % self.vocab as u64) as u32
    }

    fn slot(&self, table: &[u32], pos: usize) -> usize {
        table[pos / self.block_size] as usize * self.block_size + pos % self.block_size
    }
}

fn mix(h: u64, x: u64) -> u64 {
    (h ^ x).wrapping_mul(0x0100_0000_01b3).rotate_left(17)
}

/// Hash of a context as read from the fake KV (`None`: a slot never written).
fn context_hash(toks: impl Iterator<Item = Option<u32>>) -> u64 {
    toks.fold(0xcbf2_9ce4_8422_2325u64, |h, tok| {
        mix(h, tok.map_or(u64::MAX, u64::from))
    })
}

impl ModelRunner for FakeRunner {
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn forward(&mut self, batch: &Batch) -> Result<&[f32], EngineError> {
        self.forward_calls += 1;
        if std::mem::take(&mut self.fail_next) {
            return Err(EngineError::Runner("injected failure".into()));
        }
        batch.validate(self.num_blocks, self.block_size)?;
        for s in &batch.seqs {
            for i in 0..s.len {
                let slot = self.slot(&s.block_table, s.ctx_before + i);
                self.kv[slot] = Some(batch.tokens[s.start + i]);
            }
            self.tokens_computed += s.len as u64;
        }
        self.logits.clear();
        for &row in &batch.logits_rows {
            let s = batch
                .seqs
                .iter()
                .find(|s| row >= s.start && row < s.start + s.len)
                .expect("validated batch covers every row");
            let last = s.ctx_before + (row - s.start);
            let h = context_hash((0..=last).map(|pos| self.kv[self.slot(&s.block_table, pos)]));
            let best = (h % self.vocab as u64) as usize;
            for j in 0..self.vocab {
                let noise = (mix(h, j as u64) >> 40) as f32 / (1u64 << 24) as f32;
                self.logits.push(if j == best { 4.0 } else { noise });
            }
        }
        Ok(&self.logits)
    }
}

/// A byte table for fake token ids: letters, a space, and the two halves of "é" as separate
/// tokens so streaming must join split characters.
#[derive(Debug, Clone)]
pub struct FakeText {
    table: Vec<Vec<u8>>,
}

impl FakeText {
    /// Texts for ids `0..vocab`: ids cycle through `a..z`, a space, `0xC3`, `0xA9`, "é".
    pub fn new(vocab: usize) -> Self {
        let table = (0..vocab)
            .map(|i| match i % 30 {
                k @ 0..=25 => vec![b'a' + k as u8],
                26 => b" ".to_vec(),
                27 => vec![0xC3],
                28 => vec![0xA9],
                _ => "é".as_bytes().to_vec(),
            })
            .collect();
        FakeText { table }
    }
}

impl TokenText for FakeText {
    fn token_bytes(&self, id: u32) -> &[u8] {
        self.table.get(id as usize).map_or(&[], |v| v.as_slice())
    }
}
