//! Issue 18 §2: a worker on a real network deploys its worker contract itself. On the
//! devnet (the real contract code), a worker with a payout wallet whose contract with the
//! proxy is missing deploys it from that wallet at the handshake and serves; a wallet too
//! poor to pay for the deployment sends nothing and the session is refused with one line
//! that says so; a worker contract its proxy's last payout closed is shown closed and gets
//! no payout from the wallet; a payout's transaction on the worker contract is found and
//! shown with it (pending, then paid) on `/jsonstats` and `/stats`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use cocoon_testkit::devnet::{Chainnet, Party, TON, chainnet};
use cocoon_testkit::prelude::*;
use cocoon_ton::chain::{AccountStatus, Chain, Devnet as _};
use cocoon_ton::wallet::WalletSender;
use cocoon_ton::{HashBytes, StdAddr, Toncenter};
use cocoon_worker::{
    ChainPayoutSink, DEFAULT_ATTACH_NANOTON, DEFAULT_DEPLOY_NANOTON, PayoutStatus,
};

/// A proxy on `chain`'s proxy contract (its key and owner), admitting the sim worker.
async fn proxy(chain: &Chainnet) -> Net {
    let mut root_cfg = cocoon_ton::chain::load_root_config(&chain.tc, &chain.root)
        .await
        .unwrap();
    root_cfg.worker_hashes = vec![HashBytes(cocoon_attest::sim::sim_image_hash())];
    root_cfg.model_hashes = vec![cocoon_ton::root::model_hash(MODEL)];
    let key = Arc::new(chain.proxy_key());
    let (sc, owner) = (
        chain.proxy.address.clone(),
        chain.proxy_owner.address.clone(),
    );
    start_proxy_with(root_cfg, |c| {
        c.signing_key = key;
        c.proxy_sc = sc;
        c.owner_address = owner;
    })
    .await
}

/// A worker owned by `owner`'s wallet, which pays its payouts and deploys its contract.
async fn worker(net: &Net, tc: &Toncenter, owner: &Party) -> TestWorker {
    let sender = WalletSender::new(tc.clone(), owner.wallet.clone(), owner.key.clone()).unwrap();
    let sink = Arc::new(ChainPayoutSink::new(sender, DEFAULT_ATTACH_NANOTON));
    sink.spawn_ticker(Duration::from_millis(100));
    let address = owner.address.to_string();
    start_worker_with(net, 0x71, move |c| {
        c.owner_address = address;
        c.payout_sink = Some(sink);
    })
    .await
}

