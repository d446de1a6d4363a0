//! The agent workload: N agents, each a task followed by M model turns separated by tool
//! calls. A tool call is short (0.2-2 s: grep, read a file, a calculator) or long (10-60 s:
//! a test suite, a web search), each scaled by `time_scale` for quick runs. Each turn's
//! prompt is the whole history (task, earlier answers, tool results) plus the new tool
//! result, which is what makes keeping an agent's KV across its tool calls worth it.

use crate::rng::SplitMix64;
use crate::{BenchError, Result};

/// Short tools (0.2-2 s).
pub const SHORT_TOOLS: &[&str] = &["grep", "read_file", "calc"];
/// Long tools (10-60 s).
pub const LONG_TOOLS: &[&str] = &["run_tests", "web_search"];

/// Workload shape.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// Concurrent agents.
    pub agents: usize,
    /// Model turns per agent.
    pub turns: usize,
    /// Multiplier on tool durations (0.1: a 10 s tool takes 1 s).
    pub time_scale: f64,
    /// Probability that a tool call is short.
    pub short_prob: f64,
    /// Words of each agent's task (the first prompt).
    pub task_words: usize,
    /// Words of a tool result.
    pub result_words: usize,
    /// Tokens generated per turn.
    pub output_len: usize,
    /// Seed.
    pub seed: u64,
}

impl Default for AgentSpec {
    fn default() -> Self {
        AgentSpec {
            agents: 8,
            turns: 8,
            time_scale: 0.1,
            short_prob: 0.7,
            task_words: 300,
            result_words: 100,
            output_len: 32,
            seed: 0,
        }
    }
}

/// One tool call after a turn.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// Tool name (sent as `X-Program-Tool`).
    pub tool: &'static str,
    /// Whether it is from the short mode.
    pub short: bool,
    /// Scaled duration, seconds.
    pub duration_s: f64,
    /// The text it returns (appended to the history).
    pub result: String,
}

/// One agent's plan: its task and the tool call after each turn but the last.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentPlan {
    /// Program id.
    pub id: String,
    /// The first prompt.
    pub task: String,
    /// `turns - 1` tool calls.
    pub calls: Vec<ToolCall>,
}

const WORDS: &[&str] = &[
    "alpha", "buffer", "cache", "delta", "engine", "field", "graph", "handle", "index", "join",
    "kernel", "layer", "matrix", "node", "offset", "parser", "query", "record", "stream", "token",
    "update", "vector", "window", "yield", "zone", "socket", "thread", "module", "branch",
    "commit", "result", "error", "value", "string", "number", "table",
];

fn words(rng: &mut SplitMix64, n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(if i % 12 == 0 { '\n' } else { ' ' });
        }
        s.push_str(WORDS[rng.range_inclusive(0, WORDS.len() as u64 - 1) as usize]);
        if rng.range_inclusive(0, 5) == 0 {
            s.push_str(&rng.range_inclusive(0, 999).to_string());
        }
    }
    s
}

/// Builds the plans of `spec` (deterministic in `spec.seed`).
pub fn plan(spec: &AgentSpec) -> Result<Vec<AgentPlan>> {
    if spec.agents == 0 || spec.turns == 0 {
        return Err(BenchError::Invalid("agents and turns must be > 0".into()));
    }
    if !(spec.time_scale.is_finite() && spec.time_scale >= 0.0) {
        return Err(BenchError::Invalid("time scale must be >= 0".into()));
    }
    if !(0.0..=1.0).contains(&spec.short_prob) {
        return Err(BenchError::Invalid(
            "short probability must be in 0..=1".into(),
        ));
    }
    let mut rng = SplitMix64::new(spec.seed);
    let pick = |rng: &mut SplitMix64, xs: &[&'static str]| {
        xs[rng.range_inclusive(0, xs.len() as u64 - 1) as usize]
    };
    Ok((0..spec.agents)
        .map(|a| {
            let task = format!(
                "Agent {a} (run {}). Task: {}\n",
                spec.seed,
                words(&mut rng, spec.task_words)
            );
            let calls = (1..spec.turns)
                .map(|_| {
                    let u = rng.next_u64() as f64 / u64::MAX as f64;
                    let short = u < spec.short_prob;
                    let (tool, lo, hi) = if short {
                        (pick(&mut rng, SHORT_TOOLS), 0.2, 2.0)
                    } else {
                        (pick(&mut rng, LONG_TOOLS), 10.0, 60.0)
                    };
                    let x = rng.next_u64() as f64 / u64::MAX as f64;
                    ToolCall {
                        tool,
                        short,
                        duration_s: (lo + x * (hi - lo)) * spec.time_scale,
                        result: words(&mut rng, spec.result_words),
                    }
                })
                .collect();
            AgentPlan {
                id: format!("agent-{}-{a}", spec.seed),
                task,
                calls,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_durations_are_bimodal_and_scaled() {
        let spec = AgentSpec {
            agents: 20,
            turns: 11,
            time_scale: 0.5,
            ..AgentSpec::default()
        };
        let plans = plan(&spec).unwrap();
        let calls: Vec<&ToolCall> = plans.iter().flat_map(|p| &p.calls).collect();
        assert_eq!(calls.len(), 200);
        for c in &calls {
            let (lo, hi) = if c.short { (0.1, 1.0) } else { (5.0, 30.0) };
            assert!(c.duration_s >= lo && c.duration_s <= hi, "{c:?}");
            assert_eq!(SHORT_TOOLS.contains(&c.tool), c.short);
        }
        let short = calls.iter().filter(|c| c.short).count() as f64 / 200.0;
        assert!((short - 0.7).abs() < 0.1, "short share {short}");
    }

    #[test]
    fn agents_differ_and_plans_repeat_with_the_seed() {
        let spec = AgentSpec::default();
        let a = plan(&spec).unwrap();
        assert_eq!(a, plan(&spec).unwrap());
        assert_ne!(a[0].task, a[1].task);
        assert_ne!(a[0].id, a[1].id);
        let other = plan(&AgentSpec { seed: 1, ..spec }).unwrap();
        assert_ne!(a[0].task, other[0].task);
    }

    #[test]
    fn bad_parameters_are_errors() {
        for spec in [
            AgentSpec {
                agents: 0,
                ..AgentSpec::default()
            },
            AgentSpec {
                time_scale: f64::NAN,
                ..AgentSpec::default()
            },
            AgentSpec {
                short_prob: 1.5,
                ..AgentSpec::default()
            },
        ] {
            assert!(plan(&spec).is_err());
        }
    }
}
