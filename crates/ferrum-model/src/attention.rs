//! Attention of query heads over one sequence's paged f16 KV blocks, reproducing llama.cpp's
//! CPU arithmetic.
//!
//! Why reproduce it: activations are re-quantized to 8 bits before every matmul, so a
//! difference in the last bit of an attention output can flip a rounding and grow, layer by
//! layer, into logit differences of a few tenths. Agreeing with llama.cpp within the golden
//! tolerances therefore means doing attention with its rounding and its summation order:
//!
//! - the query is rounded to f16 (ggml converts it to the K cache's type);
//! - scores: prompt tokens use the order of llama.cpp's batched f16 GEMM (tinyBLAS, 16 lanes,
//!   one FMA chain per lane, then a halving tree); generated tokens use the order of
//!   `ggml_vec_dot_f16` (4 x 16-lane accumulators, folded, then the same tree), both for
//!   AVX-512 builds;
//! - softmax with ggml's vectorized `expf`, the sum in f64 by chunks of 16, probabilities
//!   rounded to f16;
//! - values accumulated over positions in the same two lane orders.
//!
//! A query's result depends only on its own vector, its sequence's KV and whether it is a
//! prompt or a generated token, never on other rows of the batch. Hand-written because it is
//! on the hot path and reads the paged layout directly; the inner loops are plain arrays that
//! the compiler vectorizes with FMA when the CPU has it.

#[cfg(target_arch = "x86_64")]
mod decode_f16;
#[cfg(target_arch = "x86_64")]
mod paged_avx2;
#[cfg(target_arch = "x86_64")]
mod run_tile;
#[cfg(target_arch = "x86_64")]
mod simd;
/// SwiGLU on AVX2 + FMA lanes, bitwise equal to the scalar loop (it shares ggml's `expf`).
#[cfg(target_arch = "x86_64")]
pub(crate) use simd::swiglu as swiglu_avx2;

use crate::kv::KvCache;
use crate::quant::Kernels;

/// Lanes of the reproduced SIMD width (AVX-512: 16 f32).
const LANES: usize = 16;
/// Accumulators `ggml_vec_dot_f16` keeps (its step is 4 vectors).
const ACCS: usize = 4;

/// Which of llama.cpp's two CPU attention orders to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    /// Batched prompt evaluation (llama.cpp's GEMM path).
    Prompt,
    /// One generated token at a time (llama.cpp's dot-product path).
    Decode,
}

/// Where one group of query heads attends.
#[derive(Clone, Copy)]
pub(crate) struct AttnTarget<'a> {
    /// The KV pool.
    pub kv: &'a KvCache,
    /// Layer index.
    pub layer: usize,
    /// The KV head shared by the group.
    pub kv_head: usize,
    /// The sequence's block table.
    pub block_table: &'a [u32],
    /// Positions `0..n_ctx` are attended (causal: the query's own position + 1).
    pub n_ctx: usize,
}

/// Per-thread buffers, grown to the longest context seen.
#[derive(Default)]
pub(crate) struct AttnScratch {
    q: Vec<f32>,
    scores: Vec<f32>,
    kf: Vec<f32>,
    vf: Vec<f32>,
    vacc: Vec<f32>,
    bits: Vec<u16>,
    /// Addresses of a context's V rows (the decode path reads them in slot order).
    vrows: Vec<usize>,
    /// One slot's probabilities for a tile of rows, position-major (`run_tile`).
    pt: Vec<f32>,
    /// A tile's outputs before they are copied to each row (`run_tile`).
    tile_out: Vec<f32>,
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// Computes `out[r] = softmax(q[r] . K^T * scale) . V` for the `n_rep` query heads in `q`
/// (each `head_dim` long) with the portable body: the path [`attend_run`] takes when the
/// paged AVX2 path does not apply.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_group(
    k: &Kernels,
    t: &AttnTarget<'_>,
    q: &[f32],
    n_rep: usize,
    scale: f32,
    arith: Arith,
    s: &mut AttnScratch,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if fma_ok() {
        // SAFETY: AVX2 and FMA were detected at run time.
        unsafe { attend_group_fma(k, t, q, n_rep, scale, arith, s, out) };
        return;
    }
    attend_group_impl::<false>(k, t, q, n_rep, scale, arith, s, out);
}

