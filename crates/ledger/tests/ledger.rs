//! Directed tests of the ledger over the in-memory store: arithmetic, funds, receipts,
//! checkpoints, rollback detection, integrity, params change, store failures.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;

use cocoon_ledger::{
    AccountKey, ChainCheckpoint, ClientFunds, Ledger, LedgerDb, LedgerError, LedgerEvent, META_KEY,
    MemStore, OpenError, OpenOptions, RequestId, Status,
};
use cocoon_openai::usage::{PriceTable, Usage};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::payments::SignedOp;
use cocoon_ton::{HashBytes, StdAddr};

fn key() -> SigningKey {
    SigningKey::from_seed(&[0x11; 32]).unwrap()
}

/// The simulation's prices of params version 0 (20 nanoTON a token, 16 to the worker).
fn prices() -> PriceTable {
    cocoon_ledger::sim::prices(0)
}

fn addr(n: u8) -> StdAddr {
    StdAddr::new(0, HashBytes([n; 32]))
}

const CLIENT: u8 = 1;
const CLIENT2: u8 = 2;
const WORKER: u8 = 9;

fn opts(chain: &[(u32, ChainCheckpoint)]) -> OpenOptions {
    OpenOptions {
        params_version: 1,
        prices: prices(),
        chain: chain.iter().copied().collect::<BTreeMap<_, _>>(),
        session: [3; 32],
    }
}

fn open(store: &MemStore, chain: &[(u32, ChainCheckpoint)]) -> LedgerDb<MemStore> {
    LedgerDb::open(store.clone(), &key(), opts(chain)).unwrap()
}

fn funded(store: &MemStore, balance: u64, stake: u64) -> LedgerDb<MemStore> {
    let mut db = open(store, &[]);
    for c in [CLIENT, CLIENT2] {
        let p = db
            .observe_client(&addr(c), ClientFunds { balance, stake }, 0, Status::Open)
            .unwrap();
        db.durable(p).unwrap();
    }
    db
}

/// Reserve, settle and commit one request; returns the settlement.
fn serve(db: &mut LedgerDb<MemStore>, id: u64, client: u8, usage: &Usage, coef: u64) -> u64 {
    let req = RequestId::from_u64(id);
    db.reserve(&addr(client), req, 10_000).unwrap();
    let p = db.settle(req, &addr(WORKER), usage, coef).unwrap();
    db.durable(p).unwrap().tokens
}

fn checkpoint_and_confirm(db: &mut LedgerDb<MemStore>) -> ChainCheckpoint {
    let p = db.prepare_checkpoint().unwrap();
    let c = db.durable(p).unwrap();
    let p = db.confirm_checkpoint(c).unwrap();
    db.durable(p).unwrap();
    c
}

fn usage_detailed() -> Usage {
    cocoon_ledger::sim::usage(100, 50, 40, 10)
}

#[test]
fn price_and_commission_match_hand_computed_nanoton() {
    let store = MemStore::new();
    let mut db = funded(&store, 1_000_000_000, 1_000_000_000);
    let req = RequestId::from_u64(1);
    db.reserve(&addr(CLIENT), req, 1000).unwrap();
    let p = db
        .settle(req, &addr(WORKER), &usage_detailed(), 1500)
        .unwrap();
    let s = db.durable(p).unwrap();
    // prompt 60 × 1.5 × 1.0 = 90; cached 40 × 1.5 × 0.1 = 6; completion 40 × 1.5 × 2.0 = 120;
    // reasoning 10 × 1.5 × 1.5 = 22.5 → 22. Total 238 adjusted tokens.
    assert_eq!(s.tokens, 238);
    assert_eq!(s.client_nanoton, 238 * 20); // 4760
    assert_eq!(s.worker_nanoton, 238 * 16); // 3808
    assert_eq!(s.commission_nanoton, 952);
    assert_eq!(
        (s.client_tokens, s.worker_tokens, s.reserved),
        (238, 238, 1000)
    );
    let c = db.account(&db.client_key(&addr(CLIENT))).unwrap();
    let w = db.account(&db.worker_key(&addr(WORKER))).unwrap();
    assert_eq!((c.tokens, c.nanoton, c.reserved), (238, 4760, 0));
    assert_eq!((w.tokens, w.nanoton), (238, 3808));
    assert_eq!(db.commission_nanoton(), 952);
    // A second request at coefficient 1.0 with plain usage: 7 + 2×3 = 13 tokens.
    assert_eq!(serve(&mut db, 2, CLIENT, &Usage::new(7, 3), 1000), 13);
    let t = db.totals();
    assert_eq!((t.client_tokens, t.worker_tokens), (251, 251));
    assert_eq!(t.client_nanoton, 5020);
    assert_eq!(t.worker_nanoton + t.commission_nanoton, 5020);
    assert!(db.audit().is_empty());
}

