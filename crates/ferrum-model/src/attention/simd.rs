//! AVX2 + FMA versions of attention's inner loops: the two score dot products, ggml's `expf`
//! on 8 lanes, the softmax and SwiGLU built on it. Each is bitwise equal to its scalar
//! counterpart in `attention.rs` (the compiler does not vectorize those: their lane orders
//! are not plain reductions), which the tests check.
//!
//! Every lane runs the scalar routine's exact operations (the same fused multiply-adds in the
//! same order); `expf` lanes whose exponent leaves the single-step scaling range (|x| beyond
//! ~87) are redone by the scalar routine.

use std::arch::x86_64::*;

use super::ggml_expf;

/// 16 lanes as two 8-lane halves.
type V16 = (__m256, __m256);

/// Loads 16 floats.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn ld16(p: *const f32) -> V16 {
    (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
}

/// `fma(x, y, acc)` on 16 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma16(x: V16, y: V16, acc: V16) -> V16 {
    (
        _mm256_fmadd_ps(x.0, y.0, acc.0),
        _mm256_fmadd_ps(x.1, y.1, acc.1),
    )
}

/// [`super::tree16`] of 16 lanes: hi + lo, then 8 -> 4 -> 2 -> 1.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tree16(v: V16) -> f32 {
    crate::quant::hsum8_avx2(_mm256_add_ps(v.1, v.0))
}

/// [`super::dot_vec`]: 4 accumulators of 16 lanes over steps of 64, folded (0+2)+(1+3),
/// reduced by the tree, leftovers added in f64.
///
/// Safety: AVX2 + FMA; `x.len() == y.len()`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dot_vec(x: &[f32], y: &[f32]) -> f32 {
    let z = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut acc = [z; 4];
    let np = x.len() / 64 * 64;
    let (xp, yp) = (x.as_ptr(), y.as_ptr());
    let mut i = 0;
    while i < np {
        for (a, acc) in acc.iter_mut().enumerate() {
            let o = i + 16 * a;
            *acc = fma16(ld16(xp.add(o)), ld16(yp.add(o)), *acc);
        }
        i += 64;
    }
    let add = |p: V16, q: V16| (_mm256_add_ps(p.0, q.0), _mm256_add_ps(p.1, q.1));
    let x0 = add(add(acc[0], acc[2]), add(acc[1], acc[3]));
    let mut sum = tree16(x0) as f64;
    for k in np..x.len() {
        sum += (x[k] * y[k]) as f64;
    }
    sum as f32
}

/// [`super::dot_gemm`]: one 16-lane FMA chain over whole chunks of 16, then the tree.
///
/// Safety: AVX2 + FMA; `x.len() == y.len()`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dot_gemm(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (xp, yp) = (x.as_ptr(), y.as_ptr());
    for c in 0..x.len() / 16 {
        acc = fma16(ld16(xp.add(16 * c)), ld16(yp.add(16 * c)), acc);
    }
    tree16(acc)
}

/// `ggml_expf` of each lane.
///
/// Safety: AVX2 + FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn expf8(x: __m256) -> __m256 {
    let r = _mm256_set1_ps(f32::from_bits(0x4b40_0000));
    let z = _mm256_fmadd_ps(x, _mm256_set1_ps(f32::from_bits(0x3fb8_aa3b)), r);
    let n = _mm256_sub_ps(z, r);
    let b = _mm256_fnmadd_ps(
        n,
        _mm256_set1_ps(f32::from_bits(0x35bf_be8e)),
        _mm256_fnmadd_ps(n, _mm256_set1_ps(f32::from_bits(0x3f31_7200)), x),
    );
    let u = _mm256_mul_ps(b, b);
    let c = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(
            _mm256_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
            u,
            _mm256_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
        ),
        u,
        _mm256_fmadd_ps(c(0x3f7f_fff6), b, _mm256_set1_ps(1.0)),
    );
    // Fast path: -126 <= n <= 127 (and not NaN) scales by one exact power of two.
    let in_range = _mm256_and_ps(
        _mm256_cmp_ps::<_CMP_GE_OQ>(n, _mm256_set1_ps(-126.0)),
        _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_set1_ps(127.0)),
    );
    let ni = _mm256_cvtps_epi32(n);
    let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        ni,
        _mm256_set1_epi32(127),
    )));
    let y = _mm256_mul_ps(j, pow2);
    if _mm256_movemask_ps(in_range) == 0xFF {
        return y;
    }
    let mut xs = [0f32; 8];
    _mm256_storeu_ps(xs.as_mut_ptr(), x);
    _mm256_loadu_ps(xs.map(ggml_expf).as_ptr())
}

