//! `cocoon-bench-receipt`: what an answer's receipts cost (`cocoon_receipt`), one thread,
//! sim RA-TLS identities: the worker's and the proxy's signatures, and the client's check
//! with certificate verdicts cached (as a client session runs) and without (as `cocoon
//! receipt verify` runs). See bench/README.md.

use std::hint::black_box;
use std::time::Instant;

use cocoon_attest::{Backend, Policy, SimKey};
use cocoon_ratls::cert::{Identity, SimSource};
use cocoon_ratls::sign::SessionKey;
use cocoon_ratls::verifier::{RatlsVerifier, VerifierConfig, fixed_clock};
use cocoon_receipt::{Expect, Parts, Trust, sha256, sign_proxy, sign_worker};
use cocoon_tl::types::TokensUsed;
use cocoon_tl::types::receipt::{Proxy, Worker};

const NOW: u64 = 1_800_000_000;
const MODEL: &str = "Smol@main:0000000000000000000000000000000000000000000000000000000000000000";

fn rate(name: &str, secs: f64, mut f: impl FnMut()) {
    f();
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..8 {
            f();
        }
        n += 8;
    }
    let elapsed = start.elapsed();
    println!(
        "  {name:<58} {:>8.0} /s  {:>8.1} µs each  ({n} in {:.2} s)",
        f64::from(n) / elapsed.as_secs_f64(),
        (elapsed / n).as_secs_f64() * 1e6,
        elapsed.as_secs_f64()
    );
}

fn key() -> SessionKey {
    let id = Identity::generate(&SimSource(SimKey::generate().expect("sim key")), NOW - 60)
        .expect("identity");
    SessionKey::new(id.certified_key().expect("certified key")).expect("session key")
}

fn verifier(cache: bool) -> std::sync::Arc<RatlsVerifier> {
    let mut policy = Policy::sim_test();
    policy.allowed_backends = vec![Backend::Sim];
    let mut cfg = VerifierConfig::new(policy);
    cfg.clock = fixed_clock(NOW);
    if !cache {
        cfg.cache_ttl_secs = 0;
    }
    RatlsVerifier::new(cfg)
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let (worker, proxy) = (key(), key());
    let tokens = TokensUsed {
        prompt_tokens_used: 30,
        cached_tokens_used: 0,
        completion_tokens_used: 100,
        reasoning_tokens_used: 0,
        total_tokens_used: 230,
    };
    let w = Worker {
        request_id: [2; 32],
        worker_key: *worker.public_key(),
        proxy_key: *proxy.public_key(),
        model: MODEL.into(),
        request_hash: sha256(b"request"),
        answer_hash: sha256(b"answer"),
        answer_bytes: 6,
        prompt_tokens: 30,
        cached_tokens: 0,
        completion_tokens: 100,
        reasoning_tokens: 0,
        coefficient: 1000,
        price_per_token: 20,
        tokens_used: tokens.clone(),
        started_at_ms: 0,
        finished_at_ms: 0,
    };
    let (worker_receipt, worker_signature) = sign_worker(&w, &worker).expect("sign");
    let p = Proxy {
        request_id: [1; 32],
        proxy_key: *proxy.public_key(),
        client_key: [7; 32],
        client_sc: "0:00".into(),
        worker_request_id: [2; 32],
        worker_receipt_hash: sha256(&worker_receipt),
        worker_key: *worker.public_key(),
        tokens_used: tokens,
        price_per_token: 20,
        cost: 230 * 20,
        signed_at_ms: (NOW as i64) * 1000,
    };
    let (proxy_receipt, proxy_signature) = sign_proxy(&p, &proxy).expect("sign");
    let parts = Parts {
        worker_receipt: Some(worker_receipt),
        worker_signature,
        worker_certificate: Some(worker.certificate().expect("cert").to_vec()),
        proxy_receipt,
        proxy_signature,
        proxy_certificate: proxy.certificate().expect("cert").to_vec(),
    };
    println!(
        "cocoon-bench-receipt {} (one thread, sim identities)",
        env!("CARGO_PKG_VERSION")
    );
    rate("worker: serialise and sign receipt.worker", secs, || {
        black_box(sign_worker(black_box(&w), &worker).expect("sign"));
    });
    rate("proxy: serialise and sign receipt.proxy", secs, || {
        black_box(sign_proxy(black_box(&p), &proxy).expect("sign"));
    });
    let image = *verifier(false)
        .verify_cert(&worker.certificate().expect("cert").clone(), &[])
        .expect("sim worker")
        .image_hash();
    let (workers, models) = ([image], [sha256(MODEL.as_bytes())]);
    for (name, v) in [
        (
            "client: verify (certificate verdicts cached, as a session)",
            verifier(true),
        ),
        (
            "offline: verify (every certificate verified again)",
            verifier(false),
        ),
    ] {
        let trust = Trust {
            proxy_verifier: &v,
            worker_verifier: &v,
            proxy_hashes: None,
            worker_hashes: &workers,
            model_hashes: &models,
        };
        rate(name, secs, || {
            black_box(cocoon_receipt::verify(&parts, &trust, &Expect::default()).expect("valid"));
        });
    }
}