#[test]
fn reservations_respect_balance_and_stake() {
    let store = MemStore::new();
    // balance 1000 nanoTON / 20 = 50 tokens; stake 600 / 20 = 30 tokens → 30 available.
    let mut db = funded(&store, 1000, 600);
    let ck = db.client_key(&addr(CLIENT));
    assert_eq!(db.account(&ck).unwrap().available, 30);
    assert_eq!(
        db.reserve(&addr(CLIENT), RequestId::from_u64(1), 31),
        Err(LedgerError::OutOfFunds {
            requested: 31,
            available: 30
        })
    );
    db.reserve(&addr(CLIENT), RequestId::from_u64(1), 30)
        .unwrap();
    assert_eq!(
        db.reserve(&addr(CLIENT), RequestId::from_u64(2), 1),
        Err(LedgerError::OutOfFunds {
            requested: 1,
            available: 0
        })
    );
    assert_eq!(
        db.reserve(&addr(CLIENT), RequestId::from_u64(1), 0),
        Err(LedgerError::DuplicateRequest(RequestId::from_u64(1)))
    );
    // The other client is independent.
    db.reserve(&addr(CLIENT2), RequestId::from_u64(3), 30)
        .unwrap();
    assert_eq!(db.cancel(RequestId::from_u64(1)), Ok(30));
    assert_eq!(db.account(&ck).unwrap().available, 30);
    // Settle 10 tokens: 10 used, 20 left.
    db.reserve(&addr(CLIENT), RequestId::from_u64(4), 15)
        .unwrap();
    let p = db
        .settle(
            RequestId::from_u64(4),
            &addr(WORKER),
            &Usage::new(10, 0),
            1000,
        )
        .unwrap();
    db.durable(p).unwrap();
    assert_eq!(db.account(&ck).unwrap().available, 20);
    // The chain charged those 10 tokens and the balance fell to 800: paid = 800/20 + 10 = 50,
    // stake bound = 30 + 10 = 40 → 40 − 10 used = 30 available.
    let p = db
        .observe_client(
            &addr(CLIENT),
            ClientFunds {
                balance: 800,
                stake: 600,
            },
            10,
            Status::Open,
        )
        .unwrap();
    db.durable(p).unwrap();
    assert_eq!(db.account(&ck).unwrap().available, 30);
    // Unknown client, unknown request.
    assert!(matches!(
        db.reserve(&addr(77), RequestId::from_u64(9), 1),
        Err(LedgerError::UnknownAccount(_))
    ));
    assert_eq!(
        db.cancel(RequestId::from_u64(99)),
        Err(LedgerError::UnknownRequest(RequestId::from_u64(99)))
    );
    // A closing client takes no new request.
    let p = db
        .observe_client(
            &addr(CLIENT2),
            ClientFunds {
                balance: 1000,
                stake: 600,
            },
            0,
            Status::Closing,
        )
        .unwrap();
    db.durable(p).unwrap();
    assert!(matches!(
        db.reserve(&addr(CLIENT2), RequestId::from_u64(10), 1),
        Err(LedgerError::NotOpen(_))
    ));
    assert!(db.audit().is_empty());
}

