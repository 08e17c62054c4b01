//! `cocoon_ton::ops` against the devnet: the real root, worker and wallet contracts in the
//! TVM, reached through the toncenter client. A root is deployed and changed by its owner,
//! refusals come back as the chain's (before sending, or the root's failed transaction), the
//! root's code and its children's are upgraded (a stranger's attempt refused by the root
//! itself), transfers, faucet top-ups and a worker contract deployment land, and a dead
//! endpoint is a transport error.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use cocoon_devnet::api;
use cocoon_devnet::run::{RunOptions, start};
use cocoon_ton::chain::{AccountStatus, Chain, GetMethodResult, StackValue, load_root_config};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::messages::ProxyEndpoint;
use cocoon_ton::ops::{self, CodeUpgrade, OpsError, RootOp, WalletOps};
use cocoon_ton::root::{CocoonParams, model_hash};
use cocoon_ton::wallet::{OutMsg, SenderEvent, Wallet};
use cocoon_ton::{Cell, HashBytes, StdAddr};
use cocoon_ton::{Toncenter, chain::Devnet as _};

const TON: u64 = 1_000_000_000;

struct Net {
    tc: Toncenter,
    root: StdAddr,
    owner_key: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn devnet() -> Net {
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        dir: Some(dir.path().to_path_buf()),
        now: Some(1_800_000_000),
        deploy_root: true,
    };
    let started = tokio::task::spawn_blocking(move || start(&opts))
        .await
        .unwrap()
        .unwrap();
    let deployed = started.root.clone().unwrap();
    let (addr, server) = api::spawn("127.0.0.1:0".parse().unwrap(), started.state)
        .await
        .unwrap();
    Net {
        tc: Toncenter::with_url(&format!("http://{addr}")).unwrap(),
        root: deployed.address,
        owner_key: deployed.owner_key_path,
        _dir: dir,
        _server: server,
    }
}

