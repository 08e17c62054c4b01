#![forbid(unsafe_code)]
//! Answer receipts (protocol version 3; `docs/ra-tls.md`, "Receipts").
//!
//! For every successful answer the worker signs a `receipt.worker` (the request body as it
//! received it, the answer bytes as it sent them, the model, the usage, the price) with the
//! key of its RA-TLS certificate, and the proxy signs a `receipt.proxy` (which client request
//! that worker receipt answers, and what the proxy billed) with the key of its own. The
//! proxy hands the client the worker's certificate once per session, so the client checks
//! the worker's attestation itself, not the proxy's word for it.
//!
//! This crate is the pure core: building and signing the two receipts, the [`Receipt`]
//! document the client stores and serves (`GET /v1/receipts/{id}`) and `cocoon receipt
//! verify` reads, and [`verify`], which every check goes through, online and offline. The
//! caller supplies the certificate verifiers (with their clock and collateral) and what it
//! knows of the request.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cocoon_attest::VerifiedPeer;
use cocoon_ratls::sign::{SessionKey, certificate_public_key, verify_signature};
use cocoon_ratls::verifier::{RatlsVerifier, VerifyError};
use cocoon_tl::types::TokensUsed;
use cocoon_tl::types::receipt::{Proxy as ProxyReceipt, Worker as WorkerReceipt};
use cocoon_tl::{TlRead, TlWrite};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a worker's signature covers before the serialised `receipt.worker`.
pub const WORKER_DOMAIN: &[u8] = b"cocoon receipt v1: worker\0";
/// What a proxy's signature covers before the serialised `receipt.proxy`.
pub const PROXY_DOMAIN: &[u8] = b"cocoon receipt v1: proxy\0";
/// Longest serialised receipt accepted (a receipt is a few hundred bytes; the model name is
/// the only variable part).
pub const MAX_RECEIPT_BYTES: usize = 4096;
/// The `object` of a [`Receipt`] document.
pub const OBJECT: &str = "cocoon.receipt";

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// SHA-256 and length of a body that arrives in pieces.
#[derive(Clone, Default)]
pub struct BodyHash {
    hasher: Sha256,
    len: u64,
}

impl std::fmt::Debug for BodyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyHash").field("len", &self.len).finish()
    }
}

impl BodyHash {
    /// Adds the next piece.
    pub fn push(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// SHA-256 and length of everything pushed so far.
    pub fn digest(&self) -> ([u8; 32], u64) {
        (self.hasher.clone().finalize().into(), self.len)
    }
}

/// A receipt serialised and signed: (`receipt`, `signature`).
pub type Signed = (Vec<u8>, Vec<u8>);

/// Serialises and signs a worker receipt with the worker's session key.
pub fn sign_worker(r: &WorkerReceipt, key: &SessionKey) -> Result<Signed, rustls::Error> {
    let bytes = r.to_bytes();
    let sig = key.sign(WORKER_DOMAIN, &bytes)?;
    Ok((bytes, sig))
}

/// Serialises and signs a proxy receipt with the proxy's session key.
pub fn sign_proxy(r: &ProxyReceipt, key: &SessionKey) -> Result<Signed, rustls::Error> {
    let bytes = r.to_bytes();
    let sig = key.sign(PROXY_DOMAIN, &bytes)?;
    Ok((bytes, sig))
}

/// Whose part of a receipt a check concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Party {
    /// The worker that produced the answer.
    Worker,
    /// The proxy that relayed and billed it.
    Proxy,
}

impl std::fmt::Display for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Party::Worker => "worker",
            Party::Proxy => "proxy",
        })
    }
}

/// Why a receipt does not hold.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// A part does not decode (or a document field is not base64/hex).
    #[error("{0}: malformed receipt: {1}")]
    Malformed(Party, String),
    /// The answer came without the worker's receipt.
    #[error("the answer carries no worker receipt")]
    MissingWorker,
    /// No certificate for the worker that signed the receipt.
    #[error("no evidence for worker {0}")]
    MissingEvidence(String),
    /// The signature does not verify under the certificate's key.
    #[error("{0}: bad receipt signature")]
    BadSignature(Party),
    /// The signer's certificate (and its attestation) was refused.
    #[error("{0}: certificate refused: {1}")]
    Certificate(Party, VerifyError),
    /// The signer's image is not among the allowed ones.
    #[error("{0}: image {1} is not allowed by the root")]
    ImageNotAllowed(Party, String),
    /// The certificate is not the one the receipt names.
    #[error("{0}: the receipt names another key than the certificate's")]
    KeyMismatch(Party),
    /// The two parts do not describe the same answer.
    #[error("the proxy's receipt does not cover the worker's: {0}")]
    Unlinked(&'static str),
    /// The model is not what was asked for, or not in the root.
    #[error("model: {0}")]
    Model(String),
    /// The request the worker saw is not the one the client sent.
    #[error("the worker received another request body than the one sent")]
    RequestMismatch,
    /// The answer the worker sent is not the one the client received.
    #[error("the answer received differs from the one the worker sent ({0})")]
    AnswerMismatch(String),
    /// The receipt is for another request.
    #[error("the receipt is for request {0}, not this one")]
    WrongRequest(String),
    /// What was billed does not follow from the receipts.
    #[error("billing: {0}")]
    Billing(String),
}

