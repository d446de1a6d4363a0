//! Request-body parsing for the OpenAI routes, field by field.
//!
//! Bodies are parsed as a JSON object first and each known field is then read on its own, so
//! a wrong type names the exact parameter in the 400 (`param`), unknown fields are ignored
//! (OpenAI clients send many we do not use), and `null` means "not given".

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use ferrum_model::sampler::SamplingParams;

use crate::codec::ChatTurn;
use crate::error::ApiError;

/// Most choices one request may ask for with `n`.
pub const MAX_N: usize = 16;
/// Most `top_logprobs` alternatives per token.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A parsed JSON object body with typed, parameter-naming field access.
pub(crate) struct Body {
    obj: Map<String, Value>,
}

impl Body {
    /// Parses raw bytes; malformed JSON or a non-object is a 400.
    pub fn parse(bytes: &[u8]) -> Result<Body, ApiError> {
        let mut v: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::invalid(None, format!("request body is not valid JSON: {e}")))?;
        integral_floats_to_ints(&mut v);
        match v {
            Value::Object(obj) => Ok(Body { obj }),
            _ => Err(ApiError::invalid(
                None,
                "request body must be a JSON object",
            )),
        }
    }

    /// Field `name` as `T`; absent or `null` is `None`, a wrong type is a 400 naming it.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ApiError> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => T::deserialize(v)
                .map(Some)
                .map_err(|e| ApiError::bad_param(name, e)),
        }
    }
}

/// Rewrites every float with no fractional part (`1.0`) as an integer, in place. JSON (and
/// JSON Schema) make no difference between the two, and clients written in languages without
/// an integer type send them, so `"n": 2.0` must mean `2`. Float fields still accept integers.
fn integral_floats_to_ints(v: &mut Value) {
    // Only where floats are exact: a bigger integer literal that overflowed `i64`/`u64` into
    // a float must stay out of range rather than round onto a valid value.
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() <= EXACT {
                    *v = Value::from(f as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_ints),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_to_ints),
        _ => {}
    }
}

/// `stop`: one string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Parameters shared by chat and text completions.
#[derive(Debug, Clone)]
pub(crate) struct GenParams {
    /// Requested model name, if any.
    pub model: Option<String>,
    /// Completion-token limit (`None`: up to the context).
    pub max_tokens: Option<usize>,
    /// Choices per prompt.
    pub n: usize,
    /// Sampler settings (`top_logprobs` filled in by the route).
    pub sampling: SamplingParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Whether to attach logprobs.
    pub logprobs: bool,
    /// Stream as server-sent events.
    pub stream: bool,
    /// Send a final usage chunk when streaming.
    pub include_usage: bool,
    /// End-user id.
    pub user: Option<String>,
    /// Keep going past EOS.
    pub ignore_eos: bool,
    /// Speculative decoding override (`None`: the server's `--speculative`).
    pub speculative: Option<ferrum_engine::SpecMethod>,
    /// Agent program id (`program` field or `X-Program-Id` header): its KV may be retained
    /// between turns.
    pub program: Option<String>,
    /// Tool the program waits on after this turn (`tool` field or `X-Program-Tool`).
    pub tool: Option<String>,
}

/// Longest accepted program id or tool name.
const MAX_PROGRAM_ID: usize = 256;

/// Fills `program` / `tool` from the `X-Program-Id` / `X-Program-Tool` headers where the
/// body did not set them, and checks both are 1..=256 characters.
pub(crate) fn program_headers(
    p: &mut GenParams,
    headers: &axum::http::HeaderMap,
) -> Result<(), ApiError> {
    let header = |name: &str| -> Result<Option<String>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str().map(str::to_string).map_err(|_| {
                    ApiError::invalid(None, format!("header {name} must be visible ASCII"))
                })
            })
            .transpose()
    };
    if p.program.is_none() {
        p.program = header("x-program-id")?;
    }
    if p.tool.is_none() {
        p.tool = header("x-program-tool")?;
    }
    for (name, v) in [("program", &p.program), ("tool", &p.tool)] {
        if v.as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > MAX_PROGRAM_ID)
        {
            return Err(ApiError::invalid(
                Some(name.to_string()),
                format!("'{name}' must be 1 to {MAX_PROGRAM_ID} characters"),
            ));
        }
    }
    Ok(())
}

