//! `cocoon-bench-soak`: a long run of mixed load through `cocoon up`, watching every role
//! for growth.
//!
//! ```sh
//! cargo build -p cocoon -p cocoon-bench-soak
//! target/debug/cocoon-bench-soak [--minutes 60] [--out DIR] [--sample 10] [--cocoon PATH]
//! ```
//!
//! It serves a fake OpenAI-compatible engine on loopback (streams of 20 chunks 10 ms apart
//! with usage at the end, whole answers, and long streams of 400 chunks for cancels), runs
//! `cocoon up --backend <it> --workers 1` in `DIR/up` on a free port, and drives it with
//! several loops at once: streamed answers read to `[DONE]`, whole answers, cancels (the
//! client drops the response after three chunks of a long stream), disconnects (a raw TCP
//! connection sends a request and closes before the answer) and top-ups (the client's
//! `POST /control/topup`, a chain transaction on the devnet, once a minute). Every
//! `--sample` seconds it reads each role's `VmRSS`, `Threads` (`/proc/PID/status`) and open
//! files (`/proc/PID/fd`), and the roles' `cocoon_tasks` from their `/metrics`, and writes a
//! row per role to `DIR/soak.csv` with the load's counters so far. At the end it prints the
//! first, last and largest figure per role, stops `cocoon up` with SIGTERM and exits 1 if any
//! request of a kind that must succeed failed.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The model name the fake engine serves and `cocoon up` announces.
const MODEL: &str = "soak";

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn chunk(i: usize, last: bool, n: usize) -> String {
    let mut c = json!({"id": "s", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": format!(" w{i}")}, "finish_reason": null}]});
    if last {
        c["choices"][0]["finish_reason"] = "stop".into();
        c["usage"] = json!({"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n});
    }
    format!("data: {c}\n\n")
}

/// `n` chunks `gap` apart, the last with usage, then `[DONE]`.
fn stream(n: usize, gap: Duration) -> Response {
    let s = futures::stream::unfold(0usize, move |i| async move {
        if i > n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        let text = if i == n {
            "data: [DONE]\n\n".to_owned()
        } else {
            chunk(i, i + 1 == n, n)
        };
        Some((Ok::<_, std::io::Error>(text.into_bytes()), i + 1))
    });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(s),
    )
        .into_response()
}

async fn chat(axum::Json(body): axum::Json<Value>) -> Response {
    let long = body["messages"][0]["content"].as_str() == Some("long");
    if body["stream"] == true {
        if long {
            stream(400, Duration::from_millis(20))
        } else {
            stream(20, Duration::from_millis(10))
        }
    } else {
        axum::Json(json!({"id": "s", "object": "chat.completion", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "a whole answer"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11}}))
        .into_response()
    }
}

async fn fake_engine() -> std::io::Result<String> {
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route(
            "/v1/models",
            get(|| async {
                axum::Json(json!({"object": "list", "data": [{"id": MODEL, "object": "model"}]}))
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Ok(format!("http://{addr}"))
}

/// The load's counters: successes per kind and failures.
#[derive(Default)]
struct Counts {
    stream_ok: AtomicU64,
    whole_ok: AtomicU64,
    cancels: AtomicU64,
    disconnects: AtomicU64,
    topups_ok: AtomicU64,
    failed: AtomicU64,
    first_errors: std::sync::Mutex<Vec<String>>,
}

impl Counts {
    fn fail(&self, what: &str, e: impl std::fmt::Display) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_errors.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() < 20 {
            f.push(format!("{what}: {e}"));
        }
    }

    fn row(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "{},{},{},{},{},{}",
            g(&self.stream_ok),
            g(&self.whole_ok),
            g(&self.cancels),
            g(&self.disconnects),
            g(&self.topups_ok),
            g(&self.failed)
        )
    }
}

fn body(stream: bool, content: &str) -> Value {
    json!({"model": MODEL, "stream": stream, "max_tokens": 500,
        "messages": [{"role": "user", "content": content}]})
}

async fn one_stream(http: &reqwest::Client, api: &str) -> Result<(), String> {
    let mut r = http
        .post(format!("{api}/v1/chat/completions"))
        .json(&body(true, "short"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("status {}", r.status()));
    }
    let mut all = Vec::new();
    while let Some(c) = r.chunk().await.map_err(|e| e.to_string())? {
        all.extend_from_slice(&c);
    }
    let text = String::from_utf8_lossy(&all);
    if !text.trim_end().ends_with("data: [DONE]") || !text.contains(" w19") {
        return Err(format!(
            "stream ended without its last chunk ({} bytes)",
            all.len()
        ));
    }
    Ok(())
}

async fn one_whole(http: &reqwest::Client, api: &str) -> Result<(), String> {
    let r = http
        .post(format!("{api}/v1/chat/completions"))
        .json(&body(false, "short"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() || v["choices"][0]["message"]["content"] != "a whole answer" {
        return Err(format!("status {status}: {}", v["error"]["message"]));
    }
    Ok(())
}

/// A long stream dropped after three chunks.
async fn one_cancel(http: &reqwest::Client, api: &str) -> Result<(), String> {
    let mut r = http
        .post(format!("{api}/v1/chat/completions"))
        .json(&body(true, "long"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("status {}", r.status()));
    }
    for _ in 0..3 {
        if r.chunk().await.map_err(|e| e.to_string())?.is_none() {
            return Err("the long stream ended early".into());
        }
    }
    Ok(())
}

/// A raw connection that sends a streamed request and closes after `wait`, before or while
/// the answer comes.
async fn one_disconnect(port: u16, wait: Duration) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let b = body(true, "long").to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
        b.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(wait, s.read(&mut buf)).await;
    Ok(())
}

async fn top_up(http: &reqwest::Client, api: &str, token: &str) -> Result<(), String> {
    let r = http
        .post(format!("{api}/control/topup?amount=0.05"))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    if !status.is_success() {
        let t = r.text().await.unwrap_or_default();
        return Err(format!("status {status}: {t}"));
    }
    Ok(())
}

/// One role's figures at one moment.
#[derive(Clone, Copy, Default)]
struct Figures {
    rss_kb: u64,
    fds: u64,
    threads: u64,
    tasks: Option<u64>,
}

fn proc_figures(pid: u32) -> Option<Figures> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Figures {
        rss_kb: field("VmRSS:")?,
        threads: field("Threads:")?,
        fds,
        tasks: None,
    })
}

async fn tasks(http: &reqwest::Client, base: &str) -> Option<u64> {
    let t = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    t.lines()
        .find_map(|l| l.strip_prefix("cocoon_tasks "))
        .and_then(|v| v.trim().parse().ok())
}

fn roles(dir: &Path) -> Vec<(String, u32)> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (role, pid) = l.split_once(' ')?;
            Some((role.to_owned(), pid.trim().parse().ok()?))
        })
        .collect()
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `cocoon up` and waits for its ready line (stdout and stderr go to files in `out`).
fn start_up(cocoon: &Path, out: &Path, port: u16, backend: &str) -> Result<Child, String> {
    let model = format!("{MODEL}@v1:{}", "ab".repeat(32));
    let log =
        |name: &str| std::fs::File::create(out.join(name)).map_err(|e| format!("{}: {e}", name));
    let child = Command::new(cocoon)
        .args([
            "up",
            "--workers",
            "1",
            "--backend",
            backend,
            "--model",
            &model,
        ])
        .args(["--port", &port.to_string(), "--dir"])
        .arg(out.join("up"))
        .stdout(log("up.stdout")?)
        .stderr(log("up.stderr")?)
        .spawn()
        .map_err(|e| format!("{}: {e}", cocoon.display()))?;
    let end = Instant::now() + Duration::from_secs(600);
    while Instant::now() < end {
        let text = std::fs::read_to_string(out.join("up.stdout")).unwrap_or_default();
        if text.lines().any(|l| l == "cocoon up: ready") {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(Stop(child));
    Err("cocoon up was not ready within 600 s (see up.stderr)".into())
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let minutes: f64 = arg(&args, "--minutes", 60.0);
    let sample: u64 = arg(&args, "--sample", 10);
    let out = PathBuf::from(arg(&args, "--out", "soak-out".to_owned()));
    let cocoon = arg(&args, "--cocoon", String::new());
    let cocoon = if cocoon.is_empty() {
        std::env::current_exe()
            .map(|e| e.with_file_name("cocoon"))
            .unwrap_or_else(|_| PathBuf::from("cocoon"))
    } else {
        PathBuf::from(cocoon)
    };
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("cocoon-bench-soak: {}: {e}", out.display());
        std::process::exit(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cocoon-bench-soak: runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = rt.block_on(run(minutes, sample, &out, &cocoon));
    std::process::exit(code);
}

async fn run(minutes: f64, sample: u64, out: &Path, cocoon: &Path) -> i32 {
    let backend = match fake_engine().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cocoon-bench-soak: fake engine: {e}");
            return 2;
        }
    };
    let port = match free_port() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cocoon-bench-soak: no free port: {e}");
            return 2;
        }
    };
    let started = Instant::now();
    let up = {
        let (cocoon, out, backend) = (cocoon.to_owned(), out.to_owned(), backend.clone());
        tokio::task::spawn_blocking(move || start_up(&cocoon, &out, port, &backend)).await
    };
    let up = match up {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            eprintln!("cocoon-bench-soak: {e}");
            return 2;
        }
        Err(e) => {
            eprintln!("cocoon-bench-soak: {e}");
            return 2;
        }
    };
    println!(
        "cocoon-bench-soak {}: cocoon up ready on port {port} in {:.1} s; {minutes} min of load, a sample every {sample} s into {}",
        env!("CARGO_PKG_VERSION"),
        started.elapsed().as_secs_f64(),
        out.join("soak.csv").display()
    );
    let up = Stop(up);
    let code = soak(minutes, sample, out, port).await;
    drop(up);
    code
}

