//! `cocoon-ledger`: the proxy's durable money ledger.
//!
//! The proxy meters tokens, charges clients, credits workers, signs cumulative receipts and
//! checkpoints its state on chain. This crate is that bookkeeping, built so that a token is
//! never lost or counted twice, even on `kill -9`:
//!
//! - **Pure logic** ([`Ledger`]): accounts per client and worker contract and params version
//!   ([`AccountKey`]), counters (tokens used/earned, committed to the database,
//!   covered by a confirmed checkpoint, charged/paid on chain), reservations, settlement at the
//!   price formula of `cocoon_openai::usage`, commission. No I/O, no clock: keys and
//!   randomness are passed in.
//! - **Numbered updates** ([`Update`]): every durable change is an update with a strictly
//!   increasing seq; the state is the fold of its updates ([`Ledger::replay`]). Results a peer
//!   may be told come wrapped in [`Pending`] and can only be opened once the store has
//!   committed them: the persistence contract of rust-lightning, enforced by types.
//! - **Receipts only from confirmed checkpoints** ([`Ledger::receipt`]): a receipt covers only
//!   usage that a `save_state` checkpoint confirmed on chain covers, so a database restored
//!   from an old copy can never have signed more than the chain proves. Receipts only grow.
//! - **Rollback detection** ([`Ledger::open`]): a checkpoint on chain that the database never
//!   prepared refuses the open ([`OpenError::RolledBack`]).
//! - **No aborts**: a row failing its integrity check, or counters the chain contradicts,
//!   freeze that one account (no reservations, no receipts) and are reported in
//!   [`Ledger::events`]; other accounts keep working.
//! - **Storage** behind [`Store`]: [`SqliteStore`] (WAL, `synchronous=FULL`,
//!   `BEGIN IMMEDIATE`, one fsync per batch: group commit) and [`MemStore`] for tests. Every
//!   row is sealed with an HMAC keyed from the proxy key (`codec` module docs).
//!
//! All token amounts are *adjusted* tokens (what receipts and contracts count); nanoTON
//! amounts are `tokens × price_per_token` (client) and `tokens × worker_fee_per_token`
//! (worker), the difference being the proxy's commission.
//!
//! # Request lifecycle
//!
//! ```
//! use cocoon_ledger::{ClientFunds, LedgerDb, MemStore, OpenOptions, RequestId, Status};
//! use cocoon_openai::usage::{Multipliers, PriceTable, Usage};
//! use cocoon_ton::{HashBytes, StdAddr, keys::SigningKey};
//!
//! let proxy_key = SigningKey::from_seed(&[7; 32]).unwrap();
//! let prices = PriceTable { price_per_token: 20, worker_fee_per_token: 16, multipliers: Multipliers::default() };
//! let opts = OpenOptions { params_version: 1, prices, chain: Default::default(), session: [1; 32] };
//! let mut db = LedgerDb::open(MemStore::new(), &proxy_key, opts).unwrap();
//! let (client, worker) = (StdAddr::new(0, HashBytes([1; 32])), StdAddr::new(0, HashBytes([2; 32])));
//!
//! // The client contract was seen on chain with 1 TON balance and stake.
//! let funds = ClientFunds { balance: 1_000_000_000, stake: 1_000_000_000 };
//! let seen = db.observe_client(&client, funds, 0, Status::Open).unwrap();
//! db.durable(seen).unwrap();
//!
//! // 1. Reserve before forwarding (adjusted tokens: PriceTable::reservation).
//! let req = RequestId::from_u64(1);
//! db.reserve(&client, req, prices.reservation(1000, 200, 1000)).unwrap();
//! // 2. On every streamed part: does the usage so far still fit?
//! assert!(db.check_part(req, &Usage::new(100, 20), 1000).is_ok());
//! // 3. Settle with the final usage; the result is Pending until committed.
//! let pending = db.settle(req, &worker, &Usage::new(100, 50), 1000).unwrap();
//! // 4. Commit (group commit: many settles, one fsync), then tell the client and worker.
//! let s = db.durable(pending).unwrap();
//! assert_eq!((s.tokens, s.client_nanoton, s.worker_nanoton, s.commission_nanoton), (150, 3000, 2400, 600));
//! // 5. Checkpoint: commit, then send save_state(seqno, hash) on chain.
//! let cp = db.prepare_checkpoint().unwrap();
//! let cp = db.durable(cp).unwrap();
//! // 6. The transaction appears on chain: confirm, commit.
//! let confirmed = db.confirm_checkpoint(cp).unwrap();
//! db.durable(confirmed).unwrap();
//! // 7. Receipts now cover the 150 tokens.
//! let key = db.client_key(&client);
//! let r = db.receipt(&key, 1, &client, &proxy_key).unwrap().unwrap();
//! assert_eq!(r.tokens, 150);
//! ```
#![forbid(unsafe_code)]

mod account;
mod audit;
mod batch;
mod codec;
mod db;
mod error;
mod ledger;
mod open;
mod receipt;
#[doc(hidden)]
pub mod sim;
mod sqlite;
mod state;
mod store;
mod types;
mod update;

pub use account::AccountView;
pub use audit::Totals;
pub use batch::Batch;
pub use codec::META_KEY;
pub use db::LedgerDb;
pub use error::{LedgerError, OpenError, StoreError};
pub use ledger::{Due, DuePolicy};
pub use ledger::{Ledger, Pending, Settlement};
pub use open::OpenOptions;
pub use receipt::Receipt;
pub use sqlite::SqliteStore;
pub use store::{MemStore, Store};
pub use types::{
    AccountKey, ChainCheckpoint, ClientFunds, Kind, LedgerEvent, RequestId, Status, Submitted,
};
pub use update::{Update, UpdateKind};
