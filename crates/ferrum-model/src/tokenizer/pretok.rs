//! Pre-tokenizers named by `tokenizer.ggml.pre`, and the GPT-2 byte-to-character table.
//!
//! llama.cpp splits text with a list of regular expressions per `pre` value; each regex splits
//! every piece left by the previous one into matches and the gaps between them. That is exactly
//! `Split` with the `Isolated` behaviour in the `tokenizers` crate, so each supported `pre` value
//! is built from those splits followed by the byte-level mapping. Values not listed here are an
//! error: guessing a pre-tokenizer gives silently wrong ids.

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use crate::error::{Error, ErrorKind, Result};

/// The GPT-2 split: contractions, letters, numbers, other symbols, whitespace.
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// The Llama 3 split (case-insensitive contractions, numbers in groups of up to three).
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's fallback list for a BPE vocabulary whose `pre` is `default`.
const DEFAULT_REGEXES: [&str; 4] = [
    r"[\p{P}\$\+<=>\^~\|]+",
    GPT2_REGEX,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// How a `pre` value tokenizes, beyond the regex splits.
pub(super) struct PreConfig {
    /// The pre-tokenizer to install.
    pub pre: PreTokenizerWrapper,
    /// Whether a pre-token found whole in the vocabulary skips the merges (Llama 3).
    pub ignore_merges: bool,
    /// Whether BOS is prepended when the file does not say (`add_bos_token` absent).
    pub default_add_bos: bool,
}

fn split(regex: &str) -> Result<PreTokenizerWrapper> {
    let s = Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| Error::new(ErrorKind::Tokenizer, format!("bad split regex: {e}")))?;
    Ok(s.into())
}

/// Regex splits followed by the byte-level mapping (without its own regex).
fn splits_then_bytes(regexes: &[&str]) -> Result<PreTokenizerWrapper> {
    let mut seq = Vec::with_capacity(regexes.len() + 1);
    for r in regexes {
        seq.push(split(r)?);
    }
    seq.push(ByteLevel::new(false, true, false).into());
    Ok(Sequence::new(seq).into())
}

/// The pre-tokenizer for `tokenizer.ggml.pre` = `name`, or an error naming it.
pub(super) fn for_name(name: &str) -> Result<PreConfig> {
    // ByteLevel with its own regex is the GPT-2 split plus the byte mapping, no prefix space.
    let gpt2 = || PreTokenizerWrapper::from(ByteLevel::new(false, true, true));
    let cfg = match name {
        "gpt2" => PreConfig {
            pre: gpt2(),
            ignore_merges: false,
            default_add_bos: false,
        },
        // Every digit alone, then the GPT-2 split. `Digits` splits on `char::is_numeric`, which is
        // the Unicode N category, the same set as `\p{N}`.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" => PreConfig {
            pre: Sequence::new(vec![Digits::new(true).into(), gpt2()]).into(),
            ignore_merges: false,
            default_add_bos: false,
        },
        "llama3" | "llama-v3" | "llama-bpe" => PreConfig {
            pre: splits_then_bytes(&[LLAMA3_REGEX])?,
            ignore_merges: true,
            default_add_bos: true,
        },
        "default" => PreConfig {
            pre: splits_then_bytes(&DEFAULT_REGEXES)?,
            ignore_merges: false,
            default_add_bos: false,
        },
        other => {
            return Err(Error::new(
                ErrorKind::Tokenizer,
                format!("unsupported pre-tokenizer {other:?} (tokenizer.ggml.pre)"),
            ))
        }
    };
    Ok(cfg)
}

/// Inverse of GPT-2's byte-to-character map: `table[c]` is the byte that character `c` stands
/// for, for every `c` below 324 that is in the map.
pub(super) fn unicode_to_byte_table() -> [Option<u8>; 324] {
    let mut table = [None; 324];
    let mut next = 256usize;
    for b in 0..=255u8 {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        let c = if printable {
            b as usize
        } else {
            let c = next;
            next += 1;
            c
        };
        table[c] = Some(b);
    }
    table
}

/// The bytes a byte-level token text stands for. A character outside the map (which a sound
/// byte-level vocabulary never has) stands for its own UTF-8 bytes.
pub(super) fn byte_level_decode(text: &str, table: &[Option<u8>; 324], out: &mut Vec<u8>) {
    for c in text.chars() {
        match table.get(c as usize).copied().flatten() {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}
