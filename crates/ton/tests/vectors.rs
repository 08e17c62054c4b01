//! Cross-language vectors: the committed Rust vectors are current, they are consistent with
//! our own verifier, and the JS (sandbox) vectors agree with our layouts and signatures.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use cocoon_ton::payments::{PaymentError, SignedOp, SignedPayment};
use cocoon_ton::root::RootConfig;
use cocoon_ton::vectors::{self, Codes, exit, json_address, read_boc};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn codes() -> Codes {
    Codes::load(&repo().join("contracts/build"))
        .expect("contracts/build/*.code.boc (written by contracts/build.mjs)")
}

#[test]
fn committed_rust_vectors_are_current() {
    let set = vectors::generate(&codes()).unwrap();
    let dir = repo().join("testvectors/ton/rust");
    if std::env::var("COCOON_REGEN_VECTORS").as_deref() == Ok("1") {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (n, b) in &set.files {
            std::fs::write(dir.join(n), b).unwrap();
        }
        std::fs::write(dir.join("vectors.json"), set.json_text()).unwrap();
    }
    let mut diffs = Vec::new();
    for (n, b) in &set.files {
        match std::fs::read(dir.join(n)) {
            Ok(on_disk) if &on_disk == b => {}
            Ok(_) => diffs.push(format!("differs {n}")),
            Err(_) => diffs.push(format!("missing {n}")),
        }
    }
    match std::fs::read_to_string(dir.join("vectors.json")) {
        Ok(t) if t == set.json_text() => {}
        _ => diffs.push("differs vectors.json".into()),
    }
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n != "vectors.json" && !set.files.contains_key(&n) {
                diffs.push(format!("stale {n}"));
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "testvectors/ton/rust differs from a fresh run: {diffs:?}; if intended: COCOON_REGEN_VECTORS=1 cargo test -p cocoon-ton --test vectors"
    );
}

