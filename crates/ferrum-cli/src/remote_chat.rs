//! `ferrum chat --url`: the chat REPL against a running OpenAI-compatible server, streaming
//! each answer as it arrives (server-sent events).

use std::io::{BufRead, BufReader, Write};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::generate::{read_turn, SamplingArgs, Turn};

/// Runs the REPL against `base` (e.g. `http://127.0.0.1:8080`).
pub fn run(
    base: &str,
    api_key: Option<&str>,
    system: Option<&str>,
    s: &SamplingArgs,
) -> Result<()> {
    let base = base.trim_end_matches('/');
    let agent = ureq::Agent::new_with_defaults();
    let model = first_model(&agent, base, api_key)?;
    let mut messages: Vec<Value> = Vec::new();
    if let Some(sys) = system {
        messages.push(json!({"role": "system", "content": sys}));
    }
    eprintln!("ferrum chat: talking to {model} at {base}; /reset clears, /exit or Ctrl-D quits.");
    let mut line = String::new();
    loop {
        let input = match read_turn(&mut line)? {
            Turn::Exit => break,
            Turn::Reset => {
                messages.retain(|m| m["role"] == "system");
                continue;
            }
            Turn::Message(text) => text,
        };
        messages.push(json!({"role": "user", "content": input}));
        let mut body = json!({
            "model": model, "messages": messages, "stream": true,
            "max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p,
            "top_k": s.top_k, "min_p": s.min_p, "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
        });
        if let Some(seed) = s.seed {
            body["seed"] = json!(seed);
        }
        match stream_answer(&agent, base, api_key, &body) {
            Ok(answer) => {
                println!();
                messages.push(json!({"role": "assistant", "content": answer}));
            }
            Err(e) => {
                eprintln!("[request failed: {e:#}]");
                messages.pop();
            }
        }
    }
    Ok(())
}

fn first_model(agent: &ureq::Agent, base: &str, key: Option<&str>) -> Result<String> {
    let mut req = agent.get(format!("{base}/v1/models"));
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    let v: Value = req
        .call()
        .with_context(|| format!("GET {base}/v1/models"))?
        .body_mut()
        .read_json()
        .context("reading /v1/models")?;
    match v["data"][0]["id"].as_str() {
        Some(id) => Ok(id.to_string()),
        None => bail!("{base}/v1/models lists no model"),
    }
}

/// Posts a streaming chat request and prints content deltas; returns the whole answer.
fn stream_answer(
    agent: &ureq::Agent,
    base: &str,
    key: Option<&str>,
    body: &Value,
) -> Result<String> {
    let mut req = agent.post(format!("{base}/v1/chat/completions"));
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    let resp = req.send_json(body).context("POST /v1/chat/completions")?;
    let reader = BufReader::new(resp.into_body().into_reader());
    let mut answer = String::new();
    let mut out = std::io::stdout();
    for line in reader.lines() {
        let line = line.context("reading the event stream")?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).context("parsing a stream event")?;
        if let Some(err) = v.get("error") {
            bail!("server error: {err}");
        }
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            out.write_all(t.as_bytes())?;
            out.flush()?;
            answer.push_str(t);
        }
    }
    Ok(answer)
}
