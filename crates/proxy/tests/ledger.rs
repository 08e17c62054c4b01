//! The proxy on its durable ledger: settlements in SQLite, checkpoints on chain, signed
//! receipts only for checkpointed usage, restart with nothing lost, rollback refused.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::sync::Arc;

use cocoon_ledger::{OpenError, SqliteStore};
use cocoon_proxy::{Charge, Settlement};
use cocoon_proxy::{
    ClientContractState, LedgerMeter, MemoryChain, Meter, MeterError, SettlementConfig,
};
use cocoon_testkit::prelude::*;
use cocoon_tl::enums;
use cocoon_ton::keys::SigningKey;
use cocoon_ton::payments::{SignedOp, SignedPayment};

fn key() -> Arc<SigningKey> {
    Arc::new(SigningKey::from_seed(&PROXY_SEED).unwrap())
}

async fn open(path: &Path, chain: &MemoryChain) -> Result<Arc<LedgerMeter>, OpenError> {
    let store = SqliteStore::open(path).unwrap();
    LedgerMeter::open_for_root(store, key(), addr(0x33), &root(1, true, true), chain).await
}

fn receipt_tokens(p: &enums::proxy::SignedPayment, contract: &cocoon_ton::StdAddr) -> u64 {
    match p {
        enums::proxy::SignedPayment::SignedPaymentEmpty(_) => 0,
        enums::proxy::SignedPayment::SignedPayment(s) => {
            let pk = key().public_key();
            SignedPayment::from_boc(&s.data)
                .unwrap()
                .verify(SignedOp::ClientCharge, contract, &pk)
                .unwrap()
                .tokens
                .unwrap()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlements_are_durable_and_receipts_follow_confirmed_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.sqlite");
    let meter = open(&db, &MemoryChain::new()).await.unwrap();
    let m = meter.clone();
    let net = start_proxy_with(root(1, true, true), move |cfg| cfg.meter = m).await;
    let chain = net.chain.clone();
    let _w = start_worker(&net, 0x41).await;
    net.wait_workers(1).await;
    let owner = addr(0x51);
    let sc = net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;

    // Nothing checkpointed yet: payments carry the empty receipt, totals are durable.
    for id in 1..=3u8 {
        c.run(id, "json", 100, 30.0).await;
        let got = c.collect().await;
        assert_eq!(got.error, None);
        assert_eq!(got.tokens.unwrap()[4], 30);
    }
    // A payment report follows its request's commit (the next request may be booked in
    // memory by then: `max_tokens` runs ahead, `db_tokens` is what the disk holds); the
    // last request's covers all three.
    let p = loop {
        if let FromProxy::Payment(p) = c.next().await {
            assert!(p.db_tokens >= 30 && p.db_tokens <= p.max_tokens, "{p:?}");
            assert_eq!(p.db_tokens % 30, 0, "whole requests committed: {p:?}");
            if p.db_tokens == 90 {
                break p;
            }
        }
    };
    assert_eq!(
        p.max_tokens, 90,
        "settled tokens are committed before the client hears of its totals"
    );
    assert_eq!(receipt_tokens(&p.signed_payment, &sc), 0);

    // Checkpoint: the first pass prepares and sends it, the second sees it on chain.
    let cfg = SettlementConfig {
        min_client_charge: 1_000,
        min_worker_payout: u128::MAX,
        ..SettlementConfig::default()
    };
    meter.settle_once(&*chain, &cfg).await.unwrap();
    assert_eq!(chain.checkpoints().len(), 1);
    assert_eq!(meter.stats().confirmed_checkpoint, None);
    meter.settle_once(&*chain, &cfg).await.unwrap();
    assert_eq!(meter.stats().confirmed_checkpoint, Some(1));
    assert_eq!(
        meter.client_totals(&sc.to_string()).committed_to_blockchain,
        90
    );
    // 90 tokens × 20 nanoTON ≥ 1000: the client's charge was submitted, signed for 90.
    let subs = chain.receipts();
    assert_eq!(subs.len(), 1, "{subs:?}");
    assert_eq!(subs[0].0, sc);
    let r = SignedPayment::from_boc(&subs[0].1).unwrap();
    let payload = r
        .verify(SignedOp::ClientCharge, &sc, &key().public_key())
        .unwrap();
    assert_eq!(payload.tokens, Some(90));

    // The next request's payment carries a receipt for the checkpointed 90, not more.
    c.run(4, "json", 100, 30.0).await;
    let got = c.collect().await;
    assert_eq!(got.tokens.unwrap()[4], 30);
    let p = loop {
        if let FromProxy::Payment(p) = c.next().await
            && p.db_tokens == 120
        {
            break p;
        }
    };
    assert_eq!(p.max_tokens, 120);
    assert_eq!(receipt_tokens(&p.signed_payment, &sc), 90);

    // Conservation: the client paid what the worker earned plus the commission.
    let t = meter.totals();
    assert_eq!(t.client_tokens, 120);
    assert_eq!(t.worker_tokens, 120);
    assert_eq!(t.client_nanoton, 120 * 20);
    assert_eq!(t.worker_nanoton, 120 * 10);
    assert_eq!(t.commission_nanoton, 120 * 10);
    assert!(meter.audit().is_empty(), "{:?}", meter.audit());
    let stats: serde_json::Value = get_json(
        &reqwest::Client::new(),
        &format!("{}/jsonstats", net.admin()),
    )
    .await;
    assert_eq!(stats["ledger"]["confirmed_checkpoint"], 1);

    // Operator controls on the settlement, behind the admin token.
    tokio::spawn(meter.clone().run_settlement(
        chain.clone(),
        SettlementConfig {
            interval: std::time::Duration::from_secs(3600),
            ..cfg.clone()
        },
    ));
    let http = reqwest::Client::new();
    let post = |action: &str, token: &str| {
        http.post(format!("{}/control/{action}", net.admin()))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(post("payout", "wrong").await.unwrap().status(), 401);
    for _ in 0..5 {
        let r = post("checkpoint", TOKEN).await.unwrap();
        assert_eq!(r.status(), 200);
        if meter.client_totals(&sc.to_string()).committed_to_blockchain == 120 {
            break;
        }
    }
    assert_eq!(
        meter.client_totals(&sc.to_string()).committed_to_blockchain,
        120
    );
    let r = post("payout", TOKEN).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("1 payouts"));
    // Nothing new since: the same payout is not submitted twice.
    let r = post("payout", TOKEN).await.unwrap();
    assert!(r.text().await.unwrap().contains("0 payouts"));
    let worker_sc = _w.worker_sc(&net);
    let (to, boc) = chain.receipts().last().cloned().unwrap();
    assert_eq!(to.to_string(), worker_sc);
    let payout = SignedPayment::from_boc(&boc)
        .unwrap()
        .verify(SignedOp::WorkerPayout, &to, &key().public_key())
        .unwrap();
    assert_eq!(payout.tokens, Some(120));
    assert_eq!(post("withdraw", TOKEN).await.unwrap().status(), 200);
    assert_eq!(chain.withdrawals(), 1);
    assert_eq!(post("teleport", TOKEN).await.unwrap().status(), 404);
    let html = get_text(&reqwest::Client::new(), &format!("{}/stats", net.admin())).await;
    assert!(
        html.contains("<h2>Accounts (ledger)</h2>") && html.contains(&worker_sc[2..]),
        "{html}"
    );
    let metrics = get_text(&reqwest::Client::new(), &format!("{}/metrics", net.admin())).await;
    assert!(
        metrics.contains("cocoon_proxy_ledger_commission_nanoton 1200"),
        "{metrics}"
    );

    // Restart on the same file: nothing lost, the checkpoint still confirmed.
    net.proxy.shutdown().await;
    drop(c);
    drop(net.dir);
    drop(meter);
    let meter = open(&db, &chain).await.unwrap();
    let t = meter.client_totals(&sc.to_string());
    assert_eq!((t.committed_to_db, t.max), (120, 120));
    assert_eq!(t.committed_to_blockchain, 120);
    assert!(meter.audit().is_empty());
}

/// Books `n` requests of `tokens` each for `client` through the [`Meter`] trait.
async fn book(m: &LedgerMeter, client: &str, worker: &str, first: u8, n: u8, tokens: u64) {
    for i in 0..n {
        let id = [first + i; 32];
        m.reserve(client, id, 1_000).await.unwrap();
        m.settle(
            id,
            Settlement {
                client: client.into(),
                worker: worker.into(),
                usage: Charge {
                    total: tokens,
                    ..Charge::default()
                },
                coefficient: 1000,
            },
        )
        .await
        .unwrap();
    }
}

/// The client (its contract funded with 1 TON, the stake alike) and the worker of these tests.
fn parties() -> (String, String, ClientContractState) {
    let funded = ClientContractState {
        balance: 1_000_000_000,
        stake: 1_000_000_000,
        ..ClientContractState::default()
    };
    (addr(0x61).to_string(), addr(0x62).to_string(), funded)
}

fn copy_db(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        // SQLite may remove its -wal/-shm/-journal file between the listing and the copy
        // (a checkpoint): what is gone is in the main file already.
        match std::fs::copy(e.path(), to.join(e.file_name())) {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => panic!("copying {}: {err}", e.path().display()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_old_database_is_refused_and_corruption_freezes_only_one_account() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let db = live.join("ledger.sqlite");
    let chain = MemoryChain::new();
    let cfg = SettlementConfig::default();
    let (client, worker, funded) = parties();

    let m = open(&db, &chain).await.unwrap();
    m.open_client(&client, &funded, 20).await.unwrap();
    book(&m, &client, &worker, 1, 5, 40).await;
    m.settle_once(&chain, &cfg).await.unwrap();
    m.settle_once(&chain, &cfg).await.unwrap();
    assert_eq!(m.stats().confirmed_checkpoint, Some(1));
    drop(m);
    // The operator's "backup".
    copy_db(&live, &dir.path().join("backup"));

    let m = open(&db, &chain).await.unwrap();
    assert_eq!(m.client_totals(&client).max, 200);
    book(&m, &client, &worker, 10, 5, 40).await;
    m.settle_once(&chain, &cfg).await.unwrap();
    m.settle_once(&chain, &cfg).await.unwrap();
    assert_eq!(m.client_totals(&client).committed_to_blockchain, 400);
    drop(m);

    // Restoring the backup would forget 200 tokens the chain has a checkpoint for.
    std::fs::remove_dir_all(&live).unwrap();
    copy_db(&dir.path().join("backup"), &live);
    match open(&db, &chain).await {
        Err(OpenError::RolledBack { chain: c, .. }) => assert!(c.seqno >= 2),
        other => panic!("a rolled-back database was opened: {other:?}"),
    }

    // A checkpoint on chain that this database never made (another proxy with our key)
    // halts the ledger: no new reservations, the process keeps running.
    std::fs::remove_dir_all(&live).unwrap();
    std::fs::create_dir_all(&live).unwrap();
    let fresh = MemoryChain::new();
    let m = open(&db, &fresh).await.unwrap();
    m.open_client(&client, &funded, 20).await.unwrap();
    fresh.push_checkpoint(cocoon_ledger::ChainCheckpoint {
        seqno: 77,
        hash: [9; 32],
    });
    m.settle_once(&fresh, &cfg).await.unwrap();
    assert!(m.stats().halted.is_some());
    assert!(matches!(
        m.reserve(&client, [1; 32], 10).await,
        Err(MeterError::Refused(_))
    ));
    drop(m);

    // A tampered row freezes that account only; the other client keeps working.
    std::fs::remove_dir_all(&live).unwrap();
    std::fs::create_dir_all(&live).unwrap();
    let other = addr(0x63).to_string();
    // A deleted database is refused too while the chain shows checkpoints.
    let e = open(&db, &chain).await.unwrap_err();
    assert!(matches!(e, OpenError::RolledBack { .. }), "{e}");
    let empty = MemoryChain::new();
    let m = open(&db, &empty).await.unwrap();
    m.open_client(&client, &funded, 20).await.unwrap();
    m.open_client(&other, &funded, 20).await.unwrap();
    book(&m, &client, &worker, 30, 2, 40).await;
    book(&m, &other, &worker, 40, 2, 40).await;
    drop(m);
    let row = cocoon_ledger::AccountKey::client(1, addr(0x61)).row_key();
    SqliteStore::open(&db)
        .unwrap()
        .set_raw(&row, b"tampered")
        .unwrap();
    let m = open(&db, &empty).await.unwrap();
    assert!(matches!(
        m.reserve(&client, [50; 32], 10).await,
        Err(MeterError::Frozen(_))
    ));
    m.reserve(&other, [51; 32], 10).await.unwrap();
    assert_eq!(m.stats().frozen.len(), 1);
}

/// Issue 16 §4: a receipt submitted once is not paid for again after a restart, and a params
/// change ends with every old account's final receipt on chain (a grant-refund that charges
/// the client's last tokens, a last payout for the worker) instead of unsettled usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_are_submitted_once_across_restarts_and_old_accounts_get_final_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.sqlite");
    let chain = MemoryChain::new();
    let cfg = SettlementConfig {
        min_client_charge: 1,
        min_worker_payout: 1,
        ..SettlementConfig::default()
    };
    let (client, worker, funded) = parties();
    let m = open(&db, &chain).await.unwrap();
    m.open_client(&client, &funded, 20).await.unwrap();
    book(&m, &client, &worker, 1, 2, 40).await;
    m.settle_once(&chain, &cfg).await.unwrap(); // checkpoint sent
    m.settle_once(&chain, &cfg).await.unwrap(); // confirmed; charge and payout submitted
    assert_eq!(chain.receipts().len(), 2);
    drop(m);
    // The chain has not executed them yet when the proxy restarts: nothing is sent again.
    let m = open(&db, &chain).await.unwrap();
    m.settle_once(&chain, &cfg).await.unwrap();
    m.settle_once(&chain, &cfg).await.unwrap();
    assert_eq!(
        chain.receipts().len(),
        2,
        "no second submission after a restart"
    );

    // New params: the accounts of version 1 are closed with their final receipts once a
    // checkpoint covers them (it does) and nothing runs on them.
    let mut next = root(2, true, true);
    next.params.params_version = 2;
    m.change_params(&next).await.unwrap();
    m.settle_once(&chain, &cfg).await.unwrap();
    let finals: Vec<SignedOp> = chain.receipts()[2..]
        .iter()
        .filter_map(|(_, boc)| SignedOp::from_opcode(SignedPayment::from_boc(boc).unwrap().op))
        .collect();
    assert!(finals.contains(&SignedOp::ClientGrantRefund), "{finals:?}");
    assert!(finals.contains(&SignedOp::WorkerLastPayout), "{finals:?}");
    let n = chain.receipts().len();
    m.settle_once(&chain, &cfg).await.unwrap();
    assert_eq!(chain.receipts().len(), n, "each final receipt is sent once");
    assert!(m.audit().is_empty());
}

/// Automatic commission withdrawal, against the proxy contract's commission as the chain
/// reports it: nothing at or below the threshold (or while the chain cannot tell), one
/// withdrawal above it, none again until the contract shows it landed, and again once the
/// commission exceeds the threshold anew; a withdrawal that never lands is resent after
/// `receipt_resend_after`. Off (0), nothing is withdrawn whatever the contract holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commission_is_withdrawn_once_it_exceeds_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let chain = MemoryChain::new();
    let meter = open(&dir.path().join("ledger.sqlite"), &chain)
        .await
        .unwrap();
    let cfg = SettlementConfig {
        auto_withdraw_above: 1_000,
        ..SettlementConfig::default()
    };
    // Unknown commission, then at the threshold: nothing.
    meter.settle_once(&chain, &cfg).await.unwrap();
    chain.set_commission(Some(1_000));
    meter.settle_once(&chain, &cfg).await.unwrap();
    assert_eq!(chain.withdrawals(), 0);
    // Above it: one withdrawal, not repeated while the contract still shows the commission.
    chain.set_commission(Some(1_001));
    for _ in 0..3 {
        meter.settle_once(&chain, &cfg).await.unwrap();
    }
    assert_eq!(chain.withdrawals(), 1);
    assert_eq!(meter.stats().auto_withdrawals, 1);
    chain.set_commission(Some(5_000));
    meter.settle_once(&chain, &cfg).await.unwrap();
    assert_eq!(chain.withdrawals(), 1, "the first one has not landed yet");
    // Landed (commission back to zero), then earned again: below, then above.
    chain.set_commission(Some(0));
    meter.settle_once(&chain, &cfg).await.unwrap();
    chain.set_commission(Some(999));
    meter.settle_once(&chain, &cfg).await.unwrap();
    assert_eq!(chain.withdrawals(), 1);
    chain.set_commission(Some(2_000));
    meter.settle_once(&chain, &cfg).await.unwrap();
    assert_eq!(chain.withdrawals(), 2);
    // One that never lands is sent again after `receipt_resend_after`.
    let quick = SettlementConfig {
        receipt_resend_after: std::time::Duration::ZERO,
        ..cfg.clone()
    };
    meter.settle_once(&chain, &quick).await.unwrap();
    assert_eq!(chain.withdrawals(), 3);
    // Off: nothing, whatever the contract holds; the manual control is not affected.
    let off = SettlementConfig::default();
    chain.set_commission(Some(u128::from(u64::MAX)));
    meter.settle_once(&chain, &off).await.unwrap();
    assert_eq!(chain.withdrawals(), 3);
}

/// The operator's withdrawal counts as the one in flight: the automatic one does not send
/// another for the same commission before it landed.
#[tokio::test]
async fn an_operator_withdrawal_is_not_followed_by_an_automatic_one() {
    let dir = tempfile::tempdir().unwrap();
    let chain = Arc::new(MemoryChain::new());
    let meter = open(&dir.path().join("ledger.sqlite"), &chain)
        .await
        .unwrap();
    let cfg = SettlementConfig {
        interval: std::time::Duration::from_secs(3600),
        auto_withdraw_above: 1_000,
        ..SettlementConfig::default()
    };
    let loop_chain: Arc<dyn cocoon_proxy::CheckpointChain> = chain.clone();
    let task = tokio::spawn(meter.clone().run_settlement(loop_chain, cfg.clone()));
    chain.set_commission(Some(5_000));
    eventually("the settlement loop runs", || chain.withdrawals() == 1).await;
    // Landed; earned again above the threshold; the operator withdraws by hand.
    chain.set_commission(Some(0));
    meter.settle_once(&*chain, &cfg).await.unwrap();
    chain.set_commission(Some(3_000));
    meter
        .control(cocoon_proxy::SettlementAction::Withdraw)
        .await
        .unwrap();
    assert_eq!(chain.withdrawals(), 2);
    // The contract still shows it: no automatic one on top.
    meter.settle_once(&*chain, &cfg).await.unwrap();
    assert_eq!(chain.withdrawals(), 2, "not sent twice");
    task.abort();
}

/// A [`MemoryChain`] whose checkpoint reads stop at a gate once their answer is taken.
struct HeldChain {
    inner: MemoryChain,
    read: tokio::sync::Notify,
    gate: tokio::sync::Semaphore,
}

impl cocoon_proxy::CheckpointChain for HeldChain {
    fn send_checkpoint(
        &self,
        c: cocoon_ledger::ChainCheckpoint,
    ) -> futures::future::BoxFuture<'_, Result<(), cocoon_proxy::ProxyChainError>> {
        self.inner.send_checkpoint(c)
    }

    fn checkpoints_since(
        &self,
        after: u32,
    ) -> futures::future::BoxFuture<
        '_,
        Result<Vec<cocoon_ledger::ChainCheckpoint>, cocoon_proxy::ProxyChainError>,
    > {
        Box::pin(async move {
            let v = self.inner.checkpoints_since(after).await?;
            self.read.notify_one();
            self.gate.acquire().await.unwrap().forget();
            Ok(v)
        })
    }

    fn submit_receipt<'a>(
        &'a self,
        contract: &'a cocoon_ton::StdAddr,
        boc: Vec<u8>,
    ) -> futures::future::BoxFuture<'a, Result<(), cocoon_proxy::ProxyChainError>> {
        self.inner.submit_receipt(contract, boc)
    }

    fn withdraw(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<(), cocoon_proxy::ProxyChainError>> {
        self.inner.withdraw()
    }
}

