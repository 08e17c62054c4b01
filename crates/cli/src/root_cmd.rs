//! `cocoon root`: read the network configuration from the root contract and, as its owner,
//! change it (image and model whitelists, registered proxies, prices, params, owner).
//!
//! Owner operations are `cocoon_ton::ops` functions: the body goes out through the owner's
//! wallet, the root's transaction for it is checked, and the root is read again to report
//! how its `version` moved (the root bumps it on every accepted change), so a refused
//! operation is reported as an error.

use clap::{Args, Subcommand, ValueEnum};
use cocoon_ton::chain::load_root_config;
use cocoon_ton::messages::ProxyEndpoint;
use cocoon_ton::ops::{self, RootOp, WalletOps};
use cocoon_ton::root::{CocoonParams, RootConfig, model_hash};
use cocoon_ton::{
    Cell, HashBytes, StdAddr, format_ton, friendly_address, parse_address, parse_ton,
};
use cocoon_ton::{Toncenter, chain::Devnet};

use crate::wallet_cmd::{ChainOpts, WalletOpts, runtime};

/// Which image whitelist.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ImageKind {
    /// Worker image hashes.
    Worker,
    /// Proxy image hashes.
    Proxy,
}

/// Options shared by owner operations.
#[derive(Debug, Args)]
pub(crate) struct OwnerOpts {
    #[command(flatten)]
    wallet: WalletOpts,
    /// Root contract address (default: the devnet's, from /_devnet/info).
    #[arg(long)]
    root: Option<String>,
    /// TON attached for gas (the excess comes back).
    #[arg(long, default_value = "0.1")]
    value: String,
    /// Seconds to wait for confirmation.
    #[arg(long, default_value_t = 60)]
    wait: u64,
    #[command(flatten)]
    chain: ChainOpts,
}

/// `cocoon root deploy`'s options.
#[derive(Debug, Args)]
pub(crate) struct DeployArgs {
    #[command(flatten)]
    wallet: WalletOpts,
    /// A production network (is_test = false: sim attestation is refused everywhere).
    #[arg(long)]
    production: bool,
    /// Client price per adjusted token, nanoTON.
    #[arg(long, default_value_t = 20)]
    price: u64,
    /// Worker fee per adjusted token, nanoTON (at most the price).
    #[arg(long, default_value_t = 16)]
    worker_fee: u64,
    /// Network id that separates this network's contracts from others with equal params.
    #[arg(long, default_value_t = 0)]
    unique_id: u32,
    /// Seconds a proxy contract waits between close request and close.
    #[arg(long, default_value_t = 600)]
    proxy_delay: u32,
    /// Seconds a client contract waits between refund request and forced refund.
    #[arg(long, default_value_t = 300)]
    client_delay: u32,
    /// TON sent with the deployment (the root's balance for storage and gas).
    #[arg(long, default_value = "1")]
    value: String,
    /// Seconds to wait for confirmation.
    #[arg(long, default_value_t = 60)]
    wait: u64,
    #[command(flatten)]
    chain: ChainOpts,
}

