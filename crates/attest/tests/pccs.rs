//! Collateral from a PCCS over real loopback HTTP: the real collateral of
//! `testvectors/attest/` split into PCCS v4 endpoint responses (with the real
//! issuer-chain headers), cached on disk, refreshed with an injected clock, and a server
//! that fails or returns garbage.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cocoon_attest::pccs::{CollateralFetcher, PccsClient, quote_platform};
use cocoon_attest::{
    AttestError, CollateralStore, Evidence, PckCa, Policy, TcbStatus, TdxCollateral,
};

#[path = "../src/test_vectors.rs"]
mod test_vectors;
use test_vectors::vector;

/// Inside the COCOON collateral's window (2026-03-05).
const NOW: u64 = 1_772_707_833;
const FMSPC: [u8; 6] = [0x90, 0xc0, 0x6f, 0, 0, 0];

/// What the fake PCCS does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serve,
    Fail500,
    GarbageTcb,
    MissingHeader,
    GarbageCrl,
    WrongFmspc,
    BadTcbSignature,
    BadCrlSignature,
}

struct Pccs {
    /// `QuoteCollateralV3` JSON fields of the real collateral.
    c: serde_json::Value,
    mode: Mutex<Mode>,
    hits: AtomicUsize,
}

impl Pccs {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }
    fn field(&self, k: &str) -> String {
        self.c[k].as_str().unwrap().to_string()
    }
}

/// Intel percent-encodes everything but unreserved characters.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn with_header(name: &'static str, value: &str, body: impl IntoResponse) -> Response {
    let mut h = HeaderMap::new();
    h.insert(name, HeaderValue::from_str(&url_encode(value)).unwrap());
    (h, body).into_response()
}

async fn pckcrl(State(s): State<Arc<Pccs>>, Query(q): Query<HashMap<String, String>>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    if q.get("ca").map(String::as_str) != Some("platform")
        || q.get("encoding").map(String::as_str) != Some("der")
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    match s.mode() {
        Mode::Fail500 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Mode::GarbageCrl => with_header(
            "SGX-PCK-CRL-Issuer-Chain",
            &s.field("pck_crl_issuer_chain"),
            vec![0x30u8, 0x82, 0x01, 0x00, 0xde, 0xad],
        ),
        Mode::BadCrlSignature => {
            // The last byte is inside the signature's `s`: still a well-formed CRL.
            let mut crl = hex::decode(s.field("pck_crl")).unwrap();
            *crl.last_mut().unwrap() ^= 1;
            with_header(
                "SGX-PCK-CRL-Issuer-Chain",
                &s.field("pck_crl_issuer_chain"),
                crl,
            )
        }
        _ => with_header(
            "SGX-PCK-CRL-Issuer-Chain",
            &s.field("pck_crl_issuer_chain"),
            hex::decode(s.field("pck_crl")).unwrap(),
        ),
    }
}

