//! What `cocoon-bench-proxy` and `cocoon-bench-network` share: the benchmark workload
//! (a fake OpenAI engine streaming 50 SSE chunks of 128 bytes, then the usage and `[DONE]`),
//! the proxy node run as a child process on a SQLite ledger, `cocoon-worker` start-up, a TL
//! client session, the HTTP and TL load runners and the latency statistics.
//!
//! A binary using [`Node`] must call [`child_main`] first thing: the proxy node (and the
//! engine of [`spawn_engine`]) are this same executable started with `node DIR` (`engine MS`).

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

/// The model the workers serve; requests name it `Bench`.
pub const MODEL: &str = "Bench@r1:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
/// The client secret whose hash the funded client contracts hold.
pub const SECRET: &[u8] = b"bench client secret";
const PROXY_SEED: [u8; 32] = [9; 32];
/// Content chunks per answer.
pub const CHUNKS: usize = 50;
/// Bytes per content chunk, SSE framing included.
pub const CHUNK_BYTES: usize = 128;
/// Client owners ([`owner`] 0..CLIENTS) the proxy node funds.
pub const CLIENTS: u8 = 200;

/// A test address whose hash is `n` repeated.
pub fn addr(n: u8) -> StdAddr {
    StdAddr::new(0, HashBytes([n; 32]))
}

