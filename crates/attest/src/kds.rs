//! AMD KDS (Key Distribution Service) data for SEV-SNP: VCEKs, the ASK/ARK chain and the
//! ARK-signed CRL of each product, fetched over HTTP, checked against the pinned AMD roots
//! before anything is cached or used, kept in a directory and refreshed in the background
//! (the same design as the TDX collateral cache in [`crate::pccs`]).
//!
//! * [`KdsClient`] fetches, per product (`Milan`, `Genoa`, `Turin`):
//!   `GET /vcek/v1/{product}/cert_chain` (PEM: ASK, ARK), `GET /vcek/v1/{product}/crl` (DER
//!   CRL signed by the ARK) and `GET /vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..
//!   &ucodeSPL=..` (DER VCEK; Turin: an 8-byte hwID and `fmcSPL` first).
//! * [`VcekStore`] is the cache directory: `<dir>/<Product>/cert_chain.pem`,
//!   `<dir>/<Product>/crl.der`, `<dir>/<Product>/vcek/<hwid>-<fmc bl tee snp ucode>.der`.
//!   Every file is verified again when read ([`SevCertChain::verify`], [`SevCrl::verify`],
//!   [`Vcek::verify`]): the disk of a TEE host belongs to the host, so a tampered file is
//!   refused, never trusted.
//! * [`KdsFetcher`] serves that data from memory, never touches the network on a lookup
//!   (a miss is [`AttestError::MissingCollateral`] and wakes the refresher), and refreshes in
//!   the background ([`KdsFetcher::spawn_refresher`]): CRLs `margin` seconds before their
//!   `nextUpdate` and at least every `crl_max_age`, each item at most once per retry
//!   interval.
//! * [`check_revocation`] applies a CRL to a verified report: the ASK or the VCEK whose
//!   serial the CRL lists is refused. AMD publishes one CRL per product, issued by the ARK;
//!   every AMD VCEK has serial 0 and no AMD ARK or ASK does, so a listed 0 revokes every
//!   VCEK of the product. The CRL must be issued by the ASK's issuer (the ARK).
//!
//! Time is always an argument (`now`, Unix seconds).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::error::AttestError;
use crate::pccs::Clock;
use crate::sev::{self, SevError, SevGeneration, SevPolicy, SevTcb, SevVerified};

/// AMD's public KDS.
pub const AMD_KDS_URL: &str = "https://kdsintf.amd.com";
/// Largest response accepted (a VCEK is ~1.4 KiB, a chain ~4 KiB, a CRL a few KiB).
pub const MAX_RESPONSE_LEN: usize = 1 << 20;
/// Default HTTP timeout per request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default: refresh a CRL three days before its `nextUpdate`.
pub const DEFAULT_REFRESH_MARGIN_SECS: u64 = 3 * 86_400;
/// Default: fetch each CRL again at least daily, so a revocation AMD publishes before the
/// old CRL's `nextUpdate` arrives within a day.
pub const DEFAULT_CRL_MAX_AGE_SECS: u64 = 86_400;
/// Default: at most one fetch of an item every ten minutes (failures are not hammered).
pub const DEFAULT_RETRY_SECS: u64 = 600;
/// Tolerated clock skew for a CRL's `thisUpdate` in the future.
pub const CLOCK_SKEW_SECS: u64 = 300;
/// Most VCEK files read from one product's cache directory (the host controls the disk).
pub const MAX_LISTED_VCEKS: usize = 4096;

const OID_RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";

/// The roots KDS data must chain to: per product, the ARK (DER). Production uses only
/// [`KdsRoots::amd`], the roots built into the `sev` crate, which are also the roots
/// [`sev::verify_report_at`] pins; unit tests may substitute a test ARK to sign CRLs.
#[derive(Clone, PartialEq, Eq)]
pub struct KdsRoots {
    arks: Vec<(SevGeneration, Vec<u8>)>,
}

impl std::fmt::Debug for KdsRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_amd() {
            "KdsRoots(AMD)"
        } else {
            "KdsRoots(test)"
        })
    }
}

impl KdsRoots {
    /// AMD's ARKs for Milan, Genoa and Turin.
    pub fn amd() -> Self {
        Self {
            arks: SevGeneration::ALL
                .into_iter()
                .map(|g| (g, sev::builtin_ark_der(g)))
                .collect(),
        }
    }

    /// Whether these are exactly AMD's roots.
    pub fn is_amd(&self) -> bool {
        *self == Self::amd()
    }

    /// The ARK (DER) of `product`.
    pub fn ark(&self, product: SevGeneration) -> &[u8] {
        self.arks
            .iter()
            .find(|(g, _)| *g == product)
            .map(|(_, d)| d.as_slice())
            .unwrap_or_default()
    }

    /// Replace the ARK of `product` (unit tests only: there is no way to do this from
    /// outside the crate, so production pinning cannot be weakened by configuration).
    #[cfg(test)]
    pub(crate) fn with_ark(mut self, product: SevGeneration, ark_der: Vec<u8>) -> Self {
        for (g, d) in &mut self.arks {
            if *g == product {
                *d = ark_der.clone();
            }
        }
        self
    }
}

