//! AVX-512 (F + BW + VL) kernels for the 32-element formats, in two builds: `vnni` multiplies
//! with `vpdpbusd`, `bw` with `vpmaddubsw` + `vpmaddwd`. Each 512-bit step covers two blocks
//! (block b in lanes 0..8, b+1 in lanes 8..16); an odd last block runs with a zeroed upper half.
//! K-quants and float weights reuse the AVX2 kernels (AVX-512 CPUs have AVX2).
//!
//! As in the AVX2 module, each (row, column) pair of a tile owns its accumulators and runs the
//! same instructions whatever the tile shape, so tiles equal per-pair dots bit for bit.
//!
//! Safety: every function requires the features named in its module's `FEATURES`; callers
//! check them first (see `Kernels`).

// Register tiles index several arrays by (r, c); iterator chains would obscure that.
#![allow(clippy::needless_range_loop)]

macro_rules! avx512_level {
    ($modname:ident, $feat:literal, |$x:ident, $y:ident| $dot:expr) => {
        /// One build of the AVX-512 kernels.
        pub(super) mod $modname {
            use std::arch::x86_64::*;

            use super::super::avx2;
            use crate::GgmlType;

            /// Σ of 4 adjacent u8·i8 products per i32 lane.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn dot_u8i8($x: __m512i, $y: __m512i) -> __m512i {
                $dot
            }

            /// Loads 32 bytes of two blocks (`p0`, `p1`) into the two 256-bit halves;
            /// `two == false` zeroes the upper half.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn load2(p0: *const u8, p1: *const u8, two: bool) -> __m512i {
                let lo = _mm512_zextsi256_si512(_mm256_loadu_si256(p0.cast()));
                if two {
                    _mm512_inserti64x4::<1>(lo, _mm256_loadu_si256(p1.cast()))
                } else {
                    lo
                }
            }

            /// Unpacks the nibbles of two blocks (each 16 bytes -> 32 values 0..16).
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn nib2(p0: *const u8, p1: *const u8, two: bool) -> __m512i {
                let t0 = _mm_loadu_si128(p0.cast());
                let v0 = _mm512_zextsi256_si512(_mm256_set_m128i(_mm_srli_epi16(t0, 4), t0));
                let v = if two {
                    let t1 = _mm_loadu_si128(p1.cast());
                    let v1 = _mm256_set_m128i(_mm_srli_epi16(t1, 4), t1);
                    _mm512_inserti64x4::<1>(v0, v1)
                } else {
                    v0
                };
                _mm512_and_si512(v, _mm512_set1_epi8(0xF))
            }

            /// Broadcasts `s0` to lanes 0..8 and `s1` to lanes 8..16.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn pair_ps(s0: f32, s1: f32) -> __m512 {
                _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(s0), _mm512_set1_ps(s1))
            }

            /// Horizontal sum of 16 floats in a fixed order.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn hsum16(v: __m512) -> f32 {
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
                avx2::hsum8(_mm256_add_ps(_mm512_castps512_ps256(v), hi))
            }

            /// Q4_1 weights x Q8_1 activations, two blocks per step.
            #[target_feature(enable = $feat)]
            unsafe fn tile_q4_1<const R: usize, const C: usize>(
                nb: usize,
                w: *const u8,
                ws: usize,
                a: *const u8,
                as_: usize,
                out: *mut f32,
                os: usize,
            ) {
                let mut acc = [[_mm512_setzero_ps(); C]; R];
                let mut summ = [[0f32; C]; R];
                let mut b = 0;
                while b < nb {
                    let two = b + 1 < nb;
                    let b1 = if two { b + 1 } else { b };
                    let mut wq = [_mm512_setzero_si512(); R];
                    let mut wd = [_mm512_setzero_ps(); R];
                    let mut wm = [[0f32; 2]; R];
                    for r in 0..R {
                        let p0 = w.add(r * ws + b * 20);
                        let p1 = w.add(r * ws + b1 * 20);
                        wd[r] = pair_ps(avx2::ld_f16(p0), avx2::ld_f16(p1));
                        wm[r] = [avx2::ld_f16(p0.add(2)), avx2::ld_f16(p1.add(2))];
                        wq[r] = nib2(p0.add(4), p1.add(4), two);
                    }
                    for c in 0..C {
                        let p0 = a.add(c * as_ + b * 36);
                        let p1 = a.add(c * as_ + b1 * 36);
                        let ad = pair_ps(avx2::ld_f16(p0), avx2::ld_f16(p1));
                        let asum = [avx2::ld_f16(p0.add(2)), avx2::ld_f16(p1.add(2))];
                        let aq = load2(p0.add(4), p1.add(4), two);
                        for r in 0..R {
                            let s = _mm512_cvtepi32_ps(dot_u8i8(wq[r], aq));
                            let d = _mm512_mul_ps(wd[r], ad);
                            acc[r][c] = _mm512_fmadd_ps(d, s, acc[r][c]);
                            summ[r][c] += wm[r][0] * asum[0];
                            if two {
                                summ[r][c] += wm[r][1] * asum[1];
                            }
                        }
                    }
                    b += 2;
                }
                for r in 0..R {
                    for c in 0..C {
                        *out.add(c * os + r) = hsum16(acc[r][c]) + summ[r][c];
                    }
                }
            }

            /// Q8_0 (`Q4 == false`) or Q4_0 (`Q4 == true`) weights x Q8_0 activations.
            #[target_feature(enable = $feat)]
            unsafe fn tile_q8<const R: usize, const C: usize, const Q4: bool>(
                nb: usize,
                w: *const u8,
                ws: usize,
                a: *const u8,
                as_: usize,
                out: *mut f32,
                os: usize,
            ) {
                let wbs = if Q4 { 18 } else { 34 };
                let mut acc = [[_mm512_setzero_ps(); C]; R];
                let mut b = 0;
                while b < nb {
                    let two = b + 1 < nb;
                    let b1 = if two { b + 1 } else { b };
                    let mut wabs = [_mm512_setzero_si512(); R];
                    let mut wneg = [0 as __mmask64; R];
                    let mut wd = [_mm512_setzero_ps(); R];
                    for r in 0..R {
                        let p0 = w.add(r * ws + b * wbs);
                        let p1 = w.add(r * ws + b1 * wbs);
                        wd[r] = pair_ps(avx2::ld_f16(p0), avx2::ld_f16(p1));
                        let q = if Q4 {
                            _mm512_sub_epi8(nib2(p0.add(2), p1.add(2), two), _mm512_set1_epi8(8))
                        } else {
                            load2(p0.add(2), p1.add(2), two)
                        };
                        wabs[r] = _mm512_abs_epi8(q);
                        wneg[r] = _mm512_movepi8_mask(q);
                    }
                    for c in 0..C {
                        let p0 = a.add(c * as_ + b * 34);
                        let p1 = a.add(c * as_ + b1 * 34);
                        let ad = pair_ps(avx2::ld_f16(p0), avx2::ld_f16(p1));
                        let aq = load2(p0.add(2), p1.add(2), two);
                        for r in 0..R {
                            let sy = _mm512_mask_sub_epi8(aq, wneg[r], _mm512_setzero_si512(), aq);
                            let s = _mm512_cvtepi32_ps(dot_u8i8(wabs[r], sy));
                            let d = _mm512_mul_ps(wd[r], ad);
                            acc[r][c] = _mm512_fmadd_ps(d, s, acc[r][c]);
                        }
                    }
                    b += 2;
                }
                for r in 0..R {
                    for c in 0..C {
                        *out.add(c * os + r) = hsum16(acc[r][c]);
                    }
                }
            }

            /// Tiled matrix product; see `Kernels::matmul_tile` for the layout.
            #[allow(clippy::too_many_arguments)]
            pub(in crate::quant) unsafe fn matmul(
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
                        drive!(
                            tile_q4_1,
                            4,
                            4,
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
                        )
                    }
                    GgmlType::Q8_0 => {
                        drive!(
                            tile_q8,
                            4,
                            4,
                            [false],
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
                    _ => avx2::matmul(ty, n, w, ws, nrows, a, as_, ncols, out, os),
                }
            }
        }
    };
}

avx512_level!(bw, "avx512f,avx512bw,avx512vl,avx2,fma,f16c", |x, y| {
    _mm512_madd_epi16(_mm512_maddubs_epi16(x, y), _mm512_set1_epi16(1))
});
avx512_level!(
    vnni,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    |x, y| _mm512_dpbusd_epi32(_mm512_setzero_si512(), x, y)
);
