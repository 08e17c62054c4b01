//! The worker's admin server against web pages: its stats and controls (even with the right
//! bearer token) refuse a foreign `Host` (DNS rebinding), a foreign `Origin` and a body that
//! is not JSON, and grant CORS to allowed origins only.

use std::time::Duration;

use cocoon_testkit::http::AdminTarget;
use cocoon_testkit::prelude::*;
use cocoon_worker::Worker;

const TOKEN: &str = "s3cret-token";
const ALLOWED: &str = "http://localhost:3000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_pages_and_controls_refuse_foreign_hosts_origins_and_bodies() {
    let (base, _eng, mut proxy, dir) = worker_rig().await;
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
    let controls = [
        "/control/disable",
        "/control/coefficient?value=1",
        "/control/payout",
        "/request/disable",
        "/request/coefficient?value=1",
    ];
    let target = AdminTarget::new(&http, &admin, port, TOKEN, &controls);

    // DNS rebinding: the attacker's name in Host, with the right token.
    target.assert_foreign_host_refused().await;
    // A foreign origin: refused, preflights without a grant.
    target.assert_foreign_origins_refused().await;
    // text/plain and form bodies (no preflight in a browser): 415, token or not.
    target.assert_bodies_refused(&controls).await;

    // None of it reached a control: still enabled, same price, nothing told the proxy.
    let s = w.stats();
    assert!(s.enabled);
    assert_eq!(s.coefficient, coefficient);
    assert!(
        c.next_within(Duration::from_millis(300)).await.is_none(),
        "the worker told the proxy something"
    );

    // The operator (no Origin, loopback Host, token, no body) still operates it.
    assert_eq!(
        post_status(
            &http,
            &format!("http://localhost:{port}/control/disable"),
            Some(TOKEN)
        )
        .await,
        200
    );
    assert!(matches!(c.next().await, FromWorker::EnabledDisabled(1)));

    // The allowed origin reads the stats, granted its own origin only.
    target.assert_origin_granted(ALLOWED).await;
    w.shutdown().await;
}
