//! Issue 18 §2: a root `params_version` change in the middle of live traffic, on the devnet
//! (the real contracts in a TVM, the real toncenter client and wallets). The proxy runs with
//! its durable ledger, settlement and the contract switch (`switching_root_hooks` through
//! the real `RootWatcher`); a sim worker and a client use it over RA-TLS.
//!
//! Before the change the client is served on the old contracts; one request is in flight
//! when the root owner changes the price. The proxy deploys its contract for the new params
//! with its stake, switches to it (the in-flight request ends with the session and is
//! billed for what it used), and the client and worker come back under the new contracts
//! and are served there. The old contract then gets its final receipts (the client's
//! grant-refund, the worker's last payout) and its close sequence, and its whole balance
//! goes back to the owner. Checked to the nanoton: what each party got, and that the value
//! of every account involved is conserved over every transaction (fees included).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use cocoon_proxy::{
    ContractIdentity, ContractRecord, ContractSwitch, RetireStep, SettlementConfig,
    switching_root_hooks,
};
use cocoon_service::chain::{Polled, RootWatcher};
use cocoon_testkit::client::TestClient;
use cocoon_testkit::devnet::{PAYOUT_OP, Party, TON, chainnet, proxy_pk, top_up, txs_after};
use cocoon_testkit::prelude::*;
use cocoon_testkit::proxy::secret_hash;
use cocoon_testkit::worker::start_worker;
use cocoon_ton::chain::{Chain, Devnet as _};
use cocoon_ton::codec::Layout;
use cocoon_ton::contracts::{
    ClientStorage, ProxyStorage, WorkerStorage, client_contract, worker_contract,
};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::messages::OwnerClientChangeSecretHash;
use cocoon_ton::ops::{self, RootOp, WalletOps};
use cocoon_ton::wallet::Wallet;
use cocoon_ton::{HashBytes, StdAddr, Toncenter};

/// Payouts (`payout` op) `to` received from `from`, to the nanoton.
async fn payouts(tc: &Toncenter, to: &StdAddr, from: &StdAddr) -> Vec<u128> {
    txs_after(tc, to, None)
        .await
        .iter()
        .filter_map(|t| t.in_msg.as_ref())
        .filter(|m| m.src.as_ref() == Some(from))
        .filter(|m| m.body.as_slice().ok().and_then(|mut s| s.load_u32().ok()) == Some(PAYOUT_OP))
        .map(|m| m.value)
        .collect()
}

