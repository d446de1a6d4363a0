//! AVX2 + FMA + F16C kernels.
//!
//! Every quantized kernel is a register tile `tile_*::<R, C>` over R weight rows and C activation
//! rows: each weight block is loaded and unpacked once and reused for C columns. Every (r, c)
//! pair owns its accumulators and sees exactly the same instruction sequence whatever R and C
//! are, and `vec_dot` is the 1x1 tile, so a tile is bitwise identical to per-pair dots
//! (batch invariance).
//!
//! Safety: every function here requires AVX2, FMA and F16C; callers check with
//! `is_x86_feature_detected!` first (see `Kernels`). Pointers must cover whole rows.

// Register tiles index several arrays by (r, c); iterator chains would obscure that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::GgmlType;

pub(super) mod interleaved;
pub(super) mod panel;

/// Reads an f16 and widens it with F16C (exact, same value as the scalar path).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn ld_f16(p: *const u8) -> f32 {
    let bits = p.cast::<u16>().read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Reads two adjacent f16 values (a block's `d` and `m` / `s`) with one F16C conversion; each is
/// exactly the value `ld_f16` gives.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ld_f16x2(p: *const u8) -> (f32, f32) {
    let bits = p.cast::<i32>().read_unaligned();
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// Weight tiles ahead to prefetch: matrix rows are contiguous and the drivers walk row tiles in
/// order, so the tile after this one starts at `w + R * ws`.
const PF_TILES: usize = 2;

/// Prefetches this block step's share (`step` bytes) of the weight tile `PF_TILES` tiles ahead,
/// so the weight stream arrives from memory before it is needed. Prefetching never faults, and
/// the address is only formed with wrapping arithmetic, so running past the matrix is harmless.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prefetch_ahead(tile_end: *const u8, b: usize, step: usize) {
    let q = tile_end.wrapping_add(b * step);
    let mut o = 0;
    while o < step {
        _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(o).cast());
        o += 64;
    }
}

/// Unpacks 16 bytes of nibbles into 32 bytes 0..16: low nibbles first, then high ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nib32(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p.cast());
    let v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    _mm256_and_si256(v, _mm256_set1_epi8(0xF))
}

/// Horizontal sum of 8 floats in a fixed order. Only needs AVX, so every AVX2 caller (the
/// attention loops are compiled without F16C) can inline it.
#[inline]
#[target_feature(enable = "avx")]
pub(crate) unsafe fn hsum8(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// `DOT` value: the AVX2 pair `vpmaddubsw` + `vpmaddwd`.
pub(super) const DOT_MADD: u8 = 0;
/// `DOT` value: one `vpdpbusd` on 256-bit registers, EVEX-encoded (AVX-512 VNNI + VL).
pub(super) const DOT_VNNI_EVEX: u8 = 1;
/// `DOT` value: one `vpdpbusd`, VEX-encoded (AVX-VNNI, on CPUs without AVX-512).
pub(super) const DOT_VNNI_VEX: u8 = 2;

/// Σ of the 4 products of unsigned `x` times signed `y` in each 4-byte group: 8 lanes of i32.
///
/// `DOT` picks the instructions. Both give the same integers for our operands: the AVX2 pair
/// rounds through i16 with saturation, which never triggers because one operand is a 4-bit
/// quant or a magnitude <= 128 against a Q8 value in -127..=127 (two products stay below
/// 2^15). So a VNNI build computes bit for bit what the AVX2 build (and llama.cpp's AVX2 and
/// AVX-512 VNNI builds, which use the same 8-lane structure) computes.
///
/// `vpdpbusd` is written as inline assembly so the kernels keep one source compiled for
/// AVX2: a `#[target_feature(enable = "avx512vnni")]` intrinsic cannot inline into them, and
/// a second copy of every kernel per instruction set would be 1,000 lines to keep in step.
/// The assembler accepts the instruction whatever the function's features; callers only use
/// a VNNI `DOT` after detecting the feature (see `Kernels`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_u8i8<const DOT: u8>(x: __m256i, y: __m256i) -> __m256i {
    match DOT {
        DOT_VNNI_EVEX | DOT_VNNI_VEX => vnni_acc::<DOT>(_mm256_setzero_si256(), x, y),
        _ => _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1)),
    }
}

