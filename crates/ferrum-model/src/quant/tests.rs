//! Kernel tests: block layouts against independent packers, scalar dots against an f64
//! reference on dequantized values, every SIMD level against scalar, tiles against per-pair
//! dots bit for bit, and activation quantization round trips.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::blocks::scale_min_k4;
use super::*;

const WEIGHT_TYPES: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q6K,
];

/// Block counts to test: one, odd and even counts, more than one 4-wide row tile.
const BLOCK_COUNTS: [usize; 5] = [1, 2, 3, 7, 13];

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// Random rows of a weight type: random quants, finite random scales.
fn random_weights(ty: GgmlType, n: usize, rows: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let rb = row_bytes(ty, n);
    let mut v = vec![0u8; rb * rows];
    match ty {
        GgmlType::F32 => {
            for c in v.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.random_range(-1f32..1.0).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in v.chunks_exact_mut(2) {
                c.copy_from_slice(&f16_bytes(rng.random_range(-1f32..1.0)));
            }
        }
        GgmlType::BF16 => {
            for c in v.chunks_exact_mut(2) {
                let bits = (rng.random_range(-1f32..1.0).to_bits() >> 16) as u16;
                c.copy_from_slice(&bits.to_le_bytes());
            }
        }
        _ => {
            rng.fill(&mut v[..]);
            for b in v.chunks_exact_mut(ty.type_size()) {
                let mut scale = |off: usize, rng: &mut ChaCha8Rng| {
                    b[off..off + 2].copy_from_slice(&f16_bytes(rng.random_range(-0.05f32..0.05)));
                };
                match ty {
                    GgmlType::Q4_1 | GgmlType::Q4K => {
                        scale(0, rng);
                        scale(2, rng);
                    }
                    GgmlType::Q6K => scale(208, rng),
                    _ => scale(0, rng),
                }
            }
        }
    }
    v
}

/// Random activation rows (some with an outlier) in f32.
fn random_acts(n: usize, rows: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n * rows)
        .map(|_| rng.random_range(-1f32..1.0))
        .collect();
    if rows > 1 {
        x[n + 3] = 9.0;
    }
    x
}

fn quantize_rows(ty: GgmlType, x: &[f32], n: usize) -> Vec<u8> {
    let rb = row_bytes(ty, n);
    let mut out = vec![0u8; rb * (x.len() / n)];
    for (xr, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(rb)) {
        quantize_row(ty, xr, o);
    }
    out
}

/// Per-element magnitude of the weight's offset term (Q4_1 min, Q4_K dmin·m), for error bounds.
fn offsets(ty: GgmlType, w: &[u8], n: usize) -> Vec<f32> {
    let mut off = vec![0f32; n];
    let f16 = |b: &[u8], o: usize| half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32();
    match ty {
        GgmlType::Q4_1 => {
            for (b, o) in w.chunks_exact(20).zip(off.chunks_exact_mut(32)) {
                o.fill(f16(b, 2).abs());
            }
        }
        GgmlType::Q4K => {
            for (b, o) in w.chunks_exact(144).zip(off.chunks_exact_mut(256)) {
                for j in 0..8 {
                    let m = scale_min_k4(j, &b[4..16]).1 as f32;
                    o[32 * j..32 * j + 32].fill((f16(b, 2) * m).abs());
                }
            }
        }
        _ => {}
    }
    off
}

/// (exact f64 dot of dequantized values, Σ magnitude of the terms) for one row pair.
fn reference(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> (f64, f64) {
    let (mut wf, mut af) = (vec![0f32; n], vec![0f32; n]);
    dequantize_row(ty, w, &mut wf);
    dequantize_row(vec_dot_type(ty), a, &mut af);
    let off = offsets(ty, w, n);
    let mut dot = 0f64;
    let mut mag = 0f64;
    for i in 0..n {
        dot += wf[i] as f64 * af[i] as f64;
        mag += (wf[i].abs() + 2.0 * off[i]) as f64 * af[i].abs() as f64;
    }
    (dot, mag)
}

fn simd_levels() -> Vec<&'static Kernels> {
    let mut v = Vec::new();
    for level in [SimdLevel::Avx2, SimdLevel::Vnni] {
        match kernels_for(level) {
            Some(k) => v.push(k),
            None => eprintln!("note: {level:?} not supported on this CPU; its kernels are not run"),
        }
    }
    v
}

