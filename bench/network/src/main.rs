//! `cocoon-bench-network`: the benchmark workload over three paths in one run.
//!
//! ```sh
//! bench/network/setup-litellm          # once, for path (c): target/litellm-venv
//! cargo run --release -p cocoon-bench-network -- [--streams 30] [--requests 3000] \
//!     [--warmup 200] [--single 200] [--rounds 5] [--litellm-venv DIR] [--litellm-workers CPUS] \
//!     [--serve]
//! ```
//!
//! A fake OpenAI engine streams 50 SSE chunks of 128 bytes (then the usage and `[DONE]`).
//! 30 concurrent clients send streamed chat completions (`"stream": true`), `--requests` per
//! path; the paths take turns, `--rounds` rounds of `--requests`/rounds each (so that a change
//! in a shared machine's load falls on all paths alike):
//! (a) straight to the engine over HTTP;
//! (b) over HTTP to a `cocoon-client` gateway (its own process) → the proxy (its own
//!     process, SQLite ledger) → a `cocoon-worker` (its own process) → the same engine;
//! (c) over HTTP to LiteLLM's proxy (its own processes: one uvicorn worker per CPU unless
//!     `--litellm-workers`; one model `openai/Bench` whose `api_base` is the engine), if its
//!     venv exists; otherwise it says how to make one and skips (c).
//! In each round, after its concurrent requests, a path gets its share of `--single`
//! requests one at a time (latency without queueing). Each
//! answer's content chunks are counted; fewer than 50, or no `[DONE]`, is an error.
//! Printed per path: requests/s, time to the first content chunk and to the end of the
//! answer (p50, p99), errors; then what (b) and (c) add over (a), and each process's CPU time
//! and resident set.
//!
//! `--serve` starts the three paths, prints their URLs and waits (for other load tools or
//! curl) instead of measuring.
//!
//! The child roles are this executable: `node DIR` (the proxy, from `cocoon-bench-proxy`),
//! `gateway PROXY` (the client gateway) and `worker PROXY ENGINE DIR`; each prints its
//! address (the worker: `ready`) and serves until killed.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cocoon_bench_proxy::{
    CHUNK_BYTES, CHUNKS, Kid, Lat, Node, SECRET, arg, connector, fake_engine, http_streams, owner,
    pct, root, spawn_self, start_worker, wait_ready,
};
use cocoon_client::{Client, ClientConfig};
use cocoon_ton::HashBytes;

const LITELLM_SETUP: &str = "bench/network/setup-litellm";

fn main() {
    cocoon_bench_proxy::init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if cocoon_bench_proxy::child_main(&args) {
        return;
    }
    if args.first().map(String::as_str) == Some("gateway") {
        gateway(args.get(1).expect("gateway PROXY_CLIENT_ADDR"));
        return;
    }
    if args.first().map(String::as_str) == Some("worker") {
        worker(
            args.get(1).expect("worker PROXY_WORKER_ADDR ENGINE DIR"),
            args.get(2).expect("worker PROXY_WORKER_ADDR ENGINE DIR"),
            Path::new(args.get(3).expect("worker PROXY_WORKER_ADDR ENGINE DIR")),
        );
        return;
    }
    run(&args);
}

// ------------------------------------------------------------------ the gateway (child)

/// `gateway PROXY`: a `cocoon-client` gateway with its HTTP API on a free loopback port,
/// one session with the proxy's client port PROXY (sim attestation, short authorisation as
/// a client the proxy node funded); prints `url http://...` once ready, serves until killed.
fn gateway(proxy: &str) {
    cocoon_bench_proxy::exit_with_parent();
    let rt = cocoon_bench_proxy::runtime();
    rt.block_on(async {
        let mut root = root();
        root.proxy_hashes = vec![HashBytes(cocoon_attest::sim::sim_image_hash())];
        let cfg = ClientConfig {
            api_listen: Some("127.0.0.1:0".parse().expect("addr")),
            proxies: vec![proxy.to_owned()],
            connections: 1,
            is_test: true,
            ..ClientConfig::new(root, owner(0), SECRET.to_vec(), connector())
        };
        let c = Client::start(cfg).await.expect("gateway");
        assert!(
            c.wait_ready(Duration::from_secs(60)).await,
            "gateway: proxy not ready: {:?}",
            c.proxies()
        );
        println!("url http://{}", c.api_addr().expect("api addr"));
        std::future::pending::<()>().await;
    });
}

// ------------------------------------------------------------------ the worker (child)

