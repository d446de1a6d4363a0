//! Prometheus metrics, rendered as text on `GET /metrics`.
//!
//! Counters and latency histograms are updated by the request path; engine gauges (queue
//! depth, running sequences, KV blocks, prefix-cache hits) are read from the engine at scrape
//! time so they are never stale. Hand-rolled to avoid a metrics dependency: the exposition
//! format is a few lines of text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ferrum_engine::EngineStats;

/// A fixed-bucket histogram of seconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistInner>,
}

#[derive(Debug, Default, Clone)]
struct HistInner {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            inner: Mutex::new(HistInner {
                counts: vec![0; bounds.len()],
                ..HistInner::default()
            }),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let v = d.as_secs_f64();
        if let Ok(mut h) = self.inner.lock() {
            if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
                h.counts[i] += 1;
            }
            h.sum += v;
            h.count += 1;
        }
    }

    /// An empty histogram with the given upper bounds (seconds, ascending).
    pub(crate) fn with_bounds(bounds: &'static [f64]) -> Self {
        Histogram::new(bounds)
    }

    /// An empty histogram with the time-to-first-token buckets.
    pub fn ttft() -> Self {
        Histogram::new(TTFT_BUCKETS)
    }

    /// Writes the bucket, sum and count lines of one labelled series (no HELP/TYPE).
    pub(crate) fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let h = self.inner.lock().map(|h| h.clone()).unwrap_or_default();
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&h.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}\n{name}_count{{{labels}}} {}",
            h.sum, h.count
        );
    }

    /// Observations so far (for tests).
    pub fn count(&self) -> u64 {
        self.inner.lock().map(|h| h.count).unwrap_or(0)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let h = self.inner.lock().map(|h| h.clone()).unwrap_or_default();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&h.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", h.sum, h.count);
    }
}

const TTFT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const E2E_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// All server-side metrics.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Prompt tokens of finished requests.
    pub prompt_tokens: AtomicU64,
    /// Generated tokens of finished requests.
    pub generation_tokens: AtomicU64,
    /// Prompt tokens served from the prefix cache, as reported per request.
    pub cached_prompt_tokens: AtomicU64,
    /// Time from arrival to first token.
    pub ttft: Histogram,
    /// Time between consecutive tokens of one request.
    pub itl: Histogram,
    /// Time from arrival to the end of the request.
    pub e2e: Histogram,
    /// Per-tenant series.
    pub tenants: crate::tenants::TenantMetrics,
    /// Agent-program turn times, per-tool gaps and the JSONL trace.
    pub programs: crate::programs::ProgramTelemetry,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            cached_prompt_tokens: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
            tenants: Default::default(),
            programs: Default::default(),
        }
    }
}

