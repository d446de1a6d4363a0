//! The generation routes: `POST /v1/chat/completions` and `POST /v1/completions`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::ApiError;
use crate::format::{Format, Route};
use crate::generate::{self, collect, total_usage, Job};
use crate::params::{self, Body, GenParams, Prompt};
use crate::state::{unix_now, AppState, Model};
use crate::tenants::Identity;

/// The body bytes, or the OpenAI-shaped error for a refused body (413 over the limit).
pub(crate) fn body_bytes(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.config.max_body_bytes)
        } else {
            ApiError::invalid(
                None,
                format!("could not read the request body: {}", e.body_text()),
            )
        }
    })
}

/// The loaded model, or 503 while loading or draining.
pub(crate) fn ready_model(state: &AppState) -> Result<Arc<Model>, ApiError> {
    if state.draining() {
        return Err(ApiError::unavailable(
            "the server is shutting down",
            "shutting_down",
        ));
    }
    state
        .model()
        .cloned()
        .ok_or_else(|| ApiError::unavailable("the model is still loading", "model_loading"))
}

fn check_model(model: &Model, asked: Option<&str>) -> Result<(), ApiError> {
    match asked {
        Some(name) if name != model.name => Err(ApiError::model_not_found(name)),
        _ => Ok(()),
    }
}

/// The steps both generation routes take before they differ: read the body (size limit),
/// require a ready model, parse the JSON with the route's parser, fill program identity from
/// headers, and check the requested model name.
fn parse_request<T>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
    headers: &axum::http::HeaderMap,
    parse: fn(&Body) -> Result<(GenParams, T), ApiError>,
) -> Result<(Arc<Model>, GenParams, T), ApiError> {
    let bytes = body_bytes(state, body)?;
    let model = ready_model(state)?;
    let body = Body::parse(&bytes)?;
    let (mut p, rest) = parse(&body)?;
    params::program_headers(&mut p, headers)?;
    check_model(&model, p.model.as_deref())?;
    Ok((model, p, rest))
}

fn codec_err(param: &str) -> impl Fn(crate::codec::CodecError) -> ApiError + '_ {
    move |e| ApiError::invalid(Some(param.to_string()), e.0)
}

async fn run(
    state: Arc<AppState>,
    model: Arc<Model>,
    route: Route,
    prompts: Vec<Vec<u32>>,
    p: GenParams,
    start: Instant,
    who: Identity,
) -> Result<Response, ApiError> {
    let prompt_param = match route {
        Route::Chat => "messages",
        Route::Completion => "prompt",
    };
    let job = Job {
        prompts,
        params: &p,
        prompt_param,
        who,
    };
    let tracked = generate::submit(&state, &model, job, start).await?;
    let fmt = Format {
        route,
        id: state.new_id(match route {
            Route::Chat => "chatcmpl",
            Route::Completion => "cmpl",
        }),
        created: unix_now(),
        model: model.name.clone(),
        codec: model.codec.clone(),
    };
    if p.stream {
        return Ok(crate::sse::respond(
            tracked,
            fmt,
            p.include_usage,
            p.logprobs,
            state.config.keep_alive,
        ));
    }
    let mut outs = Vec::with_capacity(tracked.len());
    for t in tracked {
        outs.push(collect(t).await?);
    }
    let usage = total_usage(outs.iter().map(|o| (o.prompt_index, &o.usage)));
    Ok(Json(fmt.response(&outs, &usage, p.logprobs)).into_response())
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    who: Option<Extension<Identity>>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    let res = async {
        let (model, p, turns) = parse_request(&state, body, &headers, params::chat)?;
        let text = model
            .codec
            .render_chat(&turns, true)
            .map_err(codec_err("messages"))?;
        let ids = model
            .codec
            .encode(&text, true)
            .map_err(codec_err("messages"))?;
        let who = who.map(|w| w.0).unwrap_or_default();
        run(state.clone(), model, Route::Chat, vec![ids], p, start, who).await
    }
    .await;
    res.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    who: Option<Extension<Identity>>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    let res = async {
        let (model, p, prompt) = parse_request(&state, body, &headers, params::completion)?;
        let enc = |t: &str| model.codec.encode_prompt(t).map_err(codec_err("prompt"));
        let prompts = match prompt {
            Prompt::Text(t) => vec![enc(&t)?],
            Prompt::Texts(ts) => ts.iter().map(|t| enc(t)).collect::<Result<_, _>>()?,
            Prompt::Ids(ids) => vec![ids],
            Prompt::IdLists(l) => l,
        };
        let who = who.map(|w| w.0).unwrap_or_default();
        run(
            state.clone(),
            model,
            Route::Completion,
            prompts,
            p,
            start,
            who,
        )
        .await
    }
    .await;
    res.unwrap_or_else(IntoResponse::into_response)
}
