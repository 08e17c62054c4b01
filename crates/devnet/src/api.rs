//! The HTTP face of the devnet: a toncenter v2 subset plus `/_devnet/*` controls.
//!
//! Production Cocoon talks to TON through toncenter's v2 HTTP API, so the devnet serves the
//! same shapes and the same client works against both. The shapes follow toncenter's
//! published reference (<https://docs.ton.org/applications/api/toncenter/v2/>, mirrored at
//! <https://toncenter.ness.su/api_v2/>) and what `@ton/ton` 16.3.0's `HttpApi` validates
//! (its zod codecs for `addressInformation`, `getTransactions`, `callGetMethod`,
//! `getMasterchain`, `bocResponse`):
//!
//! - Envelope: `{"ok": true, "result": ...}`; errors `{"ok": false, "error": "...", "code": N}`
//!   with N also the HTTP status. Bad input is 422 (toncenter's validation status, e.g.
//!   `"empty boc"`, `"Stack should be array"`), unknown methods 404.
//! - `sendBoc` `{"boc": b64}` → `{"@type": "ok"}`; `sendBocReturnHash` →
//!   `{"@type": "raw.extMessageInfo", "hash", "hash_norm"}` (base64 hashes; `hash_norm` is the
//!   TEP-467 normalised hash). A message the contract does not accept is toncenter's
//!   `500 "LITE_SERVER_UNKNOWN: cannot apply external message to current state : External
//!   message was not accepted"`. Unlike mainnet, the devnet executes the message and every
//!   message it causes *before* answering, so the next read sees the result.
//! - `runGetMethod` `{"address", "method", "stack"}` → `smc.runResult` with `gas_used`,
//!   `stack` (see [`crate::stack`]), `exit_code`, `block_id`, `last_transaction_id`. A
//!   non-zero exit code is still `ok: true`, as on toncenter; an account without code
//!   answers exit code -256, as a lite-server does.
//! - `getAddressInformation` → `raw.fullAccountState` (`balance`, `extra_currencies`, `code`,
//!   `data`, `last_transaction_id`, `block_id`, `frozen_hash`, `sync_utime`, `state` ∈
//!   `active|uninitialized|frozen`); `getAddressBalance` → the balance string;
//!   `getAddressState` → the state string; `getWalletInformation` →
//!   `ext.accounts.walletInformation` (`wallet`, `balance`, `account_state`, `wallet_type`,
//!   `seqno`, `wallet_id`, `last_transaction_id`) for wallets v3r2/v4r2/v5r1.
//! - `getTransactions` `address, limit (1..=1000, default 10), lt, hash, to_lt` → newest
//!   first, starting at `lt` (inclusive; with `hash` the pair must name a transaction of that
//!   account), stopping before `to_lt`. Each is `{"@type": "raw.transaction", "address":
//!   {"@type": "accountAddress", "account_address"}, "utime", "data" (the transaction BOC),
//!   "transaction_id": {"@type": "internal.transactionId", "lt", "hash"}, "fee",
//!   "storage_fee", "other_fee", "in_msg", "out_msgs"}` with messages `{"@type":
//!   "raw.message", "hash", "source", "destination", "value", "extra_currencies", "fwd_fee",
//!   "ihr_fee", "created_lt", "body_hash", "msg_data": {"@type": "msg.dataRaw", "body",
//!   "init_state"}, "message"}`. Exit codes and gas are not in toncenter's JSON; they are in
//!   the `data` BOC, as on mainnet.
//! - `getMasterchainInfo` → `blocks.masterchainInfo` with `last`, `init`, `state_root_hash`.
//! - Every method answers GET (query string) and POST (JSON object), as toncenter does, and
//!   `POST /api/v2/jsonRPC` `{"method", "params", "id"}` dispatches to the same methods.
//!
//! Devnet controls (not toncenter): `POST /_devnet/faucet {"address", "amount"}` (nanoton,
//! string or number), `GET /_devnet/clock`, `POST /_devnet/clock {"advance": s}` or
//! `{"set": unix}`, `GET /_devnet/info`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};
use tycho_types::models::{
    ExtInMsgInfo, MessageLayout, MsgInfo, OwnedMessage, StdAddr, StdAddrFormat,
};
use tycho_types::num::Tokens;
use tycho_types::prelude::*;

