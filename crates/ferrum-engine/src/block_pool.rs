//! The KV block pool: a fixed set of block ids, their reference counts and a free queue.
//!
//! The pool owns exactly one thing: which blocks are in use and by how many holders. A holder
//! is a running request (one reference per block in its block table) or the prefix cache (one
//! reference per cached block). A block returns to the free queue when its last reference is
//! dropped. Running out of blocks is back-pressure, so [`BlockPool::allocate`] returns `None`
//! rather than an error; releasing a block that is not held is a programming error and panics.

use std::collections::VecDeque;

/// Fixed-size pool of KV cache blocks addressed by `u32` ids `0..num_blocks`.
#[derive(Debug, Clone)]
pub struct BlockPool {
    refcounts: Vec<u32>,
    free: VecDeque<u32>,
}

impl BlockPool {
    /// Creates a pool with all `num_blocks` blocks free.
    pub fn new(num_blocks: usize) -> Self {
        let n = u32::try_from(num_blocks).expect("block count fits in u32: programming error");
        BlockPool {
            refcounts: vec![0; num_blocks],
            free: (0..n).collect(),
        }
    }

    /// Total number of blocks, free or not.
    pub fn num_blocks(&self) -> usize {
        self.refcounts.len()
    }

    /// Number of blocks nobody holds.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Takes `n` free blocks, each with one reference, or `None` (taking nothing) if fewer
    /// than `n` are free: the caller decides whether to evict, preempt or wait.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.free.len() {
            return None;
        }
        let ids: Vec<u32> = self.free.drain(..n).collect();
        for &id in &ids {
            debug_assert_eq!(self.refcounts[id as usize], 0);
            self.refcounts[id as usize] = 1;
        }
        Some(ids)
    }

    /// Adds a holder to a block that is already held (sharing a cached block).
    pub fn incref(&mut self, id: u32) {
        let rc = &mut self.refcounts[id as usize];
        assert!(*rc > 0, "incref of free block {id}: programming error");
        *rc += 1;
    }

    /// Drops one holder of a block; returns `true` if that freed the block.
    pub fn decref(&mut self, id: u32) -> bool {
        let rc = &mut self.refcounts[id as usize];
        assert!(*rc > 0, "decref of free block {id}: programming error");
        *rc -= 1;
        if *rc == 0 {
            // Most recently freed first: reusing warm blocks keeps the touched part of
            // the (lazily allocated) pool, and so the RSS, as small as the peak load needs.
            self.free.push_front(id);
            true
        } else {
            false
        }
    }

    /// Drops one holder of each block in `ids`.
    pub fn release(&mut self, ids: &[u32]) {
        for &id in ids {
            self.decref(id);
        }
    }

    /// Current number of holders of block `id` (0 = free).
    pub fn refcount(&self, id: u32) -> u32 {
        self.refcounts.get(id as usize).copied().unwrap_or(0)
    }

    /// Checks that the free queue holds exactly the blocks with no holders, once each.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = vec![false; self.refcounts.len()];
        for &id in &self.free {
            let i = id as usize;
            if seen[i] {
                return Err(format!("block {id} is twice in the free queue"));
            }
            seen[i] = true;
            if self.refcounts[i] != 0 {
                return Err(format!(
                    "free block {id} has refcount {}",
                    self.refcounts[i]
                ));
            }
        }
        let zero = self.refcounts.iter().filter(|&&r| r == 0).count();
        if zero != self.free.len() {
            return Err(format!(
                "{zero} blocks have no holder but {} are free",
                self.free.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_is_all_or_nothing() {
        let mut p = BlockPool::new(4);
        let a = p.allocate(3).expect("3 of 4 free");
        assert_eq!(a.len(), 3);
        assert!(p.allocate(2).is_none());
        assert_eq!(p.num_free(), 1);
        p.check_invariants().unwrap();
    }

    #[test]
    fn shared_block_is_freed_only_by_last_holder() {
        let mut p = BlockPool::new(2);
        let a = p.allocate(1).unwrap();
        p.incref(a[0]);
        assert!(!p.decref(a[0]));
        assert_eq!(p.num_free(), 1);
        assert!(p.decref(a[0]));
        assert_eq!(p.num_free(), 2);
        p.check_invariants().unwrap();
    }

    #[test]
    fn most_recently_freed_blocks_are_reused_first() {
        let mut p = BlockPool::new(3);
        let a = p.allocate(1).unwrap();
        p.release(&a);
        let b = p.allocate(3).unwrap();
        assert_eq!(b.first(), a.first());
        p.release(&b);
        assert_eq!(p.allocate(1).unwrap(), vec![b[2]]);
    }

    #[test]
    #[should_panic(expected = "programming error")]
    fn double_free_is_a_programming_error() {
        let mut p = BlockPool::new(1);
        let a = p.allocate(1).unwrap();
        p.decref(a[0]);
        p.decref(a[0]);
    }
}
