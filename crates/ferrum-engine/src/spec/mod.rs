//! Exact speculative decoding: cheap drafters propose tokens, one forward pass verifies them.
//!
//! On CPU a decode step reads every weight once whatever the number of rows, so verifying `k`
//! drafted tokens of a request costs little more than decoding one. Each step, for every
//! decoding request that speculates, the engine asks a [`Drafter`] for up to
//! [`SpecConfig::max_draft`] tokens and the scheduler appends them to the request's one-token
//! chunk ([`crate::scheduler::Scheduler::set_draft`]). The model computes all rows of the chunk
//! with its decode arithmetic, each over its own causal context, so row `i`'s logits are bit for
//! bit those plain decoding would give after the first `i` drafted tokens.
//!
//! Verification ([`ferrum_model::sampler::Sampler::sample_after_draft`]): greedy requests keep
//! the longest prefix of the draft that equals the argmax, then the target's own next token;
//! sampled requests use rejection sampling (the drafters here are deterministic, so the draft
//! distribution is a point mass and the test is "accept with probability p(draft), else draw
//! from p without the draft"), so outputs have exactly the target's distribution. Emitted
//! tokens go through the same stop/EOS/max-tokens/logprobs path as plain decoding, one by one,
//! and the first that finishes the request ends verification. KV of rejected drafts is rolled
//! back ([`crate::scheduler::Scheduler::append_verified`]): it is never counted as computed,
//! never published to the prefix cache, and its extra blocks go back to the pool.
//!
//! Fallback keeps speculation from costing throughput. With [`SpecConfig::cost_aware`] (the
//! default) each request drafts only as many tokens as are expected to pay for their
//! verification rows, from its own run-acceptance estimate and a cost model of the engine's
//! decode steps learned online ([`cost`]); a request whose drafts do not pay stops drafting
//! and probes again with short drafts at growing intervals, and as the batch grows the price
//! of a row rises until no request drafts. Without it, a request whose acceptance rate falls
//! below [`SpecConfig::min_acceptance`] stops drafting for a while. Either way no request
//! drafts in a step with more than [`SpecConfig::max_batch`] decoding requests.
//!
//! Drafters: [`NgramDrafter`] (prompt lookup in the request's own context),
//! [`SuffixDrafter`] (suffix matching over the request's context and earlier requests' outputs)
//! and [`ModelDrafter`] (a draft model with the same vocabulary, optionally vocabulary-pruned).

use crate::request::RequestId;

pub mod cost;
mod draft_model;
mod ngram;
mod suffix;

pub use draft_model::ModelDrafter;
pub use ngram::NgramDrafter;
pub use suffix::SuffixDrafter;

/// Proposes tokens likely to follow a request's context; verification decides what is kept,
/// so a drafter can be wrong without changing any output, only speed.
pub trait Drafter: Send {
    /// Short name for metrics and logs.
    fn name(&self) -> &'static str;
    /// Writes up to `max_len` proposed tokens after `context` (prompt then generated tokens)
    /// into `out` (cleared first). `prompt_len` tells where the generated part starts.
    fn propose(
        &mut self,
        id: RequestId,
        context: &[u32],
        prompt_len: usize,
        max_len: usize,
        out: &mut Vec<u32>,
    );
    /// Request `id` ended with these tokens; drafters that learn across requests keep them.
    fn finished(&mut self, _id: RequestId, _tokens: &[u32], _prompt_len: usize) {}
}

/// Which drafter a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SpecMethod {
    /// Plain decoding.
    #[default]
    Off,
    /// Prompt lookup: [`NgramDrafter`].
    Ngram,
    /// Suffix matching over context and earlier outputs: [`SuffixDrafter`].
    Suffix,
    /// A drafter registered with [`crate::Engine::set_external_drafter`] (e.g. a draft model).
    External,
}

impl SpecMethod {
    /// Parses `off`, `ngram`, `suffix` or `draft` (the external drafter).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" | "none" => Some(SpecMethod::Off),
            "ngram" => Some(SpecMethod::Ngram),
            "suffix" => Some(SpecMethod::Suffix),
            "draft" | "external" => Some(SpecMethod::External),
            _ => None,
        }
    }

    /// The name used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            SpecMethod::Off => "off",
            SpecMethod::Ngram => "ngram",
            SpecMethod::Suffix => "suffix",
            SpecMethod::External => "draft",
        }
    }
}

