//! Shadow mode's prediction of what `ttl` would deliver: the recorded workload simulated on
//! `ttl`'s own timeline.
//!
//! Why a simulation: the engine's shadow counters (virtual pins, `retention::shadow`) watch
//! `lru`'s timeline. Under `ttl` turns finish sooner, so programs come back sooner, more of
//! them wait on tools at once and compete for the pin cap, and TTLs are chosen from fewer
//! gap samples; none of that shows from `lru`'s side, and the virtual pins over-predicted
//! `ttl`'s cached tokens by 5-19% live. So in shadow mode the server keeps the program turns
//! it served (the records `--trace-out` writes, a bounded window of [`MAX_SIM_TURNS`]) and,
//! after new turns, replays them with [`ferrum_engine::replay`]: the
//! real scheduler, pool, radix cache, retention policy and gap predictor on a fake model, with
//! step times fitted to the recorded busy time. Each turn arrives its recorded tool gap after
//! its *simulated* predecessor finished, so `ttl`'s timeline runs at its own pace. The same
//! workload is also replayed under `lru`, which checks the simulation against what `lru`
//! served live (both are exported).
//!
//! The replays take 0.3-0.6 ms per turn and policy (seconds for a full window), on a box
//! whose cores serve the model. So they run on a background thread that a `/metrics` read
//! starts when turns arrived since the last one, never more than [`DUTY`] of the time (a
//! replay that took `t` is not followed by another for `(1/DUTY - 1) t`); a read returns the
//! latest finished prediction at once, and `ferrum_retention_shadow_sim_pending` says whether
//! newer turns are still to be simulated.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrum_engine::replay::trace::{programs, Trace, TraceEnd, TraceTurn};
use ferrum_engine::replay::{replay, CostModel, ReplayConfig, ReplayReport};
use ferrum_engine::{EngineConfig, KvRetention};

/// Turns kept for the simulation; past it the oldest quarter is dropped (a long-running
/// server predicts from its recent workload).
pub const MAX_SIM_TURNS: usize = 20_000;
/// Most of the time the background replays may run (the share of one core).
pub const DUTY: f64 = 0.1;

/// One policy's simulated figures over the recorded turns.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SimFigures {
    /// Prompt tokens served from the cache.
    pub cached_tokens: u64,
    /// Cached share of the prompt tokens.
    pub hit_rate: f64,
    /// History tokens recomputed because they were not cached.
    pub reprefill_tokens: u64,
    /// Mean program completion time, simulated seconds.
    pub mean_jct_s: f64,
}

impl From<&ReplayReport> for SimFigures {
    fn from(r: &ReplayReport) -> Self {
        SimFigures {
            cached_tokens: r.cached_tokens,
            hit_rate: r.hit_rate,
            reprefill_tokens: r.reprefill_tokens,
            mean_jct_s: r.mean_jct_s,
        }
    }
}

/// The prediction over the recorded turns.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowPrediction {
    /// Program turns simulated.
    pub turns: usize,
    /// Their prompt tokens.
    pub prompt_tokens: u64,
    /// What the live server (`lru`) served from the cache on them.
    pub live_cached_tokens: u64,
    /// `ttl`, simulated: the prediction.
    pub ttl: SimFigures,
    /// `lru`, simulated: compare with `live_cached_tokens` to judge the simulation.
    pub lru: SimFigures,
    /// Prompt tokens per second the cost model was fitted to.
    pub prefill_tps: f64,
}

#[derive(Debug, Default)]
struct Recorded {
    trace: Trace,
    /// Bumped on every record.
    version: u64,
    /// The version `last` was computed at (`None`: never).
    done: Option<u64>,
    /// The latest finished prediction (`None` before the first, or when the recorded
    /// workload could not be simulated).
    last: Option<Arc<ShadowPrediction>>,
    /// A replay is running.
    running: bool,
    /// When the last replay finished and how long it took (the duty-cycle cap).
    finished_at: Option<Instant>,
    took: Duration,
}

impl Recorded {
    /// Whether turns recorded since the last replay are not simulated yet.
    fn pending(&self) -> bool {
        self.running || self.version != self.done.unwrap_or(0)
    }

    /// Whether a replay may start now: something new, none running, the duty cycle allows.
    fn may_start(&self, now: Instant) -> bool {
        let rested = self.finished_at.is_none_or(|f| {
            now.saturating_duration_since(f).as_secs_f64()
                >= self.took.as_secs_f64() * (1.0 / DUTY - 1.0)
        });
        !self.running && self.pending() && !self.trace.turns.is_empty() && rested
    }
}

