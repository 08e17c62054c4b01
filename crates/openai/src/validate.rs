//! Request validation for `/v1/chat/completions` and `/v1/completions`.
//!
//! The base is COCOON's worker allowlist (see docs/cocoon-compat.md): every key is known and
//! type-checked, duplicate keys are refused (two parsers disagreeing on which duplicate wins is a
//! classic smuggling trick), and a streamed request always asks for usage in its final chunk so
//! that it can be billed. We extend the list with fields the engines we support implement
//! (`seed`, `tools`, `tool_choice`, `response_format`, `logprobs`, `top_logprobs`, `stop`, `user`)
//! and type `prediction` as an object and completions' `suffix` as a string.
//! Errors are OpenAI-style 400s naming the field.
//!
//! The body extensions (`max_coefficient`, `timeout`, `request_guid`, `enable_debug`) are
//! read by the client and removed before the request leaves it ([`CocoonExtensions`]).

use crate::error::{ApiError, ErrorKind};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// Which endpoint a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`: vectors for `input`, billed as prompt tokens only. Carried only
    /// on protocol version 3 sessions (docs/protocol.md).
    Embeddings,
}

impl Endpoint {
    /// Maps a URL path (query string ignored) to an endpoint.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let path = path.split('?').next().unwrap_or(path);
        match path.trim_end_matches('/') {
            "/v1/chat/completions" => Some(Endpoint::ChatCompletions),
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            _ => None,
        }
    }

    /// The canonical path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }

    /// Whether the endpoint generates text (and so has a completion-token limit).
    pub fn generates(self) -> bool {
        self != Endpoint::Embeddings
    }
}

/// The request-body extensions, read by the client.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CocoonExtensions {
    /// Highest worker coefficient the client accepts (1000 = 1.0); the client's default is 4000.
    pub max_coefficient: Option<u64>,
    /// Request deadline in seconds; the client's default is 120.
    pub timeout: Option<f64>,
    /// Client-chosen id for debug lookups.
    pub request_guid: Option<String>,
    /// Ask workers and proxies for debug info.
    pub enable_debug: bool,
}

/// Knobs for [`validate_request`].
#[derive(Clone, Debug)]
pub struct ValidateOptions {
    /// Remove and return the body extensions (the client does; workers never see them).
    pub take_extensions: bool,
    /// The largest `max_tokens` a request may ask for, if any.
    pub max_tokens_cap: Option<u64>,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        ValidateOptions {
            take_extensions: true,
            max_tokens_cap: None,
        }
    }
}

/// A request that passed validation.
#[derive(Clone, Debug)]
pub struct ValidatedRequest {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The `model` field.
    pub model: String,
    /// Whether the answer is streamed.
    pub stream: bool,
    /// `max_completion_tokens` or `max_tokens`, when given.
    pub max_tokens: Option<u64>,
    /// The body extensions, when `take_extensions` was set.
    pub extensions: CocoonExtensions,
    /// The body to forward (extensions removed, `stream_options.include_usage` forced).
    pub body: Map<String, Value>,
}

impl ValidatedRequest {
    /// The body serialised for forwarding.
    pub fn body_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body).unwrap_or_default()
    }
}

