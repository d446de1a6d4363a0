//! The scheduler: once per step, decides which requests compute how many tokens.
//!
//! There is no prefill phase and no decode phase: each request tracks `computed` tokens
//! (KV in its blocks) against all its tokens (prompt + generated). A step has a token budget
//! (`max_batched_tokens`) and a cap on running requests (`max_running`):
//!
//! 1. running requests with one token left (decodes) get it first;
//! 2. running requests with more left (partly prefilled prompts) get chunks of what remains
//!    of the budget (chunked prefill);
//! 3. then the [`SchedulingPolicy`] admits waiting requests: each first looks up the prefix
//!    cache (hit blocks are locked and shared, only the rest is computed; the last token is
//!    always computed so its logits exist) and gets a first chunk.
//!
//! Prefix sharing between running requests: after every step a request's newly computed
//! *full* blocks are inserted into the radix cache at once (not only when it finishes), and
//! the request moves its cache lock down to the end of its path, so those blocks stay
//! pinned while it runs and later admissions can share them. If the tree already held a
//! block for the same prefix (two requests computed it in the same step), the request keeps
//! its own duplicate block until it is released. With `defer_shared_prefix`, a waiting
//! request whose next uncached block is being computed right now by a running request
//! (same salt, same tokens) is passed over for a step, at most `max_defer_steps` times, so
//! it hits the cache instead of recomputing the shared prefix; otherwise admission follows
//! the policy's order.
//!
//! When blocks run out, unlocked cached blocks are evicted first; then the policy picks a
//! running request (not yet scheduled this step) to preempt: its computed full blocks go
//! into the prefix cache, the rest are freed, and it waits to be recomputed. No new request
//! is admitted in a step that preempted. A request that fits the pool alone always
//! progresses: the first running request may preempt all others.
//!
//! Agent programs ([`crate::retention`]): a finished turn that names a program may leave
//! its cache path pinned. Pins are dropped when expired (checked at the start of every
//! step), and when blocks are short right after unpinned cached blocks, before any
//! preemption; a waiting turn of a pinned program is admitted before other requests.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::block_pool::BlockPool;
use crate::policy::{RequestInfo, SchedulingPolicy};
use crate::radix::{NodeId, RadixCache};
use crate::request::RequestId;
use crate::retention::{Retention, RetentionConfig};

/// Scheduler limits (a subset of [`crate::EngineConfig`]).
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV blocks in the pool.
    pub num_blocks: usize,
    /// Token budget of one step.
    pub max_batched_tokens: usize,
    /// Most requests running at once.
    pub max_running: usize,
    /// Share computed blocks between requests through the radix cache.
    pub enable_prefix_cache: bool,
    /// Hold back a waiting request whose prefix a running request is computing now (only
    /// with the prefix cache on).
    pub defer_shared_prefix: bool,
    /// Most steps one request may be held back by `defer_shared_prefix` (no starvation).
    pub max_defer_steps: u32,
}

/// Who a request belongs to, for policies and cache partitioning.
#[derive(Debug, Clone, Default)]
pub struct SeqMeta {
    /// Tenant, if any.
    pub tenant: Option<String>,
    /// End user, if any.
    pub user: Option<String>,
    /// Agent program / session, if any.
    pub program: Option<String>,
    /// The tool the program waits on after this turn, if named.
    pub tool: Option<String>,
    /// Prefix-cache partition (0 = shared).
    pub salt: u64,
    /// Only this many leading tokens may be looked up in or published to the cache (a
    /// tenant's public prefix shared under a common salt); `None` = all.
    pub cache_limit: Option<usize>,
}

impl SeqState {
    /// The tokens a cache lookup may match: all but the last (its logits are needed),
    /// cut at the cache limit.
    fn lookup(&self) -> &[u32] {
        let n = self.tokens.len() - 1;
        &self.tokens[..self.meta.cache_limit.map_or(n, |l| l.min(n))]
    }

