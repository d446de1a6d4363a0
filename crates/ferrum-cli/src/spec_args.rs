//! `--speculative` and its knobs, shared by `ferrum serve` and `ferrum bench offline`.

use anyhow::{bail, Result};
use clap::Args;
use ferrum_engine::{EngineConfig, SpecMethod};

/// Speculative decoding options.
#[derive(Args, Debug, Clone)]
pub struct SpecArgs {
    /// Speculative decoding: off, ngram (prompt lookup), suffix (suffix matching over the
    /// request and earlier outputs), or draft:PATH (a draft model; not available yet).
    /// Outputs are the same as without it; only speed changes.
    #[arg(long, default_value = "off")]
    pub speculative: String,
    /// Most drafted tokens verified per request and step.
    #[arg(long, default_value_t = 8)]
    pub spec_max_draft: usize,
    /// No request drafts in a step with more decoding requests than this.
    #[arg(long, default_value_t = 8)]
    pub spec_max_batch: usize,
}

impl SpecArgs {
    /// Writes the options into the engine configuration.
    pub fn apply(&self, cfg: &mut EngineConfig) -> Result<()> {
        let s = self.speculative.as_str();
        if s.starts_with("draft:") {
            bail!("--speculative draft:PATH (draft-model drafting) is not implemented yet");
        }
        let Some(method) = SpecMethod::parse(s).filter(|m| *m != SpecMethod::External) else {
            bail!("--speculative must be off, ngram, suffix or draft:PATH, got {s:?}");
        };
        cfg.speculative.method = method;
        cfg.speculative.max_draft = self.spec_max_draft;
        cfg.speculative.max_batch = self.spec_max_batch;
        Ok(())
    }
}
