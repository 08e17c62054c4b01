//! Answer receipts at the client (protocol 3; issue 20 §3): a scripted proxy over a real
//! RA-TLS session (sim attestation) answers with a worker's evidence, an answer and the two
//! signed receipts, honest or altered one way at a time. An honest answer reaches the app
//! with `X-Cocoon-Receipt`, and `GET /v1/receipts/{id}` serves a document that verifies on
//! its own; every alteration (answer bytes, request, signatures, billing, missing parts, a
//! worker image or model the root does not allow) fails the request, whole and streamed,
//! and is never served as a receipt. A receipt that follows the final info (as our proxy
//! sends it, once its settlement is committed) is checked when it comes: the answer is
//! already the app's, and a refused or missing receipt flags the request as failed.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;

use cocoon_client::ClientHandle;
use cocoon_net::{Incoming, SessionHandle};
use cocoon_ratls::net::Accepted;
use cocoon_ratls::sign::SessionKey;
use cocoon_receipt::{Expect, Receipt, Trust};
use cocoon_testkit::client::{gateway_config, start_gateway};
use cocoon_testkit::fixtures::now;
use cocoon_testkit::fixtures::root_with_proxy_image;
use cocoon_testkit::identity::{acceptor, sim_identity, sim_verifier};
use cocoon_testkit::prelude::*;
use cocoon_tl::functions::client as fclient;
use cocoon_tl::types::{TokensUsed, client as tclient, http as thttp, receipt as trec};
use cocoon_tl::{Identifiable, TlRead, TlWrite, peek_constructor};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::root::RootConfig;
use cocoon_ton::{HashBytes, StdAddr};
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::mpsc;

use cocoon_testkit::handmade as hand;

fn proxy_sc() -> StdAddr {
    addr(0x11)
}

fn test_root() -> RootConfig {
    root_with_proxy_image(1, true)
}

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

/// How the scripted proxy answers a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Play {
    Honest,
    /// The answer the client gets is not the one the worker signed for.
    AlteredAnswer,
    /// The worker signed for another request body than the one the client sent.
    AlteredRequest,
    /// One byte of the worker's signature changed.
    BadWorkerSignature,
    /// One byte of the proxy's receipt changed after signing.
    BadProxyReceipt,
    /// The proxy bills more tokens than the worker reported (and signs that).
    Overbilled,
    /// No receipt before the final part.
    NoReceipt,
    /// The worker's certificate never sent.
    NoEvidence,
    /// A receipt for a model the root does not allow.
    UnlistedModel,
}

const MODEL_OTHER: &str =
    "Smol@r2:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
const ANSWER: &str = r#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}"#;
const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n";

fn tokens() -> TokensUsed {
    TokensUsed {
        prompt_tokens_used: 10,
        cached_tokens_used: 0,
        completion_tokens_used: 4,
        reasoning_tokens_used: 0,
        total_tokens_used: 14,
    }
}

/// One request as the scripted proxy got it, and its session's keys.
struct Run {
    handle: SessionHandle,
    query: fclient::RunQueryEx,
    proxy_key: SessionKey,
    client_key: [u8; 32],
}

struct Scripted {
    addr: String,
    runs: mpsc::UnboundedReceiver<Run>,
}

impl Scripted {
    async fn start() -> Scripted {
        let (tx, runs) = mpsc::unbounded_channel();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (_task, mut accepted) = acceptor().spawn_listener(listener, 4);
        tokio::spawn(async move {
            while let Some(a) = accepted.recv().await {
                tokio::spawn(serve(a, tx.clone()));
            }
        });
        Scripted { addr, runs }
    }

    async fn next(&mut self) -> Run {
        tokio::time::timeout(LIMIT, self.runs.recv())
            .await
            .expect("a request in time")
            .expect("proxy alive")
    }
}