async fn status(tc: &Toncenter, a: &StdAddr) -> (AccountStatus, u128) {
    let st = tc.account_state(a).await.unwrap();
    (st.status, st.balance)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_deploys_its_missing_contract_and_serves() {
    let chain = chainnet().await;
    let tc = chain.tc.clone();
    let net = proxy(&chain).await;
    let owner = Party::new(0x71);
    tc.faucet(&owner.address, 2 * TON).await.unwrap();
    let contract = net.worker_sc(&owner.address);
    assert_eq!(status(&tc, &contract).await.0, AccountStatus::Nonexist);

    let w = worker(&net, &tc, &owner).await;
    net.wait_workers(1).await;
    let mut active = false;
    for _ in 0..100 {
        if status(&tc, &contract).await.0 == AccountStatus::Active {
            active = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(active, "the worker contract was deployed");
    let (_, held) = status(&tc, &contract).await;
    let txs = tc.transactions_since(&contract, None, 10).await.unwrap();
    assert_eq!(txs.len(), 1, "one deployment");
    assert_eq!(
        txs[0].in_msg.as_ref().unwrap().source.as_ref(),
        Some(&owner.address)
    );
    assert_eq!(
        held + txs[0].fee,
        u128::from(DEFAULT_DEPLOY_NANOTON),
        "deployed with contract_deploy_ton, which it keeps as its reserve (less its gas)"
    );
    let (_, left) = status(&tc, &owner.address).await;
    let spent = 2 * TON - left;
    assert!(
        spent >= u128::from(DEFAULT_DEPLOY_NANOTON)
            && spent < u128::from(DEFAULT_DEPLOY_NANOTON) + TON / 20,
        "the wallet paid the deployment and its fees: {spent}"
    );

    // It serves.
    let client = addr(0x51);
    net.fund_client(&client, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &client).await;
    c.run(1, "json", 100, 30.0).await;
    let r = c.collect().await;
    assert!(r.error.is_none(), "{:?}", r.error);

    // A redial finds it active and deploys nothing again.
    w.handle.reconnect_all();
    eventually("handshake again", || {
        w.handle.stats().proxies.iter().any(|p| p.handshakes >= 2)
    })
    .await;
    net.wait_workers(1).await;
    assert_eq!(status(&tc, &owner.address).await.1, left);
    w.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_shows_the_transaction_of_the_worker_contract_that_received_it() {
    // A proxy with a ledger whose checkpoints land on the chain, so that it signs receipts.
    let chain = chainnet().await;
    let tc = chain.tc.clone();
    let mut root_cfg = cocoon_ton::chain::load_root_config(&chain.tc, &chain.root)
        .await
        .unwrap();
    root_cfg.worker_hashes = vec![HashBytes(cocoon_attest::sim::sim_image_hash())];
    root_cfg.model_hashes = vec![cocoon_ton::root::model_hash(MODEL)];
    let key = Arc::new(chain.proxy_key());
    let checkpoints = Arc::new(chain.checkpoint_chain());
    let (_ledger_dir, meter) = ledger_meter(
        key.clone(),
        chain.proxy_owner.address.clone(),
        &root_cfg,
        &*checkpoints,
    )
    .await;
    let settle_cfg = cocoon_proxy::SettlementConfig {
        interval: Duration::from_millis(200),
        urgent_interval: Duration::from_millis(100),
        min_worker_payout: u128::MAX,
        ..cocoon_proxy::SettlementConfig::default()
    };
    let settle = tokio::spawn(
        meter
            .clone()
            .run_settlement(checkpoints.clone(), settle_cfg),
    );
    let c2 = checkpoints.clone();
    let ticker = tokio::spawn(async move {
        loop {
            let _ = c2.tick().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let (sc, owner_sc) = (
        chain.proxy.address.clone(),
        chain.proxy_owner.address.clone(),
    );
    let net = start_proxy_with(root_cfg, move |c| {
        c.signing_key = key;
        c.proxy_sc = sc;
        c.owner_address = owner_sc;
        c.meter = meter;
    })
    .await;

    let owner = Party::new(0x75);
    tc.faucet(&owner.address, 2 * TON).await.unwrap();
    let contract = net.worker_sc(&owner.address);
    let sender = WalletSender::new(tc.clone(), owner.wallet.clone(), owner.key.clone()).unwrap();
    let sink = Arc::new(ChainPayoutSink::new(sender, DEFAULT_ATTACH_NANOTON));
    sink.spawn_ticker(Duration::from_millis(100));
    let address = owner.address.to_string();
    let w = start_worker_with(&net, 0x75, move |c| {
        c.owner_address = address;
        c.payout_sink = Some(sink);
        c.min_payout_nanoton = u128::MAX; // only forced payouts
        c.admin = Some(admin_config(None));
    })
    .await;
    net.wait_workers(1).await;
    let client = addr(0x55);
    net.fund_client(&client, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &client).await;
    // Requests until one carries a receipt the checkpoints made signable.
    let mut signed = false;
    for _ in 0..40 {
        c.run(1, "json", 50, 30.0).await;
        if w.handle
            .stats()
            .payments
            .first()
            .is_some_and(|p| p.ready_tokens > 0)
        {
            signed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(signed, "the worker holds a signed receipt");
    let r = c.collect().await;
    assert!(r.error.is_none(), "{:?}", r.error);
    let ready = w.handle.stats().payments[0].clone();
    assert_eq!(w.handle.payout_now(), 1);

    eventually("the payout seen on chain", || {
        w.handle
            .stats()
            .payouts
            .iter()
            .any(|p| p.status != PayoutStatus::Pending)
    })
    .await;
    let p = w.handle.stats().payouts[0].clone();
    assert_eq!(p.status, PayoutStatus::Paid, "{p:?}");
    assert_eq!(
        (p.new_tokens, p.amount_nanoton.as_str()),
        (ready.ready_tokens, ready.ready_nanoton.as_str())
    );
    let tx = p.tx.clone().unwrap();
    // The hash shown is the hash of the worker contract's transaction whose inbound
    // message came from the wallet.
    let txs = tc.transactions_since(&contract, None, 64).await.unwrap();
    let on_chain = txs
        .iter()
        .find(|t| hex::encode(t.id.hash) == tx.hash)
        .expect("the transaction shown is one of the worker contract's");
    assert_eq!(on_chain.id.lt, tx.lt);
    assert_eq!(
        on_chain.in_msg.as_ref().unwrap().source.as_ref(),
        Some(&owner.address)
    );
    assert!(!on_chain.outcome().unwrap().unwrap().failed());

    // The same on /jsonstats and the dashboard (the full hash in the title).
    let admin = format!("http://{}", w.handle.admin_addr().unwrap());
    let http = reqwest::Client::new();
    let json: serde_json::Value = get_json(&http, &format!("{admin}/jsonstats")).await;
    assert_eq!(json["payouts"][0]["status"], "paid");
    assert_eq!(json["payouts"][0]["tx"]["hash"], tx.hash.as_str());
    let html = get_text(&http, &format!("{admin}/stats")).await;
    assert!(html.contains(&format!("title=\"{}\"", tx.hash)), "{html}");
    cocoon_testkit::http::assert_no_debug_values("the worker's /stats", &html);
    w.handle.shutdown().await;
    settle.abort();
    ticker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_too_poor_to_deploy_the_contract_is_refused_with_one_line() {
    let chain = chainnet().await;
    let tc = chain.tc.clone();
    let net = proxy(&chain).await;
    let owner = Party::new(0x72);
    // Less than the 0.3 TON deployment plus 0.05 TON of fees.
    let funded = TON / 3;
    tc.faucet(&owner.address, funded).await.unwrap();
    let contract = net.worker_sc(&owner.address);

    let w = worker(&net, &tc, &owner).await;
    let mut error = None;
    for _ in 0..100 {
        error = w
            .handle
            .stats()
            .proxies
            .iter()
            .find_map(|p| p.last_error.clone());
        if error.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let error = error.expect("the session was refused");
    assert_eq!(
        error,
        format!(
            "worker contract {contract} is not deployed and wallet {} holds 0.333333333 TON; \
             deploying it needs 0.35 TON (contract_deploy_ton + 0.05 TON of fees): fund the wallet",
            owner.address
        )
    );
    assert!(!error.contains('\n'));
    // Nothing was sent: the wallet is untouched, the contract absent, no worker serves.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status(&tc, &owner.address).await,
        (AccountStatus::Uninit, funded)
    );
    assert_eq!(status(&tc, &contract).await.0, AccountStatus::Nonexist);
    assert_eq!(net.proxy.ready_workers(), 0);
    w.handle.shutdown().await;
}

/// After a params change the proxy pays the old worker contract its last payout and the
/// contract closes. On the devnet (the real contract code): the proxy key's last payout
/// closes the worker contract; the worker reads it, shows it closed with nothing ready, and
/// a forced payout sends nothing from its wallet (it would bounce and cost gas).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_contract_its_proxy_closed_gets_no_payout_from_the_wallet() {
    use cocoon_ton::codec::Layout;
    use cocoon_ton::contracts::WorkerStorage;
    use cocoon_ton::payments::{PaymentPayload, SignedOp};
    let chain = chainnet().await;
    let tc = chain.tc.clone();
    let net = proxy(&chain).await;
    let owner = Party::new(0x73);
    tc.faucet(&owner.address, 2 * TON).await.unwrap();
    let contract = net.worker_sc(&owner.address);
    let sender = WalletSender::new(tc.clone(), owner.wallet.clone(), owner.key.clone()).unwrap();
    let sink = Arc::new(ChainPayoutSink::new(sender, DEFAULT_ATTACH_NANOTON));
    sink.spawn_ticker(Duration::from_millis(100));
    let address = owner.address.to_string();
    let w = start_worker_with(&net, 0x73, move |c| {
        c.owner_address = address;
        c.payout_sink = Some(sink);
        c.min_payout_nanoton = u128::MAX; // only forced payouts
        c.timings.contract_check_interval = Duration::from_millis(200);
    })
    .await;
    net.wait_workers(1).await;
    let mut active = false;
    for _ in 0..100 {
        if status(&tc, &contract).await.0 == AccountStatus::Active {
            active = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(active, "the worker contract was deployed");
    // Open: read and shown open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!w.handle.stats().payments[0].closed);

    // The proxy's last payout (as its settlement sends it after a params change).
    let last = PaymentPayload {
        op: SignedOp::WorkerLastPayout,
        query_id: 7,
        tokens: Some(10),
        contract: contract.clone(),
    }
    .sign(&chain.proxy_key(), &owner.address)
    .unwrap();
    let mut sender = Party::new(0x74);
    tc.faucet(&sender.address, 2 * TON).await.unwrap();
    sender
        .send(&tc, &contract, 7 * TON / 10, last.to_cell().unwrap(), None)
        .await;
    let mut closed = false;
    for _ in 0..100 {
        let st = tc.account_state(&contract).await.unwrap();
        if st
            .data
            .is_some_and(|d| WorkerStorage::from_cell(&d).unwrap().state.0 == 2)
        {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        closed,
        "the last payout closed the worker contract on chain"
    );
    // The record is marked first (durably), the operator event follows it.
    eventually("the worker shows it closed", || {
        let s = w.handle.stats();
        s.payments[0].closed && s.event_counts.contains_key("contract_closed")
    })
    .await;
    let p = w.handle.stats().payments[0].clone();
    assert_eq!((p.ready_tokens, p.ready_nanoton.as_str()), (0, "0"));
    assert!(
        w.handle
            .stats()
            .event_counts
            .get("contract_closed")
            .is_some_and(|n| *n == 1),
        "{:?}",
        w.handle.stats().event_counts
    );

    // A forced payout sends nothing: the wallet's balance does not move.
    let before = status(&tc, &owner.address).await.1;
    assert_eq!(w.handle.payout_now(), 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&tc, &owner.address).await.1, before);
    w.handle.shutdown().await;
}
