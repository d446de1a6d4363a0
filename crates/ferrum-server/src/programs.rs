//! Agent-program telemetry: per program, when each turn arrived, its first token and its end,
//! and the *gap* between a turn's end and the same program's next arrival, keyed by the tool
//! the program said it was waiting on (`X-Program-Tool` / `tool` of the earlier turn).
//!
//! Two outputs:
//! - `/metrics`: a histogram of gaps per tool (`ferrum_program_gap_seconds{tool=...}`) and
//!   counters of program turns, so an operator sees how long each tool keeps agents away
//!   (what the retention predictor learns from).
//! - A JSONL trace (`ferrum serve --trace-out FILE`), one line per finished turn, which
//!   `ferrum replay` simulates under other retention policies. The format (one JSON object
//!   per line; times in seconds since the server started):
//!
//! ```text
//! {"program":"agent-3","turn":2,"tool":"python","prev_tool":"grep",
//!  "arrival_s":12.41,"first_token_s":12.55,"finish_s":12.98,
//!  "prompt_tokens":1480,"cached_tokens":1424,"output_tokens":32,
//!  "gap_s":0.83,"finish_reason":"length"}
//! ```
//!
//! `turn` counts a program's turns from 0; `tool` is what the program waits on after this
//! turn, `prev_tool` what it waited on before it (the gap's key); `gap_s` is this turn's
//! arrival minus the previous turn's finish (absent on a program's first turn);
//! `first_token_s` is absent when no token was generated. Only the first choice of a request
//! is traced (an agent turn is one choice).
//!
//! A program ended with `DELETE /v1/programs/{id}` gets one more line,
//! `{"program":"agent-3","ended_s":14.02}`, so a replay releases its KV when the live server
//! did instead of holding it to the TTL.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ferrum_engine::replay::trace::{TraceEnd, TraceTurn};

use crate::metrics::Histogram;
use crate::shadow_sim::ShadowSim;

/// Programs remembered at once; the least recently active beyond it are forgotten (so a
/// flood of one-turn "programs" cannot grow memory without bound).
pub const MAX_PROGRAMS: usize = 100_000;
/// Distinct tool names with their own gap histogram; others are counted as `other`.
pub const MAX_TOOLS: usize = 64;

/// Where trace lines go: a file shared by all handlers.
#[derive(Clone)]
pub struct TraceSink(Arc<Mutex<BufWriter<File>>>);

impl std::fmt::Debug for TraceSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TraceSink")
    }
}

impl TraceSink {
    /// Creates (truncates) the trace file, so a bad path fails at startup, not per turn.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(TraceSink(Arc::new(Mutex::new(BufWriter::new(
            File::create(path)?,
        )))))
    }

    fn write_line(&self, line: &str) {
        if let Ok(mut w) = self.0.lock() {
            // One line per turn: flush so the trace is complete whenever the server stops.
            let r = writeln!(w, "{line}").and_then(|()| w.flush());
            if let Err(e) = r {
                tracing::warn!("writing the program trace: {e}");
            }
        }
    }
}

/// One finished turn, as the request path saw it.
#[derive(Debug, Clone)]
pub struct TurnRecord {
    /// Program id.
    pub program: String,
    /// Tool the program waits on after this turn.
    pub tool: Option<String>,
    /// When the request arrived.
    pub arrival: Instant,
    /// When its first token was produced.
    pub first_token: Option<Instant>,
    /// When it finished.
    pub finish: Instant,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
    /// Generated tokens.
    pub output_tokens: usize,
    /// `stop`, `length`, `cancelled` or `error`.
    pub finish_reason: &'static str,
}

#[derive(Debug)]
struct ProgramState {
    turns: u64,
    last_finish: Instant,
    tool: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    programs: HashMap<String, ProgramState>,
    gaps: BTreeMap<String, Histogram>,
    turns: u64,
    returns: u64,
}

/// Per-program turn times and per-tool gap histograms; see the module docs.
#[derive(Debug)]
pub struct ProgramTelemetry {
    epoch: Instant,
    inner: Mutex<Inner>,
    sink: Mutex<Option<TraceSink>>,
    shadow: OnceLock<Arc<ShadowSim>>,
}

impl Default for ProgramTelemetry {
    fn default() -> Self {
        ProgramTelemetry {
            epoch: Instant::now(),
            inner: Mutex::new(Inner::default()),
            sink: Mutex::new(None),
            shadow: OnceLock::new(),
        }
    }
}

const GAP_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];
const NO_TOOL: &str = "none";
const OTHER_TOOL: &str = "other";

fn secs(epoch: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(epoch).as_secs_f64()
}

