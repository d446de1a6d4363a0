//! API errors in OpenAI's JSON shape, so every client library can surface them.
//!
//! `{"error": {"message", "type", "param", "code"}}` with a status that tells the client
//! whether to fix its request (4xx), retry later (429/503 with `Retry-After`), or report a
//! server fault (500, only for model failures, never for bad input).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ferrum_engine::request::SubmitError;
use serde_json::json;

/// One API error: the HTTP status plus OpenAI's error body fields.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status to answer with.
    pub status: StatusCode,
    /// Human-readable explanation.
    pub message: String,
    /// OpenAI error type (`invalid_request_error`, `authentication_error`, ...).
    pub kind: &'static str,
    /// The request parameter at fault, if one is.
    pub param: Option<String>,
    /// Machine-readable code (`model_not_found`, `context_length_exceeded`, ...).
    pub code: Option<&'static str>,
    /// Seconds the client should wait before retrying (adds a `Retry-After` header).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// A 400 for a bad parameter value, naming the parameter.
    pub fn invalid(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.into(),
            code: None,
            retry_after: None,
        }
    }

    /// A 400 for a parameter of the wrong JSON type or shape.
    pub fn bad_param(param: &str, message: impl std::fmt::Display) -> Self {
        Self::invalid(
            Some(param.to_string()),
            format!("invalid '{param}': {message}"),
        )
    }

    /// A 401: the API key is missing or wrong.
    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or incorrect API key; pass it as 'Authorization: Bearer <key>'"
                .into(),
            kind: "authentication_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after: None,
        }
    }

    /// A 404 for a model name this server does not serve.
    pub fn model_not_found(model: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("the model '{model}' does not exist; see GET /v1/models"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
            retry_after: None,
        }
    }

    /// A 404 for a path with no route.
    pub fn route_not_found(path: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no route for '{path}'"),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
            retry_after: None,
        }
    }

    /// A 405 for a known path with the wrong method.
    pub fn method_not_allowed() -> Self {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "method not allowed for this route".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("method_not_allowed"),
            retry_after: None,
        }
    }

    /// A 413: the body is over the configured limit (refused before parsing).
    pub fn too_large(limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("request body is larger than the limit of {limit} bytes"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
            retry_after: None,
        }
    }

    /// A 503 with `Retry-After`: overloaded, loading, or shutting down.
    pub fn unavailable(message: impl Into<String>, code: &'static str) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some(code),
            retry_after: Some(1),
        }
    }

    /// A 500: the model failed (never used for bad input).
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// Maps an engine submit refusal; `prompt_param` names the prompt field of this route.
    pub fn from_submit(e: &SubmitError, prompt_param: &str) -> Self {
        match e {
            SubmitError::QueueFull(_) => Self::unavailable(e.to_string(), "queue_full"),
            SubmitError::ShutDown => Self::unavailable(e.to_string(), "shutting_down"),
            SubmitError::TooLong { .. } | SubmitError::TooManyBlocks { .. } => ApiError {
                code: Some("context_length_exceeded"),
                ..Self::invalid(Some(prompt_param.to_string()), e.to_string())
            },
            SubmitError::EmptyPrompt | SubmitError::TokenOutOfRange { .. } => {
                Self::invalid(Some(prompt_param.to_string()), e.to_string())
            }
            SubmitError::ZeroMaxTokens => Self::invalid(Some("max_tokens".into()), e.to_string()),
            _ => Self::invalid(None, e.to_string()),
        }
    }

    /// The JSON body, also used for errors inside an SSE stream.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_full_is_retryable_503() {
        let e = ApiError::from_submit(&SubmitError::QueueFull(8), "prompt");
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let resp = e.into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn too_long_is_400_context_length_exceeded_on_the_prompt_param() {
        let e = ApiError::from_submit(
            &SubmitError::TooLong {
                prompt: 10,
                max_tokens: 5,
                max_model_len: 12,
            },
            "messages",
        );
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert_eq!(e.body()["error"]["param"], "messages");
    }
}
