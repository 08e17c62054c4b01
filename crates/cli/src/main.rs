//! `cocoon`: the one binary of the Cocoon network. Roles (`up`, `client`, `proxy`, `worker`,
//! `devnet`, ...) arrive with their crates; today it carries the protocol tools.
#![forbid(unsafe_code)]

mod attest_cmd;
mod tl_cmd;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tl { command } => tl_cmd::run(command),
        Command::Attest { command } => attest_cmd::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}
