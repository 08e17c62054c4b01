//! `POST /v1/embeddings` on the embedded engine with real models: the default chat model
//! (SmolLM2-135M-Instruct, mean-pooled; these tests check shapes, not the quality of its
//! vectors) and the default embedding model (all-MiniLM-L6-v2, converted to GGUF on pull; its
//! vectors are checked against the reference values).
//!
//! The models come from `COCOON_TEST_MODEL` and `COCOON_TEST_EMBED_MODEL` (scripts/test pulls
//! them) or the model store; without one the tests that need it say so and return, and under
//! `CI` or `COCOON_REQUIRE_PREREQS` they fail.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_engine::{BodyEvent, Engine, EngineError, EngineRequest};
use cocoon_llama::{LlamaConfig, LlamaEngine, Serve};
use cocoon_openai::{Endpoint, Usage, UsageTracker};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

const SHA: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const NAME: &str = "SmolLM2-135M-Instruct";

fn model_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("COCOON_TEST_MODEL") {
        return Some(PathBuf::from(p));
    }
    let dir = std::env::var_os("COCOON_MODELS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/cocoon/models"))
        })?;
    let p = dir.join("blobs").join(format!("{SHA}.gguf"));
    p.is_file().then_some(p)
}

fn load(serve: Serve) -> Option<LlamaEngine> {
    let Some(path) = model_path() else {
        assert!(
            std::env::var_os("CI").is_none()
                && std::env::var_os("COCOON_REQUIRE_PREREQS").is_none(),
            "CI: the default model is missing; scripts/test pulls it with `cocoon model pull smollm2-135m`"
        );
        eprintln!("skipping: default model not pulled (cocoon model pull smollm2-135m)");
        return None;
    };
    let mut cfg = LlamaConfig::new(path, NAME);
    cfg.slots = 2;
    cfg.ctx_per_slot = 256;
    cfg.threads = 2;
    cfg.serve = serve;
    Some(LlamaEngine::load(cfg).expect("load the default model"))
}

fn both() -> Option<&'static LlamaEngine> {
    static E: OnceLock<Option<LlamaEngine>> = OnceLock::new();
    E.get_or_init(|| load(Serve::GenerateAndEmbed)).as_ref()
}

fn req(endpoint: Endpoint, body: Value) -> EngineRequest {
    EngineRequest {
        endpoint,
        body: body.as_object().unwrap().clone(),
        stream: false,
        timeout: Duration::from_secs(120),
    }
}

fn embeddings(extra: Value) -> EngineRequest {
    let mut body = json!({"model": NAME});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    req(Endpoint::Embeddings, body)
}

async fn run(e: &LlamaEngine, r: EngineRequest) -> (Value, Usage) {
    let (v, u, _) = run_pieces(e, r).await;
    (v, u)
}

/// The answer, its usage and how many pieces it came in.
async fn run_pieces(e: &LlamaEngine, r: EngineRequest) -> (Value, Usage, usize) {
    let resp = e.submit(r).await.expect("submit");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.content_type, "application/json");
    let mut rx = resp.body;
    let mut body = Vec::new();
    let mut pieces = 0;
    while let Some(ev) = rx.recv().await {
        match ev {
            BodyEvent::Data(d) => {
                assert!(d.len() <= cocoon_llama::embed::ANSWER_PIECE);
                pieces += 1;
                body.extend(d);
            }
            BodyEvent::End {
                usage,
                counted_locally,
            } => {
                assert!(!counted_locally);
                let mut t = UsageTracker::new();
                t.push(&body);
                assert_eq!(
                    t.usage(),
                    Some(usage),
                    "the body's usage is the end event's"
                );
                return (serde_json::from_slice(&body).unwrap(), usage, pieces);
            }
            BodyEvent::Failed { error, .. } => panic!("engine failed: {error}"),
        }
    }
    panic!("no end event");
}

