//! The OpenAPI 3 description served at `GET /openapi.json`.
//!
//! Hand-written JSON (no codegen dependency). Tests keep it true: its operations must equal
//! the router's route table, and every request example must be accepted by a live server.

use serde_json::{json, Value};

fn error_responses(codes: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for c in codes {
        let desc = match *c {
            "400" => "Invalid parameters, malformed JSON, or a prompt longer than the context.",
            "401" => "Missing or wrong API key (only when the server has one).",
            "404" => "Unknown model.",
            "413" => "Body over the size limit.",
            "503" => "Model loading, queue full, or shutting down; see Retry-After.",
            _ => "Error.",
        };
        m.insert(
            (*c).to_string(),
            json!({
                "description": desc,
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
            }),
        );
    }
    Value::Object(m)
}

fn generation_op(summary: &str, req: &str, resp: &str, example: Value) -> Value {
    let mut responses = error_responses(&["400", "401", "404", "413", "503"]);
    responses["200"] = json!({
        "description": "The completion, or with `stream: true` a `text/event-stream` of chunks ending in `data: [DONE]`.",
        "content": {
            "application/json": { "schema": { "$ref": format!("#/components/schemas/{resp}") } },
            "text/event-stream": { "schema": { "type": "string" } }
        }
    });
    json!({
        "post": {
            "summary": summary,
            "requestBody": {
                "required": true,
                "content": { "application/json": {
                    "schema": { "$ref": format!("#/components/schemas/{req}") },
                    "example": example
                } }
            },
            "responses": responses
        }
    })
}

