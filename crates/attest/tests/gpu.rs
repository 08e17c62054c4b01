//! NVIDIA GPU evidence: NVIDIA's own Hopper sample (testvectors/gpu/, from
//! nv-local-gpu-verifier 2.7.3) verifies, and every tamper is refused.
//!
//! NVIDIA's `test_no_gpu` RIMs are for driver 545.00 and VBIOS 96.00.5E.00.01, the sample
//! report for 550.90.07 and 96.00.9f.00.01: NVIDIA's own verifier (run offline, see
//! testvectors/gpu/README.md) finds 20 mismatched measurements, and so do we, the same ones.
//! For the accepting path the tests re-target those RIMs at the sample: each mismatched
//! active measurement's first alternative is replaced by the report's value, in the XML text.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_attest::Fault;
use cocoon_attest::gpu::{
    self, GpuError, GpuEvidence, GpuPolicy, NVIDIA_RIM_ROOT_SHA256, RimSignature, report, rim,
};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testvectors/gpu/");
/// The nonce NVIDIA's sample request carries.
const SAMPLE_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
/// 2025-01-01T00:00:00Z: inside every GPU certificate's window (2022-03-01 … 9999-12-31),
/// and the time NVIDIA's verifier was run at for the comparison.
const NOW: u64 = 1_735_689_600;
/// What NVIDIA's verifier reports for the sample and its test RIMs.
const NVIDIA_MISMATCHES: [(u32, &str); 20] = [
    (1, "vbios"),
    (2, "vbios"),
    (3, "vbios"),
    (7, "driver"),
    (9, "vbios"),
    (11, "vbios"),
    (21, "driver"),
    (22, "driver"),
    (25, "driver"),
    (26, "driver"),
    (27, "driver"),
    (29, "driver"),
    (30, "driver"),
    (31, "driver"),
    (32, "driver"),
    (34, "driver"),
    (36, "driver"),
    (37, "driver"),
    (39, "driver"),
    (40, "driver"),
];

fn file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}{name}")).unwrap()
}

#[derive(Clone)]
struct Sample {
    report: Vec<u8>,
    chain: Vec<u8>,
    driver: Vec<u8>,
    vbios: Vec<u8>,
}

fn nvidia_sample() -> Sample {
    Sample {
        report: report::decode_hex(&file("hopperAttestationReport.txt")).unwrap(),
        chain: file("hopperCertChain.txt"),
        driver: file("Driver_RIM_test_no_gpu.swidtag"),
        vbios: file("1010_0200_882_96005E0001_test_no_gpu.swidtag"),
    }
}

/// Byte offset of the attribute value `attr="` inside the `Resource` of `index`.
fn hash_offset(rim_text: &str, index: u32, alternative: usize) -> usize {
    let tag = rim_text.find(&format!(" index=\"{index}\" ")).unwrap();
    let tag_end = tag + rim_text[tag..].find("/>").unwrap();
    let key = format!(":Hash{alternative}=\"");
    tag + rim_text[tag..tag_end].find(&key).unwrap() + key.len()
}

/// The sample with RIMs re-targeted at it (see the module comment).
fn sample() -> Sample {
    let mut s = nvidia_sample();
    let parsed = report::parse(&s.report).unwrap();
    for (index, component) in NVIDIA_MISMATCHES {
        let rim = if component == "driver" {
            &mut s.driver
        } else {
            &mut s.vbios
        };
        let mut text = String::from_utf8(rim.clone()).unwrap();
        let at = hash_offset(&text, index, 0);
        let value = hex::encode(parsed.blocks[&u8::try_from(index + 1).unwrap()].value);
        text.replace_range(at..at + value.len(), &value);
        *rim = text.into_bytes();
    }
    s
}

fn nonce() -> [u8; 32] {
    hex::decode(SAMPLE_NONCE).unwrap().try_into().unwrap()
}

