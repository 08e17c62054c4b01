//! What `cocoon kms serve` is configured with: every key of the documented defaults file
//! ([`DEFAULTS`]), and the checks the types alone cannot make, each naming its key.

use cocoon_service::SettingError;
use cocoon_service::identity::TeeChoice;
use cocoon_service::kms::parse_image_hashes;
use cocoon_service::setting::Common;
use serde::Deserialize;

/// The documented defaults: every key the KMS knows.
pub const DEFAULTS: &str = include_str!("defaults.toml");

/// The KMS's settings, as [`DEFAULTS`] declares them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where peers connect (`listen`).
    pub listen: String,
    /// A KMS to get the master from (`peer`).
    pub peer: String,
    /// How peers are verified (`peer_policy`).
    pub peer_policy: String,
    /// KMS images trusted with the master (`kms_image_hashes`).
    pub kms_image_hashes: Vec<String>,
    /// Whether a new master may be made when none is sealed here and no peer is given
    /// (`new_master`).
    pub new_master: bool,
    /// Root cache lifetime (`root_cache_seconds`).
    pub root_cache_seconds: u64,
    /// Proof-of-work difficulty (`pow_difficulty`).
    pub pow_difficulty: u32,
    /// Root contract address (`root_address`).
    pub root_address: String,
    /// toncenter v2 endpoint (`ton_url`).
    pub ton_url: String,
    /// Several endpoints read with a quorum (`ton_urls`).
    pub ton_urls: Vec<String>,
    /// API key file (`ton_api_key_file`).
    pub ton_api_key_file: String,
    /// API key files per endpoint (`ton_api_key_files`).
    pub ton_api_key_files: Vec<String>,
    /// Endpoints that must agree (`ton_quorum`).
    pub ton_quorum: u32,
    /// Extra CA bundle (`extra_ca_file`).
    pub extra_ca_file: String,
    /// Whether `extra_ca_file` is accepted in a TEE (`extra_ca_in_tee`).
    pub extra_ca_in_tee: bool,
    /// Test network (`is_test`).
    pub is_test: bool,
    /// Attestation of this machine (`tee`).
    pub tee: String,
    /// PCCS base URL (`pccs_url`).
    pub pccs_url: String,
    /// AMD KDS base URL (`kds_url`).
    pub kds_url: String,
    /// State directory (`state_dir`).
    pub state_dir: String,
    /// File the bound address is written to once the KMS serves (`ready_file`).
    pub ready_file: String,
    /// Log filter (`log`).
    pub log: String,
}

impl Settings {
    /// The keys shared with the other roles, as [`Common`] (the wallet and owner keys, which
    /// a KMS has none of, empty).
    pub fn common(&self) -> Common {
        Common {
            root_address: self.root_address.clone(),
            ton_url: self.ton_url.clone(),
            ton_urls: self.ton_urls.clone(),
            ton_api_key_file: self.ton_api_key_file.clone(),
            ton_api_key_files: self.ton_api_key_files.clone(),
            ton_quorum: self.ton_quorum,
            extra_ca_file: self.extra_ca_file.clone(),
            extra_ca_in_tee: self.extra_ca_in_tee,
            root_poll_seconds: self.root_cache_seconds.max(1),
            clock_drift_max_seconds: 0,
            owner_address: String::new(),
            wallet_key_file: String::new(),
            wallet_version: "v4r2".into(),
            is_test: self.is_test,
            tee: self.tee.clone(),
            pccs_url: self.pccs_url.clone(),
            kds_url: self.kds_url.clone(),
            state_dir: self.state_dir.clone(),
            ready_file: self.ready_file.clone(),
        }
    }

    /// Checks what the types alone cannot, naming the key; `given(key)` says whether a key
    /// was set by the operator rather than left at its default.
    pub fn check(&self, given: impl Fn(&str) -> bool) -> Result<(), SettingError> {
        let c = self.common();
        let tee = c.check_chain_and_tee(given)?;
        Common::check_attested(tee, "kms")?;
        if !self.is_test
            && matches!(
                tee,
                TeeChoice::Fixed(cocoon_attest::Backend::Sim | cocoon_attest::Backend::FakeTdx)
            )
        {
            return Err(SettingError::new(
                "tee",
                "sim and fake-tdx are for test networks only (is_test = true)",
            ));
        }
        if self.root_address.is_empty() {
            return Err(SettingError::new("root_address", "required"));
        }
        cocoon_ton::parse_address(&self.root_address)
            .map_err(|e| SettingError::new("root_address", e))?;
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(SettingError::new("listen", "expected ip:port"));
        }
        if !self.peer.is_empty() && !self.peer.contains(':') {
            return Err(SettingError::new("peer", "expected host:port"));
        }
        let hashes = parse_image_hashes(&self.kms_image_hashes)
            .map_err(|e| SettingError::new("kms_image_hashes", e))?;
        if !self.peer.is_empty() && self.new_master {
            return Err(SettingError::new(
                "new_master",
                "not with peer (the master comes from the peer)",
            ));
        }
        if !self.peer.is_empty() && hashes.is_empty() {
            return Err(SettingError::new(
                "kms_image_hashes",
                "required with peer (the KMS images trusted with the master)",
            ));
        }
        if self.root_cache_seconds == 0 || self.root_cache_seconds > 3600 {
            return Err(SettingError::new("root_cache_seconds", "1 to 3600"));
        }
        Ok(())
    }
}
