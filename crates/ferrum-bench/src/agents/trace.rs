//! Reading the agent-program trace `ferrum serve --trace-out` writes (one JSON object per
//! finished turn; the format is documented in `ferrum_server::programs` and docs/agents.md).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{BenchError, Result};

/// One finished turn of an agent program.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TraceTurn {
    /// Program id.
    pub program: String,
    /// Turn index within the program, from 0.
    #[serde(default)]
    pub turn: u64,
    /// Tool the program waits on after this turn.
    #[serde(default)]
    pub tool: Option<String>,
    /// Tool the program waited on before this turn (the gap's key).
    #[serde(default)]
    pub prev_tool: Option<String>,
    /// Arrival, seconds since the server started.
    pub arrival_s: f64,
    /// First token, seconds since the server started.
    #[serde(default)]
    pub first_token_s: Option<f64>,
    /// Finish, seconds since the server started.
    pub finish_s: f64,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    #[serde(default)]
    pub cached_tokens: usize,
    /// Generated tokens.
    pub output_tokens: usize,
    /// Arrival minus the previous turn's finish (absent on a first turn).
    #[serde(default)]
    pub gap_s: Option<f64>,
}

/// A program's turns in order.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceProgram {
    /// Program id.
    pub id: String,
    /// Turns sorted by turn index (then arrival).
    pub turns: Vec<TraceTurn>,
}

/// Parses a JSONL trace; blank lines are skipped, a malformed line is an error naming it.
pub fn parse_trace(text: &str) -> Result<Vec<TraceTurn>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let t: TraceTurn = serde_json::from_str(line)
            .map_err(|e| BenchError::Dataset(format!("trace line {}: {e}", i + 1)))?;
        let times = [
            Some(t.arrival_s),
            t.first_token_s,
            Some(t.finish_s),
            t.gap_s,
        ];
        if times.iter().flatten().any(|x| !x.is_finite() || *x < 0.0) {
            return Err(BenchError::Dataset(format!(
                "trace line {}: times must be finite and >= 0",
                i + 1
            )));
        }
        out.push(t);
    }
    Ok(out)
}

/// Groups turns by program (programs ordered by first arrival).
pub fn programs(turns: Vec<TraceTurn>) -> Vec<TraceProgram> {
    let mut by: BTreeMap<String, Vec<TraceTurn>> = BTreeMap::new();
    for t in turns {
        by.entry(t.program.clone()).or_default().push(t);
    }
    let mut out: Vec<TraceProgram> = by
        .into_iter()
        .map(|(id, mut turns)| {
            turns.sort_by(|a, b| {
                a.turn
                    .cmp(&b.turn)
                    .then(a.arrival_s.total_cmp(&b.arrival_s))
            });
            TraceProgram { id, turns }
        })
        .collect();
    out.sort_by(|a, b| a.turns[0].arrival_s.total_cmp(&b.turns[0].arrival_s));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_line_and_groups_by_program() {
        let text = r#"
{"program":"b","turn":0,"tool":"tests","prev_tool":null,"arrival_s":0.5,"finish_s":1.0,"prompt_tokens":50,"cached_tokens":0,"output_tokens":8,"finish_reason":"length"}
{"program":"a","turn":1,"tool":null,"prev_tool":"grep","arrival_s":1.4,"first_token_s":1.5,"finish_s":2.0,"prompt_tokens":90,"cached_tokens":48,"output_tokens":8,"gap_s":0.4,"finish_reason":"length"}
{"program":"a","turn":0,"tool":"grep","arrival_s":0.0,"first_token_s":0.2,"finish_s":1.0,"prompt_tokens":40,"output_tokens":8}
"#;
        let turns = parse_trace(text).unwrap();
        assert_eq!(turns.len(), 3);
        let p = programs(turns);
        assert_eq!(p[0].id, "a");
        assert_eq!(p[0].turns[0].tool.as_deref(), Some("grep"));
        assert_eq!(p[0].turns[1].gap_s, Some(0.4));
        assert_eq!(p[0].turns[1].cached_tokens, 48);
        assert_eq!(p[1].id, "b");
    }

    #[test]
    fn malformed_lines_are_errors_with_their_line_number() {
        let e = parse_trace("{\"program\":\"a\"}\n").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let bad =
            r#"{"program":"a","arrival_s":-1,"finish_s":1,"prompt_tokens":1,"output_tokens":1}"#;
        assert!(parse_trace(bad).is_err());
    }
}