/// Validates a request body for `endpoint`.
pub fn validate_request(
    endpoint: Endpoint,
    body: &[u8],
    opts: &ValidateOptions,
) -> Result<ValidatedRequest, ApiError> {
    let value = parse_strict(body)?;
    let Value::Object(mut map) = value else {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "request body must be a JSON object",
        ));
    };
    let extensions = if opts.take_extensions {
        take_extensions(&mut map)?
    } else {
        CocoonExtensions::default()
    };
    for (key, v) in &map {
        check_field(endpoint, key, v)?;
    }
    if endpoint == Endpoint::Embeddings {
        embeddings_input(map.get("input"))?;
    }
    let model = match map.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(ApiError::invalid(
                "model",
                "invalid_value",
                "model must not be empty",
            ));
        }
        _ => {
            return Err(ApiError::invalid(
                "model",
                "missing_field",
                "model is required",
            ));
        }
    };
    let required = match endpoint {
        Endpoint::ChatCompletions => "messages",
        Endpoint::Completions => "prompt",
        Endpoint::Embeddings => "input",
    };
    if !map.contains_key(required) {
        return Err(ApiError::invalid(
            required,
            "missing_field",
            format!("{required} is required"),
        ));
    }
    if map.get("top_logprobs").is_some_and(|v| !v.is_null())
        && endpoint == Endpoint::ChatCompletions
        && map.get("logprobs") != Some(&Value::Bool(true))
    {
        return Err(ApiError::invalid(
            "top_logprobs",
            "invalid_value",
            "top_logprobs requires logprobs: true",
        ));
    }
    let max_tokens = match endpoint {
        Endpoint::ChatCompletions => map
            .get("max_completion_tokens")
            .and_then(Value::as_u64)
            .or_else(|| map.get("max_tokens").and_then(Value::as_u64)),
        Endpoint::Completions => map.get("max_tokens").and_then(Value::as_u64),
        Endpoint::Embeddings => None,
    };
    if let (Some(cap), Some(m)) = (opts.max_tokens_cap, max_tokens)
        && m > cap
    {
        let field = if map.contains_key("max_completion_tokens") {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        return Err(ApiError::invalid(
            field,
            "invalid_value",
            format!("{field} must be at most {cap}"),
        ));
    }
    // Streaming: stream_options implies stream; streaming always reports usage.
    if map.contains_key("stream_options") && !map.contains_key("stream") {
        map.insert("stream".into(), Value::Bool(true));
    }
    let stream = map.get("stream") == Some(&Value::Bool(true));
    if stream {
        let opts = map
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        // `stream_options: null` passes the field check as "no options"; it must still ask
        // for usage.
        if !opts.is_object() {
            *opts = Value::Object(Map::new());
        }
        if let Value::Object(o) = opts {
            o.insert("include_usage".into(), Value::Bool(true));
        }
    } else {
        map.remove("stream_options");
    }
    Ok(ValidatedRequest {
        endpoint,
        model,
        stream,
        max_tokens,
        extensions,
        body: map,
    })
}

