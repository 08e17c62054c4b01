//! `cocoon kms` as a real process: configuration errors, and on the devnet a KMS that hands a
//! proxy its signing and wallet keys, `cocoon kms fetch` printing one of them, a second KMS
//! that gets the master from the first, a refusal once the root drops an image, and a proxy
//! that restarts with the same key (nothing of it on its disk) and keeps signing receipts
//! that a real client accepts, through a real worker whose wallet key comes from the KMS too.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{
    Killed, SimRoot, cocoon, faucet, get_json, have_test_model, new_wallet, ready_file, sigterm,
    spawn_role, start_devnet, start_ready, stop_devnet, wait_for,
};

const ROOT: &str = "0:5555555555555555555555555555555555555555555555555555555555555555";
const OWNER: &str = "0:4444444444444444444444444444444444444444444444444444444444444444";

#[test]
fn bad_kms_configuration_is_one_line_and_exit_64() {
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["serve", "--test", "--tee", "sim"],
            "error: config: kms.root_address (from default): required",
        ),
        (
            vec![
                "serve", "--test", "--tee", "sim", "--root", ROOT, "--peer", "x",
            ],
            "error: config: kms.peer (from --peer): expected host:port",
        ),
        (
            vec![
                "serve", "--test", "--tee", "sim", "--root", ROOT, "--peer", "h:1",
            ],
            "error: config: kms.kms_image_hashes (from default): required with peer",
        ),
        (
            vec![
                "fetch",
                "--role",
                "proxy",
                "--purpose",
                "disk",
                "--owner",
                OWNER,
            ],
            "error: config: proxy.kms (from default): required",
        ),
        (
            vec![
                "fetch",
                "--role",
                "proxy",
                "--purpose",
                "disk",
                "--kms",
                "h:1",
                "--owner",
                OWNER,
            ],
            "error: config: proxy.kms_image_hashes (from default): required with kms",
        ),
        (
            vec!["fetch", "--role", "client", "--purpose", "disk"],
            "error: unknown role \"client\"",
        ),
        (
            vec!["fetch", "--role", "worker", "--purpose", "master"],
            "error: unknown purpose \"master\"",
        ),
    ];
    for (args, want) in cases {
        let (rc, out, err) = cocoon(&[&["kms"], &args[..]].concat());
        assert_eq!(rc, 64, "{args:?}: {err}{out}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with(want), "{args:?}: {err}");
    }
    let (rc, _, err) = cocoon(&[
        "proxy",
        "--test",
        "--root",
        ROOT,
        "--owner",
        OWNER,
        "--set",
        "kms=h:1",
        "--set",
        &format!("kms_image_hashes={}", "11".repeat(32)),
        "--set",
        "proxy_key_file=/tmp/k",
    ]);
    assert_eq!(rc, 64, "{err}");
    assert!(err.contains("proxy.proxy_key_file") && err.contains("must be empty with kms"));
}

/// `cocoon kms serve --test --tee sim ARGS... --state-dir STATE`.
fn kms_command(args: &[&str], state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cocoon"));
    c.args(["kms", "serve", "--test", "--tee", "sim"])
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    c
}

/// `cocoon kms serve` (sim TEE) once it listens; its address (`listen`) with it.
fn kms_process(args: &[&str], state: &Path) -> (Killed, String) {
    let (k, bound) = start_ready(&mut kms_command(args, state), &ready_file(state));
    (k, bound.get("listen"))
}

/// Every file below `dir`, read whole.
fn files_below(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_below(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p.display().to_string(), b));
        }
    }
}

