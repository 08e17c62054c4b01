//! `HttpEngine` against a real OpenAI-compatible server.
//!
//! By default the test starts one itself: llama-cpp-python's server (the venv
//! `scripts/setup --engine-server` makes, named by `COCOON_ENGINE_SERVER_PYTHON`, which
//! `scripts/test` sets) serving the default model (`COCOON_TEST_MODEL`) on a port it binds
//! and reports, and kills it at the end. Under `scripts/test` a missing venv or model fails
//! the test; elsewhere it is skipped with a message. To test another server instead, name it:
//!
//! ```sh
//! COCOON_TEST_OPENAI_URL=http://127.0.0.1:8000 \
//! COCOON_TEST_OPENAI_MODEL=Qwen/Qwen2.5-0.5B-Instruct \
//! COCOON_TEST_OPENAI_KIND=vllm \            # vllm | sglang | llama-server | ollama | openai
//! COCOON_TEST_OPENAI_KEY_FILE=key.txt \     # optional
//! cargo test -p cocoon-engine --test external -- --nocapture
//! ```
//!
//! Checks what the worker relies on: the server is healthy; a streamed and a non-streamed
//! chat completion of the same prompt both end with usage; the streamed one arrives in more
//! than one piece; prompt tokens agree between the two (the same prompt), and the usage
//! comes from the server (or is counted where the server omits it, which the test prints:
//! llama-cpp-python reports none in streams); a prompt over the context is the app's 400
//! `context_length_exceeded`, not a failure of the engine.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "../../testkit/src/engine_server.rs"]
#[allow(dead_code, unreachable_pub)]
mod engine_server;

use cocoon_engine::{
    BackendKind, BodyEvent, Engine, EngineError, EngineRequest, HttpEngine, HttpEngineConfig,
};
use cocoon_openai::{Endpoint, Usage};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The model name the started server serves the default GGUF under.
const STARTED_MODEL: &str = "SmolLM2-135M-Instruct";
/// The started server's context, tokens.
const STARTED_CTX: u32 = 2048;

/// The server named by `COCOON_TEST_OPENAI_URL`, or llama-cpp-python's started here (kept
/// alive by the returned handle); `None` when skipped.
fn server() -> Option<(HttpEngine, Option<engine_server::EngineServer>)> {
    if let Ok(url) = std::env::var("COCOON_TEST_OPENAI_URL") {
        let model = std::env::var("COCOON_TEST_OPENAI_MODEL")
            .expect("COCOON_TEST_OPENAI_MODEL names the served model");
        let kind = std::env::var("COCOON_TEST_OPENAI_KIND").unwrap_or_else(|_| "openai".into());
        let kind = BackendKind::parse(&kind).expect("a known COCOON_TEST_OPENAI_KIND");
        let mut cfg = HttpEngineConfig::new(url, kind, model);
        if let Ok(f) = std::env::var("COCOON_TEST_OPENAI_KEY_FILE") {
            cfg.api_key = Some(std::fs::read_to_string(f).unwrap().trim().to_owned());
        }
        return Some((HttpEngine::new(cfg).unwrap(), None));
    }
    let python = engine_server::EngineServer::python()?;
    let Some(gguf) = std::env::var_os("COCOON_TEST_MODEL") else {
        assert!(
            std::env::var_os("COCOON_REQUIRE_PREREQS").is_none()
                && std::env::var_os("CI").is_none(),
            "COCOON_TEST_MODEL must be set under scripts/test (it pulls the default model)"
        );
        eprintln!("skipped: COCOON_TEST_MODEL is not set");
        return None;
    };
    let s = engine_server::EngineServer::start(
        &python,
        std::path::Path::new(&gguf),
        STARTED_MODEL,
        STARTED_CTX,
    );
    let mut cfg = HttpEngineConfig::new(&s.url, BackendKind::OpenAi, STARTED_MODEL);
    cfg.context_length = Some(STARTED_CTX);
    Some((HttpEngine::new(cfg).unwrap(), Some(s)))
}

