//! TDX verification against real quotes and collateral in `testvectors/attest/`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_attest::tdx::{self, INTEL_ROOT_KEY_ID};
use cocoon_attest::{
    AttestError, Backend, CollateralStore, Evidence, Measurements, Policy, TcbStatus, TdxCollateral,
};

#[path = "../src/test_vectors.rs"]
mod test_vectors;
use test_vectors::vector;

/// 2025-07-04T12:00:00Z, inside the dcap-qvl sample collateral window.
const NOW_2025: u64 = 1_751_630_400;
/// 2026-03-05, inside the FMSPC 90c06f000000 collateral window (COCOON's sample).
const NOW_2026: u64 = 1_772_707_833;

/// Image hash of `cocoon_quote.dat`, computed independently of this crate:
///
/// ```python
/// import hashlib
/// q = open('cocoon_quote.dat', 'rb').read()
/// o = 48 + 16 + 48 + 48 + 8 + 8 + 8   # header, tee_tcb_svn, mrseam, mrsignerseam,
///                                     # seam_attributes, td_attributes, xfam
/// # mrtd, mrconfigid, mrowner, mrownerconfig, rtmr0..3 (8 x 48 bytes), then 64 zero bytes
/// print(hashlib.sha256(q[o:o + 48 * 8] + bytes(64)).hexdigest())
/// ```
const COCOON_IMAGE_HASH: &str = "04b3afd931d28680af91a15b09d672c40ad6b141f7f9089a8d67d595220f7436";
/// Same script over `tdx_quote`.
const SAMPLE_IMAGE_HASH: &str = "b260fa9168ca9f28e7f15f128a45ac31c419705b31a60feac30b322ee06bc752";

fn collateral(name: &str) -> TdxCollateral {
    TdxCollateral::from_json(&vector(name)).expect("collateral parses")
}

fn report_data(quote: &[u8]) -> [u8; 64] {
    tdx::parse_quote(quote).expect("parses").report_data
}

fn eval(
    policy: &Policy,
    quote: &[u8],
    coll: &TdxCollateral,
    now: u64,
) -> Result<cocoon_attest::VerifiedPeer, AttestError> {
    let rd = report_data(quote);
    policy.evaluate(
        &Evidence::Tdx {
            quote,
            collateral: coll,
        },
        &rd,
        now,
    )
}

fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn sample_tdx_quote_up_to_date() {
    let quote = vector("tdx_quote");
    let coll = collateral("tdx_quote_collateral.json");
    let peer = eval(&Policy::tdx_default(), &quote, &coll, NOW_2025).expect("accepted");
    assert_eq!(peer.backend(), Backend::Tdx);
    assert_eq!(peer.tcb_status(), TcbStatus::UpToDate);
    assert!(peer.advisory_ids().is_empty());
    assert_eq!(peer.image_hash(), &hex32(SAMPLE_IMAGE_HASH));
    assert_eq!(peer.report_data(), &report_data(&quote));
    assert_eq!(peer.public_key(), None);
    assert!(peer.valid_until() > NOW_2025);
    assert!(peer.valid_until() <= NOW_2025 + 86_400);
}

#[test]
fn sample_tdx_quote_outside_window() {
    let quote = vector("tdx_quote");
    let coll = collateral("tdx_quote_collateral.json");
    // 2025-08-01: TCB info expired on 2025-07-19.
    match eval(&Policy::tdx_default(), &quote, &coll, 1_754_006_400) {
        Err(AttestError::CollateralExpired {
            what,
            not_after,
            now,
        }) => {
            assert_eq!(what, "TCB info for FMSPC B0C06F000000");
            assert_eq!(not_after, 1_752_920_163); // 2025-07-19T10:16:03Z
            assert_eq!(now, 1_754_006_400);
        }
        other => panic!("expected CollateralExpired, got {other:?}"),
    }
    // 2025-06-01: not yet issued.
    assert!(matches!(
        eval(&Policy::tdx_default(), &quote, &coll, 1_748_736_000),
        Err(AttestError::CollateralNotYetValid { .. })
    ));
}

#[test]
fn max_collateral_age() {
    let quote = vector("tdx_quote");
    let coll = collateral("tdx_quote_collateral.json");
    let policy = Policy {
        max_collateral_age: Some(86_400),
        ..Policy::tdx_default()
    };
    assert!(matches!(
        eval(&policy, &quote, &coll, NOW_2025),
        Err(AttestError::CollateralTooOld {
            max_age: 86_400,
            ..
        })
    ));
}

