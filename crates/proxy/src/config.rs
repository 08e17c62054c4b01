//! What a proxy is started with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cocoon_ratls::config::CertResolver;
use cocoon_ratls::verifier::RatlsVerifier;
use cocoon_ton::StdAddr;
use cocoon_ton::keys::SigningKey;
use cocoon_ton::root::RootConfig;

use crate::chain::ClientChain;
use crate::meter::Meter;
use crate::router::RouterConfig;

/// Timeouts and limits of the network side.
#[derive(Debug, Clone)]
pub struct Timings {
    /// Each handshake query (default 30 s).
    pub handshake_timeout: Duration,
    /// How long a long (on-chain) authorisation may take (default 300 s).
    pub long_auth_timeout: Duration,
    /// After a cancel or deadline, how long to wait for the worker's final usage report.
    pub cancel_grace: Duration,
    /// Longest request deadline accepted, whatever the client asks.
    pub max_request_timeout: Duration,
    /// Most concurrent TLS handshakes per listener.
    pub max_handshakes: usize,
    /// Most requests one client session may have running at once; more are refused (each
    /// holds a task, a reservation and a worker slot).
    pub max_session_requests: usize,
    /// Answer bytes one request may have waiting for a slow client before it is stopped.
    pub request_buffer_bytes: usize,
    /// Most requests waiting per model while every worker of it is busy; more are refused
    /// (our client answers 429 with `Retry-After`). 0: none wait.
    pub queue_max_per_model: usize,
    /// Longest a request waits in the queue (its own deadline may end the wait sooner).
    pub queue_max_wait: Duration,
    /// The proxy pings a worker after this long of silence from it, and again every this
    /// long; a worker silent for two of these is suspect (no new requests, waited for as a
    /// busy one; a request it has not started answering is tried on another worker).
    /// `None`: no pings, no suspicion.
    pub worker_ping: Option<Duration>,
    /// How often the contracts of authorised clients and of clients with unsettled usage are
    /// read again (credit, closing); `None` never (read at authorisation only).
    pub client_watch_interval: Option<Duration>,
    /// A client contract read for a handshake is reused this long.
    pub lookup_ttl: Duration,
    /// Contract reads one peer address may cause by handshakes, per minute and at once.
    pub lookups_per_minute: u32,
    /// Contract reads one peer address may cause at once.
    pub lookup_burst: u32,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            handshake_timeout: Duration::from_secs(30),
            long_auth_timeout: Duration::from_secs(300),
            cancel_grace: Duration::from_secs(5),
            max_request_timeout: Duration::from_secs(3600),
            max_handshakes: 64,
            max_session_requests: 256,
            request_buffer_bytes: crate::registry::REQUEST_BUFFER_BYTES,
            queue_max_per_model: 256,
            queue_max_wait: Duration::from_secs(300),
            worker_ping: Some(Duration::from_secs(5)),
            client_watch_interval: Some(Duration::from_secs(30)),
            lookup_ttl: Duration::from_secs(10),
            lookups_per_minute: 30,
            lookup_burst: 10,
        }
    }
}

/// The admin HTTP server's settings.
pub use cocoon_service::admin::AdminConfig;

/// Everything [`crate::Proxy::start`] needs.
pub struct ProxyConfig {
    /// Where workers connect (`127.0.0.1:0` picks a port; see the handle).
    pub worker_listen: SocketAddr,
    /// Where clients connect.
    pub client_listen: SocketAddr,
    /// The proxy's RA-TLS certificate.
    pub certs: Arc<CertResolver>,
    /// Verifies workers' attestation.
    pub worker_verifier: Arc<RatlsVerifier>,
    /// Verifies clients' certificates (clients need no TEE).
    pub client_verifier: Arc<RatlsVerifier>,
    /// Proof-of-work difficulty demanded before TLS (in bits).
    pub pow_difficulty: u32,
    /// A test network proxy; simulated attestation is accepted only then.
    pub is_test: bool,
    /// The root configuration at start (see `ProxyHandle::update_root`).
    pub root: RootConfig,
    /// Signs receipts; its public key is announced in the handshakes.
    pub signing_key: Arc<SigningKey>,
    /// The proxy owner's address.
    pub owner_address: StdAddr,
    /// The proxy contract.
    pub proxy_sc: StdAddr,
    /// The books.
    pub meter: Arc<dyn Meter>,
    /// Client contract reads for authorisation.
    pub chain: Arc<dyn ClientChain>,
    /// Admin HTTP server, if any.
    pub admin: Option<AdminConfig>,
    /// Worker selection.
    pub router: RouterConfig,
    /// Time limits.
    pub timings: Timings,
    /// Settings of the framed sessions.
    pub net: cocoon_net::Config,
}

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyStartError {
    /// A verifier accepts sim attestation on a production network.
    #[error(
        "the {0} verifier accepts simulated attestation but the proxy is not on a test network"
    )]
    SimOnProduction(&'static str),
    /// The worker verifier accepts GPU evidence not bound to the worker's key on a
    /// production network.
    #[error(
        "the worker verifier accepts GPU evidence not bound to the worker's key (or unsigned RIMs) but the proxy is not on a test network"
    )]
    UnboundGpuNonceOnProduction,
    /// The root's network kind differs from the proxy's.
    #[error("the root configuration is for a test network but the proxy is not (or the reverse)")]
    TestMismatch,
    /// The root lacks a contract code.
    #[error("the root configuration has no {0} code: contract addresses cannot be derived")]
    MissingCode(&'static str),
    /// A listener could not bind.
    #[error("bind {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why binding failed.
        reason: String,
    },
    /// The admin server could not start.
    #[error("admin: {0}")]
    Admin(String),
    /// The TLS configuration could not be built.
    #[error("tls: {0}")]
    Tls(String),
}
