//! The OpenAI request validator (`cocoon_openai::validate_request`) and the completion-limit
//! rewrite (`cap_completion_tokens`) on arbitrary bodies: what a client's app sends the
//! client, and what a client sends a proxy and a proxy a worker.
//!
//! Input: a flags byte (bit 0: `/v1/completions` instead of `/v1/chat/completions`; bit 1:
//! take the body extensions, as the client does; bit 2: a `max_tokens_cap`), then a `u32` LE
//! token total (the cap, and the limit written by `cap_completion_tokens`), then the body.
//!
//! Checked: no panic. An accepted request names a non-empty model and its endpoint's required
//! field; its extensions are gone when taken; a streamed one asks for usage
//! (`stream_options.include_usage: true`), an unstreamed one carries no `stream_options`; its
//! `max_tokens` is what `completion_limit` reads and within the cap. Validating the forwarded
//! body again gives the same request (what the client forwards, the worker accepts). The
//! rewrite, on a validated body as the client does and on any JSON object as the proxy does:
//! on success the limit written is at least 1 per sequence (unless the body asked for 0), at
//! most the total for all of them, never above the body's own ask, and is what `completion_limit` reads back, and a validated
//! body stays valid; on failure the body is left as it was and the total leaves no token per
//! sequence.
#![no_main]

use cocoon_openai::limit::{cap_completion_tokens, completion_limit};
use cocoon_openai::validate::{ValidateOptions, parse_strict};
use cocoon_openai::{Endpoint, prompt_text, validate_request};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const EXTENSIONS: [&str; 4] = ["max_coefficient", "timeout", "request_guid", "enable_debug"];

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let flags = data[0];
    let total = u64::from(u32::from_le_bytes([data[1], data[2], data[3], data[4]]));
    let body = &data[5..];
    let endpoint = if flags & 1 == 0 {
        Endpoint::ChatCompletions
    } else {
        Endpoint::Completions
    };
    let opts = ValidateOptions {
        take_extensions: flags & 2 != 0,
        max_tokens_cap: (flags & 4 != 0).then_some(total),
    };

    match validate_request(endpoint, body, &opts) {
        Ok(v) => {
            check_validated(endpoint, &opts, &v);
            let again = validate_request(endpoint, &v.body_bytes(), &opts)
                .expect("the forwarded body validates again");
            assert_eq!(again.body, v.body, "validation is a fixpoint");
            assert_eq!(again.model, v.model);
            assert_eq!(again.stream, v.stream);
            assert_eq!(again.max_tokens, v.max_tokens);
            assert_eq!(again.extensions, Default::default());
            let _ = prompt_text(endpoint, &v.body);

            // The client writes the limit it reserved into the validated body; the worker
            // validates it again (without extensions) and reads the same limit back.
            let mut capped = v.body.clone();
            if let Some(limit) = check_cap(endpoint, &mut capped, total) {
                let worker = ValidateOptions {
                    take_extensions: false,
                    max_tokens_cap: None,
                };
                let bytes = serde_json::to_vec(&capped).expect("a map serialises");
                let w = validate_request(endpoint, &bytes, &worker)
                    .expect("a capped valid body stays valid");
                assert_eq!(completion_limit(endpoint, &w.body), limit);
                assert_eq!(w.max_tokens, limit.per_choice);
            }
        }
        Err(e) => {
            assert_eq!(e.status(), 400, "a refused body is the caller's fault");
            assert!(!e.message.is_empty());
        }
    }

    // The proxy caps any JSON object a client sends, validated or not.
    if let Ok(Value::Object(mut map)) = parse_strict(body) {
        check_cap(endpoint, &mut map, total);
    }
});

fn check_validated(
    endpoint: Endpoint,
    opts: &ValidateOptions,
    v: &cocoon_openai::ValidatedRequest,
) {
    assert_eq!(v.endpoint, endpoint);
    assert!(!v.model.is_empty());
    assert_eq!(v.body.get("model"), Some(&Value::String(v.model.clone())));
    let required = match endpoint {
        Endpoint::ChatCompletions => "messages",
        Endpoint::Completions => "prompt",
        // Not drawn by this target (the flags pick chat or completions).
        Endpoint::Embeddings => "input",
    };
    assert!(v.body.contains_key(required), "{required} is required");
    if opts.take_extensions {
        for k in EXTENSIONS {
            assert!(!v.body.contains_key(k), "extension {k} forwarded");
        }
    }
    assert_eq!(v.stream, v.body.get("stream") == Some(&Value::Bool(true)));
    if v.stream {
        let include_usage = v
            .body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"));
        assert_eq!(
            include_usage,
            Some(&Value::Bool(true)),
            "a streamed request must ask for usage: {:?}",
            v.body.get("stream_options")
        );
    } else {
        assert!(!v.body.contains_key("stream_options"));
    }
    assert_eq!(v.max_tokens, completion_limit(endpoint, &v.body).per_choice);
    if let (Some(cap), Some(m)) = (opts.max_tokens_cap, v.max_tokens) {
        assert!(m <= cap, "max_tokens {m} above the cap {cap}");
    }
}

/// Runs `cap_completion_tokens` and checks its result; the limit written, on success.
fn check_cap(
    endpoint: Endpoint,
    body: &mut Map<String, Value>,
    total: u64,
) -> Option<cocoon_openai::CompletionLimit> {
    let before = body.clone();
    let asked = completion_limit(endpoint, body);
    assert!(asked.sequences >= 1);
    match cap_completion_tokens(endpoint, body, total) {
        Ok(limit) => {
            let per = limit.per_choice.expect("a written limit");
            // At least one token per sequence, unless the body itself asked for none (which
            // the validator refuses, but the proxy passes on as asked).
            assert!(
                per >= 1 || asked.per_choice == Some(0),
                "no token per sequence"
            );
            assert_eq!(limit.sequences, asked.sequences);
            assert!(
                limit.total().is_some_and(|t| t <= total),
                "{limit:?} above {total}"
            );
            if let Some(m) = asked.per_choice {
                assert!(per <= m, "the limit rose from {m} to {per}");
            }
            assert_eq!(body.get("max_tokens"), Some(&Value::from(per)));
            assert_eq!(completion_limit(endpoint, body), limit, "read back differs");
            Some(limit)
        }
        Err(e) => {
            assert_eq!(*body, before, "a refused body is left as it was");
            assert!(total / asked.sequences == 0, "refused with room: {e:?}");
            assert_eq!(e.status(), 400);
            None
        }
    }
}
