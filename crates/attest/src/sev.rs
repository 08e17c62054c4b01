//! AMD SEV-SNP attestation report parsing and verification.
//!
//! COCOON upstream is TDX-centric; this SEV-SNP path is our own. Signature checks on the
//! certificate chain use the `sev` crate (pure Rust, `crypto_nossl`); the report signature is
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
//! * the ARK, ASK and VCEK must be within their validity periods (system clock in
//!   [`verify_report`], an explicit time in [`verify_report_at`]).
//!
//! Not checked here: AMD's CRLs (see [`crate::kds`]: [`crate::Policy`] checks the VCEK and
//! ASK against the cached, ARK-signed CRL of the product) and VLEK-signed reports (refused).
//!
//! Report layout: AMD SEV-SNP ABI specification, `ATTESTATION_REPORT` structure (0x4A0 bytes).

use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Size in bytes of an SEV-SNP attestation report (`ATTESTATION_REPORT`, 0x4A0).
pub const REPORT_LEN: usize = 0x4A0;

/// Bytes covered by the report signature (`0x000..0x2A0`).
const SIGNED_LEN: usize = 0x2A0;

const OFF_VERSION: usize = 0x00;
const OFF_POLICY: usize = 0x08;
const OFF_VMPL: usize = 0x30;
const OFF_SIG_ALGO: usize = 0x34;
const OFF_KEY_INFO: usize = 0x48;
const OFF_REPORT_DATA: usize = 0x50;
const OFF_MEASUREMENT: usize = 0x90;
const OFF_HOST_DATA: usize = 0xC0;
pub(crate) const OFF_REPORTED_TCB: usize = 0x180;
const OFF_CPUID_FAM: usize = 0x188;
const OFF_CHIP_ID: usize = 0x1A0;
const OFF_SIG_R: usize = 0x2A0;
const OFF_SIG_S: usize = 0x2E8;
/// r and s are stored little-endian in 72-byte fields; P-384 scalars use the low 48.
const SIG_COMPONENT_LEN: usize = 72;
const P384_SCALAR_LEN: usize = 48;

/// `SIGNATURE_ALGO` value for ECDSA P-384 with SHA-384.
const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// Guest policy bits.
const POLICY_MIGRATE_MA: u64 = 1 << 18;
const POLICY_DEBUG: u64 = 1 << 19;

const OID_TCB_BOOTLOADER: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TCB_TEE: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_TCB_SNP: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_TCB_MICROCODE: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_TCB_FMC: &str = "1.3.6.1.4.1.3704.1.3.9";
const OID_HWID: &str = "1.3.6.1.4.1.3704.1.4";

/// A TCB version (security version numbers of the firmware components).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SevTcb {
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
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

/// The minimum TCB per AMD product. TCB numbers are not comparable across products (Turin
/// counts its SVNs from scratch and adds the FMC), so each product has its own floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevMinTcb {
    pub milan: SevTcb,
    pub genoa: SevTcb,
    pub turin: SevTcb,
}

impl SevMinTcb {
    /// Cocoon's default floors, from AMD's product security bulletins as of 2026-12 (the
    /// bulletins name the SNP firmware SPL and the microcode SPL, which is the low byte of
    /// the patch level; bootloader, TEE and FMC floors are not named there and stay 0):
    ///
    /// * Milan (EPYC 7003, family 19h model 01h stepping 1): AMD-SB-3019 (2025-02-03,
    ///   CVE-2024-56161, microcode signature bypass "EntrySign"): SNP SPL 0x16 = 22,
    ///   microcode 0x0A0011DB = 219. The Milan values of AMD-SB-3020 and AMD-SB-3027 are not
    ///   in this table; a deployment raises them in its policy file.
    /// * Genoa (EPYC 9004, family 19h model 11h stepping 1): AMD-SB-3020 (2025-10,
    ///   CVE-2025-0033, RMP initialisation race): SNP SPL 0x1B = 27 with microcode
    ///   0x0A101156; AMD-SB-3027 (CVE-2025-29943, "StackWarp"): microcode SPL >= 0x56 = 86.
    ///   Both are above AMD-SB-3019's 0x17 / 0x54.
    /// * Turin (EPYC 9005, family 1Ah model 02h stepping 1): AMD-SB-3020: SNP SPL 0x04;
    ///   AMD-SB-3027: microcode SPL >= 0x51 = 81.
    ///
    /// Milan-X, Genoa-X and Bergamo/Siena run their own microcode patch lines whose numbers
    /// are lower (e.g. Genoa-X 0x51 under AMD-SB-3027): these floors refuse them (fail
    /// closed) unless a policy file lowers that product's microcode floor. AMD has no
    /// "UpToDate" verdict like Intel's: these floors must follow AMD's bulletins.
    pub const AMD_BULLETINS: SevMinTcb = SevMinTcb {
        milan: SevTcb {
            bootloader: 0,
            tee: 0,
            snp: 22,
            microcode: 219,
            fmc: 0,
        },
        genoa: SevTcb {
            bootloader: 0,
            tee: 0,
            snp: 27,
            microcode: 86,
            fmc: 0,
        },
        turin: SevTcb {
            bootloader: 0,
            tee: 0,
            snp: 4,
            microcode: 81,
            fmc: 0,
        },
    };

    /// No floor at all (tests on old sample reports only).
    pub const NONE: SevMinTcb = SevMinTcb::uniform(SevTcb {
        bootloader: 0,
        tee: 0,
        snp: 0,
        microcode: 0,
        fmc: 0,
    });

    /// The same floor for every product.
    pub const fn uniform(tcb: SevTcb) -> Self {
        SevMinTcb {
            milan: tcb,
            genoa: tcb,
            turin: tcb,
        }
    }

    /// The floor for `generation`.
    pub fn for_generation(&self, generation: SevGeneration) -> SevTcb {
        match generation {
            SevGeneration::Milan => self.milan,
            SevGeneration::Genoa => self.genoa,
            SevGeneration::Turin => self.turin,
        }
    }
}

impl Default for SevMinTcb {
    fn default() -> Self {
        Self::AMD_BULLETINS
    }
}

/// The fields of an SEV-SNP attestation report that Cocoon uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SevReportInfo {
    pub version: u32,
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    pub report_data: [u8; 64],
    pub chip_id: [u8; 64],
    pub reported_tcb: SevTcb,
    pub vmpl: u32,
    pub debug_allowed: bool,
    pub migrate_ma_allowed: bool,
}

/// Default grace after a CRL's `nextUpdate` during which it still counts as fresh: AMD or
/// its KDS may publish late, and a week-long outage should not stop every SEV-SNP peer.
pub const DEFAULT_CRL_GRACE_SECS: u64 = 7 * 86_400;

/// What a verified report must satisfy beyond its signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevPolicy {
    /// Each reported TCB component must be at least the floor of the report's product.
    pub min_tcb: SevMinTcb,
    /// Accept guests whose policy allows debugging (host can read guest memory).
    pub allow_debug: bool,
    /// Accept guests whose policy allows a migration agent.
    pub allow_migration_agent: bool,
    /// Require the report to have been requested at VMPL 0.
    pub require_vmpl0: bool,
    /// Require a fresh, ARK-signed CRL of the product ([`crate::kds`]) and refuse when none
    /// is cached or it is stale (fail closed). When false, a cached CRL is still applied
    /// (revocations are permanent, even in a stale CRL) but its absence is accepted.
    pub require_crl: bool,
    /// Seconds after a CRL's `nextUpdate` during which it still counts as fresh.
    pub crl_grace_secs: u64,
}

