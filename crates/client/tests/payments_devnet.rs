//! `TonChannels` against the devnet: the real client and proxy contracts in a TVM behind the
//! real toncenter client, driven by a client owner's v4r2 wallet through one payment
//! channel's whole life — deploy with a top-up and a secret hash, secret change,
//! registration, top-up, a proxy-signed charge, withdrawal, and the two-phase close with the
//! devnet clock moved past `client_delay_before_close`.
//!
//! The contract side is asserted to the nanoton. The wallet side pays gas on top of every
//! amount it moves, so its deltas are asserted within [`FEE_BOUND`] per operation (what the
//! devnet measured is printed by `--nocapture`). Refusals that `TonChannels` can see coming
//! must send nothing: the wallet's last transaction stays the same.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use cocoon_client::{ChannelError, ChannelOps, ChannelState, TonChannels};
use cocoon_proxy::{ClientChain, TonClientChain};
use cocoon_testkit::devnet::{Chainnet, chainnet};
use cocoon_ton::chain::{Chain, TxId};
use cocoon_ton::contracts::{Deployable, client_contract};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::payments::{PaymentPayload, SignedOp, SignedPayment};
use cocoon_ton::wallet::Wallet;
use cocoon_ton::{HashBytes, StdAddr};
use cocoon_ton::{Toncenter, chain::Devnet as _};

const TON: u64 = 1_000_000_000;

/// The most one operation may cost the wallet beyond the coins it moves: its own
/// transaction and forwarding fees, the client and proxy contracts' gas and the returning
/// `excesses`. The devnet measures 10–14 mTON per operation (38 mTON for the first deploy
/// with its secret hash, checked against twice the bound); 25 mTON leaves room without
/// hiding a lost amount (the smallest amount moved here is 1 TON).
const FEE_BOUND: u64 = 25_000_000;

/// The reserve a newly deployed client contract keeps (`CHILD_MIN_BALANCE`).
const CHILD_MIN_BALANCE: u64 = 50_000_000;

/// Channels of a client owner's wallet (seed `seed`) funded with `funds`, and that
/// owner's client contract with our proxy.
async fn channels(net: &Chainnet, seed: u8, funds: u64) -> (TonChannels<Toncenter>, Deployable) {
    let key = SigningKey::from_seed(&[seed; 32]).unwrap();
    let wallet = Wallet::v4r2(key.public_key(), 0);
    let owner = wallet.address().unwrap();
    net.tc.faucet(&owner, u128::from(funds)).await.unwrap();
    let mut ch = TonChannels::new(net.tc.clone(), wallet, key).unwrap();
    ch.poll = Duration::from_millis(20);
    ch.confirm_timeout = Duration::from_secs(20);
    let contract = client_contract(
        &net.params,
        &owner,
        &net.proxy.address,
        &HashBytes(net.proxy_key().public_key()),
    )
    .unwrap();
    (ch, contract)
}

/// The latest transaction of `a` (to show that nothing was sent).
async fn last_tx(net: &Chainnet, a: &StdAddr) -> Option<TxId> {
    net.tc.account_state(a).await.unwrap().last_tx
}

/// A charge receipt the proxy signs for `tokens` (its excess address is the proxy
/// owner's; `TonChannels` re-packs it with the wallet's).
fn charge_receipt(
    net: &Chainnet,
    contract: &StdAddr,
    tokens: u64,
    key: &SigningKey,
) -> SignedPayment {
    PaymentPayload {
        op: SignedOp::ClientCharge,
        query_id: 0x00c0_ffee + tokens,
        tokens: Some(tokens),
        contract: contract.clone(),
    }
    .sign(key, &net.proxy_owner.address)
    .unwrap()
}

/// What an operation cost the wallet beyond `moved` (negative `moved`: coins out of the
/// wallet), asserted to lie in `0..=bound`.
fn fee(op: &str, before: u64, after: u64, moved: i128, bound: u64) -> u64 {
    let fee = i128::from(before) + moved - i128::from(after);
    println!("{op}: the wallet paid {fee} nanoTON of fees");
    assert!(
        (0..=i128::from(bound)).contains(&fee),
        "{op}: the wallet went from {before} to {after} moving {moved}: {fee} nanoTON of fees \
         is outside 0..={bound}"
    );
    fee as u64
}

