#![allow(clippy::unwrap_used)]
//! Receipts built and signed by real sim RA-TLS identities, verified, and refused after
//! every single-byte tamper of every signed part.

use std::sync::Arc;

use cocoon_attest::{Backend, Policy, SimKey};
use cocoon_ratls::cert::{Identity, SimSource};
use cocoon_ratls::verifier::{VerifierConfig, fixed_clock};

use super::*;

const NOW: u64 = 1_800_000_000;
const MODEL: &str = "Smol@main:0000000000000000000000000000000000000000000000000000000000000000";

struct World {
    worker: SessionKey,
    proxy: SessionKey,
    client_key: [u8; 32],
    verifier: Arc<RatlsVerifier>,
    image: [u8; 32],
}

fn identity() -> SessionKey {
    let id = Identity::generate(&SimSource(SimKey::generate().unwrap()), NOW - 60).unwrap();
    SessionKey::new(id.certified_key().unwrap()).unwrap()
}

fn world() -> World {
    let mut policy = Policy::sim_test();
    policy.allowed_backends = vec![Backend::Sim];
    let mut cfg = VerifierConfig::new(policy);
    cfg.clock = fixed_clock(NOW);
    let verifier = RatlsVerifier::new(cfg);
    let worker = identity();
    let image = *verifier
        .verify_cert(worker.certificate().unwrap(), &[])
        .unwrap()
        .image_hash();
    World {
        worker,
        proxy: identity(),
        client_key: [7; 32],
        verifier,
        image,
    }
}

const REQUEST: &[u8] = br#"{"model":"Smol","messages":[{"role":"user","content":"hi"}]}"#;
const ANSWER: &[u8] = b"data: {\"x\":1}\n\ndata: [DONE]\n\n";

fn billed() -> TokensUsed {
    TokensUsed {
        prompt_tokens_used: 10,
        cached_tokens_used: 0,
        completion_tokens_used: 4,
        reasoning_tokens_used: 0,
        total_tokens_used: 14,
    }
}

fn parts(w: &World) -> Parts {
    let wr = WorkerReceipt {
        request_id: [2; 32],
        worker_key: *w.worker.public_key(),
        proxy_key: *w.proxy.public_key(),
        model: MODEL.into(),
        request_hash: sha256(REQUEST),
        answer_hash: sha256(ANSWER),
        answer_bytes: ANSWER.len() as i64,
        prompt_tokens: 10,
        cached_tokens: 0,
        completion_tokens: 4,
        reasoning_tokens: 0,
        coefficient: 1000,
        price_per_token: 20,
        tokens_used: billed(),
        started_at_ms: (NOW as i64 - 2) * 1000,
        finished_at_ms: (NOW as i64 - 1) * 1000,
    };
    let (worker_receipt, worker_signature) = sign_worker(&wr, &w.worker).unwrap();
    let pr = ProxyReceipt {
        request_id: [1; 32],
        proxy_key: *w.proxy.public_key(),
        client_key: w.client_key,
        client_sc: "0:00".into(),
        worker_request_id: [2; 32],
        worker_receipt_hash: sha256(&worker_receipt),
        worker_key: *w.worker.public_key(),
        tokens_used: billed(),
        price_per_token: 20,
        cost: 14 * 20,
        signed_at_ms: (NOW as i64) * 1000,
    };
    let (proxy_receipt, proxy_signature) = sign_proxy(&pr, &w.proxy).unwrap();
    Parts {
        worker_receipt: Some(worker_receipt),
        worker_signature,
        worker_certificate: Some(w.worker.certificate().unwrap().to_vec()),
        proxy_receipt,
        proxy_signature,
        proxy_certificate: w.proxy.certificate().unwrap().to_vec(),
    }
}

fn check(w: &World, p: &Parts) -> Result<Verified, ReceiptError> {
    let models = [sha256(MODEL.as_bytes())];
    let workers = [w.image];
    let trust = Trust {
        proxy_verifier: &w.verifier,
        worker_verifier: &w.verifier,
        proxy_hashes: None,
        worker_hashes: &workers,
        model_hashes: &models,
    };
    let expect = Expect {
        request_id: Some([1; 32]),
        request_hash: Some(sha256(REQUEST)),
        answer: Some((sha256(ANSWER), ANSWER.len() as u64)),
        model: Some("Smol"),
        billed: Some(billed()),
        price_per_token: Some(20),
        client_key: Some(w.client_key),
    };
    verify(p, &trust, &expect)
}

#[test]
fn an_honest_receipt_verifies_and_its_document_round_trips() {
    let w = world();
    let p = parts(&w);
    let v = check(&w, &p).unwrap();
    assert_eq!(v.worker_evidence.backend, "sim");
    let doc = Receipt::of(&p, &v);
    assert_eq!(doc.id, hex::encode([1u8; 32]));
    assert_eq!(doc.usage.cost_nanoton, 280);
    let json = serde_json::to_string(&doc).unwrap();
    let back: Receipt = serde_json::from_str(&json).unwrap();
    assert_eq!(back.parts().unwrap(), p);
    let v2 = check(&w, &back.parts().unwrap()).unwrap();
    back.check_fields(&v2).unwrap();
    assert_eq!(back.signed_at(), Some(NOW));
    // A readable field changed by hand is refused even though the signatures hold.
    let mut edited = back.clone();
    edited.usage.cost_nanoton = 1;
    assert!(edited.check_fields(&v2).is_err());
}

