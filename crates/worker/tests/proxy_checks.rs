//! The worker checks the proxy (issue 16 §5, §6): over real RA-TLS sessions with sim
//! attestation on loopback, a proxy whose attested image the root does not list is refused
//! and dropped when a root update removes it; a proxy naming a contract its owner and key do
//! not give under the root is refused; a session ends when the proxy's attestation verdict
//! expires, and the redial attests the proxy again.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cocoon_attest::Policy;
use cocoon_ratls::net::RatlsConnector;
use cocoon_testkit::fixtures::{derived_proxy_sc, derived_worker_sc, sim_image, slow_redial};
use cocoon_testkit::identity::connector_with;
use cocoon_testkit::prelude::*;
use cocoon_ton::messages::ProxyEndpoint;
use cocoon_ton::root::{CocoonParams, RegisteredProxy, RootConfig, model_hash};
use cocoon_ton::{CellBuilder, HashBytes, StdAddr};
use cocoon_worker::{ConnState, Worker};

/// The root the worker follows.
fn root_address() -> StdAddr {
    addr(0x01)
}

/// Params with (fake) proxy and worker code: enough to derive contract addresses.
fn params() -> CocoonParams {
    let code = |tag: u32| {
        let mut b = CellBuilder::new();
        b.store_u32(tag).unwrap();
        b.build().unwrap()
    };
    CocoonParams {
        proxy_code: Some(code(0xC0C0_0010)),
        worker_code: Some(code(0xC0C0_0011)),
        ..CocoonParams::default()
    }
}

/// A root registering `proxy`, with [`params`].
fn root(version: u32, proxy: &str, proxy_hashes: Vec<HashBytes>) -> RootConfig {
    RootConfig {
        params: params(),
        ..root_without_code(version, proxy, proxy_hashes)
    }
}

/// A root whose params carry no contract code (the worker then takes the proxy's word for
/// the worker contract, as the fixture proxy names an underived one).
fn root_without_code(version: u32, proxy: &str, proxy_hashes: Vec<HashBytes>) -> RootConfig {
    RootConfig {
        owner: addr(0x02),
        version,
        proxy_hashes,
        registered_proxies: vec![RegisteredProxy {
            seqno: 0,
            endpoint: ProxyEndpoint(proxy.to_owned()),
        }],
        last_proxy_seqno: 1,
        worker_hashes: vec![],
        model_hashes: vec![model_hash(MODEL)],
        params: CocoonParams::default(),
    }
}

/// The proxy contract the root gives the test proxy (owner `addr(0x33)`, key of
/// `PROXY_SEED`), and the worker contract the worker (owner `addr(0x44)`) has with it.
fn derived_contracts(p: &CocoonParams, root_address: &StdAddr) -> (StdAddr, StdAddr) {
    let proxy_sc = derived_proxy_sc(p, root_address);
    let worker_sc = derived_worker_sc(p, &addr(0x44), &proxy_sc);
    (proxy_sc, worker_sc)
}

/// A sim connector whose verdicts hold `validity_secs`.
fn short_lived_connector(validity_secs: u64) -> RatlsConnector {
    connector_with(Policy {
        max_validity_secs: validity_secs,
        ..Policy::sim_test()
    })
}