/// `acc + Σ x·y` per 4-byte group with one `vpdpbusd` (`DOT` picks the encoding); only for a
/// VNNI `DOT`, which the caller has detected (see [`dot_u8i8`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vnni_acc<const DOT: u8>(mut acc: __m256i, x: __m256i, y: __m256i) -> __m256i {
    // `acc += Σ x·y` per 4-byte group; `$prefix` picks the encoding.
    macro_rules! vpdpbusd {
        ($prefix:literal) => {
            std::arch::asm!(
                concat!($prefix, "vpdpbusd {acc}, {x}, {y}"),
                acc = inout(ymm_reg) acc,
                x = in(ymm_reg) x,
                y = in(ymm_reg) y,
                options(pure, nomem, nostack, preserves_flags)
            )
        };
    }
    // SAFETY (asm): one register-only instruction, touching no memory, stack or flags; the
    // caller checked that the CPU has it.
    match DOT {
        DOT_VNNI_EVEX => vpdpbusd!(""),
        DOT_VNNI_VEX => vpdpbusd!("{{vex}} "),
        _ => unreachable!("programming error: vnni_acc without a VNNI DOT"),
    }
    acc
}

/// Q4_1 weights x Q8_1 activations as a square register tile: the reference the panel kernels
/// (`panel.rs`, used for Q4_1) are tested against bit for bit.
#[cfg(test)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_q4_1<const R: usize, const C: usize>(
    nb: usize,
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    out: *mut f32,
    os: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut summ = [[0f32; C]; R];
    let pf = w.wrapping_add(PF_TILES * R * ws);
    for b in 0..nb {
        prefetch_ahead(pf, b, R * 20);
        let mut wq = [_mm256_setzero_si256(); R];
        let mut wd = [0f32; R];
        let mut wm = [0f32; R];
        for r in 0..R {
            let p = w.add(r * ws + b * 20);
            (wd[r], wm[r]) = ld_f16x2(p);
            wq[r] = nib32(p.add(4));
        }
        for c in 0..C {
            let p = a.add(c * as_ + b * 36);
            let (ad, asum) = ld_f16x2(p);
            let aq = _mm256_loadu_si256(p.add(4).cast());
            for r in 0..R {
                let s = _mm256_cvtepi32_ps(dot_u8i8::<DOT_MADD>(wq[r], aq));
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(wd[r] * ad), s, acc[r][c]);
                summ[r][c] += wm[r] * asum;
            }
        }
    }
    for r in 0..R {
        for c in 0..C {
            *out.add(c * os + r) = hsum8(acc[r][c]) + summ[r][c];
        }
    }
}

/// Signed-int8 blocks: Q8_0 (`Q4 == false`) or Q4_0 (`Q4 == true`) weights x Q8_0 activations.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_q8<const R: usize, const C: usize, const Q4: bool>(
    nb: usize,
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    out: *mut f32,
    os: usize,
) {
    let wbs = if Q4 { 18 } else { 34 };
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let pf = w.wrapping_add(PF_TILES * R * ws);
    for b in 0..nb {
        prefetch_ahead(pf, b, R * wbs);
        let mut wq = [_mm256_setzero_si256(); R];
        let mut wabs = [_mm256_setzero_si256(); R];
        let mut wd = [0f32; R];
        for r in 0..R {
            let p = w.add(r * ws + b * wbs);
            wd[r] = ld_f16(p);
            wq[r] = if Q4 {
                _mm256_sub_epi8(nib32(p.add(2)), _mm256_set1_epi8(8))
            } else {
                _mm256_loadu_si256(p.add(2).cast())
            };
            wabs[r] = _mm256_sign_epi8(wq[r], wq[r]);
        }
        for c in 0..C {
            let p = a.add(c * as_ + b * 34);
            let ad = ld_f16(p);
            let aq = _mm256_loadu_si256(p.add(2).cast());
            for r in 0..R {
                let s = dot_u8i8::<DOT_MADD>(wabs[r], _mm256_sign_epi8(aq, wq[r]));
                let s = _mm256_cvtepi32_ps(s);
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(wd[r] * ad), s, acc[r][c]);
            }
        }
    }
    for r in 0..R {
        for c in 0..C {
            *out.add(c * os + r) = hsum8(acc[r][c]);
        }
    }
}

/// Reads the 16 i16 block sums of a Q8_K block.
#[inline(always)]
unsafe fn bsum(ab: *const u8, g: usize) -> i32 {
    ab.add(260 + 2 * g).cast::<i16>().read_unaligned() as i32
}

