//! Unit tests of SEV-SNP parsing and verification on the public sample evidence.

use super::certs::*;
use super::report::*;
use super::verify::*;
use super::*;
use sha2::{Digest, Sha256};

/// The bytes of `testvectors/attest/sev/{name}`.
fn vector(name: &str) -> Vec<u8> {
    crate::test_vectors::vector(&format!("sev/{name}"))
}

/// 2026-01-01T00:00:00Z: all test certificates are valid then.
const JAN_2026: i64 = 1_767_225_600;

fn verify_at_2026(
    report: &[u8],
    vcek_der: &[u8],
    chain_pem: &[u8],
    policy: &SevPolicy,
) -> Result<SevReportInfo, SevError> {
    verify_report_at(report, vcek_der, chain_pem, policy, JAN_2026)
}

#[test]
fn certificate_validity_enforced() {
    let report = milan_report();
    let (vcek, chain) = (vector("vcek_milan.der"), vector("cert_chain_milan"));
    let policy = SevPolicy::default();
    // Milan VCEK: 2023-04-03 .. 2030-04-03; ARK: 2020-10-22 .. 2045-10-22.
    let err = verify_report_at(&report, &vcek, &chain, &policy, 1_950_000_000).unwrap_err();
    assert!(
        matches!(err, SevError::CertNotValidAt { which: "VCEK", .. }),
        "{err}"
    );
    let err = verify_report_at(&report, &vcek, &chain, &policy, 1_500_000_000).unwrap_err();
    assert!(
        matches!(err, SevError::CertNotValidAt { which: "ARK", .. }),
        "{err}"
    );
    // At the system clock: crates/attest/tests/sev_policy.rs (this crate reads no clock).
}

fn milan_report() -> Vec<u8> {
    decode_report_hex(&vector("report_milan.hex")).unwrap()
}

/// The public sample report is from 2022 (bootloader 3, tee 0, snp 8, microcode 115),
/// far below AMD's current floors ([`SevMinTcb::AMD_BULLETINS`] refuses it, see
/// `default_floor_refuses_the_2022_sample`): tests of the other checks drop the floor.
fn lenient() -> SevPolicy {
    SevPolicy {
        min_tcb: SevMinTcb::NONE,
        ..SevPolicy::default()
    }
}

fn verify_milan(report: &[u8], policy: &SevPolicy) -> Result<SevReportInfo, SevError> {
    verify_at_2026(
        report,
        &vector("vcek_milan.der"),
        &vector("cert_chain_milan"),
        policy,
    )
}

#[test]
fn milan_report_verifies() {
    let report = milan_report();
    assert_eq!(report.len(), REPORT_LEN);
    let info = verify_milan(&report, &lenient()).expect("Milan report verifies");
    assert_eq!(info.version, 2);
    assert_eq!(&info.measurement[..4], &[0x7a, 0x1e, 0x5c, 0x26]);
    assert_eq!(
        info.reported_tcb,
        SevTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: 0,
        }
    );
    assert!(!info.debug_allowed);
    assert!(!info.migrate_ma_allowed);
    assert_eq!(info, parse_report(&report).unwrap());
    assert_eq!(info, parse_report_hex(&vector("report_milan.hex")).unwrap());
    let mut h = Sha256::new();
    h.update(info.measurement);
    h.update(info.host_data);
    assert_eq!(image_hash(&info), <[u8; 32]>::from(h.finalize()));
}

#[test]
fn flipped_report_data_rejected() {
    let mut report = milan_report();
    report[OFF_REPORT_DATA] ^= 1;
    assert!(matches!(
        verify_milan(&report, &lenient()),
        Err(SevError::ReportSignature)
    ));
}

