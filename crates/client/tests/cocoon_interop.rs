//! COCOON interoperability, client side (issue 18 §1): every message a COCOON proxy sends a
//! client, played by a scripted proxy over a real RA-TLS session (sim attestation), as the
//! OpenAI API user of the gateway sees it.
//!
//! The proxy's answers are encoded by hand from the schema (`cocoon_testkit::handmade`, as
//! `hand`: constructor ids as published by COCOON, fields written byte by byte, shared with
//! the proxy's and the worker's interop tests), not by our encoder, so the client
//! is checked against the wire format rather than against itself. The handshake answers use
//! our types: they are not what is under test here.
//!
//! COCOON's proxy (`runners/proxy/ProxyRunningRequest.cpp`, `ProxyRunner.cpp`) answers
//! clients of protocol 1 and 2 with the `Ex` forms, but refuses a request with the version 0
//! `client.queryAnswerError` (balance too low, no workers, unknown model, config too old,
//! client closing, proxy disabled) and reports its own failures (timeout in proxy, reserved
//! tokens depleted, out-of-order parts) with `client.queryAnswerError` before the answer's
//! head and `client.queryAnswerPartError` after it, whatever version was negotiated. The
//! tests check each arrives as the OpenAI error at once (not a 504 at the deadline) and
//! that a refusal fails over to another proxy.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use cocoon_client::{ClientConfig, ClientHandle};
use cocoon_net::{Incoming, SessionHandle};
use cocoon_testkit::client::{gateway_config, start_gateway};
use cocoon_testkit::fixtures::root_with_proxy_image;
use cocoon_testkit::identity::acceptor;
use cocoon_testkit::prelude::*;
use cocoon_tl::functions::client as fclient;
use cocoon_tl::{Identifiable, TlRead, peek_constructor};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::payments::{PaymentPayload, SignedOp};
use cocoon_ton::root::RootConfig;
use cocoon_ton::{HashBytes, StdAddr};
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::mpsc;

use cocoon_testkit::handmade as hand;

/// The request's deadline (the body's `timeout`); every answer here must come well before.
const DEADLINE_SECS: u64 = 60;

// ---------------------------------------------------------------- the scripted proxy

/// The proxy's contract (its owner is `addr(0x33)`, its key `PROXY_SEED`'s).
fn proxy_sc() -> StdAddr {
    addr(0x11)
}

fn test_root() -> RootConfig {
    root_with_proxy_image(1, true)
}

/// Our client contract with the scripted proxy, as the client derives it.
fn client_sc() -> StdAddr {
    let key = SigningKey::from_seed(&PROXY_SEED).unwrap().public_key();
    cocoon_ton::contracts::client_contract(
        &test_root().params,
        &addr(0x42),
        &proxy_sc(),
        &HashBytes(key),
    )
    .unwrap()
    .address
}

/// A client charge receipt for `tokens`, signed by the proxy key for our client contract.
fn receipt(tokens: u64) -> Vec<u8> {
    let key = SigningKey::from_seed(&PROXY_SEED).unwrap();
    PaymentPayload {
        op: SignedOp::ClientCharge,
        query_id: tokens,
        tokens: Some(tokens),
        contract: client_sc(),
    }
    .sign(&key, &client_sc())
    .unwrap()
    .to_boc()
    .unwrap()
}

/// A `client.runQueryEx` the scripted proxy received, with the session to answer on.
struct Run {
    handle: SessionHandle,
    query: fclient::RunQueryEx,
}

impl Run {
    async fn send(&self, msg: Vec<u8>) {
        self.handle.send_message(msg).await.unwrap();
    }

    fn id(&self) -> [u8; 32] {
        self.query.request_id
    }

    /// `client.queryAnswerError` (a refusal, or a failure before the head) with `tokens`.
    async fn refuse(&self, code: i32, text: &str, tokens: [i64; 5]) {
        self.send(hand::client_query_answer_error(
            code,
            text,
            self.id(),
            tokens,
        ))
        .await;
    }

    /// `client.queryAnswerPartError` (a failure after the head) with `tokens`.
    async fn part_error(&self, code: i32, text: &str, tokens: [i64; 5]) {
        self.send(hand::client_query_answer_part_error(
            code,
            text,
            self.id(),
            tokens,
        ))
        .await;
    }

    /// The head as `client.queryAnswer` (version 0): HTTP 200 of `kind` with `body`.
    async fn head_v0(&self, kind: (&str, &str), body: &[u8], done: bool, tokens: [i64; 5]) {
        let head = hand::http_response(200, &[kind], body);
        self.send(hand::client_query_answer(&head, done, self.id(), tokens))
            .await;
    }

