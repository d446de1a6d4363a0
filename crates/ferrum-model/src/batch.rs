//! The input of one forward step: several sequences' new tokens, flattened, over a paged KV cache.
//!
//! A sequence contributes `len` consecutive rows starting at `start`; its token `i` sits at
//! position `ctx_before + i`. Its K/V for positions `0..ctx_before + len` live in the KV blocks
//! listed in `block_table` (block `b` holds positions `b*block_size .. (b+1)*block_size`), so the
//! runtime writes the new tokens' K/V there and attends over all of them. The runtime does not
//! allocate blocks: whoever builds the batch (the engine) owns the block ids.

/// One sequence's slice of a [`Batch`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSlice {
    /// First row of this sequence in [`Batch::tokens`].
    pub start: usize,
    /// Number of new tokens (rows) of this sequence in the batch.
    pub len: usize,
    /// Tokens already in the KV cache for this sequence (positions `0..ctx_before`).
    pub ctx_before: usize,
    /// KV block ids covering positions `0..ctx_before + len`, in order.
    pub block_table: Vec<u32>,
    /// True when the slice holds generated tokens fed back one step at a time, false for
    /// prompt tokens. Attention reproduces llama.cpp's arithmetic for each case (its decode
    /// and its batched-prompt paths round differently), so a token's result depends on this
    /// flag and never on what else is in the batch.
    pub decode: bool,
}

/// A batch of flattened tokens from one or more sequences.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Token ids of all rows, sequence after sequence.
    pub tokens: Vec<u32>,
    /// How the rows split into sequences; slices are contiguous and in row order.
    pub seqs: Vec<SeqSlice>,
    /// Rows whose logits the caller wants, in the order they are returned.
    pub logits_rows: Vec<usize>,
}

impl Batch {
    /// Appends a sequence's new tokens; returns the row index of its last token. A single
    /// token counts as a decode step, several as prompt tokens; set [`SeqSlice::decode`]
    /// afterwards to say otherwise.
    pub fn push_seq(&mut self, tokens: &[u32], ctx_before: usize, block_table: &[u32]) -> usize {
        let start = self.tokens.len();
        self.tokens.extend_from_slice(tokens);
        self.seqs.push(SeqSlice {
            start,
            len: tokens.len(),
            ctx_before,
            block_table: block_table.to_vec(),
            decode: tokens.len() == 1,
        });
        start + tokens.len().saturating_sub(1)
    }

    /// Empties the batch, keeping allocations for the next step.
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.seqs.clear();
        self.logits_rows.clear();
    }

    /// Checks the batch against a pool of `num_blocks` blocks of `block_size` tokens: slices
    /// contiguous, block tables long enough and in range, logits rows in range.
    pub fn validate(&self, num_blocks: usize, block_size: usize) -> crate::Result<()> {
        let mut next = 0;
        for (i, s) in self.seqs.iter().enumerate() {
            if s.start != next || s.len == 0 {
                return Err(crate::Error::invalid(format!(
                    "batch sequence {i} is not contiguous or is empty"
                )));
            }
            next = s.start + s.len;
            let need = (s.ctx_before + s.len).div_ceil(block_size);
            if s.block_table.len() < need {
                return Err(crate::Error::invalid(format!(
                    "batch sequence {i} needs {need} KV blocks, has {}",
                    s.block_table.len()
                )));
            }
            if let Some(b) = s.block_table.iter().find(|&&b| b as usize >= num_blocks) {
                return Err(crate::Error::invalid(format!("KV block {b} out of range")));
            }
        }
        if next != self.tokens.len() {
            return Err(crate::Error::invalid(
                "batch sequences do not cover all tokens",
            ));
        }
        if let Some(r) = self.logits_rows.iter().find(|&&r| r >= self.tokens.len()) {
            return Err(crate::Error::invalid(format!(
                "logits row {r} out of range"
            )));
        }
        Ok(())
    }
}
