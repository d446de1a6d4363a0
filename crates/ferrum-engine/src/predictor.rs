//! Tool-call gap prediction: how long to keep an agent program's KV pinned after a turn.
//!
//! An agent program alternates model turns with tool calls. The *gap* of a turn is the time
//! from its end to the arrival of the same program's next turn, and it depends mostly on the
//! tool the program waits on (a calculator returns in milliseconds, a test suite in
//! minutes). [`GapPredictor`] keeps, per tool name, the last [`MAX_SAMPLES`] observed gaps
//! (an empirical distribution). A tool with fewer than `min_samples` observations borrows
//! the pooled gaps of all tools, and with none at all the configured prior gaps.
//!
//! Choosing the TTL. With sorted samples `g_1 <= ... <= g_n` of the gap `G`, a candidate TTL
//! `τ = g_k` saves the re-prefill of the program's `T` cached tokens if the program returns
//! within `τ` (probability `F(τ) = k/n`), and holds its `B = T / block_size` blocks for
//! `E[min(G, τ)] = (g_1 + ... + g_k + (n - k) g_k) / n` seconds on average. Holding memory
//! costs in proportion to the current KV pressure `p` in `[0, 1]` (the share of the pool
//! that running work and pins hold): one block-second at full pressure is worth
//! `block_size / horizon_s` prefill tokens, i.e. holding a block for `horizon_s` seconds
//! (default 5) at full pressure is as bad as recomputing it once. The utility per cached token is therefore
//!
//! ```text
//! U(τ) = F(τ) - p · E[min(G, τ)] / horizon_s
//! ```
//!
//! and the TTL is `slack · argmax_τ U(τ)` over the sample points (or 0, do not pin, when no
//! `U(τ)` is positive). `slack` (> 1) covers a return a little later than any seen. With no
//! pressure the TTL is the largest gap seen; as pressure grows only tools whose gaps are
//! short and predictable keep their KV.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Gaps remembered per tool (older ones are forgotten, so the distribution tracks drift).
pub const MAX_SAMPLES: usize = 256;

/// Predictor settings.
#[derive(Debug, Clone)]
pub struct PredictorConfig {
    /// Gaps assumed for a tool with too few observations and no pooled data (seconds).
    pub prior_gaps_s: Vec<f64>,
    /// A tool's own distribution is used once it has this many samples.
    pub min_samples: usize,
    /// Seconds of holding a block at full pressure that cost as much as recomputing it.
    pub horizon_s: f64,
    /// Multiplier on the chosen gap quantile (>= 1).
    pub slack: f64,
    /// Upper bound on any TTL.
    pub max_ttl: Duration,
}

impl Default for PredictorConfig {
    fn default() -> Self {
        PredictorConfig {
            prior_gaps_s: vec![0.5, 1.0, 2.0, 5.0, 10.0, 30.0],
            min_samples: 4,
            horizon_s: 5.0,
            slack: 1.2,
            max_ttl: Duration::from_secs(600),
        }
    }
}

/// Per-tool empirical gap distributions; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct GapPredictor {
    cfg: PredictorConfig,
    by_tool: HashMap<String, VecDeque<f64>>,
    pooled: VecDeque<f64>,
}

/// Key for turns that name no tool.
const NO_TOOL: &str = "";

fn push(q: &mut VecDeque<f64>, x: f64) {
    if q.len() == MAX_SAMPLES {
        q.pop_front();
    }
    q.push_back(x);
}

impl GapPredictor {
    /// An empty predictor.
    pub fn new(cfg: PredictorConfig) -> Self {
        GapPredictor {
            cfg,
            ..GapPredictor::default()
        }
    }

    /// Records that a program waiting on `tool` came back `gap` after its turn ended.
    pub fn observe(&mut self, tool: Option<&str>, gap: Duration) {
        let g = gap.as_secs_f64();
        push(
            self.by_tool
                .entry(tool.unwrap_or(NO_TOOL).to_string())
                .or_default(),
            g,
        );
        push(&mut self.pooled, g);
    }

    /// Observations of `tool` so far (capped at [`MAX_SAMPLES`]).
    pub fn samples(&self, tool: Option<&str>) -> usize {
        self.by_tool
            .get(tool.unwrap_or(NO_TOOL))
            .map_or(0, VecDeque::len)
    }

    /// The sorted gap samples the TTL of `tool` is chosen from.
    fn distribution(&self, tool: Option<&str>) -> Vec<f64> {
        let own = self.by_tool.get(tool.unwrap_or(NO_TOOL));
        let mut v: Vec<f64> = match own {
            Some(q) if q.len() >= self.cfg.min_samples => q.iter().copied().collect(),
            _ if self.pooled.len() >= self.cfg.min_samples => self.pooled.iter().copied().collect(),
            _ => self.cfg.prior_gaps_s.clone(),
        };
        v.retain(|x| x.is_finite() && *x >= 0.0);
        v.sort_by(f64::total_cmp);
        v
    }

