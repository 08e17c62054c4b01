//! RA-TLS over real loopback TCP: PoW → TLS 1.3 with attested certificates → session.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use cocoon_attest::{AttestError, Backend, Policy, SimKey, TdxCollateral, VerifiedPeer};
use cocoon_net::Incoming;
use cocoon_ratls::cert::{
    CertOptions, EvidenceEnvelope, EvidenceSource, FakeTdxSource, FixedSource, Identity,
    MAX_EVIDENCE_LEN, SimSource, Unattested,
};
use cocoon_ratls::config::{CertResolver, client_config, provider};
use cocoon_ratls::net::{RatlsAcceptor, RatlsConnector, RatlsError};
use cocoon_ratls::verifier::{RatlsVerifier, VerifierConfig, VerifyError, fixed_clock};
use tokio::net::TcpListener;

use common::vector;

/// Fixed "now" for every test: inside the validity window of the COCOON quote's collateral.
const NOW: u64 = 1_772_707_833;
const POW: u32 = 4;
/// No test may take longer than this (no hangs).
const LIMIT: Duration = Duration::from_secs(20);

type Outcome = Result<VerifiedPeer, RatlsError>;

fn sim() -> SimSource {
    SimSource(SimKey::generate().unwrap())
}

fn ident(at: u64) -> Identity {
    Identity::generate(&sim(), at).unwrap()
}

fn ident_with(source: &dyn EvidenceSource, opts: CertOptions) -> Identity {
    Identity::generate_with(source, NOW - 60, &opts).unwrap()
}

/// A certificate whose evidence (a valid sim signature) binds another identity's key.
fn bound_to_another_key() -> Identity {
    let other = ident(NOW - 60);
    let key = SimKey::generate().unwrap();
    let ev = EvidenceEnvelope::Sim(&key.evidence(&cocoon_attest::report_data_for_public_key(
        other.public_key(),
    )))
    .encode();
    ident_with(&FixedSource(ev), CertOptions::default())
}

/// A TLS 1.3 client that verifies the server but presents no certificate.
fn certless_connector() -> RatlsConnector {
    let cv = verifier();
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(cv.clone())
        .with_no_client_auth();
    RatlsConnector::from_client_config(Arc::new(cfg), cv, POW, cocoon_net::Config::default())
}

fn verifier_at(policy: Policy, now: u64) -> Arc<RatlsVerifier> {
    let mut cfg = VerifierConfig::new(policy);
    cfg.clock = fixed_clock(now);
    RatlsVerifier::new(cfg)
}

fn verifier() -> Arc<RatlsVerifier> {
    verifier_at(Policy::sim_test(), NOW)
}

fn acceptor(id: &Identity, v: Arc<RatlsVerifier>) -> RatlsAcceptor {
    RatlsAcceptor::new(
        CertResolver::new(id).unwrap(),
        v,
        POW,
        cocoon_net::Config::default(),
    )
    .unwrap()
}

fn connector(id: &Identity, v: Arc<RatlsVerifier>) -> RatlsConnector {
    let mut c = RatlsConnector::new(
        CertResolver::new(id).unwrap(),
        v,
        POW,
        cocoon_net::Config::default(),
    )
    .unwrap();
    c.timeouts.tls = Duration::from_secs(5);
    c
}

/// One connection: returns (client outcome, server outcome). Sessions are exercised with
/// a query round trip when both sides succeed.
async fn run(client: RatlsConnector, server: RatlsAcceptor) -> (Outcome, Outcome) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match server.accept(tcp).await {
            Ok((handle, mut incoming, peer)) => {
                tokio::spawn(async move {
                    while let Some(Incoming::Query { data, responder }) = incoming.recv().await {
                        let mut out = b"pong:".to_vec();
                        out.extend_from_slice(&data);
                        let _ = responder.answer(out);
                    }
                    drop(handle);
                });
                Ok(peer)
            }
            Err(e) => Err(e),
        }
    });
    let cli = async {
        let (handle, _incoming, peer) = client.connect(addr).await?;
        let answer = handle
            .query(b"ping".to_vec(), Duration::from_secs(5))
            .await
            .expect("query over RA-TLS session");
        assert_eq!(answer, b"pong:ping");
        Ok(peer)
    };
    tokio::time::timeout(LIMIT, async {
        let c = cli.await;
        let s = srv.await.unwrap();
        (c, s)
    })
    .await
    .expect("no hang")
}

