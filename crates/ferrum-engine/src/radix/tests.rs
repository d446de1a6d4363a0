//! Radix cache tests: unit cases plus a proptest against a naive list of cached prefixes.

use super::*;
use proptest::prelude::*;

#[test]
fn match_is_block_aligned_and_longest() {
    let mut c = RadixCache::new(2);
    let adopted = c.insert(0, &[1, 2, 3, 4, 5], &[10, 11, 12]);
    assert_eq!(
        adopted,
        vec![10, 11],
        "the partial third block is not cached"
    );
    let m = c.match_prefix(0, &[1, 2, 3, 9]);
    assert_eq!((m.blocks.clone(), m.tokens), (vec![10], 2));
    let m = c.match_prefix(0, &[1, 2, 3, 4, 7]);
    assert_eq!((m.blocks, m.tokens), (vec![10, 11], 4));
    c.check_invariants().unwrap();
}

#[test]
fn growing_insert_moves_lock_down_the_path_without_exposing_blocks() {
    let mut c = RadixCache::new(2);
    let first = c.insert_path(0, &[1, 2, 3, 4], &[10, 11]);
    assert_eq!(first.adopted, vec![10, 11]);
    c.lock(first.node);
    // The same request computed two more tokens: only the new block is adopted, and the
    // lock moves to the new end (lock before unlock, so nothing is evictable in between).
    let second = c.insert_path(0, &[1, 2, 3, 4, 5, 6], &[10, 11, 12]);
    assert_eq!(second.adopted, vec![12]);
    c.lock(second.node);
    c.unlock(first.node);
    assert_eq!((c.cached_blocks(), c.evictable_blocks()), (3, 0));
    assert!(c.evict(10).is_empty());
    // Another request that duplicated the first block adopts nothing for it.
    assert_eq!(c.insert_path(0, &[1, 2, 9, 9], &[20, 21]).adopted, vec![21]);
    c.unlock(second.node);
    assert_eq!(c.evictable_blocks(), 4);
    c.check_invariants().unwrap();
}

#[test]
fn salts_partition_the_cache() {
    let mut c = RadixCache::new(2);
    c.insert(1, &[1, 2], &[5]);
    assert_eq!(c.match_prefix(2, &[1, 2, 3]).tokens, 0);
    assert_eq!(c.match_prefix(1, &[1, 2, 3]).tokens, 2);
}

#[test]
fn locked_path_survives_eviction_and_partial_overlap_shares_blocks() {
    let mut c = RadixCache::new(2);
    c.insert(0, &[1, 2, 3, 4], &[0, 1]);
    // Second prompt overlaps the first block only; its own first block is a duplicate.
    assert_eq!(c.insert(0, &[1, 2, 7, 8], &[2, 3]), vec![3]);
    let m = c.match_prefix(0, &[1, 2, 3, 4]);
    c.lock(m.node);
    assert_eq!(c.in_use_blocks(), 2);
    assert_eq!(c.evict(10), vec![3], "only the unlocked branch goes");
    c.check_invariants().unwrap();
    c.unlock(m.node);
    assert_eq!(c.evict(10), vec![1, 0], "leaf before its parent");
    assert_eq!(c.cached_blocks(), 0);
    c.check_invariants().unwrap();
}

/// The naive reference: every cached block-aligned prefix with its block, tick and locks.
#[derive(Debug, Clone)]
struct Entry {
    salt: u64,
    prefix: Vec<u32>,
    block: u32,
    tick: u64,
    locks: u32,
}

#[derive(Default)]
struct Reference {
    entries: Vec<Entry>,
    tick: u64,
}

impl Reference {
    fn is_prefix(e: &Entry, salt: u64, tokens: &[u32]) -> bool {
        e.salt == salt && tokens.len() >= e.prefix.len() && tokens[..e.prefix.len()] == e.prefix
    }

    /// Entries on the path of `tokens` (prefixes of it), shortest first.
    fn path(&self, salt: u64, tokens: &[u32], bs: usize) -> Vec<usize> {
        let mut out = Vec::new();
        for k in 1..=tokens.len() / bs {
            match self
                .entries
                .iter()
                .position(|e| e.salt == salt && e.prefix == tokens[..k * bs])
            {
                Some(i) => out.push(i),
                None => break,
            }
        }
        out
    }

