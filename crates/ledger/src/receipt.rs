//! Signed cumulative receipts, issued only from durable, chain-confirmed
//! state.
//!
//! A receipt is a [`SignedPayment`] for the account's cumulative tokens, bound to its contract
//! address. Regular receipts (client charge, worker payout) carry `chain_tokens`: usage that a
//! confirmed on-chain checkpoint covers, so a rolled-back database can never have signed more
//! than the chain proves it had. `chain_tokens` only grows and is persisted before a receipt
//! for it can be made, so receipts only increase, across restarts too.

use cocoon_ton::StdAddr;
use cocoon_ton::keys::SigningKey;
use cocoon_ton::payments::{PaymentPayload, SignedOp, SignedPayment};

use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::types::{AccountKey, Kind, Status};

/// A signed receipt, ready to send to the client or worker (BOC: `payment.to_boc()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The account.
    pub key: AccountKey,
    /// Which message.
    pub op: SignedOp,
    /// Cumulative adjusted tokens.
    pub tokens: u64,
    /// The signed message.
    pub payment: SignedPayment,
}

fn sign(
    key: &AccountKey,
    op: SignedOp,
    tokens: u64,
    query_id: u64,
    send_excesses_to: &StdAddr,
    signer: &SigningKey,
) -> Result<Receipt, LedgerError> {
    let payment = PaymentPayload {
        op,
        query_id,
        tokens: Some(tokens),
        contract: key.address.clone(),
    }
    .sign(signer, send_excesses_to)
    .map_err(|e| LedgerError::Receipt(e.to_string()))?;
    Ok(Receipt {
        key: key.clone(),
        op,
        tokens,
        payment,
    })
}

impl Ledger {
    fn receipt_account(&self, key: &AccountKey) -> Result<&crate::account::Account, LedgerError> {
        if let Some(r) = &self.halted {
            return Err(LedgerError::Halted(r.clone()));
        }
        let a = self
            .state
            .accounts
            .get(key)
            .ok_or_else(|| LedgerError::UnknownAccount(key.clone()))?;
        if let Some(reason) = &a.frozen {
            return Err(LedgerError::Frozen {
                key: key.clone(),
                reason: reason.clone(),
            });
        }
        Ok(a)
    }

    fn freeze_regressed(&mut self, key: &AccountKey, tokens: u64, last: u64) -> LedgerError {
        let reason = format!("receipt would go back from {last} to {tokens} tokens");
        let _ = self.freeze(key, &reason);
        LedgerError::Frozen {
            key: key.clone(),
            reason,
        }
    }

    /// The current receipt for `key`: a client charge or worker payout for the tokens covered
    /// by the last confirmed checkpoint. `Ok(None)` when nothing is covered yet (sent as
    /// `proxy.signedPaymentEmpty`). [`LedgerError::NotDurable`] until the confirmation is
    /// committed.
    pub fn receipt(
        &mut self,
        key: &AccountKey,
        query_id: u64,
        send_excesses_to: &StdAddr,
        signer: &SigningKey,
    ) -> Result<Option<Receipt>, LedgerError> {
        let a = self.receipt_account(key)?;
        if self.confirm_seq > self.committed_seq {
            return Err(LedgerError::NotDurable);
        }
        let (tokens, last) = (a.chain_tokens, a.last_receipt);
        if tokens == 0 {
            return Ok(None);
        }
        let op = match key.kind {
            Kind::Client => SignedOp::ClientCharge,
            Kind::Worker => SignedOp::WorkerPayout,
        };
        let r = self.sign_receipt(key, (tokens, last), |tokens| {
            sign(key, op, tokens, query_id, send_excesses_to, signer)
        })?;
        Ok(Some(r))
    }

    /// The final receipt that closes a `Closing` account: client grant-refund or worker last
    /// payout for all its tokens. Needs no
    /// running request on it, its last update durable, and all its usage covered by a
    /// confirmed checkpoint — also for accounts of older params versions, which later
    /// checkpoints keep covering: requests running across a params change may still add to
    /// them, and a database restored from before that usage must not sign a smaller final
    /// receipt than the one already given.
    pub fn final_receipt(
        &mut self,
        key: &AccountKey,
        query_id: u64,
        send_excesses_to: &StdAddr,
        signer: &SigningKey,
    ) -> Result<Receipt, LedgerError> {
        let committed = self.committed_seq;
        let a = self.receipt_account(key)?;
        let not = |reason| LedgerError::NotClosable {
            key: key.clone(),
            reason,
        };
        if a.status != Status::Closing {
            return Err(not("contract is not closing"));
        }
        if a.reserved > 0 {
            return Err(not("requests are still running"));
        }
        if a.last_update > committed {
            return Err(LedgerError::NotDurable);
        }
        if a.chain_tokens != a.tokens {
            return Err(not("usage not covered by a confirmed checkpoint yet"));
        }
        if self.confirm_seq > committed {
            return Err(LedgerError::NotDurable);
        }
        let (tokens, last) = (a.tokens, a.last_receipt);
        let op = match key.kind {
            Kind::Client => SignedOp::ClientGrantRefund,
            Kind::Worker => SignedOp::WorkerLastPayout,
        };
        self.sign_receipt(key, (tokens, last), |tokens| {
            sign(key, op, tokens, query_id, send_excesses_to, signer)
        })
    }

    /// Signs the receipt for `tokens` with `sign_for` and records it as `key`'s last; fewer
    /// tokens than its last receipt (`last`) freeze the account instead.
    fn sign_receipt(
        &mut self,
        key: &AccountKey,
        (tokens, last): (u64, u64),
        sign_for: impl FnOnce(u64) -> Result<Receipt, LedgerError>,
    ) -> Result<Receipt, LedgerError> {
        if tokens < last {
            return Err(self.freeze_regressed(key, tokens, last));
        }
        let r = sign_for(tokens)?;
        if let Some(a) = self.state.accounts.get_mut(key) {
            a.last_receipt = tokens;
        }
        Ok(r)
    }
}
