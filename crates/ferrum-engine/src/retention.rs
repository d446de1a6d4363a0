//! KV retention for agent programs: keep a finished turn's KV pinned while its tool runs.
//!
//! A request may name its *program* (an agent session) and the *tool* the program waits on
//! after this turn. When such a turn finishes, its computed blocks are already in the radix
//! cache (the scheduler publishes them); under [`KvRetention::Ttl`] the program's path is
//! then *pinned* ([`crate::radix::RadixCache::pin`]) until a TTL chosen by the
//! [`GapPredictor`] for that tool at the current KV pressure, under [`KvRetention::PinAll`]
//! until the program returns or is released, and under [`KvRetention::Lru`] not at all
//! (today's plain LRU; with `shadow` the predictor still runs and counts what `ttl` would
//! have saved).
//!
//! Rules, all enforced here and by the scheduler's calls:
//! - Pinned blocks are never evicted by normal LRU eviction; at most
//!   `max_pinned_fraction` of the pool is pinned (older pins, soonest to expire first, make
//!   room for a new one; a pin that cannot fit alone is skipped).
//! - Pinning never stalls running work: when the scheduler needs blocks and no unpinned
//!   cached block is left to evict, it calls [`Retention::reclaim_one`], which drops the pin
//!   soonest to expire, before it would preempt anything.
//! - Expired pins are dropped by [`Retention::expire`], which the scheduler calls at the
//!   start of every step, so a pin outlives its TTL by at most one step. There each pin's
//!   TTL is also re-chosen at the current pressure, and shortened if that gives less.
//! - A turn that arrives while its program is pinned keeps the pin, TTL lifted, until it is
//!   admitted (a returning turn is not penalized for waiting behind a long step); admission
//!   releases the pin (the turn's own lock then holds the path), and waiting turns of pinned programs are admitted first, oldest program first
//!   ([`Retention::preferred`]).
//!
//! Shadow mode (`lru` with `shadow`) runs `ttl`'s decisions on *virtual* pins (no block is
//! held) and predicts the cache hits `ttl` would deliver; see the `shadow` submodule.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::predictor::{GapPredictor, PredictorConfig};
use crate::radix::{NodeId, RadixCache};

/// Which blocks outlive the request that computed them (`--kv-retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvRetention {
    /// No pins: the radix cache's LRU eviction alone (the default).
    #[default]
    Lru,
    /// Pin a program's KV for a predicted TTL after each turn.
    Ttl,
    /// Pin a program's KV until it returns, is released, or memory is needed.
    PinAll,
}

impl FromStr for KvRetention {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lru" => Ok(KvRetention::Lru),
            "ttl" => Ok(KvRetention::Ttl),
            "pin-all" => Ok(KvRetention::PinAll),
            _ => Err(format!("unknown kv retention {s:?} (lru, ttl, pin-all)")),
        }
    }
}

impl KvRetention {
    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            KvRetention::Lru => "lru",
            KvRetention::Ttl => "ttl",
            KvRetention::PinAll => "pin-all",
        }
    }
}

/// Retention settings (part of [`crate::EngineConfig`]).
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// The policy.
    pub policy: KvRetention,
    /// Most of the pool (0..=1) pinned at once.
    pub max_pinned_fraction: f64,
    /// With `Lru`, still predict TTLs and count the hits `ttl` would have had.
    pub shadow: bool,
    /// Gap predictor settings.
    pub predictor: PredictorConfig,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            policy: KvRetention::Lru,
            max_pinned_fraction: 0.5,
            shadow: false,
            predictor: PredictorConfig::default(),
        }
    }
}

/// Time source of the retention module: the system clock, or a manual one for tests and
/// simulations (clones share the time).
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// `Instant::now()`.
    #[default]
    System,
    /// A time moved only by [`Clock::advance`].
    Manual(Arc<Mutex<Instant>>),
}

impl Clock {
    /// A manual clock starting now.
    pub fn manual() -> Self {
        Clock::Manual(Arc::new(Mutex::new(Instant::now())))
    }

