//! `cocoon explorer` as a process against toncenter endpoints that lie (three toncenter-v2
//! endpoints over one devnet, quorum 2, the same client code path as toncenter.com): one
//! liar forging the root's prices is outvoted; the owner's real price change shows with its
//! old and new values in the price history; when all three disagree the root reads as stale
//! with the last agreed prices kept; a proxy stats URL that never answers is unreachable
//! and holds no page. Bad flags are one line.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cocoon_devnet::fake::FakeEndpoint;
use cocoon_devnet::run::{RunOptions, start};
use cocoon_ton::StdAddr;
use cocoon_ton::codec::{decode_boc_base64, encode_boc_base64};
use cocoon_ton::root::RootConfig;

mod common;
use common::{cocoon, get_json, own_root, root_op, start_ready, wait_for};

/// Makes `e` serve the root's storage with `price` as its price and its version raised by
/// `bump` (a forged configuration).
fn forge_price(e: &FakeEndpoint, root: &StdAddr, price: u64, bump: u32) {
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
        c.params.price_per_token = price;
        result["data"] = encode_boc_base64(&c.to_storage_cell().unwrap()).into();
    });
}

#[test]
fn bad_explorer_flags_are_one_line() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["--root", "nope", "--chain", "http://127.0.0.1:1"],
            "error: --root:",
        ),
        (
            &[
                "--root",
                "0:5555555555555555555555555555555555555555555555555555555555555555",
                "--chain",
                "ftp://x",
            ],
            "error: --chain",
        ),
        (
            &[
                "--root",
                "0:5555555555555555555555555555555555555555555555555555555555555555",
                "--chain",
                "http://127.0.0.1:1",
                "--quorum",
                "2",
            ],
            "error: --quorum: 2 endpoints cannot agree",
        ),
        (
            &[
                "--root",
                "0:5555555555555555555555555555555555555555555555555555555555555555",
                "--chain",
                "http://127.0.0.1:1",
                "--proxy-stats",
                "file:///etc/passwd",
            ],
            "error: --proxy-stats \"file:///etc/passwd\" is not an http(s):// URL",
        ),
        (
            // The client's rule: sim proxies only on a test network.
            &[
                "--root",
                "0:5555555555555555555555555555555555555555555555555555555555555555",
                "--chain",
                "http://127.0.0.1:1",
                "--proxy-policy",
                "sim",
                "--state-dir",
                "/tmp",
            ],
            "error: --proxy-policy: a sim or fake-tdx peer policy needs a test network",
        ),
    ];
    for (args, want) in cases {
        let mut a = vec!["explorer"];
        a.extend_from_slice(args);
        let (rc, out, err) = cocoon(&a);
        assert_eq!(rc, 1, "{args:?}: {err}{out}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with(want), "{args:?}: {err}");
    }
}

#[test]
fn the_explorer_outvotes_a_lying_endpoint_and_keeps_the_last_agreed_root() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = RunOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        dir: Some(dir.path().join("devnet")),
        now: None,
        deploy_root: false,
    };
    let started = start(&opts).unwrap();
    let e: Vec<FakeEndpoint> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(FakeEndpoint::spawn(started.state.clone()).await.unwrap());
        }
        v
    });
    let urls: Vec<String> = e.iter().map(FakeEndpoint::url).collect();
    let honest = urls[0].as_str();
    let (key, _raw, root) = own_root(dir.path(), honest, "7", 50_000_000_000);
    let root_addr = cocoon_ton::parse_address(&root).unwrap();
    let config = || {
        let chain = cocoon_ton::Toncenter::with_url(honest).unwrap();
        rt.block_on(cocoon_ton::chain::load_root_config(&chain, &root_addr))
            .unwrap()
    };
    let before = config();
    forge_price(&e[1], &root_addr, 999_999, 100);

    let mut args = vec![
        "explorer".to_owned(),
        "--root".into(),
        root.clone(),
        "--quorum".into(),
        "2".into(),
        "--bind".into(),
        "127.0.0.1:0".into(),
        "--poll-secs".into(),
        "1".into(),
        "--timeout-secs".into(),
        "3".into(),
        "--proxy-stats".into(),
        // Port 0: nobody can listen there.
        "http://127.0.0.1:0/public.json".into(),
        "--state-dir".into(),
        dir.path().join("explorer").to_string_lossy().into_owned(),
    ];
    for u in &urls {
        args.extend(["--chain".to_owned(), u.clone()]);
    }
    let (_explorer, bound) = start_ready(
        Command::new(env!("CARGO_BIN_EXE_cocoon"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        &dir.path().join("explorer.ready.json"),
    );
    let bind = bound.get("bind");
    let api = format!("http://{bind}/api/network");
    let net = || get_json(&api).unwrap_or_default();
    wait_for("the explorer's first read", || net()["status"] == "live");
    let j = net();
    // The liar is outvoted: the real price and version.
    assert_eq!(
        j["prices"]["price_per_token"],
        before.params.price_per_token
    );
    assert_eq!(j["root_version"], before.version);
    assert_eq!(j["history_from_deployment"], true, "{j:#}");
    assert_eq!(j["proxies"][0]["status"], "unreachable");

    // The owner's real change, through the honest endpoint.
    let new_price = before.params.price_per_token + 7;
    root_op(
        &[
            "set-price",
            "--price",
            &new_price.to_string(),
            "--worker-fee",
            &before.params.worker_fee_per_token.to_string(),
        ],
        &key,
        honest,
        &root,
    );
    wait_for("the new price", || {
        net()["prices"]["price_per_token"] == new_price
    });
    let j = net();
    let changes = j["price_history"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{j:#}");
    assert_eq!(changes[0]["op"], "change-price");
    assert_eq!(
        changes[0]["fields"],
        serde_json::json!([{
            "field": "price_per_token",
            "old": before.params.price_per_token,
            "new": new_price,
        }])
    );

    // All three disagree: stale, the last agreed figures kept, the page still served fast.
    forge_price(&e[2], &root_addr, 1, 200);
    wait_for("the root read as stale", || net()["status"] == "stale");
    let j = net();
    assert_eq!(j["prices"]["price_per_token"], new_price);
    assert!(
        j["error"].as_str().unwrap().contains("no quorum"),
        "{}",
        j["error"]
    );
    let t = Instant::now();
    let html = common::get_text(&format!("http://{bind}/")).unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    cocoon_testkit::http::assert_no_debug_values("the explorer", &html);
    assert!(html.contains("stale") && html.contains("no quorum"));
    // Agreement again: live.
    e[2].honest();
    wait_for("the root live again", || net()["status"] == "live");
}
