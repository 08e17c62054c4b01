//! `QuorumChain` over real HTTP toncenter clients, and the trust store of those clients.
//!
//! - Three toncenter fakes on 127.0.0.1 answer `getAddressInformation` in toncenter's shape;
//!   one lies about the account's data. Each endpoint gets its own API key. With quorum 2
//!   the lie is outvoted; the same client pointed at the liar alone believes it (the old
//!   single-endpoint behaviour); all three disagreeing is `NoQuorum`.
//! - An HTTPS toncenter fake with a private CA: refused with the WebPKI roots only, accepted
//!   with the CA in `ToncenterConfig::extra_roots`, and still refused when the CA is offered
//!   only through `SSL_CERT_FILE` (checked in a child process, which gets that environment).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use cocoon_testkit::tls::{pki, serve_https_json};
use cocoon_ton::chain::Chain;
use cocoon_ton::codec::encode_boc_base64;
use cocoon_ton::{CellBuilder, HashBytes, StdAddr};
use cocoon_ton::{QuorumChain, QuorumConfig};
use cocoon_ton::{Toncenter, ToncenterConfig};
use serde_json::{Value, json};

/// What one fake endpoint serves: the account data it claims, and the keys it was sent.
#[derive(Default)]
struct Fake {
    data: Mutex<u32>,
    keys: Mutex<Vec<String>>,
}

fn data_boc(v: u32) -> String {
    let mut b = CellBuilder::new();
    b.store_u32(v).unwrap();
    encode_boc_base64(&b.build().unwrap())
}

async fn address_information(
    State(f): State<Arc<Fake>>,
    h: HeaderMap,
    Query(_q): Query<HashMap<String, String>>,
) -> axum::Json<Value> {
    if let Some(k) = h.get("x-api-key") {
        f.keys.lock().unwrap().push(k.to_str().unwrap().to_owned());
    }
    let data = *f.data.lock().unwrap();
    axum::Json(json!({ "ok": true, "result": {
        "@type": "raw.fullAccountState",
        "balance": "5000000000",
        "code": data_boc(7),
        "data": data_boc(data),
        "last_transaction_id": { "@type": "internal.transactionId", "lt": "42", "hash": "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=" },
        "sync_utime": 1_755_281_542,
        "state": "active"
    }}))
}

async fn spawn_fake(data: u32) -> (String, Arc<Fake>) {
    let f = Arc::new(Fake::default());
    *f.data.lock().unwrap() = data;
    let app = Router::new()
        .route("/api/v2/getAddressInformation", get(address_information))
        .with_state(f.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}"), f)
}

fn endpoint(url: &str, key: &str) -> ToncenterConfig {
    let mut c = ToncenterConfig::new(url);
    c.api_key = Some(key.to_owned());
    c.max_attempts = 1;
    c.timeout = Duration::from_secs(5);
    c
}

fn fast(k: usize) -> QuorumConfig {
    let mut q = QuorumConfig::new(k);
    q.retry_delay = Duration::from_millis(10);
    q
}

#[tokio::test]
async fn a_lying_endpoint_is_outvoted_over_http() {
    let account = StdAddr::new(0, HashBytes([0x33; 32]));
    let (u1, f1) = spawn_fake(1).await;
    let (u2, f2) = spawn_fake(666).await;
    let (u3, f3) = spawn_fake(1).await;
    let q = QuorumChain::toncenter(
        vec![
            endpoint(&u1, "key-one"),
            endpoint(&u2, "key-two"),
            endpoint(&u3, "key-three"),
        ],
        fast(2),
    )
    .unwrap();
    let st = q.account_state(&account).await.unwrap();
    let honest = cocoon_ton::codec::decode_boc_base64(&data_boc(1)).unwrap();
    assert_eq!(st.data, Some(honest));
    assert_eq!(st.balance, 5_000_000_000);
    // Each endpoint was asked with its own key.
    for (f, k) in [(&f1, "key-one"), (&f2, "key-two"), (&f3, "key-three")] {
        let keys = f.keys.lock().unwrap().clone();
        assert!(keys.iter().all(|x| x == k) && !keys.is_empty(), "{keys:?}");
    }
    // The old behaviour: one endpoint, whatever it says is the state.
    let alone = Toncenter::new(endpoint(&u2, "key-two")).unwrap();
    let lie = cocoon_ton::codec::decode_boc_base64(&data_boc(666)).unwrap();
    assert_eq!(alone.account_state(&account).await.unwrap().data, Some(lie));
    // All three disagree: no answer, and the error names endpoints and hashes only.
    *f3.data.lock().unwrap() = 777;
    let e = q.account_state(&account).await.unwrap_err();
    assert!(e.is_disagreement(), "{e}");
    let text = e.to_string();
    assert!(
        text.starts_with("no quorum of 2 for account 0:3333"),
        "{text}"
    );
    assert!(text.contains(&format!("{u2} said answer ")), "{text}");
    assert!(!text.contains("key-"), "no keys in errors: {text}");
    assert!(
        !text.contains(&data_boc(666)),
        "no payloads in errors: {text}"
    );
    assert_eq!(q.quorum_disagreements(), 1);
}