/// `cocoon root` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum RootCommand {
    /// Deploy a new root contract owned by this wallet, with Cocoon's contract code and the
    /// given prices (the devnet deploys its own root on start; use this for other chains).
    Deploy(DeployArgs),
    /// Print the root configuration.
    Show {
        /// Root contract address (default: the devnet's).
        #[arg(long)]
        root: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        chain: ChainOpts,
    },
    /// Whitelist a worker or proxy image hash (64 hex digits).
    AddImage {
        /// worker or proxy.
        #[arg(long, value_enum, default_value = "worker")]
        kind: ImageKind,
        /// Image hash.
        hash: String,
        #[command(flatten)]
        owner: OwnerOpts,
    },
    /// Remove a worker or proxy image hash.
    DelImage {
        /// worker or proxy.
        #[arg(long, value_enum, default_value = "worker")]
        kind: ImageKind,
        /// Image hash.
        hash: String,
        #[command(flatten)]
        owner: OwnerOpts,
    },
    /// Whitelist a model: a full model id (`Name@rev:hash`, hashed with SHA-256) or a hash.
    AddModel {
        /// Model id or 64-hex-digit hash.
        model: String,
        #[command(flatten)]
        owner: OwnerOpts,
    },
    /// Remove a model.
    DelModel {
        /// Model id or 64-hex-digit hash.
        model: String,
        #[command(flatten)]
        owner: OwnerOpts,
    },
    /// Register a proxy endpoint: "ip:port" or "ip_workers:port ip_clients:port".
    AddProxy {
        /// Endpoint text.
        endpoint: String,
        #[command(flatten)]
        owner: OwnerOpts,
    },
    /// Unregister the proxy with this seqno.
    DelProxy {
        /// Seqno shown by `cocoon root show`.
        seqno: u32,
        #[command(flatten)]
        owner: OwnerOpts,
    },
    /// Change the price per token and the worker fee per token (nanoTON); this bumps
    /// params_version, so every proxy/client/worker contract address changes.
    SetPrice {
        /// Client price per adjusted token, nanoTON.
        #[arg(long)]
        price: u64,
        /// Worker fee per adjusted token, nanoTON.
        #[arg(long)]
        worker_fee: u64,
        #[command(flatten)]
        owner: OwnerOpts,
    },
    /// Change the root's params: only the values given, the others stay (one set-params
    /// message for prices, delays and stakes, one set-multipliers for multipliers; nothing
    /// is sent when every value is already current). Each message bumps params_version, so
    /// every proxy, client and worker contract address changes: proxies move their accounts
    /// to new contracts (docs/operations.md).
    ChangeParams {
        #[command(flatten)]
        change: ParamsArgs,
        #[command(flatten)]
        owner: OwnerOpts,
    },
    /// Hand the root to a new owner (a wallet address). From then on only that wallet can
    /// change the root; this wallet cannot undo it.
    ChangeOwner {
        /// The new owner's address.
        #[arg(long)]
        new_owner: String,
        #[command(flatten)]
        owner: OwnerOpts,
    },
    /// Replace contract code, as the root allows: the code of the proxy, worker and client
    /// contracts deployed from now on (one upgrade-contracts message; a code not given keeps
    /// the root's; it bumps params_version, so every contract address changes and proxies
    /// move their accounts, as for change-params) and the root's own code (one upgrade-root
    /// message, sent after the children's; its storage stays). Each option takes a BOC file
    /// of the code cell or `embedded`, the code compiled into this binary
    /// (contracts/build/). A code the root already has is not sent again.
    Upgrade {
        #[command(flatten)]
        codes: UpgradeArgs,
        #[command(flatten)]
        owner: OwnerOpts,
    },
}

/// `cocoon root upgrade`'s codes; each one left out stays.
#[derive(Debug, Args)]
pub(crate) struct UpgradeArgs {
    /// The root's own code: a BOC file, or `embedded`.
    #[arg(long)]
    root_code: Option<String>,
    /// Proxy contract code: a BOC file, or `embedded`.
    #[arg(long)]
    proxy_code: Option<String>,
    /// Worker contract code: a BOC file, or `embedded`.
    #[arg(long)]
    worker_code: Option<String>,
    /// Client contract code: a BOC file, or `embedded`.
    #[arg(long)]
    client_code: Option<String>,
    /// All four codes compiled into this binary (what the other options may override).
    #[arg(long)]
    embedded: bool,
}

