//! `cocoon-bench-proxy`: what the proxy adds, measured on COCOON's benchmark shape.
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

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cocoon_attest::{Policy, SimKey};
use cocoon_engine::{BackendKind, HttpEngine, HttpEngineConfig};
use cocoon_net::Incoming;
use cocoon_openai::{Multipliers, PriceTable};
use cocoon_proxy::{
    ClientContractState, LedgerMeter, MemoryChain, Proxy, ProxyConfig, RouterConfig, Timings,
};
use cocoon_ratls::cert::{Identity, SimSource};
use cocoon_ratls::config::CertResolver;
use cocoon_ratls::net::RatlsConnector;
use cocoon_ratls::verifier::{RatlsVerifier, VerifierConfig};
use cocoon_tl::functions::{client as fclient, http as fhttp};
use cocoon_tl::types::{client as tclient, http as thttp};
use cocoon_tl::{Identifiable, TlRead, TlWrite, enums, peek_constructor};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::root::{CocoonParams, RootConfig, model_hash};
use cocoon_ton::{HashBytes, StdAddr};
use tokio::sync::{mpsc, oneshot};

const MODEL: &str = "Bench@r1:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const SECRET: &[u8] = b"bench client secret";
const PROXY_SEED: [u8; 32] = [9; 32];
const CHUNKS: usize = 50;
const CHUNK_BYTES: usize = 128;
/// Client owners the proxy node funds.
const CLIENTS: u8 = 200;

fn addr(n: u8) -> StdAddr {
    StdAddr::new(0, HashBytes([n; 32]))
}

fn owner(i: u8) -> StdAddr {
    let mut h = [0xC1; 32];
    h[0] = i;
    StdAddr::new(0, HashBytes(h))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn code(name: &str) -> cocoon_ton::Cell {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../contracts/build")
        .join(format!("{name}.code.boc"));
    cocoon_ton::codec::decode_boc(&std::fs::read(&p).expect("contract code")).expect("boc")
}

fn root() -> RootConfig {
    RootConfig {
        owner: addr(1),
        version: 1,
        proxy_hashes: vec![],
        registered_proxies: vec![],
        last_proxy_seqno: 0,
        worker_hashes: vec![HashBytes(cocoon_attest::sim::sim_image_hash())],
        model_hashes: vec![model_hash(MODEL)],
        params: CocoonParams {
            is_test: true,
            price_per_token: 20,
            worker_fee_per_token: 10,
            proxy_code: Some(code("proxy")),
            worker_code: Some(code("worker")),
            client_code: Some(code("client")),
            ..CocoonParams::default()
        },
    }
}

fn sim_resolver() -> Arc<CertResolver> {
    let id = Identity::generate(&SimSource(SimKey::generate().expect("sim key")), now() - 60)
        .expect("cert");
    CertResolver::new(&id).expect("resolver")
}

fn verifier() -> Arc<RatlsVerifier> {
    RatlsVerifier::new(VerifierConfig::new(Policy::sim_test()))
}

fn connector() -> RatlsConnector {
    RatlsConnector::new(
        sim_resolver(),
        verifier(),
        16,
        cocoon_net::Config::default(),
    )
    .expect("connector")
}

// ------------------------------------------------------------------ the proxy node (child)

/// `cocoon-bench-proxy node DIR`: the proxy on a SQLite ledger in DIR, clients funded in
/// memory; prints `ports <worker> <client>` and serves until killed.
fn node(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let root = root();
        let key = Arc::new(SigningKey::from_seed(&PROXY_SEED).expect("key"));
        let chain = Arc::new(MemoryChain::new());
        let store = cocoon_ledger::SqliteStore::open(&dir.join("ledger.sqlite")).expect("db");
        let meter = LedgerMeter::open_for_root(store, key.clone(), addr(3), &root, &*chain)
            .await
            .expect("ledger");
        let proxy_sc = addr(0x11);
        let hash = {
            use sha2::Digest;
            let d = sha2::Sha256::digest(SECRET);
            let mut h = [0u8; 32];
            h.copy_from_slice(&d);
            h
        };
        for i in 0..CLIENTS {
            let sc = cocoon_ton::contracts::client_contract(
                &root.params,
                &owner(i),
                &proxy_sc,
                &HashBytes(key.public_key()),
            )
            .expect("client contract")
            .address;
            chain.set_client(
                sc,
                ClientContractState {
                    secret_hash: Some(hash),
                    balance: 1 << 60,
                    stake: 1 << 60,
                    tokens_used: 0,
                    closing: false,
                },
            );
        }
        let cfg = ProxyConfig {
            worker_listen: "127.0.0.1:0".parse().expect("addr"),
            client_listen: "127.0.0.1:0".parse().expect("addr"),
            certs: sim_resolver(),
            worker_verifier: verifier(),
            client_verifier: verifier(),
            pow_difficulty: 0,
            is_test: true,
            root,
            signing_key: key,
            owner_address: addr(3),
            proxy_sc,
            meter,
            chain,
            admin: None,
            router: RouterConfig {
                probe_rate: 0.0,
                ..RouterConfig::default()
            },
            timings: Timings {
                max_handshakes: 256,
                ..Timings::default()
            },
            net: cocoon_net::Config::default(),
        };
        let h = Proxy::start(cfg).await.expect("proxy");
        println!("ports {} {}", h.worker_addr(), h.client_addr());
        std::future::pending::<()>().await;
    });
}

