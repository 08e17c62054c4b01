//! Deploys Cocoon's root contract when the devnet starts.
//!
//! Every Cocoon role starts from the root contract (prices, delays, stakes, the child contract
//! codes, registered proxies), so a devnet is only useful with one in place. The compiled
//! codes from `contracts/build/` are embedded in `cocoon-ton` ([`cocoon_ton::code`]), so the
//! `cocoon` binary needs no files next to it.
//!
//! The root is owned by a standard wallet v4r2 whose key is fresh per state directory:
//! `<dir>/root-owner.key` (64 hex digits, mode 0600; `cocoon-ton`'s key format). The owner
//! wallet is funded with [`OWNER_FUNDS`] from the faucet (it deploys itself with its first
//! outgoing message, as wallets do), so owner operations (registering a proxy, whitelisting
//! hashes, changing prices) work out of the box. The root itself is deployed through a real
//! internal message carrying its state init and [`ROOT_FUNDS`].
//!
//! The default test configuration ([`test_params`]) is `cocoon-ton`'s `CocoonParams::default()`
//! with every child code attached: `is_test = true`, 20 nanoton per token for clients,
//! 16 of them for the worker, all price multipliers ×1 (10000), proxy close delay 600 s,
//! client close delay 300 s, minimum proxy and client stakes 1 TON, `params_version` 1,
//! `unique_id` 0. Restarting with the same directory reuses the key, so the root address is
//! the same and it is not deployed twice.

use std::path::{Path, PathBuf};

use cocoon_ton::keys::SigningKey;
use cocoon_ton::root::{CocoonParams, RootConfig};
use cocoon_ton::wallet::Wallet;
use tycho_types::models::StdAddr;

use crate::chain::{AccountStatus, Devnet, DevnetError};

/// The compiled contract codes live in `cocoon-ton` (production tools deploy roots too);
/// re-exported for the devnet's callers.
pub use cocoon_ton::code::{CLIENT_CODE, PROXY_CODE, ROOT_CODE, WORKER_CODE};

/// What the root is deployed with (nanoton).
pub const ROOT_FUNDS: u128 = 10_000_000_000;
/// What the owner wallet is funded with (nanoton).
pub const OWNER_FUNDS: u128 = 1_000_000_000_000;
/// Key file name inside the state directory.
pub const OWNER_KEY_FILE: &str = "root-owner.key";

/// The deployed root.
#[derive(Debug, Clone)]
pub struct RootDeployment {
    /// Root contract address.
    pub address: StdAddr,
    /// Owner wallet (v4r2) address.
    pub owner: StdAddr,
    /// Owner key file.
    pub owner_key_path: PathBuf,
    /// Whether this start deployed it (false when it was already on the chain).
    pub deployed_now: bool,
}

/// Errors while deploying the root.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootError {
    /// A chain operation failed.
    #[error(transparent)]
    Chain(#[from] DevnetError),
    /// The owner key could not be read or written.
    #[error("root owner key: {0}")]
    Key(String),
    /// The root storage could not be built.
    #[error("root storage: {0}")]
    Layout(String),
}

fn layout(e: cocoon_ton::codec::LayoutError) -> RootError {
    RootError::Layout(format!("embedded code BOC: {e}"))
}

/// The default test parameters, with all three child codes.
pub fn test_params() -> Result<CocoonParams, RootError> {
    cocoon_ton::code::with_child_codes(CocoonParams {
        is_test: true,
        ..CocoonParams::default()
    })
    .map_err(layout)
}

/// The root's initial configuration for `owner`.
pub fn initial_config(owner: StdAddr) -> Result<RootConfig, RootError> {
    Ok(cocoon_ton::code::initial_root_config(owner, test_params()?))
}

/// Loads `<key_dir>/root-owner.key`, or creates it (mode 0600), and makes sure the owner
/// wallet is funded and the root deployed. Idempotent for a persistent chain.
pub fn ensure_root(chain: &mut Devnet, key_dir: &Path) -> Result<RootDeployment, RootError> {
    let key_path = key_dir.join(OWNER_KEY_FILE);
    let key = if key_path.exists() {
        SigningKey::from_file(&key_path).map_err(|e| RootError::Key(e.to_string()))?
    } else {
        std::fs::create_dir_all(key_dir).map_err(|e| RootError::Key(e.to_string()))?;
        let key = SigningKey::generate().map_err(|e| RootError::Key(e.to_string()))?;
        key.write_new_file(&key_path)
            .map_err(|e| RootError::Key(e.to_string()))?;
        key
    };
    let owner = Wallet::v4r2(key.public_key(), 0)
        .address()
        .map_err(|e| RootError::Layout(e.to_string()))?;
    let config = initial_config(owner.clone())?;
    let data = config
        .to_storage_cell()
        .map_err(|e| RootError::Layout(e.to_string()))?;
    let root_code = cocoon_ton::code::root_code().map_err(layout)?;
    let expected = StdAddr::new(
        0,
        *cocoon_ton::contracts::state_init(&root_code, &data)
            .map_err(|e| RootError::Layout(e.to_string()))?
            .repr_hash(),
    );
    let already = chain.account(&expected)?.status == AccountStatus::Active;
    if !already {
        if chain.account(&owner)?.balance == 0 {
            chain.faucet(&owner, OWNER_FUNDS)?;
        }
        let (address, txs) = chain.deploy(root_code, data, ROOT_FUNDS)?;
        if address != expected {
            return Err(RootError::Layout(format!(
                "deployed at {address}, expected {expected}"
            )));
        }
        if let Some(tx) = txs.first().filter(|t| t.failed()) {
            return Err(RootError::Layout(format!(
                "root deployment failed: exit code {:?}, action result {:?}",
                tx.exit_code, tx.action_result_code
            )));
        }
    }
    Ok(RootDeployment {
        address: expected,
        owner,
        owner_key_path: key_path,
        deployed_now: !already,
    })
}