    /// A `client.queryAnswerPart` (version 0).
    async fn part_v0(&self, body: &[u8], done: bool, tokens: [i64; 5]) {
        self.send(hand::client_query_answer_part(
            body,
            done,
            self.id(),
            tokens,
        ))
        .await;
    }

    /// The head as `client.queryAnswerEx`: HTTP 200 of `kind` with `body`, final when `f`.
    async fn head_ex(&self, kind: (&str, &str), body: &[u8], f: Option<&hand::ClientFinal>) {
        let head = hand::http_response(200, &[kind], body);
        self.send(hand::client_query_answer_ex(self.id(), &head, f))
            .await;
    }

    /// A `client.queryAnswerPartEx`, final when `f`.
    async fn part_ex(&self, body: &[u8], f: Option<&hand::ClientFinal>) {
        self.send(hand::client_query_answer_part_ex(self.id(), body, f))
            .await;
    }

    /// A `client.queryAnswerErrorEx`, with final info when `f`.
    async fn error_ex(&self, code: i32, text: &str, f: Option<&hand::ClientFinal>) {
        self.send(hand::client_query_answer_error_ex(self.id(), code, text, f))
            .await;
    }
}

/// A proxy that completes the handshake as COCOON's does (protocol `proto`, short
/// authorisation with our secret) and hands every request to the test.
struct Scripted {
    addr: String,
    runs: mpsc::UnboundedReceiver<Run>,
}

/// How the scripted proxy answers the handshake.
#[derive(Clone, Copy)]
enum Handshake {
    /// As COCOON's proxy does for a known client: short authorisation, success.
    Accept,
    /// `client.connectToProxy` answered by `tcp.queryError` (COCOON: no common version).
    RefuseConnect(i32, &'static str),
    /// `client.authorizeWithProxyShort` answered by `tcp.queryError` (COCOON: `sha256
    /// mismatch`, `client is closing`).
    RefuseAuthQuery(i32, &'static str),
    /// `client.authorizationWithProxyFailed` (declared; COCOON's proxy has the code but
    /// calls it nowhere).
    RefuseAuth(i32, &'static str),
}

impl Scripted {
    async fn start(proto: i32) -> Scripted {
        Self::start_with(proto, Handshake::Accept).await
    }

    async fn start_with(proto: i32, handshake: Handshake) -> Scripted {
        let acceptor = acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, runs) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Ok((handle, incoming, _peer)) = acceptor.accept(tcp).await {
                        serve(handle, incoming, proto, handshake, tx).await;
                    }
                });
            }
        });
        Scripted { addr, runs }
    }

    /// A chat completion posted through the gateway at `base` (see [`post_with`]), and
    /// that request as this proxy received it.
    async fn ask(&mut self, base: &str, stream: bool, debug: bool) -> (Task, Run) {
        let t = post_with(base, stream, debug);
        (t, self.next().await)
    }

    /// The next request the client sent.
    async fn next(&mut self) -> Run {
        tokio::time::timeout(LIMIT, self.runs.recv())
            .await
            .expect("a request in time")
            .expect("proxy alive")
    }
}

async fn serve(
    handle: SessionHandle,
    mut incoming: mpsc::Receiver<Incoming>,
    proto: i32,
    handshake: Handshake,
    runs: mpsc::UnboundedSender<Run>,
) {
    let key = SigningKey::from_seed(&PROXY_SEED).unwrap().public_key();
    while let Some(inc) = incoming.recv().await {
        match inc {
            Incoming::Query { data, responder } => match peek_constructor(&data).unwrap_or(0) {
                fclient::ConnectToProxy::CONSTRUCTOR_ID => {
                    let _ = match handshake {
                        Handshake::RefuseConnect(code, text) => responder.error(code, text),
                        _ => responder.answer(hand::client_connected_to_proxy(
                            key,
                            &addr(0x33).to_string(),
                            &proxy_sc().to_string(),
                            proto,
                            &client_sc().to_string(),
                            sha2::Sha256::digest(SECRET).into(),
                        )),
                    };
                }
                fclient::AuthorizeWithProxyShort::CONSTRUCTOR_ID => {
                    let q = fclient::AuthorizeWithProxyShort::from_bytes(&data).unwrap();
                    assert_eq!(q.data, SECRET);
                    let _ = match handshake {
                        Handshake::RefuseAuthQuery(code, text) => responder.error(code, text),
                        Handshake::RefuseAuth(code, text) => {
                            responder.answer(hand::client_authorization_failed(code, text))
                        }
                        _ => responder.answer(hand::client_authorization_success(None, 0, 0)),
                    };
                }
                fclient::UpdatePaymentStatus::CONSTRUCTOR_ID => {
                    let _ = responder.answer(hand::client_payment_status(None, 0, 0));
                }
                fclient::GetWorkerTypesV2::CONSTRUCTOR_ID => {
                    let _ = responder.answer(hand::client_worker_types_v2(
                        "Smol",
                        &[(1500, 1, 4), (1000, 0, 2)],
                    ));
                }
                _ => {
                    let _ = responder.error(621, "unexpected query");
                }
            },
            Incoming::Message { data } => {
                if peek_constructor(&data) == Some(fclient::RunQueryEx::CONSTRUCTOR_ID) {
                    let query = fclient::RunQueryEx::from_bytes(&data).unwrap();
                    let _ = runs.send(Run {
                        handle: handle.clone(),
                        query,
                    });
                }
            }
        }
    }
}

