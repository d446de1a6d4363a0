//! Quantized tensor formats and the CPU dot-product kernels behind every matrix product.
//!
//! Weights stay in their GGUF block format (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K);
//! activations are quantized per row to the matching "vec dot" format (Q8_0, Q8_1, Q8_K or
//! plain F32, see [`vec_dot_type`]) exactly the way llama.cpp does, so integer dot products
//! give the same logits as llama.cpp.
//!
//! [`Kernels`] is a kernel set chosen once at run time: scalar (portable reference), AVX2
//! (+FMA+F16C), or the AVX2 kernels with VNNI's one-instruction int8 dot (`vpdpbusd`, from
//! AVX-512 VNNI + VL or AVX-VNNI), which computes the same bits with fewer instructions. A VNNI
//! set is only handed out after a start-up check that it matches AVX2 bit for bit
//! (`self_check`).
//!
//! Every SIMD kernel is a register tile whose per-pair arithmetic does not depend on the tile
//! shape, so [`Kernels::matmul_tile`] is bitwise identical to [`Kernels::vec_dot`] per pair: a
//! request's output never depends on its batch-mates.
//!
//! [`Q4_1x8`] is the one exception to llama.cpp's arithmetic, and opt-in: Q4_1 weights
//! repacked 8 rows per group, with kernels about twice as fast on batched products that round
//! differently ([`Kernels::matmul_q4_1x8_raw`]; batch invariant in the same way).

use std::ops::Range;
use std::sync::OnceLock;

use crate::GgmlType;

pub use interleaved::{Q4_1x8, GROUP_ROWS};

/// Calls `$f::<R, C [, extra]>` for the runtime tile shape (rr, cc) within a 4x4 or 2x2 maximum.
macro_rules! rc_call {
    ($f:ident, [$($x:tt)*], $rr:expr, $cc:expr, 4, 4, $args:tt) => {
        match ($rr, $cc) {
            (1, 1) => $f::<1, 1 $(, $x)*> $args,
            (1, 2) => $f::<1, 2 $(, $x)*> $args,
            (1, 3) => $f::<1, 3 $(, $x)*> $args,
            (1, 4) => $f::<1, 4 $(, $x)*> $args,
            (2, 1) => $f::<2, 1 $(, $x)*> $args,
            (2, 2) => $f::<2, 2 $(, $x)*> $args,
            (2, 3) => $f::<2, 3 $(, $x)*> $args,
            (2, 4) => $f::<2, 4 $(, $x)*> $args,
            (3, 1) => $f::<3, 1 $(, $x)*> $args,
            (3, 2) => $f::<3, 2 $(, $x)*> $args,
            (3, 3) => $f::<3, 3 $(, $x)*> $args,
            (3, 4) => $f::<3, 4 $(, $x)*> $args,
            (4, 1) => $f::<4, 1 $(, $x)*> $args,
            (4, 2) => $f::<4, 2 $(, $x)*> $args,
            (4, 3) => $f::<4, 3 $(, $x)*> $args,
            _ => $f::<4, 4 $(, $x)*> $args,
        }
    };
    ($f:ident, [$($x:tt)*], $rr:expr, $cc:expr, 2, 2, $args:tt) => {
        match ($rr, $cc) {
            (1, 1) => $f::<1, 1 $(, $x)*> $args,
            (1, 2) => $f::<1, 2 $(, $x)*> $args,
            (2, 1) => $f::<2, 1 $(, $x)*> $args,
            _ => $f::<2, 2 $(, $x)*> $args,
        }
    };
}

/// Walks a (nrows x ncols) product in register tiles of at most `$tr x $tc`: row tiles outer so
/// a few weight rows stay in L1 while every activation column streams past them.
macro_rules! drive {
    ($tile:ident, $tr:tt, $tc:tt, [$($x:tt)*], $nb:expr, $w:expr, $ws:expr, $nrows:expr,
     $a:expr, $as:expr, $ncols:expr, $out:expr, $os:expr) => {{
        let mut r0 = 0;
        while r0 < $nrows {
            let rr = ($nrows - r0).min($tr);
            let mut c0 = 0;
            while c0 < $ncols {
                let cc = ($ncols - c0).min($tc);
                let (wp, ap, op) = ($w.add(r0 * $ws), $a.add(c0 * $as), $out.add(c0 * $os + r0));
                rc_call!($tile, [$($x)*], rr, cc, $tr, $tc, ($nb, wp, $ws, ap, $as, op, $os));
                c0 += cc;
            }
            r0 += rr;
        }
    }};
}

