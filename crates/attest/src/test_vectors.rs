//! Reading `testvectors/attest/` in tests (the unit tests, and the integration tests that
//! include this file).

/// The bytes of `testvectors/attest/{path}`.
pub(crate) fn vector(path: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../testvectors/attest/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
