//! Function tools on the embedded engine: what a request's `tools` / `tool_choice` /
//! `parallel_tool_calls` ask for, the system-prompt block that lists the functions, the
//! conversation's earlier calls and results as prompt text, and the streaming parser that turns
//! the model's constrained output back into calls. All pure: a request body or text in, a plan,
//! text or events out.
//!
//! The model writes each call as
//! `<tool_call>\n{"name": "NAME", "arguments": {…}}\n</tool_call>` (the grammar of
//! [`crate::grammar::tools_grammar`] allows nothing else), so the parser follows a fixed layout.

use crate::grammar::{self, CALL_CLOSE, CALL_OPEN, CallMode};
use crate::template::TemplateMessage;
use serde_json::{Map, Value, json};

/// Longest function name (OpenAI's limit).
const MAX_NAME: usize = 64;
/// Most functions one request may list (OpenAI's limit).
const MAX_TOOLS: usize = 128;

/// A request's tools refused: the parameter to name and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolsRefused {
    /// `tools[i].function.name`, `tools[i].function.parameters`, `tool_choice`, …
    pub param: String,
    /// What is wrong.
    pub message: String,
}

fn refuse(param: impl Into<String>, message: impl Into<String>) -> ToolsRefused {
    ToolsRefused {
        param: param.into(),
        message: message.into(),
    }
}

/// What a request asks of the answer's tool calls (present only when it may call one).
#[derive(Clone, Debug, PartialEq)]
pub struct ToolPlan {
    /// The functions the prompt lists: `function` objects (name, description, parameters).
    pub listed: Vec<Value>,
    /// The grammar the answer follows (root rule `root`).
    pub grammar: String,
    /// Whether the model may answer in text instead (`auto`).
    pub mode: CallMode,
}

/// Reads `tools`, `tool_choice` and `parallel_tool_calls`: `None` when the answer calls no
/// function (no tools, or `tool_choice` `none`). A name outside `[A-Za-z0-9_-]{1,64}`, a
/// schema outside the converted subset or a choice naming an unknown function is refused.
pub fn plan(body: &Map<String, Value>) -> Result<Option<ToolPlan>, ToolsRefused> {
    let tools = match body.get("tools") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(refuse("tools", "tools must be an array of function tools.")),
    };
    if tools.len() > MAX_TOOLS {
        return Err(refuse(
            "tools",
            format!(
                "At most {MAX_TOOLS} tools may be listed; the request lists {}.",
                tools.len()
            ),
        ));
    }
    let mut functions: Vec<(&str, Option<&Value>)> = Vec::new();
    let mut listed = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(refuse(
                format!("tools[{i}].type"),
                "Only function tools are supported: {\"type\": \"function\", \"function\": {…}}.",
            ));
        }
        let f = t
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                refuse(
                    format!("tools[{i}].function"),
                    "A function tool needs a function object.",
                )
            })?;
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        let good = !name.is_empty()
            && name.len() <= MAX_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !good {
            return Err(refuse(
                format!("tools[{i}].function.name"),
                format!(
                    "A function name is 1 to {MAX_NAME} letters, digits, underscores or dashes; \
                     {name:?} is not one."
                ),
            ));
        }
        if functions.iter().any(|(n, _)| *n == name) {
            return Err(refuse(
                format!("tools[{i}].function.name"),
                format!("The function name {name:?} is listed twice."),
            ));
        }
        let params = f.get("parameters").filter(|p| !p.is_null());
        functions.push((name, params));
        let mut entry = json!({"name": name});
        if let Some(d) = f.get("description").filter(|d| !d.is_null()) {
            entry["description"] = d.clone();
        }
        if let Some(p) = params {
            entry["parameters"] = p.clone();
        }
        listed.push(entry);
    }
    let choice = body.get("tool_choice").filter(|c| !c.is_null());
    let (mode, only) = match choice {
        None => (CallMode::Auto, None),
        Some(Value::String(s)) => match s.as_str() {
            "none" => return Ok(None),
            "auto" => (CallMode::Auto, None),
            "required" => (CallMode::Required, None),
            _ => {
                return Err(refuse(
                    "tool_choice",
                    "tool_choice is none, auto, required or {\"type\": \"function\", \"function\": {\"name\": …}}.",
                ));
            }
        },
        Some(c) => {
            let name = c
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            match (c.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(n)) => {
                    if !functions.iter().any(|(f, _)| *f == n) {
                        return Err(refuse(
                            "tool_choice",
                            format!("tool_choice names the function {n:?}, which is not in tools."),
                        ));
                    }
                    (CallMode::Required, Some(n))
                }
                _ => {
                    return Err(refuse(
                        "tool_choice",
                        "tool_choice is none, auto, required or {\"type\": \"function\", \"function\": {\"name\": …}}.",
                    ));
                }
            }
        }
    };
    if functions.is_empty() {
        if mode == CallMode::Required {
            return Err(refuse(
                "tool_choice",
                "tool_choice requires a tool call, but the request lists no tools.",
            ));
        }
        return Ok(None);
    }
    let parallel = body.get("parallel_tool_calls") != Some(&Value::Bool(false));
    let allowed: Vec<(usize, (&str, Option<&Value>))> = functions
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, (n, _))| only.is_none_or(|o| o == *n))
        .collect();
    let grammar = grammar::tools_grammar(
        &allowed.iter().map(|(_, f)| *f).collect::<Vec<_>>(),
        parallel,
        mode,
    )
    .map_err(|(k, why)| {
        let i = allowed.get(k).map_or(k, |(i, _)| *i);
        refuse(
            format!("tools[{i}].function.parameters"),
            format!(
                "Invalid schema for the function {:?}: {why}.",
                functions[i].0
            ),
        )
    })?;
    Ok(Some(ToolPlan {
        listed,
        grammar,
        mode,
    }))
}

