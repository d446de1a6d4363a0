//! Register-lean AVX2 kernels for the two weight types of the default model (Q4_1 and Q8_0),
//! hand-written because they are most of the run time.
//!
//! AVX2 has 16 vector registers, and a square register tile (4x4 accumulators plus weights,
//! scales and per-pair scalar sums) spills on every block. These kernels keep only what the
//! inner loop needs in registers:
//!
//! - **Several activation rows** (`ncols > 3`): activation rows go 8 at a time. Their block
//!   scales are widened once into an f32 panel `[block][8]`; then, for each weight row, a
//!   vector pre-pass computes the 8 per-pair scale products `d_w * d_a` of a chunk of blocks
//!   (and, for Q4_1, the 8 running sums of `m_w * s_a`), and the main pass does only the integer
//!   dot, its conversion and one FMA per pair, with the scale broadcast from L1.
//! - **Two or three activation rows** (speculative verification, small batches): a panel row
//!   has only `C` accumulator chains and waits on FMA latency, so these go 3-4 weight rows at
//!   a time (`R * C` chains), with the same scale pre-pass per chunk of blocks and the scale
//!   products read back by broadcast loads (a register broadcast takes the one shuffle pipe).
//! - **One activation row** (decode): 4 weight rows at a time; each row's `(d, m)` pair is
//!   multiplied by the activation's `(d, s)` in one 2-lane multiply.
//!
//! With two or more activation rows, their quants are first copied into an aligned per-thread
//! buffer, one 32-byte vector per (block, row): in the 36- and 34-byte activation blocks half
//! of the inner loop's quant loads straddle a cache line. The copy is a few KiB per call and
//! measured 3-9% faster per product (in-process A/B, 21 alternations per shape).
//!
//! Every (weight row, activation row) pair still runs ggml's exact sequence: 8-lane
//! accumulators `acc = fma(d_w * d_a, float(int dot of 4-byte groups), acc)` in block order,
//! `summ = summ + m_w * s_a` (Q4_1) in block order, then `hsum8(acc) + summ`. So the results are
//! bitwise those of `tile_q4_1` / `tile_q8` and of llama.cpp, whatever the batch.

// Lanes and pairs are indexed explicitly; iterator chains would obscure the register layout.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;

use super::{dot_u8i8, hsum8, ld_f16, ld_f16x2, nib32, prefetch_ahead, PF_TILES};

/// Blocks whose scale products one pre-pass computes (the scratch is `8 * CHUNK` floats).
const CHUNK: usize = 64;
/// Activation rows per panel (one f32 lane each).
const LANES: usize = 8;
/// Weight rows that every column group visits before the next rows (cache blocking).
const ROW_TILE: usize = 32;
/// Up to this many activation rows take [`small_cols`] instead of the panel.
const SMALL_COLS: usize = 3;
/// Most weight rows per [`rows_small`] tile (its scratch is sized for this many).
const SMALL_MAX_ROWS: usize = 4;
/// Blocks whose scale products one [`rows_small`] pre-pass computes.
const SMALL_CHUNK: usize = 32;

/// Per-thread copies of the activation rows for the multi-row kernels, grown on first use and
/// then reused, so the step loop does not allocate.
struct Panel {
    /// Block scales as f32, `[group][d or s][block][lane]`.
    scales: Vec<f32>,
    /// Quants, `[group][block][lane]`, one aligned 32-byte vector each: the 36- and 34-byte
    /// activation blocks put half of the quant loads across a cache line, which costs the
    /// inner loop a second load slot each time.
    quants: Vec<__m256i>,
}

thread_local! {
    static PANEL: RefCell<Panel> = const {
        RefCell::new(Panel {
            scales: Vec::new(),
            quants: Vec::new(),
        })
    };
}

/// Dispatches `$f::<C>` for a runtime column count 1..=8.
macro_rules! cols_call {
    ($f:ident, $cc:expr, [$($x:tt)*], $args:tt) => {
        match $cc {
            1 => $f::<1 $(, $x)*> $args,
            2 => $f::<2 $(, $x)*> $args,
            3 => $f::<3 $(, $x)*> $args,
            4 => $f::<4 $(, $x)*> $args,
            5 => $f::<5 $(, $x)*> $args,
            6 => $f::<6 $(, $x)*> $args,
            7 => $f::<7 $(, $x)*> $args,
            _ => $f::<8 $(, $x)*> $args,
        }
    };
}

