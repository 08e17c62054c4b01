//! A setting that cannot work, named by its key (the command line turns it into exit code 64
//! with one line saying which key and where its value came from), and the settings every
//! role shares ([`Common`]) or every admin server has ([`AdminSettings`]), with their checks.

use std::path::{Path, PathBuf};

use cocoon_ton::keys::SigningKey;
use cocoon_ton::wallet::{Wallet, WalletVersion};
use rustls::pki_types::CertificateDer;
use serde::Deserialize;

use crate::admin::AdminConfig;
use crate::chain::{Ton, TonSettings, check_extra_ca, extra_roots};
use crate::identity::{Pccs, PeerVerification, ProxyDialer, TeeChoice, proxy_dialer};
use crate::process::{admin_token_file, state_dir};

pub use crate::refused::SettingError;

/// Checks a browser guard's allowlists, naming the key at fault (`<prefix>allowed_origins`
/// or `<prefix>allowed_hosts`).
pub fn check_allowlist(
    origins: &[String],
    hosts: &[String],
    prefix: &str,
) -> Result<(), SettingError> {
    use crate::browser::{Allowlist, AllowlistError};
    match Allowlist::new(origins, hosts) {
        Ok(_) => Ok(()),
        Err(e @ AllowlistError::Origin { .. }) => {
            Err(SettingError::new(format!("{prefix}allowed_origins"), e))
        }
        Err(e @ AllowlistError::Host { .. }) => {
            Err(SettingError::new(format!("{prefix}allowed_hosts"), e))
        }
    }
}

/// The keys every role has: the root and the chain endpoints, the TEE and its verification
/// services, the wallet and the state directory. Each role's `Settings` embeds it with
/// `#[serde(flatten)]`, so the keys stay flat in the role's defaults file.
#[derive(Debug, Clone, Deserialize)]
pub struct Common {
    /// Root contract address (`root_address`).
    pub root_address: String,
    /// toncenter v2 endpoint (`ton_url`).
    pub ton_url: String,
    /// Several endpoints read with a quorum (`ton_urls`).
    pub ton_urls: Vec<String>,
    /// File with a toncenter API key (`ton_api_key_file`).
    pub ton_api_key_file: String,
    /// One API key file per `ton_urls` entry (`ton_api_key_files`).
    pub ton_api_key_files: Vec<String>,
    /// How many endpoints must agree (`ton_quorum`).
    pub ton_quorum: u32,
    /// PEM bundle of extra CA certificates (`extra_ca_file`).
    pub extra_ca_file: String,
    /// Whether `extra_ca_file` is accepted inside a TEE (`extra_ca_in_tee`).
    pub extra_ca_in_tee: bool,
    /// Seconds between root contract reads (`root_poll_seconds`).
    pub root_poll_seconds: u64,
    /// How far the local clock may be from the chain's before `clock_drift` is reported
    /// (`clock_drift_max_seconds`; 0: never).
    pub clock_drift_max_seconds: u64,
    /// Owner of the role's contracts (`owner_address`).
    pub owner_address: String,
    /// Wallet seed file (`wallet_key_file`).
    pub wallet_key_file: String,
    /// `v4r2` or `v5r1` (`wallet_version`).
    pub wallet_version: String,
    /// Test network (`is_test`).
    pub is_test: bool,
    /// Attestation of this machine (`tee`).
    pub tee: String,
    /// PCCS or Intel PCS base URL (`pccs_url`).
    pub pccs_url: String,
    /// AMD KDS base URL (`kds_url`).
    pub kds_url: String,
    /// State directory (`state_dir`).
    pub state_dir: String,
    /// File the bound listen addresses are written to once the role serves (`ready_file`;
    /// empty: none); see [`crate::process::write_ready_file`].
    pub ready_file: String,
}

