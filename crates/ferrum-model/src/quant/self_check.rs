//! Start-up check of a VNNI kernel set against the AVX2 one.
//!
//! The VNNI kernels are the AVX2 kernels with one instruction swapped (`vpdpbusd`, emitted by
//! inline assembly), and must compute the same bits. Our CI and development machines may lack
//! VNNI, so the first process on a VNNI machine checks it: a few small products of the default
//! model's formats, with shapes that reach every kernel path (1 column, 2-3 columns, partial
//! and whole panels, rows longer than one scale chunk), in the GGUF layout and in the
//! interleaved Q4_1 layout. It takes well under a millisecond.
//! Data comes from a fixed xorshift stream, and activations are quantized by the scalar
//! quantizer, because this runs while the process's kernel set is being chosen.

use super::{blocks, row_bytes, vec_dot_type, Kernels, Q4_1x8};
use crate::GgmlType;

/// One matrix product to run on both kernel sets.
pub(super) struct Trial {
    ty: GgmlType,
    n: usize,
    w: Vec<u8>,
    nrows: usize,
    a: Vec<u8>,
    ncols: usize,
    /// The weights repacked, to run the interleaved kernels instead.
    packed: Option<Q4_1x8>,
}

impl Trial {
    /// `out[c * nrows + r]` for this product on kernel set `k`.
    pub(super) fn run(&self, k: &Kernels) -> Vec<f32> {
        let mut out = vec![0f32; self.nrows * self.ncols];
        let (w, a) = (&self.w, &self.a);
        match &self.packed {
            // SAFETY: `out` holds `ncols` rows of `nrows` outputs.
            Some(p) => unsafe {
                let o = out.as_mut_ptr();
                k.matmul_q4_1x8_raw(p, 0..self.nrows, a, self.ncols, o, self.nrows);
            },
            None => k.matmul_tile(
                self.ty, self.n, w, self.nrows, a, self.ncols, &mut out, self.nrows,
            ),
        }
        out
    }
}

/// A tiny deterministic generator (xorshift64*): no dependency, same data every run.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// The products checked: Q4_1 and Q8_0 weights, 9 rows of 70 blocks (past both scale-chunk
/// sizes), and 40 interleaved Q4_1 rows (a whole and a partial one-row tile), against 1, 2,
/// 3, 5 and 9 activation rows.
pub(super) fn trials() -> Vec<Trial> {
    let mut rng = Stream(0x9E37_79B9_7F4A_7C15);
    let nb = 70;
    let n = nb * 32;
    let mut v = Vec::new();
    for (ty, nrows, pack) in [
        (GgmlType::Q4_1, 9, false),
        (GgmlType::Q8_0, 9, false),
        (GgmlType::Q4_1, 40, true),
    ] {
        let wb = ty.type_size();
        let mut w = vec![0u8; row_bytes(ty, n) * nrows];
        for block in w.chunks_exact_mut(wb) {
            for byte in block.iter_mut() {
                *byte = rng.next() as u8;
            }
            // Finite scales (and a finite Q4_1 minimum) in the first 2 (or 4) bytes.
            let scales = if ty == GgmlType::Q4_1 { 2 } else { 1 };
            for s in 0..scales {
                let v = half::f16::from_f32(rng.unit() * 0.05)
                    .to_bits()
                    .to_le_bytes();
                block[2 * s..2 * s + 2].copy_from_slice(&v);
            }
        }
        for ncols in [1, 2, 3, 5, 9] {
            let at = vec_dot_type(ty);
            let mut a = vec![0u8; row_bytes(at, n) * ncols];
            for row in a.chunks_exact_mut(row_bytes(at, n)) {
                let x: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
                blocks::quantize_q8_0_or_1(&x, row, at == GgmlType::Q8_1);
            }
            let packed = pack.then(|| Q4_1x8::from_gguf(&w, nrows, n).expect("whole groups"));
            let w = w.clone();
            v.push(Trial {
                ty,
                n,
                w,
                nrows,
                a,
                ncols,
                packed,
            });
        }
    }
    v
}

/// True when `candidate` and `reference` give bit-identical outputs on every trial.
pub(super) fn same_bits(
    trials: &[Trial],
    candidate: &dyn Fn(&Trial) -> Vec<f32>,
    reference: &dyn Fn(&Trial) -> Vec<f32>,
) -> bool {
    trials.iter().all(|t| {
        let (got, want) = (candidate(t), reference(t));
        got.len() == want.len()
            && got
                .iter()
                .zip(&want)
                .all(|(g, w)| g.to_bits() == w.to_bits())
    })
}
