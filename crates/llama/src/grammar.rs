//! `response_format` as a llama.cpp grammar (GBNF): `json_object` allows any JSON object,
//! `json_schema` the instances of a schema written in the subset converted here (objects with
//! `properties` and `required`, strings, numbers, integers, booleans, null, arrays with
//! `items`, `enum`, `const`, `anyOf`, a list of types, nesting). Any other schema keyword is
//! refused by name rather than ignored, so an answer always matches the schema it was asked
//! for. The converter is pure: a schema in, grammar text or the reason out.

use serde_json::{Map, Value};
use std::fmt::Write as _;

/// Deepest schema nesting converted.
const MAX_DEPTH: usize = 32;
/// Most alternatives (`anyOf` branches, listed types) multiplied along one path: llama.cpp
/// follows every branch that still matches at once, so overlapping alternatives nested deep
/// would multiply its work per token.
const MAX_FANOUT: usize = 64;
/// Most grammar rules one schema may produce.
const MAX_RULES: usize = 4096;

/// Largest `maxItems` / `maxLength` / `minItems` / `minLength` converted (llama.cpp expands
/// bounded repetitions into rules).
const MAX_BOUND: u64 = 1024;

/// A `min…`/`max…` bound: absent, or an integer up to [`MAX_BOUND`].
fn bound(s: &Map<String, Value>, key: &str) -> Result<Option<u64>, String> {
    match s.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= MAX_BOUND => Ok(Some(n)),
            _ => Err(format!("{key} must be an integer up to {MAX_BOUND}")),
        },
    }
}

/// `{min,max}` repetition of `x` (GBNF), as few rules as the bounds need.
fn repeat(x: &str, min: u64, max: Option<u64>) -> String {
    match (min, max) {
        (0, None) => format!("{x}*"),
        (m, None) => format!("{x}{{{m},}}"),
        (m, Some(n)) => format!("{x}{{{m},{n}}}"),
    }
}

/// Keywords that only describe a schema: accepted and ignored.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "$schema",
    "examples",
    "default",
    "$id",
];

/// Shared rules: whitespace, strings, numbers, any JSON value.
const BASE: &str = r#"ws ::= [ \t\n]{0,4}
string ::= "\"" char* "\""
char ::= [^"\\\x00-\x1f] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
integer ::= "-"? ("0" | [1-9] [0-9]{0,15})
number ::= integer ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?
boolean ::= "true" | "false"
null ::= "null"
value ::= object | array | string | number | boolean | null
object ::= "{" ws (string ws ":" ws value ws ("," ws string ws ":" ws value ws)*)? "}"
array ::= "[" ws (value ws ("," ws value ws)*)? "]"
"#;

/// What `response_format` asks of the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// Free text.
    Text,
    /// A grammar the answer must follow (root rule `root`).
    Grammar(String),
}

/// Reads `response_format`; `Err` names what is not converted (the caller's 400).
pub fn response_format(v: Option<&Value>) -> Result<Format, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Format::Text);
    };
    match v.get("type").and_then(Value::as_str) {
        None | Some("text") => Ok(Format::Text),
        Some("json_object") => Ok(Format::Grammar(format!("root ::= object\n{BASE}"))),
        Some("json_schema") => {
            let schema = v.get("json_schema").and_then(|j| j.get("schema"));
            match schema {
                // No schema: any JSON object, as json_object.
                None | Some(Value::Null) => Ok(Format::Grammar(format!("root ::= object\n{BASE}"))),
                Some(s) => schema_grammar(s).map(Format::Grammar),
            }
        }
        Some(other) => Err(format!("response_format type {other:?} is not supported")),
    }
}

/// The grammar of a schema's instances.
pub fn schema_grammar(schema: &Value) -> Result<String, String> {
    let mut c = Converter {
        rules: Vec::new(),
        fanout: 1,
    };
    let root = c.expr(schema, 0, "root")?;
    let mut out = format!("root ::= {root}\n");
    for (name, body) in &c.rules {
        let _ = writeln!(out, "{name} ::= {body}");
    }
    out.push_str(BASE);
    Ok(out)
}

/// The opening and closing markers of a tool call in the model's output.
pub const CALL_OPEN: &str = "<tool_call>";
/// See [`CALL_OPEN`].
pub const CALL_CLOSE: &str = "</tool_call>";
/// Most calls one answer may make when parallel tool calls are allowed.
pub const MAX_PARALLEL_CALLS: usize = 16;