async fn serve(a: Accepted, runs: mpsc::UnboundedSender<Run>) {
    let Accepted {
        handle,
        mut incoming,
        peer,
        own_key,
        ..
    } = a;
    let key = SigningKey::from_seed(&PROXY_SEED).unwrap().public_key();
    let client_key = *peer.public_key().unwrap();
    while let Some(inc) = incoming.recv().await {
        match inc {
            Incoming::Query { data, responder } => match peek_constructor(&data).unwrap_or(0) {
                fclient::ConnectToProxy::CONSTRUCTOR_ID => {
                    let _ = responder.answer(hand::client_connected_to_proxy(
                        key,
                        &addr(0x33).to_string(),
                        &proxy_sc().to_string(),
                        3,
                        &client_sc().to_string(),
                        sha2::Sha256::digest(SECRET).into(),
                    ));
                }
                fclient::AuthorizeWithProxyShort::CONSTRUCTOR_ID => {
                    let _ = responder.answer(hand::client_authorization_success(None, 0, 0));
                }
                fclient::UpdatePaymentStatus::CONSTRUCTOR_ID => {
                    let _ = responder.answer(hand::client_payment_status(None, 0, 0));
                }
                fclient::GetWorkerTypesV2::CONSTRUCTOR_ID => {
                    let _ = responder.answer(hand::client_worker_types_v2("Smol", &[(1000, 0, 2)]));
                }
                _ => {
                    let _ = responder.error(621, "unexpected query");
                }
            },
            Incoming::Message { data } => {
                if peek_constructor(&data) == Some(fclient::RunQueryEx::CONSTRUCTOR_ID) {
                    let _ = runs.send(Run {
                        handle: handle.clone(),
                        query: fclient::RunQueryEx::from_bytes(&data).unwrap(),
                        proxy_key: own_key.clone(),
                        client_key,
                    });
                }
            }
        }
    }
}

impl Run {
    async fn send(&self, m: &impl TlWrite) {
        self.handle.send_message(m.to_bytes()).await.unwrap();
    }

    /// Answers with `body` (as a stream when `stream`) the way `play` says, the receipt
    /// before the final part.
    async fn answer(&self, worker: &SessionKey, play: Play, stream: bool) {
        self.answer_with(worker, play, stream, false).await;
    }

    /// [`Run::answer`], with the receipt after the final part when `late` (our proxy's order:
    /// the receipt once the settlement is committed).
    async fn answer_with(&self, worker: &SessionKey, play: Play, stream: bool, late: bool) {
        let body: &[u8] = if stream {
            STREAM.as_bytes()
        } else {
            ANSWER.as_bytes()
        };
        let payload = cocoon_tl::functions::http::Request::from_bytes(&self.query.query)
            .unwrap()
            .payload;
        if play != Play::NoEvidence {
            self.send(&tclient::WorkerEvidence {
                worker_key: *worker.public_key(),
                certificate: worker.certificate().unwrap().to_vec(),
            })
            .await;
        }
        let kind = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let head = thttp::Response {
            http_version: "HTTP/1.1".into(),
            status_code: 200,
            reason: "OK".into(),
            headers: vec![thttp::Header {
                name: "Content-Type".into(),
                value: kind.into(),
            }],
            payload: Vec::new(),
        };
        self.send(&tclient::QueryAnswerEx {
            request_id: self.query.request_id,
            answer: head.to_bytes(),
            final_info: None,
        })
        .await;
        let sent: Vec<u8> = if play == Play::AlteredAnswer {
            String::from_utf8_lossy(body)
                .replace("Hi", "Ho")
                .into_bytes()
        } else {
            body.to_vec()
        };
        self.send(&tclient::QueryAnswerPartEx {
            request_id: self.query.request_id,
            answer: sent,
            final_info: None,
        })
        .await;
        let w = trec::Worker {
            request_id: [5; 32],
            worker_key: *worker.public_key(),
            proxy_key: *self.proxy_key.public_key(),
            model: if play == Play::UnlistedModel {
                MODEL_OTHER.into()
            } else {
                MODEL.into()
            },
            request_hash: if play == Play::AlteredRequest {
                cocoon_receipt::sha256(b"{}")
            } else {
                cocoon_receipt::sha256(&payload)
            },
            answer_hash: cocoon_receipt::sha256(body),
            answer_bytes: body.len() as i64,
            prompt_tokens: 10,
            cached_tokens: 0,
            completion_tokens: 2,
            reasoning_tokens: 0,
            coefficient: 1000,
            price_per_token: test_root().params.price_per_token as i64,
            tokens_used: tokens(),
            started_at_ms: 0,
            finished_at_ms: 0,
        };
        let (worker_receipt, mut worker_signature) =
            cocoon_receipt::sign_worker(&w, worker).unwrap();
        if play == Play::BadWorkerSignature {
            worker_signature[10] ^= 1;
        }
        let billed = if play == Play::Overbilled {
            TokensUsed {
                completion_tokens_used: 6,
                total_tokens_used: 16,
                ..tokens()
            }
        } else {
            tokens()
        };
        let price = test_root().params.price_per_token as i64;
        let p = trec::Proxy {
            request_id: self.query.request_id,
            proxy_key: *self.proxy_key.public_key(),
            client_key: self.client_key,
            client_sc: client_sc().to_string(),
            worker_request_id: [5; 32],
            worker_receipt_hash: cocoon_receipt::sha256(&worker_receipt),
            worker_key: *worker.public_key(),
            tokens_used: billed.clone(),
            price_per_token: price,
            cost: billed.total_tokens_used * price,
            signed_at_ms: now() as i64 * 1000,
        };
        let (mut proxy_receipt, proxy_signature) =
            cocoon_receipt::sign_proxy(&p, &self.proxy_key).unwrap();
        if play == Play::BadProxyReceipt {
            let n = proxy_receipt.len();
            proxy_receipt[n - 12] ^= 1;
        }
        let receipt = (play != Play::NoReceipt).then_some(tclient::AnswerReceipt {
            request_id: self.query.request_id,
            worker_receipt: Some(worker_receipt),
            worker_signature: Some(worker_signature),
            proxy_receipt,
            proxy_signature,
        });
        if !late && let Some(r) = &receipt {
            self.send(r).await;
        }
        self.send(&tclient::QueryAnswerPartEx {
            request_id: self.query.request_id,
            answer: Vec::new(),
            final_info: Some(tclient::QueryFinalInfo {
                tokens_used: billed,
                ..Default::default()
            }),
        })
        .await;
        if late && let Some(r) = &receipt {
            self.send(r).await;
        }
    }
}