fn x509<'a>(what: &str, der: &'a [u8]) -> Result<X509Certificate<'a>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], c)) => Ok(c),
        Ok(_) => Err(format!("{what}: trailing bytes after the certificate")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

fn unix(t: i64, what: &str) -> Result<u64, String> {
    u64::try_from(t).map_err(|_| format!("{what} {t} is before 1970"))
}

/// Verifies `sig` over `tbs` with the ARK's key: RSASSA-PSS with SHA-384 (AMD's ARKs) or
/// ECDSA P-384 with SHA-384 (test roots); any other algorithm is refused.
fn verify_signed(alg_oid: &str, ark: &X509Certificate<'_>, tbs: &[u8], sig: &[u8]) -> bool {
    use ring::signature::{
        ECDSA_P384_SHA384_ASN1, RSA_PSS_2048_8192_SHA384, UnparsedPublicKey, VerificationAlgorithm,
    };
    let alg: &'static dyn VerificationAlgorithm = match alg_oid {
        OID_RSASSA_PSS => &RSA_PSS_2048_8192_SHA384,
        OID_ECDSA_SHA384 => &ECDSA_P384_SHA384_ASN1,
        _ => return false,
    };
    let key = ark.public_key().subject_public_key.data.as_ref();
    UnparsedPublicKey::new(alg, key).verify(tbs, sig).is_ok()
}

/// A product's ASK and ARK as served by `cert_chain`, the ARK byte-identical to the pinned
/// root and the ASK signed by it. Only [`SevCertChain::verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SevCertChain {
    product: SevGeneration,
    pem: Vec<u8>,
    ask_der: Vec<u8>,
    not_after: u64,
}

impl SevCertChain {
    /// Checks a PEM bundle (ASK and ARK, either order) for `product`: exactly two
    /// certificates, the self-issued one identical to the pinned ARK, the other signed by
    /// it, both valid at `now`.
    pub fn verify(
        product: SevGeneration,
        pem: &[u8],
        roots: &KdsRoots,
        now: u64,
    ) -> Result<Self, String> {
        let ders = sev::pem_certs(pem).map_err(|e| e.to_string())?;
        if ders.len() != 2 {
            return Err(format!(
                "expected 2 certificates (ASK, ARK), found {}",
                ders.len()
            ));
        }
        let ark = roots.ark(product);
        let (ask_der, ark_der) = match (ders[0] == ark, ders[1] == ark) {
            (false, true) => (&ders[0], &ders[1]),
            (true, false) => (&ders[1], &ders[0]),
            _ => {
                return Err(format!(
                    "the chain does not hold the pinned {product} ARK once"
                ));
            }
        };
        let signer = sev::sev_cert("ARK", ark_der).map_err(|e| e.to_string())?;
        let signee = sev::sev_cert("ASK", ask_der).map_err(|e| e.to_string())?;
        sev::cert_verify(("ARK", &signer), ("ASK", &signee)).map_err(|e| e.to_string())?;
        let now_i = i64::try_from(now).unwrap_or(i64::MAX);
        sev::check_validity("ARK", ark_der, now_i).map_err(|e| e.to_string())?;
        sev::check_validity("ASK", ask_der, now_i).map_err(|e| e.to_string())?;
        let not_after = [ask_der, ark_der]
            .iter()
            .map(|d| x509("chain", d).map(|c| c.validity().not_after.timestamp()))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .min()
            .unwrap_or(0);
        Ok(Self {
            product,
            pem: pem.to_vec(),
            ask_der: ask_der.clone(),
            not_after: unix(not_after, "notAfter")?,
        })
    }

    pub fn product(&self) -> SevGeneration {
        self.product
    }

    /// The bundle as served (the evidence format's `chain_pem`).
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }

    pub fn ask_der(&self) -> &[u8] {
        &self.ask_der
    }

    /// Earliest `notAfter` of the ASK and ARK.
    pub fn not_after(&self) -> u64 {
        self.not_after
    }
}

/// A product's CRL whose signature verifies with the pinned ARK and whose issuer is that
/// ARK. Only [`SevCrl::verify`] makes one; its time window is checked where it is used
/// ([`check_revocation`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SevCrl {
    product: SevGeneration,
    der: Vec<u8>,
    issuer: Vec<u8>,
    this_update: u64,
    next_update: u64,
    number: Option<Vec<u8>>,
    revoked: Vec<Vec<u8>>,
}

impl SevCrl {
    /// Checks a DER CRL for `product`: parses completely, issued by the pinned ARK (name and
    /// signature), has a `nextUpdate`, and carries no critical extension we do not know.
    pub fn verify(product: SevGeneration, der: &[u8], roots: &KdsRoots) -> Result<Self, String> {
        let crl = match CertificateRevocationList::from_der(der) {
            Ok(([], crl)) => crl,
            Ok(_) => return Err("trailing bytes after the CRL".into()),
            Err(e) => return Err(format!("not a DER CRL: {e}")),
        };
        let ark = x509("ARK", roots.ark(product))?;
        if crl.issuer().as_raw() != ark.subject().as_raw() {
            return Err(format!(
                "issued by {}, not by the {product} ARK",
                crl.issuer()
            ));
        }
        let alg = crl.signature_algorithm.algorithm.to_id_string();
        if !verify_signed(
            &alg,
            &ark,
            crl.tbs_cert_list.as_ref(),
            &crl.signature_value.data,
        ) {
            return Err(format!(
                "signature ({alg}) does not verify with the {product} ARK"
            ));
        }
        let unknown_critical = |exts: &[x509_parser::extensions::X509Extension<'_>]| {
            exts.iter()
                .find(|e| {
                    e.critical
                        && matches!(
                            e.parsed_extension(),
                            ParsedExtension::UnsupportedExtension { .. }
                                | ParsedExtension::ParseError { .. }
                        )
                })
                .map(|e| e.oid.to_id_string())
        };
        if let Some(oid) = unknown_critical(crl.extensions()) {
            return Err(format!("unknown critical extension {oid}"));
        }
        let mut revoked = Vec::new();
        for entry in crl.iter_revoked_certificates() {
            if let Some(oid) = unknown_critical(entry.extensions()) {
                return Err(format!("unknown critical entry extension {oid}"));
            }
            revoked.push(sev::normalize_serial(entry.raw_serial()));
        }
        let next_update = crl.next_update().ok_or("the CRL has no nextUpdate")?;
        Ok(Self {
            product,
            der: der.to_vec(),
            issuer: crl.issuer().as_raw().to_vec(),
            this_update: unix(crl.last_update().timestamp(), "thisUpdate")?,
            next_update: unix(next_update.timestamp(), "nextUpdate")?,
            number: crl.crl_number().map(|n| n.to_bytes_be()),
            revoked,
        })
    }