/// `cocoon up`, stopped with SIGTERM when dropped (also when the soak panics), killed if it
/// has not exited 120 s later.
struct Stop(Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            match self.0.try_wait() {
                Ok(Some(s)) => {
                    println!("cocoon up stopped: {s}");
                    return;
                }
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(200)),
                _ => {
                    let _ = self.0.kill();
                    println!("cocoon up did not stop within 120 s of SIGTERM: killed");
                    return;
                }
            }
        }
    }
}

async fn soak(minutes: f64, sample: u64, out: &Path, port: u16) -> i32 {
    let dir = out.join("up");
    let api = format!("http://127.0.0.1:{port}");
    let saved: Value = std::fs::read_to_string(dir.join("up.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let mut admins: BTreeMap<String, String> = BTreeMap::new();
    admins.insert("client".into(), api.clone());
    if let Some(p) = saved["proxy_admin_port"].as_u64() {
        admins.insert("proxy".into(), format!("http://127.0.0.1:{p}"));
    }
    for (i, p) in saved["worker_admin_ports"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(p) = p.as_u64() {
            admins.insert(format!("worker-{}", i + 1), format!("http://127.0.0.1:{p}"));
        }
    }
    let token = std::fs::read_to_string(dir.join("client").join("admin-token"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("cocoon-bench-soak: http client: {e}");
            return 2;
        }
    };
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let mut loops = Vec::new();
    let pause = Duration::from_millis(100);
    // Two streaming loops, one of whole answers, one of cancels, one of disconnects.
    for kind in 0..5u8 {
        let (http, api, counts, stop) = (http.clone(), api.clone(), counts.clone(), stop.clone());
        loops.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match kind {
                    0 | 1 => match one_stream(&http, &api).await {
                        Ok(()) => _ = counts.stream_ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => counts.fail("stream", e),
                    },
                    2 => match one_whole(&http, &api).await {
                        Ok(()) => _ = counts.whole_ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => counts.fail("whole", e),
                    },
                    3 => match one_cancel(&http, &api).await {
                        Ok(()) => _ = counts.cancels.fetch_add(1, Ordering::Relaxed),
                        Err(e) => counts.fail("cancel", e),
                    },
                    _ => match one_disconnect(port, Duration::from_millis(n % 7 * 25)).await {
                        Ok(()) => _ = counts.disconnects.fetch_add(1, Ordering::Relaxed),
                        Err(e) => counts.fail("disconnect", e),
                    },
                }
                tokio::time::sleep(pause).await;
            }
        }));
    }
    {
        let (http, api, counts, stop) = (http.clone(), api.clone(), counts.clone(), stop.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match top_up(&http, &api, &token).await {
                    Ok(()) => _ = counts.topups_ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => counts.fail("topup", e),
                }
                for _ in 0..600 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    let csv_path = out.join("soak.csv");
    let mut csv = match std::fs::File::create(&csv_path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cocoon-bench-soak: {}: {e}", csv_path.display());
            return 2;
        }
    };
    let _ = writeln!(
        csv,
        "t_s,role,pid,rss_kb,fds,threads,tasks,stream_ok,whole_ok,cancels,disconnects,topups_ok,failed"
    );
    let t0 = Instant::now();
    let mut seen: BTreeMap<String, Vec<(u32, Figures)>> = BTreeMap::new();
    loop {
        let t = t0.elapsed().as_secs();
        for (role, pid) in roles(&dir) {
            let Some(mut f) = proc_figures(pid) else {
                continue;
            };
            if let Some(base) = admins.get(&role) {
                f.tasks = tasks(&http, base).await;
            }
            let tasks_s = f.tasks.map(|t| t.to_string()).unwrap_or_default();
            let _ = writeln!(
                csv,
                "{t},{role},{pid},{},{},{},{tasks_s},{}",
                f.rss_kb,
                f.fds,
                f.threads,
                counts.row()
            );
            seen.entry(role).or_default().push((pid, f));
        }
        let _ = csv.flush();
        if Instant::now() >= deadline {
            break;
        }
        let next = t0 + Duration::from_secs((t / sample + 1) * sample);
        tokio::time::sleep_until(next.min(deadline).into()).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        let _ = tokio::time::timeout(Duration::from_secs(70), l).await;
    }
    report(&seen, &counts, t0.elapsed())
}

