//! The toncenter v2 API over real loopback TCP, against a devnet with the root deployed.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cocoon_devnet::Devnet;
use cocoon_devnet::api::{self, ApiState, DevnetInfo};
use common::{TON, Transfer, Wallet, addr};
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tycho_types::prelude::*;

const T0: u32 = 1_750_000_000;

/// A minimal HTTP/1.1 client: one request per connection.
async fn http(server: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "expected a sized body"
    );
    let json = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    (status, json)
}

async fn ok(server: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = http(server, method, path, body).await;
    assert_eq!(status, 200, "{method} {path}: {v}");
    assert_eq!(v["ok"], true, "{v}");
    v["result"].clone()
}

async fn err(server: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
    let (status, v) = http(server, method, path, body).await;
    assert_eq!(v["ok"], false, "{method} {path}: {v}");
    assert_eq!(v["code"], status, "code mirrors the status");
    (status, v["error"].as_str().unwrap().to_string())
}

async fn serve_plain() -> SocketAddr {
    let state = ApiState::new(Devnet::new(T0).unwrap(), DevnetInfo::default());
    api::spawn("127.0.0.1:0".parse().unwrap(), state)
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn wallet_flow_over_toncenter_api() {
    let srv = serve_plain().await;
    let w = Wallet::from_seed(0x11);
    let wa = w.address.to_string();

    // Before anything: an uninitialized address, toncenter style.
    let info = ok(
        srv,
        "GET",
        &format!("/api/v2/getAddressInformation?address={wa}"),
        None,
    )
    .await;
    assert_eq!(info["@type"], "raw.fullAccountState");
    assert_eq!(info["state"], "uninitialized");
    assert_eq!(info["balance"], "0");
    assert_eq!(info["code"], "");
    assert_eq!(info["last_transaction_id"]["lt"], "0");
    assert_eq!(info["sync_utime"], T0);

    let f = ok(
        srv,
        "POST",
        "/_devnet/faucet",
        Some(json!({"address": wa, "amount": "10000000000"})),
    )
    .await;
    assert_eq!(f["balance"], "10000000000");
    assert_eq!(f["state"], "uninitialized");

    // Deploy + pay bob through sendBocReturnHash (user-friendly address in the query too).
    let bob = addr(0xb0);
    let boc = w.transfer(&w.key, Transfer::new(0, T0 + 600, &bob, TON).with_init());
    let msg_hash = *Boc::decode(&boc).unwrap().repr_hash();
    let sent = ok(
        srv,
        "POST",
        "/api/v2/sendBocReturnHash",
        Some(json!({"boc": B64.encode(&boc)})),
    )
    .await;
    assert_eq!(sent["@type"], "raw.extMessageInfo");
    assert_eq!(sent["hash"], B64.encode(msg_hash.as_slice()));
    assert!(sent["hash_norm"].is_string());

    let friendly = w.address.display_base64_url(true).to_string();
    let wi = ok(
        srv,
        "GET",
        &format!("/api/v2/getWalletInformation?address={friendly}"),
        None,
    )
    .await;
    assert_eq!(wi["wallet"], true);
    assert_eq!(wi["wallet_type"], "wallet v3 r2");
    assert_eq!(wi["seqno"], 1);
    assert_eq!(wi["wallet_id"], common::SUBWALLET);
    assert_eq!(wi["account_state"], "active");

    let bal = ok(
        srv,
        "GET",
        &format!("/api/v2/getAddressBalance?address={bob}"),
        None,
    )
    .await;
    assert_eq!(bal, json!(TON.to_string()));

    // Get-method over POST with a stack argument the wallet ignores.
    let run = ok(
        srv,
        "POST",
        "/api/v2/runGetMethod",
        Some(json!({"address": wa, "method": "seqno", "stack": []})),
    )
    .await;
    assert_eq!(run["@type"], "smc.runResult");
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["stack"], json!([["num", "0x1"]]));
    assert!(run["gas_used"].as_u64().unwrap() > 0);
    // Same through jsonRPC (what @ton/ton's HttpApi uses).
    let (status, rpc) = http(
        srv,
        "POST",
        "/api/v2/jsonRPC",
        Some(json!({"id": 7, "jsonrpc": "2.0", "method": "runGetMethod",
                    "params": {"address": wa, "method": "seqno", "stack": []}})),
    )
    .await;
    assert_eq!(
        (status, rpc["id"].clone(), rpc["ok"].clone()),
        (200, json!(7), json!(true))
    );
    assert_eq!(rpc["result"]["stack"], json!([["num", "0x1"]]));

    // Second transfer, then history with paging.
    let boc = w.transfer(&w.key, Transfer::new(1, T0 + 600, &bob, TON));
    ok(
        srv,
        "POST",
        "/api/v2/sendBoc",
        Some(json!({"boc": B64.encode(&boc)})),
    )
    .await;
    let txs = ok(
        srv,
        "GET",
        &format!("/api/v2/getTransactions?address={wa}&limit=10"),
        None,
    )
    .await;
    let txs = txs.as_array().unwrap();
    assert_eq!(txs.len(), 3, "faucet, deploy, transfer");
    assert_eq!(txs[0]["@type"], "raw.transaction");
    assert_eq!(txs[0]["utime"], T0);
    let out = &txs[0]["out_msgs"][0];
    assert_eq!(out["destination"], bob.display_base64_url(true).to_string());
    assert_eq!(out["value"], TON.to_string());
    assert_eq!(txs[0]["in_msg"]["source"], "");
    assert_eq!(
        txs[2]["in_msg"]["source"],
        cocoon_devnet::chain::faucet_address()
            .display_base64_url(true)
            .to_string()
    );
    let lt1: u64 = txs[1]["transaction_id"]["lt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let h1 = txs[1]["transaction_id"]["hash"].as_str().unwrap();
    // The `data` BOC is the transaction cell: its hash is the id.
    let cell = Boc::decode_base64(txs[1]["data"].as_str().unwrap()).unwrap();
    assert_eq!(B64.encode(cell.repr_hash().as_slice()), h1);
    let page = ok(
        srv,
        "GET",
        &format!(
            "/api/v2/getTransactions?address={wa}&limit=5&lt={lt1}&hash={}",
            urlenc(h1)
        ),
        None,
    )
    .await;
    assert_eq!(page.as_array().unwrap().len(), 2);
    assert_eq!(page[0]["transaction_id"]["hash"], h1);
    let newer = ok(
        srv,
        "GET",
        &format!("/api/v2/getTransactions?address={wa}&to_lt={lt1}"),
        None,
    )
    .await;
    assert_eq!(newer.as_array().unwrap().len(), 1);
    let (code, _) = err(
        srv,
        "GET",
        &format!(
            "/api/v2/getTransactions?address={wa}&lt={}&hash={}",
            lt1 + 1,
            urlenc(h1)
        ),
        None,
    )
    .await;
    assert_eq!(code, 404);

    let mc = ok(srv, "GET", "/api/v2/getMasterchainInfo", None).await;
    assert_eq!(mc["@type"], "blocks.masterchainInfo");
    assert_eq!(mc["last"]["seqno"], 3, "one block per batch");
    assert_eq!(mc["last"]["workchain"], -1);
    assert_eq!(mc["init"]["seqno"], 0);

    // A rejected external: toncenter's 500 with the lite-server wording; no state change.
    let replay = w.transfer(&w.key, Transfer::new(1, T0 + 600, &bob, TON));
    let (code, msg) = err(
        srv,
        "POST",
        "/api/v2/sendBoc",
        Some(json!({"boc": B64.encode(&replay)})),
    )
    .await;
    assert_eq!(code, 500);
    assert!(
        msg.starts_with("LITE_SERVER_UNKNOWN: cannot apply external message"),
        "{msg}"
    );
    assert!(msg.contains("exit code 33"), "{msg}");
    let mc2 = ok(srv, "GET", "/api/v2/getMasterchainInfo", None).await;
    assert_eq!(mc2["last"]["seqno"], 3);

    // A get-method on an account without code: exit code -256, like a lite-server.
    let run = ok(
        srv,
        "POST",
        "/api/v2/runGetMethod",
        Some(json!({"address": bob.to_string(), "method": "seqno", "stack": []})),
    )
    .await;
    assert_eq!(run["exit_code"], -256);
}

fn urlenc(s: &str) -> String {
    s.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

#[tokio::test]
async fn clock_and_info() {
    let srv = serve_plain().await;
    let c = ok(srv, "GET", "/_devnet/clock", None).await;
    assert_eq!(c["now"], T0);
    let c = ok(
        srv,
        "POST",
        "/_devnet/clock",
        Some(json!({"advance": 3600})),
    )
    .await;
    assert_eq!(c["now"], T0 + 3600);
    let c = ok(
        srv,
        "POST",
        "/_devnet/clock",
        Some(json!({"set": T0 + 7200})),
    )
    .await;
    assert_eq!(c["now"], T0 + 7200);
    let (code, msg) = err(srv, "POST", "/_devnet/clock", Some(json!({"set": T0}))).await;
    assert_eq!(code, 422);
    assert!(msg.contains("backwards"), "{msg}");
    let (code, _) = err(
        srv,
        "POST",
        "/_devnet/clock",
        Some(json!({"advance": 1, "set": 5})),
    )
    .await;
    assert_eq!(code, 422);
    let info = ok(srv, "GET", "/_devnet/info", None).await;
    assert_eq!(info["now"], T0 + 7200);
    assert_eq!(info["accounts"], 0);
    assert_eq!(info["persistent"], false);
}

#[tokio::test]
async fn bad_input_is_a_clear_4xx() {
    let srv = serve_plain().await;
    let a1 = addr(1);
    let tx_limit = format!("/api/v2/getTransactions?address={a1}&limit=0");
    let tx_lt = format!("/api/v2/getTransactions?address={a1}&lt=abc");
    let tx_hash = format!("/api/v2/getTransactions?address={a1}&lt=1&hash=zz");
    let cases: Vec<(&str, &str, Option<Value>, u16, &str)> = vec![
        ("POST", "/api/v2/sendBoc", Some(json!({})), 422, "empty boc"),
        (
            "POST",
            "/api/v2/sendBoc",
            Some(json!({"boc": "%%%"})),
            422,
            "base64",
        ),
        (
            "POST",
            "/api/v2/sendBoc",
            Some(json!({"boc": "AAAA"})),
            422,
            "BOC",
        ),
        (
            "POST",
            "/api/v2/sendBoc",
            Some(json!({"boc": 5})),
            422,
            "empty boc",
        ),
        (
            "GET",
            "/api/v2/getAddressInformation",
            None,
            422,
            "empty address",
        ),
        (
            "GET",
            "/api/v2/getAddressInformation?address=xyz",
            None,
            422,
            "bad address",
        ),
        (
            "GET",
            "/api/v2/getAddressBalance?address=0:zz",
            None,
            422,
            "bad address",
        ),
        (
            "POST",
            "/api/v2/runGetMethod",
            Some(json!({"address": "0:00"})),
            422,
            "address",
        ),
        (
            "POST",
            "/api/v2/runGetMethod",
            Some(json!({"address": addr(1).to_string(), "method": "x", "stack": {}})),
            422,
            "Stack should be array",
        ),
        (
            "POST",
            "/api/v2/runGetMethod",
            Some(json!({"address": addr(1).to_string(), "stack": []})),
            422,
            "empty method",
        ),
        ("GET", &tx_limit, None, 422, "limit"),
        ("GET", &tx_lt, None, 422, "lt"),
        ("GET", &tx_hash, None, 422, "hash"),
        (
            "POST",
            "/_devnet/faucet",
            Some(json!({"address": addr(1).to_string(), "amount": 0})),
            422,
            "between",
        ),
        (
            "POST",
            "/_devnet/faucet",
            Some(json!({"address": addr(1).to_string(), "amount": "-5"})),
            422,
            "non-negative",
        ),
        (
            "POST",
            "/_devnet/faucet",
            Some(json!({"address": addr(1).to_string()})),
            422,
            "empty amount",
        ),
        (
            "POST",
            "/_devnet/faucet",
            Some(json!({"address": "-7:00", "amount": 1})),
            422,
            "address",
        ),
        (
            "POST",
            "/api/v2/getMasterchainInfo",
            Some(json!([1])),
            422,
            "JSON object",
        ),
        ("GET", "/api/v2/noSuchMethod", None, 404, "not served"),
        ("GET", "/nowhere", None, 404, "no such endpoint"),
        (
            "POST",
            "/api/v2/jsonRPC",
            Some(json!({"params": {}})),
            422,
            "method",
        ),
    ];
    for (method, path, body, want_code, want_text) in cases {
        let (code, msg) = err(srv, method, path, body.clone()).await;
        assert_eq!(code, want_code, "{method} {path} {body:?}: {msg}");
        assert!(
            msg.contains(want_text),
            "{method} {path}: {msg:?} lacks {want_text:?}"
        );
    }
    // A non-JSON body.
    let mut stream = tokio::net::TcpStream::connect(srv).await.unwrap();
    stream
        .write_all(b"POST /api/v2/sendBoc HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\n{{{")
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 422"), "{raw}");
    assert!(raw.contains("body is not JSON"));
}

#[tokio::test]
async fn started_devnet_serves_its_root() {
    let net = cocoon_testkit::devnet::devnet().await;
    let (srv, root, dir) = (net.addr, &net.root, &net.dir);
    let info = ok(srv, "GET", "/_devnet/info", None).await;
    assert_eq!(info["root_address"], root.address.to_string());
    assert_eq!(info["persistent"], true);
    let st = ok(
        srv,
        "GET",
        &format!("/api/v2/getAddressInformation?address={}", root.address),
        None,
    )
    .await;
    assert_eq!(st["state"], "active");
    let prices = ok(
        srv,
        "POST",
        "/api/v2/runGetMethod",
        Some(json!({"address": root.address.to_string(), "method": "get_prices", "stack": []})),
    )
    .await;
    assert_eq!(prices["exit_code"], 0);
    assert_eq!(
        prices["stack"][0],
        json!(["num", "0x14"]),
        "20 nanoton per token"
    );
    let params = ok(
        srv,
        "POST",
        "/api/v2/runGetMethod",
        Some(
            json!({"address": root.address.to_string(), "method": "get_params_cell", "stack": []}),
        ),
    )
    .await;
    assert_eq!(params["stack"][0][0], "cell");
    let cell = Boc::decode_base64(params["stack"][0][1]["bytes"].as_str().unwrap()).unwrap();
    let parsed = cocoon_ton::root::CocoonParams::from_cell(&cell).unwrap();
    assert!(parsed.is_test && parsed.proxy_code.is_some());
    // Owner key stays out of every answer.
    let key = std::fs::read_to_string(dir.path().join("root-owner.key")).unwrap();
    assert!(!info.to_string().contains(key.trim()));
}
