//! The proxy's steps on a newer root configuration, through the real `RootWatcher` and the
//! hooks `cocoon_proxy::run` installs: the ledger moves to new params (closing the old
//! contracts' accounts) before the network side applies them, and when the ledger refuses,
//! the network keeps the old configuration and the version is tried again.

use std::sync::Arc;
use std::time::Duration;

use cocoon_proxy::{MemoryChain, root_hooks};
use cocoon_service::chain::{Polled, RootWatcher};
use cocoon_testkit::prelude::*;
use cocoon_testkit::proxy::raw_worker;
use cocoon_ton::chain::fake::FakeChain;
use cocoon_ton::keys::SigningKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_moves_to_new_params_before_the_network_and_a_refusal_holds_both() {
    let key = Arc::new(SigningKey::from_seed(&PROXY_SEED).unwrap());
    let start = root(1, true, true);
    let checkpoints = MemoryChain::new();
    let (_dir, meter) = ledger_meter(key, addr(0x33), &start, &checkpoints).await;
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

/// Step 1 of a params change without the devnet: the proxy's own contract follows the
/// params. Through the real watcher and `switching_root_hooks`: sessions opened after the
/// change advertise the contract derived from the new params (and derive the workers'
/// contracts from it), the registration scan moves to it, the book lists the old one as
/// retiring, and the old one walks its close sequence by the chain's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_params_change_switches_the_proxy_contract_live_and_retires_the_old_one() {
    use cocoon_proxy::{
        ContractIdentity, ContractRecord, ContractSwitch, RetireStep, TonClientChain,
        switching_root_hooks,
    };
    use cocoon_ton::HashBytes;
    use cocoon_ton::chain::AccountStatus;
    use cocoon_ton::chain::fake::account;
    use cocoon_ton::codec::{Coins, Layout, State2};
    use cocoon_ton::contracts::ProxyStorage;

    let key = Arc::new(SigningKey::from_seed(&PROXY_SEED).unwrap());
    let start = root(1, true, true);
    let checkpoints = MemoryChain::new();
    let (dir, meter) = ledger_meter(key.clone(), addr(0x33), &start, &checkpoints).await;
    let chain = FakeChain::default();
    chain.set_root(&start).unwrap();
    chain.set_utime(1_000);
    let id = ContractIdentity {
        owner: addr(0x33),
        public_key: HashBytes(key.public_key()),
        root: addr(0x01),
    };
    let old = ContractRecord {
        params_version: 1,
        address: id.contract(&start).unwrap().address,
    };
    let clients = Arc::new(
        TonClientChain::new(
            chain.clone(),
            old.address.clone(),
            Duration::from_millis(50),
        )
        .await
        .unwrap(),
    );
    let (m, c, sc) = (meter.clone(), clients.clone(), old.address.clone());
    let net = start_proxy_with(start.clone(), move |cfg| {
        cfg.meter = m;
        cfg.chain = c;
        cfg.proxy_sc = sc;
        cfg.owner_address = addr(0x33);
    })
    .await;
    let book = dir.path().join("proxy-contracts");
    let switch = ContractSwitch::new(
        chain.clone(),
        id.clone(),
        key.clone(),
        "1",
        None,
        clients.clone(),
        book.clone(),
        old.clone(),
    )
    .unwrap();
    let mut w = RootWatcher::new(chain.clone(), addr(0x01), Duration::from_secs(1), 1);
    let mut hooks = switching_root_hooks(&meter, &net.proxy, &switch);

    // A worker connected before the change gets the old contract, and is let go by it.
    let (before, mut before_in, connected) = raw_worker(&net, 1000, 4, 1).await;
    assert_eq!(connected.params.proxy_sc_address, old.address.to_string());

    // A new root version with the same params: nothing switches.
    chain.set_root(&root(2, true, true)).unwrap();
    assert_eq!(w.poll_once(&mut hooks).await, Polled::Applied(2));
    assert_eq!(net.proxy.proxy_sc(), old.address);
    assert!(switch.retiring().await.is_empty());

    // New params: a new contract, in use everywhere at once.
    let mut next = root(3, true, true);
    next.params.params_version = 2;
    next.params.price_per_token = 30;
    chain.set_root(&next).unwrap();
    assert_eq!(w.poll_once(&mut hooks).await, Polled::Applied(3));
    let new = id.contract(&next).unwrap().address;
    assert_ne!(new, old.address);
    assert_eq!(net.proxy.proxy_sc(), new);
    assert_eq!(net.proxy.stats().proxy_sc, new.to_string());
    assert_eq!(
        clients.proxy_sc(),
        new,
        "registrations are looked for on it"
    );
    assert_eq!(meter.stats().params_version, 2);
    assert_eq!(switch.current().await.address, new);
    assert_eq!(switch.retiring().await, vec![old.clone()]);
    let text = std::fs::read_to_string(&book).unwrap();
    assert!(text.contains(&format!("1 {} open", old.address)), "{text}");
    assert!(text.contains(&format!("2 {new} open")), "{text}");
    // The old session ends; a new one is told the new contract and its worker contract
    // is derived from it.
    tokio::time::timeout(Duration::from_secs(10), async {
        while before_in.recv().await.is_some() {}
    })
    .await
    .expect("the old session ends");
    drop(before);
    let (_after, _after_in, connected) = raw_worker(&net, 1000, 4, 1).await;
    assert_eq!(connected.params.proxy_sc_address, new.to_string());
    let expected_worker_sc = cocoon_ton::contracts::worker_contract(
        &next.params,
        &addr(0x49),
        &new,
        &HashBytes(key.public_key()),
    )
    .unwrap()
    .address;
    assert_eq!(connected.worker_sc_address, expected_worker_sc.to_string());

    // The old contract on chain: open → close request; closing → waits for the chain's
    // clock to reach unlock_ts → close-complete; closed → leaves the book.
    let storage = |state: u8, unlock_ts: u32| {
        let data = ProxyStorage {
            owner: addr(0x33),
            public_key: HashBytes(key.public_key()),
            root: addr(0x01),
            state: State2(state),
            balance: Coins(0),
            stake: Coins(1_000_000_000),
            unlock_ts,
            params: start
                .params
                .to_cell(cocoon_ton::root::CodeMask::PROXY)
                .unwrap(),
        }
        .to_cell()
        .unwrap();
        account(AccountStatus::Active, 1_000_000_000, Some(data))
    };
    let steps =
        |s: Vec<(ContractRecord, RetireStep)>| s.into_iter().map(|(_, s)| s).collect::<Vec<_>>();
    chain.set_account(&old.address, storage(0, 0));
    assert_eq!(
        steps(switch.retire_once(&meter).await.unwrap()),
        vec![RetireStep::RequestClose]
    );
    chain.set_account(&old.address, storage(1, 4_600));
    assert_eq!(
        steps(switch.retire_once(&meter).await.unwrap()),
        vec![RetireStep::WaitUnlock { until: 4_600 }]
    );
    chain.set_utime(4_600);
    assert_eq!(
        steps(switch.retire_once(&meter).await.unwrap()),
        vec![RetireStep::CompleteClose]
    );
    chain.set_account(&old.address, storage(2, 0));
    assert_eq!(
        steps(switch.retire_once(&meter).await.unwrap()),
        vec![RetireStep::Done]
    );
    assert!(switch.retiring().await.is_empty());
    assert!(
        std::fs::read_to_string(&book)
            .unwrap()
            .contains(&format!("1 {} closed", old.address))
    );
    // A restarted proxy reads the book: nothing left to retire.
    let again = ContractSwitch::new(
        chain.clone(),
        id,
        key,
        "1",
        None,
        clients,
        book,
        switch.current().await,
    )
    .unwrap();
    assert!(again.retiring().await.is_empty());
}

