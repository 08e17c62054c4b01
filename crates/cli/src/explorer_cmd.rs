//! `cocoon explorer`: the read-only network explorer (see `cocoon-explorer`): the root
//! contract's models, prices and their history, the proxies and their workers, from any
//! toncenter-v2 endpoint (the devnet of `cocoon up` or toncenter) and the proxies' public
//! stats (`/public.json` on their admin servers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use cocoon_service::chain::TonSettings;

/// Options of `cocoon explorer`.
#[derive(Debug, Args)]
pub(crate) struct ExplorerArgs {
    /// The root contract's address.
    #[arg(long)]
    root: String,
    /// A toncenter-v2 endpoint (the devnet's URL or https://toncenter.com/api/v2); repeat
    /// it for independently operated endpoints that must agree (--quorum).
    #[arg(long = "chain", required = true)]
    chain: Vec<String>,
    /// A file holding the API key of every --chain endpoint.
    #[arg(long)]
    chain_key_file: Option<String>,
    /// How many --chain endpoints must give the same answer.
    #[arg(long, default_value_t = 1)]
    quorum: u32,
    /// Where to serve the pages.
    #[arg(long, default_value = "127.0.0.1:9300")]
    bind: SocketAddr,
    /// A proxy's public stats URL (http://ADMIN/public.json); repeat it for each proxy
    /// followed (at most 32).
    #[arg(long = "proxy-stats")]
    proxy_stats: Vec<String>,
    /// Seconds between reads.
    #[arg(long, default_value_t = 10)]
    poll_secs: u64,
    /// Longest a single read may take, in seconds.
    #[arg(long, default_value_t = 8)]
    timeout_secs: u64,
    /// A host name the pages answer to besides loopback ones and the bound address
    /// (repeatable), for an explorer behind a reverse proxy.
    #[arg(long = "allowed-host")]
    allowed_hosts: Vec<String>,
    /// Once serving, write {"bind": "<address bound>"} to this file (atomically; removed at
    /// start): with --bind 127.0.0.1:0, the port the system chose.
    #[arg(long)]
    ready_file: Option<String>,
    /// Which registered proxies the explorer's RA-TLS handshake accepts, as the client's
    /// `proxy_policy`: `any`, `tdx`, `sev-snp`, `sim` or a JSON policy file.
    #[arg(long, default_value = "any")]
    proxy_policy: String,
    /// A test network (as the client's `is_test`): sim and fake-tdx proxies are accepted.
    #[arg(long)]
    test: bool,
    /// PCCS base URL for TDX collateral (as the client's `pccs_url`; empty: only the
    /// collateral cached in the state directory).
    #[arg(long, default_value = "")]
    pccs_url: String,
    /// AMD KDS base URL for SEV-SNP CRLs (as the client's `kds_url`).
    #[arg(long, default_value = "")]
    kds_url: String,
    /// Where collateral and CRLs are cached (default: the explorer's state directory).
    #[arg(long, default_value = "")]
    state_dir: String,
    /// Do not dial the registered proxies (their TEE and image are then only as reported).
    #[arg(long)]
    no_verify: bool,
    /// Most proof-of-work bits the explorer solves for a proxy's handshake: each check costs
    /// up to 2^bits hashes of the explorer's CPU, once a minute per registered proxy, so it
    /// pays less than a client with money at stake would (28); a proxy demanding more is
    /// shown as unverified, with what it demanded. Proxies demand 20 by default.
    #[arg(long, default_value_t = EXPLORER_POW_MAX_BITS,
          value_parser = clap::value_parser!(u32).range(0..=cocoon_ratls::pow::CLIENT_MAX_DIFFICULTY as i64))]
    pow_max_bits: u32,
}

/// The explorer's default for `--pow-max-bits`: a proxy's default demand (20) with room for
/// two more bits.
const EXPLORER_POW_MAX_BITS: u32 = 22;

/// Most proxies followed.
const MAX_PROXIES: usize = 32;

/// An endpoint as shown on the page: scheme, host and path, no credentials or query.
fn shown(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or_default();
    match no_query.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
            format!("{scheme}://{rest}")
        }
        None => no_query.to_owned(),
    }
}

