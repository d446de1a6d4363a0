//! Cost-aware drafting: draft only as many tokens as are expected to pay for themselves.
//!
//! On a CPU an extra row in a forward pass is not free. Measured on the default model
//! (`examples/verify_cost.rs` in ferrum-model, one thread, shared 2-core EPYC), a decode step
//! of one row runs the single-row kernel, and a step of `x >= 2` rows costs about
//! `1.3 + 0.33 x` single-row steps: verifying 8 drafts costs about 4 decodes. So a draft only
//! pays when its tokens are accepted often enough.
//!
//! Drafted token `i` (1-based) of a request is accepted with probability about `alpha^i`
//! (acceptance is a run: a rejection ends the chain), so `k` drafts yield
//! `E(k) = 1 + alpha + ... + alpha^k` tokens. For a step of `n` decoding requests the engine
//! picks, request by request, the draft length that maximizes the step's expected tokens per
//! second, `(tokens so far + E(k) - 1) / (t(rows so far + k) + drafter time)`, and drafts
//! nothing when no length beats plain decoding. As the batch grows a row's share of the
//! step's tokens shrinks and drafting stops by itself (whole-batch fallback).
//!
//! [`StepCost`] learns `t(rows)` online from the engine's decode steps: the mean of one-row
//! steps, and a least-squares line over steps of two or more rows (recent steps weigh more),
//! with a prior line until such steps vary enough in size. [`Acceptance`] keeps each
//! request's `alpha` (accepted drafts over accepted drafts plus rejections, recent
//! verifications weighing more, starting from the drafter's average over all requests).

/// Weight of older observations after each new one (a memory of about 1/(1-DECAY) steps).
const STEP_DECAY: f64 = 0.98;
/// Multi-row steps whose row counts vary less than this (variance) leave the slope to the prior.
const MIN_ROW_VARIANCE: f64 = 0.5;
/// Decay of a request's acceptance evidence per verification.
const ACCEPT_DECAY: f64 = 0.7;
/// Weight (in pseudo-verifications) of the drafter-wide prior in a request's `alpha`.
const PRIOR_WEIGHT: f64 = 2.0;
/// Prior fixed part of a multi-row step, in one-row steps (the slope is the configured prior).
const PRIOR_MULTI_FIXED: f64 = 1.3;

/// Decayed sums of a least-squares line fit.
#[derive(Debug, Clone, Copy, Default)]
struct Fit {
    w: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    sxy: f64,
}

impl Fit {
    fn add(&mut self, x: f64, y: f64) {
        self.w = self.w * STEP_DECAY + 1.0;
        self.sx = self.sx * STEP_DECAY + x;
        self.sy = self.sy * STEP_DECAY + y;
        self.sxx = self.sxx * STEP_DECAY + x * x;
        self.sxy = self.sxy * STEP_DECAY + x * y;
    }

    /// `(intercept, slope)` when the data pin down a line with a non-negative slope.
    fn line(&self) -> Option<(f64, f64)> {
        if self.w < 3.0 {
            return None;
        }
        let (mx, my) = (self.sx / self.w, self.sy / self.w);
        let var = self.sxx / self.w - mx * mx;
        if var < MIN_ROW_VARIANCE {
            return None;
        }
        let b = ((self.sxy / self.w - mx * my) / var).max(0.0);
        Some(((my - b * mx).max(0.0), b))
    }

    fn mean(&self) -> Option<(f64, f64)> {
        (self.w > 0.0).then(|| (self.sx / self.w, self.sy / self.w))
    }
}

/// Online model of a decode step's forward time by its number of rows; see the module docs.
#[derive(Debug, Clone)]
pub struct StepCost {
    /// Prior cost of one more row of a multi-row step, in one-row steps.
    prior_slope: f64,
    one: Fit,
    multi: Fit,
}

impl StepCost {
    /// A model assuming, until measured, that a step of `x >= 2` rows costs
    /// `1.3 + prior_slope * x` one-row steps.
    pub fn new(prior_slope: f64) -> Self {
        StepCost {
            prior_slope: prior_slope.max(0.0),
            one: Fit::default(),
            multi: Fit::default(),
        }
    }

