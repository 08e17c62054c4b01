//! Deterministic cross-language test vectors (`testvectors/ton/rust/`).
//!
//! The contracts engineer's sandbox tests (`contracts/tests/vectors.test.mjs`) replay these
//! BOCs against the compiled contracts and check each exit code; a Rust test regenerates them
//! in memory and fails if the committed files differ. Everything is fixed: keys come from
//! `seed(name) = SHA-256("cocoon-testvector-seed:" + name)` (the rule the JS side uses), and
//! the owner addresses are the `@ton/sandbox` 0.41.0 treasury addresses for the seeds
//! `root-owner`, `proxy-owner`, `client-owner`, `worker-owner` and `stranger`, so that the
//! root/proxy/client/worker addresses derived here are the ones of the sandbox world and a
//! receipt signed here names the contract the sandbox deploys.
//!
//! JSON shape (agreed with the contracts engineer): `{"seeds", "addresses", "code_hashes",
//! "messages": [{"name", "file", "contract", "expect_exit", "value_ton"}], ...}`; file paths
//! are relative to `testvectors/ton/rust/`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use tycho_types::cell::{Cell, HashBytes};
use tycho_types::models::StdAddr;

use crate::codec::{self, LayoutError};
use crate::contracts::{self, Deployable};
use crate::keys::SigningKey;
use crate::messages::ProxyEndpoint;
use crate::payments::{PaymentPayload, SignedOp};
use crate::root::{CocoonParams, CodeMask, ONE_TON, RegisteredProxy, RootConfig};
use crate::wallet::{Wallet, WalletVersion};

/// Contract error codes (`contracts/src/common.tolk`, `contracts/LAYOUTS.md`).
pub mod exit {
    /// Accepted.
    pub const OK: i32 = 0;
    /// Signature does not verify under the proxy key.
    pub const BAD_SIGNATURE: i32 = 1002;
    /// Inner op/qid differ from the outer ones.
    pub const SIGNED_MISMATCH: i32 = 1003;
    /// The receipt names another contract.
    pub const WRONG_CONTRACT: i32 = 1004;
    /// Token total not increasing (replay / stale receipt).
    pub const OLD_TOKENS: i32 = 1005;
    /// Close delay not elapsed.
    pub const NOT_UNLOCKED: i32 = 1007;
    /// Unknown operation.
    pub const UNKNOWN_OP: i32 = 0xFFFF;
}

/// Errors while generating or reading vectors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VectorError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A cell could not be built or parsed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A key could not be made.
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    /// A wallet could not be built.
    #[error(transparent)]
    Wallet(#[from] crate::wallet::WalletError),
}

/// The seed rule shared with the JS vectors.
pub fn seed(name: &str) -> [u8; 32] {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("cocoon-testvector-seed:{name}").as_bytes(),
    );
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `@ton/sandbox` 0.41.0 treasury addresses (`blockchain.treasury(name)`), fixed inputs.
pub const SANDBOX_TREASURIES: [(&str, &str); 5] = [
    (
        "root_owner",
        "0:60c902d7013650002de746b7fefd8cdc3fb926f453fa9bcecd6ec91922ec4b66",
    ),
    (
        "proxy_owner",
        "0:116b9ff3136ccb6412416edeb9b0b15daa49f128653e84108a1eceae139571da",
    ),
    (
        "client_owner",
        "0:c9a6963501b01c20aea4704c213edbffa7ad0324869b385771a89ec6d48e4bef",
    ),
    (
        "worker_owner",
        "0:986ece63c1f3b72ce002a3d2b3982444811983da9f2066be0a75c25776028810",
    ),
    (
        "stranger",
        "0:addb8938e3b803327480722c3e422548c70b7dfcbf69f272253ebb5505f7fc82",
    ),
];

fn owner(name: &str) -> StdAddr {
    let raw = SANDBOX_TREASURIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a)
        .unwrap_or("");
    crate::parse_address(raw).unwrap_or(StdAddr::ZERO)
}