impl UpgradeArgs {
    fn upgrade(&self) -> Result<ops::CodeUpgrade, String> {
        let base = if self.embedded {
            ops::CodeUpgrade::embedded().map_err(|e| e.to_string())?
        } else {
            ops::CodeUpgrade::default()
        };
        let load = |v: &Option<String>, flag: &str, embedded: &[u8], base: Option<Cell>| match v
            .as_deref()
        {
            None => Ok(base),
            Some("embedded") => cocoon_ton::codec::decode_boc(embedded)
                .map(Some)
                .map_err(|e| format!("--{flag}: {e}")),
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| format!("--{flag} {path}: {e}"))?;
                cocoon_ton::codec::decode_boc(&bytes)
                    .map(Some)
                    .map_err(|e| format!("--{flag} {path}: not a BOC ({e})"))
            }
        };
        use cocoon_ton::code;
        let u = ops::CodeUpgrade {
            root: load(&self.root_code, "root-code", code::ROOT_CODE, base.root)?,
            proxy: load(&self.proxy_code, "proxy-code", code::PROXY_CODE, base.proxy)?,
            worker: load(
                &self.worker_code,
                "worker-code",
                code::WORKER_CODE,
                base.worker,
            )?,
            client: load(
                &self.client_code,
                "client-code",
                code::CLIENT_CODE,
                base.client,
            )?,
        };
        if u == ops::CodeUpgrade::default() {
            return Err("nothing to upgrade: give --embedded or at least one of --root-code, --proxy-code, --worker-code, --client-code".into());
        }
        Ok(u)
    }
}

fn upgrade(codes: &UpgradeArgs, owner: OwnerOpts) -> Result<(), String> {
    let upgrade = codes.upgrade()?;
    with_owner(owner, async |wallet, root, value, c| {
        let done = ops::upgrade(wallet, &root, &upgrade, value)
            .await
            .map_err(|e| e.to_string())?;
        if done.is_empty() {
            println!("root code unchanged: every code given is already the root's");
            return Ok(());
        }
        for d in &done {
            println!("root version {} -> {}", d.version_before, d.config.version);
        }
        let code_hash = root_code_hash(&c, &root).await?;
        let p = &done[done.len() - 1].config.params;
        let h = |c: &Option<Cell>| {
            c.as_ref()
                .map(|c| c.repr_hash().to_string())
                .unwrap_or_else(|| "none".into())
        };
        println!("params_version: {}", p.params_version);
        println!(
            "root code hash: {}",
            code_hash.unwrap_or_else(|| "none".into())
        );
        println!("proxy code hash: {}", h(&p.proxy_code));
        println!("worker code hash: {}", h(&p.worker_code));
        println!("client code hash: {}", h(&p.client_code));
        Ok(())
    })
}

/// The hash of the root account's code, as hex.
async fn root_code_hash(c: &Toncenter, root: &StdAddr) -> Result<Option<String>, String> {
    use cocoon_ton::chain::Chain as _;
    let st = c.account_state(root).await.map_err(|e| e.to_string())?;
    Ok(st.code.map(|c| c.repr_hash().to_string()))
}

/// `cocoon root change-params`' values; each one left out keeps the root's.
#[derive(Debug, Args)]
pub(crate) struct ParamsArgs {
    /// Client price per adjusted token, nanoTON.
    #[arg(long)]
    price: Option<u64>,
    /// Worker fee per adjusted token, nanoTON (at most the price).
    #[arg(long)]
    worker_fee: Option<u64>,
    /// Seconds a proxy contract waits between its close request and its close.
    #[arg(long)]
    proxy_delay: Option<u32>,
    /// Seconds a client contract waits between its refund request and the forced refund.
    #[arg(long)]
    client_delay: Option<u32>,
    /// Minimum proxy stake, TON.
    #[arg(long)]
    min_proxy_stake: Option<String>,
    /// Minimum client stake, TON.
    #[arg(long)]
    min_client_stake: Option<String>,
    /// Prompt tokens' price multiplier, ten-thousandths (10000 = x1).
    #[arg(long)]
    prompt_multiplier: Option<u32>,
    /// Cached prompt tokens' price multiplier, ten-thousandths.
    #[arg(long)]
    cached_multiplier: Option<u32>,
    /// Completion tokens' price multiplier, ten-thousandths.
    #[arg(long)]
    completion_multiplier: Option<u32>,
    /// Reasoning tokens' price multiplier, ten-thousandths.
    #[arg(long)]
    reasoning_multiplier: Option<u32>,
}

