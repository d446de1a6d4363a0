//! Attention over a sequence's paged f16 context with AVX2 + FMA + F16C, organised for the
//! cache and bitwise equal to the portable body in `attention.rs`.
//!
//! The portable body walks positions once and, for every position, updates each query head's
//! value accumulators in memory: with llama.cpp's decode order that is 64 lane slots x
//! `head_dim` floats per head (48 KiB for three heads, more than L1), then folds the slots one
//! scalar at a time. Here:
//!
//! - the context's K and V blocks are converted to f32 once per call, a few blocks prefetched
//!   ahead (the blocks are scattered, so the hardware prefetcher cannot follow them); a run
//!   of one decode row, which has no other rows to share that conversion with, takes
//!   `decode_f16` instead;
//! - each value slot's chain (positions `slot, slot + slots, ...`, in increasing order, exactly
//!   the scalar chain) is accumulated in registers, one query head at a time;
//! - the slot fold (`(a0 + a2) + (a1 + a3)`, then the 16-lane halving tree) runs on 8 output
//!   dimensions per instruction instead of one.
//!
//! Every float goes through the same operations in the same order as in the portable body, so
//! results do not change by a bit (the tests compare the two). Hand-written because this is
//! the hot path of batched decoding.

use std::arch::x86_64::*;

use super::{round_f16, simd, Arith, AttnScratch, AttnTarget, ACCS, LANES};
use crate::quant::Kernels;

/// Head sizes this path handles: whole 64-float register groups (the decode order's step).
pub(crate) fn supports(head_dim: usize) -> bool {
    head_dim > 0 && head_dim.is_multiple_of(64)
}

/// Blocks the K/V gather prefetches ahead of the one it converts (a block is a few KiB, far
/// less than the latency of the scattered reads it has to cover).
pub(super) const PREFETCH_BLOCKS: usize = 4;

/// Prefetches one block's first `n` f16 values (one hint per 64-byte line).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn prefetch_block(rows: &[u16], n: usize) {
    let p = rows.as_ptr().cast::<i8>();
    for line in (0..n.min(rows.len())).step_by(32) {
        _mm_prefetch::<_MM_HINT_T0>(p.add(2 * line));
    }
}

/// Converts `src` (f16 bits) into `dst` (same length).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn convert(src: &[u16], dst: &mut [f32]) {
    let n = src.len();
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i).cast()));
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), v);
        i += 8;
    }
    for k in i..n {
        dst[k] = half::f16::from_bits(src[k]).to_f32();
    }
}

/// Converts the first `n_ctx` positions of one KV head's K and V blocks into `kf` and `vf`,
/// prefetching [`PREFETCH_BLOCKS`] blocks ahead: the blocks are scattered over the pool, so
/// the hardware prefetcher cannot follow them, and both streams' misses overlap.
///
/// Safety: AVX2 + F16C; `kf.len()` and `vf.len() >= n_ctx * head_dim`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gather_kv(t: &AttnTarget<'_>, kf: &mut [f32], vf: &mut [f32]) {
    let (kv, layer, head, n_ctx) = (t.kv, t.layer, t.kv_head, t.n_ctx);
    let (bs, hd) = (kv.block_size(), kv.shape().head_dim);
    let n_blocks = n_ctx.div_ceil(bs).min(t.block_table.len());
    let rows = |bi: usize| bs.min(n_ctx - bi * bs) * hd;
    let fetch = |bi: usize| {
        let b = t.block_table[bi] as usize;
        prefetch_block(kv.k_block(layer, b, head), rows(bi));
        prefetch_block(kv.v_block(layer, b, head), rows(bi));
    };
    for bi in 0..n_blocks.min(PREFETCH_BLOCKS) {
        fetch(bi);
    }
    for bi in 0..n_blocks {
        if bi + PREFETCH_BLOCKS < n_blocks {
            fetch(bi + PREFETCH_BLOCKS);
        }
        let b = t.block_table[bi] as usize;
        let (o, n) = (bi * bs * hd, rows(bi));
        convert(&kv.k_block(layer, b, head)[..n], &mut kf[o..o + n]);
        convert(&kv.v_block(layer, b, head)[..n], &mut vf[o..o + n]);
    }
}

