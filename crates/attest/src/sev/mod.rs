//! AMD SEV-SNP attestation report parsing and verification.
//!
//! Signature checks on the certificate chain use the `sev` crate (pure Rust,
//! `crypto_nossl`); the report signature is
//! verified with `ring` over the *raw* report bytes (not a re-encoding). On top of the
//! signature checks we enforce what the `sev` crate leaves to callers:
//!
//! * the ARK must be one of the AMD roots built into `sev` (Milan, Genoa, Turin), so a
//!   self-made chain is refused;
//! * the report's `REPORTED_TCB` must equal the VCEK's TCB extensions
//!   (OIDs `1.3.6.1.4.1.3704.1.3.{1,2,3,8}`, plus `.9` FMC on Turin);
//! * the report's `CHIP_ID` must equal the VCEK's hwID extension (`1.3.6.1.4.1.3704.1.4`);
//! * the report must be signed by the VCEK (`KEY_INFO.SIGNING_KEY == 0`), with
//!   `SIGNATURE_ALGO == 1` (ECDSA P-384 with SHA-384);
//! * a [`SevPolicy`]: debug, migration agent, VMPL 0, and a minimum TCB per product
//!   ([`SevMinTcb`], by default [`SevMinTcb::AMD_BULLETINS`]; FMC included on Turin).
//!
//! * the ARK, ASK and VCEK must be within their validity periods at the time the caller
//!   passes to [`verify_report_at`] (nothing here reads a clock).
//!
//! Not checked here: AMD's CRLs (see [`crate::kds`]: [`crate::Policy`] checks the VCEK and
//! ASK against the cached, ARK-signed CRL of the product) and VLEK-signed reports (refused).
//!
//! Report layout: AMD SEV-SNP ABI specification, `ATTESTATION_REPORT` structure (0x4A0 bytes).
//!
//! Layout: [`report`] parses the report, [`certs`] the certificates (AMD roots, the ASK/ARK
//! chain, the VCEK's extensions, the extended report's certificate table), `verify` binds
//! them together, [`policy`] holds what a report must satisfy beyond its signatures.

mod cert_table;
mod certs;
mod policy;
mod report;
mod verify;

pub use cert_table::{
    GUID_ARK, GUID_ASK, GUID_VCEK, GUID_VLEK, SevCertTable, build_cert_table, parse_cert_table,
};
#[cfg(all(test, feature = "fetch"))]
pub(crate) use certs::split_chain;
pub use certs::{builtin_ark_der, builtin_chain_for, certs_not_after, verify_vcek_chain};
pub(crate) use certs::{
    cert_verify, check_validity, normalize_serial, pem_certs, sev_cert, vcek_fields,
};
pub use policy::{DEFAULT_CRL_GRACE_SECS, SevMinTcb, SevPolicy, check_policy};
pub(crate) use report::{OFF_REPORTED_TCB, decode_tcb};
pub use report::{
    REPORT_LEN, SevReportInfo, decode_report_hex, image_hash, parse_report, parse_report_hex,
};
pub use verify::{SevVerified, verify_report_at, verify_report_full_at};

use crate::model::Fault;

/// A TCB version (security version numbers of the firmware components).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SevTcb {
    /// Bootloader SVN.
    pub bootloader: u8,
    /// PSP OS (TEE) SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Microcode patch level.
    pub microcode: u8,
    /// Turin's FMC (firmware mask ROM) SVN. Milan and Genoa have no FMC: 0 there, and a
    /// minimum set here is ignored for them.
    pub fmc: u8,
}

impl SevTcb {
    /// `fmc-bl-tee-snp-ucode` as ten hex digits, e.g. `0003000873` (VCEK cache file names).
    pub fn key(&self) -> String {
        hex::encode([
            self.fmc,
            self.bootloader,
            self.tee,
            self.snp,
            self.microcode,
        ])
    }
}

impl std::fmt::Display for SevTcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bootloader {} tee {} snp {} microcode {} fmc {}",
            self.bootloader, self.tee, self.snp, self.microcode, self.fmc
        )
    }
}

/// AMD product generation, identified by which built-in ARK signed the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SevGeneration {
    /// Zen 3 (EPYC 7003).
    Milan,
    /// Zen 4 (EPYC 9004).
    Genoa,
    /// Zen 5 (EPYC 9005).
    Turin,
}

impl SevGeneration {
    /// Every product Cocoon knows the AMD root of.
    pub const ALL: [SevGeneration; 3] = [
        SevGeneration::Milan,
        SevGeneration::Genoa,
        SevGeneration::Turin,
    ];

