//! A fake proxy for worker tests: an RA-TLS listener (sim attestation) performing the proxy
//! side of the worker handshake as [`Behavior`] says, handing each completed session to the
//! test as a [`ProxyConn`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cocoon_net::{Incoming, Responder, SessionHandle};
use cocoon_tl::functions::{proxy as fproxy, worker as fworker};
use cocoon_tl::types::{proxy as tproxy, worker as tworker};
use cocoon_tl::{Identifiable, TlRead, TlWrite, enums, peek_constructor};
use cocoon_ton::StdAddr;
use cocoon_ton::keys::SigningKey;
use cocoon_ton::payments::{PaymentPayload, SignedOp};
use tokio::sync::mpsc;

use crate::decode::{CHAT, FromWorker, from_worker, http_request};
use crate::engine::{EngineState, fake_engine};
use crate::fixtures::{LIMIT, PROXY_SEED, addr};
use crate::identity::acceptor;

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
    /// Answer the worker's queries with frames encoded by hand (`crate::handmade`), as a
    /// COCOON proxy would write them, instead of with `cocoon-tl`'s encoder.
    pub handmade: bool,
    /// Refuse `worker.connectToProxy` with this `tcp.queryError` (code, message).
    pub refuse_connect: Option<(i32, String)>,
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
            handmade: false,
            refuse_connect: None,
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
    /// Answer receipts the worker sent (protocol 3), set aside by [`ProxyConn::next`].
    pub receipts: Vec<tproxy::AnswerReceipt>,
    /// The context length of the worker's last `worker.modelInfo` (version 3), which
    /// [`ProxyConn::next`] takes in passing.
    pub context_length: Option<i32>,
}

/// Handshake steps the proxy saw (including refused handshakes).
#[derive(Clone, Debug)]
pub enum HandshakeEvent {
    Compare(fworker::CompareBalanceWithProxy),
    Completed,
}

/// The fake proxy.
pub struct TestProxy {
    pub addr: String,
    pub key: SigningKey,
    pub proxy_sc: StdAddr,
    pub worker_sc: StdAddr,
    pub behavior: Arc<Mutex<Behavior>>,
    pub conns: mpsc::UnboundedReceiver<ProxyConn>,
    pub events: mpsc::UnboundedReceiver<HandshakeEvent>,
}

impl TestProxy {
    /// A proxy naming `addr(0x22)` as the worker's contract.
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
        let acceptor = acceptor();
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
            conn_tx,
            ev_tx,
        });
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    if let Ok((handle, incoming, _peer)) = acceptor.accept(tcp).await {
                        proxy_session(ctx, handle, incoming).await;
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

    /// The next worker session, after checking its handshake went the first time's way:
    /// the totals compared, then completed.
    pub async fn next_first_conn(&mut self) -> ProxyConn {
        let c = self.next_conn().await;
        let compare = self.next_event().await;
        assert!(matches!(compare, HandshakeEvent::Compare(_)), "{compare:?}");
        let done = self.next_event().await;
        assert!(matches!(done, HandshakeEvent::Completed), "{done:?}");
        c
    }

    /// A signed payout for `tokens` to the worker contract, signed by the proxy key.
    pub fn payment(&self, tokens: u64) -> Vec<u8> {
        sign_payment(&self.key, &self.worker_sc, tokens)
    }

    /// The proxy's payment message for `tokens` (signed payout, database total and maximum
    /// all `tokens`), for request `[9; 32]` of 5 tokens.
    pub fn payment_request(&self, tokens: u64) -> tproxy::WorkerRequestPayment {
        tproxy::WorkerRequestPayment {
            request_id: [9; 32],
            signed_payment: enums::proxy::SignedPayment::SignedPayment(tproxy::SignedPayment {
                data: self.payment(tokens),
            }),
            db_tokens: tokens as i64,
            max_tokens: tokens as i64,
            request_tokens: 5,
            request_client_owner: String::new(),
        }
    }

    /// Changes what the proxy answers from now on.
    pub fn set(&self, f: impl FnOnce(&mut Behavior)) {
        f(&mut self.behavior.lock().unwrap());
    }

    /// Sets the signed payout, the database total and the maximum to `tokens` alike.
    pub fn set_totals(&self, tokens: u64) {
        self.set(|b| {
            b.signed = tokens;
            b.db = tokens as i64;
            b.max = tokens as i64;
        });
    }
}

