//! Throughput benchmarks of the protocol layers. Run in release:
//!
//! ```sh
//! cargo run --release -p cocoon-bench -- [codec|session|attest|all]
//! ```
//!
//! `codec`: frames encoded and decoded per second (frame codec + TL codec, in memory).
//! `session`: one-way messages and query round trips per second between two sessions over a
//! loopback TCP connection (driver, session state machine, codec and the kernel's TCP).
//! `attest`: attestation evidence verified per second: TDX quotes cold (full
//! `Policy::evaluate`) and through `VerificationCache`, SEV-SNP reports, sim evidence.
//! `ratls`: sequential RA-TLS connections per second over loopback (new TCP + PoW + mutual
//! TLS 1.3 + session ready + one query), sim evidence, PoW difficulty 0 and 20.
//! `engine`: the embedded inference engine against llama.cpp itself (see `engine.rs` and
//! `bench/README.md`); not part of `all`, since it needs the model and the reference build.
#![forbid(unsafe_code)]

mod engine;

use cocoon_net::driver::{Config, Incoming};
use cocoon_net::tcp::{Listener, connect_tcp};
use cocoon_tl::frame::{FrameDecoder, FrameEncoder};
use cocoon_tl::types::{proxy, tcp};
use cocoon_tl::{Identifiable, TlRead, TlWrite, enums};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    if what == "engine" {
        // The embedded engine as the worker runs it: OpenMP threads that spin only briefly
        // at a barrier (cocoon_llama::openmp); llama.cpp's tools run with their own defaults.
        if let Err(e) = cocoon_llama::openmp::ensure_short_spin() {
            eprintln!("engine: could not set GOMP_SPINCOUNT: {e}");
        }
        println!(
            "cocoon-bench {} ({} cpus)",
            env!("CARGO_PKG_VERSION"),
            cpus()
        );
        let rest: Vec<String> = std::env::args().skip(2).collect();
        engine::run(&rest);
        return;
    }
    if !matches!(
        what.as_str(),
        "codec" | "session" | "attest" | "ratls" | "all"
    ) {
        eprintln!("usage: cocoon-bench [codec|session|attest|ratls|all] | engine [--help]");
        std::process::exit(64);
    }
    println!(
        "cocoon-bench {} ({} cpus)",
        env!("CARGO_PKG_VERSION"),
        cpus()
    );
    if what == "codec" || what == "all" {
        codec();
    }
    if what == "session" || what == "all" {
        session();
    }
    if what == "attest" || what == "all" {
        attest();
    }
    if what == "ratls" || what == "all" {
        ratls();
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// An answer part as a worker streams it: `chunk` bytes of SSE text inside
/// `proxy.queryAnswerPartEx`, inside `tcp.packet`. Built from scratch each call, as a sender
/// does for every part.
fn answer_part_payload(chunk: &[u8]) -> Vec<u8> {
    let part = proxy::QueryAnswerPartEx {
        request_id: [7; 32],
        answer: chunk.to_vec(),
        final_info: None,
    };
    tcp::Packet {
        data: part.to_bytes(),
    }
    .to_bytes()
}

/// A client request: `body` (a chat completion) inside `http.request`, inside
/// `client.runQueryEx`, inside `tcp.packet`.
fn request_payload(body: &[u8]) -> Vec<u8> {
    let http = cocoon_tl::functions::http::Request {
        method: "POST".into(),
        url: "/v1/chat/completions".into(),
        http_version: "HTTP/1.1".into(),
        headers: vec![cocoon_tl::types::http::Header {
            name: "Content-Type".into(),
            value: "application/json".into(),
        }],
        payload: body.to_vec(),
    };
    let run = cocoon_tl::functions::client::RunQueryEx {
        model_name: "SmolLM2-135M-Instruct".into(),
        query: http.to_bytes(),
        max_coefficient: 4000,
        max_tokens: 1000,
        timeout: 114.0,
        request_id: [1; 32],
        min_config_version: 1,
        enable_debug: None,
    };
    tcp::Packet {
        data: run.to_bytes(),
    }
    .to_bytes()
}

fn chat_body() -> Vec<u8> {
    format!(
        "{{\"model\":\"SmolLM2-135M-Instruct\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "y".repeat(2000)
    )
    .into_bytes()
}

fn report(name: &str, count: usize, bytes: usize, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "  {name:<44} {:>12.0} /s  {:>8.1} MiB/s  ({count} in {:.2} s)",
        count as f64 / secs,
        bytes as f64 / secs / (1 << 20) as f64,
        secs
    );
}

