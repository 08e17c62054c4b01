//! The worker through its real path: RA-TLS (sim attestation) to a test proxy on loopback,
//! the proxy side of the handshake, `proxy.runQueryEx`, and an `HttpEngine` against a fake
//! OpenAI-compatible engine streaming SSE.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cocoon_testkit::prelude::*;
use cocoon_tl::enums;
use cocoon_tl::types::proxy as tproxy;
use cocoon_worker::Worker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_streaming_relay_and_exact_final_tokens() {
    let (base, eng, mut proxy, dir) = worker_rig().await;
    let w = start_worker_at(&proxy, &base, dir.path(), |_| {}).await;
    let mut c = proxy.next_conn().await;
    // worker.params flags=3 with everything a proxy checks.
    let p = &c.params;
    assert_eq!(p.model, MODEL);
    assert_eq!(p.coefficient, 1500);
    assert_eq!(p.is_test, Some(true));
    assert_eq!(p.proxy_cnt, Some(1));
    assert_eq!(p.max_active_requests, Some(4));
    assert_eq!(
        (p.min_proto_version, p.max_proto_version),
        (Some(1), Some(3))
    );
    assert_eq!(p.worker_owner_address, addr(0x44).to_string());
    assert_eq!(
        (
            c.compare.tokens_committed_to_blockchain,
            c.compare.tokens_committed_to_db,
            c.compare.max_tokens
        ),
        (0, 0, 0)
    );
    assert!(!c.is_disabled, "engine is up: enabled at handshake");
    eventually("ready", || w.ready_proxies() == 1).await;

    // Streamed: the head and the first chunks arrive while the engine is still held.
    c.run_chat(1, "gated", true).await;
    let FromWorker::Head(h, resp) = c.next().await else {
        panic!("head first")
    };
    assert_eq!(h.request_id, [1; 32]);
    // Version 3: the engine's context length went to the proxy after the handshake.
    assert_eq!(
        c.context_length,
        Some(cocoon_testkit::engine::FAKE_CONTEXT_LENGTH as i32)
    );
    assert!(h.final_info.is_none());
    assert_eq!(resp.status_code, 200);
    assert_eq!(
        header(&resp.headers, "content-type"),
        Some("text/event-stream")
    );
    let start: f64 = header(&resp.headers, "X-Cocoon-Worker-Start")
        .unwrap()
        .parse()
        .unwrap();
    let end: f64 = header(&resp.headers, "X-Cocoon-Worker-End")
        .unwrap()
        .parse()
        .unwrap();
    assert!(start > 1.7e9 && end >= start);
    let chunks = transcript();
    let mut body = Vec::new();
    while body.len() < chunks[0].len() + chunks[1].len() {
        let FromWorker::Part(part) = c.next().await else {
            panic!("part")
        };
        assert!(part.final_info.is_none(), "no final info before the end");
        body.extend(part.answer);
    }
    assert_eq!(body, (chunks[0].clone() + &chunks[1]).into_bytes());
    // Nothing more until the engine goes on.
    assert!(c.next_within(Duration::from_millis(200)).await.is_none());
    eng.gate.add_permits(1);
    let info = loop {
        match c.next().await {
            FromWorker::Part(p) if p.final_info.is_some() => {
                body.extend(p.answer);
                break p.final_info;
            }
            FromWorker::Part(p) => body.extend(p.answer),
            other => panic!("unexpected {other:?}"),
        }
    };
    // usage 31 prompt (16 cached) + 9 completion, coefficient 1.5, multipliers 1/0.5/2/1:
    // prompt 15×1.5=22, cached 16×1.5×0.5=12, completion 9×1.5×2=27.
    assert_eq!(final_tokens(&info), [22, 12, 27, 0, 61]);
    // The body is relayed unchanged, but for COCOON's cost fields (nanoTON at 20 a token) in
    // the usage chunk: exactly what the final info bills.
    let text = String::from_utf8(body).unwrap();
    let usage_at = chunks[..3].concat().len();
    assert_eq!(text[..usage_at], chunks[..3].concat());
    // Keys keep their order; the costs follow the engine's counters.
    let (usage_prefix, _) = chunks[3].split_once("\"usage\"").unwrap();
    assert!(text[usage_at..].starts_with(usage_prefix));
    assert!(text.ends_with("\n\ndata: [DONE]\n\n"));
    let usage_event = &text[usage_at..text.len() - "data: [DONE]\n\n".len()];
    let v: serde_json::Value =
        serde_json::from_str(usage_event.trim_end().strip_prefix("data: ").unwrap()).unwrap();
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"], 31);
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 16);
    assert_eq!(
        (
            &u["prompt_total_cost"],
            &u["completion_total_cost"],
            &u["total_cost"]
        ),
        (
            &serde_json::json!((22 + 12) * 20),
            &serde_json::json!(27 * 20),
            &serde_json::json!(61 * 20)
        )
    );
    assert_eq!(v["id"], "c1");
    let info = info.unwrap();
    assert!(info.worker_start_time.is_some() && info.worker_end_time.is_some());
    let debug: serde_json::Value =
        serde_json::from_str(info.worker_debug.as_deref().unwrap()).unwrap();
    assert_eq!(debug["type"], "worker_stats");
    // COCOON's debug fields: request arrival, engine answer start and end.
    let at = |k: &str| debug[k].as_f64().unwrap();
    assert!(at("start_time") <= at("answer_receive_start_at"));
    assert!(at("answer_receive_start_at") <= at("answer_receive_end_at"));
    // The engine got the validated body with usage forced on.
    let sent = eng.bodies.lock().unwrap()[0].clone();
    assert_eq!(sent["stream_options"]["include_usage"], true);

    // Non-streamed JSON.
    c.run_chat(2, "json", false).await;
    let FromWorker::Head(_, resp) = c.next().await else {
        panic!("head")
    };
    assert_eq!(
        header(&resp.headers, "content-type"),
        Some("application/json")
    );
    let mut json = Vec::new();
    let info = loop {
        let FromWorker::Part(p) = c.next().await else {
            panic!("part")
        };
        json.extend(p.answer);
        if p.final_info.is_some() {
            break p.final_info;
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hi");
    assert_eq!(final_tokens(&info), [18, 0, 12, 0, 30]);
    assert_eq!(v["usage"]["prompt_total_cost"], 18 * 20);
    assert_eq!(v["usage"]["completion_total_cost"], 12 * 20);
    assert_eq!(v["usage"]["total_cost"], 30 * 20);
    assert_eq!(v["usage"]["total_tokens"], 16);
    let st = w.stats();
    assert_eq!(st.counters.requests_success, 2);
    assert_eq!(st.counters.total_tokens, 91);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_errors_with_zero_tokens() {
    let (base, eng, mut proxy, dir) = worker_rig().await;
    let w = start_worker_at(&proxy, &base, dir.path(), |_| {}).await;
    let mut c = proxy.next_conn().await;
    let unknown =
        br#"{"model":"Smol","messages":[{"role":"user","content":"json"}],"frobnicate":1}"#;
    let wrong_model = br#"{"model":"Other","messages":[{"role":"user","content":"json"}]}"#;
    let cases: Vec<(u8, Vec<u8>, i32, &str)> = vec![
        (1, http_request(CHAT, unknown), 602, "frobnicate"),
        (
            2,
            http_request("/v1/audio/speech", &chat_body("json", false)),
            602,
            "unsupported method",
        ),
        // An embeddings request is checked as one: a chat body is not.
        (
            6,
            http_request("/v1/embeddings", &chat_body("json", false)),
            602,
            "unknown or unsupported field 'messages' for /v1/embeddings",
        ),
        (
            3,
            http_request(CHAT, wrong_model),
            621,
            "model name mismatch",
        ),
        (4, b"\x01\x02\x03".to_vec(), 602, "invalid http request"),
        (5, http_request(CHAT, b"{not json"), 602, "invalid request"),
    ];
    for (id, query, code, needle) in cases {
        c.run_raw(id, query).await;
        let FromWorker::Error(e) = c.next().await else {
            panic!("error answer for case {id}")
        };
        assert_eq!(e.request_id, [id; 32]);
        assert_eq!(e.error_code, code, "case {id}: {}", e.error);
        assert!(e.error.contains(needle), "case {id}: {}", e.error);
        assert_eq!(final_tokens(&e.final_info), [0; 5]);
    }
    assert_eq!(
        eng.requests.load(Ordering::SeqCst),
        0,
        "nothing reached the engine"
    );
    assert_eq!(w.stats().counters.requests_failed, 6);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_defaults_to_what_the_engine_serves_at_once() {
    let (base, _eng, mut proxy, dir) = worker_rig().await;
    let mut cfg = worker_config(&proxy.addr, &base, dir.path());
    cfg.max_active_requests = 0;
    let concurrency = cfg.engine.model_info().max_concurrency;
    assert!(concurrency > 1);
    let w = Worker::start(cfg).await.unwrap();
    let c = proxy.next_conn().await;
    assert_eq!(c.params.max_active_requests, Some(concurrency as i32));
    assert_eq!(w.stats().max_active_requests, concurrency);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_active_queries() {
    let (base, eng, mut proxy, dir) = worker_rig().await;
    let mut cfg = worker_config(&proxy.addr, &base, dir.path());
    cfg.max_active_requests = 1;
    let w = Worker::start(cfg).await.unwrap();
    let mut c = proxy.next_conn().await;
    c.run_chat(1, "gated", true).await;
    assert!(matches!(c.next().await, FromWorker::Head(..)));
    c.run_chat(2, "json", false).await;
    let e = loop {
        match c.next().await {
            FromWorker::Error(e) => break e,
            FromWorker::Part(p) => assert_eq!(p.request_id, [1; 32]),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(e.request_id, [2; 32]);
    assert_eq!(e.error, "too many active queries");
    assert_eq!(final_tokens(&e.final_info), [0; 5]);
    eng.gate.add_permits(1);
    loop {
        if let FromWorker::Part(p) = c.next().await
            && p.final_info.is_some()
        {
            break;
        }
    }
    // The slot is free again.
    c.run_chat(3, "json", false).await;
    assert!(matches!(c.next().await, FromWorker::Head(h, _) if h.request_id == [3; 32]));
    assert_eq!(w.stats().counters.requests_rejected, 1);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_failure_mid_stream_bills_usage_so_far_once() {
    let (base, _eng, mut proxy, dir) = worker_rig().await;
    let w = start_worker_at(&proxy, &base, dir.path(), |_| {}).await;
    let mut c = proxy.next_conn().await;
    c.run_chat(1, "fail", true).await;
    assert!(matches!(c.next().await, FromWorker::Head(..)));
    let mut finals = Vec::new();
    let mut data = 0;
    loop {
        match c.next_within(Duration::from_millis(500)).await {
            Some(FromWorker::Part(p)) => {
                assert!(p.final_info.is_none());
                data += p.answer.len();
            }
            Some(FromWorker::Error(e)) => finals.push(e),
            None => break,
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(data > 0, "chunks before the failure were relayed");
    assert_eq!(finals.len(), 1, "exactly one final message");
    let e = &finals[0];
    assert!(e.error.contains("engine"), "{}", e.error);
    // Counted locally (no usage chunk): prompt "fail" = 1 word, completion "one two three" =
    // 3 words; ×1.5, completion ×2.
    assert_eq!(final_tokens(&e.final_info), [1, 0, 9, 0, 10]);
    let st = w.stats();
    assert_eq!(st.counters.total_tokens, 10, "billed once");
    assert_eq!(st.counters.requests_failed, 1);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_reaches_the_engine() {
    let (base, eng, mut proxy, dir) = worker_rig().await;
    let w = start_worker_at(&proxy, &base, dir.path(), |cfg| {
        cfg.tokenizer = Some(Arc::new(Words));
    })
    .await;
    let mut c = proxy.next_conn().await;
    // proxy.cancelQuery (v3).
    c.run_chat(1, "endless", true).await;
    assert!(matches!(c.next().await, FromWorker::Head(..)));
    assert!(matches!(c.next().await, FromWorker::Part(_)));
    c.send(&tproxy::CancelQuery {
        request_id: [1; 32],
        reason: "client went away".into(),
    })
    .await;
    let e = loop {
        match c.next().await {
            FromWorker::Error(e) => break e,
            FromWorker::Part(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(e.error_code, 653);
    // What was streamed is billed (counted locally: the engine reports usage only at the
    // end): prompt "endless" = 1 word ×1.5; n streamed words ×1.5×2.
    let [prompt, cached, completion, reasoning, total] = final_tokens(&e.final_info);
    assert_eq!((prompt, cached, reasoning), (1, 0, 0));
    assert!(completion >= 3 && completion % 3 == 0, "{completion}");
    assert_eq!(total, prompt + completion);
    eventually("billed once", || {
        w.stats().counters.total_tokens == total as u64
    })
    .await;
    eventually("engine stream dropped after cancel", || {
        eng.dropped.load(Ordering::SeqCst)
    })
    .await;
    // A dropped session cancels too.
    c.run_chat(2, "endless", true).await;
    assert!(matches!(c.next().await, FromWorker::Head(..)));
    assert!(!eng.dropped.load(Ordering::SeqCst));
    c.handle.close();
    eventually("engine stream dropped after session loss", || {
        eng.dropped.load(Ordering::SeqCst)
    })
    .await;
    eventually("no active requests", || w.stats().active_requests == 0).await;
    // The worker reconnects.
    let _c2 = proxy.next_conn().await;
    w.shutdown().await;
}

/// A chain on which a sent payout's transaction never shows (fault injection: the message
/// is lost, or the chain is slow): the worker keeps looking for it, counted here.
#[derive(Default)]
struct FakeUnseenPayoutSink {
    submitted: std::sync::atomic::AtomicUsize,
    looks: std::sync::atomic::AtomicUsize,
}

impl cocoon_worker::PayoutSink for FakeUnseenPayoutSink {
    fn submit(
        &self,
        _proxy_sc: &str,
        _boc: Vec<u8>,
        _tokens: u64,
    ) -> futures::future::BoxFuture<'_, Result<Option<cocoon_worker::SentPayout>, String>> {
        self.submitted.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            Ok(Some(cocoon_worker::SentPayout {
                worker_sc: addr(0x77).to_string(),
                body_hash: "00".repeat(32),
                after_lt: None,
                after_hash: None,
            }))
        })
    }

    fn payout_tx<'a>(
        &'a self,
        _sent: &'a cocoon_worker::SentPayout,
    ) -> futures::future::BoxFuture<'a, Result<Option<cocoon_worker::PayoutTx>, String>> {
        self.looks.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(None) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_following_a_sent_payout_on_chain() {
    let (base, _eng, mut proxy, dir) = worker_rig().await;
    let sink = Arc::new(FakeUnseenPayoutSink::default());
    let mut cfg = worker_config(&proxy.addr, &base, dir.path());
    cfg.payout_sink = Some(sink.clone());
    let w = Worker::start(cfg).await.unwrap();
    let c = proxy.next_first_conn().await;
    // 120 tokens at 10 nanoTON: over the 1000 nanoTON threshold, a payout is sent.
    proxy.set_totals(120);
    c.send(&proxy.payment_request(120)).await;
    eventually("the payout sent and looked for on chain twice", || {
        sink.looks.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(sink.submitted.load(Ordering::SeqCst), 1);

    // Shut down: the follower stops with it (it looked every second for two minutes).
    tokio::time::timeout(Duration::from_secs(10), w.shutdown())
        .await
        .expect("shutdown returns");
    let looks = sink.looks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        sink.looks.load(Ordering::SeqCst),
        looks,
        "no chain call after shutdown"
    );
    // The sink is the follower's last reference holder besides the test: none is left.
    assert_eq!(Arc::strong_count(&sink), 1, "the follower task ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_are_verified_kept_durably_and_compared_on_reconnect() {
    let (base, _eng, mut proxy, dir) = worker_rig().await;
    let sink = Arc::new(RecordingSink::default());
    let mut cfg = worker_config(&proxy.addr, &base, dir.path());
    cfg.payout_sink = Some(sink.clone());
    // 10 nanoTON per token, threshold 1000 nanoTON = 100 tokens.
    let w = Worker::start(cfg).await.unwrap();
    let c = proxy.next_first_conn().await;
    let pay = |tokens: u64| proxy.payment_request(tokens);
    proxy.set_totals(60);
    c.send(&pay(60)).await;
    eventually("60 held", || {
        w.stats().payments.first().map(|p| p.signed_tokens) == Some(60)
    })
    .await;
    assert!(
        sink.submitted.lock().unwrap().is_empty(),
        "600 nanoTON < threshold"
    );
    proxy.set_totals(120);
    c.send(&pay(120)).await;
    eventually("payout submitted at 1200 nanoTON", || {
        sink.submitted.lock().unwrap().len() == 1
    })
    .await;
    let (sc, boc, t) = sink.submitted.lock().unwrap()[0].clone();
    assert_eq!((sc, t), (proxy.proxy_sc.to_string(), 120));
    assert_eq!(boc, proxy.payment(120));
    eventually("paid out recorded", || {
        w.stats().payments[0].paid_out_tokens == 120
    })
    .await;
    // The admin figures say it was sent, and for how many tokens (the payouts table).
    let p = w.stats().payments[0].clone();
    assert!(
        matches!(
            p.last_payout,
            Some(cocoon_worker::LastPayout::Submitted { tokens: 120, .. })
        ),
        "{p:?}"
    );
    eventually("the payout no longer in flight", || {
        !w.stats().payments[0].payout_in_flight
    })
    .await;

    // A lower signed payment closes the session; the worker comes back and compares.
    c.send(&tproxy::SignedPayment {
        data: proxy.payment(90),
    })
    .await;
    c.closed().await;
    let c = proxy.next_conn().await;
    assert_eq!(c.compare.tokens_committed_to_blockchain, 120);
    // A payment signed by another key closes it too.
    let other = cocoon_ton::keys::SigningKey::from_seed(&[9; 32]).unwrap();
    c.send(&tproxy::SignedPayment {
        data: sign_payment(&other, &proxy.worker_sc, 500),
    })
    .await;
    c.closed().await;
    let _c = proxy.next_conn().await;
    w.shutdown().await;

    // Restart: the best payment survived; the proxy has lost state (signed 100 < 120).
    while proxy.events.try_recv().is_ok() {}
    proxy.set_totals(100);
    let w = start_worker_at(&proxy, &base, dir.path(), |_| {}).await;
    let HandshakeEvent::Compare(cmp) = proxy.next_event().await else {
        panic!("compare first")
    };
    assert_eq!(
        (
            cmp.tokens_committed_to_blockchain,
            cmp.tokens_committed_to_db,
            cmp.max_tokens
        ),
        (120, 120, 120),
        "state restored from disk"
    );
    eventually("refusal recorded", || {
        w.stats().proxies[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("balance comparison refused"))
    })
    .await;
    // It retries, and is refused every time: the handshake never completes.
    let HandshakeEvent::Compare(_) = proxy.next_event().await else {
        panic!("a refused handshake does not complete")
    };
    assert_eq!(w.ready_proxies(), 0);
    // Once the proxy reports consistent values, it works again; status queries are applied.
    proxy.set_totals(150);
    let _c = proxy.next_conn().await;
    eventually("150 held after compare", || {
        w.stats().payments[0].signed_tokens == 150
    })
    .await;
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_payment_status_is_applied() {
    let (base, _eng, mut proxy, dir) = worker_rig().await;
    let mut cfg = worker_config(&proxy.addr, &base, dir.path());
    cfg.timings.payment_status_interval = (Duration::from_millis(50), Duration::from_millis(100));
    let w = Worker::start(cfg).await.unwrap();
    let c = proxy.next_conn().await;
    proxy.set(|b| {
        b.signed = 42;
        b.db = 50;
        b.max = 55;
    });
    eventually("status applied", || {
        w.stats()
            .payments
            .first()
            .is_some_and(|p| (p.signed_tokens, p.db_tokens, p.max_tokens) == (42, 50, 55))
    })
    .await;
    // A status answer lower than what is held is stale (payment messages sent after it can
    // overtake it): ignored, the session stays, nothing held goes down.
    proxy.set(|b| {
        b.signed = 41;
        b.db = 49;
        b.max = 54;
    });
    // Two answers with the lower values have been given (and, with the next status due
    // only after the first is handled, the first of them applied).
    let asked = proxy.behavior.lock().unwrap().status_answers;
    eventually("two stale status answers", || {
        proxy.behavior.lock().unwrap().status_answers >= asked + 2
    })
    .await;
    let p = w.stats().payments[0].clone();
    assert_eq!((p.signed_tokens, p.db_tokens, p.max_tokens), (42, 50, 55));
    assert_eq!(w.stats().proxies[0].handshakes, 1, "the session stayed");
    // Higher values are still taken.
    proxy.set_totals(60);
    eventually("newer status applied", || {
        w.stats().payments[0].max_tokens == 60
    })
    .await;
    drop(c);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_and_admin_controls() {
    let (base, eng, mut proxy, dir) = worker_rig().await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let sink = Arc::new(RecordingSink::default());
    let mut cfg = worker_config(&proxy.addr, &base, &dir.path().join("state"));
    cfg.admin = Some(admin_config(Some(token_file)));
    cfg.payout_sink = Some(sink.clone());
    cfg.min_payout_nanoton = u128::MAX; // only forced payouts
    let w = Worker::start(cfg).await.unwrap();
    let mut c = proxy.next_conn().await;
    let admin = format!("http://{}", w.admin_addr().unwrap());
    let http = reqwest::Client::new();

    // Engine health → worker.enabledDisabled.
    eng.up.store(false, Ordering::SeqCst);
    assert!(matches!(c.next().await, FromWorker::EnabledDisabled(1)));
    eng.up.store(true, Ordering::SeqCst);
    assert!(matches!(c.next().await, FromWorker::EnabledDisabled(0)));

    // Controls need the token.
    let post = async |path: &str, token: Option<&str>| {
        post_status(&http, &format!("{admin}{path}"), token).await
    };
    let operator = Some("s3cret-token");
    assert_eq!(post("/control/disable", None).await, 401);
    assert_eq!(post("/control/disable", Some("wrong")).await, 401);
    assert_eq!(
        http.get(format!("{admin}/control/disable"))
            .send()
            .await
            .unwrap()
            .status(),
        405,
        "GET does not change anything"
    );
    assert!(w.stats().enabled);
    assert_eq!(post("/control/disable", operator).await, 200);
    assert!(matches!(c.next().await, FromWorker::EnabledDisabled(1)));
    assert_eq!(post("/control/enable", operator).await, 200);
    assert!(matches!(c.next().await, FromWorker::EnabledDisabled(0)));
    assert_eq!(post("/control/coefficient?value=2000", operator).await, 200);
    assert!(matches!(c.next().await, FromWorker::NewCoefficient(2000)));
    assert_eq!(post("/control/coefficient?value=abc", operator).await, 400);
    assert_eq!(
        post("/control/coefficient?value=2000000000", operator).await,
        400
    );
    // The older `/request/...` paths are aliases of the same controls.
    assert_eq!(post("/request/disable", None).await, 401);
    assert_eq!(post("/request/disable", operator).await, 200);
    assert!(matches!(c.next().await, FromWorker::EnabledDisabled(1)));
    assert_eq!(post("/request/enable", operator).await, 200);
    assert!(matches!(c.next().await, FromWorker::EnabledDisabled(0)));
    assert_eq!(post("/request/coefficient?value=3000", operator).await, 200);
    assert!(matches!(c.next().await, FromWorker::NewCoefficient(3000)));
    assert_eq!(post("/control/coefficient?value=2000", operator).await, 200);
    assert!(matches!(c.next().await, FromWorker::NewCoefficient(2000)));
    // The new coefficient applies to requests the proxy routes at it (a request is billed at
    // the coefficient the proxy quoted).
    c.run_quoted(1, http_request(CHAT, &chat_body("json", false)), 2000)
        .await;
    let info = c.final_info().await;
    assert_eq!(final_tokens(&info), [24, 0, 16, 0, 40]);

    // Forced payout.
    c.send(&tproxy::SignedPayment {
        data: proxy.payment(7),
    })
    .await;
    eventually("7 held", || {
        w.stats().payments.first().map(|p| p.signed_tokens) == Some(7)
    })
    .await;
    assert_eq!(post("/control/payout", None).await, 401);
    assert_eq!(post("/control/payout", operator).await, 200);
    eventually("forced payout", || {
        sink.submitted.lock().unwrap().len() == 1
    })
    .await;

    // Read-only pages: counters and public identifiers, never bodies.
    let html = get_text(&http, &format!("{admin}/stats")).await;
    assert!(
        html.contains("Cocoon worker") && html.contains(MODEL),
        "{html}"
    );
    cocoon_testkit::http::assert_no_debug_values("the worker's /stats", &html);
    // The dashboard's figures are /jsonstats' (requests, tokens), and the page carries the
    // controls without the token.
    assert!(html.contains("data-post=\"/control/disable\""));
    let json: serde_json::Value = get_json(&http, &format!("{admin}/jsonstats")).await;
    let received = format!(
        "data-figure=\"requests_received\">{}<",
        json["counters"]["requests_received"]
    );
    assert!(html.contains(&received), "{received} not in {html}");
    assert_eq!(json["coefficient"], 2000);
    assert_eq!(json["counters"]["requests_success"], 1);
    assert_eq!(json["enabled"], true);
    let metrics = get_text(&http, &format!("{admin}/metrics")).await;
    assert!(
        metrics.contains("cocoon_worker_requests_total{outcome=\"success\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("cocoon_worker_adjusted_tokens_total{category=\"total\"} 40"));
    for page in [&html, &metrics, &json.to_string()] {
        assert!(!page.contains("s3cret-token"));
        assert!(!page.contains("\"Hi\""), "no completion text");
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_refused_without_token_file_and_handshake_mismatch() {
    let (base, _eng, mut proxy, dir) = worker_rig().await;
    let mut cfg = worker_config(&proxy.addr, &base, dir.path());
    cfg.admin = Some(admin_config(None));
    proxy.set(|b| b.is_test = false);
    let w = Worker::start(cfg).await.unwrap();
    let admin = format!("http://{}", w.admin_addr().unwrap());
    let r = reqwest::Client::new()
        .post(format!("{admin}/control/disable"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    eventually("test mode mismatch refused", || {
        w.stats().proxies[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("test mode mismatch"))
    })
    .await;
    proxy.set(|b| {
        b.is_test = true;
        b.proto = 7;
    });
    eventually("unsupported protocol refused", || {
        w.stats().proxies[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("protocol version 7"))
    })
    .await;
    proxy.set(|b| b.proto = 2);
    let c = proxy.next_conn().await;
    drop(c);
    eventually("ready at v2", || {
        w.stats().proxies[0].proto_version == Some(2)
    })
    .await;
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_contract_address_is_derived_not_trusted() {
    use cocoon_ton::CellBuilder;
    let (base, _eng) = fake_engine().await;
    let mut code = CellBuilder::new();
    code.store_u32(0xC0C0_0001).unwrap();
    let params = cocoon_ton::root::CocoonParams {
        worker_code: Some(code.build().unwrap()),
        ..cocoon_ton::root::CocoonParams::default()
    };
    let derived = cocoon_testkit::fixtures::derived_worker_sc(&params, &addr(0x44), &addr(0x11));
    assert_ne!(derived, addr(0x22));

    // A proxy naming another contract is refused.
    let liar = TestProxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = worker_config(&liar.addr, &base, dir.path());
    cfg.contract_params = Some(params.clone());
    let w = Worker::start(cfg).await.unwrap();
    eventually("liar refused", || {
        w.stats().proxies[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("worker contract address is unexpected"))
    })
    .await;
    assert_eq!(w.ready_proxies(), 0);
    w.shutdown().await;

    // The derived one is accepted.
    let mut honest = TestProxy::start_with(derived.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = worker_config(&honest.addr, &base, dir.path());
    cfg.contract_params = Some(params);
    let w = Worker::start(cfg).await.unwrap();
    let _c = honest.next_conn().await;
    eventually("ready", || w.ready_proxies() == 1).await;
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_run_query_is_served() {
    let (base, _eng, mut proxy, dir) = worker_rig().await;
    let w = start_worker_at(&proxy, &base, dir.path(), |_| {}).await;
    let mut c = proxy.next_conn().await;
    c.send(&cocoon_tl::functions::proxy::RunQuery {
        query: http_request(CHAT, &chat_body("json", false)),
        signed_payment: enums::proxy::SignedPayment::SignedPaymentEmpty(
            tproxy::SignedPaymentEmpty {},
        ),
        coefficient: 1500,
        timeout: 30.0,
        request_id: [5; 32],
    })
    .await;
    assert!(matches!(c.next().await, FromWorker::Head(h, _) if h.request_id == [5; 32]));
    let info = c.final_info().await;
    assert_eq!(final_tokens(&info), [18, 0, 12, 0, 30]);
    assert!(
        info.unwrap().worker_debug.is_none(),
        "no debug unless asked"
    );
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_running_requests() {
    let (base, eng, mut proxy, dir) = worker_rig().await;
    let w = start_worker_at(&proxy, &base, dir.path(), |_| {}).await;
    let mut c = proxy.next_conn().await;
    c.run_chat(1, "gated", true).await;
    assert!(matches!(c.next().await, FromWorker::Head(..)));
    let stopping = tokio::spawn(w.shutdown());
    // The proxy is told first, and new requests are refused while the old one finishes.
    loop {
        match c.next().await {
            FromWorker::EnabledDisabled(1) => break,
            FromWorker::Part(p) => assert!(p.final_info.is_none()),
            other => panic!("unexpected {other:?}"),
        }
    }
    c.run_chat(2, "json", false).await;
    loop {
        match c.next().await {
            FromWorker::Error(e) => {
                assert_eq!(e.request_id, [2; 32]);
                assert_eq!(e.error, "worker is shutting down");
                break;
            }
            FromWorker::Part(p) => assert!(p.final_info.is_none()),
            other => panic!("unexpected {other:?}"),
        }
    }
    eng.gate.add_permits(1);
    let info = c.final_info().await;
    assert_eq!(
        final_tokens(&info),
        [22, 12, 27, 0, 61],
        "finished and billed"
    );
    c.closed().await;
    tokio::time::timeout(LIMIT, stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_proxy_messages_close_the_session_not_the_worker() {
    use cocoon_tl::Identifiable;
    let (base, _eng, mut proxy, dir) = worker_rig().await;
    let w = start_worker_at(&proxy, &base, dir.path(), |_| {}).await;
    let truncated_run = cocoon_tl::functions::proxy::RunQueryEx::CONSTRUCTOR_ID
        .to_le_bytes()
        .to_vec();
    let mut bad_payment = tproxy::WorkerRequestPayment::CONSTRUCTOR_ID
        .to_le_bytes()
        .to_vec();
    bad_payment.extend([0xFF; 40]);
    for garbage in [vec![1u8, 2], truncated_run, bad_payment] {
        let c = proxy.next_conn().await;
        c.handle.send_message(garbage).await.unwrap();
        c.closed().await;
    }
    // Unknown constructors are ignored: the session stays and serves.
    let mut c = proxy.next_conn().await;
    c.handle
        .send_message(0xDEAD_BEEFu32.to_le_bytes().to_vec())
        .await
        .unwrap();
    c.run_chat(1, "json", false).await;
    assert!(matches!(c.next().await, FromWorker::Head(..)));
    assert_eq!(w.stats().proxies[0].handshakes, 4);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_config_update_changes_prices_and_redials() {
    let (base, _eng, mut proxy, dir) = worker_rig().await;
    let w = start_worker_at(&proxy, &base, dir.path(), |_| {}).await;
    let mut c = proxy.next_conn().await;
    let mut p = prices();
    p.multipliers.prompt = 20_000;
    p.multipliers.completion = 10_000;
    w.set_prices_and_params(p, None).unwrap();
    c.run_chat(1, "json", false).await;
    let info = c.final_info().await;
    // 12 prompt ×1.5×2 = 36, 4 completion ×1.5×1 = 6.
    assert_eq!(final_tokens(&info), [36, 0, 6, 0, 42]);

    // New contract params: sessions are redialled, and the new derivation applies (this
    // proxy names a contract that does not match it, so it is now refused).
    let mut code = cocoon_ton::CellBuilder::new();
    code.store_u32(0xC0C0_0002).unwrap();
    let params = cocoon_ton::root::CocoonParams {
        worker_code: Some(code.build().unwrap()),
        ..cocoon_ton::root::CocoonParams::default()
    };
    assert!(
        w.set_prices_and_params(p, Some(cocoon_ton::root::CocoonParams::default()))
            .is_err(),
        "params without worker code are refused"
    );
    w.set_prices_and_params(p, Some(params)).unwrap();
    c.closed().await;
    eventually("refused under the new params", || {
        w.stats().proxies[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("worker contract address is unexpected"))
    })
    .await;
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_config_sets_proxies_prices_and_model_whitelist() {
    use cocoon_ton::messages::ProxyEndpoint;
    use cocoon_ton::root::{CocoonParams, RegisteredProxy, RootConfig, model_hash};
    use cocoon_worker::RootUpdate;

    let (base, _eng) = fake_engine().await;
    let mut a = TestProxy::start().await;
    let mut b = TestProxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = worker_config(&a.addr, &base, dir.path());
    cfg.proxies.clear();
    let w = Worker::start(cfg).await.unwrap();
    assert!(
        w.stats().proxies.is_empty(),
        "no proxy until the root names one"
    );

    let root = |version: u32, endpoints: &[String], listed: bool| RootConfig {
        owner: addr(0x01),
        version,
        // The test proxies' sim image is allowed.
        proxy_hashes: vec![cocoon_ton::HashBytes(cocoon_attest::sim::sim_image_hash())],
        registered_proxies: endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| RegisteredProxy {
                seqno: i as u32,
                endpoint: ProxyEndpoint(e.clone()),
            })
            .collect(),
        last_proxy_seqno: endpoints.len() as u32,
        worker_hashes: vec![],
        model_hashes: if listed {
            vec![model_hash(MODEL)]
        } else {
            vec![]
        },
        params: CocoonParams {
            price_per_token: 30,
            worker_fee_per_token: 25,
            completion_tokens_price_multiplier: 20_000,
            ..CocoonParams::default()
        },
    };

    // v5 registers A as "workers clients" (two endpoints): the worker dials the first.
    let two = format!("{} 127.0.0.1:1", a.addr);
    let up = w.update_root(&root(5, &[two], true), &[]).unwrap();
    assert_eq!(
        up,
        RootUpdate::Applied {
            version: 5,
            proxies: vec![a.addr.clone()],
            params_changed: false,
            model_allowed: true
        }
    );
    let mut ca = a.next_conn().await;
    assert_eq!(ca.params.proxy_cnt, Some(1));
    assert!(!ca.is_disabled);
    eventually("ready on A", || w.ready_proxies() == 1).await;
    // The root's prices apply: 4 completion tokens ×1.5 (coefficient) ×2 = 12.
    ca.run_chat(1, "json", false).await;
    let info = ca.final_info().await;
    assert_eq!(final_tokens(&info), [18, 0, 12, 0, 30]);

    // Same or older version: ignored.
    assert_eq!(
        w.update_root(&root(5, std::slice::from_ref(&b.addr), true), &[])
            .unwrap(),
        RootUpdate::Stale { applied: 5 }
    );
    // A test worker refuses a production root.
    let mut prod = root(9, &[], true);
    prod.params.is_test = false;
    assert!(w.update_root(&prod, &[]).is_err());

    // v6 moves the network to B: A's session closes, B is dialled, A leaves the stats.
    w.update_root(&root(6, std::slice::from_ref(&b.addr), true), &[])
        .unwrap();
    ca.closed().await;
    let mut cb = b.next_conn().await;
    eventually("only B listed", || {
        let s = w.stats().proxies;
        s.len() == 1 && s[0].address == b.addr
    })
    .await;

    // v7 drops the model from the whitelist: B is told the worker is disabled; v8 lists it
    // again and B is told it is enabled.
    w.update_root(&root(7, std::slice::from_ref(&b.addr), false), &[])
        .unwrap();
    loop {
        if let FromWorker::EnabledDisabled(d) = cb.next().await {
            assert_eq!(d, 1);
            break;
        }
    }
    assert!(w.stats().model_not_listed);
    assert!(!w.stats().enabled);
    w.update_root(&root(8, std::slice::from_ref(&b.addr), true), &[])
        .unwrap();
    loop {
        if let FromWorker::EnabledDisabled(d) = cb.next().await {
            assert_eq!(d, 0);
            break;
        }
    }
    assert_eq!(w.stats().root_version, Some(8));
    w.shutdown().await;
}

/// After a params change the proxy pays each old worker contract its last payout itself and
/// the contract closes. The worker, which still holds that contract's signed tokens as
/// unpaid, reads the contract from the chain (a fake one here) before cashing them: a closed
/// contract gets no payout (nothing leaves the wallet, even when forced), and the record is
/// settled on disk and shown closed with nothing ready on `/jsonstats` and `/stats`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_contract_its_proxy_closed_gets_no_payout_and_shows_settled() {
    use cocoon_ton::chain::AccountStatus;
    use cocoon_ton::chain::fake::{FakeChain, account};
    use cocoon_ton::codec::{Layout, State2};
    use cocoon_ton::contracts::WorkerStorage;
    use cocoon_ton::keys::SigningKey;
    use cocoon_ton::wallet::{Wallet, WalletSender};
    use cocoon_worker::{ChainPayoutSink, DEFAULT_ATTACH_NANOTON};

    let (base, _eng, mut proxy, dir) = worker_rig().await;
    let chain = FakeChain::default();
    chain.set_others(account(AccountStatus::Uninit, 10_000_000_000, None));
    let proxy_sc = proxy.proxy_sc.clone();
    let storage = |state: u8, tokens: u64| {
        WorkerStorage {
            owner: addr(0x44),
            proxy_sc: proxy_sc.clone(),
            proxy_public_key: cocoon_ton::HashBytes([5; 32]),
            state: State2(state),
            tokens,
            params: cocoon_ton::CellBuilder::new().build().unwrap(),
        }
        .to_cell()
        .unwrap()
    };
    // Open, nothing paid yet, while the worker earns.
    chain.set_account(
        &proxy.worker_sc,
        account(AccountStatus::Active, 1_000_000_000, Some(storage(0, 0))),
    );
    let wallet_key = SigningKey::from_seed(&[3; 32]).unwrap();
    let sender = WalletSender::new(
        chain.clone(),
        Wallet::v4r2(wallet_key.public_key(), 0),
        wallet_key,
    )
    .unwrap();
    let sink = Arc::new(ChainPayoutSink::new(sender, DEFAULT_ATTACH_NANOTON));
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let mut cfg = worker_config(&proxy.addr, &base, &dir.path().join("state"));
    cfg.admin = Some(admin_config(Some(token_file)));
    cfg.payout_sink = Some(sink);
    cfg.min_payout_nanoton = u128::MAX; // nothing due: only the contract check reads it
    cfg.timings.contract_check_interval = Duration::from_millis(100);
    let w = Worker::start(cfg).await.unwrap();
    let c = proxy.next_conn().await;
    c.send(&tproxy::SignedPayment {
        data: proxy.payment(43),
    })
    .await;
    eventually("43 held", || {
        w.stats().payments.first().map(|p| p.signed_tokens) == Some(43)
    })
    .await;
    // The contract is open: the checks leave the tokens ready.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let p = w.stats().payments[0].clone();
    assert_eq!((p.ready_tokens, p.closed), (43, false));

    // The params change: the proxy's final payout (50 tokens) closes the contract.
    chain.set_account(
        &proxy.worker_sc,
        account(AccountStatus::Active, 1_000_000_000, Some(storage(2, 50))),
    );
    eventually("seen closed", || w.stats().payments[0].closed).await;
    let p = w.stats().payments[0].clone();
    assert_eq!((p.ready_tokens, p.ready_nanoton.as_str()), (0, "0"));
    assert_eq!(p.paid_out_tokens, 43);

    // A forced payout sends nothing to the closed contract.
    let admin = format!("http://{}", w.admin_addr().unwrap());
    let http = reqwest::Client::new();
    assert_eq!(
        post_status(
            &http,
            &format!("{admin}/control/payout"),
            Some("s3cret-token")
        )
        .await,
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(chain.sent().is_empty(), "no payout to a closed contract");
    let json: serde_json::Value = get_json(&http, &format!("{admin}/jsonstats")).await;
    assert_eq!(json["payments"][0]["closed"], true);
    assert_eq!(json["payments"][0]["ready_tokens"], 0);
    let html = get_text(&http, &format!("{admin}/stats")).await;
    assert!(html.contains("closed, paid"), "{html}");
    drop(c);
    w.shutdown().await;

    // Durable: the restarted worker holds it settled.
    let store = cocoon_worker::PaymentStore::open(&dir.path().join("state")).unwrap();
    let r = store.get(&proxy.proxy_sc.to_string()).unwrap();
    assert!(r.closed);
    assert_eq!(r.ready_tokens(), 0);
}
