//! [`PccsClient`]: the PCS/PCCS v4 API over HTTP.

use std::time::Duration;

use dcap_qvl::QuoteCollateralV3;

use super::served::{
    decode_crl, issuer_chain, root_crl_distribution_point, signed_body, verify_signatures,
};
use super::{DEFAULT_TIMEOUT, INTEL_PCS_URL, MAX_RESPONSE_LEN};
use crate::error::AttestError;
use crate::tdx::{self, PckCa, TdxCollateral};

/// HTTP client for the PCS/PCCS v4 API (rustls with ring, webpki roots).
#[derive(Clone)]
pub struct PccsClient {
    base: String,
    http: cocoon_http::reqwest::Client,
    root_ca_crl_url: Option<String>,
    root_key_ids: Vec<[u8; 48]>,
}

impl std::fmt::Debug for PccsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PccsClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl PccsClient {
    /// A client for `base_url` (e.g. `https://pccs.example:8081`,
    /// `https://pccs.example:8081/sgx/certification/v4` or [`INTEL_PCS_URL`]).
    pub fn new(base_url: &str) -> Result<Self, AttestError> {
        Self::with_timeout(base_url, DEFAULT_TIMEOUT)
    }

    /// [`Self::new`] with a per-request timeout.
    pub fn with_timeout(base_url: &str, timeout: Duration) -> Result<Self, AttestError> {
        Self::with_roots(base_url, timeout, &[])
    }

    /// [`Self::with_timeout`], also trusting `extra_roots` for HTTPS (an explicit setting,
    /// e.g. a local PCCS's own CA; the environment's `SSL_CERT_FILE` is not read).
    pub fn with_roots(
        base_url: &str,
        timeout: Duration,
        extra_roots: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Self, AttestError> {
        let bad = |r: String| AttestError::PccsConfig(r);
        let suffixes = ["/sgx/certification/v4", "/tdx/certification/v4"];
        let base = cocoon_http::base_url(base_url, &suffixes).map_err(bad)?;
        // Only CAs named by the configuration besides WebPKI (collateral is signature-checked
        // up to Intel's pinned root anyway; this is about reaching the server).
        let http = cocoon_http::ClientBuilder::new()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .max_redirects(3)
            .extra_roots(extra_roots)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            base,
            http,
            root_ca_crl_url: None,
            root_key_ids: vec![tdx::INTEL_ROOT_KEY_ID],
        })
    }

    /// Fetch the Intel root CA CRL from `url` instead of the default place.
    pub fn with_root_ca_crl_url(mut self, url: impl Into<String>) -> Self {
        self.root_ca_crl_url = Some(url.into());
        self
    }

    /// Accept collateral whose issuer chains end in a root with one of these key ids
    /// (SHA-384 of the root public key; default: [`tdx::INTEL_ROOT_KEY_ID`]).
    pub fn with_root_key_ids(mut self, ids: Vec<[u8; 48]>) -> Self {
        self.root_key_ids = ids;
        self
    }

    /// The base URL (without `/sgx|tdx/certification/v4`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub(super) fn is_intel_pcs(&self) -> bool {
        self.base.starts_with(INTEL_PCS_URL)
    }

    pub(super) fn url(&self, tee: &str, path: &str) -> String {
        format!("{}/{tee}/certification/v4/{path}", self.base)
    }

    async fn get(
        &self,
        fmspc: &str,
        item: &str,
        url: &str,
    ) -> Result<cocoon_http::Fetched, AttestError> {
        cocoon_http::get_limited(&self.http, url, MAX_RESPONSE_LEN)
            .await
            .map_err(|reason| fetch_error(fmspc, item, url, reason))
    }

    /// Fetch the TDX collateral for `fmspc` whose PCK certificates come from `ca`.
    pub async fn fetch(&self, fmspc: &[u8; 6], ca: PckCa) -> Result<TdxCollateral, AttestError> {
        let fmspc_hex = hex::encode_upper(fmspc);
        let f = fmspc_hex.as_str();

        let item = "PCK CRL";
        let url = self.url("sgx", &format!("pckcrl?ca={ca}&encoding=der"));
        let r = self.get(f, item, &url).await?;
        let pck_crl_issuer_chain = issuer_chain(&r.headers, &["SGX-PCK-CRL-Issuer-Chain"])
            .map_err(|m| fetch_error(f, item, &url, m))?;
        let pck_crl = decode_crl(&r.body).map_err(|m| fetch_error(f, item, &url, m))?;

        let item = "TCB info";
        let url = self.url("tdx", &format!("tcb?fmspc={fmspc_hex}"));
        let r = self.get(f, item, &url).await?;
        let tcb_info_issuer_chain = issuer_chain(
            &r.headers,
            &["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"],
        )
        .map_err(|m| fetch_error(f, item, &url, m))?;
        let (tcb_info, tcb_info_signature) =
            signed_body(&r.body, "tcbInfo", "TDX").map_err(|m| fetch_error(f, item, &url, m))?;

        let item = "QE identity";
        let url = self.url("tdx", "qe/identity");
        let r = self.get(f, item, &url).await?;
        let qe_identity_issuer_chain = issuer_chain(
            &r.headers,
            &[
                "SGX-Enclave-Identity-Issuer-Chain",
                "Enclave-Identity-Issuer-Chain",
            ],
        )
        .map_err(|m| fetch_error(f, item, &url, m))?;
        let (qe_identity, qe_identity_signature) = signed_body(&r.body, "enclaveIdentity", "TD_QE")
            .map_err(|m| fetch_error(f, item, &url, m))?;

        let item = "root CA CRL";
        let url = match &self.root_ca_crl_url {
            Some(u) => u.clone(),
            None if self.is_intel_pcs() => {
                root_crl_distribution_point(&qe_identity_issuer_chain)
                    .map_err(|m| fetch_error(f, item, "(root certificate)", m))?
            }
            None => self.url("sgx", "rootcacrl"),
        };
        let r = self.get(f, item, &url).await?;
        let root_ca_crl = decode_crl(&r.body).map_err(|m| fetch_error(f, item, &url, m))?;

        let inner = QuoteCollateralV3 {
            pck_crl_issuer_chain,
            root_ca_crl,
            pck_crl,
            tcb_info_issuer_chain,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain,
            qe_identity,
            qe_identity_signature,
            pck_certificate_chain: None,
        };
        let c = TdxCollateral::from_inner(inner.clone())
            .map_err(|e| fetch_error(f, "collateral", &self.base, e.to_string()))?;
        if !c.fmspc.eq_ignore_ascii_case(f) {
            return Err(fetch_error(
                f,
                "TCB info",
                &self.url("tdx", &format!("tcb?fmspc={fmspc_hex}")),
                format!("served TCB info is for FMSPC {:?}", c.fmspc),
            ));
        }
        if c.pck_ca != ca {
            return Err(fetch_error(
                f,
                "PCK CRL",
                &self.url("sgx", &format!("pckcrl?ca={ca}&encoding=der")),
                format!("served CRL is from the PCK {} CA", c.pck_ca),
            ));
        }
        verify_signatures(&inner, &self.root_key_ids)
            .map_err(|(item, reason)| fetch_error(f, item, &self.base, reason))?;
        Ok(c)
    }
}

fn fetch_error(fmspc: &str, item: &str, url: &str, reason: String) -> AttestError {
    AttestError::CollateralFetch {
        fmspc: fmspc.to_string(),
        item: item.to_string(),
        url: url.to_string(),
        reason,
    }
}