/// Softmax of one row of attention scores as llama.cpp computes it: `expf(x - max)`, the sum
/// in f64 over 16-wide chunks each reduced by a halving tree, then scaled by `1 / sum`.
///
/// Safety: AVX2 + FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn softmax(sc: &mut [f32]) {
    let max = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mv = _mm256_set1_ps(max);
    let mut sum = 0f64;
    let mut chunks = sc.chunks_exact_mut(16);
    for ch in &mut chunks {
        let p = ch.as_mut_ptr();
        let lo = expf8(_mm256_sub_ps(_mm256_loadu_ps(p), mv));
        let hi = expf8(_mm256_sub_ps(_mm256_loadu_ps(p.add(8)), mv));
        _mm256_storeu_ps(p, lo);
        _mm256_storeu_ps(p.add(8), hi);
        // The halving tree over 16 lanes: hi + lo, then 8 -> 4 -> 2 -> 1.
        sum += tree16((lo, hi)) as f64;
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut lanes = [0f32; 16];
        for (l, x) in tail.iter_mut().enumerate() {
            *x = ggml_expf(*x - max);
            lanes[l] = *x;
        }
        sum += super::tree16(&lanes) as f64;
    }
    let inv = (1.0 / sum) as f32;
    let iv = _mm256_set1_ps(inv);
    let mut chunks = sc.chunks_exact_mut(8);
    for ch in &mut chunks {
        let p = ch.as_mut_ptr();
        _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), iv));
    }
    for x in chunks.into_remainder() {
        *x *= inv;
    }
}

/// `gate[i] = gate[i] / (1 + expf(-gate[i])) * up[i]` (ggml's SiLU times the up projection).
///
/// Safety: AVX2 + FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let one = _mm256_set1_ps(1.0);
    let zero = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let g = _mm256_loadu_ps(gate.as_ptr().add(i));
        let u = _mm256_loadu_ps(up.as_ptr().add(i));
        let e = expf8(_mm256_sub_ps(zero, g));
        let y = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u);
        _mm256_storeu_ps(gate.as_mut_ptr().add(i), y);
        i += 8;
    }
    for k in i..n {
        gate[k] = gate[k] / (1.0 + ggml_expf(0.0 - gate[k])) * up[k];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avx2() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    #[test]
    fn expf8_is_bitwise_the_scalar_expf() {
        if !avx2() {
            eprintln!("skipped: no AVX2+FMA here");
            return;
        }
        let mut xs: Vec<f32> = (-24000..2000).map(|i| i as f32 * 0.0073).collect();
        xs.extend([
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            -0.0,
            88.7,
            -103.9,
            1e-30,
        ]);
        while !xs.len().is_multiple_of(8) {
            xs.push(0.5);
        }
        for ch in xs.chunks_exact(8) {
            let mut got = [0f32; 8];
            // SAFETY: AVX2 + FMA detected above.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), expf8(_mm256_loadu_ps(ch.as_ptr()))) };
            for (g, &x) in got.iter().zip(ch) {
                let want = ggml_expf(x);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "{x}: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn vector_dots_match_scalar_bits() {
        if !avx2() {
            eprintln!("skipped: no AVX2+FMA here");
            return;
        }
        for len in [16usize, 48, 64, 80, 128, 200] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 29 % 97) as f32 - 48.0) * 0.013)
                .collect();
            let y: Vec<f32> = (0..len)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) * 0.77)
                .collect();
            // SAFETY: AVX2 + FMA detected above; equal lengths.
            let (v, g) = unsafe { (dot_vec(&x, &y), dot_gemm(&x, &y)) };
            assert_eq!(
                v.to_bits(),
                super::super::dot_vec(&x, &y).to_bits(),
                "dot_vec len {len}"
            );
            assert_eq!(
                g.to_bits(),
                super::super::dot_gemm(&x, &y).to_bits(),
                "dot_gemm len {len}"
            );
        }
    }

    #[test]
    fn vector_softmax_and_swiglu_match_scalar_bits() {
        if !avx2() {
            eprintln!("skipped: no AVX2+FMA here");
            return;
        }
        for len in [1usize, 7, 16, 17, 40, 333] {
            let row: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37)
                .collect();
            let mut want = row.clone();
            super::super::softmax_scalar(&mut want);
            let mut got = row.clone();
            // SAFETY: AVX2 + FMA detected above.
            unsafe { softmax(&mut got) };
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "len {len}"
            );
            let up: Vec<f32> = (0..len).map(|i| (i as f32 - 3.0) * 0.11).collect();
            let mut g1 = row.clone();
            let mut g2 = row.clone();
            for (g, u) in g1.iter_mut().zip(&up) {
                *g = *g / (1.0 + ggml_expf(0.0 - *g)) * u;
            }
            // SAFETY: as above.
            unsafe { swiglu(&mut g2, &up) };
            assert_eq!(
                g1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                g2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "swiglu len {len}"
            );
        }
    }
}
