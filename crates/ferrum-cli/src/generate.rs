//! `ferrum generate`, `ferrum chat` and `ferrum tokenize`: single-sequence use of the runtime.

use std::io::{BufRead, Write};
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use ferrum_model::chat::ChatMessage;
use ferrum_model::sampler::{top_logprobs, Sampler, SamplingParams};
use ferrum_model::session::Session;
use ferrum_model::tokenizer::{StreamDecoder, Tokenizer};

use crate::load::ModelArgs;

/// Sampling options shared by `generate` and `chat`.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens below this fraction of the top probability (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalize repeated tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// OpenAI-style presence penalty.
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// OpenAI-style frequency penalty.
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Seed for reproducible sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    fn params(&self, top_logprobs: usize) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            top_logprobs,
        }
    }
}

/// Arguments of `ferrum generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// The prompt text.
    #[arg(long, short = 'p', required_unless_present = "prompt_ids")]
    prompt: Option<String>,
    /// The prompt as token ids (space- or comma-separated), bypassing the tokenizer; used by
    /// benchmarks that need an exact prompt length.
    #[arg(long, conflicts_with = "prompt")]
    prompt_ids: Option<String>,
    /// Parse control tokens written in the prompt (like llama.cpp's special=True).
    #[arg(long)]
    special: bool,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Print one JSON object (prompt_ids, generated_ids, text, top_logprobs, timings) instead of streaming.
    #[arg(long)]
    json: bool,
}

/// Arguments of `ferrum chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// A system message for the conversation.
    #[arg(long)]
    system: Option<String>,
    /// KV capacity of the conversation in tokens.
    #[arg(long, default_value_t = 8192)]
    context: usize,
    /// Talk to a running `ferrum serve` (or any OpenAI-compatible server) at this base URL,
    /// e.g. http://127.0.0.1:8080, instead of loading the model here.
    #[arg(long)]
    url: Option<String>,
    /// API key for `--url`.
    #[arg(long, env = "FERRUM_API_KEY")]
    api_key: Option<String>,
}

/// Arguments of `ferrum tokenize`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Text to tokenize.
    text: String,
    /// Parse control tokens written in the text.
    #[arg(long)]
    special: bool,
    /// A local GGUF file (default: the default model).
    #[arg(long, short = 'm', env = "FERRUM_MODEL")]
    model: Option<std::path::PathBuf>,
}

pub fn run_tokenize(a: TokenizeArgs) -> Result<()> {
    let path = match a.model {
        Some(p) => p,
        None => ferrum_model::fetch::default_model_path()?,
    };
    let file = ferrum_model::gguf::GgufFile::open(&path)?;
    let tok = Tokenizer::from_gguf(&file)?;
    println!(
        "{}",
        serde_json::to_string(&tok.encode(&a.text, a.special)?)?
    );
    Ok(())
}

/// Parses space- or comma-separated token ids, each below `vocab`.
fn parse_ids(s: &str, vocab: usize) -> Result<Vec<u32>> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| match t.parse::<u32>() {
            Ok(id) if (id as usize) < vocab => Ok(id),
            _ => bail!("--prompt-ids: {t:?} is not a token id below {vocab}"),
        })
        .collect()
}

/// What one generation produced.
struct Generation {
    ids: Vec<u32>,
    text: String,
    first_top: Vec<(u32, f32)>,
    prompt_s: f64,
    gen_s: f64,
}

/// Evaluates `prompt` (reusing cached tokens) then samples up to `max_tokens`, calling
/// `on_text` with each complete-UTF-8 text delta.
fn generate(
    session: &mut Session,
    tok: &Tokenizer,
    prompt: &[u32],
    s: &SamplingArgs,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    let mut sampler = Sampler::new(s.params(0), prompt)?;
    let stops = tok.stop_ids();
    let t0 = Instant::now();
    let kept = session.reuse_prefix(prompt);
    let mut logits = session.extend(&prompt[kept..], None)?;
    let prompt_s = t0.elapsed().as_secs_f64();
    let first_top = top_logprobs(&logits, 5);
    let t1 = Instant::now();
    let mut ids = Vec::new();
    let mut dec = StreamDecoder::new();
    let mut text = String::new();
    while ids.len() < s.max_tokens {
        let next = sampler.sample(&mut logits).token;
        sampler.accept(next);
        ids.push(next);
        if stops.contains(&next) && !s.ignore_eos {
            break;
        }
        let delta = dec.push(tok.token_bytes(next));
        on_text(&delta);
        text.push_str(&delta);
        if ids.len() == s.max_tokens || session.tokens().len() + 1 >= session.capacity() {
            break;
        }
        logits = session.extend(&[next], None)?;
    }
    let tail = dec.finish();
    on_text(&tail);
    text.push_str(&tail);
    Ok(Generation {
        ids,
        text,
        first_top,
        prompt_s,
        gen_s: t1.elapsed().as_secs_f64(),
    })
}

