//! `--speculative` and its knobs, shared by `ferrum serve` and `ferrum bench offline`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use ferrum_engine::spec::ModelDrafter;
use ferrum_engine::{EngineConfig, SpecMethod};
use ferrum_model::llama::LlamaModel;

/// Speculative decoding options.
#[derive(Args, Debug, Clone)]
pub struct SpecArgs {
    /// Speculative decoding: off, ngram (prompt lookup), suffix (suffix matching over the
    /// request and earlier outputs), or draft:PATH (a GGUF draft model, same vocabulary).
    /// Outputs are the same as without it; only speed changes.
    #[arg(long, default_value = "off")]
    pub speculative: String,
    /// Most drafted tokens verified per request and step (the cost model picks fewer when
    /// longer drafts do not pay).
    #[arg(long, default_value_t = 16)]
    pub spec_max_draft: usize,
    /// Draft on every step up to --spec-max-draft, ignoring the cost model (only the
    /// low-acceptance fallback applies).
    #[arg(long)]
    pub spec_always: bool,
    /// No request drafts in a step with more decoding requests than this.
    #[arg(long, default_value_t = 8)]
    pub spec_max_batch: usize,
    /// Draft model: choose drafts only among the first N token ids (BPE merge order, a proxy
    /// for frequency); 0 keeps the whole vocabulary.
    #[arg(long, default_value_t = 0)]
    pub spec_draft_vocab: usize,
}

impl SpecArgs {
    /// Writes the options into the engine configuration; returns the draft model to load
    /// for `draft:PATH`.
    pub fn apply(&self, cfg: &mut EngineConfig) -> Result<Option<PathBuf>> {
        let s = self.speculative.as_str();
        let draft = s.strip_prefix("draft:").map(PathBuf::from);
        let method = if draft.is_some() {
            SpecMethod::External
        } else {
            match SpecMethod::parse(s).filter(|m| *m != SpecMethod::External) {
                Some(m) => m,
                None => bail!("--speculative must be off, ngram, suffix or draft:PATH, got {s:?}"),
            }
        };
        cfg.speculative.method = method;
        cfg.speculative.max_draft = self.spec_max_draft;
        cfg.speculative.max_batch = self.spec_max_batch;
        cfg.speculative.cost_aware = !self.spec_always;
        Ok(draft)
    }

    /// Loads the draft model at `path` as a drafter for a target with `vocab` tokens.
    pub fn drafter(&self, path: &Path, vocab: usize, threads: usize) -> Result<ModelDrafter> {
        let model = LlamaModel::open(path)
            .with_context(|| format!("loading draft model {}", path.display()))?;
        if model.config.vocab_size != vocab {
            bail!(
                "draft model has {} tokens, the target {vocab}: vocabularies must match",
                model.config.vocab_size
            );
        }
        let mut d = ModelDrafter::new(Arc::new(model), 16384, threads)?;
        if self.spec_draft_vocab > 0 {
            let keep: Vec<u32> = (0..self.spec_draft_vocab.min(vocab) as u32).collect();
            d.prune_vocab(&keep);
        }
        Ok(d)
    }
}
