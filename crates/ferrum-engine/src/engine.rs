//! The synchronous engine core: submit requests, call [`Engine::step`], drain events.
//!
//! One [`Engine`] owns the scheduler (and through it the KV block pool and prefix cache), the
//! model runner and each request's sampler and text stream. It does no IO and spawns no
//! threads; [`crate::EngineHandle`] runs it on a loop thread for servers.

use std::collections::HashMap;
use std::sync::Arc;

use ferrum_model::sampler::{Sampled, Sampler};
use ferrum_model::Batch;

use crate::error::EngineError;
use crate::policy::{Fcfs, SchedulingPolicy};
use crate::radix::CacheCounters;
use crate::request::{Event, FinishReason, Request, RequestId, SubmitError, TokenLogprob, Usage};
use crate::scheduler::{Scheduler, SchedulerConfig, SeqMeta};
use crate::spec::{
    Drafter, ReqSpec, SpecConfig, SpecCounters, SpecKey, SpecMethod, SpecStats, Speculator,
};
use crate::stream::TextStream;

/// Computes logits for a batch over the paged KV cache; the real Llama runtime implements
/// it, tests use [`crate::testing::FakeRunner`].
pub trait ModelRunner: Send + 'static {
    /// Logits per row.
    fn vocab_size(&self) -> usize;
    /// Runs one forward pass, writing the batch's new tokens' K/V into the blocks of each
    /// sequence's block table; returns logits for `batch.logits_rows` (row-major, rows x vocab).
    fn forward(&mut self, batch: &Batch) -> Result<&[f32], EngineError>;
}

/// Token id to bytes, so the engine can stream text and match stop strings.
pub trait TokenText: Send + Sync {
    /// The bytes token `id` stands for (may be part of a UTF-8 character; empty if unknown).
    fn token_bytes(&self, id: u32) -> &[u8];
}

/// Engine sizes and limits.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV blocks in the pool (the runner must have as many).
    pub num_blocks: usize,
    /// Token budget of one step (decodes plus prefill chunks).
    pub max_batched_tokens: usize,
    /// Most requests computed together.
    pub max_running: usize,
    /// Most requests queued; beyond it submit returns [`SubmitError::QueueFull`].
    pub max_waiting: usize,
    /// Reuse computed prompt blocks across requests.
    pub enable_prefix_cache: bool,
    /// The model's context length: prompt + max_tokens may not exceed it.
    pub max_model_len: usize,
    /// Tokens that end generation unless the request sets `ignore_eos`.
    pub eos_token_ids: Vec<u32>,
    /// Give each tenant its own prefix-cache partition (default: one shared cache).
    pub cache_salt_by_tenant: bool,
    /// Per tenant, prompt prefixes (token ids) it declares public: with
    /// `cache_salt_by_tenant`, a prompt starting with one is cached, up to the prefix's last
    /// full block only, in a partition shared by every tenant declaring the same prefix.
    pub public_prefixes: HashMap<String, Vec<Vec<u32>>>,
    /// With the prefix cache on, hold back admitting a request for a step while a running
    /// request computes the same prefix, so the prefix is computed once, not by each of a
    /// burst of requests sharing it (default on).
    pub defer_shared_prefix: bool,
    /// Most steps one request may be held back by `defer_shared_prefix`, so a request never
    /// starves behind a slow producer.
    pub max_defer_steps: u32,
    /// Speculative decoding (off by default); see [`crate::spec`].
    pub speculative: SpecConfig,
    /// What happens to an agent program's KV between its turns (default: plain LRU).
    pub retention: crate::retention::RetentionConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            num_blocks: 1024,
            max_batched_tokens: 512,
            max_running: 64,
            max_waiting: 4096,
            enable_prefix_cache: true,
            max_model_len: 8192,
            eos_token_ids: Vec::new(),
            cache_salt_by_tenant: false,
            public_prefixes: HashMap::new(),
            defer_shared_prefix: true,
            max_defer_steps: 8,
            speculative: SpecConfig::default(),
            retention: crate::retention::RetentionConfig::default(),
        }
    }
}