    /// Computed full blocks that may be published to the cache.
    fn publishable(&self, bs: usize) -> usize {
        let limit = self.meta.cache_limit.unwrap_or(usize::MAX);
        self.computed.min(limit) / bs
    }
}

/// One request's scheduling state.
#[derive(Debug)]
pub struct SeqState {
    /// Metadata for the policy.
    pub meta: SeqMeta,
    /// Arrival order.
    pub arrival: u64,
    /// Arrival time.
    pub arrived: Instant,
    /// Prompt followed by generated tokens.
    pub tokens: Vec<u32>,
    /// Prompt length.
    pub prompt_len: usize,
    /// Tokens whose KV is in `blocks`.
    pub computed: usize,
    /// Block table (this request holds one pool reference on each).
    pub blocks: Vec<u32>,
    /// Locked prefix-cache node (end of this request's cached path) while running.
    node: Option<NodeId>,
    /// Leading blocks of this request whose prefix is on its locked cache path.
    on_path: usize,
    /// Steps this request was held back for a prefix being computed by another request.
    pub deferred: u32,
    /// Cache hit at first admission (reported as usage).
    pub first_hit: Option<usize>,
    /// Cache hit at the latest admission.
    pub hit: usize,
    /// Times preempted.
    pub preemptions: u32,
    /// Drafted tokens to verify after the last token in the next step (speculative decoding;
    /// taken by [`Scheduler::schedule`], see [`Scheduler::set_draft`]).
    draft: Vec<u32>,
}

/// Work for one request in one step: compute `tokens[start..start + len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The request.
    pub id: RequestId,
    /// First position computed (tokens before it are in the KV cache).
    pub start: usize,
    /// Tokens computed this step.
    pub len: usize,
    /// The chunk reaches the last token, so its logits are needed to sample.
    pub needs_logits: bool,
    /// Drafted tokens computed after the chunk's last known token (speculative decoding),
    /// included in `len`; their KV counts only once [`Scheduler::append_verified`] accepts them.
    pub draft: Vec<u32>,
}

/// The result of [`Scheduler::schedule`].
#[derive(Debug, Default)]
pub struct Schedule {
    /// Chunks to run, in batch order.
    pub chunks: Vec<Chunk>,
    /// Requests preempted back to waiting during scheduling.
    pub preempted: Vec<RequestId>,
}

/// Lifetime token counters of the scheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedCounters {
    /// Prompt positions computed (recomputation after preemption counts again).
    pub prefill_tokens: u64,
    /// Generated positions computed.
    pub decode_tokens: u64,
    /// Tokens served from the prefix cache at admissions.
    pub cache_hit_tokens: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Admissions passed over because a running request was computing the same prefix.
    pub deferrals: u64,
}

/// Owns the block pool, the prefix cache and every request's scheduling state.
pub struct Scheduler {
    cfg: SchedulerConfig,
    pool: BlockPool,
    cache: RadixCache,
    policy: Box<dyn SchedulingPolicy>,
    seqs: HashMap<RequestId, SeqState>,
    waiting: Vec<RequestId>,
    running: Vec<RequestId>,
    next_arrival: u64,
    counters: SchedCounters,
    retention: Retention,
}

fn info(id: RequestId, s: &SeqState, hit: usize) -> RequestInfo<'_> {
    RequestInfo {
        id,
        tenant: s.meta.tenant.as_deref(),
        user: s.meta.user.as_deref(),
        program: s.meta.program.as_deref(),
        arrival: s.arrival,
        arrived: s.arrived,
        prompt_tokens: s.prompt_len,
        total_tokens: s.tokens.len(),
        computed_tokens: s.computed,
        cache_hit_tokens: hit,
        preemptions: s.preemptions,
        blocks: s.blocks.len(),
    }
}

