//! The whole `cocoon kms serve` process: its RA-TLS identity, the master (sealed on disk,
//! from a peer, or new), the root's allowlists and the key-release listener. The command line
//! only parses settings and calls [`run`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cocoon_attest::Backend;
use cocoon_ratls::net::{RatlsAcceptor, RatlsConnector};
use cocoon_service::identity::{self, RoleIdentity};
use cocoon_service::kms::parse_image_hashes;

use crate::allow::RootAllowlist;
use crate::master::{PeerKms, load_master};
use crate::seal::SealKey;
use crate::server::KeyService;
use crate::settings::Settings;

/// The file the sealed master is kept in, below the state directory.
pub const SEALED_MASTER: &str = "master.sealed";

/// The sealing key this TEE offers, if any.
fn seal_key(tee: Backend, state_dir: &std::path::Path) -> Result<Option<SealKey>, String> {
    match tee {
        Backend::Sim => {
            let path = state_dir.join("sim-key.pk8");
            let sim = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(Some(SealKey::sim(
                &sim,
                &cocoon_attest::sim::sim_image_hash(),
            )))
        }
        #[cfg(feature = "snp-seal")]
        Backend::SevSnp => SealKey::snp().map(Some).map_err(|e| e.to_string()),
        _ => Ok(None),
    }
}

/// Runs a KMS until `shutdown` resolves.
pub async fn run(s: Settings, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let c = s.common();
    let start = c.start("kms")?;
    let state_dir = &start.state_dir;
    let RoleIdentity {
        resolver,
        source,
        tee,
    } = identity::identity(c.tee().map_err(|e| e.to_string())?, c.is_test, state_dir)?;
    let _refresh = identity::spawn_identity_refresh(&resolver, source);
    let verifier = identity::peer_verifier(c.verification(&s.peer_policy, &start))?;
    let kms_images = parse_image_hashes(&s.kms_image_hashes)?;

    let seal = seal_key(tee, state_dir)?;
    if seal.is_none() {
        eprintln!("kms: {tee} offers no sealing key here: the master stays in memory only");
    }
    let peer = if s.peer.is_empty() {
        None
    } else {
        Some(PeerKms {
            addr: s.peer.clone(),
            connector: RatlsConnector::new(
                Arc::clone(&resolver),
                Arc::clone(&verifier),
                cocoon_ratls::pow::CLIENT_MAX_DIFFICULTY,
                cocoon_net::Config::default(),
            )
            .map_err(|e| e.to_string())?,
            kms_images: kms_images.clone(),
            patience: Duration::from_secs(30),
        })
    };
    let sealed = state_dir.join(SEALED_MASTER);
    let (master, from) = load_master(&sealed, seal.as_ref(), peer.as_ref(), s.new_master).await?;

    let chain = c.chain(&start)?;
    let root = cocoon_ton::parse_address(&s.root_address).map_err(|e| e.to_string())?;
    let allow = RootAllowlist::new(chain, root, Duration::from_secs(s.root_cache_seconds));
    let service = Arc::new(KeyService::new(master, allow, kms_images, !s.is_test));
    let acceptor = RatlsAcceptor::new(
        resolver,
        verifier,
        s.pow_difficulty,
        cocoon_net::Config::default(),
    )
    .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(&s.listen)
        .await
        .map_err(|e| format!("listen {}: {e}", s.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!(
        "kms: listening on {addr}, tee {}, master {from:?}, state {}",
        tee.name(),
        state_dir.display()
    );
    let task = tokio::spawn(service.serve(listener, acceptor));
    cocoon_service::process::write_ready_file(&s.ready_file, &[("listen", addr)])?;
    shutdown.await;
    task.abort();
    Ok(())
}
