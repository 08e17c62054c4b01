//! Running the `cocoon` binary from integration tests.
#![allow(dead_code)] // each test file uses its own part
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

pub(crate) mod cdp;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs `cocoon ARGS`: exit code, stdout, stderr.
pub(crate) fn cocoon(args: &[&str]) -> (i32, String, String) {
    cocoon_env(args, &[])
}

/// Runs `cocoon ARGS` with `envs` set: exit code, stdout, stderr.
pub(crate) fn cocoon_env(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cocoon ARGS`, asserts success and returns stdout.
pub(crate) fn ok(args: &[&str]) -> String {
    let (rc, out, err) = cocoon(args);
    assert_eq!(rc, 0, "cocoon {args:?} failed: {err}{out}");
    out
}

/// Starts `cocoon devnet` and returns the child, its base URL, its stdout lines so far and
/// the channel with the rest.
pub(crate) fn start_devnet(dir: &Path) -> (Child, String, Vec<String>, mpsc::Receiver<String>) {
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

pub(crate) fn stop_devnet(child: Child, rx: mpsc::Receiver<String>) {
    let status = sigterm(child);
    assert!(status.success(), "devnet exit status {status}");
    let rest: Vec<String> = rx.iter().collect();
    assert!(
        rest.iter().any(|l| l == "cocoon devnet stopped"),
        "{rest:?}"
    );
}

/// Sends SIGTERM and waits for the exit.
pub(crate) fn sigterm(mut child: Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    child.wait().unwrap()
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
pub(crate) struct Killed(pub Option<Child>);

impl Killed {
    pub(crate) fn new(c: Child) -> Self {
        Killed(Some(c))
    }

    /// Takes the child out (to stop it gracefully).
    pub(crate) fn take(&mut self) -> Child {
        self.0.take().unwrap()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// GET `url` (http only) as JSON; `None` while the server is not up, answers garbage or
/// does not answer within 10 s (a stopped process's socket still accepts: without the
/// timeouts a waiter polling it would hang instead of failing).
pub(crate) fn get_json(url: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&get_text(url)?).ok()
}

/// How many workers the proxy whose admin listener is `padmin` routes requests to: admitted
/// and enabled (a worker is admitted disabled until its root configuration allows its
/// model), `None` while the proxy does not answer.
pub(crate) fn workers_enabled(padmin: &str) -> Option<usize> {
    let s = get_json(&format!("http://{padmin}/jsonstats"))?;
    let w = s["workers"].as_array()?;
    Some(w.iter().filter(|w| w["enabled"] == true).count())
}

/// GETs `url` (plain HTTP/1.0) and returns the body, `None` on any failure.
pub(crate) fn get_text(url: &str) -> Option<String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/')?;
    let addr = host.to_socket_addrs().ok()?.next()?;
    let wait = Duration::from_secs(10);
    let mut s = std::net::TcpStream::connect_timeout(&addr, wait).ok()?;
    s.set_read_timeout(Some(wait)).ok()?;
    s.set_write_timeout(Some(wait)).ok()?;
    write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body.split_once("\r\n\r\n")?.1.to_owned())
}

/// Polls `f` every 200 ms until it holds; panics after 90 s.
pub(crate) fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(90);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The addresses a role process bound, as it reported them in its ready file
/// (`--ready-file`): each listen setting's key to `ip:port`. Tests let every child bind port 0
/// and read the port here, never pick a port for a child to bind later (another process can
/// take it in between).
pub(crate) struct Bound(serde_json::Map<String, serde_json::Value>);

impl Bound {
    /// The address bound for `key` (`"admin_listen"`, `"client_listen"`, ...).
    pub(crate) fn get(&self, key: &str) -> String {
        self.0
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("no {key} in the ready file: {:?}", self.0))
            .to_owned()
    }
}

/// The ready file of a role whose state directory is `state`.
pub(crate) fn ready_file(state: &Path) -> std::path::PathBuf {
    let mut name = state.file_name().unwrap().to_owned();
    name.push(".ready.json");
    state.with_file_name(name)
}

/// Waits until `child` has written its ready file `file` (every listener bound) and returns
/// what it reports; panics if the child exits first or after 10 minutes (a worker may pull
/// and load its model first).
pub(crate) fn wait_ready(child: &mut Killed, file: &Path) -> Bound {
    let end = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: {e}: {text:?}", file.display()));
            return Bound(v.as_object().unwrap().clone());
        }
        if let Some(status) = child.0.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "the process exited ({status}) before writing {}",
                file.display()
            );
        }
        assert!(
            Instant::now() < end,
            "timed out waiting for {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `cmd` (`cocoon ARGS... --ready-file F`, F removed first) and waits for its ready
/// file.
pub(crate) fn start_ready(cmd: &mut Command, file: &Path) -> (Killed, Bound) {
    match std::fs::remove_file(file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("{}: {e}", file.display()),
    }
    let mut child = Killed::new(cmd.arg("--ready-file").arg(file).spawn().unwrap());
    let bound = wait_ready(&mut child, file);
    (child, bound)
}

/// A new wallet key file at `key`; returns the wallet's raw address.
pub(crate) fn new_wallet(key: &Path) -> String {
    let key_s = key.to_str().unwrap();
    ok(&["wallet", "new", "--key", key_s]);
    ok(&["wallet", "show", "--key", key_s])
        .lines()
        .find_map(|l| l.strip_prefix("address (raw): ").map(str::to_owned))
        .unwrap()
}

/// Gives the wallet at `raw` `nanoton` from the faucet of the devnet at `url`.
pub(crate) fn faucet(url: &str, raw: &str, nanoton: u64) {
    use cocoon_ton::{Toncenter, ToncenterConfig, chain::Devnet};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let chain = Toncenter::new(ToncenterConfig::new(url.to_owned())).unwrap();
    rt.block_on(chain.faucet(
        &cocoon_ton::parse_address(raw).unwrap(),
        u128::from(nanoton),
    ))
    .unwrap();
}

/// A devnet wallet funded with `nanoton` that deployed its own root contract: (key file,
/// raw wallet address, root address).
pub(crate) fn own_root(
    dir: &Path,
    url: &str,
    unique_id: &str,
    nanoton: u64,
) -> (String, String, String) {
    let key = dir.join("owner.key");
    let key_s = key.to_str().unwrap().to_owned();
    let raw = new_wallet(&key);
    faucet(url, &raw, nanoton);
    let out = ok(&[
        "root",
        "deploy",
        "--key",
        &key_s,
        "--ton",
        url,
        "--unique-id",
        unique_id,
    ]);
    let root = out
        .lines()
        .find_map(|l| l.strip_prefix("root deployed at ").map(str::to_owned))
        .unwrap();
    (key_s, raw, root)
}

/// A root of its own on the devnet at `url` (50 TON to its owner's wallet) listing the sim
/// image for workers and proxies; [`SimRoot::proxy`] starts its proxy and registers it.
pub(crate) struct SimRoot {
    pub url: String,
    /// The owner's key file.
    pub key: String,
    /// The owner's raw address (it operates the proxy too).
    pub raw: String,
    pub root: String,
}

impl SimRoot {
    pub(crate) fn deploy(dir: &Path, url: &str, unique_id: &str) -> Self {
        let (key, raw, root) = own_root(dir, url, unique_id, 50_000_000_000);
        let r = SimRoot {
            url: url.to_owned(),
            key,
            raw,
            root,
        };
        let sim = hex::encode(cocoon_attest::sim::sim_image_hash());
        r.op(&["add-image", &sim]);
        // Workers serve only proxies whose image the root lists.
        r.op(&["add-image", "--kind", "proxy", &sim]);
        r
    }

    /// Runs `cocoon root OP...` as the owner.
    pub(crate) fn op(&self, op: &[&str]) {
        root_op(op, &self.key, &self.url, &self.root);
    }

    /// Reads the model of the worker whose admin listener is `wadmin`, allows it in the root
    /// and waits until the proxy whose admin listener is `padmin` routes to that worker
    /// (admitted and enabled); returns the model id.
    pub(crate) fn allow_model_of(&self, wadmin: &str, padmin: &str) -> String {
        let wstats = || get_json(&format!("http://{wadmin}/jsonstats"));
        wait_for("the worker's model id", || wstats().is_some());
        let model = wstats().unwrap()["model"].as_str().unwrap().to_owned();
        self.op(&["add-model", &model]);
        wait_for("the worker admitted and enabled", || {
            workers_enabled(padmin) == Some(1)
        });
        model
    }

    /// Registers a proxy listening at `worker` (for workers) and `client` (for clients).
    pub(crate) fn register(&self, worker: &str, client: &str) {
        self.op(&["add-proxy", &format!("{worker} {client}")]);
    }

    /// [`SimRoot::proxy_at`] on ports the proxy picks (port 0), then registered in the root
    /// at the addresses it reports.
    pub(crate) fn proxy(&self, state: &Path) -> (Killed, Bound) {
        let a = "127.0.0.1:0";
        let (p, b) = self.proxy_at(a, a, a, state);
        self.register(&b.get("worker_listen"), &b.get("client_listen"));
        (p, b)
    }

    /// `cocoon proxy` (test network, sim TEE) listening at `worker` and `client`, its wallet
    /// the owner's, checkpointing every second; admin server at `admin`, state in `state`;
    /// returned once it serves. Explicit addresses are for a restart where the root lists the
    /// proxy: the ones its previous run reported, free only between that run's exit and this
    /// bind.
    pub(crate) fn proxy_at(
        &self,
        worker: &str,
        client: &str,
        admin: &str,
        state: &Path,
    ) -> (Killed, Bound) {
        let wallet = format!("wallet_key_file={}", self.key);
        spawn_role(
            &[
                "proxy",
                "--owner",
                &self.raw,
                "--root",
                &self.root,
                "--ton",
                &self.url,
                "--worker-listen",
                worker,
                "--client-listen",
                client,
                "--admin",
                admin,
                "--set",
                &wallet,
                "--set",
                "stake_ton=1",
                "--set",
                "checkpoint_seconds=1",
                "--set",
                "root_poll_seconds=1",
                "--set",
                "pow_difficulty=4",
            ],
            state,
        )
    }
}

/// The owner address of the test workers.
pub(crate) const WORKER_OWNER: &str =
    "0:4444444444444444444444444444444444444444444444444444444444444444";

/// `cocoon worker` (test network, sim TEE) with the embedded default model in `slots` slots,
/// following `root` on the devnet at `url`; its admin server on a port it picks
/// (`admin_listen` in the returned addresses), state in `state`; returned once it serves.
pub(crate) fn worker_process(root: &str, url: &str, slots: &str, state: &Path) -> (Killed, Bound) {
    let slots = format!("slots={slots}");
    spawn_role(
        &[
            "worker",
            "--owner",
            WORKER_OWNER,
            "--root",
            root,
            "--ton",
            url,
            "--model",
            "smollm2-135m",
            "--admin",
            "127.0.0.1:0",
            "--set",
            "root_poll_seconds=1",
            "--set",
            &slots,
            "--set",
            "ctx_per_slot=512",
            "--set",
            "threads=1",
        ],
        state,
    )
}

/// Starts `cocoon ROLE --test --tee sim ARGS... --state-dir STATE` (stdout dropped, stderr
/// shown) and waits until it serves (its ready file, [`ready_file`]); returns it with the
/// addresses it bound.
pub(crate) fn spawn_role(args: &[&str], state: &Path) -> (Killed, Bound) {
    let (role, rest) = args.split_first().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cocoon"));
    cmd.args([*role, "--test", "--tee", "sim"])
        .args(rest)
        // As an operator starts it: a worker sets llama.cpp's OpenMP spin count itself (a
        // re-exec), which scripts/test's own OMP_WAIT_POLICY would otherwise skip.
        .env_remove("OMP_WAIT_POLICY")
        .env_remove("GOMP_SPINCOUNT")
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    start_ready(&mut cmd, &ready_file(state))
}

/// The models the OpenAI API at `api` lists (`GET /v1/models`).
pub(crate) async fn models(api: &str) -> serde_json::Value {
    reqwest::get(format!("{api}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A chat answer read off the wire.
pub(crate) struct Chat {
    pub status: u16,
    /// The body's non-empty chunks as they came.
    pub chunks: Vec<Vec<u8>>,
}

impl Chat {
    /// The whole body as text.
    pub(crate) fn body(&self) -> String {
        String::from_utf8(self.chunks.concat()).unwrap()
    }
}

/// POSTs a chat request for `model` to the OpenAI API at `api` and reads the answer.
pub(crate) async fn chat(api: &str, model: &str, stream: bool) -> Chat {
    use futures::StreamExt;
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
    let mut chunks = Vec::new();
    let mut s = r.bytes_stream();
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        if !c.is_empty() {
            chunks.push(c.to_vec());
        }
    }
    Chat { status, chunks }
}

/// Runs `cocoon root OP... --key K --ton URL --root R` as the root's owner.
pub(crate) fn root_op(op: &[&str], key: &str, url: &str, root: &str) {
    let mut a: Vec<&str> = vec!["root"];
    a.extend_from_slice(op);
    a.extend_from_slice(&["--key", key, "--ton", url, "--root", root]);
    ok(&a);
}

/// Whether the default model is available (`COCOON_TEST_MODEL`); under `scripts/test`
/// (`COCOON_REQUIRE_PREREQS`) and in CI it must be.
pub(crate) fn have_test_model() -> bool {
    if std::env::var_os("COCOON_TEST_MODEL").is_some() {
        return true;
    }
    assert!(
        !cocoon_testkit::fixtures::prereqs_required(),
        "COCOON_TEST_MODEL must be set under scripts/test (it pulls the default model)"
    );
    eprintln!("skipped: COCOON_TEST_MODEL is not set");
    false
}
