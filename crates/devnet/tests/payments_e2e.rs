//! End to end, the way Cocoon's services will do it: a devnet on a random loopback port,
//! `cocoon-ton`'s real `Toncenter` client and v4r2 wallets, the real Tolk contracts.
//!
//! Proxy, client and worker contracts are deployed by their owners' wallets, the client tops
//! up, the proxy signs a charge, the worker collects its payout, and the client closes in two
//! phases across the close delay (the clock is advanced through the API). Checked to the
//! nanoton: the contracts' own accounting (getters), the exact payout messages each owner
//! receives, and conservation of value over every transaction of every account:
//! `minted = Σ Δbalance + Σ fees + Σ forwarding fees of internal messages`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_devnet::TxRecord;
use cocoon_testkit::devnet::{PAYOUT_OP, Party, T0, TON, devnet};
use cocoon_ton::chain::{Chain, StackValue, TxId};
use cocoon_ton::codec::{Coins, Layout};
use cocoon_ton::contracts::{client_contract, proxy_contract, worker_contract};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::messages::{ExtClientTopUp, ExtProxyIncreaseStake, OwnerClientRequestRefund};
use cocoon_ton::payments::{PaymentPayload, SignedOp};
use cocoon_ton::{Toncenter, chain::Devnet as _};
use tycho_types::models::StdAddr;
use tycho_types::prelude::*;

async fn ints(tc: &Toncenter, addr: &StdAddr, method: &str) -> Vec<Option<i128>> {
    let r = tc.run_get_method(addr, method, &[]).await.unwrap();
    r.stack.iter().map(StackValue::as_i128).collect()
}

/// Every transaction of `addr` after `after`, decoded from the `data` BOC toncenter returns.
async fn txs_after(tc: &Toncenter, addr: &StdAddr, after: Option<&TxId>) -> Vec<TxRecord> {
    tc.transactions_since(addr, after, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|t| TxRecord::from_cell(addr.workchain, t.raw.expect("data BOC")).unwrap())
        .collect()
}

