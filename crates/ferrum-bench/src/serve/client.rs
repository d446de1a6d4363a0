//! A blocking OpenAI-compatible streaming client (ureq): one request in, one
//! [`RequestRecord`] out. Works against `ferrum serve`, llama.cpp's `llama-server` and vLLM:
//! it only uses `/v1/models`, `/v1/completions` and `/v1/chat/completions` with `stream`,
//! `stream_options.include_usage`, `max_tokens`, `temperature` and `ignore_eos`.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::sse::{SseDecoder, SseEvent, StreamRecorder};
use super::stats::RequestRecord;
use super::PromptInput;
use crate::{BenchError, Result};

/// Connection settings shared by every request of a run.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Server base URL, e.g. `http://127.0.0.1:8080` (a trailing `/` or `/v1` is accepted).
    pub url: String,
    /// Bearer token, when the server wants one.
    pub api_key: Option<String>,
    /// Model name to send; `None` asks `/v1/models` for the first one.
    pub model: Option<String>,
    /// Ask the server to generate past end-of-sequence (equal output lengths across servers).
    pub ignore_eos: bool,
    /// Sampling temperature (0 = greedy).
    pub temperature: f64,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Connections kept open (the concurrency).
    pub max_connections: usize,
}

/// One HTTP client for a run; cheap to share between threads.
#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    cfg: ClientConfig,
    model: String,
}

/// What one streamed request produced.
#[derive(Debug, Clone)]
pub struct Streamed {
    /// Timings and counts.
    pub record: RequestRecord,
    /// The generated text (history for the next turn of a multi-turn chat).
    pub text: String,
}

fn base_url(url: &str) -> String {
    let u = url.trim_end_matches('/');
    u.strip_suffix("/v1").unwrap_or(u).to_string()
}

impl Client {
    /// Builds the client and resolves the model name (asking `/v1/models` when not given;
    /// an unreachable server is an error here, before any timing starts).
    pub fn connect(cfg: ClientConfig) -> Result<Client> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(cfg.timeout))
            .max_idle_connections(cfg.max_connections.max(1) * 2)
            .max_idle_connections_per_host(cfg.max_connections.max(1) * 2)
            .build()
            .into();
        let base = base_url(&cfg.url);
        let mut client = Client {
            agent,
            base,
            model: cfg.model.clone().unwrap_or_default(),
            cfg,
        };
        if client.model.is_empty() {
            client.model = client.first_model()?;
        }
        Ok(client)
    }

    /// The model name sent with every request.
    pub fn model(&self) -> &str {
        &self.model
    }

    fn first_model(&self) -> Result<String> {
        let url = format!("{}/v1/models", self.base);
        let mut req = self.agent.get(&url);
        if let Some(k) = &self.cfg.api_key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut resp = req
            .call()
            .map_err(|e| BenchError::Server(format!("GET {url}: {e}")))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(BenchError::Server(format!("GET {url}: HTTP {status}")));
        }
        let v: Value = resp
            .body_mut()
            .read_json()
            .map_err(|e| BenchError::Server(format!("GET {url}: {e}")))?;
        v["data"][0]["id"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| BenchError::Server(format!("{url} lists no model")))
    }

    fn body(&self, max_tokens: usize) -> Value {
        json!({
            "model": self.model,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": max_tokens,
            "temperature": self.cfg.temperature,
            "ignore_eos": self.cfg.ignore_eos,
        })
    }

    /// Streams a `/v1/completions` request. `run_start` anchors `sent_s`.
    pub fn completion(
        &self,
        prompt: &PromptInput,
        max_tokens: usize,
        run_start: Instant,
    ) -> Streamed {
        let mut body = self.body(max_tokens);
        let known_len = match prompt {
            PromptInput::Text(t) => {
                body["prompt"] = json!(t);
                None
            }
            PromptInput::Ids(ids) => {
                body["prompt"] = json!(ids);
                Some(ids.len() as u64)
            }
        };
        self.stream("/v1/completions", &body, max_tokens, known_len, run_start)
    }

    /// Streams a `/v1/chat/completions` request with `messages` as (role, content) pairs.
    pub fn chat(
        &self,
        messages: &[(&str, &str)],
        max_tokens: usize,
        run_start: Instant,
    ) -> Streamed {
        let mut body = self.body(max_tokens);
        body["messages"] = messages
            .iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect();
        self.stream("/v1/chat/completions", &body, max_tokens, None, run_start)
    }

    fn stream(
        &self,
        path: &str,
        body: &Value,
        max_tokens: usize,
        known_prompt_len: Option<u64>,
        run_start: Instant,
    ) -> Streamed {
        let sent = Instant::now();
        let mut rec = StreamRecorder::new();
        let error = self.stream_into(path, body, sent, &mut rec).err();
        let e2e_s = sent.elapsed().as_secs_f64();
        let error = error.or_else(|| {
            (rec.first_token_s.is_none() && max_tokens > 0)
                .then(|| "stream ended without generated text".to_string())
        });
        Streamed {
            record: RequestRecord {
                sent_s: sent.duration_since(run_start).as_secs_f64(),
                ttft_s: rec.first_token_s,
                e2e_s,
                itl_s: std::mem::take(&mut rec.itl_s),
                input_tokens: rec.usage_prompt_tokens.or(known_prompt_len).unwrap_or(0),
                output_tokens: rec.output_tokens(),
                expected_output_tokens: max_tokens as u64,
                error,
            },
            text: rec.text,
        }
    }

    fn stream_into(
        &self,
        path: &str,
        body: &Value,
        sent: Instant,
        rec: &mut StreamRecorder,
    ) -> std::result::Result<(), String> {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(k) = &self.cfg.api_key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut resp = req
            .send_json(body)
            .map_err(|e| format!("POST {path}: {e}"))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            let text: String = text.chars().take(300).collect();
            return Err(format!("HTTP {status}: {text}"));
        }
        let mut reader = BufReader::new(resp.into_body().into_reader());
        let mut dec = SseDecoder::new();
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| format!("reading the stream: {e}"))?;
            let event = if n == 0 {
                dec.finish()
            } else {
                dec.push_line(line.trim_end_matches('\n'))
            };
            if let Some(ev) = event {
                rec.record(&ev, sent.elapsed().as_secs_f64())?;
                if ev == SseEvent::Done {
                    return Ok(());
                }
            }
            if n == 0 {
                return if rec.done || rec.first_token_s.is_some() {
                    Ok(())
                } else {
                    Err("stream closed before any event".into())
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_accepts_trailing_slash_and_v1() {
        assert_eq!(base_url("http://h:1/"), "http://h:1");
        assert_eq!(base_url("http://h:1/v1"), "http://h:1");
        assert_eq!(base_url("http://h:1/v1/"), "http://h:1");
    }
}