impl Default for SevPolicy {
    fn default() -> Self {
        Self {
            min_tcb: SevMinTcb::default(),
            allow_debug: false,
            allow_migration_agent: false,
            require_vmpl0: true,
            require_crl: true,
            crl_grace_secs: DEFAULT_CRL_GRACE_SECS,
        }
    }
}

/// AMD product generation, identified by which built-in ARK signed the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SevGeneration {
    Milan,
    Genoa,
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
pub enum SevError {
    #[error("SEV-SNP report: wrong length {len} bytes, expected {expected}")]
    ReportLength { len: usize, expected: usize },
    #[error("SEV-SNP certificate table: {0}")]
    CertTable(String),
    #[error("SEV-SNP report hex: {0}")]
    ReportHex(String),
    #[error("SEV-SNP report: unsupported version {0} (need >= 2)")]
    UnsupportedVersion(u32),
    #[error("SEV-SNP report: unsupported signature algorithm {0} (need 1 = ECDSA P-384/SHA-384)")]
    UnsupportedSignatureAlgorithm(u32),
    #[error("SEV-SNP report: signing key {0} is not the VCEK (KEY_INFO.SIGNING_KEY must be 0)")]
    SigningKeyNotVcek(u32),
    #[error("SEV-SNP report: chip id is masked (MASK_CHIP_ID set); cannot bind to the VCEK")]
    ChipIdMasked,
    #[error("SEV-SNP report: signature {component} has non-zero high bytes")]
    SignatureEncoding { component: &'static str },
    #[error("SEV-SNP report signature does not verify with the VCEK")]
    ReportSignature,
    #[error("SEV-SNP cert chain PEM: {0}")]
    ChainPem(String),
    #[error("SEV-SNP cert chain: expected 2 certificates (ASK, ARK), found {0}")]
    ChainCertCount(usize),
    #[error("SEV-SNP cert chain: no self-issued ARK among the certificates")]
    ChainNoArk,
    #[error("SEV-SNP {which} certificate: cannot parse: {reason}")]
    CertParse { which: &'static str, reason: String },
    #[error("SEV-SNP ARK is not one of the AMD roots built in (Milan, Genoa, Turin)")]
    UnknownArk,
    #[error("SEV-SNP cert chain: {signer} does not sign {signee}: {reason}")]
    CertSignature {
        signer: &'static str,
        signee: &'static str,
        reason: String,
    },
    #[error(
        "SEV-SNP {which} certificate not valid at {now_unix} (valid {not_before}..={not_after}, unix seconds)"
    )]
    CertNotValidAt {
        which: &'static str,
        now_unix: i64,
        not_before: i64,
        not_after: i64,
    },
    #[error("SEV-SNP VCEK: public key is not a P-384 point: {0}")]
    VcekKey(String),
    #[error("SEV-SNP VCEK extension {oid}: {reason}")]
    VcekExtension { oid: &'static str, reason: String },
    #[error("SEV-SNP reported TCB {component} = {reported} differs from VCEK TCB {vcek}")]
    TcbMismatch {
        component: &'static str,
        reported: u8,
        vcek: u8,
    },
    #[error("SEV-SNP report chip id {report} differs from VCEK hwID {vcek}")]
    ChipIdMismatch { report: String, vcek: String },
    #[error("SEV-SNP policy: guest allows debugging (policy bit 19 set) and debug is not allowed")]
    DebugAllowed,
    #[error(
        "SEV-SNP policy: guest allows a migration agent (policy bit 18 set) and it is not allowed"
    )]
    MigrationAgentAllowed,
    #[error("SEV-SNP policy: report VMPL is {0}, VMPL 0 required")]
    VmplNotZero(u32),
    #[error(
        "SEV-SNP policy: reported TCB {component} = {reported} is below the {product} minimum {min}"
    )]
    TcbTooLow {
        product: SevGeneration,
        component: &'static str,
        reported: u8,
        min: u8,
    },
    #[error("SEV-SNP {which} certificate (serial {serial}) is revoked by AMD's {product} CRL")]
    Revoked {
        which: &'static str,
        product: SevGeneration,
        serial: String,
    },
    #[error(
        "SEV-SNP {product} CRL is stale: nextUpdate {next_update} + grace {grace}s < now {now} \
         (unix seconds); the policy requires a fresh CRL"
    )]
    CrlStale {
        product: SevGeneration,
        next_update: u64,
        grace: u64,
        now: u64,
    },
    #[error("SEV-SNP {product} CRL not yet valid: thisUpdate {this_update} > now {now}")]
    CrlNotYetValid {
        product: SevGeneration,
        this_update: u64,
        now: u64,
    },
    #[error("SEV-SNP CRL is for {crl}, the certificate chain is {chain}")]
    CrlProductMismatch {
        crl: SevGeneration,
        chain: SevGeneration,
    },
    #[error("SEV-SNP {product} CRL issuer is not the issuer of the ASK")]
    CrlIssuerMismatch { product: SevGeneration },
}

fn read_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn read_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn read_arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}

/// Raw TCB_VERSION decoding. Milan/Genoa: `[bl, tee, 0, 0, 0, 0, snp, ucode]`;
/// Turin: `[fmc, bl, tee, snp, 0, 0, 0, ucode]`.
pub(crate) fn decode_tcb(raw: [u8; 8], turin: bool) -> SevTcb {
    if turin {
        SevTcb {
            bootloader: raw[1],
            tee: raw[2],
            snp: raw[3],
            microcode: raw[7],
            fmc: raw[0],
        }
    } else {
        SevTcb {
            bootloader: raw[0],
            tee: raw[1],
            snp: raw[6],
            microcode: raw[7],
            fmc: 0,
        }
    }
}

/// Whether the report's TCB fields use the Turin layout, guessed from the report alone
/// (`verify_report` uses the generation of the matching AMD root instead).
fn guess_turin(report: &[u8], version: u32, chip_id: &[u8; 64]) -> bool {
    if version >= 3 {
        // CPUID_FAM_ID: 0x19 = Milan/Genoa, 0x1A = Turin and later.
        report[OFF_CPUID_FAM] >= 0x1A
    } else {
        // v2 reports carry no CPUID; Turin chip ids use only the first 8 bytes.
        chip_id[8..].iter().all(|&b| b == 0)
    }
}

struct ParsedReport {
    info: SevReportInfo,
    raw_tcb: [u8; 8],
}

