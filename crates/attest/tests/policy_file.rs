//! JSON policy files (`Policy::from_json`), evaluated on real evidence.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_attest::{AttestError, Backend, Evidence, Policy, TcbStatus, TdxCollateral};

#[path = "../src/test_vectors.rs"]
mod test_vectors;
use test_vectors::vector;

const NOW: u64 = 1_772_707_833;

fn eval(policy: &Policy) -> Result<cocoon_attest::VerifiedPeer, AttestError> {
    let quote = vector("cocoon_quote.dat");
    let coll = TdxCollateral::from_json(&vector("cocoon_quote_collateral_90c06f.json")).unwrap();
    let parsed = cocoon_attest::tdx::parse_quote(&quote).unwrap();
    policy.evaluate(
        &Evidence::Tdx {
            quote: &quote,
            collateral: &coll,
        },
        &parsed.report_data,
        NOW,
    )
}

fn image_hash_hex() -> String {
    let parsed = cocoon_attest::tdx::parse_quote(&vector("cocoon_quote.dat")).unwrap();
    hex::encode(cocoon_attest::tdx::image_hash(&parsed.measurements))
}

#[test]
fn full_policy_file_parses_and_applies() {
    let parsed = cocoon_attest::tdx::parse_quote(&vector("cocoon_quote.dat")).unwrap();
    let m = &parsed.measurements;
    let json = format!(
        r#"{{
          "backends": ["tdx", "sev-snp"],
          "image_hashes": ["{}"],
          "mrtds": ["{}"],
          "rtmrs": [["{}", "{}", "{}", "{}"]],
          "min_tcb_status": "SWHardeningNeeded",
          "denied_advisories": ["INTEL-SA-00837"],
          "max_collateral_age_secs": 2592000,
          "sev": {{ "min_tcb": {{ "bootloader": 3, "tee": 0, "snp": 8, "microcode": 115 }} }},
          "max_validity_secs": 3600
        }}"#,
        image_hash_hex().to_uppercase(),
        hex::encode(m.mrtd),
        hex::encode(m.rtmr[0]),
        hex::encode(m.rtmr[1]),
        hex::encode(m.rtmr[2]),
        hex::encode(m.rtmr[3]),
    );
    let p = Policy::from_json(json.as_bytes()).expect("parses");
    assert_eq!(p.allowed_backends, vec![Backend::Tdx, Backend::SevSnp]);
    assert_eq!(p.min_tcb_status, TcbStatus::SWHardeningNeeded);
    // One TCB object is the floor of every product.
    let tcb = cocoon_attest::sev::SevTcb {
        bootloader: 3,
        tee: 0,
        snp: 8,
        microcode: 115,
        fmc: 0,
    };
    assert_eq!(p.sev.min_tcb, cocoon_attest::sev::SevMinTcb::uniform(tcb));
    assert!(!p.is_test_network);
    // Intel's root stays pinned when the file does not name roots.
    assert_eq!(
        p.allowed_root_key_ids,
        Policy::tdx_default().allowed_root_key_ids
    );
    let peer = eval(&p).expect("accepted");
    assert_eq!(peer.tcb_status(), TcbStatus::UpToDate);
    assert!(peer.valid_until() <= NOW + 3600);
}

