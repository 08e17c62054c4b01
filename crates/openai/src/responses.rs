//! OpenAI's Responses API (`POST /v1/responses`), the stateless subset, mapped onto chat
//! completions and back.
//!
//! - [`to_chat`]: a Responses request becomes a chat completion request: `instructions` is a
//!   system message first, `input` (a string, or message / `function_call` /
//!   `function_call_output` items whose content is a string or `input_text` / `output_text` /
//!   `input_image` parts) becomes `messages`, `max_output_tokens` is `max_tokens`,
//!   `text.format` is `response_format`, and Responses' flat function tools are chat's nested
//!   ones. Nothing is stored: `store: true`, `previous_response_id`, `conversation` and
//!   `background: true` are 400s naming the field, as is any field not listed here. The
//!   Cocoon body extensions (`max_coefficient`, `timeout`, `request_guid`, `enable_debug`)
//!   pass through for the client to read.
//! - [`from_chat`]: a whole chat completion becomes a `response` object (one `message` item
//!   with `output_text`, and a `function_call` item per tool call; `status` `incomplete` with
//!   `incomplete_details` when the token limit cut it; usage in the Responses names).
//! - [`StreamMapper`]: a chat completion stream (SSE bytes, any chunking) becomes the
//!   Responses event stream (`event:` lines, `sequence_number`), chunk by chunk. Its state is
//!   the answer's text and tool-call arguments so far, which the closing events repeat as
//!   OpenAI's do; past its byte limit the stream ends with an `error` event.
//! - [`rename_param`]: a chat-side error's `param` in the Responses request's terms.

use serde_json::{Map, Value, json};

use crate::error::{ApiError, ErrorKind};
use crate::sse::SseParser;
use crate::usage::Usage;

/// Fields a Responses request may carry that have no effect here (or whose only value we
/// accept is the default, checked in [`to_chat`]).
const IGNORED: &[&str] = &[
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "stream_options",
    "reasoning",
    "truncation",
    "include",
    "max_tool_calls",
];

/// The Cocoon body extensions, passed through to the chat request for the client to read.
const EXTENSIONS: &[&str] = &["max_coefficient", "timeout", "request_guid", "enable_debug"];

/// What the answer's `response` object repeats from the request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Echo {
    /// `instructions`.
    pub instructions: Option<String>,
    /// `max_output_tokens`.
    pub max_output_tokens: Option<u64>,
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// `tools`, in the Responses shape.
    pub tools: Vec<Value>,
    /// `tool_choice` (`auto` when absent).
    pub tool_choice: Value,
    /// `parallel_tool_calls` (true when absent).
    pub parallel_tool_calls: bool,
    /// `text` (`{"format":{"type":"text"}}` when absent).
    pub text: Value,
    /// `metadata` (`{}` when absent).
    pub metadata: Value,
    /// `user`.
    pub user: Option<String>,
}

/// A Responses request mapped onto chat completions.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    /// The chat completion request body.
    pub body: Value,
    /// Whether the answer is streamed.
    pub stream: bool,
    /// What the answer repeats from the request.
    pub echo: Echo,
}

fn bad(param: &str, code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::invalid(param, code, msg)
}

fn bad_type(param: &str, what: &str) -> ApiError {
    bad(param, "invalid_type", format!("{param} must be {what}"))
}

