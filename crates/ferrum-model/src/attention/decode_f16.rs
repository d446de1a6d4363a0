//! Decode attention of one query row read straight from the paged f16 blocks (head size 64,
//! llama.cpp's decode order), with AVX2 + FMA + F16C.
//!
//! [`super::paged_avx2`] first converts a run's whole context, K and V, to f32 and then
//! attends every row of the run over the copy: right for a prompt chunk, whose rows share
//! the conversion. A decode step attends one row per sequence, and there the conversion was
//! the largest single part of the call (8-10 of 28-34 us at 600 positions): it writes twice
//! the context's f16 bytes to L2 and reads them back once per query head. Here:
//!
//! - scores: each 4 keys are converted into a 1 KiB buffer that stays in L1 and scored for
//!   every query head of the group with `paged_avx2::dots4`, the same dots as before;
//! - values: each of the 64 value slots chains its positions `slot, slot + 64, ...` in
//!   increasing order, as the portable body does, 16 output dimensions at a time for up to
//!   three query heads together, so each piece of a V row is converted once for all of them;
//! - the V rows are prefetched while the scores are computed (the blocks are scattered over
//!   the pool, so the hardware prefetcher cannot follow them).
//!
//! Every float goes through the same operations in the same order as in
//! `run_tile::attend_rows` (tests compare the two bit for bit). Hand-written because decode attention is a quarter
//! to a third of a batched step's time on long contexts.

use std::arch::x86_64::*;

use super::paged_avx2::{convert, dots4, fold_slots, prefetch_block, PREFETCH_BLOCKS};
use super::{round_f16, simd, Arith, AttnScratch, AttnTarget, ACCS, LANES};
use crate::quant::Kernels;

/// The head size this path is written for (the default model's).
const HD: usize = 64;
/// Value slots of the decode order.
const SLOTS: usize = ACCS * LANES;
/// Output dimensions one value pass accumulates (two registers per query head).
const PIECE: usize = 16;

/// Whether [`attend_decode`] handles a pool with this head size and block size (4-key groups
/// must not straddle blocks).
pub(crate) fn supports(head_dim: usize, block_size: usize) -> bool {
    head_dim == HD && block_size.is_multiple_of(4)
}

/// 4 keys converted to f32.
#[repr(C, align(32))]
struct KeyGroup([f32; 4 * HD]);