fn common_params() -> serde_json::Map<String, Value> {
    let props = json!({
        "model": { "type": "string", "description": "Served model name; optional, must match when given." },
        "max_tokens": { "type": "integer", "minimum": 1 },
        "temperature": { "type": "number", "minimum": 0, "maximum": 2, "default": 1 },
        "top_p": { "type": "number", "exclusiveMinimum": 0, "maximum": 1 },
        "top_k": { "type": "integer", "minimum": -1, "description": "0 or -1: off." },
        "min_p": { "type": "number", "minimum": 0, "maximum": 1 },
        "seed": { "type": "integer" },
        "stop": { "oneOf": [ { "type": "string" }, { "type": "array", "items": { "type": "string" }, "maxItems": 16 } ] },
        "presence_penalty": { "type": "number", "minimum": -2, "maximum": 2 },
        "frequency_penalty": { "type": "number", "minimum": -2, "maximum": 2 },
        "repetition_penalty": { "type": "number", "exclusiveMinimum": 0 },
        "n": { "type": "integer", "minimum": 1, "maximum": crate::params::MAX_N },
        "stream": { "type": "boolean", "default": false },
        "stream_options": { "type": "object", "properties": { "include_usage": { "type": "boolean" } } },
        "user": { "type": "string" },
        "ignore_eos": { "type": "boolean", "default": false }
    });
    match props {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

fn schemas() -> Value {
    let mut chat = common_params();
    chat.insert(
        "messages".into(),
        json!({ "type": "array", "minItems": 1, "items": { "$ref": "#/components/schemas/ChatMessage" } }),
    );
    chat.insert(
        "max_completion_tokens".into(),
        json!({ "type": "integer", "minimum": 1 }),
    );
    chat.insert(
        "logprobs".into(),
        json!({ "type": "boolean", "default": false }),
    );
    chat.insert(
        "top_logprobs".into(),
        json!({ "type": "integer", "minimum": 0, "maximum": crate::params::MAX_TOP_LOGPROBS }),
    );
    let mut comp = common_params();
    comp.insert(
        "prompt".into(),
        json!({ "oneOf": [
            { "type": "string" },
            { "type": "array", "items": { "type": "string" } },
            { "type": "array", "items": { "type": "integer" } },
            { "type": "array", "items": { "type": "array", "items": { "type": "integer" } } }
        ] }),
    );
    comp.insert(
        "logprobs".into(),
        json!({ "type": "integer", "minimum": 0, "maximum": crate::params::MAX_TOP_LOGPROBS }),
    );
    let usage = json!({
        "type": "object",
        "properties": {
            "prompt_tokens": { "type": "integer" },
            "completion_tokens": { "type": "integer" },
            "total_tokens": { "type": "integer" },
            "prompt_tokens_details": { "type": "object", "properties": { "cached_tokens": { "type": "integer" } } }
        }
    });
    let finish = json!({ "type": "string", "enum": ["stop", "length"] });
    json!({
        "ChatMessage": {
            "type": "object",
            "required": ["role"],
            "properties": {
                "role": { "type": "string", "enum": ["system", "developer", "user", "assistant", "tool"] },
                "content": { "oneOf": [ { "type": "string" }, { "type": "array", "items": {
                    "type": "object", "properties": { "type": { "type": "string", "enum": ["text"] }, "text": { "type": "string" } }
                } } ] }
            }
        },
        "ChatCompletionRequest": { "type": "object", "required": ["messages"], "properties": chat },
        "CompletionRequest": { "type": "object", "required": ["prompt"], "properties": comp },
        "Usage": usage,
        "ChatCompletion": {
            "type": "object",
            "properties": {
                "id": { "type": "string" }, "object": { "type": "string", "enum": ["chat.completion"] },
                "created": { "type": "integer" }, "model": { "type": "string" },
                "choices": { "type": "array", "items": { "type": "object", "properties": {
                    "index": { "type": "integer" },
                    "message": { "type": "object", "properties": { "role": { "type": "string" }, "content": { "type": "string" } } },
                    "logprobs": { "type": "object", "nullable": true },
                    "finish_reason": finish
                } } },
                "usage": { "$ref": "#/components/schemas/Usage" }
            }
        },
        "Completion": {
            "type": "object",
            "properties": {
                "id": { "type": "string" }, "object": { "type": "string", "enum": ["text_completion"] },
                "created": { "type": "integer" }, "model": { "type": "string" },
                "choices": { "type": "array", "items": { "type": "object", "properties": {
                    "index": { "type": "integer" }, "text": { "type": "string" },
                    "logprobs": { "type": "object", "nullable": true },
                    "finish_reason": finish
                } } },
                "usage": { "$ref": "#/components/schemas/Usage" }
            }
        },
        "Model": {
            "type": "object",
            "properties": {
                "id": { "type": "string" }, "object": { "type": "string" }, "created": { "type": "integer" },
                "owned_by": { "type": "string" }, "max_model_len": { "type": "integer" }
            }
        },
        "Error": {
            "type": "object",
            "properties": { "error": { "type": "object", "properties": {
                "message": { "type": "string" }, "type": { "type": "string" },
                "param": { "type": "string", "nullable": true }, "code": { "type": "string", "nullable": true }
            } } }
        }
    })
}

/// The OpenAPI document.
pub fn spec() -> Value {
    let json_ok = |desc: &str, schema: Value| json!({ "description": desc, "content": { "application/json": { "schema": schema } } });
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Ferrum",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "OpenAI-compatible LLM inference API."
        },
        "components": {
            "schemas": schemas(),
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } }
        },
        "paths": {
            "/v1/chat/completions": generation_op(
                "Chat completion",
                "ChatCompletionRequest",
                "ChatCompletion",
                json!({ "messages": [ { "role": "user", "content": "Say hi" } ], "max_tokens": 8 }),
            ),
            "/v1/completions": generation_op(
                "Text completion",
                "CompletionRequest",
                "Completion",
                json!({ "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0 }),
            ),
            "/v1/models": { "get": {
                "summary": "List the served model",
                "responses": {
                    "200": json_ok("Model list.", json!({ "type": "object", "properties": {
                        "object": { "type": "string" },
                        "data": { "type": "array", "items": { "$ref": "#/components/schemas/Model" } }
                    } })),
                    "401": error_responses(&["401"])["401"], "503": error_responses(&["503"])["503"]
                }
            } },
            "/v1/models/{model}": { "get": {
                "summary": "Describe one model",
                "parameters": [ { "name": "model", "in": "path", "required": true, "schema": { "type": "string" } } ],
                "responses": {
                    "200": json_ok("The model.", json!({ "$ref": "#/components/schemas/Model" })),
                    "404": error_responses(&["404"])["404"], "503": error_responses(&["503"])["503"]
                }
            } },
            "/health": { "get": {
                "summary": "Readiness: 200 once the model is loaded",
                "responses": {
                    "200": json_ok("Ready.", json!({ "type": "object", "properties": { "status": { "type": "string" } } })),
                    "503": json_ok("Loading or draining.", json!({ "type": "object", "properties": { "status": { "type": "string" } } }))
                }
            } },
            "/metrics": { "get": {
                "summary": "Prometheus metrics",
                "responses": { "200": { "description": "Prometheus text exposition.",
                    "content": { "text/plain": { "schema": { "type": "string" } } } } }
            } },
            "/openapi.json": { "get": {
                "summary": "This document",
                "responses": { "200": json_ok("OpenAPI 3 document.", json!({ "type": "object" })) }
            } }
        }
    })
}

/// `(METHOD, path, example body)` for each operation in the spec that has a request example.
pub fn request_examples() -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    if let Some(paths) = spec()["paths"].as_object() {
        for (path, item) in paths {
            if let Some(ops) = item.as_object() {
                for (method, op) in ops {
                    let ex = &op["requestBody"]["content"]["application/json"]["example"];
                    if !ex.is_null() {
                        out.push((method.to_uppercase(), path.clone(), ex.clone()));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn spec_operations_equal_router_routes() {
        let spec = spec();
        let mut in_spec = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().into_iter().flatten() {
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                in_spec.insert((method.to_uppercase(), path.clone()));
            }
        }
        let in_router: BTreeSet<(String, String)> = crate::routes::routes()
            .into_iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(in_spec, in_router);
    }

    #[test]
    fn every_schema_reference_resolves() {
        let spec = spec();
        let text = spec.to_string();
        let schemas = &spec["components"]["schemas"];
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(schemas.get(name).is_some(), "dangling $ref {name}");
        }
    }

    #[test]
    fn generation_examples_exist_for_both_routes() {
        let paths: Vec<String> = request_examples().into_iter().map(|(_, p, _)| p).collect();
        assert!(paths.contains(&"/v1/chat/completions".to_string()));
        assert!(paths.contains(&"/v1/completions".to_string()));
    }
}
