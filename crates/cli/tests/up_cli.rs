//! `cocoon up` as a real process: bad flags are one line; on a fresh directory it brings up
//! the whole network (devnet, root, proxy, a worker with the embedded default model, the
//! client) and answers a streamed chat completion on the port it was given; SIGINT stops it
//! with exit 0; a second run on the same directory resumes the same root with the client's
//! receipts kept, answers again, and stops on SIGTERM.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::{cocoon, free_port, get_json, have_test_model};

/// A running `cocoon up`; dropped while running it is killed together with its children
/// (named in `<dir>/pids`), so a failing test leaves nothing behind.
struct Up {
    child: Option<Child>,
    dir: PathBuf,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
}

impl Up {
    /// Starts `cocoon up --dir DIR --port PORT` and waits for `cocoon up: ready`; returns
    /// it and the stdout lines so far.
    fn start(dir: &Path, port: u16) -> (Up, Vec<String>) {
        Up::start_with(dir, port, &[])
    }

    /// [`Up::start`] with more flags.
    fn start_with(dir: &Path, port: u16, flags: &[&str]) -> (Up, Vec<String>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cocoon"))
            .arg("up")
            .args(flags)
            .args(["--port", &port.to_string(), "--dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = lines_of(child.stdout.take().unwrap(), false);
        let err = lines_of(child.stderr.take().unwrap(), true);
        let up = Up {
            child: Some(child),
            dir: dir.to_owned(),
            out,
            err,
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = up
                .out
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("cocoon up did not become ready ({e}): {lines:?}"));
            let ready = line == "cocoon up: ready";
            lines.push(line);
            if ready {
                return (up, lines);
            }
        }
    }

    /// Sends `signal` and waits (at most `within`) for the exit; returns the exit code and
    /// the rest of stdout.
    fn stop(&mut self, signal: &str, within: Duration) -> (i32, Vec<String>) {
        let pid = self.child.as_ref().unwrap().id();
        assert!(
            Command::new("kill")
                .args([&format!("-{signal}"), &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
        self.wait_exit(within)
    }

    /// Waits (at most `within`) for the exit; returns the exit code and the rest of stdout.
    fn wait_exit(&mut self, within: Duration) -> (i32, Vec<String>) {
        let mut child = self.child.take().unwrap();
        let end = Instant::now() + within;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > end {
                let _ = child.kill();
                kill_children(&self.dir);
                panic!("cocoon up did not stop within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let rest: Vec<String> = self.out.iter().collect();
        (status.code().unwrap_or(-1), rest)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            kill_children(&self.dir);
        }
    }
}

/// A thread forwarding `r`'s lines to a channel (and to our stderr when `echo`).
fn lines_of(r: impl std::io::Read + Send + 'static, echo: bool) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if echo {
                eprintln!("{line}");
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The processes `<dir>/pids` names (role, pid), `cocoon up` itself left out.
fn children(dir: &Path) -> Vec<(String, u32)> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (role, pid) = l.split_once(' ')?;
            let pid = pid.parse().ok()?;
            (role != "up").then(|| (role.to_owned(), pid))
        })
        .collect()
}

fn kill_children(dir: &Path) {
    for (_, pid) in children(dir) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

/// POST a chat request; returns (status, the body chunks).
async fn chat(api: &str, model: &str, stream: bool) -> (u16, Vec<String>) {
    let c = common::chat(api, model, stream).await;
    let chunks = c
        .chunks
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned());
    (c.status, chunks.collect())
}

/// The model the client lists.
async fn listed_model(api: &str) -> String {
    let m = common::models(api).await;
    m["data"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no model listed: {m}"))
        .to_owned()
}

fn root_address(dir: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("up.json")).unwrap()).unwrap();
    v["root_address"].as_str().unwrap().to_owned()
}

#[test]
fn bad_up_flags_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["up", "--workers", "0"],
            "error: --workers must be between 1 and 64, not 0",
        ),
        (
            vec!["up", "--backend", "http://127.0.0.1:8000"],
            "error: --backend needs --model with the full model id",
        ),
        (
            vec!["up", "--backend", "ftp://x", "--model", "m"],
            "error: --backend \"ftp://x\" is not an http:// or https:// URL",
        ),
        (
            vec!["up", "--backend", "http://x", "--model", "SmolLM2"],
            "error: --model \"SmolLM2\" is not a full model id",
        ),
        (
            vec!["up", "--backend-model", "x"],
            "error: --backend-model needs --backend",
        ),
        (vec!["up", "--port", "0"], "error: --port must be a port"),
    ];
    for (args, want) in cases {
        let mut a = args.clone();
        a.extend_from_slice(&["--dir", d]);
        let (rc, out, err) = cocoon(&a);
        assert_eq!(rc, 64, "{args:?}: {err}{out}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with(want), "{args:?}: {err}");
        assert!(out.is_empty(), "{out}");
    }
    // A busy API port is refused before anything starts.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let (rc, out, err) = cocoon(&["up", "--dir", d, "--port", &port]);
    assert_eq!(rc, 1, "{err}{out}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with(&format!("error: 127.0.0.1:{port} is already in use")),
        "{err}"
    );
    assert!(!dir.path().join("pids").exists());
    // `up` is listed in the help.
    let (rc, out, _) = cocoon(&["--help"]);
    assert_eq!(rc, 0);
    assert!(out.contains("up "), "{out}");
}