pub fn run_generate(a: GenerateArgs) -> Result<()> {
    let loaded = a.model.load()?;
    let tok = &loaded.tokenizer;
    let prompt = match (&a.prompt_ids, &a.prompt) {
        (Some(ids), _) => parse_ids(ids, tok.vocab_size())?,
        (None, Some(p)) => {
            let text = if a.chat {
                let msg = ChatMessage {
                    role: "user".into(),
                    content: p.clone(),
                };
                loaded.template.render(&[msg], true)?
            } else {
                p.clone()
            };
            let mut prompt = tok.encode(&text, a.special || a.chat)?;
            if tok.add_bos() && !a.chat {
                if let Some(b) = tok.bos_id() {
                    prompt.insert(0, b);
                }
            }
            prompt
        }
        (None, None) => bail!("give --prompt or --prompt-ids"),
    };
    if prompt.is_empty() {
        bail!("the prompt is empty after tokenization");
    }
    let ctx = loaded.model.config.context_length;
    if prompt.len() + a.sampling.max_tokens > ctx {
        bail!(
            "prompt ({} tokens) plus --max-tokens {} exceeds the context of {ctx}",
            prompt.len(),
            a.sampling.max_tokens
        );
    }
    let runner = a
        .model
        .runner(&loaded.model, prompt.len() + a.sampling.max_tokens + 1)?;
    let mut session = Session::new(runner);
    let stdout = std::io::stdout();
    let json = a.json;
    let g = generate(&mut session, tok, &prompt, &a.sampling, |t| {
        if !json {
            let mut o = stdout.lock();
            let _ = o.write_all(t.as_bytes());
            let _ = o.flush();
        }
    })?;
    let prompt_tps = prompt.len() as f64 / g.prompt_s.max(1e-9);
    let gen_tps = g.ids.len().saturating_sub(1) as f64 / g.gen_s.max(1e-9);
    if json {
        let top: Vec<_> = g
            .first_top
            .iter()
            .map(|&(id, lp)| serde_json::json!({"id": id, "logprob": lp}))
            .collect();
        let out = serde_json::json!({
            "prompt_ids": prompt,
            "generated_ids": g.ids,
            "text": g.text,
            "top_logprobs": top,
            "prompt_tokens_per_s": prompt_tps,
            "decode_tokens_per_s": gen_tps,
        });
        println!("{out}");
    } else {
        println!();
        eprintln!(
            "prompt: {} tokens in {:.3} s ({:.1} tok/s); decode: {} tokens in {:.3} s ({:.1} tok/s); {} threads, {} kernels, {:?} numerics",
            prompt.len(),
            g.prompt_s,
            prompt_tps,
            g.ids.len(),
            g.gen_s,
            gen_tps,
            session.runner().n_threads(),
            session.runner().kernels().name(),
            session.runner().model().numerics
        );
    }
    Ok(())
}

/// One line typed at a chat prompt.
pub(crate) enum Turn<'a> {
    /// `/exit`, `/quit` or end of input.
    Exit,
    /// `/reset`: forget the conversation (keeping the system message).
    Reset,
    /// A message to send.
    Message(&'a str),
}

/// Prompts with `> ` and reads the next non-empty line into `line`, recognising the REPL's
/// commands; shared by the local and the remote (`--url`) chat.
pub(crate) fn read_turn(line: &mut String) -> Result<Turn<'_>> {
    loop {
        eprint!("> ");
        line.clear();
        if std::io::stdin().lock().read_line(line)? == 0 {
            return Ok(Turn::Exit);
        }
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(Turn::Exit),
            "/reset" => return Ok(Turn::Reset),
            _ => return Ok(Turn::Message(line.trim_end_matches(['\n', '\r']))),
        }
    }
}

pub fn run_chat(a: ChatArgs) -> Result<()> {
    if let Some(url) = &a.url {
        return crate::remote_chat::run(
            url,
            a.api_key.as_deref(),
            a.system.as_deref(),
            &a.sampling,
        );
    }
    let loaded = a.model.load()?;
    let tok = &loaded.tokenizer;
    let runner = a.model.runner(&loaded.model, a.context)?;
    let mut session = Session::new(runner);
    let mut messages: Vec<ChatMessage> = Vec::new();
    if let Some(s) = &a.system {
        messages.push(ChatMessage {
            role: "system".into(),
            content: s.clone(),
        });
    }
    eprintln!(
        "ferrum chat: type a message; /reset clears the conversation, /exit or Ctrl-D quits."
    );
    let mut line = String::new();
    loop {
        let input = match read_turn(&mut line)? {
            Turn::Exit => break,
            Turn::Reset => {
                messages.retain(|m| m.role == "system");
                session.reset();
                continue;
            }
            Turn::Message(text) => text,
        };
        messages.push(ChatMessage {
            role: "user".into(),
            content: input.to_string(),
        });
        let rendered = loaded.template.render(&messages, true)?;
        let prompt = tok.encode(&rendered, true)?;
        if prompt.len() + 1 >= session.capacity() {
            eprintln!(
                "[the conversation no longer fits in {} tokens; /reset to start over]",
                session.capacity()
            );
            messages.pop();
            continue;
        }
        let cached = session
            .tokens()
            .iter()
            .zip(&prompt)
            .take_while(|(a, b)| a == b)
            .count();
        let mut out = std::io::stdout();
        let g = generate(&mut session, tok, &prompt, &a.sampling, |t| {
            let _ = out.write_all(t.as_bytes());
            let _ = out.flush();
        })?;
        println!();
        eprintln!(
            "[{} prompt tokens, {} reused from the last turn; {} tokens at {:.1} tok/s]",
            prompt.len(),
            cached.min(prompt.len().saturating_sub(1)),
            g.ids.len(),
            g.ids.len() as f64 / g.gen_s.max(1e-9)
        );
        messages.push(ChatMessage {
            role: "assistant".into(),
            content: g.text.trim().to_string(),
        });
    }
    Ok(())
}
