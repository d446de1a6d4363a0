//! Llama hyper-parameters from GGUF metadata.

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::kv::KvShape;

/// Hyper-parameters read from `llama.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Transformer blocks.
    pub n_layers: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// MLP inner size.
    pub n_ff: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub n_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Rotated dimensions per head.
    pub rope_dim: usize,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Trained context length.
    pub context_length: usize,
    /// Vocabulary size (rows of the LM head).
    pub vocab_size: usize,
}

impl LlamaConfig {
    /// Reads the configuration; a missing or inconsistent key is an error naming it.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let arch = f.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(Error::unsupported(format!(
                "architecture {arch:?} (only \"llama\" is implemented)"
            )));
        }
        let g = |k: &str| -> Result<usize> { Ok(f.get_u64(&format!("llama.{k}"))? as usize) };
        let n_embd = g("embedding_length")?;
        let n_heads = g("attention.head_count")?;
        let n_kv_heads = f
            .get("llama.attention.head_count_kv")
            .and_then(|v| v.as_u64())
            .map_or(n_heads, |v| v as usize);
        if n_heads == 0 || n_kv_heads == 0 || n_embd % n_heads != 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::gguf(format!(
                "inconsistent heads: embd {n_embd}, heads {n_heads}, kv heads {n_kv_heads}"
            )));
        }
        let head_dim = n_embd / n_heads;
        let rope_dim = f
            .get("llama.rope.dimension_count")
            .and_then(|v| v.as_u64())
            .map_or(head_dim, |v| v as usize);
        let vocab_size = match f.get("llama.vocab_size").and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => f.get_array("tokenizer.ggml.tokens")?.len(),
        };
        let cfg = LlamaConfig {
            n_layers: g("block_count")?,
            n_embd,
            n_ff: g("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dim: rope_dim.min(head_dim),
            rope_base: f
                .get("llama.rope.freq_base")
                .and_then(|v| v.as_f64())
                .unwrap_or(10000.0) as f32,
            rms_eps: f
                .get_f32("llama.attention.layer_norm_rms_epsilon")
                .unwrap_or(1e-5),
            context_length: g("context_length")?,
            vocab_size,
        };
        if cfg.n_layers == 0
            || cfg.n_layers > 1024
            || cfg.n_ff == 0
            || !cfg.head_dim.is_multiple_of(2)
        {
            return Err(Error::gguf(format!(
                "implausible model configuration {cfg:?}"
            )));
        }
        Ok(cfg)
    }

    /// The KV cache shape this model needs.
    pub fn kv_shape(&self) -> KvShape {
        KvShape {
            n_layers: self.n_layers,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }
}