#[test]
fn parts_are_checked_and_overrun_is_booked_at_the_reservation() {
    let store = MemStore::new();
    let mut db = funded(&store, 1_000_000, 1_000_000);
    let req = RequestId::from_u64(1);
    db.reserve(&addr(CLIENT), req, 100).unwrap();
    // 40 prompt + 2×30 completion = 100: fits exactly.
    assert_eq!(db.check_part(req, &Usage::new(40, 30), 1000), Ok(100));
    assert!(!db.would_exceed(req, &Usage::new(40, 30), 1000));
    assert_eq!(
        db.check_part(req, &Usage::new(40, 31), 1000),
        Err(LedgerError::ReservationExceeded {
            reserved: 100,
            used: 102
        })
    );
    assert!(db.would_exceed(RequestId::from_u64(2), &Usage::new(0, 0), 1000));
    // The final usage exceeds the reservation: booked at the reservation, overrun visible.
    let p = db
        .settle(req, &addr(WORKER), &Usage::new(40, 31), 1000)
        .unwrap();
    let s = db.durable(p).unwrap();
    assert_eq!((s.tokens, s.reserved, s.reported), (100, 100, 102));
    assert_eq!(
        db.account(&db.client_key(&addr(CLIENT))).unwrap().tokens,
        100
    );
    assert!(db.audit().is_empty());
}

#[test]
fn settlement_is_hidden_until_committed_and_failed_commits_retry() {
    let store = MemStore::new();
    let mut db = funded(&store, 1_000_000, 1_000_000);
    let req = RequestId::from_u64(1);
    db.reserve(&addr(CLIENT), req, 100).unwrap();
    let p = db
        .settle(req, &addr(WORKER), &Usage::new(5, 5), 1000)
        .unwrap();
    let p = db.take_committed(p).unwrap_err(); // not durable: cannot be told to anyone
    store.fail_next_commits(1);
    assert!(db.commit().is_err());
    let p = db.take_committed(p).unwrap_err();
    assert_eq!(db.uncommitted(), 1);
    db.commit().unwrap();
    assert_eq!(db.take_committed(p).unwrap().tokens, 15);
    // Reopen: the charge is there.
    drop(db);
    let db = open(&store, &[]);
    assert_eq!(
        db.account(&db.client_key(&addr(CLIENT))).unwrap().tokens,
        15
    );
}

#[test]
fn receipts_only_after_a_confirmed_checkpoint_and_only_increase() {
    let store = MemStore::new();
    let mut db = funded(&store, 1_000_000, 1_000_000);
    let k = key();
    let ck = db.client_key(&addr(CLIENT));
    let wk = db.worker_key(&addr(WORKER));
    assert_eq!(serve(&mut db, 1, CLIENT, &Usage::new(10, 5), 1000), 20);
    // Committed, but no checkpoint: nothing to sign.
    assert_eq!(db.receipt(&ck, 1, &addr(CLIENT), &k), Ok(None));
    let p = db.prepare_checkpoint().unwrap();
    let p = db.take_committed(p).unwrap_err(); // can't send save_state before the commit
    let c = db.durable(p).unwrap();
    assert_eq!(c.seqno, 1);
    // Prepared and sent, not yet seen on chain: still nothing.
    assert_eq!(db.receipt(&ck, 1, &addr(CLIENT), &k), Ok(None));
    // Usage after the checkpoint is not covered by it.
    assert_eq!(serve(&mut db, 2, CLIENT, &Usage::new(3, 0), 1000), 3);
    let p = db.confirm_checkpoint(c).unwrap();
    // Confirmed in memory only: refused until durable.
    assert_eq!(
        db.receipt(&ck, 1, &addr(CLIENT), &k),
        Err(LedgerError::NotDurable)
    );
    db.durable(p).unwrap();
    let r = db.receipt(&ck, 1, &addr(CLIENT), &k).unwrap().unwrap();
    assert_eq!((r.op, r.tokens), (SignedOp::ClientCharge, 20));
    let payload = r
        .payment
        .verify(SignedOp::ClientCharge, &addr(CLIENT), &k.public_key())
        .unwrap();
    assert_eq!(payload.tokens, Some(20));
    let w = db.receipt(&wk, 2, &addr(WORKER), &k).unwrap().unwrap();
    assert_eq!((w.op, w.tokens), (SignedOp::WorkerPayout, 20));
    w.payment
        .verify(SignedOp::WorkerPayout, &addr(WORKER), &k.public_key())
        .unwrap();
    // Next checkpoint covers 23.
    checkpoint_and_confirm(&mut db);
    let r2 = db.receipt(&ck, 3, &addr(CLIENT), &k).unwrap().unwrap();
    assert_eq!(r2.tokens, 23);
    // The contract accepts it after the first one (strictly increasing).
    r2.payment
        .verify_newer(
            SignedOp::ClientCharge,
            &addr(CLIENT),
            &k.public_key(),
            r.tokens,
        )
        .unwrap();
    // After a restart, receipts continue from the durable confirmed amount.
    let c2 = db.confirmed_checkpoint().unwrap();
    drop(db);
    let mut db = open(&store, &[(1, c2)]);
    assert_eq!(
        db.receipt(&ck, 4, &addr(CLIENT), &k)
            .unwrap()
            .unwrap()
            .tokens,
        23
    );
    let v = db.account(&ck).unwrap();
    assert_eq!((v.tokens, v.db_tokens, v.chain_tokens), (23, 23, 23));
}

