//! Text <-> token conversion as the server needs it, behind a small trait.
//!
//! The server only needs to turn prompts and chat messages into token ids and token ids into
//! display strings (for logprobs). Keeping that behind [`TextCodec`] lets the HTTP layer be
//! tested hermetically with [`ByteCodec`] (one token per byte) while `ferrum serve` plugs in
//! the model's real tokenizer and chat template.

/// One chat turn as the server received it (content already flattened to text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTurn {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message text.
    pub content: String,
}

/// Error from a codec, reported to the client as a 400 (its input could not be encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

/// What the server needs from a tokenizer and chat template.
pub trait TextCodec: Send + Sync + 'static {
    /// Token ids of `text`; `special` lets special-token text (e.g. `<|im_start|>`) map to
    /// the special ids, as rendered chat templates need.
    fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, CodecError>;
    /// The prompt text for `messages`, ending with the assistant header when
    /// `add_generation_prompt`.
    fn render_chat(
        &self,
        messages: &[ChatTurn],
        add_generation_prompt: bool,
    ) -> Result<String, CodecError>;
    /// Raw bytes of one token (may be part of a UTF-8 character), for logprob `bytes`.
    fn token_bytes(&self, id: u32) -> Vec<u8>;
    /// Display string of one token, for logprob `token` fields.
    fn token_str(&self, id: u32) -> String {
        String::from_utf8_lossy(&self.token_bytes(id)).into_owned()
    }
    /// Vocabulary size, to reject out-of-range token-id prompts early.
    fn vocab_size(&self) -> usize;
}

/// Hermetic test codec: token id = byte value (vocabulary of 256), chat rendered as
/// `"<role>: <content>\n"` lines plus `"assistant: "` for the generation prompt.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByteCodec;

impl TextCodec for ByteCodec {
    fn encode(&self, text: &str, _special: bool) -> Result<Vec<u32>, CodecError> {
        Ok(text.bytes().map(u32::from).collect())
    }

    fn render_chat(&self, messages: &[ChatTurn], add_gen: bool) -> Result<String, CodecError> {
        let mut out = String::new();
        for m in messages {
            out.push_str(&format!("{}: {}\n", m.role, m.content));
        }
        if add_gen {
            out.push_str("assistant: ");
        }
        Ok(out)
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        u8::try_from(id).map(|b| vec![b]).unwrap_or_default()
    }

    fn vocab_size(&self) -> usize {
        256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_codec_round_trips_bytes_as_tokens() {
        let ids = ByteCodec.encode("hé", true).unwrap_or_default();
        assert_eq!(ids, vec![104, 0xc3, 0xa9]);
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| ByteCodec.token_bytes(i)).collect();
        assert_eq!(String::from_utf8_lossy(&bytes), "hé");
    }

    #[test]
    fn byte_codec_chat_ends_with_generation_prompt() {
        let turns = [ChatTurn {
            role: "user".into(),
            content: "hi".into(),
        }];
        let s = ByteCodec.render_chat(&turns, true).unwrap_or_default();
        assert_eq!(s, "user: hi\nassistant: ");
    }
}