#[test]
fn scalar_dot_matches_f64_dot_of_dequantized_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let k = kernels_for(SimdLevel::Scalar).unwrap();
    for ty in WEIGHT_TYPES {
        for nb in BLOCK_COUNTS {
            let n = nb * if ty.block_size() == 256 { 256 } else { 32 };
            let w = random_weights(ty, n, 1, &mut rng);
            let a = quantize_rows(vec_dot_type(ty), &random_acts(n, 1, &mut rng), n);
            let got = k.vec_dot(ty, n, &w, &a) as f64;
            let (want, mag) = reference(ty, n, &w, &a);
            // Q4_1's min term uses s = d·Σq stored as f16 (relative error 2^-11), hence 1e-3.
            let bound = 1e-3 * mag + 1e-5;
            assert!(
                (got - want).abs() <= bound,
                "{ty:?} nb={nb}: {got} vs {want} (bound {bound})"
            );
        }
    }
}

/// |simd − scalar| ≤ 1e-4 · Σ|terms| + 1e-5: only the float summation order may differ.
#[test]
fn simd_vec_dot_agrees_with_scalar_on_random_blocks() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let scalar = kernels_for(SimdLevel::Scalar).unwrap();
    for k in simd_levels() {
        for ty in WEIGHT_TYPES {
            for nb in BLOCK_COUNTS {
                for _ in 0..8 {
                    let n = nb * if ty.block_size() == 256 { 256 } else { 32 };
                    let w = random_weights(ty, n, 1, &mut rng);
                    let a = quantize_rows(vec_dot_type(ty), &random_acts(n, 1, &mut rng), n);
                    let got = k.vec_dot(ty, n, &w, &a);
                    let want = scalar.vec_dot(ty, n, &w, &a);
                    let (_, mag) = reference(ty, n, &w, &a);
                    let bound = 1e-4 * mag + 1e-5;
                    assert!(
                        ((got - want) as f64).abs() <= bound,
                        "{} {ty:?} nb={nb}: {got} vs scalar {want} (bound {bound})",
                        k.name()
                    );
                }
            }
        }
    }
}

#[test]
fn matmul_tile_is_bitwise_identical_to_per_pair_vec_dot() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut levels = simd_levels();
    levels.push(kernels_for(SimdLevel::Scalar).unwrap());
    for k in levels {
        for ty in WEIGHT_TYPES {
            for (nb, nrows, ncols) in [(1, 1, 1), (3, 7, 5), (7, 9, 17), (2, 4, 4), (13, 5, 3)] {
                let n = nb * if ty.block_size() == 256 { 256 } else { 32 };
                let (wr, ar) = (row_bytes(ty, n), row_bytes(vec_dot_type(ty), n));
                let w = random_weights(ty, n, nrows, &mut rng);
                let a = quantize_rows(vec_dot_type(ty), &random_acts(n, ncols, &mut rng), n);
                let stride = nrows + 3;
                let mut out = vec![f32::NAN; stride * ncols];
                k.matmul_tile(ty, n, &w, nrows, &a, ncols, &mut out, stride);
                for r in 0..nrows {
                    for c in 0..ncols {
                        let one = k.vec_dot(ty, n, &w[r * wr..][..wr], &a[c * ar..][..ar]);
                        let got = out[c * stride + r];
                        assert_eq!(
                            got.to_bits(),
                            one.to_bits(),
                            "{} {ty:?} ({r},{c}) of {nrows}x{ncols}: {got} vs {one}",
                            k.name()
                        );
                    }
                    assert!(out[r..].iter().step_by(stride).all(|v| v.is_finite()));
                }
            }
        }
    }
}

#[test]
fn q8_quantizers_round_half_to_even_like_ggml_on_x86() {
    let mut x = vec![0f32; 32];
    x[..6].copy_from_slice(&[127.0, 0.5, 1.5, 2.5, -2.5, -0.4]);
    let mut q = vec![0u8; 34];
    quantize_row(GgmlType::Q8_0, &x, &mut q);
    let got: Vec<i8> = q[2..8].iter().map(|&b| b as i8).collect();
    assert_eq!(got, [127, 0, 2, 2, -2, 0]);
    assert_eq!(half::f16::from_le_bytes([q[0], q[1]]).to_f32(), 1.0);

    let mut x = vec![0f32; 256];
    x[..4].copy_from_slice(&[-127.0, 0.5, 1.5, 126.5]);
    let mut q = vec![0u8; 292];
    quantize_row(GgmlType::Q8K, &x, &mut q);
    // iscale = -127 / max = 1: ties go to even.
    let got: Vec<i8> = q[4..8].iter().map(|&b| b as i8).collect();
    assert_eq!(got, [-127, 0, 2, 126]);
    assert_eq!(f32::from_le_bytes([q[0], q[1], q[2], q[3]]), 1.0);
    assert_eq!(i16::from_le_bytes([q[260], q[261]]), -127 + 2 + 126);
}