async fn tcb(State(s): State<Arc<Pccs>>, Query(q): Query<HashMap<String, String>>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let tcb_info = s.field("tcb_info");
    let info: serde_json::Value = serde_json::from_str(&tcb_info).unwrap();
    if q.get("fmspc") != info["fmspc"].as_str().map(str::to_string).as_ref() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mut sig = s.field("tcb_info_signature");
    if s.mode() == Mode::BadTcbSignature {
        let flipped = if sig.starts_with('0') { "1" } else { "0" };
        sig.replace_range(0..1, flipped);
    }
    match s.mode() {
        Mode::GarbageTcb => with_header(
            "TCB-Info-Issuer-Chain",
            &s.field("tcb_info_issuer_chain"),
            "<html>proxy error</html>",
        ),
        Mode::MissingHeader => {
            format!(r#"{{"tcbInfo":{tcb_info},"signature":"{sig}"}}"#).into_response()
        }
        Mode::WrongFmspc => {
            let other = tcb_info.replace("\"90C06F000000\"", "\"B0C06F000000\"");
            with_header(
                "TCB-Info-Issuer-Chain",
                &s.field("tcb_info_issuer_chain"),
                format!(r#"{{"tcbInfo":{other},"signature":"{sig}"}}"#),
            )
        }
        _ => with_header(
            "TCB-Info-Issuer-Chain",
            &s.field("tcb_info_issuer_chain"),
            format!(r#"{{"tcbInfo":{tcb_info},"signature":"{sig}"}}"#),
        ),
    }
}

async fn qe_identity(State(s): State<Arc<Pccs>>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    with_header(
        "SGX-Enclave-Identity-Issuer-Chain",
        &s.field("qe_identity_issuer_chain"),
        format!(
            r#"{{"enclaveIdentity":{},"signature":"{}"}}"#,
            s.field("qe_identity"),
            s.field("qe_identity_signature")
        ),
    )
}

async fn rootcacrl(State(s): State<Arc<Pccs>>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    // A PCCS serves the root CA CRL as hex text.
    s.field("root_ca_crl").into_response()
}

/// Start a fake PCCS on 127.0.0.1 serving `collateral_file`; returns its base URL.
async fn start(collateral_file: &str) -> (String, Arc<Pccs>) {
    let pccs = Arc::new(Pccs {
        c: serde_json::from_slice(&vector(collateral_file)).unwrap(),
        mode: Mutex::new(Mode::Serve),
        hits: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .route("/sgx/certification/v4/pckcrl", get(pckcrl))
        .route("/sgx/certification/v4/rootcacrl", get(rootcacrl))
        .route("/tdx/certification/v4/tcb", get(tcb))
        .route("/tdx/certification/v4/qe/identity", get(qe_identity))
        .with_state(Arc::clone(&pccs));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), pccs)
}

fn client(url: &str) -> PccsClient {
    PccsClient::with_timeout(url, Duration::from_secs(5)).unwrap()
}

fn verify(c: &TdxCollateral, now: u64) -> Result<TcbStatus, AttestError> {
    let quote = vector("cocoon_quote.dat");
    let rd = cocoon_attest::tdx::parse_quote(&quote).unwrap().report_data;
    Policy::tdx_default()
        .evaluate(
            &Evidence::Tdx {
                quote: &quote,
                collateral: c,
            },
            &rd,
            now,
        )
        .map(|p| p.tcb_status())
}

#[tokio::test]
async fn fetched_collateral_equals_the_original_and_verifies() {
    let (url, _pccs) = start("cocoon_quote_collateral_90c06f.json").await;
    // The quote names its platform: FMSPC 90c06f000000, PCK Platform CA.
    assert_eq!(
        quote_platform(&vector("cocoon_quote.dat")).unwrap(),
        (FMSPC, PckCa::Platform)
    );
    // Base URL given with the API path, as PCCS users often do.
    let c = client(&format!("{url}/sgx/certification/v4"))
        .fetch(&FMSPC, PckCa::Platform)
        .await
        .expect("fetch");
    let original =
        TdxCollateral::from_json(&vector("cocoon_quote_collateral_90c06f.json")).unwrap();
    assert_eq!(c.to_json(), original.to_json());
    assert_eq!(c.pck_ca, PckCa::Platform);
    assert_eq!(verify(&c, NOW).unwrap(), TcbStatus::UpToDate);
    // The other FMSPC is unknown to this PCCS: a typed error naming FMSPC and item.
    match client(&url)
        .fetch(&[0xb0, 0xc0, 0x6f, 0, 0, 0], PckCa::Platform)
        .await
    {
        Err(AttestError::CollateralFetch {
            fmspc,
            item,
            reason,
            ..
        }) => {
            assert_eq!(fmspc, "B0C06F000000");
            assert_eq!(item, "TCB info");
            assert!(reason.contains("404"), "{reason}");
        }
        r => panic!("expected CollateralFetch, got {r:?}"),
    }
    // The processor CA's CRL is not served here.
    assert!(matches!(
        client(&url).fetch(&FMSPC, PckCa::Processor).await,
        Err(AttestError::CollateralFetch { item, .. }) if item == "PCK CRL"
    ));
}

/// The other real collateral (FMSPC b0c06f, 2025) through the same path: its signatures
/// check out and it verifies the sample quote.
#[tokio::test]
async fn sample_collateral_fetched_and_verifies() {
    let (url, _pccs) = start("tdx_quote_collateral.json").await;
    let quote = vector("tdx_quote");
    let (fmspc, ca) = quote_platform(&quote).unwrap();
    assert_eq!(fmspc, [0xb0, 0xc0, 0x6f, 0, 0, 0]);
    let c = client(&url).fetch(&fmspc, ca).await.expect("fetch");
    let original = TdxCollateral::from_json(&vector("tdx_quote_collateral.json")).unwrap();
    assert_eq!(c.to_json(), original.to_json());
    let rd = cocoon_attest::tdx::parse_quote(&quote).unwrap().report_data;
    let peer = Policy::tdx_default()
        .evaluate(
            &Evidence::Tdx {
                quote: &quote,
                collateral: &c,
            },
            &rd,
            1_751_630_400,
        )
        .expect("sample quote verifies");
    assert_eq!(peer.tcb_status(), TcbStatus::UpToDate);
}

#[tokio::test]
async fn bad_responses_are_typed_errors() {
    let (url, pccs) = start("cocoon_quote_collateral_90c06f.json").await;
    let cases = [
        (Mode::Fail500, "PCK CRL", "500"),
        (Mode::GarbageCrl, "PCK CRL", "bad CRL"),
        (Mode::GarbageTcb, "TCB info", "not a JSON object"),
        (Mode::MissingHeader, "TCB info", "missing header"),
        (Mode::WrongFmspc, "TCB info", "B0C06F000000"),
        (
            Mode::BadTcbSignature,
            "TCB info",
            "signature does not verify",
        ),
        (
            Mode::BadCrlSignature,
            "PCK CRL",
            "CRL signature does not verify",
        ),
    ];
    for (mode, want_item, want_reason) in cases {
        *pccs.mode.lock().unwrap() = mode;
        match client(&url).fetch(&FMSPC, PckCa::Platform).await {
            Err(AttestError::CollateralFetch {
                fmspc,
                item,
                reason,
                ..
            }) => {
                assert_eq!(fmspc, "90C06F000000", "{mode:?}");
                assert_eq!(item, want_item, "{mode:?}: {reason}");
                assert!(reason.contains(want_reason), "{mode:?}: {reason}");
            }
            r => panic!("{mode:?}: expected CollateralFetch, got {r:?}"),
        }
    }
    // Collateral under a root that is not pinned is refused.
    *pccs.mode.lock().unwrap() = Mode::Serve;
    match client(&url)
        .with_root_key_ids(vec![[0x42; 48]])
        .fetch(&FMSPC, PckCa::Platform)
        .await
    {
        Err(AttestError::CollateralFetch { reason, .. }) => {
            assert!(reason.contains("not pinned"), "{reason}")
        }
        r => panic!("expected CollateralFetch, got {r:?}"),
    }
    client(&url)
        .fetch(&FMSPC, PckCa::Platform)
        .await
        .expect("pinned Intel root");
    // Nothing listening: a connection error, still typed.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    assert!(matches!(
        client(&format!("http://{dead}"))
            .fetch(&FMSPC, PckCa::Platform)
            .await,
        Err(AttestError::CollateralFetch { .. })
    ));
}

#[tokio::test]
async fn fetcher_caches_refreshes_ahead_and_survives_failures() {
    let (url, pccs) = start("cocoon_quote_collateral_90c06f.json").await;
    let dir = tempfile::tempdir().unwrap();
    let margin = 2 * 86_400;
    let fetcher = CollateralFetcher::new(client(&url), CollateralStore::new(dir.path()))
        .with_refresh_margin(margin)
        .with_retry_interval(60);
    let quote = vector("cocoon_quote.dat");

    // Nothing cached: a clear error naming the FMSPC; the request marks it due.
    match fetcher.collateral_for_quote(&quote, NOW) {
        Err(AttestError::MissingCollateral { what }) => {
            assert!(what.contains("90C06F000000"), "{what}");
            assert!(what.contains(&url), "{what}");
        }
        r => panic!("expected MissingCollateral, got {r:?}"),
    }
    assert_eq!(fetcher.due(NOW), vec![(FMSPC, PckCa::Platform)]);
    let out = fetcher.refresh_due(NOW).await;
    assert_eq!(out.len(), 1);
    let expires = *out[0].result.as_ref().expect("fetched");
    let cache_file = dir.path().join("90c06f000000.json");
    let cached = std::fs::read(&cache_file).expect("written to the cache dir");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() == 1,
        "no temporary files left"
    );
    let c = fetcher.collateral_for_quote(&quote, NOW).expect("served");
    assert_eq!(c.expires_at(), expires);
    assert_eq!(verify(&c, NOW).unwrap(), TcbStatus::UpToDate);

    // Not yet due: no request at all.
    let hits = pccs.hits.load(Ordering::SeqCst);
    let before_margin = expires - margin - 1;
    assert!(fetcher.due(before_margin).is_empty());
    assert!(fetcher.refresh_due(before_margin).await.is_empty());
    assert_eq!(pccs.hits.load(Ordering::SeqCst), hits);

    // Inside the margin, the PCCS fails or returns garbage: the refresh is tried and
    // fails, the cache file is untouched, and the old collateral is served until expiry.
    let in_margin = expires - margin / 2;
    let mut t = in_margin;
    for mode in [
        Mode::Fail500,
        Mode::GarbageTcb,
        Mode::WrongFmspc,
        Mode::BadTcbSignature,
    ] {
        *pccs.mode.lock().unwrap() = mode;
        t += 61;
        assert_eq!(fetcher.due(t), vec![(FMSPC, PckCa::Platform)]);
        let out = fetcher.refresh_due(t).await;
        assert!(
            matches!(out[0].result, Err(AttestError::CollateralFetch { .. })),
            "{mode:?}: {out:?}"
        );
        assert!(fetcher.last_error(&FMSPC).is_some());
        assert_eq!(std::fs::read(&cache_file).unwrap(), cached, "{mode:?}");
        let still = fetcher.collateral(&FMSPC, PckCa::Platform, t);
        assert_eq!(still.expect("old collateral served").to_json(), c.to_json());
        // Not asked again within the retry interval.
        assert!(fetcher.due(t + 59).is_empty());
    }
    assert!(pccs.hits.load(Ordering::SeqCst) > hits);

    // Past expiry with no successful refresh: stale, naming the FMSPC and the item.
    match fetcher.collateral(&FMSPC, PckCa::Platform, expires + 1) {
        Err(AttestError::CollateralExpired { what, .. }) => {
            assert!(what.contains("90C06F000000"), "{what}");
            assert!(what.contains("PCK CRL"), "{what}");
        }
        r => panic!("expected CollateralExpired, got {r:?}"),
    }
    // The PCCS serves collateral that is itself expired at that time: refused.
    *pccs.mode.lock().unwrap() = Mode::Serve;
    let out = fetcher.refresh_due(expires + 1).await;
    assert!(
        matches!(out[0].result, Err(AttestError::CollateralExpired { .. })),
        "{out:?}"
    );

    // The PCCS recovers: the refresh inside the margin succeeds and clears the error.
    let out = fetcher.refresh_due(t + 61).await;
    assert!(out[0].result.is_ok(), "{out:?}");
    assert!(fetcher.last_error(&FMSPC).is_none());

    // A new fetcher (e.g. after a restart) serves from the cache dir with the PCCS gone.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let offline = CollateralFetcher::new(
        client(&format!("http://{dead}")),
        CollateralStore::new(dir.path()),
    );
    let c2 = offline
        .collateral_for_quote(&quote, NOW)
        .expect("from cache");
    assert_eq!(verify(&c2, NOW).unwrap(), TcbStatus::UpToDate);
    // A quote from a Processor-CA platform with the same FMSPC cannot use it: missing,
    // and due for a fetch.
    assert!(matches!(
        offline.collateral(&FMSPC, PckCa::Processor, NOW),
        Err(AttestError::MissingCollateral { .. })
    ));
    assert_eq!(offline.due(NOW), vec![(FMSPC, PckCa::Processor)]);
}