/// The test RIMs are for other versions than the report's (NVIDIA's verifier only warns),
/// and the re-targeted ones are no longer NVIDIA-signed.
fn policy() -> GpuPolicy {
    GpuPolicy {
        require_rim_versions: false,
        require_rim_signatures: false,
        ..GpuPolicy::default()
    }
}

/// As [`policy`], with the RIMs' signatures checked (for NVIDIA's unmodified RIMs).
fn signed_policy() -> GpuPolicy {
    GpuPolicy {
        require_rim_signatures: true,
        ..policy()
    }
}

fn run_with(
    s: &Sample,
    policy: &GpuPolicy,
    nonce: &[u8; 32],
    now: u64,
) -> Result<gpu::GpuVerdict, GpuError> {
    let rims: [&[u8]; 2] = [&s.driver, &s.vbios];
    gpu::verify(
        &GpuEvidence {
            report: &s.report,
            cert_chain_pem: &s.chain,
            rims: &rims,
        },
        nonce,
        policy,
        now,
    )
}

fn run(s: &Sample) -> Result<gpu::GpuVerdict, GpuError> {
    run_with(s, &policy(), &nonce(), NOW)
}

#[test]
fn nvidia_sample_with_its_test_rims_mismatches_where_nvidia_says() {
    // Signed RIMs: their signatures verify, then 20 measurements mismatch.
    let err = run_with(&nvidia_sample(), &signed_policy(), &nonce(), NOW).unwrap_err();
    assert_eq!(
        err,
        GpuError::MeasurementMismatch(NVIDIA_MISMATCHES.to_vec())
    );
    assert_eq!(err.fault(), Fault::Peer);
}

#[test]
fn sample_verifies() {
    let v = run(&sample()).unwrap();
    assert_eq!(hex::encode(v.nonce), SAMPLE_NONCE);
    assert_eq!(v.driver_version, "550.90.07");
    assert_eq!(v.vbios_version, "96.00.9f.00.01");
    assert_eq!(v.driver_rim_version, "545.00");
    assert_eq!(v.vbios_rim_version, "96.00.5E.00.01");
    assert_eq!(v.blocks, 64);
    assert_eq!(v.chain_subjects.len(), 5);
    assert!(v.chain_subjects[4].contains("NVIDIA Device Identity CA"));
    // 21 active in the driver RIM and 12 in the VBIOS RIM, less index 35: the report says
    // NVDEC0 is disabled.
    assert!(report::parse(&sample().report).unwrap().nvdec0_disabled());
    assert_eq!(v.measurements_checked, 32);
    assert_eq!(v.rim_signature, RimSignature::NotChecked);
    // With signatures required, the re-targeted RIMs are refused: changed after signing.
    let err = run_with(&sample(), &signed_policy(), &nonce(), NOW).unwrap_err();
    assert_eq!(
        err,
        GpuError::RimSignature {
            component: "driver",
            error: gpu::xmldsig::RimSignatureError::Digest
        }
    );
    assert_eq!(err.fault(), Fault::Local);
}

