//! SEV-SNP certificates: the AMD roots built into the `sev` crate, the ASK/ARK chain, the
//! VCEK's TCB and hwID extensions, validity windows and serials.

use x509_parser::prelude::{FromDer, X509Certificate};

use super::{SevError, SevGeneration, SevTcb};

const OID_TCB_BOOTLOADER: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TCB_TEE: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_TCB_SNP: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_TCB_MICROCODE: &str = "1.3.6.1.4.1.3704.1.3.8";
pub(super) const OID_TCB_FMC: &str = "1.3.6.1.4.1.3704.1.3.9";
const OID_HWID: &str = "1.3.6.1.4.1.3704.1.4";

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
pub(super) fn builtin_generation(ark_der: &[u8]) -> Option<SevGeneration> {
    SevGeneration::ALL
        .into_iter()
        .find(|g| builtin_ark_der(*g) == ark_der)
}

/// Parses a VCEK TCB extension value: a DER INTEGER in 0..=255.
pub(super) fn ext_u8(oid: &'static str, value: &[u8]) -> Result<u8, SevError> {
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
pub(super) fn verify_vcek_chain_inner(
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

/// A DER INTEGER's content bytes as an unsigned big-endian number without leading zeros
/// (`[0]` for zero), so serials compare as numbers.
pub(crate) fn normalize_serial(raw: &[u8]) -> Vec<u8> {
    match raw.iter().position(|&b| b != 0) {
        Some(i) => raw[i..].to_vec(),
        None => vec![0],
    }
}