impl EngineConfig {
    /// Rejects zero sizes.
    pub fn validate(&self) -> Result<(), EngineError> {
        let fields = [
            ("block_size", self.block_size),
            ("num_blocks", self.num_blocks),
            ("max_batched_tokens", self.max_batched_tokens),
            ("max_running", self.max_running),
            ("max_waiting", self.max_waiting),
            ("max_model_len", self.max_model_len),
        ];
        for (name, v) in fields {
            if v == 0 {
                return Err(EngineError::Config(format!("{name} must be > 0")));
            }
        }
        if u32::try_from(self.num_blocks).is_err() {
            return Err(EngineError::Config("num_blocks must fit in u32".into()));
        }
        Ok(())
    }
}

/// What one [`Engine::step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepStats {
    /// Sequences in the batch.
    pub seqs: usize,
    /// Tokens computed.
    pub tokens: usize,
    /// Tokens sampled.
    pub sampled: usize,
    /// Requests preempted while scheduling.
    pub preempted: usize,
    /// Requests that finished.
    pub finished: usize,
}

/// Engine-wide gauges and counters, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Blocks in the pool.
    pub blocks_total: usize,
    /// Blocks nobody holds.
    pub blocks_free: usize,
    /// Blocks held by requests or the cache.
    pub blocks_used: usize,
    /// Blocks held by the prefix cache.
    pub cached_blocks: usize,
    /// Prefix-cache lookups, hits, misses, evictions.
    pub cache: CacheCounters,
    /// Running requests.
    pub running: usize,
    /// Waiting requests.
    pub waiting: usize,
    /// Prompt positions computed.
    pub prefill_tokens: u64,
    /// Generated positions computed.
    pub decode_tokens: u64,
    /// Tokens served from the prefix cache at admissions.
    pub cache_hit_tokens: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Admissions held back because a running request was computing the same prefix.
    pub deferrals: u64,
    /// Steps that ran a forward pass.
    pub steps: u64,
    /// Speculative decoding counters (drafted / accepted by drafter, batch, cache hit).
    pub spec: SpecStats,
    /// Blocks pinned for agent programs.
    pub pinned_blocks: usize,
    /// Shadow mode: blocks `ttl` would hold pinned now (virtual pins; none are held).
    pub shadow_pinned_blocks: usize,
    /// Agent-program retention counters.
    pub retention: crate::retention::RetentionCounters,
}

struct Output {
    sampler: Sampler,
    text: TextStream,
    generated: usize,
    max_tokens: usize,
    stop_ids: Vec<u32>,
    ignore_eos: bool,
    logprobs: bool,
    prompt_len: usize,
    spec: ReqSpec,
}

/// The synchronous engine; see the module docs.
pub struct Engine<R: ModelRunner> {
    cfg: EngineConfig,
    runner: R,
    text: Arc<dyn TokenText>,
    sched: Scheduler,
    outputs: HashMap<RequestId, Output>,
    events: Vec<(RequestId, Event)>,
    next_id: u64,
    steps: u64,
    batch: Batch,
    row: Vec<f32>,
    spec: Speculator,
    /// Scratch: a chunk's tokens, drafted tokens, running ids, verified tokens.
    chunk_toks: Vec<u32>,
    draft_buf: Vec<u32>,
    ids: Vec<RequestId>,
    emitted: Vec<u32>,
}

/// Cache partition of public prefixes (shared by every tenant declaring the same one).
const PUBLIC_SALT: u64 = 0x7075_626c_6963_0001;