fn payouts(txs: &[TxRecord], from: &StdAddr) -> Vec<u128> {
    txs.iter()
        .filter_map(|t| t.in_msg.as_ref())
        .filter(|m| m.src.as_ref() == Some(from))
        .filter(|m| m.body.as_slice().ok().and_then(|mut s| s.load_u32().ok()) == Some(PAYOUT_OP))
        .map(|m| m.value)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_client_worker_lifecycle_to_the_nanoton() {
    let net = devnet().await;
    let tc = net.tc.clone();
    let root = net.root.address.clone();
    assert!(tc.masterchain_seqno().await.unwrap() >= 1);

    let params = cocoon_devnet::root::test_params().unwrap();
    let price = u128::from(params.price_per_token);
    let fee = u128::from(params.worker_fee_per_token);
    let proxy_key = SigningKey::from_seed(&[0x50; 32]).unwrap();
    let proxy_pk = HashBytes(proxy_key.public_key());
    let mut proxy_owner = Party::new(1);
    let mut client_owner = Party::new(2);
    let mut worker_owner = Party::new(3);
    let proxy = proxy_contract(&params, &proxy_owner.address, &proxy_pk, &root).unwrap();
    let client =
        client_contract(&params, &client_owner.address, &proxy.address, &proxy_pk).unwrap();
    let worker =
        worker_contract(&params, &worker_owner.address, &proxy.address, &proxy_pk).unwrap();

    let all = [
        proxy_owner.address.clone(),
        client_owner.address.clone(),
        worker_owner.address.clone(),
        proxy.address.clone(),
        client.address.clone(),
        worker.address.clone(),
    ];
    let mut minted = 0u128;
    for p in [&proxy_owner, &client_owner, &worker_owner] {
        tc.faucet(&p.address, 100 * TON).await.unwrap();
        minted += 100 * TON;
    }
    for a in &all[..3] {
        assert_eq!(tc.account_state(a).await.unwrap().balance, 100 * TON);
    }

    // Proxy: stake 10 TON (deploys the proxy contract).
    let body = ExtProxyIncreaseStake {
        query_id: 1,
        amount: Coins(10 * TON as u64),
        send_excesses_to: proxy_owner.address.clone(),
    }
    .to_cell()
    .unwrap();
    let init = proxy.state_init().unwrap();
    proxy_owner
        .send(&tc, &proxy.address, 10 * TON + TON / 10, body, Some(init))
        .await;
    let p = ints(&tc, &proxy.address, "get_proxy_data").await;
    assert_eq!(p[5], Some(10 * TON as i128), "proxy stake");

    // Client: top up 5 TON (deploys the client contract).
    let body = ExtClientTopUp {
        query_id: 2,
        amount: Coins(5 * TON as u64),
        send_excesses_to: client_owner.address.clone(),
    }
    .to_cell()
    .unwrap();
    let init = client.state_init().unwrap();
    client_owner
        .send(&tc, &client.address, 5 * TON + TON / 10, body, Some(init))
        .await;
    let c = ints(&tc, &client.address, "get_client_data").await;
    assert_eq!(c[4], Some(5 * TON as i128), "client balance after top-up");

    // Proxy-signed charge for 100M tokens, submitted by the proxy owner's wallet.
    let tokens = 100_000_000u64;
    let charge = PaymentPayload {
        op: SignedOp::ClientCharge,
        query_id: 3,
        tokens: Some(tokens),
        contract: client.address.clone(),
    }
    .sign(&proxy_key, &proxy_owner.address)
    .unwrap()
    .to_cell()
    .unwrap();
    proxy_owner
        .send(&tc, &client.address, 7 * TON / 10, charge, None)
        .await;
    let c = ints(&tc, &client.address, "get_client_data").await;
    let charged = u128::from(tokens) * price;
    assert_eq!(c[6], Some(i128::from(tokens)), "tokens used");
    assert_eq!(
        c[4],
        Some((5 * TON - charged) as i128),
        "client balance after charge"
    );

    // Worker: signed payout (deploys the worker contract); the owner gets tokens × fee.
    let payout = PaymentPayload {
        op: SignedOp::WorkerPayout,
        query_id: 4,
        tokens: Some(tokens),
        contract: worker.address.clone(),
    }
    .sign(&proxy_key, &worker_owner.address)
    .unwrap()
    .to_cell()
    .unwrap();
    let init = worker.state_init().unwrap();
    worker_owner
        .send(&tc, &worker.address, 7 * TON / 10, payout, Some(init))
        .await;
    let wtx = txs_after(&tc, &worker_owner.address, None).await;
    assert_eq!(
        payouts(&wtx, &proxy.address),
        vec![u128::from(tokens) * fee],
        "worker payout to the nanoton"
    );
    let p = ints(&tc, &proxy.address, "get_proxy_data").await;
    assert_eq!(
        p[4],
        Some((u128::from(tokens) * (price - fee)) as i128),
        "proxy commission"
    );

    // Client close, phase 1: the part above the stake comes back at once.
    let client_owner_addr = client_owner.address.clone();
    let refund = |q| {
        OwnerClientRequestRefund {
            query_id: q,
            send_excesses_to: client_owner_addr.clone(),
        }
        .to_cell()
        .unwrap()
    };
    let (b5, b6) = (refund(5), refund(6));
    client_owner
        .send(&tc, &client.address, TON / 5, b5, None)
        .await;
    let c = ints(&tc, &client.address, "get_client_data").await;
    let stake = u128::from(params.min_client_stake);
    let delay = u64::from(params.client_delay_before_close);
    assert_eq!(c[3], Some(1), "closing");
    assert_eq!(
        c[7],
        Some(i128::from(T0) + i128::from(delay)),
        "unlock time"
    );
    // Phase 2 too early: the client contract refuses (exit 1007), nothing is paid.
    client_owner
        .send(&tc, &client.address, TON / 5, b6, None)
        .await;
    let ctx = txs_after(&tc, &client.address, None).await;
    assert_eq!(ctx.last().unwrap().exit_code, Some(1007));
    // After the delay, phase 2 forces the rest out of the proxy's stake.
    assert_eq!(
        tc.advance_clock(delay).await.unwrap(),
        u64::from(T0) + delay
    );
    client_owner
        .send(&tc, &client.address, TON / 5, refund(7), None)
        .await;
    let c = ints(&tc, &client.address, "get_client_data").await;
    assert_eq!((c[3], c[4]), (Some(2), Some(0)), "closed and empty");
    let ctx = txs_after(&tc, &client_owner.address, None).await;
    assert_eq!(
        payouts(&ctx, &proxy.address),
        vec![5 * TON - charged - stake, stake],
        "client refunds to the nanoton"
    );
    let p = ints(&tc, &proxy.address, "get_proxy_data").await;
    assert_eq!(
        p[5],
        Some((10 * TON - stake) as i128),
        "forced refund came from the stake"
    );

    // Conservation over every transaction of every account involved.
    let mut balances = 0u128;
    let mut fees = 0u128;
    let mut fwd = 0u128;
    let mut count = 0;
    for a in &all {
        balances += tc.account_state(a).await.unwrap().balance;
        for t in txs_after(&tc, a, None).await {
            count += 1;
            fees += t.total_fees;
            fwd += t
                .out_msgs
                .iter()
                .filter(|m| !m.external_out)
                .map(|m| m.fwd_fee)
                .sum::<u128>();
            assert!(
                !t.failed() || t.exit_code == Some(1007),
                "unexpected failure on {}: {t:?}",
                t.account
            );
        }
    }
    assert!(count >= 20, "only {count} transactions seen");
    assert_eq!(
        minted,
        balances + fees + fwd,
        "value is conserved to the nanoton"
    );
    assert_eq!(tc.clock().await.unwrap(), u64::from(T0) + delay);
}
