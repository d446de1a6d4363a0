//! Agent programs: program identity from the body or headers, and `DELETE /v1/programs/{id}`.

mod common;

use common::{request, Opts, TestServer, MODEL};
use serde_json::json;

#[tokio::test]
async fn program_named_by_header_or_body_can_be_deleted_once() {
    let srv = TestServer::start(Opts::default()).await;
    let body = json!({ "model": MODEL, "prompt": "hello agent", "max_tokens": 2 });
    let hdrs = [("X-Program-Id", "agent-1"), ("X-Program-Tool", "search")];
    let r = request(
        srv.addr,
        "POST",
        "/v1/completions",
        &hdrs,
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body2 = json!({ "model": MODEL, "prompt": "hi", "max_tokens": 2, "program": "agent-2", "tool": "run" });
    assert_eq!(srv.post("/v1/completions", &body2).await.status, 200);
    for (id, known) in [("agent-1", true), ("agent-2", true), ("agent-1", false)] {
        let r = request(srv.addr, "DELETE", &format!("/v1/programs/{id}"), &[], b"").await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json(),
            json!({ "id": id, "object": "program", "deleted": known })
        );
    }
}

#[tokio::test]
async fn empty_program_id_is_a_400() {
    let srv = TestServer::start(Opts::default()).await;
    let body = json!({ "model": MODEL, "prompt": "x", "max_tokens": 1, "program": "" });
    let r = srv.post("/v1/completions", &body).await;
    assert_eq!(r.status, 400, "{}", r.text());
}
