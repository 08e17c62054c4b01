//! The root contract deployed at start-up: its storage is what `cocoon-ton` expects, the
//! owner key file works (an owner op signed with it lands), and a restart reuses it.

use cocoon_devnet::chain::AccountStatus;
use cocoon_devnet::root::{self, OWNER_KEY_FILE};
use cocoon_devnet::{Devnet, GetMethodId};
use cocoon_ton::codec::Layout;
use cocoon_ton::keys::SigningKey;
use cocoon_ton::messages::AddWorkerType;
use cocoon_ton::root::RootConfig;
use cocoon_ton::wallet::{OutMsg, Wallet};
use num_bigint::BigInt;
use tycho_types::prelude::*;
use tycho_vm::RcStackValue;

const T0: u32 = 1_750_000_000;

#[test]
fn root_is_deployed_owned_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, owner) = {
        let mut chain = Devnet::open(dir.path(), T0).unwrap();
        let dep = root::ensure_root(&mut chain, dir.path()).unwrap();
        assert!(dep.deployed_now);
        let acc = chain.account(&dep.address).unwrap();
        assert_eq!(acc.status, AccountStatus::Active);
        assert!(acc.balance > 9_000_000_000 && acc.balance <= root::ROOT_FUNDS);
        let cfg = RootConfig::from_storage_cell(acc.data.as_ref().unwrap()).unwrap();
        assert_eq!(cfg.owner, dep.owner);
        assert!(cfg.params.is_test);
        assert_eq!(cfg.params.price_per_token, 20);
        let codes = chain
            .run_get_method(
                &dep.address,
                &GetMethodId::Name("get_code_hashes".into()),
                vec![],
            )
            .unwrap();
        assert_eq!(codes.exit_code, 0);
        let proxy_hash = Boc::decode(root::PROXY_CODE).unwrap();
        assert_eq!(
            codes.stack[0].as_int().unwrap(),
            &BigInt::from_bytes_be(num_bigint::Sign::Plus, proxy_hash.repr_hash().as_slice())
        );

        // The key file is private and signs for the owner wallet.
        let key_path = dir.path().join(OWNER_KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let key = SigningKey::from_file(&key_path).unwrap();
        let wallet = Wallet::v4r2(key.public_key(), 0);
        assert_eq!(wallet.address().unwrap(), dep.owner);
        let hash = HashBytes([0x42; 32]);
        let body = AddWorkerType { query_id: 7, hash }.to_cell().unwrap();
        let msg = OutMsg::new(dep.address.clone(), 1_000_000_000, Some(body));
        let ext = wallet
            .external_transfer(&key, 0, T0 + 60, &[msg], true)
            .unwrap();
        let txs = chain.send_external(&Boc::encode(ext)).unwrap();
        assert!(txs.iter().all(|t| !t.failed()), "{txs:#?}");
        assert!(
            txs.iter()
                .any(|t| t.account == dep.address && t.exit_code == Some(0))
        );
        let valid = chain
            .run_get_method(
                &dep.address,
                &GetMethodId::Name("worker_hash_is_valid".into()),
                vec![RcStackValue::new_dyn_value(BigInt::from_bytes_be(
                    num_bigint::Sign::Plus,
                    hash.as_slice(),
                ))],
            )
            .unwrap();
        assert_eq!(valid.stack[0].as_int().unwrap(), &BigInt::from(-1));
        let cfg = RootConfig::from_storage_cell(
            chain.account(&dep.address).unwrap().data.as_ref().unwrap(),
        )
        .unwrap();
        assert_eq!(cfg.version, 1);
        assert!(cfg.has_worker_hash(&hash));
        (dep.address, dep.owner)
    };
    let mut chain = Devnet::open(dir.path(), 1).unwrap();
    let again = root::ensure_root(&mut chain, dir.path()).unwrap();
    assert!(!again.deployed_now, "a restart must not redeploy");
    assert_eq!((again.address, again.owner), (addr, owner));
}
