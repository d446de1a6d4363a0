//! Response shapes of the OpenAI routes against the fake model: streaming and not, usage and
//! cached tokens, finish reasons, n > 1, logprobs, metrics and the OpenAPI document.

mod common;

use common::{Opts, TestServer, MODEL};
use serde_json::{json, Value};

fn chat_body(content: &str, extra: Value) -> Value {
    let mut b = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
    });
    if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    b
}

fn comp_body(prompt: Value, extra: Value) -> Value {
    let mut b = json!({ "model": MODEL, "prompt": prompt, "temperature": 0 });
    if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_non_streaming_has_openai_shape_and_usage() {
    let ts = TestServer::start(Opts::default()).await;
    let r = ts
        .post(
            "/v1/chat/completions",
            &chat_body("hi", json!({"max_tokens": 6})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert!(v["id"].as_str().is_some_and(|s| s.starts_with("chatcmpl-")));
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["finish_reason"], "length");
    assert!(c["logprobs"].is_null());
    let text = c["message"]["content"].as_str().unwrap_or_default();
    // The ASCII codec renders "user: hi\nassistant: " = 20 tokens; each token is one char.
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"], 20);
    assert_eq!(u["completion_tokens"], 6);
    assert_eq!(u["total_tokens"], 26);
    assert_eq!(text.len(), 6, "{text:?}");
    assert!(u["prompt_tokens_details"]["cached_tokens"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_prompt_reports_cached_tokens() {
    let ts = TestServer::start(Opts::default()).await;
    let prompt = "The quick brown fox jumps over the lazy dog, again and again.";
    let body = comp_body(json!(prompt), json!({"max_tokens": 2}));
    let first = ts.post("/v1/completions", &body).await.json();
    let second = ts.post("/v1/completions", &body).await.json();
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        cached >= 16,
        "second request should hit the prefix cache: {second}"
    );
    assert!(cached <= prompt.len() as u64);
    assert_eq!(first["choices"][0]["text"], second["choices"][0]["text"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_completion_text_equals_non_streamed_and_ends_with_done() {
    let ts = TestServer::start(Opts::default()).await;
    let plain = ts
        .post(
            "/v1/completions",
            &comp_body(json!("Once upon"), json!({"max_tokens": 12})),
        )
        .await
        .json();
    let r = ts
        .post(
            "/v1/completions",
            &comp_body(
                json!("Once upon"),
                json!({"max_tokens": 12, "stream": true, "stream_options": {"include_usage": true}}),
            ),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks = r.sse_json();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, plain["choices"][0]["text"].as_str().unwrap_or("?"));
    for c in &chunks {
        assert_eq!(c["object"], "text_completion");
    }
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![&json!("length")]);
    let last = chunks.last().cloned().unwrap_or_default();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], plain["usage"]);
    // Every chunk but the last carries "usage": null when include_usage is on.
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c.get("usage").is_some_and(Value::is_null)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_chat_starts_with_role_and_has_no_usage_unless_asked() {
    let ts = TestServer::start(Opts::default()).await;
    let r = ts
        .post(
            "/v1/chat/completions",
            &chat_body("hello", json!({"max_tokens": 5, "stream": true})),
        )
        .await;
    assert_eq!(r.status, 200);
    let chunks = r.sse_json();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text.len(), 5);
    let last = chunks.last().cloned().unwrap_or_default();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(r.sse_data().last().map(String::as_str), Some("[DONE]"));
    let ids: Vec<&Value> = chunks.iter().map(|c| &c["id"]).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one id per stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_string_ends_with_stop_and_cuts_the_text() {
    let ts = TestServer::start(Opts::default()).await;
    let full = ts
        .post(
            "/v1/completions",
            &comp_body(json!("abc"), json!({"max_tokens": 24})),
        )
        .await
        .json();
    let text = full["choices"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(text.len(), 24);
    let stop = &text[6..8];
    let cut = text.find(stop).unwrap_or(0);
    for stream in [false, true] {
        let r = ts
            .post(
                "/v1/completions",
                &comp_body(
                    json!("abc"),
                    json!({"max_tokens": 24, "stop": [stop], "stream": stream}),
                ),
            )
            .await;
        let (got, finish) = if stream {
            let chunks = r.sse_json();
            let t: String = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["text"].as_str())
                .collect();
            let f = chunks
                .iter()
                .map(|c| c["choices"][0]["finish_reason"].clone())
                .find(|f| !f.is_null());
            (t, f.unwrap_or_default())
        } else {
            let v = r.json();
            (
                v["choices"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                v["choices"][0]["finish_reason"].clone(),
            )
        };
        assert_eq!(finish, "stop", "stream={stream}");
        assert_eq!(got, text[..cut], "stream={stream}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_and_prompt_lists_are_indexed_and_usage_counts_prompts_once() {
    let ts = TestServer::start(Opts::default()).await;
    let v = ts
        .post(
            "/v1/chat/completions",
            &chat_body("hi", json!({"max_tokens": 4, "n": 3})),
        )
        .await
        .json();
    let choices = v["choices"].as_array().cloned().unwrap_or_default();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(
            c["message"]["content"], choices[0]["message"]["content"],
            "greedy"
        );
    }
    assert_eq!(v["usage"]["prompt_tokens"], 20);
    assert_eq!(v["usage"]["completion_tokens"], 12);

    let r = ts
        .post(
            "/v1/completions",
            &comp_body(
                json!(["ab", "xyz"]),
                json!({"max_tokens": 3, "n": 2, "stream": true}),
            ),
        )
        .await;
    let chunks = r.sse_json();
    let mut idx: Vec<u64> = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .filter_map(|c| c["choices"][0]["index"].as_u64())
        .collect();
    idx.sort_unstable();
    assert_eq!(idx, vec![0, 1, 2, 3]);

    let v = ts
        .post(
            "/v1/completions",
            &comp_body(json!([[1, 2, 3], [4, 5]]), json!({"max_tokens": 2})),
        )
        .await
        .json();
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["choices"].as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_have_one_entry_per_token_with_alternatives() {
    let ts = TestServer::start(Opts::default()).await;
    let v = ts
        .post(
            "/v1/chat/completions",
            &chat_body(
                "hi",
                json!({"max_tokens": 4, "logprobs": true, "top_logprobs": 2}),
            ),
        )
        .await
        .json();
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(content.len(), 4);
    let text: String = content.iter().filter_map(|e| e["token"].as_str()).collect();
    assert_eq!(
        text,
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("?")
    );
    for e in &content {
        assert!(e["logprob"].as_f64().is_some_and(|l| l <= 0.0));
        assert_eq!(e["top_logprobs"].as_array().map(Vec::len), Some(2));
        assert!(e["bytes"].is_array());
    }

    let r = ts
        .post(
            "/v1/completions",
            &comp_body(
                json!("xy"),
                json!({"max_tokens": 3, "logprobs": 3, "stream": true}),
            ),
        )
        .await;
    let lps: Vec<Value> = r
        .sse_json()
        .iter()
        .map(|c| c["choices"][0]["logprobs"].clone())
        .filter(|l| !l.is_null())
        .collect();
    assert_eq!(lps.len(), 3);
    let offsets: Vec<u64> = lps
        .iter()
        .filter_map(|l| l["text_offset"][0].as_u64())
        .collect();
    assert_eq!(offsets, vec![0, 1, 2]);
    assert!(lps.iter().all(|l| l["top_logprobs"][0]
        .as_object()
        .is_some_and(|m| !m.is_empty())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_ignored() {
    let ts = TestServer::start(Opts::default()).await;
    let r = ts
        .post(
            "/v1/chat/completions",
            &chat_body(
                "hi",
                json!({"max_tokens": 2, "tools": [], "response_format": {"type": "text"}, "whatever": 1, "metadata": null}),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_metrics_and_openapi_routes_answer() {
    let ts = TestServer::start(Opts::default()).await;
    let m = ts.get("/v1/models").await.json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], MODEL);
    assert_eq!(
        ts.get(&format!("/v1/models/{MODEL}")).await.json()["id"],
        MODEL
    );
    ts.get("/v1/models/other").await.assert_error(404);

    for (_, path, example) in ferrum_server::openapi::request_examples() {
        let r = ts.post(&path, &example).await;
        assert_eq!(
            r.status,
            200,
            "example for {path} must be accepted: {}",
            r.text()
        );
    }
    let spec = ts.get("/openapi.json").await.json();
    assert_eq!(spec, ferrum_server::openapi::spec());
    for (method, path) in ferrum_server::routes::routes() {
        if method == axum::http::Method::GET && !path.contains('{') {
            assert_eq!(ts.get(path).await.status, 200, "{path}");
        }
    }

    let text = ts.get("/metrics").await.text();
    for needle in [
        "ferrum_requests_total{route=\"/v1/completions\",status=\"200\"}",
        "ferrum_requests_total{route=\"/v1/models/{model}\",status=\"404\"}",
        "ferrum_queue_depth 0",
        "ferrum_running_sequences 0",
        "ferrum_kv_blocks_free ",
        "ferrum_kv_blocks_used ",
        "ferrum_prefix_cache_hit_tokens_total ",
        "ferrum_time_to_first_token_seconds_bucket",
        "ferrum_inter_token_latency_seconds_count",
        "ferrum_e2e_request_latency_seconds_sum",
        "ferrum_prompt_tokens_total ",
        "ferrum_generation_tokens_total 16",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}
