//! The JSON-schema → GBNF converter of the embedded engine (`crates/llama/src/grammar.rs`,
//! pure; compiled into this target from its source file, as the `cocoon-llama` crate builds
//! llama.cpp): `response_format`, `schema_grammar` and `tools_grammar` on a request's JSON.
//!
//! Input: a JSON value (anything else is skipped). It is given to `response_format` as the
//! request's `response_format`, to `schema_grammar` as a schema, and, when it is an array, to
//! `tools_grammar` as the functions' `parameters` (names `f0`, `f1`, ...), both modes, with and
//! without parallel calls.
//!
//! Checked: no panic; the conversions are deterministic; a grammar produced has a `root` rule
//! and every rule it references is defined; a refused tool names an index in range.
#![no_main]

#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "../../crates/llama/src/grammar.rs"]
mod grammar;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Every rule name referenced in `g` is defined, and `root` is.
fn check_rules(g: &str) {
    let mut defined = std::collections::HashSet::new();
    for line in g.lines() {
        if let Some((name, _)) = line.split_once(" ::= ") {
            defined.insert(name.trim().to_owned());
        }
    }
    assert!(defined.contains("root"), "no root rule:\n{g}");
    for line in g.lines() {
        let Some((_, body)) = line.split_once(" ::= ") else {
            continue;
        };
        // Outside quoted literals and character classes, words are rule references.
        let (mut in_str, mut in_class, mut esc) = (false, false, false);
        let mut word = String::new();
        let mut refs = Vec::new();
        for c in body.chars().chain(std::iter::once(' ')) {
            if esc {
                esc = false;
                continue;
            }
            if (in_str || in_class) && c == '\\' {
                esc = true;
                continue;
            }
            if in_str {
                in_str = c != '"';
                continue;
            }
            if in_class {
                in_class = c != ']';
                continue;
            }
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                word.push(c);
                continue;
            }
            if !word.is_empty() {
                refs.push(std::mem::take(&mut word));
            }
            in_str = c == '"';
            in_class = c == '[';
        }
        for r in refs {
            assert!(
                r.chars().all(|c| c.is_ascii_digit()) || defined.contains(&r),
                "rule {r} is used but not defined:\n{g}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let f = grammar::response_format(Some(&v));
    assert_eq!(format!("{f:?}"), format!("{:?}", grammar::response_format(Some(&v))));
    let g = grammar::schema_grammar(&v);
    assert_eq!(g, grammar::schema_grammar(&v));
    if let Ok(g) = &g {
        check_rules(g);
    }
    if let Value::Array(items) = &v {
        let names: Vec<String> = (0..items.len()).map(|i| format!("f{i}")).collect();
        let functions: Vec<(&str, Option<&Value>)> = names
            .iter()
            .zip(items)
            .map(|(n, p)| (n.as_str(), (!p.is_null()).then_some(p)))
            .collect();
        for mode in [grammar::CallMode::Required, grammar::CallMode::Auto] {
            for parallel in [false, true] {
                match grammar::tools_grammar(&functions, parallel, mode) {
                    Ok(g) => check_rules(&g),
                    Err((i, _)) => assert!(i < functions.len(), "refused index {i}"),
                }
            }
        }
    }
});
