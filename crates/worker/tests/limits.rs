//! What a request may cost, enforced by the worker: the completion-token limit the proxy wrote
//! into the body is a hard stop even for an engine that ignores it, and the request is billed
//! at the coefficient the proxy quoted when it routed it (not at one changed afterwards).

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use cocoon_openai::Usage;
use cocoon_tl::types::proxy as tproxy;
use cocoon_worker::Worker;
use common::*;
use serde_json::json;

fn tokens(info: &Option<tproxy::QueryFinalInfo>) -> [i64; 5] {
    let t = &info.as_ref().expect("final info").tokens_used;
    [
        t.prompt_tokens_used,
        t.cached_tokens_used,
        t.completion_tokens_used,
        t.reasoning_tokens_used,
        t.total_tokens_used,
    ]
}

fn body(mode: &str, extra: serde_json::Value) -> Vec<u8> {
    let mut b = json!({
        "model": "Smol",
        "messages": [{"role": "user", "content": mode}],
        "stream": true,
    });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    serde_json::to_vec(&b).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_ignores_max_tokens_is_cut_at_the_limit_and_billed_no_more() {
    let (base, eng) = fake_engine().await;
    let mut proxy = TestProxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = worker_config(&proxy.addr, &base, dir.path());
    cfg.tokenizer = Some(Arc::new(Words));
    let w = Worker::start(cfg).await.unwrap();
    let mut c = proxy.next_conn().await;
    // The fake engine's "endless" mode streams one word every 20 ms whatever max_tokens says.
    c.run(
        1,
        "/v1/chat/completions",
        &body("endless", json!({"max_tokens": 5})),
    )
    .await;
    let mut parts = 0;
    let e = loop {
        match c.next().await {
            Answer::Head(..) => {}
            Answer::Part(_) => parts += 1,
            Answer::Error(e) => break e,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(e.error.contains("limit of 5 tokens"), "{}", e.error);
    assert!(parts <= 5, "{parts} parts relayed");
    // Billed for the limit at most: 5 words × 1.5 × 2.0, plus the 1-word prompt × 1.5.
    let [prompt, _, completion, _, total] = tokens(&e.final_info);
    assert_eq!((prompt, completion, total), (1, 15, 16));
    eventually("engine stream dropped", || {
        eng.dropped.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(w.stats().counters.limit_cuts, 1);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billed_at_the_coefficient_the_proxy_quoted() {
    let (base, _eng) = fake_engine().await;
    let mut proxy = TestProxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = worker_config(&proxy.addr, &base, dir.path());
    let w = Worker::start(cfg).await.unwrap();
    let mut c = proxy.next_conn().await;
    // The worker's own coefficient is 1.5; the proxy routed this request at 1.0 (the worker
    // raised its price after the proxy picked it).
    let query = http_request(
        "/v1/chat/completions",
        &body("json", json!({"stream": false})),
    );
    c.run_quoted(1, query, 1000).await;
    let fi = loop {
        match c.next().await {
            Answer::Head(h, _) if h.final_info.is_some() => break h.final_info,
            Answer::Part(p) if p.final_info.is_some() => break p.final_info,
            Answer::Error(e) => panic!("failed: {}", e.error),
            _ => {}
        }
    };
    // {"prompt_tokens": 12, "completion_tokens": 4} at 1.0: 12 + 4 × 2.0.
    let want = prices().adjust(&Usage::new(12, 4), 1000);
    assert_eq!(tokens(&fi)[4], want.total as i64);
    assert_eq!(want.total, 20);
    w.shutdown().await;
}
