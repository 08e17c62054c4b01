//! `cocoon client`: the local OpenAI-compatible gateway, and the commands that operate a
//! running one (`status`, `topup`, `withdraw`, `charge`, `close`) or create API keys (`key`).
//!
//! Configuration is layered like the other roles (`defaults/client.toml`, `cocoon client
//! --print-defaults`). The client reads the root contract for the registered proxies, their
//! allowed images and the prices, re-reads it every `root_poll_seconds`, keeps its receipts,
//! key spending and totals in `<state_dir>/client.sqlite`, and pays from `wallet_key_file`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use cocoon_client::{AutoPay, ChannelOps, Client, ClientConfig, Timings, TonChannels};
use cocoon_service::browser::beyond_loopback;
use cocoon_ton::keys::SigningKey;
use cocoon_ton::wallet::{Wallet, WalletVersion};
use serde::Deserialize;
use serde_json::Value;

use crate::chain_cfg::{self, RootRead, TonSettings};
use crate::config::{ConfigError, Layers};
use crate::role;

/// The embedded defaults: every key `cocoon client` knows.
pub const DEFAULTS: &str = include_str!("defaults/client.toml");

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ClientArgs {
    #[command(subcommand)]
    action: Option<ClientAction>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    common: role::CommonArgs,
    /// Where the OpenAI-compatible API listens (ip:port).
    #[arg(long)]
    listen: Option<String>,
    /// A proxy's client address (host:port); repeatable. Default: the root's proxies.
    #[arg(long = "proxy")]
    proxies: Vec<String>,
    /// Root contract address.
    #[arg(long)]
    root: Option<String>,
    /// toncenter v2 API URL.
    #[arg(long)]
    ton: Option<String>,
    /// Owner of the client contracts (default: the wallet's address).
    #[arg(long)]
    owner: Option<String>,
}

#[derive(Subcommand)]
enum ClientAction {
    /// Show a running client's proxies, channels (in TON), receipts and spending.
    Status(CtlArgs),
    /// Add TON to the channel with a proxy.
    Topup {
        #[command(flatten)]
        ctl: CtlArgs,
        /// TON to add (default: the contract's stake).
        #[arg(long)]
        amount: Option<String>,
    },
    /// Take back what the channel holds above its stake.
    Withdraw(CtlArgs),
    /// Submit the best signed charge held from the proxy.
    Charge(CtlArgs),
    /// Close the channel: the first call starts closing (what is above the stake comes back),
    /// a call after the close delay refunds the rest.
    Close(CtlArgs),
    /// Create an API key: it is printed once, its SHA-256 is appended to the keys file.
    Key {
        /// A label for the key (shown in stats).
        name: String,
        /// Spending limit in TON (default: none).
        #[arg(long)]
        limit: Option<String>,
        /// The keys file (the client's `api_keys_file`).
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Args)]
struct CtlArgs {
    /// The running client's API.
    #[arg(long, default_value = "http://127.0.0.1:10000")]
    api: String,
    /// Its admin token file (default: ~/.local/share/cocoon/client/admin-token).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Which proxy's channel (its address or proxy contract); needed with several proxies.
    #[arg(long)]
    proxy: Option<String>,
}

/// The client's settings, as the defaults file declares them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    pub api_listen: String,
    pub allowed_origins: Vec<String>,
    pub allowed_hosts: Vec<String>,
    pub proxies: Vec<String>,
    pub connections: usize,
    pub root_address: String,
    pub ton_url: String,
    pub ton_urls: Vec<String>,
    pub ton_api_key_file: String,
    pub ton_api_key_files: Vec<String>,
    pub ton_quorum: u32,
    pub extra_ca_file: String,
    pub extra_ca_in_tee: bool,
    pub root_poll_seconds: u64,
    pub wallet_key_file: String,
    pub wallet_version: String,
    pub owner_address: String,
    pub secret_file: String,
    pub is_test: bool,
    pub tee: String,
    pub proxy_policy: String,
    pub check_proxy_hashes: bool,
    pub pccs_url: String,
    pub kds_url: String,
    pub pow_max_difficulty: u32,
    pub top_up_ton: String,
    pub auto_top_up: bool,
    pub auto_charge: bool,
    pub payment_status_seconds: u64,
    pub request_timeout_seconds: u64,
    pub api_keys_file: String,
    pub state_dir: String,
    pub admin_token_file: String,
    pub log: String,
}

