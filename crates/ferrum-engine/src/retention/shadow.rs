//! Shadow mode: predict what `ttl` would deliver while the live policy stays `lru`.
//!
//! An operator evaluates `ttl` before switching by running `lru` with `shadow`. The
//! prediction is only useful if it is close to what `ttl` then delivers, so shadow mode
//! replays `ttl`'s decisions on *virtual* pins, which hold no block:
//! - the same TTL choice (the same predictor, fed the same gaps, at the KV pressure `ttl`
//!   would see: the live pressure plus the virtually pinned blocks);
//! - the same pin cap (`max_pinned_fraction`): a new virtual pin displaces the one soonest
//!   to expire (no-expiry pins last, then the oldest program), or is skipped if it cannot
//!   fit alone;
//! - the same reclaim: `ttl` drops pins when running work needs their blocks, so after every
//!   scheduling pass virtual pins are dropped, soonest to expire first, until the blocks
//!   running work holds plus the virtually pinned blocks fit the pool;
//! - the same expiry.
//!
//! A turn whose program is still virtually pinned when it arrives would, under `ttl`, keep
//! its pin (TTL lifted) until it is admitted, ahead of other waiting turns (program-level
//! FCFS), at the next running-slot opening; under `lru` it waits its turn in the FCFS queue,
//! often much longer. So the arrived virtual pin keeps holding the virtual cap (dropped last,
//! as `ttl` drops a waiting pin last) until the first running-slot opening that comes when it
//! is the oldest waiting virtually pinned program ([`Retention::shadow_slot_opened`]), or
//! until `lru` admits the turn, if sooner; then it is *settled*: counted as a pinned hit, and
//! off the cap. (Settling at arrival ignored `ttl`'s admission wait, during which finishing
//! turns' pins displace waiting ones: shadow over-predicted by up to 60% in replay; holding
//! until `lru`'s own admission under-predicted by 40-80%.) At the turn's first admission the
//! predicted cached tokens are what `lru` actually served (known then) or, if more, the
//! blocks of the turn's prompt that a settled virtual pin covered. Their sum over program
//! turns is [`RetentionCounters::shadow_hit_tokens`], comparable to the cached tokens `ttl`
//! serves
//! live; over [`RetentionCounters::shadow_prompt_tokens`] it is the predicted hit rate.

use std::time::{Duration, Instant};

use super::{KvRetention, Retention};

/// What `ttl` would hold pinned of a program's last turn (shadow mode).
#[derive(Debug)]
pub(super) struct VirtualPin {
    /// The pinned path's tokens (whole blocks).
    pub(super) tokens: Vec<u32>,
    /// Blocks of the path.
    pub(super) blocks: usize,
    /// When `ttl` would drop it (`None` once the program's next turn arrived).
    pub(super) expires: Option<Instant>,
    /// The program's next turn arrived and waits for `ttl`'s admission (a slot opening).
    pub(super) arrived: bool,
}

/// Tokens, in whole blocks of `block_size`, that `a` and `b` share from their start.
fn common_blocks(a: &[u32], b: &[u32], block_size: usize) -> usize {
    let bs = block_size.max(1);
    a.chunks_exact(bs)
        .zip(b.chunks_exact(bs))
        .take_while(|(x, y)| x == y)
        .count()
        * bs
}

impl Retention {
    fn shadow_on(&self) -> bool {
        self.cfg.policy == KvRetention::Lru && self.cfg.shadow
    }

    /// Shadow mode: blocks `ttl` would hold pinned now (0 in other modes).
    pub fn shadow_pinned_blocks(&self) -> usize {
        self.shadow_blocks
    }