/// `fold` of 16 lane vectors (each 8 output dimensions) in [`super::tree16`]'s order.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tree16_lanes(x: &[__m256; LANES]) -> __m256 {
    let mut b = [_mm256_setzero_ps(); 8];
    for i in 0..8 {
        b[i] = _mm256_add_ps(x[i + 8], x[i]);
    }
    let c = [
        _mm256_add_ps(b[4], b[0]),
        _mm256_add_ps(b[5], b[1]),
        _mm256_add_ps(b[6], b[2]),
        _mm256_add_ps(b[7], b[3]),
    ];
    _mm256_add_ps(_mm256_add_ps(c[0], c[2]), _mm256_add_ps(c[1], c[3]))
}

/// Dot products of 4 consecutive K rows at `k` (row stride `hd`) with `q`, each bitwise
/// [`simd::dot_gemm`] (`Prompt`) or [`simd::dot_vec`] (`Decode`): the per-row FMA chains are
/// the same, and the four final reductions (`tree16`: hi + lo halves, then 4 -> 2 -> 1) run
/// transposed, one instruction for all four rows per step, with each add's operands in the
/// same order. One key per call spent more instructions reducing than multiplying.
///
/// Safety: AVX2 + FMA; `hd` a multiple of 64; `k` covers 4 rows, `q` one.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dots4<const HD: usize>(
    k: *const f32,
    hd: usize,
    q: *const f32,
    arith: Arith,
) -> __m128 {
    let hd = if HD > 0 { HD } else { hd };
    let z = _mm256_setzero_ps();
    // b[j]: the 8 lanes whose `hsum8` is row j's dot.
    let mut b = [z; 4];
    match arith {
        Arith::Prompt => {
            // One 16-lane chain over the chunks of 16, per row.
            let mut acc = [(z, z); 4];
            for c in 0..hd / 16 {
                let (q0, q1) = (
                    _mm256_loadu_ps(q.add(16 * c)),
                    _mm256_loadu_ps(q.add(16 * c + 8)),
                );
                for (j, a) in acc.iter_mut().enumerate() {
                    let kr = k.add(j * hd + 16 * c);
                    a.0 = _mm256_fmadd_ps(_mm256_loadu_ps(kr), q0, a.0);
                    a.1 = _mm256_fmadd_ps(_mm256_loadu_ps(kr.add(8)), q1, a.1);
                }
            }
            for (bj, a) in b.iter_mut().zip(acc) {
                *bj = _mm256_add_ps(a.1, a.0);
            }
        }
        Arith::Decode => {
            // Four 16-lane chains over steps of 64, folded (0 + 2) + (1 + 3), per row.
            for (j, bj) in b.iter_mut().enumerate() {
                let kr = k.add(j * hd);
                let mut acc = [(z, z); 4];
                for i in (0..hd).step_by(64) {
                    for (a, acc) in acc.iter_mut().enumerate() {
                        let o = i + 16 * a;
                        acc.0 = _mm256_fmadd_ps(
                            _mm256_loadu_ps(kr.add(o)),
                            _mm256_loadu_ps(q.add(o)),
                            acc.0,
                        );
                        acc.1 = _mm256_fmadd_ps(
                            _mm256_loadu_ps(kr.add(o + 8)),
                            _mm256_loadu_ps(q.add(o + 8)),
                            acc.1,
                        );
                    }
                }
                let x0 = _mm256_add_ps(
                    _mm256_add_ps(acc[0].0, acc[2].0),
                    _mm256_add_ps(acc[1].0, acc[3].0),
                );
                let x1 = _mm256_add_ps(
                    _mm256_add_ps(acc[0].1, acc[2].1),
                    _mm256_add_ps(acc[1].1, acc[3].1),
                );
                *bj = _mm256_add_ps(x1, x0);
            }
        }
    }
    // hi128 + lo128 of rows (0, 1) and (2, 3): [c0 | c1], [c2 | c3].
    let c01 = _mm256_add_ps(
        _mm256_permute2f128_ps::<0x31>(b[0], b[1]),
        _mm256_permute2f128_ps::<0x20>(b[0], b[1]),
    );
    let c23 = _mm256_add_ps(
        _mm256_permute2f128_ps::<0x31>(b[2], b[3]),
        _mm256_permute2f128_ps::<0x20>(b[2], b[3]),
    );
    // c[0] + c[2] and c[1] + c[3]: lanes [d0(0), d0(2), d1(0), d1(2) | d0(1), d0(3), d1(1), d1(3)].
    let d = _mm256_add_ps(_mm256_unpacklo_ps(c01, c23), _mm256_unpackhi_ps(c01, c23));
    // d0 + d1: lanes [r0, r2, _, _ | r1, r3, _, _].
    let e = _mm256_add_ps(d, _mm256_permute_ps::<0b01_00_11_10>(d));
    let r = _mm256_permutevar8x32_ps(e, _mm256_setr_epi32(0, 4, 1, 5, 0, 0, 0, 0));
    _mm256_castps256_ps128(r)
}

