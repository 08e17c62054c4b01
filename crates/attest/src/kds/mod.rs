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
//! [`KdsClient`] and [`KdsFetcher`] (HTTP, tokio) are behind the `fetch` feature; the rest is
//! pure. Time is always an argument (`now`, Unix seconds).

use std::sync::Arc;
use std::time::Duration;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::error::AttestError;
use crate::sev::{self, SevError, SevGeneration, SevPolicy, SevTcb, SevVerified};

#[cfg(feature = "fetch")]
mod client;
#[cfg(feature = "fetch")]
mod fetcher;
mod store;

#[cfg(feature = "fetch")]
pub use client::KdsClient;
#[cfg(feature = "fetch")]
pub use fetcher::{KdsFetcher, KdsItem, KdsRefreshOutcome, crl_cached_or_fetched};
pub use store::VcekStore;

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
    #[cfg(all(test, feature = "fetch"))]
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

    /// The generation whose ARK signs the chain.
    pub fn product(&self) -> SevGeneration {
        self.product
    }

    /// The bundle as served (the evidence format's `chain_pem`).
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }

    /// The ASK certificate, DER.
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

    /// The generation whose ARK signed the CRL.
    pub fn product(&self) -> SevGeneration {
        self.product
    }

    /// The CRL as served, DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The CRL's thisUpdate, Unix seconds.
    pub fn this_update(&self) -> u64 {
        self.this_update
    }

    /// The CRL's nextUpdate, Unix seconds.
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
    #[cfg(feature = "fetch")]
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
    /// Processor generation.
    pub product: SevGeneration,
    /// Chip hardware id.
    pub hwid: Vec<u8>,
    /// TCB the VCEK was derived for.
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

    /// Which VCEK this is.
    pub fn key(&self) -> &VcekKey {
        &self.key
    }

    /// The certificate, DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// End of its validity, Unix seconds.
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
    /// Shares `source`.
    pub fn new(source: Arc<dyn SevCollateralSource>) -> Self {
        Self(source)
    }

    /// The shared source.
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

#[cfg(feature = "fetch")]
fn fetch_error(product: SevGeneration, item: &str, url: &str, reason: String) -> AttestError {
    AttestError::KdsFetch {
        product: product.name().to_string(),
        item: item.to_string(),
        url: url.to_string(),
        reason,
    }
}

#[cfg(test)]
#[cfg(feature = "fetch")]
mod tests;
