//! Server-sent events of an OpenAI-style streaming response, decoded into the timings a
//! serving benchmark needs.
//!
//! [`SseDecoder`] turns lines into events (`data:` fields joined, comments and other fields
//! ignored, a blank line ends an event). [`StreamRecorder`] consumes the events with the time
//! each arrived: the first chunk carrying non-empty generated text (`choices[0].text` for
//! completions, `choices[0].delta.content` for chat) sets the time to first token, every
//! later one adds an inter-token gap, and a `usage` object (OpenAI's
//! `stream_options.include_usage`, or llama.cpp's final chunk) gives the exact token counts.
//! Without usage, each text chunk counts as one token, which is what servers that stream one
//! token per chunk send. Role-only chunks (chat's opening `{"role":"assistant","content":""}`)
//! carry no text and so do not count as a first token.

use serde_json::Value;

/// One decoded server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEvent {
    /// The event's `data` (several `data:` lines joined by `\n`).
    Data(String),
    /// The OpenAI end-of-stream marker `data: [DONE]`.
    Done,
}

/// Incremental SSE decoder: feed it lines, get events when they complete.
#[derive(Debug, Default)]
pub struct SseDecoder {
    data: Option<String>,
}

impl SseDecoder {
    /// A decoder with no partial event.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one line (without its line terminator; a trailing `\r` is stripped). Returns
    /// the event this line completes, if any.
    pub fn push_line(&mut self, line: &str) -> Option<SseEvent> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            return self.finish();
        }
        if line.starts_with(':') {
            return None; // comment / keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
        None
    }

    /// Ends the stream: returns a last event that was not followed by a blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let data = self.data.take()?;
        if data.trim() == "[DONE]" {
            Some(SseEvent::Done)
        } else {
            Some(SseEvent::Data(data))
        }
    }
}

/// Timings and counts of one streamed response, in seconds since the request was sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamRecorder {
    /// Time of the first chunk with generated text.
    pub first_token_s: Option<f64>,
    /// Time of the most recent chunk with generated text.
    pub last_token_s: Option<f64>,
    /// Gaps between consecutive text chunks (inter-token latencies).
    pub itl_s: Vec<f64>,
    /// Chunks that carried generated text.
    pub text_chunks: usize,
    /// `usage.completion_tokens`, when the server sent usage.
    pub usage_completion_tokens: Option<u64>,
    /// `usage.prompt_tokens`, when the server sent usage.
    pub usage_prompt_tokens: Option<u64>,
    /// `usage.prompt_tokens_details.cached_tokens`, when the server sent it.
    pub usage_cached_tokens: Option<u64>,
    /// The generated text, concatenated (multi-turn chats send it back as history).
    pub text: String,
    /// `[DONE]` was seen.
    pub done: bool,
}

fn chunk_text(v: &Value) -> Option<&str> {
    let choice = v.get("choices")?.get(0)?;
    choice
        .get("text")
        .and_then(Value::as_str)
        .or_else(|| choice.get("delta")?.get("content")?.as_str())
}