/// One `cocoon up` at a time: two starting together could pick the same free ports.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What a `cocoon up` test holds: its turn, a temporary directory, the API port and a
/// runtime for its HTTP calls.
fn up_test() -> (
    std::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    u16,
    tokio::runtime::Runtime,
) {
    let one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    (one, tmp, port, rt)
}

#[test]
fn up_runs_the_whole_network_and_resumes_it() {
    if !have_test_model() {
        return;
    }
    let (_one, tmp, port, rt) = up_test();
    let dir = tmp.path().join("up");
    let api = format!("http://127.0.0.1:{port}");

    // First run: everything is created.
    let started = Instant::now();
    let (mut up, lines) = Up::start(&dir, port);
    eprintln!("cocoon up ready in {:?}", started.elapsed());
    let text = lines.join("\n");
    assert!(text.contains(&format!("{api}/v1")), "{text}");
    assert!(text.contains(&format!("{api}/stats")), "{text}");
    assert!(text.contains("\"stream\":true"), "{text}");
    assert!(text.contains("curl -N"), "{text}");
    for f in [
        "up.json",
        "owner.key",
        "client.key",
        "logs/devnet.log",
        "logs/proxy.log",
        "logs/worker-1.log",
        "logs/client.log",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let root = root_address(&dir);
    let kids = children(&dir);
    let roles: Vec<&str> = kids.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(roles, ["devnet", "proxy", "worker-1", "client"]);
    let model = rt.block_on(async {
        let model = listed_model(&api).await;
        assert!(text.contains(&format!("\"model\":\"{model}\"")), "{text}");
        let (status, chunks) = chat(&api, &model, true).await;
        let body = chunks.concat();
        assert_eq!(status, 200, "{body}");
        assert!(chunks.len() > 1, "streamed in one chunk: {body}");
        assert!(body.matches("data: ").count() > 3, "{body}");
        assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
        model
    });
    let spent = |s: serde_json::Value| s["totals"]["spent_nanoton"].as_u64().unwrap_or(0);
    let spent_first = spent(get_json(&format!("{api}/jsonstats")).unwrap());
    assert!(spent_first > 0, "nothing spent");

    // SIGINT: every child stopped, exit 0.
    let t = Instant::now();
    let (rc, rest) = up.stop("INT", Duration::from_secs(60));
    eprintln!("cocoon up stopped in {:?}", t.elapsed());
    assert_eq!(rc, 0, "{rest:?}");
    assert_eq!(rest.last().map(String::as_str), Some("cocoon up: stopped"));
    for (role, pid) in &kids {
        assert!(!alive(*pid), "{role} (pid {pid}) still runs");
    }
    assert!(!dir.join("pids").exists());
    drop(up);

    // Second run: the same root, the receipts kept, answering again.
    let (mut up, _) = Up::start(&dir, port);
    assert_eq!(root_address(&dir), root);
    let s = get_json(&format!("{api}/jsonstats")).unwrap();
    assert!(spent(s.clone()) >= spent_first, "totals lost: {s}");
    rt.block_on(async {
        assert_eq!(listed_model(&api).await, model);
        let (status, chunks) = chat(&api, &model, false).await;
        let body = chunks.concat();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{v}");
    });
    let (rc, rest) = up.stop("TERM", Duration::from_secs(60));
    assert_eq!(rc, 0, "{rest:?}");
    drop(up);

    // Third run: a role that dies is reported with its log, the others stopped, exit 1.
    let (mut up, _) = Up::start(&dir, port);
    assert_eq!(root_address(&dir), root);
    let kids = children(&dir);
    let worker = kids.iter().find(|(r, _)| r == "worker-1").unwrap().1;
    assert!(
        Command::new("kill")
            .args(["-KILL", &worker.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let (rc, _) = up.wait_exit(Duration::from_secs(60));
    assert_eq!(rc, 1);
    let err: Vec<String> = up.err.try_iter().collect();
    let report = err
        .iter()
        .position(|l| l.starts_with("error: the worker-1 exited on its own (signal 9)"))
        .unwrap_or_else(|| panic!("no report: {err:?}"));
    assert!(err[report].contains("logs/worker-1.log"), "{err:?}");
    assert!(err.len() > report + 5, "no log tail: {err:?}");
    for (role, pid) in &kids {
        assert!(!alive(*pid), "{role} (pid {pid}) still runs");
    }
}

/// A minimal OpenAI-compatible server: `GET /v1/models` lists `mockmodel`, a chat
/// completion answers "red, green, blue" (streamed in three chunks when asked) with usage.
fn mock_backend() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut byte = [0u8; 1];
                while !buf.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    buf.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                if conn.read_exact(&mut body).is_err() {
                    return;
                }
                let usage = serde_json::json!({"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13});
                if head.starts_with("get") {
                    let b = serde_json::json!({"object": "list", "data": [{"id": "mockmodel", "object": "model"}]}).to_string();
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                        b.len()
                    );
                    return;
                }
                let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if req["stream"] == true {
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                    );
                    for (i, w) in ["red", ", green", ", blue"].iter().enumerate() {
                        let mut c = serde_json::json!({"id": "m", "object": "chat.completion.chunk", "created": 1, "model": "mockmodel",
                            "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": null}]});
                        if i == 2 {
                            c["choices"][0]["finish_reason"] = "stop".into();
                            c["usage"] = usage.clone();
                        }
                        let _ = write!(conn, "data: {c}\n\n");
                        let _ = conn.flush();
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let _ = write!(conn, "data: [DONE]\n\n");
                } else {
                    let b = serde_json::json!({"id": "m", "object": "chat.completion", "created": 1, "model": "mockmodel",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "red, green, blue"}, "finish_reason": "stop"}],
                        "usage": usage}).to_string();
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                        b.len()
                    );
                }
            });
        }
    });
    url
}

