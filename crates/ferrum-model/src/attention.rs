//! Attention of query heads over one sequence's paged f16 KV blocks.
//!
//! The query heads that share one KV head (grouped-query attention) are processed together so
//! each key and value row is converted from f16 once. Scores are computed in f32 against f16
//! keys, softmaxed with the max subtracted, and the values accumulated in f32. A query's result
//! depends only on its own vector and its sequence's KV, never on other rows of the batch.
//! Hand-written (with AVX2/F16C where present) because it is on the hot path and must read the
//! paged layout directly.

use half::f16;

use crate::kv::KvCache;

/// Where one group of query heads attends.
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

/// Computes `out[r] = softmax(q[r] . K^T * scale) . V` for the `n_rep` query heads in `q`
/// (each `head_dim` long). `scores` must hold `n_rep * n_ctx` floats.
pub(crate) fn attend_group(
    t: &AttnTarget<'_>,
    q: &[f32],
    n_rep: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = t.kv.shape().head_dim;
    let bs = t.kv.block_size();
    let n_ctx = t.n_ctx;
    let simd = simd_ok();
    // Pass 1: scores.
    for (bi, &block) in t.block_table.iter().enumerate() {
        let first = bi * bs;
        if first >= n_ctx {
            break;
        }
        let n_here = bs.min(n_ctx - first);
        let kb = t.kv.k_block(t.layer, block as usize, t.kv_head);
        for s in 0..n_here {
            let krow = &kb[s * hd..(s + 1) * hd];
            for r in 0..n_rep {
                let qr = &q[r * hd..(r + 1) * hd];
                scores[r * n_ctx + first + s] = dot_f16(simd, qr, krow) * scale;
            }
        }
    }
    // Softmax per head.
    for r in 0..n_rep {
        let sc = &mut scores[r * n_ctx..(r + 1) * n_ctx];
        let max = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for x in sc.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        for x in sc.iter_mut() {
            *x *= inv;
        }
    }
    // Pass 2: weighted values.
    out[..n_rep * hd].fill(0.0);
    for (bi, &block) in t.block_table.iter().enumerate() {
        let first = bi * bs;
        if first >= n_ctx {
            break;
        }
        let n_here = bs.min(n_ctx - first);
        let vb = t.kv.v_block(t.layer, block as usize, t.kv_head);
        for s in 0..n_here {
            let vrow = &vb[s * hd..(s + 1) * hd];
            for r in 0..n_rep {
                let p = scores[r * n_ctx + first + s];
                axpy_f16(simd, &mut out[r * hd..(r + 1) * hd], p, vrow);
            }
        }
    }
}

fn simd_ok() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[inline]
fn dot_f16(simd: bool, q: &[f32], k: &[f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd && q.len() % 8 == 0 {
        // SAFETY: AVX2, FMA and F16C were detected at run time.
        return unsafe { x86::dot_f16(q, k) };
    }
    let _ = simd;
    q.iter().zip(k).map(|(a, b)| a * b.to_f32()).sum()
}

#[inline]
fn axpy_f16(simd: bool, y: &mut [f32], a: f32, x: &[f16]) {
    #[cfg(target_arch = "x86_64")]
    if simd && y.len() % 8 == 0 {
        // SAFETY: AVX2, FMA and F16C were detected at run time.
        unsafe { x86::axpy_f16(y, a, x) };
        return;
    }
    let _ = simd;
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi.to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16(q: &[f32], k: &[f16]) -> f32 {
        let n = q.len().min(k.len());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let k0 = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i) as *const __m128i));
            let k1 = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i + 8) as *const __m128i));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), k0, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i + 8)), k1, acc1);
            i += 16;
        }
        while i + 8 <= n {
            let k0 = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i) as *const __m128i));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), k0, acc0);
            i += 8;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let lo = _mm256_castps256_ps128(acc);
        let hi = _mm256_extractf128_ps(acc, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy_f16(y: &mut [f32], a: f32, x: &[f16]) {
        let n = y.len().min(x.len());
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            let xv = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i) as *const __m128i));
            let yp = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(yp, _mm256_fmadd_ps(av, xv, _mm256_loadu_ps(yp)));
            i += 8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_f16_dot_and_axpy_agree_with_scalar() {
        let q: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 7.0)
            .collect();
        let k: Vec<f16> = (0..64)
            .map(|i| f16::from_f32(((i * 11 % 13) as f32 - 6.0) / 5.0))
            .collect();
        let scalar = dot_f16(false, &q, &k);
        let fast = dot_f16(simd_ok(), &q, &k);
        assert!(
            (scalar - fast).abs() <= 1e-4 * scalar.abs().max(1.0),
            "{scalar} vs {fast}"
        );
        let mut y1 = q.clone();
        let mut y2 = q.clone();
        axpy_f16(false, &mut y1, 0.3, &k);
        axpy_f16(simd_ok(), &mut y2, 0.3, &k);
        for (a, b) in y1.iter().zip(&y2) {
            assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
        }
    }
}