    /// Records a decode step of `rows` rows that took `secs` seconds.
    pub fn observe(&mut self, rows: usize, secs: f64) {
        if rows == 0 || !secs.is_finite() || secs < 0.0 {
            return;
        }
        if rows == 1 {
            self.one.add(1.0, secs);
        } else {
            self.multi.add(rows as f64, secs);
        }
    }

    /// Seconds of a one-row step (`None` before any measurement).
    fn one_row(&self) -> Option<f64> {
        if let Some((_, y)) = self.one.mean() {
            return Some(y);
        }
        // Only multi-row steps seen: back out the unit from the prior line.
        let (x, y) = self.multi.mean()?;
        Some(y / (PRIOR_MULTI_FIXED + self.prior_slope * x))
    }

    /// Estimated time of a step of `rows` rows, in units of a one-row step.
    pub fn relative(&self, rows: usize) -> f64 {
        let x = rows.max(1) as f64;
        if rows <= 1 {
            return 1.0;
        }
        let prior = PRIOR_MULTI_FIXED + self.prior_slope * x;
        let Some(unit) = self.one_row().filter(|&u| u > 0.0) else {
            return prior;
        };
        match self.multi.line() {
            // Never cheaper than one row: a fit on noisy steps may undershoot.
            Some((a, b)) => ((a + b * x) / unit).max(1.0),
            None => match self.multi.mean() {
                // One size seen: scale the prior line through that point.
                Some((mx, my)) => {
                    (prior * (my / unit) / (PRIOR_MULTI_FIXED + self.prior_slope * mx)).max(1.0)
                }
                None => prior,
            },
        }
    }

    /// Seconds of a one-row step, for expressing drafter time in step units (`None` before
    /// any step).
    pub fn unit_secs(&self) -> Option<f64> {
        self.one_row()
    }
}

/// Plans draft lengths for one step so as to maximize expected tokens per unit of time.
#[derive(Debug, Clone, Copy)]
pub struct StepPlan {
    /// Expected tokens of the step so far (one per decoding request plus accepted drafts).
    pub tokens: f64,
    /// Rows of the step so far.
    pub rows: usize,
    /// Drafter time so far, in one-row steps.
    pub extra: f64,
}

impl StepPlan {
    /// A plain step of `n` decoding requests.
    pub fn new(n: usize) -> Self {
        StepPlan {
            tokens: n as f64,
            rows: n,
            extra: 0.0,
        }
    }

    /// The best draft length for a request with run acceptance `alpha` whose drafter costs
    /// `draft_cost` one-row steps per drafted token, at most `max`; commits it to the plan.
    pub fn choose(&mut self, cost: &StepCost, alpha: f64, draft_cost: f64, max: usize) -> usize {
        let rate = |tokens: f64, rows: usize, extra: f64| tokens / (cost.relative(rows) + extra);
        let mut best = (0, rate(self.tokens, self.rows, self.extra));
        let (mut gain, mut p) = (0.0, 1.0);
        for k in 1..=max {
            p *= alpha.clamp(0.0, 1.0);
            gain += p;
            let extra = self.extra + draft_cost.max(0.0) * k as f64;
            let r = rate(self.tokens + gain, self.rows + k, extra);
            // Prefer shorter drafts unless a longer one is clearly better (noise margin).
            if r > best.1 * 1.001 {
                best = (k, r);
            }
        }
        let k = best.0;
        if k > 0 {
            self.tokens += expected_tokens(alpha, k) - 1.0;
            self.rows += k;
            self.extra += draft_cost.max(0.0) * k as f64;
        }
        k
    }
}

/// A request's (or a drafter's) run-acceptance estimate `alpha`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Acceptance {
    accepted: f64,
    rejected: f64,
}

impl Acceptance {
    /// Records a verification of `drafted` tokens of which the first `accepted` were kept.
    pub fn record(&mut self, drafted: usize, accepted: usize, decay: f64) {
        if drafted == 0 {
            return;
        }
        self.accepted = self.accepted * decay + accepted as f64;
        self.rejected = self.rejected * decay + f64::from(u8::from(accepted < drafted));
    }

    /// Records with the per-request decay.
    pub fn record_recent(&mut self, drafted: usize, accepted: usize) {
        self.record(drafted, accepted, ACCEPT_DECAY);
    }