#[test]
fn fast_rounding_matches_round_ties_even_bit_for_bit() {
    let mut xs: Vec<f32> = (-600..=600).map(|i| i as f32 * 0.25).collect();
    xs.extend([
        0.0,
        -0.0,
        0.49999997,
        -0.49999997,
        4194303.5,
        -4194303.5,
        4194304.0,
        1e30,
    ]);
    xs.extend([
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
        -1e-40,
    ]);
    // Every bit pattern of |x| < 256 at a stride, both signs.
    let mut bits = 0u32;
    while f32::from_bits(bits) < 256.0 {
        xs.push(f32::from_bits(bits));
        xs.push(-f32::from_bits(bits));
        bits += 4099;
    }
    for x in xs {
        let (got, want) = (super::blocks::round_ne(x), x.round_ties_even());
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{x:e}: {got:e} != {want:e}"
        );
        assert_eq!(got as i8, want as i8);
    }
}

#[test]
fn activation_quantization_round_trips_within_half_a_step() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for ty in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8K, GgmlType::F32] {
        let n = 512;
        let x = random_acts(n, 2, &mut rng);
        let q = quantize_rows(ty, &x, n);
        let rb = row_bytes(ty, n);
        for (row, qr) in x.chunks_exact(n).zip(q.chunks_exact(rb)) {
            let mut back = vec![0f32; n];
            dequantize_row(ty, qr, &mut back);
            let bs = ty.block_size().max(32);
            for (xb, yb) in row.chunks(bs).zip(back.chunks(bs)) {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                // Half a step, plus the f16 rounding of d (≤ 127 · d · 2^-11) where d is f16.
                let bound = if ty == GgmlType::F32 {
                    0.0
                } else {
                    amax / 127.0 * 0.57
                };
                for (a, b) in xb.iter().zip(yb) {
                    assert!((a - b).abs() <= bound, "{ty:?}: {a} -> {b} (bound {bound})");
                }
            }
            if ty == GgmlType::Q8_1 {
                for b in qr.chunks_exact(36) {
                    let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                    let s = half::f16::from_le_bytes([b[2], b[3]]).to_f32();
                    let sum: i32 = b[4..].iter().map(|&v| v as i8 as i32).sum();
                    assert!((s - d * sum as f32).abs() <= (d * sum as f32).abs() * 1e-3 + 1e-6);
                }
            }
        }
    }
}

/// Packs a Q4_K block the way ggml's quantizer does (independent of the dequantizer).
fn pack_q4_k(d: f32, dmin: f32, sc: &[u8; 8], m: &[u8; 8], q: &[u8; 256]) -> Vec<u8> {
    let mut b = vec![0u8; 144];
    b[0..2].copy_from_slice(&f16_bytes(d));
    b[2..4].copy_from_slice(&f16_bytes(dmin));
    let s = &mut b[4..16];
    for j in 0..8 {
        if j < 4 {
            s[j] = sc[j];
            s[j + 4] = m[j];
        } else {
            s[j + 4] = (sc[j] & 0xF) | ((m[j] & 0xF) << 4);
            s[j - 4] |= (sc[j] >> 4) << 6;
            s[j] |= (m[j] >> 4) << 6;
        }
    }
    for chunk in 0..4 {
        for l in 0..32 {
            b[16 + 32 * chunk + l] = q[64 * chunk + l] | (q[64 * chunk + 32 + l] << 4);
        }
    }
    b
}