/// The text of a request's prompt, for counting tokens locally when an engine reports no
/// usage: message contents joined by newlines (chat; text parts of array contents), or the
/// prompt string(s) (completions). Chat templates add tokens this text does not contain.
pub fn prompt_text(endpoint: Endpoint, body: &Map<String, Value>) -> String {
    let mut out = String::new();
    match endpoint {
        Endpoint::ChatCompletions => {
            for m in body
                .get("messages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match m.get("content") {
                    Some(Value::String(s)) => out.push_str(s),
                    Some(Value::Array(parts)) => {
                        for p in parts {
                            if let Some(t) = p.get("text").and_then(Value::as_str) {
                                out.push_str(t);
                            }
                        }
                    }
                    _ => {}
                }
                out.push('\n');
            }
        }
        Endpoint::Completions => match body.get("prompt") {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Array(a)) => {
                for p in a.iter().filter_map(Value::as_str) {
                    out.push_str(p);
                }
            }
            _ => {}
        },
        Endpoint::Embeddings => {
            if let Some(Value::String(s)) = body.get("input") {
                out.push_str(s);
            } else {
                for s in body
                    .get("input")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    out.push_str(s);
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// Most inputs one embeddings request may carry (OpenAI's limit).
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// The shape of an embeddings `input`: a string, a list of strings, a list of token ids or a
/// list of token-id lists (OpenAI accepts all four), none empty, at most
/// [`MAX_EMBEDDING_INPUTS`] of them.
fn embeddings_input(v: Option<&Value>) -> Result<(), ApiError> {
    let bad = |m: &str| ApiError::invalid("input", "invalid_value", m.to_owned());
    let token = |t: &Value| t.as_u64().is_some_and(|n| n <= u64::from(u32::MAX));
    match v {
        None => Err(ApiError::invalid(
            "input",
            "missing_field",
            "input is required",
        )),
        Some(Value::String(s)) if s.is_empty() => {
            Err(bad("'$.input' is invalid: an input must not be empty"))
        }
        Some(Value::String(_)) => Ok(()),
        Some(Value::Array(a)) if a.is_empty() => Err(bad(
            "'$.input' is invalid: the list of inputs must not be empty",
        )),
        // A flat list of token ids is one input, however long.
        Some(Value::Array(a)) if a.iter().all(token) => Ok(()),
        Some(Value::Array(a)) if a.len() > MAX_EMBEDDING_INPUTS => Err(bad(&format!(
            "'$.input' is invalid: at most {MAX_EMBEDDING_INPUTS} inputs per request, got {}",
            a.len()
        ))),
        Some(Value::Array(a)) => {
            let strings = a.iter().all(Value::is_string);
            if strings && a.iter().any(|s| s.as_str() == Some("")) {
                return Err(bad("'$.input' is invalid: an input must not be empty"));
            }
            let token_lists = || {
                a.iter().all(|x| {
                    x.as_array()
                        .is_some_and(|t| !t.is_empty() && t.iter().all(token))
                })
            };
            if strings || token_lists() {
                Ok(())
            } else {
                Err(bad(
                    "'$.input' is invalid: expected a string, a list of strings, a list of token \
                     ids or a list of non-empty token-id lists",
                ))
            }
        }
        Some(_) => Err(bad(
            "'$.input' is invalid: expected a string or a list of strings or token ids",
        )),
    }
}

fn take_extensions(map: &mut Map<String, Value>) -> Result<CocoonExtensions, ApiError> {
    let mut ext = CocoonExtensions::default();
    if let Some(v) = map.remove("max_coefficient") {
        ext.max_coefficient = Some(v.as_u64().ok_or_else(|| {
            ApiError::invalid(
                "max_coefficient",
                "invalid_type",
                "max_coefficient must be a non-negative integer",
            )
        })?);
    }
    if let Some(v) = map.remove("timeout") {
        match v.as_f64() {
            Some(t) if t.is_finite() && t > 0.0 && t <= 86_400.0 => ext.timeout = Some(t),
            _ => {
                return Err(ApiError::invalid(
                    "timeout",
                    "invalid_value",
                    "timeout must be a number of seconds in (0, 86400]",
                ));
            }
        }
    }
    if let Some(v) = map.remove("request_guid") {
        match v {
            Value::String(s) if s.len() <= 256 => ext.request_guid = Some(s),
            _ => {
                return Err(ApiError::invalid(
                    "request_guid",
                    "invalid_type",
                    "request_guid must be a string of at most 256 bytes",
                ));
            }
        }
    }
    if let Some(v) = map.remove("enable_debug") {
        ext.enable_debug = v.as_bool().ok_or_else(|| {
            ApiError::invalid(
                "enable_debug",
                "invalid_type",
                "enable_debug must be a boolean",
            )
        })?;
    }
    Ok(ext)
}

fn bad_type(field: &str, expected: &str) -> ApiError {
    ApiError::invalid(field, "invalid_type", format!("{field} must be {expected}"))
}

fn bad_value(field: &str, expected: &str) -> ApiError {
    ApiError::invalid(
        field,
        "invalid_value",
        format!("{field} must be {expected}"),
    )
}

fn number_in(field: &str, v: &Value, lo: f64, hi: f64) -> Result<(), ApiError> {
    match v {
        Value::Null => Ok(()),
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if (lo..=hi).contains(&x) {
                Ok(())
            } else {
                Err(bad_value(field, &format!("between {lo} and {hi}")))
            }
        }
        _ => Err(bad_type(field, "a number")),
    }
}

fn uint_in(field: &str, v: &Value, lo: u64, hi: u64) -> Result<(), ApiError> {
    match v {
        Value::Null => Ok(()),
        Value::Number(n) => match n.as_u64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(()),
            Some(_) => Err(bad_value(
                field,
                &format!("an integer between {lo} and {hi}"),
            )),
            None => Err(bad_type(field, "a non-negative integer")),
        },
        _ => Err(bad_type(field, "a non-negative integer")),
    }
}

fn boolean(field: &str, v: &Value) -> Result<(), ApiError> {
    if v.is_boolean() || v.is_null() {
        Ok(())
    } else {
        Err(bad_type(field, "a boolean"))
    }
}

fn string(field: &str, v: &Value) -> Result<(), ApiError> {
    if v.is_string() || v.is_null() {
        Ok(())
    } else {
        Err(bad_type(field, "a string"))
    }
}

fn stop(v: &Value) -> Result<(), ApiError> {
    match v {
        Value::Null | Value::String(_) => Ok(()),
        Value::Array(a) if a.len() <= 4 && a.iter().all(Value::is_string) => Ok(()),
        Value::Array(_) => Err(bad_value(
            "stop",
            "a string or an array of at most 4 strings",
        )),
        _ => Err(bad_type("stop", "a string or an array of strings")),
    }
}

