//! The SEV-SNP certificate table (configfs-tsm `auxblob`) on the real Milan certificates.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use cocoon_attest::sev::{
    self, GUID_ARK, GUID_ASK, GUID_VCEK, GUID_VLEK, SevError, build_cert_table, parse_cert_table,
};

#[path = "../src/test_vectors.rs"]
mod test_vectors;

/// The bytes of `testvectors/attest/sev/{name}`.
fn vector(name: &str) -> Vec<u8> {
    test_vectors::vector(&format!("sev/{name}"))
}

/// (ASK DER, ARK DER) from the PEM chain (ASK first, as AMD KDS serves it).
fn ask_ark() -> (Vec<u8>, Vec<u8>) {
    let chain = vector("cert_chain_milan");
    let ders: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(&chain)
        .map(|p| p.unwrap().contents)
        .collect();
    assert_eq!(ders.len(), 2);
    (ders[0].clone(), ders[1].clone())
}

#[test]
fn real_certificates_round_trip() {
    let vcek = vector("vcek_milan.der");
    let (ask, ark) = ask_ark();
    let other = [0x11u8; 16];
    let aux = build_cert_table(&[
        (GUID_ARK, &ark),
        (other, b"ignored"),
        (GUID_VCEK, &vcek),
        (GUID_ASK, &ask),
    ]);
    let t = parse_cert_table(&aux).unwrap();
    assert_eq!(t.vcek.as_deref(), Some(&vcek[..]));
    assert_eq!(t.ask.as_deref(), Some(&ask[..]));
    assert_eq!(t.ark.as_deref(), Some(&ark[..]));
    assert_eq!(t.vlek, None);
    // The kernel pads the auxblob; trailing bytes after the certificates are fine.
    let mut padded = aux.clone();
    padded.resize(aux.len() + 4096, 0);
    assert_eq!(parse_cert_table(&padded).unwrap(), t);
}

#[test]
fn builtin_chain_matches_the_vcek() {
    let vcek = vector("vcek_milan.der");
    let chain = sev::builtin_chain_for(&vcek).expect("Milan chain");
    sev::verify_vcek_chain(&vcek, &chain, 1_772_707_833).expect("verifies");
    // Not a VCEK at all.
    assert_eq!(sev::builtin_chain_for(b"junk"), None);
    let (ask, _) = ask_ark();
    assert_eq!(sev::builtin_chain_for(&ask), None);
}

#[test]
fn malformed_tables_are_errors() {
    let vcek = vector("vcek_milan.der");
    let good = build_cert_table(&[(GUID_VCEK, &vcek)]);
    let err = |aux: &[u8]| match parse_cert_table(aux) {
        Err(SevError::CertTable(m)) => m,
        r => panic!("expected CertTable error, got {r:?}"),
    };
    assert!(err(&[]).contains("terminating"));
    // Truncated inside the entry list: the entry's certificate is now out of range.
    assert!(err(&good[..30]).contains("outside"));
    // Entries but no terminator.
    let mut unterminated = vec![0x22u8; 16];
    unterminated.extend_from_slice(&24u32.to_le_bytes());
    unterminated.extend_from_slice(&1u32.to_le_bytes());
    unterminated.push(0);
    assert!(err(&unterminated).contains("terminating"));
    // Offset beyond the blob.
    let mut bad = good.clone();
    bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(err(&bad).contains("outside"));
    // Length overflowing.
    let mut bad = good.clone();
    bad[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(err(&bad).contains("outside"));
    // Zero length.
    let mut bad = good.clone();
    bad[20..24].copy_from_slice(&0u32.to_le_bytes());
    assert!(err(&bad).contains("outside"));
    // Certificate overlapping the entry list.
    let mut bad = good.clone();
    bad[16..20].copy_from_slice(&0u32.to_le_bytes());
    assert!(err(&bad).contains("overlaps"));
    // Duplicates.
    let dup = build_cert_table(&[(GUID_VLEK, &vcek), (GUID_VLEK, &vcek)]);
    assert!(err(&dup).contains("duplicate"));
    // Only a terminator: an empty table.
    assert_eq!(
        parse_cert_table(&[0; 24]).unwrap(),
        sev::SevCertTable::default()
    );
}
