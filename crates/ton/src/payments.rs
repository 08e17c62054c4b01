//! Proxy-signed payments: cumulative receipts bound to one child contract.
//!
//! The proxy signs, with its Ed25519 key, the representation hash of an inner cell
//! `op:32 ‖ qid:64 ‖ tokens:64 ‖ expected_contract:MsgAddress` (close requests carry no
//! tokens). What travels is the outer cell `op:32 ‖ qid:64 ‖ send_excesses_to:MsgAddress ‖
//! signature:512 ‖ ^inner`. Anyone holding it may submit it to the contract and may swap the
//! excess address, since the excess address is not
//! signed. Tokens are cumulative, so only the latest receipt matters.
//!
//! [`SignedPayment::verify`] applies the target contract's checks in the same order: outer
//! op, inner op/qid equal to the outer ones, target contract, signature.

use tycho_types::cell::{Cell, CellBuilder};
use tycho_types::models::StdAddr;

use crate::codec::{self, Field, LayoutError, Signature, expect_end, load_addr, store_addr};
use crate::keys::{SigningKey, verify};
use crate::opcodes as op;

/// The kinds of proxy-signed messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignedOp {
    /// Client contract: cumulative charge.
    ClientCharge,
    /// Client contract: final charge, refund the rest.
    ClientGrantRefund,
    /// Worker contract: cumulative payout.
    WorkerPayout,
    /// Worker contract: final payout (closes the worker contract).
    WorkerLastPayout,
    /// Proxy contract: start closing (no tokens).
    ProxyCloseRequest,
    /// Proxy contract: complete closing (no tokens).
    ProxyCloseComplete,
}

impl SignedOp {
    /// The opcode.
    pub fn opcode(self) -> u32 {
        match self {
            SignedOp::ClientCharge => op::EXT_CLIENT_CHARGE_SIGNED,
            SignedOp::ClientGrantRefund => op::EXT_CLIENT_GRANT_REFUND_SIGNED,
            SignedOp::WorkerPayout => op::EXT_WORKER_PAYOUT_REQUEST_SIGNED,
            SignedOp::WorkerLastPayout => op::EXT_WORKER_LAST_PAYOUT_REQUEST_SIGNED,
            SignedOp::ProxyCloseRequest => op::EXT_PROXY_CLOSE_REQUEST_SIGNED,
            SignedOp::ProxyCloseComplete => op::EXT_PROXY_CLOSE_COMPLETE_REQUEST_SIGNED,
        }
    }

    /// The kind for an opcode.
    pub fn from_opcode(v: u32) -> Option<Self> {
        [
            SignedOp::ClientCharge,
            SignedOp::ClientGrantRefund,
            SignedOp::WorkerPayout,
            SignedOp::WorkerLastPayout,
            SignedOp::ProxyCloseRequest,
            SignedOp::ProxyCloseComplete,
        ]
        .into_iter()
        .find(|k| k.opcode() == v)
    }

    /// Whether the inner cell carries a token count.
    pub fn has_tokens(self) -> bool {
        !matches!(
            self,
            SignedOp::ProxyCloseRequest | SignedOp::ProxyCloseComplete
        )
    }
}

/// Why a signed payment was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PaymentError {
    /// The cells do not have the signed-payment shape.
    #[error("malformed signed payment: {0}")]
    Layout(#[from] LayoutError),
    /// The outer opcode is not a signed-payment opcode, or not the one expected.
    #[error("wrong signed-payment op {found:#010x}, expected {expected:#010x}")]
    WrongOp {
        /// Expected opcode.
        expected: u32,
        /// Found opcode.
        found: u32,
    },
    /// The inner op or query id differs from the outer one.
    #[error("inner {field} differs from the outer one")]
    HeaderMismatch {
        /// `"op"` or `"query_id"`.
        field: &'static str,
    },
    /// The receipt is bound to another contract.
    #[error("payment is for contract {found}, not {expected}")]
    WrongContract {
        /// Our contract.
        expected: StdAddr,
        /// The contract named in the receipt.
        found: StdAddr,
    },
    /// The signature does not verify under the proxy key.
    #[error("bad signature")]
    BadSignature,
    /// The token total does not exceed the one already settled (replay of an older receipt).
    #[error("tokens {tokens} do not exceed the settled total {settled}")]
    NotIncreasing {
        /// Tokens in the receipt.
        tokens: u64,
        /// Tokens already settled.
        settled: u64,
    },
}

