//! Sequential RA-TLS connections over loopback (TCP + PoW + mutual TLS 1.3 + `tcp.connect`
//! + one query round trip), with sim evidence. Prints connections per second.
//!
//! `cargo run --release -p cocoon-ratls --example handshake_rate -- [count] [difficulty]`
#![allow(clippy::unwrap_used)] // a measuring tool: any failure ends the run

use std::time::{Duration, Instant};

use cocoon_attest::{Policy, SimKey};
use cocoon_net::Incoming;
use cocoon_ratls::cert::{Identity, SimSource};
use cocoon_ratls::config::CertResolver;
use cocoon_ratls::net::{RatlsAcceptor, RatlsConnector};
use cocoon_ratls::verifier::{RatlsVerifier, VerifierConfig};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(300);
    let difficulty: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t = Instant::now();
    let n_certs = 100;
    for _ in 0..n_certs {
        Identity::generate(&SimSource(SimKey::generate().unwrap()), now).unwrap();
    }
    println!(
        "cert generation (sim): {:.3} ms/cert",
        t.elapsed().as_secs_f64() * 1e3 / f64::from(n_certs)
    );
    let sid = Identity::generate(&SimSource(SimKey::generate().unwrap()), now).unwrap();
    let cid = Identity::generate(&SimSource(SimKey::generate().unwrap()), now).unwrap();
    let sv = RatlsVerifier::new(VerifierConfig::new(Policy::sim_test()));
    let cv = RatlsVerifier::new(VerifierConfig::new(Policy::sim_test()));
    let acceptor = RatlsAcceptor::new(
        CertResolver::new(&sid).unwrap(),
        sv.clone(),
        difficulty,
        cocoon_net::Config::default(),
    )
    .unwrap();
    let connector = RatlsConnector::new(
        CertResolver::new(&cid).unwrap(),
        cv.clone(),
        28,
        cocoon_net::Config::default(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_task, mut accepted) = acceptor.spawn_listener(listener, 64);
    tokio::spawn(async move {
        while let Some(mut acc) = accepted.recv().await {
            tokio::spawn(async move {
                let _h = acc.handle;
                while let Some(Incoming::Query { data, responder }) = acc.incoming.recv().await {
                    let _ = responder.answer(data);
                }
            });
        }
    });
    let t = Instant::now();
    for _ in 0..count {
        let (h, _rx, _peer) = connector.connect(addr).await.unwrap();
        h.query(b"ping".to_vec(), Duration::from_secs(5))
            .await
            .unwrap();
        h.close();
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "pow difficulty {difficulty}: {count} connections in {el:.3} s = {:.3} ms/conn, {:.0} conn/s \
         (verifier runs: client {}, server {}; attestation runs: client {}, server {})",
        el * 1e3 / f64::from(count),
        f64::from(count) / el,
        cv.invocations(),
        sv.invocations(),
        cv.attestation_runs(),
        sv.attestation_runs()
    );
}
