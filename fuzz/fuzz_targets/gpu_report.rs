//! NVIDIA GPU evidence parsing and verification on arbitrary bytes.
//!
//! The first byte chooses what the rest is:
//! * `0 mod 4`: a binary report (SPDM request ‖ response): `gpu::report::parse`, then
//!   `gpu::verify` with NVIDIA's sample chain and test RIMs (`testvectors/gpu/`) at
//!   2025-01-01, with the sample's nonce and with the input's own;
//! * `1 mod 4`: hex text of a report (`report::decode_hex`), then as above;
//! * `2 mod 4`: a RIM (`gpu::rim::parse`), then verifying the sample report with it and the
//!   sample VBIOS RIM;
//! * `3 mod 4`: a certificate chain (PEM) verified with the sample report.
//!
//! What must hold: no panic; an accepted report parses, with the verdict's nonce and block
//! count; a parsed report's signed part is the whole input less the 96-byte signature.
#![no_main]

use cocoon_attest::gpu::{self, GpuEvidence, GpuPolicy, report, rim};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const REPORT_HEX: &[u8] = include_bytes!("../../testvectors/gpu/hopperAttestationReport.txt");
const CHAIN: &[u8] = include_bytes!("../../testvectors/gpu/hopperCertChain.txt");
const DRIVER_RIM: &[u8] = include_bytes!("../../testvectors/gpu/Driver_RIM_test_no_gpu.swidtag");
const VBIOS_RIM: &[u8] =
    include_bytes!("../../testvectors/gpu/1010_0200_882_96005E0001_test_no_gpu.swidtag");
const NOW: u64 = 1_735_689_600;

fn real_report() -> &'static [u8] {
    static R: OnceLock<Vec<u8>> = OnceLock::new();
    R.get_or_init(|| report::decode_hex(REPORT_HEX).expect("report hex"))
}

fn verify(report_bytes: &[u8], chain: &[u8], rims: &[&[u8]]) {
    let parsed = report::parse(report_bytes);
    if let Ok(r) = &parsed {
        let [req, resp] = r.signed_parts();
        assert_eq!(
            req.len() + resp.len() + report::SIGNATURE_LEN,
            report_bytes.len()
        );
        let _ = (r.driver_version(), r.vbios_version(), r.nvdec0_disabled());
    }
    let sample_nonce = report::parse(real_report()).expect("sample").request_nonce;
    let own_nonce = parsed.as_ref().map_or([0; 32], |r| r.request_nonce);
    let policy = GpuPolicy {
        require_rim_versions: false,
        ..GpuPolicy::default()
    };
    let evidence = GpuEvidence {
        report: report_bytes,
        cert_chain_pem: chain,
        rims,
    };
    for nonce in [sample_nonce, own_nonce] {
        match gpu::verify(&evidence, &nonce, &policy, NOW) {
            Ok(v) => {
                let r = parsed.as_ref().expect("accepted report must parse");
                assert_eq!(v.nonce, r.request_nonce);
                assert_eq!(v.nonce, nonce);
                assert_eq!(v.blocks, r.blocks.len());
            }
            Err(e) => {
                let _ = (e.to_string(), e.fault());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => verify(rest, CHAIN, &[DRIVER_RIM, VBIOS_RIM]),
        1 => {
            if let Ok(bytes) = report::decode_hex(rest) {
                verify(&bytes, CHAIN, &[DRIVER_RIM, VBIOS_RIM]);
            }
        }
        2 => {
            if let Ok(r) = rim::parse(rest) {
                assert!(!r.measurements.is_empty() && !r.version.is_empty());
            }
            verify(real_report(), CHAIN, &[rest, VBIOS_RIM]);
        }
        _ => verify(real_report(), rest, &[DRIVER_RIM, VBIOS_RIM]),
    }
});
