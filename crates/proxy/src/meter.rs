//! Token metering behind a narrow trait.
//!
//! The proxy talks to its books only through [`Meter`]: open a client's credit after it
//! authorised, reserve before a request is routed, check each reported usage against the
//! reservation, settle once when the request ends, cancel when it never ran. Units are
//! *adjusted tokens* (tokens × coefficient × category multiplier, as the worker
//! reports them in `tokensUsed.total_tokens_used`); money is `price_per_token` × tokens.
//!
//! `book` decides a request's settlement in memory and hands back the wait for it to be
//! durable (`settle` is both in one): the proxy sends the figures it decided (the final
//! info) to a protocol 3 client at once, but signed receipts and payment reports to either
//! peer only after that wait (ARCHITECTURE.md D8). [`MemoryMeter`] keeps everything in
//! memory (tests and development); the SQLite ledger plugs in behind the same trait.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::future::BoxFuture;

use crate::chain::{ClientContractState, ProxyChainError};

/// A request's id as the proxy knows it (the client's `request_id`).
pub(crate) type RequestId = [u8; 32];

/// The three counters for one client or worker, in adjusted tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Covered by a confirmed on-chain checkpoint (what a signed receipt may carry).
    pub committed_to_blockchain: u64,
    /// Durable in the proxy's database.
    pub committed_to_db: u64,
    /// Everything known, including what is not durable yet.
    pub max: u64,
}

/// Usage of one request by category (adjusted tokens, as the worker reports them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Charge {
    /// Prompt tokens.
    pub prompt: u64,
    /// Cached prompt tokens.
    pub cached: u64,
    /// Completion tokens.
    pub completion: u64,
    /// Reasoning tokens.
    pub reasoning: u64,
    /// All of them, adjusted.
    pub total: u64,
}

/// What `settle` books: who pays, who earns, how much, at which coefficient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The client's contract address.
    pub client: String,
    /// The worker's contract address.
    pub worker: String,
    /// The usage to book.
    pub usage: Charge,
    /// The worker's coefficient (thousandths) the usage was adjusted with.
    pub coefficient: i32,
}

/// Totals after a settlement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// The client's totals.
    pub client: Totals,
    /// The worker's totals.
    pub worker: Totals,
}

/// A settlement decided in memory: resolves once it is durable (an error when the store
/// failed; the ledger retries the commit, the settlement itself stands).
pub type Durable = BoxFuture<'static, Result<Settled, MeterError>>;

/// Why the books refused an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeterError {
    /// The client cannot pay for the request.
    #[error("client balance is too low: {available} tokens available, {needed} needed")]
    OutOfFunds {
        /// Tokens the client can still pay for.
        available: u64,
        /// Tokens the request needs.
        needed: u64,
    },
    /// Usage beyond the request's reservation.
    #[error("reserved_tokens depleted: {used} used of {reserved} reserved")]
    ReservationExceeded {
        /// Tokens used.
        used: u64,
        /// Tokens reserved.
        reserved: u64,
    },
    /// A client the books do not know.
    #[error("unknown client {0}")]
    UnknownClient(String),
    /// A request the books do not know.
    #[error("unknown request")]
    UnknownRequest,
    /// A request id already in use.
    #[error("duplicate request id")]
    DuplicateRequest,
    /// The account is frozen.
    #[error("account {0} is frozen")]
    Frozen(String),
    /// The client contract is closing.
    #[error("client is closing")]
    Closing,
    /// The store failed.
    #[error("storage: {0}")]
    Storage(String),
    /// Refused for the reason given.
    #[error("{0}")]
    Refused(String),
}

/// Which side of a request an account belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// The paying side.
    Client,
    /// The earning side.
    Worker,
}

