//! GPU evidence in RA-TLS over real loopback sessions (sim CPU attestation): a worker-like
//! peer carries NVIDIA's recorded Hopper sample (testvectors/gpu/) in the non-critical GPU
//! extension, and the accepting side's `GpuRequirement` admits or refuses it.
//!
//! The sample's nonce is NVIDIA's, not SHA-256 of our certificate key: it verifies only with
//! `allow_unbound_nonce` (recorded `nonce_bound: false`). RIMs: `testvectors/gpu/retargeted/`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use cocoon_attest::gpu::{GpuError, GpuPolicy};
use cocoon_attest::{Policy, SimKey, VerifiedPeer};
use cocoon_net::Incoming;
use cocoon_ratls::cert::{
    CertOptions, EvidenceSource, GpuEvidenceBytes, Identity, OID_GPU, RecordedGpuSource, SimSource,
    WithGpu,
};
use cocoon_ratls::config::CertResolver;
use cocoon_ratls::net::{RatlsAcceptor, RatlsConnector, RatlsError};
use cocoon_ratls::verifier::{
    GpuRequirement, RatlsVerifier, VerifierConfig, VerifyError, fixed_clock,
};
use tokio::net::TcpListener;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testvectors/gpu/");
/// Inside the sim certificates' and the GPU chain's validity.
const NOW: u64 = 1_772_707_833;
const POW: u32 = 4;
const LIMIT: Duration = Duration::from_secs(20);

type Outcome = Result<VerifiedPeer, RatlsError>;

fn file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}{name}")).unwrap()
}

fn sample() -> GpuEvidenceBytes {
    GpuEvidenceBytes {
        report: cocoon_attest::gpu::report::decode_hex(&file("hopperAttestationReport.txt"))
            .unwrap(),
        cert_chain_pem: file("hopperCertChain.txt"),
    }
}

fn sim() -> Arc<SimSource> {
    Arc::new(SimSource(SimKey::generate().unwrap()))
}

fn with_gpu(evidence: GpuEvidenceBytes) -> WithGpu {
    WithGpu {
        cpu: sim(),
        gpu: Arc::new(RecordedGpuSource(evidence)),
    }
}

fn ident(source: &dyn EvidenceSource) -> Identity {
    Identity::generate(source, NOW - 60).unwrap()
}

/// What a proxy requiring GPU CC on a test network with the recorded sample asks.
fn requirement() -> GpuRequirement {
    GpuRequirement {
        required: true,
        rims: vec![
            file("retargeted/Driver_RIM_retargeted.swidtag"),
            file("retargeted/VBIOS_RIM_retargeted.swidtag"),
        ],
        policy: GpuPolicy {
            require_rim_signatures: false,
            ..GpuPolicy::default()
        },
        allowed_projects: vec!["1010".into()],
        min_driver_version: Some("550.54".into()),
        min_vbios_version: Some("96.00.74.00.01".into()),
        allow_unbound_nonce: true,
        crl_dir: None,
    }
}

fn verifier(gpu: Option<GpuRequirement>) -> Arc<RatlsVerifier> {
    let mut cfg = VerifierConfig::new(Policy::sim_test());
    cfg.clock = fixed_clock(NOW);
    cfg.gpu = gpu.map(Arc::new);
    RatlsVerifier::new(cfg)
}

/// A worker presenting `worker` connects to a proxy verifying with `gpu`: the proxy's
/// outcome.
async fn proxy_sees(worker: &Identity, gpu: Option<GpuRequirement>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = RatlsAcceptor::new(
        CertResolver::new(&ident(sim().as_ref())).unwrap(),
        verifier(gpu),
        POW,
        cocoon_net::Config::default(),
    )
    .unwrap();
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match acceptor.accept(tcp).await {
            Ok((handle, mut incoming, peer)) => {
                tokio::spawn(async move {
                    while let Some(Incoming::Query { data, responder }) = incoming.recv().await {
                        let _ = responder.answer(data);
                    }
                    drop(handle);
                });
                Ok(peer)
            }
            Err(e) => Err(e),
        }
    });
    let mut connector = RatlsConnector::new(
        CertResolver::new(worker).unwrap(),
        verifier(None),
        POW,
        cocoon_net::Config::default(),
    )
    .unwrap();
    connector.timeouts.tls = Duration::from_secs(5);
    tokio::time::timeout(LIMIT, async {
        let client = connector.connect(addr).await;
        if let Ok((handle, _incoming, _)) = &client {
            let echo = handle.query(b"ping".to_vec(), Duration::from_secs(5)).await;
            assert_eq!(echo.unwrap(), b"ping");
        }
        srv.await.unwrap()
    })
    .await
    .expect("no hang")
}