    /// The current time.
    pub fn now(&self) -> Instant {
        match self {
            Clock::System => Instant::now(),
            Clock::Manual(t) => *t.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Moves a manual clock forward (no effect on the system clock).
    pub fn advance(&self, d: Duration) {
        if let Clock::Manual(t) = self {
            *t.lock().unwrap_or_else(|e| e.into_inner()) += d;
        }
    }
}

/// Lifetime counters of the retention module, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionCounters {
    /// Pins taken.
    pub pins: u64,
    /// Pins not taken: the TTL was zero or the pin could not fit the cap.
    pub skipped: u64,
    /// Pins dropped at their TTL.
    pub expired: u64,
    /// Pins dropped because blocks were needed.
    pub reclaimed: u64,
    /// Pins dropped to make room under the cap for a newer one.
    pub displaced: u64,
    /// Pins dropped by an explicit program release.
    pub released: u64,
    /// Turns admitted while their program was pinned.
    pub returns_pinned: u64,
    /// Turns that arrived after their program's pin was gone.
    pub returns_unpinned: u64,
    /// Sum over time of pinned blocks, in block-microseconds.
    pub pinned_block_us: u64,
    /// Shadow mode: turns admitted while `ttl` would still have held their program pinned.
    pub shadow_hits: u64,
    /// Shadow mode: prompt tokens of program turns `ttl` would have served from the cache
    /// (what `lru` served, or more where a virtual pin was still alive at admission).
    pub shadow_hit_tokens: u64,
    /// Shadow mode: prompt tokens of program turns (the denominator of the predicted hit
    /// rate `shadow_hit_tokens / shadow_prompt_tokens`).
    pub shadow_prompt_tokens: u64,
    /// Shadow mode: virtual pins taken.
    pub shadow_pins: u64,
    /// Shadow mode: virtual pins dropped before their TTL, by the pin cap or because running
    /// work needed the blocks.
    pub shadow_dropped: u64,
}

#[derive(Debug)]
struct Pin {
    node: NodeId,
    expires: Option<Instant>,
}

#[derive(Debug)]
struct Program {
    first_arrival: u64,
    last_finish: Option<Instant>,
    tool: Option<String>,
    pin: Option<Pin>,
    /// Shadow mode: what `ttl` would hold pinned of the last turn.
    shadow: Option<shadow::VirtualPin>,
    /// Shadow mode: the path a waiting turn found virtually pinned when it arrived.
    shadow_found: Option<Vec<u32>>,
}

/// Per-program pins and the gap predictor; see the module docs.
#[derive(Debug)]
pub struct Retention {
    cfg: RetentionConfig,
    clock: Clock,
    predictor: GapPredictor,
    programs: HashMap<String, Program>,
    counters: RetentionCounters,
    last_tick: Option<Instant>,
    /// Shadow mode: blocks held by virtual pins.
    shadow_blocks: usize,
}

impl Retention {
    /// No pins yet.
    pub fn new(cfg: RetentionConfig) -> Self {
        Retention {
            predictor: GapPredictor::new(cfg.predictor.clone()),
            cfg,
            clock: Clock::System,
            programs: HashMap::new(),
            counters: RetentionCounters::default(),
            last_tick: None,
            shadow_blocks: 0,
        }
    }

    /// Replaces the time source (tests, simulations).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
        self.last_tick = None;
    }

    /// The time source.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The active policy.
    pub fn policy(&self) -> KvRetention {
        self.cfg.policy
    }

    /// Lifetime counters.
    pub fn counters(&self) -> RetentionCounters {
        self.counters
    }

    /// The gap predictor.
    pub fn predictor(&self) -> &GapPredictor {
        &self.predictor
    }

    /// Programs currently holding a pin.
    pub fn pinned_programs(&self) -> usize {
        self.programs.values().filter(|p| p.pin.is_some()).count()
    }