impl Common {
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
        self.tee.parse().map_err(|e| SettingError::new("tee", e))
    }

    /// The first checks of every role: the chain endpoints, the `tee` setting and the extra
    /// CA bundle it allows; returns the TEE choice. `given(key)` says whether a key was set
    /// by the operator rather than left at its default.
    pub fn check_chain_and_tee(
        &self,
        given: impl Fn(&str) -> bool,
    ) -> Result<TeeChoice, SettingError> {
        self.ton(given("ton_url")).check()?;
        let tee = self.tee()?;
        check_extra_ca(&self.extra_ca_file, self.extra_ca_in_tee, tee)?;
        Ok(tee)
    }

    /// Refuses running unattested (`tee = "none"`) for a role (`"proxy"`, `"worker"`) that
    /// must be attested.
    pub fn check_attested(tee: TeeChoice, role: &str) -> Result<(), SettingError> {
        if tee == TeeChoice::Fixed(cocoon_attest::Backend::Unattested) {
            return Err(SettingError::new(
                "tee",
                format!("a {role} must be attested (auto, tdx, sev-snp, sim, fake-tdx)"),
            ));
        }
        Ok(())
    }

    /// The `wallet_version` setting.
    pub fn check_wallet_version(&self) -> Result<(), SettingError> {
        if self.wallet_version.parse::<WalletVersion>().is_err() {
            return Err(SettingError::new("wallet_version", "v4r2 or v5r1"));
        }
        Ok(())
    }

    /// The role's state directory (`state_dir`, or the role's default; created if missing)
    /// and the CA roots of `extra_ca_file`; an earlier run's `ready_file` is removed.
    pub fn start(&self, role: &str) -> Result<Start, String> {
        crate::process::clear_ready_file(&self.ready_file)?;
        Ok(Start {
            state_dir: state_dir(&self.state_dir, role)?,
            extra_roots: extra_roots(&self.extra_ca_file)?,
        })
    }

    /// The chain client of the endpoints (checked with the settings).
    pub fn chain(&self, start: &Start) -> Result<Ton, String> {
        self.ton(false).chain(&start.extra_roots)
    }

    /// How peers are verified under `policy` (their attestation; never unattested ones).
    pub fn verification<'a>(&'a self, policy: &'a str, start: &'a Start) -> PeerVerification<'a> {
        PeerVerification {
            policy,
            is_test: self.is_test,
            pccs: Pccs {
                url: &self.pccs_url,
                extra_roots: &start.extra_roots,
            },
            kds_url: &self.kds_url,
            state_dir: &start.state_dir,
            allow_unattested: false,
            gpu: None,
        }
    }

    /// The TEE identity and RA-TLS connector of a role that dials proxies, which it verifies
    /// under `policy`.
    pub fn proxy_dialer(
        &self,
        policy: &str,
        pow_max_difficulty: u32,
        start: &Start,
    ) -> Result<ProxyDialer, String> {
        let tee = self.tee().map_err(|e| e.to_string())?;
        proxy_dialer(
            tee,
            self.verification(policy, start),
            pow_max_difficulty,
            None,
        )
    }

    /// [`Self::proxy_dialer`] whose certificates also carry GPU evidence from `gpu`.
    pub fn proxy_dialer_with_gpu(
        &self,
        policy: &str,
        pow_max_difficulty: u32,
        start: &Start,
        gpu: Option<std::sync::Arc<dyn cocoon_ratls::cert::GpuEvidenceSource>>,
    ) -> Result<ProxyDialer, String> {
        let tee = self.tee().map_err(|e| e.to_string())?;
        proxy_dialer(
            tee,
            self.verification(policy, start),
            pow_max_difficulty,
            gpu,
        )
    }

    /// The wallet of `wallet_key_file` (none when it is empty) and its key.
    pub fn wallet(&self) -> Result<Option<(Wallet, SigningKey)>, String> {
        if self.wallet_key_file.is_empty() {
            return Ok(None);
        }
        let key = SigningKey::from_file(Path::new(&self.wallet_key_file))
            .map_err(|e| format!("wallet_key_file: {e}"))?;
        self.wallet_of(key).map(Some)
    }

    /// The wallet (`wallet_version`) of `key`, e.g. a key released by a KMS.
    pub fn wallet_of(&self, key: SigningKey) -> Result<(Wallet, SigningKey), String> {
        let version = self
            .wallet_version
            .parse::<WalletVersion>()
            .map_err(|e| e.to_string())?;
        Ok((Wallet::new(version, key.public_key()), key))
    }
}

/// Where a role's process starts from: [`Common::start`].
#[derive(Debug)]
pub struct Start {
    /// The state directory (keys, stores, caches).
    pub state_dir: PathBuf,
    /// The CA roots HTTPS clients trust beyond WebPKI.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

/// The keys of an admin server (proxy, worker), flattened into the role's `Settings`.
#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    /// `ip:port`, or empty for no admin server.
    pub admin_listen: String,
    /// File holding the bearer token for POST controls (`admin_token_file`).
    pub admin_token_file: String,
    /// Web origins allowed to call the admin server (`admin_allowed_origins`).
    pub admin_allowed_origins: Vec<String>,
    /// Host names besides loopback the admin server answers to (`admin_allowed_hosts`).
    pub admin_allowed_hosts: Vec<String>,
}

