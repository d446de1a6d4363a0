//! Prefix cache: a radix tree over block-aligned token prefixes, nodes in an arena.
//!
//! Every node below a root stands for one full KV block: its key is that block's
//! `block_size` tokens and its path from the root is the whole prefix the block's KV depends
//! on. Two prompts that share their first two blocks and then differ look like this
//! (block size 4, one root per cache salt; salt 0 = shared by all tenants):
//!
//! ```text
//! root(salt 0)
//!  └─ [The quick brown fox]        block 7
//!      └─ [jumps over the lazy]    block 2
//!          ├─ [dog and runs away]  block 9   <- prompt A
//!          └─ [cat . It sleeps]    block 4   <- prompt B
//! ```
//!
//! The tree holds one pool reference per cached block (the caller increfs the blocks
//! [`RadixCache::insert`] adopts and decrefs those [`RadixCache::evict`] returns). A request
//! using a matched path locks it ([`RadixCache::lock`] counts on every node up to the root);
//! locked nodes are never evicted. Unlocked leaves sit in an ordered set keyed by
//! `(last-access tick, node)`, so LRU eviction is O(log n) per block, with no heap rebuild.
//! Invariant (checked by [`RadixCache::check_invariants`]): `evictable + in_use == cached`.
//!
//! Retention pins ([`RadixCache::pin`], used by [`crate::retention`]) keep a finished agent
//! turn's path cached: a pin is a lock that also counts on each node (`pin <= lock`), so
//! pinned blocks can be counted against their cap; only the retention module unpins them.

use std::collections::{BTreeSet, HashMap};

/// Arena index of a tree node; valid while the node is cached (always, while locked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u32);

/// What [`RadixCache::insert_path`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted {
    /// Blocks the tree adopted (new nodes); the caller takes one pool reference on each.
    /// A block whose prefix was already cached is not adopted: the caller keeps sole
    /// ownership of it (its KV duplicates the cached block's).
    pub adopted: Vec<u32>,
    /// Node of the last full block of the inserted tokens (the root if there was none).
    pub node: NodeId,
}

/// Lifetime counters of the prefix cache, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Calls to [`RadixCache::match_prefix`].
    pub lookups: u64,
    /// Tokens served from the cache by lookups.
    pub hit_tokens: u64,
    /// Looked-up tokens not found in the cache.
    pub miss_tokens: u64,
    /// Blocks evicted.
    pub evictions: u64,
}

/// The result of a prefix lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixMatch {
    /// Cached blocks covering the matched prefix, in order.
    pub blocks: Vec<u32>,
    /// Matched tokens (`blocks.len() * block_size`).
    pub tokens: usize,
    /// Deepest matched node (a root if nothing matched); pass it to `lock`/`unlock`.
    pub node: NodeId,
}

#[derive(Debug)]
struct Node {
    parent: Option<NodeId>,
    key: Vec<u32>,
    block: u32,
    children: HashMap<Vec<u32>, NodeId>,
    lock: u32,
    pin: u32,
    tick: u64,
}

/// The prefix cache; see the module docs.
#[derive(Debug)]
pub struct RadixCache {
    block_size: usize,
    nodes: Vec<Option<Node>>,
    free_ids: Vec<u32>,
    roots: HashMap<u64, NodeId>,
    evictable_leaves: BTreeSet<(u64, NodeId)>,
    tick: u64,
    cached: usize,
    in_use: usize,
    pinned: usize,
    counters: CacheCounters,
}

impl RadixCache {
    /// Creates an empty cache for blocks of `block_size` tokens (`block_size > 0`).
    pub fn new(block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be > 0: programming error");
        RadixCache {
            block_size,
            nodes: Vec::new(),
            free_ids: Vec::new(),
            roots: HashMap::new(),
            evictable_leaves: BTreeSet::new(),
            tick: 0,
            cached: 0,
            in_use: 0,
            pinned: 0,
            counters: CacheCounters::default(),
        }
    }

    fn node(&self, id: NodeId) -> &Node {
        self.nodes[id.0 as usize]
            .as_ref()
            .expect("radix node id is live: programming error")
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes[id.0 as usize]
            .as_mut()
            .expect("radix node id is live: programming error")
    }

    fn alloc_node(&mut self, node: Node) -> NodeId {
        match self.free_ids.pop() {
            Some(i) => {
                self.nodes[i as usize] = Some(node);
                NodeId(i)
            }
            None => {
                let i = u32::try_from(self.nodes.len()).expect("radix arena fits in u32");
                self.nodes.push(Some(node));
                NodeId(i)
            }
        }
    }

    fn root(&mut self, salt: u64) -> NodeId {
        if let Some(&r) = self.roots.get(&salt) {
            return r;
        }
        let r = self.alloc_node(Node {
            parent: None,
            key: Vec::new(),
            block: u32::MAX,
            children: HashMap::new(),
            lock: 0,
            pin: 0,
            tick: 0,
        });
        self.roots.insert(salt, r);
        r
    }