/// Σ over 4-byte groups of unsigned `x` times signed `y`, as 8 floats (exact integers), with
/// the multiply instructions `DOT` names (see [`dot_u8i8`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_groups<const DOT: u8>(x: __m256i, y: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(dot_u8i8::<DOT>(x, y))
}

/// Which weight format a panel kernel runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(in crate::quant) enum Fmt {
    /// Q4_1 weights (20-byte blocks) x Q8_1 activations (36-byte blocks).
    Q4_1,
    /// Q8_0 weights (34-byte blocks) x Q8_0 activations (34-byte blocks).
    Q8_0,
}

impl Fmt {
    fn w_block(self) -> usize {
        match self {
            Fmt::Q4_1 => 20,
            Fmt::Q8_0 => 34,
        }
    }
    fn a_block(self) -> usize {
        match self {
            Fmt::Q4_1 => 36,
            Fmt::Q8_0 => 34,
        }
    }
    /// Offset of the quants inside an activation block.
    fn a_q(self) -> usize {
        match self {
            Fmt::Q4_1 => 4,
            Fmt::Q8_0 => 2,
        }
    }
}

/// `out[c * os + r] = dot(weight row r, activation row c)`; see the module docs.
///
/// Safety: AVX2 + FMA + F16C; `w` covers `nrows` rows of stride `ws`, `a` covers `ncols` rows
/// of stride `as_`, `out` covers every written index.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::quant) unsafe fn matmul<const DOT: u8>(
    fmt: Fmt,
    nb: usize,
    w: *const u8,
    ws: usize,
    nrows: usize,
    a: *const u8,
    as_: usize,
    ncols: usize,
    out: *mut f32,
    os: usize,
) {
    if ncols == 1 {
        let mut r0 = 0;
        while r0 + 4 <= nrows {
            gemv::<4, DOT>(fmt, nb, w.add(r0 * ws), ws, a, out.add(r0));
            r0 += 4;
        }
        while r0 < nrows {
            gemv::<1, DOT>(fmt, nb, w.add(r0 * ws), ws, a, out.add(r0));
            r0 += 1;
        }
        return;
    }
    PANEL.with(|panel| {
        let Panel { scales, quants } = &mut *panel.borrow_mut();
        let groups = ncols.div_ceil(LANES);
        let per_group = 2 * LANES * nb;
        if scales.len() < groups * per_group {
            scales.resize(groups * per_group, 0.0);
        }
        if quants.len() < groups * LANES * nb {
            quants.resize(groups * LANES * nb, _mm256_setzero_si256());
        }
        // Group `g`'s first column and column count.
        let group = |g: usize| (g * LANES, (ncols - g * LANES).min(LANES));
        // Copy every activation row once for all weight rows: group `g` holds the scales `d`
        // then `s` (Q4_1) as `[block][lane]` for columns `8g..8g + 8` (zero past `ncols`), and
        // the quants as `[block][lane]`.
        for g in 0..groups {
            let (pd, ps) = scales[g * per_group..(g + 1) * per_group].split_at_mut(LANES * nb);
            let qg = &mut quants[g * LANES * nb..(g + 1) * LANES * nb];
            let (c0, cc) = group(g);
            widen_group(fmt, nb, a.add(c0 * as_), as_, cc, pd, ps, qg);
        }
        if ncols <= SMALL_COLS {
            let (pd, aq) = (scales.as_ptr(), quants.as_ptr());
            small_cols::<DOT>(
                fmt,
                nb,
                w,
                ws,
                nrows,
                aq,
                ncols,
                pd,
                pd.add(LANES * nb),
                out,
                os,
            );
            return;
        }
        // Row tiles small enough to stay in L1 while every column group passes over them.
        let mut r0 = 0;
        while r0 < nrows {
            let r1 = (r0 + ROW_TILE).min(nrows);
            for g in 0..groups {
                let (c0, cc) = group(g);
                let pd = scales.as_ptr().add(g * per_group);
                let ps = pd.add(LANES * nb);
                let aq = quants.as_ptr().add(g * LANES * nb);
                for r in r0..r1 {
                    let (wr, o) = (w.add(r * ws), out.add(c0 * os + r));
                    match fmt {
                        Fmt::Q4_1 => cols_call!(row_q4_1, cc, [DOT], (nb, wr, aq, pd, ps, o, os)),
                        Fmt::Q8_0 => cols_call!(row_q8_0, cc, [DOT], (nb, wr, aq, pd, o, os)),
                    }
                }
            }
            r0 = r1;
        }
    });
}

