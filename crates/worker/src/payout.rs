//! When to cash out proxy-signed receipts.
//!
//! A signed payout is cumulative: submitting the latest one to the worker contract pays
//! `Δtokens × worker_fee_per_token`. Each submission costs fees, so the worker waits until
//! the unpaid part is worth at least a threshold **in nanoTON** (a threshold on the token
//! count would be off by the fee per token).
//!
//! The submission itself goes through a [`PayoutSink`]: the component that owns the wallet
//! and the chain client. The worker decides *when* and *what*; the sink decides *how*.

use cocoon_ton::StdAddr;
use cocoon_ton::contracts::Deployable;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::store::ProxyRecord;

/// Why the worker contract a proxy's receipts name could not be made to exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContractError {
    /// The contract is missing and the wallet cannot pay for its deployment: nothing was
    /// sent. The operator's to fix (fund the wallet); the session with that proxy is refused
    /// until then, since its receipts could not be cashed.
    #[error(
        "worker contract {contract} is not deployed and wallet {wallet} holds {} TON; deploying it needs {} TON (contract_deploy_ton + 0.05 TON of fees): fund the wallet",
        cocoon_ton::format_ton(*have),
        cocoon_ton::format_ton(*need)
    )]
    WalletTooPoor {
        /// The worker contract.
        contract: String,
        /// The wallet of `wallet_key_file`.
        wallet: String,
        /// Its balance, nanoTON.
        have: u128,
        /// What the deployment needs, nanoTON.
        need: u128,
    },
    /// The chain could not be read or the message not sent (the next connection retries).
    #[error("worker contract {contract}: {reason}")]
    Chain {
        /// The worker contract.
        contract: String,
        /// What failed.
        reason: String,
    },
}

/// Whether [`PayoutSink::ensure_contract`] found the contract or sent its deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractStatus {
    /// The contract is active.
    Active,
    /// Its deployment was sent from the wallet now.
    DeploySent,
    /// Its deployment was sent earlier and has not shown yet.
    DeployPending,
    /// This sink cannot deploy contracts (nothing checked).
    Unchecked,
    /// The contract is missing, but the proxy contract it belongs to is not active on
    /// chain: nothing is deployed (a proxy claiming a new owner at every handshake must not
    /// make the worker spend a deployment each time; a real one has staked its contract).
    ProxyNotActive,
}

/// Submits a proxy-signed payout (BOC of the outer cell) for one proxy contract.
pub trait PayoutSink: Send + Sync {
    /// Makes sure `contract` (the worker contract a proxy's receipts name) exists: when it is
    /// not active, deploys it from the wallet, or fails with
    /// [`ContractError::WalletTooPoor`] without sending anything when the wallet cannot pay.
    /// The default (a sink without a wallet) checks nothing.
    fn ensure_contract<'a>(
        &'a self,
        contract: &'a Deployable,
        proxy_sc: &'a StdAddr,
    ) -> BoxFuture<'a, Result<ContractStatus, ContractError>> {
        let _ = (contract, proxy_sc);
        Box::pin(async { Ok(ContractStatus::Unchecked) })
    }

    /// Reads the worker contract at `address` (raw form), to tell whether a payout to it
    /// can still land. The default (a sink without a chain) reads nothing:
    /// [`WorkerOnChain::Unknown`].
    fn worker_contract<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<WorkerOnChain, String>> {
        let _ = address;
        Box::pin(async { Ok(WorkerOnChain::Unknown) })
    }

    /// Submits `signed_payment_boc`, which covers `tokens` cumulative tokens. `Ok` means the
    /// message was accepted for sending; the worker then counts those tokens as paid. A sink
    /// on a chain answers how to find the payout's transaction ([`SentPayout`]); one without
    /// a chain answers `None`.
    fn submit(
        &self,
        proxy_sc: &str,
        signed_payment_boc: Vec<u8>,
        tokens: u64,
    ) -> BoxFuture<'_, Result<Option<SentPayout>, String>>;

    /// Looks for the transaction of the worker contract `sent` names that received the
    /// payout: `None` while none shows. The default (a sink without a chain) finds none.
    fn payout_tx<'a>(
        &'a self,
        sent: &'a SentPayout,
    ) -> BoxFuture<'a, Result<Option<PayoutTx>, String>> {
        let _ = sent;
        Box::pin(async { Ok(None) })
    }
}

/// How to find a payout's transaction on chain: the worker contract, the hash of the
/// message body the wallet sent it, and the contract's last transaction before it was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentPayout {
    /// The worker contract (raw form).
    pub worker_sc: String,
    /// Hash of the internal message's body (hex).
    pub body_hash: String,
    /// Logical time of the contract's last transaction before the payout (`None`: none).
    pub after_lt: Option<u64>,
    /// Hash of that transaction (hex).
    pub after_hash: Option<String>,
}

