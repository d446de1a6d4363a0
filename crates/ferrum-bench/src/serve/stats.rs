//! Latency statistics of a serving run: per-request records in, the report out.
//!
//! Definitions follow vLLM's serving benchmark so figures are comparable: TTFT is the time from
//! sending a request to its first generated text; TPOT is `(e2e - ttft) / (output_tokens - 1)`
//! per request (requests with one output token have none); ITL is every gap between
//! consecutive text chunks, pooled over all requests; E2E is send to end of stream.
//! Percentiles interpolate linearly between order statistics (numpy's default).

use serde::Serialize;
use serde_json::{Map, Value};

/// What happened to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    /// Seconds from the start of the run to sending the request.
    pub sent_s: f64,
    /// Time to first token, seconds (absent when no text arrived).
    pub ttft_s: Option<f64>,
    /// Send to end of stream, seconds.
    pub e2e_s: f64,
    /// Inter-token gaps, seconds.
    pub itl_s: Vec<f64>,
    /// Prompt tokens (server usage, else the known prompt length, else 0).
    pub input_tokens: u64,
    /// Generated tokens (server usage, else one per text chunk).
    pub output_tokens: u64,
    /// Tokens asked for (`max_tokens`).
    pub expected_output_tokens: u64,
    /// Why the request failed; `None` when it completed.
    pub error: Option<String>,
}

impl RequestRecord {
    /// Time per output token after the first, when there is more than one.
    pub fn tpot_s(&self) -> Option<f64> {
        let ttft = self.ttft_s?;
        (self.output_tokens > 1).then(|| (self.e2e_s - ttft) / (self.output_tokens - 1) as f64)
    }
}

/// Linear-interpolation percentile of sorted `xs` (`p` in 0..=100); `NaN` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let rank = (p.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

/// Mean and percentiles of one latency metric, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Samples.
    pub count: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

impl Summary {
    /// Summarizes `xs` (any order; NaNs dropped). All fields are NaN when empty.
    pub fn of(xs: &[f64]) -> Summary {
        let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        let mean = if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        };
        Summary {
            count: v.len(),
            mean,
            p50: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p99: percentile(&v, 99.0),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// The result of a serving run.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeReport {
    /// Requests that completed.
    pub completed: usize,
    /// Requests that failed (HTTP error, error event, broken stream).
    pub failed: usize,
    /// Completed requests that produced a different number of tokens than asked for (a
    /// server that ignored `ignore_eos`, or counts tokens differently).
    pub output_len_mismatch: usize,
    /// Wall time of the run (first send to last end), seconds.
    pub duration_s: f64,
    /// Prompt tokens of completed requests.
    pub total_input_tokens: u64,
    /// Generated tokens of completed requests.
    pub total_output_tokens: u64,
    /// Completed requests per second.
    pub requests_per_s: f64,
    /// Prompt tokens per second.
    pub input_tokens_per_s: f64,
    /// Generated tokens per second.
    pub output_tokens_per_s: f64,
    /// Time to first token.
    pub ttft: Summary,
    /// Time per output token.
    pub tpot: Summary,
    /// Inter-token latency.
    pub itl: Summary,
    /// End-to-end latency.
    pub e2e: Summary,
    /// The first failure's message, for diagnosis.
    pub first_error: Option<String>,
}

fn per_s(x: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        x / secs
    } else {
        0.0
    }
}