fn parse_inner(report: &[u8]) -> Result<ParsedReport, SevError> {
    if report.len() != REPORT_LEN {
        return Err(SevError::ReportLength {
            len: report.len(),
            expected: REPORT_LEN,
        });
    }
    let version = read_u32(report, OFF_VERSION);
    if version < 2 {
        return Err(SevError::UnsupportedVersion(version));
    }
    let policy = read_u64(report, OFF_POLICY);
    let chip_id: [u8; 64] = read_arr(report, OFF_CHIP_ID);
    let raw_tcb: [u8; 8] = read_arr(report, OFF_REPORTED_TCB);
    let guessed_turin = guess_turin(report, version, &chip_id);
    let reported_tcb = decode_tcb(raw_tcb, guessed_turin);
    Ok(ParsedReport {
        info: SevReportInfo {
            version,
            measurement: read_arr(report, OFF_MEASUREMENT),
            host_data: read_arr(report, OFF_HOST_DATA),
            report_data: read_arr(report, OFF_REPORT_DATA),
            chip_id,
            reported_tcb,
            vmpl: read_u32(report, OFF_VMPL),
            debug_allowed: policy & POLICY_DEBUG != 0,
            migrate_ma_allowed: policy & POLICY_MIGRATE_MA != 0,
        },
        raw_tcb,
    })
}

/// Parses a raw SEV-SNP attestation report (exactly [`REPORT_LEN`] bytes).
///
/// Performs no signature check. Never panics, whatever the input.
pub fn parse_report(report: &[u8]) -> Result<SevReportInfo, SevError> {
    parse_inner(report).map(|p| p.info)
}

/// Decodes the hex text form of a report (as in virtee/sev's `report_milan.hex`):
/// hex digits of either case, ASCII whitespace ignored.
pub fn decode_report_hex(text: &[u8]) -> Result<Vec<u8>, SevError> {
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    hex::decode(&compact).map_err(|e| SevError::ReportHex(e.to_string()))
}

/// [`decode_report_hex`] followed by [`parse_report`].
pub fn parse_report_hex(text: &[u8]) -> Result<SevReportInfo, SevError> {
    parse_report(&decode_report_hex(text)?)
}

/// `SHA-256(measurement ‖ host_data)`: the identity of the launched image and its host config.
pub fn image_hash(info: &SevReportInfo) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(info.measurement);
    h.update(info.host_data);
    h.finalize().into()
}

/// Checks a parsed report from a `generation` platform against a policy (no signature
/// checks). The FMC floor applies to Turin only.
pub fn check_policy(
    info: &SevReportInfo,
    policy: &SevPolicy,
    generation: SevGeneration,
) -> Result<(), SevError> {
    if info.debug_allowed && !policy.allow_debug {
        return Err(SevError::DebugAllowed);
    }
    if info.migrate_ma_allowed && !policy.allow_migration_agent {
        return Err(SevError::MigrationAgentAllowed);
    }
    if policy.require_vmpl0 && info.vmpl != 0 {
        return Err(SevError::VmplNotZero(info.vmpl));
    }
    let r = info.reported_tcb;
    let m = policy.min_tcb.for_generation(generation);
    let fmc_min = if generation == SevGeneration::Turin {
        m.fmc
    } else {
        0
    };
    for (component, reported, min) in [
        ("fmc", r.fmc, fmc_min),
        ("bootloader", r.bootloader, m.bootloader),
        ("tee", r.tee, m.tee),
        ("snp", r.snp, m.snp),
        ("microcode", r.microcode, m.microcode),
    ] {
        if reported < min {
            return Err(SevError::TcbTooLow {
                product: generation,
                component,
                reported,
                min,
            });
        }
    }
    Ok(())
}

/// Splits a PEM bundle into DER certificates.
pub(crate) fn pem_certs(chain_pem: &[u8]) -> Result<Vec<Vec<u8>>, SevError> {
    let mut out = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(chain_pem) {
        let pem = pem.map_err(|e| SevError::ChainPem(e.to_string()))?;
        if pem.label != "CERTIFICATE" {
            return Err(SevError::ChainPem(format!(
                "unexpected PEM block {:?}",
                pem.label
            )));
        }
        out.push(pem.contents);
    }
    Ok(out)
}

pub(crate) fn parse_x509<'a>(
    which: &'static str,
    der: &'a [u8],
) -> Result<X509Certificate<'a>, SevError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(SevError::CertParse {
            which,
            reason: "trailing bytes after the certificate".into(),
        }),
        Err(e) => Err(SevError::CertParse {
            which,
            reason: e.to_string(),
        }),
    }
}

pub(crate) fn sev_cert(
    which: &'static str,
    der: &[u8],
) -> Result<sev::certs::snp::Certificate, SevError> {
    sev::certs::snp::Certificate::from_der(der).map_err(|e| SevError::CertParse {
        which,
        reason: e.to_string(),
    })
}

