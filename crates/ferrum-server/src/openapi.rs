//! The OpenAPI 3.1 description served at `GET /openapi.json`.
//!
//! Hand-written JSON (no codegen dependency). It is meant to be exact, so that generic tools
//! (Schemathesis in `scripts/schemathesis_test.sh`) can fuzz a live server against it:
//! request schemas mirror what `params.rs` accepts (a body they reject gets a 400), response
//! schemas describe the real bodies including streamed events, and every status a route can
//! answer is listed with OpenAI's error shape. Tests keep it true: its operations must equal
//! the router's route table, and every request example must be accepted by a live server.

use serde_json::{json, Map, Value};

use crate::params::{MAX_N, MAX_TOP_LOGPROBS};

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn nullable(schema: Value) -> Value {
    json!({ "anyOf": [schema, { "type": "null" }] })
}

fn retry_after() -> Value {
    json!({ "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": { "type": "integer", "minimum": 0 }
    } })
}

/// The error responses for `codes`, each with OpenAI's error body.
fn error_responses(codes: &[u16]) -> Map<String, Value> {
    let mut m = Map::new();
    for &c in codes {
        let desc = match c {
            400 => "Invalid parameters, malformed JSON, or a prompt longer than the context.",
            401 => "Missing or wrong API key (only when the server has one).",
            404 => "Unknown model.",
            413 => "Body over the size limit.",
            500 => "The model failed while generating (never caused by the request).",
            503 => "Model loading, queue full, or shutting down; see Retry-After.",
            _ => "Error.",
        };
        let mut resp = json!({
            "description": desc,
            "content": { "application/json": { "schema": schema_ref("Error") } }
        });
        if c == 503 {
            resp["headers"] = retry_after();
        }
        m.insert(c.to_string(), resp);
    }
    m
}

fn json_ok(desc: &str, schema: Value) -> Value {
    json!({ "description": desc, "content": { "application/json": { "schema": schema } } })
}

/// `security` for the `/v1/` routes: the bearer key is needed only when the server has one.
fn optional_bearer() -> Value {
    json!([{}, { "bearer": [] }])
}

fn generation_op(summary: &str, req: &str, resp: &str, chunk: &str, example: Value) -> Value {
    let mut responses = error_responses(&[400, 401, 404, 413, 500, 503]);
    // One server-sent event: a JSON chunk (or an error object if generation fails mid-stream),
    // and finally the literal `[DONE]`.
    let event = json!({
        "type": "object",
        "required": ["data"],
        "properties": { "data": { "type": "string" } },
        "if": { "properties": { "data": { "const": "[DONE]" } } },
        "else": { "properties": { "data": {
            "contentMediaType": "application/json",
            "contentSchema": { "anyOf": [schema_ref(chunk), schema_ref("Error")] }
        } } }
    });
    responses.insert(
        "200".into(),
        json!({
            "description": "The completion, or with `stream: true` a `text/event-stream` of chunks ending in `data: [DONE]`.",
            "content": {
                "application/json": { "schema": schema_ref(resp) },
                "text/event-stream": { "schema": event }
            }
        }),
    );
    json!({
        "post": {
            "summary": summary,
            "security": optional_bearer(),
            "requestBody": {
                "required": true,
                "content": { "application/json": {
                    "schema": schema_ref(req),
                    "example": example
                } }
            },
            "responses": responses
        }
    })
}