use crate::chain::{BlockRef, Devnet, DevnetError, GetMethodId, MsgRecord, TxRecord};
use crate::stack;

/// What `/_devnet/info` reports beyond the chain itself.
#[derive(Debug, Clone, Default)]
pub struct DevnetInfo {
    /// The Cocoon root contract, when deployed.
    pub root_address: Option<StdAddr>,
    /// The root owner's wallet address.
    pub root_owner: Option<StdAddr>,
    /// Where the root owner key was written.
    pub root_owner_key: Option<String>,
}

/// Shared server state.
#[derive(Clone)]
pub struct ApiState {
    chain: Arc<Mutex<Devnet>>,
    info: Arc<DevnetInfo>,
}

impl ApiState {
    /// Wraps a chain for serving.
    pub fn new(chain: Devnet, info: DevnetInfo) -> Self {
        Self {
            chain: Arc::new(Mutex::new(chain)),
            info: Arc::new(info),
        }
    }

    /// Locks the chain (a panic in another request does not take the devnet down).
    pub fn lock(&self) -> MutexGuard<'_, Devnet> {
        self.chain
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An API error: HTTP status = toncenter `code`.
#[derive(Debug)]
pub struct DevnetApiError {
    /// HTTP status and envelope code.
    pub status: StatusCode,
    /// Message for the `error` field.
    pub message: String,
}

impl DevnetApiError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
        }
    }
}

