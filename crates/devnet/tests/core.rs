//! The chain core through its real path: a standard wallet v3r2 deployed and driven by
//! signed external messages in the tycho TVM under the mainnet config.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use cocoon_devnet::chain::{AccountStatus, faucet_address};
use cocoon_devnet::{Devnet, DevnetError, GetMethodId};
use common::{TON, Transfer, Wallet, addr};
use num_bigint::BigInt;

const T0: u32 = 1_750_000_000;

fn seqno(chain: &Devnet, w: &Wallet) -> BigInt {
    let out = chain
        .run_get_method(&w.address, &GetMethodId::Name("seqno".into()), vec![])
        .unwrap();
    assert_eq!(out.exit_code, 0);
    out.stack[0].as_int().unwrap().clone()
}

fn funded_wallet(chain: &mut Devnet) -> Wallet {
    let w = Wallet::from_seed(0x11);
    let txs = chain.faucet(&w.address, 10 * TON).unwrap();
    assert_eq!(txs.len(), 1);
    // Value to a missing account: an uninit account, compute skipped, aborted, no failure.
    assert!(txs[0].aborted && txs[0].compute_skipped && !txs[0].failed());
    assert_eq!(txs[0].in_msg.as_ref().unwrap().src, Some(faucet_address()));
    let info = chain.account(&w.address).unwrap();
    assert_eq!(info.status, AccountStatus::Uninitialized);
    assert_eq!(info.balance, 10 * TON);
    w
}

/// Deploys `w` with its first transfer: 1 TON to `addr(0xb0)`, seqno 0.
fn deploy_wallet(chain: &mut Devnet, w: &Wallet) {
    chain
        .send_external(&w.transfer(
            &w.key,
            Transfer::new(0, T0 + 600, &addr(0xb0), TON).with_init(),
        ))
        .unwrap();
}

#[test]
fn wallet_deploys_and_pays_to_the_nanoton() {
    let mut chain = Devnet::new(T0).unwrap();
    let w = funded_wallet(&mut chain);
    let bob = addr(0xb0);
    let boc = w.transfer(&w.key, Transfer::new(0, T0 + 600, &bob, TON).with_init());
    let txs = chain.send_external(&boc).unwrap();
    assert_eq!(txs.len(), 2, "wallet tx + bob tx");
    let (wtx, btx) = (&txs[0], &txs[1]);
    assert_eq!(wtx.account, w.address);
    assert_eq!(wtx.exit_code, Some(0));
    assert!(!wtx.failed() && wtx.gas_used > 0);
    assert_eq!(wtx.out_msgs.len(), 1);
    let out = &wtx.out_msgs[0];
    assert_eq!(out.value, TON);
    assert_eq!(out.dst, Some(bob.clone()));
    assert_eq!(out.src, Some(w.address.clone()));

    let wallet = chain.account(&w.address).unwrap();
    assert_eq!(wallet.status, AccountStatus::Active);
    assert_eq!(
        wallet.balance,
        10 * TON - TON - out.fwd_fee - wtx.total_fees,
        "balance = funded - value - forwarding - fees"
    );
    assert_eq!(wallet.last_lt, wtx.lt);
    assert_eq!(wallet.last_hash, wtx.hash);

    assert_eq!(btx.account, bob);
    assert!(btx.compute_skipped);
    let b = chain.account(&bob).unwrap();
    assert_eq!(b.status, AccountStatus::Uninitialized);
    assert_eq!(b.balance, TON - btx.total_fees);
    assert_eq!(seqno(&chain, &w), BigInt::from(1));

    // History, newest first, with lt bounds.
    let hist = chain.transactions(&w.address, None, 0, 10);
    assert_eq!(hist.len(), 2);
    assert!(hist[0].lt > hist[1].lt);
    assert_eq!(hist[0].hash, wtx.hash);
    assert_eq!(hist[0].prev_lt, hist[1].lt);
    assert_eq!(
        chain
            .transactions(&w.address, Some(hist[1].lt), 0, 10)
            .len(),
        1
    );
    assert_eq!(
        chain.transactions(&w.address, None, hist[1].lt, 10).len(),
        1
    );
    assert!(chain.transaction(&w.address, wtx.lt, &wtx.hash).is_some());
}