/// Maps a Responses request body (already parsed) onto a chat completion request.
pub fn to_chat(body: &Value) -> Result<ChatRequest, ApiError> {
    let Value::Object(req) = body else {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "request body must be a JSON object",
        ));
    };
    let mut chat = Map::new();
    let mut echo = Echo {
        tool_choice: json!("auto"),
        parallel_tool_calls: true,
        text: json!({"format": {"type": "text"}}),
        metadata: json!({}),
        ..Echo::default()
    };
    let mut messages = Vec::new();
    let mut stream = false;
    let mut input = None;
    for (key, v) in req {
        match key.as_str() {
            "model" => {
                chat.insert("model".into(), v.clone());
            }
            "input" => input = Some(v),
            "instructions" => match v {
                Value::Null => {}
                Value::String(s) => {
                    echo.instructions = Some(s.clone());
                    messages.insert(0, json!({"role": "system", "content": s}));
                }
                _ => return Err(bad_type(key, "a string")),
            },
            "max_output_tokens" => match v {
                Value::Null => {}
                Value::Number(n) if n.as_u64().is_some_and(|n| n >= 1) => {
                    echo.max_output_tokens = n.as_u64();
                    chat.insert("max_tokens".into(), v.clone());
                }
                _ => return Err(bad_type(key, "a positive integer")),
            },
            "temperature" | "top_p" => match v {
                Value::Null => {}
                Value::Number(n) => {
                    if key == "temperature" {
                        echo.temperature = n.as_f64();
                    } else {
                        echo.top_p = n.as_f64();
                    }
                    chat.insert(key.clone(), v.clone());
                }
                _ => return Err(bad_type(key, "a number")),
            },
            "stream" => match v {
                Value::Null => {}
                Value::Bool(b) => {
                    stream = *b;
                    chat.insert("stream".into(), v.clone());
                }
                _ => return Err(bad_type(key, "a boolean")),
            },
            "tools" => match v {
                Value::Null => {}
                Value::Array(a) => {
                    let mut out = Vec::with_capacity(a.len());
                    for (i, t) in a.iter().enumerate() {
                        out.push(tool(&format!("tools[{i}]"), t)?);
                    }
                    echo.tools.clone_from(a);
                    if !out.is_empty() {
                        chat.insert("tools".into(), Value::Array(out));
                    }
                }
                _ => return Err(bad_type(key, "an array")),
            },
            "tool_choice" => {
                echo.tool_choice = v.clone();
                chat.insert("tool_choice".into(), tool_choice(v)?);
            }
            "parallel_tool_calls" => match v {
                Value::Null => {}
                Value::Bool(b) => {
                    echo.parallel_tool_calls = *b;
                    chat.insert(key.clone(), v.clone());
                }
                _ => return Err(bad_type(key, "a boolean")),
            },
            "text" => match v {
                Value::Null => {}
                Value::Object(t) => {
                    for (k, f) in t {
                        match k.as_str() {
                            "format" => {
                                if let Some(rf) = text_format(f)? {
                                    chat.insert("response_format".into(), rf);
                                }
                            }
                            // Only the default verbosity is served.
                            "verbosity" if f.is_null() || f == "medium" => {}
                            _ => {
                                return Err(bad(
                                    &format!("text.{k}"),
                                    "unsupported_parameter",
                                    format!("text.{k} is not supported"),
                                ));
                            }
                        }
                    }
                    echo.text = v.clone();
                }
                _ => return Err(bad_type(key, "an object")),
            },
            "user" => match v {
                Value::Null => {}
                Value::String(s) => {
                    echo.user = Some(s.clone());
                    chat.insert("user".into(), v.clone());
                }
                _ => return Err(bad_type(key, "a string")),
            },
            "metadata" => {
                if v.is_object() {
                    echo.metadata = v.clone();
                } else if !v.is_null() {
                    return Err(bad_type(key, "an object"));
                }
            }
            "store" => match v {
                Value::Null | Value::Bool(false) => {}
                _ => {
                    return Err(bad(
                        key,
                        "unsupported_parameter",
                        "responses are not stored here: store must be false",
                    ));
                }
            },
            "background" => match v {
                Value::Null | Value::Bool(false) => {}
                _ => {
                    return Err(bad(
                        key,
                        "unsupported_parameter",
                        "background responses are not supported",
                    ));
                }
            },
            "previous_response_id" | "conversation" | "prompt" if v.is_null() => {}
            "previous_response_id" | "conversation" | "prompt" => {
                return Err(bad(
                    key,
                    "unsupported_parameter",
                    format!("{key} is not supported: responses are not stored here"),
                ));
            }
            "top_logprobs" if v.is_null() || v == 0 => {}
            k if IGNORED.contains(&k) => {}
            k if EXTENSIONS.contains(&k) => {
                chat.insert(key.clone(), v.clone());
            }
            _ => {
                return Err(bad(
                    key,
                    "unknown_parameter",
                    format!("unknown or unsupported parameter {key:?}"),
                ));
            }
        }
    }
    let Some(input) = input else {
        return Err(bad("input", "missing_field", "input is required"));
    };
    input_messages(input, &mut messages)?;
    chat.insert("messages".into(), Value::Array(messages));
    Ok(ChatRequest {
        body: Value::Object(chat),
        stream,
        echo,
    })
}

/// A Responses function tool (`{"type":"function","name",…}`) as chat's
/// (`{"type":"function","function":{"name",…}}`).
fn tool(param: &str, t: &Value) -> Result<Value, ApiError> {
    let Value::Object(o) = t else {
        return Err(bad_type(param, "an object"));
    };
    match o.get("type").and_then(Value::as_str) {
        Some("function") => {}
        Some(other) => {
            return Err(bad(
                &format!("{param}.type"),
                "unsupported_parameter",
                format!("{other} tools are not supported; only function tools"),
            ));
        }
        None => {
            return Err(bad(
                &format!("{param}.type"),
                "missing_field",
                "type is required",
            ));
        }
    }
    let mut f = Map::new();
    for k in ["name", "description", "parameters", "strict"] {
        if let Some(v) = o.get(k).filter(|v| !v.is_null()) {
            f.insert(k.into(), v.clone());
        }
    }
    if !f.contains_key("name") {
        return Err(bad(
            &format!("{param}.name"),
            "missing_field",
            "a function tool needs a name",
        ));
    }
    Ok(json!({"type": "function", "function": f}))
}

fn tool_choice(v: &Value) -> Result<Value, ApiError> {
    match v {
        Value::String(_) | Value::Null => Ok(v.clone()),
        Value::Object(o) => match (o.get("type").and_then(Value::as_str), o.get("name")) {
            (Some("function"), Some(Value::String(n))) => {
                Ok(json!({"type": "function", "function": {"name": n}}))
            }
            _ => Err(bad(
                "tool_choice",
                "unsupported_parameter",
                "tool_choice must be none, auto, required or {\"type\":\"function\",\"name\":…}",
            )),
        },
        _ => Err(bad_type("tool_choice", "a string or an object")),
    }
}