/// `v` as the sampler's `f32` if it lies in `[lo, hi]`. The check is made on the JSON value
/// itself (`f64`), so a value just outside the range is not rounded into it, and one inside
/// it is never rounded out (a tiny positive number stays positive).
fn in_range(name: &str, v: f64, lo: f64, hi: f64) -> Result<f32, ApiError> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(to_f32(v))
    } else {
        Err(ApiError::invalid(
            Some(name.to_string()),
            format!("'{name}' must be between {lo} and {hi}, got {v}"),
        ))
    }
}

/// `v` (finite) as `f32`, saturating at `f32::MAX` and keeping nonzero values nonzero.
fn to_f32(v: f64) -> f32 {
    let f = v.clamp(-f64::from(f32::MAX), f64::from(f32::MAX)) as f32;
    if f == 0.0 && v != 0.0 {
        f32::MIN_POSITIVE.copysign(v as f32)
    } else {
        f
    }
}

/// `v` as `f32` if it is finite and above zero.
fn positive(name: &str, v: f64, hi: f64) -> Result<f32, ApiError> {
    if v.is_finite() && v > 0.0 && v <= hi {
        Ok(to_f32(v))
    } else {
        Err(ApiError::invalid(
            Some(name.to_string()),
            format!("'{name}' must be in (0, {hi}], got {v}"),
        ))
    }
}

/// Reads the parameters common to both routes; `max_tokens_names` lists the accepted names
/// of the token limit, first wins.
pub(crate) fn common(body: &Body, max_tokens_names: &[&str]) -> Result<GenParams, ApiError> {
    // Every accepted name is checked, so a bad value is refused even where another wins.
    let mut max_tokens = None;
    for name in max_tokens_names {
        if let Some(v) = body.get::<usize>(name)? {
            if v == 0 {
                return Err(ApiError::invalid(
                    Some(name.to_string()),
                    format!("'{name}' must be at least 1"),
                ));
            }
            max_tokens = max_tokens.or(Some(v));
        }
    }
    let n = body.get::<usize>("n")?.unwrap_or(1);
    if n == 0 || n > MAX_N {
        return Err(ApiError::invalid(
            Some("n".into()),
            format!("'n' must be between 1 and {MAX_N}, got {n}"),
        ));
    }
    let mut s = SamplingParams::default();
    if let Some(v) = body.get::<f64>("temperature")? {
        s.temperature = in_range("temperature", v, 0.0, 2.0)?;
    } else {
        s.temperature = 1.0;
    }
    if let Some(v) = body.get::<f64>("top_p")? {
        s.top_p = positive("top_p", v, 1.0)?;
    }
    if let Some(v) = body.get::<i64>("top_k")? {
        // -1 (vLLM's "off") and 0 both mean no top-k cut.
        s.top_k = match usize::try_from(v) {
            Ok(k) => k,
            Err(_) if v == -1 => 0,
            Err(_) => {
                return Err(ApiError::invalid(
                    Some("top_k".into()),
                    "'top_k' must be >= 0 (or -1 for off)",
                ))
            }
        };
    }
    if let Some(v) = body.get::<f64>("min_p")? {
        s.min_p = in_range("min_p", v, 0.0, 1.0)?;
    }
    if let Some(v) = body.get::<f64>("presence_penalty")? {
        s.presence_penalty = in_range("presence_penalty", v, -2.0, 2.0)?;
    }
    if let Some(v) = body.get::<f64>("frequency_penalty")? {
        s.frequency_penalty = in_range("frequency_penalty", v, -2.0, 2.0)?;
    }
    if let Some(v) = body.get::<f64>("repetition_penalty")? {
        s.repetition_penalty = positive("repetition_penalty", v, f64::MAX)?;
    }
    // Seeds are any JSON integer; negative ones wrap, as callers only need determinism.
    s.seed = body.get::<i64>("seed")?.map(|v| v as u64);
    let stop = match body.get::<Stop>("stop")? {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 16 {
        return Err(ApiError::invalid(
            Some("stop".into()),
            "'stop' may hold at most 16 strings",
        ));
    }
    let stop = stop.into_iter().filter(|s| !s.is_empty()).collect();
    #[derive(Deserialize)]
    struct StreamOptions {
        #[serde(default)]
        include_usage: bool,
    }
    let speculative = match body.get::<String>("speculative")? {
        None => None,
        Some(v) => Some(ferrum_engine::SpecMethod::parse(&v).ok_or_else(|| {
            ApiError::invalid(
                Some("speculative".into()),
                "'speculative' must be one of off, ngram, suffix, draft",
            )
        })?),
    };
    let stream = body.get::<bool>("stream")?.unwrap_or(false);
    let include_usage = body
        .get::<StreamOptions>("stream_options")?
        .is_some_and(|o| o.include_usage);
    Ok(GenParams {
        model: body.get::<String>("model")?,
        max_tokens,
        n,
        sampling: s,
        stop,
        logprobs: false,
        stream,
        include_usage,
        user: body.get::<String>("user")?,
        ignore_eos: body.get::<bool>("ignore_eos")?.unwrap_or(false),
        speculative,
        program: body.get::<String>("program")?,
        tool: body.get::<String>("tool")?,
    })
}

/// Chat parameters: `logprobs` is a bool and `top_logprobs` an int.
pub(crate) fn chat(body: &Body) -> Result<(GenParams, Vec<ChatTurn>), ApiError> {
    let mut p = common(body, &["max_completion_tokens", "max_tokens"])?;
    p.logprobs = body.get::<bool>("logprobs")?.unwrap_or(false);
    let top = body.get::<usize>("top_logprobs")?.unwrap_or(0);
    if top > MAX_TOP_LOGPROBS {
        return Err(ApiError::invalid(
            Some("top_logprobs".into()),
            format!("'top_logprobs' must be at most {MAX_TOP_LOGPROBS}"),
        ));
    }
    if top > 0 && !p.logprobs {
        return Err(ApiError::invalid(
            Some("top_logprobs".into()),
            "'top_logprobs' requires 'logprobs': true",
        ));
    }
    p.sampling.top_logprobs = top;
    let messages = messages(body)?;
    Ok((p, messages))
}

/// Text-completion parameters: `logprobs` is an int (alternatives per token).
pub(crate) fn completion(body: &Body) -> Result<(GenParams, Prompt), ApiError> {
    let mut p = common(body, &["max_tokens"])?;
    if let Some(k) = body.get::<usize>("logprobs")? {
        if k > MAX_TOP_LOGPROBS {
            return Err(ApiError::invalid(
                Some("logprobs".into()),
                format!("'logprobs' must be at most {MAX_TOP_LOGPROBS}"),
            ));
        }
        p.logprobs = true;
        p.sampling.top_logprobs = k;
    }
    let prompt = body
        .get::<Prompt>("prompt")?
        .ok_or_else(|| ApiError::invalid(Some("prompt".into()), "'prompt' is required"))?;
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            Some("prompt".into()),
            "'prompt' must not be an empty list",
        ));
    }
    Ok((p, prompt))
}