    /// `alpha`, pulled toward `prior` by [`PRIOR_WEIGHT`] pseudo-verifications.
    pub fn alpha(&self, prior: f64) -> f64 {
        let p = prior.clamp(0.0, 1.0);
        // A pseudo-verification at `prior` contributes p/(1-p) accepted per rejection.
        let (pa, pr) = if p >= 1.0 {
            (PRIOR_WEIGHT * 16.0, 0.0)
        } else {
            (PRIOR_WEIGHT * p / (1.0 - p), PRIOR_WEIGHT)
        };
        let a = self.accepted + pa;
        let total = a + self.rejected + pr;
        if total <= 0.0 {
            p
        } else {
            a / total
        }
    }

    /// Weight of the evidence (decayed accepted drafts plus rejections).
    pub fn raw_weight(&self) -> f64 {
        self.accepted + self.rejected
    }

    /// `alpha` with no prior (0.5 when nothing was seen).
    pub fn raw(&self) -> f64 {
        let t = self.accepted + self.rejected;
        if t <= 0.0 {
            0.5
        } else {
            self.accepted / t
        }
    }
}

/// Expected tokens from a verification of `k` drafts at run acceptance `alpha` (the
/// target's own token included).
pub fn expected_tokens(alpha: f64, k: usize) -> f64 {
    (0..=k).map(|i| alpha.powi(i as i32)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_cost_learns_one_row_and_multi_row_costs() {
        let mut c = StepCost::new(0.5);
        assert_eq!(c.relative(1), 1.0);
        assert!(
            (c.relative(9) - (1.3 + 4.5)).abs() < 1e-9,
            "prior before any step"
        );
        // One-row steps of 10 ms; multi-row steps cost 12 ms + 3 ms per row.
        for i in 0..300 {
            if i % 3 == 0 {
                c.observe(1, 0.010);
            } else {
                let rows = 2 + i % 8;
                c.observe(rows, 0.012 + 0.003 * rows as f64);
            }
        }
        assert!((c.relative(9) - 3.9).abs() < 0.01, "{}", c.relative(9));
        assert!((c.relative(2) - 1.8).abs() < 0.01, "{}", c.relative(2));
        assert!((c.unit_secs().unwrap() - 0.010).abs() < 1e-9);
    }

    #[test]
    fn plan_drafts_only_what_pays_and_stops_in_large_batches() {
        let mut c = StepCost::new(0.33);
        for i in 0..200 {
            c.observe(1, 0.010);
            c.observe(2 + i % 15, 0.013 + 0.0033 * (2 + i % 15) as f64);
        }
        // Near-certain drafts at batch 1: long drafts pay.
        assert!(StepPlan::new(1).choose(&c, 0.98, 0.0, 16) >= 12);
        // Poor acceptance: drafting costs more than it yields.
        assert_eq!(StepPlan::new(1).choose(&c, 0.5, 0.0, 16), 0);
        // An expensive drafter (as costly per token as a decode) never pays.
        assert_eq!(StepPlan::new(1).choose(&c, 0.9, 1.0, 16), 0);
        // Sixteen requests already fill the step: even good drafts stop paying.
        let mut plan = StepPlan::new(16);
        assert_eq!(plan.choose(&c, 0.7, 0.0, 16), 0);
        // The plan accumulates: a second request sees the first one's rows.
        let mut plan = StepPlan::new(2);
        let k1 = plan.choose(&c, 0.95, 0.0, 8);
        assert!(k1 > 0);
        assert_eq!(plan.rows, 2 + k1);
        assert!(plan.tokens > 3.0);
    }

    #[test]
    fn acceptance_follows_recent_verifications_from_the_prior() {
        let mut a = Acceptance::default();
        assert!((a.alpha(0.8) - 0.8).abs() < 1e-9);
        // Full acceptances push alpha up, rejections at the first token down.
        for _ in 0..10 {
            a.record_recent(8, 8);
        }
        assert!(a.alpha(0.5) > 0.9);
        for _ in 0..10 {
            a.record_recent(8, 0);
        }
        assert!(a.alpha(0.5) < 0.4, "{}", a.alpha(0.5));
        assert!(a.raw() < 0.3);
    }
}
