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
use cocoon_testkit::devnet::{TON, devnet};
use cocoon_testkit::prelude::*;
use cocoon_ton::keys::SigningKey;
use cocoon_ton::ops::{self, RootOp, WalletOps};
use cocoon_ton::wallet::Wallet;
use cocoon_ton::{HashBytes, root::model_hash};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_shows_the_devnet_root_its_history_and_a_live_proxy() {
    let dn = devnet().await;
    let root = dn.root.address.clone();
    let owner_key = SigningKey::from_file(&dn.root.owner_key_path).unwrap();
    let mut owner = WalletOps::new(
        dn.tc.clone(),
        Wallet::v4r2(owner_key.public_key(), 0),
        owner_key,
    )
    .unwrap();
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

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
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
