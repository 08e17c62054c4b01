//! What a gateway is started with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cocoon_net::BackoffConfig;
use cocoon_ratls::net::RatlsConnector;
use cocoon_ton::StdAddr;
use cocoon_ton::root::RootConfig;

use crate::payments::{AutoPay, ChannelOps};

/// Highest protocol version this client speaks (3 adds cancel).
pub(crate) const MAX_PROTO_VERSION: i32 = 3;
/// Lowest protocol version this client speaks.
pub(crate) const MIN_PROTO_VERSION: i32 = 1;

/// Everything [`crate::Client::start`] needs.
pub struct ClientConfig {
    /// The OpenAI-compatible HTTP API (and `/stats`, `/jsonstats`, `/metrics`); `None`: no
    /// HTTP server, library use only. An address beyond loopback needs `api_keys_file`.
    pub api_listen: Option<SocketAddr>,
    /// Web origins (`scheme://host[:port]`) whose pages may call the API from a browser;
    /// every other origin is refused (`cocoon_service::browser`).
    pub allowed_origins: Vec<String>,
    /// Host names the API answers to besides loopback ones and the address it is bound to
    /// (requests naming any other `Host` are refused against DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Proxy client addresses (`ip:port`) to use; empty: the root's registered proxies.
    pub proxies: Vec<String>,
    /// How many proxies to keep sessions with (failover needs two or more).
    pub connections: usize,
    /// The root contract configuration (whitelists, params, registered proxies).
    pub root: RootConfig,
    /// The root contract's address: when known, each proxy's contract address is checked
    /// against the one derived from its key and owner.
    pub root_address: Option<StdAddr>,
    /// Owner of this client's contracts (the wallet address when `channels` is set).
    pub owner_address: StdAddr,
    /// Secret whose SHA-256 the client contracts hold (short authorisation).
    pub secret: Vec<u8>,
    /// Test network (must match the root contract's `is_test` and the proxies').
    pub is_test: bool,
    /// RA-TLS connector (our certificate, the proxy verifier and its policy).
    pub connector: RatlsConnector,
    /// Refuse proxies whose image hash is not in the root's `proxy_hashes`.
    pub check_proxy_hashes: bool,
    /// Use only proxies that speak protocol 3, whose every answer carries receipts the
    /// client verifies (COCOON's proxies speak 2).
    pub require_receipts: bool,
    /// How long verified answer receipts are kept in the state database.
    pub receipt_retention: std::time::Duration,
    /// Verifies the certificates of the workers behind receipts (with GPU requirements);
    /// `None`: the connector's proxy verifier.
    pub worker_verifier: Option<Arc<cocoon_ratls::verifier::RatlsVerifier>>,
    /// SQLite file for receipts, key spending and totals; `None`: in memory.
    pub state_path: Option<PathBuf>,
    /// File of API keys (`sha256-hex limit-ton name` per line); `None`: no key needed.
    pub api_keys_file: Option<PathBuf>,
    /// File with the bearer token for `POST /control/*`; `None`: controls disabled.
    pub admin_token_file: Option<PathBuf>,
    /// The chain side of the payment channels; `None`: contracts are managed elsewhere and
    /// only short authorisation works.
    pub channels: Option<Arc<dyn ChannelOps>>,
    /// Automatic top-ups and charges.
    pub auto_pay: AutoPay,
    /// Limits and intervals.
    pub timings: Timings,
}

impl ClientConfig {
    /// A gateway of `owner_address` with `secret` and `connector` under `root`, the rest as
    /// the defaults file has it: library use (no HTTP API), the root's proxies, two
    /// connections, main network, proxy image hashes checked, state in memory, no API keys,
    /// no controls, no channels, default payments and timings.
    pub fn new(
        root: RootConfig,
        owner_address: StdAddr,
        secret: Vec<u8>,
        connector: RatlsConnector,
    ) -> Self {
        ClientConfig {
            api_listen: None,
            allowed_origins: vec![],
            allowed_hosts: vec![],
            proxies: vec![],
            connections: 2,
            root,
            root_address: None,
            owner_address,
            secret,
            is_test: false,
            connector,
            check_proxy_hashes: true,
            require_receipts: true,
            receipt_retention: std::time::Duration::from_secs(30 * 86_400),
            worker_verifier: None,
            state_path: None,
            api_keys_file: None,
            admin_token_file: None,
            channels: None,
            auto_pay: AutoPay::default(),
            timings: Timings::default(),
        }
    }
}

/// Limits and intervals.
#[derive(Debug, Clone)]
pub struct Timings {
    /// Deadline of a request that names none (default 120 s).
    pub default_timeout: Duration,
    /// The longest deadline a request may ask for.
    pub max_timeout: Duration,
    /// Connect + attestation + handshake + authorisation (short).
    pub connect_timeout: Duration,
    /// Waiting for a long (on-chain) authorisation.
    pub long_auth_timeout: Duration,
    /// Between `client.updatePaymentStatus` queries (and automatic payments).
    pub payment_status_interval: Duration,
    /// A proxy not ready this long is replaced by another registered one, if any.
    pub replace_after: Duration,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// `GET /v1/models` per-proxy query timeout.
    pub models_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            default_timeout: Duration::from_secs(120),
            max_timeout: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(30),
            long_auth_timeout: Duration::from_secs(300),
            payment_status_interval: Duration::from_secs(30),
            replace_after: Duration::from_secs(300),
            backoff: BackoffConfig::default(),
            max_body_bytes: 8 << 20,
            models_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a gateway did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Neither the settings nor the root name a proxy.
    #[error("no proxies: none configured and the root contract registers none")]
    NoProxies,
    /// The state database could not be opened.
    #[error("state database {path}: {error}")]
    State {
        /// The database file.
        path: String,
        /// Why it failed.
        error: String,
    },
    /// The API keys file could not be read.
    #[error("API keys file {path}: {error}")]
    Keys {
        /// The keys file.
        path: String,
        /// Why it failed.
        error: String,
    },
    /// The admin token file could not be read or created.
    #[error("admin token file {path}: {error}")]
    Token {
        /// The token file.
        path: String,
        /// Why it failed.
        error: String,
    },
    /// The HTTP API could not listen.
    #[error("HTTP API on {addr}: {error}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why binding failed.
        error: String,
    },
    /// The API would listen beyond this machine without API keys.
    #[error(
        "the API would listen on {0}, beyond this machine, without API keys: anyone who reaches \
         it could spend the channel; set api_keys_file or listen on 127.0.0.1"
    )]
    Exposed(SocketAddr),
    /// A bad browser allowlist entry.
    #[error("browser allowlist: {0}")]
    Browser(#[from] cocoon_service::browser::AllowlistError),
    /// The root's network kind differs from the client's.
    #[error(
        "test mode mismatch: the root contract says is_test = {root}, this client is configured with is_test = {ours}"
    )]
    TestMismatch {
        /// The root's `is_test`.
        root: bool,
        /// The client's `is_test`.
        ours: bool,
    },
}