#[test]
fn rim_order_does_not_matter_but_both_are_needed() {
    let s = sample();
    let swapped: [&[u8]; 2] = [&s.vbios, &s.driver];
    let ev = GpuEvidence {
        report: &s.report,
        cert_chain_pem: &s.chain,
        rims: &swapped,
    };
    gpu::verify(&ev, &nonce(), &policy(), NOW).unwrap();
    let only_driver: [&[u8]; 1] = [&s.driver];
    let ev = GpuEvidence {
        rims: &only_driver,
        ..ev
    };
    let err = gpu::verify(&ev, &nonce(), &policy(), NOW).unwrap_err();
    assert!(
        matches!(
            err,
            GpuError::RimMissing {
                component: "vbios",
                count: 0
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.fault(), Fault::Local);
}

#[test]
fn rim_versions_are_required_by_default() {
    let err = run_with(&nvidia_sample(), &GpuPolicy::default(), &nonce(), NOW).unwrap_err();
    assert_eq!(
        err,
        GpuError::RimVersion {
            component: "driver",
            rim: "545.00".into(),
            report: "550.90.07".into()
        }
    );
}

#[test]
fn report_parses_as_spdm() {
    let s = nvidia_sample();
    let r = report::parse(&s.report).unwrap();
    assert_eq!(r.request.len(), 37);
    assert_eq!(r.requested, 0xff);
    assert_eq!(hex::encode(r.request_nonce), SAMPLE_NONCE);
    assert_eq!(r.blocks.len(), 64);
    assert!(
        r.blocks
            .values()
            .all(|b| b.value.len() == 48 && b.value_type == 1)
    );
    assert_eq!(r.signature.len(), 96);
    assert_eq!(r.driver_version().as_deref(), Some("550.90.07"));
    assert_eq!(r.vbios_version().as_deref(), Some("96.00.9f.00.01"));
    // Every prefix is refused without a panic.
    for len in 0..s.report.len() {
        assert!(report::parse(&s.report[..len]).is_err(), "prefix {len}");
    }
}

/// Offsets of the report's regions, from the layout.
fn regions(report: &[u8]) -> Vec<(&'static str, usize)> {
    let r = report::parse(report).unwrap();
    let record_len =
        r.response.len() - 8 - 32 - 2 - r.opaque.values().map(|v| v.len() + 4).sum::<usize>() - 96;
    let response = 37;
    let record = response + 8;
    let response_nonce = record + record_len;
    let opaque = response_nonce + 34;
    vec![
        ("request header", 1),
        ("request nonce", 4),
        ("response header", response + 4),
        ("measurement record", record + 200),
        ("response nonce", response_nonce + 3),
        ("opaque data", opaque + 10),
        ("signature", report.len() - 5),
    ]
}

#[test]
fn every_single_byte_tamper_of_the_report_is_refused() {
    let good = sample();
    for (region, at) in regions(&good.report) {
        let mut s = good.clone();
        s.report[at] ^= 0x01;
        let err = run(&s).unwrap_err();
        assert_eq!(err.fault(), Fault::Peer, "{region}");
    }
    for at in 0..good.report.len() {
        let mut s = good.clone();
        s.report[at] ^= 0x80;
        assert!(run(&s).is_err(), "byte {at} of the report");
    }
}

/// PEM for DER certificates (standard base64, 64 columns).
fn pem(ders: &[Vec<u8>]) -> Vec<u8> {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for der in ders {
        let mut b = String::new();
        for chunk in der.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |a, &x| (a << 8) | u32::from(x)) << (8 * (3 - chunk.len()));
            for i in 0..4 {
                if i <= chunk.len() {
                    b.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    b.push('=');
                }
            }
        }
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

#[test]
fn every_single_byte_tamper_of_each_certificate_is_refused() {
    let good = sample();
    let ders = gpu::chain::pem_certs(&good.chain).unwrap();
    assert_eq!(ders.len(), 5);
    // The re-encoding itself is faithful.
    let mut s = good.clone();
    s.chain = pem(&ders);
    run(&s).unwrap();
    for (position, der) in ders.iter().enumerate() {
        for at in 0..der.len() {
            let mut tampered = ders.clone();
            tampered[position][at] ^= 0x01;
            let mut s = good.clone();
            s.chain = pem(&tampered);
            assert!(run(&s).is_err(), "certificate {position}, byte {at}");
        }
    }
}

#[test]
fn every_rim_measurement_tamper_is_refused() {
    let good = sample();
    let report = report::parse(&good.report).unwrap();
    let mut tampers = 0;
    for component in ["driver", "vbios"] {
        let bytes = if component == "driver" {
            &good.driver
        } else {
            &good.vbios
        };
        let parsed = rim::parse(bytes).unwrap();
        for (&index, m) in &parsed.measurements {
            let value = report.blocks[&u8::try_from(index + 1).unwrap()].value;
            for (alt, digest) in m.alternatives.iter().enumerate() {
                let text = String::from_utf8(bytes.clone()).unwrap();
                let at = hash_offset(&text, index, alt);
                let mut t = text.into_bytes();
                t[at + 7] = if t[at + 7] == b'a' { b'b' } else { b'a' };
                let mut s = good.clone();
                if component == "driver" {
                    s.driver = t
                } else {
                    s.vbios = t
                }
                let result = run(&s);
                let other_matches = m
                    .alternatives
                    .iter()
                    .enumerate()
                    .any(|(j, d)| j != alt && d.as_slice() == value);
                let skipped = index == 35 && report.nvdec0_disabled();
                if m.active && digest.as_slice() == value && !other_matches && !skipped {
                    assert_eq!(
                        result.unwrap_err(),
                        GpuError::MeasurementMismatch(vec![(index, component)]),
                        "{component} {index} alternative {alt}"
                    );
                    tampers += 1;
                } else {
                    // An inactive or skipped measurement, or an alternative that is not
                    // the one the GPU reports: not what decides.
                    result.unwrap();
                }
            }
        }
    }
    assert_eq!(tampers, 32);
}

#[test]
fn alternatives_and_inactive_measurements_are_honoured() {
    let good = sample();
    let report = report::parse(&good.report).unwrap();
    let driver = rim::parse(&good.driver).unwrap();
    // The driver RIM's index 23 has two alternatives; the report has the second (zeros).
    // Swap them: still accepted, on the first.
    let m = &driver.measurements[&23];
    assert_eq!(m.alternatives.len(), 2);
    assert_eq!(m.alternatives[1], report.blocks[&24].value);
    assert_ne!(m.alternatives[0], report.blocks[&24].value);
    let mut text = String::from_utf8(good.driver.clone()).unwrap();
    let (a0, a1) = (hash_offset(&text, 23, 0), hash_offset(&text, 23, 1));
    let (v0, v1) = (text[a0..a0 + 96].to_owned(), text[a1..a1 + 96].to_owned());
    text.replace_range(a0..a0 + 96, &v1);
    text.replace_range(a1..a1 + 96, &v0);
    let mut s = good.clone();
    s.driver = text.into_bytes();
    run(&s).unwrap();

    // A driver index that is inactive and whose value differs from the report's, made
    // active: now checked, and refused (as a conflict where the VBIOS RIM claims it).
    let vbios = rim::parse(&good.vbios).unwrap();
    let (&index, _) = driver
        .measurements
        .iter()
        .find(|(i, m)| {
            !m.active && m.alternatives[0] != report.blocks[&u8::try_from(**i + 1).unwrap()].value
        })
        .unwrap();
    let text = String::from_utf8(good.driver.clone()).unwrap();
    let needle = format!(" index=\"{index}\" active=\"False\"");
    assert!(text.contains(&needle));
    let text = text.replacen(&needle, &format!(" index=\"{index}\" active=\"True\""), 1);
    let mut s = good.clone();
    s.driver = text.into_bytes();
    let want = if vbios.measurements.get(&index).is_some_and(|m| m.active) {
        GpuError::IndexConflict(index)
    } else {
        GpuError::MeasurementMismatch(vec![(index, "driver")])
    };
    assert_eq!(run(&s).unwrap_err(), want);

    // An index no report can have is refused, not overflowed.
    let text = String::from_utf8(good.driver.clone()).unwrap();
    let text = text.replacen(" index=\"0\" ", " index=\"4294967295\" ", 1);
    let text = text.replacen(
        " index=\"4294967295\" active=\"False\"",
        " index=\"4294967295\" active=\"True\"",
        1,
    );
    let mut s = good.clone();
    s.driver = text.into_bytes();
    assert_eq!(
        run(&s).unwrap_err(),
        GpuError::MeasurementMismatch(vec![(u32::MAX, "driver")])
    );
}

#[test]
fn a_wrong_nonce_is_refused() {
    let mut wrong = nonce();
    wrong[31] ^= 1;
    let err = run_with(&sample(), &policy(), &wrong, NOW).unwrap_err();
    assert_eq!(err, GpuError::NonceMismatch);
}

#[test]
fn an_unpinned_root_is_refused() {
    let good = sample();
    // Pinning another root.
    let other = GpuPolicy {
        device_root_sha256: NVIDIA_RIM_ROOT_SHA256,
        ..policy()
    };
    let err = run_with(&good, &other, &nonce(), NOW).unwrap_err();
    assert!(matches!(err, GpuError::UnpinnedRoot { .. }), "{err:?}");
    // A chain ending at another root (NVIDIA's RIM root in place of the device root).
    let mut ders = gpu::chain::pem_certs(&good.chain).unwrap();
    let rim_root = gpu::chain::pem_certs(&file("verifier_RIM_root.pem")).unwrap();
    *ders.last_mut().unwrap() = rim_root[0].clone();
    let mut s = good.clone();
    s.chain = pem(&ders);
    assert!(matches!(
        run(&s).unwrap_err(),
        GpuError::UnpinnedRoot { .. }
    ));
    // A chain cut short of the root.
    ders.pop();
    s.chain = pem(&ders);
    assert!(matches!(
        run(&s).unwrap_err(),
        GpuError::UnpinnedRoot { .. }
    ));
    // The pinned root itself is the one shipped by NVIDIA.
    let root = gpu::chain::pem_certs(&file("verifier_device_root.pem")).unwrap();
    assert_eq!(gpu::chain::pem_certs(&good.chain).unwrap()[4], root[0]);
}

#[test]
fn certificates_outside_their_window_are_refused() {
    // 10000-01-01: after every notAfter (9999-12-31T23:59:59Z).
    let err = run_with(&sample(), &policy(), &nonce(), 253_402_300_800).unwrap_err();
    assert!(
        matches!(err, GpuError::CertExpired { position: 0, .. }),
        "{err:?}"
    );
    // 2021-06-01: the leaf is valid (from 2020-10-17) but the provisioner ICA is not yet.
    let err = run_with(&sample(), &policy(), &nonce(), 1_622_505_600).unwrap_err();
    assert!(
        matches!(err, GpuError::CertExpired { position: 2, .. }),
        "{err:?}"
    );
}

#[test]
fn a_revoked_certificate_is_refused() {
    let revoked = GpuPolicy {
        // The BROM certificate's serial, with a leading zero byte (ignored).
        revoked_serials: vec![hex::decode("0041431d480fe5e87274").unwrap()],
        ..policy()
    };
    let err = run_with(&sample(), &revoked, &nonce(), NOW).unwrap_err();
    assert!(
        matches!(err, GpuError::CertRevoked { position: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn the_rim_reader_refuses_every_truncation_and_survives_mutations() {
    let good = nvidia_sample().driver;
    let whole = rim::parse(&good).unwrap();
    assert_eq!(whole.measurements.len(), 64);
    // A truncated RIM is refused, never read as a shorter list of measurements.
    let end = String::from_utf8_lossy(&good)
        .find("</SoftwareIdentity>")
        .unwrap()
        + 19;
    for len in 0..end {
        assert!(rim::parse(&good[..len]).is_err(), "prefix {len}");
    }
    for at in (0..good.len()).step_by(3) {
        for byte in [b'<', b'>', b'"', b'/', b'=', b' ', 0, 0xff] {
            let mut t = good.clone();
            t[at] = byte;
            let _ = rim::parse(&t);
        }
    }
    // Shapes the reader refuses outright.
    for bad in [
        &b"<!DOCTYPE x><SoftwareIdentity/>"[..],
        b"<a b=c/>",
        b"<a b=\"<\"/>",
        b"<!-- unterminated",
        b"",
    ] {
        assert!(rim::parse(bad).is_err());
    }
}

#[test]
fn mangled_pem_and_hex_are_refused_without_panicking() {
    let good = sample();
    for at in (0..good.chain.len()).step_by(5) {
        for byte in [b'-', b'\n', b'A', b'=', 0, 0xff] {
            let mut s = good.clone();
            s.chain[at] = byte;
            // Base64 padding or line changes may leave the DER intact; anything else fails.
            if let Ok(v) = run(&s) {
                assert_eq!(
                    gpu::chain::pem_certs(&s.chain).unwrap(),
                    gpu::chain::pem_certs(&good.chain).unwrap(),
                    "byte {at} := {byte:#x}: {v:?}"
                );
            }
        }
    }
    let hex = file("hopperAttestationReport.txt");
    for at in (0..hex.len()).step_by(7) {
        let mut t = hex.clone();
        t[at] = b'g';
        assert!(report::decode_hex(&t).is_err());
    }
    assert!(report::decode_hex(&hex[..hex.len() - 2]).is_ok_and(|b| report::parse(&b).is_err()));
}

#[test]
fn the_report_fwid_must_be_the_leaf_certificates() {
    let good = sample();
    let r = report::parse(&good.report).unwrap();
    let fwid = r.opaque[&report::field::FWID].to_vec();
    assert_eq!(fwid.len(), 48);
    let chain = gpu::chain::verify(&good.chain, &gpu::NVIDIA_DEVICE_ROOT_SHA256, &[], NOW).unwrap();
    assert_eq!(chain.leaf_fwid.as_deref(), Some(fwid.as_slice()));
    // A byte of the report's FWID changed: refused before the signature is even checked.
    let at = good
        .report
        .windows(48)
        .position(|w| w == fwid.as_slice())
        .unwrap();
    for i in [0, 20, 47] {
        let mut s = good.clone();
        s.report[at + i] ^= 0x01;
        assert_eq!(run(&s).unwrap_err(), GpuError::FwidMismatch);
    }
}

#[test]
fn nvidia_rim_signatures_verify_up_to_the_pinned_rim_root() {
    use gpu::xmldsig::{self, RimSignatureError};
    let s = nvidia_sample();
    for rim in [&s.driver, &s.vbios] {
        xmldsig::verify(rim, &NVIDIA_RIM_ROOT_SHA256, NOW).unwrap();
    }
    // A re-targeted RIM (its measurements changed) no longer matches its signed digest.
    let retargeted = sample();
    assert_eq!(
        xmldsig::verify(&retargeted.driver, &NVIDIA_RIM_ROOT_SHA256, NOW),
        Err(RimSignatureError::Digest)
    );
    // Another root pinned, or after the signer's certificate expired (June 2025).
    let err = xmldsig::verify(&s.vbios, &gpu::NVIDIA_DEVICE_ROOT_SHA256, NOW).unwrap_err();
    assert!(matches!(err, RimSignatureError::Chain(_)), "{err:?}");
    let err = xmldsig::verify(&s.vbios, &NVIDIA_RIM_ROOT_SHA256, 1_767_225_600).unwrap_err();
    assert!(matches!(err, RimSignatureError::Chain(_)), "{err:?}");
    // Content hidden in the (unsigned) Signature element, moved first so that its Meta would
    // come first: the signature still verifies (the signed content is unchanged), and the
    // RIM reader ignores what is inside the Signature.
    let text = String::from_utf8(s.driver.clone()).unwrap();
    let (a, b) = (
        text.find("<ds:Signature").unwrap(),
        text.find("</ds:Signature>").unwrap() + 15,
    );
    let signature = text[a..b].replacen(
        "<ds:KeyInfo>",
        "<ns0:Meta colloquialVersion=\"550.90.07\"/><ds:KeyInfo>",
        1,
    );
    let body = format!("{}{}", &text[..a], &text[b..]);
    let first = body.find("<ns0:Entity").unwrap();
    let moved = format!("{}{}{}", &body[..first], signature, &body[first..]);
    xmldsig::verify(moved.as_bytes(), &NVIDIA_RIM_ROOT_SHA256, NOW).unwrap();
    assert_eq!(rim::parse(moved.as_bytes()).unwrap().version, "545.00");
    // Another element after the signed root.
    let mut extra = s.vbios.clone();
    extra.extend_from_slice(b"<Payload/>");
    assert_eq!(
        xmldsig::verify(&extra, &NVIDIA_RIM_ROOT_SHA256, NOW),
        Err(RimSignatureError::Shape("content outside the root element"))
    );
}

#[test]
fn rim_tampers_are_refused_by_the_signature() {
    use gpu::xmldsig::{self, RimSignatureError};
    let s = nvidia_sample();
    for rim_bytes in [&s.driver, &s.vbios] {
        // Every measurement digest, one hex digit changed: the signed digest no longer holds.
        let text = String::from_utf8(rim_bytes.clone()).unwrap();
        for (&index, m) in &rim::parse(rim_bytes).unwrap().measurements {
            for alt in 0..m.alternatives.len() {
                let at = hash_offset(&text, index, alt);
                let mut t = rim_bytes.clone();
                t[at + 11] = if t[at + 11] == b'a' { b'b' } else { b'a' };
                assert_eq!(
                    xmldsig::verify(&t, &NVIDIA_RIM_ROOT_SHA256, NOW),
                    Err(RimSignatureError::Digest),
                    "index {index} alternative {alt}"
                );
            }
        }
        // Any byte (a sample of them, every 5th): refused, whatever the reason.
        for at in (0..rim_bytes.len()).step_by(5) {
            let mut t = rim_bytes.clone();
            t[at] ^= 0x01;
            assert!(
                xmldsig::verify(&t, &NVIDIA_RIM_ROOT_SHA256, NOW).is_err(),
                "byte {at}: {:?}",
                String::from_utf8_lossy(&rim_bytes[at.saturating_sub(20)..at + 20])
            );
        }
    }
}

/// The files in `testvectors/gpu/retargeted/` are the sample's RIMs re-targeted at the sample
/// report (as [`sample`] does) with their `colloquialVersion` set to the report's versions,
/// so that they verify under the default policy: the roles' tests name them as RIM files
/// (`gpu_rims`). Regenerate with `COCOON_WRITE_RETARGETED_RIMS=1`.
#[test]
fn retargeted_rim_files_are_the_sample_at_the_reports_versions() {
    let s = sample();
    let parts = [
        (
            "Driver_RIM_retargeted.swidtag",
            &s.driver,
            "545.00",
            "550.90.07",
        ),
        (
            "VBIOS_RIM_retargeted.swidtag",
            &s.vbios,
            "96.00.5E.00.01",
            "96.00.9F.00.01",
        ),
    ];
    let mut files = Vec::new();
    for (name, rim, old, new) in parts {
        let text = String::from_utf8(rim.clone()).unwrap();
        let old = format!("colloquialVersion=\"{old}\"");
        assert_eq!(text.matches(&old).count(), 1, "{name}");
        let text = text.replace(&old, &format!("colloquialVersion=\"{new}\""));
        let path = format!("{DIR}retargeted/{name}");
        if std::env::var_os("COCOON_WRITE_RETARGETED_RIMS").is_some() {
            std::fs::create_dir_all(format!("{DIR}retargeted")).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "{path}");
        files.push(text.into_bytes());
    }
    let rims: [&[u8]; 2] = [&files[0], &files[1]];
    let v = gpu::verify(
        &GpuEvidence {
            report: &s.report,
            cert_chain_pem: &s.chain,
            rims: &rims,
        },
        &nonce(),
        // Edited copies: their NVIDIA signatures no longer verify.
        &GpuPolicy {
            require_rim_signatures: false,
            ..GpuPolicy::default()
        },
        NOW,
    )
    .unwrap();
    assert_eq!(v.driver_rim_version, "550.90.07");
    assert_eq!(v.measurements_checked, 32);
}