async fn data(tc: &Toncenter, a: &StdAddr) -> Option<cocoon_ton::Cell> {
    tc.account_state(a).await.unwrap().data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_params_change_under_live_traffic_conserves_money_to_the_nanoton() {
    let net_chain = chainnet().await;
    let tc = net_chain.tc.clone();
    let root = net_chain.root.clone();
    // The root owner lets the sim worker image and the test model in (on chain, so the
    // proxy's root watcher reads a root that admits them).
    let owner_key = SigningKey::from_file(&net_chain.devnet.root.owner_key_path).unwrap();
    let mut root_owner = WalletOps::new(
        tc.clone(),
        Wallet::v4r2(owner_key.public_key(), 0),
        owner_key,
    )
    .unwrap();
    for op in [
        RootOp::AddWorkerImage(HashBytes(cocoon_attest::sim::sim_image_hash())),
        RootOp::AddModel(cocoon_ton::root::model_hash(MODEL)),
    ] {
        ops::root_op(&mut root_owner, &root, &op, TON as u64 / 10)
            .await
            .unwrap();
    }
    let old_root = cocoon_ton::chain::load_root_config(&tc, &root)
        .await
        .unwrap();
    let old_params = old_root.params.clone();
    let pk = proxy_pk();
    let key = Arc::new(net_chain.proxy_key());
    let proxy_owner = net_chain.proxy_owner.address.clone();
    let old_proxy = net_chain.proxy.address.clone();

    // The client (5 TON in its old client contract, short authentication) and the old
    // worker contract (deployed by a plain transfer from a funder, as a worker's owner
    // would); the worker's owner is a fresh address that only receives payouts.
    let hash = secret_hash();
    let (mut alice, alice_old_sc) = net_chain.client(2, Some(hash)).await;
    let worker_owner = addr(0x41);
    let mut funder = Party::new(9);
    tc.faucet(&funder.address, 10 * TON).await.unwrap();
    let old_worker = worker_contract(&old_params, &worker_owner, &old_proxy, &pk).unwrap();
    let empty = cocoon_ton::Cell::default();
    funder
        .send(
            &tc,
            &old_worker.address,
            TON / 10,
            empty,
            Some(old_worker.state_init().unwrap()),
        )
        .await;
    assert!(
        data(&tc, &old_worker.address).await.is_some(),
        "old worker contract deployed"
    );

    // Everything that will move from here on, with its balance and last transaction now.
    let new_root_preview = {
        let mut r = old_root.clone();
        r.params.params_version += 1;
        r.params.price_per_token = 30;
        r.params.worker_fee_per_token = 21;
        r
    };
    let id = ContractIdentity {
        owner: proxy_owner.clone(),
        public_key: pk,
        root: root.clone(),
    };
    let new_proxy = id.contract(&new_root_preview).unwrap().address;
    let alice_new_sc =
        client_contract(&new_root_preview.params, &alice.address, &new_proxy, &pk).unwrap();
    let new_worker =
        worker_contract(&new_root_preview.params, &worker_owner, &new_proxy, &pk).unwrap();
    let accounts = [
        proxy_owner.clone(),
        alice.address.clone(),
        funder.address.clone(),
        root_owner.address().clone(),
        root.clone(),
        old_proxy.clone(),
        new_proxy.clone(),
        alice_old_sc.clone(),
        alice_new_sc.address.clone(),
        old_worker.address.clone(),
        new_worker.address.clone(),
        worker_owner.clone(),
    ];
    let mut before = Vec::new();
    for a in &accounts {
        let st = tc.account_state(a).await.unwrap();
        before.push((st.balance, st.last_tx));
    }

    // The proxy: ledger, settlement (charges at the default threshold, no payouts before
    // the final one), the contract switch, a real proxy on the old contract.
    let clients = Arc::new(net_chain.client_chain().await);
    let checkpoints = Arc::new(net_chain.checkpoint_chain());
    let (dir, meter) =
        ledger_meter(key.clone(), proxy_owner.clone(), &old_root, &*checkpoints).await;
    let cfg = SettlementConfig {
        interval: Duration::from_millis(200),
        urgent_interval: Duration::from_millis(100),
        min_worker_payout: u128::MAX,
        ..SettlementConfig::default()
    };
    let settle = tokio::spawn(meter.clone().run_settlement(checkpoints.clone(), cfg));
    let c2 = checkpoints.clone();
    let ticker = tokio::spawn(async move {
        loop {
            let _ = c2.tick().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let (m, cl, k, po, op) = (
        meter.clone(),
        clients.clone(),
        key.clone(),
        proxy_owner.clone(),
        old_proxy.clone(),
    );
    let net = start_proxy_with(old_root.clone(), move |c| {
        c.chain = cl;
        c.meter = m;
        c.signing_key = k;
        c.proxy_sc = op;
        c.owner_address = po;
        c.timings.client_watch_interval = Some(Duration::from_millis(200));
    })
    .await;
    let switch = ContractSwitch::new(
        tc.clone(),
        id.clone(),
        key.clone(),
        "10",
        Some(checkpoints.clone()),
        clients.clone(),
        dir.path().join("proxy-contracts"),
        ContractRecord {
            params_version: old_params.params_version,
            address: old_proxy.clone(),
        },
    )
    .unwrap();
    let mut watcher = RootWatcher::new(
        tc.clone(),
        root.clone(),
        Duration::from_secs(1),
        old_root.version,
    );
    let mut hooks = switching_root_hooks(&meter, &net.proxy, &switch);
    let worker = start_worker(&net, 0x41).await;
    net.wait_workers(1).await;

    // Live traffic on the old contracts: three answers, then one held in flight.
    let mut c = TestClient::authorized(&net, &alice.address).await;
    for id in 1..=3 {
        c.run(id, "json", 100, 30.0).await;
        let r = c.collect().await;
        assert!(r.error.is_none(), "{:?}", r.error);
    }
    c.run(4, "gated", 100, 60.0).await;
    eventually("request 4 reached the engine", || {
        worker
            .engine
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
            == 4
    })
    .await;

    // The root owner changes the price: a new params_version.
    let change = ops::root_op(
        &mut root_owner,
        &root,
        &RootOp::SetPrice {
            price_per_token: 30,
            worker_fee_per_token: 21,
        },
        TON as u64 / 10,
    )
    .await
    .unwrap();
    let new_root = change.config;
    assert_eq!(
        new_root.params.params_version,
        old_params.params_version + 1
    );
    assert_eq!(
        id.contract(&new_root).unwrap().address,
        new_proxy,
        "the preview derived the same contract"
    );
    // The proxy follows it: deploys its new contract with the stake, moves the ledger,
    // switches.
    assert_eq!(
        watcher.poll_once(&mut hooks).await,
        Polled::Applied(new_root.version)
    );
    assert_eq!(net.proxy.proxy_sc(), new_proxy);
    let st = ProxyStorage::from_cell(&data(&tc, &new_proxy).await.expect("deployed")).unwrap();
    assert_eq!(
        (st.state.0, st.stake.0),
        (0, 10 * TON as u64),
        "new contract staked"
    );
    // The request in flight ends with its session, explicitly (no hang), billed for what
    // it used; the old session is over.
    tokio::time::timeout(Duration::from_secs(20), async {
        while c.incoming.recv().await.is_some() {}
    })
    .await
    .expect("the old session ends");
    worker.engine.gate.add_permits(10);

    // Client and worker come back under the new contracts (their own root watchers do
    // this; here the test plays the client owner's top-up and the worker's update).
    worker
        .handle
        .set_prices_and_params(
            cocoon_service::chain::price_table(&new_root.params),
            Some(new_root.params.clone()),
        )
        .unwrap();
    alice
        .send(
            &tc,
            &alice_new_sc.address,
            5 * TON + TON / 10,
            top_up(&alice.address, 5 * TON),
            Some(alice_new_sc.state_init().unwrap()),
        )
        .await;
    let body = OwnerClientChangeSecretHash {
        query_id: 3,
        secret_hash: HashBytes(hash),
        send_excesses_to: alice.address.clone(),
    }
    .to_cell()
    .unwrap();
    alice
        .send(&tc, &alice_new_sc.address, TON / 2, body, None)
        .await;
    net.wait_workers(1).await;
    let mut c = TestClient::authorized(&net, &alice.address).await;
    assert_eq!(
        c.connected.client_sc_address,
        alice_new_sc.address.to_string()
    );
    assert_eq!(c.connected.params.proxy_sc_address, new_proxy.to_string());
    for id in 5..=6 {
        c.run(id, "json", 100, 30.0).await;
        let r = c.collect().await;
        assert!(r.error.is_none(), "{:?}", r.error);
    }

    // The old contract retires: final receipts land, then close request, the delay (chain
    // clock), close-complete.
    let mut last = None;
    for _ in 0..600 {
        let steps = switch.retire_once(&meter).await.unwrap();
        match steps.as_slice() {
            [] => break,
            [(_, RetireStep::WaitUnlock { until })] => {
                let now = tc.clock().await.unwrap();
                tc.advance_clock(until.saturating_sub(now)).await.unwrap();
            }
            [(_, s)] => {
                if last != Some(*s) {
                    eprintln!("retiring the old contract: {s:?}");
                }
                last = Some(*s);
            }
            more => panic!("one contract retires, not {more:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(hooks);
    assert!(
        tc.clock().await.unwrap()
            >= u64::from(cocoon_testkit::devnet::T0 + old_params.proxy_delay_before_close),
        "close-complete waited for proxy_delay_before_close on the chain's clock"
    );
    assert!(
        switch.retiring().await.is_empty(),
        "old contract closed (last step {last:?})"
    );
    settle.abort();
    ticker.abort();

    // What the ledger says each old account used or earned, and what the chain shows.
    // (The ledger keys accounts by params version: look the old ones up by address.)
    let old_account = |a: &StdAddr| {
        meter
            .accounts()
            .into_iter()
            .find(|v| &v.key.address == a)
            .unwrap()
    };
    let used = old_account(&alice_old_sc).tokens;
    let earned = old_account(&old_worker.address).tokens;
    assert_eq!(
        old_account(&alice_old_sc).status,
        cocoon_ledger::Status::Closed
    );
    assert!(used > 0 && earned > 0);
    let cs = ClientStorage::from_cell(&data(&tc, &alice_old_sc).await.unwrap()).unwrap();
    assert_eq!(
        (cs.state.0, cs.tokens_used),
        (2, used),
        "client charged exactly its use"
    );
    let ws = WorkerStorage::from_cell(&data(&tc, &old_worker.address).await.unwrap()).unwrap();
    assert_eq!(
        (ws.state.0, ws.tokens),
        (2, earned),
        "worker paid exactly its earnings"
    );
    let (p0, f0) = (
        u128::from(old_params.price_per_token),
        u128::from(old_params.worker_fee_per_token),
    );
    assert_eq!(
        payouts(&tc, &alice.address, &old_proxy).await,
        vec![5 * TON - u128::from(used) * p0],
        "the client's whole balance less its use came back"
    );
    assert_eq!(
        payouts(&tc, &worker_owner, &old_proxy).await,
        vec![u128::from(earned) * f0],
        "the worker got tokens × fee"
    );
    let ps = ProxyStorage::from_cell(&data(&tc, &old_proxy).await.unwrap()).unwrap();
    assert_eq!(ps.state.0, 2, "old proxy contract closed");
    let to_owner = payouts(&tc, &proxy_owner, &old_proxy).await;
    assert_eq!(to_owner.len(), 1, "{to_owner:?}");
    let commission = u128::from(earned) * (p0 - f0);
    let pool_left = (u128::from(used) * p0).saturating_sub(u128::from(earned) * p0);
    assert!(
        to_owner[0] >= 10 * TON + commission + pool_left,
        "stake {} + commission {commission} + pool {pool_left} ≤ {}",
        10 * TON,
        to_owner[0]
    );
    assert_eq!(tc.account_state(&old_proxy).await.unwrap().balance, 0);

    // Conservation over every transaction since the snapshot, of every account involved:
    // Σ Δbalance + Σ fees + Σ forwarding fees = 0 (nothing was minted since).
    let mut delta: i128 = 0;
    let mut fees: u128 = 0;
    let mut count = 0;
    for (a, (bal, last_tx)) in accounts.iter().zip(&before) {
        let now = tc.account_state(a).await.unwrap().balance;
        delta += now as i128 - *bal as i128;
        for t in txs_after(&tc, a, last_tx.as_ref()).await {
            count += 1;
            fees += t.fees_paid();
            if let Some(m) = &t.in_msg
                && m.src.is_some()
            {
                assert!(
                    accounts.contains(m.src.as_ref().unwrap()),
                    "value from outside the accounts: {t:?}"
                );
            }
        }
    }
    assert!(count >= 20, "only {count} transactions");
    assert_eq!(delta + fees as i128, 0, "value conserved to the nanoton");
    eprintln!(
        "params change: old client used {used} tokens, old worker earned {earned}; refund {:?}, worker payout {:?}, owner got {:?} from the old contract; {count} transactions, fees {fees} nanoTON, Δbalances {delta}",
        payouts(&tc, &alice.address, &old_proxy).await,
        payouts(&tc, &worker_owner, &old_proxy).await,
        to_owner
    );
    net.proxy.shutdown().await;
}
