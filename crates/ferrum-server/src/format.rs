//! JSON shapes of OpenAI responses and chunks, for chat and text completions.
//!
//! One [`Format`] value knows the route and the response metadata, and builds the full
//! response (non-streaming) or each SSE chunk (streaming), so the two modes cannot drift.

use std::sync::Arc;

use serde_json::{json, Value};

use ferrum_engine::{TokenLogprob, Usage};

use crate::codec::TextCodec;
use crate::generate::{usage_json, Output};

/// Which API shape to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

/// Response metadata plus what is needed to render tokens.
#[derive(Clone)]
pub(crate) struct Format {
    /// The route.
    pub route: Route,
    /// Response id, same for every chunk.
    pub id: String,
    /// Unix creation time.
    pub created: u64,
    /// Model name echoed back.
    pub model: String,
    /// For token strings in logprobs.
    pub codec: Arc<dyn TextCodec>,
}

/// OpenAI clamps impossible tokens' logprobs to -9999 instead of -inf (JSON has no inf).
fn finite(lp: f32) -> f32 {
    if lp.is_finite() {
        lp
    } else {
        -9999.0
    }
}

impl Format {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.route, chunk) {
            (Route::Chat, false) => "chat.completion",
            (Route::Chat, true) => "chat.completion.chunk",
            (Route::Completion, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        })
    }

    fn entry(&self, id: u32, lp: f32) -> Value {
        let bytes = self.codec.token_bytes(id);
        json!({
            "token": String::from_utf8_lossy(&bytes),
            "logprob": finite(lp),
            "bytes": bytes,
        })
    }

    /// Chat `logprobs` object for these tokens.
    fn chat_logprobs(&self, items: &[(u32, TokenLogprob)]) -> Value {
        let content: Vec<Value> = items
            .iter()
            .map(|(id, lp)| {
                let mut e = self.entry(*id, lp.logprob);
                e["top_logprobs"] = lp.top.iter().map(|&(t, l)| self.entry(t, l)).collect();
                e
            })
            .collect();
        json!({ "content": content })
    }

    /// Completions `logprobs` object; `offset` is the text offset of the first token.
    fn completion_logprobs(&self, items: &[(u32, TokenLogprob)], mut offset: usize) -> Value {
        let mut tokens = Vec::new();
        let mut lps = Vec::new();
        let mut tops = Vec::new();
        let mut offsets = Vec::new();
        for (id, lp) in items {
            let s = self.codec.token_str(*id);
            offsets.push(offset);
            offset += s.len();
            tokens.push(s);
            lps.push(finite(lp.logprob));
            let top: serde_json::Map<String, Value> = lp
                .top
                .iter()
                .map(|&(t, l)| (self.codec.token_str(t), json!(finite(l))))
                .collect();
            tops.push(top);
        }
        json!({
            "tokens": tokens,
            "token_logprobs": lps,
            "top_logprobs": tops,
            "text_offset": offsets,
        })
    }

    fn logprobs(&self, items: &[(u32, TokenLogprob)], offset: usize, asked: bool) -> Value {
        match (asked, self.route) {
            (false, _) => Value::Null,
            (true, Route::Chat) => self.chat_logprobs(items),
            (true, Route::Completion) => self.completion_logprobs(items, offset),
        }
    }

    /// The whole non-streaming response.
    pub fn response(&self, outs: &[Output], usage: &Usage, logprobs: bool) -> Value {
        let choices: Vec<Value> = outs
            .iter()
            .map(|o| {
                let lp = self.logprobs(&o.logprobs, 0, logprobs);
                match self.route {
                    Route::Chat => json!({
                        "index": o.index,
                        "message": { "role": "assistant", "content": o.text },
                        "logprobs": lp,
                        "finish_reason": o.finish,
                    }),
                    Route::Completion => json!({
                        "index": o.index,
                        "text": o.text,
                        "logprobs": lp,
                        "finish_reason": o.finish,
                    }),
                }
            })
            .collect();
        let mut v = self.envelope(false, Value::Array(choices));
        v["usage"] = usage_json(usage);
        v
    }

    /// The opening chunk of a chat choice (announces the assistant role); none for completions.
    pub fn start_chunk(&self, index: usize, with_usage: bool) -> Option<Value> {
        (self.route == Route::Chat).then(|| {
            self.chunk(
                json!({
                    "index": index,
                    "delta": { "role": "assistant", "content": "" },
                    "logprobs": null,
                    "finish_reason": null,
                }),
                with_usage,
            )
        })
    }

    fn chunk(&self, choice: Value, with_usage: bool) -> Value {
        let mut v = self.envelope(true, json!([choice]));
        if with_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    /// A chunk carrying one token's text delta (and logprobs when asked for).
    pub fn token_chunk(
        &self,
        index: usize,
        text: &str,
        lp: Option<(u32, &TokenLogprob)>,
        offset: usize,
        with_usage: bool,
    ) -> Value {
        let items: Vec<(u32, TokenLogprob)> =
            lp.iter().map(|(id, l)| (*id, (*l).clone())).collect();
        let lp = self.logprobs(&items, offset, !items.is_empty());
        let choice = match self.route {
            Route::Chat => json!({
                "index": index,
                "delta": { "content": text },
                "logprobs": lp,
                "finish_reason": null,
            }),
            Route::Completion => json!({
                "index": index,
                "text": text,
                "logprobs": lp,
                "finish_reason": null,
            }),
        };
        self.chunk(choice, with_usage)
    }

    /// The chunk that ends a choice with its `finish_reason`.
    pub fn finish_chunk(&self, index: usize, reason: &str, with_usage: bool) -> Value {
        let choice = match self.route {
            Route::Chat => json!({
                "index": index,
                "delta": {},
                "logprobs": null,
                "finish_reason": reason,
            }),
            Route::Completion => json!({
                "index": index,
                "text": "",
                "logprobs": null,
                "finish_reason": reason,
            }),
        };
        self.chunk(choice, with_usage)
    }

    /// The final usage-only chunk (`stream_options.include_usage`).
    pub fn usage_chunk(&self, usage: &Usage) -> Value {
        let mut v = self.envelope(true, json!([]));
        v["usage"] = usage_json(usage);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::AsciiCodec;

    fn fmt(route: Route) -> Format {
        Format {
            route,
            id: "x-1".into(),
            created: 1,
            model: "m".into(),
            codec: Arc::new(AsciiCodec),
        }
    }

    #[test]
    fn completion_logprobs_have_parallel_lists_and_offsets() {
        let lp = |l| TokenLogprob {
            logprob: l,
            top: vec![(33, l), (34, -5.0)],
        };
        // ids 33, 34 are 'A', 'B' in the ASCII codec.
        let v = fmt(Route::Completion)
            .completion_logprobs(&[(33, lp(-0.5)), (34, lp(f32::NEG_INFINITY))], 3);
        assert_eq!(v["tokens"], json!(["A", "B"]));
        assert_eq!(v["text_offset"], json!([3, 4]));
        assert_eq!(v["token_logprobs"][1], json!(-9999.0));
        assert_eq!(v["top_logprobs"][0]["B"], json!(-5.0));
    }

    #[test]
    fn chat_chunks_are_chunk_objects_with_null_usage_when_asked() {
        let f = fmt(Route::Chat);
        let c = f.token_chunk(2, "hi", None, 0, true);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["choices"][0]["index"], 2);
        assert_eq!(c["choices"][0]["delta"]["content"], "hi");
        assert!(c.get("usage").is_some_and(Value::is_null));
        assert!(f.start_chunk(0, false).is_some());
        assert!(fmt(Route::Completion).start_chunk(0, false).is_none());
    }
}
