//! Submitting choices to the engine and following their event streams.
//!
//! A request with P prompts and `n` choices becomes P x n engine requests, choice index
//! `prompt * n + i`. Each is followed through a [`Tracked`] receiver that records latency
//! metrics as events arrive. Dropping a `Tracked` drops its receiver, which the engine
//! treats as a cancel, so a client that goes away frees its KV blocks.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedReceiver;

use ferrum_engine::{Event, FinishReason, Request, TokenLogprob, Usage};

use crate::error::ApiError;
use crate::params::GenParams;
use crate::state::{AppState, Model};

/// One engine request being followed.
pub(crate) struct Tracked {
    /// Choice index in the response.
    pub index: usize,
    /// Which prompt it continues.
    pub prompt_index: usize,
    rx: UnboundedReceiver<Event>,
    state: Arc<AppState>,
    start: Instant,
    last: Option<Instant>,
    first: Option<Instant>,
    done: bool,
    tenant: Option<String>,
    /// Agent program and next tool, traced when this is the request's first choice.
    program: Option<(String, Option<String>)>,
}

impl Tracked {
    /// The next event; `None` after `Finished`. A vanished engine yields a final error.
    pub async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let ev = self.rx.recv().await.unwrap_or_else(|| Event::Finished {
            reason: FinishReason::Error("the engine stopped".into()),
            usage: Usage::default(),
        });
        let now = Instant::now();
        let m = &self.state.metrics;
        match &ev {
            Event::Token { .. } => {
                match self.last {
                    None => {
                        self.first = Some(now);
                        m.ttft.observe(now - self.start);
                        if let Some(t) = &self.tenant {
                            m.tenants.observe_ttft(t, now - self.start);
                        }
                    }
                    Some(t) => m.itl.observe(now - t),
                }
                self.last = Some(now);
            }
            Event::Finished { usage, reason } => {
                self.done = true;
                if let Some((program, tool)) = self.program.take() {
                    m.programs.record(&crate::programs::TurnRecord {
                        program,
                        tool,
                        arrival: self.start,
                        first_token: self.first,
                        finish: now,
                        prompt_tokens: usage.prompt_tokens,
                        cached_tokens: usage.cached_tokens,
                        output_tokens: usage.completion_tokens,
                        finish_reason: match reason {
                            FinishReason::Stop => "stop",
                            FinishReason::Length => "length",
                            FinishReason::Cancelled => "cancelled",
                            FinishReason::Error(_) => "error",
                        },
                    });
                }
                m.e2e.observe(now - self.start);
                m.count_tokens(
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    usage.cached_tokens,
                );
            }
        }
        Some(ev)
    }
}

/// What the route decided to generate: prompts as token ids plus parameters.
pub(crate) struct Job<'a> {
    /// Token ids of each prompt.
    pub prompts: Vec<Vec<u32>>,
    /// Parsed parameters.
    pub params: &'a GenParams,
    /// Name of the prompt field for errors (`messages` or `prompt`).
    pub prompt_param: &'static str,
    /// Tenant (from the API key) and user header.
    pub who: crate::tenants::Identity,
}