impl AdminSettings {
    /// Checks the address and the browser allowlists, naming the key.
    pub fn check(&self) -> Result<(), SettingError> {
        if !self.admin_listen.is_empty()
            && self.admin_listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(SettingError::new("admin_listen", "expected ip:port"));
        }
        check_allowlist(
            &self.admin_allowed_origins,
            &self.admin_allowed_hosts,
            "admin_",
        )
    }

    /// The admin server's configuration (none without `admin_listen`); the token file is
    /// created in `state_dir` when none is configured.
    pub fn config(&self, state_dir: &Path) -> Result<Option<AdminConfig>, String> {
        if self.admin_listen.is_empty() {
            return Ok(None);
        }
        Ok(Some(AdminConfig {
            bind: self.admin_listen.parse().map_err(|_| "admin_listen")?,
            token_file: Some(admin_token_file(&self.admin_token_file, state_dir)?),
            allowed_origins: self.admin_allowed_origins.clone(),
            allowed_hosts: self.admin_allowed_hosts.clone(),
        }))
    }
}

/// Proxy hash checks (`check_proxy_hashes`) may be off on test networks only.
pub fn check_proxy_hashes(is_test: bool, check: bool) -> Result<(), SettingError> {
    if !is_test && !check {
        return Err(SettingError::new(
            "check_proxy_hashes",
            "may be turned off on test networks only",
        ));
    }
    Ok(())
}

/// What peers' NVIDIA GPU evidence must satisfy: a proxy's workers, a client's receipts'
/// workers. Each role's `Settings` embeds it with `#[serde(flatten)]` (keys `require_gpu_cc`,
/// `gpu_*`, flat in the role's defaults file).
#[derive(Debug, Clone, Deserialize)]
pub struct GpuSettings {
    /// Refuse peers without valid NVIDIA GPU evidence in their certificate
    /// (`require_gpu_cc`).
    pub require_gpu_cc: bool,
    /// The driver and VBIOS reference manifests (RIM files) GPU measurements are compared
    /// with (`gpu_rims`).
    pub gpu_rims: Vec<String>,
    /// Allowed GPU projects or `project-sku`s (`gpu_allowed_projects`; empty: any).
    pub gpu_allowed_projects: Vec<String>,
    /// Lowest GPU driver version admitted (`gpu_min_driver_version`; empty: any).
    pub gpu_min_driver_version: String,
    /// Lowest VBIOS version admitted (`gpu_min_vbios_version`; empty: any).
    pub gpu_min_vbios_version: String,
    /// Accept recorded GPU evidence whose nonce is not bound to the peer's key
    /// (`gpu_allow_unbound_nonce`; test networks only).
    pub gpu_allow_unbound_nonce: bool,
    /// Accept RIM files without a valid NVIDIA signature (`gpu_allow_unsigned_rims`; test
    /// networks only: the re-targeted sample RIMs the tests use are edited copies).
    pub gpu_allow_unsigned_rims: bool,
    /// A directory of revocation lists for GPU certificates, read at each check
    /// (`gpu_crl_dir`; empty: none).
    pub gpu_crl_dir: String,
}

impl GpuSettings {
    /// What peers' GPU evidence must satisfy, RIM files read: `None` when GPU evidence is
    /// neither required nor given RIMs to check against (it is then ignored).
    pub fn requirement(
        &self,
    ) -> Result<Option<cocoon_ratls::verifier::GpuRequirement>, SettingError> {
        if !self.require_gpu_cc && self.gpu_rims.is_empty() {
            return Ok(None);
        }
        let mut rims = Vec::new();
        for f in &self.gpu_rims {
            rims.push(
                std::fs::read(f).map_err(|e| SettingError::new("gpu_rims", format!("{f}: {e}")))?,
            );
        }
        let version = |key: &str, v: &str, radix: u32| -> Result<Option<String>, SettingError> {
            if v.is_empty() {
                return Ok(None);
            }
            if !cocoon_ratls::verifier::version_at_least(v, "0", radix) {
                return Err(SettingError::new(key, "expected a dotted version"));
            }
            Ok(Some(v.to_owned()))
        };
        Ok(Some(cocoon_ratls::verifier::GpuRequirement {
            required: self.require_gpu_cc,
            rims,
            policy: cocoon_attest::gpu::GpuPolicy {
                require_rim_signatures: !self.gpu_allow_unsigned_rims,
                ..cocoon_attest::gpu::GpuPolicy::default()
            },
            allowed_projects: self.gpu_allowed_projects.clone(),
            min_driver_version: version(
                "gpu_min_driver_version",
                &self.gpu_min_driver_version,
                10,
            )?,
            min_vbios_version: version("gpu_min_vbios_version", &self.gpu_min_vbios_version, 16)?,
            allow_unbound_nonce: self.gpu_allow_unbound_nonce,
            crl_dir: (!self.gpu_crl_dir.is_empty()).then(|| PathBuf::from(&self.gpu_crl_dir)),
        }))
    }

