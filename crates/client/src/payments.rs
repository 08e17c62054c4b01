//! The client's side of its payment channels: one client contract per proxy.
//!
//! A client contract holds the client's prepaid balance and stake for
//! one proxy; its coins sit in the proxy contract. The owner (the client's wallet) deploys it
//! with a top-up, keeps `secret_hash` equal to SHA-256 of the client's secret so that
//! reconnections authorise without a transaction, registers a nonce when the proxy asks for
//! the long path, tops it up, submits the proxy's signed charges, withdraws what is above
//! the stake, and closes it in two phases (`request_refund` twice, the second after
//! `client_delay_before_close`).
//!
//! [`ChannelOps`] is what the gateway needs from the chain; [`crate::TonChannels`] implements
//! it with a wallet through toncenter. [`plan`] is the automatic policy:
//! top up when the paid-up tokens run low, charge when enough usage is
//! waiting, both configurable.

use cocoon_ton::StdAddr;
use cocoon_ton::contracts::Deployable;
use cocoon_ton::payments::SignedPayment;
use futures::future::BoxFuture;

/// nanoTON in one TON.
pub(crate) const TON: u64 = 1_000_000_000;

/// A client contract's storage as the chain shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChannelState {
    /// 0 normal, 1 closing, 2 closed.
    pub state: u8,
    /// Prepaid nanoTON not yet charged.
    pub balance: u64,
    /// nanoTON of unsettled usage the proxy may serve.
    pub stake: u64,
    /// Tokens charged so far (the latest submitted receipt).
    pub tokens_used: u64,
    /// When a closing contract may be closed for good (unix seconds).
    pub unlock_ts: u32,
    /// SHA-256 of the client's secret, if set.
    pub secret_hash: Option<[u8; 32]>,
}

/// Why a chain operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The chain API could not be reached or answered garbage.
    #[error("chain unavailable: {0}")]
    Unavailable(String),
    /// The wallet cannot pay for the operation.
    #[error("wallet balance too low: has {have} nanoTON, needs {need}")]
    WalletTooLow {
        /// The wallet's balance, nanoTON.
        have: u64,
        /// What the operation needs, nanoTON.
        need: u64,
    },
    /// The operation was sent but the contract did not change as expected.
    #[error("{0}")]
    Rejected(String),
    /// The wallet's message was not confirmed in time.
    #[error("not confirmed in time: {0}")]
    Timeout(String),
}

/// What the gateway needs from the chain for its client contracts. Every method that sends
/// returns once the wallet's message is confirmed (its seqno advanced).
pub trait ChannelOps: Send + Sync + 'static {
    /// The owner address (the wallet that sends every owner operation).
    fn owner(&self) -> StdAddr;
    /// The wallet's own balance, nanoTON.
    fn wallet_balance(&self) -> BoxFuture<'_, Result<u64, ChannelError>>;
    /// The contract's storage; `None` while it is not deployed.
    fn state<'a>(
        &'a self,
        contract: &'a StdAddr,
    ) -> BoxFuture<'a, Result<Option<ChannelState>, ChannelError>>;
    /// Deploys `contract` with a top-up of `amount` nanoTON and, when given, sets its secret
    /// hash (one or two messages).
    fn deploy<'a>(
        &'a self,
        contract: &'a Deployable,
        amount: u64,
        secret_hash: Option<[u8; 32]>,
    ) -> BoxFuture<'a, Result<(), ChannelError>>;
    /// Sets the secret hash used for short authorisation.
    fn set_secret_hash<'a>(
        &'a self,
        contract: &'a StdAddr,
        secret_hash: [u8; 32],
    ) -> BoxFuture<'a, Result<(), ChannelError>>;
    /// `owner_client_register{nonce}`: completes a proxy's long authorisation.
    fn register<'a>(
        &'a self,
        contract: &'a StdAddr,
        nonce: u64,
    ) -> BoxFuture<'a, Result<(), ChannelError>>;
    /// Adds `amount` nanoTON to the balance.
    fn top_up<'a>(
        &'a self,
        contract: &'a StdAddr,
        amount: u64,
    ) -> BoxFuture<'a, Result<(), ChannelError>>;
    /// Submits a proxy-signed charge (re-packed with the wallet as excess address).
    fn charge<'a>(
        &'a self,
        contract: &'a StdAddr,
        receipt: &'a SignedPayment,
    ) -> BoxFuture<'a, Result<(), ChannelError>>;
    /// Takes back `balance - stake`.
    fn withdraw<'a>(&'a self, contract: &'a StdAddr) -> BoxFuture<'a, Result<(), ChannelError>>;
    /// `owner_client_request_refund`: the first call starts closing (and returns what is above
    /// the stake), a call after `unlock_ts` closes for good and refunds the rest.
    fn request_refund<'a>(
        &'a self,
        contract: &'a StdAddr,
    ) -> BoxFuture<'a, Result<(), ChannelError>>;
}

