//! Checks of what a PCCS served: issuer-chain headers, CRL bodies, signed JSON bodies, and the
//! signatures of the whole collateral up to a pinned root key.

use std::collections::HashMap;

use dcap_qvl::QuoteCollateralV3;
use serde_json::value::RawValue;
use x509_parser::prelude::FromDer;

use crate::tdx;

/// (collateral item, reason).
type SigError = (&'static str, String);

/// Check the signatures of fetched collateral up to a pinned root key, so that a PCCS (or
/// anyone between it and us) cannot replace good cached collateral with forged or corrupted
/// collateral: each issuer chain is signed link by link up to a self-signed root whose key
/// id is pinned; the TCB info, QE identity and both CRLs are signed by their chain's first
/// certificate (the root CA CRL by the root). Validity times are left to DCAP verification.
/// `Err((item, reason))`.
pub(super) fn verify_signatures(
    c: &QuoteCollateralV3,
    root_key_ids: &[[u8; 48]],
) -> Result<(), SigError> {
    use ring::signature::{ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
    use sha2::{Digest, Sha384};
    use x509_parser::certificate::X509Certificate;

    fn chain_ders(pem: &str) -> Vec<Vec<u8>> {
        x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .filter_map(Result::ok)
            .map(|p| p.contents)
            .collect()
    }
    let key_of = |der: &[u8]| -> Result<Vec<u8>, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        Ok(cert.public_key().subject_public_key.data.to_vec())
    };
    let verify_cert = |der: &[u8], issuer_key: &[u8]| -> Result<(), String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, issuer_key)
            .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
            .map_err(|_| {
                format!(
                    "certificate {:?} is not signed by its issuer",
                    first_cn_of(&cert)
                )
            })
    };
    // The chain's first certificate's key, after checking the chain up to a pinned root.
    let chain_key = |item: &'static str, pem: &str| -> Result<(Vec<u8>, Vec<u8>), SigError> {
        let ders = chain_ders(pem);
        let root = ders
            .last()
            .ok_or((item, "empty issuer chain".to_string()))?;
        let root_key = key_of(root).map_err(|e| (item, format!("issuer chain: {e}")))?;
        let id: [u8; 48] = Sha384::digest(&root_key).into();
        if !root_key_ids.contains(&id) {
            return Err((
                item,
                format!("issuer chain root key id {} is not pinned", hex::encode(id)),
            ));
        }
        verify_cert(root, &root_key).map_err(|e| (item, format!("root: {e}")))?;
        for pair in ders.windows(2) {
            let issuer_key = key_of(&pair[1]).map_err(|e| (item, e))?;
            verify_cert(&pair[0], &issuer_key).map_err(|e| (item, e))?;
        }
        let leaf_key = key_of(&ders[0]).map_err(|e| (item, e))?;
        Ok((leaf_key, root_key))
    };
    let verify_crl = |item: &'static str, der: &[u8], key: &[u8]| -> Result<(), SigError> {
        let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der)
            .map_err(|e| (item, e.to_string()))?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key)
            .verify(crl.tbs_cert_list.as_ref(), &crl.signature_value.data)
            .map_err(|_| {
                (
                    item,
                    "CRL signature does not verify with its issuer chain".to_string(),
                )
            })
    };

    // A signed JSON body: its signature checks with the leaf key of its issuer chain.
    let verify_signed =
        |item: &'static str, chain: &str, body: &str, sig: &[u8]| -> Result<(), SigError> {
            let (key, _) = chain_key(item, chain)?;
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key)
                .verify(body.as_bytes(), sig)
                .map_err(|_| {
                    (
                        item,
                        "signature does not verify with its issuer chain".to_string(),
                    )
                })
        };

    verify_signed(
        "TCB info",
        &c.tcb_info_issuer_chain,
        &c.tcb_info,
        &c.tcb_info_signature,
    )?;
    verify_signed(
        "QE identity",
        &c.qe_identity_issuer_chain,
        &c.qe_identity,
        &c.qe_identity_signature,
    )?;
    let (key, root_key) = chain_key("PCK CRL", &c.pck_crl_issuer_chain)?;
    verify_crl("PCK CRL", &c.pck_crl, &key)?;
    verify_crl("root CA CRL", &c.root_ca_crl, &root_key)?;
    Ok(())
}