/// Runs this binary with `args`; returns the child and the first line it printed. Its
/// stdout stays open (read in the background) so that it never writes into a closed pipe.
fn spawn_self(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let mut r = std::io::BufReader::new(out);
    let mut line = String::new();
    r.read_line(&mut line).expect("first line");
    std::thread::spawn(move || {
        let mut sink = String::new();
        while r.read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    (child, line)
}

/// A child process killed when dropped.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Node {
    child: Child,
    worker_addr: String,
    client_addr: String,
    _dir: PathBuf,
}

impl Node {
    fn start(dir: PathBuf) -> Node {
        std::fs::create_dir_all(&dir).expect("dir");
        let (child, line) = spawn_self(&["node", &dir.display().to_string()]);
        let mut it = line.split_whitespace().skip(1);
        let worker_addr = it.next().expect("worker port").to_owned();
        let client_addr = it.next().expect("client port").to_owned();
        Node {
            child,
            worker_addr,
            client_addr,
            _dir: dir,
        }
    }

    /// Resident set of the proxy process, KiB; panics if the proxy died.
    fn rss_kib(&mut self) -> u64 {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the proxy process died: {status}");
        }
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ fake engine

/// One SSE chunk of exactly `CHUNK_BYTES` bytes.
fn chunk(i: usize) -> String {
    let head = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"";
    let tail = "\"}}]}\n\n";
    let fill = CHUNK_BYTES - head.len() - tail.len();
    let mut text = format!("t{i} ");
    while text.len() < fill {
        text.push('x');
    }
    text.truncate(fill);
    format!("{head}{text}{tail}")
}

/// Starts the engine; `delay` between chunks. Returns its base URL.
async fn fake_engine(delay: Duration) -> String {
    use axum::body::Body;
    use axum::response::IntoResponse;
    let chunks: Arc<Vec<String>> = Arc::new((0..CHUNKS).map(chunk).collect());
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let chunks = chunks.clone();
            async move {
                let stream = futures::stream::unfold(0usize, move |i| {
                    let chunks = chunks.clone();
                    async move {
                        let c = match i {
                            _ if i < CHUNKS => {
                                if !delay.is_zero() {
                                    tokio::time::sleep(delay).await;
                                }
                                chunks[i].clone()
                            }
                            _ if i == CHUNKS => format!(
                                "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":20,\"completion_tokens\":{CHUNKS},\"total_tokens\":{}}}}}\n\n",
                                20 + CHUNKS
                            ),
                            _ if i == CHUNKS + 1 => "data: [DONE]\n\n".to_owned(),
                            _ => return None,
                        };
                        Some((Ok::<_, std::io::Error>(c.into_bytes()), i + 1))
                    }
                });
                ([("content-type", "text/event-stream")], Body::from_stream(stream))
                    .into_response()
            }
        }),
    );
    // The worker's health check lists the models.
    let app = app.route(
        "/v1/models",
        axum::routing::get(|| async {
            axum::Json(serde_json::json!({"object": "list", "data": [{"id": "Bench"}]}))
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{a}")
}

fn chat_body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "Bench",
        "messages": [{"role": "user", "content": "benchmark"}],
        "stream": true,
        "max_tokens": 100,
    }))
    .expect("json")
}

// ------------------------------------------------------------------ workers and clients

async fn start_worker(
    proxy: &str,
    engine_url: &str,
    max_active: u32,
    dir: &Path,
) -> cocoon_worker::WorkerHandle {
    let engine = HttpEngine::new(HttpEngineConfig::new(
        engine_url,
        BackendKind::Vllm,
        "Bench",
    ))
    .expect("engine");
    let cfg = cocoon_worker::WorkerConfig {
        proxies: vec![proxy.to_owned()],
        owner_address: addr(0x41).to_string(),
        model: MODEL.into(),
        coefficient: 1000,
        max_active_requests: max_active,
        is_test: true,
        prices: PriceTable {
            price_per_token: 20,
            worker_fee_per_token: 10,
            multipliers: Multipliers::default(),
        },
        min_payout_nanoton: u128::MAX,
        state_dir: dir.to_owned(),
        engine: Arc::new(engine),
        connector: connector(),
        admin: None,
        tokenizer: None,
        payout_sink: None,
        contract_params: Some(root().params),
        timings: cocoon_worker::Timings::default(),
    };
    cocoon_worker::Worker::start(cfg).await.expect("worker")
}