    /// The checks of the keys: test-network allowances on a test network only, RIMs with
    /// `require_gpu_cc`, the RIM files readable and the versions well formed.
    pub fn check(&self, is_test: bool) -> Result<(), SettingError> {
        if self.gpu_allow_unbound_nonce && !is_test {
            return Err(SettingError::new(
                "gpu_allow_unbound_nonce",
                "test networks only: recorded GPU evidence proves nothing about a peer",
            ));
        }
        if self.gpu_allow_unsigned_rims && !is_test {
            return Err(SettingError::new(
                "gpu_allow_unsigned_rims",
                "test networks only: an unsigned RIM is whatever its author wrote",
            ));
        }
        if self.require_gpu_cc && self.gpu_rims.is_empty() {
            return Err(SettingError::new(
                "gpu_rims",
                "required with require_gpu_cc (the driver and VBIOS RIM files)",
            ));
        }
        if !self.gpu_crl_dir.is_empty() && !Path::new(&self.gpu_crl_dir).is_dir() {
            return Err(SettingError::new("gpu_crl_dir", "not a directory"));
        }
        self.requirement().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A role's settings as the roles declare them: shared parts flattened, own keys beside.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Role {
        #[serde(flatten)]
        common: Common,
        #[serde(flatten)]
        admin: AdminSettings,
        own: u32,
    }

    const ROLE: &str = r#"
root_address = "0:0101010101010101010101010101010101010101010101010101010101010101"
ton_url = "http://127.0.0.1:8081"
ton_urls = []
ton_api_key_file = ""
ton_api_key_files = []
ton_quorum = 1
extra_ca_file = ""
extra_ca_in_tee = false
root_poll_seconds = 5
clock_drift_max_seconds = 120
owner_address = ""
wallet_key_file = ""
wallet_version = "v4r2"
is_test = true
tee = "sim"
pccs_url = ""
kds_url = ""
state_dir = ""
ready_file = ""
admin_listen = ""
admin_token_file = ""
admin_allowed_origins = []
admin_allowed_hosts = []
own = 7
"#;

    #[test]
    fn shared_keys_stay_flat_and_unknown_ones_are_refused() {
        let v: toml::Value = toml::from_str(ROLE).unwrap();
        let r: Role = v.clone().try_into().unwrap();
        assert_eq!((r.own, r.common.ton_quorum), (7, 1));
        assert_eq!(
            r.common.check_chain_and_tee(|_| false).unwrap(),
            r.common.tee().unwrap()
        );
        r.common.check_wallet_version().unwrap();
        r.admin.check().unwrap();
        assert!(r.admin.config(Path::new("/nonexistent")).unwrap().is_none());
        assert!(r.common.wallet().unwrap().is_none());
        let mut extra = v.as_table().unwrap().clone();
        extra.insert("colour".into(), toml::Value::String("red".into()));
        let e = toml::Value::Table(extra).try_into::<Role>().unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let mut bad = r.admin.clone();
        bad.admin_listen = "nowhere".into();
        assert_eq!(bad.check().unwrap_err().key, "admin_listen");
        let mut bad = r.common.clone();
        bad.wallet_version = "v9".into();
        assert_eq!(
            bad.check_wallet_version().unwrap_err().key,
            "wallet_version"
        );
        assert_eq!(
            Common::check_attested(
                TeeChoice::Fixed(cocoon_attest::Backend::Unattested),
                "proxy"
            )
            .unwrap_err()
            .reason,
            "a proxy must be attested (auto, tdx, sev-snp, sim, fake-tdx)"
        );
        assert!(
            check_proxy_hashes(false, false).is_err() && check_proxy_hashes(true, false).is_ok()
        );
    }
}