#[tokio::test]
async fn garbage_in_cache_dir_is_refetched() {
    let (url, _pccs) = start("cocoon_quote_collateral_90c06f.json").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("90c06f000000.json"), b"{not json").unwrap();
    let fetcher = CollateralFetcher::new(client(&url), CollateralStore::new(dir.path()));
    // The PCK CA of a broken file is unknown until a quote names it.
    assert!(fetcher.due(NOW).is_empty());
    match fetcher.collateral(&FMSPC, PckCa::Platform, NOW) {
        Err(AttestError::MissingCollateral { what }) => {
            assert!(what.contains("last fetch failed"), "{what}")
        }
        r => panic!("expected MissingCollateral, got {r:?}"),
    }
    assert_eq!(fetcher.refresh_due(NOW).await.len(), 1);
    fetcher
        .collateral(&FMSPC, PckCa::Platform, NOW)
        .expect("refetched");
    CollateralStore::new(dir.path())
        .load(&FMSPC, NOW)
        .expect("cache file replaced");
}

/// The background refresher fetches a collateral as soon as a verification asks for it,
/// and refreshes ahead of expiry as the (injected) clock advances.
#[tokio::test]
async fn background_refresher() {
    let (url, pccs) = start("cocoon_quote_collateral_90c06f.json").await;
    let dir = tempfile::tempdir().unwrap();
    let fetcher = Arc::new(
        CollateralFetcher::new(client(&url), CollateralStore::new(dir.path()))
            .with_refresh_margin(86_400),
    );
    let now = Arc::new(AtomicU64::new(NOW));
    let clock = {
        let now = Arc::clone(&now);
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    // A long interval: progress below comes from wake-ups, not from ticks.
    let task = fetcher.spawn_refresher(clock, Duration::from_secs(3600));
    assert!(fetcher.collateral(&FMSPC, PckCa::Platform, NOW).is_err());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let c = loop {
        if let Ok(c) = fetcher.collateral(&FMSPC, PckCa::Platform, NOW) {
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline, "never fetched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let hits = pccs.hits.load(Ordering::SeqCst);
    assert_eq!(hits, 4, "one request per item");

    // The clock moves into the margin: the next lookup wakes the refresher, which
    // fetches again (same collateral: the fake PCCS has nothing newer).
    now.store(c.expires_at() - 3600, Ordering::SeqCst);
    fetcher
        .collateral(&FMSPC, PckCa::Platform, c.expires_at() - 3600)
        .expect("still valid");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pccs.hits.load(Ordering::SeqCst) < hits + 4 {
        assert!(tokio::time::Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
}
