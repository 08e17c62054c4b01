//! End-to-end verification of an SEV-SNP report: its signature by the VCEK, the VCEK's chain
//! to a pinned AMD root, the bindings between report and VCEK, and the policy.

use super::certs::{
    OID_TCB_FMC, normalize_serial, parse_x509, vcek_fields, verify_vcek_chain_inner,
};
use super::report::{
    OFF_KEY_INFO, OFF_SIG_ALGO, OFF_SIG_R, OFF_SIG_S, P384_SCALAR_LEN, SIG_ALGO_ECDSA_P384_SHA384,
    SIG_COMPONENT_LEN, SIGNED_LEN, decode_tcb, parse_inner, read_u32,
};
use super::{SevError, SevGeneration, SevPolicy, SevReportInfo, SevTcb, check_policy};

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
    /// The report's fields.
    pub info: SevReportInfo,
    /// The product of the pinned AMD root that signed the chain.
    pub generation: SevGeneration,
    /// Serial numbers as unsigned big-endian bytes without leading zeros (`[0]` for 0).
    pub ask_serial: Vec<u8>,
    /// The VCEK's serial number.
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

pub(super) fn compare_tcb(reported: SevTcb, vcek: SevTcb) -> Result<(), SevError> {
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
