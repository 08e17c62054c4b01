//! Intel TDX: quote parsing, the image hash, collateral handling and DCAP
//! verification with `dcap-qvl` (ring backend).

use std::path::{Path, PathBuf};

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::quote::{Quote, Report, TDReport10};
use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer;

use crate::error::AttestError;
use crate::model::TdxMeasurements;

/// Intel SGX/TDX root key id, pinned: SHA-384 of the uncompressed
/// P-256 public key (0x04 ‖ X ‖ Y) of "Intel SGX Root CA".
pub const INTEL_ROOT_KEY_ID: [u8; 48] = [
    0x46, 0xe4, 0x03, 0xbd, 0x34, 0xf0, 0x5a, 0x3f, 0x28, 0x17, 0xab, 0x9b, 0xad, 0xca, 0xac, 0xc7,
    0xff, 0xc9, 0x8e, 0x0f, 0x26, 0x10, 0x08, 0xcd, 0x30, 0xda, 0xe9, 0x36, 0xca, 0xce, 0x18, 0xd5,
    0xdc, 0xf5, 0x8e, 0xef, 0x31, 0x46, 0x36, 0x13, 0xde, 0x15, 0x70, 0xd5, 0x16, 0x20, 0x09, 0x93,
];

/// Bit 0 of TDATTRIBUTES (the TUD byte): the TD is under debug.
pub const TD_ATTRIBUTES_DEBUG: u64 = 1;

/// The image hash the root contract allowlists (COCOON-compatible, see
/// docs/cocoon-compat.md): `SHA-256(MRTD ‖ MRCONFIGID ‖ MROWNER ‖ MROWNERCONFIG ‖ RTMR0 ‖
/// RTMR1 ‖ RTMR2 ‖ RTMR3 ‖ 64 zero bytes)`.
pub fn image_hash(m: &TdxMeasurements) -> [u8; 32] {
    image_hash_of(
        &m.mrtd,
        &m.mr_config_id,
        &m.mr_owner,
        &m.mr_owner_config,
        &m.rtmr,
    )
}

/// The length of COCOON's test-mode TDX evidence (`fake_tdx`): the 64 bytes of report data
/// stand where a quote would, and no quote is that short.
pub const FAKE_TDX_LEN: usize = 64;

/// The registers COCOON's fake TDX interface reports: all zero.
pub fn fake_tdx_measurements() -> TdxMeasurements {
    TdxMeasurements {
        mrtd: [0; 48],
        rtmr: [[0; 48]; 4],
        mr_config_id: [0; 48],
        mr_owner: [0; 48],
        mr_owner_config: [0; 48],
        td_attributes: [0; 8],
        xfam: [0; 8],
    }
}

/// The image hash of `fake_tdx` evidence: [`image_hash`] of the zero registers.
pub fn fake_tdx_image_hash() -> [u8; 32] {
    image_hash(&fake_tdx_measurements())
}

pub(crate) fn image_hash_of(
    mrtd: &[u8; 48],
    mr_config_id: &[u8; 48],
    mr_owner: &[u8; 48],
    mr_owner_config: &[u8; 48],
    rtmr: &[[u8; 48]; 4],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(mrtd);
    h.update(mr_config_id);
    h.update(mr_owner);
    h.update(mr_owner_config);
    for r in rtmr {
        h.update(r);
    }
    h.update([0u8; 64]);
    h.finalize().into()
}

/// Reject a debug TD. Other attribute bits (e.g. SEPT_VE_DISABLE) are allowed.
pub fn check_td_attributes(td_attributes: &[u8; 8]) -> Result<(), AttestError> {
    if u64::from_le_bytes(*td_attributes) & TD_ATTRIBUTES_DEBUG != 0 {
        return Err(AttestError::DebugTd {
            td_attributes: *td_attributes,
        });
    }
    Ok(())
}

/// A TD quote parsed but **not verified**: use only for routing (which collateral to
/// load) and diagnostics, never as a verified fact.
#[derive(Debug, Clone)]
pub struct ParsedTdQuote {
    /// Quote format version (4 or 5).
    pub version: u16,
    /// The TD's registers and attributes.
    pub measurements: TdxMeasurements,
    /// The 64 bytes of report data.
    pub report_data: [u8; 64],
    /// FMSPC from the PCK certificate embedded in the quote, if it could be read.
    pub fmspc: Option<[u8; 6]>,
}

