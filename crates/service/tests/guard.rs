//! The guard as middleware of a real axum server on 127.0.0.1, spoken to over raw TCP so that
//! every header (Host included) is exactly what a browser or an attacker would send.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use cocoon_service::browser::{Allowlist, Guard, plain_text};
use cocoon_testkit::http::raw_request;

async fn server(origins: &[&str], hosts: &[&str]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let allow = Allowlist::new(&s(origins), &s(hosts)).unwrap();
    let router = Router::new()
        // A handler that tries to grant every origin itself: the guard overrides it.
        .route(
            "/data",
            get(|| async { ([(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")], "secret") }),
        )
        .route("/echo", post(|b: String| async move { b.into_response() }))
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "no such page") });
    let app = Guard::new(allow, addr, plain_text)
        .expose_headers("x-cost")
        .apply(router);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn the_guard_refuses_foreign_hosts_origins_and_bodies_and_grants_only_allowed_origins() {
    let a = server(&["http://localhost:3000"], &["cocoon.lan"]).await;
    let port = a.port();

    // Loopback and allowed hosts, no Origin: served; the handler's `*` is gone.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "cocoon.lan".into(),
    ] {
        let r = raw_request(a, &format!("GET /data HTTP/1.1\r\nHost: {host}"), "").await;
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(r.body, "secret");
        assert!(r.cors().is_empty(), "{:?}", r.headers);
        assert_eq!(r.header("vary"), Some("Origin"));
    }

    // DNS rebinding: the attacker's name in Host (and Origin, same-origin to the browser).
    for path in ["/data", "/no-such-page"] {
        let r = raw_request(
            a,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: rebind.evil.example:{port}\r\nOrigin: http://rebind.evil.example:{port}"
            ),
            "",
        )
        .await;
        assert_eq!(r.status, 403, "{path}");
        assert!(r.body.starts_with("refused: Host "), "{}", r.body);
        assert!(r.cors().is_empty());
    }
    let r = raw_request(a, "GET /data HTTP/1.0", "").await;
    assert_eq!(r.status, 400, "no Host: {}", r.body);

    // A foreign origin: refused, and its preflight gets no grant.
    let host = format!("Host: 127.0.0.1:{port}");
    let r = raw_request(
        a,
        &format!("GET /data HTTP/1.1\r\n{host}\r\nOrigin: http://127.0.0.1:9"),
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(!r.body.contains("secret"));
    assert!(r.cors().is_empty());
    let r = raw_request(
        a,
        &format!(
            "OPTIONS /echo HTTP/1.1\r\n{host}\r\nOrigin: https://evil.example\r\n\
             Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type"
        ),
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.cors().is_empty(), "{:?}", r.headers);

    // The allowed origin: its preflight is granted (its own origin, never `*`), and so is
    // the request, with the exposed headers.
    let r = raw_request(
        a,
        &format!(
            "OPTIONS /echo HTTP/1.1\r\n{host}\r\nOrigin: http://localhost:3000\r\n\
             Access-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: content-type, authorization\r\n\
             Access-Control-Request-Private-Network: true"
        ),
        "",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type, authorization")
    );
    assert_eq!(
        r.header("access-control-allow-private-network"),
        Some("true")
    );
    assert!(r.header("vary").unwrap().contains("Origin"));
    let r = raw_request(
        a,
        &format!(
            "POST /echo HTTP/1.1\r\n{host}\r\nOrigin: http://localhost:3000\r\n\
             Content-Type: application/json"
        ),
        "{\"a\":1}",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "{\"a\":1}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(r.header("access-control-expose-headers"), Some("x-cost"));

    // Bodies: text/plain (no preflight in a browser) and forms are 415, from any origin.
    for ct in [
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
    ] {
        let r = raw_request(
            a,
            &format!("POST /echo HTTP/1.1\r\n{host}\r\nContent-Type: {ct}"),
            "{\"a\":1}",
        )
        .await;
        assert_eq!(r.status, 415, "{ct}");
        assert!(r.body.contains("application/json"), "{}", r.body);
    }
    // No body, no type (an operator's `curl -X POST`): served.
    let r = raw_request(a, &format!("POST /echo HTTP/1.1\r\n{host}"), "").await;
    assert_eq!(r.status, 200);
}