#[test]
fn flipped_signature_rejected() {
    let mut report = milan_report();
    report[OFF_SIG_R + 5] ^= 0x10;
    assert!(matches!(
        verify_milan(&report, &lenient()),
        Err(SevError::ReportSignature)
    ));
    let mut report = milan_report();
    report[OFF_SIG_S] ^= 1;
    assert!(matches!(
        verify_milan(&report, &lenient()),
        Err(SevError::ReportSignature)
    ));
    // High (unused) bytes of r must be zero.
    let mut report = milan_report();
    report[OFF_SIG_R + 60] ^= 1;
    assert!(matches!(
        verify_milan(&report, &lenient()),
        Err(SevError::SignatureEncoding { component: "r" })
    ));
}

#[test]
fn milan_report_with_turin_certs_rejected() {
    let report = milan_report();
    let err = verify_at_2026(
        &report,
        &vector("vcek_turin.der"),
        &vector("cert_chain_turin"),
        &lenient(),
    )
    .unwrap_err();
    assert!(matches!(err, SevError::ReportSignature), "{err}");
    // Milan VCEK under the Turin chain: the Turin ASK did not sign it.
    let err = verify_at_2026(
        &report,
        &vector("vcek_milan.der"),
        &vector("cert_chain_turin"),
        &lenient(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SevError::CertSignature {
                signer: "ASK",
                signee: "VCEK",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn turin_chain_is_pinned_and_valid() {
    let ders = pem_certs(&vector("cert_chain_turin")).unwrap();
    assert_eq!(ders.len(), 2);
    assert_eq!(builtin_generation(&ders[1]), Some(SevGeneration::Turin));
    let ders = pem_certs(&vector("cert_chain_milan")).unwrap();
    assert_eq!(builtin_generation(&ders[1]), Some(SevGeneration::Milan));
    let vcek = vector("vcek_turin.der");
    let f = vcek_fields(&parse_x509("VCEK", &vcek).unwrap()).unwrap();
    assert_eq!(f.hwid.len(), 8);
    assert_eq!(f.tcb.microcode, 9);
    assert_eq!(f.fmc, Some(0));
}

#[test]
fn turin_vcek_chain_verifies() {
    let g = verify_vcek_chain(
        &vector("vcek_turin.der"),
        &vector("cert_chain_turin"),
        JAN_2026,
    )
    .unwrap();
    assert_eq!(g, SevGeneration::Turin);
    let g = verify_vcek_chain(
        &vector("vcek_milan.der"),
        &vector("cert_chain_milan"),
        JAN_2026,
    )
    .unwrap();
    assert_eq!(g, SevGeneration::Milan);
    assert!(matches!(
        verify_vcek_chain(
            &vector("vcek_turin.der"),
            &vector("cert_chain_milan"),
            JAN_2026
        ),
        Err(SevError::CertSignature {
            signer: "ASK",
            signee: "VCEK",
            ..
        })
    ));
}

#[test]
fn truncated_certs_never_panic() {
    let report = milan_report();
    let (vcek, chain) = (vector("vcek_milan.der"), vector("cert_chain_milan"));
    for n in (0..vcek.len()).step_by(7) {
        assert!(verify_at_2026(&report, &vcek[..n], &chain, &lenient()).is_err());
    }
    // x509-parser's PEM reader tolerates a cut inside the final END line, so only prefixes
    // that end before it must fail; none may panic.
    let last_end = chain.len() - b"-----END CERTIFICATE-----\n".len();
    for n in (0..chain.len()).step_by(37) {
        let r = verify_at_2026(&report, &vcek, &chain[..n], &lenient());
        assert!(n >= last_end || r.is_err(), "prefix {n} accepted");
    }
}

#[test]
fn self_made_or_broken_chain_rejected() {
    let report = milan_report();
    let chain = vector("cert_chain_milan");
    let ders = pem_certs(&chain).unwrap();
    // ASK alone / ARK twice.
    let only_ask = pem_encode(&[&ders[0]]);
    assert!(matches!(
        verify_milan_chain(&report, &only_ask),
        Err(SevError::ChainCertCount(1))
    ));
    let two_arks = pem_encode(&[&ders[1], &ders[1]]);
    assert!(matches!(
        verify_milan_chain(&report, &two_arks),
        Err(SevError::ChainNoArk)
    ));
    // ARK with one byte changed in its signature: not a built-in root.
    let mut fake_ark = ders[1].clone();
    let n = fake_ark.len();
    fake_ark[n - 10] ^= 1;
    let fake = pem_encode(&[&ders[0], &fake_ark]);
    assert!(matches!(
        verify_milan_chain(&report, &fake),
        Err(SevError::UnknownArk)
    ));
    // ARK first also accepted.
    let swapped = pem_encode(&[&ders[1], &ders[0]]);
    verify_milan_chain(&report, &swapped).unwrap();
    assert!(matches!(
        verify_milan_chain(&report, b"garbage"),
        Err(SevError::ChainCertCount(0)) | Err(SevError::ChainPem(_))
    ));
}

fn verify_milan_chain(report: &[u8], chain: &[u8]) -> Result<SevReportInfo, SevError> {
    verify_at_2026(report, &vector("vcek_milan.der"), chain, &lenient())
}

fn pem_encode(ders: &[&Vec<u8>]) -> Vec<u8> {
    use std::fmt::Write;
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for der in ders {
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let v = chunk
                .iter()
                .enumerate()
                .fold(0u32, |a, (i, &b)| a | (u32::from(b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        writeln!(out, "-----BEGIN CERTIFICATE-----").unwrap();
        for line in b64.as_bytes().chunks(64) {
            writeln!(out, "{}", std::str::from_utf8(line).unwrap()).unwrap();
        }
        writeln!(out, "-----END CERTIFICATE-----").unwrap();
    }
    out.into_bytes()
}

#[test]
fn wrong_vcek_bytes_rejected() {
    let report = milan_report();
    let mut vcek = vector("vcek_milan.der");
    let n = vcek.len();
    vcek[n - 5] ^= 1; // inside the ASK's signature over the VCEK
    let err = verify_at_2026(&report, &vcek, &vector("cert_chain_milan"), &lenient()).unwrap_err();
    assert!(
        matches!(err, SevError::CertSignature { signee: "VCEK", .. }),
        "{err}"
    );
    assert!(matches!(
        verify_at_2026(&report, b"junk", &vector("cert_chain_milan"), &lenient()),
        Err(SevError::CertParse { which: "VCEK", .. })
    ));
}

#[test]
fn min_tcb_above_reported_rejected() {
    let report = milan_report();
    for (component, min_tcb) in [
        (
            "bootloader",
            SevTcb {
                bootloader: 4,
                ..SevTcb::default()
            },
        ),
        (
            "tee",
            SevTcb {
                tee: 1,
                ..SevTcb::default()
            },
        ),
        (
            "snp",
            SevTcb {
                snp: 9,
                ..SevTcb::default()
            },
        ),
        (
            "microcode",
            SevTcb {
                microcode: 116,
                ..SevTcb::default()
            },
        ),
    ] {
        let policy = SevPolicy {
            min_tcb: SevMinTcb::uniform(min_tcb),
            ..SevPolicy::default()
        };
        let err = verify_milan(&report, &policy).unwrap_err();
        assert!(
            matches!(err, SevError::TcbTooLow { component: c, .. } if c == component),
            "{err}"
        );
        assert!(err.to_string().contains(component));
    }
    let exact = SevPolicy {
        min_tcb: SevMinTcb::uniform(SevTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            // No FMC on Milan: a floor here does not apply to it.
            fmc: 9,
        }),
        ..SevPolicy::default()
    };
    verify_milan(&report, &exact).unwrap();
    // Only the Milan floor applies to a Milan report.
    let other_products = SevPolicy {
        min_tcb: SevMinTcb {
            milan: SevTcb::default(),
            ..SevMinTcb::uniform(SevTcb {
                microcode: 255,
                ..SevTcb::default()
            })
        },
        ..SevPolicy::default()
    };
    verify_milan(&report, &other_products).unwrap();
}

#[test]
fn default_floor_refuses_the_2022_sample() {
    // The sample (snp 8, microcode 115) predates AMD-SB-3019 (snp 22, microcode 219):
    // the default policy refuses it, naming the product and the first low component.
    let err = verify_milan(&milan_report(), &SevPolicy::default()).unwrap_err();
    assert!(
        matches!(
            err,
            SevError::TcbTooLow {
                product: SevGeneration::Milan,
                component: "snp",
                reported: 8,
                min: 22
            }
        ),
        "{err}"
    );
    // A report at the floor passes the TCB check; one microcode step below does not.
    let mut info = parse_report(&milan_report()).unwrap();
    info.reported_tcb = SevMinTcb::AMD_BULLETINS.milan;
    check_policy(&info, &SevPolicy::default(), SevGeneration::Milan).unwrap();
    info.reported_tcb.microcode -= 1;
    assert!(matches!(
        check_policy(&info, &SevPolicy::default(), SevGeneration::Milan),
        Err(SevError::TcbTooLow {
            component: "microcode",
            ..
        })
    ));
}

#[test]
fn turin_tcb_layout_and_fmc_floor() {
    // Turin TCB_VERSION: [fmc, bl, tee, snp, 0, 0, 0, ucode]; Milan/Genoa:
    // [bl, tee, 0, 0, 0, 0, snp, ucode].
    let raw = [2, 3, 1, 5, 0, 0, 0, 0x61];
    let turin = decode_tcb(raw, true);
    assert_eq!(
        turin,
        SevTcb {
            fmc: 2,
            bootloader: 3,
            tee: 1,
            snp: 5,
            microcode: 0x61
        }
    );
    let milan = decode_tcb([3, 0, 0, 0, 0, 0, 8, 115], false);
    assert_eq!((milan.bootloader, milan.snp, milan.fmc), (3, 8, 0));

    // The default Turin floor (snp 4, microcode 0x51) accepts this TCB; an FMC floor
    // above the reported FMC refuses it, on Turin only.
    let mut info = parse_report(&milan_report()).unwrap();
    info.reported_tcb = turin;
    check_policy(&info, &SevPolicy::default(), SevGeneration::Turin).unwrap();
    let fmc3 = SevPolicy {
        min_tcb: SevMinTcb {
            turin: SevTcb {
                fmc: 3,
                ..SevMinTcb::AMD_BULLETINS.turin
            },
            ..SevMinTcb::AMD_BULLETINS
        },
        ..SevPolicy::default()
    };
    assert!(matches!(
        check_policy(&info, &fmc3, SevGeneration::Turin),
        Err(SevError::TcbTooLow {
            product: SevGeneration::Turin,
            component: "fmc",
            reported: 2,
            min: 3
        })
    ));
    // Below the Turin microcode floor of AMD-SB-3027.
    info.reported_tcb.microcode = 0x50;
    assert!(matches!(
        check_policy(&info, &SevPolicy::default(), SevGeneration::Turin),
        Err(SevError::TcbTooLow {
            component: "microcode",
            ..
        })
    ));
    // The real Turin VCEK's TCB extensions carry the FMC (0 here) and decode with it.
    let vcek = vector("vcek_turin.der");
    let f = vcek_fields(&parse_x509("VCEK", &vcek).unwrap()).unwrap();
    assert_eq!((f.fmc, f.tcb.fmc), (Some(0), 0));
}

#[test]
fn policy_checks_on_parsed_values() {
    let base = parse_report(&milan_report()).unwrap();
    let policy = lenient();
    let m = SevGeneration::Milan;
    check_policy(&base, &policy, m).unwrap();

    let debug = SevReportInfo {
        debug_allowed: true,
        ..base.clone()
    };
    assert!(matches!(
        check_policy(&debug, &policy, m),
        Err(SevError::DebugAllowed)
    ));
    check_policy(
        &debug,
        &SevPolicy {
            allow_debug: true,
            ..policy
        },
        m,
    )
    .unwrap();

    let ma = SevReportInfo {
        migrate_ma_allowed: true,
        ..base.clone()
    };
    assert!(matches!(
        check_policy(&ma, &policy, m),
        Err(SevError::MigrationAgentAllowed)
    ));
    check_policy(
        &ma,
        &SevPolicy {
            allow_migration_agent: true,
            ..policy
        },
        m,
    )
    .unwrap();

    let vmpl2 = SevReportInfo {
        vmpl: 2,
        ..base.clone()
    };
    assert!(matches!(
        check_policy(&vmpl2, &policy, m),
        Err(SevError::VmplNotZero(2))
    ));
    check_policy(
        &vmpl2,
        &SevPolicy {
            require_vmpl0: false,
            ..policy
        },
        m,
    )
    .unwrap();

    // Policy bits as parsed from the raw report.
    let mut raw = milan_report();
    raw[OFF_POLICY + 2] |= 1 << 3; // bit 19: debug
    assert!(parse_report(&raw).unwrap().debug_allowed);
    let mut raw = milan_report();
    raw[OFF_POLICY + 2] |= 1 << 2; // bit 18: migration agent
    assert!(parse_report(&raw).unwrap().migrate_ma_allowed);
    // And the signature then no longer verifies.
    assert!(matches!(
        verify_milan(&raw, &lenient()),
        Err(SevError::ReportSignature)
    ));
}

#[test]
fn tcb_mismatch_with_vcek_detected() {
    let vcek = SevTcb {
        bootloader: 3,
        tee: 0,
        snp: 8,
        microcode: 115,
        fmc: 0,
    };
    compare_tcb(vcek, vcek).unwrap();
    let err = compare_tcb(SevTcb { snp: 7, ..vcek }, vcek).unwrap_err();
    assert!(matches!(
        err,
        SevError::TcbMismatch {
            component: "snp",
            reported: 7,
            vcek: 8
        }
    ));
}

#[test]
fn ext_integer_parsing() {
    assert_eq!(ext_u8("x", &[0x02, 0x01, 0x73]).unwrap(), 115);
    assert_eq!(ext_u8("x", &[0x02, 0x02, 0x00, 0xd5]).unwrap(), 0xd5);
    assert!(ext_u8("x", &[0x02, 0x01, 0x80]).is_err());
    assert!(ext_u8("x", &[0x02, 0x02, 0x01, 0x00]).is_err());
    assert!(ext_u8("x", &[0x04, 0x01, 0x01]).is_err());
    assert!(ext_u8("x", &[0x02, 0x05, 0x01]).is_err());
    assert!(ext_u8("x", &[]).is_err());
}

#[test]
fn parse_never_panics_on_prefixes_and_garbage() {
    let report = milan_report();
    for n in 0..report.len() {
        assert!(matches!(
            parse_report(&report[..n]),
            Err(SevError::ReportLength { .. })
        ));
    }
    let mut longer = report.clone();
    longer.push(0);
    assert!(parse_report(&longer).is_err());
    // Deterministic pseudo-random garbage of the right length.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..64 {
        let buf: Vec<u8> = (0..REPORT_LEN)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = parse_report(&buf);
        let _ = verify_milan(&buf, &lenient());
    }
    assert!(matches!(
        parse_report(&[0u8; REPORT_LEN]),
        Err(SevError::UnsupportedVersion(0))
    ));
    assert!(parse_report_hex(b"zz").is_err());
    assert!(parse_report_hex(b"abc").is_err());
    for n in [0, 1, 100, REPORT_LEN] {
        let _ = verify_milan(&report[..n], &lenient());
    }
}