/// Attends `rows` query rows of one sequence at consecutive positions, the last of which sees
/// `t.n_ctx` positions (row `i` sees `t.n_ctx - rows + 1 + i`); `q_row(i)` and `out_row(i)`
/// give each row's `n_rep` query heads and their output. Results are bit for bit those of
/// [`attend_group`] per row; on the AVX2 path the run's context is converted from f16 once
/// instead of once per row, which is most of the attention cost of a prompt chunk, its rows
/// are attended a few at a time so they share every read of it (`run_tile`), and a single
/// decode row reads the f16 blocks directly (`decode_f16`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_run<'a, 'b>(
    k: &Kernels,
    t: &AttnTarget<'_>,
    rows: usize,
    q_row: impl Fn(usize) -> &'a [f32],
    mut out_row: impl FnMut(usize) -> &'b mut [f32],
    n_rep: usize,
    scale: f32,
    arith: Arith,
    s: &mut AttnScratch,
) {
    let first_ctx = t.n_ctx + 1 - rows;
    #[cfg(target_arch = "x86_64")]
    if f16c_ok() && paged_avx2::supports(t.kv.shape().head_dim) {
        let hd = t.kv.shape().head_dim;
        if rows == 1 && arith == Arith::Decode && decode_f16::supports(hd, t.kv.block_size()) {
            // One decode row: read the f16 blocks directly instead of converting them first.
            // SAFETY: AVX2, FMA and F16C were detected; the shapes pass `supports`; the
            // engine's block table covers the context and q / out hold `n_rep` heads.
            unsafe { decode_f16::attend_decode(k, t, q_row(0), n_rep, scale, s, out_row(0)) };
            return;
        }
        // SAFETY: AVX2, FMA and F16C were detected at run time; the head size is supported;
        // every row's context is within the gathered `t.n_ctx` positions.
        unsafe {
            paged_avx2::gather(t, s);
            run_tile::attend_rows(
                k, hd, rows, first_ctx, q_row, out_row, n_rep, scale, arith, s,
            );
        }
        return;
    }
    for i in 0..rows {
        let row_target = AttnTarget {
            n_ctx: first_ctx + i,
            ..*t
        };
        attend_group(k, &row_target, q_row(i), n_rep, scale, arith, s, out_row(i));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_group_fma(
    k: &Kernels,
    t: &AttnTarget<'_>,
    q: &[f32],
    n_rep: usize,
    scale: f32,
    arith: Arith,
    s: &mut AttnScratch,
    out: &mut [f32],
) {
    attend_group_impl::<true>(k, t, q, n_rep, scale, arith, s, out);
}

#[cfg(target_arch = "x86_64")]
fn fma_ok() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(target_arch = "x86_64")]
fn f16c_ok() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| fma_ok() && is_x86_feature_detected!("f16c"))
}

/// Rounds each value to the nearest f16 and back.
#[inline(always)]
fn round_f16(k: &Kernels, xs: &mut [f32], bits: &mut Vec<u16>) {
    if bits.len() < xs.len() {
        bits.resize(xs.len(), 0);
    }
    let b = &mut bits[..xs.len()];
    k.f32_to_f16(xs, b);
    k.f16_to_f32(b, xs);
}

/// ggml's `_mm512_reduce_add_ps` order: halve 16 -> 8 -> 4 -> 2 -> 1.
#[inline(always)]
fn tree16(a: &[f32; LANES]) -> f32 {
    let mut b = [0f32; 8];
    for i in 0..8 {
        b[i] = a[i + 8] + a[i];
    }
    let c = [b[4] + b[0], b[5] + b[1], b[6] + b[2], b[7] + b[3]];
    let d0 = c[0] + c[2];
    let d1 = c[1] + c[3];
    d0 + d1
}

/// Dot product in the order of llama.cpp's batched f16 GEMM: lane `i % 16` chains FMAs.
#[inline(always)]
fn dot_gemm(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for (xc, yc) in x.chunks_exact(LANES).zip(y.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] = xc[l].mul_add(yc[l], acc[l]);
        }
    }
    tree16(&acc)
}