    pub fn product(&self) -> SevGeneration {
        self.product
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn this_update(&self) -> u64 {
        self.this_update
    }

    pub fn next_update(&self) -> u64 {
        self.next_update
    }

    /// Whether `serial` (unsigned big-endian, any leading zeros) is listed.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        let s = sev::normalize_serial(serial);
        self.revoked.contains(&s)
    }

    /// Whether `self` is older than `other` (earlier `thisUpdate`, or a lower CRL number):
    /// a fetched CRL older than the cached one is a rollback and is refused.
    fn older_than(&self, other: &SevCrl) -> bool {
        let num = |n: &Option<Vec<u8>>| n.as_deref().map(sev::normalize_serial);
        let number_lower = match (num(&self.number), num(&other.number)) {
            (Some(a), Some(b)) => (a.len(), &a) < (b.len(), &b),
            _ => false,
        };
        self.this_update < other.this_update || number_lower
    }
}

/// A product's VCEK for one chip (hwID) and TCB, signed by the product's verified ASK.
/// Only [`Vcek::verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vcek {
    key: VcekKey,
    der: Vec<u8>,
    not_after: u64,
}

/// Which VCEK: product, chip (hwID: 64 bytes on Milan and Genoa, 8 on Turin) and TCB.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VcekKey {
    pub product: SevGeneration,
    pub hwid: Vec<u8>,
    pub tcb: SevTcb,
}

impl std::fmt::Display for VcekKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = hex::encode(&self.hwid);
        write!(
            f,
            "{} VCEK for chip {}… TCB {}",
            self.product,
            &h[..h.len().min(16)],
            self.tcb
        )
    }
}

impl VcekKey {
    /// The key of the VCEK that must sign `report` (an unverified SEV-SNP report of
    /// `product`): its chip id (the hwID's length for the product) and reported TCB.
    pub fn for_report(product: SevGeneration, report: &[u8]) -> Result<Self, AttestError> {
        let info = sev::parse_report(report)?;
        let n = product.hwid_len();
        if info.chip_id[n..].iter().any(|&b| b != 0) {
            return Err(AttestError::Malformed(format!(
                "SEV-SNP report chip id is longer than a {product} hwID ({n} bytes)"
            )));
        }
        // Decode the TCB with the product's layout (the parser only guesses it).
        let off = sev::OFF_REPORTED_TCB;
        let raw: [u8; 8] = report[off..off + 8].try_into().unwrap_or_default();
        let tcb = sev::decode_tcb(raw, product == SevGeneration::Turin);
        Ok(Self {
            product,
            hwid: info.chip_id[..n].to_vec(),
            tcb,
        })
    }

    fn check(&self) -> Result<(), String> {
        let n = self.product.hwid_len();
        if self.hwid.len() != n {
            return Err(format!(
                "a {} hwID is {n} bytes, not {}",
                self.product,
                self.hwid.len()
            ));
        }
        if self.product != SevGeneration::Turin && self.tcb.fmc != 0 {
            return Err(format!("{} has no FMC", self.product));
        }
        Ok(())
    }
}

impl Vcek {
    /// Checks a DER VCEK: signed by `chain`'s ASK, valid at `now`, TCB and hwID extensions
    /// present (FMC on Turin) and, when `expected` is given, equal to it.
    pub fn verify(
        der: &[u8],
        chain: &SevCertChain,
        expected: Option<&VcekKey>,
        now: u64,
    ) -> Result<Self, String> {
        let product = chain.product;
        let ask = sev::sev_cert("ASK", &chain.ask_der).map_err(|e| e.to_string())?;
        let vcek = sev::sev_cert("VCEK", der).map_err(|e| e.to_string())?;
        sev::cert_verify(("ASK", &ask), ("VCEK", &vcek)).map_err(|e| e.to_string())?;
        let now_i = i64::try_from(now).unwrap_or(i64::MAX);
        sev::check_validity("VCEK", der, now_i).map_err(|e| e.to_string())?;
        let cert = x509("VCEK", der)?;
        let f = sev::vcek_fields(&cert).map_err(|e| e.to_string())?;
        if product == SevGeneration::Turin && f.fmc.is_none() {
            return Err("a Turin VCEK without the FMC extension".into());
        }
        let key = VcekKey {
            product,
            hwid: f.hwid,
            tcb: f.tcb,
        };
        key.check()?;
        if let Some(want) = expected
            && *want != key
        {
            return Err(format!("served {key}, requested {want}"));
        }
        Ok(Self {
            key,
            der: der.to_vec(),
            not_after: unix(cert.validity().not_after.timestamp(), "notAfter")?,
        })
    }

