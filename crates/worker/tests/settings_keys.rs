//! The worker's settings as the binary builds them (the [worker] table of the defaults file,
//! deserialized whole): the defaults parse, and a key the settings do not declare is refused
//! by name even though the common keys are flattened in from cocoon-service.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_ratls::cert::{Identity, SimSource, WithGpu};
use cocoon_ratls::verifier::{GpuRequirement, RatlsVerifier, VerifierConfig, fixed_clock};
use cocoon_testkit::settings;
use cocoon_worker::{DEFAULTS, Settings};

#[test]
fn the_defaults_deserialize() {
    settings::defaults_deserialize::<Settings>(DEFAULTS, "worker");
}

#[test]
fn an_undeclared_key_is_refused_by_name() {
    settings::undeclared_key_refused::<Settings>(DEFAULTS, "worker");
}

#[test]
fn a_common_key_of_the_wrong_type_is_refused() {
    settings::common_key_of_wrong_type_refused::<Settings>(DEFAULTS, "worker");
}

/// The worker's settings with `overrides` on top of the defaults.
fn settings_with(overrides: &str) -> Settings {
    let file: toml::Table = toml::from_str(DEFAULTS).unwrap();
    let mut t = file["worker"].as_table().unwrap().clone();
    t.extend(toml::from_str::<toml::Table>(overrides).unwrap());
    toml::Value::Table(t).try_into().unwrap()
}

const GPU: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testvectors/gpu/");

#[test]
fn recorded_gpu_evidence_goes_into_the_certificate_on_test_networks_only() {
    assert!(settings_with("").gpu_source().unwrap().is_none());
    let recorded = format!(
        "gpu_evidence = \"recorded\"\ngpu_evidence_report = \"{GPU}hopperAttestationReport.txt\"\n\
         gpu_evidence_chain = \"{GPU}hopperCertChain.txt\""
    );
    let e = settings_with(&recorded).gpu_source().err().unwrap();
    assert_eq!(e.key, "gpu_evidence");
    let gpu = settings_with(&format!("is_test = true\n{recorded}"))
        .gpu_source()
        .unwrap()
        .unwrap();
    let source = WithGpu {
        cpu: std::sync::Arc::new(SimSource(cocoon_attest::SimKey::generate().unwrap())),
        gpu,
    };
    let id = Identity::generate(&source, 1_800_000_000).unwrap();
    // A verifier requiring GPU evidence (with the test-network allowance) finds it.
    let mut cfg = VerifierConfig::new(cocoon_attest::Policy::sim_test());
    cfg.clock = fixed_clock(1_800_000_001);
    cfg.gpu = Some(std::sync::Arc::new(GpuRequirement {
        required: true,
        rims: vec![
            std::fs::read(format!("{GPU}retargeted/Driver_RIM_retargeted.swidtag")).unwrap(),
            std::fs::read(format!("{GPU}retargeted/VBIOS_RIM_retargeted.swidtag")).unwrap(),
        ],
        allow_unbound_nonce: true,
        crl_dir: None,
        // The re-targeted RIMs are edited copies of NVIDIA's: unsigned.
        policy: cocoon_attest::gpu::GpuPolicy {
            require_rim_signatures: false,
            ..cocoon_attest::gpu::GpuPolicy::default()
        },
        ..GpuRequirement::default()
    }));
    let peer = RatlsVerifier::new(cfg)
        .verify_cert(id.cert_der(), &[])
        .unwrap();
    let gpu = peer.gpu().unwrap();
    assert!(!gpu.nonce_bound);
    assert_eq!(gpu.verdict.driver_version, "550.90.07");
    for (overrides, key) in [
        (
            "is_test = true\ngpu_evidence = \"recorded\"",
            "gpu_evidence_report",
        ),
        ("gpu_evidence = \"tpu\"", "gpu_evidence"),
    ] {
        assert_eq!(
            settings_with(overrides).gpu_source().err().unwrap().key,
            key
        );
    }
}

#[test]
fn nvml_without_a_driver_fails_the_certificate_with_the_reason() {
    let gpu = settings_with("gpu_evidence = \"nvml\"")
        .gpu_source()
        .unwrap()
        .unwrap();
    // No NVIDIA driver on test machines: the worker cannot make its certificate, and says
    // why. (With the driver, NVML's own answer decides; not exercised here.)
    if std::path::Path::new("/dev/nvidiactl").exists() {
        return;
    }
    let source = WithGpu {
        cpu: std::sync::Arc::new(SimSource(cocoon_attest::SimKey::generate().unwrap())),
        gpu,
    };
    let e = Identity::generate(&source, 1_800_000_000).unwrap_err();
    assert!(e.to_string().contains("libnvidia-ml.so.1"), "{e}");
}