/// Takes `n` blocks, evicting unlocked cached blocks if the free queue is short, then (when
/// `ret` is given) dropping retention pins one by one (never failing while a pinned block
/// could go). Speculative drafts pass `None`: an optional draft never costs a pin.
fn alloc(
    pool: &mut BlockPool,
    cache: &mut RadixCache,
    mut ret: Option<&mut Retention>,
    n: usize,
) -> Option<Vec<u32>> {
    while pool.num_free() < n {
        let evicted = cache.evict(n - pool.num_free());
        if evicted.is_empty() {
            if ret.as_deref_mut().is_some_and(|r| r.reclaim_one(cache)) {
                continue;
            }
            return None;
        }
        pool.release(&evicted);
    }
    pool.allocate(n)
}

/// Gives back a request's blocks: computed full blocks to the cache, the rest to the pool.
/// Returns the end of the cached path and its tokens, if any block is cached.
fn release(
    pool: &mut BlockPool,
    cache: &mut RadixCache,
    use_cache: bool,
    s: &mut SeqState,
) -> Option<(NodeId, usize)> {
    let mut end = None;
    if use_cache {
        let full = s.publishable(cache.block_size());
        let toks = &s.tokens[..full * cache.block_size()];
        let ins = cache.insert_path(s.meta.salt, toks, &s.blocks[..full]);
        for &b in &ins.adopted {
            pool.incref(b);
        }
        end = (full > 0).then_some((ins.node, toks.len()));
    }
    if let Some(node) = s.node.take() {
        cache.unlock(node);
    }
    pool.release(&s.blocks);
    s.blocks.clear();
    s.computed = 0;
    s.on_path = 0;
    end
}

/// Inserts a running request's computed full blocks that are not yet on its cache path and
/// moves its lock to the new end of the path (lock first, so nothing becomes evictable).
fn publish(pool: &mut BlockPool, cache: &mut RadixCache, s: &mut SeqState) {
    let bs = cache.block_size();
    let full = s.publishable(bs);
    if full <= s.on_path {
        return;
    }
    let ins = cache.insert_path(s.meta.salt, &s.tokens[..full * bs], &s.blocks[..full]);
    for &b in &ins.adopted {
        pool.incref(b);
    }
    cache.lock(ins.node);
    if let Some(old) = s.node.replace(ins.node) {
        cache.unlock(old);
    }
    s.on_path = full;
}

impl Scheduler {
    /// Creates a scheduler with an empty pool and cache.
    pub fn new(cfg: SchedulerConfig, policy: Box<dyn SchedulingPolicy>) -> Self {
        Scheduler {
            pool: BlockPool::new(cfg.num_blocks),
            cache: RadixCache::new(cfg.block_size),
            cfg,
            policy,
            seqs: HashMap::new(),
            waiting: Vec::new(),
            running: Vec::new(),
            next_arrival: 0,
            counters: SchedCounters::default(),
            retention: Retention::new(RetentionConfig::default()),
        }
    }

    /// Sets the KV retention policy for agent programs (before any request is added).
    pub fn set_retention(&mut self, cfg: RetentionConfig) {
        let clock = self.retention.clock().clone();
        self.retention = Retention::new(cfg);
        self.retention.set_clock(clock);
    }

    /// The retention state (pins, predictor, counters).
    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    /// Replaces the retention clock (tests and simulations).
    pub fn set_clock(&mut self, clock: crate::retention::Clock) {
        self.retention.set_clock(clock);
    }

    /// Ends an agent program: drops its pinned KV. Returns whether it was known.
    pub fn release_program(&mut self, program: &str) -> bool {
        self.retention.release_program(program, &mut self.cache)
    }

    /// Blocks held by running work and pins: neither free nor evictable.
    fn held_blocks(&self) -> usize {
        let total = self.cfg.num_blocks;
        total
            .saturating_sub(self.pool.num_free())
            .saturating_sub(self.cache.evictable_blocks())
    }