fn salt_of(tenant: &str) -> u64 {
    // FNV-1a: stable across runs and platforms, unlike the std hasher; never 0 in practice.
    tenant.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Turns one sampled token into its event; returns the finish reason if it ends the request.
fn on_token(
    out: &mut Output,
    text: &dyn TokenText,
    eos: &[u32],
    s: Sampled,
) -> (Event, Option<FinishReason>) {
    out.generated += 1;
    out.sampler.accept(s.token);
    let is_eos = !out.ignore_eos && eos.contains(&s.token);
    let (delta, finish) = if is_eos || out.stop_ids.contains(&s.token) {
        (out.text.flush(), Some(FinishReason::Stop))
    } else {
        let p = out.text.push(text.token_bytes(s.token));
        if p.stopped {
            (p.text, Some(FinishReason::Stop))
        } else if out.generated >= out.max_tokens {
            (p.text + &out.text.flush(), Some(FinishReason::Length))
        } else {
            (p.text, None)
        }
    };
    let logprob = out.logprobs.then_some(TokenLogprob {
        logprob: s.logprob,
        top: s.top,
    });
    let ev = Event::Token {
        id: s.token,
        text: delta,
        logprob,
    };
    (ev, finish)
}

/// Verifies one drafted chunk: `rows` holds the logits after the known token and after each
/// drafted token. Emits tokens as plain decoding would (each through [`on_token`], so stops,
/// EOS, max_tokens and logprobs behave the same) until a draft is rejected, the request
/// finishes, or all drafts are accepted and the target's bonus token is emitted. Leaves the
/// emitted tokens in `emitted`; returns the number of accepted drafts and the finish reason.
#[allow(clippy::too_many_arguments)]
fn verify(
    out: &mut Output,
    text: &dyn TokenText,
    eos: &[u32],
    draft: &[u32],
    rows: &[f32],
    scratch: &mut Vec<f32>,
    emitted: &mut Vec<u32>,
    mut emit: impl FnMut(Event),
) -> (usize, Option<FinishReason>) {
    let vocab = rows.len() / (draft.len() + 1);
    emitted.clear();
    let mut accepted = 0;
    for (i, row) in rows.chunks_exact(vocab).enumerate() {
        scratch.clear();
        scratch.extend_from_slice(row);
        let (sampled, ok) = match draft.get(i) {
            Some(&d) => out.sampler.sample_after_draft(scratch, d),
            None => (out.sampler.sample(scratch), false),
        };
        emitted.push(sampled.token);
        let (ev, fin) = on_token(out, text, eos, sampled);
        emit(ev);
        accepted += usize::from(ok);
        if fin.is_some() {
            return (accepted, fin);
        }
        if !ok {
            break;
        }
    }
    (accepted, None)
}

impl<R: ModelRunner> Engine<R> {
    /// Builds an engine with the first-come-first-served policy.
    pub fn new(
        runner: R,
        text: Arc<dyn TokenText>,
        cfg: EngineConfig,
    ) -> Result<Self, EngineError> {
        Self::with_policy(runner, text, cfg, Box::new(Fcfs))
    }

    /// Builds an engine with a custom scheduling policy.
    pub fn with_policy(
        runner: R,
        text: Arc<dyn TokenText>,
        cfg: EngineConfig,
        policy: Box<dyn SchedulingPolicy>,
    ) -> Result<Self, EngineError> {
        cfg.validate()?;
        if runner.vocab_size() == 0 {
            return Err(EngineError::Config("runner has an empty vocabulary".into()));
        }
        let sched = Scheduler::new(
            SchedulerConfig {
                block_size: cfg.block_size,
                num_blocks: cfg.num_blocks,
                max_batched_tokens: cfg.max_batched_tokens,
                max_running: cfg.max_running,
                enable_prefix_cache: cfg.enable_prefix_cache,
                defer_shared_prefix: cfg.defer_shared_prefix,
                max_defer_steps: cfg.max_defer_steps,
            },
            policy,
        );
        let mut sched = sched;
        sched.set_retention(cfg.retention.clone());
        Ok(Engine {
            runner,
            text,
            sched,
            outputs: HashMap::new(),
            events: Vec::new(),
            next_id: 0,
            steps: 0,
            batch: Batch::default(),
            row: Vec::new(),
            spec: Speculator::new(cfg.speculative.row_cost_prior),
            chunk_toks: Vec::new(),
            draft_buf: Vec::new(),
            ids: Vec::new(),
            emitted: Vec::new(),
            cfg,
        })
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Validates and queues a request; it produces events from later steps.
    pub fn submit(&mut self, req: Request) -> Result<RequestId, SubmitError> {
        let vocab = self.runner.vocab_size();
        if req.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if req.max_tokens == 0 {
            return Err(SubmitError::ZeroMaxTokens);
        }
        if let Some(&token) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(SubmitError::TokenOutOfRange { token, vocab });
        }
        let total = req.prompt.len().saturating_add(req.max_tokens);
        if total > self.cfg.max_model_len {
            return Err(SubmitError::TooLong {
                prompt: req.prompt.len(),
                max_tokens: req.max_tokens,
                max_model_len: self.cfg.max_model_len,
            });
        }
        // The last generated token is never fed back, so at most total - 1 positions hold KV.
        let needed = (total - 1).div_ceil(self.cfg.block_size);
        if needed > self.cfg.num_blocks {
            return Err(SubmitError::TooManyBlocks {
                needed,
                available: self.cfg.num_blocks,
            });
        }
        if self.sched.num_waiting() >= self.cfg.max_waiting
            || !self.sched.accepts(req.tenant.as_deref())
        {
            return Err(SubmitError::QueueFull(self.sched.num_waiting()));
        }
        let sampler = Sampler::new(req.params.clone(), &req.prompt)
            .map_err(|e| SubmitError::InvalidParams(e.msg))?;
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let (salt, cache_limit) = self.cache_partition(req.tenant.as_deref(), &req.prompt);
        self.outputs.insert(
            id,
            Output {
                sampler,
                text: TextStream::new(&req.stop),
                generated: 0,
                max_tokens: req.max_tokens,
                stop_ids: req.stop_token_ids,
                ignore_eos: req.ignore_eos,
                logprobs: req.logprobs,
                prompt_len: req.prompt.len(),
                spec: ReqSpec::new(req.speculative.unwrap_or(self.cfg.speculative.method)),
            },
        );
        let meta = SeqMeta {
            tenant: req.tenant,
            user: req.user,
            program: req.program,
            tool: req.tool,
            salt,
            cache_limit,
        };
        self.sched.add(id, req.prompt, meta);
        Ok(id)
    }

    /// The prefix-cache partition of a prompt of `tenant`, and how many leading tokens of it
    /// may be cached there: the tenant's own salt, or, for a prompt starting with one of the
    /// tenant's public prefixes (at least one block long), the shared public salt limited to
    /// the prefix's full blocks, so nothing private is ever published where others look.
    fn cache_partition(&self, tenant: Option<&str>, prompt: &[u32]) -> (u64, Option<usize>) {
        let Some(t) = tenant.filter(|_| self.cfg.cache_salt_by_tenant) else {
            return (0, None);
        };
        let bs = self.cfg.block_size;
        let public = self.cfg.public_prefixes.get(t).and_then(|ps| {
            ps.iter()
                .filter(|p| p.len() >= bs && prompt.starts_with(p))
                .map(|p| p.len() / bs * bs)
                .max()
        });
        match public {
            Some(limit) => (PUBLIC_SALT, Some(limit)),
            None => (salt_of(t), None),
        }
    }

    /// Ends a request now: its unshared blocks are freed at once and a `Finished {
    /// Cancelled }` event is queued. Returns `false` if the request is unknown or finished.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        if !self.outputs.contains_key(&id) {
            return false;
        }
        self.finish(id, FinishReason::Cancelled);
        true
    }

    fn finish(&mut self, id: RequestId, reason: FinishReason) {
        let Some(out) = self.outputs.remove(&id) else {
            return;
        };
        let state = self.sched.finish(id);
        let cached = state.as_ref().and_then(|s| s.first_hit).unwrap_or(0);
        if let Some(s) = &state {
            if out.spec.method != crate::spec::SpecMethod::Off
                || self.cfg.speculative.method != crate::spec::SpecMethod::Off
            {
                self.spec.finished(id, &s.tokens, s.prompt_len);
            }
        }
        let usage = Usage {
            prompt_tokens: out.prompt_len,
            completion_tokens: out.generated,
            cached_tokens: cached,
        };
        self.events.push((id, Event::Finished { reason, usage }));
    }

    /// Whether any request is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.outputs.is_empty()
    }

    /// Runs one scheduling step and forward pass; sampled tokens and finishes become events.
    pub fn step(&mut self) -> StepStats {
        self.draft();
        let plan = self.sched.schedule();
        let mut stats = StepStats {
            preempted: plan.preempted.len(),
            ..StepStats::default()
        };
        if plan.chunks.is_empty() {
            return stats;
        }
        self.batch.clear();
        for c in &plan.chunks {
            let s = self.sched.seq(c.id).expect("scheduled request has state");
            let known = c.len - c.draft.len();
            self.chunk_toks.clear();
            self.chunk_toks
                .extend_from_slice(&s.tokens[c.start..c.start + known]);
            self.chunk_toks.extend_from_slice(&c.draft);
            let row = self.batch.push_seq(&self.chunk_toks, c.start, &s.blocks);
            // Generated tokens use the runtime's decode arithmetic and prompt tokens its
            // prompt arithmetic, however the scheduler chunked them (batch invariance).
            if let Some(last) = self.batch.seqs.last_mut() {
                last.decode = c.start >= s.prompt_len;
            }
            if c.needs_logits {
                // A drafted chunk needs logits after its known token and after every draft.
                self.batch.logits_rows.extend(row - c.draft.len()..=row);
            }
        }
        let decoding = plan
            .chunks
            .iter()
            .filter(|c| c.needs_logits && c.len - c.draft.len() == 1)
            .count();
        stats.seqs = plan.chunks.len();
        stats.tokens = self.batch.tokens.len();
        self.steps += 1;
        let vocab = self.runner.vocab_size();
        let rows = self.batch.logits_rows.len();
        let mut finished = Vec::new();
        // Decode-only steps feed the speculation cost model (prefill chunks cost differently).
        let timed = (decoding == plan.chunks.len()).then(std::time::Instant::now);
        let result = self.runner.forward(&self.batch);
        if let Some(t0) = timed {
            self.spec
                .cost
                .observe(self.batch.tokens.len(), t0.elapsed().as_secs_f64());
        }
        let error = match result {
            Ok(logits) if logits.len() == rows * vocab => {
                self.sched.commit(&plan.chunks);
                let with_logits = plan.chunks.iter().filter(|c| c.needs_logits);
                let mut next_row = 0;
                for c in with_logits {
                    let out = self
                        .outputs
                        .get_mut(&c.id)
                        .expect("scheduled request has output");
                    let rows = &logits[next_row * vocab..(next_row + 1 + c.draft.len()) * vocab];
                    next_row += 1 + c.draft.len();
                    if !c.draft.is_empty() {
                        let (accepted, fin) = verify(
                            out,
                            &*self.text,
                            &self.cfg.eos_token_ids,
                            &c.draft,
                            rows,
                            &mut self.row,
                            &mut self.emitted,
                            |ev| self.events.push((c.id, ev)),
                        );
                        stats.sampled += self.emitted.len();
                        let cache_hit = self
                            .sched
                            .seq(c.id)
                            .is_some_and(|s| s.first_hit.unwrap_or(0) > 0);
                        self.sched.append_verified(c.id, &self.emitted);
                        out.spec
                            .record(&self.cfg.speculative, c.draft.len(), accepted);
                        self.spec.record(out.spec.method, c.draft.len(), accepted);
                        self.spec.stats.record(
                            out.spec.method,
                            decoding,
                            cache_hit,
                            c.draft.len(),
                            accepted,
                        );
                        if let Some(reason) = fin {
                            finished.push((c.id, reason));
                        }
                        continue;
                    }
                    let row = rows;
                    self.row.clear();
                    self.row.extend_from_slice(row);
                    let sampled = out.sampler.sample(&mut self.row);
                    self.sched.append_token(c.id, sampled.token);
                    let (ev, fin) = on_token(out, &*self.text, &self.cfg.eos_token_ids, sampled);
                    self.events.push((c.id, ev));
                    stats.sampled += 1;
                    if let Some(reason) = fin {
                        finished.push((c.id, reason));
                    }
                }
                None
            }
            Ok(logits) => Some(format!(
                "runner returned {} logits, expected {rows} x {vocab}",
                logits.len()
            )),
            Err(e) => Some(e.to_string()),
        };
        if let Some(msg) = error {
            tracing::error!("forward pass failed: {msg}");
            finished = plan
                .chunks
                .iter()
                .map(|c| (c.id, FinishReason::Error(msg.clone())))
                .collect();
        }
        stats.finished = finished.len();
        for (id, reason) in finished {
            self.finish(id, reason);
        }
        stats
    }

    /// Asks each speculating decoding request's drafter for a draft (unless the step's decode
    /// batch is too large for verification to be cheap) and hands it to the scheduler.
    fn draft(&mut self) {
        self.ids.clear();
        self.ids.extend_from_slice(self.sched.running());
        let decoding = |sched: &Scheduler, id: &RequestId| {
            sched
                .seq(*id)
                .is_some_and(|s| s.tokens.len() == s.computed + 1)
        };
        self.ids.retain(|id| decoding(&self.sched, id));
        let cfg = &self.cfg.speculative;
        let n = self.ids.len();
        let too_many = n > cfg.max_batch;
        let mut plan = crate::spec::cost::StepPlan::new(n);
        for &id in &self.ids {
            let Some(out) = self.outputs.get_mut(&id) else {
                continue;
            };
            self.draft_buf.clear();
            let room = out.max_tokens.saturating_sub(out.generated + 1);
            let max_len = cfg.max_draft.min(room);
            let len = if too_many || max_len == 0 || out.spec.method == SpecMethod::Off {
                0
            } else {
                self.spec.plan(cfg, &mut out.spec, &mut plan, max_len)
            };
            if len > 0 {
                let method = out.spec.method;
                if let (Some(d), Some(s)) = (self.spec.drafter(method), self.sched.seq(id)) {
                    let t0 = std::time::Instant::now();
                    d.propose(id, &s.tokens, s.prompt_len, len, &mut self.draft_buf);
                    self.draft_buf.truncate(len);
                    let secs = t0.elapsed().as_secs_f64();
                    self.spec
                        .record_draft_time(method, self.draft_buf.len().max(1), secs);
                }
            }
            self.sched.set_draft(id, self.draft_buf.clone());
        }
    }

    /// Registers the drafter used by requests whose method is
    /// [`crate::spec::SpecMethod::External`] (e.g. a draft model).
    pub fn set_external_drafter(&mut self, d: Box<dyn Drafter>) {
        self.spec.set_external(d);
    }

    /// Speculation counters by drafter, decode batch size and prefix-cache hit, sorted.
    pub fn spec_stats(&self) -> Vec<(SpecKey, SpecCounters)> {
        self.spec.stats.cells()
    }

    /// Takes the events produced since the last call, in order.
    pub fn drain_events(&mut self) -> Vec<(RequestId, Event)> {
        std::mem::take(&mut self.events)
    }

    /// Current gauges and lifetime counters.
    pub fn stats(&self) -> EngineStats {
        let pool = self.sched.pool();
        let c = self.sched.counters();
        EngineStats {
            blocks_total: pool.num_blocks(),
            blocks_free: pool.num_free(),
            blocks_used: pool.num_blocks() - pool.num_free(),
            cached_blocks: self.sched.cache().cached_blocks(),
            cache: self.sched.cache().counters(),
            running: self.sched.num_running(),
            waiting: self.sched.num_waiting(),
            prefill_tokens: c.prefill_tokens,
            decode_tokens: c.decode_tokens,
            cache_hit_tokens: c.cache_hit_tokens,
            preemptions: c.preemptions,
            deferrals: c.deferrals,
            steps: self.steps,
            spec: self.spec.stats,
            pinned_blocks: self.sched.cache().pinned_blocks(),
            shadow_pinned_blocks: self.sched.retention().shadow_pinned_blocks(),
            retention: self.sched.retention().counters(),
        }
    }

    /// Ends agent `program`: its pinned KV becomes evictable now. Returns whether the
    /// program was known.
    pub fn release_program(&mut self, program: &str) -> bool {
        self.sched.release_program(program)
    }

    /// Replaces the retention clock (tests and simulations drive time by hand).
    pub fn set_clock(&mut self, clock: crate::retention::Clock) {
        self.sched.set_clock(clock);
    }

    /// The scheduler (read-only: pool, cache, retention state).
    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    /// Per-tenant service counters and shares of the scheduling policy (empty for FCFS).
    pub fn tenant_stats(&self) -> Vec<crate::fair::TenantStats> {
        self.sched.tenant_stats()
    }

    /// Checks the scheduler's pool/cache accounting (tests and debug builds).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.sched.check_invariants()
    }

    /// The model runner (e.g. to read its counters in tests).
    pub fn runner(&self) -> &R {
        &self.runner
    }
}

#[cfg(test)]
mod tests;