/// The request the client sent to whichever of `a` and `b` it picked first, and the other.
async fn first_of<'a>(a: &'a mut Scripted, b: &'a mut Scripted) -> (Run, &'a mut Scripted) {
    tokio::select! {
        r = a.next() => (r, b),
        r = b.next() => (r, a),
    }
}

// ---------------------------------------------------------------- the gateway and its user

fn config(proxies: Vec<String>) -> ClientConfig {
    let mut cfg = gateway_config(proxies, test_root());
    cfg.connections = 2;
    // COCOON's proxies speak protocol 2: their answers carry no receipts.
    cfg.require_receipts = false;
    cfg
}

/// A gateway in front of `proxies` scripted proxies, all ready.
async fn gateway(proxies: &[&Scripted]) -> (ClientHandle, String) {
    // reqwest (the API user here) finds rustls' provider process-wide.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = config(proxies.iter().map(|p| p.addr.clone()).collect());
    start_gateway(cfg, proxies.len()).await
}

/// What the API user got, and how long it took.
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
    took: Duration,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }

    /// An OpenAI error body of `status` and `type`, whose message names `text`, well
    /// before the request's deadline.
    fn assert_error(&self, status: u16, kind: &str, text: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        let e = self.json();
        assert_eq!(e["error"]["type"], kind, "{e}");
        let m = e["error"]["message"].as_str().unwrap();
        assert!(m.contains(text), "{m}");
        self.assert_prompt();
    }

    /// A 200 whose body is [`COMPLETION`] priced ([`PRICED`]).
    fn assert_priced(&self) {
        assert_eq!(self.status, 200, "{}", self.body);
        assert_eq!(self.body, PRICED);
    }

    fn assert_prompt(&self) {
        assert!(
            self.took < Duration::from_secs(DEADLINE_SECS / 3),
            "took {:?} of a {DEADLINE_SECS} s deadline",
            self.took
        );
    }
}

/// The API user's request under way; [`got`] reads its answer.
type Task = tokio::task::JoinHandle<Got>;

/// Starts a chat completion through the gateway; the answer is read by the task.
fn post(base: &str, stream: bool) -> Task {
    post_with(base, stream, false)
}

/// As [`post`], with COCOON's `enable_debug` when `debug`.
fn post_with(base: &str, stream: bool, debug: bool) -> Task {
    let url = format!("{base}/v1/chat/completions");
    let mut body = json!({
        "model": "Smol",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": stream,
        "max_tokens": 50,
        "timeout": DEADLINE_SECS,
    });
    if debug {
        body["enable_debug"] = json!(true);
    }
    tokio::spawn(async move {
        let start = Instant::now();
        let r = reqwest::Client::new()
            .post(url)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await.unwrap();
        Got {
            status,
            headers,
            body,
            took: start.elapsed(),
        }
    })
}

async fn got(t: Task) -> Got {
    tokio::time::timeout(LIMIT, t)
        .await
        .expect("the API user gets an answer in time")
        .unwrap()
}

const JSON: (&str, &str) = ("Content-Type", "application/json");
const SSE: (&str, &str) = ("Content-Type", "text/event-stream");
const COMPLETION: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
/// [`COMPLETION`] as the app gets it: the client adds COCOON's cost fields at what it books
/// ([`TOKENS`] × 20 nanoTON).
const PRICED: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7,"prompt_total_cost":100,"completion_total_cost":40,"total_cost":140}}"#;
const CHUNK_1: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";
const CHUNK_2: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"}}]}\n\n";
const DONE: &str = "data: [DONE]\n\n";
const TOKENS: [i64; 5] = [5, 0, 2, 0, 7];
const NONE: [i64; 5] = [0; 5];

