//! The gateway inside your own program, without HTTP.
//!
//! ```text
//! cargo run -p cocoon-client --example library -- <root-address> [toncenter-url]
//! ```
//!
//! Against a local network (`cocoon up`): the root address is printed by `cocoon up`, the
//! toncenter URL defaults to the devnet's. The example reads the root contract, connects to
//! its registered proxies with a sim identity (test networks only), authorises with the
//! owner and secret below (their client contract must be funded and hold SHA-256 of the
//! secret, as `cocoon up` does for its own client; pass a wallet in `channels` to have the
//! gateway deploy and fund it), and streams one chat completion to stdout.

use std::io::Write;
use std::time::Duration;

use cocoon_attest::{Policy, SimKey};
use cocoon_client::{Client, ClientConfig, Request};
use cocoon_ratls::cert::{Identity, SimSource};
use cocoon_ratls::config::CertResolver;
use cocoon_ratls::net::RatlsConnector;
use cocoon_ratls::verifier::{RatlsVerifier, VerifierConfig};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let root_address = cocoon_ton::parse_address(
        &args
            .next()
            .ok_or("usage: library <root-address> [toncenter-url]")?,
    )?;
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8081".into());
    let owner = std::env::var("COCOON_CLIENT_OWNER")
        .map_err(|_| "set COCOON_CLIENT_OWNER to the client contract owner")?;
    let secret = std::env::var("COCOON_CLIENT_SECRET")
        .map_err(|_| "set COCOON_CLIENT_SECRET to the client secret")?;

    let chain = cocoon_ton::Toncenter::with_url(&url)?;
    let root = cocoon_ton::chain::load_root_config(&chain, &root_address).await?;

    // A sim RA-TLS identity; on TEE hardware use cocoon_ratls::cert::TsmTdxSource instead.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let identity = Identity::generate(&SimSource(SimKey::generate()?), now - 60)?;
    let connector = RatlsConnector::new(
        CertResolver::new(&identity)?,
        RatlsVerifier::new(VerifierConfig::new(Policy::sim_test())),
        28,
        cocoon_net::Config::default(),
    )?;

    let owner = cocoon_ton::parse_address(&owner)?;
    let handle = Client::start(ClientConfig {
        root_address: Some(root_address),
        is_test: true,
        ..ClientConfig::new(root, owner, secret.into_bytes(), connector)
    })
    .await?;
    if !handle.wait_ready(Duration::from_secs(30)).await {
        return Err(format!("no proxy ready: {:?}", handle.proxies()).into());
    }

    let mut answer = handle
        .request(Request::chat(&json!({
            "model": "SmolLM2-135M-Instruct",
            "messages": [{"role": "user", "content": "Say hello in French."}],
            "stream": true,
            "max_tokens": 32,
        })))
        .await?;
    eprintln!("status {} via {}", answer.status, answer.proxy);
    let mut out = std::io::stdout();
    while let Some(chunk) = answer.next_chunk().await {
        out.write_all(&chunk?)?;
        out.flush()?;
    }
    if let Some(u) = answer.usage() {
        eprintln!("{} tokens, {} nanoTON", u.total_tokens, u.cost_nanoton);
    }
    handle.shutdown().await;
    Ok(())
}
