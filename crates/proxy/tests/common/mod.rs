//! Test fixtures: a fake OpenAI-compatible engine on loopback (SSE with usage, a gate to
//! hold a stream mid-way, failure, endless and "busy" modes; adapted from the worker's
//! fixture), real `cocoon-worker` instances, a real proxy, and a test client speaking TL
//! over RA-TLS with sim attestation.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cocoon_attest::{Policy, SimKey};
use cocoon_engine::{BackendKind, HttpEngine, HttpEngineConfig, Tokenizer};
use cocoon_net::{Incoming, SessionHandle};
use cocoon_openai::{Multipliers, PriceTable};
use cocoon_proxy::{
    AdminConfig, MemoryChain, MemoryMeter, Proxy, ProxyConfig, ProxyHandle, RouterConfig, Timings,
};
use cocoon_ratls::cert::{Identity, SimSource};
use cocoon_ratls::config::CertResolver;
use cocoon_ratls::net::RatlsConnector;
use cocoon_ratls::verifier::{RatlsVerifier, VerifierConfig};
use cocoon_tl::functions::{client as fclient, http as fhttp};
use cocoon_tl::types::{client as tclient, http as thttp, proxy as tproxy};
use cocoon_tl::{Identifiable, TlRead, TlWrite, enums, peek_constructor};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::root::{CocoonParams, RootConfig, model_hash};
use cocoon_ton::{HashBytes, StdAddr};
use cocoon_worker::{Worker, WorkerConfig, WorkerHandle};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

pub const LIMIT: Duration = Duration::from_secs(20);
pub const MODEL: &str = "Smol@r1:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
pub const POW: u32 = 2;
pub const TOKEN: &str = "s3cret-admin-token";
pub const SECRET: &[u8] = b"client secret string";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------- fake engine

/// Shared state of one fake engine.
#[derive(Clone)]
pub struct EngineState {
    /// Streams in `gated` mode wait for a permit before their last chunks.
    pub gate: Arc<Semaphore>,
    /// Set when an `endless` stream was dropped by the caller.
    pub dropped: Arc<AtomicBool>,
    /// While set, every chat request is answered 503 (the worker reports "not ready").
    pub busy: Arc<AtomicBool>,
    /// Chat requests received.
    pub requests: Arc<AtomicUsize>,
    /// Endless streams started.
    pub endless_started: Arc<tokio::sync::Notify>,
    /// Every chat request body received, in order.
    pub bodies: Arc<std::sync::Mutex<Vec<Value>>>,
}