/// `text.format` as chat's `response_format` (none for plain text).
fn text_format(f: &Value) -> Result<Option<Value>, ApiError> {
    let Value::Object(o) = f else {
        return if f.is_null() {
            Ok(None)
        } else {
            Err(bad_type("text.format", "an object"))
        };
    };
    match o.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut s = Map::new();
            for k in ["name", "schema", "strict", "description"] {
                if let Some(v) = o.get(k).filter(|v| !v.is_null()) {
                    s.insert(k.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": s})))
        }
        _ => Err(bad(
            "text.format.type",
            "invalid_value",
            "text.format.type must be text, json_object or json_schema",
        )),
    }
}

fn input_messages(input: &Value, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let items = match input {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Value::Array(a) if !a.is_empty() => a,
        Value::Array(_) => return Err(bad("input", "invalid_value", "input must not be empty")),
        _ => return Err(bad_type("input", "a string or an array of input items")),
    };
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        let Value::Object(o) = item else {
            return Err(bad_type(&param, "an object"));
        };
        let kind = o.get("type").and_then(Value::as_str).unwrap_or("message");
        match kind {
            "message" => out.push(message(&param, o)?),
            "function_call" => {
                let field = |k: &str| {
                    o.get(k).and_then(Value::as_str).ok_or_else(|| {
                        bad(
                            &format!("{param}.{k}"),
                            "missing_field",
                            format!("{param}.{k} must be a string"),
                        )
                    })
                };
                let call = json!({
                    "id": field("call_id")?,
                    "type": "function",
                    "function": {"name": field("name")?, "arguments": field("arguments")?},
                });
                // Consecutive calls are one assistant turn, as chat completions give them.
                if let Some(Value::Object(last)) = out.last_mut()
                    && last.get("role").and_then(Value::as_str) == Some("assistant")
                    && let Some(Value::Array(calls)) = last.get_mut("tool_calls")
                {
                    calls.push(call);
                } else {
                    out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
                }
            }
            "function_call_output" => {
                let call_id = o.get("call_id").and_then(Value::as_str).ok_or_else(|| {
                    bad(
                        &format!("{param}.call_id"),
                        "missing_field",
                        format!("{param}.call_id must be a string"),
                    )
                })?;
                let output = match o.get("output") {
                    Some(Value::String(s)) => Value::String(s.clone()),
                    Some(Value::Array(parts)) => {
                        Value::Array(content_parts(&format!("{param}.output"), parts, "tool")?)
                    }
                    _ => return Err(bad_type(&format!("{param}.output"), "a string")),
                };
                out.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            other => {
                return Err(bad(
                    &format!("{param}.type"),
                    "unsupported_parameter",
                    format!("input items of type {other} are not supported"),
                ));
            }
        }
    }
    Ok(())
}

fn message(param: &str, o: &Map<String, Value>) -> Result<Value, ApiError> {
    let role = match o.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "system" | "developer" | "assistant")) => r,
        Some(_) => {
            return Err(bad(
                &format!("{param}.role"),
                "invalid_value",
                "role must be user, system, developer or assistant",
            ));
        }
        None => {
            return Err(bad(
                &format!("{param}.role"),
                "missing_field",
                "role is required",
            ));
        }
    };
    let cparam = format!("{param}.content");
    let content = match o.get("content") {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Array(parts)) => Value::Array(content_parts(&cparam, parts, role)?),
        Some(Value::Null) | None => {
            return Err(bad(
                &cparam,
                "missing_field",
                format!("{cparam} is required"),
            ));
        }
        Some(_) => return Err(bad_type(&cparam, "a string or an array of content parts")),
    };
    Ok(json!({"role": role, "content": content}))
}