/// The signed inner cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentPayload {
    /// Which message this is.
    pub op: SignedOp,
    /// Query id (must equal the outer one).
    pub query_id: u64,
    /// Cumulative tokens (`None` for close requests).
    pub tokens: Option<u64>,
    /// The contract this receipt is for.
    pub contract: StdAddr,
}

impl PaymentPayload {
    /// Builds the inner cell.
    pub fn to_cell(&self) -> Result<Cell, LayoutError> {
        let mut b = CellBuilder::new();
        b.store_u32(self.op.opcode())?;
        b.store_u64(self.query_id)?;
        match (self.op.has_tokens(), self.tokens) {
            (true, Some(t)) => b.store_u64(t)?,
            (false, None) => {}
            (true, None) | (false, Some(_)) => {
                return Err(LayoutError::Invalid {
                    field: "tokens",
                    reason: format!(
                        "{:?} {} tokens",
                        self.op,
                        if self.op.has_tokens() {
                            "needs"
                        } else {
                            "carries no"
                        }
                    ),
                });
            }
        }
        store_addr(&mut b, &self.contract)?;
        Ok(b.build()?)
    }

    /// Parses the inner cell.
    pub fn from_cell(c: &Cell) -> Result<Self, PaymentError> {
        let mut s = c.as_slice().map_err(LayoutError::from)?;
        let found = s.load_u32().map_err(LayoutError::from)?;
        let kind =
            SignedOp::from_opcode(found).ok_or(PaymentError::WrongOp { expected: 0, found })?;
        let query_id = s.load_u64().map_err(LayoutError::from)?;
        let tokens = if kind.has_tokens() {
            Some(s.load_u64().map_err(LayoutError::from)?)
        } else {
            None
        };
        let contract = load_addr(&mut s)?;
        expect_end(&s, "signed payment payload")?;
        Ok(Self {
            op: kind,
            query_id,
            tokens,
            contract,
        })
    }

    /// Signs the payload and wraps it with an excess address.
    pub fn sign(
        &self,
        key: &SigningKey,
        send_excesses_to: &StdAddr,
    ) -> Result<SignedPayment, LayoutError> {
        let payload = self.to_cell()?;
        let signature = Signature(key.sign(payload.repr_hash().as_slice()));
        Ok(SignedPayment {
            op: self.op.opcode(),
            query_id: self.query_id,
            send_excesses_to: send_excesses_to.clone(),
            signature,
            payload,
        })
    }
}

/// The outer, submitted cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPayment {
    /// Outer opcode.
    pub op: u32,
    /// Outer query id.
    pub query_id: u64,
    /// Where the contract returns excess coins (not signed).
    pub send_excesses_to: StdAddr,
    /// Ed25519 over the payload's representation hash.
    pub signature: Signature,
    /// The signed inner cell.
    pub payload: Cell,
}

impl SignedPayment {
    /// Builds the outer cell.
    pub fn to_cell(&self) -> Result<Cell, LayoutError> {
        let mut b = CellBuilder::new();
        b.store_u32(self.op)?;
        b.store_u64(self.query_id)?;
        store_addr(&mut b, &self.send_excesses_to)?;
        self.signature.store(&mut b)?;
        b.store_reference(self.payload.clone())?;
        Ok(b.build()?)
    }

    /// Parses the outer cell (any opcode; [`Self::verify`] checks it).
    pub fn from_cell(c: &Cell) -> Result<Self, LayoutError> {
        let mut s = c.as_slice()?;
        let op = s.load_u32()?;
        let query_id = s.load_u64()?;
        let send_excesses_to = load_addr(&mut s)?;
        let signature = Signature::load(&mut s)?;
        let payload = s.load_reference_cloned()?;
        expect_end(&s, "signed payment")?;
        Ok(Self {
            op,
            query_id,
            send_excesses_to,
            signature,
            payload,
        })
    }

    /// BOC bytes (what `proxy.signedPayment` carries).
    pub fn to_boc(&self) -> Result<Vec<u8>, LayoutError> {
        Ok(codec::encode_boc(&self.to_cell()?))
    }

