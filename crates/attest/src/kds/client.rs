//! [`KdsClient`]: AMD KDS over HTTP; every answer is verified against the pinned roots before
//! it is returned.

use std::time::Duration;

use super::{
    DEFAULT_TIMEOUT, KdsRoots, MAX_RESPONSE_LEN, SevCertChain, SevCrl, Vcek, VcekKey, fetch_error,
};
use crate::error::AttestError;
use crate::sev::SevGeneration;

/// HTTP client for the AMD KDS (rustls with ring, webpki roots). Transport security is not
/// what makes KDS data trustworthy: everything is checked against the pinned AMD roots,
/// so a plain-HTTP mirror on a local network is as good as AMD's own server.
#[derive(Clone)]
pub struct KdsClient {
    base: String,
    http: cocoon_http::reqwest::Client,
}

impl std::fmt::Debug for KdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KdsClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A DER body, or the same in PEM (`label`).
fn der_body(body: &[u8], label: &str) -> Result<Vec<u8>, String> {
    if body.first() == Some(&0x30) {
        return Ok(body.to_vec());
    }
    let text = body.trim_ascii();
    if text.starts_with(b"-----BEGIN") {
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(text).map_err(|e| format!("bad PEM: {e}"))?;
        if pem.label != label {
            return Err(format!("PEM block {:?}, expected {label:?}", pem.label));
        }
        return Ok(pem.contents);
    }
    Err(format!("body is neither DER nor PEM {label}"))
}

impl KdsClient {
    /// A client for `base_url` (e.g. [`AMD_KDS_URL`](super::AMD_KDS_URL), or a mirror such as
    /// `http://10.0.0.5:8080`; a trailing `/vcek/v1` is accepted).
    pub fn new(base_url: &str) -> Result<Self, AttestError> {
        Self::with_timeout(base_url, DEFAULT_TIMEOUT)
    }

    /// [`Self::new`] with a per-request timeout.
    pub fn with_timeout(base_url: &str, timeout: Duration) -> Result<Self, AttestError> {
        let bad = |r: String| AttestError::KdsConfig(r);
        let base = cocoon_http::base_url(base_url, &["/vcek/v1"]).map_err(bad)?;
        let http = cocoon_http::ClientBuilder::new()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .max_redirects(3)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self { base, http })
    }

    /// The base URL (without `/vcek/v1`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// URL of the generation's ASK/ARK chain.
    pub fn cert_chain_url(&self, product: SevGeneration) -> String {
        format!("{}/vcek/v1/{product}/cert_chain", self.base)
    }

    /// URL of the generation's CRL.
    pub fn crl_url(&self, product: SevGeneration) -> String {
        format!("{}/vcek/v1/{product}/crl", self.base)
    }

    /// `…/vcek/v1/{product}/{hwid}?[fmcSPL=..&]blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`
    /// (SPLs in decimal, at least two digits, as AMD's examples write them).
    pub fn vcek_url(&self, key: &VcekKey) -> String {
        let t = key.tcb;
        let fmc = if key.product == SevGeneration::Turin {
            format!("fmcSPL={:02}&", t.fmc)
        } else {
            String::new()
        };
        format!(
            "{}/vcek/v1/{}/{}?{fmc}blSPL={:02}&teeSPL={:02}&snpSPL={:02}&ucodeSPL={:02}",
            self.base,
            key.product,
            hex::encode(&key.hwid),
            t.bootloader,
            t.tee,
            t.snp,
            t.microcode
        )
    }

    async fn get(
        &self,
        product: SevGeneration,
        item: &str,
        url: &str,
    ) -> Result<Vec<u8>, AttestError> {
        cocoon_http::get_limited(&self.http, url, MAX_RESPONSE_LEN)
            .await
            .map(|f| f.body)
            .map_err(|reason| fetch_error(product, item, url, reason))
    }

    /// Fetch and verify the ASK/ARK chain of `product` ([`SevCertChain::verify`]).
    pub async fn fetch_cert_chain(
        &self,
        product: SevGeneration,
        roots: &KdsRoots,
        now: u64,
    ) -> Result<SevCertChain, AttestError> {
        let url = self.cert_chain_url(product);
        let body = self.get(product, "cert_chain", &url).await?;
        SevCertChain::verify(product, &body, roots, now)
            .map_err(|r| fetch_error(product, "cert_chain", &url, r))
    }

    /// Fetch and verify the CRL of `product` ([`SevCrl::verify`]).
    pub async fn fetch_crl(
        &self,
        product: SevGeneration,
        roots: &KdsRoots,
    ) -> Result<SevCrl, AttestError> {
        let url = self.crl_url(product);
        let body = self.get(product, "CRL", &url).await?;
        der_body(&body, "X509 CRL")
            .and_then(|der| SevCrl::verify(product, &der, roots))
            .map_err(|r| fetch_error(product, "CRL", &url, r))
    }

    /// Fetch the VCEK `key` and verify it against `chain` (which must be `key.product`'s):
    /// signed by the ASK, valid at `now`, and carrying exactly the requested hwID and TCB.
    pub async fn fetch_vcek(
        &self,
        key: &VcekKey,
        chain: &SevCertChain,
        now: u64,
    ) -> Result<Vcek, AttestError> {
        let url = self.vcek_url(key);
        let err = |r: String| fetch_error(key.product, "VCEK", &url, r);
        key.check().map_err(err)?;
        if chain.product != key.product {
            return Err(err(format!(
                "a {} chain for a {} VCEK",
                chain.product, key.product
            )));
        }
        let body = self.get(key.product, "VCEK", &url).await?;
        der_body(&body, "CERTIFICATE")
            .and_then(|der| Vcek::verify(&der, chain, Some(key), now))
            .map_err(err)
    }
}