/// The proxy's books, as the network code sees them.
pub trait Meter: Send + Sync + 'static {
    /// Records that `client` authorised, with its contract as the chain shows it (balance,
    /// stake and tokens already charged set its credit); returns its totals.
    fn open_client<'a>(
        &'a self,
        client: &'a str,
        state: &'a ClientContractState,
        price_per_token: u64,
    ) -> BoxFuture<'a, Result<Totals, MeterError>>;

    /// Records a fresh read of a client contract (balance and stake set the credit; tokens
    /// charged; closing stops new requests), for the account under whichever params version
    /// it belongs to. Unknown contracts are ignored.
    fn observe_client<'a>(
        &'a self,
        client: &'a str,
        state: &'a ClientContractState,
        price_per_token: u64,
    ) -> BoxFuture<'a, Result<(), MeterError>>;

    /// Client contracts whose state the proxy must keep reading: unsettled usage, or closing.
    fn clients_to_watch(&self) -> Vec<String> {
        Vec::new()
    }

    /// Asks the settlement loop (if any) for a pass now (a client started closing).
    fn kick(&self) {}

    /// Reserves `max_tokens` of the client's credit for a request.
    fn reserve<'a>(
        &'a self,
        client: &'a str,
        request_id: RequestId,
        max_tokens: u64,
    ) -> BoxFuture<'a, Result<(), MeterError>>;

    /// Checks a usage report against the reservation (hot path: synchronous, no I/O).
    fn check_part(&self, request_id: &RequestId, used_so_far: u64) -> Result<(), MeterError>;

    /// Books the request's usage and releases its reservation in memory, now: once this
    /// returns `Ok` the figures are decided (later requests see them). The returned
    /// [`Durable`] resolves once the booking is committed; nothing that a peer could hold the
    /// proxy to (a signed receipt, a payment report) may be sent before it did.
    fn book(&self, request_id: RequestId, settlement: Settlement) -> Result<Durable, MeterError>;

    /// [`Meter::book`] and its wait: durable when it returns.
    fn settle<'a>(
        &'a self,
        request_id: RequestId,
        settlement: Settlement,
    ) -> BoxFuture<'a, Result<Settled, MeterError>> {
        let booked = self.book(request_id, settlement);
        Box::pin(async move { booked?.await })
    }

    /// Releases a reservation without booking anything (the request never ran).
    fn cancel<'a>(&'a self, request_id: RequestId) -> BoxFuture<'a, Result<(), MeterError>>;

    /// A client's totals (zero when unknown).
    fn client_totals(&self, client: &str) -> Totals;

    /// A worker's totals (zero when unknown).
    fn worker_totals(&self, worker: &str) -> Totals;

    /// The latest signed receipt for an account (BoC of the signed payment), covering only
    /// checkpointed usage; `None` sends `proxy.signedPaymentEmpty`.
    fn receipt(&self, _party: Party, _address: &str) -> Option<Vec<u8>> {
        None
    }

    /// Ledger figures for the admin pages, when the meter has a ledger.
    fn ledger_stats(&self) -> Option<LedgerStats> {
        None
    }

    /// Every ledger account (the admin pages' balances), when the meter has a ledger.
    fn accounts(&self) -> Vec<cocoon_ledger::AccountView> {
        Vec::new()
    }

    /// An operator action on the settlement; meters without a chain refuse.
    fn control(
        &self,
        action: SettlementAction,
    ) -> BoxFuture<'_, Result<ControlOutcome, ControlError>> {
        Box::pin(async move { Err(ControlError::NoSettlement(action)) })
    }
}

/// An operator action on the settlement (`POST /control/<action>` on the admin server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettlementAction {
    /// A settlement pass now.
    Checkpoint,
    /// A pass that submits every client's charge with anything checkpointed and unsettled,
    /// whatever the thresholds.
    Charge,
    /// The same for every worker's payout.
    Payout,
    /// The proxy's commission to its owner.
    Withdraw,
}

impl SettlementAction {
    /// The name in the control's path.
    pub fn as_str(self) -> &'static str {
        match self {
            SettlementAction::Checkpoint => "checkpoint",
            SettlementAction::Charge => "charge",
            SettlementAction::Payout => "payout",
            SettlementAction::Withdraw => "withdraw",
        }
    }
}

