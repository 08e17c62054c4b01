//! KDS client, cache and revocation, driven through a local KDS on 127.0.0.1 that serves
//! the real Milan/Turin VCEKs and chains from `testvectors/attest/sev` and CRLs made here.
//! AMD's ARK private key is not available, so CRL tests sign with a test ARK (same name as
//! AMD's Milan ARK, P-384 key) injected through [`KdsRoots::with_ark`], which exists only
//! under `cfg(test)`; report and chain checks still use AMD's pinned roots.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, DnValue, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};

use super::*;
use crate::sev::{SevMinTcb, SevPolicy};
use crate::{Evidence, Policy};

/// 2026-03-05: the Milan VCEK (2023..2030), the chains and the Turin VCEK are valid.
const NOW: u64 = 1_772_707_833;
const DAY: u64 = 86_400;
/// Serial of AMD's Milan ASK (`SEV-Milan`); every AMD VCEK has serial 0.
const MILAN_ASK_SERIAL: [u8; 3] = [0x01, 0x00, 0x01];

/// The bytes of `testvectors/attest/sev/{name}`.
fn vector(name: &str) -> Vec<u8> {
    crate::test_vectors::vector(&format!("sev/{name}"))
}

fn milan_report() -> Vec<u8> {
    sev::decode_report_hex(&vector("report_milan.hex")).unwrap()
}

/// A KDS on 127.0.0.1: exact `path?query` → (status, body); counts and logs requests.
#[derive(Default)]
struct LocalKds {
    routes: Mutex<HashMap<String, (u16, Vec<u8>)>>,
    hits: AtomicUsize,
    log: Mutex<Vec<String>>,
}

impl LocalKds {
    fn set(&self, path: &str, status: u16, body: Vec<u8>) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_string(), (status, body));
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

async fn handle(State(kds): State<Arc<LocalKds>>, uri: Uri) -> (StatusCode, Vec<u8>) {
    let key = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    kds.hits.fetch_add(1, Ordering::SeqCst);
    kds.log.lock().unwrap().push(key.clone());
    let route = kds.routes.lock().unwrap().get(&key).cloned();
    match route {
        Some((status, body)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        ),
        None => (StatusCode::NOT_FOUND, b"not found".to_vec()),
    }
}

/// Serves `kds` on an ephemeral 127.0.0.1 port; returns its base URL.
async fn serve(kds: Arc<LocalKds>) -> String {
    let app = Router::new().fallback(handle).with_state(kds);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// The real Milan VCEK, cert_chain and VCEK URL path on the local KDS.
fn serve_real_milan(kds: &LocalKds) -> VcekKey {
    let key = VcekKey::for_report(SevGeneration::Milan, &milan_report()).unwrap();
    let path = format!(
        "/vcek/v1/Milan/{}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115",
        hex::encode(&key.hwid)
    );
    kds.set(&path, 200, vector("vcek_milan.der"));
    kds.set("/vcek/v1/Milan/cert_chain", 200, vector("cert_chain_milan"));
    key
}

/// A test ARK with exactly the subject of AMD's Milan ARK and a P-384 key.
struct TestArk {
    issuer: Issuer<'static, KeyPair>,
    der: Vec<u8>,
}

fn test_ark() -> TestArk {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationalUnitName, "Engineering");
    dn.push(
        DnType::CountryName,
        DnValue::PrintableString("US".try_into().unwrap()),
    );
    dn.push(DnType::LocalityName, "Santa Clara");
    dn.push(DnType::StateOrProvinceName, "CA");
    dn.push(DnType::OrganizationName, "Advanced Micro Devices");
    dn.push(DnType::CommonName, "ARK-Milan");
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let der = params.self_signed(&key).unwrap().der().to_vec();
    // The CRL must be issued by the ASK's issuer: the name must match AMD's byte for byte.
    let amd = sev::builtin_ark_der(SevGeneration::Milan);
    let (amd, ours) = (x509("AMD", &amd).unwrap(), x509("test", &der).unwrap());
    assert_eq!(ours.subject().as_raw(), amd.subject().as_raw());
    TestArk {
        issuer: Issuer::new(params, key),
        der,
    }
}