/// Speculative decoding settings of an engine.
#[derive(Debug, Clone)]
pub struct SpecConfig {
    /// Drafter for requests that do not choose one ([`crate::Request::speculative`]).
    pub method: SpecMethod,
    /// Most drafted tokens verified per request and step.
    pub max_draft: usize,
    /// A request whose running acceptance rate (accepted / drafted) falls below this stops
    /// drafting for `backoff_steps` steps.
    pub min_acceptance: f32,
    /// Steps a request decodes plainly after its acceptance fell too low, before it tries again.
    pub backoff_steps: u32,
    /// No request drafts in a step with more decoding requests than this.
    pub max_batch: usize,
    /// Size each draft by its expected gain against the measured cost of verification rows
    /// (see [`cost`]); when false, every speculating request drafts up to `max_draft` and
    /// only the `min_acceptance` fallback applies.
    pub cost_aware: bool,
    /// Cost of one more row of a multi-row decode step, in one-row steps, assumed until
    /// measured (the cost model's prior; [`cost::StepCost::new`]).
    pub row_cost_prior: f64,
}

impl Default for SpecConfig {
    fn default() -> Self {
        SpecConfig {
            method: SpecMethod::Off,
            max_draft: 16,
            min_acceptance: 0.3,
            backoff_steps: 16,
            max_batch: 8,
            cost_aware: true,
            row_cost_prior: 0.33,
        }
    }
}

/// Per-request speculation state: its drafter and the acceptance it has seen.
#[derive(Debug, Clone)]
pub(crate) struct ReqSpec {
    pub method: SpecMethod,
    /// Exponentially weighted acceptance rate (starts optimistic).
    rate: f32,
    /// Steps left without drafting (fallback).
    pause: u32,
    /// Run-acceptance evidence for the cost-aware plan.
    acc: cost::Acceptance,
    /// Steps since this request last drafted (cost-aware plan).
    idle: u32,
    /// Short probe drafts in a row that were rejected outright (probes space out).
    failed_probes: u32,
    /// Whether the pending draft is a probe.
    probing: bool,
}

impl ReqSpec {
    pub fn new(method: SpecMethod) -> Self {
        ReqSpec {
            method,
            rate: 1.0,
            pause: 0,
            acc: cost::Acceptance::default(),
            idle: 0,
            failed_probes: 0,
            probing: false,
        }
    }

    /// Whether to draft this step (counts down a pause).
    pub fn wants_draft(&mut self) -> bool {
        if self.method == SpecMethod::Off {
            return false;
        }
        if self.pause > 0 {
            self.pause -= 1;
            return false;
        }
        true
    }

    /// Records one verification; pauses drafting when acceptance is too low.
    pub fn record(&mut self, cfg: &SpecConfig, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        self.acc.record_recent(drafted, accepted);
        if self.probing {
            self.failed_probes = if accepted == 0 {
                self.failed_probes + 1
            } else {
                0
            };
            self.probing = false;
        }
        let r = accepted as f32 / drafted as f32;
        self.rate = 0.7 * self.rate + 0.3 * r;
        if self.rate < cfg.min_acceptance {
            self.pause = cfg.backoff_steps;
            // Try again from the threshold, so one good verification resumes drafting.
            self.rate = cfg.min_acceptance;
        }
    }
}

/// Counters of one (drafter, batch size, prefix-cache hit) cell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecCounters {
    /// Verifications (chunks with at least one drafted token).
    pub verifications: u64,
    /// Drafted tokens verified.
    pub drafted: u64,
    /// Drafted tokens accepted.
    pub accepted: u64,
}

impl SpecCounters {
    /// Mean accepted drafted tokens per verification (each also yields one target token).
    pub fn mean_accepted(&self) -> f64 {
        if self.verifications == 0 {
            0.0
        } else {
            self.accepted as f64 / self.verifications as f64
        }
    }

    /// Accepted / drafted.
    pub fn acceptance(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }
}