    /// The product name as the AMD KDS spells it in URLs (`Milan`, `Genoa`, `Turin`).
    pub fn name(self) -> &'static str {
        match self {
            SevGeneration::Milan => "Milan",
            SevGeneration::Genoa => "Genoa",
            SevGeneration::Turin => "Turin",
        }
    }

    /// The inverse of [`Self::name`] (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|g| g.name().eq_ignore_ascii_case(name))
    }

    /// Length of the VCEK hwID (and of the chip id's significant prefix): 64 bytes on
    /// Milan and Genoa, 8 on Turin.
    pub fn hwid_len(self) -> usize {
        match self {
            SevGeneration::Turin => 8,
            _ => 64,
        }
    }
}

impl std::fmt::Display for SevGeneration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an SEV-SNP report was refused. Each variant names the check and the value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SevError {
    /// A report of the wrong length.
    #[error("SEV-SNP report: wrong length {len} bytes, expected {expected}")]
    ReportLength {
        /// The length received.
        len: usize,
        /// The report length.
        expected: usize,
    },
    /// A certificate table that does not parse.
    #[error("SEV-SNP certificate table: {0}")]
    CertTable(String),
    /// A hex report that does not decode.
    #[error("SEV-SNP report hex: {0}")]
    ReportHex(String),
    /// A report version older than 2.
    #[error("SEV-SNP report: unsupported version {0} (need >= 2)")]
    UnsupportedVersion(u32),
    /// A signature algorithm other than ECDSA P-384/SHA-384.
    #[error("SEV-SNP report: unsupported signature algorithm {0} (need 1 = ECDSA P-384/SHA-384)")]
    UnsupportedSignatureAlgorithm(u32),
    /// A report signed by a key other than the VCEK.
    #[error("SEV-SNP report: signing key {0} is not the VCEK (KEY_INFO.SIGNING_KEY must be 0)")]
    SigningKeyNotVcek(u32),
    /// A report with its chip id masked.
    #[error("SEV-SNP report: chip id is masked (MASK_CHIP_ID set); cannot bind to the VCEK")]
    ChipIdMasked,
    /// A signature component that does not fit P-384.
    #[error("SEV-SNP report: signature {component} has non-zero high bytes")]
    SignatureEncoding {
        /// `r` or `s`.
        component: &'static str,
    },
    /// A report signature that does not verify.
    #[error("SEV-SNP report signature does not verify with the VCEK")]
    ReportSignature,
    /// A certificate chain PEM that does not parse.
    #[error("SEV-SNP cert chain PEM: {0}")]
    ChainPem(String),
    /// A chain with other than two certificates.
    #[error("SEV-SNP cert chain: expected 2 certificates (ASK, ARK), found {0}")]
    ChainCertCount(usize),
    /// A chain without a self-issued ARK.
    #[error("SEV-SNP cert chain: no self-issued ARK among the certificates")]
    ChainNoArk,
    /// A certificate that does not parse.
    #[error("SEV-SNP {which} certificate: cannot parse: {reason}")]
    CertParse {
        /// Which certificate.
        which: &'static str,
        /// Why it does not parse.
        reason: String,
    },
    /// An ARK that is none of AMD's built-in roots.
    #[error("SEV-SNP ARK is not one of the AMD roots built in (Milan, Genoa, Turin)")]
    UnknownArk,
    /// A certificate not signed by its issuer.
    #[error("SEV-SNP cert chain: {signer} does not sign {signee}: {reason}")]
    CertSignature {
        /// The issuing certificate.
        signer: &'static str,
        /// The signed certificate.
        signee: &'static str,
        /// Why the signature does not verify.
        reason: String,
    },
    /// A certificate outside its validity period.
    #[error(
        "SEV-SNP {which} certificate not valid at {now_unix} (valid {not_before}..={not_after}, unix seconds)"
    )]
    CertNotValidAt {
        /// Which certificate.
        which: &'static str,
        /// The verification time, Unix seconds.
        now_unix: i64,
        /// Start of validity, Unix seconds.
        not_before: i64,
        /// End of validity, Unix seconds.
        not_after: i64,
    },
    /// A VCEK whose public key is not a P-384 point.
    #[error("SEV-SNP VCEK: public key is not a P-384 point: {0}")]
    VcekKey(String),
    /// A VCEK extension that is missing or malformed.
    #[error("SEV-SNP VCEK extension {oid}: {reason}")]
    VcekExtension {
        /// The extension's OID.
        oid: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A reported TCB component that differs from the VCEK's.
    #[error("SEV-SNP reported TCB {component} = {reported} differs from VCEK TCB {vcek}")]
    TcbMismatch {
        /// The TCB component.
        component: &'static str,
        /// Its value in the report.
        reported: u8,
        /// Its value in the VCEK.
        vcek: u8,
    },
    /// A report chip id that differs from the VCEK's hardware id.
    #[error("SEV-SNP report chip id {report} differs from VCEK hwID {vcek}")]
    ChipIdMismatch {
        /// Chip id in the report, hex.
        report: String,
        /// Hardware id in the VCEK, hex.
        vcek: String,
    },
    /// A guest policy that allows debugging.
    #[error("SEV-SNP policy: guest allows debugging (policy bit 19 set) and debug is not allowed")]
    DebugAllowed,
    /// A guest policy that allows a migration agent.
    #[error(
        "SEV-SNP policy: guest allows a migration agent (policy bit 18 set) and it is not allowed"
    )]
    MigrationAgentAllowed,
    /// A report from a VMPL other than 0.
    #[error("SEV-SNP policy: report VMPL is {0}, VMPL 0 required")]
    VmplNotZero(u32),
    /// A reported TCB component below the policy's minimum.
    #[error(
        "SEV-SNP policy: reported TCB {component} = {reported} is below the {product} minimum {min}"
    )]
    TcbTooLow {
        /// The processor generation.
        product: SevGeneration,
        /// The TCB component.
        component: &'static str,
        /// Its reported value.
        reported: u8,
        /// The policy's minimum.
        min: u8,
    },
    /// A certificate that AMD's CRL revokes.
    #[error("SEV-SNP {which} certificate (serial {serial}) is revoked by AMD's {product} CRL")]
    Revoked {
        /// Which certificate.
        which: &'static str,
        /// The processor generation.
        product: SevGeneration,
        /// Its serial number, hex.
        serial: String,
    },
    /// A CRL past its next update plus the grace period.
    #[error(
        "SEV-SNP {product} CRL is stale: nextUpdate {next_update} + grace {grace}s < now {now} \
         (unix seconds); the policy requires a fresh CRL"
    )]
    CrlStale {
        /// The processor generation.
        product: SevGeneration,
        /// The CRL's nextUpdate, Unix seconds.
        next_update: u64,
        /// The grace period, seconds.
        grace: u64,
        /// The verification time, Unix seconds.
        now: u64,
    },
    /// A CRL whose thisUpdate is in the future.
    #[error("SEV-SNP {product} CRL not yet valid: thisUpdate {this_update} > now {now}")]
    CrlNotYetValid {
        /// The processor generation.
        product: SevGeneration,
        /// The CRL's thisUpdate, Unix seconds.
        this_update: u64,
        /// The verification time, Unix seconds.
        now: u64,
    },
    /// A CRL for another generation than the chain.
    #[error("SEV-SNP CRL is for {crl}, the certificate chain is {chain}")]
    CrlProductMismatch {
        /// The CRL's generation.
        crl: SevGeneration,
        /// The chain's generation.
        chain: SevGeneration,
    },
    /// A CRL not issued by the ASK's issuer.
    #[error("SEV-SNP {product} CRL issuer is not the issuer of the ASK")]
    CrlIssuerMismatch {
        /// The processor generation.
        product: SevGeneration,
    },
}

