//! Byte layouts of the GGML block formats, activation quantizers and dequantizers.
//!
//! Every layout matches ggml's `ggml-common.h` byte for byte (little-endian, packed):
//!
//! | type  | bytes | layout                                                               |
//! |-------|-------|----------------------------------------------------------------------|
//! | Q4_0  | 18    | f16 d, 16 B nibbles (byte j: elem j low, elem j+16 high); w=(q-8)d   |
//! | Q4_1  | 20    | f16 d, f16 m, 16 B nibbles; w = q*d + m                              |
//! | Q8_0  | 34    | f16 d, 32 i8; w = q*d                                                |
//! | Q8_1  | 36    | f16 d, f16 s (= d * sum q), 32 i8                                     |
//! | Q4_K  | 144   | f16 d, f16 dmin, 12 B packed 6-bit scales/mins, 128 B nibbles        |
//! | Q6_K  | 210   | 128 B low nibbles, 64 B high 2-bit pairs, 16 i8 scales, f16 d        |
//! | Q8_K  | 292   | f32 d, 256 i8, 16 i16 sums of 16                                     |
//!
//! The activation quantizers reproduce what llama.cpp runs on x86 so that our logits agree
//! with it: Q8_0 / Q8_1 follow ggml's AVX path (`d = amax/127`, multiply by `127/amax`,
//! round half to even) and Q8_K follows `quantize_row_q8_K_ref` (`iscale = -127/max`,
//! round half to even, clamp at 127).

/// Elements per block of the 32-element formats.
pub(crate) const QK: usize = 32;
/// Elements per k-quant super-block.
pub(crate) const QK_K: usize = 256;

/// Reads a little-endian f16 at `b[off..off + 2]` as f32 (exact).
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], off: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// Reads a little-endian f32 at `b[off..off + 4]`.
#[inline(always)]
pub(crate) fn f32_at(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Writes `v` rounded to f16 (nearest even, like F16C and ggml) at `b[off..off + 2]`.
#[inline(always)]
fn put_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
}

/// Unpacks the 6-bit scale and min of sub-block `j` (0..8) of a Q4_K block's 12 scale bytes.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Rounds half to even like `f32::round_ties_even`, for the |x| <= 2^22 (and NaN / infinite)
/// values the activation quantizers produce, without a libm `rintf` call (baseline x86-64 has
/// no SSE4.1 `roundss`). Adding and subtracting 1.5 * 2^23 rounds in the FPU's default
/// nearest-even mode; Rust never reassociates floats, so the pair is not folded away.
#[inline(always)]
pub(crate) fn round_ne(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    if x.abs() < 4_194_304.0 {
        // The sign must survive for -0.5 < x < 0 (round gives -0.0), though casts ignore it.
        ((x + MAGIC) - MAGIC).copysign(x)
    } else {
        x
    }
}

/// Quantizes blocks of 32 to Q8_0 (`with_sum == false`) or Q8_1 (`with_sum == true`).
pub(crate) fn quantize_q8_0_or_1(x: &[f32], out: &mut [u8], with_sum: bool) {
    let bsz = if with_sum { 36 } else { 34 };
    let qoff = if with_sum { 4 } else { 2 };
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(bsz)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        put_f16(ob, 0, d);
        let mut sum = 0i32;
        for (j, &v) in xb.iter().enumerate() {
            let q = round_ne(v * id) as i8;
            sum += q as i32;
            ob[qoff + j] = q as u8;
        }
        if with_sum {
            put_f16(ob, 2, d * sum as f32);
        }
    }
}