impl ParamsArgs {
    fn change(&self) -> Result<ops::ParamsChange, String> {
        let ton = |v: &Option<String>, flag: &str| {
            v.as_deref()
                .map(|t| parse_ton(t).map_err(|e| format!("--{flag}: {e}")))
                .transpose()
        };
        let c = ops::ParamsChange {
            price_per_token: self.price,
            worker_fee_per_token: self.worker_fee,
            proxy_delay_before_close: self.proxy_delay,
            client_delay_before_close: self.client_delay,
            min_proxy_stake: ton(&self.min_proxy_stake, "min-proxy-stake")?,
            min_client_stake: ton(&self.min_client_stake, "min-client-stake")?,
            prompt_multiplier: self.prompt_multiplier,
            cached_multiplier: self.cached_multiplier,
            completion_multiplier: self.completion_multiplier,
            reasoning_multiplier: self.reasoning_multiplier,
        };
        if c == ops::ParamsChange::default() {
            return Err("nothing to change: give at least one of --price, --worker-fee, --proxy-delay, --client-delay, --min-proxy-stake, --min-client-stake, --*-multiplier".into());
        }
        Ok(c)
    }
}

fn change_params(change: &ParamsArgs, owner: OwnerOpts) -> Result<(), String> {
    let change = change.change()?;
    with_owner(owner, async |wallet, root, value, _| {
        let done = ops::change_params(wallet, &root, &change, value)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = done.last() else {
            println!("root params unchanged: every value given is already the current one");
            return Ok(());
        };
        for d in &done {
            println!("root version {} -> {}", d.version_before, d.config.version);
        }
        let p = &last.config.params;
        println!("params_version: {}", p.params_version);
        println!(
            "price_per_token: {} nanoTON  worker_fee_per_token: {} nanoTON",
            p.price_per_token, p.worker_fee_per_token
        );
        println!(
            "close delays: proxy {} s, client {} s",
            p.proxy_delay_before_close, p.client_delay_before_close
        );
        println!(
            "min stakes: proxy {} TON, client {} TON",
            format_ton(u128::from(p.min_proxy_stake)),
            format_ton(u128::from(p.min_client_stake))
        );
        println!(
            "multipliers (x/10000): prompt {} cached {} completion {} reasoning {}",
            p.prompt_tokens_price_multiplier,
            p.cached_tokens_price_multiplier,
            p.completion_tokens_price_multiplier,
            p.reasoning_tokens_price_multiplier
        );
        Ok(())
    })
}

fn change_owner(new_owner: &str, owner: OwnerOpts) -> Result<(), String> {
    let new_owner = parse_address(new_owner).map_err(|e| format!("--new-owner: {e}"))?;
    with_owner(owner, async |wallet, root, value, _| {
        let change = ops::change_owner(wallet, &root, &new_owner, value)
            .await
            .map_err(|e| e.to_string())?;
        println!(
            "root version {} -> {}",
            change.version_before, change.config.version
        );
        println!("owner: {}", change.config.owner);
        Ok(())
    })
}

fn parse_hash(s: &str) -> Result<HashBytes, String> {
    let s = s.trim().trim_start_matches("0x");
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| format!("{s:?} is not 64 hex digits"))?;
    Ok(HashBytes(out))
}

fn model_to_hash(m: &str) -> HashBytes {
    parse_hash(m).unwrap_or_else(|_| model_hash(m))
}

async fn root_address(c: &Toncenter, given: Option<&str>) -> Result<StdAddr, String> {
    if let Some(a) = given {
        return parse_address(a).map_err(|e| e.to_string());
    }
    let info = c
        .devnet_info()
        .await
        .map_err(|e| format!("no --root given and the endpoint is not a Cocoon devnet ({e})"))?;
    let a = info
        .get("root_address")
        .and_then(|v| v.as_str())
        .ok_or("the devnet has no root contract; pass --root")?;
    parse_address(a).map_err(|e| e.to_string())
}

