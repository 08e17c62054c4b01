//! The proxy's steps on a newer root configuration, through the real `RootWatcher` and the
//! hooks `cocoon_proxy::run` installs: the ledger moves to new params (closing the old
//! contracts' accounts) before the network side applies them, and when the ledger refuses,
//! the network keeps the old configuration and the version is tried again.

use std::sync::Arc;
use std::time::Duration;

use cocoon_ledger::SqliteStore;
use cocoon_proxy::{LedgerMeter, MemoryChain, root_hooks};
use cocoon_service::chain::{Polled, RootWatcher};
use cocoon_testkit::prelude::*;
use cocoon_ton::chain::fake::FakeChain;
use cocoon_ton::keys::SigningKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_moves_to_new_params_before_the_network_and_a_refusal_holds_both() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("ledger.sqlite")).unwrap();
    let key = Arc::new(SigningKey::from_seed(&PROXY_SEED).unwrap());
    let start = root(1, true, true);
    let checkpoints = MemoryChain::new();
    let meter = LedgerMeter::open_for_root(store, key, addr(0x33), &start, &checkpoints)
        .await
        .unwrap();
    let m = meter.clone();
    let net = start_proxy_with(start.clone(), move |c| c.meter = m).await;
    // A chain whose root contract holds the configuration the test puts there.
    let chain = FakeChain::default();
    let mut w = RootWatcher::new(chain.clone(), addr(0x01), Duration::from_secs(1), 1);
    let mut hooks = root_hooks(&meter, &net.proxy);

    // A newer version with the same params: both steps run.
    chain.set_root(&root(2, true, true)).unwrap();
    assert_eq!(w.poll_once(&mut hooks).await, Polled::Applied(2));
    assert_eq!(net.proxy.stats().root_version, 2);
    assert_eq!(meter.stats().params_version, 1);

    // New params: the ledger is on them before the network side is.
    let mut next = root(3, true, true);
    next.params.params_version = 2;
    chain.set_root(&next).unwrap();
    assert_eq!(w.poll_once(&mut hooks).await, Polled::Applied(3));
    assert_eq!(meter.stats().params_version, 2);
    assert_eq!(net.proxy.stats().root_version, 3);

    // A root that switches is_test: the ledger accepts the params (it has no opinion on
    // is_test) but the network refuses; the version stays unapplied and is retried.
    let mut bad = root(4, true, true);
    bad.params.params_version = 2;
    bad.params.is_test = false;
    chain.set_root(&bad).unwrap();
    assert!(matches!(
        w.poll_once(&mut hooks).await,
        Polled::Refused { version: 4, .. }
    ));
    assert_eq!(net.proxy.stats().root_version, 3);
    assert_eq!(w.applied(), 3);

    // The ledger refusing keeps the network on the old params too: here it halted because
    // a checkpoint it never made appeared on chain (another proxy with our key).
    checkpoints.push_checkpoint(cocoon_ledger::ChainCheckpoint {
        seqno: 77,
        hash: [9; 32],
    });
    meter
        .settle_once(&checkpoints, &cocoon_proxy::SettlementConfig::default())
        .await
        .unwrap();
    assert!(meter.stats().halted.is_some());
    let mut next = root(5, true, true);
    next.params.params_version = 3;
    chain.set_root(&next).unwrap();
    assert!(matches!(
        w.poll_once(&mut hooks).await,
        Polled::Refused { version: 5, .. }
    ));
    assert_eq!(
        net.proxy.stats().root_version,
        3,
        "the network did not move"
    );
}