impl From<DevnetError> for DevnetApiError {
    fn from(e: DevnetError) -> Self {
        let status = match &e {
            DevnetError::BadBoc(_)
            | DevnetError::BadMessage(_)
            | DevnetError::BadAddress(_)
            | DevnetError::TimeBackwards { .. }
            | DevnetError::BadAmount(_)
            | DevnetError::BadStack(_) => StatusCode::UNPROCESSABLE_ENTITY,
            DevnetError::NotActive(_) => StatusCode::CONFLICT,
            DevnetError::NotAccepted { .. }
            | DevnetError::RunawayBatch { .. }
            | DevnetError::Config(_)
            | DevnetError::Storage { .. }
            | DevnetError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match &e {
            DevnetError::NotAccepted { .. } => format!("LITE_SERVER_UNKNOWN: {e}"),
            _ => e.to_string(),
        };
        Self { status, message }
    }
}

impl IntoResponse for DevnetApiError {
    fn into_response(self) -> Response {
        let body = json!({"ok": false, "error": self.message, "code": self.status.as_u16()});
        (self.status, axum::Json(body)).into_response()
    }
}

fn ok(result: Value) -> Response {
    axum::Json(json!({"ok": true, "result": result})).into_response()
}

/// The router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v2/jsonRPC", post(json_rpc))
        .route("/api/v2/{method}", get(v2_method).post(v2_method))
        .route("/_devnet/faucet", post(faucet))
        .route("/_devnet/clock", get(clock_get).post(clock_set))
        .route("/_devnet/info", get(info))
        .fallback(|| async {
            DevnetApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such endpoint".into(),
            }
        })
        .with_state(state)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr` and serves in a background task; returns the bound address (handy with
/// port 0) and the task.
pub async fn spawn(
    addr: SocketAddr,
    state: ApiState,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(serve(listener, state, std::future::pending()));
    Ok((bound, task))
}

/// Request parameters from a query string or a JSON object.
struct Params(Map<String, Value>);

impl Params {
    fn from_request(
        query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
        body: &Bytes,
    ) -> Result<Self, DevnetApiError> {
        let mut map = Map::new();
        let Query(q) =
            query.map_err(|e| DevnetApiError::invalid(format!("bad query string: {e}")))?;
        for (k, v) in q {
            map.insert(k, Value::String(v));
        }
        if !body.iter().all(u8::is_ascii_whitespace) {
            let v: Value = serde_json::from_slice(body)
                .map_err(|e| DevnetApiError::invalid(format!("body is not JSON: {e}")))?;
            let Value::Object(o) = v else {
                return Err(DevnetApiError::invalid("body must be a JSON object"));
            };
            map.extend(o);
        }
        Ok(Self(map))
    }

    fn str(&self, key: &str) -> Result<Option<&str>, DevnetApiError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(DevnetApiError::invalid(format!("{key} must be a string"))),
        }
    }

    fn required(&self, key: &str) -> Result<&str, DevnetApiError> {
        match self.str(key)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(DevnetApiError::invalid(format!("empty {key}"))),
        }
    }

    /// An unsigned integer given as a JSON number or a decimal string.
    fn uint(&self, key: &str) -> Result<Option<u128>, DevnetApiError> {
        let bad = || DevnetApiError::invalid(format!("{key} must be a non-negative integer"));
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(|v| Some(u128::from(v))).ok_or_else(bad),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => s.trim().parse::<u128>().map(Some).map_err(|_| bad()),
            Some(_) => Err(bad()),
        }
    }

    fn address(&self, key: &str) -> Result<StdAddr, DevnetApiError> {
        parse_address(self.required(key)?)
    }
}

/// Parses an address in raw or user-friendly form.
pub fn parse_address(s: &str) -> Result<StdAddr, DevnetApiError> {
    StdAddr::from_str_ext(s.trim(), StdAddrFormat::any())
        .map(|(a, _)| a)
        .map_err(|_| DevnetError::BadAddress(s.to_string()).into())
}

async fn v2_method(
    State(state): State<ApiState>,
    Path(method): Path<String>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Response {
    let params = match Params::from_request(query, &body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    match run_blocking(state, move |st| dispatch(st, &method, &params)).await {
        Ok(v) => ok(v),
        Err(e) => e.into_response(),
    }
}

async fn json_rpc(State(state): State<ApiState>, body: Bytes) -> Response {
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return DevnetApiError::invalid(format!("body is not JSON: {e}")).into_response(),
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = req.get("method").and_then(Value::as_str).map(str::to_owned) else {
        return DevnetApiError::invalid("jsonRPC needs a \"method\" string").into_response();
    };
    let params = match req.get("params") {
        None | Some(Value::Null) => Params(Map::new()),
        Some(Value::Object(o)) => Params(o.clone()),
        Some(_) => return DevnetApiError::invalid("params must be an object").into_response(),
    };
    let (status, mut body) =
        match run_blocking(state, move |st| dispatch(st, &method, &params)).await {
            Ok(v) => (StatusCode::OK, json!({"ok": true, "result": v})),
            Err(e) => (
                e.status,
                json!({"ok": false, "error": e.message, "code": e.status.as_u16()}),
            ),
        };
    body["jsonrpc"] = json!("2.0");
    body["id"] = id;
    (status, axum::Json(body)).into_response()
}

/// Runs chain work off the async workers (TVM execution is CPU-bound).
async fn run_blocking<F>(state: ApiState, f: F) -> Result<Value, DevnetApiError>
where
    F: FnOnce(&ApiState) -> Result<Value, DevnetApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || f(&state))
        .await
        .unwrap_or_else(|e| {
            Err(DevnetApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("request task failed: {e}"),
            })
        })
}

fn dispatch(state: &ApiState, method: &str, p: &Params) -> Result<Value, DevnetApiError> {
    match method {
        "sendBoc" => send_boc(state, p).map(|_| json!({"@type": "ok"})),
        "sendBocReturnHash" => {
            let (hash, norm) = send_boc(state, p)?;
            Ok(json!({"@type": "raw.extMessageInfo", "hash": b64(&hash), "hash_norm": b64(&norm)}))
        }
        "runGetMethod" => run_get_method(state, p),
        "getAddressInformation" => {
            let chain = state.lock();
            let addr = p.address("address")?;
            address_information(&chain, &addr)
        }
        "getAddressBalance" => {
            let chain = state.lock();
            let info = chain.account(&p.address("address")?)?;
            Ok(json!(info.balance.to_string()))
        }
        "getAddressState" => {
            let chain = state.lock();
            let info = chain.account(&p.address("address")?)?;
            Ok(json!(info.status.as_str()))
        }
        "getWalletInformation" => {
            let chain = state.lock();
            wallet_information(&chain, &p.address("address")?)
        }
        "getTransactions" => get_transactions(state, p),
        "getMasterchainInfo" => {
            let chain = state.lock();
            let last = chain.last_block();
            let init = chain.block_ref(0);
            Ok(json!({
                "@type": "blocks.masterchainInfo",
                "last": block_json(&last),
                "state_root_hash": b64(&last.root_hash),
                "init": block_json(&init),
            }))
        }
        other => Err(DevnetApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("method {other:?} is not served by the devnet"),
        }),
    }
}

fn b64(h: &HashBytes) -> String {
    B64.encode(h.as_slice())
}

fn friendly(a: &StdAddr) -> String {
    a.display_base64_url(true).to_string()
}

fn block_json(b: &BlockRef) -> Value {
    json!({
        "@type": "ton.blockIdExt",
        "workchain": -1,
        "shard": "-9223372036854775808",
        "seqno": b.seqno,
        "root_hash": b64(&b.root_hash),
        "file_hash": b64(&b.file_hash),
    })
}

fn tx_id(lt: u64, hash: &HashBytes) -> Value {
    json!({"@type": "internal.transactionId", "lt": lt.to_string(), "hash": b64(hash)})
}

fn decode_boc_param(p: &Params) -> Result<Vec<u8>, DevnetApiError> {
    let boc = p
        .required("boc")
        .map_err(|_| DevnetApiError::invalid("empty boc"))?;
    B64.decode(boc.trim())
        .map_err(|e| DevnetApiError::invalid(format!("boc is not base64: {e}")))
}

/// Returns the message hash and its TEP-467 normalised hash.
fn send_boc(state: &ApiState, p: &Params) -> Result<(HashBytes, HashBytes), DevnetApiError> {
    let bytes = decode_boc_param(p)?;
    let cell = Boc::decode(&bytes).map_err(|e| DevnetError::BadBoc(e.to_string()))?;
    let norm = normalized_hash(&cell)?;
    let hash = *cell.repr_hash();
    let mut chain = state.lock();
    chain.send_external(&bytes)?;
    Ok((hash, norm))
}

/// TEP-467: the hash of `ext_in_msg_info$10 src:addr_none dest import_fee:0 init:nothing
/// body:^Cell`.
fn normalized_hash(cell: &Cell) -> Result<HashBytes, DevnetApiError> {
    let msg = cell
        .parse::<OwnedMessage>()
        .map_err(|e| DevnetError::BadBoc(format!("not a message: {e}")))?;
    let MsgInfo::ExtIn(info) = msg.info else {
        return Err(DevnetError::BadMessage(
            "sendBoc takes external inbound messages (ext_in_msg_info$10)".into(),
        )
        .into());
    };
    let normalized = OwnedMessage {
        info: MsgInfo::ExtIn(ExtInMsgInfo {
            src: None,
            dst: info.dst,
            import_fee: Tokens::ZERO,
        }),
        init: None,
        body: msg.body,
        layout: Some(MessageLayout {
            init_to_cell: false,
            body_to_cell: true,
        }),
    };
    let cell = CellBuilder::build_from(normalized)
        .map_err(|e| DevnetError::BadMessage(format!("cannot normalise message: {e}")))?;
    Ok(*cell.repr_hash())
}