/// A sim client verifying under `v` against a server presenting `bad`: the client's outcome.
async fn client_against(bad: &Identity, v: Arc<RatlsVerifier>) -> Outcome {
    run(connector(&ident(NOW - 60), v), acceptor(bad, verifier()))
        .await
        .0
}

/// The client refused the server's evidence for not being bound to its key.
fn assert_binding_rejected(c: &Outcome) {
    assert!(
        matches!(
            rejected_by(c),
            VerifyError::Attest(AttestError::ReportDataMismatch)
        ),
        "{c:?}"
    );
}

fn rejected_by(outcome: &Outcome) -> &VerifyError {
    match outcome {
        Err(e) => e
            .verify_error()
            .unwrap_or_else(|| panic!("expected a verifier rejection, got {e:?}")),
        Ok(_) => panic!("expected rejection, connection succeeded"),
    }
}

/// Client presents `bad`; the server must reject it. Returns the server's reason
/// (`Debug` form).
async fn server_rejects(bad: &Identity, policy: Policy, now: u64) -> String {
    let good = ident(NOW - 60);
    let (c, s) = run(
        connector(bad, verifier()),
        acceptor(&good, verifier_at(policy, now)),
    )
    .await;
    assert!(c.is_err(), "client must not get a session");
    format!("{:?}", rejected_by(&s))
}

#[tokio::test]
async fn sim_mutual_session_works() {
    let cid = ident(NOW - 60);
    let sid = ident(NOW - 60);
    let cv = verifier();
    let sv = verifier();
    let (c, s) = run(connector(&cid, cv.clone()), acceptor(&sid, sv.clone())).await;
    let seen_by_client = c.unwrap();
    let seen_by_server = s.unwrap();
    assert_eq!(seen_by_client.public_key(), Some(sid.public_key()));
    assert_eq!(seen_by_server.public_key(), Some(cid.public_key()));
    assert_eq!(seen_by_client.backend(), Backend::Sim);
    assert_eq!(
        seen_by_server.image_hash(),
        &cocoon_attest::sim::sim_image_hash()
    );
    assert_eq!(cv.invocations(), 1);
    assert_eq!(sv.invocations(), 1);
}

#[tokio::test]
async fn tls_parameters_are_cocoon_ones() {
    let cid = ident(NOW - 60);
    let sid = ident(NOW - 60);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = acceptor(&sid, verifier());
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        server.accept_tls(tcp).await.map(|(s, _)| s)
    });
    let (tls, _) = connector(&cid, verifier()).connect_tls(addr).await.unwrap();
    let conn = tls.get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let suite = conn.negotiated_cipher_suite().unwrap().suite();
    assert!(
        suite == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            || suite == rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
        "{suite:?}"
    );
    srv.await.unwrap().unwrap();
}

#[tokio::test]
async fn no_client_certificate_is_rejected() {
    let sid = ident(NOW - 60);
    let (c, s) = run(certless_connector(), acceptor(&sid, verifier())).await;
    assert!(c.is_err());
    match s {
        Err(RatlsError::Tls(e)) => {
            let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
            assert_eq!(
                inner,
                Some(&rustls::Error::NoCertificatesPresented),
                "{e:?}"
            );
        }
        other => panic!("expected NoCertificatesPresented, got {other:?}"),
    }
}

#[tokio::test]
async fn certificate_without_evidence_is_rejected_both_ways() {
    let bad = ident_with(
        &sim(),
        CertOptions {
            omit_evidence: true,
            ..Default::default()
        },
    );
    let r = server_rejects(&bad, Policy::sim_test(), NOW).await;
    assert!(r.contains("MissingEvidence"), "{r:?}");

    // The server presents it: the client rejects.
    let c = client_against(&bad, verifier()).await;
    assert!(matches!(rejected_by(&c), VerifyError::MissingEvidence));
}