/// Defaults, file, `COCOON_CLIENT_*`, then flags.
pub fn layers(args: &RunArgs, env: Vec<(String, String)>) -> Result<Layers, ConfigError> {
    let proxies = (!args.proxies.is_empty()).then(|| args.proxies.join(","));
    let flags = vec![
        ("api_listen", args.listen.clone(), "--listen"),
        ("proxies", proxies, "--proxy"),
        ("root_address", args.root.clone(), "--root"),
        ("ton_url", args.ton.clone(), "--ton"),
        ("owner_address", args.owner.clone(), "--owner"),
    ];
    args.common.layers("client", DEFAULTS, env, flags)
}

/// The chain endpoint settings.
fn ton_endpoints(s: &ClientSettings) -> TonSettings<'_> {
    TonSettings {
        url: &s.ton_url,
        urls: &s.ton_urls,
        key_file: &s.ton_api_key_file,
        key_files: &s.ton_api_key_files,
        quorum: s.ton_quorum,
    }
}

/// Checks what the types alone cannot, naming the key.
fn check(s: &ClientSettings, l: &Layers) -> Result<(), ConfigError> {
    ton_endpoints(s).check(l)?;
    chain_cfg::check_extra_ca(l, &s.extra_ca_file, s.extra_ca_in_tee, &s.tee)?;
    if s.root_address.is_empty() {
        return Err(l.invalid("root_address", "required"));
    }
    cocoon_ton::parse_address(&s.root_address).map_err(|e| l.invalid("root_address", e))?;
    if !s.owner_address.is_empty() {
        cocoon_ton::parse_address(&s.owner_address).map_err(|e| l.invalid("owner_address", e))?;
    }
    if s.wallet_key_file.is_empty() && s.owner_address.is_empty() {
        return Err(l.invalid(
            "wallet_key_file",
            "required unless owner_address names an owner whose contracts are funded elsewhere",
        ));
    }
    let Ok(listen) = s.api_listen.parse::<std::net::SocketAddr>() else {
        return Err(l.invalid("api_listen", "expected ip:port"));
    };
    if s.api_keys_file.is_empty() && beyond_loopback(&listen) {
        return Err(l.invalid(
            "api_listen",
            format!(
                "{listen} is reachable beyond this machine but api_keys_file is empty, so \
                 anyone who reaches it could spend the channel; set api_keys_file (`cocoon \
                 client key`) or listen on 127.0.0.1"
            ),
        ));
    }
    role::check_browser_allowlist(l, &s.allowed_origins, &s.allowed_hosts, "")?;
    for p in &s.proxies {
        if p.rsplit_once(':')
            .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        {
            return Err(l.invalid("proxies", format!("{p:?} is not host:port")));
        }
    }
    if s.connections == 0 {
        return Err(l.invalid("connections", "must be positive"));
    }
    for (key, v) in [
        ("root_poll_seconds", s.root_poll_seconds),
        ("payment_status_seconds", s.payment_status_seconds),
        ("request_timeout_seconds", s.request_timeout_seconds),
    ] {
        if v == 0 {
            return Err(l.invalid(key, "must be positive"));
        }
    }
    if !s.top_up_ton.is_empty() {
        cocoon_ton::parse_ton(&s.top_up_ton).map_err(|e| l.invalid("top_up_ton", e))?;
    }
    if s.wallet_version.parse::<WalletVersion>().is_err() {
        return Err(l.invalid("wallet_version", "v4r2 or v5r1"));
    }
    if !s.is_test && !s.check_proxy_hashes {
        return Err(l.invalid(
            "check_proxy_hashes",
            "may be turned off on test networks only",
        ));
    }
    Ok(())
}

