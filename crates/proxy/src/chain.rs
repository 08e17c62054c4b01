//! What the proxy needs from the chain, behind two small traits.
//!
//! [`ClientChain`], for authorisation: the proxy reads the client contract (stored
//! `secret_hash`, balance, stake, tokens already charged, state) to pick short or long
//! authorisation, and completes a long one when it sees the client contract forward
//! `client_proxy_register{nonce}` to the proxy contract.
//!
//! [`CheckpointChain`], for settlement: `save_state` checkpoints sent to and read back from
//! the proxy contract, and signed charges/payouts submitted to client and worker contracts.
//!
//! `ton_chain` implements them over any `cocoon_ton::chain::Chain`; [`MemoryChain`] answers
//! both from memory (development and tests).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use cocoon_ledger::ChainCheckpoint;

use cocoon_ton::StdAddr;
use futures::future::BoxFuture;
use tokio::sync::watch;

/// The client contract as the proxy needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientContractState {
    /// SHA-256 of the client's secret string, when the client set one.
    pub secret_hash: Option<[u8; 32]>,
    /// Balance in nanoTON.
    pub balance: u64,
    /// Stake in nanoTON.
    pub stake: u64,
    /// Tokens already charged on-chain.
    pub tokens_used: u64,
    /// The contract is closing: no new requests.
    pub closing: bool,
    /// The contract is closed (refunded).
    pub closed: bool,
}

impl ClientContractState {
    /// Credit in tokens: `min(paid-up, charged + stake)` at `price_per_token`.
    pub fn credit_tokens(&self, price_per_token: u64) -> u64 {
        let p = price_per_token.max(1);
        let paid_up = self.tokens_used.saturating_add(self.balance / p);
        let staked = self.tokens_used.saturating_add(self.stake / p);
        paid_up.min(staked)
    }
}

/// Why a chain operation of the proxy failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyChainError {
    /// The chain could not be read or written.
    #[error("chain unavailable: {0}")]
    Unavailable(String),
}

/// Chain access for client authorisation.
pub trait ClientChain: Send + Sync + 'static {
    /// The client contract's state; `None` when it is not deployed.
    fn client_state<'a>(
        &'a self,
        client_sc: &'a StdAddr,
    ) -> BoxFuture<'a, Result<Option<ClientContractState>, ProxyChainError>>;

    /// Resolves once the client contract registered `nonce` with the proxy contract (long
    /// authorisation). The caller bounds the wait.
    fn wait_register<'a>(
        &'a self,
        client_sc: &'a StdAddr,
        nonce: u64,
    ) -> BoxFuture<'a, Result<(), ProxyChainError>>;

    /// Chain reads refused so far because the configured TON endpoints disagreed (see
    /// `cocoon_ton::QuorumChain`); shown to the operator.
    fn ton_disagreements(&self) -> u64 {
        0
    }
}

/// What settlement needs from the chain: the proxy contract's `save_state` records and a
/// way to submit signed charges and payouts.
pub trait CheckpointChain: Send + Sync + 'static {
    /// Sends `save_state(seqno, hash)` to our proxy contract (a self-transaction; the record
    /// is the checkpoint).
    fn send_checkpoint(&self, c: ChainCheckpoint) -> BoxFuture<'_, Result<(), ProxyChainError>>;

    /// `save_state` records on our proxy contract with a seqno above `after`, in chain order.
    fn checkpoints_since(
        &self,
        after: u32,
    ) -> BoxFuture<'_, Result<Vec<ChainCheckpoint>, ProxyChainError>>;

    /// Submits a signed receipt (BoC) to the client or worker contract it names.
    fn submit_receipt<'a>(
        &'a self,
        contract: &'a StdAddr,
        boc: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), ProxyChainError>>;

    /// Asks the proxy contract to pay the accumulated commission to its owner.
    fn withdraw(&self) -> BoxFuture<'_, Result<(), ProxyChainError>>;

    /// The commission the proxy contract holds for its owner now (its storage `balance`),
    /// nanoTON; `None` when this chain cannot tell (then nothing is withdrawn automatically).
    fn commission(&self) -> BoxFuture<'_, Result<Option<u128>, ProxyChainError>> {
        Box::pin(async { Ok(None) })
    }
}

/// Contracts, registrations, checkpoints and submitted receipts held in memory.
#[derive(Debug)]
pub struct MemoryChain {
    clients: Mutex<HashMap<StdAddr, ClientContractState>>,
    registered: Mutex<HashSet<(StdAddr, u64)>>,
    tick: watch::Sender<u64>,
    checkpoints: Mutex<Vec<ChainCheckpoint>>,
    receipts: Mutex<Vec<(StdAddr, Vec<u8>)>>,
    withdrawals: std::sync::atomic::AtomicU64,
    commission: Mutex<Option<u128>>,
    /// While set, checkpoints sent are dropped (a chain that does not include them).
    drop_checkpoints: AtomicBool,
}

impl Default for MemoryChain {
    fn default() -> Self {
        MemoryChain {
            clients: Mutex::default(),
            registered: Mutex::default(),
            tick: watch::channel(0).0,
            checkpoints: Mutex::default(),
            receipts: Mutex::default(),
            withdrawals: std::sync::atomic::AtomicU64::new(0),
            commission: Mutex::new(None),
            drop_checkpoints: AtomicBool::new(false),
        }
    }
}

