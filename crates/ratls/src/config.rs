//! rustls configurations for RA-TLS: TLS 1.3 only,
//! `TLS_AES_128_GCM_SHA256` and `TLS_AES_256_GCM_SHA384` only, ring provider, mutual
//! authentication with [`RatlsVerifier`] on both sides, and **no resumption or tickets**
//! (a resumed session would skip attestation).

use std::sync::{Arc, RwLock};

use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use crate::cert::{CertError, Identity};
use crate::verifier::RatlsVerifier;
#[cfg(feature = "net")]
use crate::{cert::EvidenceSource, verifier::Clock};

/// The ring provider restricted to the two AES-GCM suites of TLS 1.3.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384],
        ..rustls::crypto::ring::default_provider()
    })
}

/// Serves the current certificate to both server and client handshakes. [`Self::set`]
/// swaps in a refreshed one: new handshakes use it, established connections are not
/// affected.
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertResolver")
    }
}

impl CertResolver {
    /// A resolver that always presents `identity`'s certificate.
    pub fn new(identity: &Identity) -> Result<Arc<Self>, CertError> {
        Ok(Self::from_certified_key(identity.certified_key()?))
    }

    /// From an already built key (tests use it to present chains).
    pub fn from_certified_key(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(CertResolver {
            current: RwLock::new(key),
        })
    }

    /// Replace the certificate (e.g. a refresh before expiry).
    pub fn set(&self, identity: &Identity) -> Result<(), CertError> {
        let key = identity.certified_key()?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(())
    }

    /// The certificate currently served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        sigschemes
            .contains(&SignatureScheme::ED25519)
            .then(|| self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Server configuration: client certificates mandatory, no session storage, no tickets.
pub fn server_config(
    certs: Arc<CertResolver>,
    verifier: Arc<RatlsVerifier>,
) -> Result<ServerConfig, rustls::Error> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// Client configuration: presents our certificate, resumption disabled.
pub fn client_config(
    certs: Arc<CertResolver>,
    verifier: Arc<RatlsVerifier>,
) -> Result<ClientConfig, rustls::Error> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(certs);
    cfg.resumption = Resumption::disabled();
    Ok(cfg)
}

/// Regenerate the certificate every `every` with fresh evidence and swap
/// it into `resolver`. Generation runs on the blocking pool (configfs-tsm is file I/O);
/// a failed refresh is logged and retried at the next tick, the old certificate staying
/// in use. Abort the handle to stop.
#[cfg(feature = "net")]
pub fn spawn_refresh(
    resolver: Arc<CertResolver>,
    source: Arc<dyn EvidenceSource>,
    clock: Clock,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; the current cert is fresh
        loop {
            tick.tick().await;
            let source = Arc::clone(&source);
            let now = clock();
            let res =
                tokio::task::spawn_blocking(move || Identity::generate(source.as_ref(), now)).await;
            match res {
                Ok(Ok(id)) => match resolver.set(&id) {
                    Ok(()) => {
                        tracing::info!(not_after = id.not_after(), "ra-tls certificate refreshed")
                    }
                    Err(e) => tracing::warn!(error = %e, "ra-tls certificate refresh failed"),
                },
                Ok(Err(e)) => tracing::warn!(error = %e, "ra-tls certificate refresh failed"),
                Err(e) => tracing::warn!(error = %e, "ra-tls certificate refresh task failed"),
            }
        }
    })
}