fn run_get_method(state: &ApiState, p: &Params) -> Result<Value, DevnetApiError> {
    let addr = p.address("address")?;
    let method =
        match p.0.get("method") {
            Some(Value::Number(n)) => {
                GetMethodId::Id(n.as_u64().and_then(|v| u32::try_from(v).ok()).ok_or_else(
                    || DevnetApiError::invalid("method id must be a 32-bit unsigned integer"),
                )?)
            }
            Some(Value::String(s)) if !s.trim().is_empty() => match s.trim().parse::<u32>() {
                Ok(id) => GetMethodId::Id(id),
                Err(_) => GetMethodId::Name(s.trim().to_string()),
            },
            _ => return Err(DevnetApiError::invalid("empty method")),
        };
    let args = match p.0.get("stack") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => {
            // GET callers pass the stack as a JSON string.
            let v: Value = serde_json::from_str(s)
                .map_err(|_| DevnetApiError::invalid("Stack should be array"))?;
            stack::parse_stack(&v).map_err(DevnetApiError::invalid)?
        }
        Some(v) => stack::parse_stack(v).map_err(DevnetApiError::invalid)?,
    };
    let chain = state.lock();
    let last = chain.last_block();
    let info = chain.account(&addr)?;
    let (exit_code, gas_used, stack) = match chain.run_get_method(&addr, &method, args) {
        Ok(out) => {
            let rendered = stack::render_stack(&out.stack).map_err(|e| DevnetApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("Unsupported stack entry type: {e}"),
            })?;
            (out.exit_code, out.gas_used, rendered)
        }
        // A lite-server answers -256 for an account without code.
        Err(DevnetError::NotActive(_)) => (-256, 0, json!([])),
        Err(e) => return Err(e.into()),
    };
    Ok(json!({
        "@type": "smc.runResult",
        "gas_used": gas_used,
        "stack": stack,
        "exit_code": exit_code,
        "block_id": block_json(&last),
        "last_transaction_id": tx_id(info.last_lt, &info.last_hash),
    }))
}

