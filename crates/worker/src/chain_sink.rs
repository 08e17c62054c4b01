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
use cocoon_ton::chain::{AccountState, AccountStatus, Chain};
use cocoon_ton::contracts::Deployable;
use cocoon_ton::contracts::WorkerStorage;
use cocoon_ton::payments::{PaymentPayload, SignedPayment};
use cocoon_ton::wallet::{OutMsg, SenderEvent, WalletSender};
use futures::future::BoxFuture;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::payout::{ContractError, ContractStatus, PayoutSink, WorkerOnChain};

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

    async fn submit_inner(&self, boc: Vec<u8>) -> Result<(), String> {
        let sp = SignedPayment::from_boc(&boc).map_err(|e| format!("payout receipt: {e}"))?;
        let payload =
            PaymentPayload::from_cell(&sp.payload).map_err(|e| format!("payout receipt: {e}"))?;
        let mut sender = self.sender.lock().await;
        let body = sp
            .repack(sender.address())
            .to_cell()
            .map_err(|e| format!("payout body: {e}"))?;
        sender.enqueue(OutMsg::new(
            payload.contract,
            self.attach_nanoton,
            Some(body),
        ));
        sender
            .tick(now_unix())
            .await
            .map_err(|e| format!("payout wallet: {e}"))?;
        Ok(())
    }
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
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.submit_inner(signed_payment_boc))
    }
}
