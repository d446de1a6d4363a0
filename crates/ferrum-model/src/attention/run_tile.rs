//! Attention of a run's rows (a prompt chunk, or a speculative verification) over the
//! context that `paged_avx2::gather` converted to f32, several rows at a time, with AVX2 +
//! FMA.
//!
//! One row at a time, each row streams the whole converted context: K for its scores, V for
//! its values. A long prompt's context outgrows L2 (K and V in f32 take 512 B per position
//! and KV head, 1 MiB at 2,000 positions), so every row re-read it from L3, and attention
//! took ~37% of a 2,000-token prefill. Here the rows of a tile share every K and V load:
//!
//! - scores: 4 keys at a time for every row and query head of the tile (`dots4`), the keys
//!   staying in L1 across them;
//! - values: each slot's positions, 16 output dimensions at a time, for two rows and up to
//!   three heads together (15 of the 16 registers); a slot's probabilities are first copied
//!   position-major, so the inner loop reads them in order.
//!
//! Bits: each row's scores, softmax and value chains are those of the portable body, in the
//! same order. Row `r` of a tile sees `c0 + r` positions; the value chain of slot `s` takes
//! positions `s, s + slots, ...` below that. The positions below `c0` are shared by every row
//! of the tile; the few the longer rows see beyond it come last in their chains, so they are
//! added after the shared part, still in increasing order. Tests compare the results with
//! the portable body bit for bit.

use std::arch::x86_64::*;

use super::paged_avx2::{dots4, fold_slots};
use super::{grow, round_f16, simd, Arith, AttnScratch, ACCS, LANES};
use crate::quant::Kernels;

/// Rows attended together: the converted context is read from memory once per tile.
const TILE_ROWS: usize = 4;
/// Rows one value pass accumulates.
const PASS_ROWS: usize = 2;
/// Query heads one value pass accumulates.
const PASS_HEADS: usize = 3;
/// Output dimensions one value pass accumulates (two registers per row and head).
const PIECE: usize = 16;

/// Attends `rows` query rows at consecutive positions, row `i` over the first
/// `first_ctx + i` gathered positions; `q_row(i)` and `out_row(i)` give each row's `n_rep`
/// query heads and their outputs. Bitwise the portable body per row.
///
/// Safety: AVX2 + FMA + F16C; `hd` a multiple of 64; `s.kf` and `s.vf` hold at least
/// `first_ctx + rows - 1` gathered positions; every `q_row(i)` and `out_row(i)` has
/// `n_rep * hd` floats; `first_ctx >= 1`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn attend_rows<'a, 'b>(
    k: &Kernels,
    hd: usize,
    rows: usize,
    first_ctx: usize,
    q_row: impl Fn(usize) -> &'a [f32],
    mut out_row: impl FnMut(usize) -> &'b mut [f32],
    n_rep: usize,
    scale: f32,
    arith: Arith,
    s: &mut AttnScratch,
) {
    let nq = n_rep * hd;
    assert!(
        hd.is_multiple_of(64)
            && first_ctx >= 1
            && s.kf.len() >= (first_ctx + rows - 1) * hd
            && s.vf.len() >= (first_ctx + rows - 1) * hd,
        "programming error: attend_rows outside its shapes"
    );
    let mut i = 0;
    while i < rows {
        let tile = (rows - i).min(TILE_ROWS);
        grow(&mut s.q, tile * nq);
        for r in 0..tile {
            s.q[r * nq..(r + 1) * nq].copy_from_slice(&q_row(i + r)[..nq]);
        }
        let c0 = first_ctx + i;
        match hd {
            64 => attend_tile::<64>(k, hd, tile, n_rep, scale, arith, c0, s),
            128 => attend_tile::<128>(k, hd, tile, n_rep, scale, arith, c0, s),
            _ => attend_tile::<0>(k, hd, tile, n_rep, scale, arith, c0, s),
        }
        for r in 0..tile {
            out_row(i + r)[..nq].copy_from_slice(&s.tile_out[r * nq..(r + 1) * nq]);
        }
        i += tile;
    }
}