/// Converts the first `t.n_ctx` positions of the target's K and V into the scratch, for any
/// number of [`attend_gathered`] calls with contexts up to `t.n_ctx` (the rows of one prompt
/// chunk share one conversion).
///
/// Safety: AVX2 + FMA + F16C; the head size passes [`supports`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gather(t: &AttnTarget<'_>, s: &mut AttnScratch) {
    let hd = t.kv.shape().head_dim;
    super::grow(&mut s.kf, t.n_ctx * hd);
    super::grow(&mut s.vf, t.n_ctx * hd);
    gather_kv(t, &mut s.kf, &mut s.vf);
}

/// Attention of `n_rep` query heads over the first `n_ctx` positions already converted by
/// [`gather`] (with at least `n_ctx` positions): the result bits of [`super::attend_group`].
///
/// Safety: AVX2 + FMA + F16C; `q.len() >= n_rep * hd`, `out.len() >= n_rep * hd`.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn attend_gathered(
    k: &Kernels,
    hd: usize,
    q: &[f32],
    n_rep: usize,
    scale: f32,
    arith: Arith,
    n_ctx: usize,
    s: &mut AttnScratch,
    out: &mut [f32],
) {
    match hd {
        64 => attend_gathered_hd::<64>(k, hd, q, n_rep, scale, arith, n_ctx, s, out),
        128 => attend_gathered_hd::<128>(k, hd, q, n_rep, scale, arith, n_ctx, s, out),
        _ => attend_gathered_hd::<0>(k, hd, q, n_rep, scale, arith, n_ctx, s, out),
    }
}

