//! AVX2 kernel for Q4_1 weights in the 8-row interleaved layout (`quant::interleaved`, whose
//! docs give the layout and the arithmetic).
//!
//! A register tile is `R` activation rows by `G` weight groups (8 rows each). Per block and
//! 8-value step it loads one 32-byte vector per group (two steps of nibbles), broadcasts
//! 4 activation quants per row, and adds `vpmaddubsw` results into one int16 accumulator per
//! (row, group); the block's float work is then one widening, one conversion, one multiply and
//! two FMAs for 8 outputs. Batched products use 4 activation rows per tile and visit every
//! tile of one weight group before the next (the group's blocks stay in L1); one activation
//! row (decode) takes 4 groups per tile, so four accumulator chains overlap.
//!
//! With a VNNI `DOT`, `vpdpbusd` accumulates the same products in int32 lanes directly; the
//! block sums are the same integers, so the outputs are the same bits.

// Lanes and tiles are indexed explicitly; iterator chains would obscure the register layout.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::super::interleaved::{GROUP_BLOCK, GROUP_ROWS, QUANTS};
use super::{ld_f16x2, vnni_acc, DOT_MADD};

/// Activation rows per tile of a batched product.
const TILE_ROWS: usize = 4;
/// Weight groups per tile of a one-row product.
const GEMV_GROUPS: usize = 4;

thread_local! {
    /// Activation scales `(d, s)` as f32, `[row][block][2]`, widened once per call; grown on
    /// first use and then reused, so the step loop does not allocate.
    static ACT_SCALES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[c * os + r]` for the `8 * ngroups` weight rows at `w` (whole groups of `nb` blocks)
/// and `ncols` Q8_1 activation rows of stride `as_` at `a`.
///
/// Safety: AVX2 + FMA + F16C (and VNNI for a VNNI `DOT`); `w` covers `ngroups` groups, `a`
/// covers `ncols` rows, `out` covers every written index.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::quant) unsafe fn matmul<const DOT: u8>(
    nb: usize,
    w: *const u8,
    ngroups: usize,
    a: *const u8,
    as_: usize,
    ncols: usize,
    out: *mut f32,
    os: usize,
) {
    ACT_SCALES.with(|scales| {
        let scales = &mut *scales.borrow_mut();
        if scales.len() < 2 * nb * ncols {
            scales.resize(2 * nb * ncols, 0.0);
        }
        for c in 0..ncols {
            for b in 0..nb {
                let (d, s) = ld_f16x2(a.add(c * as_ + b * 36));
                scales[(c * nb + b) * 2] = d;
                scales[(c * nb + b) * 2 + 1] = s;
            }
        }
        let sc = scales.as_ptr();
        let gs = nb * GROUP_BLOCK;
        if ncols == 1 {
            let mut g = 0;
            while g < ngroups {
                let (wg, o) = (w.add(g * gs), out.add(g * GROUP_ROWS));
                if g + GEMV_GROUPS <= ngroups {
                    tile::<1, GEMV_GROUPS, DOT>(nb, wg, gs, a, as_, sc, o, os);
                    g += GEMV_GROUPS;
                } else {
                    tile::<1, 1, DOT>(nb, wg, gs, a, as_, sc, o, os);
                    g += 1;
                }
            }
            return;
        }
        for g in 0..ngroups {
            let mut c0 = 0;
            while c0 < ncols {
                let cc = (ncols - c0).min(TILE_ROWS);
                let (wg, ac) = (w.add(g * gs), a.add(c0 * as_));
                let (sc, o) = (sc.add(c0 * nb * 2), out.add(c0 * os + g * GROUP_ROWS));
                match cc {
                    1 => tile::<1, 1, DOT>(nb, wg, gs, ac, as_, sc, o, os),
                    2 => tile::<2, 1, DOT>(nb, wg, gs, ac, as_, sc, o, os),
                    3 => tile::<3, 1, DOT>(nb, wg, gs, ac, as_, sc, o, os),
                    _ => tile::<TILE_ROWS, 1, DOT>(nb, wg, gs, ac, as_, sc, o, os),
                }
                c0 += cc;
            }
        }
    });
}

/// `R` activation rows against `G` weight groups (at `w`, `gs` bytes apart); see the module
/// docs. `sc` holds the rows' scales as `[row][block][(d, s)]`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const R: usize, const G: usize, const DOT: u8>(
    nb: usize,
    w: *const u8,
    gs: usize,
    a: *const u8,
    as_: usize,
    sc: *const f32,
    out: *mut f32,
    os: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); G]; R];
    let nibble = _mm256_set1_epi8(0xF);
    for b in 0..nb {
        // Per (row, group): the block's sums, int16 lanes in pairs (AVX2) or int32 (VNNI).
        let mut sums = [[_mm256_setzero_si256(); G]; R];
        for v in 0..4 {
            let mut lo = [_mm256_setzero_si256(); G];
            let mut hi = [_mm256_setzero_si256(); G];
            for g in 0..G {
                let q =
                    _mm256_loadu_si256(w.add(g * gs + b * GROUP_BLOCK + QUANTS + 32 * v).cast());
                lo[g] = _mm256_and_si256(q, nibble);
                hi[g] = _mm256_and_si256(_mm256_srli_epi16::<4>(q), nibble);
            }
            for r in 0..R {
                let ap = a.add(r * as_ + b * 36 + 4 + 8 * v);
                let a0 = _mm256_set1_epi32(ap.cast::<i32>().read_unaligned());
                let a1 = _mm256_set1_epi32(ap.add(4).cast::<i32>().read_unaligned());
                for g in 0..G {
                    sums[r][g] = if DOT == DOT_MADD {
                        let p = _mm256_add_epi16(
                            _mm256_maddubs_epi16(lo[g], a0),
                            _mm256_maddubs_epi16(hi[g], a1),
                        );
                        _mm256_add_epi16(sums[r][g], p)
                    } else {
                        vnni_acc::<DOT>(vnni_acc::<DOT>(sums[r][g], lo[g], a0), hi[g], a1)
                    };
                }
            }
        }
        for g in 0..G {
            let sp = w.add(g * gs + b * GROUP_BLOCK);
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(sp.cast()));
            let mw = _mm256_cvtph_ps(_mm_loadu_si128(sp.add(16).cast()));
            for r in 0..R {
                let s32 = if DOT == DOT_MADD {
                    _mm256_madd_epi16(sums[r][g], _mm256_set1_epi16(1))
                } else {
                    sums[r][g]
                };
                let da = _mm256_broadcast_ss(&*sc.add((r * nb + b) * 2));
                let sa = _mm256_broadcast_ss(&*sc.add((r * nb + b) * 2 + 1));
                let s = _mm256_cvtepi32_ps(s32);
                acc[r][g] = _mm256_fmadd_ps(s, _mm256_mul_ps(dw, da), acc[r][g]);
                acc[r][g] = _mm256_fmadd_ps(mw, sa, acc[r][g]);
            }
        }
    }
    for r in 0..R {
        for g in 0..G {
            _mm256_storeu_ps(out.add(r * os + g * GROUP_ROWS), acc[r][g]);
        }
    }
}