/// The automatic policy's knobs.
#[derive(Debug, Clone)]
pub struct AutoPay {
    /// Top up automatically.
    pub top_up: bool,
    /// Submit the proxy's charges automatically.
    pub charge: bool,
    /// nanoTON a deploy or an automatic top-up adds; 0: the contract's stake.
    pub top_up_amount: u64,
}

impl Default for AutoPay {
    fn default() -> Self {
        AutoPay {
            top_up: true,
            charge: true,
            top_up_amount: 0,
        }
    }
}

/// What [`plan`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing is due.
    Idle,
    /// Top up by this many nanoTON.
    TopUp(u64),
    /// Submit the best receipt (it covers this many tokens).
    Charge(u64),
}

/// With `price` nanoTON per token, the paid-up tokens are
/// `tokens_used + balance/price`; top up when fewer than half the stake's worth of tokens
/// remain above what the proxy reported using (`max_tokens`), and charge when the proxy's
/// reported usage runs ahead of the chain by more than half the stake and a receipt beyond
/// the chain's `tokens_used` is held. A closing contract gets neither.
pub(crate) fn plan(
    st: &ChannelState,
    price: u64,
    max_tokens: u64,
    best_receipt_tokens: u64,
    auto: &AutoPay,
) -> Step {
    if st.state != 0 || price == 0 {
        return Step::Idle;
    }
    let stake_tokens = st.stake / price;
    let paid_up = st.tokens_used.saturating_add(st.balance / price);
    let used = max_tokens.max(st.tokens_used);
    if auto.charge
        && best_receipt_tokens > st.tokens_used
        && max_tokens > st.tokens_used.saturating_add(stake_tokens / 2)
    {
        return Step::Charge(best_receipt_tokens);
    }
    if auto.top_up && paid_up.saturating_sub(used) < stake_tokens / 2 {
        let amount = if auto.top_up_amount > 0 {
            auto.top_up_amount
        } else {
            st.stake
        };
        let amount = amount - amount % price;
        if amount > 0 {
            return Step::TopUp(amount);
        }
    }
    Step::Idle
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(balance: u64, stake: u64, used: u64) -> ChannelState {
        ChannelState {
            balance,
            stake,
            tokens_used: used,
            ..ChannelState::default()
        }
    }

    #[test]
    fn tops_up_when_less_than_half_the_stake_remains() {
        let auto = AutoPay::default();
        // price 10: stake 1000 = 100 tokens; balance 600 = 60 tokens paid up.
        assert_eq!(plan(&st(600, 1000, 0), 10, 0, 0, &auto), Step::Idle);
        assert_eq!(plan(&st(600, 1000, 0), 10, 11, 0, &auto), Step::TopUp(1000));
        assert_eq!(plan(&st(400, 1000, 0), 10, 0, 0, &auto), Step::TopUp(1000));
        let fixed = AutoPay {
            top_up_amount: 2345,
            ..AutoPay::default()
        };
        assert_eq!(plan(&st(400, 1000, 0), 10, 0, 0, &fixed), Step::TopUp(2340));
        let off = AutoPay {
            top_up: false,
            ..AutoPay::default()
        };
        assert_eq!(plan(&st(400, 1000, 0), 10, 0, 0, &off), Step::Idle);
    }

    #[test]
    fn charges_when_usage_runs_ahead_and_a_better_receipt_is_held() {
        let auto = AutoPay::default();
        // stake 100 tokens: charge once usage is > 50 tokens ahead of the chain.
        assert_eq!(
            plan(&st(5000, 1000, 10), 10, 61, 40, &auto),
            Step::Charge(40)
        );
        assert_eq!(plan(&st(5000, 1000, 10), 10, 60, 40, &auto), Step::Idle);
        // No receipt beyond the chain: nothing to charge.
        assert_eq!(plan(&st(5000, 1000, 10), 10, 90, 10, &auto), Step::Idle);
        let mut closing = st(0, 1000, 0);
        closing.state = 1;
        assert_eq!(plan(&closing, 10, 90, 50, &auto), Step::Idle);
    }
}