fn refusal(outcome: &Outcome) -> &VerifyError {
    match outcome {
        Err(e) => e
            .verify_error()
            .unwrap_or_else(|| panic!("expected a verifier rejection, got {e:?}")),
        Ok(_) => panic!("expected rejection, the session was admitted"),
    }
}

#[tokio::test]
async fn recorded_sample_is_admitted_on_a_test_network_as_unbound() {
    let worker = ident(&with_gpu(sample()));
    let peer = proxy_sees(&worker, Some(requirement())).await.unwrap();
    assert_eq!(peer.public_key(), Some(worker.public_key()));
    let gpu = peer.gpu().expect("GPU verdict recorded");
    assert!(!gpu.nonce_bound);
    assert_eq!(gpu.verdict.driver_version, "550.90.07");
    assert_eq!(gpu.verdict.vbios_version, "96.00.9f.00.01");
    assert_eq!(gpu.verdict.project.as_deref(), Some("1010"));
    assert_eq!(gpu.verdict.measurements_checked, 32);
    // A project-and-SKU entry is matched too.
    let mut req = requirement();
    req.allowed_projects = vec!["2330".into(), "1010-0200".into()];
    assert!(
        proxy_sees(&worker, Some(req))
            .await
            .unwrap()
            .gpu()
            .is_some()
    );
}

#[tokio::test]
async fn unbound_nonce_is_refused_without_the_allowance() {
    let worker = ident(&with_gpu(sample()));
    let mut req = requirement();
    req.allow_unbound_nonce = false;
    let s = proxy_sees(&worker, Some(req)).await;
    assert!(
        matches!(refusal(&s), VerifyError::Gpu(GpuError::NonceMismatch)),
        "{s:?}"
    );
}

#[tokio::test]
async fn missing_gpu_evidence_is_refused_only_when_required() {
    let worker = ident(sim().as_ref());
    let s = proxy_sees(&worker, Some(requirement())).await;
    assert!(
        matches!(refusal(&s), VerifyError::MissingGpuEvidence),
        "{s:?}"
    );
    assert!(refusal(&s).to_string().contains("GPU"));
    let mut req = requirement();
    req.required = false;
    let peer = proxy_sees(&worker, Some(req)).await.unwrap();
    assert!(peer.gpu().is_none());
}

