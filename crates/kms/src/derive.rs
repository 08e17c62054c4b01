//! Key derivation (pure): every released key is HKDF-SHA256 of the master secret over the
//! role, the role's identity and the key's purpose. Keys bind to what a role is on chain,
//! not to the image it runs: an upgraded image of the same role gets the same keys.

use cocoon_service::kms::{KmsRole, Purpose, Secret};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};

/// The HKDF salt: fixed, so that one master always gives the same keys.
const SALT: &[u8] = b"cocoon-kms/v1";

/// The master secret every key is derived from. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Master(pub(crate) [u8; 32]);

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Master(<redacted>)")
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.0 = [0; 32];
    }
}

impl Master {
    /// A master from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Master(bytes)
    }

    /// A fresh random master.
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        use ring::rand::{SecureRandom, SystemRandom};
        let mut m = [0u8; 32];
        SystemRandom::new().fill(&mut m)?;
        Ok(Master(m))
    }

    /// The master as a secret to hand to another KMS.
    pub(crate) fn share(&self) -> Secret {
        Secret(self.0)
    }

    /// The key for `purpose` of `role` `identity`.
    pub fn derive(&self, role: KmsRole, identity: &str, purpose: Purpose) -> Secret {
        Secret(hkdf32(&self.0, SALT, &info(role, identity, purpose)))
    }
}

/// `len ‖ role ‖ len ‖ identity ‖ len ‖ purpose`, each length a big-endian u16, so that no
/// two triples give the same bytes.
fn info(role: KmsRole, identity: &str, purpose: Purpose) -> Vec<u8> {
    let mut out = Vec::new();
    for part in [role.name(), identity, purpose.name()] {
        let b = part.as_bytes();
        // Identities are at most 128 bytes (checked with the request); longer parts are cut
        // at u16::MAX, which cannot happen for the names used here.
        let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&b[..usize::from(len)]);
    }
    out
}

struct Len32;
impl KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// HKDF-SHA256(ikm, salt, info) → 32 bytes.
pub(crate) fn hkdf32(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let info = [info];
    Salt::new(HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&info, Len32)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is within HKDF-SHA256's output limit");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_role_identity_purpose_and_master() {
        let m = Master::from_bytes([1; 32]);
        let id = "0:4444";
        let k = m.derive(KmsRole::Proxy, id, Purpose::Signing);
        assert_eq!(k, m.derive(KmsRole::Proxy, id, Purpose::Signing));
        assert_ne!(k, m.derive(KmsRole::Worker, id, Purpose::Signing));
        assert_ne!(k, m.derive(KmsRole::Proxy, "0:4445", Purpose::Signing));
        assert_ne!(k, m.derive(KmsRole::Proxy, id, Purpose::Wallet));
        assert_ne!(k, m.derive(KmsRole::Proxy, id, Purpose::Disk));
        let other = Master::from_bytes([2; 32]);
        assert_ne!(k, other.derive(KmsRole::Proxy, id, Purpose::Signing));
        // Lengths are framed: moving bytes between the parts changes the key.
        assert_ne!(info(KmsRole::Proxy, "ab", Purpose::Disk), {
            let mut v = info(KmsRole::Proxy, "a", Purpose::Disk);
            v.push(b'b');
            v
        });
        assert_eq!(format!("{m:?}"), "Master(<redacted>)");
    }

    #[test]
    fn derivation_matches_rfc5869_hkdf_sha256() {
        // RFC 5869, test case 1 (first 32 bytes of its 42-byte OKM).
        let ikm = [0x0b; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        assert_eq!(
            hex::encode(hkdf32(&ikm, &salt, &info)),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        );
    }
}
