//! Typed errors. Nothing here aborts the process: a refused operation leaves the ledger as it
//! was, and an inconsistency freezes one account (see [`crate::Ledger::events`]).

use crate::types::{AccountKey, ChainCheckpoint, RequestId};

/// Why a ledger operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The client cannot cover the reservation.
    #[error("out of funds: {requested} tokens requested, {available} available")]
    OutOfFunds {
        /// Tokens asked for.
        requested: u64,
        /// Tokens the client can still spend.
        available: u64,
    },
    /// No account with this key.
    #[error("unknown account {0}")]
    UnknownAccount(AccountKey),
    /// The account is frozen after an inconsistency; the operator must look at it.
    #[error("account {key} is frozen: {reason}")]
    Frozen {
        /// The account.
        key: AccountKey,
        /// Why it was frozen.
        reason: String,
    },
    /// The account's contract is closing or closed, or belongs to an older params version.
    #[error("account {0} does not accept new requests (closing, closed or old params version)")]
    NotOpen(AccountKey),
    /// A reservation with this id already exists.
    #[error("request {0} already has a reservation")]
    DuplicateRequest(RequestId),
    /// No reservation with this id.
    #[error("no reservation for request {0}")]
    UnknownRequest(RequestId),
    /// Usage reported while streaming exceeds the reservation.
    #[error("reservation exceeded: {used} tokens used, {reserved} reserved")]
    ReservationExceeded {
        /// Tokens reserved.
        reserved: u64,
        /// Tokens used so far.
        used: u64,
    },
    /// The chain shows a checkpoint this ledger never prepared: another instance shares the
    /// proxy key, or this database was rolled back. The whole ledger is halted.
    #[error("unknown checkpoint on chain: {0:?}")]
    UnknownCheckpoint(ChainCheckpoint),
    /// The ledger is halted (see [`LedgerError::UnknownCheckpoint`]).
    #[error("ledger halted: {0}")]
    Halted(String),
    /// The update that a receipt depends on is not durable yet: commit first.
    #[error("state not durable yet: commit pending updates first")]
    NotDurable,
    /// The final receipt cannot be issued yet.
    #[error("account {key} cannot be closed yet: {reason}")]
    NotClosable {
        /// The account.
        key: AccountKey,
        /// What is missing.
        reason: &'static str,
    },
    /// A params version not newer than the current one.
    #[error("params version {new} is not newer than {current}")]
    ParamsNotNewer {
        /// Current version.
        current: u32,
        /// Refused version.
        new: u32,
    },
    /// The checkpoint seqno space (32 bits on chain) is exhausted.
    #[error("checkpoint seqno overflow")]
    SeqnoOverflow,
    /// Building or signing a receipt cell failed.
    #[error("receipt: {0}")]
    Receipt(String),
}

/// Why a store operation failed. The ledger keeps the failed batch and retries it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Injected failure (tests) or another backend failure.
    #[error("store failure: {0}")]
    Backend(String),
}

/// Why a ledger could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The chain holds a checkpoint this database never had: it was restored from an older
    /// copy (or another instance wrote with our key). Refusing to run on it.
    #[error(
        "database rolled back: chain has checkpoint {chain:?}, database last confirmed {db_confirmed:?} and has pending seqnos {db_pending:?}"
    )]
    RolledBack {
        /// What the chain shows.
        chain: ChainCheckpoint,
        /// The last checkpoint the database saw confirmed.
        db_confirmed: Option<ChainCheckpoint>,
        /// Checkpoints the database prepared but has not seen confirmed.
        db_pending: Vec<u32>,
    },
    /// The chain view is older than what the database already saw confirmed (a stale or wrong
    /// chain source); refusing rather than guessing.
    #[error("chain view {chain:?} is behind the database's confirmed checkpoint {db_confirmed:?}")]
    ChainBehind {
        /// What the chain shows (`None`: no checkpoint at all).
        chain: Option<ChainCheckpoint>,
        /// What the database saw confirmed.
        db_confirmed: ChainCheckpoint,
    },
    /// The metadata row fails its integrity check or does not parse: nothing can be trusted.
    #[error("ledger metadata row is corrupt: {0}")]
    MetaCorrupt(String),
    /// The requested params version is older than the database's.
    #[error("params version {requested} is older than the database's {stored}")]
    ParamsOlder {
        /// Version asked for.
        requested: u32,
        /// Version in the database.
        stored: u32,
    },
}