    /// Virtually pins `path` (whole blocks of the finished turn) for `ttl`, under the cap.
    pub(super) fn shadow_pin(
        &mut self,
        program: &str,
        path: &[u32],
        block_size: usize,
        ttl: Duration,
        now: Instant,
        num_blocks: usize,
    ) {
        if let Some(old) = self.programs.get_mut(program).and_then(|p| p.shadow.take()) {
            self.shadow_blocks -= old.blocks; // a concurrent turn of the same program
        }
        let bs = block_size.max(1);
        let blocks = path.len() / bs;
        if ttl.is_zero() || blocks == 0 {
            return;
        }
        let cap = self.cap(num_blocks);
        while self.shadow_blocks + blocks > cap && self.shadow_drop_soonest() {
            self.counters.shadow_dropped += 1;
        }
        if self.shadow_blocks + blocks > cap {
            return;
        }
        if let Some(p) = self.programs.get_mut(program) {
            p.shadow = Some(VirtualPin {
                tokens: path[..blocks * bs].to_vec(),
                blocks,
                expires: Some(now + ttl),
                arrived: false,
            });
            self.shadow_blocks += blocks;
            self.counters.shadow_pins += 1;
        }
    }

    /// Drops the virtual pin `ttl` would drop first (as `drop_soonest`); returns whether
    /// there was one.
    fn shadow_drop_soonest(&mut self) -> bool {
        let victim = self
            .programs
            .iter()
            .filter_map(|(name, p)| p.shadow.as_ref().map(|v| (name, v, p.first_arrival)))
            .min_by_key(|(_, v, first)| (v.expires.is_none(), v.expires, *first))
            .map(|(name, _, _)| name.clone());
        let Some(name) = victim else { return false };
        if let Some(v) = self.programs.get_mut(&name).and_then(|p| p.shadow.take()) {
            self.shadow_blocks -= v.blocks;
        }
        true
    }

    /// Shadow mode: running work holds `running_blocks` of the pool's `num_blocks` after a
    /// scheduling pass. `ttl` would have reclaimed pins for it, so virtual pins are dropped,
    /// soonest to expire first, until both fit the pool.
    pub fn shadow_reclaim(&mut self, running_blocks: usize, num_blocks: usize) {
        if !self.shadow_on() {
            return;
        }
        while running_blocks + self.shadow_blocks > num_blocks && self.shadow_drop_soonest() {
            self.counters.shadow_dropped += 1;
        }
    }

    /// Shadow mode: a running request finished, so a running slot opened. `ttl` would give
    /// it to the oldest waiting program whose KV is pinned ([`Retention::preferred`]), so
    /// that program's arrived virtual pin is settled: its turn counts as a pinned hit at its
    /// first admission, and the pin stops holding the virtual cap. Call it before the
    /// finished turn's own (virtual) pin is taken, and once per running slot left free
    /// after a scheduling pass. Returns whether a pin was settled.
    pub fn shadow_slot_opened(&mut self) -> bool {
        if !self.shadow_on() {
            return false;
        }
        let next = self
            .programs
            .iter()
            .filter(|(_, p)| p.shadow.as_ref().is_some_and(|v| v.arrived))
            .min_by_key(|(_, p)| p.first_arrival)
            .map(|(name, _)| name.clone());
        let Some(p) = next.and_then(|name| self.programs.get_mut(&name)) else {
            return false;
        };
        if let Some(v) = p.shadow.take() {
            self.shadow_blocks -= v.blocks;
            p.shadow_found = Some(v.tokens);
        }
        true
    }