    /// Probability that a program waiting on `tool` returns within `ttl` (empirical CDF).
    pub fn return_probability(&self, tool: Option<&str>, ttl: Duration) -> f64 {
        let d = self.distribution(tool);
        if d.is_empty() {
            return 0.0;
        }
        let t = ttl.as_secs_f64();
        d.iter().filter(|g| **g <= t).count() as f64 / d.len() as f64
    }

    /// The TTL maximizing `U(τ)` of the module docs at KV `pressure` (clamped to `[0, 1]`);
    /// zero means "do not pin".
    pub fn ttl(&self, tool: Option<&str>, pressure: f64) -> Duration {
        let d = self.distribution(tool);
        let p = if pressure.is_finite() {
            pressure.clamp(0.0, 1.0)
        } else {
            1.0
        };
        let n = d.len() as f64;
        let horizon = self.cfg.horizon_s.max(1e-9);
        let (mut best, mut best_u) = (0.0f64, 0.0f64);
        let mut prefix = 0.0;
        for (i, &g) in d.iter().enumerate() {
            prefix += g;
            let k = (i + 1) as f64;
            let held = (prefix + (n - k) * g) / n;
            let u = k / n - p * held / horizon;
            if u > best_u {
                (best, best_u) = (g, u);
            }
        }
        if best_u <= 0.0 {
            return Duration::ZERO;
        }
        let secs = (best * self.cfg.slack.max(1.0)).min(self.cfg.max_ttl.as_secs_f64());
        // A gap of ~0 still deserves a short pin (the program is about to return).
        Duration::from_secs_f64(secs.max(0.001))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    fn predictor() -> GapPredictor {
        GapPredictor::new(PredictorConfig {
            slack: 1.0,
            ..PredictorConfig::default()
        })
    }

    #[test]
    fn without_pressure_ttl_covers_the_longest_seen_gap() {
        let mut p = predictor();
        for g in [0.2, 0.4, 0.3, 1.5] {
            p.observe(Some("python"), secs(g));
        }
        assert_eq!(p.ttl(Some("python"), 0.0), secs(1.5));
    }

    #[test]
    fn pressure_drops_the_long_tail_of_a_bimodal_tool() {
        let mut p = predictor();
        // 80% of returns within a second, 20% after ~50 s.
        for g in [0.3, 0.5, 0.6, 0.8, 0.4, 0.7, 0.9, 0.2, 50.0, 55.0] {
            p.observe(Some("search"), secs(g));
        }
        assert_eq!(p.ttl(Some("search"), 0.0), secs(55.0));
        let ttl = p.ttl(Some("search"), 1.0);
        assert_eq!(ttl, secs(0.9), "under pressure, keep only the short mode");
        assert!((p.return_probability(Some("search"), ttl) - 0.8).abs() < 1e-9);
    }

    #[test]
    fn tools_are_predicted_separately() {
        let mut p = predictor();
        for _ in 0..5 {
            p.observe(Some("calc"), secs(0.1));
            p.observe(Some("tests"), secs(120.0));
        }
        assert_eq!(p.ttl(Some("calc"), 1.0), secs(0.1));
        // Two minutes at full pressure cost more than the recompute saved: do not pin.
        assert_eq!(p.ttl(Some("tests"), 1.0), Duration::ZERO);
        assert_eq!(p.ttl(Some("tests"), 0.0), secs(120.0));
    }

    #[test]
    fn unseen_tool_uses_pooled_gaps_then_prior() {
        let mut p = predictor();
        assert_eq!(p.ttl(Some("new"), 0.0), secs(30.0), "prior's largest gap");
        for _ in 0..4 {
            p.observe(Some("calc"), secs(2.0));
        }
        assert_eq!(p.ttl(Some("new"), 0.0), secs(2.0), "pooled gaps");
        assert_eq!(p.samples(Some("new")), 0);
        assert_eq!(p.samples(Some("calc")), 4);
    }

    #[test]
    fn ttl_is_capped_and_slack_stretches_it() {
        let mut p = GapPredictor::new(PredictorConfig {
            slack: 2.0,
            max_ttl: secs(3.0),
            ..PredictorConfig::default()
        });
        for _ in 0..4 {
            p.observe(None, secs(1.0));
        }
        assert_eq!(p.ttl(None, 0.0), secs(2.0));
        for _ in 0..4 {
            p.observe(Some("slow"), secs(10.0));
        }
        assert_eq!(p.ttl(Some("slow"), 0.0), secs(3.0));
    }

    #[test]
    fn history_is_bounded() {
        let mut p = predictor();
        for i in 0..(MAX_SAMPLES + 10) {
            p.observe(Some("t"), secs(i as f64));
        }
        assert_eq!(p.samples(Some("t")), MAX_SAMPLES);
    }
}
