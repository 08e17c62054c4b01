//! Numbered updates: the only way the durable state changes.
//!
//! As in rust-lightning's `ChannelMonitorUpdate`, every mutation is first expressed as an
//! [`Update`] with a strictly increasing `seq`, then applied. Applying is a pure, total
//! function of the previous state ([`crate::state::State::apply`]), so the state is exactly
//! the fold of its updates: replaying them from an empty state reconstructs it, and the store
//! only has to persist the rows the updates touched, in order, atomically per batch.

use cocoon_openai::usage::PriceTable;

use crate::types::{AccountKey, ChainCheckpoint, ClientFunds, RequestId, Status, Submitted};

/// One numbered change to the durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Strictly increasing, starting at 1, never reused.
    pub seq: u64,
    /// What changed.
    pub kind: UpdateKind,
}

/// The kinds of durable change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpdateKind {
    /// A client contract's on-chain state was observed (creates the account).
    ObserveClient {
        /// The client account.
        key: AccountKey,
        /// Balance and stake.
        funds: ClientFunds,
        /// Tokens the contract says are charged.
        charged: u64,
        /// Contract status.
        status: Status,
    },
    /// A worker contract's on-chain state was observed (creates the account).
    ObserveWorker {
        /// The worker account.
        key: AccountKey,
        /// Tokens the contract says are paid out.
        paid: u64,
    },
    /// A request was settled: the client is charged, the worker credited, the rest is the
    /// proxy's commission.
    Charge {
        /// The request.
        request: RequestId,
        /// Who pays.
        client: AccountKey,
        /// Who earns.
        worker: AccountKey,
        /// Adjusted tokens.
        tokens: u64,
        /// nanoTON charged to the client (`tokens × price_per_token`).
        client_nanoton: u128,
        /// nanoTON credited to the worker (`tokens × worker_fee_per_token`).
        worker_nanoton: u128,
        /// nanoTON kept by the proxy (the difference).
        commission_nanoton: u128,
    },
    /// A `save_state` checkpoint was prepared: it covers every account's `tokens` now.
    CheckpointPrepared(ChainCheckpoint),
    /// A prepared checkpoint was seen on chain: what it covers becomes receipt-able.
    CheckpointConfirmed(ChainCheckpoint),
    /// Root params changed: accounts of older versions close, a new contract starts.
    ParamsChanged {
        /// The new `params_version`.
        version: u32,
        /// The new prices.
        prices: PriceTable,
    },
    /// An account was frozen.
    Freeze {
        /// The account.
        key: AccountKey,
        /// Why.
        reason: String,
    },
    /// The operator unfroze an account.
    Unfreeze {
        /// The account.
        key: AccountKey,
    },
    /// The account's contract is closed on chain.
    Closed {
        /// The account.
        key: AccountKey,
    },
    /// A signed receipt for the account was submitted on chain.
    ReceiptSubmitted {
        /// The account.
        key: AccountKey,
        /// What was sent.
        submitted: Submitted,
    },
}
