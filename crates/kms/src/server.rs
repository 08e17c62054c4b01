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
}

impl<C: Chain> KeyService<C> {
    /// Releases keys derived from `master` to proxies and workers the root allows, and
    /// `master` itself to KMS instances running one of `kms_images`.
    pub fn new(master: Master, root: RootAllowlist<C>, kms_images: Vec<[u8; 32]>) -> Self {
        KeyService {
            master,
            root,
            kms_images,
        }
    }

    /// The answer to `req` from a peer whose attestation established `peer`.
    pub async fn answer(&self, peer: &VerifiedPeer, req: &KeyRequest) -> KeyResponse {
        let refuse = |reason: Refusal, detail: String| KeyResponse::Refused { reason, detail };
        if let Err(e) = req.check() {
            return refuse(Refusal::BadRequest, e);
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
