//! Tests of the interleaved Q4_1 layout: repacking keeps every value, the scalar kernel agrees
//! with an f64 dot of the dequantized rows, and every SIMD level equals the scalar kernel bit
//! for bit for any tile shape (batch invariance).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::interleaved::{GROUP_BLOCK, QUANTS};
use super::*;

fn random_q4_1(rows: usize, n: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut w = vec![0u8; rows * n / 32 * 20];
    rng.fill(&mut w[..]);
    for b in w.chunks_exact_mut(20) {
        b[0..2].copy_from_slice(&half::f16::from_f32(rng.random_range(0f32..0.05)).to_le_bytes());
        b[2..4].copy_from_slice(&half::f16::from_f32(rng.random_range(-0.4f32..0.0)).to_le_bytes());
    }
    w
}

fn q8_1_rows(n: usize, rows: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let rb = row_bytes(GgmlType::Q8_1, n);
    let mut out = vec![0u8; rb * rows];
    for o in out.chunks_exact_mut(rb) {
        let x: Vec<f32> = (0..n).map(|_| rng.random_range(-1f32..1.0)).collect();
        quantize_row(GgmlType::Q8_1, &x, o);
    }
    out
}

/// `out[c * rows + r]` of the whole matrix on one kernel set.
fn run(k: &Kernels, p: &Q4_1x8, a: &[u8], ncols: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; p.rows() * ncols];
    // SAFETY: `out` holds every index the call writes.
    unsafe { k.matmul_q4_1x8_raw(p, 0..p.rows(), a, ncols, out.as_mut_ptr(), p.rows()) };
    out
}

#[test]
fn repacking_keeps_every_value_and_scale() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (rows, n) = (16, 96);
    let w = random_q4_1(rows, n, &mut rng);
    let p = Q4_1x8::from_gguf(&w, rows, n).expect("whole groups");
    let nb = n / 32;
    let groups = p.groups(&(0..rows));
    for r in 0..rows {
        let (g, l) = (r / GROUP_ROWS, r % GROUP_ROWS);
        for b in 0..nb {
            let src = &w[(r * nb + b) * 20..][..20];
            let blk = &groups[(g * nb + b) * GROUP_BLOCK..][..GROUP_BLOCK];
            assert_eq!(&blk[2 * l..2 * l + 2], &src[0..2]);
            assert_eq!(&blk[16 + 2 * l..16 + 2 * l + 2], &src[2..4]);
            for k in 0..32 {
                let want = (src[4 + k % 16] >> (4 * (k / 16))) & 0xF;
                let (v, j, high) = (k / 8, k % 4, (k % 8) >= 4);
                let byte = blk[QUANTS + 32 * v + 4 * l + j];
                let got = if high { byte >> 4 } else { byte & 0xF };
                assert_eq!(got, want, "row {r} block {b} value {k}");
            }
        }
    }
    assert!(Q4_1x8::from_gguf(&w[..w.len() / 2 + 20], rows, n).is_none());
    assert!(Q4_1x8::from_gguf(&w[..12 * nb * 20], 12, n).is_none());
}

#[test]
fn scalar_kernel_matches_f64_dot_of_dequantized_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for nb in [1, 2, 7, 48] {
        let (rows, n, ncols) = (16, nb * 32, 3);
        let w = random_q4_1(rows, n, &mut rng);
        let a = q8_1_rows(n, ncols, &mut rng);
        let p = Q4_1x8::from_gguf(&w, rows, n).expect("whole groups");
        let got = run(
            kernels_for(SimdLevel::Scalar).expect("scalar"),
            &p,
            &a,
            ncols,
        );
        let f16 = |b: &[u8], o: usize| half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32() as f64;
        let (mut wf, mut af) = (vec![0f32; n], vec![0f32; n]);
        for r in 0..rows {
            let wr = &w[r * nb * 20..(r + 1) * nb * 20];
            dequantize_row(GgmlType::Q4_1, wr, &mut wf);
            for c in 0..ncols {
                let ar = &a[c * nb * 36..(c + 1) * nb * 36];
                dequantize_row(GgmlType::Q8_1, ar, &mut af);
                // Σ (w - m) a in f64, plus m times the stored (f16) activation sum `s`.
                let (mut dot, mut mag) = (0f64, 0f64);
                for i in 0..n {
                    let (wb, ab) = (&wr[i / 32 * 20..], &ar[i / 32 * 36..]);
                    dot += (wf[i] as f64 - f16(wb, 2)) * af[i] as f64;
                    mag += (wf[i].abs() as f64 + 0.8) * af[i].abs() as f64;
                    if i % 32 == 0 {
                        dot += f16(wb, 2) * f16(ab, 2);
                    }
                }
                let g = got[c * rows + r] as f64;
                assert!(
                    (g - dot).abs() <= 1e-5 * mag + 1e-6,
                    "nb {nb} row {r} col {c}: {g} vs {dot}"
                );
            }
        }
    }
}

#[test]
fn simd_kernels_equal_scalar_bit_for_bit_for_every_tile_shape() {
    let scalar = kernels_for(SimdLevel::Scalar).expect("scalar");
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for level in [SimdLevel::Avx2, SimdLevel::Vnni] {
        let Some(k) = kernels_for(level) else {
            eprintln!("note: {level:?} not supported on this CPU");
            continue;
        };
        for (rows, nb) in [(8, 1), (40, 3), (64, 18)] {
            let n = nb * 32;
            let mut w = random_q4_1(rows, n, &mut rng);
            // Largest int16 block sums: all quants 15 against +-127 activations.
            w[4..20].fill(0xFF);
            let p = Q4_1x8::from_gguf(&w, rows, n).expect("whole groups");
            for ncols in [1, 2, 3, 4, 5, 9] {
                let mut a = q8_1_rows(n, ncols, &mut rng);
                a[4..36].fill(127);
                if ncols > 1 {
                    a[nb * 36 + 4..nb * 36 + 36].fill(0x81);
                }
                let want = run(scalar, &p, &a, ncols);
                let got = run(k, &p, &a, ncols);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(g, w)| g.to_bits() == w.to_bits()),
                    "{level:?}: {rows}x{n} by {ncols} differs from scalar"
                );
                // The last activation row alone against the second group only: same bits.
                if rows >= 16 {
                    let last = &a[(ncols - 1) * nb * 36..];
                    let mut o = [0f32; GROUP_ROWS];
                    // SAFETY: `o` holds the 8 outputs of one group and one column.
                    unsafe { k.matmul_q4_1x8_raw(&p, 8..16, last, 1, o.as_mut_ptr(), 8) };
                    let w8 = &want[(ncols - 1) * rows + 8..][..8];
                    assert!(o.iter().zip(w8).all(|(g, w)| g.to_bits() == w.to_bits()));
                }
            }
        }
    }
}