// ---------------------------------------------------------------- the tests

/// `client.queryAnswerError` (a refusal, or a failure at the proxy before the answer's
/// head), under both versions a COCOON proxy negotiates: the OpenAI error at once, each
/// of COCOON's refusals with its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_answer_error_is_the_openai_error_at_once() {
    let cases: [(i32, &str, u16, &str); 8] = [
        (
            602,
            "client balance is too low: max_tokens=50 tokens_payed=0 tokens_used=0 tokens_reserved=0 tokens_stake=0",
            402,
            "insufficient_funds",
        ),
        (651, "balance is too low", 402, "insufficient_funds"),
        (651, "no workers for model Smol", 404, "not_found_error"),
        (621, "unknown model Smol", 404, "not_found_error"),
        (
            651,
            "can run this query with coefficient=9000",
            429,
            "rate_limit_error",
        ),
        (
            651,
            "no ready workers for modelSmol",
            429,
            "rate_limit_error",
        ),
        (652, "timeout in proxy", 504, "upstream_error"),
        (
            602,
            "active config version is too low",
            502,
            "upstream_error",
        ),
    ];
    for proto in [1, 2] {
        let mut p = Scripted::start(proto).await;
        let (c, base) = gateway(&[&p]).await;
        assert_eq!(c.proxies()[0].proto, Some(proto));
        for (code, text, status, kind) in cases {
            let (t, run) = p.ask(&base, false, false).await;
            run.refuse(code, text, NONE).await;
            got(t).await.assert_error(status, kind, text);
        }
        // The same refusal of a streamed request: no stream starts, the error is the answer.
        let (t, run) = p.ask(&base, true, false).await;
        run.refuse(651, "client is closing", NONE).await;
        got(t)
            .await
            .assert_error(502, "upstream_error", "client is closing");
        // The session stays: a later request is served.
        let (t, run) = p.ask(&base, false, false).await;
        let f = hand::ClientFinal {
            tokens: TOKENS,
            debug: None,
            times: None,
        };
        run.head_ex(JSON, COMPLETION.as_bytes(), Some(&f)).await;
        got(t).await.assert_priced();
        assert_eq!(c.proxies()[0].sessions, 1, "one session throughout");
        c.shutdown().await;
    }
}

/// `client.queryAnswerPartError` after an answer's head (COCOON: reserved tokens depleted,
/// timeout in proxy): a whole answer becomes the error; a stream ends with the error as its
/// last SSE event, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_answer_part_error_ends_the_answer_at_once() {
    let mut p = Scripted::start(2).await;
    let (c, base) = gateway(&[&p]).await;

    let (t, run) = p.ask(&base, false, false).await;
    run.head_ex(JSON, b"{\"id\":", None).await;
    let depleted = "reserved_tokens depleted: reserved_tokens=60 used=5+61";
    run.part_error(602, depleted, [5, 0, 61, 0, 66]).await;
    got(t)
        .await
        .assert_error(502, "upstream_error", "reserved_tokens depleted");

    let (t, run) = p.ask(&base, true, false).await;
    run.head_ex(SSE, CHUNK_1.as_bytes(), None).await;
    run.part_ex(CHUNK_2.as_bytes(), None).await;
    run.part_error(652, "timeout in proxy", TOKENS).await;
    let g = got(t).await;
    assert_eq!(g.status, 200);
    g.assert_prompt();
    let (relayed, last) = g.body.rsplit_once("data: ").unwrap();
    assert_eq!(relayed, format!("{CHUNK_1}{CHUNK_2}"));
    let e: Value = serde_json::from_str(last.trim()).unwrap();
    assert_eq!(e["error"]["type"], "upstream_error", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timeout in proxy")
    );
    assert_eq!(c.proxies()[0].sessions, 1);
    c.shutdown().await;
}

