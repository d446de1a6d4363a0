//! Q4_1 weights repacked at load into groups of 8 interleaved rows ([`Q4_1x8`]), and the
//! arithmetic their kernels share.
//!
//! Why: ggml's Q4_1 x Q8_1 dot keeps 8 float lanes per (weight row, activation row) pair and
//! spends an int16-to-int32 widening, a conversion and an FMA on every 32-value block of every
//! pair. On this AVX2 CPU (no VNNI) the integer multiply-adds and the FMA compete for the same
//! pipes (docs/benchmarks.md, session 9), which bounds ggml's order at about 2.5 cycles per
//! block pair. With 8 weight rows side by
//! side, one `vpmaddubsw` multiplies 4 quants of each of the 8 rows by the same 4 activation
//! quants (one broadcast), the 8 steps of a block add up exactly in int16 lanes
//! (|sum| <= 8 * 2 * 15 * 127 < 2^15), and one widening, one conversion and three float
//! operations per block finish all 8 rows: about 1.2 cycles per block pair (1.5-3.0x the
//! ggml-order kernels, `examples/q4_1x8_bench.rs`).
//!
//! The result is a different rounding from llama.cpp's (each block's integer sum is exact
//! here, then scaled once), within float rounding of it: the golden tests check logits and
//! greedy text against llama.cpp with tolerances. Every kernel computes each output the same
//! way, whatever the batch: per block, in block order,
//! `acc = fma(float(Σ q_w q_a), d_w * d_a, acc)` then `acc = fma(m_w, s_a, acc)`, starting
//! from 0. So a request's output still never depends on its batch-mates.
//!
//! Layout of one group (8 weight rows) and block (32 values), 160 bytes: the 8 rows' `d` as
//! f16, their 8 `m` as f16, then 4 vectors of 32 bytes; in vector `v`, byte `4 * row + j`
//! holds value `8v + j` of that row in its low nibble and value `8v + 4 + j` in its high one.
//! A group's blocks are consecutive, and so are the groups.

use std::ops::Range;

use super::blocks::f16_at;

/// Weight rows per interleaved group.
pub const GROUP_ROWS: usize = 8;
/// Bytes of one (group, block): 8 `d`, 8 `m`, 128 bytes of quants.
pub(super) const GROUP_BLOCK: usize = 160;
/// Offset of the quants in a (group, block).
pub(super) const QUANTS: usize = 32;

/// A Q4_1 matrix in the 8-row interleaved layout of the module docs: same bytes as the GGUF
/// tensor, reordered, so the batched kernels run about twice as fast.
pub struct Q4_1x8 {
    rows: usize,
    cols: usize,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Q4_1x8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q4_1x8({}x{})", self.rows, self.cols)
    }
}

impl Q4_1x8 {
    /// Repacks `rows` GGUF Q4_1 rows of `cols` values each (`src` holds them back to back);
    /// `None` unless `rows` is a whole number of groups, `cols` a whole number of blocks and
    /// `src` exactly that size.
    pub fn from_gguf(src: &[u8], rows: usize, cols: usize) -> Option<Self> {
        if rows == 0 || !rows.is_multiple_of(GROUP_ROWS) || !cols.is_multiple_of(32) {
            return None;
        }
        let nb = cols / 32;
        if src.len() != rows * super::row_bytes(crate::GgmlType::Q4_1, cols) {
            return None;
        }
        let mut bytes = vec![0u8; rows / GROUP_ROWS * nb * GROUP_BLOCK];
        for (i, out) in bytes.chunks_exact_mut(GROUP_BLOCK).enumerate() {
            let (g, b) = (i / nb, i % nb);
            for l in 0..GROUP_ROWS {
                let blk = &src[((g * GROUP_ROWS + l) * nb + b) * 20..][..20];
                out[2 * l..2 * l + 2].copy_from_slice(&blk[0..2]);
                out[16 + 2 * l..16 + 2 * l + 2].copy_from_slice(&blk[2..4]);
                // GGUF: byte j holds value j (low nibble) and value j + 16 (high nibble).
                let value = |k: usize| (blk[4 + k % 16] >> (4 * (k / 16))) & 0xF;
                for v in 0..4 {
                    for j in 0..4 {
                        let (lo, hi) = (value(8 * v + j), value(8 * v + 4 + j));
                        out[QUANTS + 32 * v + 4 * l + j] = lo | (hi << 4);
                    }
                }
            }
        }
        Some(Q4_1x8 { rows, cols, bytes })
    }

    /// Output features (weight rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (values per row).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of the groups that hold weight rows `rows` (whole groups).
    pub(super) fn groups(&self, rows: &Range<usize>) -> &[u8] {
        assert!(
            rows.start.is_multiple_of(GROUP_ROWS)
                && rows.end.is_multiple_of(GROUP_ROWS)
                && rows.start <= rows.end
                && rows.end <= self.rows,
            "programming error: rows {rows:?} are not whole groups of {self:?}"
        );
        let per_group = self.cols / 32 * GROUP_BLOCK;
        &self.bytes[rows.start / GROUP_ROWS * per_group..rows.end / GROUP_ROWS * per_group]
    }
}

/// Portable kernel with the module's arithmetic: `out[c * os + r]` for the weight rows of
/// `groups` (whole groups of `nb` blocks) and `ncols` Q8_1 activation rows of stride `as_`.
/// The reference the SIMD kernels are tested against bit for bit, and the fallback without
/// AVX2.
///
/// Safety: `out.add(c * os + r)` is valid for writes for every row and column.
pub(super) unsafe fn matmul_scalar(
    nb: usize,
    groups: &[u8],
    a: &[u8],
    as_: usize,
    ncols: usize,
    out: *mut f32,
    os: usize,
) {
    let ng = groups.len() / (nb * GROUP_BLOCK);
    for g in 0..ng {
        for c in 0..ncols {
            let act = &a[c * as_..(c + 1) * as_];
            for l in 0..GROUP_ROWS {
                let mut acc = 0f32;
                for b in 0..nb {
                    let blk = &groups[(g * nb + b) * GROUP_BLOCK..][..GROUP_BLOCK];
                    let ab = &act[b * 36..(b + 1) * 36];
                    let mut sum = 0i32;
                    for v in 0..4 {
                        for j in 0..4 {
                            let q = blk[QUANTS + 32 * v + 4 * l + j];
                            let (lo, hi) = ((q & 0xF) as i32, (q >> 4) as i32);
                            sum += lo * (ab[4 + 8 * v + j] as i8 as i32)
                                + hi * (ab[4 + 8 * v + 4 + j] as i8 as i32);
                        }
                    }
                    let (dw, mw) = (f16_at(blk, 2 * l), f16_at(blk, 16 + 2 * l));
                    acc = (sum as f32).mul_add(dw * f16_at(ab, 0), acc);
                    acc = mw.mul_add(f16_at(ab, 2), acc);
                }
                *out.add(c * os + g * GROUP_ROWS + l) = acc;
            }
        }
    }
}
