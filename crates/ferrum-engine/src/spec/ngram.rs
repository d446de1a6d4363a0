//! Prompt-lookup drafting: find the request's last n tokens earlier in its own context and
//! propose what followed them there.
//!
//! Costs a scan of the context per step (no index, no state), which is negligible next to a
//! forward pass for contexts of a few thousand tokens. Longer n-grams are tried first (a
//! longer match predicts better); among equal matches the most recent wins (it reflects the
//! latest wording when text is being rewritten).

use super::Drafter;
use crate::request::RequestId;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct NgramDrafter {
    /// Shortest suffix to match.
    pub min_n: usize,
    /// Longest suffix to match.
    pub max_n: usize,
}

impl Default for NgramDrafter {
    fn default() -> Self {
        NgramDrafter { min_n: 1, max_n: 4 }
    }
}

/// The continuation after the most recent earlier occurrence of `ctx`'s last `n` tokens.
pub(crate) fn lookup(ctx: &[u32], n: usize, max_len: usize) -> Option<&[u32]> {
    let len = ctx.len();
    if n == 0 || len <= n {
        return None;
    }
    let pat = &ctx[len - n..];
    (0..len - n)
        .rev()
        .find(|&s| &ctx[s..s + n] == pat)
        .map(|s| &ctx[s + n..(s + n + max_len).min(len)])
}

impl Drafter for NgramDrafter {
    fn name(&self) -> &'static str {
        "ngram"
    }

    fn propose(
        &mut self,
        _id: RequestId,
        context: &[u32],
        _prompt_len: usize,
        max_len: usize,
        out: &mut Vec<u32>,
    ) {
        out.clear();
        if max_len == 0 {
            return;
        }
        for n in (self.min_n.max(1)..=self.max_n).rev() {
            if let Some(cont) = lookup(context, n, max_len) {
                out.extend_from_slice(cont);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn propose(ctx: &[u32], max_len: usize) -> Vec<u32> {
        let mut out = vec![99];
        NgramDrafter::default().propose(RequestId(0), ctx, 0, max_len, &mut out);
        out
    }

    #[test]
    fn proposes_what_followed_the_longest_recent_match() {
        // "5 6 7" occurred before followed by 8 9; "7" alone occurred later followed by 1.
        let ctx = [5, 6, 7, 8, 9, 7, 1, 2, 5, 6, 7];
        assert_eq!(propose(&ctx, 2), vec![8, 9]);
        assert_eq!(propose(&ctx, 10), vec![8, 9, 7, 1, 2, 5, 6, 7]);
    }

    #[test]
    fn falls_back_to_shorter_ngrams_and_to_nothing() {
        assert_eq!(propose(&[1, 2, 3, 9, 3], 3), vec![9, 3]);
        assert!(propose(&[1, 2, 3, 4], 3).is_empty());
        assert!(propose(&[1, 1], 0).is_empty());
        assert!(propose(&[], 4).is_empty());
    }

    #[test]
    fn periodic_context_extends_the_period() {
        assert_eq!(propose(&[1, 2, 1, 2, 1, 2], 4), vec![1, 2]);
    }
}