/// Calls the AVX2 kernel `$f::<DOT>(args)` for a kernel set's run-time `dot` value.
#[cfg(target_arch = "x86_64")]
macro_rules! dot_call {
    ($dot:expr, $($f:ident)::+, ($($arg:expr),* $(,)?)) => {
        match $dot {
            avx2::DOT_VNNI_EVEX => $($f)::+::<{ avx2::DOT_VNNI_EVEX }>($($arg),*),
            avx2::DOT_VNNI_VEX => $($f)::+::<{ avx2::DOT_VNNI_VEX }>($($arg),*),
            _ => $($f)::+::<{ avx2::DOT_MADD }>($($arg),*),
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
/// The 8-lane halving-tree sum the kernels use, for other hand-vectorized loops.
#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::hsum8 as hsum8_avx2;
mod blocks;
mod interleaved;
#[cfg(test)]
mod interleaved_tests;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod self_check;
#[cfg(test)]
mod tests;

/// Activation type to quantize inputs to for weights of type `w`, so the inner loop is an
/// integer dot product (F32/F16/BF16 weights take F32 activations). Activation-only types
/// map to themselves; they are not weight types (see [`is_weight_type`]).
pub fn vec_dot_type(w: GgmlType) -> GgmlType {
    match w {
        GgmlType::Q4_0 | GgmlType::Q8_0 => GgmlType::Q8_0,
        GgmlType::Q4_1 => GgmlType::Q8_1,
        GgmlType::Q4K | GgmlType::Q6K => GgmlType::Q8K,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => GgmlType::F32,
        GgmlType::Q8_1 | GgmlType::Q8K => w,
    }
}

/// Whether a tensor of this type can be a matmul weight here; a loader checks this so the
/// kernels never see an activation-only type.
pub fn is_weight_type(ty: GgmlType) -> bool {
    !matches!(ty, GgmlType::Q8_1 | GgmlType::Q8K)
}

/// Bytes of a row of `n` elements; a partial block is a programming error here (the loader
/// validates shapes from files).
fn row_bytes(ty: GgmlType, n: usize) -> usize {
    assert!(
        n.is_multiple_of(ty.block_size()),
        "programming error: row of {n} is not whole {ty:?} blocks"
    );
    n / ty.block_size() * ty.type_size()
}

/// Quantizes one f32 row into activation format `ty` (Q8_0 / Q8_1 / Q8_K, or F32 = copy),
/// bit-exactly like llama.cpp on x86, so integer dot products reproduce its logits.
///
/// Panics (programming error) unless `out.len() == row_bytes(ty, x.len())`.
pub fn quantize_row(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    assert_eq!(
        out.len(),
        row_bytes(ty, x.len()),
        "programming error: quantize_row output size"
    );
    match ty {
        GgmlType::Q8_0 | GgmlType::Q8_1 => {
            let with_sum = ty == GgmlType::Q8_1;
            match kernels().level {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX2 + FMA + F16C were detected for these levels; sizes checked above.
                SimdLevel::Avx2 | SimdLevel::Vnni => unsafe {
                    avx2::panel::quantize_q8(x, out, with_sum)
                },
                _ => blocks::quantize_q8_0_or_1(x, out, with_sum),
            }
        }
        GgmlType::Q8K => blocks::quantize_q8_k(x, out),
        GgmlType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        other => panic!("programming error: {other:?} is not an activation format"),
    }
}

/// Dequantizes one row of any supported type into f32 (`out.len()` elements): embedding
/// lookups and tests need real values, not dot products.
///
/// Panics (programming error) when `src` is shorter than the row.
pub fn dequantize_row(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    let nbytes = row_bytes(ty, out.len());
    assert!(
        src.len() >= nbytes,
        "programming error: dequantize_row source too short"
    );
    let src = &src[..nbytes];
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => blocks::dequant_float(src, out, ty),
        GgmlType::Q4_0 => blocks::dequant_q4_0(src, out),
        GgmlType::Q4_1 => blocks::dequant_q4_1(src, out),
        GgmlType::Q8_0 => blocks::dequant_q8(src, out, 2),
        GgmlType::Q8_1 => blocks::dequant_q8(src, out, 4),
        GgmlType::Q4K => blocks::dequant_q4_k(src, out),
        GgmlType::Q6K => blocks::dequant_q6_k(src, out),
        GgmlType::Q8K => blocks::dequant_q8_k(src, out),
    }
}

/// Which SIMD level a kernel set uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimdLevel {
    /// Portable Rust; the reference every other level is tested against.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// The AVX2 kernels with `vpdpbusd` for the int8 dot (AVX-512 VNNI + VL, or AVX-VNNI).
    Vnni,
}

/// A kernel set chosen once at run time with `is_x86_feature_detected!`, so a binary built for
/// generic x86-64 uses the best instructions of the CPU it runs on and never faults on older ones.
#[derive(Debug)]
pub struct Kernels {
    level: SimdLevel,
    /// Which int8 dot instructions the x86 kernels use (`avx2::DOT_*`).
    dot: u8,
    name: &'static str,
}

static SCALAR: Kernels = Kernels {
    level: SimdLevel::Scalar,
    dot: 0,
    name: "scalar",
};
#[cfg(target_arch = "x86_64")]
static AVX2: Kernels = Kernels {
    level: SimdLevel::Avx2,
    dot: avx2::DOT_MADD,
    name: "avx2",
};
#[cfg(target_arch = "x86_64")]
static AVX512_VNNI: Kernels = Kernels {
    level: SimdLevel::Vnni,
    dot: avx2::DOT_VNNI_EVEX,
    name: "avx512-vnni",
};
#[cfg(target_arch = "x86_64")]
static AVX_VNNI: Kernels = Kernels {
    level: SimdLevel::Vnni,
    dot: avx2::DOT_VNNI_VEX,
    name: "avx-vnni",
};

/// A specific level if this CPU supports it (tests compare each against scalar).
pub fn kernels_for(level: SimdLevel) -> Option<&'static Kernels> {
    match level {
        SimdLevel::Scalar => Some(&SCALAR),
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => {
            let ok = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            ok.then_some(&AVX2)
        }
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Vnni => {
            let avx2 = kernels_for(SimdLevel::Avx2)?;
            let vnni = vnni_candidate()?;
            // Checked once per process: a VNNI set that disagrees with AVX2 in any bit is
            // never used (the instruction is emitted by inline assembly, see `avx2::dot_u8i8`).
            static AGREES: OnceLock<bool> = OnceLock::new();
            let agrees = *AGREES.get_or_init(|| {
                let trials = self_check::trials();
                let ok = self_check::same_bits(&trials, &|t| t.run(vnni), &|t| t.run(avx2));
                if !ok {
                    let msg = "VNNI kernels disagree with AVX2 on the start-up check; using AVX2";
                    tracing::error!(kernels = vnni.name, "{msg}");
                }
                ok
            });
            agrees.then_some(vnni)
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => None,
    }
}

/// The VNNI kernel set this CPU's features allow (AVX-512 VNNI + VL, else AVX-VNNI), before
/// the start-up check that [`kernels_for`] adds.
#[cfg(target_arch = "x86_64")]
fn vnni_candidate() -> Option<&'static Kernels> {
    kernels_for(SimdLevel::Avx2)?;
    if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
        Some(&AVX512_VNNI)
    } else if is_x86_feature_detected!("avxvnni") {
        Some(&AVX_VNNI)
    } else {
        None
    }
}