/// Quantizes super-blocks of 256 to Q8_K exactly as ggml's reference does.
pub(crate) fn quantize_q8_k(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(292)) {
        let mut amax = 0f32;
        let mut max = 0f32;
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            ob.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        for (j, &v) in xb.iter().enumerate() {
            let q = (round_ne(iscale * v) as i32).min(127);
            ob[4 + j] = q as i8 as u8;
        }
        for g in 0..16 {
            let s: i32 = ob[4 + 16 * g..4 + 16 * g + 16]
                .iter()
                .map(|&b| b as i8 as i32)
                .sum();
            ob[260 + 2 * g..262 + 2 * g].copy_from_slice(&(s as i16).to_le_bytes());
        }
        ob[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}

/// Dequantizes Q4_0 blocks.
pub(crate) fn dequant_q4_0(src: &[u8], out: &mut [f32]) {
    for (b, o) in src.chunks_exact(18).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        for j in 0..16 {
            o[j] = ((b[2 + j] & 0xF) as i32 - 8) as f32 * d;
            o[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Dequantizes Q4_1 blocks.
pub(crate) fn dequant_q4_1(src: &[u8], out: &mut [f32]) {
    for (b, o) in src.chunks_exact(20).zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        for j in 0..16 {
            o[j] = (b[4 + j] & 0xF) as f32 * d + m;
            o[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
        }
    }
}

/// Dequantizes Q8_0 (`qoff == 2`, 34-byte blocks) or Q8_1 (`qoff == 4`, 36-byte blocks).
pub(crate) fn dequant_q8(src: &[u8], out: &mut [f32], qoff: usize) {
    for (b, o) in src.chunks_exact(qoff + QK).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        for j in 0..QK {
            o[j] = (b[qoff + j] as i8) as f32 * d;
        }
    }
}

/// Dequantizes Q8_K super-blocks.
pub(crate) fn dequant_q8_k(src: &[u8], out: &mut [f32]) {
    for (b, o) in src.chunks_exact(292).zip(out.chunks_exact_mut(QK_K)) {
        let d = f32_at(b, 0);
        for j in 0..QK_K {
            o[j] = (b[4 + j] as i8) as f32 * d;
        }
    }
}

/// Dequantizes Q4_K super-blocks.
pub(crate) fn dequant_q4_k(src: &[u8], out: &mut [f32]) {
    for (b, o) in src.chunks_exact(144).zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let scales = &b[4..16];
        for chunk in 0..4 {
            let qs = &b[16 + 32 * chunk..48 + 32 * chunk];
            let (s1, m1) = scale_min_k4(2 * chunk, scales);
            let (s2, m2) = scale_min_k4(2 * chunk + 1, scales);
            let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
            let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
            let o = &mut o[64 * chunk..64 * chunk + 64];
            for l in 0..32 {
                o[l] = d1 * (qs[l] & 0xF) as f32 - m1;
                o[l + 32] = d2 * (qs[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// The 6-bit value (0..64) of element `l` (0..32) of quarter `k` (0..4) in a Q6_K half.
#[inline(always)]
pub(crate) fn q6_value(ql: &[u8], qh: &[u8], k: usize, l: usize) -> u8 {
    let low = match k {
        0 => ql[l] & 0xF,
        1 => ql[l + 32] & 0xF,
        2 => ql[l] >> 4,
        _ => ql[l + 32] >> 4,
    };
    low | (((qh[l] >> (2 * k)) & 3) << 4)
}

/// Dequantizes Q6_K super-blocks.
pub(crate) fn dequant_q6_k(src: &[u8], out: &mut [f32]) {
    for (b, o) in src.chunks_exact(210).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, 208);
        for half in 0..2 {
            let ql = &b[64 * half..64 * half + 64];
            let qh = &b[128 + 32 * half..160 + 32 * half];
            let sc = &b[192 + 8 * half..200 + 8 * half];
            for k in 0..4 {
                for l in 0..32 {
                    let q = q6_value(ql, qh, k, l) as i32 - 32;
                    let s = sc[2 * k + l / 16] as i8 as f32;
                    o[128 * half + 32 * k + l] = d * s * q as f32;
                }
            }
        }
    }
}

/// Converts a little-endian F32, F16 or BF16 row (`kind`) to f32.
pub(crate) fn dequant_float(src: &[u8], out: &mut [f32], kind: crate::GgmlType) {
    use crate::GgmlType as T;
    match kind {
        T::F32 => {
            for (b, o) in src.chunks_exact(4).zip(out.iter_mut()) {
                *o = f32_at(b, 0);
            }
        }
        T::F16 => {
            for (b, o) in src.chunks_exact(2).zip(out.iter_mut()) {
                *o = f16_at(b, 0);
            }
        }
        _ => {
            for (b, o) in src.chunks_exact(2).zip(out.iter_mut()) {
                *o = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
    }
}

/// BF16 bits to f32 (exact: bf16 is the top half of an f32).
#[inline(always)]
pub(crate) fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}