async fn run(e: &HttpEngine, stream: bool) -> (u16, usize, Vec<u8>, Usage, bool) {
    let body: Map<String, Value> = serde_json::from_value(json!({
        "model": e.model_info().name,
        "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        "max_tokens": 32,
        "temperature": 0,
        "stream": stream,
    }))
    .unwrap();
    submit(e, body, stream).await
}

/// Submits `body` as the worker does (streams ask for usage) and gathers the answer.
async fn submit(
    e: &HttpEngine,
    mut body: Map<String, Value>,
    stream: bool,
) -> (u16, usize, Vec<u8>, Usage, bool) {
    if stream {
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let mut r = e
        .submit(EngineRequest {
            endpoint: Endpoint::ChatCompletions,
            body,
            stream,
            timeout: Duration::from_secs(120),
        })
        .await
        .expect("the server accepts the request");
    let mut bytes = Vec::new();
    let mut pieces = 0;
    while let Some(ev) = r.body.recv().await {
        match ev {
            BodyEvent::Data(d) => {
                pieces += 1;
                bytes.extend_from_slice(&d);
            }
            BodyEvent::End {
                usage,
                counted_locally,
            } => return (r.status, pieces, bytes, usage, counted_locally),
            BodyEvent::Failed { error, usage } => {
                panic!("the answer broke off: {error} (usage so far {usage:?})")
            }
        }
    }
    panic!("the body ended without a final event");
}

#[tokio::test]
async fn real_server_streams_and_reports_usage() {
    let Some((e, started)) = server() else {
        return;
    };
    let h = e.health().await;
    assert!(h.up, "server unhealthy: {:?}", h.reason);

    let (status, _, plain, u1, local1) = run(&e, false).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&plain));
    let v: Value = serde_json::from_slice(&plain).expect("a JSON completion");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    assert!(u1.prompt_tokens > 0 && u1.completion_tokens > 0, "{u1:?}");
    // The usage is the server's own, as its JSON says.
    assert_eq!(Usage::from_json(&v["usage"]), Some(u1), "{v}");
    assert!(!local1, "the whole answer's usage was counted here");

    let (status, pieces, sse, u2, local2) = run(&e, true).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&sse));
    assert!(pieces > 1, "streamed in pieces, got {pieces}");
    assert!(
        String::from_utf8_lossy(&sse).contains("data: "),
        "SSE framing"
    );
    assert!(u2.completion_tokens > 0, "{u2:?}");
    assert_eq!(
        u1.prompt_tokens, u2.prompt_tokens,
        "same prompt, same count"
    );
    if started.is_some() {
        // llama-cpp-python sends no usage in a stream: it is counted (pieces, and the prompt
        // as the server counts it), and at temperature 0 it is what the server reported for
        // the same answer whole.
        assert!(
            local2,
            "llama-cpp-python reported streamed usage: update the docs"
        );
        assert_eq!(u2, u1, "streamed usage differs from the whole answer's");
    }
    eprintln!(
        "non-streamed {u1:?} (counted locally: {local1}); streamed {u2:?} in {pieces} pieces \
         (counted locally: {local2})"
    );

    // A prompt over the context: the app's 400, with OpenAI's code, before any answer.
    if let Some(ctx) = e.model_info().context_length {
        for stream in [false, true] {
            let mut body: Map<String, Value> = serde_json::from_value(json!({
                "model": e.model_info().name,
                "messages": [{"role": "user", "content": "word ".repeat(ctx as usize + 50)}],
                "max_tokens": 16,
                "stream": stream,
            }))
            .unwrap();
            if stream {
                body.insert("stream_options".into(), json!({"include_usage": true}));
            }
            let err = e
                .submit(EngineRequest {
                    endpoint: Endpoint::ChatCompletions,
                    body,
                    stream,
                    timeout: Duration::from_secs(120),
                })
                .await
                .expect_err("a prompt over the context was accepted");
            let EngineError::Invalid(api) = &err else {
                panic!("over the context (stream={stream}): {err:?}");
            };
            assert_eq!(api.code, Some("context_length_exceeded"), "{api:?}");
        }
    }
}