pub fn main(args: ClientArgs) -> ExitCode {
    if let Some(action) = args.action {
        return match act(action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    let layers = layers(&args.run, std::env::vars().collect());
    role::main_with(
        DEFAULTS,
        args.run.common.print_defaults,
        args.run.common.print_config,
        layers,
        check,
        |s: &ClientSettings| s.log.clone(),
        run,
    )
}

/// The secret: read, or created (0600, 32 random bytes in hex) when missing.
fn secret(configured: &str, state_dir: &Path) -> Result<Vec<u8>, String> {
    let path = if configured.is_empty() {
        state_dir.join("secret")
    } else {
        PathBuf::from(configured)
    };
    role::ensure_token_file(&path)?;
    let s = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let s = s.lines().next().unwrap_or("").trim();
    if s.is_empty() {
        return Err(format!("secret_file {} is empty", path.display()));
    }
    Ok(s.as_bytes().to_vec())
}

async fn run(s: ClientSettings) -> Result<(), String> {
    let state_dir = role::state_dir(&s.state_dir, "client")?;
    let extra_roots = chain_cfg::extra_roots(&s.extra_ca_file)?;
    let role::ProxyDialer { connector, tee } = role::proxy_dialer(
        &s.tee,
        &s.proxy_policy,
        s.is_test,
        role::Pccs {
            url: &s.pccs_url,
            extra_roots: &extra_roots,
        },
        &s.kds_url,
        s.pow_max_difficulty,
        &state_dir,
    )?;
    let chain = ton_endpoints(&s).chain(&extra_roots)?;
    let root_addr = cocoon_ton::parse_address(&s.root_address).map_err(|e| e.to_string())?;
    let root = chain_cfg::load_root_patiently(&chain, &root_addr, Duration::from_secs(30)).await?;

    let channels: Option<Arc<dyn ChannelOps>> = if s.wallet_key_file.is_empty() {
        None
    } else {
        let key = SigningKey::from_file(Path::new(&s.wallet_key_file))
            .map_err(|e| format!("wallet_key_file: {e}"))?;
        let version = s
            .wallet_version
            .parse::<WalletVersion>()
            .map_err(|e| e.to_string())?;
        let wallet = Wallet::new(version, key.public_key());
        Some(Arc::new(
            TonChannels::new(chain.clone(), wallet, key).map_err(|e| e.to_string())?,
        ))
    };
    let owner = match (&channels, s.owner_address.as_str()) {
        (Some(ch), "") => ch.owner(),
        (Some(ch), o) => {
            let o = cocoon_ton::parse_address(o).map_err(|e| e.to_string())?;
            if o != ch.owner() {
                return Err(format!(
                    "owner_address {o} is not the wallet's address {}: the wallet sends every \
                     owner operation, so it must own the contracts",
                    ch.owner()
                ));
            }
            o
        }
        (None, o) => cocoon_ton::parse_address(o).map_err(|e| e.to_string())?,
    };
    let top_up_amount = if s.top_up_ton.is_empty() {
        0
    } else {
        cocoon_ton::parse_ton(&s.top_up_ton).map_err(|e| e.to_string())?
    };
    let timings = Timings {
        default_timeout: Duration::from_secs(s.request_timeout_seconds),
        payment_status_interval: Duration::from_secs(s.payment_status_seconds),
        ..Timings::default()
    };
    let cfg = ClientConfig {
        api_listen: Some(s.api_listen.parse().map_err(|_| "api_listen")?),
        allowed_origins: s.allowed_origins.clone(),
        allowed_hosts: s.allowed_hosts.clone(),
        proxies: s.proxies.clone(),
        connections: s.connections,
        root,
        root_address: Some(root_addr.clone()),
        owner_address: owner.clone(),
        secret: secret(&s.secret_file, &state_dir)?,
        is_test: s.is_test,
        connector,
        check_proxy_hashes: s.check_proxy_hashes,
        state_path: Some(state_dir.join("client.sqlite")),
        api_keys_file: (!s.api_keys_file.is_empty()).then(|| PathBuf::from(&s.api_keys_file)),
        admin_token_file: Some(role::admin_token_file(&s.admin_token_file, &state_dir)?),
        channels,
        auto_pay: AutoPay {
            top_up: s.auto_top_up,
            charge: s.auto_charge,
            top_up_amount,
        },
        timings,
    };
    let handle = Client::start(cfg).await.map_err(|e| e.to_string())?;
    let api = handle.api_addr().map(|a| a.to_string()).unwrap_or_default();
    eprintln!(
        "client: OpenAI API on http://{api}/v1, stats http://{api}/stats; owner {owner}, tee {tee}, state {}",
        state_dir.display()
    );
    let poll = async {
        let every = Duration::from_secs(s.root_poll_seconds);
        let mut version = handle.stats()["root"]["version"].as_u64().unwrap_or(0);
        loop {
            tokio::time::sleep(every).await;
            // Without agreement of the chain endpoints the configuration in use stays.
            if let RootRead::Agreed(c) = chain_cfg::poll_root(&chain, &root_addr).await
                && u64::from(c.version) > version
            {
                version = u64::from(c.version);
                handle.update_root(*c);
            }
        }
    };
    tokio::select! {
        _ = role::stop_signal() => {}
        _ = poll => {}
    }
    eprintln!("client: stopping");
    handle.shutdown().await;
    Ok(())
}

/// Operates a running client through its API.
fn act(action: ClientAction) -> Result<(), String> {
    if let ClientAction::Key { name, limit, file } = action {
        return new_key(&name, limit.as_deref(), &file);
    }
    // reqwest is built without a default crypto provider: ring, as everywhere else.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| e.to_string())?;
        let (ctl, path, amount) = match action {
            ClientAction::Status(c) => return status(&http, &c).await,
            ClientAction::Topup { ctl, amount } => (ctl, "topup", amount),
            ClientAction::Withdraw(c) => (c, "withdraw", None),
            ClientAction::Charge(c) => (c, "charge", None),
            ClientAction::Close(c) => (c, "close", None),
            ClientAction::Key { .. } => unreachable!("handled above"),
        };
        let token_file = ctl
            .token_file
            .clone()
            .unwrap_or_else(|| role::default_state_dir("client").join("admin-token"));
        let token = std::fs::read_to_string(&token_file)
            .map_err(|e| format!("admin token {}: {e}", token_file.display()))?;
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(p) = &ctl.proxy {
            q.push(("proxy", p.clone()));
        }
        if let Some(a) = amount {
            q.push(("amount", a));
        }
        let r = http
            .post(format!("{}/control/{path}", ctl.api.trim_end_matches('/')))
            .query(&q)
            .bearer_auth(token.trim())
            .send()
            .await
            .map_err(|e| format!("is `cocoon client` running at {}? {e}", ctl.api))?;
        let ok = r.status().is_success();
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        if !ok {
            return Err(v["error"].as_str().unwrap_or("failed").to_owned());
        }
        println!(
            "{path}: done; contract {}",
            v["contract"].as_str().unwrap_or("")
        );
        print_channel(&v["state"]);
        Ok(())
    })
}