pub(crate) fn cert_verify(
    signer: (&'static str, &sev::certs::snp::Certificate),
    signee: (&'static str, &sev::certs::snp::Certificate),
) -> Result<(), SevError> {
    use sev::certs::snp::Verifiable;
    (signer.1, signee.1)
        .verify()
        .map_err(|e| SevError::CertSignature {
            signer: signer.0,
            signee: signee.0,
            reason: e.to_string(),
        })
}

/// The AMD root key certificate (ARK, DER) of `generation` built into the `sev` crate.
pub fn builtin_ark_der(generation: SevGeneration) -> Vec<u8> {
    use sev::certs::snp::{Certificate, builtin};
    let pem = match generation {
        SevGeneration::Milan => builtin::milan::ARK,
        SevGeneration::Genoa => builtin::genoa::ARK,
        SevGeneration::Turin => builtin::turin::ARK,
    };
    // The built-in PEM is a constant of the `sev` crate, tested to parse
    // (`builtin_arks_parse`); an empty result matches no certificate.
    Certificate::from_pem(pem)
        .and_then(|c| c.to_der())
        .unwrap_or_default()
}

/// Which built-in AMD root (if any) has exactly this DER encoding.
fn builtin_generation(ark_der: &[u8]) -> Option<SevGeneration> {
    SevGeneration::ALL
        .into_iter()
        .find(|g| builtin_ark_der(*g) == ark_der)
}

/// Parses a VCEK TCB extension value: a DER INTEGER in 0..=255.
fn ext_u8(oid: &'static str, value: &[u8]) -> Result<u8, SevError> {
    let bad = |reason: &str| SevError::VcekExtension {
        oid,
        reason: reason.to_string(),
    };
    let [0x02, len, body @ ..] = value else {
        return Err(bad("not a DER INTEGER"));
    };
    if usize::from(*len) != body.len() || body.is_empty() {
        return Err(bad("bad INTEGER length"));
    }
    match body {
        [v] if *v < 0x80 => Ok(*v),
        [0x00, v] if *v >= 0x80 => Ok(*v),
        _ => Err(bad("INTEGER out of range 0..=255")),
    }
}

/// The TCB and hwID extensions of a VCEK certificate.
pub(crate) struct VcekFields {
    /// `fmc` is the FMC extension's value, or 0 when absent (Milan, Genoa).
    pub tcb: SevTcb,
    pub fmc: Option<u8>,
    pub hwid: Vec<u8>,
}

pub(crate) fn vcek_fields(vcek: &X509Certificate<'_>) -> Result<VcekFields, SevError> {
    let mut bl = None;
    let mut tee = None;
    let mut snp = None;
    let mut ucode = None;
    let mut fmc = None;
    let mut hwid: Option<Vec<u8>> = None;
    for ext in vcek.extensions() {
        let oid = ext.oid.to_id_string();
        let (slot, name) = match oid.as_str() {
            OID_TCB_BOOTLOADER => (&mut bl, OID_TCB_BOOTLOADER),
            OID_TCB_TEE => (&mut tee, OID_TCB_TEE),
            OID_TCB_SNP => (&mut snp, OID_TCB_SNP),
            OID_TCB_MICROCODE => (&mut ucode, OID_TCB_MICROCODE),
            OID_TCB_FMC => (&mut fmc, OID_TCB_FMC),
            OID_HWID => {
                if hwid.replace(ext.value.to_vec()).is_some() {
                    return Err(SevError::VcekExtension {
                        oid: OID_HWID,
                        reason: "duplicate extension".into(),
                    });
                }
                continue;
            }
            _ => continue,
        };
        if slot.replace(ext_u8(name, ext.value)?).is_some() {
            return Err(SevError::VcekExtension {
                oid: name,
                reason: "duplicate extension".into(),
            });
        }
    }
    let need = |v: Option<u8>, oid: &'static str| {
        v.ok_or(SevError::VcekExtension {
            oid,
            reason: "missing".into(),
        })
    };
    let hwid = hwid.ok_or(SevError::VcekExtension {
        oid: OID_HWID,
        reason: "missing".into(),
    })?;
    Ok(VcekFields {
        tcb: SevTcb {
            bootloader: need(bl, OID_TCB_BOOTLOADER)?,
            tee: need(tee, OID_TCB_TEE)?,
            snp: need(snp, OID_TCB_SNP)?,
            microcode: need(ucode, OID_TCB_MICROCODE)?,
            fmc: fmc.unwrap_or(0),
        },
        fmc,
        hwid,
    })
}

/// Converts one little-endian 72-byte signature component to a 48-byte big-endian scalar.
fn sig_component(report: &[u8], off: usize, component: &'static str) -> Result<[u8; 48], SevError> {
    let le = &report[off..off + SIG_COMPONENT_LEN];
    if le[P384_SCALAR_LEN..].iter().any(|&b| b != 0) {
        return Err(SevError::SignatureEncoding { component });
    }
    let mut be = [0u8; P384_SCALAR_LEN];
    for (d, s) in be.iter_mut().zip(le[..P384_SCALAR_LEN].iter().rev()) {
        *d = *s;
    }
    Ok(be)
}

fn compare_tcb(reported: SevTcb, vcek: SevTcb) -> Result<(), SevError> {
    for (component, r, v) in [
        ("bootloader", reported.bootloader, vcek.bootloader),
        ("tee", reported.tee, vcek.tee),
        ("snp", reported.snp, vcek.snp),
        ("microcode", reported.microcode, vcek.microcode),
    ] {
        if r != v {
            return Err(SevError::TcbMismatch {
                component,
                reported: r,
                vcek: v,
            });
        }
    }
    Ok(())
}

pub(crate) fn check_validity(
    which: &'static str,
    der: &[u8],
    now_unix: i64,
) -> Result<(), SevError> {
    let cert = parse_x509(which, der)?;
    let v = cert.validity();
    let (not_before, not_after) = (v.not_before.timestamp(), v.not_after.timestamp());
    if now_unix < not_before || now_unix > not_after {
        return Err(SevError::CertNotValidAt {
            which,
            now_unix,
            not_before,
            not_after,
        });
    }
    Ok(())
}

/// Verifies ARK → ASK → VCEK: the ARK must be one of the AMD roots built into `sev` and
/// self-signed, the ARK must sign the ASK and the ASK the VCEK, and all three must be valid at
/// `now_unix`. Returns the product generation of the matching root.
pub fn verify_vcek_chain(
    vcek_der: &[u8],
    chain_pem: &[u8],
    now_unix: i64,
) -> Result<SevGeneration, SevError> {
    verify_vcek_chain_inner(vcek_der, chain_pem, now_unix).map(|(g, _)| g)
}

/// [`verify_vcek_chain`], also returning the ASK (DER).
fn verify_vcek_chain_inner(
    vcek_der: &[u8],
    chain_pem: &[u8],
    now_unix: i64,
) -> Result<(SevGeneration, Vec<u8>), SevError> {
    let (generation, ask_der, ark_der) = split_chain(chain_pem)?;
    let ark = sev_cert("ARK", &ark_der)?;
    let ask = sev_cert("ASK", &ask_der)?;
    let vcek = sev_cert("VCEK", vcek_der)?;
    cert_verify(("ARK", &ark), ("ARK", &ark))?;
    cert_verify(("ARK", &ark), ("ASK", &ask))?;
    cert_verify(("ASK", &ask), ("VCEK", &vcek))?;
    check_validity("ARK", &ark_der, now_unix)?;
    check_validity("ASK", &ask_der, now_unix)?;
    check_validity("VCEK", vcek_der, now_unix)?;
    Ok((generation, ask_der))
}

/// Splits an ASK/ARK PEM bundle (either order) into (product of the pinned ARK, ASK DER,
/// ARK DER). The ARK must be byte-identical to one of the AMD roots built in.
pub(crate) fn split_chain(chain_pem: &[u8]) -> Result<(SevGeneration, Vec<u8>, Vec<u8>), SevError> {
    let ders = pem_certs(chain_pem)?;
    if ders.len() != 2 {
        return Err(SevError::ChainCertCount(ders.len()));
    }
    let self_issued = |der: &[u8]| -> Result<bool, SevError> {
        let c = parse_x509("chain", der)?;
        Ok(c.subject().as_raw() == c.issuer().as_raw())
    };
    let (ark_der, ask_der) = match (self_issued(&ders[0])?, self_issued(&ders[1])?) {
        (false, true) => (&ders[1], &ders[0]),
        (true, false) => (&ders[0], &ders[1]),
        _ => return Err(SevError::ChainNoArk),
    };
    let generation = builtin_generation(ark_der).ok_or(SevError::UnknownArk)?;
    Ok((generation, ask_der.clone(), ark_der.clone()))
}

/// GUIDs of the SEV-SNP extended-report certificate table (RFC 4122 byte order, as the
/// GHCB specification and the `sev` crate use them).
pub const GUID_VCEK: [u8; 16] = [
    0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
];
pub const GUID_VLEK: [u8; 16] = [
    0xa8, 0x07, 0x4b, 0xc2, 0xa2, 0x5a, 0x48, 0x3e, 0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1,
];
pub const GUID_ASK: [u8; 16] = [
    0x4a, 0xb7, 0xb3, 0x79, 0xbb, 0xac, 0x4f, 0xe4, 0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82,
];
pub const GUID_ARK: [u8; 16] = [
    0xc0, 0xb4, 0x06, 0xa4, 0xa8, 0x03, 0x49, 0x52, 0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae,
];
const CERT_TABLE_ENTRY_LEN: usize = 24;

/// The certificates found in an SEV-SNP certificate table (configfs-tsm `auxblob`, or the
/// extended report's certificate buffer). Entries with other GUIDs are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SevCertTable {
    pub vcek: Option<Vec<u8>>,
    pub vlek: Option<Vec<u8>>,
    pub ask: Option<Vec<u8>>,
    pub ark: Option<Vec<u8>>,
}