impl Metrics {
    /// Counts one HTTP response for `route` (the matched path pattern) with `status`.
    pub fn count_request(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_string(), status)).or_insert(0) += 1;
        }
    }

    /// Counts a finished generation's tokens.
    pub fn count_tokens(&self, prompt: usize, generated: usize, cached: usize) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.generation_tokens
            .fetch_add(generated as u64, Ordering::Relaxed);
        self.cached_prompt_tokens
            .fetch_add(cached as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition; `engine` is `None` while the model loads.
    pub fn render(&self, engine: Option<&EngineStats>, ready: bool) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        gauge(
            "ferrum_ready",
            "1 once the model is loaded and the server is not draining.",
            "gauge",
            u8::from(ready).to_string(),
        );
        if let Some(s) = engine {
            let g = [
                (
                    "ferrum_queue_depth",
                    "Requests waiting for admission.",
                    s.waiting as u64,
                ),
                (
                    "ferrum_running_sequences",
                    "Requests being computed.",
                    s.running as u64,
                ),
                (
                    "ferrum_kv_blocks_used",
                    "KV blocks in use.",
                    s.blocks_used as u64,
                ),
                (
                    "ferrum_kv_blocks_free",
                    "KV blocks free.",
                    s.blocks_free as u64,
                ),
                (
                    "ferrum_kv_blocks_total",
                    "KV blocks in the pool.",
                    s.blocks_total as u64,
                ),
                (
                    "ferrum_kv_blocks_cached",
                    "KV blocks held by the prefix cache.",
                    s.cached_blocks as u64,
                ),
            ];
            for (name, help, v) in g {
                gauge(name, help, "gauge", v.to_string());
            }
            let c = [
                (
                    "ferrum_prefix_cache_hit_tokens_total",
                    "Prompt tokens served from the prefix cache.",
                    s.cache_hit_tokens,
                ),
                (
                    "ferrum_prefix_cache_miss_tokens_total",
                    "Looked-up prompt tokens not in the prefix cache.",
                    s.cache.miss_tokens,
                ),
                (
                    "ferrum_prefix_cache_evictions_total",
                    "Prefix-cache blocks evicted.",
                    s.cache.evictions,
                ),
                (
                    "ferrum_prefill_tokens_total",
                    "Prompt tokens computed.",
                    s.prefill_tokens,
                ),
                (
                    "ferrum_decode_tokens_total",
                    "Decode tokens computed.",
                    s.decode_tokens,
                ),
                (
                    "ferrum_preemptions_total",
                    "Requests preempted for KV space.",
                    s.preemptions,
                ),
                ("ferrum_engine_steps_total", "Engine steps run.", s.steps),
            ];
            for (name, help, v) in c {
                gauge(name, help, "counter", v.to_string());
            }
        }
        let tok = [
            (
                "ferrum_prompt_tokens_total",
                "Prompt tokens of finished requests (tokens in).",
                &self.prompt_tokens,
            ),
            (
                "ferrum_generation_tokens_total",
                "Generated tokens of finished requests (tokens out).",
                &self.generation_tokens,
            ),
            (
                "ferrum_request_cached_tokens_total",
                "Cached prompt tokens reported in responses.",
                &self.cached_prompt_tokens,
            ),
        ];
        for (name, help, v) in tok {
            gauge(name, help, "counter", v.load(Ordering::Relaxed).to_string());
        }
        if let Some(s) = engine {
            render_spec(&mut out, &s.spec);
            render_retention(&mut out, s);
        }
        let _ = writeln!(
            out,
            "# HELP ferrum_requests_total HTTP responses by route and status.\n# TYPE ferrum_requests_total counter"
        );
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let route = route.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(
                    out,
                    "ferrum_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        self.ttft.render(
            &mut out,
            "ferrum_time_to_first_token_seconds",
            "Time from request arrival to its first token.",
        );
        self.itl.render(
            &mut out,
            "ferrum_inter_token_latency_seconds",
            "Time between consecutive tokens of a request.",
        );
        self.e2e.render(
            &mut out,
            "ferrum_e2e_request_latency_seconds",
            "Time from request arrival to its end.",
        );
        out
    }
}

