//! `cocoon worker`: serve a model to the network's proxies and earn for every token. The
//! process is `cocoon_worker::run`; this command parses its layered settings (`cocoon worker
//! --print-defaults`).

use std::process::ExitCode;

use clap::Args;

use crate::role;

#[derive(Args)]
pub(crate) struct WorkerArgs {
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
    /// Earnings owner address.
    #[arg(long)]
    owner: Option<String>,
}

/// Defaults, file, `COCOON_WORKER_*`, then flags; then `cocoon_worker::run`.
pub(crate) fn main(args: WorkerArgs) -> ExitCode {
    let proxies = (!args.proxies.is_empty()).then(|| args.proxies.join(","));
    role::main::<cocoon_worker::Settings>(
        &args.common,
        vec![
            ("model", args.model, "--model"),
            ("backend_url", args.backend, "--backend"),
            ("owner_address", args.owner, "--owner"),
            ("proxies", proxies, "--proxy"),
        ],
    )
}