#[test]
fn bounceable_value_to_nobody_bounces_back() {
    let mut chain = Devnet::new(T0).unwrap();
    let w = funded_wallet(&mut chain);
    deploy_wallet(&mut chain, &w);
    let before = chain.account(&w.address).unwrap().balance;
    let carol = addr(0xca);
    let txs = chain
        .send_external(&w.transfer(&w.key, Transfer::new(1, T0 + 600, &carol, TON / 2).bounce()))
        .unwrap();
    assert_eq!(txs.len(), 3, "wallet -> carol (bounce) -> wallet");
    let (send, at_carol, back) = (&txs[0], &txs[1], &txs[2]);
    assert!(at_carol.compute_skipped && at_carol.aborted);
    assert_eq!(at_carol.out_msgs.len(), 1);
    let bounced = &at_carol.out_msgs[0];
    assert!(bounced.bounced && bounced.dst == Some(w.address.clone()));
    assert_eq!(back.account, w.address);
    assert_eq!(back.in_msg.as_ref().unwrap().hash, bounced.hash);
    assert!(
        chain.account(&carol).unwrap().balance == 0,
        "carol never exists"
    );
    let after = chain.account(&w.address).unwrap().balance;
    assert_eq!(
        after,
        before - send.total_fees - TON / 2 - send.out_msgs[0].fwd_fee + bounced.value
            - back.total_fees
    );
    assert!(after < before && after > before - TON / 100);
}

#[test]
fn rejected_externals_leave_no_trace() {
    let mut chain = Devnet::new(T0).unwrap();
    let w = funded_wallet(&mut chain);
    deploy_wallet(&mut chain, &w);
    let (lt, count, bal) = (
        chain.lt(),
        chain.tx_count(),
        chain.account(&w.address).unwrap().balance,
    );
    let stranger = Wallet::from_seed(0x22);
    let cases = [
        (
            w.transfer(&stranger.key, Transfer::new(1, T0 + 600, &addr(0xb0), TON)),
            35,
        ),
        (
            w.transfer(&w.key, Transfer::new(0, T0 + 600, &addr(0xb0), TON)),
            33,
        ),
        // Expired (valid_until <= now): wallet v3r2 throws 35 before looking at the seqno.
        (
            w.transfer(&w.key, Transfer::new(1, T0 - 1, &addr(0xb0), TON)),
            35,
        ),
    ];
    for (boc, code) in cases {
        match chain.send_external(&boc) {
            Err(DevnetError::NotAccepted { exit_code }) => assert_eq!(exit_code, Some(code)),
            other => panic!("expected rejection with {code}, got {other:?}"),
        }
    }
    assert_eq!((chain.lt(), chain.tx_count()), (lt, count));
    assert_eq!(chain.account(&w.address).unwrap().balance, bal);
    // External to an address with neither account nor state init.
    let ghost = Wallet::from_seed(0x33);
    assert!(matches!(
        chain.send_external(&ghost.transfer(&ghost.key, Transfer::new(0, T0 + 600, &addr(1), 1))),
        Err(DevnetError::NotAccepted { .. })
    ));
    // Garbage and wrong message kinds are typed errors.
    assert!(matches!(
        chain.send_external(b"nope"),
        Err(DevnetError::BadBoc(_))
    ));
}

#[test]
fn time_only_moves_forward_and_storage_is_charged() {
    let mut chain = Devnet::new(T0).unwrap();
    let w = funded_wallet(&mut chain);
    deploy_wallet(&mut chain, &w);
    assert!(matches!(
        chain.set_now(u64::from(T0) - 1),
        Err(DevnetError::TimeBackwards { .. })
    ));
    assert_eq!(chain.advance(30 * 86_400).unwrap(), T0 + 30 * 86_400);
    // A message valid until T0+600 has expired now (wallet v3r2 exit 35).
    assert!(matches!(
        chain.send_external(&w.transfer(&w.key, Transfer::new(1, T0 + 600, &addr(0xb0), 1))),
        Err(DevnetError::NotAccepted {
            exit_code: Some(35)
        })
    ));
    let now = chain.now();
    let txs = chain
        .send_external(&w.transfer(&w.key, Transfer::new(1, now + 600, &addr(0xb0), TON / 10)))
        .unwrap();
    assert!(txs[0].storage_fees > 0, "30 days of storage are paid");
    assert_eq!(txs[0].now, now);
    // The getter sees the chain's clock too (wallet v3 has no time getter; check via seqno).
    assert_eq!(seqno(&chain, &w), BigInt::from(2));
}