/// Copies `cc` (<= 8) activation rows starting at `a` into one panel group. Scales: per block,
/// one masked gather of the rows' leading 4 bytes (`d`, and `s` for Q8_1), then F16C, so
/// `pd[b * 8 + l]` / `ps[b * 8 + l]` hold row `l`'s values (0 for `l >= cc`, and `ps` all 0 for
/// Q8_0); the same conversions as `ld_f16x2` / `ld_f16`, so the same floats. Quants: row `l`'s
/// block `b` to `q[b * 8 + l]` (left as they were for `l >= cc`).
///
/// Safety: AVX2 + FMA + F16C; `a` covers `cc` rows of stride `as_` (`8 * as_` < 2^31), `pd`
/// and `ps` hold `8 * nb` floats, `q` holds `8 * nb` vectors.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_group(
    fmt: Fmt,
    nb: usize,
    a: *const u8,
    as_: usize,
    cc: usize,
    pd: &mut [f32],
    ps: &mut [f32],
    q: &mut [__m256i],
) {
    assert!(
        pd.len() >= LANES * nb && ps.len() >= LANES * nb && q.len() >= LANES * nb,
        "programming error: panel group too small"
    );
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let offs = _mm256_mullo_epi32(lane, _mm256_set1_epi32(as_ as i32));
    let live = _mm256_cmpgt_epi32(_mm256_set1_epi32(cc as i32), lane);
    // Bytes 0-1 (`d`) or 2-3 (`s`) of each 32-bit lane, packed to the low 8 bytes of each half.
    let pick_d = _mm256_setr_epi8(
        0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, //
        0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1,
    );
    let pick_s = _mm256_setr_epi8(
        2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1, //
        2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1,
    );
    let halves = |v: __m256i, pick: __m256i| {
        let x = _mm256_shuffle_epi8(v, pick);
        _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b1000>(
            x,
        )))
    };
    for b in 0..nb {
        let base = a.add(b * fmt.a_block()).cast::<i32>();
        let v = _mm256_mask_i32gather_epi32::<1>(_mm256_setzero_si256(), base, offs, live);
        _mm256_storeu_ps(pd.as_mut_ptr().add(b * LANES), halves(v, pick_d));
        let s = match fmt {
            Fmt::Q4_1 => halves(v, pick_s),
            Fmt::Q8_0 => _mm256_setzero_ps(),
        };
        _mm256_storeu_ps(ps.as_mut_ptr().add(b * LANES), s);
        for l in 0..cc {
            let src = a.add(l * as_ + b * fmt.a_block() + fmt.a_q());
            q[b * LANES + l] = _mm256_loadu_si256(src.cast());
        }
    }
}

