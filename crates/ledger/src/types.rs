//! Identifiers and small value types shared by the ledger, its rows and its callers.

use std::fmt;

use cocoon_ton::HashBytes;
use cocoon_ton::StdAddr;

/// Whether an account pays (client) or earns (worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A client contract: charged for usage.
    Client,
    /// A worker contract: credited for serving.
    Worker,
}

/// One account: a client or worker contract under one params version.
///
/// Contract addresses are derived from the root params, so a params change gives every
/// participant a new contract: the version is part of the key and accounts of older versions
/// are closed. The address is the contract's, the one receipts are bound to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountKey {
    /// Client or worker.
    pub kind: Kind,
    /// Root `params_version` the contract was deployed under.
    pub params_version: u32,
    /// The client or worker contract address.
    pub address: StdAddr,
}

impl AccountKey {
    /// A client account.
    pub fn client(params_version: u32, address: StdAddr) -> Self {
        AccountKey {
            kind: Kind::Client,
            params_version,
            address,
        }
    }

    /// A worker account.
    pub fn worker(params_version: u32, address: StdAddr) -> Self {
        AccountKey {
            kind: Kind::Worker,
            params_version,
            address,
        }
    }

    /// The row key in the store: `client:<version>:<wc>:<hex>` / `worker:...`.
    pub fn row_key(&self) -> String {
        let kind = match self.kind {
            Kind::Client => "client",
            Kind::Worker => "worker",
        };
        format!(
            "{kind}:{}:{}:{}",
            self.params_version,
            self.address.workchain,
            hex::encode(self.address.address.0)
        )
    }

    /// Parses [`Self::row_key`].
    pub fn parse_row_key(s: &str) -> Option<Self> {
        let mut it = s.split(':');
        let kind = match it.next()? {
            "client" => Kind::Client,
            "worker" => Kind::Worker,
            _ => return None,
        };
        let params_version = it.next()?.parse().ok()?;
        let workchain: i8 = it.next()?.parse().ok()?;
        let bytes: [u8; 32] = hex::decode(it.next()?).ok()?.try_into().ok()?;
        if it.next().is_some() {
            return None;
        }
        Some(AccountKey {
            kind,
            params_version,
            address: StdAddr::new(workchain, HashBytes(bytes)),
        })
    }
}

impl fmt::Display for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.row_key())
    }
}

/// A request's id, as the proxy chooses it (32 random bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub [u8; 32]);

impl RequestId {
    /// An id from a counter (tests, or proxies that number requests).
    pub fn from_u64(n: u64) -> Self {
        let mut b = [0u8; 32];
        b[24..].copy_from_slice(&n.to_be_bytes());
        RequestId(b)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..8]))
    }
}

/// A `save_state` checkpoint as it appears on chain: `seqno:int32 ‖ session_hash:256`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainCheckpoint {
    /// Monotone checkpoint number.
    pub seqno: u32,
    /// Hash binding the checkpoint to this ledger instance and its state.
    pub hash: [u8; 32],
}

/// The life of a contract as the ledger sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Status {
    /// Accepts requests.
    Open,
    /// Closing: no new requests; a final receipt settles it (client refund request, or an
    /// account of an older params version).
    Closing,
    /// Closed on chain; kept for the record.
    Closed,
}

/// What a client contract looks like on chain (observed by the proxy, fed to the ledger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientFunds {
    /// Contract balance, nanoTON.
    pub balance: u64,
    /// Client stake, nanoTON: the most the proxy serves beyond what is charged on chain.
    pub stake: u64,
}

/// Something the operator must look at; read with [`crate::Ledger::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerEvent {
    /// An account was frozen: no new reservations, no receipts, until the operator acts.
    Frozen {
        /// The account.
        key: AccountKey,
        /// Why.
        reason: String,
    },
    /// A stored row failed its integrity check or did not parse; the account is frozen.
    CorruptRow {
        /// The store key of the row.
        row_key: String,
        /// What was wrong.
        reason: String,
    },
    /// The chain showed a checkpoint this ledger never prepared; everything is halted.
    UnknownCheckpoint(ChainCheckpoint),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_keys_round_trip_and_reject_garbage() {
        let k = AccountKey::worker(7, StdAddr::new(-1, HashBytes([0xab; 32])));
        let s = k.row_key();
        assert!(s.starts_with("worker:7:-1:abab"));
        assert_eq!(AccountKey::parse_row_key(&s), Some(k));
        for bad in [
            "meta",
            "client:1:0:zz",
            "client:1:0",
            "client:x:0:00",
            "other:1:0:0000000000000000000000000000000000000000000000000000000000000000",
            "client:1:0:0000000000000000000000000000000000000000000000000000000000000000:9",
            "client:1:999:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(AccountKey::parse_row_key(bad), None, "{bad}");
        }
    }
}

/// The last receipt the proxy submitted on chain for an account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Submitted {
    /// Cumulative tokens it carried.
    pub tokens: u64,
    /// Unix seconds it was sent.
    pub at: u64,
    /// It was the final one (client grant-refund, worker last payout).
    #[serde(default)]
    pub last: bool,
}
