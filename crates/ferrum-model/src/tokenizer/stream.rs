//! Streaming detokenization: token bytes in, whole UTF-8 characters out.
//!
//! A byte-level token may end in the middle of a character (an emoji is often two or three
//! tokens). Streaming clients must never see half a character, and must see exactly what a
//! one-shot decode of all the tokens would give, so this holds back an incomplete tail until it is
//! completed, and turns bytes into U+FFFD only once they can no longer become valid — the same
//! replacement rule as [`String::from_utf8_lossy`].

use super::Tokenizer;

/// Turns a stream of token bytes into text deltas that never split a character.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder with nothing held back.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `bytes` and returns the text that is now certain; an incomplete trailing
    /// character is held for the next call.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix up to `valid` is UTF-8 by the error's contract.
                    out.push_str(&String::from_utf8_lossy(&rest[..valid]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += valid + bad;
                        }
                        None => {
                            // Incomplete sequence at the end: it may still be completed.
                            start += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Appends the bytes of token `id` (see [`Tokenizer::token_bytes`]); control tokens are
    /// skipped when `skip_special`, as in [`Tokenizer::decode`].
    pub fn push_token(&mut self, tok: &Tokenizer, id: u32, skip_special: bool) -> String {
        if skip_special && tok.is_control(id) {
            return String::new();
        }
        self.push(tok.token_bytes(id))
    }

    /// Ends the stream: whatever is held back can no longer be completed, so it becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// Whether bytes are held back waiting for the rest of a character.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}