#[test]
fn a_proxy_keyed_by_the_kms_restarts_with_the_same_key_and_clients_accept_its_receipts() {
    if !have_test_model() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (devnet, url, _lines, rx) = start_devnet(&tmp.path().join("devnet"));
    let mut devnet = Killed::new(devnet);
    let net = SimRoot::deploy(tmp.path(), &url, "11");
    let root = net.root.clone();
    let sim = hex::encode(cocoon_attest::sim::sim_image_hash());
    let trust = format!("kms_image_hashes={sim}");

    // The KMS, following the same root, on a port it picks.
    let kstate = tmp.path().join("kms");
    let (mut kms, kaddr) = kms_process(
        &[
            "--root",
            &root,
            "--ton",
            &url,
            "--listen",
            "127.0.0.1:0",
            "--set",
            &trust,
            "--set",
            "pow_difficulty=4",
            "--set",
            "root_cache_seconds=1",
            "--set",
            "new_master=true",
        ],
        &kstate,
    );

    // The proxy's wallet key, as an image's init would fetch it (retrying until the KMS is
    // up); funded so that the proxy can deploy its contract.
    let pstate = tmp.path().join("proxy");
    let wstate = tmp.path().join("worker");
    let fetch_from = |kms: &str, role: &str, owner: &str, state: &Path, purpose: &str| {
        // A worker is one of its owner's instances, with keys of its own.
        let instance = if role == "worker" {
            "kms_instance=gpu-1"
        } else {
            "kms_instance="
        };
        cocoon(&[
            "kms",
            "fetch",
            "--kms",
            kms,
            "--role",
            role,
            "--purpose",
            purpose,
            "--test",
            "--tee",
            "sim",
            "--owner",
            owner,
            "--state-dir",
            state.to_str().unwrap(),
            "--set",
            &trust,
            "--set",
            instance,
        ])
    };
    let fetch = |role: &str, owner: &str, state: &Path, purpose: &str| {
        let (rc, out, err) = fetch_from(&kaddr, role, owner, state, purpose);
        assert_eq!(rc, 0, "{err}");
        let mut seed = [0u8; 32];
        hex::decode_to_slice(out.trim(), &mut seed).unwrap();
        seed
    };
    let fund = |seed: &[u8; 32]| {
        let key = cocoon_ton::keys::SigningKey::from_seed(seed).unwrap();
        let wallet = cocoon_ton::wallet::Wallet::new(
            cocoon_ton::wallet::WalletVersion::V4R2,
            key.public_key(),
        );
        faucet(&url, &wallet.address().unwrap().to_string(), 20_000_000_000);
    };
    let wallet_seed = fetch("proxy", &net.raw, &pstate, "wallet");
    let signing_seed = fetch("proxy", &net.raw, &pstate, "signing");
    assert_ne!(wallet_seed, signing_seed);
    fund(&wallet_seed);
    let worker_seed = fetch("worker", common::WORKER_OWNER, &wstate, "wallet");
    assert_ne!(worker_seed, wallet_seed, "roles get different keys");
    fund(&worker_seed);

    // The proxy with no key files: both keys from the KMS. First on ports it picks, then
    // (restarted) at the addresses it reported, which the root lists and the client redials
    // (free only between the first run's exit and the restart's bind).
    let kms_set = format!("kms={kaddr}");
    let start_proxy = |worker: &str, client: &str, admin: &str| {
        spawn_role(
            &[
                "proxy",
                "--owner",
                &net.raw,
                "--root",
                &root,
                "--ton",
                &url,
                "--worker-listen",
                worker,
                "--client-listen",
                client,
                "--admin",
                admin,
                "--set",
                &kms_set,
                "--set",
                &trust,
                "--set",
                "stake_ton=1",
                "--set",
                "checkpoint_seconds=1",
                "--set",
                "root_poll_seconds=1",
                "--set",
                "pow_difficulty=4",
            ],
            &pstate,
        )
    };
    let any = "127.0.0.1:0";
    let (mut proxy, pbound) = start_proxy(any, any, any);
    let (pw, pc, padmin) = (
        pbound.get("worker_listen"),
        pbound.get("client_listen"),
        pbound.get("admin_listen"),
    );
    net.register(&pw, &pc);
    let pstats = || get_json(&format!("http://{padmin}/jsonstats"));
    wait_for("the proxy's first confirmed checkpoint", || {
        pstats().is_some_and(|s| s["ledger"]["confirmed_checkpoint"].as_u64() >= Some(1))
    });

    // The worker's payout wallet from the KMS too (its sim image is on the worker list).
    let (mut worker, wbound) = spawn_role(
        &[
            "worker",
            "--owner",
            common::WORKER_OWNER,
            "--root",
            &root,
            "--ton",
            &url,
            "--model",
            "smollm2-135m",
            "--admin",
            "127.0.0.1:0",
            "--set",
            "root_poll_seconds=1",
            "--set",
            "slots=1",
            "--set",
            "ctx_per_slot=512",
            "--set",
            "threads=1",
            "--set",
            &kms_set,
            "--set",
            &trust,
            "--set",
            "kms_instance=gpu-1",
        ],
        &wstate,
    );
    let wadmin = wbound.get("admin_listen");
    net.allow_model_of(&wadmin, &padmin);

    // A client with its own wallet and channel.
    let ckey = tmp.path().join("client.key");
    let craw = new_wallet(&ckey);
    faucet(&url, &craw, 30_000_000_000);
    let cwallet = format!("wallet_key_file={}", ckey.display());
    let (mut client, cbound) = spawn_role(
        &[
            "client",
            "--root",
            &root,
            "--ton",
            &url,
            "--listen",
            "127.0.0.1:0",
            "--set",
            &cwallet,
            "--set",
            "top_up_ton=5",
            "--set",
            "payment_status_seconds=1",
            "--set",
            "root_poll_seconds=1",
        ],
        &tmp.path().join("client"),
    );
    let api = format!("http://{}", cbound.get("api_listen"));
    let cstats = || get_json(&format!("{api}/jsonstats"));
    let proxy_view = || cstats().map(|s| s["proxies"][0].clone());
    wait_for("the client's proxy session", || {
        cstats().is_some_and(|s| s["proxies_ready"] == 1)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The worker is admitted only once the root lists its model (root_poll_seconds): the
    // client's model list may be empty for a moment after its session is ready.
    let model = || {
        rt.block_on(common::models(&api))["data"][0]["id"]
            .as_str()
            .map(str::to_owned)
    };
    wait_for("a model on the client's list", || model().is_some());
    let name = model().unwrap();
    let ask = || {
        let c = rt.block_on(common::chat(&api, &name, false));
        assert_eq!(c.status, 200, "{}", c.body());
    };
    ask();
    wait_for("a receipt the client accepted", || {
        proxy_view().is_some_and(|p| p["receipt_tokens"].as_u64() > Some(0))
    });
    let before = proxy_view().unwrap();
    let proxy_sc = before["proxy_sc"].as_str().unwrap().to_owned();
    let tokens = before["receipt_tokens"].as_u64().unwrap();

    // Restarted, the proxy gets the same key from the KMS: the same contract, its ledger opens
    // (its rows are keyed from the proxy key), and its new receipts verify for the client.
    assert!(sigterm(proxy.take()).success());
    let (mut proxy, _) = start_proxy(&pw, &pc, &padmin);
    wait_for("the client's session with the restarted proxy", || {
        cstats().is_some_and(|s| s["proxies_ready"] == 1)
            && pstats().is_some_and(|s| s["workers"].as_array().map(|w| w.len()) == Some(1))
    });
    ask();
    wait_for("a newer receipt the client accepted", || {
        proxy_view().is_some_and(|p| p["receipt_tokens"].as_u64() > Some(tokens))
    });
    let after = proxy_view().unwrap();
    assert_eq!(
        after["proxy_sc"].as_str(),
        Some(proxy_sc.as_str()),
        "{after}"
    );
    assert_eq!(after["bad_receipts"], 0, "{after}");

    // No key is on the proxy's or the worker's disk, raw or as hex; the KMS's master is there only sealed.
    let mut files = Vec::new();
    files_below(&pstate, &mut files);
    files_below(&kstate, &mut files);
    assert!(files.iter().any(|(p, _)| p.ends_with("master.sealed")));
    files_below(&wstate, &mut files);
    for seed in [wallet_seed, signing_seed, worker_seed] {
        let hex_seed = hex::encode(seed);
        for (path, bytes) in &files {
            assert!(!bytes.windows(32).any(|w| w == seed), "{path}");
            assert!(
                !String::from_utf8_lossy(bytes).contains(&hex_seed),
                "{path}"
            );
        }
    }

    // A second KMS gets the master from the first (both attest each other), seals it, and
    // restarted alone hands out the same keys.
    // The second KMS picks its port each time it starts.
    let k2state = tmp.path().join("kms2");
    let second = |peer: Option<&str>| {
        let mut args = vec![
            "--root",
            &root,
            "--ton",
            &url,
            "--listen",
            "127.0.0.1:0",
            "--set",
            &trust,
            "--set",
            "pow_difficulty=4",
        ];
        if let Some(p) = peer {
            args.extend(["--peer", p]);
        }
        kms_process(&args, &k2state)
    };
    let same_signing_key = |kms: &str| {
        let (rc, out, err) = fetch_from(kms, "proxy", &net.raw, &pstate, "signing");
        assert_eq!(rc, 0, "{err}");
        assert_eq!(out.trim(), hex::encode(signing_seed));
    };
    let (mut kms2, k2addr) = second(Some(&kaddr));
    same_signing_key(&k2addr);
    assert!(sigterm(kms2.take()).success());
    assert!(k2state.join("master.sealed").exists());
    let (mut kms2, k2addr) = second(None);
    same_signing_key(&k2addr);
    assert!(sigterm(kms2.take()).success());
    // A KMS with no sealed master and no peer does not make a new one unasked.
    let mut lost = Killed::new(
        kms_command(
            &["--root", &root, "--ton", &url, "--listen", "127.0.0.1:0"],
            &tmp.path().join("kms3"),
        )
        .spawn()
        .unwrap(),
    );
    let status = lost.0.as_mut().unwrap().wait().unwrap();
    assert_eq!(status.code(), Some(1));

    // The root drops the worker image: the KMS refuses it (exit 1, the reason on stderr).
    net.op(&["del-image", &sim]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (rc, out, err) = fetch_from(&kaddr, "worker", common::WORKER_OWNER, &wstate, "wallet");
    assert_eq!(rc, 1, "{out}{err}");
    assert!(out.is_empty() && err.contains("image not allowed"), "{err}");

    assert!(sigterm(client.take()).success());
    assert!(sigterm(proxy.take()).success());
    assert!(sigterm(worker.take()).success());
    assert!(sigterm(kms.take()).success());
    stop_devnet(devnet.take(), rx);
}
