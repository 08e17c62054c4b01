//! SEV-SNP through `Policy::evaluate` (the report checks themselves are tested in `sev.rs`).

use cocoon_attest::sev;
use cocoon_attest::{AttestError, Backend, Evidence, Measurements, Policy, SimKey};

#[path = "../src/test_vectors.rs"]
mod test_vectors;

/// The bytes of `testvectors/attest/sev/{name}`.
fn vector(name: &str) -> Vec<u8> {
    test_vectors::vector(&format!("sev/{name}"))
}

const NOW: u64 = 1_772_707_833;

#[test]
fn milan_report_through_policy() {
    let report = sev::decode_report_hex(&vector("report_milan.hex")).unwrap();
    let vcek = vector("vcek_milan.der");
    let chain = vector("cert_chain_milan");
    let info = sev::parse_report(&report).unwrap();
    let ev = Evidence::SevSnp {
        report: &report,
        vcek_der: &vcek,
        chain_pem: &chain,
    };
    // The default refuses this 2022 sample: its TCB (snp 8, microcode 115) is below AMD's
    // floors for Milan (AMD-SB-3019: snp 22, microcode 219).
    assert!(matches!(
        Policy::sev_default().evaluate(&ev, &info.report_data, NOW),
        Err(AttestError::Sev(sev::SevError::TcbTooLow {
            component: "snp",
            ..
        }))
    ));
    // The sample guest may allow debug or not run at VMPL 0; relax only what it needs
    // so the test exercises the mapping, and check the strict default separately. Its TCB
    // floor is dropped explicitly, and no AMD CRL is available offline (the CRL path is
    // tested in `kds::tests` with a local KDS): without one the default fails closed.
    let mut policy = Policy::sev_default();
    policy.sev.min_tcb = sev::SevMinTcb::NONE;
    policy.sev.allow_debug = info.debug_allowed;
    policy.sev.allow_migration_agent = info.migrate_ma_allowed;
    policy.sev.require_vmpl0 = info.vmpl == 0;
    assert!(matches!(
        policy.evaluate(&ev, &info.report_data, NOW),
        Err(AttestError::MissingCollateral { .. })
    ));
    policy.sev.require_crl = false;
    let peer = policy
        .evaluate(&ev, &info.report_data, NOW)
        .expect("accepted");
    assert_eq!(peer.backend(), Backend::SevSnp);
    assert_eq!(peer.image_hash(), &sev::image_hash(&info));
    assert_eq!(
        peer.measurements(),
        &Measurements::SevSnp {
            measurement: info.measurement,
            host_data: info.host_data
        }
    );

    assert_eq!(peer.valid_until(), NOW + policy.max_validity_secs);
    // Close to the VCEK's notAfter (2030-04-03T19:23:43Z), the verdict ends with it.
    let vcek_not_after = 1_901_474_623;
    assert_eq!(sev::certs_not_after(&vcek, &chain).unwrap(), vcek_not_after);
    let late = policy
        .evaluate(&ev, &info.report_data, vcek_not_after - 100)
        .expect("accepted just before the VCEK expires");
    assert_eq!(late.valid_until(), vcek_not_after);
    assert!(matches!(
        policy.evaluate(&ev, &info.report_data, vcek_not_after + 1),
        Err(AttestError::Sev(_))
    ));

    // A TDX-only policy refuses SEV evidence.
    assert!(matches!(
        Policy::tdx_default().evaluate(&ev, &info.report_data, NOW),
        Err(AttestError::BackendNotAllowed {
            backend: Backend::SevSnp
        })
    ));
    // Report data must match.
    assert!(matches!(
        policy.evaluate(&ev, &[0; 64], NOW),
        Err(AttestError::ReportDataMismatch)
    ));
    // A flipped bit in the measurement breaks the signature.
    let mut bad = report.clone();
    bad[0x90] ^= 1;
    let ev_bad = Evidence::SevSnp {
        report: &bad,
        vcek_der: &vcek,
        chain_pem: &chain,
    };
    assert!(matches!(
        policy.evaluate(&ev_bad, &info.report_data, NOW),
        Err(AttestError::Sev(_))
    ));
    // Image-hash allowlist applies to SEV too.
    let listed = Policy {
        allowed_image_hashes: vec![[0; 32]],
        ..policy.clone()
    };
    assert!(matches!(
        listed.evaluate(&ev, &info.report_data, NOW),
        Err(AttestError::ImageHashNotAllowed { .. })
    ));
}

#[test]
fn sev_policy_rejects_sim() {
    let key = SimKey::generate().unwrap();
    let ev = key.evidence(&[0; 64]);
    assert!(matches!(
        Policy::sev_default().evaluate(&Evidence::Sim(&ev), &[0; 64], NOW),
        Err(AttestError::SimNotAllowed)
    ));
}

/// The certificates of the Milan sample verify at the system clock until the VCEK expires in
/// 2030 (the time is the caller's: `cocoon-attest` reads no clock).
#[test]
fn certificate_validity_at_the_system_clock() {
    let report = sev::decode_report_hex(&vector("report_milan.hex")).unwrap();
    let (vcek, chain) = (vector("vcek_milan.der"), vector("cert_chain_milan"));
    let lenient = sev::SevPolicy {
        min_tcb: sev::SevMinTcb::NONE,
        ..sev::SevPolicy::default()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    match sev::verify_report_at(&report, &vcek, &chain, &lenient, now) {
        Ok(_) | Err(sev::SevError::CertNotValidAt { .. }) => {}
        Err(e) => panic!("unexpected: {e}"),
    }
}
