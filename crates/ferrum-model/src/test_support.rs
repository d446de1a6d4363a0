//! Test helpers shared by the modules' tests: the golden llama.cpp outputs and the default
//! model file.
//!
//! Tests that need the real model fail with a message saying where it was looked for, rather than
//! being skipped, so a missing file is never mistaken for a pass.

use std::path::PathBuf;

use serde::Deserialize;

use crate::chat::ChatMessage;

/// File name of the default model inside the models directory.
pub(crate) const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The golden file (`shared/golden/smollm2-135m.json`), as far as tests read it.
#[derive(Debug, Deserialize)]
pub(crate) struct Golden {
    /// Which model file the outputs were computed on.
    #[allow(dead_code)]
    pub model: String,
    /// SHA-256 of that file.
    #[allow(dead_code)]
    pub model_sha256: String,
    /// One entry per prompt.
    pub cases: Vec<GoldenCase>,
    /// The perplexity rule and value.
    #[allow(dead_code)]
    #[serde(default)]
    pub perplexity: serde_json::Value,
    /// How closely an implementation must agree.
    #[allow(dead_code)]
    #[serde(default)]
    pub tolerances: serde_json::Value,
}

/// One golden prompt: `text` for a plain case, `messages` + `rendered` for a chat case.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub(crate) struct GoldenCase {
    /// `"text"` or `"chat"`.
    pub kind: String,
    /// The prompt text of a text case.
    #[serde(default)]
    pub text: Option<String>,
    /// The conversation of a chat case.
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    /// The chat template's output for `messages` with a generation prompt.
    #[serde(default)]
    pub rendered: Option<String>,
    /// Token ids of the prompt (no BOS, control tokens parsed).
    pub tokens: Vec<u32>,
    /// Top-5 tokens after the prompt.
    #[serde(default)]
    pub top5: Vec<GoldenTop>,
    /// Greedy continuation, up to 32 tokens.
    #[serde(default)]
    pub greedy32: Vec<u32>,
    /// Text of the greedy continuation.
    #[serde(default)]
    pub greedy_text: String,
}

impl GoldenCase {
    /// The string whose tokens are `tokens`: the text, or the rendered chat.
    pub fn prompt(&self) -> &str {
        self.text
            .as_deref()
            .or(self.rendered.as_deref())
            .unwrap_or_else(|| {
                panic!(
                    "golden case of kind {:?} has no text or rendered",
                    self.kind
                )
            })
    }
}

/// One of the top tokens after a prompt.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub(crate) struct GoldenTop {
    /// Token id.
    pub id: u32,
    /// Raw logit.
    pub logit: f32,
    /// Log-probability after softmax.
    pub logprob: f32,
}

/// Path of the golden file: `$FERRUM_GOLDEN`, else the first `shared/golden/smollm2-135m.json`
/// found walking up from this crate (the repository's sibling `shared/` in the main checkout,
/// also found from a worktree nested one level deeper, or a `shared/` inside the checkout).
pub(crate) fn golden_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRUM_GOLDEN") {
        return PathBuf::from(p);
    }
    let rel = "shared/golden/smollm2-135m.json";
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .ancestors()
        .map(|dir| dir.join(rel))
        .find(|p| p.is_file())
        .unwrap_or_else(|| crate_dir.join("../../..").join(rel))
}

/// Loads the golden file, panicking with its path if it is missing or malformed.
pub(crate) fn golden() -> Golden {
    let path = golden_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} not readable ({e}); set FERRUM_GOLDEN",
            path.display()
        )
    });
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("golden file {} is malformed: {e}", path.display()))
}

/// The models directory: `$FERRUM_HOME/models`, else `~/.cache/ferrum/models`.
pub(crate) fn models_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("FERRUM_HOME") {
        return PathBuf::from(home).join("models");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/ferrum/models")
}

/// Path of the default model file, panicking with where it was looked for if absent.
pub(crate) fn default_model_path() -> PathBuf {
    let path = models_dir().join(DEFAULT_MODEL_FILE);
    assert!(
        path.is_file(),
        "default model not found at {} (set FERRUM_HOME, or fetch the model first)",
        path.display()
    );
    path
}

/// The default model, opened.
pub(crate) fn default_model() -> crate::gguf::GgufFile {
    let path = default_model_path();
    crate::gguf::GgufFile::open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}
