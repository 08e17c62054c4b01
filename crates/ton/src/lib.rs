//! `cocoon-ton`: the TON side of Cocoon.
//!
//! Cocoon's money moves through TON contracts that COCOON's runners already talk to, so
//! every cell this crate builds must be bit-identical to what those runners build, and every
//! cell they build must parse here. The crate is organised by concern:
//!
//! - [`codec`]: primitives (addresses, coins, BOC) with the runners' strictness;
//! - [`opcodes`], [`messages`]: every message body as a typed struct;
//! - [`root`]: the root contract storage and the typed network configuration;
//! - [`code`]: the compiled code of the four contracts, attached to a root's params;
//! - [`contracts`]: proxy/client/worker storage and address derivation;
//! - [`payments`]: proxy-signed cumulative receipts;
//! - [`keys`]: Ed25519 keys from files;
//! - [`wallet`]: standard wallets v4r2/v5r1 and (feature `wallet-sender`) a resending sender;
//! - [`chain`]: the `Chain` trait (and the devnet's faucet/clock extension);
//! - [`ChainClock`], [`DriftCheck`]: the chain's time estimated from observed block times,
//!   and a local clock that drifts from it;
//! - [`Toncenter`] (feature `toncenter`): the toncenter-v2 HTTP client;
//! - [`QuorumChain`] (feature `toncenter`): a `Chain` over several endpoints whose reads need
//!   a quorum;
//! - `ops` (feature `wallet-sender`): root and wallet operations (deploy, owner operations,
//!   transfers, funding) sent through a wallet and checked against the contracts' own
//!   transactions.
//!
//! Cells are `tycho-types` cells, the same type the devnet's TVM executes. Without its
//! default features (`toncenter`, `wallet-sender`) the crate does no I/O and pulls in
//! neither tokio nor reqwest: the ledger uses it that way.
#![forbid(unsafe_code)]

pub mod chain;
mod clock;
pub mod code;
pub mod codec;
pub mod contracts;
pub mod keys;
pub mod messages;
pub mod opcodes;
#[cfg(feature = "wallet-sender")]
pub mod ops;
pub mod payments;
#[cfg(feature = "toncenter")]
mod quorum;
pub mod root;
#[cfg(feature = "toncenter")]
mod toncenter;
pub mod vectors;
pub mod wallet;

pub use clock::{ChainClock, Drift, DriftCheck};
#[cfg(feature = "toncenter")]
pub use quorum::{
    EndpointStats, QuorumChain, QuorumConfig, QuorumConfigError, QuorumStats, check_quorum,
    endpoint_label,
};
#[cfg(feature = "toncenter")]
pub use toncenter::{Toncenter, ToncenterConfig};
pub use tycho_types::cell::{Cell, CellBuilder, CellSlice, HashBytes};
pub use tycho_types::models::StdAddr;

/// Parses an address in raw (`0:hex`) or user-friendly (base64 / base64url) form.
pub fn parse_address(s: &str) -> Result<StdAddr, codec::LayoutError> {
    use tycho_types::models::StdAddrFormat;
    StdAddr::from_str_ext(s.trim(), StdAddrFormat::any())
        .map(|(a, _)| a)
        .map_err(|e| codec::LayoutError::Invalid {
            field: "address",
            reason: format!("{s:?}: {e}"),
        })
}

/// User-friendly form (base64url); bounceable for contracts, non-bounceable for wallets.
pub fn friendly_address(a: &StdAddr, bounceable: bool, testnet: bool) -> String {
    let mut d = a.display_base64_url(bounceable);
    d.flags.testnet = testnet;
    d.to_string()
}

/// Parses a TON amount with up to 9 decimals (`"1.5"` → 1 500 000 000 nanoTON).
pub fn parse_ton(s: &str) -> Result<u64, codec::LayoutError> {
    let bad = |reason: &str| codec::LayoutError::Invalid {
        field: "amount",
        reason: format!("{s:?}: {reason}"),
    };
    let s = s.trim();
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() {
        return Err(bad("empty"));
    }
    if frac.len() > 9 || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad("expected a decimal number with at most 9 decimals"));
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad("too large"))?
    };
    let frac: u64 = format!("{frac:0<9}")
        .parse()
        .map_err(|_| bad("bad decimals"))?;
    int.checked_mul(1_000_000_000)
        .and_then(|v| v.checked_add(frac))
        .ok_or_else(|| bad("too large"))
}

/// Formats nanoTON as TON with trailing zeros removed (`1500000000` → `"1.5"`).
pub fn format_ton(nano: u128) -> String {
    let int = nano / 1_000_000_000;
    let frac = nano % 1_000_000_000;
    if frac == 0 {
        return int.to_string();
    }
    let f = format!("{frac:09}");
    format!("{int}.{}", f.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ton_amounts() {
        assert_eq!(parse_ton("1.5").unwrap(), 1_500_000_000);
        assert_eq!(parse_ton("0.000000001").unwrap(), 1);
        assert_eq!(parse_ton("2").unwrap(), 2_000_000_000);
        assert_eq!(parse_ton(".5").unwrap(), 500_000_000);
        assert!(parse_ton("1.0000000001").is_err());
        assert!(parse_ton("-1").is_err());
        assert!(parse_ton("").is_err());
        assert!(parse_ton("99999999999999999999").is_err());
        assert_eq!(format_ton(1_500_000_000), "1.5");
        assert_eq!(format_ton(0), "0");
        assert_eq!(format_ton(1), "0.000000001");
    }

    #[test]
    fn address_forms() {
        // COCOON's mainnet root address from worker.conf.example
        let a = parse_address("EQCns7bYSp0igFvS1wpb5wsZjCKCV19MD5AVzI4EyxsnU73k").unwrap();
        assert_eq!(a.workchain, 0);
        assert_eq!(
            friendly_address(&a, true, false),
            "EQCns7bYSp0igFvS1wpb5wsZjCKCV19MD5AVzI4EyxsnU73k"
        );
        let raw = a.to_string();
        assert_eq!(parse_address(&raw).unwrap(), a);
        assert!(friendly_address(&a, false, false).starts_with("UQ"));
        assert!(parse_address("EQCns7bYSp0igFvS1wpb5wsZjCKCV19MD5AVzI4EyxsnU73j").is_err());
        assert!(parse_address("nonsense").is_err());
    }
}