fn ts(t: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t as i64).unwrap()
}

/// A CRL signed by `ark`, valid `this_update..next_update`, listing `revoked` serials.
fn make_crl(
    ark: &TestArk,
    this_update: u64,
    next_update: u64,
    number: u64,
    revoked: &[&[u8]],
) -> Vec<u8> {
    CertificateRevocationListParams {
        this_update: ts(this_update),
        next_update: ts(next_update),
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from_slice(s),
                revocation_time: ts(this_update),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ark.issuer)
    .unwrap()
    .der()
    .to_vec()
}

fn test_roots(ark: &TestArk) -> KdsRoots {
    KdsRoots::amd().with_ark(SevGeneration::Milan, ark.der.clone())
}

/// The default SEV policy relaxed only where the 2022 sample report needs it (its TCB is
/// far below AMD's current floors, see `sev::tests::default_floor_refuses_the_2022_sample`)
/// and reading CRLs from `source`.
fn sample_policy(source: Option<Arc<dyn SevCollateralSource>>) -> Policy {
    let info = sev::parse_report(&milan_report()).unwrap();
    Policy {
        sev: SevPolicy {
            min_tcb: SevMinTcb::NONE,
            allow_debug: info.debug_allowed,
            allow_migration_agent: info.migrate_ma_allowed,
            require_vmpl0: info.vmpl == 0,
            ..SevPolicy::default()
        },
        sev_collateral: source.map(SevCollateral::new),
        ..Policy::sev_default()
    }
}

fn evaluate(policy: &Policy, now: u64) -> Result<crate::VerifiedPeer, AttestError> {
    let report = milan_report();
    let (vcek, chain) = (vector("vcek_milan.der"), vector("cert_chain_milan"));
    let info = sev::parse_report(&report).unwrap();
    policy.evaluate(
        &Evidence::SevSnp {
            report: &report,
            vcek_der: &vcek,
            chain_pem: &chain,
        },
        &info.report_data,
        now,
    )
}

fn fetcher(url: &str, store: VcekStore) -> Arc<KdsFetcher> {
    Arc::new(KdsFetcher::new(KdsClient::new(url).unwrap(), store, NOW))
}

/// A fetcher of `url` with its store in `dir` (rooted in `ark`), fetching the Milan CRL.
fn milan_fetcher(url: &str, dir: &std::path::Path, ark: &TestArk) -> KdsFetcher {
    KdsFetcher::new(
        KdsClient::new(url).unwrap(),
        VcekStore::with_roots(dir, test_roots(ark)),
        NOW,
    )
    .with_products(&[SevGeneration::Milan])
}

/// The local KDS answers the Milan CRL request with `body`.
fn set_milan_crl(kds: &LocalKds, body: Vec<u8>) {
    kds.set("/vcek/v1/Milan/crl", 200, body);
}

/// `policy` without its CRL requirement.
fn crl_optional(policy: &Policy) -> Policy {
    Policy {
        sev: SevPolicy {
            require_crl: false,
            ..policy.sev
        },
        ..policy.clone()
    }
}

#[test]
fn ring_checks_amd_rsa_pss_signatures_as_the_crl_path_does() {
    // AMD signs CRLs like certificates: RSASSA-PSS, SHA-384, with the ARK. Check the real
    // ASK's signature by the real ARK through the same function the CRL check uses.
    let ark_der = sev::builtin_ark_der(SevGeneration::Milan);
    let (_, ask_der, _) = sev::split_chain(&vector("cert_chain_milan")).unwrap();
    let ark = x509("ARK", &ark_der).unwrap();
    let ask = x509("ASK", &ask_der).unwrap();
    let alg = ask.signature_algorithm.algorithm.to_id_string();
    assert_eq!(alg, OID_RSASSA_PSS);
    let tbs = ask.tbs_certificate.as_ref();
    let sig = ask.signature_value.data.to_vec();
    assert!(verify_signed(&alg, &ark, tbs, &sig));
    let mut bad = sig.clone();
    bad[10] ^= 1;
    assert!(!verify_signed(&alg, &ark, tbs, &bad));
    // Any other algorithm is refused, whatever the signature.
    assert!(!verify_signed("1.2.840.113549.1.1.11", &ark, tbs, &sig));
    // The Turin ARK did not sign the Milan ASK.
    let turin = sev::builtin_ark_der(SevGeneration::Turin);
    assert!(!verify_signed(
        &alg,
        &x509("ARK", &turin).unwrap(),
        tbs,
        &sig
    ));
}

