//! Attacks on the proxy's books, each performed through the real path (a client and a worker
//! over RA-TLS to a running proxy) and shown to fail, with honest use still working:
//!
//! - a client that reserves for a few tokens and asks the engine for thousands;
//! - a worker that inflates its usage, reports impossible counts, or bills at a coefficient
//!   it raised after the request was routed;
//! - a client that opens hundreds of requests on one session, or stops reading its answers;
//! - strangers whose handshakes would make the proxy read the chain for them;
//! - a client whose contract changes under its session (top-up, refund request).
//!
//! The scripted worker speaks the worker protocol by hand (`worker.connectToProxy` ... and
//! `proxy.queryAnswer*Ex` frames), so it can lie the way a modified worker would.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use cocoon_net::{ErrorCode, Incoming, SessionHandle};
use cocoon_testkit::client::{connect_query, run_query};
use cocoon_testkit::decode::tokens_used;
use cocoon_testkit::prelude::*;
use cocoon_testkit::proxy::{finish_handshake, raw_worker};
use cocoon_tl::functions::proxy as fproxy;
use cocoon_tl::types::{TokensUsed, http as thttp, proxy as tproxy, worker as tworker};
use cocoon_tl::{Identifiable, TlRead, TlWrite, peek_constructor};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A worker driven by the test: it registers like any worker, then answers as told.
struct ScriptedWorker {
    handle: SessionHandle,
    incoming: mpsc::Receiver<Incoming>,
}

impl ScriptedWorker {
    async fn start(net: &Net, coefficient: i32, max_active: i32) -> ScriptedWorker {
        let (handle, incoming, _) = raw_worker(net, coefficient, max_active, 3).await;
        finish_handshake(&handle, 0).await;
        net.wait_workers(1).await;
        ScriptedWorker { handle, incoming }
    }

    /// The next message from the proxy.
    async fn next(&mut self) -> Vec<u8> {
        match tokio::time::timeout(LIMIT, self.incoming.recv())
            .await
            .expect("a message in time")
            .expect("session open")
        {
            Incoming::Message { data } => data,
            Incoming::Query { .. } => panic!("the proxy sends no queries"),
        }
    }

    /// The next request routed here (other messages are skipped).
    async fn request(&mut self) -> fproxy::RunQueryEx {
        loop {
            let m = self.next().await;
            if peek_constructor(&m) == Some(fproxy::RunQueryEx::CONSTRUCTOR_ID) {
                return fproxy::RunQueryEx::from_bytes(&m).unwrap();
            }
        }
    }

    async fn send(&self, bytes: Vec<u8>) {
        self.handle.send_message(bytes).await.unwrap();
    }

    /// An SSE head.
    async fn head(&self, rid: [u8; 32]) {
        let head = thttp::Response {
            http_version: "HTTP/1.1".into(),
            status_code: 200,
            reason: "OK".into(),
            headers: vec![thttp::Header {
                name: "Content-Type".into(),
                value: "text/event-stream".into(),
            }],
            payload: Vec::new(),
        };
        self.send(
            tproxy::QueryAnswerEx {
                request_id: rid,
                answer: head.to_bytes(),
                final_info: None,
            }
            .to_bytes(),
        )
        .await;
    }

    async fn part(&self, rid: [u8; 32], bytes: &[u8]) {
        self.send(
            tproxy::QueryAnswerPartEx {
                request_id: rid,
                answer: bytes.to_vec(),
                final_info: None,
            }
            .to_bytes(),
        )
        .await;
    }

    async fn finish(&self, rid: [u8; 32], tokens: TokensUsed) {
        self.send(
            tproxy::QueryAnswerPartEx {
                request_id: rid,
                answer: Vec::new(),
                final_info: Some(tproxy::QueryFinalInfo {
                    tokens_used: tokens,
                    worker_debug: None,
                    worker_start_time: None,
                    worker_end_time: None,
                }),
            }
            .to_bytes(),
        )
        .await;
    }
}

/// The body the worker was asked to run.
fn body_of(run: &fproxy::RunQueryEx) -> Value {
    let http = cocoon_tl::functions::http::Request::from_bytes(&run.query).unwrap();
    serde_json::from_slice(&http.payload).unwrap()
}

/// `tokensUsed` for raw usage at `coefficient` with the test network's multipliers.
fn adjusted(prompt: u64, completion: u64, coefficient: u64) -> TokensUsed {
    let a = prices().adjust(&cocoon_openai::Usage::new(prompt, completion), coefficient);
    let c = a.categories;
    tokens_used([c.prompt, c.cached, c.completion, c.reasoning, a.total].map(|t| t as i64))
}

/// An SSE answer with `words` content chunks and the usage the engine reported.
fn sse(words: u64, prompt: u64) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..words {
        s.push_str(&format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}}}}]}}\n\n"
        ));
    }
    s.push_str(&format!(
        "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{words},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n",
        prompt + words
    ));
    s.into_bytes()
}

