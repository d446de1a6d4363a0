//! Chat templates: a conversation in, the model's prompt text out.
//!
//! Models ship their prompt format as a Jinja template (`tokenizer.chat_template`) written for
//! Python's Jinja2 as Hugging Face `transformers` configures it. It is rendered with minijinja set up
//! the same way: `trim_blocks` and `lstrip_blocks` on, Python string methods (`.strip()`,
//! `.startswith()`, ...) through `minijinja_contrib`'s pycompat callback, and the globals
//! templates call (`raise_exception`, `strftime_now`). A file without a template gets ChatML,
//! the format of the default model.

#[cfg(test)]
mod tests;
mod time;

use minijinja::{context, Environment};

use crate::error::{Error, ErrorKind, Result};
use crate::gguf::GgufFile;

/// ChatML, used when the file carries no template.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const TEMPLATE_NAME: &str = "chat";

/// One turn of a conversation, as the OpenAI-style API and the templates see it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (templates may accept others).
    pub role: String,
    /// The turn's text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`, for building conversations in code.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

fn tpl_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Template, msg)
}

/// Formats a minijinja error with its chain of causes (the template line is in the detail).
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// A compiled chat template with the model's BOS/EOS texts. `Send + Sync`; render from any
/// thread.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

/// The text of token `key`'s id, or "" when the file names no such token.
fn token_text(f: &GgufFile, key: &str) -> Result<String> {
    let Some(id) = f.get(key).and_then(|v| v.as_u64()) else {
        return Ok(String::new());
    };
    let tokens = f
        .get_array("tokenizer.ggml.tokens")
        .map_err(|e| tpl_err(format!("reading token texts: {}", e.msg)))?;
    Ok(usize::try_from(id)
        .ok()
        .and_then(|i| tokens.get(i))
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string())
}

impl ChatTemplate {
    /// The file's `tokenizer.chat_template` (ChatML when absent), with BOS/EOS texts taken from
    /// its vocabulary. A template that does not parse is an error here, not at first render.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let src = match f.get("tokenizer.chat_template") {
            None => CHATML_TEMPLATE,
            Some(v) => v
                .as_str()
                .ok_or_else(|| tpl_err("tokenizer.chat_template is not a string"))?,
        };
        let bos = token_text(f, "tokenizer.ggml.bos_token_id")?;
        let eos = token_text(f, "tokenizer.ggml.eos_token_id")?;
        Self::from_source(src, &bos, &eos)
    }

    /// Compiles template source `src`; `bos`/`eos` are the texts the template sees as
    /// `bos_token`/`eos_token`.
    pub fn from_source(src: &str, bos: &str, eos: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, src.to_string())
            .map_err(|e| tpl_err(format!("chat template does not parse: {}", describe(&e))))?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// The prompt for `messages`; with `add_generation_prompt` it ends with the opening of an
    /// assistant turn, so the model's continuation is the reply.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| tpl_err(describe(&e)))?;
        tpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos,
            eos_token => &self.eos,
            tools => (),
        })
        .map_err(|e| tpl_err(format!("chat template failed: {}", describe(&e))))
    }
}

/// `raise_exception(msg)`: templates call it to reject a conversation (e.g. roles out of order).
fn raise_exception(msg: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        msg,
    ))
}

/// `strftime_now(fmt)`: the current UTC time formatted with a strftime subset; templates put
/// today's date in the system prompt.
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::strftime(&fmt, secs)
}