/// Parse a certificate table: entries of `{ guid: [u8; 16], offset: u32 LE, length: u32
/// LE }` ended by an all-zero GUID, offsets relative to the start of `aux`. Bounded;
/// malformed input is an error, never a panic.
pub fn parse_cert_table(aux: &[u8]) -> Result<SevCertTable, SevError> {
    let bad = |r: String| SevError::CertTable(r);
    let mut table = SevCertTable::default();
    let mut pos = 0usize;
    let mut ranges = Vec::new();
    loop {
        let entry = aux
            .get(pos..pos + CERT_TABLE_ENTRY_LEN)
            .ok_or_else(|| bad(format!("no terminating entry within {} bytes", aux.len())))?;
        pos += CERT_TABLE_ENTRY_LEN;
        let guid: [u8; 16] = entry[..16].try_into().unwrap_or_default();
        if guid == [0; 16] {
            break;
        }
        let offset = u32::from_le_bytes(entry[16..20].try_into().unwrap_or_default()) as usize;
        let len = u32::from_le_bytes(entry[20..24].try_into().unwrap_or_default()) as usize;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= aux.len() && len > 0)
            .ok_or_else(|| {
                bad(format!(
                    "entry {} at offset {offset} length {len} outside the {}-byte table",
                    ranges.len(),
                    aux.len()
                ))
            })?;
        ranges.push((guid, offset, end));
    }
    for (guid, offset, end) in ranges {
        if offset < pos {
            return Err(bad(format!(
                "certificate at offset {offset} overlaps the {pos}-byte entry list"
            )));
        }
        let slot = match guid {
            GUID_VCEK => &mut table.vcek,
            GUID_VLEK => &mut table.vlek,
            GUID_ASK => &mut table.ask,
            GUID_ARK => &mut table.ark,
            _ => continue,
        };
        if slot.is_some() {
            return Err(bad(format!("duplicate entry {}", hex::encode(guid))));
        }
        *slot = Some(aux[offset..end].to_vec());
    }
    Ok(table)
}

/// Build a certificate table (the inverse of [`parse_cert_table`]; tests, fuzz seeds).
pub fn build_cert_table(entries: &[([u8; 16], &[u8])]) -> Vec<u8> {
    let header = (entries.len() + 1) * CERT_TABLE_ENTRY_LEN;
    let mut out = Vec::new();
    let mut offset = header;
    for (guid, data) in entries {
        out.extend_from_slice(guid);
        out.extend_from_slice(&u32::try_from(offset).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_le_bytes());
        offset += data.len();
    }
    out.extend_from_slice(&[0; CERT_TABLE_ENTRY_LEN]);
    for (_, data) in entries {
        out.extend_from_slice(data);
    }
    out
}

/// The ASK/ARK chain (PEM) built into the `sev` crate that signs `vcek_der`, for hosts
/// whose certificate table carries only the VCEK.
pub fn builtin_chain_for(vcek_der: &[u8]) -> Option<Vec<u8>> {
    use sev::certs::snp::builtin;
    let vcek = parse_x509("VCEK", vcek_der).ok()?;
    let at = vcek.validity().not_before.timestamp().saturating_add(1);
    [
        (builtin::milan::ASK, builtin::milan::ARK),
        (builtin::genoa::ASK, builtin::genoa::ARK),
        (builtin::turin::ASK, builtin::turin::ARK),
    ]
    .into_iter()
    .map(|(ask, ark)| [ask, b"\n", ark].concat())
    .find(|chain| verify_vcek_chain(vcek_der, chain, at).is_ok())
}

/// The earliest `notAfter` (Unix seconds) of the VCEK and the ASK/ARK chain: verified
/// SEV-SNP facts must not outlive the certificates that established them.
pub fn certs_not_after(vcek_der: &[u8], chain_pem: &[u8]) -> Result<u64, SevError> {
    let mut earliest = i64::MAX;
    let vcek = parse_x509("VCEK", vcek_der)?;
    earliest = earliest.min(vcek.validity().not_after.timestamp());
    for der in pem_certs(chain_pem)? {
        let c = parse_x509("chain", &der)?;
        earliest = earliest.min(c.validity().not_after.timestamp());
    }
    Ok(u64::try_from(earliest).unwrap_or(0))
}

/// [`verify_report_at`] at the current system time.
pub fn verify_report(
    report: &[u8],
    vcek_der: &[u8],
    chain_pem: &[u8],
    policy: &SevPolicy,
) -> Result<SevReportInfo, SevError> {
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    verify_report_at(report, vcek_der, chain_pem, policy, now_unix)
}

/// Verifies an SEV-SNP report end to end and returns its fields.
///
/// * `report`: raw report bytes ([`REPORT_LEN`]);
/// * `vcek_der`: the VCEK certificate (DER), as served by AMD KDS or the host's extended report;
/// * `chain_pem`: the ASK and ARK certificates (PEM, either order; KDS `cert_chain` serves ASK
///   then ARK). The ARK must be byte-identical to one of the AMD roots built into `sev`.
/// * `now_unix`: the time (Unix seconds) at which all three certificates must be valid.
pub fn verify_report_at(
    report: &[u8],
    vcek_der: &[u8],
    chain_pem: &[u8],
    policy: &SevPolicy,
    now_unix: i64,
) -> Result<SevReportInfo, SevError> {
    verify_report_full_at(report, vcek_der, chain_pem, policy, now_unix).map(|v| v.info)
}

/// A report that passed [`verify_report_full_at`], with what revocation checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SevVerified {
    pub info: SevReportInfo,
    /// The product of the pinned AMD root that signed the chain.
    pub generation: SevGeneration,
    /// Serial numbers as unsigned big-endian bytes without leading zeros (`[0]` for 0).
    pub ask_serial: Vec<u8>,
    pub vcek_serial: Vec<u8>,
    /// The ASK's issuer name (DER): the ARK's subject, which must also issue the CRL.
    pub ask_issuer: Vec<u8>,
}