/// How the explorer dials the registered proxies: as a client without money does (an
/// unattested certificate, which a proxy's client port accepts before any payment), with
/// the client's proxy verification settings.
fn proxy_check(args: &ExplorerArgs) -> Result<cocoon_explorer::verify::ProxyCheck, String> {
    use cocoon_service::identity::{Pccs, PeerVerification, TeeChoice, proxy_dialer};
    let state_dir = cocoon_service::process::state_dir(&args.state_dir, "explorer")?;
    let dialer = proxy_dialer(
        TeeChoice::Fixed(cocoon_attest::Backend::Unattested),
        PeerVerification {
            policy: &args.proxy_policy,
            is_test: args.test,
            pccs: Pccs {
                url: &args.pccs_url,
                extra_roots: &[],
            },
            kds_url: &args.kds_url,
            state_dir: &state_dir,
            allow_unattested: false,
            gpu: None,
        },
        args.pow_max_bits,
        None,
    )
    .map_err(|e| format!("--proxy-policy: {e}"))?;
    Ok(cocoon_explorer::verify::ProxyCheck {
        connector: dialer.connector,
        ttl: cocoon_explorer::verify::VERDICT_TTL,
    })
}

/// Serves the explorer until Ctrl-C or SIGTERM.
pub(crate) fn run(args: ExplorerArgs) -> Result<(), String> {
    if args.proxy_stats.len() > MAX_PROXIES {
        return Err(format!("--proxy-stats: at most {MAX_PROXIES}"));
    }
    for u in &args.proxy_stats {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(format!("--proxy-stats {u:?} is not an http(s):// URL"));
        }
    }
    if args.poll_secs == 0 || args.timeout_secs == 0 {
        return Err("--poll-secs and --timeout-secs must be at least 1".into());
    }
    let root = cocoon_ton::parse_address(&args.root).map_err(|e| format!("--root: {e}"))?;
    let (url, urls): (&str, &[String]) = if args.chain.len() == 1 {
        (&args.chain[0], &[])
    } else {
        ("", &args.chain)
    };
    let ton = TonSettings {
        url,
        url_given: args.chain.len() == 1,
        urls,
        key_file: args.chain_key_file.as_deref().unwrap_or(""),
        key_files: &[],
        quorum: args.quorum,
    };
    ton.check().map_err(|e| {
        // The setting names of the roles, as this command's flags.
        e.to_string()
            .replace("ton_api_key_file", "--chain-key-file")
            .replace("ton_quorum", "--quorum")
            .replace("ton_urls", "--chain")
            .replace("ton_url", "--chain")
            .replace("--chain/--chain", "--chain")
    })?;
    let chain = ton.chain(&[])?;
    let ready_file = args.ready_file.clone().unwrap_or_default();
    cocoon_service::process::clear_ready_file(&ready_file)?;
    cocoon_service::process::init_logging("info");
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let endpoints = args.chain.iter().map(|u| shown(u)).collect();
    rt.block_on(async move {
        let chain = Arc::new(chain);
        let check = if args.no_verify {
            None
        } else {
            Some(proxy_check(&args)?)
        };
        let cfg = cocoon_explorer::ExplorerConfig {
            root,
            bind: args.bind,
            proxy_stats: args.proxy_stats,
            endpoints,
            poll: Duration::from_secs(args.poll_secs),
            timeout: Duration::from_secs(args.timeout_secs),
            allowed_hosts: args.allowed_hosts,
            check,
        };
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (addr, task) = cocoon_explorer::spawn(cfg, chain, stop_rx).await?;
        eprintln!("cocoon explorer: serving http://{addr}/ (JSON: http://{addr}/api/network)");
        cocoon_service::process::write_ready_file(&ready_file, &[("bind", addr)])?;
        cocoon_service::process::stop_signal().await;
        let _ = stop.send(true);
        let _ = task.await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_shown_without_credentials() {
        assert_eq!(
            shown("https://user:key@toncenter.com/api/v2?api_key=k#x"),
            "https://toncenter.com/api/v2"
        );
        assert_eq!(shown("http://127.0.0.1:8081"), "http://127.0.0.1:8081");
    }
}
