//! Suffix drafting (after SuffixDecoding, Snowflake 2024): match the end of a request's
//! context against its own context and against earlier requests' texts, and propose the most
//! frequent continuation, as long as the matches agree.
//!
//! Agent loops and code edits repeat text across turns and requests, so a longer memory than
//! the request itself pays. The store is a bounded set of earlier sequences (prompt and
//! output of finished requests) indexed by hashed `K`-grams, evicted least recently used.
//! A proposal:
//!
//! 1. collects match sites: every earlier place, in the request's own context or in the
//!    store, where the context's last `K` tokens occur, and how far back each match extends
//!    (up to `MAX_MATCH`);
//! 2. keeps the sites with the longest match (a longer match predicts better);
//! 3. walks forward token by token: the next token is the most frequent one after the
//!    surviving sites; sites that disagree drop out; the draft's confidence is the product of
//!    the winners' shares, and drafting stops once it falls to `MIN_CONFIDENCE` or after
//!    `2 x match length` tokens (a short match earns a short draft).
//!
//! This keeps what makes a suffix tree useful here (longest match, frequency-weighted
//! continuation, confidence-sized drafts) with a flat hash index that is cheap to update and
//! to evict.

use std::collections::{HashMap, VecDeque};

use super::Drafter;
use crate::request::RequestId;

/// Tokens hashed per index key (and the shortest match used).
const K: usize = 3;
/// Longest backward match measured.
const MAX_MATCH: usize = 64;
/// Stop drafting once the estimated chance that the whole draft is right falls to this.
const MIN_CONFIDENCE: f64 = 0.25;
/// Most match sites considered per proposal (the most recent ones).
const MAX_SITES: usize = 64;
/// Tokens kept from one finished request (its last ones).
const MAX_DOC: usize = 8192;