/// Builds one frame payload from scratch.
type PayloadBuilder<'a> = Box<dyn Fn() -> Vec<u8> + 'a>;

fn codec() {
    println!("codec (single thread, in memory)");
    let chunk = vec![b'x'; 128];
    let body = chat_body();
    let cases: [(&str, PayloadBuilder<'_>, usize); 2] = [
        (
            "answer part 128 B",
            Box::new(|| answer_part_payload(black_box(&chunk))),
            3_000_000,
        ),
        (
            "request 2 KiB (runQueryEx + http.request)",
            Box::new(|| request_payload(black_box(&body))),
            500_000,
        ),
    ];
    for (name, build, n) in cases {
        // Encode: build the TL objects, serialise them and frame them, as a sender does.
        let start = Instant::now();
        let mut enc = FrameEncoder::new();
        let mut out = Vec::new();
        let mut total = 0;
        for _ in 0..n {
            out.clear();
            enc.encode(&build(), &mut out).expect("frame");
            total += out.len();
            black_box(&out);
        }
        report(
            &format!("encode TL + frame, {name}"),
            n,
            total,
            start.elapsed(),
        );

        // Decode: a stream of frames read in 64 KiB pieces, each payload decoded down to the
        // innermost object.
        let payload = build();
        let mut stream = Vec::new();
        let mut enc = FrameEncoder::new();
        for _ in 0..n {
            enc.encode(&payload, &mut stream).expect("frame");
        }
        let start = Instant::now();
        let mut dec = FrameDecoder::new();
        let mut decoded = 0;
        for piece in stream.chunks(64 * 1024) {
            let mut input = piece;
            while let Some(frame) = dec.decode(&mut input).expect("decode") {
                let packet = enums::tcp::Packet::from_bytes(&frame.payload).expect("tcp.Packet");
                let enums::tcp::Packet::Packet(p) = packet else {
                    panic!("not tcp.packet")
                };
                if cocoon_tl::peek_constructor(&p.data)
                    == Some(<proxy::QueryAnswerPartEx as Identifiable>::CONSTRUCTOR_ID)
                {
                    black_box(proxy::QueryAnswerPartEx::from_bytes(&p.data).expect("part"));
                } else {
                    let run =
                        cocoon_tl::functions::client::RunQueryEx::from_bytes(&p.data).expect("run");
                    black_box(
                        cocoon_tl::functions::http::Request::from_bytes(&run.query).expect("http"),
                    );
                }
                decoded += 1;
            }
        }
        assert_eq!(decoded, n);
        report(
            &format!("decode frame + TL, {name}"),
            n,
            stream.len(),
            start.elapsed(),
        );
    }
}

/// The multi-threaded tokio runtime the network benches run on.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn session() {
    let rt = runtime();
    rt.block_on(async {
        println!(
            "session (two sessions over loopback TCP, {} tokio workers)",
            cpus()
        );
        let listener = Listener::bind("127.0.0.1:0", Config::default())
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Server: counts messages, answers queries with their own body.
        let server = tokio::spawn(async move {
            let (_handle, mut incoming, _peer) = listener.accept().await.expect("accept");
            let mut messages = 0usize;
            while let Some(item) = incoming.recv().await {
                match item {
                    Incoming::Message { .. } => messages += 1,
                    Incoming::Query { data, responder } => {
                        let _ = responder.answer(data);
                    }
                }
            }
            messages
        });
        let (client, _incoming) = connect_tcp(addr, &Config::default())
            .await
            .expect("connect");

        for size in [128usize, 4096] {
            let n = if size == 128 { 2_000_000 } else { 300_000 };
            let body = answer_part_payload(&vec![b'x'; size]);
            let start = Instant::now();
            for _ in 0..n {
                client.send_message(body.clone()).await.expect("send");
            }
            // A query after the messages returns once all of them were read by the server.
            client
                .query(vec![1, 2, 3, 4], Duration::from_secs(60))
                .await
                .expect("sync");
            report(
                &format!("one-way messages, {size} B chunk"),
                n,
                n * body.len(),
                start.elapsed(),
            );
        }

        for concurrency in [1usize, 32] {
            let n = if concurrency == 1 { 40_000 } else { 320_000 };
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    for _ in 0..n / concurrency {
                        client
                            .query(vec![0; 64], Duration::from_secs(60))
                            .await
                            .expect("query");
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
            report(
                &format!("query round trips, {concurrency} in flight"),
                n,
                n * 64,
                start.elapsed(),
            );
        }
        client.close();
        let _ = server.await;
    });
}

/// Runs `f` repeatedly for about `secs` seconds (at least `min` times) and reports the rate.
fn rate(name: &str, bytes_each: usize, secs: f64, min: usize, mut f: impl FnMut()) {
    f(); // warm-up (lazy statics, first-use allocations)
    let start = Instant::now();
    let mut n = 0;
    while n < min || start.elapsed().as_secs_f64() < secs {
        for _ in 0..16 {
            f();
        }
        n += 16;
    }
    report(name, n, n * bytes_each, start.elapsed());
}

fn testvector(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../testvectors/attest/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn attest() {
    use cocoon_attest::VerificationCache;
    use cocoon_attest::{Evidence, Policy, SimKey, TdxCollateral, sev, tdx};
    use sha2::{Digest, Sha256};

    println!("attest (single thread, evidence from testvectors/attest/)");
    const COCOON_NOW: u64 = 1_772_707_833;
    const SAMPLE_NOW: u64 = 1_751_630_400;
    const SEV_NOW: u64 = 1_767_225_600;

    let tdx_cases = [
        (
            "cocoon_quote.dat",
            "cocoon_quote_collateral_90c06f.json",
            COCOON_NOW,
        ),
        ("tdx_quote", "tdx_quote_collateral.json", SAMPLE_NOW),
    ];
    for (quote_name, coll_name, now) in tdx_cases {
        let quote = testvector(quote_name);
        let coll_json = testvector(coll_name);
        let collateral = TdxCollateral::from_json(&coll_json).expect("collateral");
        let report_data = tdx::parse_quote(&quote).expect("quote").report_data;
        let policy = Policy::tdx_default();
        let ev = Evidence::Tdx {
            quote: &quote,
            collateral: &collateral,
        };
        policy
            .evaluate(&ev, &report_data, now)
            .expect("quote verifies");
        rate(
            &format!("TDX cold (Policy::evaluate), {quote_name}"),
            quote.len(),
            2.0,
            20,
            || {
                black_box(policy.evaluate(black_box(&ev), &report_data, now)).expect("verify");
            },
        );
        // The cache key: the quote, a digest of the collateral (computed once when the
        // collateral is loaded) and the expected report data.
        let coll_digest: [u8; 32] = Sha256::digest(&coll_json).into();
        let cache = VerificationCache::with_defaults(&policy);
        rate(
            &format!("TDX cached (VerificationCache hit), {quote_name}"),
            quote.len(),
            1.0,
            1000,
            || {
                black_box(cache.get_or_verify(
                    &[black_box(&quote), &coll_digest, &report_data],
                    now,
                    || policy.evaluate(&ev, &report_data, now),
                ))
                .expect("verify");
            },
        );
        let stats = cache.stats();
        println!(
            "    (cache: {} entries, {} hits, {} misses)",
            stats.entries, stats.hits, stats.misses
        );
        rate(
            &format!("TDX parse only (tdx::parse_quote), {quote_name}"),
            quote.len(),
            1.0,
            1000,
            || {
                black_box(tdx::parse_quote(black_box(&quote))).expect("parse");
            },
        );
    }

    let report = sev::decode_report_hex(&testvector("sev/report_milan.hex")).expect("report");
    let vcek = testvector("sev/vcek_milan.der");
    let chain = testvector("sev/cert_chain_milan");
    let info = sev::parse_report(&report).expect("parse");
    // The 2022 sample is below AMD's current TCB floors and no AMD CRL is cached here:
    // measure the signature and chain checks with both dropped.
    let mut sev_policy = Policy::sev_default();
    sev_policy.sev.min_tcb = sev::SevMinTcb::NONE;
    sev_policy.sev.require_crl = false;
    let ev = Evidence::SevSnp {
        report: &report,
        vcek_der: &vcek,
        chain_pem: &chain,
    };
    sev_policy
        .evaluate(&ev, &info.report_data, SEV_NOW)
        .expect("report verifies");
    rate(
        "SEV-SNP cold (Policy::evaluate), Milan",
        report.len(),
        2.0,
        20,
        || {
            black_box(sev_policy.evaluate(black_box(&ev), &info.report_data, SEV_NOW))
                .expect("verify");
        },
    );

    let key = SimKey::generate().expect("sim key");
    let report_data = [7u8; 64];
    let evidence = key.evidence(&report_data);
    let sim_policy = Policy::sim_test();
    rate(
        "sim (Policy::evaluate, Ed25519 verify)",
        evidence.len(),
        1.0,
        1000,
        || {
            black_box(sim_policy.evaluate(
                &Evidence::Sim(black_box(&evidence)),
                &report_data,
                COCOON_NOW,
            ))
            .expect("verify");
        },
    );
}

/// Sequential RA-TLS connections over loopback, as `crates/ratls/examples/handshake_rate.rs`:
/// each one is a new TCP connection, the PoW exchange, mutual TLS 1.3 with sim-evidence
/// certificates, the `cocoon-net` session handshake and one query round trip.
fn ratls() {
    use cocoon_attest::{Policy, SimKey};
    use cocoon_ratls::cert::{Identity, SimSource};
    use cocoon_ratls::config::CertResolver;
    use cocoon_ratls::net::{RatlsAcceptor, RatlsConnector};
    use cocoon_ratls::verifier::{RatlsVerifier, VerifierConfig};

    let rt = runtime();
    println!(
        "ratls (sequential connections over loopback: TCP + PoW + mutual TLS 1.3 + session + \
         1 query; sim evidence; {} tokio workers)",
        cpus()
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let identity = || Identity::generate(&SimSource(SimKey::generate().expect("sim key")), now);
    let n_certs = 200;
    let start = Instant::now();
    for _ in 0..n_certs {
        black_box(identity().expect("cert"));
    }
    let el = start.elapsed().as_secs_f64();
    println!(
        "  {:<52} {:>8.0} /s  ({:.3} ms each, {n_certs} in {el:.2} s)",
        "certificate generation (sim)",
        n_certs as f64 / el,
        el * 1e3 / n_certs as f64
    );
    let sid = identity().expect("cert");
    let cid = identity().expect("cert");
    // (difficulty, verdict cache on, connections)
    for (difficulty, cache, count) in [(0u32, true, 2000usize), (0, false, 1000), (20, true, 60)] {
        let cfg = || {
            let mut c = VerifierConfig::new(Policy::sim_test());
            if !cache {
                c.cache_ttl_secs = 0;
            }
            c
        };
        let sv = RatlsVerifier::new(cfg());
        let cv = RatlsVerifier::new(cfg());
        rt.block_on(async {
            let acceptor = RatlsAcceptor::new(
                CertResolver::new(&sid).expect("resolver"),
                sv.clone(),
                difficulty,
                Config::default(),
            )
            .expect("acceptor");
            let connector = RatlsConnector::new(
                CertResolver::new(&cid).expect("resolver"),
                cv.clone(),
                28,
                Config::default(),
            )
            .expect("connector");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (task, mut accepted) = acceptor.spawn_listener(listener, 64);
            let server = tokio::spawn(async move {
                while let Some(mut acc) = accepted.recv().await {
                    tokio::spawn(async move {
                        let _h = acc.handle;
                        while let Some(Incoming::Query { data, responder }) =
                            acc.incoming.recv().await
                        {
                            let _ = responder.answer(data);
                        }
                    });
                }
            });
            let start = Instant::now();
            for _ in 0..count {
                let (h, _rx, _peer) = connector.connect(addr).await.expect("connect");
                h.query(b"ping".to_vec(), Duration::from_secs(10))
                    .await
                    .expect("query");
                h.close();
            }
            let el = start.elapsed().as_secs_f64();
            let name = format!(
                "connections, pow difficulty {difficulty}, verdict cache {}",
                if cache { "on" } else { "off" }
            );
            println!(
                "  {name:<52} {:>8.0} /s  ({:.3} ms each, {count} in {el:.2} s; \
                 attestation runs: client {}, server {})",
                count as f64 / el,
                el * 1e3 / count as f64,
                cv.attestation_runs(),
                sv.attestation_runs()
            );
            task.abort();
            server.abort();
        });
    }
}
