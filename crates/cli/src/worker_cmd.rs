//! `cocoon worker`: serve a model to the network's proxies and earn for every token. The
//! process is `cocoon_worker::run`; this command parses its layered settings (`cocoon worker
//! --print-defaults`).

use std::process::ExitCode;

use clap::Args;
use cocoon_worker::Settings;

use crate::config::{ConfigError, Layers};
use crate::role;

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    common: role::CommonArgs,
    /// Model store alias/name/id or GGUF path (embedded), or the full model id (--backend).
    #[arg(long)]
    model: Option<String>,
    /// OpenAI-compatible inference server instead of the embedded engine.
    #[arg(long)]
    backend: Option<String>,
    /// Proxy address host:port (repeatable).
    #[arg(long = "proxy")]
    proxies: Vec<String>,
    /// Root contract address to follow.
    #[arg(long)]
    root: Option<String>,
    /// toncenter v2 API URL.
    #[arg(long)]
    ton: Option<String>,
    /// Earnings owner address.
    #[arg(long)]
    owner: Option<String>,
}

/// Defaults, file, `COCOON_WORKER_*`, then flags.
pub fn layers(args: &WorkerArgs, env: Vec<(String, String)>) -> Result<Layers, ConfigError> {
    let proxies = (!args.proxies.is_empty()).then(|| args.proxies.join(","));
    let flags = vec![
        ("model", args.model.clone(), "--model"),
        ("backend_url", args.backend.clone(), "--backend"),
        ("root_address", args.root.clone(), "--root"),
        ("ton_url", args.ton.clone(), "--ton"),
        ("owner_address", args.owner.clone(), "--owner"),
        ("proxies", proxies, "--proxy"),
    ];
    args.common
        .layers("worker", cocoon_worker::settings::DEFAULTS, env, flags)
}

pub fn main(args: WorkerArgs) -> ExitCode {
    let layers = layers(&args, std::env::vars().collect());
    role::main_with(
        cocoon_worker::settings::DEFAULTS,
        args.common.print_defaults,
        args.common.print_config,
        layers,
        |s: &Settings, l| role::checked(l, s.check(role::given(l))),
        |s: &Settings| s.log.clone(),
        |s| cocoon_worker::run(s, cocoon_service::process::stop_signal()),
    )
}