/// [`attend_gathered`] for head size `HD` (0: `hd`, known only at run time). With the size a
/// constant the compiler unrolls the 64-wide dots and keeps them in registers: decode scores
/// took half the time at 600 positions (`bench_decode_attention`, 5.5 -> 2.7 us per head).
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_gathered_hd<const HD: usize>(
    k: &Kernels,
    hd: usize,
    q: &[f32],
    n_rep: usize,
    scale: f32,
    arith: Arith,
    n_ctx: usize,
    s: &mut AttnScratch,
    out: &mut [f32],
) {
    let hd = if HD > 0 { HD } else { hd };
    debug_assert!(supports(hd) && s.kf.len() >= n_ctx * hd && s.vf.len() >= n_ctx * hd);
    super::grow(&mut s.q, n_rep * hd);
    s.q[..n_rep * hd].copy_from_slice(&q[..n_rep * hd]);
    round_f16(k, &mut s.q[..n_rep * hd], &mut s.bits);
    super::grow(&mut s.scores, n_rep * n_ctx);

    // Scores, 4 keys per step for every query head, so the 4 keys are read from L2 once
    // (the context is too large for L1) and stay in L1 across the heads.
    let n4 = n_ctx / 4 * 4;
    for j in (0..n4).step_by(4) {
        let kp = s.kf.as_ptr().add(j * hd);
        for r in 0..n_rep {
            let d = dots4::<HD>(kp, hd, s.q.as_ptr().add(r * hd), arith);
            let sp = s.scores.as_mut_ptr().add(r * n_ctx + j);
            _mm_storeu_ps(sp, _mm_mul_ps(d, _mm_set1_ps(scale)));
        }
    }
    for r in 0..n_rep {
        let qr = &s.q[r * hd..(r + 1) * hd];
        let sc = &mut s.scores[r * n_ctx..(r + 1) * n_ctx];
        for (j, score) in sc.iter_mut().enumerate().skip(n4) {
            let krow = &s.kf[j * hd..(j + 1) * hd];
            let dot = match arith {
                Arith::Prompt => simd::dot_gemm(krow, qr),
                Arith::Decode => simd::dot_vec(krow, qr),
            };
            *score = dot * scale;
        }
    }
    for r in 0..n_rep {
        let sc = &mut s.scores[r * n_ctx..(r + 1) * n_ctx];
        simd::softmax(sc);
        round_f16(k, sc, &mut s.bits);
    }

    // Values: slot `j % slots` chains positions j in increasing order, as the portable body.
    let n_acc = match arith {
        Arith::Prompt => 1,
        Arith::Decode => ACCS,
    };
    let slots = n_acc * LANES;
    super::grow(&mut s.vacc, n_rep * slots * hd);
    let (p, vf, vacc) = (s.scores.as_ptr(), s.vf.as_ptr(), s.vacc.as_mut_ptr());
    let mut r0 = 0;
    while r0 < n_rep {
        let (pr, ar) = (p.add(r0 * n_ctx), vacc.add(r0 * slots * hd));
        r0 += match n_rep - r0 {
            1 => gathered_value_slots::<1>(pr, n_ctx, vf, hd, slots, ar),
            2 => gathered_value_slots::<2>(pr, n_ctx, vf, hd, slots, ar),
            _ => gathered_value_slots::<3>(pr, n_ctx, vf, hd, slots, ar),
        };
    }
    for r in 0..n_rep {
        fold_slots(
            vacc.add(r * slots * hd),
            hd,
            arith,
            out.as_mut_ptr().add(r * hd),
        );
    }
}

/// Output dimensions one [`gathered_value_slots`] pass accumulates (four registers per head).
const VALUE_PIECE: usize = 32;

/// Accumulates the value slots of `NH` query heads over the gathered f32 values `vf`
/// (probabilities `p[h * n_ctx + j]`) into `vacc` (`NH` heads of `slots x hd` floats): slot
/// `s`, dimension `d` of head `h` is `fma(v[j][d], p[h][j], acc)` over `j = s, s + slots, ...`
/// from 0, the portable body's order. The heads share each loaded piece of a V row, so the
/// values are read from L2 once per pass instead of once per head. Returns `NH`.
///
/// Safety: AVX2 + FMA; `hd` a multiple of 32; `vf` holds `n_ctx` rows of `hd`, `p` `NH` rows
/// of `n_ctx`, `vacc` `NH * slots * hd` floats.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn gathered_value_slots<const NH: usize>(
    p: *const f32,
    n_ctx: usize,
    vf: *const f32,
    hd: usize,
    slots: usize,
    vacc: *mut f32,
) -> usize {
    for slot in 0..slots {
        for piece in (0..hd).step_by(VALUE_PIECE) {
            let mut acc = [[_mm256_setzero_ps(); VALUE_PIECE / 8]; NH];
            let mut j = slot;
            while j < n_ctx {
                let row = vf.add(j * hd + piece);
                for (h, a) in acc.iter_mut().enumerate() {
                    let pj = _mm256_set1_ps(*p.add(h * n_ctx + j));
                    for (i, ai) in a.iter_mut().enumerate() {
                        *ai = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(8 * i)), pj, *ai);
                    }
                }
                j += slots;
            }
            for (h, a) in acc.iter().enumerate() {
                let dst = vacc.add((h * slots + slot) * hd + piece);
                for (i, ai) in a.iter().enumerate() {
                    _mm256_storeu_ps(dst.add(8 * i), *ai);
                }
            }
        }
    }
    NH
}

