//! Scripted closed-loop clients driving a synchronous [`Engine`] step by step, measuring the
//! service each client receives: the fairness tests and `ferrum bench fairness` share it.
//!
//! A client keeps `concurrency` requests in the engine from `start_step` on, submitting a
//! new one as soon as one finishes. Service is measured from the outside, from the events:
//! `w_in * prompt tokens` when a request's first token arrives (prompts are distinct random
//! tokens, so nothing is cached) plus `w_out` per generated token. Time is counted in engine
//! steps (deterministic) and in wall-clock seconds; a request still waiting for its first
//! token at the end counts with the time it has waited.

use std::time::Instant;

use crate::engine::{Engine, ModelRunner};
use crate::request::{Event, Request, RequestId};

/// One scripted client.
#[derive(Debug, Clone)]
pub struct Client {
    /// Label in reports.
    pub name: String,
    /// Tenant its requests carry.
    pub tenant: Option<String>,
    /// User its requests carry.
    pub user: Option<String>,
    /// Weight used to normalise its service for Jain's index (its tenant's weight divided
    /// among the tenant's clients, as the policy should).
    pub weight: f64,
    /// Requests kept in the engine at once.
    pub concurrency: usize,
    /// Prompt tokens per request.
    pub prompt_len: usize,
    /// Generated tokens per request (EOS ignored).
    pub max_tokens: usize,
    /// First step at which it submits.
    pub start_step: u64,
}

impl Client {
    /// A client of `tenant` (user = its name) with weight 1 from step 0.
    pub fn new(
        name: &str,
        tenant: &str,
        concurrency: usize,
        prompt_len: usize,
        max_tokens: usize,
    ) -> Self {
        Client {
            name: name.into(),
            tenant: Some(tenant.into()),
            user: Some(name.into()),
            weight: 1.0,
            concurrency,
            prompt_len,
            max_tokens,
            start_step: 0,
        }
    }
}

/// What one client received.
#[derive(Debug, Clone, Default)]
pub struct ClientReport {
    /// The client's name.
    pub name: String,
    /// Weight used for normalisation.
    pub weight: f64,
    /// Cumulative weighted service after each step (index = step).
    pub service: Vec<f64>,
    /// Generated tokens.
    pub generated: u64,
    /// Time to first token of each request that got one, in steps.
    pub ttft_steps: Vec<u64>,
    /// Time to first token of each request that got one, in seconds.
    pub ttft_s: Vec<f64>,
    /// Step at which each of those requests was submitted.
    pub ttft_submitted: Vec<u64>,
}

impl ClientReport {
    /// TTFTs (steps, seconds) of requests submitted at or after step `from`.
    pub fn ttft_since(&self, from: u64) -> (Vec<f64>, Vec<f64>) {
        let keep = |i: usize| self.ttft_submitted.get(i).is_some_and(|&s| s >= from);
        let steps = (0..self.ttft_steps.len()).filter(|&i| keep(i));
        let steps = steps.map(|i| self.ttft_steps[i] as f64).collect();
        let secs = (0..self.ttft_s.len()).filter(|&i| keep(i));
        (steps, secs.map(|i| self.ttft_s[i]).collect())
    }
}

impl ClientReport {
    /// Weighted service received in steps `[from, to)`.
    pub fn service_between(&self, from: u64, to: u64) -> f64 {
        let at = |s: u64| -> f64 {
            if s == 0 {
                0.0
            } else {
                let i = (s as usize - 1).min(self.service.len().saturating_sub(1));
                self.service.get(i).copied().unwrap_or(0.0)
            }
        };
        at(to) - at(from)
    }
}

/// The outcome of [`run`].
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// Per client, in the order given.
    pub clients: Vec<ClientReport>,
    /// Steps run.
    pub steps: u64,
    /// Wall-clock seconds.
    pub elapsed_s: f64,
    /// Generated tokens of all clients.
    pub output_tokens: u64,
}

