//! `ChainPayoutSink`: a receipt becomes a wallet message to the worker contract.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_ton::chain::AccountStatus;
use cocoon_ton::chain::fake::{FakeChain, account};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::payments::{PaymentPayload, SignedOp, SignedPayment};
use cocoon_ton::wallet::{OutMsg, Wallet, WalletSender};
use cocoon_ton::{Cell, HashBytes};
use cocoon_worker::PayoutSink;
use cocoon_worker::{ChainPayoutSink, DEFAULT_ATTACH_NANOTON};

fn contains(c: &Cell, h: &HashBytes) -> bool {
    c.repr_hash() == h
        || (0..c.reference_count()).any(|i| c.reference_cloned(i).is_some_and(|r| contains(&r, h)))
}

#[tokio::test]
async fn receipt_is_repacked_and_sent_to_the_worker_contract() {
    // Every account, the wallet's included, is uninitialised and holds 10 TON.
    let chain = FakeChain::default();
    chain.set_others(account(AccountStatus::Uninit, 10_000_000_000, None));
    let wallet_key = SigningKey::from_seed(&[3; 32]).unwrap();
    let wallet = Wallet::v4r2(wallet_key.public_key(), 0);
    let sender = WalletSender::new(chain.clone(), wallet, wallet_key).unwrap();
    let wallet_addr = sender.address().clone();
    let sink = ChainPayoutSink::new(sender, DEFAULT_ATTACH_NANOTON);

    let proxy_key = SigningKey::from_seed(&[7; 32]).unwrap();
    let worker_sc = cocoon_ton::parse_address(&format!("0:{}", "22".repeat(32))).unwrap();
    let proxy_excess = cocoon_ton::parse_address(&format!("0:{}", "11".repeat(32))).unwrap();
    let receipt = PaymentPayload {
        op: SignedOp::WorkerPayout,
        query_id: 1,
        tokens: Some(1000),
        contract: worker_sc.clone(),
    }
    .sign(&proxy_key, &proxy_excess)
    .unwrap();
    sink.submit("0:11", receipt.to_boc().unwrap(), 1000)
        .await
        .unwrap();

    let sent = chain.sent();
    assert_eq!(sent.len(), 1, "one external message");
    let ext = cocoon_ton::codec::decode_boc(&sent[0]).unwrap();
    // The internal message: to the worker contract, 0.5 TON, body = the receipt with our
    // wallet as the excess address, still verifying under the proxy key.
    let body = receipt.repack(&wallet_addr);
    let again = SignedPayment::from_cell(&body.to_cell().unwrap()).unwrap();
    assert_eq!(
        again
            .verify(SignedOp::WorkerPayout, &worker_sc, &proxy_key.public_key())
            .unwrap()
            .tokens,
        Some(1000)
    );
    let msg = OutMsg::new(
        worker_sc,
        DEFAULT_ATTACH_NANOTON,
        Some(body.to_cell().unwrap()),
    )
    .to_cell()
    .unwrap();
    assert!(
        contains(&ext, msg.repr_hash()),
        "the payout message is in the wallet message"
    );

    // A malformed receipt is an error, nothing is sent.
    assert!(sink.submit("0:11", vec![1, 2, 3], 5).await.is_err());
    assert_eq!(chain.sent().len(), 1);
}

/// `ensure_contract` step by step: an active contract needs nothing; a missing one with a
/// wallet too poor is refused with nothing sent; with enough it is deployed once (a second
/// check while it is not active yet sends nothing again); a chain that cannot be read is a
/// chain error, not a refusal.
#[tokio::test]
async fn missing_worker_contract_is_deployed_once_and_only_when_affordable() {
    use cocoon_worker::{ContractError, ContractStatus, DEFAULT_DEPLOY_NANOTON};
    let chain = FakeChain::default();
    let key = SigningKey::from_seed(&[4; 32]).unwrap();
    let wallet = Wallet::v4r2(key.public_key(), 0);
    let sender = WalletSender::new(chain.clone(), wallet, key).unwrap();
    let wallet_addr = sender.address().clone();
    let sink = ChainPayoutSink::new(sender, DEFAULT_ATTACH_NANOTON);
    let params =
        cocoon_ton::code::with_child_codes(cocoon_ton::root::CocoonParams::default()).unwrap();
    let owner = cocoon_ton::parse_address(&format!("0:{}", "33".repeat(32))).unwrap();
    let proxy_sc = cocoon_ton::parse_address(&format!("0:{}", "11".repeat(32))).unwrap();
    let contract =
        cocoon_ton::contracts::worker_contract(&params, &owner, &proxy_sc, &HashBytes([7; 32]))
            .unwrap();

    // Active: nothing to do.
    chain.set_account(&contract.address, account(AccountStatus::Active, 1, None));
    assert_eq!(
        sink.ensure_contract(&contract, &proxy_sc).await.unwrap(),
        ContractStatus::Active
    );
    // Missing, but the proxy contract it belongs to is not on chain (a proxy naming an owner
    // it never staked a contract for): nothing deployed, nothing sent.
    chain.set_account(&contract.address, account(AccountStatus::Nonexist, 0, None));
    chain.set_account(
        &wallet_addr,
        account(AccountStatus::Uninit, 10_000_000_000, None),
    );
    assert_eq!(
        sink.ensure_contract(&contract, &proxy_sc).await.unwrap(),
        ContractStatus::ProxyNotActive
    );
    assert!(chain.sent().is_empty());
    chain.set_account(&proxy_sc, account(AccountStatus::Active, 1, None));
    // Missing, and the wallet holds 0.3 TON (needs 0.35): refused, nothing sent.
    chain.set_account(
        &wallet_addr,
        account(
            AccountStatus::Uninit,
            u128::from(DEFAULT_DEPLOY_NANOTON),
            None,
        ),
    );
    match sink.ensure_contract(&contract, &proxy_sc).await {
        Err(ContractError::WalletTooPoor { have, need, .. }) => {
            assert_eq!(have, u128::from(DEFAULT_DEPLOY_NANOTON));
            assert_eq!(need, u128::from(DEFAULT_DEPLOY_NANOTON) + 50_000_000);
        }
        other => panic!("{other:?}"),
    }
    assert!(chain.sent().is_empty());
    // Enough: one deployment (the contract's state init, the configured value).
    chain.set_account(
        &wallet_addr,
        account(AccountStatus::Uninit, 10_000_000_000, None),
    );
    assert_eq!(
        sink.ensure_contract(&contract, &proxy_sc).await.unwrap(),
        ContractStatus::DeploySent
    );
    let sent = chain.sent();
    assert_eq!(sent.len(), 1);
    let ext = cocoon_ton::codec::decode_boc(&sent[0]).unwrap();
    let init = contract.state_init().unwrap();
    assert!(contains(&ext, init.repr_hash()), "the state init is sent");
    assert_eq!(
        sink.ensure_contract(&contract, &proxy_sc).await.unwrap(),
        ContractStatus::DeployPending
    );
    assert_eq!(chain.sent().len(), 1, "not sent twice");
    // The chain cannot be read: an error of the chain, not a refusal.
    chain.fail_reads(true);
    assert!(matches!(
        sink.ensure_contract(&contract, &proxy_sc).await,
        Err(ContractError::Chain { .. })
    ));
}