/// The contract codes the vectors use (`contracts/build/<name>.code.boc`).
#[derive(Debug, Clone)]
pub struct Codes {
    /// Root code.
    pub root: Cell,
    /// Proxy code.
    pub proxy: Cell,
    /// Client code.
    pub client: Cell,
    /// Worker code.
    pub worker: Cell,
}

impl Codes {
    /// Loads `<dir>/{root,proxy,client,worker}.code.boc`.
    pub fn load(dir: &Path) -> Result<Self, VectorError> {
        let read = |n: &str| -> Result<Cell, VectorError> {
            let p = dir.join(format!("{n}.code.boc"));
            let bytes = std::fs::read(&p).map_err(|source| VectorError::Io {
                path: p.display().to_string(),
                source,
            })?;
            Ok(codec::decode_boc(&bytes)?)
        };
        Ok(Self {
            root: read("root")?,
            proxy: read("proxy")?,
            client: read("client")?,
            worker: read("worker")?,
        })
    }
}

/// The params the JS vectors use (`DEFAULT_PARAMS` in `contracts/tests/lib.mjs`).
pub fn default_params(codes: &Codes) -> CocoonParams {
    CocoonParams {
        struct_version: 3,
        params_version: 1,
        unique_id: 42,
        is_test: true,
        price_per_token: 20,
        worker_fee_per_token: 15,
        prompt_tokens_price_multiplier: 10_000,
        cached_tokens_price_multiplier: 1_000,
        completion_tokens_price_multiplier: 80_000,
        reasoning_tokens_price_multiplier: 80_000,
        proxy_delay_before_close: 3600,
        client_delay_before_close: 86_400,
        min_proxy_stake: 10 * ONE_TON,
        min_client_stake: ONE_TON,
        proxy_code: Some(codes.proxy.clone()),
        worker_code: Some(codes.worker.clone()),
        client_code: Some(codes.client.clone()),
    }
}

/// The registry the JS vectors populate the root with.
pub fn registry_config(params: &CocoonParams) -> RootConfig {
    let h = |b: u8| HashBytes([b; 32]);
    RootConfig {
        owner: owner("root_owner"),
        version: 8,
        proxy_hashes: vec![h(0x0f), h(0xa1)],
        registered_proxies: vec![
            RegisteredProxy {
                seqno: 1,
                endpoint: ProxyEndpoint("203.0.113.10:8888".into()),
            },
            RegisteredProxy {
                seqno: 2,
                endpoint: ProxyEndpoint("203.0.113.11:8888 203.0.113.11:8889".into()),
            },
        ],
        last_proxy_seqno: 2,
        worker_hashes: vec![h(0xb2)],
        model_hashes: vec![h(0xc3), h(0xc4)],
        params: params.clone(),
    }
}

/// The four contracts of the vector world.
#[derive(Debug, Clone)]
pub struct World {
    /// Root (empty registry, version 1).
    pub root: Deployable,
    /// Proxy of `proxy_owner` with the `proxy` seed key.
    pub proxy: Deployable,
    /// Client of `client_owner`.
    pub client: Deployable,
    /// Worker of `worker_owner`.
    pub worker: Deployable,
    /// Params.
    pub params: CocoonParams,
}

impl World {
    /// Derives the world from the codes.
    pub fn new(codes: &Codes) -> Result<Self, VectorError> {
        let params = default_params(codes);
        let proxy_key = SigningKey::from_seed(&seed("proxy"))?;
        let pk = HashBytes(proxy_key.public_key());
        let root_cfg = RootConfig {
            version: 1,
            proxy_hashes: vec![],
            registered_proxies: vec![],
            last_proxy_seqno: 0,
            worker_hashes: vec![],
            model_hashes: vec![],
            ..registry_config(&params)
        };
        let root = Deployable::new(codes.root.clone(), root_cfg.to_storage_cell()?)?;
        let proxy = contracts::proxy_contract(&params, &owner("proxy_owner"), &pk, &root.address)?;
        let client =
            contracts::client_contract(&params, &owner("client_owner"), &proxy.address, &pk)?;
        let worker =
            contracts::worker_contract(&params, &owner("worker_owner"), &proxy.address, &pk)?;
        Ok(Self {
            root,
            proxy,
            client,
            worker,
            params,
        })
    }
}

