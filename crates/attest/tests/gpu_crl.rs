//! GPU certificate revocation from revocation lists the caller holds
//! (`cocoon_attest::gpu::chain::check_crls`, `GpuPolicy::crls`): a P-384 chain shaped like
//! NVIDIA's (root → intermediate → leaf) and CRLs made with rcgen, since NVIDIA's CRLs
//! cannot be signed here. A list of an issuer of the chain must be signed by it and current;
//! a listed serial is refused; lists of other issuers are ignored.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_attest::gpu::GpuError;
use cocoon_attest::gpu::chain::{check_crls, verify_ders};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P384_SHA384,
    RevokedCertParams, SerialNumber,
};
use sha2::Digest;
use time::OffsetDateTime;

const NOW: i64 = 1_800_000_000;

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap()
}

fn params(cn: &str, serial: u8, ca: bool) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.serial_number = Some(SerialNumber::from(vec![serial]));
    p.not_before = at(NOW - 86_400);
    p.not_after = at(NOW + 365 * 86_400);
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    }
    p
}

struct Chain {
    ders: Vec<Vec<u8>>,
    root_sha256: [u8; 32],
    intermediate: Issuer<'static, KeyPair>,
    root: Issuer<'static, KeyPair>,
}

fn chain() -> Chain {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let root_params = params("Test GPU Root", 1, true);
    let root_cert = root_params.self_signed(&root_key).unwrap();
    let root = Issuer::new(root_params, root_key);
    let int_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let int_params = params("Test GPU Intermediate", 2, true);
    let int_cert = int_params.signed_by(&int_key, &root).unwrap();
    let intermediate = Issuer::new(int_params, int_key);
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let leaf_cert = params("Test GPU Leaf", 3, false)
        .signed_by(&leaf_key, &intermediate)
        .unwrap();
    let ders = vec![
        leaf_cert.der().to_vec(),
        int_cert.der().to_vec(),
        root_cert.der().to_vec(),
    ];
    let root_sha256 = sha2::Sha256::digest(ders.last().unwrap()).into();
    Chain {
        ders,
        root_sha256,
        intermediate,
        root,
    }
}

fn crl(issuer: &Issuer<'_, KeyPair>, revoked: &[u8], this: i64, next: i64) -> Vec<u8> {
    CertificateRevocationListParams {
        this_update: at(this),
        next_update: at(next),
        crl_number: SerialNumber::from(vec![1]),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from(vec![*s]),
                revocation_time: at(NOW - 3600),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .unwrap()
    .der()
    .to_vec()
}

#[test]
fn a_current_list_without_the_chain_passes_and_one_listing_the_leaf_refuses_it() {
    let c = chain();
    let now = NOW as u64;
    verify_ders(&c.ders, &c.root_sha256, &[], now).unwrap();
    let day = 86_400;
    // Lists of both issuers, current, revoking other serials: fine.
    let clean = [
        crl(&c.intermediate, &[9], NOW - day, NOW + day),
        crl(&c.root, &[8], NOW - day, NOW + day),
    ];
    check_crls(&c.ders, &clean, now).unwrap();
    // The intermediate lists the leaf; the root lists the intermediate.
    let leaf = [crl(&c.intermediate, &[9, 3], NOW - day, NOW + day)];
    assert!(matches!(
        check_crls(&c.ders, &leaf, now),
        Err(GpuError::CertRevoked { position: 0, .. })
    ));
    let int = [crl(&c.root, &[2], NOW - day, NOW + day)];
    assert!(matches!(
        check_crls(&c.ders, &int, now),
        Err(GpuError::CertRevoked { position: 1, .. })
    ));
    // The same list in PEM.
    let pem = pem::encode(&pem::Pem::new("X509 CRL", leaf[0].clone()));
    assert!(matches!(
        check_crls(&c.ders, &[pem.into_bytes()], now),
        Err(GpuError::CertRevoked { position: 0, .. })
    ));
}

#[test]
fn a_stale_forged_or_foreign_list_is_judged_as_such() {
    let c = chain();
    let now = NOW as u64;
    let day = 86_400;
    // Past its nextUpdate, or not yet valid: the chain cannot be judged.
    let stale = [crl(&c.intermediate, &[], NOW - 3 * day, NOW - day)];
    assert!(matches!(
        check_crls(&c.ders, &stale, now),
        Err(GpuError::CrlStale { .. })
    ));
    let early = [crl(&c.intermediate, &[], NOW + day, NOW + 2 * day)];
    assert!(matches!(
        check_crls(&c.ders, &early, now),
        Err(GpuError::CrlStale { .. })
    ));
    // Signed by another key under the intermediate's name: refused, not trusted.
    let other = chain();
    let forged = [crl(&other.intermediate, &[], NOW - day, NOW + day)];
    assert!(matches!(
        check_crls(&c.ders, &forged, now),
        Err(GpuError::CrlInvalid { .. })
    ));
    // Every byte of a list that names the leaf matters: flipped, it does not parse or does
    // not verify; the only flips that pass are those that make it another issuer's list
    // (which says nothing about this chain).
    let good = crl(&c.intermediate, &[3], NOW - day, NOW + day);
    let names: Vec<Vec<u8>> = c
        .ders
        .iter()
        .map(|d| {
            use x509_parser::prelude::FromDer;
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(d).unwrap();
            cert.subject().as_raw().to_vec()
        })
        .collect();
    for i in 0..good.len() {
        let mut t = good.clone();
        t[i] ^= 0x01;
        if check_crls(&c.ders, std::slice::from_ref(&t), now).is_ok() {
            use x509_parser::prelude::FromDer;
            let (_, l) =
                x509_parser::revocation_list::CertificateRevocationList::from_der(&t).unwrap();
            assert!(
                !names.contains(&l.tbs_cert_list.issuer.as_raw().to_vec()),
                "byte {i} of {} changed and the revoked leaf passed",
                good.len()
            );
        }
    }
    // A list of an issuer outside this chain is ignored, however it is signed.
    let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let stranger = Issuer::new(params("Someone Else", 7, true), key);
    let foreign = [crl(&stranger, &[3], NOW - day, NOW + day)];
    check_crls(&c.ders, &foreign, now).unwrap();
    // Garbage is an error, not a pass.
    assert!(matches!(
        check_crls(&c.ders, &[b"not a crl".to_vec()], now),
        Err(GpuError::CrlInvalid { .. })
    ));
}
