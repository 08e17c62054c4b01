//! `cocoon proxy`: admit attested workers, route clients' requests to them, meter every
//! token in a durable ledger and settle on chain. The process is `cocoon_proxy::run`; this
//! command parses its layered settings (`cocoon proxy --print-defaults`).

use std::process::ExitCode;

use clap::Args;

use crate::role;

#[derive(Args)]
pub(crate) struct ProxyArgs {
    #[command(flatten)]
    common: role::CommonArgs,
    /// Where workers connect (ip:port).
    #[arg(long)]
    worker_listen: Option<String>,
    /// Where clients connect (ip:port).
    #[arg(long)]
    client_listen: Option<String>,
    /// Owner address of the proxy (its contract and commission).
    #[arg(long)]
    owner: Option<String>,
}

/// Defaults, file, `COCOON_PROXY_*`, then flags; then `cocoon_proxy::run`.
pub(crate) fn main(args: ProxyArgs) -> ExitCode {
    role::main::<cocoon_proxy::Settings>(
        &args.common,
        vec![
            ("worker_listen", args.worker_listen, "--worker-listen"),
            ("client_listen", args.client_listen, "--client-listen"),
            ("owner_address", args.owner, "--owner"),
        ],
    )
}