/// Recorded program turns and the cached prediction over them; see the module docs.
#[derive(Debug)]
pub struct ShadowSim {
    cfg: ReplayConfig,
    recorded: Mutex<Recorded>,
}

impl ShadowSim {
    /// A simulator of the server's engine settings (`cfg`'s pool, step budget, running and pin
    /// caps; each replay sets its own policy).
    pub fn new(cfg: ReplayConfig) -> Self {
        ShadowSim {
            cfg,
            recorded: Mutex::new(Recorded::default()),
        }
    }

    /// The simulator a server needs for an engine configured as `cfg`: one in shadow mode
    /// (`lru` with `shadow` set), none otherwise.
    pub fn for_engine(cfg: &EngineConfig) -> Option<Arc<ShadowSim>> {
        let r = &cfg.retention;
        (r.shadow && r.policy == KvRetention::Lru)
            .then(|| Arc::new(ShadowSim::new(ReplayConfig::for_engine(cfg))))
    }

    /// Keeps a finished program turn.
    pub fn record_turn(&self, turn: TraceTurn) {
        if let Ok(mut r) = self.recorded.lock() {
            let turns = &mut r.trace.turns;
            if turns.len() >= MAX_SIM_TURNS {
                turns.drain(..MAX_SIM_TURNS / 4);
            }
            turns.push(turn);
            r.version += 1;
        }
    }

    /// Keeps a program's explicit end (its KV is released then, not held to the TTL).
    pub fn record_end(&self, end: TraceEnd) {
        if let Ok(mut r) = self.recorded.lock() {
            let ends = &mut r.trace.ends;
            if ends.len() >= MAX_SIM_TURNS {
                ends.drain(..MAX_SIM_TURNS / 4);
            }
            ends.push(end);
            r.version += 1;
        }
    }

    /// The latest finished prediction (it may not cover the newest turns: see [`pending`]).
    ///
    /// [`pending`]: Self::pending
    pub fn latest(&self) -> Option<Arc<ShadowPrediction>> {
        self.recorded.lock().ok()?.last.clone()
    }

    /// Whether turns recorded since the last replay still wait to be simulated.
    pub fn pending(&self) -> bool {
        self.recorded.lock().is_ok_and(|r| r.pending())
    }

    /// Starts a replay of the recorded turns on a background thread if [`refresh`] would run
    /// one now; returns at once.
    ///
    /// [`refresh`]: Self::refresh
    pub fn refresh_in_background(self: &Arc<Self>) {
        let Some((trace, version)) = self.claim() else {
            return;
        };
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("shadow-sim".into())
            .spawn(move || me.simulate(trace, version));
        if let Err(e) = spawned {
            tracing::warn!("shadow simulation thread: {e}");
            if let Ok(mut r) = self.recorded.lock() {
                r.running = false;
            }
        }
    }

    /// Replays the recorded turns now, on this thread, if turns arrived since the last replay,
    /// none is running and the duty cycle allows; returns whether it ran.
    pub fn refresh(&self) -> bool {
        match self.claim() {
            Some((trace, version)) => {
                self.simulate(trace, version);
                true
            }
            None => false,
        }
    }

    /// Marks a replay as running and hands out what it simulates, if one may start now.
    fn claim(&self) -> Option<(Trace, u64)> {
        let mut r = self.recorded.lock().ok()?;
        if !r.may_start(Instant::now()) {
            return None;
        }
        r.running = true;
        Some((r.trace.clone(), r.version))
    }

    /// Replays `trace` under `ttl` and `lru` and publishes the prediction as of `version`.
    fn simulate(&self, trace: Trace, version: u64) {
        let t0 = Instant::now();
        // A bug in the simulation must not leave `running` set (the prediction would then
        // stay pending for good): a panic counts as a failed replay.
        let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.predict(trace)))
            .unwrap_or_else(|_| {
                tracing::error!("shadow simulation panicked");
                None
            })
            .map(Arc::new);
        if let Ok(mut r) = self.recorded.lock() {
            r.done = Some(version);
            r.last = p;
            r.running = false;
            r.finished_at = Some(Instant::now());
            r.took = t0.elapsed();
        }
    }

    /// The two replays; `None` (and a warning) if the workload cannot be simulated.
    fn predict(&self, trace: Trace) -> Option<ShadowPrediction> {
        let progs = programs(trace);
        let cost = CostModel::default().fitted_to(&progs).unwrap_or_default();
        let run = |policy| {
            let cfg = ReplayConfig {
                policy,
                shadow: false,
                cost,
                ..self.cfg.clone()
            };
            replay(&progs, &cfg)
        };
        let (ttl, lru) = match (run(KvRetention::Ttl), run(KvRetention::Lru)) {
            (Ok(t), Ok(l)) => (t, l),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("shadow simulation: {e}");
                return None;
            }
        };
        let live = progs.iter().flat_map(|p| &p.turns);
        let p = ShadowPrediction {
            turns: ttl.turns,
            prompt_tokens: ttl.prompt_tokens,
            live_cached_tokens: live.map(|t| t.cached_tokens as u64).sum(),
            ttl: SimFigures::from(&ttl),
            lru: SimFigures::from(&lru),
            prefill_tps: cost.prefill_tps,
        };
        tracing::info!(
            turns = p.turns,
            ttl_cached_tokens = p.ttl.cached_tokens,
            ttl_mean_jct_s = p.ttl.mean_jct_s,
            lru_cached_tokens = p.lru.cached_tokens,
            live_cached_tokens = p.live_cached_tokens,
            "shadow mode: ttl predicted on the recorded workload"
        );
        Some(p)
    }
}