impl MemoryChain {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deploys or replaces a client contract.
    pub fn set_client(&self, client_sc: StdAddr, state: ClientContractState) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client_sc, state);
    }

    /// A client contract as it stands now.
    pub fn client(&self, client_sc: &StdAddr) -> Option<ClientContractState> {
        lock(&self.clients).get(client_sc).cloned()
    }

    /// Records the on-chain registration of `nonce` by `client_sc` (the long-auth message).
    pub fn register(&self, client_sc: StdAddr, nonce: u64) {
        self.registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((client_sc, nonce));
        self.tick.send_modify(|t| *t += 1);
    }

    /// Checkpoints on chain, oldest first.
    pub fn checkpoints(&self) -> Vec<ChainCheckpoint> {
        lock(&self.checkpoints).clone()
    }

    /// Records a checkpoint as if some proxy had sent it (a forged or forked one, in tests).
    pub fn push_checkpoint(&self, c: ChainCheckpoint) {
        lock(&self.checkpoints).push(c);
    }

    /// Makes the chain drop (`true`) or include (`false`) checkpoints sent from now on.
    pub fn set_drop_checkpoints(&self, drop: bool) {
        self.drop_checkpoints.store(drop, Ordering::Relaxed);
    }

    /// Commission withdrawals requested so far.
    pub fn withdrawals(&self) -> u64 {
        self.withdrawals.load(Ordering::Relaxed)
    }

    /// Sets the commission the proxy contract reports (`None`: unknown, the default). A
    /// withdrawal does not change it: a test sets it to what the contract would show.
    pub fn set_commission(&self, nanoton: Option<u128>) {
        *lock(&self.commission) = nanoton;
    }

    /// Receipts submitted so far: `(contract, BoC)`.
    pub fn receipts(&self) -> Vec<(StdAddr, Vec<u8>)> {
        lock(&self.receipts).clone()
    }

    fn is_registered(&self, client_sc: &StdAddr, nonce: u64) -> bool {
        self.registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(client_sc.clone(), nonce))
    }
}

impl ClientChain for MemoryChain {
    fn client_state<'a>(
        &'a self,
        client_sc: &'a StdAddr,
    ) -> BoxFuture<'a, Result<Option<ClientContractState>, ProxyChainError>> {
        let s = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(client_sc)
            .cloned();
        Box::pin(async move { Ok(s) })
    }

    fn wait_register<'a>(
        &'a self,
        client_sc: &'a StdAddr,
        nonce: u64,
    ) -> BoxFuture<'a, Result<(), ProxyChainError>> {
        let mut rx = self.tick.subscribe();
        Box::pin(async move {
            loop {
                if self.is_registered(client_sc, nonce) {
                    return Ok(());
                }
                if rx.changed().await.is_err() {
                    return Err(ProxyChainError::Unavailable("chain dropped".into()));
                }
            }
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CheckpointChain for MemoryChain {
    fn send_checkpoint(&self, c: ChainCheckpoint) -> BoxFuture<'_, Result<(), ProxyChainError>> {
        if !self.drop_checkpoints.load(Ordering::Relaxed) {
            self.push_checkpoint(c);
        }
        Box::pin(async { Ok(()) })
    }

    fn checkpoints_since(
        &self,
        after: u32,
    ) -> BoxFuture<'_, Result<Vec<ChainCheckpoint>, ProxyChainError>> {
        let v = lock(&self.checkpoints)
            .iter()
            .filter(|c| c.seqno > after)
            .copied()
            .collect();
        Box::pin(async move { Ok(v) })
    }

    fn submit_receipt<'a>(
        &'a self,
        contract: &'a StdAddr,
        boc: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), ProxyChainError>> {
        lock(&self.receipts).push((contract.clone(), boc));
        Box::pin(async { Ok(()) })
    }

    fn withdraw(&self) -> BoxFuture<'_, Result<(), ProxyChainError>> {
        self.withdrawals.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }

    fn commission(&self) -> BoxFuture<'_, Result<Option<u128>, ProxyChainError>> {
        let c = *lock(&self.commission);
        Box::pin(async move { Ok(c) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_is_bounded_by_balance_and_stake() {
        let s = ClientContractState {
            balance: 1_000,
            stake: 400,
            tokens_used: 7,
            ..Default::default()
        };
        assert_eq!(s.credit_tokens(10), 7 + 40);
        let s = ClientContractState {
            balance: 100,
            stake: 400,
            tokens_used: 0,
            ..Default::default()
        };
        assert_eq!(s.credit_tokens(10), 10);
        assert_eq!(s.credit_tokens(0), 100);
    }

    #[tokio::test]
    async fn registration_wakes_the_waiter() {
        let c = std::sync::Arc::new(MemoryChain::new());
        let a = StdAddr::new(0, cocoon_ton::HashBytes([1; 32]));
        let c2 = c.clone();
        let a2 = a.clone();
        let w = tokio::spawn(async move { c2.wait_register(&a2, 5).await });
        c.register(a.clone(), 4);
        c.register(a, 5);
        w.await.unwrap().unwrap();
    }
}
