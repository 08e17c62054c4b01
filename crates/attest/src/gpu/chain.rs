//! The GPU's certificate chain (PEM, leaf first) up to a pinned NVIDIA root.

use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::GpuError;

/// Largest chain file accepted.
pub const MAX_CHAIN_LEN: usize = 64 * 1024;
/// Most certificates accepted in a chain.
pub const MAX_CHAIN_CERTS: usize = 8;
const OID_ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
const OIDS_DICE_FWID: [&str; 2] = ["2.23.133.5.4.1", "2.23.133.5.4.1.1"];
const FWID_LEN: usize = 48;
/// DER of the AlgorithmIdentifier ecdsa-with-SHA384 (no parameters).
const ALGID_ECDSA_SHA384: [u8; 12] = [
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
];

/// What the chain yields once verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    /// The leaf's public key, an uncompressed P-384 point.
    pub leaf_key: Vec<u8>,
    /// Each certificate's subject, leaf first.
    pub subjects: Vec<String>,
    /// Each certificate's serial (big-endian bytes), leaf first.
    pub serials: Vec<Vec<u8>>,
    /// The firmware id the leaf carries: the 48-byte digest that ends its TCG DICE
    /// extension (`2.23.133.5.4.1` or `.1.1`), when it has one.
    pub leaf_fwid: Option<Vec<u8>>,
}

/// Splits a PEM bundle into DER certificates.
pub fn pem_certs(pem: &[u8]) -> Result<Vec<Vec<u8>>, GpuError> {
    if pem.len() > MAX_CHAIN_LEN {
        return Err(GpuError::ChainParse(format!(
            "chain of {} bytes is larger than the {MAX_CHAIN_LEN}-byte limit",
            pem.len()
        )));
    }
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| GpuError::ChainParse(e.to_string()))?;
        if block.label != "CERTIFICATE" {
            return Err(GpuError::ChainParse(format!(
                "unexpected PEM block {:?}",
                block.label
            )));
        }
        out.push(block.contents);
        if out.len() > MAX_CHAIN_CERTS {
            return Err(GpuError::ChainParse(format!(
                "more than {MAX_CHAIN_CERTS} certificates"
            )));
        }
    }
    if out.is_empty() {
        return Err(GpuError::ChainParse("no certificate".into()));
    }
    Ok(out)
}

fn parse(position: usize, der: &[u8]) -> Result<X509Certificate<'_>, GpuError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(GpuError::ChainParse(format!(
            "certificate {position}: trailing bytes"
        ))),
        Err(e) => Err(GpuError::ChainParse(format!("certificate {position}: {e}"))),
    }
}

/// Verifies the chain: its last certificate is the root pinned by `root_sha256` (SHA-256 of
/// its DER), each certificate is signed by the next with ECDSA P-384/SHA-384, every issuer
/// is a CA by its basic constraints, every certificate is valid at `now` (Unix seconds), and
/// no serial is in `revoked_serials`.
pub fn verify(
    pem: &[u8],
    root_sha256: &[u8; 32],
    revoked_serials: &[Vec<u8>],
    now: u64,
) -> Result<VerifiedChain, GpuError> {
    verify_ders(&pem_certs(pem)?, root_sha256, revoked_serials, now)
}

