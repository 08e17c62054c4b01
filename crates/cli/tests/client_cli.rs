//! `cocoon client` as a real process: configuration errors, and on the devnet the whole
//! network in processes — a proxy, a worker with the embedded default model, and a client
//! whose wallet deploys its channel and registers with the proxy on chain — answering an
//! OpenAI request streamed and not, operated with `cocoon client status|topup`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{
    Killed, free_port, get_json, have_test_model, ok, own_root, root_op, sigterm, start_devnet,
    stop_devnet, wait_for,
};

const ROOT: &str = "0:5555555555555555555555555555555555555555555555555555555555555555";
const OWNER: &str = "0:4444444444444444444444444444444444444444444444444444444444444444";

fn client_cmd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .arg("client")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_client_configuration_is_one_line_and_exit_64() {
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--owner", OWNER],
            "error: config: client.root_address (from default): required",
        ),
        (
            vec!["--root", ROOT],
            "error: config: client.wallet_key_file (from default): required unless owner_address",
        ),
        (
            vec!["--root", ROOT, "--owner", OWNER, "--proxy", "nowhere"],
            "error: config: client.proxies (from --proxy): \"nowhere\" is not host:port",
        ),
        (
            vec![
                "--root",
                ROOT,
                "--owner",
                OWNER,
                "--set",
                "check_proxy_hashes=false",
            ],
            "error: config: client.check_proxy_hashes (from --set): may be turned off on test networks only",
        ),
        (
            vec!["--root", ROOT, "--owner", OWNER, "--listen", "10000"],
            "error: config: client.api_listen (from --listen): expected ip:port",
        ),
        // Listening beyond loopback without API keys: refused before any network use.
        (
            vec![
                "--root",
                ROOT,
                "--owner",
                OWNER,
                "--listen",
                "0.0.0.0:10000",
            ],
            "error: config: client.api_listen (from --listen): 0.0.0.0:10000 is reachable \
             beyond this machine but api_keys_file is empty",
        ),
        (
            vec!["--root", ROOT, "--owner", OWNER, "--listen", "[::]:10000"],
            "error: config: client.api_listen (from --listen): [::]:10000 is reachable",
        ),
        (
            vec![
                "--root",
                ROOT,
                "--owner",
                OWNER,
                "--set",
                "allowed_hosts=cocoon.lan:80",
            ],
            "error: config: client.allowed_hosts (from --set): \"cocoon.lan:80\" is not a host \
             name or address: give the name without a port",
        ),
    ];
    for (args, want) in cases {
        let (rc, out, err) = client_cmd(&args);
        assert_eq!(rc, 64, "{args:?}: {err}{out}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with(want), "{args:?}: {err}");
    }
    // Allowed origins from the environment, comma-separated; the bad entry is named.
    let out = Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args(["client", "--root", ROOT, "--owner", OWNER])
        .env(
            "COCOON_CLIENT_ALLOWED_ORIGINS",
            "http://localhost:3000, null",
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.starts_with(
            "error: config: client.allowed_origins (from COCOON_CLIENT_ALLOWED_ORIGINS): \
             \"null\" is not an origin"
        ),
        "{err}"
    );
    let (rc, out, _) = client_cmd(&["--print-defaults"]);
    assert_eq!(rc, 0);
    assert!(out.starts_with("# `cocoon client` defaults."), "{out}");
    // Not running: the operating commands say so.
    let (rc, _, err) = client_cmd(&[
        "status",
        "--api",
        &format!("http://127.0.0.1:{}", free_port()),
    ]);
    assert_eq!(rc, 1);
    assert!(err.contains("is `cocoon client` running"), "{err}");
    // API keys: printed once, hashed in the file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    let (rc, key, err) = client_cmd(&[
        "key",
        "app",
        "--limit",
        "2.5",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(rc, 0, "{err}");
    let key = key.trim();
    assert!(key.starts_with("sk-cocoon-"));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(key));
    assert!(text.contains(&cocoon_client::keys::key_hash(key)));
    assert!(text.trim_end().ends_with("2.5 app"), "{text}");
}

/// POST a chat request; returns (status, body, seconds to the first body byte, total).
async fn chat(api: &str, model: &str, stream: bool) -> (u16, String, Duration, Duration) {
    use futures::StreamExt;
    let started = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{api}/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": "Name three colours."}],
            "max_tokens": 24,
            "stream": stream,
        }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let mut first = None;
    let mut body = Vec::new();
    let mut s = r.bytes_stream();
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        if first.is_none() && !c.is_empty() {
            first = Some(started.elapsed());
        }
        body.extend_from_slice(&c);
    }
    (
        status,
        String::from_utf8(body).unwrap(),
        first.unwrap_or_default(),
        started.elapsed(),
    )
}

