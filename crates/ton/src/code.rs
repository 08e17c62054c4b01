//! The compiled code of Cocoon's four contracts, embedded from `contracts/build/`.
//!
//! Deploying a root (on the devnet or on a real chain) needs the root code and, inside the
//! root's params, the proxy, worker and client codes that every child contract address is
//! derived from. They live here, in the crate every role already uses, so that production
//! tools do not depend on the dev chain crate. The BOCs are the committed build outputs that
//! CI checks against the Tolk sources.

use tycho_types::cell::Cell;
use tycho_types::models::StdAddr;

use crate::codec::{self, LayoutError};
use crate::contracts::Deployable;
use crate::root::{CocoonParams, RootConfig};

/// Root contract code (`contracts/build/root.code.boc`).
pub const ROOT_CODE: &[u8] = include_bytes!("../../../contracts/build/root.code.boc");
/// Proxy contract code (`contracts/build/proxy.code.boc`).
pub const PROXY_CODE: &[u8] = include_bytes!("../../../contracts/build/proxy.code.boc");
/// Worker contract code (`contracts/build/worker.code.boc`).
pub const WORKER_CODE: &[u8] = include_bytes!("../../../contracts/build/worker.code.boc");
/// Client contract code (`contracts/build/client.code.boc`).
pub const CLIENT_CODE: &[u8] = include_bytes!("../../../contracts/build/client.code.boc");

/// The root code cell.
pub fn root_code() -> Result<Cell, LayoutError> {
    codec::decode_boc(ROOT_CODE)
}

/// `params` with the proxy, worker and client codes attached (what a root must carry).
pub fn with_child_codes(params: CocoonParams) -> Result<CocoonParams, LayoutError> {
    Ok(CocoonParams {
        proxy_code: Some(codec::decode_boc(PROXY_CODE)?),
        worker_code: Some(codec::decode_boc(WORKER_CODE)?),
        client_code: Some(codec::decode_boc(CLIENT_CODE)?),
        ..params
    })
}

/// A fresh root's configuration: `owner`, version 0, empty lists and `params` as given.
pub fn initial_root_config(owner: StdAddr, params: CocoonParams) -> RootConfig {
    RootConfig {
        owner,
        version: 0,
        proxy_hashes: Vec::new(),
        registered_proxies: Vec::new(),
        last_proxy_seqno: 0,
        worker_hashes: Vec::new(),
        model_hashes: Vec::new(),
        params,
    }
}

/// The root contract for `config` (code, storage and the address they give). The same owner
/// and params always give the same address.
pub fn root_contract(config: &RootConfig) -> Result<Deployable, LayoutError> {
    Deployable::new(root_code()?, config.to_storage_cell()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tycho_types::cell::HashBytes;

    #[test]
    fn codes_decode_and_attach() {
        let p = with_child_codes(CocoonParams::default()).unwrap();
        for c in [&p.proxy_code, &p.worker_code, &p.client_code] {
            assert!(c.is_some());
        }
        assert_ne!(p.proxy_code, p.worker_code);
        let owner = StdAddr::new(0, HashBytes([7; 32]));
        let a = root_contract(&initial_root_config(owner.clone(), p.clone())).unwrap();
        let b = root_contract(&initial_root_config(owner, p.clone())).unwrap();
        assert_eq!(a.address, b.address, "deterministic");
        let other = StdAddr::new(0, HashBytes([8; 32]));
        let c = root_contract(&initial_root_config(other, p)).unwrap();
        assert_ne!(a.address, c.address);
    }
}