/// A params change while a settlement pass is reading the old contract's checkpoints back
/// (seen by the real processes: the proxy halted its ledger at the switch with "unknown
/// checkpoint 1 on chain"): the move waits for the pass, which confirms the checkpoint it
/// read, and the ledger stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_params_change_during_a_settlement_pass_does_not_halt_the_ledger() {
    use cocoon_proxy::CheckpointChain as _;
    let dir = tempfile::tempdir().unwrap();
    let chain = Arc::new(HeldChain {
        inner: MemoryChain::new(),
        read: tokio::sync::Notify::new(),
        gate: tokio::sync::Semaphore::new(0),
    });
    let cfg = SettlementConfig::default();
    let (client, worker, funded) = parties();
    let m = open(&dir.path().join("ledger.sqlite"), &chain.inner)
        .await
        .unwrap();
    m.open_client(&client, &funded, 20).await.unwrap();
    book(&m, &client, &worker, 1, 2, 40).await;
    m.settle_once(&chain.inner, &cfg).await.unwrap(); // checkpoint 1 prepared and sent
    assert_eq!(chain.inner.checkpoints_since(0).await.unwrap().len(), 1);
    // A pass reads checkpoint 1 back; the params change comes in before it confirms it.
    let pass = {
        let (m, chain, cfg) = (m.clone(), chain.clone(), cfg.clone());
        tokio::spawn(async move { m.settle_once(&*chain, &cfg).await })
    };
    chain.read.notified().await;
    let mut change = {
        let m = m.clone();
        tokio::spawn(async move {
            let mut next = root(2, true, true);
            next.params.params_version = 2;
            m.change_params(&next).await
        })
    };
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut change).await;
    assert!(early.is_err(), "the move waits for the pass");
    chain.gate.add_permits(100);
    pass.await.unwrap().unwrap();
    change.await.unwrap().unwrap();
    assert_eq!(m.stats().halted, None, "{:?}", m.audit());
    assert_eq!(m.stats().params_version, 2);
    // And settlement goes on.
    m.settle_once(&*chain, &cfg).await.unwrap();
    assert_eq!(m.stats().halted, None, "{:?}", m.audit());
}