/// A v4r2 wallet of `key` funded with 50 TON from the faucet.
async fn funded(tc: &Toncenter, key: SigningKey) -> WalletOps<Toncenter> {
    let ops = WalletOps::new(tc.clone(), Wallet::v4r2(key.public_key(), 0), key).unwrap();
    tc.faucet(ops.address(), u128::from(50 * TON))
        .await
        .unwrap();
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_deploy_and_owner_operations() {
    let net = devnet().await;
    let mut me = funded(&net.tc, SigningKey::from_seed(&[0x11; 32]).unwrap()).await;
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&events);
    me.on_event(move |e| seen.lock().unwrap().push(e.clone()));

    // A fee above the price is refused before anything is sent.
    let bad = CocoonParams {
        price_per_token: 1,
        worker_fee_per_token: 2,
        ..CocoonParams::default()
    };
    let e = ops::deploy_root(&mut me, bad, TON).await.unwrap_err();
    assert!(matches!(e, OpsError::FeeAbovePrice { .. }), "{e}");
    assert!(e.is_refusal());
    assert!(events.lock().unwrap().is_empty(), "nothing sent");

    // Deploy; the same owner and params again are already deployed.
    let params = CocoonParams {
        price_per_token: 30,
        worker_fee_per_token: 21,
        unique_id: 7,
        ..CocoonParams::default()
    };
    let root = ops::deploy_root(&mut me, params.clone(), TON)
        .await
        .unwrap();
    assert_eq!(root.config.owner, *me.address());
    assert_eq!(root.config.params.price_per_token, 30);
    assert!(root.config.params.worker_code.is_some());
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, SenderEvent::Confirmed { .. }))
    );
    match ops::deploy_root(&mut me, params, TON).await {
        Err(OpsError::AlreadyDeployed(a)) => assert_eq!(a, root.address),
        other => panic!("{other:?}"),
    }

    // Owner operations, each bumping the version.
    let r = &root.address;
    let image = HashBytes([0xab; 32]);
    let model = model_hash("Qwen/Qwen3-8B@abc:def");
    let endpoint = ProxyEndpoint("127.0.0.1:8801 127.0.0.1:8802".into());
    let mut version = root.config.version;
    for op in [
        RootOp::AddWorkerImage(image),
        RootOp::AddProxyImage(image),
        RootOp::AddModel(model),
        RootOp::RegisterProxy(endpoint.clone()),
        RootOp::SetPrice {
            price_per_token: 40,
            worker_fee_per_token: 30,
        },
    ] {
        let change = ops::root_op(&mut me, r, &op, TON / 10).await.unwrap();
        assert_eq!(change.version_before, version, "{op:?}");
        assert!(change.config.version > version, "{op:?}");
        version = change.config.version;
    }
    let c = cocoon_ton::chain::load_root_config(&net.tc, r)
        .await
        .unwrap();
    assert_eq!(c.worker_hashes, vec![image]);
    assert_eq!(c.proxy_hashes, vec![image]);
    assert_eq!(c.model_hashes, vec![model]);
    assert_eq!(c.registered_proxies[0].endpoint, endpoint);
    assert_eq!(c.params.price_per_token, 40);
    assert_eq!(
        c.params.params_version,
        root.config.params.params_version + 1
    );

    let seqno = c.registered_proxies[0].seqno;
    let change = ops::root_op(
        &mut me,
        r,
        &RootOp::SetParams {
            price_per_token: 50,
            worker_fee_per_token: 40,
            proxy_delay_before_close: 100,
            client_delay_before_close: 50,
            min_proxy_stake: 2 * TON,
            min_client_stake: TON,
        },
        TON / 10,
    )
    .await
    .unwrap();
    assert_eq!(change.config.params.proxy_delay_before_close, 100);
    let change = ops::root_op(
        &mut me,
        r,
        &RootOp::SetMultipliers {
            prompt: 5000,
            cached: 1000,
            completion: 20000,
            reasoning: 20000,
        },
        TON / 10,
    )
    .await
    .unwrap();
    assert_eq!(change.config.params.cached_tokens_price_multiplier, 1000);
    for op in [
        RootOp::UnregisterProxy(seqno),
        RootOp::DelWorkerImage(image),
        RootOp::DelProxyImage(image),
        RootOp::DelModel(model),
    ] {
        ops::root_op(&mut me, r, &op, TON / 10).await.unwrap();
    }
    let c = cocoon_ton::chain::load_root_config(&net.tc, r)
        .await
        .unwrap();
    assert!(c.registered_proxies.is_empty() && c.worker_hashes.is_empty());
    assert!(c.proxy_hashes.is_empty() && c.model_hashes.is_empty());

    // The root's own refusal: no proxy with that seqno (ERR_UNKNOWN_PROXY); the version
    // stays.
    let e = ops::root_op(&mut me, r, &RootOp::UnregisterProxy(999), TON / 10)
        .await
        .unwrap_err();
    match &e {
        OpsError::Refused {
            contract,
            what,
            exit_code,
            ..
        } => {
            assert_eq!(contract, r);
            assert_eq!(what, "del-proxy");
            assert_eq!(*exit_code, Some(1014));
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_refusal());
    assert!(
        e.to_string().contains("no registered proxy has this seqno"),
        "{e}"
    );
    let after = cocoon_ton::chain::load_root_config(&net.tc, r)
        .await
        .unwrap();
    assert_eq!(after.version, c.version);

    // Refused before sending: a bad endpoint, a fee above the price, not the owner.
    let e = ops::root_op(
        &mut me,
        r,
        &RootOp::RegisterProxy(ProxyEndpoint("example.com:80".into())),
        TON / 10,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, OpsError::BadEndpoint(_)) && e.to_string().contains("ip:port"));
    let e = ops::root_op(
        &mut me,
        r,
        &RootOp::SetPrice {
            price_per_token: 1,
            worker_fee_per_token: 2,
        },
        TON / 10,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, OpsError::FeeAbovePrice { .. }), "{e}");
    let mut stranger = funded(&net.tc, SigningKey::from_seed(&[0x22; 32]).unwrap()).await;
    let e = ops::root_op(&mut stranger, r, &RootOp::AddModel(model), TON / 10)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not the root owner"), "{e}");

    // The devnet's own root, changed with its owner key.
    let key = SigningKey::from_file(&net.owner_key).unwrap();
    let mut owner = WalletOps::new(net.tc.clone(), Wallet::v4r2(key.public_key(), 0), key).unwrap();
    ops::root_op(&mut owner, &net.root, &RootOp::AddModel(model), TON / 10)
        .await
        .unwrap();
}

