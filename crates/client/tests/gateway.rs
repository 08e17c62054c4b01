//! The gateway over real sessions: a real proxy (or two) with real workers whose engines are
//! fake OpenAI servers on loopback, RA-TLS with sim attestation, and the client's HTTP API
//! called with reqwest like any OpenAI SDK would.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use cocoon_attest::Policy;
use cocoon_client::{Client, ClientHandle, Request};
use cocoon_ratls::verifier::{RatlsVerifier, VerifierConfig};
use cocoon_testkit::client::{gateway_config, start_gateway};
use cocoon_testkit::fixtures::root_with_proxy_image;
use cocoon_testkit::identity::{connector_as, connector_with};
use cocoon_testkit::prelude::*;
use cocoon_testkit::worker::network;
use cocoon_ton::HashBytes;
use cocoon_ton::root::RootConfig;
use futures::StreamExt;
use serde_json::{Value, json};

/// The test root, with the sim image allowed for proxies too.
fn test_root() -> RootConfig {
    root_with_proxy_image(1, true)
}

fn chat(mode: &str, stream: bool) -> Value {
    json!({
        "model": "Smol",
        "messages": [{"role": "user", "content": mode}],
        "stream": stream,
        "max_tokens": 50,
    })
}

async fn post_with(http: &reqwest::Client, base: &str, key: &str) -> u16 {
    post_as(http, base, key, &chat("json", false))
        .await
        .status()
        .as_u16()
}

