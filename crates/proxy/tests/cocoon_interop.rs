//! What COCOON's runners send our proxy, played as frames encoded by hand from the scheme
//! (`cocoon_testkit::handmade`, never our encoder) over real RA-TLS sessions (sim
//! attestation): a scripted COCOON-like worker and client, and COCOON's answer extensions
//! (cost fields, timing headers, debug output) through a real worker.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_net::{ErrorCode, Incoming, SessionHandle};
use cocoon_testkit::client::collect;
use cocoon_testkit::handmade as hm;
use cocoon_testkit::prelude::*;
use cocoon_tl::TlRead;
use cocoon_tl::enums;
use cocoon_tl::functions::proxy as fproxy;
use cocoon_tl::types::{client as tclient, worker as tworker};
use cocoon_ton::StdAddr;
use tokio::sync::mpsc;

/// A scripted COCOON worker (owner `addr(0x49)`, coefficient 1.0, 4 slots, versions 1..=2)
/// through its handshake, every query by hand; it claims 500 tokens the proxy never saw.
async fn cocoon_worker(net: &Net) -> (SessionHandle, mpsc::Receiver<Incoming>) {
    let (h, incoming, _peer) = connector()
        .connect(&net.proxy.worker_addr().to_string())
        .await
        .unwrap();
    let q = |bytes: Vec<u8>| {
        let h = h.clone();
        async move { h.query(bytes, LIMIT).await.unwrap() }
    };
    let owner = addr(0x49).to_string();
    let a = q(hm::worker_connect_to_proxy(&owner, MODEL, 1000, 4, (1, 2))).await;
    let connected = tworker::ConnectedToProxy::from_bytes(&a).unwrap();
    // The proxy picks 2, names the derived worker contract and its own key.
    assert_eq!(connected.params.proto_version, Some(2));
    assert_eq!(connected.params.proxy_public_key, net.proxy.public_key());
    assert_eq!(
        connected.worker_sc_address,
        net.worker_sc(&addr(0x49)).to_string()
    );
    // More than the proxy knows: `error_code = 1`, reported, not fatal; the extended
    // comparison answers 0 (as COCOON's proxy does).
    let a = q(hm::worker_compare_balance(0, 0, 500)).await;
    let cmp = tworker::CompareBalanceWithProxyResult::from_bytes(&a).unwrap();
    assert_eq!((cmp.error_code, cmp.max_tokens), (1, 0));
    let a = q(hm::worker_extended_compare(0)).await;
    let ext = tworker::ExtendedCompareBalanceWithProxyResult::from_bytes(&a).unwrap();
    assert_eq!(ext.error_code, 0);
    let a = q(hm::worker_handshake_complete(false)).await;
    tworker::ProxyHandshakeCompleted::from_bytes(&a).unwrap();
    (h, incoming)
}

/// The next `proxy.runQueryEx` the scripted worker receives.
async fn next_run(incoming: &mut mpsc::Receiver<Incoming>) -> fproxy::RunQueryEx {
    loop {
        match tokio::time::timeout(LIMIT, incoming.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Incoming::Message { data } => {
                if let Ok(q) = fproxy::RunQueryEx::from_bytes(&data) {
                    return q;
                }
            }
            Incoming::Query { .. } => panic!("the proxy sends workers no queries"),
        }
    }
}

async fn send(h: &SessionHandle, bytes: Vec<u8>) {
    h.send_message(bytes).await.unwrap();
}

/// A JSON answer without its cost fields, and those fields.
fn priced_json(body: &[u8]) -> (serde_json::Value, [i64; 3]) {
    let mut v: serde_json::Value = serde_json::from_slice(body).unwrap();
    let u = v["usage"].as_object_mut().unwrap();
    let mut cost = |k: &str| u.remove(k).and_then(|c| c.as_i64()).unwrap_or(-1);
    let costs = [
        cost("prompt_total_cost"),
        cost("completion_total_cost"),
        cost("total_cost"),
    ];
    (v, costs)
}

fn plain_json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

