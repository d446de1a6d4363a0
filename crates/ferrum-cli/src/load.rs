//! Shared options and loading: which model file, how many threads, how much KV.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use ferrum_model::chat::ChatTemplate;
use ferrum_model::gguf::GgufFile;
use ferrum_model::llama::{LlamaModel, LlamaRunner};
use ferrum_model::tokenizer::Tokenizer;

/// Options every model-running command takes.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A local GGUF file; default: SmolLM2-135M-Instruct Q4_1, fetched on first use.
    #[arg(long, short = 'm', env = "FERRUM_MODEL")]
    pub model: Option<PathBuf>,
    /// Worker threads (0 = one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
}

/// A loaded model with its tokenizer and chat template.
pub struct Loaded {
    pub model: Arc<LlamaModel>,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
}

impl ModelArgs {
    /// The model path, fetching the default model if none was given.
    pub fn path(&self) -> Result<PathBuf> {
        match &self.model {
            Some(p) => Ok(p.clone()),
            None => Ok(ferrum_model::fetch::default_model_path()?),
        }
    }

    /// Opens the file and builds model, tokenizer and template.
    pub fn load(&self) -> Result<Loaded> {
        let path = self.path()?;
        let file =
            Arc::new(GgufFile::open(&path).with_context(|| format!("loading {}", path.display()))?);
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let template = ChatTemplate::from_gguf(&file)?;
        let model = Arc::new(LlamaModel::load(file)?);
        Ok(Loaded {
            model,
            tokenizer,
            template,
        })
    }

    /// A runner with a KV pool of at least `tokens` tokens.
    pub fn runner(&self, model: &Arc<LlamaModel>, tokens: usize) -> Result<LlamaRunner> {
        let block = 16;
        Ok(LlamaRunner::new(
            Arc::clone(model),
            tokens.div_ceil(block).max(1),
            block,
            self.threads,
        )?)
    }
}
