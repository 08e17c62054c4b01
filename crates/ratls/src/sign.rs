//! Signatures by the key of a session's RA-TLS certificate (answer receipts, see
//! `docs/ra-tls.md`), and their verification.
//!
//! The key that signed a TLS handshake is the one the peer's attestation binds, so a
//! signature by it is as attested as the session itself. Every signature covers a domain
//! string first, so that one made for one purpose never verifies for another.

use std::sync::Arc;

use ring::signature::{ED25519, UnparsedPublicKey};
use rustls::SignatureScheme;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::verifier::VerifyError;

/// OID of Ed25519 keys (RFC 8410).
const OID_ED25519: &str = "1.3.101.112";

/// The raw Ed25519 public key of a certificate (no other check: see
/// [`crate::verifier::RatlsVerifier::verify_cert`] for those).
pub fn certificate_public_key(der: &[u8]) -> Result<[u8; 32], VerifyError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| VerifyError::Parse(e.to_string()))?;
    let spki = cert.public_key();
    if spki.algorithm.algorithm.to_id_string() != OID_ED25519 {
        return Err(VerifyError::NotEd25519);
    }
    spki.subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| VerifyError::NotEd25519)
}

/// The certificate and key one side presented on a session.
#[derive(Clone)]
pub struct SessionKey {
    key: Arc<CertifiedKey>,
    public_key: [u8; 32],
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKey")
            .field("public_key", &hex::encode(self.public_key))
            .finish_non_exhaustive()
    }
}

impl SessionKey {
    /// From the certified key a resolver served.
    pub fn new(key: Arc<CertifiedKey>) -> Result<SessionKey, VerifyError> {
        let der = key.cert.first().ok_or(VerifyError::MissingClaims)?;
        let public_key = certificate_public_key(der.as_ref())?;
        Ok(SessionKey { key, public_key })
    }

    /// The certificate's raw Ed25519 key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// The end-entity certificate.
    pub fn certificate(&self) -> Option<&CertificateDer<'static>> {
        self.key.cert.first()
    }

    /// Ed25519 signature of `domain` followed by `message`.
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let signer = self
            .key
            .key
            .choose_scheme(&[SignatureScheme::ED25519])
            .ok_or_else(|| rustls::Error::General("the certificate key is not Ed25519".into()))?;
        let mut m = Vec::with_capacity(domain.len() + message.len());
        m.extend_from_slice(domain);
        m.extend_from_slice(message);
        signer.sign(&m)
    }
}

/// Whether `signature` is `public_key`'s Ed25519 signature of `domain` followed by
/// `message`.
pub fn verify_signature(
    public_key: &[u8; 32],
    domain: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    let mut m = Vec::with_capacity(domain.len() + message.len());
    m.extend_from_slice(domain);
    m.extend_from_slice(message);
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&m, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cert::{Identity, SimSource};
    use cocoon_attest::SimKey;

    #[test]
    fn a_session_key_signs_what_its_certificate_key_verifies() {
        let id =
            Identity::generate(&SimSource(SimKey::generate().unwrap()), 1_700_000_000).unwrap();
        let k = SessionKey::new(id.certified_key().unwrap()).unwrap();
        assert_eq!(k.public_key(), id.public_key());
        assert_eq!(
            certificate_public_key(k.certificate().unwrap()).unwrap(),
            *id.public_key()
        );
        let sig = k.sign(b"d1", b"message").unwrap();
        assert!(verify_signature(k.public_key(), b"d1", b"message", &sig));
        assert!(
            !verify_signature(k.public_key(), b"d2", b"message", &sig),
            "domain"
        );
        assert!(
            !verify_signature(k.public_key(), b"d1", b"messagf", &sig),
            "message"
        );
        let mut bad = sig.clone();
        bad[5] ^= 1;
        assert!(!verify_signature(k.public_key(), b"d1", b"message", &bad));
        let other =
            Identity::generate(&SimSource(SimKey::generate().unwrap()), 1_700_000_000).unwrap();
        assert!(!verify_signature(
            other.public_key(),
            b"d1",
            b"message",
            &sig
        ));
        assert!(!verify_signature(
            k.public_key(),
            b"d1",
            b"message",
            &sig[..63]
        ));
    }
}
