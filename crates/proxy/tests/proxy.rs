//! The proxy through its real paths: real `cocoon-worker` instances with fake engines dial
//! the proxy over RA-TLS (sim attestation, proof-of-work), a test client speaks TL over
//! RA-TLS to the client listener, and requests flow end to end on loopback.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::atomic::Ordering;

use cocoon_testkit::client::{collect, run_query};
use cocoon_testkit::prelude::*;
use cocoon_testkit::proxy::{finish_handshake, raw_worker};
use cocoon_tl::enums;
use cocoon_tl::functions::client as fclient;
use cocoon_tl::types::client as tclient;

const GATED_TOKENS: [i64; 5] = [22, 12, 27, 0, 61];
const JSON_TOKENS: [i64; 5] = [18, 0, 12, 0, 30];
const FAIL_TOKENS: [i64; 5] = [1, 0, 9, 0, 10];

/// Reads request `id`'s head and parts until the body holds `want` (the engine is held).
async fn read_until(c: &mut TestClient, id: u8, want: &str) -> Collected {
    let mut got = Collected::default();
    while !String::from_utf8_lossy(&got.body).contains(want) {
        match c.next().await {
            FromProxy::Head(h, r) => {
                assert_eq!(h.request_id, [id; 32]);
                assert!(h.final_info.is_none());
                got.status = Some(r.status_code);
                got.headers = r.headers;
                got.body.extend_from_slice(&r.payload);
            }
            FromProxy::Part(p) => {
                assert_eq!(p.request_id, [id; 32]);
                assert!(p.final_info.is_none(), "answer still held by the engine");
                got.body.extend_from_slice(&p.answer);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_to_end_with_exact_usage_least_loaded_routing_and_admin() {
    let net = start_proxy(root(1, true, true)).await;
    let w1 = start_worker(&net, 0x41).await;
    let w2 = start_worker(&net, 0x42).await;
    net.wait_workers(2).await;
    let owner = addr(0x51);
    let sc = net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::connect(&net, &owner).await;
    assert_eq!(c.connected.client_sc_address, sc.to_string());
    assert_eq!(c.connected.params.proto_version, Some(3));
    assert!(matches!(
        c.connected.auth,
        enums::client::ProxyConnectionAuth::ProxyConnectionAuthShort(_)
    ));
    let a = c.authorize_short().await;
    assert!(matches!(
        a,
        enums::client::AuthorizationWithProxy::AuthorizationWithProxySuccess(_)
    ));

    // Worker types as a client's /v1/models would show them.
    let types: tclient::WorkerTypesV2 = c
        .handle
        .query_tl(&fclient::GetWorkerTypesV2 {}, LIMIT)
        .await
        .unwrap();
    assert_eq!(types.types.len(), 1);
    assert_eq!(types.types[0].name, "Smol");
    assert_eq!(types.types[0].workers.len(), 2);
    assert!(
        types.types[0]
            .workers
            .iter()
            .all(|w| w.coefficient == 1500 && w.max_active_requests == 4)
    );

    // Request 1 streams: head and first chunks arrive while the engine still holds the rest.
    c.run(1, "gated", 100, 30.0).await;
    let first = read_until(&mut c, 1, "Bonjour").await;
    assert_eq!(first.status, Some(200));
    assert!(header(&first.headers, "X-Cocoon-Proxy-Start").is_some());
    assert!(header(&first.headers, "X-Cocoon-Worker-Start").is_some());
    // Request 2 goes to the idle worker, not the one busy with request 1.
    c.run(2, "gated", 100, 30.0).await;
    let second = read_until(&mut c, 2, "Bonjour").await;
    assert_eq!((w1.engine.requests(), w2.engine.requests()), (1, 1));
    w1.engine.gate.add_permits(1);
    w2.engine.gate.add_permits(1);
    let rest = collect(&mut c, &[1, 2], true).await;
    let full = transcript();
    for (id, prefix) in [(1u8, &first), (2u8, &second)] {
        let r = &rest[&id];
        assert_eq!(r.error, None);
        assert_eq!(r.tokens, Some(GATED_TOKENS), "request {id}");
        let mut body = prefix.body.clone();
        body.extend_from_slice(&r.body);
        // Relayed unchanged, but for COCOON's cost fields the worker adds to the usage chunk
        // (61 adjusted tokens at 20 nanoTON).
        let body = String::from_utf8(body).unwrap();
        assert!(body.starts_with(&full[..3].concat()), "{body}");
        assert!(body.ends_with(&full[4]), "{body}");
        assert!(body.contains(r#""total_cost":1220"#), "{body}");
        assert_eq!(r.payments[0].request_tokens, 61);
    }
    let max_seen = rest.values().map(|r| r.payments[0].max_tokens).max();
    assert_eq!(max_seen, Some(122));
    // The books: the client paid exactly what the workers reported, each worker earned its share.
    let acct = net.meter.client(&sc.to_string()).unwrap();
    assert_eq!((acct.used, acct.reserved), (122, 0));
    assert_eq!(net.meter.worker_earned(&w1.worker_sc(&net)), 61);
    assert_eq!(net.meter.worker_earned(&w2.worker_sc(&net)), 61);
    // Each worker holds the proxy's totals for its contract.
    eventually("workers got their payment messages", || {
        [&w1, &w2]
            .iter()
            .all(|w| w.handle.stats().payments.iter().any(|p| p.max_tokens == 61))
    })
    .await;

    // Admin: stats, metrics, controls behind the token.
    let http = reqwest::Client::new();
    let js: serde_json::Value = get_json(&http, &format!("{}/jsonstats", net.admin())).await;
    assert_eq!(js["workers"].as_array().unwrap().len(), 2);
    assert!(
        js["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["served"] == 1 && w["running"] == 0)
    );
    assert_eq!(js["counters"]["requests_success"], 2);
    let html = get_text(&http, &format!("{}/stats", net.admin())).await;
    assert!(html.contains(MODEL) && html.contains("reputation"));
    cocoon_testkit::http::assert_no_debug_values("the proxy's /stats", &html);
    let received = format!(
        "data-figure=\"requests_received\">{}<",
        js["counters"]["requests_received"]
    );
    assert!(html.contains(&received), "{received} not in {html}");
    let metrics = get_text(&http, &format!("{}/metrics", net.admin())).await;
    assert!(
        metrics.contains("cocoon_proxy_requests_total{outcome=\"success\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("cocoon_proxy_adjusted_tokens_total 122"));
    // The public summary the explorer reads: the same figures, no client or owner in it.
    let public: serde_json::Value = get_json(&http, &format!("{}/public.json", net.admin())).await;
    assert_eq!(public["proxy_sc"], js["proxy_sc"]);
    assert_eq!(public["tee"], "sim");
    assert_eq!(
        public["image_hash"],
        hex::encode(cocoon_attest::sim::sim_image_hash())
    );
    assert_eq!(public["requests_success"], 2);
    assert_eq!(public["adjusted_tokens_total"], 122);
    let models = public["models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "{public}");
    assert_eq!(models[0]["workers"], 2);
    let capacity: u64 = js["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["max_active"].as_u64().unwrap())
        .sum();
    assert_eq!(models[0]["capacity"], capacity);
    let text = public.to_string();
    assert!(
        !text.contains("owner") && !text.contains("client"),
        "{text}"
    );
    assert_eq!(
        post_status(&http, &format!("{}/control/disable", net.admin()), None).await,
        401
    );
    assert_eq!(
        post_status(
            &http,
            &format!("{}/control/disable", net.admin()),
            Some("wrong")
        )
        .await,
        401
    );
    assert_eq!(
        post_status(
            &http,
            &format!("{}/control/disable", net.admin()),
            Some(TOKEN)
        )
        .await,
        200
    );
    c.run(3, "json", 100, 30.0).await;
    let r = collect(&mut c, &[3], false).await;
    assert_eq!(
        r[&3].error.as_ref().map(|e| e.1.as_str()),
        Some("proxy is disabled")
    );
    assert_eq!(r[&3].tokens, Some([0; 5]));
    assert_eq!(
        post_status(
            &http,
            &format!("{}/control/enable", net.admin()),
            Some(TOKEN)
        )
        .await,
        200
    );
    c.run(4, "json", 100, 30.0).await;
    let r = collect(&mut c, &[4], true).await;
    assert_eq!(r[&4].error, None);
    assert_eq!(r[&4].tokens, Some(JSON_TOKENS));
    assert_eq!(net.meter.client(&sc.to_string()).unwrap().used, 152);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_worker_is_retried_before_the_first_byte_and_then_avoided() {
    let net = start_proxy(root(1, true, true)).await;
    // The failing worker registers first, so it wins the first (tied) pick.
    let bad = start_worker(&net, 0x41).await;
    net.wait_workers(1).await;
    let good = start_worker(&net, 0x42).await;
    net.wait_workers(2).await;
    bad.engine.busy.store(true, Ordering::SeqCst);
    let owner = addr(0x51);
    let sc = net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;
    for id in 1..=4u8 {
        c.run(id, "json", 100, 30.0).await;
        let r = collect(&mut c, &[id], true).await;
        assert_eq!(r[&id].error, None, "request {id}");
        assert_eq!(r[&id].tokens, Some(JSON_TOKENS));
    }
    // One failed attempt on the bad worker, retried on the good one; after that the bad
    // worker's reputation and unknown latency keep traffic away from it.
    assert_eq!(bad.engine.requests(), 1);
    assert_eq!(good.engine.requests(), 4);
    let st = net.proxy.stats();
    assert_eq!(st.counters.retries, 1);
    assert_eq!(st.counters.requests_success, 4);
    let bad_stat = st
        .workers
        .iter()
        .find(|w| w.owner == bad.owner.to_string())
        .unwrap();
    let good_stat = st
        .workers
        .iter()
        .find(|w| w.owner == good.owner.to_string())
        .unwrap();
    assert_eq!((bad_stat.failed, bad_stat.served), (1, 0));
    assert_eq!((good_stat.failed, good_stat.served), (0, 4));
    assert!(bad_stat.reputation < good_stat.reputation);
    // The failed attempt is not billed; the client paid for four answers.
    assert_eq!(net.meter.client(&sc.to_string()).unwrap().used, 4 * 30);
    assert_eq!(net.meter.worker_earned(&bad.worker_sc(&net)), 0);

    // Workers' updates reach routing: a coefficient above the client's maximum and a
    // disabled worker are skipped.
    good.handle.set_coefficient(5000).unwrap();
    let worker = |owner: &cocoon_ton::StdAddr| {
        net.proxy
            .stats()
            .workers
            .into_iter()
            .find(|w| w.owner == owner.to_string())
            .unwrap()
    };
    eventually("new coefficient seen", || {
        worker(&good.owner).coefficient == 5000
    })
    .await;
    bad.engine.busy.store(false, Ordering::SeqCst);
    c.run(5, "json", 100, 30.0).await;
    let r = collect(&mut c, &[5], true).await;
    assert_eq!(r[&5].tokens, Some(JSON_TOKENS));
    assert_eq!((bad.engine.requests(), good.engine.requests()), (2, 4));
    bad.handle.set_enabled(false);
    eventually("disabled state seen", || !worker(&bad.owner).enabled).await;
    c.run(6, "json", 100, 30.0).await;
    let r = collect(&mut c, &[6], false).await;
    assert_eq!(
        r[&6].error.as_ref().map(|e| e.1.as_str()),
        Some("can run this query with coefficient=5000")
    );
    assert_eq!(net.meter.open_reservations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_after_the_first_byte_and_the_error_carries_the_usage() {
    let (net, first) = proxy_with_worker(0x41).await;
    let other = start_worker(&net, 0x42).await;
    net.wait_workers(2).await;
    let owner = addr(0x51);
    let sc = net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;
    c.run(1, "fail", 100, 30.0).await;
    let r = collect(&mut c, &[1], true).await;
    let r = &r[&1];
    assert_eq!(r.status, Some(200), "the head reached the client");
    assert!(String::from_utf8_lossy(&r.body).contains("one two"));
    assert!(r.error.is_some());
    assert_eq!(r.tokens, Some(FAIL_TOKENS));
    assert_eq!(r.payments[0].request_tokens, 10);
    assert_eq!((first.engine.requests(), other.engine.requests()), (1, 0));
    assert_eq!(net.proxy.stats().counters.retries, 0);
    // Billed exactly the usage so far.
    assert_eq!(net.meter.client(&sc.to_string()).unwrap().used, 10);
    assert_eq!(net.meter.worker_earned(&first.worker_sc(&net)), 10);
    assert_eq!(net.meter.open_reservations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_disconnect_and_deadline_stop_the_worker_stream() {
    let (net, w) = proxy_with_worker(0x41).await;
    let owner = addr(0x51);
    let sc = net.fund_client(&owner, 100_000_000, true);

    // Client cancel: the worker's engine stream is dropped, the client is told, and billed
    // what the worker produced until then.
    let mut c = TestClient::authorized(&net, &owner).await;
    c.run(1, "endless", 1000, 30.0).await;
    read_until(&mut c, 1, "t0").await;
    c.cancel(1).await;
    let r = collect(&mut c, &[1], true).await;
    let (code, _) = r[&1].error.clone().expect("cancel is reported");
    assert_eq!(code, cocoon_net::ErrorCode::Cancelled as i32);
    let billed = r[&1].tokens.unwrap()[4];
    assert!(billed > 0);
    eventually("engine stream dropped after cancel", || {
        w.engine.dropped.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(
        net.meter.client(&sc.to_string()).unwrap().used,
        billed as u64
    );

    // Deadline: the proxy gives up after the client's timeout and stops the worker.
    c.run(2, "endless", 1000, 1.0).await;
    let r = collect(&mut c, &[2], true).await;
    // The worker gets 95% of the remaining time, so its own timeout usually reports first;
    // either way the client sees a timeout carrying the usage so far.
    let (code, _) = r[&2].error.clone().expect("timeout is reported");
    assert_eq!(code, cocoon_net::ErrorCode::Timeout as i32);
    assert!(r[&2].tokens.unwrap()[4] > 0);
    eventually("engine stream dropped after the deadline", || {
        w.engine.dropped.load(Ordering::SeqCst)
    })
    .await;

    // Disconnect mid-stream: the worker's engine stream stops and the reservation is freed.
    c.run(3, "endless", 1000, 30.0).await;
    read_until(&mut c, 3, "t1").await;
    assert!(!w.engine.dropped.load(Ordering::SeqCst));
    c.handle.close();
    drop(c);
    eventually("engine stream dropped after disconnect", || {
        w.engine.dropped.load(Ordering::SeqCst)
    })
    .await;
    eventually("reservation released", || {
        net.meter.open_reservations() == 0
    })
    .await;
    eventually("worker slot released", || {
        net.proxy.stats().workers[0].running == 0
    })
    .await;
    assert_eq!(net.proxy.stats().counters.requests_cancelled, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_outside_the_root_config_are_refused_and_dropped_on_update() {
    let net = start_proxy(root(1, false, true)).await;
    let w = start_worker(&net, 0x41).await;
    let refused = |what: &str| {
        net.proxy
            .stats()
            .refusals
            .iter()
            .any(|r| r.kind == "worker" && r.reason.contains(what))
    };
    eventually("image refused", || refused("image hash")).await;
    assert_eq!(net.proxy.ready_workers(), 0);
    eventually("worker sees why", || {
        w.handle.stats().proxies.iter().any(|p| {
            p.last_error
                .as_deref()
                .is_some_and(|e| e.contains("is not in the root configuration"))
        })
    })
    .await;

    net.proxy.update_root(root(2, true, false)).unwrap();
    eventually("model refused", || refused("model")).await;
    assert_eq!(net.proxy.ready_workers(), 0);

    net.proxy.update_root(root(3, true, true)).unwrap();
    net.wait_workers(1).await;

    // The model leaves the registry: the connected worker is dropped.
    net.proxy.update_root(root(4, true, false)).unwrap();
    eventually("worker dropped", || net.proxy.ready_workers() == 0).await;
    assert!(refused("dropped after root update"));
    assert!(
        net.proxy.update_root(root(4, true, true)).is_err(),
        "versions only increase"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_funds_is_refused_and_long_auth_completes_on_chain() {
    let (net, w) = proxy_with_worker(0x41).await;

    // 2000 nanoTON at 20 per token: 100 tokens of credit, far below the reservation.
    let poor = addr(0x51);
    let poor_sc = net.fund_client(&poor, 2000, true);
    let mut c = TestClient::authorized(&net, &poor).await;
    c.run(1, "json", 1000, 30.0).await;
    let r = collect(&mut c, &[1], false).await;
    let (_, msg) = r[&1].error.clone().expect("refused");
    assert!(msg.contains("balance is too low"), "{msg}");
    assert_eq!(r[&1].tokens, Some([0; 5]));
    assert_eq!(w.engine.requests(), 0);
    assert_eq!(net.meter.open_reservations(), 0);
    assert_eq!(net.meter.client(&poor_sc.to_string()).unwrap().used, 0);

    // A wrong secret is refused.
    let c2 = TestClient::connect(&net, &poor).await;
    let a = c2.authorize_with(b"wrong").await;
    assert!(matches!(
        a,
        enums::client::AuthorizationWithProxy::AuthorizationWithProxyFailed(_)
    ));

    // No secret on the contract: long authorisation, completed when the chain shows the nonce.
    let rich = addr(0x52);
    let rich_sc = net.fund_client(&rich, 100_000_000, false);
    let mut c3 = TestClient::connect(&net, &rich).await;
    let enums::client::ProxyConnectionAuth::ProxyConnectionAuthLong(long) =
        c3.connected.auth.clone()
    else {
        panic!("long auth expected: {:?}", c3.connected.auth)
    };
    let h = c3.handle.clone();
    let pending = tokio::spawn(async move {
        h.query_tl::<_, enums::client::AuthorizationWithProxy>(
            &fclient::AuthorizeWithProxyLong {},
            LIMIT,
        )
        .await
    });
    net.chain.register(rich_sc.clone(), long.nonce as u64);
    let a = pending.await.unwrap().unwrap();
    assert!(matches!(
        a,
        enums::client::AuthorizationWithProxy::AuthorizationWithProxySuccess(_)
    ));
    c3.run(2, "json", 100, 30.0).await;
    let r = collect(&mut c3, &[2], true).await;
    assert_eq!(r[&2].tokens, Some(JSON_TOKENS));
    assert_eq!(net.meter.client(&rich_sc.to_string()).unwrap().used, 30);

    // New params mean new contract addresses: every session is closed so peers re-derive.
    let mut next = root(2, true, true);
    next.params.params_version += 1;
    net.proxy.update_root(next).unwrap();
    eventually("client session closed", || c3.handle.is_closed()).await;
    eventually("worker session closed", || net.proxy.ready_workers() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_configurations_do_not_start() {
    // Sim attestation on a production proxy.
    let mut prod = root(1, true, true);
    prod.params.is_test = false;
    let err = start_err(prod, |c| c.is_test = false).await;
    assert!(
        matches!(
            err,
            cocoon_proxy::ProxyStartError::SimOnProduction("worker")
        ),
        "{err}"
    );
    // A root for another network.
    let mut prod = root(1, true, true);
    prod.params.is_test = false;
    let err = start_err(root(1, true, true), |c| c.root = prod).await;
    assert!(
        matches!(err, cocoon_proxy::ProxyStartError::TestMismatch),
        "{err}"
    );
    // No contract code: client and worker contracts could not be derived.
    let mut bare = root(1, true, true);
    bare.params.worker_code = None;
    let err = start_err(bare, |_| {}).await;
    assert!(
        matches!(err, cocoon_proxy::ProxyStartError::MissingCode("worker")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_lost_mid_stream_is_not_retried_and_shutdown_closes_sessions() {
    let (net, w1) = proxy_with_worker(0x41).await;
    let w2 = start_worker(&net, 0x42).await;
    net.wait_workers(2).await;
    let owner = addr(0x51);
    let sc = net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;
    c.run(1, "gated", 100, 30.0).await;
    read_until(&mut c, 1, "Bonjour").await;
    assert_eq!((w1.engine.requests(), w2.engine.requests()), (1, 0));
    // The worker's session drops under the running request.
    w1.handle.reconnect_all();
    let r1 = collect(&mut c, &[1], true).await;
    let (code, msg) = r1[&1].error.clone().expect("the client is told");
    assert!(
        code == cocoon_net::ErrorCode::NotReady as i32
            || code == cocoon_net::ErrorCode::Cancelled as i32,
        "{code} {msg}"
    );
    assert_eq!(w2.engine.requests(), 0, "no retry after the first byte");
    eventually("reservation released", || {
        net.meter.open_reservations() == 0
    })
    .await;
    // The worker redials and serves again.
    net.wait_workers(2).await;
    c.run(2, "json", 100, 30.0).await;
    let r = collect(&mut c, &[2], true).await;
    assert_eq!(r[&2].tokens, Some(JSON_TOKENS));
    assert_eq!(
        net.meter.client(&sc.to_string()).unwrap().used,
        r1[&1].tokens.unwrap()[4] as u64 + 30
    );

    // Shutdown closes every session.
    let Net { proxy, .. } = net;
    proxy.shutdown().await;
    eventually("workers see the proxy gone", || {
        w1.handle.ready_proxies() == 0 && w2.handle.ready_proxies() == 0
    })
    .await;
    eventually("client session closed", || c.handle.is_closed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_input_closes_that_session_only() {
    let (net, _w) = proxy_with_worker(0x41).await;
    let owner = addr(0x51);
    net.fund_client(&owner, 100_000_000, true);

    // A request before authorisation is refused, with zero tokens.
    let mut early = TestClient::connect(&net, &owner).await;
    early.run(1, "json", 100, 30.0).await;
    let r = collect(&mut early, &[1], false).await;
    assert_eq!(
        r[&1].error.as_ref().map(|e| e.1.as_str()),
        Some("not authorised")
    );
    assert_eq!(r[&1].tokens, Some([0; 5]));

    // A message of an unknown type is ignored (newer peers may send more); one too short
    // to carry a type closes the session, and nothing else is affected.
    let bad = TestClient::authorized(&net, &owner).await;
    bad.handle
        .send_message(vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3])
        .await
        .unwrap();
    bad.handle.send_message(vec![1, 2]).await.unwrap();
    eventually("bad session closed", || bad.handle.is_closed()).await;
    // A truncated request (right constructor, missing fields) likewise.
    let bad2 = TestClient::authorized(&net, &owner).await;
    let mut q = run_query([9; 32], &chat_body("json", false), 100, 30.0);
    q.truncate(q.len() / 2);
    bad2.handle.send_message(q).await.unwrap();
    eventually("truncated session closed", || bad2.handle.is_closed()).await;

    // An unknown query is answered with an error, the session stays.
    let mut good = TestClient::authorized(&net, &owner).await;
    let err = good
        .handle
        .query(vec![1, 2, 3, 4, 5, 6, 7, 8], LIMIT)
        .await
        .unwrap_err();
    assert_eq!(err.code, cocoon_net::ErrorCode::ProtoViolation as i32);
    let types: tclient::WorkerTypes = good
        .handle
        .query_tl(&fclient::GetWorkerTypes {}, LIMIT)
        .await
        .unwrap();
    assert_eq!(types.types.len(), 1);
    assert_eq!(
        (
            types.types[0].active_workers,
            types.types[0].coefficient_min,
            types.types[0].coefficient_max
        ),
        (1, 1500, 1500)
    );
    let st: tclient::PaymentStatus = good
        .handle
        .query_tl(&fclient::UpdatePaymentStatus {}, LIMIT)
        .await
        .unwrap();
    assert_eq!((st.db_tokens, st.max_tokens), (0, 0));
    good.run(2, "json", 100, 30.0).await;
    let r = collect(&mut good, &[2], true).await;
    assert_eq!(r[&2].tokens, Some(JSON_TOKENS));
    assert_eq!(net.proxy.stats().workers.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_level_worker_handshake_deadline_and_violations() {
    use cocoon_tl::types::proxy as tproxy;
    use cocoon_tl::{Identifiable, TlRead};
    let net = start_proxy_with(root(1, true, true), |c| {
        c.timings.cancel_grace = std::time::Duration::from_millis(200)
    })
    .await;
    // A version-2 worker: the proxy picks 2 and names the derived worker contract.
    let (h, mut incoming, connected) = raw_worker(&net, 1000, 2, 2).await;
    assert_eq!(connected.params.proto_version, Some(2));
    assert_eq!(connected.params.is_test, Some(true));
    assert_eq!(connected.params.proxy_public_key, net.proxy.public_key());
    let expected_sc = cocoon_ton::contracts::worker_contract(
        &net.root.params,
        &addr(0x49),
        &net.proxy_sc,
        &cocoon_ton::HashBytes(net.proxy.public_key()),
    )
    .unwrap()
    .address;
    assert_eq!(connected.worker_sc_address, expected_sc.to_string());
    // The worker claims more than the proxy knows: reported, not fatal.
    let cmp = finish_handshake(&h, 500).await;
    assert_eq!((cmp.error_code, cmp.max_tokens), (1, 0));
    net.wait_workers(1).await;

    // A request the worker never answers: the proxy's own deadline ends it.
    let owner = addr(0x51);
    let sc = net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;
    c.run(1, "json", 100, 1.0).await;
    let run = match tokio::time::timeout(LIMIT, incoming.recv())
        .await
        .unwrap()
        .unwrap()
    {
        cocoon_net::Incoming::Message { data } => fproxy_run(&data),
        cocoon_net::Incoming::Query { .. } => panic!("the proxy sends no queries"),
    };
    assert_eq!(run.coefficient, 1000);
    assert!(run.timeout > 0.0 && run.timeout <= 1.0);
    assert_ne!(
        run.request_id, [1; 32],
        "the client's id does not reach the worker"
    );
    let r = collect(&mut c, &[1], true).await;
    assert_eq!(
        r[&1].error.clone(),
        Some((
            cocoon_net::ErrorCode::Timeout as i32,
            "timeout in proxy".to_owned()
        ))
    );
    assert_eq!(r[&1].tokens, Some([0; 5]));
    assert_eq!(net.meter.client(&sc.to_string()).unwrap().used, 0);
    // A version-2 worker gets no cancel message, only its payment report.
    let next = loop {
        if let cocoon_net::Incoming::Message { data } = tokio::time::timeout(LIMIT, incoming.recv())
            .await
            .unwrap()
            .unwrap()
        {
            break data;
        }
    };
    assert_eq!(
        cocoon_tl::peek_constructor(&next),
        Some(tproxy::WorkerRequestPayment::CONSTRUCTOR_ID)
    );
    let pay = tproxy::WorkerRequestPayment::from_bytes(&next).unwrap();
    assert_eq!((pay.request_id, pay.request_tokens), (run.request_id, 0));
    assert_eq!(
        pay.request_client_owner, "",
        "the worker is not told who pays"
    );
    let st = net.proxy.stats();
    assert_eq!(
        st.workers[0].failed, 1,
        "a timeout counts against the worker"
    );

    // A message too short to carry a type ends that worker's session only.
    h.send_message(vec![1, 2]).await.unwrap();
    eventually("worker dropped", || net.proxy.ready_workers() == 0).await;
    assert!(!c.handle.is_closed());
}

fn fproxy_run(data: &[u8]) -> cocoon_tl::functions::proxy::RunQueryEx {
    use cocoon_tl::TlRead;
    cocoon_tl::functions::proxy::RunQueryEx::from_bytes(data).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reported_beyond_the_reservation_stops_the_request() {
    let (net, w) = proxy_with_worker(0x41).await;
    let owner = addr(0x51);
    let sc = net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;
    c.run(1, "metered", 10, 30.0).await;
    let r = collect(&mut c, &[1], true).await;
    assert_eq!(
        r[&1].error.clone(),
        Some((
            cocoon_net::ErrorCode::Error as i32,
            "reserved_tokens depleted".to_owned()
        ))
    );
    // (max_tokens + request bytes) × max_coefficient 4.0 × highest multiplier 2.0
    let query_len = http_request(CHAT, &chat_body("metered", true)).len() as i64;
    let reserved = (10 + query_len) * 8;
    // The worker's final report is over the reservation: booked at the reservation.
    let billed = r[&1].tokens.unwrap()[4];
    assert_eq!(billed, reserved);
    assert_eq!(
        net.meter.client(&sc.to_string()).unwrap().used,
        billed as u64
    );
    eventually("engine stream dropped", || {
        w.engine.dropped.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(net.meter.open_reservations(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_payment_reports_that_never_decrease() {
    let (net, w) = proxy_with_worker(0x41).await;
    let owner = addr(0x51);
    let sc = net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;
    let mut maxes = Vec::new();
    for round in 0..5u8 {
        let ids: Vec<u8> = (1..=4).map(|i| round * 4 + i).collect();
        for id in &ids {
            c.run(*id, "json", 100, 30.0).await;
        }
        // Reports in arrival order.
        let mut done = 0;
        while done < ids.len() {
            match c.next().await {
                FromProxy::Payment(p) => {
                    maxes.push(p.max_tokens);
                    done += 1;
                }
                FromProxy::Error(e) => panic!("request failed: {e:?}"),
                _ => {}
            }
        }
    }
    assert_eq!(maxes.len(), 20);
    assert!(maxes.windows(2).all(|w| w[0] <= w[1]), "{maxes:?}");
    assert_eq!(maxes.last(), Some(&(20 * 30)));
    assert_eq!(net.meter.client(&sc.to_string()).unwrap().used, 600);
    // The worker never saw its totals go down (it would have dropped the session).
    eventually("worker holds the final totals", || {
        w.handle
            .stats()
            .payments
            .iter()
            .any(|p| p.max_tokens == 600)
    })
    .await;
    assert_eq!(w.handle.stats().proxies[0].handshakes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_whose_worker_just_left_is_refused_retryably_until_one_is_back() {
    let (net, w1) = proxy_with_worker(0x41).await;
    let owner = addr(0x51);
    net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;
    c.run(1, "json", 100, 30.0).await;
    assert_eq!(
        collect(&mut c, &[1], true).await[&1].tokens,
        Some(JSON_TOKENS)
    );
    // Its only worker leaves (as at a params switch, or a worker redialling): the model is
    // reconnecting, not unknown, so the client asks again instead of giving up with 404.
    w1.handle.shutdown().await;
    eventually("worker gone", || net.proxy.ready_workers() == 0).await;
    c.run(2, "json", 100, 30.0).await;
    let r = collect(&mut c, &[2], false).await;
    let (code, msg) = r[&2].error.clone().expect("refused");
    assert_eq!(code, cocoon_net::ErrorCode::NotReady as i32, "{msg}");
    assert!(
        msg.contains("are reconnecting; retry after reconnecting"),
        "{msg}"
    );
    // A worker is back: served again.
    let _w2 = start_worker(&net, 0x42).await;
    net.wait_workers(1).await;
    c.run(3, "json", 100, 30.0).await;
    assert_eq!(
        collect(&mut c, &[3], true).await[&3].tokens,
        Some(JSON_TOKENS)
    );
}
