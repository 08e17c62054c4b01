//! The real `cocoon devnet` process: start, serve the root, accept a second root deployed by
//! `cocoon root deploy`, stop cleanly on SIGTERM, and come back with the same state.

mod common;
use common::{cocoon, faucet, new_wallet, ok, start_devnet as start, stop_devnet as stop};

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
    let raw = new_wallet(&key);
    faucet(&url, &raw, 5_000_000_000);

    let deploy = |price: &str, fee: &str| {
        let args = ["root", "deploy", "--key", key_s, "--ton", &url];
        cocoon(&[&args[..], &["--price", price, "--worker-fee", fee]].concat())
    };
    let (rc, out, err) = deploy("30", "21");
    assert_eq!(rc, 0, "{err}{out}");
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
    let (rc, _, err) = deploy("30", "21");
    assert_ne!(rc, 0);
    assert!(err.contains("already deployed"), "{err}");
    let (rc, _, err) = deploy("1", "2");
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