fn report(seen: &BTreeMap<String, Vec<(u32, Figures)>>, counts: &Counts, took: Duration) -> i32 {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "load over {:.1} min: {} streams, {} whole answers, {} cancels, {} disconnects, {} top-ups; {} failed",
        took.as_secs_f64() / 60.0,
        g(&counts.stream_ok),
        g(&counts.whole_ok),
        g(&counts.cancels),
        g(&counts.disconnects),
        g(&counts.topups_ok),
        g(&counts.failed)
    );
    for e in counts
        .first_errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        println!("  failure: {e}");
    }
    println!(
        "{:<10} {:>8} {:>26} {:>14} {:>14} {:>14}",
        "role", "samples", "RSS KiB first/last/max", "fds f/l/max", "threads", "tasks"
    );
    for (role, v) in seen {
        let pids: std::collections::BTreeSet<u32> = v.iter().map(|(p, _)| *p).collect();
        let col = |f: &dyn Fn(&Figures) -> Option<u64>| {
            let xs: Vec<u64> = v.iter().filter_map(|(_, x)| f(x)).collect();
            match (xs.first(), xs.last(), xs.iter().max()) {
                (Some(a), Some(b), Some(m)) => format!("{a}/{b}/{m}"),
                _ => "-".to_owned(),
            }
        };
        println!(
            "{:<10} {:>8} {:>26} {:>14} {:>14} {:>14}{}",
            role,
            v.len(),
            col(&|f| Some(f.rss_kb)),
            col(&|f| Some(f.fds)),
            col(&|f| Some(f.threads)),
            col(&|f| f.tasks),
            if pids.len() > 1 {
                format!("  ({} processes: restarted)", pids.len())
            } else {
                String::new()
            }
        );
    }
    i32::from(g(&counts.failed) > 0)
}