/// Q4_K weights x Q8_K activations.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_q4_k<const R: usize, const C: usize>(
    nb: usize,
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    out: *mut f32,
    os: usize,
) {
    let m4 = _mm256_set1_epi8(0xF);
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut macc = [[0f32; C]; R];
    for b in 0..nb {
        let mut sc = [[0i16; 8]; R];
        let mut mn = [[0i32; 8]; R];
        let (mut wd, mut wmin) = ([0f32; R], [0f32; R]);
        for r in 0..R {
            let p = w.add(r * ws + b * 144);
            wd[r] = ld_f16(p);
            wmin[r] = ld_f16(p.add(2));
            let scales = std::slice::from_raw_parts(p.add(4), 12);
            for j in 0..8 {
                let (s, m) = super::blocks::scale_min_k4(j, scales);
                sc[r][j] = s as i16;
                mn[r][j] = m as i32;
            }
        }
        let mut sumi = [[_mm256_setzero_si256(); C]; R];
        for j in 0..4 {
            let mut lo = [_mm256_setzero_si256(); R];
            let mut hi = [_mm256_setzero_si256(); R];
            for r in 0..R {
                let q = _mm256_loadu_si256(w.add(r * ws + b * 144 + 16 + 32 * j).cast());
                lo[r] = _mm256_and_si256(q, m4);
                hi[r] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            }
            for c in 0..C {
                let ap = a.add(c * as_ + b * 292 + 4 + 64 * j);
                let a0 = _mm256_loadu_si256(ap.cast());
                let a1 = _mm256_loadu_si256(ap.add(32).cast());
                for r in 0..R {
                    let p0 = _mm256_maddubs_epi16(lo[r], a0);
                    let p0 = _mm256_madd_epi16(p0, _mm256_set1_epi16(sc[r][2 * j]));
                    let p1 = _mm256_maddubs_epi16(hi[r], a1);
                    let p1 = _mm256_madd_epi16(p1, _mm256_set1_epi16(sc[r][2 * j + 1]));
                    sumi[r][c] = _mm256_add_epi32(sumi[r][c], _mm256_add_epi32(p0, p1));
                }
            }
        }
        for c in 0..C {
            let ab = a.add(c * as_ + b * 292);
            let da = ab.cast::<f32>().read_unaligned();
            let mut bs = [0i32; 8];
            for (j, v) in bs.iter_mut().enumerate() {
                *v = bsum(ab, 2 * j) + bsum(ab, 2 * j + 1);
            }
            for r in 0..R {
                let s = _mm256_cvtepi32_ps(sumi[r][c]);
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(wd[r] * da), s, acc[r][c]);
                let m: i32 = (0..8).map(|j| mn[r][j] * bs[j]).sum();
                macc[r][c] += (wmin[r] * da) * m as f32;
            }
        }
    }
    for r in 0..R {
        for c in 0..C {
            *out.add(c * os + r) = hsum8(acc[r][c]) - macc[r][c];
        }
    }
}

/// Bits `S..S+2` of each byte of `qh`, moved to bits 4..6 (the high part of a 6-bit quant).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_high<const S: i32>(qh: __m256i, m3: __m256i) -> __m256i {
    _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16::<S>(qh), m3), 4)
}

/// Q6_K weights x Q8_K activations.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_q6_k<const R: usize, const C: usize>(
    nb: usize,
    w: *const u8,
    ws: usize,
    a: *const u8,
    as_: usize,
    out: *mut f32,
    os: usize,
) {
    let m4 = _mm256_set1_epi8(0xF);
    let m3 = _mm256_set1_epi8(3);
    let m32 = _mm256_set1_epi8(32);
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    for b in 0..nb {
        let mut sumi = [[_mm256_setzero_si256(); C]; R];
        for half in 0..2 {
            let mut q = [[_mm256_setzero_si256(); 4]; R];
            let mut scv = [[_mm256_setzero_si256(); 4]; R];
            for r in 0..R {
                let p = w.add(r * ws + b * 210);
                let ql0 = _mm256_loadu_si256(p.add(64 * half).cast());
                let ql1 = _mm256_loadu_si256(p.add(64 * half + 32).cast());
                let qh = _mm256_loadu_si256(p.add(128 + 32 * half).cast());
                q[r][0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), q6_high::<0>(qh, m3));
                q[r][1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), q6_high::<2>(qh, m3));
                let ql0h = _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4);
                let ql1h = _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4);
                q[r][2] = _mm256_or_si256(ql0h, q6_high::<4>(qh, m3));
                q[r][3] = _mm256_or_si256(ql1h, q6_high::<6>(qh, m3));
                let sp = p.add(192 + 8 * half).cast::<i8>();
                for k in 0..4 {
                    let s0 = _mm_set1_epi16(*sp.add(2 * k) as i16);
                    let s1 = _mm_set1_epi16(*sp.add(2 * k + 1) as i16);
                    scv[r][k] = _mm256_set_m128i(s1, s0);
                }
            }
            for c in 0..C {
                let ap = a.add(c * as_ + b * 292 + 4 + 128 * half);
                for k in 0..4 {
                    let y = _mm256_loadu_si256(ap.add(32 * k).cast());
                    let ys = _mm256_maddubs_epi16(m32, y);
                    for r in 0..R {
                        let p = _mm256_sub_epi16(_mm256_maddubs_epi16(q[r][k], y), ys);
                        let p = _mm256_madd_epi16(p, scv[r][k]);
                        sumi[r][c] = _mm256_add_epi32(sumi[r][c], p);
                    }
                }
            }
        }
        for r in 0..R {
            let wd = ld_f16(w.add(r * ws + b * 210 + 208));
            for c in 0..C {
                let da = a.add(c * as_ + b * 292).cast::<f32>().read_unaligned();
                let s = _mm256_cvtepi32_ps(sumi[r][c]);
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(wd * da), s, acc[r][c]);
            }
        }
    }
    for r in 0..R {
        for c in 0..C {
            *out.add(c * os + r) = hsum8(acc[r][c]);
        }
    }
}

