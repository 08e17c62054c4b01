//! Host-controlled trust anchors, through the `cocoon` binary:
//!
//! - Bad endpoint and CA settings exit 64 with one line (quorum 0, quorum above the number
//!   of endpoints, a CA bundle inside a TEE without `extra_ca_in_tee`).
//! - A `cocoon proxy` reading the root through three toncenter endpoints over one devnet
//!   (quorum 2) while the test makes some of them lie about the root contract's storage: one
//!   liar is outvoted; all three disagreeing keeps the last agreed configuration (an operator
//!   event, counted on /jsonstats and /metrics) even when the honest endpoint shows a real,
//!   newer one; agreement again applies it. A second proxy with the liar as its only
//!   endpoint (the old configuration) takes the forged configuration.
//! - `cocoon wallet balance` against an HTTPS toncenter with a private CA: refused when the
//!   CA is only in `SSL_CERT_FILE`, accepted with `--extra-ca-file`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::{Command, Stdio};

use cocoon_devnet::fake::FakeEndpoint;
use cocoon_devnet::run::{RunOptions, start};
use cocoon_ton::StdAddr;
use cocoon_ton::codec::{decode_boc_base64, encode_boc_base64};
use cocoon_ton::root::RootConfig;

mod common;
use common::{Killed, cocoon, get_json, own_root, root_op, start_ready, wait_for};

const OWNER: &str = "0:4444444444444444444444444444444444444444444444444444444444444444";
const ROOT: &str = "0:5555555555555555555555555555555555555555555555555555555555555555";

#[test]
fn bad_endpoint_and_ca_settings_are_one_line_and_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["ca.example".to_owned()]).unwrap();
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let ca = ca.to_str().unwrap();
    let base = |role: &str| -> Vec<String> {
        let mut a = vec![role.to_owned(), "--test".into()];
        match role {
            "proxy" => a.extend(["--owner", OWNER, "--root", ROOT].map(String::from)),
            "worker" => a.extend(["--owner", OWNER, "--model", "m"].map(String::from)),
            _ => a.extend(["--root", ROOT, "--owner", OWNER].map(String::from)),
        }
        a
    };
    let cases: [(&[&str], &str); 4] = [
        (
            &["--set", "ton_quorum=0"],
            "ton_quorum (from --set): must be at least 1",
        ),
        (
            &[
                "--set",
                "ton_urls=http://127.0.0.1:1,http://127.0.0.1:2",
                "--set",
                "ton_quorum=3",
            ],
            "ton_quorum (from --set): 3 endpoints cannot agree when only 2 are configured",
        ),
        (
            &["--set", "ton_urls=http://127.0.0.1:1,http://127.0.0.1:1/"],
            "ton_urls (from --set): http://127.0.0.1:1 is listed twice",
        ),
        (
            &["--tee", "tdx", "--set", &format!("extra_ca_file={ca}")],
            "extra_ca_file (from --set): refused inside a TEE (tdx)",
        ),
    ];
    for role in ["proxy", "worker", "client"] {
        for (extra, want) in cases {
            let mut args = base(role);
            args.extend(extra.iter().map(|s| s.to_string()));
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let (rc, out, err) = cocoon(&a);
            assert_eq!(rc, 64, "{a:?}: {err}{out}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            assert!(
                err.starts_with(&format!("error: config: {role}.{want}")),
                "{a:?}: {err}"
            );
        }
    }
}

/// The devnet chain served by three endpoints, on a runtime the test keeps.
struct Net {
    rt: tokio::runtime::Runtime,
    endpoints: Vec<FakeEndpoint>,
    _dir: tempfile::TempDir,
}

fn three_endpoints() -> Net {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = RunOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        dir: Some(dir.path().join("devnet")),
        now: None,
        deploy_root: false,
    };
    let started = start(&opts).unwrap();
    let endpoints = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(FakeEndpoint::spawn(started.state.clone()).await.unwrap());
        }
        v
    });
    Net {
        rt,
        endpoints,
        _dir: dir,
    }
}

/// Makes `e` serve the root's storage with its version raised by `bump` (a forged
/// configuration that a runner would adopt as newer).
fn forge_root(e: &FakeEndpoint, root: &StdAddr, bump: u32) {
    let root = root.clone();
    e.lie(move |asked, result| {
        let about_root = asked
            .param("address")
            .and_then(|a| cocoon_ton::parse_address(a).ok())
            .is_some_and(|a| a == root);
        if asked.method != "getAddressInformation" || !about_root {
            return;
        }
        let Some(data) = result["data"].as_str() else {
            return;
        };
        let mut c = RootConfig::from_storage_cell(&decode_boc_base64(data).unwrap()).unwrap();
        c.version += bump;
        result["data"] = encode_boc_base64(&c.to_storage_cell().unwrap()).into();
    });
}