/// Whether a [`Held`] store's commits go through, and how many wait.
#[derive(Clone, Default)]
struct Gate(Arc<(std::sync::Mutex<(bool, u64)>, std::sync::Condvar)>);

impl Gate {
    fn set(&self, open: bool) {
        self.0.0.lock().unwrap().0 = open;
        self.0.1.notify_all();
    }

    fn waiting(&self) -> u64 {
        self.0.0.lock().unwrap().1
    }
}

/// The SQLite store with its commits held at a [`Gate`]: the proxy's fsync, slowed at will.
struct Held {
    inner: SqliteStore,
    gate: Gate,
}

impl cocoon_ledger::Store for Held {
    fn load(&mut self) -> Result<Vec<(String, Vec<u8>)>, cocoon_ledger::StoreError> {
        self.inner.load()
    }

    fn commit(&mut self, batch: &cocoon_ledger::Batch) -> Result<(), cocoon_ledger::StoreError> {
        let (m, cv) = &*self.gate.0;
        let mut g = m.lock().unwrap();
        g.1 += 1;
        while !g.0 {
            g = cv.wait(g).unwrap();
        }
        g.1 -= 1;
        drop(g);
        self.inner.commit(batch)
    }
}

/// Issue 22 §5: a protocol 3 stream reaches the app whole (its `[DONE]`) while the proxy's
/// commit of its settlement is held; the settlement is decided in memory by then, and the
/// answer's receipt follows the commit: fetched at once, it comes when the commit completes
/// and bills what the answer showed. A whole (not streamed) answer is released only with its
/// receipt checked (ARCHITECTURE.md D15), so it waits for the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_before_its_settlement_commits_and_its_receipt_follows_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::default();
    gate.set(true);
    let store = Held {
        inner: SqliteStore::open(&dir.path().join("ledger.sqlite")).unwrap(),
        gate: gate.clone(),
    };
    let root = cocoon_testkit::fixtures::root_with_proxy_image(1, true);
    let meter = LedgerMeter::open_for_root(store, key(), addr(0x33), &root, &MemoryChain::new())
        .await
        .unwrap();
    let m = meter.clone();
    let net = start_proxy_with(root.clone(), move |cfg| cfg.meter = m).await;
    let _w = start_worker(&net, 0x61).await;
    net.wait_workers(1).await;
    let sc = net
        .fund_client(&addr(0x42), 10_000_000_000, true)
        .to_string();
    let (_c, base) = cocoon_testkit::client::start_gateway(
        cocoon_testkit::client::gateway_config(vec![net.proxy.client_addr().to_string()], root),
        1,
    )
    .await;
    let http = reqwest::Client::new();
    for stream in [true, false] {
        let before = meter.client_totals(&sc);
        gate.set(false);
        let mode = if stream { "stream" } else { "json" };
        let body = serde_json::json!({"model": "Smol", "stream": stream, "max_tokens": 50,
            "messages": [{"role": "user", "content": mode}]});
        let (h, url) = (http.clone(), format!("{base}/v1/chat/completions"));
        let answer = tokio::spawn(async move {
            let r = h.post(url).json(&body).send().await.unwrap();
            let id = r.headers()["x-cocoon-receipt"].to_str().unwrap().to_owned();
            (r.status().as_u16(), id, r.text().await.unwrap())
        });
        if !stream {
            eventually("the whole answer's settlement is booked in memory", || {
                meter.client_totals(&sc).max > before.max
            })
            .await;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            assert!(
                !answer.is_finished(),
                "a whole answer is not released before its receipt, which follows the commit"
            );
            assert_eq!(
                meter.client_totals(&sc).committed_to_db,
                before.committed_to_db,
                "not committed yet"
            );
            gate.set(true);
        }
        let (status, id, text) = tokio::time::timeout(LIMIT, answer)
            .await
            .expect("the answer reaches the app (a stream while the proxy's commit is held)")
            .unwrap();
        assert_eq!(status, 200, "{text}");
        if stream {
            assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        } else {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["choices"][0]["message"]["content"], "Hi", "{text}");
        }
        let t = meter.client_totals(&sc);
        assert!(
            t.max > before.max,
            "booked in memory: {t:?} after {before:?}"
        );
        let url = format!("{base}/v1/receipts/{id}");
        let fetch = tokio::spawn(async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        });
        if stream {
            // Decided in memory, not durable: the commit still waits at the gate.
            assert_eq!(
                t.committed_to_db, before.committed_to_db,
                "not committed yet"
            );
            assert!(gate.waiting() >= 1, "a commit waits at the gate");
            // The app asks for the receipt at once: it comes once the commit is through.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            assert!(!fetch.is_finished(), "no receipt before the commit");
            assert_eq!(
                meter.client_totals(&sc).committed_to_db,
                before.committed_to_db
            );
            gate.set(true);
        }
        let (s, doc) = tokio::time::timeout(LIMIT, fetch).await.unwrap().unwrap();
        assert_eq!(s, 200, "{doc}");
        let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(
            doc["usage"]["billed_tokens"].as_u64(),
            Some(t.max - before.max),
            "the receipt bills what was booked: {doc}"
        );
        eventually("the settlement is durable", || {
            meter.client_totals(&sc).committed_to_db == t.max
        })
        .await;
    }
    assert!(meter.audit().is_empty(), "{:?}", meter.audit());
}