/// Escapes a label value for the Prometheus text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl ProgramTelemetry {
    /// Sends trace lines to `sink` from now on.
    pub fn set_sink(&self, sink: Option<TraceSink>) {
        if let Ok(mut s) = self.sink.lock() {
            *s = sink;
        }
    }

    /// Shadow mode: keeps every turn and program end from now on for `sim` too, which
    /// predicts `ttl` from them (see `shadow_sim`). Returns `false` if one was set already.
    pub fn set_shadow_sim(&self, sim: Arc<ShadowSim>) -> bool {
        self.shadow.set(sim).is_ok()
    }

    /// The shadow simulator, in shadow mode.
    pub fn shadow_sim(&self) -> Option<&Arc<ShadowSim>> {
        self.shadow.get()
    }

    /// Records a finished turn: updates the program's state and its gap histogram, and
    /// writes the trace line.
    pub fn record(&self, t: &TurnRecord) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.turns += 1;
        let prev = inner.programs.remove(&t.program);
        let gap = prev
            .as_ref()
            .map(|p| t.arrival.saturating_duration_since(p.last_finish));
        let prev_tool = prev.as_ref().and_then(|p| p.tool.clone());
        if let Some(g) = gap {
            inner.returns += 1;
            let mut key = prev_tool.clone().unwrap_or_else(|| NO_TOOL.to_string());
            if !inner.gaps.contains_key(&key) && inner.gaps.len() >= MAX_TOOLS {
                key = OTHER_TOOL.to_string();
            }
            inner
                .gaps
                .entry(key)
                .or_insert_with(|| Histogram::with_bounds(GAP_BUCKETS))
                .observe(g);
        }
        if inner.programs.len() >= MAX_PROGRAMS {
            // Forget the program idle longest (rare: only past MAX_PROGRAMS live programs).
            if let Some(k) = inner
                .programs
                .iter()
                .min_by_key(|(_, p)| p.last_finish)
                .map(|(k, _)| k.clone())
            {
                inner.programs.remove(&k);
            }
        }
        let turn = prev.as_ref().map_or(0, |p| p.turns);
        inner.programs.insert(
            t.program.clone(),
            ProgramState {
                turns: turn + 1,
                last_finish: t.finish,
                tool: t.tool.clone(),
            },
        );
        drop(inner);
        let sim = self.shadow.get();
        let sink = self.sink.lock().ok().and_then(|s| s.clone());
        if sim.is_none() && sink.is_none() {
            return;
        }
        let rec = self.trace_turn(t, turn, prev_tool, gap);
        if let Some(sink) = sink {
            let mut v = serde_json::to_value(&rec).unwrap_or_default();
            v["finish_reason"] = serde_json::json!(t.finish_reason);
            sink.write_line(&v.to_string());
        }
        if let Some(sim) = sim {
            sim.record_turn(rec);
        }
    }

    /// The trace record of a finished turn.
    fn trace_turn(
        &self,
        t: &TurnRecord,
        turn: u64,
        prev_tool: Option<String>,
        gap: Option<Duration>,
    ) -> TraceTurn {
        let e = self.epoch;
        TraceTurn {
            program: t.program.clone(),
            turn,
            tool: t.tool.clone(),
            prev_tool,
            arrival_s: secs(e, t.arrival),
            first_token_s: t.first_token.map(|ft| secs(e, ft)),
            finish_s: secs(e, t.finish),
            prompt_tokens: t.prompt_tokens,
            cached_tokens: t.cached_tokens,
            output_tokens: t.output_tokens,
            gap_s: gap.map(|g| g.as_secs_f64()),
        }
    }

    /// Appends the program series to a Prometheus exposition.
    pub fn render(&self, out: &mut String) {
        let Ok(inner) = self.inner.lock() else {
            return;
        };
        let _ = writeln!(
            out,
            "# HELP ferrum_program_turns_total Finished turns of agent programs (requests naming a program).\n# TYPE ferrum_program_turns_total counter\nferrum_program_turns_total {}",
            inner.turns
        );
        let _ = writeln!(
            out,
            "# HELP ferrum_program_returns_total Program turns that followed an earlier turn of the same program.\n# TYPE ferrum_program_returns_total counter\nferrum_program_returns_total {}",
            inner.returns
        );
        let _ = writeln!(
            out,
            "# HELP ferrum_programs_active Programs remembered (seen and not ended).\n# TYPE ferrum_programs_active gauge\nferrum_programs_active {}",
            inner.programs.len()
        );
        let name = "ferrum_program_gap_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a program turn's end to its next turn's arrival, by the tool it waited on.\n# TYPE {name} histogram"
        );
        for (tool, h) in &inner.gaps {
            h.render_series(out, name, &format!("tool=\"{}\"", label(tool)));
        }
    }

    /// Forgets `program` (it was ended with `DELETE /v1/programs/{id}`) and, if it had
    /// turns, traces its end.
    pub fn forget(&self, program: &str) {
        let known = match self.inner.lock() {
            Ok(mut inner) => inner.programs.remove(program).is_some(),
            Err(_) => false,
        };
        if !known {
            return;
        }
        let end = TraceEnd {
            program: program.to_string(),
            ended_s: secs(self.epoch, Instant::now()),
        };
        let sink = self.sink.lock().ok().and_then(|s| s.clone());
        if let Some(sink) = sink {
            sink.write_line(&serde_json::to_string(&end).unwrap_or_default());
        }
        if let Some(sim) = self.shadow.get() {
            sim.record_end(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(program: &str, tool: Option<&str>, arrival: Instant, finish: Instant) -> TurnRecord {
        TurnRecord {
            program: program.into(),
            tool: tool.map(String::from),
            arrival,
            first_token: Some(arrival + Duration::from_millis(10)),
            finish,
            prompt_tokens: 100,
            cached_tokens: 40,
            output_tokens: 8,
            finish_reason: "length",
        }
    }

    #[test]
    fn gaps_are_keyed_by_the_tool_waited_on_and_traced() {
        let dir = std::env::temp_dir().join(format!("ferrum-trace-{}", std::process::id()));
        let path = dir.with_extension("jsonl");
        let t = ProgramTelemetry::default();
        t.set_sink(Some(TraceSink::create(&path).unwrap()));
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        t.record(&turn("a", Some("grep"), t0, t0 + ms(100)));
        t.record(&turn("b", Some("tests"), t0, t0 + ms(200)));
        // a returns 300 ms after its first turn ended; b 20 s after.
        t.record(&turn("a", None, t0 + ms(400), t0 + ms(500)));
        t.record(&turn("b", None, t0 + ms(20_200), t0 + ms(20_300)));
        // Ending a known program is traced; an unknown one is not.
        t.forget("a");
        t.forget("never-seen");
        let mut m = String::new();
        t.render(&mut m);
        assert!(m.contains("ferrum_program_turns_total 4"), "{m}");
        assert!(m.contains("ferrum_program_returns_total 2"), "{m}");
        assert!(m.contains("ferrum_program_gap_seconds_bucket{tool=\"grep\",le=\"0.5\"} 1"));
        assert!(m.contains("ferrum_program_gap_seconds_bucket{tool=\"grep\",le=\"0.25\"} 0"));
        assert!(m.contains("ferrum_program_gap_seconds_bucket{tool=\"tests\",le=\"10\"} 0"));
        assert!(m.contains("ferrum_program_gap_seconds_bucket{tool=\"tests\",le=\"30\"} 1"));
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[4]["program"], "a");
        assert!(lines[4]["ended_s"].as_f64().unwrap() >= 0.0);
        assert!(lines[4].get("turn").is_none());
        assert_eq!(lines[0]["turn"], 0);
        assert!(lines[0].get("gap_s").is_none());
        assert_eq!(lines[2]["program"], "a");
        assert_eq!(lines[2]["turn"], 1);
        assert_eq!(lines[2]["prev_tool"], "grep");
        assert!((lines[2]["gap_s"].as_f64().unwrap() - 0.3).abs() < 1e-6);
        assert_eq!(lines[2]["cached_tokens"], 40);
        let a = lines[2]["arrival_s"].as_f64().unwrap();
        let f = lines[2]["first_token_s"].as_f64().unwrap();
        assert!((f - a - 0.01).abs() < 1e-6);
    }

    #[test]
    fn tool_names_beyond_the_cap_share_one_series_and_labels_are_escaped() {
        let t = ProgramTelemetry::default();
        let t0 = Instant::now();
        for i in 0..(MAX_TOOLS + 5) {
            let p = format!("p{i}");
            let tool = format!("t\"{i}");
            t.record(&turn(&p, Some(&tool), t0, t0));
            t.record(&turn(&p, None, t0, t0));
        }
        let mut m = String::new();
        t.render(&mut m);
        let series = m
            .lines()
            .filter(|l| l.starts_with("ferrum_program_gap_seconds_count"))
            .count();
        assert_eq!(series, MAX_TOOLS + 1);
        assert!(m.contains("ferrum_program_gap_seconds_count{tool=\"other\"} 5"));
        assert!(m.contains("tool=\"t\\\"0\""));
    }

    #[test]
    fn a_forgotten_program_starts_over() {
        let t = ProgramTelemetry::default();
        let t0 = Instant::now();
        t.record(&turn("a", Some("x"), t0, t0));
        t.forget("a");
        t.record(&turn("a", None, t0, t0));
        let mut m = String::new();
        t.render(&mut m);
        assert!(m.contains("ferrum_program_returns_total 0"));
    }
}
