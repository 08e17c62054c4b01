//! The explorer on the devnet (the real root contract in a TVM, read through the toncenter
//! client): the owner allows the sim images and a model and changes the price and the
//! multipliers; a real proxy with a sim worker publishes its `/public.json`; other stats
//! URLs refuse connections, accept and never answer, or answer 1 MiB. The explorer's JSON and page show the root's prices per 1M tokens,
//! the price history with old and new values since the deployment, the proxy with its TEE,
//! image, workers and capacity, the unreachable one as such, and the allowlisted hashes with
//! what each is; a worker's payout the proxy contract sent counts as paid to workers.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use cocoon_explorer::ExplorerConfig;
use cocoon_explorer::view::per_million;
use cocoon_testkit::devnet::{Devnet, TON, devnet};
use cocoon_testkit::prelude::*;
use cocoon_ton::keys::SigningKey;
use cocoon_ton::ops::{self, RootOp, WalletOps};
use cocoon_ton::wallet::Wallet;
use cocoon_ton::{HashBytes, Toncenter, root::model_hash};
use serde_json::Value;

/// The root owner's wallet on `dn`.
fn root_owner(dn: &Devnet) -> WalletOps<Toncenter> {
    let owner_key = SigningKey::from_file(&dn.root.owner_key_path).unwrap();
    WalletOps::new(
        dn.tc.clone(),
        Wallet::v4r2(owner_key.public_key(), 0),
        owner_key,
    )
    .unwrap()
}