async fn gateway(p: &Scripted) -> (ClientHandle, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = gateway_config(vec![p.addr.clone()], test_root());
    assert!(cfg.require_receipts, "on by default");
    start_gateway(cfg, 1).await
}

fn post(
    base: &str,
    stream: bool,
) -> tokio::task::JoinHandle<(u16, reqwest::header::HeaderMap, String)> {
    let url = format!("{base}/v1/chat/completions");
    tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(url)
            .json(&json!({"model": "Smol", "stream": stream,
                "messages": [{"role": "user", "content": "hello"}]}))
            .send()
            .await
            .unwrap();
        let (s, h) = (r.status().as_u16(), r.headers().clone());
        (s, h, r.text().await.unwrap())
    })
}

async fn get(base: &str, id: &str) -> (u16, String) {
    let r = reqwest::get(format!("{base}/v1/receipts/{id}"))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_answer_has_a_receipt_the_app_can_fetch_and_check_offline() {
    let mut p = Scripted::start().await;
    let (_c, base) = gateway(&p).await;
    let worker = SessionKey::new(sim_identity().certified_key().unwrap()).unwrap();
    for stream in [false, true] {
        let t = post(&base, stream);
        let run = p.next().await;
        run.answer(&worker, Play::Honest, stream).await;
        let (status, h, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let id = h["x-cocoon-receipt"].to_str().unwrap().to_owned();
        assert_eq!(id, hex::encode(run.query.request_id));
        if stream {
            assert!(body.contains("[DONE]"), "{body}");
        } else {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["choices"][0]["message"]["content"], "Hi");
        }
        let (s, doc) = get(&base, &id).await;
        assert_eq!(s, 200, "{doc}");
        let doc: Receipt = serde_json::from_str(&doc).unwrap();
        assert_eq!(doc.id, id);
        assert_eq!(doc.model, MODEL);
        assert_eq!(doc.usage.billed_tokens, 14);
        assert_eq!(
            doc.usage.cost_nanoton,
            14 * test_root().params.price_per_token as i64
        );
        assert_eq!(doc.worker.evidence.as_ref().unwrap().backend, "sim");
        // The saved document verifies on its own, as `cocoon receipt verify` does.
        let parts = doc.parts().unwrap();
        let verifier = sim_verifier();
        let root = test_root();
        let hashes = |v: &[cocoon_ton::HashBytes]| v.iter().map(|h| h.0).collect::<Vec<_>>();
        let (w, m) = (hashes(&root.worker_hashes), hashes(&root.model_hashes));
        let trust = Trust {
            proxy_verifier: &verifier,
            worker_verifier: &verifier,
            proxy_hashes: None,
            worker_hashes: &w,
            model_hashes: &m,
        };
        let v = cocoon_receipt::verify(&parts, &trust, &Expect::default()).unwrap();
        doc.check_fields(&v).unwrap();
    }
    let (s, body) = get(&base, &"ab".repeat(32)).await;
    assert_eq!(s, 404, "{body}");
    let e: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["type"], "not_found_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_answer_or_receipt_fails_its_request() {
    let mut p = Scripted::start().await;
    let (c, base) = gateway(&p).await;
    let worker = SessionKey::new(sim_identity().certified_key().unwrap()).unwrap();
    let cases = [
        (Play::AlteredAnswer, "differs from the one the worker sent"),
        (Play::AlteredRequest, "another request body"),
        (Play::BadWorkerSignature, "worker: bad receipt signature"),
        (Play::BadProxyReceipt, "proxy"),
        (Play::Overbilled, "the worker reported"),
        (Play::NoEvidence, "no evidence for worker"),
        (Play::UnlistedModel, "not allowed by the root"),
    ];
    for (play, why) in cases {
        for stream in [false, true] {
            let t = post(&base, stream);
            let run = p.next().await;
            // A fresh worker each time: its evidence is not yet on the session.
            let worker = if play == Play::NoEvidence {
                SessionKey::new(sim_identity().certified_key().unwrap()).unwrap()
            } else {
                worker.clone()
            };
            run.answer(&worker, play, stream).await;
            let (status, h, body) = t.await.unwrap();
            let id = hex::encode(run.query.request_id);
            if stream {
                // The stream began before the receipt could be checked: it ends with the
                // error event, never with [DONE].
                assert_eq!(status, 200, "{play:?}");
                assert!(!body.contains("[DONE]"), "{play:?}: {body}");
                assert!(body.contains("receipt is refused"), "{play:?}: {body}");
                assert!(body.contains(why), "{play:?}: {body}");
                assert_eq!(h["x-cocoon-receipt"].to_str().unwrap(), id);
            } else {
                assert_eq!(status, 502, "{play:?}: {body}");
                let e: Value = serde_json::from_str(&body).unwrap();
                let msg = e["error"]["message"].as_str().unwrap();
                assert!(msg.contains("receipt is refused"), "{play:?}: {msg}");
                assert!(msg.contains(why), "{play:?}: {msg}");
                assert!(!body.contains("\"Hi\""), "no answer content: {body}");
            }
            let (s, _) = get(&base, &id).await;
            assert_eq!(s, 404, "{play:?}: a refused receipt is not served");
        }
    }
    // Every refused answer counts as failed; what the proxy billed is still booked.
    let stats = c.stats().stats;
    assert_eq!(stats.failed, (cases.len() * 2) as u64, "{stats:?}");
}

/// The client checks the worker's GPU evidence itself (`require_gpu_cc` on the client): a
/// worker whose certificate carries NVIDIA's recorded Hopper sample (admitted only with the
/// test-network allowances, as in `crates/proxy/tests/gpu_cc.rs`) has its GPU in the
/// receipt's evidence; one without GPU evidence fails the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_requiring_gpu_evidence_checks_each_worker_itself() {
    use cocoon_attest::gpu::GpuPolicy;
    use cocoon_attest::{Policy, SimKey};
    use cocoon_ratls::cert::{GpuEvidenceBytes, Identity, RecordedGpuSource, SimSource, WithGpu};
    use cocoon_ratls::verifier::{GpuRequirement, RatlsVerifier, VerifierConfig};

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testvectors/gpu/");
    let file = |name: &str| std::fs::read(format!("{DIR}{name}")).unwrap();
    let sample = GpuEvidenceBytes {
        report: cocoon_attest::gpu::report::decode_hex(&file("hopperAttestationReport.txt"))
            .unwrap(),
        cert_chain_pem: file("hopperCertChain.txt"),
    };
    let mut v = VerifierConfig::new(Policy::sim_test());
    v.gpu = Some(Arc::new(GpuRequirement {
        required: true,
        rims: vec![
            file("retargeted/Driver_RIM_retargeted.swidtag"),
            file("retargeted/VBIOS_RIM_retargeted.swidtag"),
        ],
        policy: GpuPolicy {
            require_rim_signatures: false,
            ..GpuPolicy::default()
        },
        allowed_projects: vec!["1010".into()],
        min_driver_version: None,
        min_vbios_version: None,
        allow_unbound_nonce: true,
        crl_dir: None,
    }));
    let mut p = Scripted::start().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = gateway_config(vec![p.addr.clone()], test_root());
    cfg.worker_verifier = Some(RatlsVerifier::new(v));
    let (_c, base) = start_gateway(cfg, 1).await;

    let with_gpu = Identity::generate(
        &WithGpu {
            cpu: Arc::new(SimSource(SimKey::generate().unwrap())),
            gpu: Arc::new(RecordedGpuSource(sample)),
        },
        now() - 60,
    )
    .unwrap();
    let worker = SessionKey::new(with_gpu.certified_key().unwrap()).unwrap();
    let t = post(&base, false);
    p.next().await.answer(&worker, Play::Honest, false).await;
    let (status, h, body) = t.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (s, doc) = get(&base, h["x-cocoon-receipt"].to_str().unwrap()).await;
    assert_eq!(s, 200, "{doc}");
    let doc: Receipt = serde_json::from_str(&doc).unwrap();
    let gpu = doc.worker.evidence.unwrap().gpu.unwrap();
    assert!(
        gpu.contains("project 1010") && gpu.contains("NOT bound"),
        "{gpu}"
    );

    let plain = SessionKey::new(sim_identity().certified_key().unwrap()).unwrap();
    let t = post(&base, false);
    p.next().await.answer(&plain, Play::Honest, false).await;
    let (status, _, body) = t.await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("worker: certificate refused"), "{body}");
}

