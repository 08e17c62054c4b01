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
//! The worker contract must exist: this sink does not deploy it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cocoon_ton::chain::Chain;
use cocoon_ton::payments::{PaymentPayload, SignedPayment};
use cocoon_ton::wallet::{OutMsg, SenderEvent, WalletSender};
use futures::future::BoxFuture;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::payout::PayoutSink;

/// nanoTON attached to a payout message by default.
pub const DEFAULT_ATTACH_NANOTON: u64 = 500_000_000;

/// Submits payouts from a wallet through a [`Chain`].
pub struct ChainPayoutSink<C: Chain> {
    sender: Mutex<WalletSender<C>>,
    attach_nanoton: u64,
}

impl<C: Chain> std::fmt::Debug for ChainPayoutSink<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainPayoutSink")
            .field("attach_nanoton", &self.attach_nanoton)
            .finish_non_exhaustive()
    }
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
        }
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
    fn submit(
        &self,
        _proxy_sc: &str,
        signed_payment_boc: Vec<u8>,
        _tokens: u64,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.submit_inner(signed_payment_boc))
    }
}