/// `client.queryAnswer` and `client.queryAnswerPart` (protocol 0; COCOON sends them to a
/// version 0 client only, which ours never is, but a proxy may): the answer delivered
/// whole and streamed, with the usage of its token count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_0_answers_are_delivered_whole_and_streamed() {
    let mut p = Scripted::start(2).await;
    let (c, base) = gateway(&[&p]).await;

    // Whole: one `client.queryAnswer` with is_completed.
    let (t, run) = p.ask(&base, false, false).await;
    run.head_v0(JSON, COMPLETION.as_bytes(), true, TOKENS).await;
    let g = got(t).await;
    g.assert_priced();
    assert_eq!(g.header("x-cocoon-tokens"), "7");
    g.assert_prompt();

    // Whole in pieces: head, then parts, the last completed.
    let (t, run) = p.ask(&base, false, false).await;
    let (a, b) = COMPLETION.split_at(40);
    run.head_v0(JSON, a.as_bytes(), false, NONE).await;
    run.part_v0(b.as_bytes(), true, TOKENS).await;
    let g = got(t).await;
    g.assert_priced();
    assert_eq!(g.header("x-cocoon-tokens"), "7");

    // Streamed.
    let (t, run) = p.ask(&base, true, false).await;
    run.head_v0(SSE, CHUNK_1.as_bytes(), false, NONE).await;
    run.part_v0(CHUNK_2.as_bytes(), false, NONE).await;
    run.part_v0(DONE.as_bytes(), true, TOKENS).await;
    let g = got(t).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.body, format!("{CHUNK_1}{CHUNK_2}{DONE}"));
    g.assert_prompt();
    eventually("the usage is booked", || c.stats().stats.tokens == 21).await;
    c.shutdown().await;
}

/// The proxy ends its session after the request reached it and before any answer (as a
/// proxy switching to new params ends every session): the client asks again once it
/// reconnected, and the app gets the answer, not a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_session_closed_before_any_answer_is_asked_again() {
    let mut p = Scripted::start(2).await;
    let (c, base) = gateway(&[&p]).await;
    let (t, first) = p.ask(&base, false, false).await;
    first.handle.close();
    let again = p.next().await;
    assert_eq!(again.query.model_name, first.query.model_name);
    // On a new session: the first one is closed.
    assert_eq!(c.proxies()[0].sessions, 2);
    again
        .head_v0(JSON, COMPLETION.as_bytes(), true, TOKENS)
        .await;
    let g = got(t).await;
    g.assert_priced();
    g.assert_prompt();
    c.shutdown().await;
}

/// A proxy that closes every session once a request reached it (it may have run it and
/// billed its tokens) gets the request once more, not over and over: the app gets the
/// error after the second closed session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_closing_every_session_gets_a_request_only_twice() {
    let mut p = Scripted::start(2).await;
    let (c, base) = gateway(&[&p]).await;
    let (t, first) = p.ask(&base, false, false).await;
    first.handle.close();
    let second = p.next().await;
    second.handle.close();
    let g = got(t).await;
    g.assert_error(502, "upstream_error", "connection closed");
    assert!(
        p.runs.try_recv().is_err(),
        "no third attempt reached the proxy"
    );
    assert_eq!(c.stats().stats.tokens, 0, "nothing booked");
    c.shutdown().await;
}

/// The `Ex` forms under protocols 1 and 2: whole (with the timings of version 2 and the
/// debug texts), streamed, and `client.queryAnswerErrorEx` before and after the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ex_answers_under_versions_1_and_2() {
    for proto in [1, 2] {
        let mut p = Scripted::start(proto).await;
        let (c, base) = gateway(&[&p]).await;
        let times = (proto >= 2).then_some([100.0, 103.5, 101.0, 103.0]);

        let (t, run) = p.ask(&base, false, false).await;
        let f = hand::ClientFinal {
            tokens: TOKENS,
            debug: Some(("{\"w\":1}", "{\"p\":1}")),
            times,
        };
        run.head_ex(JSON, COMPLETION.as_bytes(), Some(&f)).await;
        let g = got(t).await;
        g.assert_priced();
        assert_eq!(g.header("x-cocoon-tokens"), "7");
        if proto >= 2 {
            assert_eq!(g.header("x-cocoon-proxy-seconds"), "3.500");
            assert_eq!(g.header("x-cocoon-worker-seconds"), "2.000");
        } else {
            assert_eq!(g.header("x-cocoon-proxy-seconds"), "");
        }

        let (t, run) = p.ask(&base, true, false).await;
        run.head_ex(SSE, CHUNK_1.as_bytes(), None).await;
        run.part_ex(CHUNK_2.as_bytes(), None).await;
        let f = hand::ClientFinal {
            tokens: TOKENS,
            debug: None,
            times,
        };
        run.part_ex(DONE.as_bytes(), Some(&f)).await;
        let g = got(t).await;
        assert_eq!(g.status, 200);
        assert_eq!(g.body, format!("{CHUNK_1}{CHUNK_2}{DONE}"));

        // An error from the worker before the head, with its final info.
        let (t, run) = p.ask(&base, false, false).await;
        let f = hand::ClientFinal {
            tokens: NONE,
            debug: None,
            times,
        };
        run.error_ex(652, "worker: timeout", Some(&f)).await;
        got(t)
            .await
            .assert_error(504, "upstream_error", "worker: timeout");

        // After the head, without final info.
        let (t, run) = p.ask(&base, false, false).await;
        run.head_ex(JSON, b"{", None).await;
        run.error_ex(601, "worker: engine failed", None).await;
        got(t)
            .await
            .assert_error(502, "upstream_error", "engine failed");
        c.shutdown().await;
    }
}