/// [`verify_report_at`], also returning the product and the serials of the ASK and VCEK
/// (for the CRL check in [`crate::kds::check_revocation`]).
pub fn verify_report_full_at(
    report: &[u8],
    vcek_der: &[u8],
    chain_pem: &[u8],
    policy: &SevPolicy,
    now_unix: i64,
) -> Result<SevVerified, SevError> {
    let parsed = parse_inner(report)?;

    let sig_algo = read_u32(report, OFF_SIG_ALGO);
    if sig_algo != SIG_ALGO_ECDSA_P384_SHA384 {
        return Err(SevError::UnsupportedSignatureAlgorithm(sig_algo));
    }
    let key_info = read_u32(report, OFF_KEY_INFO);
    if key_info & 0b10 != 0 {
        return Err(SevError::ChipIdMasked);
    }
    let signing_key = (key_info >> 2) & 0b111;
    if signing_key != 0 {
        return Err(SevError::SigningKeyNotVcek(signing_key));
    }

    let (generation, ask_der) = verify_vcek_chain_inner(vcek_der, chain_pem, now_unix)?;

    // Report signature over the raw signed bytes.
    let r = sig_component(report, OFF_SIG_R, "r")?;
    let s = sig_component(report, OFF_SIG_S, "s")?;
    let mut sig = [0u8; 2 * P384_SCALAR_LEN];
    sig[..P384_SCALAR_LEN].copy_from_slice(&r);
    sig[P384_SCALAR_LEN..].copy_from_slice(&s);
    let vcek_x509 = parse_x509("VCEK", vcek_der)?;
    let point = vcek_x509.public_key().subject_public_key.data.as_ref();
    if point.len() != 97 || point[0] != 0x04 {
        return Err(SevError::VcekKey(format!(
            "expected a 97-byte uncompressed point, got {} bytes",
            point.len()
        )));
    }
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_FIXED, point)
        .verify(&report[..SIGNED_LEN], &sig)
        .map_err(|_| SevError::ReportSignature)?;

    // Bindings the `sev` crate leaves to us.
    // The TCB layout follows the product of the pinned root, not the report's own hints.
    let turin = generation == SevGeneration::Turin;
    let mut info = parsed.info;
    let reported_tcb = decode_tcb(parsed.raw_tcb, turin);
    info.reported_tcb = reported_tcb;
    let fields = vcek_fields(&vcek_x509)?;
    compare_tcb(reported_tcb, fields.tcb)?;
    if turin {
        let vcek_fmc = fields.fmc.ok_or(SevError::VcekExtension {
            oid: OID_TCB_FMC,
            reason: "missing on a Turin VCEK".into(),
        })?;
        if reported_tcb.fmc != vcek_fmc {
            return Err(SevError::TcbMismatch {
                component: "fmc",
                reported: reported_tcb.fmc,
                vcek: vcek_fmc,
            });
        }
    }
    // Milan/Genoa hwID is the full 64-byte chip id; Turin's is 8 bytes with the rest zero.
    let hwid = &fields.hwid;
    let chip_ok = !hwid.is_empty()
        && hwid.len() <= info.chip_id.len()
        && info.chip_id[..hwid.len()] == hwid[..]
        && info.chip_id[hwid.len()..].iter().all(|&b| b == 0);
    if !chip_ok {
        return Err(SevError::ChipIdMismatch {
            report: hex::encode(info.chip_id),
            vcek: hex::encode(hwid),
        });
    }

    check_policy(&info, policy, generation)?;
    let ask = parse_x509("ASK", &ask_der)?;
    Ok(SevVerified {
        info,
        generation,
        ask_serial: normalize_serial(ask.raw_serial()),
        vcek_serial: normalize_serial(vcek_x509.raw_serial()),
        ask_issuer: ask.issuer().as_raw().to_vec(),
    })
}

