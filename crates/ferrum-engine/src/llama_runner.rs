//! Glue between the engine and the real model runtime: [`ModelRunner`] for
//! [`LlamaRunner`], [`TokenText`] for [`Tokenizer`], and KV-pool sizing from a memory or token
//! budget (`--kv-cache-mem` / `--kv-cache-tokens`).

use ferrum_model::kv::KvShape;
use ferrum_model::llama::{LlamaConfig, LlamaRunner};
use ferrum_model::tokenizer::Tokenizer;

use crate::engine::{EngineConfig, ModelRunner, TokenText};
use crate::error::EngineError;

impl ModelRunner for LlamaRunner {
    fn vocab_size(&self) -> usize {
        self.model().config.vocab_size
    }

    fn forward(&mut self, batch: &ferrum_model::Batch) -> Result<&[f32], EngineError> {
        LlamaRunner::forward(self, batch).map_err(EngineError::Model)
    }
}

impl TokenText for Tokenizer {
    fn token_bytes(&self, id: u32) -> &[u8] {
        Tokenizer::token_bytes(self, id)
    }
}

/// How much KV cache to allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvBudget {
    /// At most this many bytes of K/V (rounded down to whole blocks).
    Bytes(u64),
    /// Room for at least this many tokens (rounded up to whole blocks).
    Tokens(usize),
}

/// The KV pool a budget buys, for sizing the runner and telling the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCapacity {
    /// Blocks in the pool.
    pub num_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// `num_blocks * block_size`: tokens the pool holds across all requests.
    pub tokens: usize,
    /// K/V bytes per token over all layers.
    pub bytes_per_token: usize,
    /// Bytes of the whole pool.
    pub bytes: u64,
}

impl std::fmt::Display for KvCapacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KV cache: {} blocks x {} tokens = {} tokens, {:.1} MiB ({} bytes/token)",
            self.num_blocks,
            self.block_size,
            self.tokens,
            self.bytes as f64 / (1024.0 * 1024.0),
            self.bytes_per_token
        )
    }
}

/// Blocks a budget buys for a model with KV `shape`; an error if it buys no block or an
/// absurd number of them.
pub fn kv_capacity(
    shape: KvShape,
    block_size: usize,
    budget: KvBudget,
) -> Result<KvCapacity, EngineError> {
    let bytes_per_token = shape.bytes_per_token();
    if block_size == 0 || bytes_per_token == 0 {
        return Err(EngineError::Config(
            "block size and KV bytes per token must be > 0".into(),
        ));
    }
    let block_bytes = (bytes_per_token as u64).saturating_mul(block_size as u64);
    let num_blocks = match budget {
        KvBudget::Bytes(b) => b / block_bytes,
        KvBudget::Tokens(t) => t.div_ceil(block_size) as u64,
    };
    if num_blocks == 0 {
        return Err(EngineError::Config(format!(
            "KV budget {budget:?} is smaller than one block ({block_bytes} bytes, {block_size} tokens)"
        )));
    }
    let num_blocks = usize::try_from(num_blocks)
        .ok()
        .filter(|&n| u32::try_from(n).is_ok())
        .ok_or_else(|| {
            EngineError::Config(format!("KV budget {budget:?} needs too many blocks"))
        })?;
    Ok(KvCapacity {
        num_blocks,
        block_size,
        tokens: num_blocks * block_size,
        bytes_per_token,
        bytes: num_blocks as u64 * block_bytes,
    })
}

/// Parses a memory size such as `512MiB`, `2G`, `1.5GiB` or `1000000` (bytes). Decimal
/// suffixes (K, M, G, KB, MB, GB) are powers of 1000, binary ones (KiB, MiB, GiB) of 1024.
pub fn parse_bytes(s: &str) -> Result<u64, EngineError> {
    let bad = || {
        EngineError::Config(format!(
            "cannot parse memory size {s:?} (try 512MiB or 2GB)"
        ))
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        _ => return Err(bad()),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

impl EngineConfig {
    /// An engine configuration for `model`: the pool `budget` buys (see [`kv_capacity`]),
    /// the model's context length and the given end-of-generation tokens; other fields keep
    /// their defaults. Returns the capacity too, so callers can report it.
    pub fn for_model(
        model: &LlamaConfig,
        budget: KvBudget,
        eos_token_ids: Vec<u32>,
    ) -> Result<(EngineConfig, KvCapacity), EngineError> {
        let base = EngineConfig::default();
        let cap = kv_capacity(model.kv_shape(), base.block_size, budget)?;
        let cfg = EngineConfig {
            num_blocks: cap.num_blocks,
            max_model_len: model.context_length.max(1),
            eos_token_ids,
            ..base
        };
        Ok((cfg, cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: KvShape = KvShape {
        n_layers: 30,
        n_kv_heads: 3,
        head_dim: 64,
    };

    #[test]
    fn token_budget_rounds_up_to_whole_blocks() {
        let c = kv_capacity(SHAPE, 16, KvBudget::Tokens(100)).unwrap();
        assert_eq!((c.num_blocks, c.tokens), (7, 112));
        assert_eq!(c.bytes_per_token, 2 * 30 * 3 * 64 * 2);
        assert_eq!(c.bytes, 112 * c.bytes_per_token as u64);
    }

    #[test]
    fn byte_budget_rounds_down_and_too_small_is_an_error() {
        let per_block = (SHAPE.bytes_per_token() * 16) as u64;
        let c = kv_capacity(SHAPE, 16, KvBudget::Bytes(per_block * 10 + per_block - 1)).unwrap();
        assert_eq!(c.num_blocks, 10);
        assert!(c.bytes <= per_block * 11);
        assert!(kv_capacity(SHAPE, 16, KvBudget::Bytes(per_block - 1)).is_err());
        assert!(kv_capacity(SHAPE, 16, KvBudget::Tokens(0)).is_err());
        assert!(kv_capacity(SHAPE, 0, KvBudget::Tokens(10)).is_err());
        assert!(
            kv_capacity(SHAPE, 1, KvBudget::Bytes(u64::MAX)).is_err(),
            "more blocks than u32"
        );
    }

    #[test]
    fn memory_sizes_parse_with_units() {
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert_eq!(parse_bytes("2G").unwrap(), 2_000_000_000);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes(" 1.5 GiB ").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4kb").unwrap(), 4000);
        for bad in ["", "MiB", "1.2.3G", "-5", "12 parsecs", "1e999"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