/// Speculative decoding counters, labelled by drafter, decode batch bucket and prefix-cache
/// hit, plus the mean accepted draft length per drafter.
/// Agent-program KV retention: blocks pinned now, and what happened to pins and returning
/// turns (a turn that finds its program pinned skips re-prefilling its history).
fn render_retention(out: &mut String, s: &EngineStats) {
    let _ = writeln!(
        out,
        "# HELP ferrum_kv_blocks_pinned KV blocks pinned for agent programs between turns.\n# TYPE ferrum_kv_blocks_pinned gauge\nferrum_kv_blocks_pinned {}",
        s.pinned_blocks
    );
    let r = &s.retention;
    let events = [
        ("pinned", r.pins),
        ("skipped", r.skipped),
        ("expired", r.expired),
        ("reclaimed", r.reclaimed),
        ("displaced", r.displaced),
        ("released", r.released),
    ];
    let _ = writeln!(
        out,
        "# HELP ferrum_retention_pins_total Program pins by what happened to them.\n# TYPE ferrum_retention_pins_total counter"
    );
    for (event, v) in events {
        let _ = writeln!(out, "ferrum_retention_pins_total{{event=\"{event}\"}} {v}");
    }
    let _ = writeln!(
        out,
        "# HELP ferrum_retention_returns_total Program turns by whether their KV was still pinned.\n# TYPE ferrum_retention_returns_total counter\nferrum_retention_returns_total{{pinned=\"true\"}} {}\nferrum_retention_returns_total{{pinned=\"false\"}} {}",
        r.returns_pinned, r.returns_unpinned
    );
    let _ = writeln!(
        out,
        "# HELP ferrum_retention_pinned_block_seconds_total Pinned KV held over time.\n# TYPE ferrum_retention_pinned_block_seconds_total counter\nferrum_retention_pinned_block_seconds_total {}",
        r.pinned_block_us as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "# HELP ferrum_retention_shadow_hit_tokens_total Shadow mode: prompt tokens of program turns ttl would have served from the cache (lru's hits, or more where a virtual pin was alive).\n# TYPE ferrum_retention_shadow_hit_tokens_total counter\nferrum_retention_shadow_hit_tokens_total {}",
        r.shadow_hit_tokens
    );
    let _ = writeln!(
        out,
        "# HELP ferrum_retention_shadow_prompt_tokens_total Shadow mode: prompt tokens of program turns.\n# TYPE ferrum_retention_shadow_prompt_tokens_total counter\nferrum_retention_shadow_prompt_tokens_total {}",
        r.shadow_prompt_tokens
    );
    let rate = r.shadow_hit_tokens as f64 / r.shadow_prompt_tokens.max(1) as f64;
    let _ = writeln!(
        out,
        "# HELP ferrum_retention_shadow_predicted_hit_rate Shadow mode: cached share of program prompt tokens ttl is predicted to deliver.\n# TYPE ferrum_retention_shadow_predicted_hit_rate gauge\nferrum_retention_shadow_predicted_hit_rate {rate}"
    );
    let _ = writeln!(
        out,
        "# HELP ferrum_retention_shadow_pins_total Shadow mode: virtual pins by what happened to them.\n# TYPE ferrum_retention_shadow_pins_total counter\nferrum_retention_shadow_pins_total{{event=\"pinned\"}} {}\nferrum_retention_shadow_pins_total{{event=\"dropped\"}} {}",
        r.shadow_pins, r.shadow_dropped
    );
    let _ = writeln!(
        out,
        "# HELP ferrum_kv_blocks_shadow_pinned Shadow mode: KV blocks ttl would hold pinned now.\n# TYPE ferrum_kv_blocks_shadow_pinned gauge\nferrum_kv_blocks_shadow_pinned {}",
        s.shadow_pinned_blocks
    );
}

