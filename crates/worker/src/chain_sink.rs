//! A [`PayoutSink`] that cashes receipts out through the worker's wallet on TON.
//!
//! The latest proxy-signed payout is repacked with the wallet as the excess address (the
//! excess address is not signed, so the receipt stays valid) and sent as the body of an
//! internal message from the wallet to the worker contract named inside the receipt, with
//! `attach_nanoton` for fees (the contract returns the excess).
//! The wallet message goes through cocoon-ton's `WalletSender`, which resends until the
//! wallet's seqno moves; call [`ChainPayoutSink::tick`] periodically (or use
//! [`ChainPayoutSink::spawn_ticker`]) so that unconfirmed messages are resent.
//!
//! The worker contract must exist before the first payout reaches it:
//! [`PayoutSink::ensure_contract`] (called at every proxy handshake) deploys it from the
//! same wallet when it is missing, after checking that the wallet can pay for it, and the
//! wallet's seqno order makes the deployment land before any payout sent after it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cocoon_ton::StdAddr;
use cocoon_ton::chain::{AccountState, AccountStatus, Chain, Transaction, TxId};
use cocoon_ton::contracts::Deployable;
use cocoon_ton::contracts::WorkerStorage;
use cocoon_ton::payments::{PaymentPayload, SignedPayment};
use cocoon_ton::wallet::{OutMsg, SenderEvent, WalletSender};
use futures::future::BoxFuture;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::payout::{
    ContractError, ContractStatus, PayoutSink, PayoutTx, SentPayout, WorkerOnChain,
};

/// nanoTON attached to a payout message by default.
pub const DEFAULT_ATTACH_NANOTON: u64 = 500_000_000;

/// nanoTON a missing worker contract is deployed with by default (it stays there as the
/// contract's gas reserve; the contracts keep at least 0.05 TON).
pub const DEFAULT_DEPLOY_NANOTON: u64 = 300_000_000;

/// What the wallet must hold beyond the deployment's value: its own gas and forwarding fees.
const WALLET_MARGIN_NANOTON: u64 = 50_000_000;

/// A deployment sent is not sent again for this long while the contract is not active yet:
/// longer than a wallet message stays valid (3600 s), so one still queued in the wallet is
/// never doubled.
const REDEPLOY_AFTER: Duration = Duration::from_secs(65 * 60);

/// Submits payouts from a wallet through a [`Chain`].
pub struct ChainPayoutSink<C: Chain> {
    sender: Mutex<WalletSender<C>>,
    attach_nanoton: u64,
    deploy_nanoton: u64,
    /// Deployments sent and not seen active yet: contract → when.
    deploying: std::sync::Mutex<HashMap<cocoon_ton::StdAddr, Instant>>,
}

impl<C: Chain> std::fmt::Debug for ChainPayoutSink<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainPayoutSink")
            .field("attach_nanoton", &self.attach_nanoton)
            .finish_non_exhaustive()
    }
}

