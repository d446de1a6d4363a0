//! Speed of the interleaved Q4_1 kernels (`quant::Q4_1x8`, `--numerics fast`) against the
//! llama.cpp-order kernels on the default model's matrix shapes, one thread, in one process:
//! the two alternate `REPS` times (default 21) and the medians are compared. Also prints the
//! largest difference between their outputs (rounding only).
//!
//! `cargo run --release -p ferrum-model --example q4_1x8_bench`

use std::time::Instant;

use ferrum_model::quant::{kernels, quantize_row, Q4_1x8};
use ferrum_model::GgmlType;

fn main() {
    let k = kernels();
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(21);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    println!(
        "kernels {}; median us per product of {reps} alternations",
        k.name()
    );
    for (rows, n) in [(1536usize, 576usize), (576, 1536), (576, 576)] {
        let nb = n / 32;
        let mut w = vec![0u8; rows * nb * 20];
        for blk in w.chunks_exact_mut(20) {
            let d = half::f16::from_f32((next() % 1000) as f32 * 5e-5);
            let m = half::f16::from_f32(-((next() % 1000) as f32) * 4e-4);
            blk[0..2].copy_from_slice(&d.to_le_bytes());
            blk[2..4].copy_from_slice(&m.to_le_bytes());
            blk[4..].iter_mut().for_each(|b| *b = next() as u8);
        }
        let packed = Q4_1x8::from_gguf(&w, rows, n).expect("whole groups");
        for cols in [1usize, 2, 4, 8, 16, 64] {
            let x: Vec<f32> = (0..cols * n)
                .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let rb = nb * 36;
            let mut a = vec![0u8; cols * rb];
            for (xr, ar) in x.chunks_exact(n).zip(a.chunks_exact_mut(rb)) {
                quantize_row(GgmlType::Q8_1, xr, ar);
            }
            let (mut ggml, mut inter) = (vec![0f32; rows * cols], vec![0f32; rows * cols]);
            let inner = (4_000_000 / (rows * n * cols)).max(1);
            let (mut t_ggml, mut t_inter) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                let t = Instant::now();
                for _ in 0..inner {
                    k.matmul_tile(GgmlType::Q4_1, n, &w, rows, &a, cols, &mut ggml, rows);
                }
                t_ggml.push(t.elapsed().as_secs_f64() / inner as f64);
                let t = Instant::now();
                for _ in 0..inner {
                    // SAFETY: `inter` holds `cols` rows of `rows` outputs.
                    unsafe {
                        k.matmul_q4_1x8_raw(&packed, 0..rows, &a, cols, inter.as_mut_ptr(), rows)
                    };
                }
                t_inter.push(t.elapsed().as_secs_f64() / inner as f64);
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (g, i) = (median(&mut t_ggml), median(&mut t_inter));
            let diff = ggml
                .iter()
                .zip(&inter)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            let big = ggml.iter().map(|v| v.abs()).fold(0f32, f32::max);
            println!(
                "{rows}x{n} x {cols:2} rows: llama.cpp order {:8.1} us, interleaved {:8.1} us, \
                 speed-up {:.2}; largest difference {diff:.1e} (largest output {big:.1})",
                g * 1e6,
                i * 1e6,
                g / i
            );
        }
    }
}