fn address_information(chain: &Devnet, addr: &StdAddr) -> Result<Value, DevnetApiError> {
    let info = chain.account(addr)?;
    let boc_or_empty = |c: &Option<Cell>| c.as_ref().map(stack::boc64).unwrap_or_default();
    Ok(json!({
        "@type": "raw.fullAccountState",
        "balance": info.balance.to_string(),
        "extra_currencies": [],
        "code": boc_or_empty(&info.code),
        "data": boc_or_empty(&info.data),
        "last_transaction_id": tx_id(info.last_lt, &info.last_hash),
        "block_id": block_json(&chain.last_block()),
        "frozen_hash": info.frozen_hash.as_ref().map(b64).unwrap_or_default(),
        "sync_utime": chain.now(),
        "state": info.status.as_str(),
    }))
}

/// Known wallet codes: (code hash, toncenter's name, data layout).
const WALLETS: &[(&str, &str, WalletLayout)] = &[
    (
        "84dafa449f98a6987789ba232358072bc0f76dc4524002a5d0918b9a75d2d599",
        "wallet v3 r2",
        WalletLayout::SeqnoId,
    ),
    (
        "feb5ff6820e2ff0d9483e7e0d62c817d846789fb4ae580c878866d959dabd5c0",
        "wallet v4 r2",
        WalletLayout::SeqnoId,
    ),
    (
        "20834b7b72b112147e1b2fb457b84e74d1a30f04f737d4f62a668e9552d2b72f",
        "wallet v5 r1",
        WalletLayout::FlagSeqnoId,
    ),
];

#[derive(Clone, Copy)]
enum WalletLayout {
    /// `seqno:u32 wallet_id:u32 ...` (v3, v4).
    SeqnoId,
    /// `is_signature_allowed:bool seqno:u32 wallet_id:u32 ...` (v5).
    FlagSeqnoId,
}