/// A chat completion `body` with the API key `key`.
async fn post_as(http: &reqwest::Client, base: &str, key: &str, body: &Value) -> reqwest::Response {
    http.post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// An API keys file in `dir`: a line per `(key, spending limit in nanoTON, name)`, `-` for
/// no limit.
fn keys_file(dir: &std::path::Path, keys: &[(&str, Option<u64>, &str)]) -> std::path::PathBuf {
    let path = dir.join("keys");
    let text: String = keys
        .iter()
        .map(|(key, limit, name)| {
            let limit = limit.map_or("-".to_string(), |l| cocoon_ton::format_ton(u128::from(l)));
            format!("{} {limit} {name}\n", cocoon_client::keys::key_hash(key))
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// A gateway in front of `net`'s proxy with the API keys file `keys` (and its state at
/// `state`, when given), ready.
async fn keyed_gateway(
    net: &Net,
    keys: &std::path::Path,
    state: Option<&std::path::Path>,
) -> (ClientHandle, String) {
    let mut cfg = gateway_config(vec![net.proxy.client_addr().to_string()], test_root());
    cfg.api_keys_file = Some(keys.to_path_buf());
    cfg.state_path = state.map(std::path::Path::to_path_buf);
    start_gateway(cfg, 1).await
}

/// The `/jsonstats` entry of the API key named `name`.
async fn key_stats(http: &reqwest::Client, base: &str, name: &str) -> Value {
    let s: Value = get_json(http, &format!("{base}/jsonstats")).await;
    s["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name)
        .unwrap()
        .clone()
}

async fn post(base: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_requests_through_client_proxy_and_worker() {
    let (net, w) = network(test_root()).await;
    let (c, base) = start_gateway(
        gateway_config(vec![net.proxy.client_addr().to_string()], test_root()),
        1,
    )
    .await;

    // Not streamed: the engine's JSON byte for byte, with usage and the cost headers.
    let r = post(&base, &chat("json", false)).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(
        h["x-cocoon-proxy"],
        net.proxy.client_addr().to_string().as_str()
    );
    assert_eq!(h["x-cocoon-attempts"], "1");
    assert!(
        h.get("access-control-allow-origin").is_none(),
        "no CORS grant: {h:?}"
    );
    let tokens: u64 = h["x-cocoon-tokens"].to_str().unwrap().parse().unwrap();
    let cost: u64 = h["x-cocoon-cost-nanoton"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(tokens > 0);
    assert_eq!(cost, tokens * net.root.params.price_per_token);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hi");
    assert_eq!(v["usage"]["total_tokens"], 16);

    // Streamed: chunks arrive as the engine produces them. Event order, not time: the
    // `gated` engine holds its stream after "Bonjour" until it gets a permit, so "Bonjour"
    // reaches the app only if the gateway, proxy and worker pass chunks on before the answer
    // is whole (a buffering hop would deliver nothing until the permit, and the timeout
    // fails the test instead of hanging).
    let r = post(&base, &chat("gated", true)).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("text/event-stream")
    );
    let mut body = r.bytes_stream();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !String::from_utf8_lossy(&seen).contains("Bonjour") {
            let chunk = body.next().await.expect("the stream ended early").unwrap();
            seen.extend_from_slice(&chunk);
        }
    })
    .await
    .expect("the first chunk arrives while the engine holds the rest of the answer");
    assert!(!String::from_utf8_lossy(&seen).contains("le monde"));
    w.engine.gate.add_permits(1);
    while let Some(chunk) = body.next().await {
        seen.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(seen).unwrap();
    assert!(text.contains(" le monde"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // A longer stream (20 chunks) arrives whole.
    let r = post(&base, &chat("stream", true)).await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut all = Vec::new();
    while let Some(chunk) = body.next().await {
        all.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(all).unwrap();
    assert!(text.contains("w0 ") && text.contains("w19 "));
    assert!(text.contains("\"usage\""), "usage in the final chunk");
    assert!(text.trim_end().ends_with("data: [DONE]"));

    // The body extensions are honoured and stripped: the worker never sees them, and
    // the outcome is found again by the request's guid.
    let mut ext = chat("json", false);
    ext["request_guid"] = json!("order-17");
    ext["enable_debug"] = json!(true);
    ext["max_coefficient"] = json!(2000);
    let r = post(&base, &ext).await;
    assert_eq!(r.status(), 200);
    let entry: Value = get_json(
        &reqwest::Client::new(),
        &format!("{base}/request/debuglogentry?request_guid=order-17"),
    )
    .await;
    assert_eq!(entry["ok"], true, "{entry}");
    assert_eq!(entry["usage"]["cost_nanoton"], cost, "{entry}");
    assert_eq!(entry["proxy_debug"]["type"], "proxy_stats", "{entry}");
    let none: Value = get_json(
        &reqwest::Client::new(),
        &format!("{base}/request/debuglogentry?request_guid=other"),
    )
    .await;
    assert_eq!(none, json!({}));
    // A coefficient below the worker's (1500) finds no capacity: 429.
    ext["max_coefficient"] = json!(1000);
    let r = post(&base, &ext).await;
    assert_eq!(r.status(), 429);
    // A model nobody serves: 404, which SDKs do not retry.
    let r = post(
        &base,
        &json!({"model": "Big", "messages": [{"role": "user", "content": "json"}]}),
    )
    .await;
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("Big"),
        "{e}"
    );

    // The same through the library, without HTTP.
    let a = c
        .request(Request::chat(&chat("json", false)))
        .await
        .unwrap();
    let got = a.collect().await.unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(
        got.json().unwrap()["choices"][0]["message"]["content"],
        "Hi"
    );
    assert_eq!(got.usage.cost_nanoton, cost);

    // Models: OpenAI's list plus the workers behind each.
    let http = reqwest::Client::new();
    let m: Value = get_json(&http, &format!("{base}/v1/models")).await;
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "Smol");
    assert_eq!(m["data"][0]["workers"].as_array().unwrap().len(), 1);
    assert_eq!(m["data"][0]["workers"][0]["coefficient"], 1500);
    // The context length the worker announced to the proxy (version 3).
    assert_eq!(
        m["data"][0]["context_length"],
        cocoon_testkit::engine::FAKE_CONTEXT_LENGTH,
        "{m}"
    );
    // What the model supports, as the worker's HTTP engine knows it: chat, the rest unknown.
    assert_eq!(
        m["data"][0]["capabilities"],
        json!({"chat": true, "completions": null, "embeddings": null, "tools": null,
               "json_schema": null, "vision": null, "logprobs": null}),
        "{m}"
    );
    let one = http
        .get(format!("{base}/v1/models/Smol"))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let none = http
        .get(format!("{base}/v1/models/Big"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404);

    // Bad requests: OpenAI errors naming the field, nothing sent upstream.
    let before = w.engine.requests();
    let r = post(
        &base,
        &json!({"model": "Smol", "messages": [], "temperature": "hot"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(w.engine.requests(), before);

    // A CORS preflight from an origin not in allowed_origins gets no grant (browser.rs
    // tests the rest).
    let r = http
        .request(
            reqwest::Method::OPTIONS,
            format!("{base}/v1/chat/completions"),
        )
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());

    // Stats: the proxy's attestation facts, requests and spending; metrics.
    let s: Value = get_json(&http, &format!("{base}/jsonstats")).await;
    assert_eq!(s["status"], "ok");
    let p = &s["proxies"][0];
    assert_eq!(p["state"], "ready");
    assert_eq!(p["tee"], "Sim");
    assert_eq!(p["auth"], "short");
    assert_eq!(p["proto"], 3);
    assert_eq!(s["stats"]["succeeded"], 5);
    assert_eq!(s["totals"]["requests"], 7);
    let html = get_text(&http, &format!("{base}/stats")).await;
    assert!(html.contains(">sim<") && html.contains("ready"), "{html}");
    cocoon_testkit::http::assert_no_debug_values("the client's /stats", &html);
    let received = format!("data-figure=\"received\">{}<", s["stats"]["received"]);
    assert!(html.contains(&received), "{received} not in {html}");
    assert!(!html.contains("Bonjour") && !html.contains("json"));
    let metrics = get_text(&http, &format!("{base}/metrics")).await;
    assert!(metrics.contains("cocoon_client_requests_total{outcome=\"succeeded\"} 5"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_fails_over_before_its_first_byte_and_never_hangs_on_a_dead_proxy() {
    // Proxy A has no worker; proxy B has one. Whichever the client tries first, every
    // request is answered by B.
    let a = start_proxy(test_root()).await;
    a.fund_client(&addr(0x42), 10_000_000_000, true);
    let (b, wb) = network(test_root()).await;
    let addrs = vec![
        a.proxy.client_addr().to_string(),
        b.proxy.client_addr().to_string(),
    ];
    let (c, base) = start_gateway(gateway_config(addrs, test_root()), 2).await;
    let mut attempts = 0;
    for _ in 0..6 {
        let r = post(&base, &chat("json", false)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["x-cocoon-proxy"],
            b.proxy.client_addr().to_string().as_str()
        );
        attempts += r.headers()["x-cocoon-attempts"]
            .to_str()
            .unwrap()
            .parse::<u32>()
            .unwrap();
    }
    assert!(attempts >= 6);

    // A worker for A too; then A dies with a request streaming through it.
    let wa = start_worker(&a, 0x62).await;
    a.wait_workers(1).await;
    // Hold one stream on each proxy (least loaded first spreads them).
    let mut held = Vec::new();
    for _ in 0..2 {
        let r = post(&base, &chat("gated", true)).await;
        assert_eq!(r.status(), 200);
        let via = r.headers()["x-cocoon-proxy"].to_str().unwrap().to_owned();
        held.push((via, r));
    }
    assert_ne!(held[0].0, held[1].0, "one stream per proxy");
    let a_addr = a.proxy.client_addr().to_string();
    a.proxy.shutdown().await;
    for (via, r) in held {
        if via == a_addr {
            // The stream through A ends with an error event, not at its deadline (the
            // default 120 s; the engine holds the stream until a permit that never comes).
            // 30 s leaves room for a loaded machine and still tells the two apart.
            let text = tokio::time::timeout(Duration::from_secs(30), r.text())
                .await
                .expect("the stream through the dead proxy ended before its deadline")
                .unwrap_or_default();
            assert!(text.contains("error"), "{text}");
        } else {
            wb.engine.gate.add_permits(1);
            let text = r.text().await.unwrap();
            assert!(text.contains("Bonjour"));
        }
    }
    let _ = wa;
    // New requests go to B only, all succeed.
    for _ in 0..4 {
        let r = post(&base, &chat("json", false)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["x-cocoon-proxy"],
            b.proxy.client_addr().to_string().as_str()
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_answers_504_and_cancels_the_request() {
    let (net, w) = network(test_root()).await;
    let (c, base) = start_gateway(
        gateway_config(vec![net.proxy.client_addr().to_string()], test_root()),
        1,
    )
    .await;
    let mut body = chat("endless", false);
    body["timeout"] = json!(1.0);
    let started = Instant::now();
    let r = post(&base, &body).await;
    let took = started.elapsed();
    assert_eq!(r.status(), 504);
    // Not before the 1 s asked for; the upper bound only tells it from the default deadline
    // (120 s) with room for a loaded machine.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(30),
        "{took:?}"
    );
    let e: Value = r.json().await.unwrap();
    let msg = e["error"]["message"].as_str().unwrap();
    // The worker gives up first (it is told 95% of the time left), or the client does.
    assert!(
        msg.contains("deadline") || msg.contains("timed out"),
        "{msg}"
    );
    // The engine's stream was dropped: the cancel reached the worker.
    eventually("engine stream dropped", || {
        w.engine.dropped.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    // A bad timeout is the caller's error.
    let mut bad = chat("json", false);
    bad["timeout"] = json!(-1);
    assert_eq!(post(&base, &bad).await.status(), 400);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_failing_attestation_or_image_checks_are_refused_with_the_reason() {
    let (net, w) = network(test_root()).await;
    let proxy = net.proxy.client_addr().to_string();

    // The root does not list the proxy's image.
    let mut other = test_root();
    other.proxy_hashes = vec![HashBytes([0xAB; 32])];
    let c = Client::start(gateway_config(vec![proxy.clone()], other))
        .await
        .unwrap();
    let base = format!("http://{}", c.api_addr().unwrap());
    eventually("image refused", || {
        c.proxies()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("image"))
    })
    .await;
    let err = c.proxies()[0].last_error.clone().unwrap();
    assert!(
        err.contains(&hex::encode(cocoon_attest::sim::sim_image_hash()))
            && err.contains("not in the root contract's proxy list"),
        "{err}"
    );
    let r = post(&base, &chat("json", false)).await;
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&proxy) && msg.contains("image"), "{msg}");
    for path in ["/v1/models", "/v1/models/Smol"] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status(), 503, "{path}");
    }
    c.shutdown().await;

    // Our policy wants TDX: the sim evidence fails attestation.
    let mut cfg = gateway_config(vec![proxy.clone()], test_root());
    cfg.connector = connector_with(Policy::tdx_default());
    let c = Client::start(cfg).await.unwrap();
    eventually("attestation refused", || {
        c.proxies()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("attestation refused"))
    })
    .await;
    assert_eq!(c.ready_proxies(), 0);
    c.shutdown().await;
    assert_eq!(w.engine.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_limits_hold_under_50_concurrent_requests() {
    let (net, w) = network(test_root()).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("client.sqlite");
    let body = chat("gated", true);
    // What the gateway reserves for this body (it strips nothing here and adds
    // stream_options.include_usage).
    let forwarded = cocoon_openai::validate_request(
        cocoon_openai::Endpoint::ChatCompletions,
        &serde_json::to_vec(&body).unwrap(),
        &Default::default(),
    )
    .unwrap()
    .body_bytes();
    let worst = cocoon_client::worst_case_cost(
        &net.root.params,
        50,
        forwarded.len() as u64,
        cocoon_client::DEFAULT_MAX_COEFFICIENT,
    );
    // Room for exactly three requests at their worst case.
    let limit = 3 * worst + worst / 2;
    let keys = keys_file(
        dir.path(),
        &[("sk-app", Some(limit), "app"), ("sk-ops", None, "ops")],
    );
    let (c, base) = keyed_gateway(&net, &keys, Some(&state)).await;
    let http = reqwest::Client::new();
    let send = |key: Option<&'static str>| {
        let (http, base, body) = (http.clone(), base.clone(), body.clone());
        async move {
            let mut r = http.post(format!("{base}/v1/chat/completions")).json(&body);
            if let Some(k) = key {
                r = r.bearer_auth(k);
            }
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r)
        }
    };
    assert_eq!(send(None).await.0, 401);
    assert_eq!(send(Some("sk-nope")).await.0, 401);

    // 50 at once; the engine holds every admitted stream until we open the gate.
    let all = futures::future::join_all((0..50).map(|_| send(Some("sk-app")))).await;
    let admitted: Vec<_> = all.iter().filter(|(s, _)| *s == 200).collect();
    let refused = all.iter().filter(|(s, _)| *s == 402).count();
    assert_eq!(
        admitted.len(),
        3,
        "statuses: {:?}",
        all.iter().map(|x| x.0).collect::<Vec<_>>()
    );
    assert_eq!(refused, 47);
    w.engine.gate.add_permits(3);
    for (_, r) in all.into_iter().filter(|(s, _)| *s == 200) {
        let text = r.text().await.unwrap();
        assert!(text.contains("Bonjour"));
    }
    let app = key_stats(&http, &base, "app").await;
    let spent = app["spent_nanoton"].as_u64().unwrap();
    assert_eq!(app["requests"], 3);
    assert_eq!(app["reserved_nanoton"], 0);
    assert_eq!(app["refused"], 47);
    assert!(spent > 0 && spent <= limit, "spent {spent} of {limit}");
    // The other key has no limit; absurd extensions are clamped, not overflowed (the
    // proxy then finds the channel cannot cover such a reservation: 402), twice at once.
    assert_eq!(send(Some("sk-ops")).await.0, 200);
    for _ in 0..2 {
        let mut huge = chat("json", false);
        huge["max_coefficient"] = json!(u64::MAX);
        assert_eq!(post_as(&http, &base, "sk-ops", &huge).await.status(), 402);
    }
    assert_eq!(post_with(&http, &base, "sk-ops").await, 200);
    c.shutdown().await;

    // Spending survives a restart.
    let (c, base) = keyed_gateway(&net, &keys, Some(&state)).await;
    let app = key_stats(&http, &base, "app").await;
    assert_eq!(app["spent_nanoton"].as_u64().unwrap(), spent);
    c.shutdown().await;
    let _ = Arc::new(w);
}

/// An engine's refusal of a parameter (an HTTP engine's OpenAI 400), a null content and a
/// missing one reach the app as 400 `invalid_request_error` with `param` and `code`, streamed
/// or not; neither the client's totals nor the API key's spending move, and the key's
/// reservation is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_openai_400s_with_param_and_billed_nothing() {
    let (net, w) = network(test_root()).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(dir.path(), &[("sk-app", None, "app")]);
    let (c, base) = keyed_gateway(&net, &keys, None).await;
    let http = reqwest::Client::new();
    let spent = || c.stats().stats.spent_nanoton;
    let before = spent();
    let cases = [
        (json!("refuse"), "logprobs", "unsupported_parameter", true),
        (Value::Null, "messages[0].content", "invalid_type", false),
    ];
    for (content, param, code, reaches_engine) in cases {
        for stream in [false, true] {
            let asked = w.engine.requests();
            let body = json!({
                "model": "Smol",
                "messages": [{"role": "user", "content": content}],
                "stream": stream,
                "max_tokens": 50,
            });
            let r = post_as(&http, &base, "sk-app", &body).await;
            assert_eq!(r.status(), 400, "{param}");
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
            assert_eq!(e["error"]["param"], param, "{e}");
            assert_eq!(e["error"]["code"], code, "{e}");
            assert_eq!(
                w.engine.requests() - asked,
                usize::from(reaches_engine),
                "{e}"
            );
        }
    }
    let r = post_as(
        &http,
        &base,
        "sk-app",
        &json!({"model": "Smol", "messages": [{"role": "system", "content": "x"}, {"role": "user"}]}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "messages[1].content", "{e}");
    assert_eq!(e["error"]["code"], "missing_field", "{e}");
    assert_eq!(spent(), before, "a refusal was billed");
    let app = key_stats(&http, &base, "app").await;
    assert_eq!(app["spent_nanoton"], 0, "{app}");
    assert_eq!(app["reserved_nanoton"], 0, "{app}");
    // A request the engine serves is billed to the key (the checks above can fail).
    assert_eq!(post_with(&http, &base, "sk-app").await, 200);
    let app = key_stats(&http, &base, "app").await;
    assert!(app["spent_nanoton"].as_u64().unwrap() > 0, "{app}");
    assert!(spent() > before);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_tee_is_served_where_proxies_allow_it() {
    let plain = || connector_as(&cocoon_ratls::cert::Unattested, Policy::sim_test());
    // A proxy that accepts unattested clients (the CLI's default).
    let net = start_proxy_with(test_root(), |cfg| {
        let mut v = VerifierConfig::new(Policy::sim_test());
        v.allow_unattested = true;
        cfg.client_verifier = RatlsVerifier::new(v);
    })
    .await;
    net.fund_client(&addr(0x42), 10_000_000_000, true);
    let _w = start_worker(&net, 0x63).await;
    net.wait_workers(1).await;
    let mut cfg = gateway_config(vec![net.proxy.client_addr().to_string()], test_root());
    cfg.connector = plain();
    let (c, base) = start_gateway(cfg, 1).await;
    let r = post(&base, &chat("json", false)).await;
    assert_eq!(r.status(), 200);
    c.shutdown().await;

    // A proxy that wants attested clients refuses the same client at the TLS handshake.
    let (strict, _w2) = network(test_root()).await;
    let mut cfg = gateway_config(vec![strict.proxy.client_addr().to_string()], test_root());
    cfg.connector = plain();
    let c = Client::start(cfg).await.unwrap();
    eventually("refused", || c.proxies()[0].failures > 0).await;
    assert_eq!(c.ready_proxies(), 0);
    c.shutdown().await;
}

/// Issue 16 §2 at the gateway: the limit the gateway reserved (and booked an API key's worst
/// case at) is the limit the engine gets, also when the caller named none; an engine's body
/// never asks for more than the proxy reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_gets_the_completion_limit_that_was_reserved() {
    let (net, w) = network(test_root()).await;
    let (c, base) = start_gateway(
        gateway_config(vec![net.proxy.client_addr().to_string()], test_root()),
        1,
    )
    .await;
    let body = |extra: Value| {
        let mut b = json!({"model": "Smol", "messages": [{"role": "user", "content": "json"}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    // No limit named: the default of 1000, written into the body.
    assert_eq!(post(&base, &body(json!({}))).await.status(), 200);
    // max_completion_tokens is kept, and max_tokens (which every engine reads) set with it.
    assert_eq!(
        post(&base, &body(json!({"max_completion_tokens": 7})))
            .await
            .status(),
        200
    );
    // Zero leaves no room for an answer.
    let r = post(&base, &body(json!({"max_tokens": 0}))).await;
    assert_eq!(r.status(), 400);
    let bodies = w.engine.bodies.lock().unwrap().clone();
    assert_eq!(
        bodies.len(),
        2,
        "the refused request never reached the engine"
    );
    assert_eq!(bodies[0]["max_tokens"], json!(1000));
    assert_eq!(bodies[1]["max_tokens"], json!(7));
    assert_eq!(bodies[1]["max_completion_tokens"], json!(7));
    c.shutdown().await;
}

/// COCOON's answer extensions as an app sees them through client, proxy and worker: the
/// client's, the proxy's and the worker's timing headers in order; COCOON's cost fields in a
/// whole answer's usage and a stream's usage event, equal to what the client booked for the
/// request (its stats and the API key's spending); with `enable_debug` the worker's, the
/// proxy's and the client's debug objects (the whole answer's `debug` member, a stream's
/// last line), without it nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_fields_timing_headers_and_debug_reach_the_app() {
    let (net, _w) = network(test_root()).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(dir.path(), &[("sk-app", None, "app")]);
    let (c, base) = keyed_gateway(&net, &keys, None).await;
    let http = reqwest::Client::new();
    let mut total = 0;
    for debug in [false, true] {
        for stream in [false, true] {
            let mut body = chat(if stream { "stream" } else { "json" }, stream);
            if debug {
                body["enable_debug"] = json!(true);
            }
            let spent_before = c.stats().stats.spent_nanoton;
            let r = post_as(&http, &base, "sk-app", &body).await;
            assert_eq!(r.status(), 200);
            let at = |n: &str| -> f64 {
                let v = r.headers()[n].to_str().unwrap();
                assert_eq!(v.split('.').nth(1).unwrap().len(), 6, "{n}: {v}");
                v.parse().unwrap()
            };
            let times = [
                at("x-cocoon-client-start"),
                at("x-cocoon-proxy-start"),
                at("x-cocoon-worker-start"),
                at("x-cocoon-worker-end"),
                at("x-cocoon-proxy-end"),
                at("x-cocoon-client-end"),
            ];
            assert!(times.is_sorted(), "{times:?}");
            let text = r.text().await.unwrap();
            let (usage, dbg) = if stream {
                let (events, tail) = text.split_at(text.rfind("data: [DONE]\n\n").unwrap() + 14);
                let usage = events
                    .split("\n\n")
                    .filter_map(|e| e.strip_prefix("data: "))
                    .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                    .find(|v| v["usage"].is_object())
                    .unwrap()["usage"]
                    .clone();
                let dbg = (!tail.is_empty()).then(|| {
                    let line: Value =
                        serde_json::from_str(tail.strip_suffix('\n').unwrap()).unwrap();
                    line["debug"].clone()
                });
                (usage, dbg)
            } else {
                let v: Value = serde_json::from_str(&text).unwrap();
                (v["usage"].clone(), v.get("debug").cloned())
            };
            let booked = c.stats().stats.spent_nanoton - spent_before;
            assert!(booked > 0);
            assert_eq!(usage["total_cost"], booked, "{usage}");
            assert_eq!(
                usage["prompt_total_cost"].as_u64().unwrap()
                    + usage["completion_total_cost"].as_u64().unwrap(),
                booked,
                "{usage}"
            );
            total += booked;
            match dbg {
                Some(d) => {
                    assert!(debug, "debug output only when asked for: {d}");
                    assert_eq!(d["worker"]["type"], "worker_stats", "{d}");
                    assert_eq!(d["proxy"]["type"], "proxy_stats", "{d}");
                    assert_eq!(d["client"]["type"], "client_stats", "{d}");
                    let t = |k: &str| d["client"][k].as_f64().unwrap();
                    // The headers carry the same instants to the microsecond.
                    assert!((t("start_time") - times[0]).abs() < 1e-6, "{d}");
                    assert!(
                        (t("answer_receive_start_at") - times[5]).abs() < 1e-6,
                        "{d}"
                    );
                    assert!(t("answer_receive_end_at") >= t("answer_receive_start_at"));
                }
                None => assert!(!debug, "debug asked for, none in {text}"),
            }
        }
    }
    let app = key_stats(&http, &base, "app").await;
    assert_eq!(app["spent_nanoton"], total, "{app}");

    // The library's whole answers carry them too.
    let got = c
        .request(Request::chat(&chat("json", false)).with_key("sk-app"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        got.json().unwrap()["usage"]["total_cost"],
        got.usage.cost_nanoton
    );
    assert!(got.headers.iter().any(|(n, _)| n == "X-Cocoon-Client-End"));
    c.shutdown().await;
}

/// Issue 20 §3 through our own proxy and worker: every answer, whole and streamed, names its
/// receipt, which the key that asked (and only it) reads back; the worker's and the proxy's
/// signatures verify under their sim certificates, and the receipt's billing is what the
/// answer's headers say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_has_a_verified_receipt_its_api_key_can_read() {
    let (net, _w) = network(test_root()).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(dir.path(), &[("key-a", None, "a"), ("key-b", None, "b")]);
    let (_c, base) = keyed_gateway(&net, &keys, Some(&dir.path().join("state.sqlite"))).await;
    let http = reqwest::Client::new();
    for stream in [false, true] {
        let r = post_as(&http, &base, "key-a", &chat("json", stream)).await;
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        let body = r.text().await.unwrap();
        let id = h["x-cocoon-receipt"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 64);
        let get = |key: &'static str| {
            let (http, url) = (http.clone(), format!("{base}/v1/receipts/{id}"));
            async move {
                let r = http.get(url).bearer_auth(key).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        let (s, doc) = get("key-a").await;
        assert_eq!(s, 200, "{doc}");
        let doc: cocoon_receipt::Receipt = serde_json::from_str(&doc).unwrap();
        assert_eq!(doc.id, id);
        assert_eq!(doc.model, MODEL);
        if !stream {
            let tokens: i64 = h["x-cocoon-tokens"].to_str().unwrap().parse().unwrap();
            let cost: i64 = h["x-cocoon-cost-nanoton"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(doc.usage.billed_tokens, tokens, "{body}");
            assert_eq!(doc.usage.cost_nanoton, cost);
        }
        assert!(doc.usage.prompt_tokens > 0 && doc.usage.completion_tokens > 0);
        let w = doc.worker.evidence.as_ref().unwrap();
        assert_eq!(w.backend, "sim");
        assert_eq!(w.image_hash, hex::encode(test_root().worker_hashes[0].0));
        assert_eq!(doc.proxy.evidence.as_ref().unwrap().backend, "sim");
        // Another key cannot read it, and none at all is 401.
        assert_eq!(get("key-b").await.0, 404);
        let r = http
            .get(format!("{base}/v1/receipts/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
}

/// The Responses API event types of a streamed answer, and the events, from its SSE body.
fn response_events(body: &[u8]) -> Vec<(String, Value)> {
    let mut p = cocoon_openai::sse::SseParser::new();
    p.push(body)
        .unwrap()
        .into_iter()
        .map(|e| (e.event.unwrap(), serde_json::from_str(&e.data).unwrap()))
        .collect()
}

/// `POST /v1/responses` through client, proxy and worker: served as a chat completion (the
/// engine gets chat messages; keys, billing and receipts as for chat) and mapped back, whole
/// and streamed; stored state and bad input are 400s naming the field, billed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responses_api_through_client_proxy_and_worker() {
    let (net, w) = network(test_root()).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(dir.path(), &[("sk-app", None, "app")]);
    let (c, base) = keyed_gateway(&net, &keys, None).await;
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(format!("{base}/v1/responses"))
            .bearer_auth("sk-app")
            .json(&body)
            .send()
    };

    // Whole: a response object with the engine's text and usage, and the chat headers.
    let tool = json!({"type": "function", "name": "f", "parameters": {"type": "object"}});
    let r = post(
        json!({"model": "Smol", "input": "json", "max_output_tokens": 50,
                        "metadata": {"app": "t"}, "store": false, "tools": [tool],
                        "text": {"format": {"type": "json_object"}}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["x-cocoon-attempts"], "1");
    let tokens: u64 = h["x-cocoon-tokens"].to_str().unwrap().parse().unwrap();
    assert!(tokens > 0);
    assert_eq!(h["x-cocoon-receipt"].to_str().unwrap().len(), 64);
    let v: Value = r.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("resp_"), "{v}");
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["model"], "Smol");
    assert_eq!(v["metadata"], json!({"app": "t"}));
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(v["output"][0]["content"][0]["text"], "Hi");
    assert_eq!(v["usage"]["input_tokens"], 12);
    assert_eq!(v["usage"]["output_tokens"], 4);
    assert_eq!(v["usage"]["total_tokens"], 16);
    assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 0);
    // The engine got a chat completion request.
    let sent = w.engine.bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "json"}])
    );
    assert!(sent["max_tokens"].as_u64().unwrap() <= 50, "{sent}");
    assert!(sent.get("metadata").is_none() && sent.get("store").is_none());
    assert_eq!(
        sent["tools"],
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    );
    assert_eq!(sent["response_format"], json!({"type": "json_object"}));
    assert_eq!(v["tools"], json!([tool]), "{v}");
    // Its receipt is the API key's to read.
    let id = h["x-cocoon-receipt"].to_str().unwrap();
    let r = http
        .get(format!("{base}/v1/receipts/{id}"))
        .bearer_auth("sk-app")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Streamed: the Responses events, mapped chunk by chunk.
    let started = Instant::now();
    let r = post(
        json!({"model": "Smol", "input": [{"type": "message", "role": "user",
                        "content": "stream"}], "stream": true}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert!(r.headers().get("x-cocoon-receipt").is_some());
    let mut body = r.bytes_stream();
    let mut first = None;
    let mut all = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        if first.is_none() && chunk.windows(6).any(|w| w == b".delta") {
            first = Some(started.elapsed());
        }
        all.extend_from_slice(&chunk);
    }
    let (first, total) = (first.unwrap(), started.elapsed());
    assert!(
        first * 2 < total,
        "first delta after {first:?}, all after {total:?}"
    );
    let ev = response_events(&all);
    let types: Vec<&str> = ev.iter().map(|(t, _)| t.as_str()).collect();
    let mut want = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    want.extend(std::iter::repeat_n("response.output_text.delta", 20));
    want.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(types, want);
    for (n, (_, v)) in ev.iter().enumerate() {
        assert_eq!(v["sequence_number"], n);
    }
    let text: String = ev.iter().filter_map(|(_, v)| v["delta"].as_str()).collect();
    assert_eq!(text, (0..20).map(|n| format!("w{n} ")).collect::<String>());
    let done = &ev.last().unwrap().1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], text.as_str());
    assert_eq!(done["usage"]["input_tokens"], 12);
    assert_eq!(done["usage"]["output_tokens"], 20);
    assert_eq!(done["usage"]["total_tokens"], 32);
    // The total_cost COCOON adds to the usage travels too.
    assert!(done["usage"]["total_cost"].as_u64().unwrap() > 0, "{done}");
    // A stream asked of an engine that answers whole (the fake's `json`): every event at
    // once, still a stream.
    let r = post(json!({"model": "Smol", "input": "json", "stream": true}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let ev = response_events(&r.bytes().await.unwrap());
    let (last, done) = ev.last().unwrap();
    assert_eq!(last, "response.completed");
    assert_eq!(done["response"]["output"][0]["content"][0]["text"], "Hi");
    assert_eq!(ev.len(), 9, "{ev:?}");

    // Stored state and bad input: 400 naming the field, nothing reaches the engine; an
    // engine's refusal comes back in the Responses request's terms.
    let spent = key_stats(&http, &base, "app").await["spent_nanoton"].clone();
    let asked = w.engine.requests();
    for (body, param) in [
        (
            json!({"model": "Smol", "input": "json", "store": true}),
            "store",
        ),
        (
            json!({"model": "Smol", "input": "json", "previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (
            json!({"model": "Smol", "input": [{"role": "user"}]}),
            "input[0].content",
        ),
        (
            json!({"model": "Smol", "input": "json", "temperature": 9}),
            "temperature",
        ),
    ] {
        let r = post(body).await.unwrap();
        assert_eq!(r.status(), 400, "{param}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
        assert_eq!(e["error"]["param"], param, "{e}");
    }
    assert_eq!(w.engine.requests(), asked);
    let r = post(json!({"model": "Smol", "input": "refuse"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "top_logprobs", "{e}");
    let r = post(json!({"model": "Big", "input": "json"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(key_stats(&http, &base, "app").await["spent_nanoton"], spent);
    c.shutdown().await;
}
