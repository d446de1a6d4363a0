//! Tenants over HTTP: keys pick the tenant, the admin view needs an admin key, the prefix
//! cache is partitioned by tenant, per-tenant series appear on /metrics.

mod common;

use std::sync::Arc;

use common::*;
use ferrum_server::{ServerConfig, Tenants};
use serde_json::{json, Value};

const FILE: &str = r#"
admin_keys = ["root"]
[[tenant]]
name = "a"
weight = 2.0
api_keys = ["ka"]
[[tenant]]
name = "b"
api_keys = ["kb"]
"#;

async fn start() -> TestServer {
    let tenants = Tenants::parse(FILE).expect("valid tenants file");
    TestServer::start(Opts {
        server: ServerConfig {
            tenants: Some(Arc::new(tenants)),
            ..Opts::default().server
        },
        ..Opts::default()
    })
    .await
}

async fn complete(ts: &TestServer, key: &str, prompt: &str) -> Resp {
    let auth = format!("Bearer {key}");
    let body = json!({ "prompt": prompt, "max_tokens": 2 }).to_string();
    request(
        ts.addr,
        "POST",
        "/v1/completions",
        &[("Authorization", &auth)],
        body.as_bytes(),
    )
    .await
}

fn cached(r: &Resp) -> u64 {
    r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_prompt_hits_the_cache_only_within_its_tenant() {
    let ts = start().await;
    let prompt = "The quick brown fox jumps over the lazy dog, again and again.";
    assert_eq!(cached(&complete(&ts, "ka", prompt).await), 0);
    assert_eq!(
        cached(&complete(&ts, "kb", prompt).await),
        0,
        "no hit across tenants"
    );
    assert!(
        cached(&complete(&ts, "ka", prompt).await) >= 16,
        "own tenant hits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_select_tenants_and_admin_view_needs_an_admin_key() {
    let ts = start().await;
    complete(&ts, "nobody", "hi").await.assert_error(401);
    assert_eq!(complete(&ts, "ka", "hello").await.status, 200);
    assert_eq!(complete(&ts, "kb", "hello there").await.status, 200);
    let admin = |key: &'static str| async move {
        let h = [("Authorization", key)];
        request(ts.addr, "GET", "/v1/admin/tenants", &h, b"").await
    };
    admin("Bearer ka").await.assert_error(401);
    let view: Value = admin("Bearer root").await.json();
    let data = view["data"].as_array().cloned().unwrap_or_default();
    let a = data
        .iter()
        .find(|t| t["name"] == "a")
        .expect("tenant a listed");
    assert!(a["service"].as_f64().unwrap_or(0.0) > 0.0, "{view}");
    assert_eq!(a["weight_share"].as_f64(), Some(2.0 / 3.0));
    let metrics = ts.get("/metrics").await.text();
    assert!(metrics.contains("ferrum_tenant_service_tokens_total{tenant=\"b\"}"));
    assert!(metrics.contains("ferrum_tenant_time_to_first_token_seconds_count{tenant=\"a\"} 1"));
}