#[test]
fn up_with_an_external_backend_and_two_workers() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let backend = mock_backend();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let id = format!("mockmodel@v1:{}", "ab".repeat(32));
    let flags = ["--workers", "2", "--backend", &backend, "--model", &id];
    let (mut up, lines) = Up::start_with(tmp.path(), port, &flags);
    assert_eq!(children(tmp.path()).len(), 5);
    let text = lines.join("\n");
    assert!(text.contains("worker-2"), "{text}");
    assert!(text.contains("\"model\":\"mockmodel\""), "{text}");
    let up_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("up.json")).unwrap())
            .unwrap();
    assert_eq!(up_json["model"], id.as_str());
    assert_eq!(up_json["worker_admin_ports"].as_array().unwrap().len(), 2);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let m = common::models(&api).await;
            assert_eq!(m["data"][0]["id"], "mockmodel", "{m}");
            assert_eq!(m["data"][0]["workers"].as_array().unwrap().len(), 2, "{m}");
            let (status, chunks) = chat(&api, "mockmodel", true).await;
            let body = chunks.concat();
            assert_eq!(status, 200, "{body}");
            assert!(body.contains("green"), "{body}");
            assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
        });
    let (rc, rest) = up.stop("TERM", Duration::from_secs(60));
    assert_eq!(rc, 0, "{rest:?}");
}

