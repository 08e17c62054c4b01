//! Running the `cocoon` binary from integration tests.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs `cocoon ARGS`: exit code, stdout, stderr.
pub fn cocoon(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cocoon"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cocoon ARGS`, asserts success and returns stdout.
pub fn ok(args: &[&str]) -> String {
    let (rc, out, err) = cocoon(args);
    assert_eq!(rc, 0, "cocoon {args:?} failed: {err}{out}");
    out
}

/// Starts `cocoon devnet` and returns the child, its base URL, its stdout lines so far and
/// the channel with the rest.
pub fn start_devnet(dir: &std::path::Path) -> (Child, String, Vec<String>, mpsc::Receiver<String>) {
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

pub fn stop_devnet(child: Child, rx: mpsc::Receiver<String>) {
    let status = sigterm(child);
    assert!(status.success(), "devnet exit status {status}");
    let rest: Vec<String> = rx.iter().collect();
    assert!(
        rest.iter().any(|l| l == "cocoon devnet stopped"),
        "{rest:?}"
    );
}

/// Sends SIGTERM and waits for the exit.
pub fn sigterm(mut child: Child) -> std::process::ExitStatus {
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
pub struct Killed(pub Option<Child>);

impl Killed {
    pub fn new(c: Child) -> Self {
        Killed(Some(c))
    }

    /// Takes the child out (to stop it gracefully).
    pub fn take(&mut self) -> Child {
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

/// GET `url` (http only) as JSON; `None` while the server is not up or answers garbage.
pub fn get_json(url: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/')?;
    let mut s = std::net::TcpStream::connect(host).ok()?;
    write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    serde_json::from_str(body.split_once("\r\n\r\n")?.1).ok()
}

/// Polls `f` every 200 ms until it holds; panics after 90 s.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(90);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A devnet wallet funded with `nanoton` that deployed its own root contract: (key file,
/// raw wallet address, root address).
pub fn own_root(
    dir: &std::path::Path,
    url: &str,
    unique_id: &str,
    nanoton: u64,
) -> (String, String, String) {
    use cocoon_ton::toncenter::{Devnet, Toncenter, ToncenterConfig};
    let key = dir.join("owner.key");
    let key_s = key.to_str().unwrap().to_owned();
    ok(&["wallet", "new", "--key", &key_s]);
    let raw = ok(&["wallet", "show", "--key", &key_s])
        .lines()
        .find_map(|l| l.strip_prefix("address (raw): ").map(str::to_owned))
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let chain = Toncenter::new(ToncenterConfig::new(url.to_owned())).unwrap();
    rt.block_on(chain.faucet(
        &cocoon_ton::parse_address(&raw).unwrap(),
        u128::from(nanoton),
    ))
    .unwrap();
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

/// Runs `cocoon root OP... --key K --ton URL --root R` as the root's owner.
pub fn root_op(op: &[&str], key: &str, url: &str, root: &str) {
    let mut a: Vec<&str> = vec!["root"];
    a.extend_from_slice(op);
    a.extend_from_slice(&["--key", key, "--ton", url, "--root", root]);
    ok(&a);
}

/// Whether the default model is available (`COCOON_TEST_MODEL`); in CI it must be.
pub fn have_test_model() -> bool {
    if std::env::var_os("COCOON_TEST_MODEL").is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "COCOON_TEST_MODEL must be set in CI (scripts/test pulls the default model)"
    );
    eprintln!("skipped: COCOON_TEST_MODEL is not set");
    false
}
