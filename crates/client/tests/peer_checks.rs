//! The client and the worker check their proxy against the root (issue 16 §5, §6), over real
//! sessions: a real proxy whose contract is derived from the root, a real worker following
//! that root, the client's HTTP API; RA-TLS with sim attestation on loopback.
//!
//! - a proxy image removed from the root: the worker and the client drop that proxy at
//!   once (in-flight requests end, new ones never reach it);
//! - a proxy verdict that expires: the client closes the session and redials, attesting the
//!   proxy again;
//! - `is_test`: a gateway refuses to start on a root of the other network, and a root
//!   update that switches it drops every session.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use cocoon_attest::Policy;
use cocoon_client::{Client, ClientConfig, ClientHandle, StartError, Timings};
use cocoon_testkit::client::{gateway_config, start_gateway};
use cocoon_testkit::fixtures::{self, root_with_proxy_image, slow_redial};
use cocoon_testkit::identity::connector_with;
use cocoon_testkit::prelude::*;
use cocoon_ton::StdAddr;
use cocoon_ton::root::RootConfig;
use serde_json::{Value, json};

/// The root contract's address in these tests.
fn root_address() -> StdAddr {
    addr(0x05)
}

/// The test root (version `version`), allowing the sim image for proxies (or not).
fn test_root(version: u32, proxy_image_ok: bool) -> RootConfig {
    root_with_proxy_image(version, proxy_image_ok)
}

/// The proxy contract the root gives the test proxy (owner `addr(0x33)`, key of
/// `PROXY_SEED`).
fn derived_proxy_sc() -> StdAddr {
    fixtures::derived_proxy_sc(&test_root(1, true).params, &root_address())
}

/// A proxy with the contract its root derives, our client contract funded, and one worker
/// that follows the root.
async fn network() -> (Net, TestWorker) {
    let net = start_proxy_with(test_root(1, true), |cfg| cfg.proxy_sc = derived_proxy_sc()).await;
    net.fund_client(&addr(0x42), 10_000_000_000, true);
    let w = start_worker_with(&net, 0x61, |cfg| {
        cfg.proxies.clear();
        cfg.root_address = Some(root_address());
        cfg.timings.backoff = slow_redial();
    })
    .await;
    w.handle
        .update_root(&test_root(1, true), &[net.proxy.worker_addr().to_string()])
        .unwrap();
    net.wait_workers(1).await;
    (net, w)
}

fn config(net: &Net, root: RootConfig) -> ClientConfig {
    let mut cfg = gateway_config(vec![net.proxy.client_addr().to_string()], root);
    cfg.connections = 1;
    cfg.root_address = Some(root_address());
    cfg.timings = Timings {
        connect_timeout: Duration::from_secs(5),
        payment_status_interval: Duration::from_secs(60),
        backoff: slow_redial(),
        ..Timings::default()
    };
    cfg
}

async fn post(base: &str, mode: &str, stream: bool) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({
            "model": "Smol",
            "messages": [{"role": "user", "content": mode}],
            "stream": stream,
            "max_tokens": 100_000,
        }))
        .send()
        .await
        .unwrap()
}

fn client_error(c: &ClientHandle) -> String {
    c.proxies()[0].last_error.clone().unwrap_or_default()
}

