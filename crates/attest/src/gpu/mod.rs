//! NVIDIA confidential-computing GPU evidence (Hopper), verified in Rust.
//!
//! Pure: bytes and `now` in, a verdict out; nothing is fetched. [`verify`] checks, in order:
//!
//! 1. the report parses ([`report`]): an SPDM 1.1 `GET_MEASUREMENTS` request and the signed
//!    `MEASUREMENTS` response, with DMTF measurement blocks and NVIDIA's opaque fields;
//! 2. the certificate chain (PEM, leaf first) ends at the NVIDIA device identity root pinned
//!    by its SHA-256 ([`NVIDIA_DEVICE_ROOT_SHA256`]), every link verifies (ECDSA
//!    P-384/SHA-384), every issuer is a CA, every certificate is valid at `now` and none is
//!    in the caller's revoked serials ([`chain`]);
//! 3. the report's firmware id (FWID), when it has one, is the one in the leaf
//!    certificate's DICE extension (as NVIDIA's verifier checks), and the report's signature
//!    (ECDSA P-384/SHA-384, raw r‖s) over the request and the response without the
//!    signature verifies with the leaf's key;
//! 4. the request's nonce is the one the caller expects;
//! 5. the RIMs given ([`rim`]) are one driver RIM and one VBIOS RIM, and each one's XML
//!    signature ([`xmldsig`]) verifies with its signer chain up to NVIDIA's RIM root pinned
//!    by [`NVIDIA_RIM_ROOT_SHA256`], valid at `now` (unless
//!    [`GpuPolicy::require_rim_signatures`] is off; the verdict's `rim_signature` says which);
//! 6. the RIMs are for the report's driver and VBIOS versions (unless
//!    [`GpuPolicy::require_rim_versions`] is off), they do not both claim an active index,
//!    and every active measurement matches one of its alternatives (NVIDIA index `i` is SPDM
//!    block `i + 1`; index 35 is skipped when the report says NVDEC0 is disabled, as NVIDIA's
//!    verifier does).
//!
//! Revocation: serials the caller lists, and revocation lists (CRLs) the caller holds
//! ([`chain::check_crls`]; never fetched here). Not done here: OCSP responses (a caller
//! with an OCSP cache passes the revoked serials), and revocation of RIM signer
//! certificates.

pub mod chain;
pub mod report;
pub mod rim;
pub mod xmldsig;

use std::collections::BTreeMap;

use crate::Fault;

/// SHA-256 of the DER of NVIDIA's device identity root ("NVIDIA Device Identity CA"), as
/// shipped in `nv-local-gpu-verifier` 2.7.3 (`verifier/certs/verifier_device_root.pem`).
pub const NVIDIA_DEVICE_ROOT_SHA256: [u8; 32] = [
    0x10, 0x2b, 0xf6, 0x59, 0xd5, 0x41, 0x96, 0x14, 0xc9, 0xd8, 0xe6, 0xae, 0xce, 0xbc, 0x80, 0x45,
    0x4e, 0xb2, 0x6b, 0x1d, 0xf6, 0xa7, 0x69, 0xac, 0x72, 0x0b, 0x9a, 0x69, 0x0b, 0x16, 0x7b, 0x48,
];

/// SHA-256 of the DER of NVIDIA's RIM signing root ("NVIDIA CoRIM signing Root CA",
/// `verifier/certs/verifier_RIM_root.pem`): the root of every RIM signer chain.
pub const NVIDIA_RIM_ROOT_SHA256: [u8; 32] = [
    0x12, 0x97, 0x7b, 0x51, 0x15, 0xac, 0xb0, 0x38, 0x11, 0x79, 0x27, 0x9f, 0xff, 0xeb, 0x5a, 0x8c,
    0x4d, 0x26, 0x49, 0x71, 0xeb, 0xb3, 0x22, 0x98, 0x02, 0x3a, 0x46, 0x5f, 0xa4, 0x1d, 0xf5, 0xd1,
];

/// The RIM index NVIDIA skips when NVDEC0 is disabled.
const NVDEC0_INDEX: u32 = 35;