/// Checks the model name, submits every choice, and returns them in choice order. On any
/// refusal the already-submitted choices are dropped (and so cancelled).
pub(crate) async fn submit(
    state: &Arc<AppState>,
    model: &Model,
    job: Job<'_>,
    start: Instant,
) -> Result<Vec<Tracked>, ApiError> {
    let p = job.params;
    let limit = model.max_model_len.min(model.kv_capacity_tokens.max(1));
    let mut out = Vec::with_capacity(job.prompts.len() * p.n);
    for (pi, prompt) in job.prompts.into_iter().enumerate() {
        if prompt.is_empty() {
            return Err(ApiError::invalid(
                Some(job.prompt_param.into()),
                "the prompt encodes to no tokens",
            ));
        }
        let max_tokens = match p.max_tokens {
            Some(m) => m,
            None if prompt.len() < limit => limit - prompt.len(),
            None => {
                return Err(ApiError {
                    code: Some("context_length_exceeded"),
                    ..ApiError::invalid(
                        Some(job.prompt_param.into()),
                        format!(
                            "the prompt has {} tokens but the context holds {}; shorten it",
                            prompt.len(),
                            limit
                        ),
                    )
                })
            }
        };
        for i in 0..p.n {
            let mut params = p.sampling.clone();
            // Distinct seeds so seeded n > 1 choices are not all identical.
            params.seed = params.seed.map(|s| s.wrapping_add(i as u64));
            let req = Request {
                prompt: prompt.clone(),
                params,
                max_tokens,
                stop_token_ids: Vec::new(),
                stop: p.stop.clone(),
                ignore_eos: p.ignore_eos,
                logprobs: p.logprobs,
                tenant: job.who.tenant.clone(),
                user: p.user.clone().or_else(|| job.who.user.clone()),
                speculative: p.speculative,
                program: p.program.clone(),
                tool: p.tool.clone(),
            };
            let (_, rx) = model
                .engine
                .submit_async(req)
                .await
                .map_err(|e| ApiError::from_submit(&e, job.prompt_param))?;
            out.push(Tracked {
                index: pi * p.n + i,
                prompt_index: pi,
                rx,
                state: state.clone(),
                start,
                last: None,
                first: None,
                done: false,
                tenant: job.who.tenant.clone(),
                program: p
                    .program
                    .clone()
                    .filter(|_| pi == 0 && i == 0)
                    .map(|prog| (prog, p.tool.clone())),
            });
        }
    }
    Ok(out)
}

/// A finished choice, for non-streaming responses.
pub(crate) struct Output {
    /// Choice index.
    pub index: usize,
    /// Prompt it continues.
    pub prompt_index: usize,
    /// Generated text.
    pub text: String,
    /// Generated tokens with their logprobs (when asked for).
    pub logprobs: Vec<(u32, TokenLogprob)>,
    /// `stop` or `length`.
    pub finish: &'static str,
    /// Token counts.
    pub usage: Usage,
}

/// OpenAI's `finish_reason`, or the error to report for an abnormal end.
pub(crate) fn finish_reason(r: &FinishReason) -> Result<&'static str, ApiError> {
    match r {
        FinishReason::Stop => Ok("stop"),
        FinishReason::Length => Ok("length"),
        FinishReason::Cancelled => Err(ApiError::unavailable(
            "the request was cancelled because the server is shutting down",
            "cancelled",
        )),
        FinishReason::Error(m) => Err(ApiError::internal(format!("generation failed: {m}"))),
    }
}

/// Follows one choice to its end.
pub(crate) async fn collect(mut t: Tracked) -> Result<Output, ApiError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    while let Some(ev) = t.next().await {
        match ev {
            Event::Token {
                id,
                text: d,
                logprob,
            } => {
                text.push_str(&d);
                if let Some(lp) = logprob {
                    logprobs.push((id, lp));
                }
            }
            Event::Finished { reason, usage } => {
                return Ok(Output {
                    index: t.index,
                    prompt_index: t.prompt_index,
                    text,
                    logprobs,
                    finish: finish_reason(&reason)?,
                    usage,
                });
            }
        }
    }
    Err(ApiError::internal(
        "the engine ended a request without finishing it",
    ))
}

/// Response usage: each prompt counted once (its first choice), completions summed.
pub(crate) fn total_usage<'a>(items: impl Iterator<Item = (usize, &'a Usage)>) -> Usage {
    let mut seen = std::collections::HashSet::new();
    let mut total = Usage::default();
    for (prompt_index, u) in items {
        if seen.insert(prompt_index) {
            total.prompt_tokens += u.prompt_tokens;
            total.cached_tokens += u.cached_tokens;
        }
        total.completion_tokens += u.completion_tokens;
    }
    total
}

/// OpenAI's `usage` object.
pub(crate) fn usage_json(u: &Usage) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": u.cached_tokens },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_each_prompt_once_and_every_completion() {
        let u = |p, c, k| Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cached_tokens: k,
        };
        let items = [(0, u(10, 3, 0)), (0, u(10, 4, 8)), (1, u(5, 2, 0))];
        let t = total_usage(items.iter().map(|(i, u)| (*i, u)));
        assert_eq!(
            (t.prompt_tokens, t.completion_tokens, t.cached_tokens),
            (15, 9, 0)
        );
        assert_eq!(usage_json(&t)["total_tokens"], 24);
    }
}
