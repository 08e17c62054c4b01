//! The root contract: deployment and owner operations.
//!
//! An owner operation is an internal message from the owner's wallet. It is refused before
//! anything is sent when the wallet is not the owner or the arguments would make the root
//! throw; otherwise the root's transaction for it is checked and the root read again: every
//! accepted change bumps its `version`.

use tycho_types::cell::{Cell, HashBytes};
use tycho_types::models::StdAddr;

use super::{OpsError, WalletOps};
use crate::chain::{AccountStatus, Chain, load_root_config};
use crate::code;
use crate::codec::{Coins, Layout, LayoutError};
use crate::messages::{
    AddModelType, AddProxyType, AddWorkerType, ChangeMultipliers, ChangeOwner, ChangeParams,
    ChangePrice, DelModelType, DelProxyType, DelWorkerType, ProxyEndpoint, RegisterProxy,
    UnregisterProxy, UpdateProxy, UpgradeContracts, UpgradeRoot,
};
use crate::root::{CocoonParams, RootConfig};
use crate::wallet::OutMsg;

/// An owner operation on the root contract.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RootOp {
    /// Whitelist a worker image hash.
    AddWorkerImage(HashBytes),
    /// Remove a worker image hash.
    DelWorkerImage(HashBytes),
    /// Whitelist a proxy image hash.
    AddProxyImage(HashBytes),
    /// Remove a proxy image hash.
    DelProxyImage(HashBytes),
    /// Whitelist a model hash ([`crate::root::model_hash`] of a model id).
    AddModel(HashBytes),
    /// Remove a model hash.
    DelModel(HashBytes),
    /// Register a proxy endpoint (`"ip:port"` or `"ip_workers:port ip_clients:port"`).
    RegisterProxy(ProxyEndpoint),
    /// Replace the endpoint of the registered proxy with this seqno.
    UpdateProxy {
        /// Seqno the root assigned.
        seqno: u32,
        /// The new endpoint.
        endpoint: ProxyEndpoint,
    },
    /// Unregister the proxy with this seqno.
    UnregisterProxy(u32),
    /// Change the price and the worker fee per token (bumps `params_version`).
    SetPrice {
        /// Client price per adjusted token, nanoTON.
        price_per_token: u64,
        /// Worker fee per adjusted token, nanoTON (at most the price).
        worker_fee_per_token: u64,
    },
    /// Change prices, close delays and minimum stakes (bumps `params_version`).
    SetParams {
        /// Client price per adjusted token, nanoTON.
        price_per_token: u64,
        /// Worker fee per adjusted token, nanoTON (at most the price).
        worker_fee_per_token: u64,
        /// Seconds a proxy contract waits between close request and close.
        proxy_delay_before_close: u32,
        /// Seconds a client contract waits between refund request and forced refund.
        client_delay_before_close: u32,
        /// Minimum proxy stake, nanoTON.
        min_proxy_stake: u64,
        /// Minimum client stake, nanoTON.
        min_client_stake: u64,
    },
    /// Change the four price multipliers, ten-thousandths (bumps `params_version`).
    SetMultipliers {
        /// Prompt tokens.
        prompt: u32,
        /// Cached prompt tokens.
        cached: u32,
        /// Completion tokens.
        completion: u32,
        /// Reasoning tokens.
        reasoning: u32,
    },
    /// Hand the root to another owner (the root's `version` moves, `params_version` does
    /// not); from then on only the new owner's wallet may change it.
    ChangeOwner(StdAddr),
    /// Replace the code of the child contracts deployed from now on (bumps
    /// `params_version`, so every proxy, client and worker contract address changes; the
    /// contracts already deployed keep their code).
    UpgradeContracts {
        /// Proxy contract code.
        proxy_code: Cell,
        /// Worker contract code.
        worker_code: Cell,
        /// Client contract code.
        client_code: Cell,
    },
    /// Replace the root's own code (it runs from the next message on; the storage stays).
    UpgradeRoot(Cell),
}