/// What COCOON's client adds to an answer, for an answer from a COCOON proxy (version 2):
/// `X-Cocoon-Client-Start/End` on the head; every usage object priced at what the client
/// books from the final info (here a worker's body claims other costs); with
/// `enable_debug` the proxy's, the worker's and the client's debug objects as the whole
/// answer's `debug` member, a stream's last line, or beside the error that ends an answer;
/// without it, nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_fields_client_timing_headers_and_debug_in_answers() {
    let mut p = Scripted::start(2).await;
    let (c, base) = gateway(&[&p]).await;
    let claimed = r#"{"id":"c1","object":"chat.completion","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7,"prompt_total_cost":9000,"completion_total_cost":9000,"total_cost":18000}}"#;
    let usage_event = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7,\"total_cost\":18000}}\n\n";
    let f = hand::ClientFinal {
        tokens: TOKENS,
        debug: Some((
            "{\"type\":\"worker_stats\",\"w\":1}",
            "{\"type\":\"proxy_stats\",\"p\":1}",
        )),
        times: Some([100.0, 103.5, 101.0, 103.0]),
    };
    let booked = |v: &Value| {
        assert_eq!(v["prompt_total_cost"], 100, "{v}");
        assert_eq!(v["completion_total_cost"], 40, "{v}");
        assert_eq!(v["total_cost"], 140, "{v}");
    };
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let timed = |g: &Got, before: f64, after: f64| {
        let start: f64 = g.header("x-cocoon-client-start").parse().unwrap();
        let end: f64 = g.header("x-cocoon-client-end").parse().unwrap();
        assert!(
            before <= start && start <= end && end <= after,
            "{start} {end}"
        );
        assert_eq!(
            g.header("x-cocoon-client-start")
                .split('.')
                .nth(1)
                .unwrap()
                .len(),
            6
        );
    };

    for debug in [false, true] {
        // Whole.
        let before = unix();
        let (t, run) = p.ask(&base, false, debug).await;
        assert_eq!(run.query.enable_debug, debug.then_some(true));
        run.head_ex(JSON, claimed.as_bytes(), Some(&f)).await;
        let g = got(t).await;
        timed(&g, before, unix());
        assert_eq!(g.status, 200, "{}", g.body);
        assert_eq!(g.header("x-cocoon-cost-nanoton"), "140");
        let v = g.json();
        booked(&v["usage"]);
        if debug {
            let d = &v["debug"];
            assert_eq!(d["worker"], json!({"type": "worker_stats", "w": 1}), "{d}");
            assert_eq!(d["proxy"], json!({"type": "proxy_stats", "p": 1}), "{d}");
            assert_eq!(d["client"]["type"], "client_stats", "{d}");
            let t = |k: &str| d["client"][k].as_f64().unwrap();
            assert!(before <= t("start_time"));
            assert!(t("start_time") <= t("answer_receive_start_at"));
            assert!(t("answer_receive_start_at") <= t("answer_receive_end_at"));
        } else {
            assert!(v.get("debug").is_none(), "{v}");
        }

        // Streamed: the usage event in one part, `[DONE]` and the final info in the next.
        let before = unix();
        let (t, run) = p.ask(&base, true, debug).await;
        run.head_ex(SSE, CHUNK_1.as_bytes(), None).await;
        run.part_ex(usage_event.as_bytes(), None).await;
        run.part_ex(DONE.as_bytes(), Some(&f)).await;
        let g = got(t).await;
        timed(&g, before, unix());
        assert_eq!(g.status, 200);
        let (events, tail) = g.body.split_at(g.body.rfind(DONE).unwrap() + DONE.len());
        assert!(events.starts_with(CHUNK_1), "{}", g.body);
        let usage: Value = serde_json::from_str(
            events[CHUNK_1.len()..]
                .strip_prefix("data: ")
                .unwrap()
                .split("\n\n")
                .next()
                .unwrap(),
        )
        .unwrap();
        booked(&usage["usage"]);
        if debug {
            let line: Value = serde_json::from_str(tail.strip_suffix('\n').unwrap()).unwrap();
            assert_eq!(line["debug"]["worker"]["w"], 1, "{line}");
            assert_eq!(line["debug"]["proxy"]["p"], 1, "{line}");
            assert_eq!(line["debug"]["client"]["type"], "client_stats", "{line}");
        } else {
            assert_eq!(tail, "", "nothing after [DONE]");
        }

        // A whole answer that fails after its head: the OpenAI error, with debug beside it.
        let (t, run) = p.ask(&base, false, debug).await;
        run.head_ex(JSON, b"{", None).await;
        run.error_ex(601, "worker: engine failed", Some(&f)).await;
        let g = got(t).await;
        g.assert_error(502, "upstream_error", "engine failed");
        let v = g.json();
        if debug {
            assert_eq!(v["debug"]["worker"]["w"], 1, "{v}");
            assert_eq!(v["debug"]["client"]["type"], "client_stats", "{v}");
        } else {
            assert!(v.get("debug").is_none(), "{v}");
        }
    }
    eventually("the usage is booked", || c.stats().stats.tokens == 42).await;
    assert_eq!(c.stats().stats.spent_nanoton, 6 * 140);
    c.shutdown().await;
}