fn due(
    db: &LedgerDb<MemStore>,
    client: u128,
    worker: u128,
    now: u64,
) -> Vec<(AccountKey, u64, bool)> {
    let policy = cocoon_ledger::DuePolicy {
        min_client_charge: client,
        min_worker_payout: worker,
        resend_after_secs: 3600,
    };
    db.due(&policy, now)
        .into_iter()
        .map(|d| (d.key, d.tokens, d.last))
        .collect()
}

#[test]
fn settlements_due_follow_the_thresholds() {
    let store = MemStore::new();
    let mut db = funded(&store, 1_000_000, 1_000_000);
    serve(&mut db, 1, CLIENT, &Usage::new(100, 0), 1000);
    assert!(due(&db, 1, 1, 0).is_empty()); // nothing confirmed yet
    checkpoint_and_confirm(&mut db);
    let ck = db.client_key(&addr(CLIENT));
    let wk = db.worker_key(&addr(WORKER));
    // 100 tokens: client 2000 nanoTON, worker 1600 nanoTON.
    assert_eq!(
        due(&db, 2000, 1600, 0),
        vec![(ck.clone(), 100, false), (wk.clone(), 100, false)]
    );
    assert_eq!(due(&db, 2001, 1600, 0), vec![(wk.clone(), 100, false)]);
    assert!(due(&db, 2001, 1601, 0).is_empty());
    // Once the chain shows them settled, nothing is due.
    let p = db
        .observe_client(
            &addr(CLIENT),
            ClientFunds {
                balance: 998_000,
                stake: 1_000_000,
            },
            100,
            Status::Open,
        )
        .unwrap();
    db.durable(p).unwrap();
    let p = db.observe_worker(&addr(WORKER), 100).unwrap();
    db.durable(p).unwrap();
    assert!(due(&db, 1, 1, 0).is_empty());
}

#[test]
fn a_small_stake_lowers_the_charge_threshold() {
    // Stake 3000 nanoTON: the client is charged once 1500 are owed, far below 1 TON, so its
    // credit (the stake beyond what was charged) does not run out.
    let store = MemStore::new();
    let mut db = funded(&store, 1_000_000, 3_000);
    let req = RequestId::from_u64(1);
    db.reserve(&addr(CLIENT), req, 100).unwrap();
    let p = db
        .settle(req, &addr(WORKER), &Usage::new(75, 0), 1000) // 1500 nanoTON
        .unwrap();
    db.durable(p).unwrap();
    checkpoint_and_confirm(&mut db);
    let ck = db.client_key(&addr(CLIENT));
    assert_eq!(due(&db, 1_000_000_000, u128::MAX, 0), vec![(ck, 75, false)]);
}

#[test]
fn submitted_receipts_are_remembered_across_restarts_and_resent_only_late() {
    let store = MemStore::new();
    let mut db = funded(&store, 1_000_000, 1_000_000);
    serve(&mut db, 1, CLIENT, &Usage::new(100, 0), 1000);
    let c = checkpoint_and_confirm(&mut db);
    let ck = db.client_key(&addr(CLIENT));
    assert_eq!(due(&db, 1, u128::MAX, 1000), vec![(ck.clone(), 100, false)]);
    let p = db.receipt_submitted(&ck, 100, 1000, false).unwrap();
    db.durable(p).unwrap();
    assert!(due(&db, 1, u128::MAX, 1001).is_empty());
    drop(db);
    let db = open(&store, &[(1, c)]);
    assert_eq!(
        db.account(&ck).unwrap().submitted,
        cocoon_ledger::Submitted {
            tokens: 100,
            at: 1000,
            last: false
        }
    );
    assert!(
        due(&db, 1, u128::MAX, 1001).is_empty(),
        "not sent again after a restart"
    );
    // Still not on chain an hour later: sent again.
    assert_eq!(due(&db, 1, u128::MAX, 4600), vec![(ck, 100, false)]);
}