impl EngineState {
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// The SSE transcript of `gated` mode, chunk by chunk.
pub fn transcript() -> Vec<String> {
    vec![
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n".into(),
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Bonjour\"}}]}\n\n".into(),
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" le monde\"},\"finish_reason\":\"stop\"}]}\n\n".into(),
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":31,\"completion_tokens\":9,\"total_tokens\":40,\"prompt_tokens_details\":{\"cached_tokens\":16}}}\n\n".into(),
        "data: [DONE]\n\n".into(),
    ]
}

struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn chat(
    axum::extract::State(st): axum::extract::State<EngineState>,
    body: axum::Json<Value>,
) -> Response {
    st.requests.fetch_add(1, Ordering::SeqCst);
    st.bodies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(body.0.clone());
    if st.busy.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response();
    }
    let mode = body["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let sse = [("content-type", "text/event-stream")];
    match mode.as_str() {
        "json" => axum::Json(json!({
            "id": "c2", "object": "chat.completion", "created": 1, "model": "Smol",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
        }))
        .into_response(),
        "gated" => {
            let chunks = transcript();
            let gate = st.gate.clone();
            let stream = futures::stream::unfold(0usize, move |i| {
                let chunks = chunks.clone();
                let gate = gate.clone();
                async move {
                    if i >= chunks.len() {
                        return None;
                    }
                    if i == 2 {
                        gate.acquire().await.unwrap().forget();
                    }
                    Some((
                        Ok::<_, std::io::Error>(chunks[i].clone().into_bytes()),
                        i + 1,
                    ))
                }
            });
            (sse, Body::from_stream(stream)).into_response()
        }
        "stream" => {
            // 20 one-word chunks 5 ms apart, then the usage (the benchmark's shape, small).
            let stream = futures::stream::unfold(0u32, |n| async move {
                let c = match n {
                    0..20 => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{n} \"}}}}]}}\n\n")
                    }
                    20 => "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":20,\"total_tokens\":32}}\n\n".to_owned(),
                    21 => "data: [DONE]\n\n".to_owned(),
                    _ => return None,
                };
                Some((Ok::<_, std::io::Error>(c.into_bytes()), n + 1))
            });
            (sse, Body::from_stream(stream)).into_response()
        }
        "fail" => {
            // Two content chunks (three words), then the backend dies.
            let stream = futures::stream::unfold(0u8, |n| async move {
                match n {
                    0 => Some((
                        Ok(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"one two\"}}]}\n\n".to_vec()),
                        1,
                    )),
                    1 => Some((
                        Ok(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" three\"}}]}\n\n".to_vec()),
                        2,
                    )),
                    2 => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Some((Err(std::io::Error::other("backend crashed")), 3))
                    }
                    _ => None,
                }
            });
            (sse, Body::from_stream(stream)).into_response()
        }
        "endless" => {
            st.dropped.store(false, Ordering::SeqCst);
            st.endless_started.notify_one();
            let flag = DropFlag(st.dropped.clone());
            let stream = futures::stream::unfold((flag, 0u32), |(f, n)| async move {
                if n > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let c = format!(
                    "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"t{n} \"}}}}]}}\n\n"
                );
                Some((Ok::<_, std::io::Error>(c.into_bytes()), (f, n + 1)))
            });
            (sse, Body::from_stream(stream)).into_response()
        }
        "metered" => {
            // Usage with every chunk (as some engines report it): one completion token a
            // chunk, and a prompt count growing by 1000 a chunk (an engine reporting more
            // than the request could cost).
            st.dropped.store(false, Ordering::SeqCst);
            let flag = DropFlag(st.dropped.clone());
            let stream = futures::stream::unfold((flag, 1u64), |(f, n)| async move {
                if n > 200 {
                    return None;
                }
                if n > 1 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let c = format!(
                    "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w \"}}}}],\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\n",
                    n * 1000,
                    n,
                    n * 1000 + n
                );
                Some((Ok::<_, std::io::Error>(c.into_bytes()), (f, n + 1)))
            });
            (sse, Body::from_stream(stream)).into_response()
        }
        _ => (StatusCode::BAD_REQUEST, "unknown mode").into_response(),
    }
}

