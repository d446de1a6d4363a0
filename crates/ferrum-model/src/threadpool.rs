//! A persistent thread pool with a cheap spin barrier, for the forward pass.
//!
//! One forward step runs a few hundred small parallel sections (each matmul, attention,
//! norm). Spawning threads, or going through a general-purpose work-stealing pool, per section
//! costs more than the section itself at this model size, so the pool keeps its workers hot:
//! they spin on a generation counter for a short while, then sleep on a condition variable so
//! an idle server burns no CPU. Written by hand because this dispatch is on the hot path.
//!
//! Usage: `pool.run(|tid, n| ...)` calls the closure once on every thread (the caller is thread
//! 0) and returns when all have finished; the closure splits its work by `tid` out of `n`.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job = dyn Fn(usize, usize) + Sync;

struct Shared {
    /// Incremented once per `run`; workers wait for it to change.
    generation: AtomicUsize,
    /// Workers still running the current job.
    pending: AtomicUsize,
    /// Points at a `&Job` on the stack of `run`, valid while `pending > 0`.
    job: AtomicPtr<()>,
    sleep_lock: Mutex<()>,
    wake: Condvar,
    /// Workers asleep (or about to be) on `wake`; `run` takes the lock and notifies only
    /// when there are some, so a step's hundreds of sections cost no syscall while the
    /// workers spin.
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    /// Set if a job panicked on a worker, so the caller can re-raise it.
    panicked: AtomicBool,
}

/// A fixed set of worker threads that execute one parallel section at a time.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    /// Serializes `run` calls from different threads; the pool runs one section at a time.
    run_lock: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ThreadPool({} threads)", self.n_threads)
    }
}

/// How long a worker spins before sleeping; long enough to bridge the gaps between sections of
/// one forward step, short enough that an idle pool goes quiet.
const SPIN: Duration = Duration::from_millis(2);

/// Busy-wait iterations before a waiting thread starts yielding its core: enough to catch a
/// section that ends within a few microseconds, few enough that an oversubscribed machine
/// (other processes on the cores) does not starve the thread being waited for.
const SPIN_BEFORE_YIELD: u32 = 2000;

impl ThreadPool {
    /// A pool of `n_threads` threads in all, the calling thread included (so `n_threads - 1`
    /// workers are spawned). `0` means one per available core.
    pub fn new(n_threads: usize) -> Self {
        let n_threads = if n_threads == 0 {
            default_threads()
        } else {
            n_threads
        };
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        });
        let workers = (1..n_threads)
            .map(|tid| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("ferrum-worker-{tid}"))
                    .spawn(move || worker_loop(shared, tid, n_threads))
                    .expect("spawning a pool thread: programming error or resource exhaustion")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            n_threads,
            run_lock: Mutex::new(()),
        }
    }

    /// Number of threads, the caller included.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(tid, n_threads)` on every thread and waits for all of them.
    pub fn run<F: Fn(usize, usize) + Sync>(&self, f: F) {
        if self.n_threads == 1 {
            f(0, 1);
            return;
        }
        let _guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let job: &(dyn Fn(usize, usize) + Sync) = &f;
        // Workers read the job through this thin pointer to the fat reference. This function
        // does not return before every worker is done with it (`pending` reaches zero below).
        let job_ref = &job;
        self.shared
            .job
            .store(job_ref as *const _ as *mut (), Ordering::Relaxed);
        self.shared
            .pending
            .store(self.n_threads - 1, Ordering::Relaxed);
        // SeqCst pairs with the worker's (sleepers += 1, then read generation): either this
        // load sees the sleeper, or that worker sees the new generation and does not sleep.
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        if self.shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = self
                .shared
                .sleep_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        let caller =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0, self.n_threads)));
        let mut spins = 0u32;
        while self.shared.pending.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < SPIN_BEFORE_YIELD {
                std::hint::spin_loop();
            } else {
                // Another process may hold the core a worker needs: give it up.
                std::thread::yield_now();
            }
        }
        self.shared
            .job
            .store(std::ptr::null_mut(), Ordering::Relaxed);
        if let Err(p) = caller {
            std::panic::resume_unwind(p);
        }
        if self.shared.panicked.swap(false, Ordering::Relaxed) {
            panic!("a thread-pool worker panicked in a parallel section: programming error");
        }
    }
}

