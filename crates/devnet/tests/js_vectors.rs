//! Differential test on Cocoon's own contracts: the contracts engineer records, in
//! `testvectors/ton/js/vectors.json`, every message of a root/proxy/client/worker scenario
//! as `@ton/sandbox` 0.41.0 ran it (exit code, gas and fees of each transaction). The devnet
//! replays the same message BOCs in the same order under the same clock and must agree on
//! every transaction that runs on a Cocoon contract.
//!
//! Transactions on the senders (owner wallets, the stranger) are skipped: in the sandbox
//! those are treasury contracts with code, on the devnet they are plain addresses that do
//! not exist, so the excess/notification they receive is a skipped compute phase here.

use std::path::PathBuf;

use cocoon_devnet::Devnet;
use serde_json::Value;
use tycho_types::prelude::*;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testvectors/ton/js")
}

fn num(v: &Value) -> Option<u128> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64().map(u128::from),
        _ => None,
    }
}

#[test]
fn cocoon_contracts_match_sandbox() {
    let text = std::fs::read_to_string(dir().join("vectors.json"))
        .expect("testvectors/ton/js/vectors.json is committed by the contracts tests");
    let v: Value = serde_json::from_str(&text).unwrap();
    let now = v["now"].as_u64().unwrap() as u32;
    let contracts: Vec<String> = ["root", "proxy", "client", "worker"]
        .iter()
        .map(|k| v["addresses"][k].as_str().unwrap().to_string())
        .collect();
    let mut chain = Devnet::new(now).unwrap();
    let mut compared = 0;
    for m in v["messages"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let boc = std::fs::read(dir().join(m["message_file"].as_str().unwrap())).unwrap();
        // Same bytes as the sandbox ran (re-encoding would not change the cell either).
        assert!(Boc::decode(&boc).is_ok(), "{name}: BOC");
        let txs = chain
            .send_internal(&boc)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let first = &txs[0];
        assert_eq!(
            first.exit_code.map(i64::from),
            m["exit_code"].as_i64(),
            "{name}: exit code"
        );
        assert_eq!(
            u128::from(first.gas_used),
            num(&m["gas_used"]).unwrap(),
            "{name}: gas"
        );
        assert_eq!(
            first.total_fees,
            num(&m["total_fees"]).unwrap(),
            "{name}: fees"
        );
        let want: Vec<&Value> = m["chain"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| contracts.iter().any(|c| c == t["on"].as_str().unwrap()))
            .collect();
        let got: Vec<_> = txs
            .iter()
            .filter(|t| contracts.contains(&t.account.to_string()))
            .collect();
        assert_eq!(got.len(), want.len(), "{name}: transactions on contracts");
        for (g, w) in got.iter().zip(want) {
            let ctx = format!("{name} on {}", g.account);
            assert_eq!(g.account.to_string(), w["on"].as_str().unwrap(), "{ctx}");
            assert_eq!(
                g.exit_code.map(i64::from),
                w["exit_code"].as_i64(),
                "{ctx}: exit"
            );
            assert_eq!(g.aborted, w["aborted"].as_bool().unwrap(), "{ctx}: aborted");
            assert_eq!(
                u128::from(g.gas_used),
                num(&w["gas_used"]).unwrap_or(0),
                "{ctx}: gas"
            );
            assert_eq!(g.total_fees, num(&w["total_fees"]).unwrap(), "{ctx}: fees");
            compared += 1;
        }
    }
    assert!(compared >= 28, "compared only {compared} transactions");
    println!("compared {compared} contract transactions with the sandbox: all equal");
}