/// Starts a fake engine; returns its base URL and state.
pub async fn fake_engine() -> (String, EngineState) {
    let st = EngineState {
        gate: Arc::new(Semaphore::new(0)),
        dropped: Arc::new(AtomicBool::new(false)),
        busy: Arc::new(AtomicBool::new(false)),
        requests: Arc::new(AtomicUsize::new(0)),
        endless_started: Arc::new(tokio::sync::Notify::new()),
        bodies: Arc::default(),
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route(
            "/v1/models",
            get(|| async { axum::Json(json!({"object":"list","data":[{"id":"Smol"}]})) }),
        )
        .with_state(st.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}"), st)
}

/// Whitespace words: a real tokenizer for a toy vocabulary (local counting on failure).
pub struct Words;
impl Tokenizer for Words {
    fn count(&self, text: &str) -> Result<u64, String> {
        Ok(text.split_whitespace().count() as u64)
    }
}

// ---------------------------------------------------------------- identities, root

pub fn addr(n: u8) -> StdAddr {
    StdAddr::new(0, HashBytes([n; 32]))
}

fn sim_identity() -> Identity {
    Identity::generate(&SimSource(SimKey::generate().unwrap()), now() - 60).unwrap()
}

fn sim_verifier() -> Arc<RatlsVerifier> {
    RatlsVerifier::new(VerifierConfig::new(Policy::sim_test()))
}

fn code(name: &str) -> cocoon_ton::Cell {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../contracts/build")
        .join(format!("{name}.code.boc"));
    cocoon_ton::codec::decode_boc(&std::fs::read(&p).unwrap()).unwrap()
}

/// Prices of the test network (multipliers as the worker fixture uses).
pub fn params() -> CocoonParams {
    CocoonParams {
        is_test: true,
        price_per_token: 20,
        worker_fee_per_token: 10,
        prompt_tokens_price_multiplier: 10_000,
        cached_tokens_price_multiplier: 5_000,
        completion_tokens_price_multiplier: 20_000,
        reasoning_tokens_price_multiplier: 10_000,
        proxy_code: Some(code("proxy")),
        worker_code: Some(code("worker")),
        client_code: Some(code("client")),
        ..CocoonParams::default()
    }
}

pub fn worker_prices() -> PriceTable {
    PriceTable {
        price_per_token: 20,
        worker_fee_per_token: 10,
        multipliers: Multipliers {
            prompt: 10_000,
            cached: 5_000,
            completion: 20_000,
            reasoning: 10_000,
        },
    }
}

/// A root configuration allowing the sim image and [`MODEL`] (each optionally).
pub fn root(version: u32, image_ok: bool, model_ok: bool) -> RootConfig {
    RootConfig {
        owner: addr(0x01),
        version,
        proxy_hashes: vec![],
        registered_proxies: vec![],
        last_proxy_seqno: 0,
        worker_hashes: if image_ok {
            vec![HashBytes(cocoon_attest::sim::sim_image_hash())]
        } else {
            vec![HashBytes([0xAB; 32])]
        },
        model_hashes: if model_ok {
            vec![model_hash(MODEL)]
        } else {
            vec![model_hash("Other@r1:ff")]
        },
        params: params(),
    }
}

// ---------------------------------------------------------------- proxy

pub struct Net {
    pub proxy: ProxyHandle,
    pub meter: Arc<MemoryMeter>,
    pub chain: Arc<MemoryChain>,
    pub root: RootConfig,
    pub proxy_sc: StdAddr,
    pub dir: tempfile::TempDir,
}

pub const PROXY_SEED: [u8; 32] = [7; 32];

pub async fn start_proxy(root: RootConfig) -> Net {
    start_proxy_with(root, |_| {}).await
}

pub async fn start_proxy_with(root: RootConfig, tweak: impl FnOnce(&mut ProxyConfig)) -> Net {
    start_proxy_result(root, tweak).await.unwrap()
}

pub async fn start_proxy_result(
    root: RootConfig,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> Result<Net, cocoon_proxy::ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let meter = Arc::new(MemoryMeter::new());
    let chain = Arc::new(MemoryChain::new());
    let proxy_sc = addr(0x11);
    let mut cfg = ProxyConfig {
        worker_listen: "127.0.0.1:0".parse().unwrap(),
        client_listen: "127.0.0.1:0".parse().unwrap(),
        certs: CertResolver::new(&sim_identity()).unwrap(),
        worker_verifier: sim_verifier(),
        client_verifier: sim_verifier(),
        pow_difficulty: POW,
        is_test: true,
        root: root.clone(),
        signing_key: Arc::new(SigningKey::from_seed(&PROXY_SEED).unwrap()),
        owner_address: addr(0x33),
        proxy_sc: proxy_sc.clone(),
        meter: meter.clone(),
        chain: chain.clone(),
        admin: Some(AdminConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            token_file: Some(token_file),
            allowed_origins: vec![],
            allowed_hosts: vec![],
        }),
        router: RouterConfig {
            probe_rate: 0.0,
            ..RouterConfig::default()
        },
        timings: Timings {
            cancel_grace: Duration::from_secs(5),
            ..Timings::default()
        },
        net: cocoon_net::Config::default(),
    };
    tweak(&mut cfg);
    let root = cfg.root.clone();
    // A tweak may give the proxy another contract (e.g. the one its root derives).
    let proxy_sc = cfg.proxy_sc.clone();
    let proxy = Proxy::start(cfg).await?;
    Ok(Net {
        proxy,
        meter,
        chain,
        root,
        proxy_sc,
        dir,
    })
}