fn ton(v: &Value) -> String {
    cocoon_ton::format_ton(u128::from(v.as_u64().unwrap_or(0)))
}

fn print_channel(st: &Value) {
    if st.is_null() {
        println!("  channel: not deployed");
        return;
    }
    let state = match st["state"].as_u64() {
        Some(0) => "open",
        Some(1) => "closing",
        _ => "closed",
    };
    println!(
        "  channel {state}: balance {} TON, stake {} TON, {} tokens charged",
        ton(&st["balance"]),
        ton(&st["stake"]),
        st["tokens_used"]
    );
}

async fn status(http: &reqwest::Client, ctl: &CtlArgs) -> Result<(), String> {
    let v: Value = http
        .get(format!("{}/jsonstats", ctl.api.trim_end_matches('/')))
        .send()
        .await
        .map_err(|e| format!("is `cocoon client` running at {}? {e}", ctl.api))?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "client {} ({}): {} of {} proxies ready",
        v["owner_address"].as_str().unwrap_or(""),
        if v["is_test"] == true {
            "test network"
        } else {
            "mainnet"
        },
        v["proxies_ready"],
        v["proxies"].as_array().map_or(0, |a| a.len())
    );
    for p in v["proxies"].as_array().into_iter().flatten() {
        println!(
            "proxy {} {} (tee {}, auth {}, {} requests)",
            p["address"].as_str().unwrap_or(""),
            p["state"].as_str().unwrap_or(""),
            p["tee"].as_str().unwrap_or("-"),
            p["auth"].as_str().unwrap_or("-"),
            p["requests"]
        );
        if let Some(e) = p["last_error"].as_str() {
            println!("  last error: {e}");
        }
        println!(
            "  contract {}; best receipt covers {} tokens",
            p["client_sc"].as_str().unwrap_or("-"),
            p["receipt_tokens"]
        );
        print_channel(&p["channel"]);
    }
    let t = &v["totals"];
    println!(
        "spent {} TON for {} tokens over {} requests ({} failed)",
        ton(&t["spent_nanoton"]),
        t["tokens"].as_u64().unwrap_or(0),
        t["requests"].as_u64().unwrap_or(0),
        t["failed"].as_u64().unwrap_or(0)
    );
    Ok(())
}

fn new_key(name: &str, limit: Option<&str>, file: &Path) -> Result<(), String> {
    use std::io::Write;
    if name.is_empty() || name.contains('#') {
        return Err("the key name must be non-empty and without '#'".into());
    }
    let limit_field = match limit {
        Some(l) => {
            let n = cocoon_ton::parse_ton(l).map_err(|e| format!("--limit: {e}"))?;
            cocoon_ton::format_ton(u128::from(n))
        }
        None => "-".into(),
    };
    let mut bytes = [0u8; 24];
    rand::fill(&mut bytes);
    let key = format!("sk-cocoon-{}", hex::encode(bytes));
    if file.exists() {
        let existing =
            std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        cocoon_client::keys::parse(&existing).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    writeln!(
        f,
        "{} {limit_field} {name}",
        cocoon_client::keys::key_hash(&key)
    )
    .map_err(|e| format!("{}: {e}", file.display()))?;
    println!("{key}");
    eprintln!(
        "key {name:?} (limit {limit_field} TON) added to {}; the client reads the file at start",
        file.display()
    );
    Ok(())
}
