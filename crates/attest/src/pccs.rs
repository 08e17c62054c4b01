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
//! * [`CollateralFetcher`] serves collateral from memory / the [`CollateralStore`]
//!   directory, writes fetched collateral there atomically, refreshes it in the background
//!   `margin` seconds before its earliest `nextUpdate`, and keeps serving the old one until
//!   it expires when a refresh fails. Fetched collateral must parse, name the requested
//!   FMSPC and PCK CA, and carry valid signatures up to a pinned root before it replaces
//!   anything (validity times are left to the DCAP verification of each quote).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dcap_qvl::QuoteCollateralV3;
use serde_json::value::RawValue;
use x509_parser::prelude::FromDer;

use crate::error::AttestError;
use crate::tdx::{self, CollateralStore, PckCa, TdxCollateral};

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

/// Seconds since the Unix epoch; injectable for tests.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// HTTP client for the PCS/PCCS v4 API (rustls with ring, webpki roots).
#[derive(Clone)]
pub struct PccsClient {
    base: String,
    http: reqwest::Client,
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

struct Fetched {
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
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
        let mut base = base_url.trim().trim_end_matches('/');
        for suffix in ["/sgx/certification/v4", "/tdx/certification/v4"] {
            base = base.strip_suffix(suffix).unwrap_or(base);
        }
        let base = base.trim_end_matches('/');
        let url =
            reqwest::Url::parse(base).map_err(|e| bad(format!("bad URL {base_url:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad(format!("URL {base_url:?} is not http(s)://host")));
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        // Only CAs named by the configuration besides WebPKI (collateral is signature-checked
        // up to Intel's pinned root anyway; this is about reaching the server).
        roots.add_parsable_certificates(extra_roots.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| bad(format!("HTTP client: {}", error_chain(&e))))?;
        Ok(Self {
            base: base.to_string(),
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

    fn is_intel_pcs(&self) -> bool {
        self.base.starts_with(INTEL_PCS_URL)
    }

    fn url(&self, tee: &str, path: &str) -> String {
        format!("{}/{tee}/certification/v4/{path}", self.base)
    }

    async fn get(&self, fmspc: &str, item: &str, url: &str) -> Result<Fetched, AttestError> {
        let err = |reason: String| fetch_error(fmspc, item, url, reason);
        let mut resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| err(error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(err(format!("HTTP {status}")));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_LEN as u64)
        {
            return Err(err(format!(
                "response larger than {MAX_RESPONSE_LEN} bytes"
            )));
        }
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| err(error_chain(&e)))? {
            if body.len() + chunk.len() > MAX_RESPONSE_LEN {
                return Err(err(format!(
                    "response larger than {MAX_RESPONSE_LEN} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched { headers, body })
    }

    /// Fetch the TDX collateral for `fmspc` whose PCK certificates come from `ca`.
    pub async fn fetch(&self, fmspc: &[u8; 6], ca: PckCa) -> Result<TdxCollateral, AttestError> {
        let fmspc_hex = hex::encode_upper(fmspc);
        let f = fmspc_hex.as_str();

        let item = "PCK CRL";
        let url = self.url("sgx", &format!("pckcrl?ca={ca}&encoding=der"));
        let r = self.get(f, item, &url).await?;
        let pck_crl_issuer_chain = issuer_chain(&r, &["SGX-PCK-CRL-Issuer-Chain"])
            .map_err(|m| fetch_error(f, item, &url, m))?;
        let pck_crl = decode_crl(&r.body).map_err(|m| fetch_error(f, item, &url, m))?;

        let item = "TCB info";
        let url = self.url("tdx", &format!("tcb?fmspc={fmspc_hex}"));
        let r = self.get(f, item, &url).await?;
        let tcb_info_issuer_chain =
            issuer_chain(&r, &["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"])
                .map_err(|m| fetch_error(f, item, &url, m))?;
        let (tcb_info, tcb_info_signature) =
            signed_body(&r.body, "tcbInfo", "TDX").map_err(|m| fetch_error(f, item, &url, m))?;

        let item = "QE identity";
        let url = self.url("tdx", "qe/identity");
        let r = self.get(f, item, &url).await?;
        let qe_identity_issuer_chain = issuer_chain(
            &r,
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

impl PccsClient {
    /// [`Self::fetch`] on a private single-threaded runtime, for callers outside any
    /// async runtime (the CLI). Must not be called from within a tokio runtime.
    pub fn fetch_blocking(&self, fmspc: &[u8; 6], ca: PckCa) -> Result<TdxCollateral, AttestError> {
        block_on(self.fetch(fmspc, ca))
    }
}

fn block_on<T>(
    f: impl std::future::Future<Output = Result<T, AttestError>>,
) -> Result<T, AttestError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AttestError::PccsConfig(format!("tokio runtime: {e}")))?
        .block_on(f)
}

fn fetch_error(fmspc: &str, item: &str, url: &str, reason: String) -> AttestError {
    AttestError::CollateralFetch {
        fmspc: fmspc.to_string(),
        item: item.to_string(),
        url: url.to_string(),
        reason,
    }
}

/// (collateral item, reason).
type SigError = (&'static str, String);

/// Check the signatures of fetched collateral up to a pinned root key, so that a PCCS (or
/// anyone between it and us) cannot replace good cached collateral with forged or corrupted
/// collateral: each issuer chain is signed link by link up to a self-signed root whose key
/// id is pinned; the TCB info, QE identity and both CRLs are signed by their chain's first
/// certificate (the root CA CRL by the root). Validity times are left to DCAP verification.
/// `Err((item, reason))`.
fn verify_signatures(c: &QuoteCollateralV3, root_key_ids: &[[u8; 48]]) -> Result<(), SigError> {
    use ring::signature::{ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
    use sha2::{Digest, Sha384};
    use x509_parser::certificate::X509Certificate;

    fn chain_ders(pem: &str) -> Vec<Vec<u8>> {
        x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .filter_map(Result::ok)
            .map(|p| p.contents)
            .collect()
    }
    let key_of = |der: &[u8]| -> Result<Vec<u8>, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        Ok(cert.public_key().subject_public_key.data.to_vec())
    };
    let verify_cert = |der: &[u8], issuer_key: &[u8]| -> Result<(), String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, issuer_key)
            .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
            .map_err(|_| {
                format!(
                    "certificate {:?} is not signed by its issuer",
                    first_cn_of(&cert)
                )
            })
    };
    // The chain's first certificate's key, after checking the chain up to a pinned root.
    let chain_key = |item: &'static str, pem: &str| -> Result<(Vec<u8>, Vec<u8>), SigError> {
        let ders = chain_ders(pem);
        let root = ders
            .last()
            .ok_or((item, "empty issuer chain".to_string()))?;
        let root_key = key_of(root).map_err(|e| (item, format!("issuer chain: {e}")))?;
        let id: [u8; 48] = Sha384::digest(&root_key).into();
        if !root_key_ids.contains(&id) {
            return Err((
                item,
                format!("issuer chain root key id {} is not pinned", hex::encode(id)),
            ));
        }
        verify_cert(root, &root_key).map_err(|e| (item, format!("root: {e}")))?;
        for pair in ders.windows(2) {
            let issuer_key = key_of(&pair[1]).map_err(|e| (item, e))?;
            verify_cert(&pair[0], &issuer_key).map_err(|e| (item, e))?;
        }
        let leaf_key = key_of(&ders[0]).map_err(|e| (item, e))?;
        Ok((leaf_key, root_key))
    };
    let verify_crl = |item: &'static str, der: &[u8], key: &[u8]| -> Result<(), SigError> {
        let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der)
            .map_err(|e| (item, e.to_string()))?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key)
            .verify(crl.tbs_cert_list.as_ref(), &crl.signature_value.data)
            .map_err(|_| {
                (
                    item,
                    "CRL signature does not verify with its issuer chain".to_string(),
                )
            })
    };

    let (key, _) = chain_key("TCB info", &c.tcb_info_issuer_chain)?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key)
        .verify(c.tcb_info.as_bytes(), &c.tcb_info_signature)
        .map_err(|_| {
            (
                "TCB info",
                "signature does not verify with its issuer chain".to_string(),
            )
        })?;
    let (key, _) = chain_key("QE identity", &c.qe_identity_issuer_chain)?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key)
        .verify(c.qe_identity.as_bytes(), &c.qe_identity_signature)
        .map_err(|_| {
            (
                "QE identity",
                "signature does not verify with its issuer chain".to_string(),
            )
        })?;
    let (key, root_key) = chain_key("PCK CRL", &c.pck_crl_issuer_chain)?;
    verify_crl("PCK CRL", &c.pck_crl, &key)?;
    verify_crl("root CA CRL", &c.root_ca_crl, &root_key)?;
    Ok(())
}

fn first_cn_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// `err: cause: cause…` (reqwest's `Display` alone hides the cause).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// An issuer-chain header: URL-encoded PEM certificates, which must parse.
fn issuer_chain(r: &Fetched, names: &[&str]) -> Result<String, String> {
    let value = names
        .iter()
        .find_map(|n| r.headers.get(*n))
        .ok_or_else(|| format!("missing header {}", names.join(" / ")))?;
    let value = value
        .to_str()
        .map_err(|_| format!("header {} is not ASCII", names[0]))?;
    let pem =
        percent_decode(value).ok_or_else(|| format!("header {} is not URL-encoded", names[0]))?;
    let mut n = 0;
    for p in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let p = p.map_err(|e| format!("header {}: bad PEM: {e}", names[0]))?;
        p.parse_x509()
            .map_err(|e| format!("header {}: bad certificate: {e}", names[0]))?;
        n += 1;
    }
    if n == 0 {
        return Err(format!("header {} holds no certificate", names[0]));
    }
    Ok(pem)
}

/// `%XX` decoding (strict: a malformed escape or non-UTF-8 result is an error).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A CRL body: DER, PEM, or hex text of the DER (PCCS `rootcacrl`).
fn decode_crl(body: &[u8]) -> Result<Vec<u8>, String> {
    let der = if body.first() == Some(&0x30) {
        body.to_vec()
    } else {
        let text = body.trim_ascii();
        if text.starts_with(b"-----BEGIN") {
            let (_, pem) =
                x509_parser::pem::parse_x509_pem(text).map_err(|e| format!("bad PEM CRL: {e}"))?;
            pem.contents
        } else {
            hex::decode(text).map_err(|_| "body is neither a DER, PEM nor hex CRL".to_string())?
        }
    };
    tdx::crl_window(&der).map_err(|e| format!("bad CRL: {e}"))?;
    Ok(der)
}

/// `{"<key>": {...}, "signature": "<hex>"}` → (the object's exact bytes, signature).
fn signed_body(body: &[u8], key: &str, id: &str) -> Result<(String, Vec<u8>), String> {
    let map: HashMap<String, &RawValue> =
        serde_json::from_slice(body).map_err(|e| format!("body is not a JSON object: {e}"))?;
    let raw = map
        .get(key)
        .ok_or_else(|| format!("body has no {key:?} member"))?;
    let obj: serde_json::Value =
        serde_json::from_str(raw.get()).map_err(|e| format!("{key}: {e}"))?;
    let got = obj.get("id").and_then(|v| v.as_str()).unwrap_or_default();
    if got != id {
        return Err(format!("{key}.id is {got:?}, expected {id:?}"));
    }
    let sig = map
        .get("signature")
        .ok_or("body has no \"signature\" member")?;
    let sig: String =
        serde_json::from_str(sig.get()).map_err(|e| format!("signature is not a string: {e}"))?;
    let sig = hex::decode(sig.trim()).map_err(|_| "signature is not hex".to_string())?;
    if sig.len() != 64 {
        return Err(format!("signature is {} bytes, expected 64", sig.len()));
    }
    Ok((raw.get().to_string(), sig))
}

/// The CRL distribution point URL of the last (root) certificate of a PEM chain.
fn root_crl_distribution_point(chain_pem: &str) -> Result<String, String> {
    use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
    let last = x509_parser::pem::Pem::iter_from_buffer(chain_pem.as_bytes())
        .filter_map(Result::ok)
        .last()
        .ok_or("issuer chain holds no certificate")?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&last.contents)
        .map_err(|e| format!("root certificate: {e}"))?;
    for ext in cert.extensions() {
        if let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() {
            for p in points.iter() {
                if let Some(DistributionPointName::FullName(names)) = &p.distribution_point {
                    for n in names {
                        if let GeneralName::URI(u) = n {
                            return Ok(u.to_string());
                        }
                    }
                }
            }
        }
    }
    Err("root certificate has no CRL distribution point".into())
}

#[derive(Debug, Default)]
struct Tracked {
    /// PCK CA of the platforms with this FMSPC (from a quote or the cached CRL).
    ca: Option<PckCa>,
    current: Option<Arc<TdxCollateral>>,
    last_error: Option<String>,
    /// Clock time of the last fetch attempt.
    last_attempt: Option<u64>,
}

/// What one refresh did.
#[derive(Debug)]
pub struct RefreshOutcome {
    pub fmspc: [u8; 6],
    /// `Ok(expires_at)` of the stored collateral, or why the fetch failed (the previous
    /// collateral, if any, stays in use).
    pub result: Result<u64, AttestError>,
}

/// Collateral served from memory and a cache directory, fetched from a PCCS/PCS when
/// missing and refreshed `margin` seconds before it expires (see the module docs).
pub struct CollateralFetcher {
    client: PccsClient,
    store: CollateralStore,
    margin: u64,
    retry: u64,
    state: Mutex<HashMap<[u8; 6], Tracked>>,
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for CollateralFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollateralFetcher")
            .field("client", &self.client)
            .field("dir", &self.store.dir())
            .field("margin", &self.margin)
            .finish_non_exhaustive()
    }
}

impl CollateralFetcher {
    /// A fetcher for `client`, caching in `store`. Collateral already in the directory is
    /// loaded (and tracked for refresh); unreadable files are refetched.
    pub fn new(client: PccsClient, store: CollateralStore) -> Self {
        let mut map = HashMap::new();
        for fmspc in store.list() {
            let t = match store.load_unchecked(&fmspc) {
                Ok(c) => Tracked {
                    ca: Some(c.pck_ca),
                    current: Some(Arc::new(c)),
                    ..Tracked::default()
                },
                Err(e) => Tracked {
                    last_error: Some(e.to_string()),
                    ..Tracked::default()
                },
            };
            map.insert(fmspc, t);
        }
        Self {
            client,
            store,
            margin: DEFAULT_REFRESH_MARGIN_SECS,
            retry: DEFAULT_RETRY_SECS,
            state: Mutex::new(map),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Refresh `secs` seconds before the earliest `nextUpdate` (default
    /// [`DEFAULT_REFRESH_MARGIN_SECS`]).
    pub fn with_refresh_margin(mut self, secs: u64) -> Self {
        self.margin = secs;
        self
    }

    /// Background fetches of one FMSPC are at least `secs` apart (default
    /// [`DEFAULT_RETRY_SECS`]), so a failing PCCS or a PCCS without newer collateral is not
    /// asked again on every handshake.
    pub fn with_retry_interval(mut self, secs: u64) -> Self {
        self.retry = secs;
        self
    }

    pub fn client(&self) -> &PccsClient {
        &self.client
    }

    pub fn store(&self) -> &CollateralStore {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 6], Tracked>> {
        // Every update is a single field assignment: a poisoned map is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The collateral for `fmspc` valid at `now`. A missing one is requested from the
    /// background refresher ([`Self::spawn_refresher`]) and reported as
    /// [`AttestError::MissingCollateral`] naming the FMSPC; an expired one as
    /// [`AttestError::CollateralExpired`] naming the FMSPC and the item. Never blocks on
    /// the network.
    pub fn collateral(
        &self,
        fmspc: &[u8; 6],
        ca: PckCa,
        now: u64,
    ) -> Result<TdxCollateral, AttestError> {
        let mut st = self.lock();
        let t = st.entry(*fmspc).or_default();
        t.ca = Some(ca);
        // Collateral cached for the other PCK CA cannot verify this quote: fetch again.
        let current = t.current.clone().filter(|c| c.pck_ca == ca);
        let Some(c) = current else {
            let last = t
                .last_error
                .as_ref()
                .map(|e| format!("; last fetch failed: {e}"))
                .unwrap_or_default();
            drop(st);
            self.wake.notify_one();
            return Err(AttestError::MissingCollateral {
                what: format!(
                    "TDX collateral for FMSPC {} (PCK {ca} CA): not in {} and not fetched yet \
                     from {}{last}; fetch requested",
                    hex::encode_upper(fmspc),
                    self.store.dir().display(),
                    self.client.base_url(),
                ),
            });
        };
        drop(st);
        if now.saturating_add(self.margin) >= c.expires_at() {
            self.wake.notify_one();
        }
        c.check_window(now, None)?;
        Ok((*c).clone())
    }

    /// [`Self::collateral`] for the FMSPC and PCK CA named by the quote's PCK certificate.
    pub fn collateral_for_quote(
        &self,
        quote: &[u8],
        now: u64,
    ) -> Result<TdxCollateral, AttestError> {
        let (fmspc, ca) = quote_platform(quote)?;
        self.collateral(&fmspc, ca, now)
    }

    /// Fetch the collateral for `fmspc` now; on success write it to the cache directory
    /// (atomically) and serve it from then on. It must be valid at `now` and not older
    /// than the collateral it replaces; otherwise the old one stays.
    pub async fn refresh(
        &self,
        fmspc: &[u8; 6],
        ca: PckCa,
        now: u64,
    ) -> Result<Arc<TdxCollateral>, AttestError> {
        let result = self.fetch_checked(fmspc, ca, now).await;
        let mut st = self.lock();
        let t = st.entry(*fmspc).or_default();
        t.ca = Some(ca);
        t.last_attempt = Some(now);
        match result {
            Ok(c) => {
                t.current = Some(Arc::clone(&c));
                t.last_error = None;
                Ok(c)
            }
            Err(e) => {
                t.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    async fn fetch_checked(
        &self,
        fmspc: &[u8; 6],
        ca: PckCa,
        now: u64,
    ) -> Result<Arc<TdxCollateral>, AttestError> {
        let c = self.client.fetch(fmspc, ca).await?;
        c.check_window(now, None)?;
        let current = self.lock().get(fmspc).and_then(|t| t.current.clone());
        if let Some(old) = current
            && (c.tcb_info_issue < old.tcb_info_issue
                || c.qe_identity_issue < old.qe_identity_issue)
        {
            return Err(AttestError::InvalidCollateral {
                what: format!(
                    "collateral for FMSPC {} from {}",
                    hex::encode_upper(fmspc),
                    self.client.base_url()
                ),
                reason: "older than the cached collateral".into(),
            });
        }
        self.store.save(&c)?;
        Ok(Arc::new(c))
    }

    /// [`Self::refresh`] on a private single-threaded runtime, for callers outside any
    /// async runtime (the CLI). Must not be called from within a tokio runtime.
    pub fn refresh_blocking(
        &self,
        fmspc: &[u8; 6],
        ca: PckCa,
        now: u64,
    ) -> Result<Arc<TdxCollateral>, AttestError> {
        block_on(self.refresh(fmspc, ca, now))
    }

    /// FMSPCs whose collateral is missing or within `margin` of expiry at `now`, whose PCK
    /// CA is known, and that were not tried within the retry interval.
    pub fn due(&self, now: u64) -> Vec<([u8; 6], PckCa)> {
        let mut out: Vec<_> = self
            .lock()
            .iter()
            .filter_map(|(f, t)| {
                let ca = t.ca?;
                if t.last_attempt
                    .is_some_and(|a| a <= now && now < a.saturating_add(self.retry))
                {
                    return None;
                }
                let due = t.current.as_ref().is_none_or(|c| {
                    c.pck_ca != ca || now.saturating_add(self.margin) >= c.expires_at()
                });
                due.then_some((*f, ca))
            })
            .collect();
        out.sort_unstable_by_key(|(f, _)| *f);
        out
    }

    /// Refresh every collateral that is [`Self::due`] at `now`.
    pub async fn refresh_due(&self, now: u64) -> Vec<RefreshOutcome> {
        let mut out = Vec::new();
        for (fmspc, ca) in self.due(now) {
            let result = self.refresh(&fmspc, ca, now).await;
            match &result {
                Ok(c) => tracing::info!(
                    fmspc = %hex::encode_upper(fmspc),
                    expires_at = c.expires_at(),
                    "TDX collateral refreshed"
                ),
                Err(e) => tracing::warn!(
                    fmspc = %hex::encode_upper(fmspc),
                    error = %e,
                    "TDX collateral refresh failed; previous collateral kept"
                ),
            }
            out.push(RefreshOutcome {
                fmspc,
                result: result.map(|c| c.expires_at()),
            });
        }
        out
    }

    /// Run [`Self::refresh_due`] every `interval`, and at once when
    /// [`Self::collateral`] finds a collateral missing or due. Abort the handle to stop.
    pub fn spawn_refresher(
        self: &Arc<Self>,
        clock: Clock,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                this.refresh_due(clock()).await;
                let _ = tokio::time::timeout(interval, this.wake.notified()).await;
            }
        })
    }

    /// The last fetch error for `fmspc`, if its last fetch failed.
    pub fn last_error(&self, fmspc: &[u8; 6]) -> Option<String> {
        self.lock().get(fmspc).and_then(|t| t.last_error.clone())
    }
}

/// FMSPC and PCK CA named by a TD quote's PCK certificate (unverified routing data).
pub fn quote_platform(quote: &[u8]) -> Result<([u8; 6], PckCa), AttestError> {
    let parsed = tdx::parse_quote(quote)?;
    let fmspc = parsed.fmspc.ok_or_else(|| {
        AttestError::Malformed("cannot read FMSPC from the quote's PCK certificate".into())
    })?;
    Ok((fmspc, tdx::quote_pck_ca(quote)?))
}

#[cfg(test)]
mod tests {
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
        let json = include_str!("../../../testvectors/attest/cocoon_quote_collateral_90c06f.json");
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