#[tokio::test]
async fn unattested_clients_pass_only_where_allowed() {
    let plain = Identity::generate(&Unattested, NOW - 60).unwrap();
    assert!(plain.evidence().is_empty());
    // A default verifier refuses it, as any certificate without evidence.
    let r = server_rejects(&plain, Policy::sim_test(), NOW).await;
    assert!(r.contains("MissingEvidence"), "{r:?}");

    // A server that allows unattested peers: the session works, and the peer is labelled.
    let mut cfg = VerifierConfig::new(Policy::sim_test());
    cfg.clock = fixed_clock(NOW);
    cfg.allow_unattested = true;
    let lenient = RatlsVerifier::new(cfg);
    let (c, s) = run(
        connector(&plain, verifier()),
        acceptor(&ident(NOW - 60), lenient.clone()),
    )
    .await;
    c.unwrap();
    let peer = s.unwrap();
    assert_eq!(peer.backend(), Backend::Unattested);
    assert_eq!(peer.public_key(), Some(plain.public_key()));
    assert_eq!(peer.image_hash(), &[0; 32]);

    // Evidence that is present is still checked under that verifier: a TDX-only policy
    // refuses sim evidence even though unattested peers are allowed.
    let mut cfg = VerifierConfig::new(Policy::tdx_default());
    cfg.clock = fixed_clock(NOW);
    cfg.allow_unattested = true;
    let (_c, s) = run(
        connector(&ident(NOW - 60), verifier()),
        acceptor(&ident(NOW - 60), RatlsVerifier::new(cfg)),
    )
    .await;
    assert!(s.is_err(), "sim evidence under a TDX policy");

    // A client never accepts an unattested server (its verifier does not allow it).
    let (c, _s) = run(
        connector(&ident(NOW - 60), verifier()),
        acceptor(&plain, lenient),
    )
    .await;
    assert!(matches!(rejected_by(&c), VerifyError::MissingEvidence));
}