fn config_json(root: &StdAddr, c: &RootConfig) -> serde_json::Value {
    let hx = |v: &[HashBytes]| v.iter().map(|h| h.to_string()).collect::<Vec<_>>();
    let code = |c: &Option<Cell>| c.as_ref().map(|c| c.repr_hash().to_string());
    let p = &c.params;
    serde_json::json!({
        "root_address": root.to_string(),
        "owner": c.owner.to_string(),
        "version": c.version,
        "proxy_hashes": hx(&c.proxy_hashes),
        "registered_proxies": c.registered_proxies.iter().map(|r| serde_json::json!({"seqno": r.seqno, "address": r.endpoint.0})).collect::<Vec<_>>(),
        "last_proxy_seqno": c.last_proxy_seqno,
        "worker_hashes": hx(&c.worker_hashes),
        "model_hashes": hx(&c.model_hashes),
        "struct_version": p.struct_version,
        "params_version": p.params_version,
        "unique_id": p.unique_id,
        "is_test": p.is_test,
        "price_per_token": p.price_per_token,
        "worker_fee_per_token": p.worker_fee_per_token,
        "prompt_tokens_price_multiplier": p.prompt_tokens_price_multiplier,
        "cached_tokens_price_multiplier": p.cached_tokens_price_multiplier,
        "completion_tokens_price_multiplier": p.completion_tokens_price_multiplier,
        "reasoning_tokens_price_multiplier": p.reasoning_tokens_price_multiplier,
        "proxy_delay_before_close": p.proxy_delay_before_close,
        "client_delay_before_close": p.client_delay_before_close,
        "min_proxy_stake": p.min_proxy_stake,
        "min_client_stake": p.min_client_stake,
        "proxy_code_hash": code(&p.proxy_code),
        "worker_code_hash": code(&p.worker_code),
        "client_code_hash": code(&p.client_code),
    })
}

fn print_config(root: &StdAddr, c: &RootConfig) {
    let p = &c.params;
    println!("root: {} ({root})", friendly_address(root, true, false));
    println!("owner: {}", c.owner);
    println!(
        "version: {}  params_version: {}  struct_version: {}",
        c.version, p.params_version, p.struct_version
    );
    println!("unique_id: {}  is_test: {}", p.unique_id, p.is_test);
    println!(
        "price_per_token: {} nanoTON  worker_fee_per_token: {} nanoTON",
        p.price_per_token, p.worker_fee_per_token
    );
    println!(
        "multipliers (x/10000): prompt {} cached {} completion {} reasoning {}",
        p.prompt_tokens_price_multiplier,
        p.cached_tokens_price_multiplier,
        p.completion_tokens_price_multiplier,
        p.reasoning_tokens_price_multiplier
    );
    println!(
        "close delays: proxy {} s, client {} s",
        p.proxy_delay_before_close, p.client_delay_before_close
    );
    println!(
        "min stakes: proxy {} TON, client {} TON",
        format_ton(p.min_proxy_stake as u128),
        format_ton(p.min_client_stake as u128)
    );
    let list = |name: &str, v: &[HashBytes]| {
        println!("{name}: {}", v.len());
        for h in v {
            println!("  {h}");
        }
    };
    list("proxy image hashes", &c.proxy_hashes);
    list("worker image hashes", &c.worker_hashes);
    list("model hashes", &c.model_hashes);
    println!(
        "registered proxies: {} (last seqno {})",
        c.registered_proxies.len(),
        c.last_proxy_seqno
    );
    for r in &c.registered_proxies {
        println!("  #{} {}", r.seqno, r.endpoint.0);
    }
}

/// Runs one operation of the root's owner: the owner's wallet (the operations check that it
/// owns the root), the root (given, or the devnet's), the TON attached to each message, and
/// the chain client.
fn with_owner(
    owner: OwnerOpts,
    op: impl AsyncFnOnce(&mut WalletOps<Toncenter>, StdAddr, u64, Toncenter) -> Result<(), String>,
) -> Result<(), String> {
    let value = parse_ton(&owner.value).map_err(|e| e.to_string())?;
    let c = owner.chain.client()?;
    let mut wallet = owner.wallet.ops(c.clone(), owner.wait)?;
    runtime()?.block_on(async move {
        let root = root_address(&c, owner.root.as_deref()).await?;
        op(&mut wallet, root, value, c).await
    })
}

fn owner_op(owner: OwnerOpts, op: RootOp) -> Result<(), String> {
    op.check().map_err(|e| e.to_string())?;
    with_owner(owner, async |wallet, root, value, _| {
        let change = ops::root_op(wallet, &root, &op, value)
            .await
            .map_err(|e| e.to_string())?;
        println!(
            "root version {} -> {}",
            change.version_before, change.config.version
        );
        Ok(())
    })
}

