//! The AVX2 + FMA + F16C building blocks of paged attention, organised for the cache and
//! bitwise equal to the portable body in `attention.rs`.
//!
//! The portable body walks positions once and, for every position, updates each query head's
//! value accumulators in memory: with llama.cpp's decode order that is 64 lane slots x
//! `head_dim` floats per head (48 KiB for three heads, more than L1), then folds the slots one
//! scalar at a time. The fast paths are built from the pieces here:
//!
//! - [`gather`]: a run's context, K and V blocks, converted to f32 once per call, a few blocks
//!   prefetched ahead (the blocks are scattered, so the hardware prefetcher cannot follow
//!   them); `run_tile` then attends the run's rows over it, and a run of one decode row,
//!   which has no other rows to share the conversion with, takes `decode_f16` instead;
//! - [`dots4`]: four keys' scores per call, the reductions transposed;
//! - [`fold_slots`]: the slot fold (`(a0 + a2) + (a1 + a3)`, then the 16-lane halving tree)
//!   on 8 output dimensions per instruction instead of one.
//!
//! Every float goes through the same operations in the same order as in the portable body, so
//! results do not change by a bit (the tests compare the two). Hand-written because this is
//! the hot path of batched decoding and prefill.

use std::arch::x86_64::*;

use super::{Arith, AttnScratch, AttnTarget, LANES};

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
/// number of `run_tile::attend_rows` calls with contexts up to `t.n_ctx` (the rows of one prompt
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
    use super::super::{run_tile, simd};
    use super::*;
    use crate::kv::{KvCache, KvShape};
    use crate::quant::Kernels;

    fn ok() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    /// The bit patterns of `v`, for exact comparisons with readable failures.
    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Deterministic pseudo-random values in about [-2, 2).
    fn noise(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
    }

    /// Decode attention through the run path: [`gather`], then `run_tile::attend_rows`.
    ///
    /// Safety: AVX2 + FMA + F16C; as `run_tile::attend_rows`.
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
        run_tile::attend_rows(
            k,
            hd,
            1,
            t.n_ctx,
            |_| q,
            // SAFETY: one row, so the one output is handed out once.
            |_| unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr(), out.len()) },
            n_rep,
            0.125,
            Arith::Decode,
            s,
        );
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
                for arith in [Arith::Prompt, Arith::Decode] {
                    let t = AttnTarget {
                        kv: &kv,
                        layer: 1,
                        kv_head: 1,
                        block_table: &table,
                        n_ctx,
                    };
                    // A run of `rows` rows ending at `n_ctx` (a prompt chunk, or a
                    // verification), every row against the portable body on its own.
                    for rows in [1usize, 2, 3, 4, 5, 9].into_iter().filter(|&r| r <= n_ctx) {
                        let first = n_ctx + 1 - rows;
                        let qs: Vec<Vec<f32>> = (0..rows)
                            .map(|_| (0..n_rep * hd).map(|_| noise(&mut seed) * 3.0).collect())
                            .collect();
                        let nq = n_rep * hd;
                        let mut got = vec![0f32; rows * nq];
                        let base = got.as_mut_ptr();
                        let mut s = AttnScratch::default();
                        // Dirty scratch on purpose: the fast path must not depend on it.
                        // SAFETY: features checked above; row i's output is its own nq
                        // floats of `got`; the gathered context covers the last row's.
                        unsafe {
                            gather(&t, &mut s);
                            run_tile::attend_rows(
                                kernels,
                                hd,
                                rows,
                                first,
                                |i| &qs[i][..],
                                |i| std::slice::from_raw_parts_mut(base.add(i * nq), nq),
                                n_rep,
                                0.125,
                                arith,
                                &mut s,
                            );
                        }
                        for (i, (qi, gi)) in qs.iter().zip(got.chunks(nq)).enumerate() {
                            let row_t = AttnTarget {
                                n_ctx: first + i,
                                ..t
                            };
                            let mut want = vec![0f32; n_rep * hd];
                            super::super::attend_group_impl::<false>(
                                kernels, &row_t, qi, n_rep, 0.125, arith, &mut s, &mut want,
                            );
                            assert_eq!(
                                bits(gi),
                                bits(&want),
                                "hd {hd} n_rep {n_rep} n_ctx {n_ctx} rows {rows} row {i} {arith:?}"
                            );
                        }
                    }
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
                    let what = format!("bs {bs} n_rep {n_rep} n_ctx {n_ctx}");
                    assert_eq!(bits(&got), bits(&want), "{what}");
                    assert_eq!(bits(&got), bits(&portable), "{what} (portable body)");
                }
            }
        }
    }

    /// Time of one decode attention call of 3 query heads over contexts of 100-2000 positions,
    /// read directly from f16 (`decode_f16`) and gathered first (gather + attend), and per row
    /// of a 16-row prompt chunk over an already gathered context, best of 5 (the machine may be
    /// shared):
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
            // A prompt chunk of 16 rows ending at `n_ctx`: its context is converted once.
            let rows = 16;
            let qs: Vec<f32> = (0..rows * n_rep * hd).map(|_| noise(&mut seed)).collect();
            let mut outs = vec![0f32; rows * n_rep * hd];
            let nq = n_rep * hd;
            // SAFETY: as above.
            unsafe { gather(&t, &mut s) };
            let prompt = best_of_5(&mut || unsafe {
                let base = outs.as_mut_ptr();
                run_tile::attend_rows(
                    kernels,
                    hd,
                    rows,
                    n_ctx + 1 - rows,
                    |i| &qs[i * nq..(i + 1) * nq],
                    |i| std::slice::from_raw_parts_mut(base.add(i * nq), nq),
                    n_rep,
                    0.125,
                    Arith::Prompt,
                    &mut s,
                )
            }) / rows as f64;
            eprintln!(
                "n_ctx {n_ctx:>5}: prompt rows (a chunk of 16) {:7.2} us per row",
                prompt * 1e6
            );
        }
    }
}