/// Every single-byte change of every signed part (receipt, signature, certificate) is
/// refused.
#[test]
fn every_byte_of_every_part_is_covered() {
    let w = world();
    let p = parts(&w);
    type Field = fn(&mut Parts) -> &mut Vec<u8>;
    let fields: [(&str, Field); 6] = [
        ("worker receipt", |p| p.worker_receipt.as_mut().unwrap()),
        ("worker signature", |p| &mut p.worker_signature),
        ("worker certificate", |p| {
            p.worker_certificate.as_mut().unwrap()
        }),
        ("proxy receipt", |p| &mut p.proxy_receipt),
        ("proxy signature", |p| &mut p.proxy_signature),
        ("proxy certificate", |p| &mut p.proxy_certificate),
    ];
    let mut accepted = Vec::new();
    for (name, field) in fields {
        let len = field(&mut p.clone()).len();
        for i in 0..len {
            for flip in [0x01, 0x80] {
                let mut t = p.clone();
                field(&mut t)[i] ^= flip;
                if check(&w, &t).is_ok() {
                    accepted.push(format!("{name}: byte {i} of {len} ^ {flip:#x}"));
                }
            }
        }
    }
    assert!(accepted.is_empty(), "changed and accepted: {accepted:#?}");
}

#[test]
fn each_mismatch_is_refused_with_its_reason() {
    let w = world();
    let p = parts(&w);
    let models = [sha256(MODEL.as_bytes())];
    let workers = [w.image];
    let trust = Trust {
        proxy_verifier: &w.verifier,
        worker_verifier: &w.verifier,
        proxy_hashes: None,
        worker_hashes: &workers,
        model_hashes: &models,
    };
    let base = Expect {
        request_id: Some([1; 32]),
        request_hash: Some(sha256(REQUEST)),
        answer: Some((sha256(ANSWER), ANSWER.len() as u64)),
        model: Some("Smol"),
        billed: Some(billed()),
        price_per_token: Some(20),
        client_key: Some(w.client_key),
    };
    let run = |e: Expect<'_>| verify(&p, &trust, &e).unwrap_err().to_string();
    let mut e = base.clone();
    e.request_hash = Some(sha256(b"another prompt"));
    assert!(run(e).contains("another request body"));
    let mut e = base.clone();
    e.answer = Some((sha256(b"data: [DONE]\n\n"), ANSWER.len() as u64));
    assert!(run(e).contains("differs"));
    let mut e = base.clone();
    e.answer = Some((sha256(ANSWER), ANSWER.len() as u64 - 1));
    assert!(run(e).contains("bytes received"));
    let mut e = base.clone();
    e.model = Some("Other");
    assert!(run(e).contains("asked for Other"));
    let mut e = base.clone();
    e.request_id = Some([9; 32]);
    assert!(run(e).contains("not this one"));
    let mut e = base.clone();
    e.billed = Some(TokensUsed {
        total_tokens_used: 15,
        ..billed()
    });
    assert!(run(e).contains("final info"));
    let mut e = base.clone();
    e.price_per_token = Some(21);
    assert!(run(e).contains("root says"));
    let mut e = base.clone();
    e.client_key = Some([8; 32]);
    assert!(run(e).contains("another client"));
    // A worker image or a model the root does not allow.
    let other = [[0u8; 32]];
    let t2 = Trust {
        worker_hashes: &other,
        ..trust
    };
    assert!(matches!(
        verify(&p, &t2, &base),
        Err(ReceiptError::ImageNotAllowed(Party::Worker, _))
    ));
    let t3 = Trust {
        model_hashes: &other,
        proxy_verifier: &w.verifier,
        worker_verifier: &w.verifier,
        proxy_hashes: None,
        worker_hashes: &workers,
    };
    assert!(matches!(
        verify(&p, &t3, &base),
        Err(ReceiptError::Model(_))
    ));
    // No worker part, or no certificate for it.
    let mut q = p.clone();
    q.worker_receipt = None;
    assert!(matches!(
        verify(&q, &trust, &base),
        Err(ReceiptError::MissingWorker)
    ));
    let mut q = p.clone();
    q.worker_certificate = None;
    assert!(matches!(
        verify(&q, &trust, &base),
        Err(ReceiptError::MissingEvidence(_))
    ));
    // Another worker's certificate beside this worker's receipt.
    let mut q = p.clone();
    q.worker_certificate = Some(identity().certificate().unwrap().to_vec());
    assert!(matches!(
        verify(&q, &trust, &base),
        Err(ReceiptError::KeyMismatch(Party::Worker))
    ));
}

/// A proxy that bills more than the worker reported, or at another price, is caught even
/// when it signs what it did.
#[test]
fn a_proxy_billing_more_than_the_worker_reported_is_refused() {
    let w = world();
    let mut p = parts(&w);
    let mut pr: ProxyReceipt = ProxyReceipt::from_bytes(&p.proxy_receipt).unwrap();
    pr.tokens_used.completion_tokens_used += 5;
    pr.tokens_used.total_tokens_used += 5;
    pr.cost = pr.tokens_used.total_tokens_used * pr.price_per_token;
    (p.proxy_receipt, p.proxy_signature) = sign_proxy(&pr, &w.proxy).unwrap();
    let models = [sha256(MODEL.as_bytes())];
    let workers = [w.image];
    let trust = Trust {
        proxy_verifier: &w.verifier,
        worker_verifier: &w.verifier,
        proxy_hashes: None,
        worker_hashes: &workers,
        model_hashes: &models,
    };
    let e = verify(&p, &trust, &Expect::default()).unwrap_err();
    assert!(e.to_string().contains("the worker reported"), "{e}");
    assert_eq!(e.party(), Some(Party::Proxy));
}
