//! Text <-> token conversion as the server needs it, behind a small trait.
//!
//! The server only needs to turn prompts and chat messages into token ids and token ids into
//! display strings (for logprobs). Keeping that behind [`TextCodec`] lets the HTTP layer be
//! tested hermetically with [`AsciiCodec`] (one token per character) while `ferrum serve` plugs in
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
    /// Token ids of a raw completion prompt: like `encode(text, true)` plus the BOS/EOS the
    /// model file asks for. (Chat prompts use plain `encode`, as templates write BOS themselves.)
    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, CodecError> {
        self.encode(text, true)
    }
    /// Raw bytes of one token (may be part of a UTF-8 character), for logprob `bytes`.
    fn token_bytes(&self, id: u32) -> Vec<u8>;
    /// Display string of one token, for logprob `token` fields.
    fn token_str(&self, id: u32) -> String {
        String::from_utf8_lossy(&self.token_bytes(id)).into_owned()
    }
    /// Vocabulary size, to reject out-of-range token-id prompts early.
    fn vocab_size(&self) -> usize;
}

/// Hermetic test codec over printable ASCII: ids `0..95` are the bytes `b' '..=b'~'` and id
/// 95 is `'\n'`. Every token is one visible character, so generated text equals the
/// concatenation of its token strings (handy for exact assertions); other characters are
/// refused as a [`CodecError`]. Chat renders as `"<role>: <content>\n"` lines plus
/// `"assistant: "` for the generation prompt. It also implements the engine's
/// [`TokenText`](ferrum_engine::TokenText) so one value serves both sides.
#[derive(Debug, Clone, Copy, Default)]
pub struct AsciiCodec;

/// Vocabulary size of [`AsciiCodec`].
pub const ASCII_VOCAB: usize = 96;

static ASCII_TABLE: [u8; ASCII_VOCAB] = {
    let mut t = [0u8; ASCII_VOCAB];
    let mut i = 0;
    while i < 95 {
        t[i] = b' ' + i as u8;
        i += 1;
    }
    t[95] = b'\n';
    t
};

impl TextCodec for AsciiCodec {
    fn encode(&self, text: &str, _special: bool) -> Result<Vec<u32>, CodecError> {
        text.bytes()
            .map(|b| match b {
                b' '..=b'~' => Ok(u32::from(b - b' ')),
                b'\n' => Ok(95),
                _ => Err(CodecError(format!(
                    "the test codec only encodes printable ASCII and newlines, not byte {b:#04x}"
                ))),
            })
            .collect()
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
        ferrum_engine::TokenText::token_bytes(self, id).to_vec()
    }

    fn vocab_size(&self) -> usize {
        ASCII_VOCAB
    }
}

impl ferrum_engine::TokenText for AsciiCodec {
    fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        ASCII_TABLE.get(i..i + 1).unwrap_or(&[])
    }
}

/// The real codec: the model's tokenizer and chat template. It also implements the engine's
/// [`TokenText`](ferrum_engine::TokenText), so `ferrum serve` can hand one `Arc<ModelCodec>`
/// to both the engine and the server.
#[derive(Debug)]
pub struct ModelCodec {
    /// The model's tokenizer.
    pub tokenizer: ferrum_model::tokenizer::Tokenizer,
    /// The model's chat template.
    pub template: ferrum_model::chat::ChatTemplate,
}

impl ModelCodec {
    /// Tokenizer and chat template from an opened GGUF file.
    pub fn from_gguf(f: &ferrum_model::gguf::GgufFile) -> ferrum_model::Result<Self> {
        Ok(ModelCodec {
            tokenizer: ferrum_model::tokenizer::Tokenizer::from_gguf(f)?,
            template: ferrum_model::chat::ChatTemplate::from_gguf(f)?,
        })
    }
}

fn codec_error(e: ferrum_model::Error) -> CodecError {
    CodecError(e.msg)
}

impl TextCodec for ModelCodec {
    fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, CodecError> {
        self.tokenizer.encode(text, special).map_err(codec_error)
    }

    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, CodecError> {
        self.tokenizer.encode_prompt(text).map_err(codec_error)
    }

    fn render_chat(&self, messages: &[ChatTurn], add_gen: bool) -> Result<String, CodecError> {
        let msgs: Vec<ferrum_model::chat::ChatMessage> = messages
            .iter()
            .map(|m| ferrum_model::chat::ChatMessage::new(m.role.clone(), m.content.clone()))
            .collect();
        self.template.render(&msgs, add_gen).map_err(codec_error)
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.tokenizer.token_bytes(id).to_vec()
    }

    fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }
}

impl ferrum_engine::TokenText for ModelCodec {
    fn token_bytes(&self, id: u32) -> &[u8] {
        self.tokenizer.token_bytes(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_codec_round_trips_text_through_tokens() {
        let ids = AsciiCodec.encode("Hi ~\n", true).unwrap_or_default();
        assert_eq!(ids.len(), 5);
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| AsciiCodec.token_bytes(i))
            .collect();
        assert_eq!(bytes, b"Hi ~\n");
    }

    #[test]
    fn ascii_codec_refuses_non_ascii_and_unknown_ids() {
        assert!(AsciiCodec.encode("é", true).is_err());
        assert!(TextCodec::token_bytes(&AsciiCodec, 96).is_empty());
    }

    /// Needs the default model file; fails (not skips) when it is missing, like the model
    /// crate's tests, so a missing file is never mistaken for a pass.
    #[test]
    fn model_codec_renders_chatml_and_encodes_special_tokens() {
        let path =
            std::path::Path::new("/root/.cache/ferrum/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let f = ferrum_model::gguf::GgufFile::open(path)
            .unwrap_or_else(|e| panic!("default model at {}: {e}", path.display()));
        let c = ModelCodec::from_gguf(&f).unwrap_or_else(|e| panic!("{e}"));
        let turns = [ChatTurn {
            role: "user".into(),
            content: "Hi".into(),
        }];
        let text = c.render_chat(&turns, true).unwrap_or_default();
        assert!(text.contains("<|im_start|>user"), "{text}");
        assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
        let ids = c.encode(&text, true).unwrap_or_default();
        let start = c.tokenizer.token_to_id("<|im_start|>");
        assert!(
            start.is_some_and(|s| ids[0] == s),
            "special token parsed: {ids:?}"
        );
        let joined: Vec<u8> = ids
            .iter()
            .flat_map(|&i| TextCodec::token_bytes(&c, i))
            .collect();
        assert_eq!(String::from_utf8_lossy(&joined), text);
    }

    #[test]
    fn ascii_codec_chat_ends_with_generation_prompt() {
        let turns = [ChatTurn {
            role: "user".into(),
            content: "hi".into(),
        }];
        let s = AsciiCodec.render_chat(&turns, true).unwrap_or_default();
        assert_eq!(s, "user: hi\nassistant: ");
    }
}
