//! COCOON's test-mode TDX evidence (`fake_tdx`), built here as COCOON builds it: its fake
//! TDX interface puts `SHA-512(user claims)` (the claims are the certificate's raw Ed25519
//! key) where the quote goes, 64 bytes; verifying it yields TDX attestation data whose
//! registers are all zero and whose report data is those 64 bytes, so its image hash is
//! `SHA-256` of the serialized data with the report data zeroed: 8 × 48 + 64 zero bytes.
//! Accepted only by test-network policies; every production policy refuses it with
//! `AttestError::FakeTdxNotAllowed`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_attest::{
    AttestError, Backend, Evidence, Fault, Measurements, Policy, TcbStatus,
    report_data_for_public_key,
};
use sha2::{Digest, Sha256, Sha512};

const NOW: u64 = 1_800_000_000;
const KEY: [u8; 32] = [0x5a; 32];

/// What COCOON's `FakeTdxInterface::make_quote` returns for a key: the claims' hash.
fn cocoon_fake_quote(public_key: &[u8; 32]) -> Vec<u8> {
    Sha512::digest(public_key).to_vec()
}

/// `AttestationData::image_hash` of fake TDX data: SHA-256 over MRTD, MRCONFIGID, MROWNER,
/// MROWNERCONFIG, RTMR0..3 (48 zero bytes each) and the zeroed report data (64).
fn cocoon_fake_image_hash() -> [u8; 32] {
    Sha256::digest([0u8; 8 * 48 + 64]).into()
}

#[test]
fn cocoon_fake_tdx_is_accepted_under_a_test_policy() {
    let quote = cocoon_fake_quote(&KEY);
    assert_eq!(quote.len(), 64);
    assert_eq!(quote, report_data_for_public_key(&KEY));
    let policy = Policy::sim_test();
    let peer = policy
        .evaluate_bound(&Evidence::FakeTdx(&quote), &KEY, NOW)
        .unwrap();
    assert_eq!(peer.backend(), Backend::FakeTdx);
    assert_eq!(peer.image_hash(), &cocoon_fake_image_hash());
    assert_eq!(
        peer.image_hash(),
        &cocoon_attest::tdx::fake_tdx_image_hash()
    );
    assert_eq!(peer.report_data()[..], quote[..]);
    assert_eq!(peer.public_key(), Some(&KEY));
    assert_eq!(peer.tcb_status(), TcbStatus::UpToDate);
    assert_eq!(peer.valid_until(), NOW + policy.max_validity_secs);
    let Measurements::Tdx(m) = peer.measurements() else {
        panic!("TDX registers")
    };
    assert_eq!((m.mrtd, m.rtmr), ([0; 48], [[0; 48]; 4]));

    // A policy file for a test network may name it; its allowlists apply.
    let file = br#"{"backends": ["fake-tdx"], "test_network": true}"#;
    let listed = Policy::from_json(file).unwrap();
    assert!(
        listed
            .evaluate_bound(&Evidence::FakeTdx(&quote), &KEY, NOW)
            .is_ok()
    );
    let mut other_image = Policy::sim_test();
    other_image.allowed_image_hashes = vec![[0x11; 32]];
    assert!(matches!(
        other_image.evaluate_bound(&Evidence::FakeTdx(&quote), &KEY, NOW),
        Err(AttestError::ImageHashNotAllowed { image_hash }) if image_hash == cocoon_fake_image_hash()
    ));
    let mut other_mrtd = Policy::sim_test();
    other_mrtd.allowed_mrtds = vec![[0x22; 48]];
    assert!(matches!(
        other_mrtd.evaluate_bound(&Evidence::FakeTdx(&quote), &KEY, NOW),
        Err(AttestError::MrtdNotAllowed { .. })
    ));
}

#[test]
fn production_policies_refuse_cocoon_fake_tdx_with_a_typed_error() {
    let quote = cocoon_fake_quote(&KEY);
    let any = {
        let mut p = Policy::tdx_default();
        p.allowed_backends = vec![Backend::Tdx, Backend::SevSnp];
        p
    };
    // Even a policy that lists fake-tdx refuses it when the network is not a test one.
    let listed_not_test = {
        let mut p = Policy::sim_test();
        p.is_test_network = false;
        p
    };
    for policy in [
        Policy::tdx_default(),
        Policy::sev_default(),
        any,
        listed_not_test,
    ] {
        let e = policy
            .evaluate_bound(&Evidence::FakeTdx(&quote), &KEY, NOW)
            .unwrap_err();
        assert!(matches!(e, AttestError::FakeTdxNotAllowed), "{e:?}");
        assert_eq!(e.fault(), Fault::Peer);
        assert!(e.to_string().contains("fake_tdx"), "{e}");
    }
    // A policy file cannot allow it outside a test network.
    let e = Policy::from_json(br#"{"backends": ["fake-tdx"]}"#).unwrap_err();
    assert!(
        e.to_string()
            .contains("\"fake-tdx\" requires \"test_network\": true"),
        "{e}"
    );
}

#[test]
fn fake_tdx_of_another_key_or_size_is_refused() {
    let policy = Policy::sim_test();
    let other = cocoon_fake_quote(&[0x77; 32]);
    assert!(matches!(
        policy.evaluate_bound(&Evidence::FakeTdx(&other), &KEY, NOW),
        Err(AttestError::ReportDataMismatch)
    ));
    let short = &cocoon_fake_quote(&KEY)[..63];
    assert!(matches!(
        policy.evaluate_bound(&Evidence::FakeTdx(short), &KEY, NOW),
        Err(AttestError::Malformed(m)) if m.contains("63 bytes")
    ));
}
