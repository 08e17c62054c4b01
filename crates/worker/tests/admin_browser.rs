//! The worker's admin server against web pages: its stats and controls (even with the right
//! bearer token) refuse a foreign `Host` (DNS rebinding), a foreign `Origin` and a body that
//! is not JSON, and grant CORS to allowed origins only.

mod common;

use std::time::Duration;

use cocoon_worker::Worker;
use common::*;

const TOKEN: &str = "s3cret-token";
const ALLOWED: &str = "http://localhost:3000";

fn cors(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .map(|k| k.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_pages_and_controls_refuse_foreign_hosts_origins_and_bodies() {
    let (base, _eng) = fake_engine().await;
    let mut proxy = TestProxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut cfg = worker_config(&proxy.addr, &base, &dir.path().join("state"));
    let mut admin_cfg = admin_config(Some(token_file));
    admin_cfg.allowed_origins = vec![ALLOWED.into()];
    cfg.admin = Some(admin_cfg);
    let w = Worker::start(cfg).await.unwrap();
    let mut c = proxy.next_conn().await;
    let port = w.admin_addr().unwrap().port();
    let admin = format!("http://127.0.0.1:{port}");
    // Plain HTTP only, but reqwest wants a TLS provider: the engine's client installs ring.
    let http = cocoon_engine::http_client(Duration::from_secs(5), &[]).unwrap();
    let coefficient = w.stats().coefficient;
    let pages = ["/stats", "/jsonstats", "/metrics", "/nothing-here"];
    let controls = [
        "/request/disable",
        "/request/coefficient?value=1",
        "/request/payout",
    ];

    // DNS rebinding: the attacker's name in Host, with the right token.
    let host = format!("rebind.example:{port}");
    for p in pages {
        let r = http
            .get(format!("{admin}{p}"))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{p}");
        assert!(cors(&r).is_empty());
        assert!(r.text().await.unwrap().starts_with("refused: Host "), "{p}");
    }
    for c in controls {
        let r = http
            .post(format!("{admin}{c}"))
            .header("host", &host)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{c}");
    }

    // A foreign origin: refused, preflights without a grant.
    for origin in ["https://evil.example", "http://127.0.0.1:1"] {
        for p in pages {
            let r = http
                .get(format!("{admin}{p}"))
                .header("origin", origin)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{origin} {p}");
            assert!(cors(&r).is_empty());
        }
        for c in controls {
            let r = http
                .post(format!("{admin}{c}"))
                .header("origin", origin)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{origin} {c}");
            let r = http
                .request(reqwest::Method::OPTIONS, format!("{admin}{c}"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "authorization")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403);
            assert!(cors(&r).is_empty(), "{:?}", r.headers());
        }
    }

    // text/plain and form bodies (no preflight in a browser): 415, token or not.
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        for c in controls {
            let r = http
                .post(format!("{admin}{c}"))
                .header("content-type", ct)
                .bearer_auth(TOKEN)
                .body("x=1")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 415, "{ct} {c}");
        }
    }

    // None of it reached a control: still enabled, same price, nothing told the proxy.
    let s = w.stats();
    assert!(s.enabled);
    assert_eq!(s.coefficient, coefficient);
    assert!(
        c.next_within(Duration::from_millis(300)).await.is_none(),
        "the worker told the proxy something"
    );

    // The operator (no Origin, loopback Host, token, no body) still operates it.
    let r = http
        .post(format!("http://localhost:{port}/request/disable"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(matches!(c.next().await, Answer::EnabledDisabled(1)));

    // The allowed origin reads the stats, granted its own origin only.
    let r = http
        .get(format!("{admin}/jsonstats"))
        .header("origin", ALLOWED)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], ALLOWED);
    assert_eq!(r.headers()["vary"], "Origin");
    w.shutdown().await;
}