#[test]
fn urls_follow_the_kds_api() {
    let c = KdsClient::new("https://kds.example/vcek/v1/").unwrap();
    assert_eq!(c.base_url(), "https://kds.example");
    assert_eq!(
        c.crl_url(SevGeneration::Genoa),
        "https://kds.example/vcek/v1/Genoa/crl"
    );
    assert_eq!(
        c.cert_chain_url(SevGeneration::Turin),
        "https://kds.example/vcek/v1/Turin/cert_chain"
    );
    let turin = VcekKey {
        product: SevGeneration::Turin,
        hwid: vec![0xab; 8],
        tcb: SevTcb {
            fmc: 1,
            bootloader: 3,
            tee: 2,
            snp: 5,
            microcode: 97,
        },
    };
    assert_eq!(
        c.vcek_url(&turin),
        "https://kds.example/vcek/v1/Turin/abababababababab?fmcSPL=01&blSPL=03&teeSPL=02&snpSPL=05&ucodeSPL=97"
    );
    assert!(matches!(
        KdsClient::new("ftp://x"),
        Err(AttestError::KdsConfig(_))
    ));
    assert!(matches!(
        KdsClient::new("not a url"),
        Err(AttestError::KdsConfig(_))
    ));
}

#[tokio::test]
async fn real_milan_vcek_fetched_cached_and_verified() {
    let kds = Arc::new(LocalKds::default());
    let key = serve_real_milan(&kds);
    let url = serve(Arc::clone(&kds)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(&url, VcekStore::new(dir.path()));

    // A lookup never fetches: a miss is a typed error and a request to the refresher.
    let err = f.vcek(&key, NOW).unwrap_err();
    assert!(
        matches!(&err, AttestError::MissingCollateral { what } if what.contains("Milan VCEK")),
        "{err}"
    );
    assert_eq!(kds.hits(), 0);

    let out = f.refresh_due(NOW).await;
    assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
    assert_eq!(
        out.iter().map(|o| o.item.clone()).collect::<Vec<_>>(),
        vec![
            KdsItem::CertChain(SevGeneration::Milan),
            KdsItem::Vcek(key.clone())
        ]
    );
    // The URL carries the report's chip id and TCB in AMD's format.
    assert!(
        kds.log()
            .iter()
            .any(|l| l.ends_with("?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115")),
        "{:?}",
        kds.log()
    );
    let v = f.vcek(&key, NOW).unwrap();
    assert_eq!(v.der(), &vector("vcek_milan.der")[..]);
    let chain = f.chain(SevGeneration::Milan, NOW).unwrap();

    // The cached VCEK and chain verify the real report against AMD's pinned roots.
    let lenient = SevPolicy {
        min_tcb: SevMinTcb::NONE,
        ..SevPolicy::default()
    };
    let info =
        sev::verify_report_at(&milan_report(), v.der(), chain.pem(), &lenient, NOW as i64).unwrap();
    assert_eq!(info.reported_tcb, key.tcb);

    // Written to the directory; a new fetcher (no server needed) loads and re-verifies them.
    let store = VcekStore::new(dir.path());
    assert!(store.vcek_path(&key).exists() && store.chain_path(SevGeneration::Milan).exists());
    let hits = kds.hits();
    let again = fetcher("http://127.0.0.1:9", VcekStore::new(dir.path()));
    assert_eq!(again.vcek(&key, NOW).unwrap().der(), v.der());
    assert_eq!(kds.hits(), hits);
    // Nothing is due: the retry interval holds back a second fetch, and the data is fresh.
    assert!(f.due(NOW + 1).is_empty());
}

#[tokio::test]
async fn real_turin_vcek_fetched_with_fmc() {
    // The Turin VCEK's own extensions name its chip (8-byte hwID) and TCB (with FMC).
    let der = vector("vcek_turin.der");
    let cert = x509("VCEK", &der).unwrap();
    let fields = sev::vcek_fields(&cert).unwrap();
    assert_eq!(fields.hwid.len(), 8);
    let key = VcekKey {
        product: SevGeneration::Turin,
        hwid: fields.hwid.clone(),
        tcb: fields.tcb,
    };
    let kds = Arc::new(LocalKds::default());
    let path = format!(
        "/vcek/v1/Turin/{}?fmcSPL={:02}&blSPL={:02}&teeSPL={:02}&snpSPL={:02}&ucodeSPL={:02}",
        hex::encode(&key.hwid),
        key.tcb.fmc,
        key.tcb.bootloader,
        key.tcb.tee,
        key.tcb.snp,
        key.tcb.microcode
    );
    kds.set(&path, 200, der.clone());
    kds.set("/vcek/v1/Turin/cert_chain", 200, vector("cert_chain_turin"));
    let url = serve(Arc::clone(&kds)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(&url, VcekStore::new(dir.path()));
    f.refresh_vcek(&key, NOW).await.unwrap();
    assert_eq!(f.vcek(&key, NOW).unwrap().der(), &der[..]);

    // A KDS answering a Milan request with the Turin VCEK is refused: the Milan ASK did not
    // sign it.
    let milan = serve_real_milan(&kds);
    let milan_path = kds
        .routes
        .lock()
        .unwrap()
        .keys()
        .find(|k| k.starts_with("/vcek/v1/Milan/") && k.contains('?'))
        .cloned()
        .unwrap();
    kds.set(&milan_path, 200, der.clone());
    let err = f.refresh_vcek(&milan, NOW).await.unwrap_err();
    assert!(
        matches!(err, AttestError::KdsFetch { ref item, .. } if item == "VCEK"),
        "{err}"
    );
    assert!(!VcekStore::new(dir.path()).vcek_path(&milan).exists());
}

#[tokio::test]
async fn tampered_cache_files_are_refused() {
    let kds = Arc::new(LocalKds::default());
    let key = serve_real_milan(&kds);
    let ark = test_ark();
    set_milan_crl(&kds, make_crl(&ark, NOW - DAY, NOW + 30 * DAY, 1, &[]));
    let url = serve(Arc::clone(&kds)).await;
    let dir = tempfile::tempdir().unwrap();
    // Chain and VCEK checked against AMD's roots.
    let f = fetcher(&url, VcekStore::new(dir.path()));
    f.refresh_vcek(&key, NOW).await.unwrap();
    let store = VcekStore::new(dir.path());
    store.load_vcek(&key, NOW).unwrap();

    // One flipped byte in the cached VCEK (inside the ASK's signature): refused.
    let path = store.vcek_path(&key);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 5] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let err = store.load_vcek(&key, NOW).unwrap_err();
    assert!(
        matches!(err, AttestError::InvalidCollateral { .. }),
        "{err}"
    );
    // A fetcher starting on that directory ignores it: the lookup misses, nothing is
    // served from the bad file.
    let fresh = fetcher("http://127.0.0.1:9", VcekStore::new(dir.path()));
    assert!(matches!(
        fresh.vcek(&key, NOW),
        Err(AttestError::MissingCollateral { .. })
    ));

    // A genuine VCEK filed under another chip's or TCB's name: refused.
    std::fs::write(&path, &good).unwrap();
    let other = VcekKey {
        tcb: SevTcb {
            microcode: 219,
            ..key.tcb
        },
        ..key.clone()
    };
    std::fs::copy(&path, store.vcek_path(&other)).unwrap();
    let err = store.load_vcek(&other, NOW).unwrap_err();
    assert!(
        matches!(&err, AttestError::InvalidCollateral { reason, .. } if reason.contains("requested")),
        "{err}"
    );
    // The Turin VCEK in the Milan slot: not signed by the Milan ASK.
    std::fs::write(&path, vector("vcek_turin.der")).unwrap();
    assert!(matches!(
        store.load_vcek(&key, NOW),
        Err(AttestError::InvalidCollateral { .. })
    ));

    // A chain whose ARK is replaced by another (here Turin's): refused, and with it every
    // VCEK that needs it.
    std::fs::write(&path, &good).unwrap();
    let chain_path = store.chain_path(SevGeneration::Milan);
    std::fs::write(&chain_path, vector("cert_chain_turin")).unwrap();
    assert!(matches!(
        store.load_chain(SevGeneration::Milan, NOW),
        Err(AttestError::InvalidCollateral { .. })
    ));
    assert!(matches!(
        store.load_vcek(&key, NOW),
        Err(AttestError::InvalidCollateral { .. })
    ));

    // A cached CRL with one byte changed: its ARK signature fails.
    let crl_store = VcekStore::with_roots(dir.path(), test_roots(&ark));
    let f = fetcher(&url, crl_store.clone());
    f.refresh_crl(SevGeneration::Milan, NOW).await.unwrap();
    crl_store.load_crl(SevGeneration::Milan).unwrap();
    let crl_path = crl_store.crl_path(SevGeneration::Milan);
    let mut crl = std::fs::read(&crl_path).unwrap();
    let n = crl.len();
    crl[n - 3] ^= 1;
    std::fs::write(&crl_path, &crl).unwrap();
    let err = crl_store.load_crl(SevGeneration::Milan).unwrap_err();
    assert!(
        matches!(err, AttestError::InvalidCollateral { .. }),
        "{err}"
    );
    // ... and the directory as a handshake source refuses it too, failing closed.
    let policy = sample_policy(Some(Arc::new(crl_store)));
    assert!(matches!(
        evaluate(&policy, NOW),
        Err(AttestError::InvalidCollateral { .. })
    ));
}

#[tokio::test]
async fn crl_with_a_bad_signature_is_refused_and_the_good_one_kept() {
    let ark = test_ark();
    let kds = Arc::new(LocalKds::default());
    let good = make_crl(&ark, NOW - DAY, NOW + 30 * DAY, 1, &[]);
    set_milan_crl(&kds, good.clone());
    let url = serve(Arc::clone(&kds)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = VcekStore::with_roots(dir.path(), test_roots(&ark));
    let f = fetcher(&url, store.clone());
    f.refresh_crl(SevGeneration::Milan, NOW).await.unwrap();

    // Same issuer name, newer, but signed by another key (a forged CRL that would drop a
    // revocation): refused, nothing written, the verified CRL stays in use.
    let forger = test_ark();
    set_milan_crl(&kds, make_crl(&forger, NOW, NOW + 30 * DAY, 2, &[]));
    let err = f.refresh_crl(SevGeneration::Milan, NOW).await.unwrap_err();
    assert!(
        matches!(&err, AttestError::KdsFetch { item, reason, .. } if item == "CRL" && reason.contains("signature")),
        "{err}"
    );
    assert_eq!(
        std::fs::read(store.crl_path(SevGeneration::Milan)).unwrap(),
        good
    );
    assert_eq!(f.crl(SevGeneration::Milan, NOW).unwrap().der(), &good[..]);
    assert!(f.last_error(&KdsItem::Crl(SevGeneration::Milan)).is_some());

    // AMD's real Milan ARK did not sign a test CRL either: under AMD's roots it is refused.
    let amd = VcekStore::new(dir.path());
    assert!(matches!(
        amd.load_crl(SevGeneration::Milan),
        Err(AttestError::InvalidCollateral { .. })
    ));
    // Garbage and an oversized body are refused with typed errors.
    set_milan_crl(&kds, b"<html>busy</html>".to_vec());
    assert!(matches!(
        f.refresh_crl(SevGeneration::Milan, NOW).await,
        Err(AttestError::KdsFetch { .. })
    ));
    set_milan_crl(&kds, vec![0x30; MAX_RESPONSE_LEN + 1]);
    let err = f.refresh_crl(SevGeneration::Milan, NOW).await.unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
    assert_eq!(f.crl(SevGeneration::Milan, NOW).unwrap().der(), &good[..]);
}

#[tokio::test]
async fn older_crl_is_a_rollback_and_refused() {
    let ark = test_ark();
    let kds = Arc::new(LocalKds::default());
    let current = make_crl(&ark, NOW - DAY, NOW + 30 * DAY, 5, &[&MILAN_ASK_SERIAL]);
    set_milan_crl(&kds, current.clone());
    let url = serve(Arc::clone(&kds)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(&url, VcekStore::with_roots(dir.path(), test_roots(&ark)));
    f.refresh_crl(SevGeneration::Milan, NOW).await.unwrap();
    // An older, genuinely signed CRL that does not list the ASK yet.
    set_milan_crl(&kds, make_crl(&ark, NOW - 10 * DAY, NOW + 30 * DAY, 4, &[]));
    let err = f.refresh_crl(SevGeneration::Milan, NOW).await.unwrap_err();
    assert!(err.to_string().contains("older"), "{err}");
    assert_eq!(
        f.crl(SevGeneration::Milan, NOW).unwrap().der(),
        &current[..]
    );
}

#[tokio::test]
async fn revoked_ask_and_vcek_are_refused() {
    let ark = test_ark();
    let kds = Arc::new(LocalKds::default());
    set_milan_crl(
        &kds,
        make_crl(&ark, NOW - DAY, NOW + 30 * DAY, 1, &[&[0x42]]),
    );
    let url = serve(Arc::clone(&kds)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(&url, VcekStore::with_roots(dir.path(), test_roots(&ark)));
    f.refresh_crl(SevGeneration::Milan, NOW).await.unwrap();
    let policy = sample_policy(Some(f.clone()));
    // Honest use: a fresh CRL that lists neither: accepted.
    let peer = evaluate(&policy, NOW).expect("not revoked");
    assert_eq!(peer.valid_until(), NOW + policy.max_validity_secs);

    // AMD revokes the Milan ASK: the real report under it is refused.
    set_milan_crl(
        &kds,
        make_crl(&ark, NOW, NOW + 30 * DAY, 2, &[&[0x42], &MILAN_ASK_SERIAL]),
    );
    f.refresh_crl(SevGeneration::Milan, NOW).await.unwrap();
    let err = evaluate(&policy, NOW).unwrap_err();
    assert!(
        matches!(
            &err,
            AttestError::Sev(SevError::Revoked {
                which: "ASK",
                product: SevGeneration::Milan,
                serial
            }) if serial == "010001"
        ),
        "{err}"
    );
    // Revocation is refused even by a policy that does not require a CRL.
    let optional = crl_optional(&policy);
    assert!(matches!(
        evaluate(&optional, NOW),
        Err(AttestError::Sev(SevError::Revoked { which: "ASK", .. }))
    ));

    // A listed VCEK serial (AMD VCEKs all have serial 0): refused.
    set_milan_crl(&kds, make_crl(&ark, NOW + 1, NOW + 30 * DAY, 3, &[&[0x00]]));
    f.refresh_crl(SevGeneration::Milan, NOW + 1).await.unwrap();
    let err = evaluate(&policy, NOW + 1).unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::Sev(SevError::Revoked { which: "VCEK", .. })
        ),
        "{err}"
    );
}

#[test]
fn crl_must_come_from_the_asks_issuer_and_product() {
    // A CRL for Genoa (the Genoa ARK slot holds the test ARK) is not applied to Milan.
    let ark = test_ark();
    let roots = KdsRoots::amd().with_ark(SevGeneration::Genoa, ark.der.clone());
    let crl = SevCrl::verify(
        SevGeneration::Genoa,
        &make_crl(&ark, NOW - DAY, NOW + DAY, 1, &[]),
        &roots,
    )
    .unwrap();
    let policy = sample_policy(Some(Arc::new(crl.clone())));
    assert!(matches!(
        evaluate(&policy, NOW),
        Err(AttestError::MissingCollateral { .. })
    ));
    let v = sev::verify_report_full_at(
        &milan_report(),
        &vector("vcek_milan.der"),
        &vector("cert_chain_milan"),
        &policy.sev,
        NOW as i64,
    )
    .unwrap();
    assert!(matches!(
        check_revocation(&v, &crl, &policy.sev, NOW),
        Err(SevError::CrlProductMismatch { .. })
    ));
    // A Milan CRL whose issuer is not the ASK's issuer.
    let mut other = v.clone();
    other.ask_issuer = b"someone else".to_vec();
    let milan = SevCrl::verify(
        SevGeneration::Milan,
        &make_crl(&ark, NOW - DAY, NOW + DAY, 1, &[]),
        &test_roots(&ark),
    )
    .unwrap();
    check_revocation(&v, &milan, &policy.sev, NOW).unwrap();
    assert!(matches!(
        check_revocation(&other, &milan, &policy.sev, NOW),
        Err(SevError::CrlIssuerMismatch { .. })
    ));
}

#[test]
fn stale_crl_fails_closed_when_required() {
    let ark = test_ark();
    let roots = test_roots(&ark);
    let crl = |this: u64, next: u64| {
        SevCrl::verify(
            SevGeneration::Milan,
            &make_crl(&ark, this, next, 1, &[]),
            &roots,
        )
        .unwrap()
    };
    let grace = sev::DEFAULT_CRL_GRACE_SECS;
    // Past nextUpdate but within the grace: still fresh.
    let policy = sample_policy(Some(Arc::new(crl(NOW - 40 * DAY, NOW - DAY))));
    evaluate(&policy, NOW).expect("within grace");
    // Past nextUpdate + grace: refused when the policy requires a CRL ...
    let stale = crl(NOW - 40 * DAY, NOW - grace - 1);
    let policy = sample_policy(Some(Arc::new(stale.clone())));
    let err = evaluate(&policy, NOW).unwrap_err();
    assert!(
        matches!(err, AttestError::Sev(SevError::CrlStale { .. })),
        "{err}"
    );
    // ... accepted when it does not, and then the verdict is not capped by the CRL.
    let optional = crl_optional(&policy);
    let peer = evaluate(&optional, NOW).unwrap();
    assert_eq!(peer.valid_until(), NOW + optional.max_validity_secs);
    // A CRL from the future (clock or issuer wrong) is not fresh either.
    let future = sample_policy(Some(Arc::new(crl(NOW + DAY, NOW + 30 * DAY))));
    assert!(matches!(
        evaluate(&future, NOW),
        Err(AttestError::Sev(SevError::CrlNotYetValid { .. }))
    ));
    // A fresh CRL caps the verdict at nextUpdate + grace.
    let soon = Policy {
        sev: SevPolicy {
            crl_grace_secs: 0,
            ..policy.sev
        },
        ..sample_policy(Some(Arc::new(crl(NOW - DAY, NOW + 3600))))
    };
    assert_eq!(evaluate(&soon, NOW).unwrap().valid_until(), NOW + 3600);
}

#[test]
fn no_crl_source_fails_closed_unless_optional() {
    let policy = sample_policy(None);
    let err = evaluate(&policy, NOW).unwrap_err();
    assert!(
        matches!(&err, AttestError::MissingCollateral { what } if what.contains("Milan CRL")),
        "{err}"
    );
    let optional = crl_optional(&policy);
    evaluate(&optional, NOW).expect("no CRL required");
}

#[tokio::test]
async fn handshake_path_never_fetches_and_the_refresher_fills_the_cache() {
    let ark = test_ark();
    let kds = Arc::new(LocalKds::default());
    set_milan_crl(&kds, make_crl(&ark, NOW - DAY, NOW + 30 * DAY, 1, &[]));
    let url = serve(Arc::clone(&kds)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = fetcher(&url, VcekStore::with_roots(dir.path(), test_roots(&ark)));
    let policy = sample_policy(Some(f.clone()));

    // Cache miss in the handshake: a typed error at once, no network call.
    let err = evaluate(&policy, NOW).unwrap_err();
    assert!(
        matches!(&err, AttestError::MissingCollateral { what }
            if what.contains("Milan CRL") && what.contains("fetch requested")),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(kds.hits(), 0, "the verification path made a request");

    // The background refresher, woken by the miss, fetches it; the next handshake passes.
    let task = f.spawn_refresher(Arc::new(|| NOW), Duration::from_secs(3600));
    let t0 = std::time::Instant::now();
    while evaluate(&policy, NOW).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "refresher did not fetch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    assert_eq!(kds.log(), vec!["/vcek/v1/Milan/crl".to_string()]);
}

#[tokio::test]
async fn failed_fetches_wait_for_the_retry_interval() {
    let kds = Arc::new(LocalKds::default());
    kds.set("/vcek/v1/Milan/crl", 503, b"busy".to_vec());
    let url = serve(Arc::clone(&kds)).await;
    let dir = tempfile::tempdir().unwrap();
    let ark = test_ark();
    let f = Arc::new(milan_fetcher(&url, dir.path(), &ark).with_retry_interval(600));
    assert_eq!(f.due(NOW), vec![KdsItem::Crl(SevGeneration::Milan)]);
    let out = f.refresh_due(NOW).await;
    let err = out[0].result.as_ref().unwrap_err();
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    assert_eq!(kds.hits(), 1);
    // Handshakes keep failing with the last error, but do not cause fetches.
    for _ in 0..5 {
        let e = f.crl(SevGeneration::Milan, NOW + 10).unwrap_err();
        assert!(e.to_string().contains("HTTP 503"), "{e}");
    }
    assert!(f.due(NOW + 599).is_empty());
    assert!(f.refresh_due(NOW + 599).await.is_empty());
    assert_eq!(kds.hits(), 1);
    assert_eq!(f.due(NOW + 600), vec![KdsItem::Crl(SevGeneration::Milan)]);
}

#[tokio::test]
async fn crls_are_refreshed_daily_and_before_next_update() {
    let ark = test_ark();
    let kds = Arc::new(LocalKds::default());
    let next = NOW + 30 * DAY;
    set_milan_crl(&kds, make_crl(&ark, NOW - DAY, next, 1, &[]));
    let url = serve(Arc::clone(&kds)).await;
    let dir = tempfile::tempdir().unwrap();
    let f = Arc::new(
        milan_fetcher(&url, dir.path(), &ark)
            .with_crl_max_age(DAY)
            .with_refresh_margin(3 * DAY),
    );
    f.refresh_due(NOW).await;
    assert!(f.due(NOW + DAY - 1).is_empty());
    assert_eq!(f.due(NOW + DAY), vec![KdsItem::Crl(SevGeneration::Milan)]);
    // Fetched again just now, but within the margin of nextUpdate: due.
    f.refresh_crl(SevGeneration::Milan, next - 3 * DAY)
        .await
        .unwrap();
    assert!(f.due(next - 3 * DAY + DEFAULT_RETRY_SECS - 1).is_empty());
    assert_eq!(
        f.due(next - 3 * DAY + DEFAULT_RETRY_SECS),
        vec![KdsItem::Crl(SevGeneration::Milan)]
    );
    // A restart loads the verified CRL from the directory and serves it at once.
    let again = fetcher(
        "http://127.0.0.1:9",
        VcekStore::with_roots(dir.path(), test_roots(&ark)),
    );
    assert_eq!(
        again.crl(SevGeneration::Milan, NOW).unwrap().next_update(),
        next
    );
}

#[test]
fn vcek_key_from_reports() {
    let report = milan_report();
    let key = VcekKey::for_report(SevGeneration::Milan, &report).unwrap();
    assert_eq!(key.hwid.len(), 64);
    assert_eq!(
        key.tcb,
        SevTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: 0
        }
    );
    // A 64-byte chip id is not a Turin hwID.
    assert!(VcekKey::for_report(SevGeneration::Turin, &report).is_err());
    assert!(VcekKey::for_report(SevGeneration::Milan, &report[..100]).is_err());
    // Names of cached files round-trip; names that are not keys are ignored.
    let dir = tempfile::tempdir().unwrap();
    let store = VcekStore::new(dir.path());
    let path = store.vcek_path(&key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"x").unwrap();
    std::fs::write(path.with_file_name("junk.der"), b"x").unwrap();
    assert_eq!(store.list_vceks(SevGeneration::Milan), vec![key]);
}