impl SimReport {
    /// Each client's fraction of the weighted service in steps `[from, to)`.
    pub fn shares(&self, from: u64, to: u64) -> Vec<f64> {
        let s: Vec<f64> = self
            .clients
            .iter()
            .map(|c| c.service_between(from, to))
            .collect();
        let total: f64 = s.iter().sum();
        s.iter()
            .map(|x| if total > 0.0 { x / total } else { 0.0 })
            .collect()
    }

    /// Each client's share per window of `window` steps tiling `[from, to)` (the last one
    /// may be shorter): `result[client][window]`. A share over the whole interval hides
    /// bursts of unfairness; per-window shares show whether a client is starved for a while
    /// and caught up later. A window in which nobody was served gives every client 0.
    pub fn window_shares(&self, from: u64, to: u64, window: u64) -> Vec<Vec<f64>> {
        let mut out = vec![Vec::new(); self.clients.len()];
        for (a, b) in windows(from, to, window) {
            for (o, s) in out.iter_mut().zip(self.shares(a, b)) {
                o.push(s);
            }
        }
        out
    }

    /// Each client's fair share: its weight over the sum of the weights (all clients are
    /// assumed backlogged in the measured interval).
    pub fn fair_shares(&self) -> Vec<f64> {
        let total: f64 = self.clients.iter().map(|c| c.weight).sum();
        self.clients
            .iter()
            .map(|c| if total > 0.0 { c.weight / total } else { 0.0 })
            .collect()
    }

    /// Jain's fairness index of the weight-normalised service of `idx` in `[from, to)`.
    pub fn jain(&self, idx: &[usize], from: u64, to: u64) -> f64 {
        let x: Vec<f64> = idx
            .iter()
            .map(|&i| self.clients[i].service_between(from, to) / self.clients[i].weight)
            .collect();
        jain(&x)
    }

    /// Largest `|S_a/w_a - S_b/w_b|` over windows `[from, t)`, `t` in `(from, steps]`, between
    /// any two clients of `idx`.
    pub fn max_service_diff(&self, idx: &[usize], from: u64) -> f64 {
        let mut worst: f64 = 0.0;
        for t in from + 1..=self.steps {
            let v: Vec<f64> = idx
                .iter()
                .map(|&i| self.clients[i].service_between(from, t) / self.clients[i].weight)
                .collect();
            let (lo, hi) = v
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| {
                    (l.min(x), h.max(x))
                });
            worst = worst.max(hi - lo);
        }
        worst
    }

    /// Generated tokens per wall-clock second.
    pub fn output_tokens_per_s(&self) -> f64 {
        self.output_tokens as f64 / self.elapsed_s.max(1e-9)
    }
}

/// The windows `[a, b)` of `window` steps (at least 1) tiling `[from, to)`; the last may be
/// shorter. Empty when `to <= from`.
pub fn windows(from: u64, to: u64, window: u64) -> Vec<(u64, u64)> {
    let w = window.max(1);
    let mut v = Vec::new();
    let mut a = from;
    while a < to {
        let b = (a + w).min(to);
        v.push((a, b));
        a = b;
    }
    v
}

/// Largest `|share - fair|` over every client and window of `by_window` (as from
/// [`SimReport::window_shares`]), skipping windows in which nobody was served (all shares 0).
pub fn max_window_deviation(by_window: &[Vec<f64>], fair: &[f64]) -> f64 {
    let n = by_window.iter().map(Vec::len).max().unwrap_or(0);
    let mut worst: f64 = 0.0;
    for w in 0..n {
        let col: Vec<f64> = by_window
            .iter()
            .map(|c| c.get(w).copied().unwrap_or(0.0))
            .collect();
        if col.iter().all(|&x| x == 0.0) {
            continue;
        }
        for (s, f) in col.iter().zip(fair) {
            worst = worst.max((s - f).abs());
        }
    }
    worst
}

/// Jain's index `(sum x)^2 / (n * sum x^2)`: 1 when all equal, `1/n` when one gets all.
pub fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let sq: f64 = x.iter().map(|v| v * v).sum();
    if sq == 0.0 {
        1.0
    } else {
        sum * sum / (x.len() as f64 * sq)
    }
}