/// Generated vectors: file name → bytes, plus `vectors.json`.
#[derive(Debug, Clone)]
pub struct VectorSet {
    /// BOC files.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The JSON index.
    pub json: Value,
}

impl VectorSet {
    /// `vectors.json` text (pretty, keys sorted, trailing newline). Keys are sorted
    /// explicitly because `serde_json`'s map order depends on whether another crate in the
    /// build enables its `preserve_order` feature.
    pub fn json_text(&self) -> String {
        let mut s = serde_json::to_string_pretty(&sorted(&self.json)).unwrap_or_default();
        s.push('\n');
        s
    }
}

fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::new();
            for k in keys {
                out.insert(k.clone(), sorted(&m[k]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Generates every vector from the contract codes.
pub fn generate(codes: &Codes) -> Result<VectorSet, VectorError> {
    let w = World::new(codes)?;
    let proxy_key = SigningKey::from_seed(&seed("proxy"))?;
    let bad_key = SigningKey::from_seed(&seed("not-the-proxy"))?;
    let stranger = owner("stranger");
    let mut files = BTreeMap::new();
    let mut cells = Vec::new();
    let mut put_cell = |files: &mut BTreeMap<String, Vec<u8>>, name: &str, c: &Cell, note: &str| {
        let file = format!("{name}.boc");
        files.insert(file.clone(), codec::encode_boc(c));
        cells.push(
            json!({ "name": name, "file": file, "hash": c.repr_hash().to_string(), "note": note }),
        );
    };
    put_cell(
        &mut files,
        "params_mask7",
        &w.params.to_cell(CodeMask::ROOT)?,
        "CocoonParams v3, all codes (root)",
    );
    put_cell(
        &mut files,
        "params_mask6",
        &w.params.to_cell(CodeMask::PROXY)?,
        "params in the proxy contract",
    );
    put_cell(
        &mut files,
        "params_mask0",
        &w.params.to_cell(CodeMask::NONE)?,
        "params in client/worker contracts",
    );
    put_cell(
        &mut files,
        "root_data_init",
        &w.root.data,
        "root c4 at deploy: empty registry, version 1",
    );
    put_cell(
        &mut files,
        "proxy_data_init",
        &w.proxy.data,
        "proxy c4 at deploy",
    );
    put_cell(
        &mut files,
        "client_data_init",
        &w.client.data,
        "client c4 at deploy",
    );
    put_cell(
        &mut files,
        "worker_data_init",
        &w.worker.data,
        "worker c4 at deploy",
    );
    let reg = registry_config(&w.params);
    put_cell(
        &mut files,
        "root_registry_data",
        &reg.data_cell()?,
        "RootData with the JS registry",
    );
    put_cell(
        &mut files,
        "root_data_populated",
        &reg.to_storage_cell()?,
        "root c4 with the registry, version 8",
    );

    // Messages, replayed in order by the sandbox from `stranger` after it deployed the root,
    // staked the proxy, topped up the client and registered the worker.
    let mut messages = Vec::new();
    let mut qid = 0x5255_0000u64; // "RU"
    let mut sign = |op: SignedOp, tokens: Option<u64>, target: &StdAddr, key: &SigningKey| {
        qid += 1;
        PaymentPayload {
            op,
            query_id: qid,
            tokens,
            contract: target.clone(),
        }
        .sign(key, &stranger)
    };
    let mut add = |files: &mut BTreeMap<String, Vec<u8>>,
                   name: &str,
                   contract: &str,
                   body: Cell,
                   expect: i32,
                   value: &str| {
        let file = format!("{name}.boc");
        files.insert(file.clone(), codec::encode_boc(&body));
        messages.push(json!({
            "name": name, "file": file, "contract": contract, "expect_exit": expect, "value_ton": value,
        }));
    };
    let (client, worker, proxy) = (&w.client.address, &w.worker.address, &w.proxy.address);
    use SignedOp::*;
    let charge_1000 = sign(ClientCharge, Some(1000), client, &proxy_key)?;
    add(
        &mut files,
        "client_charge_1000",
        "client",
        charge_1000.to_cell()?,
        exit::OK,
        "0.7",
    );
    let c = sign(ClientCharge, Some(2000), client, &bad_key)?;
    add(
        &mut files,
        "client_charge_wrong_key",
        "client",
        c.to_cell()?,
        exit::BAD_SIGNATURE,
        "0.7",
    );
    let mut c = sign(ClientCharge, Some(2000), client, &proxy_key)?;
    c.signature.0[12] ^= 0x10;
    add(
        &mut files,
        "client_charge_flipped_bit",
        "client",
        c.to_cell()?,
        exit::BAD_SIGNATURE,
        "0.7",
    );
    let c = sign(ClientCharge, Some(2000), worker, &proxy_key)?;
    add(
        &mut files,
        "client_charge_other_contract",
        "client",
        c.to_cell()?,
        exit::WRONG_CONTRACT,
        "0.7",
    );
    let c = sign(ClientCharge, Some(800), client, &proxy_key)?;
    add(
        &mut files,
        "client_charge_older_total",
        "client",
        c.to_cell()?,
        exit::OLD_TOKENS,
        "0.7",
    );
    add(
        &mut files,
        "client_charge_replay",
        "client",
        charge_1000.to_cell()?,
        exit::OLD_TOKENS,
        "0.7",
    );
    let c = sign(ClientCharge, Some(1500), client, &proxy_key)?.repack(&owner("client_owner"));
    add(
        &mut files,
        "client_charge_1500_repacked",
        "client",
        c.to_cell()?,
        exit::OK,
        "0.7",
    );
    let c = sign(ClientCharge, Some(1600), worker, &proxy_key)?;
    add(
        &mut files,
        "client_charge_sent_to_worker",
        "worker",
        c.to_cell()?,
        exit::UNKNOWN_OP,
        "0.7",
    );

    let c = sign(WorkerPayout, Some(2000), worker, &proxy_key)?;
    add(
        &mut files,
        "worker_payout_2000",
        "worker",
        c.to_cell()?,
        exit::OK,
        "0.7",
    );
    let c = sign(WorkerPayout, Some(2500), worker, &bad_key)?;
    add(
        &mut files,
        "worker_payout_wrong_key",
        "worker",
        c.to_cell()?,
        exit::BAD_SIGNATURE,
        "0.7",
    );
    let mut c = sign(WorkerPayout, Some(2500), worker, &proxy_key)?;
    c.signature.0[40] ^= 0x01;
    add(
        &mut files,
        "worker_payout_flipped_bit",
        "worker",
        c.to_cell()?,
        exit::BAD_SIGNATURE,
        "0.7",
    );
    let c = sign(WorkerPayout, Some(2500), client, &proxy_key)?;
    add(
        &mut files,
        "worker_payout_other_contract",
        "worker",
        c.to_cell()?,
        exit::WRONG_CONTRACT,
        "0.7",
    );
    let c = sign(WorkerPayout, Some(1500), worker, &proxy_key)?;
    add(
        &mut files,
        "worker_payout_older_total",
        "worker",
        c.to_cell()?,
        exit::OLD_TOKENS,
        "0.7",
    );
    let c = sign(WorkerLastPayout, Some(3000), worker, &proxy_key)?;
    add(
        &mut files,
        "worker_last_payout_3000",
        "worker",
        c.to_cell()?,
        exit::OK,
        "0.7",
    );

    let c = sign(ClientGrantRefund, Some(2000), client, &proxy_key)?;
    add(
        &mut files,
        "client_grant_refund_2000",
        "client",
        c.to_cell()?,
        exit::OK,
        "1",
    );
    let c = sign(ProxyCloseRequest, None, proxy, &bad_key)?;
    add(
        &mut files,
        "proxy_close_request_wrong_key",
        "proxy",
        c.to_cell()?,
        exit::BAD_SIGNATURE,
        "1",
    );
    let c = sign(ProxyCloseRequest, None, proxy, &proxy_key)?;
    add(
        &mut files,
        "proxy_close_request",
        "proxy",
        c.to_cell()?,
        exit::OK,
        "1",
    );
    let c = sign(ProxyCloseComplete, None, proxy, &proxy_key)?;
    add(
        &mut files,
        "proxy_close_complete_too_early",
        "proxy",
        c.to_cell()?,
        exit::NOT_UNLOCKED,
        "1",
    );

    let raw = |a: &StdAddr| a.to_string();
    let mut addresses = serde_json::Map::new();
    for (n, _) in SANDBOX_TREASURIES {
        addresses.insert(n.into(), json!(raw(&owner(n))));
    }
    addresses.insert("root".into(), json!(raw(&w.root.address)));
    addresses.insert("proxy".into(), json!(raw(proxy)));
    addresses.insert("client".into(), json!(raw(client)));
    addresses.insert("worker".into(), json!(raw(worker)));
    let pk = proxy_key.public_key();
    let v4 = Wallet::new(WalletVersion::V4R2, pk);
    let v5 = Wallet::new(WalletVersion::V5R1, pk);
    addresses.insert("wallet_v4r2_proxy_key".into(), json!(raw(&v4.address()?)));
    addresses.insert("wallet_v5r1_proxy_key".into(), json!(raw(&v5.address()?)));

    let json = json!({
        "format": 1,
        "generator": "cargo run -p cocoon-ton --example make-vectors (tycho-types 0.3.6, ring Ed25519)",
        "note": "Replay `messages` in order from `stranger` (value `value_ton`) after the sandbox world deployed root, staked the proxy, topped up the client and registered the worker. Owners are @ton/sandbox 0.41.0 treasury addresses.",
        "seeds": { "proxy": hex::encode(seed("proxy")), "not_the_proxy": hex::encode(seed("not-the-proxy")) },
        "seed_rule": "seed(name) = sha256(\"cocoon-testvector-seed:\" + name); Ed25519 keypair from the 32-byte seed",
        "public_keys": { "proxy": hex::encode(pk), "not_the_proxy": hex::encode(bad_key.public_key()) },
        "addresses": Value::Object(addresses),
        "code_hashes": {
            "root": codes.root.repr_hash().to_string(),
            "proxy": codes.proxy.repr_hash().to_string(),
            "client": codes.client.repr_hash().to_string(),
            "worker": codes.worker.repr_hash().to_string(),
            "wallet_v4r2": v4.code()?.repr_hash().to_string(),
            "wallet_v5r1": v5.code()?.repr_hash().to_string(),
        },
        "cells": cells,
        "messages": messages,
    });
    Ok(VectorSet { files, json })
}

/// Parses a raw or friendly address held in a vectors JSON value.
pub fn json_address(v: &Value) -> Option<StdAddr> {
    let s = v
        .as_str()
        .or_else(|| v.get("raw").and_then(Value::as_str))?;
    crate::parse_address(s).ok()
}

/// Re-exported for tests: decode a BOC file's root cell.
pub fn read_boc(path: &Path) -> Result<Cell, VectorError> {
    let bytes = std::fs::read(path).map_err(|source| VectorError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(codec::decode_boc(&bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_rule_matches_sha256() {
        // `printf 'cocoon-testvector-seed:proxy' | sha256sum`
        assert_eq!(
            hex::encode(seed("proxy")),
            "0f7493a61f3b055beabbcf6bb20c53771b1808b5d04668fb52f51d0b695d7351"
        );
        assert_ne!(seed("proxy"), seed("not-the-proxy"));
        assert_eq!(owner("stranger").to_string(), SANDBOX_TREASURIES[4].1);
    }
}