/// `code` with a TVM `NOP` (0x00) in front: a different cell (and hash) that runs the same.
fn with_nop(code: &Cell) -> Cell {
    use tycho_types::cell::CellBuilder;
    let mut b = CellBuilder::new();
    b.store_u8(0x00).unwrap();
    b.store_slice(code.as_slice().unwrap()).unwrap();
    b.build().unwrap()
}

/// A u256 on a get-method stack as a hash.
fn hash_at(r: &GetMethodResult, i: usize) -> HashBytes {
    match &r.stack[i] {
        StackValue::Int(v) => HashBytes(v.to_u256().unwrap()),
        other => panic!("{other:?}"),
    }
}

/// Issue 18 §2, `upgrade`: new child codes (params_version moves, the getter shows their
/// hashes), new root code (the account runs it and still obeys its owner), nothing sent when
/// every code given is already the root's, and a stranger's upgrade refused by the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_code_upgrades_and_a_stranger_refused_by_the_root() {
    let net = devnet().await;
    let mut me = funded(&net.tc, SigningKey::from_seed(&[0x31; 32]).unwrap()).await;
    let mut stranger = funded(&net.tc, SigningKey::from_seed(&[0x32; 32]).unwrap()).await;
    let root = ops::deploy_root(&mut me, CocoonParams::default(), TON)
        .await
        .unwrap();
    let r = &root.address;
    let code_hashes = || async {
        let g = net
            .tc
            .run_get_method(r, "get_code_hashes", &[])
            .await
            .unwrap();
        assert_eq!(g.exit_code, 0);
        [0, 1, 2].map(|i| hash_at(&g, i))
    };
    let root_code = || async { net.tc.account_state(r).await.unwrap().code.unwrap() };

    // This build's code is what the root was deployed with: nothing to send.
    let embedded = CodeUpgrade::embedded().unwrap();
    assert!(
        ops::upgrade(&mut me, r, &embedded, TON / 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A new worker code only: one upgrade-contracts keeping the other two.
    let code = |tag: u32| {
        let mut b = tycho_types::cell::CellBuilder::new();
        b.store_u32(tag).unwrap();
        b.build().unwrap()
    };
    let before = code_hashes().await;
    let w = code(0xC0DE_0002);
    let done = ops::upgrade(
        &mut me,
        r,
        &CodeUpgrade {
            worker: Some(w.clone()),
            ..CodeUpgrade::default()
        },
        TON / 10,
    )
    .await
    .unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].config.params.params_version,
        root.config.params.params_version + 1
    );
    assert_eq!(code_hashes().await, [before[0], *w.repr_hash(), before[2]]);

    // New root code (the same program behind a NOP) and new proxy code at once: the
    // children first, then the root; the account runs the new code and still obeys.
    let old_code = root_code().await;
    let new_code = with_nop(&old_code);
    assert_ne!(new_code.repr_hash(), old_code.repr_hash());
    let p = code(0xC0DE_0001);
    let done = ops::upgrade(
        &mut me,
        r,
        &CodeUpgrade {
            root: Some(new_code.clone()),
            proxy: Some(p.clone()),
            ..CodeUpgrade::default()
        },
        TON / 10,
    )
    .await
    .unwrap();
    assert_eq!(done.len(), 2);
    assert_eq!(root_code().await.repr_hash(), new_code.repr_hash());
    assert_eq!(
        code_hashes().await,
        [*p.repr_hash(), *w.repr_hash(), before[2]]
    );
    ops::root_op(&mut me, r, &RootOp::AddModel(HashBytes([7; 32])), TON / 10)
        .await
        .unwrap();

    // A stranger: refused before sending by the library, and by the root itself (exit
    // 1001) when the message is sent by hand; nothing changes.
    let e = ops::upgrade(&mut stranger, r, &embedded, TON / 10)
        .await
        .unwrap_err();
    assert!(matches!(e, OpsError::NotOwner { .. }), "{e}");
    for op in [
        RootOp::UpgradeRoot(old_code.clone()),
        RootOp::UpgradeContracts {
            proxy_code: w.clone(),
            worker_code: w.clone(),
            client_code: w.clone(),
        },
    ] {
        let before = load_root_config(&net.tc, r).await.unwrap();
        let body = op.body(stranger.query_id()).unwrap();
        let e = stranger
            .send_checked(OutMsg::new(r.clone(), TON / 10, Some(body)), op.name())
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                OpsError::Refused {
                    exit_code: Some(1001),
                    ..
                }
            ),
            "{}: {e}",
            op.name()
        );
        let after = load_root_config(&net.tc, r).await.unwrap();
        assert_eq!(after.version, before.version);
    }
    assert_eq!(root_code().await.repr_hash(), new_code.repr_hash());
    assert_eq!(
        code_hashes().await,
        [*p.repr_hash(), *w.repr_hash(), before[2]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_top_ups_and_deployments() {
    let net = devnet().await;
    let key = SigningKey::from_seed(&[0x33; 32]).unwrap();
    let wallet = Wallet::v4r2(key.public_key(), 0);
    let mut me = funded(&net.tc, key).await;

    // A transfer to a fresh address, non-bounceable; the wallet's seqno moves.
    let dest = StdAddr::new(0, HashBytes([0xaa; 32]));
    let seqno = ops::transfer(&mut me, &dest, 1_250_000_000, Some("hello"), false)
        .await
        .unwrap();
    assert_eq!(seqno, 0);
    let b = ops::balance(&net.tc, &dest, None).await.unwrap();
    assert_eq!(b.balance, 1_250_000_000);
    assert_eq!(b.seqno, None);
    let b = ops::balance(&net.tc, me.address(), Some(&wallet))
        .await
        .unwrap();
    assert_eq!((b.status, b.seqno), (AccountStatus::Active, Some(1)));

    // Faucet top-ups only below the threshold.
    let poor = StdAddr::new(0, HashBytes([0xbb; 32]));
    let got = ops::faucet_top_up(&net.tc, &poor, u128::from(TON), u128::from(2 * TON))
        .await
        .unwrap();
    assert_eq!(got, Some(u128::from(2 * TON)));
    let got = ops::faucet_top_up(&net.tc, &poor, u128::from(TON), u128::from(2 * TON))
        .await
        .unwrap();
    assert_eq!(got, None);

    // A worker contract for some proxy, deployed once.
    let root = cocoon_ton::chain::load_root_config(&net.tc, &net.root)
        .await
        .unwrap();
    let proxy_key = HashBytes([0x50; 32]);
    let proxy =
        cocoon_ton::contracts::proxy_contract(&root.params, &dest, &proxy_key, &net.root).unwrap();
    let worker = cocoon_ton::contracts::worker_contract(
        &root.params,
        me.address(),
        &proxy.address,
        &proxy_key,
    )
    .unwrap();
    let deployed = ops::deploy_contract(&mut me, &worker, TON / 3, "worker contract")
        .await
        .unwrap();
    assert!(deployed);
    let st = net.tc.account_state(&worker.address).await.unwrap();
    assert_eq!(st.status, AccountStatus::Active);
    let again = ops::deploy_contract(&mut me, &worker, TON / 3, "worker contract")
        .await
        .unwrap();
    assert!(!again);
}

#[tokio::test]
async fn a_dead_endpoint_is_a_transport_error() {
    // Port 0: nothing can listen there, so every connection is refused.
    let tc = Toncenter::with_url("http://127.0.0.1:0").unwrap();
    let key = SigningKey::from_seed(&[0x44; 32]).unwrap();
    let mut me = WalletOps::new(tc, Wallet::v4r2(key.public_key(), 0), key).unwrap();
    me.confirm_timeout = Duration::from_secs(2);
    let dest = StdAddr::new(0, HashBytes([0xcc; 32]));
    let e = ops::transfer(&mut me, &dest, 1, None, false)
        .await
        .unwrap_err();
    assert!(matches!(e, OpsError::Chain(_)), "{e:?}");
    assert!(!e.is_refusal());
}

/// Issue 18 §2, the root owner's tools: `change_params` changes only the values given (one
/// `set-params` for prices, delays and stakes, one `set-multipliers` for the multipliers,
/// nothing at all when every value is already current), checks before sending, and the
/// root's getters show the result; `change_owner` hands the root over, after which the old
/// owner is refused and the new one is obeyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_params_and_owner_change() {
    use cocoon_ton::ops::ParamsChange;
    let net = devnet().await;
    let mut me = funded(&net.tc, SigningKey::from_seed(&[0x31; 32]).unwrap()).await;
    let root = ops::deploy_root(&mut me, CocoonParams::default(), TON)
        .await
        .unwrap();
    let r = &root.address;
    let p0 = root.config.params.clone();

    // Prices and one stake: one operation; everything not given stays.
    let change = ParamsChange {
        price_per_token: Some(p0.price_per_token + 10),
        min_client_stake: Some(3 * TON),
        ..ParamsChange::default()
    };
    let done = ops::change_params(&mut me, r, &change, TON / 10)
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    let c = cocoon_ton::chain::load_root_config(&net.tc, r)
        .await
        .unwrap();
    assert_eq!(c.params.price_per_token, p0.price_per_token + 10);
    assert_eq!(c.params.min_client_stake, 3 * TON);
    assert_eq!(c.params.worker_fee_per_token, p0.worker_fee_per_token);
    assert_eq!(c.params.min_proxy_stake, p0.min_proxy_stake);
    assert_eq!(
        c.params.proxy_delay_before_close,
        p0.proxy_delay_before_close
    );
    assert_eq!(
        c.params.completion_tokens_price_multiplier,
        p0.completion_tokens_price_multiplier
    );
    assert_eq!(c.params.params_version, p0.params_version + 1);

    // Delays and a multiplier: two operations.
    let change = ParamsChange {
        proxy_delay_before_close: Some(7_200),
        client_delay_before_close: Some(600),
        completion_multiplier: Some(30_000),
        ..ParamsChange::default()
    };
    assert_eq!(
        ops::change_params(&mut me, r, &change, TON / 10)
            .await
            .unwrap()
            .len(),
        2
    );
    let c = cocoon_ton::chain::load_root_config(&net.tc, r)
        .await
        .unwrap();
    assert_eq!(
        (
            c.params.proxy_delay_before_close,
            c.params.client_delay_before_close
        ),
        (7_200, 600)
    );
    assert_eq!(c.params.completion_tokens_price_multiplier, 30_000);
    assert_eq!(
        c.params.prompt_tokens_price_multiplier,
        p0.prompt_tokens_price_multiplier
    );
    assert_eq!(c.params.price_per_token, p0.price_per_token + 10);
    assert_eq!(c.params.params_version, p0.params_version + 3);

    // The same values again: nothing is sent, params_version stays.
    assert!(
        ops::change_params(&mut me, r, &change, TON / 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A fee above the (unchanged) price is refused before anything is sent.
    let bad = ParamsChange {
        worker_fee_per_token: Some(c.params.price_per_token + 1),
        ..ParamsChange::default()
    };
    let e = ops::change_params(&mut me, r, &bad, TON / 10)
        .await
        .unwrap_err();
    assert!(matches!(e, OpsError::FeeAbovePrice { .. }), "{e}");
    let after = cocoon_ton::chain::load_root_config(&net.tc, r)
        .await
        .unwrap();
    assert_eq!(after.version, c.version);

    // A new owner: the old one is refused from then on, the new one obeyed.
    let mut heir = funded(&net.tc, SigningKey::from_seed(&[0x32; 32]).unwrap()).await;
    let heir_addr = heir.address().clone();
    let change = ops::change_owner(&mut me, r, &heir_addr, TON / 10)
        .await
        .unwrap();
    assert_eq!(change.config.owner, heir_addr);
    assert_eq!(change.config.params.params_version, c.params.params_version);
    let e = ops::change_params(&mut me, r, &bad, TON / 10)
        .await
        .unwrap_err();
    assert!(matches!(e, OpsError::NotOwner { .. }), "{e}");
    let mine = me.address().clone();
    let e = ops::change_owner(&mut me, r, &mine, TON / 10)
        .await
        .unwrap_err();
    assert!(matches!(e, OpsError::NotOwner { .. }), "{e}");
    let done = ops::change_params(
        &mut heir,
        r,
        &ParamsChange {
            min_proxy_stake: Some(5 * TON),
            ..ParamsChange::default()
        },
        TON / 10,
    )
    .await
    .unwrap();
    assert_eq!(done[0].config.params.min_proxy_stake, 5 * TON);
}