/// The owner of funded client contract `i`.
pub fn owner(i: u8) -> StdAddr {
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

/// The test root: the sim image for workers, [`MODEL`], test prices and contract codes.
pub fn root() -> RootConfig {
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

/// An RA-TLS connector with a fresh sim certificate that accepts sim peers.
pub fn connector() -> RatlsConnector {
    RatlsConnector::new(
        sim_resolver(),
        verifier(),
        16,
        cocoon_net::Config::default(),
    )
    .expect("connector")
}

/// Warnings to stderr (`RUST_LOG` overrides), so a failed run says why.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the child roles of this executable: `node DIR` (the proxy, see [`Node`]) and
/// `engine MS` (a fake engine with MS ms between chunks, see [`spawn_engine`]). Returns
/// false (having done nothing) for other arguments.
pub fn child_main(args: &[String]) -> bool {
    if matches!(args.first().map(String::as_str), Some("node" | "engine")) {
        exit_with_parent();
    }
    match args.first().map(String::as_str) {
        Some("node") => {
            node(Path::new(args.get(1).expect("node DIR")));
            true
        }
        Some("engine") => {
            let ms: u64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            let rt = runtime();
            rt.block_on(async {
                println!("url {}", fake_engine(Duration::from_millis(ms)).await);
                std::future::pending::<()>().await;
            });
            true
        }
        _ => false,
    }
}

/// The multi-threaded tokio runtime every bench process runs on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// For a child started by [`spawn_self`]: exits when stdin ends, which is when the parent
/// is gone, however it ended.
pub fn exit_with_parent() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
}

// ------------------------------------------------------------------ the proxy node (child)

/// `node DIR`: the proxy on a SQLite ledger in DIR, clients funded in memory; prints
/// `ports <worker> <client>` and serves until killed.
fn node(dir: &Path) {
    let rt = runtime();
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
                    closed: false,
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

/// Runs this executable with `args`; returns the child and the first line it printed. Its
/// stdout stays open (read in the background) so that it never writes into a closed pipe;
/// its stdin is a pipe held in the returned `Child`, so that it ends when this process
/// does (see [`exit_with_parent`]).
pub fn spawn_self(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let line = first_line(&mut child);
    (child, line)
}

/// The first line `child` prints on its piped stdout (empty if it exits first); the rest
/// is read and dropped in the background.
pub fn first_line(child: &mut Child) -> String {
    let out = child.stdout.take().expect("stdout");
    let mut r = std::io::BufReader::new(out);
    let mut line = String::new();
    let _ = r.read_line(&mut line);
    std::thread::spawn(move || {
        let mut sink = String::new();
        while r.read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    line
}

/// A child process killed when dropped.
pub struct Kid(pub Child);

impl Kid {
    /// Resident set, KiB; panics if the process died.
    pub fn rss_kib(&mut self) -> u64 {
        if let Ok(Some(status)) = self.0.try_wait() {
            panic!("child process {} died: {status}", self.0.id());
        }
        rss_kib(self.0.id())
    }

    /// CPU time (user + system, all threads) so far, seconds.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(self.0.id())
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `VmRSS` of process `pid`, KiB (0 if unreadable).
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of process `pid` (all its threads), seconds, from
/// `/proc/<pid>/stat` at the usual 100 clock ticks a second (0 if unreadable).
pub fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

/// The proxy in its own process (`node DIR`), killed when dropped.
pub struct Node {
    /// The child process.
    pub kid: Kid,
    /// Where workers connect.
    pub worker_addr: String,
    /// Where clients connect.
    pub client_addr: String,
    _dir: PathBuf,
}

impl Node {
    /// Starts the proxy with its state in `dir` and waits for its addresses.
    pub fn start(dir: PathBuf) -> Node {
        std::fs::create_dir_all(&dir).expect("dir");
        let (child, line) = spawn_self(&["node", &dir.display().to_string()]);
        let kid = Kid(child);
        let mut it = line.split_whitespace().skip(1);
        let worker_addr = it.next().expect("worker port").to_owned();
        let client_addr = it.next().expect("client port").to_owned();
        Node {
            kid,
            worker_addr,
            client_addr,
            _dir: dir,
        }
    }

    /// Resident set of the proxy process, KiB; panics if the proxy died.
    pub fn rss_kib(&mut self) -> u64 {
        self.kid.rss_kib()
    }
}

/// A fake engine in its own process (`engine MS`); returns it and its base URL.
pub fn spawn_engine(delay_ms: u64) -> (Kid, String) {
    let (engine, line) = spawn_self(&["engine", &delay_ms.to_string()]);
    let url = line
        .trim()
        .strip_prefix("url ")
        .expect("engine url")
        .to_owned();
    (Kid(engine), url)
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

/// Starts the fake engine on loopback, `delay` between chunks; returns its base URL.
/// `POST /v1/chat/completions` streams [`CHUNKS`] content chunks of [`CHUNK_BYTES`] bytes,
/// a usage chunk and `[DONE]`, whatever the request; `GET /v1/models` lists `Bench`.
pub async fn fake_engine(delay: Duration) -> String {
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
    // Each chunk leaves as it is written, as from vLLM or llama-server (uvicorn and
    // cpp-httplib set TCP_NODELAY); without it, Nagle's algorithm and delayed ACKs hold
    // small writes back by up to 40 ms.
    let l = axum::serve::ListenerExt::tap_io(l, |s: &mut tokio::net::TcpStream| {
        let _ = s.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{a}")
}

/// The benchmark's request: a streamed chat completion for `Bench`.
pub fn chat_body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "Bench",
        "messages": [{"role": "user", "content": "benchmark"}],
        "stream": true,
        "max_tokens": 100,
    }))
    .expect("json")
}

// ------------------------------------------------------------------ workers and clients

/// A `cocoon-worker` serving [`MODEL`] from the engine at `engine_url`, connected to the
/// proxy's worker port `proxy`.
pub async fn start_worker(
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
        root_address: None,
        check_proxy_hashes: true,
        timings: cocoon_worker::Timings::default(),
    };
    cocoon_worker::Worker::start(cfg).await.expect("worker")
}

/// Waits until the worker's session with its proxy is ready.
pub async fn wait_ready(w: &cocoon_worker::WorkerHandle) {
    while w
        .stats()
        .proxies
        .iter()
        .all(|p| p.state != cocoon_worker::ConnState::Ready)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Per-request waiters of one client session.
type Waiters = Arc<std::sync::Mutex<std::collections::HashMap<[u8; 32], Waiter>>>;

struct Waiter {
    first: Option<oneshot::Sender<Instant>>,
    done: Option<oneshot::Sender<Result<Instant, String>>>,
}

/// A raw TL client session with the proxy (short authorisation as [`owner`] `id`).
pub struct Client {
    handle: cocoon_net::SessionHandle,
    waiters: Waiters,
    next: AtomicU64,
    id: u8,
}

impl Client {
    /// A client session to the proxy at `addr`, as client number `id`.
    pub async fn connect(addr: &str, id: u8) -> Client {
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

    /// Sends one request; resolves to (sent, first answer part, end) instants.
    pub async fn request(&self, timeout: f64) -> Result<(Instant, Instant, Instant), String> {
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

/// Latencies of the requests that succeeded (ms), and the failures.
#[derive(Default)]
pub struct Lat {
    /// Time to the first chunk, ms.
    pub ttfb: Vec<f64>,
    /// Time to the end of the answer, ms.
    pub total: Vec<f64>,
    /// Requests that failed.
    pub errors: usize,
    /// The first failure's reason.
    pub first_error: Option<String>,
}

impl Lat {
    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

/// The `p` quantile (0..=1) of `v` (sorted in place); NaN if empty.
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// One line: throughput, first-chunk and whole-answer p50/p99, errors (and the first).
pub fn print_lat(name: &str, l: &mut Lat, wall: f64) {
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

/// What one streamed HTTP answer held.
#[derive(Debug, Default)]
struct Sse {
    /// Events with non-empty `choices[0].delta.content`.
    content: usize,
    /// When the first of them was complete.
    first: Option<Instant>,
    /// `data: [DONE]` seen.
    done: bool,
    /// Bytes not yet split into events.
    buf: Vec<u8>,
}

impl Sse {
    fn feed(&mut self, bytes: &[u8], at: Instant) {
        self.buf.extend_from_slice(bytes);
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            for line in event.split(|&b| b == b'\n') {
                let Some(data) = line.strip_prefix(b"data:") else {
                    continue;
                };
                let data = data.trim_ascii();
                if data == b"[DONE]" {
                    self.done = true;
                    continue;
                }
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
                    continue;
                };
                let has = v["choices"][0]["delta"]["content"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty());
                if has {
                    self.content += 1;
                    self.first.get_or_insert(at);
                }
            }
        }
    }
}

/// One streamed request to `url` (a chat completions endpoint); (first chunk, end) times
/// in ms since it was sent. An answer that is not 200, has fewer than `expect` content
/// chunks or no `[DONE]` is an error.
async fn one_stream(
    http: &reqwest::Client,
    url: &str,
    expect: usize,
) -> Result<(f64, f64), String> {
    let t0 = Instant::now();
    let mut r = http
        .post(url)
        .header("content-type", "application/json")
        .body(chat_body())
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    if !r.status().is_success() {
        let s = r.status();
        let body = r.text().await.unwrap_or_default();
        return Err(format!(
            "HTTP {s}: {}",
            body.chars().take(300).collect::<String>()
        ));
    }
    let mut sse = Sse::default();
    loop {
        match r.chunk().await {
            Ok(Some(c)) => sse.feed(&c, Instant::now()),
            Ok(None) => break,
            Err(e) => return Err(format!("body after {} chunks: {e}", sse.content)),
        }
    }
    let end = Instant::now();
    if sse.content < expect || !sse.done {
        return Err(format!(
            "short answer: {} of {expect} chunks{}",
            sse.content,
            if sse.done { "" } else { ", no [DONE]" }
        ));
    }
    let first = sse.first.unwrap_or(end);
    Ok((
        (first - t0).as_secs_f64() * 1e3,
        (end - t0).as_secs_f64() * 1e3,
    ))
}

/// `total` streamed chat completions to `url` (the full endpoint URL) from `streams`
/// concurrent clients (each with its own connection, kept alive); each answer must hold
/// [`CHUNKS`] content chunks and `[DONE]`. Returns the latencies and the wall time, s.
pub async fn http_streams(url: &str, streams: usize, total: usize) -> (Lat, f64) {
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
                let _ = tx.send(one_stream(&http, &url, CHUNKS).await);
            }
        });
    }
    drop(tx);
    let mut l = Lat::default();
    while let Some(m) = rx.recv().await {
        match m {
            Ok((a, b)) => {
                l.ttfb.push(a);
                l.total.push(b);
            }
            Err(e) => l.error(e),
        }
    }
    (l, start.elapsed().as_secs_f64())
}

/// The same workload straight to the engine at base URL `url`.
pub async fn direct(url: &str, streams: usize, total: usize) -> (Lat, f64) {
    http_streams(&format!("{url}/v1/chat/completions"), streams, total).await
}

/// The same workload through TL client sessions (round robin over `clients`); the first
/// chunk is the first answer part.
pub async fn through(clients: &[Arc<Client>], streams: usize, total: usize) -> (Lat, f64) {
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
            Err(e) => l.error(e),
        }
    }
    (l, start.elapsed().as_secs_f64())
}

/// The value after `name` in `args` parsed, or `default`.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_128_bytes_and_sse_counts_them() {
        let mut sse = Sse::default();
        let at = Instant::now();
        let all: String = (0..CHUNKS).map(chunk).collect();
        assert!((0..CHUNKS).all(|i| chunk(i).len() == CHUNK_BYTES));
        // Split at odd places, as a network would.
        for piece in all.as_bytes().chunks(77) {
            sse.feed(piece, at);
        }
        sse.feed(
            b"data: {\"choices\":[],\"usage\":{}}\n\ndata: [DONE]\n\n",
            at,
        );
        assert_eq!(sse.content, CHUNKS);
        assert!(sse.done && sse.first.is_some() && sse.buf.is_empty());
    }
}