/// Per-request waiters of one client session.
type Waiters = Arc<std::sync::Mutex<std::collections::HashMap<[u8; 32], Waiter>>>;

struct Waiter {
    first: Option<oneshot::Sender<Instant>>,
    done: Option<oneshot::Sender<Result<Instant, String>>>,
}

struct Client {
    handle: cocoon_net::SessionHandle,
    waiters: Waiters,
    next: AtomicU64,
    id: u8,
}

impl Client {
    async fn connect(addr: &str, id: u8) -> Client {
        let (handle, mut incoming, _) = connector().connect(addr).await.expect("connect");
        let _: tclient::ConnectedToProxy = handle
            .query_tl(
                &fclient::ConnectToProxy {
                    params: tclient::Params {
                        client_owner_address: owner(id).to_string(),
                        is_test: Some(true),
                        min_proto_version: Some(1),
                        max_proto_version: Some(3),
                    },
                    min_config_version: 0,
                },
                Duration::from_secs(30),
            )
            .await
            .expect("connect to proxy");
        let a: enums::client::AuthorizationWithProxy = handle
            .query_tl(
                &fclient::AuthorizeWithProxyShort {
                    data: SECRET.to_vec(),
                },
                Duration::from_secs(30),
            )
            .await
            .expect("authorise");
        assert!(
            matches!(
                a,
                enums::client::AuthorizationWithProxy::AuthorizationWithProxySuccess(_)
            ),
            "{a:?}"
        );
        let waiters: Waiters = Arc::default();
        let w = waiters.clone();
        tokio::spawn(async move {
            while let Some(m) = incoming.recv().await {
                let Incoming::Message { data } = m else {
                    continue;
                };
                let (rid, fin, err) = match peek_constructor(&data) {
                    Some(tclient::QueryAnswerEx::CONSTRUCTOR_ID) => {
                        let a = tclient::QueryAnswerEx::from_bytes(&data).expect("answer");
                        (a.request_id, a.final_info.is_some(), None)
                    }
                    Some(tclient::QueryAnswerPartEx::CONSTRUCTOR_ID) => {
                        let a = tclient::QueryAnswerPartEx::from_bytes(&data).expect("part");
                        (a.request_id, a.final_info.is_some(), None)
                    }
                    Some(tclient::QueryAnswerErrorEx::CONSTRUCTOR_ID) => {
                        let a = tclient::QueryAnswerErrorEx::from_bytes(&data).expect("error");
                        (a.request_id, true, Some(a.error))
                    }
                    _ => continue,
                };
                let at = Instant::now();
                let mut g = w.lock().unwrap_or_else(|p| p.into_inner());
                let Some(wt) = g.get_mut(&rid) else { continue };
                if let Some(f) = wt.first.take() {
                    let _ = f.send(at);
                }
                if fin {
                    if let Some(d) = wt.done.take() {
                        let _ = d.send(err.map_or(Ok(at), Err));
                    }
                    g.remove(&rid);
                }
            }
        });
        Client {
            handle,
            waiters,
            next: AtomicU64::new(0),
            id,
        }
    }

    /// Sends one request; resolves to (first byte, end) instants.
    async fn request(&self, timeout: f64) -> Result<(Instant, Instant, Instant), String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut rid = [0u8; 32];
        rid[0] = self.id;
        rid[8..16].copy_from_slice(&n.to_be_bytes());
        let (ft, fr) = oneshot::channel();
        let (dt, dr) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                rid,
                Waiter {
                    first: Some(ft),
                    done: Some(dt),
                },
            );
        let q = fclient::RunQueryEx {
            model_name: "Bench".into(),
            query: fhttp::Request {
                method: "POST".into(),
                url: "/v1/chat/completions".into(),
                http_version: "HTTP/1.1".into(),
                headers: vec![thttp::Header {
                    name: "Content-Type".into(),
                    value: "application/json".into(),
                }],
                payload: chat_body(),
            }
            .to_bytes(),
            max_coefficient: 4000,
            max_tokens: 1000,
            timeout,
            request_id: rid,
            min_config_version: 0,
            enable_debug: None,
        };
        let start = Instant::now();
        self.handle
            .send_message(q.to_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let first = fr.await.map_err(|_| "session closed".to_string())?;
        let end = dr.await.map_err(|_| "session closed".to_string())??;
        Ok((start, first, end))
    }
}