fn rejected(r: Result<(), ChannelError>) -> String {
    match r {
        Err(ChannelError::Rejected(s)) => {
            println!("refused: {s}");
            s
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_lives_and_closes_on_the_devnet() {
    let net = chainnet().await;
    let tc = &net.tc;
    let (ch, contract) = channels(&net, 2, 100 * TON).await;
    let sc = contract.address.clone();
    let owner = ch.owner();
    let price = net.params.price_per_token;
    let stake = net.params.min_client_stake;
    assert_eq!(ch.state(&sc).await.unwrap(), None, "not deployed yet");
    // Watches the proxy contract for registrations from here on.
    let registrations = TonClientChain::new(
        tc.clone(),
        net.proxy.address.clone(),
        Duration::from_millis(20),
    )
    .await
    .unwrap();

    // Deploy: the top-up creates the contract, the second message sets the secret hash.
    let hash = [0x5a; 32];
    let w = ch.wallet_balance().await.unwrap();
    assert_eq!(w, 100 * TON);
    ch.deploy(&contract, 5 * TON, Some(hash)).await.unwrap();
    let st = ch.state(&sc).await.unwrap().expect("deployed");
    assert_eq!(
        st,
        ChannelState {
            state: 0,
            balance: 5 * TON,
            stake,
            tokens_used: 0,
            unlock_ts: 0,
            secret_hash: Some(hash),
        }
    );
    // Two operations (and the wallet's own deployment); the new contract keeps its reserve.
    let w2 = ch.wallet_balance().await.unwrap();
    fee(
        "deploy + secret hash",
        w,
        w2,
        -i128::from(5 * TON + CHILD_MIN_BALANCE),
        2 * FEE_BOUND,
    );

    // A new secret hash.
    let hash2 = [0x6b; 32];
    ch.set_secret_hash(&sc, hash2).await.unwrap();
    assert_eq!(
        ch.state(&sc).await.unwrap().unwrap().secret_hash,
        Some(hash2)
    );

    // Registration: the nonce reaches the proxy contract, where the proxy looks for it.
    let nonce = 0x1234_5678_9abc_def0;
    ch.register(&sc, nonce).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        registrations.wait_register(&sc, nonce),
    )
    .await
    .expect("the registration is on the proxy contract")
    .unwrap();

    // Top-up: the balance grows by exactly the amount.
    let w = ch.wallet_balance().await.unwrap();
    ch.top_up(&sc, 3 * TON).await.unwrap();
    let st = ch.state(&sc).await.unwrap().unwrap();
    assert_eq!(st.balance, 8 * TON);
    let w2 = ch.wallet_balance().await.unwrap();
    fee("top-up", w, w2, -i128::from(3 * TON), FEE_BOUND);

    // A proxy-signed charge: tokens_used becomes the receipt's, the balance drops by exactly
    // tokens × price.
    let tokens = 1_234_567;
    let receipt = charge_receipt(&net, &sc, tokens, &net.proxy_key());
    let w = ch.wallet_balance().await.unwrap();
    ch.charge(&sc, &receipt).await.unwrap();
    let st = ch.state(&sc).await.unwrap().unwrap();
    assert_eq!(st.tokens_used, tokens);
    assert_eq!(st.balance, 8 * TON - tokens * price);
    let w2 = ch.wallet_balance().await.unwrap();
    fee("charge", w, w2, 0, FEE_BOUND);
    // The same receipt again, or one signed by another key: refused, nothing sent.
    let last = last_tx(&net, &owner).await;
    let why = rejected(ch.charge(&sc, &receipt).await);
    assert!(why.contains("not newer"), "{why}");
    let forged = charge_receipt(
        &net,
        &sc,
        2 * tokens,
        &SigningKey::from_seed(&[9; 32]).unwrap(),
    );
    let why = rejected(ch.charge(&sc, &forged).await);
    assert!(why.contains("bad signature"), "{why}");
    assert_eq!(last_tx(&net, &owner).await, last, "nothing was sent");
    assert_eq!(ch.state(&sc).await.unwrap().unwrap(), st);

    // Withdrawal: everything above the stake comes back to the wallet.
    let above = st.balance - stake;
    let w = ch.wallet_balance().await.unwrap();
    ch.withdraw(&sc).await.unwrap();
    let st = ch.state(&sc).await.unwrap().unwrap();
    assert_eq!((st.state, st.balance, st.stake), (0, stake, stake));
    let w2 = ch.wallet_balance().await.unwrap();
    fee("withdraw", w, w2, i128::from(above), FEE_BOUND);
    let last = last_tx(&net, &owner).await;
    let why = rejected(ch.withdraw(&sc).await);
    assert!(why.contains("nothing to withdraw"), "{why}");
    assert_eq!(last_tx(&net, &owner).await, last, "nothing was sent");

    // Close, phase one: closing, unlock_ts set, and what is above the stake comes back.
    ch.top_up(&sc, 2 * TON).await.unwrap();
    let w = ch.wallet_balance().await.unwrap();
    let now = tc.clock().await.unwrap();
    ch.request_refund(&sc).await.unwrap();
    let st = ch.state(&sc).await.unwrap().unwrap();
    let unlock = now + u64::from(net.params.client_delay_before_close);
    assert_eq!(
        (st.state, st.balance, u64::from(st.unlock_ts)),
        (1, stake, unlock)
    );
    let w2 = ch.wallet_balance().await.unwrap();
    fee("close, phase one", w, w2, i128::from(2 * TON), FEE_BOUND);
    // Closing: no withdrawal, and no second phase before unlock_ts; nothing sent.
    let last = last_tx(&net, &owner).await;
    let why = rejected(ch.withdraw(&sc).await);
    assert!(why.contains("closing"), "{why}");
    let why = rejected(ch.request_refund(&sc).await);
    assert!(why.contains("unlocks at"), "{why}");
    assert_eq!(last_tx(&net, &owner).await, last, "nothing was sent");

    // Close, phase two after the delay: closed, and the rest (the stake) comes back.
    tc.set_clock(unlock).await.unwrap();
    let w = ch.wallet_balance().await.unwrap();
    ch.request_refund(&sc).await.unwrap();
    let st = ch.state(&sc).await.unwrap().unwrap();
    assert_eq!((st.state, st.balance), (2, 0));
    let w2 = ch.wallet_balance().await.unwrap();
    fee("close, phase two", w, w2, i128::from(stake), FEE_BOUND);
    // Closed: nothing more goes in.
    let why = rejected(ch.top_up(&sc, TON).await);
    assert!(why.contains("closed"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poor_wallet_sends_nothing() {
    let net = chainnet().await;
    let (ch, contract) = channels(&net, 3, TON).await;
    let owner = ch.owner();
    let last = last_tx(&net, &owner).await;
    // 5 TON do not fit into 1 TON.
    match ch.deploy(&contract, 5 * TON, None).await {
        Err(ChannelError::WalletTooLow { have, need }) => {
            assert_eq!(have, TON);
            assert_eq!(
                need,
                5 * TON + ch.fees.top_up_fee + CHILD_MIN_BALANCE + ch.fees.wallet_margin
            );
        }
        other => panic!("expected WalletTooLow, got {other:?}"),
    }
    assert_eq!(last_tx(&net, &owner).await, last, "nothing was sent");
    assert_eq!(ch.state(&contract.address).await.unwrap(), None);
    assert_eq!(ch.wallet_balance().await.unwrap(), TON);

    // What fits is sent; then an owner operation whose attached value no longer fits is
    // refused the same way.
    ch.deploy(&contract, TON / 2, None).await.unwrap();
    assert_eq!(
        ch.state(&contract.address).await.unwrap().unwrap().balance,
        TON / 2
    );
    let last = last_tx(&net, &owner).await;
    let r = ch.set_secret_hash(&contract.address, [1; 32]).await;
    let want = ch.fees.op_value + ch.fees.wallet_margin;
    assert!(
        matches!(r, Err(ChannelError::WalletTooLow { need, .. }) if need == want),
        "{r:?}"
    );
    assert_eq!(last_tx(&net, &owner).await, last, "nothing was sent");
}

/// Refusals only the contracts see are reported with their error in words: a deploying
/// top-up without its gas reaches the proxy contract short of the amount, and an owner
/// operation with less than the contracts' 0.05 TON minimum is refused by the client
/// contract (its value bounces back to the wallet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_by_the_contracts_are_explained() {
    let net = chainnet().await;
    let (mut ch, contract) = channels(&net, 4, 100 * TON).await;
    let sc = contract.address.clone();

    // No gas on top of the amount: the client contract keeps its reserve out of the amount
    // and forwards less than it booked; the proxy contract refuses.
    ch.fees.top_up_fee = 0;
    let why = rejected(ch.deploy(&contract, 2 * TON, None).await);
    assert!(
        why.contains("proxy contract") && why.contains("exit code 1008"),
        "{why}"
    );
    // The client contract did book it (this is what the message warns about).
    assert_eq!(ch.state(&sc).await.unwrap().unwrap().balance, 2 * TON);

    // Too little attached to an owner operation: the client contract refuses, nothing changes
    // but the fees.
    ch.fees.op_value = TON / 100;
    let w = ch.wallet_balance().await.unwrap();
    let why = rejected(ch.set_secret_hash(&sc, [7; 32]).await);
    assert!(
        why.contains("client contract") && why.contains("exit code 1008"),
        "{why}"
    );
    assert_eq!(ch.state(&sc).await.unwrap().unwrap().secret_hash, None);
    let w2 = ch.wallet_balance().await.unwrap();
    fee("refused secret hash change", w, w2, 0, FEE_BOUND);
}
