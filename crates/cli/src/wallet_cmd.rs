//! `cocoon wallet`: a standard TON wallet (v4r2 or v5r1) driven from a key file.
//!
//! Operators need a wallet to fund client stakes, proxy stakes and root operations; this is
//! the smallest one that works against any toncenter-v2 endpoint, the devnet included. The key
//! never leaves its file (mode 0600); the address is derived from it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use cocoon_ton::keys::SigningKey;
use cocoon_ton::ops::{self, WalletOps};
use cocoon_ton::wallet::{SenderEvent, Wallet, WalletVersion};
use cocoon_ton::{StdAddr, format_ton, friendly_address, parse_address, parse_ton};
use cocoon_ton::{Toncenter, ToncenterConfig};

/// Where the chain is and which wallet to use.
#[derive(Debug, Clone, Args)]
pub(crate) struct ChainOpts {
    /// toncenter v2 base URL (the devnet by default).
    #[arg(long = "ton", default_value = "http://127.0.0.1:8081", global = true)]
    pub(crate) ton: String,
    /// File holding the toncenter API key (sent as X-API-Key).
    #[arg(long, global = true)]
    pub(crate) api_key_file: Option<PathBuf>,
    /// PEM bundle of CA certificates to trust besides the WebPKI roots (SSL_CERT_FILE is not
    /// read).
    #[arg(long, global = true)]
    pub(crate) extra_ca_file: Option<PathBuf>,
}

impl ChainOpts {
    /// A client for `--ton`.
    pub(crate) fn client(&self) -> Result<Toncenter, String> {
        let mut cfg = ToncenterConfig::new(self.ton.clone());
        if let Some(p) = &self.api_key_file {
            let k = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            cfg.api_key = Some(k.trim().to_owned());
        }
        if let Some(p) = &self.extra_ca_file {
            cfg.extra_roots = cocoon_service::chain::load_ca_bundle(p)?;
        }
        Toncenter::new(cfg).map_err(|e| e.to_string())
    }
}

/// Which wallet contract a key controls.
#[derive(Debug, Clone, Args)]
pub(crate) struct WalletOpts {
    /// Ed25519 seed file (32 raw bytes or 64 hex digits, mode 0600).
    #[arg(long)]
    pub(crate) key: PathBuf,
    /// Wallet contract: v4r2 or v5r1.
    #[arg(long = "wallet-version", default_value = "v4r2")]
    pub(crate) version: WalletVersion,
    /// Testnet ids and address flags.
    #[arg(long)]
    pub(crate) testnet: bool,
}

impl WalletOpts {
    /// Loads the key and the wallet it controls.
    pub(crate) fn load(&self) -> Result<(SigningKey, Wallet), String> {
        let key = SigningKey::from_file(&self.key).map_err(|e| e.to_string())?;
        let wallet = self.wallet(key.public_key());
        Ok((key, wallet))
    }

    /// The wallet sending through `chain`, waiting at most `wait` seconds for each message to
    /// be accepted; what it sends is reported on stderr.
    pub(crate) fn ops(&self, chain: Toncenter, wait: u64) -> Result<WalletOps<Toncenter>, String> {
        let (key, wallet) = self.load()?;
        let mut ops = WalletOps::new(chain, wallet, key).map_err(|e| e.to_string())?;
        ops.confirm_timeout = Duration::from_secs(wait);
        ops.on_event(|ev| match ev {
            SenderEvent::Sent { seqno, messages } => {
                eprintln!("sent external message seqno={seqno} carrying {messages} message(s)")
            }
            SenderEvent::Resent { seqno } => eprintln!("resent seqno={seqno}"),
            SenderEvent::Confirmed { .. } | SenderEvent::Expired { .. } => {}
        });
        Ok(ops)
    }

    fn wallet(&self, pk: [u8; 32]) -> Wallet {
        Wallet::on_network(self.version, pk, self.testnet)
    }
}