/// A worker payout for `tokens` to `worker_sc`, signed by `key`, as a BOC.
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
    conn_tx: mpsc::UnboundedSender<ProxyConn>,
    ev_tx: mpsc::UnboundedSender<HandshakeEvent>,
}

impl ProxyCtx {
    /// The signed payout for `tokens` as a BOC (none for 0).
    fn boc(&self, tokens: u64) -> Option<Vec<u8>> {
        (tokens > 0).then(|| sign_payment(&self.key, &self.worker_sc, tokens))
    }

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

/// One worker session's handshake state.
struct Session {
    handle: SessionHandle,
    messages: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
    params: Option<tworker::Params>,
    compare: Option<fworker::CompareBalanceWithProxy>,
}

async fn proxy_session(
    ctx: Arc<ProxyCtx>,
    handle: SessionHandle,
    mut incoming: mpsc::Receiver<Incoming>,
) {
    let (msg_tx, msg_rx) = mpsc::unbounded_channel();
    let mut s = Session {
        handle,
        messages: Some(msg_rx),
        params: None,
        compare: None,
    };
    while let Some(inc) = incoming.recv().await {
        match inc {
            Incoming::Message { data } => {
                let _ = msg_tx.send(data);
            }
            Incoming::Query { data, responder } => answer(&ctx, &mut s, &data, responder),
        }
    }
}

/// The hand-encoded answer to one of the worker's queries, or `None` to answer as usual.
fn handmade_answer(ctx: &ProxyCtx, b: &Behavior, data: &[u8]) -> Option<Vec<u8>> {
    use crate::handmade as hm;
    Some(match peek_constructor(data).unwrap_or(0) {
        fworker::ConnectToProxy::CONSTRUCTOR_ID => hm::worker_connected_to_proxy(
            ctx.pubkey,
            &addr(0x33).to_string(),
            &ctx.proxy_sc.to_string(),
            b.proto,
            &ctx.worker_sc.to_string(),
        ),
        fworker::CompareBalanceWithProxy::CONSTRUCTOR_ID => {
            hm::worker_compare_result(ctx.boc(b.signed).as_deref(), b.db, b.max, b.compare_error)
        }
        fworker::ExtendedCompareBalanceWithProxy::CONSTRUCTOR_ID => {
            hm::worker_extended_compare_result(0)
        }
        fworker::ProxyHandshakeComplete::CONSTRUCTOR_ID => hm::worker_handshake_completed(),
        fworker::UpdatePaymentStatus::CONSTRUCTOR_ID => {
            hm::worker_payment_status(ctx.boc(b.signed).as_deref(), b.db, b.max)
        }
        _ => return None,
    })
}

/// Answers one of the worker's queries as the behaviour says.
fn answer(ctx: &ProxyCtx, s: &mut Session, data: &[u8], responder: Responder) {
    let b = ctx.behavior.lock().unwrap().clone();
    // Hand-encoded bytes when asked for; the session state and events as usual either way.
    let reply = |responder: Responder, tl: &dyn Fn() -> Vec<u8>| {
        let bytes = match b.handmade.then(|| handmade_answer(ctx, &b, data)).flatten() {
            Some(h) => h,
            None => tl(),
        };
        let _ = responder.answer(bytes);
    };
    match peek_constructor(data).unwrap_or(0) {
        fworker::ConnectToProxy::CONSTRUCTOR_ID => {
            if let Some((code, msg)) = b.refuse_connect.clone() {
                let _ = responder.error(code, msg);
                return;
            }
            let q = fworker::ConnectToProxy::from_bytes(data).unwrap();
            s.params = Some(q.params);
            reply(responder, &|| {
                tworker::ConnectedToProxy {
                    params: tproxy::Params {
                        proxy_public_key: ctx.pubkey,
                        proxy_owner_address: addr(0x33).to_string(),
                        proxy_sc_address: ctx.proxy_sc.to_string(),
                        is_test: Some(b.is_test),
                        proto_version: Some(b.proto),
                    },
                    worker_sc_address: ctx.worker_sc.to_string(),
                }
                .to_bytes()
            });
        }
        fworker::CompareBalanceWithProxy::CONSTRUCTOR_ID => {
            let q = fworker::CompareBalanceWithProxy::from_bytes(data).unwrap();
            let _ = ctx.ev_tx.send(HandshakeEvent::Compare(q.clone()));
            s.compare = Some(q);
            reply(responder, &|| {
                tworker::CompareBalanceWithProxyResult {
                    signed_payment: ctx.signed(b.signed),
                    tokens_committed_to_db: b.db,
                    max_tokens: b.max,
                    error_code: b.compare_error,
                }
                .to_bytes()
            });
        }
        fworker::ExtendedCompareBalanceWithProxy::CONSTRUCTOR_ID => {
            reply(responder, &|| {
                tworker::ExtendedCompareBalanceWithProxyResult { error_code: 0 }.to_bytes()
            });
        }
        fworker::ProxyHandshakeComplete::CONSTRUCTOR_ID => {
            let q = fworker::ProxyHandshakeComplete::from_bytes(data).unwrap();
            reply(responder, &|| {
                tworker::ProxyHandshakeCompleted {}.to_bytes()
            });
            let _ = ctx.ev_tx.send(HandshakeEvent::Completed);
            if let (Some(p), Some(c), Some(rx)) =
                (s.params.clone(), s.compare.clone(), s.messages.take())
            {
                let _ = ctx.conn_tx.send(ProxyConn {
                    handle: s.handle.clone(),
                    messages: rx,
                    params: p,
                    compare: c,
                    is_disabled: q.is_disabled,
                    receipts: Vec::new(),
                    context_length: None,
                });
            }
        }
        fworker::UpdatePaymentStatus::CONSTRUCTOR_ID => {
            reply(responder, &|| {
                tworker::PaymentStatus {
                    signed_payment: ctx.signed(b.signed),
                    db_tokens: b.db,
                    max_tokens: b.max,
                }
                .to_bytes()
            });
            ctx.behavior.lock().unwrap().status_answers += 1;
        }
        _ => {
            let _ = responder.error(621, "unexpected query");
        }
    }
}

impl ProxyConn {
    /// The next message from the worker.
    pub async fn next(&mut self) -> FromWorker {
        loop {
            let m = tokio::time::timeout(LIMIT, self.messages.recv())
                .await
                .expect("message in time")
                .expect("session open");
            match from_worker(&m) {
                FromWorker::Receipt(r) => self.receipts.push(r),
                FromWorker::ModelInfo(n) => self.context_length = Some(n),
                other => return other,
            }
        }
    }

