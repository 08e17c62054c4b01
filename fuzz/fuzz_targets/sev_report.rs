//! SEV-SNP report parsing and verification on arbitrary bytes.
//!
//! The first byte chooses what the rest is:
//! * `0 mod 4`: a raw report: `sev::parse_report`, then `sev::verify_report_at` with the
//!   committed Milan VCEK and ASK/ARK chain (`testvectors/attest/sev/`) at 2026-01-01, and
//!   `Policy::evaluate` with `Evidence::SevSnp`;
//! * `1 mod 4`: hex text of a report (`sev::decode_report_hex` / `parse_report_hex`), then
//!   as above;
//! * `2 mod 4`: a VCEK (DER) verified with the real report and chain;
//! * `3 mod 4`: a chain (PEM) verified with the real report and VCEK.
//!
//! What must hold: no panic; a report that verifies also parses, to the same fields.
#![no_main]

use cocoon_attest::sev::{self, SevMinTcb, SevPolicy};
use cocoon_attest::{Evidence, Policy};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const REPORT_HEX: &[u8] = include_bytes!("../../testvectors/attest/sev/report_milan.hex");
const VCEK: &[u8] = include_bytes!("../../testvectors/attest/sev/vcek_milan.der");
const CHAIN: &[u8] = include_bytes!("../../testvectors/attest/sev/cert_chain_milan");
const NOW: u64 = 1_767_225_600;

fn real_report() -> &'static [u8] {
    static R: OnceLock<Vec<u8>> = OnceLock::new();
    R.get_or_init(|| sev::decode_report_hex(REPORT_HEX).expect("report hex"))
}

/// The default checks without the TCB floor and the CRL: the committed 2022 sample is below
/// AMD's current floors and no CRL is available here, and the accept path must stay reachable.
fn sample_policy() -> SevPolicy {
    SevPolicy {
        min_tcb: SevMinTcb::NONE,
        require_crl: false,
        ..SevPolicy::default()
    }
}

fn verify(report: &[u8], vcek: &[u8], chain: &[u8]) {
    let parsed = sev::parse_report(report);
    match sev::verify_report_at(report, vcek, chain, &sample_policy(), NOW as i64) {
        Ok(info) => assert_eq!(
            Some(&info),
            parsed.as_ref().ok(),
            "verified but parse differs"
        ),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let expected = parsed.as_ref().map_or([0; 64], |p| p.report_data);
    let ev = Evidence::SevSnp {
        report,
        vcek_der: vcek,
        chain_pem: chain,
    };
    let policy = Policy {
        sev: sample_policy(),
        ..Policy::sev_default()
    };
    match policy.evaluate(&ev, &expected, NOW) {
        Ok(peer) => {
            let info = parsed.expect("accepted report must parse");
            assert_eq!(peer.image_hash(), &sev::image_hash(&info));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => verify(rest, VCEK, CHAIN),
        1 => {
            let _ = sev::parse_report_hex(rest);
            if let Ok(bytes) = sev::decode_report_hex(rest) {
                verify(&bytes, VCEK, CHAIN);
            }
        }
        2 => verify(real_report(), rest, CHAIN),
        _ => verify(real_report(), VCEK, rest),
    }
});