/// A worker contract's account state as [`WorkerOnChain`]: not active is missing; its
/// storage's `state` 2 or more is closed.
pub(crate) fn worker_on_chain(st: &AccountState) -> Result<WorkerOnChain, String> {
    use cocoon_ton::codec::Layout;
    let (AccountStatus::Active, Some(data)) = (st.status, st.data.as_ref()) else {
        return Ok(WorkerOnChain::Missing);
    };
    let ws = WorkerStorage::from_cell(data).map_err(|e| format!("worker contract storage: {e}"))?;
    let paid_tokens = ws.tokens;
    Ok(if ws.state.0 >= 2 {
        WorkerOnChain::Closed { paid_tokens }
    } else {
        WorkerOnChain::Open { paid_tokens }
    })
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl<C: Chain + 'static> ChainPayoutSink<C> {
    /// A sink sending from `sender`'s wallet, attaching `attach_nanoton` to each payout.
    pub fn new(sender: WalletSender<C>, attach_nanoton: u64) -> Self {
        ChainPayoutSink {
            sender: Mutex::new(sender),
            attach_nanoton,
            deploy_nanoton: DEFAULT_DEPLOY_NANOTON,
            deploying: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Deploys missing worker contracts with `nanoton` instead of [`DEFAULT_DEPLOY_NANOTON`].
    pub fn with_deploy_value(mut self, nanoton: u64) -> Self {
        self.deploy_nanoton = nanoton;
        self
    }

    async fn ensure_inner(
        &self,
        contract: &Deployable,
        proxy_sc: &StdAddr,
    ) -> Result<ContractStatus, ContractError> {
        let address = &contract.address;
        let fail = |reason: String| ContractError::Chain {
            contract: address.to_string(),
            reason,
        };
        let mut sender = self.sender.lock().await;
        let st = sender
            .chain()
            .account_state(address)
            .await
            .map_err(|e| fail(format!("cannot read it: {e}")))?;
        {
            let mut deploying = self.deploying.lock().unwrap_or_else(|p| p.into_inner());
            if st.status == AccountStatus::Active {
                deploying.remove(address);
                return Ok(ContractStatus::Active);
            }
            if deploying
                .get(address)
                .is_some_and(|at| at.elapsed() < REDEPLOY_AFTER)
            {
                return Ok(ContractStatus::DeployPending);
            }
        }
        let proxy = sender
            .chain()
            .account_state(proxy_sc)
            .await
            .map_err(|e| fail(format!("cannot read proxy contract {proxy_sc}: {e}")))?;
        if proxy.status != AccountStatus::Active {
            return Ok(ContractStatus::ProxyNotActive);
        }
        let wallet = sender.address().clone();
        let have = sender
            .chain()
            .account_state(&wallet)
            .await
            .map_err(|e| fail(format!("cannot read wallet {wallet}: {e}")))?
            .balance;
        let need = u128::from(self.deploy_nanoton) + u128::from(WALLET_MARGIN_NANOTON);
        if have < need {
            return Err(ContractError::WalletTooPoor {
                contract: address.to_string(),
                wallet: wallet.to_string(),
                have,
                need,
            });
        }
        let init = contract
            .state_init()
            .map_err(|e| fail(format!("state init: {e}")))?;
        sender.enqueue(OutMsg::deploy(
            address.clone(),
            self.deploy_nanoton,
            init,
            None,
        ));
        self.deploying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(address.clone(), Instant::now());
        sender
            .tick(now_unix())
            .await
            .map_err(|e| fail(format!("deployment not sent: {e}")))?;
        Ok(ContractStatus::DeploySent)
    }

    /// Settles the in-flight wallet message and sends queued ones (see `WalletSender::tick`).
    pub async fn tick(&self) -> Result<Vec<SenderEvent>, String> {
        self.sender
            .lock()
            .await
            .tick(now_unix())
            .await
            .map_err(|e| e.to_string())
    }

    /// Ticks every `every` until the returned task is aborted.
    pub fn spawn_ticker(self: &Arc<Self>, every: Duration) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if this.sender.lock().await.pending() == 0 {
                    continue;
                }
                if let Err(e) = this.tick().await {
                    tracing::warn!(error = %e, "payout wallet tick failed");
                }
            }
        })
    }

    async fn submit_inner(&self, boc: Vec<u8>) -> Result<Option<SentPayout>, String> {
        let sp = SignedPayment::from_boc(&boc).map_err(|e| format!("payout receipt: {e}"))?;
        let payload =
            PaymentPayload::from_cell(&sp.payload).map_err(|e| format!("payout receipt: {e}"))?;
        let mut sender = self.sender.lock().await;
        let body = sp
            .repack(sender.address())
            .to_cell()
            .map_err(|e| format!("payout body: {e}"))?;
        // Where the contract stood before: its payout transaction comes after this one. Not
        // readable: the search starts from its first transaction.
        let after = match sender.chain().account_state(&payload.contract).await {
            Ok(st) => st.last_tx,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the worker contract before a payout");
                None
            }
        };
        let sent = SentPayout {
            worker_sc: payload.contract.to_string(),
            body_hash: hex::encode(body.repr_hash().0),
            after_lt: after.as_ref().map(|t| t.lt),
            after_hash: after.as_ref().map(|t| hex::encode(t.hash)),
        };
        sender.enqueue(OutMsg::new(
            payload.contract,
            self.attach_nanoton,
            Some(body),
        ));
        sender
            .tick(now_unix())
            .await
            .map_err(|e| format!("payout wallet: {e}"))?;
        Ok(Some(sent))
    }

    async fn payout_tx_inner(&self, sent: &SentPayout) -> Result<Option<PayoutTx>, String> {
        let contract = cocoon_ton::parse_address(&sent.worker_sc)
            .map_err(|e| format!("worker contract {}: {e}", sent.worker_sc))?;
        let after = match (sent.after_lt, sent.after_hash.as_deref()) {
            (Some(lt), Some(h)) => {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(h, &mut hash)
                    .map_err(|e| format!("recorded transaction hash: {e}"))?;
                Some(TxId { lt, hash })
            }
            _ => None,
        };
        let wallet = self.sender.lock().await.address().clone();
        let txs = self
            .sender
            .lock()
            .await
            .chain()
            .transactions_since(&contract, after.as_ref(), PAYOUT_TX_SCAN)
            .await
            .map_err(|e| format!("worker contract {}: {e}", sent.worker_sc))?;
        Ok(find_payout_tx(&txs, &wallet, &sent.body_hash))
    }
}