fn wallet_information(chain: &Devnet, addr: &StdAddr) -> Result<Value, DevnetApiError> {
    let info = chain.account(addr)?;
    let mut out = json!({
        "@type": "ext.accounts.walletInformation",
        "wallet": false,
        "balance": info.balance.to_string(),
        "account_state": info.status.as_str(),
        "last_transaction_id": tx_id(info.last_lt, &info.last_hash),
    });
    let (Some(code), Some(data)) = (&info.code, &info.data) else {
        return Ok(out);
    };
    let code_hash = code.repr_hash().to_string();
    let Some((_, name, layout)) = WALLETS.iter().find(|(h, _, _)| *h == code_hash) else {
        return Ok(out);
    };
    let parse = || -> Result<(bool, u32, u32), tycho_types::error::Error> {
        let mut s = data.as_slice()?;
        let allowed = match layout {
            WalletLayout::SeqnoId => true,
            WalletLayout::FlagSeqnoId => s.load_bit()?,
        };
        Ok((allowed, s.load_u32()?, s.load_u32()?))
    };
    let (allowed, seqno, wallet_id) = parse().map_err(|e| DevnetApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("wallet data does not parse: {e}"),
    })?;
    out["wallet"] = json!(true);
    out["wallet_type"] = json!(name);
    out["seqno"] = json!(seqno);
    out["wallet_id"] = json!(wallet_id);
    if matches!(layout, WalletLayout::FlagSeqnoId) {
        out["is_signature_allowed"] = json!(allowed);
    }
    Ok(out)
}

/// Accepts a transaction hash in base64 (standard or URL-safe) or hex.
fn parse_hash(s: &str) -> Result<HashBytes, DevnetApiError> {
    let s = s.trim();
    let bytes = if s.len() == 64 {
        hex::decode(s).ok()
    } else {
        B64.decode(s)
            .ok()
            .or_else(|| base64::engine::general_purpose::URL_SAFE.decode(s).ok())
    };
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(HashBytes)
        .ok_or_else(|| {
            DevnetApiError::invalid(format!("hash {s:?} is not 32 bytes of base64 or hex"))
        })
}

fn get_transactions(state: &ApiState, p: &Params) -> Result<Value, DevnetApiError> {
    let addr = p.address("address")?;
    let limit = p.uint("limit")?.unwrap_or(10);
    if !(1..=1000).contains(&limit) {
        return Err(DevnetApiError::invalid("limit must be between 1 and 1000"));
    }
    let lt = p
        .uint("lt")?
        .map(|v| u64::try_from(v).map_err(|_| DevnetApiError::invalid("lt out of range")))
        .transpose()?;
    let to_lt = u64::try_from(p.uint("to_lt")?.unwrap_or(0))
        .map_err(|_| DevnetApiError::invalid("to_lt out of range"))?;
    let hash = p
        .str("hash")?
        .filter(|h| !h.is_empty())
        .map(parse_hash)
        .transpose()?;
    let chain = state.lock();
    if let Some(hash) = &hash {
        let Some(lt) = lt else {
            return Err(DevnetApiError::invalid("hash needs lt"));
        };
        if chain.transaction(&addr, lt, hash).is_none() {
            return Err(DevnetApiError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "transaction lt={lt} hash={} not found for this account",
                    b64(hash)
                ),
            });
        }
    }
    let txs = chain.transactions(&addr, lt, to_lt, limit as usize);
    Ok(Value::Array(txs.into_iter().map(tx_json).collect()))
}

/// toncenter's JSON for one transaction.
pub fn tx_json(tx: &TxRecord) -> Value {
    json!({
        "@type": "raw.transaction",
        "address": {"@type": "accountAddress", "account_address": friendly(&tx.account)},
        "utime": tx.now,
        "data": stack::boc64(&tx.cell),
        "transaction_id": tx_id(tx.lt, &tx.hash),
        "fee": tx.total_fees.to_string(),
        "storage_fee": tx.storage_fees.to_string(),
        "other_fee": tx.total_fees.saturating_sub(tx.storage_fees).to_string(),
        "in_msg": tx.in_msg.as_ref().map(msg_json),
        "out_msgs": tx.out_msgs.iter().map(msg_json).collect::<Vec<_>>(),
    })
}