/// One Q4_1 weight row against `C` (<= 8) Q8_1 activation rows whose scales are in the panel.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_q4_1<const C: usize, const DOT: u8>(
    nb: usize,
    w: *const u8,
    aq: *const __m256i,
    pd: *const f32,
    ps: *const f32,
    out: *mut f32,
    os: usize,
) {
    let mut acc = [_mm256_setzero_ps(); C];
    let mut summ = _mm256_setzero_ps();
    // Scale products of this chunk; written before read (no zeroing on the hot path).
    let mut sc = [const { MaybeUninit::<f32>::uninit() }; LANES * CHUNK];
    let scp = sc.as_mut_ptr().cast::<f32>();
    let mut b0 = 0;
    while b0 < nb {
        let m = (nb - b0).min(CHUNK);
        for i in 0..m {
            let b = b0 + i;
            let (d, mn) = ld_f16x2(w.add(b * 20));
            let prod = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_loadu_ps(pd.add(b * LANES)));
            _mm256_storeu_ps(scp.add(i * LANES), prod);
            let mprod = _mm256_mul_ps(_mm256_set1_ps(mn), _mm256_loadu_ps(ps.add(b * LANES)));
            summ = _mm256_add_ps(summ, mprod);
        }
        for i in 0..m {
            let b = b0 + i;
            let wq = nib32(w.add(b * 20 + 4));
            for c in 0..C {
                let q = _mm256_load_si256(aq.add(b * LANES + c));
                let s = _mm256_set1_ps(*scp.add(i * LANES + c));
                acc[c] = _mm256_fmadd_ps(s, dot_groups::<DOT>(wq, q), acc[c]);
            }
        }
        b0 += m;
    }
    let mut sm = [0f32; LANES];
    _mm256_storeu_ps(sm.as_mut_ptr(), summ);
    for c in 0..C {
        *out.add(c * os) = hsum8(acc[c]) + sm[c];
    }
}

/// One Q8_0 weight row against `C` (<= 8) Q8_0 activation rows whose scales are in the panel.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_q8_0<const C: usize, const DOT: u8>(
    nb: usize,
    w: *const u8,
    aq: *const __m256i,
    pd: *const f32,
    out: *mut f32,
    os: usize,
) {
    let mut acc = [_mm256_setzero_ps(); C];
    // Scale products of this chunk; written before read (no zeroing on the hot path).
    let mut sc = [const { MaybeUninit::<f32>::uninit() }; LANES * CHUNK];
    let scp = sc.as_mut_ptr().cast::<f32>();
    let mut b0 = 0;
    while b0 < nb {
        let m = (nb - b0).min(CHUNK);
        for i in 0..m {
            let b = b0 + i;
            let d = ld_f16(w.add(b * 34));
            let prod = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_loadu_ps(pd.add(b * LANES)));
            _mm256_storeu_ps(scp.add(i * LANES), prod);
        }
        for i in 0..m {
            let b = b0 + i;
            let wq = _mm256_loadu_si256(w.add(b * 34 + 2).cast());
            let wabs = _mm256_sign_epi8(wq, wq);
            for c in 0..C {
                let a = _mm256_load_si256(aq.add(b * LANES + c));
                let s = _mm256_set1_ps(*scp.add(i * LANES + c));
                let q = dot_groups::<DOT>(wabs, _mm256_sign_epi8(a, wq));
                acc[c] = _mm256_fmadd_ps(s, q, acc[c]);
            }
        }
        b0 += m;
    }
    for c in 0..C {
        *out.add(c * os) = hsum8(acc[c]);
    }
}

/// Two or three activation rows (up to [`SMALL_COLS`]: speculative verification, small
/// batches): `R` weight rows at a time, so `R * C` independent accumulator chains hide the FMA
/// latency that a panel row with only `C` chains waits on.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn small_cols<const DOT: u8>(
    fmt: Fmt,
    nb: usize,
    w: *const u8,
    ws: usize,
    nrows: usize,
    aq: *const __m256i,
    ncols: usize,
    pd: *const f32,
    ps: *const f32,
    out: *mut f32,
    os: usize,
) {
    // Whole tiles of `R` weight rows, then the remainder one row at a time. (A macro, not
    // function pointers: the calls must inline, an indirect call per tile cost 10%.)
    macro_rules! tiles {
        ($r:literal, $c:literal, $q4:literal) => {{
            let tile = |r0: usize| (w.add(r0 * ws), out.add(r0));
            let mut r0 = 0;
            while r0 + $r <= nrows {
                let (wr, o) = tile(r0);
                rows_small::<$r, $c, $q4, DOT>(nb, wr, ws, aq, pd, ps, o, os);
                r0 += $r;
            }
            while r0 < nrows {
                let (wr, o) = tile(r0);
                rows_small::<1, $c, $q4, DOT>(nb, wr, ws, aq, pd, ps, o, os);
                r0 += 1;
            }
        }};
    }
    match (ncols, fmt) {
        (2, Fmt::Q4_1) => tiles!(4, 2, true),
        (2, Fmt::Q8_0) => tiles!(4, 2, false),
        (_, Fmt::Q4_1) => tiles!(3, 3, true),
        (_, Fmt::Q8_0) => tiles!(3, 3, false),
    }
}