/// Loads 8 weights of a float type as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8(ty: GgmlType, w: *const u8, i: usize) -> __m256 {
    match ty {
        GgmlType::F32 => _mm256_loadu_ps(w.add(4 * i).cast()),
        GgmlType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * i).cast())),
        _ => {
            let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(w.add(2 * i).cast()));
            _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
        }
    }
}

/// Float-typed weights (F32 / F16 / BF16) against an f32 activation row.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_float(ty: GgmlType, n: usize, w: *const u8, a: *const f32) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, ak) in acc.iter_mut().enumerate() {
            let x = load8(ty, w, i + 8 * k);
            *ak = _mm256_fmadd_ps(x, _mm256_loadu_ps(a.add(i + 8 * k)), *ak);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(load8(ty, w, i), _mm256_loadu_ps(a.add(i)), acc[0]);
        i += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut sum = hsum8(s);
    while i < n {
        let x = match ty {
            GgmlType::F32 => w.add(4 * i).cast::<f32>().read_unaligned(),
            GgmlType::F16 => ld_f16(w.add(2 * i)),
            _ => super::blocks::bf16_to_f32(w.add(2 * i).cast::<u16>().read_unaligned()),
        };
        sum += x * *a.add(i);
        i += 1;
    }
    sum
}

/// `y += alpha * x` with FMA.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let av = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i + 8 <= n {
        let yp = y.as_mut_ptr().add(i);
        let v = _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(yp));
        _mm256_storeu_ps(yp, v);
        i += 8;
    }
    while i < n {
        y[i] = alpha.mul_add(x[i], y[i]);
        i += 1;
    }
}

/// f16 bits to f32 with F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i).cast()));
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), v);
        i += 8;
    }
    super::scalar::f16_to_f32(&src[i..n], &mut dst[i..n]);
}

/// f32 to f16 bits (round to nearest even) with F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
        _mm_storeu_si128(dst.as_mut_ptr().add(i).cast(), v);
        i += 8;
    }
    super::scalar::f32_to_f16(&src[i..n], &mut dst[i..n]);
}

/// Tiled matrix product; see `Kernels::matmul_tile` for the layout. `DOT` (see [`dot_u8i8`])
/// applies to the default model's formats, Q4_1 and Q8_0; the others run the AVX2 pair.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul<const DOT: u8>(
    ty: GgmlType,
    n: usize,
    w: *const u8,
    ws: usize,
    nrows: usize,
    a: *const u8,
    as_: usize,
    ncols: usize,
    out: *mut f32,
    os: usize,
) {
    let nb = n / ty.block_size();
    match ty {
        GgmlType::Q4_1 => {
            panel::matmul::<DOT>(panel::Fmt::Q4_1, nb, w, ws, nrows, a, as_, ncols, out, os)
        }
        GgmlType::Q8_0 => {
            panel::matmul::<DOT>(panel::Fmt::Q8_0, nb, w, ws, nrows, a, as_, ncols, out, os)
        }
        GgmlType::Q4_0 => {
            drive!(
                tile_q8,
                4,
                4,
                [true],
                nb,
                w,
                ws,
                nrows,
                a,
                as_,
                ncols,
                out,
                os
            )
        }
        GgmlType::Q4K => drive!(
            tile_q4_k,
            2,
            2,
            [],
            nb,
            w,
            ws,
            nrows,
            a,
            as_,
            ncols,
            out,
            os
        ),
        GgmlType::Q6K => drive!(
            tile_q6_k,
            2,
            2,
            [],
            nb,
            w,
            ws,
            nrows,
            a,
            as_,
            ncols,
            out,
            os
        ),
        _ => {
            for r in 0..nrows {
                for c in 0..ncols {
                    let v = dot_float(ty, n, w.add(r * ws), a.add(c * as_).cast());
                    *out.add(c * os + r) = v;
                }
            }
        }
    }
}