impl StreamRecorder {
    /// A recorder that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `event`, which arrived `at_s` seconds after the request was sent. A JSON
    /// `error` object, or data that is not JSON, is returned as an error message.
    pub fn record(&mut self, event: &SseEvent, at_s: f64) -> Result<(), String> {
        let data = match event {
            SseEvent::Done => {
                self.done = true;
                return Ok(());
            }
            SseEvent::Data(d) => d,
        };
        let v: Value =
            serde_json::from_str(data).map_err(|e| format!("stream event is not JSON ({e})"))?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            let msg = err.get("message").and_then(Value::as_str);
            return Err(format!(
                "server error: {}",
                msg.map_or_else(|| err.to_string(), String::from)
            ));
        }
        if let Some(text) = chunk_text(&v).filter(|t| !t.is_empty()) {
            match self.last_token_s {
                None => self.first_token_s = Some(at_s),
                Some(prev) => self.itl_s.push((at_s - prev).max(0.0)),
            }
            self.last_token_s = Some(at_s);
            self.text_chunks += 1;
            self.text.push_str(text);
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            if let Some(n) = u.get("completion_tokens").and_then(Value::as_u64) {
                self.usage_completion_tokens = Some(n);
            }
            if let Some(n) = u.get("prompt_tokens").and_then(Value::as_u64) {
                self.usage_prompt_tokens = Some(n);
            }
            let cached = u
                .get("prompt_tokens_details")
                .and_then(|d| d.get("cached_tokens"));
            if let Some(n) = cached.and_then(Value::as_u64) {
                self.usage_cached_tokens = Some(n);
            }
        }
        Ok(())
    }

    /// Output tokens: the server's count when it sent usage, else one per text chunk.
    pub fn output_tokens(&self) -> u64 {
        self.usage_completion_tokens
            .unwrap_or(self.text_chunks as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        let mut out: Vec<SseEvent> = text.split('\n').filter_map(|l| d.push_line(l)).collect();
        out.extend(d.finish());
        out
    }

    #[test]
    fn decoder_joins_data_lines_and_skips_comments_and_other_fields() {
        let ev =
            decode(": keep-alive\n\nevent: x\ndata: {\"a\":\ndata:1}\nid: 3\n\ndata: [DONE]\n\n");
        assert_eq!(
            ev,
            vec![SseEvent::Data("{\"a\":\n1}".into()), SseEvent::Done]
        );
    }

    #[test]
    fn decoder_handles_crlf_and_a_final_event_without_blank_line() {
        let ev = decode("data: {}\r\n\r\ndata: [DONE]");
        assert_eq!(ev, vec![SseEvent::Data("{}".into()), SseEvent::Done]);
        assert!(decode("\n\n:x\n").is_empty());
    }

    fn data(s: &str) -> SseEvent {
        SseEvent::Data(s.into())
    }

    #[test]
    fn chat_role_chunk_is_not_a_token_and_gaps_are_measured() {
        let mut r = StreamRecorder::new();
        let evs = [
            (
                data(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#),
                0.01,
            ),
            (data(r#"{"choices":[{"delta":{"content":"He"}}]}"#), 0.5),
            (data(r#"{"choices":[{"delta":{"content":"llo"}}]}"#), 0.6),
            (
                data(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#),
                0.65,
            ),
            (data(r#"{"choices":[{"delta":{"content":"!"}}]}"#), 0.9),
            (SseEvent::Done, 1.0),
        ];
        for (e, t) in &evs {
            r.record(e, *t).unwrap();
        }
        assert_eq!(r.first_token_s, Some(0.5));
        assert_eq!(r.text_chunks, 3);
        assert_eq!(r.output_tokens(), 3);
        assert_eq!(r.text, "Hello!");
        assert!(r.done);
        assert_eq!(r.itl_s.len(), 2);
        assert!((r.itl_s[0] - 0.1).abs() < 1e-12 && (r.itl_s[1] - 0.3).abs() < 1e-12);
    }

    #[test]
    fn usage_overrides_chunk_count_and_null_usage_is_ignored() {
        let mut r = StreamRecorder::new();
        r.record(&data(r#"{"choices":[{"text":"ab"}],"usage":null}"#), 0.2)
            .unwrap();
        r.record(
            &data(r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}"#),
            0.3,
        )
        .unwrap();
        assert_eq!(r.output_tokens(), 2);
        assert_eq!(r.usage_prompt_tokens, Some(7));
        assert_eq!(r.usage_cached_tokens, None);
        r.record(
            &data(r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":5}}}"#),
            0.4,
        )
        .unwrap();
        assert_eq!(r.usage_cached_tokens, Some(5));
        assert_eq!(r.first_token_s, Some(0.2));
    }

    #[test]
    fn error_events_and_garbage_are_errors() {
        let mut r = StreamRecorder::new();
        let e = r
            .record(&data(r#"{"error":{"message":"boom","type":"x"}}"#), 0.1)
            .unwrap_err();
        assert!(e.contains("boom"), "{e}");
        assert!(r.record(&data("not json"), 0.1).is_err());
        assert!(r
            .record(&data(r#"{"error":null,"choices":[{"text":"a"}]}"#), 0.1)
            .is_ok());
        assert_eq!(r.text_chunks, 1);
    }
}