/// One tile: `rows` rows whose queries are in `s.q` (`[row][head][hd]`), row `r` over the
/// first `c0 + r` gathered positions, results to `s.tile_out` in the same layout. Head
/// size `HD` (0: `hd`, known only at run time; a constant lets the dots stay in registers).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_tile<const HD: usize>(
    k: &Kernels,
    hd: usize,
    rows: usize,
    n_rep: usize,
    scale: f32,
    arith: Arith,
    c0: usize,
    s: &mut AttnScratch,
) {
    let hd = if HD > 0 { HD } else { hd };
    // (row, head) pairs `x = r * n_rep + h`; each has a score row of `stride` floats.
    let heads = rows * n_rep;
    let stride = c0 + rows - 1;
    let ctx = |x: usize| c0 + x / n_rep;
    round_f16(k, &mut s.q[..heads * hd], &mut s.bits);
    grow(&mut s.scores, heads * stride);

    // Scores, 4 keys at a time for every (row, head). A row shorter than the tile's longest
    // also gets the scores of a few positions it does not see; they stay unused.
    let n4 = stride / 4 * 4;
    let (qp, sp) = (s.q.as_ptr(), s.scores.as_mut_ptr());
    for j in (0..n4).step_by(4) {
        let kp = s.kf.as_ptr().add(j * hd);
        for x in 0..heads {
            let d = dots4::<HD>(kp, hd, qp.add(x * hd), arith);
            _mm_storeu_ps(sp.add(x * stride + j), _mm_mul_ps(d, _mm_set1_ps(scale)));
        }
    }
    for j in n4..stride {
        let krow = &s.kf[j * hd..(j + 1) * hd];
        for x in (0..heads).filter(|&x| j < ctx(x)) {
            let qr = &s.q[x * hd..(x + 1) * hd];
            let dot = match arith {
                Arith::Prompt => simd::dot_gemm(krow, qr),
                Arith::Decode => simd::dot_vec(krow, qr),
            };
            s.scores[x * stride + j] = dot * scale;
        }
    }
    for x in 0..heads {
        let sc = &mut s.scores[x * stride..x * stride + ctx(x)];
        simd::softmax(sc);
        round_f16(k, sc, &mut s.bits);
    }

    // Values: the positions below `c0`, shared by every row, slot by slot.
    let slots = match arith {
        Arith::Prompt => 1,
        Arith::Decode => ACCS,
    } * LANES;
    grow(&mut s.vacc, heads * slots * hd);
    grow(&mut s.pt, c0.div_ceil(slots) * heads);
    let (vf, vacc, p) = (s.vf.as_ptr(), s.vacc.as_mut_ptr(), s.scores.as_ptr());
    for slot in 0..slots {
        let nk = if slot < c0 {
            (c0 - slot).div_ceil(slots)
        } else {
            0
        };
        // This slot's probabilities, position-major: `pt[k * heads + x]`.
        for kk in 0..nk {
            let j = slot + kk * slots;
            for x in 0..heads {
                s.pt[kk * heads + x] = *p.add(x * stride + j);
            }
        }
        let pt = s.pt.as_ptr();
        for piece in (0..hd).step_by(PIECE) {
            let v = vf.add(slot * hd + piece);
            let mut r0 = 0;
            while r0 < rows {
                let rr = (rows - r0).min(PASS_ROWS);
                let mut h0 = 0;
                while h0 < n_rep {
                    let nh = (n_rep - h0).min(PASS_HEADS);
                    let x0 = r0 * n_rep + h0;
                    let pass = Pass {
                        p: pt.add(x0),
                        heads,
                        n_rep,
                        nk,
                        v,
                        v_step: slots * hd,
                        acc: vacc.add(x0 * slots * hd + slot * hd + piece),
                        acc_head: slots * hd,
                    };
                    match (rr, nh) {
                        (1, 1) => pass.run::<1, 1>(),
                        (1, 2) => pass.run::<1, 2>(),
                        (1, _) => pass.run::<1, 3>(),
                        (_, 1) => pass.run::<2, 1>(),
                        (_, 2) => pass.run::<2, 2>(),
                        _ => pass.run::<2, 3>(),
                    }
                    h0 += nh;
                }
                r0 += rr;
            }
        }
    }
    // The positions `c0..` that only the longer rows see, last in their slots' chains.
    for x in 0..heads {
        for j in c0..ctx(x) {
            let pj = _mm256_set1_ps(*p.add(x * stride + j));
            let acc = vacc.add(x * slots * hd + (j % slots) * hd);
            let row = vf.add(j * hd);
            for d in (0..hd).step_by(8) {
                let a = _mm256_loadu_ps(acc.add(d));
                let a = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(d)), pj, a);
                _mm256_storeu_ps(acc.add(d), a);
            }
        }
    }
    grow(&mut s.tile_out, heads * hd);
    for x in 0..heads {
        fold_slots(
            vacc.add(x * slots * hd),
            hd,
            arith,
            s.tile_out.as_mut_ptr().add(x * hd),
        );
    }
}

/// One value pass: `RR` rows x `NH` heads, one slot's shared positions, [`PIECE`] output
/// dimensions.
struct Pass {
    /// Probability of the pass's first (row, head) at the slot's first position; the next
    /// head is 1 further, the next row `n_rep`, the next position `heads`.
    p: *const f32,
    heads: usize,
    n_rep: usize,
    /// Positions of the slot below the tile's shared context.
    nk: usize,
    /// The piece of the V row of the slot's first position; the next position is `v_step`
    /// further.
    v: *const f32,
    v_step: usize,
    /// The pass's first (row, head) accumulators of this slot and piece; the next (row, head)
    /// is `acc_head` further.
    acc: *mut f32,
    acc_head: usize,
}

impl Pass {
    /// `acc = fma(v[j][d], p[x][j], acc)` over the slot's positions in increasing order,
    /// from zero, for each (row, head) `x` and dimension `d` of the pass.
    ///
    /// Safety: AVX2 + FMA; the pointers cover what the fields describe.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run<const RR: usize, const NH: usize>(&self) {
        let mut acc = [[[_mm256_setzero_ps(); 2]; NH]; RR];
        for kk in 0..self.nk {
            let row = self.v.add(kk * self.v_step);
            let (v0, v1) = (_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8)));
            let pk = self.p.add(kk * self.heads);
            for (r, ar) in acc.iter_mut().enumerate() {
                for (h, a) in ar.iter_mut().enumerate() {
                    let pj = _mm256_set1_ps(*pk.add(r * self.n_rep + h));
                    a[0] = _mm256_fmadd_ps(v0, pj, a[0]);
                    a[1] = _mm256_fmadd_ps(v1, pj, a[1]);
                }
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            for (h, a) in ar.iter().enumerate() {
                let dst = self.acc.add((r * self.n_rep + h) * self.acc_head);
                _mm256_storeu_ps(dst, a[0]);
                _mm256_storeu_ps(dst.add(8), a[1]);
            }
        }
    }
}
