//! When to cash out proxy-signed receipts.
//!
//! A signed payout is cumulative: submitting the latest one to the worker contract pays
//! `Δtokens × worker_fee_per_token`. Each submission costs fees, so the worker waits until
//! the unpaid part is worth at least a threshold **in nanoTON** (a threshold on the token
//! count would be off by the fee per token).
//!
//! The submission itself goes through a [`PayoutSink`]: the component that owns the wallet
//! and the chain client. The worker decides *when* and *what*; the sink decides *how*.

use futures::future::BoxFuture;

/// Submits a proxy-signed payout (BOC of the outer cell) for one proxy contract.
pub trait PayoutSink: Send + Sync {
    /// Submits `signed_payment_boc`, which covers `tokens` cumulative tokens. `Ok` means the
    /// message was accepted for sending; the worker then counts those tokens as paid.
    fn submit(
        &self,
        proxy_sc: &str,
        signed_payment_boc: Vec<u8>,
        tokens: u64,
    ) -> BoxFuture<'_, Result<(), String>>;
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