#[test]
fn client_process_streams_the_default_model_through_proxy_and_worker_on_devnet() {
    if !have_test_model() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (devnet, url, _lines, rx) = start_devnet(&tmp.path().join("devnet"));
    let mut devnet = Killed::new(devnet);
    let (key_s, raw, root) = own_root(tmp.path(), &url, "9", 50_000_000_000);
    let key_s = key_s.as_str();
    let owner_op = |op: &[&str]| root_op(op, key_s, &url, &root);
    let sim = hex::encode(cocoon_attest::sim::sim_image_hash());
    owner_op(&["add-image", &sim]);
    owner_op(&["add-image", "--kind", "proxy", &sim]);
    let (pw, pc) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    owner_op(&["add-proxy", &format!("{pw} {pc}")]);

    let padmin = format!("127.0.0.1:{}", free_port());
    let proxy = Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args([
            "proxy",
            "--test",
            "--tee",
            "sim",
            "--owner",
            &raw,
            "--root",
            &root,
            "--ton",
            &url,
            "--worker-listen",
            &pw,
            "--client-listen",
            &pc,
            "--admin",
            &padmin,
            "--set",
            &format!("wallet_key_file={key_s}"),
            "--set",
            "stake_ton=1",
            "--set",
            "checkpoint_seconds=1",
            "--set",
            "root_poll_seconds=1",
            "--set",
            "pow_difficulty=4",
        ])
        .arg("--state-dir")
        .arg(tmp.path().join("proxy"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut proxy = Killed::new(proxy);
    let wadmin = format!("127.0.0.1:{}", free_port());
    let worker = Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args([
            "worker",
            "--test",
            "--tee",
            "sim",
            "--owner",
            OWNER,
            "--root",
            &root,
            "--ton",
            &url,
            "--model",
            "smollm2-135m",
            "--admin",
            &wadmin,
            "--set",
            "root_poll_seconds=1",
            "--set",
            "slots=2",
            "--set",
            "ctx_per_slot=512",
            "--set",
            "threads=1",
        ])
        .arg("--state-dir")
        .arg(tmp.path().join("worker"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut worker = Killed::new(worker);
    wait_for("the worker's model id", || {
        get_json(&format!("http://{wadmin}/jsonstats")).is_some()
    });
    let model = get_json(&format!("http://{wadmin}/jsonstats")).unwrap()["model"]
        .as_str()
        .unwrap()
        .to_owned();
    owner_op(&["add-model", &model]);
    wait_for("the worker admitted", || {
        get_json(&format!("http://{padmin}/jsonstats"))
            .and_then(|s| s["workers"].as_array().map(|w| w.len() == 1))
            == Some(true)
    });

    // The client's own wallet, funded from the faucet.
    let ckey = tmp.path().join("client.key");
    let ckey_s = ckey.to_str().unwrap();
    ok(&["wallet", "new", "--key", ckey_s]);
    let craw = ok(&["wallet", "show", "--key", ckey_s])
        .lines()
        .find_map(|l| l.strip_prefix("address (raw): ").map(str::to_owned))
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    {
        use cocoon_ton::toncenter::{Devnet, Toncenter};
        let tc = Toncenter::with_url(&url).unwrap();
        rt.block_on(tc.faucet(&cocoon_ton::parse_address(&craw).unwrap(), 30_000_000_000))
            .unwrap();
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let api = format!("http://{listen}");
    let cstate = tmp.path().join("client");
    let client = Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args([
            "client",
            "--test",
            "--tee",
            "sim",
            "--root",
            &root,
            "--ton",
            &url,
            "--listen",
            &listen,
            "--set",
            &format!("wallet_key_file={ckey_s}"),
            "--set",
            "top_up_ton=5",
            "--set",
            "payment_status_seconds=1",
            "--set",
            "root_poll_seconds=1",
        ])
        .arg("--state-dir")
        .arg(&cstate)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut client = Killed::new(client);
    let stats = || get_json(&format!("{api}/jsonstats"));
    // The wallet deploys the channel with 5 TON, registers on chain (long authorisation).
    wait_for("the client's proxy session", || {
        stats().is_some_and(|s| s["proxies_ready"] == 1)
    });
    let s = stats().unwrap();
    assert_eq!(s["proxies"][0]["auth"], "long", "{s}");
    assert_eq!(s["proxies"][0]["tee"], "Sim", "{s}");

    rt.block_on(async {
        let m: serde_json::Value = reqwest::get(format!("{api}/v1/models"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(m["data"][0]["workers"].as_array().unwrap().len(), 1, "{m}");
        let name = m["data"][0]["id"].as_str().unwrap().to_owned();
        assert!(model.starts_with(&name), "{name} for {model}");
        let (status, body, first, total) = chat(&api, &name, true).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
        assert!(body.contains("\"usage\""), "{body}");
        assert!(body.matches("data: ").count() > 5, "{body}");
        assert!(first < total, "first byte {first:?}, all {total:?}");
        let (status, body, _, _) = chat(&api, &name, false).await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            !v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .is_empty()
        );
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    });
    let s = stats().unwrap();
    assert_eq!(s["stats"]["succeeded"], 2, "{s}");
    assert!(s["totals"]["spent_nanoton"].as_u64().unwrap() > 0, "{s}");

    // Operated from the command line.
    let api_s = api.as_str();
    let (rc, out, err) = client_cmd(&["status", "--api", api_s]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("1 of 1 proxies ready"), "{out}");
    assert!(out.contains("channel open"), "{out}");
    let balance = || {
        stats().unwrap()["proxies"][0]["channel"]["balance"]
            .as_u64()
            .unwrap_or(0)
    };
    wait_for("the channel read", || balance() > 0);
    let before = balance();
    let token = cstate.join("admin-token");
    let (rc, out, err) = client_cmd(&[
        "topup",
        "--api",
        api_s,
        "--token-file",
        token.to_str().unwrap(),
        "--amount",
        "2",
    ]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("topup: done"), "{out}");
    // Charges settle against the balance meanwhile; the top-up adds exactly 2 TON.
    let after = balance();
    let charged = |st: &serde_json::Value| st["proxies"][0]["channel"]["tokens_used"].as_u64();
    if charged(&stats().unwrap()) == Some(0) {
        assert_eq!(after, before + 2_000_000_000);
    }
    let (rc, _, err) = client_cmd(&["topup", "--api", api_s, "--token-file", "/nonexistent"]);
    assert_eq!(rc, 1);
    assert!(err.contains("admin token"), "{err}");

    assert!(sigterm(client.take()).success());
    assert!(sigterm(proxy.take()).success());
    assert!(sigterm(worker.take()).success());
    stop_devnet(devnet.take(), rx);
}
