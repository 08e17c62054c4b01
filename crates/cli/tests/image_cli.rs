//! The real `cocoon image measure` and `measure-config`: the same values as the independent
//! calculators' recorded vectors (tinfoilsh/tdx-measure, sev-snp-measure) on the same Debian
//! files, and the sim RTMR3 it predicts is the one the boot step produces.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;
use common::cocoon_env;

fn inputs() -> std::path::PathBuf {
    std::env::var_os("COCOON_MEASURE_INPUTS").map_or_else(
        || {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/cocoon/measure-inputs")
        },
        std::path::PathBuf::from,
    )
}

fn vectors(rel: &str) -> serde_json::Value {
    let p = format!(
        "{}/../../testvectors/measure/{rel}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// The Debian file, or `None` (with a message) when `scripts/setup --measure` has not run.
fn debian(rel: &str) -> Option<String> {
    let p = inputs().join(rel);
    if p.is_file() {
        return Some(p.display().to_string());
    }
    assert!(
        std::env::var_os("COCOON_REQUIRE_SYSTEM_VECTORS").is_none()
            && !cocoon_testkit::fixtures::prereqs_required(),
        "{} absent (scripts/setup --measure)",
        p.display()
    );
    eprintln!("SKIPPED: {} absent (scripts/setup --measure)", p.display());
    None
}

fn measure_json(args: &[&str]) -> serde_json::Value {
    let (rc, out, err) = cocoon_env(&[&["image", "measure", "--json"], args].concat(), &[]);
    assert_eq!(rc, 0, "{err}{out}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn tdx_registers_match_tdx_measure_on_debian_files() {
    let (Some(fw), Some(kernel)) = (
        debian("ovmf/usr/share/ovmf/OVMF.fd"),
        debian("linux/boot/vmlinuz-6.1.0-57-amd64"),
    ) else {
        return;
    };
    let v = vectors("tdx/tdx-measure.json");
    let initrd = format!(
        "{}/../../testvectors/measure/tdx/initrd.img",
        env!("CARGO_MANIFEST_DIR")
    );
    let cmdline = v["cmdline"].as_str().unwrap();
    for case in v["cases"].as_array().unwrap() {
        let mib = (case["memory"]
            .as_str()
            .unwrap()
            .trim_end_matches('G')
            .parse::<u64>())
        .unwrap()
            * 1024;
        let order = case["page_add_order"].as_str().unwrap().replace('_', "-");
        let m = measure_json(&[
            "--tee",
            "tdx",
            "--firmware",
            &fw,
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--cmdline",
            cmdline,
            "--memory-mib",
            &mib.to_string(),
            "--page-order",
            &order,
        ]);
        for r in ["mrtd", "rtmr1", "rtmr2"] {
            assert_eq!(m[r], case[r], "{r} of {case}");
        }
        // Without the captured RTMR0 inputs the image hash is not guessed.
        assert!(m["image_hash"].is_null());
        assert!(m["note"].as_str().unwrap().contains("--rtmr0-dir"));
    }
}

#[test]
fn snp_digest_matches_sev_snp_measure_and_the_config_is_host_data() {
    let v = vectors("snp/vectors.json");
    let case = &v["debian_ovmf"][0];
    let Some(fw) = debian(&format!("ovmf{}", case["path"].as_str().unwrap())) else {
        return;
    };
    let args = |cfg: Option<&str>| {
        let mut a = vec![
            "--tee".to_owned(),
            "sev-snp".into(),
            "--firmware".into(),
            fw.clone(),
            "--vcpus".into(),
            case["vcpus"].to_string(),
            "--vcpu-type".into(),
            case["vcpu_type"].as_str().unwrap().into(),
        ];
        if let Some(c) = cfg {
            a.extend(["--config".into(), c.into()]);
        }
        a
    };
    let plain = args(None);
    let m = measure_json(&plain.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(m["measurement"], case["digest"]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("w.toml");
    std::fs::write(&cfg, "x = 1\n").unwrap();
    let with = args(Some(cfg.to_str().unwrap()));
    let c = measure_json(&with.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        c["measurement"], case["digest"],
        "config is not in the digest"
    );
    // SHA-256("x = 1\n") as host data, and so another image hash.
    assert_eq!(c["host_data"], hex_sha256(b"x = 1\n"));
    assert_ne!(c["image_hash"], m["image_hash"]);
}

fn hex_sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn sim_measure_predicts_what_the_boot_step_measures() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("w.toml");
    std::fs::write(&cfg, "[worker]\nbackend_url = \"http://127.0.0.1:8000\"\n").unwrap();
    let m = measure_json(&["--tee", "sim", "--config", cfg.to_str().unwrap()]);
    let regs = tmp.path().join("regs");
    let (rc, out, err) = cocoon_env(
        &[
            "image",
            "measure-config",
            cfg.to_str().unwrap(),
            "--tee",
            "sim",
        ],
        &[("COCOON_SIM_REGISTERS", regs.to_str().unwrap())],
    );
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("rtmr3 {}", m["rtmr3"].as_str().unwrap())
    );
    assert_eq!(m["image_hash"].as_str().unwrap().len(), 64);
    // Missing inputs are one clear line each, not a panic.
    let (rc, _, err) = cocoon_env(&["image", "measure", "--tee", "tdx"], &[]);
    assert_eq!(rc, 1);
    assert!(err.contains("--firmware is required"), "{err}");
    let (rc, _, err) = cocoon_env(
        &[
            "image",
            "measure",
            "--tee",
            "tdx",
            "--firmware",
            cfg.to_str().unwrap(),
            "--kernel",
            cfg.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(rc, 1);
    assert!(err.contains("firmware"), "{err}");
}