/// An HTTPS server answering every request with a toncenter `getMasterchainInfo` result.
async fn spawn_https(leaf_der: &[u8], leaf_key: &[u8]) -> String {
    let body = json!({ "ok": true, "result": {
        "@type": "blocks.masterchainInfo",
        "last": { "@type": "ton.blockIdExt", "workchain": -1, "seqno": 4242 }
    }})
    .to_string();
    serve_https_json(leaf_der, leaf_key, body).await
}

fn https_client(url: &str, extra: Vec<rustls::pki_types::CertificateDer<'static>>) -> Toncenter {
    let mut c = ToncenterConfig::new(url);
    c.max_attempts = 1;
    c.timeout = Duration::from_secs(5);
    c.extra_roots = extra;
    Toncenter::new(c).unwrap()
}

#[tokio::test]
async fn a_private_ca_is_trusted_only_when_configured() {
    let p = pki();
    let url = spawn_https(&p.leaf_der, &p.leaf_key).await;
    let refused = https_client(&url, vec![]).masterchain_seqno().await;
    assert!(
        refused.as_ref().is_err_and(|e| e
            .to_string()
            .contains("invalid peer certificate: UnknownIssuer")),
        "WebPKI roots only must refuse a private CA: {refused:?}"
    );
    let ok = https_client(&url, vec![p.ca_der.clone()]);
    assert_eq!(ok.masterchain_seqno().await.unwrap(), 4242);
}

/// The environment variable other TLS stacks read is not a trust setting here: the child
/// process below gets `SSL_CERT_FILE` naming the CA and must still refuse the server.
#[test]
fn ssl_cert_file_from_the_environment_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &p.ca_pem).unwrap();
    let leaf = dir.path().join("leaf.der");
    let key = dir.path().join("leaf.key");
    std::fs::write(&leaf, p.leaf_der.as_ref()).unwrap();
    std::fs::write(&key, &p.leaf_key).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_with_ssl_cert_file",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("SSL_CERT_FILE", &ca)
        .env("COCOON_TEST_PKI_DIR", dir.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("child: refused with SSL_CERT_FILE set"),
        "the child must have run: {text}"
    );
}

/// The child half of the test above; it does nothing unless started by it.
#[test]
fn child_with_ssl_cert_file() {
    let Some(dir) = std::env::var_os("COCOON_TEST_PKI_DIR") else {
        return;
    };
    use rustls::pki_types::pem::PemObject;
    let dir = std::path::PathBuf::from(dir);
    let ca_pem = std::fs::read(std::env::var_os("SSL_CERT_FILE").unwrap()).unwrap();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(&ca_pem).unwrap();
    let leaf_der = std::fs::read(dir.join("leaf.der")).unwrap();
    let leaf_key = std::fs::read(dir.join("leaf.key")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = spawn_https(&leaf_der, &leaf_key).await;
        let r = https_client(&url, vec![]).masterchain_seqno().await;
        assert!(
            r.as_ref().is_err_and(|e| e
                .to_string()
                .contains("invalid peer certificate: UnknownIssuer")),
            "SSL_CERT_FILE must not be trusted: {r:?}"
        );
        // The same CA given explicitly is accepted (the server itself is fine).
        assert_eq!(
            https_client(&url, vec![ca])
                .masterchain_seqno()
                .await
                .unwrap(),
            4242
        );
        println!("child: refused with SSL_CERT_FILE set");
    });
}