#[test]
fn a_closing_client_owes_everything_at_once_and_then_gets_its_final_receipt() {
    let store = MemStore::new();
    let mut db = funded(&store, 1_000_000, 1_000_000);
    serve(&mut db, 1, CLIENT, &Usage::new(3, 0), 1000); // 60 nanoTON, far below any threshold
    checkpoint_and_confirm(&mut db);
    let ck = db.client_key(&addr(CLIENT));
    assert!(due(&db, 1_000_000_000, u128::MAX, 0).is_empty());
    assert!(!db.urgent());
    // The client asks for its refund: the contract is closing.
    let funds = ClientFunds {
        balance: 1_000_000,
        stake: 1_000_000,
    };
    let p = db
        .observe_client(&addr(CLIENT), funds, 0, Status::Closing)
        .unwrap();
    db.durable(p).unwrap();
    assert!(db.urgent());
    assert!(
        db.reserve(&addr(CLIENT), RequestId::from_u64(9), 1)
            .is_err()
    );
    // Nothing is running and everything is checkpointed: the final (grant-refund) receipt.
    assert_eq!(
        due(&db, 1_000_000_000, u128::MAX, 0),
        vec![(ck.clone(), 3, true)]
    );
    let r = db.final_receipt(&ck, 0, &addr(WORKER), &key()).unwrap();
    assert_eq!(r.tokens, 3);
    let p = db.receipt_submitted(&ck, 3, 10, true).unwrap();
    db.durable(p).unwrap();
    assert!(!db.urgent());
    assert!(due(&db, 1_000_000_000, u128::MAX, 20).is_empty());
    // Usage not yet checkpointed: a plain charge of what is covered, no final receipt yet.
    let mut db2 = funded(&MemStore::new(), 1_000_000, 1_000_000);
    serve(&mut db2, 1, CLIENT, &Usage::new(3, 0), 1000);
    checkpoint_and_confirm(&mut db2);
    serve(&mut db2, 2, CLIENT, &Usage::new(4, 0), 1000);
    let p = db2
        .observe_client(&addr(CLIENT), funds, 0, Status::Closing)
        .unwrap();
    db2.durable(p).unwrap();
    assert_eq!(
        due(&db2, 1_000_000_000, u128::MAX, 0),
        vec![(db2.client_key(&addr(CLIENT)), 3, false)]
    );
    assert_eq!(db2.clients_to_watch(), vec![db2.client_key(&addr(CLIENT))]);
}

#[test]
fn unknown_checkpoint_on_chain_halts_everything() {
    let store = MemStore::new();
    let mut db = funded(&store, 1_000_000, 1_000_000);
    serve(&mut db, 1, CLIENT, &Usage::new(10, 0), 1000);
    let c = checkpoint_and_confirm(&mut db);
    let forged = ChainCheckpoint {
        seqno: c.seqno + 1,
        hash: [0xee; 32],
    };
    assert_eq!(
        db.confirm_checkpoint(forged).map(|_| ()),
        Err(LedgerError::UnknownCheckpoint(forged))
    );
    assert!(db.halted().is_some());
    assert!(
        db.events()
            .contains(&LedgerEvent::UnknownCheckpoint(forged))
    );
    let ck = db.client_key(&addr(CLIENT));
    assert!(matches!(
        db.receipt(&ck, 1, &addr(CLIENT), &key()),
        Err(LedgerError::Halted(_))
    ));
    assert!(matches!(
        db.reserve(&addr(CLIENT), RequestId::from_u64(5), 1),
        Err(LedgerError::Halted(_))
    ));
    // And the same chain refuses the database at the next start.
    drop(db);
    assert!(matches!(
        LedgerDb::open(store.clone(), &key(), opts(&[(1, forged)])),
        Err(OpenError::RolledBack { .. })
    ));
}