    fn touch(&mut self, path: &[usize]) {
        self.tick += 1;
        for &i in path {
            self.entries[i].tick = self.tick;
        }
    }

    fn evict_one(&mut self) -> Option<u32> {
        let leaf = |e: &Entry| {
            !self
                .entries
                .iter()
                .any(|o| o.prefix.len() > e.prefix.len() && Self::is_prefix(e, o.salt, &o.prefix))
        };
        let i = (0..self.entries.len())
            .filter(|&i| self.entries[i].locks == 0 && leaf(&self.entries[i]))
            .min_by_key(|&i| self.entries[i].tick)?;
        Some(self.entries.remove(i).block)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u64, Vec<u32>),
    Match(u64, Vec<u32>, bool),
    Unlock(usize),
    Evict(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let toks = prop::collection::vec(0u32..3, 0..10);
    prop_oneof![
        (0u64..2, toks.clone()).prop_map(|(s, t)| Op::Insert(s, t)),
        (0u64..2, toks, any::<bool>()).prop_map(|(s, t, l)| Op::Match(s, t, l)),
        any::<usize>().prop_map(Op::Unlock),
        (0usize..4).prop_map(Op::Evict),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn radix_agrees_with_naive_prefix_list(ops in prop::collection::vec(op(), 1..60)) {
        let bs = 2;
        let mut c = RadixCache::new(bs);
        let mut r = Reference::default();
        let mut next_block = 0u32;
        let mut held: Vec<(NodeId, u64, Vec<u32>)> = Vec::new();
        let (mut hits, mut misses) = (0u64, 0u64);
        for op in ops {
            match op {
                Op::Insert(salt, toks) => {
                    let blocks: Vec<u32> = (0..toks.len() / bs)
                        .map(|i| next_block + i as u32)
                        .collect();
                    next_block += blocks.len() as u32;
                    let adopted = c.insert(salt, &toks, &blocks);
                    let mut expect = Vec::new();
                    for (k, &b) in blocks.iter().enumerate() {
                        let p = &toks[..(k + 1) * bs];
                        if !r.entries.iter().any(|e| e.salt == salt && e.prefix == p) {
                            r.entries.push(Entry { salt, prefix: p.to_vec(), block: b, tick: 0, locks: 0 });
                            expect.push(b);
                        }
                    }
                    prop_assert_eq!(adopted, expect);
                    let path = r.path(salt, &toks, bs);
                    r.touch(&path);
                }
                Op::Match(salt, toks, lock) => {
                    let m = c.match_prefix(salt, &toks);
                    let path = r.path(salt, &toks, bs);
                    let blocks: Vec<u32> = path.iter().map(|&i| r.entries[i].block).collect();
                    prop_assert_eq!(&m.blocks, &blocks);
                    prop_assert_eq!(m.tokens, path.len() * bs);
                    hits += m.tokens as u64;
                    misses += (toks.len() - m.tokens) as u64;
                    r.touch(&path);
                    if lock {
                        c.lock(m.node);
                        for &i in &path {
                            r.entries[i].locks += 1;
                        }
                        held.push((m.node, salt, toks[..m.tokens].to_vec()));
                    }
                }
                Op::Unlock(k) => {
                    if !held.is_empty() {
                        let (node, salt, prefix) = held.remove(k % held.len());
                        c.unlock(node);
                        for i in r.path(salt, &prefix, bs) {
                            r.entries[i].locks -= 1;
                        }
                    }
                }
                Op::Evict(n) => {
                    let got = c.evict(n);
                    let want: Vec<u32> = (0..n).map_while(|_| r.evict_one()).collect();
                    prop_assert_eq!(got, want, "LRU order, never a locked block");
                }
            }
            c.check_invariants().map_err(TestCaseError::fail)?;
            let in_use = r.entries.iter().filter(|e| e.locks > 0).count();
            prop_assert_eq!(c.cached_blocks(), r.entries.len());
            prop_assert_eq!(c.in_use_blocks(), in_use);
            prop_assert_eq!(c.evictable_blocks() + c.in_use_blocks(), c.cached_blocks());
            prop_assert_eq!((c.counters().hit_tokens, c.counters().miss_tokens), (hits, misses));
        }
    }
}