    pub fn key(&self) -> &VcekKey {
        &self.key
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn not_after(&self) -> u64 {
        self.not_after
    }
}

/// Applies `crl` to a verified report at `now`: refuses a listed ASK or VCEK
/// ([`SevError::Revoked`]) whatever the CRL's age (a revocation is permanent), then judges
/// freshness. Returns `Some(next_update + grace)` for a fresh CRL (the verdict must not
/// outlive it); for one that is stale (past `nextUpdate` + `crl_grace_secs`) or not yet
/// valid, an error when `policy.require_crl`, else `None`.
pub fn check_revocation(
    verified: &SevVerified,
    crl: &SevCrl,
    policy: &SevPolicy,
    now: u64,
) -> Result<Option<u64>, SevError> {
    let product = verified.generation;
    if crl.product != product {
        return Err(SevError::CrlProductMismatch {
            crl: crl.product,
            chain: product,
        });
    }
    if crl.issuer != verified.ask_issuer {
        return Err(SevError::CrlIssuerMismatch { product });
    }
    for (which, serial) in [
        ("ASK", &verified.ask_serial),
        ("VCEK", &verified.vcek_serial),
    ] {
        if crl.is_revoked(serial) {
            return Err(SevError::Revoked {
                which,
                product,
                serial: hex::encode(serial),
            });
        }
    }
    if crl.this_update > now.saturating_add(CLOCK_SKEW_SECS) {
        return if policy.require_crl {
            Err(SevError::CrlNotYetValid {
                product,
                this_update: crl.this_update,
                now,
            })
        } else {
            Ok(None)
        };
    }
    let fresh_until = crl.next_update.saturating_add(policy.crl_grace_secs);
    if now > fresh_until {
        return if policy.require_crl {
            Err(SevError::CrlStale {
                product,
                next_update: crl.next_update,
                grace: policy.crl_grace_secs,
                now,
            })
        } else {
            Ok(None)
        };
    }
    Ok(Some(fresh_until))
}

/// Where SEV-SNP verification reads AMD's CRLs from. Implementations never touch the
/// network: they serve what is cached and may ask a background task to fetch.
pub trait SevCollateralSource: Send + Sync {
    /// The verified CRL of `product` (its window is judged by the caller), or why there is
    /// none ([`AttestError::MissingCollateral`] naming the product and where it looked).
    fn crl(&self, product: SevGeneration, now: u64) -> Result<Arc<SevCrl>, AttestError>;
    /// One line for logs and error messages (directory, URL).
    fn describe(&self) -> String;
}

/// A shared [`SevCollateralSource`], as carried by [`crate::Policy::sev_collateral`]. Two
/// handles are equal when they share the source.
#[derive(Clone)]
pub struct SevCollateral(Arc<dyn SevCollateralSource>);

impl SevCollateral {
    pub fn new(source: Arc<dyn SevCollateralSource>) -> Self {
        Self(source)
    }

    pub fn source(&self) -> &dyn SevCollateralSource {
        &*self.0
    }
}

impl std::fmt::Debug for SevCollateral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SevCollateral({})", self.0.describe())
    }
}

impl PartialEq for SevCollateral {
    fn eq(&self, other: &Self) -> bool {
        // Compare the data pointers only (vtable pointers of one type may differ).
        std::ptr::eq(
            Arc::as_ptr(&self.0).cast::<()>(),
            Arc::as_ptr(&other.0).cast::<()>(),
        )
    }
}

impl Eq for SevCollateral {}

/// One fixed CRL (tests, air-gapped verification with a CRL file).
impl SevCollateralSource for SevCrl {
    fn crl(&self, product: SevGeneration, _now: u64) -> Result<Arc<SevCrl>, AttestError> {
        if product != self.product {
            return Err(AttestError::MissingCollateral {
                what: format!(
                    "AMD CRL for {product}: only a {} CRL is given",
                    self.product
                ),
            });
        }
        Ok(Arc::new(self.clone()))
    }

    fn describe(&self) -> String {
        format!(
            "fixed {} CRL, thisUpdate {}",
            self.product, self.this_update
        )
    }
}