/// Dot product in the order of `ggml_vec_dot_f16`: 4 accumulators of 16 lanes over steps of
/// 64, folded (0+2, 1+3, 0+1), reduced, then leftovers added in f64.
#[inline(always)]
fn dot_vec(x: &[f32], y: &[f32]) -> f32 {
    let step = LANES * ACCS;
    let np = x.len() / step * step;
    let mut acc = [[0f32; LANES]; ACCS];
    for i in (0..np).step_by(step) {
        for (a, accv) in acc.iter_mut().enumerate() {
            let o = i + a * LANES;
            for l in 0..LANES {
                accv[l] = x[o + l].mul_add(y[o + l], accv[l]);
            }
        }
    }
    let mut sum = fold_accs(&acc) as f64;
    for i in np..x.len() {
        sum += (x[i] * y[i]) as f64;
    }
    sum as f32
}

#[inline(always)]
fn fold_accs(acc: &[[f32; LANES]; ACCS]) -> f32 {
    let mut x0 = [0f32; LANES];
    for l in 0..LANES {
        let a = acc[0][l] + acc[2][l];
        let b = acc[1][l] + acc[3][l];
        x0[l] = a + b;
    }
    tree16(&x0)
}

/// ggml's vectorized `expf` (the AVX-512 variant), element by element.
#[inline(always)]
pub(crate) fn ggml_expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000);
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r);
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),
        (-n).mul_add(f32::from_bits(0x3f31_7200), x),
    );
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010)
        .mul_add(b, f32::from_bits(0x3d2b_9f17))
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)),
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0));
    if n.abs() > 192.0 || n.is_nan() {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // scalef: j * 2^n for the integral n in [-192, 192], in two exact steps when out of range.
    let ni = n as i32;
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    if ni < -126 {
        j * pow2(-126) * pow2(ni + 126)
    } else if ni > 127 {
        j * pow2(127) * pow2(ni - 127)
    } else {
        j * pow2(ni)
    }
}

/// Softmax in llama.cpp's order: ggml's expf, the sum in f64 over 16-wide chunks each reduced
/// by [`tree16`], then scaled by `1 / sum`.
fn softmax_scalar(sc: &mut [f32]) {
    let max = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for chunk in sc.chunks_mut(LANES) {
        let mut lanes = [0f32; LANES];
        for (l, x) in chunk.iter_mut().enumerate() {
            *x = ggml_expf(*x - max);
            lanes[l] = *x;
        }
        sum += tree16(&lanes) as f64;
    }
    let inv = (1.0 / sum) as f32;
    for x in sc.iter_mut() {
        *x *= inv;
    }
}

