//! The proxy's admin server against web pages: its stats and controls (even with the right
//! bearer token, which a page could learn or guess) refuse a foreign `Host` (DNS rebinding),
//! a foreign `Origin` and a body that is not JSON, and grant CORS to allowed origins only.

mod common;

use common::{TOKEN, root, start_proxy_with};

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
    let net = start_proxy_with(root(1, true, true), |c| {
        c.admin.as_mut().unwrap().allowed_origins = vec![ALLOWED.into()];
    })
    .await;
    let admin = net.admin();
    let port = net.proxy.admin_addr().unwrap().port();
    // Plain HTTP only, but reqwest wants a TLS provider: the engine's client installs ring.
    let http = cocoon_engine::http_client(std::time::Duration::from_secs(5), &[]).unwrap();
    let pages = ["/stats", "/jsonstats", "/metrics", "/nothing-here"];
    let controls = ["/control/disable", "/control/checkpoint", "/control/payout"];

    // DNS rebinding: the attacker's name in Host, the right token: refused before any
    // handler runs.
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

    // A foreign origin: pages and controls refused, preflights without a grant.
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

    // A text/plain or form body (no preflight in a browser): 415, token or not.
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let r = http
            .post(format!("{admin}/control/disable"))
            .header("content-type", ct)
            .bearer_auth(TOKEN)
            .body("x=1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "{ct}");
    }

    // None of it reached a control: the proxy is still enabled.
    let s: serde_json::Value = http
        .get(format!("{admin}/jsonstats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["enabled"], true, "{s}");

    // The operator (no Origin, loopback Host, token, no body) still operates it.
    let r = http
        .post(format!("{admin}/control/disable"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s: serde_json::Value = http
        .get(format!("http://localhost:{port}/jsonstats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["enabled"], false, "{s}");

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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_admin_allowlist_refuses_to_start() {
    let e = common::start_err(root(1, true, true), |c| {
        c.admin.as_mut().unwrap().allowed_hosts = vec!["*".into()];
    })
    .await;
    assert!(e.to_string().contains("wildcards are not accepted"), "{e}");
}