// ------------------------------------------------------------------ measurement

#[derive(Default)]
struct Lat {
    ttfb: Vec<f64>,
    total: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn print_lat(name: &str, l: &mut Lat, wall: f64) {
    let n = l.total.len();
    println!(
        "  {name:<28} {:>7.0} req/s {:>9.0} chunks/s   first chunk p50 {:>6.2} ms p99 {:>6.2} ms   whole answer p50 {:>6.2} ms p99 {:>6.2} ms   ({n} in {wall:.1} s, {} errors)",
        n as f64 / wall,
        (n * CHUNKS) as f64 / wall,
        pct(&mut l.ttfb, 0.5),
        pct(&mut l.ttfb, 0.99),
        pct(&mut l.total, 0.5),
        pct(&mut l.total, 0.99),
        l.errors,
    );
    if let Some(e) = &l.first_error {
        println!("    first error: {e}");
    }
}

async fn direct(url: &str, streams: usize, total: usize) -> (Lat, f64) {
    let http = reqwest::Client::new();
    let left = Arc::new(AtomicU64::new(total as u64));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    for _ in 0..streams {
        let (http, left, tx, url) = (http.clone(), left.clone(), tx.clone(), url.to_owned());
        tokio::spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
                .is_ok()
            {
                let t0 = Instant::now();
                let r = http
                    .post(format!("{url}/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .body(chat_body())
                    .send()
                    .await;
                let Ok(mut r) = r else {
                    let _ = tx.send(None);
                    continue;
                };
                let mut first = None;
                while let Ok(Some(_c)) = r.chunk().await {
                    first.get_or_insert_with(Instant::now);
                }
                let end = Instant::now();
                let f = first.unwrap_or(end);
                let _ = tx.send(Some(((f - t0).as_secs_f64(), (end - t0).as_secs_f64())));
            }
        });
    }
    drop(tx);
    let mut l = Lat::default();
    while let Some(m) = rx.recv().await {
        match m {
            Some((a, b)) => {
                l.ttfb.push(a * 1e3);
                l.total.push(b * 1e3);
            }
            None => l.errors += 1,
        }
    }
    (l, start.elapsed().as_secs_f64())
}

async fn through(clients: &[Arc<Client>], streams: usize, total: usize) -> (Lat, f64) {
    let left = Arc::new(AtomicU64::new(total as u64));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    for i in 0..streams {
        let (c, left, tx) = (clients[i % clients.len()].clone(), left.clone(), tx.clone());
        tokio::spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
                .is_ok()
            {
                let _ = tx.send(c.request(60.0).await);
            }
        });
    }
    drop(tx);
    let mut l = Lat::default();
    while let Some(m) = rx.recv().await {
        match m {
            Ok((s, f, e)) => {
                l.ttfb.push((f - s).as_secs_f64() * 1e3);
                l.total.push((e - s).as_secs_f64() * 1e3);
            }
            Err(e) => {
                l.errors += 1;
                l.first_error.get_or_insert(e);
            }
        }
    }
    (l, start.elapsed().as_secs_f64())
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // Warnings to stderr (RUST_LOG overrides), so a failed run says why.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("node") {
        node(Path::new(args.get(1).expect("node DIR")));
        return;
    }
    if args.first().map(String::as_str) == Some("engine") {
        // A fake engine in its own process (10,000 streams are 20,000 sockets).
        let ms: u64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            println!("url {}", fake_engine(Duration::from_millis(ms)).await);
            std::future::pending::<()>().await;
        });
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
    let streams = arg(args, "--streams", 30);
    let requests = arg(args, "--requests", 3000);
    let idle = arg(args, "--idle-workers", 1000);
    let open = arg(args, "--open-streams", 10_000);
    let tmp = std::env::temp_dir().join(format!("cocoon-bench-proxy-{}", std::process::id()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!(
            "proxy (fake engine: {CHUNKS} chunks x {CHUNK_BYTES} B per answer; {streams} concurrent streams; {requests} requests each way)"
        );
        let fast = fake_engine(Duration::ZERO).await;
        let mut node = Node::start(tmp.join("node1"));
        let w = start_worker(&node.worker_addr, &fast, 64, &tmp.join("w0")).await;
        while w.stats().proxies.iter().all(|p| p.state != cocoon_worker::ConnState::Ready) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
        let (engine, line) = spawn_self(&["engine", "500"]);
        let _engine = Kid(engine);
        let slow = line.trim().strip_prefix("url ").expect("engine url").to_owned();
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