/// Why GPU evidence was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// The report does not parse.
    #[error("GPU report: {0}")]
    Report(#[from] report::ReportError),
    /// The certificate chain does not parse.
    #[error("GPU certificate chain: {0}")]
    ChainParse(String),
    /// The chain ends at a root other than the pinned one.
    #[error("GPU certificate chain ends at an unpinned root (SHA-256 {sha256})")]
    UnpinnedRoot {
        /// SHA-256 of the root presented.
        sha256: String,
    },
    /// A link of the chain does not hold.
    #[error("GPU certificate {position}: {reason}")]
    ChainBroken {
        /// Position in the chain, leaf = 0.
        position: usize,
        /// What failed.
        reason: String,
    },
    /// A certificate is not valid at `now`.
    #[error("GPU certificate {position} ({subject}) is not valid now")]
    CertExpired {
        /// Position in the chain, leaf = 0.
        position: usize,
        /// Its subject.
        subject: String,
    },
    /// A certificate's serial is in the caller's revocation data.
    #[error("GPU certificate {position} (serial {serial}) is revoked")]
    CertRevoked {
        /// Position in the chain, leaf = 0.
        position: usize,
        /// Its serial, hex.
        serial: String,
    },
    /// A revocation list for this chain's issuers does not parse or is not signed by the
    /// issuer it names.
    #[error("GPU revocation list {position}: {reason}")]
    CrlInvalid {
        /// Position among the revocation lists given.
        position: usize,
        /// What is wrong.
        reason: String,
    },
    /// The revocation list held for an issuer of the chain is out of date (past its
    /// `nextUpdate`) or not yet valid: the certificates it covers cannot be judged.
    #[error("GPU revocation list of {issuer} is out of date")]
    CrlStale {
        /// The issuer the list is for.
        issuer: String,
    },
    /// The report carries a firmware id (FWID) and the leaf certificate a different one, or
    /// none.
    #[error("the report's FWID is not the one in the GPU's leaf certificate")]
    FwidMismatch,
    /// The leaf's key is not a P-384 key or the report's signature does not verify.
    #[error("GPU report signature does not verify with the leaf certificate's key")]
    Signature,
    /// The request's nonce is not the expected one.
    #[error("GPU report nonce is not the expected one")]
    NonceMismatch,
    /// A RIM does not parse.
    #[error("RIM {position}: {error}")]
    Rim {
        /// Position among the RIMs given.
        position: usize,
        /// What is wrong.
        error: rim::RimError,
    },
    /// Not exactly one driver RIM and one VBIOS RIM among those given.
    #[error("{count} {component} RIMs given (need exactly one)")]
    RimMissing {
        /// `driver` or `vbios`.
        component: &'static str,
        /// How many were given.
        count: usize,
    },
    /// A RIM is for another version than the report's (refused when
    /// [`GpuPolicy::require_rim_versions`] is set).
    #[error("the {component} RIM is for version {rim:?}, the report says {report:?}")]
    RimVersion {
        /// `driver` or `vbios`.
        component: &'static str,
        /// The RIM's `colloquialVersion`.
        rim: String,
        /// The version in the report.
        report: String,
    },
    /// A RIM's XML signature or its signer chain does not hold.
    #[error("{component} RIM: {error}")]
    RimSignature {
        /// `driver` or `vbios`.
        component: &'static str,
        /// What failed.
        error: xmldsig::RimSignatureError,
    },
    /// The driver and VBIOS RIMs both claim an active index.
    #[error("driver and VBIOS RIMs both claim index {0}")]
    IndexConflict(u32),
    /// Active reference measurements with no match in the report, by NVIDIA index (SPDM
    /// block index minus one) and component (`driver` or `vbios`), in index order.
    #[error("measurements matching none of the RIM's alternatives: {}", list(.0))]
    MeasurementMismatch(Vec<(u32, &'static str)>),
}

impl GpuError {
    /// Whose fault the refusal is. RIMs are collateral the verifier supplies: a RIM that
    /// does not parse, is missing, is unsigned, is for another version or conflicts with the
    /// other is
    /// ours; everything about the evidence (measurements included) is the peer's.
    pub fn fault(&self) -> Fault {
        match self {
            GpuError::Rim { .. }
            | GpuError::RimMissing { .. }
            | GpuError::RimVersion { .. }
            | GpuError::RimSignature { .. }
            | GpuError::IndexConflict(_)
            | GpuError::CrlInvalid { .. }
            | GpuError::CrlStale { .. } => Fault::Local,
            _ => Fault::Peer,
        }
    }
}

/// What a verifier requires of GPU evidence.
#[derive(Debug, Clone)]
pub struct GpuPolicy {
    /// SHA-256 of the DER of the only root accepted.
    pub device_root_sha256: [u8; 32],
    /// Certificate serials (big-endian bytes, leading zeros ignored) to refuse, taken by
    /// the caller from OCSP/CRL data it holds. Empty: no revocation data.
    pub revoked_serials: Vec<Vec<u8>>,
    /// Certificate revocation lists (DER or PEM) the caller holds, never fetched here; a
    /// list naming an issuer of the chain must be signed by it and current, and a serial
    /// it lists is refused ([`chain::check_crls`]). Lists of other issuers are ignored.
    pub crls: Vec<Vec<u8>>,
    /// Refuse RIMs whose `colloquialVersion` is not the report's driver or VBIOS version.
    /// NVIDIA's verifier only warns on this; on by default here.
    pub require_rim_versions: bool,
    /// SHA-256 of the DER of the only root accepted for RIM signers.
    pub rim_root_sha256: [u8; 32],
    /// Check each RIM's XML signature and signer chain ([`xmldsig`]); on by default. Off,
    /// the RIMs are trusted as the caller supplies them and the verdict says so.
    pub require_rim_signatures: bool,
}

impl Default for GpuPolicy {
    fn default() -> Self {
        GpuPolicy {
            device_root_sha256: NVIDIA_DEVICE_ROOT_SHA256,
            revoked_serials: Vec::new(),
            crls: Vec::new(),
            require_rim_versions: true,
            rim_root_sha256: NVIDIA_RIM_ROOT_SHA256,
            require_rim_signatures: true,
        }
    }
}

/// The evidence and collateral to verify.
#[derive(Debug, Clone, Copy)]
pub struct GpuEvidence<'a> {
    /// The binary report (request ‖ response); see [`report::decode_hex`] for the hex file.
    pub report: &'a [u8],
    /// The certificate chain, PEM, leaf first, ending at the root.
    pub cert_chain_pem: &'a [u8],
    /// The driver RIM and the VBIOS RIM, in any order: a RIM whose `colloquialVersion` has
    /// the VBIOS form (`96.00.5E.00.01`: five dot-separated pairs of hex digits) is the
    /// VBIOS's, any other the driver's.
    pub rims: &'a [&'a [u8]],
}

