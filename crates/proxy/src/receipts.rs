//! The meter's receipts and totals as the TL fields that carry them to peers.

use cocoon_tl::enums::proxy::SignedPayment;
use cocoon_tl::types::proxy as tproxy;

use crate::meter::{Meter, Party};

/// The meter's latest receipt for an account as a TL signed payment (empty when nothing is
/// checkpointed yet).
pub(crate) fn payment(meter: &dyn Meter, party: Party, address: &str) -> SignedPayment {
    match meter.receipt(party, address) {
        Some(data) => SignedPayment::SignedPayment(tproxy::SignedPayment { data }),
        None => SignedPayment::SignedPaymentEmpty(tproxy::SignedPaymentEmpty {}),
    }
}

/// A token count as a TL `long` (saturating; no real count comes near it).
pub(crate) fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
