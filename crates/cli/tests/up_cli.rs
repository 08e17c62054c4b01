//! `cocoon up` as a real process: bad flags are one line; on a fresh directory it brings up
//! the whole network (devnet, root, proxy, a worker with the embedded default model, the
//! client) and answers a streamed chat completion on the port it was given; SIGINT stops it
//! with exit 0; a second run on the same directory resumes the same root with the client's
//! receipts kept, answers again, and stops on SIGTERM. A root params change under live
//! traffic (`cocoon root change-params`) moves every role to its new contracts by itself,
//! retires the old ones and conserves money to the nanoton.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::{cocoon, get_json, get_text, have_test_model};

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
        Up::start_with_env(dir, port, flags, &[])
    }

    /// [`Up::start_with`] with environment variables for `cocoon up` and its roles (their
    /// `COCOON_<ROLE>_<KEY>` settings).
    fn start_with_env(
        dir: &Path,
        port: u16,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> (Up, Vec<String>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cocoon"))
            .arg("up")
            .args(flags)
            .envs(env.iter().copied())
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

/// The API port of every `cocoon up` here: its default, fixed like its other ports (below
/// the ephemeral range, so no outgoing connection takes it), and kept across resumes and
/// restarts as the tests check. A port picked at random and handed to `cocoon up` could be
/// taken before its client binds it.
const UP_PORT: u16 = 10000;

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
    let port = UP_PORT;
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
        "logs/explorer.log",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let root = root_address(&dir);
    let kids = children(&dir);
    let roles: Vec<&str> = kids.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(roles, ["devnet", "proxy", "worker-1", "client", "explorer"]);
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
    receipts_through_the_sdk_verify_offline(&dir, &api, &model, &root);
    responses_through_the_sdk(&api, &model);
    sdk_script("tools.py", &[&api, &model]);
    // Issue 21 §1 and §2 through the official SDK, on this network (no other one started).
    let gguf = std::env::var("COCOON_TEST_MODEL").unwrap();
    sdk_script("features.py", &[&api, &model, &gguf]);
    sdk_script("errors.py", &[&api, &model]);
    grafana_dashboard_queries_real_metrics(&dir, &api);
    dashboards_in_chromium(&dir, &api);
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

    // Third run: a role that dies is reported with its log and restarted under the same
    // identity; the network keeps running and answers again.
    let (mut up, _) = Up::start(&dir, port);
    assert_eq!(root_address(&dir), root);
    let kids = children(&dir);
    let worker = role_pid(&dir, "worker-1").unwrap();
    sigkill(worker);
    let back = wait_restarted(&dir, "worker-1", worker);
    let mut err = Vec::new();
    let prefix = "cocoon up: the worker-1 exited on its own (signal 9)";
    let report = wait_err(&up, &mut err, prefix, 5);
    if err.len() == report + 1 {
        err.push(up.err.recv_timeout(Duration::from_secs(5)).unwrap());
    }
    assert!(err[report].contains("logs/worker-1.log"), "{err:?}");
    assert!(err[report + 1].starts_with("  "), "no log tail: {err:?}");
    rt.block_on(answers_again(&api, &model));
    for (role, pid) in &kids {
        assert!(alive(*pid) || *pid == worker, "{role} (pid {pid}) stopped");
    }
    let (rc, rest) = up.stop("TERM", Duration::from_secs(60));
    assert_eq!(rc, 0, "{rest:?}");
    assert!(!alive(back));
}

/// Issue 23 §1: every metric `docs/grafana/cocoon.json` queries is one the running roles
/// export on `/metrics` (a histogram's `_bucket`, `_sum` and `_count` included), and every
/// role has panels.
fn grafana_dashboard_queries_real_metrics(dir: &Path, api: &str) {
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("up.json")).unwrap()).unwrap();
    let mut exported = std::collections::BTreeSet::new();
    let admins = [
        api.to_owned(),
        format!("http://127.0.0.1:{}", saved["proxy_admin_port"]),
        worker_admins(dir).remove(0),
    ];
    for base in &admins {
        let text = get_text(&format!("{base}/metrics")).unwrap();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let (name, kind) = rest.split_once(' ').unwrap();
            exported.insert(name.to_owned());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{s}"));
                }
            }
        }
    }
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/grafana/cocoon.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let mut used = std::collections::BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("cocoon_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                used.insert(name);
            }
        }
    }
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the Grafana dashboard queries metrics no role exports: {unknown:?}"
    );
    for role in ["cocoon_client_", "cocoon_proxy_", "cocoon_worker_"] {
        assert!(used.iter().any(|m| m.starts_with(role)), "no {role}* panel");
    }
    eprintln!(
        "the Grafana dashboard queries {} metrics, all exported",
        used.len()
    );
}

/// Issue 23 on `cocoon up`: each role's dashboard in a real headless Chromium (DevTools
/// protocol): its figures are what its `/jsonstats` says, it shows no Rust `Debug` value, it
/// does not overflow horizontally at 1280 or 390 px, and the worker's controls work from the
/// page with the token typed in (disable, then enable). Screenshots go to
/// `target/dashboards/` (artifacts, not committed).
fn dashboards_in_chromium(dir: &Path, api: &str) {
    let Some(chromium) = common::cdp::chromium() else {
        return;
    };
    let t = Instant::now();
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("up.json")).unwrap()).unwrap();
    let proxy = format!("http://127.0.0.1:{}", saved["proxy_admin_port"]);
    let worker = worker_admins(dir).remove(0);
    let shots = Path::new(env!("CARGO_BIN_EXE_cocoon"))
        .ancestors()
        .nth(2)
        .unwrap()
        .join("dashboards");
    let mut b = common::cdp::Browser::start(&chromium);
    // (role, admin URL, the figure checked, its /jsonstats pointer)
    let pages = [
        ("client", api.to_owned(), "received", "/stats/received"),
        (
            "proxy",
            proxy,
            "requests_received",
            "/counters/requests_received",
        ),
        (
            "worker",
            worker.clone(),
            "requests_received",
            "/counters/requests_received",
        ),
    ];
    for (role, base, figure, pointer) in &pages {
        for width in [1280, 390] {
            b.open(&format!("{base}/stats"), width);
            let html = b.dom();
            let stats = get_json(&format!("{base}/jsonstats")).unwrap();
            let want = stats.pointer(pointer).and_then(|v| v.as_u64()).unwrap();
            assert!(want > 0, "{role}: {pointer} is 0: {stats}");
            let shown = b.eval(&format!(
                "document.querySelector('[data-figure=\"{figure}\"]').textContent"
            ));
            // Thousands are grouped with a narrow no-break space.
            let shown = shown.as_str().unwrap().replace('\u{202f}', "");
            assert_eq!(shown, want.to_string(), "{role}'s {figure} on the page");
            cocoon_testkit::http::assert_no_debug_values(&format!("{role}'s dashboard"), &html);
            assert!(html.contains("<svg class=\"chart\""), "{role}: no chart");
            let (scroll, inner) = (
                b.eval("document.documentElement.scrollWidth"),
                b.eval("window.innerWidth"),
            );
            assert!(
                scroll.as_u64().unwrap() <= inner.as_u64().unwrap(),
                "{role} at {width} px overflows: scrollWidth {scroll} > innerWidth {inner}"
            );
            b.screenshot(&shots.join(format!("{role}-{width}.png")));
        }
    }
    client_channel_and_requests_in_chromium(&mut b, api);
    proxy_ledger_in_chromium(&mut b, &pages[1].1);
    // The worker's switch from its page: the token typed in, Disable, then Enable.
    let token = std::fs::read_to_string(dir.join("worker-1/admin-token")).unwrap();
    b.open(&format!("{worker}/stats"), 1280);
    let enabled = || get_json(&format!("{worker}/jsonstats")).unwrap()["enabled"].clone();
    assert_eq!(enabled(), true);
    for (button, want, word) in [("disable", false, "disabled"), ("enable", true, "enabled")] {
        b.eval(&format!(
            "document.getElementById('ops').open = true; \
             document.getElementById('token').value = {}; \
             document.querySelector('button[data-post=\"/control/{button}\"]').click(); true",
            serde_json::json!(token.trim())
        ));
        b.wait_for(
            &format!("the {button} control's answer"),
            &format!("document.getElementById('ctl-out').textContent === '200 {word}'"),
        );
        assert_eq!(enabled(), want, "after {button} from the page");
        // The page refreshed itself after the control.
        let status = if want {
            "serving"
        } else {
            "disabled by operator"
        };
        b.wait_for(
            &format!("the status after {button}"),
            &format!(
                "document.querySelector('[data-figure=\"status\"]').textContent === '{status}'"
            ),
        );
        if !want {
            b.screenshot(&shots.join("worker-disabled.png"));
        }
    }
    // Without the token the control is refused (401) and nothing changes.
    b.eval(
        "document.getElementById('token').value = 'wrong'; \
         document.querySelector('button[data-post=\"/control/disable\"]').click(); true",
    );
    b.wait_for(
        "the refusal",
        "document.getElementById('ctl-out').textContent.startsWith('401')",
    );
    assert_eq!(enabled(), true);
    eprintln!(
        "dashboards checked in chromium in {:?}; screenshots in {}",
        t.elapsed(),
        shots.display()
    );
}

