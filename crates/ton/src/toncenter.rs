//! A toncenter v2 HTTP client implementing [`Chain`], plus the devnet's extra controls.
//!
//! toncenter v2 (and its self-hosted form `ton-http-api`) wraps every answer in
//! `{"ok": true, "result": ...}` or `{"ok": false, "error": "...", "code": N}`. We use five
//! methods: `sendBoc`, `runGetMethod`, `getAddressInformation`, `getTransactions`,
//! `getMasterchainInfo`. The same subset is served by `cocoon devnet`, which adds
//! `POST /_devnet/faucet` and `GET/POST /_devnet/clock` ([`Devnet`]).
//!
//! Robustness: each request has a timeout; transport errors, 5xx and 429 are retried with
//! exponential backoff, moving to the next endpoint each time (failover); other 4xx and
//! `ok: false` answers are returned at once. The API key goes in the `X-API-Key` header and
//! never into logs or `Debug`.
//!
//! Trust: HTTPS endpoints are checked against the bundled WebPKI roots plus the certificates
//! in [`ToncenterConfig::extra_roots`], and nothing else: the machine's CA bundle and
//! `SSL_CERT_FILE` are not read, because inside a TEE the host controls both.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tycho_types::models::StdAddr;

use crate::chain::Devnet;
use crate::chain::{
    AccountState, AccountStatus, Chain, ChainError, GetMethodResult, StackValue, Transaction,
    TvmInt, TxId, TxMessage,
};
use crate::codec;

/// Client configuration.
#[derive(Clone)]
pub struct ToncenterConfig {
    /// Base URLs, e.g. `https://toncenter.com` or `http://127.0.0.1:8081` (`/api/v2` is
    /// appended).
    pub endpoints: Vec<String>,
    /// API key sent as `X-API-Key`.
    pub api_key: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Total attempts per call, across endpoints.
    pub max_attempts: u32,
    /// First backoff delay; doubled per retry, capped at 2 s.
    pub backoff: Duration,
    /// CA certificates trusted besides the WebPKI roots (an explicit setting, e.g. for a
    /// private endpoint or a TLS-inspecting egress proxy).
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl std::fmt::Debug for ToncenterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToncenterConfig")
            .field("endpoints", &self.endpoints)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

impl ToncenterConfig {
    /// One endpoint, no key, 10 s timeout, 4 attempts, 200 ms first backoff.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoints: vec![endpoint.into()],
            api_key: None,
            timeout: Duration::from_secs(10),
            max_attempts: 4,
            backoff: Duration::from_millis(200),
            extra_roots: Vec::new(),
        }
    }
}