/// The attention body; `SIMD` is true only when called from a function compiled for (and
/// gated on) AVX2 + FMA, which lets it use the hand-vectorized softmax.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_group_impl<const SIMD: bool>(
    k: &Kernels,
    t: &AttnTarget<'_>,
    q: &[f32],
    n_rep: usize,
    scale: f32,
    arith: Arith,
    s: &mut AttnScratch,
    out: &mut [f32],
) {
    let hd = t.kv.shape().head_dim;
    let bs = t.kv.block_size();
    let n_ctx = t.n_ctx;
    // The GEMM order needs whole lanes; llama.cpp falls back to the dot path otherwise.
    let arith = if !hd.is_multiple_of(LANES) {
        Arith::Decode
    } else {
        arith
    };
    grow(&mut s.q, n_rep * hd);
    s.q[..n_rep * hd].copy_from_slice(&q[..n_rep * hd]);
    round_f16(k, &mut s.q[..n_rep * hd], &mut s.bits);
    grow(&mut s.scores, n_rep * n_ctx);
    grow(&mut s.kf, bs * hd);
    grow(&mut s.vf, bs * hd);

    // Scores.
    for (bi, &block) in t.block_table.iter().enumerate() {
        let first = bi * bs;
        if first >= n_ctx {
            break;
        }
        let n_here = bs.min(n_ctx - first);
        let kb = t.kv.k_block(t.layer, block as usize, t.kv_head);
        k.f16_to_f32(&kb[..n_here * hd], &mut s.kf[..n_here * hd]);
        for slot in 0..n_here {
            let krow = &s.kf[slot * hd..(slot + 1) * hd];
            for r in 0..n_rep {
                let qr = &s.q[r * hd..(r + 1) * hd];
                let dot = match (arith, SIMD) {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: SIMD is only true in the AVX2 + FMA build of this body.
                    (Arith::Prompt, true) => unsafe { simd::dot_gemm(krow, qr) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    (Arith::Decode, true) => unsafe { simd::dot_vec(krow, qr) },
                    (Arith::Prompt, _) => dot_gemm(krow, qr),
                    (Arith::Decode, _) => dot_vec(krow, qr),
                };
                s.scores[r * n_ctx + first + slot] = dot * scale;
            }
        }
    }
    // Softmax per head: ggml's expf, f64 sum of 16-wide chunks, probabilities to f16.
    for r in 0..n_rep {
        let sc = &mut s.scores[r * n_ctx..(r + 1) * n_ctx];
        #[cfg(target_arch = "x86_64")]
        if SIMD {
            // SAFETY: SIMD is only true in the AVX2 + FMA build of this body.
            unsafe { simd::softmax(sc) };
        } else {
            softmax_scalar(sc);
        }
        #[cfg(not(target_arch = "x86_64"))]
        softmax_scalar(sc);
        round_f16(k, sc, &mut s.bits);
    }
    // Values: lane (and accumulator) chosen by position, chains over positions.
    let n_acc = match arith {
        Arith::Prompt => 1,
        Arith::Decode => ACCS,
    };
    let acc_len = n_acc * LANES * hd;
    grow(&mut s.vacc, n_rep * acc_len);
    // Accumulator slot `j` (< n_acc * LANES) is first touched by position `j`, which writes
    // `fma(v, p, 0)` instead of reading it; only slots no position reaches need zeroing. (A
    // 48 KiB memset per query row was a tenth of batched decode time.)
    let first_touch = n_acc * LANES;
    for r in 0..n_rep {
        let base = r * acc_len;
        s.vacc[base + n_ctx.min(first_touch) * hd..base + acc_len].fill(0.0);
    }
    for (bi, &block) in t.block_table.iter().enumerate() {
        let first = bi * bs;
        if first >= n_ctx {
            break;
        }
        let n_here = bs.min(n_ctx - first);
        let vb = t.kv.v_block(t.layer, block as usize, t.kv_head);
        k.f16_to_f32(&vb[..n_here * hd], &mut s.vf[..n_here * hd]);
        for slot in 0..n_here {
            let j = first + slot;
            let lane = j % LANES;
            let a = (j / LANES) % n_acc;
            let vrow = &s.vf[slot * hd..(slot + 1) * hd];
            for r in 0..n_rep {
                let p = s.scores[r * n_ctx + j];
                let o = r * acc_len + (a * LANES + lane) * hd;
                let acc = &mut s.vacc[o..o + hd];
                if j < first_touch {
                    for d in 0..hd {
                        acc[d] = vrow[d].mul_add(p, 0.0);
                    }
                } else {
                    for d in 0..hd {
                        acc[d] = vrow[d].mul_add(p, acc[d]);
                    }
                }
            }
        }
    }
    for r in 0..n_rep {
        let accs = &s.vacc[r * acc_len..(r + 1) * acc_len];
        let o = &mut out[r * hd..(r + 1) * hd];
        for (d, od) in o.iter_mut().enumerate() {
            let at = |a: usize, l: usize| accs[(a * LANES + l) * hd + d];
            let mut x0 = [0f32; LANES];
            match arith {
                Arith::Prompt => {
                    for (l, x) in x0.iter_mut().enumerate() {
                        *x = at(0, l);
                    }
                }
                Arith::Decode => {
                    for (l, x) in x0.iter_mut().enumerate() {
                        *x = (at(0, l) + at(2, l)) + (at(1, l) + at(3, l));
                    }
                }
            }
            *od = tree16(&x0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_expf_is_close_to_exp() {
        for i in -2000..200 {
            let x = i as f32 * 0.05;
            let (a, b) = (ggml_expf(x), x.exp());
            assert!(
                (a - b).abs() <= 4.0 * f32::EPSILON * b.max(f32::MIN_POSITIVE),
                "{x}: {a} vs {b}"
            );
        }
        assert_eq!(ggml_expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(ggml_expf(-200.0), 0.0);
    }

    #[test]
    fn reduction_orders_sum_correctly() {
        let x: Vec<f32> = (0..200).map(|i| (i % 7) as f32 - 3.0).collect();
        let y: Vec<f32> = (0..200).map(|i| (i % 5) as f32 * 0.5).collect();
        let exact: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum();
        assert!((dot_vec(&x, &y) as f64 - exact).abs() < 1e-3);
        assert!(
            (dot_gemm(&x[..192], &y[..192]) as f64
                - x[..192]
                    .iter()
                    .zip(&y[..192])
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum::<f64>())
            .abs()
                < 1e-3
        );
    }
}
