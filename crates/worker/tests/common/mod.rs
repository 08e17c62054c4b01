//! Test fixtures: an OpenAI-compatible fake engine on loopback (SSE with usage in the last
//! chunk, a gate to hold a stream mid-way, failure and endless modes) and a test proxy built
//! from `RatlsAcceptor` + `cocoon-net` sessions with sim attestation that performs the proxy
//! side of the worker handshake.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
use cocoon_ratls::cert::{Identity, SimSource};
use cocoon_ratls::config::CertResolver;
use cocoon_ratls::net::{RatlsAcceptor, RatlsConnector};
use cocoon_ratls::verifier::{RatlsVerifier, VerifierConfig};
use cocoon_tl::functions::{http as fhttp, proxy as fproxy, worker as fworker};
use cocoon_tl::types::{http as thttp, proxy as tproxy, worker as tworker};
use cocoon_tl::{Identifiable, TlRead, TlWrite, enums, peek_constructor};
use cocoon_ton::StdAddr;
use cocoon_ton::keys::SigningKey;
use cocoon_ton::payments::{PaymentPayload, SignedOp};
use cocoon_worker::{AdminConfig, PayoutSink, Timings, WorkerConfig};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

pub const LIMIT: Duration = Duration::from_secs(20);
pub const MODEL: &str = "Smol@r1:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
pub const POW: u32 = 2;
/// The test proxy's signing key seed.
pub const PROXY_SEED: [u8; 32] = [7; 32];

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------- fake engine

/// Shared state of the fake engine.
#[derive(Clone)]
pub struct EngineState {
    /// Streams in `gated` mode wait for a permit before their last chunks.
    pub gate: Arc<Semaphore>,
    /// Set when an `endless` stream was dropped by the caller.
    pub dropped: Arc<AtomicBool>,
    /// `/v1/models` answers 200 while true.
    pub up: Arc<AtomicBool>,
    /// Chat requests received.
    pub requests: Arc<AtomicUsize>,
    /// Bodies received (to check what the worker forwarded).
    pub bodies: Arc<Mutex<Vec<Value>>>,
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
    st.bodies.lock().unwrap().push(body.0.clone());
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
        _ => (StatusCode::BAD_REQUEST, "unknown mode").into_response(),
    }
}

/// Starts the fake engine; returns its base URL and state.
pub async fn fake_engine() -> (String, EngineState) {
    let st = EngineState {
        gate: Arc::new(Semaphore::new(0)),
        dropped: Arc::new(AtomicBool::new(false)),
        up: Arc::new(AtomicBool::new(true)),
        requests: Arc::new(AtomicUsize::new(0)),
        bodies: Arc::new(Mutex::new(Vec::new())),
    };
    let up = st.up.clone();
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route(
            "/v1/models",
            get(move || {
                let up = up.clone();
                async move {
                    if up.load(Ordering::SeqCst) {
                        axum::Json(json!({"object":"list","data":[{"id":"Smol"}]})).into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "loading").into_response()
                    }
                }
            }),
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

// ---------------------------------------------------------------- test proxy

pub fn addr(n: u8) -> StdAddr {
    cocoon_ton::parse_address(&format!("0:{}", hex::encode([n; 32]))).unwrap()
}

/// What the proxy answers in the handshake and to payment status queries.
#[derive(Clone, Debug)]
pub struct Behavior {
    /// Tokens of the signed payout the proxy hands out (0 = `signedPaymentEmpty`).
    pub signed: u64,
    /// `tokens_committed_to_db`.
    pub db: i64,
    /// `max_tokens`.
    pub max: i64,
    /// `error_code` of the balance comparison.
    pub compare_error: i32,
    /// Protocol version the proxy picks.
    pub proto: i32,
    /// `is_test` the proxy reports.
    pub is_test: bool,
    /// `worker.updatePaymentStatus` queries answered so far.
    pub status_answers: u64,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            signed: 0,
            db: 0,
            max: 0,
            status_answers: 0,
            compare_error: 0,
            proto: 3,
            is_test: true,
        }
    }
}

/// A worker session that completed the handshake.
pub struct ProxyConn {
    pub handle: SessionHandle,
    pub messages: mpsc::UnboundedReceiver<Vec<u8>>,
    pub params: tworker::Params,
    pub compare: fworker::CompareBalanceWithProxy,
    pub is_disabled: bool,
}

/// Handshake steps the proxy saw (including refused handshakes).
#[derive(Clone, Debug)]
pub enum HandshakeEvent {
    Compare(fworker::CompareBalanceWithProxy),
    Completed,
}

