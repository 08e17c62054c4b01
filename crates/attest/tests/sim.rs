//! Simulated evidence: accepted only by a sim-allowing policy on a test network.

use cocoon_attest::sim::{SIM_MEASUREMENT, sim_image_hash};
use cocoon_attest::{
    AttestError, Backend, Evidence, Measurements, Policy, SimKey, report_data_for_public_key,
};

const NOW: u64 = 1_772_707_833;

#[test]
fn sim_accepted_by_sim_test_policy() {
    let key = SimKey::generate().unwrap();
    let rd = [0x42; 64];
    let ev = key.evidence(&rd);
    let peer = Policy::sim_test()
        .evaluate(&Evidence::Sim(&ev), &rd, NOW)
        .expect("accepted");
    assert_eq!(peer.backend(), Backend::Sim);
    assert_eq!(peer.image_hash(), &sim_image_hash());
    assert_eq!(
        peer.measurements(),
        &Measurements::Sim {
            measurement: SIM_MEASUREMENT,
            rtmr3: None,
        }
    );
    assert_eq!(peer.report_data(), &rd);
    assert_eq!(peer.valid_until(), NOW + 86_400);
}

#[test]
fn sim_rejected_by_tdx_policy_and_non_test_network() {
    let key = SimKey::generate().unwrap();
    let rd = [1; 64];
    let ev = key.evidence(&rd);
    let ev = Evidence::Sim(&ev);
    assert!(matches!(
        Policy::tdx_default().evaluate(&ev, &rd, NOW),
        Err(AttestError::SimNotAllowed)
    ));
    let not_test = Policy {
        is_test_network: false,
        ..Policy::sim_test()
    };
    assert!(matches!(
        not_test.evaluate(&ev, &rd, NOW),
        Err(AttestError::SimNotAllowed)
    ));
    // The sim image hash is never in a production allowlist, but if a policy lists
    // other hashes, sim is rejected by it too.
    let listed = Policy {
        allowed_image_hashes: vec![[0; 32]],
        ..Policy::sim_test()
    };
    assert!(matches!(
        listed.evaluate(&ev, &rd, NOW),
        Err(AttestError::ImageHashNotAllowed { .. })
    ));
}

#[test]
fn sim_tampering_and_signers() {
    let key = SimKey::generate().unwrap();
    let rd = [9; 64];
    let good = key.evidence(&rd);
    let policy = Policy::sim_test();
    assert!(matches!(
        policy.evaluate(&Evidence::Sim(&good), &[8; 64], NOW),
        Err(AttestError::ReportDataMismatch)
    ));
    for i in [0usize, 20, 80, 120, 171] {
        let mut bad = good.clone();
        bad[i] ^= 0x04;
        let r = policy.evaluate(&Evidence::Sim(&bad), &rd, NOW);
        assert!(
            matches!(
                r,
                Err(AttestError::SimBadSignature) | Err(AttestError::Malformed(_))
            ),
            "byte {i}: {r:?}"
        );
    }
    assert!(matches!(
        policy.evaluate(&Evidence::Sim(&good[..100]), &rd, NOW),
        Err(AttestError::Malformed(_))
    ));
    let pinned = Policy {
        allowed_sim_signers: vec![[3; 32]],
        ..Policy::sim_test()
    };
    assert!(matches!(
        pinned.evaluate(&Evidence::Sim(&good), &rd, NOW),
        Err(AttestError::SimSignerNotAllowed { .. })
    ));
    let pinned = Policy {
        allowed_sim_signers: vec![key.public_key()],
        ..Policy::sim_test()
    };
    pinned.evaluate(&Evidence::Sim(&good), &rd, NOW).unwrap();
}

#[test]
fn sim_key_persists_and_binds_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sim.key");
    let a = SimKey::load_or_create(&path).unwrap();
    let b = SimKey::load_or_create(&path).unwrap();
    assert_eq!(a.public_key(), b.public_key());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    std::fs::write(dir.path().join("bad.key"), b"junk").unwrap();
    assert!(matches!(
        SimKey::load_or_create(&dir.path().join("bad.key")),
        Err(AttestError::SimKey { .. })
    ));

    let tls_key = [5u8; 32];
    let ev = a.evidence(&report_data_for_public_key(&tls_key));
    let peer = Policy::sim_test()
        .evaluate_bound(&Evidence::Sim(&ev), &tls_key, NOW)
        .unwrap();
    assert_eq!(peer.public_key(), Some(&tls_key));
    assert!(matches!(
        Policy::sim_test().evaluate_bound(&Evidence::Sim(&ev), &[6; 32], NOW),
        Err(AttestError::ReportDataMismatch)
    ));
}

#[test]
fn sim_v2_carries_rtmr3_into_the_image_hash_and_signs_it() {
    use cocoon_attest::measure::rtmr3_for_config;
    use cocoon_attest::sim::sim_image_hash_for;
    let r3 = rtmr3_for_config(b"backend_url = \"http://a\"\n");
    let key = SimKey::generate().unwrap().with_rtmr3(Some(r3));
    let rd = [7; 64];
    let ev = key.evidence(&rd);
    assert_eq!(ev.len(), cocoon_attest::sim::SIM_EVIDENCE_V2_LEN);
    let peer = Policy::sim_test()
        .evaluate(&Evidence::Sim(&ev), &rd, NOW)
        .expect("accepted");
    assert_eq!(
        peer.measurements(),
        &Measurements::Sim {
            measurement: SIM_MEASUREMENT,
            rtmr3: Some(r3),
        }
    );
    assert_eq!(peer.image_hash(), &sim_image_hash_for(Some(&r3)));
    assert_eq!(peer.image_hash(), &key.image_hash());
    assert_ne!(peer.image_hash(), &sim_image_hash());
    // Another configuration, another image hash (a host pointing the worker elsewhere).
    let other = rtmr3_for_config(b"backend_url = \"http://b\"\n");
    assert_ne!(sim_image_hash_for(Some(&other)), key.image_hash());
    // The register is signed: changing it breaks the signature.
    let mut bad = ev.clone();
    bad[12 + 64] ^= 1;
    assert!(matches!(
        Policy::sim_test().evaluate(&Evidence::Sim(&bad), &rd, NOW),
        Err(AttestError::SimBadSignature)
    ));
    // A version-1 magic on version-2 bytes is malformed, not reinterpreted.
    let mut wrong = ev.clone();
    wrong[..12].copy_from_slice(cocoon_attest::sim::SIM_MAGIC);
    assert!(matches!(
        Policy::sim_test().evaluate(&Evidence::Sim(&wrong), &rd, NOW),
        Err(AttestError::Malformed(_))
    ));
}