/// `proxy.clientRequestPayment` (with and without a receipt) and a bare
/// `proxy.signedPayment` / `proxy.signedPaymentEmpty`: the receipt is verified and kept,
/// the proxy's counts recorded, the session goes on (also past a message it does not
/// know).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_reports_and_receipts_are_taken() {
    let mut p = Scripted::start(2).await;
    let (c, base) = gateway(&[&p]).await;

    let (t, run) = p.ask(&base, false, false).await;
    let id = run.id();
    run.head_v0(JSON, COMPLETION.as_bytes(), true, TOKENS).await;
    assert_eq!(got(t).await.status, 200);
    run.send(hand::proxy_client_request_payment(id, None, 3, 7, 7))
        .await;
    eventually("the proxy's counts", || {
        let i = &c.proxies()[0];
        i.db_tokens == 3 && i.max_tokens == 7
    })
    .await;
    run.send(hand::proxy_client_request_payment(
        id,
        Some(&receipt(5)),
        5,
        9,
        0,
    ))
    .await;
    eventually("the receipt", || c.proxies()[0].receipt_tokens == 5).await;
    run.send(hand::signed_payment_empty()).await;
    // A constructor outside the set (id 04030201) is ignored; the session goes on.
    run.send(vec![1, 2, 3, 4]).await;
    run.send(hand::proxy_signed_payment(&receipt(8))).await;
    eventually("the bare receipt", || c.proxies()[0].receipt_tokens == 8).await;
    let i = &c.proxies()[0];
    assert_eq!((i.db_tokens, i.max_tokens, i.bad_receipts), (5, 9, 0));
    assert_eq!((i.sessions, i.state.as_str()), (1, "ready"));
    c.shutdown().await;
}

/// A refusal by `client.queryAnswerError` before the answer's head fails over to the next
/// proxy, which serves the request; when every proxy refuses, the user gets the last
/// refusal at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_answer_error_fails_over_to_another_proxy() {
    let mut a = Scripted::start(2).await;
    let mut b = Scripted::start(2).await;
    let (c, base) = gateway(&[&a, &b]).await;

    for (refusal, code) in [
        ("no workers for model Smol", 651),
        ("balance is too low", 651),
    ] {
        let t = post(&base, false);
        // Whichever proxy the client picked first refuses; the other one answers.
        let (first, second) = first_of(&mut a, &mut b).await;
        first.refuse(code, refusal, NONE).await;
        let run = second.next().await;
        assert_ne!(run.id(), first.id());
        run.head_v0(JSON, COMPLETION.as_bytes(), true, TOKENS).await;
        let g = got(t).await;
        g.assert_priced();
        assert_eq!(g.header("x-cocoon-attempts"), "2");
        g.assert_prompt();
    }

    // Both refuse: the last refusal, at once.
    let t = post(&base, false);
    let (first, second) = first_of(&mut a, &mut b).await;
    first.refuse(651, "no workers for model Smol", NONE).await;
    let run = second.next().await;
    run.refuse(602, "client balance is too low: max_tokens=50 tokens_payed=0 tokens_used=0 tokens_reserved=0 tokens_stake=0", NONE)
        .await;
    got(t)
        .await
        .assert_error(402, "insufficient_funds", "balance is too low");

    // A refusal that carries usage (the request ran and was billed) is not repeated.
    let t = post(&base, false);
    let (first, _) = first_of(&mut a, &mut b).await;
    first.refuse(651, "no workers for model Smol", TOKENS).await;
    got(t)
        .await
        .assert_error(404, "not_found_error", "no workers");
    assert!(a.runs.is_empty() && b.runs.is_empty(), "not sent again");
    c.shutdown().await;
}