fn last_error(w: &cocoon_worker::WorkerHandle) -> String {
    w.stats()
        .proxies
        .first()
        .and_then(|p| p.last_error.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_whose_image_the_root_does_not_list_gets_no_prompts() {
    let (base, eng, mut proxy, dir) = worker_rig().await;
    let mut cfg = worker_config(&proxy.addr, &base, dir.path());
    cfg.proxies.clear();
    // Redials a second after a session ends, so that the reason it ended stays readable
    // (the refused redial overwrites it).
    cfg.timings.backoff = slow_redial();
    let w = Worker::start(cfg).await.unwrap();

    // Attack: an attested proxy (genuine sim evidence) running an image the root does not
    // list. The worker refuses it before it learns anything, and keeps redialling.
    w.update_root(
        &root_without_code(1, &proxy.addr, vec![HashBytes([0xAB; 32])]),
        &[],
    )
    .unwrap();
    eventually("image refused", || {
        last_error(&w).contains("is not in the root configuration's proxy_hashes")
    })
    .await;
    let err = last_error(&w);
    assert!(
        err.contains(&hex::encode(sim_image().0)),
        "the refused image is named: {err}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), proxy.conns.recv())
            .await
            .is_err(),
        "no handshake with a refused proxy"
    );
    assert_eq!(w.ready_proxies(), 0);
    assert_eq!(w.stats().proxies[0].handshakes, 0);

    // Honest use: the root lists the image; the same connection task redials and serves.
    w.update_root(&root_without_code(2, &proxy.addr, vec![sim_image()]), &[])
        .unwrap();
    let mut c = proxy.next_conn().await;
    eventually("ready", || w.ready_proxies() == 1).await;
    assert_eq!(
        w.stats().proxies[0].image_hash.as_deref(),
        Some(hex::encode(sim_image().0).as_str())
    );
    c.run_chat(1, "endless", true).await;
    assert!(matches!(c.next().await, FromWorker::Head(..)));
    assert!(!eng.dropped.load(Ordering::SeqCst));

    // The root removes the image: the open session is dropped at once, its running request
    // cancelled (the engine stream is dropped), and the proxy is refused from then on.
    w.update_root(
        &root_without_code(3, &proxy.addr, vec![HashBytes([0xAB; 32])]),
        &[],
    )
    .unwrap();
    c.closed().await;
    eventually("engine stream dropped", || {
        eng.dropped.load(Ordering::SeqCst)
    })
    .await;
    eventually("dropped with the reason", || {
        last_error(&w).contains("root configuration v3 no longer allows it")
    })
    .await;
    eventually("refused again on redial", || {
        last_error(&w).starts_with("proxy refused: the proxy's image hash")
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), proxy.conns.recv())
            .await
            .is_err(),
        "no new session with the removed image"
    );
    assert_eq!(w.ready_proxies(), 0);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_naming_a_contract_the_root_does_not_give_is_refused() {
    let (base, _eng) = fake_engine().await;
    let p = params();
    let (proxy_sc, worker_sc) = derived_contracts(&p, &root_address());

    // Attack: an attested, allowed proxy names a contract of its choosing (here addr(0x11))
    // and, consistently, the worker contract that goes with it: receipts for it would be
    // bound to a contract the root never deployed.
    let fake_worker_sc = derived_worker_sc(&p, &addr(0x44), &addr(0x11));
    let liar = TestProxy::start_as(addr(0x11), fake_worker_sc).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = worker_config(&liar.addr, &base, dir.path());
    cfg.proxies.clear();
    cfg.root_address = Some(root_address());
    let w = Worker::start(cfg).await.unwrap();
    w.update_root(&root(1, &liar.addr, vec![sim_image()]), &[])
        .unwrap();
    eventually("liar refused", || {
        last_error(&w).contains(&format!(
            "the proxy says its contract is {}, its owner and key under the root give {proxy_sc}",
            addr(0x11)
        ))
    })
    .await;
    assert_eq!(w.ready_proxies(), 0);
    assert_eq!(w.stats().proxies[0].handshakes, 0);
    // The root may have changed under the worker (a params change the proxy followed
    // first): its root watcher is woken to read it now.
    tokio::time::timeout(Duration::from_secs(5), w.root_wake().notified())
        .await
        .expect("root watcher woken");
    w.shutdown().await;

    // Honest use: the proxy names the derived contracts and is served.
    let mut honest = TestProxy::start_as(proxy_sc.clone(), worker_sc).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = worker_config(&honest.addr, &base, dir.path());
    cfg.proxies.clear();
    cfg.root_address = Some(root_address());
    let w = Worker::start(cfg).await.unwrap();
    w.update_root(&root(1, &honest.addr, vec![sim_image()]), &[])
        .unwrap();
    let _c = honest.next_conn().await;
    eventually("ready", || w.ready_proxies() == 1).await;
    assert_eq!(
        w.stats().proxies[0].proxy_sc_address.as_deref(),
        Some(proxy_sc.to_string().as_str())
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), w.root_wake().notified())
            .await
            .is_err(),
        "no early root read for an honest proxy"
    );
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_follows_a_root_serves_no_proxy_before_it_knows_the_root() {
    let (base, _eng) = fake_engine().await;
    let p = params();
    let (proxy_sc, worker_sc) = derived_contracts(&p, &root_address());
    let mut proxy = TestProxy::start_as(proxy_sc, worker_sc).await;
    let dir = tempfile::tempdir().unwrap();
    // An operator-listed proxy is dialled at start, before the root is read.
    let mut cfg = worker_config(&proxy.addr, &base, dir.path());
    cfg.root_address = Some(root_address());
    cfg.timings.handshake_timeout = Duration::from_millis(300);
    let w = Worker::start(cfg).await.unwrap();
    eventually("waiting for the root", || {
        last_error(&w).starts_with("no root configuration applied")
    })
    .await;
    assert_eq!(w.ready_proxies(), 0);
    w.update_root(&root(1, &proxy.addr, vec![sim_image()]), &[])
        .unwrap();
    let _c = proxy.next_conn().await;
    eventually("ready", || w.ready_proxies() == 1).await;
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_when_the_proxys_verdict_expires_and_the_redial_attests_again() {
    let (base, eng, mut proxy, dir) = worker_rig().await;
    let mut cfg = worker_config(&proxy.addr, &base, dir.path());
    let connector = short_lived_connector(2);
    let verifier = Arc::clone(connector.verifier());
    cfg.connector = connector;
    let w = Worker::start(cfg).await.unwrap();

    let mut first = proxy.next_conn().await;
    eventually("ready", || w.ready_proxies() == 1).await;
    let valid_until = w.stats().proxies[0].verdict_valid_until.unwrap();
    let runs = verifier.attestation_runs();
    first.run_chat(1, "endless", true).await;
    assert!(matches!(first.next().await, FromWorker::Head(..)));

    // The verdict holds 2 s: the worker closes the session then (its running request is
    // cancelled), redials, verifies the proxy's evidence again and handshakes again.
    first.closed().await;
    let closed_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        closed_at >= valid_until,
        "closed at {closed_at}, the verdict held until {valid_until}"
    );
    eventually("engine stream dropped", || {
        eng.dropped.load(Ordering::SeqCst)
    })
    .await;
    let _second = proxy.next_conn().await;
    eventually("ready again", || w.ready_proxies() == 1).await;
    let st = &w.stats().proxies[0];
    assert!(st.handshakes >= 2, "{st:?}");
    assert!(st.verdict_expiries >= 1, "{st:?}");
    assert!(
        st.verdict_valid_until.unwrap() > valid_until,
        "a fresh verdict: {st:?}"
    );
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("attestation verdict expired")),
        "{st:?}"
    );
    assert!(
        verifier.attestation_runs() > runs,
        "the redial ran the attestation policy again"
    );
    assert_eq!(st.state, ConnState::Ready);
    w.shutdown().await;
}
