//! The real `cocoon devnet` process: start, serve the root, accept a second root deployed by
//! `cocoon root deploy`, stop cleanly on SIGTERM, and come back with the same state.

use cocoon_ton::toncenter::{Devnet, Toncenter, ToncenterConfig};

mod common;
use common::{cocoon, ok, start_devnet as start, stop_devnet as stop};

#[test]
fn devnet_process_root_show_deploy_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("devnet");
    let (child, url, lines, rx) = start(&state);
    let root_line = lines
        .iter()
        .find(|l| l.starts_with("root contract: "))
        .unwrap()
        .clone();

    // The registry of the devnet's own root.
    let show = ok(&["root", "show", "--ton", &url]);
    assert!(show.contains("is_test: true"), "{show}");
    assert!(show.contains("owner: "), "{show}");

    // A second root, deployed by a fresh wallet with its own prices.
    let key = tmp.path().join("deployer.key");
    let key_s = key.to_str().unwrap();
    ok(&["wallet", "new", "--key", key_s]);
    let show_w = ok(&["wallet", "show", "--key", key_s]);
    let raw = show_w
        .lines()
        .find_map(|l| l.strip_prefix("address (raw): "))
        .unwrap()
        .to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = Toncenter::new(ToncenterConfig::new(url.clone())).unwrap();
    let addr = cocoon_ton::parse_address(&raw).unwrap();
    rt.block_on(client.faucet(&addr, 5_000_000_000)).unwrap();

    let args = [
        "root",
        "deploy",
        "--key",
        key_s,
        "--ton",
        &url,
        "--price",
        "30",
        "--worker-fee",
        "21",
    ];
    let out = ok(&args);
    let deployed = out
        .lines()
        .find_map(|l| l.strip_prefix("root deployed at "))
        .expect("deploy prints the address")
        .to_owned();
    let json = ok(&["root", "show", "--ton", &url, "--root", &deployed, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["price_per_token"].as_u64(), Some(30), "{json}");
    assert_eq!(v["worker_fee_per_token"].as_u64(), Some(21), "{json}");
    assert_eq!(v["owner"].as_str(), Some(raw.as_str()), "{json}");
    // The same configuration cannot be deployed twice; a fee above the price is refused.
    let (rc, _, err) = cocoon(&args);
    assert_ne!(rc, 0);
    assert!(err.contains("already deployed"), "{err}");
    let (rc, _, err) = cocoon(&[
        "root",
        "deploy",
        "--key",
        key_s,
        "--ton",
        &url,
        "--price",
        "1",
        "--worker-fee",
        "2",
    ]);
    assert_ne!(rc, 0);
    assert!(err.contains("must not exceed"), "{err}");

    // SIGTERM stops it cleanly; the state directory brings back the same chain.
    stop(child, rx);
    let (child, url2, lines2, rx2) = start(&state);
    assert!(
        lines2.contains(&root_line),
        "same root after restart: {lines2:?}"
    );
    let json = ok(&[
        "root", "show", "--ton", &url2, "--root", &deployed, "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["price_per_token"].as_u64(), Some(30), "{json}");
    stop(child, rx2);
}
