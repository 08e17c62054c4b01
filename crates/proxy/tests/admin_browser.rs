//! The proxy's admin server against web pages: its stats and controls (even with the right
//! bearer token, which a page could learn or guess) refuse a foreign `Host` (DNS rebinding),
//! a foreign `Origin` and a body that is not JSON, and grant CORS to allowed origins only.

use cocoon_testkit::http::{AdminTarget, get_json, post_status};
use cocoon_testkit::prelude::{TOKEN, root, start_err, start_proxy_with};

const ALLOWED: &str = "http://localhost:3000";

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
    let target = AdminTarget::new(
        &http,
        &admin,
        port,
        TOKEN,
        &["/control/disable", "/control/checkpoint", "/control/payout"],
    );

    // DNS rebinding: the attacker's name in Host, the right token: refused before any
    // handler runs.
    target.assert_foreign_host_refused().await;
    // A foreign origin: pages and controls refused, preflights without a grant.
    target.assert_foreign_origins_refused().await;
    // A text/plain or form body (no preflight in a browser): 415, token or not.
    target.assert_bodies_refused(&["/control/disable"]).await;

    // None of it reached a control: the proxy is still enabled.
    let s: serde_json::Value = get_json(&http, &format!("{admin}/jsonstats")).await;
    assert_eq!(s["enabled"], true, "{s}");

    // The operator (no Origin, loopback Host, token, no body) still operates it.
    assert_eq!(
        post_status(&http, &format!("{admin}/control/disable"), Some(TOKEN)).await,
        200
    );
    let s: serde_json::Value = get_json(&http, &format!("http://localhost:{port}/jsonstats")).await;
    assert_eq!(s["enabled"], false, "{s}");

    // The allowed origin reads the stats, granted its own origin only.
    target.assert_origin_granted(ALLOWED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_admin_allowlist_refuses_to_start() {
    let e = start_err(root(1, true, true), |c| {
        c.admin.as_mut().unwrap().allowed_hosts = vec!["*".into()];
    })
    .await;
    assert!(e.to_string().contains("wildcards are not accepted"), "{e}");
}