impl RootOp {
    /// A short name for messages, as the `cocoon root` subcommand calls it.
    pub fn name(&self) -> &'static str {
        match self {
            RootOp::AddWorkerImage(_) | RootOp::AddProxyImage(_) => "add-image",
            RootOp::DelWorkerImage(_) | RootOp::DelProxyImage(_) => "del-image",
            RootOp::AddModel(_) => "add-model",
            RootOp::DelModel(_) => "del-model",
            RootOp::RegisterProxy(_) => "add-proxy",
            RootOp::UpdateProxy { .. } => "update-proxy",
            RootOp::UnregisterProxy(_) => "del-proxy",
            RootOp::SetPrice { .. } => "set-price",
            RootOp::SetParams { .. } => "set-params",
            RootOp::SetMultipliers { .. } => "set-multipliers",
            RootOp::ChangeOwner(_) => "change-owner",
            RootOp::UpgradeContracts { .. } => "upgrade-contracts",
            RootOp::UpgradeRoot(_) => "upgrade-root",
        }
    }

    /// Refuses what the root would throw on: a fee above the price, an endpoint the
    /// runners cannot parse.
    pub fn check(&self) -> Result<(), OpsError> {
        let fee = |price: u64, worker_fee: u64| {
            if worker_fee > price {
                return Err(OpsError::FeeAbovePrice { price, worker_fee });
            }
            Ok(())
        };
        match self {
            RootOp::RegisterProxy(e) | RootOp::UpdateProxy { endpoint: e, .. } => {
                if e.socket_addrs().is_none() {
                    return Err(OpsError::BadEndpoint(e.0.clone()));
                }
                Ok(())
            }
            RootOp::SetPrice {
                price_per_token,
                worker_fee_per_token,
            }
            | RootOp::SetParams {
                price_per_token,
                worker_fee_per_token,
                ..
            } => fee(*price_per_token, *worker_fee_per_token),
            _ => Ok(()),
        }
    }

    /// The message body with `query_id`.
    pub fn body(&self, query_id: u64) -> Result<Cell, LayoutError> {
        match self.clone() {
            RootOp::AddWorkerImage(hash) => AddWorkerType { query_id, hash }.to_cell(),
            RootOp::DelWorkerImage(hash) => DelWorkerType { query_id, hash }.to_cell(),
            RootOp::AddProxyImage(hash) => AddProxyType { query_id, hash }.to_cell(),
            RootOp::DelProxyImage(hash) => DelProxyType { query_id, hash }.to_cell(),
            RootOp::AddModel(hash) => AddModelType { query_id, hash }.to_cell(),
            RootOp::DelModel(hash) => DelModelType { query_id, hash }.to_cell(),
            RootOp::RegisterProxy(endpoint) => RegisterProxy { query_id, endpoint }.to_cell(),
            RootOp::UpdateProxy { seqno, endpoint } => UpdateProxy {
                query_id,
                seqno,
                endpoint,
            }
            .to_cell(),
            RootOp::UnregisterProxy(seqno) => UnregisterProxy { query_id, seqno }.to_cell(),
            RootOp::SetPrice {
                price_per_token,
                worker_fee_per_token,
            } => ChangePrice {
                query_id,
                price_per_token: Coins(price_per_token),
                worker_fee_per_token: Coins(worker_fee_per_token),
            }
            .to_cell(),
            RootOp::SetParams {
                price_per_token,
                worker_fee_per_token,
                proxy_delay_before_close,
                client_delay_before_close,
                min_proxy_stake,
                min_client_stake,
            } => ChangeParams {
                query_id,
                price_per_token: Coins(price_per_token),
                worker_fee_per_token: Coins(worker_fee_per_token),
                proxy_delay_before_close,
                client_delay_before_close,
                min_proxy_stake: Coins(min_proxy_stake),
                min_client_stake: Coins(min_client_stake),
            }
            .to_cell(),
            RootOp::SetMultipliers {
                prompt,
                cached,
                completion,
                reasoning,
            } => ChangeMultipliers {
                query_id,
                prompt,
                cached,
                completion,
                reasoning,
            }
            .to_cell(),
            RootOp::ChangeOwner(new_owner) => ChangeOwner {
                query_id,
                new_owner,
            }
            .to_cell(),
            RootOp::UpgradeContracts {
                proxy_code,
                worker_code,
                client_code,
            } => UpgradeContracts {
                query_id,
                proxy_code,
                worker_code,
                client_code,
            }
            .to_cell(),
            RootOp::UpgradeRoot(new_code) => UpgradeRoot { query_id, new_code }.to_cell(),
        }
    }

    /// Whether `after` (and the root's code hash `code_hash`, read with it) shows this
    /// operation's effect beyond the version bump every accepted operation makes, for the
    /// upgrades; says what is missing otherwise.
    fn applied(&self, after: &RootConfig, code_hash: Option<HashBytes>) -> Result<(), String> {
        let hash = |c: &Option<Cell>| c.as_ref().map(|c| *c.repr_hash());
        match self {
            RootOp::UpgradeContracts {
                proxy_code,
                worker_code,
                client_code,
            } => {
                let p = &after.params;
                let want = [proxy_code, worker_code, client_code].map(|c| Some(*c.repr_hash()));
                let got = [
                    hash(&p.proxy_code),
                    hash(&p.worker_code),
                    hash(&p.client_code),
                ];
                (got == want)
                    .then_some(())
                    .ok_or_else(|| "the root's child code hashes are not the new ones".to_owned())
            }
            RootOp::UpgradeRoot(code) => (code_hash == Some(*code.repr_hash()))
                .then_some(())
                .ok_or_else(|| "the root's code hash is not the new code's".to_owned()),
            _ => Ok(()),
        }
    }
}

