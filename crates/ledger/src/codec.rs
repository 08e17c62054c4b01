//! Row encoding and integrity protection.
//!
//! Every database value carries an HMAC-SHA256 that is checked on load (cheaper to check on
//! every row than a signature): the MAC key is
//! `SHA-256(Ed25519-sign(proxy key, "cocoon-ledger/row-mac/v1"))`.
//! Ed25519 signatures are deterministic, so the same proxy key always yields the same MAC key,
//! and nobody without the private key can compute it. The MAC covers the row key and the
//! value, so a row cannot be moved to another account either.
//!
//! A stored value is `mac:32 ‖ JSON`. JSON keeps the database auditable with the `sqlite3`
//! shell; nanoTON sums are strings because they are `u128`.

use std::collections::BTreeMap;

use cocoon_openai::usage::PriceTable;
use cocoon_ton::keys::SigningKey;
use ring::{digest, hmac};
use serde::{Deserialize, Serialize};

use crate::account::Account;
use crate::state::Meta;
use crate::types::{AccountKey, ChainCheckpoint, ClientFunds, Status, Submitted};

/// The store key of the metadata row.
pub const META_KEY: &str = "meta";

const FORMAT: u32 = 1;

/// Computes and checks row MACs.
#[derive(Clone)]
pub(crate) struct RowCodec {
    key: hmac::Key,
}

impl std::fmt::Debug for RowCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowCodec(..)")
    }
}

#[derive(Serialize, Deserialize)]
struct MetaRow {
    format: u32,
    last_seq: u64,
    params_version: u32,
    prices: PriceTable,
    next_checkpoint: u32,
    pending: Vec<(u32, String)>,
    confirmed: Option<(u32, String)>,
    commission: String,
}

#[derive(Serialize, Deserialize)]
struct AccountRow {
    tokens: u64,
    nanoton: String,
    chain_tokens: u64,
    at_checkpoint: Vec<(u32, u64)>,
    on_chain_tokens: u64,
    funds: Option<ClientFunds>,
    status: Status,
    frozen: Option<String>,
    /// Absent in rows written before receipts were remembered.
    #[serde(default)]
    submitted: Submitted,
}

fn hash_from_hex(s: &str) -> Result<[u8; 32], String> {
    hex::decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| format!("bad hash {s:?}"))
}

impl RowCodec {
    pub(crate) fn new(proxy_key: &SigningKey) -> Self {
        let sig = proxy_key.sign(b"cocoon-ledger/row-mac/v1");
        let k = digest::digest(&digest::SHA256, &sig);
        RowCodec {
            key: hmac::Key::new(hmac::HMAC_SHA256, k.as_ref()),
        }
    }