#[test]
fn restored_old_copy_is_refused_when_the_chain_is_ahead() {
    let store = MemStore::new();
    let mut db = funded(&store, 1_000_000, 1_000_000);
    serve(&mut db, 1, CLIENT, &Usage::new(10, 0), 1000);
    let c1 = checkpoint_and_confirm(&mut db);
    let old = store.deep_copy(); // the backup
    serve(&mut db, 2, CLIENT, &Usage::new(10, 0), 1000);
    let p = db.prepare_checkpoint().unwrap();
    let c2 = db.durable(p).unwrap();
    let backup_with_pending = store.deep_copy(); // knows c2 as prepared
    let p = db.confirm_checkpoint(c2).unwrap();
    db.durable(p).unwrap();
    drop(db);
    // The chain shows c2; the old copy only knew c1.
    match LedgerDb::open(old.clone(), &key(), opts(&[(1, c2)])) {
        Err(OpenError::RolledBack {
            chain,
            db_confirmed,
            ..
        }) => {
            assert_eq!(chain, c2);
            assert_eq!(db_confirmed, Some(c1));
        }
        other => panic!("old copy accepted: {other:?}"),
    }
    // A copy taken after c2 was prepared is the same history: accepted, c2 confirmed on open.
    let db = LedgerDb::open(backup_with_pending, &key(), opts(&[(1, c2)])).unwrap();
    assert_eq!(db.confirmed_checkpoint(), Some(c2));
    assert_eq!(
        db.account(&db.client_key(&addr(CLIENT)))
            .unwrap()
            .chain_tokens,
        20
    );
    // A deleted database with checkpoints on chain is refused too.
    assert!(matches!(
        LedgerDb::open(MemStore::new(), &key(), opts(&[(1, c1)])),
        Err(OpenError::RolledBack { .. })
    ));
    // A chain view behind the database is refused rather than trusted.
    assert!(matches!(
        LedgerDb::open(store.clone(), &key(), opts(&[(1, c1)])),
        Err(OpenError::ChainBehind { .. })
    ));
    assert!(matches!(
        LedgerDb::open(store.clone(), &key(), opts(&[])),
        Err(OpenError::ChainBehind { .. })
    ));
    // The real database opens.
    open(&store, &[(1, c2)]);
}

#[test]
fn tampered_row_freezes_only_its_account() {
    let store = MemStore::new();
    let mut db = funded(&store, 1_000_000, 1_000_000);
    serve(&mut db, 1, CLIENT, &Usage::new(10, 0), 1000);
    serve(&mut db, 2, CLIENT2, &Usage::new(10, 0), 1000);
    let c = checkpoint_and_confirm(&mut db);
    let ck1 = db.client_key(&addr(CLIENT));
    let ck2 = db.client_key(&addr(CLIENT2));
    drop(db);
    // Lower the client's usage in the stored JSON (keeping the old MAC).
    let row = ck1.row_key();
    let mut v = store.raw(&row).unwrap();
    let json = String::from_utf8(v.split_off(32)).unwrap();
    let forged = json.replacen("\"tokens\":10", "\"tokens\":1", 1);
    assert_ne!(forged, json);
    v.extend_from_slice(forged.as_bytes());
    store.set_raw(&row, v);

    let mut db = open(&store, &[(1, c)]);
    assert!(
        db.events()
            .iter()
            .any(|e| matches!(e, LedgerEvent::CorruptRow { row_key, .. } if *row_key == row))
    );
    assert_eq!(db.frozen().len(), 1);
    assert!(matches!(
        db.reserve(&addr(CLIENT), RequestId::from_u64(3), 1),
        Err(LedgerError::Frozen { .. })
    ));
    assert!(matches!(
        db.receipt(&ck1, 1, &addr(CLIENT), &key()),
        Err(LedgerError::Frozen { .. })
    ));
    assert!(db.unfreeze(&ck1).is_err()); // untrusted data stays frozen
    // The other client works: requests, checkpoints, receipts.
    serve(&mut db, 4, CLIENT2, &Usage::new(5, 0), 1000);
    let c2 = checkpoint_and_confirm(&mut db);
    let r = db
        .receipt(&ck2, 1, &addr(CLIENT2), &key())
        .unwrap()
        .unwrap();
    assert_eq!(r.tokens, 15);
    // The tampered row was never overwritten (the evidence stays).
    assert!(String::from_utf8_lossy(&store.raw(&row).unwrap()[32..]).contains("\"tokens\":1,"));
    // A row moved under another account's key fails too (the MAC covers the key).
    let moved = store.raw(&ck2.row_key()).unwrap();
    let k3 = AccountKey::client(1, addr(3));
    store.set_raw(&k3.row_key(), moved);
    drop(db);
    let db = open(&store, &[(1, c2)]);
    assert_eq!(db.frozen().len(), 2);
    // A tampered metadata row refuses the open: nothing can be trusted.
    let mut m = store.raw(META_KEY).unwrap();
    let last = m.len() - 2;
    m[last] ^= 1;
    store.set_raw(META_KEY, m);
    drop(db);
    assert!(matches!(
        LedgerDb::open(store.clone(), &key(), opts(&[])),
        Err(OpenError::MetaCorrupt(_))
    ));
}