/// A change of the root's params for [`change_params`]: every field left `None` keeps the
/// root's current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamsChange {
    /// Client price per adjusted token, nanoTON.
    pub price_per_token: Option<u64>,
    /// Worker fee per adjusted token, nanoTON (at most the price).
    pub worker_fee_per_token: Option<u64>,
    /// Seconds a proxy contract waits between its close request and its close.
    pub proxy_delay_before_close: Option<u32>,
    /// Seconds a client contract waits between its refund request and the forced refund.
    pub client_delay_before_close: Option<u32>,
    /// Minimum proxy stake, nanoTON.
    pub min_proxy_stake: Option<u64>,
    /// Minimum client stake, nanoTON.
    pub min_client_stake: Option<u64>,
    /// Prompt tokens' price multiplier, ten-thousandths.
    pub prompt_multiplier: Option<u32>,
    /// Cached prompt tokens' multiplier.
    pub cached_multiplier: Option<u32>,
    /// Completion tokens' multiplier.
    pub completion_multiplier: Option<u32>,
    /// Reasoning tokens' multiplier.
    pub reasoning_multiplier: Option<u32>,
}

impl ParamsChange {
    /// The owner operations that take `current` to the changed params: `set-params` when a
    /// price, delay or stake differs, `set-multipliers` when a multiplier does; none when
    /// every value given is already the current one (each operation bumps
    /// `params_version`, which moves every proxy, client and worker contract, so nothing is
    /// sent for nothing).
    pub fn ops(&self, current: &CocoonParams) -> Vec<RootOp> {
        let c = current;
        let params = RootOp::SetParams {
            price_per_token: self.price_per_token.unwrap_or(c.price_per_token),
            worker_fee_per_token: self.worker_fee_per_token.unwrap_or(c.worker_fee_per_token),
            proxy_delay_before_close: self
                .proxy_delay_before_close
                .unwrap_or(c.proxy_delay_before_close),
            client_delay_before_close: self
                .client_delay_before_close
                .unwrap_or(c.client_delay_before_close),
            min_proxy_stake: self.min_proxy_stake.unwrap_or(c.min_proxy_stake),
            min_client_stake: self.min_client_stake.unwrap_or(c.min_client_stake),
        };
        let unchanged = RootOp::SetParams {
            price_per_token: c.price_per_token,
            worker_fee_per_token: c.worker_fee_per_token,
            proxy_delay_before_close: c.proxy_delay_before_close,
            client_delay_before_close: c.client_delay_before_close,
            min_proxy_stake: c.min_proxy_stake,
            min_client_stake: c.min_client_stake,
        };
        let mults = RootOp::SetMultipliers {
            prompt: self
                .prompt_multiplier
                .unwrap_or(c.prompt_tokens_price_multiplier),
            cached: self
                .cached_multiplier
                .unwrap_or(c.cached_tokens_price_multiplier),
            completion: self
                .completion_multiplier
                .unwrap_or(c.completion_tokens_price_multiplier),
            reasoning: self
                .reasoning_multiplier
                .unwrap_or(c.reasoning_tokens_price_multiplier),
        };
        let same_mults = RootOp::SetMultipliers {
            prompt: c.prompt_tokens_price_multiplier,
            cached: c.cached_tokens_price_multiplier,
            completion: c.completion_tokens_price_multiplier,
            reasoning: c.reasoning_tokens_price_multiplier,
        };
        let mut out = Vec::new();
        if params != unchanged {
            out.push(params);
        }
        if mults != same_mults {
            out.push(mults);
        }
        out
    }
}