#[test]
fn cocoon_quote_up_to_date_with_its_collateral() {
    let quote = vector("cocoon_quote.dat");
    let coll = collateral("cocoon_quote_collateral_90c06f.json");
    let parsed = tdx::parse_quote(&quote).unwrap();
    assert_eq!(parsed.version, 4);
    assert_eq!(parsed.fmspc, Some([0x90, 0xc0, 0x6f, 0, 0, 0]));
    let peer = eval(&Policy::tdx_default(), &quote, &coll, NOW_2026).expect("accepted");
    assert_eq!(peer.tcb_status(), TcbStatus::UpToDate);
    assert_eq!(peer.image_hash(), &hex32(COCOON_IMAGE_HASH));
    assert_eq!(hex::encode(&peer.report_data()[..8]), "d21efaa8d7de2b0f");
    let Measurements::Tdx(m) = peer.measurements() else {
        panic!("not TDX measurements")
    };
    assert_eq!(hex::encode(&m.mrtd[..4]), "7357a10d");
    assert_eq!(hex::encode(&m.rtmr[0][..4]), "251a7f3c");
    assert_eq!(m.rtmr[3], [0u8; 48]);
    assert_eq!(tdx::image_hash(m), hex32(COCOON_IMAGE_HASH));

    // Image-hash allowlist: accepted when listed, rejected otherwise.
    let listed = Policy {
        allowed_image_hashes: vec![hex32(COCOON_IMAGE_HASH)],
        allowed_mrtds: vec![m.mrtd],
        allowed_rtmrs: vec![m.rtmr],
        ..Policy::tdx_default()
    };
    eval(&listed, &quote, &coll, NOW_2026).expect("allowlisted");
    let other = Policy {
        allowed_image_hashes: vec![hex32(SAMPLE_IMAGE_HASH)],
        ..Policy::tdx_default()
    };
    match eval(&other, &quote, &coll, NOW_2026) {
        Err(AttestError::ImageHashNotAllowed { image_hash }) => {
            assert_eq!(image_hash, hex32(COCOON_IMAGE_HASH))
        }
        r => panic!("expected ImageHashNotAllowed, got {r:?}"),
    }
    let mrtd = Policy {
        allowed_mrtds: vec![[1; 48]],
        ..Policy::tdx_default()
    };
    assert!(matches!(
        eval(&mrtd, &quote, &coll, NOW_2026),
        Err(AttestError::MrtdNotAllowed { .. })
    ));
    let rtmrs = Policy {
        allowed_rtmrs: vec![[[1; 48]; 4]],
        ..Policy::tdx_default()
    };
    assert!(matches!(
        eval(&rtmrs, &quote, &coll, NOW_2026),
        Err(AttestError::RtmrsNotAllowed { .. })
    ));
}

#[test]
fn cocoon_quote_rejected_with_2025_collateral() {
    let quote = vector("cocoon_quote.dat");
    let coll = collateral("tdx_quote_collateral.json");
    // In the 2025 window, DCAP fails (PCK certificate issued later / other FMSPC).
    assert!(matches!(
        eval(&Policy::tdx_default(), &quote, &coll, NOW_2025),
        Err(AttestError::Dcap(_))
    ));
    // In 2026 the 2025 collateral has expired.
    assert!(matches!(
        eval(&Policy::tdx_default(), &quote, &coll, NOW_2026),
        Err(AttestError::CollateralExpired { .. })
    ));
}

#[test]
fn sgx_quote_is_not_a_td_quote() {
    let quote = vector("sgx_quote");
    let coll = collateral("sgx_quote_collateral.json");
    assert!(matches!(
        tdx::parse_quote(&quote),
        Err(AttestError::NotATdQuote)
    ));
    let r = Policy::tdx_default().evaluate(
        &Evidence::Tdx {
            quote: &quote,
            collateral: &coll,
        },
        &[0; 64],
        NOW_2025,
    );
    assert!(matches!(r, Err(AttestError::NotATdQuote)), "{r:?}");
}

/// Offsets in a v4 TD 1.0 quote.
const TD_ATTRIBUTES: usize = 48 + 16 + 48 + 48 + 8;
const REPORT_DATA: usize = 48 + 584 - 64;
const SIGNATURE: usize = 48 + 584 + 4;

#[test]
fn flipped_bits_rejected() {
    let quote = vector("tdx_quote");
    let coll = collateral("tdx_quote_collateral.json");
    for (what, offset) in [
        ("report_data", REPORT_DATA + 5),
        ("mrtd", TD_ATTRIBUTES + 16 + 3),
        ("signature", SIGNATURE + 10),
    ] {
        let mut q = quote.clone();
        q[offset] ^= 0x01;
        let r = eval(&Policy::tdx_default(), &q, &coll, NOW_2025);
        assert!(matches!(r, Err(AttestError::Dcap(_))), "{what}: {r:?}");
    }
}

