//! Requests as the wire carries them, and the answers decoded: what a proxy sends a client,
//! and what a worker sends a proxy.

use cocoon_tl::functions::http as fhttp;
use cocoon_tl::types::worker as tworker;
use cocoon_tl::types::{TokensUsed, client as tclient, http as thttp, proxy as tproxy};
use cocoon_tl::{Identifiable, TlRead, TlWrite, peek_constructor};
use serde_json::json;

/// The chat completions path.
pub const CHAT: &str = "/v1/chat/completions";

/// A message from the proxy to a client, decoded.
#[derive(Debug)]
pub enum FromProxy {
    Head(tclient::QueryAnswerEx, thttp::Response),
    Part(tclient::QueryAnswerPartEx),
    Error(tclient::QueryAnswerErrorEx),
    Payment(tproxy::ClientRequestPayment),
    /// A worker's certificate (protocol 3).
    Evidence(tclient::WorkerEvidence),
    /// An answer's receipts (protocol 3).
    Receipt(tclient::AnswerReceipt),
}

/// Decodes a proxy's message to a client (panics on anything else).
pub fn from_proxy(data: &[u8]) -> FromProxy {
    match peek_constructor(data).unwrap() {
        tclient::QueryAnswerEx::CONSTRUCTOR_ID => {
            let a = tclient::QueryAnswerEx::from_bytes(data).unwrap();
            let r = thttp::Response::from_bytes(&a.answer).unwrap();
            FromProxy::Head(a, r)
        }
        tclient::QueryAnswerPartEx::CONSTRUCTOR_ID => {
            FromProxy::Part(tclient::QueryAnswerPartEx::from_bytes(data).unwrap())
        }
        tclient::QueryAnswerErrorEx::CONSTRUCTOR_ID => {
            FromProxy::Error(tclient::QueryAnswerErrorEx::from_bytes(data).unwrap())
        }
        tproxy::ClientRequestPayment::CONSTRUCTOR_ID => {
            FromProxy::Payment(tproxy::ClientRequestPayment::from_bytes(data).unwrap())
        }
        tclient::WorkerEvidence::CONSTRUCTOR_ID => {
            FromProxy::Evidence(tclient::WorkerEvidence::from_bytes(data).unwrap())
        }
        tclient::AnswerReceipt::CONSTRUCTOR_ID => {
            FromProxy::Receipt(tclient::AnswerReceipt::from_bytes(data).unwrap())
        }
        id => panic!("unexpected message {id:08x}"),
    }
}

/// A message from a worker to the proxy, decoded.
#[derive(Debug)]
pub enum FromWorker {
    Head(tproxy::QueryAnswerEx, thttp::Response),
    Part(tproxy::QueryAnswerPartEx),
    Error(tproxy::QueryAnswerErrorEx),
    EnabledDisabled(i32),
    NewCoefficient(i32),
    /// An answer's receipt (protocol 3).
    Receipt(tproxy::AnswerReceipt),
    /// `worker.modelInfo` (version 3): the context length.
    ModelInfo(i32),
}

/// Decodes a worker's message to the proxy (panics on anything else).
pub fn from_worker(data: &[u8]) -> FromWorker {
    match peek_constructor(data).unwrap() {
        tproxy::QueryAnswerEx::CONSTRUCTOR_ID => {
            let a = tproxy::QueryAnswerEx::from_bytes(data).unwrap();
            let r = thttp::Response::from_bytes(&a.answer).unwrap();
            FromWorker::Head(a, r)
        }
        tproxy::QueryAnswerPartEx::CONSTRUCTOR_ID => {
            FromWorker::Part(tproxy::QueryAnswerPartEx::from_bytes(data).unwrap())
        }
        tproxy::QueryAnswerErrorEx::CONSTRUCTOR_ID => {
            FromWorker::Error(tproxy::QueryAnswerErrorEx::from_bytes(data).unwrap())
        }
        tworker::EnabledDisabled::CONSTRUCTOR_ID => FromWorker::EnabledDisabled(
            tworker::EnabledDisabled::from_bytes(data).unwrap().disabled,
        ),
        tworker::NewCoefficient::CONSTRUCTOR_ID => FromWorker::NewCoefficient(
            tworker::NewCoefficient::from_bytes(data)
                .unwrap()
                .new_coefficient,
        ),
        tproxy::AnswerReceipt::CONSTRUCTOR_ID => {
            FromWorker::Receipt(tproxy::AnswerReceipt::from_bytes(data).unwrap())
        }
        tworker::ModelInfo::CONSTRUCTOR_ID => {
            FromWorker::ModelInfo(tworker::ModelInfo::from_bytes(data).unwrap().context_length)
        }
        id => panic!("unexpected message {id:08x}"),
    }
}

/// The value of header `name` (any case) among `headers`.
pub fn header<'a>(headers: &'a [thttp::Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// Token counts as `[prompt, cached, completion, reasoning, total]`.
pub fn tokens5(t: &TokensUsed) -> [i64; 5] {
    [
        t.prompt_tokens_used,
        t.cached_tokens_used,
        t.completion_tokens_used,
        t.reasoning_tokens_used,
        t.total_tokens_used,
    ]
}

/// `tokensUsed` from `[prompt, cached, completion, reasoning, total]` (see [`tokens5`]).
pub fn tokens_used(t: [i64; 5]) -> TokensUsed {
    let [prompt, cached, completion, reasoning, total] = t;
    TokensUsed {
        prompt_tokens_used: prompt,
        cached_tokens_used: cached,
        completion_tokens_used: completion,
        reasoning_tokens_used: reasoning,
        total_tokens_used: total,
    }
}

/// [`tokens5`] of a worker's final info, which must be there.
pub fn final_tokens(info: &Option<tproxy::QueryFinalInfo>) -> [i64; 5] {
    tokens5(&info.as_ref().expect("final info").tokens_used)
}

/// An HTTP POST of a JSON `body` to `url`, TL-encoded as a query carries it.
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

/// A chat request to the fake engine in `mode`.
pub fn chat_body(mode: &str, stream: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "Smol",
        "messages": [{"role": "user", "content": mode}],
        "stream": stream,
    }))
    .unwrap()
}

/// A chat request to the fake engine in `mode` with `extra` fields set (or replaced).
pub fn chat_with(mode: &str, stream: bool, extra: serde_json::Value) -> serde_json::Value {
    let mut b = json!({
        "model": "Smol",
        "messages": [{"role": "user", "content": mode}],
        "stream": stream,
    });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}