fn measurements_of(td: &TDReport10) -> TdxMeasurements {
    TdxMeasurements {
        mrtd: td.mr_td,
        rtmr: [td.rt_mr0, td.rt_mr1, td.rt_mr2, td.rt_mr3],
        mr_config_id: td.mr_config_id,
        mr_owner: td.mr_owner,
        mr_owner_config: td.mr_owner_config,
        td_attributes: td.td_attributes,
        xfam: td.xfam,
    }
}

/// Parse a v4/v5 TD quote (TD 1.0 / TD 1.5 bodies). SGX quotes give
/// [`AttestError::NotATdQuote`].
pub fn parse_quote(quote: &[u8]) -> Result<ParsedTdQuote, AttestError> {
    let q = Quote::parse(quote).map_err(|e| AttestError::Malformed(format!("TDX quote: {e:#}")))?;
    let td = match &q.report {
        Report::SgxEnclave(_) => return Err(AttestError::NotATdQuote),
        r => r.as_td10().ok_or(AttestError::NotATdQuote)?,
    };
    let fmspc = dcap_qvl::intel::quote_fmspc(&q).ok();
    Ok(ParsedTdQuote {
        version: q.header.version,
        measurements: measurements_of(td),
        report_data: td.report_data,
        fmspc,
    })
}

/// Which Intel PCK CA issued a platform's PCK certificate; it selects the PCK CRL
/// (`/sgx/certification/v4/pckcrl?ca=processor|platform`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PckCa {
    /// `ca=processor`.
    Processor,
    /// `ca=platform`.
    Platform,
}

impl PckCa {
    /// The PCS query value: `processor` or `platform`.
    pub fn as_str(&self) -> &'static str {
        match self {
            PckCa::Processor => "processor",
            PckCa::Platform => "platform",
        }
    }

    /// From an issuer common name ("Intel SGX PCK Platform CA" / "... Processor CA").
    pub(crate) fn from_issuer_cn(cn: &str) -> Option<Self> {
        if cn.contains("PCK Platform CA") {
            Some(PckCa::Platform)
        } else if cn.contains("PCK Processor CA") {
            Some(PckCa::Processor)
        } else {
            None
        }
    }
}