/// Sends `client.runQueryEx` with a hand-made body.
async fn run_body(c: &TestClient, id: u8, body: &Value, max_tokens: i32) {
    let q = run_query(
        [id; 32],
        &serde_json::to_vec(body).unwrap(),
        max_tokens,
        30.0,
    );
    c.handle.send_message(q).await.unwrap();
}

fn chat(extra: Value) -> Value {
    chat_with("hi", true, extra)
}

/// §2: the limit the client reserved is the limit the worker gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_gets_the_limit_that_was_reserved_not_the_one_the_body_asks_for() {
    let net = start_proxy(root(1, true, true)).await;
    let mut w = ScriptedWorker::start(&net, 1000, 8).await;
    let owner = addr(0x51);
    let sc = net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;

    // The attack: reserve for 5 tokens, ask the engine for 32 000.
    run_body(&c, 1, &chat(json!({"max_tokens": 32000})), 5).await;
    let run = w.request().await;
    let body = body_of(&run);
    assert_eq!(
        body["max_tokens"],
        json!(5),
        "the body was capped to the reservation"
    );
    // max_completion_tokens (which engines prefer) is capped too, and n shares the limit.
    run_body(
        &c,
        2,
        &chat(json!({"max_completion_tokens": 32000, "n": 2})),
        10,
    )
    .await;
    let run2 = w.request().await;
    let body2 = body_of(&run2);
    assert_eq!(body2["max_completion_tokens"], json!(5));
    assert_eq!(body2["max_tokens"], json!(5));
    // A body asking for less keeps its own limit.
    run_body(&c, 3, &chat(json!({"max_tokens": 3})), 1000).await;
    let run3 = w.request().await;
    assert_eq!(body_of(&run3)["max_tokens"], json!(3));
    // No room at all: refused before anything is reserved or routed.
    run_body(&c, 4, &chat(json!({"max_tokens": 32000})), 0).await;
    let r = c.collect().await;
    let (code, msg) = r.error.unwrap();
    assert_eq!(code, ErrorCode::Error as i32);
    assert!(msg.starts_with("invalid request"), "{msg}");

    // An engine that ignores the limit: the worker reports 40 completion tokens for request 1
    // (5 allowed). The report cannot be true, so it is not booked; the answer's own usage
    // would be, and this one carried none.
    w.head(run.request_id).await;
    w.part(run.request_id, &sse(40, 10)[..10]).await;
    w.finish(run.request_id, adjusted(10, 40, 1000)).await;
    let mut errors = 0;
    for _ in 0..3 {
        let done = c.collect().await;
        if done.error.is_some() {
            errors += 1;
        }
    }
    assert!(errors >= 1, "requests on the cut worker fail");
    let used = net.meter.client(&sc.to_string()).unwrap().used;
    assert!(
        used <= adjusted(10, 5, 1000).total_tokens_used as u64,
        "booked {used}"
    );
    let st = net.proxy.stats();
    assert_eq!(st.event_counts.get("usage_violation"), Some(&1));
    // A protocol violation ends the worker's session.
    eventually("the lying worker is dropped", || {
        net.proxy.ready_workers() == 0
    })
    .await;
    assert_eq!(net.meter.open_reservations(), 0);
}

