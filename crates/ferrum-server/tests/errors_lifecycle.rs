//! Error statuses and shapes, readiness, overload, client disconnects, keep-alive and
//! graceful shutdown, against the fake model on a loopback port.

mod common;

use std::time::{Duration, Instant};

use common::{open_stream, read_rest, request, wait_stats, Opts, TestServer, MODEL};
use ferrum_server::ServerConfig;
use serde_json::json;

fn chat(content: &str, max_tokens: usize) -> serde_json::Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_400_in_openai_shape_never_500() {
    let ts = TestServer::start(Opts::default()).await;
    let raw = |body: &'static [u8]| request(ts.addr, "POST", "/v1/chat/completions", &[], body);
    raw(b"{not json").await.assert_error(400);
    raw(b"[1,2]").await.assert_error(400);
    raw(b"").await.assert_error(400);
    let cases = [
        (json!({"messages": "hi"}), "messages"),
        (json!({"model": MODEL}), "messages"),
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
            "temperature",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": -3}),
            "max_tokens",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "n": 100}),
            "n",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}),
            "top_logprobs",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "stop": {"a": 1}}),
            "stop",
        ),
        (
            json!({"messages": [{"role": "user", "content": "é"}]}),
            "messages",
        ),
    ];
    for (body, param) in cases {
        let e = ts
            .post("/v1/chat/completions", &body)
            .await
            .assert_error(400);
        assert_eq!(e["param"], param, "{body}");
        assert_eq!(e["type"], "invalid_request_error");
    }
    let e = ts
        .post("/v1/completions", &json!({"prompt": [1, 2, 999]}))
        .await
        .assert_error(400);
    assert_eq!(e["param"], "prompt");
    ts.post("/v1/completions", &json!({"prompt": ""}))
        .await
        .assert_error(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_longer_than_context_is_400_context_length_exceeded() {
    let ts = TestServer::start(Opts {
        max_model_len: 64,
        ..Opts::default()
    })
    .await;
    let long = "x".repeat(100);
    for body in [
        json!({"prompt": long}),
        json!({"prompt": long, "max_tokens": 4}),
        json!({"prompt": "short", "max_tokens": 200}),
    ] {
        let e = ts.post("/v1/completions", &body).await.assert_error(400);
        assert_eq!(e["code"], "context_length_exceeded", "{body}");
    }
    // Without max_tokens the default fills the context.
    let v = ts
        .post("/v1/completions", &json!({"prompt": "x".repeat(60)}))
        .await
        .json();
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_route_and_method_are_json_errors() {
    let ts = TestServer::start(Opts::default()).await;
    let mut body = chat("hi", 2);
    body["model"] = json!("gpt-9");
    let e = ts
        .post("/v1/chat/completions", &body)
        .await
        .assert_error(404);
    assert_eq!(e["code"], "model_not_found");
    ts.get("/v1/nothing").await.assert_error(404);
    ts.get("/nope").await.assert_error(404);
    ts.get("/v1/chat/completions").await.assert_error(405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_is_413_before_parsing() {
    let ts = TestServer::start(Opts {
        server: ServerConfig {
            max_body_bytes: 1024,
            ..Opts::default().server
        },
        ..Opts::default()
    })
    .await;
    // Not even JSON: a parser would say 400; the limit must answer first.
    let big = vec![b'{'; 4096];
    let r = request(ts.addr, "POST", "/v1/completions", &[], &big).await;
    r.assert_error(413);
    let ok = ts
        .post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 1}))
        .await;
    assert_eq!(ok.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_v1_routes_only() {
    let ts = TestServer::start(Opts {
        server: ServerConfig {
            api_key: Some("s3cret".into()),
            ..Opts::default().server
        },
        ..Opts::default()
    })
    .await;
    let body = chat("hi", 2).to_string();
    let post = |h: &'static [(&'static str, &'static str)]| {
        request(ts.addr, "POST", "/v1/chat/completions", h, body.as_bytes())
    };
    post(&[]).await.assert_error(401);
    post(&[("Authorization", "Bearer wrong")])
        .await
        .assert_error(401);
    post(&[("Authorization", "s3cret")]).await.assert_error(401);
    assert_eq!(
        post(&[("Authorization", "Bearer s3cret")]).await.status,
        200
    );
    request(ts.addr, "GET", "/v1/models", &[], b"")
        .await
        .assert_error(401);
    assert_eq!(ts.get("/health").await.status, 200);
    assert_eq!(ts.get("/metrics").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_until_the_model_is_loaded() {
    let mut ts = TestServer::start(Opts {
        load_model: false,
        ..Opts::default()
    })
    .await;
    let h = ts.get("/health").await;
    assert_eq!(h.status, 503);
    assert!(h.header("retry-after").is_some());
    ts.post("/v1/chat/completions", &chat("hi", 2))
        .await
        .assert_error(503);
    ts.get("/v1/models").await.assert_error(503);
    assert!(ts.get("/metrics").await.text().contains("ferrum_ready 0"));
    ts.load();
    assert_eq!(ts.get("/health").await.status, 200);
    assert_eq!(
        ts.post("/v1/chat/completions", &chat("hi", 2)).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_503_with_retry_after() {
    let ts = TestServer::start(Opts {
        step_delay: Duration::from_millis(20),
        max_running: 1,
        max_waiting: 1,
        ..Opts::default()
    })
    .await;
    let stream = json!({"prompt": "a", "max_tokens": 100, "stream": true});
    let (running, _) = open_stream(ts.addr, "/v1/completions", &stream).await;
    let addr = ts.addr;
    let s2 = stream.clone();
    let waiting = tokio::spawn(async move {
        request(
            addr,
            "POST",
            "/v1/completions",
            &[],
            s2.to_string().as_bytes(),
        )
        .await
    });
    let s = wait_stats(&ts, Duration::from_secs(5), |s| s.waiting == 1).await;
    assert_eq!((s.running, s.waiting), (1, 1));
    let r = ts
        .post("/v1/completions", &json!({"prompt": "b", "max_tokens": 2}))
        .await;
    let e = r.assert_error(503);
    assert_eq!(e["code"], "queue_full");
    assert_eq!(r.header("retry-after"), Some("1"));
    drop(running);
    waiting.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_stream_cancels_and_frees_kv() {
    let ts = TestServer::start(Opts {
        step_delay: Duration::from_millis(10),
        prefix_cache: false,
        ..Opts::default()
    })
    .await;
    let body = json!({"prompt": "tell me a long story", "max_tokens": 400, "stream": true});
    let (sock, _) = open_stream(ts.addr, "/v1/completions", &body).await;
    let s = ts.stats().await;
    assert_eq!(s.running, 1);
    assert!(s.blocks_used > 0);
    drop(sock);
    let s = wait_stats(&ts, Duration::from_secs(5), |s| {
        s.running == 0 && s.blocks_used == 0
    })
    .await;
    assert_eq!((s.running, s.waiting, s.blocks_used), (0, 0, 0), "{s:?}");
    assert!(
        s.decode_tokens < 300,
        "request was cancelled, not run to the end: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_stream_gets_keep_alive_comments() {
    let ts = TestServer::start(Opts {
        step_delay: Duration::from_millis(150),
        server: ServerConfig {
            keep_alive: Duration::from_millis(30),
            ..Opts::default().server
        },
        ..Opts::default()
    })
    .await;
    let r = ts
        .post(
            "/v1/completions",
            &json!({"prompt": "a", "max_tokens": 3, "stream": true}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains(": keep-alive"), "{}", r.text());
    assert_eq!(r.sse_data().last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_running_streams_then_exits_ok() {
    let mut ts = TestServer::start(Opts {
        step_delay: Duration::from_millis(10),
        ..Opts::default()
    })
    .await;
    let body = json!({"prompt": "abc", "max_tokens": 40, "stream": true});
    let (sock, seen) = open_stream(ts.addr, "/v1/completions", &body).await;
    ts.trigger_shutdown();
    let rest = read_rest(sock, seen.into_bytes()).await;
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    assert!(text.contains("data: [DONE]"));
    let res = ts.shutdown().await;
    assert!(res.is_ok(), "{res:?}");
    assert!(
        tokio::net::TcpStream::connect(ts.addr).await.is_err(),
        "stopped accepting"
    );
    assert!(ts.engine.stats_async().await.is_none(), "engine shut down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_wait_is_bounded_by_the_drain_timeout() {
    let mut ts = TestServer::start(Opts {
        step_delay: Duration::from_millis(20),
        server: ServerConfig {
            drain_timeout: Duration::from_millis(300),
            ..Opts::default().server
        },
        ..Opts::default()
    })
    .await;
    let body = json!({"prompt": "abc", "max_tokens": 400, "stream": true});
    let (_sock, _) = open_stream(ts.addr, "/v1/completions", &body).await;
    let t0 = Instant::now();
    let res = ts.shutdown().await;
    assert!(res.is_ok(), "{res:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_before_a_non_streamed_answer_cancels_and_frees_kv() {
    use tokio::io::AsyncWriteExt;
    let ts = TestServer::start(Opts {
        step_delay: Duration::from_millis(10),
        prefix_cache: false,
        ..Opts::default()
    })
    .await;
    let body = json!({"prompt": "tell me a long story", "max_tokens": 400}).to_string();
    let mut sock = tokio::net::TcpStream::connect(ts.addr)
        .await
        .expect("connect");
    let mut req = common::head("POST", "/v1/completions", &[], body.len()).into_bytes();
    req.extend_from_slice(body.as_bytes());
    sock.write_all(&req).await.expect("write");
    let s = wait_stats(&ts, Duration::from_secs(5), |s| s.running == 1).await;
    assert_eq!(s.running, 1);
    drop(sock);
    let s = wait_stats(&ts, Duration::from_secs(5), |s| {
        s.running == 0 && s.blocks_used == 0
    })
    .await;
    assert_eq!((s.running, s.blocks_used), (0, 0), "{s:?}");
    assert!(
        s.decode_tokens < 300,
        "request was cancelled, not run to the end: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_returns_the_load_error_and_stops_listening() {
    let config = ServerConfig {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ServerConfig::default()
    };
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        ferrum_server::run(config, || Err("no such model file".to_string())),
    )
    .await;
    let err = res.expect("run must not hang after a failed load").err();
    assert!(err.is_some_and(|e| e.to_string().contains("no such model file")));
}