/// Changes the root's params as `change` says (see [`ParamsChange::ops`]) from `ops`'s
/// wallet, the root's owner, attaching `value` nanoTON per operation; returns each
/// operation's change, none when nothing differs. Everything is checked before the first
/// message goes out (owner, fee above price), and the params read back at the end must be
/// the ones asked for ([`OpsError::NotApplied`] otherwise).
pub async fn change_params<C: Chain>(
    ops: &mut WalletOps<C>,
    root: &StdAddr,
    change: &ParamsChange,
    value: u64,
) -> Result<Vec<RootChange>, OpsError> {
    let before = owned_root(ops, root).await?;
    let todo = change.ops(&before.params);
    for op in &todo {
        op.check()?;
    }
    let mut done = Vec::new();
    for op in &todo {
        done.push(root_op(ops, root, op, value).await?);
    }
    if let Some(last) = done.last()
        && !change.ops(&last.config.params).is_empty()
    {
        return Err(OpsError::NotApplied(format!(
            "the root accepted the change but its params differ from the ones asked for (params_version {})",
            last.config.params.params_version
        )));
    }
    Ok(done)
}

/// Hands `root` to `new_owner` from `ops`'s wallet, its current owner, and checks that the
/// root names the new owner afterwards.
pub async fn change_owner<C: Chain>(
    ops: &mut WalletOps<C>,
    root: &StdAddr,
    new_owner: &StdAddr,
    value: u64,
) -> Result<RootChange, OpsError> {
    let change = root_op(ops, root, &RootOp::ChangeOwner(new_owner.clone()), value).await?;
    if change.config.owner != *new_owner {
        return Err(OpsError::NotApplied(format!(
            "the root accepted the change of owner but names {} instead of {new_owner}",
            change.config.owner
        )));
    }
    Ok(change)
}

/// New code for [`upgrade`]: every field left `None` keeps what the root has now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodeUpgrade {
    /// The root's own code.
    pub root: Option<Cell>,
    /// Proxy contract code.
    pub proxy: Option<Cell>,
    /// Worker contract code.
    pub worker: Option<Cell>,
    /// Client contract code.
    pub client: Option<Cell>,
}

impl CodeUpgrade {
    /// This build's compiled code for all four contracts (`contracts/build/`).
    pub fn embedded() -> Result<Self, LayoutError> {
        let children = code::with_child_codes(CocoonParams::default())?;
        Ok(CodeUpgrade {
            root: Some(code::root_code()?),
            proxy: children.proxy_code,
            worker: children.worker_code,
            client: children.client_code,
        })
    }

    /// The owner operations that take a root with child codes from `current` and its own
    /// code hash `root_code` there: `upgrade-contracts` (all three codes, the ones not given
    /// kept) when a child code differs, then `upgrade-root` when the root code differs; none
    /// when nothing does (`upgrade-contracts` bumps `params_version`, which moves every
    /// proxy, client and worker contract, so nothing is sent for nothing).
    pub fn ops(
        &self,
        current: &CocoonParams,
        root_code: Option<HashBytes>,
    ) -> Result<Vec<RootOp>, OpsError> {
        let hash = |c: &Option<Cell>| c.as_ref().map(|c| *c.repr_hash());
        let mut out = Vec::new();
        let pick = |new: &Option<Cell>, old: &Option<Cell>, what: &'static str| {
            new.clone()
                .or_else(|| old.clone())
                .ok_or(OpsError::NoChildCode(what))
        };
        let children = [
            (&self.proxy, &current.proxy_code),
            (&self.worker, &current.worker_code),
            (&self.client, &current.client_code),
        ];
        if children
            .iter()
            .any(|(new, old)| new.is_some() && hash(new) != hash(old))
        {
            out.push(RootOp::UpgradeContracts {
                proxy_code: pick(&self.proxy, &current.proxy_code, "proxy")?,
                worker_code: pick(&self.worker, &current.worker_code, "worker")?,
                client_code: pick(&self.client, &current.client_code, "client")?,
            });
        }
        if let Some(c) = &self.root
            && Some(*c.repr_hash()) != root_code
        {
            out.push(RootOp::UpgradeRoot(c.clone()));
        }
        Ok(out)
    }
}

/// Upgrades `root`'s code as `change` says (see [`CodeUpgrade::ops`]) from `ops`'s wallet,
/// the root's owner, attaching `value` nanoTON per operation; returns each operation's
/// change (none when every code given is already the root's). Child codes go first: a new
/// root code could read the next message differently.
pub async fn upgrade<C: Chain>(
    ops: &mut WalletOps<C>,
    root: &StdAddr,
    change: &CodeUpgrade,
    value: u64,
) -> Result<Vec<RootChange>, OpsError> {
    let before = owned_root(ops, root).await?;
    let code = ops
        .chain()
        .account_state(root)
        .await?
        .code
        .map(|c| *c.repr_hash());
    let mut done = Vec::new();
    for op in change.ops(&before.params, code)? {
        done.push(root_op(ops, root, &op, value).await?);
    }
    Ok(done)
}