/// §3: a worker's report is audited against the answer's own usage and the quote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflated_usage_and_a_coefficient_raised_after_routing_are_booked_at_the_true_figure() {
    let net = start_proxy(root(1, true, true)).await;
    let mut w = ScriptedWorker::start(&net, 1000, 8).await;
    let owner = addr(0x51);
    let sc = net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;
    let honest = adjusted(12, 4, 1000);

    // Honest: the report matches the answer's usage; booked as reported.
    run_body(&c, 1, &chat(json!({"max_tokens": 100})), 100).await;
    let run = w.request().await;
    w.head(run.request_id).await;
    w.part(run.request_id, &sse(4, 12)).await;
    w.finish(run.request_id, honest.clone()).await;
    let r = c.collect().await;
    assert_eq!(r.tokens, Some(tokens5(&honest)));
    assert_eq!(
        net.meter.client(&sc.to_string()).unwrap().used,
        honest.total_tokens_used as u64
    );

    // Inflated tenfold in the final report: booked at the answer's own count.
    run_body(&c, 2, &chat(json!({"max_tokens": 100})), 100).await;
    let run = w.request().await;
    w.head(run.request_id).await;
    w.part(run.request_id, &sse(4, 12)).await;
    w.finish(run.request_id, adjusted(120, 40, 1000)).await;
    let r = c.collect().await;
    assert_eq!(
        r.tokens,
        Some(tokens5(&honest)),
        "the client sees the true figure"
    );
    assert_eq!(
        net.meter.client(&sc.to_string()).unwrap().used,
        2 * honest.total_tokens_used as u64
    );
    let st = net.proxy.stats();
    assert_eq!(st.event_counts.get("usage_mismatch"), Some(&1));
    assert_eq!(st.workers[0].bad_reports, 1);
    assert_eq!(
        st.workers[0].failed, 1,
        "the lie counts against its reputation"
    );

    // The worker raises its coefficient mid-request and bills the running one at 3.0.
    run_body(&c, 3, &chat(json!({"max_tokens": 100})), 100).await;
    let run = w.request().await;
    assert_eq!(
        run.coefficient, 1000,
        "routed at the registered coefficient"
    );
    w.send(
        tworker::NewCoefficient {
            new_coefficient: 3000,
        }
        .to_bytes(),
    )
    .await;
    w.head(run.request_id).await;
    w.part(run.request_id, &sse(4, 12)).await;
    w.finish(run.request_id, adjusted(12, 4, 3000)).await;
    let r = c.collect().await;
    assert_eq!(r.tokens, Some(tokens5(&honest)), "billed at the quoted 1.0");
    assert_eq!(
        net.meter.client(&sc.to_string()).unwrap().used,
        3 * honest.total_tokens_used as u64
    );
    assert_eq!(
        net.proxy.stats().event_counts.get("usage_mismatch"),
        Some(&2)
    );

    // Impossible values: a negative count is a protocol violation, nothing is booked, and
    // the session ends.
    run_body(&c, 4, &chat(json!({"max_tokens": 100})), 100).await;
    let run = w.request().await;
    w.head(run.request_id).await;
    let mut bad = honest.clone();
    bad.prompt_tokens_used = -5;
    bad.total_tokens_used = honest.total_tokens_used - 5 - honest.prompt_tokens_used;
    w.finish(run.request_id, bad).await;
    let r = c.collect().await;
    assert_eq!(r.tokens, Some([0; 5]));
    assert_eq!(
        net.meter.client(&sc.to_string()).unwrap().used,
        3 * honest.total_tokens_used as u64
    );
    assert_eq!(
        net.proxy.stats().event_counts.get("usage_violation"),
        Some(&1)
    );
    eventually("the worker is dropped", || net.proxy.ready_workers() == 0).await;
}

/// §2: one session cannot make the proxy run unbounded work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_has_a_bounded_number_of_running_requests() {
    let net = start_proxy_with(root(1, true, true), |c| {
        c.timings.max_session_requests = 3;
    })
    .await;
    let mut w = ScriptedWorker::start(&net, 1000, 100).await;
    let owner = addr(0x51);
    net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;
    for id in 1..=3 {
        run_body(&c, id, &chat(json!({})), 10).await;
        w.request().await;
    }
    run_body(&c, 4, &chat(json!({})), 10).await;
    let r = c.collect().await;
    let (_, msg) = r.error.unwrap();
    assert!(msg.contains("too many active queries"), "{msg}");
    // Another session of the same client is not affected.
    let c2 = TestClient::authorized(&net, &owner).await;
    run_body(&c2, 5, &chat(json!({})), 10).await;
    let run = w.request().await;
    assert!(run.timeout > 0.0);
}

/// §9: a client that stops reading cannot make the proxy buffer its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_its_request_stopped_not_buffered() {
    let net = start_proxy_with(root(1, true, true), |c| {
        c.timings.request_buffer_bytes = 256 << 10;
        c.timings.cancel_grace = Duration::from_secs(2);
    })
    .await;
    let mut w = ScriptedWorker::start(&net, 1000, 8).await;
    let owner = addr(0x51);
    net.fund_client(&owner, 1_000_000_000, true);
    // The client sends a request and never reads its session again.
    let c = TestClient::authorized(&net, &owner).await;
    run_body(&c, 1, &chat(json!({"max_tokens": 1_000_000})), 1_000_000).await;
    let run = w.request().await;
    w.head(run.request_id).await;
    // 64 MiB of answer in 64 KiB parts, sent without waiting for the client.
    let chunk = vec![b'x'; 64 << 10];
    let h = w.handle.clone();
    let rid = run.request_id;
    let writer = tokio::spawn(async move {
        for _ in 0..1024 {
            let m = tproxy::QueryAnswerPartEx {
                request_id: rid,
                answer: chunk.clone(),
                final_info: None,
            };
            if h.send_message(m.to_bytes()).await.is_err() {
                break;
            }
        }
    });
    // The proxy stops the request (proxy.cancelQuery) at once, not at the request's deadline
    // (30 s, past this test's wait) as it did when it buffered the whole answer.
    let cancel = loop {
        let m = w.next().await;
        if peek_constructor(&m) == Some(tproxy::CancelQuery::CONSTRUCTOR_ID) {
            break tproxy::CancelQuery::from_bytes(&m).unwrap();
        }
    };
    assert_eq!(cancel.request_id, rid);
    writer.abort();
    assert_eq!(net.proxy.stats().counters.requests_received, 1);
    drop(c);
}

