//! Runs the real `cocoon attest` on the evidence in `testvectors/attest/`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use serde_json::Value;
use std::process::{Command, Output};

const COCOON_NOW: &str = "1772707833"; // 2026-03-05, inside the 90c06f collateral window
const SAMPLE_NOW: &str = "1751630400"; // 2025-07-04
const SEV_NOW: &str = "1767225600"; // 2026-01-01
const COCOON_IMAGE_HASH: &str = "04b3afd931d28680af91a15b09d672c40ad6b141f7f9089a8d67d595220f7436";

fn tv(name: &str) -> String {
    format!(
        "{}/../../testvectors/attest/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn cocoon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args(args)
        .output()
        .expect("run cocoon")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn one_line_error(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "stdout: {}", stdout(o));
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    assert!(err.starts_with("error: "), "stderr: {err}");
    err
}

fn cocoon_quote(now: &str, extra: &[&str]) -> Output {
    verify_quote(
        "cocoon_quote.dat",
        "cocoon_quote_collateral_90c06f.json",
        now,
        extra,
    )
}

/// `cocoon attest verify` of the test vector `quote` with the collateral `collateral` at
/// `now`, with `extra` arguments.
fn verify_quote(quote: &str, collateral: &str, now: &str, extra: &[&str]) -> Output {
    let (q, c) = (tv(quote), tv(collateral));
    let mut args = vec![
        "attest",
        "verify",
        "--quote",
        &q,
        "--collateral",
        &c,
        "--now",
        now,
    ];
    args.extend_from_slice(extra);
    cocoon(&args)
}

#[test]
fn cocoon_quote_verifies_up_to_date() {
    let o = cocoon_quote(COCOON_NOW, &[]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.contains("status:         valid"), "{out}");
    assert!(out.contains("tcb status:     UpToDate"), "{out}");
    assert!(out.contains(COCOON_IMAGE_HASH), "{out}");
    for field in ["mrtd:", "rtmr0:", "rtmr3:", "report data:", "collateral:"] {
        assert!(out.contains(field), "{field} missing: {out}");
    }
}

#[test]
fn cocoon_quote_json_parses() {
    let o = cocoon_quote(COCOON_NOW, &["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["valid"], true);
    assert_eq!(v["tcb_status"], "UpToDate");
    assert_eq!(v["image_hash"], COCOON_IMAGE_HASH);
    assert_eq!(v["quote"]["rtmr"].as_array().map(Vec::len), Some(4));
    assert_eq!(v["quote"]["mrtd"].as_str().map(str::len), Some(96));
    assert!(v["collateral"]["not_after"].as_u64().unwrap() > 1_772_707_833);
}

#[test]
fn cocoon_quote_refused_outside_collateral_window() {
    // After the window (2026-03-20): expired.
    let o = cocoon_quote("1780000000", &[]);
    let err = one_line_error(&o);
    assert!(err.contains("collateral expired"), "{err}");
    assert!(stdout(&o).contains("status:         invalid"));
    // Before the window (2026-02-18): not yet valid.
    let o = cocoon_quote("1770000000", &[]);
    let err = one_line_error(&o);
    assert!(err.contains("collateral not yet valid"), "{err}");
    // JSON form of a refusal still parses and says why.
    let o = cocoon_quote("1780000000", &["--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["valid"], false);
    assert!(v["error"].as_str().unwrap().contains("expired"));
    assert_eq!(v["image_hash_unverified"], COCOON_IMAGE_HASH);
}

#[test]
fn sgx_quote_refused_as_not_a_td() {
    let o = verify_quote("sgx_quote", "sgx_quote_collateral.json", SAMPLE_NOW, &[]);
    let err = one_line_error(&o);
    assert!(err.contains("not a TD quote"), "{err}");
}

#[test]
fn sample_tdx_quote_up_to_date() {
    let o = verify_quote(
        "tdx_quote",
        "tdx_quote_collateral.json",
        SAMPLE_NOW,
        &["--json"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["tcb_status"], "UpToDate");
}

#[test]
fn hex_quote_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let raw = std::fs::read(tv("cocoon_quote.dat")).unwrap();
    let path = dir.path().join("quote.hex");
    std::fs::write(&path, format!("{}\n", hex::encode(raw))).unwrap();
    let c = tv("cocoon_quote_collateral_90c06f.json");
    let o = cocoon(&[
        "attest",
        "verify",
        "--quote",
        path.to_str().unwrap(),
        "--collateral",
        &c,
        "--now",
        COCOON_NOW,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains(COCOON_IMAGE_HASH));
}

#[test]
fn quote_without_collateral_is_refused() {
    let q = tv("cocoon_quote.dat");
    let o = cocoon(&["attest", "verify", "--quote", &q, "--now", COCOON_NOW]);
    let err = one_line_error(&o);
    assert!(err.contains("collateral"), "{err}");
}

#[test]
fn allow_status_parses_and_rejects_unknown() {
    let o = cocoon_quote(COCOON_NOW, &["--allow-status", "SWHardeningNeeded"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = cocoon_quote(COCOON_NOW, &["--allow-status", "Bogus"]);
    let err = one_line_error(&o);
    assert!(err.contains("unknown TCB status"), "{err}");
}

fn sev(now: &str, json: bool) -> Output {
    sev_with(now, json, &[])
}

fn sev_with(now: &str, json: bool, extra: &[&str]) -> Output {
    let (r, v, c) = (
        tv("sev/report_milan.hex"),
        tv("sev/vcek_milan.der"),
        tv("sev/cert_chain_milan"),
    );
    let mut args = vec![
        "attest",
        "verify",
        "--sev-report",
        &r,
        "--vcek",
        &v,
        "--chain",
        &c,
        "--now",
        now,
    ];
    if json {
        args.push("--json");
    }
    args.extend_from_slice(extra);
    cocoon(&args)
}

/// A policy for the public 2022 sample: its TCB is below AMD's current floors and no AMD
/// CRL is available offline, so both are dropped explicitly.
fn sample_sev_policy(dir: &std::path::Path) -> String {
    let path = dir.join("sev-sample.json");
    std::fs::write(
        &path,
        r#"{"backends": ["sev-snp"],
            "sev": {"min_tcb": {"bootloader": 0, "tee": 0, "snp": 0, "microcode": 0},
                    "require_crl": false}}"#,
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn sev_milan_report_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let policy = sample_sev_policy(dir.path());
    let o = sev_with(SEV_NOW, false, &["--policy", &policy]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    for field in [
        "status:         valid",
        "measurement:",
        "host data:",
        "report data:",
        "reported tcb:",
        "chip id:",
        "image hash:",
    ] {
        assert!(out.contains(field), "{field} missing: {out}");
    }
    let o = sev_with(SEV_NOW, true, &["--policy", &policy]);
    assert_eq!(o.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["valid"], true);
    assert_eq!(v["backend"], "sev-snp");
    assert_eq!(v["report"]["chip_id"].as_str().map(str::len), Some(128));
}

#[test]
fn sev_default_policy_refuses_old_tcb_and_missing_crl() {
    // The default policy refuses the 2022 sample: its TCB is below AMD-SB-3019's Milan floor.
    let err = one_line_error(&sev(SEV_NOW, false));
    assert!(err.contains("below the Milan minimum"), "{err}");
    // With the floor dropped, a CRL is still required: none given, none cached, a cache
    // with a corrupt CRL, a KDS that does not answer: each refused with a one-line reason.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("no-floor.json");
    std::fs::write(
        &file,
        r#"{"backends": ["sev-snp"],
            "sev": {"min_tcb": {"bootloader": 0, "tee": 0, "snp": 0, "microcode": 0}}}"#,
    )
    .unwrap();
    let no_floor = file.to_str().unwrap();
    let err = one_line_error(&sev_with(SEV_NOW, false, &["--policy", no_floor]));
    assert!(err.contains("Milan CRL"), "{err}");
    let cache = dir.path().join("kds");
    std::fs::create_dir_all(cache.join("Milan")).unwrap();
    std::fs::write(cache.join("Milan/crl.der"), b"not a CRL").unwrap();
    let cache = cache.to_str().unwrap();
    let err = one_line_error(&sev_with(
        SEV_NOW,
        false,
        &["--policy", no_floor, "--kds-dir", cache],
    ));
    assert!(err.contains("Milan/crl.der"), "{err}");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let err = one_line_error(&sev_with(
        SEV_NOW,
        false,
        &["--policy", no_floor, "--kds", &closed],
    ));
    assert!(
        err.contains("CRL for Milan") && err.contains(&closed),
        "{err}"
    );
}

#[test]
fn sev_report_refused_when_certificates_not_yet_valid() {
    let o = sev("1000000000", false); // 2001: before the VCEK was issued
    one_line_error(&o);
}

#[test]
fn missing_file_is_a_one_line_error() {
    let o = cocoon(&["attest", "verify", "--quote", "/nonexistent/quote.dat"]);
    let err = one_line_error(&o);
    assert!(err.contains("/nonexistent/quote.dat"), "{err}");
    assert!(o.stdout.is_empty());
}

#[test]
fn show_runs_and_json_parses() {
    let o = cocoon(&["attest", "show"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("configfs-tsm:"), "{out}");
    let o = cocoon(&["attest", "show", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(v.get("tee").is_some());
    // Without a TEE device or configfs-tsm, the text form says so.
    if v["tee"].is_null() {
        assert!(out.contains("no TEE detected"), "{out}");
    }
}

fn gen_sim_cert(dir: &std::path::Path, extra: &[&str]) -> String {
    let out = dir.to_str().unwrap();
    let mut args = vec!["attest", "gen-cert", "--tee", "sim", "--out", out];
    args.extend_from_slice(extra);
    let o = cocoon(&args);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("evidence:       sim"), "{text}");
    assert!(text.contains("public key:"), "{text}");
    assert!(text.contains("image hash:"), "{text}");
    format!("{out}/cert.pem")
}

#[test]
fn gen_cert_sim_then_verify_cert_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_sim_cert(dir.path(), &[]);
    assert!(dir.path().join("sim-key.pk8").exists());
    let key = dir.path().join("key.pem");
    let key_text = std::fs::read_to_string(&key).unwrap();
    assert!(key_text.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(
        std::fs::read_to_string(&cert)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----\n")
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let o = cocoon(&["attest", "verify-cert", &cert, "--policy", "sim"]);
    assert!(
        o.status.success(),
        "stdout: {} stderr: {}",
        stdout(&o),
        stderr(&o)
    );
    let text = stdout(&o);
    assert!(text.contains("accepted"), "{text}");
    assert!(text.contains("backend:        sim"), "{text}");

    let o = cocoon(&["attest", "verify-cert", &cert, "--policy", "sim", "--json"]);
    assert!(o.status.success());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["backend"], "sim");
    assert_eq!(v["public_key"].as_str().unwrap().len(), 64);

    // The same per-installation sim key is reused by a second certificate.
    let sim_key = std::fs::read(dir.path().join("sim-key.pk8")).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let k = dir.path().join("sim-key.pk8");
    gen_sim_cert(dir2.path(), &["--sim-key", k.to_str().unwrap()]);
    assert_eq!(std::fs::read(&k).unwrap(), sim_key);
    assert!(!dir2.path().join("sim-key.pk8").exists());
}

#[test]
fn verify_cert_tdx_policy_refuses_sim() {
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_sim_cert(dir.path(), &[]);
    let o = cocoon(&["attest", "verify-cert", &cert, "--policy", "tdx"]);
    let err = one_line_error(&o);
    assert!(err.to_lowercase().contains("sim"), "{err}");
    assert!(stdout(&o).contains("rejected"));
    let o = cocoon(&["attest", "verify-cert", &cert, "--policy", "tdx", "--json"]);
    one_line_error(&o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], false);
}

#[test]
fn verify_cert_refuses_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_sim_cert(dir.path(), &["--now", "1000000000"]);
    let o = cocoon(&["attest", "verify-cert", &cert, "--policy", "sim"]);
    let err = one_line_error(&o);
    assert!(err.contains("expired"), "{err}");
    // Accepted at a time inside its validity.
    let o = cocoon(&[
        "attest",
        "verify-cert",
        &cert,
        "--policy",
        "sim",
        "--now",
        "1000000100",
    ]);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
}

/// (path and query, optional issuer-chain header, body).
type Route = (String, Option<(String, String)>, Vec<u8>);

/// A minimal PCCS (HTTP/1.1 over loopback TCP, one request per connection) serving the
/// real 90c06f collateral split into v4 endpoint responses with its issuer-chain headers.
/// `fail` answers every request with HTTP 500.
fn start_pccs(fail: bool) -> String {
    use std::io::{BufRead, BufReader, Write};
    let c: Value =
        serde_json::from_slice(&std::fs::read(tv("cocoon_quote_collateral_90c06f.json")).unwrap())
            .unwrap();
    let f = |k: &str| c[k].as_str().unwrap().to_string();
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let routes: Vec<Route> = vec![
        (
            "/sgx/certification/v4/pckcrl?ca=platform&encoding=der".into(),
            Some((
                "SGX-PCK-CRL-Issuer-Chain".into(),
                enc(&f("pck_crl_issuer_chain")),
            )),
            hex::decode(f("pck_crl")).unwrap(),
        ),
        (
            "/tdx/certification/v4/tcb?fmspc=90C06F000000".into(),
            Some((
                "TCB-Info-Issuer-Chain".into(),
                enc(&f("tcb_info_issuer_chain")),
            )),
            format!(
                r#"{{"tcbInfo":{},"signature":"{}"}}"#,
                f("tcb_info"),
                f("tcb_info_signature")
            )
            .into_bytes(),
        ),
        (
            "/tdx/certification/v4/qe/identity".into(),
            Some((
                "SGX-Enclave-Identity-Issuer-Chain".into(),
                enc(&f("qe_identity_issuer_chain")),
            )),
            format!(
                r#"{{"enclaveIdentity":{},"signature":"{}"}}"#,
                f("qe_identity"),
                f("qe_identity_signature")
            )
            .into_bytes(),
        ),
        (
            "/sgx/certification/v4/rootcacrl".into(),
            None,
            f("root_ca_crl").into_bytes(),
        ),
    ];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
            let route = routes.iter().find(|(p, _, _)| *p == path);
            let (status, header, body) = match route {
                _ if fail => ("500 Internal Server Error", None, b"oops".to_vec()),
                Some((_, h, b)) => ("200 OK", h.clone(), b.clone()),
                None => ("404 Not Found", None, Vec::new()),
            };
            let mut resp = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            if let Some((k, v)) = header {
                resp.push_str(&format!("{k}: {v}\r\n"));
            }
            resp.push_str("\r\n");
            let _ = stream.write_all(resp.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    format!("http://{addr}")
}

#[test]
fn verify_with_collateral_from_pccs_and_cache() {
    let url = start_pccs(false);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_str().unwrap();
    let q = tv("cocoon_quote.dat");
    let verify = |extra: &[&str]| {
        let mut args = vec!["attest", "verify", "--quote", &q];
        args.extend_from_slice(extra);
        cocoon(&args)
    };
    // From the PCCS through the cache directory.
    let through_cache =
        |now: &str| verify(&["--pccs", &url, "--collateral-dir", cache, "--now", now]);
    let o = through_cache(COCOON_NOW);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.contains("tcb status:     UpToDate"), "{out}");
    assert!(out.contains(COCOON_IMAGE_HASH), "{out}");
    assert!(dir.path().join("90c06f000000.json").is_file());
    // Served from the cache directory with no PCCS at all.
    let o = verify(&["--collateral-dir", cache, "--now", COCOON_NOW, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tcb_status"], "UpToDate");
    assert_eq!(v["collateral"]["pck_ca"], "platform");
    // Without a cache directory, straight from the PCCS.
    let o = verify(&["--pccs", &url, "--now", COCOON_NOW]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Outside the collateral window: the cached one is stale and the PCCS has nothing
    // newer; the error names the FMSPC and the item.
    let o = through_cache("1790000000");
    let err = one_line_error(&o);
    assert!(stdout(&o).contains("90C06F000000"), "{}", stdout(&o));
    assert!(err.contains("expired"), "{err}");
    // A failing PCCS: a typed error naming FMSPC and item.
    let bad = start_pccs(true);
    let o = verify(&["--pccs", &bad, "--now", COCOON_NOW]);
    let err = one_line_error(&o);
    assert!(
        err.contains("PCK CRL") && err.contains("90C06F000000"),
        "{err}"
    );
    assert!(err.contains("500"), "{err}");
    // --pccs and --collateral together are refused by the argument parser.
    let c = tv("cocoon_quote_collateral_90c06f.json");
    let o = verify(&["--pccs", &url, "--collateral", &c]);
    assert!(!o.status.success());
}

#[test]
fn verify_cert_policy_any_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = gen_sim_cert(dir.path(), &[]);
    let vc = |extra: &[&str]| {
        let mut args = vec!["attest", "verify-cert", &cert];
        args.extend_from_slice(extra);
        cocoon(&args)
    };
    // `any` means any real TEE: sim is refused unless --allow-sim.
    let err = one_line_error(&vc(&["--policy", "any"]));
    assert!(err.to_lowercase().contains("sim"), "{err}");
    let o = vc(&["--policy", "any", "--allow-sim"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("backend:        sim"));
    // Policy files.
    let file = dir.path().join("policy.json");
    let write = |json: &str| std::fs::write(&file, json).unwrap();
    let path = file.to_str().unwrap();
    write(r#"{"backends": ["sim"], "test_network": true}"#);
    let o = vc(&["--policy", path]);
    assert!(o.status.success(), "{}", stderr(&o));
    write(r#"{"backends": ["tdx", "sev-snp"]}"#);
    let err = one_line_error(&vc(&["--policy", path]));
    assert!(err.to_lowercase().contains("sim"), "{err}");
    // The sim image hash is not in this allowlist.
    write(&format!(
        r#"{{"backends": ["sim"], "test_network": true, "image_hashes": ["{}"]}}"#,
        "ab".repeat(32)
    ));
    let err = one_line_error(&vc(&["--policy", path]));
    assert!(err.contains("image hash"), "{err}");
    write(r#"{"backends": ["sim"]}"#);
    let err = one_line_error(&vc(&["--policy", path]));
    assert!(err.contains("test_network"), "{err}");
    let err = one_line_error(&vc(&["--policy", "/nonexistent/policy.json"]));
    assert!(err.contains("unknown policy"), "{err}");
}

#[test]
fn gen_cert_tdx_and_sev_fail_cleanly_without_tee() {
    if std::path::Path::new("/sys/kernel/config/tsm/report").exists() {
        return; // a real TEE: generation may succeed
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let o = cocoon(&["attest", "gen-cert", "--tee", "tdx", "--out", out]);
    let err = one_line_error(&o);
    assert!(err.contains("no TEE"), "{err}");
    assert!(!dir.path().join("cert.pem").exists());
    let o = cocoon(&["attest", "gen-cert", "--tee", "sev-snp", "--out", out]);
    let err = one_line_error(&o);
    assert!(err.contains("no TEE"), "{err}");
    let o = cocoon(&[
        "attest",
        "verify-cert",
        "/nonexistent.pem",
        "--policy",
        "sim",
    ]);
    one_line_error(&o);
}

/// COCOON's test-mode certificate (`gen-cert --tdx fake_tdx` there): accepted on a test
/// network, refused by the production policy with the typed reason.
#[test]
fn gen_cert_fake_tdx_is_accepted_only_on_a_test_network() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let o = cocoon(&["attest", "gen-cert", "--tee", "fake-tdx", "--out", out]);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    assert!(
        stdout(&o).contains("evidence:       fake-tdx"),
        "{}",
        stdout(&o)
    );
    let cert = format!("{out}/cert.pem");
    let fake_image = hex::encode(cocoon_attest::tdx::fake_tdx_image_hash());
    let o = cocoon(&[
        "attest",
        "verify-cert",
        &cert,
        "--policy",
        "any",
        "--allow-sim",
        "--json",
    ]);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["backend"], "fake-tdx");
    assert_eq!(v["image_hash"], fake_image);
    let o = cocoon(&["attest", "verify-cert", &cert, "--policy", "tdx"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o)
            .contains("COCOON fake_tdx evidence (report data without a quote) is only accepted"),
        "{}",
        stdout(&o)
    );
}

const GPU_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
const GPU_NOW: &str = "1735689600"; // 2025-01-01

fn gpu_tv(name: &str) -> String {
    format!(
        "{}/../../testvectors/gpu/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn gpu(rims: [&str; 2], extra: &[&str]) -> Output {
    let (r, c) = (
        gpu_tv("hopperAttestationReport.txt"),
        gpu_tv("hopperCertChain.txt"),
    );
    let mut args = vec![
        "attest",
        "verify",
        "--gpu-report",
        &r,
        "--gpu-chain",
        &c,
        "--rim",
        rims[0],
        "--rim",
        rims[1],
        "--now",
        GPU_NOW,
    ];
    args.extend_from_slice(extra);
    cocoon(&args)
}

/// NVIDIA's test RIMs re-targeted at the sample report: every active measurement's first
/// alternative that differs becomes the report's value (as in cocoon-attest's tests).
fn retargeted_rims(dir: &std::path::Path) -> [String; 2] {
    use cocoon_attest::gpu::{report, rim};
    let bytes =
        report::decode_hex(&std::fs::read(gpu_tv("hopperAttestationReport.txt")).unwrap()).unwrap();
    let parsed = report::parse(&bytes).unwrap();
    let mut out = Vec::new();
    for name in [
        "Driver_RIM_test_no_gpu.swidtag",
        "1010_0200_882_96005E0001_test_no_gpu.swidtag",
    ] {
        let mut text = std::fs::read_to_string(gpu_tv(name)).unwrap();
        let manifest = rim::parse(text.as_bytes()).unwrap();
        for (index, m) in manifest.measurements.iter().filter(|(_, m)| m.active) {
            let value = parsed.blocks[&u8::try_from(index + 1).unwrap()].value;
            if m.alternatives.iter().any(|a| a.as_slice() == value) {
                continue;
            }
            let tag = text.find(&format!(" index=\"{index}\" ")).unwrap();
            let at = tag + text[tag..].find(":Hash0=\"").unwrap() + 8;
            text.replace_range(at..at + 96, &hex::encode(value));
        }
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        out.push(path.to_str().unwrap().to_owned());
    }
    [out[0].clone(), out[1].clone()]
}

#[test]
fn gpu_sample_with_nvidia_test_rims_is_refused_where_nvidia_refuses() {
    let (d, v) = (
        gpu_tv("Driver_RIM_test_no_gpu.swidtag"),
        gpu_tv("1010_0200_882_96005E0001_test_no_gpu.swidtag"),
    );
    let o = gpu(
        [&d, &v],
        &["--nonce", GPU_NONCE, "--allow-rim-version-mismatch"],
    );
    let err = one_line_error(&o);
    assert!(
        err.contains("1 (vbios), 2 (vbios), 3 (vbios), 7 (driver), 9 (vbios)"),
        "{err}"
    );
    // Without --allow-rim-version-mismatch the versions are what is refused.
    let err = one_line_error(&gpu([&d, &v], &["--nonce", GPU_NONCE]));
    assert!(
        err.contains("the driver RIM is for version \"545.00\""),
        "{err}"
    );
}

#[test]
fn gpu_sample_verifies_and_a_wrong_nonce_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let [d, v] = retargeted_rims(dir.path());
    // Re-targeted RIMs are no longer NVIDIA-signed: refused unless unsigned RIMs are allowed.
    let err = one_line_error(&gpu([&v, &d], &["--allow-rim-version-mismatch"]));
    assert!(err.contains("RIM digest does not match"), "{err}");
    let o = gpu(
        [&v, &d],
        &[
            "--nonce",
            GPU_NONCE,
            "--allow-rim-version-mismatch",
            "--allow-unsigned-rims",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let json: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(json["status"], "valid");
    assert_eq!(json["nonce_source"], "given");
    assert_eq!(json["driver_version"], "550.90.07");
    assert_eq!(json["measurements_checked"], 32);
    assert_eq!(json["rim_signature"], "not_checked");
    // Text, with the report's own nonce.
    let o = gpu(
        [&d, &v],
        &["--allow-rim-version-mismatch", "--allow-unsigned-rims"],
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.contains("status:         valid"), "{out}");
    assert!(
        out.contains("(the report's own (no --nonce given))"),
        "{out}"
    );
    assert!(out.contains("rim signature:  not checked"), "{out}");
    let mut wrong = GPU_NONCE.to_owned();
    wrong.replace_range(0..2, "00");
    let err = one_line_error(&gpu(
        [&d, &v],
        &[
            "--nonce",
            &wrong,
            "--allow-rim-version-mismatch",
            "--allow-unsigned-rims",
        ],
    ));
    assert!(err.contains("nonce is not the expected one"), "{err}");
}