impl std::fmt::Display for SettlementAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A control name that is not a [`SettlementAction`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown control {0:?}")]
pub struct UnknownAction(pub String);

impl std::str::FromStr for SettlementAction {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, UnknownAction> {
        Ok(match s {
            "checkpoint" => SettlementAction::Checkpoint,
            "charge" => SettlementAction::Charge,
            "payout" => SettlementAction::Payout,
            "withdraw" => SettlementAction::Withdraw,
            other => return Err(UnknownAction(other.to_owned())),
        })
    }
}

/// What a settlement action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlOutcome {
    /// The commission withdrawal was sent.
    WithdrawalSent,
    /// A settlement pass ran.
    Pass {
        action: SettlementAction,
        charges: u64,
        payouts: u64,
        /// The last checkpoint the chain confirmed, after the pass.
        confirmed_checkpoint: Option<u32>,
    },
}

impl std::fmt::Display for ControlOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlOutcome::WithdrawalSent => f.write_str("withdrawal sent"),
            ControlOutcome::Pass {
                action,
                charges,
                payouts,
                confirmed_checkpoint,
            } => write!(
                f,
                "{action}: {charges} charges, {payouts} payouts submitted; confirmed checkpoint {confirmed_checkpoint:?}"
            ),
        }
    }
}

/// Why a settlement action failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The meter keeps no books on chain (`MemoryMeter`).
    #[error("{0}: this meter has no on-chain settlement")]
    NoSettlement(SettlementAction),
    /// The ledger runs without a settlement loop (no wallet).
    #[error("no settlement chain (the proxy runs without a wallet)")]
    NoChain,
    /// The chain refused or failed (the withdrawal, or the pass).
    #[error("{0}")]
    Chain(#[from] ProxyChainError),
}

/// What the admin pages show about the ledger.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LedgerStats {
    /// Version of the root params the accounts use.
    pub params_version: u32,
    /// Last update committed to the database.
    pub committed_seq: u64,
    /// Last update made.
    pub last_seq: u64,
    /// Commits that failed.
    pub commit_failures: u64,
    /// The last commit error, if any.
    pub last_commit_error: String,
    /// Last checkpoint confirmed on chain.
    pub confirmed_checkpoint: Option<u32>,
    /// Checkpoints sent and not confirmed yet.
    pub pending_checkpoints: Vec<u32>,
    /// The proxy's commission earned, nanoTON.
    pub commission_nanoton: u128,
    /// Open reservations.
    pub reservations: usize,
    /// Why the ledger halted, if it did.
    pub halted: Option<String>,
    /// Frozen accounts and why.
    pub frozen: Vec<(String, String)>,
    /// Client charges submitted.
    pub charges_submitted: u64,
    /// Worker payouts submitted.
    pub payouts_submitted: u64,
    /// Commission withdrawals sent automatically (`auto_withdraw_ton`).
    pub auto_withdrawals: u64,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct ClientAccount {
    credit: u64,
    reserved: u64,
    used: u64,
    closing: bool,
}

#[derive(Debug, Default)]
struct Books {
    clients: HashMap<String, ClientAccount>,
    workers: HashMap<String, u64>,
    reservations: HashMap<RequestId, (String, u64)>,
}

/// Everything in memory: nothing survives a restart, nothing is committed on-chain.
#[derive(Debug, Default)]
pub struct MemoryMeter {
    books: Mutex<Books>,
}

/// A client account as [`MemoryMeter`] holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientView {
    pub credit: u64,
    pub reserved: u64,
    pub used: u64,
}

impl MemoryMeter {
    /// Empty books.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client's account, if known.
    pub fn client(&self, client: &str) -> Option<ClientView> {
        self.lock().clients.get(client).map(|a| ClientView {
            credit: a.credit,
            reserved: a.reserved,
            used: a.used,
        })
    }

    /// Tokens a worker earned.
    pub fn worker_earned(&self, worker: &str) -> u64 {
        self.lock().workers.get(worker).copied().unwrap_or(0)
    }