/// Where a [`SpecCounters`] cell belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpecKey {
    /// Drafter name (`ngram`, `suffix`, `draft`).
    pub drafter: &'static str,
    /// Decoding requests in the step, bucketed: 1, 4 (2-4), 16 (5-16), 64 (17-64), 65+ as 65.
    pub batch: u32,
    /// Whether the request's prompt hit the prefix cache at admission.
    pub cache_hit: bool,
}

/// Upper ends of the decode-batch buckets of [`SpecKey::batch`] (65 stands for "more").
pub const BATCH_BUCKETS: [u32; 5] = [1, 4, 16, 64, 65];
/// Drafter names in [`SpecStats`] order.
pub const DRAFTERS: [SpecMethod; 3] = [SpecMethod::Ngram, SpecMethod::Suffix, SpecMethod::External];

/// Bucket of a step's decoding-request count for [`SpecKey::batch`].
pub fn batch_bucket(n: usize) -> u32 {
    BATCH_BUCKETS
        .iter()
        .copied()
        .find(|&b| n as u64 <= u64::from(b))
        .unwrap_or(65)
}

/// Speculation counters by drafter, decode batch bucket and prefix-cache hit: a fixed-size
/// table, so engine stats stay `Copy` and cheap to send to a metrics endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecStats {
    cells: [[[SpecCounters; 2]; BATCH_BUCKETS.len()]; DRAFTERS.len()],
}

impl SpecStats {
    /// Adds one verification of `drafted` tokens, `accepted` of them kept.
    pub fn record(
        &mut self,
        method: SpecMethod,
        batch: usize,
        cache_hit: bool,
        drafted: usize,
        accepted: usize,
    ) {
        let Some(d) = DRAFTERS.iter().position(|&m| m == method) else {
            return;
        };
        let b = BATCH_BUCKETS
            .iter()
            .position(|&x| x == batch_bucket(batch))
            .unwrap_or(BATCH_BUCKETS.len() - 1);
        let c = &mut self.cells[d][b][usize::from(cache_hit)];
        c.verifications += 1;
        c.drafted += drafted as u64;
        c.accepted += accepted as u64;
    }

    /// Non-empty cells with their keys, sorted by drafter, batch bucket, cache hit.
    pub fn cells(&self) -> Vec<(SpecKey, SpecCounters)> {
        let mut v = Vec::new();
        for (d, m) in DRAFTERS.iter().enumerate() {
            for (b, &batch) in BATCH_BUCKETS.iter().enumerate() {
                for hit in [false, true] {
                    let c = self.cells[d][b][usize::from(hit)];
                    if c.verifications > 0 {
                        let key = SpecKey {
                            drafter: m.name(),
                            batch,
                            cache_hit: hit,
                        };
                        v.push((key, c));
                    }
                }
            }
        }
        v
    }

    /// Totals over all drafters and cells.
    pub fn sum(&self) -> SpecCounters {
        DRAFTERS
            .iter()
            .map(|&m| self.total(m))
            .fold(SpecCounters::default(), |a, c| SpecCounters {
                verifications: a.verifications + c.verifications,
                drafted: a.drafted + c.drafted,
                accepted: a.accepted + c.accepted,
            })
    }

    /// Totals of one drafter over all cells.
    pub fn total(&self, method: SpecMethod) -> SpecCounters {
        let mut t = SpecCounters::default();
        for (k, c) in self.cells() {
            if k.drafter == method.name() {
                t.verifications += c.verifications;
                t.drafted += c.drafted;
                t.accepted += c.accepted;
            }
        }
        t
    }
}

/// Length of a probe draft (a request whose drafts stopped paying tries again with this).
const PROBE_LEN: usize = 2;
/// Longest probe interval, as a power of two times `backoff_steps`.
const MAX_PROBE_SHIFT: u32 = 3;
/// Prior run acceptance of a drafter before it has verified anything.
const FIRST_PRIOR: f64 = 0.8;

/// The engine's drafters, speculation counters and cost model.
pub(crate) struct Speculator {
    ngram: NgramDrafter,
    suffix: SuffixDrafter,
    external: Option<Box<dyn Drafter>>,
    pub stats: SpecStats,
    /// Decode-step cost model.
    pub cost: cost::StepCost,
    /// Run acceptance of each drafter over all requests (the prior of a request's).
    global: [cost::Acceptance; DRAFTERS.len()],
    /// Seconds of drafter time per drafted token, by drafter (running mean).
    draft_secs: [f64; DRAFTERS.len()],
}