pub struct TestProxy {
    pub addr: String,
    pub key: SigningKey,
    pub proxy_sc: StdAddr,
    pub worker_sc: StdAddr,
    pub behavior: Arc<Mutex<Behavior>>,
    pub conns: mpsc::UnboundedReceiver<ProxyConn>,
    pub events: mpsc::UnboundedReceiver<HandshakeEvent>,
}

fn sim_identity() -> Identity {
    Identity::generate(&SimSource(SimKey::generate().unwrap()), now() - 60).unwrap()
}

fn sim_verifier() -> Arc<RatlsVerifier> {
    RatlsVerifier::new(VerifierConfig::new(Policy::sim_test()))
}

impl TestProxy {
    pub async fn start() -> TestProxy {
        Self::start_with(addr(0x22)).await
    }

    /// A proxy that names `worker_sc` as the worker's contract.
    pub async fn start_with(worker_sc: StdAddr) -> TestProxy {
        Self::start_as(addr(0x11), worker_sc).await
    }

    /// A proxy that names `proxy_sc` as its own contract and `worker_sc` as the worker's
    /// (its owner is `addr(0x33)`, its key `PROXY_SEED`'s).
    pub async fn start_as(proxy_sc: StdAddr, worker_sc: StdAddr) -> TestProxy {
        let acceptor = RatlsAcceptor::new(
            CertResolver::new(&sim_identity()).unwrap(),
            sim_verifier(),
            POW,
            cocoon_net::Config::default(),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen_addr = listener.local_addr().unwrap().to_string();
        let behavior = Arc::new(Mutex::new(Behavior::default()));
        let (conn_tx, conns) = mpsc::unbounded_channel();
        let (ev_tx, events) = mpsc::unbounded_channel();
        let key = SigningKey::from_seed(&PROXY_SEED).unwrap();
        let ctx = Arc::new(ProxyCtx {
            key: SigningKey::from_seed(&PROXY_SEED).unwrap(),
            pubkey: key.public_key(),
            proxy_sc: proxy_sc.clone(),
            worker_sc: worker_sc.clone(),
            behavior: behavior.clone(),
        });
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let ctx = ctx.clone();
                let conn_tx = conn_tx.clone();
                let ev_tx = ev_tx.clone();
                tokio::spawn(async move {
                    if let Ok((handle, incoming, _peer)) = acceptor.accept(tcp).await {
                        proxy_session(ctx, handle, incoming, conn_tx, ev_tx).await;
                    }
                });
            }
        });
        TestProxy {
            addr: listen_addr,
            key,
            proxy_sc,
            worker_sc,
            behavior,
            conns,
            events,
        }
    }

    /// The next worker session that completed the handshake.
    pub async fn next_conn(&mut self) -> ProxyConn {
        tokio::time::timeout(LIMIT, self.conns.recv())
            .await
            .expect("worker connects in time")
            .expect("proxy alive")
    }

    /// The next handshake step.
    pub async fn next_event(&mut self) -> HandshakeEvent {
        tokio::time::timeout(LIMIT, self.events.recv())
            .await
            .expect("handshake step in time")
            .expect("proxy alive")
    }

    /// A signed payout for `tokens` to the worker contract, signed by the proxy key.
    pub fn payment(&self, tokens: u64) -> Vec<u8> {
        sign_payment(&self.key, &self.worker_sc, tokens)
    }

    pub fn set(&self, f: impl FnOnce(&mut Behavior)) {
        f(&mut self.behavior.lock().unwrap());
    }
}

pub fn sign_payment(key: &SigningKey, worker_sc: &StdAddr, tokens: u64) -> Vec<u8> {
    PaymentPayload {
        op: SignedOp::WorkerPayout,
        query_id: tokens,
        tokens: Some(tokens),
        contract: worker_sc.clone(),
    }
    .sign(key, worker_sc)
    .unwrap()
    .to_boc()
    .unwrap()
}

struct ProxyCtx {
    key: SigningKey,
    pubkey: [u8; 32],
    proxy_sc: StdAddr,
    worker_sc: StdAddr,
    behavior: Arc<Mutex<Behavior>>,
}

impl ProxyCtx {
    fn signed(&self, tokens: u64) -> enums::proxy::SignedPayment {
        if tokens == 0 {
            enums::proxy::SignedPayment::SignedPaymentEmpty(tproxy::SignedPaymentEmpty {})
        } else {
            enums::proxy::SignedPayment::SignedPayment(tproxy::SignedPayment {
                data: sign_payment(&self.key, &self.worker_sc, tokens),
            })
        }
    }
}