/// Whether the RIMs' XML signatures were checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RimSignature {
    /// Both RIMs' signatures and signer chains verified up to the pinned RIM root.
    Verified,
    /// Not checked ([`GpuPolicy::require_rim_signatures`] off): the RIMs are trusted as
    /// supplied by the caller.
    NotChecked,
}

/// What verified GPU evidence says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuVerdict {
    /// The nonce the report is bound to.
    pub nonce: [u8; 32],
    /// Driver version from the report.
    pub driver_version: String,
    /// VBIOS version from the report.
    pub vbios_version: String,
    /// Project, project SKU and chip SKU from the report, when present.
    pub project: Option<String>,
    /// Project SKU.
    pub project_sku: Option<String>,
    /// Chip SKU.
    pub chip_sku: Option<String>,
    /// The driver RIM's version.
    pub driver_rim_version: String,
    /// The VBIOS RIM's version.
    pub vbios_rim_version: String,
    /// Number of measurement blocks in the report.
    pub blocks: usize,
    /// Active reference measurements compared (all matched).
    pub measurements_checked: usize,
    /// Subjects of the chain, leaf first.
    pub chain_subjects: Vec<String>,
    /// Whether the RIMs' signatures were checked.
    pub rim_signature: RimSignature,
}

/// Verified GPU evidence as recorded for a peer (`VerifiedPeer::gpu`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuAttestation {
    /// What the evidence says.
    pub verdict: GpuVerdict,
    /// Whether the report's nonce is the one the verifier expected (for RA-TLS: SHA-256 of
    /// the certificate's key). `false` only where a test network accepted recorded evidence
    /// bound to another nonce: then the report proves nothing about this peer.
    pub nonce_bound: bool,
}

impl GpuAttestation {
    /// One line for admin pages: project-SKU, driver and VBIOS versions, nonce binding.
    pub fn summary(&self) -> String {
        let v = &self.verdict;
        format!(
            "project {}-{}, driver {}, VBIOS {}, nonce {}",
            v.project.as_deref().unwrap_or("?"),
            v.project_sku.as_deref().unwrap_or("?"),
            v.driver_version,
            v.vbios_version,
            if self.nonce_bound {
                "bound to the TLS key"
            } else {
                "NOT bound (recorded evidence)"
            }
        )
    }
}