fn worker_error(w: &TestWorker) -> String {
    w.handle.stats().proxies[0]
        .last_error
        .clone()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_image_removed_from_the_root_gets_no_more_prompts() {
    let (net, w) = network().await;
    let (c, base) = start_gateway(config(&net, test_root(1, true)), 1).await;

    // Honest use: the derived proxy contract passes the client's and the worker's checks.
    let r = post(&base, "json", false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        w.handle.stats().proxies[0].proxy_sc_address.as_deref(),
        Some(derived_proxy_sc().to_string().as_str())
    );

    // The root removes the proxy image. The worker drops the proxy at once: the request
    // streaming through it is cancelled at the engine, and it serves the proxy no more.
    let streaming = post(&base, "endless", true).await;
    assert_eq!(streaming.status(), 200);
    w.handle
        .update_root(&test_root(2, false), &[net.proxy.worker_addr().to_string()])
        .unwrap();
    eventually("worker drops the proxy", || {
        w.handle.ready_proxies() == 0
            && worker_error(&w).contains("root configuration v2 no longer allows it")
    })
    .await;
    eventually("engine stream cancelled", || {
        w.engine.dropped.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    tokio::time::timeout(LIMIT, streaming.text())
        .await
        .expect("the stream through the dropped worker ends")
        .ok();
    net.wait_workers(0).await;
    let served = w.engine.requests();

    // The client drops it too as soon as it sees the new root: nothing more is sent to it.
    c.update_root(test_root(2, false));
    eventually("client drops the proxy", || {
        c.ready_proxies() == 0
            && client_error(&c).contains("root configuration v2 no longer allows it")
    })
    .await;
    let r = post(&base, "json", false).await;
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("image"),
        "{e}"
    );
    // Redials are refused on the image before any handshake.
    eventually("refused on redial", || {
        client_error(&c).starts_with("image not allowed")
    })
    .await;
    assert_eq!(c.ready_proxies(), 0);
    assert!(
        worker_error(&w).starts_with("proxy refused: the proxy's image hash"),
        "{}",
        worker_error(&w)
    );
    assert_eq!(w.engine.requests(), served, "no prompt reached the worker");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_redials_a_proxy_whose_verdict_expired() {
    let (net, _w) = network().await;
    let mut cfg = config(&net, test_root(1, true));
    cfg.connector = connector_with(Policy {
        max_validity_secs: 2,
        ..Policy::sim_test()
    });
    let verifier = std::sync::Arc::clone(cfg.connector.verifier());
    let (c, base) = start_gateway(cfg, 1).await;
    let first = c.proxies()[0].clone();
    let runs = verifier.attestation_runs();

    // The verdict holds 2 s: the session is closed then, and the redial attests again.
    eventually("second session", || {
        let p = &c.proxies()[0];
        p.sessions >= 2 && p.state == "ready"
    })
    .await;
    let p = c.proxies()[0].clone();
    assert!(p.verdict_expiries >= 1, "{p:?}");
    assert!(p.valid_until > first.valid_until, "{first:?} then {p:?}");
    assert!(verifier.attestation_runs() > runs);
    // Served after the redial.
    let r = post(&base, "json", false).await;
    assert_eq!(r.status(), 200);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_the_roots_is_test() {
    let (net, _w) = network().await;

    // A test gateway does not start on a production root.
    let mut prod = test_root(1, true);
    prod.params.is_test = false;
    match Client::start(config(&net, prod.clone())).await {
        Err(StartError::TestMismatch { root, ours }) => {
            assert!(!root && ours);
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a test gateway started on a production root"),
    }

    // A root update that switches is_test drops every session and refuses new ones.
    let (c, base) = start_gateway(config(&net, test_root(1, true)), 1).await;
    assert_eq!(post(&base, "json", false).await.status(), 200);
    prod.version = 2;
    c.update_root(prod);
    eventually("dropped", || {
        c.ready_proxies() == 0 && client_error(&c).contains("test mode mismatch")
    })
    .await;
    assert_eq!(post(&base, "json", false).await.status(), 503);
    // Back on the right network, the proxy is used again (the proxy serves clients whose
    // root is not newer than its own).
    net.proxy.update_root(test_root(3, true)).unwrap();
    c.update_root(test_root(3, true));
    eventually("ready again", || c.ready_proxies() == 1).await;
    assert_eq!(post(&base, "json", false).await.status(), 200);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_naming_a_contract_our_params_do_not_give_wakes_the_root_watcher() {
    // The proxy names a contract the client's root does not give, as one does after a
    // params change it followed before the client: refused, and the root is read now.
    let net = start_proxy_with(test_root(1, true), |cfg| cfg.proxy_sc = addr(0x11)).await;
    net.fund_client(&addr(0x42), 10_000_000_000, true);
    let c = Client::start(config(&net, test_root(1, true)))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), c.root_wake().notified())
        .await
        .expect("root watcher woken");
    assert_eq!(c.ready_proxies(), 0);
    c.shutdown().await;

    // The derived contract: served, no early read.
    let (net, _w) = network().await;
    let (c, base) = start_gateway(config(&net, test_root(1, true)), 1).await;
    assert_eq!(post(&base, "json", false).await.status(), 200);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), c.root_wake().notified())
            .await
            .is_err(),
        "no early root read for an honest proxy"
    );
    c.shutdown().await;
}