/// toncenter v2 client. Cheap to clone.
#[derive(Clone)]
pub struct Toncenter {
    http: reqwest::Client,
    cfg: Arc<ToncenterConfig>,
    current: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Toncenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Toncenter")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Toncenter {
    /// Builds a client.
    pub fn new(cfg: ToncenterConfig) -> Result<Self, ChainError> {
        if cfg.endpoints.is_empty() {
            return Err(ChainError::Decode(
                "no toncenter endpoints configured".into(),
            ));
        }
        // The bundled WebPKI roots, plus only what the configuration names explicitly.
        let http = cocoon_http::ClientBuilder::new()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .extra_roots(&cfg.extra_roots)
            .build()
            .map_err(|e| match e {
                cocoon_http::HttpError::BadRoot(_) => ChainError::Decode(e.to_string()),
                e => ChainError::Transport(e.to_string()),
            })?;
        Ok(Self {
            http,
            cfg: Arc::new(cfg),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// A client for one URL with default settings.
    pub fn with_url(url: &str) -> Result<Self, ChainError> {
        Self::new(ToncenterConfig::new(url))
    }

    fn url(&self, idx: usize, path: &str) -> String {
        let base = self.cfg.endpoints[idx % self.cfg.endpoints.len()].trim_end_matches('/');
        if path.starts_with("/_devnet") {
            format!("{base}{path}")
        } else {
            format!("{base}/api/v2/{path}")
        }
    }

    async fn once(
        &self,
        idx: usize,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, ChainError> {
        let url = self.url(idx, path);
        let mut req = match body {
            Some(b) => self.http.post(&url).json(b),
            None => self.http.get(&url),
        };
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(k) = &self.cfg.api_key {
            req = req.header("X-API-Key", k);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ChainError::Transport(without_url(e)))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| ChainError::Transport(without_url(e)))?;
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        if !(200..300).contains(&status) {
            let message = parsed
                .as_ref()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| text.chars().take(200).collect());
            return Err(ChainError::Http { status, message });
        }
        let v = parsed.ok_or_else(|| ChainError::Decode(format!("{path}: body is not JSON")))?;
        match v.get("ok").and_then(Value::as_bool) {
            Some(true) => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
            Some(false) => Err(ChainError::Api {
                code: v.get("code").and_then(Value::as_i64),
                message: v
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            }),
            None => Err(ChainError::Decode(format!("{path}: no \"ok\" field"))),
        }
    }

    /// One API call with retries, backoff and failover.
    async fn call(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, ChainError> {
        let attempts = self.cfg.max_attempts.max(1);
        let mut last = None;
        for attempt in 0..attempts {
            let idx = self.current.load(Ordering::Relaxed);
            match self.once(idx, path, query, body).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => {
                    tracing::debug!(path, attempt, endpoint = idx, error = %e, "toncenter retry");
                    // fail over to the next endpoint
                    let _ = self.current.compare_exchange(
                        idx,
                        (idx + 1) % self.cfg.endpoints.len(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    last = Some(e);
                    if attempt + 1 < attempts {
                        let delay = self.cfg.backoff.saturating_mul(1 << attempt.min(10));
                        tokio::time::sleep(delay.min(Duration::from_secs(2))).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(ChainError::Exhausted {
            attempts,
            last: Box::new(last.unwrap_or(ChainError::Transport("no attempt made".into()))),
        })
    }
}

/// reqwest errors print the URL, which may carry query parameters; keep only the cause.
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    };
    let mut msg = kind.to_owned();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

fn dec(what: &str) -> ChainError {
    ChainError::Decode(what.to_owned())
}

/// Numbers come as JSON strings or numbers.
fn num_u128(v: &Value) -> Option<u128> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64().map(u128::from),
        _ => None,
    }
}

fn b64_32(s: &str) -> Option<[u8; 32]> {
    B64.decode(s).ok()?.try_into().ok()
}

fn opt_cell(v: Option<&Value>) -> Result<Option<tycho_types::cell::Cell>, ChainError> {
    match v.and_then(Value::as_str) {
        None | Some("") => Ok(None),
        Some(s) => Ok(Some(codec::decode_boc_base64(s)?)),
    }
}

fn tx_id(v: &Value) -> Option<TxId> {
    let lt = num_u128(v.get("lt")?)? as u64;
    let hash = b64_32(v.get("hash")?.as_str()?)?;
    Some(TxId { lt, hash })
}

fn address_field(v: Option<&Value>) -> Result<Option<StdAddr>, ChainError> {
    match v.and_then(Value::as_str) {
        None | Some("") => Ok(None),
        Some(s) => Ok(Some(crate::parse_address(s)?)),
    }
}

fn parse_tx_message(v: &Value) -> Result<TxMessage, ChainError> {
    let body = match v.get("msg_data") {
        Some(md) if md.get("@type").and_then(Value::as_str) == Some("msg.dataRaw") => {
            opt_cell(md.get("body"))?
        }
        _ => None,
    };
    Ok(TxMessage {
        source: address_field(v.get("source"))?,
        destination: address_field(v.get("destination"))?,
        value: v.get("value").and_then(num_u128).unwrap_or(0),
        body,
    })
}

fn parse_transaction(v: &Value) -> Result<Transaction, ChainError> {
    let id = v
        .get("transaction_id")
        .and_then(tx_id)
        .ok_or_else(|| dec("transaction_id"))?;
    let in_msg = match v.get("in_msg") {
        Some(m) if m.is_object() => Some(parse_tx_message(m)?),
        _ => None,
    };
    let out_msgs = v
        .get("out_msgs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(parse_tx_message)
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    Ok(Transaction {
        id,
        utime: v.get("utime").and_then(Value::as_u64).unwrap_or(0),
        fee: v.get("fee").and_then(num_u128).unwrap_or(0),
        in_msg,
        out_msgs,
        raw: opt_cell(v.get("data"))?,
    })
}

/// Parses a toncenter stack entry: `["num", "0x.."]`, `["cell", {"bytes": b64}]`,
/// `["slice", {"bytes": b64}]`, `["null"]`, `["tuple"|"list", {"elements": [...]}]`.
fn parse_stack_entry(v: &Value) -> Result<StackValue, ChainError> {
    let arr = v
        .as_array()
        .ok_or_else(|| dec("stack entry is not an array"))?;
    let kind = arr
        .first()
        .and_then(Value::as_str)
        .ok_or_else(|| dec("stack entry type"))?;
    let val = arr.get(1);
    let bytes = |val: Option<&Value>| -> Result<tycho_types::cell::Cell, ChainError> {
        let s = val
            .and_then(|x| {
                x.get("bytes")
                    .and_then(Value::as_str)
                    .or_else(|| x.as_str())
            })
            .ok_or_else(|| dec("stack cell bytes"))?;
        Ok(codec::decode_boc_base64(s)?)
    };
    match kind {
        "num" | "int" => {
            let s = val
                .and_then(Value::as_str)
                .ok_or_else(|| dec("stack num"))?;
            Ok(StackValue::Int(
                TvmInt::parse(s).ok_or_else(|| dec("stack num value"))?,
            ))
        }
        "cell" | "tvm.Cell" => Ok(StackValue::Cell(bytes(val)?)),
        "slice" | "tvm.Slice" => Ok(StackValue::Slice(bytes(val)?)),
        "null" => Ok(StackValue::Null),
        "tuple" | "list" => tuple_of(val, "stack tuple elements"),
        other => Err(ChainError::Decode(format!(
            "unknown stack entry type {other:?}"
        ))),
    }
}

/// The tuple whose `elements` `holder` carries (each a tonlib typed element); `what` names a
/// missing list in the error.
fn tuple_of(holder: Option<&Value>, what: &str) -> Result<StackValue, ChainError> {
    let els = holder
        .and_then(|x| x.get("elements"))
        .and_then(Value::as_array)
        .ok_or_else(|| dec(what))?;
    Ok(StackValue::Tuple(
        els.iter()
            .map(parse_tuple_element)
            .collect::<Result<_, _>>()?,
    ))
}

/// Tuple elements use tonlib's typed objects: `{"@type": "tvm.stackEntryNumber", "number":
/// {"number": "123"}}`, `tvm.stackEntryCell`/`Slice` with `{"cell"|"slice": {"bytes": ..}}`,
/// `tvm.stackEntryTuple`/`List` with `{"tuple"|"list": {"elements": [...]}}`.
fn parse_tuple_element(v: &Value) -> Result<StackValue, ChainError> {
    if v.is_array() {
        return parse_stack_entry(v);
    }
    let t = v.get("@type").and_then(Value::as_str).unwrap_or("");
    let inner_bytes = |key: &str| -> Result<tycho_types::cell::Cell, ChainError> {
        let s = v
            .get(key)
            .and_then(|c| c.get("bytes"))
            .and_then(Value::as_str)
            .ok_or_else(|| dec("tuple cell bytes"))?;
        Ok(codec::decode_boc_base64(s)?)
    };
    match t {
        "tvm.stackEntryNumber" => {
            let s = v
                .get("number")
                .and_then(|n| n.get("number"))
                .and_then(Value::as_str)
                .ok_or_else(|| dec("tuple number"))?;
            Ok(StackValue::Int(
                TvmInt::parse(s).ok_or_else(|| dec("tuple number value"))?,
            ))
        }
        "tvm.stackEntryCell" => Ok(StackValue::Cell(inner_bytes("cell")?)),
        "tvm.stackEntrySlice" => Ok(StackValue::Slice(inner_bytes("slice")?)),
        "tvm.stackEntryTuple" | "tvm.stackEntryList" => {
            let key = if t.ends_with("Tuple") {
                "tuple"
            } else {
                "list"
            };
            tuple_of(v.get(key), "tuple elements")
        }
        "tvm.stackEntryUnsupported" | "tvm.stackEntryNull" => Ok(StackValue::Null),
        other => Err(ChainError::Decode(format!(
            "unknown tuple element {other:?}"
        ))),
    }
}

/// Encodes an input stack entry the way toncenter's `runGetMethod` accepts it.
fn stack_entry_json(v: &StackValue) -> Result<Value, ChainError> {
    Ok(match v {
        StackValue::Int(i) => json!(["num", i.to_hex()]),
        StackValue::Cell(c) => json!(["tvm.Cell", codec::encode_boc_base64(c)]),
        StackValue::Slice(c) => json!(["tvm.Slice", codec::encode_boc_base64(c)]),
        StackValue::Null => json!(["null"]),
        StackValue::Tuple(_) => {
            return Err(ChainError::Decode(
                "tuples are not accepted as get-method input".into(),
            ));
        }
    })
}

impl Chain for Toncenter {
    async fn send_boc(&self, boc: &[u8]) -> Result<(), ChainError> {
        self.call("sendBoc", &[], Some(&json!({ "boc": B64.encode(boc) })))
            .await?;
        Ok(())
    }

    async fn run_get_method(
        &self,
        address: &StdAddr,
        method: &str,
        stack: &[StackValue],
    ) -> Result<GetMethodResult, ChainError> {
        let stack: Vec<Value> = stack
            .iter()
            .map(stack_entry_json)
            .collect::<Result<_, _>>()?;
        let body = json!({ "address": address.to_string(), "method": method, "stack": stack });
        let r = self.call("runGetMethod", &[], Some(&body)).await?;
        let exit_code = r
            .get("exit_code")
            .and_then(Value::as_i64)
            .ok_or_else(|| dec("exit_code"))? as i32;
        if exit_code != 0 && exit_code != 1 {
            return Err(ChainError::GetMethodExit {
                method: method.to_owned(),
                exit_code,
            });
        }
        let stack = r
            .get("stack")
            .and_then(Value::as_array)
            .ok_or_else(|| dec("stack"))?
            .iter()
            .map(parse_stack_entry)
            .collect::<Result<_, _>>()?;
        Ok(GetMethodResult {
            exit_code,
            gas_used: r.get("gas_used").and_then(Value::as_u64),
            stack,
        })
    }

    async fn account_state(&self, address: &StdAddr) -> Result<AccountState, ChainError> {
        let r = self
            .call(
                "getAddressInformation",
                &[("address", address.to_string())],
                None,
            )
            .await?;
        let balance = r
            .get("balance")
            .and_then(num_u128)
            .ok_or_else(|| dec("balance"))?;
        let code = opt_cell(r.get("code"))?;
        let data = opt_cell(r.get("data"))?;
        let status = match r.get("state").and_then(Value::as_str) {
            Some("active") => AccountStatus::Active,
            Some("frozen") => AccountStatus::Frozen,
            Some("uninitialized") | Some("uninit") => {
                if balance == 0
                    && r.get("last_transaction_id")
                        .and_then(tx_id)
                        .is_none_or(|t| t.lt == 0)
                {
                    AccountStatus::Nonexist
                } else {
                    AccountStatus::Uninit
                }
            }
            Some("nonexist") => AccountStatus::Nonexist,
            other => return Err(ChainError::Decode(format!("account state {other:?}"))),
        };
        let last_tx = r
            .get("last_transaction_id")
            .and_then(tx_id)
            .filter(|t| t.lt != 0);
        Ok(AccountState {
            balance,
            status,
            code,
            data,
            last_tx,
            sync_utime: r.get("sync_utime").and_then(Value::as_u64),
        })
    }

    async fn transactions_since(
        &self,
        address: &StdAddr,
        after: Option<&TxId>,
        limit: usize,
    ) -> Result<Vec<Transaction>, ChainError> {
        const PAGE: usize = 16;
        let mut out: Vec<Transaction> = Vec::new();
        let mut from: Option<TxId> = None;
        'pages: loop {
            let mut q = vec![
                ("address", address.to_string()),
                ("limit", PAGE.to_string()),
            ];
            if let Some(f) = &from {
                q.push(("lt", f.lt.to_string()));
                q.push(("hash", B64.encode(f.hash)));
            }
            if let Some(a) = after {
                q.push(("to_lt", a.lt.to_string()));
            }
            let r = self.call("getTransactions", &q, None).await?;
            let arr = r.as_array().ok_or_else(|| dec("transactions array"))?;
            let mut new_in_page = 0;
            for v in arr {
                let tx = parse_transaction(v)?;
                if from.as_ref() == Some(&tx.id) {
                    continue; // pages are inclusive of their start
                }
                if after.is_some_and(|a| tx.id.lt <= a.lt) {
                    break 'pages;
                }
                out.push(tx);
                new_in_page += 1;
            }
            if arr.len() < PAGE || new_in_page == 0 {
                break;
            }
            from = out.last().map(|t| t.id.clone());
            if after.is_none() && out.len() >= limit {
                break;
            }
        }
        // `out` is newest first. Without a cursor keep the newest `limit`; with one keep the
        // `limit` right after the cursor, so a caller advancing its cursor misses nothing.
        if after.is_none() {
            out.truncate(limit);
        }
        out.reverse();
        out.truncate(limit);
        Ok(out)
    }

    async fn masterchain_seqno(&self) -> Result<u32, ChainError> {
        let r = self.call("getMasterchainInfo", &[], None).await?;
        r.get("last")
            .and_then(|l| l.get("seqno"))
            .and_then(Value::as_u64)
            .map(|s| s as u32)
            .ok_or_else(|| dec("last.seqno"))
    }
}

fn clock_value(v: &Value) -> Result<u64, ChainError> {
    v.as_u64()
        .or_else(|| {
            ["now", "unix", "time"]
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_u64))
        })
        .ok_or_else(|| dec("clock value"))
}

impl Devnet for Toncenter {
    async fn faucet(&self, address: &StdAddr, amount: u128) -> Result<(), ChainError> {
        let body = json!({ "address": address.to_string(), "amount": amount.to_string() });
        self.call("/_devnet/faucet", &[], Some(&body)).await?;
        Ok(())
    }
    async fn clock(&self) -> Result<u64, ChainError> {
        clock_value(&self.call("/_devnet/clock", &[], None).await?)
    }
    async fn advance_clock(&self, secs: u64) -> Result<u64, ChainError> {
        clock_value(
            &self
                .call("/_devnet/clock", &[], Some(&json!({ "advance": secs })))
                .await?,
        )
    }
    async fn set_clock(&self, unix: u64) -> Result<u64, ChainError> {
        clock_value(
            &self
                .call("/_devnet/clock", &[], Some(&json!({ "set": unix })))
                .await?,
        )
    }
    async fn devnet_info(&self) -> Result<Value, ChainError> {
        self.call("/_devnet/info", &[], None).await
    }
}