fn stream_options(v: &Value) -> Result<(), ApiError> {
    let Value::Object(o) = v else {
        return if v.is_null() {
            Ok(())
        } else {
            Err(bad_type("stream_options", "an object"))
        };
    };
    for (k, x) in o {
        match k.as_str() {
            "include_usage" | "include_obfuscation" => boolean(&format!("stream_options.{k}"), x)?,
            _ => {
                return Err(ApiError::invalid(
                    format!("stream_options.{k}"),
                    "unknown_field",
                    format!("unknown field stream_options.{k}"),
                ));
            }
        }
    }
    Ok(())
}

fn messages(v: &Value) -> Result<(), ApiError> {
    let Value::Array(a) = v else {
        return Err(bad_type("messages", "an array"));
    };
    if a.is_empty() {
        return Err(bad_value("messages", "a non-empty array"));
    }
    for (i, m) in a.iter().enumerate() {
        let field = format!("messages[{i}]");
        let Value::Object(o) = m else {
            return Err(bad_type(&field, "an object"));
        };
        match o.get("role") {
            Some(Value::String(r))
                if matches!(
                    r.as_str(),
                    "system" | "developer" | "user" | "assistant" | "tool" | "function"
                ) => {}
            Some(Value::String(_)) => {
                return Err(bad_value(
                    &format!("{field}.role"),
                    "one of system, developer, user, assistant, tool",
                ));
            }
            _ => {
                return Err(ApiError::invalid(
                    format!("{field}.role"),
                    "missing_field",
                    format!("{field}.role is required"),
                ));
            }
        }
        let content = format!("{field}.content");
        match o.get("content") {
            Some(Value::String(_) | Value::Array(_)) => {}
            // As OpenAI: only an assistant message that calls tools (or the deprecated
            // function role) may come without content.
            None | Some(Value::Null) => {
                let role = o.get("role").and_then(Value::as_str);
                let calls = |k: &str| o.get(k).is_some_and(|v| !v.is_null());
                let may_be_empty = role == Some("function")
                    || (role == Some("assistant")
                        && (calls("tool_calls") || calls("function_call")));
                if !may_be_empty {
                    return Err(ApiError::invalid(
                        &content,
                        if o.contains_key("content") {
                            "invalid_type"
                        } else {
                            "missing_field"
                        },
                        format!("{content} must be a string or an array of parts, not null"),
                    ));
                }
            }
            Some(_) => {
                return Err(bad_type(&content, "a string or an array of parts"));
            }
        }
    }
    Ok(())
}

fn tools(v: &Value) -> Result<(), ApiError> {
    let Value::Array(a) = v else {
        return Err(bad_type("tools", "an array"));
    };
    for (i, t) in a.iter().enumerate() {
        let name = t
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str);
        if t.get("type").and_then(Value::as_str) != Some("function")
            || name.is_none_or(str::is_empty)
        {
            return Err(bad_value(
                &format!("tools[{i}]"),
                "{\"type\":\"function\",\"function\":{\"name\":…}}",
            ));
        }
    }
    Ok(())
}

fn tool_choice(v: &Value) -> Result<(), ApiError> {
    match v {
        Value::Null => Ok(()),
        Value::String(s) if matches!(s.as_str(), "none" | "auto" | "required") => Ok(()),
        Value::Object(o) if o.get("type").and_then(Value::as_str).is_some() => Ok(()),
        _ => Err(bad_value(
            "tool_choice",
            "none, auto, required or a tool object",
        )),
    }
}

fn response_format(v: &Value) -> Result<(), ApiError> {
    match v.get("type").and_then(Value::as_str) {
        Some("text" | "json_object" | "json_schema") => Ok(()),
        _ if v.is_null() => Ok(()),
        _ => Err(bad_value(
            "response_format",
            "an object with type text, json_object or json_schema",
        )),
    }
}

/// Most entries a `logit_bias` map may have (as OpenAI: 300).
const MAX_LOGIT_BIAS: usize = 300;

/// `logit_bias`: token ids (decimal strings) to biases between -100 and 100.
fn logit_bias(v: &Value) -> Result<(), ApiError> {
    let o = match v {
        Value::Null => return Ok(()),
        Value::Object(o) => o,
        _ => return Err(bad_type("logit_bias", "an object of token ids to numbers")),
    };
    if o.len() > MAX_LOGIT_BIAS {
        return Err(bad_value(
            "logit_bias",
            &format!("a map of at most {MAX_LOGIT_BIAS} tokens"),
        ));
    }
    for (k, x) in o {
        if k.parse::<u32>().is_err() {
            return Err(bad_value(
                "logit_bias",
                "keyed by token ids (decimal integers)",
            ));
        }
        number_in("logit_bias", x, -100.0, 100.0)?;
        if x.is_null() {
            return Err(bad_type("logit_bias", "an object of token ids to numbers"));
        }
    }
    Ok(())
}

