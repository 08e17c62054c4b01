//! Whether a root configuration allows a proxy: pure checks of what the proxy proved
//! (its attested image hash) and claimed (its contract) against the root contract.
//!
//! The client makes the same checks (`cocoon-client`, `proxy.rs`). A proxy's contract is a
//! child of the root: its address follows from the root's params (the proxy code), the
//! proxy's owner and public key and the root's address. A proxy that names any other
//! address would make the worker derive a worker contract the root does not know, and sign
//! receipts nobody can cash.

use cocoon_ton::root::RootConfig;
use cocoon_ton::{HashBytes, StdAddr};

/// What a session learned about its proxy, re-checked against every root configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProxyFacts {
    /// The image hash from the proxy's verified attestation.
    pub image_hash: [u8; 32],
    /// The owner the proxy named in the handshake.
    pub owner: StdAddr,
    /// The signing key the proxy named in the handshake.
    pub key: [u8; 32],
    /// The contract the proxy named in the handshake.
    pub proxy_sc: StdAddr,
}

/// Why a root configuration does not allow a proxy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProxyRefusal {
    /// The attested image is not one the root lists for proxies.
    #[error(
        "the proxy's image hash {image} is not in the root configuration's proxy_hashes ({allowed} allowed)"
    )]
    ImageNotAllowed {
        /// The proxy's image hash (hex).
        image: String,
        /// How many proxy images the root allows.
        allowed: usize,
    },
    /// The proxy named a contract its owner, key and the root do not give.
    #[error(
        "the proxy says its contract is {claimed}, its owner and key under the root give {derived}"
    )]
    ContractMismatch {
        /// What the proxy said.
        claimed: String,
        /// What the root's params give.
        derived: String,
    },
    /// The root's params cannot derive a proxy contract (no proxy code): fail closed.
    #[error("cannot derive the proxy contract from the root configuration: {0}")]
    CannotDerive(String),
}

/// The proxy's attested image must be in the root's `proxy_hashes` (when `check` is on).
pub(crate) fn image_allowed(
    root: &RootConfig,
    check: bool,
    image_hash: &[u8; 32],
) -> Result<(), ProxyRefusal> {
    if check && !root.proxy_hashes.iter().any(|h| h.0 == *image_hash) {
        return Err(ProxyRefusal::ImageNotAllowed {
            image: hex::encode(image_hash),
            allowed: root.proxy_hashes.len(),
        });
    }
    Ok(())
}

/// The contract the proxy claims must be the one derived from the root's params, the
/// proxy's owner and key and the root's address.
pub(crate) fn contract_derived(
    root: &RootConfig,
    root_address: &StdAddr,
    owner: &StdAddr,
    key: &[u8; 32],
    claimed: &StdAddr,
) -> Result<(), ProxyRefusal> {
    let derived =
        cocoon_ton::contracts::proxy_contract(&root.params, owner, &HashBytes(*key), root_address)
            .map_err(|e| ProxyRefusal::CannotDerive(e.to_string()))?
            .address;
    if derived != *claimed {
        return Err(ProxyRefusal::ContractMismatch {
            claimed: claimed.to_string(),
            derived: derived.to_string(),
        });
    }
    Ok(())
}

/// Both checks, as a session re-runs them on a root update (`root_address`: the root the
/// worker follows, if any).
pub(crate) fn allowed(
    root: &RootConfig,
    root_address: Option<&StdAddr>,
    check_image: bool,
    p: &ProxyFacts,
) -> Result<(), ProxyRefusal> {
    image_allowed(root, check_image, &p.image_hash)?;
    if let Some(r) = root_address {
        contract_derived(root, r, &p.owner, &p.key, &p.proxy_sc)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_ton::root::CocoonParams;

    fn addr(n: u8) -> StdAddr {
        StdAddr::new(0, HashBytes([n; 32]))
    }

    fn root(images: &[[u8; 32]], with_code: bool) -> RootConfig {
        let mut code = cocoon_ton::CellBuilder::new();
        code.store_u32(0xC0C0_0003).unwrap();
        RootConfig {
            owner: addr(1),
            version: 1,
            proxy_hashes: images.iter().map(|h| HashBytes(*h)).collect(),
            registered_proxies: vec![],
            last_proxy_seqno: 0,
            worker_hashes: vec![],
            model_hashes: vec![],
            params: CocoonParams {
                proxy_code: with_code.then(|| code.build().unwrap()),
                ..CocoonParams::default()
            },
        }
    }

    fn facts(r: &RootConfig, root_address: &StdAddr) -> ProxyFacts {
        let key = [5; 32];
        let owner = addr(3);
        let proxy_sc =
            cocoon_ton::contracts::proxy_contract(&r.params, &owner, &HashBytes(key), root_address)
                .unwrap()
                .address;
        ProxyFacts {
            image_hash: [9; 32],
            owner,
            key,
            proxy_sc,
        }
    }

    #[test]
    fn images_must_be_listed_when_checked() {
        let r = root(&[[9; 32]], true);
        assert!(image_allowed(&r, true, &[9; 32]).is_ok());
        let e = image_allowed(&r, true, &[8; 32]).unwrap_err();
        assert_eq!(
            e,
            ProxyRefusal::ImageNotAllowed {
                image: hex::encode([8; 32]),
                allowed: 1
            }
        );
        // An empty list allows nothing; the check switched off allows anything.
        assert!(image_allowed(&root(&[], true), true, &[9; 32]).is_err());
        assert!(image_allowed(&root(&[], true), false, &[9; 32]).is_ok());
    }

    #[test]
    fn contracts_must_derive_from_the_root() {
        let r = root(&[[9; 32]], true);
        let root_address = addr(0x77);
        let p = facts(&r, &root_address);
        assert!(allowed(&r, Some(&root_address), true, &p).is_ok());
        // Another root, another owner, another key or another claim: refused.
        assert!(matches!(
            allowed(&r, Some(&addr(0x78)), true, &p),
            Err(ProxyRefusal::ContractMismatch { .. })
        ));
        for change in [
            |p: &mut ProxyFacts| p.owner = addr(4),
            |p: &mut ProxyFacts| p.key = [6; 32],
            |p: &mut ProxyFacts| p.proxy_sc = addr(0x11),
        ] {
            let mut q = p.clone();
            change(&mut q);
            assert!(matches!(
                allowed(&r, Some(&root_address), true, &q),
                Err(ProxyRefusal::ContractMismatch { .. })
            ));
        }
        // Without a root address only the image is checked (the proxy's word is taken for
        // its contract).
        let mut q = p.clone();
        q.proxy_sc = addr(0x11);
        assert!(allowed(&r, None, true, &q).is_ok());
        // A root without proxy code cannot vouch for any proxy contract: refused.
        assert!(matches!(
            allowed(&root(&[[9; 32]], false), Some(&root_address), true, &p),
            Err(ProxyRefusal::CannotDerive(_))
        ));
        // A removed image is refused whatever the contract.
        assert!(matches!(
            allowed(&root(&[[1; 32]], true), Some(&root_address), true, &p),
            Err(ProxyRefusal::ImageNotAllowed { .. })
        ));
    }
}