    /// Share of the pool that running work, pins (in shadow mode, virtual pins too) and
    /// waiting requests need (0..=1).
    fn pressure(&self) -> f64 {
        let total = self.cfg.num_blocks.max(1);
        let held = self.held_blocks() + self.retention.shadow_pinned_blocks();
        let waiting: usize = self
            .waiting
            .iter()
            .map(|id| self.blocks_for(self.seqs[id].tokens.len()))
            .sum();
        ((held + waiting) as f64 / total as f64).min(1.0)
    }

    /// Queues a new request (the caller has validated it).
    pub fn add(&mut self, id: RequestId, prompt: Vec<u32>, meta: SeqMeta) {
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        self.seqs.insert(
            id,
            SeqState {
                meta,
                arrival,
                arrived: Instant::now(),
                prompt_len: prompt.len(),
                tokens: prompt,
                computed: 0,
                blocks: Vec::new(),
                node: None,
                on_path: 0,
                deferred: 0,
                first_hit: None,
                hit: 0,
                preemptions: 0,
                draft: Vec::new(),
            },
        );
        self.policy.on_arrive(&info(id, &self.seqs[&id], 0));
        if let Some(p) = self.seqs[&id].meta.program.as_deref() {
            self.retention.on_arrive(p, arrival);
        }
        self.waiting.push(id);
    }

    /// Whether the policy accepts one more queued request of `tenant` (per-tenant limits).
    pub fn accepts(&self, tenant: Option<&str>) -> bool {
        self.policy.accepts(tenant)
    }