#[cfg(test)]
mod tests;

impl SevError {
    /// Whether the peer's evidence or our side is at fault: the report, its certificates and
    /// their revocation are the peer's; the age of our CRL and a CRL that does not match the
    /// peer's chain are ours.
    pub fn fault(&self) -> Fault {
        match self {
            SevError::CrlStale { .. }
            | SevError::CrlNotYetValid { .. }
            | SevError::CrlProductMismatch { .. }
            | SevError::CrlIssuerMismatch { .. } => Fault::Local,
            SevError::ReportLength { .. }
            | SevError::CertTable { .. }
            | SevError::ReportHex { .. }
            | SevError::UnsupportedVersion { .. }
            | SevError::UnsupportedSignatureAlgorithm { .. }
            | SevError::SigningKeyNotVcek { .. }
            | SevError::ChipIdMasked
            | SevError::SignatureEncoding { .. }
            | SevError::ReportSignature
            | SevError::ChainPem { .. }
            | SevError::ChainCertCount { .. }
            | SevError::ChainNoArk
            | SevError::CertParse { .. }
            | SevError::UnknownArk
            | SevError::CertSignature { .. }
            | SevError::CertNotValidAt { .. }
            | SevError::VcekKey { .. }
            | SevError::VcekExtension { .. }
            | SevError::TcbMismatch { .. }
            | SevError::ChipIdMismatch { .. }
            | SevError::DebugAllowed
            | SevError::MigrationAgentAllowed
            | SevError::VmplNotZero { .. }
            | SevError::TcbTooLow { .. }
            | SevError::Revoked { .. } => Fault::Peer,
        }
    }
}