/// A root that [`deploy_root`] put on the chain.
#[derive(Debug, Clone)]
pub struct DeployedRoot {
    /// Its address.
    pub address: StdAddr,
    /// Its configuration as read back from the chain.
    pub config: RootConfig,
}

/// What an accepted owner operation changed.
#[derive(Debug, Clone)]
pub struct RootChange {
    /// The root's version before the operation.
    pub version_before: u32,
    /// The configuration after it (its `version` is higher).
    pub config: RootConfig,
}

/// Deploys a root owned by `ops`'s wallet with `params` (the embedded child codes filling
/// in any that are missing), attaching `value` nanoTON for its balance. The same owner and
/// params give the same address, so a second deployment is [`OpsError::AlreadyDeployed`].
pub async fn deploy_root<C: Chain>(
    ops: &mut WalletOps<C>,
    params: CocoonParams,
    value: u64,
) -> Result<DeployedRoot, OpsError> {
    if params.worker_fee_per_token > params.price_per_token {
        return Err(OpsError::FeeAbovePrice {
            price: params.price_per_token,
            worker_fee: params.worker_fee_per_token,
        });
    }
    let codes = code::with_child_codes(CocoonParams::default())?;
    let params = CocoonParams {
        proxy_code: params.proxy_code.or(codes.proxy_code),
        worker_code: params.worker_code.or(codes.worker_code),
        client_code: params.client_code.or(codes.client_code),
        ..params
    };
    let config = code::initial_root_config(ops.address().clone(), params);
    let root = code::root_contract(&config)?;
    let address = root.address.clone();
    if ops.chain().account_state(&address).await?.status == AccountStatus::Active {
        return Err(OpsError::AlreadyDeployed(address));
    }
    let msg = OutMsg::deploy(address.clone(), value, root.state_init()?, None);
    ops.send_checked(msg, "root deployment").await?;
    let got = ops
        .settle(|| async { Ok(load_root_config(ops.chain(), &address).await.ok()) })
        .await?;
    match got {
        Some(config) => Ok(DeployedRoot { address, config }),
        None => Err(OpsError::NotApplied(format!(
            "the deployment of {address} was sent but the root is not active"
        ))),
    }
}

/// `root`'s configuration, when `ops`'s wallet owns it ([`OpsError::NotOwner`] otherwise).
async fn owned_root<C: Chain>(ops: &WalletOps<C>, root: &StdAddr) -> Result<RootConfig, OpsError> {
    let c = load_root_config(ops.chain(), root).await?;
    if c.owner != *ops.address() {
        return Err(OpsError::NotOwner {
            wallet: ops.address().clone(),
            owner: c.owner,
        });
    }
    Ok(c)
}

/// Sends the owner operation `op` to `root` from `ops`'s wallet with `value` nanoTON for
/// gas (the excess comes back) and waits until the root's version moved.
pub async fn root_op<C: Chain>(
    ops: &mut WalletOps<C>,
    root: &StdAddr,
    op: &RootOp,
    value: u64,
) -> Result<RootChange, OpsError> {
    op.check()?;
    let before = owned_root(ops, root).await?;
    let body = op.body(ops.query_id())?;
    ops.send_checked(OutMsg::new(root.clone(), value, Some(body)), op.name())
        .await?;
    let after = ops
        .settle(|| async {
            let c = load_root_config(ops.chain(), root).await?;
            Ok((c.version > before.version).then_some(c))
        })
        .await?;
    let Some(config) = after else {
        return Err(OpsError::NotApplied(
            "the root did not accept the operation (version unchanged)".into(),
        ));
    };
    let code_hash = match op {
        RootOp::UpgradeRoot(_) => ops
            .chain()
            .account_state(root)
            .await?
            .code
            .map(|c| *c.repr_hash()),
        _ => None,
    };
    op.applied(&config, code_hash).map_err(|e| {
        OpsError::NotApplied(format!(
            "the root took the {} (version {} -> {}) but {e}",
            op.name(),
            before.version,
            config.version
        ))
    })?;
    Ok(RootChange {
        version_before: before.version,
        config,
    })
}