#[test]
fn chain_contradictions_freeze_instead_of_aborting() {
    let store = MemStore::new();
    let mut db = funded(&store, 1_000_000, 1_000_000);
    serve(&mut db, 1, CLIENT, &Usage::new(10, 0), 1000);
    // The worker contract says more was paid out than the worker ever earned.
    let p = db.observe_worker(&addr(WORKER), 11).unwrap();
    db.durable(p).unwrap();
    let wk = db.worker_key(&addr(WORKER));
    assert!(db.account(&wk).unwrap().frozen.is_some());
    assert!(
        db.events()
            .iter()
            .any(|e| matches!(e, LedgerEvent::Frozen { key, .. } if *key == wk))
    );
    // The client is unaffected, and the freeze survives a restart.
    serve(&mut db, 2, CLIENT, &Usage::new(10, 0), 1000);
    drop(db);
    let mut db = open(&store, &[]);
    assert!(db.account(&wk).unwrap().frozen.is_some());
    // The operator checks and unfreezes.
    let p = db.unfreeze(&wk).unwrap();
    db.durable(p).unwrap();
    assert!(db.frozen().is_empty());
    // 11 paid out of 20 earned is consistent now.
    assert!(db.audit().is_empty());
}

#[test]
fn params_change_closes_old_accounts_with_final_receipts() {
    let store = MemStore::new();
    let mut db = funded(&store, 1_000_000, 1_000_000);
    let k = key();
    serve(&mut db, 1, CLIENT, &Usage::new(10, 0), 1000);
    // A request running across the change.
    let late = RequestId::from_u64(2);
    db.reserve(&addr(CLIENT), late, 100).unwrap();
    let new_prices = PriceTable {
        price_per_token: 30,
        ..prices()
    };
    assert_eq!(
        db.change_params(1, new_prices).map(|_| ()),
        Err(LedgerError::ParamsNotNewer { current: 1, new: 1 })
    );
    let p = db.change_params(2, new_prices).unwrap();
    db.durable(p).unwrap();
    let old = AccountKey::client(1, addr(CLIENT));
    let old_w = AccountKey::worker(1, addr(WORKER));
    assert_eq!(db.account(&old).unwrap().status, Status::Closing);
    assert_eq!(db.params_version(), 2);
    // Old contract: no new requests; the new one needs its own observation.
    assert!(matches!(
        db.reserve(&addr(CLIENT), RequestId::from_u64(3), 1),
        Err(LedgerError::UnknownAccount(_))
    ));
    // Final receipts wait for the running request and for a confirmed checkpoint.
    assert!(matches!(
        db.final_receipt(&old, 1, &addr(CLIENT), &k),
        Err(LedgerError::NotClosable { .. })
    ));
    let p = db
        .settle(late, &addr(WORKER), &Usage::new(5, 0), 1000)
        .unwrap();
    let s = db.durable(p).unwrap();
    // Charged to the old contract at the old prices, although it settles after the change.
    assert_eq!(
        (s.tokens, s.client_nanoton, s.client),
        (5, 100, old.clone())
    );
    assert!(matches!(
        db.final_receipt(&old, 1, &addr(CLIENT), &k),
        Err(LedgerError::NotClosable { .. })
    ));
    checkpoint_and_confirm(&mut db);
    let r = db.final_receipt(&old, 1, &addr(CLIENT), &k).unwrap();
    assert_eq!((r.op, r.tokens), (SignedOp::ClientGrantRefund, 15));
    r.payment
        .verify(SignedOp::ClientGrantRefund, &addr(CLIENT), &k.public_key())
        .unwrap();
    let w = db.final_receipt(&old_w, 2, &addr(WORKER), &k).unwrap();
    assert_eq!((w.op, w.tokens), (SignedOp::WorkerLastPayout, 15));
    let p = db.mark_closed(&old).unwrap();
    db.durable(p).unwrap();
    assert_eq!(db.account(&old).unwrap().status, Status::Closed);
    // The new-version client works at the new price.
    let p = db
        .observe_client(
            &addr(CLIENT),
            ClientFunds {
                balance: 3000,
                stake: 3000,
            },
            0,
            Status::Open,
        )
        .unwrap();
    db.durable(p).unwrap();
    let nk = db.client_key(&addr(CLIENT));
    assert_eq!(db.account(&nk).unwrap().available, 100);
    assert!(db.audit().is_empty());
    // A restart at the stored version keeps it; an older requested version is refused.
    let c = db.confirmed_checkpoint().unwrap();
    drop(db);
    let mut o = opts(&[(2, c)]);
    o.params_version = 2;
    LedgerDb::open(store.clone(), &key(), o.clone()).unwrap();
    o.params_version = 1;
    assert!(matches!(
        LedgerDb::open(store.clone(), &key(), o),
        Err(OpenError::ParamsOlder {
            requested: 1,
            stored: 2
        })
    ));
}

