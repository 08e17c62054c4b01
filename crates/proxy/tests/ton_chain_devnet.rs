//! `TonClientChain` against the devnet: the real client and proxy contracts in a TVM, the
//! real toncenter client. A client contract is deployed by its owner's top-up, its storage
//! is read back, the owner sets a secret hash (short authentication), and the owner's
//! `owner_client_register{nonce}` reaches the proxy contract, which is what completes a
//! long authorisation. The second test runs the proxy itself on this chain and authorises
//! one client each way over RA-TLS.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use cocoon_proxy::ClientChain;
use cocoon_testkit::devnet::{PAYOUT_OP, Party, TON, chainnet, proxy_pk};
use cocoon_testkit::prelude::*;
use cocoon_testkit::proxy::secret_hash;
use cocoon_ton::chain::{Chain, TxMessage};
use cocoon_ton::codec::Layout;
use cocoon_ton::contracts::client_contract;
use cocoon_ton::messages::{OwnerClientChangeSecretHash, OwnerClientRegister};
use cocoon_ton::{HashBytes, StdAddr};
use cocoon_ton::{Toncenter, chain::Devnet as _};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_contract_state_and_registration_on_the_devnet() {
    let net = chainnet().await;
    let tc = &net.tc;
    let chain = net.client_chain().await;
    let pk = proxy_pk();
    let owner = Party::new(2).address;
    let predicted = client_contract(&net.params, &owner, &net.proxy.address, &pk).unwrap();
    assert_eq!(
        chain.client_state(&predicted.address).await.unwrap(),
        None,
        "not deployed yet"
    );

    // The owner's top-up deploys the client contract.
    let (mut client_owner, client_sc) = net.client(2, None).await;
    assert_eq!(client_sc, predicted.address);
    let st = chain
        .client_state(&client_sc)
        .await
        .unwrap()
        .expect("deployed");
    assert_eq!(st.balance, 5 * TON as u64);
    assert_eq!(st.stake, net.params.min_client_stake);
    assert_eq!(
        (st.tokens_used, st.secret_hash, st.closing),
        (0, None, false)
    );

    // Short authentication material: the owner stores SHA-256 of its secret.
    let hash = [0x5a; 32];
    let body = OwnerClientChangeSecretHash {
        query_id: 3,
        secret_hash: HashBytes(hash),
        send_excesses_to: client_owner.address.clone(),
    }
    .to_cell()
    .unwrap();
    client_owner.send(tc, &client_sc, TON / 2, body, None).await;
    let st = chain.client_state(&client_sc).await.unwrap().unwrap();
    assert_eq!(st.secret_hash, Some(hash));

    // Long authentication: the nonce the proxy handed out comes back through the contracts.
    let nonce = 0x1234_5678_9abc_def0u64;
    let body = OwnerClientRegister {
        query_id: 4,
        nonce,
        send_excesses_to: client_owner.address.clone(),
    }
    .to_cell()
    .unwrap();
    client_owner.send(tc, &client_sc, TON, body, None).await;
    tokio::time::timeout(
        Duration::from_secs(20),
        chain.wait_register(&client_sc, nonce),
    )
    .await
    .expect("registration seen on the proxy contract")
    .unwrap();
    // Another nonce, or the right nonce from another contract, is not a registration.
    assert!(
        tokio::time::timeout(
            Duration::from_millis(300),
            chain.wait_register(&client_sc, nonce + 1)
        )
        .await
        .is_err()
    );
    assert!(
        tokio::time::timeout(
            Duration::from_millis(300),
            chain.wait_register(&net.proxy.address, nonce)
        )
        .await
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_authorises_clients_through_the_devnet_contracts() {
    use cocoon_tl::enums::client::{AuthorizationWithProxy as Auth, ProxyConnectionAuth as Conn};
    use cocoon_tl::functions::client as fclient;
    let net_chain = chainnet().await;
    let chain = Arc::new(net_chain.client_chain().await);
    let root_cfg = net_chain.root_config().await;
    let proxy_sc = net_chain.proxy.address.clone();
    let owner_addr = net_chain.proxy_owner.address.clone();
    let key = net_chain.proxy_key();
    let net = start_proxy_with(root_cfg, |c| {
        c.chain = chain.clone();
        c.signing_key = Arc::new(key);
        c.proxy_sc = proxy_sc;
        c.owner_address = owner_addr;
    })
    .await;

    // Short: the contract holds SHA-256 of the client's secret.
    let hash = secret_hash();
    let (alice, alice_sc) = net_chain.client(2, Some(hash)).await;
    let c = TestClient::connect(&net, &alice.address).await;
    assert_eq!(c.connected.client_sc_address, alice_sc.to_string());
    assert!(
        matches!(&c.connected.auth, Conn::ProxyConnectionAuthShort(s) if s.secret_hash == hash)
    );
    let a = c.authorize_short().await;
    assert!(matches!(a, Auth::AuthorizationWithProxySuccess(_)), "{a:?}");
    // Credit as the contract's balance and stake allow.
    let st = chain.client_state(&alice_sc).await.unwrap().unwrap();
    let credit = net.meter.client(&alice_sc.to_string()).unwrap().credit;
    assert_eq!(credit, st.credit_tokens(net_chain.params.price_per_token));
    assert!(credit > 0);

    // Long: no secret on the contract; the owner registers the nonce on-chain.
    let (mut bob, bob_sc) = net_chain.client(3, None).await;
    let c = TestClient::connect(&net, &bob.address).await;
    let Conn::ProxyConnectionAuthLong(long) = c.connected.auth.clone() else {
        panic!("long auth expected: {:?}", c.connected.auth)
    };
    let h = c.handle.clone();
    let pending = tokio::spawn(async move {
        h.query_tl::<_, Auth>(&fclient::AuthorizeWithProxyLong {}, LIMIT)
            .await
    });
    let body = OwnerClientRegister {
        query_id: 4,
        nonce: long.nonce as u64,
        send_excesses_to: bob.address.clone(),
    }
    .to_cell()
    .unwrap();
    bob.send(&net_chain.tc, &bob_sc, TON, body, None).await;
    let a = pending.await.unwrap().unwrap();
    assert!(matches!(a, Auth::AuthorizationWithProxySuccess(_)), "{a:?}");
    assert!(net.meter.client(&bob_sc.to_string()).unwrap().credit > 0);
}

/// Settlement on the devnet: the ledger's checkpoint goes out as a `save_state` from the
/// proxy operator's wallet, is read back from the proxy contract's transactions and
/// confirmed, and the client's signed charge is accepted by the real client contract, whose
/// `tokens_used` then equals what the ledger booked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_and_client_charges_settle_on_the_devnet() {
    use cocoon_proxy::{Charge, Settlement};
    use cocoon_proxy::{CheckpointChain, Meter, SettlementConfig};

    let net_chain = chainnet().await;
    let root_cfg = net_chain.root_config().await;
    let (_alice, alice_sc) = net_chain.client(2, None).await;
    // The operator's wallet (already deployed by the stake top-up) sends the checkpoints.
    let side = net_chain.chain_proxy(&root_cfg).await;
    let (clients, chain, meter) = (&side.clients, &*side.checkpoints, &side.meter);
    let price = root_cfg.params.price_per_token;
    let state = clients.client_state(&alice_sc).await.unwrap().unwrap();
    let client = alice_sc.to_string();
    meter.open_client(&client, &state, price).await.unwrap();
    let worker = addr(0x77).to_string();
    meter.reserve(&client, [1; 32], 5_000).await.unwrap();
    meter
        .settle(
            [1; 32],
            Settlement {
                client: client.clone(),
                worker,
                usage: Charge {
                    total: 1_234,
                    ..Charge::default()
                },
                coefficient: 1000,
            },
        )
        .await
        .unwrap();

    let cfg = SettlementConfig {
        min_client_charge: 1,
        min_worker_payout: u128::MAX,
        ..SettlementConfig::default()
    };
    meter.settle_once(chain, &cfg).await.unwrap();
    let on_chain = chain.checkpoints_since(0).await.unwrap();
    assert_eq!(on_chain.len(), 1, "the save_state is on the proxy contract");
    meter.settle_once(chain, &cfg).await.unwrap();
    assert_eq!(meter.stats().confirmed_checkpoint, Some(on_chain[0].seqno));
    assert_eq!(meter.stats().charges_submitted, 1);
    // The wallet may need a tick or two to get the charge out; then the contract has it.
    let mut charged = 0;
    for _ in 0..50 {
        chain.tick().await.unwrap();
        charged = clients
            .client_state(&alice_sc)
            .await
            .unwrap()
            .unwrap()
            .tokens_used;
        if charged > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        charged, 1_234,
        "the client contract accepted the signed charge"
    );
    // The next pass does not send the same charge again.
    meter.settle_once(chain, &cfg).await.unwrap();
    assert_eq!(meter.stats().charges_submitted, 1);
    // The ledger learns it from the chain: nothing is due any more.
    let state = clients.client_state(&alice_sc).await.unwrap().unwrap();
    meter.open_client(&client, &state, price).await.unwrap();
    assert_eq!(
        meter
            .account(cocoon_proxy::Party::Client, &client)
            .unwrap()
            .on_chain_tokens,
        1_234
    );
    assert!(meter.audit().is_empty());
}

/// The messages `to` received whose body starts with `op`, in chain order.
async fn received(tc: &Toncenter, to: &StdAddr, op: u32) -> Vec<TxMessage> {
    tc.transactions_since(to, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|t| t.in_msg)
        .filter(|m| {
            m.body
                .as_ref()
                .and_then(|b| b.as_slice().ok().and_then(|mut s| s.load_u32().ok()))
                == Some(op)
        })
        .collect()
}

/// Payouts (`payout` op) `to` received from `from`, in chain order, to the nanoton.
async fn payouts(tc: &Toncenter, to: &StdAddr, from: &StdAddr) -> Vec<u128> {
    received(tc, to, PAYOUT_OP)
        .await
        .into_iter()
        .filter(|m| m.source.as_ref() == Some(from))
        .map(|m| m.value)
        .collect()
}

/// The proxy contract's storage.
async fn proxy_storage(tc: &Toncenter, proxy: &StdAddr) -> cocoon_ton::contracts::ProxyStorage {
    let data = tc.account_state(proxy).await.unwrap().data.unwrap();
    cocoon_ton::contracts::ProxyStorage::from_cell(&data).unwrap()
}

async fn proxy_stake(tc: &Toncenter, proxy: &StdAddr) -> u64 {
    proxy_storage(tc, proxy).await.stake.0
}

/// What the refund attack left behind.
struct RefundOutcome {
    /// Tokens the proxy served the client (its ledger).
    served: u64,
    /// Tokens the client contract was charged.
    charged: u64,
    /// What the client's owner got back from the proxy contract, in order.
    refunds: Vec<u128>,
    stake_before: u64,
    stake_after: u64,
    price: u64,
}

/// Issue 16 §4, the attack run for real: a client funded with 5 TON (stake 1 TON) uses the
/// proxy for less than the charge threshold, asks for its refund (the part above the stake
/// comes back at once), and after `client_delay_before_close` asks again, which forces the
/// rest out of the proxy's stake. `watch` runs the proxy with its client watcher on or off
/// (off: the contract is read at authorisation only).
async fn refund_attack(watch: bool) -> RefundOutcome {
    use cocoon_proxy::SettlementConfig;
    use cocoon_ton::messages::OwnerClientRequestRefund;
    let net_chain = chainnet().await;
    let tc = net_chain.tc.clone();
    let root_cfg = net_chain.serving_root().await;
    let hash = secret_hash();
    let (mut alice, alice_sc) = net_chain.client(2, Some(hash)).await;
    let side = net_chain.chain_proxy(&root_cfg).await;
    let meter = &side.meter;
    // The default thresholds: nothing under 1 TON is charged in the normal course.
    let cfg = SettlementConfig {
        interval: Duration::from_millis(200),
        urgent_interval: Duration::from_millis(100),
        ..SettlementConfig::default()
    };
    let settle = tokio::spawn(meter.clone().run_settlement(side.checkpoints.clone(), cfg));
    let ticker = side.spawn_ticker();
    let net = start_proxy_with(root_cfg, |c| {
        side.configure(c);
        c.timings.client_watch_interval = watch.then_some(Duration::from_millis(200));
    })
    .await;
    let _worker = start_worker(&net, 0x41).await;
    net.wait_workers(1).await;
    let stake_before = proxy_stake(&tc, &net_chain.proxy.address).await;

    // The client uses the proxy: three answers, far below 1 TON.
    let mut c = TestClient::authorized(&net, &alice.address).await;
    for id in 1..=3 {
        c.run(id, "json", 100, 30.0).await;
        let r = c.collect().await;
        assert!(r.error.is_none(), "{:?}", r.error);
    }
    let served = meter
        .account(cocoon_proxy::Party::Client, &alice_sc.to_string())
        .unwrap()
        .tokens;
    assert!(served > 0);
    // The settlement checkpoints the usage (the client can already be paid for by a receipt).
    eventually("usage checkpointed", || {
        meter
            .account(cocoon_proxy::Party::Client, &alice_sc.to_string())
            .is_some_and(|a| a.chain_tokens == served)
    })
    .await;

    // Phase 1 of the refund: the balance above the stake comes back at once.
    let refund = |q| {
        OwnerClientRequestRefund {
            query_id: q,
            send_excesses_to: alice.address.clone(),
        }
        .to_cell()
        .unwrap()
    };
    let (b1, b2) = (refund(11), refund(12));
    alice.send(&tc, &alice_sc, TON / 5, b1, None).await;
    // The proxy has until `client_delay_before_close` (wall time here: a few seconds of it).
    let chain_state = |tc: Toncenter, sc: StdAddr| async move {
        let data = tc.account_state(&sc).await.unwrap().data.unwrap();
        cocoon_ton::contracts::ClientStorage::from_cell(&data).unwrap()
    };
    for _ in 0..if watch { 150 } else { 10 } {
        let s = chain_state(tc.clone(), alice_sc.clone()).await;
        if s.state.0 == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Phase 2 after the delay (refused by a contract the proxy already closed).
    tc.advance_clock(u64::from(net_chain.params.client_delay_before_close))
        .await
        .unwrap();
    alice.send(&tc, &alice_sc, TON / 5, b2, None).await;
    let s = chain_state(tc.clone(), alice_sc.clone()).await;
    assert_eq!(s.state.0, 2, "closed either way");
    let outcome = RefundOutcome {
        served,
        charged: s.tokens_used,
        refunds: payouts(&tc, &alice.address, &net_chain.proxy.address).await,
        stake_before,
        stake_after: proxy_stake(&tc, &net_chain.proxy.address).await,
        price: net_chain.params.price_per_token,
    };
    settle.abort();
    ticker.abort();
    net.proxy.shutdown().await;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_use_the_proxy_and_take_its_whole_deposit_back() {
    let stake = u128::from(cocoon_devnet::root::test_params().unwrap().min_client_stake);
    // Without the watcher (the old behaviour) the attack works: nothing was charged, and the
    // forced refund of the whole stake came out of the proxy's own stake.
    let old = refund_attack(false).await;
    assert_eq!(old.charged, 0);
    assert_eq!(old.refunds, vec![5 * TON - stake, stake]);
    assert_eq!(u128::from(old.stake_before - old.stake_after), stake);
    // With it, the closing client is charged every token it used before the close
    // completes, cooperatively (grant-refund), so the proxy's stake is untouched.
    let new = refund_attack(true).await;
    assert_eq!(new.charged, new.served, "every token used was charged");
    let cost = u128::from(new.served) * u128::from(new.price);
    assert_eq!(
        new.refunds,
        vec![5 * TON - stake, stake - cost],
        "refunds to the nanoton: the usage stayed with the proxy"
    );
    assert_eq!(
        new.stake_after, new.stake_before,
        "the proxy's stake is untouched"
    );
}

/// The proxy contract's commission (`ProxyStorage.balance`), nanoTON.
async fn contract_commission(tc: &Toncenter, proxy: &StdAddr) -> u64 {
    proxy_storage(tc, proxy).await.balance.0
}

/// Tokens the worker contract has been paid for (`WorkerStorage.tokens`).
async fn worker_tokens(tc: &Toncenter, worker: &StdAddr) -> u64 {
    let st = tc.account_state(worker).await.unwrap();
    st.data.map_or(0, |d| {
        cocoon_ton::contracts::WorkerStorage::from_cell(&d)
            .unwrap()
            .tokens
    })
}

/// Commission withdrawal requests (`ext_proxy_payout_request`) the proxy contract processed.
async fn withdrawal_requests(tc: &Toncenter, proxy: &StdAddr) -> usize {
    received(tc, proxy, cocoon_ton::opcodes::EXT_PROXY_PAYOUT_REQUEST)
        .await
        .len()
}

/// Issue 18 §2, automatic commission withdrawal on the devnet: traffic through the proxy
/// pays the worker through its real contract, which credits the proxy contract's
/// commission; at the threshold nothing is withdrawn, above it exactly one withdrawal goes
/// out, and the owner receives exactly what the contract held (tokens paid × (price −
/// worker fee), to the nanoton; the contract pays the message's fees from the attached
/// value), leaving the contract's commission at zero and its stake untouched; the
/// operator's `POST /control/withdraw` still withdraws by hand, below the threshold too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commission_above_the_threshold_is_withdrawn_once_to_the_owner() {
    use cocoon_proxy::{CheckpointChain, SettlementConfig};
    let net_chain = chainnet().await;
    let tc = net_chain.tc.clone();
    let root_cfg = net_chain.serving_root().await;
    let proxy_sc = net_chain.proxy.address.clone();
    // The worker's contract exists (its owner deployed it); payouts are paid through it.
    let worker_owner = addr(0x41);
    let wsc = cocoon_ton::contracts::worker_contract(
        &net_chain.params,
        &worker_owner,
        &proxy_sc,
        &proxy_pk(),
    )
    .unwrap();
    let mut funder = Party::new(9);
    tc.faucet(&funder.address, 10 * TON).await.unwrap();
    let init = wsc.state_init().unwrap();
    funder
        .send(
            &tc,
            &wsc.address,
            TON / 5,
            cocoon_ton::codec::empty_cell(),
            Some(init),
        )
        .await;

    let hash = secret_hash();
    let (alice, _alice_sc) = net_chain.client(2, Some(hash)).await;
    let side = net_chain.chain_proxy(&root_cfg).await;
    let (checkpoints, meter) = (&side.checkpoints, &side.meter);
    let proxy_owner = side.owner.clone();
    let net = start_proxy_with(root_cfg, |c| side.configure(c)).await;
    let _worker = start_worker(&net, 0x41).await;
    net.wait_workers(1).await;
    assert_eq!(net.worker_sc(&worker_owner), wsc.address);
    let stake = proxy_stake(&tc, &proxy_sc).await;
    let per_token = net_chain.params.price_per_token - net_chain.params.worker_fee_per_token;
    // Every checkpointed token is charged and paid out at once; withdrawal per `auto`.
    let cfg = |auto: u128| SettlementConfig {
        min_client_charge: 1,
        min_worker_payout: 1,
        auto_withdraw_above: auto,
        ..SettlementConfig::default()
    };
    // Settlement passes (with wallet ticks) until `done` holds; false if it never does.
    let passes = |cfg: SettlementConfig, n: usize| {
        let (meter, cp, tc, wsc) = (meter.clone(), checkpoints, tc.clone(), wsc.address.clone());
        async move {
            let mut seen = Vec::new();
            for _ in 0..n {
                meter.settle_once(&**cp, &cfg).await.unwrap();
                cp.tick().await.unwrap();
                seen.push(worker_tokens(&tc, &wsc).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        }
    };
    let mut c = TestClient::authorized(&net, &alice.address).await;
    async fn request(c: &mut TestClient, id: u8) {
        c.run(id, "json", 100, 30.0).await;
        let r = c.collect().await;
        assert!(r.error.is_none(), "{:?}", r.error);
    }

    // Passes with automatic withdrawal off until the contract's commission is what the
    // worker was paid for beyond `paid` tokens; that commission.
    let accrue = |paid: u64| {
        let (passes, tc, wsc, proxy_sc) = (&passes, &tc, &wsc.address, &proxy_sc);
        async move {
            let mut commission = 0;
            for _ in 0..10 {
                passes(cfg(0), 5).await;
                let t = worker_tokens(tc, wsc).await;
                commission = contract_commission(tc, proxy_sc).await;
                if t > paid
                    && u128::from(commission) == u128::from(t - paid) * u128::from(per_token)
                {
                    break;
                }
            }
            commission
        }
    };

    // 1. Traffic, settled with automatic withdrawal off: the commission accrues.
    request(&mut c, 1).await;
    let c1 = accrue(0).await;
    assert!(c1 > 0, "the worker's payout credited the commission");
    // 2. At the threshold (not above it): nothing is withdrawn.
    passes(cfg(u128::from(c1)), 5).await;
    assert_eq!(withdrawal_requests(&tc, &proxy_sc).await, 0);
    assert_eq!(contract_commission(&tc, &proxy_sc).await, c1);
    assert!(payouts(&tc, &proxy_owner, &proxy_sc).await.is_empty());
    assert_eq!(meter.stats().auto_withdrawals, 0);
    assert_eq!(
        checkpoints.commission().await.unwrap(),
        Some(u128::from(c1))
    );

    // 3. More traffic: the commission passes the threshold and is withdrawn once.
    request(&mut c, 2).await;
    request(&mut c, 3).await;
    for _ in 0..20 {
        passes(cfg(u128::from(c1)), 5).await;
        if !payouts(&tc, &proxy_owner, &proxy_sc).await.is_empty() {
            break;
        }
    }
    // A few more passes: the landed withdrawal is not repeated.
    passes(cfg(u128::from(c1)), 5).await;
    let tokens = worker_tokens(&tc, &wsc.address).await;
    let expected = u128::from(tokens) * u128::from(per_token);
    assert!(expected > u128::from(c1));
    assert_eq!(
        payouts(&tc, &proxy_owner, &proxy_sc).await,
        vec![expected],
        "the owner got the whole commission, to the nanoton, once"
    );
    assert_eq!(withdrawal_requests(&tc, &proxy_sc).await, 1);
    assert_eq!(meter.stats().auto_withdrawals, 1);
    assert_eq!(contract_commission(&tc, &proxy_sc).await, 0);
    assert_eq!(proxy_stake(&tc, &proxy_sc).await, stake, "the stake stays");

    // 4. The operator's control withdraws by hand, whatever the threshold.
    request(&mut c, 4).await;
    let c3 = accrue(tokens).await;
    assert!(c3 > 0 && u128::from(c3) < expected);
    let cp: Arc<dyn CheckpointChain> = checkpoints.clone();
    let settle = tokio::spawn(meter.clone().run_settlement(
        cp,
        SettlementConfig {
            interval: Duration::from_secs(3600),
            ..cfg(0)
        },
    ));
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/control/withdraw", net.admin()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..50 {
        checkpoints.tick().await.unwrap();
        if payouts(&tc, &proxy_owner, &proxy_sc).await.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settle.abort();
    assert_eq!(
        payouts(&tc, &proxy_owner, &proxy_sc).await,
        vec![expected, u128::from(c3)]
    );
    assert_eq!(withdrawal_requests(&tc, &proxy_sc).await, 2);
    assert_eq!(contract_commission(&tc, &proxy_sc).await, 0);
    assert_eq!(
        meter.stats().auto_withdrawals,
        1,
        "that one was the operator's"
    );
    let metrics = get_text(&http, &format!("{}/metrics", net.admin())).await;
    assert!(
        metrics.contains("cocoon_proxy_auto_withdrawals_total 1\n"),
        "{metrics}"
    );
    net.proxy.shutdown().await;
}