fn msg_json(m: &MsgRecord) -> Value {
    json!({
        "@type": "raw.message",
        "hash": b64(&m.hash),
        "source": m.src.as_ref().map(friendly).unwrap_or_default(),
        "destination": m.dst.as_ref().map(friendly).unwrap_or_default(),
        "value": m.value.to_string(),
        "extra_currencies": [],
        "fwd_fee": m.fwd_fee.to_string(),
        "ihr_fee": "0",
        "created_lt": m.created_lt.to_string(),
        "body_hash": b64(m.body.repr_hash()),
        "msg_data": {
            "@type": "msg.dataRaw",
            "body": stack::boc64(&m.body),
            "init_state": m.init.as_ref().map(stack::boc64).unwrap_or_default(),
        },
        "message": text_comment(&m.body).unwrap_or_default(),
    })
}

/// A single-cell text comment (`op = 0` then UTF-8), as toncenter shows in `message`.
fn text_comment(body: &Cell) -> Option<String> {
    let mut s = body.as_slice().ok()?;
    if s.size_bits() < 32 || s.load_u32().ok()? != 0 || s.size_refs() != 0 {
        return None;
    }
    let bits = s.size_bits();
    if bits % 8 != 0 {
        return None;
    }
    let mut buf = vec![0u8; usize::from(bits / 8)];
    s.load_raw(&mut buf, bits).ok()?;
    String::from_utf8(buf).ok()
}

async fn faucet(State(state): State<ApiState>, body: Bytes) -> Response {
    let params = match Params::from_request(Ok(Query(HashMap::new())), &body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let result = run_blocking(state, move |st| {
        let addr = params.address("address")?;
        let amount = params
            .uint("amount")?
            .ok_or_else(|| DevnetApiError::invalid("empty amount"))?;
        let mut chain = st.lock();
        let txs = chain.faucet(&addr, amount)?;
        let info = chain.account(&addr)?;
        let tx = txs.first().ok_or_else(|| DevnetApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "faucet produced no transaction".into(),
        })?;
        Ok(json!({
            "address": addr.to_string(),
            "amount": amount.to_string(),
            "balance": info.balance.to_string(),
            "state": info.status.as_str(),
            "transaction_id": tx_id(tx.lt, &tx.hash),
        }))
    })
    .await;
    match result {
        Ok(v) => ok(v),
        Err(e) => e.into_response(),
    }
}

fn clock_json(chain: &Devnet) -> Value {
    json!({"now": chain.now(), "lt": chain.lt().to_string()})
}

async fn clock_get(State(state): State<ApiState>) -> Response {
    ok(clock_json(&state.lock()))
}

async fn clock_set(State(state): State<ApiState>, body: Bytes) -> Response {
    let params = match Params::from_request(Ok(Query(HashMap::new())), &body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let result = (|| {
        let advance = params.uint("advance")?;
        let set = params.uint("set")?;
        let mut chain = state.lock();
        match (advance, set) {
            (Some(s), None) => {
                let s = u64::try_from(s)
                    .map_err(|_| DevnetApiError::invalid("advance out of range"))?;
                chain.advance(s)?;
            }
            (None, Some(t)) => {
                let t =
                    u64::try_from(t).map_err(|_| DevnetApiError::invalid("set out of range"))?;
                chain.set_now(t)?;
            }
            _ => {
                return Err(DevnetApiError::invalid(
                    "give exactly one of {\"advance\": seconds} or {\"set\": unix}",
                ));
            }
        }
        Ok(clock_json(&chain))
    })();
    match result {
        Ok(v) => ok(v),
        Err(e) => e.into_response(),
    }
}

async fn info(State(state): State<ApiState>) -> Response {
    let chain = state.lock();
    let i = &state.info;
    ok(json!({
        "now": chain.now(),
        "lt": chain.lt().to_string(),
        "seqno": chain.last_block().seqno,
        "accounts": chain.account_count(),
        "transactions": chain.tx_count(),
        "persistent": chain.dir().is_some(),
        "config": "TON mainnet (from @ton/sandbox 0.41.0 defaultConfig, seqno 52956904)",
        "faucet_address": crate::chain::faucet_address().to_string(),
        "root_address": i.root_address.as_ref().map(ToString::to_string),
        "root_address_friendly": i.root_address.as_ref().map(friendly),
        "root_owner": i.root_owner.as_ref().map(ToString::to_string),
        "root_owner_key": i.root_owner_key,
    }))
}