const JSON_ANSWER: &[u8] = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":4,"total_tokens":16}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_0_answers_and_state_messages_of_a_cocoon_worker() {
    let net = start_proxy(root(1, true, true)).await;
    let (h, mut incoming) = cocoon_worker(&net).await;
    net.wait_workers(1).await;
    let owner = addr(0x51);
    let sc = net.fund_client(&owner, 1_000_000_000, true);
    // A client as COCOON's (protocol 2): the proxy prices the answers' usage for it.
    let mut c = TestClient::authorized_as_cocoon(&net, &owner).await;

    // 1. `client.runQuery` (protocol 0 form, by hand) is served as a request; the worker
    // answers with `proxy.queryAnswer` (head, not completed) and `proxy.queryAnswerPart`
    // (completed, with the usage): the client gets the `Ex` forms with the usage booked.
    let body = chat_body("json", false);
    let q = hm::client_run_query(
        "Smol",
        &hm::http_request(CHAT, &body),
        4000,
        100,
        30.0,
        [1; 32],
    );
    send(&c.handle, q).await;
    let run = next_run(&mut incoming).await;
    assert_eq!(run.enable_debug, None, "protocol 0 requests carry no debug");
    let head = hm::http_response(200, &[("Content-Type", "application/json")], b"");
    send(
        &h,
        hm::proxy_query_answer(&head, false, run.request_id, [0; 5]),
    )
    .await;
    // 12 prompt + 4 completion at 1.0 with multipliers 1 and 2: 12 + 8.
    let tokens = [12, 0, 8, 0, 20];
    send(
        &h,
        hm::proxy_query_answer_part(JSON_ANSWER, true, run.request_id, tokens),
    )
    .await;
    let r = collect(&mut c, &[1], true).await;
    assert_eq!(r[&1].status, Some(200));
    // The answer as the worker sent it, with COCOON's cost fields priced as booked (20
    // nanoTON a token): prompt 12, completion 8, total 20.
    assert_eq!(
        priced_json(&r[&1].body),
        (plain_json(JSON_ANSWER), [240, 160, 400])
    );
    assert_eq!(r[&1].tokens, Some(tokens));
    assert!(header(&r[&1].headers, "X-Cocoon-Proxy-Start").is_some());
    assert!(header(&r[&1].headers, "X-Cocoon-Proxy-End").is_some());
    assert_eq!(net.meter.client(&sc.to_string()).unwrap().used, 20);

    // 2. A whole answer in one `proxy.queryAnswer` (completed).
    c.run(2, "json", 100, 30.0).await;
    let run = next_run(&mut incoming).await;
    let whole = hm::http_response(200, &[("Content-Type", "application/json")], JSON_ANSWER);
    send(
        &h,
        hm::proxy_query_answer(&whole, true, run.request_id, tokens),
    )
    .await;
    let r = collect(&mut c, &[2], true).await;
    assert_eq!(r[&2].tokens, Some(tokens));
    assert_eq!(
        priced_json(&r[&2].body),
        (plain_json(JSON_ANSWER), [240, 160, 400])
    );
    assert_eq!(net.meter.client(&sc.to_string()).unwrap().used, 40);

    // 3. `proxy.queryAnswerError` before anything was relayed: the client gets the error
    // at once (not the deadline), with the worker's code and text.
    c.run(3, "json", 100, 30.0).await;
    let run = next_run(&mut incoming).await;
    send(
        &h,
        hm::proxy_query_answer_error(602, "worker: invalid request: x", run.request_id, [0; 5]),
    )
    .await;
    let r = collect(&mut c, &[3], true).await;
    assert_eq!(
        r[&3].error.clone(),
        Some((602, "worker: invalid request: x".to_owned()))
    );

    // 4. `proxy.queryAnswerPartError` after the head: the error ends the answer, carrying
    // (and booking) the usage the worker reported.
    c.run(4, "json", 100, 30.0).await;
    let run = next_run(&mut incoming).await;
    send(
        &h,
        hm::proxy_query_answer(&head, false, run.request_id, [0; 5]),
    )
    .await;
    let part_tokens = [3, 0, 2, 0, 5];
    send(
        &h,
        hm::proxy_query_answer_part_error(601, "worker: engine broke", run.request_id, part_tokens),
    )
    .await;
    let r = collect(&mut c, &[4], true).await;
    assert_eq!(r[&4].status, Some(200));
    assert_eq!(
        r[&4].error.clone(),
        Some((601, "worker: engine broke".to_owned()))
    );
    assert_eq!(r[&4].tokens, Some(part_tokens));
    assert_eq!(net.meter.client(&sc.to_string()).unwrap().used, 45);
    assert_eq!(net.meter.open_reservations(), 0);

    // `worker.updatePaymentStatus`: what the proxy holds for this worker (all it booked).
    let a = h
        .query(hm::worker_update_payment_status(), LIMIT)
        .await
        .unwrap();
    let st = tworker::PaymentStatus::from_bytes(&a).unwrap();
    assert_eq!(st.max_tokens, 45);

    // 5. Answers for requests the proxy does not know are dropped; the session goes on.
    send(
        &h,
        hm::proxy_query_answer_part(b"x", true, [9; 32], [1, 0, 0, 0, 1]),
    )
    .await;
    send(
        &h,
        hm::proxy_query_answer_error_ex([9; 32], 601, "late", [0; 5]),
    )
    .await;

    // Outside what a worker sends: a message is ignored, a query gets 621; the session goes
    // on (the status query below is answered).
    send(&h, hm::client_update_payment_status()).await;
    let e = h
        .query(hm::client_update_payment_status(), LIMIT)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ProtoViolation as i32);
    let a = h
        .query(hm::worker_update_payment_status(), LIMIT)
        .await
        .unwrap();
    assert_eq!(
        tworker::PaymentStatus::from_bytes(&a).unwrap().max_tokens,
        45
    );

    // 6. `worker.newCoefficient` and `worker.enabledDisabled` update routing.
    send(&h, hm::worker_new_coefficient(1200)).await;
    eventually("coefficient applied", || {
        net.proxy.stats().workers.first().map(|w| w.coefficient) == Some(1200)
    })
    .await;
    send(&h, hm::worker_enabled_disabled(true)).await;
    eventually("worker disabled", || {
        net.proxy
            .stats()
            .workers
            .first()
            .is_some_and(|w| !w.enabled)
    })
    .await;
    c.run(5, "json", 100, 30.0).await;
    let r = collect(&mut c, &[5], false).await;
    let (code, msg) = r[&5].error.clone().unwrap();
    assert_eq!(code, ErrorCode::NotReady as i32, "{msg}");
    send(&h, hm::worker_enabled_disabled(false)).await;
    eventually("worker enabled", || {
        net.proxy.stats().workers.first().is_some_and(|w| w.enabled)
    })
    .await;

    // A worker that reports (and prices, as a COCOON worker does) far more than its answer
    // carried is booked at the answer's usage (at its new coefficient 1.2: prompt 14,
    // completion 9), and the client sees the costs of what it pays, not the worker's claim.
    c.run(6, "json", 100, 30.0).await;
    let run = next_run(&mut incoming).await;
    let inflated = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":4,"total_tokens":16,"prompt_total_cost":9000,"completion_total_cost":9000,"total_cost":18000}}"#;
    let whole = hm::http_response(200, &[("Content-Type", "application/json")], inflated);
    send(
        &h,
        hm::proxy_query_answer(&whole, true, run.request_id, [300, 0, 150, 0, 450]),
    )
    .await;
    let r = collect(&mut c, &[6], true).await;
    assert_eq!(
        r[&6].tokens,
        Some([14, 0, 9, 0, 23]),
        "booked at the answer's usage"
    );
    assert_eq!(priced_json(&r[&6].body).1, [14 * 20, 9 * 20, 23 * 20]);
    assert_eq!(net.meter.client(&sc.to_string()).unwrap().used, 68);

    // 7. A negative coefficient is a protocol violation: that worker's session ends.
    send(&h, hm::worker_new_coefficient(-1)).await;
    eventually("worker dropped", || net.proxy.ready_workers() == 0).await;
    assert!(
        !c.handle.is_closed(),
        "the client's session is not affected"
    );
}