fn worker_loop(shared: Arc<Shared>, tid: usize, n: usize) {
    let mut seen = 0usize;
    loop {
        // Spin, then sleep, until a new generation (or shutdown) arrives.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let g = shared.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if shared.shutdown.load(Ordering::Relaxed) {
                return;
            }
            spins += 1;
            if spins >= SPIN_BEFORE_YIELD {
                std::thread::yield_now();
            }
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                let guard = shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
                shared.sleepers.fetch_add(1, Ordering::SeqCst);
                if shared.generation.load(Ordering::SeqCst) == seen
                    && !shared.shutdown.load(Ordering::Relaxed)
                {
                    let _g = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                shared.sleepers.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            std::hint::spin_loop();
        }
        let ptr = shared.job.load(Ordering::Relaxed) as *const &Job;
        // SAFETY: `run` stored this pointer before bumping the generation (Release/Acquire
        // orders it) and keeps both the reference and the closure alive until `pending` is 0.
        let job: &Job = unsafe { *ptr };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(tid, n))).is_err() {
            shared.panicked.store(true, Ordering::Relaxed);
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        {
            let _l = self
                .shared
                .sleep_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.shutdown.store(true, Ordering::Relaxed);
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// One thread per available core (the forward pass is bound by memory and SIMD units, so
/// oversubscription only adds contention).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The `tid`-th of `n` contiguous, nearly equal parts of `0..len`, rounded to multiples of
/// `align` (the last part takes the remainder).
pub fn split_range(len: usize, tid: usize, n: usize, align: usize) -> std::ops::Range<usize> {
    let units = len.div_ceil(align);
    let per = units / n;
    let extra = units % n;
    let start_u = tid * per + tid.min(extra);
    let end_u = start_u + per + usize::from(tid < extra);
    (start_u * align).min(len)..(end_u * align).min(len)
}

/// Hands out `0..len` to whichever thread asks next, in chunks that shrink as the work runs
/// out (guided self-scheduling: each claim takes about half of a fair share of what is left,
/// in multiples of `align`). A static split makes every section wait for its slowest thread;
/// with 2 threads on a shared machine, or rows of uneven cost, that wait was ~8% of a prompt's
/// time. Which thread computes a row never changes the row's result.
#[derive(Debug)]
pub struct WorkSplitter {
    next: AtomicUsize,
    len: usize,
    align: usize,
    threads: usize,
}

impl WorkSplitter {
    /// A splitter of `0..len` for `threads` threads, in units of `align` items.
    pub fn new(len: usize, align: usize, threads: usize) -> Self {
        WorkSplitter {
            next: AtomicUsize::new(0),
            len,
            align: align.max(1),
            threads: threads.max(1),
        }
    }

    /// The next chunk, or `None` when everything has been handed out.
    pub fn claim(&self) -> Option<std::ops::Range<usize>> {
        let mut start = self.next.load(Ordering::Relaxed);
        loop {
            if start >= self.len {
                return None;
            }
            let units_left = (self.len - start).div_ceil(self.align);
            let units = (units_left / (2 * self.threads)).max(1);
            let end = (start + units * self.align).min(self.len);
            match self
                .next
                .compare_exchange_weak(start, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(start..end),
                Err(now) => start = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_splitter_hands_out_everything_once_in_shrinking_aligned_chunks() {
        for (len, align, threads) in [
            (0, 32, 2),
            (1, 32, 2),
            (576, 32, 2),
            (49152, 32, 4),
            (7, 1, 3),
        ] {
            let w = WorkSplitter::new(len, align, threads);
            let mut next = 0;
            let mut last_size = usize::MAX;
            while let Some(r) = w.claim() {
                assert_eq!(r.start, next);
                assert!(r.end > r.start && r.end <= len);
                assert!(r.start % align == 0);
                assert!(r.len() <= last_size.max(align), "{r:?} after {last_size}");
                last_size = r.len();
                next = r.end;
            }
            assert_eq!(next, len);
        }
        // Shared by a pool, every item is claimed by exactly one thread.
        let pool = ThreadPool::new(3);
        let w = WorkSplitter::new(10_000, 8, 3);
        let hits: Vec<AtomicUsize> = (0..10_000).map(|_| AtomicUsize::new(0)).collect();
        pool.run(|_, _| {
            while let Some(r) = w.claim() {
                for i in r {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn every_thread_runs_each_section_once() {
        let pool = ThreadPool::new(3);
        for _ in 0..1000 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            pool.run(|tid, n| {
                assert_eq!(n, 3);
                hits[tid].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn sections_see_borrowed_data_and_results_are_complete() {
        let pool = ThreadPool::new(2);
        let input: Vec<u64> = (0..10_001).collect();
        let sums: Vec<AtomicUsize> = (0..2).map(|_| AtomicUsize::new(0)).collect();
        pool.run(|tid, n| {
            let r = split_range(input.len(), tid, n, 16);
            let s: u64 = input[r].iter().sum();
            sums[tid].store(s as usize, Ordering::Relaxed);
        });
        let total: usize = sums.iter().map(|s| s.load(Ordering::Relaxed)).sum();
        assert_eq!(total as u64, input.iter().sum::<u64>());
    }

    #[test]
    fn pool_wakes_after_sleeping() {
        let pool = ThreadPool::new(2);
        std::thread::sleep(Duration::from_millis(20));
        let count = AtomicUsize::new(0);
        pool.run(|_, _| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn split_range_covers_everything_once() {
        for len in [0, 1, 5, 16, 17, 100, 576, 49152] {
            for n in 1..5 {
                let mut next = 0;
                for tid in 0..n {
                    let r = split_range(len, tid, n, 4);
                    assert_eq!(r.start, next);
                    assert!(r.start.is_multiple_of(4) || r.start == len);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }
}
