//! DCAP collateral from a PCCS or Intel PCS (API v4), cached on disk and refreshed before
//! it expires.
//!
//! * [`PccsClient`] fetches the collateral of one FMSPC: PCK CRL
//!   (`/sgx/certification/v4/pckcrl?ca=processor|platform&encoding=der`, issuer chain in
//!   `SGX-PCK-CRL-Issuer-Chain`), TDX TCB info (`/tdx/certification/v4/tcb?fmspc=…`,
//!   `TCB-Info-Issuer-Chain`), TDX QE identity (`/tdx/certification/v4/qe/identity`,
//!   `SGX-Enclave-Identity-Issuer-Chain`) and the Intel root CA CRL (a PCCS's
//!   `/sgx/certification/v4/rootcacrl`, hex or DER; for Intel's PCS the CRL distribution
//!   point of the root certificate). The TCB info and QE identity are kept byte for byte
//!   as served, since their signatures cover those bytes.
//! * [`CollateralFetcher`] serves collateral from memory / the `CollateralStore`
//!   directory, writes fetched collateral there atomically, refreshes it in the background
//!   `margin` seconds before its earliest `nextUpdate`, and keeps serving the old one until
//!   it expires when a refresh fails. Fetched collateral must parse, name the requested
//!   FMSPC and PCK CA, and carry valid signatures up to a pinned root before it replaces
//!   anything (validity times are left to the DCAP verification of each quote).
//!
//! Both are behind the `fetch` feature (HTTP, tokio); the cache directory itself is
//! [`CollateralStore`](crate::CollateralStore).

use std::sync::Arc;
use std::time::Duration;

use crate::error::AttestError;
use crate::tdx::{self, PckCa};

#[cfg(feature = "fetch")]
mod client;
#[cfg(feature = "fetch")]
mod fetcher;
#[cfg(feature = "fetch")]
mod served;

#[cfg(feature = "fetch")]
pub use client::PccsClient;
#[cfg(feature = "fetch")]
pub use fetcher::{CollateralFetcher, RefreshOutcome, collateral_cached_or_fetched};

/// Intel's Provisioning Certification Service.
pub const INTEL_PCS_URL: &str = "https://api.trustedservices.intel.com";
/// Default: refresh collateral three days before its earliest `nextUpdate`.
pub const DEFAULT_REFRESH_MARGIN_SECS: u64 = 3 * 86_400;
/// Largest response body accepted (PCK processor CRLs are a few hundred KiB).
pub const MAX_RESPONSE_LEN: usize = 4 << 20;
/// Default HTTP timeout per request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default: at most one background fetch per FMSPC every ten minutes.
pub const DEFAULT_RETRY_SECS: u64 = 600;

/// Seconds since the Unix epoch, as the caller reads them: the background refreshers take
/// one (the crate itself never reads a clock).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// FMSPC and PCK CA named by a TD quote's PCK certificate (unverified routing data).
pub fn quote_platform(quote: &[u8]) -> Result<([u8; 6], PckCa), AttestError> {
    let parsed = tdx::parse_quote(quote)?;
    let fmspc = parsed.fmspc.ok_or_else(|| {
        AttestError::Malformed("cannot read FMSPC from the quote's PCK certificate".into())
    })?;
    Ok((fmspc, tdx::quote_pck_ca(quote)?))
}

#[cfg(all(test, feature = "fetch"))]
mod tests {
    use super::served::*;
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%0A").as_deref(), Some("a b\n"));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%FF"), None);
    }

    #[test]
    fn base_url_normalised() {
        let c = PccsClient::new("https://pccs.example:8081/sgx/certification/v4/").unwrap();
        assert_eq!(c.base_url(), "https://pccs.example:8081");
        assert_eq!(
            c.url("tdx", "qe/identity"),
            "https://pccs.example:8081/tdx/certification/v4/qe/identity"
        );
        assert!(matches!(
            PccsClient::new("ftp://x"),
            Err(AttestError::PccsConfig(_))
        ));
        assert!(matches!(
            PccsClient::new("not a url"),
            Err(AttestError::PccsConfig(_))
        ));
    }

    #[test]
    fn signed_bodies() {
        let sig = "ab".repeat(64);
        let body = format!(r#"{{"tcbInfo":{{"id":"TDX", "x":1}},"signature":"{sig}"}}"#);
        let (raw, s) = signed_body(body.as_bytes(), "tcbInfo", "TDX").unwrap();
        assert_eq!(raw, r#"{"id":"TDX", "x":1}"#);
        assert_eq!(s.len(), 64);
        assert!(signed_body(body.as_bytes(), "tcbInfo", "SGX").is_err());
        assert!(signed_body(b"garbage", "tcbInfo", "TDX").is_err());
        let short = r#"{"tcbInfo":{"id":"TDX"},"signature":"abcd"}"#;
        assert!(signed_body(short.as_bytes(), "tcbInfo", "TDX").is_err());
    }

    /// For Intel's PCS (no `rootcacrl` endpoint) the root CA CRL comes from the root
    /// certificate's CRL distribution point; read it from the real issuer chain.
    #[test]
    fn root_crl_distribution_point_of_real_chain() {
        let json =
            include_str!("../../../../testvectors/attest/cocoon_quote_collateral_90c06f.json");
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let chain = v["qe_identity_issuer_chain"].as_str().unwrap();
        assert_eq!(
            root_crl_distribution_point(chain).unwrap(),
            "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
        );
        assert!(root_crl_distribution_point("").is_err());
        let c = PccsClient::new(INTEL_PCS_URL).unwrap();
        assert!(c.is_intel_pcs());
        assert!(
            !PccsClient::new("https://pccs.example")
                .unwrap()
                .is_intel_pcs()
        );
    }

    #[test]
    fn crl_bodies() {
        assert!(decode_crl(b"hello").is_err());
        assert!(decode_crl(&[0x30, 0x03, 0, 0, 0]).is_err());
    }
}