/// A scripted COCOON client (versions 1..=2) connected by hand: its session and the
/// proxy's `client.connectedToProxy`.
async fn cocoon_client(
    net: &Net,
    owner: &StdAddr,
) -> (
    SessionHandle,
    mpsc::Receiver<Incoming>,
    tclient::ConnectedToProxy,
) {
    let (h, incoming, _peer) = connector()
        .connect(&net.proxy.client_addr().to_string())
        .await
        .unwrap();
    let a = h
        .query(
            hm::client_connect_to_proxy(&owner.to_string(), (1, 2)),
            LIMIT,
        )
        .await
        .unwrap();
    let connected = tclient::ConnectedToProxy::from_bytes(&a).unwrap();
    assert_eq!(connected.params.proto_version, Some(2));
    assert_eq!(
        connected.client_sc_address,
        net.client_sc(owner).to_string()
    );
    (h, incoming, connected)
}

fn authorized(a: &[u8]) -> bool {
    matches!(
        enums::client::AuthorizationWithProxy::from_bytes(a).unwrap(),
        enums::client::AuthorizationWithProxy::AuthorizationWithProxySuccess(_)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_and_messages_a_cocoon_client_may_send() {
    let (net, _w) = proxy_with_worker(0x41).await;
    // Short authorisation: the contract holds SHA-256 of the secret.
    let owner = addr(0x52);
    let sc = net.fund_client(&owner, 1_000_000_000, true);
    let (h, incoming, connected) = cocoon_client(&net, &owner).await;
    assert!(matches!(
        connected.auth,
        enums::client::ProxyConnectionAuth::ProxyConnectionAuthShort(_)
    ));
    let q = |bytes: Vec<u8>| {
        let h = h.clone();
        async move { h.query(bytes, LIMIT).await }
    };
    assert!(authorized(
        &q(hm::client_authorize_short(SECRET)).await.unwrap()
    ));
    // Worker types, both forms: the one model with its worker.
    let types =
        tclient::WorkerTypes::from_bytes(&q(hm::client_get_worker_types()).await.unwrap()).unwrap();
    assert_eq!(types.types.len(), 1);
    assert_eq!(
        (types.types[0].name.as_str(), types.types[0].active_workers),
        ("Smol", 1)
    );
    let v2 =
        tclient::WorkerTypesV2::from_bytes(&q(hm::client_get_worker_types_v2()).await.unwrap())
            .unwrap();
    assert_eq!(v2.types[0].workers[0].coefficient, 1500);
    // `client.requestRefund` is declared in the scheme but served by no COCOON proxy: a
    // typed error at once, and the session goes on.
    let e = q(hm::client_request_refund()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::ProtoViolation as i32);
    assert!(e.message.contains("238d863d"), "{}", e.message);
    // `client.runQueryEx` by hand, with debug, to a real worker: served (COCOON's answer
    // extensions are checked in detail below).
    let mut c = TestClient {
        handle: h.clone(),
        incoming,
        connected,
        evidence: Vec::new(),
        receipts: Vec::new(),
    };
    let body = chat_body("json", false);
    let run = hm::client_run_query_ex(
        "Smol",
        &hm::http_request(CHAT, &body),
        100,
        30.0,
        [7; 32],
        true,
    );
    send(&c.handle, run).await;
    let r = collect(&mut c, &[7], true).await;
    assert_eq!(r[&7].status, Some(200));
    assert_eq!(r[&7].tokens, Some([18, 0, 12, 0, 30]));
    // `client.updatePaymentStatus`: the totals include the request.
    let st =
        tclient::PaymentStatus::from_bytes(&q(hm::client_update_payment_status()).await.unwrap())
            .unwrap();
    assert_eq!(st.max_tokens, 30);
    assert_eq!(net.meter.client(&sc.to_string()).unwrap().used, 30);

    // Long authorisation: no secret on the contract; answered once the chain shows the
    // contract registering the nonce.
    let owner = addr(0x53);
    let sc = net.fund_client(&owner, 1_000_000_000, false);
    let (h, _incoming, connected) = cocoon_client(&net, &owner).await;
    let enums::client::ProxyConnectionAuth::ProxyConnectionAuthLong(long) = connected.auth else {
        panic!("long authorisation expected")
    };
    let pending = tokio::spawn(async move { h.query(hm::client_authorize_long(), LIMIT).await });
    net.chain.register(sc, long.nonce as u64);
    assert!(authorized(&pending.await.unwrap().unwrap()));
}

/// The usage the client sees in a JSON body or the final SSE chunk.
fn usage_in(body: &[u8]) -> serde_json::Value {
    let text = String::from_utf8(body.to_vec()).unwrap();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
        return v["usage"].clone();
    }
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .map(|v| v["usage"].clone())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_fields_timing_headers_and_debug_through_proxy_and_worker() {
    let (net, w) = proxy_with_worker(0x41).await;
    let owner = addr(0x53);
    let sc = net.fund_client(&owner, 1_000_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;
    let price = net.root.params.price_per_token as i64;
    let mut booked_before = 0;
    for (id, mode, stream) in [(1u8, "json", false), (2, "gated", true)] {
        if mode == "gated" {
            w.engine.gate.add_permits(1);
        }
        let q = hm::client_run_query_ex(
            "Smol",
            &hm::http_request(CHAT, &chat_body(mode, stream)),
            100,
            30.0,
            [id; 32],
            true,
        );
        send(&c.handle, q).await;
        // Read the final info too (debug, timings).
        let mut body = Vec::new();
        let mut headers = Vec::new();
        let fi = loop {
            match c.next().await {
                FromProxy::Head(h, r) => {
                    headers = r.headers;
                    body.extend(r.payload);
                    if let Some(fi) = h.final_info {
                        break fi;
                    }
                }
                FromProxy::Part(p) => {
                    body.extend(p.answer);
                    if let Some(fi) = p.final_info {
                        break fi;
                    }
                }
                FromProxy::Payment(_) | FromProxy::Evidence(_) | FromProxy::Receipt(_) => {}
                FromProxy::Error(e) => panic!("{e:?}"),
            }
        };
        let t = tokens5(&fi.tokens_used);
        // The cost fields in the answer are the booked tokens at the root's price.
        let booked = net.meter.client(&sc.to_string()).unwrap().used as i64;
        assert_eq!(
            booked - booked_before,
            t[4],
            "{mode}: the final info is what was booked"
        );
        booked_before = booked;
        let u = usage_in(&body);
        assert_eq!(u["prompt_total_cost"], (t[0] + t[1]) * price, "{mode}");
        assert_eq!(u["completion_total_cost"], (t[2] + t[3]) * price, "{mode}");
        assert_eq!(u["total_cost"], t[4] * price, "{mode}");
        // Timing headers of the worker and the proxy, Unix seconds with 6 decimals.
        for name in [
            "X-Cocoon-Worker-Start",
            "X-Cocoon-Worker-End",
            "X-Cocoon-Proxy-Start",
            "X-Cocoon-Proxy-End",
        ] {
            let v = header(&headers, name).unwrap_or_else(|| panic!("{name}"));
            let (_, frac) = v.split_once('.').unwrap();
            assert_eq!(frac.len(), 6, "{name}: {v}");
            assert!(v.parse::<f64>().unwrap() > 1.7e9);
        }
        // Debug output as COCOON's: the worker's and the proxy's stats objects.
        let w: serde_json::Value =
            serde_json::from_str(fi.worker_debug.as_deref().unwrap()).unwrap();
        let p: serde_json::Value =
            serde_json::from_str(fi.proxy_debug.as_deref().unwrap()).unwrap();
        assert_eq!(
            (&w["type"], &p["type"]),
            (&"worker_stats".into(), &"proxy_stats".into())
        );
        for d in [&w, &p] {
            let at = |k: &str| d[k].as_f64().unwrap_or_else(|| panic!("{k} in {d}"));
            assert!(at("start_time") <= at("answer_receive_start_at"), "{d}");
            assert!(
                at("answer_receive_start_at") <= at("answer_receive_end_at"),
                "{d}"
            );
        }
        assert!(fi.proxy_start_time.is_some() && fi.worker_end_time.is_some());
    }
}