/// Packs a Q6_K block the way ggml's quantizer does (independent of the dequantizer).
fn pack_q6_k(d: f32, sc: &[i8; 16], q: &[u8; 256]) -> Vec<u8> {
    let mut b = vec![0u8; 210];
    for half in 0..2 {
        let (qlo, qho, j) = (64 * half, 128 + 32 * half, 128 * half);
        for l in 0..32 {
            let (q1, q2, q3, q4) = (q[j + l], q[j + l + 32], q[j + l + 64], q[j + l + 96]);
            b[qlo + l] = (q1 & 0xF) | ((q3 & 0xF) << 4);
            b[qlo + l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
            b[qho + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
    for (i, &s) in sc.iter().enumerate() {
        b[192 + i] = s as u8;
    }
    b[208..210].copy_from_slice(&f16_bytes(d));
    b
}

#[test]
fn k_quant_layouts_dequantize_like_ggml_packs_them() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let sc: [u8; 8] = std::array::from_fn(|_| rng.random_range(0..64));
    let m: [u8; 8] = std::array::from_fn(|_| rng.random_range(0..64));
    let q: [u8; 256] = std::array::from_fn(|_| rng.random_range(0..16));
    let (d, dmin) = (0.25f32, 0.5f32);
    let mut out = vec![0f32; 256];
    dequantize_row(GgmlType::Q4K, &pack_q4_k(d, dmin, &sc, &m, &q), &mut out);
    for i in 0..256 {
        let want = d * sc[i / 32] as f32 * q[i] as f32 - dmin * m[i / 32] as f32;
        assert_eq!(out[i], want, "Q4_K element {i}");
    }
    let sc6: [i8; 16] = std::array::from_fn(|_| rng.random_range(-64..64));
    let q6: [u8; 256] = std::array::from_fn(|_| rng.random_range(0..64));
    dequantize_row(GgmlType::Q6K, &pack_q6_k(0.5, &sc6, &q6), &mut out);
    for i in 0..256 {
        let want = 0.5 * sc6[i / 16] as f32 * (q6[i] as i32 - 32) as f32;
        assert_eq!(out[i], want, "Q6_K element {i}");
    }
}

#[test]
fn small_block_layouts_dequantize_to_known_values() {
    let mut b = vec![0u8; 20];
    b[0..2].copy_from_slice(&f16_bytes(2.0));
    b[2..4].copy_from_slice(&f16_bytes(-1.0));
    for j in 0..16 {
        b[4 + j] = (j as u8) | ((15 - j as u8) << 4);
    }
    let mut out = vec![0f32; 32];
    dequantize_row(GgmlType::Q4_1, &b, &mut out);
    for j in 0..16 {
        assert_eq!(out[j], 2.0 * j as f32 - 1.0);
        assert_eq!(out[j + 16], 2.0 * (15 - j) as f32 - 1.0);
    }
    let mut b0 = vec![0u8; 18];
    b0[..2].copy_from_slice(&f16_bytes(0.5));
    b0[2..].copy_from_slice(&b[4..]);
    dequantize_row(GgmlType::Q4_0, &b0, &mut out);
    assert_eq!((out[0], out[1], out[16]), (-4.0, -3.5, 3.5));
}

#[test]
fn f32_helpers_agree_across_levels() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let scalar = kernels_for(SimdLevel::Scalar).unwrap();
    for k in simd_levels() {
        for n in [0usize, 1, 7, 8, 33, 64, 577] {
            let x: Vec<f32> = (0..n).map(|_| rng.random_range(-2f32..2.0)).collect();
            let y: Vec<f32> = (0..n).map(|_| rng.random_range(-2f32..2.0)).collect();
            let mag: f32 = x.iter().zip(&y).map(|(a, b)| (a * b).abs()).sum();
            let (d1, d0) = (k.dot_f32(&x, &y), scalar.dot_f32(&x, &y));
            assert!(
                (d1 - d0).abs() <= 1e-5 * mag + 1e-6,
                "dot n={n}: {d1} vs {d0}"
            );

            let (mut y1, mut y0) = (y.clone(), y.clone());
            k.axpy(0.75, &x, &mut y1);
            scalar.axpy(0.75, &x, &mut y0);
            for (a, b) in y1.iter().zip(&y0) {
                assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()));
            }

            let (mut h1, mut h0) = (vec![0u16; n], vec![0u16; n]);
            k.f32_to_f16(&x, &mut h1);
            scalar.f32_to_f16(&x, &mut h0);
            assert_eq!(h1, h0, "f32->f16 n={n}");
            let (mut f1, mut f0) = (vec![0f32; n], vec![0f32; n]);
            k.f16_to_f32(&h1, &mut f1);
            scalar.f16_to_f32(&h0, &mut f0);
            assert_eq!(f1, f0, "f16->f32 n={n}");
        }
    }
}