/// The system-prompt block that lists the functions and the call format.
pub fn system_block(listed: &[Value]) -> String {
    let mut out = String::from(
        "You can call functions. The functions available, one JSON object per line:\n",
    );
    for f in listed {
        out.push_str(&f.to_string());
        out.push('\n');
    }
    out.push_str(&format!(
        "To call a function, answer with one block per call, exactly in this form:\n\
         {CALL_OPEN}\n{{\"name\": \"<function name>\", \"arguments\": <the arguments as a JSON object>}}\n{CALL_CLOSE}\n\
         A function's result comes back in a user message between <tool_response> and \
         </tool_response>."
    ));
    out
}

/// An assistant message's `tool_calls` as the model writes them.
fn calls_text(calls: &[Value]) -> String {
    calls
        .iter()
        .map(|c| {
            let f = &c["function"];
            let name = f["name"].as_str().unwrap_or_default();
            // The arguments are a JSON string; written back compact when they parse.
            let args = f["arguments"].as_str().unwrap_or("{}");
            let args = serde_json::from_str::<Value>(args)
                .map_or_else(|_| args.to_owned(), |v| v.to_string());
            format!(
                "{CALL_OPEN}\n{{\"name\": {}, \"arguments\": {args}}}\n{CALL_CLOSE}",
                Value::String(name.to_owned())
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The conversation as the template sees it, with tools: the function block joins the first
/// system (or developer) message or becomes one; an assistant message's `tool_calls` are written
/// in the call format after its text; a `tool` (or legacy `function`) message becomes a user
/// message holding its content between `<tool_response>` tags (chat templates differ in which
/// roles they know; every one knows `user`).
pub fn messages(
    base: Vec<TemplateMessage>,
    raw: &Value,
    block: Option<&str>,
) -> Vec<TemplateMessage> {
    let raw = raw.as_array().map(Vec::as_slice).unwrap_or_default();
    let mut out: Vec<TemplateMessage> = base
        .into_iter()
        .enumerate()
        .map(|(i, mut m)| {
            let r = raw.get(i);
            match m.role.as_str() {
                "assistant" => {
                    if let Some(calls) = r
                        .and_then(|r| r.get("tool_calls"))
                        .and_then(Value::as_array)
                        && !calls.is_empty()
                    {
                        let text = calls_text(calls);
                        m.content = if m.content.is_empty() {
                            text
                        } else {
                            format!("{}\n{text}", m.content)
                        };
                    }
                }
                "tool" | "function" => {
                    m.content = format!("<tool_response>\n{}\n</tool_response>", m.content);
                    m.role = "user".into();
                }
                _ => {}
            }
            m
        })
        .collect();
    if let Some(block) = block {
        match out.first_mut() {
            Some(first) if first.role == "system" || first.role == "developer" => {
                first.content = if first.content.is_empty() {
                    block.to_owned()
                } else {
                    format!("{}\n\n{block}", first.content)
                };
            }
            _ => out.insert(
                0,
                TemplateMessage {
                    role: "system".into(),
                    content: block.to_owned(),
                },
            ),
        }
    }
    out
}

/// What the parser found in a piece of the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolEvent {
    /// Plain text (an `auto` answer that calls nothing).
    Text(String),
    /// A call to this function begins (its arguments follow).
    Start(String),
    /// More of the current call's arguments (JSON text).
    Args(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Nothing yet (`auto`): text, or the first call's marker.
    Undecided(String),
    /// A plain-text answer.
    Text,
    /// Before a call's marker (whitespace between calls is skipped).
    Between(String),
    /// After the marker, up to the arguments' opening brace.
    Head(String),
    /// Inside the arguments object.
    Args {
        depth: u32,
        in_string: bool,
        escaped: bool,
    },
    /// After the arguments, up to the closing marker.
    Tail(String),
}

/// Longest head text (`\n{"name": "…", "arguments": `) before the arguments begin.
const MAX_HEAD: usize = MAX_NAME + 48;

/// Turns the model's output, as it arrives, into text or calls. It holds at most a call's
/// marker and head (the name), never the arguments.
#[derive(Clone, Debug)]
pub struct CallParser {
    state: State,
    calls: usize,
}

impl CallParser {
    /// A parser for an answer that may be text (`auto`) or must be calls.
    pub fn new(mode: CallMode) -> Self {
        CallParser {
            state: match mode {
                CallMode::Auto => State::Undecided(String::new()),
                CallMode::Required => State::Between(String::new()),
            },
            calls: 0,
        }
    }

    /// Calls begun so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Feeds generated text; returns what it completes.
    pub fn push(&mut self, text: &str) -> Vec<ToolEvent> {
        let mut out = Vec::new();
        for ch in text.chars() {
            self.char(ch, &mut out);
        }
        // One Args event per push.
        let mut merged: Vec<ToolEvent> = Vec::with_capacity(out.len());
        for e in out {
            match (merged.last_mut(), e) {
                (Some(ToolEvent::Args(a)), ToolEvent::Args(b)) => a.push_str(&b),
                (Some(ToolEvent::Text(a)), ToolEvent::Text(b)) => a.push_str(&b),
                (_, e) => merged.push(e),
            }
        }
        merged
    }

    fn char(&mut self, ch: char, out: &mut Vec<ToolEvent>) {
        match &mut self.state {
            State::Text => out.push(ToolEvent::Text(ch.to_string())),
            State::Undecided(held) => {
                held.push(ch);
                if held == CALL_OPEN {
                    self.state = State::Head(String::new());
                } else if !CALL_OPEN.starts_with(held.as_str()) {
                    out.push(ToolEvent::Text(std::mem::take(held)));
                    self.state = State::Text;
                }
            }
            State::Between(held) => {
                if held.is_empty() && ch.is_whitespace() {
                    return;
                }
                held.push(ch);
                if held == CALL_OPEN {
                    self.state = State::Head(String::new());
                } else if !CALL_OPEN.starts_with(held.as_str()) {
                    // Not a call (the grammar allows none): dropped, keeping nothing.
                    held.clear();
                }
            }
            State::Head(head) => {
                if ch == '{' && head.trim_end().ends_with("\"arguments\":") {
                    let name = head
                        .split_once("\"name\":")
                        .and_then(|(_, rest)| {
                            let rest = rest.trim_start().strip_prefix('"')?;
                            rest.split_once('"').map(|(n, _)| n.to_owned())
                        })
                        .unwrap_or_default();
                    self.calls += 1;
                    out.push(ToolEvent::Start(name));
                    out.push(ToolEvent::Args("{".into()));
                    self.state = State::Args {
                        depth: 1,
                        in_string: false,
                        escaped: false,
                    };
                } else if head.len() < MAX_HEAD {
                    head.push(ch);
                } else {
                    // Not the layout the grammar allows: nothing more is read as a call.
                    self.state = State::Between(String::new());
                }
            }
            State::Args {
                depth,
                in_string,
                escaped,
            } => {
                out.push(ToolEvent::Args(ch.to_string()));
                if *in_string {
                    if *escaped {
                        *escaped = false;
                    } else if ch == '\\' {
                        *escaped = true;
                    } else if ch == '"' {
                        *in_string = false;
                    }
                } else {
                    match ch {
                        '"' => *in_string = true,
                        '{' | '[' => *depth += 1,
                        '}' | ']' => {
                            *depth = depth.saturating_sub(1);
                            if *depth == 0 {
                                self.state = State::Tail(String::new());
                            }
                        }
                        _ => {}
                    }
                }
            }
            State::Tail(tail) => {
                tail.push(ch);
                if tail.ends_with(CALL_CLOSE) {
                    self.state = State::Between(String::new());
                } else if tail.len() > 2 * CALL_CLOSE.len() {
                    let keep = tail.len() - CALL_CLOSE.len();
                    let cut = (keep..=tail.len())
                        .find(|&i| tail.is_char_boundary(i))
                        .unwrap_or(tail.len());
                    tail.drain(..cut);
                }
            }
        }
    }

    /// The end of the answer: text held back as a possible marker is text after all.
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        match std::mem::replace(&mut self.state, State::Text) {
            State::Undecided(held) if !held.is_empty() => vec![ToolEvent::Text(held)],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::messages_from_json;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                "unit": {"enum": ["c", "f"]}}, "required": ["city"]}}})
    }

    #[test]
    fn plans_and_refusals() {
        assert_eq!(plan(&body(json!({}))), Ok(None));
        assert_eq!(
            plan(&body(json!({"tools": [weather()], "tool_choice": "none"}))),
            Ok(None)
        );
        let p = plan(&body(
            json!({"tools": [weather(), {"type": "function", "function": {"name": "now"}}]}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(p.mode, CallMode::Auto);
        assert!(
            p.grammar
                .starts_with("root ::= call (\"\\n\" call){0,15} | text\n"),
            "{}",
            p.grammar
        );
        assert!(
            p.grammar
                .contains("\\\"name\\\": \\\"now\\\", \\\"arguments\\\": \" \"{\" ws \"}\""),
            "{}",
            p.grammar
        );
        assert_eq!(p.listed[0]["description"], "Weather now");
        let p = plan(&body(json!({"tools": [weather(), {"type": "function", "function": {"name": "now"}}],
            "tool_choice": {"type": "function", "function": {"name": "now"}}, "parallel_tool_calls": false})))
            .unwrap()
            .unwrap();
        assert_eq!(p.mode, CallMode::Required);
        assert!(
            p.grammar.starts_with("root ::= call\ncall ::= r"),
            "{}",
            p.grammar
        );
        assert!(
            !p.grammar.contains("get_weather"),
            "only the named function: {}",
            p.grammar
        );
        // The listed functions stay all in the prompt.
        assert_eq!(p.listed.len(), 2);

        let refused = |v: Value| plan(&body(v)).unwrap_err();
        let r = refused(json!({"tools": [{"type": "function", "function": {"description": "x"}}]}));
        assert_eq!(r.param, "tools[0].function.name");
        let r = refused(json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}));
        assert_eq!(r.param, "tools[0].function.name");
        let r = refused(json!({"tools": [weather(), weather()]}));
        assert_eq!(r.param, "tools[1].function.name");
        let r = refused(json!({"tools": [{"type": "retrieval"}]}));
        assert_eq!(r.param, "tools[0].type");
        let r = refused(
            json!({"tools": [weather(), {"type": "function", "function": {"name": "f",
            "parameters": {"type": "object", "properties": {"x": {"type": "string", "pattern": "a"}}}}}]}),
        );
        assert_eq!(r.param, "tools[1].function.parameters");
        assert!(r.message.contains("\"pattern\""), "{}", r.message);
        let r = refused(
            json!({"tools": [{"type": "function", "function": {"name": "f",
            "parameters": {"type": "string"}}}]}),
        );
        assert_eq!(r.param, "tools[0].function.parameters");
        let r = refused(
            json!({"tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
        );
        assert_eq!(r.param, "tool_choice");
        let many: Vec<Value> = (0..129)
            .map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}}))
            .collect();
        assert_eq!(refused(json!({"tools": many})).param, "tools");
        let r = refused(json!({"tool_choice": "required"}));
        assert_eq!(r.param, "tool_choice");
        let r = refused(json!({"tools": [weather()], "tool_choice": "always"}));
        assert_eq!(r.param, "tool_choice");
    }

    #[test]
    fn prompt_lists_the_functions_and_renders_calls_and_results() {
        let listed = vec![json!({"name": "get_weather", "parameters": {"type": "object"}})];
        let block = system_block(&listed);
        assert!(
            block.contains("{\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\"}}\n"),
            "{block}"
        );
        assert!(
            block.contains("<tool_call>\n{\"name\": \"<function name>\", \"arguments\": "),
            "{block}"
        );
        let raw = json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        ]);
        let m = messages(messages_from_json(&raw), &raw, Some(&block));
        assert_eq!(m.len(), 4);
        assert_eq!(
            (m[0].role.as_str(), m[0].content.as_str()),
            ("system", block.as_str())
        );
        assert_eq!(m[2].role, "assistant");
        assert_eq!(
            m[2].content,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call>"
        );
        assert_eq!(
            (m[3].role.as_str(), m[3].content.as_str()),
            ("user", "<tool_response>\n18 C\n</tool_response>")
        );
        // A system message of the caller's keeps its text; the block follows it.
        let raw =
            json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}]);
        let m = messages(messages_from_json(&raw), &raw, Some("B"));
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].content, "Be brief.\n\nB");
        // Without tools nothing is added.
        assert_eq!(
            messages(messages_from_json(&raw), &raw, None),
            messages_from_json(&raw)
        );
    }

    /// Feeds the text in pieces of `step` characters, collecting the events.
    fn parse(mode: CallMode, text: &str, step: usize) -> (Vec<ToolEvent>, usize) {
        let mut p = CallParser::new(mode);
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        for piece in chars.chunks(step) {
            out.extend(p.push(&piece.iter().collect::<String>()));
        }
        out.extend(p.finish());
        // Adjacent pieces joined, whatever the step.
        let mut merged: Vec<ToolEvent> = Vec::new();
        for e in out {
            match (merged.last_mut(), e) {
                (Some(ToolEvent::Args(a)), ToolEvent::Args(b)) => a.push_str(&b),
                (Some(ToolEvent::Text(a)), ToolEvent::Text(b)) => a.push_str(&b),
                (_, e) => merged.push(e),
            }
        }
        (merged, p.calls())
    }

    #[test]
    fn parser_finds_calls_and_text_at_any_split() {
        let two = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"P}a\\\"r{\", \"n\": [1, {}]}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";
        for step in [1, 2, 3, 5, 7, 1000] {
            for mode in [CallMode::Auto, CallMode::Required] {
                let (ev, n) = parse(mode, two, step);
                assert_eq!(n, 2);
                assert_eq!(
                    ev,
                    vec![
                        ToolEvent::Start("get_weather".into()),
                        ToolEvent::Args("{\"city\": \"P}a\\\"r{\", \"n\": [1, {}]}".into()),
                        ToolEvent::Start("now".into()),
                        ToolEvent::Args("{}".into()),
                    ],
                    "step {step}"
                );
            }
            let (ev, n) = parse(CallMode::Auto, "It is <b>sunny</b>.", step);
            assert_eq!(
                (ev, n),
                (vec![ToolEvent::Text("It is <b>sunny</b>.".into())], 0)
            );
            // A marker prefix cut off by the end is text.
            let (ev, _) = parse(CallMode::Auto, "<tool", step);
            assert_eq!(ev, vec![ToolEvent::Text("<tool".into())]);
        }
        // A call cut off in its arguments (the length limit) keeps what came.
        let (ev, n) = parse(
            CallMode::Required,
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": \"xy",
            4,
        );
        assert_eq!(n, 1);
        assert_eq!(
            ev,
            vec![
                ToolEvent::Start("f".into()),
                ToolEvent::Args("{\"a\": \"xy".into())
            ]
        );
        // Whatever the model writes, the parser holds a bounded amount.
        let mut p = CallParser::new(CallMode::Required);
        p.push("<tool_call>");
        p.push(&"x".repeat(10_000));
        assert!(
            matches!(&p.state, State::Head(h) if h.len() <= MAX_HEAD)
                || matches!(&p.state, State::Between(b) if b.is_empty())
        );
        let mut p = CallParser::new(CallMode::Required);
        p.push("<tool_call>\n{\"name\": \"f\", \"arguments\": {}");
        p.push(&"y".repeat(10_000));
        assert!(matches!(&p.state, State::Tail(t) if t.len() <= 2 * CALL_CLOSE.len()));
    }
}