fn vectors(a: &Value) -> Vec<Vec<f64>> {
    a["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["object"], "embedding");
            assert_eq!(d["index"], i, "vectors come in input order");
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn refused(r: Result<cocoon_engine::EngineResponse, EngineError>) -> (String, String) {
    match r {
        Err(EngineError::Invalid(e)) => (
            e.param.unwrap_or_default(),
            e.code.unwrap_or_default().to_owned(),
        ),
        Err(other) => panic!("expected a 400, got {other}"),
        Ok(_) => panic!("expected a 400, got an answer"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_are_normalised_deterministic_and_ordered() {
    let Some(e) = both() else { return };
    let info = e.model_info();
    assert_eq!(info.capabilities.embeddings, Some(true));
    assert_eq!(info.capabilities.chat, Some(true));
    let texts = [
        "The cat sat on the mat.",
        "A cat was sitting on a rug.",
        "Quarterly tax filings are due in April.",
    ];
    let (a, usage) = run(e, embeddings(json!({"input": texts}))).await;
    assert_eq!(a["object"], "list");
    assert_eq!(a["model"], NAME);
    let v = vectors(&a);
    assert_eq!(v.len(), 3);
    for x in &v {
        assert_eq!(x.len(), 576, "SmolLM2-135M's hidden size");
        let norm = cosine(x, x).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
    }
    // Each input's tokens, counted once; nothing completed.
    let each: Vec<u64> = e_tokens(e, &texts).await;
    assert_eq!(usage.prompt_tokens, each.iter().sum::<u64>());
    assert_eq!(usage.completion_tokens, 0);
    assert_eq!(
        a["usage"],
        json!({"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens})
    );
    // The same input alone gives the same vector as in the batch.
    let (one, _) = run(e, embeddings(json!({"input": texts[2]}))).await;
    let alone = &vectors(&one)[0];
    assert!(cosine(alone, &v[2]) > 0.9999, "{}", cosine(alone, &v[2]));
    let (again, _) = run(e, embeddings(json!({"input": texts[2]}))).await;
    assert_eq!(&vectors(&again)[0], alone, "same input, same vector");
    // Different inputs, different vectors; similar sentences closer than unrelated ones.
    let (c01, c02) = (cosine(&v[0], &v[1]), cosine(&v[0], &v[2]));
    assert!(c01 < 0.999 && c02 < 0.999, "{c01} {c02}");
    assert!(c01 > c02, "similar {c01} should beat unrelated {c02}");
}

async fn e_tokens(e: &LlamaEngine, texts: &[&str]) -> Vec<u64> {
    let mut out = Vec::new();
    for t in texts {
        let (_, u) = run(e, embeddings(json!({"input": [t]}))).await;
        out.push(u.prompt_tokens);
        // The text's own tokens (SmolLM2's vocabulary adds no BOS).
        assert_eq!(u.prompt_tokens, e.token_ids(t).len() as u64);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_ids_and_base64_give_the_same_vectors() {
    let Some(e) = both() else { return };
    let text = "Embeddings travel as floats or base64.";
    let (f, _) = run(e, embeddings(json!({"input": text}))).await;
    let floats = &vectors(&f)[0];
    let (b, usage) = run(
        e,
        embeddings(json!({"input": [text], "encoding_format": "base64", "dimensions": 576})),
    )
    .await;
    let s = b["data"][0]["embedding"].as_str().unwrap();
    let bytes = decode_base64(s);
    assert_eq!(bytes.len(), 576 * 4);
    let decoded: Vec<f64> = bytes
        .chunks(4)
        .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    for (x, y) in decoded.iter().zip(floats) {
        assert!((x - y).abs() < 1e-6, "{x} vs {y}");
    }
    // The same tokens given as ids embed the same.
    let ids = e.token_ids(text);
    assert_eq!(ids.len() as u64, usage.prompt_tokens);
    let (t, tu) = run(e, embeddings(json!({"input": ids}))).await;
    assert_eq!(tu.prompt_tokens, usage.prompt_tokens);
    assert!(cosine(&vectors(&t)[0], floats) > 0.9999);
    let (tt, _) = run(e, embeddings(json!({"input": [ids.clone(), ids]}))).await;
    assert_eq!(vectors(&tt).len(), 2);
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let pad = chunk.iter().filter(|c| **c == b'=').count();
        let n = chunk
            .iter()
            .map(|c| if *c == b'=' { 0 } else { u32::from(val(*c)) })
            .fold(0u32, |acc, x| acc << 6 | x);
        let b = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&b[..3 - pad]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_400s_with_param() {
    let Some(e) = both() else { return };
    let p = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        refused(
            e.submit(embeddings(json!({"input": "x", "dimensions": 64})))
                .await
        ),
        p("dimensions", "invalid_value")
    );
    let long = "word ".repeat(400);
    assert_eq!(
        refused(e.submit(embeddings(json!({"input": ["ok", long]}))).await),
        p("input", "context_length_exceeded")
    );
    assert_eq!(
        refused(
            e.submit(embeddings(json!({"input": [1, 99_999_999]})))
                .await
        ),
        p("input", "invalid_value")
    );
    // Each input fits (about 250 tokens of 256), but 17 of them go over the request's
    // budget (16 × 256 tokens).
    let many = vec!["word ".repeat(249); 17];
    assert_eq!(
        refused(e.submit(embeddings(json!({"input": many}))).await),
        p("input", "max_tokens_per_request")
    );
    // More inputs than one decode holds are still answered, in order, the answer in pieces.
    let inputs: Vec<String> = (0..40).map(|i| format!("sentence number {i}")).collect();
    let (a, _, pieces) = run_pieces(e, embeddings(json!({"input": inputs}))).await;
    assert_eq!(vectors(&a).len(), 40);
    assert!(pieces > 1, "{pieces}");
    // An answer over the size bound is refused before any work: 456 × 576 > 2^18.
    let many: Vec<String> = (0..456).map(|i| format!("s{i}")).collect();
    assert_eq!(
        refused(e.submit(embeddings(json!({"input": many}))).await),
        p("input", "invalid_value")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_engine_refuses_what_it_does_not_serve() {
    let Some(chat_only) = load(Serve::Generate) else {
        return;
    };
    assert_eq!(chat_only.model_info().capabilities.embeddings, Some(false));
    let r = chat_only.submit(embeddings(json!({"input": "x"}))).await;
    assert_eq!(
        refused(r),
        ("model".to_owned(), "model_not_supported".to_owned())
    );
    drop(chat_only);
    let Some(embed_only) = load(Serve::Embed) else {
        return;
    };
    let caps = embed_only.model_info().capabilities;
    assert_eq!((caps.chat, caps.embeddings), (Some(false), Some(true)));
    let chat = req(
        Endpoint::ChatCompletions,
        json!({"model": NAME, "messages": [{"role": "user", "content": "hi"}]}),
    );
    match embed_only.submit(chat).await {
        Err(EngineError::Invalid(e)) => {
            assert_eq!(e.param.as_deref(), Some("model"));
            assert!(e.message.contains("embeddings model"), "{}", e.message);
        }
        _ => panic!("chat on an embeddings-only engine must be a 400"),
    }
    let (a, _) = run(&embed_only, embeddings(json!({"input": "still embeds"}))).await;
    assert_eq!(vectors(&a).len(), 1);
}

/// The default embedding model, all-MiniLM-L6-v2 converted to GGUF on pull (`cocoon model pull
/// all-minilm-l6-v2`), from `COCOON_TEST_EMBED_MODEL` or the model store.
const MINILM: &str = "all-MiniLM-L6-v2";
const MINILM_SHA: &str = "158a983bee0ad870f221fc36e5144ca37ad6dc21c0f8636a2b447e2e2afed8ca";

fn minilm() -> Option<&'static LlamaEngine> {
    static E: OnceLock<Option<LlamaEngine>> = OnceLock::new();
    E.get_or_init(|| {
        let path = std::env::var_os("COCOON_TEST_EMBED_MODEL")
            .map(PathBuf::from)
            .or_else(|| {
                let dir = std::env::var_os("COCOON_MODELS_DIR")
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME")
                            .map(|h| PathBuf::from(h).join(".local/share/cocoon/models"))
                    })?;
                let p = dir.join("blobs").join(format!("{MINILM_SHA}.gguf"));
                p.is_file().then_some(p)
            });
        let Some(path) = path else {
            assert!(
                std::env::var_os("CI").is_none()
                    && std::env::var_os("COCOON_REQUIRE_PREREQS").is_none(),
                "CI: the embedding model is missing; scripts/test pulls it with `cocoon model pull all-minilm-l6-v2`"
            );
            eprintln!("skipping: embedding model not pulled (cocoon model pull all-minilm-l6-v2)");
            return None;
        };
        let mut cfg = LlamaConfig::new(path, MINILM);
        cfg.slots = 2;
        cfg.ctx_per_slot = 512;
        cfg.threads = 2;
        // Asked for both: the GGUF's pooling type makes it an embeddings-only engine.
        cfg.serve = Serve::GenerateAndEmbed;
        Some(LlamaEngine::load(cfg).expect("load all-MiniLM-L6-v2"))
    })
    .as_ref()
}

fn minilm_req(input: Value) -> EngineRequest {
    req(
        Endpoint::Embeddings,
        json!({"model": MINILM, "input": input}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_embeds_like_a_sentence_embedding_model() {
    let Some(e) = minilm() else { return };
    assert_eq!(e.serves(), Serve::Embed);
    let caps = e.model_info().capabilities;
    assert_eq!((caps.chat, caps.embeddings), (Some(false), Some(true)));
    let texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
    ];
    // WordPiece as the reference tokenizer cuts it: a man is eating food . (the embeddings
    // path adds [CLS] and [SEP], counted in usage).
    assert_eq!(e.token_ids(texts[0]), [1037, 2158, 2003, 5983, 2833, 1012]);
    let (a, usage) = run(e, minilm_req(json!(texts))).await;
    assert_eq!(a["model"], MINILM);
    assert_eq!(usage.prompt_tokens, 8 + 11 + 9);
    let v = vectors(&a);
    for x in &v {
        assert_eq!(x.len(), 384);
        let norm = cosine(x, x).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
    }
    let (again, _) = run(e, minilm_req(json!(texts[1]))).await;
    assert!(cosine(&vectors(&again)[0], &v[1]) > 0.9999);
    let (again2, _) = run(e, minilm_req(json!(texts[1]))).await;
    assert_eq!(
        vectors(&again)[0],
        vectors(&again2)[0],
        "same input, same vector"
    );
    // The reference (sentence-transformers) gives about 0.755 for the first pair and about
    // 0.1 in magnitude for the unrelated one; this GGUF measured 0.7553 and -0.1050.
    // SmolLM2-135M mean-pooled puts them all close together (0.898 and 0.865 measured).
    let (near, far) = (cosine(&v[0], &v[1]), cosine(&v[0], &v[2]));
    eprintln!("cosine near {near:.4} far {far:.4}");
    assert!((near - 0.755).abs() < 0.03, "{near}");
    assert!(far.abs() < 0.15, "{far}");
    // Chat to an embedding model is a 400 naming the model.
    let chat = req(
        Endpoint::ChatCompletions,
        json!({"model": MINILM, "messages": [{"role": "user", "content": "hi"}]}),
    );
    match e.submit(chat).await {
        Err(EngineError::Invalid(err)) => assert_eq!(err.param.as_deref(), Some("model")),
        _ => panic!("chat on an embedding model must be a 400"),
    }
}
