//! What `cocoon worker` is configured with: every key of the documented defaults file
//! ([`DEFAULTS`]), and the checks the types alone cannot make, each naming its key.

use cocoon_engine::BackendKind;
use cocoon_service::SettingError;
use cocoon_service::chain::TonSettings;
use cocoon_service::identity::TeeChoice;
use serde::Deserialize;

/// The documented defaults: every key the worker knows.
pub const DEFAULTS: &str = include_str!("defaults.toml");

/// The worker's settings, as [`DEFAULTS`] declares them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub model: String,
    pub backend_url: String,
    pub backend_kind: String,
    pub backend_model: String,
    pub models_dir: String,
    pub slots: u32,
    pub ctx_per_slot: u32,
    pub threads: u32,
    pub gpu_layers: u32,
    pub proxies: Vec<String>,
    pub root_address: String,
    pub ton_url: String,
    pub ton_urls: Vec<String>,
    pub ton_api_key_file: String,
    pub ton_api_key_files: Vec<String>,
    pub ton_quorum: u32,
    pub extra_ca_file: String,
    pub extra_ca_in_tee: bool,
    pub root_poll_seconds: u64,
    pub owner_address: String,
    pub coefficient: u32,
    pub max_active_requests: u32,
    pub is_test: bool,
    pub tee: String,
    pub proxy_policy: String,
    pub check_proxy_hashes: bool,
    pub pccs_url: String,
    pub kds_url: String,
    pub pow_max_difficulty: u32,
    pub state_dir: String,
    pub admin_listen: String,
    pub admin_token_file: String,
    pub admin_allowed_origins: Vec<String>,
    pub admin_allowed_hosts: Vec<String>,
    pub price_per_token: u64,
    pub worker_fee_per_token: u64,
    pub min_payout_ton: String,
    pub wallet_key_file: String,
    pub wallet_version: String,
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
        let tee = self.tee()?;
        cocoon_service::chain::check_extra_ca(&self.extra_ca_file, self.extra_ca_in_tee, tee)?;
        if tee == TeeChoice::Fixed(cocoon_attest::Backend::Unattested) {
            return Err(invalid(
                "tee",
                "a worker must be attested (auto, tdx, sev-snp, sim)",
            ));
        }
        if self.owner_address.is_empty() {
            return Err(invalid(
                "owner_address",
                "required: the TON address that owns this worker's earnings",
            ));
        }
        cocoon_ton::parse_address(&self.owner_address).map_err(|e| invalid("owner_address", e))?;
        if !self.root_address.is_empty() {
            cocoon_ton::parse_address(&self.root_address)
                .map_err(|e| invalid("root_address", e))?;
        }
        if !self.backend_url.is_empty() {
            if !(self.backend_url.starts_with("http://")
                || self.backend_url.starts_with("https://"))
            {
                return Err(invalid(
                    "backend_url",
                    "expected an http:// or https:// URL",
                ));
            }
            if BackendKind::parse(&self.backend_kind).is_none() {
                return Err(invalid(
                    "backend_kind",
                    "one of vllm, sglang, llama-server, ollama, openai",
                ));
            }
            if crate::config::model_base_name(&self.model).is_none() {
                return Err(invalid(
                    "model",
                    "expected the full model id Name@revision:sha256",
                ));
            }
        }
        if self.root_address.is_empty() && self.proxies.is_empty() {
            return Err(invalid(
                "proxies",
                "no proxy to connect to: give --proxy host:port or --root ADDRESS",
            ));
        }
        if !self.admin_listen.is_empty()
            && self.admin_listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid("admin_listen", "expected ip:port"));
        }
        cocoon_service::setting::check_allowlist(
            &self.admin_allowed_origins,
            &self.admin_allowed_hosts,
            "admin_",
        )?;
        if self.root_poll_seconds == 0 {
            return Err(invalid("root_poll_seconds", "must be positive"));
        }
        if !self.is_test && !self.check_proxy_hashes {
            return Err(invalid(
                "check_proxy_hashes",
                "may be turned off on test networks only",
            ));
        }
        if self.worker_fee_per_token > self.price_per_token {
            return Err(invalid(
                "worker_fee_per_token",
                "must not exceed price_per_token",
            ));
        }
        cocoon_ton::parse_ton(&self.min_payout_ton).map_err(|e| invalid("min_payout_ton", e))?;
        if self
            .wallet_version
            .parse::<cocoon_ton::wallet::WalletVersion>()
            .is_err()
        {
            return Err(invalid("wallet_version", "v4r2 or v5r1"));
        }
        Ok(())
    }
}
