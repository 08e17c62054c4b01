//! What `cocoon client` is configured with: every key of the documented defaults file
//! ([`DEFAULTS`]), and the checks the types alone cannot make, each naming its key.

use cocoon_service::SettingError;
use cocoon_service::browser::beyond_loopback;
use cocoon_service::setting::{Common, check_proxy_hashes};
use serde::Deserialize;

/// The documented defaults: every key the client knows.
pub const DEFAULTS: &str = include_str!("defaults.toml");

/// The client's settings, as [`DEFAULTS`] declares them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Root, chain endpoints, TEE and verification services, the wallet funding the
    /// channels, state directory.
    #[serde(flatten)]
    pub common: Common,
    /// The OpenAI-compatible API's address (`api_listen`).
    pub api_listen: String,
    /// Web origins allowed to call the API (`allowed_origins`).
    pub allowed_origins: Vec<String>,
    /// Host names the API answers to besides loopback (`allowed_hosts`).
    pub allowed_hosts: Vec<String>,
    /// Proxies' client addresses; empty: the root's (`proxies`).
    pub proxies: Vec<String>,
    /// Proxies to keep sessions with (`connections`).
    pub connections: usize,
    /// File with the short-authorisation secret (`secret_file`).
    pub secret_file: String,
    /// Which proxies to trust (`proxy_policy`).
    pub proxy_policy: String,
    /// Refuse proxies whose image hash the root does not list (`check_proxy_hashes`).
    pub check_proxy_hashes: bool,
    /// Use only proxies whose answers carry receipts (`require_receipts`).
    pub require_receipts: bool,
    /// Days verified answer receipts are kept (`receipt_retention_days`).
    pub receipt_retention_days: u64,
    /// What the GPU evidence of the workers behind receipts must satisfy
    /// (`require_gpu_cc`, `gpu_*`).
    #[serde(flatten)]
    pub gpu: cocoon_service::setting::GpuSettings,
    /// Highest proof-of-work difficulty solved (`pow_max_difficulty`).
    pub pow_max_difficulty: u32,
    /// TON a contract is funded with and each top-up adds (`top_up_ton`).
    pub top_up_ton: String,
    /// Keep channel balances topped up (`auto_top_up`).
    pub auto_top_up: bool,
    /// Submit the proxy's charges automatically (`auto_charge`).
    pub auto_charge: bool,
    /// Seconds between payment-status queries (`payment_status_seconds`).
    pub payment_status_seconds: u64,
    /// Deadline of a request that names none, seconds (`request_timeout_seconds`).
    pub request_timeout_seconds: u64,
    /// API keys file; empty: no key needed (`api_keys_file`).
    pub api_keys_file: String,
    /// File holding the admin bearer token (`admin_token_file`).
    pub admin_token_file: String,
    /// Log filter (`log`).
    pub log: String,
}

impl Settings {
    /// Checks what the types alone cannot (root and owner, the API's exposure, proxies,
    /// intervals, the wallet), naming the key; `given(key)` says whether a key was set by the
    /// operator rather than left at its default.
    pub fn check(&self, given: impl Fn(&str) -> bool) -> Result<(), SettingError> {
        let c = &self.common;
        c.check_chain_and_tee(given)?;
        if c.root_address.is_empty() {
            return Err(SettingError::new("root_address", "required"));
        }
        cocoon_ton::parse_address(&c.root_address)
            .map_err(|e| SettingError::new("root_address", e))?;
        if !c.owner_address.is_empty() {
            cocoon_ton::parse_address(&c.owner_address)
                .map_err(|e| SettingError::new("owner_address", e))?;
        }
        if c.wallet_key_file.is_empty() && c.owner_address.is_empty() {
            return Err(SettingError::new(
                "wallet_key_file",
                "required unless owner_address names an owner whose contracts are funded elsewhere",
            ));
        }
        let Ok(listen) = self.api_listen.parse::<std::net::SocketAddr>() else {
            return Err(SettingError::new("api_listen", "expected ip:port"));
        };
        if self.api_keys_file.is_empty() && beyond_loopback(&listen) {
            return Err(SettingError::new(
                "api_listen",
                format!(
                    "{listen} is reachable beyond this machine but api_keys_file is empty, so \
                     anyone who reaches it could spend the channel; set api_keys_file (`cocoon \
                     client key`) or listen on 127.0.0.1"
                ),
            ));
        }
        cocoon_service::setting::check_allowlist(&self.allowed_origins, &self.allowed_hosts, "")?;
        for p in &self.proxies {
            if p.rsplit_once(':')
                .is_none_or(|(_, port)| port.parse::<u16>().is_err())
            {
                return Err(SettingError::new(
                    "proxies",
                    format!("{p:?} is not host:port"),
                ));
            }
        }
        if self.connections == 0 {
            return Err(SettingError::new("connections", "must be positive"));
        }
        for (key, v) in [
            ("root_poll_seconds", c.root_poll_seconds),
            ("payment_status_seconds", self.payment_status_seconds),
            ("request_timeout_seconds", self.request_timeout_seconds),
        ] {
            if v == 0 {
                return Err(SettingError::new(key, "must be positive"));
            }
        }
        if !self.top_up_ton.is_empty() {
            cocoon_ton::parse_ton(&self.top_up_ton)
                .map_err(|e| SettingError::new("top_up_ton", e))?;
        }
        c.check_wallet_version()?;
        check_proxy_hashes(c.is_test, self.check_proxy_hashes)?;
        self.gpu.check(c.is_test)?;
        Ok(())
    }
}