    /// Parses BOC bytes.
    pub fn from_boc(bytes: &[u8]) -> Result<Self, LayoutError> {
        Self::from_cell(&codec::decode_boc(bytes)?)
    }

    /// Checks the receipt as the target contract does, and returns its
    /// payload: op is `expected`, inner op/qid match, the contract is `contract`, and the
    /// signature verifies under `proxy_public_key`.
    pub fn verify(
        &self,
        expected: SignedOp,
        contract: &StdAddr,
        proxy_public_key: &[u8; 32],
    ) -> Result<PaymentPayload, PaymentError> {
        if self.op != expected.opcode() {
            return Err(PaymentError::WrongOp {
                expected: expected.opcode(),
                found: self.op,
            });
        }
        let p = PaymentPayload::from_cell(&self.payload)?;
        if p.op.opcode() != self.op {
            return Err(PaymentError::HeaderMismatch { field: "op" });
        }
        if p.query_id != self.query_id {
            return Err(PaymentError::HeaderMismatch { field: "query_id" });
        }
        if &p.contract != contract {
            return Err(PaymentError::WrongContract {
                expected: contract.clone(),
                found: p.contract,
            });
        }
        if !verify(
            proxy_public_key,
            self.payload.repr_hash().as_slice(),
            &self.signature.0,
        ) {
            return Err(PaymentError::BadSignature);
        }
        Ok(p)
    }

    /// [`Self::verify`] plus the contracts' monotonicity rule: tokens must exceed `settled`
    /// (for a last payout or grant-refund, equal is allowed; close requests have no tokens).
    pub fn verify_newer(
        &self,
        expected: SignedOp,
        contract: &StdAddr,
        proxy_public_key: &[u8; 32],
        settled: u64,
    ) -> Result<PaymentPayload, PaymentError> {
        let p = self.verify(expected, contract, proxy_public_key)?;
        let Some(tokens) = p.tokens else {
            return Ok(p); // close requests carry no tokens
        };
        let final_op = matches!(
            expected,
            SignedOp::WorkerLastPayout | SignedOp::ClientGrantRefund
        );
        if tokens < settled || (tokens == settled && !final_op) {
            return Err(PaymentError::NotIncreasing { tokens, settled });
        }
        Ok(p)
    }