impl ReceiptError {
    /// Which party is at fault (`None`: the receipts disagree with each other or with the
    /// client's own record, so either may be).
    pub fn party(&self) -> Option<Party> {
        match self {
            ReceiptError::Malformed(p, _)
            | ReceiptError::BadSignature(p)
            | ReceiptError::Certificate(p, _)
            | ReceiptError::ImageNotAllowed(p, _)
            | ReceiptError::KeyMismatch(p) => Some(*p),
            ReceiptError::MissingWorker
            | ReceiptError::MissingEvidence(_)
            | ReceiptError::Billing(_) => Some(Party::Proxy),
            ReceiptError::Model(_) => Some(Party::Worker),
            _ => None,
        }
    }
}

/// The raw parts of a receipt as they travelled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parts {
    /// The serialised `receipt.worker` (absent when the worker gave none).
    pub worker_receipt: Option<Vec<u8>>,
    /// Its signature.
    pub worker_signature: Vec<u8>,
    /// The worker's RA-TLS certificate (DER).
    pub worker_certificate: Option<Vec<u8>>,
    /// The serialised `receipt.proxy`.
    pub proxy_receipt: Vec<u8>,
    /// Its signature.
    pub proxy_signature: Vec<u8>,
    /// The proxy's RA-TLS certificate (DER).
    pub proxy_certificate: Vec<u8>,
}

/// What the checker trusts: the certificate verifiers (their policy, clock and collateral)
/// and the root's allowlists.
pub struct Trust<'a> {
    /// Verifies the proxy's certificate.
    pub proxy_verifier: &'a RatlsVerifier,
    /// Verifies the worker's certificate (CPU and, when configured, GPU evidence).
    pub worker_verifier: &'a RatlsVerifier,
    /// The root's `proxy_hashes` (`None`: not checked, as on networks that pin none).
    pub proxy_hashes: Option<&'a [[u8; 32]]>,
    /// The root's `worker_hashes`.
    pub worker_hashes: &'a [[u8; 32]],
    /// The root's `model_hashes` (SHA-256 of each full model id).
    pub model_hashes: &'a [[u8; 32]],
}

/// What the checker knows of the request itself; each `None` is not checked (an offline
/// check without the saved bodies).
#[derive(Debug, Clone, Default)]
pub struct Expect<'a> {
    /// The client's id for the request.
    pub request_id: Option<[u8; 32]>,
    /// SHA-256 of the HTTP body the client sent.
    pub request_hash: Option<[u8; 32]>,
    /// SHA-256 and length of the answer body as it arrived.
    pub answer: Option<([u8; 32], u64)>,
    /// The model the request named (the base name, before `@`).
    pub model: Option<&'a str>,
    /// The tokens the proxy's final info reported, which the client booked.
    pub billed: Option<TokensUsed>,
    /// The root's price per token.
    pub price_per_token: Option<u64>,
    /// The client's own certificate key.
    pub client_key: Option<[u8; 32]>,
}

/// What a verified certificate showed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// `tdx`, `sev-snp`, `sim`, …
    pub backend: String,
    /// The image hash the root's allowlist names (hex).
    pub image_hash: String,
    /// TCB status of the platform.
    pub tcb_status: String,
    /// Until when the verdict holds (Unix seconds).
    pub valid_until: u64,
    /// The GPU's verified evidence, when the certificate carries any that verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
}

impl Evidence {
    fn of(p: &VerifiedPeer) -> Evidence {
        Evidence {
            backend: p.backend().name().to_owned(),
            image_hash: hex::encode(p.image_hash()),
            tcb_status: format!("{:?}", p.tcb_status()),
            valid_until: p.valid_until(),
            gpu: p.gpu().map(|g| g.summary()),
        }
    }
}

