//! `cocoon-bench-gpu`: how long verifying NVIDIA GPU evidence takes (`cocoon_attest::gpu`)
//! on NVIDIA's Hopper sample in `testvectors/gpu/`, one thread. See bench/README.md.

use std::hint::black_box;
use std::time::Instant;

use cocoon_attest::gpu::{self, GpuEvidence, GpuPolicy, chain, report, rim, xmldsig};

/// 2025-01-01, inside the sample chain's validity (as in cocoon-attest's tests).
const NOW: u64 = 1_735_689_600;

fn testvector(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../testvectors/gpu/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs `f` for about `secs` seconds after one warm-up call and prints the rate and the
/// time per call.
fn rate(name: &str, secs: f64, mut f: impl FnMut()) {
    f();
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..8 {
            f();
        }
        n += 8;
    }
    let elapsed = start.elapsed();
    let per = elapsed / n;
    println!(
        "  {name:<52} {:>8.0} /s  {:>9.1} µs each  ({n} in {:.2} s)",
        f64::from(n) / elapsed.as_secs_f64(),
        per.as_secs_f64() * 1e6,
        elapsed.as_secs_f64()
    );
}

/// NVIDIA's test RIMs re-targeted at the sample report (each differing active measurement's
/// first alternative replaced by the report's value), so that the whole accept path runs.
fn retargeted(report_bytes: &[u8], rim_bytes: &[u8]) -> Vec<u8> {
    let parsed = report::parse(report_bytes).expect("sample report");
    let manifest = rim::parse(rim_bytes).expect("sample RIM");
    let mut text = String::from_utf8(rim_bytes.to_vec()).expect("UTF-8 RIM");
    for (index, m) in manifest.measurements.iter().filter(|(_, m)| m.active) {
        let block = u8::try_from(index + 1)
            .ok()
            .and_then(|i| parsed.blocks.get(&i));
        let Some(value) = block.map(|b| b.value) else {
            continue;
        };
        if m.alternatives.iter().any(|a| a.as_slice() == value) {
            continue;
        }
        let tag = text.find(&format!(" index=\"{index}\" ")).expect("index");
        let at = tag + text[tag..].find(":Hash0=\"").expect("Hash0") + 8;
        text.replace_range(at..at + 2 * value.len(), &hex::encode(value));
    }
    text.into_bytes()
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    println!(
        "cocoon-bench-gpu {} (one thread, NVIDIA's Hopper sample from testvectors/gpu/)",
        env!("CARGO_PKG_VERSION")
    );
    let report_hex = testvector("hopperAttestationReport.txt");
    let report_bytes = report::decode_hex(&report_hex).expect("hex");
    let chain_pem = testvector("hopperCertChain.txt");
    let signed_driver = testvector("Driver_RIM_test_no_gpu.swidtag");
    let signed_vbios = testvector("1010_0200_882_96005E0001_test_no_gpu.swidtag");
    let driver = retargeted(&report_bytes, &signed_driver);
    let vbios = retargeted(&report_bytes, &signed_vbios);
    let nonce = report::parse(&report_bytes).expect("report").request_nonce;
    // The re-targeted RIMs are no longer NVIDIA-signed: their signatures are timed apart.
    let policy = GpuPolicy {
        require_rim_versions: false,
        require_rim_signatures: false,
        ..GpuPolicy::default()
    };
    let rims: [&[u8]; 2] = [&driver, &vbios];
    let evidence = GpuEvidence {
        report: &report_bytes,
        cert_chain_pem: &chain_pem,
        rims: &rims,
    };

    rate(
        "full gpu::verify (accepted, RIM signatures off)",
        secs,
        || {
            black_box(gpu::verify(black_box(&evidence), &nonce, &policy, NOW)).expect("verify");
        },
    );
    rate("report hex decode + report::parse", secs, || {
        let bytes = report::decode_hex(black_box(&report_hex)).expect("hex");
        black_box(report::parse(&bytes).map(|r| r.blocks.len())).expect("parse");
    });
    rate("report::parse (binary, 4117 B)", secs, || {
        black_box(report::parse(black_box(&report_bytes)).map(|r| r.blocks.len())).expect("parse");
    });
    rate(
        "chain::verify (5 certificates, 5 ECDSA P-384)",
        secs,
        || {
            black_box(chain::verify(
                black_box(&chain_pem),
                &gpu::NVIDIA_DEVICE_ROOT_SHA256,
                &[],
                NOW,
            ))
            .expect("chain");
        },
    );
    rate(
        "xmldsig::verify, driver + VBIOS RIM (C14N, 2 x 5 ECDSA)",
        secs,
        || {
            for rim_bytes in [&signed_driver, &signed_vbios] {
                black_box(xmldsig::verify(
                    black_box(rim_bytes),
                    &gpu::NVIDIA_RIM_ROOT_SHA256,
                    NOW,
                ))
                .expect("RIM signature");
            }
        },
    );
    rate("rim::parse, driver + VBIOS (20 KiB each)", secs, || {
        black_box(rim::parse(black_box(&driver))).expect("driver");
        black_box(rim::parse(black_box(&vbios))).expect("vbios");
    });
}
