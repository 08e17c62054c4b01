//! What `cocoon worker` is configured with: every key of the documented defaults file
//! ([`DEFAULTS`]), and the checks the types alone cannot make, each naming its key.

use std::sync::Arc;

use cocoon_engine::BackendKind;
use cocoon_ratls::cert::{CertError, GpuEvidenceBytes, GpuEvidenceSource, RecordedGpuSource};
use cocoon_service::SettingError;
use cocoon_service::setting::{AdminSettings, Common, check_proxy_hashes};
use serde::Deserialize;

/// The documented defaults: every key the worker knows.
pub const DEFAULTS: &str = include_str!("defaults.toml");

/// The worker's settings, as [`DEFAULTS`] declares them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Root, chain endpoints, TEE and verification services, the payout wallet, state
    /// directory.
    #[serde(flatten)]
    pub common: Common,
    /// The admin server (stats, the switch, coefficient and payout controls).
    #[serde(flatten)]
    pub admin: AdminSettings,
    /// The model to serve (`model`).
    pub model: String,
    /// An OpenAI-compatible server instead of the embedded engine (`backend_url`).
    pub backend_url: String,
    /// What kind of server `backend_url` is (`backend_kind`).
    pub backend_kind: String,
    /// The model name the backend serves (`backend_model`).
    pub backend_model: String,
    /// Model store directory (`models_dir`).
    pub models_dir: String,
    /// Embedded engine: requests decoded together (`slots`).
    pub slots: u32,
    /// Embedded engine: context per request (`ctx_per_slot`).
    pub ctx_per_slot: u32,
    /// Embedded engine: CPU threads, 0 for all cores (`threads`).
    pub threads: u32,
    /// Embedded engine: layers on the GPU (`gpu_layers`).
    pub gpu_layers: u32,
    /// Embedded engine: `off`, `on` (chat and embeddings) or `only` (`embeddings`).
    pub embeddings: String,
    /// Proxies to connect to besides the root's (`proxies`).
    pub proxies: Vec<String>,
    /// Price coefficient, thousandths (`coefficient`).
    pub coefficient: u32,
    /// Requests served at once over all proxies, 0: the engine's (`max_active_requests`).
    pub max_active_requests: u32,
    /// Which proxies to trust (`proxy_policy`).
    pub proxy_policy: String,
    /// Refuse proxies whose image hash the root does not list (`check_proxy_hashes`).
    pub check_proxy_hashes: bool,
    /// Highest proof-of-work difficulty solved (`pow_max_difficulty`).
    pub pow_max_difficulty: u32,
    /// Client price per token until the root is read, nanoTON (`price_per_token`).
    pub price_per_token: u64,
    /// Worker fee per token until the root is read, nanoTON (`worker_fee_per_token`).
    pub worker_fee_per_token: u64,
    /// Submit a payout at this many TON (`min_payout_ton`).
    pub min_payout_ton: String,
    /// What a missing worker contract is deployed with, TON (`contract_deploy_ton`).
    pub contract_deploy_ton: String,
    /// A KMS to get the keys from instead of key files (`kms`, `host:port`; empty: files).
    pub kms: String,
    /// How the KMS's attestation is verified (`kms_policy`).
    pub kms_policy: String,
    /// The KMS images trusted (`kms_image_hashes`).
    pub kms_image_hashes: Vec<String>,
    /// Which of the owner's instances this is, for its own keys (`kms_instance`).
    pub kms_instance: String,
    /// Where the GPU evidence in the worker's certificate comes from (`gpu_evidence`:
    /// `none`, `recorded` or `nvml`).
    pub gpu_evidence: String,
    /// The GPU NVML collects evidence from, by index (`gpu_nvml_device`).
    pub gpu_nvml_device: u32,
    /// Recorded GPU report, hex (`gpu_evidence_report`; with `gpu_evidence = "recorded"`).
    pub gpu_evidence_report: String,
    /// Recorded GPU certificate chain, PEM (`gpu_evidence_chain`).
    pub gpu_evidence_chain: String,
    /// Log filter (`log`).
    pub log: String,
}

/// GPU evidence from the driver, through NVML (`gpu_evidence = "nvml"`): NVML is loaded for
/// each certificate, and a failure fails the certificate (the worker does not start, or keeps
/// its previous certificate on a refresh).
#[derive(Debug, Clone, Copy)]
struct NvmlSource {
    device: u32,
}

impl GpuEvidenceSource for NvmlSource {
    fn gpu_evidence(&self, nonce: &[u8; 32]) -> Result<GpuEvidenceBytes, CertError> {
        let e = cocoon_nvml::collect(self.device, nonce)
            .map_err(|e| CertError::Source(format!("GPU {}: {e}", self.device)))?;
        Ok(GpuEvidenceBytes {
            report: e.report,
            cert_chain_pem: e.cert_chain_pem,
        })
    }
}

