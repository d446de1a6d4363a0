//! The agent-program trace `ferrum serve --trace-out` writes (one JSON object per
//! finished turn; the format is documented in `ferrum_server::programs` and docs/agents.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ReplayError, Result};

/// One finished turn of an agent program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_s: Option<f64>,
}

/// A program ended with `DELETE /v1/programs/{id}` (a trace line with `ended_s`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceEnd {
    /// Program id.
    pub program: String,
    /// When it was ended, seconds since the server started.
    pub ended_s: f64,
}

/// A parsed trace: the finished turns and the program ends, in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Trace {
    /// Finished turns.
    pub turns: Vec<TraceTurn>,
    /// Programs ended explicitly.
    pub ends: Vec<TraceEnd>,
}

/// A program's turns in order.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceProgram {
    /// Program id.
    pub id: String,
    /// Turns sorted by turn index (then arrival).
    pub turns: Vec<TraceTurn>,
    /// Seconds from the last turn's finish to the program's explicit end, if it was ended
    /// after its last turn (a replay then releases its KV that long after the simulated
    /// finish; otherwise pins run to their TTL, as for an agent that never came back).
    pub end_after_s: Option<f64>,
}

/// Parses a JSONL trace; blank lines are skipped, a malformed line is an error naming it.
pub fn parse_trace(text: &str) -> Result<Trace> {
    let mut out = Trace::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |e: String| ReplayError::Trace(format!("line {}: {e}", i + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        if v.get("ended_s").is_some() {
            let end: TraceEnd = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
            if !end.ended_s.is_finite() || end.ended_s < 0.0 {
                return Err(bad("times must be finite and >= 0".into()));
            }
            out.ends.push(end);
            continue;
        }
        let t: TraceTurn = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
        let times = [
            Some(t.arrival_s),
            t.first_token_s,
            Some(t.finish_s),
            t.gap_s,
        ];
        if times.iter().flatten().any(|x| !x.is_finite() || *x < 0.0) {
            return Err(bad("times must be finite and >= 0".into()));
        }
        out.turns.push(t);
    }
    Ok(out)
}

/// Groups turns by program (programs ordered by first arrival) and attaches each program's
/// end when it came after its last turn.
pub fn programs(trace: Trace) -> Vec<TraceProgram> {
    let mut by: BTreeMap<String, Vec<TraceTurn>> = BTreeMap::new();
    for t in trace.turns {
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
            let last_finish = turns.iter().map(|t| t.finish_s).fold(0.0, f64::max);
            let end_after_s = trace
                .ends
                .iter()
                .filter(|e| e.program == id && e.ended_s >= last_finish)
                .map(|e| e.ended_s - last_finish)
                .reduce(f64::min);
            TraceProgram {
                id,
                turns,
                end_after_s,
            }
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
{"program":"a","ended_s":2.5}
{"program":"b","ended_s":0.7}
"#;
        let trace = parse_trace(text).unwrap();
        assert_eq!(trace.turns.len(), 3);
        assert_eq!(trace.ends.len(), 2);
        let p = programs(trace);
        assert_eq!(p[0].id, "a");
        assert_eq!(p[0].turns[0].tool.as_deref(), Some("grep"));
        assert_eq!(p[0].turns[1].gap_s, Some(0.4));
        assert_eq!(p[0].turns[1].cached_tokens, 48);
        assert_eq!(p[1].id, "b");
        // a ended 0.5 s after its last turn; b's end came before its turn finished (a
        // program id reused after DELETE), so it is not b's end.
        assert!((p[0].end_after_s.unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(p[1].end_after_s, None);
    }

    #[test]
    fn malformed_lines_are_errors_with_their_line_number() {
        let e = parse_trace("{\"program\":\"a\"}\n").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let bad =
            r#"{"program":"a","arrival_s":-1,"finish_s":1,"prompt_tokens":1,"output_tokens":1}"#;
        assert!(parse_trace(bad).is_err());
        let e = parse_trace("\n{\"program\":\"a\",\"ended_s\":-2}\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
