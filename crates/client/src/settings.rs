//! What `cocoon client` is configured with: every key of the documented defaults file
//! ([`DEFAULTS`]), and the checks the types alone cannot make, each naming its key.

use cocoon_service::SettingError;
use cocoon_service::browser::beyond_loopback;
use cocoon_service::chain::TonSettings;
use cocoon_service::identity::TeeChoice;
use cocoon_ton::wallet::WalletVersion;
use serde::Deserialize;

/// The documented defaults: every key the client knows.
pub const DEFAULTS: &str = include_str!("defaults.toml");

/// The client's settings, as [`DEFAULTS`] declares them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub api_listen: String,
    pub allowed_origins: Vec<String>,
    pub allowed_hosts: Vec<String>,
    pub proxies: Vec<String>,
    pub connections: usize,
    pub root_address: String,
    pub ton_url: String,
    pub ton_urls: Vec<String>,
    pub ton_api_key_file: String,
    pub ton_api_key_files: Vec<String>,
    pub ton_quorum: u32,
    pub extra_ca_file: String,
    pub extra_ca_in_tee: bool,
    pub root_poll_seconds: u64,
    pub wallet_key_file: String,
    pub wallet_version: String,
    pub owner_address: String,
    pub secret_file: String,
    pub is_test: bool,
    pub tee: String,
    pub proxy_policy: String,
    pub check_proxy_hashes: bool,
    pub pccs_url: String,
    pub kds_url: String,
    pub pow_max_difficulty: u32,
    pub top_up_ton: String,
    pub auto_top_up: bool,
    pub auto_charge: bool,
    pub payment_status_seconds: u64,
    pub request_timeout_seconds: u64,
    pub api_keys_file: String,
    pub state_dir: String,
    pub admin_token_file: String,
    pub log: String,
}

fn invalid(key: &str, reason: impl std::fmt::Display) -> SettingError {
    SettingError::new(key, reason)
}

impl Settings {
    /// The chain endpoint settings; `ton_url_given` says whether `ton_url` was set.
    pub fn ton(&self, ton_url_given: bool) -> TonSettings<'_> {
        TonSettings {
            url: &self.ton_url,
            url_given: ton_url_given,
            urls: &self.ton_urls,
            key_file: &self.ton_api_key_file,
            key_files: &self.ton_api_key_files,
            quorum: self.ton_quorum,
        }
    }

    /// The `tee` setting.
    pub fn tee(&self) -> Result<TeeChoice, SettingError> {
        self.tee.parse().map_err(|e| invalid("tee", e))
    }

    /// Checks what the types alone cannot, naming the key; `given(key)` says whether a key
    /// was set by the operator rather than left at its default.
    pub fn check(&self, given: impl Fn(&str) -> bool) -> Result<(), SettingError> {
        self.ton(given("ton_url")).check()?;
        cocoon_service::chain::check_extra_ca(
            &self.extra_ca_file,
            self.extra_ca_in_tee,
            self.tee()?,
        )?;
        if self.root_address.is_empty() {
            return Err(invalid("root_address", "required"));
        }
        cocoon_ton::parse_address(&self.root_address).map_err(|e| invalid("root_address", e))?;
        if !self.owner_address.is_empty() {
            cocoon_ton::parse_address(&self.owner_address)
                .map_err(|e| invalid("owner_address", e))?;
        }
        if self.wallet_key_file.is_empty() && self.owner_address.is_empty() {
            return Err(invalid(
                "wallet_key_file",
                "required unless owner_address names an owner whose contracts are funded elsewhere",
            ));
        }
        let Ok(listen) = self.api_listen.parse::<std::net::SocketAddr>() else {
            return Err(invalid("api_listen", "expected ip:port"));
        };
        if self.api_keys_file.is_empty() && beyond_loopback(&listen) {
            return Err(invalid(
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
                return Err(invalid("proxies", format!("{p:?} is not host:port")));
            }
        }
        if self.connections == 0 {
            return Err(invalid("connections", "must be positive"));
        }
        for (key, v) in [
            ("root_poll_seconds", self.root_poll_seconds),
            ("payment_status_seconds", self.payment_status_seconds),
            ("request_timeout_seconds", self.request_timeout_seconds),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be positive"));
            }
        }
        if !self.top_up_ton.is_empty() {
            cocoon_ton::parse_ton(&self.top_up_ton).map_err(|e| invalid("top_up_ton", e))?;
        }
        if self.wallet_version.parse::<WalletVersion>().is_err() {
            return Err(invalid("wallet_version", "v4r2 or v5r1"));
        }
        if !self.is_test && !self.check_proxy_hashes {
            return Err(invalid(
                "check_proxy_hashes",
                "may be turned off on test networks only",
            ));
        }
        Ok(())
    }
}
