//! `HttpEngine` against a real OpenAI-compatible server. Ignored by default (no such server
//! runs under `scripts/test`, so `cargo test` reports it as ignored rather than passed); run
//! it by naming one (without `COCOON_TEST_OPENAI_URL` it fails):
//!
//! ```sh
//! COCOON_TEST_OPENAI_URL=http://127.0.0.1:8000 \
//! COCOON_TEST_OPENAI_MODEL=Qwen/Qwen2.5-0.5B-Instruct \
//! COCOON_TEST_OPENAI_KIND=vllm \            # vllm | sglang | llama-server | ollama | openai
//! COCOON_TEST_OPENAI_KEY_FILE=key.txt \     # optional
//! cargo test -p cocoon-engine --test external -- --ignored --nocapture
//! ```
//!
//! Checks what the worker relies on: the server is healthy; a streamed and a non-streamed
//! chat completion of the same prompt both end with usage; the streamed one arrives in more
//! than one piece; prompt tokens agree between the two (the same prompt), and the usage
//! comes from the server (or is counted locally only where the server omits it, which the
//! test prints).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_engine::{BackendKind, BodyEvent, Engine, EngineRequest, HttpEngine, HttpEngineConfig};
use cocoon_openai::{Endpoint, Usage};
use serde_json::{Map, Value, json};
use std::time::Duration;

fn server() -> Option<HttpEngine> {
    let url = std::env::var("COCOON_TEST_OPENAI_URL").ok()?;
    let model = std::env::var("COCOON_TEST_OPENAI_MODEL")
        .expect("COCOON_TEST_OPENAI_MODEL names the served model");
    let kind = std::env::var("COCOON_TEST_OPENAI_KIND").unwrap_or_else(|_| "openai".into());
    let kind = BackendKind::parse(&kind).expect("a known COCOON_TEST_OPENAI_KIND");
    let mut cfg = HttpEngineConfig::new(url, kind, model);
    if let Ok(f) = std::env::var("COCOON_TEST_OPENAI_KEY_FILE") {
        cfg.api_key = Some(std::fs::read_to_string(f).unwrap().trim().to_owned());
    }
    Some(HttpEngine::new(cfg).unwrap())
}

async fn run(e: &HttpEngine, stream: bool) -> (u16, usize, Vec<u8>, Usage, bool) {
    let mut body: Map<String, Value> = serde_json::from_value(json!({
        "model": e.model_info().name,
        "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        "max_tokens": 32,
        "temperature": 0,
        "stream": stream,
    }))
    .unwrap();
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
#[ignore = "needs a real OpenAI-compatible server: set COCOON_TEST_OPENAI_URL and run with --ignored"]
async fn real_server_streams_and_reports_usage() {
    let e = server().expect("COCOON_TEST_OPENAI_URL names the server to test");
    let h = e.health().await;
    assert!(h.up, "server unhealthy: {:?}", h.reason);

    let (status, _, plain, u1, local1) = run(&e, false).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&plain));
    let v: Value = serde_json::from_slice(&plain).expect("a JSON completion");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    assert!(u1.prompt_tokens > 0 && u1.completion_tokens > 0, "{u1:?}");

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
    eprintln!(
        "non-streamed {u1:?} (counted locally: {local1}); streamed {u2:?} in {pieces} pieces \
         (counted locally: {local2})"
    );
}