#[test]
fn best_kernels_are_a_supported_level() {
    let k = kernels();
    assert_eq!(kernels_for(k.level()).map(|s| s.level()), Some(k.level()));
    assert!(!k.name().is_empty());
    assert_eq!(vec_dot_type(GgmlType::Q4_1), GgmlType::Q8_1);
    assert!(!is_weight_type(GgmlType::Q8K));
}

/// Throughput of the default model's hot paths (an FFN matrix, the Q8_0 LM head) at 1, 4, 16
/// and 64 activation rows, best of 5 timed repetitions (the machine may be shared):
/// `cargo test -p ferrum-model --lib --release quant::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_default_model_matmuls() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut levels = vec![kernels_for(SimdLevel::Scalar).unwrap()];
    levels.extend(simd_levels());
    for (ty, n, rows) in [
        (GgmlType::Q4_1, 576usize, 1536usize),
        (GgmlType::Q8_0, 576, 8192),
    ] {
        let w = random_weights(ty, n, rows, &mut rng);
        let a = quantize_rows(vec_dot_type(ty), &random_acts(n, 64, &mut rng), n);
        for k in &levels {
            for ncols in [1usize, 2, 3, 4, 8, 16, 64] {
                let mut out = vec![0f32; rows * ncols];
                let macs = n * rows * ncols;
                let iters = if k.level() == SimdLevel::Scalar {
                    1
                } else {
                    (50_000_000 / macs).max(1)
                };
                let mut best = f64::MAX;
                for _ in 0..5 {
                    let t = std::time::Instant::now();
                    for _ in 0..iters {
                        k.matmul_tile(ty, n, &w, rows, &a, ncols, &mut out, rows);
                    }
                    best = best.min(t.elapsed().as_secs_f64() / iters as f64);
                }
                eprintln!(
                    "{:?} {rows}x{n} {:>12} cols={ncols:>2}: {:8.1} us, {:6.2} GB/s weights, {:6.1} GMAC/s",
                    ty,
                    k.name(),
                    best * 1e6,
                    w.len() as f64 / best / 1e9,
                    macs as f64 / best / 1e9
                );
            }
        }
    }
}

/// (blocks, weight rows, activation rows) reaching every panel-kernel path: one column
/// (decode), 2-3 columns (the small-column kernel, with row remainders and a scale-chunk
/// boundary), partial panels, several panels, and rows longer than one scale chunk.
#[cfg(target_arch = "x86_64")]
const PANEL_SHAPES: [(usize, usize, usize); 9] = [
    (1, 1, 1),
    (3, 7, 1),
    (18, 9, 2),
    (3, 9, 2),
    (40, 7, 3),
    (33, 5, 3),
    (5, 6, 8),
    (70, 5, 11),
    (48, 4, 17),
];

/// The panel kernels (Q4_1, Q8_0 on AVX2) must compute exactly what the square register tiles
/// computed (those reproduced llama.cpp's logits bit for bit), for every shape: one column
/// (decode), 2-3 columns (the small-column kernel, with row remainders), partial panels,
/// several panels, and rows longer than one scale chunk.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_panel_kernels_are_bitwise_equal_to_register_tiles() {
    if kernels_for(SimdLevel::Avx2).is_none() {
        eprintln!("skipped: no AVX2 here");
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0] {
        for (nb, nrows, ncols) in PANEL_SHAPES {
            let n = nb * 32;
            let at = vec_dot_type(ty);
            let (ws, as_) = (row_bytes(ty, n), row_bytes(at, n));
            let w = random_weights(ty, n, nrows, &mut rng);
            let a = quantize_rows(at, &random_acts(n, ncols, &mut rng), n);
            let mut got = vec![f32::NAN; nrows * ncols];
            let mut want = vec![f32::NAN; nrows * ncols];
            // SAFETY: AVX2 + FMA + F16C detected above; buffers cover every row and output.
            unsafe {
                super::avx2::matmul::<{ super::avx2::DOT_MADD }>(
                    ty,
                    n,
                    w.as_ptr(),
                    ws,
                    nrows,
                    a.as_ptr(),
                    as_,
                    ncols,
                    got.as_mut_ptr(),
                    nrows,
                );
                for r in 0..nrows {
                    for c in 0..ncols {
                        let (wp, ap, op) = (
                            w.as_ptr().add(r * ws),
                            a.as_ptr().add(c * as_),
                            want.as_mut_ptr().add(c * nrows + r),
                        );
                        match ty {
                            GgmlType::Q4_1 => {
                                super::avx2::tile_q4_1::<1, 1>(nb, wp, ws, ap, as_, op, 1)
                            }
                            _ => super::avx2::tile_q8::<1, 1, false>(nb, wp, ws, ap, as_, op, 1),
                        }
                    }
                }
            }
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{ty:?} nb={nb} {nrows}x{ncols} at {i}: {g} vs {w}"
                );
            }
        }
    }
}

