//! Cost of verifying `k` drafted tokens against decoding one: times a decode chunk of
//! `1 + k` rows (all with logits, as speculative verification asks) after a prompt, for
//! `k` from 0 to 32, and `n` sequences of one row each (plain batched decode) for comparison.
//! Each chunk is also timed with logits for its last row only, which shows what the LM head
//! adds per verified row.
//!
//! `cargo run --release -p ferrum-model --example verify_cost -- MODEL.gguf [threads] [ctx]`
//!
//! With `ONLY_K=k` it prefills one sequence and times 1,000 verifications of `k` drafts
//! alone, for a profiler.

use std::time::Instant;

use ferrum_model::llama::{LlamaModel, LlamaRunner};
use ferrum_model::Batch;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: verify_cost MODEL.gguf [threads] [ctx]")?;
    let threads: usize = args.next().map_or(Ok(2), |s| s.parse())?;
    let ctx: usize = args.next().map_or(Ok(256), |s| s.parse())?;
    let model = std::sync::Arc::new(LlamaModel::open(&path)?);
    let bs = 16;
    let seqs = 16;
    let per_seq = (ctx + 48).div_ceil(bs);
    let mut runner = LlamaRunner::new(model, per_seq * seqs, bs, threads)?;
    let prompt: Vec<u32> = (0..ctx as u32).map(|i| 100 + (i * 7919) % 40000).collect();
    let tables: Vec<Vec<u32>> = (0..seqs)
        .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
        .collect();
    let mut batch = Batch::default();
    let only = std::env::var("ONLY_K").is_ok();
    for t in &tables[..if only { 1 } else { seqs }] {
        batch.clear();
        let row = batch.push_seq(&prompt, 0, t);
        batch.logits_rows.push(row);
        runner.forward(&batch)?;
    }
    let reps = 15;
    let mut time = |batch: &Batch| -> Result<f64, Box<dyn std::error::Error>> {
        let mut v = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t0 = Instant::now();
            runner.forward(batch)?;
            v.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        v.sort_by(f64::total_cmp);
        Ok(v[reps / 2])
    };
    if let Ok(k) = std::env::var("ONLY_K") {
        let k: usize = k.parse()?;
        verify_batch(&mut batch, k, ctx, &tables[0]);
        let t0 = Instant::now();
        for _ in 0..1000 {
            runner.forward(&batch)?;
        }
        println!("k={k}: {:.2} ms", t0.elapsed().as_secs_f64() * 1e3 / 1000.0);
        return Ok(());
    }
    println!("threads {threads}, context {ctx}: median ms of {reps} forwards");
    let mut base = 0.0;
    for k in [0usize, 1, 2, 4, 8, 16, 32] {
        verify_batch(&mut batch, k, ctx, &tables[0]);
        let ms = time(&batch)?;
        if k == 0 {
            base = ms;
        }
        batch.logits_rows.drain(..k);
        let last_only = time(&batch)?;
        println!(
            "verify k={k}: {ms:7.2} ms  ({:.2}x one decode row, {:.2} ms per row; \
             {last_only:.2} ms with the last row's logits only)",
            ms / base,
            ms / (k + 1) as f64
        );
    }
    for n in [1usize, 2, 4, 8, 16] {
        batch.clear();
        for t in &tables[..n] {
            let row = batch.push_seq(&[500], ctx, t);
            batch.logits_rows.push(row);
        }
        let ms = time(&batch)?;
        println!("decode batch {n}: {ms:7.2} ms  ({:.2}x one row)", ms / base);
    }
    Ok(())
}

/// One sequence's verification of `k` drafts after `ctx` cached positions: `1 + k` decode
/// rows, every one with logits.
fn verify_batch(batch: &mut Batch, k: usize, ctx: usize, table: &[u32]) {
    batch.clear();
    let toks: Vec<u32> = (0..=k as u32).map(|i| 500 + i).collect();
    let row = batch.push_seq(&toks, ctx, table);
    batch.seqs[0].decode = true;
    batch.logits_rows.extend(row - k..=row);
}