fn key(gram: &[u32]) -> u64 {
    gram.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &t| {
        (h ^ u64::from(t)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// See the module docs.
#[derive(Debug)]
pub struct SuffixDrafter {
    /// Most tokens kept in the cross-request store.
    pub capacity: usize,
    docs: HashMap<u64, Doc>,
    /// Doc ids, least recently used first.
    lru: VecDeque<u64>,
    index: HashMap<u64, Vec<(u64, u32)>>,
    stored: usize,
    next_doc: u64,
    sites: Vec<Site>,
}

#[derive(Debug)]
struct Doc {
    tokens: Vec<u32>,
}

/// A place where the context's suffix occurs: the continuation starts at `pos` of `doc`
/// (`None`: the request's own context).
#[derive(Debug, Clone, Copy)]
struct Site {
    doc: Option<u64>,
    pos: usize,
    matched: usize,
}

impl Default for SuffixDrafter {
    fn default() -> Self {
        SuffixDrafter::with_capacity(1 << 18)
    }
}

impl SuffixDrafter {
    /// A drafter remembering at most `capacity` tokens of earlier requests.
    pub fn with_capacity(capacity: usize) -> Self {
        SuffixDrafter {
            capacity,
            docs: HashMap::new(),
            lru: VecDeque::new(),
            index: HashMap::new(),
            stored: 0,
            next_doc: 0,
            sites: Vec::new(),
        }
    }

    /// Tokens currently remembered across requests.
    pub fn stored_tokens(&self) -> usize {
        self.stored
    }

    /// Remembers a sequence (evicting the least recently used ones beyond capacity).
    pub fn insert(&mut self, tokens: &[u32]) {
        let tokens = &tokens[tokens.len().saturating_sub(MAX_DOC.min(self.capacity))..];
        if tokens.len() <= K {
            return;
        }
        while self.stored + tokens.len() > self.capacity {
            let Some(old) = self.lru.pop_front() else {
                break;
            };
            self.remove(old);
        }
        let id = self.next_doc;
        self.next_doc += 1;
        for p in 0..=tokens.len() - K {
            self.index
                .entry(key(&tokens[p..p + K]))
                .or_default()
                .push((id, (p + K) as u32));
        }
        self.stored += tokens.len();
        self.docs.insert(
            id,
            Doc {
                tokens: tokens.to_vec(),
            },
        );
        self.lru.push_back(id);
    }

    fn remove(&mut self, id: u64) {
        let Some(doc) = self.docs.remove(&id) else {
            return;
        };
        self.stored -= doc.tokens.len();
        for p in 0..=doc.tokens.len() - K {
            let k = key(&doc.tokens[p..p + K]);
            if let Some(v) = self.index.get_mut(&k) {
                v.retain(|e| e.0 != id);
                if v.is_empty() {
                    self.index.remove(&k);
                }
            }
        }
    }

    fn touch(&mut self, id: u64) {
        if let Some(i) = self.lru.iter().rposition(|&d| d == id) {
            self.lru.remove(i);
            self.lru.push_back(id);
        }
    }

    fn seq<'a>(&'a self, ctx: &'a [u32], doc: Option<u64>) -> &'a [u32] {
        match doc {
            None => ctx,
            Some(d) => self.docs.get(&d).map_or(&[], |x| x.tokens.as_slice()),
        }
    }

    /// Collects match sites of `ctx`'s last `K` tokens with their match lengths.
    fn collect_sites(&mut self, ctx: &[u32]) {
        self.sites.clear();
        let n = ctx.len();
        if n <= K {
            return;
        }
        let pat = &ctx[n - K..];
        let mut sites = std::mem::take(&mut self.sites);
        // Own context, most recent first (the continuation must exist: end < n).
        for end in (K..n).rev() {
            if sites.len() >= MAX_SITES {
                break;
            }
            if &ctx[end - K..end] == pat {
                sites.push(Site {
                    doc: None,
                    pos: end,
                    matched: 0,
                });
            }
        }
        if let Some(v) = self.index.get(&key(pat)) {
            for &(doc, end) in v.iter().rev().take(MAX_SITES) {
                sites.push(Site {
                    doc: Some(doc),
                    pos: end as usize,
                    matched: 0,
                });
            }
        }
        for s in sites.iter_mut() {
            let seq = self.seq(ctx, s.doc);
            let mut m = 0;
            while m < MAX_MATCH && m < s.pos && m < n && seq[s.pos - 1 - m] == ctx[n - 1 - m] {
                m += 1;
            }
            s.matched = m;
        }
        // Hash collisions and near misses: a site must really match K tokens.
        sites.retain(|s| s.matched >= K && s.pos < self.seq(ctx, s.doc).len());
        self.sites = sites;
    }
}

impl Drafter for SuffixDrafter {
    fn name(&self) -> &'static str {
        "suffix"
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
        self.collect_sites(context);
        let Some(best) = self.sites.iter().map(|s| s.matched).max() else {
            return;
        };
        let mut sites = std::mem::take(&mut self.sites);
        sites.retain(|s| s.matched == best);
        let limit = max_len.min(2 * best);
        let mut confidence = 1f64;
        let mut counts: Vec<(u32, usize)> = Vec::new();
        for step in 0..limit {
            counts.clear();
            for s in &sites {
                if let Some(&t) = self.seq(context, s.doc).get(s.pos + step) {
                    match counts.iter_mut().find(|c| c.0 == t) {
                        Some(c) => c.1 += 1,
                        None => counts.push((t, 1)),
                    }
                }
            }
            let total: usize = counts.iter().map(|c| c.1).sum();
            // Most frequent; ties go to the first seen (the most recent site).
            let Some(&(tok, n)) = counts.iter().fold(None, |b: Option<&(u32, usize)>, c| {
                if b.is_none_or(|b| c.1 > b.1) {
                    Some(c)
                } else {
                    b
                }
            }) else {
                break;
            };
            confidence *= n as f64 / total as f64;
            if step > 0 && confidence <= MIN_CONFIDENCE {
                break;
            }
            out.push(tok);
            let ctx = context;
            sites.retain(|s| self.seq(ctx, s.doc).get(s.pos + step) == Some(&tok));
        }
        let used: Vec<u64> = sites.iter().filter_map(|s| s.doc).collect();
        for d in used {
            self.touch(d);
        }
        self.sites = sites;
    }

    fn finished(&mut self, _id: RequestId, tokens: &[u32], _prompt_len: usize) {
        self.insert(tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn propose(d: &mut SuffixDrafter, ctx: &[u32], max_len: usize) -> Vec<u32> {
        let mut out = vec![77];
        d.propose(RequestId(0), ctx, 0, max_len, &mut out);
        out
    }

    #[test]
    fn proposes_continuation_from_own_context() {
        let mut d = SuffixDrafter::default();
        let ctx = [1, 2, 3, 4, 5, 6, 7, 9, 1, 2, 3, 4];
        // Match length 4 allows up to 8 tokens; the continuation runs into the suffix itself.
        assert_eq!(propose(&mut d, &ctx, 8), vec![5, 6, 7, 9, 1, 2, 3, 4]);
        assert_eq!(propose(&mut d, &ctx, 2), vec![5, 6]);
    }

    #[test]
    fn learns_from_earlier_requests_and_forgets_beyond_capacity() {
        let mut d = SuffixDrafter::with_capacity(40);
        let earlier: Vec<u32> = (10..40).collect();
        d.finished(RequestId(1), &earlier, 5);
        assert_eq!(d.stored_tokens(), 30);
        let ctx = [1, 2, 20, 21, 22, 23];
        assert_eq!(propose(&mut d, &ctx, 4), vec![24, 25, 26, 27]);
        // A second 30-token sequence evicts the first.
        d.finished(RequestId(2), &(100..130).collect::<Vec<u32>>(), 0);
        assert_eq!(d.stored_tokens(), 30);
        assert!(propose(&mut d, &ctx, 4).is_empty());
    }

    #[test]
    fn disagreeing_continuations_shorten_the_draft() {
        let mut d = SuffixDrafter::default();
        // After "1 2 3" came 4 5 6 three times, then diverging tails.
        for tail in [[7u32, 8], [9, 10], [11, 12]] {
            let mut s = vec![50, 1, 2, 3, 4, 5, 6];
            s.extend(tail);
            d.finished(RequestId(0), &s, 0);
        }
        // Match length 4 ("50 1 2 3") at each site: the shared part is drafted; after the
        // three-way split (confidence 1/3) only the chosen site survives.
        let got = propose(&mut d, &[50, 1, 2, 3], 8);
        assert_eq!(&got[..3], &[4, 5, 6]);
        assert!(got.len() <= 5, "{got:?}");
        // A four-way split brings confidence to 1/4: drafting stops before the split.
        d.finished(RequestId(0), &[50, 1, 2, 3, 4, 5, 6, 13, 14], 0);
        assert_eq!(propose(&mut d, &[50, 1, 2, 3], 8), vec![4, 5, 6]);
    }

    #[test]
    fn short_or_unmatched_context_proposes_nothing() {
        let mut d = SuffixDrafter::default();
        assert!(propose(&mut d, &[1, 2], 4).is_empty());
        assert!(propose(&mut d, &[1, 2, 3, 4, 5], 4).is_empty());
        assert!(propose(&mut d, &[1, 2, 3, 1, 2, 3], 0).is_empty());
    }
}