    /// Per-tenant counters of the policy (empty unless it is a fairness policy).
    pub fn tenant_stats(&self) -> Vec<crate::fair::TenantStats> {
        self.policy.tenant_stats()
    }

    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.cfg.block_size)
    }

    /// Plans one step; blocks for every chunk are allocated before it returns.
    pub fn schedule(&mut self) -> Schedule {
        let mut out = Schedule::default();
        let mut budget = self.cfg.max_batched_tokens;
        let mut scheduled: HashSet<RequestId> = HashSet::new();
        let pressure = self.pressure();
        self.retention.expire(&mut self.cache, pressure);
        let infos: Vec<RequestInfo<'_>> = self
            .running
            .iter()
            .map(|id| info(*id, &self.seqs[id], self.seqs[id].hit))
            .collect();
        self.policy.on_step(&infos, self.cfg.num_blocks);
        let mut order = self.running.clone();
        order.sort_by_key(|id| {
            let s = &self.seqs[id];
            s.tokens.len() - s.computed > 1
        });
        for id in order {
            if budget == 0 {
                break;
            }
            if !self.running.contains(&id) {
                continue; // preempted earlier in this step
            }
            let s = self.seqs.get_mut(&id).expect("running request has state");
            let mut draft = std::mem::take(&mut s.draft);
            let n = (s.tokens.len() - s.computed).min(budget);
            if n != 1 || s.tokens.len() - s.computed != 1 {
                draft.clear();
            }
            draft.truncate(budget - n);
            let (computed, held) = (s.computed, s.blocks.len());
            // A draft only ever uses free (or evictable) blocks: it never preempts anyone.
            let spec_need = self
                .blocks_for(computed + n + draft.len())
                .saturating_sub(held);
            let mut spec_blocks = if draft.is_empty() {
                None
            } else {
                alloc(&mut self.pool, &mut self.cache, None, spec_need)
            };
            if spec_blocks.is_none() {
                draft.clear();
            }
            let need = self.blocks_for(computed + n).saturating_sub(held);
            let got = loop {
                if let Some(b) = spec_blocks.take() {
                    break Some(b);
                }
                if let Some(b) = alloc(
                    &mut self.pool,
                    &mut self.cache,
                    Some(&mut self.retention),
                    need,
                ) {
                    break Some(b);
                }
                let cands: Vec<RequestId> = self
                    .running
                    .iter()
                    .copied()
                    .filter(|r| *r != id && !scheduled.contains(r))
                    .collect();
                if cands.is_empty() {
                    break None;
                }
                let infos: Vec<RequestInfo<'_>> = cands
                    .iter()
                    .map(|c| info(*c, &self.seqs[c], self.seqs[c].hit))
                    .collect();
                let victim = cands[self.policy.pick_preempt(&infos).min(cands.len() - 1)];
                self.preempt(victim);
                out.preempted.push(victim);
            };
            let Some(blocks) = got else {
                self.preempt(id);
                out.preempted.push(id);
                continue;
            };
            let s = self.seqs.get_mut(&id).expect("running request has state");
            s.blocks.extend(blocks);
            budget -= n + draft.len();
            out.chunks.push(Chunk {
                id,
                start: s.computed,
                len: n + draft.len(),
                needs_logits: s.computed + n == s.tokens.len(),
                draft,
            });
            scheduled.insert(id);
        }
        if out.preempted.is_empty() {
            self.admit(&mut budget, &mut out);
        }
        let held = self.held_blocks();
        self.retention.shadow_reclaim(held, self.cfg.num_blocks);
        // A slot `lru` left free (short of blocks) would admit a pinned turn under `ttl`.
        for _ in self.running.len()..self.cfg.max_running {
            if !self.retention.shadow_slot_opened() {
                break;
            }
        }
        out
    }

    /// Admits waiting requests in policy order while budget, slots and blocks last.
    fn admit(&mut self, budget: &mut usize, out: &mut Schedule) {
        let bs = self.cfg.block_size;
        // Requests passed over this step (their prefix is being computed by another).
        let mut held: Vec<RequestId> = Vec::new();
        while *budget > 0 && self.running.len() < self.cfg.max_running {
            let cands: Vec<RequestId> = self
                .waiting
                .iter()
                .copied()
                .filter(|id| !held.contains(id))
                .collect();
            if cands.is_empty() {
                break;
            }
            let wants = self.policy.wants_cache_hits() && self.cfg.enable_prefix_cache;
            let infos: Vec<RequestInfo<'_>> = cands
                .iter()
                .map(|id| {
                    let s = &self.seqs[id];
                    let hit = if wants {
                        self.cache.peek_prefix(s.meta.salt, s.lookup())
                    } else {
                        0
                    };
                    info(*id, s, hit)
                })
                .collect();
            let programs: Vec<Option<&str>> = infos.iter().map(|i| i.program).collect();
            let Some(k) = self
                .retention
                .preferred(&programs)
                .or_else(|| self.policy.pick_admit(&infos))
            else {
                break;
            };
            let Some(&id) = cands.get(k) else {
                break;
            };
            if self.prefix_in_flight(id) {
                let s = self.seqs.get_mut(&id).expect("waiting request has state");
                s.deferred += 1;
                self.counters.deferrals += 1;
                held.push(id);
                continue;
            }
            let s = self.seqs.get_mut(&id).expect("waiting request has state");
            let (hit_blocks, node) = if self.cfg.enable_prefix_cache {
                let m = self.cache.match_prefix(s.meta.salt, s.lookup());
                self.cache.lock(m.node);
                (m.blocks, Some(m.node))
            } else {
                (Vec::new(), None)
            };
            let hit_blocks_len = hit_blocks.len();
            let hit = hit_blocks_len * bs;
            let n = (s.tokens.len() - hit).min(*budget);
            let need = (hit + n).div_ceil(bs) - hit_blocks.len();
            let Some(fresh) = alloc(
                &mut self.pool,
                &mut self.cache,
                Some(&mut self.retention),
                need,
            ) else {
                if let Some(node) = node {
                    self.cache.unlock(node);
                }
                break;
            };
            for &b in &hit_blocks {
                self.pool.incref(b);
            }
            s.blocks = hit_blocks;
            s.blocks.extend(fresh);
            s.computed = hit;
            s.node = node;
            s.on_path = hit_blocks_len;
            s.hit = hit;
            if let (None, Some(p)) = (s.first_hit, s.meta.program.as_deref()) {
                self.retention
                    .on_first_admit(p, s.lookup(), hit, s.prompt_len, bs);
            }
            s.first_hit.get_or_insert(hit);
            self.counters.cache_hit_tokens += hit as u64;
            out.chunks.push(Chunk {
                id,
                start: hit,
                len: n,
                needs_logits: hit + n == s.tokens.len(),
                draft: Vec::new(),
            });
            if let Some(p) = s.meta.program.as_deref() {
                self.retention.on_admit(p, &mut self.cache);
            }
            self.waiting.retain(|w| *w != id);
            self.running.push(id);
            self.policy.on_admit(&info(id, &self.seqs[&id], hit));
            *budget -= n;
        }
    }

    /// Whether waiting request `id` should wait: its next block past what the cache holds
    /// is also a block of a running request of the same salt, which will compute (and
    /// publish) it, and `id` has not been held back too often yet.
    fn prefix_in_flight(&self, id: RequestId) -> bool {
        if !self.cfg.enable_prefix_cache || !self.cfg.defer_shared_prefix {
            return false;
        }
        let s = &self.seqs[&id];
        if s.deferred >= self.cfg.max_defer_steps {
            return false;
        }
        let look = s.lookup();
        let want = self.cache.peek_prefix(s.meta.salt, look) + self.cfg.block_size;
        if want > look.len() {
            return false;
        }
        self.running.iter().any(|r| {
            let o = &self.seqs[r];
            o.meta.salt == s.meta.salt && o.tokens.get(..want) == Some(&look[..want])
        })
    }

    fn preempt(&mut self, id: RequestId) {
        let s = self.seqs.get_mut(&id).expect("preempted request has state");
        release(
            &mut self.pool,
            &mut self.cache,
            self.cfg.enable_prefix_cache,
            s,
        );
        s.draft.clear();
        s.preemptions += 1;
        self.counters.preemptions += 1;
        self.policy.on_preempt(&info(id, s, s.hit));
        self.running.retain(|r| *r != id);
        self.waiting.push(id);
    }

    /// Records that the step computed `chunks` (call only after the forward pass succeeded).
    pub fn commit(&mut self, chunks: &[Chunk]) {
        for c in chunks {
            let s = self
                .seqs
                .get_mut(&c.id)
                .expect("scheduled request has state");
            debug_assert_eq!(s.computed, c.start);
            let prefill = (c.start + c.len).min(s.prompt_len).saturating_sub(c.start);
            self.counters.prefill_tokens += prefill as u64;
            self.counters.decode_tokens += (c.len - prefill) as u64;
            // Drafted positions become KV only when verification accepts them.
            s.computed += c.len - c.draft.len();
            if self.cfg.enable_prefix_cache {
                publish(&mut self.pool, &mut self.cache, s);
            }
            let s = &self.seqs[&c.id];
            let uncached_prompt = if s.preemptions == 0 { prefill } else { 0 };
            self.policy.on_compute(
                &info(c.id, s, s.hit),
                uncached_prompt,
                usize::from(c.needs_logits),
            );
        }
    }

    /// Offers drafted tokens to verify after running request `id`'s last token in the next
    /// [`Scheduler::schedule`] (speculative decoding). Used only if the request is decoding
    /// (one token left), within the step's token budget and while free blocks last; a draft
    /// never preempts anyone. Replaces an earlier unused draft.
    pub fn set_draft(&mut self, id: RequestId, draft: Vec<u32>) {
        if let Some(s) = self.seqs.get_mut(&id) {
            s.draft = draft;
        }
    }

    /// After a committed speculative chunk: appends the tokens verification emitted (the
    /// accepted draft prefix, possibly cut at a stop, then the target's own token). All but the
    /// last are drafted tokens whose KV the chunk computed, so they become computed; the
    /// drafted positions beyond them are rolled back (their blocks returned, nothing of them
    /// published to the prefix cache).
    pub fn append_verified(&mut self, id: RequestId, emitted: &[u32]) {
        let bs = self.cfg.block_size;
        let Some(s) = self.seqs.get_mut(&id) else {
            return;
        };
        if emitted.is_empty() {
            return;
        }
        s.tokens.extend_from_slice(emitted);
        s.computed += emitted.len() - 1;
        let keep = s.computed.div_ceil(bs);
        if s.blocks.len() > keep {
            self.pool.release(&s.blocks[keep..]);
            s.blocks.truncate(keep);
        }
        if self.cfg.enable_prefix_cache {
            publish(&mut self.pool, &mut self.cache, s);
        }
    }

    /// Running requests, in admission order (e.g. to draft for the decoding ones).
    pub fn running(&self) -> &[RequestId] {
        &self.running
    }

    /// Appends a sampled token to a request (it is computed in a later step).
    pub fn append_token(&mut self, id: RequestId, token: u32) {
        if let Some(s) = self.seqs.get_mut(&id) {
            s.tokens.push(token);
        }
    }

    /// Removes a request (finished or cancelled): its computed full blocks stay cached (if
    /// the cache is on), every other block it held is freed now. Returns its state.
    pub fn finish(&mut self, id: RequestId) -> Option<SeqState> {
        let mut s = self.seqs.remove(&id)?;
        self.policy.on_finish(&info(id, &s, s.hit));
        s.draft.clear();
        let end = release(
            &mut self.pool,
            &mut self.cache,
            self.cfg.enable_prefix_cache,
            &mut s,
        );
        let was_running = self.running.contains(&id);
        self.running.retain(|r| *r != id);
        self.waiting.retain(|r| *r != id);
        if was_running {
            self.retention.shadow_slot_opened();
        }
        if let Some(p) = s.meta.program.as_deref() {
            let pressure = self.pressure();
            self.retention.on_finish(
                p,
                s.meta.tool.as_deref(),
                end,
                &s.tokens,
                pressure,
                &mut self.cache,
                self.cfg.num_blocks,
            );
        }
        Some(s)
    }

    /// A request's state, if it is known.
    pub fn seq(&self, id: RequestId) -> Option<&SeqState> {
        self.seqs.get(&id)
    }

    /// Requests holding blocks and being computed.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Requests queued for admission (new or preempted).
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The KV block pool (read-only).
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// The prefix cache (read-only).
    pub fn cache(&self) -> &RadixCache {
        &self.cache
    }

    /// Lifetime token counters.
    pub fn counters(&self) -> SchedCounters {
        self.counters
    }

    /// The active policy's name.
    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// Checks pool, cache and the accounting between them: every pool reference is held
    /// by the cache or by exactly one request's block table.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.pool.check_invariants()?;
        self.cache.check_invariants()?;
        let refs: u64 = (0..self.pool.num_blocks() as u32)
            .map(|b| u64::from(self.pool.refcount(b)))
            .sum();
        let held: usize = self.seqs.values().map(|s| s.blocks.len()).sum();
        if refs != (held + self.cache.cached_blocks()) as u64 {
            return Err(format!(
                "{refs} block references but requests hold {held} and the cache {}",
                self.cache.cached_blocks()
            ));
        }
        if self.running.len() > self.cfg.max_running {
            return Err("more running requests than max_running".into());
        }
        for id in &self.waiting {
            if !self.seqs[id].blocks.is_empty() {
                return Err(format!("waiting request {id} holds blocks"));
            }
        }
        for id in &self.running {
            let s = &self.seqs[id];
            if s.blocks.len() < s.computed.div_ceil(self.cfg.block_size) {
                return Err(format!("request {id} has too few blocks for its KV"));
            }
            if s.on_path * self.cfg.block_size > s.computed {
                return Err(format!("request {id} published blocks it has not computed"));
            }
            if self.cfg.enable_prefix_cache && s.publishable(self.cfg.block_size) != s.on_path {
                return Err(format!(
                    "request {id} has computed full blocks not in the cache"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