/// `prompt`: a string, strings, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Prompt {
    /// One text prompt.
    Text(String),
    /// Several text prompts.
    Texts(Vec<String>),
    /// One pre-tokenized prompt.
    Ids(Vec<u32>),
    /// Several pre-tokenized prompts.
    IdLists(Vec<Vec<u32>>),
}

impl Prompt {
    fn is_empty(&self) -> bool {
        match self {
            Prompt::Text(_) => false,
            Prompt::Texts(v) => v.is_empty(),
            Prompt::Ids(v) => v.is_empty(),
            Prompt::IdLists(v) => v.is_empty(),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct RawMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

fn messages(body: &Body) -> Result<Vec<ChatTurn>, ApiError> {
    let raw = body
        .get::<Vec<RawMessage>>("messages")?
        .ok_or_else(|| ApiError::invalid(Some("messages".into()), "'messages' is required"))?;
    if raw.is_empty() {
        return Err(ApiError::invalid(
            Some("messages".into()),
            "'messages' must not be empty",
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, m)| {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(ApiError::invalid(
                    Some(format!("messages[{i}].role")),
                    format!("unknown role '{}'; expected one of {ROLES:?}", m.role),
                ));
            }
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut out = String::new();
                    for p in parts {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => out.push_str(&t),
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    Some(format!("messages[{i}].content")),
                                    format!(
                                        "content part of type '{kind}' is not supported; only text"
                                    ),
                                ))
                            }
                        }
                    }
                    out
                }
            };
            Ok(ChatTurn {
                role: m.role,
                content,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(s: &str) -> Body {
        match Body::parse(s.as_bytes()) {
            Ok(b) => b,
            Err(e) => panic!("test body must parse: {e:?}"),
        }
    }

    #[test]
    fn wrong_type_names_the_parameter() {
        let err = chat(&body(
            r#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
        ))
        .err();
        assert_eq!(err.and_then(|e| e.param), Some("temperature".into()));
    }

    #[test]
    fn unknown_fields_are_ignored_and_defaults_apply() {
        let (p, m) = chat(&body(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"frobnicate":{"x":1}}"#,
        ))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(m[0].content, "ab");
        assert_eq!((p.n, p.stream, p.max_tokens), (1, false, None));
    }

    #[test]
    fn max_completion_tokens_wins_over_max_tokens() {
        let (p, _) = chat(&body(
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":5,"max_completion_tokens":7}"#,
        ))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(p.max_tokens, Some(7));
    }

    #[test]
    fn prompt_accepts_all_four_shapes() {
        for (src, n) in [
            (r#""a""#, 1),
            (r#"["a","b"]"#, 2),
            ("[1,2,3]", 1),
            ("[[1],[2,3]]", 2),
        ] {
            let (_, p) = completion(&body(&format!(r#"{{"prompt":{src}}}"#)))
                .unwrap_or_else(|e| panic!("{src}: {e:?}"));
            let count = match p {
                Prompt::Text(_) | Prompt::Ids(_) => 1,
                Prompt::Texts(v) => v.len(),
                Prompt::IdLists(v) => v.len(),
            };
            assert_eq!(count, n, "{src}");
        }
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        for bad in [
            r#"{"prompt":"a","temperature":3}"#,
            r#"{"prompt":"a","top_p":0}"#,
            r#"{"prompt":"a","n":0}"#,
            r#"{"prompt":"a","max_tokens":0}"#,
            r#"{"prompt":"a","max_tokens":-1}"#,
            r#"{"prompt":"a","logprobs":99}"#,
            r#"{"prompt":[]}"#,
            r#"{"prompt":{"x":1}}"#,
            r#"{"prompt":"a","stop":7}"#,
        ] {
            let e = completion(&body(bad)).err();
            assert!(e.is_some_and(|e| e.status == 400), "{bad}");
        }
    }

    #[test]
    fn bounds_are_checked_on_the_json_value_not_its_f32_rounding() {
        // Just above 2: rounds to 2.0 in f32 but is out of range.
        let e = completion(&body(r#"{"prompt":"a","presence_penalty":2.0000000001}"#)).err();
        assert!(e.is_some_and(|e| e.param.as_deref() == Some("presence_penalty")));
        // Tiny but positive: rounds to 0 in f32 but is in range, and stays positive.
        let (p, _) = completion(&body(
            r#"{"prompt":"a","top_p":5e-324,"repetition_penalty":1e-300}"#,
        ))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(p.sampling.top_p > 0.0 && p.sampling.repetition_penalty > 0.0);
        let (p, _) = completion(&body(r#"{"prompt":"a","repetition_penalty":1e300}"#))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(p.sampling.repetition_penalty.is_finite());
    }

    #[test]
    fn integral_floats_read_as_integers_and_fractions_do_not() {
        let (p, _) = completion(&body(r#"{"prompt":[1.0,2],"n":2.0,"max_tokens":3.0}"#))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((p.n, p.max_tokens), (2, Some(3)));
        let e = completion(&body(r#"{"prompt":"a","n":1.5}"#)).err();
        assert!(e.is_some_and(|e| e.param.as_deref() == Some("n")));
        let (p, _) = completion(&body(r#"{"prompt":"a","temperature":1}"#))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(p.sampling.temperature, 1.0);
        // One below i64::MIN overflows to a float; it must not round onto i64::MIN.
        let e = completion(&body(r#"{"prompt":"a","seed":-9223372036854775809}"#)).err();
        assert!(e.is_some_and(|e| e.param.as_deref() == Some("seed")));
    }

    #[test]
    fn a_bad_max_tokens_is_refused_even_when_max_completion_tokens_wins() {
        let e = chat(&body(
            r#"{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":5,"max_tokens":"x"}"#,
        ))
        .err();
        assert!(e.is_some_and(|e| e.param.as_deref() == Some("max_tokens")));
    }

    #[test]
    fn null_means_not_given() {
        let (p, _) = completion(&body(
            r#"{"prompt":"a","temperature":null,"user":null,"n":null,"stop":null}"#,
        ))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((p.sampling.temperature, p.n, p.user), (1.0, 1, None));
    }

    #[test]
    fn top_k_minus_one_means_off() {
        let (p, _) =
            completion(&body(r#"{"prompt":"a","top_k":-1}"#)).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(p.sampling.top_k, 0);
    }
}