    /// The next message, or `None` if none arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<FromWorker> {
        let end = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(end, self.messages.recv()).await {
                Ok(Some(m)) => match from_worker(&m) {
                    FromWorker::Receipt(r) => self.receipts.push(r),
                    FromWorker::ModelInfo(n) => self.context_length = Some(n),
                    other => return Some(other),
                },
                _ => return None,
            }
        }
    }

    /// Reads the worker's messages up to the answer part carrying the final info; returns it.
    pub async fn final_info(&mut self) -> Option<tproxy::QueryFinalInfo> {
        loop {
            if let FromWorker::Part(p) = self.next().await
                && p.final_info.is_some()
            {
                return p.final_info;
            }
        }
    }

    /// Sends a TL message to the worker.
    pub async fn send(&self, msg: &impl TlWrite) {
        self.handle.send_message(msg.to_bytes()).await.unwrap();
    }

    /// Sends `proxy.runQueryEx` for an HTTP request.
    pub async fn run(&self, id: u8, url: &str, body: &[u8]) {
        self.run_raw(id, http_request(url, body)).await;
    }

    /// Sends `proxy.runQueryEx` for a chat request to the fake engine in `mode`.
    pub async fn run_chat(&self, id: u8, mode: &str, stream: bool) {
        self.run(id, CHAT, &crate::decode::chat_body(mode, stream))
            .await;
    }

    /// Sends `proxy.runQueryEx` for an encoded query, at the worker's coefficient of 1.5.
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

/// What a worker test starts from: a fake engine (base URL and state), a [`TestProxy`] and a
/// state directory.
pub async fn worker_rig() -> (String, EngineState, TestProxy, tempfile::TempDir) {
    let (base, engine) = fake_engine().await;
    let proxy = TestProxy::start().await;
    (base, engine, proxy, tempfile::tempdir().unwrap())
}
