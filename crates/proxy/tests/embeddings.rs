//! `POST /v1/embeddings` is ours (protocol 3): the proxy sends one only to a worker whose
//! session agreed on version 3 and whose engine does not say it cannot embed, takes one only
//! from a version 3 client, and bills it as prompt tokens. Workers are scripted by hand over
//! real RA-TLS sessions (sim attestation), so the test sees every request each one is sent.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use cocoon_net::{Incoming, SessionHandle};
use cocoon_testkit::client::run_query;
use cocoon_testkit::decode::tokens_used;
use cocoon_testkit::prelude::*;
use cocoon_testkit::proxy::{finish_handshake, raw_worker};
use cocoon_tl::functions::client as fclient;
use cocoon_tl::functions::proxy as fproxy;
use cocoon_tl::types::{TokensUsed, http as thttp, proxy as tproxy, worker as tworker};
use cocoon_tl::{Identifiable, TlRead, TlWrite, peek_constructor};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const EMBED: &str = "/v1/embeddings";

struct Scripted {
    handle: SessionHandle,
    incoming: mpsc::Receiver<Incoming>,
}

impl Scripted {
    /// A worker speaking protocol 1 to `max_proto`; at 3 it announces `embeddings` (bit 2
    /// known, and supported or not) as the real worker does after its handshake.
    async fn start(net: &Net, max_proto: i32, embeddings: Option<bool>) -> Scripted {
        let (handle, incoming, connected) = raw_worker(net, 1000, 4, max_proto).await;
        assert_eq!(connected.params.proto_version, Some(max_proto));
        finish_handshake(&handle, 0).await;
        if let Some(e) = embeddings {
            let caps = cocoon_openai::Capabilities {
                chat: Some(true),
                embeddings: Some(e),
                ..Default::default()
            };
            let (known, supported) = caps.to_bits();
            let m = tworker::ModelInfo {
                context_length: 1024,
                capabilities_known: known,
                capabilities: supported,
            };
            handle.send_message(m.to_bytes()).await.unwrap();
        }
        Scripted { handle, incoming }
    }

    /// The next request routed here within `wait`, skipping other messages.
    async fn request_within(&mut self, wait: Duration) -> Option<fproxy::RunQueryEx> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let m = tokio::time::timeout_at(until, self.incoming.recv())
                .await
                .ok()??;
            if let Incoming::Message { data } = m
                && peek_constructor(&data) == Some(fproxy::RunQueryEx::CONSTRUCTOR_ID)
            {
                return Some(fproxy::RunQueryEx::from_bytes(&data).unwrap());
            }
        }
    }

    /// Answers `rid` with a whole JSON body and the tokens it reports.
    async fn answer(&self, rid: [u8; 32], body: &Value, tokens: TokensUsed) {
        let head = thttp::Response {
            http_version: "HTTP/1.1".into(),
            status_code: 200,
            reason: "OK".into(),
            headers: vec![thttp::Header {
                name: "Content-Type".into(),
                value: "application/json".into(),
            }],
            payload: serde_json::to_vec(body).unwrap(),
        };
        let send = |b: Vec<u8>| self.handle.send_message(b);
        send(
            tproxy::QueryAnswerEx {
                request_id: rid,
                answer: head.to_bytes(),
                final_info: None,
            }
            .to_bytes(),
        )
        .await
        .unwrap();
        send(
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
        .await
        .unwrap();
    }
}

fn embed_query(id: u8) -> Vec<u8> {
    let body = json!({"model": "Smol", "input": ["first", "second"]});
    fclient::RunQueryEx {
        model_name: "Smol".into(),
        query: http_request(EMBED, &serde_json::to_vec(&body).unwrap()),
        max_coefficient: 4000,
        max_tokens: 0,
        timeout: 20.0,
        request_id: [id; 32],
        min_config_version: 0,
        enable_debug: None,
    }
    .to_bytes()
}

fn url_of(run: &fproxy::RunQueryEx) -> String {
    cocoon_tl::functions::http::Request::from_bytes(&run.query)
        .unwrap()
        .url
}

/// `tokensUsed` for `prompt` prompt tokens and nothing else, at coefficient 1.0.
fn prompt_only(prompt: u64) -> TokensUsed {
    let a = prices().adjust(&cocoon_openai::Usage::new(prompt, 0), 1000);
    let c = a.categories;
    tokens_used([c.prompt, c.cached, c.completion, c.reasoning, a.total].map(|t| t as i64))
}

