//! The worker with the embedded llama.cpp engine and the real default model
//! (SmolLM2-135M-Instruct Q4_1 from `COCOON_TEST_MODEL`, which `scripts/test` pulls through
//! `cocoon model pull`): the same sampled request (temperature 0.8, fixed seed) streamed and
//! not streamed gives the same text and the same `tokensUsed` in `proxy.queryFinalInfo`, and
//! those counts equal the engine's usage and its tokenizer's count of the answer. Outside CI,
//! without the model, the test says so and returns; under `CI` it fails.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;

use cocoon_llama::{LlamaConfig, LlamaEngine};
use cocoon_testkit::prelude::*;
use cocoon_tl::types::proxy as tproxy;
use cocoon_worker::Worker;
use serde_json::{Value, json};

/// Sends one request and collects (status, body bytes, final info, parts after the head).
async fn run(
    c: &mut ProxyConn,
    id: u8,
    body: &Value,
) -> (i32, Vec<u8>, tproxy::QueryFinalInfo, usize) {
    // Routed at the worker's own coefficient of 1.0 (requests are billed at the quote).
    c.run_quoted(
        id,
        http_request(CHAT, &serde_json::to_vec(body).unwrap()),
        1000,
    )
    .await;
    let mut bytes = Vec::new();
    let mut status = 0;
    let mut parts = 0;
    loop {
        match c.next().await {
            FromWorker::Head(h, r) => {
                status = r.status_code;
                bytes.extend_from_slice(&r.payload);
                if let Some(f) = h.final_info {
                    return (status, bytes, f, parts);
                }
            }
            FromWorker::Part(p) => {
                parts += 1;
                bytes.extend_from_slice(&p.answer);
                if let Some(f) = p.final_info {
                    return (status, bytes, f, parts);
                }
            }
            FromWorker::Error(e) => panic!("error answer: {e:?}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_and_unstreamed_usage_agree_with_the_real_model() {
    let Some(path) = cocoon_testkit::fixtures::test_model() else {
        return;
    };
    let mut cfg = LlamaConfig::new(&path, "Smol");
    cfg.slots = 2;
    cfg.ctx_per_slot = 1024;
    let engine = Arc::new(LlamaEngine::load(cfg).expect("model loads"));
    let tokenizer = engine.tokenizer();

    let mut proxy = TestProxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut wc = worker_config(&proxy.addr, "http://127.0.0.1:1", dir.path());
    wc.engine = engine;
    wc.tokenizer = Some(Arc::clone(&tokenizer));
    wc.coefficient = 1000;
    wc.prices.multipliers = cocoon_openai::Multipliers::default();
    let w = Worker::start(wc).await.unwrap();
    let mut c = proxy.next_conn().await;

    let body = |stream: bool| {
        json!({
            "model": "Smol",
            "messages": [{"role": "user", "content": "Translate to French: Good morning, how are you?"}],
            "temperature": 0.8,
            "seed": 1234,
            "max_tokens": 40,
            "stream": stream,
        })
    };

    let (status, plain, info_plain, _) = run(&mut c, 1, &body(false)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&plain));
    let v: Value = serde_json::from_slice(&plain).unwrap();
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let usage = &v["usage"];
    assert!(!text.is_empty());
    // The worker bills what the engine reported, and that is the tokenizer's count.
    assert_eq!(
        tokens5(&info_plain.tokens_used),
        [
            usage["prompt_tokens"].as_i64().unwrap(),
            0,
            usage["completion_tokens"].as_i64().unwrap(),
            0,
            usage["total_tokens"].as_i64().unwrap()
        ]
    );
    assert_eq!(
        usage["prompt_tokens"].as_i64(),
        Some(42),
        "the chat-templated prompt"
    );
    let counted = tokenizer.count(&text).unwrap() as i64;
    assert!(
        (counted - usage["completion_tokens"].as_i64().unwrap()).abs() <= 1,
        "re-tokenizing the answer gives {counted}, usage says {}",
        usage["completion_tokens"]
    );

    // Streamed: the same text, assembled from SSE deltas relayed part by part, and the same
    // tokens.
    let (status, sse, info_stream, parts) = run(&mut c, 2, &body(true)).await;
    assert_eq!(status, 200);
    assert!(parts > 3, "streamed in parts as produced, got {parts}");
    let mut streamed = String::new();
    let mut sse_usage = None;
    for line in String::from_utf8(sse).unwrap().lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if let Some(d) = v["choices"][0]["delta"]["content"].as_str() {
            streamed.push_str(d);
        }
        if !v["usage"].is_null() {
            sse_usage = Some(v["usage"].clone());
        }
    }
    assert_eq!(streamed, text, "same seed, same answer");
    assert_eq!(
        tokens5(&info_stream.tokens_used),
        tokens5(&info_plain.tokens_used)
    );
    assert_eq!(sse_usage.as_ref(), Some(usage), "usage in the last chunk");
    w.shutdown().await;
}