    fn is_evictable_leaf(n: &Node) -> bool {
        n.parent.is_some() && n.lock == 0 && n.children.is_empty()
    }

    /// Walks from `salt`'s root along full blocks of `tokens`; returns the deepest node and
    /// the blocks on the way.
    fn walk(&self, root: NodeId, tokens: &[u32]) -> (NodeId, Vec<u32>) {
        let mut node = root;
        let mut blocks = Vec::new();
        for chunk in tokens.chunks_exact(self.block_size) {
            match self.node(node).children.get(chunk) {
                Some(&c) => {
                    blocks.push(self.node(c).block);
                    node = c;
                }
                None => break,
            }
        }
        (node, blocks)
    }

    /// Marks `node` and its ancestors as used now (keeps the evictable set ordered).
    fn touch(&mut self, node: NodeId) {
        self.tick += 1;
        let tick = self.tick;
        let mut cur = Some(node);
        while let Some(id) = cur {
            let n = self.node(id);
            if Self::is_evictable_leaf(n) {
                self.evictable_leaves.remove(&(n.tick, id));
                self.evictable_leaves.insert((tick, id));
            }
            let n = self.node_mut(id);
            n.tick = tick;
            cur = n.parent;
        }
    }

    /// Longest cached block-aligned prefix of `tokens` under `salt`; counts the lookup and
    /// refreshes the matched path's LRU position.
    pub fn match_prefix(&mut self, salt: u64, tokens: &[u32]) -> PrefixMatch {
        let root = self.root(salt);
        let (node, blocks) = self.walk(root, tokens);
        self.touch(node);
        let matched = blocks.len() * self.block_size;
        self.counters.lookups += 1;
        self.counters.hit_tokens += matched as u64;
        self.counters.miss_tokens += (tokens.len() - matched) as u64;
        PrefixMatch {
            blocks,
            tokens: matched,
            node,
        }
    }

    /// How many tokens of `tokens` a lookup would match, without counting or touching.
    pub fn peek_prefix(&self, salt: u64, tokens: &[u32]) -> usize {
        match self.roots.get(&salt) {
            Some(&root) => self.walk(root, tokens).1.len() * self.block_size,
            None => 0,
        }
    }

    /// Pins `node` and its ancestors so they cannot be evicted (one count per call).
    pub fn lock(&mut self, node: NodeId) {
        let mut cur = Some(node);
        while let Some(id) = cur {
            let n = self.node(id);
            let Some(parent) = n.parent else { break };
            if Self::is_evictable_leaf(n) {
                self.evictable_leaves.remove(&(n.tick, id));
            }
            let n = self.node_mut(id);
            n.lock += 1;
            if n.lock == 1 {
                self.in_use += 1;
            }
            cur = Some(parent);
        }
    }

    /// Undoes one [`lock`](Self::lock) of `node`.
    pub fn unlock(&mut self, node: NodeId) {
        let mut cur = Some(node);
        while let Some(id) = cur {
            let n = self.node_mut(id);
            let Some(parent) = n.parent else { break };
            assert!(
                n.lock > 0,
                "unlock of an unlocked radix node: programming error"
            );
            n.lock -= 1;
            if n.lock == 0 {
                self.in_use -= 1;
                let n = self.node(id);
                if Self::is_evictable_leaf(n) {
                    self.evictable_leaves.insert((n.tick, id));
                }
            }
            cur = Some(parent);
        }
    }

    /// Pins `node`'s path for retention: a [`lock`](Self::lock) that also counts as pinned.
    pub fn pin(&mut self, node: NodeId) {
        self.lock(node);
        let mut cur = Some(node);
        while let Some(id) = cur {
            let n = self.node_mut(id);
            let Some(parent) = n.parent else { break };
            n.pin += 1;
            if n.pin == 1 {
                self.pinned += 1;
            }
            cur = Some(parent);
        }
    }

    /// Undoes one [`pin`](Self::pin) of `node` (its blocks become evictable if unlocked).
    pub fn unpin(&mut self, node: NodeId) {
        let mut cur = Some(node);
        while let Some(id) = cur {
            let n = self.node_mut(id);
            let Some(parent) = n.parent else { break };
            assert!(
                n.pin > 0,
                "unpin of an unpinned radix node: programming error"
            );
            n.pin -= 1;
            if n.pin == 0 {
                self.pinned -= 1;
            }
            cur = Some(parent);
        }
        self.unlock(node);
    }

    /// Blocks a [`pin`](Self::pin) of `node` would add to the pinned count.
    pub fn pin_cost(&self, node: NodeId) -> usize {
        let mut cur = Some(node);
        let mut cost = 0;
        while let Some(id) = cur {
            let n = self.node(id);
            let Some(parent) = n.parent else { break };
            cost += usize::from(n.pin == 0);
            cur = Some(parent);
        }
        cost
    }