fn prompt(v: &Value) -> Result<(), ApiError> {
    let ok = match v {
        Value::String(_) => true,
        Value::Array(a) => {
            a.iter().all(Value::is_string)
                || a.iter().all(Value::is_u64)
                || a.iter()
                    .all(|x| x.as_array().is_some_and(|t| t.iter().all(Value::is_u64)))
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(bad_type(
            "prompt",
            "a string, an array of strings or of token ids",
        ))
    }
}

fn chat_template_kwargs(v: &Value) -> Result<(), ApiError> {
    let Value::Object(o) = v else {
        return Err(bad_type("chat_template_kwargs", "an object"));
    };
    for (k, x) in o {
        if k != "enable_thinking" {
            return Err(ApiError::invalid(
                format!("chat_template_kwargs.{k}"),
                "unknown_field",
                format!("unknown field chat_template_kwargs.{k}"),
            ));
        }
        boolean("chat_template_kwargs.enable_thinking", x)?;
    }
    Ok(())
}

fn check_field(endpoint: Endpoint, key: &str, v: &Value) -> Result<(), ApiError> {
    use Endpoint::*;
    match (endpoint, key) {
        (_, "model") => string(key, v),
        (Embeddings, "input") => Ok(()),
        (Embeddings, "encoding_format") => match v.as_str() {
            Some("float" | "base64") => Ok(()),
            _ => Err(ApiError::invalid(
                key,
                "invalid_value",
                "encoding_format must be 'float' or 'base64'",
            )),
        },
        (Embeddings, "dimensions") => uint_in(key, v, 1, 65_536),
        (Embeddings, "user") => string(key, v),
        (Embeddings, _) => Err(ApiError::invalid(
            key,
            "unknown_field",
            format!("unknown or unsupported field '{key}' for /v1/embeddings"),
        )),
        (_, "frequency_penalty" | "presence_penalty") => number_in(key, v, -2.0, 2.0),
        (_, "logit_bias") => logit_bias(v),
        (_, "max_tokens") => uint_in(key, v, 1, u32::MAX.into()),
        (_, "n") => uint_in(key, v, 1, 128),
        (_, "seed") => match v {
            Value::Null => Ok(()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(()),
            _ => Err(bad_type(key, "an integer")),
        },
        (_, "stop") => stop(v),
        (_, "stream") => boolean(key, v),
        (_, "stream_options") => stream_options(v),
        (_, "temperature") => number_in(key, v, 0.0, 2.0),
        (_, "top_p") => number_in(key, v, 0.0, 1.0),
        (_, "user") => string(key, v),
        (ChatCompletions, "messages") => messages(v),
        (ChatCompletions, "max_completion_tokens") => uint_in(key, v, 1, u32::MAX.into()),
        (ChatCompletions, "parallel_tool_calls" | "logprobs") => boolean(key, v),
        (ChatCompletions, "prediction") => {
            if v.is_object() || v.is_null() {
                Ok(())
            } else {
                Err(bad_type(key, "an object"))
            }
        }
        (ChatCompletions, "reasoning_effort" | "verbosity") => string(key, v),
        (ChatCompletions, "response_format") => response_format(v),
        (ChatCompletions, "top_logprobs") => uint_in(key, v, 0, 20),
        (ChatCompletions, "chat_template_kwargs") => chat_template_kwargs(v),
        (ChatCompletions, "tools") => tools(v),
        (ChatCompletions, "tool_choice") => tool_choice(v),
        (Completions, "prompt") => prompt(v),
        (Completions, "best_of") => uint_in(key, v, 1, 20),
        (Completions, "echo" | "skip_special_tokens") => boolean(key, v),
        (Completions, "suffix") => string(key, v),
        (Completions, "logprobs") => uint_in(key, v, 0, 5),
        _ => Err(ApiError::invalid(
            key,
            "unknown_field",
            format!(
                "unknown or unsupported field '{key}' for {}",
                endpoint.path()
            ),
        )),
    }
}

/// Parses JSON into a `Value`, refusing duplicate object keys at any depth and nesting deeper
/// than 64 levels.
pub fn parse_strict(body: &[u8]) -> Result<Value, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = StrictSeed { depth: 0 }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("request body is not valid JSON: {e}"),
            )
        })?;
    Ok(v)
}