/// The `q`-quantile (0..=1) of `v` by nearest rank; 0 when empty.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return 0.0;
    }
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// Distinct pseudo-random prompt tokens in `[lo, hi)` for request `seq` of client `client`.
pub fn prompt(client: usize, seq: u64, len: usize, lo: u32, hi: u32) -> Vec<u32> {
    let mut x = (client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ seq.wrapping_mul(0xbf58_476d_1ce4_e5b9)
        | 1;
    let span = u64::from(hi.saturating_sub(lo).max(1));
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lo + (x % span) as u32
        })
        .collect()
}

struct Open {
    client: usize,
    submitted_step: u64,
    submitted_at: Instant,
    prompt_len: usize,
    first: bool,
}

/// Runs `clients` against `engine` for `steps` steps with costs `w_in` / `w_out`; prompt
/// tokens are drawn from `[tok_lo, tok_hi)`. Requests still open at the end are cancelled.
pub fn run<R: ModelRunner>(
    engine: &mut Engine<R>,
    clients: &[Client],
    steps: u64,
    (w_in, w_out): (f64, f64),
    (tok_lo, tok_hi): (u32, u32),
) -> SimReport {
    let mut reports: Vec<ClientReport> = clients
        .iter()
        .map(|c| ClientReport {
            name: c.name.clone(),
            weight: c.weight,
            ..ClientReport::default()
        })
        .collect();
    let mut open: std::collections::HashMap<RequestId, Open> = Default::default();
    let mut in_flight = vec![0usize; clients.len()];
    let mut seqs = vec![0u64; clients.len()];
    let mut acc = vec![0.0f64; clients.len()];
    let t0 = Instant::now();
    let mut output_tokens = 0;
    for step in 0..steps {
        for (i, c) in clients.iter().enumerate() {
            while step >= c.start_step && in_flight[i] < c.concurrency {
                let req = Request {
                    ignore_eos: true,
                    tenant: c.tenant.clone(),
                    user: c.user.clone(),
                    ..Request::new(
                        prompt(i, seqs[i], c.prompt_len, tok_lo, tok_hi),
                        c.max_tokens,
                    )
                };
                let Ok(id) = engine.submit(req) else { break };
                seqs[i] += 1;
                in_flight[i] += 1;
                open.insert(
                    id,
                    Open {
                        client: i,
                        submitted_step: step,
                        submitted_at: Instant::now(),
                        prompt_len: c.prompt_len,
                        first: true,
                    },
                );
            }
        }
        engine.step();
        for (id, ev) in engine.drain_events() {
            let Some(o) = open.get_mut(&id) else { continue };
            let r = &mut reports[o.client];
            match ev {
                Event::Token { .. } => {
                    if std::mem::take(&mut o.first) {
                        acc[o.client] += w_in * o.prompt_len as f64;
                        r.ttft_steps.push(step + 1 - o.submitted_step);
                        r.ttft_s.push(o.submitted_at.elapsed().as_secs_f64());
                        r.ttft_submitted.push(o.submitted_step);
                    }
                    acc[o.client] += w_out;
                    r.generated += 1;
                    output_tokens += 1;
                }
                Event::Finished { .. } => {
                    in_flight[o.client] -= 1;
                    open.remove(&id);
                }
            }
        }
        for (r, a) in reports.iter_mut().zip(&acc) {
            r.service.push(*a);
        }
    }
    let elapsed_s = t0.elapsed().as_secs_f64();
    // Requests still without a first token count with the time they waited so far (a lower
    // bound), so a starved client shows long TTFTs rather than none.
    for o in open.values().filter(|o| o.first) {
        let r = &mut reports[o.client];
        r.ttft_steps.push(steps - o.submitted_step);
        r.ttft_s.push(o.submitted_at.elapsed().as_secs_f64());
        r.ttft_submitted.push(o.submitted_step);
    }
    for id in open.keys() {
        engine.cancel(*id);
    }
    engine.drain_events();
    SimReport {
        clients: reports,
        steps,
        elapsed_s,
        output_tokens,
    }
}