impl Net {
    /// The client contract the proxy derives for `owner`.
    pub fn client_sc(&self, owner: &StdAddr) -> StdAddr {
        cocoon_ton::contracts::client_contract(
            &self.root.params,
            owner,
            &self.proxy_sc,
            &HashBytes(self.proxy.public_key()),
        )
        .unwrap()
        .address
    }

    /// Deploys a client contract with `balance` nanoTON (stake the same) and our secret.
    pub fn fund_client(&self, owner: &StdAddr, balance: u64, with_secret: bool) -> StdAddr {
        let sc = self.client_sc(owner);
        let secret_hash = with_secret.then(|| {
            let d = ring_sha256(SECRET);
            let mut h = [0u8; 32];
            h.copy_from_slice(&d);
            h
        });
        self.chain.set_client(
            sc.clone(),
            cocoon_proxy::ClientContractState {
                secret_hash,
                balance,
                stake: balance,
                tokens_used: 0,
                closing: false,
                closed: false,
            },
        );
        sc
    }

    pub async fn wait_workers(&self, n: usize) {
        eventually("workers registered", || self.proxy.ready_workers() == n).await;
    }

    pub fn admin(&self) -> String {
        format!("http://{}", self.proxy.admin_addr().unwrap())
    }
}

fn ring_sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

// ---------------------------------------------------------------- worker

pub fn connector() -> RatlsConnector {
    RatlsConnector::new(
        CertResolver::new(&sim_identity()).unwrap(),
        sim_verifier(),
        16,
        cocoon_net::Config::default(),
    )
    .unwrap()
}

pub fn engine(base: &str) -> Arc<HttpEngine> {
    let cfg = HttpEngineConfig::new(base, BackendKind::Vllm, "Smol");
    Arc::new(
        HttpEngine::new(cfg)
            .unwrap()
            .with_tokenizer(Arc::new(Words)),
    )
}

pub struct TestWorker {
    pub handle: WorkerHandle,
    pub engine: EngineState,
    pub owner: StdAddr,
    _dir: tempfile::TempDir,
}

/// A real worker with its own fake engine, dialling `net`'s proxy.
pub async fn start_worker(net: &Net, owner_byte: u8) -> TestWorker {
    start_worker_with(net, owner_byte, |_| {}).await
}

/// [`start_worker`] with the configuration changed by `tweak` before the worker starts.
pub async fn start_worker_with(
    net: &Net,
    owner_byte: u8,
    tweak: impl FnOnce(&mut WorkerConfig),
) -> TestWorker {
    let (base, engine_state) = fake_engine().await;
    let dir = tempfile::tempdir().unwrap();
    let mut timings = cocoon_worker::Timings {
        payment_status_interval: (Duration::from_secs(60), Duration::from_secs(60)),
        health_interval: Duration::from_millis(100),
        drain_timeout: Duration::from_secs(2),
        ..cocoon_worker::Timings::default()
    };
    timings.backoff.base = Duration::from_millis(50);
    timings.backoff.max = Duration::from_millis(300);
    let owner = addr(owner_byte);
    let mut cfg = WorkerConfig {
        proxies: vec![net.proxy.worker_addr().to_string()],
        owner_address: owner.to_string(),
        model: MODEL.into(),
        coefficient: 1500,
        max_active_requests: 4,
        is_test: true,
        prices: worker_prices(),
        min_payout_nanoton: 1000,
        state_dir: dir.path().to_owned(),
        engine: engine(&base),
        connector: connector(),
        admin: None,
        payout_sink: None,
        contract_params: Some(net.root.params.clone()),
        root_address: None,
        check_proxy_hashes: true,
        tokenizer: Some(Arc::new(Words)),
        timings,
    };
    tweak(&mut cfg);
    let handle = Worker::start(cfg).await.unwrap();
    TestWorker {
        handle,
        engine: engine_state,
        owner,
        _dir: dir,
    }
}