/// `R` weight rows against `C` activation rows whose scales are in the panel group `pd`/`ps`;
/// per pair the same sequence as [`row_q4_1`] / [`row_q8_0`] (so the same bits).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_small<const R: usize, const C: usize, const Q4: bool, const DOT: u8>(
    nb: usize,
    w: *const u8,
    ws: usize,
    aq: *const __m256i,
    pd: *const f32,
    ps: *const f32,
    out: *mut f32,
    os: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut summ = [_mm256_setzero_ps(); R];
    let wb = if Q4 { 20 } else { 34 };
    let pf = w.wrapping_add(PF_TILES * R * ws);
    // Scale products of a chunk, `[block][row][lane]`: written by the pre-pass, then read back
    // by broadcast loads (a register broadcast would take the one shuffle pipe).
    let mut sc = [const { MaybeUninit::<f32>::uninit() }; LANES * SMALL_CHUNK * SMALL_MAX_ROWS];
    let scp = sc.as_mut_ptr().cast::<f32>();
    assert!(
        R <= SMALL_MAX_ROWS,
        "programming error: rows_small tile of {R} rows"
    );
    let mut b0 = 0;
    while b0 < nb {
        let m = (nb - b0).min(SMALL_CHUNK);
        for i in 0..m {
            let b = b0 + i;
            let pdv = _mm256_loadu_ps(pd.add(b * LANES));
            for r in 0..R {
                let p = w.add(r * ws + b * wb);
                let prod = if Q4 {
                    let (d, mn) = ld_f16x2(p);
                    let mprod =
                        _mm256_mul_ps(_mm256_set1_ps(mn), _mm256_loadu_ps(ps.add(b * LANES)));
                    summ[r] = _mm256_add_ps(summ[r], mprod);
                    _mm256_mul_ps(_mm256_set1_ps(d), pdv)
                } else {
                    _mm256_mul_ps(_mm256_set1_ps(ld_f16(p)), pdv)
                };
                _mm256_storeu_ps(scp.add((i * R + r) * LANES), prod);
            }
        }
        for i in 0..m {
            let b = b0 + i;
            prefetch_ahead(pf, b, R * wb);
            for r in 0..R {
                let p = w.add(r * ws + b * wb);
                let sr = scp.add((i * R + r) * LANES);
                if Q4 {
                    let wq = nib32(p.add(4));
                    for c in 0..C {
                        let q = _mm256_load_si256(aq.add(b * LANES + c));
                        let s = _mm256_set1_ps(*sr.add(c));
                        acc[r][c] = _mm256_fmadd_ps(s, dot_groups::<DOT>(wq, q), acc[r][c]);
                    }
                } else {
                    let wq = _mm256_loadu_si256(p.add(2).cast());
                    let wabs = _mm256_sign_epi8(wq, wq);
                    for c in 0..C {
                        let a = _mm256_load_si256(aq.add(b * LANES + c));
                        let s = _mm256_set1_ps(*sr.add(c));
                        let q = dot_groups::<DOT>(wabs, _mm256_sign_epi8(a, wq));
                        acc[r][c] = _mm256_fmadd_ps(s, q, acc[r][c]);
                    }
                }
            }
        }
        b0 += m;
    }
    for r in 0..R {
        let mut sm = [0f32; LANES];
        _mm256_storeu_ps(sm.as_mut_ptr(), summ[r]);
        for c in 0..C {
            // Q8_0 has no `m * s` term: add nothing, as `row_q8_0` does (keeps a -0.0).
            let v = hsum8(acc[r][c]);
            *out.add(c * os + r) = if Q4 { v + sm[c] } else { v };
        }
    }
}

