//! The completion-token limit of a request, end to end.
//!
//! A client reserves credit for `max_tokens` completion tokens (`client.runQueryEx`
//! carries the number beside the body), but the body an engine reads has its own
//! `max_tokens` / `max_completion_tokens` — or none, which lets most engines generate to the end
//! of their context. If the two disagree, a client with little credit reserves for a few tokens
//! and has thousands generated and billed. So one limit travels with the request:
//!
//! - the client writes the limit it reserved into the body ([`cap_completion_tokens`]);
//! - the proxy caps the body to what it reserved (the same function, so a worker that only
//!   reads the body obeys it too);
//! - the worker reads the limit back ([`completion_limit`]) and stops the generation when the
//!   engine goes past it.
//!
//! The limit counts every generated sequence: a request for `n` choices (or `best_of`
//! candidates) may produce `n × max_tokens` tokens, so the per-choice limit written into the
//! body is the total divided by the number of sequences.

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::validate::Endpoint;

/// A request's completion-token limit as its body states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompletionLimit {
    /// `max_completion_tokens` or `max_tokens` (per sequence), when the body has one.
    pub per_choice: Option<u64>,
    /// Sequences the engine generates: `max(n, best_of)`, at least 1.
    pub sequences: u64,
}

impl CompletionLimit {
    /// Tokens all sequences together may generate; `None` when the body sets no limit.
    pub fn total(&self) -> Option<u64> {
        self.per_choice.map(|m| m.saturating_mul(self.sequences))
    }
}

fn uint(body: &Map<String, Value>, key: &str) -> Option<u64> {
    body.get(key).and_then(Value::as_u64)
}

/// Sequences a request makes the engine generate (`n`, and `best_of` for completions).
pub fn sequences(endpoint: Endpoint, body: &Map<String, Value>) -> u64 {
    let n = uint(body, "n").unwrap_or(1);
    let best_of = match endpoint {
        Endpoint::Completions => uint(body, "best_of").unwrap_or(1),
        Endpoint::ChatCompletions | Endpoint::Embeddings => 1,
    };
    n.max(best_of).max(1)
}

/// The limit a (validated) body states.
pub fn completion_limit(endpoint: Endpoint, body: &Map<String, Value>) -> CompletionLimit {
    let per_choice = match endpoint {
        Endpoint::ChatCompletions => {
            uint(body, "max_completion_tokens").or_else(|| uint(body, "max_tokens"))
        }
        Endpoint::Completions => uint(body, "max_tokens"),
        // Embeddings generate nothing: no completion token is ever billed.
        Endpoint::Embeddings => Some(0),
    };
    CompletionLimit {
        per_choice,
        sequences: sequences(endpoint, body),
    }
}

/// Rewrites `body` so that its sequences together generate at most `total` tokens: the
/// per-sequence limit becomes `min(asked, total / sequences)` (the body's own limit when it is
/// lower, else the share of `total`), written as `max_tokens` — which every engine reads — and
/// as `max_completion_tokens` too when the body uses that field. Returns the limit written.
///
/// Fails (a 400 naming the field) when `total` leaves no token for each sequence.
///
/// An embeddings body is left as it is: its limit is always 0.
pub fn cap_completion_tokens(
    endpoint: Endpoint,
    body: &mut Map<String, Value>,
    total: u64,
) -> Result<CompletionLimit, ApiError> {
    let asked = completion_limit(endpoint, body);
    if !endpoint.generates() {
        return Ok(asked);
    }
    let share = total / asked.sequences;
    if share == 0 {
        let field = if asked.sequences > 1 {
            "n"
        } else {
            "max_tokens"
        };
        return Err(ApiError::invalid(
            field,
            "invalid_value",
            format!(
                "a limit of {total} completion tokens leaves none for each of {} sequences",
                asked.sequences
            ),
        ));
    }
    let per_choice = asked.per_choice.map_or(share, |m| m.min(share));
    body.insert("max_tokens".into(), Value::from(per_choice));
    if endpoint == Endpoint::ChatCompletions && body.contains_key("max_completion_tokens") {
        body.insert("max_completion_tokens".into(), Value::from(per_choice));
    }
    Ok(CompletionLimit {
        per_choice: Some(per_choice),
        sequences: asked.sequences,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test bodies are objects"),
        }
    }

    #[test]
    fn reads_the_limit_and_the_sequences() {
        let chat = Endpoint::ChatCompletions;
        let b = map(json!({"max_tokens": 10, "max_completion_tokens": 7, "n": 3}));
        let l = completion_limit(chat, &b);
        assert_eq!(l.per_choice, Some(7));
        assert_eq!(l.sequences, 3);
        assert_eq!(l.total(), Some(21));
        let b = map(json!({"prompt": "x", "best_of": 4, "n": 2, "max_tokens": 5}));
        assert_eq!(
            completion_limit(Endpoint::Completions, &b).total(),
            Some(20)
        );
        // best_of is a completions field; chat ignores it.
        let b = map(json!({"best_of": 4}));
        assert_eq!(completion_limit(chat, &b).sequences, 1);
        assert_eq!(completion_limit(chat, &b).total(), None);
    }

    #[test]
    fn caps_a_larger_ask_and_fills_a_missing_one() {
        let chat = Endpoint::ChatCompletions;
        let mut b = map(json!({"max_tokens": 32000}));
        let l = cap_completion_tokens(chat, &mut b, 100).unwrap();
        assert_eq!(l.total(), Some(100));
        assert_eq!(b["max_tokens"], json!(100));
        assert!(!b.contains_key("max_completion_tokens"));

        let mut b = map(json!({"max_completion_tokens": 32000, "max_tokens": 5, "n": 4}));
        let l = cap_completion_tokens(chat, &mut b, 100).unwrap();
        // The body's max_completion_tokens wins over max_tokens, then the share of 100 / 4.
        assert_eq!(l.per_choice, Some(25));
        assert_eq!(b["max_completion_tokens"], json!(25));
        assert_eq!(b["max_tokens"], json!(25));

        let mut b = map(json!({}));
        cap_completion_tokens(chat, &mut b, 1000).unwrap();
        assert_eq!(b["max_tokens"], json!(1000));

        // A lower ask is kept.
        let mut b = map(json!({"max_tokens": 3}));
        let l = cap_completion_tokens(chat, &mut b, 1000).unwrap();
        assert_eq!(l.total(), Some(3));
        assert_eq!(b["max_tokens"], json!(3));
    }

    #[test]
    fn no_room_is_refused_naming_the_field() {
        let chat = Endpoint::ChatCompletions;
        let mut b = map(json!({"max_tokens": 32000}));
        let e = cap_completion_tokens(chat, &mut b, 0).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert_eq!(
            b["max_tokens"],
            json!(32000),
            "a refused body is left as it was"
        );
        let mut b = map(json!({"n": 8}));
        let e = cap_completion_tokens(chat, &mut b, 7).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("n"));
    }

    #[test]
    fn embeddings_have_no_completion_tokens_and_keep_their_body() {
        let e = Endpoint::Embeddings;
        let mut b = map(json!({"model": "m", "input": ["a", "b"]}));
        let before = b.clone();
        let l = cap_completion_tokens(e, &mut b, 0).unwrap();
        assert_eq!(l.total(), Some(0));
        assert_eq!(b, before);
        assert_eq!(completion_limit(e, &b).total(), Some(0));
        assert_eq!(sequences(e, &b), 1);
    }
}