/// Appends the simulator's state to a Prometheus exposition: whether newer turns wait to be
/// simulated, and the latest prediction, if any.
pub fn render_sim(sim: &ShadowSim, out: &mut String) {
    let n = "ferrum_retention_shadow_sim_pending";
    let _ = writeln!(
        out,
        "# HELP {n} Shadow mode: 1 while turns served since the last simulation wait for the next one.\n# TYPE {n} gauge\n{n} {}",
        u8::from(sim.pending())
    );
    if let Some(p) = sim.latest() {
        render(&p, out);
    }
}

/// Appends a prediction to a Prometheus exposition.
fn render(p: &ShadowPrediction, out: &mut String) {
    let plain = |v: String| vec![("", v)];
    let by_policy =
        |ttl: String, lru: String| vec![("{policy=\"ttl\"}", ttl), ("{policy=\"lru\"}", lru)];
    let series = [
        (
            "turns",
            "program turns simulated (the recorded window).",
            plain(p.turns.to_string()),
        ),
        (
            "prompt_tokens",
            "prompt tokens of the simulated turns.",
            plain(p.prompt_tokens.to_string()),
        ),
        (
            "live_cached_tokens",
            "prompt tokens of those turns the live policy served from the cache.",
            plain(p.live_cached_tokens.to_string()),
        ),
        (
            "prefill_tokens_per_second",
            "prefill speed of the cost model, fitted to the recorded busy time.",
            plain(p.prefill_tps.to_string()),
        ),
        (
            "cached_tokens",
            "prompt tokens served from the cache with the recorded workload simulated under each policy.",
            by_policy(p.ttl.cached_tokens.to_string(), p.lru.cached_tokens.to_string()),
        ),
        (
            "hit_rate",
            "cached share of prompt tokens with the recorded workload simulated under each policy.",
            by_policy(p.ttl.hit_rate.to_string(), p.lru.hit_rate.to_string()),
        ),
        (
            "reprefill_tokens",
            "history tokens recomputed with the recorded workload simulated under each policy.",
            by_policy(
                p.ttl.reprefill_tokens.to_string(),
                p.lru.reprefill_tokens.to_string(),
            ),
        ),
        (
            "mean_jct_seconds",
            "mean program completion time with the recorded workload simulated under each policy.",
            by_policy(p.ttl.mean_jct_s.to_string(), p.lru.mean_jct_s.to_string()),
        ),
    ];
    for (name, help, values) in series {
        let name = format!("ferrum_retention_shadow_sim_{name}");
        let _ = writeln!(
            out,
            "# HELP {name} Shadow mode: {help}\n# TYPE {name} gauge"
        );
        for (labels, v) in values {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `agents` programs of `turns` turns whose prompts grow by `grow` tokens; every third
    /// tool call (staggered by agent) keeps the agent away `long_s`, the others `short_s`;
    /// every turn took 0.5 s live and found nothing cached.
    fn record(
        sim: &ShadowSim,
        agents: usize,
        turns: usize,
        grow: usize,
        short_s: f64,
        long_s: f64,
    ) {
        let gap = |a: usize, k: usize| {
            if (a + k).is_multiple_of(3) {
                ("run_tests", long_s)
            } else {
                ("grep", short_s)
            }
        };
        for a in 0..agents {
            let mut t0 = a as f64 * 0.05;
            for k in 0..turns {
                let finish = t0 + 0.5;
                let prev = k.checked_sub(1).map(|j| gap(a, j));
                sim.record_turn(TraceTurn {
                    program: format!("agent-{a}"),
                    turn: k as u64,
                    tool: Some(gap(a, k).0.into()),
                    prev_tool: prev.map(|p| p.0.into()),
                    arrival_s: t0,
                    first_token_s: Some(t0 + 0.4),
                    finish_s: finish,
                    prompt_tokens: grow * (k + 1),
                    cached_tokens: 0,
                    output_tokens: 4,
                    gap_s: prev.map(|p| p.1),
                });
                t0 = finish + gap(a, k).1;
            }
        }
    }

    fn sim(kv_cache_tokens: usize) -> ShadowSim {
        ShadowSim::new(ReplayConfig {
            kv_cache_tokens,
            ..ReplayConfig::default()
        })
    }

    #[test]
    fn ttl_is_predicted_to_keep_what_lru_loses_under_pressure() {
        // 8 agents growing to 800 tokens each (6,400 in all) in a 4,096-token pool: under
        // lru, agents back from short tools find their history evicted by the others.
        let s = sim(4096);
        assert!(!s.refresh(), "nothing recorded yet");
        assert!(s.latest().is_none() && !s.pending());
        record(&s, 8, 8, 100, 0.3, 20.0);
        assert!(s.pending());
        assert!(s.refresh());
        assert!(!s.pending());
        let p = s.latest().expect("a prediction");
        assert_eq!(p.turns, 64);
        assert_eq!(p.prompt_tokens, 8 * 100 * 36);
        assert_eq!(p.live_cached_tokens, 0);
        assert!(
            p.ttl.cached_tokens > p.lru.cached_tokens,
            "ttl {:?} vs lru {:?}",
            p.ttl,
            p.lru
        );
        assert!(p.ttl.mean_jct_s < p.lru.mean_jct_s);
        // Nothing new: no new simulation.
        assert!(!s.refresh());
        assert!(Arc::ptr_eq(&p, &s.latest().unwrap()));
        let mut m = String::new();
        render_sim(&s, &mut m);
        assert!(m.contains("ferrum_retention_shadow_sim_pending 0"), "{m}");
        assert!(m.contains("ferrum_retention_shadow_sim_turns 64"), "{m}");
        let ttl = format!(
            "ferrum_retention_shadow_sim_cached_tokens{{policy=\"ttl\"}} {}",
            p.ttl.cached_tokens
        );
        assert!(m.contains(&ttl), "{m}");
        assert!(m.contains("ferrum_retention_shadow_sim_reprefill_tokens{policy=\"lru\"}"));
    }

    #[test]
    fn replays_are_held_to_the_duty_cycle_and_run_in_the_background() {
        let s = Arc::new(sim(4096));
        record(&s, 2, 2, 50, 0.1, 0.1);
        assert!(s.refresh());
        // As if that replay had taken an hour: the next may not start for nine more.
        s.recorded.lock().unwrap().took = Duration::from_secs(3600);
        s.record_end(TraceEnd {
            program: "agent-0".into(),
            ended_s: 100.0,
        });
        assert!(s.pending());
        assert!(!s.refresh(), "held back by the duty cycle");
        s.refresh_in_background();
        assert!(s.pending(), "still held back");
        let mut m = String::new();
        render_sim(&s, &mut m);
        assert!(m.contains("ferrum_retention_shadow_sim_pending 1"), "{m}");
        assert!(
            m.contains("ferrum_retention_shadow_sim_turns 4"),
            "the older prediction: {m}"
        );
        // Rested: the background thread brings the prediction up to date.
        s.recorded.lock().unwrap().took = Duration::ZERO;
        s.refresh_in_background();
        let t0 = Instant::now();
        while s.pending() && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!s.pending());
        assert_eq!(s.latest().unwrap().turns, 4);
    }

    #[test]
    fn the_window_drops_the_oldest_turns() {
        let s = sim(65_536);
        record(&s, 1, MAX_SIM_TURNS + 1, 1, 0.0, 0.0);
        let r = s.recorded.lock().unwrap();
        assert_eq!(r.trace.turns.len(), MAX_SIM_TURNS - MAX_SIM_TURNS / 4 + 1);
        assert_eq!(r.trace.turns[0].turn, (MAX_SIM_TURNS / 4) as u64);
    }

    #[test]
    fn a_turn_larger_than_the_pool_gives_no_prediction_instead_of_a_panic() {
        let s = sim(64);
        record(&s, 1, 2, 100, 0.1, 0.1);
        assert!(s.refresh());
        assert!(s.latest().is_none());
        assert!(!s.pending(), "the failed replay counts as done");
        assert!(!s.refresh(), "and is not retried until new turns arrive");
    }
}