/// A receipt that verified: both parts decoded and what each certificate showed.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The worker's receipt.
    pub worker: WorkerReceipt,
    /// What the worker's certificate showed.
    pub worker_evidence: Evidence,
    /// The proxy's receipt.
    pub proxy: ProxyReceipt,
    /// What the proxy's certificate showed.
    pub proxy_evidence: Evidence,
}

fn decode<T: TlRead>(party: Party, bytes: &[u8]) -> Result<T, ReceiptError> {
    if bytes.len() > MAX_RECEIPT_BYTES {
        return Err(ReceiptError::Malformed(
            party,
            format!("{} bytes (most {MAX_RECEIPT_BYTES})", bytes.len()),
        ));
    }
    T::from_bytes(bytes).map_err(|e| ReceiptError::Malformed(party, e.to_string()))
}

/// Verifies the certificate, its image against `allowed` and that its key is `key`.
fn signer(
    party: Party,
    verifier: &RatlsVerifier,
    der: &[u8],
    allowed: Option<&[[u8; 32]]>,
    key: &[u8; 32],
) -> Result<VerifiedPeer, ReceiptError> {
    // Verified first (the verifier keeps what it found in a certificate it saw before, so
    // a session's certificates are not parsed again for every answer), judged in the
    // order: the certificate's key, then its verdict.
    let peer = match verifier.verify_cert(&CertificateDer::from(der), &[]) {
        Ok(peer) if peer.public_key() == Some(key) => peer,
        verdict => {
            let cert_key =
                certificate_public_key(der).map_err(|e| ReceiptError::Certificate(party, e))?;
            if &cert_key != key {
                return Err(ReceiptError::KeyMismatch(party));
            }
            verdict.map_err(|e| ReceiptError::Certificate(party, e))?
        }
    };
    if let Some(allowed) = allowed
        && !allowed.contains(peer.image_hash())
    {
        return Err(ReceiptError::ImageNotAllowed(
            party,
            hex::encode(peer.image_hash()),
        ));
    }
    Ok(peer)
}

fn tokens(t: &TokensUsed) -> [i64; 5] {
    [
        t.prompt_tokens_used,
        t.cached_tokens_used,
        t.completion_tokens_used,
        t.reasoning_tokens_used,
        t.total_tokens_used,
    ]
}

/// Checks a receipt: both signatures under attested certificates whose images the root
/// allows, the model in the root, the two parts describing the same answer, the request and
/// answer hashes against what the client sent and received, and the billing against the
/// worker's report and the price. The first failure is the error.
pub fn verify(
    parts: &Parts,
    trust: &Trust<'_>,
    expect: &Expect<'_>,
) -> Result<Verified, ReceiptError> {
    let proxy: ProxyReceipt = decode(Party::Proxy, &parts.proxy_receipt)?;
    let proxy_peer = signer(
        Party::Proxy,
        trust.proxy_verifier,
        &parts.proxy_certificate,
        trust.proxy_hashes,
        &proxy.proxy_key,
    )?;
    if !verify_signature(
        &proxy.proxy_key,
        PROXY_DOMAIN,
        &parts.proxy_receipt,
        &parts.proxy_signature,
    ) {
        return Err(ReceiptError::BadSignature(Party::Proxy));
    }
    if let Some(id) = expect.request_id
        && id != proxy.request_id
    {
        return Err(ReceiptError::WrongRequest(hex::encode(proxy.request_id)));
    }
    if let Some(k) = expect.client_key
        && k != proxy.client_key
    {
        return Err(ReceiptError::Unlinked("issued to another client"));
    }
    let Some(worker_bytes) = &parts.worker_receipt else {
        return Err(ReceiptError::MissingWorker);
    };
    let worker: WorkerReceipt = decode(Party::Worker, worker_bytes)?;
    let Some(worker_cert) = &parts.worker_certificate else {
        return Err(ReceiptError::MissingEvidence(hex::encode(
            worker.worker_key,
        )));
    };
    let worker_peer = signer(
        Party::Worker,
        trust.worker_verifier,
        worker_cert,
        Some(trust.worker_hashes),
        &worker.worker_key,
    )?;
    if !verify_signature(
        &worker.worker_key,
        WORKER_DOMAIN,
        worker_bytes,
        &parts.worker_signature,
    ) {
        return Err(ReceiptError::BadSignature(Party::Worker));
    }
    // The two parts describe one answer between these two.
    if proxy.worker_receipt_hash != sha256(worker_bytes) {
        return Err(ReceiptError::Unlinked("worker receipt hash"));
    }
    if proxy.worker_key != worker.worker_key {
        return Err(ReceiptError::Unlinked("worker key"));
    }
    if proxy.worker_request_id != worker.request_id {
        return Err(ReceiptError::Unlinked("worker request id"));
    }
    if worker.proxy_key != proxy.proxy_key {
        return Err(ReceiptError::Unlinked("the worker served another proxy"));
    }
    // The model: in the root, and the one asked for.
    let model_hash = sha256(worker.model.as_bytes());
    if !trust.model_hashes.contains(&model_hash) {
        return Err(ReceiptError::Model(format!(
            "{} is not allowed by the root",
            worker.model
        )));
    }
    if let Some(m) = expect.model {
        let base = worker.model.split('@').next().unwrap_or(&worker.model);
        if base != m {
            return Err(ReceiptError::Model(format!(
                "answered by {base}, asked for {m}"
            )));
        }
    }
    if let Some(h) = expect.request_hash
        && h != worker.request_hash
    {
        return Err(ReceiptError::RequestMismatch);
    }
    if let Some((h, len)) = expect.answer {
        if u64::try_from(worker.answer_bytes).ok() != Some(len) {
            return Err(ReceiptError::AnswerMismatch(format!(
                "{len} bytes received, {} sent",
                worker.answer_bytes
            )));
        }
        if h != worker.answer_hash {
            return Err(ReceiptError::AnswerMismatch("content".into()));
        }
    }
    check_billing(&worker, &proxy, expect)?;
    Ok(Verified {
        worker,
        worker_evidence: Evidence::of(&worker_peer),
        proxy,
        proxy_evidence: Evidence::of(&proxy_peer),
    })
}