fn deploy(a: DeployArgs) -> Result<(), String> {
    if a.worker_fee > a.price {
        return Err(format!(
            "--worker-fee ({}) must not exceed --price ({})",
            a.worker_fee, a.price
        ));
    }
    let params = CocoonParams {
        is_test: !a.production,
        unique_id: a.unique_id,
        price_per_token: a.price,
        worker_fee_per_token: a.worker_fee,
        proxy_delay_before_close: a.proxy_delay,
        client_delay_before_close: a.client_delay,
        ..Default::default()
    };
    let value = parse_ton(&a.value).map_err(|e| e.to_string())?;
    let mut wallet = a.wallet.ops(a.chain.client()?, a.wait)?;
    let root = runtime()?
        .block_on(ops::deploy_root(&mut wallet, params, value))
        .map_err(|e| e.to_string())?;
    let addr = &root.address;
    println!("root deployed at {addr}");
    println!("  friendly  {}", friendly_address(addr, true, false));
    println!("  owner     {}", root.config.owner);
    println!("  is_test   {}", root.config.params.is_test);
    Ok(())
}

/// Runs a `cocoon root` subcommand.
pub(crate) fn run(cmd: RootCommand) -> Result<(), String> {
    match cmd {
        RootCommand::Deploy(args) => deploy(args),
        RootCommand::Show { root, json, chain } => {
            let c = chain.client()?;
            let (addr, cfg, code_hash) = runtime()?.block_on(async {
                let addr = root_address(&c, root.as_deref()).await?;
                let cfg = load_root_config(&c, &addr)
                    .await
                    .map_err(|e| e.to_string())?;
                let code_hash = root_code_hash(&c, &addr).await?;
                Ok::<_, String>((addr, cfg, code_hash))
            })?;
            if json {
                let mut j = config_json(&addr, &cfg);
                j["root_code_hash"] = serde_json::json!(code_hash);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&j).map_err(|e| e.to_string())?
                );
            } else {
                print_config(&addr, &cfg);
                println!(
                    "root code hash: {}",
                    code_hash.unwrap_or_else(|| "none".into())
                );
            }
            Ok(())
        }
        RootCommand::AddImage { kind, hash, owner } => {
            let hash = parse_hash(&hash)?;
            let op = match kind {
                ImageKind::Worker => RootOp::AddWorkerImage(hash),
                ImageKind::Proxy => RootOp::AddProxyImage(hash),
            };
            owner_op(owner, op)
        }
        RootCommand::DelImage { kind, hash, owner } => {
            let hash = parse_hash(&hash)?;
            let op = match kind {
                ImageKind::Worker => RootOp::DelWorkerImage(hash),
                ImageKind::Proxy => RootOp::DelProxyImage(hash),
            };
            owner_op(owner, op)
        }
        RootCommand::AddModel { model, owner } => {
            let hash = model_to_hash(&model);
            println!("model hash: {hash}");
            owner_op(owner, RootOp::AddModel(hash))
        }
        RootCommand::DelModel { model, owner } => {
            owner_op(owner, RootOp::DelModel(model_to_hash(&model)))
        }
        RootCommand::AddProxy { endpoint, owner } => {
            owner_op(owner, RootOp::RegisterProxy(ProxyEndpoint(endpoint)))
        }
        RootCommand::DelProxy { seqno, owner } => owner_op(owner, RootOp::UnregisterProxy(seqno)),
        RootCommand::SetPrice {
            price,
            worker_fee,
            owner,
        } => owner_op(
            owner,
            RootOp::SetPrice {
                price_per_token: price,
                worker_fee_per_token: worker_fee,
            },
        ),
        RootCommand::ChangeParams { change, owner } => change_params(&change, owner),
        RootCommand::ChangeOwner { new_owner, owner } => change_owner(&new_owner, owner),
        RootCommand::Upgrade { codes, owner } => upgrade(&codes, owner),
    }
}
