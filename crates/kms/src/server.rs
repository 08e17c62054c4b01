//! The key-release server: after mutual RA-TLS, one request and one answer per connection
//! (`cocoon_service::kms`). Keys go only to a peer whose attestation verified (the TLS
//! handshake) and whose image hash is allowed for the role it claims; refusals are logged with
//! their reason and never with key material.

use std::sync::Arc;
use std::time::Duration;

use cocoon_attest::VerifiedPeer;
use cocoon_ratls::net::RatlsAcceptor;
use cocoon_service::kms::{
    DEFAULT_TIMEOUT, KeyRequest, KeyResponse, KmsRole, Purpose, Refusal, ReleasedKey, read_message,
    write_message,
};
use cocoon_ton::chain::Chain;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::allow::RootAllowlist;
use crate::derive::Master;

/// Most connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// What the KMS releases, and to whom.
pub struct KeyService<C> {
    master: Master,
    root: RootAllowlist<C>,
    kms_images: Vec<[u8; 32]>,
    require_measured: bool,
}

/// The identity a proxy or worker may have keys for: the one in the configuration its TEE
/// measured (`config`, checked against `peer`'s register), or, where `require_measured` is
/// off (test networks) and the peer shows no configuration, the one it claims.
pub fn bound_identity(
    peer: &VerifiedPeer,
    req: &KeyRequest,
    require_measured: bool,
) -> Result<(), String> {
    use cocoon_service::measured::{Measured, check, register_of};
    let register = register_of(peer.measurements());
    let Some(config) = &req.config else {
        // A test network may take the claim.
        return match require_measured {
            false => Ok(()),
            true => Err("show the configuration this TEE measured (its identity is in it)".into()),
        };
    };
    match check(&register, config.as_bytes()).map_err(|e| e.to_string())? {
        Measured::Matches(_) => {}
        Measured::NotMeasured if !require_measured => {}
        Measured::NotMeasured => {
            return Err("this peer's evidence commits to no configuration".into());
        }
    }
    let table: toml::Table = toml::from_str(config).map_err(|e| format!("configuration: {e}"))?;
    let role = table
        .get(req.role.name())
        .and_then(toml::Value::as_table)
        .ok_or_else(|| {
            format!(
                "the measured configuration has no [{}] table",
                req.role.name()
            )
        })?;
    let text = |k: &str| role.get(k).and_then(toml::Value::as_str).unwrap_or("");
    let measured = cocoon_service::kms::identity_of(text("owner_address"), text("kms_instance"))
        .map_err(|e| format!("the measured configuration's owner_address: {e}"))?;
    if measured != req.identity {
        return Err(format!(
            "identity {} is not the measured configuration's ({measured})",
            req.identity
        ));
    }
    Ok(())
}

impl<C: Chain> KeyService<C> {
    /// Releases keys derived from `master` to proxies and workers the root allows (for the
    /// identity in their measured configuration; with `require_measured` off, on test
    /// networks, for the identity a peer without one claims), and `master` itself to KMS
    /// instances running one of `kms_images`.
    pub fn new(
        master: Master,
        root: RootAllowlist<C>,
        kms_images: Vec<[u8; 32]>,
        require_measured: bool,
    ) -> Self {
        KeyService {
            master,
            root,
            kms_images,
            require_measured,
        }
    }

    /// The answer to `req` from a peer whose attestation established `peer`.
    pub async fn answer(&self, peer: &VerifiedPeer, req: &KeyRequest) -> KeyResponse {
        let refuse = |reason: Refusal, detail: String| KeyResponse::Refused { reason, detail };
        if let Err(e) = req.check() {
            return refuse(Refusal::BadRequest, e);
        }
        if req.role != KmsRole::Kms
            && let Err(e) = bound_identity(peer, req, self.require_measured)
        {
            return refuse(Refusal::IdentityNotMeasured, e);
        }
        let image = peer.image_hash();
        let allowed = match req.role {
            KmsRole::Kms => Ok(self.kms_images.contains(image)),
            role => self.root.allows(role, image).await,
        };
        match allowed {
            Err(reason) => refuse(reason, "try again later".into()),
            Ok(false) => refuse(
                Refusal::ImageNotAllowed,
                format!(
                    "image {} is not allowed for role {}",
                    hex::encode(image),
                    req.role.name()
                ),
            ),
            Ok(true) => KeyResponse::Released {
                keys: req
                    .purposes
                    .iter()
                    .map(|&purpose| {
                        let secret = match purpose {
                            Purpose::Master => self.master.share(),
                            p => self.master.derive(req.role, &req.identity, p),
                        };
                        ReleasedKey {
                            purpose,
                            key: hex::encode(secret.0),
                        }
                    })
                    .collect(),
            },
        }
    }

    /// Serves `listener` with `acceptor` until the task is aborted.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, acceptor: RatlsAcceptor)
    where
        C: 'static,
    {
        let acceptor = Arc::new(acceptor);
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let (tcp, addr) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "kms: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let this = Arc::clone(&self);
            let acceptor = Arc::clone(&acceptor);
            tokio::spawn(async move {
                this.connection(&acceptor, tcp, addr).await;
                drop(permit);
            });
        }
    }

    async fn connection(
        &self,
        acceptor: &RatlsAcceptor,
        tcp: tokio::net::TcpStream,
        addr: std::net::SocketAddr,
    ) {
        let (mut tls, peer) = match acceptor.accept_tls(tcp).await {
            Ok(x) => x,
            Err(e) => {
                match e.verify_error() {
                    Some(v) => {
                        tracing::warn!(%addr, reason = "attestation failed", error = %v, "kms: refused")
                    }
                    None => tracing::debug!(%addr, error = %e, "kms: handshake failed"),
                }
                return;
            }
        };
        let exchange = async {
            let req: KeyRequest = match read_message(&mut tls).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(%addr, reason = "bad request", error = %e, "kms: refused");
                    let resp = KeyResponse::Refused {
                        reason: Refusal::BadRequest,
                        detail: e.to_string(),
                    };
                    let _ = write_message(&mut tls, &resp).await;
                    return;
                }
            };
            let resp = self.answer(&peer, &req).await;
            let image = hex::encode(peer.image_hash());
            let purposes: Vec<&str> = req.purposes.iter().map(|p| p.name()).collect();
            match &resp {
                KeyResponse::Released { .. } => tracing::info!(
                    %addr, role = req.role.name(), identity = %req.identity, %image,
                    ?purposes, "kms: released"
                ),
                KeyResponse::Refused { reason, detail } => tracing::warn!(
                    %addr, role = req.role.name(), identity = %req.identity, %image,
                    reason = %reason, detail = %detail, "kms: refused"
                ),
            }
            if let Err(e) = write_message(&mut tls, &resp).await {
                tracing::debug!(%addr, error = %e, "kms: answer not delivered");
            }
            use tokio::io::AsyncWriteExt;
            let _ = tls.shutdown().await;
        };
        if tokio::time::timeout(DEFAULT_TIMEOUT, exchange)
            .await
            .is_err()
        {
            tracing::debug!(%addr, "kms: exchange timed out");
        }
    }
}
