//! `cocoon client`: the local OpenAI-compatible gateway, and the commands that operate a
//! running one (`status`, `topup`, `withdraw`, `charge`, `close`) or create API keys (`key`).
//!
//! The gateway's process is `cocoon_client::run`; this command parses its layered settings
//! (`cocoon client --print-defaults`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::role;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct ClientArgs {
    #[command(subcommand)]
    action: Option<ClientAction>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    common: role::CommonArgs,
    /// Where the OpenAI-compatible API listens (ip:port).
    #[arg(long)]
    listen: Option<String>,
    /// A proxy's client address (host:port); repeatable. Default: the root's proxies.
    #[arg(long = "proxy")]
    proxies: Vec<String>,
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

/// Defaults, file, `COCOON_CLIENT_*`, then flags; then `cocoon_client::run`. A subcommand
/// operates a running client instead.
pub(crate) fn main(args: ClientArgs) -> ExitCode {
    if let Some(action) = args.action {
        return match act(action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    let run = args.run;
    let proxies = (!run.proxies.is_empty()).then(|| run.proxies.join(","));
    role::main::<cocoon_client::Settings>(
        &run.common,
        vec![
            ("api_listen", run.listen, "--listen"),
            ("proxies", proxies, "--proxy"),
            ("owner_address", run.owner, "--owner"),
        ],
    )
}

/// Operates a running client through its API.
fn act(action: ClientAction) -> Result<(), String> {
    if let ClientAction::Key { name, limit, file } = action {
        return new_key(&name, limit.as_deref(), &file);
    }
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let http = cocoon_service::http::ClientBuilder::new()
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
        let token_file = ctl.token_file.clone().unwrap_or_else(|| {
            cocoon_service::process::default_state_dir("client").join("admin-token")
        });
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

async fn status(http: &cocoon_service::http::reqwest::Client, ctl: &CtlArgs) -> Result<(), String> {
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
    let checked = cocoon_client::keys::KeyName::parse(name)?;
    let limit = limit.map(cocoon_ton::parse_ton).transpose();
    let limit = limit.map_err(|e| format!("--limit: {e}"))?;
    let key = cocoon_client::keys::create(file, &checked, limit)?;
    let limit_field = limit.map_or_else(|| "-".into(), |n| cocoon_ton::format_ton(u128::from(n)));
    println!("{key}");
    eprintln!(
        "key {name:?} (limit {limit_field} TON) added to {}; the client reads the file at start",
        file.display()
    );
    Ok(())
}