/// `require_receipts = false` (to use COCOON's proxies and workers, which give none): an
/// answer without receipts, or with the proxy's part alone, is served; one whose receipt
/// does come must still verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_require_receipts_a_missing_receipt_passes_and_a_bad_one_does_not() {
    let mut p = Scripted::start().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = gateway_config(vec![p.addr.clone()], test_root());
    cfg.require_receipts = false;
    let (_c, base) = start_gateway(cfg, 1).await;
    let worker = SessionKey::new(sim_identity().certified_key().unwrap()).unwrap();
    let t = post(&base, false);
    p.next().await.answer(&worker, Play::NoReceipt, false).await;
    let (status, h, body) = t.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (s, _) = get(&base, h["x-cocoon-receipt"].to_str().unwrap()).await;
    assert_eq!(s, 404, "no receipt was given, none is served");
    let t = post(&base, false);
    p.next()
        .await
        .answer(&worker, Play::AlteredAnswer, false)
        .await;
    let (status, _, body) = t.await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("differs"), "{body}");
}

/// The receipt after the final info, as our proxy sends it (once its settlement is
/// committed): a stream ends at once (its `[DONE]`) and its receipt is checked when it
/// comes; a whole answer waits for its receipt and is released only if it checks out
/// (ARCHITECTURE.md D15), otherwise it is a 502. An honest receipt is served at
/// `GET /v1/receipts/{id}` (asked right away, that waits for the check); one billing more
/// than the worker reported, or none at all, fails the request (stats, the recent
/// requests) and is never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_after_the_answer_is_checked_when_it_comes() {
    let mut p = Scripted::start().await;
    let (c, base) = gateway(&p).await;
    let worker = SessionKey::new(sim_identity().certified_key().unwrap()).unwrap();
    let mut failed = 0;
    for (play, served) in [
        (Play::Honest, true),
        (Play::Overbilled, false),
        (Play::NoReceipt, false),
    ] {
        for stream in [false, true] {
            let t = post(&base, stream);
            let run = p.next().await;
            run.answer_with(&worker, play, stream, true).await;
            let (status, h, body) = t.await.unwrap();
            if !stream && !served {
                assert_eq!(
                    status, 502,
                    "{play:?}: a whole answer waits for its receipt: {body}"
                );
                failed += 1;
                let stats = c.stats();
                assert_eq!(stats.stats.failed, failed, "{play:?}: {:?}", stats.stats);
                assert!(!stats.recent.last().unwrap().ok, "{play:?}");
                continue;
            }
            assert_eq!(status, 200, "{play:?}: {body}");
            if stream {
                assert!(body.contains("[DONE]"), "{play:?}: {body}");
            } else {
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["choices"][0]["message"]["content"], "Hi");
            }
            let id = h["x-cocoon-receipt"].to_str().unwrap().to_owned();
            let (s, doc) = get(&base, &id).await;
            if served {
                assert_eq!(s, 200, "{play:?}: {doc}");
                let doc: Receipt = serde_json::from_str(&doc).unwrap();
                assert_eq!(doc.usage.billed_tokens, 14);
            } else {
                assert_eq!(s, 404, "{play:?}: a refused receipt is not served");
                failed += 1;
            }
            let stats = c.stats();
            assert_eq!(stats.stats.failed, failed, "{play:?}: {:?}", stats.stats);
            let last = stats.recent.last().unwrap();
            assert_eq!(last.ok, served, "{play:?}");
            assert_eq!(last.receipt_id.is_some(), served, "{play:?}");
        }
    }
}
