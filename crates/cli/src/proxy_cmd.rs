//! `cocoon proxy`: admit attested workers, route clients' requests to them, meter every
//! token in a durable ledger and settle on chain. The process is `cocoon_proxy::run`; this
//! command parses its layered settings (`cocoon proxy --print-defaults`).

use std::process::ExitCode;

use clap::Args;
use cocoon_proxy::Settings;

use crate::config::{ConfigError, Layers};
use crate::role;

#[derive(Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    common: role::CommonArgs,
    /// Where workers connect (ip:port).
    #[arg(long)]
    worker_listen: Option<String>,
    /// Where clients connect (ip:port).
    #[arg(long)]
    client_listen: Option<String>,
    /// Root contract address.
    #[arg(long)]
    root: Option<String>,
    /// toncenter v2 API URL.
    #[arg(long)]
    ton: Option<String>,
    /// Owner address of the proxy (its contract and commission).
    #[arg(long)]
    owner: Option<String>,
}

/// Defaults, file, `COCOON_PROXY_*`, then flags.
pub fn layers(args: &ProxyArgs, env: Vec<(String, String)>) -> Result<Layers, ConfigError> {
    let flags = vec![
        (
            "worker_listen",
            args.worker_listen.clone(),
            "--worker-listen",
        ),
        (
            "client_listen",
            args.client_listen.clone(),
            "--client-listen",
        ),
        ("root_address", args.root.clone(), "--root"),
        ("ton_url", args.ton.clone(), "--ton"),
        ("owner_address", args.owner.clone(), "--owner"),
    ];
    args.common
        .layers("proxy", cocoon_proxy::settings::DEFAULTS, env, flags)
}

pub fn main(args: ProxyArgs) -> ExitCode {
    let layers = layers(&args, std::env::vars().collect());
    role::main_with(
        cocoon_proxy::settings::DEFAULTS,
        args.common.print_defaults,
        args.common.print_config,
        layers,
        |s: &Settings, l| role::checked(l, s.check(role::given(l))),
        |s: &Settings| s.log.clone(),
        |s| cocoon_proxy::run(s, cocoon_service::process::stop_signal()),
    )
}