/// Decode attention of the `n_rep` query heads in `q` over the first `t.n_ctx` positions:
/// bitwise what `paged_avx2::gather` then `run_tile::attend_rows` (one row) with
/// [`Arith::Decode`] give.
///
/// Safety: AVX2 + FMA + F16C; the pool passes [`supports`]; `q.len()` and
/// `out.len() >= n_rep * 64`; the block table covers `t.n_ctx` positions.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn attend_decode(
    k: &Kernels,
    t: &AttnTarget<'_>,
    q: &[f32],
    n_rep: usize,
    scale: f32,
    s: &mut AttnScratch,
    out: &mut [f32],
) {
    let (kv, n_ctx) = (t.kv, t.n_ctx);
    let bs = kv.block_size();
    assert!(
        supports(kv.shape().head_dim, bs)
            && n_ctx <= t.block_table.len() * bs
            && q.len() >= n_rep * HD
            && out.len() >= n_rep * HD,
        "programming error: attend_decode outside its shapes"
    );
    super::grow(&mut s.q, n_rep * HD);
    s.q[..n_rep * HD].copy_from_slice(&q[..n_rep * HD]);
    round_f16(k, &mut s.q[..n_rep * HD], &mut s.bits);
    super::grow(&mut s.scores, n_rep * n_ctx);

    // Scores, block by block, 4 keys at a time for every head; V row addresses on the way.
    s.vrows.clear();
    let mut keys = KeyGroup([0.0; 4 * HD]);
    let n_blocks = n_ctx.div_ceil(bs);
    let block = |bi: usize| t.block_table[bi] as usize;
    let rows = |bi: usize| bs.min(n_ctx - bi * bs);
    for bi in 0..n_blocks.min(PREFETCH_BLOCKS) {
        prefetch_block(kv.k_block(t.layer, block(bi), t.kv_head), rows(bi) * HD);
    }
    for bi in 0..n_blocks {
        if bi + PREFETCH_BLOCKS < n_blocks {
            let ahead = bi + PREFETCH_BLOCKS;
            prefetch_block(
                kv.k_block(t.layer, block(ahead), t.kv_head),
                rows(ahead) * HD,
            );
        }
        let kb = kv.k_block(t.layer, block(bi), t.kv_head);
        let vb = kv.v_block(t.layer, block(bi), t.kv_head);
        prefetch_block(vb, rows(bi) * HD);
        let (j0, n) = (bi * bs, rows(bi));
        s.vrows
            .extend((0..n).map(|i| vb.as_ptr().add(i * HD) as usize));
        let mut i = 0;
        while i + 4 <= n {
            convert(&kb[i * HD..(i + 4) * HD], &mut keys.0);
            for r in 0..n_rep {
                let d = dots4::<HD>(keys.0.as_ptr(), HD, s.q.as_ptr().add(r * HD), Arith::Decode);
                let sp = s.scores.as_mut_ptr().add(r * n_ctx + j0 + i);
                _mm_storeu_ps(sp, _mm_mul_ps(d, _mm_set1_ps(scale)));
            }
            i += 4;
        }
        // The context's last `n_ctx % 4` keys, one at a time (as `run_tile`).
        while i < n {
            convert(&kb[i * HD..(i + 1) * HD], &mut keys.0[..HD]);
            for r in 0..n_rep {
                let dot = simd::dot_vec(&keys.0[..HD], &s.q[r * HD..(r + 1) * HD]);
                s.scores[r * n_ctx + j0 + i] = dot * scale;
            }
            i += 1;
        }
    }
    for r in 0..n_rep {
        let sc = &mut s.scores[r * n_ctx..(r + 1) * n_ctx];
        simd::softmax(sc);
        round_f16(k, sc, &mut s.bits);
    }

    // Values, up to three heads per pass, then each head's slots folded into its output.
    super::grow(&mut s.vacc, n_rep * SLOTS * HD);
    let (p, vrows, vacc) = (s.scores.as_ptr(), s.vrows.as_ptr(), s.vacc.as_mut_ptr());
    let mut r0 = 0;
    while r0 < n_rep {
        let (pr, ar) = (p.add(r0 * n_ctx), vacc.add(r0 * SLOTS * HD));
        r0 += match n_rep - r0 {
            1 => value_slots::<1>(pr, n_ctx, vrows, ar),
            2 => value_slots::<2>(pr, n_ctx, vrows, ar),
            _ => value_slots::<3>(pr, n_ctx, vrows, ar),
        };
    }
    for r in 0..n_rep {
        fold_slots(
            vacc.add(r * SLOTS * HD),
            HD,
            Arith::Decode,
            out.as_mut_ptr().add(r * HD),
        );
    }
}

/// Accumulates the value slots of `NH` heads (probabilities `p[h * n_ctx + j]`) into `vacc`
/// (`NH` heads of `SLOTS x 64` floats): slot `s`, dimension `d` of head `h` is
/// `fma(v[j][d], p[h][j], acc)` over `j = s, s + 64, ...` from 0, the decode order of
/// `run_tile`. Returns `NH`.
///
/// Safety: AVX2 + FMA + F16C; `vrows[j]` is the address of position `j`'s 64 f16 values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn value_slots<const NH: usize>(
    p: *const f32,
    n_ctx: usize,
    vrows: *const usize,
    vacc: *mut f32,
) -> usize {
    for slot in 0..SLOTS {
        for piece in (0..HD).step_by(PIECE) {
            let mut acc = [[_mm256_setzero_ps(); 2]; NH];
            let mut j = slot;
            while j < n_ctx {
                let row = (*vrows.add(j) as *const u16).add(piece);
                let v0 = _mm256_cvtph_ps(_mm_loadu_si128(row.cast()));
                let v1 = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8).cast()));
                for (h, a) in acc.iter_mut().enumerate() {
                    let pj = _mm256_set1_ps(*p.add(h * n_ctx + j));
                    a[0] = _mm256_fmadd_ps(v0, pj, a[0]);
                    a[1] = _mm256_fmadd_ps(v1, pj, a[1]);
                }
                j += SLOTS;
            }
            for (h, a) in acc.iter().enumerate() {
                let dst = vacc.add((h * SLOTS + slot) * HD + piece);
                _mm256_storeu_ps(dst, a[0]);
                _mm256_storeu_ps(dst.add(8), a[1]);
            }
        }
    }
    NH
}
