//! What `cocoon proxy` is configured with: every key of the documented defaults file
//! ([`DEFAULTS`]), and the checks the types alone cannot make, each naming its key.

use cocoon_service::SettingError;
use cocoon_service::chain::TonSettings;
use cocoon_service::identity::TeeChoice;
use cocoon_ton::wallet::WalletVersion;
use serde::Deserialize;

/// The documented defaults: every key the proxy knows.
pub const DEFAULTS: &str = include_str!("defaults.toml");

/// The proxy's settings, as [`DEFAULTS`] declares them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub worker_listen: String,
    pub client_listen: String,
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
    pub proxy_key_file: String,
    pub wallet_key_file: String,
    pub wallet_version: String,
    pub stake_ton: String,
    pub is_test: bool,
    pub tee: String,
    pub worker_policy: String,
    pub client_policy: String,
    pub allow_unattested_clients: bool,
    pub pccs_url: String,
    pub kds_url: String,
    pub pow_difficulty: u32,
    pub checkpoint_seconds: u64,
    pub client_watch_seconds: u64,
    pub max_requests_per_session: usize,
    pub min_client_charge_ton: String,
    pub min_worker_payout_ton: String,
    pub state_dir: String,
    pub admin_listen: String,
    pub admin_token_file: String,
    pub admin_allowed_origins: Vec<String>,
    pub admin_allowed_hosts: Vec<String>,
    pub log: String,
}

fn invalid(key: &str, reason: impl std::fmt::Display) -> SettingError {
    SettingError::new(key, reason)
}

impl Settings {
    /// The chain endpoint settings; `ton_url_given` says whether `ton_url` was set (not left
    /// at its default).
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
        for (key, v) in [
            ("owner_address", &self.owner_address),
            ("root_address", &self.root_address),
        ] {
            if v.is_empty() {
                return Err(invalid(key, "required"));
            }
            cocoon_ton::parse_address(v).map_err(|e| invalid(key, e))?;
        }
        for (key, v) in [
            ("worker_listen", &self.worker_listen),
            ("client_listen", &self.client_listen),
        ] {
            if v.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(key, "expected ip:port"));
            }
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
        for (key, v) in [
            ("root_poll_seconds", self.root_poll_seconds),
            ("checkpoint_seconds", self.checkpoint_seconds),
            ("client_watch_seconds", self.client_watch_seconds),
            (
                "max_requests_per_session",
                self.max_requests_per_session as u64,
            ),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be positive"));
            }
        }
        if tee == TeeChoice::Fixed(cocoon_attest::Backend::Unattested) {
            return Err(invalid(
                "tee",
                "a proxy must be attested (auto, tdx, sev-snp, sim)",
            ));
        }
        if self.pow_difficulty > 40 {
            return Err(invalid("pow_difficulty", "at most 40 bits"));
        }
        for (key, v) in [
            ("stake_ton", &self.stake_ton),
            ("min_client_charge_ton", &self.min_client_charge_ton),
            ("min_worker_payout_ton", &self.min_worker_payout_ton),
        ] {
            cocoon_ton::parse_ton(v).map_err(|e| invalid(key, e))?;
        }
        if self.wallet_version.parse::<WalletVersion>().is_err() {
            return Err(invalid("wallet_version", "v4r2 or v5r1"));
        }
        if self.wallet_key_file.is_empty() && !self.is_test {
            return Err(invalid(
                "wallet_key_file",
                "required outside test networks: checkpoints, charges and payouts are sent from it",
            ));
        }
        Ok(())
    }
}
