//! The router: one route table (also checked against the OpenAPI spec), auth and request
//! counting middleware, JSON 404/405 fallbacks, and the small read-only routes.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::json;

use crate::api::{chat_completions, completions, ready_model};
use crate::error::ApiError;
use crate::state::AppState;
use crate::tenants::Identity;

type Shared = Arc<AppState>;

fn table() -> Vec<(Method, &'static str, MethodRouter<Shared>)> {
    vec![
        (Method::POST, "/v1/chat/completions", post(chat_completions)),
        (Method::POST, "/v1/completions", post(completions)),
        (Method::GET, "/v1/models", get(list_models)),
        (Method::GET, "/v1/models/{model}", get(get_model)),
        (Method::GET, "/health", get(health)),
        (Method::GET, "/metrics", get(metrics)),
        (
            Method::GET,
            "/v1/admin/tenants",
            get(crate::tenants::admin_tenants),
        ),
        (Method::GET, "/openapi.json", get(openapi)),
        (
            Method::DELETE,
            "/v1/programs/{program}",
            axum::routing::delete(delete_program),
        ),
    ]
}

/// Every `(method, path)` the router serves, in axum's `{param}` path syntax; the OpenAPI
/// test compares this list with the spec.
pub fn routes() -> Vec<(Method, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The full application router over `state`.
pub fn router(state: Shared) -> Router {
    let mut r = Router::new();
    for (_, path, mr) in table() {
        r = r.route(path, mr);
    }
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth_and_count,
        ))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

/// Key comparison without an early exit, so timing does not reveal the matching prefix.
pub(crate) fn same_key(key: &str, given: &str) -> bool {
    given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Who may call a `/v1/` route: `None` = refused. Without tenants, the `--api-key` (if any)
/// admits everything; with tenants, `/v1/admin/*` needs an admin key (or `--api-key`) and
/// other routes a tenant key (or an admin key, as tenant-less requests).
fn identify(state: &AppState, req: &Request) -> Option<Identity> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let user = req
        .headers()
        .get(crate::tenants::USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let master = |g: &str| {
        state
            .config
            .api_key
            .as_deref()
            .is_some_and(|k| same_key(k, g))
    };
    let Some(tenants) = &state.config.tenants else {
        let ok = state.config.api_key.is_none() || given.is_some_and(master);
        return ok.then_some(Identity { tenant: None, user });
    };
    let given = given?;
    let admin = master(given) || tenants.is_admin(given);
    if req.uri().path().starts_with("/v1/admin/") {
        return admin.then_some(Identity { tenant: None, user });
    }
    match tenants.tenant_of(given) {
        Some(t) => Some(Identity {
            tenant: Some(t.to_string()),
            user,
        }),
        None => admin.then_some(Identity { tenant: None, user }),
    }
}

async fn auth_and_count(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let mut req = req;
    let resp = if !req.uri().path().starts_with("/v1/") {
        next.run(req).await
    } else if let Some(id) = identify(&state, &req) {
        req.extensions_mut().insert(id);
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    };
    state.metrics.count_request(&route, resp.status().as_u16());
    resp
}

async fn not_found(req: Request) -> Response {
    ApiError::route_not_found(req.uri().path()).into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::method_not_allowed().into_response()
}

/// `GET /health`: 200 once the model is loaded, 503 while loading or draining.
async fn health(State(state): State<Shared>) -> Response {
    let status = if state.draining() {
        "draining"
    } else if state.model().is_none() {
        "loading"
    } else {
        return Json(json!({ "status": "ok" })).into_response();
    };
    let mut resp = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": status })),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(1u32));
    resp
}

fn model_card(state: &AppState, name: &str, max_model_len: usize) -> serde_json::Value {
    json!({
        "id": name,
        "object": "model",
        "created": state.started,
        "owned_by": "ferrum",
        "max_model_len": max_model_len,
    })
}

/// `GET /v1/models`.
async fn list_models(State(state): State<Shared>) -> Response {
    match ready_model(&state) {
        Ok(m) => Json(json!({
            "object": "list",
            "data": [model_card(&state, &m.name, m.max_model_len)],
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/models/{model}`.
async fn get_model(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    match ready_model(&state) {
        Ok(m) if m.name == name => {
            Json(model_card(&state, &m.name, m.max_model_len)).into_response()
        }
        Ok(_) => ApiError::model_not_found(&name).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /v1/programs/{program}`: ends an agent program, releasing its retained KV.
async fn delete_program(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let model = match ready_model(&state) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    state.metrics.programs.forget(&id);
    match model.engine.release_program_async(id.clone()).await {
        Some(deleted) => {
            Json(json!({ "id": id, "object": "program", "deleted": deleted })).into_response()
        }
        None => ApiError::unavailable("the engine has stopped", "engine_stopped").into_response(),
    }
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(state): State<Shared>) -> Response {
    let (stats, tenants) = match state.model() {
        Some(m) => (m.engine.stats_async().await, m.engine.tenants_async().await),
        None => (None, None),
    };
    let ready = state.model().is_some() && !state.draining();
    let mut text = state.metrics.render(stats.as_ref(), ready);
    state
        .metrics
        .tenants
        .render(&mut text, tenants.as_deref().unwrap_or_default());
    state.metrics.programs.render(&mut text);
    if let Some(sim) = state.metrics.programs.shadow_sim() {
        // Shadow mode: a replay of the newest turns starts in the background (within its
        // duty cycle); this answer carries the latest finished prediction.
        sim.refresh_in_background();
        crate::shadow_sim::render_sim(sim, &mut text);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /openapi.json`.
async fn openapi() -> Response {
    Json(crate::openapi::spec()).into_response()
}
