//! Portable reference kernels: the ground truth every SIMD kernel is tested against, and the
//! fallback on CPUs without AVX2. Integer partial sums are exact; floats follow ggml's
//! generic C code (one f32 accumulator, per-block scale product).

use super::blocks::{bf16_to_f32, f16_at, f32_at, q6_value, scale_min_k4, QK_K};
use crate::GgmlType;

/// Dot product of one weight row of type `w_ty` with its activation row (`n` elements).
pub(crate) fn vec_dot(w_ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    match w_ty {
        GgmlType::Q4_0 => dot_q4_0(w, a),
        GgmlType::Q4_1 => dot_q4_1(w, a),
        GgmlType::Q8_0 => dot_q8_0(w, a),
        GgmlType::Q4K => dot_q4_k(w, a),
        GgmlType::Q6K => dot_q6_k(w, a),
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => dot_float(w_ty, n, w, a),
        other => panic!("programming error: {other:?} is not a weight type"),
    }
}

/// Σ (q-8)·a per block times d_w·d_a.
fn dot_q4_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (wb, ab) in w.chunks_exact(18).zip(a.chunks_exact(34)) {
        let mut sumi = 0i32;
        for j in 0..16 {
            let q0 = (wb[2 + j] & 0xF) as i32 - 8;
            let q1 = (wb[2 + j] >> 4) as i32 - 8;
            sumi += q0 * (ab[2 + j] as i8 as i32) + q1 * (ab[18 + j] as i8 as i32);
        }
        sumf += sumi as f32 * (f16_at(wb, 0) * f16_at(ab, 0));
    }
    sumf
}

/// d_w·d_a·Σ q·a + m_w·s_a per block (s_a = d_a·Σ a carries the min term).
fn dot_q4_1(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (wb, ab) in w.chunks_exact(20).zip(a.chunks_exact(36)) {
        let mut sumi = 0i32;
        for j in 0..16 {
            let q0 = (wb[4 + j] & 0xF) as i32;
            let q1 = (wb[4 + j] >> 4) as i32;
            sumi += q0 * (ab[4 + j] as i8 as i32) + q1 * (ab[20 + j] as i8 as i32);
        }
        sumf += (f16_at(wb, 0) * f16_at(ab, 0)) * sumi as f32 + f16_at(wb, 2) * f16_at(ab, 2);
    }
    sumf
}

/// Σ q_w·q_a per block times d_w·d_a.
fn dot_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (wb, ab) in w.chunks_exact(34).zip(a.chunks_exact(34)) {
        let sumi: i32 = wb[2..]
            .iter()
            .zip(&ab[2..])
            .map(|(&x, &y)| (x as i8 as i32) * (y as i8 as i32))
            .sum();
        sumf += sumi as f32 * (f16_at(wb, 0) * f16_at(ab, 0));
    }
    sumf
}

/// Per super-block: d·d_a·Σ_j sc_j Σ q·a − dmin·d_a·Σ_j m_j·bsum_j.
fn dot_q4_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (wb, ab) in w.chunks_exact(144).zip(a.chunks_exact(292)) {
        let da = f32_at(ab, 0);
        let scales = &wb[4..16];
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, scales);
            let qs = &wb[16 + 32 * (j / 2)..48 + 32 * (j / 2)];
            let aq = &ab[4 + 32 * j..36 + 32 * j];
            let mut s = 0i32;
            for l in 0..32 {
                let q = if j % 2 == 0 { qs[l] & 0xF } else { qs[l] >> 4 };
                s += q as i32 * (aq[l] as i8 as i32);
            }
            sumi += sc as i32 * s;
            let bs = |g: usize| i16::from_le_bytes([ab[260 + 2 * g], ab[261 + 2 * g]]) as i32;
            summ += m as i32 * (bs(2 * j) + bs(2 * j + 1));
        }
        sumf += da * f16_at(wb, 0) * sumi as f32 - da * f16_at(wb, 2) * summ as f32;
    }
    sumf
}

/// Per super-block: d·d_a·Σ_g sc_g Σ (q−32)·a over 16 groups of 16.
fn dot_q6_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (wb, ab) in w.chunks_exact(210).zip(a.chunks_exact(292)) {
        let mut sumi = 0i32;
        for half in 0..2 {
            let ql = &wb[64 * half..64 * half + 64];
            let qh = &wb[128 + 32 * half..160 + 32 * half];
            for k in 0..4 {
                for g in 0..2 {
                    let sc = wb[192 + 8 * half + 2 * k + g] as i8 as i32;
                    let mut s = 0i32;
                    for l in 16 * g..16 * g + 16 {
                        let q = q6_value(ql, qh, k, l) as i32 - 32;
                        let y = ab[4 + 128 * half + 32 * k + l] as i8 as i32;
                        s += q * y;
                    }
                    sumi += sc * s;
                }
            }
        }
        sumf += f16_at(wb, 208) * f32_at(ab, 0) * sumi as f32;
    }
    debug_assert_eq!(w.len() / 210 * QK_K, a.len() / 292 * QK_K);
    sumf
}

/// F32 / F16 / BF16 weights against f32 activations.
fn dot_float(w_ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0f32;
    for i in 0..n {
        let x = match w_ty {
            GgmlType::F32 => f32_at(w, 4 * i),
            GgmlType::F16 => f16_at(w, 2 * i),
            _ => bf16_to_f32(u16::from_le_bytes([w[2 * i], w[2 * i + 1]])),
        };
        sum += x * f32_at(a, 4 * i);
    }
    sum
}

/// Scalar f32 dot product.
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Scalar `y += alpha * x`.
pub(crate) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// f16 bits to f32, element-wise.
pub(crate) fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_bits(s).to_f32();
    }
}

/// f32 to f16 bits (round to nearest even), element-wise.
pub(crate) fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_f32(s).to_bits();
    }
}