/// Waits until the proxy's `client.getModelInfo` says "Smol" is known not to embed.
async fn known_not_to_embed(c: &TestClient) {
    for _ in 0..100 {
        let infos: cocoon_tl::types::client::ModelInfos = c
            .handle
            .query_tl(&fclient::GetModelInfo {}, LIMIT)
            .await
            .unwrap();
        if infos.models.iter().any(|m| {
            let caps = cocoon_openai::Capabilities::from_bits(m.capabilities_known, m.capabilities);
            m.name == "Smol" && caps.embeddings == Some(false)
        }) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the proxy never learned the worker's capabilities");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_protocol_3_workers_that_embed_get_embeddings() {
    let net = start_proxy(root(1, true, true)).await;
    let mut v2 = Scripted::start(&net, 2, None).await;
    let mut no = Scripted::start(&net, 3, Some(false)).await;
    net.wait_workers(2).await;
    let owner = addr(0x51);
    let sc = net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;
    // The proxy has read the modelInfo of the worker that cannot embed.
    known_not_to_embed(&c).await;

    // A COCOON (version 2) worker and one whose engine cannot embed: refused as OpenAI
    // refuses a model without embeddings, and neither is sent the request.
    c.handle.send_message(embed_query(1)).await.unwrap();
    let r = c.collect().await;
    let (_, msg) = r.error.expect("refused");
    assert!(msg.starts_with("invalid request: "), "{msg}");
    assert!(msg.contains("does not support embeddings"), "{msg}");
    assert!(
        v2.request_within(Duration::from_millis(500))
            .await
            .is_none()
    );
    assert!(
        no.request_within(Duration::from_millis(100))
            .await
            .is_none()
    );

    // One that embeds joins: every embeddings request goes to it, none to the others.
    let mut yes = Scripted::start(&net, 3, Some(true)).await;
    net.wait_workers(3).await;
    // Its modelInfo arrives after the handshake: wait until the proxy routes to it.
    let answer = json!({"object": "list", "data": [], "model": "Smol",
        "usage": {"prompt_tokens": 6, "total_tokens": 6}});
    let mut served = 0;
    for id in 10u8..60 {
        c.handle.send_message(embed_query(id)).await.unwrap();
        match yes.request_within(Duration::from_millis(200)).await {
            Some(run) => {
                assert_eq!(url_of(&run), EMBED);
                yes.answer(run.request_id, &answer, prompt_only(6)).await;
                let r = c.collect().await;
                assert_eq!(r.status, Some(200), "{:?}", r.error);
                served += 1;
                if served == 4 {
                    break;
                }
            }
            None => {
                let r = c.collect().await;
                assert!(r.error.is_some());
            }
        }
    }
    assert_eq!(served, 4, "the worker that embeds was sent the requests");
    assert!(
        v2.request_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    assert!(
        no.request_within(Duration::from_millis(100))
            .await
            .is_none()
    );
    // Billed as prompt tokens only: four requests of 6.
    let booked = net.meter.client(&sc.to_string()).unwrap().used;
    assert_eq!(booked, 4 * prompt_only(6).total_tokens_used as u64);

    // Chat still goes everywhere, the version 2 worker included.
    for i in 0..12u8 {
        let q = run_query([100 + i; 32], &chat_body("ok", false), 100, 20.0);
        c.handle.send_message(q).await.unwrap();
    }
    let got = v2.request_within(Duration::from_secs(5)).await.unwrap();
    assert!(url_of(&got).ends_with("/chat/completions"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_2_client_cannot_send_embeddings() {
    let net = start_proxy(root(1, true, true)).await;
    let mut w = Scripted::start(&net, 3, Some(true)).await;
    net.wait_workers(1).await;
    let owner = addr(0x52);
    net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized_as_cocoon(&net, &owner).await;
    c.handle.send_message(embed_query(1)).await.unwrap();
    let r = c.collect().await;
    let (_, msg) = r.error.expect("refused");
    assert!(msg.contains("protocol version 3"), "{msg}");
    assert!(w.request_within(Duration::from_millis(300)).await.is_none());
}

/// The proxy's queue grants an embeddings request only a slot on a worker that embeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_embeddings_wait_for_a_worker_that_embeds() {
    let net = start_proxy(root(1, true, true)).await;
    let mut no = Scripted::start(&net, 3, Some(false)).await;
    let owner = addr(0x53);
    net.fund_client(&owner, 100_000_000, true);
    let mut c = TestClient::authorized(&net, &owner).await;
    net.wait_workers(1).await;
    known_not_to_embed(&c).await;
    let mut yes = Scripted::start(&net, 3, Some(true)).await;
    net.wait_workers(2).await;
    // Its four slots taken by embeddings it holds unanswered...
    let mut held = Vec::new();
    for id in 1..=4u8 {
        c.handle.send_message(embed_query(id)).await.unwrap();
        held.push(yes.request_within(LIMIT).await.expect("routed").request_id);
    }
    // ...a fifth waits in the queue, though the worker that cannot embed has free slots.
    c.handle.send_message(embed_query(5)).await.unwrap();
    assert!(
        no.request_within(Duration::from_millis(500))
            .await
            .is_none()
    );
    assert!(
        yes.request_within(Duration::from_millis(100))
            .await
            .is_none()
    );
    // A chat request meanwhile goes to the free worker at once.
    let q = run_query([9; 32], &chat_body("ok", false), 100, 20.0);
    c.handle.send_message(q).await.unwrap();
    let chat = no.request_within(LIMIT).await.expect("chat routed");
    assert!(url_of(&chat).ends_with("/chat/completions"));
    // One slot frees: the fifth takes it.
    let answer = json!({"object": "list", "data": [], "model": "Smol",
        "usage": {"prompt_tokens": 6, "total_tokens": 6}});
    yes.answer(held[0], &answer, prompt_only(6)).await;
    let fifth = yes.request_within(LIMIT).await.expect("the queued request");
    assert_eq!(url_of(&fifth), EMBED);
    assert!(
        no.request_within(Duration::from_millis(100))
            .await
            .is_none()
    );
    let r = c.collect().await;
    assert_eq!(r.status, Some(200), "{:?}", r.error);
}
