//! `cocoon wallet` and `cocoon root` driven end to end against an in-process devnet (the real
//! compiled contracts and wallet codes on the pure-Rust TVM, over the toncenter v2 API).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;

use cocoon_devnet::run::{RunOptions, start};
use cocoon_ton::chain::Chain;
use cocoon_ton::{Toncenter, chain::Devnet};

mod common;
use common::{cocoon, ok};

fn raw_address(show_output: &str) -> String {
    show_output
        .lines()
        .find_map(|l| l.strip_prefix("address (raw): "))
        .unwrap()
        .to_owned()
}

#[test]
fn wallet_and_root_commands_against_devnet() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let started = start(&RunOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        dir: Some(dir.path().join("devnet")),
        now: Some(1_800_000_000),
        deploy_root: true,
    })
    .unwrap();
    let owner_key = started.root.as_ref().unwrap().owner_key_path.clone();
    let (addr, _task) = rt
        .block_on(cocoon_devnet::api::spawn(
            "127.0.0.1:0".parse().unwrap(),
            started.state,
        ))
        .unwrap();
    let url = format!("http://{addr}");
    let ton = ["--ton", url.as_str()];
    let client = Toncenter::with_url(&url).unwrap();

    // a new v5r1 wallet: key file is private, address derives from it
    let key = dir.path().join("w.key");
    let key_s = key.to_str().unwrap();
    let new_out = ok(&["wallet", "new", "--key", key_s, "--wallet-version", "v5r1"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let show = ok(&["wallet", "show", "--key", key_s, "--wallet-version", "v5r1"]);
    let me = raw_address(&show);
    assert_eq!(me, raw_address(&new_out));

    // `cocoon wallet OP --key K --wallet-version v5r1 EXTRA --ton URL`
    let wallet = |op: &str, extra: &[&str]| {
        let key = ["--key", key_s, "--wallet-version", "v5r1"];
        ok(&[&["wallet", op][..], &key, extra, &ton].concat())
    };

    // fund it, send 1.25 TON to a fresh address, check both balances
    let me_addr = cocoon_ton::parse_address(&me).unwrap();
    rt.block_on(client.faucet(&me_addr, 5_000_000_000)).unwrap();
    let bal = wallet("balance", &[]);
    assert!(bal.contains("balance: 5 TON"), "{bal}");
    let dest = "0:00000000000000000000000000000000000000000000000000000000000000aa";
    let sent = wallet(
        "send",
        &[
            "--to",
            dest,
            "--amount",
            "1.25",
            "--comment",
            "hello",
            "--no-bounce",
            "--wait",
            "20",
        ],
    );
    assert!(sent.contains("seqno 0 accepted"), "{sent}");
    let dest_bal = ok(&["wallet", "balance", "--address", dest, ton[0], ton[1]]);
    assert!(dest_bal.contains("balance: 1.25 TON"), "{dest_bal}");
    let bal = wallet("balance", &[]);
    assert!(
        bal.contains("seqno: 1") && bal.contains("status: Active"),
        "{bal}"
    );

    // the wallet's transactions through the same client: faucet credit, then the send
    let txs = rt
        .block_on(client.transactions_since(&me_addr, None, 10))
        .unwrap();
    assert_eq!(txs.len(), 2, "{txs:?}");
    let credit = txs[0].outcome().unwrap().unwrap();
    assert_eq!(
        credit.exit_code, None,
        "compute skipped on the uninitialised wallet"
    );
    assert!(!credit.failed());
    let spend = txs[1].outcome().unwrap().unwrap();
    assert_eq!(
        (spend.aborted, spend.exit_code, spend.action_result_code),
        (false, Some(0), Some(0))
    );
    assert!(
        txs[1].in_msg.as_ref().unwrap().source.is_none(),
        "external inbound message"
    );
    assert_eq!(txs[1].out_msgs.len(), 1);
    assert_eq!(txs[1].out_msgs[0].value, 1_250_000_000);
    let newer = rt
        .block_on(client.transactions_since(&me_addr, Some(&txs[0].id), 10))
        .unwrap();
    assert_eq!(
        newer.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        vec![txs[1].id.clone()]
    );
    let st = rt.block_on(client.account_state(&me_addr)).unwrap();
    assert_eq!(st.last_tx.as_ref(), Some(&txs[1].id));

    // root: read, then owner operations through the devnet's root-owner wallet (v4r2)
    let owner = owner_key.to_str().unwrap();
    // `cocoon root OP --key OWNER --ton URL`, and the registry as JSON
    let root = |op: &[&str]| ok(&[&["root"], op, &["--key", owner], &ton].concat());
    let show = || -> serde_json::Value {
        serde_json::from_str(&ok(&["root", "show", "--json", ton[0], ton[1]])).unwrap()
    };
    let show0 = show();
    let v0 = show0["version"].as_u64().unwrap();
    let hash = "ab".repeat(32);
    root(&["add-image", "--kind", "worker", &hash]);
    root(&["add-image", "--kind", "proxy", &"cd".repeat(32)]);
    let model_out = root(&["add-model", "Qwen/Qwen3-8B@abc:def"]);
    root(&["add-proxy", "127.0.0.1:8801 127.0.0.1:8802"]);
    root(&["set-price", "--price", "30", "--worker-fee", "20"]);
    let show1 = show();
    assert_eq!(show1["version"].as_u64().unwrap(), v0 + 5);
    assert_eq!(show1["worker_hashes"][0], hash);
    assert_eq!(show1["proxy_hashes"][0], "cd".repeat(32));
    let mh = cocoon_ton::root::model_hash("Qwen/Qwen3-8B@abc:def").to_string();
    assert!(model_out.contains(&mh));
    assert_eq!(show1["model_hashes"][0], mh);
    assert_eq!(
        show1["registered_proxies"][0]["address"],
        "127.0.0.1:8801 127.0.0.1:8802"
    );
    assert_eq!(show1["price_per_token"], 30);
    assert_eq!(
        show1["params_version"].as_u64().unwrap(),
        show0["params_version"].as_u64().unwrap() + 1
    );
    let seqno = show1["registered_proxies"][0]["seqno"]
        .as_u64()
        .unwrap()
        .to_string();
    root(&["del-proxy", &seqno]);
    root(&["del-image", "--kind", "worker", &hash]);
    root(&["del-model", &mh]);
    let show2 = show();
    assert!(show2["registered_proxies"].as_array().unwrap().is_empty());
    assert!(show2["worker_hashes"].as_array().unwrap().is_empty());
    assert!(show2["model_hashes"].as_array().unwrap().is_empty());

    // refusals: a non-owner key, a bad endpoint, a group-readable key file
    let (rc, _, err) = cocoon(&[
        "root",
        "add-model",
        "x",
        "--key",
        key_s,
        "--wallet-version",
        "v5r1",
        ton[0],
        ton[1],
    ]);
    assert_eq!(rc, 1);
    assert!(err.contains("not the root owner"), "{err}");
    let (rc, _, err) = cocoon(&[
        "root",
        "add-proxy",
        "example.com:80",
        "--key",
        owner,
        ton[0],
        ton[1],
    ]);
    assert_eq!(rc, 1);
    assert!(err.contains("ip:port"), "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let loose = dir.path().join("loose.key");
        std::fs::copy(&key, &loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (rc, _, err) = cocoon(&["wallet", "show", "--key", loose.to_str().unwrap()]);
        assert_eq!(rc, 1);
        assert!(err.contains("chmod 600"), "{err}");
    }
    assert!(Path::new(&owner_key).exists());

    // change-params: only the values given change; the getters show them.
    let before = show();
    let out = root(&[
        "change-params",
        "--client-delay",
        "900",
        "--min-proxy-stake",
        "2.5",
        "--completion-multiplier",
        "25000",
    ]);
    assert!(out.contains("close delays: proxy"), "{out}");
    let after = show();
    assert_eq!(after["client_delay_before_close"], 900);
    assert_eq!(after["min_proxy_stake"], 2_500_000_000u64);
    assert_eq!(after["completion_tokens_price_multiplier"], 25000);
    for same in [
        "price_per_token",
        "worker_fee_per_token",
        "proxy_delay_before_close",
        "min_client_stake",
        "prompt_tokens_price_multiplier",
        "owner",
    ] {
        assert_eq!(after[same], before[same], "{same}");
    }
    assert_eq!(
        after["params_version"].as_u64().unwrap(),
        before["params_version"].as_u64().unwrap() + 2,
        "one set-params and one set-multipliers"
    );
    let out = root(&["change-params", "--client-delay", "900"]);
    assert!(out.contains("unchanged"), "{out}");
    assert_eq!(show()["version"], after["version"]);
    let (rc, _, err) = cocoon(&["root", "change-params", "--key", owner, ton[0], ton[1]]);
    assert_eq!(rc, 1);
    assert!(err.contains("nothing to change"), "{err}");
    let (rc, _, err) = cocoon(&[
        "root",
        "change-params",
        "--worker-fee",
        "1000",
        "--key",
        owner,
        ton[0],
        ton[1],
    ]);
    assert_eq!(rc, 1);
    assert!(err.contains("exceeds price"), "{err}");

    // upgrade: this build's codes are the devnet root's (nothing sent); a new worker code
    // from a BOC file moves params_version and keeps the other codes; a new root code (the
    // same program behind a TVM NOP) runs and still obeys the owner.
    let before = show();
    let out = root(&["upgrade", "--embedded"]);
    assert!(out.contains("unchanged"), "{out}");
    assert_eq!(show()["version"], before["version"]);
    let boc = |name: &str, cell: &cocoon_ton::Cell| {
        let path = dir.path().join(name);
        std::fs::write(&path, cocoon_ton::codec::encode_boc(cell)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let mut b = cocoon_ton::CellBuilder::new();
    b.store_u32(0xC0DE_0002).unwrap();
    let worker_code = b.build().unwrap();
    let out = root(&["upgrade", "--worker-code", &boc("worker.boc", &worker_code)]);
    assert!(out.contains("worker code hash: "), "{out}");
    let after = show();
    assert_eq!(
        after["worker_code_hash"],
        worker_code.repr_hash().to_string()
    );
    assert_eq!(
        after["params_version"].as_u64().unwrap(),
        before["params_version"].as_u64().unwrap() + 1
    );
    for same in ["proxy_code_hash", "client_code_hash", "root_code_hash"] {
        assert_eq!(after[same], before[same], "{same}");
    }
    let old_root = cocoon_ton::codec::decode_boc(cocoon_ton::code::ROOT_CODE).unwrap();
    assert_eq!(before["root_code_hash"], old_root.repr_hash().to_string());
    let mut b = cocoon_ton::CellBuilder::new();
    b.store_u8(0x00).unwrap();
    b.store_slice(old_root.as_slice().unwrap()).unwrap();
    let new_root = b.build().unwrap();
    let out = root(&[
        "upgrade",
        "--root-code",
        &boc("root.boc", &new_root),
        "--proxy-code",
        "embedded",
    ]);
    assert_eq!(
        out.matches("root version").count(),
        1,
        "proxy code unchanged: {out}"
    );
    let upgraded = show();
    assert_eq!(upgraded["root_code_hash"], new_root.repr_hash().to_string());
    assert_eq!(upgraded["params_version"], after["params_version"]);
    root(&["add-model", "after-upgrade"]);
    let (rc, _, err) = cocoon(&["root", "upgrade", "--key", owner, ton[0], ton[1]]);
    assert_eq!(rc, 1);
    assert!(err.contains("nothing to upgrade"), "{err}");
    let (rc, _, err) = cocoon(&[
        "root",
        "upgrade",
        "--client-code",
        key_s,
        "--key",
        owner,
        ton[0],
        ton[1],
    ]);
    assert_eq!(rc, 1);
    assert!(err.contains("not a BOC"), "{err}");

    // change-owner: the v5r1 wallet owns the root; the old owner is refused.
    let out = root(&["change-owner", "--new-owner", &me]);
    assert!(out.contains(&format!("owner: {me}")), "{out}");
    assert_eq!(show()["owner"], me);
    let (rc, _, err) = cocoon(&["root", "add-model", "y", "--key", owner, ton[0], ton[1]]);
    assert_eq!(rc, 1);
    assert!(err.contains("not the root owner"), "{err}");
    let (rc, _, err) = cocoon(&[
        "root",
        "upgrade",
        "--embedded",
        "--key",
        owner,
        ton[0],
        ton[1],
    ]);
    assert_eq!(rc, 1);
    assert!(err.contains("not the root owner"), "{err}");
    ok(&[
        "root",
        "change-params",
        "--price",
        "40",
        "--key",
        key_s,
        "--wallet-version",
        "v5r1",
        ton[0],
        ton[1],
    ]);
    assert_eq!(show()["price_per_token"], 40);
}