/// Every generated message's expected exit code agrees with our own verifier, replaying the
/// same order and tracking the settled totals as the contracts do.
#[test]
fn rust_messages_agree_with_our_verifier() {
    let set = vectors::generate(&codes()).unwrap();
    let pk: [u8; 32] = hex::decode(set.json["public_keys"]["proxy"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let addr = |k: &str| json_address(&set.json["addresses"][k]).unwrap();
    let mut settled = std::collections::HashMap::<String, u64>::new();
    for m in set.json["messages"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let contract = m["contract"].as_str().unwrap();
        let expect = m["expect_exit"].as_i64().unwrap() as i32;
        let body = cocoon_ton::codec::decode_boc(&set.files[m["file"].as_str().unwrap()]).unwrap();
        let sp = SignedPayment::from_cell(&body).unwrap();
        let kind = SignedOp::from_opcode(sp.op).unwrap();
        let accepts = matches!(
            (contract, kind),
            (
                "client",
                SignedOp::ClientCharge | SignedOp::ClientGrantRefund
            ) | (
                "worker",
                SignedOp::WorkerPayout | SignedOp::WorkerLastPayout
            ) | (
                "proxy",
                SignedOp::ProxyCloseRequest | SignedOp::ProxyCloseComplete
            )
        );
        if !accepts {
            assert_eq!(expect, exit::UNKNOWN_OP, "{name}");
            continue;
        }
        let s = settled.get(contract).copied().unwrap_or(0);
        let r = sp.verify_newer(kind, &addr(contract), &pk, s);
        match (expect, &r) {
            (exit::OK, Ok(p)) => {
                settled.insert(contract.into(), p.tokens.unwrap_or(0));
            }
            (exit::BAD_SIGNATURE, Err(PaymentError::BadSignature)) => {}
            (exit::WRONG_CONTRACT, Err(PaymentError::WrongContract { .. })) => {}
            (exit::OLD_TOKENS, Err(PaymentError::NotIncreasing { .. })) => {}
            (exit::NOT_UNLOCKED, Ok(_)) => {} // a time rule, not a receipt rule
            _ => panic!("{name}: expected exit {expect}, our verifier says {r:?}"),
        }
    }
}

fn js_dir() -> Option<PathBuf> {
    let d = repo().join("testvectors/ton/js");
    if d.join("vectors.json").exists() {
        return Some(d);
    }
    let msg = format!(
        "{} does not exist yet (written by contracts/tests/vectors.test.mjs)",
        d.display()
    );
    if cocoon_testkit::fixtures::prereqs_required() {
        panic!("{msg}; scripts/test (npm test in contracts/) writes it first");
    }
    eprintln!("SKIP: {msg}");
    None
}

fn load_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn js_vectors_agree_with_rust() {
    let Some(dir) = js_dir() else { return };
    let js = load_json(&dir.join("vectors.json"));
    let ours = vectors::generate(&codes()).unwrap().json;

    // code hashes, seeds, public keys and addresses
    for k in ["root", "proxy", "client", "worker"] {
        assert_eq!(
            js["code_hashes"][k], ours["code_hashes"][k],
            "code hash of {k}"
        );
    }
    assert_eq!(js["seeds"], ours["seeds"], "seeds");
    assert_eq!(js["public_keys"], ours["public_keys"], "public keys");
    let mut compared = 0;
    for (k, v) in js["addresses"].as_object().unwrap() {
        if let Some(o) = ours["addresses"].get(k) {
            assert_eq!(json_address(v), json_address(o), "address of {k}");
            compared += 1;
        }
    }
    assert!(compared >= 9, "only {compared} addresses compared");

    // every JS cell file matches its declared hash; the cells we can build match bit for bit
    let our_cells: std::collections::HashMap<String, String> = ours["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["hash"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut built = 0;
    for c in js["cells"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let cell = read_boc(&dir.join(c["file"].as_str().unwrap())).unwrap();
        assert_eq!(
            cell.repr_hash().to_string(),
            c["hash"].as_str().unwrap(),
            "{name} file vs hash"
        );
        if let Some(h) = our_cells.get(name) {
            assert_eq!(
                h,
                c["hash"].as_str().unwrap(),
                "cell {name} built by Rust differs from JS"
            );
            built += 1;
        }
        if name == "root_data_populated" {
            let cfg = RootConfig::from_storage_cell(&cell).unwrap();
            assert_eq!(
                cfg.to_storage_cell().unwrap().repr_hash(),
                cell.repr_hash(),
                "root round trip"
            );
            // the JS registry, parsed by our RootConfig, is exactly the typed one we build
            assert_eq!(
                cfg,
                vectors::registry_config(&vectors::default_params(&codes()))
            );
        }
    }
    assert!(built >= 7, "only {built} JS cells were rebuilt by Rust");

    // signed messages: our verifier accepts the JS-signed ones and refuses the bad ones
    let pk: [u8; 32] = hex::decode(js["public_keys"]["proxy"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let mut checked = 0;
    for m in js["messages"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let Some(body_file) = m["body_file"].as_str() else {
            continue;
        };
        let body = read_boc(&dir.join(body_file)).unwrap();
        let Ok(sp) = SignedPayment::from_cell(&body) else {
            continue;
        };
        let Some(kind) = SignedOp::from_opcode(sp.op) else {
            continue;
        };
        let target = json_address(&m["to"]).unwrap();
        let r = sp.verify(kind, &target, &pk);
        if let Some(s) = m.get("signed") {
            let p = r
                .as_ref()
                .unwrap_or_else(|e| panic!("{name}: JS-signed payment refused: {e}"))
                .clone();
            assert_eq!(
                p.query_id.to_string(),
                s["qid"].as_str().unwrap(),
                "{name} qid"
            );
            assert_eq!(
                p.tokens.map(|t| t.to_string()),
                s["tokens"].as_str().map(str::to_owned),
                "{name} tokens"
            );
            assert_eq!(
                Some(p.contract),
                json_address(&s["target"]),
                "{name} target"
            );
            // re-signing the same payload with our key gives the same signature (Ed25519 is deterministic)
            let key = cocoon_ton::keys::SigningKey::from_seed(&vectors::seed("proxy")).unwrap();
            assert_eq!(
                key.sign(sp.payload.repr_hash().as_slice()),
                sp.signature.0,
                "{name} signature"
            );
            checked += 1;
        }
        match m["expect_exit"].as_i64() {
            Some(1002) => assert!(
                matches!(r, Err(PaymentError::BadSignature)),
                "{name}: {r:?}"
            ),
            Some(1004) => assert!(
                matches!(r, Err(PaymentError::WrongContract { .. })),
                "{name}: {r:?}"
            ),
            _ => {}
        }
    }
    assert!(checked > 0, "no signed JS messages were checked");
}