/// The handshake as COCOON's proxy answers it (`client.connectedToProxy`,
/// `client.authorizationWithProxySuccess`, `client.paymentStatus`, hand-encoded) and
/// `client.getWorkerTypesV2` → `client.workerTypesV2` behind `/v1/models`; a refusal of
/// `client.connectToProxy` or of the authorisation (`tcp.queryError`, as COCOON refuses
/// them, or `client.authorizationWithProxyFailed`) leaves the proxy unused, named in the
/// error the API user gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_model_list_as_cocoon_answers_them() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let p = Scripted::start(2).await;
    let (c, base) = gateway(&[&p]).await;
    let i = &c.proxies()[0];
    assert_eq!((i.proto, i.auth.as_deref()), (Some(2), Some("short")));
    assert_eq!(
        i.client_sc.as_deref(),
        Some(client_sc().to_string().as_str())
    );
    let models: Value = reqwest::get(format!("{base}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let m = &models["data"][0];
    assert_eq!(m["id"], "Smol", "{models}");
    let coefficients: Vec<i64> = m["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["coefficient"].as_i64().unwrap())
        .collect();
    assert_eq!(coefficients, [1000, 1500]);
    assert_eq!(m["workers"][1]["running_requests"], 1);
    assert_eq!(m["workers"][1]["max_running_requests"], 4);
    // Version 2: the context length and capabilities are not asked of a COCOON proxy, so
    // they are unknown.
    assert_eq!(m["context_length"], Value::Null, "{models}");
    let caps = m["capabilities"].as_object().unwrap();
    assert_eq!(caps.len(), 7, "{models}");
    assert!(caps.values().all(Value::is_null), "{models}");
    c.shutdown().await;

    for (handshake, text) in [
        (
            Handshake::RefuseConnect(621, "cannot choose common protocol version"),
            "cannot choose common protocol version",
        ),
        (
            Handshake::RefuseConnect(651, "proxy is not participating in this iteration"),
            "proxy is not participating in this iteration",
        ),
        (
            Handshake::RefuseAuthQuery(602, "sha256 mismatch"),
            "authorisation: sha256 mismatch",
        ),
        (
            Handshake::RefuseAuth(602, "client is closing"),
            "refused by the proxy (602): client is closing",
        ),
    ] {
        let p = Scripted::start_with(2, handshake).await;
        let mut cfg = config(vec![p.addr.clone()]);
        // A request waits this long for a proxy to become ready.
        cfg.timings.connect_timeout = Duration::from_secs(1);
        let c = cocoon_client::Client::start(cfg).await.unwrap();
        eventually("the refusal is recorded", || {
            c.proxies()[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(text))
        })
        .await;
        assert_eq!(c.ready_proxies(), 0);
        let base = format!("http://{}", c.api_addr().unwrap());
        let g = got(post(&base, false)).await;
        assert_eq!(g.status, 503, "{}", g.body);
        assert!(g.body.contains(text), "{}", g.body);
        c.shutdown().await;
    }
}

/// Embeddings are ours (protocol 3): a gateway whose only proxy is COCOON's (version 2)
/// answers OpenAI's 400 naming `model` at once, and the proxy is never sent one; chat still
/// goes to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_never_reach_a_protocol_2_proxy() {
    let mut p = Scripted::start(2).await;
    let (c, base) = gateway(&[&p]).await;
    let start = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/embeddings"))
        .json(&json!({"model": "Smol", "input": ["hello", "world"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "model", "{e}");
    assert_eq!(e["error"]["code"], "model_not_supported", "{e}");
    assert!(start.elapsed() < Duration::from_secs(5));
    let (t, run) = p.ask(&base, false, false).await;
    assert!(
        run.query.query.windows(6).any(|w| w == b"/chat/"),
        "the first request the proxy saw is the chat one"
    );
    run.head_v0(JSON, COMPLETION.as_bytes(), true, TOKENS).await;
    got(t).await.assert_priced();
    assert!(p.runs.try_recv().is_err(), "nothing else reached the proxy");
    c.shutdown().await;
}
