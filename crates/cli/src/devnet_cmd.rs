//! `cocoon devnet`: the embedded local TON chain (see `cocoon-devnet`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use cocoon_devnet::run::{RunOptions, run_until_ctrl_c};

/// Options of `cocoon devnet`.
#[derive(Debug, Args)]
pub(crate) struct DevnetArgs {
    /// Address to serve the toncenter v2 API on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// State directory: accounts, transactions, clock and the root owner key persist there.
    /// Without it the chain lives in memory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Chain time (unix seconds) for a new chain; default: now. Ignored when --dir holds a
    /// saved chain.
    #[arg(long)]
    now: Option<u32>,
    /// Do not deploy the Cocoon root contract.
    #[arg(long)]
    no_root: bool,
}

/// Runs the devnet until Ctrl-C.
pub(crate) fn run(args: DevnetArgs) -> Result<(), String> {
    let opts = RunOptions {
        listen: args.listen,
        dir: args.dir,
        now: args.now,
        deploy_root: !args.no_root,
    };
    run_until_ctrl_c(opts).map_err(|e| e.to_string())
}