    /// Blocks on some retention pin's path.
    pub fn pinned_blocks(&self) -> usize {
        self.pinned
    }

    /// Caches the full blocks of `tokens` (block `i` of `blocks` holds tokens
    /// `i*block_size..`). Blocks whose prefix is already cached are left to the caller;
    /// returns the blocks the tree adopted, on which the caller must take a reference.
    pub fn insert(&mut self, salt: u64, tokens: &[u32], blocks: &[u32]) -> Vec<u32> {
        self.insert_path(salt, tokens, blocks).adopted
    }

    /// Like [`insert`](Self::insert), and also returns the node of the deepest inserted (or
    /// already cached) block, so a running request can move its lock down the path it
    /// keeps extending.
    pub fn insert_path(&mut self, salt: u64, tokens: &[u32], blocks: &[u32]) -> Inserted {
        let root = self.root(salt);
        let mut node = root;
        let mut adopted = Vec::new();
        for (chunk, &block) in tokens.chunks_exact(self.block_size).zip(blocks) {
            if let Some(&c) = self.node(node).children.get(chunk) {
                node = c;
                continue;
            }
            let parent = self.node(node);
            if Self::is_evictable_leaf(parent) {
                self.evictable_leaves.remove(&(parent.tick, node));
            }
            let child = self.alloc_node(Node {
                parent: Some(node),
                key: chunk.to_vec(),
                block,
                children: HashMap::new(),
                lock: 0,
                pin: 0,
                tick: 0,
            });
            self.node_mut(node).children.insert(chunk.to_vec(), child);
            self.cached += 1;
            adopted.push(block);
            node = child;
            // A new node is an unlocked leaf until it gets a child; `touch` below gives the
            // deepest one its real tick.
            self.evictable_leaves.insert((0, node));
        }
        self.touch(node);
        Inserted { adopted, node }
    }

    /// Evicts up to `n` unlocked blocks, least recently used leaves first; returns their ids
    /// (the caller drops the tree's reference on each).
    pub fn evict(&mut self, n: usize) -> Vec<u32> {
        let mut out = Vec::new();
        while out.len() < n {
            let Some((_, id)) = self.evictable_leaves.pop_first() else {
                break;
            };
            let node = self.nodes[id.0 as usize]
                .take()
                .expect("evictable node is live: programming error");
            self.free_ids.push(id.0);
            self.cached -= 1;
            self.counters.evictions += 1;
            out.push(node.block);
            let parent = node.parent.expect("evictable node has a parent");
            let p = self.node_mut(parent);
            p.children.remove(&node.key);
            let p = self.node(parent);
            if Self::is_evictable_leaf(p) {
                self.evictable_leaves.insert((p.tick, parent));
            }
        }
        out
    }

    /// Blocks held by the tree.
    pub fn cached_blocks(&self) -> usize {
        self.cached
    }

    /// Cached blocks on a path some request (or a retention pin) has locked.
    pub fn in_use_blocks(&self) -> usize {
        self.in_use
    }

    /// Cached blocks that could be evicted once their descendants are (not locked).
    pub fn evictable_blocks(&self) -> usize {
        self.cached - self.in_use
    }

    /// Lifetime lookup and eviction counters.
    pub fn counters(&self) -> CacheCounters {
        self.counters
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Recomputes every counter and the evictable set from the nodes and compares.
    pub fn check_invariants(&self) -> Result<(), String> {
        let (mut cached, mut in_use, mut pinned) = (0, 0, 0);
        let mut leaves = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            let id = NodeId(i as u32);
            for &c in n.children.values() {
                let child = self.node(c);
                if child.parent != Some(id) || child.lock > n.lock && n.parent.is_some() {
                    return Err(format!("node {c:?} disagrees with its parent {id:?}"));
                }
            }
            if n.parent.is_none() {
                continue;
            }
            cached += 1;
            if n.pin > n.lock {
                return Err(format!("node {id:?} has more pins than locks"));
            }
            pinned += usize::from(n.pin > 0);
            if n.lock > 0 {
                in_use += 1;
            }
            if Self::is_evictable_leaf(n) {
                leaves.insert((n.tick, id));
            }
        }
        let evictable = cached - in_use;
        if cached != self.cached || in_use != self.in_use || evictable + in_use != cached {
            return Err(format!(
                "counters cached={} in_use={} but tree has cached={cached} in_use={in_use}",
                self.cached, self.in_use
            ));
        }
        if pinned != self.pinned {
            return Err(format!("pinned={} but tree has {pinned}", self.pinned));
        }
        if leaves != self.evictable_leaves {
            return Err("evictable leaf set is stale".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