impl TestWorker {
    /// The worker contract the proxy derives.
    pub fn worker_sc(&self, net: &Net) -> String {
        cocoon_ton::contracts::worker_contract(
            &net.root.params,
            &self.owner,
            &net.proxy_sc,
            &HashBytes(net.proxy.public_key()),
        )
        .unwrap()
        .address
        .to_string()
    }
}

// ---------------------------------------------------------------- client

/// A message from the proxy, decoded.
#[derive(Debug)]
pub enum Answer {
    Head(tclient::QueryAnswerEx, thttp::Response),
    Part(tclient::QueryAnswerPartEx),
    Error(tclient::QueryAnswerErrorEx),
    Payment(tproxy::ClientRequestPayment),
}

pub fn decode(data: &[u8]) -> Answer {
    match peek_constructor(data).unwrap() {
        tclient::QueryAnswerEx::CONSTRUCTOR_ID => {
            let a = tclient::QueryAnswerEx::from_bytes(data).unwrap();
            let r = thttp::Response::from_bytes(&a.answer).unwrap();
            Answer::Head(a, r)
        }
        tclient::QueryAnswerPartEx::CONSTRUCTOR_ID => {
            Answer::Part(tclient::QueryAnswerPartEx::from_bytes(data).unwrap())
        }
        tclient::QueryAnswerErrorEx::CONSTRUCTOR_ID => {
            Answer::Error(tclient::QueryAnswerErrorEx::from_bytes(data).unwrap())
        }
        tproxy::ClientRequestPayment::CONSTRUCTOR_ID => {
            Answer::Payment(tproxy::ClientRequestPayment::from_bytes(data).unwrap())
        }
        id => panic!("unexpected message {id:08x}"),
    }
}

pub struct TestClient {
    pub handle: SessionHandle,
    pub incoming: mpsc::Receiver<Incoming>,
    pub connected: tclient::ConnectedToProxy,
}

pub fn http_request(body: &[u8]) -> Vec<u8> {
    fhttp::Request {
        method: "POST".into(),
        url: "/v1/chat/completions".into(),
        http_version: "HTTP/1.1".into(),
        headers: vec![thttp::Header {
            name: "Content-Type".into(),
            value: "application/json".into(),
        }],
        payload: body.to_vec(),
    }
    .to_bytes()
}

pub fn chat_body(mode: &str, stream: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "Smol",
        "messages": [{"role": "user", "content": mode}],
        "stream": stream,
    }))
    .unwrap()
}

impl TestClient {
    /// Connects and sends `client.connectToProxy`.
    pub async fn connect(net: &Net, owner: &StdAddr) -> TestClient {
        Self::connect_to(&net.proxy.client_addr().to_string(), owner).await
    }

    /// Connects to the proxy's client port at `addr`.
    pub async fn connect_to(addr: &str, owner: &StdAddr) -> TestClient {
        let (handle, incoming, _peer) = connector().connect(addr).await.unwrap();
        let connected: tclient::ConnectedToProxy = handle
            .query_tl(
                &fclient::ConnectToProxy {
                    params: tclient::Params {
                        client_owner_address: owner.to_string(),
                        is_test: Some(true),
                        min_proto_version: Some(1),
                        max_proto_version: Some(3),
                    },
                    min_config_version: 0,
                },
                LIMIT,
            )
            .await
            .unwrap();
        TestClient {
            handle,
            incoming,
            connected,
        }
    }

    /// Connects and authorises with the short (secret) path.
    pub async fn authorized(net: &Net, owner: &StdAddr) -> TestClient {
        Self::authorized_at(&net.proxy.client_addr().to_string(), owner)
            .await
            .0
    }