impl ServeReport {
    /// Aggregates `records` of a run that lasted `duration_s`.
    pub fn from_records(records: &[RequestRecord], duration_s: f64) -> ServeReport {
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.error.is_none()).collect();
        let total_in: u64 = ok.iter().map(|r| r.input_tokens).sum();
        let total_out: u64 = ok.iter().map(|r| r.output_tokens).sum();
        let ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft_s).collect();
        let tpot: Vec<f64> = ok.iter().filter_map(|r| r.tpot_s()).collect();
        let itl: Vec<f64> = ok.iter().flat_map(|r| r.itl_s.iter().copied()).collect();
        let e2e: Vec<f64> = ok.iter().map(|r| r.e2e_s).collect();
        ServeReport {
            completed: ok.len(),
            failed: records.len() - ok.len(),
            output_len_mismatch: ok
                .iter()
                .filter(|r| r.output_tokens != r.expected_output_tokens)
                .count(),
            duration_s,
            total_input_tokens: total_in,
            total_output_tokens: total_out,
            requests_per_s: per_s(ok.len() as f64, duration_s),
            input_tokens_per_s: per_s(total_in as f64, duration_s),
            output_tokens_per_s: per_s(total_out as f64, duration_s),
            ttft: Summary::of(&ttft),
            tpot: Summary::of(&tpot),
            itl: Summary::of(&itl),
            e2e: Summary::of(&e2e),
            first_error: records.iter().find_map(|r| r.error.clone()),
        }
    }

    /// A flat JSON object (`ttft_p50_s`, `output_tokens_per_s`, ...) for scripts. NaN
    /// (no samples) becomes `null`.
    pub fn to_json(&self) -> Value {
        let num = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
        let mut m = Map::new();
        m.insert("completed".into(), self.completed.into());
        m.insert("failed".into(), self.failed.into());
        m.insert(
            "output_len_mismatch".into(),
            self.output_len_mismatch.into(),
        );
        m.insert("duration_s".into(), num(self.duration_s));
        m.insert("total_input_tokens".into(), self.total_input_tokens.into());
        m.insert(
            "total_output_tokens".into(),
            self.total_output_tokens.into(),
        );
        m.insert("requests_per_s".into(), num(self.requests_per_s));
        m.insert("input_tokens_per_s".into(), num(self.input_tokens_per_s));
        m.insert("output_tokens_per_s".into(), num(self.output_tokens_per_s));
        for (name, s) in self.metrics() {
            m.insert(format!("{name}_mean_s"), num(s.mean));
            m.insert(format!("{name}_p50_s"), num(s.p50));
            m.insert(format!("{name}_p90_s"), num(s.p90));
            m.insert(format!("{name}_p99_s"), num(s.p99));
            m.insert(format!("{name}_max_s"), num(s.max));
        }
        m.insert(
            "first_error".into(),
            self.first_error.clone().map_or(Value::Null, Value::String),
        );
        Value::Object(m)
    }

    /// The four latency metrics with their short names, in display order.
    pub fn metrics(&self) -> [(&'static str, Summary); 4] {
        [
            ("ttft", self.ttft),
            ("tpot", self.tpot),
            ("itl", self.itl),
            ("e2e", self.e2e),
        ]
    }

    /// A human-readable table.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("{k:<22}{v}\n"));
        line(
            "completed",
            format!("{} ({} failed)", self.completed, self.failed),
        );
        if self.output_len_mismatch > 0 {
            line(
                "output len mismatch",
                format!("{} requests", self.output_len_mismatch),
            );
        }
        line("duration", format!("{:.2} s", self.duration_s));
        line("requests/s", format!("{:.3}", self.requests_per_s));
        line(
            "input tokens/s",
            format!(
                "{:.1} ({} tokens)",
                self.input_tokens_per_s, self.total_input_tokens
            ),
        );
        line(
            "output tokens/s",
            format!(
                "{:.1} ({} tokens)",
                self.output_tokens_per_s, self.total_output_tokens
            ),
        );
        s.push_str(&format!(
            "{:<22}{:>10}{:>10}{:>10}{:>10}\n",
            "latency (ms)", "mean", "p50", "p90", "p99"
        ));
        for (name, m) in self.metrics() {
            s.push_str(&format!(
                "{:<22}{:>10.1}{:>10.1}{:>10.1}{:>10.1}\n",
                name.to_uppercase(),
                1e3 * m.mean,
                1e3 * m.p50,
                1e3 * m.p90,
                1e3 * m.p99
            ));
        }
        if let Some(e) = &self.first_error {
            s.push_str(&format!("first error           {e}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_like_numpy() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&xs, 0.0), 1.0);
        assert_eq!(percentile(&xs, 100.0), 4.0);
        assert!((percentile(&xs, 50.0) - 2.5).abs() < 1e-12);
        // numpy.percentile([1,2,3,4], 99) == 3.97
        assert!((percentile(&xs, 99.0) - 3.97).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&hundred, 99.0) - 99.01).abs() < 1e-9);
    }

    #[test]
    fn summary_sorts_and_drops_nan() {
        let s = Summary::of(&[3.0, f64::NAN, 1.0, 2.0]);
        assert_eq!(s.count, 3);
        assert_eq!((s.mean, s.p50, s.max), (2.0, 2.0, 3.0));
        assert!(Summary::of(&[]).p50.is_nan());
    }

    fn rec(ttft: f64, e2e: f64, out: u64, err: Option<&str>) -> RequestRecord {
        RequestRecord {
            sent_s: 0.0,
            ttft_s: Some(ttft),
            e2e_s: e2e,
            itl_s: vec![(e2e - ttft) / (out.max(2) - 1) as f64; out.saturating_sub(1) as usize],
            input_tokens: 10,
            output_tokens: out,
            expected_output_tokens: 5,
            error: err.map(String::from),
        }
    }

    #[test]
    fn report_counts_only_completed_requests() {
        let recs = [
            rec(0.1, 0.5, 5, None),
            rec(0.3, 1.1, 5, None),
            rec(0.2, 0.2, 1, None),
            rec(9.0, 9.0, 0, Some("HTTP 500")),
        ];
        let r = ServeReport::from_records(&recs, 2.0);
        assert_eq!((r.completed, r.failed, r.output_len_mismatch), (3, 1, 1));
        assert_eq!(r.total_output_tokens, 11);
        assert_eq!(r.total_input_tokens, 30);
        assert!((r.output_tokens_per_s - 5.5).abs() < 1e-12);
        assert!((r.requests_per_s - 1.5).abs() < 1e-12);
        // TPOT: (0.5-0.1)/4 = 0.1 and (1.1-0.3)/4 = 0.2; the 1-token request has none.
        assert_eq!(r.tpot.count, 2);
        assert!((r.tpot.mean - 0.15).abs() < 1e-12);
        assert_eq!(r.ttft.count, 3);
        assert!((r.ttft.p50 - 0.2).abs() < 1e-12);
        assert_eq!(r.itl.count, 8);
        assert_eq!(r.first_error.as_deref(), Some("HTTP 500"));
        let j = r.to_json();
        assert_eq!(j["completed"], 3);
        assert_eq!(j["failed"], 1);
        assert!((j["ttft_p50_s"].as_f64().unwrap() - 0.2).abs() < 1e-12);
        assert!(j["output_tokens_per_s"].as_f64().is_some());
        assert!(r.to_table().contains("TTFT"));
    }

    #[test]
    fn empty_run_has_null_latencies_not_nan_in_json() {
        let r = ServeReport::from_records(&[], 0.0);
        let j = r.to_json();
        assert!(j["ttft_p50_s"].is_null());
        assert_eq!(j["output_tokens_per_s"], 0.0);
        assert!(serde_json::to_string(&j).is_ok());
    }
}