/// The AVX2 activation quantizer writes the same bytes as the scalar one (ties, zeros,
/// large and tiny magnitudes).
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_q8_quantizer_matches_scalar_bytes() {
    if kernels_for(SimdLevel::Avx2).is_none() {
        eprintln!("skipped: no AVX2 here");
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut x = random_acts(32 * 40, 1, &mut rng);
    x[..32].fill(0.0);
    for (i, v) in x[32..64].iter_mut().enumerate() {
        *v = i as f32 - 15.5; // amax 127 below makes the scale 1: every value is a tie
    }
    x[32] = 127.0;
    x[70] = 1e-30;
    x[100] = -3e4;
    for with_sum in [false, true] {
        let bsz = if with_sum { 36 } else { 34 };
        let mut simd = vec![0u8; x.len() / 32 * bsz];
        let mut scalar = simd.clone();
        // SAFETY: AVX2 detected above; sizes match.
        unsafe { super::avx2::panel::quantize_q8(&x, &mut simd, with_sum) };
        super::blocks::quantize_q8_0_or_1(&x, &mut scalar, with_sum);
        assert_eq!(simd, scalar, "with_sum={with_sum}");
    }
}

/// The start-up check rejects a kernel set that is off by one bit in one output of any one
/// trial, and accepts the reference itself: so a VNNI set that is not bitwise AVX2 is never
/// used.
#[cfg(target_arch = "x86_64")]
#[test]
fn vnni_start_up_check_rejects_any_differing_bit() {
    use super::self_check::{same_bits, trials, Trial};
    let Some(avx2) = kernels_for(SimdLevel::Avx2) else {
        eprintln!("skipped: no AVX2 here");
        return;
    };
    let trials = trials();
    let reference = |t: &Trial| t.run(avx2);
    assert!(same_bits(&trials, &reference, &reference));
    for victim in 0..trials.len() {
        let off_by_one_bit = |t: &Trial| {
            let mut out = t.run(avx2);
            if std::ptr::eq(t, &trials[victim]) {
                let last = out.len() - 1;
                out[last] = f32::from_bits(out[last].to_bits() ^ 1);
            }
            out
        };
        assert!(
            !same_bits(&trials, &off_by_one_bit, &reference),
            "trial {victim}: a differing bit passed"
        );
    }
    // A kernel set that sums in another order (scalar) is told apart too.
    let scalar = kernels_for(SimdLevel::Scalar).unwrap();
    assert!(!same_bits(&trials, &|t| t.run(scalar), &reference));
}

/// On a CPU with VNNI, its kernels pass the start-up check and equal the AVX2 kernels bit for
/// bit on every panel shape (the check covers fewer). Skipped, saying so, where the CPU has
/// no VNNI.
#[cfg(target_arch = "x86_64")]
#[test]
fn vnni_kernels_are_bitwise_equal_to_avx2() {
    if super::vnni_candidate().is_none() {
        eprintln!("skipped: no VNNI on this CPU; its kernels are not run");
        return;
    }
    let avx2 = kernels_for(SimdLevel::Avx2).unwrap();
    let vnni = kernels_for(SimdLevel::Vnni)
        .expect("this CPU has VNNI, but its kernels failed the start-up check against AVX2");
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0] {
        for (nb, nrows, ncols) in PANEL_SHAPES {
            let n = nb * 32;
            let at = vec_dot_type(ty);
            let w = random_weights(ty, n, nrows, &mut rng);
            let a = quantize_rows(at, &random_acts(n, ncols, &mut rng), n);
            let mut got = vec![f32::NAN; nrows * ncols];
            let mut want = vec![f32::NAN; nrows * ncols];
            vnni.matmul_tile(ty, n, &w, nrows, &a, ncols, &mut got, nrows);
            avx2.matmul_tile(ty, n, &w, nrows, &a, ncols, &mut want, nrows);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{} {ty:?} {nrows}x{ncols} at {i}",
                    vnni.name()
                );
            }
        }
    }
}