/// Between the ledger's move to new params and the contract switch, requests under the old
/// params are refused with a retryable error (`NotReady`, which clients fail over on or
/// retry after reconnecting), never lost in a queue; an aborted switch takes them again,
/// and the switch itself ends the old sessions and lifts the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_a_params_switch_are_refused_retryably_until_it_ends() {
    use cocoon_testkit::client::TestClient;
    use cocoon_testkit::worker::start_worker;
    let net = start_proxy(root(1, true, true)).await;
    let _w = start_worker(&net, 0x41).await;
    net.wait_workers(1).await;
    let owner = addr(0x51);
    net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;

    net.proxy.begin_params_switch(2);
    c.run(1, "json", 100, 30.0).await;
    let r = c.collect().await;
    let (code, msg) = r.error.expect("refused during the switch");
    assert_eq!(code, cocoon_net::ErrorCode::NotReady as i32);
    assert!(msg.contains("switching to params_version 2"), "{msg}");

    // The ledger refused: nothing switched, requests are served again.
    net.proxy.abort_params_switch();
    c.run(2, "json", 100, 30.0).await;
    let r = c.collect().await;
    assert!(r.error.is_none(), "{:?}", r.error);

    // The switch lifts the refusal in the same step and ends the old session (the client
    // comes back under the new contracts).
    net.proxy.begin_params_switch(2);
    let mut next = root(2, true, true);
    next.params.params_version = 2;
    net.proxy.switch_contract(next, addr(0x12)).unwrap();
    assert_eq!(net.proxy.proxy_sc(), addr(0x12));
    tokio::time::timeout(Duration::from_secs(10), async {
        while c.incoming.recv().await.is_some() {}
    })
    .await
    .expect("the old session ends");
    assert_eq!(net.proxy.stats().proxy_sc, addr(0x12).to_string());
}
