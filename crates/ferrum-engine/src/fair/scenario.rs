//! The fairness scenarios of the acceptance tests and `ferrum bench fairness`: scripted
//! clients, tenants and the summary figures (per-client share and TTFT, max service
//! difference, Jain's index, output tokens/s).

use serde::Serialize;

use super::sim::{max_window_deviation, quantile, Client, SimReport};
use super::TenantSpec;

/// One fairness scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Two tenants, one keeping 10x the requests in flight of the other.
    HeavyVsLight,
    /// Three tenants of weights 1, 2 and 4.
    Weights,
    /// Tenant A with 10 users against tenant B with 1, equal weights.
    Hierarchy,
    /// The light tenant of heavy-vs-light joins halfway through.
    LateJoiner,
}

/// Prompt and output lengths of every scenario request.
pub const PROMPT_LEN: usize = 16;
/// Generated tokens per request (EOS ignored).
pub const OUTPUT_LEN: usize = 8;

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 4] = [
        Scenario::HeavyVsLight,
        Scenario::Weights,
        Scenario::Hierarchy,
        Scenario::LateJoiner,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::HeavyVsLight => "heavy-vs-light",
            Scenario::Weights => "weights",
            Scenario::Hierarchy => "hierarchy",
            Scenario::LateJoiner => "late-joiner",
        }
    }

    /// The scenario named `s`.
    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Configured tenants (weights).
    pub fn tenants(self) -> Vec<TenantSpec> {
        match self {
            Scenario::Weights => vec![
                TenantSpec::new("w1", 1.0),
                TenantSpec::new("w2", 2.0),
                TenantSpec::new("w4", 4.0),
            ],
            _ => Vec::new(),
        }
    }

    /// The clients over a run of `steps` steps.
    pub fn clients(self, steps: u64) -> Vec<Client> {
        let c = |name: &str, tenant: &str, n| Client::new(name, tenant, n, PROMPT_LEN, OUTPUT_LEN);
        match self {
            Scenario::HeavyVsLight => vec![c("heavy", "heavy", 40), c("light", "light", 4)],
            Scenario::LateJoiner => vec![
                c("heavy", "heavy", 40),
                Client {
                    start_step: self.join_step(steps),
                    ..c("late", "late", 4)
                },
            ],
            Scenario::Weights => [("w1", 1.0), ("w2", 2.0), ("w4", 4.0)]
                .iter()
                .map(|&(n, w)| Client {
                    weight: w,
                    ..c(n, n, 40)
                })
                .collect(),
            Scenario::Hierarchy => {
                let mut v: Vec<Client> = (0..10)
                    .map(|i| Client {
                        weight: 0.1,
                        ..c(&format!("A/u{i}"), "A", 8)
                    })
                    .collect();
                v.push(c("B/u0", "B", 40));
                v
            }
        }
    }

    /// Step at which the late joiner starts (0 for the others).
    pub fn join_step(self, steps: u64) -> u64 {
        match self {
            Scenario::LateJoiner => steps / 2,
            _ => 0,
        }
    }

    /// Steps `[from, to)` over which shares are measured: after a warm-up of a sixth of the
    /// run (or from the join).
    pub fn window(self, steps: u64) -> (u64, u64) {
        match self {
            Scenario::LateJoiner => (self.join_step(steps), steps),
            _ => (steps / 6, steps),
        }
    }

    /// The max-service-difference bound of the docs for `max_running` and the scenario's
    /// lengths and weights: `B_f + B_g` with `B_x = (w_in * P + R * w_out * G) / w_x`,
    /// taken over the two smallest weights (the loosest pair).
    pub fn service_diff_bound(self, max_running: usize, (w_in, w_out): (f64, f64)) -> f64 {
        let b = w_in * PROMPT_LEN as f64 + max_running as f64 * w_out * OUTPUT_LEN as f64;
        let mut w: Vec<f64> = self.clients(2).iter().map(|c| c.weight).collect();
        w.sort_by(f64::total_cmp);
        b / w[0] + b / w.get(1).copied().unwrap_or(w[0])
    }
}

/// One client's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ClientSummary {
    /// Client name.
    pub name: String,
    /// Fraction of the weighted service in the window.
    pub share: f64,
    /// Its fair share: weight over the sum of the weights.
    pub fair_share: f64,
    /// Fraction of the weighted service in each time window of `window_steps` steps tiling
    /// the measured interval, in order.
    pub share_by_window: Vec<f64>,
    /// Median time to first token, seconds.
    pub ttft_p50_s: f64,
    /// 99th-percentile time to first token, seconds.
    pub ttft_p99_s: f64,
    /// 99th-percentile time to first token, engine steps (TTFTs are of requests submitted
    /// in the window, after the warm-up).
    pub ttft_p99_steps: f64,
}

/// A scenario's figures for one policy.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Per client.
    pub clients: Vec<ClientSummary>,
    /// Largest weight-normalised service difference between two clients over windows
    /// starting at the window start.
    pub max_service_diff: f64,
    /// Jain's index of the weight-normalised service in the window.
    pub jain: f64,
    /// Steps per time window of `share_by_window`.
    pub window_steps: u64,
    /// Largest `|share - fair share|` of any client in any time window (windows in which
    /// nobody was served are skipped).
    pub max_window_share_dev: f64,
    /// Generated tokens per second over the run.
    pub output_tokens_per_s: f64,
}

impl Scenario {
    /// Steps per time window by default: the measured interval cut into about six windows.
    pub fn default_window_steps(self, steps: u64) -> u64 {
        let (from, to) = self.window(steps);
        (to.saturating_sub(from)).div_ceil(6).max(1)
    }

    /// Summarises a run of this scenario with the default time windows.
    pub fn summarize(self, r: &SimReport) -> Summary {
        self.summarize_windows(r, self.default_window_steps(r.steps))
    }

    /// Summarises a run of this scenario, with per-client shares over time windows of
    /// `window_steps` steps.
    pub fn summarize_windows(self, r: &SimReport, window_steps: u64) -> Summary {
        let window_steps = window_steps.max(1);
        let (from, to) = self.window(r.steps);
        let shares = r.shares(from, to);
        let by_window = r.window_shares(from, to, window_steps);
        let fair = r.fair_shares();
        let all: Vec<usize> = (0..r.clients.len()).collect();
        let clients = r
            .clients
            .iter()
            .zip(shares)
            .zip(by_window.iter().zip(&fair))
            .map(|((c, share), (w, &fair_share))| {
                let (steps, secs) = c.ttft_since(from);
                ClientSummary {
                    name: c.name.clone(),
                    share,
                    fair_share,
                    share_by_window: w.clone(),
                    ttft_p50_s: quantile(&secs, 0.5),
                    ttft_p99_s: quantile(&secs, 0.99),
                    ttft_p99_steps: quantile(&steps, 0.99),
                }
            })
            .collect();
        Summary {
            clients,
            max_service_diff: r.max_service_diff(&all, from),
            jain: r.jain(&all, from, to),
            window_steps,
            max_window_share_dev: max_window_deviation(&by_window, &fair),
            output_tokens_per_s: r.output_tokens_per_s(),
        }
    }
}
