//! Scheduling policies: which waiting request to admit next and which running one to preempt.
//!
//! The scheduler asks the policy at two points of each step and shows it request metadata
//! (tenant, user, program, arrival order, prompt length, progress, cache-hit length), never
//! pool internals, so fairness or agent-aware policies can be added without touching the
//! scheduler. [`Fcfs`] is the default.

use std::time::Instant;

use crate::request::RequestId;

/// What a policy may know about one request.
#[derive(Debug, Clone)]
pub struct RequestInfo<'a> {
    /// The request.
    pub id: RequestId,
    /// Tenant, if given.
    pub tenant: Option<&'a str>,
    /// End user, if given.
    pub user: Option<&'a str>,
    /// Agent program / session, if given.
    pub program: Option<&'a str>,
    /// Arrival order (smaller = earlier), unique per request.
    pub arrival: u64,
    /// Arrival time.
    pub arrived: Instant,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt plus generated tokens so far.
    pub total_tokens: usize,
    /// Tokens whose KV is computed (0 while waiting).
    pub computed_tokens: usize,
    /// Tokens a prefix-cache lookup would serve now (waiting requests, and only when
    /// [`SchedulingPolicy::wants_cache_hits`]; otherwise 0), or served at admission.
    pub cache_hit_tokens: usize,
    /// Times this request has been preempted.
    pub preemptions: u32,
    /// KV blocks the request holds now (0 while waiting).
    pub blocks: usize,
}

/// Decides scheduling order; see the module docs.
pub trait SchedulingPolicy: Send {
    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Whether [`RequestInfo::cache_hit_tokens`] should be filled in for waiting requests
    /// (costs a cache walk per waiting request per admission).
    fn wants_cache_hits(&self) -> bool {
        false
    }

    /// Index into `waiting` of the request to admit next, or `None` to admit nothing more
    /// this step. `waiting` is non-empty and in arrival order.
    fn pick_admit(&mut self, waiting: &[RequestInfo<'_>]) -> Option<usize>;

    /// Index into `running` (non-empty) of the request to preempt to free KV blocks.
    fn pick_preempt(&mut self, running: &[RequestInfo<'_>]) -> usize;

    // Accounting hooks: no-ops by default, so order-only policies ignore them. Fairness
    // policies keep per-client counters from them (see `crate::fair`).

    /// Whether a new request of `tenant` may be queued (per-tenant queue limits); called at
    /// submit, before [`on_arrive`](Self::on_arrive). A refusal is a full queue.
    fn accepts(&self, _tenant: Option<&str>) -> bool {
        true
    }

    /// A request was queued.
    fn on_arrive(&mut self, _req: &RequestInfo<'_>) {}

    /// The scheduler starts a step with these running requests in a pool of `total_blocks`
    /// KV blocks (for per-client KV accounting).
    fn on_step(&mut self, _running: &[RequestInfo<'_>], _total_blocks: usize) {}

    /// A waiting request was admitted: it holds `req.blocks` blocks and
    /// `req.cache_hit_tokens` of its prompt came from the prefix cache.
    fn on_admit(&mut self, _req: &RequestInfo<'_>) {}

    /// A step computed `prompt_tokens` uncached prompt positions of `req` and sampled
    /// `generated` new tokens for it.
    fn on_compute(&mut self, _req: &RequestInfo<'_>, _prompt_tokens: usize, _generated: usize) {}

    /// A running request was preempted back to waiting (its blocks are freed).
    fn on_preempt(&mut self, _req: &RequestInfo<'_>) {}

    /// A request left the engine (finished or cancelled), from waiting or running.
    fn on_finish(&mut self, _req: &RequestInfo<'_>) {}

    /// Per-tenant counters for metrics and the admin view (empty for policies without any).
    fn tenant_stats(&self) -> Vec<crate::fair::TenantStats> {
        Vec::new()
    }
}

/// First come, first served: admit the earliest arrival, preempt the latest.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fcfs;

impl SchedulingPolicy for Fcfs {
    fn name(&self) -> &'static str {
        "fcfs"
    }

    fn pick_admit(&mut self, waiting: &[RequestInfo<'_>]) -> Option<usize> {
        (0..waiting.len()).min_by_key(|&i| waiting[i].arrival)
    }

    fn pick_preempt(&mut self, running: &[RequestInfo<'_>]) -> usize {
        (0..running.len())
            .max_by_key(|&i| running[i].arrival)
            .unwrap_or(0)
    }
}