/// Best kernel set for this CPU, chosen once. `FERRUM_KERNELS=scalar|avx2|vnni` forces a
/// level (to compare or debug); an unknown or unsupported request falls back to the best one.
pub fn kernels() -> &'static Kernels {
    static CHOSEN: OnceLock<&'static Kernels> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        let best = kernels_for(SimdLevel::Vnni)
            .or_else(|| kernels_for(SimdLevel::Avx2))
            .unwrap_or(&SCALAR);
        let Ok(req) = std::env::var("FERRUM_KERNELS") else {
            return best;
        };
        let level = match req.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(SimdLevel::Scalar),
            "avx2" => Some(SimdLevel::Avx2),
            "vnni" => Some(SimdLevel::Vnni),
            _ => None,
        };
        match level.and_then(kernels_for) {
            Some(k) => k,
            None => {
                tracing::warn!(requested = %req, using = best.name, "FERRUM_KERNELS not supported here");
                best
            }
        }
    })
}

impl Kernels {
    /// The SIMD level, for logs and tests.
    pub fn level(&self) -> SimdLevel {
        self.level
    }

    /// A short name ("scalar", "avx2", "avx512-vnni", "avx-vnni") for logs and benchmarks.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Dot product of one weight row of type `w_ty` with an activation row already quantized to
    /// `vec_dot_type(w_ty)`, `n` elements each.
    ///
    /// Panics (programming error) when a slice is shorter than its row or `w_ty` is not a
    /// weight type.
    pub fn vec_dot(&self, w_ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
        let mut out = [0f32];
        self.matmul_tile(w_ty, n, w, 1, a, 1, &mut out, 1);
        out[0]
    }

