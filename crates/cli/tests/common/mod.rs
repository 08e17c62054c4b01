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

/// A loopback port free right now, below Linux's ephemeral range (32768–60999): a port from
/// that range (what binding port 0 gives) can be taken as the local port of any outgoing
/// connection of a process started meanwhile — a proxy registered on it in the root then
/// fails to bind ("Address already in use"), as a CI run once showed.
///
/// The port is probed and released, then bound later by a child: a port handed out once is
/// never handed out again by this test binary, so two tests running in parallel threads
/// cannot both be given it in that window (cargo runs test binaries one at a time, and no
/// outgoing connection takes a port below the ephemeral range).
pub(crate) fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port in 20000..32000")
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
/// image for workers and proxies and one proxy, whose worker and client ports are free now.
pub(crate) struct SimRoot {
    pub url: String,
    /// The owner's key file.
    pub key: String,
    /// The owner's raw address (it operates the proxy too).
    pub raw: String,
    pub root: String,
    /// The proxy's worker port.
    pub pw: String,
    /// The proxy's client port.
    pub pc: String,
}

impl SimRoot {
    pub(crate) fn deploy(dir: &Path, url: &str, unique_id: &str) -> Self {
        let (key, raw, root) = own_root(dir, url, unique_id, 50_000_000_000);
        let (pw, pc) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let r = SimRoot {
            url: url.to_owned(),
            key,
            raw,
            root,
            pw,
            pc,
        };
        let sim = hex::encode(cocoon_attest::sim::sim_image_hash());
        r.op(&["add-image", &sim]);
        // Workers serve only proxies whose image the root lists.
        r.op(&["add-image", "--kind", "proxy", &sim]);
        r.op(&["add-proxy", &format!("{} {}", r.pw, r.pc)]);
        r
    }

    /// Runs `cocoon root OP...` as the owner.
    pub(crate) fn op(&self, op: &[&str]) {
        root_op(op, &self.key, &self.url, &self.root);
    }

    /// `cocoon proxy` (test network, sim TEE) at the registered ports, its wallet the owner's,
    /// checkpointing every second; admin server at `admin`, state in `state`.
    pub(crate) fn proxy(&self, admin: &str, state: &Path) -> Child {
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
                &self.pw,
                "--client-listen",
                &self.pc,
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
/// following `root` on the devnet at `url`; admin server at `admin`, state in `state`.
pub(crate) fn worker_process(
    root: &str,
    url: &str,
    admin: &str,
    slots: &str,
    state: &Path,
) -> Child {
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
            admin,
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
/// shown).
pub(crate) fn spawn_role(args: &[&str], state: &Path) -> Child {
    let (role, rest) = args.split_first().unwrap();
    Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args([*role, "--test", "--tee", "sim"])
        .args(rest)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
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