/// What the tool-call grammar lets the model answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallMode {
    /// One call or more (`required`, or a named function).
    Required,
    /// Plain text (not starting with `<`) or calls (`auto`).
    Auto,
}

/// The grammar of an answer that calls the given functions (name and `parameters` schema;
/// `None`: no parameters, `{}`), each call written as
/// `<tool_call>\n{"name": "NAME", "arguments": ARGS}\n</tool_call>`, calls separated by one
/// newline, at most [`MAX_PARALLEL_CALLS`] (one without `parallel`). `Err` gives the index of
/// the function whose schema is not converted (or does not describe an object) and why.
pub fn tools_grammar(
    functions: &[(&str, Option<&Value>)],
    parallel: bool,
    mode: CallMode,
) -> Result<String, (usize, String)> {
    let mut c = Converter {
        rules: Vec::new(),
        fanout: 1,
    };
    let mut calls = Vec::new();
    for (i, (name, params)) in functions.iter().enumerate() {
        let args = match params {
            None => "\"{\" ws \"}\"".to_owned(),
            Some(p) => {
                let o = p
                    .as_object()
                    .ok_or((i, "parameters must be a JSON schema object".to_owned()))?;
                match o.get("type") {
                    Some(Value::String(t)) if t == "object" => {}
                    None if !o.contains_key("anyOf")
                        && !o.contains_key("enum")
                        && !o.contains_key("const")
                        && !o.contains_key("items") => {}
                    _ => {
                        return Err((
                            i,
                            "parameters must describe an object (type \"object\")".into(),
                        ));
                    }
                }
                let mut o = o.clone();
                o.insert("type".into(), Value::String("object".into()));
                c.expr(&Value::Object(o), 0, &format!("args-{name}"))
                    .map_err(|e| (i, e))?
            }
        };
        let head = literal_text(&format!(
            "{CALL_OPEN}\n{{\"name\": \"{name}\", \"arguments\": "
        ));
        let tail = literal_text(&format!("}}\n{CALL_CLOSE}"));
        let rule = c
            .rule(&format!("call-{name}"), format!("{head} {args} {tail}"))
            .map_err(|e| (i, e))?;
        calls.push(rule);
    }
    let mut out = format!("call ::= {}\n", calls.join(" | "));
    let calls_expr = if parallel {
        format!("call (\"\\n\" call){{0,{}}}", MAX_PARALLEL_CALLS - 1)
    } else {
        "call".to_owned()
    };
    out = match mode {
        CallMode::Required => format!("root ::= {calls_expr}\n{out}"),
        CallMode::Auto => format!("root ::= {calls_expr} | text\ntext ::= [^<] .*\n{out}"),
    };
    for (name, body) in &c.rules {
        let _ = writeln!(out, "{name} ::= {body}");
    }
    out.push_str(BASE);
    Ok(out)
}