fn render_spec(out: &mut String, spec: &ferrum_engine::SpecStats) {
    let series = [
        (
            "ferrum_spec_verifications_total",
            "Drafts verified (speculative decoding).",
        ),
        (
            "ferrum_spec_drafted_tokens_total",
            "Drafted tokens verified.",
        ),
        (
            "ferrum_spec_accepted_tokens_total",
            "Drafted tokens accepted.",
        ),
    ];
    let cells = spec.cells();
    for (i, (name, help)) in series.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (k, c) in &cells {
            let v = [c.verifications, c.drafted, c.accepted][i];
            let hit = if k.cache_hit { "hit" } else { "miss" };
            let _ = writeln!(
                out,
                "{name}{{drafter=\"{}\",batch=\"{}\",prefix_cache=\"{hit}\"}} {v}",
                k.drafter, k.batch
            );
        }
    }
    let name = "ferrum_spec_mean_accepted_length";
    let _ = writeln!(
        out,
        "# HELP {name} Mean accepted drafted tokens per verification.\n# TYPE {name} gauge"
    );
    for m in ferrum_engine::spec::DRAFTERS {
        let t = spec.total(m);
        if t.verifications > 0 {
            let _ = writeln!(
                out,
                "{name}{{drafter=\"{}\"}} {}",
                m.name(),
                t.mean_accepted()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_gauges_and_counters_are_rendered() {
        let mut e = EngineStats {
            pinned_blocks: 7,
            ..Default::default()
        };
        e.retention.pins = 3;
        e.retention.expired = 2;
        e.retention.returns_pinned = 1;
        e.retention.pinned_block_us = 2_500_000;
        let text = Metrics::default().render(Some(&e), true);
        assert!(text.contains("ferrum_kv_blocks_pinned 7"));
        assert!(text.contains("ferrum_retention_pins_total{event=\"pinned\"} 3"));
        assert!(text.contains("ferrum_retention_pins_total{event=\"expired\"} 2"));
        assert!(text.contains("ferrum_retention_returns_total{pinned=\"true\"} 1"));
        assert!(text.contains("ferrum_retention_pinned_block_seconds_total 2.5"));
    }

    #[test]
    fn shadow_prediction_is_rendered_as_tokens_and_hit_rate() {
        let mut e = EngineStats {
            shadow_pinned_blocks: 5,
            ..Default::default()
        };
        e.retention.shadow_hit_tokens = 300;
        e.retention.shadow_prompt_tokens = 400;
        e.retention.shadow_pins = 4;
        e.retention.shadow_dropped = 1;
        let text = Metrics::default().render(Some(&e), true);
        assert!(text.contains("ferrum_retention_shadow_hit_tokens_total 300"));
        assert!(text.contains("ferrum_retention_shadow_prompt_tokens_total 400"));
        assert!(text.contains("ferrum_retention_shadow_predicted_hit_rate 0.75"));
        assert!(text.contains("ferrum_retention_shadow_pins_total{event=\"dropped\"} 1"));
        assert!(text.contains("ferrum_kv_blocks_shadow_pinned 5"));
    }

    #[test]
    fn speculation_counters_are_labelled_by_drafter_batch_and_cache() {
        let mut e = EngineStats::default();
        e.spec
            .record(ferrum_engine::SpecMethod::Suffix, 3, true, 5, 4);
        e.spec
            .record(ferrum_engine::SpecMethod::Suffix, 1, false, 4, 0);
        let text = Metrics::default().render(Some(&e), true);
        let cell = "{drafter=\"suffix\",batch=\"4\",prefix_cache=\"hit\"}";
        assert!(text.contains(&format!("ferrum_spec_drafted_tokens_total{cell} 5")));
        assert!(text.contains(&format!("ferrum_spec_accepted_tokens_total{cell} 4")));
        assert!(text.contains("ferrum_spec_mean_accepted_length{drafter=\"suffix\"} 2"));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.ttft.observe(Duration::from_millis(3));
        m.ttft.observe(Duration::from_millis(200));
        let text = m.render(None, true);
        assert!(text.contains("ferrum_time_to_first_token_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("ferrum_time_to_first_token_seconds_bucket{le=\"0.25\"} 2"));
        assert!(text.contains("ferrum_time_to_first_token_seconds_count 2"));
    }

    #[test]
    fn request_counts_are_labelled_by_route_and_status() {
        let m = Metrics::default();
        m.count_request("/v1/completions", 200);
        m.count_request("/v1/completions", 200);
        m.count_request("/v1/completions", 400);
        let text = m.render(None, false);
        assert!(text.contains("ferrum_requests_total{route=\"/v1/completions\",status=\"200\"} 2"));
        assert!(text.contains("ferrum_requests_total{route=\"/v1/completions\",status=\"400\"} 1"));
        assert!(text.contains("ferrum_ready 0"));
    }
}
