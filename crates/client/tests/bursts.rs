//! Bursts through the real path: the client's HTTP API, a real proxy and one real worker (4
//! slots) whose engine is a fake OpenAI server on loopback, RA-TLS with sim attestation.
//! Requests beyond the worker's slots wait in the proxy's queue; only a full queue answers
//! 429 with `Retry-After`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_proxy::Meter as _;
use cocoon_testkit::client::{gateway_config, start_gateway};
use cocoon_testkit::fixtures::root_with_proxy_image;
use cocoon_testkit::prelude::*;
use cocoon_testkit::worker::{network, start_worker};
use cocoon_ton::root::RootConfig;
use serde_json::{Value, json};

fn test_root() -> RootConfig {
    root_with_proxy_image(1, true)
}

fn chat(mode: &str) -> Value {
    json!({
        "model": "Smol",
        "messages": [{"role": "user", "content": mode}],
        "stream": true,
        "max_tokens": 50,
    })
}

/// Status, `Retry-After` and body of one chat completion.
async fn send(http: reqwest::Client, base: String, body: Value) -> (u16, Option<String>, String) {
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_requests_on_one_worker_all_succeed() {
    let (net, w) = network(test_root()).await;
    let (c, base) = start_gateway(
        gateway_config(vec![net.proxy.client_addr().to_string()], test_root()),
        1,
    )
    .await;
    let http = reqwest::Client::new();
    // Each answer streams 20 words 5 ms apart; the worker serves 4 at once.
    let all = futures::future::join_all(
        (0..64).map(|_| tokio::spawn(send(http.clone(), base.clone(), chat("stream")))),
    )
    .await;
    for r in all {
        let (status, _, text) = r.unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("w19") && text.contains("[DONE]"), "{text}");
    }
    let s = net.proxy.stats();
    assert_eq!(s.counters.requests_success, 64);
    assert_eq!(s.counters.requests_failed, 0);
    let q = &s.queue;
    assert!(q.served > 0, "no request waited: {q:?}");
    assert_eq!((q.rejected, q.expired), (0, 0));
    assert!(q.waiting.is_empty());
    assert!(s.workers[0].max_active == 4 && s.workers[0].running == 0);
    assert_eq!(w.engine.requests(), 64);
    // The waits are in the proxy's metrics and stats pages.
    let metrics = get_text(&http, &format!("{}/metrics", net.admin())).await;
    assert!(
        metrics.contains(&format!(
            "cocoon_proxy_queue_wait_seconds_count {}",
            q.served
        )),
        "{metrics}"
    );
    assert!(metrics.contains("cocoon_proxy_queue_rejected_total 0"));
    let js: Value = get_json(&http, &format!("{}/jsonstats", net.admin())).await;
    assert_eq!(js["queue"]["served"], q.served);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after_and_only_the_served_are_billed() {
    let net = start_proxy_with(test_root(), |cfg| cfg.timings.queue_max_per_model = 2).await;
    net.fund_client(&addr(0x42), 10_000_000_000, true);
    let w = start_worker(&net, 0x61).await;
    net.wait_workers(1).await;
    let (c, base) = start_gateway(
        gateway_config(vec![net.proxy.client_addr().to_string()], test_root()),
        1,
    )
    .await;
    let http = reqwest::Client::new();
    // Ten at once; each answer waits at the engine's gate until we open it: 4 run, 2 wait
    // in the queue, 4 find it full.
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(send(http.clone(), base.clone(), chat("gated"))))
        .collect();
    eventually("4 running, 2 waiting, 4 refused", || {
        let s = net.proxy.stats();
        s.workers[0].running == 4
            && s.queue.waiting == [("Smol".to_string(), 2)]
            && s.queue.rejected == 4
    })
    .await;
    let metrics = get_text(&http, &format!("{}/metrics", net.admin())).await;
    assert!(
        metrics.contains("cocoon_proxy_queue_length{model=\"Smol\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("cocoon_proxy_queue_rejected_total 4"));
    let html = get_text(&http, &format!("{}/stats", net.admin())).await;
    assert!(html.contains("refused: queue full"));
    w.engine.gate.add_permits(6);
    let mut statuses = Vec::new();
    for t in tasks {
        let (status, retry, text) = t.await.unwrap();
        match status {
            200 => assert!(
                text.contains("Bonjour") && text.contains("[DONE]"),
                "{text}"
            ),
            429 => {
                assert_eq!(retry.as_deref(), Some("1"));
                let e: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(e["error"]["type"], "rate_limit_error", "{text}");
                assert!(
                    e["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("queue is full"),
                    "{text}"
                );
            }
            other => panic!("unexpected status {other}: {text}"),
        }
        statuses.push(status);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429, 429, 429]);
    // Billing: the six served, nothing for the refused.
    let s = net.proxy.stats();
    assert_eq!(s.counters.requests_success, 6);
    assert_eq!(s.counters.requests_failed, 4);
    assert_eq!((s.queue.served, s.queue.rejected), (2, 4));
    assert_eq!(w.engine.requests(), 6);
    let js: Value = get_json(&http, &format!("{base}/jsonstats")).await;
    let totals = &js["totals"];
    assert_eq!(totals["succeeded"], 6);
    assert_eq!(totals["failed"], 4);
    // Six equal answers booked at the proxy, as the client counted them; nothing reserved
    // is left.
    let tokens = totals["tokens"].as_u64().unwrap();
    assert!(tokens > 0 && tokens.is_multiple_of(6), "{tokens}");
    let booked = net
        .meter
        .client_totals(&net.client_sc(&addr(0x42)).to_string());
    assert_eq!(booked.max, tokens);
    assert_eq!(s.counters.adjusted_tokens_total, tokens);
    c.shutdown().await;
}