/// Text as a GBNF string literal.
fn literal_text(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

struct Converter {
    rules: Vec<(String, String)>,
    /// The product of the alternatives on the path being converted.
    fanout: usize,
}

/// A JSON literal as a GBNF string literal.
fn literal(v: &Value) -> String {
    literal_text(&v.to_string())
}

impl Converter {
    /// Enters `n` alternatives; returns the fanout to restore after them.
    fn branch(&mut self, n: usize) -> Result<usize, String> {
        let before = self.fanout;
        self.fanout = before.saturating_mul(n);
        if self.fanout > MAX_FANOUT {
            return Err(format!(
                "the schema nests more than {MAX_FANOUT} alternatives (anyOf, lists of types)"
            ));
        }
        Ok(before)
    }

    fn rule(&mut self, hint: &str, body: String) -> Result<String, String> {
        if self.rules.len() >= MAX_RULES {
            return Err(format!("the schema is too large (over {MAX_RULES} rules)"));
        }
        let clean: String = hint
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(32)
            .collect();
        let name = format!("r{}-{clean}", self.rules.len());
        self.rules.push((name.clone(), body));
        Ok(name)
    }

    /// A GBNF expression matching the schema's instances.
    fn expr(&mut self, schema: &Value, depth: usize, hint: &str) -> Result<String, String> {
        if depth > MAX_DEPTH {
            return Err(format!("the schema nests deeper than {MAX_DEPTH} levels"));
        }
        let s = match schema {
            Value::Bool(true) => return Ok("value".into()),
            Value::Object(s) => s,
            _ => return Err("a schema must be an object".into()),
        };
        for k in s.keys() {
            let known = matches!(
                k.as_str(),
                "type"
                    | "properties"
                    | "required"
                    | "additionalProperties"
                    | "items"
                    | "enum"
                    | "const"
                    | "anyOf"
                    | "minItems"
                    | "maxItems"
                    | "minLength"
                    | "maxLength"
            ) || ANNOTATIONS.contains(&k.as_str());
            if !known {
                return Err(format!("the schema keyword {k:?} is not supported"));
            }
        }
        if let Some(c) = s.get("const") {
            return Ok(literal(c));
        }
        if let Some(e) = s.get("enum") {
            let Some(items) = e.as_array().filter(|a| !a.is_empty()) else {
                return Err("enum must be a non-empty array".into());
            };
            let alts: Vec<String> = items.iter().map(literal).collect();
            return Ok(format!("({})", alts.join(" | ")));
        }
        if let Some(any) = s.get("anyOf") {
            let Some(items) = any.as_array().filter(|a| !a.is_empty()) else {
                return Err("anyOf must be a non-empty array".into());
            };
            let before = self.branch(items.len())?;
            let mut alts = Vec::new();
            for (i, sub) in items.iter().enumerate() {
                alts.push(self.expr(sub, depth + 1, &format!("{hint}-{i}"))?);
            }
            self.fanout = before;
            return Ok(format!("({})", alts.join(" | ")));
        }
        match s.get("type") {
            None => {
                if s.contains_key("properties") {
                    self.object(s, depth, hint)
                } else if s.contains_key("items") {
                    self.array(s, depth, hint)
                } else {
                    Ok("value".into())
                }
            }
            Some(Value::String(t)) => self.typed(t, s, depth, hint),
            Some(Value::Array(ts)) if !ts.is_empty() => {
                let before = self.branch(ts.len())?;
                let mut alts = Vec::new();
                for t in ts {
                    let t = t.as_str().ok_or("type must be a string or strings")?;
                    alts.push(self.typed(t, s, depth, hint)?);
                }
                self.fanout = before;
                Ok(format!("({})", alts.join(" | ")))
            }
            Some(_) => Err("type must be a string or a non-empty array of strings".into()),
        }
    }

    fn typed(
        &mut self,
        t: &str,
        s: &Map<String, Value>,
        depth: usize,
        hint: &str,
    ) -> Result<String, String> {
        Ok(match t {
            "string" => {
                let (min, max) = (bound(s, "minLength")?, bound(s, "maxLength")?);
                if min.is_none() && max.is_none() {
                    "string".into()
                } else {
                    let min = min.unwrap_or(0);
                    if max.is_some_and(|m| m < min) {
                        return Err("maxLength is below minLength".into());
                    }
                    format!("\"\\\"\" {} \"\\\"\"", repeat("char", min, max))
                }
            }
            "number" => "number".into(),
            "integer" => "integer".into(),
            "boolean" => "boolean".into(),
            "null" => "null".into(),
            "object" => self.object(s, depth, hint)?,
            "array" => self.array(s, depth, hint)?,
            other => return Err(format!("the schema type {other:?} is not supported")),
        })
    }

    fn array(
        &mut self,
        s: &Map<String, Value>,
        depth: usize,
        hint: &str,
    ) -> Result<String, String> {
        let item = match s.get("items") {
            None => "value".to_owned(),
            Some(i) => self.expr(i, depth + 1, &format!("{hint}-item"))?,
        };
        let item = self.rule(&format!("{hint}-item"), item)?;
        let (min, max) = (bound(s, "minItems")?.unwrap_or(0), bound(s, "maxItems")?);
        if max.is_some_and(|m| m < min) {
            return Err("maxItems is below minItems".into());
        }
        let more = format!("(\",\" ws {item} ws)");
        let body = match max {
            Some(0) => String::new(),
            _ => {
                let list = format!(
                    "{item} ws {}",
                    repeat(&more, min.saturating_sub(1), max.map(|m| m - 1))
                );
                if min == 0 { format!("({list})?") } else { list }
            }
        };
        self.rule(hint, format!("\"[\" ws {body} \"]\""))
    }

    /// The declared properties, in the order the map holds them (alphabetical: the request
    /// body is parsed without key order); required ones always, optional ones
    /// maybe. Keys the schema does not declare are not generated (a valid instance whether
    /// or not `additionalProperties` allows more).
    fn object(
        &mut self,
        s: &Map<String, Value>,
        depth: usize,
        hint: &str,
    ) -> Result<String, String> {
        let Some(props) = s.get("properties") else {
            return Ok(
                if s.get("additionalProperties") == Some(&Value::Bool(false)) {
                    "\"{\" ws \"}\"".into()
                } else {
                    "object".into()
                },
            );
        };
        let props = props.as_object().ok_or("properties must be an object")?;
        let required: Vec<&str> = match s.get("required") {
            None => Vec::new(),
            Some(Value::Array(r)) => r
                .iter()
                .map(|x| x.as_str().ok_or("required must list property names"))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("required must be an array".into()),
        };
        if let Some(missing) = required.iter().find(|r| !props.contains_key(**r)) {
            return Err(format!(
                "required names {missing:?}, which is not in properties"
            ));
        }
        match s.get("additionalProperties") {
            None | Some(Value::Bool(_)) => {}
            Some(_) => return Err("additionalProperties must be true or false".into()),
        }
        let mut kvs = Vec::new();
        for (name, sub) in props {
            let v = self.expr(sub, depth + 1, &format!("{hint}-{name}"))?;
            let key = literal(&Value::String(name.clone()));
            kvs.push((
                self.rule(
                    &format!("{hint}-{name}-kv"),
                    format!("{key} ws \":\" ws {v}"),
                )?,
                required.contains(&name.as_str()),
            ));
        }
        // rest(i): properties i.. each after a comma; first(i): the same, no comma before the
        // first one present. Built from the end.
        let n = kvs.len();
        let mut rest = String::from("\"\"");
        let mut first = String::from("\"\"");
        for i in (0..n).rev() {
            let (kv, req) = &kvs[i];
            let new_rest = if *req {
                format!("\",\" ws {kv} ws {rest}")
            } else {
                format!("(\",\" ws {kv} ws)? {rest}")
            };
            let new_first = if *req {
                format!("{kv} ws {rest}")
            } else {
                format!("({kv} ws {rest} | {first})")
            };
            rest = self.rule(&format!("{hint}-rest{i}"), new_rest)?;
            first = self.rule(&format!("{hint}-first{i}"), new_first)?;
        }
        self.rule(hint, format!("\"{{\" ws {first} \"}}\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats_and_refusals() {
        assert_eq!(response_format(None), Ok(Format::Text));
        assert_eq!(
            response_format(Some(&json!({"type": "text"}))),
            Ok(Format::Text)
        );
        let Ok(Format::Grammar(g)) = response_format(Some(&json!({"type": "json_object"}))) else {
            panic!()
        };
        assert!(g.starts_with("root ::= object\n"));
        let schema = json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true,
            "schema": {"type": "object", "properties": {
                "name": {"type": "string", "description": "who"},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"enum": ["a", "b\"c"]}},
                "nick": {"type": ["string", "null"]},
            }, "required": ["name", "age"], "additionalProperties": false}}});
        let Ok(Format::Grammar(g)) = response_format(Some(&schema)) else {
            panic!()
        };
        assert!(g.contains(r#""\"b\\\"c\"""#), "{g}");
        for (bad, word) in [
            (json!({"type": "string", "pattern": "x"}), "pattern"),
            (json!({"$ref": "#/$defs/a"}), "$ref"),
            (
                json!({"type": "object", "properties": {}, "required": ["z"]}),
                "\"z\"",
            ),
            (json!({"type": "date"}), "date"),
        ] {
            let e = schema_grammar(&bad).unwrap_err();
            assert!(e.contains(word), "{e}");
        }
        let g = schema_grammar(&json!({"type": "array", "items": {"type": "string",
            "maxLength": 8}, "minItems": 1, "maxItems": 3}))
        .unwrap();
        assert!(g.contains("char{0,8}"), "{g}");
        assert!(g.contains("{0,2}"), "{g}");
        assert!(schema_grammar(&json!({"type": "array", "maxItems": 5000})).is_err());
        assert!(schema_grammar(&json!({"type": "array", "minItems": 3, "maxItems": 2})).is_err());
        let mut deep = json!({"type": "string"});
        for _ in 0..40 {
            deep = json!({"type": "array", "items": deep});
        }
        assert!(schema_grammar(&deep).unwrap_err().contains("deeper"));
        let mut wide = json!({"type": "string"});
        for _ in 0..7 {
            wide = json!({"anyOf": [{"type": "array", "items": wide}, {"type": "array", "items": wide}]});
        }
        assert!(schema_grammar(&wide).unwrap_err().contains("alternatives"));
    }
}
