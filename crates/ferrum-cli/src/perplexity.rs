//! `ferrum perplexity`: the golden file's rule, so our number can be set beside llama.cpp's.
//!
//! Tokenize the whole file without BOS; split it into consecutive non-overlapping windows of
//! `--window` tokens from the start (the first `--max-windows`, 4 by default as in the golden
//! reference); evaluate each window from an empty cache; score every token but the first of
//! each window; ppl = exp(mean NLL).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use ferrum_model::session::Session;

use crate::load::ModelArgs;

/// Arguments of `ferrum perplexity`.
#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text file.
    file: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Evaluate at most this many windows from the start (0 = every full window). The
    /// default, 4, is the golden reference's rule (2,044 scored tokens of gpl-3.txt).
    #[arg(long, default_value_t = 4)]
    max_windows: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(a: PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let loaded = a.model.load()?;
    let ids = loaded.tokenizer.encode(&text, false)?;
    if a.window < 2 {
        bail!("--window must be at least 2");
    }
    let mut windows = ids.len() / a.window;
    if a.max_windows > 0 {
        windows = windows.min(a.max_windows);
    }
    if windows == 0 {
        bail!(
            "the file has {} tokens, fewer than one window of {}",
            ids.len(),
            a.window
        );
    }
    let mut session = Session::new(a.model.runner(&loaded.model, a.window)?);
    let bar = indicatif::ProgressBar::new(windows as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} windows {msg}")
            .expect("static template"),
    );
    let t0 = Instant::now();
    let (mut nll, mut scored) = (0f64, 0usize);
    for w in 0..windows {
        let win = &ids[w * a.window..(w + 1) * a.window];
        let (n, k) = session.window_nll(win)?;
        nll += n;
        scored += k;
        bar.set_message(format!("ppl {:.4}", (nll / scored as f64).exp()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let ppl = (nll / scored as f64).exp();
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{}",
            serde_json::json!({"ppl": ppl, "windows": windows, "window": a.window, "scored_tokens": scored, "total_tokens": ids.len(), "seconds": secs})
        );
    } else {
        println!("perplexity {ppl:.4} over {windows} windows of {} ({scored} scored tokens of {}), {secs:.1} s", a.window, ids.len());
    }
    Ok(())
}