    /// A tile of a matrix product: for r in 0..nrows, c in 0..ncols,
    /// `out[c * out_stride + r] = vec_dot(weight row r, activation row c)`, bitwise identical to
    /// the per-pair call (batch invariance) but reusing each weight block across columns.
    /// `w` holds `nrows` consecutive weight rows, `a` holds `ncols` consecutive activation rows.
    ///
    /// Panics (programming error) when a slice is too short or `w_ty` is not a weight type.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_tile(
        &self,
        w_ty: GgmlType,
        n: usize,
        w: &[u8],
        nrows: usize,
        a: &[u8],
        ncols: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        if nrows == 0 || ncols == 0 {
            return;
        }
        assert!(
            out.len() >= (ncols - 1) * out_stride + nrows,
            "programming error: output slice too short"
        );
        // SAFETY: the slices were checked to cover every row the kernel reads or writes, and
        // `out` is borrowed mutably for the call.
        unsafe {
            self.matmul_tile_raw(w_ty, n, w, nrows, a, ncols, out.as_mut_ptr(), out_stride);
        }
    }

    /// [`Kernels::matmul_tile`] writing through a raw pointer, so threads can fill disjoint
    /// rows of one shared output matrix in place (no per-thread tile to copy out).
    ///
    /// # Safety
    /// `out.add(c * out_stride + r)` must be valid for writes for every `r < nrows`,
    /// `c < ncols`, and no other thread may access those elements during the call. The slice
    /// lengths are checked as in `matmul_tile`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul_tile_raw(
        &self,
        w_ty: GgmlType,
        n: usize,
        w: &[u8],
        nrows: usize,
        a: &[u8],
        ncols: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        assert!(
            is_weight_type(w_ty),
            "programming error: {w_ty:?} is not a weight type"
        );
        let ws = row_bytes(w_ty, n);
        let as_ = row_bytes(vec_dot_type(w_ty), n);
        if nrows == 0 || ncols == 0 {
            return;
        }
        assert!(
            w.len() >= nrows * ws && a.len() >= ncols * as_,
            "programming error: weight or activation slice too short"
        );
        match self.level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: these levels are only handed out after their CPU features (VNNI's
            // included, for its `dot`) were detected; the input slices were checked and the
            // caller vouches for the output.
            SimdLevel::Avx2 | SimdLevel::Vnni => unsafe {
                let (wp, ap) = (w.as_ptr(), a.as_ptr());
                dot_call!(
                    self.dot,
                    avx2::matmul,
                    (w_ty, n, wp, ws, nrows, ap, as_, ncols, out, out_stride)
                )
            },
            _ => {
                for r in 0..nrows {
                    let wr = &w[r * ws..(r + 1) * ws];
                    for c in 0..ncols {
                        let ac = &a[c * as_..(c + 1) * as_];
                        *out.add(c * out_stride + r) = scalar::vec_dot(w_ty, n, wr, ac);
                    }
                }
            }
        }
    }

    /// Weight rows `rows` (whole groups of [`GROUP_ROWS`]) of an interleaved Q4_1 matrix times
    /// `ncols` Q8_1 activation rows: `out[c * out_stride + (r - rows.start)]`. Each output is
    /// computed the same way whatever `rows` and `ncols` are (batch invariance); see
    /// [`Q4_1x8`] for how this rounds against llama.cpp.
    ///
    /// # Safety
    /// As [`Kernels::matmul_tile_raw`]: `out` is valid for writes at every index above and no
    /// other thread accesses them during the call. Panics (programming error) when `a` is
    /// shorter than `ncols` rows or `rows` is not whole groups of `w`.
    pub unsafe fn matmul_q4_1x8_raw(
        &self,
        w: &Q4_1x8,
        rows: Range<usize>,
        a: &[u8],
        ncols: usize,
        out: *mut f32,
        out_stride: usize,
    ) {
        let groups = w.groups(&rows);
        let nb = w.cols() / 32;
        let as_ = row_bytes(GgmlType::Q8_1, w.cols());
        if groups.is_empty() || ncols == 0 {
            return;
        }
        assert!(
            a.len() >= ncols * as_,
            "programming error: activation slice too short"
        );
        match self.level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: these levels are only handed out after their CPU features (VNNI's
            // included, for its `dot`) were detected; the inputs were checked and the caller
            // vouches for the output.
            SimdLevel::Avx2 | SimdLevel::Vnni => unsafe {
                let ng = groups.len() / (nb * interleaved::GROUP_BLOCK);
                let (wp, ap) = (groups.as_ptr(), a.as_ptr());
                dot_call!(
                    self.dot,
                    avx2::interleaved::matmul,
                    (nb, wp, ng, ap, as_, ncols, out, out_stride)
                )
            },
            // SAFETY: as above; the scalar kernel indexes the checked slices.
            _ => unsafe { interleaved::matmul_scalar(nb, groups, a, as_, ncols, out, out_stride) },
        }
    }

    /// f32 dot product (attention scores, small projections).
    ///
    /// Panics (programming error) when the lengths differ.
    pub fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(
            a.len(),
            b.len(),
            "programming error: dot_f32 lengths differ"
        );
        match self.level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 was detected for this level (AVX-512 implies it); lengths checked.
            SimdLevel::Avx2 | SimdLevel::Vnni => unsafe {
                avx2::dot_float(GgmlType::F32, a.len(), a.as_ptr().cast(), b.as_ptr())
            },
            _ => scalar::dot_f32(a, b),
        }
    }

    /// `y += alpha * x` (attention value accumulation, residual adds).
    ///
    /// Panics (programming error) when the lengths differ.
    pub fn axpy(&self, alpha: f32, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), y.len(), "programming error: axpy lengths differ");
        match self.level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 + FMA were detected for this level.
            SimdLevel::Avx2 | SimdLevel::Vnni => unsafe { avx2::axpy(alpha, x, y) },
            _ => scalar::axpy(alpha, x, y),
        }
    }

    /// Widens an f16 row (as raw bits, e.g. from the KV cache) to f32; exact.
    ///
    /// Panics (programming error) when the lengths differ.
    pub fn f16_to_f32(&self, src: &[u16], dst: &mut [f32]) {
        assert_eq!(
            src.len(),
            dst.len(),
            "programming error: f16_to_f32 lengths differ"
        );
        match self.level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: F16C was detected for this level.
            SimdLevel::Avx2 | SimdLevel::Vnni => unsafe { avx2::f16_to_f32(src, dst) },
            _ => scalar::f16_to_f32(src, dst),
        }
    }

    /// Narrows an f32 row to f16 bits, rounding to nearest even (same bits at every level).
    ///
    /// Panics (programming error) when the lengths differ.
    pub fn f32_to_f16(&self, src: &[f32], dst: &mut [u16]) {
        assert_eq!(
            src.len(),
            dst.len(),
            "programming error: f32_to_f16 lengths differ"
        );
        match self.level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: F16C was detected for this level.
            SimdLevel::Avx2 | SimdLevel::Vnni => unsafe { avx2::f32_to_f16(src, dst) },
            _ => scalar::f32_to_f16(src, dst),
        }
    }
}