/// [`verify`] on DER certificates, leaf first.
pub fn verify_ders(
    ders: &[Vec<u8>],
    root_sha256: &[u8; 32],
    revoked_serials: &[Vec<u8>],
    now: u64,
) -> Result<VerifiedChain, GpuError> {
    if ders.is_empty() || ders.len() > MAX_CHAIN_CERTS {
        return Err(GpuError::ChainParse(format!(
            "{} certificates (1 to {MAX_CHAIN_CERTS})",
            ders.len()
        )));
    }
    let root_der = ders
        .last()
        .ok_or_else(|| GpuError::ChainParse("empty".into()))?;
    let got: [u8; 32] = Sha256::digest(root_der).into();
    if &got != root_sha256 {
        return Err(GpuError::UnpinnedRoot {
            sha256: hex::encode(got),
        });
    }
    let certs = ders
        .iter()
        .enumerate()
        .map(|(i, d)| parse(i, d))
        .collect::<Result<Vec<_>, _>>()?;
    let now_i = i64::try_from(now).unwrap_or(i64::MAX);
    let mut subjects = Vec::with_capacity(certs.len());
    let mut serials = Vec::with_capacity(certs.len());
    for (i, cert) in certs.iter().enumerate() {
        let subject = cert.subject().to_string();
        let nb = cert.validity().not_before.timestamp();
        let na = cert.validity().not_after.timestamp();
        if now_i < nb || now_i > na {
            return Err(GpuError::CertExpired {
                position: i,
                subject,
            });
        }
        let serial = cert.raw_serial().to_vec();
        if revoked_serials.iter().any(|s| strip(s) == strip(&serial)) {
            return Err(GpuError::CertRevoked {
                position: i,
                serial: hex::encode(&serial),
            });
        }
        // The issuer is the next certificate; the root issues itself.
        let issuer = certs.get(i + 1).unwrap_or(cert);
        if issuer.subject().as_raw() != cert.issuer().as_raw() {
            return Err(GpuError::ChainBroken {
                position: i,
                reason: "issuer name is not the next certificate's subject".into(),
            });
        }
        let is_ca = matches!(issuer.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(GpuError::ChainBroken {
                position: i,
                reason: "issuer is not a CA".into(),
            });
        }
        if cert.signature_algorithm.algorithm.to_id_string() != OID_ECDSA_SHA384
            || cert.tbs_certificate.signature.algorithm.to_id_string() != OID_ECDSA_SHA384
            || !outer_algid_exact(ders.get(i).map(Vec::as_slice).unwrap_or_default(), cert)
        {
            return Err(GpuError::ChainBroken {
                position: i,
                reason: "signature is not ecdsa-with-SHA384".into(),
            });
        }
        // The parser ignores a BIT STRING's unused-bits count; a signature or key is whole bytes.
        if cert.signature_value.unused_bits != 0
            || issuer.public_key().subject_public_key.unused_bits != 0
        {
            return Err(GpuError::ChainBroken {
                position: i,
                reason: "signature or key is not a whole number of bytes".into(),
            });
        }
        let key = &issuer.public_key().subject_public_key.data;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_ASN1, key)
            .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
            .map_err(|_| GpuError::ChainBroken {
                position: i,
                reason: "signature does not verify".into(),
            })?;
        subjects.push(subject);
        serials.push(serial);
    }
    let leaf_key = certs
        .first()
        .map(|c| c.public_key().subject_public_key.data.to_vec())
        .unwrap_or_default();
    let leaf_fwid = certs.first().and_then(fwid);
    Ok(VerifiedChain {
        leaf_key,
        subjects,
        serials,
        leaf_fwid,
    })
}

/// Most revocation lists and bytes per list taken.
pub const MAX_CRLS: usize = 64;
/// Largest revocation list accepted.
pub const MAX_CRL_LEN: usize = 4 << 20;

