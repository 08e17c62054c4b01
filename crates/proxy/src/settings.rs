//! What `cocoon proxy` is configured with: every key of the documented defaults file
//! ([`DEFAULTS`]), and the checks the types alone cannot make, each naming its key.

use cocoon_service::SettingError;
use cocoon_service::setting::{AdminSettings, Common};
use serde::Deserialize;

/// The documented defaults: every key the proxy knows.
pub const DEFAULTS: &str = include_str!("defaults.toml");

/// The proxy's settings, as [`DEFAULTS`] declares them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Root, chain endpoints, TEE and verification services, the operator's wallet (stake,
    /// checkpoints, charges, payouts), state directory.
    #[serde(flatten)]
    pub common: Common,
    /// The admin server (stats, the switch, settlement controls).
    #[serde(flatten)]
    pub admin: AdminSettings,
    /// Where workers connect (`worker_listen`).
    pub worker_listen: String,
    /// Where clients connect (`client_listen`).
    pub client_listen: String,
    /// The proxy's Ed25519 key file (`proxy_key_file`).
    pub proxy_key_file: String,
    /// Stake sent when the proxy contract is deployed, TON (`stake_ton`).
    pub stake_ton: String,
    /// Which workers to admit (`worker_policy`).
    pub worker_policy: String,
    /// Which attested clients to accept (`client_policy`).
    pub client_policy: String,
    /// Also accept clients without evidence (`allow_unattested_clients`).
    pub allow_unattested_clients: bool,
    /// Proof-of-work difficulty, bits (`pow_difficulty`).
    pub pow_difficulty: u32,
    /// Seconds between settlement passes (`checkpoint_seconds`).
    pub checkpoint_seconds: u64,
    /// Seconds between client contract reads (`client_watch_seconds`).
    pub client_watch_seconds: u64,
    /// Most requests running per client connection (`max_requests_per_session`).
    pub max_requests_per_session: usize,
    /// Most requests waiting per model while its workers are busy (`queue_max_per_model`).
    pub queue_max_per_model: usize,
    /// Longest wait in a model's queue, seconds (`queue_max_wait_secs`).
    pub queue_max_wait_secs: u64,
    /// Seconds of worker silence before a ping; two of them make the worker suspect
    /// (`worker_ping_seconds`, 0: off).
    pub worker_ping_seconds: u64,
    /// Charge a client at this many TON (`min_client_charge_ton`).
    pub min_client_charge_ton: String,
    /// Pay a worker out at this many TON (`min_worker_payout_ton`).
    pub min_worker_payout_ton: String,
    /// Withdraw the commission above this many TON, "0" never (`auto_withdraw_ton`).
    pub auto_withdraw_ton: String,
    /// A KMS to get the keys from instead of key files (`kms`, `host:port`; empty: files).
    pub kms: String,
    /// How the KMS's attestation is verified (`kms_policy`).
    pub kms_policy: String,
    /// The KMS images trusted (`kms_image_hashes`).
    pub kms_image_hashes: Vec<String>,
    /// Which of the owner's instances this is, for its own keys (`kms_instance`).
    pub kms_instance: String,
    /// What workers' NVIDIA GPU evidence must satisfy (`require_gpu_cc`, `gpu_*`).
    #[serde(flatten)]
    pub gpu: cocoon_service::setting::GpuSettings,
    /// Log filter (`log`).
    pub log: String,
}

impl Settings {
    /// Where the keys come from when `kms` is set.
    pub fn kms_client(&self) -> cocoon_service::kms::KmsClientSettings<'_> {
        cocoon_service::kms::KmsClientSettings {
            addr: &self.kms,
            policy: &self.kms_policy,
            image_hashes: &self.kms_image_hashes,
            instance: &self.kms_instance,
        }
    }

    /// Checks what the types alone cannot (addresses, listeners, intervals, attestation,
    /// amounts, the wallet), naming the key; `given(key)` says whether a key was set by the
    /// operator rather than left at its default.
    pub fn check(&self, given: impl Fn(&str) -> bool) -> Result<(), SettingError> {
        let c = &self.common;
        let tee = c.check_chain_and_tee(given)?;
        for (key, v) in [
            ("owner_address", &c.owner_address),
            ("root_address", &c.root_address),
        ] {
            if v.is_empty() {
                return Err(SettingError::new(key, "required"));
            }
            cocoon_ton::parse_address(v).map_err(|e| SettingError::new(key, e))?;
        }
        for (key, v) in [
            ("worker_listen", &self.worker_listen),
            ("client_listen", &self.client_listen),
        ] {
            if v.parse::<std::net::SocketAddr>().is_err() {
                return Err(SettingError::new(key, "expected ip:port"));
            }
        }
        self.admin.check()?;
        for (key, v) in [
            ("root_poll_seconds", c.root_poll_seconds),
            ("checkpoint_seconds", self.checkpoint_seconds),
            ("client_watch_seconds", self.client_watch_seconds),
            (
                "max_requests_per_session",
                self.max_requests_per_session as u64,
            ),
            ("queue_max_wait_secs", self.queue_max_wait_secs),
        ] {
            if v == 0 {
                return Err(SettingError::new(key, "must be positive"));
            }
        }
        Common::check_attested(tee, "proxy")?;
        if self.pow_difficulty > 40 {
            return Err(SettingError::new("pow_difficulty", "at most 40 bits"));
        }
        for (key, v) in [
            ("stake_ton", &self.stake_ton),
            ("min_client_charge_ton", &self.min_client_charge_ton),
            ("min_worker_payout_ton", &self.min_worker_payout_ton),
            ("auto_withdraw_ton", &self.auto_withdraw_ton),
        ] {
            cocoon_ton::parse_ton(v).map_err(|e| SettingError::new(key, e))?;
        }
        c.check_wallet_version()?;
        self.gpu.check(c.is_test)?;
        self.kms_client().check()?;
        if !self.kms.is_empty() {
            for (key, v) in [
                ("wallet_key_file", &c.wallet_key_file),
                ("proxy_key_file", &self.proxy_key_file),
            ] {
                if !v.is_empty() {
                    return Err(SettingError::new(
                        key,
                        "must be empty with kms (the proxy's keys come from the KMS)",
                    ));
                }
            }
        } else if c.wallet_key_file.is_empty() && !c.is_test {
            return Err(SettingError::new(
                "wallet_key_file",
                "required outside test networks: checkpoints, charges and payouts are sent from it",
            ));
        }
        Ok(())
    }
}