/// `worker PROXY ENGINE DIR`: a `cocoon-worker` (HTTP engine backend at ENGINE, state in
/// DIR) connected to the proxy's worker port PROXY; prints `ready` once its session is
/// ready, serves until killed. Its own process, so that its CPU time is its own.
fn worker(proxy: &str, engine: &str, dir: &Path) {
    cocoon_bench_proxy::exit_with_parent();
    let rt = cocoon_bench_proxy::runtime();
    rt.block_on(async {
        let w = start_worker(proxy, engine, 64, dir).await;
        wait_ready(&w).await;
        println!("ready");
        std::future::pending::<()>().await;
    });
}

// ------------------------------------------------------------------ LiteLLM (child)

fn litellm_version(venv: &Path) -> Option<String> {
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// LiteLLM's proxy (`workers` uvicorn worker processes) with one model, `Bench` →
/// `openai/Bench` at `engine`, on a free port, once `/health/liveliness` answers. Its output
/// goes to `dir/litellm.log`.
async fn start_litellm(
    venv: &Path,
    version: String,
    workers: usize,
    engine: &str,
    dir: &Path,
) -> Result<LiteLlm, String> {
    let config = dir.join("litellm.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: Bench\n    litellm_params:\n      model: openai/Bench\n      api_base: {engine}/v1\n      api_key: none\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let log_path = dir.join("litellm.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let port = free_port();
    let child = Command::new(venv.join("bin/litellm"))
        .arg("--config")
        .arg(&config)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--num_workers", &workers.to_string()])
        // uvicorn (0.3x on) kills a worker that does not answer its parent's health check
        // within 5 s, and importing LiteLLM's proxy takes longer than that on a busy
        // machine: every worker died and was restarted until the start timed out.
        .args(["--timeout_worker_healthcheck", "180"])
        .args(["--telemetry", "False"])
        // The bundled model cost map, not one fetched from GitHub at start.
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_LOG", "ERROR")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", venv.join("bin/litellm").display()))?;
    let mut l = LiteLlm {
        kid: Kid(child),
        url: format!("http://127.0.0.1:{port}"),
        version,
    };
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    loop {
        if let Ok(Some(status)) = l.kid.0.try_wait() {
            return Err(format!(
                "LiteLLM exited ({status}); its log:\n{}",
                tail(&log_path)
            ));
        }
        if http
            .get(format!("{}/health/liveliness", l.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(l);
        }
        if t0.elapsed() > Duration::from_secs(180) {
            return Err(format!(
                "LiteLLM not up after 180 s; its log:\n{}",
                tail(&log_path)
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

// ------------------------------------------------------------------ processes

/// `pid` and its descendants (from the parent ids in `/proc/*/stat`).
fn tree(pid: u32) -> Vec<u32> {
    let mut parent = Vec::new();
    if let Ok(d) = std::fs::read_dir("/proc") {
        for e in d.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let s = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let pp = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
            if let Some(pp) = pp {
                parent.push((p, pp));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parent.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out
}

/// CPU seconds and resident set (KiB) of a process, with its descendants if `children`.
fn usage(pid: u32, children: bool) -> (f64, u64) {
    let pids = if children { tree(pid) } else { vec![pid] };
    pids.into_iter().fold((0.0, 0), |(c, r), p| {
        (
            c + cocoon_bench_proxy::cpu_secs(p),
            r + cocoon_bench_proxy::rss_kib(p),
        )
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ------------------------------------------------------------------ the run

/// What one path measured, summed over the rounds.
struct Measured {
    name: &'static str,
    url: String,
    /// The processes whose CPU time is sampled during the concurrent runs.
    procs: Vec<Proc>,
    /// The concurrent runs: latencies and wall time, s.
    lat: Lat,
    wall: f64,
    /// CPU seconds of each watched process during the concurrent runs.
    cpu: Vec<(&'static str, f64)>,
    /// The same one request at a time: latencies and wall time, s.
    single: Lat,
    single_wall: f64,
}

/// A process to watch: its label, its id, and whether its descendants count.
type Proc = (&'static str, u32, bool);

/// Sizes of the runs.
#[derive(Clone, Copy)]
struct Plan {
    streams: usize,
    warmup: usize,
    requests: usize,
    single: usize,
    rounds: usize,
}

fn merge(into: &mut Lat, l: Lat) {
    into.ttfb.extend(l.ttfb);
    into.total.extend(l.total);
    into.errors += l.errors;
    if into.first_error.is_none() {
        into.first_error = l.first_error;
    }
}

impl Measured {
    fn new(name: &'static str, url: String, procs: Vec<Proc>) -> Measured {
        Measured {
            name,
            url,
            cpu: procs.iter().map(|&(n, _, _)| (n, 0.0)).collect(),
            procs,
            lat: Lat::default(),
            wall: 0.0,
            single: Lat::default(),
            single_wall: 0.0,
        }
    }

    /// One round: `n` requests from `streams` concurrent clients (sampling the CPU time of
    /// the watched processes), then `single` one at a time.
    async fn round(&mut self, streams: usize, n: usize, single: usize) {
        let before: Vec<f64> = self.procs.iter().map(|&(_, p, c)| usage(p, c).0).collect();
        let (lat, wall) = http_streams(&self.url, streams, n).await;
        for ((&(_, p, c), b), acc) in self.procs.iter().zip(before).zip(self.cpu.iter_mut()) {
            acc.1 += usage(p, c).0 - b;
        }
        merge(&mut self.lat, lat);
        self.wall += wall;
        if single > 0 {
            let (lat, wall) = http_streams(&self.url, 1, single).await;
            merge(&mut self.single, lat);
            self.single_wall += wall;
        }
    }
}

/// The table of `rows` (name, latencies, wall time), then what each row after the first
/// adds over the first at the same percentile.
fn print_table(title: &str, rows: &mut [(&str, &mut Lat, f64)]) {
    println!();
    println!("{title}");
    println!(
        "  {:<26} {:>7} {:>11} {:>11} {:>11} {:>11} {:>6}",
        "path", "req/s", "first p50", "first p99", "whole p50", "whole p99", "errors"
    );
    for (name, l, wall) in rows.iter_mut() {
        println!(
            "  {:<26} {:>7.0} {:>8.2} ms {:>8.2} ms {:>8.2} ms {:>8.2} ms {:>6}",
            name,
            l.total.len() as f64 / *wall,
            pct(&mut l.ttfb, 0.5),
            pct(&mut l.ttfb, 0.99),
            pct(&mut l.total, 0.5),
            pct(&mut l.total, 0.99),
            l.errors,
        );
    }
    for (name, l, _) in rows.iter() {
        if let Some(e) = &l.first_error {
            println!("    {name}: first error: {e}");
        }
    }
    let Some(((_, base, _), rest)) = rows.split_first_mut() else {
        return;
    };
    println!("  added over (a) at the same percentile:");
    for (name, l, _) in rest {
        println!(
            "  {:<26} first chunk p50 {:+8.2} ms p99 {:+8.2} ms   whole answer p50 {:+8.2} ms p99 {:+8.2} ms",
            name,
            pct(&mut l.ttfb, 0.5) - pct(&mut base.ttfb, 0.5),
            pct(&mut l.ttfb, 0.99) - pct(&mut base.ttfb, 0.99),
            pct(&mut l.total, 0.5) - pct(&mut base.total, 0.5),
            pct(&mut l.total, 0.99) - pct(&mut base.total, 0.99),
        );
    }
}

/// LiteLLM's processes, killed with their descendants when dropped (its uvicorn workers
/// would outlive a killed parent).
struct LiteLlm {
    kid: Kid,
    url: String,
    version: String,
}

impl Drop for LiteLlm {
    fn drop(&mut self) {
        let pids: Vec<String> = tree(self.kid.0.id()).iter().map(u32::to_string).collect();
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
    }
}

fn run(args: &[String]) {
    // The load generator's reqwest clients need rustls' process-wide provider (the worker,
    // which installed it when it ran in this process, now runs in its own).
    let _ =
        rustls::crypto::CryptoProvider::install_default(rustls::crypto::ring::default_provider());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let plan = Plan {
        streams: arg(args, "--streams", 30),
        requests: arg(args, "--requests", 3000),
        warmup: arg(args, "--warmup", 200),
        single: arg(args, "--single", 200),
        rounds: arg(args, "--rounds", 5usize).max(1),
    };
    let litellm_workers: usize = arg(args, "--litellm-workers", cpus);
    let venv: PathBuf = arg(
        args,
        "--litellm-venv",
        std::env::var_os("LITELLM_VENV").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/litellm-venv"),
            PathBuf::from,
        ),
    );
    let tmp = std::env::temp_dir().join(format!("cocoon-bench-network-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp dir");
    println!(
        "cocoon-bench-network {} ({cpus} cpus; load average {} at the start)",
        env!("CARGO_PKG_VERSION"),
        loadavg(),
    );
    println!(
        "workload: a fake engine streams {CHUNKS} chunks x {CHUNK_BYTES} B (+ usage, [DONE]) per answer; streamed chat completions, {} concurrent, {} per path after {} to warm up, and {} one at a time; the paths take turns in {} rounds",
        plan.streams, plan.requests, plan.warmup, plan.single, plan.rounds
    );
    let rt = cocoon_bench_proxy::runtime();
    let me = std::process::id();
    rt.block_on(async {
        let engine = fake_engine(Duration::ZERO).await;
        let node = Node::start(tmp.join("node"));
        let worker_dir = tmp.join("worker");
        let (wk, line) = spawn_self(&[
            "worker",
            &node.worker_addr,
            &engine,
            &worker_dir.display().to_string(),
        ]);
        let wk = Kid(wk);
        assert_eq!(line.trim(), "ready", "worker did not start: {line:?}");
        let (gw, line) = spawn_self(&["gateway", &node.client_addr]);
        let gw = Kid(gw);
        let gateway = line
            .trim()
            .strip_prefix("url ")
            .unwrap_or_else(|| panic!("gateway did not start: {line:?}"))
            .to_owned();
        let litellm = match litellm_version(&venv) {
            None => {
                println!(
                    "(c) skipped: no LiteLLM in {} (create it with `{LITELLM_SETUP}`, or pass --litellm-venv DIR)",
                    venv.display()
                );
                None
            }
            Some(version) => {
                match start_litellm(&venv, version.clone(), litellm_workers, &engine, &tmp).await
                {
                    Ok(l) => Some(l),
                    Err(e) => {
                        println!("(c) skipped: LiteLLM {version} did not start: {e}");
                        None
                    }
                }
            }
        };

        if args.iter().any(|a| a == "--serve") {
            println!("serving until interrupted (Ctrl-C):");
            println!("  (a) {engine}/v1/chat/completions");
            println!("  (b) {gateway}/v1/chat/completions");
            if let Some(l) = &litellm {
                println!("  (c) {}/v1/chat/completions", l.url);
            }
            println!("  model \"Bench\"; body e.g. {}", String::from_utf8_lossy(&cocoon_bench_proxy::chat_body()));
            std::future::pending::<()>().await;
        }

        let mut paths = vec![
            Measured::new(
                "(a) direct to the engine",
                format!("{engine}/v1/chat/completions"),
                vec![("bench", me, false)],
            ),
            Measured::new(
                "(b) gateway→proxy→worker",
                format!("{gateway}/v1/chat/completions"),
                vec![
                    ("bench", me, false),
                    ("gateway", gw.0.id(), false),
                    ("proxy", node.kid.0.id(), false),
                    ("worker", wk.0.id(), false),
                ],
            ),
        ];
        if let Some(l) = &litellm {
            paths.push(Measured::new(
                "(c) LiteLLM proxy",
                format!("{}/v1/chat/completions", l.url),
                vec![("bench", me, false), ("LiteLLM", l.kid.0.id(), true)],
            ));
        }
        for p in &paths {
            if plan.warmup > 0 {
                let _ = http_streams(&p.url, plan.streams, plan.warmup).await;
            }
        }
        // The paths take turns, round after round, so that a change in the machine's load
        // (other work on the shared cores) falls on all of them alike.
        for r in 0..plan.rounds {
            let n = plan.requests / plan.rounds + usize::from(r < plan.requests % plan.rounds);
            let s = plan.single / plan.rounds + usize::from(r < plan.single % plan.rounds);
            for p in paths.iter_mut() {
                p.round(plan.streams, n, s).await;
            }
        }

        let mut rows: Vec<(&str, &mut Lat, f64)> = paths
            .iter_mut()
            .map(|p| (p.name, &mut p.lat, p.wall))
            .collect();
        print_table(
            &format!("{} concurrent streams, {} requests:", plan.streams, plan.requests),
            &mut rows,
        );
        if plan.single > 0 {
            let mut rows: Vec<(&str, &mut Lat, f64)> = paths
                .iter_mut()
                .map(|p| (p.name, &mut p.single, p.single_wall))
                .collect();
            print_table(
                &format!("one request at a time, {} requests:", plan.single),
                &mut rows,
            );
        }
        println!();
        println!(
            "CPU time per request during the concurrent runs, ms (bench = load generator + engine; the worker in its own process):"
        );
        for p in &paths {
            let parts: Vec<String> = p
                .cpu
                .iter()
                .map(|(n, s)| format!("{n} {:.2}", s * 1e3 / plan.requests as f64))
                .collect();
            println!("  {:<26} {}", p.name, parts.join(", "));
        }
        let mut rss = vec![
            ("bench", usage(me, false).1),
            ("gateway", usage(gw.0.id(), false).1),
            ("proxy", usage(node.kid.0.id(), false).1),
            ("worker", usage(wk.0.id(), false).1),
        ];
        if let Some(l) = &litellm {
            rss.push(("LiteLLM", usage(l.kid.0.id(), true).1));
            println!(
                "resident sets after the run, MiB (LiteLLM {}: {litellm_workers} uvicorn workers and their parent):",
                l.version
            );
        } else {
            println!("resident sets after the run, MiB:");
        }
        let parts: Vec<String> = rss
            .iter()
            .map(|(n, k)| format!("{n} {:.1}", *k as f64 / 1024.0))
            .collect();
        println!("  {}", parts.join(", "));
        println!("load average {} at the end", loadavg());
        drop(litellm);
        drop(wk);
        drop(gw);
        drop(node);
    });
    let _ = std::fs::remove_dir_all(&tmp);
}