    /// Connects to `addr` and authorises; returns the client and the success answer.
    pub async fn authorized_at(
        addr: &str,
        owner: &StdAddr,
    ) -> (TestClient, tclient::AuthorizationWithProxySuccess) {
        let c = Self::connect_to(addr, owner).await;
        let a: enums::client::AuthorizationWithProxy = c
            .handle
            .query_tl(
                &fclient::AuthorizeWithProxyShort {
                    data: SECRET.to_vec(),
                },
                LIMIT,
            )
            .await
            .unwrap();
        match a {
            enums::client::AuthorizationWithProxy::AuthorizationWithProxySuccess(ok) => (c, ok),
            other => panic!("authorisation failed: {other:?}"),
        }
    }

    pub async fn run(&self, id: u8, mode: &str, max_tokens: i32, timeout: f64) {
        self.run_id([id; 32], mode, max_tokens, timeout).await;
    }

    pub async fn run_id(&self, request_id: [u8; 32], mode: &str, max_tokens: i32, timeout: f64) {
        let q = fclient::RunQueryEx {
            model_name: "Smol".into(),
            query: http_request(&chat_body(mode, true)),
            max_coefficient: 4000,
            max_tokens,
            timeout,
            request_id,
            min_config_version: 0,
            enable_debug: None,
        };
        self.handle.send_message(q.to_bytes()).await.unwrap();
    }

    pub async fn cancel(&self, id: u8) {
        let m = tclient::CancelQuery {
            request_id: [id; 32],
            reason: "test".into(),
        };
        self.handle.send_message(m.to_bytes()).await.unwrap();
    }

    /// The next message from the proxy.
    pub async fn next(&mut self) -> Answer {
        loop {
            let m = tokio::time::timeout(LIMIT, self.incoming.recv())
                .await
                .expect("message in time")
                .expect("session open");
            if let Incoming::Message { data } = m {
                return decode(&data);
            }
        }
    }

    /// Reads one request's answer to its end: (head, body bytes, final message).
    pub async fn collect(&mut self) -> Collected {
        let mut c = Collected::default();
        loop {
            match self.next().await {
                Answer::Head(h, r) => {
                    c.status = Some(r.status_code);
                    c.headers = r.headers;
                    c.body.extend_from_slice(&r.payload);
                    if let Some(fi) = h.final_info {
                        c.tokens = Some(tokens5(&fi.tokens_used));
                        return c;
                    }
                }
                Answer::Part(p) => {
                    c.body.extend_from_slice(&p.answer);
                    if let Some(fi) = p.final_info {
                        c.tokens = Some(tokens5(&fi.tokens_used));
                        return c;
                    }
                }
                Answer::Error(e) => {
                    c.tokens = e.final_info.as_ref().map(|f| tokens5(&f.tokens_used));
                    c.error = Some((e.error_code, e.error));
                    return c;
                }
                Answer::Payment(p) => c.payments.push(p),
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Collected {
    pub status: Option<i32>,
    pub headers: Vec<thttp::Header>,
    pub body: Vec<u8>,
    pub tokens: Option<[i64; 5]>,
    pub error: Option<(i32, String)>,
    pub payments: Vec<tproxy::ClientRequestPayment>,
}

pub fn tokens5(t: &cocoon_tl::types::TokensUsed) -> [i64; 5] {
    [
        t.prompt_tokens_used,
        t.cached_tokens_used,
        t.completion_tokens_used,
        t.reasoning_tokens_used,
        t.total_tokens_used,
    ]
}

/// Polls `f` until it holds (or panics after [`LIMIT`]).
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + LIMIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starting the proxy must fail; returns why.
pub async fn start_err(
    root: RootConfig,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> cocoon_proxy::ConfigError {
    match start_proxy_result(root, tweak).await {
        Ok(_) => panic!("the proxy started with an unsafe configuration"),
        Err(e) => e,
    }
}