/// HTTP client for the AMD KDS (rustls with ring, webpki roots). Transport security is not
/// what makes KDS data trustworthy: everything is checked against the pinned AMD roots,
/// so a plain-HTTP mirror on a local network is as good as AMD's own server.
#[derive(Clone)]
pub struct KdsClient {
    base: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for KdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KdsClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn fetch_error(product: SevGeneration, item: &str, url: &str, reason: String) -> AttestError {
    AttestError::KdsFetch {
        product: product.name().to_string(),
        item: item.to_string(),
        url: url.to_string(),
        reason,
    }
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
    /// A client for `base_url` (e.g. [`AMD_KDS_URL`], or a mirror such as
    /// `http://10.0.0.5:8080`; a trailing `/vcek/v1` is accepted).
    pub fn new(base_url: &str) -> Result<Self, AttestError> {
        Self::with_timeout(base_url, DEFAULT_TIMEOUT)
    }

    /// [`Self::new`] with a per-request timeout.
    pub fn with_timeout(base_url: &str, timeout: Duration) -> Result<Self, AttestError> {
        let bad = |r: String| AttestError::KdsConfig(r);
        let trimmed = base_url.trim().trim_end_matches('/');
        let base = trimmed
            .strip_suffix("/vcek/v1")
            .unwrap_or(trimmed)
            .trim_end_matches('/');
        let url =
            reqwest::Url::parse(base).map_err(|e| bad(format!("bad URL {base_url:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad(format!("URL {base_url:?} is not http(s)://host")));
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
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
        })
    }

    /// The base URL (without `/vcek/v1`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn cert_chain_url(&self, product: SevGeneration) -> String {
        format!("{}/vcek/v1/{product}/cert_chain", self.base)
    }

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
        let err = |reason: String| fetch_error(product, item, url, reason);
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
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| err(error_chain(&e)))? {
            if body.len() + chunk.len() > MAX_RESPONSE_LEN {
                return Err(err(format!(
                    "response larger than {MAX_RESPONSE_LEN} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
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

    /// [`Self::fetch_crl`] against AMD's roots on a private single-threaded runtime, for
    /// callers outside any async runtime (the CLI). Must not be called from within a tokio
    /// runtime.
    pub fn fetch_crl_blocking(&self, product: SevGeneration) -> Result<SevCrl, AttestError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AttestError::KdsConfig(format!("tokio runtime: {e}")))?
            .block_on(self.fetch_crl(product, &KdsRoots::amd()))
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

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename, then (best effort) fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AttestError> {
    use std::io::Write;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| AttestError::Io { path: p, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(path)(e)
    })
}

/// The KDS cache directory (see the module docs for the layout). Reads verify every file
/// against the pinned roots; writes take only verified values and are atomic.
#[derive(Debug, Clone)]
pub struct VcekStore {
    dir: PathBuf,
    roots: KdsRoots,
}

impl VcekStore {
    /// A store in `dir` trusting AMD's roots.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            roots: KdsRoots::amd(),
        }
    }

    /// A store trusting test roots (unit tests only).
    #[cfg(test)]
    pub(crate) fn with_roots(dir: impl Into<PathBuf>, roots: KdsRoots) -> Self {
        Self {
            dir: dir.into(),
            roots,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn roots(&self) -> &KdsRoots {
        &self.roots
    }

    pub fn chain_path(&self, product: SevGeneration) -> PathBuf {
        self.dir.join(product.name()).join("cert_chain.pem")
    }

    pub fn crl_path(&self, product: SevGeneration) -> PathBuf {
        self.dir.join(product.name()).join("crl.der")
    }

    pub fn vcek_path(&self, key: &VcekKey) -> PathBuf {
        self.dir.join(key.product.name()).join("vcek").join(format!(
            "{}-{}.der",
            hex::encode(&key.hwid),
            key.tcb.key()
        ))
    }

    fn read(&self, path: &Path, what: String) -> Result<Vec<u8>, AttestError> {
        match std::fs::read(path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(AttestError::MissingCollateral {
                    what: format!("{what} ({} does not exist)", path.display()),
                })
            }
            Err(source) => Err(AttestError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    fn invalid(path: &Path, reason: String) -> AttestError {
        AttestError::InvalidCollateral {
            what: path.display().to_string(),
            reason,
        }
    }

    /// The cached chain of `product`, verified against the pinned ARK at `now`.
    pub fn load_chain(
        &self,
        product: SevGeneration,
        now: u64,
    ) -> Result<SevCertChain, AttestError> {
        let path = self.chain_path(product);
        let pem = self.read(&path, format!("AMD {product} cert_chain"))?;
        SevCertChain::verify(product, &pem, &self.roots, now).map_err(|r| Self::invalid(&path, r))
    }

    /// The cached CRL of `product`, its signature verified against the pinned ARK.
    pub fn load_crl(&self, product: SevGeneration) -> Result<SevCrl, AttestError> {
        let path = self.crl_path(product);
        let der = self.read(&path, format!("AMD {product} CRL"))?;
        SevCrl::verify(product, &der, &self.roots).map_err(|r| Self::invalid(&path, r))
    }

    /// The cached VCEK `key`, verified against the cached chain at `now` and checked to be
    /// the VCEK of exactly that chip and TCB (a file renamed to another key is refused).
    pub fn load_vcek(&self, key: &VcekKey, now: u64) -> Result<Vcek, AttestError> {
        let chain = self.load_chain(key.product, now)?;
        self.load_vcek_with(key, &chain, now)
    }

    fn load_vcek_with(
        &self,
        key: &VcekKey,
        chain: &SevCertChain,
        now: u64,
    ) -> Result<Vcek, AttestError> {
        let path = self.vcek_path(key);
        let der = self.read(&path, key.to_string())?;
        Vcek::verify(&der, chain, Some(key), now).map_err(|r| Self::invalid(&path, r))
    }

    pub fn save_chain(&self, chain: &SevCertChain) -> Result<PathBuf, AttestError> {
        let path = self.chain_path(chain.product);
        write_atomic(&path, &chain.pem)?;
        Ok(path)
    }

    pub fn save_crl(&self, crl: &SevCrl) -> Result<PathBuf, AttestError> {
        let path = self.crl_path(crl.product);
        write_atomic(&path, &crl.der)?;
        Ok(path)
    }

    pub fn save_vcek(&self, vcek: &Vcek) -> Result<PathBuf, AttestError> {
        let path = self.vcek_path(&vcek.key);
        write_atomic(&path, &vcek.der)?;
        Ok(path)
    }

    /// The VCEK keys named by the files under `<dir>/<product>/vcek` (names only; loading
    /// verifies the contents), at most [`MAX_LISTED_VCEKS`] entries.
    pub fn list_vceks(&self, product: SevGeneration) -> Vec<VcekKey> {
        let dir = self.dir.join(product.name()).join("vcek");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<VcekKey> = entries
            .take(MAX_LISTED_VCEKS)
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (hwid, tcb) = name.strip_suffix(".der")?.split_once('-')?;
                let hwid = hex::decode(hwid).ok()?;
                let mut t = [0u8; 5];
                hex::decode_to_slice(tcb, &mut t).ok()?;
                let key = VcekKey {
                    product,
                    hwid,
                    tcb: SevTcb {
                        fmc: t[0],
                        bootloader: t[1],
                        tee: t[2],
                        snp: t[3],
                        microcode: t[4],
                    },
                };
                key.check().ok().map(|()| key)
            })
            .collect();
        out.sort_by(|a, b| a.hwid.cmp(&b.hwid).then(a.tcb.key().cmp(&b.tcb.key())));
        out
    }
}

/// The directory as a CRL source: each lookup reads and verifies the file (an operator
/// fills the directory; nothing is fetched).
impl SevCollateralSource for VcekStore {
    fn crl(&self, product: SevGeneration, _now: u64) -> Result<Arc<SevCrl>, AttestError> {
        self.load_crl(product).map(Arc::new)
    }

    fn describe(&self) -> String {
        format!("AMD KDS cache {} (no fetching)", self.dir.display())
    }
}

/// One cached item and its fetch bookkeeping.
#[derive(Debug)]
struct Slot<T> {
    current: Option<Arc<T>>,
    /// Someone asked for it (a lookup, or [`KdsFetcher::with_products`]).
    wanted: bool,
    /// Clock time of the last fetch attempt and of the last successful fetch.
    last_attempt: Option<u64>,
    fetched_at: Option<u64>,
    last_error: Option<String>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self {
            current: None,
            wanted: false,
            last_attempt: None,
            fetched_at: None,
            last_error: None,
        }
    }
}

impl<T> Slot<T> {
    fn retry_ok(&self, now: u64, retry: u64) -> bool {
        !self
            .last_attempt
            .is_some_and(|a| a <= now && now < a.saturating_add(retry))
    }

    fn record<E: ToString>(&mut self, now: u64, result: &Result<Arc<T>, E>) {
        self.last_attempt = Some(now);
        match result {
            Ok(v) => {
                self.current = Some(Arc::clone(v));
                self.fetched_at = Some(now);
                self.last_error = None;
            }
            Err(e) => self.last_error = Some(e.to_string()),
        }
    }

    fn last_error_suffix(&self) -> String {
        self.last_error
            .as_ref()
            .map(|e| format!("; last fetch failed: {e}"))
            .unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct State {
    chains: HashMap<SevGeneration, Slot<SevCertChain>>,
    crls: HashMap<SevGeneration, Slot<SevCrl>>,
    vceks: HashMap<VcekKey, Slot<Vcek>>,
}

/// What a background pass may fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KdsItem {
    CertChain(SevGeneration),
    Crl(SevGeneration),
    Vcek(VcekKey),
}

impl std::fmt::Display for KdsItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KdsItem::CertChain(p) => write!(f, "{p} cert_chain"),
            KdsItem::Crl(p) => write!(f, "{p} CRL"),
            KdsItem::Vcek(k) => write!(f, "{k}"),
        }
    }
}

/// What one background fetch did: `Ok(())` when the item was verified and stored, or why
/// not (the previous value, if any, stays in use).
#[derive(Debug)]
pub struct KdsRefreshOutcome {
    pub item: KdsItem,
    pub result: Result<(), AttestError>,
}

/// KDS data served from memory and a [`VcekStore`], fetched in the background when missing
/// or due (see the module docs). Lookups never touch the network.
pub struct KdsFetcher {
    client: KdsClient,
    store: VcekStore,
    margin: u64,
    retry: u64,
    crl_max_age: u64,
    state: Mutex<State>,
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for KdsFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KdsFetcher")
            .field("client", &self.client)
            .field("dir", &self.store.dir())
            .finish_non_exhaustive()
    }
}