#[tokio::test]
async fn driver_or_vbios_below_the_minimum_is_refused() {
    let worker = ident(&with_gpu(sample()));
    let mut req = requirement();
    req.min_driver_version = Some("550.100".into());
    let s = proxy_sees(&worker, Some(req)).await;
    match refusal(&s) {
        VerifyError::GpuNotAllowed(why) => assert!(why.contains("driver version"), "{why}"),
        other => panic!("{other:?}"),
    }
    let mut req = requirement();
    req.min_vbios_version = Some("96.00.a0.00.01".into());
    let s = proxy_sees(&worker, Some(req)).await;
    match refusal(&s) {
        VerifyError::GpuNotAllowed(why) => assert!(why.contains("VBIOS version"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_project_not_allowed_is_refused() {
    let worker = ident(&with_gpu(sample()));
    let mut req = requirement();
    req.allowed_projects = vec!["2330".into(), "1010-0300".into()];
    let s = proxy_sees(&worker, Some(req)).await;
    match refusal(&s) {
        VerifyError::GpuNotAllowed(why) => assert!(why.contains("1010-0200"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn tampered_gpu_evidence_is_refused() {
    let mut report = sample();
    let last = report.report.len() - 1;
    report.report[last] ^= 0x01; // the signature's last byte
    let s = proxy_sees(&ident(&with_gpu(report)), Some(requirement())).await;
    assert!(
        matches!(refusal(&s), VerifyError::Gpu(GpuError::Signature)),
        "{s:?}"
    );
    let mut chain = sample();
    chain
        .cert_chain_pem
        .truncate(chain.cert_chain_pem.len() / 2);
    let s = proxy_sees(&ident(&with_gpu(chain)), Some(requirement())).await;
    assert!(matches!(refusal(&s), VerifyError::Gpu(_)), "{s:?}");
    // Tampered but not required: admitted, with no GPU verdict.
    let mut report = sample();
    report.report[last] ^= 0x01;
    let mut req = requirement();
    req.required = false;
    let peer = proxy_sees(&ident(&with_gpu(report)), Some(req))
        .await
        .unwrap();
    assert!(peer.gpu().is_none());
}

#[tokio::test]
async fn a_verifier_without_gpu_requirement_ignores_the_extension() {
    // As COCOON's peers do: the extension is non-critical.
    let worker = ident(&with_gpu(sample()));
    let peer = proxy_sees(&worker, None).await.unwrap();
    assert!(peer.gpu().is_none());
}

#[tokio::test]
async fn a_second_gpu_extension_or_garbage_is_refused() {
    let source = with_gpu(sample());
    let twice = Identity::generate_with(
        &source,
        NOW - 60,
        &CertOptions {
            extra_extension: Some((OID_GPU.to_vec(), false, vec![1])),
            ..Default::default()
        },
    )
    .unwrap();
    let s = proxy_sees(&twice, Some(requirement())).await;
    assert!(
        matches!(refusal(&s), VerifyError::DuplicateExtension(_)),
        "{s:?}"
    );
    let garbage = Identity::generate_with(
        sim().as_ref(),
        NOW - 60,
        &CertOptions {
            extra_extension: Some((OID_GPU.to_vec(), false, b"CCN-GPU1\xff".to_vec())),
            ..Default::default()
        },
    )
    .unwrap();
    let s = proxy_sees(&garbage, Some(requirement())).await;
    assert!(matches!(refusal(&s), VerifyError::GpuEnvelope(_)), "{s:?}");
}

/// The handshake's check and the `VerifiedPeer` built after it verify the GPU evidence once
/// (cached with the CPU verdicts' lifetime); with caching off, every call verifies again; a
/// refused claim is not kept.
#[test]
fn gpu_evidence_is_verified_once_per_certificate() {
    let id = ident(&with_gpu(sample()));
    let v = verifier(Some(requirement()));
    let first = v.verify_cert(id.cert_der(), &[]).unwrap();
    let second = v.verify_cert(id.cert_der(), &[]).unwrap();
    assert_eq!(v.gpu_runs(), 1);
    assert_eq!(first.gpu(), second.gpu());
    assert!(second.gpu().is_some());

    let mut cfg = VerifierConfig::new(Policy::sim_test());
    cfg.clock = fixed_clock(NOW);
    cfg.gpu = Some(Arc::new(requirement()));
    cfg.cache_ttl_secs = 0;
    let uncached = RatlsVerifier::new(cfg);
    uncached.verify_cert(id.cert_der(), &[]).unwrap();
    uncached.verify_cert(id.cert_der(), &[]).unwrap();
    assert_eq!(uncached.gpu_runs(), 2);

    let mut strict = requirement();
    strict.min_driver_version = Some("999".into());
    let refusing = verifier(Some(strict));
    assert!(refusing.verify_cert(id.cert_der(), &[]).is_err());
    assert!(refusing.verify_cert(id.cert_der(), &[]).is_err());
    assert_eq!(refusing.gpu_runs(), 2);
}

/// `GpuRequirement::crl_dir`: the revocation lists there are read at each check. A list of
/// an issuer outside the GPU's chain is ignored; a file that is no list refuses the peer (as
/// our fault: the operator's cache is broken), and so does a missing directory. (The lists'
/// own checks, with a chain whose keys we hold, are in `crates/attest/tests/gpu_crl.rs`.)
#[tokio::test]
async fn revocation_lists_are_read_from_the_directory_at_each_check() {
    use cocoon_attest::Fault;
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(ca, key);
    let crl = rcgen::CertificateRevocationListParams {
        this_update: time::OffsetDateTime::from_unix_timestamp(NOW as i64 - 60).unwrap(),
        next_update: time::OffsetDateTime::from_unix_timestamp(NOW as i64 + 86_400).unwrap(),
        crl_number: rcgen::SerialNumber::from(vec![1]),
        issuing_distribution_point: None,
        revoked_certs: vec![],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap();
    std::fs::write(dir.path().join("other.crl"), crl.der()).unwrap();
    let worker = ident(&with_gpu(sample()));
    let mut req = requirement();
    req.crl_dir = Some(dir.path().to_path_buf());
    assert!(
        proxy_sees(&worker, Some(req.clone()))
            .await
            .unwrap()
            .gpu()
            .is_some()
    );
    std::fs::write(dir.path().join("broken.crl"), b"not a list").unwrap();
    let s = proxy_sees(&worker, Some(req.clone())).await;
    let e = refusal(&s);
    assert!(
        matches!(e, VerifyError::Gpu(GpuError::CrlInvalid { .. })),
        "{e:?}"
    );
    assert_eq!(e.fault(), Fault::Local);
    req.crl_dir = Some(dir.path().join("missing"));
    let s = proxy_sees(&worker, Some(req)).await;
    assert_eq!(refusal(&s).fault(), Fault::Local, "{s:?}");
}