    /// The same receipt with another excess address (the signature stays valid).
    pub fn repack(&self, send_excesses_to: &StdAddr) -> SignedPayment {
        SignedPayment {
            send_excesses_to: send_excesses_to.clone(),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tycho_types::cell::HashBytes;

    fn a(n: u8) -> StdAddr {
        StdAddr::new(0, HashBytes([n; 32]))
    }

    fn proxy() -> SigningKey {
        SigningKey::from_seed(&[0x11; 32]).unwrap()
    }

    fn charge(tokens: u64) -> PaymentPayload {
        PaymentPayload {
            op: SignedOp::ClientCharge,
            query_id: 42,
            tokens: Some(tokens),
            contract: a(1),
        }
    }

    #[test]
    fn sign_verify_round_trip_through_boc() {
        let k = proxy();
        let sp = charge(1000).sign(&k, &a(9)).unwrap();
        let back = SignedPayment::from_boc(&sp.to_boc().unwrap()).unwrap();
        assert_eq!(back, sp);
        let p = back
            .verify(SignedOp::ClientCharge, &a(1), &k.public_key())
            .unwrap();
        assert_eq!(p.tokens, Some(1000));
        // outer layout: 32 + 64 + 267 + 512 bits, one ref
        let c = sp.to_cell().unwrap();
        assert_eq!(c.bit_len(), 32 + 64 + 267 + 512);
        assert_eq!(sp.payload.bit_len(), 32 + 64 + 64 + 267);
    }

    #[test]
    fn refusals_are_typed() {
        let k = proxy();
        let other = SigningKey::from_seed(&[0x22; 32]).unwrap();
        let sp = charge(1000).sign(&k, &a(9)).unwrap();
        assert!(matches!(
            sp.verify(SignedOp::ClientCharge, &a(1), &other.public_key()),
            Err(PaymentError::BadSignature)
        ));
        assert!(matches!(
            sp.verify(SignedOp::ClientCharge, &a(2), &k.public_key()),
            Err(PaymentError::WrongContract { .. })
        ));
        assert!(matches!(
            sp.verify(SignedOp::WorkerPayout, &a(1), &k.public_key()),
            Err(PaymentError::WrongOp { .. })
        ));
        // flipped bit in the signature
        let mut bad = sp.clone();
        bad.signature.0[10] ^= 1;
        assert!(matches!(
            bad.verify(SignedOp::ClientCharge, &a(1), &k.public_key()),
            Err(PaymentError::BadSignature)
        ));
        // payload tampered (tokens raised) keeps the old signature
        let mut bad = sp.clone();
        bad.payload = charge(5000).to_cell().unwrap();
        assert!(matches!(
            bad.verify(SignedOp::ClientCharge, &a(1), &k.public_key()),
            Err(PaymentError::BadSignature)
        ));
        // outer qid differs from the inner one
        let mut bad = sp.clone();
        bad.query_id += 1;
        assert!(matches!(
            bad.verify(SignedOp::ClientCharge, &a(1), &k.public_key()),
            Err(PaymentError::HeaderMismatch { field: "query_id" })
        ));
        // outer op relabelled: inner op differs
        let mut bad = sp.clone();
        bad.op = op::EXT_CLIENT_GRANT_REFUND_SIGNED;
        assert!(matches!(
            bad.verify(SignedOp::ClientGrantRefund, &a(1), &k.public_key()),
            Err(PaymentError::HeaderMismatch { field: "op" })
        ));
        // replay of an older total
        assert!(matches!(
            sp.verify_newer(SignedOp::ClientCharge, &a(1), &k.public_key(), 1000),
            Err(PaymentError::NotIncreasing { .. })
        ));
        assert!(
            sp.verify_newer(SignedOp::ClientCharge, &a(1), &k.public_key(), 999)
                .is_ok()
        );
    }

    #[test]
    fn repack_keeps_signature() {
        let k = proxy();
        let sp = charge(7).sign(&k, &a(9)).unwrap();
        let r = sp.repack(&a(8));
        assert_eq!(r.send_excesses_to, a(8));
        assert_ne!(
            r.to_cell().unwrap().repr_hash(),
            sp.to_cell().unwrap().repr_hash()
        );
        r.verify(SignedOp::ClientCharge, &a(1), &k.public_key())
            .unwrap();
    }

    #[test]
    fn close_requests_carry_no_tokens() {
        let k = proxy();
        let p = PaymentPayload {
            op: SignedOp::ProxyCloseRequest,
            query_id: 1,
            tokens: None,
            contract: a(3),
        };
        assert_eq!(p.to_cell().unwrap().bit_len(), 32 + 64 + 267);
        let sp = p.sign(&k, &a(4)).unwrap();
        assert_eq!(
            sp.verify(SignedOp::ProxyCloseRequest, &a(3), &k.public_key())
                .unwrap(),
            p
        );
        let bad = PaymentPayload {
            tokens: Some(1),
            ..p
        };
        assert!(bad.to_cell().is_err());
        let bad = PaymentPayload {
            op: SignedOp::WorkerPayout,
            tokens: None,
            query_id: 1,
            contract: a(3),
        };
        assert!(bad.to_cell().is_err());
    }

    proptest! {
        #[test]
        fn any_payment_round_trips(kind in 0usize..6, qid in any::<u64>(), tokens in any::<u64>(), wc in any::<i8>(), acc in any::<[u8; 32]>()) {
            let ops = [SignedOp::ClientCharge, SignedOp::ClientGrantRefund, SignedOp::WorkerPayout,
                       SignedOp::WorkerLastPayout, SignedOp::ProxyCloseRequest, SignedOp::ProxyCloseComplete];
            let op = ops[kind];
            let contract = StdAddr::new(wc, HashBytes(acc));
            let p = PaymentPayload { op, query_id: qid, tokens: op.has_tokens().then_some(tokens), contract: contract.clone() };
            let k = proxy();
            let sp = p.sign(&k, &a(1)).unwrap();
            let back = SignedPayment::from_boc(&sp.to_boc().unwrap()).unwrap();
            prop_assert_eq!(back.verify(op, &contract, &k.public_key()).unwrap(), p);
        }
    }
}