fn first_cn_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// An issuer-chain header: URL-encoded PEM certificates, which must parse.
pub(super) fn issuer_chain(
    headers: &cocoon_http::reqwest::header::HeaderMap,
    names: &[&str],
) -> Result<String, String> {
    let value = names
        .iter()
        .find_map(|n| headers.get(*n))
        .ok_or_else(|| format!("missing header {}", names.join(" / ")))?;
    let value = value
        .to_str()
        .map_err(|_| format!("header {} is not ASCII", names[0]))?;
    let pem =
        percent_decode(value).ok_or_else(|| format!("header {} is not URL-encoded", names[0]))?;
    let mut n = 0;
    for p in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let p = p.map_err(|e| format!("header {}: bad PEM: {e}", names[0]))?;
        p.parse_x509()
            .map_err(|e| format!("header {}: bad certificate: {e}", names[0]))?;
        n += 1;
    }
    if n == 0 {
        return Err(format!("header {} holds no certificate", names[0]));
    }
    Ok(pem)
}

/// `%XX` decoding (strict: a malformed escape or non-UTF-8 result is an error).
pub(super) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A CRL body: DER, PEM, or hex text of the DER (PCCS `rootcacrl`).
pub(super) fn decode_crl(body: &[u8]) -> Result<Vec<u8>, String> {
    let der = if body.first() == Some(&0x30) {
        body.to_vec()
    } else {
        let text = body.trim_ascii();
        if text.starts_with(b"-----BEGIN") {
            let (_, pem) =
                x509_parser::pem::parse_x509_pem(text).map_err(|e| format!("bad PEM CRL: {e}"))?;
            pem.contents
        } else {
            hex::decode(text).map_err(|_| "body is neither a DER, PEM nor hex CRL".to_string())?
        }
    };
    tdx::crl_window(&der).map_err(|e| format!("bad CRL: {e}"))?;
    Ok(der)
}

/// `{"<key>": {...}, "signature": "<hex>"}` → (the object's exact bytes, signature).
pub(super) fn signed_body(body: &[u8], key: &str, id: &str) -> Result<(String, Vec<u8>), String> {
    let map: HashMap<String, &RawValue> =
        serde_json::from_slice(body).map_err(|e| format!("body is not a JSON object: {e}"))?;
    let raw = map
        .get(key)
        .ok_or_else(|| format!("body has no {key:?} member"))?;
    let obj: serde_json::Value =
        serde_json::from_str(raw.get()).map_err(|e| format!("{key}: {e}"))?;
    let got = obj.get("id").and_then(|v| v.as_str()).unwrap_or_default();
    if got != id {
        return Err(format!("{key}.id is {got:?}, expected {id:?}"));
    }
    let sig = map
        .get("signature")
        .ok_or("body has no \"signature\" member")?;
    let sig: String =
        serde_json::from_str(sig.get()).map_err(|e| format!("signature is not a string: {e}"))?;
    let sig = hex::decode(sig.trim()).map_err(|_| "signature is not hex".to_string())?;
    if sig.len() != 64 {
        return Err(format!("signature is {} bytes, expected 64", sig.len()));
    }
    Ok((raw.get().to_string(), sig))
}

/// The CRL distribution point URL of the last (root) certificate of a PEM chain.
pub(super) fn root_crl_distribution_point(chain_pem: &str) -> Result<String, String> {
    use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
    let last = x509_parser::pem::Pem::iter_from_buffer(chain_pem.as_bytes())
        .filter_map(Result::ok)
        .last()
        .ok_or("issuer chain holds no certificate")?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&last.contents)
        .map_err(|e| format!("root certificate: {e}"))?;
    for ext in cert.extensions() {
        if let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() {
            for p in points.iter() {
                if let Some(DistributionPointName::FullName(names)) = &p.distribution_point {
                    for n in names {
                        if let GeneralName::URI(u) = n {
                            return Ok(u.to_string());
                        }
                    }
                }
            }
        }
    }
    Err("root certificate has no CRL distribution point".into())
}