/// Checks a (verified) chain, DER leaf first, against revocation lists the caller holds
/// (DER or PEM `X509 CRL`): a list whose issuer is a certificate of the chain must be
/// signed by that certificate's key (ECDSA P-384/SHA-384) and current at `now`
/// (`thisUpdate` ≤ now ≤ `nextUpdate`), and no certificate that issuer issued may be on it.
/// Lists of other issuers are ignored.
pub fn check_crls(ders: &[Vec<u8>], crls: &[Vec<u8>], now: u64) -> Result<(), GpuError> {
    use x509_parser::revocation_list::CertificateRevocationList;
    if crls.len() > MAX_CRLS {
        return Err(GpuError::CrlInvalid {
            position: MAX_CRLS,
            reason: format!("more than {MAX_CRLS} lists"),
        });
    }
    let certs = ders
        .iter()
        .enumerate()
        .map(|(i, d)| parse(i, d))
        .collect::<Result<Vec<_>, _>>()?;
    let now_i = i64::try_from(now).unwrap_or(i64::MAX);
    for (position, raw) in crls.iter().enumerate() {
        let bad = |reason: String| GpuError::CrlInvalid { position, reason };
        if raw.len() > MAX_CRL_LEN {
            return Err(bad(format!("larger than {MAX_CRL_LEN} bytes")));
        }
        let der = match x509_parser::pem::parse_x509_pem(raw) {
            Ok((_, pem)) if pem.label == "X509 CRL" => pem.contents,
            Ok((_, pem)) => return Err(bad(format!("unexpected PEM block {:?}", pem.label))),
            Err(_) => raw.clone(),
        };
        let crl = match CertificateRevocationList::from_der(&der) {
            Ok(([], crl)) => crl,
            Ok(_) => return Err(bad("trailing bytes".into())),
            Err(e) => return Err(bad(e.to_string())),
        };
        let tbs = &crl.tbs_cert_list;
        let Some(issuer) = certs
            .iter()
            .find(|c| c.subject().as_raw() == tbs.issuer.as_raw())
        else {
            continue;
        };
        if crl.signature_algorithm.algorithm.to_id_string() != OID_ECDSA_SHA384
            || tbs.signature.algorithm.to_id_string() != OID_ECDSA_SHA384
            || crl.signature_value.unused_bits != 0
        {
            return Err(bad("signature is not ecdsa-with-SHA384".into()));
        }
        let key = &issuer.public_key().subject_public_key.data;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_ASN1, key)
            .verify(tbs.as_ref(), &crl.signature_value.data)
            .map_err(|_| bad("signature does not verify with its issuer's key".into()))?;
        let current = tbs.this_update.timestamp() <= now_i
            && tbs.next_update.is_some_and(|n| now_i <= n.timestamp());
        if !current {
            return Err(GpuError::CrlStale {
                issuer: tbs.issuer.to_string(),
            });
        }
        for (i, cert) in certs.iter().enumerate() {
            if cert.issuer().as_raw() != tbs.issuer.as_raw() {
                continue;
            }
            let serial = cert.raw_serial();
            if tbs
                .revoked_certificates
                .iter()
                .any(|r| strip(r.raw_serial()) == strip(serial))
            {
                return Err(GpuError::CertRevoked {
                    position: i,
                    serial: hex::encode(serial),
                });
            }
        }
    }
    Ok(())
}

/// Whether the bytes right after the TBS certificate are exactly the DER of
/// ecdsa-with-SHA384: the parser is lenient about the outer AlgorithmIdentifier's tags,
/// which the signature does not cover.
fn outer_algid_exact(der: &[u8], cert: &X509Certificate<'_>) -> bool {
    let tbs = cert.tbs_certificate.as_ref();
    // The outer SEQUENCE header is 2 to 5 bytes.
    (2..=5).any(|start| {
        der.get(start..start + tbs.len()) == Some(tbs)
            && der.get(start + tbs.len()..start + tbs.len() + ALGID_ECDSA_SHA384.len())
                == Some(&ALGID_ECDSA_SHA384[..])
    })
}

/// The digest ending the certificate's DICE extension: its value must end with an OCTET
/// STRING of 48 bytes (the SHA-384 FWID, as NVIDIA's certificates have it).
fn fwid(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    let ext = cert
        .extensions()
        .iter()
        .find(|e| OIDS_DICE_FWID.contains(&e.oid.to_id_string().as_str()))?;
    let v = ext.value;
    let start = v.len().checked_sub(FWID_LEN + 2)?;
    (v.get(start..start + 2) == Some(&[0x04, 0x30][..]))
        .then(|| v.get(start + 2..).map(<[u8]>::to_vec))
        .flatten()
}

/// A serial without leading zero bytes (DER adds one to keep it positive).
fn strip(serial: &[u8]) -> &[u8] {
    let start = serial.iter().position(|&b| b != 0).unwrap_or(serial.len());
    serial.get(start..).unwrap_or_default()
}
