//! Matrix products of the forward pass, split across the pool by weight rows.
//!
//! Several products that read the same activations (Q, K and V; gate and up) can go out as
//! one pool dispatch over their concatenated rows ([`matmul_fused`]): a decode step is a few
//! hundred dispatches, and each one waits for its slowest thread.

use crate::quant::Kernels;
use crate::threadpool::{split_range, ThreadPool, WorkSplitter};

use super::{QMatrix, SharedOut};

/// Granularity of the row split between threads.
const TILE_ROWS: usize = 32;
/// Most weight rows per kernel call (the chunk is re-read from cache for each column tile).
const CALL_ROWS: usize = 1024;
// Thread shares and kernel calls must cut interleaved Q4_1 matrices at whole groups.
const _: () = assert!(
    TILE_ROWS.is_multiple_of(crate::quant::GROUP_ROWS)
        && CALL_ROWS.is_multiple_of(crate::quant::GROUP_ROWS)
);
/// Activation rows from which a matmul's weight rows are claimed dynamically
/// ([`WorkSplitter`]) rather than split in fixed halves. This machine's two vCPUs run at
/// different, changing speeds (25% apart at times), and at 16 rows the claims paid (batched
/// decode +5% median of 4 A/B pairs); at one row, where the weights stream from memory, the
/// claims cost more than they balanced.
const DYNAMIC_SPLIT_COLS: usize = 8;
/// Activation columns per matmul tile.
const TILE_COLS: usize = 64;

/// Every product `out = W . x` of one input `x` (rows of `n` floats): the activations are
/// quantized once and the products go out as one [`matmul_fused`] dispatch when the weights
/// share a type (always, in the default model), else one product at a time.
pub(super) fn project<const N: usize>(
    pool: &ThreadPool,
    k: &Kernels,
    products: [(&QMatrix, &mut [f32]); N],
    x: &[f32],
    n: usize,
    acts: &mut Vec<u8>,
) {
    let t = x.len() / n;
    let ty = products[0].0.dtype;
    // Threads split the concatenated rows in multiples of TILE_ROWS, so a product after
    // another whose rows are not whole tiles would be cut mid-group (`quant::Q4_1x8`).
    let aligned = products[..N - 1]
        .iter()
        .all(|(w, _)| w.rows.is_multiple_of(TILE_ROWS));
    if aligned && products.iter().all(|(w, _)| w.dtype == ty) {
        let a = super::quantize_rows(pool, ty, x, n, acts);
        matmul_fused(pool, k, products, a, t);
    } else {
        for (w, out) in products {
            let a = super::quantize_rows(pool, w.dtype, x, n, acts);
            matmul_fused(pool, k, [(w, out)], a, t);
        }
    }
}

/// For each `(W, out)`: `out[c][r] = W[r] . act[c]` for `t` activation rows, all in one
/// dispatch whose weight rows (the products' rows, concatenated) are split across threads
/// (from [`DYNAMIC_SPLIT_COLS`] rows on, claimed from a [`WorkSplitter`], so a slower thread
/// takes fewer weight rows). Each share goes to the kernels up to [`CALL_ROWS`] rows and
/// [`TILE_COLS`] columns per call (the kernels block for cache themselves), so per-call
/// set-up such as widening activation scales is paid once per call, not once per register
/// tile. Which thread computes a row never changes its bits.
///
/// Panics (programming error) when an `out` is shorter than `t` rows of its `W`.
fn matmul_fused<const N: usize>(
    pool: &ThreadPool,
    k: &Kernels,
    products: [(&QMatrix, &mut [f32]); N],
    acts: &[u8],
    t: usize,
) {
    let a_rb = acts.len() / t.max(1);
    let parts = products.map(|(w, out)| {
        assert!(
            out.len() >= t * w.rows,
            "programming error: matmul output too short"
        );
        (w, SharedOut(out.as_mut_ptr()))
    });
    let total: usize = parts.iter().map(|(w, _)| w.rows).sum();
    // Rows `my` of the concatenation, cut at the products' boundaries.
    let run = |my: std::ops::Range<usize>| {
        let mut base = 0;
        for (w, out) in &parts {
            let (lo, hi) = (my.start.max(base), my.end.min(base + w.rows));
            if lo < hi {
                matmul_rows(k, w, acts, a_rb, t, lo - base..hi - base, out);
            }
            base += w.rows;
        }
    };
    if t < DYNAMIC_SPLIT_COLS {
        // A few rows stream the weights once (memory-bound): a fixed half each, no claims.
        pool.run(|tid, nt| run(split_range(total, tid, nt, TILE_ROWS)));
        return;
    }
    let work = WorkSplitter::new(total, TILE_ROWS, pool.n_threads());
    pool.run(|_, _| {
        while let Some(my) = work.claim() {
            run(my);
        }
    });
}

/// Rows `my` of one product of [`matmul_fused`], every column.
fn matmul_rows(
    k: &Kernels,
    w: &QMatrix,
    acts: &[u8],
    a_rb: usize,
    t: usize,
    my: std::ops::Range<usize>,
    outp: &SharedOut,
) {
    let rows = w.rows;
    let mut r0 = my.start;
    while r0 < my.end {
        let nr = CALL_ROWS.min(my.end - r0);
        let mut c0 = 0;
        while c0 < t {
            let nc = TILE_COLS.min(t - c0);
            let a = &acts[c0 * a_rb..(c0 + nc) * a_rb];
            // SAFETY: rows r0..r0+nr of every column were claimed by this thread alone,
            // and `out` holds `t` columns of `rows` floats.
            unsafe {
                let out = outp.ptr().add(c0 * rows + r0);
                match &w.packed {
                    Some(p) => k.matmul_q4_1x8_raw(p, r0..r0 + nr, a, nc, out, rows),
                    None => {
                        let wb = &w.bytes()[r0 * w.row_bytes..(r0 + nr) * w.row_bytes];
                        k.matmul_tile_raw(w.dtype, w.cols, wb, nr, a, nc, out, rows)
                    }
                }
            }
            c0 += nc;
        }
        r0 += nr;
    }
}