/// The client's page shows its payment channel with each proxy (balance, stake, the latest
/// signed receipt and whether its receipts verified) and its recent requests (cost,
/// latency, receipt) as `/jsonstats` reports them. Read after the traffic; the channel's
/// latest signed receipt still moves when a proxy checkpoint lands (and an answer's receipt
/// follows its end), so the page is compared with `/jsonstats` read before and after it
/// loaded, once both reads agree.
fn client_channel_and_requests_in_chromium(b: &mut common::cdp::Browser, api: &str) {
    use cocoon_webui::fmt;
    let stats = (0..40)
        .find_map(|_| {
            let before = get_json(&format!("{api}/jsonstats")).unwrap();
            b.open(&format!("{api}/stats"), 1280);
            let after = get_json(&format!("{api}/jsonstats")).unwrap();
            let still = |v: &serde_json::Value| {
                (
                    v["proxies"][0]["receipt_tokens"].clone(),
                    v["recent"].clone(),
                )
            };
            if still(&before) == still(&after) {
                return Some(after);
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
            None
        })
        .expect("the client's stats held still while its page loaded, within 20 s");
    let cell = |b: &mut common::cdp::Browser, table: &str, row: usize, col: usize| {
        b.eval(&format!(
            "document.querySelector('#{table} tbody tr:nth-child({row}) td:nth-child({col})').textContent"
        ))
        .as_str()
        .unwrap()
        .to_owned()
    };
    let p = &stats["proxies"][0];
    let dash = || "–".to_owned();
    let nano = |v: &serde_json::Value| u128::from(v.as_u64().unwrap());
    let ch = &p["channel"];
    let (balance, stake) = if ch.is_null() {
        (dash(), dash())
    } else {
        (fmt::ton(nano(&ch["balance"])), fmt::ton(nano(&ch["stake"])))
    };
    assert_eq!(cell(b, "channels", 1, 4), balance, "channel balance: {p}");
    assert_eq!(cell(b, "channels", 1, 5), stake, "channel stake: {p}");
    // The latest signed receipt (none until the proxy's first checkpoint lands) and that
    // none was refused.
    let receipt = p["receipt_tokens"].as_u64().unwrap();
    assert_eq!(cell(b, "channels", 1, 7), fmt::tokens(receipt));
    assert_eq!(p["bad_receipts"], 0, "{p}");
    let verdict = if receipt == 0 { "none yet" } else { "verified" };
    assert_eq!(cell(b, "channels", 1, 8), verdict);
    // The newest request is the first row.
    let recent = stats["recent"].as_array().unwrap();
    let r = recent.last().expect("recent requests");
    assert_eq!(
        cell(b, "recent", 1, 5),
        fmt::ton(nano(&r["cost_nanoton"])),
        "{r}"
    );
    assert_eq!(
        cell(b, "recent", 1, 6),
        fmt::millis(r["latency_ms"].as_u64().unwrap())
    );
    let receipt_id = r["receipt_id"].as_str().map(str::to_owned);
    let shown = b.eval(
        "(document.querySelector('#recent tbody tr:nth-child(1) td:nth-child(8) a') || {}).title || ''",
    );
    assert_eq!(
        shown.as_str(),
        Some(receipt_id.unwrap_or_default().as_str()),
        "{r}"
    );
}

/// The proxy's page shows its ledger (commission, checkpoints, frozen accounts, each
/// account's last receipt) and its refused handshakes as `/jsonstats` reports them.
fn proxy_ledger_in_chromium(b: &mut common::cdp::Browser, proxy: &str) {
    use cocoon_webui::fmt;
    b.open(&format!("{proxy}/stats"), 1280);
    let stats = get_json(&format!("{proxy}/jsonstats")).unwrap();
    let l = &stats["ledger"];
    assert!(l.is_object(), "cocoon up's proxy keeps a ledger: {stats}");
    let shown = b.eval("document.querySelector('[data-figure=\"commission\"]').textContent");
    assert_eq!(
        shown.as_str(),
        Some(fmt::ton(u128::from(l["commission_nanoton"].as_u64().unwrap())).as_str())
    );
    let rows = |b: &mut common::cdp::Browser, id: &str| {
        b.eval(&format!(
            "document.querySelectorAll('#{id} tbody tr').length"
        ))
        .as_u64()
        .unwrap()
    };
    let frozen = l["frozen"].as_array().unwrap().len() as u64;
    // An empty table shows a line saying so, no rows.
    assert_eq!(rows(b, "frozen"), frozen);
    assert!(rows(b, "accounts") >= 1, "the ledger's accounts are listed");
    let refusals = stats["refusals"].as_array().unwrap().len() as u64;
    assert_eq!(rows(b, "refusals"), refusals);
}

/// Issue 21 §4 on `cocoon up`: the official openai SDK (`COCOON_OPENAI_PYTHON`) calls
/// `client.responses.create` whole and streamed and its stream helper, is refused a stored
/// response with a 400 naming `store` (and a tool schema it does not convert with one naming
/// `tools[0].parameters`), and reads the model's `capabilities` (the embedded engine's: chat,
/// completions, logprobs, json_schema and tools, none of the rest).
fn responses_through_the_sdk(api: &str, model: &str) {
    let Some(python) = std::env::var_os("COCOON_OPENAI_PYTHON") else {
        assert!(
            !cocoon_testkit::fixtures::prereqs_required(),
            "COCOON_OPENAI_PYTHON must be set under scripts/test (scripts/setup --sdk)"
        );
        eprintln!("openai SDK Responses check skipped: COCOON_OPENAI_PYTHON is not set");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/responses.py");
    let t = Instant::now();
    let run = Command::new(&python)
        .arg(&script)
        .args([api, model])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    eprintln!(
        "openai SDK Responses check in {:?}: {}",
        t.elapsed(),
        String::from_utf8_lossy(&run.stdout).trim()
    );
}

/// Runs `tests/sdk/SCRIPT ARGS…` under the official openai SDK (`COCOON_OPENAI_PYTHON`, a
/// venv `scripts/setup --sdk` makes; required under `scripts/test`) and fails with its
/// output unless it exits 0; prints its last line and how long it took. Without the SDK
/// outside `scripts/test` it says so and returns `false`.
fn sdk_script(script: &str, args: &[&str]) -> bool {
    let Some(python) = std::env::var_os("COCOON_OPENAI_PYTHON") else {
        assert!(
            !cocoon_testkit::fixtures::prereqs_required(),
            "COCOON_OPENAI_PYTHON must be set under scripts/test (scripts/setup --sdk)"
        );
        eprintln!("openai SDK {script} skipped: COCOON_OPENAI_PYTHON is not set");
        return false;
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let t = Instant::now();
    let run = Command::new(&python)
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{script}: {out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    eprintln!("openai SDK {script} in {:?}: {}", t.elapsed(), out.trim());
    true
}

/// Issue 21 §4 on `cocoon up --embeddings`: a second worker serves the embedding model
/// all-MiniLM-L6-v2 (listed beside the chat model); the official openai SDK
/// (`crates/cli/tests/sdk/embeddings.py`) embeds with it (384 dimensions) through client →
/// proxy → worker → engine, floats and base64, and each answer is billed as its prompt tokens
/// only; the client's stats counted exactly what the billing headers said.
#[test]
fn up_serves_embeddings_through_the_sdk() {
    if !have_test_model() {
        return;
    }
    let Some(python) = std::env::var_os("COCOON_OPENAI_PYTHON") else {
        assert!(
            !cocoon_testkit::fixtures::prereqs_required(),
            "COCOON_OPENAI_PYTHON must be set under scripts/test (scripts/setup --sdk)"
        );
        eprintln!("openai SDK embeddings check skipped: COCOON_OPENAI_PYTHON is not set");
        return;
    };
    let (_one, tmp, port, rt) = up_test();
    let dir = tmp.path().join("up");
    let api = format!("http://127.0.0.1:{port}");
    let (mut up, _) = Up::start_with(&dir, port, &["--embeddings"]);
    let listed = rt.block_on(common::models(&api));
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    let model = "all-MiniLM-L6-v2".to_owned();
    assert!(ids.contains(&model.as_str()), "{listed}");
    let chat_model = ids
        .iter()
        .find(|id| **id != model)
        .unwrap_or_else(|| panic!("no chat model listed: {listed}"))
        .to_string();
    let stats = || get_json(&format!("{api}/jsonstats")).unwrap()["stats"].clone();
    let before = stats();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/embeddings.py");
    let t = Instant::now();
    let run = Command::new(&python)
        .arg(&script)
        .args([&api, &model, &chat_model, "384"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    eprintln!(
        "openai SDK embeddings check in {:?}: {}",
        t.elapsed(),
        out.trim()
    );
    let billed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let after = stats();
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!(
        delta("succeeded"),
        billed["requests"].as_u64().unwrap(),
        "{after}"
    );
    assert_eq!(
        delta("tokens"),
        billed["tokens"].as_u64().unwrap(),
        "{after}"
    );
    assert_eq!(
        delta("spent_nanoton"),
        billed["nanoton"].as_u64().unwrap(),
        "{after}"
    );
    assert!(billed["prompt_tokens"].as_u64().unwrap() > 0);
    let (rc, rest) = up.stop("TERM", Duration::from_secs(60));
    assert_eq!(rc, 0, "{rest:?}");
}

/// Issue 20 §3 on `cocoon up`: the official openai SDK (`COCOON_OPENAI_PYTHON`, a venv
/// `scripts/setup --sdk` makes; required under `scripts/test`) reads each answer's receipt id
/// from the raw response and fetches the receipt; `cocoon receipt verify` accepts it offline
/// with the root's worker image and model hashes and the body the SDK received, and refuses
/// it after one byte of the body or of a signature changes.
fn receipts_through_the_sdk_verify_offline(dir: &Path, api: &str, model: &str, root: &str) {
    let Some(python) = std::env::var_os("COCOON_OPENAI_PYTHON") else {
        assert!(
            !cocoon_testkit::fixtures::prereqs_required(),
            "COCOON_OPENAI_PYTHON must be set under scripts/test (scripts/setup --sdk)"
        );
        eprintln!("openai SDK check skipped: COCOON_OPENAI_PYTHON is not set");
        return;
    };
    let out = dir.join("sdk");
    std::fs::create_dir_all(&out).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/receipts.py");
    let run = Command::new(&python)
        .arg(&script)
        .args([api, model])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("up.json")).unwrap()).unwrap();
    let ton = format!("http://127.0.0.1:{}", saved["devnet_port"]);
    let shown: serde_json::Value = serde_json::from_str(&common::ok(&[
        "root", "show", "--json", "--root", root, "--ton", &ton,
    ]))
    .unwrap();
    let list = |k: &str| -> Vec<String> {
        shown[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().to_owned())
            .collect()
    };
    let mut args: Vec<String> = ["--policy", "sim", "--allow-sim"]
        .map(String::from)
        .to_vec();
    for h in list("worker_hashes") {
        args.extend(["--worker-hash".into(), h]);
    }
    for h in list("proxy_hashes") {
        args.extend(["--proxy-hash".into(), h]);
    }
    for h in list("model_hashes") {
        args.extend(["--model-hash".into(), h]);
    }
    let verify = |receipt: &Path, answer: &Path| {
        let mut a: Vec<&str> = vec!["receipt", "verify"];
        a.push(receipt.to_str().unwrap());
        a.extend(["--answer", answer.to_str().unwrap()]);
        a.extend(args.iter().map(String::as_str));
        cocoon(&a)
    };
    for kind in ["whole", "stream"] {
        let (receipt, answer) = (
            out.join(format!("{kind}.json")),
            out.join(format!("{kind}.bin")),
        );
        eprintln!("cocoon receipt verify: the {kind} answer's receipt");
        let (rc, text, err) = verify(&receipt, &answer);
        assert_eq!(rc, 0, "{kind}: {text}{err}");
        assert!(
            text.contains("valid") && text.contains("matches the file"),
            "{text}"
        );
        // One byte of the answer changed.
        let mut body = std::fs::read(&answer).unwrap();
        let i = body.len() / 2;
        body[i] ^= 0x01;
        let bad = out.join(format!("{kind}-bad.bin"));
        std::fs::write(&bad, &body).unwrap();
        let (rc, text, _) = verify(&receipt, &bad);
        assert_eq!(rc, 1, "{kind}: a changed answer verified: {text}");
        assert!(text.contains("REFUSED"), "{text}");
        // One byte of the worker's signature changed.
        let mut doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&receipt).unwrap()).unwrap();
        let sig = doc["worker"]["signature"].as_str().unwrap().to_owned();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        doc["worker"]["signature"] = serde_json::json!(format!("{flipped}{}", &sig[1..]));
        let bad = out.join(format!("{kind}-bad.json"));
        std::fs::write(&bad, doc.to_string()).unwrap();
        let (rc, text, _) = verify(&bad, &answer);
        assert_eq!(rc, 1, "{kind}: a changed signature verified: {text}");
        assert!(text.contains("bad receipt signature"), "{text}");
    }
}

#[test]
fn up_serves_a_burst_of_64_requests_on_one_worker() {
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
    // The worker serves as many at once as the embedded engine decodes together (its slots).
    let w = get_json(&format!("{wadmin}/jsonstats")).unwrap();
    assert_eq!(w["max_active_requests"], 4, "{w}");
    let model = rt.block_on(listed_model(&api));
    // The official SDK sends 64 at once (AsyncOpenAI), half streamed, short answers with a
    // long deadline: the test is about the queue, not the model's speed on a busy machine
    // (64 requests took 28 to 75 s on the shared 2-core dev machine).
    if !sdk_script("burst.py", &[&api, &model, "all", "64"]) {
        return;
    }
    // The other 60 waited in the proxy's queue; none was refused.
    let p = get_json(&format!("{padmin}/jsonstats")).unwrap();
    let q = &p["queue"];
    assert!(q["served"].as_u64().unwrap() > 0, "{q}");
    assert_eq!(
        (&q["rejected"], &q["expired"]),
        (&0.into(), &0.into()),
        "{q}"
    );
    assert_eq!(p["counters"]["requests_success"], 64, "{}", p["counters"]);
    assert_eq!(p["counters"]["requests_failed"], 0, "{}", p["counters"]);
    let (rc, rest) = up.stop("TERM", Duration::from_secs(60));
    assert_eq!(rc, 0, "{rest:?}");
    drop(up);

    // The same network again with a proxy queue of 4: of 16 at once, the 4 slots and the 4
    // places serve 8, the rest get 429 with Retry-After (and nothing fails otherwise); with
    // the SDK's own retries (max_retries 6) all 16 succeed.
    let queue = [("COCOON_PROXY_QUEUE_MAX_PER_MODEL", "4")];
    let (mut up, _) = Up::start_with_env(&dir, port, &[], &queue);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("up.json")).unwrap()).unwrap();
    let padmin = format!("http://127.0.0.1:{}", saved["proxy_admin_port"]);
    sdk_script("burst.py", &[&api, &model, "overflow", "16"]);
    let p = get_json(&format!("{padmin}/jsonstats")).unwrap();
    let q = &p["queue"];
    // Every request the proxy failed was one its full queue refused (retries included).
    assert!(q["rejected"].as_u64().unwrap() > 0, "{q}");
    assert_eq!(p["counters"]["requests_failed"], q["rejected"], "{p}");
    let (rc, rest) = up.stop("TERM", Duration::from_secs(60));
    assert_eq!(rc, 0, "{rest:?}");
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
    let port = UP_PORT;
    let api = format!("http://127.0.0.1:{port}");
    let id = format!("mockmodel@v1:{}", "ab".repeat(32));
    let flags = ["--workers", "2", "--backend", &backend, "--model", &id];
    let (mut up, lines) = Up::start_with(tmp.path(), port, &flags);
    // devnet, proxy, two workers, client, explorer
    assert_eq!(children(tmp.path()).len(), 6);
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

/// Issue 21 §5 end to end: `cocoon up --backend` in front of a real OpenAI-compatible server
/// (llama-cpp-python's, serving the default GGUF; `scripts/setup --engine-server`): a chat
/// completion whole and streamed through client, proxy and worker, each answered with the
/// usage the server itself reports for the same request asked directly (each runs to
/// `max_tokens`; llama-cpp-python streams no usage, so the streamed one is counted by the
/// HTTP engine), and billed.
#[test]
fn up_with_a_real_external_engine() {
    if !have_test_model() {
        return;
    }
    let Some(python) = cocoon_testkit::engine_server::EngineServer::python() else {
        return;
    };
    let gguf = PathBuf::from(std::env::var_os("COCOON_TEST_MODEL").unwrap());
    let name = "SmolLM2-135M-Instruct";
    let server = cocoon_testkit::engine_server::EngineServer::start(&python, &gguf, name, 2048);
    let (_one, tmp, port, rt) = up_test();
    let api = format!("http://127.0.0.1:{port}");
    // The model id the workers announce: the GGUF's SHA-256 is its store file name.
    let sha = gguf.file_stem().unwrap().to_str().unwrap();
    let id = format!("{name}@llama-cpp-python:{sha}");
    let flags = ["--backend", server.url.as_str(), "--model", &id];
    let (mut up, _) = Up::start_with(&tmp.path().join("up"), port, &flags);
    let ask = |stream: bool| {
        json!({"model": name, "stream": stream, "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": "Name three colours."}]})
    };
    let usage = |u: &serde_json::Value| {
        (
            u["prompt_tokens"].as_u64().unwrap(),
            u["completion_tokens"].as_u64().unwrap(),
            u["total_tokens"].as_u64().unwrap(),
        )
    };
    let spent = || {
        get_json(&format!("{api}/jsonstats")).unwrap()["totals"]["spent_nanoton"]
            .as_u64()
            .unwrap_or(0)
    };
    rt.block_on(async {
        assert_eq!(listed_model(&api).await, name);
        // The server's own count for this answer.
        let (status, direct) = post_chat(&server.url, &ask(false)).await;
        assert_eq!(status, 200, "{direct}");
        let want = usage(&direct["usage"]);
        assert_eq!(direct["choices"][0]["finish_reason"], "length", "{direct}");

        let before = spent();
        let (status, whole) = post_chat(&api, &ask(false)).await;
        assert_eq!(status, 200, "{whole}");
        // Not the same text: the server's prompt cache may tip a greedy choice.
        assert!(
            whole["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .len()
                > 1
        );
        assert_eq!(whole["choices"][0]["finish_reason"], "length", "{whole}");
        assert_eq!(usage(&whole["usage"]), want, "{whole} vs {direct}");
        let after_whole = spent();
        assert!(after_whole > before, "the whole answer was not billed");

        let r = reqwest::Client::new()
            .post(format!("{api}/v1/chat/completions"))
            .json(&ask(true))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body = r.text().await.unwrap();
        assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
        let events: Vec<serde_json::Value> = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let text: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert!(text.len() > 1, "{body}");
        let last = events.iter().rev().find(|e| e["usage"].is_object());
        let last = last.unwrap_or_else(|| panic!("no usage in the stream: {body}"));
        assert_eq!(usage(&last["usage"]), want, "{body}");
        assert!(spent() > after_whole, "the streamed answer was not billed");
    });
    let (rc, rest) = up.stop("TERM", Duration::from_secs(60));
    assert_eq!(rc, 0, "{rest:?}");
    drop(server);
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

/// A consistent view of `accounts` on the devnet: (balance, last transaction) each, read
/// twice until nothing moved in between (every batch is atomic, so two equal passes mean no
/// message was in flight between two of them).
async fn snapshot(
    tc: &cocoon_ton::Toncenter,
    accounts: &[cocoon_ton::StdAddr],
) -> Vec<(u128, Option<cocoon_ton::chain::TxId>)> {
    use cocoon_ton::chain::Chain;
    let pass = || async {
        let mut v = Vec::new();
        for a in accounts {
            let st = tc.account_state(a).await.unwrap();
            v.push((st.balance, st.last_tx));
        }
        v
    };
    let mut last = pass().await;
    for _ in 0..50 {
        let again = pass().await;
        if again == last {
            return last;
        }
        last = again;
    }
    panic!("the accounts never stood still");
}

/// `a`'s transactions after `from` up to and including `to`, decoded.
async fn txs_between(
    tc: &cocoon_ton::Toncenter,
    a: &cocoon_ton::StdAddr,
    from: Option<&cocoon_ton::chain::TxId>,
    to: Option<&cocoon_ton::chain::TxId>,
) -> Vec<cocoon_devnet::TxRecord> {
    let Some(to) = to else { return Vec::new() };
    let mut txs = cocoon_testkit::devnet::txs_after(tc, a, from).await;
    txs.retain(|t| t.lt <= to.lt);
    txs
}

/// One request of the background traffic: when it was sent and ended, its status and body.
#[derive(Debug, Clone)]
struct Sent {
    at: Instant,
    done: Instant,
    status: u16,
    body: String,
}

/// Issue 18 §2 with the real processes: `cocoon up` serves a stream of requests while the
/// root owner runs `cocoon root change-params --price` with the CLI. The proxy deploys its
/// contract for the new params and switches, the client deploys its new client contract
/// and the worker reconnects, by themselves; requests go on being served. The old proxy
/// contract gets its final receipts (the client's refund, the worker's last payout) and
/// closes after `proxy_delay_before_close` (the devnet's clock is advanced), and the value
/// of every account involved is conserved over every transaction, to the nanoton.
#[test]
fn a_params_change_under_traffic_moves_every_role_and_conserves_money() {
    use cocoon_ton::chain::{Chain, Devnet as _};
    use cocoon_ton::codec::Layout;
    use cocoon_ton::contracts::{
        ClientStorage, ProxyStorage, WorkerStorage, client_contract, proxy_contract,
        worker_contract,
    };
    if !have_test_model() {
        return;
    }
    let started = Instant::now();
    let (_one, tmp, port, rt) = up_test();
    let dir = tmp.path().join("up");
    let api = format!("http://127.0.0.1:{port}");
    let (mut up, _) = Up::start(&dir, port);
    eprintln!("cocoon up ready in {:?}", started.elapsed());
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("up.json")).unwrap()).unwrap();
    let padmin = format!("http://127.0.0.1:{}", saved["proxy_admin_port"]);
    let wadmin = format!("http://127.0.0.1:{}", saved["worker_admin_ports"][0]);
    let url = format!("http://127.0.0.1:{}", saved["devnet_port"]);
    let tc = cocoon_ton::Toncenter::with_url(&url).unwrap();
    let addr = |v: &serde_json::Value| cocoon_ton::parse_address(v.as_str().unwrap()).unwrap();
    let root = addr(&saved["root_address"]);
    let owner = addr(&saved["owner_address"]);
    let client = addr(&saved["client_address"]);
    let worker_owner = addr(&saved["worker_owner_address"]);
    let old_root = rt
        .block_on(cocoon_ton::chain::load_root_config(&tc, &root))
        .unwrap();
    let p0 = old_root.params.clone();
    let pk = cocoon_ton::HashBytes(
        cocoon_ton::keys::SigningKey::from_file(&dir.join("proxy/proxy-key"))
            .unwrap()
            .public_key(),
    );
    let old_proxy = proxy_contract(&p0, &owner, &pk, &root).unwrap().address;
    let pstats = get_json(&format!("{padmin}/jsonstats")).unwrap();
    assert_eq!(addr(&pstats["proxy_sc"]), old_proxy, "{pstats}");
    let old_client_sc = client_contract(&p0, &client, &old_proxy, &pk)
        .unwrap()
        .address;
    let cstats = get_json(&format!("{api}/jsonstats")).unwrap();
    assert_eq!(
        addr(&cstats["proxies"][0]["client_sc"]),
        old_client_sc,
        "{cstats}"
    );
    let old_worker = worker_contract(&p0, &worker_owner, &old_proxy, &pk)
        .unwrap()
        .address;
    let old_accounts = vec![
        owner.clone(),
        client.clone(),
        worker_owner.clone(),
        root.clone(),
        old_proxy.clone(),
        old_client_sc.clone(),
        old_worker.clone(),
    ];
    let before = rt.block_on(snapshot(&tc, &old_accounts));
    let storage = |a: &cocoon_ton::StdAddr| {
        rt.block_on(tc.account_state(a))
            .unwrap()
            .data
            .expect("an active contract")
    };
    let client_before = ClientStorage::from_cell(&storage(&old_client_sc)).unwrap();
    let worker_before = WorkerStorage::from_cell(&storage(&old_worker)).unwrap();

    // Traffic: one request after another until told to stop.
    let model = rt.block_on(listed_model(&api));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Sent>::new()));
    let traffic = {
        let (stop, sent, api, model) = (stop.clone(), sent.clone(), api.clone(), model.clone());
        rt.spawn(async move {
            let http = reqwest::Client::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let at = Instant::now();
                let r = http
                    .post(format!("{api}/v1/chat/completions"))
                    .json(&serde_json::json!({
                        "model": model, "max_tokens": 8, "stream": i % 2 == 0,
                        "messages": [{"role": "user", "content": format!("Count to {i}.")}],
                    }))
                    .send()
                    .await;
                // A connection the gateway closed without an answer is a failed request
                // (counted below), not the end of the traffic.
                let (status, body) = match r {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r
                            .text()
                            .await
                            .unwrap_or_else(|e| format!("<body cut: {e}>"));
                        (status, body)
                    }
                    Err(e) => (0, format!("<no answer: {e:?}>")),
                };
                sent.lock().unwrap().push(Sent {
                    at,
                    done: Instant::now(),
                    status,
                    body,
                });
            }
        })
    };
    let served_since = |t: Instant| {
        sent.lock()
            .unwrap()
            .iter()
            .filter(|s| s.at >= t && s.status == 200)
            .count()
    };
    let t0 = Instant::now();
    wait_until("two answers before the change", 60, || {
        served_since(t0) >= 2
    });

    // The root owner changes the price with the CLI.
    let t_change = Instant::now();
    let (p1_price, p1_fee) = (p0.price_per_token + 10, p0.worker_fee_per_token + 5);
    let out = common::ok(&[
        "root",
        "change-params",
        "--price",
        &p1_price.to_string(),
        "--worker-fee",
        &p1_fee.to_string(),
        "--key",
        dir.join("owner.key").to_str().unwrap(),
        "--ton",
        &url,
        "--root",
        &root.to_string(),
    ]);
    eprintln!("change-params took {:?}: {out}", t_change.elapsed());
    let new_root = rt
        .block_on(cocoon_ton::chain::load_root_config(&tc, &root))
        .unwrap();
    let p1 = new_root.params.clone();
    assert_eq!(p1.params_version, p0.params_version + 1, "{out}");
    assert_eq!(
        (p1.price_per_token, p1.worker_fee_per_token),
        (p1_price, p1_fee)
    );
    let new_proxy = proxy_contract(&p1, &owner, &pk, &root).unwrap().address;
    let new_client_sc = client_contract(&p1, &client, &new_proxy, &pk)
        .unwrap()
        .address;
    let new_worker = worker_contract(&p1, &worker_owner, &new_proxy, &pk)
        .unwrap()
        .address;

    // Every role follows by itself: the proxy switches, the client comes back on a new
    // client contract, the worker under the new params; answers go on.
    wait_until("the proxy on its new contract", 60, || {
        get_json(&format!("{padmin}/jsonstats"))
            .is_some_and(|p| p["proxy_sc"].as_str() == Some(&new_proxy.to_string()))
    });
    let t_switched = Instant::now();
    eprintln!(
        "proxy switched {:?} after the change",
        t_switched - t_change
    );
    wait_until("the client on its new client contract", 60, || {
        get_json(&format!("{api}/jsonstats")).is_some_and(|c| {
            c["proxies"][0]["client_sc"].as_str() == Some(&new_client_sc.to_string())
        })
    });
    let t_back = Instant::now();
    wait_until("three answers on the new contracts", 60, || {
        served_since(t_back) >= 3
    });
    // The worker deployed its new worker contract itself, from its owner's wallet.
    wait_until("the new worker contract deployed", 60, || {
        rt.block_on(tc.account_state(&new_worker))
            .unwrap()
            .data
            .is_some()
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    rt.block_on(traffic).unwrap();
    let sent = sent.lock().unwrap().clone();
    eprintln!(
        "traffic: {} requests; the client was back {:?} after the change",
        sent.len(),
        t_back - t_change
    );
    let bad = |s: &&Sent| s.status != 200 || s.body.contains("\"error\"");
    for s in sent.iter().filter(bad).take(5) {
        eprintln!(
            "request at {:?} after the start of traffic, {:?}: {} {}",
            s.at - t0,
            s.done - s.at,
            s.status,
            s.body
        );
    }
    // No request is lost: each is served, except one that was running when the old
    // session ended (it had started; it ends with an error).
    let failed: Vec<&Sent> = sent.iter().filter(bad).collect();
    assert!(failed.len() <= 1, "requests failed: {failed:?}");
    for f in &failed {
        assert!(
            f.at < t_switched && f.done > t_change,
            "a request that failed was not running at the switch: {f:?}"
        );
    }
    // Every request reached the worker once: those served, and the one that was running
    // when its session ended (none was refused or lost on the way).
    let w = get_json(&format!("{wadmin}/jsonstats")).unwrap();
    assert_eq!(
        w["counters"]["requests_received"].as_u64(),
        Some(sent.len() as u64),
        "{w}"
    );
    // The roles' own pages show the new contracts.
    assert_eq!(
        w["proxies"][0]["proxy_sc_address"].as_str(),
        Some(new_proxy.to_string().as_str()),
        "{w}"
    );
    // Each contract's unpaid earnings are priced at its own params' fee.
    for (sc, fee) in [
        (&old_proxy, p0.worker_fee_per_token),
        (&new_proxy, p1.worker_fee_per_token),
    ] {
        let e = w["payments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["proxy_sc_address"].as_str() == Some(sc.to_string().as_str()))
            .unwrap_or_else(|| panic!("no payments row for {sc}: {w}"));
        let ready: u64 = e["ready_nanoton"].as_str().unwrap().parse().unwrap();
        assert_eq!(ready, e["ready_tokens"].as_u64().unwrap() * fee, "{e}");
    }
    let p = get_json(&format!("{padmin}/jsonstats")).unwrap();
    assert_eq!(p["event_counts"]["proxy_contract_switched"], 1, "{p}");
    assert_eq!(p["ledger"]["params_version"], p1.params_version, "{p}");
    let c = get_json(&format!("{api}/jsonstats")).unwrap();
    assert_eq!(c["root"]["params_version"], p1.params_version, "{c}");
    assert_eq!(c["root"]["price_per_token"], p1_price, "{c}");

    // The old proxy contract retires: the client's refund and the worker's last payout
    // land, then its close request; the devnet's clock is moved past the close delay.
    let state = |a: &cocoon_ton::StdAddr| ProxyStorage::from_cell(&storage(a)).unwrap().state.0;
    let mut advanced = false;
    let end = Instant::now() + Duration::from_secs(120);
    while state(&old_proxy) != 2 {
        assert!(Instant::now() < end, "old proxy contract not closed");
        if state(&old_proxy) == 1 && !advanced {
            let secs = u64::from(p0.proxy_delay_before_close) + 1;
            rt.block_on(tc.advance_clock(secs)).unwrap();
            advanced = true;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(advanced, "closed without waiting for its close delay");
    // The proxy's book of contracts sees it closed (its next retirement pass).
    let book = dir.join("proxy/proxy-contracts");
    let want = [
        format!("{} {old_proxy} closed", p0.params_version),
        format!("{} {new_proxy} open", p1.params_version),
    ];
    wait_until("the proxy's book shows the old contract closed", 30, || {
        let text = std::fs::read_to_string(&book).unwrap_or_default();
        want.iter().all(|w| text.lines().any(|l| l == w))
    });
    eprintln!(
        "old proxy contract closed {:?} after the change",
        t_change.elapsed()
    );

    // Let the network settle, then the books: a consistent snapshot of every account.
    let all: Vec<cocoon_ton::StdAddr> = old_accounts
        .iter()
        .cloned()
        .chain([new_proxy.clone(), new_client_sc.clone(), new_worker.clone()])
        .collect();
    let after = rt.block_on(snapshot(&tc, &all));
    let cs = ClientStorage::from_cell(&storage(&old_client_sc)).unwrap();
    let ws = WorkerStorage::from_cell(&storage(&old_worker)).unwrap();
    assert_eq!(cs.state.0, 2, "old client contract closed");
    assert_eq!(ws.state.0, 2, "old worker contract closed");
    let used = u128::from(cs.tokens_used - client_before.tokens_used);
    let earned = u128::from(ws.tokens - worker_before.tokens);
    assert!(used > 0 && earned > 0, "used {used}, earned {earned}");
    let (pr0, fe0) = (
        u128::from(p0.price_per_token),
        u128::from(p0.worker_fee_per_token),
    );

    let mut delta: i128 = 0;
    let mut fees: u128 = 0;
    let mut count = 0;
    let mut refunds = Vec::new();
    let mut worker_payouts = Vec::new();
    let mut owner_payouts = Vec::new();
    let before_all: Vec<_> = before
        .iter()
        .cloned()
        .chain(std::iter::repeat_n((0, None), 3))
        .collect();
    for (a, ((b0, tx0), (b1, tx1))) in all.iter().zip(before_all.iter().zip(&after)) {
        delta += *b1 as i128 - *b0 as i128;
        for t in rt.block_on(txs_between(&tc, a, tx0.as_ref(), tx1.as_ref())) {
            count += 1;
            fees += t.fees_paid();
            let Some(m) = &t.in_msg else { continue };
            let Some(src) = &m.src else { continue };
            assert!(all.contains(src), "value from outside the accounts: {t:?}");
            let payout = m.body.as_slice().ok().and_then(|mut s| s.load_u32().ok())
                == Some(cocoon_testkit::devnet::PAYOUT_OP);
            if payout && src == &old_proxy {
                if a == &client {
                    refunds.push(m.value);
                } else if a == &worker_owner {
                    worker_payouts.push(m.value);
                } else if a == &owner {
                    owner_payouts.push(m.value);
                }
            }
        }
    }
    eprintln!(
        "params change under traffic: old client used {used} tokens, old worker earned {earned}; refund {refunds:?}, worker payouts {worker_payouts:?}, owner got {owner_payouts:?}; {count} transactions, fees {fees} nanoTON, Δbalances {delta}; whole test {:?}",
        started.elapsed()
    );
    assert_eq!(
        refunds,
        vec![u128::from(client_before.balance.0) - used * pr0],
        "the client's balance less its use came back"
    );
    assert_eq!(
        worker_payouts.iter().sum::<u128>(),
        earned * fe0,
        "the worker got tokens × fee"
    );
    assert_eq!(owner_payouts.len(), 1, "{owner_payouts:?}");
    assert_eq!(
        rt.block_on(tc.account_state(&old_proxy)).unwrap().balance,
        0
    );
    assert_eq!(delta + fees as i128, 0, "value conserved to the nanoton");
    let (code, _) = up.stop("INT", Duration::from_secs(30));
    assert_eq!(code, 0);
}

/// Waits (at most `secs`) for `f`, panicking with `what` when it never holds.
fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// POSTs `body` to the chat endpoint; (status, JSON body).
async fn post_chat(api: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{api}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, v)
}

/// The pid `<dir>/pids` names for `role`, if it runs.
fn role_pid(dir: &Path, role: &str) -> Option<u32> {
    children(dir)
        .into_iter()
        .find_map(|(r, pid)| (r == role).then_some(pid))
}

fn sigkill(pid: u32) {
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// Waits until `role` runs again under a pid other than `old`; returns the new pid.
fn wait_restarted(dir: &Path, role: &str, old: u32) -> u32 {
    let mut new = None;
    wait_until(&format!("{role} restarted"), 60, || {
        new = role_pid(dir, role).filter(|p| *p != old && alive(*p));
        new.is_some()
    });
    new.unwrap()
}

/// Reads `cocoon up`'s stderr into `seen` until a line starts with `prefix` (at most
/// `secs`); returns that line's index.
fn wait_err(up: &Up, seen: &mut Vec<String>, prefix: &str, secs: u64) -> usize {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(i) = seen.iter().position(|l| l.starts_with(prefix)) {
            return i;
        }
        let left = end.saturating_duration_since(Instant::now());
        match up.err.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(e) => panic!("no line {prefix:?} ({e}): {seen:?}"),
        }
    }
}

/// A role's entry in `<dir>/status.json`.
fn status_of(dir: &Path, role: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("status.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == role)
        .unwrap_or_else(|| panic!("no {role} in {v}"))
        .clone()
}

/// POSTs a short chat request; `None` while the API cannot be reached.
async fn try_chat(api: &str, model: &str) -> Option<(u16, String)> {
    let r = reqwest::Client::new()
        .post(format!("{api}/v1/chat/completions"))
        .timeout(Duration::from_secs(60))
        .json(&json!({
            "model": model,
            "messages": [{"role": "user", "content": "Name three colours."}],
            "max_tokens": 8,
        }))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// Retries a short request until it is answered with completion tokens (at most 60 s).
async fn answers_again(api: &str, model: &str) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let last = match try_chat(api, model).await {
            Some((200, body)) => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{v}");
                return;
            }
            other => other,
        };
        assert!(Instant::now() < end, "no answer within 60 s: {last:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A short request that must be answered at once.
async fn answered(api: &str, model: &str) {
    let (status, body) = try_chat(api, model)
        .await
        .expect("the API is not reachable");
    assert_eq!(status, 200, "{body}");
}

/// Each worker's admin address (from `up.json`).
fn worker_admins(dir: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("up.json")).unwrap()).unwrap();
    v["worker_admin_ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect()
}

/// A worker's (active requests, requests received); `None` while it is not up.
fn worker_load(admin: &str) -> Option<(u64, u64)> {
    let s = get_json(&format!("{admin}/jsonstats"))?;
    Some((
        s["active_requests"].as_u64()?,
        s["counters"]["requests_received"].as_u64()?,
    ))
}

/// Issue 22 §2: `cocoon up --workers 2` is a supervisor. The worker serving a stream is
/// killed: the stream ends with an error event, the next requests are answered by the other
/// worker, the killed one is reported, restarted (new pid) and serves again — alone, once
/// the other is killed in turn, which comes back too. A worker that keeps dying (its state
/// directory replaced by a file) is restarted with backoff, then reported as failed while
/// the other keeps serving; when the last worker is given up too, `cocoon up` stops
/// everything and exits 1 naming it.
#[test]
fn up_restarts_a_killed_worker_and_gives_up_one_that_keeps_dying() {
    if !have_test_model() {
        return;
    }
    let (_one, tmp, port, rt) = up_test();
    let dir = tmp.path().join("up");
    let api = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let (mut up, lines) = Up::start_with(&dir, port, &["--workers", "2"]);
    let status = dir.join("status.json");
    let shown = format!("  status       {}", status.display());
    assert!(lines.iter().any(|l| l.starts_with(&shown)), "{lines:?}");
    for role in ["devnet", "proxy", "worker-1", "worker-2", "client"] {
        let s = status_of(&dir, role);
        assert_eq!(s["state"], "running", "{s}");
        assert_eq!(s["pid"], role_pid(&dir, role).unwrap(), "{s}");
        assert_eq!(s["restarts"], 0, "{s}");
    }
    let admins = worker_admins(&dir);
    let mut err = Vec::new();
    rt.block_on(async {
        let model = listed_model(&api).await;
        // A long stream; once its first chunk is here, the worker serving it is killed.
        let r = reqwest::Client::new()
            .post(format!("{api}/v1/chat/completions"))
            .json(&json!({
                "model": model, "stream": true, "max_tokens": 2000,
                "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut body = r.bytes_stream();
        use futures::StreamExt;
        let mut text = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();
        let mut serving = None;
        wait_until("a worker with the stream", 30, || {
            serving = (0..2).find(|i| worker_load(&admins[*i]).is_some_and(|(a, _)| a > 0));
            serving.is_some()
        });
        let (k, other) = match serving.unwrap() {
            0 => ("worker-1", 1),
            _ => ("worker-2", 0),
        };
        let killed = role_pid(&dir, k).unwrap();
        sigkill(killed);
        while let Some(c) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&c.unwrap()));
        }
        let last = text
            .trim_end()
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        assert!(last.starts_with("data: {\"error\":"), "{last}");
        assert!(!text.contains("[DONE]"), "{text}");
        // The other worker answers meanwhile.
        let (_, before) = worker_load(&admins[other]).unwrap();
        for _ in 0..3 {
            answered(&api, &model).await;
        }
        let (_, after) = worker_load(&admins[other]).unwrap();
        assert!(after > before, "the other worker served nothing");
        // The killed worker is reported and comes back under a new pid, then serves alone.
        let back = wait_restarted(&dir, k, killed);
        let i = wait_err(
            &up,
            &mut err,
            &format!("cocoon up: the {k} exited on its own (signal 9)"),
            5,
        );
        assert!(err[i].contains(&format!("logs/{k}.log")), "{err:?}");
        assert!(err[i].contains("restarting it in 0.5 s"), "{err:?}");
        let o = if k == "worker-1" {
            "worker-2"
        } else {
            "worker-1"
        };
        wait_until(&format!("{k} connected to the proxy"), 60, || {
            get_json(&format!("{}/jsonstats", admins[1 - other])).is_some_and(|s| {
                s["proxies"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|x| x["state"] == "ready"))
            })
        });
        let other_pid = role_pid(&dir, o).unwrap();
        sigkill(other_pid);
        answered(&api, &model).await;
        let (_, served) = worker_load(&admins[1 - other]).unwrap();
        assert!(served > 0, "the restarted {k} served nothing");
        assert!(alive(back));
        wait_restarted(&dir, o, other_pid);
        answers_again(&api, &model).await;
        assert_eq!(status_of(&dir, k)["restarts"], 1);
        assert_eq!(status_of(&dir, k)["state"], "running");

        // worker-2 keeps dying: its state directory is a file now.
        let state = dir.join("worker-2");
        std::fs::rename(&state, dir.join("worker-2.away")).unwrap();
        std::fs::write(&state, "not a directory").unwrap();
        sigkill(role_pid(&dir, "worker-2").unwrap());
        let i = wait_err(
            &up,
            &mut err,
            "cocoon up: the worker-2 failed: it exited 6 times within 60 s, the last with exit \
             code 1; it is not restarted and the others keep serving without the worker-2",
            90,
        );
        assert!(err[i].contains("logs/worker-2.log"), "{err:?}");
        let restarts = err
            .iter()
            .filter(|l| l.starts_with("cocoon up: worker-2 restarted"))
            .count();
        assert!(restarts >= 5, "{err:?}");
        assert_eq!(status_of(&dir, "worker-2")["state"], "failed");
        assert!(role_pid(&dir, "worker-2").is_none());
        for _ in 0..3 {
            answered(&api, &model).await;
        }
    });
    assert!(
        up.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "cocoon up stopped"
    );
    // The last worker given up too: nothing can serve, so everything is stopped, exit 1.
    let kids = children(&dir);
    let state = dir.join("worker-1");
    std::fs::rename(&state, dir.join("worker-1.away")).unwrap();
    std::fs::write(&state, "not a directory").unwrap();
    sigkill(role_pid(&dir, "worker-1").unwrap());
    let (rc, _) = up.wait_exit(Duration::from_secs(90));
    assert_eq!(rc, 1);
    err.extend(up.err.try_iter());
    let want = "error: the worker-1 kept exiting (6 times within 60 s, the last with exit code \
                1) and the network cannot serve without it; see ";
    assert!(err.iter().any(|l| l.starts_with(want)), "{err:?}");
    for (role, pid) in &kids {
        assert!(!alive(*pid), "{role} (pid {pid}) still runs");
    }
    assert!(!dir.join("pids").exists());
    assert!(!dir.join("status.json").exists());
    eprintln!("worker restarts tested in {:?}", started.elapsed());
}

/// Issue 22 §2 for the other roles: the proxy, the client and the devnet killed in turn are
/// each reported and restarted with their state; the client redials the restarted proxy,
/// the restarted client serves the API on the same port with its spending kept, and the
/// restarted devnet still holds the root.
#[test]
fn up_restarts_the_proxy_the_client_and_the_devnet() {
    if !have_test_model() {
        return;
    }
    let (_one, tmp, port, rt) = up_test();
    let dir = tmp.path().join("up");
    let api = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let (mut up, _) = Up::start(&dir, port);
    let root = root_address(&dir);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("up.json")).unwrap()).unwrap();
    let ton = format!("http://127.0.0.1:{}", saved["devnet_port"]);
    let show = || common::ok(&["root", "show", "--json", "--root", &root, "--ton", &ton]);
    let spent = || {
        get_json(&format!("{api}/jsonstats")).unwrap()["totals"]["spent_nanoton"]
            .as_u64()
            .unwrap_or(0)
    };
    let mut err = Vec::new();
    rt.block_on(async {
        let model = listed_model(&api).await;
        answered(&api, &model).await;
        for role in ["proxy", "client", "devnet"] {
            let chain = show();
            let before = spent();
            let pid = role_pid(&dir, role).unwrap();
            sigkill(pid);
            let back = wait_restarted(&dir, role, pid);
            let i = wait_err(
                &up,
                &mut err,
                &format!("cocoon up: the {role} exited on its own (signal 9)"),
                5,
            );
            assert!(err[i].contains(&format!("logs/{role}.log")), "{err:?}");
            answers_again(&api, &model).await;
            assert!(spent() > before, "{role}: spending lost or not billed");
            assert_eq!(show(), chain, "{role}: the root changed");
            assert!(alive(back));
            assert_eq!(status_of(&dir, role)["pid"], back);
            assert_eq!(status_of(&dir, role)["last_exit"], "signal 9");
        }
    });
    let (rc, rest) = up.stop("TERM", Duration::from_secs(60));
    assert_eq!(rc, 0, "{rest:?}");
    eprintln!(
        "proxy, client and devnet restarts tested in {:?}",
        started.elapsed()
    );
}