/// What the proxy billed: never more than the worker reported in any category, priced at
/// the worker's price, its cost the tokens times that price, and what the client booked.
fn check_billing(
    worker: &WorkerReceipt,
    proxy: &ProxyReceipt,
    expect: &Expect<'_>,
) -> Result<(), ReceiptError> {
    let billed = tokens(&proxy.tokens_used);
    let reported = tokens(&worker.tokens_used);
    if billed.iter().any(|t| *t < 0) {
        return Err(ReceiptError::Billing("negative token count".into()));
    }
    if billed.iter().zip(reported.iter()).any(|(b, r)| b > r) {
        return Err(ReceiptError::Billing(format!(
            "billed {billed:?} tokens, the worker reported {reported:?}"
        )));
    }
    if proxy.price_per_token != worker.price_per_token {
        return Err(ReceiptError::Billing(format!(
            "priced at {} per token, the worker at {}",
            proxy.price_per_token, worker.price_per_token
        )));
    }
    let cost = i128::from(proxy.tokens_used.total_tokens_used) * i128::from(proxy.price_per_token);
    if cost != i128::from(proxy.cost) {
        return Err(ReceiptError::Billing(format!(
            "cost {} is not {} tokens × {}",
            proxy.cost, proxy.tokens_used.total_tokens_used, proxy.price_per_token
        )));
    }
    if let Some(p) = expect.price_per_token
        && i64::try_from(p).ok() != Some(proxy.price_per_token)
    {
        return Err(ReceiptError::Billing(format!(
            "priced at {} per token, the root says {p}",
            proxy.price_per_token
        )));
    }
    if let Some(b) = &expect.billed
        && tokens(b) != billed
    {
        return Err(ReceiptError::Billing(format!(
            "the receipt says {billed:?} tokens, the answer's final info {:?}",
            tokens(b)
        )));
    }
    Ok(())
}

/// One signed part of a [`Receipt`] document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedPart {
    /// The serialised TL receipt, base64.
    pub receipt: String,
    /// Its Ed25519 signature, base64.
    pub signature: String,
    /// The signer's certificate key, hex.
    pub public_key: String,
    /// The signer's RA-TLS certificate (DER, base64): its evidence.
    pub certificate: String,
    /// What the certificate showed when the client verified it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
}

/// The usage a receipt records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptUsage {
    /// Prompt tokens as the engine counted them.
    pub prompt_tokens: i64,
    /// Cached prompt tokens.
    pub cached_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Reasoning tokens.
    pub reasoning_tokens: i64,
    /// The worker's coefficient (1000 = 1.0).
    pub coefficient: i32,
    /// Adjusted tokens billed (the proxy's receipt).
    pub billed_tokens: i64,
    /// nanoTON per adjusted token.
    pub price_per_token: i64,
    /// What the client paid, nanoTON.
    pub cost_nanoton: i64,
}

