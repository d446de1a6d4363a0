//! Text to token ids and back, built from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! Encoding must give exactly llama.cpp's ids (the model was trained on them, and the golden
//! outputs depend on them), so it reproduces llama.cpp's pipeline with the `tokenizers` crate:
//! control and user-defined tokens are cut out of the text first, the rest is pre-tokenized with
//! the splits named by `tokenizer.ggml.pre`, mapped to GPT-2 byte-level characters, and merged
//! by BPE rank.
//!
//! Decoding does not go through `tokenizers`: every token's exact bytes are precomputed once into
//! one flat table, which the engine also reads per generated token to stream text and match stop
//! strings, so decoding is a concatenation and a UTF-8 check.
//!
//! Only byte-level BPE (`tokenizer.ggml.model` = `gpt2`) is implemented; SentencePiece vocabularies
//! (`llama`) and others are reported as unsupported.

mod pretok;
mod stream;
#[cfg(test)]
mod tests;

pub use stream::StreamDecoder;

use tokenizers::models::bpe::{BpeBuilder, Vocab};
use tokenizers::AddedToken;

use crate::error::{Error, ErrorKind, Result};
use crate::gguf::GgufFile;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// Token texts that end a turn in common chat formats; each counts as a stop token when the
/// vocabulary has it as a control token.
const TURN_END_TOKENS: [&str; 5] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<|eom_id|>",
];

fn tok_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Tokenizer, msg)
}

/// A byte-level BPE tokenizer loaded from GGUF metadata. Cheap to share: `Send + Sync`, and all
/// methods take `&self`.
pub struct Tokenizer {
    /// Parses control tokens written in the text.
    with_special: tokenizers::Tokenizer,
    /// Treats control tokens written in the text as plain text.
    plain: tokenizers::Tokenizer,
    /// All token bytes, concatenated; token `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    /// Per token: whether it is a control token (type 3).
    control: Vec<bool>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

/// Reads an optional token id key, checking it names a token.
fn optional_id(f: &GgufFile, key: &str, n_vocab: usize) -> Result<Option<u32>> {
    let Some(v) = f.get(key) else {
        return Ok(None);
    };
    // llama.cpp writes -1 (as a signed or wrapped value) for "none" in some converters.
    if v.as_i64() == Some(-1) || v.as_u64() == Some(u32::MAX as u64) {
        return Ok(None);
    }
    let id = v
        .as_u64()
        .ok_or_else(|| tok_err(format!("{key} is not a token id ({})", v.type_name())))?;
    if id >= n_vocab as u64 {
        return Err(tok_err(format!(
            "{key} = {id} is outside the vocabulary of {n_vocab} tokens"
        )));
    }
    Ok(Some(id as u32))
}

fn optional_bool(f: &GgufFile, key: &str) -> Result<Option<bool>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| tok_err(format!("{key} is not a bool ({})", v.type_name()))),
    }
}

fn string_array<'a>(f: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let arr = f
        .get_array(key)
        .map_err(|e| tok_err(format!("{key}: {}", e.msg)))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .ok_or_else(|| tok_err(format!("{key}[{i}] is not a string ({})", v.type_name())))
        })
        .collect()
}