/// Folds one query head's value slots (`vacc`: `slots x hd` floats, slot-major) into its
/// `hd` outputs at `o`, in the portable body's order: for `Decode`, `(a0 + a2) + (a1 + a3)`
/// over the 4 accumulators of each lane, then the 16-lane halving tree.
///
/// Safety: AVX2 + FMA; `vacc` holds the slots of `arith`, `o` has room for `hd` floats.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn fold_slots(vacc: *const f32, hd: usize, arith: Arith, o: *mut f32) {
    for d in (0..hd).step_by(8) {
        let at = |a: usize, l: usize| _mm256_loadu_ps(vacc.add((a * LANES + l) * hd + d));
        let mut x = [_mm256_setzero_ps(); LANES];
        for (l, xl) in x.iter_mut().enumerate() {
            *xl = match arith {
                Arith::Prompt => at(0, l),
                Arith::Decode => _mm256_add_ps(
                    _mm256_add_ps(at(0, l), at(2, l)),
                    _mm256_add_ps(at(1, l), at(3, l)),
                ),
            };
        }
        _mm256_storeu_ps(o.add(d), tree16_lanes(&x));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvCache, KvShape};

    fn ok() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    /// Deterministic pseudo-random values in about [-2, 2).
    fn noise(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
    }

    /// Decode attention through the run path: [`gather`], then [`attend_gathered`].
    ///
    /// Safety: AVX2 + FMA + F16C; as [`attend_gathered`].
    unsafe fn gathered_decode(
        k: &Kernels,
        t: &AttnTarget<'_>,
        q: &[f32],
        n_rep: usize,
        s: &mut AttnScratch,
        out: &mut [f32],
    ) {
        let hd = t.kv.shape().head_dim;
        gather(t, s);
        attend_gathered(k, hd, q, n_rep, 0.125, Arith::Decode, t.n_ctx, s, out);
    }

    #[test]
    fn four_key_dots_are_bitwise_the_one_key_dots() {
        if !ok() {
            eprintln!("skipped: no AVX2+FMA+F16C here");
            return;
        }
        let mut seed = 5u64;
        for hd in [64usize, 128, 192] {
            let k: Vec<f32> = (0..4 * hd).map(|_| noise(&mut seed)).collect();
            let q: Vec<f32> = (0..hd).map(|_| noise(&mut seed) * 3.0).collect();
            for arith in [Arith::Prompt, Arith::Decode] {
                let mut got = [0f32; 4];
                // SAFETY: features checked above; k holds 4 rows of hd, q one.
                unsafe {
                    _mm_storeu_ps(
                        got.as_mut_ptr(),
                        dots4::<0>(k.as_ptr(), hd, q.as_ptr(), arith),
                    );
                }
                for (j, g) in got.iter().enumerate() {
                    let row = &k[j * hd..(j + 1) * hd];
                    // SAFETY: as above.
                    let want = unsafe {
                        match arith {
                            Arith::Prompt => simd::dot_gemm(row, &q),
                            Arith::Decode => simd::dot_vec(row, &q),
                        }
                    };
                    assert_eq!(g.to_bits(), want.to_bits(), "hd {hd} {arith:?} row {j}");
                }
            }
        }
    }

    /// A pool of `n_blocks` blocks of 16 positions, every position of `layer` filled with noise
    /// (K then V, all heads) through a scattered block table, as a long-running pool hands
    /// out. Returns the pool and the table.
    fn scattered_kv(
        shape: KvShape,
        n_blocks: usize,
        layer: usize,
        seed: &mut u64,
    ) -> (KvCache, Vec<u32>) {
        scattered_kv_bs(shape, n_blocks, 16, layer, seed)
    }

    /// [`scattered_kv`] with blocks of `bs` positions.
    fn scattered_kv_bs(
        shape: KvShape,
        n_blocks: usize,
        bs: usize,
        layer: usize,
        seed: &mut u64,
    ) -> (KvCache, Vec<u32>) {
        let mut kv = KvCache::new(shape, n_blocks, bs).unwrap();
        // 29 shares no factor with the block counts used here, so this is a permutation.
        let table: Vec<u32> = (0..n_blocks as u32)
            .map(|i| (i * 29 + 7) % n_blocks as u32)
            .collect();
        let kvd = shape.n_kv_heads * shape.head_dim;
        for pos in 0..bs * n_blocks {
            let k: Vec<f32> = (0..kvd).map(|_| noise(seed)).collect();
            let v: Vec<f32> = (0..kvd).map(|_| noise(seed)).collect();
            kv.store(layer, &table, pos, &k, &v);
        }
        (kv, table)
    }

    #[test]
    fn paged_avx2_attention_is_bitwise_the_portable_body() {
        if !ok() {
            eprintln!("skipped: no AVX2+FMA+F16C here");
            return;
        }
        let kernels = crate::quant::kernels();
        for hd in [64usize, 128] {
            let shape = KvShape {
                n_layers: 2,
                n_kv_heads: 2,
                head_dim: hd,
            };
            let mut seed = hd as u64;
            let (kv, table) = scattered_kv(shape, 48, 1, &mut seed);
            for (n_rep, n_ctx) in [1usize, 2, 3, 4, 7]
                .into_iter()
                .flat_map(|r| [1usize, 5, 16, 17, 63, 64, 65, 130, 700].map(|c| (r, c)))
            {
                let q: Vec<f32> = (0..n_rep * hd).map(|_| noise(&mut seed) * 3.0).collect();
                for arith in [Arith::Prompt, Arith::Decode] {
                    let t = AttnTarget {
                        kv: &kv,
                        layer: 1,
                        kv_head: 1,
                        block_table: &table,
                        n_ctx,
                    };
                    let mut want = vec![0f32; n_rep * hd];
                    let mut got = vec![0f32; n_rep * hd];
                    let mut s = AttnScratch::default();
                    super::super::attend_group_impl::<false>(
                        kernels, &t, &q, n_rep, 0.125, arith, &mut s, &mut want,
                    );
                    // Dirty scratch on purpose: the fast path must not depend on its contents.
                    // SAFETY: features checked above; slices sized n_rep * hd.
                    unsafe {
                        gather(&t, &mut s);
                        attend_gathered(
                            kernels, hd, &q, n_rep, 0.125, arith, n_ctx, &mut s, &mut got,
                        );
                    }
                    assert_eq!(
                        got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        "hd {hd} n_rep {n_rep} n_ctx {n_ctx} {arith:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn direct_f16_decode_is_bitwise_the_gathered_path() {
        if !ok() {
            eprintln!("skipped: no AVX2+FMA+F16C here");
            return;
        }
        let kernels = crate::quant::kernels();
        let hd = 64;
        let mut seed = 11u64;
        for (bs, n_blocks) in [(4usize, 181usize), (16, 47), (32, 23)] {
            for n_rep in 1..=7usize {
                let shape = KvShape {
                    n_layers: 2,
                    n_kv_heads: 2,
                    head_dim: hd,
                };
                assert!(super::super::decode_f16::supports(hd, bs));
                let (kv, table) = scattered_kv_bs(shape, n_blocks, bs, 1, &mut seed);
                let q: Vec<f32> = (0..n_rep * hd).map(|_| noise(&mut seed) * 3.0).collect();
                for n_ctx in [1usize, 3, 4, 5, 16, 17, 63, 64, 65, 130, 700] {
                    let t = AttnTarget {
                        kv: &kv,
                        layer: 1,
                        kv_head: 1,
                        block_table: &table,
                        n_ctx,
                    };
                    let mut want = vec![0f32; n_rep * hd];
                    let mut portable = vec![0f32; n_rep * hd];
                    let mut got = vec![0f32; n_rep * hd];
                    let mut s = AttnScratch::default();
                    super::super::attend_group_impl::<false>(
                        kernels,
                        &t,
                        &q,
                        n_rep,
                        0.125,
                        Arith::Decode,
                        &mut s,
                        &mut portable,
                    );
                    // SAFETY: features checked above; slices sized n_rep * hd; the table
                    // covers every context tried.
                    unsafe {
                        gathered_decode(kernels, &t, &q, n_rep, &mut s, &mut want);
                        super::super::decode_f16::attend_decode(
                            kernels, &t, &q, n_rep, 0.125, &mut s, &mut got,
                        );
                    }
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    let what = format!("bs {bs} n_rep {n_rep} n_ctx {n_ctx}");
                    assert_eq!(bits(&got), bits(&want), "{what}");
                    assert_eq!(bits(&got), bits(&portable), "{what} (portable body)");
                }
            }
        }
    }

    /// Time of one decode attention call of 3 query heads over contexts of 100-2000 positions,
    /// read directly from f16 (`decode_f16`) and gathered first (gather + attend), and of one
    /// prompt row over an already gathered context, best of 5 (the machine may be shared):
    /// `cargo test -p ferrum-model --lib --release paged_avx2::tests::bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_decode_attention() {
        if !ok() {
            eprintln!("skipped: no AVX2+FMA+F16C here");
            return;
        }
        let kernels = crate::quant::kernels();
        let hd = 64;
        let shape = KvShape {
            n_layers: 1,
            n_kv_heads: 1,
            head_dim: hd,
        };
        let mut seed = 1u64;
        let (kv, table) = scattered_kv(shape, 128, 0, &mut seed);
        let n_rep = 3;
        let q: Vec<f32> = (0..n_rep * hd).map(|_| noise(&mut seed)).collect();
        let mut out = vec![0f32; n_rep * hd];
        let mut s = AttnScratch::default();
        for n_ctx in [100usize, 600, 2000] {
            let t = AttnTarget {
                kv: &kv,
                layer: 0,
                kv_head: 0,
                block_table: &table,
                n_ctx,
            };
            let best_of_5 = |f: &mut dyn FnMut()| {
                let iters = 2000;
                let mut best = f64::MAX;
                for _ in 0..5 {
                    let t0 = std::time::Instant::now();
                    for _ in 0..iters {
                        f();
                    }
                    best = best.min(t0.elapsed().as_secs_f64() / iters as f64);
                }
                best
            };
            // SAFETY (both): features checked above; slices sized n_rep * hd.
            let best = best_of_5(&mut || unsafe {
                gathered_decode(kernels, &t, &q, n_rep, &mut s, &mut out)
            });
            let direct = best_of_5(&mut || unsafe {
                super::super::decode_f16::attend_decode(
                    kernels, &t, &q, n_rep, 0.125, &mut s, &mut out,
                )
            });
            eprintln!(
                "n_ctx {n_ctx:>5}: direct from f16 (decode_f16) {:7.2} us per call",
                direct * 1e6
            );
            eprintln!(
                "n_ctx {n_ctx:>5}: {:7.2} us per call, {:5.2} ns per position",
                best * 1e6,
                best * 1e9 / n_ctx as f64
            );
            // A prompt row: the chunk's context is converted once for all its rows.
            // SAFETY: as above.
            unsafe { gather(&t, &mut s) };
            let prompt = best_of_5(&mut || unsafe {
                attend_gathered(
                    kernels,
                    hd,
                    &q,
                    n_rep,
                    0.125,
                    Arith::Prompt,
                    n_ctx,
                    &mut s,
                    &mut out,
                )
            });
            eprintln!(
                "n_ctx {n_ctx:>5}: prompt row over the gathered context {:7.2} us per call",
                prompt * 1e6
            );
        }
    }
}