impl std::fmt::Display for PckCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The PCK CA that issued the PCK certificate embedded in a TD quote (unverified; used
/// only to choose which collateral to fetch).
pub fn quote_pck_ca(quote: &[u8]) -> Result<PckCa, AttestError> {
    let q = Quote::parse(quote).map_err(|e| AttestError::Malformed(format!("TDX quote: {e:#}")))?;
    let chain = dcap_qvl::intel::extract_cert_chain(&q)
        .map_err(|e| AttestError::Malformed(format!("TDX quote PCK chain: {e:#}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| AttestError::Malformed("TDX quote has an empty PCK chain".into()))?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf)
        .map_err(|e| AttestError::Malformed(format!("TDX quote PCK certificate: {e}")))?;
    let cn = first_cn(cert.issuer());
    PckCa::from_issuer_cn(&cn).ok_or_else(|| {
        AttestError::Malformed(format!("PCK certificate issued by unknown CA {cn:?}"))
    })
}

fn first_cn(name: &x509_parser::x509::X509Name<'_>) -> String {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// `thisUpdate`, `nextUpdate` and issuer CN of a DER CRL.
pub(crate) fn crl_window(der: &[u8]) -> Result<(u64, u64, String), String> {
    use x509_parser::revocation_list::CertificateRevocationList;
    let (rest, crl) = CertificateRevocationList::from_der(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    let this = u64::try_from(crl.last_update().timestamp()).map_err(|e| e.to_string())?;
    let next = crl
        .next_update()
        .ok_or("no nextUpdate")
        .and_then(|t| u64::try_from(t.timestamp()).map_err(|_| "nextUpdate before 1970"))?;
    Ok((this, next, first_cn(crl.issuer())))
}

/// DCAP collateral (`QuoteCollateralV3`, JSON form as served by PCCS tools and dcap-qvl)
/// plus the validity dates of its TCB info, QE identity and CRLs.
#[derive(Debug, Clone)]
pub struct TdxCollateral {
    pub(crate) inner: QuoteCollateralV3,
    /// FMSPC named by the TCB info (upper-case hex as Intel writes it).
    pub fmspc: String,
    /// `issueDate` of the TCB info, Unix seconds.
    pub tcb_info_issue: u64,
    /// `nextUpdate` of the TCB info, Unix seconds.
    pub tcb_info_next_update: u64,
    /// `issueDate` of the QE identity, Unix seconds.
    pub qe_identity_issue: u64,
    /// `nextUpdate` of the QE identity, Unix seconds.
    pub qe_identity_next_update: u64,
    /// `thisUpdate` / `nextUpdate` of the PCK CRL.
    pub pck_crl_issue: u64,
    /// `nextUpdate` of the PCK CRL, Unix seconds.
    pub pck_crl_next_update: u64,
    /// `thisUpdate` / `nextUpdate` of the Intel root CA CRL.
    pub root_ca_crl_issue: u64,
    /// `nextUpdate` of the Intel root CA CRL, Unix seconds.
    pub root_ca_crl_next_update: u64,
    /// The PCK CA whose CRL this collateral carries.
    pub pck_ca: PckCa,
}

impl TdxCollateral {
    /// Parse the JSON form of `QuoteCollateralV3`.
    pub fn from_json(json: &[u8]) -> Result<Self, AttestError> {
        let inner: QuoteCollateralV3 =
            serde_json::from_slice(json).map_err(|e| AttestError::InvalidCollateral {
                what: "QuoteCollateralV3 JSON".into(),
                reason: e.to_string(),
            })?;
        Self::from_inner(inner)
    }

    /// The JSON form of `QuoteCollateralV3` (what [`Self::from_json`] reads).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing strings and byte vectors cannot fail.
        serde_json::to_vec_pretty(&self.inner).unwrap_or_default()
    }

    pub(crate) fn from_inner(inner: QuoteCollateralV3) -> Result<Self, AttestError> {
        let invalid = |reason: String| AttestError::InvalidCollateral {
            what: "QuoteCollateralV3".into(),
            reason,
        };
        let tcb: serde_json::Value =
            serde_json::from_str(&inner.tcb_info).map_err(|e| invalid(format!("tcb_info: {e}")))?;
        let qe: serde_json::Value = serde_json::from_str(&inner.qe_identity)
            .map_err(|e| invalid(format!("qe_identity: {e}")))?;
        let date = |v: &serde_json::Value, what: &str, key: &str| -> Result<u64, AttestError> {
            let s = v
                .get(key)
                .and_then(|x| x.as_str())
                .ok_or_else(|| invalid(format!("{what}.{key} missing")))?;
            parse_rfc3339(s).ok_or_else(|| invalid(format!("{what}.{key} = {s:?} not RFC 3339")))
        };
        let (pck_crl_issue, pck_crl_next_update, pck_issuer) =
            crl_window(&inner.pck_crl).map_err(|e| invalid(format!("pck_crl: {e}")))?;
        let pck_ca = PckCa::from_issuer_cn(&pck_issuer)
            .ok_or_else(|| invalid(format!("pck_crl issued by unknown CA {pck_issuer:?}")))?;
        let (root_ca_crl_issue, root_ca_crl_next_update, _) =
            crl_window(&inner.root_ca_crl).map_err(|e| invalid(format!("root_ca_crl: {e}")))?;
        Ok(Self {
            fmspc: tcb
                .get("fmspc")
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_string(),
            tcb_info_issue: date(&tcb, "tcb_info", "issueDate")?,
            tcb_info_next_update: date(&tcb, "tcb_info", "nextUpdate")?,
            qe_identity_issue: date(&qe, "qe_identity", "issueDate")?,
            qe_identity_next_update: date(&qe, "qe_identity", "nextUpdate")?,
            pck_crl_issue,
            pck_crl_next_update,
            root_ca_crl_issue,
            root_ca_crl_next_update,
            pck_ca,
            inner,
        })
    }

    /// The first second after which some item (TCB info, QE identity, a CRL) has expired.
    pub fn expires_at(&self) -> u64 {
        self.tcb_info_next_update
            .min(self.qe_identity_next_update)
            .min(self.pck_crl_next_update)
            .min(self.root_ca_crl_next_update)
    }

    /// Check the TCB info, QE identity and CRL validity windows at `now`, and the age of
    /// the TCB info / QE identity against `max_age` seconds when given. (Certificate
    /// windows are checked by the DCAP verification itself.) Errors name the item and
    /// the FMSPC.
    pub fn check_window(&self, now: u64, max_age: Option<u64>) -> Result<(), AttestError> {
        let items = [
            (
                "TCB info",
                self.tcb_info_issue,
                self.tcb_info_next_update,
                true,
            ),
            (
                "QE identity",
                self.qe_identity_issue,
                self.qe_identity_next_update,
                true,
            ),
            (
                "PCK CRL",
                self.pck_crl_issue,
                self.pck_crl_next_update,
                false,
            ),
            (
                "root CA CRL",
                self.root_ca_crl_issue,
                self.root_ca_crl_next_update,
                false,
            ),
        ];
        for (item, issued, next, aged) in items {
            let what = || format!("{item} for FMSPC {}", self.fmspc);
            if now < issued {
                return Err(AttestError::CollateralNotYetValid {
                    what: what(),
                    not_before: issued,
                    now,
                });
            }
            if now > next {
                return Err(AttestError::CollateralExpired {
                    what: what(),
                    not_after: next,
                    now,
                });
            }
            if let Some(max_age) = max_age
                && aged
                && now - issued > max_age
            {
                return Err(AttestError::CollateralTooOld {
                    what: what(),
                    issued,
                    now,
                    max_age,
                });
            }
        }
        Ok(())
    }
}

/// Parse `YYYY-MM-DDTHH:MM:SS[.fff]Z` into Unix seconds.
pub(crate) fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant), valid for years >= 1970 here.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Collateral cache directory: `<dir>/<fmspc>.json` (lower-case hex FMSPC), the JSON
/// form of `QuoteCollateralV3`. An operator can fill it by hand;
/// [`crate::pccs::CollateralFetcher`] fills and refreshes it from a PCCS / Intel PCS.
#[derive(Debug, Clone)]
pub struct CollateralStore {
    dir: PathBuf,
}

impl CollateralStore {
    /// A store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the collateral of platform `fmspc` is stored.
    pub fn path_for(&self, fmspc: &[u8; 6]) -> PathBuf {
        self.dir.join(format!("{}.json", hex::encode(fmspc)))
    }

    /// Load the collateral for `fmspc` and check that it is valid at `now`.
    pub fn load(&self, fmspc: &[u8; 6], now: u64) -> Result<TdxCollateral, AttestError> {
        let c = self.load_unchecked(fmspc)?;
        c.check_window(now, None)?;
        Ok(c)
    }

    /// Load the collateral for `fmspc` without checking its validity window (it still
    /// has to parse and name `fmspc`).
    pub fn load_unchecked(&self, fmspc: &[u8; 6]) -> Result<TdxCollateral, AttestError> {
        let path = self.path_for(fmspc);
        let json = match std::fs::read(&path) {
            Ok(j) => j,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AttestError::MissingCollateral {
                    what: format!(
                        "TDX collateral for FMSPC {} ({})",
                        hex::encode(fmspc),
                        path.display()
                    ),
                });
            }
            Err(source) => {
                return Err(AttestError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        let c = TdxCollateral::from_json(&json).map_err(|e| match e {
            AttestError::InvalidCollateral { reason, .. } => AttestError::InvalidCollateral {
                what: path.display().to_string(),
                reason,
            },
            e => e,
        })?;
        if !c.fmspc.eq_ignore_ascii_case(&hex::encode(fmspc)) {
            return Err(AttestError::InvalidCollateral {
                what: path.display().to_string(),
                reason: format!("TCB info is for FMSPC {}", c.fmspc),
            });
        }
        Ok(c)
    }

    /// Write `collateral` as `<dir>/<fmspc>.json` atomically: a temporary file in the
    /// same directory, synced, then renamed over the old one. Readers see the old or the
    /// new file, never a partial one.
    pub fn save(&self, collateral: &TdxCollateral) -> Result<PathBuf, AttestError> {
        let fmspc =
            parse_fmspc(&collateral.fmspc).ok_or_else(|| AttestError::InvalidCollateral {
                what: "collateral to save".into(),
                reason: format!("FMSPC {:?} is not 6 hex bytes", collateral.fmspc),
            })?;
        let path = self.path_for(&fmspc);
        crate::fs::write_atomic(&path, &collateral.to_json())?;
        Ok(path)
    }

    /// FMSPCs with a file in the directory (`<12 hex digits>.json`).
    pub fn list(&self) -> Vec<[u8; 6]> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                if let Some(f) = name.strip_suffix(".json").and_then(parse_fmspc) {
                    out.push(f);
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// Load the collateral matching the FMSPC in the quote's PCK certificate.
    pub fn load_for_quote(&self, quote: &[u8], now: u64) -> Result<TdxCollateral, AttestError> {
        let parsed = parse_quote(quote)?;
        let fmspc = parsed.fmspc.ok_or_else(|| {
            AttestError::Malformed("cannot read FMSPC from the quote's PCK certificate".into())
        })?;
        self.load(&fmspc, now)
    }
}

/// Supplies DCAP collateral for a TDX quote during verification. Implementations never wait
/// on the network: they serve what they hold and may ask a background task to fetch
/// ([`crate::CollateralFetcher`], feature `fetch`).
pub trait CollateralSource: Send + Sync {
    /// Collateral for the platform that produced `quote`, valid at `now` (Unix seconds).
    fn collateral_for(&self, quote: &[u8], now: u64) -> Result<TdxCollateral, AttestError>;
}

/// The directory alone (an operator fills it).
impl CollateralSource for CollateralStore {
    fn collateral_for(&self, quote: &[u8], now: u64) -> Result<TdxCollateral, AttestError> {
        self.load_for_quote(quote, now)
    }
}

/// One fixed collateral for every quote (tests, single-platform deployments).
impl CollateralSource for TdxCollateral {
    fn collateral_for(&self, _quote: &[u8], _now: u64) -> Result<TdxCollateral, AttestError> {
        Ok(self.clone())
    }
}

/// No collateral: every TDX quote is refused with `MissingCollateral`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCollateral;

impl CollateralSource for NoCollateral {
    fn collateral_for(&self, _quote: &[u8], _now: u64) -> Result<TdxCollateral, AttestError> {
        Err(AttestError::MissingCollateral {
            what: "no TDX collateral source configured".into(),
        })
    }
}

/// 12 hex digits (either case) → FMSPC bytes.
pub fn parse_fmspc(s: &str) -> Option<[u8; 6]> {
    if s.len() != 12 {
        return None;
    }
    let mut out = [0u8; 6];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Result of the DCAP step, before our policy checks.
pub(crate) struct DcapOutcome {
    pub measurements: TdxMeasurements,
    pub report_data: [u8; 64],
    pub status: dcap_qvl::TcbStatus,
    pub advisory_ids: Vec<String>,
    pub root_key_id: Vec<u8>,
    pub collateral_expires: u64,
}

/// Accept-all dcap-qvl policy: our own policy checks run on the returned claims.
/// (dcap-qvl's `strict` policy rejects real TDX hosts, which all report dynamic
/// platform, cached keys and SMT; we accept those flags.)
struct ClaimsOnly;

impl dcap_qvl::Policy for ClaimsOnly {
    fn validate(&self, _: &dcap_qvl::QuoteClaims) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Cryptographic DCAP verification at `now` (quote signature, QE report, PCK chain to the
/// compiled-in Intel root, CRLs, TCB info and QE identity signatures and windows).
pub(crate) fn dcap_verify(
    quote: &[u8],
    collateral: &TdxCollateral,
    now: u64,
) -> Result<DcapOutcome, AttestError> {
    let verifier = dcap_qvl::verify::QuoteVerifier::new_prod();
    let claims = verifier
        .verify_with_policy(quote, &collateral.inner, now, &ClaimsOnly)
        .map_err(|e| AttestError::Dcap(format!("{e:#}")))?;
    let td = claims.report.as_td10().ok_or(AttestError::NotATdQuote)?;
    Ok(DcapOutcome {
        measurements: measurements_of(td),
        report_data: td.report_data,
        status: claims.tcb.status,
        advisory_ids: claims.tcb.advisory_ids.clone(),
        root_key_id: claims.platform.root_key_id.clone(),
        collateral_expires: claims.earliest_expiration_date,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2025-07-04T00:00:00Z"), Some(1_751_587_200));
        assert_eq!(parse_rfc3339("2026-03-20T10:58:51Z"), Some(1_774_004_331));
        assert_eq!(
            parse_rfc3339("2026-03-20T10:58:51.123Z"),
            Some(1_774_004_331)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn debug_bit() {
        assert!(check_td_attributes(&[0, 0, 0, 0x10, 0, 0, 0, 0]).is_ok());
        assert!(matches!(
            check_td_attributes(&[1, 0, 0, 0x10, 0, 0, 0, 0]),
            Err(AttestError::DebugTd { .. })
        ));
    }
}