#[test]
fn opening_at_a_newer_params_version_closes_the_old_accounts() {
    let store = MemStore::new();
    let mut db = funded(&store, 1_000_000, 1_000_000);
    serve(&mut db, 1, CLIENT, &Usage::new(10, 0), 1000);
    let c = checkpoint_and_confirm(&mut db);
    drop(db);
    let mut o = opts(&[(1, c)]);
    o.params_version = 3;
    let db = LedgerDb::open(store.clone(), &key(), o.clone()).unwrap();
    assert_eq!(db.params_version(), 3);
    assert_eq!(
        db.account(&AccountKey::client(1, addr(CLIENT)))
            .unwrap()
            .status,
        Status::Closing
    );
    // A checkpoint on the new contract that this database never saw: rolled back.
    drop(db);
    let store2 = MemStore::new();
    let mut db = funded(&store2, 1, 1);
    let c = checkpoint_and_confirm(&mut db);
    drop(db);
    let mut o = opts(&[
        (1, c),
        (
            2,
            ChainCheckpoint {
                seqno: 9,
                hash: [1; 32],
            },
        ),
    ]);
    o.params_version = 2;
    assert!(matches!(
        LedgerDb::open(store2, &key(), o),
        Err(OpenError::RolledBack { .. })
    ));
}

#[test]
fn replaying_the_updates_rebuilds_the_state() {
    let store = MemStore::new();
    let mut db = open(&store, &[]);
    let f = ClientFunds {
        balance: 1_000_000,
        stake: 1_000_000,
    };
    let _ = db
        .observe_client(&addr(CLIENT), f, 0, Status::Open)
        .unwrap();
    let mut all = Vec::new();
    let drive = |db: &mut LedgerDb<MemStore>, all: &mut Vec<_>| {
        let b = db.take_batch().unwrap();
        all.extend(b.updates().to_vec());
        use cocoon_ledger::Store;
        store.clone().commit(&b).unwrap();
        db.batch_committed(b);
    };
    drive(&mut db, &mut all);
    for i in 0..5 {
        let req = RequestId::from_u64(i);
        db.reserve(&addr(CLIENT), req, 1000).unwrap();
        let _ = db
            .settle(req, &addr(WORKER), &Usage::new(i, 2 * i), 1200)
            .unwrap();
    }
    let c = db.prepare_checkpoint().unwrap();
    drive(&mut db, &mut all);
    let c = db.take_committed(c).unwrap();
    let _ = db.confirm_checkpoint(c).unwrap();
    drive(&mut db, &mut all);
    assert!(all.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    let replayed = Ledger::replay(&key(), 1, prices(), &all);
    assert_eq!(replayed.snapshot(), db.snapshot());
    assert_eq!(replayed.totals(), db.totals());
}
