//! Scheduler unit tests: shared-prefix deferral.

use super::*;
use crate::policy::Fcfs;

fn sched(max_defer_steps: u32) -> Scheduler {
    let cfg = SchedulerConfig {
        block_size: 4,
        num_blocks: 64,
        max_batched_tokens: 64,
        max_running: 8,
        enable_prefix_cache: true,
        defer_shared_prefix: true,
        max_defer_steps,
    };
    Scheduler::new(cfg, Box::new(Fcfs))
}

fn ids(s: &Schedule) -> Vec<RequestId> {
    s.chunks.iter().map(|c| c.id).collect()
}

#[test]
fn follower_waits_for_in_flight_prefix_at_most_max_defer_steps() {
    let mut s = sched(3);
    let shared: Vec<u32> = (0..16).collect();
    let (a, b, c) = (RequestId(0), RequestId(1), RequestId(2));
    s.add(
        a,
        [shared.clone(), vec![90, 91]].concat(),
        SeqMeta::default(),
    );
    s.add(
        b,
        [shared.clone(), vec![92, 93]].concat(),
        SeqMeta::default(),
    );
    s.add(c, vec![50, 51, 52, 53, 54, 55], SeqMeta::default());
    // B shares A's uncomputed prefix and is held back; C (unrelated) is admitted past it.
    let plan = s.schedule();
    assert_eq!(ids(&plan), vec![a, c]);
    // The producer never commits (as if its forward pass kept being retried): B is
    // passed over three steps in all, then admitted without the cache.
    for _ in 0..2 {
        assert_eq!(ids(&s.schedule()), vec![a, c]);
    }
    let plan = s.schedule();
    assert_eq!(ids(&plan), vec![a, c, b]);
    assert_eq!(s.seq(b).map(|x| (x.deferred, x.hit)), Some((3, 0)));
    assert_eq!(s.counters().deferrals, 3);
    s.check_invariants().unwrap();
}

#[test]
fn follower_admitted_after_commit_hits_the_published_prefix() {
    let mut s = sched(8);
    let shared: Vec<u32> = (0..16).collect();
    let (a, b) = (RequestId(0), RequestId(1));
    s.add(
        a,
        [shared.clone(), vec![90, 91]].concat(),
        SeqMeta::default(),
    );
    s.add(
        b,
        [shared.clone(), vec![92, 93]].concat(),
        SeqMeta::default(),
    );
    let plan = s.schedule();
    assert_eq!(ids(&plan), vec![a]);
    s.commit(&plan.chunks);
    s.check_invariants().unwrap();
    // A's four full blocks are cached and pinned while A runs.
    assert_eq!(s.cache().cached_blocks(), 4);
    assert_eq!(s.cache().evictable_blocks(), 0);
    s.append_token(a, 7);
    let plan = s.schedule();
    assert_eq!(ids(&plan), vec![a, b]);
    assert_eq!(plan.chunks[1].start, 16, "B computes only its own suffix");
    let (sa, sb) = (&s.seqs[&a], &s.seqs[&b]);
    assert_eq!(sa.blocks[..4], sb.blocks[..4], "B shares A's prefix blocks");
    s.commit(&plan.chunks);
    s.check_invariants().unwrap();
}