    fn cap(&self, num_blocks: usize) -> usize {
        let f = self.cfg.max_pinned_fraction;
        let f = if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        };
        (f * num_blocks as f64).floor() as usize
    }

    /// A turn of `program` arrived (arrival order `arrival`): records its gap for the
    /// predictor and, in shadow mode, whether `ttl` would still have held its KV.
    pub fn on_arrive(&mut self, program: &str, arrival: u64) {
        let now = self.clock.now();
        let p = self
            .programs
            .entry(program.to_string())
            .or_insert_with(|| Program {
                first_arrival: arrival,
                last_finish: None,
                tool: None,
                pin: None,
                shadow: None,
                shadow_found: None,
            });
        if let Some(pin) = p.pin.as_mut() {
            // Returned within its TTL: hold the KV until the turn is admitted (it may wait
            // behind a long step), still reclaimable if running work needs the blocks.
            pin.expires = None;
        }
        if let Some(end) = p.last_finish.take() {
            self.predictor
                .observe(p.tool.as_deref(), now.saturating_duration_since(end));
            if p.pin.is_none() && self.cfg.policy != KvRetention::Lru {
                self.counters.returns_unpinned += 1;
            }
        }
        if let Some(v) = p.shadow.as_mut() {
            // Under `ttl` this turn would keep its pin, TTL lifted, until admitted ahead of
            // other waiting turns at the next running-slot opening: the virtual pin holds
            // the cap until then (see `shadow_slot_opened`).
            v.expires = None;
            v.arrived = true;
        }
    }

    /// A turn of `program` was admitted: its own lock now holds the cached path, so the
    /// program's pin is released.
    pub fn on_admit(&mut self, program: &str, cache: &mut RadixCache) {
        if let Some(pin) = self.programs.get_mut(program).and_then(|p| p.pin.take()) {
            cache.unpin(pin.node);
            self.counters.returns_pinned += 1;
        }
    }

    /// A turn of `program` finished with its cached path ending at `path.0` (`path.1` tokens,
    /// the first of `tokens`); it waits on `tool` next. Pins the path per the policy (in
    /// shadow mode, virtually). `pressure` is the share of the pool running and waiting work
    /// needs (0..=1), `num_blocks` the pool size.
    #[allow(clippy::too_many_arguments)]
    pub fn on_finish(
        &mut self,
        program: &str,
        tool: Option<&str>,
        path: Option<(NodeId, usize)>,
        tokens: &[u32],
        pressure: f64,
        cache: &mut RadixCache,
        num_blocks: usize,
    ) {
        let now = self.clock.now();
        let (node, path_tokens) = (path.map(|p| p.0), path.map_or(0, |p| p.1));
        let ttl = match self.cfg.policy {
            KvRetention::PinAll => None,
            _ => Some(self.predictor.ttl(tool, pressure)),
        };
        let Some(p) = self.programs.get_mut(program) else {
            return; // released while its turn ran
        };
        p.last_finish = Some(now);
        p.tool = tool.map(str::to_string);
        if let Some(old) = p.pin.take() {
            cache.unpin(old.node); // a concurrent turn of the same program pinned before
        }
        if self.cfg.policy == KvRetention::Lru {
            if self.cfg.shadow {
                let ttl = ttl.unwrap_or_default();
                tracing::info!(
                    program,
                    tool,
                    ttl_s = ttl.as_secs_f64(),
                    tokens = path_tokens,
                    "shadow pin"
                );
                let path = &tokens[..path_tokens.min(tokens.len())];
                self.shadow_pin(program, path, cache.block_size(), ttl, now, num_blocks);
            }
            return;
        }
        let Some(node) = node else {
            self.counters.skipped += 1;
            return;
        };
        if ttl == Some(Duration::ZERO) {
            self.counters.skipped += 1;
            return;
        }
        let cap = self.cap(num_blocks);
        while cache.pinned_blocks() + cache.pin_cost(node) > cap {
            if !self.drop_soonest(cache, Some(program)) {
                break;
            }
            self.counters.displaced += 1;
        }
        if cache.pinned_blocks() + cache.pin_cost(node) > cap {
            self.counters.skipped += 1;
            return;
        }
        cache.pin(node);
        self.counters.pins += 1;
        if let Some(p) = self.programs.get_mut(program) {
            p.pin = Some(Pin {
                node,
                expires: ttl.map(|t| now + t),
            });
        }
    }

    /// Drops the pin soonest to expire (no-expiry pins last, then oldest program); returns
    /// whether there was one.
    fn drop_soonest(&mut self, cache: &mut RadixCache, except: Option<&str>) -> bool {
        let victim = self
            .programs
            .iter()
            .filter(|(name, p)| p.pin.is_some() && Some(name.as_str()) != except)
            .min_by_key(|(_, p)| {
                let pin = p.pin.as_ref().map(|x| x.expires);
                (pin.flatten().is_none(), pin.flatten(), p.first_arrival)
            })
            .map(|(name, _)| name.clone());
        let Some(name) = victim else { return false };
        if let Some(pin) = self.programs.get_mut(&name).and_then(|p| p.pin.take()) {
            cache.unpin(pin.node);
        }
        true
    }

    /// Blocks are needed and nothing unpinned is evictable: drops one pin. Returns whether
    /// one was dropped (if not, the caller must preempt or wait).
    pub fn reclaim_one(&mut self, cache: &mut RadixCache) -> bool {
        let dropped = self.drop_soonest(cache, None);
        if dropped {
            self.counters.reclaimed += 1;
        }
        dropped
    }

    /// Drops expired pins and accounts pinned block-seconds; call once per step with the
    /// current KV `pressure` (as for [`Retention::on_finish`]). A pin's TTL was chosen for
    /// the pressure at its turn's end; it is re-chosen at the current pressure and shortened
    /// if that gives less (a long-tool pin taken while the pool was idle must not outlive
    /// its worth once the pool fills, holding the cap against short-tool pins).
    pub fn expire(&mut self, cache: &mut RadixCache, pressure: f64) {
        let now = self.clock.now();
        if let Some(last) = self.last_tick {
            let dt = now.saturating_duration_since(last).as_micros();
            let dt = u64::try_from(dt).unwrap_or(u64::MAX);
            self.counters.pinned_block_us = self
                .counters
                .pinned_block_us
                .saturating_add(dt.saturating_mul(cache.pinned_blocks() as u64));
        }
        self.last_tick = Some(now);
        if self.cfg.policy == KvRetention::Lru && !self.cfg.shadow {
            return;
        }
        let horizon = self.cfg.predictor.max_ttl * 2;
        let predictor = &self.predictor;
        let mut ttls: HashMap<Option<String>, Duration> = HashMap::new();
        self.programs.retain(|_, p| {
            let waiting = p.pin.as_ref().is_some_and(|x| x.expires.is_some())
                || p.shadow.as_ref().is_some_and(|v| v.expires.is_some());
            if let (true, Some(end)) = (waiting, p.last_finish) {
                let ttl = *ttls
                    .entry(p.tool.clone())
                    .or_insert_with(|| predictor.ttl(p.tool.as_deref(), pressure));
                let cut = |e: &mut Option<Instant>| {
                    if let Some(e) = e.as_mut() {
                        *e = (*e).min(end + ttl);
                    }
                };
                if let Some(pin) = p.pin.as_mut() {
                    cut(&mut pin.expires);
                }
                if let Some(v) = p.shadow.as_mut() {
                    cut(&mut v.expires);
                }
            }
            if let Some(pin) = p.pin.take_if(|pin| pin.expires.is_some_and(|e| e <= now)) {
                cache.unpin(pin.node);
                self.counters.expired += 1;
            }
            if let Some(v) = p.shadow.take_if(|v| v.expires.is_some_and(|e| e <= now)) {
                self.shadow_blocks -= v.blocks;
            }
            // Forget programs idle for long (an agent that never returns).
            p.pin.is_some()
                || p.shadow.is_some()
                || p.shadow_found.is_some()
                || p.last_finish
                    .is_none_or(|t| now.saturating_duration_since(t) < horizon)
        });
    }

    /// Ends `program`: drops its pin and forgets it. Returns whether it was known.
    pub fn release_program(&mut self, program: &str, cache: &mut RadixCache) -> bool {
        let Some(p) = self.programs.remove(program) else {
            return false;
        };
        if let Some(pin) = p.pin {
            cache.unpin(pin.node);
            self.counters.released += 1;
        }
        if let Some(v) = p.shadow {
            self.shadow_blocks -= v.blocks;
        }
        true
    }

    /// Of waiting turns' programs, the index of the one to admit first: a program whose KV
    /// is pinned, oldest program first; `None` if no waiting turn's program is pinned.
    pub fn preferred(&self, programs: &[Option<&str>]) -> Option<usize> {
        programs
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let p = self.programs.get((*p)?)?;
                p.pin.as_ref().map(|_| (p.first_arrival, i))
            })
            .min()
            .map(|(_, i)| i)
    }
}

mod shadow;
#[cfg(test)]
mod tests;