impl KdsFetcher {
    /// A fetcher for `client`, caching in `store`. What the directory already holds is
    /// loaded if it verifies at `now` (and tracked for refresh); anything else is ignored
    /// and fetched again when needed.
    pub fn new(client: KdsClient, store: VcekStore, now: u64) -> Self {
        let mut st = State::default();
        for product in SevGeneration::ALL {
            if let Ok(chain) = store.load_chain(product, now) {
                let chain = Arc::new(chain);
                for key in store.list_vceks(product) {
                    if let Ok(v) = store.load_vcek_with(&key, &chain, now) {
                        let slot = st.vceks.entry(key).or_default();
                        slot.current = Some(Arc::new(v));
                        slot.wanted = true;
                    }
                }
                let slot = st.chains.entry(product).or_default();
                slot.current = Some(chain);
                slot.wanted = true;
            }
            if let Ok(crl) = store.load_crl(product) {
                let slot = st.crls.entry(product).or_default();
                slot.current = Some(Arc::new(crl));
                slot.wanted = true;
            }
        }
        Self {
            client,
            store,
            margin: DEFAULT_REFRESH_MARGIN_SECS,
            retry: DEFAULT_RETRY_SECS,
            crl_max_age: DEFAULT_CRL_MAX_AGE_SECS,
            state: Mutex::new(st),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Fetch the CRLs of `products` in the next background pass, before any handshake
    /// asks (otherwise a product's first SEV-SNP handshake fails and triggers the fetch).
    pub fn with_products(self, products: &[SevGeneration]) -> Self {
        {
            let mut st = self.lock();
            for p in products {
                st.crls.entry(*p).or_default().wanted = true;
            }
        }
        self
    }

    /// Refresh a CRL `secs` before its `nextUpdate` (default
    /// [`DEFAULT_REFRESH_MARGIN_SECS`]).
    pub fn with_refresh_margin(mut self, secs: u64) -> Self {
        self.margin = secs;
        self
    }

    /// Fetches of one item are at least `secs` apart (default [`DEFAULT_RETRY_SECS`]).
    pub fn with_retry_interval(mut self, secs: u64) -> Self {
        self.retry = secs;
        self
    }

    /// Fetch each CRL again at least every `secs` (default [`DEFAULT_CRL_MAX_AGE_SECS`]).
    pub fn with_crl_max_age(mut self, secs: u64) -> Self {
        self.crl_max_age = secs;
        self
    }

    pub fn client(&self) -> &KdsClient {
        &self.client
    }

    pub fn store(&self) -> &VcekStore {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update is a few field assignments: a poisoned map is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn missing(&self, what: String, path: PathBuf, last: String) -> AttestError {
        self.wake.notify_one();
        AttestError::MissingCollateral {
            what: format!(
                "{what}: not in {} and not fetched yet from {}{last}; fetch requested",
                path.display(),
                self.client.base_url()
            ),
        }
    }

    /// The verified CRL of `product` (its freshness is judged by [`check_revocation`]). A
    /// missing one is requested from the background refresher; one within `margin` of its
    /// `nextUpdate` wakes it. Never touches the network.
    pub fn crl(&self, product: SevGeneration, now: u64) -> Result<Arc<SevCrl>, AttestError> {
        let mut st = self.lock();
        let slot = st.crls.entry(product).or_default();
        slot.wanted = true;
        let Some(crl) = slot.current.clone() else {
            let last = slot.last_error_suffix();
            drop(st);
            return Err(self.missing(
                format!("AMD {product} CRL"),
                self.store.crl_path(product),
                last,
            ));
        };
        drop(st);
        if now.saturating_add(self.margin) >= crl.next_update {
            self.wake.notify_one();
        }
        Ok(crl)
    }

    /// The verified ASK/ARK chain of `product`, valid at `now`. Never touches the network.
    pub fn chain(
        &self,
        product: SevGeneration,
        now: u64,
    ) -> Result<Arc<SevCertChain>, AttestError> {
        let mut st = self.lock();
        let slot = st.chains.entry(product).or_default();
        slot.wanted = true;
        match slot.current.clone() {
            Some(c) if now <= c.not_after => Ok(c),
            _ => {
                let last = slot.last_error_suffix();
                drop(st);
                Err(self.missing(
                    format!("AMD {product} cert_chain"),
                    self.store.chain_path(product),
                    last,
                ))
            }
        }
    }

    /// The verified VCEK `key`, valid at `now` (for an attester whose host gives it no
    /// certificate table). A missing one is requested from the background refresher.
    /// Never touches the network.
    pub fn vcek(&self, key: &VcekKey, now: u64) -> Result<Arc<Vcek>, AttestError> {
        key.check()
            .map_err(|r| AttestError::KdsConfig(format!("{key}: {r}")))?;
        let mut st = self.lock();
        st.chains.entry(key.product).or_default().wanted = true;
        let slot = st.vceks.entry(key.clone()).or_default();
        slot.wanted = true;
        match slot.current.clone() {
            Some(v) if now <= v.not_after => Ok(v),
            _ => {
                let last = slot.last_error_suffix();
                drop(st);
                Err(self.missing(key.to_string(), self.store.vcek_path(key), last))
            }
        }
    }

    /// Items that are wanted and missing or due at `now`, and were not tried within the
    /// retry interval: chains first (VCEK checks need them), then CRLs, then VCEKs.
    pub fn due(&self, now: u64) -> Vec<KdsItem> {
        let st = self.lock();
        let near = |t: u64| now.saturating_add(self.margin) >= t;
        let mut chains: Vec<_> = st
            .chains
            .iter()
            .filter(|(_, s)| s.wanted && s.retry_ok(now, self.retry))
            .filter(|(_, s)| s.current.as_ref().is_none_or(|c| near(c.not_after)))
            .map(|(p, _)| *p)
            .collect();
        chains.sort_unstable();
        let mut crls: Vec<_> = st
            .crls
            .iter()
            .filter(|(_, s)| s.wanted && s.retry_ok(now, self.retry))
            .filter(|(_, s)| {
                s.current.as_ref().is_none_or(|c| near(c.next_update))
                    || s.fetched_at
                        .is_none_or(|f| now >= f.saturating_add(self.crl_max_age))
            })
            .map(|(p, _)| *p)
            .collect();
        crls.sort_unstable();
        let mut vceks: Vec<_> = st
            .vceks
            .iter()
            .filter(|(_, s)| s.wanted && s.retry_ok(now, self.retry))
            .filter(|(_, s)| s.current.as_ref().is_none_or(|v| near(v.not_after)))
            .map(|(k, _)| k.clone())
            .collect();
        vceks.sort_by(|a, b| (a.product, &a.hwid).cmp(&(b.product, &b.hwid)));
        chains
            .into_iter()
            .map(KdsItem::CertChain)
            .chain(crls.into_iter().map(KdsItem::Crl))
            .chain(vceks.into_iter().map(KdsItem::Vcek))
            .collect()
    }

    /// Fetch the chain of `product` now; verified, it is stored and served.
    pub async fn refresh_chain(
        &self,
        product: SevGeneration,
        now: u64,
    ) -> Result<Arc<SevCertChain>, AttestError> {
        let result = async {
            let c = self
                .client
                .fetch_cert_chain(product, &self.store.roots, now)
                .await?;
            self.store.save_chain(&c)?;
            Ok(Arc::new(c))
        }
        .await;
        let mut st = self.lock();
        let slot = st.chains.entry(product).or_default();
        slot.wanted = true;
        slot.record(now, &result);
        result
    }

    /// Fetch the CRL of `product` now. A verified CRL replaces the cached one unless it is
    /// older (a rollback); it is stored and served.
    pub async fn refresh_crl(
        &self,
        product: SevGeneration,
        now: u64,
    ) -> Result<Arc<SevCrl>, AttestError> {
        let result = async {
            let crl = self.client.fetch_crl(product, &self.store.roots).await?;
            let current = self
                .lock()
                .crls
                .get(&product)
                .and_then(|s| s.current.clone());
            if let Some(old) = current
                && crl.older_than(&old)
            {
                return Err(fetch_error(
                    product,
                    "CRL",
                    &self.client.crl_url(product),
                    format!(
                        "served CRL (thisUpdate {}) is older than the cached one (thisUpdate {})",
                        crl.this_update, old.this_update
                    ),
                ));
            }
            if crl.this_update > now.saturating_add(CLOCK_SKEW_SECS) {
                return Err(fetch_error(
                    product,
                    "CRL",
                    &self.client.crl_url(product),
                    format!(
                        "thisUpdate {} is in the future (now {now})",
                        crl.this_update
                    ),
                ));
            }
            self.store.save_crl(&crl)?;
            Ok(Arc::new(crl))
        }
        .await;
        let mut st = self.lock();
        let slot = st.crls.entry(product).or_default();
        slot.wanted = true;
        slot.record(now, &result);
        result
    }

    /// Fetch the VCEK `key` now (and its product's chain, if not cached); verified, it is
    /// stored and served.
    pub async fn refresh_vcek(&self, key: &VcekKey, now: u64) -> Result<Arc<Vcek>, AttestError> {
        let result = async {
            let cached = self
                .lock()
                .chains
                .get(&key.product)
                .and_then(|s| s.current.clone())
                .filter(|c| now <= c.not_after);
            let chain = match cached {
                Some(c) => c,
                None => self.refresh_chain(key.product, now).await?,
            };
            let v = self.client.fetch_vcek(key, &chain, now).await?;
            self.store.save_vcek(&v)?;
            Ok(Arc::new(v))
        }
        .await;
        let mut st = self.lock();
        let slot = st.vceks.entry(key.clone()).or_default();
        slot.wanted = true;
        slot.record(now, &result);
        result
    }

    /// Fetch every item that is [`Self::due`] at `now`.
    pub async fn refresh_due(&self, now: u64) -> Vec<KdsRefreshOutcome> {
        let mut out = Vec::new();
        for item in self.due(now) {
            let result = match &item {
                KdsItem::CertChain(p) => self.refresh_chain(*p, now).await.map(drop),
                KdsItem::Crl(p) => self.refresh_crl(*p, now).await.map(drop),
                KdsItem::Vcek(k) => self.refresh_vcek(k, now).await.map(drop),
            };
            match &result {
                Ok(()) => tracing::info!(item = %item, "AMD KDS data refreshed"),
                Err(e) => tracing::warn!(
                    item = %item,
                    error = %e,
                    "AMD KDS refresh failed; previous data kept"
                ),
            }
            out.push(KdsRefreshOutcome { item, result });
        }
        out
    }

    /// Run [`Self::refresh_due`] every `interval`, and at once when a lookup finds
    /// something missing or due. Abort the handle to stop.
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

    /// The last fetch error of `item`, if its last fetch failed.
    pub fn last_error(&self, item: &KdsItem) -> Option<String> {
        let st = self.lock();
        match item {
            KdsItem::CertChain(p) => st.chains.get(p).and_then(|s| s.last_error.clone()),
            KdsItem::Crl(p) => st.crls.get(p).and_then(|s| s.last_error.clone()),
            KdsItem::Vcek(k) => st.vceks.get(k).and_then(|s| s.last_error.clone()),
        }
    }

    /// [`Self::refresh_crl`] (and [`Self::refresh_vcek`] when `vcek` is given) on a
    /// private single-threaded runtime, for callers outside any async runtime (the CLI).
    /// Must not be called from within a tokio runtime.
    pub fn refresh_blocking(
        &self,
        product: SevGeneration,
        vcek: Option<&VcekKey>,
        now: u64,
    ) -> Result<(Arc<SevCrl>, Option<Arc<Vcek>>), AttestError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AttestError::KdsConfig(format!("tokio runtime: {e}")))?
            .block_on(async {
                let crl = self.refresh_crl(product, now).await?;
                let v = match vcek {
                    Some(k) => Some(self.refresh_vcek(k, now).await?),
                    None => None,
                };
                Ok((crl, v))
            })
    }
}

/// The fetcher as the handshake's CRL source: memory only, misses wake the refresher.
impl SevCollateralSource for KdsFetcher {
    fn crl(&self, product: SevGeneration, now: u64) -> Result<Arc<SevCrl>, AttestError> {
        KdsFetcher::crl(self, product, now)
    }

    fn describe(&self) -> String {
        format!(
            "AMD KDS cache {} from {}",
            self.store.dir().display(),
            self.client.base_url()
        )
    }
}

#[cfg(test)]
mod tests;