/// A [`ClientChain`] that counts its reads.
struct Counting {
    inner: std::sync::Arc<cocoon_proxy::MemoryChain>,
    reads: std::sync::atomic::AtomicU64,
}

impl cocoon_proxy::ClientChain for Counting {
    fn client_state<'a>(
        &'a self,
        client_sc: &'a cocoon_ton::StdAddr,
    ) -> futures::future::BoxFuture<
        'a,
        Result<Option<cocoon_proxy::ClientContractState>, cocoon_proxy::ProxyChainError>,
    > {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.client_state(client_sc)
    }

    fn wait_register<'a>(
        &'a self,
        client_sc: &'a cocoon_ton::StdAddr,
        nonce: u64,
    ) -> futures::future::BoxFuture<'a, Result<(), cocoon_proxy::ProxyChainError>> {
        self.inner.wait_register(client_sc, nonce)
    }
}

/// §9: handshakes from strangers cannot burn the proxy's chain-endpoint quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_handshakes_cause_few_chain_reads() {
    let counting = std::sync::Arc::new(Counting {
        inner: std::sync::Arc::new(cocoon_proxy::MemoryChain::new()),
        reads: Default::default(),
    });
    let chain = counting.clone();
    let net = start_proxy_with(root(1, true, true), move |c| {
        c.chain = chain;
        c.timings.lookups_per_minute = 6;
        c.timings.lookup_burst = 4;
        c.timings.client_watch_interval = None;
    })
    .await;
    // The same owner twenty times: one read, the rest from the cache.
    for _ in 0..20 {
        TestClient::connect(&net, &addr(0x51)).await;
    }
    assert_eq!(counting.reads.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Twenty random owners from one address: the bucket (4 at once) runs dry.
    let mut refused = 0;
    for i in 0..20u8 {
        let (h, _incoming, _peer) = connector()
            .connect(&net.proxy.client_addr().to_string())
            .await
            .unwrap();
        let r: Result<cocoon_tl::types::client::ConnectedToProxy, _> =
            h.query_tl(&connect_query(&addr(0x80 + i)), LIMIT).await;
        if let Err(e) = r {
            assert!(e.message.contains("too many contract lookups"), "{e:?}");
            refused += 1;
        }
    }
    let reads = counting.reads.load(std::sync::atomic::Ordering::SeqCst);
    assert!(reads <= 1 + 4 + 1, "{reads} chain reads");
    assert!(refused >= 14, "{refused} refused");
    assert_eq!(net.proxy.stats().counters.handshake_lookups, reads);
}

/// §4: the client's contract is followed during its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_follows_top_ups_and_a_closing_contract_stops_being_served() {
    let net = start_proxy_with(root(1, true, true), |c| {
        c.timings.client_watch_interval = Some(Duration::from_millis(100));
    })
    .await;
    let mut w = ScriptedWorker::start(&net, 1000, 8).await;
    let owner = addr(0x51);
    // 40 000 nanoTON at 20 a token: 2000 tokens of credit. A request for 100 tokens with its
    // body reserves (100 + ~300 bytes) × 4 × 2 ≈ 3000: refused.
    let sc = net.fund_client(&owner, 40_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;
    run_body(&c, 1, &chat(json!({})), 100).await;
    let r = c.collect().await;
    assert!(r.error.unwrap().1.contains("balance is too low"));
    // The owner tops up (and the stake grows with it, as a charge would free it): the same
    // session is served once the proxy has read the contract again.
    let mut st = net.chain.client(&sc).unwrap();
    st.balance = 10_000_000;
    st.stake = 10_000_000;
    net.chain.set_client(sc.clone(), st.clone());
    eventually("credit refreshed", || {
        net.meter.client(&sc.to_string()).unwrap().credit > 100_000
    })
    .await;
    run_body(&c, 2, &chat(json!({})), 100).await;
    let run = w.request().await;
    w.head(run.request_id).await;
    w.part(run.request_id, &sse(4, 12)).await;
    w.finish(run.request_id, adjusted(12, 4, 1000)).await;
    assert!(c.collect().await.error.is_none());
    // The owner asks for its refund: new requests are refused at once.
    st.closing = true;
    net.chain.set_client(sc.clone(), st);
    eventually("closing seen", || {
        net.proxy
            .stats()
            .event_counts
            .contains_key("client_closing")
    })
    .await;
    run_body(&c, 3, &chat(json!({})), 100).await;
    let r = c.collect().await;
    assert_eq!(r.error.unwrap().1, "client is closing");
}