/// Stops the explorer `task` through `stop` and waits for it to end.
async fn stop_explorer(stop: tokio::sync::watch::Sender<bool>, task: tokio::task::JoinHandle<()>) {
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_shows_the_devnet_root_its_history_and_a_live_proxy() {
    let dn = devnet().await;
    let root = dn.root.address.clone();
    let mut owner = root_owner(&dn);
    let sim = HashBytes(cocoon_attest::sim::sim_image_hash());
    for op in [
        RootOp::AddWorkerImage(sim),
        RootOp::AddProxyImage(sim),
        RootOp::AddModel(model_hash(MODEL)),
        RootOp::SetPrice {
            price_per_token: 30,
            worker_fee_per_token: 21,
        },
        RootOp::SetMultipliers {
            prompt: 10_000,
            cached: 2_500,
            completion: 40_000,
            reasoning: 40_000,
        },
    ] {
        ops::root_op(&mut owner, &root, &op, TON as u64 / 10)
            .await
            .unwrap();
    }
    let cfg = cocoon_ton::chain::load_root_config(&dn.tc, &root)
        .await
        .unwrap();

    // A real proxy under that configuration, with one sim worker.
    let net = start_proxy(cfg.clone()).await;
    let _w = start_worker(&net, 0x41).await;
    net.wait_workers(1).await;

    // Hostile stats: one accepts connections and never answers, one answers 1 MiB.
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stall_addr = stall.local_addr().unwrap();
    let big = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let big_addr = big.local_addr().unwrap();
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/public.json",
            axum::routing::get(|| async { format!("{{\"tee\":\"{}\"}}", "x".repeat(1 << 20)) }),
        );
        axum::serve(big, app).await.unwrap();
    });
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (addr, task) = cocoon_explorer::spawn(
        ExplorerConfig {
            root: root.clone(),
            bind: "127.0.0.1:0".parse().unwrap(),
            proxy_stats: vec![
                format!("{}/public.json", net.admin()),
                "http://127.0.0.1:1/public.json".into(),
                format!("http://{stall_addr}/public.json"),
                format!("http://{big_addr}/public.json"),
            ],
            endpoints: vec![format!("http://{}", dn.addr)],
            poll: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            allowed_hosts: vec![],
            check: None,
        },
        Arc::new(dn.tc.clone()),
        stop_rx,
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let api = format!("http://{addr}/api/network");
    let mut j = Value::Null;
    for _ in 0..100 {
        j = get_json(&http, &api).await;
        if j["status"] == "live"
            && j["proxies"][0]["status"] == "live"
            && j["proxies"][0]["stake"].is_string()
            && j["proxies"][2]["error"].is_string()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(j["status"], "live", "{j:#}");
    assert_eq!(j["root_version"], cfg.version);

    // Prices per 1M tokens are the root's params.
    let p = &cfg.params;
    assert_eq!(p.price_per_token, 30);
    let pm = &j["prices"]["per_million"];
    for (cat, mult) in [
        ("prompt", p.prompt_tokens_price_multiplier),
        ("cached", p.cached_tokens_price_multiplier),
        ("completion", p.completion_tokens_price_multiplier),
        ("reasoning", p.reasoning_tokens_price_multiplier),
    ] {
        assert_eq!(pm[cat], per_million(30, mult, 1000).to_string(), "{cat}");
    }
    assert_eq!(pm["cached"], "7500000");
    assert_eq!(j["prices"]["commission_per_token"], 9);

    // The history since the deployment: the deployment's price, then the two changes.
    assert_eq!(j["history_from_deployment"], true, "{j:#}");
    let h = j["price_history"].as_array().unwrap();
    assert_eq!(h.len(), 2, "{h:#?}");
    assert_eq!(h[0]["op"], "change-price");
    let price = h[0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "price_per_token")
        .unwrap();
    assert_eq!(price["new"], 30);
    assert!(price["old"].as_u64().is_some_and(|o| o != 30), "{price}");
    assert_eq!(h[1]["op"], "change-multipliers");
    let cached = h[1]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "cached_multiplier")
        .unwrap();
    assert_eq!(cached["new"], 2_500);
    assert!(cached["old"].is_u64(), "{cached}");

    // The live proxy, its model and workers; the other one unreachable.
    let proxy = &j["proxies"][0];
    assert_eq!(proxy["tee"], "sim");
    assert_eq!(proxy["image_allowed"], true);
    assert_eq!(proxy["workers"], 1);
    assert_eq!(proxy["proxy_sc"], net.proxy_sc.to_string());
    assert_eq!(j["proxies"][1]["status"], "unreachable");
    // (The HTTP client's timeout or ours, whichever ends the wait first.)
    for (i, why) in [(2, "timed out"), (3, "larger than 65536 bytes")] {
        let p = &j["proxies"][i];
        assert_eq!(p["status"], "unreachable", "{p}");
        let e = p["error"].as_str().unwrap();
        assert!(
            e.contains(why) || (i == 2 && e.contains("no answer within")),
            "{p}"
        );
    }
    // The stalled source holds no page.
    let t = std::time::Instant::now();
    get_json(&http, &api).await;
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    drop(stall);
    let models = j["models"].as_array().unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0]["model"], MODEL);
    assert_eq!(models[0]["allowed"], true);
    assert_eq!(models[0]["workers"], 1);
    let stats = get_json(&http, &format!("{}/jsonstats", net.admin())).await;
    assert_eq!(models[0]["capacity"], stats["workers"][0]["max_active"]);

    // Every allowlisted hash with what it is.
    let hashes = j["hashes"].as_array().unwrap();
    assert_eq!(hashes.len(), 3, "{hashes:#?}");
    assert!(
        hashes
            .iter()
            .any(|x| x["kind"] == "model" && x["meaning"] == format!("model {MODEL}"))
    );
    assert!(
        hashes
            .iter()
            .filter(|x| x["kind"] != "model")
            .all(|x| x["meaning"].as_str().unwrap().contains("simulated"))
    );

    // The page: the same figures, no Debug value, under the CSP.
    let resp = http.get(format!("http://{addr}/")).send().await.unwrap();
    assert!(
        resp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let html = resp.text().await.unwrap();
    cocoon_testkit::http::assert_no_debug_values("the explorer", &html);
    assert!(html.contains(MODEL));
    // The model's prices are at its workers' lowest coefficient.
    let coefficient = models[0]["coefficient_min"].as_u64().unwrap();
    let cached_price = per_million(30, 2_500, coefficient);
    assert!(html.contains(&format!(
        "<td class=\"num\">{}</td>",
        cocoon_webui::fmt::ton(cached_price)
    )));
    assert!(html.contains("change-multipliers") && html.contains("unreachable"));
    // A foreign Host is refused (the browser guard).
    let foreign = http
        .get(format!("http://{addr}/api/network"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);

    stop_explorer(stop, task).await;
}

/// The split of what a proxy contract sent, on the real contracts: a worker contract of the
/// chain's proxy is deployed with a proxy-signed payout in the same message, the worker
/// contract asks the proxy contract to pay, and the explorer's reading of the proxy
/// contract's transactions counts that payout as paid to workers, to the nanoton of the
/// `payout` the worker's owner received, and nothing as refunded to clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_payout_from_the_proxy_contract_counts_as_paid_to_workers() {
    use cocoon_explorer::history::{PaidTo, Payouts};
    use cocoon_testkit::devnet::{PAYOUT_OP, Party, chainnet};
    use cocoon_ton::chain::{Chain, Devnet as _};
    use cocoon_ton::payments::{PaymentPayload, SignedOp};
    let chain = chainnet().await;
    let tc = chain.tc.clone();
    let root_cfg = cocoon_ton::chain::load_root_config(&tc, &chain.root)
        .await
        .unwrap();
    let owner = Party::new(0x76);
    let contract = cocoon_ton::contracts::worker_contract(
        &root_cfg.params,
        &owner.address,
        &chain.proxy.address,
        &HashBytes(chain.proxy_key().public_key()),
    )
    .unwrap();
    let before = tc
        .account_state(&chain.proxy.address)
        .await
        .unwrap()
        .last_tx;
    let payout = PaymentPayload {
        op: SignedOp::WorkerPayout,
        query_id: 1,
        tokens: Some(1_000),
        contract: contract.address.clone(),
    }
    .sign(&chain.proxy_key(), &owner.address)
    .unwrap();
    let mut sender = Party::new(0x77);
    tc.faucet(&sender.address, 2 * TON).await.unwrap();
    sender
        .send(
            &tc,
            &contract.address,
            7 * TON / 10,
            payout.to_cell().unwrap(),
            Some(contract.state_init().unwrap()),
        )
        .await;
    // The owner's payout from the proxy contract.
    let mut received = 0u128;
    for _ in 0..100 {
        let txs = tc
            .transactions_since(&owner.address, None, 16)
            .await
            .unwrap_or_default();
        received = txs
            .iter()
            .filter_map(|t| t.in_msg.as_ref())
            .filter(|m| m.source.as_ref() == Some(&chain.proxy.address))
            .filter(|m| {
                m.body
                    .as_ref()
                    .and_then(|b| b.as_slice().ok()?.load_u32().ok())
                    == Some(PAYOUT_OP)
            })
            .map(|m| m.value)
            .sum();
        if received > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(received > 0, "the proxy contract paid the worker's owner");
    let txs = tc
        .transactions_since(&chain.proxy.address, before.as_ref(), 64)
        .await
        .unwrap();
    let mut p = Payouts::default();
    p.apply(&txs);
    assert_eq!(p.to_workers, received, "{:?}", p.events);
    assert_eq!(p.to_clients, 0);
    assert!(p.of(PaidTo::Workers).count() == 1, "{:?}", p.events);
}

/// The explorer verifies the root's registered proxies itself, by an RA-TLS handshake as a
/// client without money makes it (an unattested certificate, the sim test policy): the real
/// proxy is verified (sim TEE, its measured image in the root's list); a second proxy
/// whose attestation measures another image (a sim machine with another RTMR3) is shown
/// "not verified" with the reason and a mismatch, although its `/public.json` (a forged
/// one) claims the allowed sim image; an endpoint nobody listens on is not verified
/// either, with the connection's failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_verifies_registered_proxies_by_their_handshake() {
    use cocoon_attest::{Policy, SimKey};
    use cocoon_explorer::verify::{ProxyCheck, VERDICT_TTL};
    use cocoon_ratls::cert::{SimSource, Unattested};
    use cocoon_ratls::config::CertResolver;
    use cocoon_testkit::identity::{connector_as, identity_from, short_lived_verifier};
    use cocoon_ton::messages::ProxyEndpoint;

    let dn = devnet().await;
    let root = dn.root.address.clone();
    let mut owner = root_owner(&dn);
    let sim = HashBytes(cocoon_attest::sim::sim_image_hash());
    ops::root_op(
        &mut owner,
        &root,
        &RootOp::AddProxyImage(sim),
        TON as u64 / 10,
    )
    .await
    .unwrap();
    let cfg = cocoon_ton::chain::load_root_config(&dn.tc, &root)
        .await
        .unwrap();
    // Both proxies take clients without evidence, as a proxy does by default.
    let honest = cocoon_testkit::proxy::start_proxy_with(cfg.clone(), |c| {
        c.client_verifier = short_lived_verifier(86_400, true);
    })
    .await;
    let rogue_key = SimKey::generate().unwrap().with_rtmr3(Some([7; 48]));
    let rogue = cocoon_testkit::proxy::start_proxy_with(cfg.clone(), |c| {
        c.client_listen = "127.0.0.2:0".parse().unwrap();
        c.worker_listen = "127.0.0.2:0".parse().unwrap();
        c.certs = CertResolver::new(&identity_from(&SimSource(rogue_key))).unwrap();
        c.client_verifier = short_lived_verifier(86_400, true);
    })
    .await;
    // The rogue's stats claim the allowed sim image.
    let forged = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let forged_addr = forged.local_addr().unwrap();
    let claim = format!(
        "{{\"tee\":\"sim\",\"image_hash\":\"{}\",\"proxy_sc\":\"{}\"}}",
        hex::encode(sim.0),
        rogue.proxy_sc
    );
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/public.json",
            axum::routing::get(move || {
                let c = claim.clone();
                async move { c }
            }),
        );
        axum::serve(forged, app).await.unwrap();
    });
    let endpoints = [
        honest.proxy.client_addr().to_string(),
        rogue.proxy.client_addr().to_string(),
        "127.0.0.3:1".to_owned(),
    ];
    for ep in &endpoints {
        ops::root_op(
            &mut owner,
            &root,
            &RootOp::RegisterProxy(ProxyEndpoint(ep.clone())),
            TON as u64 / 10,
        )
        .await
        .unwrap();
    }

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (addr, task) = cocoon_explorer::spawn(
        ExplorerConfig {
            root: root.clone(),
            bind: "127.0.0.1:0".parse().unwrap(),
            proxy_stats: vec![
                format!("{}/public.json", honest.admin()),
                format!("http://{forged_addr}/public.json"),
            ],
            endpoints: vec![format!("http://{}", dn.addr)],
            poll: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            allowed_hosts: vec![],
            check: Some(ProxyCheck {
                connector: connector_as(&Unattested, Policy::sim_test()),
                ttl: VERDICT_TTL,
            }),
        },
        Arc::new(dn.tc.clone()),
        stop_rx,
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let api = format!("http://{addr}/api/network");
    let mut j = Value::Null;
    for _ in 0..150 {
        j = get_json(&http, &api).await;
        let regs = j["registered_proxies"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if regs.len() == 3
            && regs.iter().all(|r| r["verified"]["checked_at"].is_u64())
            && j["proxies"][1]["status"] == "live"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let regs = j["registered_proxies"].as_array().unwrap();
    assert_eq!(regs.len(), 3, "{j:#}");
    let of = |ep: &str| {
        regs.iter()
            .find(|r| r["endpoint"] == ep)
            .unwrap_or_else(|| panic!("{ep} not registered: {j:#}"))["verified"]
            .clone()
    };
    // The honest proxy: verified by its handshake.
    let h = of(&endpoints[0]);
    assert_eq!(h["verified"], true, "{h:#}");
    assert_eq!(h["status"], "verified");
    assert_eq!(h["tee"], "sim");
    assert_eq!(h["image_hash"], hex::encode(sim.0));
    assert_eq!(h["image_allowed"], true);
    assert!(h["valid_until"].as_u64().unwrap() > cocoon_service::admin::unix_now());
    // The rogue: attested, but another image than the root allows.
    let r = of(&endpoints[1]);
    assert_eq!(r["verified"], false, "{r:#}");
    assert_eq!(r["tee"], "sim");
    assert_ne!(r["image_hash"], hex::encode(sim.0));
    assert_eq!(r["image_allowed"], false);
    assert!(
        r["status"]
            .as_str()
            .unwrap()
            .contains("is not in the root's proxy_hashes"),
        "{r:#}"
    );
    // Nobody there.
    let n = of(&endpoints[2]);
    assert_eq!(n["verified"], false);
    assert!(
        n["status"]
            .as_str()
            .unwrap()
            .starts_with("not verified: no handshake"),
        "{n:#}"
    );
    // The followed proxies: the honest one verified; the rogue's report is allowed by the
    // root, its handshake is not, and the two images differ.
    let p = j["proxies"].as_array().unwrap();
    assert_eq!(p[0]["endpoint"], endpoints[0].as_str());
    assert_eq!(p[0]["verified"]["verified"], true, "{:#}", p[0]);
    assert_eq!(p[0]["verified"]["image_mismatch"], false);
    assert_eq!(p[1]["endpoint"], endpoints[1].as_str());
    assert_eq!(p[1]["image_allowed"], true, "{:#}", p[1]);
    assert_eq!(p[1]["verified"]["verified"], false);
    assert_eq!(p[1]["verified"]["image_mismatch"], true);
    // The page says so.
    let html = cocoon_testkit::http::get_text(&http, &format!("http://{addr}/")).await;
    cocoon_testkit::http::assert_no_debug_values("the explorer", &html);
    let table = html.split("id=\"proxy-table\"").nth(1).unwrap();
    let table = table.split("</table>").next().unwrap();
    assert!(table.contains(">verified<"), "{table}");
    assert!(table.contains("not verified: attested image"), "{table}");
    assert!(table.contains("mismatch: reports "), "{table}");
    let reg = html.split("id=\"registered\"").nth(1).unwrap();
    let reg = reg.split("</table>").next().unwrap();
    assert!(reg.contains("not verified: no handshake"), "{reg}");

    stop_explorer(stop, task).await;
}

/// A proxy whose attestation the policy refuses: the explorer's check under a production
/// policy (TDX or SEV-SNP only) of a real sim proxy ends "refused" with the verifier's
/// reason, the proxy's fault, and no TEE or image; so does a proof-of-work demand above the
/// explorer's limit; a stalled endpoint (accepts, never answers the proof of work) is
/// unreachable within the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_whose_attestation_the_policy_refuses_is_not_verified() {
    use cocoon_attest::{Backend, Policy};
    use cocoon_explorer::verify::{Verdict, check};
    use cocoon_ratls::cert::Unattested;
    use cocoon_testkit::identity::{connector_as, short_lived_verifier};

    let net = cocoon_testkit::proxy::start_proxy_with(
        cocoon_testkit::fixtures::root_with_proxy_image(1, true),
        |c| c.client_verifier = short_lived_verifier(86_400, true),
    )
    .await;
    let ep = net.proxy.client_addr().to_string();
    let limit = Duration::from_secs(5);
    // The sim test policy accepts it.
    let ok = check(&connector_as(&Unattested, Policy::sim_test()), &ep, limit).await;
    assert!(
        matches!(&ok, Verdict::Attested { tee, .. } if tee == "sim"),
        "{ok:?}"
    );
    let mut production = Policy::tdx_default();
    production.allowed_backends = vec![Backend::Tdx, Backend::SevSnp];
    match check(&connector_as(&Unattested, production), &ep, limit).await {
        Verdict::Refused { reason, peer_fault } => {
            assert!(reason.starts_with("attestation refused: "), "{reason}");
            assert!(peer_fault, "{reason}");
        }
        other => panic!("a sim proxy passed a production policy: {other:?}"),
    }
    // A proxy demanding more proof of work than the explorer solves (`--pow-max-bits`):
    // refused with what it demanded, nothing solved.
    let mut frugal = connector_as(&Unattested, Policy::sim_test());
    frugal.pow_max_difficulty = cocoon_testkit::fixtures::POW - 1;
    match check(&frugal, &ep, limit).await {
        Verdict::Refused { reason, peer_fault } => {
            let want = format!("demands {} bits", cocoon_testkit::fixtures::POW);
            assert!(reason.contains(&want), "{reason}");
            assert!(peer_fault, "{reason}");
        }
        other => panic!("a proof-of-work demand over the limit: {other:?}"),
    }
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = stall.local_addr().unwrap().to_string();
    let t = std::time::Instant::now();
    let v = check(
        &connector_as(&Unattested, Policy::sim_test()),
        &at,
        Duration::from_secs(1),
    )
    .await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(matches!(v, Verdict::Unreachable { .. }), "{v:?}");
    drop(stall);
}