/// Chain figures the test follows: (client contract balance, tokens charged), the proxy
/// contract's commission balance, the workers' owner's account balance.
async fn money(
    tc: &cocoon_ton::Toncenter,
    client_sc: &cocoon_ton::StdAddr,
    proxy_sc: &cocoon_ton::StdAddr,
    worker_owner: &cocoon_ton::StdAddr,
) -> (u128, u64, u128, u128) {
    use cocoon_ton::chain::Chain;
    use cocoon_ton::codec::Layout;
    let data = |st: cocoon_ton::chain::AccountState| st.data.expect("an active contract");
    let c = cocoon_ton::contracts::ClientStorage::from_cell(&data(
        tc.account_state(client_sc).await.unwrap(),
    ))
    .unwrap();
    let p = cocoon_ton::contracts::ProxyStorage::from_cell(&data(
        tc.account_state(proxy_sc).await.unwrap(),
    ))
    .unwrap();
    let w = tc.account_state(worker_owner).await.unwrap().balance;
    (c.balance.0 as u128, c.tokens_used, p.balance.0 as u128, w)
}

fn post_control(admin: &str, token: &str, action: &str) {
    let out = Command::new("curl")
        .args(["-sf", "-X", "POST", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("{admin}/control/{action}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "control {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn usage_earnings_commission_and_chain_balances_agree() {
    if !have_test_model() {
        return;
    }
    let (_one, tmp, port, rt) = up_test();
    let dir = tmp.path().join("up");
    let api = format!("http://127.0.0.1:{port}");
    let (mut up, _) = Up::start(&dir, port);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("up.json")).unwrap()).unwrap();
    let padmin = format!("http://127.0.0.1:{}", saved["proxy_admin_port"]);
    let wadmin = format!("http://127.0.0.1:{}", saved["worker_admin_ports"][0]);
    let tc = cocoon_ton::Toncenter::with_url(&format!("http://127.0.0.1:{}", saved["devnet_port"]))
        .unwrap();
    let addr = |v: &serde_json::Value| cocoon_ton::parse_address(v.as_str().unwrap()).unwrap();
    let root = rt
        .block_on(cocoon_ton::chain::load_root_config(
            &tc,
            &addr(&saved["root_address"]),
        ))
        .unwrap();
    let (price, fee) = (
        u128::from(root.params.price_per_token),
        u128::from(root.params.worker_fee_per_token),
    );
    assert!(price > fee && fee > 0, "test prices {price}/{fee}");
    let client = get_json(&format!("{api}/jsonstats")).unwrap();
    let client_sc = addr(&client["proxies"][0]["client_sc"]);
    let proxy_sc = addr(&get_json(&format!("{padmin}/jsonstats")).unwrap()["proxy_sc"]);
    let worker_owner = addr(&saved["worker_owner_address"]);
    let before = rt.block_on(money(&tc, &client_sc, &proxy_sc, &worker_owner));

    // Three requests, streamed and not; what each was billed comes back by its guid.
    let model = rt.block_on(listed_model(&api));
    let mut billed = 0u64;
    for (i, stream) in [true, false, true].into_iter().enumerate() {
        let guid = format!("e2e-{i}");
        let body = serde_json::json!({
            "model": model, "stream": stream, "max_tokens": 16, "request_guid": guid,
            "messages": [{"role": "user", "content": format!("Count to {}.", i + 3)}],
        });
        let out = Command::new("curl")
            .args(["-sfN", "-H", "Content-Type: application/json", "-d"])
            .arg(body.to_string())
            .arg(format!("{api}/v1/chat/completions"))
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("\"usage\""), "{text}");
        let entry = get_json(&format!("{api}/request/debuglogentry?request_guid={guid}")).unwrap();
        assert_eq!(entry["ok"], true, "{entry}");
        let t = entry["usage"]["total_tokens"].as_u64().unwrap();
        assert!(t > 0);
        assert_eq!(
            u128::from(entry["usage"]["cost_nanoton"].as_u64().unwrap()),
            u128::from(t) * price
        );
        billed += t;
    }
    let billed128 = u128::from(billed);

    // Books: the client spent, the worker earned, the proxy kept the difference.
    let c = get_json(&format!("{api}/jsonstats")).unwrap();
    assert_eq!(c["totals"]["tokens"].as_u64(), Some(billed), "{c}");
    assert_eq!(
        u128::from(c["totals"]["spent_nanoton"].as_u64().unwrap()),
        billed128 * price
    );
    // The proxy's payment for the last answer reaches the worker after the client has the
    // answer: wait for it (bounded) instead of racing it.
    let end = Instant::now() + Duration::from_secs(30);
    let w = loop {
        let w = get_json(&format!("{wadmin}/jsonstats")).unwrap();
        if w["payments"][0]["db_tokens"].as_u64() == Some(billed) || Instant::now() > end {
            break w;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(w["payments"][0]["db_tokens"].as_u64(), Some(billed), "{w}");
    let p = get_json(&format!("{padmin}/jsonstats")).unwrap();
    assert_eq!(
        p["ledger"]["commission_nanoton"].as_u64().map(u128::from),
        Some(billed128 * (price - fee)),
        "{p}"
    );

    // A settlement cycle: a checkpoint covering all of it, then the charge and the payout.
    let token = std::fs::read_to_string(dir.join("proxy/admin-token")).unwrap();
    let token = token.trim();
    let confirmed = p["ledger"]["confirmed_checkpoint"].as_u64().unwrap_or(0);
    post_control(&padmin, token, "checkpoint");
    let end = Instant::now() + Duration::from_secs(60);
    while get_json(&format!("{padmin}/jsonstats")).unwrap()["ledger"]["confirmed_checkpoint"]
        .as_u64()
        .unwrap_or(0)
        <= confirmed
    {
        assert!(Instant::now() < end, "no checkpoint confirmed");
        std::thread::sleep(Duration::from_millis(200));
    }
    post_control(&padmin, token, "charge");
    post_control(&padmin, token, "payout");
    let end = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let m = rt.block_on(money(&tc, &client_sc, &proxy_sc, &worker_owner));
        if m.1 == billed && m.3 > before.3 {
            break m;
        }
        assert!(
            Instant::now() < end,
            "not settled: {m:?} (before {before:?})"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    eprintln!(
        "billed {billed} tokens at {price}/{fee} nanoTON: before {before:?}, after {after:?}"
    );
    assert_eq!(before.1, 0);
    assert_eq!(
        before.0 - after.0,
        billed128 * price,
        "client contract balance"
    );
    assert_eq!(
        after.3 - before.3,
        billed128 * fee,
        "worker owner's balance"
    );
    assert_eq!(
        after.2 - before.2,
        billed128 * (price - fee),
        "proxy commission"
    );
    let (code, _) = up.stop("INT", Duration::from_secs(30));
    assert_eq!(code, 0);
}