/// `cocoon wallet` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum WalletCommand {
    /// Create a new key file (mode 0600) and print the wallet address.
    New {
        #[command(flatten)]
        wallet: WalletOpts,
    },
    /// Print the wallet address and public key.
    Show {
        #[command(flatten)]
        wallet: WalletOpts,
    },
    /// Print the balance, status and seqno of a wallet (or of any --address).
    Balance {
        /// Key file of the wallet (or use --address).
        #[arg(long, conflicts_with = "address")]
        key: Option<PathBuf>,
        /// Wallet contract: v4r2 or v5r1.
        #[arg(long = "wallet-version", default_value = "v4r2")]
        version: WalletVersion,
        /// Testnet ids.
        #[arg(long)]
        testnet: bool,
        /// Any address instead of a key's wallet.
        #[arg(long)]
        address: Option<String>,
        #[command(flatten)]
        chain: ChainOpts,
    },
    /// Send TON and wait until the wallet's seqno advances.
    Send {
        #[command(flatten)]
        wallet: WalletOpts,
        /// Destination address (raw or user-friendly).
        #[arg(long)]
        to: String,
        /// Amount in TON (e.g. 1.5).
        #[arg(long)]
        amount: String,
        /// Text comment.
        #[arg(long)]
        comment: Option<String>,
        /// Send non-bounceable (for uninitialised destinations).
        #[arg(long)]
        no_bounce: bool,
        /// Seconds to wait for confirmation.
        #[arg(long, default_value_t = 60)]
        wait: u64,
        #[command(flatten)]
        chain: ChainOpts,
    },
}

/// A single-threaded tokio runtime for one command.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

fn print_address(label: &str, a: &StdAddr, testnet: bool) {
    println!("{label}: {}", friendly_address(a, false, testnet));
    println!("{label} (raw): {a}");
    println!(
        "{label} (bounceable): {}",
        friendly_address(a, true, testnet)
    );
}

/// Runs a `cocoon wallet` subcommand.
pub(crate) fn run(cmd: WalletCommand) -> Result<(), String> {
    let err = |e: ops::OpsError| e.to_string();
    match cmd {
        WalletCommand::New { wallet } => {
            let key = SigningKey::generate().map_err(|e| e.to_string())?;
            key.write_new_file(&wallet.key).map_err(|e| e.to_string())?;
            let w = wallet.wallet(key.public_key());
            println!("key written to {} (mode 0600)", wallet.key.display());
            print_address(
                "address",
                &w.address().map_err(|e| e.to_string())?,
                wallet.testnet,
            );
            Ok(())
        }
        WalletCommand::Show { wallet } => {
            let (key, w) = wallet.load()?;
            print_address(
                "address",
                &w.address().map_err(|e| e.to_string())?,
                wallet.testnet,
            );
            println!("public key: {}", hex::encode(key.public_key()));
            println!("wallet: {:?} wallet_id={}", w.version, w.wallet_id);
            Ok(())
        }
        WalletCommand::Balance {
            key,
            version,
            testnet,
            address,
            chain,
        } => {
            let (addr, wallet) = match (key, address) {
                (Some(key), None) => {
                    let opts = WalletOpts {
                        key,
                        version,
                        testnet,
                    };
                    let (_, w) = opts.load()?;
                    (w.address().map_err(|e| e.to_string())?, Some(w))
                }
                (None, Some(a)) => (parse_address(&a).map_err(|e| e.to_string())?, None),
                _ => return Err("give --key FILE or --address ADDR".into()),
            };
            let c = chain.client()?;
            let b = runtime()?
                .block_on(ops::balance(&c, &addr, wallet.as_ref()))
                .map_err(err)?;
            println!(
                "address: {}",
                friendly_address(&addr, wallet.is_none(), testnet)
            );
            println!(
                "balance: {} TON ({} nanoton)",
                format_ton(b.balance),
                b.balance
            );
            println!("status: {:?}", b.status);
            if let Some(seqno) = b.seqno {
                println!("seqno: {seqno}");
            }
            Ok(())
        }
        WalletCommand::Send {
            wallet,
            to,
            amount,
            comment,
            no_bounce,
            wait,
            chain,
        } => {
            let to = parse_address(&to).map_err(|e| e.to_string())?;
            let value = parse_ton(&amount).map_err(|e| e.to_string())?;
            let mut ops = wallet.ops(chain.client()?, wait)?;
            let seqno = runtime()?
                .block_on(ops::transfer(
                    &mut ops,
                    &to,
                    value,
                    comment.as_deref(),
                    !no_bounce,
                ))
                .map_err(err)?;
            println!(
                "sent {} TON to {to} (wallet seqno {seqno} accepted)",
                format_ton(value as u128)
            );
            Ok(())
        }
    }
}