fn object(props: Value) -> Map<String, Value> {
    match props {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Request fields both generation routes read (see `params::common`).
fn common_params() -> Map<String, Value> {
    let number = |lo: f64, hi: f64| json!({ "type": "number", "minimum": lo, "maximum": hi });
    object(json!({
        "model": { "type": "string", "description": "Served model name; optional, must match when given." },
        "max_tokens": { "type": "integer", "minimum": 1, "maximum": u32::MAX },
        "temperature": { "type": "number", "minimum": 0, "maximum": 2, "default": 1 },
        "top_p": { "type": "number", "exclusiveMinimum": 0, "maximum": 1 },
        "top_k": { "type": "integer", "minimum": -1, "maximum": i64::MAX, "description": "0 or -1: off." },
        "min_p": number(0.0, 1.0),
        "seed": { "type": "integer", "minimum": i64::MIN, "maximum": i64::MAX },
        "stop": { "anyOf": [
            { "type": "string" },
            { "type": "array", "items": { "type": "string" }, "maxItems": 16 }
        ] },
        "presence_penalty": number(-2.0, 2.0),
        "frequency_penalty": number(-2.0, 2.0),
        "repetition_penalty": { "type": "number", "exclusiveMinimum": 0 },
        "n": { "type": "integer", "minimum": 1, "maximum": MAX_N },
        "stream": { "type": "boolean", "default": false },
        "stream_options": { "type": "object", "properties": { "include_usage": { "type": "boolean" } } },
        "user": { "type": "string" },
        "ignore_eos": { "type": "boolean", "default": false },
        "speculative": { "type": "string", "enum": ["off", "ngram", "suffix", "draft"] },
        "program": { "type": "string", "minLength": 1, "maxLength": 256,
            "description": "Agent program id (or header X-Program-Id): its KV may be kept between turns." },
        "tool": { "type": "string", "minLength": 1, "maxLength": 256,
            "description": "Tool the program waits on after this turn (or header X-Program-Tool)." }
    }))
}

/// The server reads `null` as "not given", so every optional field also accepts it.
fn or_null(props: Map<String, Value>) -> Map<String, Value> {
    props.into_iter().map(|(k, v)| (k, nullable(v))).collect()
}

fn request_schemas() -> (Value, Value, Value) {
    let mut chat = common_params();
    chat.insert(
        "max_completion_tokens".into(),
        json!({ "type": "integer", "minimum": 1, "maximum": u32::MAX }),
    );
    chat.insert(
        "logprobs".into(),
        json!({ "type": "boolean", "default": false }),
    );
    chat.insert(
        "top_logprobs".into(),
        json!({ "type": "integer", "minimum": 0, "maximum": MAX_TOP_LOGPROBS,
                "description": "Needs `logprobs: true` when above 0." }),
    );
    let mut chat = or_null(chat);
    chat.insert(
        "messages".into(),
        json!({ "type": "array", "minItems": 1, "items": schema_ref("ChatMessage") }),
    );
    let mut comp = or_null(common_params());
    let token = json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX });
    comp.insert(
        "prompt".into(),
        json!({ "anyOf": [
            { "type": "string" },
            { "type": "array", "minItems": 1, "items": { "type": "string" } },
            { "type": "array", "minItems": 1, "items": token },
            { "type": "array", "minItems": 1, "items": { "type": "array", "minItems": 1, "items": token } }
        ] }),
    );
    comp.insert(
        "logprobs".into(),
        nullable(json!({ "type": "integer", "minimum": 0, "maximum": MAX_TOP_LOGPROBS })),
    );
    let message = json!({
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": { "type": "string", "enum": ["system", "developer", "user", "assistant", "tool"] },
            "content": { "anyOf": [
                { "type": "string" },
                { "type": "null" },
                { "type": "array", "items": {
                    "type": "object",
                    "required": ["type", "text"],
                    "properties": {
                        "type": { "type": "string", "enum": ["text"] },
                        "text": { "type": "string" }
                    }
                } }
            ] }
        }
    });
    (
        message,
        json!({
            "type": "object",
            "required": ["messages"],
            "properties": chat,
            // `top_logprobs` above 0 needs `logprobs: true`.
            "if": {
                "required": ["top_logprobs"],
                "properties": { "top_logprobs": { "type": "integer", "minimum": 1 } }
            },
            "then": { "required": ["logprobs"], "properties": { "logprobs": { "const": true } } }
        }),
        json!({ "type": "object", "required": ["prompt"], "properties": comp }),
    )
}