/// A receipt as the client stores and serves it and `cocoon receipt verify` reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// Always [`OBJECT`].
    pub object: String,
    /// The client's request id (hex): the `X-Cocoon-Receipt` header.
    pub id: String,
    /// When the proxy signed it (Unix seconds).
    pub created: u64,
    /// The full model id that answered (`Name@revision:sha256`).
    pub model: String,
    /// SHA-256 of the request body the worker received (hex).
    pub request_sha256: String,
    /// SHA-256 of the answer body the worker sent (hex).
    pub answer_sha256: String,
    /// Its length in bytes.
    pub answer_bytes: i64,
    /// Tokens, price and cost.
    pub usage: ReceiptUsage,
    /// The worker's part.
    pub worker: SignedPart,
    /// The proxy's part.
    pub proxy: SignedPart,
}

impl Receipt {
    /// The document of a verified receipt.
    pub fn of(parts: &Parts, v: &Verified) -> Receipt {
        let w = &v.worker;
        let p = &v.proxy;
        let part =
            |receipt: &[u8], sig: &[u8], key: &[u8; 32], cert: &[u8], ev: &Evidence| SignedPart {
                receipt: B64.encode(receipt),
                signature: B64.encode(sig),
                public_key: hex::encode(key),
                certificate: B64.encode(cert),
                evidence: Some(ev.clone()),
            };
        Receipt {
            object: OBJECT.into(),
            id: hex::encode(p.request_id),
            created: u64::try_from(p.signed_at_ms / 1000).unwrap_or(0),
            model: w.model.clone(),
            request_sha256: hex::encode(w.request_hash),
            answer_sha256: hex::encode(w.answer_hash),
            answer_bytes: w.answer_bytes,
            usage: ReceiptUsage {
                prompt_tokens: w.prompt_tokens,
                cached_tokens: w.cached_tokens,
                completion_tokens: w.completion_tokens,
                reasoning_tokens: w.reasoning_tokens,
                coefficient: w.coefficient,
                billed_tokens: p.tokens_used.total_tokens_used,
                price_per_token: p.price_per_token,
                cost_nanoton: p.cost,
            },
            worker: part(
                parts.worker_receipt.as_deref().unwrap_or_default(),
                &parts.worker_signature,
                &w.worker_key,
                parts.worker_certificate.as_deref().unwrap_or_default(),
                &v.worker_evidence,
            ),
            proxy: part(
                &parts.proxy_receipt,
                &parts.proxy_signature,
                &p.proxy_key,
                &parts.proxy_certificate,
                &v.proxy_evidence,
            ),
        }
    }

    /// The signed parts of the document. Only these are trusted by [`verify`]: the readable
    /// fields beside them are checked against them by [`Receipt::check_fields`].
    pub fn parts(&self) -> Result<Parts, ReceiptError> {
        let b = |party: Party, what: &str, s: &str| {
            B64.decode(s)
                .map_err(|e| ReceiptError::Malformed(party, format!("{what}: {e}")))
        };
        Ok(Parts {
            worker_receipt: Some(b(Party::Worker, "receipt", &self.worker.receipt)?),
            worker_signature: b(Party::Worker, "signature", &self.worker.signature)?,
            worker_certificate: Some(b(Party::Worker, "certificate", &self.worker.certificate)?),
            proxy_receipt: b(Party::Proxy, "receipt", &self.proxy.receipt)?,
            proxy_signature: b(Party::Proxy, "signature", &self.proxy.signature)?,
            proxy_certificate: b(Party::Proxy, "certificate", &self.proxy.certificate)?,
        })
    }

    /// Whether the readable fields say what the signed receipts say (a document edited by
    /// hand fails here even when its signed parts verify).
    pub fn check_fields(&self, v: &Verified) -> Result<(), ReceiptError> {
        let expected = Receipt::of(&self.parts()?, v);
        let mut mine = self.clone();
        // The evidence summaries are the verifier's, recomputed on every check.
        mine.worker.evidence = expected.worker.evidence.clone();
        mine.proxy.evidence = expected.proxy.evidence.clone();
        if mine != expected {
            return Err(ReceiptError::Malformed(
                Party::Proxy,
                "the readable fields differ from the signed receipts".into(),
            ));
        }
        Ok(())
    }

    /// When the proxy signed it, in Unix seconds: the time its certificates are checked at
    /// offline (`None` when the proxy part does not decode).
    pub fn signed_at(&self) -> Option<u64> {
        let parts = self.parts().ok()?;
        let p: ProxyReceipt = decode(Party::Proxy, &parts.proxy_receipt).ok()?;
        u64::try_from(p.signed_at_ms / 1000).ok()
    }
}

#[cfg(test)]
mod tests;