/// Issue 23 §2 on `cocoon up`: the network explorer it starts and prints, in a real
/// headless Chromium. Its page shows the model `/v1/models` lists with the root's prices per
/// 1M tokens (what `cocoon root show` reads from the chain, at the worker's coefficient),
/// the proxy with the image hash the root allows, verified by the explorer's own RA-TLS
/// handshake (TEE, image), the worker count the proxy reports, no
/// Rust `Debug` value, and no horizontal overflow at 1280 or 390 px. Screenshots go to
/// `target/explorer/`.
#[test]
fn the_explorer_of_a_live_up_in_chromium() {
    if !have_test_model() {
        return;
    }
    let (_one, tmp, port, rt) = up_test();
    let dir = tmp.path();
    let (mut up, lines) = Up::start(dir, port);
    let explorer = lines
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("explorer"))
        .and_then(|r| r.split_whitespace().next())
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| panic!("no explorer URL printed: {lines:?}"));
    let api = format!("http://127.0.0.1:{port}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("up.json")).unwrap()).unwrap();
    let ton = format!("http://127.0.0.1:{}", saved["devnet_port"]);
    let proxy = format!("http://127.0.0.1:{}", saved["proxy_admin_port"]);
    let root = root_address(dir);
    let shown: serde_json::Value = serde_json::from_str(&common::ok(&[
        "root", "show", "--json", "--root", &root, "--ton", &ton,
    ]))
    .unwrap();
    // One answer, so tokens are served.
    let model_name = get_json(&format!("{api}/v1/models")).unwrap()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{api}/v1/chat/completions"))
            .json(&json!({"model": model_name, "max_tokens": 8,
                "messages": [{"role": "user", "content": "Hello"}]}))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    let pstats = get_json(&format!("{proxy}/jsonstats")).unwrap();
    let served = pstats["counters"]["adjusted_tokens_total"]
        .as_u64()
        .unwrap();
    assert!(served > 0, "{pstats}");
    common::wait_for("the explorer to see the tokens served", || {
        get_json(&format!("{explorer}/api/network")).is_some_and(|n| n["tokens_served"] == served)
    });
    common::wait_for("the explorer's handshake with the proxy", || {
        get_json(&format!("{explorer}/api/network"))
            .is_some_and(|n| n["proxies"][0]["verified"]["checked_at"].is_u64())
    });
    let net = get_json(&format!("{explorer}/api/network")).unwrap();
    assert_eq!(net["status"], "live", "{net:#}");
    assert_eq!(net["root_version"], shown["version"]);

    // The JSON's figures are the chain's and the proxy's.
    let price = shown["price_per_token"].as_u64().unwrap();
    let models = net["models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "{net:#}");
    let m = &models[0];
    let coefficient = m["coefficient_min"].as_u64().unwrap();
    let per_million = |mult: &str| {
        let mult = shown[mult].as_u64().unwrap();
        (1_000_000u128 * u128::from(coefficient) * u128::from(mult) / 10_000_000)
            * u128::from(price)
    };
    let workers = pstats["workers"].as_array().unwrap();
    assert_eq!(m["workers"], workers.len());
    assert_eq!(m["allowed"], true);
    let proxy_row = &net["proxies"][0];
    assert_eq!(proxy_row["status"], "live");
    assert_eq!(proxy_row["proxy_sc"], pstats["proxy_sc"]);
    let image = proxy_row["image_hash"].as_str().unwrap().to_owned();
    assert!(
        shown["proxy_hashes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h.as_str().unwrap().eq_ignore_ascii_case(&image)),
        "{image} not allowed by the root: {shown}"
    );
    assert_eq!(proxy_row["image_allowed"], true);
    // Self-reported: said so; the verified fields are the explorer's own RA-TLS handshake
    // with the proxy's registered client endpoint.
    assert!(
        proxy_row["attestation"]
            .as_str()
            .unwrap()
            .starts_with("reported by the proxy"),
        "{proxy_row}"
    );
    let verified = &proxy_row["verified"];
    assert_eq!(verified["verified"], true, "{proxy_row}");
    assert_eq!(verified["tee"], "sim");
    assert_eq!(verified["image_hash"], image.as_str());
    assert_eq!(verified["image_allowed"], true);
    assert_eq!(verified["image_mismatch"], false);
    assert_eq!(
        net["registered_proxies"][0]["verified"]["status"], "verified",
        "{net:#}"
    );
    assert!(
        proxy_row["stake"]
            .as_str()
            .unwrap()
            .parse::<u128>()
            .unwrap()
            > 0
    );

    let Some(chromium) = common::cdp::chromium() else {
        return;
    };
    let shots = Path::new(env!("CARGO_BIN_EXE_cocoon"))
        .ancestors()
        .nth(2)
        .unwrap()
        .join("explorer");
    let mut b = common::cdp::Browser::start(&chromium);
    for width in [1280, 390] {
        b.open(&format!("{explorer}/"), width);
        let html = b.dom();
        cocoon_testkit::http::assert_no_debug_values("the explorer", &html);
        // The model row: its name and its four prices, as the page formats TON.
        let row = b.eval(
            "Array.from(document.querySelectorAll('#models tbody tr td')).map(td => td.textContent)",
        );
        let cells: Vec<String> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().replace('\u{202f}', ""))
            .collect();
        assert!(
            cells[0].contains(&model_name),
            "{model_name} not in the models row {cells:?}"
        );
        for (i, mult) in [
            "prompt_tokens_price_multiplier",
            "cached_tokens_price_multiplier",
            "completion_tokens_price_multiplier",
            "reasoning_tokens_price_multiplier",
        ]
        .iter()
        .enumerate()
        {
            let want = cocoon_webui_ton(per_million(mult));
            assert_eq!(cells[4 + i], want, "{mult} per 1M on the page");
        }
        assert_eq!(cells[2], workers.len().to_string(), "workers on the page");
        // The proxy with its full image hash (in the tooltip) and its worker count.
        let proxy_cells = b.eval(
            "Array.from(document.querySelectorAll('#proxy-table tbody tr td')).map(td => td.textContent)",
        );
        let titles =
            b.eval("Array.from(document.querySelectorAll('#proxy-table .hash')).map(h => h.title)");
        assert!(
            titles
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t.as_str() == Some(image.as_str())),
            "{image} not on the page: {titles}"
        );
        assert_eq!(
            proxy_cells[11].as_str().unwrap(),
            workers.len().to_string(),
            "{proxy_cells}"
        );
        assert!(proxy_cells[1].as_str().unwrap().starts_with("live"));
        // The reported TEE and image (checked against the root's list), then what the
        // explorer's handshake verified.
        assert_eq!(proxy_cells[3].as_str().unwrap(), "sim", "{proxy_cells}");
        assert_eq!(
            proxy_cells[5].as_str().unwrap(),
            "allowed (as reported)",
            "{proxy_cells}"
        );
        assert_eq!(
            proxy_cells[6].as_str().unwrap(),
            "verified",
            "{proxy_cells}"
        );
        assert_eq!(proxy_cells[7].as_str().unwrap(), "sim", "{proxy_cells}");
        let verified_image =
            b.eval("document.querySelector('#proxy-table tbody tr td:nth-child(9) .hash').title");
        assert_eq!(
            verified_image.as_str(),
            Some(image.as_str()),
            "{verified_image}"
        );
        let registered = b.eval(
            "Array.from(document.querySelectorAll('#registered tbody tr td')).map(td => td.textContent)",
        );
        assert_eq!(registered[2].as_str().unwrap(), "verified", "{registered}");
        let heading = b.eval(
            "(() => { const t = document.querySelector('#proxy-table'); const s = t.closest('section') || t.parentElement; return s.textContent; })()",
        );
        assert!(
            heading
                .as_str()
                .unwrap()
                .contains("TEE and image as each proxy reports them, and as the explorer's RA-TLS handshake verified them"),
            "{heading}"
        );
        let headers = b.eval(
            "Array.from(document.querySelectorAll('#proxy-table thead th')).map(th => th.textContent)",
        );
        assert_eq!(headers[3], "TEE (reported)", "{headers}");
        assert_eq!(headers[5], "Reported image allowed", "{headers}");
        assert_eq!(headers[6], "Verified", "{headers}");
        assert_eq!(headers[8], "Image (verified)", "{headers}");
        // TON sent by the proxy contracts, split into workers' payouts and clients' refunds,
        // as /api/network reads them from the chain (read again: the chain moves on).
        let net = get_json(&format!("{explorer}/api/network")).unwrap();
        for figure in ["paid_out", "paid_to_workers", "refunded_to_clients"] {
            let want: u128 = net[figure].as_str().unwrap().parse().unwrap();
            let shown = b.eval(&format!(
                "document.querySelector('[data-figure=\"{figure}\"]').textContent"
            ));
            assert_eq!(
                shown.as_str().unwrap().replace('\u{202f}', ""),
                cocoon_webui_ton(want),
                "{figure} on the page"
            );
        }
        let (scroll, inner) = (
            b.eval("document.documentElement.scrollWidth"),
            b.eval("window.innerWidth"),
        );
        assert!(
            scroll.as_u64().unwrap() <= inner.as_u64().unwrap(),
            "the explorer at {width} px overflows: scrollWidth {scroll} > innerWidth {inner}"
        );
        b.screenshot(&shots.join(format!("explorer-{width}.png")));
    }
    eprintln!(
        "explorer checked in chromium; screenshots in {}",
        shots.display()
    );
    let (rc, _) = up.stop("INT", Duration::from_secs(60));
    assert_eq!(rc, 0);
}

/// nanoTON as the pages show it (`cocoon_webui::fmt::ton`, thousands without separators).
fn cocoon_webui_ton(nano: u128) -> String {
    cocoon_webui::fmt::ton(nano).replace('\u{202f}', "")
}
