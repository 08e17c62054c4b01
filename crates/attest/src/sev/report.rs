//! The SEV-SNP `ATTESTATION_REPORT` (0x4A0 bytes): its layout and the fields Cocoon uses.
//! Parsing checks no signature and never panics.

use sha2::{Digest, Sha256};

use super::{SevError, SevTcb};

/// Size in bytes of an SEV-SNP attestation report (`ATTESTATION_REPORT`, 0x4A0).
pub const REPORT_LEN: usize = 0x4A0;

/// Bytes covered by the report signature (`0x000..0x2A0`).
pub(super) const SIGNED_LEN: usize = 0x2A0;

pub(super) const OFF_VERSION: usize = 0x00;
pub(super) const OFF_POLICY: usize = 0x08;
pub(super) const OFF_VMPL: usize = 0x30;
pub(super) const OFF_SIG_ALGO: usize = 0x34;
pub(super) const OFF_KEY_INFO: usize = 0x48;
pub(super) const OFF_REPORT_DATA: usize = 0x50;
pub(super) const OFF_MEASUREMENT: usize = 0x90;
pub(super) const OFF_HOST_DATA: usize = 0xC0;
pub(crate) const OFF_REPORTED_TCB: usize = 0x180;
pub(super) const OFF_CPUID_FAM: usize = 0x188;
pub(super) const OFF_CHIP_ID: usize = 0x1A0;
pub(super) const OFF_SIG_R: usize = 0x2A0;
pub(super) const OFF_SIG_S: usize = 0x2E8;
/// r and s are stored little-endian in 72-byte fields; P-384 scalars use the low 48.
pub(super) const SIG_COMPONENT_LEN: usize = 72;
pub(super) const P384_SCALAR_LEN: usize = 48;

/// `SIGNATURE_ALGO` value for ECDSA P-384 with SHA-384.
pub(super) const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// Guest policy bits.
const POLICY_MIGRATE_MA: u64 = 1 << 18;
const POLICY_DEBUG: u64 = 1 << 19;

/// The fields of an SEV-SNP attestation report that Cocoon uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SevReportInfo {
    /// Report format version.
    pub version: u32,
    /// Launch measurement.
    pub measurement: [u8; 48],
    /// Data the host supplied at launch.
    pub host_data: [u8; 32],
    /// Data the guest supplied with the request.
    pub report_data: [u8; 64],
    /// The chip's unique id.
    pub chip_id: [u8; 64],
    /// TCB the report claims the platform runs.
    pub reported_tcb: SevTcb,
    /// VMPL the request came from.
    pub vmpl: u32,
    /// Guest policy bit 19: debugging allowed.
    pub debug_allowed: bool,
    /// Guest policy bit 18: a migration agent allowed.
    pub migrate_ma_allowed: bool,
}

pub(super) fn read_u32(b: &[u8], off: usize) -> u32 {
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

pub(super) struct ParsedReport {
    pub(super) info: SevReportInfo,
    pub(super) raw_tcb: [u8; 8],
}

pub(super) fn parse_inner(report: &[u8]) -> Result<ParsedReport, SevError> {
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