/// Response schemas, matching `format.rs` field for field.
fn response_schemas() -> Map<String, Value> {
    let finish = json!({ "type": "string", "enum": ["stop", "length"] });
    let envelope = |object: &str, choice: Value, usage_required: bool| {
        let mut required = vec!["id", "object", "created", "model", "choices"];
        if usage_required {
            required.push("usage");
        }
        let usage = if usage_required {
            schema_ref("Usage")
        } else {
            nullable(schema_ref("Usage"))
        };
        json!({
            "type": "object",
            "required": required,
            "properties": {
                "id": { "type": "string" },
                "object": { "const": object },
                "created": { "type": "integer", "minimum": 0 },
                "model": { "type": "string" },
                "system_fingerprint": { "type": "null" },
                "choices": { "type": "array", "items": choice },
                "usage": usage
            }
        })
    };
    let chat_lp = nullable(schema_ref("ChatLogprobs"));
    let comp_lp = nullable(schema_ref("CompletionLogprobs"));
    let index = json!({ "type": "integer", "minimum": 0 });
    let chat_choice = json!({
        "type": "object",
        "required": ["index", "message", "logprobs", "finish_reason"],
        "properties": {
            "index": index,
            "message": {
                "type": "object",
                "required": ["role", "content"],
                "properties": { "role": { "const": "assistant" }, "content": { "type": "string" } }
            },
            "logprobs": chat_lp,
            "finish_reason": finish
        }
    });
    let chat_chunk_choice = json!({
        "type": "object",
        "required": ["index", "delta", "logprobs", "finish_reason"],
        "properties": {
            "index": index,
            "delta": {
                "type": "object",
                "properties": { "role": { "const": "assistant" }, "content": { "type": "string" } }
            },
            "logprobs": chat_lp,
            "finish_reason": nullable(finish.clone())
        }
    });
    let comp_choice = |finish: Value| {
        json!({
            "type": "object",
            "required": ["index", "text", "logprobs", "finish_reason"],
            "properties": {
                "index": index,
                "text": { "type": "string" },
                "logprobs": comp_lp,
                "finish_reason": finish
            }
        })
    };
    let count = json!({ "type": "integer", "minimum": 0 });
    let token_entry = json!({
        "type": "object",
        "required": ["token", "logprob", "bytes"],
        "properties": {
            "token": { "type": "string" },
            "logprob": { "type": "number", "maximum": 0 },
            "bytes": { "type": "array", "items": { "type": "integer", "minimum": 0, "maximum": 255 } }
        }
    });
    let mut chat_entry = token_entry.clone();
    chat_entry["required"] = json!(["token", "logprob", "bytes", "top_logprobs"]);
    chat_entry["properties"]["top_logprobs"] = json!({ "type": "array", "items": token_entry });
    object(json!({
        "Usage": {
            "type": "object",
            "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
            "properties": {
                "prompt_tokens": count,
                "completion_tokens": count,
                "total_tokens": count,
                "prompt_tokens_details": {
                    "type": "object",
                    "properties": { "cached_tokens": count }
                }
            }
        },
        "ChatLogprobs": {
            "type": "object",
            "required": ["content"],
            "properties": { "content": { "type": "array", "items": chat_entry } }
        },
        "CompletionLogprobs": {
            "type": "object",
            "required": ["tokens", "token_logprobs", "top_logprobs", "text_offset"],
            "properties": {
                "tokens": { "type": "array", "items": { "type": "string" } },
                "token_logprobs": { "type": "array", "items": { "type": "number", "maximum": 0 } },
                "top_logprobs": { "type": "array", "items": {
                    "type": "object", "additionalProperties": { "type": "number", "maximum": 0 }
                } },
                "text_offset": { "type": "array", "items": count }
            }
        },
        "ChatCompletion": envelope("chat.completion", chat_choice, true),
        "ChatCompletionChunk": envelope("chat.completion.chunk", chat_chunk_choice, false),
        "Completion": envelope("text_completion", comp_choice(finish.clone()), true),
        "CompletionChunk": envelope("text_completion", comp_choice(nullable(finish)), false),
        "Model": {
            "type": "object",
            "required": ["id", "object", "created", "owned_by"],
            "properties": {
                "id": { "type": "string" }, "object": { "const": "model" },
                "created": { "type": "integer", "minimum": 0 },
                "owned_by": { "type": "string" }, "max_model_len": count
            }
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": { "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": { "type": "string" },
                    "type": { "type": "string" },
                    "param": { "type": ["string", "null"] },
                    "code": { "type": ["string", "null"] }
                }
            } }
        }
    }))
}

fn schemas() -> Value {
    let (message, chat, comp) = request_schemas();
    let mut all = response_schemas();
    all.insert("ChatMessage".into(), message);
    all.insert("ChatCompletionRequest".into(), chat);
    all.insert("CompletionRequest".into(), comp);
    Value::Object(all)
}

