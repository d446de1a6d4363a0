//! Test harness: a real server on an ephemeral loopback port over the engine's fake model,
//! and a tiny raw HTTP/1.1 client (so tests control every byte, including broken ones).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrum_engine::testing::FakeRunner;
use ferrum_engine::{Engine, EngineConfig, EngineError, EngineHandle, EngineStats, ModelRunner};
use ferrum_model::Batch;
use ferrum_server::{serve, AsciiCodec, Model, Server, ServerConfig, ASCII_VOCAB};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The fake model, optionally slowed down per forward pass (to hold requests open).
pub struct SlowRunner {
    inner: FakeRunner,
    delay: Duration,
}

impl ModelRunner for SlowRunner {
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn forward(&mut self, batch: &Batch) -> Result<&[f32], EngineError> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        self.inner.forward(batch)
    }
}

/// Knobs for one test server.
#[derive(Clone)]
pub struct Opts {
    pub step_delay: Duration,
    pub num_blocks: usize,
    pub max_model_len: usize,
    pub max_running: usize,
    pub max_waiting: usize,
    pub prefix_cache: bool,
    pub eos: Vec<u32>,
    pub server: ServerConfig,
    pub load_model: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            step_delay: Duration::ZERO,
            num_blocks: 128,
            max_model_len: 512,
            max_running: 16,
            max_waiting: 64,
            prefix_cache: true,
            eos: Vec::new(),
            server: ServerConfig {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..ServerConfig::default()
            },
            load_model: true,
        }
    }
}

pub const MODEL: &str = "fake-model";

pub struct TestServer {
    pub addr: SocketAddr,
    pub server: Server,
    pub engine: EngineHandle,
    model: Option<Model>,
    stop: Option<oneshot::Sender<()>>,
    pub join: Option<JoinHandle<std::io::Result<()>>>,
}

pub fn build_model(o: &Opts) -> (Model, EngineHandle) {
    let cfg = EngineConfig {
        num_blocks: o.num_blocks,
        max_model_len: o.max_model_len,
        max_running: o.max_running,
        max_waiting: o.max_waiting,
        enable_prefix_cache: o.prefix_cache,
        eos_token_ids: o.eos.clone(),
        ..EngineConfig::default()
    };
    let runner = SlowRunner {
        inner: FakeRunner::new(ASCII_VOCAB, cfg.num_blocks, cfg.block_size),
        delay: o.step_delay,
    };
    let kv = cfg.num_blocks * cfg.block_size;
    let mut cfg = cfg;
    let policy: Box<dyn ferrum_engine::SchedulingPolicy> = match &o.server.tenants {
        Some(t) => {
            cfg.cache_salt_by_tenant = true;
            cfg.public_prefixes = t.public_prefixes(&AsciiCodec).expect("prefixes encode");
            Box::new(ferrum_engine::FairPolicy::new(t.fair_config()))
        }
        None => Box::new(ferrum_engine::Fcfs),
    };
    let engine = match Engine::with_policy(runner, Arc::new(AsciiCodec), cfg, policy) {
        Ok(e) => EngineHandle::spawn(e),
        Err(e) => panic!("test engine config is valid: {e}"),
    };
    let model = Model {
        name: MODEL.into(),
        engine: engine.clone(),
        codec: Arc::new(AsciiCodec),
        max_model_len: o.max_model_len,
        kv_capacity_tokens: kv,
        shadow_sim: None,
    };
    (model, engine)
}

impl TestServer {
    pub async fn start(o: Opts) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let server = Server::new(o.server.clone());
        let (model, engine) = build_model(&o);
        let model = if o.load_model {
            server.set_model(model);
            None
        } else {
            Some(model)
        };
        let (tx, rx) = oneshot::channel();
        let s2 = server.clone();
        let join = tokio::spawn(serve(listener, s2, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            server,
            engine,
            model,
            stop: Some(tx),
            join: Some(join),
        }
    }

    /// Installs the model of a server started with `load_model: false`.
    pub fn load(&mut self) {
        if let Some(m) = self.model.take() {
            assert!(self.server.set_model(m));
        }
    }

    pub async fn stats(&self) -> EngineStats {
        self.engine.stats_async().await.expect("engine running")
    }

    /// Triggers graceful shutdown and returns serve()'s result.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.join.take() {
            Some(j) => j.await.expect("serve task"),
            None => Ok(()),
        }
    }

    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        request(self.addr, "POST", path, &[], body.to_string().as_bytes()).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        request(self.addr, "GET", path, &[], b"").await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// `data:` payloads of an SSE body, in order.
    pub fn sse_data(&self) -> Vec<String> {
        sse_data(&self.text())
    }
    /// SSE payloads except `[DONE]`, parsed.
    pub fn sse_json(&self) -> Vec<Value> {
        self.sse_data()
            .iter()
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).expect("SSE data is JSON"))
            .collect()
    }
    /// Asserts the OpenAI error shape and status; returns the `error` object.
    pub fn assert_error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        let v = self.json();
        let e = v["error"].clone();
        assert!(e["message"].is_string(), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
        e
    }
}

pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .flat_map(|ev| ev.lines())
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(str::to_string)
        .collect()
}

pub fn head(method: &str, path: &str, headers: &[(&str, &str)], len: usize) -> String {
    let mut s = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        s.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {len}\r\n"
        ));
    }
    s.push_str("\r\n");
    s
}

/// One request on a fresh connection; reads to EOF and decodes a chunked body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    let mut req = head(method, path, headers, body.len()).into_bytes();
    req.extend_from_slice(body);
    // The server may answer (413) and close before reading everything; that is fine.
    let _ = sock.write_all(&req).await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 8192];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "response timed out");
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(p) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..p]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = p + 2;
        let end = (start + size).min(b.len());
        out.extend_from_slice(&b[start..end]);
        b = &b[(end + 2).min(b.len())..];
    }
    out
}

/// Polls `cond` on engine stats until it holds or `timeout` passes.
pub async fn wait_stats(
    ts: &TestServer,
    timeout: Duration,
    cond: impl Fn(&EngineStats) -> bool,
) -> EngineStats {
    let t0 = Instant::now();
    loop {
        let s = ts.stats().await;
        if cond(&s) || t0.elapsed() > timeout {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens a streaming request and returns the socket after the response headers and at
/// least one `data:` event have arrived, plus what was read so far.
pub async fn open_stream(addr: SocketAddr, path: &str, body: &Value) -> (TcpStream, String) {
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    let b = body.to_string();
    let mut req = head("POST", path, &[], b.len()).into_bytes();
    req.extend_from_slice(b.as_bytes());
    sock.write_all(&req).await.expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let ok = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = sock.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("data:") {
                break;
            }
        }
    })
    .await;
    assert!(ok.is_ok(), "stream did not start");
    (sock, String::from_utf8_lossy(&seen).into_owned())
}

/// Reads the rest of an open stream to EOF.
pub async fn read_rest(mut sock: TcpStream, mut seen: Vec<u8>) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    seen
}