    /// Shadow mode: a turn of `program` is admitted for the first time with `hit` tokens
    /// served from the cache by `lru`; `lookup` is what of its prompt the cache may match,
    /// `prompt_tokens` its prompt length. Counts the tokens `ttl` would have served (the
    /// larger of `hit` and what the program's virtual pin covers) and drops the virtual pin
    /// (the turn's own KV holds the path from here, as under `ttl`).
    pub fn on_first_admit(
        &mut self,
        program: &str,
        lookup: &[u32],
        hit: usize,
        prompt_tokens: usize,
        block_size: usize,
    ) {
        if !self.shadow_on() {
            return;
        }
        let Some(p) = self.programs.get_mut(program) else {
            return;
        };
        if let Some(v) = p.shadow.take() {
            // `lru` admitted the turn before a slot opening settled its virtual pin.
            self.shadow_blocks -= v.blocks;
            p.shadow_found = Some(v.tokens);
        }
        let kept = p.shadow_found.take().map_or(0, |tokens| {
            self.counters.shadow_hits += 1;
            common_blocks(&tokens, lookup, block_size)
        });
        self.counters.shadow_hit_tokens += hit.max(kept) as u64;
        self.counters.shadow_prompt_tokens += prompt_tokens as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::{Clock, RetentionConfig};

    /// Shadow mode with a 20-block cap (half of a 40-block pool) and a manual clock.
    fn shadow() -> Retention {
        let mut r = Retention::new(RetentionConfig {
            policy: KvRetention::Lru,
            shadow: true,
            max_pinned_fraction: 0.5,
            ..RetentionConfig::default()
        });
        r.set_clock(Clock::manual());
        r
    }

    /// Turn 0 of `program` (no pin yet), then a virtual pin of `blocks` 4-token blocks.
    fn pinned_turn(r: &mut Retention, program: &str, arrival: u64, blocks: u32) -> Vec<u32> {
        r.on_arrive(program, arrival);
        r.on_first_admit(program, &[], 0, 4, 4);
        let path: Vec<u32> = (0..blocks * 4).map(|t| t + 1000 * arrival as u32).collect();
        let now = r.clock.now();
        r.shadow_pin(program, &path, 4, Duration::from_secs(10), now, 40);
        path
    }

    #[test]
    fn an_arrived_virtual_pin_holds_the_cap_until_a_slot_opens() {
        let mut r = shadow();
        let a = pinned_turn(&mut r, "a", 0, 8);
        r.on_arrive("a", 2); // every running slot is busy: under ttl, a waits pinned
        assert_eq!(r.shadow_pinned_blocks(), 8, "still held while a waits");
        // b's 13 blocks do not fit beside a's 8 under the 20-block cap: under ttl, b's pin
        // displaces a's waiting pin (the only other one).
        pinned_turn(&mut r, "b", 1, 13);
        assert_eq!(r.counters.shadow_dropped, 1);
        r.on_first_admit("a", &a, 0, a.len() + 4, 4);
        assert_eq!(r.counters.shadow_hits, 0, "a lost its pin while it waited");
        assert_eq!(r.counters.shadow_hit_tokens, 0);
    }

    #[test]
    fn a_slot_opening_settles_the_oldest_waiting_program_first() {
        let mut r = shadow();
        let a = pinned_turn(&mut r, "a", 0, 6);
        let b = pinned_turn(&mut r, "b", 1, 6);
        r.on_arrive("b", 3);
        r.on_arrive("a", 4);
        assert!(
            r.shadow_slot_opened(),
            "a is the older program: ttl admits it first"
        );
        assert_eq!(r.shadow_pinned_blocks(), 6, "a settled, b still held");
        // c's 15 blocks displace b's waiting pin; a's settled hit is safe.
        pinned_turn(&mut r, "c", 2, 15);
        r.on_first_admit("a", &a, 0, a.len() + 4, 4);
        r.on_first_admit("b", &b, 0, b.len() + 4, 4);
        assert_eq!(r.counters.shadow_hits, 1);
        assert_eq!(r.counters.shadow_hit_tokens, a.len() as u64);
    }

    #[test]
    fn common_blocks_counts_whole_matching_blocks_only() {
        let a = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(
            common_blocks(&a, &a, 4),
            8,
            "the partial third block never counts"
        );
        assert_eq!(common_blocks(&a, &[1, 2, 3, 4, 5, 0, 7, 8], 4), 4);
        assert_eq!(common_blocks(&a, &[1, 2, 3], 4), 0);
        assert_eq!(common_blocks(&[], &a, 4), 0);
    }
}