#[test]
fn policy_file_checks_bite() {
    // Another image hash only.
    let other = "11".repeat(32);
    let p = Policy::from_json(
        format!(r#"{{"backends":["tdx"],"image_hashes":["{other}"]}}"#).as_bytes(),
    )
    .unwrap();
    assert!(matches!(
        eval(&p),
        Err(AttestError::ImageHashNotAllowed { .. })
    ));
    // Only SEV-SNP allowed.
    let p = Policy::from_json(br#"{"backends":["sev-snp"]}"#).unwrap();
    assert!(matches!(
        eval(&p),
        Err(AttestError::BackendNotAllowed {
            backend: Backend::Tdx
        })
    ));
    // Another Intel root pinned.
    let p = Policy::from_json(
        format!(
            r#"{{"backends":["tdx"],"root_key_ids":["{}"]}}"#,
            "22".repeat(48)
        )
        .as_bytes(),
    )
    .unwrap();
    assert!(matches!(
        eval(&p),
        Err(AttestError::RootKeyNotPinned { .. })
    ));
    // Collateral older than allowed at NOW (issued 2026-02-18, NOW is 2026-03-05).
    let p = Policy::from_json(br#"{"backends":["tdx"],"max_collateral_age_secs":86400}"#).unwrap();
    assert!(matches!(
        eval(&p),
        Err(AttestError::CollateralTooOld { .. })
    ));
}

#[test]
fn bad_policy_files_are_refused() {
    for (json, needle) in [
        (&br#"{}"#[..], "backends"),
        (br#"{"backends":[]}"#, "empty"),
        (br#"{"backends":["sgx"]}"#, "sgx"),
        // An unattested peer is a verifier's setting, not a policy backend.
        (br#"{"backends":["none"]}"#, "unknown backend \"none\""),
        (br#"{"backends":["sim"]}"#, "test_network"),
        (
            br#"{"backends":["tdx"],"image_hashes":["abcd"]}"#,
            "image_hashes",
        ),
        (br#"{"backends":["tdx"],"mrtds":["zz"]}"#, "mrtds"),
        (br#"{"backends":["tdx"],"min_tcb_status":"Great"}"#, "Great"),
        (
            br#"{"backends":["tdx"],"allow_everything":true}"#,
            "allow_everything",
        ),
        (b"not json", "expected"),
    ] {
        match Policy::from_json(json) {
            Err(AttestError::InvalidPolicy(msg)) => {
                assert!(
                    msg.contains(needle),
                    "{}: {msg}",
                    String::from_utf8_lossy(json)
                )
            }
            r => panic!(
                "{}: expected InvalidPolicy, got {r:?}",
                String::from_utf8_lossy(json)
            ),
        }
    }
    let p = Policy::from_json(br#"{"backends":["sim","tdx"],"test_network":true}"#).unwrap();
    assert!(p.is_test_network && p.allowed_backends.contains(&Backend::Sim));
}

#[test]
fn sev_policy_file_floors_and_crl_settings() {
    use cocoon_attest::sev::{DEFAULT_CRL_GRACE_SECS, SevMinTcb, SevTcb};
    // Defaults: AMD's bulletin floors, a fresh CRL required, a week of grace.
    let p = Policy::from_json(br#"{"backends":["sev-snp"]}"#).unwrap();
    assert_eq!(p.sev.min_tcb, SevMinTcb::AMD_BULLETINS);
    assert!(p.sev.require_crl);
    assert_eq!(p.sev.crl_grace_secs, DEFAULT_CRL_GRACE_SECS);
    assert_eq!(p.sev_collateral, None);

    // Per product: named products change, the others keep the default floor.
    let p = Policy::from_json(
        br#"{"backends":["sev-snp"],
             "sev":{"min_tcb":{"turin":{"fmc":1,"bootloader":1,"tee":1,"snp":5,"microcode":97}},
                    "require_crl":false,"crl_grace_secs":0}}"#,
    )
    .unwrap();
    assert_eq!(
        p.sev.min_tcb.turin,
        SevTcb {
            fmc: 1,
            bootloader: 1,
            tee: 1,
            snp: 5,
            microcode: 97
        }
    );
    assert_eq!(p.sev.min_tcb.milan, SevMinTcb::AMD_BULLETINS.milan);
    assert_eq!(p.sev.min_tcb.genoa, SevMinTcb::AMD_BULLETINS.genoa);
    assert!(!p.sev.require_crl);
    assert_eq!(p.sev.crl_grace_secs, 0);

    // Unknown products, unknown TCB fields and out-of-range values are errors.
    for bad in [
        r#"{"backends":["sev-snp"],"sev":{"min_tcb":{"rome":{"bootloader":1,"tee":0,"snp":1,"microcode":1}}}}"#,
        r#"{"backends":["sev-snp"],"sev":{"min_tcb":{"bootloader":1,"tee":0,"snp":1,"microcode":1,"x":1}}}"#,
        r#"{"backends":["sev-snp"],"sev":{"min_tcb":{"bootloader":1,"tee":0,"snp":1,"microcode":256}}}"#,
        r#"{"backends":["sev-snp"],"sev":{"require_crl":"yes"}}"#,
    ] {
        assert!(
            matches!(
                Policy::from_json(bad.as_bytes()),
                Err(AttestError::InvalidPolicy(_))
            ),
            "{bad}"
        );
    }
}