#[tokio::test]
async fn unknown_critical_extension_is_rejected() {
    let bad = ident_with(
        &sim(),
        CertOptions {
            extra_extension: Some((vec![1, 3, 6, 1, 4, 1, 99999, 7], true, vec![1, 2, 3])),
            ..Default::default()
        },
    );
    let c = client_against(&bad, verifier()).await;
    match rejected_by(&c) {
        VerifyError::UnknownCriticalExtension(oid) => assert_eq!(oid, "1.3.6.1.4.1.99999.7"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unknown_non_critical_extension_is_accepted() {
    let id = ident_with(
        &sim(),
        CertOptions {
            extra_extension: Some((vec![1, 3, 6, 1, 4, 1, 99999, 8], false, vec![1])),
            ..Default::default()
        },
    );
    let (c, s) = run(
        connector(&ident(NOW - 60), verifier()),
        acceptor(&id, verifier()),
    )
    .await;
    assert_eq!(c.unwrap().public_key(), Some(id.public_key()));
    s.unwrap();
}

#[tokio::test]
async fn claims_of_another_key_are_rejected() {
    let other = ident(NOW - 60);
    let bad = ident_with(
        &sim(),
        CertOptions {
            claims_override: Some(other.public_key().to_vec()),
            ..Default::default()
        },
    );
    let c = client_against(&bad, verifier()).await;
    assert!(matches!(rejected_by(&c), VerifyError::ClaimsKeyMismatch));
}

/// Evidence (a valid sim signature) whose report data is SHA-512 of another key.
#[tokio::test]
async fn evidence_bound_to_another_key_is_rejected() {
    let bad = bound_to_another_key();
    let r = server_rejects(&bad, Policy::sim_test(), NOW).await;
    assert!(r.contains("ReportDataMismatch"), "{r:?}");
}

/// Evidence over the SHA-512 of some other claims blob (not 32 key bytes).
#[tokio::test]
async fn report_data_of_another_claims_blob_is_rejected() {
    use sha2::Digest;
    let rd: [u8; 64] = sha2::Sha512::digest(b"{\"public_key\":\"something else\"}").into();
    let key = SimKey::generate().unwrap();
    let ev = EvidenceEnvelope::Sim(&key.evidence(&rd)).encode();
    let bad = ident_with(&FixedSource(ev), CertOptions::default());
    let c = client_against(&bad, verifier()).await;
    assert!(matches!(
        rejected_by(&c),
        VerifyError::Attest(AttestError::ReportDataMismatch)
    ));
}

#[tokio::test]
async fn sim_evidence_under_tdx_policy_is_rejected() {
    let sid = ident(NOW - 60);
    let (c, _s) = run(
        connector(&ident(NOW - 60), verifier_at(Policy::tdx_default(), NOW)),
        acceptor(&sid, verifier()),
    )
    .await;
    assert!(matches!(
        rejected_by(&c),
        VerifyError::Attest(AttestError::SimNotAllowed)
    ));
}

/// COCOON's test-mode evidence (`gen-cert --tdx fake_tdx`): the extension holds the 64
/// bytes of `SHA-512(public key)`. A test network accepts it over a real session.
#[tokio::test]
async fn cocoon_fake_tdx_session_on_a_test_network() {
    let sid = Identity::generate(&FakeTdxSource, NOW - 60).unwrap();
    assert_eq!(
        sid.evidence(),
        cocoon_attest::report_data_for_public_key(sid.public_key())
    );
    assert_eq!(
        EvidenceEnvelope::decode(sid.evidence()).unwrap(),
        EvidenceEnvelope::FakeTdx(sid.evidence())
    );
    let (c, s) = run(
        connector(&ident(NOW - 60), verifier()),
        acceptor(&sid, verifier()),
    )
    .await;
    let proxy = c.unwrap();
    assert_eq!(proxy.backend(), Backend::FakeTdx);
    assert_eq!(proxy.public_key(), Some(sid.public_key()));
    assert_eq!(
        proxy.image_hash(),
        &cocoon_attest::tdx::fake_tdx_image_hash()
    );
    assert_eq!(s.unwrap().backend(), Backend::Sim);
}

#[tokio::test]
async fn cocoon_fake_tdx_under_a_production_policy_is_refused() {
    let sid = Identity::generate(&FakeTdxSource, NOW - 60).unwrap();
    let (c, _s) = run(
        connector(&ident(NOW - 60), verifier_at(Policy::tdx_default(), NOW)),
        acceptor(&sid, verifier()),
    )
    .await;
    let e = rejected_by(&c);
    assert!(
        matches!(e, VerifyError::Attest(AttestError::FakeTdxNotAllowed)),
        "{e:?}"
    );
    assert_eq!(e.fault(), cocoon_attest::Fault::Peer);
}

#[tokio::test]
async fn image_hash_not_in_allowlist_is_rejected() {
    let mut policy = Policy::sim_test();
    policy.allowed_image_hashes = vec![[0x11; 32]];
    let sid = ident(NOW - 60);
    let (c, _s) = run(
        connector(&ident(NOW - 60), verifier_at(policy, NOW)),
        acceptor(&sid, verifier()),
    )
    .await;
    match rejected_by(&c) {
        VerifyError::Attest(AttestError::ImageHashNotAllowed { image_hash }) => {
            assert_eq!(image_hash, &cocoon_attest::sim::sim_image_hash())
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_rejected() {
    let old = ident(NOW - 86_400 - 10);
    let (c, _s) = run(
        connector(&ident(NOW - 60), verifier()),
        acceptor(&old, verifier()),
    )
    .await;
    match rejected_by(&c) {
        VerifyError::Expired { now, .. } => assert_eq!(*now, NOW),
        other => panic!("{other:?}"),
    }
    let future = ident(NOW + 100);
    let r = server_rejects(&future, Policy::sim_test(), NOW).await;
    assert!(r.contains("NotYetValid"), "{r:?}");
    // A peer whose clock is ahead of ours by less than the allowance is admitted (issue 22
    // §1: a worker 30 s ahead was refused until our clock caught up).
    let ahead = ident(NOW + cocoon_ratls::verifier::NOT_BEFORE_SKEW_SECS);
    let (c, s) = run(
        connector(&ahead, verifier()),
        acceptor(&ident(NOW - 60), verifier()),
    )
    .await;
    c.unwrap();
    s.unwrap();
    let beyond = ident(NOW + cocoon_ratls::verifier::NOT_BEFORE_SKEW_SECS + 1);
    let r = server_rejects(&beyond, Policy::sim_test(), NOW).await;
    assert!(r.contains("NotYetValid"), "{r:?}");
    // The same certificates verify at a time inside their window.
    let (c, _s) = run(
        connector(
            &ident(NOW - 86_400),
            verifier_at(Policy::sim_test(), NOW - 86_400),
        ),
        acceptor(&old, verifier_at(Policy::sim_test(), NOW - 86_400)),
    )
    .await;
    c.unwrap();
}

#[tokio::test]
async fn certificate_chain_is_rejected() {
    let leaf = ident(NOW - 60);
    let other = ident(NOW - 60);
    let chained = leaf
        .certified_key_with_chain(&[other.cert_der().clone()])
        .unwrap();
    let server = RatlsAcceptor::new(
        CertResolver::from_certified_key(chained),
        verifier(),
        POW,
        cocoon_net::Config::default(),
    )
    .unwrap();
    let (c, _s) = run(connector(&ident(NOW - 60), verifier()), server).await;
    assert!(matches!(
        rejected_by(&c),
        VerifyError::ChainNotAllowed { intermediates: 1 }
    ));
}

/// A client that enables resumption still gets a full handshake (the server keeps no
/// sessions and sends no tickets), so both verifiers run on every connection.
#[tokio::test]
async fn resumption_attempt_still_runs_verifiers() {
    let cid = ident(NOW - 60);
    let sid = ident(NOW - 60);
    let cv = verifier();
    let sv = verifier();
    let mut cfg = client_config(CertResolver::new(&cid).unwrap(), cv.clone()).unwrap();
    cfg.resumption = rustls::client::Resumption::default();
    let client = RatlsConnector::from_client_config(
        Arc::new(cfg),
        cv.clone(),
        POW,
        cocoon_net::Config::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_task, mut accepted) = acceptor(&sid, sv.clone()).spawn_listener(listener, 8);
    tokio::time::timeout(LIMIT, async {
        for i in 1..=3u64 {
            let (tls, peer) = client.connect_tls(addr).await.unwrap();
            assert_eq!(peer.public_key(), Some(sid.public_key()));
            let (handle, _rx) = cocoon_net::connect_stream(tls, &cocoon_net::Config::default())
                .await
                .unwrap();
            let acc = accepted.recv().await.unwrap();
            assert_eq!(acc.peer.public_key(), Some(cid.public_key()));
            assert_eq!(cv.invocations(), i, "client verifier ran on connection {i}");
            assert_eq!(sv.invocations(), i, "server verifier ran on connection {i}");
            handle.close();
        }
    })
    .await
    .expect("no hang");
    // The verdict cache spares repeated attestation of the same certificate.
    assert_eq!(sv.attestation_runs(), 1);
}

#[tokio::test]
async fn oversized_evidence_is_rejected() {
    // Between our 48 KiB cap and rustls' 64 KiB cap: our verifier says why.
    let mut ev = b"CCN-SIM1".to_vec();
    ev.resize(MAX_EVIDENCE_LEN + 1024, 0);
    let opts = CertOptions {
        allow_oversized_evidence: true,
        ..Default::default()
    };
    let bad = ident_with(&FixedSource(ev), opts.clone());
    let c = client_against(&bad, verifier()).await;
    assert!(matches!(
        rejected_by(&c),
        VerifyError::EvidenceTooLarge { .. }
    ));
    // Above 64 KiB: rustls refuses the handshake message itself; no panic, no hang.
    let mut ev = b"CCN-SIM1".to_vec();
    ev.resize(70_000, 0);
    let huge = ident_with(&FixedSource(ev), opts);
    let (c, s) = run(
        connector(&ident(NOW - 60), verifier()),
        acceptor(&huge, verifier()),
    )
    .await;
    assert!(c.is_err() && s.is_err(), "{c:?} {s:?}");
    // And the generator refuses it by default.
    let mut ev = b"CCN-SIM1".to_vec();
    ev.resize(70_000, 0);
    assert!(Identity::generate(&FixedSource(ev), NOW).is_err());
}

/// COCOON's real TDX quote in a fresh certificate: the quote verifies (DCAP, collateral
/// at NOW) but is bound to another key.
#[tokio::test]
async fn real_tdx_quote_in_fresh_cert_fails_binding() {
    let quote = vector("cocoon_quote.dat");
    let collateral =
        TdxCollateral::from_json(&vector("cocoon_quote_collateral_90c06f.json")).unwrap();
    let bad = ident_with(&FixedSource(quote), CertOptions::default());
    let mut cfg = VerifierConfig::new(Policy::tdx_default());
    cfg.clock = fixed_clock(NOW);
    cfg.collateral = Arc::new(collateral);
    let c = client_against(&bad, RatlsVerifier::new(cfg)).await;
    assert_binding_rejected(&c);
}

/// `CollateralFetcher` as the verifier's collateral source: with nothing cached and the
/// PCCS unreachable the handshake fails naming the FMSPC; with the collateral in its cache
/// directory the real quote passes DCAP and fails only on its binding to another key.
#[tokio::test]
async fn pccs_fetcher_as_collateral_source() {
    use cocoon_attest::{CollateralFetcher, CollateralStore, PccsClient};
    let quote = vector("cocoon_quote.dat");
    let bad = ident_with(&FixedSource(quote), CertOptions::default());
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = std::env::temp_dir().join(format!("ratls-pccs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let fetcher = || {
        let client = PccsClient::with_timeout(&format!("http://{dead}"), LIMIT).unwrap();
        Arc::new(CollateralFetcher::new(client, CollateralStore::new(&dir)))
    };
    let verify_with = |f: Arc<CollateralFetcher>| {
        let mut cfg = VerifierConfig::new(Policy::tdx_default());
        cfg.clock = fixed_clock(NOW);
        cfg.collateral = f;
        RatlsVerifier::new(cfg)
    };
    let c = client_against(&bad, verify_with(fetcher())).await;
    match rejected_by(&c) {
        VerifyError::Attest(AttestError::MissingCollateral { what }) => {
            assert!(what.contains("90C06F000000"), "{what}")
        }
        e => panic!("expected MissingCollateral, got {e:?}"),
    }
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("90c06f000000.json"),
        vector("cocoon_quote_collateral_90c06f.json"),
    )
    .unwrap();
    let c = client_against(&bad, verify_with(fetcher())).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_binding_rejected(&c);
}

/// Swapping the certificate affects new handshakes only; live sessions keep working.
#[tokio::test]
async fn certificate_refresh_keeps_live_sessions() {
    let sid1 = ident(NOW - 60);
    let sid2 = ident(NOW - 30);
    let certs = CertResolver::new(&sid1).unwrap();
    let server = RatlsAcceptor::new(
        Arc::clone(&certs),
        verifier(),
        POW,
        cocoon_net::Config::default(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_task, mut accepted) = server.spawn_listener(listener, 8);
    let server_loop = tokio::spawn(async move {
        while let Some(mut acc) = accepted.recv().await {
            tokio::spawn(async move {
                let _h = acc.handle;
                while let Some(Incoming::Query { data, responder }) = acc.incoming.recv().await {
                    let _ = responder.answer(data);
                }
            });
        }
    });
    let client = connector(&ident(NOW - 60), verifier());
    tokio::time::timeout(LIMIT, async {
        let (h1, _r1, p1) = client.connect(addr).await.unwrap();
        assert_eq!(p1.public_key(), Some(sid1.public_key()));
        certs.set(&sid2).unwrap();
        let (h2, _r2, p2) = client.connect(addr).await.unwrap();
        assert_eq!(p2.public_key(), Some(sid2.public_key()));
        for h in [&h1, &h2] {
            let a = h
                .query(b"x".to_vec(), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(a, b"x");
        }
    })
    .await
    .expect("no hang");
    server_loop.abort();
}

#[tokio::test]
async fn pow_difficulty_above_client_maximum_fails_fast() {
    let sid = ident(NOW - 60);
    let mut server = acceptor(&sid, verifier());
    server.pow_difficulty = 40;
    let mut client = connector(&ident(NOW - 60), verifier());
    client.pow_max_difficulty = 28;
    let (c, s) = run(client, server).await;
    assert!(matches!(c, Err(RatlsError::Pow(_))), "{c:?}");
    assert!(s.is_err());
}

/// `RatlsError::fault` over real connections: what the peer sent is the peer's fault; its
/// refusing us, a silent peer and our own limits are ours.
#[tokio::test]
async fn faults_name_the_peer_or_us() {
    use cocoon_attest::Fault;
    // Evidence bound to another key: the client refuses the server.
    let bad = bound_to_another_key();
    let c = client_against(&bad, verifier()).await;
    assert_eq!(c.as_ref().unwrap_err().fault(), Fault::Peer, "{c:?}");

    // A client without a certificate: the server blames it; the client, refused by alert,
    // blames nobody but itself.
    let sid = ident(NOW - 60);
    let (c, s) = run(certless_connector(), acceptor(&sid, verifier())).await;
    assert_eq!(s.as_ref().unwrap_err().fault(), Fault::Peer, "{s:?}");
    assert_eq!(c.as_ref().unwrap_err().fault(), Fault::Local, "{c:?}");

    // A server asking for more work than the client allows.
    let mut server = acceptor(&sid, verifier());
    server.pow_difficulty = 40;
    let mut client = connector(&ident(NOW - 60), verifier());
    client.pow_max_difficulty = 28;
    let (c, _) = run(client, server).await;
    assert_eq!(c.as_ref().unwrap_err().fault(), Fault::Peer, "{c:?}");

    // A silent client: a timeout is not held against it.
    let mut server = acceptor(&sid, verifier());
    server.timeouts.pow = Duration::from_millis(200);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    let r = tokio::time::timeout(LIMIT, server.accept(tcp))
        .await
        .expect("no hang");
    assert_eq!(r.as_ref().unwrap_err().fault(), Fault::Local, "{r:?}");
}

/// A real SEV-SNP report in the `CCN-SEV1` envelope: routed to the SEV verifier, which
/// checks signatures and the VCEK chain, then rejects the binding (the report's data is
/// not SHA-512 of this certificate's key). Under a TDX policy it is refused by backend.
#[tokio::test]
async fn real_sev_report_in_fresh_cert_fails_binding() {
    let report = cocoon_attest::sev::decode_report_hex(&vector("sev/report_milan.hex")).unwrap();
    let vcek = vector("sev/vcek_milan.der");
    let chain = vector("sev/cert_chain_milan");
    let info = cocoon_attest::sev::parse_report(&report).unwrap();
    let ev = EvidenceEnvelope::SevSnp {
        report: &report,
        vcek_der: &vcek,
        chain_pem: &chain,
    }
    .encode();
    let bad = ident_with(&FixedSource(ev), CertOptions::default());
    let policy = common::sample_sev_policy(&info);
    let c = client_against(&bad, verifier_at(policy, NOW)).await;
    assert_binding_rejected(&c);
    let c = client_against(&bad, verifier_at(Policy::tdx_default(), NOW)).await;
    assert!(matches!(
        rejected_by(&c),
        VerifyError::Attest(AttestError::BackendNotAllowed {
            backend: Backend::SevSnp
        })
    ));
}

#[tokio::test]
async fn refresher_swaps_in_new_certificates() {
    let id = ident(NOW - 60);
    let certs = CertResolver::new(&id).unwrap();
    let first = certs.current().cert[0].clone();
    let task = cocoon_ratls::config::spawn_refresh(
        Arc::clone(&certs),
        Arc::new(sim()),
        fixed_clock(NOW),
        Duration::from_millis(20),
    );
    tokio::time::timeout(LIMIT, async {
        while certs.current().cert[0] == first {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("refreshed");
    task.abort();
    // The new certificate verifies and is valid from the clock's time.
    let v = verifier();
    let peer = v.verify_cert(&certs.current().cert[0], &[]).unwrap();
    assert_ne!(peer.public_key(), Some(id.public_key()));
}

/// A client that goes silent before the PoW answer, or after it, is dropped by the
/// server's per-phase timeouts.
#[tokio::test]
async fn silent_clients_time_out_per_phase() {
    use cocoon_ratls::net::Phase;
    let sid = ident(NOW - 60);
    let mut server = acceptor(&sid, verifier());
    server.timeouts.pow = Duration::from_millis(200);
    server.timeouts.tls = Duration::from_millis(200);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::time::timeout(LIMIT, async {
        // Silent before the PoW answer.
        let _c1 = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let r = server.accept(tcp).await;
        assert!(matches!(r, Err(RatlsError::Timeout(Phase::Pow))), "{r:?}");
        // Solves the PoW, then sends no ClientHello.
        let mut c2 = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let client = tokio::spawn(async move {
            cocoon_ratls::pow::client_handshake(&mut c2, 28, Duration::from_secs(5))
                .await
                .unwrap();
            c2
        });
        let r = server.accept(tcp).await;
        assert!(matches!(r, Err(RatlsError::Timeout(Phase::Tls))), "{r:?}");
        drop(client.await.unwrap());
    })
    .await
    .expect("no hang");
}

/// The attestation failures of a TDX peer, each over a real connection: COCOON's quote in a
/// certificate, presented to a verifier whose policy or collateral makes it fail before the
/// key binding is even looked at.
#[tokio::test]
async fn tdx_evidence_failures_are_rejected_over_tcp() {
    let quote = vector("cocoon_quote.dat");
    let own = TdxCollateral::from_json(&vector("cocoon_quote_collateral_90c06f.json")).unwrap();
    let other_platform = TdxCollateral::from_json(&vector("tdx_quote_collateral.json")).unwrap();
    // TD report body offsets (after the 48-byte quote header): td_attributes at 120,
    // MRTD at 136; the signature data follows the 584-byte body and its length field.
    let flip = |offset: usize, mask: u8| {
        let mut q = quote.clone();
        q[offset] ^= mask;
        q
    };
    let body_flipped = flip(48 + 136 + 5, 0x01);
    let signature_flipped = flip(48 + 584 + 4 + 10, 0x80);
    let debug_td = flip(48 + 120, 0x01);
    let mut wrong_root = Policy::tdx_default();
    wrong_root.allowed_root_key_ids = vec![[0x11; 48]];

    /// (name, evidence, collateral, policy, verifier time, expected error).
    type Case = (
        &'static str,
        Vec<u8>,
        TdxCollateral,
        Policy,
        u64,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "flipped bit in the quote body",
            body_flipped,
            own.clone(),
            Policy::tdx_default(),
            NOW,
            "Dcap",
        ),
        (
            "flipped bit in the signature",
            signature_flipped,
            own.clone(),
            Policy::tdx_default(),
            NOW,
            "Dcap",
        ),
        (
            "debug TD",
            debug_td,
            own.clone(),
            Policy::tdx_default(),
            NOW,
            "DebugTd",
        ),
        (
            "collateral of another platform",
            quote.clone(),
            other_platform,
            Policy::tdx_default(),
            NOW,
            "",
        ),
        (
            "expired collateral",
            quote.clone(),
            own.clone(),
            Policy::tdx_default(),
            NOW + 60 * 86_400,
            "Collateral",
        ),
        (
            "wrong Intel root",
            quote.clone(),
            own,
            wrong_root,
            NOW,
            "RootKeyNotPinned",
        ),
    ];
    for (name, evidence, collateral, policy, now, expected) in cases {
        // The certificate itself is fresh at `now`; only the evidence is at fault.
        let bad =
            Identity::generate_with(&FixedSource(evidence), now - 60, &CertOptions::default())
                .unwrap();
        let mut cfg = VerifierConfig::new(policy);
        cfg.clock = fixed_clock(now);
        cfg.collateral = Arc::new(collateral);
        let c = client_against(&bad, RatlsVerifier::new(cfg)).await;
        let reason = format!("{:?}", rejected_by(&c));
        assert!(reason.contains("Attest"), "{name}: {reason}");
        assert!(
            !reason.contains("ReportDataMismatch"),
            "{name}: got past attestation: {reason}"
        );
        assert!(
            reason.contains(expected),
            "{name}: expected {expected}, got {reason}"
        );
    }
}
