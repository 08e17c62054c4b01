//! `cocoon`: the one binary of the Cocoon network: `up` (the whole network on one machine),
//! the roles (`worker`, `proxy`, `client`, `devnet`) and the tools (`tl`, `attest`, `model`,
//! `wallet`, `root`, `image`, `explorer`).
#![forbid(unsafe_code)]

mod attest_cmd;
mod client_cmd;
mod config;
mod devnet_cmd;
mod explorer_cmd;
mod image_cmd;
mod kms_cmd;
mod model_cmd;
mod proxy_cmd;
mod receipt_cmd;
mod role;
mod root_cmd;
mod tl_cmd;
mod up_cmd;
mod wallet_cmd;
mod worker_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cocoon", version, about = "Cocoon: confidential AI inference on TON", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect and build COCOON TL frames and objects.
    Tl {
        #[command(subcommand)]
        command: tl_cmd::TlCommand,
    },
    /// Verify TDX quotes and SEV-SNP reports; show this machine's TEE.
    Attest {
        #[command(subcommand)]
        command: attest_cmd::AttestCommand,
    },
    /// Manage the worker's model store (pull, list, verify).
    Model(model_cmd::ModelArgs),
    /// TEE guest images: run one under QEMU, predict its measurements, measure a role's
    /// configuration at boot.
    Image {
        #[command(subcommand)]
        command: image_cmd::ImageCmd,
    },
    /// Run the embedded local TON chain (toncenter v2 API, Cocoon root deployed).
    Devnet(devnet_cmd::DevnetArgs),
    /// A standard TON wallet (v4r2/v5r1) from a key file: new, show, balance, send.
    Wallet {
        #[command(subcommand)]
        command: wallet_cmd::WalletCommand,
    },
    /// Read the root contract's configuration; as its owner, change it.
    Root {
        #[command(subcommand)]
        command: root_cmd::RootCommand,
    },
    /// Serve a model to the network's proxies (embedded llama.cpp or an OpenAI-compatible
    /// server) and earn for every token.
    Worker(Box<worker_cmd::WorkerArgs>),
    /// Admit attested workers, route and meter clients' requests, settle on chain.
    Proxy(Box<proxy_cmd::ProxyArgs>),
    /// The local OpenAI-compatible gateway (verifies proxies, fails over, pays per token);
    /// `status|topup|withdraw|charge|close` operate a running one, `key` creates API keys.
    Client(Box<client_cmd::ClientArgs>),
    /// The whole network on this machine: devnet, proxy, workers, the client's
    /// OpenAI-compatible API on 127.0.0.1:10000 and the network explorer; Ctrl-C stops it,
    /// a rerun resumes it.
    Up(up_cmd::UpArgs),
    /// Key release: `serve` (for attested proxies and workers the root allows), `fetch`.
    Kms {
        #[command(subcommand)]
        command: kms_cmd::KmsCommand,
    },
    /// The network explorer (read-only web pages and JSON): models and prices, their
    /// history, proxies, workers and payouts, from a TON endpoint and the proxies' stats.
    Explorer(explorer_cmd::ExplorerArgs),
    /// Answer receipts: `verify` a saved one offline.
    Receipt {
        #[command(subcommand)]
        command: receipt_cmd::ReceiptCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tl { command } => tl_cmd::run(command),
        Command::Attest { command } => attest_cmd::run(command),
        Command::Devnet(args) => devnet_cmd::run(args),
        Command::Model(args) => model_cmd::run(args),
        Command::Image { command } => image_cmd::run(command),
        Command::Wallet { command } => wallet_cmd::run(command),
        Command::Root { command } => root_cmd::run(command),
        Command::Worker(args) => {
            // Before any thread starts: llama.cpp's OpenMP threads spin only briefly at a
            // barrier before they sleep (cocoon_llama::openmp); this returns only if nothing
            // had to change.
            if let Err(e) = cocoon_llama::openmp::ensure_short_spin() {
                eprintln!("warning: could not set GOMP_SPINCOUNT: {e}");
            }
            return worker_cmd::main(*args);
        }
        Command::Proxy(args) => return proxy_cmd::main(*args),
        Command::Client(args) => return client_cmd::main(*args),
        Command::Up(args) => return up_cmd::main(args),
        Command::Kms { command } => return kms_cmd::main(command),
        Command::Receipt { command } => receipt_cmd::run(command),
        Command::Explorer(args) => explorer_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}
