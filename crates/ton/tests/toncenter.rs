//! The toncenter v2 client against an in-test axum server on 127.0.0.1.
//!
//! The server replays the response shapes of toncenter's public v2 API as documented in the
//! toncenter v2 reference (docs.ton.org, "TON Center V2": `getAddressInformation` example with
//! `raw.fullAccountState`, error bodies `{"ok": false, "code": 429, "error": "Ratelimit
//! exceeded"}`), and tonlib's `smc.runResult` / `raw.transactions` objects that toncenter
//! forwards (`runGetMethod`, `getTransactions`). Values are illustrative but the field names,
//! nesting and string-vs-number encodings are those of the real API.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cocoon_ton::chain::{AccountStatus, Chain, ChainError, StackValue, TvmInt, TxId};
use cocoon_ton::codec::{Layout, encode_boc_base64};
use cocoon_ton::messages::Excesses;
use cocoon_ton::{HashBytes, StdAddr};
use cocoon_ton::{Toncenter, ToncenterConfig, chain::Devnet};
use serde_json::{Value, json};

#[derive(Default)]
struct Srv {
    /// Number of failures to inject before answering (per route), with the status to use.
    fail: Mutex<HashMap<&'static str, (u32, u16)>>,
    hits: Mutex<HashMap<&'static str, u32>>,
    api_keys: Mutex<Vec<String>>,
    last_body: Mutex<Option<Value>>,
    clock: AtomicU32,
    faucet: Mutex<Vec<Value>>,
    slow: Mutex<bool>,
}

type S = Arc<Srv>;

fn ok(v: Value) -> (StatusCode, Json<Value>) {
    (
        StatusCode::OK,
        Json(json!({ "ok": true, "result": v, "@extra": "1755281559.43:12:0.19" })),
    )
}

async fn gate(s: &Srv, route: &'static str, h: &HeaderMap) -> Option<(StatusCode, Json<Value>)> {
    *s.hits.lock().unwrap().entry(route).or_default() += 1;
    if let Some(k) = h.get("x-api-key") {
        s.api_keys
            .lock()
            .unwrap()
            .push(k.to_str().unwrap().to_owned());
    }
    if *s.slow.lock().unwrap() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut f = s.fail.lock().unwrap();
    if let Some((n, status)) = f.get_mut(route)
        && *n > 0
    {
        *n -= 1;
        let code = StatusCode::from_u16(*status).unwrap();
        let msg = if *status == 429 {
            "Ratelimit exceeded"
        } else {
            "LITE_SERVER_NETWORK timeout"
        };
        return Some((
            code,
            Json(json!({ "ok": false, "code": status, "error": msg })),
        ));
    }
    None
}

fn body_cell() -> String {
    encode_boc_base64(&Excesses { query_id: 77 }.to_cell().unwrap())
}

fn tx_json(lt: u64) -> Value {
    let hash = B64.encode([lt as u8; 32]);
    json!({
        "@type": "raw.transaction",
        "address": { "@type": "accountAddress", "account_address": "EQCns7bYSp0igFvS1wpb5wsZjCKCV19MD5AVzI4EyxsnU73k" },
        "utime": 1_700_000_000u64 + lt,
        "data": "",
        "transaction_id": { "@type": "internal.transactionId", "lt": lt.to_string(), "hash": hash },
        "fee": "1653331",
        "storage_fee": "0",
        "other_fee": "1653331",
        "in_msg": {
            "@type": "raw.message",
            "source": "EQCns7bYSp0igFvS1wpb5wsZjCKCV19MD5AVzI4EyxsnU73k",
            "destination": "0:0000000000000000000000000000000000000000000000000000000000000001",
            "value": "1000000000",
            "fwd_fee": "0",
            "ihr_fee": "0",
            "created_lt": lt.to_string(),
            "body_hash": "",
            "msg_data": { "@type": "msg.dataRaw", "body": body_cell(), "init_state": "" },
            "message": ""
        },
        "out_msgs": []
    })
}