fn with_errors(mut responses: Map<String, Value>, codes: &[u16]) -> Value {
    responses.extend(error_responses(codes));
    Value::Object(responses)
}

/// The OpenAPI document.
pub fn spec() -> Value {
    let status = json!({ "type": "object", "required": ["status"], "properties": {
        "status": { "type": "string", "enum": ["ok", "loading", "draining"] }
    } });
    let mut health_503 = json_ok("Loading or draining.", status.clone());
    health_503["headers"] = retry_after();
    let mut doc = json!({
        "openapi": "3.1.0",
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
                "ChatCompletionChunk",
                json!({ "messages": [ { "role": "user", "content": "Say hi" } ], "max_tokens": 8 }),
            ),
            "/v1/completions": generation_op(
                "Text completion",
                "CompletionRequest",
                "Completion",
                "CompletionChunk",
                json!({ "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0 }),
            ),
            "/v1/models": { "get": {
                "summary": "List the served model",
                "security": optional_bearer(),
                "responses": with_errors(object(json!({
                    "200": json_ok("Model list.", json!({
                        "type": "object",
                        "required": ["object", "data"],
                        "properties": {
                            "object": { "const": "list" },
                            "data": { "type": "array", "items": schema_ref("Model") }
                        }
                    }))
                })), &[401, 503])
            } },
            "/v1/models/{model}": { "get": {
                "summary": "Describe one model",
                "security": optional_bearer(),
                "parameters": [ { "name": "model", "in": "path", "required": true, "schema": { "type": "string" } } ],
                "responses": with_errors(object(json!({
                    "200": json_ok("The model.", schema_ref("Model"))
                })), &[401, 404, 503])
            } },
            "/health": { "get": {
                "summary": "Readiness: 200 once the model is loaded",
                "responses": { "200": json_ok("Ready.", status), "503": health_503 }
            } },
            "/metrics": { "get": {
                "summary": "Prometheus metrics",
                "responses": { "200": { "description": "Prometheus text exposition.",
                    "content": { "text/plain": { "schema": { "type": "string" } } } } }
            } },
            "/v1/admin/tenants": { "get": {
                "summary": "Per-tenant fairness counters and shares (admin key when keys are set)",
                "security": optional_bearer(),
                "responses": with_errors(
                    [("200".to_string(), json_ok("Tenants, by name.", json!({
                        "type": "object",
                        "required": ["object", "data"],
                        "properties": {
                            "object": { "const": "list" },
                            "data": { "type": "array", "items": { "type": "object",
                                "required": ["name", "weight", "service", "share", "weight_share", "virtual_counter", "waiting", "running", "kv_blocks"],
                                "properties": {
                                    "name": { "type": "string" },
                                    "weight": { "type": "number" },
                                    "virtual_counter": { "type": "number" },
                                    "service": { "type": "number" },
                                    "share": { "type": "number" },
                                    "weight_share": { "type": "number" },
                                    "prompt_tokens": { "type": "integer" },
                                    "generated_tokens": { "type": "integer" },
                                    "waiting": { "type": "integer" },
                                    "running": { "type": "integer" },
                                    "kv_blocks": { "type": "integer" },
                                    "users": { "type": "integer" }
                                } } }
                        }
                    })))].into_iter().collect(),
                    &[401, 503],
                )
            } },
            "/openapi.json": { "get": {
                "summary": "This document",
                "responses": { "200": json_ok("OpenAPI 3.1 document.", json!({ "type": "object" })) }
            } }
        }
    });
    doc["paths"]["/v1/programs/{program}"] = program_path();
    doc
}

/// `DELETE /v1/programs/{program}` (built apart: one `json!` has a recursion limit).
fn program_path() -> Value {
    json!({ "delete": {
        "summary": "End an agent program, releasing its retained KV",
        "security": optional_bearer(),
        "parameters": [ { "name": "program", "in": "path", "required": true, "schema": { "type": "string" } } ],
        "responses": with_errors(object(json!({
            "200": json_ok("Whether the program was known.", json!({
                "type": "object",
                "required": ["id", "object", "deleted"],
                "properties": {
                    "id": { "type": "string" },
                    "object": { "const": "program" },
                    "deleted": { "type": "boolean" }
                }
            }))
        })), &[401, 503])
    } })
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