/// Splits a GGUF merge entry "left right". The left part may itself start with a space (in
/// vocabularies that are not byte-level), so the separator is searched after the first character.
fn split_merge(m: &str) -> Option<(String, String)> {
    let first = m.chars().next()?.len_utf8();
    let pos = m[first..].find(' ')? + first;
    Some((m[..pos].to_string(), m[pos + 1..].to_string()))
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata; errors name the missing or
    /// inconsistent key, or the unsupported tokenizer model / pre-tokenizer.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let model = f
            .get_str("tokenizer.ggml.model")
            .map_err(|e| tok_err(e.msg))?;
        if model != "gpt2" {
            return Err(tok_err(format!(
                "unsupported tokenizer model {model:?} (only byte-level BPE \"gpt2\" is implemented)"
            )));
        }
        let pre_name = match f.get("tokenizer.ggml.pre") {
            None => "default",
            Some(v) => v
                .as_str()
                .ok_or_else(|| tok_err("tokenizer.ggml.pre is not a string"))?,
        };
        let pre = pretok::for_name(pre_name)?;

        let tokens = string_array(f, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize / 2 {
            return Err(tok_err(format!("vocabulary of {n} tokens")));
        }
        let types: Vec<i64> = match f.get("tokenizer.ggml.token_type") {
            None => vec![1; n],
            Some(v) => {
                let arr = v
                    .as_array()
                    .ok_or_else(|| tok_err("tokenizer.ggml.token_type is not an array"))?;
                if arr.len() != n {
                    return Err(tok_err(format!(
                        "tokenizer.ggml.token_type has {} entries for {n} tokens",
                        arr.len()
                    )));
                }
                arr.iter()
                    .map(|t| {
                        t.as_i64()
                            .ok_or_else(|| tok_err("tokenizer.ggml.token_type holds a non-integer"))
                    })
                    .collect::<Result<_>>()?
            }
        };
        let merges = match f.get("tokenizer.ggml.merges") {
            None => Vec::new(),
            Some(_) => string_array(f, "tokenizer.ggml.merges")?
                .into_iter()
                .enumerate()
                .map(|(i, m)| {
                    split_merge(m).ok_or_else(|| {
                        tok_err(format!("tokenizer.ggml.merges[{i}] = {m:?} is not \"a b\""))
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        };

        // Byte table and control flags.
        let table = pretok::unicode_to_byte_table();
        let mut bytes = Vec::with_capacity(n * 6);
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0u32);
        let mut control = Vec::with_capacity(n);
        for (&text, &ty) in tokens.iter().zip(&types) {
            let added = matches!(ty, TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN);
            if added {
                bytes.extend_from_slice(text.as_bytes());
            } else {
                pretok::byte_level_decode(text, &table, &mut bytes);
            }
            let end = u32::try_from(bytes.len())
                .map_err(|_| tok_err("token texts exceed 4 GiB in total"))?;
            offsets.push(end);
            control.push(ty == TYPE_CONTROL);
        }

        // Later duplicates win, as in llama.cpp's text-to-id map.
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let bpe = BpeBuilder::new()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(pre.ignore_merges)
            .build()
            .map_err(|e| tok_err(format!("building BPE: {e}")))?;

        let mut special = Vec::new();
        let mut user = Vec::new();
        for (&text, &ty) in tokens.iter().zip(&types) {
            if text.is_empty() {
                continue;
            }
            match ty {
                TYPE_CONTROL | TYPE_UNKNOWN => special.push(AddedToken::from(text, true)),
                TYPE_USER_DEFINED => user.push(AddedToken::from(text, false).normalized(false)),
                _ => {}
            }
        }
        let mut with_special = tokenizers::Tokenizer::new(bpe);
        with_special.with_pre_tokenizer(Some(pre.pre));
        with_special.add_special_tokens(&special);
        with_special.add_tokens(&user);
        let mut plain = with_special.clone();
        plain.set_encode_special_tokens(true);

        let bos = optional_id(f, "tokenizer.ggml.bos_token_id", n)?;
        let eos = optional_id(f, "tokenizer.ggml.eos_token_id", n)?;
        let eot = optional_id(f, "tokenizer.ggml.eot_token_id", n)?;
        let add_bos = optional_bool(f, "tokenizer.ggml.add_bos_token")?
            .unwrap_or(pre.default_add_bos)
            && bos.is_some();
        let add_eos =
            optional_bool(f, "tokenizer.ggml.add_eos_token")?.unwrap_or(false) && eos.is_some();

        Ok(Tokenizer {
            with_special,
            plain,
            bytes,
            offsets,
            control,
            bos,
            eos,
            eot,
            add_bos,
            add_eos,
        })
    }

    /// Token ids of `text`, without BOS/EOS (see [`Self::encode_prompt`]). With `special`,
    /// control tokens written in the text (`<|im_start|>`) become their ids, as llama.cpp's
    /// `special=true`; without it they are tokenized as plain text, which is what untrusted user
    /// text needs so it cannot forge turn boundaries.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let tk = if special {
            &self.with_special
        } else {
            &self.plain
        };
        let enc = tk
            .encode_fast(text, false)
            .map_err(|e| tok_err(format!("encoding failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// A whole prompt as the model expects it: `encode(text, true)` with BOS prepended and EOS
    /// appended when the file asks for them (`add_bos_token` / `add_eos_token`).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if let (true, Some(b)) = (self.add_bos, self.bos) {
            ids.push(b);
        }
        ids.extend(self.encode(text, true)?);
        if let (true, Some(e)) = (self.add_eos, self.eos) {
            ids.push(e);
        }
        Ok(ids)
    }

    /// The text of `ids`; bytes that are not valid UTF-8 become U+FFFD. With `skip_special`,
    /// control tokens are left out. An id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if id as usize >= self.control.len() {
                return Err(tok_err(format!(
                    "token id {id} is outside the vocabulary of {} tokens",
                    self.control.len()
                )));
            }
            if skip_special && self.control[id as usize] {
                continue;
            }
            out.extend_from_slice(self.token_bytes(id));
        }
        Ok(match String::from_utf8(out) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// The exact bytes token `id` stands for (control tokens: their text). Empty for an id
    /// outside the vocabulary. A table lookup, for per-token streaming and stop-string matching.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.bytes[a as usize..b as usize],
            _ => &[],
        }
    }

    /// Number of tokens in the vocabulary (the model's logit count should match).
    pub fn vocab_size(&self) -> usize {
        self.control.len()
    }

    /// The beginning-of-sequence token, if the file names one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token, if the file names one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether prompts should start with BOS (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `id` is a control token (never shown to users, parsed from text only with
    /// `special`).
    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// The id of the token whose vocabulary text is exactly `s` (byte-level text for ordinary
    /// tokens, e.g. `"Ġthe"`; literal text for control tokens, e.g. `"<|im_end|>"`).
    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.with_special.token_to_id(s)
    }

    /// Tokens that end generation: EOS, the end-of-turn token (`eot_token_id`), and the usual
    /// turn-end control tokens present in this vocabulary. Sorted, without duplicates.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.eos.into_iter().chain(self.eot).collect();
        for t in TURN_END_TOKENS {
            if let Some(id) = self.token_to_id(t) {
                if self.is_control(id) {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}