async fn get_address_information(
    State(s): State<S>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    if let Some(e) = gate(&s, "getAddressInformation", &h).await {
        return e;
    }
    if q.get("address").map(String::as_str)
        == Some("0:0000000000000000000000000000000000000000000000000000000000000000")
    {
        // an address never seen: tonlib answers "uninitialized" with zero balance and lt 0
        return ok(json!({
            "@type": "raw.fullAccountState", "balance": "0", "extra_currencies": [], "code": "", "data": "",
            "last_transaction_id": { "@type": "internal.transactionId", "lt": "0", "hash": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" },
            "block_id": { "@type": "ton.blockIdExt", "workchain": -1, "shard": "-9223372036854775808", "seqno": 50940162, "root_hash": "S3S4Otb/vX2ZZDsOAB2a3Deqf3+K3aerm7qodto/nt8=", "file_hash": "h/bCahzQzEMzwRwnDBpzmN1m1/wjyA0BUy/HTtBbirs=" },
            "frozen_hash": "", "sync_utime": 1755281542, "state": "uninitialized"
        }));
    }
    // the documented example answer (a wallet v3r2 account on mainnet)
    ok(json!({
        "@type": "raw.fullAccountState",
        "balance": "1592521995920473",
        "extra_currencies": [],
        "code": "te6cckEBAQEAcQAA3v8AIN0gggFMl7ohggEznLqxn3Gw7UTQ0x/THzHXC//jBOCk8mCDCNcYINMf0x/TH/gjE7vyY+1E0NMf0x/T/9FRMrryoVFEuvKiBPkBVBBV+RDyo/gAkyDXSpbTB9QC+wDo0QGkyMsfyx/L/8ntVBC9ba0=",
        "data": "te6cckEBAQEAKgAAUAAAAVUpqaMXcsnta2Km4uuhSpO5BGLno2d3e+uKOPsVufM4RNIs4v+Z1A2U",
        "last_transaction_id": { "@type": "internal.transactionId", "lt": "60294179000005", "hash": "opzfb6lX3inMMTbyvp8Z/FmrrdgZ4D/NPZvDZOkjd0E=" },
        "block_id": { "@type": "ton.blockIdExt", "workchain": -1, "shard": "-9223372036854775808", "seqno": 50940162, "root_hash": "S3S4Otb/vX2ZZDsOAB2a3Deqf3+K3aerm7qodto/nt8=", "file_hash": "h/bCahzQzEMzwRwnDBpzmN1m1/wjyA0BUy/HTtBbirs=" },
        "frozen_hash": "",
        "sync_utime": 1755281542,
        "state": "active"
    }))
}

async fn run_get_method(
    State(s): State<S>,
    h: HeaderMap,
    Json(b): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if let Some(e) = gate(&s, "runGetMethod", &h).await {
        return e;
    }
    *s.last_body.lock().unwrap() = Some(b.clone());
    if b["method"] == "missing" {
        return ok(
            json!({ "@type": "smc.runResult", "gas_used": 0, "stack": [], "exit_code": 11 }),
        );
    }
    ok(json!({
        "@type": "smc.runResult",
        "gas_used": 811,
        "stack": [
            ["num", "0x5dc"],
            ["num", "-0x1"],
            ["cell", { "bytes": body_cell(), "object": {} }],
            ["tuple", { "@type": "tvm.tuple", "elements": [
                { "@type": "tvm.stackEntryNumber", "number": { "@type": "tvm.numberDecimal", "number": "42" } },
                { "@type": "tvm.stackEntrySlice", "slice": { "@type": "tvm.slice", "bytes": body_cell() } }
            ] }],
            ["null"]
        ],
        "exit_code": 0
    }))
}

async fn send_boc(
    State(s): State<S>,
    h: HeaderMap,
    Json(b): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if let Some(e) = gate(&s, "sendBoc", &h).await {
        return e;
    }
    *s.last_body.lock().unwrap() = Some(b);
    ok(json!({ "@type": "ok" }))
}

async fn get_transactions(
    State(s): State<S>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    if let Some(e) = gate(&s, "getTransactions", &h).await {
        return e;
    }
    // 40 transactions with lt 1..=40; newest first; `lt`+`hash` start inclusive; `to_lt` exclusive
    let limit: usize = q.get("limit").and_then(|v| v.parse().ok()).unwrap_or(10);
    let start: u64 = q.get("lt").and_then(|v| v.parse().ok()).unwrap_or(40);
    if let (Some(_), Some(hash)) = (q.get("lt"), q.get("hash")) {
        assert_eq!(
            B64.decode(hash).unwrap(),
            vec![start as u8; 32],
            "hash must match lt"
        );
    }
    let to_lt: u64 = q.get("to_lt").and_then(|v| v.parse().ok()).unwrap_or(0);
    let txs: Vec<Value> = (1..=start)
        .rev()
        .filter(|lt| *lt > to_lt)
        .take(limit)
        .map(tx_json)
        .collect();
    ok(Value::Array(txs))
}

async fn masterchain_info(State(s): State<S>, h: HeaderMap) -> (StatusCode, Json<Value>) {
    if let Some(e) = gate(&s, "getMasterchainInfo", &h).await {
        return e;
    }
    ok(json!({
        "@type": "blocks.masterchainInfo",
        "last": { "@type": "ton.blockIdExt", "workchain": -1, "shard": "-9223372036854775808", "seqno": 50940162, "root_hash": "S3S4Otb/vX2ZZDsOAB2a3Deqf3+K3aerm7qodto/nt8=", "file_hash": "h/bCahzQzEMzwRwnDBpzmN1m1/wjyA0BUy/HTtBbirs=" },
        "state_root_hash": "S3S4Otb/vX2ZZDsOAB2a3Deqf3+K3aerm7qodto/nt8=",
        "init": { "@type": "ton.blockIdExt", "workchain": -1, "shard": "-9223372036854775808", "seqno": 0, "root_hash": "F6OpKZKqvqeFp6CQmFomXNMfMj2EnaUSOXN+Mh+wVWk=", "file_hash": "XplPz01CXAps5qeSWUtxcyBfdAo5zVb1N979KLSKD24=" }
    }))
}

async fn faucet(State(s): State<S>, Json(b): Json<Value>) -> (StatusCode, Json<Value>) {
    s.faucet.lock().unwrap().push(b);
    ok(json!({}))
}

async fn clock_get(State(s): State<S>) -> (StatusCode, Json<Value>) {
    ok(json!({ "now": s.clock.load(Ordering::SeqCst) }))
}

async fn clock_post(State(s): State<S>, Json(b): Json<Value>) -> (StatusCode, Json<Value>) {
    if let Some(a) = b.get("advance").and_then(Value::as_u64) {
        s.clock.fetch_add(a as u32, Ordering::SeqCst);
    }
    if let Some(t) = b.get("set").and_then(Value::as_u64) {
        s.clock.store(t as u32, Ordering::SeqCst);
    }
    ok(json!({ "now": s.clock.load(Ordering::SeqCst) }))
}

async fn serve() -> (String, S) {
    let s: S = Arc::new(Srv {
        clock: AtomicU32::new(1_750_000_000),
        ..Default::default()
    });
    let app = Router::new()
        .route(
            "/api/v2/getAddressInformation",
            get(get_address_information),
        )
        .route("/api/v2/runGetMethod", post(run_get_method))
        .route("/api/v2/sendBoc", post(send_boc))
        .route("/api/v2/getTransactions", get(get_transactions))
        .route("/api/v2/getMasterchainInfo", get(masterchain_info))
        .route("/_devnet/faucet", post(faucet))
        .route("/_devnet/clock", get(clock_get).post(clock_post))
        .with_state(s.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}"), s)
}

fn client(url: &str) -> Toncenter {
    let mut cfg = ToncenterConfig::new(url);
    cfg.api_key = Some("secret-key-123".into());
    cfg.backoff = Duration::from_millis(5);
    cfg.timeout = Duration::from_millis(300);
    Toncenter::new(cfg).unwrap()
}

fn addr1() -> StdAddr {
    StdAddr::new(0, HashBytes([1; 32]))
}

#[tokio::test]
async fn account_state_parses_documented_answer_and_sends_api_key() {
    let (url, s) = serve().await;
    let c = client(&url);
    let st = c.account_state(&addr1()).await.unwrap();
    assert_eq!(st.balance, 1_592_521_995_920_473);
    assert_eq!(st.status, AccountStatus::Active);
    assert!(st.code.is_some() && st.data.is_some());
    assert_eq!(st.last_tx.as_ref().unwrap().lt, 60_294_179_000_005);
    assert_eq!(st.sync_utime, Some(1_755_281_542));
    assert_eq!(s.api_keys.lock().unwrap().as_slice(), ["secret-key-123"]);
    // the api key never shows in Debug
    assert!(!format!("{c:?}").contains("secret-key-123"));

    let none = c.account_state(&StdAddr::ZERO).await.unwrap();
    assert_eq!(none.status, AccountStatus::Nonexist);
    assert!(none.last_tx.is_none() && none.code.is_none());
}

#[tokio::test]
async fn get_method_stack_in_and_out() {
    let (url, s) = serve().await;
    let c = client(&url);
    let cell = Excesses { query_id: 77 }.to_cell().unwrap();
    let r = c
        .run_get_method(
            &addr1(),
            "get_stuff",
            &[
                StackValue::Int(TvmInt::from_i128(-7)),
                StackValue::Cell(cell.clone()),
            ],
        )
        .await
        .unwrap();
    let sent = s.last_body.lock().unwrap().clone().unwrap();
    assert_eq!(sent["method"], "get_stuff");
    assert_eq!(sent["address"], addr1().to_string());
    assert_eq!(sent["stack"][0], json!(["num", "-0x7"]));
    assert_eq!(sent["stack"][1][0], "tvm.Cell");
    assert_eq!(r.gas_used, Some(811));
    assert_eq!(r.stack[0].as_i128(), Some(1500));
    assert_eq!(r.stack[1].as_i128(), Some(-1));
    assert_eq!(r.stack[2].as_cell().unwrap().repr_hash(), cell.repr_hash());
    let StackValue::Tuple(t) = &r.stack[3] else {
        panic!("tuple expected")
    };
    assert_eq!(t[0].as_i128(), Some(42));
    assert!(matches!(t[1], StackValue::Slice(_)));
    assert_eq!(r.stack[4], StackValue::Null);

    let e = c
        .run_get_method(&addr1(), "missing", &[])
        .await
        .unwrap_err();
    assert!(matches!(e, ChainError::GetMethodExit { exit_code: 11, .. }));
}

#[tokio::test]
async fn send_boc_posts_base64() {
    let (url, s) = serve().await;
    let c = client(&url);
    c.send_boc(&[1, 2, 3]).await.unwrap();
    assert_eq!(s.last_body.lock().unwrap().clone().unwrap()["boc"], "AQID");
}

#[tokio::test]
async fn retries_5xx_and_429_with_backoff_but_not_4xx() {
    let (url, s) = serve().await;
    let c = client(&url);
    s.fail.lock().unwrap().insert("sendBoc", (2, 503));
    c.send_boc(&[1]).await.unwrap();
    assert_eq!(s.hits.lock().unwrap()["sendBoc"], 3);

    s.fail
        .lock()
        .unwrap()
        .insert("getMasterchainInfo", (1, 429));
    assert_eq!(c.masterchain_seqno().await.unwrap(), 50_940_162);
    assert_eq!(s.hits.lock().unwrap()["getMasterchainInfo"], 2);

    s.fail.lock().unwrap().insert("runGetMethod", (5, 422));
    let e = c.run_get_method(&addr1(), "x", &[]).await.unwrap_err();
    assert!(matches!(e, ChainError::Http { status: 422, .. }), "{e}");
    assert_eq!(
        s.hits.lock().unwrap()["runGetMethod"],
        1,
        "4xx must not be retried"
    );

    // persistent 5xx: gives up after max_attempts with the last error kept
    s.fail.lock().unwrap().insert("getTransactions", (100, 504));
    let e = c.transactions_since(&addr1(), None, 5).await.unwrap_err();
    match e {
        ChainError::Exhausted { attempts: 4, last } => {
            assert!(matches!(*last, ChainError::Http { status: 504, .. }))
        }
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn fails_over_to_the_next_endpoint_and_times_out() {
    let (url, s) = serve().await;
    // port 0: nothing can listen there, so the connection is refused
    let mut cfg = ToncenterConfig::new("http://127.0.0.1:0");
    cfg.endpoints.push(url.clone());
    cfg.backoff = Duration::from_millis(5);
    let c = Toncenter::new(cfg).unwrap();
    assert_eq!(c.masterchain_seqno().await.unwrap(), 50_940_162);
    // the good endpoint is remembered
    assert_eq!(c.masterchain_seqno().await.unwrap(), 50_940_162);
    assert_eq!(s.hits.lock().unwrap()["getMasterchainInfo"], 2);

    // a slow server hits the per-request timeout, which is retried, then exhausted
    *s.slow.lock().unwrap() = true;
    let c = client(&url);
    let e = c.masterchain_seqno().await.unwrap_err();
    match e {
        ChainError::Exhausted { last, .. } => assert!(
            matches!(*last, ChainError::Transport(ref m) if m.contains("timeout")),
            "{last}"
        ),
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn transactions_since_cursor_paginates_oldest_first() {
    let (url, _s) = serve().await;
    let c = client(&url);
    let all = c.transactions_since(&addr1(), None, 100).await.unwrap();
    assert_eq!(all.len(), 40);
    assert_eq!(all.first().unwrap().id.lt, 1);
    assert_eq!(all.last().unwrap().id.lt, 40);
    let tx = &all[0];
    assert_eq!(tx.fee, 1_653_331);
    let m = tx.in_msg.as_ref().unwrap();
    assert_eq!(m.value, 1_000_000_000);
    assert_eq!(
        Excesses::from_cell(m.body.as_ref().unwrap())
            .unwrap()
            .query_id,
        77
    );
    assert_eq!(m.destination.as_ref().unwrap().address.0[31], 1);

    let newest = c.transactions_since(&addr1(), None, 5).await.unwrap();
    assert_eq!(
        newest.iter().map(|t| t.id.lt).collect::<Vec<_>>(),
        (36..=40).collect::<Vec<_>>()
    );

    let cursor = TxId {
        lt: 25,
        hash: [25; 32],
    };
    let newer = c
        .transactions_since(&addr1(), Some(&cursor), 100)
        .await
        .unwrap();
    assert_eq!(
        newer.iter().map(|t| t.id.lt).collect::<Vec<_>>(),
        (26..=40).collect::<Vec<_>>()
    );
    let capped = c
        .transactions_since(&addr1(), Some(&cursor), 3)
        .await
        .unwrap();
    assert_eq!(
        capped.iter().map(|t| t.id.lt).collect::<Vec<_>>(),
        vec![26, 27, 28]
    );
    let latest = TxId {
        lt: 40,
        hash: [40; 32],
    };
    assert!(
        c.transactions_since(&addr1(), Some(&latest), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn api_error_envelope_is_typed() {
    // a 200 answer with ok:false (tonlib errors forwarded by toncenter)
    let app = Router::new().route(
        "/api/v2/getMasterchainInfo",
        get(|| async { Json(json!({ "ok": false, "code": 500, "error": "LITE_SERVER_UNKNOWN" })) }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let e = client(&url).masterchain_seqno().await.unwrap_err();
    assert!(
        matches!(e, ChainError::Api { code: Some(500), ref message } if message == "LITE_SERVER_UNKNOWN"),
        "{e}"
    );
}

#[tokio::test]
async fn devnet_faucet_and_clock() {
    let (url, s) = serve().await;
    let c = client(&url);
    c.faucet(&addr1(), 5_000_000_000).await.unwrap();
    let f = s.faucet.lock().unwrap().clone();
    assert_eq!(f[0]["address"], addr1().to_string());
    assert_eq!(f[0]["amount"], "5000000000");
    assert_eq!(c.clock().await.unwrap(), 1_750_000_000);
    assert_eq!(c.advance_clock(60).await.unwrap(), 1_750_000_060);
    assert_eq!(c.set_clock(1_800_000_000).await.unwrap(), 1_800_000_000);
}
