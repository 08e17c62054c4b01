//! What a request may cost, enforced by the worker: the completion-token limit the proxy wrote
//! into the body is a hard stop even for an engine that ignores it, and the request is billed
//! at the coefficient the proxy quoted when it routed it (not at one changed afterwards).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::Ordering;

use cocoon_openai::Usage;
use cocoon_testkit::prelude::*;
use serde_json::json;

fn body(mode: &str, extra: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&chat_with(mode, true, extra)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_ignores_max_tokens_is_cut_at_the_limit_and_billed_no_more() {
    let (base, eng, mut proxy, dir) = worker_rig().await;
    let w = start_worker_at(&proxy, &base, dir.path(), |cfg| {
        cfg.tokenizer = Some(Arc::new(Words));
    })
    .await;
    let mut c = proxy.next_conn().await;
    // The fake engine's "endless" mode streams one word every 20 ms whatever max_tokens says.
    c.run(1, CHAT, &body("endless", json!({"max_tokens": 5})))
        .await;
    let mut parts = 0;
    let e = loop {
        match c.next().await {
            FromWorker::Head(..) => {}
            FromWorker::Part(_) => parts += 1,
            FromWorker::Error(e) => break e,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(e.error.contains("limit of 5 tokens"), "{}", e.error);
    // At most one piece more than the limit: a choice's held-back text ends it.
    assert!(parts <= 6, "{parts} parts relayed");
    // Billed for the limit at most: 5 words × 1.5 × 2.0, plus the 1-word prompt × 1.5.
    let [prompt, _, completion, _, total] = final_tokens(&e.final_info);
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
    let (base, _eng, mut proxy, dir) = worker_rig().await;
    let w = start_worker_at(&proxy, &base, dir.path(), |_| {}).await;
    let mut c = proxy.next_conn().await;
    // The worker's own coefficient is 1.5; the proxy routed this request at 1.0 (the worker
    // raised its price after the proxy picked it).
    let query = http_request(CHAT, &body("json", json!({"stream": false})));
    c.run_quoted(1, query, 1000).await;
    let fi = loop {
        match c.next().await {
            FromWorker::Head(h, _) if h.final_info.is_some() => break h.final_info,
            FromWorker::Part(p) if p.final_info.is_some() => break p.final_info,
            FromWorker::Error(e) => panic!("failed: {}", e.error),
            _ => {}
        }
    };
    // {"prompt_tokens": 12, "completion_tokens": 4} at 1.0: 12 + 4 × 2.0.
    let want = prices().adjust(&Usage::new(12, 4), 1000);
    assert_eq!(final_tokens(&fi)[4], want.total as i64);
    assert_eq!(want.total, 20);
    w.shutdown().await;
}
