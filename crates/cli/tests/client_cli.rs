//! `cocoon client` as a real process: configuration errors, and on the devnet the whole
//! network in processes — a proxy, a worker with the embedded default model, and a client
//! whose wallet deploys its channel and registers with the proxy on chain — answering an
//! OpenAI request streamed and not, operated with `cocoon client status|topup`.

mod common;
use common::{
    Killed, SimRoot, chat, cocoon, cocoon_env, faucet, get_json, have_test_model, models,
    new_wallet, sigterm, spawn_role, start_devnet, stop_devnet, wait_for, worker_process,
};

const ROOT: &str = "0:5555555555555555555555555555555555555555555555555555555555555555";
const OWNER: &str = "0:4444444444444444444444444444444444444444444444444444444444444444";

fn client_cmd(args: &[&str]) -> (i32, String, String) {
    cocoon(&[&["client"], args].concat())
}

/// `--root ROOT --owner OWNER --set KV`.
fn with_set(kv: &str) -> Vec<&str> {
    vec!["--root", ROOT, "--owner", OWNER, "--set", kv]
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
            with_set("check_proxy_hashes=false"),
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
            with_set("allowed_hosts=cocoon.lan:80"),
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
    let (rc, _, err) = cocoon_env(
        &["client", "--root", ROOT, "--owner", OWNER],
        &[(
            "COCOON_CLIENT_ALLOWED_ORIGINS",
            "http://localhost:3000, null",
        )],
    );
    assert_eq!(rc, 64, "{err}");
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
        // Port 0: nothing can listen there.
        "http://127.0.0.1:0",
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

#[test]
fn client_process_streams_the_default_model_through_proxy_and_worker_on_devnet() {
    if !have_test_model() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (devnet, url, _lines, rx) = start_devnet(&tmp.path().join("devnet"));
    let mut devnet = Killed::new(devnet);
    let net = SimRoot::deploy(tmp.path(), &url, "9");
    let root = net.root.clone();
    let (mut proxy, pbound) = net.proxy(&tmp.path().join("proxy"));
    let padmin = pbound.get("admin_listen");
    let (mut worker, wbound) = worker_process(&root, &url, "2", &tmp.path().join("worker"));
    let wadmin = wbound.get("admin_listen");
    let model = net.allow_model_of(&wadmin, &padmin);

    // The client's own wallet, funded from the faucet.
    let ckey = tmp.path().join("client.key");
    let ckey_s = ckey.to_str().unwrap();
    let craw = new_wallet(&ckey);
    faucet(&url, &craw, 30_000_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cstate = tmp.path().join("client");
    let wallet = format!("wallet_key_file={ckey_s}");
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
            &wallet,
            "--set",
            "top_up_ton=5",
            "--set",
            "payment_status_seconds=1",
            "--set",
            "root_poll_seconds=1",
        ],
        &cstate,
    );
    let api = format!("http://{}", cbound.get("api_listen"));
    let stats = || get_json(&format!("{api}/jsonstats"));
    // The wallet deploys the channel with 5 TON, registers on chain (long authorisation).
    wait_for("the client's proxy session", || {
        stats().is_some_and(|s| s["proxies_ready"] == 1)
    });
    let s = stats().unwrap();
    assert_eq!(s["proxies"][0]["auth"], "long", "{s}");
    assert_eq!(s["proxies"][0]["tee"], "Sim", "{s}");
    // The worker reaches the client's model list through the proxy session.
    wait_for("the model listed with its worker", || {
        get_json(&format!("{api}/v1/models"))
            .is_some_and(|m| m["data"][0]["workers"].as_array().map(Vec::len) == Some(1))
    });

    rt.block_on(async {
        let m = models(&api).await;
        assert_eq!(m["data"][0]["workers"].as_array().unwrap().len(), 1, "{m}");
        let name = m["data"][0]["id"].as_str().unwrap().to_owned();
        assert!(model.starts_with(&name), "{name} for {model}");
        let c = chat(&api, &name, true).await;
        let (status, body) = (c.status, c.body());
        assert_eq!(status, 200, "{body}");
        assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
        assert!(body.contains("\"usage\""), "{body}");
        assert!(body.matches("data: ").count() > 5, "{body}");
        // That chunks are passed on before the answer is whole is checked by event order
        // (the fake engine holding its stream) in crates/client/tests/gateway.rs; here, with
        // a real model, only the stream's shape is.
        let c = chat(&api, &name, false).await;
        let (status, body) = (c.status, c.body());
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

    // Operated from the command line, once the gateway has read the channel (it does when the
    // session is ready, beside serving).
    let balance = || {
        stats().unwrap()["proxies"][0]["channel"]["balance"]
            .as_u64()
            .unwrap_or(0)
    };
    wait_for("the channel read", || balance() > 0);
    let api_s = api.as_str();
    let (rc, out, err) = client_cmd(&["status", "--api", api_s]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("1 of 1 proxies ready"), "{out}");
    assert!(out.contains("channel open"), "{out}");
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
