//! One account's counters (COCOON-compatible, see docs/cocoon-compat.md).
//!
//! All token counts are *adjusted* tokens (usage scaled by the worker coefficient and the
//! category multipliers, see `cocoon_openai::usage`): the unit receipts carry and contracts
//! settle. nanoTON amounts are kept beside them so that conservation can be checked in money.
//!
//! Per account the counters only grow, in this order:
//! `on_chain_tokens ≤ chain_tokens ≤ db_tokens ≤ tokens`, where
//! - `tokens`: everything the ledger knows, committed or not;
//! - `db_tokens`: what the store has durably committed;
//! - `chain_tokens`: covered by a checkpoint confirmed on chain — the only amount receipts are
//!   signed for;
//! - `on_chain_tokens`: what the contract says is already charged (client) or paid out
//!   (worker).
//!
//! The last one is observed from the chain, so it is the one that can contradict the ledger;
//! when it does, the account is frozen rather than the process aborted.

use std::collections::BTreeMap;

use crate::types::{AccountKey, ClientFunds, Kind, Status, Submitted};

/// An account's full state. Durable fields are written to the store; `db_tokens`, `reserved`,
/// `last_receipt` and `corrupt` live only in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    pub(crate) key: AccountKey,
    /// Client: tokens used. Worker: tokens earned.
    pub(crate) tokens: u64,
    /// Client: nanoTON charged. Worker: nanoTON earned.
    pub(crate) nanoton: u128,
    /// Tokens covered by a confirmed on-chain checkpoint.
    pub(crate) chain_tokens: u64,
    /// Checkpoint seqno → `tokens` when that checkpoint was prepared (not yet confirmed).
    pub(crate) at_checkpoint: BTreeMap<u32, u64>,
    /// Client: charged on chain. Worker: paid out on chain.
    pub(crate) on_chain_tokens: u64,
    /// Client contract balance and stake (clients only).
    pub(crate) funds: Option<ClientFunds>,
    pub(crate) status: Status,
    pub(crate) frozen: Option<String>,
    /// Tokens of the last receipt submitted on chain for this account, and when (unix
    /// seconds); a final (closing) receipt is marked too. Kept so that a restarted proxy does
    /// not pay gas to submit the same receipt again.
    pub(crate) submitted: Submitted,
    // --- volatile ---
    /// The stored row failed its integrity check: this is a placeholder, never written back.
    pub(crate) corrupt: bool,
    pub(crate) db_tokens: u64,
    pub(crate) reserved: u64,
    pub(crate) last_receipt: u64,
    /// Seq of the last update that touched this account.
    pub(crate) last_update: u64,
}

impl Account {
    pub(crate) fn new(key: AccountKey) -> Self {
        Account {
            key,
            tokens: 0,
            nanoton: 0,
            chain_tokens: 0,
            at_checkpoint: BTreeMap::new(),
            on_chain_tokens: 0,
            funds: None,
            status: Status::Open,
            frozen: None,
            submitted: Submitted::default(),
            corrupt: false,
            db_tokens: 0,
            reserved: 0,
            last_receipt: 0,
            last_update: 0,
        }
    }

    /// Tokens the latest prepared checkpoint (or the confirmed one) covers.
    pub(crate) fn last_checkpointed(&self) -> u64 {
        self.at_checkpoint
            .values()
            .next_back()
            .copied()
            .unwrap_or(self.chain_tokens)
    }

    /// Tokens available: `min(paid, stake + charged_on_chain) − reserved − used`,
    /// where `paid = balance/price + charged_on_chain` and `stake` is in tokens. The credit is
    /// bounded by the stake beyond what the contract has already been charged, so an honest
    /// proxy can always collect what it served. Zero for workers; saturates at zero.
    pub(crate) fn available(&self, price_per_token: u64) -> u64 {
        let Some(f) = self.funds else { return 0 };
        // A free network (price 0) puts no limit on credit.
        let paid = f.balance.checked_div(price_per_token).unwrap_or(u64::MAX);
        let stake = f.stake.checked_div(price_per_token).unwrap_or(u64::MAX);
        let max_allowed = paid.min(stake).saturating_add(self.on_chain_tokens);
        max_allowed.saturating_sub(self.reserved.saturating_add(self.tokens))
    }

    /// Public, read-only view.
    pub(crate) fn view(&self, price_per_token: u64) -> AccountView {
        AccountView {
            key: self.key.clone(),
            tokens: self.tokens,
            db_tokens: self.db_tokens,
            chain_tokens: self.chain_tokens,
            on_chain_tokens: self.on_chain_tokens,
            reserved: self.reserved,
            available: if self.key.kind == Kind::Client {
                self.available(price_per_token)
            } else {
                0
            },
            nanoton: self.nanoton,
            funds: self.funds,
            status: self.status,
            frozen: self.frozen.clone(),
            last_receipt: self.last_receipt,
            submitted: self.submitted,
        }
    }
}

/// A snapshot of one account's counters, for the proxy's stats pages and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    /// Which account.
    pub key: AccountKey,
    /// Client: tokens used. Worker: tokens earned. Includes uncommitted updates.
    pub tokens: u64,
    /// Part of `tokens` that is durably committed.
    pub db_tokens: u64,
    /// Part covered by a confirmed on-chain checkpoint: what receipts are signed for.
    pub chain_tokens: u64,
    /// Client: charged on chain. Worker: paid out on chain.
    pub on_chain_tokens: u64,
    /// Tokens held by running requests (clients).
    pub reserved: u64,
    /// Tokens the client may still reserve.
    pub available: u64,
    /// Client: nanoTON charged. Worker: nanoTON earned.
    pub nanoton: u128,
    /// Client contract balance and stake as last observed.
    pub funds: Option<ClientFunds>,
    /// Contract status.
    pub status: Status,
    /// Why the account is frozen, if it is.
    pub frozen: Option<String>,
    /// Tokens in the last receipt issued since this process started.
    pub last_receipt: u64,
    /// The last receipt submitted on chain (durable).
    pub submitted: Submitted,
}
