//! `require_gpu_cc`: a real proxy (sim attestation) whose worker verifier requires NVIDIA GPU
//! evidence, and real workers whose certificates carry NVIDIA's recorded Hopper sample
//! (testvectors/gpu/) or none. The sample's nonce is NVIDIA's, not bound to the worker's key:
//! it is admitted only with the test-network allowance (`gpu_allow_unbound_nonce`). RIMs:
//! `testvectors/gpu/retargeted/`. Refusals are listed where the admin page shows them.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;

use cocoon_attest::gpu::GpuPolicy;
use cocoon_attest::{Policy, SimKey};
use cocoon_proxy::ProxyStartError;
use cocoon_ratls::cert::{GpuEvidenceBytes, RecordedGpuSource, SimSource, WithGpu};
use cocoon_ratls::verifier::{GpuRequirement, RatlsVerifier, VerifierConfig};
use cocoon_testkit::identity::connector_as;
use cocoon_testkit::prelude::*;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testvectors/gpu/");

fn file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}{name}")).unwrap()
}

fn sample() -> GpuEvidenceBytes {
    GpuEvidenceBytes {
        report: cocoon_attest::gpu::report::decode_hex(&file("hopperAttestationReport.txt"))
            .unwrap(),
        cert_chain_pem: file("hopperCertChain.txt"),
    }
}

/// What `require_gpu_cc = true` with the re-targeted RIMs, project 1010, driver ≥ 550.54
/// and the unbound-nonce allowance builds.
fn requirement() -> GpuRequirement {
    GpuRequirement {
        required: true,
        rims: vec![
            file("retargeted/Driver_RIM_retargeted.swidtag"),
            file("retargeted/VBIOS_RIM_retargeted.swidtag"),
        ],
        policy: GpuPolicy {
            require_rim_signatures: false,
            ..GpuPolicy::default()
        },
        allowed_projects: vec!["1010".into()],
        min_driver_version: Some("550.54".into()),
        min_vbios_version: None,
        allow_unbound_nonce: true,
        crl_dir: None,
    }
}

fn gpu_verifier(req: GpuRequirement) -> Arc<RatlsVerifier> {
    let mut cfg = VerifierConfig::new(Policy::sim_test());
    cfg.gpu = Some(Arc::new(req));
    RatlsVerifier::new(cfg)
}

async fn proxy_requiring(req: GpuRequirement) -> Net {
    start_proxy_with(root(1, true, true), |cfg| {
        cfg.worker_verifier = gpu_verifier(req);
    })
    .await
}

/// A worker whose certificate carries `gpu` (or no GPU evidence).
async fn worker(net: &Net, owner: u8, gpu: Option<GpuEvidenceBytes>) -> TestWorker {
    start_worker_with(net, owner, |cfg| {
        let cpu = Arc::new(SimSource(SimKey::generate().unwrap()));
        cfg.connector = match gpu {
            Some(g) => connector_as(
                &WithGpu {
                    cpu,
                    gpu: Arc::new(RecordedGpuSource(g)),
                },
                Policy::sim_test(),
            ),
            None => connector_as(cpu.as_ref(), Policy::sim_test()),
        };
    })
    .await
}

/// The worker is refused with a reason containing `why`, on the admin page too.
async fn refused_for(net: &Net, why: &str) {
    eventually(why, || {
        net.proxy
            .stats()
            .refusals
            .iter()
            .any(|r| r.kind == "worker" && r.reason.contains(why))
    })
    .await;
    assert_eq!(net.proxy.ready_workers(), 0);
    let http = cocoon_service::http::ClientBuilder::new().build().unwrap();
    let page = get_text(&http, &format!("{}/stats", net.admin())).await;
    assert!(page.contains("Refused handshakes"), "{page}");
    cocoon_testkit::http::assert_no_debug_values("the proxy's /stats", &page);
    assert!(page.contains(why), "{why} not on the admin page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sim_worker_with_the_recorded_sample_is_admitted() {
    let net = proxy_requiring(requirement()).await;
    let _w = worker(&net, 0x61, Some(sample())).await;
    net.wait_workers(1).await;
    assert!(net.proxy.stats().refusals.is_empty());
    let gpu = net.proxy.stats().workers[0].gpu.clone().unwrap();
    assert_eq!(
        gpu,
        "project 1010-0200, driver 550.90.07, VBIOS 96.00.9f.00.01, nonce NOT bound (recorded evidence)"
    );
    let http = cocoon_service::http::ClientBuilder::new().build().unwrap();
    let page = get_text(&http, &format!("{}/stats", net.admin())).await;
    assert!(page.contains("driver 550.90.07"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_gpu_evidence_is_refused() {
    let net = proxy_requiring(requirement()).await;
    let _w = worker(&net, 0x61, None).await;
    refused_for(&net, "missing GPU evidence extension").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_below_the_minimum_is_refused() {
    let net = proxy_requiring(GpuRequirement {
        min_driver_version: Some("555.0".into()),
        ..requirement()
    })
    .await;
    let _w = worker(&net, 0x61, Some(sample())).await;
    refused_for(&net, "driver version").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_not_allowed_is_refused() {
    let net = proxy_requiring(GpuRequirement {
        allowed_projects: vec!["2330".into()],
        ..requirement()
    })
    .await;
    let _w = worker(&net, 0x61, Some(sample())).await;
    refused_for(&net, "project 1010-0200 is not among the allowed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_report_is_refused() {
    let net = proxy_requiring(requirement()).await;
    let mut bad = sample();
    let last = bad.report.len() - 1;
    bad.report[last] ^= 0x01;
    let _w = worker(&net, 0x61, Some(bad)).await;
    refused_for(&net, "GPU report signature does not verify").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorded_sample_is_refused_without_the_unbound_nonce_allowance() {
    let net = proxy_requiring(GpuRequirement {
        allow_unbound_nonce: false,
        crl_dir: None,
        ..requirement()
    })
    .await;
    let _w = worker(&net, 0x61, Some(sample())).await;
    refused_for(&net, "GPU report nonce is not the expected one").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unbound_nonce_allowance_is_refused_off_test_networks() {
    let mut production = root(1, true, true);
    production.params.is_test = false;
    let e = start_err(production, |cfg| {
        cfg.is_test = false;
        let mut v = VerifierConfig::new(Policy::tdx_default());
        v.gpu = Some(Arc::new(requirement()));
        cfg.worker_verifier = RatlsVerifier::new(v);
    })
    .await;
    assert!(
        matches!(e, ProxyStartError::UnboundGpuNonceOnProduction),
        "{e:?}"
    );
}