impl Speculator {
    pub fn new(row_cost_prior: f64) -> Self {
        Speculator {
            ngram: NgramDrafter::default(),
            suffix: SuffixDrafter::default(),
            external: None,
            stats: SpecStats::default(),
            cost: cost::StepCost::new(row_cost_prior),
            global: [cost::Acceptance::default(); DRAFTERS.len()],
            draft_secs: [0.0; DRAFTERS.len()],
        }
    }

    fn slot(m: SpecMethod) -> Option<usize> {
        DRAFTERS.iter().position(|&d| d == m)
    }

    /// How many tokens request `r` should draft in the step being planned, at most
    /// `max_len` (0: decode plainly). See [`cost`].
    pub fn plan(
        &self,
        cfg: &SpecConfig,
        r: &mut ReqSpec,
        step: &mut cost::StepPlan,
        max_len: usize,
    ) -> usize {
        if !cfg.cost_aware {
            return if r.wants_draft() { max_len } else { 0 };
        }
        let Some(slot) = Self::slot(r.method) else {
            return 0;
        };
        let g = &self.global[slot];
        let prior = if g.raw_weight() > 0.0 {
            g.raw()
        } else {
            FIRST_PRIOR
        };
        let alpha = r.acc.alpha(prior);
        let draft_cost = match self.cost.unit_secs() {
            Some(u) if u > 0.0 => self.draft_secs[slot] / u,
            _ => 0.0,
        };
        let k = step.choose(&self.cost, alpha, draft_cost, max_len);
        if k > 0 {
            r.idle = 0;
            return k;
        }
        r.idle += 1;
        let wait = cfg.backoff_steps.max(1) << r.failed_probes.min(MAX_PROBE_SHIFT);
        // Probe only a drafter that could pay if every draft were accepted: a draft model
        // about as costly as the target never can, and each probe makes it catch up on the
        // whole context first.
        let could_pay = {
            let mut trial = *step;
            trial.choose(&self.cost, 1.0, draft_cost, PROBE_LEN.min(max_len)) > 0
        };
        if r.idle >= wait && max_len > 0 && could_pay {
            r.idle = 0;
            r.probing = true;
            return PROBE_LEN.min(max_len);
        }
        0
    }

    /// Records a verification in the drafter-wide acceptance.
    pub fn record(&mut self, m: SpecMethod, drafted: usize, accepted: usize) {
        if let Some(slot) = Self::slot(m) {
            self.global[slot].record(drafted, accepted, 0.98);
        }
    }

    /// Records that drafter `m` took `secs` to propose `tokens` tokens.
    pub fn record_draft_time(&mut self, m: SpecMethod, tokens: usize, secs: f64) {
        if let Some(slot) = Self::slot(m) {
            if tokens > 0 && secs.is_finite() {
                let per = secs / tokens as f64;
                let d = &mut self.draft_secs[slot];
                *d = if *d == 0.0 { per } else { 0.9 * *d + 0.1 * per };
            }
        }
    }

    pub fn set_external(&mut self, d: Box<dyn Drafter>) {
        self.external = Some(d);
    }

    /// The drafter for `m`, if there is one.
    pub fn drafter(&mut self, m: SpecMethod) -> Option<&mut dyn Drafter> {
        match m {
            SpecMethod::Off => None,
            SpecMethod::Ngram => Some(&mut self.ngram),
            SpecMethod::Suffix => Some(&mut self.suffix),
            SpecMethod::External => self.external.as_deref_mut().map(|d| d as &mut dyn Drafter),
        }
    }

    /// Tells every drafter that a request ended.
    pub fn finished(&mut self, id: RequestId, tokens: &[u32], prompt_len: usize) {
        self.ngram.finished(id, tokens, prompt_len);
        self.suffix.finished(id, tokens, prompt_len);
        if let Some(d) = self.external.as_deref_mut() {
            d.finished(id, tokens, prompt_len);
        }
    }
}

#[cfg(test)]
mod tests;
