//! `cocoon proxy` as a real process: configuration errors, and on the devnet a proxy that
//! deploys its contract from the operator's wallet, checkpoints its ledger on chain, admits a
//! real `cocoon worker` (embedded default model, sim TEE on a test root), stops on SIGTERM and
//! restarts on the same ledger.

mod common;
use common::{
    Killed, SimRoot, cocoon_env, get_json, have_test_model, sigterm, start_devnet, stop_devnet,
    wait_for, worker_process,
};

const OWNER: &str = "0:4444444444444444444444444444444444444444444444444444444444444444";
const ROOT: &str = "0:5555555555555555555555555555555555555555555555555555555555555555";

fn proxy_cmd(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    cocoon_env(&[&["proxy"], args].concat(), envs)
}

#[test]
fn bad_proxy_configuration_is_one_line_and_exit_64() {
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--root", ROOT],
            vec![],
            "error: config: proxy.owner_address (from default): required",
        ),
        (
            vec!["--owner", OWNER],
            vec![],
            "error: config: proxy.root_address (from default): required",
        ),
        (
            vec!["--owner", OWNER, "--root", ROOT],
            vec![],
            "error: config: proxy.wallet_key_file (from default): required outside test networks",
        ),
        (
            vec![
                "--owner",
                OWNER,
                "--root",
                ROOT,
                "--test",
                "--worker-listen",
                "nowhere",
            ],
            vec![],
            "error: config: proxy.worker_listen (from --worker-listen): expected ip:port",
        ),
        (
            vec!["--owner", OWNER, "--root", ROOT, "--test"],
            vec![("COCOON_PROXY_MIN_CLIENT_CHARGE_TON", "lots")],
            "error: config: proxy.min_client_charge_ton (from COCOON_PROXY_MIN_CLIENT_CHARGE_TON): ",
        ),
        (
            vec!["--owner", OWNER, "--root", ROOT, "--test"],
            vec![("COCOON_PROXY_ADMIN_ALLOWED_ORIGINS", "*")],
            "error: config: proxy.admin_allowed_origins (from COCOON_PROXY_ADMIN_ALLOWED_ORIGINS): \
             \"*\" is not an origin: a wildcard",
        ),
    ];
    for (args, envs, want) in cases {
        let (rc, out, err) = proxy_cmd(&args, &envs);
        assert_eq!(rc, 64, "{args:?}: {err}{out}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with(want), "{args:?}: {err}");
    }
    let (rc, out, _) = proxy_cmd(&["--print-defaults"], &[]);
    assert_eq!(rc, 0);
    assert!(out.starts_with("# `cocoon proxy` defaults."), "{out}");
}

#[test]
fn proxy_process_checkpoints_on_devnet_and_admits_a_worker_process() {
    if !have_test_model() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (devnet, url, _lines, rx) = start_devnet(&tmp.path().join("devnet"));
    let mut devnet = Killed::new(devnet);

    // One wallet owns the root and operates the proxy.
    let net = SimRoot::deploy(tmp.path(), &url, "8");
    let state = tmp.path().join("proxy");
    let (mut proxy, bound) = net.proxy(&state);
    let admin = bound.get("admin_listen");
    let stats_url = format!("http://{admin}/jsonstats");
    let stats = || get_json(&stats_url);
    // The contract is deployed with its stake, and the first checkpoint is confirmed.
    wait_for("a confirmed checkpoint", || {
        stats().is_some_and(|s| s["ledger"]["confirmed_checkpoint"].as_u64() >= Some(1))
    });
    let s = stats().unwrap();
    assert!(s["is_test"].as_bool().unwrap(), "{s}");
    assert!(s["ledger"]["halted"].is_null(), "{s}");

    // A worker with the embedded default model, following the same root.
    let (mut worker, wbound) = worker_process(&net.root, &url, "1", &tmp.path().join("worker"));
    let worker_admin = wbound.get("admin_listen");
    let model = net.allow_model_of(&worker_admin, &admin);
    let s = stats().unwrap();
    assert_eq!(s["workers"][0]["model"], model.as_str(), "{s}");

    // SIGTERM stops the proxy cleanly; it restarts on the same ledger (no rollback alarm).
    let confirmed = stats().unwrap()["ledger"]["confirmed_checkpoint"]
        .as_u64()
        .unwrap();
    let status = sigterm(proxy.take());
    assert!(status.success(), "proxy exit status {status}");
    // On new ports, registered in the root again: nothing waits for the old ones to be free.
    let (mut proxy, bound) = net.proxy(&state);
    let stats_url = format!("http://{}/jsonstats", bound.get("admin_listen"));
    let stats = || get_json(&stats_url);
    wait_for("the restarted proxy checkpoints again", || {
        stats().is_some_and(|s| s["ledger"]["confirmed_checkpoint"].as_u64() > Some(confirmed))
    });
    assert!(sigterm(proxy.take()).success());
    assert!(sigterm(worker.take()).success());
    stop_devnet(devnet.take(), rx);
}
