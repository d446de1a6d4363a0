//! Shared options and loading: which model file, how many threads, how much KV.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use ferrum_model::chat::ChatTemplate;
use ferrum_model::gguf::GgufFile;
use ferrum_model::llama::{LlamaModel, LlamaRunner, Numerics};
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
    /// How matrix products round: `llama-cpp` reproduces llama.cpp's results bit for bit;
    /// `fast` runs Q4_1 products with interleaved kernels (about 1.5x faster prefill and
    /// batched decode on AVX2), whose rounding differs from llama.cpp's.
    #[arg(long, value_enum, default_value_t = NumericsArg::LlamaCpp, env = "FERRUM_NUMERICS")]
    pub numerics: NumericsArg,
}

/// `--numerics` values (see [`ferrum_model::llama::Numerics`]).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumericsArg {
    /// llama.cpp's order of operations, bit for bit.
    LlamaCpp,
    /// Interleaved Q4_1 kernels: faster, rounds differently.
    Fast,
}

impl From<NumericsArg> for Numerics {
    fn from(a: NumericsArg) -> Self {
        match a {
            NumericsArg::LlamaCpp => Numerics::LlamaCpp,
            NumericsArg::Fast => Numerics::Fast,
        }
    }
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
        let model = Arc::new(LlamaModel::load_with(file, self.numerics.into())?);
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        model: ModelArgs,
    }

    fn numerics(args: &[&str]) -> Result<Numerics, clap::Error> {
        let argv = std::iter::once("ferrum").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|c| c.model.numerics.into())
    }

    #[test]
    fn numerics_default_to_llama_cpp_and_parse_fast() {
        if std::env::var_os("FERRUM_NUMERICS").is_none() {
            assert_eq!(numerics(&[]).expect("parses"), Numerics::LlamaCpp);
        }
        assert_eq!(
            numerics(&["--numerics", "fast"]).expect("parses"),
            Numerics::Fast
        );
        let llama = numerics(&["--numerics", "llama-cpp"]).expect("parses");
        assert_eq!(llama, Numerics::LlamaCpp);
        let err = numerics(&["--numerics", "quick"]).expect_err("unknown value");
        assert!(err.to_string().contains("quick"), "{err}");
    }
}
