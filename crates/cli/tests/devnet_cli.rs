//! The real `cocoon devnet` process: start, serve the root, accept a second root deployed by
//! `cocoon root deploy`, stop cleanly on SIGTERM, and come back with the same state.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cocoon_ton::toncenter::{Devnet, Toncenter, ToncenterConfig};

mod common;
use common::{cocoon, ok};

/// Starts `cocoon devnet` and returns the child, its base URL, its stdout lines so far and
/// the channel with the rest.
fn start(dir: &std::path::Path) -> (Child, String, Vec<String>, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args([
            "devnet",
            "--listen",
            "127.0.0.1:0",
            "--now",
            "1800000000",
            "--dir",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("cocoon devnet did not become ready");
        let ready = line.starts_with("ready in ");
        lines.push(line);
        if ready {
            break;
        }
    }
    let url = lines
        .iter()
        .find_map(|l| l.strip_prefix("cocoon devnet: toncenter v2 API at "))
        .and_then(|u| u.strip_suffix("/api/v2/"))
        .expect("URL line")
        .to_owned();
    (child, url, lines, rx)
}

fn stop(mut child: Child, rx: mpsc::Receiver<String>) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "devnet exit status {status}");
    let rest: Vec<String> = rx.iter().collect();
    assert!(
        rest.iter().any(|l| l == "cocoon devnet stopped"),
        "{rest:?}"
    );
}

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