fn start_proxy(
    dir: &std::path::Path,
    owner: &str,
    root: &str,
    ton: &[&str],
) -> (Killed, std::path::PathBuf, String) {
    let log = dir.join("proxy.log");
    let mut args: Vec<String> = [
        "proxy",
        "--test",
        "--tee",
        "sim",
        "--owner",
        owner,
        "--root",
        root,
        "--worker-listen",
        "127.0.0.1:0",
        "--client-listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--set",
        "root_poll_seconds=1",
        "--set",
        "pow_difficulty=4",
    ]
    .map(String::from)
    .to_vec();
    if let [one] = ton {
        args.extend(["--ton".to_owned(), one.to_string()]);
    } else {
        args.extend([
            "--set".to_owned(),
            format!("ton_urls={}", ton.join(",")),
            "--set".to_owned(),
            "ton_quorum=2".to_owned(),
        ]);
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cocoon"));
    cmd.args(&args)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let (child, bound) = start_ready(&mut cmd, &dir.join("ready.json"));
    (child, log, bound.get("admin_listen"))
}

#[test]
fn proxy_keeps_the_last_agreed_root_when_its_endpoints_disagree() {
    let net = three_endpoints();
    let e = &net.endpoints;
    let urls: Vec<String> = e.iter().map(FakeEndpoint::url).collect();
    let honest = urls[0].as_str();
    let tmp = tempfile::tempdir().unwrap();
    let (key, raw, root) = own_root(tmp.path(), honest, "9", 50_000_000_000);
    let root_addr = cocoon_ton::parse_address(&root).unwrap();
    let bump = || {
        root_op(
            &["add-image", &hex::encode([0x77; 32])],
            &key,
            honest,
            &root,
        )
    };
    let version = || {
        let chain = cocoon_ton::Toncenter::with_url(honest).unwrap();
        net.rt
            .block_on(cocoon_ton::chain::load_root_config(&chain, &root_addr))
            .unwrap()
            .version
    };
    let v0 = version();

    // One liar among three: the proxy starts on the agreed configuration and follows the
    // real change, never the forged version.
    forge_root(&e[1], &root_addr, 100);
    let pdir = tmp.path().join("p1");
    std::fs::create_dir_all(&pdir).unwrap();
    let urls_ref: Vec<&str> = urls.iter().map(String::as_str).collect();
    let (_proxy, log, admin) = start_proxy(&pdir, &raw, &root, &urls_ref);
    let stats = || get_json(&format!("http://{admin}/jsonstats"));
    let root_version = || stats().and_then(|s| s["root_version"].as_u64());
    wait_for("the proxy up", || root_version().is_some());
    assert_eq!(root_version(), Some(u64::from(v0)));
    bump();
    let v1 = version();
    assert_eq!(v1, v0 + 1);
    wait_for("the real change applied", || {
        root_version() == Some(u64::from(v1))
    });
    assert_eq!(stats().unwrap()["counters"]["ton_disagreements"], 0);

    // All three disagree, while the root changes for real: the proxy keeps v1.
    forge_root(&e[2], &root_addr, 200);
    bump();
    let v2 = version();
    assert_eq!(v2, v1 + 1);
    wait_for("a disagreement counted", || {
        stats().is_some_and(|s| s["counters"]["ton_disagreements"].as_u64() >= Some(2))
    });
    let s = stats().unwrap();
    assert_eq!(
        s["root_version"],
        u64::from(v1),
        "the last agreed root: {s}"
    );
    let metrics = reqwest_get(&format!("http://{admin}/metrics"));
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cocoon_proxy_ton_disagreements_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("ton_no_quorum: the chain endpoints do not agree on the root configuration"),
        "{text}"
    );

    // Agreement again: the newer real configuration is applied.
    e[1].honest();
    e[2].honest();
    wait_for("the agreed change applied", || {
        root_version() == Some(u64::from(v2))
    });

    // The old configuration, one endpoint, and that endpoint lies: the forgery is taken.
    forge_root(&e[1], &root_addr, 100);
    let pdir2 = tmp.path().join("p2");
    std::fs::create_dir_all(&pdir2).unwrap();
    let (_alone, _, admin2) = start_proxy(&pdir2, &raw, &root, &[urls_ref[1]]);
    wait_for("the single-endpoint proxy up", || {
        get_json(&format!("http://{admin2}/jsonstats")).is_some()
    });
    let forged = get_json(&format!("http://{admin2}/jsonstats")).unwrap()["root_version"]
        .as_u64()
        .unwrap();
    assert_eq!(
        forged,
        u64::from(v2 + 100),
        "one endpoint: the forged root is believed"
    );
}

/// GET over plain HTTP, the body as text.
fn reqwest_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// An HTTPS server with a certificate from a private CA that answers every request with a
/// toncenter `getAddressInformation` result (an empty account).
fn https_toncenter(rt: &tokio::runtime::Runtime) -> (String, String) {
    let p = cocoon_testkit::tls::pki();
    let body = serde_json::json!({ "ok": true, "result": {
        "@type": "raw.fullAccountState", "balance": "123000000000", "code": "",
        "data": "", "last_transaction_id": { "@type": "internal.transactionId",
        "lt": "0", "hash": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" },
        "sync_utime": 1, "state": "uninitialized"
    }})
    .to_string();
    let url = rt.block_on(cocoon_testkit::tls::serve_https_json(
        &p.leaf_der,
        &p.leaf_key,
        body,
    ));
    (url, p.ca_pem)
}

#[test]
fn a_ca_in_ssl_cert_file_is_not_trusted_only_the_explicit_setting() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, ca_pem) = https_toncenter(&rt);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let ca = ca.to_str().unwrap();
    let run = |extra: &[&str], env: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cocoon"));
        c.args(["wallet", "balance", "--address", OWNER, "--ton", &url])
            .args(extra);
        if let Some(f) = env {
            c.env("SSL_CERT_FILE", f);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = run(&[], Some(ca));
    assert!(!ok, "a CA from SSL_CERT_FILE must not be trusted: {text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    let (ok, text) = run(&["--extra-ca-file", ca], None);
    assert!(ok, "the explicit setting is trusted: {text}");
    assert!(text.contains("123"), "{text}");
}