    fn mac(&self, key: &str, json: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&(key.len() as u64).to_be_bytes());
        ctx.update(key.as_bytes());
        ctx.update(json);
        ctx.sign()
    }

    fn seal(&self, key: &str, json: Vec<u8>) -> Vec<u8> {
        let tag = self.mac(key, &json);
        let mut v = tag.as_ref().to_vec();
        v.extend_from_slice(&json);
        v
    }

    /// Checks the MAC and returns the JSON part.
    pub(crate) fn open<'a>(&self, key: &str, value: &'a [u8]) -> Result<&'a [u8], String> {
        if value.len() < 32 {
            return Err("row shorter than its MAC".into());
        }
        let (tag, json) = value.split_at(32);
        let mut msg = Vec::with_capacity(8 + key.len() + json.len());
        msg.extend_from_slice(&(key.len() as u64).to_be_bytes());
        msg.extend_from_slice(key.as_bytes());
        msg.extend_from_slice(json);
        hmac::verify(&self.key, &msg, tag).map_err(|_| "integrity check failed".to_string())?;
        Ok(json)
    }

    pub(crate) fn encode_meta(&self, m: &Meta) -> Vec<u8> {
        let row = MetaRow {
            format: FORMAT,
            last_seq: m.last_seq,
            params_version: m.params_version,
            prices: m.prices,
            next_checkpoint: m.next_checkpoint,
            pending: m
                .pending
                .iter()
                .map(|(s, h)| (*s, hex::encode(h)))
                .collect(),
            confirmed: m.confirmed.map(|c| (c.seqno, hex::encode(c.hash))),
            commission: m.commission.to_string(),
        };
        // Serialising plain data into a Vec cannot fail.
        self.seal(META_KEY, serde_json::to_vec(&row).unwrap_or_default())
    }

    pub(crate) fn decode_meta(&self, value: &[u8]) -> Result<Meta, String> {
        let json = self.open(META_KEY, value)?;
        let r: MetaRow = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        if r.format != FORMAT {
            return Err(format!("unknown row format {}", r.format));
        }
        let mut pending = BTreeMap::new();
        for (s, h) in r.pending {
            pending.insert(s, hash_from_hex(&h)?);
        }
        let confirmed = match r.confirmed {
            Some((seqno, h)) => Some(ChainCheckpoint {
                seqno,
                hash: hash_from_hex(&h)?,
            }),
            None => None,
        };
        Ok(Meta {
            last_seq: r.last_seq,
            params_version: r.params_version,
            prices: r.prices,
            next_checkpoint: r.next_checkpoint,
            pending,
            confirmed,
            commission: r.commission.parse().map_err(|_| "bad commission")?,
        })
    }

    pub(crate) fn encode_account(&self, a: &Account) -> Vec<u8> {
        let row = AccountRow {
            tokens: a.tokens,
            nanoton: a.nanoton.to_string(),
            chain_tokens: a.chain_tokens,
            at_checkpoint: a.at_checkpoint.iter().map(|(s, t)| (*s, *t)).collect(),
            on_chain_tokens: a.on_chain_tokens,
            funds: a.funds,
            status: a.status,
            frozen: a.frozen.clone(),
            submitted: a.submitted,
        };
        self.seal(
            &a.key.row_key(),
            serde_json::to_vec(&row).unwrap_or_default(),
        )
    }

    pub(crate) fn decode_account(&self, row_key: &str, value: &[u8]) -> Result<Account, String> {
        let key = AccountKey::parse_row_key(row_key).ok_or("unparsable row key")?;
        let json = self.open(row_key, value)?;
        let r: AccountRow = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let mut a = Account::new(key);
        a.tokens = r.tokens;
        a.nanoton = r.nanoton.parse().map_err(|_| "bad nanoton")?;
        a.chain_tokens = r.chain_tokens;
        a.at_checkpoint = r.at_checkpoint.into_iter().collect();
        a.on_chain_tokens = r.on_chain_tokens;
        a.funds = r.funds;
        a.status = r.status;
        a.frozen = r.frozen;
        a.submitted = r.submitted;
        a.db_tokens = a.tokens;
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Kind;
    use cocoon_ton::{HashBytes, StdAddr};

    fn codec(seed: u8) -> RowCodec {
        RowCodec::new(&SigningKey::from_seed(&[seed; 32]).unwrap())
    }

    fn account(n: u8) -> Account {
        let mut a = Account::new(AccountKey {
            kind: Kind::Client,
            params_version: 1,
            address: StdAddr::new(0, HashBytes([n; 32])),
        });
        a.tokens = 42;
        a.nanoton = u128::from(u64::MAX) * 3;
        a.at_checkpoint.insert(5, 40);
        a
    }

    #[test]
    fn rows_round_trip_and_only_under_their_key_and_proxy_key() {
        let c = codec(1);
        let a = account(1);
        let v = c.encode_account(&a);
        let back = c.decode_account(&a.key.row_key(), &v).unwrap();
        assert_eq!(
            (back.tokens, back.nanoton, back.at_checkpoint.clone()),
            (42, a.nanoton, a.at_checkpoint.clone())
        );
        assert_eq!(back.db_tokens, 42);
        // Another proxy key, another row key, a flipped bit, a truncated row: refused.
        assert!(codec(2).decode_account(&a.key.row_key(), &v).is_err());
        assert!(c.decode_account(&account(2).key.row_key(), &v).is_err());
        let mut bad = v.clone();
        bad[40] ^= 1;
        assert!(c.decode_account(&a.key.row_key(), &bad).is_err());
        assert!(c.decode_account(&a.key.row_key(), &v[..20]).is_err());
        let m = Meta::new(
            3,
            cocoon_openai::usage::PriceTable {
                price_per_token: 1,
                worker_fee_per_token: 1,
                multipliers: Default::default(),
            },
        );
        assert_eq!(c.decode_meta(&c.encode_meta(&m)).unwrap(), m);
        assert!(codec(2).decode_meta(&c.encode_meta(&m)).is_err());
    }
}