impl Settings {
    /// The GPU evidence source `gpu_evidence` names (files read): `None` for `none`.
    /// `recorded` (fixed files, whatever the nonce: the report is not bound to the
    /// certificate's key) is for test networks only.
    pub fn gpu_source(&self) -> Result<Option<Arc<dyn GpuEvidenceSource>>, SettingError> {
        match self.gpu_evidence.as_str() {
            "none" => Ok(None),
            "recorded" => {
                if !self.common.is_test {
                    return Err(SettingError::new(
                        "gpu_evidence",
                        "recorded GPU evidence is for test networks only (is_test = true)",
                    ));
                }
                let read = |key: &str, f: &str| {
                    if f.is_empty() {
                        return Err(SettingError::new(
                            key,
                            "required with gpu_evidence = \"recorded\"",
                        ));
                    }
                    std::fs::read(f).map_err(|e| SettingError::new(key, format!("{f}: {e}")))
                };
                let hex = read("gpu_evidence_report", &self.gpu_evidence_report)?;
                let report = cocoon_attest::gpu::report::decode_hex(&hex)
                    .map_err(|e| SettingError::new("gpu_evidence_report", e))?;
                let cert_chain_pem = read("gpu_evidence_chain", &self.gpu_evidence_chain)?;
                Ok(Some(Arc::new(RecordedGpuSource(GpuEvidenceBytes {
                    report,
                    cert_chain_pem,
                }))))
            }
            "nvml" => Ok(Some(Arc::new(NvmlSource {
                device: self.gpu_nvml_device,
            }))),
            other => Err(SettingError::new(
                "gpu_evidence",
                format!("{other:?}: expected none, recorded or nvml"),
            )),
        }
    }

    /// Where the keys come from when `kms` is set.
    pub fn kms_client(&self) -> cocoon_service::kms::KmsClientSettings<'_> {
        cocoon_service::kms::KmsClientSettings {
            addr: &self.kms,
            policy: &self.kms_policy,
            image_hashes: &self.kms_image_hashes,
            instance: &self.kms_instance,
        }
    }

    /// Checks what the types alone cannot (attestation, owner, engine, proxies, prices, the
    /// wallet), naming the key; `given(key)` says whether a key was set by the operator
    /// rather than left at its default.
    pub fn check(&self, given: impl Fn(&str) -> bool) -> Result<(), SettingError> {
        let c = &self.common;
        let tee = c.check_chain_and_tee(given)?;
        Common::check_attested(tee, "worker")?;
        self.gpu_source()?;
        if c.owner_address.is_empty() {
            return Err(SettingError::new(
                "owner_address",
                "required: the TON address that owns this worker's earnings",
            ));
        }
        cocoon_ton::parse_address(&c.owner_address)
            .map_err(|e| SettingError::new("owner_address", e))?;
        if !c.root_address.is_empty() {
            cocoon_ton::parse_address(&c.root_address)
                .map_err(|e| SettingError::new("root_address", e))?;
        }
        if !self.backend_url.is_empty() {
            if !(self.backend_url.starts_with("http://")
                || self.backend_url.starts_with("https://"))
            {
                return Err(SettingError::new(
                    "backend_url",
                    "expected an http:// or https:// URL",
                ));
            }
            if BackendKind::parse(&self.backend_kind).is_none() {
                return Err(SettingError::new(
                    "backend_kind",
                    "one of vllm, sglang, llama-server, ollama, openai",
                ));
            }
            if crate::config::model_base_name(&self.model).is_none() {
                return Err(SettingError::new(
                    "model",
                    "expected the full model id Name@revision:sha256",
                ));
            }
        }
        if !matches!(self.embeddings.as_str(), "off" | "on" | "only") {
            return Err(SettingError::new("embeddings", "one of off, on, only"));
        }
        if c.root_address.is_empty() && self.proxies.is_empty() {
            return Err(SettingError::new(
                "proxies",
                "no proxy to connect to: give --proxy host:port or --root ADDRESS",
            ));
        }
        self.admin.check()?;
        if c.root_poll_seconds == 0 {
            return Err(SettingError::new("root_poll_seconds", "must be positive"));
        }
        check_proxy_hashes(c.is_test, self.check_proxy_hashes)?;
        if self.worker_fee_per_token > self.price_per_token {
            return Err(SettingError::new(
                "worker_fee_per_token",
                "must not exceed price_per_token",
            ));
        }
        cocoon_ton::parse_ton(&self.min_payout_ton)
            .map_err(|e| SettingError::new("min_payout_ton", e))?;
        let deploy = cocoon_ton::parse_ton(&self.contract_deploy_ton)
            .map_err(|e| SettingError::new("contract_deploy_ton", e))?;
        if deploy < 50_000_000 {
            return Err(SettingError::new(
                "contract_deploy_ton",
                "at least 0.05 TON (the worker contract's minimum balance)",
            ));
        }
        c.check_wallet_version()?;
        self.kms_client().check()?;
        if !self.kms.is_empty() && !c.wallet_key_file.is_empty() {
            return Err(SettingError::new(
                "wallet_key_file",
                "must be empty with kms (the wallet key comes from the KMS)",
            ));
        }
        Ok(())
    }
}
