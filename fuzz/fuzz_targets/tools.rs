//! The embedded engine's tool calling (`crates/llama/src/tools.rs` with `grammar.rs` and
//! `template.rs`, pure; compiled into this target from their source files, as the
//! `cocoon-llama` crate builds llama.cpp): the request check `plan` and the streaming parser
//! of the model's `<tool_call>` blocks, `CallParser`.
//!
//! Input: a flags byte. Bit 0 clear: the rest is a request body (a JSON object, anything else
//! is skipped) for `plan`, and a plan's functions go through `system_block`. Bit 0 set: bit 1
//! picks the parser's mode (`auto`, `required`), then `n:u8` and `n % 16` chunk-size bytes
//! (used in a cycle; size = byte + 1 characters; none: one chunk), then the model's output
//! (UTF-8, lossily).
//!
//! Checked: no panic. `plan`: a refusal names a parameter; a plan lists at most 128 tools and
//! its grammar has a `root` rule. Parser: the events, with neighbouring text and argument
//! pieces joined, do not depend on the chunking (then `finish`); the calls counted are the
//! `Start` events; arguments only follow a `Start`; text and calls never mix.
#![no_main]

#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "../../crates/llama/src/grammar.rs"]
mod grammar;
#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "../../crates/llama/src/template.rs"]
mod template;
#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "../../crates/llama/src/tools.rs"]
mod tools;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tools::{CallParser, ToolEvent};

/// Joins neighbouring `Text` and `Args` pieces.
fn joined(events: Vec<ToolEvent>) -> Vec<ToolEvent> {
    let mut out: Vec<ToolEvent> = Vec::new();
    for e in events {
        match (out.last_mut(), e) {
            (Some(ToolEvent::Text(a)), ToolEvent::Text(b)) => a.push_str(&b),
            (Some(ToolEvent::Args(a)), ToolEvent::Args(b)) => a.push_str(&b),
            (_, e) => out.push(e),
        }
    }
    out.retain(|e| !matches!(e, ToolEvent::Text(t) | ToolEvent::Args(t) if t.is_empty()));
    out
}

fn parse(mode: grammar::CallMode, pieces: &[&str]) -> (Vec<ToolEvent>, usize) {
    let mut p = CallParser::new(mode);
    let mut events = Vec::new();
    for piece in pieces {
        events.extend(p.push(piece));
    }
    events.extend(p.finish());
    (events, p.calls())
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    if flags & 1 == 0 {
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(rest) else {
            return;
        };
        match tools::plan(&body) {
            Ok(Some(p)) => {
                assert!(p.listed.len() <= 128, "{} tools listed", p.listed.len());
                assert!(p.grammar.contains("root ::= "), "{}", p.grammar);
                let _ = tools::system_block(&p.listed);
            }
            Ok(None) => {}
            Err(e) => assert!(!e.param.is_empty(), "a refusal without a parameter: {e:?}"),
        }
        return;
    }
    let mode = if flags & 2 == 0 {
        grammar::CallMode::Auto
    } else {
        grammar::CallMode::Required
    };
    let (sizes, text) = match rest.split_first() {
        Some((&n, r)) if r.len() >= usize::from(n % 16) => {
            let (s, t) = r.split_at(usize::from(n % 16));
            (s.to_vec(), t)
        }
        _ => (Vec::new(), rest),
    };
    let text = String::from_utf8_lossy(text);
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut pieces = Vec::new();
    let (mut at, mut i) = (0usize, 0usize);
    while at < chars.len() {
        let n = if sizes.is_empty() {
            chars.len()
        } else {
            usize::from(sizes[i % sizes.len()]) + 1
        };
        i += 1;
        let end = (at + n).min(chars.len());
        let (from, to) = (chars[at].0, chars.get(end).map_or(text.len(), |c| c.0));
        pieces.push(&text[from..to]);
        at = end;
    }
    let (whole, whole_calls) = parse(mode, &[&text]);
    let (chunked, calls) = parse(mode, &pieces);
    assert_eq!(calls, whole_calls);
    let (whole, chunked) = (joined(whole), joined(chunked));
    assert_eq!(whole, chunked, "the chunking changed the events");
    let starts = whole.iter().filter(|e| matches!(e, ToolEvent::Start(_))).count();
    assert_eq!(starts, calls, "calls counted: {calls}, begun: {starts}");
    let mut begun = false;
    for e in &whole {
        match e {
            ToolEvent::Start(_) => begun = true,
            ToolEvent::Args(_) => assert!(begun, "arguments before any call: {whole:?}"),
            ToolEvent::Text(_) => assert!(starts == 0, "text and calls mixed: {whole:?}"),
        }
    }
});