#[test]
fn getters_report_exit_codes_and_reject_missing_code() {
    let mut chain = Devnet::new(T0).unwrap();
    let w = funded_wallet(&mut chain);
    assert!(matches!(
        chain.run_get_method(&w.address, &GetMethodId::Name("seqno".into()), vec![]),
        Err(DevnetError::NotActive(_))
    ));
    deploy_wallet(&mut chain, &w);
    let out = chain
        .run_get_method(
            &w.address,
            &GetMethodId::Name("no_such_method".into()),
            vec![],
        )
        .unwrap();
    assert_eq!(
        out.exit_code, 32,
        "wallet v3r2's dispatcher throws 32 for unknown ids"
    );
    let by_id = chain
        .run_get_method(&w.address, &GetMethodId::Id(85143), vec![])
        .unwrap();
    assert_eq!(by_id.exit_code, 0, "85143 is seqno's id");
}

#[test]
fn same_inputs_give_the_same_chain() {
    let run = || {
        let mut chain = Devnet::new(T0).unwrap();
        let w = funded_wallet(&mut chain);
        chain
            .send_external(
                &w.transfer(
                    &w.key,
                    Transfer::new(0, T0 + 600, &addr(0xca), TON)
                        .bounce()
                        .with_init(),
                ),
            )
            .unwrap()
            .iter()
            .map(|t| (t.lt, t.hash))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn persistence_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let w = Wallet::from_seed(0x11);
    let (hashes, lt, balance, now) = {
        let mut chain = Devnet::open(dir.path(), T0).unwrap();
        chain.faucet(&w.address, 10 * TON).unwrap();
        deploy_wallet(&mut chain, &w);
        chain.advance(100).unwrap();
        let hashes: Vec<_> = chain
            .transactions(&w.address, None, 0, 10)
            .iter()
            .map(|t| t.hash)
            .collect();
        (
            hashes,
            chain.lt(),
            chain.account(&w.address).unwrap().balance,
            chain.now(),
        )
    };
    let mut reopened = Devnet::open(dir.path(), 1).unwrap();
    assert_eq!(
        reopened.now(),
        now,
        "saved clock wins over the start argument"
    );
    assert_eq!(reopened.lt(), lt);
    assert_eq!(reopened.account(&w.address).unwrap().balance, balance);
    let again: Vec<_> = reopened
        .transactions(&w.address, None, 0, 10)
        .iter()
        .map(|t| t.hash)
        .collect();
    assert_eq!(again, hashes);
    assert_eq!(reopened.tx_count(), 3);
    // And it keeps working: the next transfer uses seqno 1.
    let txs = reopened
        .send_external(&w.transfer(&w.key, Transfer::new(1, now + 600, &addr(0xb0), TON)))
        .unwrap();
    assert_eq!(txs[0].exit_code, Some(0));
    assert_eq!(txs[0].prev_hash, hashes[0]);
}

#[test]
fn runaway_message_loops_are_cut_off_and_kept() {
    // tests/data/pingpong.tolk: sends every message it gets back to itself.
    let code = tycho_types::boc::Boc::decode(include_bytes!("data/pingpong.code.boc")).unwrap();
    let mut chain = Devnet::new(T0).unwrap();
    chain.set_batch_limit(40);
    let before = (chain.tx_count(), chain.last_block().seqno);
    let err = chain
        .deploy(
            code,
            tycho_types::cell::CellBuilder::new().build().unwrap(),
            1_000 * TON,
        )
        .unwrap_err();
    assert!(
        matches!(err, DevnetError::RunawayBatch { limit: 40, left: 1 }),
        "{err:?}"
    );
    assert_eq!(
        chain.tx_count(),
        before.0 + 40,
        "what ran stays on the chain"
    );
    assert_eq!(chain.last_block().seqno, before.1 + 1);
    // The chain keeps working.
    chain.faucet(&addr(9), TON).unwrap();
    assert_eq!(chain.account(&addr(9)).unwrap().balance, TON);
}