#[test]
fn debug_td_rejected() {
    let quote = vector("tdx_quote");
    let coll = collateral("tdx_quote_collateral.json");
    let mut q = quote.clone();
    q[TD_ATTRIBUTES] |= 0x01;
    let r = eval(&Policy::tdx_default(), &q, &coll, NOW_2025);
    assert!(matches!(r, Err(AttestError::DebugTd { .. })), "{r:?}");
    // The check itself on parsed values.
    let m = tdx::parse_quote(&quote).unwrap().measurements;
    assert!(tdx::check_td_attributes(&m.td_attributes).is_ok());
    let mut attrs = m.td_attributes;
    attrs[0] |= 1;
    assert!(matches!(
        tdx::check_td_attributes(&attrs),
        Err(AttestError::DebugTd { .. })
    ));
}

#[test]
fn root_key_must_be_pinned() {
    let quote = vector("tdx_quote");
    let coll = collateral("tdx_quote_collateral.json");
    for ids in [vec![[0xAB; 48]], vec![]] {
        let policy = Policy {
            allowed_root_key_ids: ids,
            ..Policy::tdx_default()
        };
        match eval(&policy, &quote, &coll, NOW_2025) {
            Err(AttestError::RootKeyNotPinned { root_key_id }) => {
                assert_eq!(root_key_id, INTEL_ROOT_KEY_ID.to_vec())
            }
            r => panic!("expected RootKeyNotPinned, got {r:?}"),
        }
    }
}

#[test]
fn report_data_mismatch_and_backend() {
    let quote = vector("tdx_quote");
    let coll = collateral("tdx_quote_collateral.json");
    let ev = Evidence::Tdx {
        quote: &quote,
        collateral: &coll,
    };
    assert!(matches!(
        Policy::tdx_default().evaluate(&ev, &[7; 64], NOW_2025),
        Err(AttestError::ReportDataMismatch)
    ));
    let sev_only = Policy {
        allowed_backends: vec![Backend::SevSnp],
        ..Policy::tdx_default()
    };
    assert!(matches!(
        sev_only.evaluate(&ev, &report_data(&quote), NOW_2025),
        Err(AttestError::BackendNotAllowed {
            backend: Backend::Tdx
        })
    ));
}

#[test]
fn tcb_status_order() {
    // Every status, worst first, in strictly increasing order.
    assert!(TcbStatus::ALL.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn collateral_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = CollateralStore::new(dir.path());
    let quote = vector("cocoon_quote.dat");
    match store.load_for_quote(&quote, NOW_2026) {
        Err(AttestError::MissingCollateral { what }) => assert!(what.contains("90c06f000000")),
        r => panic!("expected MissingCollateral, got {r:?}"),
    }
    std::fs::write(
        dir.path().join("90c06f000000.json"),
        vector("cocoon_quote_collateral_90c06f.json"),
    )
    .unwrap();
    let coll = store.load_for_quote(&quote, NOW_2026).expect("loads");
    eval(&Policy::tdx_default(), &quote, &coll, NOW_2026).expect("accepted");
    assert!(matches!(
        store.load_for_quote(&quote, NOW_2026 + 60 * 86_400),
        Err(AttestError::CollateralExpired { .. })
    ));
    // A file holding another FMSPC's collateral is refused.
    std::fs::write(
        dir.path().join("b0c06f000000.json"),
        vector("cocoon_quote_collateral_90c06f.json"),
    )
    .unwrap();
    assert!(matches!(
        store.load(&[0xb0, 0xc0, 0x6f, 0, 0, 0], NOW_2026),
        Err(AttestError::InvalidCollateral { .. })
    ));
}

#[test]
fn v5_quote_parses_and_dcap_errors_are_reported() {
    let quote = vector("tdx_quote_v5_outdated");
    let parsed = tdx::parse_quote(&quote).expect("v5 parses");
    assert_eq!(parsed.version, 5);
    assert_eq!(parsed.fmspc, Some([0x90, 0xc0, 0x6f, 0, 0, 0]));
    let coll = collateral("cocoon_quote_collateral_90c06f.json");
    match eval(&Policy::tdx_default(), &quote, &coll, NOW_2026) {
        Err(AttestError::Dcap(msg)) => assert!(!msg.is_empty()),
        r => panic!("expected a DCAP error, got {r:?}"),
    }
}