/// A DER INTEGER's content bytes as an unsigned big-endian number without leading zeros
/// (`[0]` for zero), so serials compare as numbers.
pub(crate) fn normalize_serial(raw: &[u8]) -> Vec<u8> {
    match raw.iter().position(|&b| b != 0) {
        Some(i) => raw[i..].to_vec(),
        None => vec![0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../testvectors/attest/sev/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
    }

    /// 2026-01-01T00:00:00Z: all test certificates are valid then.
    const JAN_2026: i64 = 1_767_225_600;

    fn verify_at_2026(
        report: &[u8],
        vcek_der: &[u8],
        chain_pem: &[u8],
        policy: &SevPolicy,
    ) -> Result<SevReportInfo, SevError> {
        verify_report_at(report, vcek_der, chain_pem, policy, JAN_2026)
    }

    #[test]
    fn certificate_validity_enforced() {
        let report = milan_report();
        let (vcek, chain) = (vector("vcek_milan.der"), vector("cert_chain_milan"));
        let policy = SevPolicy::default();
        // Milan VCEK: 2023-04-03 .. 2030-04-03; ARK: 2020-10-22 .. 2045-10-22.
        let err = verify_report_at(&report, &vcek, &chain, &policy, 1_950_000_000).unwrap_err();
        assert!(
            matches!(err, SevError::CertNotValidAt { which: "VCEK", .. }),
            "{err}"
        );
        let err = verify_report_at(&report, &vcek, &chain, &policy, 1_500_000_000).unwrap_err();
        assert!(
            matches!(err, SevError::CertNotValidAt { which: "ARK", .. }),
            "{err}"
        );
        // System clock: valid until the VCEK expires in 2030.
        match verify_report(&report, &vcek, &chain, &lenient()) {
            Ok(_) | Err(SevError::CertNotValidAt { .. }) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }

    fn milan_report() -> Vec<u8> {
        decode_report_hex(&vector("report_milan.hex")).unwrap()
    }

    /// The public sample report is from 2022 (bootloader 3, tee 0, snp 8, microcode 115),
    /// far below AMD's current floors ([`SevMinTcb::AMD_BULLETINS`] refuses it, see
    /// `default_floor_refuses_the_2022_sample`): tests of the other checks drop the floor.
    fn lenient() -> SevPolicy {
        SevPolicy {
            min_tcb: SevMinTcb::NONE,
            ..SevPolicy::default()
        }
    }

    fn verify_milan(report: &[u8], policy: &SevPolicy) -> Result<SevReportInfo, SevError> {
        verify_at_2026(
            report,
            &vector("vcek_milan.der"),
            &vector("cert_chain_milan"),
            policy,
        )
    }

    #[test]
    fn milan_report_verifies() {
        let report = milan_report();
        assert_eq!(report.len(), REPORT_LEN);
        let info = verify_milan(&report, &lenient()).expect("Milan report verifies");
        assert_eq!(info.version, 2);
        assert_eq!(&info.measurement[..4], &[0x7a, 0x1e, 0x5c, 0x26]);
        assert_eq!(
            info.reported_tcb,
            SevTcb {
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 115,
                fmc: 0,
            }
        );
        assert!(!info.debug_allowed);
        assert!(!info.migrate_ma_allowed);
        assert_eq!(info, parse_report(&report).unwrap());
        assert_eq!(info, parse_report_hex(&vector("report_milan.hex")).unwrap());
        let mut h = Sha256::new();
        h.update(info.measurement);
        h.update(info.host_data);
        assert_eq!(image_hash(&info), <[u8; 32]>::from(h.finalize()));
    }

    #[test]
    fn flipped_report_data_rejected() {
        let mut report = milan_report();
        report[OFF_REPORT_DATA] ^= 1;
        assert!(matches!(
            verify_milan(&report, &lenient()),
            Err(SevError::ReportSignature)
        ));
    }

    #[test]
    fn flipped_signature_rejected() {
        let mut report = milan_report();
        report[OFF_SIG_R + 5] ^= 0x10;
        assert!(matches!(
            verify_milan(&report, &lenient()),
            Err(SevError::ReportSignature)
        ));
        let mut report = milan_report();
        report[OFF_SIG_S] ^= 1;
        assert!(matches!(
            verify_milan(&report, &lenient()),
            Err(SevError::ReportSignature)
        ));
        // High (unused) bytes of r must be zero.
        let mut report = milan_report();
        report[OFF_SIG_R + 60] ^= 1;
        assert!(matches!(
            verify_milan(&report, &lenient()),
            Err(SevError::SignatureEncoding { component: "r" })
        ));
    }

    #[test]
    fn milan_report_with_turin_certs_rejected() {
        let report = milan_report();
        let err = verify_at_2026(
            &report,
            &vector("vcek_turin.der"),
            &vector("cert_chain_turin"),
            &lenient(),
        )
        .unwrap_err();
        assert!(matches!(err, SevError::ReportSignature), "{err}");
        // Milan VCEK under the Turin chain: the Turin ASK did not sign it.
        let err = verify_at_2026(
            &report,
            &vector("vcek_milan.der"),
            &vector("cert_chain_turin"),
            &lenient(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                SevError::CertSignature {
                    signer: "ASK",
                    signee: "VCEK",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn turin_chain_is_pinned_and_valid() {
        let ders = pem_certs(&vector("cert_chain_turin")).unwrap();
        assert_eq!(ders.len(), 2);
        assert_eq!(builtin_generation(&ders[1]), Some(SevGeneration::Turin));
        let ders = pem_certs(&vector("cert_chain_milan")).unwrap();
        assert_eq!(builtin_generation(&ders[1]), Some(SevGeneration::Milan));
        let vcek = vector("vcek_turin.der");
        let f = vcek_fields(&parse_x509("VCEK", &vcek).unwrap()).unwrap();
        assert_eq!(f.hwid.len(), 8);
        assert_eq!(f.tcb.microcode, 9);
        assert_eq!(f.fmc, Some(0));
    }

    #[test]
    fn turin_vcek_chain_verifies() {
        let g = verify_vcek_chain(
            &vector("vcek_turin.der"),
            &vector("cert_chain_turin"),
            JAN_2026,
        )
        .unwrap();
        assert_eq!(g, SevGeneration::Turin);
        let g = verify_vcek_chain(
            &vector("vcek_milan.der"),
            &vector("cert_chain_milan"),
            JAN_2026,
        )
        .unwrap();
        assert_eq!(g, SevGeneration::Milan);
        assert!(matches!(
            verify_vcek_chain(
                &vector("vcek_turin.der"),
                &vector("cert_chain_milan"),
                JAN_2026
            ),
            Err(SevError::CertSignature {
                signer: "ASK",
                signee: "VCEK",
                ..
            })
        ));
    }

    #[test]
    fn truncated_certs_never_panic() {
        let report = milan_report();
        let (vcek, chain) = (vector("vcek_milan.der"), vector("cert_chain_milan"));
        for n in (0..vcek.len()).step_by(7) {
            assert!(verify_at_2026(&report, &vcek[..n], &chain, &lenient()).is_err());
        }
        // x509-parser's PEM reader tolerates a cut inside the final END line, so only prefixes
        // that end before it must fail; none may panic.
        let last_end = chain.len() - b"-----END CERTIFICATE-----\n".len();
        for n in (0..chain.len()).step_by(37) {
            let r = verify_at_2026(&report, &vcek, &chain[..n], &lenient());
            assert!(n >= last_end || r.is_err(), "prefix {n} accepted");
        }
    }

    #[test]
    fn self_made_or_broken_chain_rejected() {
        let report = milan_report();
        let chain = vector("cert_chain_milan");
        let ders = pem_certs(&chain).unwrap();
        // ASK alone / ARK twice.
        let only_ask = pem_encode(&[&ders[0]]);
        assert!(matches!(
            verify_milan_chain(&report, &only_ask),
            Err(SevError::ChainCertCount(1))
        ));
        let two_arks = pem_encode(&[&ders[1], &ders[1]]);
        assert!(matches!(
            verify_milan_chain(&report, &two_arks),
            Err(SevError::ChainNoArk)
        ));
        // ARK with one byte changed in its signature: not a built-in root.
        let mut fake_ark = ders[1].clone();
        let n = fake_ark.len();
        fake_ark[n - 10] ^= 1;
        let fake = pem_encode(&[&ders[0], &fake_ark]);
        assert!(matches!(
            verify_milan_chain(&report, &fake),
            Err(SevError::UnknownArk)
        ));
        // ARK first also accepted.
        let swapped = pem_encode(&[&ders[1], &ders[0]]);
        verify_milan_chain(&report, &swapped).unwrap();
        assert!(matches!(
            verify_milan_chain(&report, b"garbage"),
            Err(SevError::ChainCertCount(0)) | Err(SevError::ChainPem(_))
        ));
    }

    fn verify_milan_chain(report: &[u8], chain: &[u8]) -> Result<SevReportInfo, SevError> {
        verify_at_2026(report, &vector("vcek_milan.der"), chain, &lenient())
    }

    fn pem_encode(ders: &[&Vec<u8>]) -> Vec<u8> {
        use std::fmt::Write;
        const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for der in ders {
            let mut b64 = String::new();
            for chunk in der.chunks(3) {
                let v = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |a, (i, &b)| a | (u32::from(b) << (16 - 8 * i)));
                for i in 0..4 {
                    if i <= chunk.len() {
                        b64.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
                    } else {
                        b64.push('=');
                    }
                }
            }
            writeln!(out, "-----BEGIN CERTIFICATE-----").unwrap();
            for line in b64.as_bytes().chunks(64) {
                writeln!(out, "{}", std::str::from_utf8(line).unwrap()).unwrap();
            }
            writeln!(out, "-----END CERTIFICATE-----").unwrap();
        }
        out.into_bytes()
    }

    #[test]
    fn wrong_vcek_bytes_rejected() {
        let report = milan_report();
        let mut vcek = vector("vcek_milan.der");
        let n = vcek.len();
        vcek[n - 5] ^= 1; // inside the ASK's signature over the VCEK
        let err =
            verify_at_2026(&report, &vcek, &vector("cert_chain_milan"), &lenient()).unwrap_err();
        assert!(
            matches!(err, SevError::CertSignature { signee: "VCEK", .. }),
            "{err}"
        );
        assert!(matches!(
            verify_at_2026(&report, b"junk", &vector("cert_chain_milan"), &lenient()),
            Err(SevError::CertParse { which: "VCEK", .. })
        ));
    }

    #[test]
    fn min_tcb_above_reported_rejected() {
        let report = milan_report();
        for (component, min_tcb) in [
            (
                "bootloader",
                SevTcb {
                    bootloader: 4,
                    ..SevTcb::default()
                },
            ),
            (
                "tee",
                SevTcb {
                    tee: 1,
                    ..SevTcb::default()
                },
            ),
            (
                "snp",
                SevTcb {
                    snp: 9,
                    ..SevTcb::default()
                },
            ),
            (
                "microcode",
                SevTcb {
                    microcode: 116,
                    ..SevTcb::default()
                },
            ),
        ] {
            let policy = SevPolicy {
                min_tcb: SevMinTcb::uniform(min_tcb),
                ..SevPolicy::default()
            };
            let err = verify_milan(&report, &policy).unwrap_err();
            assert!(
                matches!(err, SevError::TcbTooLow { component: c, .. } if c == component),
                "{err}"
            );
            assert!(err.to_string().contains(component));
        }
        let exact = SevPolicy {
            min_tcb: SevMinTcb::uniform(SevTcb {
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 115,
                // No FMC on Milan: a floor here does not apply to it.
                fmc: 9,
            }),
            ..SevPolicy::default()
        };
        verify_milan(&report, &exact).unwrap();
        // Only the Milan floor applies to a Milan report.
        let other_products = SevPolicy {
            min_tcb: SevMinTcb {
                milan: SevTcb::default(),
                ..SevMinTcb::uniform(SevTcb {
                    microcode: 255,
                    ..SevTcb::default()
                })
            },
            ..SevPolicy::default()
        };
        verify_milan(&report, &other_products).unwrap();
    }

    #[test]
    fn default_floor_refuses_the_2022_sample() {
        // The sample (snp 8, microcode 115) predates AMD-SB-3019 (snp 22, microcode 219):
        // the default policy refuses it, naming the product and the first low component.
        let err = verify_milan(&milan_report(), &SevPolicy::default()).unwrap_err();
        assert!(
            matches!(
                err,
                SevError::TcbTooLow {
                    product: SevGeneration::Milan,
                    component: "snp",
                    reported: 8,
                    min: 22
                }
            ),
            "{err}"
        );
        // A report at the floor passes the TCB check; one microcode step below does not.
        let mut info = parse_report(&milan_report()).unwrap();
        info.reported_tcb = SevMinTcb::AMD_BULLETINS.milan;
        check_policy(&info, &SevPolicy::default(), SevGeneration::Milan).unwrap();
        info.reported_tcb.microcode -= 1;
        assert!(matches!(
            check_policy(&info, &SevPolicy::default(), SevGeneration::Milan),
            Err(SevError::TcbTooLow {
                component: "microcode",
                ..
            })
        ));
    }

    #[test]
    fn turin_tcb_layout_and_fmc_floor() {
        // Turin TCB_VERSION: [fmc, bl, tee, snp, 0, 0, 0, ucode]; Milan/Genoa:
        // [bl, tee, 0, 0, 0, 0, snp, ucode].
        let raw = [2, 3, 1, 5, 0, 0, 0, 0x61];
        let turin = decode_tcb(raw, true);
        assert_eq!(
            turin,
            SevTcb {
                fmc: 2,
                bootloader: 3,
                tee: 1,
                snp: 5,
                microcode: 0x61
            }
        );
        let milan = decode_tcb([3, 0, 0, 0, 0, 0, 8, 115], false);
        assert_eq!((milan.bootloader, milan.snp, milan.fmc), (3, 8, 0));

        // The default Turin floor (snp 4, microcode 0x51) accepts this TCB; an FMC floor
        // above the reported FMC refuses it, on Turin only.
        let mut info = parse_report(&milan_report()).unwrap();
        info.reported_tcb = turin;
        check_policy(&info, &SevPolicy::default(), SevGeneration::Turin).unwrap();
        let fmc3 = SevPolicy {
            min_tcb: SevMinTcb {
                turin: SevTcb {
                    fmc: 3,
                    ..SevMinTcb::AMD_BULLETINS.turin
                },
                ..SevMinTcb::AMD_BULLETINS
            },
            ..SevPolicy::default()
        };
        assert!(matches!(
            check_policy(&info, &fmc3, SevGeneration::Turin),
            Err(SevError::TcbTooLow {
                product: SevGeneration::Turin,
                component: "fmc",
                reported: 2,
                min: 3
            })
        ));
        // Below the Turin microcode floor of AMD-SB-3027.
        info.reported_tcb.microcode = 0x50;
        assert!(matches!(
            check_policy(&info, &SevPolicy::default(), SevGeneration::Turin),
            Err(SevError::TcbTooLow {
                component: "microcode",
                ..
            })
        ));
        // The real Turin VCEK's TCB extensions carry the FMC (0 here) and decode with it.
        let vcek = vector("vcek_turin.der");
        let f = vcek_fields(&parse_x509("VCEK", &vcek).unwrap()).unwrap();
        assert_eq!((f.fmc, f.tcb.fmc), (Some(0), 0));
    }

    #[test]
    fn policy_checks_on_parsed_values() {
        let base = parse_report(&milan_report()).unwrap();
        let policy = lenient();
        let m = SevGeneration::Milan;
        check_policy(&base, &policy, m).unwrap();

        let debug = SevReportInfo {
            debug_allowed: true,
            ..base.clone()
        };
        assert!(matches!(
            check_policy(&debug, &policy, m),
            Err(SevError::DebugAllowed)
        ));
        check_policy(
            &debug,
            &SevPolicy {
                allow_debug: true,
                ..policy
            },
            m,
        )
        .unwrap();

        let ma = SevReportInfo {
            migrate_ma_allowed: true,
            ..base.clone()
        };
        assert!(matches!(
            check_policy(&ma, &policy, m),
            Err(SevError::MigrationAgentAllowed)
        ));
        check_policy(
            &ma,
            &SevPolicy {
                allow_migration_agent: true,
                ..policy
            },
            m,
        )
        .unwrap();

        let vmpl2 = SevReportInfo {
            vmpl: 2,
            ..base.clone()
        };
        assert!(matches!(
            check_policy(&vmpl2, &policy, m),
            Err(SevError::VmplNotZero(2))
        ));
        check_policy(
            &vmpl2,
            &SevPolicy {
                require_vmpl0: false,
                ..policy
            },
            m,
        )
        .unwrap();

        // Policy bits as parsed from the raw report.
        let mut raw = milan_report();
        raw[OFF_POLICY + 2] |= 1 << 3; // bit 19: debug
        assert!(parse_report(&raw).unwrap().debug_allowed);
        let mut raw = milan_report();
        raw[OFF_POLICY + 2] |= 1 << 2; // bit 18: migration agent
        assert!(parse_report(&raw).unwrap().migrate_ma_allowed);
        // And the signature then no longer verifies.
        assert!(matches!(
            verify_milan(&raw, &lenient()),
            Err(SevError::ReportSignature)
        ));
    }

    #[test]
    fn tcb_mismatch_with_vcek_detected() {
        let vcek = SevTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: 0,
        };
        compare_tcb(vcek, vcek).unwrap();
        let err = compare_tcb(SevTcb { snp: 7, ..vcek }, vcek).unwrap_err();
        assert!(matches!(
            err,
            SevError::TcbMismatch {
                component: "snp",
                reported: 7,
                vcek: 8
            }
        ));
    }

    #[test]
    fn ext_integer_parsing() {
        assert_eq!(ext_u8("x", &[0x02, 0x01, 0x73]).unwrap(), 115);
        assert_eq!(ext_u8("x", &[0x02, 0x02, 0x00, 0xd5]).unwrap(), 0xd5);
        assert!(ext_u8("x", &[0x02, 0x01, 0x80]).is_err());
        assert!(ext_u8("x", &[0x02, 0x02, 0x01, 0x00]).is_err());
        assert!(ext_u8("x", &[0x04, 0x01, 0x01]).is_err());
        assert!(ext_u8("x", &[0x02, 0x05, 0x01]).is_err());
        assert!(ext_u8("x", &[]).is_err());
    }

    #[test]
    fn parse_never_panics_on_prefixes_and_garbage() {
        let report = milan_report();
        for n in 0..report.len() {
            assert!(matches!(
                parse_report(&report[..n]),
                Err(SevError::ReportLength { .. })
            ));
        }
        let mut longer = report.clone();
        longer.push(0);
        assert!(parse_report(&longer).is_err());
        // Deterministic pseudo-random garbage of the right length.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..64 {
            let buf: Vec<u8> = (0..REPORT_LEN)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = parse_report(&buf);
            let _ = verify_milan(&buf, &lenient());
        }
        assert!(matches!(
            parse_report(&[0u8; REPORT_LEN]),
            Err(SevError::UnsupportedVersion(0))
        ));
        assert!(parse_report_hex(b"zz").is_err());
        assert!(parse_report_hex(b"abc").is_err());
        for n in [0, 1, 100, REPORT_LEN] {
            let _ = verify_milan(&report[..n], &lenient());
        }
    }
}
