//! `cocoon-bench-proxy`: what the proxy adds, measured on the benchmark workload.
//!
//! ```sh
//! cargo run --release -p cocoon-bench-proxy -- [--streams 30] [--requests 3000] \
//!     [--idle-workers 1000] [--open-streams 10000]
//! ```
//!
//! A fake engine streams 50 SSE chunks of 128 bytes (then the usage and `[DONE]`). The same
//! workload (30 concurrent streams, many requests) runs
//! (a) straight against the engine over HTTP, and
//! (b) through a client session → the proxy (its own process, SQLite ledger, every request
//!     settled durably) → a `cocoon-worker` → the engine;
//! the difference in time to first chunk and to the end is what the proxy and the worker
//! add. Then memory: the proxy's resident set (read from `/proc/<pid>/status`) before and
//! after 1,000 idle worker connections, and with 10,000 concurrent streams open.
//!
//! The proxy runs as `cocoon-bench-proxy node DIR` (a child process) so that its memory is
//! its own; it prints its worker and client ports and serves until killed.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cocoon_bench_proxy::{
    CHUNK_BYTES, CHUNKS, CLIENTS, Client, Node, arg, direct, fake_engine, pct, print_lat,
    spawn_engine, start_worker, through,
};

fn main() {
    cocoon_bench_proxy::init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if cocoon_bench_proxy::child_main(&args) {
        return;
    }
    println!(
        "cocoon-bench-proxy {} ({} cpus)",
        env!("CARGO_PKG_VERSION"),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    run(&args);
}

fn run(args: &[String]) {
    let streams: usize = arg(args, "--streams", 30);
    let requests: usize = arg(args, "--requests", 3000);
    let idle: usize = arg(args, "--idle-workers", 1000);
    let open: usize = arg(args, "--open-streams", 10_000);
    let tmp = std::env::temp_dir().join(format!("cocoon-bench-proxy-{}", std::process::id()));
    let rt = cocoon_bench_proxy::runtime();
    rt.block_on(async {
        println!(
            "proxy (fake engine: {CHUNKS} chunks x {CHUNK_BYTES} B per answer; {streams} concurrent streams; {requests} requests each way)"
        );
        let fast = fake_engine(Duration::ZERO).await;
        let mut node = Node::start(tmp.join("node1"));
        let w = start_worker(&node.worker_addr, &fast, 64, &tmp.join("w0")).await;
        cocoon_bench_proxy::wait_ready(&w).await;
        let clients: Vec<Arc<Client>> = {
            let mut v = Vec::new();
            for i in 0..4u8 {
                v.push(Arc::new(Client::connect(&node.client_addr, i).await));
            }
            v
        };
        // Warm both paths.
        let _ = direct(&fast, streams, 200).await;
        let _ = through(&clients, streams, 200).await;
        let (mut d, dw) = direct(&fast, streams, requests).await;
        print_lat("direct to the engine", &mut d, dw);
        let (mut p, pw) = through(&clients, streams, requests).await;
        print_lat("client→proxy→worker→engine", &mut p, pw);
        println!(
            "  added by proxy + worker: first chunk p50 {:+.2} ms p99 {:+.2} ms, whole answer p50 {:+.2} ms p99 {:+.2} ms",
            pct(&mut p.ttfb, 0.5) - pct(&mut d.ttfb, 0.5),
            pct(&mut p.ttfb, 0.99) - pct(&mut d.ttfb, 0.99),
            pct(&mut p.total, 0.5) - pct(&mut d.total, 0.5),
            pct(&mut p.total, 0.99) - pct(&mut d.total, 0.99),
        );
        if let Some(e) = w.stats().proxies.iter().find_map(|p| p.last_error.clone()) {
            println!("    worker's last session error: {e}");
        }
        println!("  proxy RSS after the run: {} KiB", node.rss_kib());
        w.shutdown().await;
        drop(clients);
        drop(node);

        // Memory: idle worker connections.
        let mut node = Node::start(tmp.join("node2"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let base = node.rss_kib();
        let mut workers = Vec::new();
        for i in 0..idle {
            workers.push(start_worker(&node.worker_addr, &fast, 4, &tmp.join(format!("i{i}"))).await);
        }
        let t0 = Instant::now();
        loop {
            let up = workers
                .iter()
                .filter(|w| w.stats().proxies.iter().any(|p| p.state == cocoon_worker::ConnState::Ready))
                .count();
            if up == idle || t0.elapsed() > Duration::from_secs(120) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let with = node.rss_kib();
        println!(
            "  {idle} idle worker connections: proxy RSS {base} → {with} KiB, {:.1} KiB per connection",
            (with.saturating_sub(base)) as f64 / idle as f64
        );
        for w in workers {
            w.shutdown().await;
        }
        drop(node);

        // Memory: many concurrent streams (slow engine: 50 chunks over ~25 s).
        let (_engine, slow) = spawn_engine(500);
        let mut node = Node::start(tmp.join("node3"));
        let per_worker = 250u32;
        let n_workers = open.div_ceil(per_worker as usize);
        let mut workers = Vec::new();
        for i in 0..n_workers {
            workers.push(start_worker(&node.worker_addr, &slow, per_worker, &tmp.join(format!("s{i}"))).await);
        }
        while workers
            .iter()
            .any(|w| w.stats().proxies.iter().all(|p| p.state != cocoon_worker::ConnState::Ready))
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let clients: Vec<Arc<Client>> = {
            let mut v = Vec::new();
            for i in 0..(open.div_ceil(100)).min(CLIENTS as usize) as u8 {
                v.push(Arc::new(Client::connect(&node.client_addr, i).await));
            }
            v
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let base = node.rss_kib();
        let started = Arc::new(AtomicU64::new(0));
        for i in 0..open {
            let c = clients[i % clients.len()].clone();
            let s = started.clone();
            tokio::spawn(async move {
                s.fetch_add(1, Ordering::Relaxed);
                let _ = c.request(120.0).await;
            });
        }
        // Wait until the streams are running (first chunks flow), then sample.
        tokio::time::sleep(Duration::from_secs(8)).await;
        let running: u64 = workers.iter().map(|w| w.stats().active_requests as u64).sum();
        let with = node.rss_kib();
        println!(
            "  {running} concurrent streams (of {open} sent): proxy RSS {base} → {with} KiB, {:.1} KiB per stream",
            (with.saturating_sub(base)) as f64 / running.max(1) as f64
        );
        drop(node);
    });
    let _ = std::fs::remove_dir_all(&tmp);
}