    /// Open reservations.
    pub fn open_reservations(&self) -> usize {
        self.lock().reservations.len()
    }

    fn totals(v: u64) -> Totals {
        Totals {
            committed_to_blockchain: 0,
            committed_to_db: v,
            max: v,
        }
    }
}

impl Meter for MemoryMeter {
    fn open_client<'a>(
        &'a self,
        client: &'a str,
        state: &'a ClientContractState,
        price_per_token: u64,
    ) -> BoxFuture<'a, Result<Totals, MeterError>> {
        let mut b = self.lock();
        let a = b.clients.entry(client.to_owned()).or_default();
        a.credit = state.credit_tokens(price_per_token);
        a.closing = state.closing || state.closed;
        let t = Self::totals(a.used);
        Box::pin(async move { Ok(t) })
    }

    fn observe_client<'a>(
        &'a self,
        client: &'a str,
        state: &'a ClientContractState,
        price_per_token: u64,
    ) -> BoxFuture<'a, Result<(), MeterError>> {
        let mut b = self.lock();
        if let Some(a) = b.clients.get_mut(client) {
            a.credit = state.credit_tokens(price_per_token);
            a.closing = state.closing || state.closed;
        }
        Box::pin(async { Ok(()) })
    }

    fn clients_to_watch(&self) -> Vec<String> {
        self.lock().clients.keys().cloned().collect()
    }

    fn reserve<'a>(
        &'a self,
        client: &'a str,
        request_id: RequestId,
        max_tokens: u64,
    ) -> BoxFuture<'a, Result<(), MeterError>> {
        let r = (|| {
            let mut b = self.lock();
            if b.reservations.contains_key(&request_id) {
                return Err(MeterError::DuplicateRequest);
            }
            let a = b
                .clients
                .get_mut(client)
                .ok_or_else(|| MeterError::UnknownClient(client.to_owned()))?;
            if a.closing {
                return Err(MeterError::Closing);
            }
            let available = a.credit.saturating_sub(a.used).saturating_sub(a.reserved);
            if max_tokens > available {
                return Err(MeterError::OutOfFunds {
                    available,
                    needed: max_tokens,
                });
            }
            a.reserved += max_tokens;
            b.reservations
                .insert(request_id, (client.to_owned(), max_tokens));
            Ok(())
        })();
        Box::pin(async move { r })
    }

    fn check_part(&self, request_id: &RequestId, used_so_far: u64) -> Result<(), MeterError> {
        let b = self.lock();
        let (_, reserved) = b
            .reservations
            .get(request_id)
            .ok_or(MeterError::UnknownRequest)?;
        if used_so_far > *reserved {
            return Err(MeterError::ReservationExceeded {
                used: used_so_far,
                reserved: *reserved,
            });
        }
        Ok(())
    }

    fn book(&self, request_id: RequestId, s: Settlement) -> Result<Durable, MeterError> {
        let r = (|| {
            let mut b = self.lock();
            let (client, reserved) = b
                .reservations
                .remove(&request_id)
                .ok_or(MeterError::UnknownRequest)?;
            let a = b.clients.entry(client).or_default();
            a.reserved = a.reserved.saturating_sub(reserved);
            a.used = a.used.saturating_add(s.usage.total);
            let client = Self::totals(a.used);
            let w = b.workers.entry(s.worker).or_default();
            *w = w.saturating_add(s.usage.total);
            Ok(Settled {
                client,
                worker: Self::totals(*w),
            })
        })();
        let settled = r?;
        Ok(Box::pin(async move { Ok(settled) }))
    }

    fn cancel<'a>(&'a self, request_id: RequestId) -> BoxFuture<'a, Result<(), MeterError>> {
        let mut b = self.lock();
        if let Some((client, reserved)) = b.reservations.remove(&request_id)
            && let Some(a) = b.clients.get_mut(&client)
        {
            a.reserved = a.reserved.saturating_sub(reserved);
        }
        Box::pin(async { Ok(()) })
    }

    fn client_totals(&self, client: &str) -> Totals {
        Self::totals(self.lock().clients.get(client).map_or(0, |a| a.used))
    }

    fn worker_totals(&self, worker: &str) -> Totals {
        Self::totals(self.lock().workers.get(worker).copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<T>(f: BoxFuture<'_, T>) -> T {
        futures::executor::block_on(f)
    }

    fn settlement(total: u64) -> Settlement {
        Settlement {
            client: "c".into(),
            worker: "w".into(),
            usage: Charge {
                total,
                ..Charge::default()
            },
            coefficient: 1000,
        }
    }

    #[test]
    fn reserve_check_settle_cancel() {
        let m = MemoryMeter::new();
        assert_eq!(
            block(m.reserve("c", [1; 32], 10)),
            Err(MeterError::UnknownClient("c".into()))
        );
        let state = ClientContractState {
            balance: 100,
            stake: 1000,
            ..ClientContractState::default()
        };
        block(m.open_client("c", &state, 1)).unwrap();
        block(m.reserve("c", [1; 32], 60)).unwrap();
        assert_eq!(
            block(m.reserve("c", [1; 32], 1)),
            Err(MeterError::DuplicateRequest)
        );
        assert_eq!(
            block(m.reserve("c", [2; 32], 41)),
            Err(MeterError::OutOfFunds {
                available: 40,
                needed: 41
            })
        );
        m.check_part(&[1; 32], 60).unwrap();
        assert!(matches!(
            m.check_part(&[1; 32], 61),
            Err(MeterError::ReservationExceeded { .. })
        ));
        let s = block(m.settle([1; 32], settlement(25))).unwrap();
        assert_eq!(s.client.max, 25);
        assert_eq!(s.worker.max, 25);
        assert_eq!(m.worker_earned("w"), 25);
        assert_eq!(
            m.client("c"),
            Some(ClientView {
                credit: 100,
                reserved: 0,
                used: 25
            })
        );
        // Settling twice is refused: each request is booked once.
        assert_eq!(
            block(m.settle([1; 32], settlement(25))),
            Err(MeterError::UnknownRequest)
        );
        block(m.reserve("c", [3; 32], 75)).unwrap();
        block(m.cancel([3; 32])).unwrap();
        assert_eq!(m.client("c").unwrap().reserved, 0);
        assert_eq!(m.open_reservations(), 0);
        assert_eq!(m.client_totals("c").max, 25);
    }

    #[test]
    fn settlement_actions_parse_and_print_their_path_names() {
        for a in [
            SettlementAction::Checkpoint,
            SettlementAction::Charge,
            SettlementAction::Payout,
            SettlementAction::Withdraw,
        ] {
            assert_eq!(a.as_str().parse::<SettlementAction>(), Ok(a));
            assert_eq!(a.to_string(), a.as_str());
        }
        let e = "enable".parse::<SettlementAction>().unwrap_err();
        assert_eq!(e.to_string(), "unknown control \"enable\"");
        assert!("Checkpoint".parse::<SettlementAction>().is_err());
    }

    #[test]
    fn control_outcomes_and_errors_read_as_the_admin_server_sends_them() {
        let pass = ControlOutcome::Pass {
            action: SettlementAction::Charge,
            charges: 2,
            payouts: 0,
            confirmed_checkpoint: Some(7),
        };
        assert_eq!(
            pass.to_string(),
            "charge: 2 charges, 0 payouts submitted; confirmed checkpoint Some(7)"
        );
        assert_eq!(
            ControlOutcome::WithdrawalSent.to_string(),
            "withdrawal sent"
        );
        let m = MemoryMeter::new();
        let e = block(m.control(SettlementAction::Payout)).unwrap_err();
        assert_eq!(e, ControlError::NoSettlement(SettlementAction::Payout));
        assert_eq!(
            e.to_string(),
            "payout: this meter has no on-chain settlement"
        );
        assert_eq!(
            ControlError::NoChain.to_string(),
            "no settlement chain (the proxy runs without a wallet)"
        );
    }
}