/// How many of the worker contract's transactions after the recorded one are searched.
const PAYOUT_TX_SCAN: usize = 64;

/// The transaction among `txs` whose inbound message came from `wallet` with a body of hash
/// `body_hash` (hex), with why it failed when it did.
pub(crate) fn find_payout_tx(
    txs: &[Transaction],
    wallet: &StdAddr,
    body_hash: &str,
) -> Option<PayoutTx> {
    let tx = txs.iter().find(|t| {
        t.in_msg.as_ref().is_some_and(|m| {
            m.source.as_ref() == Some(wallet)
                && m.body
                    .as_ref()
                    .is_some_and(|b| hex::encode(b.repr_hash().0) == body_hash)
        })
    })?;
    let failed = match tx.outcome() {
        Ok(Some(o)) if o.failed() => Some(format!(
            "the worker contract refused it (exit code {})",
            o.exit_code.unwrap_or_default()
        )),
        Ok(Some(o)) if o.action_result_code.is_some_and(|c| c != 0) => Some(format!(
            "the worker contract could not send its messages (action result code {})",
            o.action_result_code.unwrap_or_default()
        )),
        _ => None,
    };
    Some(PayoutTx {
        hash: hex::encode(tx.id.hash),
        lt: tx.id.lt,
        utime: tx.utime,
        failed,
    })
}

impl<C: Chain + 'static> PayoutSink for ChainPayoutSink<C> {
    fn ensure_contract<'a>(
        &'a self,
        contract: &'a Deployable,
        proxy_sc: &'a StdAddr,
    ) -> BoxFuture<'a, Result<ContractStatus, ContractError>> {
        Box::pin(self.ensure_inner(contract, proxy_sc))
    }

    fn worker_contract<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<WorkerOnChain, String>> {
        Box::pin(async move {
            let addr = cocoon_ton::parse_address(address)
                .map_err(|e| format!("worker contract {address}: {e}"))?;
            let st = self
                .sender
                .lock()
                .await
                .chain()
                .account_state(&addr)
                .await
                .map_err(|e| format!("worker contract {address}: cannot read it: {e}"))?;
            worker_on_chain(&st)
        })
    }

    fn submit(
        &self,
        _proxy_sc: &str,
        signed_payment_boc: Vec<u8>,
        _tokens: u64,
    ) -> BoxFuture<'_, Result<Option<SentPayout>, String>> {
        Box::pin(self.submit_inner(signed_payment_boc))
    }

    fn payout_tx<'a>(
        &'a self,
        sent: &'a SentPayout,
    ) -> BoxFuture<'a, Result<Option<PayoutTx>, String>> {
        Box::pin(self.payout_tx_inner(sent))
    }
}