/// Verifies GPU evidence against `expected_nonce` at `now` (Unix seconds).
pub fn verify(
    evidence: &GpuEvidence<'_>,
    expected_nonce: &[u8; 32],
    policy: &GpuPolicy,
    now: u64,
) -> Result<GpuVerdict, GpuError> {
    let report = report::parse(evidence.report)?;
    let chain = chain::verify(
        evidence.cert_chain_pem,
        &policy.device_root_sha256,
        &policy.revoked_serials,
        now,
    )?;
    if !policy.crls.is_empty() {
        chain::check_crls(
            &chain::pem_certs(evidence.cert_chain_pem)?,
            &policy.crls,
            now,
        )?;
    }
    // As NVIDIA's verifier: a report that carries an FWID must carry the leaf's.
    if let Some(fwid) = report
        .opaque
        .get(&report::field::FWID)
        .filter(|f| !f.is_empty())
        && chain.leaf_fwid.as_deref() != Some(*fwid)
    {
        return Err(GpuError::FwidMismatch);
    }
    let signed = report.signed_parts().concat();
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P384_SHA384_FIXED,
        &chain.leaf_key,
    )
    .verify(&signed, report.signature)
    .map_err(|_| GpuError::Signature)?;
    if &report.request_nonce != expected_nonce {
        return Err(GpuError::NonceMismatch);
    }

    let driver_version = report.driver_version().unwrap_or_default();
    let vbios_version = report.vbios_version().unwrap_or_default();
    let rims = evidence
        .rims
        .iter()
        .enumerate()
        .map(|(position, bytes)| {
            rim::parse(bytes).map_err(|error| GpuError::Rim { position, error })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (driver, driver_at) = pick(&rims, "driver", false)?;
    let (vbios, vbios_at) = pick(&rims, "vbios", true)?;
    let rim_signature = if policy.require_rim_signatures {
        for (component, at) in [("driver", driver_at), ("vbios", vbios_at)] {
            let bytes = evidence.rims.get(at).copied().unwrap_or_default();
            xmldsig::verify(bytes, &policy.rim_root_sha256, now)
                .map_err(|error| GpuError::RimSignature { component, error })?;
        }
        RimSignature::Verified
    } else {
        RimSignature::NotChecked
    };
    if policy.require_rim_versions {
        for (component, r, v) in [
            ("driver", driver, &driver_version),
            ("vbios", vbios, &vbios_version),
        ] {
            if v.is_empty() || !r.version.eq_ignore_ascii_case(v) {
                return Err(GpuError::RimVersion {
                    component,
                    rim: r.version.clone(),
                    report: v.clone(),
                });
            }
        }
    }

    let mut golden: BTreeMap<u32, (&'static str, &rim::RimMeasurement)> = BTreeMap::new();
    for (component, r) in [("driver", driver), ("vbios", vbios)] {
        for (&index, m) in r.measurements.iter().filter(|(_, m)| m.active) {
            if golden.insert(index, (component, m)).is_some() {
                return Err(GpuError::IndexConflict(index));
            }
        }
    }
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for (&index, &(component, m)) in &golden {
        if index == NVDEC0_INDEX && report.nvdec0_disabled() {
            continue;
        }
        let block = index
            .checked_add(1)
            .and_then(|i| u8::try_from(i).ok())
            .and_then(|i| report.blocks.get(&i));
        let matched = block.is_some_and(|b| {
            b.value.len() == m.size && m.alternatives.iter().any(|alt| alt.as_slice() == b.value)
        });
        if !matched {
            mismatches.push((index, component));
        }
        checked += 1;
    }
    if !mismatches.is_empty() {
        return Err(GpuError::MeasurementMismatch(mismatches));
    }

    Ok(GpuVerdict {
        nonce: report.request_nonce,
        driver_version,
        vbios_version,
        project: report.text_field(report::field::PROJECT),
        project_sku: report.text_field(report::field::PROJECT_SKU),
        chip_sku: report.text_field(report::field::CHIP_SKU),
        driver_rim_version: driver.version.clone(),
        vbios_rim_version: vbios.version.clone(),
        blocks: report.blocks.len(),
        measurements_checked: checked,
        chain_subjects: chain.subjects,
        rim_signature,
    })
}

fn list(mismatches: &[(u32, &'static str)]) -> String {
    let parts: Vec<String> = mismatches
        .iter()
        .map(|(i, c)| format!("{i} ({c})"))
        .collect();
    parts.join(", ")
}

/// Whether a version has the VBIOS form: five dot-separated pairs of hex digits.
fn is_vbios_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 5
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn pick<'r>(
    rims: &'r [rim::Rim],
    component: &'static str,
    vbios: bool,
) -> Result<(&'r rim::Rim, usize), GpuError> {
    let found: Vec<(usize, &rim::Rim)> = rims
        .iter()
        .enumerate()
        .filter(|(_, r)| is_vbios_version(&r.version) == vbios)
        .collect();
    match found.as_slice() {
        [(at, one)] => Ok((one, *at)),
        _ => Err(GpuError::RimMissing {
            component,
            count: found.len(),
        }),
    }
}