async fn proxy_session(
    ctx: Arc<ProxyCtx>,
    handle: SessionHandle,
    mut incoming: mpsc::Receiver<Incoming>,
    conn_tx: mpsc::UnboundedSender<ProxyConn>,
    ev_tx: mpsc::UnboundedSender<HandshakeEvent>,
) {
    let (msg_tx, msg_rx) = mpsc::unbounded_channel();
    let mut msg_rx = Some(msg_rx);
    let mut params = None;
    let mut compare = None;
    while let Some(inc) = incoming.recv().await {
        match inc {
            Incoming::Message { data } => {
                let _ = msg_tx.send(data);
            }
            Incoming::Query { data, responder } => {
                let b = ctx.behavior.lock().unwrap().clone();
                match peek_constructor(&data).unwrap_or(0) {
                    fworker::ConnectToProxy::CONSTRUCTOR_ID => {
                        let q = fworker::ConnectToProxy::from_bytes(&data).unwrap();
                        params = Some(q.params);
                        let _ = responder.answer_tl(&tworker::ConnectedToProxy {
                            params: tproxy::Params {
                                proxy_public_key: ctx.pubkey,
                                proxy_owner_address: addr(0x33).to_string(),
                                proxy_sc_address: ctx.proxy_sc.to_string(),
                                is_test: Some(b.is_test),
                                proto_version: Some(b.proto),
                            },
                            worker_sc_address: ctx.worker_sc.to_string(),
                        });
                    }
                    fworker::CompareBalanceWithProxy::CONSTRUCTOR_ID => {
                        let q = fworker::CompareBalanceWithProxy::from_bytes(&data).unwrap();
                        let _ = ev_tx.send(HandshakeEvent::Compare(q.clone()));
                        compare = Some(q);
                        let _ = responder.answer_tl(&tworker::CompareBalanceWithProxyResult {
                            signed_payment: ctx.signed(b.signed),
                            tokens_committed_to_db: b.db,
                            max_tokens: b.max,
                            error_code: b.compare_error,
                        });
                    }
                    fworker::ExtendedCompareBalanceWithProxy::CONSTRUCTOR_ID => {
                        let _ =
                            responder.answer_tl(&tworker::ExtendedCompareBalanceWithProxyResult {
                                error_code: 0,
                            });
                    }
                    fworker::ProxyHandshakeComplete::CONSTRUCTOR_ID => {
                        let q = fworker::ProxyHandshakeComplete::from_bytes(&data).unwrap();
                        let _ = responder.answer_tl(&tworker::ProxyHandshakeCompleted {});
                        let _ = ev_tx.send(HandshakeEvent::Completed);
                        if let (Some(p), Some(c), Some(rx)) =
                            (params.clone(), compare.clone(), msg_rx.take())
                        {
                            let _ = conn_tx.send(ProxyConn {
                                handle: handle.clone(),
                                messages: rx,
                                params: p,
                                compare: c,
                                is_disabled: q.is_disabled,
                            });
                        }
                    }
                    fworker::UpdatePaymentStatus::CONSTRUCTOR_ID => {
                        let _ = responder.answer_tl(&tworker::PaymentStatus {
                            signed_payment: ctx.signed(b.signed),
                            db_tokens: b.db,
                            max_tokens: b.max,
                        });
                        ctx.behavior.lock().unwrap().status_answers += 1;
                    }
                    _ => {
                        let _ = responder.error(621, "unexpected query");
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- messages

/// A message from the worker, decoded.
#[derive(Debug)]
pub enum Answer {
    Head(tproxy::QueryAnswerEx, thttp::Response),
    Part(tproxy::QueryAnswerPartEx),
    Error(tproxy::QueryAnswerErrorEx),
    EnabledDisabled(i32),
    NewCoefficient(i32),
}

pub fn decode(data: &[u8]) -> Answer {
    match peek_constructor(data).unwrap() {
        tproxy::QueryAnswerEx::CONSTRUCTOR_ID => {
            let a = tproxy::QueryAnswerEx::from_bytes(data).unwrap();
            let r = thttp::Response::from_bytes(&a.answer).unwrap();
            Answer::Head(a, r)
        }
        tproxy::QueryAnswerPartEx::CONSTRUCTOR_ID => {
            Answer::Part(tproxy::QueryAnswerPartEx::from_bytes(data).unwrap())
        }
        tproxy::QueryAnswerErrorEx::CONSTRUCTOR_ID => {
            Answer::Error(tproxy::QueryAnswerErrorEx::from_bytes(data).unwrap())
        }
        tworker::EnabledDisabled::CONSTRUCTOR_ID => {
            Answer::EnabledDisabled(tworker::EnabledDisabled::from_bytes(data).unwrap().disabled)
        }
        tworker::NewCoefficient::CONSTRUCTOR_ID => Answer::NewCoefficient(
            tworker::NewCoefficient::from_bytes(data)
                .unwrap()
                .new_coefficient,
        ),
        id => panic!("unexpected message {id:08x}"),
    }
}

impl ProxyConn {
    /// The next message from the worker.
    pub async fn next(&mut self) -> Answer {
        let m = tokio::time::timeout(LIMIT, self.messages.recv())
            .await
            .expect("message in time")
            .expect("session open");
        decode(&m)
    }

    /// The next message, or `None` if none arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Answer> {
        match tokio::time::timeout(wait, self.messages.recv()).await {
            Ok(Some(m)) => Some(decode(&m)),
            _ => None,
        }
    }

    pub async fn send(&self, msg: &impl TlWrite) {
        self.handle.send_message(msg.to_bytes()).await.unwrap();
    }

    /// Sends `proxy.runQueryEx` for an HTTP request.
    pub async fn run(&self, id: u8, url: &str, body: &[u8]) {
        self.run_raw(id, http_request(url, body)).await;
    }

    pub async fn run_raw(&self, id: u8, query: Vec<u8>) {
        self.run_quoted(id, query, 1500).await;
    }

    /// `proxy.runQueryEx` quoting `coefficient` (what the proxy routed the request at).
    pub async fn run_quoted(&self, id: u8, query: Vec<u8>, coefficient: i64) {
        self.send(&fproxy::RunQueryEx {
            query,
            signed_payment: enums::proxy::SignedPayment::SignedPaymentEmpty(
                tproxy::SignedPaymentEmpty {},
            ),
            coefficient,
            timeout: 30.0,
            request_id: [id; 32],
            enable_debug: Some(true),
        })
        .await;
    }

    /// Waits until the proxy side sees the session closed.
    pub async fn closed(&self) {
        tokio::time::timeout(LIMIT, self.handle.closed())
            .await
            .expect("session closes in time");
    }
}

pub fn http_request(url: &str, body: &[u8]) -> Vec<u8> {
    fhttp::Request {
        method: "POST".into(),
        url: url.into(),
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

// ---------------------------------------------------------------- worker

pub fn prices() -> PriceTable {
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

pub fn worker_config(proxy: &str, engine_base: &str, state_dir: &std::path::Path) -> WorkerConfig {
    let mut timings = Timings {
        payment_status_interval: (Duration::from_secs(60), Duration::from_secs(60)),
        health_interval: Duration::from_millis(100),
        drain_timeout: Duration::from_secs(2),
        ..Timings::default()
    };
    timings.backoff.base = Duration::from_millis(50);
    timings.backoff.max = Duration::from_millis(300);
    WorkerConfig {
        proxies: vec![proxy.to_owned()],
        owner_address: addr(0x44).to_string(),
        model: MODEL.into(),
        coefficient: 1500,
        max_active_requests: 4,
        is_test: true,
        prices: prices(),
        min_payout_nanoton: 1000,
        state_dir: state_dir.to_owned(),
        engine: engine(engine_base),
        connector: connector(),
        admin: None,
        payout_sink: None,
        contract_params: None,
        root_address: None,
        check_proxy_hashes: true,
        tokenizer: None,
        timings,
    }
}

pub fn admin_config(token_file: Option<std::path::PathBuf>) -> AdminConfig {
    AdminConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        token_file,
        allowed_origins: vec![],
        allowed_hosts: vec![],
    }
}

/// Records submitted payouts.
#[derive(Default)]
pub struct RecordingSink {
    pub submitted: Mutex<Vec<(String, Vec<u8>, u64)>>,
}

impl PayoutSink for RecordingSink {
    fn submit(
        &self,
        proxy_sc: &str,
        boc: Vec<u8>,
        tokens: u64,
    ) -> BoxFuture<'_, Result<(), String>> {
        self.submitted
            .lock()
            .unwrap()
            .push((proxy_sc.to_owned(), boc, tokens));
        Box::pin(async { Ok(()) })
    }
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