/// `R` weight rows against one activation row (decode).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv<const R: usize, const DOT: u8>(
    fmt: Fmt,
    nb: usize,
    w: *const u8,
    ws: usize,
    a: *const u8,
    out: *mut f32,
) {
    let mut acc = [_mm256_setzero_ps(); R];
    // Lane 1 of each is the row's running `m_w * s_a` sum (Q4_1); lane 0 is scratch.
    let mut summ = [_mm_setzero_ps(); R];
    let (wb, ab, aq_off) = (fmt.w_block(), fmt.a_block(), fmt.a_q());
    // The R rows are contiguous, and so are the next tiles: stream them in ahead of use.
    let pf = w.wrapping_add(PF_TILES * R * ws);
    for b in 0..nb {
        prefetch_ahead(pf, b, R * wb);
        let ap = a.add(b * ab);
        let aq = _mm256_loadu_si256(ap.add(aq_off).cast());
        match fmt {
            Fmt::Q4_1 => {
                let ads = _mm_cvtph_ps(_mm_cvtsi32_si128(ap.cast::<i32>().read_unaligned()));
                for r in 0..R {
                    let p = w.add(r * ws + b * wb);
                    let wdm = _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()));
                    let prod = _mm_mul_ps(wdm, ads);
                    summ[r] = _mm_add_ps(summ[r], prod);
                    let s = _mm256_broadcastss_ps(prod);
                    acc[r] = _mm256_fmadd_ps(s, dot_groups::<DOT>(nib32(p.add(4)), aq), acc[r]);
                }
            }
            Fmt::Q8_0 => {
                let ad = ld_f16(ap);
                for r in 0..R {
                    let p = w.add(r * ws + b * wb);
                    let s = _mm256_set1_ps(ld_f16(p) * ad);
                    let wq = _mm256_loadu_si256(p.add(2).cast());
                    let q = dot_groups::<DOT>(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(aq, wq));
                    acc[r] = _mm256_fmadd_ps(s, q, acc[r]);
                }
            }
        }
    }
    for r in 0..R {
        let m = match fmt {
            Fmt::Q4_1 => _mm_cvtss_f32(_mm_movehdup_ps(summ[r])),
            Fmt::Q8_0 => 0.0,
        };
        *out.add(r) = hsum8(acc[r]) + m;
    }
}

/// Quantizes `x` to Q8_0 (`with_sum == false`) or Q8_1 blocks with ggml's AVX2 sequence
/// (`id = 127 / amax`, `round(x * id)` to nearest even); bitwise equal to the scalar quantizer.
///
/// Safety: AVX2 + FMA + F16C; `x.len()` is a multiple of 32 and `out` holds its blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::quant) unsafe fn quantize_q8(x: &[f32], out: &mut [u8], with_sum: bool) {
    let (bsz, qoff) = if with_sum { (36, 4) } else { (34, 2) };
    let sign = _mm256_set1_ps(-0.0);
    for (xb, ob) in x.chunks_exact(32).zip(out.chunks_exact_mut(bsz)) {
        let v = [0, 8, 16, 24].map(|i| _mm256_loadu_ps(xb.as_ptr().add(i)));
        let mut mx = _mm256_andnot_ps(sign, v[0]);
        for vi in &v[1..] {
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, *vi));
        }
        let m4 = _mm_max_ps(_mm256_extractf128_ps(mx, 1), _mm256_castps256_ps128(mx));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let idv = _mm256_set1_ps(id);
        let q = v.map(|vi| {
            _mm256_cvtps_epi32(_mm256_round_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(_mm256_mul_ps(vi, idv)))
        });
        // Pack 4x8 i32 to 32 i8 (saturation never triggers: |q| <= 127) and undo the lane
        // interleave of the 256-bit packs.
        let p16a = _mm256_packs_epi32(q[0], q[1]);
        let p16b = _mm256_packs_epi32(q[2], q[3]);
        let p8 = _mm256_packs_epi16(p16a, p16b);
        let p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(ob.as_mut_ptr().add(qoff).cast(), p8);
        ob[..2].copy_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
        if with_sum {
            let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s4 = _mm_add_epi32(_mm256_extracti128_si256(s, 1), _mm256_castsi256_si128(s));
            let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
            let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b10_11_00_01));
            let sum = _mm_cvtsi128_si32(s4);
            ob[2..4].copy_from_slice(&half::f16::from_f32(d * sum as f32).to_bits().to_le_bytes());
        }
    }
}
