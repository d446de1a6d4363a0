//! Server-sent-event streaming of one or more choices.
//!
//! The choices' event streams are merged; each engine event becomes at most one chunk, and
//! after the last choice ends come the optional usage chunk and `data: [DONE]`. Keep-alive
//! comments flow while nothing else does (a request waiting in the queue). If the client
//! disconnects, hyper drops the body stream, which drops every [`Tracked`] receiver and so
//! cancels the requests in the engine.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, select_all, BoxStream, StreamExt};

use ferrum_engine::{Event, Usage};

use crate::format::Format;
use crate::generate::{finish_reason, total_usage, Tracked};

type Item = (usize, usize, Event);

struct State {
    merged: stream::SelectAll<BoxStream<'static, Item>>,
    fmt: Format,
    include_usage: bool,
    logprobs: bool,
    pending: VecDeque<SseEvent>,
    /// Text offset per choice (completions logprobs).
    offsets: Vec<usize>,
    usages: Vec<(usize, Usage)>,
    done: bool,
}

fn data(v: &serde_json::Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

impl State {
    fn handle(&mut self, index: usize, prompt_index: usize, ev: Event) {
        match ev {
            Event::Token { id, text, logprob } => {
                let lp = if self.logprobs {
                    logprob.as_ref().map(|l| (id, l))
                } else {
                    None
                };
                if text.is_empty() && lp.is_none() {
                    return;
                }
                let offset = self.offsets.get(index).copied().unwrap_or(0);
                let chunk = self
                    .fmt
                    .token_chunk(index, &text, lp, offset, self.include_usage);
                if let Some(o) = self.offsets.get_mut(index) {
                    *o += text.len();
                }
                self.pending.push_back(data(&chunk));
            }
            Event::Finished { reason, usage } => {
                self.usages.push((prompt_index, usage));
                match finish_reason(&reason) {
                    Ok(r) => {
                        let chunk = self.fmt.finish_chunk(index, r, self.include_usage);
                        self.pending.push_back(data(&chunk));
                    }
                    Err(e) => self.pending.push_back(data(&e.body())),
                }
            }
        }
    }

    fn end(&mut self) {
        if self.include_usage {
            let u = total_usage(self.usages.iter().map(|(p, u)| (*p, u)));
            self.pending.push_back(data(&self.fmt.usage_chunk(&u)));
        }
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.done = true;
    }
}

/// The SSE response for `tracked` choices.
pub(crate) fn respond(
    tracked: Vec<Tracked>,
    fmt: Format,
    include_usage: bool,
    logprobs: bool,
    keep_alive: Duration,
) -> Response {
    let n = tracked.len();
    let mut pending = VecDeque::new();
    for t in &tracked {
        if let Some(c) = fmt.start_chunk(t.index, include_usage) {
            pending.push_back(data(&c));
        }
    }
    let streams = tracked.into_iter().map(|t| {
        stream::unfold(t, |mut t| async move {
            let ev = t.next().await?;
            Some(((t.index, t.prompt_index, ev), t))
        })
        .boxed()
    });
    let state = State {
        merged: select_all(streams),
        fmt,
        include_usage,
        logprobs,
        pending,
        offsets: vec![0; n],
        usages: Vec::with_capacity(n),
        done: false,
    };
    let body = stream::unfold(state, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(ev), st));
            }
            if st.done {
                return None;
            }
            match st.merged.next().await {
                Some((i, p, ev)) => st.handle(i, p, ev),
                None => st.end(),
            }
        }
    });
    Sse::new(body)
        .keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
        .into_response()
}
