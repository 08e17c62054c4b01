//! What a COCOON proxy sends our worker, played as frames encoded by hand from the scheme
//! (`cocoon_testkit::handmade`, never our encoder) over a real RA-TLS session (sim
//! attestation) by a scripted proxy that negotiated version 2, as COCOON's proxy does.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_testkit::handmade as hm;
use cocoon_testkit::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_a_cocoon_proxy_sends_a_worker() {
    let (base, _eng, mut proxy, dir) = worker_rig().await;
    // COCOON's proxy speaks 0..=2 and picks min(2, ours); its answers to the worker's
    // handshake and payment-status queries are encoded by hand.
    // First it refuses the handshake, as COCOON's proxy does an image it does not allow.
    let refusal = "invalid worker image hash 00ff";
    proxy.set(|b| {
        b.proto = 2;
        b.handmade = true;
        b.refuse_connect = Some((621, refusal.into()));
        // A worker that claims more than the proxy knows gets error_code 1 and then the
        // extended comparison.
        b.compare_error = 1;
    });
    let w = start_worker_at(&proxy, &base, dir.path(), |c| {
        let t = std::time::Duration::from_millis(100);
        c.timings.payment_status_interval = (t, t);
    })
    .await;
    eventually("refusal reported", || {
        w.stats()
            .proxies
            .first()
            .and_then(|p| p.last_error.clone())
            .is_some_and(|e| e.contains(refusal) && e.contains("621"))
    })
    .await;
    assert_eq!(w.ready_proxies(), 0);
    proxy.set(|b| b.refuse_connect = None);
    let mut c = proxy.next_conn().await;
    let handle = c.handle.clone();
    let send = |bytes: Vec<u8>| {
        let h = handle.clone();
        async move { h.send_message(bytes).await.unwrap() }
    };

    // `proxy.runQueryEx` (flags = 1, enable_debug = false): served, version 2 timings,
    // no debug, the usage priced in the body.
    let query = hm::http_request(CHAT, &chat_body("json", false));
    send(hm::proxy_run_query_ex(&query, 1500, 30.0, [1; 32], false)).await;
    let FromWorker::Head(h, head) = c.next().await else {
        panic!("head first")
    };
    assert_eq!(h.request_id, [1; 32]);
    assert!(header(&head.headers, "X-Cocoon-Worker-Start").is_some());
    let mut body = Vec::new();
    let info = loop {
        let FromWorker::Part(p) = c.next().await else {
            panic!("part")
        };
        body.extend(p.answer);
        if let Some(i) = p.final_info {
            break i;
        }
    };
    assert_eq!(tokens5(&info.tokens_used), [18, 0, 12, 0, 30]);
    assert!(info.worker_debug.is_none(), "debug not asked");
    assert!(info.worker_start_time.is_some(), "version 2: timings");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["usage"]["total_cost"], 30 * 20);

    // The payment report before anything was committed: `proxy.signedPaymentEmpty`.
    send(hm::proxy_worker_request_payment(
        [1; 32],
        None,
        0,
        30,
        30,
        &addr(0x51).to_string(),
    ))
    .await;

    // The same with enable_debug = true: COCOON's worker_stats object.
    send(hm::proxy_run_query_ex(&query, 1500, 30.0, [2; 32], true)).await;
    let info = c.final_info().await.unwrap();
    let d: serde_json::Value = serde_json::from_str(info.worker_debug.as_deref().unwrap()).unwrap();
    assert_eq!(d["type"], "worker_stats");
    assert!(d["answer_receive_start_at"].as_f64().unwrap() >= d["start_time"].as_f64().unwrap());

    // `proxy.runQuery` (the protocol 0 form): served as a request without debug.
    send(hm::proxy_run_query(&query, 1500, 30.0, [3; 32])).await;
    let info = c.final_info().await.unwrap();
    assert_eq!(tokens5(&info.tokens_used), [18, 0, 12, 0, 30]);
    assert!(info.worker_debug.is_none());

    // `proxy.workerRequestPayment` with a signed payout (and the client's address, which
    // COCOON's proxy sends): verified and kept.
    send(hm::proxy_worker_request_payment(
        [3; 32],
        Some(&proxy.payment(60)),
        60,
        60,
        30,
        &addr(0x51).to_string(),
    ))
    .await;
    eventually("payout held", || {
        w.stats().payments.first().map(|p| p.signed_tokens) == Some(60)
    })
    .await;
    // `proxy.signedPayment` on its own: the held payout goes up.
    send(hm::proxy_signed_payment(&proxy.payment(80))).await;
    eventually("payout raised", || {
        w.stats().payments.first().map(|p| p.signed_tokens) == Some(80)
    })
    .await;

    // A message outside what a proxy sends a worker (a client's answer) is ignored.
    send(hm::proxy_query_answer_error_ex(
        [9; 32],
        601,
        "not for a worker",
        [0; 5],
    ))
    .await;
    send(hm::proxy_run_query_ex(&query, 1500, 30.0, [4; 32], false)).await;
    let info = c.final_info().await.unwrap();
    assert_eq!(tokens5(&info.tokens_used), [18, 0, 12, 0, 30]);
    assert_eq!(w.ready_proxies(), 1, "the session lives on");
    assert_eq!(w.stats().payments[0].signed_tokens, 80);

    // `worker.paymentStatus` (answers to the periodic `worker.updatePaymentStatus`) raises
    // what is held.
    proxy.set_totals(100);
    eventually("payment status applied", || {
        w.stats().payments.first().map(|p| p.signed_tokens) == Some(100)
    })
    .await;

    // A request that breaks the scheme (truncated `proxy.runQueryEx`) ends the session; the
    // worker redials and compares again.
    let mut bad = hm::proxy_run_query_ex(&query, 1500, 30.0, [5; 32], false);
    bad.truncate(bad.len() - 6);
    send(bad).await;
    c.closed().await;
    let c = proxy.next_conn().await;
    assert_eq!(c.compare.tokens_committed_to_blockchain, 100);
    eventually("serving again", || w.ready_proxies() == 1).await;
    w.shutdown().await;
}
