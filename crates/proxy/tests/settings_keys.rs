//! The proxy's settings as the binary builds them (the [proxy] table of the defaults file,
//! deserialized whole): the defaults parse, and a key the settings do not declare is refused
//! by name even though the common keys are flattened in from cocoon-service.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_proxy::{DEFAULTS, Settings};
use cocoon_testkit::settings;

#[test]
fn the_defaults_deserialize() {
    settings::defaults_deserialize::<Settings>(DEFAULTS, "proxy");
}

#[test]
fn an_undeclared_key_is_refused_by_name() {
    settings::undeclared_key_refused::<Settings>(DEFAULTS, "proxy");
}

#[test]
fn a_common_key_of_the_wrong_type_is_refused() {
    settings::common_key_of_wrong_type_refused::<Settings>(DEFAULTS, "proxy");
}

/// The proxy's settings with `overrides` on top of the defaults.
fn settings_with(overrides: &str) -> Settings {
    let file: toml::Table = toml::from_str(DEFAULTS).unwrap();
    let mut t = file["proxy"].as_table().unwrap().clone();
    t.extend(toml::from_str::<toml::Table>(overrides).unwrap());
    toml::Value::Table(t).try_into().unwrap()
}

#[test]
fn gpu_settings_build_the_worker_verifiers_gpu_requirement() {
    assert!(settings_with("").gpu.requirement().unwrap().is_none());
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testvectors/gpu/retargeted/"
    );
    let rims = format!(
        "gpu_rims = [\"{dir}Driver_RIM_retargeted.swidtag\", \"{dir}VBIOS_RIM_retargeted.swidtag\"]"
    );
    let req = settings_with(&format!(
        "require_gpu_cc = true\n{rims}\ngpu_allowed_projects = [\"1010\"]\n\
         gpu_min_driver_version = \"550.54\"\ngpu_min_vbios_version = \"96.00.9f.00.01\""
    ))
    .gpu
    .requirement()
    .unwrap()
    .unwrap();
    assert!(req.required && !req.allow_unbound_nonce);
    assert_eq!(req.rims.len(), 2);
    assert_eq!(req.allowed_projects, ["1010"]);
    assert_eq!(req.min_driver_version.as_deref(), Some("550.54"));
    assert_eq!(req.min_vbios_version.as_deref(), Some("96.00.9f.00.01"));
    // RIMs without require_gpu_cc: evidence is checked and recorded, not required.
    assert!(
        !settings_with(&rims)
            .gpu
            .requirement()
            .unwrap()
            .unwrap()
            .required
    );
    let e = settings_with("require_gpu_cc = true\ngpu_rims = [\"/nonexistent.swidtag\"]")
        .gpu
        .requirement()
        .unwrap_err();
    assert_eq!(e.key, "gpu_rims");
    let e = settings_with(&format!("{rims}\ngpu_min_driver_version = \"new\""))
        .gpu
        .requirement()
        .unwrap_err();
    assert_eq!(e.key, "gpu_min_driver_version");
}