fn content_parts(param: &str, parts: &[Value], role: &str) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let pp = format!("{param}[{j}]");
        let ty = p.get("type").and_then(Value::as_str);
        match ty {
            Some("input_text" | "output_text" | "refusal") => {
                let text = p
                    .get("text")
                    .or_else(|| p.get("refusal"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad_type(&format!("{pp}.text"), "a string"))?;
                out.push(json!({"type": "text", "text": text}));
            }
            // Passed on as chat's image part: a text-only model refuses it with a 400.
            Some("input_image") if role != "assistant" => {
                let url = p
                    .get("image_url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad_type(&format!("{pp}.image_url"), "a string"))?;
                let mut image = json!({"url": url});
                if let Some(d) = p.get("detail").filter(|d| d.is_string()) {
                    image["detail"] = d.clone();
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            _ => {
                return Err(bad(
                    &format!("{pp}.type"),
                    "unsupported_parameter",
                    format!(
                        "content parts of type {} are not supported here",
                        ty.unwrap_or("(none)")
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// A chat-side error's `param` in the Responses request's terms.
pub fn rename_param(param: &str) -> String {
    let head = param.split(['.', '[']).next().unwrap_or(param);
    match head {
        "max_tokens" | "max_completion_tokens" => "max_output_tokens".into(),
        "response_format" => "text.format".into(),
        "messages" => "input".into(),
        "logprobs" => "top_logprobs".into(),
        // Responses' function tools are flat: `tools[i].name`, not `tools[i].function.name`.
        "tools" => param.replacen(".function.", ".", 1),
        _ => param.into(),
    }
}

/// Ids for one response: `resp_<id>`, `msg_<id>`, `fc_<id>_<n>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ids {
    /// The unique part (hex, chosen by the caller).
    pub id: String,
    /// Unix seconds when the response was created.
    pub created_at: u64,
}

impl Ids {
    fn response(&self) -> String {
        format!("resp_{}", self.id)
    }
    fn message(&self) -> String {
        format!("msg_{}", self.id)
    }
    fn call(&self, n: usize) -> String {
        format!("fc_{}_{n}", self.id)
    }
}

/// The Responses `usage` object for a chat usage (the `*_total_cost` figures the client adds
/// are kept).
pub fn usage(u: &Value) -> Value {
    let parsed = Usage::from_json(u).unwrap_or_default();
    let mut out = json!({
        "input_tokens": parsed.prompt_tokens,
        "input_tokens_details": {"cached_tokens": parsed.cached_tokens()},
        "output_tokens": parsed.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": parsed.reasoning_tokens()},
        "total_tokens": parsed.total_tokens,
    });
    if let (Some(o), Some(src)) = (out.as_object_mut(), u.as_object()) {
        for (k, v) in src {
            if k.ends_with("_cost") {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// `status` and `incomplete_details` for a chat `finish_reason`.
fn status_of(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// The `response` object around `output`.
fn response_object(
    ids: &Ids,
    echo: &Echo,
    model: &Value,
    status: &str,
    incomplete: Value,
    output: Vec<Value>,
    usage: Value,
) -> Value {
    json!({
        "id": ids.response(),
        "object": "response",
        "created_at": ids.created_at,
        "status": status,
        "background": false,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": echo.instructions,
        "max_output_tokens": echo.max_output_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": echo.parallel_tool_calls,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "store": false,
        "temperature": echo.temperature,
        "text": echo.text,
        "tool_choice": echo.tool_choice,
        "tools": echo.tools,
        "top_p": echo.top_p,
        "truncation": "disabled",
        "usage": usage,
        "user": echo.user,
        "metadata": echo.metadata,
    })
}

fn message_item(ids: &Ids, status: &str, text: Option<&str>) -> Value {
    let content = match text {
        Some(t) => json!([{"type": "output_text", "text": t, "annotations": [], "logprobs": []}]),
        None => json!([]),
    };
    json!({
        "id": ids.message(),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    })
}

fn call_item(ids: &Ids, n: usize, status: &str, call_id: &str, name: &str, args: &str) -> Value {
    json!({
        "id": ids.call(n),
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": args,
    })
}

/// A whole chat completion (its JSON, as the client returns it) as a `response` object.
pub fn from_chat(chat: &Value, echo: &Echo, ids: &Ids) -> Result<Value, ApiError> {
    let choice = chat["choices"]
        .get(0)
        .ok_or_else(|| ApiError::new(ErrorKind::Upstream, "the engine's answer has no choice"))?;
    let msg = &choice["message"];
    let mut output = Vec::new();
    if let Some(text) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        output.push(message_item(ids, "completed", Some(text)));
    }
    if let Some(calls) = msg["tool_calls"].as_array() {
        for (n, c) in calls.iter().enumerate() {
            output.push(call_item(
                ids,
                n,
                "completed",
                c["id"].as_str().unwrap_or_default(),
                c["function"]["name"].as_str().unwrap_or_default(),
                c["function"]["arguments"].as_str().unwrap_or_default(),
            ));
        }
    }
    if output.is_empty() {
        output.push(message_item(ids, "completed", Some("")));
    }
    let (status, incomplete) = status_of(choice["finish_reason"].as_str());
    let mut r = response_object(
        ids,
        echo,
        &chat["model"],
        status,
        incomplete,
        output,
        usage(&chat["usage"]),
    );
    // COCOON's debug object (`enable_debug`) stays beside the answer.
    if let (Some(d), Some(o)) = (chat.get("debug"), r.as_object_mut()) {
        o.insert("debug".into(), d.clone());
    }
    Ok(r)
}

/// A tool call being streamed.
#[derive(Debug)]
struct Call {
    output_index: usize,
    call_id: String,
    name: String,
    arguments: String,
}

/// Turns a chat completion stream into the Responses event stream, chunk by chunk.
#[derive(Debug)]
pub struct StreamMapper {
    ids: Ids,
    echo: Echo,
    model: Value,
    parser: SseParser,
    seq: u64,
    started: bool,
    next_output: usize,
    /// The message item's output index and its text so far, once text arrived.
    text: Option<(usize, String)>,
    /// Tool calls by their chat index.
    calls: Vec<Call>,
    finish: Option<String>,
    usage: Option<Value>,
    held: usize,
    limit: usize,
    ended: bool,
}

/// Most tool calls one streamed answer may make.
const MAX_CALLS: usize = 128;

impl StreamMapper {
    /// A mapper for one answer; `limit` bounds the text and arguments it holds (bytes).
    pub fn new(ids: Ids, echo: Echo, model: Value, limit: usize) -> StreamMapper {
        StreamMapper {
            ids,
            echo,
            model,
            parser: SseParser::new(),
            seq: 0,
            started: false,
            next_output: 0,
            text: None,
            calls: Vec::new(),
            finish: None,
            usage: None,
            held: 0,
            limit,
            ended: false,
        }
    }

    /// True once the stream's last event was produced.
    pub fn ended(&self) -> bool {
        self.ended
    }

    fn event(&mut self, out: &mut String, ty: &str, mut data: Value) {
        if let Some(o) = data.as_object_mut() {
            o.insert("type".into(), json!(ty));
            o.insert("sequence_number".into(), json!(self.seq));
        }
        self.seq += 1;
        out.push_str("event: ");
        out.push_str(ty);
        out.push_str("\ndata: ");
        out.push_str(&data.to_string());
        out.push_str("\n\n");
    }

    fn snapshot(&self, status: &str, incomplete: Value, output: Vec<Value>, usage: Value) -> Value {
        response_object(
            &self.ids,
            &self.echo,
            &self.model,
            status,
            incomplete,
            output,
            usage,
        )
    }

    /// The opening events (`response.created`, `response.in_progress`); idempotent.
    pub fn start(&mut self) -> String {
        let mut out = String::new();
        if !self.started {
            self.started = true;
            let r = self.snapshot("in_progress", Value::Null, vec![], Value::Null);
            self.event(&mut out, "response.created", json!({"response": r}));
            self.event(&mut out, "response.in_progress", json!({"response": r}));
        }
        out
    }

    /// Feeds bytes of the chat stream; returns the Responses events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        let mut out = self.start();
        if self.ended {
            return out;
        }
        let events = match self.parser.push(bytes) {
            Ok(e) => e,
            Err(e) => {
                out.push_str(&self.fail(&ApiError::new(ErrorKind::Upstream, e.to_string())));
                return out;
            }
        };
        for ev in events {
            if self.ended {
                break;
            }
            if ev.is_done() {
                out.push_str(&self.finish());
                break;
            }
            let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
                continue;
            };
            if let Some(e) = v.get("error").filter(|e| e.is_object()) {
                let mut err = ApiError::new(
                    ErrorKind::Upstream,
                    e["message"].as_str().unwrap_or("the engine failed"),
                );
                err.param = e["param"].as_str().map(str::to_owned);
                out.push_str(&self.fail(&err));
                break;
            }
            self.chunk(&v, &mut out);
        }
        out
    }

    /// Every event of a whole chat completion (its JSON), for a stream asked of an engine
    /// that answered whole.
    pub fn push_whole(&mut self, chat: &Value) -> String {
        let mut out = self.start();
        if self.ended {
            return out;
        }
        let choice = &chat["choices"][0];
        let msg = &choice["message"];
        let mut delta = Map::new();
        if let Some(t) = msg.get("content").filter(|t| t.is_string()) {
            delta.insert("content".into(), t.clone());
        }
        if let Some(calls) = msg["tool_calls"].as_array() {
            let indexed = calls.iter().enumerate().map(|(i, c)| {
                let mut c = c.clone();
                c["index"] = json!(i);
                c
            });
            delta.insert("tool_calls".into(), Value::Array(indexed.collect()));
        }
        let chunk = json!({
            "model": chat["model"],
            "choices": [{"index": 0, "delta": delta, "finish_reason": choice["finish_reason"]}],
            "usage": chat["usage"],
        });
        self.chunk(&chunk, &mut out);
        out.push_str(&self.finish());
        out
    }

    fn hold(&mut self, n: usize) -> bool {
        self.held = self.held.saturating_add(n);
        self.held <= self.limit
    }

    fn chunk(&mut self, v: &Value, out: &mut String) {
        if let Some(m) = v.get("model").filter(|m| m.is_string())
            && self.model.is_null()
        {
            self.model = m.clone();
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = v["choices"].get(0) else {
            return;
        };
        let delta = &choice["delta"];
        if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            if !self.hold(t.len()) {
                out.push_str(&self.over_limit());
                return;
            }
            let item_id = self.ids.message();
            let index = match &self.text {
                Some((i, _)) => *i,
                None => {
                    let i = self.next_output;
                    self.next_output += 1;
                    self.text = Some((i, String::new()));
                    let item = message_item(&self.ids, "in_progress", None);
                    self.event(
                        out,
                        "response.output_item.added",
                        json!({"output_index": i, "item": item}),
                    );
                    self.event(
                        out,
                        "response.content_part.added",
                        json!({"item_id": item_id, "output_index": i, "content_index": 0,
                               "part": {"type": "output_text", "text": "", "annotations": []}}),
                    );
                    i
                }
            };
            if let Some((_, s)) = &mut self.text {
                s.push_str(t);
            }
            self.event(
                out,
                "response.output_text.delta",
                json!({"item_id": item_id, "output_index": index, "content_index": 0,
                       "delta": t, "logprobs": []}),
            );
        }
        if let Some(calls) = delta["tool_calls"].as_array() {
            for c in calls {
                if self.ended {
                    return;
                }
                self.call_delta(c, out);
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_owned());
        }
    }

    fn call_delta(&mut self, c: &Value, out: &mut String) {
        let n = c["index"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(self.calls.len().saturating_sub(1));
        let name = c["function"]["name"].as_str().unwrap_or_default();
        let args = c["function"]["arguments"].as_str().unwrap_or_default();
        if !self.hold(name.len() + args.len()) {
            out.push_str(&self.over_limit());
            return;
        }
        if n >= self.calls.len() {
            if n >= MAX_CALLS || n != self.calls.len() {
                out.push_str(&self.fail(&ApiError::new(
                    ErrorKind::Upstream,
                    "the engine streamed tool calls out of order or too many",
                )));
                return;
            }
            let call = Call {
                output_index: self.next_output,
                call_id: c["id"].as_str().unwrap_or_default().to_owned(),
                name: name.to_owned(),
                arguments: String::new(),
            };
            self.next_output += 1;
            let item = call_item(&self.ids, n, "in_progress", &call.call_id, &call.name, "");
            let index = call.output_index;
            self.calls.push(call);
            self.event(
                out,
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            );
        } else if let Some(call) = self.calls.get_mut(n) {
            call.name.push_str(name);
        }
        if !args.is_empty()
            && let Some(call) = self.calls.get_mut(n)
        {
            call.arguments.push_str(args);
            let index = call.output_index;
            let item_id = self.ids.call(n);
            self.event(
                out,
                "response.function_call_arguments.delta",
                json!({"item_id": item_id, "output_index": index, "delta": args}),
            );
        }
    }

    fn over_limit(&mut self) -> String {
        let e = ApiError::new(
            ErrorKind::Upstream,
            format!(
                "the answer is over {} bytes; ask for fewer output tokens",
                self.limit
            ),
        );
        self.fail(&e)
    }

    /// The event that ends a failed stream (an `error` event in OpenAI's shape, with the
    /// error body's `error` member beside it so that SDKs raise it).
    pub fn fail(&mut self, e: &ApiError) -> String {
        let mut out = self.start();
        if self.ended {
            return out;
        }
        self.ended = true;
        let body = e.to_json();
        self.event(
            &mut out,
            "error",
            json!({
                "code": e.code.unwrap_or(e.kind.type_str()),
                "message": e.message,
                "param": e.param,
                "error": body["error"],
            }),
        );
        out
    }

    /// The closing events (after the chat stream's `[DONE]`, or its clean end).
    pub fn finish(&mut self) -> String {
        let mut out = self.start();
        if self.ended {
            return out;
        }
        self.ended = true;
        let mut items: Vec<(usize, Value)> = Vec::new();
        if let Some((i, text)) = self.text.take() {
            let item_id = self.ids.message();
            self.event(
                &mut out,
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": i, "content_index": 0,
                       "text": text, "logprobs": []}),
            );
            self.event(
                &mut out,
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": i, "content_index": 0,
                       "part": {"type": "output_text", "text": text, "annotations": []}}),
            );
            items.push((i, message_item(&self.ids, "completed", Some(&text))));
        }
        for (n, call) in std::mem::take(&mut self.calls).into_iter().enumerate() {
            self.event(
                &mut out,
                "response.function_call_arguments.done",
                json!({"item_id": self.ids.call(n), "output_index": call.output_index,
                       "name": call.name, "arguments": call.arguments}),
            );
            let item = call_item(
                &self.ids,
                n,
                "completed",
                &call.call_id,
                &call.name,
                &call.arguments,
            );
            items.push((call.output_index, item));
        }
        items.sort_by_key(|(i, _)| *i);
        for (i, item) in &items {
            self.event(
                &mut out,
                "response.output_item.done",
                json!({"output_index": i, "item": item}),
            );
        }
        let output: Vec<Value> = items.into_iter().map(|(_, item)| item).collect();
        let (status, incomplete) = status_of(self.finish.as_deref());
        let u = usage(self.usage.as_ref().unwrap_or(&Value::Null));
        let r = self.snapshot(status, incomplete, output, u);
        let ty = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.event(&mut out, ty, json!({"response": r}));
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sse::Event;

    fn ids() -> Ids {
        Ids {
            id: "ab12".into(),
            created_at: 1_700_000_000,
        }
    }

    fn err(body: Value) -> ApiError {
        to_chat(&body).unwrap_err()
    }

    #[test]
    fn a_string_input_with_instructions_is_a_system_then_user_chat() {
        let r = to_chat(&json!({
            "model": "m", "input": "Hello", "instructions": "Be brief.",
            "max_output_tokens": 16, "temperature": 0.5, "top_p": 0.9, "stream": true,
            "metadata": {"a": "b"}, "store": false, "user": "u1", "request_guid": "g",
        }))
        .unwrap();
        assert!(r.stream);
        assert_eq!(
            r.body,
            json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hello"},
                ],
                "max_tokens": 16, "temperature": 0.5, "top_p": 0.9, "stream": true,
                "user": "u1", "request_guid": "g",
            })
        );
        assert_eq!(r.echo.instructions.as_deref(), Some("Be brief."));
        assert_eq!(r.echo.max_output_tokens, Some(16));
        assert_eq!(r.echo.metadata, json!({"a": "b"}));
    }

    #[test]
    fn input_items_tools_and_text_format_map_onto_chat() {
        let r = to_chat(&json!({
            "model": "m",
            "input": [
                {"role": "developer", "content": "rules"},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "a"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"},
                ]},
                {"type": "message", "role": "assistant", "content": [
                    {"type": "output_text", "text": "b", "annotations": []},
                ]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"x\":1}"},
                {"type": "function_call_output", "call_id": "c1", "output": "42"},
            ],
            "tools": [{"type": "function", "name": "f", "description": "d",
                       "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "f"},
            "parallel_tool_calls": false,
            "text": {"format": {"type": "json_schema", "name": "s",
                                "schema": {"type": "object"}, "strict": true}},
        }))
        .unwrap();
        assert!(!r.stream);
        assert_eq!(
            r.body["messages"],
            json!([
                {"role": "developer", "content": "rules"},
                {"role": "user", "content": [
                    {"type": "text", "text": "a"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "low"}},
                ]},
                {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{\"x\":1}"}},
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ])
        );
        assert_eq!(
            r.body["tools"],
            json!([{"type": "function", "function": {"name": "f", "description": "d",
                    "parameters": {"type": "object"}, "strict": true}}])
        );
        assert_eq!(
            r.body["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert_eq!(r.body["parallel_tool_calls"], false);
        assert_eq!(
            r.body["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "s",
                   "schema": {"type": "object"}, "strict": true}})
        );
        let plain = to_chat(&json!({"model": "m", "input": "x",
                                    "text": {"format": {"type": "text"}}}))
        .unwrap();
        assert!(plain.body.get("response_format").is_none());
        let obj = to_chat(&json!({"model": "m", "input": "x",
                                  "text": {"format": {"type": "json_object"}}}))
        .unwrap();
        assert_eq!(obj.body["response_format"], json!({"type": "json_object"}));
    }

    #[test]
    fn stored_state_and_unknown_fields_are_400s_naming_the_field() {
        let cases = [
            (json!({"model": "m", "input": "x", "store": true}), "store"),
            (
                json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (
                json!({"model": "m", "input": "x", "conversation": "c"}),
                "conversation",
            ),
            (
                json!({"model": "m", "input": "x", "background": true}),
                "background",
            ),
            (
                json!({"model": "m", "input": "x", "frobnicate": 1}),
                "frobnicate",
            ),
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": []}), "input"),
            (json!({"model": "m", "input": 3}), "input"),
            (
                json!({"model": "m", "input": [{"role": "tool", "content": "x"}]}),
                "input[0].role",
            ),
            (
                json!({"model": "m", "input": [{"role": "user"}]}),
                "input[0].content",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file"}]}]}),
                "input[0].content[0].type",
            ),
            (
                json!({"model": "m", "input": [{"type": "reasoning", "summary": []}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}),
                "text.format.type",
            ),
            (
                json!({"model": "m", "input": "x", "max_output_tokens": 0}),
                "max_output_tokens",
            ),
            (
                json!({"model": "m", "input": "x", "instructions": 1}),
                "instructions",
            ),
        ];
        for (body, param) in cases {
            let e = err(body.clone());
            assert_eq!(e.status(), 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
        assert_eq!(err(json!([1])).status(), 400);
    }

    #[test]
    fn chat_params_read_as_responses_params() {
        assert_eq!(rename_param("max_tokens"), "max_output_tokens");
        assert_eq!(rename_param("messages[1].content"), "input");
        assert_eq!(rename_param("response_format"), "text.format");
        assert_eq!(rename_param("temperature"), "temperature");
        assert_eq!(
            rename_param("tools[2].function.parameters"),
            "tools[2].parameters"
        );
        assert_eq!(rename_param("tool_choice"), "tool_choice");
    }

    fn echo() -> Echo {
        to_chat(&json!({"model": "m", "input": "x", "instructions": "i",
                        "max_output_tokens": 8}))
        .unwrap()
        .echo
    }

    #[test]
    fn a_whole_chat_answer_is_a_response_object() {
        let chat = json!({
            "id": "c", "object": "chat.completion", "created": 5, "model": "Smol",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Hi"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16,
                      "prompt_tokens_details": {"cached_tokens": 3},
                      "prompt_total_cost": 7, "total_cost": 9},
        });
        let r = from_chat(&chat, &echo(), &ids()).unwrap();
        assert_eq!(r["id"], "resp_ab12");
        assert_eq!(r["object"], "response");
        assert_eq!(r["created_at"], 1_700_000_000);
        assert_eq!(r["status"], "completed");
        assert_eq!(r["incomplete_details"], Value::Null);
        assert_eq!(r["model"], "Smol");
        assert_eq!(r["instructions"], "i");
        assert_eq!(r["max_output_tokens"], 8);
        assert_eq!(
            r["output"],
            json!([{"id": "msg_ab12", "type": "message", "status": "completed",
                    "role": "assistant", "content": [{"type": "output_text", "text": "Hi",
                    "annotations": [], "logprobs": []}]}])
        );
        assert_eq!(
            r["usage"],
            json!({"input_tokens": 12, "input_tokens_details": {"cached_tokens": 3},
                   "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0},
                   "total_tokens": 16, "prompt_total_cost": 7, "total_cost": 9})
        );
        // Cut by the limit: incomplete; tool calls are function_call items.
        let chat = json!({
            "model": "Smol",
            "choices": [{"index": 0, "finish_reason": "length", "message": {
                "role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "f", "arguments": "{\"a\":"}}]}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 8, "total_tokens": 9},
        });
        let r = from_chat(&chat, &echo(), &ids()).unwrap();
        assert_eq!(r["status"], "incomplete");
        assert_eq!(
            r["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(
            r["output"],
            json!([{"id": "fc_ab12_0", "type": "function_call", "status": "completed",
                    "call_id": "call_1", "name": "f", "arguments": "{\"a\":"}])
        );
        assert_eq!(
            from_chat(&json!({"choices": []}), &echo(), &ids())
                .unwrap_err()
                .status(),
            502
        );
        // COCOON's debug object (enable_debug) stays beside the answer.
        let mut debugged = chat.clone();
        debugged["debug"] = json!({"proxy": 1});
        let r = from_chat(&debugged, &echo(), &ids()).unwrap();
        assert_eq!(r["debug"], json!({"proxy": 1}));
    }

    /// A recorded chat stream (the embedded engine's shape: role first, usage in its own
    /// last chunk).
    const CHAT_STREAM: &str = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"Smol\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"Smol\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"Smol\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo é\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"Smol\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"Smol\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12,\"total_cost\":36}}\n\n",
        "data: [DONE]\n\n",
    );

    fn events(s: &str) -> Vec<(String, Value)> {
        let mut p = SseParser::new();
        p.push(s.as_bytes())
            .unwrap()
            .into_iter()
            .map(|Event { event, data, .. }| (event.unwrap(), serde_json::from_str(&data).unwrap()))
            .collect()
    }

    fn mapper() -> StreamMapper {
        StreamMapper::new(ids(), echo(), json!("Smol"), 1 << 20)
    }

    #[test]
    fn every_stream_event_from_a_recorded_chat_stream() {
        // Byte by byte: the same events as in one piece.
        let mut m = mapper();
        let mut out = String::new();
        for b in CHAT_STREAM.as_bytes() {
            out.push_str(&m.push(std::slice::from_ref(b)));
        }
        assert!(m.ended());
        let mut whole = mapper();
        assert_eq!(whole.push(CHAT_STREAM.as_bytes()), out);
        let ev = events(&out);
        let types: Vec<&str> = ev.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            types,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (n, (t, v)) in ev.iter().enumerate() {
            assert_eq!(v["type"], t.as_str());
            assert_eq!(v["sequence_number"], n);
        }
        assert_eq!(ev[0].1["response"]["status"], "in_progress");
        assert_eq!(ev[0].1["response"]["id"], "resp_ab12");
        assert_eq!(ev[0].1["response"]["output"], json!([]));
        assert_eq!(ev[2].1["item"]["id"], "msg_ab12");
        assert_eq!(ev[2].1["item"]["status"], "in_progress");
        assert_eq!(ev[3].1["part"]["text"], "");
        assert_eq!(ev[4].1["delta"], "Hel");
        assert_eq!(ev[5].1["delta"], "lo é");
        assert_eq!(ev[5].1["item_id"], "msg_ab12");
        assert_eq!(ev[6].1["text"], "Hello é");
        assert_eq!(ev[7].1["part"]["text"], "Hello é");
        assert_eq!(ev[8].1["item"]["content"][0]["text"], "Hello é");
        let done = &ev[9].1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0], ev[8].1["item"]);
        assert_eq!(done["usage"]["input_tokens"], 9);
        assert_eq!(done["usage"]["output_tokens"], 3);
        assert_eq!(done["usage"]["total_tokens"], 12);
        assert_eq!(done["usage"]["total_cost"], 36);
        // Nothing after the end.
        assert_eq!(m.push(b"data: {\"choices\":[]}\n\n"), "");
    }

    #[test]
    fn a_cut_answer_ends_incomplete_and_tool_calls_stream_as_function_calls() {
        let mut m = mapper();
        let out = m.push(concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\":\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]},\"finish_reason\":\"length\"}]}\n\n",
            "data: [DONE]\n\n",
        ).as_bytes());
        let ev = events(&out);
        let types: Vec<&str> = ev.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            types,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.incomplete",
            ]
        );
        assert_eq!(ev[2].1["item"]["call_id"], "call_1");
        assert_eq!(ev[5].1["arguments"], "{\"a\":1}");
        let r = &ev[7].1["response"];
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(r["output"][0]["arguments"], "{\"a\":1}");
    }

    #[test]
    fn a_whole_chat_answer_to_a_stream_request_is_every_event_at_once() {
        let chat = json!({
            "model": "Smol",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Hi"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
        });
        let mut m = mapper();
        let out = m.push_whole(&chat);
        assert!(m.ended());
        let ev = events(&out);
        let types: Vec<&str> = ev.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            types,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        // The same response object as the whole answer's, but for its id.
        let whole = from_chat(&chat, &echo(), &ids()).unwrap();
        assert_eq!(ev[8].1["response"], whole);
    }

    #[test]
    fn errors_and_the_byte_limit_end_the_stream_with_an_error_event() {
        let mut m = mapper();
        let out =
            m.push(b"data: {\"error\":{\"message\":\"boom\",\"type\":\"upstream_error\"}}\n\n");
        let ev = events(&out);
        assert_eq!(ev.last().unwrap().0, "error");
        assert_eq!(ev.last().unwrap().1["message"], "boom");
        assert!(m.ended());
        let mut m = StreamMapper::new(ids(), echo(), json!("Smol"), 4);
        let out = m.push(
            b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"abc\"}}]}\n\n\
              data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"de\"}}]}\n\n",
        );
        let ev = events(&out);
        assert_eq!(ev.last().unwrap().0, "error");
        assert!(
            ev.last().unwrap().1["message"]
                .as_str()
                .unwrap()
                .contains("over 4 bytes"),
            "{out}"
        );
        assert!(m.ended());
        // A stream without [DONE] is finished by the caller.
        let mut m = mapper();
        let mut out =
            m.push(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n");
        out.push_str(&m.finish());
        assert_eq!(events(&out).last().unwrap().0, "response.completed");
    }
}