/// The worker contract's transaction that received a payout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutTx {
    /// Transaction hash (hex).
    pub hash: String,
    /// Logical time.
    pub lt: u64,
    /// Unix time.
    pub utime: u64,
    /// Why it failed on chain (`None`: it went through).
    pub failed: Option<String>,
}

/// A worker contract as the chain shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerOnChain {
    /// Not read (a sink without a chain).
    Unknown,
    /// Not deployed (or not active).
    Missing,
    /// Active and open; `paid_tokens` is the token total it has paid out so far.
    Open {
        /// Tokens paid so far (`WorkerStorage.tokens`).
        paid_tokens: u64,
    },
    /// Closed: its proxy paid it its final payout (after a params change, or a proxy
    /// closing); it accepts no payout any more.
    Closed {
        /// Tokens paid in all.
        paid_tokens: u64,
    },
}

/// What to do with a due payout once the worker contract was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PayoutDecision {
    /// Send the signed payout.
    Submit,
    /// The contract already paid at least the signed tokens: record them as paid, send
    /// nothing.
    AlreadyPaid(u64),
    /// The contract is closed: record the proxy contract as settled, send nothing (a payout
    /// would bounce and cost gas).
    Closed(u64),
    /// The contract is not deployed (yet): send nothing and keep the receipt ready (a
    /// payout would bounce, and counting it as paid would lose the receipt); a later pass
    /// pays once its deployment landed.
    Wait,
}

/// The decision for `rec` given its worker contract's state `on_chain`.
pub(crate) fn decide_payout(rec: &ProxyRecord, on_chain: WorkerOnChain) -> PayoutDecision {
    match on_chain {
        WorkerOnChain::Closed { paid_tokens } => PayoutDecision::Closed(paid_tokens),
        WorkerOnChain::Open { paid_tokens } if paid_tokens >= rec.signed_tokens => {
            PayoutDecision::AlreadyPaid(paid_tokens)
        }
        WorkerOnChain::Missing => PayoutDecision::Wait,
        WorkerOnChain::Open { .. } | WorkerOnChain::Unknown => PayoutDecision::Submit,
    }
}

/// nanoTON earned by `ready_tokens` adjusted tokens at `worker_fee_per_token`.
pub(crate) fn ready_nanoton(ready_tokens: u64, worker_fee_per_token: u64) -> u128 {
    u128::from(ready_tokens) * u128::from(worker_fee_per_token)
}

/// Whether a payout of `ready_tokens` is due under `threshold_nanoton`.
pub(crate) fn payout_due(
    ready_tokens: u64,
    worker_fee_per_token: u64,
    threshold_nanoton: u128,
) -> bool {
    ready_tokens > 0 && ready_nanoton(ready_tokens, worker_fee_per_token) >= threshold_nanoton
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(signed: u64, paid: u64) -> ProxyRecord {
        ProxyRecord {
            signed_tokens: signed,
            paid_out_tokens: paid,
            ..ProxyRecord::default()
        }
    }

    #[test]
    fn a_closed_contract_gets_no_payout() {
        use PayoutDecision::*;
        let rec = record(120, 0);
        // Closed after the proxy's final payout: settled, whatever the totals.
        for paid_tokens in [0, 100, 120, 500] {
            assert_eq!(
                decide_payout(&rec, WorkerOnChain::Closed { paid_tokens }),
                Closed(paid_tokens)
            );
        }
        // Open: only what it has not paid yet is sent.
        assert_eq!(
            decide_payout(&rec, WorkerOnChain::Open { paid_tokens: 100 }),
            Submit
        );
        assert_eq!(
            decide_payout(&rec, WorkerOnChain::Open { paid_tokens: 120 }),
            AlreadyPaid(120)
        );
        assert_eq!(
            decide_payout(&rec, WorkerOnChain::Open { paid_tokens: 130 }),
            AlreadyPaid(130)
        );
        // Not deployed (yet): nothing sent, the receipt stays ready. Not read (a sink with
        // no chain): sent as before.
        assert_eq!(decide_payout(&rec, WorkerOnChain::Missing), Wait);
        assert_eq!(decide_payout(&rec, WorkerOnChain::Unknown), Submit);
    }

    #[test]
    fn threshold_is_in_nanoton_not_tokens() {
        const TEN_TON: u128 = 10_000_000_000;
        // 1e9 tokens at 10 nanoTON each = 10 TON: due.
        assert!(payout_due(1_000_000_000, 10, TEN_TON));
        // 5e8 tokens at 10 nanoTON is 5 TON: not due.
        assert!(!payout_due(500_000_000, 10, TEN_TON));
        // Nothing to pay is never due, even with a zero threshold.
        assert!(!payout_due(0, 10, 0));
        assert_eq!(
            ready_nanoton(u64::MAX, u64::MAX),
            u128::from(u64::MAX) * u128::from(u64::MAX)
        );
    }
}