const MAX_DEPTH: usize = 64;

struct StrictSeed {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for StrictSeed {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor { depth: self.depth })
    }
}

struct StrictVisitor {
    depth: usize,
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom("nesting too deep"));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictSeed {
            depth: self.depth + 1,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom("nesting too deep"));
        }
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(de::Error::custom(format_args!("duplicate key '{k}'")));
            }
            let v = map.next_value_seed(StrictSeed {
                depth: self.depth + 1,
            })?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(body: Value) -> Result<ValidatedRequest, ApiError> {
        validate_request(
            Endpoint::ChatCompletions,
            body.to_string().as_bytes(),
            &ValidateOptions::default(),
        )
    }

    fn base() -> Value {
        json!({"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}]})
    }

    fn with(k: &str, v: Value) -> Value {
        let mut b = base();
        b[k] = v;
        b
    }

    #[test]
    fn accepts_minimal_and_extended() {
        let r = chat(base()).unwrap();
        assert_eq!(r.model, "SmolLM2-135M-Instruct");
        assert!(!r.stream);
        let mut b = base();
        for (k, v) in [
            ("seed", json!(-3)),
            ("temperature", json!(0.7)),
            ("top_p", json!(1)),
            ("stop", json!(["\n", "END"])),
            ("user", json!("u1")),
            ("logprobs", json!(true)),
            ("top_logprobs", json!(2)),
            ("response_format", json!({"type": "json_object"})),
            (
                "tools",
                json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]),
            ),
            ("tool_choice", json!("auto")),
            ("logit_bias", json!({"50256": -100, "15": 2.5})),
            ("max_completion_tokens", json!(64)),
            ("chat_template_kwargs", json!({"enable_thinking": false})),
        ] {
            b[k] = v;
        }
        let r = chat(b).unwrap();
        assert_eq!(r.max_tokens, Some(64));
    }

    #[test]
    fn unknown_and_ill_typed_fields_name_the_field() {
        let cases = [
            (
                with("logit_bias_", json!({})),
                "logit_bias_",
                "unknown_field",
            ),
            (
                with("logit_bias", json!({"x": 1})),
                "logit_bias",
                "invalid_value",
            ),
            (
                with("logit_bias", json!({"1": 101})),
                "logit_bias",
                "invalid_value",
            ),
            (with("logit_bias", json!([1])), "logit_bias", "invalid_type"),
            (
                with("temperature", json!("hot")),
                "temperature",
                "invalid_type",
            ),
            (
                with("temperature", json!(3)),
                "temperature",
                "invalid_value",
            ),
            (with("max_tokens", json!(-1)), "max_tokens", "invalid_type"),
            (with("n", json!(0)), "n", "invalid_value"),
            (with("stop", json!([1])), "stop", "invalid_value"),
            (
                with("stream_options", json!({"x": 1})),
                "stream_options.x",
                "unknown_field",
            ),
            (with("messages", json!([])), "messages", "invalid_value"),
            (
                with("messages", json!([{"role": "robot"}])),
                "messages[0].role",
                "invalid_value",
            ),
            (
                with("top_logprobs", json!(2)),
                "top_logprobs",
                "invalid_value",
            ),
            (
                with("tool_choice", json!("maybe")),
                "tool_choice",
                "invalid_value",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}]}),
                "model",
                "missing_field",
            ),
            (json!({"model": "m"}), "messages", "missing_field"),
        ];
        for (body, param, code) in cases {
            let e = chat(body.clone()).unwrap_err();
            assert_eq!(e.status(), 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e}");
            assert_eq!(e.code, Some(code), "{body}: {e}");
        }
    }

    #[test]
    fn messages_need_content_unless_an_assistant_calls_tools() {
        let msgs = |m: Value| with("messages", m);
        let refused = [
            (
                json!([{"role": "user", "content": null}]),
                "messages[0].content",
                "invalid_type",
            ),
            (
                json!([{"role": "user"}]),
                "messages[0].content",
                "missing_field",
            ),
            (
                json!([{"role": "user", "content": "x"}, {"role": "system", "content": null}]),
                "messages[1].content",
                "invalid_type",
            ),
            (
                json!([{"role": "user", "content": "x"}, {"role": "assistant", "content": null}]),
                "messages[1].content",
                "invalid_type",
            ),
            (
                json!([{"role": "assistant", "content": null, "tool_calls": null}]),
                "messages[0].content",
                "invalid_type",
            ),
            (
                json!([{"role": "tool", "tool_call_id": "c"}]),
                "messages[0].content",
                "missing_field",
            ),
            (
                json!([{"role": "developer", "content": null}]),
                "messages[0].content",
                "invalid_type",
            ),
            (
                json!([{"role": "user", "content": 5}]),
                "messages[0].content",
                "invalid_type",
            ),
        ];
        for (m, param, code) in refused {
            let e = chat(msgs(m.clone())).unwrap_err();
            assert_eq!(e.status(), 400, "{m}");
            assert_eq!(e.param.as_deref(), Some(param), "{m}");
            assert_eq!(e.code, Some(code), "{m}");
            assert!(e.message.contains(param), "{e}");
        }
        let call =
            json!([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]);
        for m in [
            json!([{"role": "user", "content": "x"}, {"role": "assistant", "content": null, "tool_calls": call}]),
            json!([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": call}]),
            json!([{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}]),
            json!([{"role": "function", "name": "f", "content": null}]),
            json!([{"role": "user", "content": ""}]),
            json!([{"role": "user", "content": [{"type": "text", "text": "x"}]}]),
        ] {
            chat(msgs(m.clone())).unwrap_or_else(|e| panic!("{m}: {e}"));
        }
    }

    #[test]
    fn duplicate_keys_and_non_objects_are_refused() {
        let opts = ValidateOptions::default();
        let e = validate_request(
            Endpoint::ChatCompletions,
            br#"{"model":"a","model":"b","messages":[{"role":"user","content":"x"}]}"#,
            &opts,
        )
        .unwrap_err();
        assert!(e.message.contains("duplicate key 'model'"), "{e}");
        let e = validate_request(Endpoint::ChatCompletions, br#"{"a":{"b":1,"b":2}}"#, &opts)
            .unwrap_err();
        assert!(e.message.contains("duplicate"));
        assert!(validate_request(Endpoint::ChatCompletions, b"[1]", &opts).is_err());
        assert!(validate_request(Endpoint::ChatCompletions, b"{} trailing", &opts).is_err());
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(parse_strict(deep.as_bytes()).is_err());
    }

    #[test]
    fn streaming_forces_usage() {
        let r = chat(with("stream", json!(true))).unwrap();
        assert!(r.stream);
        assert_eq!(r.body["stream_options"]["include_usage"], true);
        let r = chat(with("stream_options", json!({"include_usage": false}))).unwrap();
        assert!(r.stream, "stream_options implies stream");
        assert_eq!(r.body["stream_options"]["include_usage"], true);
        let r = chat(with("stream", json!(false))).unwrap();
        assert!(r.body.get("stream_options").is_none());
        // Found by fuzz/openai_validate: a null stream_options was forwarded as null, so a
        // streamed request did not ask for usage.
        let mut b = with("stream", json!(true));
        b["stream_options"] = Value::Null;
        let r = chat(b).unwrap();
        assert_eq!(r.body["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn cocoon_extensions_are_taken_and_stripped() {
        let mut b = base();
        b["max_coefficient"] = json!(2500);
        b["timeout"] = json!(30.5);
        b["request_guid"] = json!("g-1");
        b["enable_debug"] = json!(true);
        let r = chat(b.clone()).unwrap();
        assert_eq!(
            r.extensions,
            CocoonExtensions {
                max_coefficient: Some(2500),
                timeout: Some(30.5),
                request_guid: Some("g-1".into()),
                enable_debug: true
            }
        );
        for k in ["max_coefficient", "timeout", "request_guid", "enable_debug"] {
            assert!(!r.body.contains_key(k));
        }
        // A worker (take_extensions = false) refuses them as unknown.
        let opts = ValidateOptions {
            take_extensions: false,
            ..Default::default()
        };
        let e = validate_request(Endpoint::ChatCompletions, b.to_string().as_bytes(), &opts)
            .unwrap_err();
        assert_eq!(e.code, Some("unknown_field"));
        let e = chat(with("timeout", json!(-1))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("timeout"));
    }

    #[test]
    fn completions_rules() {
        let opts = ValidateOptions::default();
        let ok =
            |b: Value| validate_request(Endpoint::Completions, b.to_string().as_bytes(), &opts);
        assert!(
            ok(json!({"model": "m", "prompt": "x", "suffix": "y", "echo": true, "logprobs": 2}))
                .is_ok()
        );
        assert!(ok(json!({"model": "m", "prompt": [[1, 2], [3]]})).is_ok());
        assert_eq!(
            ok(json!({"model": "m", "prompt": 5}))
                .unwrap_err()
                .param
                .as_deref(),
            Some("prompt")
        );
        assert_eq!(
            ok(json!({"model": "m", "prompt": "x", "messages": []}))
                .unwrap_err()
                .code,
            Some("unknown_field")
        );
    }

    #[test]
    fn prompt_text_for_local_counting() {
        let b = json!({"messages": [{"role": "system", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "image_url"}]}]});
        assert_eq!(
            prompt_text(Endpoint::ChatCompletions, b.as_object().unwrap()),
            "a\nb\n"
        );
        let b = json!({"prompt": ["x", "y"]});
        assert_eq!(
            prompt_text(Endpoint::Completions, b.as_object().unwrap()),
            "xy"
        );
    }

    #[test]
    fn max_tokens_cap_and_paths() {
        let opts = ValidateOptions {
            max_tokens_cap: Some(100),
            ..Default::default()
        };
        let e = validate_request(
            Endpoint::ChatCompletions,
            with("max_tokens", json!(101)).to_string().as_bytes(),
            &opts,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert_eq!(
            Endpoint::from_path("/v1/chat/completions?x=1"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(
            Endpoint::from_path("/v1/completions/"),
            Some(Endpoint::Completions)
        );
        assert_eq!(
            Endpoint::from_path("/v1/embeddings"),
            Some(Endpoint::Embeddings)
        );
        assert_eq!(Endpoint::from_path("/v1/audio/speech"), None);
    }

    #[test]
    fn embeddings_inputs_as_openai_takes_them() {
        let opts = ValidateOptions::default();
        let ok = |b: Value| validate_request(Endpoint::Embeddings, b.to_string().as_bytes(), &opts);
        for input in [
            json!("one"),
            json!(["one", "two"]),
            json!([1, 2, 3]),
            json!([[1, 2], [3]]),
        ] {
            let v = ok(json!({"model": "m", "input": input})).unwrap();
            assert!(!v.stream);
            assert_eq!(v.max_tokens, None);
        }
        let v = ok(
            json!({"model": "m", "input": "x", "encoding_format": "base64",
            "dimensions": 8, "user": "u"}),
        )
        .unwrap();
        assert_eq!(v.body["encoding_format"], "base64");
        let refused = |b: Value| {
            let e = ok(b).unwrap_err();
            (
                e.param.unwrap_or_default(),
                e.code.unwrap_or_default().to_owned(),
            )
        };
        let p = |s: &str, c: &str| (s.to_owned(), c.to_owned());
        assert_eq!(refused(json!({"model": "m"})), p("input", "missing_field"));
        for input in [
            json!(""),
            json!([]),
            json!(["a", ""]),
            json!([[]]),
            json!([1, "a"]),
            json!([-1]),
            json!({"a": 1}),
            json!(7),
        ] {
            assert_eq!(
                refused(json!({"model": "m", "input": input})),
                p("input", "invalid_value"),
                "{input}"
            );
        }
        let many = vec!["a"; MAX_EMBEDDING_INPUTS + 1];
        assert_eq!(
            refused(json!({"model": "m", "input": many})),
            p("input", "invalid_value")
        );
        assert!(ok(json!({"model": "m", "input": vec!["a"; MAX_EMBEDDING_INPUTS]})).is_ok());
        assert!(ok(json!({"model": "m", "input": vec![7; MAX_EMBEDDING_INPUTS + 1]})).is_ok());
        assert_eq!(
            refused(json!({"model": "m", "input": "x", "encoding_format": "hex"})),
            p("encoding_format", "invalid_value")
        );
        for (k, v) in [
            ("stream", json!(true)),
            ("max_tokens", json!(3)),
            ("messages", json!([])),
        ] {
            let mut b = json!({"model": "m", "input": "x"});
            b[k] = v;
            assert_eq!(refused(b), p(k, "unknown_field"));
        }
        assert_eq!(
            refused(json!({"model": "m", "input": "x", "dimensions": 0})),
            p("dimensions", "invalid_value")
        );
        let b = json!({"model": "m", "input": ["ab", "cd"]});
        assert_eq!(
            prompt_text(Endpoint::Embeddings, b.as_object().unwrap()),
            "ab\ncd\n"
        );
    }
}
