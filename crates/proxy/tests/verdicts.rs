//! Verdicts that expire end the session (issue 16 §6), on the proxy's side: a worker's or a
//! client's session closes when the verdict it was admitted under expires, with an operator
//! event saying so, and the worker redials and is attested again. A client without evidence
//! (whose certificate's notAfter it chooses itself) is held to the client policy's
//! `max_validity_secs` the same way.

use std::time::{Duration, Instant};

use cocoon_attest::Policy;
use cocoon_ratls::cert::Unattested;
use cocoon_testkit::identity::{connector_as, short_lived_verifier};
use cocoon_testkit::prelude::*;

fn expiries(net: &Net) -> u64 {
    net.proxy
        .stats()
        .event_counts
        .get("verdict_expired")
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_session_ends_when_its_verdict_expires_and_the_worker_attests_again() {
    let net = start_proxy_with(root(1, true, true), |cfg| {
        cfg.worker_verifier = short_lived_verifier(2, false);
    })
    .await;
    let w = start_worker(&net, 0x61).await;
    net.wait_workers(1).await;
    let started = Instant::now();
    let hs = |w: &TestWorker| w.handle.stats().proxies[0].handshakes;
    assert_eq!(hs(&w), 1);

    // The proxy closes the session at the verdict's end; the worker redials, its evidence
    // is verified again and it is registered again.
    eventually("second handshake", || hs(&w) >= 2).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before the verdict ends: {:?}",
        started.elapsed()
    );
    assert!(expiries(&net) >= 1);
    let ev = net
        .proxy
        .stats()
        .events
        .into_iter()
        .find(|e| e.kind == "verdict_expired")
        .unwrap();
    assert!(
        ev.detail
            .contains("the worker's attestation verdict expired"),
        "{ev:?}"
    );
    net.wait_workers(1).await;

    // Served again after the re-attestation.
    let owner = addr(0x42);
    net.fund_client(&owner, 10_000_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;
    c.run(1, "json", 50, 30.0).await;
    let got = c.collect().await;
    assert_eq!(got.status, Some(200), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_session_ends_when_its_verdict_expires_attested_or_not() {
    let net = start_proxy_with(root(1, true, true), |cfg| {
        cfg.client_verifier = short_lived_verifier(2, true);
    })
    .await;
    let owner = addr(0x42);
    net.fund_client(&owner, 10_000_000_000, true);

    // An attested (sim) client: authorised, then closed when its 2 s verdict ends.
    let started = Instant::now();
    let c = TestClient::authorized(&net, &owner).await;
    tokio::time::timeout(LIMIT, c.handle.closed())
        .await
        .expect("the proxy closes the session");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    eventually("counted", || expiries(&net) == 1).await;

    // A client without evidence: its certificate says one day, the policy caps it at 2 s.
    let started = Instant::now();
    let (h, _incoming, peer) = connector_as(&Unattested, Policy::sim_test())
        .connect(net.proxy.client_addr().to_string())
        .await
        .unwrap();
    assert_eq!(peer.backend(), cocoon_attest::Backend::Sim, "the proxy is");
    tokio::time::timeout(LIMIT, h.closed())
        .await
        .expect("the proxy closes the unattested session too");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    eventually("counted", || expiries(&net) == 2).await;
    let ev = net.proxy.stats().events.pop().unwrap();
    assert!(ev.detail.contains("Unattested"), "{ev:?}");

    // A client whose verdict is fresh is served (honest use).
    let _w = start_worker(&net, 0x61).await;
    net.wait_workers(1).await;
    let mut c = TestClient::authorized(&net, &owner).await;
    c.run(1, "json", 50, 30.0).await;
    assert_eq!(c.collect().await.status, Some(200));
}
